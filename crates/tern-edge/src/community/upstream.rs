//! The miss path in a community (seed 002, claims 75–94; seed 003): the owners by the allocation table
//! first; then, before anyone goes to the origin, a location request to the master, whose directory may
//! name a peer that holds a copy (after a join moved the portion, or with `keep = always`); only then the
//! origin.
//!
//! Loops cannot form: a request an owner received from a peer carries the hop marker and never goes to
//! another owner, and a holder is asked with `Cache-Control: only-if-cached`, which it answers from its
//! cache or with `504` (RFC 9111 section 5.2.1.7), never by forwarding.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use tern_community::driver::Snapshot;
use tern_http::Body;
use tern_http_cache::{KeyConfig, primary_key};
use tracing::{debug, warn};

use super::{
    EdgeCommunity, HOP_FIELD, KeepPolicy, LocationOutcome, PREFETCH_FIELD, PeerServed, REFUSED_FIELD,
    SYNC_PREFETCH_FIELD, TOKEN_FIELD,
};
use crate::upstream::{Upstream, UpstreamError, UpstreamFuture};

/// When this edge last warned that a peer refused its token (ms since the Unix epoch).
static LAST_PEER_REFUSAL_WARNING_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Peer bodies of at most this many bytes (by `Content-Length`) are received whole before this edge
/// answers its client: a peer that dies or stalls mid-body then costs a try at the next owner, a holder or
/// the origin, not a cut response (the master's death must cost no request). Larger bodies stream, so that
/// neither the first bytes of a large object are held back nor memory grows with it (at most this much per
/// miss in flight; misses of one object are coalesced); one cut mid-body fails that response.
pub const PEER_BUFFER_LIMIT: u64 = 1 << 20;

/// Whom a peer request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// An owner by the table: it serves from its cache or fetches once for the community.
    Owner,
    /// A holder named by the directory: it serves only from its cache (`only-if-cached`).
    Holder,
}

/// The miss path in a community: the owner by the table, a holder by the directory, else the origin.
pub struct CommunityUpstream {
    origin: Arc<dyn Upstream>,
    community: Arc<EdgeCommunity>,
    key_config: KeyConfig,
    idle_body_timeout: std::time::Duration,
}

impl CommunityUpstream {
    /// Misses go to the owners and holders in `community`, else to `origin`; bodies from peers that stall
    /// longer than `idle_body_timeout` between chunks fail.
    pub fn new(
        origin: Arc<dyn Upstream>,
        community: Arc<EdgeCommunity>,
        key_config: KeyConfig,
        idle_body_timeout: std::time::Duration,
    ) -> CommunityUpstream {
        CommunityUpstream {
            origin,
            community,
            key_config,
            idle_body_timeout,
        }
    }

    /// One attempt at `peer`; `Ok(None)` when it did not serve (counted by outcome), `Err` when it is an
    /// owner whose own fetch from the origin failed ([`super::ORIGIN_FAILED_FIELD`]).
    async fn ask_peer(
        &self,
        peer: SocketAddr,
        parts: &http::request::Parts,
        me: &str,
        ask: Ask,
        owns: bool,
    ) -> Result<Option<Response<Body>>, UpstreamError> {
        let community = &self.community;
        let metrics = &community.metrics;
        let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let Ok(uri) = format!("http://{peer}{target}").parse::<Uri>() else {
            return Ok(None);
        };
        let mut request = Request::new(tern_http::empty());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = parts.headers.clone();
        let headers = request.headers_mut();
        // The host this edge keyed the request on (an absolute-form target's authority before `Host`),
        // sent as `Host` with the origin-form target, and signed.
        let host = crate::proxy::target_host(&parts.uri, &parts.headers).unwrap_or_default();
        if let Ok(value) = HeaderValue::from_str(&host)
            && !host.is_empty()
        {
            headers.insert(header::HOST, value);
        }
        let token = community
            .auth
            .sign(parts.method.as_str(), &host, target, b"", super::auth::unix_ms());
        if let Ok(token) = HeaderValue::from_str(&token) {
            headers.insert(TOKEN_FIELD, token);
        }
        if let Ok(sender) = HeaderValue::from_str(me) {
            headers.insert(HOP_FIELD, sender);
        }
        match ask {
            Ask::Holder => {
                headers.append(header::CACHE_CONTROL, HeaderValue::from_static("only-if-cached"));
            }
            Ask::Owner
                if !owns
                    && community.keep.policy() != KeepPolicy::Always
                    && headers.contains_key(SYNC_PREFETCH_FIELD) =>
            {
                // Nobody here keeps the body (this edge does not own the object): the owner fetches it
                // into its cache and answers 204.
                headers.insert(PREFETCH_FIELD, HeaderValue::from_static("1"));
            }
            Ask::Owner => {}
        }
        let asked = tokio::time::timeout(community.first_byte_timeout, community.client.request(request));
        let sent = tokio::select! {
            sent = asked => sent,
            () = super::until_left(community.handle.watch(), peer) => {
                metrics.count("peer-left");
                debug!(%peer, "peer left the community while it was asked; skipped");
                return Ok(None);
            }
        };
        let response = match sent {
            Err(_) => {
                metrics.count("timeout");
                debug!(%peer, "peer sent no response in time; skipped");
                return Ok(None);
            }
            Ok(Err(error)) if error.is_connect() => {
                metrics.count("connect");
                debug!(%peer, %error, "peer unreachable; skipped");
                return Ok(None);
            }
            Ok(Err(error)) => {
                metrics.count("failed");
                debug!(%peer, %error, "peer request failed; skipped");
                return Ok(None);
            }
            Ok(Ok(response)) => response,
        };
        // A peer that refused this edge's token (a clock off by more than the window, another key after a
        // restart) is skipped like a dead one: its refusal is not the client's answer.
        if let Some(reason) = response.headers().get(REFUSED_FIELD) {
            metrics.count("refused-by-peer");
            if super::peer::warning_due(&LAST_PEER_REFUSAL_WARNING_MS) {
                warn!(%peer, reason = ?reason, "a peer refused this edge's token and was skipped: check both clocks (NTP) and cluster keys (repeats counted in /metrics)");
            } else {
                debug!(%peer, reason = ?reason, "the peer refused this edge's token; skipped");
            }
            return Ok(None);
        }
        // A holder without a usable copy answers only-if-cached with 504.
        if ask == Ask::Holder && response.status() == StatusCode::GATEWAY_TIMEOUT {
            metrics.count("holder-miss");
            return Ok(None);
        }
        // An owner whose own fetch from the origin failed says so: the origin is not asked again, by this
        // edge or by the requests waiting for this one.
        if ask == Ask::Owner
            && response.headers().contains_key(super::ORIGIN_FAILED_FIELD)
            && matches!(response.status(), StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT)
        {
            metrics.count("owner-origin-failed");
            let status = response.status();
            let reason = http_body_util::Limited::new(response.into_body(), 4096)
                .collect()
                .await
                .map(|body| String::from_utf8_lossy(&body.to_bytes()).trim().to_string())
                .unwrap_or_default();
            return Err(UpstreamError::Relayed {
                peer: format!("owner {peer}"),
                status,
                reason,
            });
        }
        // A peer's other failures (it is shutting down, broken) are not the client's answer: this edge goes
        // on (to a holder, or the origin) itself.
        if matches!(
            response.status(),
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ) {
            metrics.count("error-status");
            return Ok(None);
        }
        let idle = self.idle_body_timeout;
        let bytes = metrics.peer_bytes.clone();
        // A peer the master drops while it sends the body (dead, hung, stopped) sends no more: the body is
        // cut then, not after the idle timeout (30 s by default), and said so.
        let left = super::until_left(community.handle.watch(), peer);
        let cut_metrics = community.metrics.clone();
        let abort = async move {
            left.await;
            cut_metrics.count("left-mid-body");
            warn!(%peer, "the peer serving a response left the community mid-body (dead or hung): the response is cut");
            format!("peer {peer} left the community mid-body")
        };
        let failed_metrics = community.metrics.clone();
        let response = response.map(|body| {
            let body = tern_http::with_idle_timeout(body.map_err(Into::into).boxed(), idle);
            // A peer killed mid-body (its connection reset) is said and counted, as one that left is.
            let body = body
                .map_err(move |error| -> tern_http::BoxError {
                    failed_metrics.count("body-cut");
                    warn!(%peer, %error, "a peer's body failed mid-transfer: a response over the peer buffer is cut, a smaller one is fetched elsewhere");
                    format!("peer {peer}: {error}").into()
                })
                .boxed();
            let body = tern_http::with_abort(body, abort);
            tern_http::with_data_counter(body, move |len| {
                bytes.inc_by(len as u64);
            })
        });
        let length = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u64>().ok());
        // HEAD and 304 answers carry a length but no body.
        let bodiless = parts.method == Method::HEAD || response.status() == StatusCode::NOT_MODIFIED;
        let response = match length {
            Some(length) if length <= PEER_BUFFER_LIMIT && !bodiless => {
                let (head, body) = response.into_parts();
                match body.collect().await.map(|collected| collected.to_bytes()) {
                    Ok(whole) if whole.len() as u64 == length => Response::from_parts(head, tern_http::full(whole)),
                    cut => {
                        // Counted by the body itself (above) when it failed; here when it ended short.
                        if cut.is_ok() {
                            metrics.count("body-cut");
                        }
                        let received = cut.as_ref().map_or(0, |bytes| bytes.len());
                        let error = cut.err().map(|error| error.to_string()).unwrap_or_default();
                        debug!(%peer, expected = length, received, %error, "peer body cut short; skipped");
                        return Ok(None);
                    }
                }
            }
            _ => response,
        };
        metrics.count(match ask {
            Ask::Owner => "ok",
            Ask::Holder => "holder-ok",
        });
        Ok(Some(response))
    }

    /// Asks the master's directory (seed 003) for peers holding a copy of `key`, other than this edge and
    /// those in `tried`, and asks each in turn; `None` when no holder served it.
    async fn ask_holders(
        &self,
        snapshot: &Snapshot,
        host: &str,
        key: &str,
        parts: &http::request::Parts,
        tried: &[String],
    ) -> Option<Response<Body>> {
        if snapshot.peers.len() < 2 {
            return None;
        }
        let metrics = &self.community.metrics;
        let count = |outcome: &'static str| metrics.locations.get_or_create(&LocationOutcome { outcome }).inc();
        let Some(answer) = self
            .community
            .handle
            .locate(key, host, self.community.location_timeout)
            .await
        else {
            count("unanswered");
            return None;
        };
        let holders: Vec<_> = answer
            .peers
            .into_iter()
            .filter(|peer| peer.holds && peer.name != snapshot.me.name && !tried.contains(&peer.name))
            .collect();
        if holders.is_empty() {
            count("none");
            return None;
        }
        count("holder");
        for holder in holders {
            // A holder answers from its cache only: it never reports an origin failure.
            if let Ok(Some(response)) = self
                .ask_peer(holder.http, parts, &snapshot.me.name, Ask::Holder, true)
                .await
            {
                debug!(%key, holder = %holder.name, "served by a holder the directory named");
                return Some(response);
            }
        }
        None
    }
}

impl Upstream for CommunityUpstream {
    fn fetch(&self, request: Request<Body>) -> UpstreamFuture<'_> {
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            parts.headers.remove(TOKEN_FIELD);
            parts.headers.remove(PREFETCH_FIELD);
            let marked = parts.headers.remove(HOP_FIELD).is_some();
            let cacheable_method = parts.method == Method::GET || parts.method == Method::HEAD;
            if cacheable_method && http_body::Body::is_end_stream(&body) {
                let host = parts
                    .headers
                    .get(header::HOST)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let key = primary_key("http", &host, target, &self.key_config);
                let snapshot = self.community.handle.snapshot();
                let owns = snapshot.owns(&host, &key);
                // What a peer serves a non-owner passes unstored unless its keep policy keeps it.
                let pass_unstored = || !owns && !self.community.keep.keeps(&key, Instant::now());
                let mut tried = Vec::new();
                if !marked {
                    // The owners in the table's order; an owner that is not the first asks those before it,
                    // so that with `--replicas` above 1 the first owner alone fetches from the origin and
                    // the others take their copies from it.
                    let owners = snapshot.owners(&host, &key);
                    let ahead = owners
                        .iter()
                        .position(|owner| owner.name == snapshot.me.name)
                        .unwrap_or(owners.len());
                    let owners: Vec<(String, SocketAddr)> = owners[..ahead]
                        .iter()
                        .map(|owner| (owner.name.clone(), owner.http))
                        .collect();
                    for (name, http) in owners {
                        tried.push(name);
                        if let Some(mut response) =
                            self.ask_peer(http, &parts, &snapshot.me.name, Ask::Owner, owns).await?
                        {
                            if pass_unstored() {
                                response.extensions_mut().insert(PeerServed);
                            }
                            return Ok(response);
                        }
                    }
                }
                // About to go to the origin: a peer may hold a copy (seed 003).
                if let Some(mut response) = self.ask_holders(&snapshot, &host, &key, &parts, &tried).await {
                    if pass_unstored() {
                        response.extensions_mut().insert(PeerServed);
                    }
                    return Ok(response);
                }
                if !tried.is_empty() {
                    self.community.metrics.count("origin-fallback");
                }
            }
            self.community.metrics.owner_fetches.inc();
            self.origin.fetch(Request::from_parts(parts, body)).await
        })
    }

    fn describe(&self) -> String {
        format!(
            "community {} over {}",
            self.community.handle.snapshot().community,
            self.origin.describe()
        )
    }
}
