//! `tern node`: the agent on each backend server (seed 004). It registers with the mover (name, address,
//! free disk, CPUs, content groups, the version of each site it holds: a
//! [`tern_wire::mover::Registration`]) at start and then periodically, takes assignments over HTTP, checks
//! their signature and hashes before anything touches disk, and applies them with the content interpreter,
//! answering with a [`tern_wire::mover::AssignmentAnswer`] or an [`tern_wire::mover::ErrorAnswer`]. A node
//! that was down registers again when it is back, and the mover brings it up to date.
//!
//! Every assignment is received into the spool on disk and checked as it arrives ([`crate::spool`]); with
//! a cluster key the agent also takes part in the store-and-forward tree as a group leader
//! ([`crate::forward`]: `POST /tree/notify`, `GET /tree/assignments/ID`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tern_http::Body;
use tern_http::server::{Handler, Running, ServerLimits, serve_with};
use tern_http::tls::{CertStore, ClientTls, HttpsClient, TlsConfig};
use tern_wire::SecretKey;
use tern_wire::assignment::{AssignmentError, Checked, Limits};
use tern_wire::mover::{AssignmentAnswer, ErrorAnswer, Registration};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::forward::{ForwardSettings, Forwarder};
use crate::interpreter::Interpreter;
use crate::mctp::applied::{self, Application, AppliedLog};
use crate::mctp::driver::DataChannel;
use crate::spool::{Entry, FillError, Spool};

/// The directory under the node's root for what it keeps across restarts (the record of applied
/// assignments); unlike `.spool`, it is not emptied at start.
pub const STATE_DIR: &str = ".state";

/// Settings of the node agent.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The mover's API, e.g. `http://10.0.0.1:7000` or `https://mover.example:7000`.
    pub mover: String,
    /// Where the node takes assignments.
    pub listen: SocketAddr,
    /// The URL the mover should use to reach this node (default: `http://<listen>`, or `https://<listen>`
    /// with `tls`).
    pub advertise: Option<String>,
    /// Root of the hosted sites.
    pub root: PathBuf,
    /// This node's name.
    pub name: String,
    /// The mover's public key.
    pub mover_key: VerifyingKey,
    /// Key that decrypts encrypted assignments.
    pub decryption_key: Option<[u8; 32]>,
    /// Bounds on assignments.
    pub limits: Limits,
    /// How often to register again.
    pub register_interval: Duration,
    /// Content groups this node declares itself a member of.
    pub groups: Vec<String>,
    /// How long a version that stopped being live is kept (see [`crate::interpreter::SUPERSEDED_GRACE`]).
    pub superseded_grace: Duration,
    /// Certificates: with them the node takes assignments over HTTPS only.
    pub tls: Option<TlsConfig>,
    /// CA certificate file (PEM) that alone vouches for an `https://` mover; without it the system's roots
    /// do.
    pub ca: Option<PathBuf>,
    /// The cluster key (`tern keygen`) the mover and every node share: it authenticates the
    /// store-and-forward tree's messages; without it the node takes assignments only from the mover.
    pub cluster_key: Option<SecretKey>,
    /// How the node takes part in distribution trees as a group leader.
    pub tree: ForwardSettings,
}

/// A running node agent.
pub struct NodeAgent {
    pub(crate) config: NodeConfig,
    pub(crate) interpreter: Interpreter,
    /// Where assignments are received to (`ROOT/.spool`).
    pub(crate) spool: Spool,
    /// The group leader's side of the tree, with a cluster key.
    pub(crate) forwarder: Option<Forwarder>,
    /// The segment's multicast data channel (local distribution), with a cluster key and
    /// [`ForwardSettings::data_channel`].
    pub(crate) data_channel: Option<Arc<DataChannel>>,
    /// The assignments applied, by signed hash, kept in `ROOT/.state` across restarts: a copy that arrives
    /// again (by the data channel and the unicast path both, or after a restart) is answered from it
    /// instead of being applied twice; the data channel answers "complete" from it too.
    pub(crate) applied: Arc<AppliedLog>,
    /// Stops the agent, and every transfer it leads.
    pub(crate) shutdown: CancellationToken,
    /// This node's instance id (`ROOT/.state/instance`), sent with every registration.
    pub(crate) instance: String,
    /// Its own metrics.
    pub(crate) metrics: crate::metrics::NodeMetrics,
    /// The segment's election and registration figures, once discovery runs beside the agent.
    pub(crate) discovery_metrics: std::sync::OnceLock<crate::discovery::DiscoveryMetrics>,
}

/// The file in `ROOT/.state` that keeps the node's instance id.
pub const INSTANCE_FILE: &str = "instance";

/// The instance id kept in `state` ([`INSTANCE_FILE`]), made and written there at the first start. A file
/// that does not hold one is an error naming it (rather than a new id, which would make the mover take
/// this node for another machine).
fn load_or_create_instance(state: &std::path::Path) -> std::io::Result<String> {
    let path = state.join(INSTANCE_FILE);
    match tern_wire::read_setting_text(&path) {
        Ok(text) => {
            let instance = text.trim().to_string();
            if instance.is_empty() || !tern_wire::mover::valid_instance(&instance) {
                return Err(std::io::Error::other(format!(
                    "{} does not hold this node's instance id (32 hex digits); delete it to make a new one, then remove the node's old record at the mover (`tern nodes --remove NAME`)",
                    path.display()
                )));
            }
            Ok(instance)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(state)?;
            let instance = tern_wire::mover::new_instance();
            let temporary = state.join(format!("{INSTANCE_FILE}.new"));
            std::fs::write(&temporary, format!("{instance}\n"))?;
            std::fs::File::open(&temporary)?.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            Ok(instance)
        }
        Err(error) => Err(std::io::Error::new(
            error.kind(),
            format!("{}: {error}", path.display()),
        )),
    }
}

impl NodeAgent {
    /// The version (sequence) of each site this node holds live.
    pub fn versions(&self) -> BTreeMap<String, u64> {
        let mut versions = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&self.config.root) else {
            return versions;
        };
        for entry in entries.flatten() {
            let Some(site) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Some(sequence) = crate::interpreter::live_version(&entry.path()) {
                versions.insert(site, sequence);
            }
        }
        versions
    }

    /// The tree's counters and the transfers this node leads now (`None` without a cluster key).
    pub fn tree_status(&self) -> Option<serde_json::Value> {
        self.forwarder.as_ref().map(Forwarder::status)
    }

    /// Tree messages this node refused, by reason (empty without a cluster key).
    pub fn tree_refused(&self) -> BTreeMap<String, u64> {
        self.forwarder.as_ref().map(Forwarder::refused).unwrap_or_default()
    }

    /// Applies an assignment received (from the mover, or from its group leader), counting the outcome.
    /// Blocking.
    pub(crate) fn apply_received(&self, entry: &Entry, checked: &Checked) -> Result<Application, String> {
        let outcome = self.applied.apply(
            &self.interpreter,
            entry,
            checked,
            self.config.decryption_key.as_ref(),
            &self.config.limits,
        );
        self.metrics.assignment(match &outcome {
            Ok(application) if application.again => "again",
            Ok(_) => "applied",
            Err(_) => "refused",
        });
        outcome
    }

    /// What this node tells the mover when it registers, listening on `bound` (also what it registers with
    /// in its segment, [`crate::discovery`]).
    pub fn registration(&self, bound: SocketAddr) -> Registration {
        Registration {
            name: self.config.name.clone(),
            url: self.url(bound),
            versions: self.versions(),
            prepared: self.interpreter.prepared(),
            free_disk: free_disk(&self.config.root),
            cpus: cpus(),
            groups: self.config.groups.clone(),
            instance: self.instance.clone(),
            encryption_key_id: self
                .config
                .decryption_key
                .as_ref()
                .map(tern_wire::mover::encryption_key_id),
        }
    }

    fn url(&self, bound: SocketAddr) -> String {
        let scheme = if self.config.tls.is_some() { "https" } else { "http" };
        self.config
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{bound}"))
    }
}

/// Starts the node agent. A certificate or CA file that cannot be used is an error of kind `Other`
/// whose message names the file.
pub async fn start(config: NodeConfig) -> std::io::Result<Running<Arc<NodeAgent>>> {
    std::fs::create_dir_all(&config.root)?;
    let certs = match config.tls.clone() {
        Some(tls) => Some(CertStore::load(tls).map_err(std::io::Error::other)?),
        None => None,
    };
    let client_tls = ClientTls::new(config.ca.as_deref()).map_err(std::io::Error::other)?;
    let listener = TcpListener::bind(config.listen).await?;
    let bound = listener.local_addr()?;
    let spool = Spool::open(&config.root.join(".spool"))?;
    let forwarder = config
        .cluster_key
        .clone()
        .map(|key| Forwarder::new(key, config.tree.clone(), client_tls.client()));
    let shutdown = CancellationToken::new();
    let applied = Arc::new(AppliedLog::open(&config.root.join(STATE_DIR), applied::REMEMBERED)?);
    let instance = load_or_create_instance(&config.root.join(STATE_DIR))?;
    let (data_channel, received) = match (&config.tree.data_channel, &config.cluster_key) {
        (Some(settings), Some(key)) => {
            let spool_dir = config.root.join(".spool").join("mctp");
            let (channel, received) =
                crate::mctp::driver::start(settings.clone(), key.clone(), &config.name, &spool_dir, applied.clone())
                    .map_err(std::io::Error::other)?;
            (Some(Arc::new(channel)), Some(received))
        }
        (Some(_), None) => {
            return Err(std::io::Error::other(
                "a data channel needs the cluster key (its control messages carry the key's tag)",
            ));
        }
        _ => (None, None),
    };
    let agent = Arc::new(NodeAgent {
        interpreter: Interpreter::new(&config.root).refusing_switches_older_than(crate::interpreter::MAX_SWITCH_AGE),
        config,
        spool,
        forwarder,
        data_channel,
        applied,
        shutdown: shutdown.clone(),
        instance,
        metrics: crate::metrics::NodeMetrics::default(),
        discovery_metrics: std::sync::OnceLock::new(),
    });
    let limits = ServerLimits::default();
    let mut tasks = vec![tokio::spawn(serve_with(
        listener,
        Arc::new(NodeApi { agent: agent.clone() }),
        limits,
        certs.as_ref().map(|certs| certs.acceptor()),
        shutdown.clone(),
    ))];
    if let Some(certs) = &certs {
        info!(listen = %bound, certificates = %certs.describe(), "certificates loaded");
        tasks.push(tokio::spawn(certs.watch(shutdown.clone())));
    }
    if let Some(received) = received {
        tasks.push(tokio::spawn(crate::mctp::node::apply_received(agent.clone(), received)));
        let (agent, shutdown) = (agent.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            shutdown.cancelled().await;
            if let Some(channel) = agent.data_channel.clone() {
                let _ = tokio::task::spawn_blocking(move || channel.stop()).await;
            }
        }));
    }
    tasks.push(tokio::spawn(register_loop(
        agent.clone(),
        bound,
        client_tls.client(),
        shutdown.clone(),
    )));
    info!(listen = %bound, root = %agent.config.root.display(), mover = %agent.config.mover, "node agent started");
    Ok(Running::new(bound, None, agent, shutdown, tasks))
}

async fn register_loop(
    agent: Arc<NodeAgent>,
    bound: SocketAddr,
    client: HttpsClient<Full<Bytes>>,
    shutdown: CancellationToken,
) {
    let url = format!("{}/api/nodes/register", agent.config.mover.trim_end_matches('/'));
    let mut failures: tern_admin::Throttle<()> = tern_admin::Throttle::default();
    loop {
        // Reading the sites' versions and the free disk touches the file system: off the async threads.
        let reader = agent.clone();
        let registration = tokio::task::spawn_blocking(move || reader.registration(bound)).await;
        let outcome = async {
            let failed = |error: String| RegistrationError::Failed(error);
            let registration = registration.map_err(|e| failed(e.to_string()))?;
            agent
                .metrics
                .free_disk
                .set(i64::try_from(registration.free_disk).unwrap_or(i64::MAX));
            let (body, content_type) = registration_body(registration, agent.config.cluster_key.as_ref())
                .map_err(|e| failed(e.to_string()))?;
            let request = Request::post(&url)
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| failed(e.to_string()))?;
            let response = client
                .request(request)
                .await
                .map_err(|e| failed(tern_http::tls::error_reason(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), ErrorAnswer::MAX_BODY)
                .collect()
                .await
                .map(|body| body.to_bytes())
                .unwrap_or_default();
            refused(status, &body)
        };
        let outcome = tokio::time::timeout(Duration::from_secs(10), outcome).await;
        let failure = match outcome {
            Ok(Ok(())) => {
                debug!(mover = %agent.config.mover, "registered");
                agent.metrics.registration("ok");
                None
            }
            Ok(Err(RegistrationError::Refused(error))) => {
                agent.metrics.registration("refused");
                Some(error)
            }
            Ok(Err(RegistrationError::Failed(error))) => {
                agent.metrics.registration("failed");
                Some(error)
            }
            Err(_) => {
                agent.metrics.registration("failed");
                Some("no answer within 10 s".to_string())
            }
        };
        // Every 10 s the same failure would fill the log: once every 30 s, with how many were left out.
        if let Some(error) = failure
            && let Some(suppressed) = failures.check((), std::time::Instant::now())
        {
            warn!(%error, mover = %agent.config.mover, suppressed, "registration failed; retrying");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(agent.config.register_interval) => {}
        }
    }
}

/// CPUs this node can use (1 when unknown).
fn cpus() -> u32 {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    u32::try_from(cpus).unwrap_or(u32::MAX)
}

/// Bytes free for unprivileged use on the file system holding `root` (0 when unknown).
fn free_disk(root: &std::path::Path) -> u64 {
    rustix::fs::statvfs(root)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}

/// The body of a registration and its content type: with a cluster key, one tagged tree message sent
/// now (the only form a mover with the key takes: `tern_wire::tree`), else the plain JSON.
fn registration_body(
    registration: Registration,
    key: Option<&SecretKey>,
) -> Result<(Vec<u8>, &'static str), serde_json::Error> {
    let Some(key) = key else {
        return Ok((serde_json::to_vec(&registration)?, "application/json"));
    };
    let sender = registration.name.clone();
    let message = tern_wire::tree::TreeMessage::Register { registration };
    let envelope = tern_wire::tree::Envelope::new(&sender, message, crate::clock::unix_ms());
    Ok((tern_wire::tree::encode(key, &envelope), "application/octet-stream"))
}

/// Why a registration did not go through.
enum RegistrationError {
    /// The mover answered no, with its reason.
    Refused(String),
    /// No answer: the mover is down or unreachable, or the request could not be made.
    Failed(String),
}

/// The mover's answer to a registration: an error with the mover's reason unless it took it.
fn refused(status: StatusCode, body: &[u8]) -> Result<(), RegistrationError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(RegistrationError::Refused(format!(
            "mover answered {status}: {}",
            ErrorAnswer::reason_in(body)
        )))
    }
}

struct NodeApi {
    agent: Arc<NodeAgent>,
}

fn json(status: StatusCode, value: impl serde::Serialize) -> Response<Body> {
    match serde_json::to_value(value) {
        Ok(value) => tern_admin::json(status, &value),
        Err(error) => tern_admin::json_error(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// A refusal: `{"error": REASON}`.
fn refusal(status: StatusCode, error: String) -> Response<Body> {
    json(status, ErrorAnswer { error })
}

/// Receives an assignment posted to this node into a spool file, checking it as it arrives (a body
/// declared or grown over `limit` bytes is refused with 413 as soon as that is known).
async fn receive(
    agent: &NodeAgent,
    request: Request<Incoming>,
) -> Result<(crate::spool::Entry, tern_wire::assignment::Checked), Response<Body>> {
    let limit = agent.config.limits.max_total;
    let too_large = || {
        refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("assignment over the node's limit of {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        warn!(declared, limit, "assignment refused: over this node's limit");
        return Err(too_large());
    }
    let entry = agent.spool.scratch(declared);
    let filled = crate::spool::fill(
        &entry,
        request.into_body(),
        agent.config.limits,
        agent.config.mover_key,
        agent.config.tree.idle_timeout,
        &agent.shutdown,
    )
    .await;
    // Every refusal is logged here too: the mover's log is not the only place an operator looks, and a
    // node refusing everything (a wrong --key, a full disk) must say so itself.
    match filled {
        Ok(checked) => Ok((entry, checked)),
        Err(FillError::Refused(AssignmentError::TooLarge(_))) => {
            warn!(limit, "assignment refused: over this node's limit");
            Err(too_large())
        }
        Err(error @ FillError::Disk(_)) => {
            warn!(%error, "assignment not received: this node's disk refused it");
            Err(refusal(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))
        }
        Err(error) => {
            warn!(%error, "assignment refused");
            Err(refusal(StatusCode::BAD_REQUEST, error.to_string()))
        }
    }
}

/// After a switch: the next temp tree is linked and old versions deleted once the mover has its answer,
/// and again when the superseded version's grace period is over.
pub(crate) fn tidy_after_switch(agent: Arc<NodeAgent>, site: String) {
    tokio::spawn(async move {
        let grace = agent.config.superseded_grace;
        let rounds: &[Duration] = if grace.is_zero() {
            &[Duration::ZERO]
        } else {
            &[Duration::ZERO, grace.saturating_add(Duration::from_secs(1))]
        };
        for wait in rounds {
            tokio::time::sleep(*wait).await;
            let (worker, name) = (agent.clone(), site.clone());
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || worker.interpreter.tidy_with_grace(&name, grace)).await {
                Ok(Ok(())) => debug!(%site, seconds = started.elapsed().as_secs_f64(), "site tidied"),
                Ok(Err(error)) => {
                    warn!(%site, %error, "tidying the site failed; the next publish links its tree itself")
                }
                Err(_) => return,
            }
        }
    });
}

/// `GET /metrics`: the node's Prometheus metrics, and local distribution's with a data channel.
fn metrics(agent: &NodeAgent) -> Response<Body> {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut text = String::new();
    let mut encoded = encode_registry(&mut text, &agent.metrics.registry);
    if let Some(channel) = agent.data_channel.as_ref() {
        encoded = encoded.and_then(|()| encode_registry(&mut text, &channel.metrics().registry));
    }
    if let Some(discovery) = agent.discovery_metrics.get() {
        let mut registry = prometheus_client::registry::Registry::with_prefix("tern_node");
        registry.register_collector(Box::new(discovery.clone()));
        encoded = encoded.and_then(|()| encode_registry(&mut text, &registry));
    }
    if encoded.and_then(|()| encode_eof(&mut text)).is_err() {
        return refusal(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed".into());
    }
    let mut response = Response::new(tern_http::full(text));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

impl Handler for NodeApi {
    async fn call(&self, request: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let agent = &self.agent;
        match (request.method(), request.uri().path()) {
            (&Method::POST, "/assignments") => {
                let (entry, checked) = match receive(agent, request).await {
                    Ok(received) => received,
                    Err(response) => return response,
                };
                let worker = agent.clone();
                let outcome = tokio::task::spawn_blocking(move || worker.apply_received(&entry, &checked)).await;
                match outcome {
                    Ok(Ok(application)) => {
                        if application.again {
                            debug!(%client, id = %application.id, "assignment applied already; answered from the record");
                        } else if application.applied.live.is_some() {
                            tidy_after_switch(agent.clone(), application.site);
                        }
                        json(
                            StatusCode::OK,
                            AssignmentAnswer {
                                id: application.id,
                                commands: application.applied.commands as u64,
                                live: application.applied.live,
                            },
                        )
                    }
                    Ok(Err(reason)) => {
                        warn!(%client, %reason, "assignment refused");
                        refusal(StatusCode::BAD_REQUEST, reason)
                    }
                    Err(error) => refusal(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
                }
            }
            (&Method::POST, "/tree/notify") => crate::forward::accept(agent, request).await,
            (&Method::GET, path) if path.starts_with("/tree/assignments/") => {
                let token = request
                    .headers()
                    .get(tern_wire::tree::FETCH_TOKEN_HEADER)
                    .and_then(|value| value.to_str().ok());
                crate::forward::serve(agent, &path["/tree/assignments/".len()..], request.uri().query(), token)
            }
            (&Method::GET, "/metrics") => metrics(agent),
            (&Method::GET, "/status") => json(
                StatusCode::OK,
                serde_json::json!({
                    "role": "node",
                    "name": agent.config.name,
                    "versions": agent.versions(),
                    "tree": agent.tree_status(),
                    "data_channel": agent.data_channel.as_ref().map(|channel| channel.address().to_string()),
                    "segment": agent.discovery_metrics.get().map(|discovery| discovery.status()),
                }),
            ),
            (method, path) => refusal(StatusCode::NOT_FOUND, format!("no endpoint {method} {path}")),
        }
    }
}
