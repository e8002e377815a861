//! A node answers "prepared", "committed", "rolled back" or "removed" only once what it wrote would
//! survive a power cut (`tern_tree::durable`). A power cut cannot be staged in a test, so this one checks
//! the order of the system calls that make it so: the test runs its own binary again under `strace` and
//! reads which flushes came before which renames.

use std::path::Path;
use std::process::Command as Process;

use ed25519_dalek::SigningKey;
use tern_node::Interpreter;
use tern_wire::assignment::{Assignment, AssignmentKind, Builder, Command, Limits, decode};

const CHILD: &str = "TERN_DURABILITY_CHILD";
const TEST: &str = "durability::a_node_answers_only_once_what_it_wrote_is_on_disk";

fn sealed(builder: Builder) -> Assignment {
    let key = SigningKey::from_bytes(&[5; 32]);
    let bytes = builder.finish(&key, None).expect("finish");
    decode(&bytes, &key.verifying_key(), None, &Limits::default()).expect("verifies")
}

/// A mark in the trace: a rename of a name that does not exist (it fails, and strace shows it).
fn mark(root: &Path, label: &str) {
    let name = root.join(format!("@mark-{label}"));
    let _ = std::fs::rename(&name, &name);
}

/// What the child does under strace: a first version, a second one in two phases, a rollback, a removal.
fn child(root: &Path) {
    let interpreter = Interpreter::new(root);
    let mut first = Builder::new("v1", AssignmentKind::Publish, "www", 1, None, 0);
    first
        .create("index.html", None, b"<h1>one</h1>", false)
        .expect("create");
    first.command(Command::Commit);
    interpreter.apply(&sealed(first)).expect("v1");

    let mut content = Builder::new("v2", AssignmentKind::Publish, "www", 2, None, 0);
    content
        .create("index.html", None, b"<h1>two</h1>", false)
        .expect("create");
    content
        .create("news/today.html", None, b"<p>news</p>", false)
        .expect("create");
    mark(root, "prepare");
    interpreter.apply(&sealed(content)).expect("prepared");
    mark(root, "prepared");

    let mut commit = Builder::new("v2", AssignmentKind::Publish, "www", 2, None, 0);
    commit.command(Command::Commit);
    mark(root, "commit");
    interpreter.apply(&sealed(commit)).expect("committed");
    mark(root, "committed");

    let mut rollback = Builder::new("r", AssignmentKind::Rollback, "www", 1, None, 0);
    rollback.command(Command::Rollback);
    mark(root, "rollback");
    interpreter.apply(&sealed(rollback)).expect("rolled back");
    mark(root, "rolled-back");

    let remove = Builder::new("gone", AssignmentKind::Remove, "www", 4, None, 0);
    mark(root, "remove");
    interpreter.apply(&sealed(remove)).expect("removed");
    mark(root, "removed");
}

/// One traced call.
#[derive(Debug, PartialEq)]
enum Call {
    Mark(String),
    /// `syncfs` of the file system holding this path.
    SyncFs,
    /// `fsync` of this path.
    Fsync(String),
    /// A rename to this path.
    Rename(String),
    /// A file created (`open` with `O_CREAT`).
    Create,
}

fn parse(trace: &str) -> Vec<Call> {
    let quoted = |line: &str| -> Vec<String> { line.split('"').skip(1).step_by(2).map(str::to_string).collect() };
    let mut calls = Vec::new();
    for line in trace.lines() {
        if line.contains("syncfs(") && line.contains("= 0") {
            calls.push(Call::SyncFs);
        } else if line.contains("fsync(") && line.contains("= 0") {
            let path = line
                .split('<')
                .nth(1)
                .and_then(|rest| rest.split('>').next())
                .unwrap_or("");
            calls.push(Call::Fsync(path.to_string()));
        } else if line.contains("rename") {
            let paths = quoted(line);
            if let Some(label) = paths
                .first()
                .and_then(|p| p.rsplit("@mark-").next())
                .filter(|_| line.contains("@mark-"))
            {
                calls.push(Call::Mark(label.to_string()));
            } else if line.contains("= 0")
                && let Some(target) = paths.last()
            {
                calls.push(Call::Rename(target.clone()));
            }
        } else if line.contains("open") && line.contains("O_CREAT") && !line.contains("= -1") {
            calls.push(Call::Create);
        }
    }
    calls
}

/// The calls between marks `from` and `to`.
fn window<'a>(calls: &'a [Call], from: &str, to: &str) -> &'a [Call] {
    let at = |label: &str| {
        calls
            .iter()
            .position(|call| *call == Call::Mark(label.to_string()))
            .unwrap_or_else(|| panic!("mark {label} in the trace"))
    };
    &calls[at(from) + 1..at(to)]
}

fn last(calls: &[Call], wanted: impl Fn(&Call) -> bool) -> Option<usize> {
    calls.iter().rposition(wanted)
}

#[test]
fn a_node_answers_only_once_what_it_wrote_is_on_disk() {
    if let Ok(root) = std::env::var(CHILD) {
        child(Path::new(&root));
        return;
    }
    let usable = Process::new("strace")
        .args(["-f", "-o", "/dev/null", "true"])
        .status()
        .is_ok_and(|status| status.success());
    if !usable {
        eprintln!("SKIPPED: strace is missing or cannot trace here (apt-get install strace)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let log = dir.path().join("trace");
    let status = Process::new("strace")
        .args(["-f", "-y", "-qq", "-e", "trace=syncfs,fsync,/^rename,/^open", "-o"])
        .arg(&log)
        .arg(std::env::current_exe().expect("test binary"))
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, &root)
        // The child's own "test result" line would read as one more test binary in the parent's output;
        // its panics go to stderr, which stays.
        .stdout(std::process::Stdio::null())
        .status()
        .expect("strace runs");
    assert!(status.success(), "the traced child failed: {status}");
    let calls = parse(&std::fs::read_to_string(&log).expect("trace"));

    // Prepared: every file of the new tree was written before the last flush.
    let prepare = window(&calls, "prepare", "prepared");
    let flushed = last(prepare, |call| *call == Call::SyncFs).expect("a flush before \"prepared\"");
    let written = last(prepare, |call| matches!(call, Call::Create | Call::Rename(_))).expect("the tree written");
    assert!(written < flushed, "the tree was written after the flush: {prepare:?}");

    // Committed and rolled back: the tree flushed before `live` points at it, and the switch flushed
    // before the answer.
    for (from, to) in [("commit", "committed"), ("rollback", "rolled-back")] {
        let calls = window(&calls, from, to);
        let switch = calls
            .iter()
            .position(|call| matches!(call, Call::Rename(target) if target.ends_with("/www/live")))
            .unwrap_or_else(|| panic!("{from}: the switch of live in {calls:?}"));
        assert!(
            calls[switch..].contains(&Call::SyncFs),
            "{from}: the switch is not flushed before the answer: {calls:?}"
        );
        if from == "commit" {
            assert!(
                calls[..switch].contains(&Call::SyncFs),
                "commit: live switched to a tree not flushed: {calls:?}"
            );
        }
    }

    // Removed: the rename out of the root is flushed (the root directory) before the answer.
    let remove = window(&calls, "remove", "removed");
    let moved = remove
        .iter()
        .position(|call| matches!(call, Call::Rename(target) if target.contains("/.removed-www-")))
        .expect("the site moved out");
    let root_text = root.to_string_lossy().to_string();
    assert!(
        remove[moved..].contains(&Call::Fsync(root_text)),
        "the removal is not flushed: {remove:?}"
    );
}
