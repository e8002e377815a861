//! The edge's request path: look up, decide (RFC 9111 usability), serve from cache, or go upstream through
//! the [`Upstream`] seam with coalescing; store what may be stored while streaming it to the client; answer
//! the client's own conditional and range requests; invalidate after unsafe methods; purge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use tern_http::conditional::{self, Precondition, Validators};
use tern_http::range::{self, RangeOutcome};
use tern_http::{Body, ChannelSender, date, hop};
use tern_http_cache::policy::{self, request_directives};
use tern_http_cache::{
    BodySource, Directives, Fill, Freshness, Hit, KeyConfig, Meta, ObjectId, PolicyConfig, PurgeCount, PurgeMode,
    Store, Usability, primary_key, vary_values,
};
use tracing::{debug, info, warn};

use crate::cache_status::{CacheStatus, Forward};
use crate::clock::Clock;
use crate::coalesce::{Coalescer, FillOutcome, Leader, Role};
use crate::metrics::{EdgeMetrics, PurgeLabel};
use crate::purge::{PurgeAuth, requested_mode};
use crate::upstream::{Upstream, UpstreamError};

/// Chunks buffered between an upstream body and a client (bounds memory per transfer).
const STREAM_CHUNKS: usize = 16;
/// Bodies up to this size with a known length are read whole before answering (cheaper than streaming).
const INLINE_BODY_LIMIT: u64 = 64 * 1024;
/// Lookups a request makes after waiting for another's fill before it goes upstream on its own.
const MAX_COALESCED_ROUNDS: usize = 3;

/// The parts of a client request the edge keeps while it works on it.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// Method.
    pub method: Method,
    /// Request target.
    pub uri: Uri,
    /// Protocol version.
    pub version: Version,
    /// Header fields.
    pub headers: HeaderMap,
    /// Client address.
    pub client: SocketAddr,
}

/// One edge cache.
pub struct Edge {
    pub(crate) name: String,
    pub(crate) store: Arc<Store>,
    pub(crate) upstream: Arc<dyn Upstream>,
    pub(crate) coalescer: Arc<Coalescer>,
    pub(crate) metrics: Arc<EdgeMetrics>,
    pub(crate) purge_auth: PurgeAuth,
    pub(crate) key_config: KeyConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) sync_mark: Arc<crate::catch_up::SyncMark>,
}

/// Where a response body comes from.
enum Source {
    Stored(BodySource),
    Stream(Body),
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
        let request = ClientRequest {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            client,
        };
        let response = self.route(request, body).await;
        self.metrics.response_seconds.observe(started.elapsed().as_secs_f64());
        response
    }

    async fn route(self: &Arc<Self>, request: ClientRequest, body: Body) -> Response<Body> {
        let Some(host) = request_host(&request) else {
            self.metrics.request("error");
            return self.error(
                StatusCode::BAD_REQUEST,
                "request has no Host",
                CacheStatus::forward(Forward::Request),
            );
        };
        let path_and_query = request.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        if !path_and_query.starts_with('/') {
            self.metrics.request("error");
            return self.error(
                StatusCode::BAD_REQUEST,
                "request target must be a path or an absolute URL",
                CacheStatus::forward(Forward::Request),
            );
        }
        let primary = primary_key("http", &host, path_and_query, &self.key_config);
        match request.method.as_str() {
            "PURGE" => self.purge(&request, &primary),
            "GET" | "HEAD" => self.cached(request, primary).await,
            _ => self.pass(request, body, primary, Forward::Method).await,
        }
    }

    /// GET and HEAD: the caching path.
    async fn cached(self: &Arc<Self>, request: ClientRequest, primary: String) -> Response<Body> {
        let directives = request_directives(&request.headers);
        let mut collapsed = false;
        for _ in 0..MAX_COALESCED_ROUNDS {
            let now = self.clock.now();
            let hit = self.store.find(&primary, &request.headers);
            let forward = match &hit {
                Some(hit) => {
                    let object = &hit.object;
                    let ttl = object.freshness.ttl_seconds(now);
                    let usability = policy::usability(
                        &object.freshness,
                        object.meta.invalidated,
                        &directives,
                        now,
                        self.policy(),
                    );
                    let served = match usability {
                        Usability::Fresh | Usability::StaleAllowedByClient if collapsed => Some((
                            CacheStatus::forward(Forward::Miss)
                                .with_forward_status(object.meta.status.as_u16())
                                .with_collapsed()
                                .with_ttl(ttl),
                            "hit",
                        )),
                        Usability::Fresh | Usability::StaleAllowedByClient => Some((CacheStatus::hit(ttl), "hit")),
                        Usability::StaleWhileRevalidate => {
                            self.revalidate_in_background(&request, hit.clone(), &primary);
                            Some((CacheStatus::hit(ttl).with_detail("stale-while-revalidate"), "stale"))
                        }
                        Usability::MustValidate => None,
                    };
                    if let Some((status, result)) = served {
                        // `None`: the body vanished or failed its checksum; look up again.
                        let Some(response) = self.serve_stored(&request, hit, status, now).await else {
                            continue;
                        };
                        self.metrics.request(result);
                        return response;
                    }
                    // Fresh but validated anyway: the client's own directives sent it forward.
                    let fresh =
                        object.freshness.is_fresh(now) && !object.meta.invalidated && !object.freshness.no_cache;
                    if fresh { Forward::Request } else { Forward::Stale }
                }
                None if self.store.variants(&primary).is_empty() => Forward::Miss,
                None => Forward::VaryMiss,
            };
            if directives.only_if_cached {
                self.metrics.request("error");
                return self.error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "only-if-cached: no usable stored response",
                    CacheStatus::forward(forward),
                );
            }
            if request.method == Method::HEAD && hit.is_none() {
                // A HEAD miss is passed as it is rather than fetching a whole body nobody asked for.
                return self.pass(request, tern_http::empty(), primary, forward).await;
            }
            match self.coalescer.join(&primary) {
                Role::Leader(leader) => {
                    return self
                        .fetch(&request, &primary, hit, Some(leader), forward, &directives)
                        .await;
                }
                Role::Follower(follower) => {
                    self.metrics.coalesced.inc();
                    match follower.wait().await {
                        FillOutcome::Stored => collapsed = true,
                        FillOutcome::Released => {
                            return self.fetch(&request, &primary, hit, None, forward, &directives).await;
                        }
                    }
                }
            }
        }
        let hit = self.store.find(&primary, &request.headers);
        self.fetch(&request, &primary, hit, None, Forward::Miss, &directives)
            .await
    }

    /// Serves a stored response; `None` when its body is gone or failed its checksum (look up again).
    async fn serve_stored(
        &self,
        request: &ClientRequest,
        hit: &Hit,
        status: CacheStatus,
        now: SystemTime,
    ) -> Option<Response<Body>> {
        let object = &hit.object;
        let body = match self.store.body(hit).await {
            Ok(body) => body,
            Err(error) => {
                warn!(url = %object.meta.url, %error, "stored object unusable; fetching it again");
                return None;
            }
        };
        let age = object.freshness.current_age(now).as_secs();
        Some(self.respond(
            request,
            object.meta.status,
            object.meta.headers.clone(),
            Some(object.meta.body_len),
            Source::Stored(body),
            Some(age),
            status,
        ))
    }

    /// Goes upstream for a GET (or a HEAD with a stored response to validate), validating `hit` if there is
    /// one, and stores what may be stored.
    async fn fetch(
        self: &Arc<Self>,
        request: &ClientRequest,
        primary: &str,
        hit: Option<Hit>,
        leader: Option<Leader>,
        forward: Forward,
        directives: &Directives,
    ) -> Response<Body> {
        let upstream_request = self.upstream_request(request, Method::GET, tern_http::empty(), hit.as_ref());
        let request_time = self.clock.now();
        let result = self.upstream.fetch(upstream_request).await;
        let response_time = self.clock.now();
        let response = match result {
            Ok(response) => {
                self.metrics.upstream("ok");
                response
            }
            Err(error) => {
                self.count_upstream_error(&error);
                drop(leader);
                if let Some(hit) = &hit
                    && hit.object.freshness.may_serve_on_error(response_time, directives)
                {
                    let status = CacheStatus::forward(Forward::Stale)
                        .with_ttl(hit.object.freshness.ttl_seconds(response_time))
                        .with_detail("stale-if-error");
                    if let Some(response) = self.serve_stored(request, hit, status, response_time).await {
                        self.metrics.request("stale");
                        return response;
                    }
                }
                warn!(url = %primary, %error, "upstream failed");
                self.metrics.request("error");
                return self.error(error.status(), &error.to_string(), CacheStatus::forward(forward));
            }
        };
        let (mut parts, body) = response.into_parts();
        hop::strip(&mut parts.headers);
        if !parts.headers.contains_key(header::DATE) {
            parts.headers.insert(header::DATE, date::format(response_time));
        }
        let upstream_status = parts.status.as_u16();

        if parts.status == StatusCode::NOT_MODIFIED
            && let Some(hit) = &hit
        {
            let refreshed = self
                .store
                .refresh(&hit.object, &parts.headers, request_time, response_time);
            if let Some(leader) = leader {
                leader.finish(FillOutcome::Stored);
            }
            let hit = self
                .store
                .find(primary, &request.headers)
                .filter(|h| Arc::ptr_eq(&h.object, &refreshed));
            let status = CacheStatus::forward(forward)
                .with_forward_status(304)
                .with_ttl(refreshed.freshness.ttl_seconds(response_time));
            if let Some(hit) = hit
                && let Some(response) = self.serve_stored(request, &hit, status, response_time).await
            {
                self.metrics.request("revalidated");
                return response;
            }
            // The refreshed object vanished meanwhile (purged): fetch it in full.
            let retry = self.upstream_request(request, Method::GET, tern_http::empty(), None);
            return match self.upstream.fetch(retry).await {
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    hop::strip(&mut parts.headers);
                    self.metrics.request("pass");
                    let status = CacheStatus::forward(forward).with_forward_status(parts.status.as_u16());
                    let length = content_length(&parts);
                    self.respond(
                        request,
                        parts.status,
                        parts.headers,
                        length,
                        Source::Stream(body),
                        None,
                        status,
                    )
                }
                Err(error) => {
                    self.count_upstream_error(&error);
                    self.error(error.status(), &error.to_string(), CacheStatus::forward(forward))
                }
            };
        }

        if parts.status.is_server_error()
            && let Some(hit) = &hit
            && hit.object.freshness.may_serve_on_error(response_time, directives)
        {
            // The leader is dropped on return, which releases any waiters to try for themselves.
            let status = CacheStatus::forward(Forward::Stale)
                .with_forward_status(upstream_status)
                .with_ttl(hit.object.freshness.ttl_seconds(response_time))
                .with_detail("stale-if-error");
            if let Some(response) = self.serve_stored(request, hit, status, response_time).await {
                self.metrics.request("stale");
                return response;
            }
        }

        let storable = policy::storable(
            &Method::GET,
            &request.headers,
            parts.status,
            &parts.headers,
            self.policy(),
        );
        let length = content_length(&parts);
        if let Err(reason) = storable {
            // Waiters go upstream themselves; a stored variant the origin no longer lets us keep goes.
            drop(leader);
            if let Some(hit) = &hit {
                self.store.remove_if_current(&hit.object);
            }
            debug!(url = %primary, reason = reason.reason(), "response not stored");
            self.metrics.request("miss");
            let status = CacheStatus::forward(forward)
                .with_forward_status(upstream_status)
                .with_detail(reason.reason());
            return self.respond(
                request,
                parts.status,
                parts.headers,
                length,
                Source::Stream(body),
                None,
                status,
            );
        }

        let vary = vary_values(&parts.headers, &request.headers);
        let id = ObjectId::new(primary, &vary);
        let meta = Meta {
            url: primary.to_string(),
            status: parts.status,
            headers: parts.headers.clone(),
            vary,
            request_time,
            response_time,
            body_len: 0,
            body_hash: [0; 32],
            surrogate_keys: surrogate_keys(&parts.headers),
            invalidated: false,
        };
        let freshness = Freshness::of(parts.status, &parts.headers, request_time, response_time, self.policy());
        let mut fill = self.store.begin_fill(id, meta, length).await;
        let age = freshness.current_age(response_time).as_secs();
        let status = |stored: bool| {
            CacheStatus::forward(forward)
                .with_forward_status(upstream_status)
                .with_stored(stored)
                .with_ttl(freshness.ttl_seconds(response_time))
        };
        if let Some(small) = length.filter(|len| *len <= INLINE_BODY_LIMIT) {
            // A small body is read here, stored, then answered from memory: no copying task, no channel.
            let bytes = match body.collect().await.map(|collected| collected.to_bytes()) {
                Ok(bytes) if bytes.len() as u64 == small => bytes,
                Ok(_) | Err(_) => {
                    self.metrics.fills_abandoned.inc();
                    self.metrics.request("error");
                    return self.error(
                        StatusCode::BAD_GATEWAY,
                        "upstream body ended early or failed",
                        CacheStatus::forward(forward).with_forward_status(upstream_status),
                    );
                }
            };
            fill.write(&bytes).await;
            let stored = fill.finish(true).await.is_ok();
            if stored {
                self.metrics.stored.inc();
            } else {
                self.metrics.fills_abandoned.inc();
            }
            if let Some(leader) = leader {
                leader.finish(if stored {
                    FillOutcome::Stored
                } else {
                    FillOutcome::Released
                });
            }
            self.metrics.request("miss");
            let source = Source::Stored(BodySource::Memory(bytes));
            return self.respond(
                request,
                parts.status,
                parts.headers,
                length,
                source,
                Some(age),
                status(stored),
            );
        }
        let viable = fill.is_viable();
        let (sender, client_body) = tern_http::channel(STREAM_CHUNKS, length);
        tokio::spawn(tee(body, fill, sender, length, leader, self.metrics.clone()));
        self.metrics.request("miss");
        let status = status(viable);
        self.respond(
            request,
            parts.status,
            parts.headers,
            length,
            Source::Stream(client_body),
            Some(age),
            status,
        )
    }

    /// Refreshes a stale object without making the client wait, unless a fetch for it is already running.
    fn revalidate_in_background(self: &Arc<Self>, request: &ClientRequest, hit: Hit, primary: &str) {
        let Role::Leader(leader) = self.coalescer.join(primary) else {
            return;
        };
        let edge = self.clone();
        let request = request.clone();
        let primary = primary.to_string();
        tokio::spawn(async move {
            let directives = Directives::default();
            let response = edge
                .fetch(&request, &primary, Some(hit), Some(leader), Forward::Stale, &directives)
                .await;
            // The fill runs on its own task; the client side of it is simply not read.
            drop(response);
        });
    }

    /// Methods the cache does not serve: forwarded with their body; unsafe ones invalidate what they touch.
    async fn pass(
        self: &Arc<Self>,
        request: ClientRequest,
        body: Body,
        primary: String,
        forward: Forward,
    ) -> Response<Body> {
        let upstream_request = self.upstream_request(&request, request.method.clone(), body, None);
        let upstream_request = {
            let (mut parts, body) = upstream_request.into_parts();
            // A pass is the origin's business: the client's own conditionals and ranges go with it.
            for name in [
                header::IF_NONE_MATCH,
                header::IF_MODIFIED_SINCE,
                header::IF_MATCH,
                header::IF_UNMODIFIED_SINCE,
                header::RANGE,
                header::IF_RANGE,
            ] {
                for value in request.headers.get_all(&name) {
                    parts.headers.append(name.clone(), value.clone());
                }
            }
            Request::from_parts(parts, body)
        };
        let response = match self.upstream.fetch(upstream_request).await {
            Ok(response) => {
                self.metrics.upstream("ok");
                response
            }
            Err(error) => {
                self.count_upstream_error(&error);
                self.metrics.request("error");
                return self.error(error.status(), &error.to_string(), CacheStatus::forward(forward));
            }
        };
        let (mut parts, body) = response.into_parts();
        hop::strip(&mut parts.headers);
        if policy::invalidates(&request.method, parts.status) {
            self.invalidate(&request, &primary, &parts.headers);
        }
        self.metrics.request("pass");
        let status = CacheStatus::forward(forward).with_forward_status(parts.status.as_u16());
        let mut headers = parts.headers;
        headers.remove("surrogate-key");
        append_cache_status(&mut headers, &status, &self.name);
        hop::append_via(&mut headers, request.version, &self.name);
        let mut response = Response::new(if request.method == Method::HEAD {
            tern_http::empty()
        } else {
            body
        });
        *response.status_mut() = parts.status;
        *response.headers_mut() = headers;
        response
    }

    /// RFC 9111 section 4.4: after a successful unsafe request, stored responses for its target and for the
    /// same-host `Location` and `Content-Location` are invalid.
    fn invalidate(&self, request: &ClientRequest, primary: &str, response: &HeaderMap) {
        let mut removed = self.store.purge_url(primary, PurgeMode::Hard);
        let host = request_host(request).unwrap_or_default();
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(target) = response.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(uri) = target.parse::<Uri>() else {
                continue;
            };
            let same_host = uri.authority().is_none_or(|a| a.as_str().eq_ignore_ascii_case(&host));
            if same_host && let Some(path) = uri.path_and_query() {
                let key = primary_key("http", &host, path.as_str(), &self.key_config);
                removed += self.store.purge_url(&key, PurgeMode::Hard);
            }
        }
        if removed.removed > 0 {
            debug!(url = %primary, removed = removed.removed, method = %request.method, "invalidated after unsafe method");
        }
    }

    /// `PURGE <url>` on the main listener.
    fn purge(&self, request: &ClientRequest, primary: &str) -> Response<Body> {
        if let Err(refusal) = self.purge_auth.check(&request.headers, request.client.ip()) {
            warn!(client = %request.client, url = %primary, "purge refused");
            self.metrics.request("refused");
            return tern_admin::json_error(StatusCode::FORBIDDEN, refusal.message());
        }
        let mode = requested_mode(&request.headers);
        let count = self.store.purge_url(primary, mode);
        // The sync service's purges carry their change-log position, for catching up after a restart.
        if let Some(seq) = request
            .headers
            .get("tern-sync-seq")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            self.sync_mark.note(seq);
        }
        self.count_purge("url", count);
        info!(client = %request.client, url = %primary, removed = count.removed, marked = count.marked, "purged");
        self.metrics.request("purge");
        tern_admin::json(
            StatusCode::OK,
            &serde_json::json!({ "url": primary, "removed": count.removed, "marked": count.marked }),
        )
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
        });
    }

    /// Builds the request sent upstream: end-to-end fields of the client's request, `Via`,
    /// `X-Forwarded-For`, and, when validating, the stored response's validators.
    fn upstream_request(
        &self,
        request: &ClientRequest,
        method: Method,
        body: Body,
        validate: Option<&Hit>,
    ) -> Request<Body> {
        let mut headers = request.headers.clone();
        hop::strip(&mut headers);
        for name in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::RANGE,
            header::IF_RANGE,
        ] {
            headers.remove(name);
        }
        if let Some(hit) = validate {
            let stored = &hit.object.meta.headers;
            if let Some(etag) = stored.get(header::ETAG) {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(modified) = stored.get(header::LAST_MODIFIED) {
                headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
            }
        }
        if let Some(host) = request_host(request)
            && let Ok(value) = HeaderValue::from_str(&host)
        {
            headers.insert(header::HOST, value);
        }
        hop::append_via(&mut headers, request.version, &self.name);
        hop::append_forwarded_for(&mut headers, request.client.ip());
        let path = request.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut upstream = Request::new(body);
        *upstream.method_mut() = method;
        *upstream.uri_mut() = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
        *upstream.headers_mut() = headers;
        upstream
    }

    /// Shapes the client's response from a (stored or streaming) response: the client's own preconditions
    /// and ranges, HEAD, `Age`, `Cache-Status`, `Via`.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        request: &ClientRequest,
        status: StatusCode,
        mut headers: HeaderMap,
        length: Option<u64>,
        source: Source,
        age: Option<u64>,
        cache_status: CacheStatus,
    ) -> Response<Body> {
        headers.remove("surrogate-key");
        if let Some(age) = age {
            headers.insert(header::AGE, HeaderValue::from(age));
        }
        append_cache_status(&mut headers, &cache_status, &self.name);
        hop::append_via(&mut headers, request.version, &self.name);
        let mut out_status = status;
        let mut slice: Option<(u64, u64)> = None;
        let mut send_body = request.method != Method::HEAD;
        if status == StatusCode::OK {
            let last_modified = headers.get(header::LAST_MODIFIED).and_then(date::parse);
            let etag = headers
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let validators = Validators {
                etag: etag.as_deref(),
                last_modified,
            };
            match conditional::evaluate(&request.method, &request.headers, validators) {
                Precondition::NotModified => {
                    let mut kept = HeaderMap::new();
                    for name in conditional::NOT_MODIFIED_FIELDS.iter().chain(&[
                        header::AGE,
                        HeaderName::from_static("cache-status"),
                        header::VIA,
                    ]) {
                        for value in headers.get_all(name) {
                            kept.append(name.clone(), value.clone());
                        }
                    }
                    return bodiless(StatusCode::NOT_MODIFIED, kept);
                }
                Precondition::Failed => return bodiless(StatusCode::PRECONDITION_FAILED, headers_for_error(headers)),
                Precondition::Proceed => {}
            }
            if let Some(length) = length {
                headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                match range::select(&request.headers, length, etag.as_deref(), last_modified) {
                    RangeOutcome::Full => {}
                    RangeOutcome::Partial { start, end } => {
                        out_status = StatusCode::PARTIAL_CONTENT;
                        headers.insert(header::CONTENT_RANGE, range::content_range(start, end, length));
                        slice = Some((start, end - start + 1));
                    }
                    RangeOutcome::Unsatisfiable => {
                        let mut headers = headers_for_error(headers);
                        headers.insert(header::CONTENT_RANGE, range::unsatisfied_range(length));
                        return bodiless(StatusCode::RANGE_NOT_SATISFIABLE, headers);
                    }
                }
            }
        }
        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED || status.is_informational() {
            send_body = false;
        }
        let body_len = match slice {
            Some((_, count)) => Some(count),
            None => length,
        };
        match body_len {
            Some(len) if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            _ => {
                headers.remove(header::CONTENT_LENGTH);
            }
        }
        let body = if !send_body {
            tern_http::empty()
        } else {
            match (source, slice) {
                (Source::Stored(BodySource::Memory(bytes)), None) => tern_http::full(bytes),
                (Source::Stored(BodySource::Memory(bytes)), Some((start, count))) => {
                    tern_http::full(bytes.slice(start as usize..(start + count) as usize))
                }
                (Source::Stored(BodySource::File { file, offset, len }), None) => {
                    tern_http::file_range(tokio::fs::File::from_std(file), offset, len)
                }
                (Source::Stored(BodySource::File { file, offset, .. }), Some((start, count))) => {
                    tern_http::file_range(tokio::fs::File::from_std(file), offset + start, count)
                }
                (Source::Stream(body), None) => body,
                (Source::Stream(body), Some((start, count))) => tern_http::slice(body, start, count),
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = out_status;
        *response.headers_mut() = headers;
        response
    }

    /// A plain-text error response that says what went wrong.
    fn error(&self, status: StatusCode, message: &str, cache_status: CacheStatus) -> Response<Body> {
        let mut response = Response::new(tern_http::full(format!(
            "{} {}: {message}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        append_cache_status(headers, &cache_status, &self.name);
        response
    }
}

fn bodiless(status: StatusCode, headers: HeaderMap) -> Response<Body> {
    let mut response = Response::new(tern_http::empty());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Headers kept on a 412 or 416: the representation's metadata minus its framing.
fn headers_for_error(mut headers: HeaderMap) -> HeaderMap {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_TYPE);
    headers
}

fn append_cache_status(headers: &mut HeaderMap, status: &CacheStatus, name: &str) {
    headers.append(HeaderName::from_static("cache-status"), status.to_header(name));
}

/// The request's host: the authority of an absolute-form target, else the `Host` field.
pub(crate) fn request_host(request: &ClientRequest) -> Option<String> {
    if let Some(authority) = request.uri.authority() {
        return Some(authority.as_str().to_string());
    }
    request
        .headers
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

/// Surrogate keys: the space-separated tokens of `Surrogate-Key`.
fn surrogate_keys(headers: &HeaderMap) -> Vec<String> {
    let mut keys: Vec<String> = headers
        .get_all("surrogate-key")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(str::split_whitespace)
        .map(str::to_string)
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Copies an upstream body to the client and into the store. The last chunk is held back until the object
/// is stored, so a client that has read a whole response finds it in the cache on its next request. A
/// client that goes away does not stop the fill; an upstream that fails or ends short stores nothing and
/// the client's body is cut with an error, never passed off as complete.
async fn tee(
    mut body: Body,
    mut fill: Fill,
    sender: ChannelSender,
    expected: Option<u64>,
    leader: Option<Leader>,
    metrics: Arc<EdgeMetrics>,
) {
    let mut received = 0u64;
    let mut client_open = true;
    let mut held: Option<Bytes> = None;
    let complete = loop {
        match body.frame().await {
            None => break expected.is_none_or(|expected| expected == received),
            Some(Err(error)) => {
                debug!(%error, "upstream body failed mid-transfer");
                break false;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                received += data.len() as u64;
                if expected.is_some_and(|expected| received > expected) {
                    break false;
                }
                fill.write(&data).await;
                if let Some(previous) = held.replace(data)
                    && client_open
                    && sender.send(Ok(previous)).await.is_err()
                {
                    client_open = false;
                }
                if !client_open && !fill.is_viable() {
                    break false;
                }
            }
        }
    };
    let stored = fill.finish(complete).await;
    match &stored {
        Ok(_) => {
            metrics.stored.inc();
        }
        Err(error) => {
            metrics.fills_abandoned.inc();
            debug!(%error, "fill not stored");
        }
    }
    if let Some(leader) = leader {
        leader.finish(if stored.is_ok() {
            FillOutcome::Stored
        } else {
            FillOutcome::Released
        });
    }
    if client_open {
        if complete {
            if let Some(last) = held {
                let _ = sender.send(Ok(last)).await;
            }
        } else {
            let _ = sender
                .send(Err("upstream body ended early or failed; response cut".into()))
                .await;
        }
    }
}
