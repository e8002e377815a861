//! A mover process that dies in the middle of a commit, and the mover started again on its data: the
//! decision to commit is written ahead, so the job is finished, never undone. The dying mover is this test
//! binary run again as a child process ([`mover_process`]) with `TERN_FAULT` set: it exits at the fault
//! point without writing anything more, as after `kill -9`.

use std::path::Path;
use std::time::Duration;

use tern_mover::fault::{FAULT_EXIT_STATUS, FAULT_VARIABLE, Fault};
use tern_mover::service::{MoverConfig, start};

use crate::jobs::{Fleet, tree, write_site};

/// Where the child mover keeps its data.
const DATA_VARIABLE: &str = "TERN_IT_MOVER_DATA";
/// Where it listens.
const LISTEN_VARIABLE: &str = "TERN_IT_MOVER_LISTEN";
/// Files in the site; each publish changes one.
const FILES: usize = 2000;
/// Bytes of the file the third publish adds, which a node that holds it prepared is not sent again.
const THIRD_LARGE: usize = 256 * 1024;

/// `len` bytes that zstd cannot shrink (xorshift).
fn incompressible(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn config(data: &Path, listen: std::net::SocketAddr) -> MoverConfig {
    MoverConfig {
        quorum: Some(2),
        delivery_timeout: Duration::from_secs(10),
        checkpoints_kept: 3,
        ..MoverConfig::new(listen, data)
    }
}

/// The mover process the crash tests start and stop; run by itself it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the dying mover of the crash tests in this module, started by them as a child process"]
async fn mover_process() {
    let (Ok(data), Ok(listen)) = (std::env::var(DATA_VARIABLE), std::env::var(LISTEN_VARIABLE)) else {
        return;
    };
    let listen = listen.parse().expect("listen address");
    let _running = start(config(Path::new(&data), listen)).await.expect("mover");
    // The fault point ends the process; a mover still alive after this never reached it.
    tokio::time::sleep(Duration::from_secs(120)).await;
    panic!("the fault point was never reached");
}

/// Publishes two versions through an in-process mover with `--quorum 2` and three nodes, stops that mover,
/// then runs a third publish (one file changed) through a child mover that exits at `fault`. Returns the
/// fleet (mover stopped), the third publish's job id, and the staging directory.
async fn publish_until(fault: Fault) -> (Fleet, String, std::path::PathBuf) {
    let mut fleet = Fleet::new(3, Some(2)).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, FILES, "first");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");
    std::fs::write(staging.join("s1/f1.html"), "second").expect("write");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");
    fleet.mover.take().expect("mover").shutdown().await;

    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["recovery::mover_process", "--exact", "--ignored", "--nocapture"])
        .env(FAULT_VARIABLE, fault.word())
        .env(DATA_VARIABLE, fleet.area.path().join("mover"))
        .env(LISTEN_VARIABLE, fleet.mover_addr.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("child mover");
    let mut answered = false;
    for _ in 0..500 {
        let request = http::Request::get(format!("http://{}/api/nodes", fleet.mover_addr))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        if fleet.client.request(request).await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered, "the child mover never answered");
    std::fs::write(staging.join("s2/f2.html"), "third").expect("write");
    std::fs::write(staging.join("large.bin"), incompressible(THIRD_LARGE)).expect("write");
    let body = serde_json::json!({ "kind": "publish", "site": "www", "staging": staging.display().to_string() });
    let created = fleet.api("POST", "/api/jobs", Some(body)).await;
    let id = created["id"].as_str().expect("job id").to_string();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("child exit");
    assert_eq!(
        status.code(),
        Some(FAULT_EXIT_STATUS),
        "the child mover stopped at its fault point"
    );
    (fleet, id, staging)
}

/// The jobs of `kind` the mover holds, as JSON.
async fn jobs_of(fleet: &Fleet, kind: &str) -> Vec<serde_json::Value> {
    let jobs = fleet.api("GET", "/api/jobs", None).await;
    jobs.as_array()
        .expect("jobs")
        .iter()
        .filter(|job| job["spec"]["kind"] == kind || job["kind"] == kind)
        .cloned()
        .collect()
}

/// Bytes sent for a job, over its nodes.
fn bytes_of(job: &serde_json::Value) -> u64 {
    job["nodes"]
        .as_array()
        .map(|nodes| nodes.iter().map(|n| n["bytes"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_killed_just_after_the_nodes_commit_finishes_the_publish_when_it_starts_again() {
    let (mut fleet, id, staging) = publish_until(Fault::AfterCommit).await;
    let third = tree(&staging);
    for index in 0..3 {
        assert_eq!(fleet.live(index), third, "node {index} switched before the mover died");
    }
    fleet.start_mover(Some(2)).await;
    let job = fleet.wait_job(&id).await;
    assert_eq!(
        job["state"], "committed",
        "the decided publish is finished, not failed: {job}"
    );
    let sites = fleet.api("GET", "/api/sites", None).await;
    assert_eq!(sites[0]["sequence"], 3, "the site's record follows the nodes: {sites}");
    // Several registration rounds: a node the mover thought behind would be sent a catch-up by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for index in 0..3 {
        assert_eq!(fleet.live(index), third, "node {index} stays on version 3");
    }
    let catch_ups: Vec<_> = [jobs_of(&fleet, "synchronise").await, jobs_of(&fleet, "replicate").await].concat();
    assert!(
        catch_ups.is_empty(),
        "no node was sent anything after the restart: {catch_ups:?}"
    );
    let job = fleet.wait_job(&id).await;
    let states: Vec<&str> = job["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        states, ["committed"; 3],
        "nodes that registered holding version 3 show committed: {job}"
    );
    // The next publish is a delta from version 3, as after any publish.
    std::fs::write(staging.join("s3/f3.html"), "fourth").expect("write");
    let next = fleet.run("publish", Some(&staging)).await;
    assert_eq!(next["state"], "committed", "{next}");
    assert!(bytes_of(&next) < 30_000, "a delta, not a full copy: {next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mover_killed_after_deciding_to_commit_brings_the_nodes_up_with_the_commit_alone() {
    let (mut fleet, id, staging) = publish_until(Fault::AfterCommitDecision).await;
    let third = tree(&staging);
    assert_ne!(fleet.live(0), third, "no node was told to commit before the mover died");
    fleet.start_mover(Some(2)).await;
    let job = fleet.wait_job(&id).await;
    assert_eq!(
        job["state"], "committed",
        "the decided publish is finished, not failed: {job}"
    );
    let sites = fleet.api("GET", "/api/sites", None).await;
    assert_eq!(sites[0]["sequence"], 3, "{sites}");
    for _ in 0..1000 {
        if (0..3).all(|index| fleet.live(index) == third) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for index in 0..3 {
        assert_eq!(fleet.live(index), third, "node {index} was brought to version 3");
    }
    let catch_ups = jobs_of(&fleet, "synchronise").await;
    assert!(!catch_ups.is_empty(), "the nodes were caught up");
    for catch_up in &catch_ups {
        let catch_up = fleet.wait_job(catch_up["id"].as_str().expect("id")).await;
        assert_eq!(catch_up["state"], "committed", "{catch_up}");
        // Every node prepared version 3 before the mover died, and says so when it registers.
        assert!(
            bytes_of(&catch_up) < 4_000,
            "the commit alone, not the {THIRD_LARGE} bytes the nodes hold prepared: {catch_up}"
        );
    }
    assert!(jobs_of(&fleet, "replicate").await.is_empty());
}
