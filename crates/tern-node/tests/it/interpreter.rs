use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::SigningKey;
use tern_node::{ApplyError, Interpreter};
use tern_tree::{Entry, Snapshot, scan};
use tern_wire::assignment::{Assignment, AssignmentKind, Builder, Command, Limits, decode};

fn signing() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}

fn sealed(builder: Builder) -> Assignment {
    let bytes = builder.finish(&signing(), None).expect("finish");
    decode(&bytes, &signing().verifying_key(), None, &Limits::default()).expect("verifies")
}

/// Every file under `dir` with its content.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    tern_tree::contents(dir)
}

fn publish_v1(interpreter: &Interpreter) {
    let mut builder = Builder::new("v1", AssignmentKind::Publish, "www", 1, None, 0);
    builder.command(Command::Mkdir {
        path: "docs".into(),
        mode: None,
        mtime_ns: None,
    });
    builder
        .create("index.html", Some(0o644), b"<h1>version one</h1>", true)
        .expect("create");
    builder
        .create("docs/guide.txt", Some(0o644), &b"guide text ".repeat(200), true)
        .expect("create");
    builder
        .create("old.txt", None, b"to be removed", false)
        .expect("create");
    builder.command(Command::Commit);
    interpreter.apply(&sealed(builder)).expect("applies");
}

#[test]
fn publish_patch_commit_and_rollback() {
    let root = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(root.path());
    publish_v1(&interpreter);
    let live = root.path().join("www/live");
    let first = tree(&live);
    assert_eq!(first.len(), 3);
    assert_eq!(first["index.html"], b"<h1>version one</h1>");

    let mut builder = Builder::new("v2", AssignmentKind::Publish, "www", 2, None, 0);
    builder
        .patch("index.html", b"<h1>version one</h1>", b"<h1>version two</h1>")
        .expect("patch");
    builder.command(Command::Remove { path: "old.txt".into() });
    builder.command(Command::Rename {
        from: "docs/guide.txt".into(),
        to: "docs/manual.txt".into(),
    });
    builder.command(Command::Chmod {
        path: "index.html".into(),
        mode: 0o600,
    });
    builder.command(Command::Commit);
    let applied = interpreter.apply(&sealed(builder)).expect("applies");
    assert_eq!(applied.commands, 5);
    let second = tree(&live);
    assert_eq!(second["index.html"], b"<h1>version two</h1>");
    assert!(!second.contains_key("old.txt"));
    assert!(second.contains_key("docs/manual.txt"));
    assert_eq!(
        tree(&root.path().join("www/backup")),
        first,
        "the previous version is kept as backup, unchanged"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&live.join("index.html")), 0o600);
        assert_eq!(
            mode(&root.path().join("www/backup/index.html")),
            0o644,
            "chmod never touches a shared inode"
        );
    }

    // A rollback names the version it goes to: the backup must be that one (phase one checks it, phase two
    // checks it again), or nothing switches.
    for command in [Command::CheckBackup, Command::Rollback] {
        let mut elsewhere = Builder::new("r0", AssignmentKind::Rollback, "www", 3, None, 0);
        elsewhere.command(command.clone());
        let refused = interpreter
            .apply(&sealed(elsewhere))
            .expect_err("the backup is v1, not v3");
        assert!(refused.to_string().contains("not version 3"), "{refused}");
        assert_ne!(tree(&live), first, "{command:?} of another version switched nothing");
    }
    let mut check = Builder::new("r1", AssignmentKind::Rollback, "www", 1, None, 0);
    check.command(Command::CheckBackup);
    interpreter.apply(&sealed(check)).expect("the backup is v1");
    assert_ne!(tree(&live), first, "a check switches nothing");
    let mut rollback = Builder::new("r1", AssignmentKind::Rollback, "www", 1, None, 0);
    rollback.command(Command::Rollback);
    interpreter.apply(&sealed(rollback)).expect("rolls back");
    assert_eq!(tree(&live), first, "rollback restores the previous version exactly");
}

#[test]
fn a_failing_assignment_leaves_the_live_site_and_everything_outside_untouched() {
    let area = tempfile::tempdir().expect("tempdir");
    let root = area.path().join("root");
    let outside = area.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("precious"), "keep me").expect("write");
    let interpreter = Interpreter::new(&root);
    publish_v1(&interpreter);
    let live_before = tree(&root.join("www/live"));
    let outside_before = tree(&outside);

    let attacks: Vec<Command> = vec![
        Command::Mkdir {
            path: "../../outside/new".into(),
            mode: None,
            mtime_ns: None,
        },
        Command::Remove {
            path: "/etc/hostname".into(),
        },
        Command::Rename {
            from: "index.html".into(),
            to: "../../outside/precious".into(),
        },
        Command::Chmod {
            path: "docs/../../../outside/precious".into(),
            mode: 0o777,
        },
    ];
    for attack in attacks {
        let mut builder = Builder::new("bad", AssignmentKind::Publish, "www", 9, None, 0);
        builder
            .create("fine.txt", None, b"written first", false)
            .expect("create");
        builder.command(attack.clone());
        builder.command(Command::Commit);
        let result = interpreter.apply(&sealed(builder));
        assert!(
            matches!(result, Err(ApplyError::Path { .. })),
            "{attack:?} was not refused: {result:?}"
        );
        assert_eq!(
            tree(&root.join("www/live")),
            live_before,
            "the live site is untouched after {attack:?}"
        );
        assert_eq!(
            tree(&outside),
            outside_before,
            "nothing outside the site root changed after {attack:?}"
        );
    }

    // A symbolic link someone placed in the live tree pointing out of the root is not followed.
    #[cfg(unix)]
    {
        let live_dir = std::fs::canonicalize(root.join("www/live")).expect("live");
        std::os::unix::fs::symlink(&outside, live_dir.join("escape")).expect("symlink");
        let mut builder = Builder::new("via-link", AssignmentKind::Publish, "www", 10, None, 0);
        builder.create("escape/evil.txt", None, b"evil", false).expect("create");
        builder.command(Command::Commit);
        let _ = interpreter.apply(&sealed(builder));
        assert_eq!(tree(&outside), outside_before, "nothing was written through the link");
    }

    let mut bad_site = Builder::new("x", AssignmentKind::Publish, "../elsewhere", 1, None, 0);
    bad_site.command(Command::Commit);
    assert!(matches!(
        interpreter.apply(&sealed(bad_site)),
        Err(ApplyError::SiteName(_))
    ));
}

#[test]
fn a_patch_for_another_version_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(root.path());
    publish_v1(&interpreter);
    // The node holds "guide text " 200 times; the delta was made against another text, and reads it.
    let other = b"other words ".repeat(200);
    let mut edited = other.clone();
    edited[1000..1011].copy_from_slice(b"NEW CONTENT");
    let mut builder = Builder::new("v2", AssignmentKind::Publish, "www", 2, None, 0);
    builder.patch("docs/guide.txt", &other, &edited).expect("patch");
    builder.command(Command::Commit);
    assert!(matches!(
        interpreter.apply(&sealed(builder)),
        Err(ApplyError::BaseMismatch { index: 0, .. })
    ));
    assert_eq!(
        tree(&root.path().join("www/live"))["docs/guide.txt"],
        b"guide text ".repeat(200)
    );
}

#[test]
fn a_patch_that_rebuilds_its_file_from_a_base_changed_where_it_does_not_read_is_taken() {
    // The result is checked against its signed hash: a base that differs from the mover's only where the
    // delta does not read (here its first words: the node holds "guide text " 200 times) still gives
    // exactly the file the mover sent.
    let root = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(root.path());
    publish_v1(&interpreter);
    let mut movers_base = b"other text ".to_vec();
    movers_base.extend_from_slice(&b"guide text ".repeat(199));
    let mut new = b"guide text ".repeat(200);
    new.extend_from_slice(b"and a new ending");
    let mut builder = Builder::new("v2", AssignmentKind::Publish, "www", 2, None, 0);
    builder.patch("docs/guide.txt", &movers_base, &new).expect("patch");
    builder.command(Command::Commit);
    interpreter.apply(&sealed(builder)).expect("taken");
    assert_eq!(tree(&root.path().join("www/live"))["docs/guide.txt"], new);
}

#[test]
fn two_phase_content_then_commit() {
    let root = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(root.path());
    publish_v1(&interpreter);
    let mut content = Builder::new("v2", AssignmentKind::Publish, "www", 2, None, 0);
    content
        .create("index.html", None, b"<h1>version two</h1>", false)
        .expect("create");
    interpreter.apply(&sealed(content)).expect("content applied");
    assert_eq!(
        tree(&root.path().join("www/live"))["index.html"],
        b"<h1>version one</h1>",
        "not live before the commit"
    );
    let mut commit = Builder::new("v2", AssignmentKind::Publish, "www", 2, None, 0);
    commit.command(Command::Commit);
    interpreter.apply(&sealed(commit)).expect("committed");
    assert_eq!(
        tree(&root.path().join("www/live"))["index.html"],
        b"<h1>version two</h1>"
    );
    let mut again = Builder::new("v3", AssignmentKind::Publish, "www", 3, None, 0);
    again.command(Command::Commit);
    assert!(
        interpreter.apply(&sealed(again)).is_err(),
        "nothing prepared: nothing to commit"
    );
}

#[test]
fn a_commit_switches_only_to_the_version_it_names() {
    let root = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(root.path());
    publish_v1(&interpreter);
    let live = root.path().join("www/live");
    let commit = |sequence: u64| {
        let mut builder = Builder::new("job", AssignmentKind::Publish, "www", sequence, None, 0);
        builder.command(Command::Commit);
        interpreter.apply(&sealed(builder))
    };
    // Version 2 is prepared (a publish that then failed for want of a quorum); the node misses the
    // prepare of version 3 and gets only its commit: it must not put version 2's tree live as 3.
    let mut content = Builder::new("v2", AssignmentKind::Publish, "www", 2, None, 0);
    content
        .create("index.html", None, b"<h1>version two</h1>", false)
        .expect("create");
    interpreter.apply(&sealed(content)).expect("prepared");
    match commit(3) {
        Err(ApplyError::NotPrepared { prepared, asked }) => assert_eq!((prepared, asked), (Some(2), 3)),
        other => panic!("a commit of another version: {other:?}"),
    }
    assert_eq!(tree(&live)["index.html"], b"<h1>version one</h1>", "nothing switched");

    // A prepare that fails halfway leaves no version prepared, not the one before it.
    let mut broken = Builder::new("v4", AssignmentKind::Publish, "www", 4, None, 0);
    broken.create("a.html", None, b"a", false).expect("create");
    let other = b"not what the node holds ".repeat(100);
    let mut edited = other.clone();
    edited[500..503].copy_from_slice(b"xyz");
    broken.patch("docs/guide.txt", &other, &edited).expect("patch");
    assert!(interpreter.apply(&sealed(broken)).is_err());
    match commit(2) {
        Err(ApplyError::NotPrepared { prepared, asked }) => assert_eq!((prepared, asked), (None, 2)),
        other => panic!("a commit after a failed prepare: {other:?}"),
    }

    // Prepared again, the commit that names it switches, once.
    let mut content = Builder::new("v2", AssignmentKind::Publish, "www", 2, None, 0);
    content
        .create("index.html", None, b"<h1>version two</h1>", false)
        .expect("create");
    interpreter.apply(&sealed(content)).expect("prepared");
    commit(2).expect("committed");
    assert_eq!(tree(&live)["index.html"], b"<h1>version two</h1>");
    assert!(matches!(commit(2), Err(ApplyError::NotPrepared { prepared: None, .. })));
}

/// The entries of a site directory whose names start with `prefix`.
fn entries(site: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(site)
        .expect("site dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[test]
fn tidying_links_the_next_tree_from_live_and_deletes_superseded_versions() {
    let root = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(root.path());
    let site = root.path().join("www");
    let live = site.join("live");
    let version = |n: u64, text: &str| {
        let mut builder = Builder::new(&format!("v{n}"), AssignmentKind::Publish, "www", n, None, 0);
        builder
            .create("index.html", Some(0o644), text.as_bytes(), false)
            .expect("create");
        builder
            .create("same.txt", Some(0o644), b"unchanged everywhere", false)
            .expect("create");
        builder.command(Command::Commit);
        sealed(builder)
    };
    for n in 1..=4 {
        interpreter
            .apply(&version(n, &format!("version {n}")))
            .expect("applies");
        interpreter.tidy("www").expect("tidy");
    }
    // Within the grace period every superseded version stays, for readers that resolved `live` before.
    assert_eq!(std::fs::read_dir(site.join("versions")).expect("versions").count(), 4);
    // After it only live and backup are kept.
    interpreter
        .tidy_with_grace("www", std::time::Duration::ZERO)
        .expect("tidy");
    assert_eq!(std::fs::read_dir(site.join("versions")).expect("versions").count(), 2);
    assert!(entries(&site, ".trash-").is_empty(), "superseded versions deleted");
    let live_name = std::fs::read_link(&live).expect("live link");
    let live_name = live_name.file_name().expect("name").to_string_lossy().to_string();
    assert_eq!(entries(&site, "next-"), vec![format!("next-{live_name}")]);
    assert_eq!(tree(&site.join(format!("next-{live_name}"))), tree(&live));

    // A content assignment starts from the ready tree; live does not change before the commit, even though
    // the ready tree shares its files' inodes.
    let mut content = Builder::new("v5", AssignmentKind::Publish, "www", 5, None, 0);
    content.patch("index.html", b"version 4", b"version 5").expect("patch");
    content
        .create("same.txt", None, b"changed at last", false)
        .expect("create");
    interpreter.apply(&sealed(content)).expect("content applied");
    assert!(entries(&site, "next-").is_empty(), "the ready tree became temp");
    assert_eq!(tree(&live)["index.html"], b"version 4");
    assert_eq!(tree(&live)["same.txt"], b"unchanged everywhere");
    let mut commit = Builder::new("v5", AssignmentKind::Publish, "www", 5, None, 0);
    commit.command(Command::Commit);
    interpreter.apply(&sealed(commit)).expect("committed");
    assert_eq!(tree(&live)["index.html"], b"version 5");

    // After a rollback the ready tree follows live, and a patch against the rolled-back version applies.
    interpreter.tidy("www").expect("tidy");
    let mut rollback = Builder::new("r", AssignmentKind::Rollback, "www", 4, None, 0);
    rollback.command(Command::Rollback);
    interpreter.apply(&sealed(rollback)).expect("rolled back");
    interpreter.tidy("www").expect("tidy");
    assert_eq!(entries(&site, "next-").len(), 1);
    assert_eq!(tree(&live)["index.html"], b"version 4");
    let mut patch = Builder::new("v6", AssignmentKind::Publish, "www", 6, None, 0);
    patch.patch("index.html", b"version 4", b"version 6").expect("patch");
    patch.command(Command::Commit);
    interpreter
        .apply(&sealed(patch))
        .expect("applies to the rolled-back version");
    assert_eq!(tree(&live)["index.html"], b"version 6");
    assert_eq!(tree(&live)["same.txt"], b"unchanged everywhere");
}

/// The snapshot of a tree (following the root if it is a link, as `live` is).
fn snapshot(dir: &Path) -> Snapshot {
    let found = scan(dir, &Snapshot::new()).expect("scan");
    assert!(found.unsupported.is_empty(), "{:?}", found.unsupported);
    found.snapshot
}

fn stat(path: &Path) -> (u32, i64) {
    let metadata = std::fs::symlink_metadata(path).expect("stat");
    (tern_tree::mode_bits(&metadata), tern_tree::mtime_ns(&metadata))
}

const T: i64 = 1_600_000_000_123_456_789;

#[cfg(unix)]
#[test]
fn modes_times_directories_and_links_are_made_exactly() {
    let root = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(root.path());
    let mut builder = Builder::new("v1", AssignmentKind::Publish, "www", 1, None, 0);
    builder.command(Command::SetMetadata {
        path: String::new(),
        mode: Some(0o751),
        mtime_ns: Some(T),
    });
    for (path, mode) in [("private", 0o700), ("uploads", 0o755), ("locked", 0o555)] {
        builder.command(Command::Mkdir {
            path: path.into(),
            mode: Some(mode),
            mtime_ns: Some(T + 1),
        });
    }
    let empty = tern_wire::assignment::DataRef {
        offset: 0,
        len: 0,
        compression: tern_wire::assignment::Compression::None,
        size: 0,
        hash: blake3::hash(b"").to_hex().to_string(),
    };
    for (path, mode) in [("private/empty", 0o600), ("locked/run.cgi", 0o755)] {
        builder.command(Command::Create {
            path: path.into(),
            mode: Some(mode),
            mtime_ns: Some(T + 2),
            data: empty.clone(),
        });
    }
    builder.command(Command::Symlink {
        path: "latest".into(),
        target: "private/empty".into(),
        mtime_ns: Some(T + 3),
    });
    builder.command(Command::Commit);
    interpreter.apply(&sealed(builder)).expect("applies");
    let live = root.path().join("www/live");
    let mut expected = Snapshot::new();
    expected.insert(String::new(), Entry::dir(T, 0o751));
    expected.insert("private".into(), Entry::dir(T + 1, 0o700));
    expected.insert("uploads".into(), Entry::dir(T + 1, 0o755));
    expected.insert("locked".into(), Entry::dir(T + 1, 0o555));
    let nothing = blake3::hash(b"").to_hex().to_string();
    expected.insert("private/empty".into(), Entry::file(0, T + 2, 0o600, &nothing));
    expected.insert("locked/run.cgi".into(), Entry::file(0, T + 2, 0o755, &nothing));
    expected.insert("latest".into(), Entry::link("private/empty", T + 3));
    assert_eq!(
        snapshot(&live),
        expected,
        "the live tree is exactly what the assignment describes"
    );

    // Version 2: a chmod alone, a touch alone, a file written into the read-only directory, a renamed file
    // taken from the live version; the directories written into keep their times.
    let content = b"the same content under a new name".repeat(40);
    let mut builder = Builder::new("v2", AssignmentKind::Publish, "www", 2, None, 0);
    builder
        .create("uploads/big.bin", Some(0o644), &content, false)
        .expect("create");
    builder.command(Command::SetMetadata {
        path: "uploads/big.bin".into(),
        mode: None,
        mtime_ns: Some(T + 4),
    });
    builder.command(Command::Commit);
    interpreter.apply(&sealed(builder)).expect("applies");
    assert_eq!(
        stat(&live.join("uploads")).1,
        T + 1,
        "writing into a directory keeps its time"
    );
    assert_eq!(stat(&live.join("uploads/big.bin")), (0o644, T + 4));

    let hash = blake3::hash(&content).to_hex().to_string();
    let mut builder = Builder::new("v3", AssignmentKind::Publish, "www", 3, None, 0);
    builder.command(Command::Remove {
        path: "uploads/big.bin".into(),
    });
    builder.command(Command::Copy {
        from: "uploads/big.bin".into(),
        to: "locked/moved.bin".into(),
        hash: hash.clone(),
        mode: None,
        mtime_ns: None,
    });
    builder.command(Command::SetMetadata {
        path: "locked/run.cgi".into(),
        mode: Some(0o700),
        mtime_ns: None,
    });
    builder.command(Command::Commit);
    interpreter.apply(&sealed(builder)).expect("applies");
    assert_eq!(std::fs::read(live.join("locked/moved.bin")).expect("moved"), content);
    assert_eq!(
        stat(&live.join("locked/moved.bin")),
        (0o644, T + 4),
        "a move keeps mode and time"
    );
    assert_eq!(
        stat(&live.join("locked/run.cgi")),
        (0o700, T + 2),
        "chmod alone changes the mode only"
    );
    assert_eq!(
        stat(&live.join("locked")),
        (0o555, T + 1),
        "the read-only directory is as it was"
    );
    assert_eq!(stat(&live.join("uploads")), (0o755, T + 1));
    assert_eq!(
        stat(&root.path().join("www/backup/locked/run.cgi")),
        (0o755, T + 2),
        "the previous version's inode is untouched"
    );
    let root_dir = std::fs::canonicalize(&live).expect("live");
    assert_eq!(stat(&root_dir), (0o751, T), "the root keeps its mode and time");

    // A copy from a file that is not the one planned is refused.
    let mut builder = Builder::new("v4", AssignmentKind::Publish, "www", 4, None, 0);
    builder.command(Command::Copy {
        from: "locked/run.cgi".into(),
        to: "x".into(),
        hash,
        mode: None,
        mtime_ns: None,
    });
    assert!(matches!(
        interpreter.apply(&sealed(builder)),
        Err(ApplyError::SourceMismatch { .. })
    ));

    // A rollback brings back the previous version with its times (superseding it stamps nothing in it).
    let before_rollback = snapshot(&root.path().join("www/backup"));
    let mut rollback = Builder::new("r", AssignmentKind::Rollback, "www", 2, None, 0);
    rollback.command(Command::Rollback);
    interpreter.apply(&sealed(rollback)).expect("rolls back");
    assert_eq!(snapshot(&live), before_rollback);
}

#[cfg(unix)]
#[test]
fn links_that_would_leave_the_site_are_refused() {
    let area = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(area.path().join("root"));
    publish_v1(&interpreter);
    for (path, target) in [
        ("out", "../../../../etc"),
        ("docs/out", "../.."),
        ("abs", "/etc/passwd"),
        ("sneaky", "docs/../../x"),
    ] {
        let mut builder = Builder::new("bad", AssignmentKind::Publish, "www", 2, None, 0);
        builder.command(Command::Symlink {
            path: path.into(),
            target: target.into(),
            mtime_ns: None,
        });
        builder.command(Command::Commit);
        let refused = interpreter.apply(&sealed(builder)).expect_err(target);
        assert!(
            matches!(&refused, ApplyError::Link { path: named, .. } if named == path),
            "{path} -> {target}: {refused}"
        );
        assert!(refused.to_string().contains(path), "{refused}");
    }
    assert!(!area.path().join("root/www/live/out").exists());
}

/// The text of a target is not enough: with `self -> .`, `self/../etc` stays inside by its text but the
/// kernel climbs out of the root through the link. A `..` after a real directory is fine.
#[cfg(unix)]
#[test]
fn a_link_that_climbs_back_through_a_link_is_refused_and_through_a_directory_is_made() {
    let area = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(area.path().join("root"));
    publish_v1(&interpreter);
    let link = |builder: &mut Builder, path: &str, target: &str| {
        builder.command(Command::Symlink {
            path: path.into(),
            target: target.into(),
            mtime_ns: None,
        })
    };
    let mut builder = Builder::new("climb", AssignmentKind::Publish, "www", 2, None, 0);
    link(&mut builder, "escape", "self/../etc");
    link(&mut builder, "self", ".");
    builder.command(Command::Commit);
    let refused = interpreter.apply(&sealed(builder)).expect_err("escape");
    assert!(
        matches!(&refused, ApplyError::Link { path, .. } if path == "escape"),
        "{refused}"
    );
    assert!(!area.path().join("root/www/live/escape").exists());

    let mut builder = Builder::new("inside", AssignmentKind::Publish, "www", 2, None, 0);
    link(&mut builder, "home", "docs/../index.html");
    builder.command(Command::Commit);
    interpreter
        .apply(&sealed(builder))
        .expect("a link through a real directory");
    let home = std::fs::read_link(area.path().join("root/www/live/home")).expect("link");
    assert_eq!(home.to_str(), Some("docs/../index.html"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_the_same_validators_for_the_same_file() {
    use tern_wire::assignment::{Metadata, Packer};
    let area = tempfile::tempdir().expect("tempdir");
    let mut content = Builder::new("v1", AssignmentKind::Publish, "www", 1, None, 0);
    content.command(Command::Mkdir {
        path: "docs".into(),
        mode: Some(0o755),
        mtime_ns: Some(T),
    });
    let mut packer = Packer::new().expect("packer");
    for (path, body) in [("index.html", "<h1>home</h1>"), ("docs/guide.html", "<p>guide</p>")] {
        let metadata = Metadata {
            mode: Some(0o644),
            mtime_ns: Some(T + 7),
        };
        content
            .add(packer.whole(path, metadata, body.as_bytes(), true).expect("pack"))
            .expect("add");
    }
    content.command(Command::Commit);
    let bytes = content.finish(&signing(), None).expect("finish");
    let mut origins = Vec::new();
    for n in 0..3 {
        let interpreter = Interpreter::new(area.path().join(format!("node{n}")));
        interpreter
            .apply(&decode(&bytes, &signing().verifying_key(), None, &Limits::default()).expect("verifies"))
            .expect("applies");
        origins.push(
            tern_origin::start(tern_origin::OriginConfig {
                root: area.path().join(format!("node{n}/www/live")),
                listen: "127.0.0.1:0".parse().expect("addr"),
                ..tern_origin::OriginConfig::default()
            })
            .await
            .expect("tern serve"),
        );
    }
    let client = tern_edge::testsuite::client();
    for file in ["index.html", "docs/guide.html"] {
        let mut validators = Vec::new();
        for origin in &origins {
            let got =
                tern_edge::testsuite::send(&client, "GET", &format!("http://{}/{file}", origin.listen), &[]).await;
            assert_eq!(got.status, 200, "{file}");
            validators.push((got.header("etag").to_string(), got.header("last-modified").to_string()));
        }
        assert!(!validators[0].0.is_empty());
        assert_eq!(
            validators[0].1, "Sun, 13 Sep 2020 12:26:40 GMT",
            "the published time, not the node's"
        );
        assert!(
            validators.iter().all(|v| *v == validators[0]),
            "{file}: every node gives the same ETag and Last-Modified: {validators:?}"
        );
    }
}

/// A one-file publish of `version`, committed, issued at `created_ms`.
fn publish_one(interpreter: &Interpreter, version: u64, created_ms: u64, body: &[u8]) -> Result<(), ApplyError> {
    let mut builder = Builder::new(
        &format!("p{version}"),
        AssignmentKind::Publish,
        "www",
        version,
        None,
        created_ms,
    );
    builder.create("index.html", Some(0o644), body, false).expect("create");
    builder.command(Command::Commit);
    interpreter.apply(&sealed(builder)).map(|_| ())
}

#[test]
fn a_replayed_assignment_of_an_older_version_is_refused_also_after_a_removal() {
    let root = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(root.path());
    let live = root.path().join("www/live");
    publish_one(&interpreter, 7, 1_000, b"seven").expect("7");
    publish_one(&interpreter, 8, 2_000, b"eight").expect("8");
    // The full copy of 7, captured on its way to another node and sent here again: refused, live unchanged.
    let mut replay = Builder::new("s7", AssignmentKind::Replicate, "www", 7, None, 1_500);
    replay
        .create("index.html", Some(0o644), b"seven", false)
        .expect("create");
    let error = interpreter
        .apply(&sealed(replay))
        .expect_err("an older version is refused");
    assert!(matches!(error, ApplyError::Stale { held: 8, .. }), "{error}");
    assert!(error.to_string().contains("ROOT/.state/marks/www"), "{error}");
    let mut commit = Builder::new("c7", AssignmentKind::Publish, "www", 7, None, 1_600);
    commit.command(Command::Commit);
    assert!(matches!(
        interpreter.apply(&sealed(commit)),
        Err(ApplyError::Stale { .. })
    ));
    assert_eq!(std::fs::read(live.join("index.html")).expect("live"), b"eight");
    // The same version again is taken (a forced full copy of the current version).
    let mut again = Builder::new("s8", AssignmentKind::Replicate, "www", 8, None, 3_000);
    again
        .create("index.html", Some(0o644), b"eight", false)
        .expect("create");
    again.command(Command::Commit);
    interpreter.apply(&sealed(again)).expect("the version held, again");

    // Removed, the site does not come back with an old publish; a newer one brings it back.
    let remove = Builder::new("rm", AssignmentKind::Remove, "www", 9, None, 4_000);
    interpreter.apply(&sealed(remove)).expect("removed");
    assert!(!root.path().join("www").exists());
    assert!(matches!(
        publish_one(&interpreter, 8, 5_000, b"eight"),
        Err(ApplyError::Stale { held: 9, .. })
    ));
    assert!(!root.path().join("www").exists(), "nothing of the refused one is left");
    publish_one(&interpreter, 10, 6_000, b"ten").expect("a newer version");
    assert_eq!(std::fs::read(live.join("index.html")).expect("live"), b"ten");
}

#[test]
fn a_rollback_issued_before_the_switch_it_would_undo_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(root.path());
    let live = root.path().join("www/live");
    publish_one(&interpreter, 1, 1_000, b"one").expect("1");
    publish_one(&interpreter, 2, 2_000, b"two").expect("2");
    let rollback_to_1 = |created_ms| {
        let mut rollback = Builder::new("r1", AssignmentKind::Rollback, "www", 1, None, created_ms);
        rollback.command(Command::Rollback);
        sealed(rollback)
    };
    interpreter.apply(&rollback_to_1(3_000)).expect("rolls back");
    assert_eq!(std::fs::read(live.join("index.html")).expect("live"), b"one");
    // Version 3 goes live with 1 as its backup; the old rollback, replayed, would switch back to 1.
    publish_one(&interpreter, 3, 4_000, b"three").expect("3");
    assert!(matches!(
        interpreter.apply(&rollback_to_1(3_000)),
        Err(ApplyError::Stale { .. })
    ));
    assert_eq!(std::fs::read(live.join("index.html")).expect("live"), b"three");
    interpreter.apply(&rollback_to_1(5_000)).expect("a rollback issued now");
    assert_eq!(std::fs::read(live.join("index.html")).expect("live"), b"one");
}

#[test]
fn a_node_that_never_held_the_site_refuses_a_switch_issued_long_ago() {
    let root = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(root.path()).refusing_switches_older_than(std::time::Duration::from_secs(3600));
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    // A publish captured two hours ago, replayed to a node that has no mark for the site.
    let error = publish_one(&interpreter, 1, now_ms - 2 * 3_600_000, b"old").expect_err("too old");
    assert!(matches!(error, ApplyError::Expired { .. }), "{error}");
    assert!(error.to_string().contains("check the clocks"), "{error}");
    assert!(interpreter.live("www").is_none(), "nothing went live");
    publish_one(&interpreter, 1, now_ms - 60_000, b"recent").expect("a switch issued a minute ago");
}

/// A publish planned against version `base` adding `name`, with its commit.
fn change_of(base: Option<u64>, sequence: u64, name: &str) -> Assignment {
    let mut builder = Builder::new(
        &format!("p{sequence}"),
        AssignmentKind::Publish,
        "www",
        sequence,
        base.map(|version| version.to_string()),
        sequence * 1_000,
    );
    builder
        .create(name, Some(0o644), name.as_bytes(), false)
        .expect("create");
    builder.command(Command::Commit);
    sealed(builder)
}

#[test]
fn a_change_planned_against_another_version_is_refused_and_changes_nothing() {
    // A trial's finding: a node whose first publish and catch-up failed took the next publish's new file
    // alone, committed, and served a site with every other file missing.
    let root = tempfile::tempdir().expect("tempdir");
    let interpreter = Interpreter::new(root.path());
    let error = interpreter
        .apply(&change_of(Some(1), 2, "new.html"))
        .expect_err("no version held");
    assert!(
        matches!(
            error,
            ApplyError::NotAtBase {
                base: 1,
                live: None,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("holds no version of it"), "{error}");
    assert!(!root.path().join("www/live").exists(), "nothing made live");
    assert!(!root.path().join("www/versions").exists(), "nothing left behind");

    publish_v1(&interpreter);
    let error = interpreter
        .apply(&change_of(Some(2), 3, "three.html"))
        .expect_err("version 1 held, the change is against 2");
    assert!(
        matches!(
            error,
            ApplyError::NotAtBase {
                base: 2,
                live: Some(1),
                ..
            }
        ),
        "{error}"
    );
    let live = root.path().join("www/live");
    assert!(!live.join("three.html").exists());
    // Against the version held: taken. Without a base (a mover before bases were named): taken as before.
    interpreter
        .apply(&change_of(Some(1), 2, "two.html"))
        .expect("against version 1");
    assert!(live.join("two.html").exists());
    interpreter
        .apply(&change_of(None, 3, "three.html"))
        .expect("no base named");
    assert!(live.join("three.html").exists() && live.join("two.html").exists());
}
