//! Streams that start over: an agent whose state file was lost counts from 1 again, and a sync service
//! started on an empty data directory numbers its log from 1 again. Neither may be mistaken for a replay
//! of numbers already seen: the changes that follow reach every edge, and an edge that was down catches up
//! with the new log instead of trusting a position of the old one.

use std::time::Duration;

use tern_edge::catch_up::{Position, SyncMark};

use crate::World;

/// Polls `check` every 10 ms for at most 10 s.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Restarts the sync service on an empty data directory (its log, log id and cache positions gone).
async fn restart_sync_on_an_empty_data_directory(world: &mut World) {
    world.sync.take().expect("running").shutdown().await;
    std::fs::remove_dir_all(world.dir.path().join("sync")).expect("remove the sync data directory");
    world.start_sync().await;
}

#[tokio::test]
async fn an_agent_whose_state_file_was_deleted_and_a_sync_service_started_on_an_empty_data_directory_each_followed_by_changes_reach_every_edge()
 {
    let mut world = World::new(2).await;
    std::fs::write(world.site().join("page.html"), "version 1").expect("write");
    world.scan().await;
    // Take the agent's numbering well past what a fresh state will use: one file rewritten ten times (a new
    // size each time, so every scan sees it), where a fresh state reports it once.
    for n in 0..10 {
        std::fs::write(world.site().join("counter.html"), "x".repeat(n + 1)).expect("write");
        world.scan().await;
    }
    world.settled().await;
    let old_mark = world.agent.stats().acked_through;
    assert!(old_mark >= 11, "the old agent numbered at least 11 changes: {old_mark}");
    for edge in 0..2 {
        assert_eq!(&world.get(edge, "/page.html").await.body[..], b"version 1");
    }

    // The agent's state file is lost; the agent starts again and counts from 1.
    let old_incarnation = world.agent.incarnation();
    world.stop_agent().await;
    std::fs::remove_file(world.agent_state_file()).expect("delete the agent's state file");
    world.start_agent();
    assert_ne!(world.agent.incarnation(), old_incarnation);
    std::fs::write(
        world.site().join("page.html"),
        "version 2, after the agent lost its state",
    )
    .expect("write");
    world.scan().await;
    world.settled().await;
    // The new state numbered its changes 1..=detected.
    assert!(
        world.agent.stats().detected < old_mark,
        "the new numbering stayed below the old mark: {} < {old_mark}",
        world.agent.stats().detected
    );
    for edge in 0..2 {
        let got = world.get(edge, "/page.html").await;
        assert_eq!(
            String::from_utf8_lossy(&got.body),
            "version 2, after the agent lost its state",
            "edge {edge} was purged and serves the new bytes"
        );
        assert!(
            got.header("cache-status").contains("hit"),
            "edge {edge}: prefetched: {}",
            got.header("cache-status")
        );
    }

    // The sync service loses its data directory; the changes after it reach every edge too.
    restart_sync_on_an_empty_data_directory(&mut world).await;
    std::fs::write(
        world.site().join("page.html"),
        "version 3, after the sync service started afresh",
    )
    .expect("write");
    world.scan().await;
    world.settled().await;
    for edge in 0..2 {
        assert_eq!(
            String::from_utf8_lossy(&world.get(edge, "/page.html").await.body),
            "version 3, after the sync service started afresh",
            "edge {edge}"
        );
    }
    // And an edge restarted now keeps serving them.
    let restarted = world.edges.remove(1);
    restarted.shutdown().await;
    let back = world.start_edge(1).await;
    world.edges.insert(1, back);
    assert_eq!(
        String::from_utf8_lossy(&world.get(1, "/page.html").await.body),
        "version 3, after the sync service started afresh"
    );
}

#[tokio::test]
async fn edges_follow_a_sync_service_started_on_an_empty_data_directory_and_catch_up_with_its_new_log() {
    let mut world = World::new(2).await;
    std::fs::write(world.site().join("page.html"), "version 1").expect("write");
    for n in 0..30 {
        std::fs::write(world.site().join(format!("f{n}.html")), format!("file {n}")).expect("write");
    }
    world.scan().await;
    world.settled().await;
    let old_length = world.service().master().len();
    assert_eq!(old_length, 31);
    for edge in 0..2 {
        assert_eq!(&world.get(edge, "/page.html").await.body[..], b"version 1");
        assert_eq!(
            SyncMark::open(Some(&world.edge_dir(edge))).applied(),
            old_length,
            "edge {edge}'s mark is high"
        );
    }

    // Edge 1 goes down with the old log's mark and copies; the sync service starts on an empty data
    // directory and numbers its log from 1 again, under a new log id.
    let down = world.edges.remove(1);
    down.shutdown().await;
    let old_log = world.service().master().log_id().clone();
    restart_sync_on_an_empty_data_directory(&mut world).await;
    let new_log = world.service().master().log_id().clone();
    assert_ne!(new_log, old_log);
    for n in 0..10 {
        std::fs::write(world.site().join(format!("g{n}.html")), format!("new file {n}")).expect("write");
    }
    world.scan().await;
    until("edge 0 applied the new log's first changes", || {
        let service = world.service();
        world.agent.stats().pending == 0 && service.master().len() == 10 && service.progress()[0].applied_through >= 10
    })
    .await;
    assert_eq!(&world.get(0, "/g3.html").await.body[..], b"new file 3");
    assert_eq!(
        SyncMark::open(Some(&world.edge_dir(0))).position(),
        Position {
            log: new_log.clone(),
            applied: 10
        },
        "edge 0's mark follows the new log instead of keeping the old log's higher position"
    );

    // Edge 0 goes down too. The page changes at a position below the old log's length, then the new log
    // grows past it, so a position alone could not tell the logs apart.
    let down_too = world.edges.remove(0);
    down_too.shutdown().await;
    std::fs::write(world.site().join("page.html"), "version 2, while both edges were down").expect("write");
    world.scan().await;
    for n in 0..30 {
        std::fs::write(world.site().join(format!("h{n}.html")), format!("later file {n}")).expect("write");
    }
    world.scan().await;
    until("the changes are recorded", || {
        world.agent.stats().pending == 0 && world.service().master().len() >= 41
    })
    .await;
    let master = world.service().master();
    let page_position = master
        .records_from(1)
        .iter()
        .find(|record| record.url.ends_with("/page.html"))
        .map(|record| record.log_seq)
        .expect("the page's change is recorded");
    assert!(
        page_position > 10 && page_position <= old_length && master.len() > old_length,
        "the page changed at {page_position}, between edge 0's mark and the old log's length {old_length}; \
         the log is {} long",
        master.len()
    );

    // Both edges come back and catch up before they serve: neither answers with its old copy.
    let back = world.start_edge(0).await;
    world.edges.insert(0, back);
    let back = world.start_edge(1).await;
    world.edges.insert(1, back);
    for edge in 0..2 {
        assert_eq!(
            String::from_utf8_lossy(&world.get(edge, "/page.html").await.body),
            "version 2, while both edges were down",
            "edge {edge}: never the old copy after coming back"
        );
        assert_eq!(
            SyncMark::open(Some(&world.edge_dir(edge))).position().log,
            new_log,
            "edge {edge} counts in the new log"
        );
    }
    world.settled().await;
    for edge in 0..2 {
        assert_eq!(
            &world.get(edge, "/h29.html").await.body[..],
            b"later file 29",
            "edge {edge}"
        );
        assert_eq!(&world.get(edge, "/f0.html").await.body[..], b"file 0", "edge {edge}");
    }
}

/// An edge that catches up with the sync service but is in none of its `--cache` URLs would get no purges
/// and serve changed content until it expires: the sync service names it (status, and a warning). A cache
/// it knows is not named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_catches_up_but_is_no_cache_of_the_sync_service_is_named() {
    let mut world = World::new(1).await;
    let known = world.edges.remove(0);
    known.shutdown().await;
    let back = world.start_edge(0).await;
    world.edges.insert(0, back);
    let stranger_dir = tempfile::tempdir().expect("tempdir");
    let stranger_addr = crate::free_addr();
    let stranger = tern_edge::start(tern_edge::EdgeConfig {
        listen: stranger_addr,
        origin: format!("http://{}", world.origin.listen),
        cache_dir: Some(stranger_dir.path().to_path_buf()),
        sync_url: Some(format!("http://{}", world.sync_admin)),
        ..tern_edge::EdgeConfig::default()
    })
    .await
    .expect("edge starts");
    let status_url = format!("http://{}/status", world.sync_admin);
    let mut named = serde_json::Value::Null;
    for _ in 0..200 {
        let status = tern_edge::testsuite::send(&tern_edge::testsuite::client(), "GET", &status_url, &[]).await;
        let status: serde_json::Value = serde_json::from_slice(&status.body).expect("json");
        named = status["edges_not_in_caches"].clone();
        if named.as_array().is_some_and(|edges| !edges.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let edges = named.as_array().expect("a list");
    assert_eq!(edges.len(), 1, "only the stranger: {named}");
    assert_eq!(edges[0]["ports"], serde_json::json!([stranger_addr.port()]), "{named}");
    stranger.shutdown().await;
}
