//! The scheduler on real sockets: conflicts (a node that holds its answer keeps a job running for as long as
//! the test wants), jobs due later and repeating, retries, content groups with include and exclude rules,
//! version numbers across a rollback, snapshots for a node that missed a publish, and removing a site.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tern_http::Body;
use tern_http::server::{Handler, ServerLimits, serve};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::jobs::{Fleet, free_addr, tree, write_site};

/// A node that takes assignments but answers only once released.
struct HeldNode {
    released: watch::Receiver<bool>,
    received: Arc<AtomicUsize>,
}

impl Handler for HeldNode {
    async fn call(&self, request: Request<Incoming>, _client: SocketAddr) -> Response<Body> {
        let _ = request.into_body().collect().await;
        self.received.fetch_add(1, Ordering::SeqCst);
        let mut released = self.released.clone();
        let _ = released.wait_for(|r| *r).await;
        Response::new(tern_http::full("{}"))
    }
}

impl Fleet {
    async fn api_status(&self, method: &str, path: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.mover_addr))
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let response = self.client.request(request).await.expect("mover answers");
        let status = response.status();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    async fn submit(&self, body: serde_json::Value) -> String {
        let (status, created) = self.api_status("POST", "/api/jobs", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{created}");
        created["id"].as_str().expect("id").to_string()
    }

    async fn state(&self, id: &str) -> serde_json::Value {
        self.api("GET", &format!("/api/jobs/{id}"), None).await
    }

    async fn wait_state(&self, id: &str, state: &str) -> serde_json::Value {
        for _ in 0..1000 {
            let job = self.state(id).await;
            if job["state"] == state {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} never reached {state}: {}", self.state(id).await);
    }
}

fn publish(site: &str, staging: &std::path::Path) -> serde_json::Value {
    serde_json::json!({ "kind": "publish", "site": site, "staging": staging.display().to_string() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_jobs_wait_or_are_refused_and_others_run_alongside() {
    let fleet = Fleet::new(2, None).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 30, "www");
    fleet
        .api(
            "PUT",
            "/api/groups/real",
            Some(serde_json::json!({ "nodes": ["node0", "node1"] })),
        )
        .await;
    let mut body = publish("www", &staging);
    body["group"] = "real".into();
    let first = fleet.submit(body).await;
    assert_eq!(fleet.wait_job(&first).await["state"], "committed");

    // A third node that holds every answer until released; it is not in group `real`, so nothing is
    // sent to it until a job names it.
    let (release, released) = watch::channel(false);
    let received = Arc::new(AtomicUsize::new(0));
    let held_addr = free_addr();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(held_addr).await.expect("bind");
    let handler = Arc::new(HeldNode {
        released,
        received: received.clone(),
    });
    tokio::spawn(serve(listener, handler, ServerLimits::default(), shutdown.clone()));
    let registration = serde_json::json!({ "name": "held", "url": format!("http://{held_addr}") });
    fleet.api("POST", "/api/nodes/register", Some(registration)).await;

    let a = fleet
        .submit(serde_json::json!({ "kind": "replicate", "site": "www", "node": "held" }))
        .await;
    fleet.wait_state(&a, "running").await;
    while received.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Same site, same node: waits (queue) or is refused (refuse).
    let b = fleet
        .submit(serde_json::json!({ "kind": "replicate", "site": "www", "node": "held" }))
        .await;
    let waiting = fleet.wait_state(&b, "queued").await;
    assert!(
        waiting["error"].as_str().unwrap_or("").contains(&a),
        "it says what it waits for: {waiting}"
    );
    let (status, refused) = fleet
        .api_status(
            "POST",
            "/api/jobs",
            serde_json::json!({ "kind": "replicate", "site": "www", "node": "held", "on_conflict": "refuse" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert!(refused["error"].as_str().unwrap_or("").contains(&a), "{refused}");

    // Same site on other nodes, and another site: they run while `a` is held.
    let c = fleet
        .submit(serde_json::json!({ "kind": "replicate", "site": "www", "node": "node0" }))
        .await;
    assert_eq!(fleet.wait_job(&c).await["state"], "committed");
    let mut blog = publish("blog", &staging);
    blog["group"] = "real".into();
    let d = fleet.submit(blog).await;
    assert_eq!(fleet.wait_job(&d).await["state"], "committed");
    assert_eq!(fleet.state(&a).await["state"], "running");
    assert_eq!(fleet.state(&b).await["state"], "queued");
    // A job that has not started can be cancelled; a running one cannot.
    let (status, _) = fleet
        .api_status("POST", &format!("/api/jobs/{a}/cancel"), serde_json::json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    release.send(true).expect("release");
    let a = fleet.wait_job(&a).await;
    let b = fleet.wait_job(&b).await;
    assert_eq!(a["state"], "committed", "{a}");
    assert_eq!(b["state"], "committed", "{b}");
    assert!(
        b["started_ms"].as_u64() >= a["finished_ms"].as_u64(),
        "the queued job started after the one it waited for: {a} {b}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_due_later_waits_and_a_repeating_job_runs_until_cancelled() {
    let fleet = Fleet::new(1, None).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 10, "later");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let mut body = publish("www", &staging);
    body["at_ms"] = (now + 1500).into();
    let later = fleet.submit(body).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(fleet.state(&later).await["state"], "scheduled");
    assert!(!fleet.node_root(0).join("www/live").exists(), "nothing before its time");
    let job = fleet.wait_job(&later).await;
    assert_eq!(job["state"], "committed", "{job}");
    assert!(job["started_ms"].as_u64().expect("started") >= now + 1500);
    assert_eq!(fleet.live(0), tree(&staging));

    // A synchronise every second: it runs, schedules its next run, and stops when that one is cancelled.
    let first = fleet
        .submit(serde_json::json!({ "kind": "synchronise", "site": "www", "every_s": 1 }))
        .await;
    assert_eq!(fleet.wait_job(&first).await["state"], "committed");
    let next = loop {
        let jobs = fleet.api("GET", "/api/jobs", None).await;
        let scheduled = jobs
            .as_array()
            .expect("jobs")
            .iter()
            .find(|j| j["kind"] == "synchronise" && j["state"] == "scheduled")
            .cloned();
        if let Some(job) = scheduled {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(next["every_s"], 1);
    let id = next["id"].as_str().expect("id");
    let (status, _) = fleet
        .api_status("POST", &format!("/api/jobs/{id}/cancel"), serde_json::json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let jobs = fleet.api("GET", "/api/jobs", None).await;
    let pending: Vec<_> = jobs
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|j| !matches!(j["state"].as_str(), Some("committed" | "cancelled")))
        .collect();
    assert!(pending.is_empty(), "the series ended: {pending:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_tried_again_by_policy() {
    let mut fleet = Fleet::new(2, None).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 10, "retry");
    fleet.nodes[1].take().expect("node1").shutdown().await;
    let mut body = publish("www", &staging);
    body["retries"] = 3.into();
    body["retry_delay_s"] = 1.into();
    let id = fleet.submit(body).await;
    // The first try fails (a node is down and the quorum is every node); the job goes back on the schedule.
    let waiting = loop {
        let job = fleet.state(&id).await;
        if job["state"] == "scheduled" && job["attempt"] == 1 {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(waiting["error"].as_str().unwrap_or("").contains("1 of 2"), "{waiting}");
    let back = fleet.start_node(1).await;
    fleet.nodes[1] = Some(back);
    let job = fleet.wait_job(&id).await;
    assert_eq!(job["state"], "committed", "{job}");
    assert!(job["attempt"].as_u64().expect("attempt") >= 2, "{job}");
    assert_eq!(fleet.live(1), tree(&staging));

    // Without retries, a failure is final.
    fleet.nodes[1].take().expect("node1").shutdown().await;
    write_site(&staging, 10, "final");
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempt"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_gets_the_site_without_the_excluded_files_and_rules_stay() {
    let fleet = Fleet::new(2, None).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 20, "grouped");
    std::fs::create_dir_all(staging.join("drafts")).expect("mkdir");
    std::fs::write(staging.join("drafts/next.html"), "not yet").expect("write");
    std::fs::write(staging.join("s1/scratch.tmp"), "scratch").expect("write");
    fleet
        .api("PUT", "/api/groups/eu", Some(serde_json::json!({ "nodes": ["node0"] })))
        .await;
    let mut body = publish("www", &staging);
    body["group"] = "eu".into();
    body["exclude"] = serde_json::json!(["*.tmp", "drafts/"]);
    let job = fleet.wait_job(&fleet.submit(body).await).await;
    assert_eq!(job["state"], "committed", "{job}");
    assert_eq!(job["nodes"].as_array().map(Vec::len), Some(1), "only the group: {job}");
    let mut expected = tree(&staging);
    expected.remove("drafts/next.html");
    expected.remove("s1/scratch.tmp");
    assert_eq!(fleet.live(0), expected);
    assert!(!fleet.node_root(1).join("www").exists(), "node1 is not in the group");

    // The next publish, with no options, goes to the site's group with the site's rules.
    std::fs::write(staging.join("s2/new.html"), "new").expect("write");
    std::fs::write(staging.join("s2/other.tmp"), "scratch").expect("write");
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "committed", "{job}");
    expected.insert("s2/new.html".into(), b"new".to_vec());
    assert_eq!(fleet.live(0), expected);
    assert!(!fleet.node_root(1).join("www").exists());

    // A bad pattern is refused before anything runs.
    let mut body = publish("www", &staging);
    body["exclude"] = serde_json::json!(["../etc"]);
    let (status, refused) = fleet.api_status("POST", "/api/jobs", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(refused["error"].as_str().unwrap_or("").contains("pattern"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_never_repeat_and_a_node_behind_gets_the_snapshots_not_a_full_copy() {
    // A quorum of one: a publish commits on the nodes that are up.
    let mut fleet = Fleet::new(2, Some(1)).await;
    let staging = fleet.area.path().join("staging");
    // Big enough that a full copy is far larger than a delta.
    for n in 0..40 {
        let path = staging.join(format!("d/f{n}.bin"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let content: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ n)
            .collect();
        std::fs::write(path, content).expect("write");
    }
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");
    let version = |site: serde_json::Value| site["site"]["sequence"].as_u64().expect("sequence");
    assert_eq!(version(fleet.api("GET", "/api/sites/www", None).await), 1);

    // node1 misses version 2.
    fleet.nodes[1].take().expect("node1").shutdown().await;
    std::fs::write(staging.join("d/f3.bin"), b"small change").expect("write");
    let job = fleet.run("publish", Some(&staging)).await;
    assert_eq!(job["state"], "failed", "node1 is down: {job}");
    let site = fleet.api("GET", "/api/sites/www", None).await;
    assert_eq!(version(site.clone()), 2);
    // Version 2's snapshot; the first publish's (a full copy, from nothing) is not kept.
    assert_eq!(site["snapshots"].as_array().map(Vec::len), Some(1), "{site}");

    // Back: it is brought up to date with the snapshot of version 2 (a few hundred bytes).
    let back = fleet.start_node(1).await;
    fleet.nodes[1] = Some(back);
    let expected = tree(&staging);
    let mut caught_up = false;
    for _ in 0..500 {
        if fleet.node_root(1).join("www/live").exists() && fleet.live(1) == expected {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(caught_up, "node1 was not brought up to date");
    let jobs = fleet.api("GET", "/api/jobs", None).await;
    let synchronise = jobs
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["kind"] == "synchronise")
        .cloned()
        .expect("a catch-up job");
    let sent = synchronise["nodes"][0]["bytes"].as_u64().expect("bytes");
    println!("catch-up of one missed version sent {sent} bytes (the site is 2,000,000 bytes)");
    assert!(sent < 20_000, "the snapshot, not a full copy: {synchronise}");

    // Rollback to 1, then a publish: the new version is 3, never a second 2.
    assert_eq!(fleet.run("rollback", None).await["state"], "committed");
    assert_eq!(version(fleet.api("GET", "/api/sites/www", None).await), 1);
    std::fs::write(staging.join("d/f4.bin"), b"third").expect("write");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");
    assert_eq!(version(fleet.api("GET", "/api/sites/www", None).await), 3);
    for index in 0..2 {
        assert_eq!(fleet.live(index), tree(&staging));
    }

    // A checkpoint covers the snapshots before it.
    fleet
        .api("POST", "/api/checkpoints", Some(serde_json::json!({ "site": "www" })))
        .await;
    let site = fleet.api("GET", "/api/sites/www", None).await;
    assert_eq!(site["snapshots"].as_array().map(Vec::len), Some(0), "{site}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_site_takes_it_off_every_node_and_the_mover_stops_hosting_it() {
    let fleet = Fleet::new(2, None).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 10, "gone");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");
    let job = fleet.run("remove", None).await;
    assert_eq!(job["state"], "committed", "{job}");
    for index in 0..2 {
        assert!(!fleet.node_root(index).join("www").exists(), "node {index}");
    }
    let (status, _) = fleet.api_status("GET", "/api/sites/www", serde_json::json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nodes registering again are not sent the site back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!fleet.node_root(0).join("www").exists());
}
