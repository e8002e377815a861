//! The fill: going upstream for a miss or a validation and acting on the cache policy's decision
//! ([`ResponseDecision`]): refresh the stored response on `304`, serve it stale when the origin fails,
//! store the response while streaming it to the client, or pass it on without storing.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use tern_http::{Body, ChannelSender, date, hop};
use tern_http_cache::policy::{self, Storing, UpstreamExchange};
use tern_http_cache::{
    BodySource, Directives, FetchTicket, Fill, Hit, Meta, NotStorable, ObjectId, ResponseDecision, vary_values,
};
use tracing::{debug, warn};

use super::{CLIENT_PRECONDITIONS, ClientRequest, Edge, Source, content_length};
use crate::cache_status::{CacheStatus, Forward};
use crate::coalesce::{FillOutcome, Leader, UpstreamFailure};
use crate::metrics::{BodyFailure, EdgeMetrics};
use crate::shared_fill::{StreamedResponse, Writer};

/// Chunks buffered between an upstream body and a client (bounds memory per transfer).
pub(super) const STREAM_CHUNKS: usize = 16;
/// Bodies up to this size with a known length are read whole before answering (cheaper than streaming).
const INLINE_BODY_LIMIT: u64 = 64 * 1024;

/// A fetch for a GET whose response the cache may store: what the lookup found, and how the fill is shared.
pub(super) struct Miss {
    /// The stored response being validated, if any.
    pub hit: Option<Hit>,
    /// Set when other requests wait for this fetch's outcome.
    pub leader: Option<Leader>,
    /// Taken before the request goes upstream: purges after it keep the response from being stored fresh.
    pub ticket: FetchTicket,
    /// What `Cache-Status` says sent the request forward.
    pub forward: Forward,
    /// The client request's directives.
    pub directives: Directives,
}

/// A response from upstream with the times of its exchange.
struct Received {
    parts: http::response::Parts,
    body: Body,
    request_time: SystemTime,
    response_time: SystemTime,
}

impl Edge {
    /// Goes upstream for a GET (or a HEAD with a stored response to validate), validating the miss's hit if
    /// there is one, and stores what may be stored.
    pub(super) async fn fetch(self: &Arc<Self>, request: &ClientRequest, miss: Miss) -> Response<Body> {
        let upstream_request = self.upstream_request(request, Method::GET, tern_http::empty(), miss.hit.as_ref());
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
                let Miss {
                    hit,
                    leader,
                    forward,
                    directives,
                    ..
                } = miss;
                // The waiters answer this failure too (or serve their stale copy), rather than each asking
                // an origin that just failed and waiting as long.
                if let Some(leader) = leader {
                    leader.finish(FillOutcome::Failed(UpstreamFailure {
                        status: error.status(),
                        reason: error.public_reason().into(),
                    }));
                }
                if let Some(hit) = &hit
                    && hit.object.freshness.may_serve_on_error(response_time, &directives)
                {
                    let status = CacheStatus::forward(Forward::Stale)
                        .with_ttl(hit.object.freshness.ttl_seconds(response_time))
                        .with_detail("stale-if-error");
                    if let Some(response) = Box::pin(self.serve_stored(request, hit, status, response_time)).await {
                        self.metrics.request("stale");
                        return response;
                    }
                }
                warn!(url = %request.primary, %error, "upstream failed");
                self.metrics.request("error");
                return self.origin_error(error.status(), &error.public_reason(), CacheStatus::forward(forward));
            }
        };
        let (mut parts, body) = response.into_parts();
        let served_by_owner = crate::community::take_peer_mark(&mut parts.extensions);
        hop::strip(&mut parts.headers);
        if !parts.headers.contains_key(header::DATE) {
            parts.headers.insert(header::DATE, date::format(response_time));
        }
        let received = Received {
            parts,
            body,
            request_time,
            response_time,
        };
        let exchange = UpstreamExchange {
            path: &request.target,
            request: &request.headers,
            request_directives: &miss.directives,
            status: received.parts.status,
            response: &received.parts.headers,
            stored: miss.hit.as_ref().map(|hit| &hit.object.freshness),
            request_time,
            now: response_time,
        };
        let mut decision = policy::decide_response(&exchange, self.policy());
        if decision == ResponseDecision::ServeStale
            && let Some(hit) = &miss.hit
        {
            // The leader is dropped on return, which releases any waiters to try for themselves.
            let status = CacheStatus::forward(Forward::Stale)
                .with_forward_status(received.parts.status.as_u16())
                .with_ttl(hit.object.freshness.ttl_seconds(response_time))
                .with_detail("stale-if-error");
            if let Some(response) = Box::pin(self.serve_stored(request, hit, status, response_time)).await {
                self.metrics.request("stale");
                return response;
            }
            decision = policy::decide_storing(&exchange, self.policy());
        }
        if served_by_owner && matches!(decision, ResponseDecision::Store(_)) {
            // The community's owner keeps the copy (`keep = never`): one copy per object among the peers.
            return self.pass_unstored(request, miss, received, "community-owner");
        }
        if received.parts.status == StatusCode::NOT_MODIFIED && miss.hit.is_none() {
            // The edge sent no validator (a client's are not forwarded on the caching path): a 304 has nothing
            // to refer to, and passed on it would tell the client to use a copy it may not have.
            warn!(url = %request.primary, "the origin answered 304 to a request without validators");
            if let Some(leader) = miss.leader {
                leader.finish(FillOutcome::Failed(UpstreamFailure {
                    status: StatusCode::BAD_GATEWAY,
                    reason: "the origin answered 304 Not Modified to a request without validators".into(),
                }));
            }
            self.metrics.request("error");
            return self.origin_error(
                StatusCode::BAD_GATEWAY,
                "the origin answered 304 Not Modified to a request without validators",
                CacheStatus::forward(miss.forward).with_forward_status(304),
            );
        }
        if decision == ResponseDecision::Refresh
            && let Some(hit) = &miss.hit
            && !policy::selects_for_update(&hit.object.meta.headers, &received.parts.headers)
        {
            // A 304 whose validator is not the stored one's: another representation is current, and the
            // stored one must not take this response's fields (RFC 9111 section 4.3.4). Fetched whole.
            warn!(url = %request.primary, etag = ?received.parts.headers.get(header::ETAG),
                  stored = ?hit.object.meta.headers.get(header::ETAG),
                  "the origin's 304 names another representation than the stored one; fetching it whole");
            self.store.remove_if_current(&hit.object);
            let whole = Miss { hit: None, ..miss };
            return Box::pin(self.fetch(request, whole)).await;
        }
        match decision {
            ResponseDecision::Refresh | ResponseDecision::ServeStale => match miss.hit {
                Some(hit) => Box::pin(self.refresh(request, hit, miss.leader, miss.forward, received)).await,
                None => self.pass_on(request, miss, received, NotStorable::Status),
            },
            ResponseDecision::Pass(reason) => self.pass_on(request, miss, received, reason),
            // The sub-futures are boxed: the fetch runs as its own task (see `lead`), and a task's future is
            // moved whole when spawned; inline, these made it 11 KB and its copies a tenth of a miss's CPU.
            ResponseDecision::Store(storing) => Box::pin(self.store_and_serve(request, miss, received, storing)).await,
        }
    }

    /// `304`: the stored response is refreshed (RFC 9111 section 4.3.4) and served.
    async fn refresh(
        self: &Arc<Self>,
        request: &ClientRequest,
        hit: Hit,
        leader: Option<Leader>,
        forward: Forward,
        received: Received,
    ) -> Response<Body> {
        let response_time = received.response_time;
        let (stored_fields, client_only) =
            policy::refresh_fields(&received.parts.headers, &request.target, self.policy());
        let refreshed = self
            .store
            .refresh(&hit.object, &stored_fields, received.request_time, response_time);
        if let Some(leader) = leader {
            leader.finish(FillOutcome::Stored);
        }
        let hit = self
            .store
            .find(&request.primary, &request.headers)
            .filter(|h| Arc::ptr_eq(&h.object, &refreshed));
        let status = CacheStatus::forward(forward)
            .with_forward_status(304)
            .with_ttl(refreshed.freshness.ttl_seconds(response_time));
        if let Some(hit) = hit
            && let Some(mut response) = self.serve_stored(request, &hit, status, response_time).await
        {
            self.metrics.request("revalidated");
            // The cookie the 304 set is this client's, never stored.
            for (name, value) in &client_only {
                response.headers_mut().append(name.clone(), value.clone());
            }
            return response;
        }
        // The refreshed object vanished meanwhile (purged): fetch it in full.
        let retry = self.upstream_request(request, Method::GET, tern_http::empty(), None);
        match self.upstream.fetch(retry).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                hop::strip(&mut parts.headers);
                self.metrics.request("pass");
                let status = CacheStatus::forward(forward).with_forward_status(parts.status.as_u16());
                self.respond_unstored(request, parts, body, status)
            }
            Err(error) => {
                self.count_upstream_error(&error);
                self.origin_error(error.status(), &error.public_reason(), CacheStatus::forward(forward))
            }
        }
    }

    /// Serves a response that is not stored. Waiters go upstream themselves; a stored variant the origin
    /// no longer lets the cache keep goes.
    fn pass_on(&self, request: &ClientRequest, miss: Miss, received: Received, reason: NotStorable) -> Response<Body> {
        self.pass_unstored(request, miss, received, reason.reason())
    }

    /// [`Edge::pass_on`] with the reason's token (`Cache-Status` detail).
    fn pass_unstored(
        &self,
        request: &ClientRequest,
        miss: Miss,
        received: Received,
        reason: &'static str,
    ) -> Response<Body> {
        drop(miss.leader);
        if let Some(hit) = &miss.hit {
            self.store.remove_if_current(&hit.object);
        }
        debug!(url = %request.primary, reason, "response not stored");
        self.metrics.request("miss");
        let Received { parts, body, .. } = received;
        let status = CacheStatus::forward(miss.forward)
            .with_forward_status(parts.status.as_u16())
            .with_detail(reason);
        self.respond_unstored(request, parts, body, status)
    }

    /// Streams an upstream response that is not stored to the client.
    fn respond_unstored(
        &self,
        request: &ClientRequest,
        parts: http::response::Parts,
        body: Body,
        status: CacheStatus,
    ) -> Response<Body> {
        let length = content_length(&parts);
        self.respond(
            request,
            parts.status,
            parts.headers,
            length,
            Source::Stream(body, parts.version),
            None,
            status,
        )
    }

    /// Stores the response while serving it: a small body is read whole first, a large one is teed.
    async fn store_and_serve(
        self: &Arc<Self>,
        request: &ClientRequest,
        miss: Miss,
        received: Received,
        storing: Storing,
    ) -> Response<Body> {
        let Received {
            parts,
            body,
            request_time,
            response_time,
        } = received;
        let Miss {
            leader,
            ticket,
            forward,
            ..
        } = miss;
        let upstream_status = parts.status.as_u16();
        let length = content_length(&parts);
        let vary = vary_values(&parts.headers, &request.headers);
        let id = ObjectId::new(&request.primary, &vary);
        let meta = Meta {
            url: request.primary.clone(),
            status: parts.status,
            headers: storing.stored_fields(&parts.headers),
            vary,
            request_time,
            response_time,
            body_len: 0,
            body_hash: [0; 32],
            surrogate_keys: surrogate_keys(&parts.headers),
            invalidated: false,
        };
        let freshness = storing.freshness;
        let mut fill = self.store.begin_fill(id, meta, freshness, length, ticket).await;
        let age = freshness.age_seconds(response_time);
        let status = CacheStatus::forward(forward)
            .with_forward_status(upstream_status)
            .with_ttl(freshness.ttl_seconds(response_time));
        if let Some(small) = length.filter(|len| *len <= INLINE_BODY_LIMIT) {
            // A small body is read here, stored, then answered from memory: no copying task, no channel.
            // It must arrive whole within the body's idle timeout: an origin that sends a byte now and then
            // would otherwise hold the client, who has nothing yet, for as long as it likes.
            let bytes = match read_small(body, small, self.small_body_deadline).await {
                Ok(bytes) => bytes,
                Err(failure) => {
                    warn!(url = %request.primary, %failure, "upstream response not stored");
                    self.metrics.body_failed(&failure);
                    self.metrics.fills_abandoned.inc();
                    self.metrics.request("error");
                    if let Some(leader) = leader {
                        leader.finish(FillOutcome::Failed(UpstreamFailure {
                            status: failure.status(),
                            reason: failure.to_string().into(),
                        }));
                    }
                    return self.origin_error(
                        failure.status(),
                        &failure.to_string(),
                        CacheStatus::forward(forward).with_forward_status(upstream_status),
                    );
                }
            };
            fill.write(&bytes).await;
            let finished = fill.finish(true).await;
            if finished.is_ok() {
                self.metrics.stored.inc();
            } else {
                self.metrics.fills_abandoned.inc();
            }
            if let Some(leader) = leader {
                leader.finish(FillOutcome::of(&finished));
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
                status.with_stored(finished.is_ok()),
            );
        }
        let (sender, client_body) = tern_http::channel(STREAM_CHUNKS, length);
        // Requests that join this fill from now on read its body as it arrives (read-while-write).
        let spill = match &leader {
            Some(_) => fill.open_written().await,
            None => None,
        };
        let shared = leader.as_ref().map(|leader| {
            let shared = crate::shared_fill::SharedBody::new(self.shared_window, spill);
            leader.streaming(Arc::new(StreamedResponse {
                vary: vary_values(&parts.headers, &request.headers),
                status: parts.status,
                headers: storing.stored_fields(&parts.headers),
                length,
                freshness,
                received: parts.version,
                body: shared.clone(),
            }));
            Writer(shared)
        });
        // With others able to join, the leader's own client is one more reader of the shared body, so that
        // a client that reads slowly (or not at all) holds back neither the transfer nor those who joined
        // ([`crate::shared_fill::SharedBody::room`]); alone, it is sent to directly.
        let sender = match shared.as_ref().and_then(|shared| shared.0.attach()) {
            Some(reader) => {
                tokio::spawn(super::follow::copy(
                    reader,
                    sender,
                    self.metrics.clone(),
                    request.primary.clone(),
                ));
                None
            }
            None => Some(sender),
        };
        let url = request.primary.clone();
        let copy = Tee {
            fill,
            sender,
            shared,
            expected: length,
            leader,
            metrics: self.metrics.clone(),
            url,
        };
        tokio::spawn(copy.run(body));
        self.metrics.request("miss");
        // Whether a streamed body will be stored is known only at its end, after this field was sent:
        // `stored` is left out rather than promised (RFC 9211 section 2.7 says it reports what happened).
        self.respond(
            request,
            parts.status,
            parts.headers,
            length,
            Source::Stream(client_body, parts.version),
            Some(age),
            status,
        )
    }

    /// Builds the request sent upstream: end-to-end fields of the client's request, `Via`,
    /// `X-Forwarded-For`, and, when validating, the stored response's validators.
    pub(super) fn upstream_request(
        &self,
        request: &ClientRequest,
        method: Method,
        body: Body,
        validate: Option<&Hit>,
    ) -> Request<Body> {
        let mut headers = request.headers.clone();
        hop::strip(&mut headers);
        for name in &CLIENT_PRECONDITIONS {
            headers.remove(name);
        }
        // The edge's own server already answered `100 Continue` when it read the body (RFC 9110 section
        // 10.1.1: an intermediary that did so must not forward the expectation).
        headers.remove(header::EXPECT);
        // Only the edge itself says it decodes deltas (a client saying so would get one stored as a page).
        headers.remove(crate::delta::EDGE_FIELD);
        if let Some(hit) = validate {
            let stored = &hit.object.meta.headers;
            if let Some(etag) = stored.get(header::ETAG) {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
            }
            if let Some(modified) = stored.get(header::LAST_MODIFIED) {
                headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
            }
        }
        if let Ok(value) = HeaderValue::from_str(&request.host) {
            headers.insert(header::HOST, value);
        }
        hop::append_via(&mut headers, request.version, &self.name);
        hop::append_forwarded_for(&mut headers, request.client.ip());
        let mut upstream = Request::new(body);
        *upstream.method_mut() = method;
        *upstream.uri_mut() = request.target.parse().unwrap_or_else(|_| Uri::from_static("/"));
        *upstream.headers_mut() = headers;
        upstream
    }
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

/// Reads a small body (`expected` bytes, announced by its head) whole within `deadline`.
async fn read_small(mut body: Body, expected: u64, deadline: std::time::Duration) -> Result<Bytes, BodyFailure> {
    let until = tokio::time::Instant::now() + deadline;
    let mut chunks: Vec<Bytes> = Vec::with_capacity(1);
    let mut received = 0u64;
    loop {
        match tokio::time::timeout_at(until, body.frame()).await {
            Err(_) => {
                return Err(BodyFailure::Stalled(format!(
                    "{received} of its {expected} bytes arrived in {} ms",
                    deadline.as_millis()
                )));
            }
            Ok(None) => break,
            Ok(Some(Err(error))) => return Err(BodyFailure::of_error(&error, received, Some(expected))),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    received += data.len() as u64;
                    if received > expected {
                        return Err(BodyFailure::TooLong { expected });
                    }
                    chunks.push(data);
                }
            }
        }
    }
    if received < expected {
        return Err(BodyFailure::Short { received, expected });
    }
    // One chunk (the usual case) is passed on as it is; several are joined once.
    Ok(match chunks.len() {
        1 => chunks.pop().unwrap_or_default(),
        _ => Bytes::from(chunks.concat()),
    })
}

/// Copies an upstream body to the client, into the store, and to the requests that joined the fill
/// ([`crate::shared_fill`]).
struct Tee {
    fill: Fill,
    /// The client's body, when it is not a reader of `shared`.
    sender: Option<ChannelSender>,
    /// Set when other requests may join the fill.
    shared: Option<Writer>,
    expected: Option<u64>,
    leader: Option<Leader>,
    metrics: Arc<EdgeMetrics>,
    url: String,
}

impl Tee {
    /// Copies the body. The last chunk is held back until the object is stored, so a client that has read
    /// a whole response finds it in the cache on its next request. A client that goes away does not stop
    /// the fill (nor the copy for those who joined it); an upstream that fails or ends short stores
    /// nothing, is logged and counted, its waiters answer the failure, and every client's body is cut
    /// with an error, never passed off as complete. A shared body is pushed as its readers leave room
    /// ([`crate::shared_fill::SharedBody::room`]); a client alone is sent to at its own pace.
    async fn run(self, mut body: Body) {
        let Tee {
            mut fill,
            sender,
            shared,
            expected,
            leader,
            metrics,
            url,
        } = self;
        let mut received = 0u64;
        // `None` once the client went away (or when it reads `shared`).
        let mut sender = sender;
        let mut held: Option<Bytes> = None;
        // `Err(None)`: the client went away and the fill could not go on without it.
        let ended: Result<(), Option<BodyFailure>> = loop {
            match body.frame().await {
                None => match expected {
                    Some(expected) if expected != received => {
                        break Err(Some(BodyFailure::Short { received, expected }));
                    }
                    _ => break Ok(()),
                },
                Some(Err(error)) => break Err(Some(BodyFailure::of_error(&error, received, expected))),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    received += data.len() as u64;
                    if let Some(expected) = expected.filter(|expected| received > *expected) {
                        break Err(Some(BodyFailure::TooLong { expected }));
                    }
                    fill.write(&data).await;
                    if let Some(previous) = held.replace(data) {
                        if let Some(shared) = &shared {
                            shared.0.room().await;
                            // The write just made has waited for the one before it: `previous` is in the file.
                            shared.0.push(previous, fill.writes_to_disk());
                        } else if let Some(client) = &sender
                            && client.send(Ok(previous)).await.is_err()
                        {
                            sender = None;
                        }
                    }
                    let followed = shared.as_ref().is_some_and(|shared| shared.0.has_readers());
                    if sender.is_none() && !fill.is_viable() && !followed {
                        break Err(None);
                    }
                }
            }
        };
        let complete = ended.is_ok();
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
        let failure = ended.err().flatten();
        if let Some(failure) = &failure {
            warn!(%url, %failure, received, "upstream body failed mid-transfer: the response is cut and not stored");
            metrics.body_failed(failure);
        }
        let reason = (!complete).then(|| {
            failure.as_ref().map_or_else(
                || "the response could not be completed; cut".to_string(),
                |failure| format!("{failure}; response cut"),
            )
        });
        if let Some(shared) = &shared {
            match &reason {
                None => {
                    if let Some(last) = held.take() {
                        shared.0.push(last, stored.is_ok());
                    }
                    shared.0.end(Ok(()));
                }
                Some(reason) => shared.0.end(Err(reason.as_str().into())),
            }
        }
        if let Some(leader) = leader {
            leader.finish(match &failure {
                Some(failure) => FillOutcome::Failed(UpstreamFailure {
                    status: failure.status(),
                    reason: failure.to_string().into(),
                }),
                None => FillOutcome::of(&stored),
            });
        }
        if let Some(sender) = sender {
            match reason {
                None => {
                    if let Some(last) = held {
                        let _ = sender.send(Ok(last)).await;
                    }
                }
                Some(reason) => {
                    let _ = sender.send(Err(reason.into())).await;
                }
            }
        }
    }
}
