//! What goes into the election core and what comes out: inputs (datagrams, timers, an override),
//! outputs (datagrams to multicast, the timer to set, changes of state and leader).

use std::net::SocketAddr;
use std::time::Instant;

use tern_wire::control::{ControlMessage, Verified};

use super::{Resources, State};

/// The core's timers; each state has at most one, so setting a timer replaces the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// GL known: the leader's LAs stopped ([`Timers::leader_silence`](super::Timers::leader_silence)).
    LeaderSilence,
    /// GL unknown: this candidate's claim interval ran out; send LC.
    Claim,
    /// Voting open: the voting timeout ran out; this node leads.
    VotingOpen,
    /// GL is me: time for the next LA ([`Timers::la_period`](super::Timers::la_period)).
    LeaderAlive,
    /// Conceding: the winner's LA did not come ([`Timers::concede_timeout`](super::Timers::concede_timeout)).
    Concede,
}

/// The group leader as a member knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Its node name.
    pub name: String,
    /// Where members reach it.
    pub address: SocketAddr,
    /// The term it won; a later leader's term is higher.
    pub term: u64,
}

/// What happened, fed to [`Election::handle`](super::Election::handle).
#[derive(Debug, Clone)]
pub enum Input<'a> {
    /// A datagram received on the control channel, as received (any bytes).
    Datagram(&'a [u8]),
    /// A message already authenticated with the cluster key (decoded once for several cores).
    Verified(&'a Verified),
    /// A timer the core set ([`Output::SetTimer`]) is due. Stale or early firings are ignored.
    Timer(TimerKind),
    /// New measurements for the priority claim.
    Resources(Resources),
    /// An administrator's override (seed: "allow a system administrator to override ... this election"):
    /// `Some(node)` forces that node to lead and keeps every other node that hears of it from claiming;
    /// `None` returns to the normal election.
    Override(Option<String>),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Multicast this datagram on the control channel (`message` is what it says, for logs and tests).
    Multicast {
        /// The message.
        message: ControlMessage,
        /// Its encoding, tagged with the cluster key.
        datagram: Vec<u8>,
    },
    /// Call [`Election::handle`](super::Election::handle) with [`Input::Timer`]`(timer)` at `at`; replaces any earlier timer.
    SetTimer {
        /// Which timer.
        timer: TimerKind,
        /// When.
        at: Instant,
    },
    /// The pending timer is no longer wanted.
    CancelTimer,
    /// Fig. 5 moved from one state to another.
    StateChanged {
        /// The state left.
        from: State,
        /// The state entered.
        to: State,
    },
    /// The group leader as this node knows it changed (`None`: unknown, during an election).
    LeaderChanged(Option<Leader>),
}
