//! The freshness computation and the response decision, fed one arbitrary value in every field they read
//! (Age, Date, Expires, Last-Modified, Cache-Control, CDN-Cache-Control), and the request-target
//! normaliser: nothing may panic or overflow (issue 9, fault 1).
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tern_http_cache::policy::{self, UpstreamExchange};
use tern_http_cache::{Directives, Freshness, PolicyConfig};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // The cache key's normal form must be its own normal form (one object, one purge, per URL).
        let once = tern_http::target::normalize(text).into_owned();
        assert_eq!(tern_http::target::normalize(&once), once.as_str());
        let _ = tern_http::date::parse_str(text, SystemTime::now());
        let _ = tern_http_cache::structured::dictionary(text);
    }
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let mut response = HeaderMap::new();
    for name in ["age", "date", "expires", "last-modified", "cache-control", "cdn-cache-control"] {
        response.insert(HeaderName::from_static(name), value.clone());
    }
    let config = PolicyConfig::default();
    let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let freshness = Freshness::of(StatusCode::OK, &response, at, at, &config);
    let _ = freshness.ttl_seconds(at + Duration::from_secs(u32::MAX as u64));
    let _ = freshness.age_seconds(at);
    let request = HeaderMap::new();
    let directives = Directives::parse([&value]);
    let exchange = UpstreamExchange {
        path: "/",
        request: &request,
        request_directives: &directives,
        status: StatusCode::SERVICE_UNAVAILABLE,
        response: &response,
        stored: Some(&freshness),
        request_time: at,
        now: at,
    };
    let _ = policy::decide_response(&exchange, &config);
    let _ = policy::usability(&freshness, false, &directives, at, &config);
});
