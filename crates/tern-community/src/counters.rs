//! What a community core counts: messages refused by reason (the same reasons as the control channel's,
//! [`ControlError::reason`]), and joins, elections and location requests.

use tern_wire::control::ControlError;

/// Community messages refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Wrong or missing cluster key tag (or damaged bytes): a peer without the key can neither join,
    /// ping, vote nor be listed.
    pub bad_tag: u64,
    /// Over the size limit.
    pub oversized: u64,
    /// Not a well-formed community message.
    pub malformed: u64,
    /// Send time outside the freshness window.
    pub stale: u64,
    /// Already accepted before.
    pub replayed: u64,
    /// For another community sharing the channel.
    pub other_community: u64,
    /// From another process using this peer's name.
    pub duplicate_name: u64,
    /// Spoken under an epoch older than this peer's (a deposed master's list, an old election): fenced.
    pub stale_epoch: u64,
}

impl Refusals {
    /// Counts one message refused by the decoder or the replay guard, by its reason.
    pub fn count(&mut self, error: &ControlError) {
        match error.reason() {
            "bad-tag" => self.bad_tag += 1,
            "oversized" => self.oversized += 1,
            "stale" => self.stale += 1,
            "replayed" => self.replayed += 1,
            _ => self.malformed += 1,
        }
    }

    /// All refusals.
    pub fn total(&self) -> u64 {
        self.bad_tag
            + self.oversized
            + self.malformed
            + self.stale
            + self.replayed
            + self.other_community
            + self.duplicate_name
            + self.stale_epoch
    }
}

/// What the core has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages refused.
    pub refused: Refusals,
    /// Messages handed to the driver to send.
    pub sent: u64,
    /// Messages accepted.
    pub accepted: u64,
    /// As master: `REQUESTTOJOIN`s allowed.
    pub joins_allowed: u64,
    /// As master: `REQUESTTOJOIN`s denied (any reason, a bad tag included).
    pub joins_denied: u64,
    /// As newcomer: denies received.
    pub denied: u64,
    /// As master: members dropped for silence.
    pub members_dropped: u64,
    /// Elections this peer started or took part in.
    pub elections: u64,
    /// Elections this peer won (it became master by election or nomination).
    pub elections_won: u64,
    /// Elections aborted because the master answered (claim 37).
    pub elections_aborted: u64,
    /// Times this peer created a community (claim 51).
    pub communities_created: u64,
    /// As master: location requests answered.
    pub location_requests: u64,
    /// As master: holding registrations and deregistrations applied.
    pub holdings: u64,
    /// Times this peer became a member after looking for its community (a start, a return after being
    /// cut off or dropped) or after being master (two parts of a split community merging): each may
    /// follow purges it missed. A member that follows a newly elected master is not counted.
    pub joined: u64,
}
