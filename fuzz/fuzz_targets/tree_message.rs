//! The store-and-forward tree's messages (seed 004, Figs. 6 and 7: notifications, holding reports,
//! next-group-leader requests and answers, assignment status reports): any body decodes or is refused with
//! a named error, never a panic; what decodes encodes back to the same message; the nonce guard's
//! arithmetic on the sender's clock saturates and a second copy is refused; a notification's signature
//! check and source check never panic.
#![no_main]

use tern_wire::SecretKey;
use tern_wire::tree::{self, NextAnswer, NonceGuard, TreeLimits, TreeMessage};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = SecretKey::parse(&"00".repeat(32)).expect("key");
    let limits = TreeLimits::default();
    // As received from the network: the tag stops whatever was not made with the key.
    check(&key, data, &limits);
    // Behind a valid tag, so that the payload parser and the field checks are reached.
    check(&key, &tern_wire::frame::encode(&key, tree::KIND_TREE, data), &limits);
});

fn check(key: &SecretKey, bytes: &[u8], limits: &TreeLimits) {
    let Ok(envelope) = tree::decode(key, bytes, limits) else {
        return;
    };
    let unbounded = TreeLimits {
        max_message: usize::MAX,
        ..*limits
    };
    let again = tree::decode(key, &tree::encode(key, &envelope), &unbounded).expect("re-decodes");
    assert_eq!(again, envelope);
    let mut guard = NonceGuard::new(*limits);
    guard
        .check(&envelope, envelope.sent_at_ms)
        .expect("a fresh message is accepted");
    assert!(guard.check(&envelope, envelope.sent_at_ms).is_err(), "a second copy is a replay");
    let mover = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let notification = match &envelope.message {
        TreeMessage::Notify { notification } => Some(notification),
        TreeMessage::Answer {
            answer: NextAnswer::Serve { notification },
        } => Some(notification.as_ref()),
        _ => None,
    };
    if let Some(notification) = notification {
        let _ = notification.verify(&mover);
        let _ = notification.notification.source_allowed();
    }
}
