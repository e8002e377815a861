//! `tern node`: the agent on each backend server (seed 004). It registers with the mover (name, address,
//! free disk, CPUs, content groups, the version of each site it holds: a
//! [`tern_wire::mover::Registration`]) at start and then periodically, takes assignments over HTTP, checks
//! their signature and hashes before anything touches disk, and applies them with the content interpreter,
//! answering with a [`tern_wire::mover::AssignmentAnswer`] or an [`tern_wire::mover::ErrorAnswer`]. A node
//! that was down registers again when it is back, and the mover brings it up to date.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tern_http::Body;
use tern_http::server::{Handler, Running, ServerLimits, serve_with};
use tern_http::tls::{CertStore, ClientTls, HttpsClient, TlsConfig};
use tern_wire::assignment::{Limits, decode_owned};
use tern_wire::mover::{AssignmentAnswer, ErrorAnswer, Registration};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::interpreter::Interpreter;

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
}

/// A running node agent.
pub struct NodeAgent {
    config: NodeConfig,
    interpreter: Interpreter,
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
            let Ok(target) = std::fs::read_link(entry.path().join("live")) else {
                continue;
            };
            let sequence = target
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(sequence) = sequence {
                versions.insert(site, sequence);
            }
        }
        versions
    }

    /// What this node tells the mover when it registers, listening on `bound`.
    fn registration(&self, bound: SocketAddr) -> Registration {
        Registration {
            name: self.config.name.clone(),
            url: self.url(bound),
            versions: self.versions(),
            free_disk: free_disk(&self.config.root),
            cpus: cpus(),
            groups: self.config.groups.clone(),
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
    let agent = Arc::new(NodeAgent {
        interpreter: Interpreter::new(&config.root),
        config,
    });
    let shutdown = CancellationToken::new();
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
    loop {
        // Reading the sites' versions and the free disk touches the file system: off the async threads.
        let reader = agent.clone();
        let registration = tokio::task::spawn_blocking(move || reader.registration(bound)).await;
        let outcome = async {
            let body = serde_json::to_vec(&registration?)?;
            let request = Request::post(&url)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))?;
            let response = client
                .request(request)
                .await
                .map_err(|e| tern_http::tls::error_reason(&e))?;
            let status = response.status();
            let _ = response.into_body().collect().await;
            anyhow_like(status)
        };
        match tokio::time::timeout(Duration::from_secs(10), outcome).await {
            Ok(Ok(())) => debug!(mover = %agent.config.mover, "registered"),
            Ok(Err(error)) => warn!(%error, mover = %agent.config.mover, "registration failed; retrying"),
            Err(_) => warn!(mover = %agent.config.mover, "registration timed out; retrying"),
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

fn anyhow_like(status: StatusCode) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("mover answered {status}").into())
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

/// Reads an assignment's bytes into one buffer, sized from `content-length` when it is within `limit`
/// (the assignment is then copied once, from the socket's chunks, and never again).
async fn receive(request: Request<Incoming>, limit: u64) -> Result<Vec<u8>, Response<Body>> {
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
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| refusal(StatusCode::BAD_REQUEST, format!("assignment cut off: {error}")))?;
        if let Ok(chunk) = frame.into_data() {
            if bytes.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
    }
    Ok(bytes)
}

/// After a switch: the next temp tree is linked and old versions deleted once the mover has its answer,
/// and again when the superseded version's grace period is over.
fn tidy_after_switch(agent: Arc<NodeAgent>, site: String) {
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

impl Handler for NodeApi {
    async fn call(&self, request: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let agent = &self.agent;
        match (request.method(), request.uri().path()) {
            (&Method::POST, "/assignments") => {
                let bytes = match receive(request, agent.config.limits.max_total).await {
                    Ok(bytes) => bytes,
                    Err(response) => return response,
                };
                let worker = agent.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let assignment = decode_owned(
                        bytes,
                        &worker.config.mover_key,
                        worker.config.decryption_key.as_ref(),
                        &worker.config.limits,
                    )
                    .map_err(|e| e.to_string())?;
                    worker
                        .interpreter
                        .apply(&assignment)
                        .map_err(|e| e.to_string())
                        .map(|applied| (assignment.header.id.clone(), assignment.header.site.clone(), applied))
                })
                .await;
                match outcome {
                    Ok(Ok((id, site, applied))) => {
                        if applied.live.is_some() {
                            tidy_after_switch(agent.clone(), site);
                        }
                        json(
                            StatusCode::OK,
                            AssignmentAnswer {
                                id,
                                commands: applied.commands as u64,
                                live: applied.live,
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
            (&Method::GET, "/status") => json(
                StatusCode::OK,
                serde_json::json!({ "role": "node", "name": agent.config.name, "versions": agent.versions() }),
            ),
            (method, path) => refusal(StatusCode::NOT_FOUND, format!("no endpoint {method} {path}")),
        }
    }
}
