//! Publish → fresh edges, as processes: the mover publishes to three nodes served by `tern serve`, three
//! edges cache them for an hour, and after every commit (a publish, a rollback) the mover hands the changed
//! URLs to the sync service — or to the edges themselves — which purges them on every edge and fetches
//! them again. Every edge serves the new bytes within a second of the commit, and the nodes see one
//! prefetch per edge for each changed object.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tern_edge::testsuite::{client, send};
use tern_wire::mover::{FreshState, Job};

use crate::mover::wait_for_nodes;
use crate::{free_addr, spawn, spawn_node, tern, write};

const HOST: &str = "www.test";

/// A proxy in front of a node's `tern serve` that counts the requests for each path: what the origin sees.
struct CountingProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl CountingProxy {
    async fn start(origin: SocketAddr) -> CountingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counted = seen.clone();
        tokio::spawn(async move {
            let upstream = client();
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, upstream) = (counted.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                        let (seen, upstream) = (seen.clone(), upstream.clone());
                        async move {
                            *seen
                                .lock()
                                .expect("counts")
                                .entry(request.uri().path().to_string())
                                .or_default() += 1;
                            let answer = forward(&upstream, origin, request).await.unwrap_or_else(|error| {
                                let mut failed = hyper::Response::new(Full::new(Bytes::from(error)));
                                *failed.status_mut() = http::StatusCode::BAD_GATEWAY;
                                failed
                            });
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CountingProxy { addr, seen }
    }

    /// Requests seen for each path since the last call.
    fn take(&self) -> HashMap<String, usize> {
        std::mem::take(&mut *self.seen.lock().expect("counts"))
    }
}

/// Sends `request` on to `origin`; its answer, read whole.
async fn forward(
    upstream: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    origin: SocketAddr,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, String> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut forwarded = hyper::Request::builder()
        .method(parts.method)
        .uri(format!("http://{origin}{target}"));
    for (name, value) in &parts.headers {
        forwarded = forwarded.header(name, value);
    }
    let forwarded = forwarded.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = upstream.request(forwarded).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(hyper::Response::from_parts(parts, Full::new(body)))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// GET `path` of the site from an edge.
async fn get(edge: SocketAddr, path: &str) -> (u16, Bytes) {
    let got = send(&client(), "GET", &format!("http://{edge}{path}"), &[("host", HOST)]).await;
    (got.status.as_u16(), got.body)
}

/// Runs `tern ARGS` to its end (without blocking the runtime: the proxies run meanwhile); its stdout.
async fn run(args: &[String]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .env("TERN_LOG", "warn")
        .output()
        .await
        .expect("run tern");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "tern {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs a job command while polling every edge for `expected` (path, body) pairs; returns its stdout and
/// when (ms since the epoch) every edge first served all of them.
async fn run_until_fresh(args: Vec<String>, edges: &[SocketAddr], expected: &[(&str, &[u8])]) -> (String, u64) {
    let command = tokio::spawn(async move { run(&args).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    let fresh_at = loop {
        let mut all = true;
        for edge in edges {
            for (path, body) in expected {
                all &= &get(*edge, path).await.1[..] == *body;
            }
        }
        if all {
            break now_ms();
        }
        assert!(Instant::now() < deadline, "the edges never served {expected:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let stdout = command.await.expect("command");
    (stdout, fresh_at)
}

/// The job a `tern publish` or `tern rollback` printed (`job ID` on its first line), as the mover shows it.
async fn job_of(mover: &str, stdout: &str) -> Job {
    let id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("job "))
        .expect("job id printed");
    let got = send(&client(), "GET", &format!("{mover}/api/jobs/{id}"), &[]).await;
    serde_json::from_slice(&got.body).expect("job")
}

/// Every proxy saw each of `paths` exactly `times` times since the last look.
fn assert_seen(proxies: &[CountingProxy], paths: &[(&str, usize)], when: &str) {
    for (n, proxy) in proxies.iter().enumerate() {
        let seen = proxy.take();
        for (path, times) in paths {
            assert_eq!(
                seen.get(*path).copied().unwrap_or(0),
                *times,
                "{when}: node {n} saw {path} {} times, not {times}: {seen:?}",
                seen.get(*path).copied().unwrap_or(0)
            );
        }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn path_of(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().expect("utf-8").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_edge_serves_a_commit_within_a_second_and_the_nodes_see_one_prefetch_per_edge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| path_of(dir.path(), name);
    for key in ["sync.key", "purge.key"] {
        let keygen = tern().args(["keygen", &path(key)]).output().expect("keygen");
        assert!(keygen.status.success());
    }
    let mover_addr = free_addr();
    let _mover = spawn(
        &["mover", "--listen", &mover_addr.to_string(), "--data", &path("mover")],
        mover_addr,
    );
    let mover = format!("http://{mover_addr}");
    let mut nodes = Vec::new();
    for n in 0..3 {
        let name = format!("node{n}");
        nodes.push(spawn_node(&mover, &path(&name), &name, &path("mover/mover.pub"), &[]).0);
    }
    wait_for_nodes(&mover, 3).await;

    // Version 1, published before any cache is named: the nodes' `live` trees exist for `tern serve`.
    let staging = dir.path().join("staging");
    write(&staging, "index.html", b"home v1");
    write(&staging, "page.html", b"page v1");
    write(&staging, "docs/index.html", b"docs v1");
    write(&staging, "old.html", b"old v1");
    write(&staging, "css/site.css", b"body {}");
    let publish = |extra: &[&str]| {
        let mut args = strings(&["publish", "--mover", &mover, "--site", "www", "--staging"]);
        args.push(staging.to_str().expect("utf-8").to_string());
        args.extend(strings(extra));
        args
    };
    run(&publish(&[])).await;

    // Each node served by `tern serve` with an hour's max-age, behind a counting proxy; an edge in front
    // of each; the sync service drives the three edges.
    let mut servers = Vec::new();
    let mut proxies = Vec::new();
    for n in 0..3 {
        let addr = free_addr();
        servers.push(spawn(
            &[
                "serve",
                &path(&format!("node{n}/www/live")),
                "--listen",
                &addr.to_string(),
                "--cache-control",
                "public, max-age=3600",
            ],
            addr,
        ));
        proxies.push(CountingProxy::start(addr).await);
    }
    let edges: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let (sync_listen, sync_admin) = (free_addr(), free_addr());
    let mut sync_args = vec![
        "sync".to_string(),
        "--listen".into(),
        sync_listen.to_string(),
        "--admin".into(),
        sync_admin.to_string(),
        "--key".into(),
        path("sync.key"),
        "--site".into(),
        format!("www={HOST}"),
        "--cache-key".into(),
        path("purge.key"),
        "--data".into(),
        path("sync"),
    ];
    for edge in &edges {
        sync_args.push("--cache".into());
        sync_args.push(format!("http://{edge}"));
    }
    let sync_args: Vec<&str> = sync_args.iter().map(String::as_str).collect();
    let _sync = spawn(&sync_args, sync_admin);
    let sync_url = format!("http://{sync_admin}");
    let mut running_edges = Vec::new();
    for (n, edge) in edges.iter().enumerate() {
        running_edges.push(spawn(
            &[
                "edge",
                "--listen",
                &edge.to_string(),
                "--origin",
                &format!("http://{}", proxies[n].addr),
                "--purge-key",
                &path("purge.key"),
                "--sync-url",
                &sync_url,
                "--cache-dir",
                &path(&format!("edge{n}")),
            ],
            *edge,
        ));
    }

    // Every edge caches version 1 (for an hour).
    let pages = [
        "/",
        "/index.html",
        "/page.html",
        "/docs/",
        "/docs/index.html",
        "/old.html",
        "/css/site.css",
    ];
    for _ in 0..2 {
        for edge in &edges {
            for page in pages {
                assert_eq!(get(*edge, page).await.0, 200, "{page}");
            }
        }
    }
    assert_eq!(&get(edges[0], "/page.html").await.1[..], b"page v1");
    let warm: Vec<(&str, usize)> = pages.iter().map(|page| (*page, 1)).collect();
    assert_eq!(warm.len(), 7);
    assert_seen(&proxies, &warm, "warming up");
    // Links with a query are objects of their own, cached for the hour too.
    let queried = [
        "/?utm=1",
        "/index.html?v=1",
        "/docs/?x=1",
        "/docs/index.html?v=1",
        "/old.html?v=1",
    ];
    for edge in &edges {
        for page in queried {
            assert_eq!(get(*edge, page).await.0, 200, "{page}");
        }
    }
    proxies.iter().for_each(|proxy| drop(proxy.take()));

    // Version 2 names the sync service; the publish waits until the edges acknowledged it.
    write(&staging, "index.html", b"home v2");
    write(&staging, "page.html", b"page v2");
    write(&staging, "docs/index.html", b"docs v2");
    write(&staging, "new.html", b"new v2");
    std::fs::remove_file(staging.join("old.html")).expect("rm");
    let sync_key = path("sync.key");
    let args = publish(&[
        "--public-url",
        &format!("http://{HOST}"),
        "--sync-url",
        &sync_url,
        "--sync-key",
        &sync_key,
        "--wait-fresh",
        "--fresh-timeout",
        "30s",
    ]);
    let v2: [(&str, &[u8]); 3] = [("/page.html", b"page v2"), ("/", b"home v2"), ("/docs/", b"docs v2")];
    let (stdout, fresh_at) = run_until_fresh(args, &edges, &v2).await;
    assert!(stdout.contains("edges fresh"), "{stdout}");
    // --wait-fresh returned: every edge serves every changed URL now, without asking the nodes.
    for edge in &edges {
        assert_eq!(&get(*edge, "/index.html").await.1[..], b"home v2");
        assert_eq!(&get(*edge, "/docs/index.html").await.1[..], b"docs v2");
        assert_eq!(&get(*edge, "/new.html").await.1[..], b"new v2");
        assert_eq!(&get(*edge, "/css/site.css").await.1[..], b"body {}");
    }
    let job = job_of(&mover, &stdout).await;
    let freshness = job.freshness.expect("the job shows the caches' acknowledgement");
    assert_eq!(freshness.state, FreshState::Fresh);
    assert_eq!(freshness.caches.len(), 3);
    assert!(freshness.caches.iter().all(|cache| cache.acknowledged));
    let acknowledged_ms = freshness.fresh_ms.expect("fresh_ms") - freshness.since_ms;
    let served_ms = fresh_at.saturating_sub(freshness.since_ms);
    println!(
        "publish: commit -> every edge serves the new bytes in {served_ms} ms; acknowledged after {acknowledged_ms} ms"
    );
    assert!(served_ms <= 1000, "edges fresh {served_ms} ms after the commit");
    // One prefetch per edge of each changed object, nothing for what did not change or is only purged.
    assert_seen(
        &proxies,
        &[
            ("/page.html", 1),
            ("/", 1),
            ("/index.html", 1),
            ("/docs/", 1),
            ("/docs/index.html", 1),
            ("/new.html", 1),
            ("/docs", 0),
            ("/css/site.css", 0),
        ],
        "after the publish",
    );
    for edge in &edges {
        assert_eq!(get(*edge, "/old.html").await.0, 404, "what is gone is purged");
    }
    // A changed (or removed) file's URL is purged with any query: no edge serves version 1 under a link
    // with `?utm=` or `?v=`.
    for edge in &edges {
        for (page, body) in [
            ("/?utm=1", &b"home v2"[..]),
            ("/index.html?v=1", b"home v2"),
            ("/docs/?x=1", b"docs v2"),
            ("/docs/index.html?v=1", b"docs v2"),
        ] {
            assert_eq!(&get(*edge, page).await.1[..], body, "{page} on {edge}");
        }
        assert_eq!(
            get(*edge, "/old.html?v=1").await.0,
            404,
            "a removed file's query variant"
        );
    }
    proxies.iter().for_each(|proxy| drop(proxy.take()));

    // A rollback purges what it switched back, and the edges serve version 1 again.
    let mut args = strings(&["rollback", "--mover", &mover, "--site", "www", "--wait-fresh"]);
    args.extend(strings(&["--fresh-timeout", "30s"]));
    // (Only objects the edges hold are polled: a poll of one they do not hold would reach the nodes.)
    let v1: [(&str, &[u8]); 3] = [("/page.html", b"page v1"), ("/", b"home v1"), ("/docs/", b"docs v1")];
    let (stdout, fresh_at) = run_until_fresh(args, &edges, &v1).await;
    let freshness = job_of(&mover, &stdout).await.freshness.expect("freshness");
    assert_eq!(freshness.state, FreshState::Fresh);
    let served_ms = fresh_at.saturating_sub(freshness.since_ms);
    println!(
        "rollback: commit -> every edge serves the old bytes in {served_ms} ms; acknowledged after {} ms",
        freshness.fresh_ms.unwrap_or(0).saturating_sub(freshness.since_ms)
    );
    assert!(served_ms <= 1000, "edges back {served_ms} ms after the rollback");
    for edge in &edges {
        assert_eq!(&get(*edge, "/index.html").await.1[..], b"home v1");
        assert_eq!(&get(*edge, "/docs/index.html").await.1[..], b"docs v1");
    }
    assert_seen(
        &proxies,
        &[
            ("/page.html", 1),
            ("/", 1),
            ("/index.html", 1),
            ("/docs/", 1),
            ("/docs/index.html", 1),
            ("/old.html", 1),
            ("/new.html", 0),
            ("/css/site.css", 0),
        ],
        "after the rollback",
    );
    for edge in &edges {
        assert_eq!(
            &get(*edge, "/old.html").await.1[..],
            b"old v1",
            "what the rollback brought back"
        );
        assert_eq!(
            get(*edge, "/new.html").await.0,
            404,
            "what the rollback took away is purged"
        );
    }
    proxies.iter().for_each(|proxy| drop(proxy.take()));

    // The edges named directly: the mover purges and prefetches them itself.
    for edge in &edges {
        assert_eq!(&get(*edge, "/page.html?utm=1").await.1[..], b"page v1");
    }
    proxies.iter().for_each(|proxy| drop(proxy.take()));
    write(&staging, "page.html", b"page v3");
    let edge_key = path("purge.key");
    let mut direct = strings(&["--public-url", &format!("http://{HOST}"), "--edge-key", &edge_key]);
    for edge in &edges {
        direct.push("--edge".into());
        direct.push(format!("http://{edge}"));
    }
    direct.push("--wait-fresh".into());
    let direct: Vec<&str> = direct.iter().map(String::as_str).collect();
    let stdout = run(&publish(&direct)).await;
    for edge in &edges {
        assert_eq!(&get(*edge, "/page.html").await.1[..], b"page v3");
    }
    let freshness = job_of(&mover, &stdout).await.freshness.expect("freshness");
    assert_eq!(
        (freshness.state, freshness.via.as_str()),
        (FreshState::Fresh, "3 edges")
    );
    // Staging still holds version 2's other changes, which the rollback had taken back.
    assert_seen(
        &proxies,
        &[("/page.html", 1), ("/", 1), ("/docs", 0), ("/css/site.css", 0)],
        "after a publish to the edges directly",
    );
    for edge in &edges {
        assert_eq!(
            &get(*edge, "/page.html?utm=1").await.1[..],
            b"page v3",
            "a query variant, purged directly"
        );
    }
}
