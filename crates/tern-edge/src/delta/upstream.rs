//! The edge's side of the long link to `tern delta`, as an [`Upstream`] around the real one. For a page of
//! a class it holds a base for, it names that base and rebuilds the page from the `dcz` delta; a page comes
//! out only when it matches the digest `tern delta` sent, otherwise the whole page is fetched again. It
//! learns announced bases, fetching each (as a delta against the base it holds, when it holds one) before
//! it names it, and stores them in the edge's cache as immutable objects.
//!
//! When it waits for a base: when the page it is answering came whole (the class had no base here, or
//! `tern delta` no longer holds the one named), it fetches the announced base before answering, so the
//! next page is a delta; when the page came as a delta, the base it holds still works and the new one is
//! fetched in the background.
//!
//! Bases are kept in the cache under one authority of their own ([`BASE_AUTHORITY`]), whatever `Host` the
//! page's request named: a client that sends other `Host` values cannot make the edge drop its base or
//! store copies of it. A client's request for a base's path is keyed on that same object (the proxy keys
//! it so), and one the edge does not hold yet is fetched without a coding and checked against its name
//! ([`Inner::base_for_client`]). A base that could not be taken is not fetched again for a while
//! ([`RETRY_REFUSED_BASE`], [`RETRY_FAILED_BASE`]): a base over the edge's bounds would otherwise cross the
//! long link with every page. A class whose named base `tern delta` says it does not hold
//! ([`tern_delta::fields::BASE_UNKNOWN`]), announcing no base of that class, is withdrawn
//! ([`tern_delta::Holder::withdraw`]): its classes changed, or it lost the base.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use tern_delta::fields::{
    self, AVAILABLE_DICTIONARY, BASE_UNKNOWN, DCZ, DICTIONARY_ID, REPR_DIGEST, ReprDigest, UNENCODED_DIGEST,
    USE_AS_DICTIONARY, UseAsDictionary,
};
use tern_delta::{BaseId, DczDecoder, DecodeError, Limits};
use tern_http::Body;
use tern_http_cache::policy::{self, UpstreamExchange};
use tern_http_cache::{BodySource, Directives, KeyConfig, Meta, ObjectId, ResponseDecision, Store, vary_values};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::body::{Bounded, chain, read_bounded};
use super::{EDGE_FIELD, EdgeDelta};
use crate::upstream::{Upstream, UpstreamError, UpstreamFuture};

/// The authority under which the edge keeps the bases it names in its cache (`.invalid`, RFC 2606: no real
/// site has it). Bases are public and the same for every host the edge serves.
pub const BASE_AUTHORITY: &str = "bases.tern-delta.invalid";

/// How long a base refused for its size, or that the cache did not store, is not fetched again.
pub const RETRY_REFUSED_BASE: Duration = Duration::from_secs(600);

/// How long a base whose fetch failed otherwise (upstream unreachable, an error status, a bad body) is not
/// fetched again.
pub const RETRY_FAILED_BASE: Duration = Duration::from_secs(30);

/// The differential-caching client in front of the real upstream (`tern delta`).
pub struct DeltaUpstream {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Arc<dyn Upstream>,
    delta: Arc<EdgeDelta>,
    store: Arc<Store>,
    key_config: KeyConfig,
    /// Base fetches under way, each awaited by whoever needs its outcome.
    fetching: Mutex<HashMap<BaseId, watch::Receiver<bool>>>,
    /// Bases whose fetch failed, with when they may be tried again.
    failed: Mutex<HashMap<BaseId, Instant>>,
}

/// Why a base was not taken.
#[derive(Debug, thiserror::Error)]
enum BaseFetchError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream answered {0} for the base")]
    Status(StatusCode),
    #[error("the base's body failed on its way in")]
    Body,
    #[error(
        "the base is over this edge's limit of {limit} bytes: raise [edge.delta] max_base (and max_delta for a base sent as a delta) to at least tern delta's class max_base"
    )]
    TooLarge { limit: usize },
    #[error("the base came as a delta against a base this edge does not hold")]
    NoOlder,
    #[error("the base's delta does not decode: {0}")]
    Delta(tern_delta::DczError),
    #[error("the base has no usable use-as-dictionary field: {0}")]
    Field(tern_delta::FieldError),
    #[error(transparent)]
    Learn(#[from] tern_delta::LearnError),
    #[error(
        "the edge's cache did not store the base ({0} bytes): give the edge a --cache-size (and --memory-size without --cache-dir) well above its bases"
    )]
    NotStored(usize),
}

impl BaseFetchError {
    /// How long the base is not fetched again after this.
    fn retry_after(&self) -> Duration {
        match self {
            BaseFetchError::TooLarge { .. } | BaseFetchError::NotStored(_) => RETRY_REFUSED_BASE,
            BaseFetchError::Learn(tern_delta::LearnError::Base(tern_delta::BaseError::TooLarge { .. })) => {
                RETRY_REFUSED_BASE
            }
            _ => RETRY_FAILED_BASE,
        }
    }
}

impl DeltaUpstream {
    /// Differential caching in front of `upstream`, with the edge's `store` holding the bases.
    pub fn new(upstream: Arc<dyn Upstream>, delta: Arc<EdgeDelta>, store: Arc<Store>, key_config: KeyConfig) -> Self {
        DeltaUpstream {
            inner: Arc::new(Inner {
                upstream,
                delta,
                store,
                key_config,
                fetching: Mutex::new(HashMap::new()),
                failed: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Upstream for DeltaUpstream {
    fn fetch(&self, request: Request<Body>) -> UpstreamFuture<'_> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.fetch(request).await })
    }

    fn describe(&self) -> String {
        self.inner.upstream.describe()
    }
}

/// The request's host (the edge sets `Host` on every upstream request); a cheap copy, read as text only
/// when a base is fetched or looked up.
fn host_of(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(header::HOST)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""))
}

fn host_text(host: &HeaderValue) -> &str {
    host.to_str().unwrap_or_default()
}

/// Whether `headers` say the body is `dcz`-coded (and only that).
fn is_dcz(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case(DCZ))
}

/// Whether `headers` name a content coding other than `identity` (RFC 9110 section 8.4).
/// A value that is not text is taken as a coding.
fn is_coded(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_ENCODING).iter().any(|value| {
        value.to_str().map_or(true, |text| {
            text.split(',')
                .map(str::trim)
                .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
        })
    })
}

/// Removes what a client said about its own dictionaries: the edge names its own bases upstream.
fn strip_client_dictionaries(headers: &mut HeaderMap) {
    headers.remove(AVAILABLE_DICTIONARY);
    headers.remove(DICTIONARY_ID);
    let kept: Vec<String> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','))
        .map(str::trim)
        .filter(|member| {
            let coding = member.split(';').next().unwrap_or_default().trim();
            !coding.is_empty() && !coding.eq_ignore_ascii_case("dcz") && !coding.eq_ignore_ascii_case("dcb")
        })
        .map(str::to_string)
        .collect();
    headers.remove(header::ACCEPT_ENCODING);
    if !kept.is_empty()
        && let Ok(value) = HeaderValue::from_str(&kept.join(", "))
    {
        headers.insert(header::ACCEPT_ENCODING, value);
    }
}

impl Inner {
    async fn fetch(self: &Arc<Self>, mut request: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        let delta = &self.delta;
        let host = host_of(request.headers());
        if !delta.is_active() {
            let response = self.upstream.fetch(request).await?;
            return Ok(self.take_announcements(response, &host, None).await.0);
        }
        strip_client_dictionaries(request.headers_mut());
        request.headers_mut().insert(EDGE_FIELD, HeaderValue::from_static("?1"));
        let path = request.uri().path().to_string();
        let base = BaseId::from_well_known_path(&path);
        if let Some(id) = base
            && matches!(*request.method(), Method::GET | Method::HEAD)
        {
            // A HEAD is checked as a GET: its fields (length, `Use-As-Dictionary`) must not vouch for a base
            // whose bytes the edge would refuse.
            let head = request.method() == Method::HEAD;
            *request.method_mut() = Method::GET;
            let response = self.base_for_client(id, request, &host).await?;
            if head {
                let (parts, _) = response.into_parts();
                return Ok(Response::from_parts(parts, tern_http::empty()));
            }
            return Ok(response);
        }
        let is_page = request.method() == Method::GET && base.is_none();
        if !is_page {
            let response = self.upstream.fetch(request).await?;
            return Ok(self.take_announcements(response, &host, None).await.0);
        }
        let named = self.name_for(&path);
        let again = (request.uri().clone(), request.headers().clone());
        if let Some(id) = named {
            let headers = request.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&fields::format_available_dictionary(&id)) {
                headers.insert(AVAILABLE_DICTIONARY, value);
            }
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(DCZ));
        }
        let mut response = self.upstream.fetch(request).await?;
        // tern delta's word that the base named is none it holds for the page's class: never passed on.
        let base_unknown = response.headers_mut().remove(BASE_UNKNOWN).is_some();
        let (response, announced) = self.take_announcements(response, &host, named).await;
        if named.is_some() && !is_dcz(response.headers()) && is_coded(response.headers()) {
            // Asked for `dcz` alone, the upstream answered in another coding (gzip, br, a list): the client
            // may not decode it, and the edge does not. Asked again for the page itself.
            warn!(url = %path, coding = ?response.headers().get(header::CONTENT_ENCODING),
                  "the upstream answered a delta request in a coding not asked for; fetching the whole page");
            let response = self.fetch_identity(again, &host).await?;
            return self.whole_page(response, Some("upstream_whole")).await;
        }
        if !is_dcz(response.headers()) {
            let reason = match named {
                Some(id) => {
                    if base_unknown {
                        self.withdraw_if_stale(id, &announced);
                    }
                    Some("upstream_whole")
                }
                // A page of a class (tern delta announced its base) that came whole for want of a base
                // here; a page outside every class is no fallback and is not counted.
                None if !announced.is_empty() => Some("no_base"),
                None => None,
            };
            return self.whole_page(response, reason).await;
        }
        let failure = match self.rebuild(response).await {
            Ok(rebuilt) => return Ok(rebuilt),
            Err(failure) => failure,
        };
        warn!(url = %path, %failure, "delta unusable; fetching the whole page");
        let response = self.fetch_identity(again, &host).await?;
        self.whole_page(response, Some(failure.failure().label())).await
    }

    /// A base asked for at its well-known path (a browser following the edge's `Link`, or anyone): fetched
    /// without a coding and served only when its bytes hash to the name in the path, like every base the
    /// edge takes itself; a tampered one is never passed on under that name.
    async fn base_for_client(
        self: &Arc<Self>,
        id: BaseId,
        mut request: Request<Body>,
        host: &HeaderValue,
    ) -> Result<Response<Body>, UpstreamError> {
        // A base the edge took for itself (a browser follows the `Link` to the class's base) is served from
        // its cache, rather than fetched whole over the long link again (each base change cost a whole page
        // per edge that way). The proxy keys a base's path on that object, so this is reached when its
        // lookup did not take it (a variant the request did not match).
        if let Some(key) = super::base_key(&id.well_known_path(), &self.key_config)
            && let Ok(Some((bytes, mut headers))) = self.held_base(&key).await
        {
            let checked = bytes.clone();
            let matches = tokio::task::spawn_blocking(move || BaseId::of(&checked) == id)
                .await
                .unwrap_or(false);
            if matches {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                let mut response = Response::new(tern_http::full(bytes));
                *response.headers_mut() = headers;
                return Ok(response);
            }
            warn!(base = %id, "a base in the edge's cache does not hash to its name; fetched again");
        }
        request
            .headers_mut()
            .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let response = self.upstream.fetch(request).await?;
        let (response, _) = self.take_announcements(response, host, None).await;
        if response.status() != StatusCode::OK {
            return Ok(response);
        }
        let refuse = |reason: String| UpstreamError::Failed {
            upstream: self.upstream.describe(),
            reason,
        };
        if is_coded(response.headers()) {
            return Err(refuse(format!("base {id} came in a coding it was not asked for")));
        }
        let (parts, body) = response.into_parts();
        let bytes = match read_bounded(body, self.delta.settings.max_base).await {
            Bounded::Whole(bytes) => bytes,
            Bounded::Over { .. } => {
                return Err(refuse(format!(
                    "base {id} is over max_base ({} bytes)",
                    self.delta.settings.max_base
                )));
            }
            Bounded::Failed(error) => return Err(refuse(format!("base {id} body failed: {error}"))),
        };
        let checked = bytes.clone();
        let matches = tokio::task::spawn_blocking(move || BaseId::of(&checked) == id)
            .await
            .unwrap_or(false);
        if !matches {
            let counters = &self.delta.counters;
            counters.count(&counters.pages_refused);
            warn!(base = %id, "the upstream's base does not hash to its name: not served");
            return Err(refuse(format!(
                "the base served as {id} does not hash to that name; not served"
            )));
        }
        Ok(Response::from_parts(parts, tern_http::full(bytes)))
    }

    /// The whole page, asked for with `Accept-Encoding: identity`: an answer in any coding (a delta, gzip)
    /// is refused, since the edge would pass bytes the client may not decode.
    async fn fetch_identity(
        self: &Arc<Self>,
        (uri, mut headers): (http::Uri, HeaderMap),
        host: &HeaderValue,
    ) -> Result<Response<Body>, UpstreamError> {
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let mut retry = Request::new(tern_http::empty());
        *retry.uri_mut() = uri;
        *retry.headers_mut() = headers;
        let response = self.upstream.fetch(retry).await?;
        let (response, _) = self.take_announcements(response, host, None).await;
        if is_coded(response.headers()) {
            return Err(UpstreamError::Failed {
                upstream: self.upstream.describe(),
                reason: format!(
                    "the upstream answered {:?} when asked for the whole page without a coding",
                    response.headers().get(header::CONTENT_ENCODING)
                ),
            });
        }
        Ok(response)
    }

    /// Withdraws the class of `named` when `tern delta` answered its page whole saying it holds no such
    /// base for the page's class ([`BASE_UNKNOWN`]) and `announced` no base of that class (every announced
    /// base is held by now, or was refused): the edge's idea of the class is stale, and naming its base
    /// again would only cost whole pages. A page that came whole for another reason (a 404, a page a delta
    /// would not shrink) leaves the class as it is.
    fn withdraw_if_stale(&self, named: BaseId, announced: &[BaseId]) {
        let withdrawn = self.delta.with_holder(|holder| {
            let class_of = |id: &BaseId| holder.base(id).map(tern_delta::Base::class);
            let class = class_of(&named)?.to_string();
            let still_announced = announced
                .iter()
                .any(|id| *id == named || class_of(id).is_none_or(|other| other == class));
            (!still_announced && holder.withdraw(&class)).then_some(class)
        });
        if let Some(class) = withdrawn {
            info!(%class, base = %named, "tern delta answered the class's page whole and announces no base of it: the class is withdrawn here until tern delta announces one");
        }
    }

    /// The base to name for a page at `path`: its class's current base, if the edge's cache still holds
    /// it (an evicted or purged base is forgotten, and the page comes whole).
    fn name_for(&self, path: &str) -> Option<BaseId> {
        let now = self.delta.now();
        let (_, id) = self.delta.with_holder(|holder| holder.name_for(path, now))?;
        let key = super::base_key(&id.well_known_path(), &self.key_config)?;
        if self.store.find(&key, &HeaderMap::new()).is_some() {
            return Some(id);
        }
        self.delta.with_holder(|holder| holder.forget(&id));
        self.delta.counters.count(&self.delta.counters.bases_evicted);
        info!(base = %id, "base no longer in the cache; its class gets whole pages until the base is back");
        None
    }

    /// Takes the base announcements off `response` (they are re-added for browsers with the base the edge
    /// holds), makes a held one current, and fetches one not held: before answering when this page came
    /// whole, in the background when it came as a delta against `named`. Returns the response and the
    /// bases it announced.
    async fn take_announcements(
        self: &Arc<Self>,
        mut response: Response<Body>,
        host: &HeaderValue,
        named: Option<BaseId>,
    ) -> (Response<Body>, Vec<BaseId>) {
        let announced = fields::announced_bases(response.headers());
        if announced.is_empty() || self.delta.settings.mode == super::DeltaMode::Off {
            return (response, announced);
        }
        fields::remove_announcements(response.headers_mut());
        self.delta.activate();
        let came_whole = !is_dcz(response.headers());
        for &id in &announced {
            let now = self.delta.now();
            if self.delta.with_holder(|holder| holder.announce(&id, now)) {
                continue;
            }
            if self.failed_recently(&id) {
                continue;
            }
            let waiter = self.fetch_base(id, host_text(host).to_string(), named);
            if came_whole {
                let timeout = Duration::from_millis(self.delta.settings.base_fetch_timeout_ms);
                let mut waiter = waiter;
                if tokio::time::timeout(timeout, waiter.wait_for(|done| *done))
                    .await
                    .is_err()
                {
                    warn!(base = %id, ?timeout, "base not fetched in time; its class gets whole pages meanwhile");
                }
            }
        }
        (response, announced)
    }

    /// Whether base `id` failed to be taken lately (then it is not fetched again until its time is up).
    fn failed_recently(&self, id: &BaseId) -> bool {
        let mut failed = self.failed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        failed.retain(|_, until| *until > now);
        failed.contains_key(id)
    }

    /// Starts fetching base `id` unless that is under way; the receiver turns true when it is over.
    fn fetch_base(self: &Arc<Self>, id: BaseId, host: String, older: Option<BaseId>) -> watch::Receiver<bool> {
        let mut fetching = self.fetching.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(waiter) = fetching.get(&id) {
            return waiter.clone();
        }
        let (done, waiter) = watch::channel(false);
        fetching.insert(id, waiter.clone());
        drop(fetching);
        let inner = self.clone();
        tokio::spawn(async move {
            let counters = &inner.delta.counters;
            match inner.take_base(id, &host, older).await {
                Ok(source) => {
                    counters.base_fetched(source);
                    info!(base = %id, source, "base held; named for its class from now on");
                }
                Err(error) => {
                    counters.count(&counters.base_fetch_failures);
                    let retry = error.retry_after();
                    inner
                        .failed
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .insert(id, Instant::now() + retry);
                    warn!(base = %id, %error, retry_in_s = retry.as_secs(), "base not taken; its class keeps the base it has or gets whole pages, and this base is not fetched again before then");
                }
            }
            inner
                .fetching
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&id);
            let _ = done.send(true);
        });
        waiter
    }

    /// Gets base `id` into the holder: from the edge's cache when it is there (after a restart with a disk
    /// cache), else from upstream (as a delta against `older` when given), then stored in the cache.
    /// Returns where it came from.
    async fn take_base(&self, id: BaseId, host: &str, older: Option<BaseId>) -> Result<&'static str, BaseFetchError> {
        let path = id.well_known_path();
        let key = super::base_key(&path, &self.key_config).ok_or(BaseFetchError::Body)?;
        if let Some((bytes, headers)) = self.held_base(&key).await? {
            let field = use_as_dictionary(&headers)?;
            let base = self.verify(id, &field, bytes).await?;
            let now = self.delta.now();
            self.delta.with_holder(|holder| holder.learn_base(base, &field, now))?;
            return Ok("cache");
        }
        let mut request = Request::new(tern_http::empty());
        *request.uri_mut() = path.parse::<Uri>().map_err(|_| BaseFetchError::Body)?;
        let headers = request.headers_mut();
        if let Ok(value) = HeaderValue::from_str(host) {
            headers.insert(header::HOST, value);
        }
        headers.insert(EDGE_FIELD, HeaderValue::from_static("?1"));
        let older = older.and_then(|older| {
            self.delta
                .with_holder(|holder| holder.base(&older).cloned())
                .filter(|_| older != id)
        });
        if let Some(older) = &older
            && let Ok(value) = HeaderValue::from_str(&fields::format_available_dictionary(&older.id()))
        {
            headers.insert(AVAILABLE_DICTIONARY, value);
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(DCZ));
        }
        let request_time = self.delta.clock.now();
        let response = self.upstream.fetch(request).await?;
        let response_time = self.delta.clock.now();
        let (parts, body) = response.into_parts();
        if parts.status != StatusCode::OK {
            return Err(BaseFetchError::Status(parts.status));
        }
        let settings = &self.delta.settings;
        let coded = is_dcz(&parts.headers);
        let bound = if coded { settings.max_delta } else { settings.max_base };
        let received = match read_bounded(body, bound).await {
            Bounded::Whole(received) => received,
            Bounded::Over { .. } => return Err(BaseFetchError::TooLarge { limit: bound }),
            Bounded::Failed(_) => return Err(BaseFetchError::Body),
        };
        self.delta.counters.add(&self.delta.counters.base_bytes, received.len());
        let bytes = if coded {
            let older = older.ok_or(BaseFetchError::NoOlder)?;
            let limits = Limits {
                max_frame: settings.max_delta,
                max_decoded: settings.max_base,
                max_window_log: settings.max_window_log,
            };
            let decoded = tokio::task::spawn_blocking(move || DczDecoder::new(limits).decode(&received, &older))
                .await
                .map_err(|_| BaseFetchError::Body)?;
            Bytes::from(decoded.map_err(BaseFetchError::Delta)?)
        } else {
            received
        };
        let field = use_as_dictionary(&parts.headers)?;
        // Checked before it is stored: the bytes must hash to the id they came under.
        let base = self.verify(id, &field, bytes.clone()).await?;
        let mut headers = parts.headers;
        headers.remove(header::CONTENT_ENCODING);
        headers.remove(UNENCODED_DIGEST);
        headers.remove(header::VARY);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        self.store_base(&key, &path, headers, bytes, request_time, response_time)
            .await?;
        let now = self.delta.now();
        self.delta.with_holder(|holder| holder.learn_base(base, &field, now))?;
        Ok(if coded { "upstream_delta" } else { "upstream_whole" })
    }

    /// The base stored under `key` in the edge's cache (where [`Inner::take_base`] keeps every base it
    /// takes), with its stored fields; `None` when the cache does not hold it.
    async fn held_base(&self, key: &str) -> Result<Option<(Bytes, HeaderMap)>, BaseFetchError> {
        let Some(hit) = self.store.find(key, &HeaderMap::new()) else {
            return Ok(None);
        };
        let bytes = match self.store.body(&hit).await {
            Ok(BodySource::Memory(bytes)) => bytes,
            Ok(BodySource::File { file, offset, len }) => {
                tern_http::file_range(tokio::fs::File::from_std(file), offset, len)
                    .collect()
                    .await
                    .map_err(|_| BaseFetchError::Body)?
                    .to_bytes()
            }
            Err(_) => return Err(BaseFetchError::Body),
        };
        Ok(Some((bytes, hit.object.meta.headers.clone())))
    }

    /// The base `bytes` make for the class `field` names, if they hash to `id` (hashed off the event loop).
    async fn verify(
        &self,
        id: BaseId,
        field: &UseAsDictionary,
        bytes: Bytes,
    ) -> Result<tern_delta::Base, BaseFetchError> {
        let (class, max_base) = (field.id.clone(), self.delta.settings.max_base);
        let verified = tokio::task::spawn_blocking(move || tern_delta::Base::verified(class, bytes, id, max_base))
            .await
            .map_err(|_| BaseFetchError::Body)?;
        Ok(verified.map_err(tern_delta::LearnError::from)?)
    }

    /// Stores a base in the edge's cache under `key`, as the fill path would store it.
    async fn store_base(
        &self,
        key: &str,
        path: &str,
        headers: HeaderMap,
        bytes: Bytes,
        request_time: std::time::SystemTime,
        response_time: std::time::SystemTime,
    ) -> Result<(), BaseFetchError> {
        let request = HeaderMap::new();
        let directives = Directives::default();
        let exchange = UpstreamExchange {
            path,
            request: &request,
            request_directives: &directives,
            status: StatusCode::OK,
            response: &headers,
            stored: None,
            request_time,
            now: response_time,
        };
        let ResponseDecision::Store(storing) = policy::decide_storing(&exchange, self.store.policy()) else {
            return Err(BaseFetchError::NotStored(bytes.len()));
        };
        let vary = vary_values(&headers, &request);
        let meta = Meta {
            url: key.to_string(),
            status: StatusCode::OK,
            headers: storing.stored_fields(&headers),
            vary: vary.clone(),
            request_time,
            response_time,
            body_len: 0,
            body_hash: [0; 32],
            surrogate_keys: Vec::new(),
            invalidated: false,
        };
        let ticket = self.store.fetch_ticket();
        let mut fill = self
            .store
            .begin_fill(
                ObjectId::new(key, &vary),
                meta,
                storing.freshness,
                Some(bytes.len() as u64),
                ticket,
            )
            .await;
        fill.write(&bytes).await;
        let len = bytes.len();
        fill.finish(true).await.map_err(|error| {
            debug!(%error, "base not stored");
            BaseFetchError::NotStored(len)
        })?;
        Ok(())
    }

    /// A page rebuilt from a `dcz` response: identity coded, with `Repr-Digest`, or why not.
    async fn rebuild(&self, response: Response<Body>) -> Result<Response<Body>, DecodeError> {
        let (mut parts, body) = response.into_parts();
        let settings = &self.delta.settings;
        let delta_bytes = match read_bounded(body, settings.max_delta).await {
            Bounded::Whole(bytes) => bytes,
            Bounded::Over { .. } => {
                let error = DecodeError::Dcz(tern_delta::DczError::FrameTooLarge {
                    len: settings.max_delta.saturating_add(1),
                    max: settings.max_delta,
                });
                self.delta.with_holder(|holder| holder.count_failure(&error));
                return Err(error);
            }
            Bounded::Failed(_) => {
                let error = DecodeError::Dcz(tern_delta::DczError::Truncated);
                self.delta.with_holder(|holder| holder.count_failure(&error));
                return Err(error);
            }
        };
        let digest = ReprDigest::from_headers(&parts.headers, UNENCODED_DIGEST)
            .ok()
            .flatten();
        let delta = self.delta.clone();
        let received = delta_bytes.len();
        let now = self.delta.now();
        let page = tokio::task::spawn_blocking(move || {
            delta.with_holder(|holder| holder.decode(&delta_bytes, digest.as_ref(), now))
        })
        .await
        .map_err(|_| DecodeError::NoDigest)??;
        let counters = &self.delta.counters;
        counters.page(true, received, page.len());
        let headers = &mut parts.headers;
        headers.remove(header::CONTENT_ENCODING);
        headers.remove(UNENCODED_DIGEST);
        if let Some(digest) = digest
            && let Ok(value) = HeaderValue::from_str(&digest.format())
        {
            headers.insert(REPR_DIGEST, value);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(page.len()));
        Ok(Response::from_parts(parts, tern_http::full(page)))
    }

    /// A page that came whole: checked against its `Repr-Digest` when it has one and fits the page bound
    /// (a mismatch is a 502, never the page), counted as a full-page fallback with `reason` (a page outside
    /// every class has none).
    async fn whole_page(
        &self,
        response: Response<Body>,
        reason: Option<&'static str>,
    ) -> Result<Response<Body>, UpstreamError> {
        let counters = &self.delta.counters;
        if let Some(reason) = reason
            && response.status() == StatusCode::OK
        {
            counters.full_page(reason);
        }
        let (parts, body) = response.into_parts();
        let digest = ReprDigest::from_headers(&parts.headers, REPR_DIGEST).ok().flatten();
        let checkable = parts.status == StatusCode::OK && digest.is_some();
        if !checkable {
            return Ok(Response::from_parts(parts, body));
        }
        let page = match read_bounded(body, self.delta.settings.max_page).await {
            Bounded::Whole(page) => page,
            Bounded::Over { head, rest } => return Ok(Response::from_parts(parts, chain(head, rest))),
            Bounded::Failed(error) => {
                return Err(UpstreamError::Failed {
                    upstream: self.upstream.describe(),
                    reason: format!("page body failed: {error}"),
                });
            }
        };
        let (checked, delta) = (page.clone(), self.delta.clone());
        let verified = tokio::task::spawn_blocking(move || {
            delta.with_holder(|holder| holder.verify_full(&checked, digest.as_ref()))
        })
        .await;
        if !matches!(verified, Ok(Ok(()))) {
            counters.count(&counters.pages_refused);
            return Err(UpstreamError::Failed {
                upstream: self.upstream.describe(),
                reason: "the page does not match its Repr-Digest; not served".into(),
            });
        }
        counters.page(false, page.len(), page.len());
        Ok(Response::from_parts(parts, tern_http::full(page)))
    }
}

/// The `Use-As-Dictionary` field of a base's response.
fn use_as_dictionary(headers: &HeaderMap) -> Result<UseAsDictionary, BaseFetchError> {
    let text = headers
        .get(USE_AS_DICTIONARY)
        .and_then(|value| value.to_str().ok())
        .ok_or(BaseFetchError::Field(tern_delta::FieldError::NoMatch))?;
    UseAsDictionary::parse(text).map_err(BaseFetchError::Field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_dictionaries_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert(AVAILABLE_DICTIONARY, HeaderValue::from_static(":AAAA:"));
        headers.insert(DICTIONARY_ID, HeaderValue::from_static("\"news\""));
        headers.append(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, dcz;q=1, br"));
        headers.append(header::ACCEPT_ENCODING, HeaderValue::from_static("DCB"));
        strip_client_dictionaries(&mut headers);
        assert!(!headers.contains_key(AVAILABLE_DICTIONARY));
        assert!(!headers.contains_key(DICTIONARY_ID));
        assert_eq!(
            headers.get(header::ACCEPT_ENCODING).map(|v| v.as_bytes()),
            Some(&b"gzip, br"[..])
        );
        let mut only = HeaderMap::new();
        only.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("dcz"));
        strip_client_dictionaries(&mut only);
        assert!(!only.contains_key(header::ACCEPT_ENCODING));
    }

    #[test]
    fn dcz_is_recognised_alone() {
        let mut headers = HeaderMap::new();
        assert!(!is_dcz(&headers));
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(" DCZ "));
        assert!(is_dcz(&headers));
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip, dcz"));
        assert!(!is_dcz(&headers));
    }
}
