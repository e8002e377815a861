//! Synchronisation end to end on real sockets: an origin directory served by `tern serve`, three edges, the
//! sync service and a CP agent, all in this process.

mod bad_input;
mod flow;
mod https;
mod restart;
mod spellings;
mod varnish;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tern_edge::testsuite::{Got, client, send};
use tern_edge::{EdgeConfig, RunningEdge};
use tern_http::server::Running;
use tern_sync::{Agent, AgentConfig, CacheConfig, SiteConfig, SyncConfig, SyncService};
use tern_wire::SecretKey;
use tokio_util::sync::CancellationToken;

pub const HOST: &str = "www.test";

/// Everything of one test.
pub struct World {
    pub dir: tempfile::TempDir,
    pub origin: tern_origin::RunningOrigin,
    pub edges: Vec<RunningEdge>,
    pub sync: Option<Running<Arc<SyncService>>>,
    pub sync_addr: SocketAddr,
    pub sync_admin: SocketAddr,
    pub edge_addrs: Vec<SocketAddr>,
    pub agent: Arc<Agent>,
    pub agent_stop: CancellationToken,
    pub agent_task: Option<tokio::task::JoinHandle<()>>,
    pub agent_key: SecretKey,
    pub purge_key: PathBuf,
}

impl World {
    pub async fn new(edges: usize) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = dir.path().join("site");
        std::fs::create_dir_all(&site).expect("site");
        let origin = start_origin(&site).await;
        let purge_key = dir.path().join("purge.key");
        SecretKey::write_new(&purge_key).expect("purge key");
        let agent_key = SecretKey::generate().expect("key");
        let sync_addr = free_addr();
        let mut world = World {
            agent: Agent::new(agent_config(dir.path(), sync_addr, &agent_key)).expect("agent"),
            dir,
            origin,
            edges: Vec::new(),
            sync: None,
            sync_addr,
            sync_admin: free_addr(),
            edge_addrs: (0..edges).map(|_| free_addr()).collect(),
            agent_stop: CancellationToken::new(),
            agent_task: None,
            agent_key,
            purge_key,
        };
        // The sync service first: edges catch up with it before they serve.
        world.start_sync().await;
        for index in 0..edges {
            let edge = world.start_edge(index).await;
            world.edges.push(edge);
        }
        world.agent_task = Some(tokio::spawn(world.agent.clone().run(world.agent_stop.clone())));
        world
    }

    /// Stops the agent and waits until it has (it writes its state no more).
    pub async fn stop_agent(&mut self) {
        self.agent_stop.cancel();
        if let Some(task) = self.agent_task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("the agent stops")
                .expect("the agent's task ends");
        }
    }

    /// Starts the agent again on the same directory and state directory, as a new process would.
    pub fn start_agent(&mut self) {
        self.agent = Agent::new(agent_config(self.dir.path(), self.sync_addr, &self.agent_key)).expect("agent");
        self.agent_stop = CancellationToken::new();
        self.agent_task = Some(tokio::spawn(self.agent.clone().run(self.agent_stop.clone())));
    }

    /// The agent's state file.
    pub fn agent_state_file(&self) -> PathBuf {
        self.dir.path().join("agent").join("agent-origin-1.json")
    }

    /// Edge `index`'s cache directory.
    pub fn edge_dir(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("edge{index}"))
    }

    pub async fn start_sync(&mut self) {
        let config = SyncConfig {
            listen: self.sync_addr,
            admin: Some(self.sync_admin),
            key: self.agent_key.clone(),
            cache_key: Some(SecretKey::load(&self.purge_key).expect("purge key")),
            data_dir: self.dir.path().join("sync"),
            sites: vec![SiteConfig {
                name: "www".into(),
                hosts: vec![HOST.into()],
            }],
            caches: self
                .edge_addrs
                .iter()
                .map(|a| CacheConfig {
                    url: format!("http://{a}"),
                    sites: vec![],
                })
                .collect(),
            max_frame: 1 << 20,
            max_retry_age: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(5),
            commands_in_flight: tern_sync::cacher::DEFAULT_COMMANDS_IN_FLIGHT,
            cache_ca: None,
        };
        self.sync = Some(tern_sync::start(config).await.expect("sync starts"));
    }

    /// Starts edge `index` on its address, catching up with the sync service first.
    pub async fn start_edge(&self, index: usize) -> RunningEdge {
        tern_edge::start(EdgeConfig {
            listen: self.edge_addrs[index],
            origin: format!("http://{}", self.origin.listen),
            cache_dir: Some(self.edge_dir(index)),
            purge_key: Some(self.purge_key.clone()),
            sync_url: Some(format!("http://{}", self.sync_admin)),
            ..EdgeConfig::default()
        })
        .await
        .expect("edge starts")
    }

    pub fn site(&self) -> PathBuf {
        self.dir.path().join("site")
    }

    pub fn service(&self) -> &Arc<SyncService> {
        &self.sync.as_ref().expect("sync running").role
    }

    /// Waits until the agent has nothing pending and every cache applied the whole log.
    pub async fn settled(&self) {
        for _ in 0..1000 {
            let stats = self.agent.stats();
            if stats.pending == 0 && self.sync.as_ref().is_some_and(|s| s.role.caught_up()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "not settled: agent {:?}, caches {:?}",
            self.agent.stats(),
            self.service().progress()
        );
    }

    /// Makes the agent look now rather than waiting for a file-system event.
    pub async fn scan(&self) {
        self.agent.scan_once().await;
    }

    pub async fn get(&self, edge: usize, path: &str) -> Got {
        let url = format!("http://{}{path}", self.edges[edge].listen);
        send(&client(), "GET", &url, &[("host", HOST)]).await
    }
}

pub fn agent_config(dir: &Path, sync: SocketAddr, key: &SecretKey) -> AgentConfig {
    AgentConfig {
        dir: dir.join("site"),
        site: "www".into(),
        name: "origin-1".into(),
        base_url: format!("http://{HOST}"),
        // By name: the agent looks it up at every connection.
        sync: format!("localhost:{}", sync.port()),
        key: key.clone(),
        state_dir: dir.join("agent"),
        rescan_interval: Duration::from_secs(2),
        debounce: Duration::from_millis(20),
        heartbeat: Duration::from_millis(200),
        max_batch: 500,
        index: "index.html".into(),
    }
}

/// `tern serve` on `site`, everything fresh for an hour: only synchronisation makes caches fresh sooner.
pub async fn start_origin(site: &Path) -> tern_origin::RunningOrigin {
    tern_origin::start(tern_origin::OriginConfig {
        root: site.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        cache_control: Some("max-age=3600".into()),
        ..tern_origin::OriginConfig::default()
    })
    .await
    .expect("origin")
}

/// A port for a server started later ([`tern_http::testsuite::free_addr`]: outside the ephemeral range).
pub fn free_addr() -> std::net::SocketAddr {
    tern_http::testsuite::free_addr()
}
