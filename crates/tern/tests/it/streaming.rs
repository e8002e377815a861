//! A 200 MB object streams through the edge with bounded memory: measured on the edge process itself.

use std::time::Duration;

use http_body_util::BodyExt;
use tern_edge::testsuite::client;

use crate::{spawn_edge, spawn_origin};

const OBJECT: u64 = 200 * 1024 * 1024;
const LIMIT: u64 = 64 * 1024 * 1024;

/// `VmRSS` or `VmHWM` of a process, in bytes.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field");
    let kib: u64 = line.split_whitespace().nth(1).expect("value").parse().expect("number");
    kib * 1024
}

async fn stream_through(url: &str) -> (u64, String) {
    let response = client().get(url.parse().expect("uri")).await.expect("response");
    let status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut body = response.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            total += data.len() as u64;
        }
    }
    (total, status)
}

#[tokio::test]
async fn two_hundred_megabytes_stream_with_bounded_memory() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("skipped: needs /proc to read the edge's memory");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("mkdir");
    let file = std::fs::File::create(site.join("big.bin")).expect("create");
    file.set_len(OBJECT).expect("sparse 200 MB file");
    let (_origin, origin_addr) = spawn_origin(&site, &["--cache-control", "max-age=600"]);
    let cache = dir.path().join("cache");
    let (edge, edge_addr) = spawn_edge(
        origin_addr,
        &["--cache-dir", cache.to_str().expect("utf-8"), "--cache-size", "1G"],
    );
    let pid = edge.0.id();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = memory(pid, "VmRSS");
    let url = format!("http://{edge_addr}/big.bin");

    let (received, status) = stream_through(&url).await;
    assert_eq!(received, OBJECT);
    assert!(status.contains("fwd=miss"), "{status}");
    let (received, status) = stream_through(&url).await;
    assert_eq!(received, OBJECT);
    assert!(
        status.contains("hit"),
        "the 200 MB object is served from the disk tier: {status}"
    );

    let peak = memory(pid, "VmHWM");
    let growth = peak.saturating_sub(baseline);
    println!(
        "edge memory: baseline {} MiB, peak {} MiB, growth {} MiB",
        baseline >> 20,
        peak >> 20,
        growth >> 20
    );
    assert!(
        growth < LIMIT,
        "edge memory grew by {} MiB streaming 200 MB",
        growth >> 20
    );
}
