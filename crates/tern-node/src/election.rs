//! LAN group-leader election, the transport service's discovery phase of seed
//! `004_1419c51402506f7e.txt`: Fig. 5's finite state machine with its five states ("GL known" 702, "GL
//! unknown" 703, "GL is me" 704, "voting open" 705, "conceding" 706), driven by the "Leader Alive" (LA) and
//! "Leader Claim" (LC) messages of the multicast control channel ([`tern_wire::control`]). Where the
//! description leaves a transition open, claim 35 decides it:
//!
//! - **GL known**: ends only when no LA is heard for [`Timers::leader_silence`] → GL unknown.
//! - **GL unknown**: an LA → GL known. An LC with a stronger claim → conceding; with a weaker one → send
//!   our LC at once and → voting open. If nothing is heard for the claim interval ("shorter the stronger
//!   the claim", a recently deposed leader fastest) → send LC → voting open.
//! - **Conceding**: "pending an LA from the new leader, at which point GL is known". A claim at least as
//!   strong as the one conceded to restarts the wait; when [`Timers::concede_timeout`] runs out → GL
//!   unknown (not in the seed: the winner may have died).
//! - **Voting open**: no LC for the voting timeout (10–15 s) → GL is me, send LA. An LC → GL unknown
//!   (weighed there at once); an LA → GL known.
//! - **GL is me**: send LA every [`Timers::la_period`]. "Rather than have a battle of LA", another
//!   node's LA or LC makes the leader send an LC and go back to voting open.
//! - **The administrator's override** (the seed's "GUI mechanism ... to override"): the node it names
//!   claims at once, forced (the strongest claim); every other node stops claiming. Not in the seed: a
//!   member that waits in GL unknown for the named node for a leader-silence period and a claim interval
//!   without hearing it lets the override lapse and claims as without it, until that node is heard again,
//!   so that an override naming a dead node does not leave the segment without a leader.
//!
//! The core is sans-IO in the manner of quinn-proto and foca: [`Election::handle`] takes an [`Input`]
//! (a datagram, a timer, an operator's override) and the current [`Instant`], and returns [`Output`]s
//! (datagrams to multicast, the one timer to set, state and leader changes). Randomness comes from the seed
//! given to [`Election::new`]; the wall clock, needed only for the messages' freshness stamps, from
//! [`Election::set_wall_clock`]. [`driver`] runs it on a tokio UDP multicast socket.

mod config;
mod counters;
pub mod driver;
mod event;
pub(crate) mod rng;
mod state;
#[cfg(test)]
mod tests;

pub use config::{ConfigError, DEFAULT_PRIORITY, ElectionConfig, Resources, Timers};
pub use counters::{Counters, RefusalWarnings, Refusals, WallClock};
pub use event::{Input, Leader, Output, TimerKind};
pub use state::State;

use std::time::{Duration, Instant};

use rng::SplitMix64;

use tern_wire::control::{self, Claim, ControlBody, ControlError, ControlMessage, ReplayGuard};
use tracing::{debug, info, warn};

/// One node's election (Fig. 5). See the module header for the transitions.
#[derive(Debug)]
pub struct Election {
    config: ElectionConfig,
    rng: SplitMix64,
    guard: ReplayGuard,
    state: State,
    leader: Option<Leader>,
    /// Conceding: the strongest claim heard, with its sender.
    conceded_to: Option<(Claim, String)>,
    /// The claim sent in the current election: later comparisons use it, so both sides of a comparison
    /// weigh the same two values.
    my_claim: Option<Claim>,
    timer: Option<(TimerKind, Instant)>,
    /// GL known: when the leader's last LA arrived.
    last_alive: Instant,
    /// Highest term seen or proposed.
    term: u64,
    incarnation: u64,
    seq: u64,
    started: Instant,
    deposed_at: Option<Instant>,
    override_leader: Option<String>,
    /// The override's leader was not heard for a leader-silence period and a claim interval while this
    /// node waited for it (it died, or never ran): the segment elects as if there were no override until
    /// that node is heard again.
    override_lapsed: bool,
    resources: Resources,
    wall_clock: WallClock,
    counters: Counters,
    refusal_warnings: counters::RefusalWarnings,
}

impl Election {
    /// A core in "GL unknown", not yet started. `seed` drives every random choice (incarnation, claim
    /// jitter, voting timeout); `unix_ms` is the wall clock at `now`, in milliseconds since the Unix epoch.
    pub fn new(config: ElectionConfig, seed: u64, now: Instant, unix_ms: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut rng = SplitMix64(seed);
        let incarnation = rng.next_u64();
        Ok(Election {
            guard: ReplayGuard::new(config.limits),
            config,
            rng,
            state: State::GlUnknown,
            leader: None,
            conceded_to: None,
            my_claim: None,
            timer: None,
            last_alive: now,
            term: 0,
            incarnation,
            seq: 0,
            started: now,
            deposed_at: None,
            override_leader: None,
            override_lapsed: false,
            resources: Resources::default(),
            wall_clock: WallClock::new(now, unix_ms),
            counters: Counters::default(),
            refusal_warnings: Default::default(),
        })
    }

    /// Starts the election: a node begins in "GL unknown" and, if it may lead, arms its claim timer. A
    /// leader's LA, due within an LA period, usually arrives first.
    pub fn start(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        self.enter_unknown(now, &mut out);
        out
    }

    /// Tells the core the wall clock (milliseconds since the Unix epoch) at `now`; between calls it
    /// advances with `now`.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall_clock = WallClock::new(now, unix_ms);
    }

    /// Handles one input and says what to do.
    pub fn handle(&mut self, input: Input<'_>, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Datagram(bytes) => match control::decode(&self.config.key, bytes, &self.config.limits) {
                Ok(verified) => self.on_message(verified.message(), now, &mut out),
                Err(error) => self.refuse(&error, now),
            },
            Input::Verified(verified) => self.on_message(verified.message(), now, &mut out),
            Input::Timer(kind) => self.on_timer(kind, now, &mut out),
            Input::Resources(resources) => self.resources = resources,
            Input::Override(leader) => self.on_override(leader, now, &mut out),
        }
        out
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The leader, in "GL known" and "GL is me".
    pub fn leader(&self) -> Option<&Leader> {
        self.leader.as_ref()
    }

    /// The pending timer.
    pub fn timer(&self) -> Option<(TimerKind, Instant)> {
        self.timer
    }

    /// Counters of messages sent, heard and refused.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The highest term seen or proposed.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// This process run's random id, carried in every message.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The settings.
    pub fn config(&self) -> &ElectionConfig {
        &self.config
    }

    /// Whether this node may claim leadership now: an override decides alone (unless its leader went
    /// unheard, see [`Election::override_lapsed`]); otherwise not with `never_lead`, nor when a pre-assigned
    /// list exists without this node on it.
    pub fn can_lead(&self) -> bool {
        if let Some(forced) = self.standing_override() {
            return forced == self.config.node;
        }
        self.may_lead_by_configuration()
    }

    /// Whether the override's leader went unheard for a leader-silence period and a claim interval while
    /// this node waited for it, so that the segment elects without the override until that node is heard again (an override
    /// naming a dead node must not leave the segment without a leader: the mover can only send a cleared
    /// override through a leader).
    pub fn override_lapsed(&self) -> bool {
        self.override_lapsed
    }

    /// The override in force: the administrator's choice, unless it lapsed.
    fn standing_override(&self) -> Option<&str> {
        self.override_leader.as_deref().filter(|_| !self.override_lapsed)
    }

    fn may_lead_by_configuration(&self) -> bool {
        let on_list = self.config.preassigned.is_empty() || self.config.preassigned_rank(&self.config.node) > 0;
        !self.config.never_lead && on_list
    }

    /// Whether this node waits, in "GL unknown", for another node the override names.
    fn waiting_for_override(&self) -> bool {
        self.standing_override()
            .is_some_and(|forced| forced != self.config.node)
            && self.may_lead_by_configuration()
    }

    /// The claim this node would send now, if it may lead.
    pub fn current_claim(&self, now: Instant) -> Option<Claim> {
        if !self.can_lead() {
            return None;
        }
        let recently_deposed = self
            .deposed_at
            .is_some_and(|at| now.saturating_duration_since(at) <= self.config.timers.deposed_memory);
        Some(Claim {
            forced: self.standing_override() == Some(self.config.node.as_str()),
            preassigned: self.config.preassigned_rank(&self.config.node),
            recent_leader: self.state == State::GlIsMe || recently_deposed,
            priority: self.config.priority,
            cpu_millis: self.resources.cpu_millis,
            free_disk_mib: self.resources.free_disk_mib,
            members_known: self.resources.members_known,
            uptime_s: now.saturating_duration_since(self.started).as_secs(),
        })
    }

    /// How long a candidate with `claim` waits in "GL unknown" before sending its LC, without jitter:
    /// none when forced, [`Timers::min_claim`] for a recent leader, otherwise [`Timers::initial_claim`]
    /// plus [`Timers::claim_spread`] scaled by how weak the claim is ([`claim_strength`]).
    pub fn base_claim_interval(&self, claim: &Claim) -> Duration {
        let timers = &self.config.timers;
        if claim.forced {
            return Duration::ZERO;
        }
        if claim.recent_leader {
            return timers.min_claim;
        }
        let weakness = 1.0 - claim_strength(claim, self.config.preassigned.len());
        timers
            .initial_claim
            .saturating_add(timers.claim_spread.mul_f64(weakness))
    }

    fn on_message(&mut self, message: &ControlMessage, now: Instant, out: &mut Vec<Output>) {
        if message.sender == self.config.node {
            // Our own datagram, looped back by the kernel; another incarnation means a name clash.
            if message.incarnation != self.incarnation {
                self.counters.refused.duplicate_name += 1;
                warn!(node = %message.sender, "another process uses this node's name on the control channel");
            }
            return;
        }
        if message.segment != self.config.segment {
            self.counters.refused.other_segment += 1;
            self.refusal_warnings.other_segment(
                &self.config.node,
                "election",
                &self.config.segment,
                &message.segment,
                now,
            );
            return;
        }
        if let Err(error) = self.guard.check(message, self.wall_ms(now)) {
            self.refuse(&error, now);
            return;
        }
        self.term = self.term.max(message.term);
        if self.override_lapsed && self.override_leader.as_deref() == Some(message.sender.as_str()) {
            // The administrator's leader is back: the override stands again.
            self.override_lapsed = false;
            info!(leader = %message.sender, "the overridden group leader is heard again; the override stands");
        }
        match message.body {
            ControlBody::LeaderAlive => {
                self.counters.leader_alive_heard += 1;
                self.on_leader_alive(message, now, out);
            }
            ControlBody::LeaderClaim(claim) => {
                self.counters.leader_claim_heard += 1;
                self.on_leader_claim(message, claim, now, out);
            }
        }
    }

    fn on_leader_alive(&mut self, message: &ControlMessage, now: Instant, out: &mut Vec<Output>) {
        match self.state {
            State::GlKnown => {
                let from_leader = self.leader.as_ref().is_some_and(|leader| leader.name == message.sender);
                if !from_leader {
                    // Fig. 5 leaves "GL known" only when the leader falls silent.
                    return;
                }
                self.last_alive = now;
                let changed = self
                    .leader
                    .as_ref()
                    .is_some_and(|leader| leader.address != message.address || leader.term != message.term);
                if changed {
                    let refreshed = Leader {
                        name: message.sender.clone(),
                        address: message.address,
                        term: message.term,
                    };
                    self.set_leader(Some(refreshed), out);
                }
            }
            State::GlUnknown | State::VotingOpen | State::Conceding => self.enter_known(message, now, out),
            State::GlIsMe => self.contest(now, out),
        }
    }

    fn on_leader_claim(&mut self, message: &ControlMessage, claim: Claim, now: Instant, out: &mut Vec<Output>) {
        let theirs = (claim, message.sender.clone());
        match self.state {
            // Fig. 5 leaves "GL known" only when the leader falls silent.
            State::GlKnown => {}
            State::GlUnknown => self.weigh(theirs, now, out),
            State::VotingOpen => {
                self.set_state(State::GlUnknown, now, out);
                self.weigh(theirs, now, out);
            }
            State::Conceding => {
                let at_least_as_strong = self.conceded_to.as_ref().is_none_or(|conceded| theirs >= *conceded);
                if at_least_as_strong {
                    self.conceded_to = Some(theirs);
                    self.arm(TimerKind::Concede, now + self.config.timers.concede_timeout, out);
                }
            }
            State::GlIsMe => self.contest(now, out),
        }
    }

    /// "GL unknown" weighing a claim heard (claim 35): concede to a stronger one, answer a weaker one.
    fn weigh(&mut self, theirs: (Claim, String), now: Instant, out: &mut Vec<Output>) {
        let mine = self.my_claim.or_else(|| self.current_claim(now));
        let theirs_stronger = match mine {
            None => true,
            Some(mine) => (&theirs.0, theirs.1.as_str()) > (&mine, self.config.node.as_str()),
        };
        if theirs_stronger {
            self.enter_conceding(theirs, now, out);
            return;
        }
        // Sends `mine`: the stored claim, or the same fresh one computed at this `now`.
        self.claim_and_vote(now, out);
    }

    /// "GL is me" hearing another LA or LC: send an LC and go back to voting open.
    fn contest(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.my_claim = None;
        if self.send_claim(now, out) {
            self.enter_voting(now, out);
        } else {
            self.enter_unknown(now, out);
        }
    }

    fn on_timer(&mut self, kind: TimerKind, now: Instant, out: &mut Vec<Output>) {
        let Some((armed, at)) = self.timer else {
            return;
        };
        if armed != kind || now < at {
            return;
        }
        self.timer = None;
        match (kind, self.state) {
            (TimerKind::LeaderSilence, State::GlKnown) => {
                let silent_from = self.last_alive + self.config.timers.leader_silence;
                if now < silent_from {
                    self.arm(TimerKind::LeaderSilence, silent_from, out);
                } else {
                    debug!(leader = ?self.leader.as_ref().map(|l| &l.name), "leader alive messages stopped");
                    self.enter_unknown(now, out);
                }
            }
            (TimerKind::Claim, State::GlUnknown) if self.waiting_for_override() => {
                warn!(
                    leader = self.override_leader.as_deref().unwrap_or(""),
                    "the group leader the mover's override names is not heard; electing without the override until it is"
                );
                self.override_lapsed = true;
                self.enter_unknown(now, out);
            }
            (TimerKind::Claim, State::GlUnknown) => self.claim_and_vote(now, out),
            (TimerKind::VotingOpen, State::VotingOpen) => self.enter_me(now, out),
            (TimerKind::LeaderAlive, State::GlIsMe) => {
                self.send_alive(now, out);
                self.arm(TimerKind::LeaderAlive, now + self.config.timers.la_period, out);
            }
            (TimerKind::Concede, State::Conceding) => self.enter_unknown(now, out),
            _ => {}
        }
    }

    fn on_override(&mut self, leader: Option<String>, now: Instant, out: &mut Vec<Output>) {
        if self.override_leader == leader {
            return;
        }
        self.override_leader = leader;
        self.override_lapsed = false;
        let forced_here = self.override_leader.as_deref() == Some(self.config.node.as_str());
        match self.state {
            State::GlIsMe if forced_here => {}
            State::GlIsMe | State::GlUnknown | State::VotingOpen if !self.can_lead() => {
                // Step down or stop claiming: the administrator chose another leader.
                self.enter_unknown(now, out);
            }
            _ if forced_here => self.enter_unknown(now, out),
            State::GlUnknown => self.enter_unknown(now, out),
            _ => {}
        }
    }

    /// "GL unknown" at the start of an election: forget the last claim and wait the claim interval (or
    /// claim at once when forced; never when this node may not lead).
    fn enter_unknown(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.set_state(State::GlUnknown, now, out);
        self.set_leader(None, out);
        self.conceded_to = None;
        self.my_claim = None;
        if self.waiting_for_override() {
            // The override's leader should claim within a leader-silence period and a claim interval (it
            // may learn of the override a report later than this node); if it does not, the override
            // lapses (the claim timer, see `on_timer`).
            let timers = &self.config.timers;
            self.arm(
                TimerKind::Claim,
                now + timers.leader_silence + timers.initial_claim,
                out,
            );
            return;
        }
        let Some(claim) = self.current_claim(now) else {
            self.disarm(out);
            return;
        };
        if claim.forced {
            self.claim_and_vote(now, out);
            return;
        }
        let jitter = self.rng.duration_below(self.config.timers.claim_jitter);
        let interval = self.base_claim_interval(&claim) + jitter;
        self.arm(TimerKind::Claim, now + interval, out);
    }

    fn enter_known(&mut self, message: &ControlMessage, now: Instant, out: &mut Vec<Output>) {
        self.set_state(State::GlKnown, now, out);
        let leader = Leader {
            name: message.sender.clone(),
            address: message.address,
            term: message.term,
        };
        self.set_leader(Some(leader), out);
        self.conceded_to = None;
        self.my_claim = None;
        self.last_alive = now;
        self.arm(TimerKind::LeaderSilence, now + self.config.timers.leader_silence, out);
    }

    fn enter_conceding(&mut self, theirs: (Claim, String), now: Instant, out: &mut Vec<Output>) {
        self.set_state(State::Conceding, now, out);
        self.set_leader(None, out);
        self.conceded_to = Some(theirs);
        self.arm(TimerKind::Concede, now + self.config.timers.concede_timeout, out);
    }

    fn enter_voting(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.set_state(State::VotingOpen, now, out);
        self.set_leader(None, out);
        let timers = &self.config.timers;
        let spread = timers.voting_max.saturating_sub(timers.voting_min);
        let timeout = timers.voting_min + self.rng.duration_below(spread);
        self.arm(TimerKind::VotingOpen, now + timeout, out);
    }

    fn enter_me(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.set_state(State::GlIsMe, now, out);
        let me = Leader {
            name: self.config.node.clone(),
            address: self.config.address,
            term: self.term,
        };
        self.set_leader(Some(me), out);
        self.counters.elections_won += 1;
        self.my_claim = None;
        self.conceded_to = None;
        self.send_alive(now, out);
        self.arm(TimerKind::LeaderAlive, now + self.config.timers.la_period, out);
    }

    fn set_state(&mut self, to: State, now: Instant, out: &mut Vec<Output>) {
        let from = self.state;
        if from == to {
            return;
        }
        if from == State::GlIsMe {
            self.deposed_at = Some(now);
        }
        self.state = to;
        debug!(node = %self.config.node, from = %from, to = %to, "election state changed");
        out.push(Output::StateChanged { from, to });
    }

    fn set_leader(&mut self, leader: Option<Leader>, out: &mut Vec<Output>) {
        if self.leader == leader {
            return;
        }
        self.leader = leader.clone();
        out.push(Output::LeaderChanged(leader));
    }

    fn arm(&mut self, timer: TimerKind, at: Instant, out: &mut Vec<Output>) {
        self.timer = Some((timer, at));
        out.push(Output::SetTimer { timer, at });
    }

    fn disarm(&mut self, out: &mut Vec<Output>) {
        if self.timer.take().is_some() {
            out.push(Output::CancelTimer);
        }
    }

    /// "GL unknown" → "voting open": send the LC and start the voting timeout (nothing when this node may
    /// not lead).
    fn claim_and_vote(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.send_claim(now, out) {
            self.enter_voting(now, out);
        }
    }

    /// Sends this election's claim (computing it on the first send); false when this node may not lead.
    fn send_claim(&mut self, now: Instant, out: &mut Vec<Output>) -> bool {
        let first_send = self.my_claim.is_none();
        let Some(claim) = self.my_claim.or_else(|| self.current_claim(now)) else {
            return false;
        };
        if first_send {
            self.term = self.term.saturating_add(1);
        }
        self.my_claim = Some(claim);
        self.counters.leader_claim_sent += 1;
        self.send(ControlBody::LeaderClaim(claim), self.term, now, out);
        true
    }

    fn send_alive(&mut self, now: Instant, out: &mut Vec<Output>) {
        let term = self.leader.as_ref().map_or(self.term, |leader| leader.term);
        self.counters.leader_alive_sent += 1;
        self.send(ControlBody::LeaderAlive, term, now, out);
    }

    fn send(&mut self, body: ControlBody, term: u64, now: Instant, out: &mut Vec<Output>) {
        self.seq += 1;
        let message = ControlMessage {
            segment: self.config.segment.clone(),
            sender: self.config.node.clone(),
            address: self.config.address,
            term,
            incarnation: self.incarnation,
            seq: self.seq,
            sent_at_ms: self.wall_ms(now),
            body,
        };
        let datagram = control::encode(&self.config.key, &message);
        out.push(Output::Multicast { message, datagram });
    }

    fn refuse(&mut self, error: &ControlError, now: Instant) {
        self.counters.refused.count(error);
        debug!(node = %self.config.node, reason = error.reason(), %error, "control message refused");
        self.refusal_warnings.refused(&self.config.node, "election", error, now);
    }

    fn wall_ms(&self, now: Instant) -> u64 {
        self.wall_clock.ms_at(now)
    }
}

/// How strong a claim is for its claim interval, in `[0, 1)`: the pre-assigned rank first, then the
/// configured priority, then resources (CPU, free disk, members known, uptime, each saturating) as a
/// fraction of one priority step. Comparisons between claims use the full order of [`Claim`]; this only
/// spaces the intervals so that the stronger candidate usually speaks first.
pub fn claim_strength(claim: &Claim, preassigned_len: usize) -> f64 {
    let saturating = |value: f64, half: f64| value / (value + half);
    let resources = (saturating(f64::from(claim.cpu_millis), 4000.0)
        + saturating(claim.free_disk_mib as f64, 100.0 * 1024.0)
        + saturating(f64::from(claim.members_known), 20.0)
        + saturating(claim.uptime_s as f64, 3600.0))
        / 4.0;
    let rank_levels = preassigned_len as f64 + 1.0;
    let level = f64::from(
        claim
            .preassigned
            .min(u16::try_from(preassigned_len).unwrap_or(u16::MAX)),
    ) * 256.0
        + f64::from(claim.priority)
        + resources.min(0.999);
    (level / (rank_levels * 256.0)).clamp(0.0, 1.0)
}
