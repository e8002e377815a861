//! `tern edge`: the HTTP edge cache. A hyper front (HTTP/1.1 and h2c) in front of an upstream, caching per
//! RFC 9111 with `stale-while-revalidate` / `stale-if-error` (RFC 5861), targeted cache control (RFC 9213)
//! and `Cache-Status` (RFC 9211); coalescing of concurrent misses; purges by URL, prefix and surrogate key;
//! an admin listener with `/metrics`, `/status` and `POST /purge`. HTTPS on a listener of its own
//! (`tls_listen`, with certificates chosen by SNI and reloaded while serving) beside plain HTTP, with an
//! optional redirect from one to the other; `https://` origins verified against the system's roots or a
//! private CA.
//!
//! The miss path goes through the [`upstream::Upstream`] seam: the origin (a plain-http one over the edge's own
//! HTTP/1.1 client, [`h1_client`]), the cache community (seeds 002 and 003), and the differential-caching
//! client of seed 000 ([`delta`]: pages rebuilt from a base and a delta sent by `tern delta`, and `dcz`
//! deltas for browsers that hold the base).

pub mod cache_status;
pub mod catch_up;
pub mod clock;
pub mod coalesce;
pub mod community;
pub mod config;
pub mod delta;
pub mod h1_client;
pub mod metrics;
pub mod proxy;
pub mod purge;
pub mod shared_fill;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tern_admin::{AdminRequest, AdminRoutes, ResponseFuture, json, json_error};
use tern_http::Body;
use tern_http::server::{Handler, ServerLimits, serve_with};
use tern_http::tls::{CertStore, ClientTls, TlsConfig, TlsError};
use tern_http_cache::{KeyConfig, PolicyConfig, Store, StoreConfig};
use tern_wire::SecretKey;
use tracing::info;

pub use config::{EdgeConfig, UpstreamConfig};
pub use proxy::Edge;

use crate::clock::{Clock, SystemClock};
use crate::coalesce::Coalescer;
use crate::metrics::EdgeMetrics;
use crate::purge::{PurgeAuth, PurgeRequest};
use crate::upstream::{Origin, Upstream};

/// Why an edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] tern_admin::BindError),
    /// The cache could not be opened.
    #[error(transparent)]
    Store(#[from] tern_http_cache::StoreError),
    /// The purge key could not be read.
    #[error(transparent)]
    Key(#[from] tern_wire::KeyError),
    /// The certificates or CA file could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A running edge; `role` is the [`Edge`].
pub type RunningEdge = tern_http::server::Running<Arc<Edge>>;

/// Starts an edge with the origin named in `config`.
pub async fn start(config: EdgeConfig) -> Result<RunningEdge, StartError> {
    if config.origin.is_empty() {
        return Err(StartError::Config(
            "no origin: give --origin URL (for example http://127.0.0.1:9000)".into(),
        ));
    }
    let origin = Origin::with_ca(&config.origin, config.upstream.clone(), config.origin_ca.as_deref())
        .map_err(StartError::Config)?;
    start_with(config, Arc::new(origin), Arc::new(SystemClock)).await
}

/// Starts an edge with any upstream and clock (the seam other resolvers and tests use).
pub async fn start_with(
    config: EdgeConfig,
    upstream: Arc<dyn Upstream>,
    clock: Arc<dyn Clock>,
) -> Result<RunningEdge, StartError> {
    config.check().map_err(StartError::Config)?;
    let purge_key = match &config.purge_key {
        Some(path) => Some(SecretKey::load(path)?),
        None => None,
    };
    let certs = match tls_config(&config)? {
        Some(tls) => Some(
            tokio::task::spawn_blocking(move || CertStore::load(tls))
                .await
                .map_err(|e| StartError::Config(format!("loading the certificates failed: {e}")))??,
        ),
        None => None,
    };
    let policy = PolicyConfig {
        targeted_fields: config
            .targeted_cache_control
            .iter()
            .map(|name| {
                http::HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| StartError::Config(format!("`{name}` is not a header field name")))
            })
            .collect::<Result<_, _>>()?,
        heuristic_fraction: config.heuristic_fraction,
        heuristic_max: Duration::from_secs(config.heuristic_max_secs),
        honor_request_directives: config.honor_request_cache_control,
        store_set_cookie_paths: config.store_set_cookie_paths.clone(),
    };
    if config.delta.mode != delta::DeltaMode::Off {
        config.delta.check().map_err(StartError::Config)?;
    }
    let store_config = StoreConfig {
        dir: config.cache_dir.clone(),
        capacity: config.cache_size,
        memory_capacity: config.memory_size.min(config.cache_size),
        max_memory_object: config.max_memory_object,
        policy,
    };
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .map_err(|e| StartError::Config(format!("cache start-up failed: {e}")))??;
    let sync_mark = Arc::new(catch_up::SyncMark::open(config.cache_dir.as_deref()));
    let key_config = KeyConfig {
        include_query: config.key_include_query,
    };
    if let (Some(sync_url), Some(_)) = (&config.sync_url, &config.cache_dir) {
        let sync_tls = ClientTls::new(config.sync_ca.as_deref())?;
        // Before serving anything: purge what changed while this edge was down.
        catch_up::catch_up(
            &store,
            &sync_mark,
            sync_url,
            &key_config,
            Duration::from_secs(config.sync_catch_up_secs),
            &sync_tls,
            &[Some(config.listen.port()), config.tls_listen.map(|addr| addr.port())]
                .into_iter()
                .flatten()
                .collect::<Vec<u16>>(),
        )
        .await;
    }
    let mut metrics = EdgeMetrics::new();
    let (delta, upstream) = match config.delta.mode {
        delta::DeltaMode::Off => (None, upstream),
        _ => {
            let state = Arc::new(delta::EdgeDelta::new(config.delta.clone(), clock.clone()));
            metrics
                .registry
                .register_collector(Box::new(delta::DeltaCollector(state.clone())));
            let wrapped: Arc<dyn Upstream> = Arc::new(delta::DeltaUpstream::new(
                upstream,
                state.clone(),
                store.clone(),
                key_config.clone(),
            ));
            (Some(state), wrapped)
        }
    };
    let (community, upstream) = match &config.community {
        None => (None, upstream),
        Some(settings) => {
            let (community, listener) = community::start(settings, config.cache_size, &store, clock.clone()).await?;
            community.metrics.register(&mut metrics.registry);
            let wrapped: Arc<dyn Upstream> = Arc::new(community::CommunityUpstream::new(
                upstream,
                community.clone(),
                key_config.clone(),
                config.upstream.idle_body_timeout(),
            ));
            (Some((community, listener)), wrapped)
        }
    };
    // Until the edge is serving, a failure below stops the community driver too: otherwise it would stay
    // in the community as a peer with no edge behind it.
    let mut driver_guard = StopOnDrop(community.as_ref().map(|(community, _)| community.handle.clone()));
    let edge = Arc::new(Edge {
        name: config.name.clone(),
        via: tern_http::hop::Via::new(&config.name),
        community: community.as_ref().map(|(community, _)| community.clone()),
        store,
        upstream,
        delta,
        coalescer: Arc::new(Coalescer::default()),
        metrics: Arc::new(metrics),
        purge_auth: PurgeAuth::new(purge_key, config.purge_allow.clone()),
        key_config,
        max_uri_bytes: config.max_uri_bytes,
        small_body_deadline: config.upstream.idle_body_timeout(),
        shared_window: config.max_memory_object,
        sync_mark,
        clock,
    });
    let limits = ServerLimits {
        max_header_bytes: config.max_header_bytes,
        max_header_fields: config.max_header_fields,
        ..ServerLimits::default()
    };
    // The HTTPS listener is bound before the others start, so that a port in use stops nothing running.
    let https = match (config.tls_listen, &certs) {
        (Some(addr), Some(_)) => Some(tern_admin::bind_listener(addr).await?),
        _ => None,
    };
    let handler = Arc::new(EdgeHandler {
        edge: edge.clone(),
        scheme: "http",
        redirect_https: match (&https, config.redirect_https) {
            (Some((_, bound)), true) => Some(bound.port()),
            _ => None,
        },
    });
    let admin_edge = edge.clone();
    let routes = move |listen| -> Arc<dyn AdminRoutes> {
        let origin = admin_edge.upstream.describe();
        Arc::new(EdgeAdmin {
            edge: admin_edge,
            listen,
            origin,
        })
    };
    let role_tls = tern_admin::RoleTls {
        main: None,
        admin: certs.as_ref().map(|certs| certs.acceptor()),
        certs: certs.clone(),
    };
    let mut running = tern_admin::launch(
        config.listen,
        handler,
        limits.clone(),
        config.admin,
        routes,
        edge.clone(),
        role_tls,
    )
    .await?;
    if let (Some((listener, bound)), Some(certs)) = (https, &certs) {
        let handler = Arc::new(EdgeHandler {
            edge: edge.clone(),
            scheme: "https",
            redirect_https: None,
        });
        running.spawn(serve_with(
            listener,
            handler,
            limits,
            Some(certs.acceptor()),
            running.shutdown_token(),
        ));
        running.tls = Some(bound);
        info!(listen = %bound, certificates = %certs.describe(), "edge serves HTTPS");
    }
    if let Some((community, listener)) = community {
        let handler = Arc::new(community::PeerHandler {
            edge: edge.clone(),
            community: community.clone(),
        });
        running.spawn(serve_with(
            listener,
            handler,
            ServerLimits {
                max_header_bytes: config.max_header_bytes,
                max_header_fields: config.max_header_fields,
                ..ServerLimits::default()
            },
            None,
            running.shutdown_token(),
        ));
        // On shutdown (SIGTERM) the edge leaves its community: a master nominates its successor first.
        let shutdown = running.shutdown_token();
        running.spawn(async move {
            shutdown.cancelled().await;
            community.handle.leave().await;
        });
    }
    driver_guard.0 = None;
    let stats = edge.store.stats();
    info!(
        listen = %running.listen,
        admin = ?running.admin,
        upstream = %edge.upstream.describe(),
        delta = ?config.delta.mode,
        objects = stats.objects,
        cache_dir = ?config.cache_dir,
        cache_size = config.cache_size,
        "edge started"
    );
    Ok(running)
}

/// Stops a community driver when dropped (a start that failed half-way).
struct StopOnDrop(Option<tern_community::driver::CommunityHandle>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.stop();
        }
    }
}

/// The TLS settings of `config`, checked: certificates and an HTTPS address come together.
fn tls_config(config: &EdgeConfig) -> Result<Option<TlsConfig>, StartError> {
    let tls = TlsConfig::from_flags(config.tls_cert.clone(), config.tls_key.clone(), config.tls_dir.clone())?;
    match (&tls, config.tls_listen) {
        (Some(_), None) => {
            return Err(StartError::Config(
                "certificates given without an HTTPS address: add --tls-listen ADDR (for example 0.0.0.0:443)".into(),
            ));
        }
        (None, Some(addr)) => {
            return Err(StartError::Config(format!(
                "--tls-listen {addr} needs a certificate: --tls-cert FILE with --tls-key FILE, or --tls-dir DIR"
            )));
        }
        _ => {}
    }
    if config.redirect_https && tls.is_none() {
        return Err(StartError::Config(
            "--redirect-https needs an HTTPS listener to send clients to: --tls-listen with a certificate".into(),
        ));
    }
    Ok(tls.map(|tls| TlsConfig {
        reload_poll: Duration::from_millis(config.tls_reload_poll_ms.max(10)),
        handshake_timeout: Duration::from_millis(config.tls_handshake_timeout_ms.max(1)),
        ..tls
    }))
}

struct EdgeHandler {
    edge: Arc<Edge>,
    /// The scheme of the listener: `"http"` or `"https"` (told to the origin as `X-Forwarded-Proto`).
    scheme: &'static str,
    /// On the plain listener with `redirect_https`: the HTTPS port to send clients to.
    redirect_https: Option<u16>,
}

impl Handler for EdgeHandler {
    async fn call(&self, request: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        // PURGE stays on plain HTTP: caches' purgers (the sync service, Varnish-style tools) speak it there.
        if let Some(port) = self.redirect_https
            && request.method().as_str() != "PURGE"
            && let Some(location) = https_location(&request, port)
        {
            return permanent_redirect(&location);
        }
        // A request without a body (most GETs) gets the empty body, which takes no allocation.
        let mut request = request.map(|body| {
            if hyper::body::Body::is_end_stream(&body) {
                tern_http::empty()
            } else {
                body.map_err(Into::into).boxed()
            }
        });
        community::strip_client_fields(request.headers_mut());
        tern_http::hop::own_forwarding(request.headers_mut(), self.scheme);
        self.edge.handle(request, client).await
    }
}

/// The `https://` URL of a request that came over plain HTTP, on the HTTPS listener's `port` (left out when
/// it is 443); `None` when the request names no valid host.
fn https_location<B>(request: &Request<B>, port: u16) -> Option<String> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.clone(),
        None => request
            .headers()
            .get(http::header::HOST)?
            .to_str()
            .ok()?
            .parse::<http::uri::Authority>()
            .ok()?,
    };
    let host = authority.host();
    let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Some(if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    })
}

fn permanent_redirect(location: &str) -> Response<Body> {
    let mut response = Response::new(tern_http::full(format!("moved to {location}\n")));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = http::HeaderValue::from_str(location) {
        response.headers_mut().insert(http::header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    response
}

struct EdgeAdmin {
    edge: Arc<Edge>,
    listen: SocketAddr,
    origin: String,
}

impl AdminRoutes for EdgeAdmin {
    fn status(&self) -> serde_json::Value {
        let stats = self.edge.store.stats();
        serde_json::json!({
            "role": "edge",
            "listen": self.listen.to_string(),
            "upstream": self.origin,
            "cache": {
                "objects": stats.objects,
                "memory_bytes": stats.memory_bytes,
                "memory_capacity": stats.memory_capacity,
                "disk_bytes": stats.disk_bytes,
                "disk_capacity": stats.disk_capacity,
                "memory_evictions": stats.memory_evictions,
                "disk_evictions": stats.disk_evictions,
                "corrupt_dropped": stats.corrupt_dropped,
            },
            "fills_in_flight": self.edge.coalescer.len(),
            "delta": self.edge.delta.as_ref().map(|delta| delta.status()),
            "community": self.edge.community.as_ref().map(|community| community.status()),
        })
    }

    fn registry(&self) -> &Registry {
        &self.edge.metrics.registry
    }

    fn refresh_metrics(&self) {
        self.edge.metrics.set_store(&self.edge.store.stats());
        if let Some(community) = &self.edge.community {
            community.metrics.refresh(&community.handle.snapshot());
        }
    }

    fn route<'a>(&'a self, request: &'a AdminRequest) -> Option<ResponseFuture<'a>> {
        if request.path != "/purge" {
            return None;
        }
        Some(Box::pin(async move {
            if request.method != Method::POST {
                return json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST /purge with a JSON body");
            }
            self.admin_purge(request).await
        }))
    }

    fn endpoints(&self) -> Vec<&'static str> {
        vec!["/purge"]
    }
}

impl EdgeAdmin {
    async fn admin_purge(&self, request: &AdminRequest) -> Response<Body> {
        if let Err(refusal) = self.edge.purge_auth.check_admin(&request.headers) {
            return json_error(StatusCode::FORBIDDEN, refusal.message());
        }
        let purge = match PurgeRequest::parse(&request.body) {
            Ok(purge) => purge,
            Err(message) => return json_error(StatusCode::BAD_REQUEST, message),
        };
        let total = match self.edge.purge_here(&purge) {
            Ok(total) => total,
            Err(message) => return json_error(StatusCode::BAD_REQUEST, message),
        };
        let relayed = self.edge.relay_purge(&purge).await;
        info!(
            urls = purge.urls.len(),
            prefixes = purge.prefixes.len(),
            keys = purge.keys.len(),
            soft = purge.soft,
            removed = total.removed,
            marked = total.marked,
            relayed = relayed.map(|r| r.applied),
            relay_failed = relayed.map(|r| r.failed),
            "admin purge"
        );
        json(StatusCode::OK, &proxy::purge_answer(None, total, relayed))
    }
}

#[cfg(test)]
mod redirect_tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::get(uri);
        if let Some(host) = host {
            builder = builder.header(http::header::HOST, host);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn the_redirect_keeps_host_path_and_query_and_names_the_https_port() {
        let plain = request("/a/b?c=d", Some("www.example:8080"));
        assert_eq!(
            https_location(&plain, 8443).as_deref(),
            Some("https://www.example:8443/a/b?c=d")
        );
        assert_eq!(
            https_location(&plain, 443).as_deref(),
            Some("https://www.example/a/b?c=d")
        );
        let absolute = request("http://[::1]:80/x", None);
        assert_eq!(https_location(&absolute, 443).as_deref(), Some("https://[::1]/x"));
        assert_eq!(https_location(&request("/x", None), 443), None, "no host, no redirect");
        assert_eq!(https_location(&request("/x", Some("bad host/")), 443), None);
    }
}
