//! The store-and-forward tree on real sockets (seed 004, global distribution, Figs. 6 and 7): a mover and
//! three segments of three node agents on loopback, the segment directory filled directly (as the leaders'
//! segment reports would). A publish reaches every node through the group leaders while the mover sends
//! about one copy; a leader stopped while it delivers to its members is replaced by its segment's new
//! leader and the job commits everywhere else; forged and replayed notifications and reports are refused
//! and counted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tern_http::Body;
use tern_http::server::{Handler, Running, ServerLimits, serve};
use tern_mover::segments::{Segment, SegmentLeader};
use tern_mover::service::{Mover, MoverConfig, start};
use tern_mover::tree_delivery::{TreeRecord, TreeSettings};
use tern_node::agent::{NodeAgent, NodeConfig};
use tern_node::forward::ForwardSettings;
use tern_wire::SecretKey;
use tern_wire::tree::{
    self, Envelope, Holding, HoldingReport, Member, Notification, Phase, SignedNotification, Source, TreeMessage,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::jobs::{free_addr, tree as contents, write_site};

/// The segments: name, CPU power of its leader, and its nodes (the first leads).
const SEGMENTS: [(&str, u32, [&str; 3]); 3] = [
    ("seg-a", 8, ["a0", "a1", "a2"]),
    ("seg-b", 4, ["b0", "b1", "b2"]),
    ("seg-c", 2, ["c0", "c1", "c2"]),
];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A node that reads an assignment and answers 200 only while open: it holds a group leader in the middle
/// of delivering to its members for as long as the test wants.
struct Gate {
    open: watch::Receiver<bool>,
    received: Arc<AtomicUsize>,
}

impl Handler for Gate {
    async fn call(&self, request: Request<Incoming>, _client: SocketAddr) -> Response<Body> {
        let _ = request.into_body().collect().await;
        self.received.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.clone();
        let _ = open.wait_for(|open| *open).await;
        Response::new(tern_http::full(r#"{"id":"gate","commands":0,"live":null}"#))
    }
}

struct TreeFleet {
    area: tempfile::TempDir,
    mover: Running<Arc<Mover>>,
    mover_addr: SocketAddr,
    key: SecretKey,
    nodes: BTreeMap<String, Option<Running<Arc<NodeAgent>>>>,
    addrs: BTreeMap<String, SocketAddr>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Tree settings for tests: short timeouts, a quick driver.
fn quick() -> TreeSettings {
    TreeSettings {
        fetch_timeout: Duration::from_secs(5),
        ask_again: Duration::from_millis(50),
        leader_grace: Duration::from_secs(20),
        tick: Duration::from_millis(50),
        deadline: Duration::from_secs(60),
        request_timeout: Duration::from_secs(5),
        ..TreeSettings::default()
    }
}

impl TreeFleet {
    /// A mover with the cluster key, `quorum` and `settings`, and the nodes of [`SEGMENTS`], registered.
    async fn new(quorum: Option<usize>, settings: TreeSettings) -> TreeFleet {
        let area = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::generate().expect("key");
        let mover_addr = free_addr();
        let mover = start(MoverConfig {
            quorum,
            delivery_timeout: Duration::from_secs(30),
            checkpoints_kept: 3,
            cluster_key: Some(key.clone()),
            tree: settings,
            ..MoverConfig::new(mover_addr, area.path().join("mover"))
        })
        .await
        .expect("mover");
        let mut fleet = TreeFleet {
            area,
            mover,
            mover_addr,
            key,
            nodes: BTreeMap::new(),
            addrs: BTreeMap::new(),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        };
        for (_, _, names) in SEGMENTS {
            for name in names {
                fleet.addrs.insert(name.to_string(), free_addr());
                let node = fleet.start_node(name).await;
                fleet.nodes.insert(name.to_string(), Some(node));
            }
        }
        fleet.wait_registered(9).await;
        fleet
    }

    fn root(&self, name: &str) -> PathBuf {
        self.area.path().join(name)
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}", self.addrs[name])
    }

    fn live(&self, name: &str) -> BTreeMap<String, Vec<u8>> {
        contents(&self.root(name).join("www/live"))
    }

    async fn start_node(&self, name: &str) -> Running<Arc<NodeAgent>> {
        let mover_key = tern_mover::keys::load_public(&self.area.path().join("mover/mover.pub")).expect("mover.pub");
        tern_node::agent::start(NodeConfig {
            mover: format!("http://{}", self.mover_addr),
            listen: self.addrs[name],
            advertise: None,
            root: self.root(name),
            name: name.to_string(),
            mover_key,
            decryption_key: None,
            limits: Default::default(),
            register_interval: Duration::from_millis(200),
            groups: Vec::new(),
            superseded_grace: tern_node::interpreter::SUPERSEDED_GRACE,
            tls: None,
            ca: None,
            cluster_key: Some(self.key.clone()),
            tree: ForwardSettings {
                idle_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(5),
                member_timeout: Duration::from_secs(30),
                serve_wait: Duration::from_secs(5),
                ..ForwardSettings::default()
            },
        })
        .await
        .expect("node")
    }

    /// Records `segment` in the mover's directory with `leader` and `members`, as its leader's segment
    /// report would.
    fn report_segment(&self, segment: &str, cpu: u32, leader: &str, members: &[&str]) {
        self.mover.role.segments().update(Segment {
            name: segment.to_string(),
            location: "utc".to_string(),
            leader: Some(SegmentLeader {
                name: leader.to_string(),
                url: self.url(leader),
                cpu,
                incarnation: 1,
            }),
            members: members.iter().map(|m| m.to_string()).collect(),
            reported_ms: now_ms(),
        });
    }

    fn report_all_segments(&self) {
        for (segment, cpu, names) in SEGMENTS {
            self.report_segment(segment, cpu, names[0], &names);
        }
    }

    async fn api(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.mover_addr))
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .expect("request");
        let response = self.client.request(request).await.expect("mover answers");
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&bytes).expect("json")
    }

    /// `GET url`, with a `tern-tree-token` when one is given.
    async fn get(&self, url: &str, token: Option<&str>) -> StatusCode {
        let mut request = Request::get(url);
        if let Some(token) = token {
            request = request.header(tree::FETCH_TOKEN_HEADER, token);
        }
        let request = request.body(Full::new(Bytes::new())).expect("request");
        self.client.request(request).await.expect("answers").status()
    }

    async fn post(&self, url: &str, body: Vec<u8>) -> (StatusCode, String) {
        let request = Request::post(url).body(Full::new(Bytes::from(body))).expect("request");
        let response = self.client.request(request).await.expect("answers");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).to_string())
    }

    async fn wait_registered(&self, count: usize) {
        for _ in 0..1000 {
            if self.api("GET", "/api/nodes", None).await.as_array().map(Vec::len) == Some(count) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("nodes did not register");
    }

    async fn submit(&self, staging: &Path) -> String {
        let body = serde_json::json!({ "kind": "publish", "site": "www", "staging": staging.display().to_string() });
        let created = self.api("POST", "/api/jobs", Some(body)).await;
        created["id"]
            .as_str()
            .unwrap_or_else(|| panic!("job not created: {created}"))
            .to_string()
    }

    async fn wait_job(&self, id: &str) -> serde_json::Value {
        for _ in 0..6000 {
            let job = self.api("GET", &format!("/api/jobs/{id}"), None).await;
            if matches!(
                job["state"].as_str(),
                Some("committed" | "failed" | "refused" | "cancelled")
            ) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} never finished");
    }

    /// The finished tree of `job`'s `phase`.
    fn tree_of(&self, job: &str, phase: &str) -> TreeRecord {
        self.mover
            .role
            .trees()
            .records()
            .into_iter()
            .find(|record| record.job == job && record.phase == phase && !record.running)
            .unwrap_or_else(|| panic!("no finished {phase} tree for {job}"))
    }

    /// Stops a node as if killed: its listener and every transfer it leads end now.
    fn kill(&mut self, name: &str) {
        let node = self.nodes.get_mut(name).and_then(Option::take).expect("running");
        node.shutdown_token().cancel();
        drop(node);
    }
}

/// A site of small pages and 1 MiB of incompressible media (so the assignment's size is what travels).
fn write_media_site(staging: &Path, marker: &str) {
    write_site(staging, 200, marker);
    let mut state = marker
        .bytes()
        .fold(0x9e37_79b9_7f4a_7c15u64, |h, b| h.rotate_left(5) ^ u64::from(b))
        | 1;
    for n in 0..8 {
        let noise: Vec<u8> = (0..128 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let path = staging.join(format!("media/{marker}-{n}.bin"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, noise).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_goes_through_the_group_leaders_and_the_mover_sends_one_copy() {
    let fleet = TreeFleet::new(None, quick()).await;
    fleet.report_all_segments();
    let staging = fleet.area.path().join("staging");
    write_media_site(&staging, "first");
    let sent_before = fleet.mover.role.metrics().bytes_sent.get();
    let id = fleet.submit(&staging).await;
    let job = fleet.wait_job(&id).await;
    assert_eq!(job["state"], "committed", "{job}");
    let sent = fleet.mover.role.metrics().bytes_sent.get() - sent_before;

    let expected = contents(&staging);
    for (_, _, names) in SEGMENTS {
        for name in names {
            assert_eq!(fleet.live(name), expected, "{name}'s live tree is the staging tree");
        }
    }
    let states: Vec<&str> = job["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|node| node["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, ["committed"; 9], "{job}");
    // Every node's record says who passed the assignment on to it (the mover sent none of them a copy
    // outside the tree): the first leader fetched from the mover, every other node from a leader.
    let nodes = job["nodes"].as_array().expect("nodes");
    let all: Vec<&str> = SEGMENTS
        .iter()
        .flat_map(|(_, _, names)| names.iter().copied())
        .collect();
    for node in nodes {
        let via = node["via"].as_str().unwrap_or("");
        if node["node"] == "a0" {
            assert_eq!(via, "mover", "{node}");
        } else {
            assert!(all.contains(&via) && node["node"] != via, "{node}");
        }
    }

    let prepare = fleet.tree_of(&id, "prepare");
    let commit = fleet.tree_of(&id, "commit");
    println!(
        "publish to 9 nodes in 3 segments: assignment {} bytes, the mover sent {sent} bytes ({:.2} copies; the star sends 9)",
        prepare.size,
        sent as f64 / prepare.size as f64
    );
    println!("prepare tree: {:?}", prepare.edges);
    assert_eq!(
        prepare.mover_bytes, prepare.size,
        "the mover served exactly one copy itself"
    );
    assert!(
        sent >= prepare.size && sent <= prepare.size + commit.size + 4096,
        "the mover's counter shows about one copy ({sent} bytes for {} bytes to 9 nodes)",
        prepare.size
    );
    let from_mover: Vec<&(String, String)> = prepare.edges.iter().filter(|(source, _)| source == "mover").collect();
    assert_eq!(
        from_mover,
        [&("mover".to_string(), "a0".to_string())],
        "the fastest leader first"
    );
    let from_leaders = prepare.edges.iter().filter(|(source, _)| source != "mover").count();
    assert_eq!(from_leaders, 2, "leaders are served by leaders: {:?}", prepare.edges);
    assert!(
        prepare.leaders.values().all(|state| state == "holding"),
        "{:?}",
        prepare.leaders
    );
    assert!(
        commit.segments.values().all(|state| state == "reported"),
        "{:?}",
        commit.segments
    );

    // A change goes the same way.
    std::fs::write(staging.join("s1/f1.html"), "changed").expect("write");
    std::fs::remove_file(staging.join("s2/f2.html")).expect("rm");
    let id = fleet.submit(&staging).await;
    let job = fleet.wait_job(&id).await;
    assert_eq!(job["state"], "committed", "{job}");
    let expected = contents(&staging);
    for (_, _, names) in SEGMENTS {
        for name in names {
            assert_eq!(fleet.live(name), expected, "{name} after the change");
        }
    }
    let status = fleet.api("GET", "/status", None).await;
    assert!(
        status["trees"].as_array().is_some_and(|trees| trees.len() >= 4),
        "the status shows the trees: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_mid_publish_is_replaced_and_the_job_commits_on_every_other_node() {
    let mut fleet = TreeFleet::new(Some(8), quick()).await;
    // A fourth member of segment b that holds its answer while the gate is closed.
    let (open, gate_open) = watch::channel(true);
    let received = Arc::new(AtomicUsize::new(0));
    let gate_addr = free_addr();
    let gate_stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(gate_addr).await.expect("bind");
    tokio::spawn(serve(
        listener,
        Arc::new(Gate {
            open: gate_open,
            received: received.clone(),
        }),
        ServerLimits::default(),
        gate_stop.clone(),
    ));
    // Registered as the nodes do with a cluster key: tagged with it.
    let registration = tern_wire::mover::Registration {
        name: "b-gate".into(),
        url: format!("http://{gate_addr}"),
        free_disk: 0,
        cpus: 1,
        groups: Vec::new(),
        versions: Default::default(),
        prepared: Default::default(),
        instance: String::new(),
        encryption_key_id: None,
    };
    let tagged = tree::encode(
        &fleet.key,
        &Envelope::new("b-gate", TreeMessage::Register { registration }, now_ms()),
    );
    let url = format!("http://{}/api/nodes/register", fleet.mover_addr);
    let (status, answer) = fleet.post(&url, tagged).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    fleet.wait_registered(10).await;
    for (segment, cpu, names) in SEGMENTS {
        let mut members: Vec<&str> = names.to_vec();
        if segment == "seg-b" {
            members.push("b-gate");
        }
        fleet.report_segment(segment, cpu, names[0], &members);
    }
    let staging = fleet.area.path().join("staging");
    write_media_site(&staging, "first");
    let first = fleet.submit(&staging).await;
    assert_eq!(fleet.wait_job(&first).await["state"], "committed");

    // The second publish: b0 is stopped while it delivers to its members (the gate holds it there).
    open.send_replace(false);
    let before = received.load(Ordering::SeqCst);
    write_media_site(&staging, "second");
    let id = fleet.submit(&staging).await;
    for _ in 0..3000 {
        if received.load(Ordering::SeqCst) > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(received.load(Ordering::SeqCst) > before, "b0 reached its members");
    let running = fleet
        .mover
        .role
        .trees()
        .records()
        .into_iter()
        .find(|record| record.job == id && record.running)
        .expect("the prepare tree is running");
    assert_eq!(running.segments["seg-b"], "tree", "b0 has not reported: {running:?}");
    fleet.kill("b0");
    // Segment b elects b1, which reports; the gate lets go.
    fleet.report_segment("seg-b", 4, "b1", &["b0", "b1", "b2", "b-gate"]);
    open.send_replace(true);

    let job = fleet.wait_job(&id).await;
    // Committed everywhere but on b0; a job that missed a node says so (and the node is caught up later).
    assert!(
        job["error"]
            .as_str()
            .unwrap_or("")
            .contains("committed on 9 of 10 nodes"),
        "{job}"
    );
    let expected = contents(&staging);
    for name in ["a0", "a1", "a2", "b1", "b2", "c0", "c1", "c2"] {
        assert_eq!(fleet.live(name), expected, "{name} has the new version");
    }
    let b0 = job["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|node| node["node"] == "b0")
        .cloned()
        .expect("b0");
    assert_eq!(b0["state"], "failed", "{job}");
    let committed = job["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|node| node["state"] == "committed")
        .count();
    assert_eq!(committed, 9, "every other node committed: {job}");
    let prepare = fleet.tree_of(&id, "prepare");
    println!(
        "prepare tree with b0 stopped: {:?} {:?}",
        prepare.edges, prepare.leaders
    );
    assert!(prepare.leaders["b0"].starts_with("failed"), "{:?}", prepare.leaders);
    assert_eq!(
        prepare.leaders["b1"], "holding",
        "the new leader joined the running tree"
    );
    assert!(
        prepare.edges.iter().any(|(_, target)| target == "b1"),
        "{:?}",
        prepare.edges
    );
    assert_eq!(prepare.segments["seg-b"], "reported");

    // b0 comes back and is caught up (through its segment's new leader).
    let node = fleet.start_node("b0").await;
    fleet.nodes.insert("b0".into(), Some(node));
    for _ in 0..3000 {
        if fleet.live("b0") == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fleet.live("b0"), expected, "the restarted node was caught up");
    gate_stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_misdirected_tree_messages_are_refused_and_counted() {
    let fleet = TreeFleet::new(None, quick()).await;
    let signing = tern_mover::keys::load_or_create(&fleet.area.path().join("mover")).expect("mover key");
    let notify_url = format!("{}/tree/notify", fleet.url("a1"));
    let notification = |source: Source| Notification {
        job: "publish-1-0".into(),
        transfer: "publish-1-0.prepare.99".into(),
        phase: Phase::Prepare,
        source,
        target: "a1".into(),
        target_url: fleet.url("a1"),
        size: 1000,
        hash: "ab".repeat(32),
        leaders: vec!["a0".into(), "a1".into()],
        members: vec![Member {
            name: "a2".into(),
            url: fleet.url("a2"),
        }],
        issued_ms: now_ms(),
    };
    let frame = |key: &SecretKey, notification: SignedNotification, sent_at_ms: u64| {
        tree::encode(
            key,
            &Envelope::new("a0", TreeMessage::Notify { notification }, sent_at_ms),
        )
    };
    let good = SignedNotification::sign(notification(Source::Mover), &signing);
    let intruder = Source::Leader {
        name: "intruder".into(),
        url: "http://127.0.0.1:9".into(),
    };
    let other_key = SecretKey::generate().expect("key");
    let cases: Vec<(&str, Vec<u8>, StatusCode)> = vec![
        (
            "bad-tag",
            frame(&other_key, good.clone(), now_ms()),
            StatusCode::FORBIDDEN,
        ),
        (
            "bad-signature",
            frame(
                &fleet.key,
                SignedNotification::sign(
                    notification(Source::Mover),
                    &ed25519_dalek::SigningKey::from_bytes(&[3; 32]),
                ),
                now_ms(),
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            "bad-source",
            frame(
                &fleet.key,
                SignedNotification::sign(notification(intruder), &signing),
                now_ms(),
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            "stale",
            frame(&fleet.key, good.clone(), now_ms() - 600_000),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (reason, bytes, status) in cases {
        let (answered, body) = fleet.post(&notify_url, bytes).await;
        assert_eq!(answered, status, "{reason}: {body}");
    }
    let accepted = frame(&fleet.key, good, now_ms());
    let (status, body) = fleet.post(&notify_url, accepted.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = fleet.post(&notify_url, accepted).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a replay: {body}");
    let a1 = fleet.nodes["a1"].as_ref().expect("a1");
    let refused = a1.role.tree_refused();
    for reason in ["bad-tag", "bad-signature", "bad-source", "stale", "replayed"] {
        assert_eq!(refused.get(reason), Some(&1), "{reason} counted: {refused:?}");
    }

    // The mover's side: reports with another key, replayed, or speaking for another leader.
    let holding = |leader: &str| TreeMessage::Holding {
        report: HoldingReport {
            job: "publish-1-0".into(),
            transfer: "publish-1-0.prepare.99".into(),
            leader: leader.into(),
            holding: Holding::Complete,
        },
    };
    let holding_url = format!("http://{}/api/tree/holding", fleet.mover_addr);
    let forged = tree::encode(&other_key, &Envelope::new("a0", holding("a0"), now_ms()));
    assert_eq!(fleet.post(&holding_url, forged).await.0, StatusCode::FORBIDDEN);
    let report = tree::encode(&fleet.key, &Envelope::new("a0", holding("a0"), now_ms()));
    let (status, body) = fleet.post(&holding_url, report.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no such tree: {body}");
    assert_eq!(
        fleet.post(&holding_url, report).await.0,
        StatusCode::FORBIDDEN,
        "replayed"
    );
    let impostor = tree::encode(&fleet.key, &Envelope::new("a0", holding("a1"), now_ms()));
    assert_eq!(fleet.post(&holding_url, impostor).await.0, StatusCode::FORBIDDEN);
    let refused = fleet.mover.role.trees().refused();
    for reason in ["bad-tag", "replayed", "impersonation"] {
        assert_eq!(refused.get(reason), Some(&1), "{reason} counted: {refused:?}");
    }
    // The notification a1 took names a tree that does not run: its own report of that is refused too.
    assert!(
        refused.get("unknown-transfer").is_some_and(|count| *count >= 1),
        "{refused:?}"
    );
    let status = fleet.api("GET", "/status", None).await;
    assert_eq!(status["tree_refused"]["bad-tag"], 1, "{status}");

    // Assignment copies go only to holders of the cluster key, each token for one transfer and one node:
    // without a token, with one made with another key, for another node or another transfer: 403, counted.
    let transfer = "publish-1-0.prepare.99";
    let forged_tokens = [
        None,
        Some(tree::fetch_token(&other_key, transfer, "a2")),
        Some(tree::fetch_token(&fleet.key, transfer, "a3")),
        Some(tree::fetch_token(&fleet.key, "publish-1-0.prepare.98", "a2")),
    ];
    for source in [
        format!("http://{}/api/tree/assignments/{transfer}?for=a2", fleet.mover_addr),
        format!("{}/tree/assignments/{transfer}?for=a2", fleet.url("a1")),
    ] {
        for token in &forged_tokens {
            assert_eq!(
                fleet.get(&source, token.as_deref()).await,
                StatusCode::FORBIDDEN,
                "{source} with {token:?}"
            );
        }
    }
    assert_eq!(fleet.mover.role.trees().refused().get("bad-token"), Some(&4));
    assert_eq!(a1.role.tree_refused().get("bad-token"), Some(&4));
    // With the right token the mover answers that no such tree runs (it ended): the token was accepted.
    let token = tree::fetch_token(&fleet.key, transfer, "a2");
    let mover_copy = format!("http://{}/api/tree/assignments/{transfer}?for=a2", fleet.mover_addr);
    assert_eq!(fleet.get(&mover_copy, Some(&token)).await, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_given_up_on_after_the_fetch_timeout_and_its_segment_is_served_directly() {
    let settings = TreeSettings {
        fetch_timeout: Duration::from_millis(1500),
        leader_grace: Duration::from_millis(500),
        ..quick()
    };
    let mut fleet = TreeFleet::new(Some(7), settings).await;
    fleet.report_all_segments();
    // c0 dies before the publish, and no new leader is elected in segment c.
    fleet.kill("c0");
    let staging = fleet.area.path().join("staging");
    write_media_site(&staging, "first");
    let id = fleet.submit(&staging).await;
    let job = fleet.wait_job(&id).await;
    assert!(
        job["error"]
            .as_str()
            .unwrap_or("")
            .contains("committed on 8 of 9 nodes"),
        "{job}"
    );
    let expected = contents(&staging);
    for name in ["a0", "a1", "a2", "b0", "b1", "b2", "c1", "c2"] {
        assert_eq!(fleet.live(name), expected, "{name} has the site");
    }
    let prepare = fleet.tree_of(&id, "prepare");
    println!(
        "prepare tree with c0 dead: {:?} {:?} {:?}",
        prepare.edges, prepare.leaders, prepare.segments
    );
    assert!(prepare.leaders["c0"].starts_with("failed"), "{:?}", prepare.leaders);
    assert_eq!(prepare.segments["seg-c"], "star", "served by the star after the grace");
    assert_eq!(prepare.segments["seg-a"], "reported");
}
