//! Active content synchronisation (seed `001_efd6385690e0308b.txt`): the CP agent watches the origin's
//! content and reports changes over an authenticated TCP protocol; the sync service's listener checks the
//! protocol, the master checks the URLs and records the changes durably, and the cacher turns them into
//! plain HTTP commands to every cache (`PURGE`, then a prefetch `GET`), so caches hold the new bytes the
//! moment the origin changes.

pub mod agent;
pub mod aliases;
pub mod cacher;
pub mod listener;
pub mod master;
pub mod metrics;
pub mod urls;
pub mod watches;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tern_admin::AdminRoutes;
use tern_http::server::Running;
use tern_wire::SecretKey;
use tern_wire::sync::{Applied, CacheApplied, CatchUp, Incarnation, LoggedChange, PurgeRecorded, PurgeRequest};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use agent::{Agent, AgentConfig};
pub use cacher::{CacheConfig, CacheProgress};
pub use master::{Master, SiteConfig};

use crate::cacher::{CacheWorker, CacherSettings};
use crate::metrics::SyncMetrics;

/// Settings of the sync service.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Listener for agents.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// The agents' key.
    pub key: SecretKey,
    /// The caches' purge key.
    pub cache_key: Option<SecretKey>,
    /// Where the change log and cache positions live.
    pub data_dir: PathBuf,
    /// Sites.
    pub sites: Vec<SiteConfig>,
    /// Caches.
    pub caches: Vec<CacheConfig>,
    /// Largest frame payload accepted from agents.
    pub max_frame: usize,
    /// How long a failing cache's commands are retried (the longest freshness lifetime of the sites).
    pub max_retry_age: Duration,
    /// Timeout of one command to a cache.
    pub request_timeout: Duration,
    /// Changes applied to one cache at a time ([`cacher::DEFAULT_COMMANDS_IN_FLIGHT`]).
    pub commands_in_flight: usize,
    /// The CA file `https://` caches are verified against (`--cache-ca`); `None`: the system's roots.
    pub cache_ca: Option<PathBuf>,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory or log is unusable.
    #[error("sync data {path}: {source}")]
    Data {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A setting is wrong.
    #[error("{0}")]
    Config(String),
}

/// A running sync service.
pub struct SyncService {
    master: Arc<Master>,
    metrics: Arc<SyncMetrics>,
    progress: Vec<Arc<Mutex<CacheProgress>>>,
    listen: SocketAddr,
}

impl SyncService {
    /// The master.
    pub fn master(&self) -> &Arc<Master> {
        &self.master
    }

    /// Each cache's progress.
    pub fn progress(&self) -> Vec<CacheProgress> {
        self.progress
            .iter()
            .map(|p| {
                let mut progress = p.lock().unwrap_or_else(|e| e.into_inner()).clone();
                (progress.lag_changes, progress.lag_seconds) = progress.lag_now(&self.master);
                progress
            })
            .collect()
    }

    /// Whether every cache has applied the whole log.
    pub fn caught_up(&self) -> bool {
        let length = self.master.len();
        self.progress
            .iter()
            .all(|p| p.lock().unwrap_or_else(|e| e.into_inner()).applied_through >= length)
    }
}

/// Starts the sync service.
pub async fn start(config: SyncConfig) -> Result<Running<Arc<SyncService>>, StartError> {
    start_with(config, None).await
}

/// Starts the sync service; with `admin_certs` its admin listener (`/changes`, `/purge`, `/status`)
/// serves HTTPS only, reloading the certificates while it runs.
pub async fn start_with(
    config: SyncConfig,
    admin_certs: Option<Arc<tern_http::tls::CertStore>>,
) -> Result<Running<Arc<SyncService>>, StartError> {
    if config.sites.is_empty() {
        return Err(StartError::Config(
            "no sites: give --site NAME=HOST (or [[sync.sites]] in the config)".into(),
        ));
    }
    if config.caches.is_empty() {
        return Err(StartError::Config(
            "no caches: give --cache URL (or [[sync.caches]] in the config)".into(),
        ));
    }
    for site in &config.sites {
        if site.name.trim().is_empty() || site.hosts.is_empty() {
            return Err(StartError::Config(format!(
                "site `{}`: give it as NAME=HOST[,HOST...], e.g. www=www.example.com",
                site.name
            )));
        }
        for host in &site.hosts {
            // A host as the agents' URLs carry it (`www.example.com`, `www.example.com:8080`): a scheme or
            // a path would make every change of the site refused as belonging to no site.
            if host.parse::<http::uri::Authority>().is_err() || host.contains(['/', '@']) {
                return Err(StartError::Config(format!(
                    "site `{}`: `{host}` is not a host name; give the host alone (www.example.com, or \
                     www.example.com:8080), without http:// or a path",
                    site.name
                )));
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for cache in &config.caches {
        if !seen.insert(cache.url.trim_end_matches('/')) {
            return Err(StartError::Config(format!(
                "cache `{}` is given twice: each change would be sent to it twice",
                cache.url
            )));
        }
    }
    for cache in &config.caches {
        let secure = cache.url.starts_with("https://");
        if !secure && !cache.url.starts_with("http://") {
            return Err(StartError::Config(format!(
                "cache `{}`: give its base URL as http://HOST:PORT or https://HOST:PORT",
                cache.url
            )));
        }
        // Commands go to the cache's own paths (`PURGE /page.html` with the site's Host): a path in the
        // cache's URL would be put before every one, and the cache would purge keys it does not hold.
        if !cache_url_has_no_path(&cache.url) {
            return Err(StartError::Config(format!(
                "cache `{}`: give its base URL as http(s)://HOST:PORT, a port up to 65535 and no path, query or user:password@ (the cache keys objects by the site's own paths)",
                cache.url
            )));
        }
        // The purge token is the key to every cache's purge: in clear, anyone on the path can purge them
        // all and send the load to the origin.
        if !secure && config.cache_key.is_some() && !cache_on_loopback(&cache.url) {
            warn!(cache = %cache.url, "the purge token goes to this cache over plain HTTP, readable on the network: give its https:// URL (with --cache-ca for a private CA)");
        }
    }
    if config.cache_ca.is_some() && !config.caches.iter().any(|cache| cache.url.starts_with("https://")) {
        warn!("--cache-ca is given but every cache is http://: the CA is not used (give the caches' https:// URLs)");
    }
    let tls = tern_http::tls::ClientTls::new(config.cache_ca.as_deref())
        .map_err(|error| StartError::Config(format!("--cache-ca: {error}")))?;
    let data_dir = config.data_dir.clone();
    let sites = config.sites.clone();
    let master = tokio::task::spawn_blocking(move || Master::open(&data_dir, sites))
        .await
        .map_err(|e| StartError::Config(e.to_string()))?
        .map_err(|source| StartError::Data {
            path: config.data_dir.clone(),
            source,
        })?;
    let master = Arc::new(master);
    let metrics = Arc::new(SyncMetrics::new());
    let shutdown = CancellationToken::new();
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
    if config.cache_key.is_none() && !config.caches.is_empty() {
        warn!(
            "no --cache-key: PURGE goes to the caches without a token, and an edge started with --purge-key refuses it (403, retried with back-off); give the edges' purge key file"
        );
    }
    let settings = CacherSettings {
        token: config.cache_key.as_ref().map(SecretKey::token),
        max_retry_age: config.max_retry_age,
        request_timeout: config.request_timeout,
        commands_in_flight: config.commands_in_flight,
        tls,
        data_dir: config.data_dir.clone(),
    };
    let mut tasks = Vec::new();
    let mut progress = Vec::new();
    for cache in &config.caches {
        let worker = CacheWorker::new(cache.clone(), settings.clone(), master.clone(), metrics.clone());
        progress.push(worker.progress());
        tasks.push(tokio::spawn(worker.run(shutdown.clone())));
    }
    let listener_settings = listener::ListenerSettings {
        key: config.key.clone(),
        max_frame: config.max_frame,
        frame_deadline: listener::FRAME_DEADLINE,
    };
    tasks.push(tokio::spawn(listener::serve(
        listener,
        listener_settings,
        master.clone(),
        metrics.clone(),
        shutdown.clone(),
    )));
    let service = Arc::new(SyncService {
        master: master.clone(),
        metrics,
        progress,
        listen,
    });
    let mut admin = None;
    if let Some(addr) = config.admin {
        let admin_listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        admin = Some(
            admin_listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?,
        );
        let routes: Arc<dyn AdminRoutes> = Arc::new(SyncAdmin {
            service: service.clone(),
            key: config.key.clone(),
            unknown_edges: Arc::default(),
        });
        tasks.push(tokio::spawn(tern_admin::serve_admin_with(
            admin_listener,
            routes,
            admin_certs.as_ref().map(|certs| certs.acceptor()),
            shutdown.clone(),
        )));
        if let Some(certs) = &admin_certs {
            tasks.push(tokio::spawn(certs.watch(shutdown.clone())));
        }
    }
    info!(%listen, admin = ?admin, caches = config.caches.len(), sites = config.sites.len(), log = master.len(), "sync service started");
    Ok(Running::new(listen, admin, service, shutdown, tasks))
}

struct SyncAdmin {
    service: Arc<SyncService>,
    key: SecretKey,
    /// Edges that caught up here without being one of the caches, as already warned about.
    unknown_edges: Arc<Mutex<UnknownEdges>>,
}

/// Edges warned about for not being caches: address and the ports they named.
type UnknownEdges = std::collections::HashSet<(std::net::IpAddr, Vec<u16>)>;

impl AdminRoutes for SyncAdmin {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "role": "sync",
            "listen": self.service.listen.to_string(),
            "log_length": self.service.master.len(),
            "log": self.service.master.log_id(),
            "sites": self.service.master.sites(),
            "caches": self.service.progress(),
            "caught_up": self.service.caught_up(),
            // Edges that caught up here but that no --cache URL names: they get no purges.
            "edges_not_in_caches": self
                .unknown_edges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(address, ports)| serde_json::json!({ "address": address.to_string(), "ports": ports }))
                .collect::<Vec<_>>(),
        })
    }

    fn registry(&self) -> &Registry {
        &self.service.metrics.registry
    }

    /// Each cache's lag as of the scrape.
    fn refresh_metrics(&self) {
        for progress in self.service.progress() {
            self.service
                .metrics
                .set_lag(&progress.url, progress.lag_changes, progress.lag_seconds);
        }
    }

    fn route<'a>(&'a self, request: &'a tern_admin::AdminRequest) -> Option<tern_admin::ResponseFuture<'a>> {
        match request.path.as_str() {
            "/changes" => Some(Box::pin(async move {
                let query = request.query.as_deref().unwrap_or("");
                self.note_unknown_edge(request.client, query);
                self.changes_since(query)
            })),
            "/purge" => Some(Box::pin(async move { self.purge(request).await })),
            "/applied" => Some(Box::pin(
                async move { self.applied(request.query.as_deref().unwrap_or("")) },
            )),
            _ => None,
        }
    }

    fn endpoints(&self) -> Vec<&'static str> {
        vec!["/changes", "/purge", "/applied"]
    }
}

/// The value of parameter `name` in a URL query (`since=5&log=x`), undecoded; the first if repeated.
fn query_parameter<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Whether a cache's base URL is only a scheme, host and a port that is one (a trailing `/` allowed).
fn cache_url_has_no_path(url: &str) -> bool {
    url.parse::<http::Uri>().is_ok_and(|uri| {
        uri.query().is_none()
            && matches!(uri.path(), "" | "/")
            && uri.authority().is_some_and(|a| {
                !a.as_str().contains('@') && !a.as_str().ends_with(':') && tern_http::target::port_is_valid(a.as_str())
            })
    }) && !url.contains('#')
}

/// Whether a cache's base URL names this machine (`localhost`, `127.x`, `[::1]`), where nothing on the
/// network reads its traffic.
fn cache_on_loopback(url: &str) -> bool {
    let host = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(|h| h.trim_matches(['[', ']']).to_string()));
    match host.as_deref() {
        Some("localhost") => true,
        Some(host) => host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// Most changes returned by one `/changes` answer; an edge further behind purges everything.
const MAX_CATCH_UP: usize = 100_000;

impl SyncAdmin {
    /// An edge catching up names the ports it serves on (`&ports=8080,8443`): when no cache URL of this
    /// service resolves to its address with one of them, it gets no purges and serves changed content
    /// for its whole lifetime, silently. That is warned about, once per edge (in the background: the
    /// answer does not wait for name resolution).
    fn note_unknown_edge(&self, client: SocketAddr, query: &str) {
        let Some(ports) = query_parameter(query, "ports")
            .map(|list| {
                list.split(',')
                    .filter_map(|port| port.parse::<u16>().ok())
                    .collect::<Vec<u16>>()
            })
            .filter(|ports| !ports.is_empty() && ports.len() <= 4)
        else {
            return;
        };
        let client = client.ip().to_canonical();
        let key = (client, ports.clone());
        if self
            .unknown_edges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            return;
        }
        let urls: Vec<String> = self
            .service
            .progress
            .iter()
            .map(|progress| progress.lock().unwrap_or_else(|p| p.into_inner()).url.clone())
            .collect();
        let warned = self.unknown_edges.clone();
        tokio::spawn(async move {
            for url in &urls {
                let Ok(uri) = url.parse::<http::Uri>() else {
                    continue;
                };
                let (Some(host), port) = (uri.host(), uri.port_u16()) else {
                    continue;
                };
                let port = port.unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
                let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
                let resolved =
                    tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host((host, port))).await;
                if let Ok(Ok(addresses)) = resolved
                    && addresses
                        .into_iter()
                        .any(|address| address.ip().to_canonical() == client && ports.contains(&address.port()))
                {
                    return;
                }
            }
            if warned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((client, ports.clone()))
            {
                warn!(edge = %client, ?ports,
                      "an edge catches up with this sync service but no --cache URL names its address and ports: it \
                       gets no purges and serves changed content until it expires. Add it (--cache http://ADDRESS:PORT), \
                       or ignore this if it is a cache under another address");
            }
        });
    }

    /// `POST /purge {"urls": [...], "files": [...], "prefetch": [...]}` ([`PurgeRequest`]): purge URLs on
    /// every cache of their site (`urls` exactly; `files` and `prefetch`, the URLs of changed files, with
    /// any query), and fetch the `prefetch` ones again. Needs the agents' key token. Answers
    /// [`PurgeRecorded`]; `GET /applied?through=N` then tells when every cache has applied them.
    async fn purge(&self, request: &tern_admin::AdminRequest) -> http::Response<tern_http::Body> {
        if request.method != http::Method::POST {
            return tern_admin::json_error(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "use POST /purge with {\"urls\": [...], \"files\": [...], \"prefetch\": [...]}",
            );
        }
        let token = request
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(tern_admin::bearer_token);
        if !token.is_some_and(|t| self.key.matches_token(t)) {
            return tern_admin::json_error(
                http::StatusCode::FORBIDDEN,
                "purge refused: send the sync key's token as `Authorization: Bearer <token>`",
            );
        }
        let purge: PurgeRequest = match serde_json::from_slice(&request.body) {
            Ok(purge) => purge,
            Err(error) => {
                return tern_admin::json_error(
                    http::StatusCode::BAD_REQUEST,
                    format!("body must be {{\"urls\": [...], \"files\": [...], \"prefetch\": [...]}}: {error}"),
                );
            }
        };
        let master = self.service.master.clone();
        let count = purge.urls.len() + purge.files.len() + purge.prefetch.len();
        let recorded = move || master.record_purges(&purge.urls, &purge.files, &purge.prefetch);
        match tokio::task::spawn_blocking(recorded).await {
            Ok(Ok(through)) => {
                let answer = PurgeRecorded {
                    recorded: count,
                    through,
                    log: self.service.master.log_id().clone(),
                };
                match serde_json::to_value(&answer) {
                    Ok(body) => tern_admin::json(http::StatusCode::OK, &body),
                    Err(error) => tern_admin::json_error(http::StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
                }
            }
            Ok(Err(reject)) => tern_admin::json_error(http::StatusCode::BAD_REQUEST, reject.message),
            Err(error) => tern_admin::json_error(http::StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        }
    }

    /// `GET /applied?through=N`: how far each cache has applied the change log, for a caller that recorded
    /// purges through position N (the content mover waits for every cache to reach it).
    fn applied(&self, query: &str) -> http::Response<tern_http::Body> {
        let through = query_parameter(query, "through").and_then(|n| n.parse::<u64>().ok());
        let Some(through) = through else {
            return tern_admin::json_error(
                http::StatusCode::BAD_REQUEST,
                "give ?through=N (the `through` of a purge's answer)",
            );
        };
        let answer = Applied {
            log: self.service.master.log_id().clone(),
            through,
            caches: self
                .service
                .progress()
                .into_iter()
                .map(|progress| CacheApplied {
                    url: progress.url,
                    applied_through: progress.applied_through,
                    last_error: progress.last_error,
                })
                .collect(),
        };
        match serde_json::to_value(&answer) {
            Ok(body) => tern_admin::json(http::StatusCode::OK, &body),
            Err(error) => tern_admin::json_error(http::StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        }
    }

    /// `GET /changes?since=N&log=ID`: the URLs changed after position N of log ID, for an edge catching up
    /// at start-up. A position of another log (or past this log's end, from an edge that does not know
    /// the log's id) answers `reset`: the edge cannot know what changed, so it drops its cache.
    fn changes_since(&self, query: &str) -> http::Response<tern_http::Body> {
        let parameter = |name: &str| query_parameter(query, name);
        let Some(since) = parameter("since").and_then(|n| n.parse::<u64>().ok()) else {
            return tern_admin::json_error(
                http::StatusCode::BAD_REQUEST,
                "give ?since=N (a log position; 0 for all), and &log=ID (the log it counts in) when known",
            );
        };
        let Ok(log) = Incarnation::parse(parameter("log").unwrap_or_default()) else {
            return tern_admin::json_error(http::StatusCode::BAD_REQUEST, "log=ID is not a change log id");
        };
        let master = &self.service.master;
        let through = master.len();
        let other_log = !log.is_unknown() && &log != master.log_id();
        let records = master.records_from(since.saturating_add(1));
        let lost = records.iter().any(|record| record.lost);
        let reset = other_log || since > through || records.len() > MAX_CATCH_UP || lost;
        if other_log || since > through {
            info!(since, edge_log = %log, log = %master.log_id(), "an edge's position belongs to another change log; it resets");
        } else if lost {
            warn!(
                since,
                "an edge catches up over a lost position of the change log (a damaged line): it resets"
            );
        }
        let changes = if reset {
            Vec::new()
        } else {
            records
                .iter()
                .map(|r| LoggedChange {
                    log_seq: r.log_seq,
                    site: r.site.clone(),
                    url: r.url.clone(),
                    kind: r.kind,
                })
                .collect()
        };
        let answer = CatchUp {
            log: master.log_id().clone(),
            through,
            reset,
            changes,
        };
        match serde_json::to_value(&answer) {
            Ok(body) => tern_admin::json(http::StatusCode::OK, &body),
            Err(error) => tern_admin::json_error(http::StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_is_named_by_its_scheme_host_and_port_alone() {
        for good in ["http://10.0.0.7:8080", "https://edge.example.net/", "http://[::1]:8080"] {
            assert!(cache_url_has_no_path(good), "{good}");
        }
        for bad in [
            "http://10.0.0.7:8080/cdn",
            "http://10.0.0.7:8080/%zz",
            "http://10.0.0.7:8080/?a=1",
            "http://user:pw@10.0.0.7:8080",
            "http://10.0.0.7:8080/#top",
            "http://10.0.0.7:99999",
            "http://10.0.0.7:",
        ] {
            assert!(!cache_url_has_no_path(bad), "{bad}");
        }
    }

    #[test]
    fn only_this_machine_is_loopback() {
        for near in [
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "https://[::1]:443",
            "http://127.9.9.9",
        ] {
            assert!(cache_on_loopback(near), "{near}");
        }
        for far in [
            "http://10.0.0.7:8080",
            "http://edge.example.net",
            "http://[2001:db8::1]",
        ] {
            assert!(!cache_on_loopback(far), "{far}");
        }
    }

    fn config_with(sites: Vec<SiteConfig>, caches: &[&str]) -> SyncConfig {
        SyncConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin: None,
            key: SecretKey::generate().expect("key"),
            cache_key: None,
            data_dir: std::env::temp_dir().join("tern-sync-never-created"),
            sites,
            caches: caches
                .iter()
                .map(|url| CacheConfig {
                    url: url.to_string(),
                    sites: vec![],
                })
                .collect(),
            max_frame: 1 << 20,
            max_retry_age: Duration::from_secs(60),
            request_timeout: Duration::from_secs(1),
            commands_in_flight: 1,
            cache_ca: None,
        }
    }

    #[tokio::test]
    async fn a_site_host_with_a_scheme_or_path_and_a_cache_given_twice_are_refused_at_start() {
        for host in ["http://www.example.com", "www.example.com/blog", ""] {
            let site = SiteConfig {
                name: "www".into(),
                hosts: vec![host.into()]
                    .into_iter()
                    .filter(|h: &String| !h.is_empty())
                    .collect(),
            };
            let Err(error) = start(config_with(vec![site], &["http://127.0.0.1:9"])).await else {
                panic!("{host:?} must be refused");
            };
            let text = error.to_string();
            assert!(text.contains("site `www`"), "{text}");
        }
        let site = SiteConfig {
            name: "www".into(),
            hosts: vec!["www.example.com:8080".into()],
        };
        let Err(error) = start(config_with(vec![site], &["http://127.0.0.1:9", "http://127.0.0.1:9/"])).await else {
            panic!("a cache given twice must be refused");
        };
        assert!(error.to_string().contains("given twice"), "{error}");
    }
}
