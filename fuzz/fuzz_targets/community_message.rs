//! The cache community's messages (seed 002's WAKEUP, REQUESTTOJOIN, allow, deny, UPDATEPEERLIST,
//! PEERPING, HOLDELECTION, NOMINATEMASTER, ADDMASTER, REPLACEMASTER, the registry's answers and the
//! location and holding messages of seed 003): any datagram or body decodes or is refused with a named
//! error, never a panic; what decodes encodes back to the same message; the replay guard refuses a
//! second copy; and a community core (as master and as member) and the registry take any decoded message
//! without panicking.
#![no_main]

use std::time::Instant;

use tern_community::{Community, CommunityConfig, Input, Registry, RegistryConfig, RegistryState};
use tern_wire::SecretKey;
use tern_wire::community::{self, CommunityLimits};
use tern_wire::control::ReplayGuard;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = SecretKey::parse(&"00".repeat(32)).expect("key");
    // As received between peers, and as a body over HTTP (larger limit).
    for limits in [CommunityLimits::default(), CommunityLimits::http()] {
        check(&key, data, &limits);
    }
    // Behind a valid tag, so that the payload parser is reached; the first byte picks the kind.
    if let Some((selector, payload)) = data.split_first() {
        let kinds = community::KIND_HOLDING_DEREGISTRATION - community::KIND_WAKEUP + 1;
        let kind = community::KIND_WAKEUP + selector % kinds;
        check(&key, &tern_wire::frame::encode(&key, kind, payload), &CommunityLimits::http());
    }
});

fn check(key: &SecretKey, bytes: &[u8], limits: &CommunityLimits) {
    let Ok(verified) = community::decode(key, bytes, limits) else {
        return;
    };
    let message = verified.message().clone();
    let unbounded = CommunityLimits {
        max_len: usize::MAX,
        ..*limits
    };
    let again = community::decode(key, &community::encode(key, &message), &unbounded).expect("re-decodes");
    assert_eq!(again.message(), &message);
    let mut guard = ReplayGuard::new(limits.replay());
    let now_ms = message.sent_at_ms;
    guard
        .check_stamp(&message.stamp(), now_ms)
        .expect("a fresh message is accepted");
    assert!(
        guard.check_stamp(&message.stamp(), now_ms).is_err(),
        "a second copy is a replay"
    );
    feed_cores(key, &verified, now_ms);
}

/// Hands the message to a master, to a member's core still discovering, and to the registry, with their
/// clocks at its send time so that it passes the freshness check.
fn feed_cores(key: &SecretKey, verified: &community::Verified, now_ms: u64) {
    let now = Instant::now();
    let address = "10.0.0.1:7400".parse().expect("address");
    for (name, discovery) in [("fuzz-master", false), ("fuzz-newcomer", true)] {
        let community = verified.message().community.clone();
        let mut config = CommunityConfig::new(community, name, address, address, key.clone());
        config.discovery = discovery;
        let Ok(mut core) = Community::new(config, 1, now, now_ms) else {
            return;
        };
        core.start(now);
        core.handle(Input::Verified(verified), now);
    }
    let mut registry = Registry::new(RegistryConfig::new(address, key.clone()), RegistryState::default(), 1);
    let _ = registry.handle(verified, now_ms);
}
