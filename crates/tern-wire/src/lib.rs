//! What crosses tern's process boundaries: shared secret keys (every `--...-key` flag reads the format
//! `tern keygen` writes), the authenticated frame every TCP protocol uses, and the messages of the
//! synchronisation protocol (seed 001).

pub mod assignment;
pub mod control;
pub mod frame;
pub mod key;
pub mod mover;
pub mod sync;

pub use key::{KeyError, SecretKey};
