//! A refusal's body as tern reads it from a peer, a node or the mover (`tern_wire::mover::ErrorAnswer::
//! reason_in`): any bytes give one bounded line for a log or a job's error, never a panic.
#![no_main]

use tern_wire::mover::ErrorAnswer;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let reason = ErrorAnswer::reason_in(data);
    assert!(reason.len() <= ErrorAnswer::MAX_BODY);
    assert!(!reason.contains('\n') && !reason.contains('\r'));
    assert_eq!(reason.trim(), reason);
});
