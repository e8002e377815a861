//! `tern mover`, `tern node`, `tern publish` and `tern rollback` as processes.

use std::time::Duration;

use tern_edge::testsuite::{client, send};

use crate::{free_addr, spawn, tern, write};

#[tokio::test]
async fn publish_and_rollback_through_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    let mover_addr = free_addr();
    // Every assignment is encrypted: the mover and the nodes share a key file.
    let keygen = tern().args(["keygen", &path("assignments.key")]).output().expect("run");
    assert!(keygen.status.success());
    let _mover = spawn(
        &[
            "mover",
            "--listen",
            &mover_addr.to_string(),
            "--data",
            &path("mover"),
            "--encryption-key",
            &path("assignments.key"),
        ],
        mover_addr,
    );
    let mover_url = format!("http://{mover_addr}");
    let mut nodes = Vec::new();
    for n in 0..2 {
        let addr = free_addr();
        let root = path(&format!("node{n}"));
        let name = format!("node{n}");
        nodes.push(spawn(
            &[
                "node",
                "--mover",
                &mover_url,
                "--root",
                &root,
                "--name",
                &name,
                "--key",
                &path("mover/mover.pub"),
                "--listen",
                &addr.to_string(),
                "--encryption-key",
                &path("assignments.key"),
                "--group",
                if n == 0 { "eu" } else { "us" },
            ],
            addr,
        ));
    }
    for _ in 0..300 {
        let got = send(&client(), "GET", &format!("{mover_url}/api/nodes"), &[]).await;
        if serde_json::from_slice::<serde_json::Value>(&got.body)
            .ok()
            .and_then(|v| v.as_array().map(Vec::len))
            == Some(2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let staging = dir.path().join("staging");
    write(&staging, "index.html", b"first version");
    write(&staging, "css/site.css", b"body {}");
    let published = tern()
        .args(["publish", "--mover", &mover_url, "--site", "www", "--staging"])
        .arg(&staging)
        .output()
        .expect("run");
    assert!(
        published.status.success(),
        "{}{}",
        String::from_utf8_lossy(&published.stdout),
        String::from_utf8_lossy(&published.stderr)
    );
    write(&staging, "index.html", b"second version");
    let published = tern()
        .args(["publish", "--mover", &mover_url, "--site", "www", "--staging"])
        .arg(&staging)
        .output()
        .expect("run");
    assert!(published.status.success());
    for n in 0..2 {
        let live = dir.path().join(format!("node{n}/www/live"));
        assert_eq!(std::fs::read(live.join("index.html")).expect("read"), b"second version");
        assert_eq!(std::fs::read(live.join("css/site.css")).expect("read"), b"body {}");
    }
    let checkpoint = tern()
        .args(["checkpoint", "create", "--mover", &mover_url, "--site", "www"])
        .output()
        .expect("run");
    assert!(
        checkpoint.status.success(),
        "{}",
        String::from_utf8_lossy(&checkpoint.stderr)
    );
    let listed = tern()
        .args(["checkpoint", "list", "--mover", &mover_url, "--site", "www"])
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 1);
    let rolled = tern()
        .args(["rollback", "--mover", &mover_url, "--site", "www"])
        .output()
        .expect("run");
    assert!(rolled.status.success(), "{}", String::from_utf8_lossy(&rolled.stderr));
    for n in 0..2 {
        let live = dir.path().join(format!("node{n}/www/live"));
        assert_eq!(std::fs::read(live.join("index.html")).expect("read"), b"first version");
    }
    let restored = tern()
        .args(["checkpoint", "restore", "--mover", &mover_url, "--site", "www", "1"])
        .output()
        .expect("run");
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    for n in 0..2 {
        let live = dir.path().join(format!("node{n}/www/live"));
        assert_eq!(
            std::fs::read(live.join("index.html")).expect("read"),
            b"second version",
            "checkpoint 1 was taken at the second version"
        );
    }
    let jobs = tern().args(["jobs", "--mover", &mover_url]).output().expect("run");
    assert_eq!(String::from_utf8_lossy(&jobs.stdout).lines().count(), 4);

    let missing = tern()
        .args([
            "publish",
            "--mover",
            &mover_url,
            "--site",
            "www",
            "--staging",
            &path("nope"),
        ])
        .output()
        .expect("run");
    assert!(!missing.status.success(), "a missing staging directory is an error");

    // A job for later can be cancelled before it runs; a group without nodes and a bad time are refused.
    let scheduled = tern()
        .args([
            "publish",
            "--mover",
            &mover_url,
            "--site",
            "blog",
            "--at",
            "+1h",
            "--no-wait",
            "--staging",
        ])
        .arg(&staging)
        .output()
        .expect("run");
    assert!(
        scheduled.status.success(),
        "{}",
        String::from_utf8_lossy(&scheduled.stderr)
    );
    let text = String::from_utf8_lossy(&scheduled.stdout).to_string();
    assert!(text.contains("scheduled"), "{text}");
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("job "))
        .expect("job id")
        .trim()
        .to_string();
    let cancelled = tern()
        .args(["jobs", "--mover", &mover_url, "--cancel", &id])
        .output()
        .expect("run");
    assert!(
        cancelled.status.success(),
        "{}",
        String::from_utf8_lossy(&cancelled.stderr)
    );
    for (args, expected) in [
        (vec!["--group", "asia"], "group asia has no registered nodes"),
        (vec!["--at", "yesterday"], "RFC 3339"),
        (vec!["--exclude", "/etc"], "pattern"),
    ] {
        let refused = tern()
            .args(["publish", "--mover", &mover_url, "--site", "www", "--staging"])
            .arg(&staging)
            .args(&args)
            .output()
            .expect("run");
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    // A publish to group eu, without the drafts: only node0 changes.
    write(&staging, "index.html", b"eu version");
    write(&staging, "drafts/next.html", b"not yet");
    let published = tern()
        .args([
            "publish",
            "--mover",
            &mover_url,
            "--site",
            "www",
            "--group",
            "eu",
            "--exclude",
            "drafts/",
            "--staging",
        ])
        .arg(&staging)
        .output()
        .expect("run");
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let live = |n: usize| dir.path().join(format!("node{n}/www/live"));
    assert_eq!(std::fs::read(live(0).join("index.html")).expect("read"), b"eu version");
    assert!(!live(0).join("drafts").exists());
    assert_eq!(
        std::fs::read(live(1).join("index.html")).expect("read"),
        b"second version"
    );
}
