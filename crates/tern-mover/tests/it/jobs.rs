//! The mover and three node agents on real sockets: publish, rollback, a node down during a publish, and a
//! restart of the mover.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tern_http::server::Running;
use tern_mover::PlanPolicy;
use tern_mover::service::{Mover, MoverConfig, start};
use tern_node::agent::{NodeAgent, NodeConfig};

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.insert(
                    path.strip_prefix(dir).expect("prefix").to_string_lossy().to_string(),
                    std::fs::read(&path).expect("read"),
                );
            }
        }
    }
    out
}

struct Fleet {
    area: tempfile::TempDir,
    mover: Option<Running<Arc<Mover>>>,
    mover_addr: std::net::SocketAddr,
    nodes: Vec<Option<Running<Arc<NodeAgent>>>>,
    node_addrs: Vec<std::net::SocketAddr>,
    client: Client<HttpConnector, Full<Bytes>>,
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

impl Fleet {
    async fn new(nodes: usize, quorum: Option<usize>) -> Fleet {
        let area = tempfile::tempdir().expect("tempdir");
        let mut fleet = Fleet {
            area,
            mover: None,
            mover_addr: free_addr(),
            nodes: Vec::new(),
            node_addrs: (0..nodes).map(|_| free_addr()).collect(),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        };
        fleet.start_mover(quorum).await;
        for index in 0..nodes {
            let node = fleet.start_node(index).await;
            fleet.nodes.push(Some(node));
        }
        fleet.wait_registered(nodes).await;
        fleet
    }

    async fn start_mover(&mut self, quorum: Option<usize>) {
        self.mover = Some(
            start(MoverConfig {
                listen: self.mover_addr,
                data: self.area.path().join("mover"),
                policy: PlanPolicy::default(),
                quorum,
                delivery_timeout: Duration::from_secs(10),
            })
            .await
            .expect("mover"),
        );
    }

    async fn start_node(&self, index: usize) -> Running<Arc<NodeAgent>> {
        let key = tern_mover::keys::load_public(&self.area.path().join("mover/mover.pub")).expect("mover.pub");
        tern_node::agent::start(NodeConfig {
            mover: format!("http://{}", self.mover_addr),
            listen: self.node_addrs[index],
            advertise: None,
            root: self.node_root(index),
            name: format!("node{index}"),
            mover_key: key,
            decryption_key: None,
            limits: Default::default(),
            register_interval: Duration::from_millis(200),
        })
        .await
        .expect("node")
    }

    fn node_root(&self, index: usize) -> PathBuf {
        self.area.path().join(format!("node{index}"))
    }

    fn live(&self, index: usize) -> BTreeMap<String, Vec<u8>> {
        tree(&self.node_root(index).join("www/live"))
    }

    async fn api(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.mover_addr))
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .expect("request");
        let response = self.client.request(request).await.expect("mover answers");
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&bytes).expect("json")
    }

    async fn wait_registered(&self, count: usize) {
        for _ in 0..500 {
            if self.api("GET", "/api/nodes", None).await.as_array().map(Vec::len) == Some(count) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("nodes did not register");
    }

    async fn run(&self, kind: &str, staging: Option<&Path>) -> serde_json::Value {
        let body =
            serde_json::json!({ "kind": kind, "site": "www", "staging": staging.map(|s| s.display().to_string()) });
        let created = self.api("POST", "/api/jobs", Some(body)).await;
        let id = created["id"]
            .as_str()
            .unwrap_or_else(|| panic!("job not created: {created}"))
            .to_string();
        self.wait_job(&id).await
    }

    async fn wait_job(&self, id: &str) -> serde_json::Value {
        for _ in 0..3000 {
            let job = self.api("GET", &format!("/api/jobs/{id}"), None).await;
            if matches!(job["state"].as_str(), Some("committed" | "failed")) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} never finished");
    }
}

fn write_site(staging: &Path, files: usize, marker: &str) {
    for n in 0..files {
        let path = staging.join(format!("s{}/f{n}.html", n % 20));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, format!("{marker} {n}")).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_rollback_across_three_nodes() {
    let fleet = Fleet::new(3, None).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 2000, "first");
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "committed", "{job}");
    let first = tree(&staging);
    for index in 0..3 {
        assert_eq!(fleet.live(index), first, "node {index} is byte-identical to staging");
    }

    std::fs::write(staging.join("s1/f1.html"), "changed").expect("write");
    std::fs::remove_file(staging.join("s2/f2.html")).expect("rm");
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "committed", "{job}");
    let second = tree(&staging);
    let bytes: Vec<u64> = job["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["bytes"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        bytes.iter().all(|b| *b < 10_000),
        "an incremental publish sends little: {bytes:?}"
    );
    for index in 0..3 {
        assert_eq!(fleet.live(index), second, "node {index} after the second publish");
    }

    let job = fleet.run("rollback", None).await;
    assert_eq!(job["state"], "committed", "{job}");
    for index in 0..3 {
        assert_eq!(
            fleet.live(index),
            first,
            "node {index} is back to the first version exactly"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_a_publish_is_reported_and_caught_up_when_back() {
    let mut fleet = Fleet::new(3, Some(2)).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 50, "first");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");

    fleet.nodes[2].take().expect("node2").shutdown().await;
    write_site(&staging, 50, "second");
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "failed", "the job reports the missing node: {job}");
    assert!(job["error"].as_str().unwrap_or("").contains("2 of 3"), "{job}");
    let node2 = job["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node"] == "node2")
        .cloned()
        .expect("node2");
    assert_eq!(node2["state"], "failed");
    let expected = tree(&staging);
    assert_eq!(fleet.live(0), expected);
    assert_eq!(fleet.live(1), expected);

    // The node comes back; nobody acts; it is brought up to date.
    let back = fleet.start_node(2).await;
    fleet.nodes[2] = Some(back);
    for _ in 0..500 {
        if fleet.node_root(2).join("www/live").exists() && fleet.live(2) == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("node2 was not brought up to date");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_interrupted_by_a_mover_restart_fails_cleanly() {
    let mut fleet = Fleet::new(1, None).await;
    let data = fleet.area.path().join("mover");
    fleet.mover.take().expect("mover").shutdown().await;
    {
        let store = tern_mover::store::Store::open(&data.join("mover.db")).expect("db");
        store
            .create_job("stuck", "publish", "www", Some("/nonexistent"), &["node0".into()], 1)
            .expect("job");
        store.set_job_state("stuck", "running", None, 2).expect("running");
    }
    fleet.start_mover(None).await;
    let job = fleet.api("GET", "/api/jobs/stuck", None).await;
    assert_eq!(job["state"], "failed", "no job stays running forever: {job}");
    assert!(job["error"].as_str().unwrap_or("").contains("restarted"));
}
