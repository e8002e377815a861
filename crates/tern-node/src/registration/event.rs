//! What goes into the registration core and what comes out: inputs (the election's leader, datagrams,
//! timers, this node's profile, the mover's answers), outputs (datagrams to send, reports for the mover,
//! timers, an override for the election), and the core's role and counters.

use std::net::SocketAddr;
use std::time::Instant;

use tern_wire::segment::{Profile, ReportAnswer, SegmentMessage, Verified};

use crate::election::{Leader, Refusals};

/// The core's timers. Several run at once on a leader, so each kind is set and cancelled on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// Member: time to register (first registration, retry, keep-alive).
    Register,
    /// Leader: time to multicast the registration report, or, when no registration changed the list
    /// since the last one, to consider the round converged.
    Report,
    /// Leader: a member's keep-alives may have run out.
    Expiry,
    /// Leader: time for the periodic full segment report to the mover.
    Refresh,
    /// Leader: time to send the mover again a report it did not take.
    ReportRetry,
}

/// What happened, fed to [`Registration::handle`](super::Registration::handle).
#[derive(Debug, Clone)]
pub enum Input<'a> {
    /// The election's leader changed ([`crate::election::Output::LeaderChanged`]); `None` during an
    /// election.
    Leader(Option<Leader>),
    /// A datagram received on the control channel or on the registration socket (any bytes).
    Datagram(&'a [u8]),
    /// A message already authenticated with the cluster key.
    Verified(&'a Verified),
    /// A timer the core set is due. Stale or early firings are ignored.
    Timer(TimerKind),
    /// This node's current profile (free disk, versions held, ...), sent with its next registration.
    Profile(Profile),
    /// The mover took the report with this answer (already authenticated and matched to the report by
    /// the driver).
    ReportAnswered(ReportAnswer),
    /// The report with this sequence number did not reach the mover, or it refused it.
    ReportFailed {
        /// The report's sequence number.
        seq: u64,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram to `to` (a registration to the leader) over unicast UDP.
    Unicast {
        /// The leader's registration address.
        to: SocketAddr,
        /// The message.
        message: SegmentMessage,
        /// Its encoding, tagged with the cluster key.
        datagram: Vec<u8>,
    },
    /// Multicast this datagram on the control channel (the registration report).
    Multicast {
        /// The message.
        message: SegmentMessage,
        /// Its encoding.
        datagram: Vec<u8>,
    },
    /// Send this report to the mover (`POST /api/segments/report`) and feed back
    /// [`Input::ReportAnswered`] or [`Input::ReportFailed`].
    Report {
        /// The report.
        message: SegmentMessage,
        /// Its encoding: the request's body.
        body: Vec<u8>,
    },
    /// Call [`Registration::handle`](super::Registration::handle) with [`Input::Timer`]`(timer)` at `at`;
    /// replaces the earlier timer of that kind.
    SetTimer {
        /// Which timer.
        timer: TimerKind,
        /// When.
        at: Instant,
    },
    /// The timer of this kind is no longer wanted.
    CancelTimer(TimerKind),
    /// Tell the election of the administrator's choice of leader ([`crate::election::Input::Override`]).
    Override(Option<String>),
}

/// This node's part in its segment's registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// No leader known (an election is going on).
    Idle,
    /// A member registering with the leader.
    Member,
    /// The group leader, collecting registrations.
    Leader,
}

impl Role {
    /// A word for logs and the status document.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Idle => "idle",
            Role::Member => "member",
            Role::Leader => "leader",
        }
    }
}

/// What the core has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams refused, by reason (the election's reasons).
    pub refused: Refusals,
    /// Registrations that reached this node while it did not lead.
    pub not_leader: u64,
    /// Registration reports from a node that is not this member's leader.
    pub foreign_reports: u64,
    /// Registrations sent.
    pub registrations_sent: u64,
    /// Registrations taken as leader.
    pub registrations_heard: u64,
    /// Registration reports multicast.
    pub reports_multicast: u64,
    /// Registration reports heard from the leader.
    pub reports_heard: u64,
    /// Registration reports that did not list this member.
    pub missing_from_report: u64,
    /// Reports sent to the mover.
    pub mover_reports: u64,
    /// Reports the mover did not take.
    pub mover_reports_failed: u64,
    /// Members counted offline after their keep-alives ran out.
    pub members_expired: u64,
}
