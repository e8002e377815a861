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

/// Warnings about refused control-channel messages: one when the reason changes, then at most one every
/// 30 s while it lasts, with how many were refused meanwhile. Refusals are also counted (`/metrics`,
/// `tern_node_control_refused_total`); without a warning, a node with another `--cluster-key` or a clock
/// far off went unnoticed by the healthy nodes, which simply did not hear it.
#[derive(Debug, Default)]
pub struct RefusalWarnings(tern_admin::KeyedThrottle<&'static str>);

impl RefusalWarnings {
    /// Warns about `error`, refused by `node` on its control channel (`what`: `election` or
    /// `registration`), if one is due at `now`.
    pub fn refused(
        &mut self,
        node: &str,
        what: &str,
        error: &tern_wire::control::ControlError,
        now: std::time::Instant,
    ) {
        let Some(suppressed) = self.0.check(error.reason(), now) else {
            return;
        };
        match error {
            tern_wire::control::ControlError::Stale {
                sender,
                sent_at_ms,
                now_ms,
            } => {
                let offset_s = (i128::from(*sent_at_ms) - i128::from(*now_ms)) / 1000;
                let side = if offset_s > 0 { "ahead of" } else { "behind" };
                tracing::warn!(%node, %sender, offset_s, suppressed,
                    "{what} message refused: {sender}'s clock is {} s {side} this node's, outside the freshness window; \
                     keep the clocks of the segment's nodes in sync (NTP): the one that differs from the others is off",
                    offset_s.abs());
            }
            _ => tracing::warn!(%node, reason = error.reason(), %error, suppressed,
                "{what} message refused on the control channel: a sender with another --cluster-key, a forged or \
                 damaged datagram, or a replay"),
        }
    }
}

impl RefusalWarnings {
    /// Warns, if one is due at `now`, that `node` hears segment `other`'s messages on its control channel
    /// (`what`: `election` or `registration`): two segments share a multicast group and port. They stay
    /// apart (each node takes only its own segment's messages), but every message of one is work for the
    /// other's nodes, and a typo in `--segment` looks the same.
    pub fn other_segment(&mut self, node: &str, what: &str, own: &str, other: &str, now: std::time::Instant) {
        let Some(suppressed) = self.0.check("other-segment", now) else {
            return;
        };
        tracing::warn!(%node, segment = %own, other_segment = %other, suppressed,
            "{what} message of segment {other} heard on this node's control channel: two segments share it; give \
             each segment its own --control-channel (or check --segment for a typo)");
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
