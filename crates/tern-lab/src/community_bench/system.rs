//! The systems under test: starting the edges (alone, as a community with a registry, or one big edge),
//! waiting for them, and reading their `/status` and `/metrics`.

use super::*;

pub(super) async fn start_system(
    options: &CommunityBench,
    setup: Setup,
    paths: &Paths,
    client: &HttpClient,
    out: &mut Printer,
) -> Result<System> {
    let origin = crate::origin::start(
        "127.0.0.1:0".parse()?,
        OriginSettings {
            delay: Duration::from_millis(options.origin_delay_ms),
            ttl: 3600,
        },
    )
    .await?;
    let dir = paths.work.join(setup.name());
    std::fs::create_dir_all(&dir)?;
    let (count, cache) = match setup {
        Setup::Ideal => (1, options.cache * options.edges as u64),
        Setup::Independent | Setup::Community => (options.edges, options.cache),
    };
    let mut registry = None;
    let mut community_args: Option<(PathBuf, SocketAddr)> = None;
    if setup == Setup::Community {
        let key = dir.join("cluster.key");
        let made = Command::new(&paths.tern)
            .arg("keygen")
            .arg(&key)
            .stdout(Stdio::null())
            .status()
            .context("tern keygen")?;
        if !made.success() {
            bail!("tern keygen failed");
        }
        let registry_addr = pick_addr()?;
        let mut command = Command::new(&paths.tern);
        command
            .args(["registry", "--listen", &registry_addr.to_string(), "--cluster-key"])
            .arg(&key)
            .arg("--data")
            .arg(dir.join("registry"))
            .args(["--log", "warn"]);
        registry = Some(Started::spawn(command, &dir.join("registry.log"))?);
        blocking_wait_listening(registry_addr).await?;
        community_args = Some((key, registry_addr));
    }
    let mut edges = Vec::new();
    for index in 0..count {
        let log = dir.join(format!("edge{index}.log"));
        let mut attempt = 0;
        let edge = loop {
            attempt += 1;
            let (listen, admin) = (pick_addr()?, pick_addr()?);
            let peer = match community_args {
                Some(_) => Some(pick_addr()?),
                None => None,
            };
            let mut command = Command::new(&paths.tern);
            command.args([
                "edge",
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
                "--origin",
                &format!("http://{}", origin.addr),
                "--cache-size",
                &cache.to_string(),
                "--threads",
                &options.edge_threads.to_string(),
                "--log",
                "warn",
            ]);
            if let (Some((key, registry_addr)), Some(peer)) = (&community_args, peer) {
                command
                    .args(["--community", COMMUNITY, "--cluster-key"])
                    .arg(key)
                    .args([
                        "--peer-listen",
                        &peer.to_string(),
                        "--registry",
                        &format!("http://{registry_addr}"),
                        "--community-keep",
                        &options.keep,
                        "--replicas",
                        &options.replicas.to_string(),
                    ]);
            }
            let mut process = Started::spawn(command, &log)?;
            match wait_started(&mut process, &[listen, admin]).await {
                Ok(()) => {
                    break Edge {
                        process: Some(process),
                        listen,
                        admin,
                        peer,
                    };
                }
                // Another process took a port between the pick and the edge's bind: new ports.
                Err(error) if attempt < 3 => eprintln!("edge {index} did not start ({error:#}); again"),
                Err(error) => {
                    let said = std::fs::read_to_string(&log).unwrap_or_default();
                    return Err(error.context(format!("edge {index}: {}", said.trim())));
                }
            }
        };
        let admin = edge.admin;
        edges.push(edge);
        if index == 0 && setup == Setup::Community {
            // The first edge creates the community; the others then join it rather than racing to create.
            wait_until(CONVERGE_LIMIT, || async {
                status(client, admin)
                    .await
                    .is_some_and(|s| s["community"]["role"] == "master")
            })
            .await
            .context("the first edge did not become the community's master")?;
        }
    }
    let system = System {
        setup,
        origin,
        edges,
        registry,
    };
    if setup == Setup::Community {
        let started = Instant::now();
        let view = converged(client, &system, None).await?;
        out.line(format!(
            "community formed in {:.1} s: master {} (term {}), {} members",
            started.elapsed().as_secs_f64(),
            view.master,
            view.term,
            system.edges.len(),
        ));
    }
    Ok(system)
}

pub(super) async fn blocking_wait_listening(addr: SocketAddr) -> Result<()> {
    tokio::task::spawn_blocking(move || wait_listening(addr)).await?
}

/// Waits until `process` accepts connections on every one of `addrs`; an error if it exits first or
/// takes longer than 20 s.
pub(super) async fn wait_started(process: &mut Started, addrs: &[SocketAddr]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in addrs {
        loop {
            if let Some(exit) = process.guard.0.try_wait()? {
                bail!("it exited ({exit})");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("nothing listening on {addr} after 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Ports handed out in this run (never twice).
pub(super) static PICKED: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A loopback address whose port is free for TCP and UDP now, below Linux's ephemeral range (32768 and
/// up), so that no outgoing connection takes it before the process binds it (which `free_addr`'s
/// ephemeral ports allow).
pub(super) fn pick_addr() -> Result<SocketAddr> {
    let mut picked = PICKED.lock().map_err(|_| anyhow::anyhow!("port list poisoned"))?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut rng = SplitMix(seed);
    for _ in 0..1000 {
        let port = 20_000 + (rng.next() % 12_000) as u16;
        if picked.contains(&port) {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok() {
            picked.push(port);
            return Ok(addr);
        }
    }
    bail!("no free port between 20000 and 32000 on 127.0.0.1")
}

pub(super) async fn wait_until<F, Fut>(limit: Duration, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !ready().await {
        if Instant::now() > deadline {
            bail!("not ready after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub(super) async fn get_text(client: &HttpClient, url: &str) -> Option<String> {
    let request = http::Request::get(url).body(Empty::new()).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(2), client.request(request))
        .await
        .ok()?
        .ok()?;
    let body = tokio::time::timeout(Duration::from_secs(2), response.into_body().collect())
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

pub(super) async fn status(client: &HttpClient, admin: SocketAddr) -> Option<serde_json::Value> {
    serde_json::from_str(&get_text(client, &format!("http://{admin}/status")).await?).ok()
}

/// One agreed view of the community.
pub(super) struct View {
    pub(super) master: String,
    pub(super) term: u64,
}

/// Reads every running edge's `/status` once: the view they all agree on (same master and epoch, every
/// running edge listed), if they do.
pub(super) async fn agreed_view(client: &HttpClient, system: &System, not: Option<&str>) -> Option<View> {
    let running: Vec<&Edge> = system.edges.iter().filter(|edge| edge.process.is_some()).collect();
    let mut views = Vec::new();
    for edge in &running {
        views.push(status(client, edge.admin).await?["community"].clone());
    }
    let first = views.first()?;
    let agreed = views.iter().all(|view| {
        view["master"].is_string()
            && view["master"] == first["master"]
            && view["epoch"] == first["epoch"]
            && view["peers"].as_array().map(Vec::len) == Some(running.len())
            && not.is_none_or(|old| view["master"] != old)
    });
    agreed.then(|| View {
        master: first["master"].as_str().unwrap_or_default().to_string(),
        term: first["term"].as_u64().unwrap_or(0),
    })
}

pub(super) async fn converged(client: &HttpClient, system: &System, not: Option<&str>) -> Result<View> {
    let deadline = Instant::now() + CONVERGE_LIMIT;
    loop {
        if let Some(view) = agreed_view(client, system, not).await {
            return Ok(view);
        }
        if Instant::now() > deadline {
            bail!("the community did not converge within {CONVERGE_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For each running edge, the sum of the samples whose name (with labels) ends with `series` on its
/// `/metrics`: `None` where it has no such series (or does not answer).
pub(super) async fn metric_by_edge(client: &HttpClient, system: &System, series: &str) -> Vec<Option<u64>> {
    let mut values = Vec::new();
    for edge in system.edges.iter().filter(|edge| edge.process.is_some()) {
        let text = get_text(client, &format!("http://{}/metrics", edge.admin))
            .await
            .unwrap_or_default();
        let samples: Vec<f64> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once(' '))
            .filter(|(name, _)| name.ends_with(series))
            .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
            .collect();
        values.push((!samples.is_empty()).then(|| samples.iter().sum::<f64>() as u64));
    }
    values
}

/// For each running edge, [`metric_by_edge`] with 0 for a missing series.
pub(super) async fn metric_per_edge(client: &HttpClient, system: &System, series: &str) -> Vec<u64> {
    let values = metric_by_edge(client, system, series).await;
    values.into_iter().map(Option::unwrap_or_default).collect()
}

/// The sum over the running edges, 0 for a missing series.
pub(super) async fn metric_sum(client: &HttpClient, system: &System, series: &str) -> u64 {
    metric_per_edge(client, system, series).await.iter().sum()
}

/// The sum over the running edges, `None` when no edge has the series (an edge built before it existed).
pub(super) async fn metric_sum_if_any(client: &HttpClient, system: &System, series: &str) -> Option<u64> {
    let values = metric_by_edge(client, system, series).await;
    values
        .iter()
        .any(Option::is_some)
        .then(|| values.iter().flatten().sum())
}

/// Peer requests the owners served (`tern_community_peer_requests_total{outcome="served"}`).
pub(super) const PEER_SERVED: &str = "community_peer_requests_total{outcome=\"served\"}";
/// Body bytes other members served an edge (a counter the edges have had since the directory of holders).
pub(super) const PEER_BYTES: &str = "community_peer_bytes_total";
/// Misses a non-owner took to the origin itself because no owner served them.
pub(super) const PEER_FALLBACKS: &str = "community_peer_requests_total{outcome=\"origin-fallback\"}";
/// Memory-tier evictions since start (a gauge).
pub(super) const EVICTIONS: &str = "cache_memory_evictions";
/// Objects in an edge's cache (a gauge).
pub(super) const OBJECTS_HELD: &str = "cache_objects";
