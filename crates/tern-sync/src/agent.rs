//! The CP agent (seed 001): watches the origin content directory, turns what changed into change notices
//! with sequence numbers, keeps the ones not yet acknowledged on disk, and sends them to the listener until
//! it acknowledges them, across restarts of either side.
//!
//! inotify (through `notify`, one watch per directory: [`crate::watches`]) makes the agent react at once; a
//! periodic full rescan is the authority, because inotify queues can overflow and some file systems do not
//! report at all.
//!
//! The scan is the content mover's tree model (`tern-tree`): hidden files and folders are content
//! (`.well-known/`, `.htaccess`); what is left out are the temporaries editors write beside the file being
//! edited, by pattern ([`tern_tree::EDITOR_TEMPORARIES`]: `.*.swp`, `*~`, `.#*`, `4913`, ...). Only regular
//! files' content changes are sent (a cache purges URLs, not directories, links or modes); an entry that
//! cannot be carried (a name that is not UTF-8, a socket) is reported in the log once, not silently dropped.
//!
//! The state carries an [`Incarnation`], made when the state is created: sequence numbers count within it.
//! An agent whose state file was lost starts over at 1 under a new incarnation, which the sync service
//! takes as a new stream rather than a replay of numbers it has already seen; and the agent trusts only
//! acknowledgements of its own incarnation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tern_wire::SecretKey;
use tern_wire::frame::{DEFAULT_MAX_PAYLOAD, FrameDecoder};
use tern_wire::sync::{Ack, Change, ChangeBatch, ChangeKind, Incarnation, SyncMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use tern_tree::{Excludes, Snapshot, differences, scan_excluding};

use crate::urls::urls_for;

/// Settings of the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Origin content directory.
    pub dir: PathBuf,
    /// Site name, as the sync service knows it.
    pub site: String,
    /// This agent's name (stable across restarts; sequence numbers are per agent).
    pub name: String,
    /// URL the directory is served under, e.g. `http://www.example.com`.
    pub base_url: String,
    /// The sync service's listener, `HOST:PORT`: an IP address, or a name looked up at every connection
    /// (so a sync service moved to another address under its name is found).
    pub sync: String,
    /// The agent key shared with the sync service.
    pub key: SecretKey,
    /// Where the agent keeps its state (snapshot, pending changes).
    pub state_dir: PathBuf,
    /// Full rescan interval.
    pub rescan_interval: Duration,
    /// Quiet time after a file-system event before scanning (bursts become one scan).
    pub debounce: Duration,
    /// How long an idle agent waits before it sends a heartbeat ([`HEARTBEAT`] by default).
    pub heartbeat: Duration,
    /// Most changes in one batch.
    pub max_batch: usize,
    /// Index file name (its directory URL changes with it).
    pub index: String,
}

/// What the agent keeps on disk.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AgentState {
    /// Made when the state is created; unknown in a state written before incarnations.
    #[serde(default)]
    incarnation: Incarnation,
    next_seq: u64,
    snapshot: Snapshot,
    pending: Vec<Change>,
}

/// Figures about the agent.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AgentStats {
    /// Changes detected since start.
    pub detected: u64,
    /// Highest sequence the sync service acknowledged.
    pub acked_through: u64,
    /// Changes waiting for acknowledgement.
    pub pending: usize,
    /// Scans since start.
    pub scans: u64,
    /// Last error talking to the sync service.
    pub last_error: Option<String>,
    /// When the sync service last acknowledged a batch (a heartbeat too), milliseconds since the Unix
    /// epoch; 0 before the first.
    pub last_ack_ms: u64,
}

/// How long an idle agent waits before it sends an empty batch, which the sync service acknowledges like
/// any other: so a sync service that is down, or has another key, shows in the agent's `/status`, its log
/// and `tern_agent_sync_ack_age_seconds` while nothing changes, not only at the next change.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// A running agent.
pub struct Agent {
    config: AgentConfig,
    state: Mutex<AgentState>,
    stats: Mutex<AgentStats>,
    wake_sender: Notify,
    /// One scan at a time: two at once would both diff against the same snapshot and report each change twice.
    scanning: tokio::sync::Mutex<()>,
    /// Entries already reported as impossible to carry (each is logged once, not on every rescan).
    reported: Mutex<std::collections::BTreeSet<String>>,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The content directory is unusable.
    #[error("content directory {path}: {reason}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The state could not be read or written.
    #[error("agent state {path}: {reason}")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The agent's name would be refused by the sync service.
    #[error(
        "--name of {0} bytes: give 1 to 255 bytes without control characters (it names this agent in every record)"
    )]
    Name(usize),
}

impl Agent {
    /// Loads the agent's state.
    pub fn new(config: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        if !crate::master::agent_name_is_valid(&config.name) {
            return Err(AgentError::Name(config.name.len()));
        }
        if !config.dir.is_dir() {
            return Err(AgentError::Dir {
                path: config.dir.clone(),
                reason: "not a directory".into(),
            });
        }
        // A state directory inside the watched one would report its own state file as a change on every
        // save, for ever, and the origin would serve it. Checked before anything is made (through the
        // nearest directory that exists, links resolved), so a refusal leaves nothing in the site.
        if let (Ok(dir), Some(state_dir)) = (config.dir.canonicalize(), resolved(&config.state_dir))
            && state_dir.starts_with(&dir)
        {
            return Err(AgentError::State {
                path: config.state_dir.clone(),
                reason: format!(
                    "it is inside the watched directory {}: every save of the agent's state would be reported as a change, and the origin would serve it; give --state-dir a directory outside it (the default is .tern-agent beside it)",
                    config.dir.display()
                ),
            });
        }
        tern_tree::create_private_dir(&config.state_dir).map_err(|e| AgentError::State {
            path: config.state_dir.clone(),
            reason: e.to_string(),
        })?;
        let path = state_path(&config);
        let mut state: AgentState = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AgentError::State {
                path: path.clone(),
                reason: format!(
                    "damaged ({e}): move it aside and start again; the agent then reports every file once, and the sync service purges and prefetches them"
                ),
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => AgentState {
                next_seq: 1,
                ..AgentState::default()
            },
            Err(error) => {
                return Err(AgentError::State {
                    path,
                    reason: error.to_string(),
                });
            }
        };
        if state.incarnation.is_unknown() {
            // A new state (or one from before incarnations) gets its incarnation now, saved before any
            // number of it is sent, so every number the sync service sees is read within it.
            state.incarnation = Incarnation::generate().map_err(|e| AgentError::State {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            persist(&config, &state).map_err(|e| AgentError::State {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            info!(
                agent = %config.name,
                incarnation = %state.incarnation,
                next_seq = state.next_seq,
                "new agent state incarnation: the sync service counts this agent's changes afresh"
            );
        }
        let pending = state.pending.len();
        Ok(Arc::new(Agent {
            config,
            state: Mutex::new(state),
            stats: Mutex::new(AgentStats {
                pending,
                ..AgentStats::default()
            }),
            wake_sender: Notify::new(),
            scanning: tokio::sync::Mutex::new(()),
            reported: Mutex::new(std::collections::BTreeSet::new()),
        }))
    }

    /// The incarnation of the agent's state.
    pub fn incarnation(&self) -> Incarnation {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).incarnation.clone()
    }

    /// Figures for `/status`.
    pub fn stats(&self) -> AgentStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let (events, mut triggered) = mpsc::channel::<()>(1);
        let dir = self.config.dir.clone();
        let mut watches = tokio::task::spawn_blocking(move || crate::watches::Watches::start(&dir, events))
            .await
            .ok()
            .flatten();
        let scanner = {
            let agent = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(agent.config.rescan_interval);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = interval.tick() => {}
                        Some(()) = triggered.recv() => {
                            // Let a burst of writes settle into one scan (a stop ends the wait).
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(agent.config.debounce) => {}
                            }
                            while triggered.try_recv().is_ok() {}
                        }
                    }
                    // Watched first, scanned then: what is written in a new directory after the scan is
                    // reported by its watch.
                    if let Some(mut kept) = watches.take() {
                        watches = tokio::task::spawn_blocking(move || {
                            kept.reconcile();
                            kept
                        })
                        .await
                        .ok();
                    }
                    agent.scan_once().await;
                }
            })
        };
        let sender = {
            let agent = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { agent.send_loop(shutdown).await })
        };
        let _ = scanner.await;
        let _ = sender.await;
    }

    /// Scans once and records what changed.
    pub async fn scan_once(self: &Arc<Self>) {
        let _one_at_a_time = self.scanning.lock().await;
        let previous = self.state.lock().unwrap_or_else(|p| p.into_inner()).snapshot.clone();
        let dir = self.config.dir.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            scan_excluding(&dir, &previous, &Excludes::editor_temporaries()).map(|after| (previous, after))
        })
        .await;
        let (previous, scanned) = match scanned {
            Ok(Ok(pair)) => pair,
            Ok(Err(error)) => {
                warn!(%error, dir = %self.config.dir.display(), "scan failed");
                return;
            }
            Err(error) => {
                warn!(%error, "scan task failed");
                return;
            }
        };
        self.report_unsupported(&scanned.unsupported);
        let after = scanned.snapshot;
        let mut found = differences(&previous, &after);
        // The same changes under the names of the links to them, and those of links that now point
        // elsewhere (the "current" link of a deploy).
        found.extend(crate::aliases::through_links(&previous, &after, &found));
        let now_ms = unix_ms();
        let (count, pending) = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut count = 0;
            for difference in &found {
                for url in urls_for(&self.config.base_url, &difference.path, &self.config.index) {
                    if url.len() > crate::master::MAX_URL_BYTES {
                        // The sync service would refuse it (`too-long`), without a name to show.
                        warn!(path = %difference.path, bytes = url.len(), "left out: this file's URL is over 8192 bytes, which caches refuse as a request target; shorten its path");
                        continue;
                    }
                    let seq = state.next_seq;
                    state.next_seq += 1;
                    state.pending.push(Change {
                        seq,
                        url,
                        kind: wire_kind(difference.kind),
                        etag: difference.hash.clone(),
                        at_ms: now_ms,
                    });
                    count += 1;
                }
            }
            state.snapshot = after;
            if let Err(error) = persist(&self.config, &state) {
                warn!(%error, "cannot save agent state; changes stay in memory until the next save");
            }
            (count, state.pending.len())
        };
        {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.scans += 1;
            stats.detected += count as u64;
            stats.pending = pending;
        }
        if count > 0 {
            info!(changes = count, pending, "changes detected");
            self.wake_sender.notify_one();
        }
    }

    /// Logs each entry that cannot be carried once (until it is gone and comes back).
    fn report_unsupported(&self, unsupported: &[tern_tree::Unsupported]) {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let now: std::collections::BTreeSet<String> = unsupported.iter().map(ToString::to_string).collect();
        for entry in now.difference(&reported) {
            warn!(dir = %self.config.dir.display(), entry = %entry, "left out: no change notice is sent for it");
        }
        *reported = now;
    }

    async fn send_loop(self: &Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        // Whether the sync service has not acknowledged since a failure (unreachable, another key, a
        // rejection): its end is logged, as its start was.
        let mut failing = false;
        // A key mismatch is logged as a warning once every 30 s, the rest in `/status`.
        let mut key_warnings: tern_admin::Throttle<()> = tern_admin::Throttle::default();
        // So is a sync service that cannot be reached: changes wait, and the log says why.
        let mut reach_warnings: tern_admin::Throttle<()> = tern_admin::Throttle::default();
        let mut lost_in_a_row = 0u32;
        let mut connection: Option<(TcpStream, FrameDecoder)> = None;
        loop {
            let (incarnation, batch): (Incarnation, Vec<Change>) = {
                let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let batch = state.pending.iter().take(self.config.max_batch).cloned().collect();
                (state.incarnation.clone(), batch)
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake_sender.notified() => continue,
                    // Nothing changed for a while: the empty batch goes as a heartbeat.
                    _ = tokio::time::sleep(self.config.heartbeat) => {}
                }
            }
            if connection.is_none() {
                match TcpStream::connect(self.config.sync.as_str()).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        connection = Some((stream, FrameDecoder::new(self.config.key.clone(), DEFAULT_MAX_PAYLOAD)));
                        backoff = Duration::from_millis(100);
                    }
                    Err(error) => {
                        failing = true;
                        let error = format!(
                            "cannot reach the sync service at {}: {error}; {} changes wait and are sent once it answers",
                            self.config.sync,
                            self.stats().pending
                        );
                        if let Some(suppressed) = reach_warnings.check((), std::time::Instant::now()) {
                            warn!(suppressed, "{error}");
                        }
                        self.note_error(error);
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let Some((stream, decoder)) = connection.as_mut() else {
                continue;
            };
            let message = SyncMessage::Changes(ChangeBatch {
                site: self.config.site.clone(),
                agent: self.config.name.clone(),
                incarnation,
                changes: batch,
            });
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                exchange(stream, decoder, &message.encode(&self.config.key)),
            )
            .await;
            match answer {
                Ok(Ok(SyncMessage::Ack(ack))) if self.take_ack(&ack) => {
                    lost_in_a_row = 0;
                    if std::mem::take(&mut failing) {
                        info!(sync = %self.config.sync, pending = self.stats().pending, "the sync service acknowledges our changes again");
                    }
                }
                Ok(Ok(SyncMessage::Reject(reject))) => {
                    failing = true;
                    warn!(reason = %reject.reason, message = %reject.message, "sync service rejected our changes");
                    self.note_error(format!("rejected: {} ({})", reject.message, reject.reason));
                    connection = None;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
                    failing = true;
                    let text = error.to_string();
                    let error = if text.contains("bad magic") {
                        // Not a tern frame at all: something else answers there (an HTTP server: the sync
                        // service's admin port, an edge).
                        format!(
                            "{} answered with something that is not a tern frame ({text}): give --sync the sync service's agent address (its --listen), not its admin port or another server's",
                            self.config.sync
                        )
                    } else {
                        // A frame, not under our key: the sync service has another key.
                        format!(
                            "the sync service's answer does not open with this agent's key ({text}): give --key the sync service's --key file"
                        )
                    };
                    if let Some(suppressed) = key_warnings.check((), std::time::Instant::now()) {
                        warn!(suppressed, "{error}");
                    }
                    self.note_error(error);
                    connection = None;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
                Ok(Ok(SyncMessage::Ack(_) | SyncMessage::Changes(_))) | Ok(Err(_)) | Err(_) => {
                    let error = match &answer {
                        Err(_) => format!("the sync service at {} did not answer within 10 s", self.config.sync),
                        Ok(Err(error)) => {
                            format!("connection to the sync service at {} lost: {error}", self.config.sync)
                        }
                        Ok(Ok(_)) => format!("the sync service at {} answered out of turn", self.config.sync),
                    };
                    // A kept connection the sync service closed while idle fails once, and the resend
                    // on a new one goes through: only a second failure in a row is worth a warning.
                    lost_in_a_row += 1;
                    failing |= lost_in_a_row >= 2;
                    if lost_in_a_row < 2 {
                        debug!("{error}; resending");
                    } else if let Some(suppressed) = reach_warnings.check((), std::time::Instant::now()) {
                        warn!(suppressed, "{error}; resending");
                    }
                    self.note_error(error);
                    connection = None;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Drops the pending changes an acknowledgement covers, if it is for this state's incarnation; an
    /// acknowledgement of another one says nothing about these numbers.
    fn take_ack(&self, ack: &Ack) -> bool {
        let own = self.incarnation();
        if ack.incarnation != own {
            warn!(
                ours = %own,
                acknowledged = %ack.incarnation,
                "acknowledgement of another incarnation ignored (is the sync service older than this agent?)"
            );
            self.note_error(format!(
                "acknowledgement for incarnation `{}`, not ours (`{own}`)",
                ack.incarnation
            ));
            return false;
        }
        self.acknowledge(ack.through);
        if !ack.refused.is_empty() {
            let reasons: Vec<String> = ack.refused.iter().map(|(reason, n)| format!("{reason}: {n}")).collect();
            let error = format!(
                "the sync service refused {} changes ({}): no cache hears of them; `host` means --base-url names a host the sync service's --site does not (fix it, then delete this agent's state file so every file is reported again); `too-long` means a file's URL is over 8192 bytes, which caches refuse (shorten its path)",
                ack.refused.values().sum::<u64>(),
                reasons.join(", ")
            );
            warn!("{error}");
            self.note_error(error);
        }
        true
    }

    fn acknowledge(&self, through: u64) {
        let pending = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let before = state.pending.len();
            state.pending.retain(|change| change.seq > through);
            // A heartbeat's acknowledgement drops nothing: the state on disk is still right.
            if state.pending.len() != before
                && let Err(error) = persist(&self.config, &state)
            {
                warn!(%error, "cannot save agent state");
            }
            state.pending.len()
        };
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.acked_through = stats.acked_through.max(through);
        stats.pending = pending;
        stats.last_error = None;
        stats.last_ack_ms = unix_ms();
    }

    fn note_error(&self, error: String) {
        debug!(%error, "agent");
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(error);
    }
}

/// Sends one frame and reads one answer.
async fn exchange(stream: &mut TcpStream, decoder: &mut FrameDecoder, frame: &[u8]) -> std::io::Result<SyncMessage> {
    stream.write_all(frame).await?;
    let mut buffer = [0u8; 8192];
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                return SyncMessage::decode(&frame)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e));
            }
            Ok(None) => {}
            Err(error) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error)),
        }
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        decoder.push(&buffer[..read]);
    }
}

/// `path` made absolute with links resolved, through its nearest ancestor that exists (the rest of it
/// need not exist yet); `None` when not even the root can be resolved.
fn resolved(path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let mut rest = Vec::new();
    let mut at = absolute.as_path();
    loop {
        if let Ok(found) = at.canonicalize() {
            return Some(rest.iter().rev().fold(found, |whole, part| whole.join(part)));
        }
        rest.push(at.file_name()?.to_os_string());
        at = at.parent()?;
    }
}

fn state_path(config: &AgentConfig) -> PathBuf {
    config.state_dir.join(format!("{}.json", state_file_stem(&config.name)))
}

/// The stem of an agent's files in its state directory (its state `STEM.json`, the lock a running agent
/// holds `STEM.lock`): `agent-NAME`, with every byte of the name outside `[A-Za-z0-9._-]` written as `%XX`,
/// so that a name with `/` or `..` in it never names a file elsewhere. A stem past 200 bytes (a long name,
/// or one of many escaped bytes) is cut there and ends with the name's blake3 hash instead, within the
/// 255 bytes a file name may have.
pub fn state_file_stem(name: &str) -> String {
    const LONGEST: usize = 200;
    let mut stem = String::from("agent-");
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            stem.push(byte as char);
        } else {
            stem.push_str(&format!("%{byte:02X}"));
        }
    }
    if stem.len() > LONGEST {
        // Only ASCII was pushed, so any cut is on a character boundary.
        stem.truncate(LONGEST - 65);
        stem.push('~');
        stem.push_str(blake3::hash(name.as_bytes()).to_hex().as_str());
    }
    stem
}

/// Writes the state durably (temp file, fsync, rename, fsync of the directory), so a crash leaves the old
/// or the new state.
fn persist(config: &AgentConfig, state: &AgentState) -> std::io::Result<()> {
    // The directory may have been removed while the agent runs; the state it holds must not be lost.
    tern_tree::create_private_dir(&config.state_dir)?;
    tern_tree::write_durably(
        &state_path(config),
        &serde_json::to_vec(state).map_err(std::io::Error::other)?,
    )
}

/// The agent's admin routes: `/status` with its figures, `/metrics` with the same (the changes detected as
/// a counter, `tern_agent_changes_detected_total`; the others as gauges).
pub struct AgentAdmin {
    agent: Arc<Agent>,
    registry: prometheus_client::registry::Registry,
    detected: prometheus_client::metrics::counter::Counter,
    pending: prometheus_client::metrics::gauge::Gauge,
    acked: prometheus_client::metrics::gauge::Gauge,
    ack_age: prometheus_client::metrics::gauge::Gauge,
}

impl AgentAdmin {
    /// Admin routes for `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix("tern_agent");
        let detected = prometheus_client::metrics::counter::Counter::default();
        registry.register("changes_detected", "Changes detected since start", detected.clone());
        let pending = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "changes_pending",
            "Changes not yet acknowledged by the sync service",
            pending.clone(),
        );
        let acked = prometheus_client::metrics::gauge::Gauge::default();
        registry.register("acked_through", "Highest sequence number acknowledged", acked.clone());
        let ack_age = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "sync_ack_age_seconds",
            "Seconds since the sync service last acknowledged a batch or heartbeat (-1 before the first); above twice the 30 s heartbeat, the sync service is not reached",
            ack_age.clone(),
        );
        AgentAdmin {
            agent,
            registry,
            detected,
            pending,
            acked,
            ack_age,
        }
    }
}

impl tern_admin::AdminRoutes for AgentAdmin {
    fn status(&self) -> serde_json::Value {
        let stats = self.agent.stats();
        serde_json::json!({
            "role": "agent",
            "site": self.agent.config.site,
            "name": self.agent.config.name,
            "incarnation": self.agent.incarnation(),
            "dir": self.agent.config.dir.display().to_string(),
            "sync": self.agent.config.sync.to_string(),
            "stats": stats,
        })
    }

    fn registry(&self) -> &prometheus_client::registry::Registry {
        &self.registry
    }

    fn refresh_metrics(&self) {
        let stats = self.agent.stats();
        // A counter only goes up: it is brought to the agent's own count.
        let counted = self.detected.get();
        if stats.detected > counted {
            self.detected.inc_by(stats.detected - counted);
        }
        self.pending.set(stats.pending as i64);
        self.acked.set(stats.acked_through as i64);
        self.ack_age.set(match stats.last_ack_ms {
            0 => -1,
            at => i64::try_from(unix_ms().saturating_sub(at) / 1000).unwrap_or(i64::MAX),
        });
    }
}

/// Milliseconds since the Unix epoch (0 on a clock before it).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn wire_kind(kind: tern_tree::ChangeKind) -> ChangeKind {
    match kind {
        tern_tree::ChangeKind::Created => ChangeKind::Created,
        tern_tree::ChangeKind::Modified => ChangeKind::Modified,
        tern_tree::ChangeKind::Deleted => ChangeKind::Deleted,
    }
}

/// Whether a file-system event can change what the site serves. Reads do not: an open, a read or a close
/// after reading (the agent's own scans, the origin serving its files) would otherwise start a rescan
/// that reads every file again, and so on without end.
pub(crate) fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn an_agents_files_stay_in_its_state_directory_whatever_its_name() {
        assert_eq!(state_file_stem("www"), "agent-www");
        assert_eq!(state_file_stem("blog.example_2-b"), "agent-blog.example_2-b");
        assert_eq!(state_file_stem("../../etc/x"), "agent-..%2F..%2Fetc%2Fx");
        assert_eq!(state_file_stem("a b/é"), "agent-a%20b%2F%C3%A9");
        let (long, other) = ("n".repeat(255), format!("{}m", "n".repeat(254)));
        assert!(state_file_stem(&long).len() <= 200 && state_file_stem(&"/".repeat(100)).len() <= 200);
        assert_ne!(state_file_stem(&long), state_file_stem(&other), "cut names stay apart");
        for name in ["../x", "/abs", "a/b"] {
            let path = Path::new("/state").join(format!("{}.json", state_file_stem(name)));
            assert_eq!(path.parent(), Some(Path::new("/state")), "{name}");
        }
    }

    #[test]
    fn reads_are_no_change_but_writes_are() {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Read)));
        assert!(changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Any)));
    }

    fn config(dir: &Path) -> AgentConfig {
        AgentConfig {
            dir: dir.join("site"),
            site: "www".into(),
            name: "origin-1".into(),
            base_url: "http://www.example.com".into(),
            sync: "127.0.0.1:9".into(),
            key: SecretKey::generate().expect("key"),
            state_dir: dir.join("state"),
            rescan_interval: Duration::from_secs(3600),
            debounce: Duration::from_millis(1),
            heartbeat: HEARTBEAT,
            max_batch: 100,
            index: "index.html".into(),
        }
    }

    #[tokio::test]
    async fn a_file_whose_url_no_cache_would_take_is_left_out_by_name_and_the_others_are_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = dir.path().join("site");
        // 14 directories of 100 `é` (200 bytes each on disk, 600 characters each once percent-encoded).
        let deep = (0..14).fold(site.clone(), |path, _| path.join("é".repeat(100)));
        std::fs::create_dir_all(&deep).expect("deep directories");
        std::fs::write(deep.join("f.txt"), "deep").expect("write");
        std::fs::write(site.join("page.html"), "page").expect("write");
        let agent = Agent::new(config(dir.path())).expect("agent");
        agent.scan_once().await;
        let urls: Vec<String> = {
            let state = agent.state.lock().unwrap_or_else(|p| p.into_inner());
            state.pending.iter().map(|change| change.url.clone()).collect()
        };
        assert_eq!(urls, ["http://www.example.com/page.html"]);
    }

    #[test]
    fn a_state_directory_inside_the_watched_one_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut inside = config(dir.path());
        std::fs::create_dir_all(&inside.dir).expect("mkdir");
        inside.state_dir = inside.dir.join(".state/deeper/still");
        let inside_dir = inside.dir.join(".state");
        let error = Agent::new(inside).err().expect("refused").to_string();
        assert!(error.contains("inside the watched directory"), "{error}");
        assert!(
            !inside_dir.exists(),
            "the refused state directory is not left in the site"
        );
        assert!(Agent::new(config(dir.path())).is_ok(), "beside it is fine");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&config(dir.path()).state_dir)
                .expect("state directory")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the agent's state is its own: {mode:o}");
        }
    }

    fn pending(agent: &Agent) -> Vec<u64> {
        let state = agent.state.lock().unwrap_or_else(|p| p.into_inner());
        state.pending.iter().map(|change| change.seq).collect()
    }

    #[tokio::test]
    async fn a_lost_state_file_starts_a_new_incarnation_counting_from_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("site")).expect("site");
        std::fs::write(dir.path().join("site/a.html"), "a").expect("write");
        let first = Agent::new(config(dir.path())).expect("agent");
        let incarnation = first.incarnation();
        assert!(!incarnation.is_unknown());
        assert!(state_path(&first.config).exists(), "the incarnation is saved at once");
        first.scan_once().await;
        std::fs::write(dir.path().join("site/b.html"), "b").expect("write");
        first.scan_once().await;
        assert_eq!(pending(&first), vec![1, 2]);
        drop(first);

        let restarted = Agent::new(config(dir.path())).expect("agent");
        assert_eq!(
            restarted.incarnation(),
            incarnation,
            "a kept state keeps its incarnation"
        );
        assert_eq!(pending(&restarted), vec![1, 2]);
        drop(restarted);

        std::fs::remove_file(state_path(&config(dir.path()))).expect("rm");
        let reborn = Agent::new(config(dir.path())).expect("agent");
        assert_ne!(reborn.incarnation(), incarnation, "a lost state gets a new incarnation");
        reborn.scan_once().await;
        assert_eq!(pending(&reborn), vec![1, 2], "its numbering starts over at 1");
    }

    #[tokio::test]
    async fn hidden_files_and_links_to_files_are_content_and_editor_temporaries_and_directories_are_not_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = dir.path().join("site");
        std::fs::create_dir_all(site.join(".well-known/acme-challenge")).expect("site");
        std::fs::create_dir_all(site.join("uploads")).expect("empty directory");
        std::fs::write(site.join(".well-known/acme-challenge/x"), "token").expect("write");
        std::fs::write(site.join(".htaccess"), "Options -Indexes").expect("write");
        for temporary in [".index.html.swp", "index.html~", ".#index.html", "4913"] {
            std::fs::write(site.join(temporary), "editor").expect("write");
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(".htaccess", site.join("link")).expect("symlink");
        let agent = Agent::new(config(dir.path())).expect("agent");
        agent.scan_once().await;
        let urls: Vec<String> = {
            let state = agent.state.lock().unwrap_or_else(|p| p.into_inner());
            state.pending.iter().map(|change| change.url.clone()).collect()
        };
        // The link is reported under its own name: an origin that follows links serves the file there too.
        assert_eq!(
            urls,
            [
                "http://www.example.com/.htaccess",
                "http://www.example.com/.well-known/acme-challenge/x",
                "http://www.example.com/link"
            ]
        );
    }

    #[tokio::test]
    async fn a_state_from_before_incarnations_gets_one_and_keeps_its_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("site")).expect("site");
        std::fs::create_dir_all(dir.path().join("state")).expect("state");
        let legacy = r#"{"next_seq":41,"snapshot":{},"pending":[{"seq":40,"url":"http://www.example.com/x","kind":"deleted","etag":null,"at_ms":0}]}"#;
        std::fs::write(state_path(&config(dir.path())), legacy).expect("write");
        let agent = Agent::new(config(dir.path())).expect("a legacy state loads");
        assert!(!agent.incarnation().is_unknown());
        assert_eq!(pending(&agent), vec![40], "pending changes are kept");
        let reopened = Agent::new(config(dir.path())).expect("agent");
        assert_eq!(reopened.incarnation(), agent.incarnation());
    }

    #[tokio::test]
    async fn acknowledgements_of_another_incarnation_are_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("site")).expect("site");
        std::fs::write(dir.path().join("site/a.html"), "a").expect("write");
        let agent = Agent::new(config(dir.path())).expect("agent");
        agent.scan_once().await;
        assert_eq!(pending(&agent), vec![1]);
        let foreign = Ack {
            agent: "origin-1".into(),
            incarnation: Incarnation::generate().expect("random"),
            through: 100,
            refused: Default::default(),
        };
        assert!(!agent.take_ack(&foreign));
        assert_eq!(
            pending(&agent),
            vec![1],
            "nothing dropped on another incarnation's word"
        );
        let own = Ack {
            incarnation: agent.incarnation(),
            ..foreign
        };
        assert!(agent.take_ack(&own));
        assert!(pending(&agent).is_empty());
        assert_eq!(agent.stats().acked_through, 100);
    }

    /// Waits (bounded) until the agent has detected `count` changes in all.
    async fn detected(agent: &Agent, count: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while agent.stats().detected < count {
            assert!(
                std::time::Instant::now() < deadline,
                "{} changes detected, {count} expected (the periodic rescan is an hour away: only a watch finds them)",
                agent.stats().detected
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_new_directory_and_a_swapped_site_root_are_watched_without_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = dir.path().join("site");
        std::fs::create_dir_all(&site).expect("site");
        std::fs::write(site.join("a.txt"), "1").expect("write");
        let agent = Agent::new(config(dir.path())).expect("agent");
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(agent.clone().run(shutdown.clone()));
        // The first scan reports the file that is there (index.html aliases aside: one URL).
        detected(&agent, 1).await;
        let base = agent.stats().detected;
        // A directory made after the start, then a file in it.
        std::fs::create_dir(site.join("new")).expect("mkdir");
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(site.join("new/b.txt"), "2").expect("write");
        detected(&agent, base + 1).await;
        // The deploy swaps the whole root; a change in the new tree is still seen at once.
        let staged = dir.path().join("site.new");
        std::fs::create_dir_all(staged.join("new")).expect("staged");
        std::fs::write(staged.join("a.txt"), "1").expect("write");
        std::fs::write(staged.join("new/b.txt"), "2").expect("write");
        std::fs::rename(&site, dir.path().join("site.old")).expect("move old");
        std::fs::rename(&staged, &site).expect("move new");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let swapped = agent.stats().detected;
        std::fs::write(site.join("a.txt"), "changed after the swap").expect("write");
        detected(&agent, swapped + 1).await;
        shutdown.cancel();
        let _ = running.await;
    }
}
