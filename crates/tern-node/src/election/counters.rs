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
