//! The CP agent (seed 001): watches the origin content directory, turns what changed into change notices
//! with sequence numbers, keeps the ones not yet acknowledged on disk, and sends them to the listener until
//! it acknowledges them, across restarts of either side.
//!
//! inotify (through `notify`) makes the agent react at once; a periodic full rescan is the authority,
//! because inotify queues can overflow and some file systems do not report at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tern_wire::SecretKey;
use tern_wire::frame::{DEFAULT_MAX_PAYLOAD, FrameDecoder};
use tern_wire::sync::{Change, ChangeBatch, ChangeKind, SyncMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use tern_tree::{Snapshot, differences, scan};

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
    /// The sync service's listener.
    pub sync: SocketAddr,
    /// The agent key shared with the sync service.
    pub key: SecretKey,
    /// Where the agent keeps its state (snapshot, pending changes).
    pub state_dir: PathBuf,
    /// Full rescan interval.
    pub rescan_interval: Duration,
    /// Quiet time after a file-system event before scanning (bursts become one scan).
    pub debounce: Duration,
    /// Most changes in one batch.
    pub max_batch: usize,
    /// Index file name (its directory URL changes with it).
    pub index: String,
}

/// What the agent keeps on disk.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AgentState {
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
}

/// A running agent.
pub struct Agent {
    config: AgentConfig,
    state: Mutex<AgentState>,
    stats: Mutex<AgentStats>,
    wake_sender: Notify,
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
}

impl Agent {
    /// Loads the agent's state.
    pub fn new(config: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        if !config.dir.is_dir() {
            return Err(AgentError::Dir {
                path: config.dir.clone(),
                reason: "not a directory".into(),
            });
        }
        std::fs::create_dir_all(&config.state_dir).map_err(|e| AgentError::State {
            path: config.state_dir.clone(),
            reason: e.to_string(),
        })?;
        let path = state_path(&config);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AgentError::State {
                path: path.clone(),
                reason: format!("damaged: {e}"),
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
        let pending = state.pending.len();
        Ok(Arc::new(Agent {
            config,
            state: Mutex::new(state),
            stats: Mutex::new(AgentStats {
                pending,
                ..AgentStats::default()
            }),
            wake_sender: Notify::new(),
        }))
    }

    /// Figures for `/status`.
    pub fn stats(&self) -> AgentStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let (events, mut triggered) = mpsc::channel::<()>(1);
        let watcher = self.watch(events);
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
                            // Let a burst of writes settle into one scan.
                            tokio::time::sleep(agent.config.debounce).await;
                            while triggered.try_recv().is_ok() {}
                        }
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
        drop(watcher);
    }

    fn watch(&self, events: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let handler = move |result: notify::Result<notify::Event>| {
            if result.is_ok() {
                let _ = events.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(error) => {
                warn!(%error, "no file-system notifications; relying on periodic rescans");
                return None;
            }
        };
        if let Err(error) = watcher.watch(&self.config.dir, notify::RecursiveMode::Recursive) {
            warn!(%error, dir = %self.config.dir.display(), "cannot watch; relying on periodic rescans");
            return None;
        }
        Some(watcher)
    }

    /// Scans once and records what changed.
    pub async fn scan_once(self: &Arc<Self>) {
        let previous = self.state.lock().unwrap_or_else(|p| p.into_inner()).snapshot.clone();
        let dir = self.config.dir.clone();
        let scanned = tokio::task::spawn_blocking(move || scan(&dir, &previous).map(|after| (previous, after))).await;
        let (previous, after) = match scanned {
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
        let found = differences(&previous, &after);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (count, pending) = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut count = 0;
            for difference in &found {
                for url in urls_for(&self.config.base_url, &difference.path, &self.config.index) {
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

    async fn send_loop(self: &Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut connection: Option<(TcpStream, FrameDecoder)> = None;
        loop {
            let batch: Vec<Change> = {
                let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                state.pending.iter().take(self.config.max_batch).cloned().collect()
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake_sender.notified() => continue,
                }
            }
            if connection.is_none() {
                match TcpStream::connect(self.config.sync).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        connection = Some((stream, FrameDecoder::new(self.config.key.clone(), DEFAULT_MAX_PAYLOAD)));
                        backoff = Duration::from_millis(100);
                    }
                    Err(error) => {
                        self.note_error(format!("cannot reach sync service {}: {error}", self.config.sync));
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
                changes: batch,
            });
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                exchange(stream, decoder, &message.encode(&self.config.key)),
            )
            .await;
            match answer {
                Ok(Ok(SyncMessage::Ack(ack))) => {
                    self.acknowledge(ack.through);
                }
                Ok(Ok(SyncMessage::Reject(reject))) => {
                    warn!(reason = %reject.reason, message = %reject.message, "sync service rejected our changes");
                    self.note_error(format!("rejected: {} ({})", reject.message, reject.reason));
                    connection = None;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
                Ok(Ok(SyncMessage::Changes(_))) | Ok(Err(_)) | Err(_) => {
                    debug!("connection to the sync service lost; resending");
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

    fn acknowledge(&self, through: u64) {
        let pending = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.pending.retain(|change| change.seq > through);
            if let Err(error) = persist(&self.config, &state) {
                warn!(%error, "cannot save agent state");
            }
            state.pending.len()
        };
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.acked_through = stats.acked_through.max(through);
        stats.pending = pending;
        stats.last_error = None;
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

fn state_path(config: &AgentConfig) -> PathBuf {
    config.state_dir.join(format!("agent-{}.json", config.name))
}

/// Writes the state atomically (temp file, fsync, rename), so a crash leaves the old or the new state.
fn persist(config: &AgentConfig, state: &AgentState) -> std::io::Result<()> {
    write_atomically(
        &state_path(config),
        &serde_json::to_vec(state).map_err(std::io::Error::other)?,
    )
}

/// Writes `bytes` to `path` through a temp file and rename, with the data synced first.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    std::fs::rename(&temp, path)
}

/// The agent's admin routes: `/status` with its figures, `/metrics` with the same as gauges.
pub struct AgentAdmin {
    agent: Arc<Agent>,
    registry: prometheus_client::registry::Registry,
    detected: prometheus_client::metrics::gauge::Gauge,
    pending: prometheus_client::metrics::gauge::Gauge,
    acked: prometheus_client::metrics::gauge::Gauge,
}

impl AgentAdmin {
    /// Admin routes for `agent`.
    pub fn new(agent: Arc<Agent>) -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix("tern_agent");
        let detected = prometheus_client::metrics::gauge::Gauge::default();
        registry.register("changes_detected", "Changes detected since start", detected.clone());
        let pending = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "changes_pending",
            "Changes not yet acknowledged by the sync service",
            pending.clone(),
        );
        let acked = prometheus_client::metrics::gauge::Gauge::default();
        registry.register("acked_through", "Highest sequence number acknowledged", acked.clone());
        AgentAdmin {
            agent,
            registry,
            detected,
            pending,
            acked,
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
        self.detected.set(stats.detected as i64);
        self.pending.set(stats.pending as i64);
        self.acked.set(stats.acked_through as i64);
    }
}

fn wire_kind(kind: tern_tree::ChangeKind) -> ChangeKind {
    match kind {
        tern_tree::ChangeKind::Created => ChangeKind::Created,
        tern_tree::ChangeKind::Modified => ChangeKind::Modified,
        tern_tree::ChangeKind::Deleted => ChangeKind::Deleted,
    }
}
