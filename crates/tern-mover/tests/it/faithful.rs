//! A faithful copy (issue 10, item 1): the mover and three node agents on real sockets publish a tree with
//! hidden files and folders, empty directories, a private directory, an executable, symbolic links, names with
//! spaces and non-ASCII letters and a zero-byte file, and every node's `live` is then staging exactly —
//! content, kind, mode, modification time and link target — by `rsync -a --dry-run --itemize-changes` (which
//! reports nothing to do) and by comparing snapshots. A `chmod` alone is published; an unchanged tree
//! publishes as a success without a version; a link out of the root is refused by name; a rewrite that keeps
//! the size and the mtime, and another staging directory matching them, are published.

use std::path::Path;
use std::process::Command as Process;

use tern_tree::{Snapshot, scan, set_mode, set_mtime};

use crate::jobs::Fleet;

/// A time in 2001 with nanoseconds, so a node that keeps only seconds, or stamps its own time, shows.
const OLD: i64 = 1_000_000_000_123_456_789;

fn write(root: &Path, path: &str, content: &[u8]) {
    let target = root.join(path);
    std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
    std::fs::write(target, content).expect("write");
}

/// The staging tree of the acceptance test.
fn build_staging(staging: &Path) {
    write(staging, ".well-known/acme-challenge/x", b"acme token");
    write(
        staging,
        ".well-known/security.txt",
        b"Contact: mailto:security@example.com",
    );
    write(staging, ".htaccess", b"Options -Indexes");
    write(staging, ".nojekyll", b"");
    write(staging, "index.html", b"<h1>home</h1>");
    write(staging, "docs/guide.html", &b"<p>a guide</p>".repeat(100));
    write(staging, "docs/with space.html", b"spaces");
    write(staging, "docs/caf\u{e9} \u{2013} \u{fc}n\u{ef}code.html", b"non-ASCII");
    write(
        staging,
        "\u{65e5}\u{672c}\u{8a9e}/\u{30da}\u{30fc}\u{30b8}.html",
        b"Japanese",
    );
    write(staging, "empty.txt", b"");
    write(staging, "cgi-bin/run.cgi", b"#!/bin/sh\necho hello\n");
    write(staging, "private/notes.txt", b"only the owner");
    std::fs::create_dir_all(staging.join("uploads")).expect("mkdir");
    std::fs::create_dir_all(staging.join("cache/a/b")).expect("mkdir");
    set_mode(&staging.join("cgi-bin/run.cgi"), 0o755).expect("chmod");
    set_mode(&staging.join("private"), 0o700).expect("chmod");
    set_mtime(&staging.join("docs/guide.html"), OLD).expect("touch");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("docs/guide.html", staging.join("guide")).expect("symlink");
        std::os::unix::fs::symlink("../index.html", staging.join("docs/home.html")).expect("symlink");
        std::os::unix::fs::symlink("docs", staging.join("documentation")).expect("symlink");
        set_mtime(&staging.join("guide"), OLD + 1).expect("touch a link");
    }
    // Directory times last: writing into a directory changes its time.
    set_mtime(&staging.join("cache/a"), OLD + 2).expect("touch");
    set_mtime(&staging.join("uploads"), OLD + 3).expect("touch");
}

fn snapshot(dir: &Path) -> Snapshot {
    let found = scan(dir, &Snapshot::new()).expect("scan");
    assert!(found.unsupported.is_empty(), "{:?}", found.unsupported);
    found.snapshot
}

/// What `rsync -a --dry-run --itemize-changes --delete` would do to make `copy` equal `staging` (empty: the
/// same); `None` where rsync is missing.
fn rsync_changes(staging: &Path, copy: &Path) -> Option<String> {
    let output = Process::new("rsync")
        .args(["-a", "--dry-run", "--itemize-changes", "--delete"])
        .arg(format!("{}/", staging.display()))
        .arg(format!("{}/", copy.display()))
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8_lossy(&output.stdout).to_string())
}

/// Every node's `live` is staging exactly.
fn assert_faithful(fleet: &Fleet, staging: &Path, when: &str) {
    let expected = snapshot(staging);
    let mut rsync_missing = false;
    for index in 0..3 {
        let live = fleet.node_root(index).join("www/live");
        let found = snapshot(&live);
        for (path, entry) in &expected {
            assert_eq!(found.get(path), Some(entry), "{when}: node {index}, `{path}`");
        }
        assert_eq!(found, expected, "{when}: node {index} holds exactly staging");
        match rsync_changes(staging, &live) {
            Some(changes) => assert_eq!(changes, "", "{when}: rsync would change node {index}"),
            None => rsync_missing = true,
        }
    }
    if rsync_missing {
        println!("rsync is missing: the comparison with rsync -a was skipped (apt-get install rsync)");
    }
}

async fn site_version(fleet: &Fleet) -> (u64, usize) {
    let site = fleet.api("GET", "/api/sites/www", None).await;
    let sequence = site["site"]["sequence"]
        .as_u64()
        .unwrap_or_else(|| panic!("site: {site}"));
    let snapshots = site["snapshots"].as_array().map(Vec::len).unwrap_or(0);
    (sequence, snapshots)
}

fn kept_snapshots(fleet: &Fleet) -> usize {
    std::fs::read_dir(fleet.area.path().join("mover/sites/www/snapshots"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_holds_the_staging_tree_exactly_and_an_unchanged_publish_is_a_no_op() {
    let fleet = Fleet::new(3, None).await;
    let staging = fleet.area.path().join("staging");
    build_staging(&staging);
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "committed", "{job}");
    assert_faithful(&fleet, &staging, "first publish");

    // A chmod alone is a change, and it is published.
    set_mode(&staging.join("cgi-bin/run.cgi"), 0o700).expect("chmod");
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "committed", "{job}");
    assert_eq!(site_version(&fleet).await.0, 2);
    assert_faithful(&fleet, &staging, "after a chmod");
    let (version, snapshots) = site_version(&fleet).await;
    let kept = kept_snapshots(&fleet);

    // The same tree twice: both succeed, neither makes a version or a snapshot or sends anything.
    for attempt in 1..=2 {
        let job = fleet.run("publish", Some(&staging)).await;
        assert_eq!(job["state"], "committed", "unchanged publish {attempt}: {job}");
        assert_eq!(site_version(&fleet).await, (version, snapshots), "attempt {attempt}");
        assert_eq!(kept_snapshots(&fleet), kept, "no snapshot kept");
        let nodes = job["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 3);
        for node in nodes {
            assert_eq!(node["state"], "committed", "{job}");
            assert_eq!(node["bytes"], 0, "nothing was sent: {job}");
        }
    }
    let history = fleet.api("GET", "/api/history", None).await.to_string();
    assert!(history.contains("nothing changed since version 2"), "{history}");
    assert_faithful(&fleet, &staging, "after unchanged publishes");

    // A touch alone travels too, and a removed directory goes with its contents.
    set_mtime(&staging.join("index.html"), OLD + 9).expect("touch");
    std::fs::remove_dir_all(staging.join("cache")).expect("rm");
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "committed", "{job}");
    assert_eq!(site_version(&fleet).await.0, 3);
    assert_faithful(&fleet, &staging, "after a touch and a removal");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_out_of_the_site_is_refused_by_name_unless_a_rule_excludes_it() {
    let fleet = Fleet::new(3, None).await;
    let staging = fleet.area.path().join("staging");
    write(&staging, "index.html", b"home");
    std::os::unix::fs::symlink("../../../etc/passwd", staging.join("passwords")).expect("symlink");
    std::os::unix::fs::symlink("/etc", staging.join("etc")).expect("symlink");
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    for named in [
        "symbolic link `passwords`: its target `../../../etc/passwd` points outside the site root",
        "symbolic link `etc`: its target `/etc` is absolute",
        "--exclude",
    ] {
        assert!(error.contains(named), "the refusal says `{named}`: {error}");
    }
    for index in 0..3 {
        assert!(
            !fleet.node_root(index).join("www/live").exists(),
            "nothing reached node {index}"
        );
    }

    // An explicit rule leaves the links out; the rest is published.
    let body = serde_json::json!({
        "kind": "publish",
        "site": "www",
        "staging": staging.display().to_string(),
        "exclude": ["passwords", "etc"],
    });
    let created = fleet.api("POST", "/api/jobs", Some(body)).await;
    let job = fleet.wait_job(created["id"].as_str().expect("id")).await;
    assert_eq!(job["state"], "committed", "{job}");
    for index in 0..3 {
        let live = fleet.node_root(index).join("www/live");
        assert_eq!(std::fs::read(live.join("index.html")).expect("read"), b"home");
        assert!(std::fs::symlink_metadata(live.join("passwords")).is_err());
    }
}

/// Issue 10's trial: a content change that keeps the size and the mtime (a build pinning mtimes with
/// SOURCE_DATE_EPOCH or Nix's mtime 1, `cp -p`, two writes in one timestamp tick) was never published: the
/// scan reused the old hash, the publish said "committed 0 B" and the nodes kept the old file. Nor is a
/// file of another staging directory that happens to match a published one's size and mtime.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_that_keeps_the_size_and_the_mtime_is_published() {
    const EPOCH_1: i64 = 1_000_000_000; // `touch -d @1`
    let fleet = Fleet::new(3, None).await;
    let staging = fleet.area.path().join("staging");
    write(&staging, "index.html", b"version 1.2.3\n");
    write(&staging, "about.html", b"about us");
    for path in ["index.html", "about.html", ""] {
        set_mtime(&staging.join(path), EPOCH_1).expect("touch -d @1");
    }
    // Past the racily clean window, so that the first publish records how it found every file and the
    // second trusts every record that still holds: the quick check itself is under test, not the window.
    tokio::time::sleep(std::time::Duration::from_nanos(tern_tree::RACY_NS as u64 + 500_000_000)).await;
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "committed", "{job}");
    assert_faithful(&fleet, &staging, "first publish");

    write(&staging, "index.html", b"version 1.2.4\n");
    for path in ["index.html", ""] {
        set_mtime(&staging.join(path), EPOCH_1).expect("touch -d @1");
    }
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "committed", "{job}");
    assert_eq!(site_version(&fleet).await.0, 2, "a new version: {job}");
    for index in 0..3 {
        let live = fleet.node_root(index).join("www/live");
        assert_eq!(
            std::fs::read(live.join("index.html")).expect("read"),
            b"version 1.2.4\n",
            "node {index}"
        );
    }
    assert_faithful(&fleet, &staging, "after a rewrite with the mtime set back");

    // Another staging directory for the same site: same names, sizes and mtimes, other bytes.
    let other = fleet.area.path().join("other");
    write(&other, "index.html", b"version 1.2.5\n");
    write(&other, "about.html", b"ABOUT US");
    for path in ["index.html", "about.html", ""] {
        set_mtime(&other.join(path), EPOCH_1).expect("touch -d @1");
    }
    let job = fleet.run("publish", Some(&other)).await;
    assert_eq!(job["state"], "committed", "{job}");
    assert_eq!(site_version(&fleet).await.0, 3, "a new version: {job}");
    assert_faithful(&fleet, &other, "after publishing another staging directory");
}
