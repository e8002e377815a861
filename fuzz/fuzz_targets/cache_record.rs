//! The disk tier's record decoder must reject any damaged record without panicking.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = tern_http_cache::Meta::decode(data) {
        // Whatever decodes must encode back to something that decodes the same.
        let again = tern_http_cache::Meta::decode(&meta.encode()).expect("re-decode");
        assert_eq!(again, meta);
    }
});
