//! RFC 9111 caching policy for a shared cache: whether a response may be stored (section 3), how long it
//! is fresh (section 4.2), its age (section 4.2.3), and whether a stored response may be used for a request
//! as it is, must be validated first, or may be served stale (RFC 5861).
//!
//! Targeted cache-control fields (RFC 9213, `CDN-Cache-Control` by default) replace `Cache-Control` and
//! `Expires` for this cache when present and non-empty.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, Method, StatusCode, header};

use crate::directives::Directives;
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
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            targeted_fields: vec![HeaderName::from_static("cdn-cache-control")],
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(24 * 3600),
            honor_request_directives: true,
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
pub fn response_directives(headers: &HeaderMap, config: &PolicyConfig) -> (Directives, bool) {
    for field in &config.targeted_fields {
        if headers.contains_key(field) {
            let targeted = Directives::parse(headers.get_all(field));
            if targeted.present {
                return (targeted, true);
            }
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
        }
    }
}

/// Decides whether a shared cache may store a response (RFC 9111 section 3).
pub fn storable(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    config: &PolicyConfig,
) -> Result<(), NotStorable> {
    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    // Partial content is not combined here; the cache fetches and stores complete objects.
    if status.is_informational() || status == StatusCode::PARTIAL_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Err(NotStorable::Status);
    }
    let (directives, targeted) = response_directives(response, config);
    let request_cc = request_directives(request);
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
        || (!targeted && response.contains_key(header::EXPIRES));
    let allowed = explicit || directives.public || heuristically_cacheable(status);
    if !allowed {
        return Err(NotStorable::Status);
    }
    let has_validator = response.contains_key(header::ETAG) || response.contains_key(header::LAST_MODIFIED);
    let lifetime = freshness_lifetime(status, response, response_time_of(response), config);
    if lifetime.is_zero() && !has_validator && directives.stale_if_error.is_none() {
        return Err(NotStorable::NoFreshnessNorValidator);
    }
    Ok(())
}

fn response_time_of(response: &HeaderMap) -> SystemTime {
    response
        .get(header::DATE)
        .and_then(date::parse)
        .unwrap_or_else(SystemTime::now)
}

/// Freshness lifetime of a response (RFC 9111 section 4.2.1), for a shared cache.
fn freshness_lifetime(
    status: StatusCode,
    response: &HeaderMap,
    response_time: SystemTime,
    config: &PolicyConfig,
) -> Duration {
    let (directives, targeted) = response_directives(response, config);
    if let Some(seconds) = directives.s_maxage.or(directives.max_age) {
        return Duration::from_secs(seconds);
    }
    let date_value = response
        .get(header::DATE)
        .and_then(date::parse)
        .unwrap_or(response_time);
    if !targeted && let Some(expires) = response.get(header::EXPIRES) {
        // An invalid Expires means "already expired" (RFC 9111 section 5.3).
        return match date::parse(expires) {
            Some(expires) => expires.duration_since(date_value).unwrap_or_default(),
            None => Duration::ZERO,
        };
    }
    if (directives.public || heuristically_cacheable(status))
        && let Some(modified) = response.get(header::LAST_MODIFIED).and_then(date::parse)
        && let Ok(since) = date_value.duration_since(modified)
    {
        return since.mul_f64(config.heuristic_fraction).min(config.heuristic_max);
    }
    Duration::ZERO
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
        let (directives, _) = response_directives(response, config);
        let date_value = response
            .get(header::DATE)
            .and_then(date::parse)
            .unwrap_or(response_time);
        let age_value = response
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or_default();
        let apparent_age = response_time.duration_since(date_value).unwrap_or_default();
        let response_delay = response_time.duration_since(request_time).unwrap_or_default();
        let corrected_age_value = age_value + response_delay;
        Freshness {
            lifetime: freshness_lifetime(status, response, response_time, config),
            corrected_initial_age: apparent_age.max(corrected_age_value),
            response_time,
            no_cache: directives.no_cache,
            must_revalidate: directives.must_revalidate || directives.proxy_revalidate || directives.s_maxage.is_some(),
            stale_while_revalidate: Duration::from_secs(directives.stale_while_revalidate.unwrap_or(0)),
            stale_if_error: Duration::from_secs(directives.stale_if_error.unwrap_or(0)),
        }
    }

    /// Current age (RFC 9111 section 4.2.3).
    pub fn current_age(&self, now: SystemTime) -> Duration {
        let resident = now.duration_since(self.response_time).unwrap_or_default();
        self.corrected_initial_age + resident
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
        let age = self.current_age(now).as_secs() as i64;
        self.lifetime.as_secs() as i64 - age
    }

    /// Whether the response may be served stale because the origin failed, given the request's own
    /// `stale-if-error`.
    pub fn may_serve_on_error(&self, now: SystemTime, request: &Directives) -> bool {
        if self.must_revalidate || self.no_cache {
            return false;
        }
        let window = request
            .stale_if_error
            .map(Duration::from_secs)
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
            && age > Duration::from_secs(max_age)
        {
            return Usability::MustValidate;
        }
        if let Some(min_fresh) = request.min_fresh
            && freshness.lifetime < age + Duration::from_secs(min_fresh)
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
}
