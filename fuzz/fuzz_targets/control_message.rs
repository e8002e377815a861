//! The control channel's decoder (seed 004's Leader Alive and Leader Claim): any datagram decodes or is
//! refused with a named error, never a panic; what decodes encodes back to the same message; the replay
//! guard's arithmetic on the sender's clock saturates and a second copy is refused.
#![no_main]

use tern_wire::SecretKey;
use tern_wire::control::{self, ControlLimits, ReplayGuard};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = SecretKey::parse(&"00".repeat(32)).expect("key");
    let limits = ControlLimits::default();
    // As received from the network: the tag stops whatever was not made with the key.
    check(&key, data, &limits);
    // Behind a valid tag, so that the payload parser is reached; the first byte picks LA or LC.
    if let Some((selector, payload)) = data.split_first() {
        let kind = if selector & 1 == 0 {
            control::KIND_LEADER_ALIVE
        } else {
            control::KIND_LEADER_CLAIM
        };
        check(&key, &tern_wire::frame::encode(&key, kind, payload), &limits);
    }
});

fn check(key: &SecretKey, datagram: &[u8], limits: &ControlLimits) {
    let Ok(verified) = control::decode(key, datagram, limits) else {
        return;
    };
    let message = verified.into_message();
    let unbounded = ControlLimits {
        max_datagram: usize::MAX,
        ..*limits
    };
    let again = control::decode(key, &control::encode(key, &message), &unbounded).expect("re-decodes");
    assert_eq!(again.message(), &message);
    let mut guard = ReplayGuard::new(*limits);
    let now_ms = message.sent_at_ms;
    guard.check(&message, now_ms).expect("a fresh message is accepted");
    assert!(guard.check(&message, now_ms).is_err(), "a second copy is a replay");
}
