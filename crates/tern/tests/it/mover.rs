//! `tern mover`, `tern node`, `tern publish` and `tern rollback` as processes.

use std::time::Duration;

use tern_edge::testsuite::{client, send};

use crate::{free_addr, spawn, tern, write};

#[tokio::test]
async fn publish_and_rollback_through_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    let mover_addr = free_addr();
    let _mover = spawn(
        &["mover", "--listen", &mover_addr.to_string(), "--data", &path("mover")],
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
}
