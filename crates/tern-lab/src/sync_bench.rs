//! `tern-lab bench sync`: how fast active synchronisation makes every edge fresh. An origin host (with the
//! CP agent), a sync host and N edge hosts in the lab; for each of M changes, the time from the origin's
//! file write returning to every edge serving the new bytes, and the same for a purge through the sync
//! service's API. Printed beside the staleness a TTL-based setup would show, and the origin requests each
//! change costs.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::topology::{HostProcess, LabSpec};

const SITE_HOST: &str = "www.bench";
const FILES: usize = 20;
/// Pause between polls of the edges that are not fresh yet: often enough for millisecond resolution, rarely
/// enough not to load the two cores that run the whole lab.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// Options of the benchmark.
#[derive(Debug, Clone)]
pub struct SyncBench {
    /// Edge hosts.
    pub edges: usize,
    /// Changes (and purges) measured.
    pub changes: usize,
    /// `max-age` the origin sends, seconds (for the TTL comparison).
    pub ttl: u64,
    /// The tern binary.
    pub tern: Option<PathBuf>,
    /// Results directory.
    pub out: PathBuf,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Runs the benchmark and prints its figures.
pub fn run(options: &SyncBench) -> Result<()> {
    let tern = crate::bench::tern_binary(options.tern.as_deref())?;
    let tern = tern.to_str().context("tern path is not UTF-8")?.to_string();
    let work = std::env::temp_dir().join(format!("tern-sync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run_in(options, &tern, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run_in(options: &SyncBench, tern: &str, work: &Path) -> Result<()> {
    let mut spec = LabSpec::new().segment("a").host("origin", "a").host("sync", "a");
    let edge_names: Vec<String> = (1..=options.edges).map(|n| format!("e{n}")).collect();
    for name in &edge_names {
        spec = spec.host(name, "a");
    }
    let lab = spec.build()?;
    println!(
        "sync benchmark: {} edges, {} changes, lab mode {:?}",
        options.edges,
        options.changes,
        lab.mode()
    );

    let site = work.join("site");
    std::fs::create_dir_all(&site)?;
    for n in 0..FILES {
        std::fs::write(site.join(format!("f{n}.html")), format!("initial {n}"))?;
    }
    let path = |name: &str| work.join(name).to_str().unwrap_or_default().to_string();
    for key in ["agent.key", "purge.key"] {
        let status = std::process::Command::new(tern).args(["keygen", &path(key)]).output()?;
        if !status.status.success() {
            bail!("tern keygen failed");
        }
    }
    let agent_token = read_token(&work.join("agent.key"))?;
    let origin = lab.host("origin").addr;
    let sync = lab.host("sync").addr;
    let mut processes: Vec<HostProcess> = Vec::new();
    let log = ["--log", "warn"];
    processes.push(
        lab.spawn(
            "origin",
            tern,
            &[
                &[
                    "serve",
                    &path("site"),
                    "--listen",
                    &format!("{origin}:9000"),
                    "--cache-control",
                    &format!("max-age={}", options.ttl),
                    "--admin",
                    &format!("{origin}:9100"),
                ][..],
                &log[..],
            ]
            .concat(),
        )?,
    );
    lab.wait_listening("origin", 9000, Duration::from_secs(20))?;
    for name in &edge_names {
        let addr = lab.host(name).addr;
        processes.push(
            lab.spawn(
                name,
                tern,
                &[
                    &[
                        "edge",
                        "--listen",
                        &format!("{addr}:8080"),
                        "--origin",
                        &format!("http://{origin}:9000"),
                        "--purge-key",
                        &path("purge.key"),
                    ][..],
                    &log[..],
                ]
                .concat(),
            )?,
        );
    }
    let mut sync_args: Vec<String> = [
        "sync",
        "--listen",
        &format!("{sync}:7070"),
        "--admin",
        &format!("{sync}:7071"),
        "--key",
        &path("agent.key"),
        "--cache-key",
        &path("purge.key"),
        "--data",
        &path("sync-data"),
        "--site",
        &format!("www={SITE_HOST}"),
        "--log",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for name in &edge_names {
        sync_args.push("--cache".into());
        sync_args.push(format!("http://{}:8080", lab.host(name).addr));
    }
    let sync_refs: Vec<&str> = sync_args.iter().map(String::as_str).collect();
    processes.push(lab.spawn("sync", tern, &sync_refs)?);
    lab.wait_listening("sync", 7070, Duration::from_secs(20))?;
    lab.wait_listening("sync", 7071, Duration::from_secs(20))?;
    for name in &edge_names {
        lab.wait_listening(name, 8080, Duration::from_secs(20))?;
    }
    processes.push(
        lab.spawn(
            "origin",
            tern,
            &[
                &[
                    "agent",
                    "--dir",
                    &path("site"),
                    "--site",
                    "www",
                    "--base-url",
                    &format!("http://{SITE_HOST}"),
                    "--sync",
                    &format!("{sync}:7070"),
                    "--key",
                    &path("agent.key"),
                    "--state-dir",
                    &path("agent-state"),
                    "--admin",
                    &format!("{origin}:9101"),
                ][..],
                &log[..],
            ]
            .concat(),
        )?,
    );
    lab.wait_listening("origin", 9101, Duration::from_secs(20))?;

    let edges: Vec<SocketAddr> = edge_names
        .iter()
        .map(|n| SocketAddr::from((lab.host(n).addr, 8080)))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let sync_admin = SocketAddr::from((sync, 7071));
        // The agent's first scan reports every file; wait until all edges hold them.
        wait_caught_up(&client, sync_admin, FILES as u64).await?;
        let origin_admin = SocketAddr::from((origin, 9100));
        let before = origin_requests(&client, origin_admin).await?;
        let mut writes = Vec::new();
        for change in 0..options.changes {
            let file = format!("f{}.html", change % FILES);
            let marker = format!("change {change} at {:?}", Instant::now());
            // Publish as deployment tools do: write a hidden temp file, rename it into place (one event).
            let temp = site.join(format!(".{file}.tmp"));
            std::fs::write(&temp, &marker)?;
            std::fs::rename(&temp, site.join(&file))?;
            let started = Instant::now();
            poll_all(&client, &edges, &format!("/{file}"), |body, _| {
                body.windows(marker.len()).any(|w| w == marker.as_bytes())
            })
            .await?;
            writes.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        wait_caught_up(&client, sync_admin, 0).await?;
        let origin_per_change =
            (origin_requests(&client, origin_admin).await? - before) as f64 / options.changes as f64;

        let mut purges = Vec::new();
        for change in 0..options.changes {
            let file = format!("/f{}.html", change % FILES);
            // Make sure every edge holds it, then purge through the sync service.
            warm(&client, &edges, &file).await?;
            let started = Instant::now();
            purge(&client, sync_admin, &agent_token, &format!("http://{SITE_HOST}{file}")).await?;
            poll_all(&client, &edges, &file, |_, status| !status.contains("; hit")).await?;
            purges.push(started.elapsed());
        }
        let summary = summarize(options, &mut writes, &mut purges, origin_per_change);
        println!("\n{summary}");
        std::fs::create_dir_all(&options.out)?;
        std::fs::write(options.out.join("summary.txt"), &summary)?;
        let mut csv = String::from("kind,index,milliseconds\n");
        for (index, d) in writes.iter().enumerate() {
            let _ = writeln!(csv, "write,{index},{:.3}", d.as_secs_f64() * 1000.0);
        }
        for (index, d) in purges.iter().enumerate() {
            let _ = writeln!(csv, "purge,{index},{:.3}", d.as_secs_f64() * 1000.0);
        }
        std::fs::write(options.out.join("sync.csv"), csv)?;
        println!("results: {}", options.out.display());
        anyhow::Ok(())
    })?;
    drop(processes);
    drop(lab);
    Ok(())
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

fn summarize(options: &SyncBench, writes: &mut [Duration], purges: &mut [Duration], origin_per_change: f64) -> String {
    writes.sort();
    purges.sort();
    let mut out = String::new();
    let _ = writeln!(out, "{} edges, {} changes", options.edges, options.changes);
    let _ = writeln!(
        out,
        "write -> every edge serving the new bytes:  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(writes, 0.5),
        percentile(writes, 0.99),
        percentile(writes, 1.0)
    );
    let _ = writeln!(
        out,
        "API purge -> every edge purged:            p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(purges, 0.5),
        percentile(purges, 0.99),
        percentile(purges, 1.0)
    );
    let _ = writeln!(
        out,
        "a TTL-based setup with max-age={} would serve stale content for {:.0} s on average after a change",
        options.ttl,
        options.ttl as f64 / 2.0
    );
    let _ = writeln!(
        out,
        "origin requests per change: {:.2} ({:.2} per edge: the edges' prefetches)",
        origin_per_change,
        origin_per_change / options.edges as f64
    );
    out
}

/// Polls every edge until `fresh` holds for its answer.
async fn poll_all(
    client: &HttpClient,
    edges: &[SocketAddr],
    path: &str,
    fresh: impl Fn(&[u8], &str) -> bool + Clone,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut waiting: Vec<SocketAddr> = edges.to_vec();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        let answers = futures_join(client, &waiting, path).await;
        for (edge, answer) in waiting.iter().zip(answers) {
            match answer {
                Ok((body, status)) if fresh(&body, &status) => {}
                _ => still.push(*edge),
            }
        }
        waiting = still;
        if Instant::now() > deadline {
            bail!("{} edges never became fresh for {path}", waiting.len());
        }
        if !waiting.is_empty() {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    Ok(())
}

async fn futures_join(client: &HttpClient, edges: &[SocketAddr], path: &str) -> Vec<Result<(Bytes, String)>> {
    let mut tasks = Vec::new();
    for edge in edges {
        let client = client.clone();
        let url = format!("http://{edge}{path}");
        tasks.push(tokio::spawn(async move {
            // only-if-cached: a poll never makes the edge go to the origin, so it cannot refill an object
            // between a purge and its prefetch, nor add to the origin's count.
            let request = http::Request::get(&url)
                .header("host", SITE_HOST)
                .header("cache-control", "only-if-cached")
                .body(Full::new(Bytes::new()))?;
            let response = client.request(request).await?;
            let status = response
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((body, status))
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.map_err(anyhow::Error::from).and_then(|r| r));
    }
    out
}

/// Fetches `path` from every edge normally (filling the caches).
async fn warm(client: &HttpClient, edges: &[SocketAddr], path: &str) -> Result<()> {
    for edge in edges {
        let request = http::Request::get(format!("http://{edge}{path}"))
            .header("host", SITE_HOST)
            .body(Full::new(Bytes::new()))?;
        let _ = client.request(request).await?.into_body().collect().await?;
    }
    Ok(())
}

async fn get_text(client: &HttpClient, url: &str) -> Result<String> {
    let response = client
        .request(http::Request::get(url).body(Full::new(Bytes::new()))?)
        .await?;
    Ok(String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()).to_string())
}

async fn wait_caught_up(client: &HttpClient, sync_admin: SocketAddr, min_log: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&get_text(client, &format!("http://{sync_admin}/status")).await?)?;
        let log = status["log_length"].as_u64().unwrap_or(0);
        if status["caught_up"].as_bool() == Some(true) && log >= min_log {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the sync service did not catch up: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn origin_requests(client: &HttpClient, admin: SocketAddr) -> Result<u64> {
    let text = get_text(client, &format!("http://{admin}/metrics")).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("tern_origin_requests_total"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

async fn purge(client: &HttpClient, sync_admin: SocketAddr, token: &str, url: &str) -> Result<()> {
    let body = serde_json::json!({ "urls": [url] }).to_string();
    let request = http::Request::post(format!("http://{sync_admin}/purge"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body)))?;
    let response = client.request(request).await?;
    if !response.status().is_success() {
        bail!("sync purge answered {}", response.status());
    }
    let _ = response.into_body().collect().await?;
    Ok(())
}

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .context("empty key file")
}
