//! What the tokio drivers read from the operating system for their sans-IO cores ([`crate::election`],
//! [`crate::registration`], [`crate::mctp`]): the wall clock in Unix milliseconds and a random seed. The
//! cores themselves take both as parameters, so that tests replay them exactly.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 before it, saturating far after it).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A seed for a core's random choices, different in every call.
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // The standard library seeds its hash keys from the operating system's random source.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(unix_ms());
    hasher.finish()
}
