//! What a job says it sent: only bytes that left the mover for a node.

use crate::jobs::{Fleet, write_site};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_refuses_connections_is_sent_zero_bytes() {
    let mut fleet = Fleet::new(3, Some(2)).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 200, "first");
    fleet.nodes[2].take().expect("node2").shutdown().await;
    let job = fleet.run("publish", Some(&staging)).await;
    let nodes = job["nodes"].as_array().expect("nodes");
    let node2 = nodes.iter().find(|n| n["node"] == "node2").expect("node2's row");
    assert_eq!(node2["state"], "failed", "{job}");
    assert!(node2["error"].as_str().unwrap_or("").contains("unreachable"), "{job}");
    assert_eq!(node2["bytes"], 0, "no connection, nothing sent: {job}");
    for node in nodes.iter().filter(|n| n["node"] != "node2") {
        assert!(
            node["bytes"].as_u64().unwrap_or(0) > 1000,
            "the others were sent the site: {job}"
        );
    }
}
