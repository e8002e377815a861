//! Time and chance as the sans-IO cores see them: the wall clock anchored to the core's `now` (messages
//! carry Unix milliseconds for freshness checks; tests with a fake clock stay deterministic) and a seeded
//! random source (incarnation ids), so that a seed replays a run exactly.

use std::time::{Duration, Instant};

/// The Unix time (milliseconds) at one `Instant`; between calls it advances with the core's `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    anchor: Instant,
    anchor_ms: u64,
}

impl WallClock {
    /// `unix_ms` milliseconds since the Unix epoch at `now`.
    pub fn new(now: Instant, unix_ms: u64) -> WallClock {
        WallClock {
            anchor: now,
            anchor_ms: unix_ms,
        }
    }

    /// The Unix time in milliseconds at `now`, saturating.
    pub fn ms_at(&self, now: Instant) -> u64 {
        if now >= self.anchor {
            self.anchor_ms.saturating_add(millis(now - self.anchor))
        } else {
            self.anchor_ms.saturating_sub(millis(self.anchor - now))
        }
    }
}

/// Whole milliseconds of `duration`, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// SplitMix64: a small, seedable generator.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_follows_now_both_ways_and_saturates() {
        let start = Instant::now();
        let clock = WallClock::new(start + Duration::from_secs(10), 5_000);
        assert_eq!(clock.ms_at(start + Duration::from_secs(11)), 6_000);
        assert_eq!(clock.ms_at(start + Duration::from_secs(8)), 3_000);
        assert_eq!(clock.ms_at(start), 0);
        let late = WallClock::new(start, u64::MAX - 1);
        assert_eq!(late.ms_at(start + Duration::from_secs(1)), u64::MAX);
    }

    #[test]
    fn a_seed_replays_the_same_numbers() {
        let mut first = SplitMix64(7);
        let mut second = SplitMix64(7);
        assert_eq!(first.next_u64(), second.next_u64());
        assert_ne!(first.next_u64(), SplitMix64(8).next_u64());
    }
}
