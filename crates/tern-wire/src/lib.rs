//! What crosses tern's process boundaries. For now: the shared secret keys that authenticate purges (and,
//! as the synchronisation and mover roles arrive, message tags). Every `--...-key` flag of tern reads the
//! format `tern keygen` writes.

pub mod key;

pub use key::{KeyError, SecretKey};
