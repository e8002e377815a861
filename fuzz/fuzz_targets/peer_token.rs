//! A community peer token as an edge receives it in a request field (`tern_edge::community::PeerAuth`):
//! any bytes are refused with a reason or accepted, never a panic; a token one member signed verifies at
//! another for the same request and never for a changed one (body, or host), and a purge relay's token is
//! taken once.
#![no_main]

use tern_edge::community::PeerAuth;
use tern_wire::SecretKey;

const NOW_MS: u64 = 1_796_000_000_000;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = SecretKey::parse(&"00".repeat(32)).expect("key");
    let receiver = PeerAuth::new(&key, "community", "receiver");
    // Arbitrary bytes as the token, for a GET and for a relay.
    for method in ["GET", "POST"] {
        let _ = receiver.verify(Some(data), method, "site.test", "/x", b"{}", NOW_MS);
    }
    // A well-formed token for a request whose target and body come from the input.
    let split = data.len() / 2;
    let target = String::from_utf8_lossy(&data[..split]);
    let body = &data[split..];
    let sender = PeerAuth::new(&key, "community", "sender");
    let token = sender.sign("POST", "", &target, body, NOW_MS);
    assert!(receiver.verify(Some(token.as_bytes()), "POST", "", &target, body, NOW_MS + 5).is_ok());
    assert!(
        receiver.verify(Some(token.as_bytes()), "POST", "", &target, body, NOW_MS + 6).is_err(),
        "a relay's token is taken once"
    );
    let mut changed = body.to_vec();
    changed.push(b'!');
    let token = sender.sign("POST", "", &target, body, NOW_MS);
    assert!(receiver.verify(Some(token.as_bytes()), "POST", "", &target, &changed, NOW_MS).is_err());
    // A GET's token names its host: another host is another request.
    let token = sender.sign("GET", "site.test", &target, b"", NOW_MS);
    assert!(receiver.verify(Some(token.as_bytes()), "GET", "site.test", &target, b"", NOW_MS).is_ok());
    assert!(receiver.verify(Some(token.as_bytes()), "GET", "evil.test", &target, b"", NOW_MS).is_err());
});
