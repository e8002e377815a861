//! What crosses tern's process boundaries: shared secret keys (every `--...-key` flag reads the format
//! `tern keygen` writes), the authenticated frame every TCP protocol uses, the messages of the
//! synchronisation protocol (seed 001), and those of the content mover (seed 004: [`mover`], [`assignment`],
//! the control channel's election messages in [`control`], a segment's registration and reports in
//! [`segment`], the store-and-forward tree's notifications and reports in [`tree`]), and those of a cache
//! community and its directory of holders (seeds 002 and 003: [`community`]).

pub mod assignment;
pub mod community;
pub mod control;
pub mod frame;
pub mod key;
pub mod mctp;
pub mod mover;
pub mod segment;
pub mod sync;
pub mod tree;

pub use key::{KeyError, SecretKey};

/// `text` cut to at most `max` bytes, at a character boundary: how a reason read from the network is kept
/// to a bounded size ([`tree::reason`], [`mover::ErrorAnswer::reason_in`]).
pub fn cut_at(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
