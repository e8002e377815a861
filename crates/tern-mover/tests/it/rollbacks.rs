//! Rolling back through the publish history: a rollback goes to the version before the live one, and never
//! forward again to the version just rolled back from.

use crate::jobs::{Fleet, tree, write_site};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rollback_never_switches_forward_to_the_version_rolled_back_from() {
    let fleet = Fleet::new(2, None).await;
    let staging = fleet.area.path().join("staging");
    let mut published = Vec::new();
    for marker in ["first", "second", "third"] {
        write_site(&staging, 40, marker);
        let job = fleet.run("publish", Some(&staging)).await;
        assert_eq!(job["state"], "committed", "{job}");
        published.push(tree(&staging));
    }
    let job = fleet.run("rollback", None).await;
    assert_eq!(job["state"], "committed", "{job}");
    for index in 0..2 {
        assert_eq!(fleet.live(index), published[1], "node {index} went back from v3 to v2");
    }
    let sites = fleet.api("GET", "/api/sites", None).await;
    assert_eq!(
        (sites[0]["sequence"].as_u64(), sites[0]["previous"].as_u64()),
        (Some(2), Some(3))
    );

    // Refused when submitted (v1 is not kept, and v3 is forward): no job shows nodes pending first.
    let body = serde_json::json!({ "kind": "rollback", "site": "www" });
    let (status, again) = fleet.post_bytes("/api/jobs", body.to_string().into_bytes()).await;
    assert_eq!(status, 400, "{again}");
    let error = again["error"].as_str().unwrap_or("");
    assert!(
        error.contains("rolled back from v3") && error.contains("v1"),
        "the error says where the site is and what a rollback would need: {error}"
    );
    for index in 0..2 {
        assert_eq!(fleet.live(index), published[1], "node {index} stays on v2, not v3");
    }
    let sites = fleet.api("GET", "/api/sites", None).await;
    assert_eq!(sites[0]["sequence"], 2, "{sites}");

    // A publish after the rollback makes a new history: rolling back from it goes to v2 again.
    write_site(&staging, 40, "fourth");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");
    let job = fleet.run("rollback", None).await;
    assert_eq!(job["state"], "committed", "{job}");
    assert_eq!(fleet.live(0), published[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_backup_holds_the_rollback_back_for_every_node() {
    let fleet = Fleet::new(2, None).await;
    let staging = fleet.area.path().join("staging");
    let mut published = Vec::new();
    for marker in ["first", "second"] {
        write_site(&staging, 20, marker);
        let job = fleet.run("publish", Some(&staging)).await;
        assert_eq!(job["state"], "committed", "{job}");
        published.push(tree(&staging));
    }
    // Node 1 keeps no backup (a replaced node brought up to date by a full copy has none).
    std::fs::remove_file(fleet.node_root(1).join("www/backup")).expect("remove backup");
    let job = fleet.run("rollback", None).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or("");
    assert!(
        error.contains("nothing was switched") && error.contains("backup"),
        "{error}"
    );
    for index in 0..2 {
        assert_eq!(
            fleet.live(index),
            published[1],
            "node {index} still serves v2: no node switched alone"
        );
    }
    let sites = fleet.api("GET", "/api/sites", None).await;
    assert_eq!(sites[0]["sequence"], 2, "the site's record stays at v2: {sites}");
}
