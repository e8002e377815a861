//! Local distribution inside a LAN network segment (seed `004_1419c51402506f7e.txt`, "local
//! distribution" and the status reporting after it): the group leader (GL) sends an assignment once on
//! the segment's multicast *data channel* and repairs what members lost — a lightweight reliable multicast
//! protocol (MCTP) — and then collects every member's report of applying it. The messages are
//! [`tern_wire::mctp`]'s.
//!
//! Three sans-IO cores in the manner of [`crate::election`]: each takes an input (a datagram, a timer,
//! an instruction) and the current [`Instant`] and returns [`Output`]s (datagrams to multicast or unicast,
//! timers to set, events); randomness comes from a seed, the wall clock (for the messages' freshness
//! stamps) from the Unix time given at construction.
//!
//! - [`Sender`] (the GL): a *session* per assignment. It announces the session (ID, size, name, rate,
//!   frame size, signed hash), sends pass 1 at its rate (a token bucket whose refills are timers), and at
//!   the end of the pass asks for *status reports* (the request goes twice: its loss would stall the
//!   pass). Members answer after a random delay of up to about a second — the GL asks for a spread that
//!   grows with the members asked, so a small segment turns a pass around in tens of milliseconds — with
//!   their NACK list: per *block* of frames, how many they still need. The GL aggregates the NACKs as soon
//!   as every member asked has answered, or when the report window ends (*NACK aggregation*), and sends
//!   the next pass — the pass (retransmission) number incremented — of *parity frames* ([`parity`],
//!   erasure-coded as in NORM, RFC 5740/5510): per block as many new parity frames as the member that
//!   lacks the most needs, each of which repairs a different loss at each member, after adjusting its rate
//!   by the NACKs (multiplicative decrease when loss rises, additive increase
//!   when it falls, between a floor and the configured rate). It ends when all members report complete;
//!   when the number of missing frames has not fallen for [`SenderConfig::stall_passes`] passes (the
//!   seed's ten tries) it ends with a *quorum* if enough members completed, and otherwise gives up and
//!   reports the problem ([`Outcome`] names the members that did not complete).
//! - [`Receiver`] (a member): keeps a [`bitmap`] of the frames received (any pass, any order,
//!   duplicates) and writes each frame's data at its offset into a [`Sink`] its [`Spool`] opens, so memory
//!   stays bounded for any size up to 4 GB; puts parity frames in the sink too while their block needs
//!   them; answers "complete" once every block holds as many frames as it has source frames, and hands
//!   the assignment on with a [`rebuild::RebuildPlan`] that the node carries out as it verifies it
//!   ([`rebuild`]); answers "complete" at once when it already holds the
//!   assignment (by hash); a member that joins late drops frames before the announcement it hears and
//!   later passes fill them. Once the assignment is applied it sends its *apply report* at a random
//!   multiple of an interval (no "report implosion"), and again when the GL asks. Asked by name for the
//!   apply report of a session it does not follow (never heard of, or lost in a restart), it answers
//!   "applied" when its spool's record ([`applied`]) says so and "not received" otherwise, so that the
//!   GL stops waiting for it.
//! - [`Collector`] (the GL's *report collection*): re-requests missing apply reports by unicast, or, when
//!   more than a configurable share is missing, by one multicast request listing the members that
//!   reported or those that did not, whichever is shorter; repeats up to a maximum, then outputs its
//!   *assignment status report*.

mod addresses;
pub mod applied;
pub mod bitmap;
mod collect;
mod config;
pub mod driver;
pub(crate) mod node;
pub mod parity;
pub mod rebuild;
mod receiver;
mod sender;
#[cfg(test)]
mod sim;
mod stamp;
#[cfg(test)]
mod tests;

pub use addresses::MemberAddresses;
pub use applied::AppliedLog;
pub use collect::{AssignmentStatusReport, CollectInput, Collector, addressees};
pub use config::{CollectConfig, ConfigError, Identity, ReceiverConfig, SenderConfig};
pub use receiver::{Receiver, ReceiverInput, Sink, Spool};
pub use sender::{FrameSource, Outcome, Sender, SenderInput, SessionReport, SessionStart};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

/// What a core's timer is for; with the assignment it names one timer ([`Timer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// GL: the token bucket holds enough for the next frames.
    Send,
    /// GL: the report window after a pass ended.
    ReportWindow,
    /// Member: time to send the status report (the random delay after a pass ended).
    StatusReport,
    /// Member: time to send the apply report.
    ApplyReport,
    /// GL: time to look for missing apply reports.
    Collect,
}

/// One timer of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer {
    /// The Content Assignment ID.
    pub assignment: u64,
    /// Which timer.
    pub kind: TimerKind,
}

/// What happened, for the driver and the mover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// GL: a session ended.
    SessionEnded(SessionReport),
    /// Member: every frame needed arrived and was written; the driver rebuilds the frames of `rebuild`
    /// as it verifies the signed hash ([`rebuild::rebuild`]), hands the assignment to the content
    /// interpreter, then gives [`ReceiverInput::Applied`].
    Received {
        /// The Content Assignment ID.
        assignment: u64,
        /// Its name (transfer id).
        name: String,
        /// Its signed hash, hex.
        hash: String,
        /// The lost source frames to rebuild from the parity frames held.
        rebuild: rebuild::RebuildPlan,
    },
    /// Member: it already held the announced assignment and answered "complete".
    AlreadyHeld {
        /// The Content Assignment ID.
        assignment: u64,
    },
    /// Member: its spool could not be written, so it declined the session (the GL was told, and sends
    /// the assignment by unicast): the driver lets the session's spool entry go.
    Declined {
        /// The Content Assignment ID.
        assignment: u64,
    },
    /// GL: report collection ended.
    CollectionEnded(AssignmentStatusReport),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Multicast this datagram on the data channel.
    Multicast(Vec<u8>),
    /// GL: unicast this datagram to the member of this name (the driver knows its address from its
    /// messages or its registration: [`MemberAddresses`]).
    ToMember {
        /// The member's node name.
        member: String,
        /// The datagram.
        datagram: Vec<u8>,
    },
    /// Member: unicast this datagram to the GL at this address (from its announcement).
    ToLeader {
        /// The GL's address.
        address: SocketAddr,
        /// The datagram.
        datagram: Vec<u8>,
    },
    /// Call the core's `handle` with this timer at `at`; replaces an earlier setting of the same timer.
    SetTimer {
        /// Which timer.
        timer: Timer,
        /// When.
        at: Instant,
    },
    /// Something happened.
    Event(Event),
}

/// What a core counted since it started (the `/metrics` of local distribution).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams refused or ignored, by reason (`bad-tag`, `replayed`, `unannounced`, `sequence-outside`, …).
    pub refused: BTreeMap<&'static str, u64>,
    /// GL: sessions started.
    pub sessions: u64,
    /// GL: passes sent (pass 1 included).
    pub passes: u64,
    /// GL: data frames sent.
    pub frames_sent: u64,
    /// GL: parity frames sent in passes after the first.
    pub frames_repaired: u64,
    /// GL: frames members said they need in status reports (summed over members).
    pub nacks: u64,
    /// GL: status reports received.
    pub status_reports: u64,
    /// GL: report requests sent by unicast.
    pub unicast_requests: u64,
    /// GL: report requests multicast.
    pub multicast_requests: u64,
    /// Member: new source frames received and written.
    pub frames_received: u64,
    /// Member: lost source frames a complete session hands on to be rebuilt from parity frames (the
    /// node rebuilds them as it verifies the assignment).
    pub frames_rebuilt: u64,
    /// Member: frames received again.
    pub duplicates: u64,
}

impl Counters {
    /// Counts one refusal.
    pub fn refuse(&mut self, reason: &'static str) {
        *self.refused.entry(reason).or_default() += 1;
    }

    /// Refusals for `reason`.
    pub fn refused(&self, reason: &str) -> u64 {
        self.refused.get(reason).copied().unwrap_or(0)
    }
}
