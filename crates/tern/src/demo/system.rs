//! The demo's one system, every role in this process: `tern mover` with its admin web UI, three `tern node`s
//! each serving its `live` tree with `tern serve`, an edge in front of each node, the three edges as one
//! cache community with its `tern registry` ([`super::community`]), and `tern sync` as the site's caches, so
//! that every commit of the mover (publish, rollback) is purged and prefetched on every edge. An edge takes
//! one origin, so edge N stands in front of node N (a load balancer would spread one edge over the nodes;
//! that is not the demo's to write); the nodes hold the same content, so the community's owner of an object
//! fetches it from its own node.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tern_edge::{EdgeConfig, RunningEdge};
use tern_http::server::Running;
use tern_mover::{JobKind, JobSpec, JobState};
use tern_origin::{CacheRule, OriginConfig, RunningOrigin};
use tern_wire::SecretKey;
use tern_wire::mover::SiteCaches;

use super::community::{self, Agreement, StatusReader};
use super::site;

/// Memorable ports, used when free (a port that is taken, or `--smoke`, gives any free port instead).
const MOVER_PORT: u16 = 7000;
const MOVER_ADMIN_PORT: u16 = 7001;
const SYNC_PORT: u16 = 7070;
const SYNC_ADMIN_PORT: u16 = 7071;
/// Node N's `tern serve`.
const SERVE_PORTS: [u16; NODES] = [9101, 9102, 9103];
/// Edge N, in front of node N, and its admin listener.
const EDGE_PORTS: [u16; NODES] = [8080, 8081, 8082];
const EDGE_ADMIN_PORTS: [u16; NODES] = [9080, 9081, 9082];
/// Edge N's community port (peer requests over TCP, community messages over UDP).
const EDGE_PEER_PORTS: [u16; NODES] = [7401, 7402, 7403];
/// The community registry.
const REGISTRY_PORT: u16 = 7300;
/// Nodes, and so edges.
pub const NODES: usize = 3;
/// Longest wait for the nodes to register and for the demo's own jobs.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the demo keeps its files, all under one directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The demo's directory.
    pub base: PathBuf,
    /// The site as its authors edit it; what `tern publish` sends.
    pub staging: PathBuf,
    /// The demo's log.
    pub log: PathBuf,
    /// The edges' purge key (the sync service's `--cache-key`).
    pub purge_key: PathBuf,
    /// The sync service's key, which the mover sends its purges with.
    pub sync_key: PathBuf,
    /// The admin web UI's token file.
    pub admin_key: PathBuf,
    /// The cluster key the edges' community and its registry share.
    pub cluster_key: PathBuf,
    /// The community registry's state.
    pub registry: PathBuf,
}

impl Paths {
    /// The paths under `base`.
    pub fn under(base: &Path) -> Paths {
        Paths {
            base: base.to_path_buf(),
            staging: base.join("staging"),
            log: base.join("demo.log"),
            purge_key: base.join("purge.key"),
            sync_key: base.join("sync.key"),
            admin_key: base.join("admin.key"),
            cluster_key: base.join("cluster.key"),
            registry: base.join("registry"),
        }
    }

    /// Node N's root (the node keeps the site in ROOT/demo/live), N from 1.
    pub fn node_root(&self, number: usize) -> PathBuf {
        self.base.join("nodes").join(format!("node{number}"))
    }

    /// Node N's live tree, which its `tern serve` serves.
    pub fn node_live(&self, number: usize) -> PathBuf {
        self.node_root(number).join(site::SITE).join("live")
    }
}

/// The running mover.
pub type MoverRunning = Running<Arc<tern_mover::Mover>>;
/// A running node.
pub type NodeRunning = Running<Arc<tern_node::agent::NodeAgent>>;
/// The running sync service.
pub type SyncRunning = Running<Arc<tern_sync::SyncService>>;

/// The running system.
pub struct System {
    /// Its files.
    pub paths: Paths,
    /// The mover; its admin listener serves the web UI under `/ui/`.
    pub mover: MoverRunning,
    /// The nodes, node N at index N-1.
    pub nodes: Vec<NodeRunning>,
    /// Each node's `tern serve` of its live tree.
    pub origins: Vec<RunningOrigin>,
    /// Edge N in front of origin N.
    pub edges: Vec<RunningEdge>,
    /// The registry of the edges' community.
    pub registry: tern_community::service::RunningRegistry,
    /// What the edges agreed on once they had formed their community.
    pub community: Agreement,
    /// The sync service driving every edge: the site's caches.
    pub sync: SyncRunning,
    /// The edges' purge token.
    pub purge_token: String,
    /// The admin web UI's token.
    pub admin_token: String,
}

/// A loopback address: `port` when `fixed`, else any free port.
fn loopback(fixed: bool, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], if fixed { port } else { 0 }))
}

/// Starts a role on its memorable ports when `fixed` and they are free, else on any free ports; `start`
/// is told which. A failure other than a taken port fails the second try too, which then reports it.
async fn fixed_or_any<T, E, Fut>(fixed: bool, start: impl Fn(bool) -> Fut) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    if fixed {
        match start(true).await {
            Ok(running) => return Ok(running),
            Err(_) => tracing::info!("a memorable port is taken: this role runs on free ports (the guide shows them)"),
        }
    }
    start(false).await
}

/// Loads the key file at `path`, writing a new one first when there is none.
fn key(path: &Path) -> Result<SecretKey> {
    if !path.exists() {
        SecretKey::write_new(path).with_context(|| format!("cannot write the key file {}", path.display()))?;
    }
    SecretKey::load(path).with_context(|| format!("cannot read the key file {}", path.display()))
}

impl System {
    /// Starts every role on fixed ports when `fixed` (else on any free ports), publishes the staging
    /// directory to the nodes, and names the sync service as the site's caches.
    pub async fn start(paths: Paths, fixed: bool) -> Result<System> {
        let purge_token = key(&paths.purge_key)?.token();
        let sync_key = key(&paths.sync_key)?;
        let admin_key = key(&paths.admin_key)?;
        let admin_token = admin_key.token();

        let mover = start_mover(&paths, admin_key, fixed).await?;
        let nodes = start_nodes(&paths, &mover).await?;
        // The first publish makes the nodes' live trees, which `tern serve` needs before it starts. Its
        // caches are off: the edges do not exist yet, and they start with empty caches anyway.
        publish(&mover, &paths.staging, Some(SiteCaches::default())).await?;
        let mut origins = Vec::new();
        for (index, port) in SERVE_PORTS.into_iter().enumerate() {
            origins.push(start_origin(&paths.node_live(index + 1), port, fixed).await?);
        }
        key(&paths.cluster_key)?;
        let registry = fixed_or_any(fixed, |fixed| {
            community::start_registry(loopback(fixed, REGISTRY_PORT), &paths.registry, &paths.cluster_key)
        })
        .await?;
        let mut edges = Vec::new();
        for (index, origin) in origins.iter().enumerate() {
            edges.push(start_edge(&paths, index, origin.listen, registry.listen, fixed).await?);
        }
        // The sync service and the smoke check see the community formed: every edge asks the owner.
        let admins = edge_admins(&edges)?;
        let community = StatusReader::new().wait_agreed(&admins, START_TIMEOUT).await?;
        let sync = start_sync(&paths, sync_key, &edges, fixed).await?;
        let sync_admin = sync.admin.context("the sync service has no admin listener")?;
        // The site's caches from now on: every commit goes to the sync service, which purges and prefetches
        // on every edge. The tree is unchanged, so this publish touches no node and makes no version.
        let caches = SiteCaches {
            public_url: format!("http://{}", site::HOST),
            sync_url: Some(format!("http://{sync_admin}")),
            sync_key: Some(absolute(&paths.sync_key)?),
            ..SiteCaches::default()
        };
        publish(&mover, &paths.staging, Some(caches)).await?;
        Ok(System {
            paths,
            mover,
            nodes,
            origins,
            edges,
            registry,
            community,
            sync,
            purge_token,
            admin_token,
        })
    }

    /// The `tern publish` command line that publishes the staging directory and waits for the edges.
    pub fn publish_command(&self) -> Result<Vec<String>> {
        let mut command = vec![
            tern_program()?,
            "publish".into(),
            "--mover".into(),
            format!("http://{}", self.mover.listen),
            "--site".into(),
            site::SITE.into(),
            "--staging".into(),
        ];
        command.push(absolute(&self.paths.staging)?);
        command.push("--wait-fresh".into());
        Ok(command)
    }

    /// The `tern rollback` command line that switches back to the previous version and waits for the edges.
    pub fn rollback_command(&self) -> Result<Vec<String>> {
        Ok(vec![
            tern_program()?,
            "rollback".into(),
            "--mover".into(),
            format!("http://{}", self.mover.listen),
            "--site".into(),
            site::SITE.into(),
            "--wait-fresh".into(),
        ])
    }

    /// The web UI's address.
    pub fn ui_url(&self) -> Option<String> {
        self.mover.admin.map(|admin| format!("http://{admin}/ui/"))
    }

    /// The registry's URL, as the edges are given it.
    pub fn registry_url(&self) -> String {
        format!("http://{}", self.registry.listen)
    }

    /// Every edge's admin listener, edge N at index N-1.
    pub fn edge_admins(&self) -> Result<Vec<SocketAddr>> {
        edge_admins(&self.edges)
    }

    /// Stops every role, the edges first.
    pub async fn shutdown(self) {
        self.sync.shutdown().await;
        for edge in self.edges {
            edge.shutdown().await;
        }
        self.registry.shutdown().await;
        for origin in self.origins {
            origin.shutdown().await;
        }
        for node in self.nodes {
            node.shutdown().await;
        }
        self.mover.shutdown().await;
    }
}

/// This program, by absolute path: the printed command lines work from any directory, also when `tern` is
/// not on the PATH (`cargo run` leaves it in `target/`).
fn tern_program() -> Result<String> {
    let program = std::env::current_exe().context("cannot tell where this program is")?;
    Ok(program.display().to_string())
}

/// `path` made absolute, as text (the mover reads paths on its own machine, from its own directory).
fn absolute(path: &Path) -> Result<String> {
    let absolute = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    Ok(absolute.display().to_string())
}

async fn start_mover(paths: &Paths, admin_key: SecretKey, fixed: bool) -> Result<MoverRunning> {
    let config = |fixed: bool| tern_mover::MoverConfig {
        admin: Some(loopback(fixed, MOVER_ADMIN_PORT)),
        delivery_timeout: Duration::from_secs(60),
        checkpoints_kept: 3,
        ..tern_mover::MoverConfig::new(loopback(fixed, MOVER_PORT), paths.base.join("mover"))
    };
    fixed_or_any(fixed, |fixed| {
        tern_mover_ui::start(config(fixed), Some(admin_key.clone()))
    })
    .await
    .context("the mover did not start")
}

/// Starts the three nodes and waits until the mover knows them.
async fn start_nodes(paths: &Paths, mover: &MoverRunning) -> Result<Vec<NodeRunning>> {
    let key = tern_mover::keys::load_public(&paths.base.join("mover/mover.pub"))?;
    let mut nodes = Vec::new();
    for number in 1..=NODES {
        let node = tern_node::agent::start(tern_node::agent::NodeConfig {
            mover: format!("http://{}", mover.listen),
            listen: loopback(false, 0),
            advertise: None,
            root: paths.node_root(number),
            name: format!("node{number}"),
            mover_key: key,
            decryption_key: None,
            limits: Default::default(),
            register_interval: Duration::from_secs(2),
            groups: Vec::new(),
            superseded_grace: tern_node::interpreter::SUPERSEDED_GRACE,
            tls: None,
            ca: None,
            cluster_key: None,
            tree: Default::default(),
        })
        .await
        .with_context(|| format!("node {number} did not start"))?;
        nodes.push(node);
    }
    let deadline = Instant::now() + START_TIMEOUT;
    while mover.role.nodes().await.len() < NODES {
        if Instant::now() > deadline {
            bail!("the demo's nodes did not register with the mover");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(nodes)
}

/// Publishes `staging` to the nodes (naming the site's `caches`, when given) and waits for the commit.
async fn publish(mover: &MoverRunning, staging: &Path, caches: Option<SiteCaches>) -> Result<()> {
    let mut spec = JobSpec::new(JobKind::Publish, site::SITE);
    spec.staging = Some(absolute(staging)?);
    spec.caches = caches;
    let id = mover.role.submit(spec, 0).await?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match mover.role.job(&id).await {
            Some(job) if job.state == JobState::Committed => return Ok(()),
            Some(job) if job.finished() => bail!(
                "publishing the sample site to the demo's nodes failed: {}",
                job.error.unwrap_or_default()
            ),
            _ if Instant::now() > deadline => bail!("publishing the sample site took too long"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `tern serve` of a node's live tree. It resolves `live` on every request, so it serves each version the
/// moment the node switches to it.
async fn start_origin(live: &Path, port: u16, fixed: bool) -> Result<RunningOrigin> {
    let config = |fixed: bool| OriginConfig {
        root: live.to_path_buf(),
        listen: loopback(fixed, port),
        cache_control: Some(site::CACHE_CONTROL.into()),
        rules: vec![CacheRule {
            prefix: "/static/".into(),
            cache_control: Some("public, max-age=86400".into()),
            surrogate_key: Some("static".into()),
        }],
        ..OriginConfig::default()
    };
    fixed_or_any(fixed, |fixed| tern_origin::start(config(fixed)))
        .await
        .with_context(|| format!("tern serve {} did not start", live.display()))
}

/// Every edge's admin listener.
fn edge_admins(edges: &[RunningEdge]) -> Result<Vec<SocketAddr>> {
    edges
        .iter()
        .enumerate()
        .map(|(index, edge)| {
            edge.admin
                .with_context(|| format!("edge {} has no admin listener", index + 1))
        })
        .collect()
}

/// Whether every one of `addresses` can be bound now, over TCP and over UDP.
fn free(addresses: &[SocketAddr]) -> bool {
    addresses
        .iter()
        .all(|address| std::net::TcpListener::bind(address).is_ok() && std::net::UdpSocket::bind(address).is_ok())
}

/// Edge N+1 (`index` N) in front of `origin`, a member of the demo's community found through `registry`.
/// Its cache is in memory: a demo restarted on the same `--dir` never serves a page of an earlier run.
async fn start_edge(
    paths: &Paths,
    index: usize,
    origin: SocketAddr,
    registry: SocketAddr,
    fixed: bool,
) -> Result<RunningEdge> {
    let config = |fixed: bool| EdgeConfig {
        listen: loopback(fixed, EDGE_PORTS[index]),
        admin: Some(loopback(fixed, EDGE_ADMIN_PORTS[index])),
        origin: format!("http://{origin}"),
        cache_dir: None,
        memory_size: 64 << 20,
        purge_key: Some(paths.purge_key.clone()),
        name: format!("tern-edge{}", index + 1),
        community: Some(community::settings(
            &paths.cluster_key,
            loopback(fixed, EDGE_PEER_PORTS[index]),
            registry,
        )),
        ..EdgeConfig::default()
    };
    // An edge that fails to start after its community driver started leaves that driver running, a peer
    // without an edge; so the memorable ports are tried only when every one of them is free.
    let memorable =
        [EDGE_PORTS[index], EDGE_ADMIN_PORTS[index], EDGE_PEER_PORTS[index]].map(|port| loopback(true, port));
    let fixed = fixed && free(&memorable);
    fixed_or_any(fixed, |fixed| tern_edge::start(config(fixed)))
        .await
        .with_context(|| format!("edge {} did not start", index + 1))
}

/// The sync service with every edge as its caches. No agent reports to it here: the mover hands it each
/// commit's changed URLs (`POST /purge`), with the same key an agent would use.
async fn start_sync(paths: &Paths, key: SecretKey, edges: &[RunningEdge], fixed: bool) -> Result<SyncRunning> {
    let cache_key = SecretKey::load(&paths.purge_key)?;
    let config = |fixed: bool| tern_sync::SyncConfig {
        listen: loopback(fixed, SYNC_PORT),
        admin: Some(loopback(fixed, SYNC_ADMIN_PORT)),
        key: key.clone(),
        cache_key: Some(cache_key.clone()),
        data_dir: paths.base.join("sync"),
        sites: vec![tern_sync::SiteConfig {
            name: site::SITE.into(),
            hosts: vec![site::HOST.into()],
        }],
        caches: edges
            .iter()
            .map(|edge| tern_sync::CacheConfig {
                url: format!("http://{}", edge.listen),
                sites: vec![],
            })
            .collect(),
        max_frame: tern_wire::frame::DEFAULT_MAX_PAYLOAD,
        max_retry_age: Duration::from_secs(3600),
        request_timeout: Duration::from_secs(5),
        commands_in_flight: tern_sync::cacher::DEFAULT_COMMANDS_IN_FLIGHT,
        cache_ca: None,
    };
    fixed_or_any(fixed, |fixed| tern_sync::start(config(fixed)))
        .await
        .context("the sync service did not start")
}
