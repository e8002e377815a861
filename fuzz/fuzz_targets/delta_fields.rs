//! The request and response fields of differential caching (Available-Dictionary, Dictionary-ID,
//! Use-As-Dictionary, Repr-Digest, Accept-Encoding for dcz) and class patterns must never panic, and what
//! parses must format back to the same value.
#![no_main]

use http::{HeaderMap, HeaderValue, StatusCode};
use tern_delta::fields::{self, UseAsDictionary};
use tern_delta::{Class, Pattern, ReprDigest, browser_delta};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = fields::parse_available_dictionary(text) {
        assert_eq!(
            fields::parse_available_dictionary(&fields::format_available_dictionary(&id)),
            Ok(id)
        );
    }
    if let Ok(id) = fields::parse_dictionary_id(text) {
        let formatted = fields::format_dictionary_id(&id).expect("parsed ids format");
        assert_eq!(fields::parse_dictionary_id(&formatted), Ok(id));
    }
    if let Ok(field) = UseAsDictionary::parse(text) {
        if let Ok(formatted) = field.format() {
            assert_eq!(UseAsDictionary::parse(&formatted), Ok(field));
        }
    }
    if let Ok(digest) = ReprDigest::parse(text) {
        assert_eq!(ReprDigest::parse(&digest.format()), Ok(digest));
    }
    if let Ok(pattern) = Pattern::new(text) {
        let _ = pattern.matches(text);
        let _ = pattern.matches("/news/2026/story?x=1");
    }
    let _ = Class::parse(text);
    if let Ok(value) = HeaderValue::from_str(text) {
        let mut request = HeaderMap::new();
        for name in [
            "accept-encoding",
            "available-dictionary",
            "sec-fetch-site",
            "sec-fetch-mode",
            "origin",
        ] {
            request.insert(name, value.clone());
        }
        let mut response = HeaderMap::new();
        for name in [
            "cache-control",
            "vary",
            "content-encoding",
            "access-control-allow-origin",
        ] {
            response.insert(name, value.clone());
        }
        let _ = fields::available_dictionary(&request);
        let _ = ReprDigest::from_headers(&response, fields::REPR_DIGEST);
        if let Ok(class) = Class::parse("fuzz=/*") {
            let _ = browser_delta(&class, &request, StatusCode::OK, &response);
        }
    }
});
