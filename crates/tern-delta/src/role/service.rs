//! The role's request path: bases at their well-known path, pages of a class through the encoder,
//! everything else passed through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tern_http::server::Handler;
use tern_http::{Body, hop};
use tracing::{debug, info, warn};

use super::body::{Bounded, chain, read_bounded};
use super::{ClassState, DeltaRole};
use crate::base::{Base, BaseId};
use crate::candidate::{self, Exchange};
use crate::encoder::{BaseChange, Encoded};
use crate::fields::{
    self, AVAILABLE_DICTIONARY, BASE_UNKNOWN, DCZ, DICTIONARY_ID, REPR_DIGEST, ReprDigest, TERN_DELTA_EDGE,
    UNENCODED_DIGEST, USE_AS_DICTIONARY, UseAsDictionary, VARY_DCZ,
};
use crate::metrics::Fallback;
use crate::safety::accepts_dcz;

/// Name this role gives itself in `Via`.
const VIA_NAME: &str = "tern-delta";

/// What the encoder made of one page, with the class's current base to announce.
struct Outcome {
    encoded: Encoded,
    change: Option<BaseChange>,
    current: Option<BaseId>,
}

/// The listener's handler: the role behind an `Arc`, which the encoding work on the blocking pool shares.
pub(super) struct Front(pub(super) Arc<DeltaRole>);

impl Handler for Front {
    async fn call(&self, request: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        self.0.handle(request, client).await
    }
}

impl DeltaRole {
    async fn handle(self: &Arc<Self>, request: Request<Incoming>, _client: SocketAddr) -> Response<Body> {
        let request = request.map(|body| body.map_err(Into::into).boxed());
        if let Some(problem) =
            tern_http::target::host_field_problem(request.version(), request.uri(), request.headers())
        {
            return error_response(StatusCode::BAD_REQUEST, problem);
        }
        let path = request.uri().path();
        let readable = request.method() == Method::GET || request.method() == Method::HEAD;
        if readable && let Some(id) = BaseId::from_well_known_path(path) {
            return self.serve_base(id, &request).await;
        }
        if request.method() == Method::GET
            && let Some(class) = self.classes.find(path)
        {
            let class = class.name.clone();
            return self.page(&class, request).await;
        }
        self.counters.count(&self.counters.passed);
        // An edge that names a base for a page outside every class learned a class this role no longer has.
        let named_a_base = from_edge(request.headers()) && request.headers().contains_key(AVAILABLE_DICTIONARY);
        let mut response = self.pass(request).await;
        if named_a_base {
            response
                .headers_mut()
                .insert(BASE_UNKNOWN, HeaderValue::from_static("?1"));
        }
        response
    }

    /// A page of `class`: fetched whole, offered, encoded against the base the edge names.
    async fn page(self: &Arc<Self>, class: &str, request: Request<Body>) -> Response<Body> {
        let (parts, _) = request.into_parts();
        let named = if from_edge(&parts.headers) {
            match fields::available_dictionary(&parts.headers) {
                Ok(named) => named,
                Err(error) => {
                    // Counted, not logged as a warning: any client that reaches this listener can send it.
                    self.counters.count(&self.counters.bad_fields);
                    debug!(%error, "unusable available-dictionary from the edge; answering the whole page");
                    None
                }
            }
        } else {
            None
        };
        let mut headers = parts.headers.clone();
        hop::strip(&mut headers);
        headers.remove(AVAILABLE_DICTIONARY);
        headers.remove(DICTIONARY_ID);
        headers.remove(TERN_DELTA_EDGE);
        // The encoder works on identity bytes; a base holds identity bytes.
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        hop::append_via(&mut headers, parts.version, VIA_NAME);
        let mut origin_request = Request::new(tern_http::empty());
        *origin_request.uri_mut() = parts.uri.clone();
        *origin_request.headers_mut() = headers;
        let response = match self.origin.fetch(origin_request).await {
            Ok(response) => response,
            Err(error) => return self.origin_failed(&error),
        };
        let (mut response_parts, body) = response.into_parts();
        hop::strip(&mut response_parts.headers);
        let encodable =
            response_parts.status == StatusCode::OK && !candidate::is_content_coded(&response_parts.headers);
        if !encodable {
            return finish(response_parts, body);
        }
        let page = match read_bounded(body, self.config.max_page).await {
            Bounded::Whole(page) => page,
            Bounded::Over { head, rest } => {
                let length = content_length(&response_parts.headers).unwrap_or(0);
                self.with_class(class, |state| state.encoder.count_full(length, Fallback::PageTooLarge));
                return finish(response_parts, chain(head, rest));
            }
            Bounded::Failed(error) => {
                warn!(%error, "origin body failed");
                return error_response(StatusCode::BAD_GATEWAY, "the origin's body failed mid-way");
            }
        };
        let role = self.clone();
        let class_name = class.to_string();
        let request_headers = parts.headers;
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |target| target.as_str())
            .to_string();
        let encoded = tokio::task::spawn_blocking(move || {
            let outcome = role.encode(&class_name, &target, &request_headers, &response_parts, &page, named);
            (outcome, response_parts, page)
        })
        .await;
        let Ok((outcome, mut response_parts, page)) = encoded else {
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, "the encoder failed");
        };
        if let Some(change) = &outcome.change {
            info!(
                class = %change.class,
                old = ?change.old,
                new = %change.new,
                why = ?change.why,
                "new base; announced to edges, used once they name it"
            );
        }
        let headers = &mut response_parts.headers;
        headers.remove(header::CONTENT_LENGTH);
        // An edge that named the current base holds it: the announcement (about 110 bytes, a tenth of a
        // typical delta) would tell it nothing.
        if let Some(current) = outcome.current.filter(|current| named != Some(*current))
            && let Ok(link) = HeaderValue::from_str(&fields::compression_dictionary_link(&current))
        {
            headers.append(header::LINK, link);
        }
        let body = match outcome.encoded {
            Encoded::Delta { body, digest, .. } => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(DCZ));
                insert_digest(headers, UNENCODED_DIGEST, &digest);
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                Bytes::from(body)
            }
            Encoded::Full { digest, reason } => {
                if matches!(reason, Fallback::UnknownBase | Fallback::OtherClass) {
                    headers.insert(BASE_UNKNOWN, HeaderValue::from_static("?1"));
                }
                insert_digest(headers, REPR_DIGEST, &digest);
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(page.len()));
                page
            }
        };
        hop::append_via(headers, response_parts.version, VIA_NAME);
        let mut response = Response::new(tern_http::full(body));
        *response.status_mut() = response_parts.status;
        *response.headers_mut() = response_parts.headers;
        response
    }

    /// Runs `work` on the state of `class`.
    pub(super) fn with_class<T>(&self, class: &str, work: impl FnOnce(&mut ClassState) -> T) -> Option<T> {
        let state = self.states.get(class)?;
        let mut state = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(work(&mut state))
    }

    /// The encoder's work on one page (blocking: compression; runs on the blocking pool).
    fn encode(
        &self,
        class: &str,
        target: &str,
        request: &HeaderMap,
        response: &http::response::Parts,
        page: &Bytes,
        named: Option<BaseId>,
    ) -> Outcome {
        let now = Instant::now();
        let offer_every = std::time::Duration::from_millis(self.config.offer_interval_ms);
        let outcome = self.with_class(class, |state| {
            let mut store = self.lock_store();
            let has_base = store.current(class).is_some();
            let offer_due = !has_base
                || state
                    .last_offer
                    .is_none_or(|last| now.saturating_duration_since(last) >= offer_every);
            if offer_due {
                let exchange = Exchange {
                    target,
                    request,
                    status: response.status,
                    response: &response.headers,
                    body: page,
                };
                if state.encoder.offer(&exchange).is_ok() {
                    state.last_offer = Some(now);
                } else if !has_base && !state.warned_no_base {
                    let refused = &state.encoder.counters().refused;
                    let total: u64 = refused.iter().map(|(_, n)| n).sum();
                    if total >= super::REFUSALS_BEFORE_WARNING {
                        state.warned_no_base = true;
                        let reasons: Vec<String> = refused
                            .iter()
                            .filter(|(_, n)| *n > 0)
                            .map(|(reason, n)| format!("{reason} {n}"))
                            .collect();
                        warn!(
                            class,
                            refused = %reasons.join(", "),
                            "the class has no base: every response so far was refused as a base candidate (a request with credentials or a query, a private or cookie-setting response, ...); its pages go whole until one is not. For pages that are all private, set private_may_feed_base for the class"
                        );
                    }
                }
            }
            let encoded = state.encoder.encode(page, named, &mut store, now);
            let change = match state.encoder.rederive(&mut store, now) {
                Ok(change) => change,
                Err(error) => {
                    warn!(class, %error, "no new base; the class keeps its base");
                    None
                }
            };
            Outcome {
                encoded,
                change,
                current: store.current(class).map(Base::id),
            }
        });
        outcome.unwrap_or_else(|| Outcome {
            encoded: Encoded::Full {
                reason: Fallback::OtherClass,
                digest: ReprDigest::of(page),
            },
            change: None,
            current: None,
        })
    }

    /// A base at its well-known path: immutable, with `Use-As-Dictionary`; as a `dcz` delta against the
    /// older base of its class the request names, when that is smaller (a new base pushed to an edge).
    async fn serve_base(self: &Arc<Self>, id: BaseId, request: &Request<Body>) -> Response<Body> {
        let now = Instant::now();
        let (base, older) = {
            let mut store = self.lock_store();
            let Some(base) = store.name(&id, now).cloned() else {
                self.counters.count(&self.counters.bases_missing);
                return error_response(
                    StatusCode::NOT_FOUND,
                    "this base is not held (never derived, or dropped since no edge named it); name the class's \
                     current base, announced in Link on its pages",
                );
            };
            let named = from_edge(request.headers())
                .then(|| fields::available_dictionary(request.headers()).ok().flatten())
                .flatten();
            let older = named
                .filter(|named| *named != id)
                .and_then(|named| store.get(&named).cloned())
                .filter(|older| older.class() == base.class());
            (base, older)
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{id}\"")) {
            headers.insert(header::ETAG, etag);
        }
        if let Some(class) = self.classes.get(base.class())
            && let Ok(text) = UseAsDictionary::for_class(class).format()
            && let Ok(value) = HeaderValue::from_str(&text)
        {
            headers.insert(USE_AS_DICTIONARY, value);
        }
        let delta = match older {
            Some(older) => {
                let role = self.clone();
                let new = base.clone();
                tokio::task::spawn_blocking(move || {
                    let delta = role.base_encoder.encode(&older, new.bytes()).ok()?;
                    (delta.len() < new.len()).then(|| (delta, ReprDigest::of(new.bytes())))
                })
                .await
                .ok()
                .flatten()
            }
            None => None,
        };
        let body = match delta {
            Some((delta, digest)) => {
                self.counters.count(&self.counters.bases_as_delta);
                self.counters.add(&self.counters.base_bytes_sent, delta.len());
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(DCZ));
                headers.insert(header::VARY, HeaderValue::from_static(VARY_DCZ));
                insert_digest(&mut headers, UNENCODED_DIGEST, &digest);
                Bytes::from(delta)
            }
            None => {
                self.counters.count(&self.counters.bases_whole);
                self.counters.add(&self.counters.base_bytes_sent, base.len());
                base.bytes().clone()
            }
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let body = if request.method() == Method::HEAD {
            tern_http::empty()
        } else {
            tern_http::full(body)
        };
        let mut response = Response::new(body);
        *response.headers_mut() = headers;
        response
    }

    /// Any other request: to the origin and back as it is.
    async fn pass(&self, request: Request<Body>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        hop::strip(&mut parts.headers);
        parts.headers.remove(TERN_DELTA_EDGE);
        hop::append_via(&mut parts.headers, parts.version, VIA_NAME);
        match self.origin.fetch(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut response_parts, body) = response.into_parts();
                hop::strip(&mut response_parts.headers);
                finish(response_parts, body)
            }
            Err(error) => self.origin_failed(&error),
        }
    }

    fn origin_failed(&self, error: &super::OriginError) -> Response<Body> {
        self.counters.count(&self.counters.origin_errors);
        warn!(%error, "origin failed");
        error_response(error.status(), &error.public_reason())
    }
}

/// Whether the request comes from an edge that decodes deltas: it says so ([`TERN_DELTA_EDGE`]) and
/// accepts `dcz`. Anyone else gets whole pages and whole bases.
fn from_edge(headers: &HeaderMap) -> bool {
    headers.contains_key(TERN_DELTA_EDGE) && accepts_dcz(headers)
}

/// A response from the origin's parts (hop-by-hop fields already stripped) and `body`.
fn finish(mut parts: http::response::Parts, body: Body) -> Response<Body> {
    hop::append_via(&mut parts.headers, parts.version, VIA_NAME);
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    *response.headers_mut() = parts.headers;
    response
}

fn insert_digest(headers: &mut HeaderMap, name: &'static str, digest: &ReprDigest) {
    if let Ok(value) = HeaderValue::from_str(&digest.format()) {
        headers.insert(name, value);
    }
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// A plain-text error that says what went wrong.
fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(tern_http::full(format!(
        "{} {}: {message}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
