//! Rate limits for warnings that repeat while a fault lasts (an unreachable registry, a peer with the wrong
//! cluster key): a warning is logged when the state it reports changes, and at most once per interval while
//! that state persists, so an operator sees the fault at once without a line per message.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How often a warning about a persisting state is repeated.
pub const DEFAULT_WARN_INTERVAL: Duration = Duration::from_secs(30);

/// Decides when a warning about a state is logged again. Time comes in as a parameter.
#[derive(Debug, Clone)]
pub struct Throttle<S> {
    every: Duration,
    /// The state last logged, and when.
    last: Option<(S, Instant)>,
    /// Occurrences not logged since.
    suppressed: u64,
}

impl<S: PartialEq> Throttle<S> {
    /// A throttle that repeats a persisting state's warning every `every`.
    pub const fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether an occurrence of `state` at `now` is to be logged: on a change of state, or once `every` has
    /// passed since the state was last logged. `Some(n)`: log it, `n` occurrences were not logged since the
    /// last one; `None`: stay quiet.
    pub fn check(&mut self, state: S, now: Instant) -> Option<u64> {
        let due = match &self.last {
            Some((logged, at)) => *logged != state || now.saturating_duration_since(*at) >= self.every,
            None => true,
        };
        if !due {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        self.last = Some((state, now));
        Some(suppressed)
    }

    /// The state last logged.
    pub fn last(&self) -> Option<&S> {
        self.last.as_ref().map(|(state, _)| state)
    }

    /// When a state was last logged.
    pub fn last_at(&self) -> Option<Instant> {
        self.last.as_ref().map(|(_, at)| *at)
    }
}

impl<S: PartialEq> Default for Throttle<S> {
    fn default() -> Self {
        Throttle::new(DEFAULT_WARN_INTERVAL)
    }
}

/// A [`Throttle`] per key (a refusal's reason): each key's warning is logged at most once per interval on
/// its own, so that warnings of two keys that interleave (a `replayed` between two `two-leaders`) do not
/// make each other due, as they would with one [`Throttle`] whose state is the key. Keys are few (a
/// refusal's static reasons); past 256 of them the oldest logged are forgotten.
#[derive(Debug, Clone)]
pub struct KeyedThrottle<K> {
    every: Duration,
    keys: HashMap<K, Throttle<()>>,
}

/// Keys a [`KeyedThrottle`] keeps.
const MAX_KEYS: usize = 256;

impl<K: Eq + Hash + Clone> KeyedThrottle<K> {
    /// Throttles that repeat each key's warning every `every`.
    pub fn new(every: Duration) -> Self {
        KeyedThrottle {
            every,
            keys: HashMap::new(),
        }
    }

    /// Whether an occurrence of `key` at `now` is to be logged: the first of the key, or once `every` has
    /// passed since the key was last logged. `Some(n)`: log it, `n` occurrences of this key were not
    /// logged since; `None`: stay quiet.
    pub fn check(&mut self, key: K, now: Instant) -> Option<u64> {
        if self.keys.len() >= MAX_KEYS && !self.keys.contains_key(&key) {
            let oldest = self
                .keys
                .iter()
                .min_by_key(|(_, throttle)| throttle.last_at())
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.keys.remove(&oldest);
            }
        }
        let every = self.every;
        self.keys
            .entry(key)
            .or_insert_with(|| Throttle::new(every))
            .check((), now)
    }
}

impl<K: Eq + Hash + Clone> Default for KeyedThrottle<K> {
    fn default() -> Self {
        KeyedThrottle::new(DEFAULT_WARN_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_logged_when_it_changes_and_then_once_per_interval() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut throttle = Throttle::new(Duration::from_secs(30));
        assert_eq!(throttle.check("unreachable", at(0)), Some(0));
        assert_eq!(throttle.check("unreachable", at(1)), None);
        assert_eq!(throttle.check("unreachable", at(29)), None);
        assert_eq!(throttle.check("unreachable", at(30)), Some(2));
        // A change is logged at once, whatever the interval.
        assert_eq!(throttle.check("refused", at(31)), Some(0));
        assert_eq!(throttle.check("unreachable", at(32)), Some(0));
        assert_eq!(throttle.last(), Some(&"unreachable"));
        assert_eq!(throttle.check("unreachable", at(33)), None);
    }

    /// helper-79's trial: a `replayed` refusal between two `two-leaders` ones made the second due at once.
    #[test]
    fn keys_interleaved_keep_their_own_interval() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut throttle = KeyedThrottle::new(Duration::from_secs(30));
        assert_eq!(throttle.check("two-leaders", at(0)), Some(0));
        assert_eq!(throttle.check("replayed", at(1)), Some(0));
        assert_eq!(throttle.check("two-leaders", at(2)), None);
        assert_eq!(throttle.check("replayed", at(3)), None);
        assert_eq!(throttle.check("two-leaders", at(30)), Some(1));
        assert_eq!(throttle.check("replayed", at(31)), Some(1));
        let mut many = KeyedThrottle::new(Duration::from_secs(30));
        for key in 0..1000u32 {
            assert_eq!(many.check(key, at(u64::from(key))), Some(0));
        }
        assert!(many.keys.len() <= MAX_KEYS);
    }
}
