//! Group-leader election (seed 004, Fig. 5) and registration (claims 38–41) over many nodes: a
//! deterministic simulation of 20 nodes in a segment over 1,000 seeds of random loss, crashes, restarts and
//! partitions, every node running both cores and the leader reporting to a simulated mover; and the tokio
//! driver on real multicast over the loopback interface.

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tern_node::election::driver::{self, ControlChannel, ElectionHandle};
use tern_node::election::{Election, ElectionConfig, Input, Output, Resources, State, TimerKind, Timers};
use tern_node::registration::{self as registration, Registration, RegistrationConfig, RegistrationTimers, Role};
use tern_wire::SecretKey;
use tern_wire::control::{self, ControlBody, ControlLimits, ControlMessage, Verified};
use tern_wire::segment::{self, Profile, ReportAnswer, ReportKind, SegmentBody, SegmentLimits, SegmentMessage};

const NODES: usize = 20;
const SEEDS: u64 = 1000;
const MAX_LOSS: f64 = 0.10;
const UNIX_START_MS: u64 = 1_700_000_000_000;
/// How long the segment must keep its one leader after it settled.
const STABLE_FOR: Duration = Duration::from_secs(30);

fn key() -> SecretKey {
    SecretKey::parse(&"e1".repeat(32)).expect("key")
}

/// SplitMix64, for the simulation's own choices (loss, delays, faults).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        low + (high - low).mul_f64(self.unit())
    }
}

enum Event {
    Start(usize),
    Deliver {
        to: usize,
        message: Rc<Verified>,
    },
    Timer {
        node: usize,
        life: u32,
        kind: TimerKind,
    },
    /// A registration (unicast) or registration report (multicast) arrives.
    DeliverSegment {
        to: usize,
        message: Rc<segment::Verified>,
    },
    RegistrationTimer {
        node: usize,
        life: u32,
        kind: registration::TimerKind,
    },
    /// The mover's answer to a report reaches the leader.
    Answer {
        node: usize,
        life: u32,
        answer: ReportAnswer,
    },
    Fault,
    Partition,
    Heal,
}

struct Scheduled {
    at: Instant,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    // Reversed: the heap pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// The kinds of fault, for the figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    CrashOfLeader,
    CrashOfMember,
    Restart,
    Heal,
}

/// What one seed's run measured.
struct Outcome {
    loss: f64,
    faults: usize,
    /// From the last fault (crash, restart, healed partition) until one leader was known to every live
    /// node.
    settle: Duration,
    /// From the last fault until the leader's registration report listed exactly the live nodes, every
    /// live member had seen itself listed, and the mover's record said the same.
    registered: Duration,
    /// What the last fault was.
    last_fault: FaultKind,
    events: u64,
}

/// The mover's record of the segment, from the leaders' reports, by the mover's rule
/// (`tern_mover::segments::admit_report`): a report with a lower term than the record's, from another
/// leader, is refused unless it lists the recorded leader or the recorded leader has been silent for
/// `SUPERSEDE_AFTER`; a take-over report adds to the members, the others list them.
struct MoverRecord {
    leader: String,
    term: u64,
    members: BTreeSet<String>,
    reported: Instant,
}

/// The mover's `SUPERSEDE_AFTER`.
const SUPERSEDE_AFTER: Duration = Duration::from_secs(30);

/// One segment of `NODES` election and registration cores on a simulated network.
struct Segment {
    epoch: Instant,
    now: Instant,
    rng: Rng,
    loss: f64,
    key: SecretKey,
    limits: ControlLimits,
    configs: Vec<ElectionConfig>,
    nodes: Vec<Option<Election>>,
    registration_configs: Vec<RegistrationConfig>,
    registrations: Vec<Option<Registration>>,
    mover: Option<MoverRecord>,
    lives: Vec<u32>,
    /// Partition side of each node: datagrams cross only between nodes on the same side.
    side: Vec<bool>,
    /// What the last fault was, for the figures.
    last_fault: FaultKind,
    queue: BinaryHeap<Scheduled>,
    order: u64,
    /// A state or leader changed since the last look.
    changed: bool,
    /// A registration core or the mover's record changed since the last look.
    registration_changed: bool,
    events: u64,
}

impl Segment {
    fn new(seed: u64) -> Segment {
        let mut rng = Rng(seed);
        let epoch = Instant::now();
        let loss = rng.unit() * MAX_LOSS;
        // Two followers that never lead; everyone else with a random priority and resources.
        let never_lead = [rng.below(NODES), rng.below(NODES)];
        let configs = (0..NODES)
            .map(|index| {
                let address = SocketAddr::from(([10, 0, 0, index as u8 + 1], 7100));
                let mut config = ElectionConfig::new("rack-1", format!("node-{index:02}"), address, key());
                config.priority = rng.below(256) as u8;
                config.never_lead = never_lead.contains(&index);
                config
            })
            .collect::<Vec<ElectionConfig>>();
        let registration_configs = configs
            .iter()
            .map(|config| RegistrationConfig::new("rack-1", config.node.clone(), config.address, key()))
            .collect();
        let mut segment = Segment {
            epoch,
            now: epoch,
            rng,
            loss,
            key: key(),
            limits: ControlLimits::default(),
            configs,
            nodes: (0..NODES).map(|_| None).collect(),
            registration_configs,
            registrations: (0..NODES).map(|_| None).collect(),
            mover: None,
            lives: vec![0; NODES],
            side: vec![false; NODES],
            last_fault: FaultKind::Restart,
            queue: BinaryHeap::new(),
            order: 0,
            changed: false,
            registration_changed: false,
            events: 0,
        };
        for index in 0..NODES {
            let at = epoch + segment.rng.between(Duration::ZERO, Duration::from_secs(2));
            segment.schedule(at, Event::Start(index));
        }
        segment
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.order += 1;
        self.queue.push(Scheduled {
            at,
            order: self.order,
            event,
        });
    }

    fn unix_ms(&self) -> u64 {
        UNIX_START_MS + self.now.duration_since(self.epoch).as_millis() as u64
    }

    fn boot(&mut self, index: usize) {
        let seed = self.rng.next_u64();
        let mut core = Election::new(self.configs[index].clone(), seed, self.now, self.unix_ms()).expect("config");
        let resources = Resources {
            cpu_millis: self.rng.below(8000) as u32,
            free_disk_mib: self.rng.below(1_000_000) as u64,
            members_known: 0,
        };
        core.handle(Input::Resources(resources), self.now);
        let outputs = core.start(self.now);
        self.nodes[index] = Some(core);
        let seed = self.rng.next_u64();
        let config = self.registration_configs[index].clone();
        let mut registration = Registration::new(config, seed, self.now, self.unix_ms()).expect("config");
        let profile = Profile {
            url: format!("http://{}:7100", self.configs[index].address.ip()),
            cpus: 4,
            ..Profile::default()
        };
        registration.handle(registration::Input::Profile(profile), self.now);
        self.registrations[index] = Some(registration);
        self.lives[index] += 1;
        self.changed = true;
        self.apply(index, outputs);
    }

    fn apply(&mut self, from: usize, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Multicast { datagram, .. } => {
                    let verified = control::decode(&self.key, &datagram, &self.limits).expect("own datagram");
                    let message = Rc::new(verified);
                    for to in (0..NODES).filter(|to| *to != from) {
                        if self.side[to] != self.side[from] || self.rng.chance(self.loss) {
                            continue;
                        }
                        let delay = self.rng.between(Duration::from_micros(200), Duration::from_millis(3));
                        self.schedule(
                            self.now + delay,
                            Event::Deliver {
                                to,
                                message: Rc::clone(&message),
                            },
                        );
                    }
                }
                Output::SetTimer { timer, at } => {
                    let life = self.lives[from];
                    self.schedule(
                        at,
                        Event::Timer {
                            node: from,
                            life,
                            kind: timer,
                        },
                    );
                }
                Output::CancelTimer => {}
                Output::StateChanged { .. } => self.changed = true,
                Output::LeaderChanged(leader) => {
                    self.changed = true;
                    if let Some(core) = self.registrations[from].as_mut() {
                        let outputs = core.handle(registration::Input::Leader(leader), self.now);
                        self.apply_registration(from, outputs);
                    }
                }
            }
        }
    }

    fn apply_registration(&mut self, from: usize, outputs: Vec<registration::Output>) {
        self.registration_changed = true;
        for output in outputs {
            match output {
                registration::Output::Unicast { to, datagram, .. } => {
                    let Some(to) = (0..NODES).find(|index| self.configs[*index].address == to) else {
                        continue;
                    };
                    if self.side[to] != self.side[from] || self.rng.chance(self.loss) {
                        continue;
                    }
                    let message = Rc::new(self.open(&datagram));
                    let delay = self.rng.between(Duration::from_micros(200), Duration::from_millis(3));
                    self.schedule(self.now + delay, Event::DeliverSegment { to, message });
                }
                registration::Output::Multicast { datagram, .. } => {
                    let message = Rc::new(self.open(&datagram));
                    for to in (0..NODES).filter(|to| *to != from) {
                        if self.side[to] != self.side[from] || self.rng.chance(self.loss) {
                            continue;
                        }
                        let delay = self.rng.between(Duration::from_micros(200), Duration::from_millis(3));
                        let message = Rc::clone(&message);
                        self.schedule(self.now + delay, Event::DeliverSegment { to, message });
                    }
                }
                registration::Output::Report { message, .. } => {
                    self.take_report(&message);
                    let answer = ReportAnswer {
                        seq: message.seq,
                        leader_override: None,
                    };
                    let life = self.lives[from];
                    let at = self.now + self.rng.between(Duration::from_millis(1), Duration::from_millis(20));
                    self.schedule(
                        at,
                        Event::Answer {
                            node: from,
                            life,
                            answer,
                        },
                    );
                }
                registration::Output::SetTimer { timer, at } => {
                    let life = self.lives[from];
                    self.schedule(
                        at,
                        Event::RegistrationTimer {
                            node: from,
                            life,
                            kind: timer,
                        },
                    );
                }
                registration::Output::CancelTimer(_) => {}
                registration::Output::Override(forced) => {
                    if let Some(core) = self.nodes[from].as_mut() {
                        let outputs = core.handle(Input::Override(forced), self.now);
                        self.apply(from, outputs);
                    }
                }
            }
        }
    }

    fn open(&self, datagram: &[u8]) -> segment::Verified {
        segment::decode(&self.key, datagram, &SegmentLimits::default()).expect("own datagram")
    }

    /// The mover takes a leader's report (HTTP: no loss).
    fn take_report(&mut self, message: &SegmentMessage) {
        let SegmentBody::SegmentReport(report) = &message.body else {
            return;
        };
        let superseded = self.mover.as_ref().is_some_and(|record| {
            message.term < record.term
                && record.leader != message.sender
                && report.members.iter().all(|member| member.name != record.leader)
                && self.now < record.reported + SUPERSEDE_AFTER
        });
        if superseded {
            return;
        }
        let mut members: BTreeSet<String> = report.members.iter().map(|member| member.name.clone()).collect();
        if report.kind == ReportKind::TakeOver
            && let Some(record) = &self.mover
        {
            members.extend(record.members.iter().cloned());
        }
        self.mover = Some(MoverRecord {
            leader: message.sender.clone(),
            term: message.term,
            members,
            reported: self.now,
        });
    }

    /// Whether the registration has converged on `leader`: its report lists exactly the live nodes, every
    /// live member found itself listed (claim 38 (E)), and the mover's record says the same.
    fn registration_converged(&self, leader: usize) -> bool {
        let Some(core) = self.registrations[leader].as_ref() else {
            return false;
        };
        let live = || (0..NODES).filter(|index| self.nodes[*index].is_some());
        let live_count = live().count();
        let lists_the_live = core.role() == Role::Leader
            && core.member_count() == live_count
            && live().all(|index| core.lists(&self.configs[index].node));
        let everyone_listed = live()
            .filter(|index| *index != leader)
            .all(|index| self.registrations[index].as_ref().is_some_and(Registration::listed));
        let mover_agrees = self.mover.as_ref().is_some_and(|record| {
            record.leader == self.configs[leader].node
                && record.members.len() == live_count
                && live().all(|index| record.members.contains(&self.configs[index].node))
        });
        lists_the_live && everyone_listed && mover_agrees
    }

    /// What keeps the registration from having converged on `leader`, if anything.
    fn registration_gap(&self, leader: usize) -> Option<String> {
        let live: BTreeSet<String> = (0..NODES)
            .filter(|index| self.nodes[*index].is_some())
            .map(|index| self.configs[index].node.clone())
            .collect();
        let Some(core) = self.registrations[leader].as_ref() else {
            return Some("the leader has no registration core".into());
        };
        if core.role() != Role::Leader {
            return Some(format!("the leader's registration is {}", core.role().as_str()));
        }
        let listed: BTreeSet<String> = core.members().into_iter().map(|member| member.name).collect();
        if listed != live {
            return Some(format!("the leader lists {listed:?}, live are {live:?}"));
        }
        let unlisted: Vec<&str> = (0..NODES)
            .filter(|index| *index != leader)
            .filter(|index| self.registrations[*index].as_ref().is_some_and(|core| !core.listed()))
            .map(|index| self.configs[index].node.as_str())
            .collect();
        if !unlisted.is_empty() {
            return Some(format!("{unlisted:?} have not seen themselves listed"));
        }
        match &self.mover {
            Some(record) if record.leader == self.configs[leader].node && record.members == live => None,
            Some(record) => Some(format!(
                "the mover's record: leader {} (term {}), members {:?}",
                record.leader, record.term, record.members
            )),
            None => Some("the mover has no record".into()),
        }
    }

    /// Runs the next event before `until`; false when there is none.
    fn step(&mut self, until: Instant) -> bool {
        let Some(next) = self.queue.peek() else { return false };
        if next.at > until {
            return false;
        }
        let Some(Scheduled { at, event, .. }) = self.queue.pop() else {
            return false;
        };
        self.now = at;
        self.events += 1;
        match event {
            Event::Start(index) => self.boot(index),
            Event::Deliver { to, message } => {
                if let Some(core) = self.nodes[to].as_mut() {
                    let outputs = core.handle(Input::Verified(&message), at);
                    self.apply(to, outputs);
                }
            }
            Event::DeliverSegment { to, message } => {
                if let Some(core) = self.registrations[to].as_mut() {
                    let outputs = core.handle(registration::Input::Verified(&message), at);
                    self.apply_registration(to, outputs);
                }
            }
            Event::RegistrationTimer { node, life, kind } => {
                let current = self.lives[node] == life;
                if let Some(core) = self.registrations[node].as_mut().filter(|_| current)
                    && core.timer(kind) == Some(at)
                {
                    let outputs = core.handle(registration::Input::Timer(kind), at);
                    self.apply_registration(node, outputs);
                }
            }
            Event::Answer { node, life, answer } => {
                let current = self.lives[node] == life;
                if let Some(core) = self.registrations[node].as_mut().filter(|_| current) {
                    let outputs = core.handle(registration::Input::ReportAnswered(answer), at);
                    self.apply_registration(node, outputs);
                }
            }
            Event::Timer { node, life, kind } => {
                let current = self.lives[node] == life;
                // Timers of an earlier life, and timers replaced since, are dropped.
                if let Some(core) = self.nodes[node].as_mut().filter(|_| current)
                    && core.timer() == Some((kind, at))
                {
                    let outputs = core.handle(Input::Timer(kind), at);
                    self.apply(node, outputs);
                }
            }
            Event::Fault => self.fault(),
            Event::Partition => self.partition(),
            Event::Heal => {
                self.side = vec![false; NODES];
                self.last_fault = FaultKind::Heal;
            }
        }
        true
    }

    fn leader(&self) -> Option<usize> {
        (0..NODES).find(|i| self.nodes[*i].as_ref().is_some_and(|n| n.state() == State::GlIsMe))
    }

    /// Half the time the leader alone is cut off (seed: "a GL was only temporarily too busy to send an LA
    /// message ... or the LAN was too busy"), otherwise the segment splits in two random halves.
    fn partition(&mut self) {
        match self.leader() {
            Some(leader) if self.rng.chance(0.5) => self.side[leader] = true,
            _ => {
                for index in 0..NODES {
                    self.side[index] = self.rng.chance(0.5);
                }
            }
        }
    }

    /// A crash (half the time of the leader) or a restart of a crashed node.
    fn fault(&mut self) {
        self.changed = true;
        let crashed: Vec<usize> = (0..NODES).filter(|i| self.nodes[*i].is_none()).collect();
        let eligible_alive = (0..NODES)
            .filter(|i| self.nodes[*i].is_some() && !self.configs[*i].never_lead)
            .count();
        let restart = !crashed.is_empty() && (self.rng.chance(0.5) || eligible_alive <= 3);
        if restart {
            let index = crashed[self.rng.below(crashed.len())];
            self.boot(index);
            self.last_fault = FaultKind::Restart;
            return;
        }
        let leader = self.leader();
        let alive: Vec<usize> = (0..NODES).filter(|i| self.nodes[*i].is_some()).collect();
        let victim = match leader {
            Some(leader) if self.rng.chance(0.5) => leader,
            _ => alive[self.rng.below(alive.len())],
        };
        self.last_fault = if Some(victim) == leader {
            FaultKind::CrashOfLeader
        } else {
            FaultKind::CrashOfMember
        };
        self.nodes[victim] = None;
        self.registrations[victim] = None;
        self.registration_changed = true;
    }

    /// The one node in "GL is me", if every other live node is in "GL known" with it as leader.
    fn agreed_leader(&self) -> Option<usize> {
        let mut leaders = (0..NODES).filter(|i| self.nodes[*i].as_ref().is_some_and(|n| n.state() == State::GlIsMe));
        let leader = leaders.next()?;
        if leaders.next().is_some() {
            return None;
        }
        let name = &self.configs[leader].node;
        let everyone_knows = self.nodes.iter().enumerate().all(|(index, node)| match node {
            None => true,
            Some(_) if index == leader => true,
            Some(node) => node.state() == State::GlKnown && node.leader().is_some_and(|l| l.name == *name),
        });
        everyone_knows.then_some(leader)
    }

    /// After settling: `leader` still leads, nobody else leads, claims or concedes, and nobody follows
    /// another node. A member may briefly be in "GL unknown" when loss ate several LAs in a row.
    fn still_led_by(&self, leader: usize) -> Result<(), String> {
        let name = &self.configs[leader].node;
        for (index, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else {
                if index == leader {
                    return Err("the leader was crashed".into());
                }
                continue;
            };
            let fine = match node.state() {
                State::GlIsMe => index == leader,
                State::GlKnown => node.leader().is_some_and(|l| l.name == *name),
                State::GlUnknown => index != leader,
                State::VotingOpen | State::Conceding => false,
            };
            if !fine {
                return Err(format!(
                    "{} is in {} after settling on {name}",
                    self.configs[index].node,
                    node.state()
                ));
            }
        }
        Ok(())
    }
}

/// The bound within which, after the last fault, the registration report lists the live members: the
/// election's bound, then the registration's ([`RegistrationTimers::converge_bound`]). With the defaults,
/// 127.5 s.
fn registration_bound() -> Duration {
    Timers::default().settle_bound() + RegistrationTimers::default().converge_bound()
}

/// One seed: nodes start within 2 s; 1 to 6 faults (crash, often of the leader, or restart) between 20 s
/// and 90 s, and half the time a partition of 8 to 40 s starting between 20 s and 80 s; then no more
/// faults, loss continuing.
fn run_seed(seed: u64, bound: Duration) -> Result<Outcome, String> {
    let mut segment = Segment::new(seed);
    let mut faults = 1 + segment.rng.below(6);
    let mut last_fault = segment.epoch;
    for _ in 0..faults {
        let at = segment.epoch + segment.rng.between(Duration::from_secs(20), Duration::from_secs(90));
        last_fault = last_fault.max(at);
        segment.schedule(at, Event::Fault);
    }
    if segment.rng.chance(0.5) {
        let split = segment.epoch + segment.rng.between(Duration::from_secs(20), Duration::from_secs(80));
        let heal = split + segment.rng.between(Duration::from_secs(8), Duration::from_secs(40));
        last_fault = last_fault.max(heal);
        segment.schedule(split, Event::Partition);
        segment.schedule(heal, Event::Heal);
        faults += 2;
    }
    while segment.step(last_fault) {}
    let deadline = last_fault + bound;
    let mut settled = None;
    while settled.is_none() && segment.step(deadline) {
        if std::mem::take(&mut segment.changed) {
            settled = segment.agreed_leader().map(|leader| (leader, segment.now));
        }
    }
    if settled.is_none() {
        settled = segment.agreed_leader().map(|leader| (leader, segment.now));
    }
    let Some((leader, settled_at)) = settled else {
        let states: Vec<String> = segment
            .nodes
            .iter()
            .map(|node| node.as_ref().map_or("crashed".into(), |n| n.state().to_string()))
            .collect();
        return Err(format!("no single leader known to all within {bound:?}: {states:?}"));
    };
    // The leader stays for `STABLE_FOR`, and meanwhile (or later, within its bound) the registration
    // converges on it.
    let end = settled_at + STABLE_FOR;
    let registration_deadline = last_fault + registration_bound();
    let mut registered_at = segment.registration_converged(leader).then_some(segment.now);
    while segment.step(end.max(registration_deadline)) {
        let changed = std::mem::take(&mut segment.changed);
        let registration_changed = std::mem::take(&mut segment.registration_changed);
        if changed && segment.now <= end {
            segment.still_led_by(leader)?;
        }
        if registered_at.is_none() && (changed || registration_changed) && segment.registration_converged(leader) {
            registered_at = Some(segment.now);
        }
        if registered_at.is_some() && segment.now >= end {
            break;
        }
    }
    let Some(registered_at) = registered_at else {
        let gap = segment.registration_gap(leader).unwrap_or_default();
        return Err(format!(
            "the registration did not converge within {:?} of the last fault: {gap}",
            registration_bound()
        ));
    };
    Ok(Outcome {
        loss: segment.loss,
        faults,
        settle: settled_at - last_fault,
        registered: registered_at - last_fault,
        last_fault: segment.last_fault,
        events: segment.events,
    })
}

#[test]
fn twenty_nodes_settle_on_one_leader_and_register_after_loss_crashes_and_restarts() {
    let seeds: u64 = std::env::var("TERN_ELECTION_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(SEEDS);
    let bound = Timers::default().settle_bound();
    let started = Instant::now();
    // Two threads, one per core; each seed is independent and deterministic.
    let halves: Vec<Vec<(u64, Result<Outcome, String>)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2u64)
            .map(|half| {
                scope.spawn(move || {
                    (0..seeds)
                        .filter(|seed| seed % 2 == half)
                        .map(|seed| (seed, run_seed(seed, bound)))
                        .collect()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("worker"))
            .collect()
    });
    let results: Vec<(u64, Result<Outcome, String>)> = halves.into_iter().flatten().collect();
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(seed, result)| result.as_ref().err().map(|error| format!("seed {seed}: {error}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    let outcomes: Vec<&Outcome> = results.iter().filter_map(|(_, result)| result.as_ref().ok()).collect();
    let mut settle: Vec<Duration> = outcomes.iter().map(|outcome| outcome.settle).collect();
    settle.sort();
    let worst = results
        .iter()
        .filter_map(|(seed, result)| result.as_ref().ok().map(|outcome| (outcome.settle, *seed, outcome)))
        .max_by_key(|(settle, _, _)| *settle)
        .expect("outcomes");
    let events: u64 = outcomes.iter().map(|outcome| outcome.events).sum();
    let faults: usize = outcomes.iter().map(|outcome| outcome.faults).sum();
    let by_kind = |kind: FaultKind| {
        let mut times: Vec<Duration> = outcomes
            .iter()
            .filter(|outcome| outcome.last_fault == kind)
            .map(|outcome| outcome.settle)
            .collect();
        times.sort();
        let median = times.get(times.len() / 2).copied().unwrap_or_default();
        let max = times.last().copied().unwrap_or_default();
        format!("{kind:?} {} seeds, median {median:.1?}, max {max:.1?}", times.len())
    };
    println!(
        "election simulation: {seeds} seeds x {NODES} nodes, {faults} faults (crashes, restarts, partitions, heals), \
         {events} events in {:.2?}; time from the last fault to one leader known to every live node: \
         median {:.1?}, p99 {:.1?}, max {:.1?} (seed {}, loss {:.1}%), bound {bound:?}; by last fault: {}; {}; {}; {}",
        started.elapsed(),
        settle[settle.len() / 2],
        settle[settle.len() * 99 / 100],
        worst.0,
        worst.1,
        worst.2.loss * 100.0,
        by_kind(FaultKind::CrashOfLeader),
        by_kind(FaultKind::Heal),
        by_kind(FaultKind::CrashOfMember),
        by_kind(FaultKind::Restart),
    );
    assert!(worst.0 <= bound);

    let mut registered: Vec<Duration> = outcomes.iter().map(|outcome| outcome.registered).collect();
    registered.sort();
    let mut after_settle: Vec<Duration> = outcomes
        .iter()
        .map(|outcome| outcome.registered.saturating_sub(outcome.settle))
        .collect();
    after_settle.sort();
    let slowest = results
        .iter()
        .filter_map(|(seed, result)| {
            result
                .as_ref()
                .ok()
                .map(|outcome| (outcome.registered, *seed, outcome.loss))
        })
        .max_by_key(|(registered, _, _)| *registered)
        .expect("outcomes");
    println!(
        "registration simulation: time from the last fault until the leader's registration report lists exactly \
         the live nodes, each of them has seen itself listed, and the mover's record agrees: median {:.1?}, p99 \
         {:.1?}, max {:.1?} (seed {}, loss {:.1}%), bound {:?}; after the election settled: median {:.1?}, p99 \
         {:.1?}, max {:.1?}, bound {:?}",
        registered[registered.len() / 2],
        registered[registered.len() * 99 / 100],
        slowest.0,
        slowest.1,
        slowest.2 * 100.0,
        registration_bound(),
        after_settle[after_settle.len() / 2],
        after_settle[after_settle.len() * 99 / 100],
        after_settle.last().copied().unwrap_or_default(),
        RegistrationTimers::default().converge_bound(),
    );
    assert!(slowest.0 <= registration_bound());
    let after_settle_max = after_settle.last().copied().unwrap_or_default();
    assert!(after_settle_max <= RegistrationTimers::default().converge_bound());
}

#[test]
fn the_simulation_is_deterministic_by_seed() {
    let bound = Timers::default().settle_bound();
    let first = run_seed(17, bound).expect("seed 17");
    let again = run_seed(17, bound).expect("seed 17");
    assert_eq!(
        (first.settle, first.registered, first.events),
        (again.settle, again.registered, again.events)
    );
}

/// A multicast group and free port for this test process.
fn test_channel() -> ControlChannel {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map(|address| address.port())
        .expect("a free port");
    let group = Ipv4Addr::new(239, 255, (std::process::id() % 250) as u8, 42);
    ControlChannel::new(SocketAddrV4::new(group, port), Ipv4Addr::LOCALHOST)
}

/// Whether a datagram sent to the group on `lo` comes back to a member socket.
async fn loopback_multicast_works(channel: &ControlChannel) -> Result<(), String> {
    let socket = driver::bind(channel).map_err(|e| e.to_string())?;
    socket
        .send_to(b"probe", SocketAddr::V4(channel.group))
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buffer)).await {
        Ok(Ok((5, _))) => Ok(()),
        Ok(Ok((len, _))) => Err(format!("probe came back with {len} bytes")),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("probe did not come back within 1 s".into()),
    }
}

/// Waits until every handle knows the same leader; returns its name.
async fn agreed(handles: &[&ElectionHandle], within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let names: Vec<Option<String>> = handles
            .iter()
            .map(|handle| handle.leader().borrow().as_ref().map(|leader| leader.name.clone()))
            .collect();
        let leading = handles
            .iter()
            .filter(|handle| handle.status().borrow().state == State::GlIsMe)
            .count();
        if let Some(Some(first)) = names.first()
            && names.iter().all(|name| name.as_ref() == Some(first))
            && leading == 1
        {
            return Some(first.clone());
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn drivers_on_loopback_multicast_elect_one_leader_and_fail_over() {
    let channel = test_channel();
    if let Err(reason) = loopback_multicast_works(&channel).await {
        eprintln!("skipping: IP multicast on the loopback interface does not work here ({reason})");
        return;
    }
    let timers = Timers::default().scaled_down(50);
    let mut handles = Vec::new();
    for (index, name) in ["a", "b", "c"].into_iter().enumerate() {
        let address = SocketAddr::from(([127, 0, 0, 1], 7100 + index as u16));
        let mut config = ElectionConfig::new("lo-segment", name, address, key());
        config.timers = timers;
        config.priority = 100 + index as u8 * 50;
        handles.push(driver::spawn(config, channel).expect("driver starts"));
    }
    let within = timers.settle_bound() * 4;
    let everyone: Vec<&ElectionHandle> = handles.iter().collect();
    let leader = agreed(&everyone, within).await.expect("one leader known to all");

    // A datagram tagged with another key is refused and counted by every node, and changes nothing.
    let forger = driver::bind(&channel).expect("forger socket");
    let forged = ControlMessage {
        segment: "lo-segment".into(),
        sender: "mallory".into(),
        address: "127.0.0.1:9".parse().expect("address"),
        term: 1000,
        incarnation: 1,
        seq: 1,
        sent_at_ms: 0,
        body: ControlBody::LeaderClaim(tern_wire::control::Claim {
            forced: true,
            ..Default::default()
        }),
    };
    let other_key = SecretKey::parse(&"0f".repeat(32)).expect("key");
    forger
        .send_to(&control::encode(&other_key, &forged), SocketAddr::V4(channel.group))
        .await
        .expect("send");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while handles
        .iter()
        .any(|handle| handle.status().borrow().counters.refused.bad_tag == 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "every node counts the forged claim"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(agreed(&everyone, within).await.as_deref(), Some(leader.as_str()));

    // The leader stops: the others elect a new one among themselves.
    let position = ["a", "b", "c"]
        .iter()
        .position(|name| *name == leader)
        .expect("a known node");
    let stopped = handles.remove(position);
    stopped.stop().await;
    let survivors: Vec<&ElectionHandle> = handles.iter().collect();
    let successor = agreed(&survivors, within).await.expect("a new leader");
    assert_ne!(successor, leader);
    for handle in handles {
        let counters = handle.status().borrow().counters;
        assert!(counters.leader_alive_heard > 0);
        assert_eq!(counters.refused.bad_tag, 1);
        handle.stop().await;
    }
}
