//! The segment messages' decoder (seed 004's registration, registration report, segment report and the
//! mover's answer): any datagram or report body decodes or is refused with a named error, never a panic;
//! what decodes encodes back to the same message; the replay guard refuses a second copy.
#![no_main]

use tern_wire::SecretKey;
use tern_wire::control::ReplayGuard;
use tern_wire::segment::{self, SegmentLimits};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = SecretKey::parse(&"00".repeat(32)).expect("key");
    // As received on the segment, and as a report body over HTTP (larger limit).
    for limits in [SegmentLimits::default(), SegmentLimits::http()] {
        check(&key, data, &limits);
    }
    // Behind a valid tag, so that the payload parser is reached; the first byte picks the kind.
    if let Some((selector, payload)) = data.split_first() {
        let kinds = [
            segment::KIND_REGISTRATION,
            segment::KIND_REGISTRATION_REPORT,
            segment::KIND_SEGMENT_REPORT,
            segment::KIND_REPORT_ANSWER,
        ];
        let kind = kinds[usize::from(*selector) % kinds.len()];
        check(&key, &tern_wire::frame::encode(&key, kind, payload), &SegmentLimits::http());
    }
});

fn check(key: &SecretKey, bytes: &[u8], limits: &SegmentLimits) {
    let Ok(verified) = segment::decode(key, bytes, limits) else {
        return;
    };
    let message = verified.into_message();
    let unbounded = SegmentLimits {
        max_len: usize::MAX,
        ..*limits
    };
    let again = segment::decode(key, &segment::encode(key, &message), &unbounded).expect("re-decodes");
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
}
