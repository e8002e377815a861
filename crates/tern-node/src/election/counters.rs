//! What the election core counts: messages sent and heard, elections won, and refusals by reason.

/// Control messages refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Wrong or missing cluster key tag (or damaged bytes).
    pub bad_tag: u64,
    /// Over the datagram limit.
    pub oversized: u64,
    /// Not a well-formed LA or LC.
    pub malformed: u64,
    /// Send time outside the freshness window.
    pub stale: u64,
    /// Already accepted before.
    pub replayed: u64,
    /// From another segment sharing the channel.
    pub other_segment: u64,
    /// From another process using this node's name.
    pub duplicate_name: u64,
}

impl Refusals {
    /// All refusals.
    pub fn total(&self) -> u64 {
        self.bad_tag
            + self.oversized
            + self.malformed
            + self.stale
            + self.replayed
            + self.other_segment
            + self.duplicate_name
    }
}

/// What the core has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages refused.
    pub refused: Refusals,
    /// LAs sent.
    pub leader_alive_sent: u64,
    /// LCs sent.
    pub leader_claim_sent: u64,
    /// LAs accepted from other nodes.
    pub leader_alive_heard: u64,
    /// LCs accepted from other nodes.
    pub leader_claim_heard: u64,
    /// Times this node entered "GL is me".
    pub elections_won: u64,
}

impl Refusals {
    /// Counts one message refused by the control channel's decoder or replay guard, by its reason.
    pub fn count(&mut self, error: &tern_wire::control::ControlError) {
        match error.reason() {
            "bad-tag" => self.bad_tag += 1,
            "oversized" => self.oversized += 1,
            "stale" => self.stale += 1,
            "replayed" => self.replayed += 1,
            _ => self.malformed += 1,
        }
    }
}

/// The wall clock as the sans-IO cores see it: the Unix time (milliseconds) at one `Instant`, so that the
/// time stamped on a message (and checked for freshness) follows the core's `now` and tests with a fake
/// clock stay deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    anchor: std::time::Instant,
    anchor_ms: u64,
}

impl WallClock {
    /// `unix_ms` milliseconds since the Unix epoch at `now`.
    pub fn new(now: std::time::Instant, unix_ms: u64) -> WallClock {
        WallClock {
            anchor: now,
            anchor_ms: unix_ms,
        }
    }

    /// The Unix time in milliseconds at `now`, saturating.
    pub fn ms_at(&self, now: std::time::Instant) -> u64 {
        let millis = |duration: std::time::Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        if now >= self.anchor {
            self.anchor_ms.saturating_add(millis(now - self.anchor))
        } else {
            self.anchor_ms.saturating_sub(millis(self.anchor - now))
        }
    }
}
