//! Who may register as a node. With a cluster key, the mover takes only registrations tagged with it, so
//! a machine that merely reaches the mover's port can neither offer itself as a node (and be sent the
//! sites' content) nor take over a node's name (and its deliveries); the nodes tag theirs by themselves.

use http::StatusCode;
use tern_wire::SecretKey;
use tern_wire::mover::Registration;
use tern_wire::tree::{Envelope, TreeMessage, encode};

use crate::jobs::Fleet;

fn registration(name: &str, url: &str) -> Registration {
    Registration {
        name: name.into(),
        url: url.into(),
        free_disk: 0,
        cpus: 1,
        groups: Vec::new(),
        versions: Default::default(),
        prepared: Default::default(),
        instance: String::new(),
        encryption_key_id: None,
    }
}

fn tagged(key: &SecretKey, sender: &str, registration: Registration) -> Vec<u8> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    encode(
        key,
        &Envelope::new(sender, TreeMessage::Register { registration }, now_ms),
    )
}

async fn node_urls(fleet: &Fleet) -> Vec<(String, String)> {
    let nodes = fleet.api("GET", "/api/nodes", None).await;
    nodes
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or("").into(),
                n["url"].as_str().unwrap_or("").into(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_with_a_cluster_key_takes_only_registrations_tagged_with_it() {
    // The node agent registers tagged by itself (`Fleet::keyed` waits for it).
    let fleet = Fleet::keyed(1).await;
    let key = fleet.cluster_key.clone().expect("key");
    let before = node_urls(&fleet).await;
    assert_eq!(before.len(), 1, "{before:?}");
    let rogue = "http://192.0.2.1:7100";

    let plain = serde_json::to_vec(&registration("node0", rogue)).expect("json");
    let (status, answer) = fleet.post_bytes("/api/nodes/register", plain).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| e.contains("--cluster-key")),
        "{answer}"
    );

    let other_key = SecretKey::generate().expect("key");
    let forged = tagged(&other_key, "node0", registration("node0", rogue));
    let (status, answer) = fleet.post_bytes("/api/nodes/register", forged).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a wrong key: {answer}");

    let impersonating = tagged(&key, "node9", registration("node0", rogue));
    let (status, answer) = fleet.post_bytes("/api/nodes/register", impersonating).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a sender registering another name: {answer}"
    );

    assert_eq!(node_urls(&fleet).await, before, "node0's deliveries still go to node0");

    let good = tagged(&key, "node1", registration("node1", "http://127.0.0.1:9"));
    let (status, answer) = fleet.post_bytes("/api/nodes/register", good.clone()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = fleet.post_bytes("/api/nodes/register", good).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a replay: {answer}");
    assert_eq!(node_urls(&fleet).await.len(), 2);

    // A mover without a key says what to do with a tagged registration; it takes plain ones.
    let plain_fleet = Fleet::new(0, None).await;
    let (status, answer) = plain_fleet
        .post_bytes(
            "/api/nodes/register",
            tagged(&key, "node1", registration("node1", rogue)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("start the mover with --cluster-key")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_machine_under_a_nodes_name_is_refused_until_the_old_record_is_removed() {
    // node0 is a real node agent: it registered with the instance id it keeps in its root.
    let fleet = Fleet::new(1, None).await;
    let before = node_urls(&fleet).await;
    assert_eq!(before.len(), 1, "{before:?}");
    let other = "http://192.0.2.7:7100";
    let held = std::fs::read_to_string(fleet.node_root(0).join(".state/instance")).expect("instance");
    let held = held.trim();

    for instance in [tern_wire::mover::new_instance(), String::new()] {
        let mut second = registration("node0", other);
        second.instance = instance.clone();
        let body = serde_json::to_vec(&second).expect("json");
        let (status, answer) = fleet.post_bytes("/api/nodes/register", body).await;
        assert_eq!(status, StatusCode::CONFLICT, "instance {instance:?}: {answer}");
        assert!(
            !answer.to_string().contains(&held[..8]),
            "the refusal shows no part of it: {answer}"
        );
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("tern nodes --remove node0")),
            "{answer}"
        );
    }
    assert_eq!(node_urls(&fleet).await, before, "node0's deliveries still go to node0");
    // Without a cluster key the instance id is what proves a registration is node0's: it is shown nowhere.
    let shown = [
        fleet.api("GET", "/api/nodes", None).await.to_string(),
        fleet.api("GET", "/status", None).await.to_string(),
    ];
    for text in shown {
        assert!(!text.contains(&held[..8]) && !text.contains("\"instance\""), "{text}");
    }

    // An address no delivery can use, or a group name that is not plain, is refused, not taken.
    for (url, groups) in [
        ("javascript:alert(1)//<b>", vec![]),
        ("http://user:pw@192.0.2.8:7100", vec![]),
        ("http://192.0.2.8:99999", vec![]),
        ("http://192.0.2.8:7100/a%zz", vec![]),
        ("192.0.2.8:7100", vec![]),
        ("http://192.0.2.8:7100#<img>", vec![]),
        ("http://192.0.2.8:7100", vec!["<img src=x>".to_string()]),
    ] {
        let mut bad = registration("node9", url);
        bad.groups = groups;
        let (status, answer) = fleet
            .post_bytes("/api/nodes/register", serde_json::to_vec(&bad).expect("json"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {answer}");
    }
    assert!(!node_urls(&fleet).await.iter().any(|(name, _)| name == "node9"));
    let mut malformed = registration("node1", other);
    malformed.instance = "not hex".into();
    let (status, answer) = fleet
        .post_bytes("/api/nodes/register", serde_json::to_vec(&malformed).expect("json"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // A retired machine (registered by hand here, so that no running agent registers it again): its
    // replacement is refused until the operator removes the old record, then takes the name.
    let register = |url: &str, instance: &str| {
        let mut node = registration("node5", url);
        node.instance = instance.into();
        serde_json::to_vec(&node).expect("json")
    };
    let (old, new) = (tern_wire::mover::new_instance(), tern_wire::mover::new_instance());
    let (status, answer) = fleet
        .post_bytes("/api/nodes/register", register("http://192.0.2.8:7100", &old))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = fleet.post_bytes("/api/nodes/register", register(other, &new)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    // The operator had put it in a content group: removing it says so (a replacement does not rejoin it).
    fleet
        .api("PUT", "/api/groups/g1", Some(serde_json::json!({ "nodes": ["node5"] })))
        .await;
    let refused = fleet
        .api(
            "PUT",
            "/api/groups/g2",
            Some(serde_json::json!({ "nodes": ["node5", "../x"] })),
        )
        .await;
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a plain node name")),
        "a group lists only plain node names: {refused}"
    );
    let removed = fleet.api("DELETE", "/api/nodes/node5", None).await;
    assert_eq!(removed["left_groups"], serde_json::json!(["g1"]), "{removed}");
    let (status, answer) = fleet.post_bytes("/api/nodes/register", register(other, &new)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        node_urls(&fleet)
            .await
            .contains(&("node5".to_string(), other.to_string()))
    );
}
