//! Rate limits for warnings that repeat while a fault lasts (an unreachable registry, a peer with the wrong
//! cluster key): a warning is logged when the state it reports changes, and at most once per interval while
//! that state persists, so an operator sees the fault at once without a line per message.

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
}

impl<S: PartialEq> Default for Throttle<S> {
    fn default() -> Self {
        Throttle::new(DEFAULT_WARN_INTERVAL)
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
}
