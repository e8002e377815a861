//! The mover's service: the scheduler loop that starts due jobs (deciding conflicts with
//! [`crate::schedule::decide`]), the job runners, and the delivery of assignments to nodes over HTTP in two
//! phases — content to every node, then, once a quorum has it prepared, the commit — so every node switches
//! at once. This is the star the seed names as the simplest distribution tree; the store-and-forward tree
//! and LAN multicast come in part 2 behind the same delivery step ([`Mover::deliver_all`]).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http::Request;
use http_body_util::{BodyExt, Full};
use tern_http::server::{Running, ServerLimits};
use tern_http::tls::{CertStore, ClientTls, HttpsClient, TlsConfig, TlsError};
use tern_tree::Snapshot;
use tern_wire::assignment::{AssignmentKind, Builder, Command};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::MoverMetrics;
use crate::plan::{Plan, PlanPolicy, Publication, plan_site};
use crate::rotation::{LoadBalancer, Rotation, in_rotation};
use crate::rules::Rules;
use crate::schedule::{Claim, ConflictPolicy, Decision, JobSpec, Target, decide};
use crate::store::{Job, Node, Site, SnapshotRecord, Store};
use crate::versions::{SiteDir, unpack_tree};

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
    /// Nodes that must have a publish prepared before it is committed (`None`: all of them).
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
}

/// The content control manager.
pub struct Mover {
    config: MoverConfig,
    signing: SigningKey,
    store: Mutex<Store>,
    client: HttpsClient<Full<Bytes>>,
    /// Guards each site's shadow copy while it is read (planning) or replaced (commit, rollback).
    shadow_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Jobs running now, with the nodes they hold.
    running: Mutex<Vec<Claim>>,
    /// Wakes the scheduler (a job was submitted or finished).
    wake: Notify,
    next_job: std::sync::atomic::AtomicU64,
    /// When a node was last sent a catch-up for a site: a node that keeps failing is retried at most once per
    /// [`SYNCHRONISE_BACKOFF`], not on every registration.
    last_synchronise: Mutex<HashMap<(String, String), std::time::Instant>>,
    metrics: MoverMetrics,
}

/// Least time between two catch-up jobs for the same node and site.
const SYNCHRONISE_BACKOFF: Duration = Duration::from_secs(60);

/// Longest the scheduler sleeps between looks at the schedule.
const SCHEDULER_TICK: Duration = Duration::from_millis(500);

pub(crate) fn now_ms() -> u64 {
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
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] tern_admin::BindError),
    /// The certificates or the CA file could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request is not valid.
    #[error("{0}")]
    Invalid(String),
    /// It conflicts with a running job and its policy is `refuse`.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("mover database: {0}")]
    Store(#[from] rusqlite::Error),
}

/// Starts the mover: its API, its admin listener and its scheduler.
pub async fn start(config: MoverConfig) -> Result<Running<Arc<Mover>>, StartError> {
    let data_error = |path: &Path, reason: String| StartError::Data {
        path: path.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(&config.data).map_err(|e| data_error(&config.data, e.to_string()))?;
    let signing = crate::keys::load_or_create(&config.data).map_err(|e| data_error(&config.data, e.to_string()))?;
    let store = Store::open(&config.data.join("mover.db")).map_err(|e| data_error(&config.data, e.to_string()))?;
    let (resumed, failed) = store
        .recover_interrupted(now_ms())
        .map_err(|e| data_error(&config.data, e.to_string()))?;
    if resumed + failed > 0 {
        warn!(
            resumed,
            failed, "jobs interrupted by a restart: retried where their policy allows, failed otherwise"
        );
    }
    let certs = match config.tls.clone() {
        Some(tls) => Some(CertStore::load(tls)?),
        None => None,
    };
    let client_tls = ClientTls::new(config.ca.as_deref())?;
    let mover = Arc::new(Mover {
        config: config.clone(),
        signing,
        store: Mutex::new(store),
        client: client_tls.client(),
        shadow_locks: Mutex::new(HashMap::new()),
        running: Mutex::new(Vec::new()),
        wake: Notify::new(),
        next_job: std::sync::atomic::AtomicU64::new(0),
        last_synchronise: Mutex::new(HashMap::new()),
        metrics: MoverMetrics::new(),
    });
    let api = Arc::new(crate::api::Api::new(mover.clone()));
    let routes = mover.clone();
    let mut running = tern_admin::launch(
        config.listen,
        api,
        ServerLimits::default(),
        config.admin,
        move |_| routes,
        mover.clone(),
        tern_admin::RoleTls::from_store(certs),
    )
    .await?;
    running.spawn(scheduler(mover.clone(), running.shutdown_token()));
    info!(listen = %running.listen, admin = ?running.admin, data = %config.data.display(), "mover started");
    Ok(running)
}

/// Starts due jobs until shutdown.
async fn scheduler(mover: Arc<Mover>, shutdown: CancellationToken) {
    loop {
        mover.dispatch();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = mover.wake.notified() => {}
            _ = tokio::time::sleep(SCHEDULER_TICK) => {}
        }
    }
}

impl Mover {
    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shadow_lock(&self, site: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.shadow_locks
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

    fn site_dir(&self, site: &str) -> SiteDir {
        SiteDir::new(&self.config.data, site)
    }

    /// The mover's metrics.
    pub fn metrics(&self) -> &MoverMetrics {
        &self.metrics
    }

    /// Registered nodes.
    pub fn nodes(&self) -> Vec<Node> {
        self.store().nodes().unwrap_or_default()
    }

    /// A job's current view.
    pub fn job(&self, id: &str) -> Option<Job> {
        self.store().job(id).ok().flatten()
    }

    /// The nodes a job is for, now.
    fn resolve(&self, spec: &JobSpec) -> Result<BTreeSet<String>, rusqlite::Error> {
        if !spec.uses_nodes() {
            return Ok(BTreeSet::new());
        }
        let store = self.store();
        let target = match &spec.target {
            Some(target) => target.clone(),
            None => store.site(&spec.site)?.map(|s| s.target).unwrap_or_default(),
        };
        store.target_nodes(&target)
    }

    fn claim(&self, id: &str, spec: &JobSpec, nodes: BTreeSet<String>) -> Claim {
        Claim {
            job: id.to_string(),
            site: spec.site.clone(),
            changes_version: spec.changes_version(),
            nodes,
            on_conflict: spec.on_conflict,
        }
    }

    /// Accepts a job due at `due_ms` (now or earlier: as soon as it does not conflict); returns its id.
    pub fn submit(&self, spec: JobSpec, due_ms: u64) -> Result<String, SubmitError> {
        spec.validate().map_err(SubmitError::Invalid)?;
        if let Some(staging) = &spec.staging
            && spec.kind == "publish"
            && !Path::new(staging).is_dir()
        {
            return Err(SubmitError::Invalid(format!(
                "staging directory {staging} does not exist (on the mover's machine)"
            )));
        }
        let site = self.store().site(&spec.site)?;
        if site.is_none() && !matches!(spec.kind.as_str(), "publish") {
            return Err(SubmitError::Invalid(format!(
                "site {} was never published; publish it first",
                spec.site
            )));
        }
        if let Some(number) = spec.checkpoint
            && !self.site_dir(&spec.site).checkpoint(number).is_dir()
        {
            return Err(SubmitError::Invalid(format!(
                "site {} has no checkpoint {number} (see GET /api/checkpoints?site={})",
                spec.site, spec.site
            )));
        }
        if let Some(Target::Group(group)) = &spec.target
            && self.store().target_nodes(&Target::Group(group.clone()))?.is_empty()
        {
            return Err(SubmitError::Invalid(format!(
                "group {group} has no registered nodes (nodes join with `tern node --group {group}`, or PUT /api/groups/{group})"
            )));
        }
        let now = now_ms();
        if due_ms <= now && spec.on_conflict == ConflictPolicy::Refuse {
            let claim = self.claim("new", &spec, self.resolve(&spec)?);
            let running = self.running.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some((_, Decision::Refuse(other))) = decide(&running, &[claim]).pop() {
                return Err(SubmitError::Conflict(format!(
                    "job {other} is running for {} on the same nodes; this job's policy is to refuse (use on_conflict \"queue\" to wait)",
                    spec.site
                )));
            }
        }
        let id = self.new_job_id(&spec.kind);
        self.store().create_job(&id, &spec, due_ms.max(now), now)?;
        self.wake.notify_one();
        Ok(id)
    }

    /// Cancels a job that has not started (a repeating job's next run ends the series).
    pub fn cancel(&self, id: &str) -> Result<(), SubmitError> {
        let Some(job) = self.job(id) else {
            return Err(SubmitError::Invalid(format!("no job {id}")));
        };
        match job.state.as_str() {
            "scheduled" | "queued" => {
                self.store()
                    .set_job_state(id, "cancelled", Some("cancelled by the operator"), now_ms())?;
                Ok(())
            }
            "running" => Err(SubmitError::Conflict(format!(
                "job {id} is running; it commits or fails within the delivery timeout"
            ))),
            state => Err(SubmitError::Conflict(format!("job {id} has already ended ({state})"))),
        }
    }

    /// Starts the jobs that are due and do not conflict with running ones.
    fn dispatch(self: &Arc<Self>) {
        let now = now_ms();
        let pending = match self.store().pending_jobs() {
            Ok(pending) => pending,
            Err(error) => {
                warn!(%error, "cannot read the schedule");
                return;
            }
        };
        let mut due = Vec::new();
        let mut claims = Vec::new();
        for job in pending {
            if job.state == "running" || job.due_ms > now {
                continue;
            }
            match self.resolve(&job.spec) {
                Ok(nodes) => {
                    claims.push(self.claim(&job.id, &job.spec, nodes));
                    due.push(job);
                }
                Err(error) => warn!(job = %job.id, %error, "cannot resolve the job's nodes"),
            }
        }
        if due.is_empty() {
            return;
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let decisions = decide(&running, &claims);
        for ((job, claim), (_, decision)) in due.into_iter().zip(claims).zip(decisions) {
            match decision {
                Decision::Start if job.spec.uses_nodes() && claim.nodes.is_empty() => {
                    let _ = self.store().set_job_state(
                        &job.id,
                        "failed",
                        Some("no registered nodes to run on; start `tern node --mover URL ...` first"),
                        now,
                    );
                    self.metrics.job(&job.spec.kind, "failed");
                    self.schedule_repeat(&job);
                }
                Decision::Start => {
                    if let Err(error) = self.store().start_job(&job.id, &claim.nodes, now) {
                        warn!(job = %job.id, %error, "cannot start the job");
                        continue;
                    }
                    let nodes: Vec<String> = claim.nodes.iter().cloned().collect();
                    running.push(claim);
                    let mover = self.clone();
                    tokio::spawn(async move { mover.execute(job, nodes).await });
                }
                Decision::Wait(other) => {
                    let _ = self
                        .store()
                        .queue_job(&job.id, &format!("waiting for job {other}"), now);
                }
                Decision::Refuse(other) => {
                    let reason = format!("refused: job {other} was running for the same site and nodes");
                    let _ = self.store().set_job_state(&job.id, "refused", Some(&reason), now);
                    self.metrics.job(&job.spec.kind, "refused");
                    self.schedule_repeat(&job);
                }
            }
        }
        self.metrics.jobs_running.set(running.len() as i64);
    }

    /// Runs one try of a job and records how it ended: committed, failed, or back on the schedule for a
    /// retry; a repeating job's next run is scheduled once this one has ended.
    async fn execute(self: Arc<Self>, job: Job, nodes: Vec<String>) {
        let (id, site) = (job.id.as_str(), job.spec.site.as_str());
        info!(job = %id, kind = %job.spec.kind, %site, nodes = nodes.len(), attempt = job.attempt + 1, "job running");
        let outcome = match job.spec.kind.as_str() {
            "publish" => self.run_publish(&job, &nodes).await,
            "restore" => self.run_restore(&job, &nodes).await,
            "synchronise" => self.run_synchronise(id, site, &nodes, false).await,
            "replicate" => self.run_synchronise(id, site, &nodes, true).await,
            "rollback" => self.run_rollback(id, site, &nodes).await,
            "remove" => self.run_remove(id, site, &nodes).await,
            "checkpoint" => self.checkpoint(site).await.map(|_| ()),
            other => Err(format!("unknown job kind `{other}`")),
        };
        self.update_rotation(id, &nodes).await;
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|claim| claim.job != id);
        let now = now_ms();
        let attempts = job.attempt + 1;
        match outcome {
            Ok(()) => {
                let _ = self.store().set_job_state(id, "committed", None, now);
                self.metrics.job(&job.spec.kind, "committed");
                info!(job = %id, %site, "job committed");
                self.schedule_repeat(&job);
            }
            Err(error) if attempts <= job.spec.retries => {
                let due = now + job.spec.retry_delay_s * 1000;
                let _ = self.store().retry_job(id, &error, due, now);
                self.metrics.job(&job.spec.kind, "retried");
                warn!(job = %id, %site, %error, attempt = attempts, retries = job.spec.retries, "job failed; tried again later");
            }
            Err(error) => {
                let _ = self.store().set_job_state(id, "failed", Some(&error), now);
                self.metrics.job(&job.spec.kind, "failed");
                warn!(job = %id, %site, %error, "job failed");
                self.schedule_repeat(&job);
            }
        }
        self.wake.notify_one();
    }

    /// Tells the load balancer which of `nodes` serve: a node holding a stale version of a site it hosts
    /// (a delivery failed, or it was down) is taken out of the rotation until a catch-up brings it up to
    /// date. Runs after every job, before the job is reported finished.
    async fn update_rotation(&self, job: &str, nodes: &[String]) {
        let Some(balancer) = &self.config.load_balancer else {
            return;
        };
        for node in nodes {
            let (rotation, stale) = {
                let store = self.store();
                let mut hosted = Vec::new();
                let mut stale = Vec::new();
                for site in store.sites().unwrap_or_default() {
                    if !store.target_nodes(&site.target).unwrap_or_default().contains(node) {
                        continue;
                    }
                    let held = store.node_version(node, &site.name).unwrap_or(0);
                    if held != site.sequence {
                        stale.push(format!("{} (holds {held}, current {})", site.name, site.sequence));
                    }
                    hosted.push((site.sequence, held));
                }
                (in_rotation(&hosted), stale)
            };
            let outcome = balancer.set(node, rotation).await;
            self.metrics.rotation(rotation, outcome.is_ok());
            match (outcome, rotation) {
                (Ok(()), Rotation::In) => debug!(%job, %node, "node in the load balancer's rotation"),
                (Ok(()), Rotation::Out) => {
                    let message = format!(
                        "{node} taken out of the load balancer's rotation: stale {}",
                        stale.join(", ")
                    );
                    warn!(%job, %node, stale = %stale.join(", "), "node taken out of the load balancer's rotation");
                    let _ = self.store().note(Some(job), &message, now_ms());
                }
                (Err(error), _) => warn!(%job, %node, %error, "the load balancer was not updated"),
            }
        }
    }

    /// Schedules the next run of a repeating job, at the first multiple of its period after now.
    fn schedule_repeat(&self, job: &Job) {
        let Some(every) = job.spec.every_s.map(|s| s.max(1) * 1000) else {
            return;
        };
        let now = now_ms();
        let mut next = job.due_ms + every;
        if next <= now {
            next += (now - next) / every * every + every;
        }
        let id = self.new_job_id(&job.spec.kind);
        match self.store().create_job(&id, &job.spec, next, now) {
            Ok(()) => {
                info!(job = %id, after = %job.id, in_s = (next - now) / 1000, "next run of a repeating job scheduled")
            }
            Err(error) => warn!(job = %job.id, %error, "cannot schedule the next run of a repeating job"),
        }
    }

    async fn run_publish(self: &Arc<Self>, job: &Job, nodes: &[String]) -> Result<(), String> {
        let staging = job.spec.staging.clone().ok_or("a publish needs a staging directory")?;
        if !Path::new(&staging).is_dir() {
            return Err(format!("staging directory {staging} does not exist"));
        }
        let rules = job.spec.rules.clone();
        self.publish_tree(job, nodes, PathBuf::from(staging), false, rules)
            .await
    }

    /// A restore publishes the checkpoint's tree whole (the nodes' trees start empty) as a new version.
    async fn run_restore(self: &Arc<Self>, job: &Job, nodes: &[String]) -> Result<(), String> {
        let number = job.spec.checkpoint.ok_or("a restore names a checkpoint")?;
        let site_dir = self.site_dir(&job.spec.site);
        let packed = site_dir.checkpoint(number);
        let unpacked = site_dir.path().join(format!("restore-{}", job.id));
        let target = unpacked.clone();
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&target);
            unpack_tree(&packed, &target)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("checkpoint {number}: {e}"))?;
        let outcome = self
            .publish_tree(job, nodes, unpacked.clone(), true, Some(Rules::default()))
            .await;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&unpacked)).await;
        outcome
    }

    async fn publish_tree(
        self: &Arc<Self>,
        job: &Job,
        nodes: &[String],
        staging: PathBuf,
        restore: bool,
        rules: Option<Rules>,
    ) -> Result<(), String> {
        let (id, name) = (job.id.as_str(), job.spec.site.as_str());
        let site = self.store().site(name).map_err(|e| e.to_string())?;
        let mut site = site.unwrap_or_else(|| Site {
            name: name.to_string(),
            sequence: 0,
            previous: 0,
            high: 0,
            target: Target::All,
            rules: Rules::default(),
            snapshot: String::new(),
        });
        let rules = rules.unwrap_or_else(|| site.rules.clone());
        let published: Snapshot = serde_json::from_str(&site.snapshot).unwrap_or_default();
        let next = site.next_version();
        let site_dir = self.site_dir(name);
        let kind = if restore {
            AssignmentKind::Restore
        } else {
            AssignmentKind::Publish
        };
        let planned = {
            let lock = self.shadow_lock(name);
            let _guard = lock.lock().await;
            let base = if restore { Snapshot::new() } else { published.clone() };
            self.plan_in_background(id, name, next, staging.clone(), base, kind, rules.clone())
                .await?
        };
        info!(job = %id, site = %name, version = next, created = planned.stats.created, patched = planned.stats.patched,
              removed = planned.stats.removed, bytes = planned.stats.assignment_bytes, "publish planned");
        // The next shadow copy is built while the nodes prepare (only this job changes the site's version,
        // and the shadow copy it links from changes only under the lock, at the commit below).
        let (dir, snapshot, from) = (site_dir.clone(), planned.snapshot.clone(), staging.clone());
        let staged = tokio::task::spawn_blocking(move || dir.stage_next(&from, &published, &snapshot));
        let assignment = Bytes::from(planned.assignment);
        let prepared = self.deliver_all(id, nodes, assignment.clone(), "prepared").await;
        let staged = staged
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| format!("shadow copy: {e}")));
        let quorum = self.config.quorum.unwrap_or(nodes.len()).min(nodes.len());
        let refused = match staged {
            Err(error) => Some(format!("{error}; nothing was switched")),
            Ok(()) if prepared.len() < quorum => Some(format!(
                "{} of {} nodes prepared, {quorum} needed; nothing was switched",
                prepared.len(),
                nodes.len()
            )),
            Ok(()) => None,
        };
        if let Some(refused) = refused {
            let dir = site_dir.clone();
            let _ = tokio::task::spawn_blocking(move || dir.discard_next()).await;
            return Err(refused);
        }
        let commit = self.commit_assignment(id, name, next)?;
        let committed = self.deliver_all(id, &prepared, commit, "committed").await;
        {
            let lock = self.shadow_lock(name);
            let _guard = lock.lock().await;
            let dir = site_dir.clone();
            let superseded = tokio::task::spawn_blocking(move || dir.promote_next())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("shadow copy: {e}"))?;
            // The tree before the previous one is deleted after the job, not before it reports.
            tokio::task::spawn_blocking(move || {
                for tree in superseded {
                    let _ = std::fs::remove_dir_all(tree);
                }
            });
            if !restore && site.sequence != 0 {
                // The snapshot of this version: with it, a node one or a few versions behind is brought up
                // to date with the deltas rather than a full copy. A first publish has no base a node could
                // hold (a node without the site gets a full copy), so it is not kept.
                let (dir, bytes) = (site_dir.clone(), assignment.clone());
                let saved = tokio::task::spawn_blocking(move || dir.save_snapshot(next, &bytes))
                    .await
                    .map_err(|e| e.to_string())?;
                match saved {
                    Ok(()) => {
                        let record = SnapshotRecord {
                            sequence: next,
                            base: site.sequence,
                            job: id.to_string(),
                            bytes: assignment.len() as u64,
                            created_ms: now_ms(),
                        };
                        let _ = self.store().add_snapshot(name, &record);
                    }
                    Err(error) => warn!(site = %name, version = next, %error, "snapshot not kept"),
                }
            }
            site.previous = site.sequence;
            site.sequence = next;
            site.high = next;
            site.rules = rules;
            if let Some(target) = &job.spec.target
                && !matches!(target, Target::Node(_))
            {
                site.target = target.clone();
            }
            site.snapshot = serde_json::to_string(&planned.snapshot).map_err(|e| e.to_string())?;
            let store = self.store();
            store.save_site(&site).map_err(|e| e.to_string())?;
            for node in &committed {
                let _ = store.set_node_version(node, name, next);
            }
        }
        if committed.len() < nodes.len() {
            return Err(format!(
                "committed on {} of {} nodes; the others are brought up to date when they register again",
                committed.len(),
                nodes.len()
            ));
        }
        Ok(())
    }

    /// Creates a checkpoint of the site's published tree (a compressed full copy); keeps the newest ones and
    /// forgets the snapshots it covers.
    pub async fn checkpoint(&self, name: &str) -> Result<u64, String> {
        let Some(site) = self.store().site(name).map_err(|e| e.to_string())? else {
            return Err(format!("site {name} was never published"));
        };
        let lock = self.shadow_lock(name);
        let _guard = lock.lock().await;
        let site_dir = self.site_dir(name);
        let number = self
            .store()
            .checkpoints(name)
            .map_err(|e| e.to_string())?
            .last()
            .map_or(1, |(n, ..)| n + 1);
        let dir = site_dir.clone();
        let bytes = tokio::task::spawn_blocking(move || dir.create_checkpoint(number))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("checkpoint: {e}"))?;
        let dropped: Vec<u64> = {
            let store = self.store();
            store
                .add_checkpoint(name, number, site.sequence, bytes, now_ms())
                .map_err(|e| e.to_string())?;
            let _ = store.drop_snapshots_through(name, site.sequence);
            let all = store.checkpoints(name).map_err(|e| e.to_string())?;
            let excess = all.len().saturating_sub(self.config.checkpoints_kept.max(1));
            let dropped: Vec<u64> = all.iter().take(excess).map(|(old, ..)| *old).collect();
            for old in &dropped {
                let _ = store.remove_checkpoint(name, *old);
            }
            dropped
        };
        let (dir, sequence) = (site_dir.clone(), site.sequence);
        let _ = tokio::task::spawn_blocking(move || {
            dir.drop_snapshots_through(sequence);
            for old in dropped {
                let _ = std::fs::remove_dir_all(dir.checkpoint(old));
            }
        })
        .await;
        info!(site = %name, number, version = site.sequence, bytes, "checkpoint created");
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

    /// Brings nodes to the published version. A node whose version is the base of a chain of snapshots
    /// gets those deltas, one version after the other; any other (or every one, for a `replicate`) gets a
    /// full copy. Nodes already at the version are left alone.
    async fn run_synchronise(
        self: &Arc<Self>,
        job: &str,
        name: &str,
        nodes: &[String],
        full: bool,
    ) -> Result<(), String> {
        let Some(site) = self.store().site(name).map_err(|e| e.to_string())? else {
            return Err(format!("site {name} was never published"));
        };
        let site_dir = self.site_dir(name);
        let snapshots = self.store().snapshots(name).map_err(|e| e.to_string())?;
        let mut whole = Vec::new();
        let mut current = Vec::new();
        for node in nodes {
            let held = self.store().node_version(node, name).map_err(|e| e.to_string())?;
            if held == site.sequence && !full {
                let _ = self.store().set_job_node(job, node, "committed", 0, None);
                current.push(node.clone());
                continue;
            }
            let chain = if full {
                None
            } else {
                chain(&snapshots, held, site.sequence)
            };
            match chain {
                Some(chain) if self.deliver_chain(job, name, node, &site_dir, &chain).await => {
                    current.push(node.clone())
                }
                _ => whole.push(node.clone()),
            }
        }
        if !whole.is_empty() {
            let full_copy = {
                let lock = self.shadow_lock(name);
                let _guard = lock.lock().await;
                self.plan_in_background(
                    job,
                    name,
                    site.sequence,
                    site_dir.shadow(),
                    Snapshot::new(),
                    AssignmentKind::Replicate,
                    Rules::default(),
                )
                .await?
            };
            let prepared = self.deliver_all(job, &whole, full_copy.assignment, "prepared").await;
            let commit = self.commit_assignment(job, name, site.sequence)?;
            let committed = self.deliver_all(job, &prepared, commit, "committed").await;
            for node in &committed {
                let _ = self.store().set_node_version(node, name, site.sequence);
            }
            current.extend(committed);
        }
        if current.len() < nodes.len() {
            return Err(format!("{} of {} nodes brought up to date", current.len(), nodes.len()));
        }
        Ok(())
    }

    /// Delivers the snapshots `chain` (versions in order) to one node, each followed by its commit.
    async fn deliver_chain(
        self: &Arc<Self>,
        job: &str,
        name: &str,
        node: &str,
        site_dir: &SiteDir,
        chain: &[u64],
    ) -> bool {
        let node_list = [node.to_string()];
        for &version in chain {
            let Ok(assignment) = site_dir.load_snapshot(version) else {
                return false;
            };
            if self
                .deliver_all(job, &node_list, assignment, "prepared")
                .await
                .is_empty()
            {
                return false;
            }
            let Ok(commit) = self.commit_assignment(job, name, version) else {
                return false;
            };
            if self.deliver_all(job, &node_list, commit, "committed").await.is_empty() {
                return false;
            }
            let _ = self.store().set_node_version(node, name, version);
        }
        true
    }

    async fn run_rollback(self: &Arc<Self>, job: &str, name: &str, nodes: &[String]) -> Result<(), String> {
        let Some(mut site) = self.store().site(name).map_err(|e| e.to_string())? else {
            return Err(format!("site {name} was never published"));
        };
        let site_dir = self.site_dir(name);
        if site.previous == 0 || !site_dir.previous().is_dir() {
            return Err(format!("site {name} has no previous version to roll back to"));
        }
        let mut builder = Builder::new(job, AssignmentKind::Rollback, name, site.previous, None, now_ms());
        builder.command(Command::Rollback);
        let assignment = builder
            .finish(&self.signing, self.config.policy.encryption.as_ref())
            .map_err(|e| e.to_string())?;
        let done = self.deliver_all(job, nodes, assignment, "committed").await;
        let lock = self.shadow_lock(name);
        let _guard = lock.lock().await;
        let dir = site_dir.clone();
        let snapshot = tokio::task::spawn_blocking(move || -> std::io::Result<Snapshot> {
            dir.swap_previous()?;
            tern_tree::scan(&dir.shadow(), &Snapshot::new())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        // The versions swap too: rolling back twice returns to where it started.
        (site.sequence, site.previous) = (site.previous, site.sequence);
        site.snapshot = serde_json::to_string(&snapshot).map_err(|e| e.to_string())?;
        let store = self.store();
        store.save_site(&site).map_err(|e| e.to_string())?;
        for node in &done {
            let _ = store.set_node_version(node, name, site.sequence);
        }
        if done.len() < nodes.len() {
            return Err(format!(
                "rolled back on {} of {} nodes; the others are brought to the rolled-back version when they register again",
                done.len(),
                nodes.len()
            ));
        }
        Ok(())
    }

    /// Removes the site from its nodes and stops hosting it. The mover's copies are kept aside under
    /// `DATA/removed/` for the operator to delete.
    async fn run_remove(self: &Arc<Self>, job: &str, name: &str, nodes: &[String]) -> Result<(), String> {
        let sequence = self
            .store()
            .site(name)
            .map_err(|e| e.to_string())?
            .map_or(0, |s| s.next_version());
        let builder = Builder::new(job, AssignmentKind::Remove, name, sequence, None, now_ms());
        let assignment = builder
            .finish(&self.signing, self.config.policy.encryption.as_ref())
            .map_err(|e| e.to_string())?;
        let done = self.deliver_all(job, nodes, assignment, "committed").await;
        if done.len() < nodes.len() {
            return Err(format!(
                "removed from {} of {} nodes; the site is still hosted (run the remove again)",
                done.len(),
                nodes.len()
            ));
        }
        let lock = self.shadow_lock(name);
        let _guard = lock.lock().await;
        let removed = self.config.data.join("removed");
        std::fs::create_dir_all(&removed).map_err(|e| e.to_string())?;
        let site_dir = self.site_dir(name);
        if site_dir.path().exists() {
            std::fs::rename(site_dir.path(), removed.join(format!("{name}-{}", now_ms())))
                .map_err(|e| e.to_string())?;
        }
        self.store().forget_site(name, now_ms()).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Plans an assignment on a blocking thread. `base` describes the shadow copy to diff against; an empty
    /// one sends every file whole (a full copy: the node's tree starts empty).
    #[allow(clippy::too_many_arguments)]
    async fn plan_in_background(
        &self,
        job: &str,
        site: &str,
        sequence: u64,
        staging: PathBuf,
        base: Snapshot,
        kind: AssignmentKind,
        rules: Rules,
    ) -> Result<Plan, String> {
        let compiled = rules.compile().map_err(|e| e.to_string())?;
        let (signing, policy, site, job) = (
            self.signing.clone(),
            self.config.policy.clone(),
            site.to_string(),
            job.to_string(),
        );
        let shadow = self.site_dir(&site).shadow();
        tokio::task::spawn_blocking(move || {
            let publication = Publication {
                id: &job,
                site: &site,
                sequence,
                created_ms: now_ms(),
            };
            plan_site(
                &staging,
                &shadow,
                &base,
                &publication,
                &policy,
                &signing,
                kind,
                Some(&compiled),
            )
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

    /// Sends `assignment` to every node at once; returns the nodes that applied it. This is the delivery
    /// step the store-and-forward tree and multicast of part 2 replace.
    async fn deliver_all(
        self: &Arc<Self>,
        job: &str,
        nodes: &[String],
        assignment: impl Into<Bytes>,
        success_state: &str,
    ) -> Vec<String> {
        let urls: HashMap<String, String> = self
            .store()
            .nodes()
            .unwrap_or_default()
            .into_iter()
            .map(|n| (n.name, n.url))
            .collect();
        let body: Bytes = assignment.into();
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
            self.metrics.delivery(outcome.is_ok(), bytes);
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
                let reason = match std::error::Error::source(&e) {
                    Some(cause) => tern_http::tls::error_reason(cause),
                    None => e.to_string(),
                };
                format!("node unreachable: {reason}")
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

    /// Registers a node; a node that is behind on a site it hosts (it was down, or a delivery failed) is
    /// brought up to date by itself.
    pub(crate) fn register(&self, node: Node, versions: Vec<(String, u64)>) -> Result<serde_json::Value, String> {
        self.store().register(&node, &versions).map_err(|e| e.to_string())?;
        let sites = self.store().sites().map_err(|e| e.to_string())?;
        let pending = self.store().pending_jobs().map_err(|e| e.to_string())?;
        let now = now_ms();
        let mut started = Vec::new();
        for site in sites {
            let hosts = self
                .store()
                .target_nodes(&site.target)
                .map_err(|e| e.to_string())?
                .contains(&node.name);
            let held = self.store().node_version(&node.name, &site.name).unwrap_or(0);
            // A job for the site due now will bring the node along (or conflicts with a catch-up anyway).
            let busy = pending
                .iter()
                .any(|job| job.spec.site == site.name && job.due_ms <= now);
            let key = (node.name.clone(), site.name.clone());
            let recently = self
                .last_synchronise
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .is_some_and(|at| at.elapsed() < SYNCHRONISE_BACKOFF);
            if !hosts || held == site.sequence || busy || recently {
                continue;
            }
            let mut spec = JobSpec::new("synchronise", &site.name);
            spec.target = Some(Target::Node(node.name.clone()));
            if let Ok(id) = self.submit(spec, now) {
                self.last_synchronise
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, std::time::Instant::now());
                info!(node = %node.name, site = %site.name, held, version = site.sequence, job = %id, "node is behind; synchronising it");
                started.push(id);
            }
        }
        Ok(serde_json::json!({ "registered": node.name, "synchronising": started }))
    }
}

/// The versions to apply, in order, to go from `held` to `target` through snapshots whose bases link up;
/// none when the chain is broken (a checkpoint dropped part of it, or the node holds a version off the line).
fn chain(snapshots: &[SnapshotRecord], held: u64, target: u64) -> Option<Vec<u64>> {
    if held == 0 {
        return None;
    }
    let mut versions = Vec::new();
    let mut at = target;
    while at != held {
        let record = snapshots.iter().find(|s| s.sequence == at)?;
        versions.push(at);
        at = record.base;
        if versions.len() > snapshots.len() {
            return None;
        }
    }
    versions.reverse();
    Some(versions)
}

impl tern_admin::AdminRoutes for Mover {
    fn status(&self) -> serde_json::Value {
        let store = self.store();
        serde_json::json!({
            "role": "mover",
            "nodes": store.nodes().unwrap_or_default(),
            "sites": store.sites().unwrap_or_default(),
            "jobs_pending": store.pending_jobs().map(|j| j.len()).unwrap_or(0),
        })
    }

    fn registry(&self) -> &prometheus_client::registry::Registry {
        &self.metrics.registry
    }

    fn refresh_metrics(&self) {
        let store = self.store();
        self.metrics
            .nodes
            .set(store.nodes().map(|n| n.len()).unwrap_or(0) as i64);
        self.metrics
            .jobs_pending
            .set(store.pending_jobs().map(|j| j.len()).unwrap_or(0) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sequence: u64, base: u64) -> SnapshotRecord {
        SnapshotRecord {
            sequence,
            base,
            job: format!("j{sequence}"),
            bytes: 1,
            created_ms: 0,
        }
    }

    #[test]
    fn a_chain_follows_the_bases_and_breaks_where_a_link_is_missing() {
        // 1 -> 2 -> 3, a rollback to 2, then 4 made from 2.
        let snapshots = [record(2, 1), record(3, 2), record(4, 2)];
        assert_eq!(chain(&snapshots, 2, 4), Some(vec![4]));
        assert_eq!(chain(&snapshots, 1, 4), Some(vec![2, 4]));
        assert_eq!(chain(&snapshots, 3, 4), None, "3 is off the line that leads to 4");
        assert_eq!(chain(&snapshots, 0, 4), None, "a node with nothing gets a full copy");
        assert_eq!(chain(&[record(4, 2)], 1, 4), None, "2 was dropped by a checkpoint");
    }
}
