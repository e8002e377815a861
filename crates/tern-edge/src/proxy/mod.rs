//! The edge's request path, one module per phase (as pingora splits its proxy into `proxy_*.rs`):
//!
//! - [`lookup`]: find a stored response, decide how it may be used (RFC 9111 section 4), coalesce misses;
//! - [`serve`]: answer from the store;
//! - [`fill`]: go upstream for a miss or a validation, act on the policy's [`ResponseDecision`] (refresh,
//!   serve stale, store while streaming, or pass), and tee the body into the store;
//! - [`follow`]: serve a request that joined a fill from its body as it streams in (read-while-write);
//! - [`pass`]: methods the cache does not serve, and the invalidation after unsafe ones (section 4.4);
//! - [`respond`]: shape the client's response (its own preconditions and ranges, `Age`, `Cache-Status`,
//!   `Via`);
//! - [`purge`]: the `PURGE` method.
//!
//! A request's host, normalised target and cache key are computed once, in [`Edge::handle`].
//!
//! [`ResponseDecision`]: tern_http_cache::ResponseDecision

mod fill;
mod follow;
mod lookup;
mod pass;
mod purge;

pub(crate) use purge::purge_answer;
mod respond;
pub use respond::OriginFailed;
mod serve;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version, header};
use tern_http::Body;
use tern_http_cache::{BodySource, KeyConfig, PolicyConfig, PurgeCount, Store, primary_key};

use crate::cache_status::{CacheStatus, Forward};
use crate::clock::Clock;
use crate::coalesce::Coalescer;
use crate::metrics::{EdgeMetrics, PurgeLabel};
use crate::purge::PurgeAuth;
use crate::upstream::{Upstream, UpstreamError};

/// The parts of a client request the edge keeps while it works on it.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// Method.
    pub method: Method,
    /// Request target as received.
    pub uri: Uri,
    /// Protocol version.
    pub version: Version,
    /// Header fields.
    pub headers: HeaderMap,
    /// Client address.
    pub client: SocketAddr,
    /// The request's host (authority of an absolute-form target, else `Host`); empty when it has none.
    pub host: String,
    /// The origin-form target (`/path?query`) in normal form (RFC 3986 section 6.2.2): what is keyed on and
    /// what is forwarded, so the key and the origin's answer always agree.
    pub target: String,
    /// The primary cache key (`http://host/target`).
    pub primary: String,
}

/// The client's own preconditions and ranges: answered by the edge from what it stores (not forwarded on a
/// fill), forwarded as they are on a pass.
const CLIENT_PRECONDITIONS: [http::HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::RANGE,
    header::IF_RANGE,
];

/// One edge cache.
pub struct Edge {
    pub(crate) name: String,
    /// This edge's `Via` values (made from `name` once).
    pub(crate) via: tern_http::hop::Via,
    pub(crate) store: Arc<Store>,
    pub(crate) upstream: Arc<dyn Upstream>,
    /// Differential caching (seed 000), unless off.
    pub(crate) delta: Option<Arc<crate::delta::EdgeDelta>>,
    /// The cache community (seeds 002, 003), if this edge is in one.
    pub(crate) community: Option<Arc<crate::community::EdgeCommunity>>,
    pub(crate) coalescer: Arc<Coalescer>,
    pub(crate) metrics: Arc<EdgeMetrics>,
    pub(crate) purge_auth: PurgeAuth,
    pub(crate) key_config: KeyConfig,
    pub(crate) max_uri_bytes: usize,
    /// How long a small upstream body (read whole before answering) may take to arrive: the body's idle
    /// timeout, as a deadline for the whole of it.
    pub(crate) small_body_deadline: std::time::Duration,
    /// Bytes of a streamed fill kept for requests that join it (`max_memory_object`; see
    /// [`crate::shared_fill`]).
    pub(crate) shared_window: u64,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) sync_mark: Arc<crate::catch_up::SyncMark>,
}

/// Where a response body comes from, and the protocol version the response was received with (for `Via`,
/// RFC 9110 section 7.6.3). Stored responses were all received over HTTP/1.1, the only protocol the edge
/// speaks upstream.
enum Source {
    Stored(BodySource),
    Stream(Body, Version),
}

impl Source {
    fn received(&self) -> Version {
        match self {
            Source::Stored(_) => Version::HTTP_11,
            Source::Stream(_, version) => *version,
        }
    }
}

impl Edge {
    /// The object store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<EdgeMetrics> {
        &self.metrics
    }

    fn policy(&self) -> &PolicyConfig {
        self.store.policy()
    }

    /// Handles one client request.
    pub async fn handle(self: &Arc<Self>, request: Request<Body>, client: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let target_len = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if target_len > self.max_uri_bytes {
            self.metrics.request("error");
            return self.error(
                StatusCode::URI_TOO_LONG,
                &format!(
                    "the request target is {target_len} bytes; this edge accepts up to {}",
                    self.max_uri_bytes
                ),
                CacheStatus::forward(Forward::Request),
            );
        }
        // One spelling of a fully qualified name, keyed on and forwarded (`www.example.com.` is the origin's
        // `www.example.com`).
        let mut host = target_host(&parts.uri, &parts.headers).unwrap_or_default();
        if let std::borrow::Cow::Owned(dotless) = tern_http_cache::without_trailing_dot(&host) {
            host = dotless;
        }
        let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let target = tern_http::target::normalize(target).into_owned();
        // A differential-caching base is one object whatever `Host` and query name it: the one the edge keeps
        // under the bases' own authority, checked against its name when it was taken (a trial's finding:
        // each Host stored a copy of its own, a forged copy was never replaced, a base fetched for a client
        // was not kept).
        let primary = match self
            .delta
            .as_ref()
            .and_then(|_| crate::delta::base_key(&target, &self.key_config))
        {
            Some(base) => base,
            None => primary_key("http", &host, &target, &self.key_config),
        };
        let request = ClientRequest {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            client,
            host,
            target,
            primary,
        };
        let browser = self.delta.as_ref().and_then(|delta| {
            let plan = delta.browser_plan(&request.method, &request.target, &request.headers)?;
            Some((delta.clone(), plan))
        });
        let mut response = self.route(request, body).await;
        if let Some((delta, plan)) = browser {
            response = delta.to_browser(plan, response).await;
        }
        self.metrics.response_seconds.observe(started.elapsed().as_secs_f64());
        response
    }

    async fn route(self: &Arc<Self>, request: ClientRequest, body: Body) -> Response<Body> {
        if let Some(problem) = tern_http::target::host_field_problem(request.version, &request.uri, &request.headers) {
            self.metrics.request("error");
            return self.error(StatusCode::BAD_REQUEST, problem, CacheStatus::forward(Forward::Request));
        }
        // Keys need a host: an HTTP/1.0 request without one is refused too.
        if request.host.is_empty() {
            self.metrics.request("error");
            return self.error(
                StatusCode::BAD_REQUEST,
                "request has no Host",
                CacheStatus::forward(Forward::Request),
            );
        };
        if !request.target.starts_with('/') {
            self.metrics.request("error");
            return self.error(
                StatusCode::BAD_REQUEST,
                "request target must be a path or an absolute URL",
                CacheStatus::forward(Forward::Request),
            );
        }
        match request.method.as_str() {
            "PURGE" => self.purge(&request).await,
            "GET" | "HEAD" => self.cached(request).await,
            _ => self.pass(request, body, Forward::Method).await,
        }
    }

    pub(crate) fn count_purge(&self, kind: &'static str, count: PurgeCount) {
        self.metrics.purges.get_or_create(&PurgeLabel { kind }).inc();
        self.metrics
            .purged_objects
            .inc_by((count.removed + count.marked) as u64);
    }

    fn count_upstream_error(&self, error: &UpstreamError) {
        self.metrics.upstream(match error {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Failed { .. } => "failed",
            UpstreamError::Relayed { .. } => "relayed",
        });
    }
}

/// The request's host: the authority of an absolute-form target, else the `Host` field.
pub(crate) fn target_host(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    if let Some(authority) = uri.authority() {
        return Some(authority.as_str().to_string());
    }
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))
        .map(str::to_string)
}

fn content_length(parts: &http::response::Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
