//! A purge body as the edge receives it on the admin listener (`POST /purge`) and from community members
//! on the peer listener: any bytes parse or are refused with a message, never a panic; what parses
//! resolves to primary keys or names the URL it cannot use; resolved keys are in normal form (resolving
//! them again gives the same keys), so a relayed purge names the same objects at every member.
#![no_main]

use tern_edge::purge::PurgeRequest;
use tern_http_cache::KeyConfig;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(purge) = PurgeRequest::parse(data) else {
        return;
    };
    for include_query in [true, false] {
        let config = KeyConfig { include_query };
        let Ok(resolved) = purge.resolve(&config) else {
            continue;
        };
        // What a member relays is the resolved URLs; the receiving member resolves them again.
        let relayed = PurgeRequest {
            urls: resolved.urls.clone(),
            urls_any_query: resolved.urls_any_query.clone(),
            prefixes: resolved.prefixes.clone(),
            keys: resolved.keys.clone(),
            soft: purge.soft,
        };
        let body = serde_json::to_vec(&relayed).expect("a purge encodes");
        let again = PurgeRequest::parse(&body).expect("a relayed purge parses");
        let twice = again.resolve(&config).expect("resolved keys resolve");
        assert_eq!(twice.urls, resolved.urls, "primary keys are a fixed point");
        assert_eq!(twice.urls_any_query, resolved.urls_any_query);
        assert_eq!(twice.prefixes, resolved.prefixes);
    }
});
