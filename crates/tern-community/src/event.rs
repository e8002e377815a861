//! What goes into a community core and what comes out: inputs (messages, timers, the edge's requests),
//! outputs (messages to send to whom, timers to set, events for the edge and its `/status`).

use std::net::SocketAddr;
use std::time::Instant;

use tern_wire::community::{CommunityMessage, DenyReason, Epoch, LocationResponse, Peer, Verified};

/// A peer's part in its community.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Looking for its community: asking the registry (claim 51) or probing with `CRMSG_WAKEUP` (claim 54).
    Discovering,
    /// Sent `CRMSG_REQUESTTOJOIN` to a master, waiting for allow or deny (claim 59).
    Joining,
    /// In the peer list of a master it pings (claim 9).
    Member,
    /// Found the master silent and holding an election, or waiting for its winner (claim 35).
    Electing,
    /// The community's master (claim 10): admits peers, keeps the peer list, the allocation table and the
    /// directory of holders.
    Master,
    /// A master leaving on purpose, waiting for its nominee to take over (`CRMSG_NOMINATEMASTER`).
    Leaving,
    /// Out of the community; the core does nothing more.
    Left,
}

impl Role {
    /// The role's name, for logs and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Discovering => "discovering",
            Role::Joining => "joining",
            Role::Member => "member",
            Role::Electing => "electing",
            Role::Master => "master",
            Role::Leaving => "leaving",
            Role::Left => "left",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The core's timers; each kind has at most one deadline, and setting one replaces the previous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// Discovering: the registry's or the probe's answers are due, or a denied newcomer's back-off ends.
    Discovery,
    /// Joining: send `CRMSG_REQUESTTOJOIN` again.
    JoinRetry,
    /// Member (or waiting for an election's winner): send the next `CRMSG_PEERPING`.
    Ping,
    /// Member: the master's silence threshold (claim 32).
    MasterSilence,
    /// Master: drop members silent past their threshold.
    Sweep,
    /// Master: refresh the registry and multicast `CRMSG_WAKEUP`.
    Announce,
    /// Electing: the candidacies are in, or the winner's peer list is overdue.
    Election,
    /// Leaving: repeat `CRMSG_NOMINATEMASTER`, or go.
    Leave,
}

/// What happened, fed to [`Community::handle`](crate::Community::handle).
#[derive(Debug, Clone)]
pub enum Input<'a> {
    /// A datagram received (any bytes), with its source address (a request that fails the tag check is
    /// denied there).
    Datagram {
        /// The bytes as received.
        bytes: &'a [u8],
        /// Where they came from.
        from: SocketAddr,
    },
    /// A message already authenticated with the cluster key (decoded once for several cores).
    Verified(&'a Verified),
    /// A timer the core set ([`Output::SetTimer`]) is due; early or replaced firings are ignored.
    Timer(TimerKind),
    /// Leave the community on purpose (SIGTERM): a master nominates its successor first.
    Leave,
    /// Where is the object with this cache key (seed 003's location request)? The answer comes as
    /// [`Event::Located`].
    Locate {
        /// The cache key.
        key: &'a str,
        /// The request's host name.
        host: &'a str,
    },
    /// This peer stored copies of these objects (seed 003: "notifying said retrieving server of holding").
    Held(&'a [String]),
    /// This peer evicted or purged its copies of these objects.
    Released(&'a [String]),
}

/// What the driver must do, and what the edge should know.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `message` (encoded with the cluster key, [`tern_wire::community::encode`]) to `to`.
    Send {
        /// The destination's community address.
        to: SocketAddr,
        /// The message.
        message: CommunityMessage,
    },
    /// Multicast `message` on the discovery group (`CRMSG_WAKEUP`).
    Multicast {
        /// The message.
        message: CommunityMessage,
    },
    /// Send `message` to the registry; its answer comes back as an input.
    Registry {
        /// The message.
        message: CommunityMessage,
    },
    /// Call [`Community::handle`](crate::Community::handle) with [`Input::Timer`]`(timer)` at `at`;
    /// replaces that kind's earlier deadline.
    SetTimer {
        /// Which timer.
        timer: TimerKind,
        /// When.
        at: Instant,
    },
    /// That kind's deadline is no longer wanted.
    CancelTimer(TimerKind),
    /// Something the edge (routing, `/status`, `/metrics`) should know.
    Event(Event),
}

/// Changes the edge acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The peer's role changed.
    RoleChanged {
        /// The role left.
        from: Role,
        /// The role entered.
        to: Role,
    },
    /// The master as this peer knows it (`None`: unknown, during discovery or an election).
    MasterChanged(Option<Peer>),
    /// A new peer list and allocation table are in force (the edge re-reads them).
    PeerListChanged {
        /// Their epoch.
        epoch: Epoch,
    },
    /// This peer created its community (claims 51, 60): no community was found.
    Created {
        /// The new master's epoch.
        epoch: Epoch,
    },
    /// The master denied this peer's request to join.
    Denied(DenyReason),
    /// An election started or was joined, for this term.
    ElectionHeld {
        /// The term stood for.
        term: u64,
    },
    /// The master answered: the election was aborted (claim 37).
    ElectionAborted,
    /// This peer won an election (or was nominated) and is master for this term.
    ElectionWon {
        /// The term.
        term: u64,
    },
    /// The answer to a location request: from the master, or made locally when this peer is master (or
    /// knows no master: then it says "go to origin").
    Located {
        /// The sequence number of the request sent ([`Output::Send`]'s message), `None` when answered
        /// locally.
        in_reply_to: Option<u64>,
        /// The answer.
        response: LocationResponse,
    },
    /// The peer left the community; the driver may stop.
    Left,
}
