//! The content control manager (seed 004's CCM) as the rest of the service sees it: the [`Mover`] and its
//! settings. Each concern of the service is an `impl Mover` block in its own module — admission
//! ([`crate::admission`]), the scheduler loop ([`crate::dispatch`]), the job bodies ([`crate::publish`],
//! [`crate::synchronise`], [`crate::rollback`], [`crate::remove`], [`crate::checkpoint`]), delivery
//! ([`crate::delivery`]), registration ([`crate::registration`]) and the load balancer
//! ([`crate::rotation`]) — and this module holds what they share, and the status document.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use http::{Method, StatusCode};
use tern_http::tls::TlsConfig;
use tern_wire::mover::{HistoryEntry, Job, JobKind};
use tokio::sync::Notify;

use crate::delivery::Delivery;
use crate::metrics::MoverMetrics;
use crate::plan::PlanPolicy;
use crate::rotation::LoadBalancer;
use crate::schedule::Claim;
use crate::segments::Segments;
use crate::store::{Node, Site};
use crate::store_thread::{StoreError, StoreThread};
use crate::versions::SiteDir;

/// Settings of the mover.
#[derive(Debug, Clone)]
pub struct MoverConfig {
    /// API listener.
    pub listen: SocketAddr,
    /// Admin listener (`/metrics`, `/status`), if any.
    pub admin: Option<SocketAddr>,
    /// Data directory (database, keys, shadow copies, snapshots, checkpoints).
    pub data: PathBuf,
    /// How files are carried.
    pub policy: PlanPolicy,
    /// Nodes that must have a publish prepared before it is committed (`None`: all of them); see
    /// [`crate::delivery::Quorum`].
    pub quorum: Option<usize>,
    /// Timeout of one delivery to a node.
    pub delivery_timeout: Duration,
    /// Checkpoints kept per site (older ones are deleted).
    pub checkpoints_kept: usize,
    /// The load balancer in front of the nodes, told to take a stale node out of its rotation.
    pub load_balancer: Option<LoadBalancer>,
    /// Certificates: with them the API and the admin listener serve HTTPS only.
    pub tls: Option<TlsConfig>,
    /// CA certificate file (PEM) that alone vouches for nodes registered with `https://` URLs; without it
    /// the system's roots do.
    pub ca: Option<PathBuf>,
    /// The cluster key the nodes share (`tern keygen`): it authenticates the store-and-forward tree's
    /// messages (and the segment reports); without it every assignment goes by the star.
    pub cluster_key: Option<tern_wire::SecretKey>,
    /// The API token (`tern keygen` file, `--api-token`): when set, every request to the API on `listen`
    /// other than the nodes' own (registration, segment reports, the tree, which carry the cluster key or
    /// are refused) needs `Authorization: Bearer <token>`; `tern publish` and the other commands read it
    /// from the file named by `TERN_API_TOKEN_FILE`.
    pub api_token: Option<tern_wire::SecretKey>,
    /// The store-and-forward tree: when it is used (`--delivery`), its timeouts and bounds.
    pub tree: crate::tree_delivery::TreeSettings,
}

impl MoverConfig {
    /// A mover on `listen` keeping its state in `data`, with the defaults of `tern mover`: no admin
    /// listener, every node in the quorum, 10 minutes per delivery, 5 checkpoints kept, no load balancer,
    /// plain HTTP, no cluster key (deliveries by the star), no API token. Change fields with struct update
    /// syntax.
    pub fn new(listen: SocketAddr, data: impl Into<PathBuf>) -> MoverConfig {
        MoverConfig {
            listen,
            admin: None,
            data: data.into(),
            policy: PlanPolicy::default(),
            quorum: None,
            delivery_timeout: Duration::from_secs(600),
            checkpoints_kept: 5,
            load_balancer: None,
            tls: None,
            ca: None,
            cluster_key: None,
            api_token: None,
            tree: Default::default(),
        }
    }
}

/// The mover's clock: milliseconds since the Unix epoch. Decisions take this as a parameter (`now_ms`)
/// rather than reading the clock themselves.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A hosted site and the version each of its nodes holds live: what the dashboard shows, and which nodes
/// are stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    /// The site, with its published version.
    pub site: Site,
    /// Every node the site is hosted on, with the version it holds (0: none).
    pub held: BTreeMap<String, u64>,
}

impl Holding {
    /// The nodes holding another version than the published one, with the version they hold.
    pub fn stale(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.held
            .iter()
            .filter(|(_, version)| **version != self.site.sequence)
            .map(|(node, version)| (node.as_str(), *version))
    }
}

/// The content control manager.
pub struct Mover {
    pub(crate) config: MoverConfig,
    pub(crate) signing: SigningKey,
    /// The database, on its own thread.
    pub(crate) store: StoreThread,
    /// How assignments reach nodes.
    pub(crate) delivery: Arc<dyn Delivery>,
    /// The network segments and their group leaders, from the leaders' segment reports.
    pub(crate) segments: Arc<Segments>,
    /// The store-and-forward trees running now (their GLs report here) and the last ones finished.
    pub(crate) trees: Arc<crate::tree_delivery::TreeHub>,
    /// The intake of those reports: the cluster key, replay guard and counters.
    pub(crate) segment_intake: crate::registration::SegmentIntake,
    /// Guards each site's shadow copy while it is read (planning) or replaced (commit, rollback).
    shadow_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Jobs running now, with the nodes they hold.
    running: Mutex<Vec<Claim>>,
    /// Wakes the scheduler (a job was submitted or finished).
    pub(crate) wake: Notify,
    next_job: AtomicU64,
    /// When (ms since the epoch) a node was last sent a catch-up for a site: see
    /// [`crate::registration::catch_up`].
    pub(crate) last_synchronise: Mutex<HashMap<(String, String), crate::registration::CatchUpsSent>>,
    /// What each node said at its last registration it holds prepared and whole, by node, then site
    /// (version): a catch-up sends that version's commit alone. Not kept across restarts: nodes
    /// register again within their registration period.
    pub(crate) prepared: Mutex<HashMap<String, std::collections::BTreeMap<String, u64>>>,
    pub(crate) metrics: MoverMetrics,
    started: Instant,
    /// The last status document computed, for [`tern_admin::AdminRoutes::status`].
    last_status: Mutex<serde_json::Value>,
}

impl Mover {
    /// A mover working with `store` and carrying assignments with `delivery`.
    pub(crate) fn new(
        config: MoverConfig,
        signing: SigningKey,
        store: StoreThread,
        delivery: Arc<dyn Delivery>,
    ) -> Mover {
        crate::freshness::hold_as_own(&signing.to_bytes());
        for secret in [&config.cluster_key, &config.api_token].into_iter().flatten() {
            crate::freshness::hold_as_own(secret.as_bytes());
        }
        if let Some(key) = &config.policy.encryption {
            crate::freshness::hold_as_own(key);
        }
        let metrics = MoverMetrics::new();
        let trees = Arc::new(crate::tree_delivery::TreeHub::new(
            None,
            signing.clone(),
            &crate::tree_delivery::TreeSettings::default(),
            &metrics,
        ));
        Mover {
            config,
            signing,
            store,
            delivery,
            segments: Arc::new(Segments::default()),
            trees,
            segment_intake: crate::registration::SegmentIntake::default(),
            shadow_locks: Mutex::new(HashMap::new()),
            running: Mutex::new(Vec::new()),
            wake: Notify::new(),
            next_job: AtomicU64::new(0),
            last_synchronise: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            metrics,
            started: Instant::now(),
            last_status: Mutex::new(serde_json::json!({ "role": "mover" })),
        }
    }

    /// The mover with the transport's shared parts: the segment directory and the tree hub the transport
    /// ([`crate::tree_delivery::TreeDelivery`]) works with, and the metrics the hub counts into.
    pub(crate) fn with_distribution(
        mut self,
        segments: Arc<Segments>,
        trees: Arc<crate::tree_delivery::TreeHub>,
        metrics: MoverMetrics,
    ) -> Mover {
        self.segments = segments;
        self.trees = trees;
        self.metrics = metrics;
        self
    }

    /// The store-and-forward trees: running ones and the last ones finished (edges, states, bytes).
    pub fn trees(&self) -> &crate::tree_delivery::TreeHub {
        &self.trees
    }

    /// The claims of the jobs running now.
    pub(crate) fn running(&self) -> MutexGuard<'_, Vec<Claim>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock of `site`'s shadow copy.
    pub(crate) fn shadow_lock(&self, site: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.shadow_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(site.to_string())
            .or_default()
            .clone()
    }

    /// A new job id: `KIND-MS-N`.
    /// The network segments and group leaders known from segment reports.
    pub fn segments(&self) -> &Segments {
        &self.segments
    }

    pub(crate) fn new_job_id(&self, kind: JobKind, now_ms: u64) -> String {
        let n = self.next_job.fetch_add(1, Ordering::Relaxed);
        format!("{kind}-{now_ms}-{n}")
    }

    /// The mover's copies of `site`.
    pub(crate) fn site_dir(&self, site: &str) -> SiteDir {
        SiteDir::new(&self.config.data, site)
    }

    /// The mover's metrics.
    pub fn metrics(&self) -> &MoverMetrics {
        &self.metrics
    }

    /// Registered nodes (none when the database fails).
    pub async fn nodes(&self) -> Vec<Node> {
        self.store.call(|store| store.nodes()).await.unwrap_or_default()
    }

    /// Forgets node `name` (a retired server): no job targets it from now on, and a quorum of "all" no
    /// longer waits for it; written to the history log and the log. `None` when it was not known; else
    /// the content groups the operator had put it in, which it leaves ([`crate::store::Store::forget_node`]).
    /// Stop the node first: a running node registers again.
    pub async fn remove_node(&self, name: &str) -> Result<Option<Vec<String>>, String> {
        let node = name.to_string();
        let now = now_ms();
        self.prepared.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        let forgotten = self
            .store
            .call(move |store| {
                let forgotten = store.forget_node(&node)?;
                if let Some(groups) = &forgotten {
                    let left = if groups.is_empty() {
                        String::new()
                    } else {
                        format!("; it left the content groups {}", groups.join(", "))
                    };
                    store.note(None, &format!("node {node} removed by the operator{left}"), now)?;
                }
                Ok(forgotten)
            })
            .await
            .map_err(|e| e.to_string())?;
        if let Some(groups) = &forgotten {
            tracing::info!(node = %name, ?groups, "node removed by the operator");
        }
        Ok(forgotten)
    }

    /// A job's current view.
    pub async fn job(&self, id: &str) -> Option<Job> {
        let id = id.to_string();
        self.store.call(move |store| store.job(&id)).await.ok().flatten()
    }

    /// The last `limit` jobs, newest first, with their per-node state (what `GET /api/jobs` and the admin
    /// UI list).
    pub async fn jobs(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.store
            .call(move |store| Ok(store.readable_jobs(&store.job_ids(limit)?)))
            .await
    }

    /// Hosted sites.
    pub async fn sites(&self) -> Result<Vec<Site>, StoreError> {
        self.store.call(|store| store.sites()).await
    }

    /// Content groups with their members (declared by the nodes or set by the operator), by name.
    pub async fn groups(&self) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        self.store.call(|store| store.groups()).await
    }

    /// Sets the members of a content group the operator manages (the nodes' own declarations stay), at
    /// `now_ms`.
    pub async fn set_group(&self, group: &str, nodes: Vec<String>, now_ms: u64) -> Result<(), StoreError> {
        let name = group.to_string();
        let members = nodes.clone();
        self.store
            .call(move |store| store.set_group(&name, &members, now_ms))
            .await?;
        tracing::info!(%group, ?nodes, "content group set by the operator");
        Ok(())
    }

    /// The last `limit` entries of the history log, newest first.
    pub async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        self.store.call(move |store| store.history(limit)).await
    }

    /// Each hosted site with the version every node it is hosted on holds live.
    pub async fn holdings(&self) -> Result<Vec<Holding>, StoreError> {
        self.store
            .call(|store| {
                let mut holdings = Vec::new();
                for site in store.sites()? {
                    let mut held = BTreeMap::new();
                    for node in store.target_nodes(&site.target)? {
                        let version = store.node_version(&node, &site.name)?;
                        held.insert(node, version);
                    }
                    holdings.push(Holding { site, held });
                }
                Ok(holdings)
            })
            .await
    }

    /// The status document: nodes, sites, jobs not ended.
    pub async fn status(&self) -> serde_json::Value {
        let read = self
            .store
            .call(|store| Ok((store.nodes()?, store.sites()?, store.pending_count()?)))
            .await;
        let (nodes, sites, pending) = read.unwrap_or_default();
        let (reports_taken, reports_refused) = self.segment_intake.counts();
        let status = serde_json::json!({
            "role": "mover",
            "nodes": nodes,
            "sites": sites,
            "jobs_pending": pending,
            "trees": self.trees.records(),
            "tree_refused": self.trees.refused(),
            "segments": crate::registration::segment_summary(&self.segments.views()),
            "segment_reports": { "taken": reports_taken, "refused": reports_refused },
        });
        *self.last_status.lock().unwrap_or_else(|p| p.into_inner()) = status.clone();
        status
    }
}

impl tern_admin::AdminRoutes for Mover {
    /// The last status document computed; the admin listener's `GET /status` is answered by
    /// [`route`](tern_admin::AdminRoutes::route) with a fresh one, read through the store thread.
    fn status(&self) -> serde_json::Value {
        self.last_status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn registry(&self) -> &prometheus_client::registry::Registry {
        &self.metrics.registry
    }

    fn route<'a>(&'a self, request: &'a tern_admin::AdminRequest) -> Option<tern_admin::ResponseFuture<'a>> {
        if request.method != Method::GET || request.path != "/status" {
            return None;
        }
        Some(Box::pin(async move {
            let mut status = self.status().await;
            if let Some(object) = status.as_object_mut() {
                object.insert("version".into(), env!("CARGO_PKG_VERSION").into());
                object.insert("uptime_seconds".into(), self.started.elapsed().as_secs().into());
            }
            tern_admin::json(StatusCode::OK, &status)
        }))
    }
}
