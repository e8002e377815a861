//! A deterministic simulation of a cache community: 7 peers and a registry over the real cores and the
//! real encoder and decoder, on an in-memory network with a seeded random source, over 1,000 seeds of
//! message loss, crashes (often of the master), restarts and partitions. Each seed checks that the
//! registry never accepts two masters at one term, and that after the last fault the community settles,
//! within the bound, on exactly one master whose peer list (and allocation table) every live peer holds and
//! which lists exactly the live peers, then stays so; a dead master is replaced within the failover bound
//! (3 s with the default timers).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tern_community::{
    Community, CommunityConfig, Event as CoreEvent, Input, Output, Registry, RegistryConfig, RegistryState, Role,
    TimerKind, Timers,
};
use tern_wire::SecretKey;
use tern_wire::community::{self, CommunityBody, CommunityLimits, CommunityMessage, Epoch, Verified};

const NODES: usize = 7;
const SEEDS: u64 = 1000;
const MAX_LOSS: f64 = 0.05;
const UNIX_START_MS: u64 = 1_700_000_000_000;
/// The registry's end of a link.
const REGISTRY: usize = usize::MAX;
/// How long the community must keep its master after it settled.
const STABLE_FOR: Duration = Duration::from_secs(4);

fn key() -> SecretKey {
    SecretKey::parse(&"5c".repeat(32)).expect("key")
}

fn address(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 1, index as u8 + 1], 7400))
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
    /// A message reaches a peer (`to`) or the registry ([`REGISTRY`]) from `from`.
    Deliver {
        from: usize,
        to: usize,
        message: Rc<Verified>,
    },
    Timer {
        node: usize,
        life: u32,
        kind: TimerKind,
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

/// What the last fault was, for the figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FaultKind {
    CrashOfMaster,
    CrashOfMember,
    Restart,
    Heal,
}

/// How peers find each other in a seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Registry,
    Multicast,
    Both,
}

/// What one seed's run measured.
struct Outcome {
    loss: f64,
    mode: Mode,
    faults: usize,
    last_fault: FaultKind,
    /// From the last fault until exactly one master was followed by every live peer with the same list.
    failover: Duration,
    /// From the last fault until, besides, that list named exactly the live peers.
    settle: Duration,
    events: u64,
    registry_terms: usize,
}

/// 7 community cores and a registry on a simulated network.
struct Net {
    epoch: Instant,
    now: Instant,
    rng: Rng,
    loss: f64,
    mode: Mode,
    configs: Vec<CommunityConfig>,
    nodes: Vec<Option<Community>>,
    lives: Vec<u32>,
    registry: Registry,
    /// Every master the registry accepted, by term: (name, process run).
    accepted: BTreeMap<u64, (String, u64)>,
    /// Partition side of each peer and of the registry.
    side: Vec<bool>,
    registry_side: bool,
    queue: BinaryHeap<Scheduled>,
    order: u64,
    last_fault: FaultKind,
    /// A role, master or list changed since the last look.
    changed: bool,
    events: u64,
    violation: Option<String>,
    /// Print every message and event (`TERN_COMMUNITY_TRACE=1`, with `TERN_COMMUNITY_SEEDS` to pick).
    trace: bool,
}

impl Net {
    fn new(seed: u64) -> Net {
        let mut rng = Rng(seed);
        let epoch = Instant::now();
        let loss = rng.unit() * MAX_LOSS;
        let mode = match rng.below(3) {
            0 => Mode::Registry,
            1 => Mode::Multicast,
            _ => Mode::Both,
        };
        let configs = (0..NODES)
            .map(|index| {
                let mut config =
                    CommunityConfig::new("site", format!("edge-{index}"), address(index), address(index), key());
                // Few distinct priorities, so that capacity, weight, uptime and name decide too.
                config.priority = [100u8, 128, 128, 200][rng.below(4)];
                config.capacity = [1u64 << 30, 1 << 31][rng.below(2)];
                config.weight = 50 + rng.below(150) as u32;
                config.allocation.replicas = 1 + rng.below(2) as u8;
                config.registry = mode != Mode::Multicast;
                config.discovery = mode != Mode::Registry;
                config
            })
            .collect::<Vec<_>>();
        let registry_config = RegistryConfig::new("10.0.1.250:7300".parse().expect("address"), key());
        let registry = Registry::new(registry_config, RegistryState::default(), rng.next_u64());
        let mut net = Net {
            epoch,
            now: epoch,
            rng,
            loss,
            mode,
            configs,
            nodes: (0..NODES).map(|_| None).collect(),
            lives: vec![0; NODES],
            registry,
            accepted: BTreeMap::new(),
            side: vec![false; NODES],
            registry_side: false,
            queue: BinaryHeap::new(),
            order: 0,
            last_fault: FaultKind::Restart,
            changed: false,
            events: 0,
            violation: None,
            trace: std::env::var_os("TERN_COMMUNITY_TRACE").is_some(),
        };
        for index in 0..NODES {
            let at = epoch + net.rng.between(Duration::ZERO, Duration::from_secs(2));
            net.schedule(at, Event::Start(index));
        }
        net
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

    fn side_of(&self, endpoint: usize) -> bool {
        if endpoint == REGISTRY {
            self.registry_side
        } else {
            self.side[endpoint]
        }
    }

    /// Encodes and decodes `message` once, as the wire would.
    fn seal(message: &CommunityMessage, limits: &CommunityLimits) -> Rc<Verified> {
        let bytes = community::encode(&key(), message);
        Rc::new(community::decode(&key(), &bytes, limits).expect("own messages decode"))
    }

    /// Sends one sealed message over the network: lost with the seed's probability or across the
    /// partition, else delayed.
    fn transmit(&mut self, from: usize, to: usize, message: Rc<Verified>) {
        if self.side_of(from) != self.side_of(to) || self.rng.chance(self.loss) {
            return;
        }
        let delay = if from == REGISTRY || to == REGISTRY {
            self.rng.between(Duration::from_millis(1), Duration::from_millis(10))
        } else {
            self.rng.between(Duration::from_micros(200), Duration::from_millis(3))
        };
        self.schedule(self.now + delay, Event::Deliver { from, to, message });
    }

    fn boot(&mut self, index: usize) {
        let seed = self.rng.next_u64();
        let mut core = Community::new(self.configs[index].clone(), seed, self.now, self.unix_ms()).expect("config");
        let out = core.start(self.now);
        self.nodes[index] = Some(core);
        self.lives[index] += 1;
        self.changed = true;
        self.apply(index, out);
    }

    fn apply(&mut self, from: usize, outputs: Vec<Output>) {
        for output in outputs {
            if self.trace {
                let at = self.now.duration_since(self.epoch);
                match &output {
                    Output::Send { to, message } => println!(
                        "{at:.3?} edge-{from} -> {to}: {} {}",
                        message.body.name(),
                        message.epoch
                    ),
                    Output::Multicast { message } | Output::Registry { message } => {
                        println!("{at:.3?} edge-{from} -> *: {} {}", message.body.name(), message.epoch)
                    }
                    Output::Event(event) => println!("{at:.3?} edge-{from}: {event:?}"),
                    _ => {}
                }
            }
            match output {
                Output::Send { to, message } => {
                    let Some(to) = (0..NODES).find(|index| self.configs[*index].address == to) else {
                        continue;
                    };
                    let sealed = Net::seal(&message, &CommunityLimits::default());
                    self.transmit(from, to, sealed);
                }
                Output::Multicast { message } => {
                    let sealed = Net::seal(&message, &CommunityLimits::default());
                    for to in (0..NODES).filter(|to| *to != from) {
                        self.transmit(from, to, Rc::clone(&sealed));
                    }
                }
                Output::Registry { message } => {
                    let sealed = Net::seal(&message, &CommunityLimits::http());
                    self.transmit(from, REGISTRY, sealed);
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
                Output::CancelTimer(_) => {}
                Output::Event(event) => {
                    if !matches!(event, CoreEvent::Located { .. }) {
                        self.changed = true;
                    }
                }
            }
        }
    }

    fn deliver_to_registry(&mut self, from: usize, message: &Verified) {
        let now_ms = self.unix_ms();
        let Ok(reply) = self.registry.handle(message, now_ms) else {
            return;
        };
        let answer = reply.answer;
        if let CommunityBody::RegistryAnswer(registry_answer) = &answer.body {
            if self.trace {
                let record = registry_answer.record.as_ref();
                println!(
                    "{:.3?} registry -> edge-{from}: accepted {} record {:?}",
                    self.now.duration_since(self.epoch),
                    registry_answer.accepted,
                    record.map(|record| (&record.master.name, record.epoch))
                );
            }
            if registry_answer.accepted
                && let Some(record) = &registry_answer.record
            {
                let master = (record.master.name.clone(), record.master.incarnation);
                let term = record.epoch.term;
                match self.accepted.get(&term) {
                    Some(earlier) if *earlier != master => {
                        self.violation = Some(format!(
                            "the registry accepted two masters at term {term}: {earlier:?} and {master:?}"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.accepted.insert(term, master);
                    }
                }
            }
        }
        let sealed = Net::seal(&answer, &CommunityLimits::http());
        self.transmit(REGISTRY, from, sealed);
    }

    /// Runs one event; false when the queue is empty or the next event is after `until`.
    fn step(&mut self, until: Instant) -> bool {
        let Some(next) = self.queue.peek() else {
            return false;
        };
        if next.at > until {
            return false;
        }
        let Some(Scheduled { at, event, .. }) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(at);
        self.events += 1;
        match event {
            Event::Start(index) => self.boot(index),
            Event::Deliver { from, to, message } => {
                if to == REGISTRY {
                    self.deliver_to_registry(from, &message);
                } else if let Some(core) = self.nodes[to].as_mut() {
                    let out = core.handle(Input::Verified(&message), self.now);
                    self.apply(to, out);
                }
            }
            Event::Timer { node, life, kind } => {
                if self.lives[node] == life
                    && let Some(core) = self.nodes[node].as_mut()
                {
                    let out = core.handle(Input::Timer(kind), self.now);
                    self.apply(node, out);
                }
            }
            Event::Fault => {
                self.fault();
                if self.trace {
                    println!(
                        "{:.3?} fault: {:?}",
                        self.now.duration_since(self.epoch),
                        self.last_fault
                    );
                }
            }
            Event::Partition => {
                for index in 0..NODES {
                    self.side[index] = self.rng.chance(0.5);
                }
                self.registry_side = self.rng.chance(0.5);
                if self.trace {
                    println!(
                        "{:.3?} partition {:?} registry {}",
                        self.now.duration_since(self.epoch),
                        self.side,
                        self.registry_side
                    );
                }
            }
            Event::Heal => {
                self.side = vec![false; NODES];
                self.registry_side = false;
                self.last_fault = FaultKind::Heal;
                self.changed = true;
                if self.trace {
                    println!("{:.3?} heal", self.now.duration_since(self.epoch));
                }
            }
        }
        true
    }

    fn live(&self) -> Vec<usize> {
        (0..NODES).filter(|index| self.nodes[*index].is_some()).collect()
    }

    fn master_index(&self) -> Option<usize> {
        (0..NODES).find(|index| {
            self.nodes[*index]
                .as_ref()
                .is_some_and(|core| core.role() == Role::Master)
        })
    }

    /// A crash (half the time of the master), or a restart of a crashed peer.
    fn fault(&mut self) {
        let live = self.live();
        let crashed: Vec<usize> = (0..NODES).filter(|index| self.nodes[*index].is_none()).collect();
        let restart = !crashed.is_empty() && (live.len() <= 2 || self.rng.chance(0.4));
        if restart {
            let index = crashed[self.rng.below(crashed.len())];
            self.boot(index);
            self.last_fault = FaultKind::Restart;
            return;
        }
        let master = self.master_index();
        let (victim, kind) = match master {
            Some(master) if self.rng.chance(0.5) => (master, FaultKind::CrashOfMaster),
            _ => {
                let victim = live[self.rng.below(live.len())];
                let kind = if Some(victim) == master {
                    FaultKind::CrashOfMaster
                } else {
                    FaultKind::CrashOfMember
                };
                (victim, kind)
            }
        };
        self.nodes[victim] = None;
        self.last_fault = kind;
        self.changed = true;
    }

    /// The master every live peer follows, with the same epoch and list; with `exact`, that list names
    /// exactly the live peers (their current process runs).
    fn agreed_on(&self, exact: bool) -> Option<(usize, u64, Epoch)> {
        let master = self.master_index()?;
        let master_core = self.nodes[master].as_ref()?;
        let epoch = master_core.epoch()?;
        let list = master_core.peer_list()?;
        let live: BTreeSet<(String, u64)> = self
            .nodes
            .iter()
            .flatten()
            .map(|core| (core.me().name.clone(), core.me().incarnation))
            .collect();
        let listed: BTreeSet<(String, u64)> = list
            .peers
            .iter()
            .map(|peer| (peer.name.clone(), peer.incarnation))
            .collect();
        if exact && live != listed {
            return None;
        }
        let everyone = self.nodes.iter().flatten().all(|core| {
            let role_ok = core.role() == Role::Member || core.me().name == master_core.me().name;
            role_ok && core.epoch() == Some(epoch) && core.peer_list() == Some(list)
        });
        everyone.then_some((master, master_core.me().incarnation, epoch))
    }

    fn agreed(&self) -> Option<(usize, u64, Epoch)> {
        self.agreed_on(true)
    }

    fn describe(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(index, core)| match core {
                None => format!("edge-{index}: crashed"),
                Some(core) => format!(
                    "edge-{index}: {} master {:?} epoch {:?} listing {:?}",
                    core.role(),
                    core.master().map(|master| master.name.clone()),
                    core.epoch(),
                    core.peer_list()
                        .map(|list| list.peers.iter().map(|peer| peer.name.clone()).collect::<Vec<_>>())
                ),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The bound within which a seed must settle after its last fault: the failover bound for a dead master,
/// and for a healed partition the announce interval (the two masters meet), a join, and the members'
/// next pings.
fn settle_bound(timers: &Timers) -> Duration {
    timers.failover_bound() + timers.announce_interval + timers.registry_timeout + timers.probe_timeout
}

/// One seed: peers start within 2 s; 1 to 5 faults between 4 s and 12 s, and half the time a partition
/// of 2 to 6 s starting between 4 s and 10 s; then no more faults, loss continuing.
fn run_seed(seed: u64) -> Result<Outcome, String> {
    let mut net = Net::new(seed);
    let timers = Timers::default();
    let bound = settle_bound(&timers);
    let mut faults = 1 + net.rng.below(5);
    let mut last_fault = net.epoch;
    for _ in 0..faults {
        let at = net.epoch + net.rng.between(Duration::from_secs(4), Duration::from_secs(12));
        last_fault = last_fault.max(at);
        net.schedule(at, Event::Fault);
    }
    if net.rng.chance(0.5) {
        let split = net.epoch + net.rng.between(Duration::from_secs(4), Duration::from_secs(10));
        let heal = split + net.rng.between(Duration::from_secs(2), Duration::from_secs(6));
        last_fault = last_fault.max(heal);
        net.schedule(split, Event::Partition);
        net.schedule(heal, Event::Heal);
        faults += 2;
    }
    while net.step(last_fault) {}
    let deadline = last_fault + bound;
    let mut failed_over = net.agreed_on(false).map(|_| net.now);
    let mut settled = net.agreed().map(|agreed| (agreed, net.now));
    while settled.is_none() && net.step(deadline) {
        if std::mem::take(&mut net.changed) {
            if failed_over.is_none() {
                failed_over = net.agreed_on(false).map(|_| net.now);
            }
            settled = net.agreed().map(|agreed| (agreed, net.now));
        }
    }
    if let Some(violation) = net.violation.take() {
        return Err(violation);
    }
    let Some(((master, incarnation, _), settled_at)) = settled else {
        return Err(format!(
            "not settled within {bound:?} of the last fault: {}",
            net.describe()
        ));
    };
    // The master stays, alone, and the list stays agreed.
    let end = settled_at + STABLE_FOR;
    while net.step(end) {
        if std::mem::take(&mut net.changed) {
            let masters: Vec<usize> = (0..NODES)
                .filter(|index| {
                    net.nodes[*index]
                        .as_ref()
                        .is_some_and(|core| core.role() == Role::Master)
                })
                .collect();
            let same = masters == [master]
                && net.nodes[master]
                    .as_ref()
                    .is_some_and(|core| core.me().incarnation == incarnation);
            if !same {
                return Err(format!("the master changed after settling: {}", net.describe()));
            }
        }
    }
    if let Some(violation) = net.violation.take() {
        return Err(violation);
    }
    if net.agreed().is_none_or(|(index, _, _)| index != master) {
        return Err(format!(
            "the peers disagree {STABLE_FOR:?} after settling: {}",
            net.describe()
        ));
    }
    Ok(Outcome {
        loss: net.loss,
        mode: net.mode,
        faults,
        last_fault: net.last_fault,
        failover: failed_over.unwrap_or(settled_at).saturating_duration_since(last_fault),
        settle: settled_at.saturating_duration_since(last_fault),
        events: net.events,
        registry_terms: net.accepted.len(),
    })
}

#[test]
fn seven_peers_settle_on_one_master_and_one_list_after_loss_crashes_restarts_and_partitions() {
    if let Some(seed) = std::env::var("TERN_COMMUNITY_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
    {
        let outcome = run_seed(seed).map(|outcome| (outcome.settle, outcome.last_fault, outcome.mode));
        println!("seed {seed}: {outcome:?}");
        assert!(outcome.is_ok());
        return;
    }
    let seeds: u64 = std::env::var("TERN_COMMUNITY_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(SEEDS);
    let started = Instant::now();
    // Two threads, one per core; each seed is independent and deterministic.
    let halves: Vec<Vec<(u64, Result<Outcome, String>)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2u64)
            .map(|half| {
                scope.spawn(move || {
                    (0..seeds)
                        .filter(|seed| seed % 2 == half)
                        .map(|seed| (seed, run_seed(seed)))
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
    let outcomes: Vec<(u64, &Outcome)> = results
        .iter()
        .filter_map(|(seed, result)| result.as_ref().ok().map(|outcome| (*seed, outcome)))
        .collect();
    let events: u64 = outcomes.iter().map(|(_, outcome)| outcome.events).sum();
    let faults: usize = outcomes.iter().map(|(_, outcome)| outcome.faults).sum();
    let terms: usize = outcomes.iter().map(|(_, outcome)| outcome.registry_terms).sum();
    let figures = |kind: FaultKind, measure: fn(&Outcome) -> Duration| {
        let mut times: Vec<(Duration, u64, f64, Mode)> = outcomes
            .iter()
            .filter(|(_, outcome)| outcome.last_fault == kind)
            .map(|(seed, outcome)| (measure(outcome), *seed, outcome.loss, outcome.mode))
            .collect();
        times.sort_by_key(|time| time.0);
        let median = times.get(times.len() / 2).map(|time| time.0).unwrap_or_default();
        let p99 = times.get(times.len() * 99 / 100).map(|time| time.0).unwrap_or_default();
        match times.last() {
            Some((worst, seed, loss, mode)) => format!(
                "{kind:?} ({} seeds): median {median:.2?}, p99 {p99:.2?}, max {worst:.2?} \
                 (seed {seed}, loss {:.1}%, {mode:?})",
                times.len(),
                loss * 100.0
            ),
            None => format!("{kind:?}: no seed"),
        }
    };
    let kinds = [
        FaultKind::CrashOfMaster,
        FaultKind::CrashOfMember,
        FaultKind::Restart,
        FaultKind::Heal,
    ];
    let failover: Vec<String> = kinds
        .iter()
        .map(|kind| figures(*kind, |outcome| outcome.failover))
        .collect();
    let settle: Vec<String> = kinds
        .iter()
        .map(|kind| figures(*kind, |outcome| outcome.settle))
        .collect();
    println!(
        "community simulation: {seeds} seeds x {NODES} peers, {faults} faults, {events} events in {:.2?}; \
         {terms} masters accepted by the registry, never two at one term.\n\
         time from the last fault to one master whose list every live peer holds: {}\n\
         ... and that list names exactly the live peers: {}\n\
         failover bound {:?}, settle bound {:?}",
        started.elapsed(),
        failover.join("; "),
        settle.join("; "),
        Timers::default().failover_bound(),
        settle_bound(&Timers::default()),
    );
    // A dead master is replaced within the failover bound, even when the crash follows other faults.
    let worst_failover = outcomes
        .iter()
        .filter(|(_, outcome)| outcome.last_fault == FaultKind::CrashOfMaster)
        .map(|(seed, outcome)| (outcome.failover, *seed))
        .max();
    if let Some((worst, seed)) = worst_failover {
        assert!(
            worst <= Timers::default().failover_bound(),
            "seed {seed}: failover took {worst:?}"
        );
    }
}

#[test]
fn the_simulation_is_deterministic_by_seed() {
    let first = run_seed(17).expect("seed 17");
    let again = run_seed(17).expect("seed 17");
    assert_eq!((first.settle, first.events), (again.settle, again.events));
}
