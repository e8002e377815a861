//! One peer's part in a cache community, seed `002_82dbe7a209926976.txt`, as a sans-IO core in the manner
//! of quinn-proto and foca: [`Community::handle`] takes an [`Input`] (a message, a timer, the edge's
//! request) and the current [`Instant`], and returns [`Output`]s (messages to send to whom, timers to set,
//! [`Event`]s). The seed's mechanisms, and where they live:
//!
//! - **Discovery** (claims 51–74, 95–100, `discovery.rs`): ask the registry for the community list and
//!   wait [`crate::Timers::registry_timeout`]; without a registry, or when it is silent, multicast
//!   `CRMSG_WAKEUP` and wait [`crate::Timers::probe_timeout`] for masters' answers; join the community
//!   found, or create it (`CRMSG_ADDMASTER`) and listen for joins.
//! - **Joining and the peer list** (claims 1–30, `membership.rs` for the master, `member.rs` for the
//!   member): `CRMSG_REQUESTTOJOIN` → allow (the new peer list) or deny (full, name clash, wrong tag); the
//!   master recomputes the allocation table on every join and leave and sends `CRMSG_UPDATEPEERLIST` with
//!   the next [`Epoch`] to every member.
//! - **Liveness** (claims 31–34): members send `CRMSG_PEERPING` every [`crate::Timers::ping_interval`]; the
//!   master answers (and sends its list to a member whose copy is older), and drops members silent for
//!   [`crate::Timers::member_silence`] (a new table, the next epoch).
//! - **Election** (claims 35–50, `election.rs`): a member that hears nothing from its master for
//!   [`crate::Timers::master_silence`] sends `CRMSG_HOLDELECTION` for the next term to every peer; peers
//!   answer with their candidacy, or abort it: the master itself ("alive", claim 37) or a member that heard
//!   it a moment ago. After [`crate::Timers::election`] the best ranked candidate ([`crate::rank`]:
//!   priority, capacity, weight, uptime, name) takes over: a new peer list of the candidates, without the
//!   dead master (its portions reallocated), and `CRMSG_REPLACEMASTER` to the registry. A master leaving on
//!   purpose sends `CRMSG_NOMINATEMASTER`.
//! - **Fencing**: a master's claim is its term, then its rank. A list, election or answer spoken under an
//!   older claim changes nothing and is answered with a deny naming the newer master. A master that learns
//!   of a better claim (from a peer, or another master's `CRMSG_WAKEUP`) steps down and joins it as a
//!   member; its members follow when they next ping it. When the registry's answer to its periodic refresh
//!   names a better master, it steps down once that master admits it; a recorded master that does not
//!   answer (dead) or ranks lower is superseded with the next term, which the registry records.
//! - **Content location** (claims 75–94, seed 003, `location.rs`): the master keeps the directory of
//!   holders and answers location requests from it and the allocation table.

mod discovery;
mod election;
mod location;
mod member;
mod membership;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use tern_wire::community::{
    self, CommunityBody, CommunityMessage, Deny, DenyReason, Epoch, KIND_REQUEST_TO_JOIN, Peer, PeerList,
};
use tern_wire::control::{ControlError, ReplayGuard};
use tern_wire::frame::{self, FrameError};
use tracing::{debug, info};

use crate::allocation::{Allocation, allocate};
use crate::clock::{SplitMix64, WallClock};
use crate::config::{CommunityConfig, ConfigError};
use crate::counters::Counters;
use crate::directory::Directory;
use crate::event::{Event, Input, Output, Role, TimerKind};
use crate::rank::same_peer;

/// A peer list in force: the master's own, or a member's copy.
#[derive(Debug, Clone)]
struct View {
    epoch: Epoch,
    master: Peer,
    list: PeerList,
    allocation: Allocation,
}

impl View {
    /// `None` when the list does not list its master (the decoder refuses such lists).
    fn new(epoch: Epoch, list: PeerList) -> Option<View> {
        let master = list.master_peer()?.clone();
        let allocation = Allocation::new(list.table.clone());
        Some(View {
            epoch,
            master,
            list,
            allocation,
        })
    }

    /// Whether `peer` (this process run of it) is listed.
    fn lists(&self, peer: &Peer) -> bool {
        self.list
            .peer(&peer.name)
            .is_some_and(|listed| listed.incarnation == peer.incarnation)
    }

    /// The listed peers other than `name`.
    fn others(&self, name: &str) -> Vec<Peer> {
        self.list
            .peers
            .iter()
            .filter(|peer| peer.name != name)
            .cloned()
            .collect()
    }
}

/// A request to join in flight.
#[derive(Debug, Clone)]
struct Joining {
    target: Peer,
    /// The target's epoch as last heard (its claim while this peer joins).
    epoch: Epoch,
    attempts: u32,
}

/// An election this peer holds or takes part in.
#[derive(Debug, Clone)]
struct Round {
    term: u64,
    /// The master found silent.
    silent_master: String,
    /// Candidacies heard for `term`, this peer's among them.
    candidates: BTreeMap<String, Peer>,
    /// The winner, once decided, whose peer list is awaited.
    awaiting: Option<Peer>,
}

/// A master leaving on purpose.
#[derive(Debug, Clone)]
struct Leaving {
    nominee: Peer,
    until: Instant,
}

/// Where discovery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Waiting for the registry's community list.
    Registry,
    /// Waiting for answers to a `CRMSG_WAKEUP`.
    Probe,
    /// A denied newcomer waits before it tries again.
    Backoff,
}

/// Which claim a master makes to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegistryClaim {
    Add,
    Replace,
}

/// One peer's community core. See the module header.
#[derive(Debug)]
pub struct Community {
    config: CommunityConfig,
    me: Peer,
    guard: ReplayGuard,
    wall_clock: WallClock,
    seq: u64,
    role: Role,
    view: Option<View>,
    /// The highest term seen in any message or record.
    highest_term: u64,
    timers: BTreeMap<TimerKind, Instant>,
    /// Member: when the master last spoke.
    last_heard_master: Instant,
    /// Master: when each member last pinged.
    members_heard: BTreeMap<String, Instant>,
    /// Master: the election term for which "master alive" went to every member.
    alive_told_for: u64,
    directory: Directory,
    phase: Phase,
    /// Probe answers: masters and their epochs.
    answers: Vec<(Peer, Epoch)>,
    /// A master this peer failed to join (the registry may still name it).
    failed_master: Option<String>,
    joining: Option<Joining>,
    /// Master: a better master the registry records, asked to admit this peer before it steps down (the
    /// record may name a dead master).
    contender: Option<Joining>,
    round: Option<Round>,
    leaving: Option<Leaving>,
    registry_claim: RegistryClaim,
    registry_acknowledged: bool,
    /// Whether this run warned that the registry refused to record the community (full).
    registry_full_warned: bool,
    /// Whether this run warned that the master's table divides content otherwise than this peer's own
    /// settings (`--replicas`, host portions); reset when they agree again.
    table_differs_warned: bool,
    /// The master the last [`Event::MasterChanged`] named.
    announced_master: Option<Peer>,
    counters: Counters,
}

impl Community {
    /// A core in [`Role::Discovering`], not yet started. `seed` gives its process run's random id;
    /// `unix_ms` is the wall clock at `now`, in milliseconds since the Unix epoch.
    pub fn new(config: CommunityConfig, seed: u64, now: Instant, unix_ms: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let incarnation = SplitMix64(seed).next_u64();
        let me = Peer {
            name: config.name.clone(),
            address: config.address,
            http: config.http,
            weight: config.weight,
            priority: config.priority,
            capacity: config.capacity,
            started_at_ms: unix_ms,
            incarnation,
        };
        Ok(Community {
            guard: ReplayGuard::new(config.limits.replay()),
            directory: Directory::new(config.directory),
            config,
            me,
            wall_clock: WallClock::new(now, unix_ms),
            seq: 0,
            role: Role::Discovering,
            view: None,
            highest_term: 0,
            timers: BTreeMap::new(),
            last_heard_master: now,
            members_heard: BTreeMap::new(),
            alive_told_for: 0,
            phase: Phase::Idle,
            answers: Vec::new(),
            failed_master: None,
            joining: None,
            contender: None,
            round: None,
            leaving: None,
            registry_claim: RegistryClaim::Add,
            registry_acknowledged: false,
            registry_full_warned: false,
            table_differs_warned: false,
            announced_master: None,
            counters: Counters::default(),
        })
    }

    /// Starts discovery: asks the registry, probes, or (with neither) creates the community at once.
    pub fn start(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        self.discover(now, &mut out);
        out
    }

    /// Tells the core the wall clock (milliseconds since the Unix epoch) at `now`.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall_clock = WallClock::new(now, unix_ms);
    }

    /// Handles one input and says what to do.
    pub fn handle(&mut self, input: Input<'_>, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        if self.role == Role::Left {
            return out;
        }
        match input {
            Input::Datagram { bytes, from } => match community::decode(&self.config.key, bytes, &self.config.limits) {
                Ok(verified) => self.on_message(verified.message(), now, &mut out),
                Err(error) => self.refuse_datagram(&error, bytes, from, now, &mut out),
            },
            Input::Verified(verified) => self.on_message(verified.message(), now, &mut out),
            Input::Timer(kind) => self.on_timer(kind, now, &mut out),
            Input::Leave => self.leave(now, &mut out),
            Input::Locate { key, host } => self.locate(key, host, now, &mut out),
            Input::Held(keys) => self.holding(keys, true, now, &mut out),
            Input::Released(keys) => self.holding(keys, false, now, &mut out),
        }
        out
    }

    /// The peer's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// This peer's entry as it goes into peer lists.
    pub fn me(&self) -> &Peer {
        &self.me
    }

    /// The master this peer follows (itself when master or leaving); `None` while discovering, joining
    /// or electing.
    pub fn master(&self) -> Option<&Peer> {
        match self.role {
            Role::Member | Role::Master | Role::Leaving => self.view.as_ref().map(|view| &view.master),
            _ => None,
        }
    }

    /// The epoch of the peer list in force (kept while joining or electing).
    pub fn epoch(&self) -> Option<Epoch> {
        self.view.as_ref().map(|view| view.epoch)
    }

    /// The peer list in force: the master's, or this member's copy (the last one while joining or
    /// electing, so that the edge keeps routing by it).
    pub fn peer_list(&self) -> Option<&PeerList> {
        self.view.as_ref().map(|view| &view.list)
    }

    /// The allocation table in force, ready for look-ups.
    pub fn allocation(&self) -> Option<&Allocation> {
        self.view.as_ref().map(|view| &view.allocation)
    }

    /// The owners of an object by the table in force, the first preferred.
    pub fn owners(&self, host: &str, key: &str) -> Vec<&Peer> {
        let Some(view) = &self.view else {
            return Vec::new();
        };
        view.allocation
            .owners(host, key)
            .into_iter()
            .filter_map(|name| view.list.peer(name))
            .collect()
    }

    /// The master's directory of holders (empty on members).
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The deadline of a timer, if set.
    pub fn timer(&self, kind: TimerKind) -> Option<Instant> {
        self.timers.get(&kind).copied()
    }

    /// The highest term seen.
    pub fn highest_term(&self) -> u64 {
        self.highest_term
    }

    /// What the core counted.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The settings.
    pub fn config(&self) -> &CommunityConfig {
        &self.config
    }

    fn on_message(&mut self, message: &CommunityMessage, now: Instant, out: &mut Vec<Output>) {
        if message.community != self.config.community {
            self.counters.refused.other_community += 1;
            return;
        }
        if message.sender == self.me.name {
            // Our own multicast looped back; another process run means a name clash.
            if message.incarnation != self.me.incarnation {
                self.counters.refused.duplicate_name += 1;
            }
            return;
        }
        if let Err(error) = self.guard.check_stamp(&message.stamp(), self.wall_ms(now)) {
            self.refuse(&error);
            return;
        }
        self.counters.accepted += 1;
        self.highest_term = self.highest_term.max(message.epoch.term);
        match &message.body {
            CommunityBody::Wakeup(wakeup) => self.on_wakeup(message, wakeup, now, out),
            CommunityBody::WakeupAnswer(answer) => self.on_wakeup_answer(message, &answer.master, now, out),
            CommunityBody::RequestToJoin(request) => self.on_request_to_join(message, &request.peer, now, out),
            CommunityBody::Allow(list) | CommunityBody::UpdatePeerList(list) => {
                self.on_peer_list(message, list, now, out);
            }
            CommunityBody::Deny(deny) => self.on_deny(message, deny, now, out),
            CommunityBody::PeerPing(_) => self.on_ping(message, now, out),
            CommunityBody::PeerPingAnswer(answer) => self.on_ping_answer(message, answer.listed, now, out),
            CommunityBody::HoldElection(hold) => self.on_candidacy(message, &hold.candidate, true, now, out),
            CommunityBody::ElectionAnswer(answer) => self.on_election_answer(message, answer, now, out),
            CommunityBody::NominateMaster(nominate) => self.on_nominate(message, &nominate.nominee, now, out),
            CommunityBody::Leave => self.on_leave(message, now, out),
            CommunityBody::RegistryAnswer(answer) => self.on_registry_answer(answer, now, out),
            CommunityBody::CommunityList(list) => self.on_community_list(list, now, out),
            CommunityBody::LocationRequest(request) => self.on_location_request(message, request, now, out),
            CommunityBody::LocationResponse(response) => out.push(Output::Event(Event::Located {
                in_reply_to: Some(response.in_reply_to),
                response: response.clone(),
            })),
            CommunityBody::HoldingRegistration(holding) => self.on_holding(message, &holding.keys, true),
            CommunityBody::HoldingDeregistration(holding) => self.on_holding(message, &holding.keys, false),
            // Requests to the registry reaching a peer.
            CommunityBody::AddMaster(_) | CommunityBody::ReplaceMaster(_) | CommunityBody::CommunityListRequest(_) => {}
        }
    }

    fn on_timer(&mut self, kind: TimerKind, now: Instant, out: &mut Vec<Output>) {
        let Some(at) = self.timers.get(&kind).copied() else {
            return;
        };
        if now < at {
            return;
        }
        self.timers.remove(&kind);
        // A timer this late means this peer itself stood still (a stopped process, a frozen VM, a long
        // stall): every silence it measured across that time is its own, not its peers'.
        let late = now.saturating_duration_since(at);
        if late > self.config.timers.stall_threshold() {
            self.on_resumed(late, now, out);
        }
        match kind {
            TimerKind::Discovery => self.on_discovery_timer(now, out),
            TimerKind::JoinRetry => self.on_join_retry(now, out),
            TimerKind::Ping => self.on_ping_timer(now, out),
            TimerKind::MasterSilence => self.on_silence_timer(now, out),
            TimerKind::Sweep => self.sweep(now, out),
            TimerKind::Announce => self.announce(now, out),
            TimerKind::Election => self.on_election_timer(now, out),
            TimerKind::Leave => self.on_leave_timer(now, out),
        }
    }

    /// This peer did not run for `late` (its timers fired that late): the silences it measured over that
    /// time say nothing about its peers, who went on without it. A member starts its master's silence
    /// afresh and pings it at once, rather than deposing a healthy master when it wakes (the master has
    /// likely dropped it meanwhile, and says so: it then joins again); a master gives every member one
    /// more silence period, rather than dropping them all for pings that queued while it stood still.
    fn on_resumed(&mut self, late: std::time::Duration, now: Instant, out: &mut Vec<Output>) {
        match self.role {
            Role::Member => {
                if now.saturating_duration_since(self.last_heard_master) <= late {
                    return; // heard since waking: not silent
                }
                info!(peer = %self.me.name, late_ms = late.as_millis() as u64, "this peer was not running for a while; asking its master before holding any election");
                self.last_heard_master = now;
                if let Some(master) = self.view.as_ref().map(|view| view.master.clone()) {
                    self.ping(&master, now, out);
                }
                self.arm(TimerKind::MasterSilence, now + self.config.timers.master_silence, out);
            }
            Role::Master => {
                info!(peer = %self.me.name, late_ms = late.as_millis() as u64, "this master was not running for a while; its members get one more silence period");
                for heard in self.members_heard.values_mut() {
                    *heard = (*heard).max(now);
                }
            }
            _ => {}
        }
    }

    /// Answers a peer that spoke under an older claim with the master this peer knows.
    fn fence(&mut self, to: SocketAddr, now: Instant, out: &mut Vec<Output>) {
        let Some((master, epoch)) = self.known_master() else {
            return;
        };
        let body = CommunityBody::Deny(Deny {
            reason: DenyReason::StaleEpoch,
            master: Some(master),
        });
        self.send(to, epoch, body, now, out);
    }

    fn set_role(&mut self, to: Role, out: &mut Vec<Output>) {
        let from = self.role;
        if from == to {
            return;
        }
        self.role = to;
        if to == Role::Member && matches!(from, Role::Discovering | Role::Joining | Role::Master | Role::Left) {
            self.counters.joined += 1;
        }
        // Each role keeps its own timers only.
        let kept: &[TimerKind] = match to {
            Role::Discovering => &[TimerKind::Discovery],
            Role::Joining => &[TimerKind::JoinRetry],
            Role::Member => &[TimerKind::Ping, TimerKind::MasterSilence],
            Role::Electing => &[TimerKind::Election, TimerKind::Ping],
            Role::Master => &[TimerKind::Sweep, TimerKind::Announce, TimerKind::JoinRetry],
            Role::Leaving => &[TimerKind::Leave],
            Role::Left => &[],
        };
        let dropped: Vec<TimerKind> = self
            .timers
            .keys()
            .filter(|kind| !kept.contains(kind))
            .copied()
            .collect();
        for kind in dropped {
            self.disarm(kind, out);
        }
        debug!(peer = %self.me.name, %from, %to, "community role changed");
        out.push(Output::Event(Event::RoleChanged { from, to }));
    }

    /// Tells the edge of a change of master (compared with the last one it was told).
    fn set_master(&mut self, master: Option<Peer>, out: &mut Vec<Output>) {
        let same = match (&self.announced_master, &master) {
            (Some(a), Some(b)) => same_peer(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.announced_master = master.clone();
            out.push(Output::Event(Event::MasterChanged(master)));
        }
    }

    fn arm(&mut self, kind: TimerKind, at: Instant, out: &mut Vec<Output>) {
        self.timers.insert(kind, at);
        out.push(Output::SetTimer { timer: kind, at });
    }

    fn disarm(&mut self, kind: TimerKind, out: &mut Vec<Output>) {
        if self.timers.remove(&kind).is_some() {
            out.push(Output::CancelTimer(kind));
        }
    }

    /// The epoch of the list in force (zero before any).
    fn current_epoch(&self) -> Epoch {
        self.view.as_ref().map(|view| view.epoch).unwrap_or_default()
    }

    fn message(&mut self, epoch: Epoch, body: CommunityBody, now: Instant) -> CommunityMessage {
        self.seq += 1;
        CommunityMessage {
            community: self.config.community.clone(),
            sender: self.me.name.clone(),
            address: self.config.address,
            epoch,
            incarnation: self.me.incarnation,
            seq: self.seq,
            sent_at_ms: self.wall_ms(now),
            body,
        }
    }

    fn send(&mut self, to: SocketAddr, epoch: Epoch, body: CommunityBody, now: Instant, out: &mut Vec<Output>) {
        let message = self.message(epoch, body, now);
        self.counters.sent += 1;
        out.push(Output::Send { to, message });
    }

    /// Sends `body` to each of `peers`.
    fn send_all(&mut self, peers: &[Peer], epoch: Epoch, body: &CommunityBody, now: Instant, out: &mut Vec<Output>) {
        for peer in peers {
            self.send(peer.address, epoch, body.clone(), now, out);
        }
    }

    fn send_to_registry(&mut self, epoch: Epoch, body: CommunityBody, now: Instant, out: &mut Vec<Output>) {
        let message = self.message(epoch, body, now);
        self.counters.sent += 1;
        out.push(Output::Registry { message });
    }

    fn refuse(&mut self, error: &ControlError) {
        self.counters.refused.count(error);
        debug!(peer = %self.me.name, reason = error.reason(), %error, "community message refused");
    }

    /// A datagram that did not decode: counted; a `CRMSG_REQUESTTOJOIN` without the cluster key's tag is
    /// denied (the deny is tagged with this peer's key, which the requester cannot check either).
    fn refuse_datagram(
        &mut self,
        error: &ControlError,
        bytes: &[u8],
        from: SocketAddr,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        self.refuse(error);
        let join_request = frame::peek_kind(bytes) == Some(KIND_REQUEST_TO_JOIN);
        if self.role == Role::Master && join_request && *error == ControlError::Frame(FrameError::BadTag) {
            self.counters.joins_denied += 1;
            let body = CommunityBody::Deny(Deny {
                reason: DenyReason::BadTag,
                master: None,
            });
            let epoch = self.current_epoch();
            self.send(from, epoch, body, now, out);
        }
    }

    fn wall_ms(&self, now: Instant) -> u64 {
        self.wall_clock.ms_at(now)
    }

    /// The allocation table over `peers` with this peer as master, at `epoch`.
    fn master_view(&self, epoch: Epoch, mut peers: Vec<Peer>) -> View {
        peers.retain(|peer| peer.name != self.me.name);
        peers.push(self.me.clone());
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        peers.dedup_by(|a, b| a.name == b.name);
        let table = allocate(&peers, &self.config.allocation);
        let allocation = Allocation::new(table.clone());
        let list = PeerList {
            master: self.me.name.clone(),
            peers,
            table,
        };
        View {
            epoch,
            master: self.me.clone(),
            list,
            allocation,
        }
    }
}
