//! Changes at the origin reach every edge: new bytes served as hits, deletions as 404, bursts converge,
//! and neither a restart of the sync service nor of an edge loses a change.

use std::time::Duration;

use crate::World;

#[tokio::test]
async fn writes_reach_every_edge_prefetched_and_deletions_become_404() {
    let world = World::new(3).await;
    std::fs::write(world.site().join("page.html"), "version 1").expect("write");
    world.scan().await;
    world.settled().await;
    for edge in 0..3 {
        let got = world.get(edge, "/page.html").await;
        assert_eq!(&got.body[..], b"version 1");
        assert!(
            got.header("cache-status").contains("hit"),
            "edge {edge}: the first request is a hit: {}",
            got.header("cache-status")
        );
    }
    std::fs::write(world.site().join("page.html"), "version 2, longer").expect("write");
    world.scan().await;
    world.settled().await;
    for edge in 0..3 {
        let got = world.get(edge, "/page.html").await;
        assert_eq!(&got.body[..], b"version 2, longer", "edge {edge} serves the new bytes");
        assert!(got.header("cache-status").contains("hit"));
    }
    std::fs::remove_file(world.site().join("page.html")).expect("rm");
    world.scan().await;
    world.settled().await;
    for edge in 0..3 {
        assert_eq!(
            world.get(edge, "/page.html").await.status,
            404,
            "edge {edge} answers 404 after the deletion"
        );
    }
}

#[tokio::test]
async fn file_system_events_trigger_without_asking() {
    let world = World::new(1).await;
    std::fs::write(world.site().join("auto.html"), "seen by inotify").expect("write");
    // No explicit scan: the watcher (or at worst the 2 s rescan) notices.
    for _ in 0..500 {
        if !world.service().master().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    world.settled().await;
    assert_eq!(&world.get(0, "/auto.html").await.body[..], b"seen by inotify");
}

#[tokio::test]
async fn a_hundred_rapid_rewrites_converge() {
    let world = World::new(3).await;
    for n in 0..100 {
        std::fs::write(world.site().join("hot.html"), format!("rewrite {n}")).expect("write");
        if n % 10 == 0 {
            world.scan().await;
        }
    }
    world.scan().await;
    world.settled().await;
    for edge in 0..3 {
        assert_eq!(
            &world.get(edge, "/hot.html").await.body[..],
            b"rewrite 99",
            "edge {edge}"
        );
    }
}

#[tokio::test]
async fn restarting_the_sync_service_mid_burst_loses_nothing() {
    let mut world = World::new(2).await;
    for n in 0..20 {
        std::fs::write(world.site().join(format!("f{n}.html")), format!("first {n}")).expect("write");
    }
    world.scan().await;
    // Stop the service while the burst is being delivered, change more, start it again.
    world.sync.take().expect("running").shutdown().await;
    for n in 0..20 {
        std::fs::write(world.site().join(format!("f{n}.html")), format!("second {n}")).expect("write");
    }
    world.scan().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    world.start_sync().await;
    world.settled().await;
    for edge in 0..2 {
        for n in 0..20 {
            let got = world.get(edge, &format!("/f{n}.html")).await;
            assert_eq!(
                String::from_utf8_lossy(&got.body),
                format!("second {n}"),
                "edge {edge} file {n}"
            );
        }
    }
}

#[tokio::test]
async fn an_edge_down_during_a_change_gets_it_when_back() {
    let mut world = World::new(2).await;
    std::fs::write(world.site().join("news.html"), "old news").expect("write");
    world.scan().await;
    world.settled().await;
    assert_eq!(&world.get(1, "/news.html").await.body[..], b"old news");
    // Edge 1 goes down (its disk cache keeps the old copy), the content changes, edge 1 comes back. It
    // catches up with the sync service before serving, so its very first answer is already the new one.
    let down = world.edges.remove(1);
    down.shutdown().await;
    std::fs::write(world.site().join("news.html"), "fresh news").expect("write");
    world.scan().await;
    // Wait until the change is recorded (acknowledged to the agent) and applied to edge 0.
    for _ in 0..500 {
        let recorded = world.agent.stats().pending == 0 && world.service().master().len() >= 2;
        if recorded && world.service().progress()[0].applied_through >= world.service().master().len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = world.start_edge(1).await;
    world.edges.insert(1, back);
    let first = world.get(1, "/news.html").await;
    assert_eq!(&first.body[..], b"fresh news", "never the old copy after coming back");
    world.settled().await;
    assert_eq!(&world.get(0, "/news.html").await.body[..], b"fresh news");
}

#[tokio::test]
async fn an_api_purge_reaches_every_edge_and_needs_the_key() {
    use http_body_util::{BodyExt, Full};
    let world = World::new(2).await;
    std::fs::write(world.site().join("p.html"), "cached").expect("write");
    world.scan().await;
    world.settled().await;
    assert!(world.get(0, "/p.html").await.header("cache-status").contains("hit"));
    let client = tern_edge::testsuite::client();
    let post = |token: Option<String>| {
        let mut request = http::Request::post(format!("http://{}/purge", world.sync_admin));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = serde_json::json!({ "urls": [format!("http://{}/p.html", crate::HOST)] }).to_string();
        client.request(request.body(Full::new(bytes::Bytes::from(body))).expect("request"))
    };
    let refused = post(None).await.expect("answer");
    assert_eq!(refused.status(), 403);
    let accepted = post(Some(world.agent_key.token())).await.expect("answer");
    assert_eq!(accepted.status(), 200);
    let _ = accepted.into_body().collect().await;
    world.settled().await;
    for edge in 0..2 {
        let got = world.get(edge, "/p.html").await;
        assert!(
            got.header("cache-status").contains("fwd=miss"),
            "edge {edge}: purged: {}",
            got.header("cache-status")
        );
        assert_eq!(&got.body[..], b"cached");
    }
}

/// An idle agent's heartbeats: a sync service that goes away shows in the agent's state while nothing
/// changes, and its return clears it.
#[tokio::test]
async fn an_idle_agent_notices_the_sync_service_go_and_come_back() {
    let mut world = World::new(1).await;
    let agent = world.agent.clone();
    let until = |what: &'static str, done: fn(&tern_sync::agent::AgentStats, u64) -> bool, since: u64| {
        let agent = agent.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while !done(&agent.stats(), since) {
                assert!(tokio::time::Instant::now() < deadline, "{what}: {:?}", agent.stats());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    until("a heartbeat acknowledged", |stats, _| stats.last_ack_ms > 0, 0).await;
    assert_eq!(agent.stats().pending, 0, "idle: nothing to send but heartbeats");

    world.sync.take().expect("running").shutdown().await;
    until("the idle agent notices", |stats, _| stats.last_error.is_some(), 0).await;

    world.start_sync().await;
    let before = agent.stats().last_ack_ms;
    until(
        "the return noticed",
        |stats, before| stats.last_error.is_none() && stats.last_ack_ms > before,
        before,
    )
    .await;
}
