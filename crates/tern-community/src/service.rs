//! `tern registry`: the [`Registry`] state machine (seed `002_82dbe7a209926976.txt`'s "cache server" and
//! "administration module", claims 51–53, 60–61, 95–100) behind an HTTP listener. Peers `POST` their
//! encoded community messages to [`REGISTRY_PATH`](crate::driver::REGISTRY_PATH) and get the encoded answer
//! back. The state is written to `DATA/registry.json` (temporary file, then rename) before any answer that
//! changed it goes out, so a restart loses no master it acknowledged. `/status` and `/metrics` on the
//! admin listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry as Metrics;
use tern_admin::{AdminRoutes, json_error};
use tern_http::Body;
use tern_http::server::{Handler, Running, ServerLimits};
use tern_wire::SecretKey;
use tern_wire::community;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::driver::{REGISTRY_PATH, unix_ms};
use crate::registry::{Registry, RegistryConfig, RegistryState};

/// The state file's name under `--data`.
pub const STATE_FILE: &str = "registry.json";
/// Highest term (and list version) a state file may hold: far above any real count of elections, and
/// exact in JSON numbers; a larger one is damage, and would leave no room for the next term.
pub const MAX_TERM: u64 = 1 << 53;
/// What to do with a state file that cannot be used.
const STATE_HINT: &str = "move the file aside to start empty (the masters register again within seconds)";

/// Settings of `tern registry`.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Where peers reach it (`--listen`).
    pub listen: SocketAddr,
    /// The admin listener (`--admin`): `/status`, `/metrics`.
    pub admin: Option<SocketAddr>,
    /// The cluster key (`--cluster-key`).
    pub key: SecretKey,
    /// Where the state is kept (`--data`).
    pub data: PathBuf,
}

/// Why the registry did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The state file could not be read or parsed.
    #[error("registry state {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] tern_admin::BindError),
}

/// A running registry; `role` is its [`Service`].
pub type RunningRegistry = Running<Arc<Service>>;

/// What `/status` and `/metrics` show: the state, the counters and each community's last accepted claim
/// (milliseconds since the Unix epoch).
type Shown = (
    RegistryState,
    crate::registry::RegistryCounters,
    std::collections::BTreeMap<String, u64>,
);

/// The registry service: the state machine and where its state is written.
pub struct Service {
    registry: Mutex<Registry>,
    /// The cluster key, to encode answers.
    key: SecretKey,
    state_file: PathBuf,
    /// The last state written, for `/status` without taking the lock.
    shown: std::sync::Mutex<Shown>,
    persist_failures: std::sync::atomic::AtomicU64,
    /// When refused requests are logged as warnings (a new reason at once, a lasting one every 30 s).
    refusal_warnings: std::sync::Mutex<tern_admin::KeyedThrottle<&'static str>>,
    /// Request bodies over the size limit (413), refused before the state machine sees them.
    oversized: std::sync::atomic::AtomicU64,
}

impl Service {
    /// The communities as last recorded.
    pub fn state(&self) -> RegistryState {
        self.shown.lock().map(|shown| shown.0.clone()).unwrap_or_default()
    }

    /// Handles one request body; the encoded answer, or the refusal's status and reason.
    async fn handle(&self, body: &[u8], client: std::net::SocketAddr) -> Result<Vec<u8>, (StatusCode, String)> {
        let mut registry = self.registry.lock().await;
        let reply = match registry.handle_bytes(body, unix_ms()) {
            Ok(reply) => reply,
            Err(error) => {
                self.show(&registry);
                let status = if error.reason() == "bad-tag" {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::BAD_REQUEST
                };
                // A wrongly keyed edge asks every second: one warning every 30 s, the rest counted.
                let due = self
                    .refusal_warnings
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .check(error.reason(), std::time::Instant::now());
                if due.is_some() {
                    warn!(%client, reason = error.reason(), %error, "registry request refused (repeats counted in /metrics)");
                } else {
                    debug!(%client, reason = error.reason(), "registry request refused");
                }
                return Err((status, error.to_string()));
            }
        };
        if reply.changed {
            // Written before the answer leaves: an acknowledged master survives a restart.
            if let Err(error) = persist(&self.state_file, registry.state()).await {
                self.persist_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(path = %self.state_file.display(), %error, "registry state not written");
                return Err((StatusCode::SERVICE_UNAVAILABLE, "registry state not written".into()));
            }
            if let Some(record) = registry.state().communities.get(&reply.answer.community) {
                info!(
                    community = %record.community,
                    master = %record.master.name,
                    term = record.epoch.term,
                    "community master recorded"
                );
            }
        }
        self.show(&registry);
        Ok(community::encode(&self.key, &reply.answer))
    }

    fn show(&self, registry: &Registry) {
        if let Ok(mut shown) = self.shown.lock() {
            *shown = (
                registry.state().clone(),
                *registry.counters(),
                registry.last_claims().clone(),
            );
        }
    }
}

/// Writes `state` to `path` through a temporary file and a rename.
async fn persist(path: &Path, state: &RegistryState) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("json.tmp");
    tokio::fs::write(&temporary, &text).await?;
    let file = tokio::fs::File::open(&temporary).await?;
    file.sync_all().await?;
    tokio::fs::rename(&temporary, path).await
}

/// Reads the state from `path`; empty when the file does not exist. A file that does not parse, or holds
/// an entry filed under another community's name or with a term past [`MAX_TERM`], is refused.
fn load(path: &Path) -> Result<RegistryState, ServiceError> {
    let fail = |reason: String| ServiceError::State {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryState::default()),
        Err(error) => return Err(fail(error.to_string())),
    };
    let state: RegistryState =
        serde_json::from_slice(&bytes).map_err(|error| fail(format!("{error}; {STATE_HINT}")))?;
    for (key, record) in &state.communities {
        let entry = crate::config::shown_value(key);
        if record.community != *key {
            let inner = crate::config::shown_value(&record.community);
            return Err(fail(format!("entry {entry:?} holds community {inner:?}; {STATE_HINT}")));
        }
        if record.epoch.term > MAX_TERM || record.epoch.version > MAX_TERM {
            return Err(fail(format!(
                "entry {entry:?} has epoch {} past the largest term {MAX_TERM}; {STATE_HINT}",
                record.epoch
            )));
        }
    }
    Ok(state)
}

/// Starts the registry (inside a tokio runtime): reads its state, binds its listeners and serves.
pub async fn start(config: ServiceConfig) -> Result<RunningRegistry, ServiceError> {
    std::fs::create_dir_all(&config.data).map_err(|error| ServiceError::State {
        path: config.data.clone(),
        reason: error.to_string(),
    })?;
    let state_file = config.data.join(STATE_FILE);
    let state = load(&state_file)?;
    let communities = state.communities.len();
    // The listener is bound first so that the address answers carry is the real one (port 0 included).
    let (listener, bound) = tern_admin::bind_listener(config.listen).await?;
    let registry_config = RegistryConfig::new(bound, config.key.clone());
    if communities > registry_config.limits.max_communities {
        warn!(
            path = %state_file.display(),
            communities,
            limit = registry_config.limits.max_communities,
            "the registry's state holds more communities than it records: all are kept, new ones are refused until those silent for an hour are forgotten"
        );
    }
    let registry = Registry::new(registry_config, state, seed());
    let service = Arc::new(Service {
        shown: std::sync::Mutex::new((
            registry.state().clone(),
            *registry.counters(),
            registry.last_claims().clone(),
        )),
        registry: Mutex::new(registry),
        key: config.key.clone(),
        state_file,
        persist_failures: std::sync::atomic::AtomicU64::new(0),
        refusal_warnings: std::sync::Mutex::new(tern_admin::KeyedThrottle::default()),
        oversized: std::sync::atomic::AtomicU64::new(0),
    });
    let handler = Arc::new(RegistryHandler {
        service: service.clone(),
    });
    let admin_service = service.clone();
    let routes = move |listen| -> Arc<dyn AdminRoutes> { Arc::new(RegistryAdmin::new(admin_service, listen)) };
    // `launch` binds the main listener itself: hand it the address just bound, released.
    drop(listener);
    let running = tern_admin::launch(
        bound,
        handler,
        ServerLimits::default(),
        config.admin,
        routes,
        service,
        tern_admin::RoleTls::none(),
    )
    .await?;
    info!(listen = %running.listen, admin = ?running.admin, communities, "registry started");
    Ok(running)
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(unix_ms());
    hasher.finish()
}

struct RegistryHandler {
    service: Arc<Service>,
}

impl Handler for RegistryHandler {
    async fn call(&self, request: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        if request.uri().path() != REGISTRY_PATH {
            return json_error(
                StatusCode::NOT_FOUND,
                format!("POST community messages to {REGISTRY_PATH}"),
            );
        }
        if request.method() != Method::POST {
            return json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        }
        let read = tern_http::collect_within(
            request.into_body(),
            community::DEFAULT_MAX_BODY,
            tern_http::REQUEST_BODY_DEADLINE,
        );
        let body = match read.await {
            Ok(body) => body,
            Err(error) => {
                self.service
                    .oversized
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(
                    %client,
                    limit = community::DEFAULT_MAX_BODY,
                    %error,
                    "registry request refused: body over the limit or cut off"
                );
                return json_error(StatusCode::PAYLOAD_TOO_LARGE, error.to_string());
            }
        };
        match self.service.handle(&body, client).await {
            Ok(answer) => {
                let mut response = Response::new(tern_http::full(answer));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/octet-stream"),
                );
                response
            }
            Err((status, reason)) => json_error(status, reason),
        }
    }
}

pub(crate) struct RegistryAdmin {
    service: Arc<Service>,
    listen: SocketAddr,
    metrics: Metrics,
}

impl RegistryAdmin {
    pub(crate) fn new(service: Arc<Service>, listen: SocketAddr) -> RegistryAdmin {
        let mut metrics = Metrics::with_prefix("tern_registry");
        metrics.register_collector(Box::new(RegistryCollector(service.clone())));
        RegistryAdmin {
            service,
            listen,
            metrics,
        }
    }
}

/// The registry's requests by outcome since start, read from its counters at scrape time.
fn outcomes(service: &Service) -> (usize, Vec<(&'static str, u64)>) {
    let (state, counters, _) = service.shown.lock().map(|shown| shown.clone()).unwrap_or_default();
    let refused = counters.refused;
    let persist = service.persist_failures.load(std::sync::atomic::Ordering::Relaxed);
    let oversized = service.oversized.load(std::sync::atomic::Ordering::Relaxed);
    let outcomes = vec![
        ("added", counters.added),
        ("replaced", counters.replaced),
        ("refreshed", counters.refreshed),
        ("stale", counters.stale),
        ("full", counters.full),
        ("lists", counters.lists),
        ("refused_bad_tag", refused.bad_tag),
        ("refused_oversized", refused.oversized.saturating_add(oversized)),
        ("refused_malformed", refused.malformed),
        ("refused_stale", refused.stale),
        ("refused_replayed", refused.replayed),
        ("persist_failed", persist),
    ];
    (state.communities.len(), outcomes)
}

/// Reads the registry's counters at scrape time.
struct RegistryCollector(Arc<Service>);

impl std::fmt::Debug for RegistryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryCollector")
    }
}

impl Collector for RegistryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (communities, outcomes) = outcomes(&self.0);
        let mut requests = encoder.encode_descriptor(
            "requests",
            "Registry requests since start by outcome (added, replaced, refreshed, stale, full, lists, refused reasons, persist failures)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, value) in outcomes {
            let labels = [("outcome", outcome)];
            ConstCounter::new(value).encode(requests.encode_family(&labels)?)?;
        }
        let gauge = encoder.encode_descriptor("communities", "Communities recorded", None, MetricType::Gauge)?;
        ConstGauge::new(i64::try_from(communities).unwrap_or(i64::MAX)).encode(gauge)
    }
}

impl AdminRoutes for RegistryAdmin {
    fn status(&self) -> serde_json::Value {
        let (state, counters, last_claims) = self.service.shown.lock().map(|shown| shown.clone()).unwrap_or_default();
        let now_ms = unix_ms();
        let oversized = self.service.oversized.load(std::sync::atomic::Ordering::Relaxed);
        let communities: Vec<serde_json::Value> = state
            .communities
            .values()
            .map(|record| {
                serde_json::json!({
                    "community": record.community,
                    "master": record.master.name,
                    "master_address": record.master.address.to_string(),
                    "term": record.epoch.term,
                    "epoch": record.epoch.to_string(),
                    // null: no claim since this registry started (a master refreshes periodically).
                    "last_claim_ms": last_claims.get(&record.community),
                    "seconds_since_last_claim": last_claims
                        .get(&record.community)
                        .map(|at| now_ms.saturating_sub(*at) / 1000),
                })
            })
            .collect();
        serde_json::json!({
            "role": "registry",
            "listen": self.listen.to_string(),
            "communities": communities,
            "counters": {
                "added": counters.added,
                "replaced": counters.replaced,
                "refreshed": counters.refreshed,
                "stale": counters.stale,
                "full": counters.full,
                "lists": counters.lists,
                "refused": counters.refused.total().saturating_add(oversized),
                "refused_bad_tag": counters.refused.bad_tag,
                "refused_oversized": counters.refused.oversized.saturating_add(oversized),
            },
        })
    }

    fn registry(&self) -> &Metrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn key() -> SecretKey {
        SecretKey::parse(&"5a".repeat(32)).expect("key")
    }

    fn record(community: &str, term: u64) -> serde_json::Value {
        serde_json::json!({
            "community": community,
            "master": {
                "name": "edge-a", "address": "127.0.0.1:7400", "http": "127.0.0.1:7400", "weight": 100,
                "priority": 128, "capacity": 0, "started_at_ms": 1, "incarnation": 7,
            },
            "epoch": { "term": term, "version": 0 },
        })
    }

    fn load_text(text: &str) -> Result<RegistryState, ServiceError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, text).expect("write");
        load(&path)
    }

    #[test]
    fn a_damaged_state_file_is_refused_with_the_entry_and_what_to_do() {
        let good = serde_json::json!({ "communities": { "site": record("site", 3) } });
        let loaded = load_text(&good.to_string()).expect("a good file loads");
        assert_eq!(loaded.communities["site"].epoch.term, 3);

        let message = load_text("{ not json").expect_err("garbage").to_string();
        assert!(
            message.contains(STATE_FILE) && message.contains("move the file aside"),
            "{message}"
        );

        let mismatched = serde_json::json!({ "communities": { "site": record("other", 3) } });
        let message = load_text(&mismatched.to_string()).expect_err("mismatch").to_string();
        assert!(
            message.contains("\"site\"") && message.contains("\"other\""),
            "{message}"
        );
        assert!(message.contains("move the file aside"), "{message}");

        let huge = serde_json::json!({ "communities": { "site": record("site", u64::MAX) } });
        let message = load_text(&huge.to_string()).expect_err("term at the end").to_string();
        assert!(
            message.contains("\"site\"") && message.contains("largest term"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn an_oversized_request_is_counted_and_requests_are_prometheus_counters() {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = start(ServiceConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            key: key(),
            data: dir.path().to_path_buf(),
        })
        .await
        .expect("registry");
        let mut stream = tokio::net::TcpStream::connect(registry.listen).await.expect("connect");
        let size = community::DEFAULT_MAX_BODY + 1;
        let head =
            format!("POST {REGISTRY_PATH} HTTP/1.1\r\nHost: r\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("head");
        // The registry may answer and close before the whole body is written.
        let _ = stream.write_all(&vec![0u8; size]).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

        let admin = RegistryAdmin::new(registry.role.clone(), registry.listen);
        let status = admin.status();
        assert_eq!(status["counters"]["refused_oversized"], 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, admin.registry()).expect("encode");
        assert!(text.contains("# TYPE tern_registry_requests counter"), "{text}");
        assert!(
            text.contains("tern_registry_requests_total{outcome=\"refused_oversized\"} 1"),
            "{text}"
        );
        assert!(text.contains("tern_registry_communities 0"), "{text}");
        registry.shutdown().await;
    }
}
