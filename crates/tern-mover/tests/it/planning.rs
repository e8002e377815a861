use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::SigningKey;
use tern_mover::{PlanPolicy, Publication, plan};
use tern_node::Interpreter;
use tern_tree::{Snapshot, scan};
use tern_wire::assignment::{AssignmentKind, Builder, Command, Limits, decode};

fn publication(sequence: u64, id: &str) -> Publication<'_> {
    Publication {
        id,
        site: "www",
        sequence,
        base: sequence.checked_sub(1).filter(|version| *version > 0),
        created_ms: 0,
    }
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[11; 32])
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    tern_tree::contents(dir)
}

/// Applies an assignment (plus the second-phase commit) on a node root.
fn deliver(node: &Interpreter, assignment: &tern_mover::payload::Payload, sequence: u64) {
    let assignment = assignment.to_vec().expect("the planned assignment reads back");
    let verified = decode(&assignment, &key().verifying_key(), None, &Limits::default()).expect("verifies");
    node.apply(&verified).expect("content applies");
    let mut commit = Builder::new(
        &format!("commit-{sequence}"),
        AssignmentKind::Publish,
        "www",
        sequence,
        None,
        0,
    );
    commit.command(Command::Commit);
    let commit = commit.finish(&key(), None).expect("commit");
    node.apply(&decode(&commit, &key().verifying_key(), None, &Limits::default()).expect("verifies"))
        .expect("commits");
}

fn copy_tree(from: &Path, to: &Path) {
    for (path, content) in tree(from) {
        let target = to.join(&path);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::write(target, content).expect("write");
    }
}

#[test]
fn a_site_of_thousands_of_files_reaches_three_nodes_identically() {
    let area = tempfile::tempdir().expect("tempdir");
    let staging = area.path().join("staging");
    let shadow = area.path().join("shadow");
    std::fs::create_dir_all(&shadow).expect("mkdir");
    for n in 0..3000 {
        let path = staging.join(format!("section{}/page{n}.html", n % 30));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(
            &path,
            format!("<html><body>page {n} {}</body></html>", "lorem ipsum ".repeat(n % 50)),
        )
        .expect("write");
    }
    let first = plan(
        &staging,
        &shadow,
        &Snapshot::new(),
        &publication(1, "p1"),
        &PlanPolicy::default(),
        &key(),
    )
    .expect("plan");
    assert_eq!(first.stats.created, 3000);
    let nodes: Vec<Interpreter> = (0..3)
        .map(|n| Interpreter::new(area.path().join(format!("node{n}"))))
        .collect();
    for node in &nodes {
        deliver(node, &first.assignment, 1);
    }
    let expected = tree(&staging);
    for (n, node) in nodes.iter().enumerate() {
        assert_eq!(
            tree(&node.live("www").expect("live")),
            expected,
            "node {n} is byte-identical to staging"
        );
    }

    // Change some, add some, remove some: the next publish carries only that.
    copy_tree(&staging, &shadow);
    let shadow_snapshot = scan(&shadow, &Snapshot::new()).expect("scan").snapshot;
    std::fs::write(staging.join("section1/page1.html"), "changed").expect("write");
    std::fs::write(staging.join("section2/new.html"), "new page").expect("write");
    std::fs::remove_file(staging.join("section3/page3.html")).expect("rm");
    let second = plan(
        &staging,
        &shadow,
        &shadow_snapshot,
        &publication(2, "p2"),
        &PlanPolicy::default(),
        &key(),
    )
    .expect("plan");
    assert_eq!(
        (second.stats.created + second.stats.patched, second.stats.removed),
        (2, 1)
    );
    for node in &nodes {
        deliver(node, &second.assignment, 2);
    }
    let expected = tree(&staging);
    for (n, node) in nodes.iter().enumerate() {
        assert_eq!(
            tree(&node.live("www").expect("live")),
            expected,
            "node {n} after the second publish"
        );
    }
}

#[test]
fn a_small_change_to_a_large_file_sends_a_small_delta() {
    let area = tempfile::tempdir().expect("tempdir");
    let staging = area.path().join("staging");
    let shadow = area.path().join("shadow");
    std::fs::create_dir_all(&staging).expect("mkdir");
    std::fs::create_dir_all(&shadow).expect("mkdir");
    // 10 MB that does not compress well on its own (a pseudo-random stream).
    let mut state = 0x1234_5678_u64;
    let large: Vec<u8> = (0..10 * 1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(shadow.join("large.bin"), &large).expect("write");
    let mut changed = large.clone();
    changed[5_000_000..5_000_100].copy_from_slice(&[0x42; 100]);
    std::fs::write(staging.join("large.bin"), &changed).expect("write");

    let node = Interpreter::new(area.path().join("node"));
    // The node holds the shadow version first.
    let base = plan(
        &shadow,
        &staging.join("none"),
        &Snapshot::new(),
        &publication(1, "base"),
        &PlanPolicy::default(),
        &key(),
    )
    .expect("plan");
    deliver(&node, &base.assignment, 1);

    let shadow_snapshot = scan(&shadow, &Snapshot::new()).expect("scan").snapshot;
    let planned = plan(
        &staging,
        &shadow,
        &shadow_snapshot,
        &publication(2, "small"),
        &PlanPolicy::default(),
        &key(),
    )
    .expect("plan");
    let share = planned.stats.assignment_bytes as f64 / large.len() as f64;
    println!(
        "100 bytes changed in a 10 MiB file: assignment of {} bytes ({:.4}% of the file)",
        planned.stats.assignment_bytes,
        share * 100.0
    );
    assert_eq!(planned.stats.patched, 1);
    assert!(share < 0.01, "the assignment is {:.3}% of the file", share * 100.0);
    deliver(&node, &planned.assignment, 2);
    assert_eq!(
        std::fs::read(node.live("www").expect("live").join("large.bin")).expect("read"),
        changed
    );
}

/// A pseudo-random stream that does not compress (`len` bytes).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn files_past_the_stream_size_are_packed_in_a_stream_and_arrive_byte_exact() {
    let area = tempfile::tempdir().expect("tempdir");
    let (first, second) = (area.path().join("v1"), area.path().join("v2"));
    let stream_from = tern_wire::assignment::STREAM_FROM as usize;
    let random = noise(stream_from + 4096, 21);
    let text = b"<tr><td>a row of a large generated table</td></tr>\n".repeat(stream_from / 40);
    for dir in [&first, &second] {
        std::fs::create_dir_all(dir.join("d")).expect("mkdir");
        std::fs::write(dir.join("d/small.html"), b"<p>small</p>").expect("write");
    }
    std::fs::write(first.join("random.bin"), &random).expect("write");
    std::fs::write(first.join("d/table.html"), &text).expect("write");
    let mut edited = random.clone();
    edited[stream_from / 2..stream_from / 2 + 100].copy_from_slice(&[0x42; 100]);
    std::fs::write(second.join("random.bin"), &edited).expect("write");
    let rewritten = b"<tr><td>another table altogether, longer rows</td><td>2</td></tr>\n".repeat(stream_from / 50);
    std::fs::write(second.join("d/table.html"), &rewritten).expect("write");

    let node = Interpreter::new(area.path().join("node"));
    let shadow = area.path().join("shadow");
    std::fs::create_dir_all(&shadow).expect("mkdir");
    let whole = plan(
        &first,
        &shadow,
        &Snapshot::new(),
        &publication(1, "first"),
        &PlanPolicy::default(),
        &key(),
    )
    .expect("plan");
    assert_eq!(whole.stats.created, 3);
    // The random file is carried as it is, the table compressed.
    assert!(whole.stats.assignment_bytes < (random.len() + text.len() / 10) as u64);
    deliver(&node, &whole.assignment, 1);
    assert_eq!(tree(&node.live("www").expect("live")), tree(&first));

    copy_tree(&first, &shadow);
    let shadow_snapshot = scan(&shadow, &Snapshot::new()).expect("scan").snapshot;
    let changed = plan(
        &second,
        &shadow,
        &shadow_snapshot,
        &publication(2, "second"),
        &PlanPolicy::default(),
        &key(),
    )
    .expect("plan");
    assert_eq!(changed.stats.patched + changed.stats.created, 2, "{:?}", changed.stats);
    assert!(
        changed.stats.assignment_bytes < 100_000 + rewritten.len() as u64 / 10,
        "100 bytes of a {} MiB file changed and a table rewritten: {} bytes",
        stream_from >> 20,
        changed.stats.assignment_bytes
    );
    deliver(&node, &changed.assignment, 2);
    assert_eq!(tree(&node.live("www").expect("live")), tree(&second));
}

#[test]
fn a_renamed_large_file_costs_a_few_hundred_bytes() {
    let area = tempfile::tempdir().expect("tempdir");
    let staging = area.path().join("staging");
    let shadow = area.path().join("shadow");
    std::fs::create_dir_all(staging.join("media")).expect("mkdir");
    std::fs::create_dir_all(&shadow).expect("mkdir");
    let big = noise(5 * 1024 * 1024, 0x5eed);
    std::fs::write(staging.join("media/big.bin"), &big).expect("write");
    std::fs::write(staging.join("index.html"), "home").expect("write");
    let node = Interpreter::new(area.path().join("node"));
    let first = plan(
        &staging,
        &shadow,
        &Snapshot::new(),
        &publication(1, "p1"),
        &PlanPolicy::default(),
        &key(),
    )
    .expect("plan");
    assert!(
        first.stats.assignment_bytes > big.len() as u64,
        "the first publish carries the file"
    );
    deliver(&node, &first.assignment, 1);

    std::fs::rename(staging.join("media/big.bin"), staging.join("media/renamed big.bin")).expect("mv");
    let second = plan(
        &staging,
        &shadow,
        &first.snapshot,
        &publication(2, "p2"),
        &PlanPolicy::default(),
        &key(),
    )
    .expect("plan");
    println!(
        "a renamed 5 MiB file: assignment of {} bytes ({} commands)",
        second.stats.assignment_bytes, second.stats.commands
    );
    assert_eq!(
        (second.stats.copied, second.stats.created, second.stats.patched),
        (1, 0, 0)
    );
    assert_eq!(second.stats.removed, 1);
    assert!(
        second.stats.assignment_bytes < 1024,
        "a rename costs a few hundred bytes, not the file: {} bytes",
        second.stats.assignment_bytes
    );
    deliver(&node, &second.assignment, 2);
    let live = node.live("www").expect("live");
    assert_eq!(std::fs::read(live.join("media/renamed big.bin")).expect("read"), big);
    assert!(!live.join("media/big.bin").exists());
    assert_eq!(
        scan(&live, &Snapshot::new()).expect("scan").snapshot,
        second.snapshot,
        "the node holds exactly the staging tree"
    );

    // Planning the same tree again finds nothing to do.
    let third = plan(
        &staging,
        &shadow,
        &second.snapshot,
        &publication(3, "p3"),
        &PlanPolicy::default(),
        &key(),
    )
    .expect("plan");
    assert!(third.stats.is_unchanged(), "{:?}", third.stats);
}

#[cfg(unix)]
#[test]
fn what_cannot_be_carried_stops_the_plan_by_name_unless_a_rule_excludes_it() {
    use std::os::unix::ffi::OsStrExt;
    use tern_mover::rules::{CompiledRules, Rules};
    let area = tempfile::tempdir().expect("tempdir");
    let staging = area.path().join("staging");
    std::fs::create_dir_all(staging.join("run")).expect("mkdir");
    std::fs::write(staging.join("index.html"), "home").expect("write");
    std::fs::write(
        staging.join(std::ffi::OsStr::from_bytes(b"r\xe9sum\xe9.html")),
        "latin-1",
    )
    .expect("write");
    let _socket = std::os::unix::net::UnixListener::bind(staging.join("run/app.sock")).expect("bind");
    let attempt = |rules: &Rules| {
        tern_mover::plan::plan_site(
            &staging,
            &area.path().join("shadow"),
            &Snapshot::new(),
            &publication(1, "p1"),
            &PlanPolicy::default(),
            &key(),
            AssignmentKind::Publish,
            Some(&CompiledRules::new(rules).expect("rules")),
        )
    };
    let refused = attempt(&Rules::default()).expect_err("refused").to_string();
    for named in [
        "2 entries cannot be published",
        "`r\\xe9sum\\xe9.html`: the name is not valid UTF-8",
        "`run/app.sock`: a socket",
        "--exclude",
    ] {
        assert!(refused.contains(named), "the refusal says `{named}`: {refused}");
    }
    let rules = Rules {
        include: Vec::new(),
        exclude: vec!["run/".into(), "r*sum*.html".into()],
    };
    let planned = attempt(&rules).expect("the rest is published");
    assert_eq!(planned.stats.created, 1);
    assert!(!planned.snapshot.contains_key("run"));
}

/// Publishing `/etc` said `21 entries cannot be published: …20 named… and 571 more`: the count is the
/// real total, and the names stop at 20.
#[cfg(unix)]
#[test]
fn a_refusal_counts_every_entry_it_cannot_carry_and_names_the_first_twenty() {
    let area = tempfile::tempdir().expect("tempdir");
    let staging = area.path().join("staging");
    std::fs::create_dir_all(&staging).expect("mkdir");
    std::fs::write(staging.join("index.html"), "home").expect("write");
    for n in 0..25 {
        std::os::unix::fs::symlink(format!("/etc/conf{n:02}"), staging.join(format!("link{n:02}"))).expect("symlink");
    }
    let refused = plan(
        &staging,
        &area.path().join("shadow"),
        &Snapshot::new(),
        &publication(1, "p1"),
        &PlanPolicy::default(),
        &key(),
    )
    .expect_err("refused");
    let message = refused.to_string();
    assert!(message.contains(": 25 entries cannot be published: "), "{message}");
    assert!(
        message.contains("symbolic link `link19`: its target `/etc/conf19` is absolute"),
        "{message}"
    );
    assert!(!message.contains("`link20`"), "only 20 are named: {message}");
    assert!(message.contains("; and 5 more;"), "{message}");
    match refused {
        tern_mover::plan::PlanError::Refused { total, problems, .. } => {
            assert_eq!((total, problems.len()), (25, 21), "20 named, then how many more")
        }
        other => panic!("{other}"),
    }
}

/// A link whose target climbs back after a name but stays inside the root (`bin/../index.html`) is
/// published as rsync copies it; one that leaves the root, or climbs out of a link, is refused by name.
#[cfg(unix)]
#[test]
fn a_link_that_climbs_after_a_name_is_published_while_it_stays_inside_the_root() {
    use std::os::unix::fs::symlink;
    let area = tempfile::tempdir().expect("tempdir");
    let staging = area.path().join("staging");
    std::fs::create_dir_all(staging.join("bin")).expect("mkdir");
    std::fs::write(staging.join("index.html"), "home").expect("write");
    symlink("bin/../index.html", staging.join("home.html")).expect("symlink");
    symlink("../bin/../index.html", staging.join("bin/up.html")).expect("symlink");
    let attempt = || {
        plan(
            &staging,
            &area.path().join("shadow"),
            &Snapshot::new(),
            &publication(1, "p1"),
            &PlanPolicy::default(),
            &key(),
        )
    };
    let planned = attempt().expect("inside the root");
    assert_eq!(planned.stats.links, 2);
    assert_eq!(
        planned.snapshot["home.html"].target.as_deref(),
        Some("bin/../index.html")
    );
    let node = Interpreter::new(area.path().join("node"));
    deliver(&node, &planned.assignment, 1);
    let live = node.live("www").expect("live");
    assert_eq!(
        std::fs::read_link(live.join("home.html")).expect("link"),
        Path::new("bin/../index.html")
    );
    assert_eq!(std::fs::read(live.join("home.html")).expect("follows"), b"home");

    symlink("bin/../../outside", staging.join("out")).expect("symlink");
    symlink(".", staging.join("self")).expect("symlink");
    symlink("self/../secret", staging.join("escape")).expect("symlink");
    let message = attempt().expect_err("refused").to_string();
    assert!(message.contains("2 entries cannot be published"), "{message}");
    assert!(
        message.contains("symbolic link `out`: its target `bin/../../outside` points outside the site root"),
        "{message}"
    );
    assert!(
        message.contains("symbolic link `escape`: its target `self/../secret` climbs with `..` out of `self`"),
        "{message}"
    );
}

#[test]
fn set_user_and_group_id_bits_never_reach_a_node() {
    use std::os::unix::fs::PermissionsExt;
    let area = tempfile::tempdir().expect("tempdir");
    let staging = area.path().join("staging");
    let shadow = area.path().join("shadow");
    std::fs::create_dir_all(staging.join("bin")).expect("mkdir");
    std::fs::create_dir_all(&shadow).expect("mkdir");
    std::fs::write(staging.join("bin/tool"), "#!/bin/sh\n").expect("write");
    std::fs::write(staging.join("index.html"), "home").expect("write");
    std::fs::set_permissions(staging.join("bin/tool"), std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    std::fs::set_permissions(staging.join("bin"), std::fs::Permissions::from_mode(0o2775)).expect("chmod");
    let planned = plan(
        &staging,
        &shadow,
        &Snapshot::new(),
        &publication(1, "p1"),
        &PlanPolicy::default(),
        &key(),
    )
    .expect("plan");
    assert_eq!(planned.stats.setid_cleared, 2);
    assert_eq!(planned.stats.setid_first.as_deref(), Some("bin"));
    let node = Interpreter::new(area.path().join("node"));
    deliver(&node, &planned.assignment, 1);
    let live = node.live("www").expect("live");
    let mode = |path: &str| std::fs::metadata(live.join(path)).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode("bin/tool"), 0o755);
    assert_eq!(mode("bin"), 0o775);
    // An assignment that carries the bits anyway (another mover release) does not set them either.
    let mut builder = Builder::new("p2", AssignmentKind::Publish, "www", 2, None, 0);
    builder.create("bin/other", Some(0o6755), b"x", false).expect("create");
    builder.command(Command::Commit);
    let bytes = builder.finish(&key(), None).expect("finish");
    node.apply(&decode(&bytes, &key().verifying_key(), None, &Limits::default()).expect("verifies"))
        .expect("applies");
    let live = node.live("www").expect("live");
    let other = std::fs::metadata(live.join("bin/other"))
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(other, 0o755);
}
