//! The mover's service: the JSON API (nodes register, jobs are created and watched) and the job runner that
//! plans assignments and delivers them to nodes over HTTP in two phases — content to every node, then, once
//! a quorum has it prepared, the commit — so every node switches at once. This is the star the seed names as
//! the simplest distribution tree; the store-and-forward tree and LAN multicast come in part 2 behind the
//! same delivery step.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tern_http::Body;
use tern_http::server::{Handler, Running, ServerLimits, serve};
use tern_tree::Snapshot;
use tern_wire::assignment::{AssignmentKind, Builder, Command};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::plan::{Plan, PlanPolicy, Publication, plan_kind};
use crate::store::{Node, Store};

/// Settings of the mover.
#[derive(Debug, Clone)]
pub struct MoverConfig {
    /// API listener.
    pub listen: SocketAddr,
    /// Data directory (database, keys, shadow copies, assignments).
    pub data: PathBuf,
    /// How files are carried.
    pub policy: PlanPolicy,
    /// Nodes that must have a publish prepared before it is committed (`None`: all of them).
    pub quorum: Option<usize>,
    /// Timeout of one delivery to a node.
    pub delivery_timeout: Duration,
    /// Checkpoints kept per site (older ones are deleted).
    pub checkpoints_kept: usize,
}

/// The content control manager.
pub struct Mover {
    config: MoverConfig,
    signing: SigningKey,
    store: Mutex<Store>,
    client: Client<HttpConnector, Full<Bytes>>,
    site_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    next_job: std::sync::atomic::AtomicU64,
    /// When a node was last sent a catch-up for a site: a node that keeps failing is retried at most once per
    /// [`SYNCHRONISE_BACKOFF`], not on every registration.
    last_synchronise: Mutex<HashMap<(String, String), std::time::Instant>>,
}

/// Least time between two catch-up jobs for the same node and site.
const SYNCHRONISE_BACKOFF: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why the mover could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory, keys or database are unusable.
    #[error("mover data {path}: {reason}")]
    Data {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Starts the mover.
pub async fn start(config: MoverConfig) -> Result<Running<Arc<Mover>>, StartError> {
    let data_error = |path: &Path, reason: String| StartError::Data {
        path: path.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(&config.data).map_err(|e| data_error(&config.data, e.to_string()))?;
    let signing = crate::keys::load_or_create(&config.data).map_err(|e| data_error(&config.data, e.to_string()))?;
    let store = Store::open(&config.data.join("mover.db")).map_err(|e| data_error(&config.data, e.to_string()))?;
    let interrupted = store
        .fail_interrupted(now_ms())
        .map_err(|e| data_error(&config.data, e.to_string()))?;
    if interrupted > 0 {
        warn!(jobs = interrupted, "jobs interrupted by a restart were marked failed");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let listen = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let mover = Arc::new(Mover {
        config,
        signing,
        store: Mutex::new(store),
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        site_locks: Mutex::new(HashMap::new()),
        next_job: std::sync::atomic::AtomicU64::new(0),
        last_synchronise: Mutex::new(HashMap::new()),
    });
    let shutdown = CancellationToken::new();
    let handler = Arc::new(Api { mover: mover.clone() });
    let task = tokio::spawn(serve(listener, handler, ServerLimits::default(), shutdown.clone()));
    info!(%listen, data = %mover.config.data.display(), "mover started");
    Ok(Running::new(listen, None, mover, shutdown, vec![task]))
}

#[derive(Deserialize)]
struct Registration {
    name: String,
    url: String,
    #[serde(default)]
    free_disk: u64,
    #[serde(default)]
    versions: HashMap<String, u64>,
}

#[derive(Deserialize)]
struct JobRequest {
    kind: String,
    site: String,
    staging: Option<String>,
    checkpoint: Option<u64>,
}

#[derive(Deserialize)]
struct CheckpointRequest {
    site: String,
}

impl Mover {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn site_lock(&self, site: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.site_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(site.to_string())
            .or_default()
            .clone()
    }

    fn new_job_id(&self, kind: &str) -> String {
        let n = self.next_job.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{kind}-{}-{n}", now_ms())
    }

    fn site_dir(&self, site: &str) -> PathBuf {
        self.config.data.join("sites").join(site)
    }

    /// Registered nodes.
    pub fn nodes(&self) -> Vec<Node> {
        self.store().nodes().unwrap_or_default()
    }

    /// A job's current view, for the API.
    pub fn job(&self, id: &str) -> Option<crate::store::Job> {
        self.store().job(id).ok().flatten()
    }

    /// Creates and starts a job; returns its id.
    pub fn submit(
        self: &Arc<Self>,
        kind: &str,
        site: &str,
        staging: Option<&str>,
        only_node: Option<&str>,
    ) -> Result<String, String> {
        if site.is_empty()
            || !site
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || site.starts_with('.')
        {
            return Err(format!("`{site}` is not a plain site name"));
        }
        let nodes: Vec<String> = match only_node {
            Some(node) => vec![node.to_string()],
            None => self
                .store()
                .nodes()
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|n| n.name)
                .collect(),
        };
        if nodes.is_empty() {
            return Err("no nodes are registered; start `tern node --mover URL ...` first".into());
        }
        if kind == "publish" || kind == "restore" {
            let staging = staging.ok_or("a publish needs a staging directory (a restore a checkpoint)")?;
            if !Path::new(staging).is_dir() {
                return Err(format!("staging directory {staging} does not exist"));
            }
        }
        let id = self.new_job_id(kind);
        self.store()
            .create_job(&id, kind, site, staging, &nodes, now_ms())
            .map_err(|e| e.to_string())?;
        let mover = self.clone();
        let job = id.clone();
        let site = site.to_string();
        let kind = kind.to_string();
        tokio::spawn(async move {
            let lock = mover.site_lock(&site);
            // Jobs for the same site run one after the other; others run alongside.
            let _guard = lock.lock().await;
            let _ = mover.store().set_job_state(&job, "running", None, now_ms());
            let outcome = match kind.as_str() {
                "publish" => mover.run_publish(&job, &site, &nodes, false).await,
                "restore" => mover.run_publish(&job, &site, &nodes, true).await,
                "synchronise" => mover.run_synchronise(&job, &site, &nodes).await,
                "rollback" => mover.run_rollback(&job, &site, &nodes).await,
                other => Err(format!("unknown job kind `{other}`")),
            };
            let state = match &outcome {
                Ok(()) => "committed",
                Err(_) => "failed",
            };
            let _ = mover
                .store()
                .set_job_state(&job, state, outcome.as_ref().err().map(String::as_str), now_ms());
            info!(%job, %site, state, "job finished");
        });
        Ok(id)
    }

    /// Publishes the job's staging tree; a `restore` sends it whole (the nodes' trees start empty) and
    /// removes the unpacked checkpoint afterwards.
    async fn run_publish(
        self: &Arc<Self>,
        job: &str,
        site: &str,
        nodes: &[String],
        restore: bool,
    ) -> Result<(), String> {
        let staging = self
            .store()
            .job_staging(job)
            .map_err(|e| e.to_string())?
            .ok_or("job has no staging directory")?;
        let outcome = self.publish_tree(job, site, nodes, &staging, restore).await;
        if restore {
            let _ = std::fs::remove_dir_all(&staging);
        }
        outcome
    }

    async fn publish_tree(
        self: &Arc<Self>,
        job: &str,
        site: &str,
        nodes: &[String],
        staging: &str,
        restore: bool,
    ) -> Result<(), String> {
        let staging = staging.to_string();
        let (sequence, snapshot) = match self.store().site(site).map_err(|e| e.to_string())? {
            Some((sequence, snapshot)) => (
                sequence,
                serde_json::from_str::<Snapshot>(&snapshot).unwrap_or_default(),
            ),
            None => (0, Snapshot::new()),
        };
        let next = sequence + 1;
        let site_dir = self.site_dir(site);
        let shadow = site_dir.join("shadow");
        let (base, kind) = if restore {
            (None, AssignmentKind::Restore)
        } else {
            (Some((shadow.clone(), snapshot)), AssignmentKind::Publish)
        };
        let planned = self
            .plan_in_background(job, site, next, PathBuf::from(&staging), base, kind)
            .await?;
        info!(%job, %site, created = planned.stats.created, patched = planned.stats.patched, removed = planned.stats.removed,
              bytes = planned.stats.assignment_bytes, "publish planned");
        let prepared = self.deliver_all(job, nodes, &planned.assignment, "prepared").await;
        let quorum = self.config.quorum.unwrap_or(nodes.len()).min(nodes.len());
        if prepared.len() < quorum {
            return Err(format!(
                "{} of {} nodes prepared, {quorum} needed; nothing was switched",
                prepared.len(),
                nodes.len()
            ));
        }
        let commit = self.commit_assignment(job, site, next)?;
        let committed = self.deliver_all(job, &prepared, &commit, "committed").await;
        for node in &committed {
            let _ = self.store().set_node_version(node, site, next);
        }
        // The shadow copy becomes the published tree; the previous one is kept for rollback.
        let (staging, site_dir_owned) = (PathBuf::from(&staging), site_dir.clone());
        tokio::task::spawn_blocking(move || rotate_shadow(&site_dir_owned, &staging))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("shadow copy: {e}"))?;
        let snapshot = serde_json::to_string(&planned.snapshot).map_err(|e| e.to_string())?;
        self.store()
            .set_site(site, next, &snapshot)
            .map_err(|e| e.to_string())?;
        if committed.len() < nodes.len() {
            return Err(format!(
                "committed on {} of {} nodes; the others are brought up to date when they register again",
                committed.len(),
                nodes.len()
            ));
        }
        Ok(())
    }

    /// Creates a checkpoint of the site's published tree (a compressed full copy); keeps the newest ones.
    pub async fn checkpoint(self: &Arc<Self>, site: &str) -> Result<u64, String> {
        let Some((sequence, _)) = self.store().site(site).map_err(|e| e.to_string())? else {
            return Err(format!("site {site} was never published"));
        };
        let lock = self.site_lock(site);
        let _guard = lock.lock().await;
        let site_dir = self.site_dir(site);
        let staging_dir = site_dir.join("checkpoints").join(".new");
        let (shadow, target) = (site_dir.join("shadow"), staging_dir.clone());
        let bytes = tokio::task::spawn_blocking(move || pack_tree(&shadow, &target))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("checkpoint: {e}"))?;
        let number = self
            .store()
            .add_checkpoint(site, sequence, bytes, now_ms())
            .map_err(|e| e.to_string())?;
        std::fs::rename(&staging_dir, site_dir.join("checkpoints").join(number.to_string()))
            .map_err(|e| e.to_string())?;
        let all = self.store().checkpoints(site).map_err(|e| e.to_string())?;
        let excess = all.len().saturating_sub(self.config.checkpoints_kept.max(1));
        for (old, ..) in all.iter().take(excess) {
            let _ = std::fs::remove_dir_all(site_dir.join("checkpoints").join(old.to_string()));
            let _ = self.store().remove_checkpoint(site, *old);
        }
        info!(%site, number, sequence, bytes, "checkpoint created");
        Ok(number)
    }

    /// A site's checkpoints.
    pub fn checkpoints(&self, site: &str) -> Vec<serde_json::Value> {
        self.store()
            .checkpoints(site)
            .unwrap_or_default()
            .into_iter()
            .map(|(number, sequence, created_ms, bytes)| serde_json::json!({ "number": number, "version": sequence, "created_ms": created_ms, "bytes": bytes }))
            .collect()
    }

    /// Unpacks checkpoint `number` of `site` into a fresh directory for a restore job.
    fn unpack_checkpoint(&self, site: &str, number: u64) -> Result<String, String> {
        let packed = self.site_dir(site).join("checkpoints").join(number.to_string());
        if !packed.is_dir() {
            return Err(format!(
                "site {site} has no checkpoint {number} (see GET /api/checkpoints?site={site})"
            ));
        }
        let target = self
            .site_dir(site)
            .join(format!("restore-{}", self.new_job_id("unpack")));
        unpack_tree(&packed, &target).map_err(|e| format!("checkpoint {number}: {e}"))?;
        Ok(target.display().to_string())
    }

    async fn run_synchronise(self: &Arc<Self>, job: &str, site: &str, nodes: &[String]) -> Result<(), String> {
        let Some((sequence, _)) = self.store().site(site).map_err(|e| e.to_string())? else {
            return Err(format!("site {site} was never published"));
        };
        let shadow = self.site_dir(site).join("shadow");
        let full = self
            .plan_in_background(job, site, sequence, shadow, None, AssignmentKind::Replicate)
            .await?;
        let prepared = self.deliver_all(job, nodes, &full.assignment, "prepared").await;
        let commit = self.commit_assignment(job, site, sequence)?;
        let committed = self.deliver_all(job, &prepared, &commit, "committed").await;
        for node in &committed {
            let _ = self.store().set_node_version(node, site, sequence);
        }
        if committed.len() < nodes.len() {
            return Err("some nodes could not be brought up to date".into());
        }
        Ok(())
    }

    async fn run_rollback(self: &Arc<Self>, job: &str, site: &str, nodes: &[String]) -> Result<(), String> {
        let Some((sequence, _)) = self.store().site(site).map_err(|e| e.to_string())? else {
            return Err(format!("site {site} was never published"));
        };
        let site_dir = self.site_dir(site);
        if !site_dir.join("shadow-previous").is_dir() {
            return Err(format!("site {site} has no previous version to roll back to"));
        }
        let mut builder = Builder::new(
            job,
            AssignmentKind::Rollback,
            site,
            sequence.saturating_sub(1),
            None,
            now_ms(),
        );
        builder.command(Command::Rollback);
        let assignment = builder
            .finish(&self.signing, self.config.policy.encryption.as_ref())
            .map_err(|e| e.to_string())?;
        let done = self.deliver_all(job, nodes, &assignment, "committed").await;
        let previous = site_dir.join("shadow-previous");
        let snapshot = tokio::task::spawn_blocking(move || -> std::io::Result<Snapshot> {
            let current = site_dir.join("shadow");
            let swap = site_dir.join("shadow-swap");
            std::fs::rename(&current, &swap)?;
            std::fs::rename(&previous, &current)?;
            std::fs::rename(&swap, &previous)?;
            tern_tree::scan(&current, &Snapshot::new())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let snapshot = serde_json::to_string(&snapshot).map_err(|e| e.to_string())?;
        self.store()
            .set_site(site, sequence.saturating_sub(1), &snapshot)
            .map_err(|e| e.to_string())?;
        for node in &done {
            let _ = self.store().set_node_version(node, site, sequence.saturating_sub(1));
        }
        if done.len() < nodes.len() {
            return Err(format!("rolled back on {} of {} nodes", done.len(), nodes.len()));
        }
        Ok(())
    }

    /// Plans an assignment on a blocking thread. `base` is the shadow copy and its snapshot to diff
    /// against; without one every file is sent whole (a full copy: the node's tree starts empty).
    async fn plan_in_background(
        &self,
        job: &str,
        site: &str,
        sequence: u64,
        staging: PathBuf,
        base: Option<(PathBuf, Snapshot)>,
        kind: AssignmentKind,
    ) -> Result<Plan, String> {
        let (signing, policy, site, job) = (
            self.signing.clone(),
            self.config.policy.clone(),
            site.to_string(),
            job.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            let publication = Publication {
                id: &job,
                site: &site,
                sequence,
                created_ms: now_ms(),
            };
            // An empty snapshot makes every file new, so the shadow path is never read for a full copy.
            let (shadow, snapshot) = base.unwrap_or_else(|| (PathBuf::new(), Snapshot::new()));
            plan_kind(&staging, &shadow, &snapshot, &publication, &policy, &signing, kind)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    fn commit_assignment(&self, job: &str, site: &str, sequence: u64) -> Result<Vec<u8>, String> {
        let mut builder = Builder::new(job, AssignmentKind::Publish, site, sequence, None, now_ms());
        builder.command(Command::Commit);
        builder
            .finish(&self.signing, self.config.policy.encryption.as_ref())
            .map_err(|e| e.to_string())
    }

    /// Sends `assignment` to every node at once; returns the nodes that applied it.
    async fn deliver_all(
        self: &Arc<Self>,
        job: &str,
        nodes: &[String],
        assignment: &[u8],
        success_state: &str,
    ) -> Vec<String> {
        let urls: HashMap<String, String> = self
            .store()
            .nodes()
            .unwrap_or_default()
            .into_iter()
            .map(|n| (n.name, n.url))
            .collect();
        let body = Bytes::copy_from_slice(assignment);
        let mut tasks = Vec::new();
        for node in nodes {
            let Some(url) = urls.get(node).cloned() else { continue };
            let (mover, body, node) = (self.clone(), body.clone(), node.clone());
            tasks.push(tokio::spawn(async move {
                let outcome = mover.deliver(&url, body.clone()).await;
                (node, body.len() as u64, outcome)
            }));
        }
        let mut done = Vec::new();
        for task in tasks {
            let Ok((node, bytes, outcome)) = task.await else {
                continue;
            };
            match outcome {
                Ok(()) => {
                    let _ = self.store().set_job_node(job, &node, success_state, bytes, None);
                    done.push(node);
                }
                Err(error) => {
                    warn!(%job, %node, %error, "delivery failed");
                    let _ = self.store().set_job_node(job, &node, "failed", bytes, Some(&error));
                }
            }
        }
        done
    }

    async fn deliver(&self, url: &str, body: Bytes) -> Result<(), String> {
        let request = Request::post(format!("{}/assignments", url.trim_end_matches('/')))
            .header("content-type", "application/octet-stream")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(self.config.delivery_timeout, self.client.request(request))
            .await
            .map_err(|_| "node did not answer in time".to_string())?
            .map_err(|e| {
                format!(
                    "node unreachable: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or(e.to_string())
                )
            })?;
        let status = response.status();
        let text = response
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("node refused ({status}): {}", text.trim()))
        }
    }

    fn register(self: &Arc<Self>, registration: Registration) -> Result<serde_json::Value, String> {
        let node = Node {
            name: registration.name.clone(),
            url: registration.url,
            last_seen_ms: now_ms(),
            free_disk: registration.free_disk,
        };
        let versions: Vec<(String, u64)> = registration.versions.into_iter().collect();
        self.store().register(&node, &versions).map_err(|e| e.to_string())?;
        // A node that is behind (it was down, or a delivery failed) is brought up to date by itself.
        let sites: Vec<(String, u64)> = {
            let store = self.store();
            let names = site_names(&self.config.data);
            names
                .into_iter()
                .filter_map(|site| store.site(&site).ok().flatten().map(|(sequence, _)| (site, sequence)))
                .collect()
        };
        let mut started = Vec::new();
        for (site, sequence) in sites {
            let held = self.store().node_version(&node.name, &site).unwrap_or(0);
            let busy = self.site_lock(&site).try_lock().is_err();
            let recently = {
                let last = self.last_synchronise.lock().unwrap_or_else(|p| p.into_inner());
                last.get(&(node.name.clone(), site.clone()))
                    .is_some_and(|at| at.elapsed() < SYNCHRONISE_BACKOFF)
            };
            if held != sequence
                && !busy
                && !recently
                && let Ok(id) = self.submit("synchronise", &site, None, Some(&node.name))
            {
                self.last_synchronise
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((node.name.clone(), site.clone()), std::time::Instant::now());
                info!(node = %node.name, %site, held, sequence, job = %id, "node is behind; synchronising it");
                started.push(id);
            }
        }
        Ok(serde_json::json!({ "registered": node.name, "synchronising": started }))
    }
}

fn site_names(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("sites"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Copies a tree with every file zstd-compressed (`<name>.zst`); returns the bytes written.
fn pack_tree(from: &Path, to: &Path) -> std::io::Result<u64> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    let mut written = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let name = entry.file_name();
        if kind.is_dir() {
            written += pack_tree(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            let packed = zstd::bulk::compress(&std::fs::read(entry.path())?, 9)?;
            written += packed.len() as u64;
            let mut target = name.clone();
            target.push(".zst");
            std::fs::write(to.join(target), packed)?;
        }
    }
    Ok(written)
}

/// The inverse of [`pack_tree`].
fn unpack_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let name = entry.file_name();
        if kind.is_dir() {
            unpack_tree(&entry.path(), &to.join(&name))?;
        } else if let Some(original) = name.to_str().and_then(|n| n.strip_suffix(".zst")) {
            let mut decoder = zstd::stream::read::Decoder::new(std::fs::File::open(entry.path())?)?;
            let mut file = std::fs::File::create(to.join(original))?;
            std::io::copy(&mut decoder, &mut file)?;
        }
    }
    Ok(())
}

/// Makes `staging`'s tree the shadow copy, keeping the previous shadow as `shadow-previous`.
fn rotate_shadow(site_dir: &Path, staging: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(site_dir)?;
    let fresh = site_dir.join("shadow-new");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh)?;
    }
    copy_tree(staging, &fresh)?;
    let shadow = site_dir.join("shadow");
    let previous = site_dir.join("shadow-previous");
    if shadow.exists() {
        if previous.exists() {
            std::fs::remove_dir_all(&previous)?;
        }
        std::fs::rename(&shadow, &previous)?;
    }
    std::fs::rename(&fresh, &shadow)
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

struct Api {
    mover: Arc<Mover>,
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    tern_admin::json(status, &value)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    tern_admin::json_error(status, message)
}

impl Handler for Api {
    async fn call(&self, request: Request<Incoming>, _client: SocketAddr) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, 1 << 20).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB"),
        };
        let path = parts.uri.path();
        let mover = &self.mover;
        match (&parts.method, path) {
            (&Method::POST, "/api/nodes/register") => match serde_json::from_slice::<Registration>(&body) {
                Ok(registration) => match mover.register(registration) {
                    Ok(value) => json(StatusCode::OK, value),
                    Err(message) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
                },
                Err(e) => error(
                    StatusCode::BAD_REQUEST,
                    format!("registration must be {{\"name\", \"url\", \"versions\"}}: {e}"),
                ),
            },
            (&Method::GET, "/api/nodes") => json(
                StatusCode::OK,
                serde_json::json!(mover.store().nodes().unwrap_or_default()),
            ),
            (&Method::POST, "/api/checkpoints") => match serde_json::from_slice::<CheckpointRequest>(&body) {
                Ok(request) => match mover.checkpoint(&request.site).await {
                    Ok(number) => json(
                        StatusCode::OK,
                        serde_json::json!({ "site": request.site, "number": number }),
                    ),
                    Err(message) => error(StatusCode::BAD_REQUEST, message),
                },
                Err(e) => error(
                    StatusCode::BAD_REQUEST,
                    format!("a checkpoint request is {{\"site\"}}: {e}"),
                ),
            },
            (&Method::GET, "/api/checkpoints") => {
                let site = parts
                    .uri
                    .query()
                    .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("site=")))
                    .unwrap_or("");
                json(StatusCode::OK, serde_json::json!(mover.checkpoints(site)))
            }
            (&Method::POST, "/api/jobs") => match serde_json::from_slice::<JobRequest>(&body) {
                Ok(request) if request.kind == "restore" => {
                    let Some(number) = request.checkpoint else {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "a restore names a checkpoint: {\"kind\": \"restore\", \"site\", \"checkpoint\": N}",
                        );
                    };
                    match mover
                        .unpack_checkpoint(&request.site, number)
                        .and_then(|dir| mover.submit("restore", &request.site, Some(&dir), None))
                    {
                        Ok(id) => json(StatusCode::ACCEPTED, serde_json::json!({ "id": id })),
                        Err(message) => error(StatusCode::BAD_REQUEST, message),
                    }
                }
                Ok(request) => match mover.submit(&request.kind, &request.site, request.staging.as_deref(), None) {
                    Ok(id) => json(StatusCode::ACCEPTED, serde_json::json!({ "id": id })),
                    Err(message) => error(StatusCode::BAD_REQUEST, message),
                },
                Err(e) => error(
                    StatusCode::BAD_REQUEST,
                    format!("a job is {{\"kind\": \"publish\"|\"rollback\", \"site\", \"staging\"}}: {e}"),
                ),
            },
            (&Method::GET, "/api/jobs") => {
                let ids = mover.store().job_ids(100).unwrap_or_default();
                let jobs: Vec<_> = ids.iter().filter_map(|id| mover.job(id)).collect();
                json(StatusCode::OK, serde_json::json!(jobs))
            }
            (&Method::GET, _) if path.starts_with("/api/jobs/") => match mover.job(&path["/api/jobs/".len()..]) {
                Some(job) => json(StatusCode::OK, serde_json::json!(job)),
                None => error(StatusCode::NOT_FOUND, "no such job"),
            },
            (&Method::GET, "/status") => json(
                StatusCode::OK,
                serde_json::json!({ "role": "mover", "nodes": mover.store().nodes().unwrap_or_default().len(), "sites": site_names(&mover.config.data) }),
            ),
            _ => error(StatusCode::NOT_FOUND, format!("no endpoint {} {path}", parts.method)),
        }
    }
}
