//! Parsers of client-controlled fields (Cache-Control, Range, entity tags) must never panic.
#![no_main]

use http::{HeaderMap, HeaderValue, Method, header};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let _ = tern_http_cache::Directives::parse([&value]);
    let mut request = HeaderMap::new();
    for name in [header::RANGE, header::IF_RANGE, header::IF_NONE_MATCH, header::IF_MATCH, header::IF_MODIFIED_SINCE] {
        request.insert(name, value.clone());
    }
    let _ = tern_http::range::select(&request, 1000, Some("\"x\""), None);
    let validators = tern_http::conditional::Validators { etag: Some("\"x\""), last_modified: None };
    let _ = tern_http::conditional::evaluate(&Method::GET, &request, validators);
});
