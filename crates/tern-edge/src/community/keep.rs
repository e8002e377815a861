//! Whether a non-owner keeps its own copy of what a peer served it (issue 11, item 5): `never` (one copy
//! per object in the community), `always`, or `hot` (a copy once the object is asked for again here within
//! a window: popular objects are served locally, the long tail stays with its owner).

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Default window of the `hot` policy, seconds.
pub const DEFAULT_HOT_WINDOW_SECS: u64 = 60;
/// Most keys one generation of the `hot` policy remembers (8 bytes each); a full generation rotates early,
/// which shortens the window under a flood of distinct keys instead of growing memory.
const HOT_GENERATION_KEYS: usize = 200_000;

/// Whether a non-owner keeps its own copy of what an owner served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeepPolicy {
    /// Never: one copy per object in the community (the default).
    #[default]
    Never,
    /// Always: every edge that served an object keeps it too (fewer peer requests, less total capacity).
    Always,
    /// Hot: a non-owner keeps a copy on the second request for the object within the hot window
    /// (`hot_window_secs`).
    Hot,
}

impl KeepPolicy {
    /// The policy's name, as given on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeepPolicy::Never => "never",
            KeepPolicy::Always => "always",
            KeepPolicy::Hot => "hot",
        }
    }
}

impl std::str::FromStr for KeepPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "never" => Ok(KeepPolicy::Never),
            "always" => Ok(KeepPolicy::Always),
            "hot" => Ok(KeepPolicy::Hot),
            other => Err(format!("keep policy `{other}`: give never, always or hot")),
        }
    }
}

/// The keep decision of one edge: its policy and, for `hot`, the keys a peer served it recently.
pub(crate) struct Keeping {
    policy: KeepPolicy,
    recent: Mutex<Generations>,
    hasher: std::collections::hash_map::RandomState,
}

/// Keys seen in the current and the previous generation, each at most one window long: a key in either
/// was seen less than two windows ago (an approximation of the window that needs no timer per key).
struct Generations {
    window: Duration,
    started: Instant,
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl Keeping {
    /// The decision for `policy` with the hot window `window`.
    pub(crate) fn new(policy: KeepPolicy, window: Duration) -> Keeping {
        Keeping {
            policy,
            recent: Mutex::new(Generations {
                window,
                started: Instant::now(),
                current: HashSet::new(),
                previous: HashSet::new(),
            }),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The policy.
    pub(crate) fn policy(&self) -> KeepPolicy {
        self.policy
    }

    /// Whether this non-owner keeps the copy of `key` a peer just served it, at `now`.
    pub(crate) fn keeps(&self, key: &str, now: Instant) -> bool {
        match self.policy {
            KeepPolicy::Never => false,
            KeepPolicy::Always => true,
            KeepPolicy::Hot => {
                let point = self.hasher.hash_one(key);
                let Ok(mut recent) = self.recent.lock() else {
                    return false;
                };
                recent.seen_again(point, now)
            }
        }
    }
}

impl Generations {
    /// Records `point` at `now`; whether it was seen within the window before.
    fn seen_again(&mut self, point: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= self.window.saturating_mul(2) {
            self.previous.clear();
            self.current.clear();
            self.started = now;
        } else if elapsed >= self.window || self.current.len() >= HOT_GENERATION_KEYS {
            self.previous = std::mem::take(&mut self.current);
            self.started = now;
        }
        if self.current.contains(&point) || self.previous.contains(&point) {
            return true;
        }
        self.current.insert(point);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse() {
        assert_eq!("never".parse::<KeepPolicy>(), Ok(KeepPolicy::Never));
        assert_eq!("always".parse::<KeepPolicy>(), Ok(KeepPolicy::Always));
        assert_eq!("hot".parse::<KeepPolicy>(), Ok(KeepPolicy::Hot));
        assert!("sometimes".parse::<KeepPolicy>().is_err());
    }

    #[test]
    fn hot_keeps_on_the_second_request_within_the_window_only() {
        let start = Instant::now();
        let window = Duration::from_secs(60);
        let hot = Keeping::new(KeepPolicy::Hot, window);
        assert!(!hot.keeps("http://h/a", start), "first request: passed on");
        assert!(
            hot.keeps("http://h/a", start + Duration::from_secs(30)),
            "second within the window: kept"
        );
        assert!(!hot.keeps("http://h/b", start + Duration::from_secs(30)));
        // `b` was seen 90 s ago at its next request (one window later it is in the previous generation).
        assert!(hot.keeps("http://h/b", start + Duration::from_secs(90)));
        // Long after, everything is cold again.
        assert!(!hot.keeps("http://h/a", start + Duration::from_secs(400)));
        assert!(!Keeping::new(KeepPolicy::Never, window).keeps("http://h/a", start));
        assert!(Keeping::new(KeepPolicy::Always, window).keeps("http://h/a", start));
    }

    #[test]
    fn a_flood_of_distinct_keys_rotates_instead_of_growing() {
        let start = Instant::now();
        let hot = Keeping::new(KeepPolicy::Hot, Duration::from_secs(3600));
        for n in 0..(HOT_GENERATION_KEYS * 3) {
            hot.keeps(&format!("http://h/{n}"), start);
        }
        let recent = hot.recent.lock().expect("lock");
        assert!(recent.current.len() <= HOT_GENERATION_KEYS);
        assert!(recent.previous.len() <= HOT_GENERATION_KEYS);
    }
}
