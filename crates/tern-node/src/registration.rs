//! Registration of a network segment's members with their group leader, and the leader's reports to the
//! mover: the discovery phase of seed `004_1419c51402506f7e.txt` after the election ([`crate::election`]),
//! claims 38–44 ("determining registration of members of a cluster of servers"), 55 and 58. The messages
//! are [`tern_wire::segment`]'s.
//!
//! - **Member** (a leader is known and it is not this node): sends the leader a *registration* (its
//!   address, name, free disk, CPUs, content groups and site versions held) after a random delay of up to
//!   [`RegistrationTimers::first_jitter`]. A *registration report* from its leader that does not list it
//!   (with its incarnation) makes it register again after [`RegistrationTimers::retry_fixed`] plus up to
//!   [`RegistrationTimers::retry_jitter`] (claim 41); a registration no report confirms within
//!   [`RegistrationTimers::confirm_timeout`] is sent again; once listed, it registers every
//!   [`RegistrationTimers::keepalive`] as a keep-alive.
//! - **Leader** ("GL is me"): lists itself, takes registrations, and multicasts the registration report
//!   [`RegistrationTimers::report_delay_min`]–[`RegistrationTimers::report_delay_max`] after the last
//!   registration that changed the list (a new member, a new incarnation, or a member asking to be listed;
//!   claim 40). It repeats the report while such registrations keep arriving; the first report after which
//!   none arrives ends the round (claim 38 (E)), and the leader then sends the mover a *segment report*
//!   (the first of its leadership) or a *network segment report* (members appeared or departed since the
//!   last one). A member silent for [`RegistrationTimers::member_timeout`] is offline: it leaves the list
//!   and a network segment report goes out at once. On taking over, the leader sends a *take-over* report
//!   before its round is complete; every [`RegistrationTimers::report_refresh`] it sends a full segment
//!   report; a report the mover did not take is sent again in full after
//!   [`RegistrationTimers::report_retry`].
//! - **Override**: the mover's answer to a report carries the administrator's choice of leader; the leader
//!   passes it to its election and in its registration reports, and members pass it to theirs.
//!
//! The core is sans-IO like the election's: [`Registration::handle`] takes an [`Input`] and the current
//! [`Instant`] and returns [`Output`]s (datagrams, reports, timers); randomness comes from the seed given
//! to [`Registration::new`]. [`driver`] runs it on tokio sockets beside the election's driver.

mod config;
pub mod driver;
mod event;
#[cfg(test)]
mod tests;

pub use config::{RegistrationConfig, RegistrationTimers};
pub use event::{Counters, Input, Output, Role, TimerKind};

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tern_wire::control::{ControlError, ReplayGuard};

use crate::election::WallClock;
use tern_wire::segment::{
    self, LeaderOverride, Member, Profile, Registered, RegistrationReport, ReportAnswer, ReportKind, SegmentBody,
    SegmentMessage, SegmentReport,
};
use tracing::{debug, info};

use crate::election::rng::SplitMix64;
use crate::election::{ConfigError, Leader};

/// A member as the leader holds it.
#[derive(Debug, Clone)]
struct Entry {
    address: SocketAddr,
    incarnation: u64,
    profile: Profile,
    last_heard: Instant,
}

/// One node's registration core. See the module header for the rules.
#[derive(Debug)]
pub struct Registration {
    config: RegistrationConfig,
    rng: SplitMix64,
    guard: ReplayGuard,
    incarnation: u64,
    seq: u64,
    wall_clock: WallClock,
    profile: Profile,
    /// The leader as the election last said.
    leader: Option<Leader>,
    /// Member: the leader (name, term) whose last report listed this node with its incarnation.
    listed_by: Option<(String, u64)>,
    /// Member: members in the last report heard from the leader.
    members_heard: usize,
    /// Leader: the registered members, this node included.
    members: BTreeMap<String, Entry>,
    /// Leader: a registration changed the list since the last registration report.
    changed_since_report: bool,
    /// Leader: when the first such registration arrived (the report is due by then plus
    /// [`RegistrationTimers::report_max_wait`]).
    round_opened: Instant,
    /// Leader: the members last reported to the mover in full (`None`: none yet in this leadership).
    reported: Option<BTreeSet<String>>,
    /// Leader: the report waiting for the mover's answer.
    pending_report: Option<u64>,
    /// The administrator's choice of leader as last heard (`None`: not heard yet).
    leader_override: Option<Option<String>>,
    timers: BTreeMap<TimerKind, Instant>,
    counters: Counters,
    refusal_warnings: crate::election::RefusalWarnings,
}

impl Registration {
    /// A core with no leader known. `seed` drives every random choice; `unix_ms` is the wall clock at
    /// `now`, in milliseconds since the Unix epoch (for the messages' freshness stamps).
    pub fn new(config: RegistrationConfig, seed: u64, now: Instant, unix_ms: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut rng = SplitMix64(seed);
        let incarnation = rng.next_u64();
        Ok(Registration {
            guard: ReplayGuard::new(config.limits.replay()),
            config,
            rng,
            incarnation,
            seq: 0,
            wall_clock: WallClock::new(now, unix_ms),
            profile: Profile::default(),
            leader: None,
            listed_by: None,
            members_heard: 0,
            members: BTreeMap::new(),
            changed_since_report: false,
            round_opened: now,
            reported: None,
            pending_report: None,
            leader_override: None,
            timers: BTreeMap::new(),
            counters: Counters::default(),
            refusal_warnings: Default::default(),
        })
    }

    /// Tells the core the wall clock (milliseconds since the Unix epoch) at `now`.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall_clock = WallClock::new(now, unix_ms);
    }

    /// Handles one input and says what to do.
    pub fn handle(&mut self, input: Input<'_>, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Leader(leader) => self.on_leader(leader, now, &mut out),
            Input::Datagram(bytes) => match segment::decode(&self.config.key, bytes, &self.config.limits) {
                Ok(verified) => self.on_message(verified.message(), now, &mut out),
                Err(error) => self.refuse(&error, now),
            },
            Input::Verified(verified) => self.on_message(verified.message(), now, &mut out),
            Input::Timer(kind) => self.on_timer(kind, now, &mut out),
            Input::Profile(profile) => self.on_profile(profile, now),
            Input::ReportAnswered(answer) => self.on_answer(answer, now, &mut out),
            Input::ReportFailed { seq } => self.on_report_failed(seq, now, &mut out),
        }
        out
    }

    /// This node's part now.
    pub fn role(&self) -> Role {
        match &self.leader {
            None => Role::Idle,
            Some(leader) if leader.name == self.config.node => Role::Leader,
            Some(_) => Role::Member,
        }
    }

    /// Member: whether the leader's last report listed this node (claim 38 (E)). The leader is always
    /// listed in its own report.
    pub fn listed(&self) -> bool {
        match (&self.leader, &self.listed_by) {
            (Some(leader), _) if leader.name == self.config.node => true,
            (Some(leader), Some((name, term))) => leader.name == *name && leader.term == *term,
            _ => false,
        }
    }

    /// Leader: the registered members with what they registered, this node included, by name.
    pub fn members(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(name, entry)| Member {
                name: name.clone(),
                address: entry.address,
                incarnation: entry.incarnation,
                profile: entry.profile.clone(),
            })
            .collect()
    }

    /// Leader: whether `name` is on its list.
    pub fn lists(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    /// Leader: how many members are on its list, this node included.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Members this node knows of: the leader's list, or the size of the last report a member heard (a
    /// priority parameter of the election, claim 37).
    pub fn members_known(&self) -> usize {
        match self.role() {
            Role::Leader => self.members.len(),
            Role::Member | Role::Idle => self.members_heard,
        }
    }

    /// The members last reported to the mover in full, if any in this leadership.
    pub fn reported(&self) -> Option<&BTreeSet<String>> {
        self.reported.as_ref()
    }

    /// When the timer of `kind` is due, if it is set.
    pub fn timer(&self, kind: TimerKind) -> Option<Instant> {
        self.timers.get(&kind).copied()
    }

    /// Counters of messages sent, heard and refused.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// This process run's random id, carried in every message.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The settings.
    pub fn config(&self) -> &RegistrationConfig {
        &self.config
    }

    fn on_leader(&mut self, leader: Option<Leader>, now: Instant, out: &mut Vec<Output>) {
        if leader == self.leader {
            return;
        }
        if self.role() == Role::Leader {
            self.stop_leading(out);
        }
        self.leader = leader;
        match self.role() {
            Role::Idle => self.cancel(TimerKind::Register, out),
            Role::Leader => self.start_leading(now, out),
            Role::Member => {
                // A leader heard again after a few lost LAs keeps this node listed; the registration is
                // then a keep-alive.
                let first = self.rng.duration_below(self.config.timers.first_jitter);
                self.arm(TimerKind::Register, now + first, out);
            }
        }
    }

    fn start_leading(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.cancel(TimerKind::Register, out);
        self.listed_by = None;
        self.members.clear();
        self.members.insert(
            self.config.node.clone(),
            Entry {
                address: self.config.address,
                incarnation: self.incarnation,
                profile: self.profile.clone(),
                last_heard: now,
            },
        );
        self.reported = None;
        self.pending_report = None;
        self.changed_since_report = false;
        info!(node = %self.config.node, segment = %self.config.segment, "group leader: taking registrations");
        self.report_changed(now, out);
        self.arm(TimerKind::Refresh, now + self.config.timers.report_refresh, out);
        self.send_report(ReportKind::TakeOver, Vec::new(), Vec::new(), now, out);
    }

    fn stop_leading(&mut self, out: &mut Vec<Output>) {
        for kind in [
            TimerKind::Report,
            TimerKind::Expiry,
            TimerKind::Refresh,
            TimerKind::ReportRetry,
        ] {
            self.cancel(kind, out);
        }
        self.members.clear();
        self.reported = None;
        self.pending_report = None;
        self.changed_since_report = false;
    }

    fn on_message(&mut self, message: &SegmentMessage, now: Instant, out: &mut Vec<Output>) {
        if message.sender == self.config.node {
            // Our own multicast, looped back; another incarnation means a name clash.
            if message.incarnation != self.incarnation {
                self.counters.refused.duplicate_name += 1;
            }
            return;
        }
        if message.segment != self.config.segment {
            self.counters.refused.other_segment += 1;
            self.refusal_warnings.other_segment(
                &self.config.node,
                "registration",
                &self.config.segment,
                &message.segment,
                now,
            );
            return;
        }
        if let Err(error) = self.guard.check_stamp(&message.stamp(), self.wall_ms(now)) {
            self.refuse(&error, now);
            return;
        }
        match &message.body {
            SegmentBody::Registration(registration) => {
                self.on_registration(message, registration.listed, &registration.profile, now, out)
            }
            SegmentBody::RegistrationReport(report) => self.on_registration_report(message, report, now, out),
            // The mover's messages travel over HTTP, never on the segment.
            SegmentBody::SegmentReport(_) | SegmentBody::ReportAnswer(_) => self.counters.refused.malformed += 1,
        }
    }

    /// Leader: a member registers (claim 38 (B)).
    fn on_registration(
        &mut self,
        message: &SegmentMessage,
        listed: bool,
        profile: &Profile,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        if self.role() != Role::Leader {
            self.counters.not_leader += 1;
            return;
        }
        self.counters.registrations_heard += 1;
        let entry = Entry {
            address: message.address,
            incarnation: message.incarnation,
            profile: profile.clone(),
            last_heard: now,
        };
        let previous = self.members.insert(message.sender.clone(), entry);
        let known = previous.is_some_and(|previous| previous.incarnation == message.incarnation);
        if !self.timers.contains_key(&TimerKind::Expiry) {
            self.arm(TimerKind::Expiry, now + self.config.timers.member_timeout, out);
        }
        if known && listed {
            return;
        }
        // A new member, a restarted one, or one that did not find itself in the report: report again
        // after the delay from this registration (claim 40).
        debug!(node = %self.config.node, member = %message.sender, known, "registration changes the report");
        self.report_changed(now, out);
    }

    /// Leader: the list (or the override) changed; the report is due after the report delay from now
    /// (claim 40), but no later than [`RegistrationTimers::report_max_wait`] after the first change since
    /// the last report.
    fn report_changed(&mut self, now: Instant, out: &mut Vec<Output>) {
        if !self.changed_since_report {
            self.changed_since_report = true;
            self.round_opened = now;
        }
        let delay = self.report_delay();
        let latest = self.round_opened + self.config.timers.report_max_wait;
        self.arm(TimerKind::Report, (now + delay).min(latest), out);
    }

    /// Member: the leader's list of registered members (claim 38 (C), (D)).
    fn on_registration_report(
        &mut self,
        message: &SegmentMessage,
        report: &RegistrationReport,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let Some(leader) = self.leader.clone().filter(|leader| leader.name != self.config.node) else {
            // Another node's report while this node leads or knows no leader: the election sorts it out.
            self.counters.foreign_reports += 1;
            return;
        };
        if message.sender != leader.name {
            self.counters.foreign_reports += 1;
            return;
        }
        self.counters.reports_heard += 1;
        self.members_heard = report.members.len();
        if let Some(LeaderOverride { leader: forced }) = &report.leader_override {
            self.take_override(forced.clone(), out);
        }
        let me = Registered {
            name: self.config.node.clone(),
            incarnation: self.incarnation,
        };
        if report.members.contains(&me) {
            let newly_listed = !self.listed();
            self.listed_by = Some((leader.name, leader.term));
            if newly_listed {
                let keepalive = self.keepalive_delay();
                self.arm(TimerKind::Register, now + keepalive, out);
            }
            return;
        }
        self.counters.missing_from_report += 1;
        self.listed_by = None;
        let retry = self.config.timers.retry_fixed + self.rng.duration_below(self.config.timers.retry_jitter);
        let at = now + retry;
        let sooner = self.timers.get(&TimerKind::Register).is_none_or(|armed| at < *armed);
        if sooner {
            self.arm(TimerKind::Register, at, out);
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
        match (kind, self.role()) {
            (TimerKind::Register, Role::Member) => self.register(now, out),
            (TimerKind::Report, Role::Leader) => self.on_report_due(now, out),
            (TimerKind::Expiry, Role::Leader) => self.expire(now, out),
            (TimerKind::Refresh, Role::Leader) => {
                if !self.timers.contains_key(&TimerKind::Report) {
                    // Nothing changing: tell the mover everything again.
                    self.report_in_full(now, out);
                }
                self.arm(TimerKind::Refresh, now + self.config.timers.report_refresh, out);
            }
            (TimerKind::ReportRetry, Role::Leader) => self.report_in_full(now, out),
            _ => {}
        }
    }

    /// Member: sends a registration to the leader and arms the next one.
    fn register(&mut self, now: Instant, out: &mut Vec<Output>) {
        let Some(leader) = self.leader.clone() else {
            return;
        };
        let listed = self.listed();
        let body = SegmentBody::Registration(segment::Registration {
            listed,
            profile: self.profile.clone(),
        });
        let message = self.message(leader.term, body, now);
        let datagram = segment::encode(&self.config.key, &message);
        self.counters.registrations_sent += 1;
        out.push(Output::Unicast {
            to: leader.address,
            message,
            datagram,
        });
        let next = if listed {
            self.keepalive_delay()
        } else {
            self.config.timers.confirm_timeout + self.rng.duration_below(self.config.timers.retry_jitter)
        };
        self.arm(TimerKind::Register, now + next, out);
    }

    /// Leader: the report delay ran out. Multicast the report if registrations changed the list since
    /// the last one; otherwise the round has converged.
    fn on_report_due(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.changed_since_report {
            self.multicast_report(now, out);
            let delay = self.report_delay();
            self.arm(TimerKind::Report, now + delay, out);
            return;
        }
        let current: BTreeSet<String> = self.members.keys().cloned().collect();
        match self.reported.take() {
            None => self.send_report(ReportKind::Segment, Vec::new(), Vec::new(), now, out),
            Some(before) if before != current => {
                let appeared = current.difference(&before).cloned().collect();
                let departed = before.difference(&current).cloned().collect();
                self.send_report(ReportKind::NetworkSegment, appeared, departed, now, out);
            }
            Some(_) => {}
        }
        self.reported = Some(current);
    }

    /// Leader: members whose keep-alives ran out go offline; the mover hears of it at once.
    fn expire(&mut self, now: Instant, out: &mut Vec<Output>) {
        let timeout = self.config.timers.member_timeout;
        let me = self.config.node.clone();
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(name, entry)| **name != me && entry.last_heard + timeout <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            self.members.remove(name);
            info!(node = %me, member = %name, "member went offline (keep-alives stopped)");
        }
        self.counters.members_expired += expired.len() as u64;
        let next = self
            .members
            .iter()
            .filter(|(name, _)| **name != me)
            .map(|(_, entry)| entry.last_heard + timeout)
            .min();
        match next {
            Some(at) => self.arm(TimerKind::Expiry, at, out),
            None => self.cancel(TimerKind::Expiry, out),
        }
        let Some(reported) = self.reported.as_mut() else {
            return;
        };
        let departed: Vec<String> = expired.into_iter().filter(|name| reported.remove(name)).collect();
        if !departed.is_empty() {
            self.send_report(ReportKind::NetworkSegment, Vec::new(), departed, now, out);
        }
    }

    fn on_profile(&mut self, profile: Profile, now: Instant) {
        self.profile = profile;
        if self.role() == Role::Leader
            && let Some(me) = self.members.get_mut(&self.config.node)
        {
            me.profile = self.profile.clone();
            me.last_heard = now;
        }
    }

    fn on_answer(&mut self, answer: ReportAnswer, now: Instant, out: &mut Vec<Output>) {
        if self.pending_report == Some(answer.seq) {
            self.pending_report = None;
        }
        if self.role() != Role::Leader {
            return;
        }
        let before = self.leader_override.clone();
        let changed = self.take_override(answer.leader_override, out);
        // Members need to hear of an override, or of one cleared; not that there never was one.
        let forced_now = matches!(self.leader_override, Some(Some(_)));
        let forced_before = matches!(before, Some(Some(_)));
        if changed && (forced_now || forced_before) {
            // Tell the members now, and once more after the report delay.
            self.multicast_report(now, out);
            self.report_changed(now, out);
        }
    }

    fn on_report_failed(&mut self, seq: u64, now: Instant, out: &mut Vec<Output>) {
        if self.pending_report != Some(seq) {
            return;
        }
        self.pending_report = None;
        self.counters.mover_reports_failed += 1;
        if self.role() == Role::Leader {
            self.arm(TimerKind::ReportRetry, now + self.config.timers.report_retry, out);
        }
    }

    /// Records the administrator's choice of leader; tells the election when it changed.
    fn take_override(&mut self, forced: Option<String>, out: &mut Vec<Output>) -> bool {
        if self.leader_override.as_ref() == Some(&forced) {
            return false;
        }
        let was_forced = matches!(self.leader_override, Some(Some(_)));
        if forced.is_some() || was_forced {
            info!(node = %self.config.node, leader = ?forced, "leader override from the mover");
        }
        self.leader_override = Some(forced.clone());
        out.push(Output::Override(forced));
        true
    }

    fn multicast_report(&mut self, now: Instant, out: &mut Vec<Output>) {
        let members = self
            .members
            .iter()
            .map(|(name, entry)| Registered {
                name: name.clone(),
                incarnation: entry.incarnation,
            })
            .collect();
        let report = RegistrationReport {
            members,
            leader_override: self.leader_override.clone().map(|leader| LeaderOverride { leader }),
        };
        let term = self.leader.as_ref().map_or(0, |leader| leader.term);
        let message = self.message(term, SegmentBody::RegistrationReport(report), now);
        let datagram = segment::encode(&self.config.key, &message);
        self.changed_since_report = false;
        self.counters.reports_multicast += 1;
        out.push(Output::Multicast { message, datagram });
    }

    /// A full segment report with the members as they are now.
    fn report_in_full(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.reported = Some(self.members.keys().cloned().collect());
        self.send_report(ReportKind::Segment, Vec::new(), Vec::new(), now, out);
    }

    fn send_report(
        &mut self,
        kind: ReportKind,
        appeared: Vec<String>,
        departed: Vec<String>,
        now: Instant,
        out: &mut Vec<Output>,
    ) {
        let report = SegmentReport {
            kind,
            location: self.config.location.clone(),
            members: self.members(),
            appeared,
            departed,
        };
        let term = self.leader.as_ref().map_or(0, |leader| leader.term);
        let message = self.message(term, SegmentBody::SegmentReport(report), now);
        let body = segment::encode(&self.config.key, &message);
        self.pending_report = Some(message.seq);
        self.counters.mover_reports += 1;
        debug!(node = %self.config.node, kind = kind.as_str(), members = self.members.len(), "report to the mover");
        out.push(Output::Report { message, body });
    }

    fn message(&mut self, term: u64, body: SegmentBody, now: Instant) -> SegmentMessage {
        self.seq += 1;
        SegmentMessage {
            segment: self.config.segment.clone(),
            sender: self.config.node.clone(),
            address: self.config.address,
            term,
            incarnation: self.incarnation,
            seq: self.seq,
            sent_at_ms: self.wall_ms(now),
            body,
        }
    }

    fn report_delay(&mut self) -> Duration {
        let timers = &self.config.timers;
        let spread = timers.report_delay_max.saturating_sub(timers.report_delay_min);
        timers.report_delay_min + self.rng.duration_below(spread)
    }

    fn keepalive_delay(&mut self) -> Duration {
        self.config.timers.keepalive + self.rng.duration_below(self.config.timers.retry_jitter)
    }

    fn arm(&mut self, timer: TimerKind, at: Instant, out: &mut Vec<Output>) {
        self.timers.insert(timer, at);
        out.push(Output::SetTimer { timer, at });
    }

    fn cancel(&mut self, timer: TimerKind, out: &mut Vec<Output>) {
        if self.timers.remove(&timer).is_some() {
            out.push(Output::CancelTimer(timer));
        }
    }

    fn refuse(&mut self, error: &ControlError, now: Instant) {
        self.counters.refused.count(error);
        debug!(node = %self.config.node, reason = error.reason(), %error, "segment message refused");
        self.refusal_warnings
            .refused(&self.config.node, "registration", error, now);
    }

    fn wall_ms(&self, now: Instant) -> u64 {
        self.wall_clock.ms_at(now)
    }
}
