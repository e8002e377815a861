//! `tern agent` and `tern sync` as processes: a file written at the origin reaches the edge.

use std::time::{Duration, Instant};

use tern_edge::testsuite::{client, send};

use crate::{free_addr, spawn, spawn_edge, spawn_origin, tern, write};

#[tokio::test]
async fn agent_and_sync_processes_keep_an_edge_fresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    write(&site, "page.html", b"before");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    for key in ["agent.key", "purge.key"] {
        assert!(
            tern()
                .arg("keygen")
                .arg(path(key))
                .output()
                .expect("keygen")
                .status
                .success()
        );
    }
    let (_origin, origin_addr) = spawn_origin(&site, &["--cache-control", "max-age=3600"]);
    let (_edge, edge_addr) = spawn_edge(origin_addr, &["--purge-key", &path("purge.key")]);
    let sync_addr = free_addr();
    let _sync = spawn(
        &[
            "sync",
            "--listen",
            &sync_addr.to_string(),
            "--key",
            &path("agent.key"),
            "--site",
            "www=www.test",
            "--cache",
            &format!("http://{edge_addr}"),
            "--cache-key",
            &path("purge.key"),
            "--data",
            &path("sync-data"),
        ],
        sync_addr,
    );
    let url = format!("http://{edge_addr}/page.html");
    let fetch = || async { send(&client(), "GET", &url, &[("host", "www.test")]).await };
    assert_eq!(&fetch().await.body[..], b"before");
    // Links with a query are cache objects of their own (for the hour the origin allows).
    let queried = |query: &str| format!("http://{edge_addr}/page.html?{query}");
    for query in ["utm=1", "v=2"] {
        let got = send(&client(), "GET", &queried(query), &[("host", "www.test")]).await;
        assert_eq!(&got.body[..], b"before");
    }
    let agent_admin = free_addr();
    let _agent = spawn(
        &[
            "agent",
            "--dir",
            site.to_str().expect("utf-8"),
            "--site",
            "www",
            "--base-url",
            "http://www.test",
            "--sync",
            &sync_addr.to_string(),
            "--key",
            &path("agent.key"),
            "--state-dir",
            &path("agent-state"),
            "--admin",
            &agent_admin.to_string(),
        ],
        agent_admin,
    );
    write(&site, "page.html", b"after the change");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = fetch().await;
        if &got.body[..] == b"after the change" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edge never served the new bytes: {:?}",
            got.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The file's change purged its URL with any query: the variants are fresh as soon as the plain URL is.
    for query in ["utm=1", "v=2"] {
        let got = send(&client(), "GET", &queried(query), &[("host", "www.test")]).await;
        assert_eq!(&got.body[..], b"after the change", "?{query}");
    }
}
