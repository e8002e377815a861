//! The peer listener (`--peer-listen`): content requests from other members, and purges relayed by them.
//!
//! A purge that any member receives (`PURGE`, or `POST /purge` on its admin listener) removes or marks the
//! object at every member: the receiving edge applies it and relays it to every other listed peer before it
//! answers, so that a prefetch sent after the purge's answer (the sync service's order) cannot be served
//! the old copy by an owner. It goes to every peer rather than only the holders the master's directory
//! names: prefix and surrogate-key purges cannot be resolved from a directory of keys, and the directory is
//! soft state (a new master starts empty), while a member missed would serve stale content for the
//! object's whole lifetime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tern_http::Body;
use tern_http::server::Handler;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::auth::{PeerAuthError, unix_ms};
use super::{EdgeCommunity, HOP_FIELD, PREFETCH_FIELD, PeerOutcome, PeerServed, REFUSED_FIELD, TOKEN_FIELD};
use crate::proxy::Edge;
use crate::purge::PurgeRequest;

/// Where a member posts a relayed purge on another member's peer listener: the JSON body of the admin's
/// `POST /purge` ([`PurgeRequest`]), with the community's token. A relayed purge is applied, never relayed
/// again.
pub const PEER_PURGE_PATH: &str = "/.well-known/tern/community/purge";
/// Largest relayed purge body accepted, bytes.
const MAX_PURGE_BODY: usize = 1 << 20;

/// What relaying a purge to the other members did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelaySummary {
    /// Members that applied it.
    pub applied: usize,
    /// Members that did not answer in time or refused it (logged; they are counted as failed relays).
    pub failed: usize,
}

impl EdgeCommunity {
    /// Relays `purge` to every other listed peer at once and waits for their answers (each bounded by the
    /// peer timeouts).
    pub async fn relay_purge(&self, purge: &PurgeRequest) -> RelaySummary {
        let snapshot = self.handle.snapshot();
        let Ok(body) = serde_json::to_vec(purge) else {
            return RelaySummary::default();
        };
        let mut relays = JoinSet::new();
        for peer in snapshot.peers.iter().filter(|peer| peer.name != snapshot.me.name) {
            // A relay's host is not signed (empty): its body names the URLs it purges.
            let token = self.auth.sign("POST", "", PEER_PURGE_PATH, &body, unix_ms());
            let request = Request::post(format!("http://{}{PEER_PURGE_PATH}", peer.http))
                .header(TOKEN_FIELD, token)
                .header(HOP_FIELD, &snapshot.me.name)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(tern_http::full(body.clone()));
            let Ok(request) = request else {
                continue;
            };
            let client = self.client.clone();
            let timeout = self.first_byte_timeout;
            let (name, address) = (peer.name.clone(), peer.http);
            let left = super::until_left(self.handle.watch(), address);
            relays.spawn(async move {
                // A member the master drops meanwhile (dead or hung) is not waited for.
                let answer = tokio::select! {
                    answer = tokio::time::timeout(timeout, client.request(request)) => answer,
                    () = left => {
                        warn!(peer = %name, %address, "purge not relayed: the member left the community meanwhile");
                        return false;
                    }
                };
                let applied = matches!(&answer, Ok(Ok(response)) if response.status().is_success());
                if !applied {
                    let why = match answer {
                        Err(_) => "no answer in time".to_string(),
                        Ok(Err(error)) => error.to_string(),
                        Ok(Ok(response)) => format!("answered {}", response.status()),
                    };
                    warn!(peer = %name, %address, reason = %why, "purge not relayed to a community member");
                }
                applied
            });
        }
        let mut summary = RelaySummary::default();
        while let Some(done) = relays.join_next().await {
            if matches!(done, Ok(true)) {
                summary.applied += 1;
            } else {
                summary.failed += 1;
            }
        }
        let relays = &self.metrics.purge_relays;
        relays
            .get_or_create(&PeerOutcome { outcome: "ok" })
            .inc_by(summary.applied as u64);
        relays
            .get_or_create(&PeerOutcome { outcome: "failed" })
            .inc_by(summary.failed as u64);
        summary
    }
}

/// Serves the peer listener: a request with the community's token is answered by the edge (from its cache,
/// or from the origin once, coalesced) with the hop marker set; a relayed purge is applied; others get 403.
pub struct PeerHandler {
    /// The edge.
    pub edge: Arc<Edge>,
    /// Its community.
    pub community: Arc<EdgeCommunity>,
}

/// Least time between two warnings of refused peer requests (one process, one edge).
const REFUSAL_WARN_INTERVAL_MS: u64 = 30_000;
/// When the last one was logged, in milliseconds since the Unix epoch.
static LAST_REFUSAL_WARNING_MS: AtomicU64 = AtomicU64::new(0);

/// Whether a warning whose last one was logged at `last` (ms since the Unix epoch) is due again (at most
/// one every [`REFUSAL_WARN_INTERVAL_MS`]); if so, `last` becomes now.
pub(crate) fn warning_due(last: &AtomicU64) -> bool {
    let now_ms = unix_ms();
    let last_ms = last.load(Ordering::Relaxed);
    now_ms.saturating_sub(last_ms) >= REFUSAL_WARN_INTERVAL_MS
        && last
            .compare_exchange(last_ms, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

impl PeerHandler {
    /// A purge relayed by another member: authenticated with its body, applied here only.
    async fn relayed_purge(&self, request: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let token = request
            .headers()
            .get(TOKEN_FIELD)
            .map(|value| value.as_bytes().to_vec());
        let read = tern_http::collect_within(request.into_body(), MAX_PURGE_BODY, tern_http::REQUEST_BODY_DEADLINE);
        let body = match read.await {
            Ok(body) => body,
            Err(error) => return tern_admin::json_error(error.status(), error.to_string()),
        };
        let verified = self
            .community
            .auth
            .verify(token.as_deref(), "POST", "", PEER_PURGE_PATH, &body, unix_ms());
        if let Err(error) = verified {
            return self.refuse(client, error);
        }
        let purge = match PurgeRequest::parse(&body) {
            Ok(purge) => purge,
            Err(message) => return tern_admin::json_error(StatusCode::BAD_REQUEST, message),
        };
        match self.edge.purge_here(&purge) {
            Ok(count) => {
                self.community
                    .metrics
                    .purge_relays
                    .get_or_create(&PeerOutcome { outcome: "received" })
                    .inc();
                info!(
                    removed = count.removed,
                    marked = count.marked,
                    "purge relayed by a community member"
                );
                tern_admin::json(
                    StatusCode::OK,
                    &serde_json::json!({ "removed": count.removed, "marked": count.marked }),
                )
            }
            Err(message) => tern_admin::json_error(StatusCode::BAD_REQUEST, message),
        }
    }

    /// A prefetch a requester passed on under `keep = never`: fetched into this edge's cache (the body is
    /// read through, so that the fill completes), answered `204` without the body.
    async fn prefetch(&self, request: Request<Body>, client: SocketAddr) -> Response<Body> {
        let response = self.edge.handle(request, client).await;
        let status = response.status();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
        if !status.is_success() {
            return tern_admin::json_error(status, format!("the owner's prefetch answered {status}"));
        }
        self.community.metrics.count("prefetched");
        let mut answer = Response::new(tern_http::empty());
        *answer.status_mut() = StatusCode::NO_CONTENT;
        answer
            .headers_mut()
            .insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        answer
    }

    /// A request whose token failed: 403, counted and logged with the reason (a warning at most every
    /// [`REFUSAL_WARN_INTERVAL_MS`], the rest at debug level).
    fn refuse(&self, client: SocketAddr, error: PeerAuthError) -> Response<Body> {
        self.community.metrics.count("refused");
        if warning_due(&LAST_REFUSAL_WARNING_MS) {
            warn!(%client, reason = error.reason(), "peer request refused: {error} (repeats counted in /metrics)");
        } else {
            debug!(%client, reason = error.reason(), "peer request refused");
        }
        let mut refusal = tern_admin::json_error(StatusCode::FORBIDDEN, error.to_string());
        refusal
            .headers_mut()
            .insert(REFUSED_FIELD, HeaderValue::from_static(error.reason()));
        refusal
    }
}

impl Handler for PeerHandler {
    async fn call(&self, request: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let metrics = &self.community.metrics;
        if request.method() == Method::POST && request.uri().path() == PEER_PURGE_PATH {
            return self.relayed_purge(request, client).await;
        }
        let target = request.uri().path_and_query().map_or("/", |target| target.as_str());
        let token = request.headers().get(TOKEN_FIELD).map(|value| value.as_bytes());
        // The host the edge will key and fetch on (an absolute-form target's authority before `Host`).
        let host = crate::proxy::target_host(request.uri(), request.headers()).unwrap_or_default();
        let verified = self
            .community
            .auth
            .verify(token, request.method().as_str(), &host, target, b"", unix_ms());
        if let Err(error) = verified {
            return self.refuse(client, error);
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            metrics.count("refused");
            return tern_admin::json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("peers ask with GET or HEAD, and relay purges with POST {PEER_PURGE_PATH}"),
            );
        }
        let (mut parts, body) = request.into_parts();
        parts.headers.remove(TOKEN_FIELD);
        let prefetch = parts.headers.remove(PREFETCH_FIELD).is_some();
        if !parts.headers.contains_key(HOP_FIELD) {
            parts.headers.insert(HOP_FIELD, HeaderValue::from_static("peer"));
        }
        let request = Request::from_parts(parts, body.map_err(Into::into).boxed());
        if prefetch {
            return self.prefetch(request, client).await;
        }
        metrics.count("served");
        let mut response = self.edge.handle(request, client).await;
        if response.extensions().get::<crate::proxy::OriginFailed>().is_some() {
            response
                .headers_mut()
                .insert(super::ORIGIN_FAILED_FIELD, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Whether the response was served by a peer and is not to be stored here (`keep = never`); the mark is
/// removed.
pub(crate) fn take_peer_mark(extensions: &mut http::Extensions) -> bool {
    extensions.remove::<PeerServed>().is_some()
}

/// Removes the community's fields from a client's request on the public listeners: only a peer with the
/// token may set the hop marker or ask for an owner's prefetch.
pub(crate) fn strip_client_fields(headers: &mut HeaderMap) {
    // Names given as `HeaderName`s: a `&str` would be parsed again on every request.
    const FIELDS: [HeaderName; 3] = [
        HeaderName::from_static(HOP_FIELD),
        HeaderName::from_static(TOKEN_FIELD),
        HeaderName::from_static(PREFETCH_FIELD),
    ];
    for name in &FIELDS {
        headers.remove(name);
    }
}
