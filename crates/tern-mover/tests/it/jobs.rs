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
use tern_mover::service::{Mover, MoverConfig, start};
use tern_mover::{JobKind, JobSpec};
use tern_node::agent::{NodeAgent, NodeConfig};

pub(crate) fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    tern_tree::contents(dir)
}

pub(crate) struct Fleet {
    pub(crate) area: tempfile::TempDir,
    pub(crate) mover: Option<Running<Arc<Mover>>>,
    pub(crate) mover_addr: std::net::SocketAddr,
    pub(crate) nodes: Vec<Option<Running<Arc<NodeAgent>>>>,
    node_addrs: Vec<std::net::SocketAddr>,
    pub(crate) client: Client<HttpConnector, Full<Bytes>>,
    /// The load balancer the mover is told about when it (re)starts.
    pub(crate) load_balancer: Option<tern_mover::rotation::LoadBalancer>,
    /// The cluster key of the mover and the nodes, if any.
    pub(crate) cluster_key: Option<tern_wire::SecretKey>,
}

/// A port for a server started later ([`tern_http::testsuite::free_addr`]: outside the ephemeral range).
pub(crate) fn free_addr() -> std::net::SocketAddr {
    tern_http::testsuite::free_addr()
}

impl Fleet {
    pub(crate) async fn new(nodes: usize, quorum: Option<usize>) -> Fleet {
        Fleet::with_load_balancer(nodes, quorum, None).await
    }

    /// A fleet whose mover and nodes share a cluster key.
    pub(crate) async fn keyed(nodes: usize) -> Fleet {
        let key = tern_wire::SecretKey::generate().expect("key");
        Fleet::build(nodes, None, None, Some(key)).await
    }

    pub(crate) async fn with_load_balancer(
        nodes: usize,
        quorum: Option<usize>,
        load_balancer: Option<tern_mover::rotation::LoadBalancer>,
    ) -> Fleet {
        Fleet::build(nodes, quorum, load_balancer, None).await
    }

    async fn build(
        nodes: usize,
        quorum: Option<usize>,
        load_balancer: Option<tern_mover::rotation::LoadBalancer>,
        cluster_key: Option<tern_wire::SecretKey>,
    ) -> Fleet {
        let area = tempfile::tempdir().expect("tempdir");
        let mut fleet = Fleet {
            area,
            mover: None,
            mover_addr: free_addr(),
            nodes: Vec::new(),
            node_addrs: (0..nodes).map(|_| free_addr()).collect(),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            load_balancer,
            cluster_key,
        };
        fleet.start_mover(quorum).await;
        for index in 0..nodes {
            let node = fleet.start_node(index).await;
            fleet.nodes.push(Some(node));
        }
        fleet.wait_registered(nodes).await;
        fleet
    }

    pub(crate) async fn start_mover(&mut self, quorum: Option<usize>) {
        self.mover = Some(
            start(MoverConfig {
                quorum,
                delivery_timeout: Duration::from_secs(10),
                checkpoints_kept: 3,
                load_balancer: self.load_balancer.clone(),
                cluster_key: self.cluster_key.clone(),
                ..MoverConfig::new(self.mover_addr, self.area.path().join("mover"))
            })
            .await
            .expect("mover"),
        );
    }

    pub(crate) async fn start_node(&self, index: usize) -> Running<Arc<NodeAgent>> {
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
            groups: Vec::new(),
            superseded_grace: tern_node::interpreter::SUPERSEDED_GRACE,
            tls: None,
            ca: None,
            cluster_key: self.cluster_key.clone(),
            tree: Default::default(),
        })
        .await
        .expect("node")
    }

    pub(crate) fn node_root(&self, index: usize) -> PathBuf {
        self.area.path().join(format!("node{index}"))
    }

    pub(crate) fn live(&self, index: usize) -> BTreeMap<String, Vec<u8>> {
        tree(&self.node_root(index).join("www/live"))
    }

    /// The newest line of the mover's history containing `text`; panics, showing the history, without one.
    pub(crate) async fn history_line(&self, text: &str) -> String {
        let history = self.api("GET", "/api/history?limit=50", None).await;
        history
            .as_array()
            .expect("history")
            .iter()
            .filter_map(|entry| entry["message"].as_str())
            .find(|message| message.contains(text))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no history line with {text:?}: {history}"))
    }

    /// POSTs `body` as it is to `path`; the status and the JSON answer.
    pub(crate) async fn post_bytes(&self, path: &str, body: Vec<u8>) -> (http::StatusCode, serde_json::Value) {
        let request = http::Request::post(format!("http://{}{path}", self.mover_addr))
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = self.client.request(request).await.expect("mover answers");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    pub(crate) async fn api(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.mover_addr))
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .expect("request");
        let response = self.client.request(request).await.expect("mover answers");
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&bytes).expect("json")
    }

    pub(crate) async fn wait_registered(&self, count: usize) {
        for _ in 0..500 {
            if self.api("GET", "/api/nodes", None).await.as_array().map(Vec::len) == Some(count) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("nodes did not register");
    }

    pub(crate) async fn run(&self, kind: &str, staging: Option<&Path>) -> serde_json::Value {
        let body =
            serde_json::json!({ "kind": kind, "site": "www", "staging": staging.map(|s| s.display().to_string()) });
        let created = self.api("POST", "/api/jobs", Some(body)).await;
        let id = created["id"]
            .as_str()
            .unwrap_or_else(|| panic!("job not created: {created}"))
            .to_string();
        self.wait_job(&id).await
    }

    pub(crate) async fn wait_job(&self, id: &str) -> serde_json::Value {
        for _ in 0..3000 {
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
}

pub(crate) fn write_site(staging: &Path, files: usize, marker: &str) {
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
async fn a_job_interrupted_by_a_mover_restart_resumes_or_fails_cleanly() {
    let mut fleet = Fleet::new(1, None).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 20, "resumed");
    let data = fleet.area.path().join("mover");
    fleet.mover.take().expect("mover").shutdown().await;
    {
        // Two jobs the mover was running when it stopped: one whose policy allows another try, one not.
        let store = tern_mover::store::Store::open(&data.join("mover.db")).expect("db");
        let nodes: std::collections::BTreeSet<String> = ["node0".to_string()].into();
        let mut stuck = JobSpec::new(JobKind::Publish, "www");
        stuck.staging = Some("/nonexistent".into());
        store.create_job("stuck", &stuck, 1, 1).expect("job");
        store.start_job("stuck", &nodes, 2).expect("running");
        let mut resumable = JobSpec::new(JobKind::Publish, "www");
        resumable.staging = Some(staging.display().to_string());
        resumable.retries = 1;
        store.create_job("resumable", &resumable, 1, 1).expect("job");
        store.start_job("resumable", &nodes, 2).expect("running");
    }
    fleet.start_mover(None).await;
    let job = fleet.wait_job("stuck").await;
    assert_eq!(job["state"], "failed", "no job stays running forever: {job}");
    assert!(job["error"].as_str().unwrap_or("").contains("restarted"));
    assert_eq!(job["nodes"][0]["state"], "failed", "its node failed with it: {job}");
    let job = fleet.wait_job("resumable").await;
    assert_eq!(job["state"], "committed", "the job resumed after the restart: {job}");
    assert_eq!(job["attempt"], 2);
    assert_eq!(fleet.live(0), tree(&staging));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_for_one_site_run_one_after_the_other_and_other_sites_alongside() {
    let fleet = Fleet::new(2, None).await;
    let first = fleet.area.path().join("first");
    let second = fleet.area.path().join("second");
    write_site(&first, 300, "first");
    write_site(&second, 300, "second");
    let submit = |site: &str, staging: &Path| serde_json::json!({ "kind": "publish", "site": site, "staging": staging.display().to_string() });
    let a = fleet.api("POST", "/api/jobs", Some(submit("www", &first))).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let b = fleet.api("POST", "/api/jobs", Some(submit("www", &second))).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let c = fleet.api("POST", "/api/jobs", Some(submit("blog", &first))).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (a, b, c) = (
        fleet.wait_job(&a).await,
        fleet.wait_job(&b).await,
        fleet.wait_job(&c).await,
    );
    for job in [&a, &b, &c] {
        assert_eq!(job["state"], "committed", "{job}");
    }
    // The second (same site, same nodes) waited for the first; the deterministic check of "alongside" is
    // `scheduling::overlapping_jobs_wait_or_are_refused_and_others_run_alongside`, with a node that holds its answer.
    let (Some(b_started), Some(a_finished)) = (b["started_ms"].as_u64(), a["finished_ms"].as_u64()) else {
        panic!("job times missing: {a} {b}");
    };
    assert!(b_started >= a_finished, "two publishes of one site overlapped: {a} {b}");
    let expected = tree(&second);
    for index in 0..2 {
        assert_eq!(
            fleet.live(index),
            expected,
            "the later publish of www won on node {index}"
        );
        assert_eq!(tree(&fleet.node_root(index).join("blog/live")), tree(&first));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_tampered_or_foreign_assignments_and_nothing_outside_changes() {
    use ed25519_dalek::SigningKey;
    use tern_wire::assignment::{AssignmentKind, Builder, Command};
    let fleet = Fleet::new(1, None).await;
    let outside = fleet.area.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("precious"), "keep").expect("write");
    let post = |bytes: Vec<u8>| {
        let request = http::Request::post(format!("http://{}/assignments", fleet.node_addrs[0]))
            .body(Full::new(Bytes::from(bytes)))
            .expect("request");
        let client = fleet.client.clone();
        async move {
            let response = client.request(request).await.expect("node answers");
            let status = response.status();
            let body = response.into_body().collect().await.expect("body").to_bytes();
            (status, String::from_utf8_lossy(&body).to_string())
        }
    };
    let mover_key = {
        let text = std::fs::read_to_string(fleet.area.path().join("mover/mover.key")).expect("key");
        let line = text
            .lines()
            .find(|l| !l.starts_with('#'))
            .expect("line")
            .trim()
            .to_string();
        let mut seed = [0u8; 32];
        hex::decode_to_slice(&line, &mut seed).expect("hex");
        SigningKey::from_bytes(&seed)
    };
    let sign = |key: &SigningKey, commands: Vec<Command>| {
        let mut builder = Builder::new("t", AssignmentKind::Publish, "www", 1, None, 0);
        for command in commands {
            builder.command(command);
        }
        builder.finish(key, None).expect("finish")
    };
    let good = sign(
        &mover_key,
        vec![Command::Mkdir {
            path: "ok".into(),
            mode: None,
            mtime_ns: None,
        }],
    );
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    let foreign = sign(
        &SigningKey::from_bytes(&[99; 32]),
        vec![Command::Mkdir {
            path: "ok".into(),
            mode: None,
            mtime_ns: None,
        }],
    );
    let climbing = sign(
        &mover_key,
        vec![
            Command::Mkdir {
                path: "../../outside/evil".into(),
                mode: None,
                mtime_ns: None,
            },
            Command::Commit,
        ],
    );
    let absolute = sign(
        &mover_key,
        vec![
            Command::Remove {
                path: outside.join("precious").display().to_string(),
            },
            Command::Commit,
        ],
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("flipped bit", flipped, "hash"),
        ("foreign signature", foreign, "signature"),
        (
            "unsigned garbage",
            b"TERNASG2 not really".to_vec(),
            "not a tern assignment",
        ),
        ("climbing path", climbing, "refused"),
        ("absolute path", absolute, "refused"),
    ];
    for (what, bytes, reason) in cases {
        let (status, body) = post(bytes).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(body.contains(reason), "{what}: the reason is given: {body}");
    }
    assert_eq!(std::fs::read(outside.join("precious")).expect("read"), b"keep");
    assert_eq!(
        std::fs::read_dir(&outside).expect("dir").count(),
        1,
        "nothing was created outside the root"
    );
    assert!(!fleet.node_root(0).join("www/live").exists(), "nothing went live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_checkpoint_brings_back_that_version_exactly() {
    let fleet = Fleet::new(2, None).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 100, "first");
    std::fs::write(staging.join("only-in-first.txt"), "gone later").expect("write");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");
    let first = tree(&staging);
    let checkpoint = fleet
        .api("POST", "/api/checkpoints", Some(serde_json::json!({ "site": "www" })))
        .await;
    let number = checkpoint["number"]
        .as_u64()
        .unwrap_or_else(|| panic!("checkpoint: {checkpoint}"));

    write_site(&staging, 100, "second");
    std::fs::remove_file(staging.join("only-in-first.txt")).expect("rm");
    std::fs::write(staging.join("only-in-second.txt"), "new").expect("write");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");
    assert_ne!(fleet.live(0), first);

    let body = serde_json::json!({ "kind": "restore", "site": "www", "checkpoint": number });
    let created = fleet.api("POST", "/api/jobs", Some(body)).await;
    let job = fleet.wait_job(created["id"].as_str().expect("id")).await;
    assert_eq!(job["state"], "committed", "{job}");
    for index in 0..2 {
        assert_eq!(
            fleet.live(index),
            first,
            "node {index} holds checkpoint {number} exactly"
        );
    }

    // A checkpoint of the version the newest one holds is that one, not another copy.
    let again = fleet
        .api("POST", "/api/checkpoints", Some(serde_json::json!({ "site": "www" })))
        .await;
    let repeat = fleet
        .api("POST", "/api/checkpoints", Some(serde_json::json!({ "site": "www" })))
        .await;
    assert_eq!(repeat["number"], again["number"], "{again} {repeat}");

    // Only the configured number of checkpoints is kept.
    for round in 0..3 {
        write_site(&staging, 20, &format!("round {round}"));
        assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");
        fleet
            .api("POST", "/api/checkpoints", Some(serde_json::json!({ "site": "www" })))
            .await;
    }
    let list = fleet.api("GET", "/api/checkpoints?site=www", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    let versions: Vec<u64> = list
        .as_array()
        .map(|all| all.iter().filter_map(|c| c["version"].as_u64()).collect())
        .unwrap_or_default();
    assert!(
        versions.windows(2).all(|pair| pair[0] < pair[1]),
        "one checkpoint per version: {list}"
    );
    let missing = fleet
        .api(
            "POST",
            "/api/jobs",
            Some(serde_json::json!({ "kind": "restore", "site": "www" })),
        )
        .await;
    assert!(missing["error"].as_str().unwrap_or("").contains("checkpoint"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_publish_that_failed_does_not_give_its_version_number_to_the_next() {
    let mut fleet = Fleet::new(2, None).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 20, "first");
    // Node1 is down: node0 prepares version 1 and the job fails for want of a quorum.
    fleet.nodes[1].take().expect("node1").shutdown().await;
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "failed", "{job}");
    let prepared = std::fs::read_to_string(fleet.node_root(0).join("www/temp.prepared")).expect("prepared");
    assert_eq!(prepared.trim(), "1");

    // The next publish of other content takes the next number: a version names one content.
    fleet.nodes[1] = Some(fleet.start_node(1).await);
    fleet.wait_registered(2).await;
    write_site(&staging, 20, "second");
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "committed", "{job}");
    let site = fleet.api("GET", "/api/sites/www", None).await;
    assert_eq!(site["site"]["sequence"], 2, "{site}");
    for index in 0..2 {
        assert_eq!(fleet.live(index), tree(&staging), "node {index}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_take_the_deltas_gets_a_full_copy_and_the_history_says_why() {
    let mut fleet = Fleet::new(2, Some(1)).await;
    let staging = fleet.area.path().join("staging");
    // Lines that do not compress, so that a small change goes as a delta (a patch), not as a new file.
    let mut seed = 7u64;
    let page: String = (0..600)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            format!("{seed:016x} {:016x}\n", seed.rotate_left(17))
        })
        .collect();
    std::fs::create_dir_all(&staging).expect("staging");
    std::fs::write(staging.join("page.html"), format!("version one\n{page}")).expect("write");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");

    // Node1 misses version 2 (a small change: a delta), and its copy of the page is changed behind the
    // mover's back while it is down, so the delta does not apply there.
    fleet.nodes[1].take().expect("node1").shutdown().await;
    std::fs::write(staging.join("page.html"), format!("version two\n{page}")).expect("write");
    let job = fleet.run("publish", Some(&staging)).await;
    assert!(
        job["error"].as_str().unwrap_or("").contains("1 of 2"),
        "node0 committed: {job}"
    );
    let live = fleet.node_root(1).join("www/live/page.html");
    let linked = std::fs::read(&live).expect("node1's page");
    std::fs::remove_file(&live).expect("unlink");
    // Appended, so that every offset the delta counts back from the end of its base misses (a base
    // changed only where the delta does not read still rebuilds the right page, which a node takes).
    std::fs::write(&live, [&linked, b"edited by hand\n".as_slice()].concat()).expect("edit");
    // The node's ready-made next tree (linked from live before the edit) goes too, so the next prepare
    // starts from the edited live tree.
    for entry in std::fs::read_dir(fleet.node_root(1).join("www"))
        .expect("site dir")
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with("next-") {
            std::fs::remove_dir_all(entry.path()).expect("remove next");
        }
    }

    fleet.nodes[1] = Some(fleet.start_node(1).await);
    let expected = tree(&staging);
    let mut caught_up = false;
    for _ in 0..500 {
        if fleet.live(1) == expected {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(caught_up, "node1 was not brought up to date");
    let catch_up = fleet
        .api("GET", "/api/jobs", None)
        .await
        .as_array()
        .expect("jobs")
        .iter()
        .find(|job| job["kind"] == "synchronise")
        .cloned()
        .expect("a catch-up job");
    let catch_up = fleet.wait_job(catch_up["id"].as_str().expect("id")).await;
    assert_eq!(catch_up["state"], "committed", "{catch_up}");
    let said = fleet.history_line("did not take the deltas").await;
    assert!(
        said.starts_with("node1 did not take the deltas from version 1 ("),
        "{said}"
    );
    assert!(said.contains("not the version the patch was made for"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_no_longer_holds_what_it_registered_as_prepared_gets_the_content() {
    let fleet = Fleet::new(1, None).await;
    let staging = fleet.area.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    std::fs::write(staging.join("index.html"), "version one").expect("write");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");
    std::fs::write(staging.join("index.html"), "version two").expect("write");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");

    // A registration that says version 1 is live and version 2 prepared, from a node whose address is
    // node0's: node0 holds version 2 live and nothing prepared (as a node whose prepared tree went between
    // its registration and the commit), so it refuses the commit alone, and the content must follow.
    let nodes = fleet.api("GET", "/api/nodes", None).await;
    let url = nodes[0]["url"].as_str().expect("node0's url").to_string();
    let registration = serde_json::json!({
        "name": "ghost", "url": url, "versions": { "www": 1 }, "prepared": { "www": 2 },
    });
    let registered = fleet.api("POST", "/api/nodes/register", Some(registration)).await;
    let id = registered["synchronising"][0]
        .as_str()
        .unwrap_or_else(|| panic!("a catch-up for the node behind: {registered}"))
        .to_string();
    let catch_up = fleet.wait_job(&id).await;
    assert_eq!(catch_up["state"], "committed", "{catch_up}");
    assert_eq!(fleet.live(0), tree(&staging), "the content went, and version 2 is live");
    let said = fleet.history_line("registered as prepared").await;
    assert!(
        said.starts_with(
            "ghost did not commit version 2, which it registered as prepared (node refused (400 Bad Request): \
             commit of version 2 refused: no version is prepared;"
        ),
        "{said}"
    );
}

#[tokio::test]
async fn a_staging_directory_overlapping_the_movers_data_is_refused() {
    let fleet = Fleet::new(1, None).await;
    for staging in [fleet.area.path().join("mover"), fleet.area.path().to_path_buf()] {
        let body = serde_json::json!({ "kind": "publish", "site": "www", "staging": staging.display().to_string() });
        let (status, answer) = fleet.post_bytes("/api/jobs", body.to_string().into_bytes()).await;
        assert_eq!(status, 400, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains("overlaps the mover's data directory"),
            "{answer}"
        );
    }
}

/// A job is refused at submission, with what to do, when it names a path that depends on where the mover
/// was started, or a node that is not registered (helper-77's trial: the first published the mover's
/// `./st`; the second was taken and failed with "no registered nodes").
#[tokio::test]
async fn relative_paths_and_unknown_nodes_are_refused_when_the_job_is_submitted() {
    let fleet = Fleet::new(1, None).await;
    let staging = fleet.area.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    std::fs::write(staging.join("index.html"), "version one").expect("write");
    let refused = |body: serde_json::Value, expected: &'static str| {
        let fleet = &fleet;
        async move {
            let (status, answer) = fleet.post_bytes("/api/jobs", body.to_string().into_bytes()).await;
            assert_eq!(status, 400, "{answer}");
            let error = answer["error"].as_str().unwrap_or_default();
            assert!(error.contains(expected), "{error}");
        }
    };
    refused(
        serde_json::json!({ "kind": "publish", "site": "www", "staging": "staging" }),
        "staging directory staging is not an absolute path",
    )
    .await;
    let caches = serde_json::json!({
        "public_url": "http://www.example.com", "sync_url": "http://127.0.0.1:9", "sync_key": "sync.key",
    });
    refused(
        serde_json::json!({ "kind": "publish", "site": "www", "staging": staging.display().to_string(), "caches": caches }),
        "sync.key is not an absolute path",
    )
    .await;
    refused(
        serde_json::json!({
            "kind": "publish", "site": "www", "staging": staging.display().to_string(), "node": "nobody",
        }),
        "no node nobody is registered",
    )
    .await;
    // The node that is registered is taken.
    let nodes = fleet.api("GET", "/api/nodes", None).await;
    let name = nodes[0]["name"].as_str().expect("a node").to_string();
    let body = serde_json::json!({
        "kind": "publish", "site": "www", "staging": staging.display().to_string(), "node": name,
    });
    let (status, answer) = fleet.post_bytes("/api/jobs", body.to_string().into_bytes()).await;
    assert_eq!(status, 202, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_made_room_since_its_failed_catch_up_is_tried_again_at_once() {
    let fleet = Fleet::new(1, None).await;
    let staging = fleet.area.path().join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    std::fs::write(staging.join("index.html"), "version one").expect("write");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");

    // A node behind whose catch-up fails (nothing listens at its address, as a full disk would refuse it).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let register = |free_disk: u64| {
        let registration = serde_json::json!({
            "name": "full", "url": url, "free_disk": free_disk, "versions": {}, "prepared": {},
        });
        fleet.api("POST", "/api/nodes/register", Some(registration))
    };
    let first = register(10 << 20).await;
    let id = first["synchronising"][0]
        .as_str()
        .unwrap_or_else(|| panic!("a catch-up for the node behind: {first}"))
        .to_string();
    assert_eq!(fleet.wait_job(&id).await["state"], "failed");
    // Registering again with the same room: the back-off holds.
    let again = register(10 << 20).await;
    assert_eq!(again["synchronising"].as_array().map(Vec::len), Some(0), "{again}");
    // With room made: tried again at once.
    let roomy = register(500 << 20).await;
    assert_eq!(roomy["synchronising"].as_array().map(Vec::len), Some(1), "{roomy}");
}
