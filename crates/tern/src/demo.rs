//! `tern demo`: an origin serving a sample site and two edges in front of it, on this machine, with the
//! commands to try printed. `--smoke` checks that it works and exits (used by the tests).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tern_edge::{EdgeConfig, RunningEdge};
use tern_origin::{CacheRule, OriginConfig, RunningOrigin};
use tokio_util::sync::CancellationToken;

/// Arguments of `tern demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Directory for the sample site, caches and key [default: a new directory under the system temp dir,
    /// removed on exit].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Check that the demo works (miss then hit on each edge, purge) and exit instead of running.
    #[arg(long)]
    smoke: bool,
}

/// Host name of the demo site (send it as `Host` to the edges).
const DEMO_HOST: &str = "demo.tern";
const ORIGIN_PORT: u16 = 9000;
const MOVER_PORT: u16 = 7000;
const EDGE_PORTS: [u16; 2] = [8080, 8081];
const ADMIN_PORTS: [u16; 2] = [9080, 9081];

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<()> {
    let (base, remove_after) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("tern-demo-{}", std::process::id())),
            true,
        ),
    };
    let result = run_in(&base, &args).await;
    if remove_after {
        let _ = std::fs::remove_dir_all(&base);
    }
    result
}

async fn run_in(base: &Path, args: &DemoArgs) -> Result<()> {
    let site = base.join("site");
    write_sample_site(&site).with_context(|| format!("cannot write the sample site under {}", site.display()))?;
    let key_path = base.join("purge.key");
    if !key_path.exists() {
        tern_wire::SecretKey::write_new(&key_path)?;
    }
    let token = tern_wire::SecretKey::load(&key_path)?.token();
    let agent_key_path = base.join("agent.key");
    if !agent_key_path.exists() {
        tern_wire::SecretKey::write_new(&agent_key_path)?;
    }
    let agent_key = tern_wire::SecretKey::load(&agent_key_path)?;

    // Fixed, memorable ports, unless taken (or checking): then any free port.
    let fixed = !args.smoke;
    let origin = start_origin(&site, fixed).await?;
    let mut edges = Vec::new();
    for index in 0..2 {
        edges.push(start_edge(base, index, origin.listen, &key_path, fixed).await?);
    }
    // Active synchronisation: the agent watches the site, the sync service purges and prefetches on both edges.
    let sync = tern_sync::start(tern_sync::SyncConfig {
        listen: loopback(0),
        admin: Some(loopback(0)),
        key: agent_key.clone(),
        cache_key: Some(tern_wire::SecretKey::load(&key_path)?),
        data_dir: base.join("sync"),
        sites: vec![tern_sync::SiteConfig {
            name: "demo".into(),
            hosts: vec![DEMO_HOST.into()],
        }],
        caches: edges
            .iter()
            .map(|e| tern_sync::CacheConfig {
                url: format!("http://{}", e.listen),
                sites: vec![],
            })
            .collect(),
        max_frame: tern_wire::frame::DEFAULT_MAX_PAYLOAD,
        max_retry_age: std::time::Duration::from_secs(3600),
        request_timeout: std::time::Duration::from_secs(5),
    })
    .await
    .context("sync service did not start")?;
    let agent = tern_sync::Agent::new(tern_sync::AgentConfig {
        dir: site.clone(),
        site: "demo".into(),
        name: "demo-origin".into(),
        base_url: format!("http://{DEMO_HOST}"),
        sync: sync.listen,
        key: agent_key,
        state_dir: base.join("agent"),
        rescan_interval: std::time::Duration::from_secs(5),
        debounce: std::time::Duration::from_millis(50),
        max_batch: 1000,
        index: "index.html".into(),
    })?;
    let agent_stop = CancellationToken::new();
    let agent_task = tokio::spawn(agent.clone().run(agent_stop.clone()));

    // The content mover: the same site published to three backend nodes, switched atomically.
    let (mover, nodes) = start_mover_and_nodes(base, &site, fixed).await?;

    let outcome = if args.smoke {
        match smoke(&edges, &token, &site).await {
            Ok(()) => check_nodes(base, &site),
            Err(error) => Err(error),
        }
    } else {
        print_guide(&origin, &edges, &site, &token);
        println!(
            "\nContent mover: http://{} with 3 nodes; each serves {}/nodes/nodeN/demo/live. Publish a change with:",
            mover.listen,
            base.display()
        );
        println!(
            "  tern publish --mover http://{} --site demo --staging {}",
            mover.listen,
            site.display()
        );
        println!("\nPress Ctrl-C to stop.");
        let stop = CancellationToken::new();
        crate::stop_on_signal(stop.clone());
        stop.cancelled().await;
        Ok(())
    };
    agent_stop.cancel();
    let _ = agent_task.await;
    for node in nodes {
        node.shutdown().await;
    }
    mover.shutdown().await;
    sync.shutdown().await;
    for edge in edges {
        edge.shutdown().await;
    }
    origin.shutdown().await;
    outcome
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn start_origin(site: &Path, fixed: bool) -> Result<RunningOrigin> {
    let config = OriginConfig {
        root: site.to_path_buf(),
        listen: loopback(if fixed { ORIGIN_PORT } else { 0 }),
        cache_control: Some("public, max-age=60".into()),
        rules: vec![
            CacheRule {
                prefix: "/static/".into(),
                cache_control: Some("public, max-age=86400, immutable".into()),
                surrogate_key: Some("static".into()),
            },
            CacheRule {
                prefix: "/news".into(),
                cache_control: Some("public, max-age=5, stale-while-revalidate=30, stale-if-error=300".into()),
                surrogate_key: Some("news".into()),
            },
        ],
        ..OriginConfig::default()
    };
    match tern_origin::start(config.clone()).await {
        Ok(origin) => Ok(origin),
        Err(tern_origin::StartError::Bind(_)) if fixed => tern_origin::start(OriginConfig {
            listen: loopback(0),
            ..config
        })
        .await
        .context("origin did not start"),
        Err(error) => Err(error).context("origin did not start"),
    }
}

async fn start_edge(base: &Path, index: usize, origin: SocketAddr, key: &Path, fixed: bool) -> Result<RunningEdge> {
    let config = EdgeConfig {
        listen: loopback(if fixed { EDGE_PORTS[index] } else { 0 }),
        admin: Some(loopback(if fixed { ADMIN_PORTS[index] } else { 0 })),
        origin: format!("http://{origin}"),
        cache_dir: Some(base.join(format!("edge{}-cache", index + 1))),
        cache_size: 256 << 20,
        memory_size: 64 << 20,
        purge_key: Some(key.to_path_buf()),
        name: format!("tern-edge{}", index + 1),
        ..EdgeConfig::default()
    };
    match tern_edge::start(config.clone()).await {
        Ok(edge) => Ok(edge),
        Err(tern_edge::StartError::Bind(_)) if fixed => {
            let fallback = EdgeConfig {
                listen: loopback(0),
                admin: Some(loopback(0)),
                ..config
            };
            tern_edge::start(fallback).await.context("edge did not start")
        }
        Err(error) => Err(error).context("edge did not start"),
    }
}

fn write_sample_site(site: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(site.join("static"))?;
    let files: [(&str, &str); 4] = [
        (
            "index.html",
            "<!doctype html>\n<html><head><title>tern demo</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head>\n\
             <body><h1>Served by tern</h1>\n<p>This page came through a tern edge. Look at the <code>Cache-Status</code> \
             response header: the first request is a miss, the next ones are hits.</p>\n\
             <p><a href=\"/news.html\">News</a> (fresh for 5 s, then served stale while it is refreshed)</p>\n\
             <img src=\"/static/logo.svg\" alt=\"tern\"></body></html>\n",
        ),
        (
            "news.html",
            "<!doctype html>\n<html><body><h1>News</h1><p>Edit this file and watch the edges pick it up.</p></body></html>\n",
        ),
        (
            "static/style.css",
            "body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }\n",
        ),
        (
            "static/logo.svg",
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"64\"><circle cx=\"32\" cy=\"32\" r=\"30\" fill=\"#2b6cb0\"/></svg>\n",
        ),
    ];
    for (path, content) in files {
        let target = site.join(path);
        if !target.exists() {
            std::fs::write(target, content)?;
        }
    }
    Ok(())
}

fn print_guide(origin: &RunningOrigin, edges: &[RunningEdge], site: &Path, token: &str) {
    let first = edges[0].listen;
    let first_admin = edges[0].admin.map(|a| a.to_string()).unwrap_or_default();
    println!("tern demo is running.\n");
    println!("  origin   http://{}/   serving {}", origin.listen, site.display());
    for (index, edge) in edges.iter().enumerate() {
        let admin = edge.admin.map(|a| format!("http://{a}/status")).unwrap_or_default();
        println!("  edge {}   http://{}/   admin {}", index + 1, edge.listen, admin);
    }
    println!(
        "\nThe site's host is {DEMO_HOST}: edit a file under {} and every edge serves the new bytes at once.",
        site.display()
    );
    println!("\nTry:");
    println!(
        "  curl -si -H 'Host: {DEMO_HOST}' http://{first}/news.html            # then edit news.html and ask again"
    );
    println!("  curl -si http://{first}/index.html | grep -i cache-status     # first time: fwd=miss; stored");
    println!("  curl -si http://{first}/index.html | grep -i cache-status     # again: hit");
    println!("  curl -si -H 'Range: bytes=0-15' http://{first}/index.html    # ranges come from the cache");
    println!("  curl -si -X PURGE -H 'Authorization: Bearer {token}' http://{first}/index.html");
    println!(
        "  curl -s -H 'Authorization: Bearer {token}' -d '{{\"keys\":[\"static\"]}}' http://{first_admin}/purge   # purge by surrogate key"
    );
    println!("  curl -s http://{first_admin}/metrics | grep tern_edge_requests");
}

async fn smoke(edges: &[RunningEdge], token: &str, site: &Path) -> Result<()> {
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(hyper_util::client::legacy::connect::HttpConnector::new());
    let fetch = |method: &'static str, url: String, auth: Option<String>| {
        let client = client.clone();
        async move {
            let mut request = http::Request::builder().method(method).uri(&url);
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = client.request(request.body(Full::new(Bytes::new()))?).await?;
            let status = response.status();
            let cache_status = response
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, cache_status, body))
        }
    };
    for (index, edge) in edges.iter().enumerate() {
        let url = format!("http://{}/index.html", edge.listen);
        let (status, first, body) = fetch("GET", url.clone(), None).await?;
        if status != 200 || !body.starts_with(b"<!doctype html>") || !first.contains("fwd=miss") {
            bail!(
                "edge {}: first request should be a miss with the page, got {status} `{first}`",
                index + 1
            );
        }
        let (_, second, _) = fetch("GET", url.clone(), None).await?;
        if !second.contains("hit") {
            bail!("edge {}: second request should be a hit, got `{second}`", index + 1);
        }
        let (purged, _, _) = fetch("PURGE", url.clone(), Some(format!("Bearer {token}"))).await?;
        let (_, third, _) = fetch("GET", url, None).await?;
        if purged != 200 || !third.contains("fwd=miss") {
            bail!(
                "edge {}: purge should make the next request a miss, got {purged} then `{third}`",
                index + 1
            );
        }
        println!("edge {}: {first} -> {second} -> purged -> {third}", index + 1);
    }
    // Active synchronisation: style.css is fresh for a day, so only tern sync can bring an edit to the
    // edges within the deadline.
    let css = |edge: &RunningEdge| {
        let client = client.clone();
        let url = format!("http://{}/static/style.css", edge.listen);
        async move {
            let request = http::Request::get(url)
                .header("host", DEMO_HOST)
                .body(Full::new(Bytes::new()))?;
            anyhow::Ok(client.request(request).await?.into_body().collect().await?.to_bytes())
        }
    };
    for edge in edges {
        css(edge).await?;
    }
    let original = std::fs::read_to_string(site.join("static/style.css"))?;
    std::fs::write(
        site.join("static/style.css"),
        format!("{original}/* edited during the smoke check */\n"),
    )?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    for (index, edge) in edges.iter().enumerate() {
        loop {
            if css(edge).await?.windows(6).any(|w| w == b"edited") {
                println!("edge {}: the edit arrived through tern sync", index + 1);
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "edge {}: the edit to static/style.css did not arrive within 15 s",
                    index + 1
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    std::fs::write(site.join("static/style.css"), original)?;
    println!("demo smoke check passed");
    Ok(())
}

type MoverRunning = tern_http::server::Running<std::sync::Arc<tern_mover::service::Mover>>;
type NodeRunning = tern_http::server::Running<std::sync::Arc<tern_node::agent::NodeAgent>>;

/// Starts the mover and three nodes, and publishes the sample site to them.
async fn start_mover_and_nodes(base: &Path, site: &Path, fixed: bool) -> Result<(MoverRunning, Vec<NodeRunning>)> {
    let config = tern_mover::service::MoverConfig {
        listen: loopback(if fixed { MOVER_PORT } else { 0 }),
        data: base.join("mover"),
        policy: tern_mover::PlanPolicy::default(),
        admin: None,
        quorum: None,
        delivery_timeout: std::time::Duration::from_secs(60),
        checkpoints_kept: 3,
        load_balancer: None,
        tls: None,
        ca: None,
        cluster_key: None,
        tree: Default::default(),
    };
    let mover = match tern_mover::service::start(config.clone()).await {
        Ok(mover) => mover,
        Err(tern_mover::service::StartError::Bind(_)) if fixed => {
            tern_mover::service::start(tern_mover::service::MoverConfig {
                listen: loopback(0),
                ..config
            })
            .await
            .context("mover did not start")?
        }
        Err(error) => return Err(error).context("mover did not start"),
    };
    let key = tern_mover::keys::load_public(&base.join("mover/mover.pub"))?;
    let mut nodes = Vec::new();
    for index in 0..3 {
        let node = tern_node::agent::start(tern_node::agent::NodeConfig {
            mover: format!("http://{}", mover.listen),
            listen: loopback(0),
            advertise: None,
            root: base.join("nodes").join(format!("node{}", index + 1)),
            name: format!("node{}", index + 1),
            mover_key: key,
            decryption_key: None,
            limits: Default::default(),
            register_interval: std::time::Duration::from_secs(2),
            groups: Vec::new(),
            superseded_grace: tern_node::interpreter::SUPERSEDED_GRACE,
            tls: None,
            ca: None,
            cluster_key: None,
            tree: Default::default(),
        })
        .await
        .context("node did not start")?;
        nodes.push(node);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while mover.role.nodes().await.len() < 3 {
        if std::time::Instant::now() > deadline {
            bail!("the demo nodes did not register with the mover");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let site_path = site.display().to_string();
    let mut publish = tern_mover::JobSpec::new(tern_mover::JobKind::Publish, "demo");
    publish.staging = Some(site_path);
    let id = mover.role.submit(publish, 0).await?;
    loop {
        match mover.role.job(&id).await {
            Some(job) if job.state == tern_mover::JobState::Committed => break,
            Some(job) if job.finished() => bail!(
                "publishing the sample site to the demo nodes failed: {}",
                job.error.unwrap_or_default()
            ),
            _ if std::time::Instant::now() > deadline => bail!("publishing the sample site took too long"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    Ok((mover, nodes))
}

/// The three nodes hold the sample site.
fn check_nodes(base: &Path, site: &Path) -> Result<()> {
    let expected = std::fs::read(site.join("index.html"))?;
    for index in 1..=3 {
        let live = base
            .join("nodes")
            .join(format!("node{index}"))
            .join("demo/live/index.html");
        if std::fs::read(&live).ok().as_deref() != Some(expected.as_slice()) {
            bail!("node {index} does not hold the published site at {}", live.display());
        }
    }
    println!("content mover: the site is live on 3 nodes");
    Ok(())
}
