//! RFC 9111 caching policy for a shared cache: whether a response may be stored (section 3), how long it
//! is fresh (section 4.2), its age (section 4.2.3), and whether a stored response may be used for a request
//! as it is, must be validated first, or may be served stale (RFC 5861).
//!
//! Targeted cache-control fields (RFC 9213, `CDN-Cache-Control` by default) replace `Cache-Control` and
//! `Expires` for this cache when present and non-empty.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, Method, StatusCode, header};

use crate::directives::{self, DELTA_SECONDS_CAP, Directives};
use tern_http::date;

/// Settings of the caching policy.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Targeted cache-control fields, most specific first (RFC 9213 section 2.2).
    pub targeted_fields: Vec<HeaderName>,
    /// Fraction of the time since `Last-Modified` used as heuristic freshness (RFC 9111 section 4.2.2).
    pub heuristic_fraction: f64,
    /// Upper bound of heuristic freshness.
    pub heuristic_max: Duration,
    /// Whether a request's `no-cache` / `max-age` make the cache validate (true per RFC 9111). Operators
    /// shielding a fragile origin from browsers' reload button turn it off.
    pub honor_request_directives: bool,
    /// Path prefixes under which responses that set cookies are stored when their directives allow it (as
    /// RFC 9111 permits). Elsewhere they are not stored: one user's session cookie would go to everyone,
    /// which is why nginx, Varnish and the large CDNs refuse them by default. Empty by default.
    pub store_set_cookie_paths: Vec<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            targeted_fields: vec![HeaderName::from_static("cdn-cache-control")],
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(24 * 3600),
            honor_request_directives: true,
            store_set_cookie_paths: Vec::new(),
        }
    }
}

/// Status codes that are heuristically cacheable (RFC 9110 section 15.1).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Status codes whose caching semantics this cache understands (for `must-understand`).
fn understood(status: StatusCode) -> bool {
    heuristically_cacheable(status) || matches!(status.as_u16(), 302 | 303 | 307)
}

/// The directives that govern a response for this cache, and whether they came from a targeted field.
/// The first targeted field (RFC 9213 section 2.2) that is a valid, non-empty structured Dictionary wins;
/// an invalid one is ignored as if absent.
pub fn response_directives(headers: &HeaderMap, config: &PolicyConfig) -> (Directives, bool) {
    for field in &config.targeted_fields {
        if headers.contains_key(field)
            && let Some(targeted) = Directives::parse_targeted(headers.get_all(field))
            && targeted
                != (Directives {
                    present: true,
                    ..Directives::default()
                })
        {
            return (targeted, true);
        }
    }
    (Directives::parse(headers.get_all(header::CACHE_CONTROL)), false)
}

/// The directives of a request (`Pragma: no-cache` counts only without `Cache-Control`, RFC 9111 section 5.4).
pub fn request_directives(headers: &HeaderMap) -> Directives {
    let mut directives = Directives::parse(headers.get_all(header::CACHE_CONTROL));
    if !headers.contains_key(header::CACHE_CONTROL)
        && headers
            .get_all(header::PRAGMA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("no-cache"))
    {
        directives.no_cache = true;
        directives.present = true;
    }
    directives
}

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    /// Only GET responses are stored.
    Method,
    /// Partial, interim or unknown status.
    Status,
    /// `no-store` in the request or the response.
    NoStore,
    /// `private` in the response.
    Private,
    /// The request carried `Authorization` and the response did not allow sharing it.
    Authorization,
    /// Nothing says how long it is fresh and nothing can validate it.
    NoFreshnessNorValidator,
    /// `Vary: *` never matches a later request.
    VaryStar,
    /// The response sets a cookie, outside the paths the operator allowed ([`PolicyConfig`]).
    SetCookie,
}

impl NotStorable {
    /// A short token for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::NoFreshnessNorValidator => "no-freshness",
            NotStorable::VaryStar => "vary-star",
            NotStorable::SetCookie => "set-cookie",
        }
    }
}

/// Decides whether a shared cache may store a response to a request for `path` (RFC 9111 section 3, and
/// the `Set-Cookie` rule of [`PolicyConfig::store_set_cookie_paths`]).
pub fn storable(
    method: &Method,
    path: &str,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    config: &PolicyConfig,
) -> Result<(), NotStorable> {
    let facts = ResponseFacts::of(response, config);
    let request_cc = request_directives(request);
    storable_with(method, path, request, &request_cc, status, response, &facts, config)
}

/// [`storable`] with the request's directives and the response's facts already parsed.
#[allow(clippy::too_many_arguments)]
fn storable_with(
    method: &Method,
    path: &str,
    request: &HeaderMap,
    request_cc: &Directives,
    status: StatusCode,
    response: &HeaderMap,
    facts: &ResponseFacts,
    config: &PolicyConfig,
) -> Result<(), NotStorable> {
    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    // Partial content is not combined here; the cache fetches and stores complete objects.
    if status.is_informational() || status == StatusCode::PARTIAL_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Err(NotStorable::Status);
    }
    let directives = &facts.directives;
    if request_cc.no_store {
        return Err(NotStorable::NoStore);
    }
    if directives.must_understand {
        if !understood(status) {
            return Err(NotStorable::Status);
        }
    } else if directives.no_store {
        return Err(NotStorable::NoStore);
    }
    if directives.private {
        return Err(NotStorable::Private);
    }
    if request.contains_key(header::AUTHORIZATION)
        && !(directives.public || directives.must_revalidate || directives.s_maxage.is_some())
    {
        return Err(NotStorable::Authorization);
    }
    if COOKIE_FIELDS
        .iter()
        .any(|name| response.contains_key(*name) && !directives.withholds(name))
        && !config
            .store_set_cookie_paths
            .iter()
            .any(|prefix| path.starts_with(prefix.as_str()))
    {
        return Err(NotStorable::SetCookie);
    }
    if response
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim() == "*")
    {
        return Err(NotStorable::VaryStar);
    }
    let explicit = directives.max_age.is_some()
        || directives.s_maxage.is_some()
        || (!facts.targeted && response.contains_key(header::EXPIRES));
    let allowed = explicit || directives.public || heuristically_cacheable(status);
    if !allowed {
        return Err(NotStorable::Status);
    }
    let has_validator = response.contains_key(header::ETAG) || response.contains_key(header::LAST_MODIFIED);
    let response_time = facts.date.unwrap_or_else(SystemTime::now);
    let lifetime = freshness_lifetime(status, response, facts, response_time, config);
    if lifetime.is_zero() && !has_validator && !has_stale_window(directives) {
        return Err(NotStorable::NoFreshnessNorValidator);
    }
    Ok(())
}

/// Whether the response's own directives let it be served once stale: a non-zero `stale-while-revalidate`
/// or `stale-if-error` (RFC 5861). A response with no freshness and no validator is still worth storing
/// then, whether its lifetime is zero ([`storable`]) or used up on arrival ([`decide_storing`]).
fn has_stale_window(directives: &Directives) -> bool {
    [directives.stale_while_revalidate, directives.stale_if_error]
        .iter()
        .any(|window| window.is_some_and(|seconds| seconds > 0))
}

/// What the policy reads from a response's fields, parsed once.
#[derive(Debug, Clone)]
struct ResponseFacts {
    /// The directives that govern it for this cache.
    directives: Directives,
    /// Whether they came from a targeted field (RFC 9213), which also overrides `Expires`.
    targeted: bool,
    /// Its `Date`, if valid.
    date: Option<SystemTime>,
}

impl ResponseFacts {
    fn of(response: &HeaderMap, config: &PolicyConfig) -> Self {
        let (directives, targeted) = response_directives(response, config);
        ResponseFacts {
            directives,
            targeted,
            date: response.get(header::DATE).and_then(date::parse),
        }
    }
}

/// The fields that set cookies: `Set-Cookie` (RFC 6265) and the obsolete `Set-Cookie2` (RFC 2965), which
/// some servers still send. A response carrying either is this client's, not everyone's.
const COOKIE_FIELDS: [&str; 2] = ["set-cookie", "set-cookie2"];

/// The fields of a `304` that may update a stored response (RFC 9111 section 4.3.4), and the ones that go to
/// this response's client only: `Set-Cookie` (unless [`PolicyConfig::store_set_cookie_paths`] names the
/// path) and whatever a qualified `no-cache` or `private` in the 304 withholds. Without this, a cookie set
/// on a revalidation was stored and replayed to every later client.
pub fn refresh_fields(not_modified: &HeaderMap, path: &str, config: &PolicyConfig) -> (HeaderMap, HeaderMap) {
    let (directives, _) = response_directives(not_modified, config);
    let cookies_allowed = config
        .store_set_cookie_paths
        .iter()
        .any(|prefix| path.starts_with(prefix.as_str()));
    // `Store::refresh` copies what it keeps out of the connection's buffer.
    let mut stored = not_modified.clone();
    let mut client_only = HeaderMap::new();
    let withheld = directives.no_cache_fields.iter().chain(&directives.private_fields);
    let mut names: Vec<HeaderName> = withheld
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in COOKIE_FIELDS {
        if !cookies_allowed || directives.withholds(name) {
            names.push(HeaderName::from_static(name));
        }
    }
    for name in names {
        for value in not_modified.get_all(&name) {
            client_only.append(name.clone(), value.clone());
        }
        stored.remove(&name);
    }
    (stored, client_only)
}

/// Freshness lifetime of a response (RFC 9111 section 4.2.1), for a shared cache; never more than
/// [`DELTA_SECONDS_CAP`] seconds, whatever the headers say.
fn freshness_lifetime(
    status: StatusCode,
    response: &HeaderMap,
    facts: &ResponseFacts,
    response_time: SystemTime,
    config: &PolicyConfig,
) -> Duration {
    let directives = &facts.directives;
    if let Some(seconds) = directives.s_maxage.or(directives.max_age) {
        return capped_seconds(seconds);
    }
    let date_value = facts.date.unwrap_or(response_time);
    if !facts.targeted
        && let Some(expires) = response.get(header::EXPIRES)
    {
        // An invalid Expires means "already expired" (RFC 9111 section 5.3).
        return match date::parse(expires) {
            Some(expires) => cap(expires.duration_since(date_value).unwrap_or_default()),
            None => Duration::ZERO,
        };
    }
    if (directives.public || heuristically_cacheable(status))
        && let Some(modified) = response.get(header::LAST_MODIFIED).and_then(date::parse)
        && let Ok(since) = date_value.duration_since(modified)
    {
        // `mul_f64` panics on a negative, infinite or overflowing product; the fraction is configuration.
        let heuristic =
            Duration::try_from_secs_f64(since.as_secs_f64() * config.heuristic_fraction).unwrap_or_default();
        return cap(heuristic.min(config.heuristic_max));
    }
    Duration::ZERO
}

/// A duration from delta-seconds, capped (RFC 9111 section 1.2.2).
fn capped_seconds(seconds: u64) -> Duration {
    Duration::from_secs(seconds.min(DELTA_SECONDS_CAP))
}

/// Caps a duration derived from header values at [`DELTA_SECONDS_CAP`] seconds.
fn cap(duration: Duration) -> Duration {
    duration.min(Duration::from_secs(DELTA_SECONDS_CAP))
}

/// The `Age` field's value (RFC 9111 section 5.1): delta-seconds, capped. When it arrives as a list (several
/// lines, or `Age: 700, 1`), the first member is used, as the section says a cache should. A first member
/// that is not plain digits makes the field invalid, and an invalid `Age` is ignored (zero).
fn age_value(response: &HeaderMap) -> Duration {
    let Some(first_line) = response.get(header::AGE) else {
        return Duration::ZERO;
    };
    first_line
        .to_str()
        .ok()
        .and_then(|text| text.split(',').next())
        .and_then(|member| directives::delta_seconds(member.trim()))
        .map(capped_seconds)
        .unwrap_or_default()
}

/// What a cache needs to know about a stored response to judge its freshness, computed once when it is
/// stored (or loaded) rather than by parsing headers on every hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Freshness lifetime.
    pub lifetime: Duration,
    /// Age the response already had when it was received (RFC 9111 section 4.2.3).
    pub corrected_initial_age: Duration,
    /// When the response was received.
    pub response_time: SystemTime,
    /// Every use needs validation (`no-cache`).
    pub no_cache: bool,
    /// Never served stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`).
    pub must_revalidate: bool,
    /// RFC 5861 `stale-while-revalidate` window.
    pub stale_while_revalidate: Duration,
    /// RFC 5861 `stale-if-error` window from the response.
    pub stale_if_error: Duration,
}

impl Freshness {
    /// Computes the freshness facts of a response received at `response_time` for a request sent at
    /// `request_time`.
    pub fn of(
        status: StatusCode,
        response: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
        config: &PolicyConfig,
    ) -> Self {
        let facts = ResponseFacts::of(response, config);
        Self::from_facts(status, response, &facts, request_time, response_time, config)
    }

    fn from_facts(
        status: StatusCode,
        response: &HeaderMap,
        facts: &ResponseFacts,
        request_time: SystemTime,
        response_time: SystemTime,
        config: &PolicyConfig,
    ) -> Self {
        let directives = &facts.directives;
        let date_value = facts.date.unwrap_or(response_time);
        let age_value = age_value(response);
        let apparent_age = cap(response_time.duration_since(date_value).unwrap_or_default());
        let response_delay = cap(response_time.duration_since(request_time).unwrap_or_default());
        let corrected_age_value = age_value.saturating_add(response_delay);
        Freshness {
            lifetime: freshness_lifetime(status, response, facts, response_time, config),
            corrected_initial_age: apparent_age.max(corrected_age_value),
            response_time,
            no_cache: directives.no_cache,
            must_revalidate: directives.must_revalidate || directives.proxy_revalidate || directives.s_maxage.is_some(),
            stale_while_revalidate: capped_seconds(directives.stale_while_revalidate.unwrap_or(0)),
            stale_if_error: capped_seconds(directives.stale_if_error.unwrap_or(0)),
        }
    }

    /// Current age (RFC 9111 section 4.2.3). Saturates rather than overflows, whatever the stored times.
    pub fn current_age(&self, now: SystemTime) -> Duration {
        let resident = now.duration_since(self.response_time).unwrap_or_default();
        self.corrected_initial_age.saturating_add(resident)
    }

    /// Current age in whole seconds for the `Age` field, capped at [`DELTA_SECONDS_CAP`] (RFC 9111 section
    /// 5.1: a cache sends the cap when the age is larger).
    pub fn age_seconds(&self, now: SystemTime) -> u64 {
        self.current_age(now).as_secs().min(DELTA_SECONDS_CAP)
    }

    /// Whether the response is fresh at `now`.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.lifetime > self.current_age(now)
    }

    /// How long past its freshness the response is (zero while fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        self.current_age(now).saturating_sub(self.lifetime)
    }

    /// Remaining freshness in whole seconds, negative once stale (the `ttl` of `Cache-Status`).
    pub fn ttl_seconds(&self, now: SystemTime) -> i64 {
        let age = i64::try_from(self.current_age(now).as_secs()).unwrap_or(i64::MAX);
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        lifetime.saturating_sub(age)
    }

    /// Whether the response may be served stale because the origin failed, given the request's own
    /// `stale-if-error`.
    pub fn may_serve_on_error(&self, now: SystemTime, request: &Directives) -> bool {
        if self.must_revalidate || self.no_cache {
            return false;
        }
        let window = request
            .stale_if_error
            .map(capped_seconds)
            .unwrap_or_default()
            .max(self.stale_if_error);
        self.staleness(now) <= window && !window.is_zero()
    }
}

/// How a stored response may be used for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usability {
    /// Serve it as it is.
    Fresh,
    /// Serve it as it is although stale, because the client's `max-stale` allows it.
    StaleAllowedByClient,
    /// Serve it now and revalidate in the background (RFC 5861, or a soft purge).
    StaleWhileRevalidate,
    /// Validate with the origin before use.
    MustValidate,
}

/// Decides how a stored response may be used for a request (RFC 9111 section 4, RFC 5861).
/// `invalidated` is set by a soft purge: the object is treated as stale from then on, but may still be
/// served while it is revalidated, within what the origin's own directives allowed.
pub fn usability(
    freshness: &Freshness,
    invalidated: bool,
    request: &Directives,
    now: SystemTime,
    config: &PolicyConfig,
) -> Usability {
    if freshness.no_cache {
        return Usability::MustValidate;
    }
    let age = freshness.current_age(now);
    if config.honor_request_directives {
        if request.no_cache {
            return Usability::MustValidate;
        }
        if let Some(max_age) = request.max_age
            && age > capped_seconds(max_age)
        {
            return Usability::MustValidate;
        }
        if let Some(min_fresh) = request.min_fresh
            && freshness.lifetime < age.saturating_add(capped_seconds(min_fresh))
        {
            return Usability::MustValidate;
        }
    }
    let within_swr = !freshness.must_revalidate && freshness.staleness(now) <= freshness.stale_while_revalidate;
    if invalidated {
        let was_usable = freshness.is_fresh(now) || (within_swr && !freshness.stale_while_revalidate.is_zero());
        return if was_usable && !freshness.must_revalidate {
            Usability::StaleWhileRevalidate
        } else {
            Usability::MustValidate
        };
    }
    if freshness.is_fresh(now) {
        return Usability::Fresh;
    }
    if freshness.must_revalidate {
        return Usability::MustValidate;
    }
    if config.honor_request_directives
        && let Some(max_stale) = request.max_stale
        && freshness.staleness(now) <= Duration::from_secs(max_stale)
    {
        return Usability::StaleAllowedByClient;
    }
    if within_swr && !freshness.stale_while_revalidate.is_zero() {
        return Usability::StaleWhileRevalidate;
    }
    Usability::MustValidate
}

/// A response from upstream to a GET the cache sent, with what it was asked for.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamExchange<'a> {
    /// The request's target path and query (for the per-path rules of [`PolicyConfig`]).
    pub path: &'a str,
    /// The client request's header fields.
    pub request: &'a HeaderMap,
    /// The client request's directives ([`request_directives`]).
    pub request_directives: &'a Directives,
    /// The response status.
    pub status: StatusCode,
    /// The response header fields (hop-by-hop ones removed).
    pub response: &'a HeaderMap,
    /// The stored response the request validated, if it was a validation.
    pub stored: Option<&'a Freshness>,
    /// When the request went upstream.
    pub request_time: SystemTime,
    /// When the response arrived.
    pub now: SystemTime,
}

/// What to do with a response from upstream (RFC 9111 sections 3, 4.3.3, 4.3.4; RFC 5861 section 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseDecision {
    /// `304` to a validation: update the stored response's fields and serve it.
    Refresh,
    /// The origin failed (`5xx`) and the stored response may be served stale instead (`stale-if-error`).
    ServeStale,
    /// Store it while serving it.
    Store(Storing),
    /// Serve it without storing it; any stored variant it replaces must go.
    Pass(NotStorable),
}

/// How to store a storable response, computed with the decision so nothing is parsed twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storing {
    /// Its freshness facts.
    pub freshness: Freshness,
    withheld: Vec<String>,
}

impl Storing {
    /// The fields to store: all but those a qualified `no-cache` or `private` withholds, copied out of the
    /// connection's buffer ([`crate::meta::detached`]).
    pub fn stored_fields(&self, response: &HeaderMap) -> HeaderMap {
        let mut stored = crate::meta::detached(response);
        for name in &self.withheld {
            stored.remove(name.as_str());
        }
        stored
    }
}

/// Decides what to do with a response from upstream.
pub fn decide_response(exchange: &UpstreamExchange<'_>, config: &PolicyConfig) -> ResponseDecision {
    if let Some(stored) = exchange.stored {
        if exchange.status == StatusCode::NOT_MODIFIED {
            return ResponseDecision::Refresh;
        }
        if exchange.status.is_server_error() && stored.may_serve_on_error(exchange.now, exchange.request_directives) {
            return ResponseDecision::ServeStale;
        }
    }
    decide_storing(exchange, config)
}

/// Whether a `304` selects the stored response whose fields are `stored` for update (RFC 9111 section
/// 4.3.4): a strong entity tag in the 304 must be the stored one (strong comparison, RFC 9110 section
/// 8.8.3.2), a weak one must match it weakly; a 304 without an entity tag but with `Last-Modified` must
/// carry the stored date; a 304 with no validator selects the stored response. A 304 that selects nothing
/// must update nothing: the origin says another representation is current.
pub fn selects_for_update(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    let text = |fields: &HeaderMap, name: header::HeaderName| {
        fields
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.trim().to_string())
    };
    if let Some(new) = text(not_modified, header::ETAG) {
        let Some(old) = text(stored, header::ETAG) else {
            return false;
        };
        let opaque = |tag: &str| tag.strip_prefix("W/").unwrap_or(tag).to_string();
        return if new.starts_with("W/") {
            opaque(&new) == opaque(&old)
        } else {
            !old.starts_with("W/") && new == old
        };
    }
    match text(not_modified, header::LAST_MODIFIED) {
        Some(new) => text(stored, header::LAST_MODIFIED).is_some_and(|old| old == new),
        None => true,
    }
}

/// Whether to store a response, leaving aside validation and serving stale: the fallback of
/// [`ResponseDecision::ServeStale`] when the stored response turns out to be unusable.
pub fn decide_storing(exchange: &UpstreamExchange<'_>, config: &PolicyConfig) -> ResponseDecision {
    let facts = ResponseFacts::of(exchange.response, config);
    let verdict = storable_with(
        &Method::GET,
        exchange.path,
        exchange.request,
        exchange.request_directives,
        exchange.status,
        exchange.response,
        &facts,
        config,
    );
    if let Err(reason) = verdict {
        return ResponseDecision::Pass(reason);
    }
    let freshness = Freshness::from_facts(
        exchange.status,
        exchange.response,
        &facts,
        exchange.request_time,
        exchange.now,
        config,
    );
    // Stale on arrival (an `Age` past its lifetime, say) with nothing to revalidate it by and no window to
    // serve it stale in: storing it would only mean fetching it again on every request.
    let has_validator =
        exchange.response.contains_key(header::ETAG) || exchange.response.contains_key(header::LAST_MODIFIED);
    if !freshness.is_fresh(exchange.now) && !has_validator && !has_stale_window(&facts.directives) {
        return ResponseDecision::Pass(NotStorable::NoFreshnessNorValidator);
    }
    let ResponseFacts { directives, .. } = facts;
    let mut withheld = directives.no_cache_fields;
    withheld.extend(directives.private_fields);
    ResponseDecision::Store(Storing { freshness, withheld })
}

/// Methods after whose non-error response stored responses for the target URI are invalidated
/// (RFC 9111 section 4.4): every method not known to be safe.
pub fn invalidates(method: &Method, status: StatusCode) -> bool {
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
    !safe && (status.is_success() || status.is_redirection())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn response(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn fresh_for(pairs: &[(&str, &str)], now: SystemTime) -> Freshness {
        Freshness::of(StatusCode::OK, &response(pairs), now, now, &PolicyConfig::default())
    }

    #[test]
    fn s_maxage_beats_max_age_and_implies_revalidate() {
        let now = SystemTime::now();
        let f = fresh_for(&[("cache-control", "max-age=10, s-maxage=100")], now);
        assert_eq!(f.lifetime, Duration::from_secs(100));
        assert!(f.must_revalidate);
    }

    #[test]
    fn targeted_field_overrides_cache_control_and_expires() {
        let now = SystemTime::now();
        let f = fresh_for(
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=300"),
                ("expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ],
            now,
        );
        assert_eq!(f.lifetime, Duration::from_secs(300));
        let headers = response(&[("cache-control", "no-store"), ("cdn-cache-control", "max-age=300")]);
        let storable = storable(
            &Method::GET,
            "/",
            &HeaderMap::new(),
            StatusCode::OK,
            &headers,
            &PolicyConfig::default(),
        );
        assert_eq!(storable, Ok(()));
    }

    #[test]
    fn age_counts_from_upstream_age_and_delay() {
        let now = SystemTime::now();
        let f = fresh_for(&[("cache-control", "max-age=100"), ("age", "30")], now);
        assert_eq!(f.current_age(now + Duration::from_secs(10)), Duration::from_secs(40));
        assert!(f.is_fresh(now + Duration::from_secs(69)));
        assert!(!f.is_fresh(now + Duration::from_secs(70)));
    }

    #[test]
    fn heuristic_freshness_from_last_modified() {
        let now = SystemTime::now();
        let modified = now - Duration::from_secs(1000);
        let f = fresh_for(
            &[
                ("date", &httpdate::fmt_http_date(now)),
                ("last-modified", &httpdate::fmt_http_date(modified)),
            ],
            now,
        );
        assert_eq!(f.lifetime.as_secs(), 100);
    }

    #[test]
    fn not_storable_cases() {
        let config = PolicyConfig::default();
        let plain = HeaderMap::new();
        let check = |req: &HeaderMap, status: u16, pairs: &[(&str, &str)]| {
            storable(
                &Method::GET,
                "/a",
                req,
                StatusCode::from_u16(status).expect("status"),
                &response(pairs),
                &config,
            )
        };
        assert_eq!(
            check(&plain, 200, &[("cache-control", "private, max-age=9")]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            check(&plain, 200, &[("cache-control", "no-store")]),
            Err(NotStorable::NoStore)
        );
        assert_eq!(check(&plain, 200, &[]), Err(NotStorable::NoFreshnessNorValidator));
        assert_eq!(check(&plain, 302, &[("etag", "\"a\"")]), Err(NotStorable::Status));
        assert_eq!(
            check(&plain, 200, &[("cache-control", "max-age=9"), ("vary", "*")]),
            Err(NotStorable::VaryStar)
        );
        let auth = response(&[("authorization", "Bearer x")]);
        assert_eq!(
            check(&auth, 200, &[("cache-control", "max-age=9")]),
            Err(NotStorable::Authorization)
        );
        assert_eq!(check(&auth, 200, &[("cache-control", "max-age=9, public")]), Ok(()));
        assert_eq!(check(&plain, 200, &[("etag", "\"a\"")]), Ok(()));
        assert_eq!(check(&plain, 299, &[("cache-control", "max-age=5")]), Ok(()));
        assert_eq!(
            check(
                &plain,
                200,
                &[("cache-control", "no-store, must-understand, max-age=5")]
            ),
            Ok(())
        );
    }

    #[test]
    fn set_cookie_responses_are_not_stored_unless_qualified_or_allowed() {
        let cookie = [("cache-control", "public, max-age=60"), ("set-cookie", "session=alice")];
        let check = |pairs: &[(&str, &str)], config: &PolicyConfig| {
            storable(
                &Method::GET,
                "/account/home",
                &HeaderMap::new(),
                StatusCode::OK,
                &response(pairs),
                config,
            )
        };
        let config = PolicyConfig::default();
        assert_eq!(check(&cookie, &config), Err(NotStorable::SetCookie));
        let obsolete = [
            ("cache-control", "public, max-age=60"),
            ("set-cookie2", "session=alice; Version=1"),
        ];
        assert_eq!(
            check(&obsolete, &config),
            Err(NotStorable::SetCookie),
            "Set-Cookie2 too"
        );
        let qualified = [
            ("cache-control", "max-age=60, no-cache=\"Set-Cookie\""),
            ("set-cookie", "session=alice"),
        ];
        assert_eq!(check(&qualified, &config), Ok(()));
        let qualified_response = response(&qualified);
        let request = HeaderMap::new();
        let none = Directives::default();
        let now = SystemTime::now();
        let exchange = UpstreamExchange {
            path: "/account/home",
            request: &request,
            request_directives: &none,
            status: StatusCode::OK,
            response: &qualified_response,
            stored: None,
            request_time: now,
            now,
        };
        let ResponseDecision::Store(storing) = decide_storing(&exchange, &config) else {
            panic!("a qualified cookie response is storable")
        };
        let stored = storing.stored_fields(&qualified_response);
        assert!(!stored.contains_key(header::SET_COOKIE), "the cookie is never stored");
        let private = [
            ("cache-control", "max-age=60, private=\"set-cookie\""),
            ("set-cookie", "s=1"),
        ];
        assert_eq!(check(&private, &config), Ok(()));
        let opted_in = PolicyConfig {
            store_set_cookie_paths: vec!["/account/".into()],
            ..PolicyConfig::default()
        };
        assert_eq!(check(&cookie, &opted_in), Ok(()));
        let elsewhere = PolicyConfig {
            store_set_cookie_paths: vec!["/static/".into()],
            ..PolicyConfig::default()
        };
        assert_eq!(check(&cookie, &elsewhere), Err(NotStorable::SetCookie));
    }

    #[test]
    fn a_cookie_set_on_a_revalidation_is_not_stored() {
        let config = PolicyConfig::default();
        let not_modified = response(&[
            ("etag", "\"e1\""),
            ("set-cookie", "sid=2"),
            ("cache-control", "max-age=60"),
        ]);
        let (stored, client_only) = refresh_fields(&not_modified, "/", &config);
        assert!(!stored.contains_key(header::SET_COOKIE));
        assert_eq!(stored[header::ETAG], "\"e1\"");
        assert_eq!(client_only[header::SET_COOKIE], "sid=2");
        let opted_in = PolicyConfig {
            store_set_cookie_paths: vec!["/".into()],
            ..PolicyConfig::default()
        };
        let (stored, client_only) = refresh_fields(&not_modified, "/a", &opted_in);
        assert!(stored.contains_key(header::SET_COOKIE));
        assert!(client_only.is_empty());
    }

    #[test]
    fn an_invalid_targeted_field_falls_back_to_cache_control() {
        let now = SystemTime::now();
        let f = fresh_for(
            &[
                ("cache-control", "max-age=10"),
                ("cdn-cache-control", "max-age=\"600\""),
            ],
            now,
        );
        assert_eq!(f.lifetime, Duration::from_secs(10));
        let f = fresh_for(
            &[("cache-control", "max-age=10"), ("cdn-cache-control", "max-age=600")],
            now,
        );
        assert_eq!(f.lifetime, Duration::from_secs(600));
        let f = fresh_for(&[("cache-control", "max-age=10"), ("cdn-cache-control", "")], now);
        assert_eq!(f.lifetime, Duration::from_secs(10), "an empty field is ignored");
    }

    #[test]
    fn response_decisions() {
        let config = PolicyConfig::default();
        let now = SystemTime::now();
        let none = Directives::default();
        let request = HeaderMap::new();
        let stored = fresh_for(&[("cache-control", "max-age=1, stale-if-error=60")], now);
        let strict = fresh_for(&[("cache-control", "max-age=1, must-revalidate")], now);
        let decide = |status: u16, pairs: &[(&str, &str)], stored: Option<&Freshness>| {
            let response = response(pairs);
            let exchange = UpstreamExchange {
                path: "/",
                request: &request,
                request_directives: &none,
                status: StatusCode::from_u16(status).expect("status"),
                response: &response,
                stored,
                request_time: now,
                now: now + Duration::from_secs(5),
            };
            decide_response(&exchange, &config)
        };
        assert_eq!(decide(304, &[], Some(&stored)), ResponseDecision::Refresh);
        assert_eq!(decide(503, &[], Some(&stored)), ResponseDecision::ServeStale);
        assert_eq!(
            decide(503, &[], Some(&strict)),
            ResponseDecision::Pass(NotStorable::Status)
        );
        assert!(matches!(
            decide(200, &[("cache-control", "max-age=60")], None),
            ResponseDecision::Store(storing) if storing.freshness.lifetime == Duration::from_secs(60)
        ));
        assert_eq!(
            decide(200, &[("cache-control", "no-store")], Some(&stored)),
            ResponseDecision::Pass(NotStorable::NoStore)
        );
        assert_eq!(
            decide(304, &[], None),
            ResponseDecision::Pass(NotStorable::Status),
            "a 304 to a request the cache did not validate is passed on"
        );
        assert_eq!(
            decide(
                200,
                &[("cache-control", "max-age=60"), ("age", "18446744073709551615")],
                None
            ),
            ResponseDecision::Pass(NotStorable::NoFreshnessNorValidator),
            "stale on arrival with no validator: not worth storing"
        );
        assert!(matches!(
            decide(
                200,
                &[("cache-control", "max-age=60"), ("age", "999"), ("etag", "\"v\"")],
                None
            ),
            ResponseDecision::Store(_)
        ));
        // No freshness and no validator, but a window to serve it stale in (RFC 5861): stored, by either
        // directive, whether the lifetime is zero or used up on arrival (a trial found the first refused
        // for `stale-while-revalidate`, which the second took).
        for window in ["stale-while-revalidate=30", "stale-if-error=30"] {
            for pairs in [
                vec![("cache-control", format!("max-age=0, {window}"))],
                vec![
                    ("cache-control", format!("max-age=60, {window}")),
                    ("age", "61".to_string()),
                ],
            ] {
                let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
                assert!(
                    matches!(decide(200, &pairs, None), ResponseDecision::Store(_)),
                    "{pairs:?}"
                );
            }
            let zero = window.replace("30", "0");
            assert_eq!(
                decide(200, &[("cache-control", &format!("max-age=0, {zero}"))], None),
                ResponseDecision::Pass(NotStorable::NoFreshnessNorValidator),
                "{zero}: no window"
            );
        }
    }

    #[test]
    fn usability_rules() {
        let config = PolicyConfig::default();
        let now = SystemTime::now();
        let none = Directives::default();
        let f = fresh_for(&[("cache-control", "max-age=10, stale-while-revalidate=20")], now);
        assert_eq!(usability(&f, false, &none, now, &config), Usability::Fresh);
        let later = now + Duration::from_secs(15);
        assert_eq!(
            usability(&f, false, &none, later, &config),
            Usability::StaleWhileRevalidate
        );
        let much_later = now + Duration::from_secs(31);
        assert_eq!(
            usability(&f, false, &none, much_later, &config),
            Usability::MustValidate
        );
        assert_eq!(
            usability(&f, true, &none, now, &config),
            Usability::StaleWhileRevalidate
        );

        let no_cache = fresh_for(&[("cache-control", "no-cache, max-age=100")], now);
        assert_eq!(
            usability(&no_cache, false, &none, now, &config),
            Usability::MustValidate
        );

        let client_no_cache = Directives {
            no_cache: true,
            ..Directives::default()
        };
        assert_eq!(
            usability(&f, false, &client_no_cache, now, &config),
            Usability::MustValidate
        );

        let strict = fresh_for(&[("cache-control", "max-age=10, must-revalidate")], now);
        let client_max_stale = Directives {
            max_stale: Some(u64::MAX),
            ..Directives::default()
        };
        assert_eq!(
            usability(&strict, false, &client_max_stale, later, &config),
            Usability::MustValidate
        );
        assert_eq!(
            usability(&f, false, &client_max_stale, much_later, &config),
            Usability::StaleAllowedByClient
        );
    }

    #[test]
    fn stale_if_error_window() {
        let now = SystemTime::now();
        let f = fresh_for(&[("cache-control", "max-age=1, stale-if-error=60")], now);
        let none = Directives::default();
        assert!(f.may_serve_on_error(now + Duration::from_secs(30), &none));
        assert!(!f.may_serve_on_error(now + Duration::from_secs(62), &none));
    }

    #[test]
    fn unsafe_methods_invalidate_on_success_only() {
        assert!(invalidates(&Method::POST, StatusCode::OK));
        assert!(invalidates(&Method::DELETE, StatusCode::NO_CONTENT));
        assert!(!invalidates(&Method::POST, StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!invalidates(&Method::GET, StatusCode::OK));
    }

    /// The named case of issue 9: an `Age` near 2^64 panicked the request task on every hit, and one just
    /// past it was read as 0 (fresh for the whole max-age).
    #[test]
    fn absurd_age_is_capped_not_wrapped() {
        let now = SystemTime::now();
        for absurd in [
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            let f = fresh_for(&[("cache-control", "max-age=3600"), ("age", absurd)], now);
            assert_eq!(
                f.corrected_initial_age,
                Duration::from_secs(DELTA_SECONDS_CAP),
                "{absurd}"
            );
            assert!(!f.is_fresh(now), "{absurd} must make the response stale");
            assert_eq!(f.age_seconds(now + Duration::from_secs(10)), DELTA_SECONDS_CAP);
            assert!(f.ttl_seconds(now) < 0);
        }
    }

    #[test]
    fn invalid_age_is_ignored_and_a_list_uses_its_first_member() {
        let now = SystemTime::now();
        for invalid in ["-5", "1.5", "10 s", "0x10", "", "+3"] {
            let f = fresh_for(&[("cache-control", "max-age=100"), ("age", invalid)], now);
            assert_eq!(f.corrected_initial_age, Duration::ZERO, "{invalid:?}");
        }
        let f = fresh_for(&[("cache-control", "max-age=100"), ("age", "700"), ("age", "1")], now);
        assert_eq!(
            f.corrected_initial_age,
            Duration::from_secs(700),
            "the first of several lines"
        );
        let f = fresh_for(&[("cache-control", "max-age=100"), ("age", "700, 1")], now);
        assert_eq!(
            f.corrected_initial_age,
            Duration::from_secs(700),
            "the first member of a list"
        );
    }

    #[test]
    fn obsolete_expires_formats_count() {
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        for expires in [
            "Sun, 06 Nov 1994 08:50:37 GMT",
            "Sunday, 06-Nov-94 08:50:37 GMT",
            "Sun Nov  6 08:50:37 1994",
            "sun, 06 nov 1994 08:50:37 gmt",
        ] {
            let headers = response(&[("date", date), ("expires", expires)]);
            let at = date::parse(&HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT")).expect("date");
            let f = Freshness::of(StatusCode::OK, &headers, at, at, &PolicyConfig::default());
            assert_eq!(f.lifetime, Duration::from_secs(60), "{expires}");
        }
    }

    /// Header values that are valid, absurd or garbage, so every branch of the parsers is reached.
    fn header_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            "[0-9]{15,30}",
            "-?[0-9]{1,5}",
            (0u64..253_402_300_799).prop_map(|s| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s))),
            "[ -~]{0,24}",
        ]
    }

    fn cache_control() -> impl Strategy<Value = String> {
        let directive = prop_oneof![
            header_value().prop_map(|v| format!("max-age={v}")),
            header_value().prop_map(|v| format!("s-maxage={v}")),
            header_value().prop_map(|v| format!("stale-while-revalidate={v}")),
            header_value().prop_map(|v| format!("stale-if-error={v}")),
            Just("no-cache".to_string()),
            Just("must-revalidate".to_string()),
            Just("public".to_string()),
            "[ -~]{0,12}",
        ];
        proptest::collection::vec(directive, 0..4).prop_map(|d| d.join(", "))
    }

    fn any_time() -> impl Strategy<Value = SystemTime> {
        prop_oneof![
            (0u64..253_402_300_799).prop_map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            (1_700_000_000u64..1_800_000_000).prop_map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        ]
    }

    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    proptest! {
        /// The whole freshness computation, fed arbitrary header values, stored times and clocks: it never
        /// panics, every duration stays within the delta-seconds cap, and the answers agree with each other.
        #[test]
        fn freshness_never_overflows(
            age in header_value(),
            date in header_value(),
            expires in header_value(),
            last_modified in header_value(),
            response_cc in cache_control(),
            targeted_cc in cache_control(),
            request_cc in cache_control(),
            request_time in any_time(),
            response_time in any_time(),
            now in any_time(),
            later_by in any::<u64>(),
            fraction in prop_oneof![Just(0.1f64), Just(-1.0), Just(f64::NAN), Just(f64::INFINITY), Just(1e300)],
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in [
                ("age", &age),
                ("date", &date),
                ("expires", &expires),
                ("last-modified", &last_modified),
                ("cache-control", &response_cc),
                ("cdn-cache-control", &targeted_cc),
            ] {
                if let Ok(value) = HeaderValue::from_str(value) {
                    headers.insert(HeaderName::from_static(name), value);
                }
            }
            let mut request = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&request_cc) {
                request.insert(header::CACHE_CONTROL, value);
            }
            let config = PolicyConfig { heuristic_fraction: fraction, ..PolicyConfig::default() };
            let cap = Duration::from_secs(DELTA_SECONDS_CAP);
            let f = Freshness::of(StatusCode::OK, &headers, request_time, response_time, &config);
            prop_assert!(f.lifetime <= cap);
            prop_assert!(f.corrected_initial_age <= cap.saturating_mul(2));
            prop_assert!(f.age_seconds(now) <= DELTA_SECONDS_CAP);
            let later = now.checked_add(Duration::from_secs(later_by % (1 << 40))).unwrap_or(now);
            prop_assert!(f.current_age(later) >= f.current_age(now));
            let ttl = f.ttl_seconds(now);
            prop_assert!(if f.is_fresh(now) { ttl >= 0 } else { ttl <= 0 }, "ttl {} disagrees with is_fresh", ttl);
            let directives = request_directives(&request);
            let _ = usability(&f, false, &directives, now, &config);
            let _ = usability(&f, true, &directives, now, &config);
            let _ = f.may_serve_on_error(now, &directives);
            let _ = f.staleness(now);
            let _ = storable(&Method::GET, "/", &request, StatusCode::OK, &headers, &config);
        }
    }

    #[test]
    fn a_304_updates_only_the_stored_response_its_validators_select() {
        let stored = response(&[("etag", "\"a\""), ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")]);
        let weak = response(&[("etag", "W/\"a\"")]);
        let selects = |stored: &HeaderMap, pairs: &[(&str, &str)]| selects_for_update(stored, &response(pairs));
        assert!(selects(&stored, &[("etag", "\"a\"")]));
        assert!(
            !selects(&stored, &[("etag", "\"b\"")]),
            "another strong tag: another representation"
        );
        assert!(
            !selects(&weak, &[("etag", "\"a\"")]),
            "a strong tag never matches a weak one strongly"
        );
        assert!(selects(&weak, &[("etag", "W/\"a\"")]));
        assert!(selects(&stored, &[("etag", "W/\"a\"")]), "weak comparison");
        assert!(
            !selects(&response(&[]), &[("etag", "\"a\"")]),
            "nothing stored to match"
        );
        assert!(selects(&stored, &[("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")]));
        assert!(!selects(&stored, &[("last-modified", "Wed, 02 Dec 2026 10:00:00 GMT")]));
        assert!(
            selects(&stored, &[("cache-control", "max-age=60")]),
            "no validator: the one stored"
        );
    }
}
