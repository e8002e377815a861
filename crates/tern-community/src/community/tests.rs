//! The community core event by event on a fake clock, every message through the real encoder and
//! decoder: creating and joining, allow and deny, `CRMSG_UPDATEPEERLIST` to every member, an election on
//! master silence won by the highest priority, an election aborted by the old master's answer,
//! `CRMSG_NOMINATEMASTER` on leave, stale epochs fenced, messages without the cluster key refused and
//! counted, location requests and discovery by `CRMSG_WAKEUP`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tern_wire::SecretKey;
use tern_wire::community::{
    self, CommunityBody, CommunityLimits, CommunityMessage, DenyReason, ElectionAnswer, Epoch, PeerPing,
};

use super::*;
use crate::config::Timers;
use crate::registry::{Registry, RegistryConfig, RegistryState};

const UNIX_START_MS: u64 = 1_700_000_000_000;
/// The registry's end of a link.
const REGISTRY: usize = usize::MAX;

fn key() -> SecretKey {
    SecretKey::parse(&"a7".repeat(32)).expect("key")
}

fn address(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, index as u8 + 1], 7400))
}

fn registry_address() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 250], 7300))
}

/// A decision about one message in flight: deliver it or lose it.
type Filter = Box<dyn Fn(usize, usize, &CommunityMessage) -> bool>;

/// Peers and a registry on an instant, lossless network (unless told otherwise), on a fake clock.
/// A paused peer: its core, its timers, the datagrams its socket kept (sender, bytes).
type Paused = (Community, Vec<(TimerKind, Instant)>, Vec<(SocketAddr, Vec<u8>)>);

struct Cluster {
    start: Instant,
    now: Instant,
    configs: Vec<CommunityConfig>,
    nodes: Vec<Option<Community>>,
    lives: Vec<u64>,
    registry: Option<Registry>,
    inbox: VecDeque<(usize, usize, Vec<u8>)>,
    timers: BTreeMap<(usize, TimerKind), Instant>,
    /// Every message that left a peer or the registry: (from, to, message); `to` is `None` for a multicast.
    sent: Vec<(usize, Option<usize>, CommunityMessage)>,
    events: Vec<(usize, Event)>,
    /// Links cut, one way: (from, to).
    cut: BTreeSet<(usize, usize)>,
    /// Messages to lose, besides cut links.
    lose: Option<Filter>,
    /// Peers paused (a stopped process, a frozen VM), with their timers as they were and the datagrams
    /// that arrived meanwhile.
    paused: BTreeMap<usize, Paused>,
}

impl Cluster {
    /// `names` with their priorities; a registry when `registry`.
    fn new(peers: &[(&str, u8)], registry: bool) -> Cluster {
        let start = Instant::now();
        let configs = peers
            .iter()
            .enumerate()
            .map(|(index, (name, priority))| {
                let mut config = CommunityConfig::new("site", *name, address(index), address(index), key());
                config.priority = *priority;
                config.registry = registry;
                config
            })
            .collect::<Vec<_>>();
        let registry = registry.then(|| {
            Registry::new(
                RegistryConfig::new(registry_address(), key()),
                RegistryState::default(),
                99,
            )
        });
        Cluster {
            start,
            now: start,
            nodes: configs.iter().map(|_| None).collect(),
            lives: vec![0; configs.len()],
            configs,
            registry,
            inbox: VecDeque::new(),
            timers: BTreeMap::new(),
            sent: Vec::new(),
            events: Vec::new(),
            cut: BTreeSet::new(),
            lose: None,
            paused: BTreeMap::new(),
        }
    }

    /// Freezes peer `index`: it runs nothing until [`Cluster::resume`]; what the others send it meanwhile
    /// waits in its socket.
    fn pause(&mut self, index: usize) {
        let core = self.nodes[index].take().expect("alive");
        let timers = self
            .timers
            .iter()
            .filter(|((node, _), _)| *node == index)
            .map(|((_, kind), at)| (*kind, *at))
            .collect();
        self.timers.retain(|(node, _), _| *node != index);
        self.paused.insert(index, (core, timers, Vec::new()));
    }

    /// Thaws peer `index`: its timers, all overdue, fire at once, before (`timers_first`) or after it
    /// reads what its socket kept (its driver may see either first).
    fn resume(&mut self, index: usize, timers_first: bool) {
        let (core, timers, queued) = self.paused.remove(&index).expect("paused");
        self.nodes[index] = Some(core);
        if timers_first {
            let mut due = timers.clone();
            due.sort_by_key(|(kind, at)| (*at, *kind));
            for (kind, _) in due {
                let now = self.now;
                let out = self.nodes[index]
                    .as_mut()
                    .expect("resumed")
                    .handle(Input::Timer(kind), now);
                self.apply(index, out);
            }
        } else {
            for (kind, at) in timers {
                self.timers.insert((index, kind), at);
            }
        }
        for (from, bytes) in queued {
            let now = self.now;
            let out = self.nodes[index]
                .as_mut()
                .expect("resumed")
                .handle(Input::Datagram { bytes: &bytes, from }, now);
            self.apply(index, out);
        }
        self.settle_messages();
    }

    fn unix_ms(&self) -> u64 {
        UNIX_START_MS + self.now.duration_since(self.start).as_millis() as u64
    }

    fn index_of(&self, to: SocketAddr) -> Option<usize> {
        self.configs.iter().position(|config| config.address == to)
    }

    fn boot(&mut self, index: usize) {
        self.lives[index] += 1;
        let seed = index as u64 * 1000 + self.lives[index];
        let mut core = Community::new(self.configs[index].clone(), seed, self.now, self.unix_ms()).expect("config");
        let out = core.start(self.now);
        self.nodes[index] = Some(core);
        self.apply(index, out);
        self.settle_messages();
    }

    fn crash(&mut self, index: usize) {
        self.nodes[index] = None;
        self.timers.retain(|(node, _), _| *node != index);
    }

    fn core(&self, index: usize) -> &Community {
        self.nodes[index].as_ref().expect("alive")
    }

    fn input(&mut self, index: usize, input: Input<'_>) -> Vec<Output> {
        let now = self.now;
        let out = self.nodes[index].as_mut().expect("alive").handle(input, now);
        self.apply(index, out.clone());
        self.settle_messages();
        out
    }

    fn route(&mut self, from: usize, to: usize, message: &CommunityMessage) {
        if self.cut.contains(&(from, to)) || self.lose.as_ref().is_some_and(|lose| lose(from, to, message)) {
            return;
        }
        self.inbox.push_back((from, to, community::encode(&key(), message)));
    }

    fn apply(&mut self, from: usize, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { to, message } => {
                    let index = self.index_of(to);
                    self.sent.push((from, index, message.clone()));
                    if let Some(index) = index {
                        self.route(from, index, &message);
                    }
                }
                Output::Multicast { message } => {
                    self.sent.push((from, None, message.clone()));
                    for to in (0..self.nodes.len()).filter(|to| *to != from) {
                        self.route(from, to, &message);
                    }
                }
                Output::Registry { message } => {
                    self.sent.push((from, Some(REGISTRY), message.clone()));
                    if self.registry.is_some() {
                        self.route(from, REGISTRY, &message);
                    }
                }
                Output::SetTimer { timer, at } => {
                    self.timers.insert((from, timer), at);
                }
                Output::CancelTimer(timer) => {
                    self.timers.remove(&(from, timer));
                }
                Output::Event(event) => self.events.push((from, event)),
            }
        }
    }

    /// Delivers every message in flight (and those they cause) at the current time.
    fn settle_messages(&mut self) {
        while let Some((from, to, bytes)) = self.inbox.pop_front() {
            if to == REGISTRY {
                let now_ms = self.unix_ms();
                let Some(registry) = self.registry.as_mut() else {
                    continue;
                };
                let Ok(reply) = registry.handle_bytes(&bytes, now_ms) else {
                    continue;
                };
                self.sent.push((REGISTRY, Some(from), reply.answer.clone()));
                self.route(REGISTRY, from, &reply.answer);
                continue;
            }
            let now = self.now;
            let from_address = if from == REGISTRY {
                registry_address()
            } else {
                address(from)
            };
            if let Some((_, _, queued)) = self.paused.get_mut(&to) {
                // A stopped process's socket keeps what arrives (up to its buffer): read on resume.
                queued.push((from_address, bytes));
                continue;
            }
            let Some(core) = self.nodes[to].as_mut() else {
                continue;
            };
            let out = core.handle(
                Input::Datagram {
                    bytes: &bytes,
                    from: from_address,
                },
                now,
            );
            self.apply(to, out);
        }
    }

    /// Runs timers and messages until `until` (relative to the start).
    fn run_until(&mut self, until: Duration) {
        let deadline = self.start + until;
        loop {
            self.settle_messages();
            let next = self
                .timers
                .iter()
                .filter(|(_, at)| **at <= deadline)
                .min_by_key(|(key, at)| (**at, **key))
                .map(|(key, at)| (*key, *at));
            let Some(((index, kind), at)) = next else {
                break;
            };
            self.timers.remove(&(index, kind));
            self.now = self.now.max(at);
            let now = self.now;
            let Some(core) = self.nodes[index].as_mut() else {
                continue;
            };
            let out = core.handle(Input::Timer(kind), now);
            self.apply(index, out);
        }
        self.now = self.now.max(deadline);
    }

    fn run_for(&mut self, duration: Duration) {
        let until = self.now.duration_since(self.start) + duration;
        self.run_until(until);
    }

    fn role(&self, index: usize) -> Role {
        self.core(index).role()
    }

    fn master_of(&self, index: usize) -> Option<String> {
        self.core(index).master().map(|master| master.name.clone())
    }

    fn listed(&self, index: usize) -> Vec<String> {
        self.core(index)
            .peer_list()
            .map(|list| list.peers.iter().map(|peer| peer.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Every live peer follows one master with the same epoch, list and table.
    fn agreed(&self) -> Option<(String, Epoch)> {
        let alive: Vec<&Community> = self.nodes.iter().flatten().collect();
        let masters: Vec<&&Community> = alive.iter().filter(|core| core.role() == Role::Master).collect();
        let [master] = masters.as_slice() else {
            return None;
        };
        let epoch = master.epoch()?;
        let list = master.peer_list()?;
        let all_agree = alive.iter().all(|core| {
            matches!(core.role(), Role::Master | Role::Member)
                && core.epoch() == Some(epoch)
                && core.peer_list() == Some(list)
        });
        all_agree.then(|| (master.me().name.clone(), epoch))
    }

    /// Messages with this body name sent from `from` (any peer when `None`) to `to`.
    fn count_sent(&self, from: Option<usize>, to: Option<usize>, name: &str) -> usize {
        self.sent
            .iter()
            .filter(|(sender, receiver, message)| {
                from.is_none_or(|from| from == *sender) && *receiver == to && message.body.name() == name
            })
            .count()
    }

    fn events_of(&self, index: usize) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|(node, _)| *node == index)
            .map(|(_, event)| event)
            .collect()
    }
}

/// A community of `peers` formed through the registry: the first creates it, the others join one by one.
fn formed(peers: &[(&str, u8)]) -> Cluster {
    let mut cluster = Cluster::new(peers, true);
    for index in 0..peers.len() {
        cluster.boot(index);
        cluster.run_for(Duration::from_millis(100));
    }
    cluster.run_for(Duration::from_secs(1));
    cluster
}

#[test]
fn a_lone_peer_creates_its_community_and_the_registry_records_it() {
    let mut cluster = Cluster::new(&[("a", 128)], true);
    cluster.boot(0);
    assert_eq!(cluster.role(0), Role::Master);
    assert_eq!(cluster.count_sent(Some(0), Some(REGISTRY), "community request"), 1);
    assert_eq!(cluster.count_sent(Some(0), Some(REGISTRY), "ADDMASTER"), 1);
    assert!(cluster.events_of(0).contains(&&Event::Created {
        epoch: Epoch::first_of(1)
    }));
    let record = &cluster.registry.as_ref().expect("registry").state().communities["site"];
    assert_eq!((record.master.name.as_str(), record.epoch), ("a", Epoch::first_of(1)));
    assert_eq!(cluster.core(0).counters().communities_created, 1);
    // Listening for joins, refreshing the registry.
    assert!(cluster.core(0).timer(TimerKind::Announce).is_some());
    assert!(cluster.core(0).timer(TimerKind::Sweep).is_some());
}

#[test]
fn joins_are_allowed_and_every_updatepeerlist_reaches_every_member() {
    let cluster = formed(&[("a", 128), ("b", 128), ("c", 128)]);
    let (master, epoch) = cluster.agreed().expect("one community");
    assert_eq!(master, "a");
    assert_eq!(epoch, Epoch { term: 1, version: 2 }, "two joins, two epochs");
    assert_eq!(cluster.listed(2), ["a", "b", "c"]);
    // Each newcomer got an allow; the members before it an UPDATEPEERLIST.
    assert_eq!(cluster.count_sent(Some(0), Some(1), "allow"), 1);
    assert_eq!(cluster.count_sent(Some(0), Some(2), "allow"), 1);
    assert_eq!(cluster.count_sent(Some(0), Some(1), "UPDATEPEERLIST"), 1);
    assert_eq!(cluster.core(0).counters().joins_allowed, 2);
    // Every member holds the same allocation table and finds the same owners.
    for key in ["k1", "k2", "k3", "k4"] {
        let owners: BTreeSet<Vec<String>> = (0..3)
            .map(|index| {
                cluster
                    .core(index)
                    .owners("", key)
                    .iter()
                    .map(|peer| peer.name.clone())
                    .collect()
            })
            .collect();
        assert_eq!(owners.len(), 1, "{key}: {owners:?}");
    }

    // A fourth joins: the list with the next epoch reaches every member, lost messages repaired by the
    // members' pings.
    let mut cluster = Cluster::new(&[("a", 128), ("b", 128), ("c", 128), ("d", 128)], true);
    for index in 0..3 {
        cluster.boot(index);
        cluster.run_for(Duration::from_millis(100));
    }
    cluster.lose = Some(Box::new(|_, to, message| {
        to == 2 && message.body.name() == "UPDATEPEERLIST"
    }));
    cluster.boot(3);
    cluster.run_for(Duration::from_millis(100));
    assert_ne!(cluster.core(2).epoch(), cluster.core(0).epoch(), "c missed the update");
    cluster.lose = None;
    cluster.run_for(Duration::from_millis(300));
    let (_, epoch) = cluster.agreed().expect("c caught up at its next ping");
    assert_eq!(epoch, Epoch { term: 1, version: 3 });
}

#[test]
fn joins_are_denied_when_full_or_on_a_name_clash_and_a_restarted_peer_replaces_itself() {
    let mut cluster = Cluster::new(&[("a", 128), ("b", 128), ("c", 128), ("b", 128)], true);
    cluster.configs[0].max_peers = 3;
    // The fourth peer is another process named "b" on another address.
    for index in 0..3 {
        cluster.boot(index);
        cluster.run_for(Duration::from_millis(100));
    }
    assert_eq!(cluster.listed(0), ["a", "b", "c"]);
    cluster.boot(3);
    cluster.run_for(Duration::from_millis(100));
    assert_eq!(cluster.role(3), Role::Discovering, "backing off");
    assert!(cluster.events_of(3).contains(&&Event::Denied(DenyReason::NameClash)));
    assert_eq!(cluster.listed(0), ["a", "b", "c"]);

    // A newcomer beyond the limit is denied as full.
    let mut cluster = Cluster::new(&[("a", 128), ("b", 128), ("c", 128)], true);
    cluster.configs[0].max_peers = 2;
    for index in 0..3 {
        cluster.boot(index);
        cluster.run_for(Duration::from_millis(100));
    }
    assert!(cluster.events_of(2).contains(&&Event::Denied(DenyReason::Full)));
    assert_eq!(cluster.core(2).counters().denied, 1);
    assert_eq!(cluster.core(0).counters().joins_denied, 1);
    assert_eq!(cluster.listed(0), ["a", "b"]);
    let retry = cluster.core(2).timer(TimerKind::Discovery).expect("it will try again");
    assert!(retry >= cluster.now + Timers::default().denied_backoff - Duration::from_millis(100));

    // "b" restarts on its address: its new run replaces the old one at once.
    let mut cluster = formed(&[("a", 128), ("b", 128), ("c", 128)]);
    let before = cluster
        .core(0)
        .peer_list()
        .expect("list")
        .peer("b")
        .expect("b")
        .incarnation;
    cluster.crash(1);
    cluster.boot(1);
    cluster.run_for(Duration::from_millis(100));
    let after = cluster
        .core(0)
        .peer_list()
        .expect("list")
        .peer("b")
        .expect("b")
        .incarnation;
    assert_ne!(before, after);
    assert!(cluster.agreed().is_some());
}

#[test]
fn messages_without_the_cluster_key_are_refused_counted_and_change_nothing() {
    let mut cluster = formed(&[("a", 128), ("b", 128)]);
    let (_, epoch) = cluster.agreed().expect("formed");
    let other = SecretKey::parse(&"0f".repeat(32)).expect("key");
    let forged = |body: CommunityBody, term: u64| CommunityMessage {
        community: "site".into(),
        sender: "mallory".into(),
        address: "10.0.0.66:7400".parse().expect("address"),
        epoch: Epoch::first_of(term),
        incarnation: 66,
        seq: 1,
        sent_at_ms: UNIX_START_MS,
        body,
    };
    let mallory = {
        let mut peer = cluster.core(1).me().clone();
        peer.name = "mallory".into();
        peer.incarnation = 66;
        peer.priority = 255;
        peer
    };
    let from = "10.0.0.66:7400".parse().expect("address");
    // A join request: denied (bad tag) and counted; the list is unchanged.
    let join = community::encode(
        &other,
        &forged(
            CommunityBody::RequestToJoin(community::RequestToJoin { peer: mallory.clone() }),
            1,
        ),
    );
    let out = cluster.input(0, Input::Datagram { bytes: &join, from });
    let denied = out.iter().any(|output| {
        matches!(output, Output::Send { to, message } if *to == from
            && matches!(&message.body, CommunityBody::Deny(deny) if deny.reason == DenyReason::BadTag))
    });
    assert!(denied, "{out:?}");
    assert_eq!(cluster.core(0).counters().refused.bad_tag, 1);
    assert_eq!(cluster.core(0).counters().joins_denied, 1);
    // A ping, an election and a peer list with a higher term: nothing happens.
    let ping = community::encode(
        &other,
        &forged(CommunityBody::PeerPing(PeerPing { master: "a".into() }), 1),
    );
    assert!(cluster.input(0, Input::Datagram { bytes: &ping, from }).is_empty());
    let hold = community::encode(
        &other,
        &forged(
            CommunityBody::HoldElection(community::HoldElection {
                master: "a".into(),
                candidate: mallory.clone(),
            }),
            9,
        ),
    );
    assert!(cluster.input(1, Input::Datagram { bytes: &hold, from }).is_empty());
    let replace = community::encode(
        &other,
        &forged(
            CommunityBody::ReplaceMaster(community::MasterClaim { master: mallory }),
            9,
        ),
    );
    let registry = cluster.registry.as_mut().expect("registry");
    assert_eq!(
        registry
            .handle_bytes(&replace, UNIX_START_MS)
            .expect_err("forged")
            .reason(),
        "bad-tag"
    );
    assert_eq!(registry.state().communities["site"].master.name, "a");
    assert_eq!(cluster.core(0).counters().refused.bad_tag, 2);
    assert_eq!(cluster.core(1).counters().refused.bad_tag, 1);
    assert_eq!(cluster.core(1).role(), Role::Member);
    cluster.run_for(Duration::from_secs(2));
    assert_eq!(cluster.agreed(), Some(("a".into(), epoch)), "nothing changed");
    // Garbage and a replay are refused by name too.
    assert!(cluster.input(1, Input::Datagram { bytes: b"hello", from }).is_empty());
    assert_eq!(cluster.core(1).counters().refused.malformed, 1);
    let last_to_b = cluster
        .sent
        .iter()
        .rev()
        .find(|(sender, to, _)| *sender == 0 && *to == Some(1))
        .map(|(_, _, message)| community::encode(&key(), message))
        .expect("a message to b");
    cluster.input(
        1,
        Input::Datagram {
            bytes: &last_to_b,
            from: address(0),
        },
    );
    assert_eq!(cluster.core(1).counters().refused.replayed, 1);
}

#[test]
fn master_silence_holds_an_election_that_the_highest_priority_wins() {
    let mut cluster = formed(&[("a", 100), ("b", 200), ("c", 150), ("d", 50)]);
    let (_, before) = cluster.agreed().expect("formed");
    let portions_of_a: Vec<String> = (0..200)
        .map(|index| format!("k{index}"))
        .filter(|key| cluster.core(1).owners("", key)[0].name == "a")
        .collect();
    assert!(!portions_of_a.is_empty());
    cluster.crash(0);
    let crashed_at = cluster.now;
    // Silence is noticed within the threshold: HOLDELECTION to every peer, the dead master included.
    cluster.run_for(Timers::default().master_silence + Duration::from_millis(10));
    assert!(cluster.count_sent(None, Some(0), "HOLDELECTION") >= 1);
    assert!((1..4).any(|index| cluster.role(index) == Role::Electing));
    cluster.run_for(Duration::from_secs(2));
    let (master, epoch) = cluster.agreed().expect("one master again");
    assert_eq!(master, "b", "the highest priority wins");
    assert_eq!(epoch, Epoch::first_of(before.term + 1));
    assert_eq!(cluster.listed(2), ["b", "c", "d"]);
    assert_eq!(cluster.core(1).counters().elections_won, 1);
    assert!(cluster.events_of(1).contains(&&Event::ElectionWon { term: epoch.term }));
    let sent_replace = cluster.count_sent(Some(1), Some(REGISTRY), "REPLACEMASTER");
    assert!(sent_replace >= 1);
    let record = &cluster.registry.as_ref().expect("registry").state().communities["site"];
    assert_eq!((record.master.name.as_str(), record.epoch.term), ("b", epoch.term));
    // The dead master's portions are reallocated.
    for key in &portions_of_a {
        assert_ne!(cluster.core(2).owners("", key)[0].name, "a");
    }
    let first_list = cluster
        .sent
        .iter()
        .find(|(from, _, message)| *from == 1 && message.body.name() == "UPDATEPEERLIST")
        .expect("the winner's list");
    assert_eq!(first_list.2.epoch, epoch);
    assert!(cluster.now > crashed_at);
}

#[test]
fn a_member_paused_past_the_silence_rejoins_its_master_instead_of_deposing_it() {
    // Each member in turn stops (SIGSTOP, a paused VM) for a while: the master drops it meanwhile.
    // Stalls between one and two silence periods (2 s, 2.6 s) wake with the silence timer less than a
    // period late: only the ping timer's lateness shows that the peer stood still.
    for (paused, millis, timers_first) in (1..4).flat_map(|paused| {
        [2_000, 2_600, 3_000, 10_000, 11_000, 15_000, 25_000]
            .map(|millis| [(paused, millis, true), (paused, millis, false)])
            .into_iter()
            .flatten()
    }) {
        {
            let mut cluster = formed(&[("a", 200), ("b", 100), ("c", 150), ("d", 50)]);
            let (master, before) = cluster.agreed().expect("formed");
            assert_eq!(master, "a");
            cluster.pause(paused);
            cluster.run_for(Duration::from_millis(millis));
            let elections_before = cluster.events_of(paused).len();
            cluster.resume(paused, timers_first);
            cluster.run_for(Duration::from_secs(5));
            let case = format!("peer {paused} paused {millis} ms, timers first: {timers_first}");
            let (master, after) = cluster.agreed().unwrap_or_else(|| panic!("{case}: no one community"));
            assert_eq!(master, "a", "{case}: the healthy master stays master");
            assert_eq!(after.term, before.term, "{case}: no election took a new term");
            assert_eq!(cluster.listed(0), ["a", "b", "c", "d"], "{case}: it rejoined");
            let events = cluster.events_of(paused);
            let held: Vec<&&Event> = events[elections_before..]
                .iter()
                .filter(|event| matches!(event, Event::ElectionHeld { .. }))
                .collect();
            assert!(held.is_empty(), "{case}: it held an election on waking: {held:?}");
        }
    }
}

#[test]
fn only_a_return_to_the_community_counts_as_a_join_not_following_a_new_master() {
    let joined = |cluster: &Cluster, index: usize| cluster.nodes[index].as_ref().expect("alive").counters().joined;
    let mut cluster = formed(&[("a", 200), ("b", 100), ("c", 150), ("d", 50)]);
    assert_eq!(
        (1..4).map(|i| joined(&cluster, i)).collect::<Vec<_>>(),
        [1, 1, 1],
        "each joined once"
    );
    // The master dies: the members elect another and follow it, never away from the community.
    cluster.crash(0);
    cluster.run_for(Duration::from_secs(5));
    let (master, _) = cluster.agreed().expect("failed over");
    assert_ne!(master, "a");
    let after_failover: Vec<u64> = (1..4).map(|i| joined(&cluster, i)).collect();
    // A member stopped long enough to be dropped joins again when it wakes: that join may follow purges
    // it missed (its edge validates what it holds).
    let away = (1..4)
        .find(|&i| cluster.nodes[i].as_ref().expect("alive").role() == Role::Member)
        .expect("a member");
    let before = joined(&cluster, away);
    cluster.pause(away);
    cluster.run_for(Duration::from_secs(10));
    cluster.resume(away, true);
    cluster.run_for(Duration::from_secs(5));
    assert_eq!(joined(&cluster, away), before + 1, "after failover: {after_failover:?}");
    for index in (1..4).filter(|&i| i != away) {
        assert_eq!(
            joined(&cluster, index),
            after_failover[index - 1],
            "peer {index} stayed throughout"
        );
    }
}

#[test]
fn failover_completes_within_the_bound() {
    let mut cluster = formed(&[("a", 100), ("b", 200), ("c", 150), ("d", 50)]);
    cluster.crash(0);
    let crashed_at = cluster.now;
    let step = Duration::from_millis(10);
    while cluster.agreed().is_none_or(|(master, _)| master == "a") {
        assert!(
            cluster.now < crashed_at + Timers::default().failover_bound(),
            "no failover within the bound"
        );
        cluster.run_for(step);
    }
    let failover = cluster.now - crashed_at;
    assert!(failover <= Duration::from_millis(2100), "{failover:?}");
}

#[test]
fn an_answer_from_the_old_master_aborts_the_election() {
    // Only c stops hearing the master's ping answers; the master itself answers its HOLDELECTION.
    let mut cluster = formed(&[("a", 100), ("c", 150)]);
    let (_, epoch) = cluster.agreed().expect("formed");
    cluster.lose = Some(Box::new(|from, to, message| {
        from == 0 && to == 1 && message.body.name() == "PEERPING answer"
    }));
    cluster.run_for(Timers::default().master_silence + Duration::from_millis(300));
    assert_eq!(cluster.count_sent(Some(1), Some(0), "HOLDELECTION"), 1);
    let alive = cluster.sent.iter().any(|(from, to, message)| {
        *from == 0 && *to == Some(1) && message.body == CommunityBody::ElectionAnswer(ElectionAnswer::MasterAlive)
    });
    assert!(alive);
    assert_eq!(cluster.core(1).counters().elections_aborted, 1);
    assert!(cluster.events_of(1).contains(&&Event::ElectionAborted));
    assert_eq!(cluster.role(1), Role::Member);
    assert_eq!(cluster.master_of(1).as_deref(), Some("a"));
    assert_eq!(
        cluster.agreed(),
        Some(("a".into(), epoch)),
        "no new master, no new epoch"
    );

    // With more members, one that heard the master a moment ago aborts it too, even when the master's
    // own answer is lost.
    let mut cluster = formed(&[("a", 100), ("b", 120), ("c", 150)]);
    cluster.lose = Some(Box::new(|from, to, message| {
        from == 0 && to == 2 && matches!(message.body.name(), "PEERPING answer" | "HOLDELECTION answer")
    }));
    cluster.run_for(Timers::default().master_silence + Duration::from_millis(300));
    assert!(cluster.count_sent(Some(2), Some(1), "HOLDELECTION") >= 1);
    assert!(
        cluster.count_sent(Some(1), Some(2), "HOLDELECTION answer") >= 1,
        "b vouches for a"
    );
    assert_eq!(cluster.core(2).counters().elections_aborted, 1);
    assert_eq!(cluster.agreed().map(|(master, _)| master).as_deref(), Some("a"));
}

#[test]
fn a_leaving_master_nominates_its_successor() {
    let mut cluster = formed(&[("a", 200), ("b", 100), ("c", 150)]);
    let (_, before) = cluster.agreed().expect("formed");
    let out = cluster.input(0, Input::Leave);
    let nominations: Vec<&CommunityMessage> = out
        .iter()
        .filter_map(|output| match output {
            Output::Send { message, .. } if message.body.name() == "NOMINATEMASTER" => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(nominations.len(), 2, "to every member");
    assert_eq!(
        nominations[0].body,
        CommunityBody::NominateMaster(community::NominateMaster { nominee: "c".into() })
    );
    // The nominee took over at once; the leaver saw its list and left.
    assert_eq!(cluster.role(0), Role::Left);
    assert!(cluster.events_of(0).contains(&&Event::Left));
    assert_eq!(cluster.role(2), Role::Master);
    assert_eq!(cluster.core(2).epoch(), Some(Epoch::first_of(before.term + 1)));
    cluster.crash(0);
    cluster.run_for(Duration::from_millis(500));
    let (master, _) = cluster.agreed().expect("one master");
    assert_eq!(master, "c");
    assert_eq!(cluster.listed(1), ["b", "c"]);
    assert_eq!(
        cluster.registry.as_ref().expect("registry").state().communities["site"]
            .master
            .name,
        "c"
    );

    // A member leaving tells its master, which reallocates at once.
    let mut cluster = formed(&[("a", 200), ("b", 100), ("c", 150)]);
    cluster.input(1, Input::Leave);
    assert_eq!(cluster.role(1), Role::Left);
    assert_eq!(cluster.listed(0), ["a", "c"]);
}

#[test]
fn a_stale_epoch_is_fenced_and_the_returning_old_master_joins_as_a_member() {
    let mut cluster = formed(&[("a", 100), ("b", 200), ("c", 150)]);
    let (_, old) = cluster.agreed().expect("formed");
    // The master is cut off from everyone (the registry included) long enough to be replaced.
    for other in [1, 2, REGISTRY] {
        cluster.cut.insert((0, other));
        cluster.cut.insert((other, 0));
    }
    cluster.run_for(Duration::from_secs(3));
    assert_eq!(cluster.role(0), Role::Master, "alone, it still thinks it is master");
    assert_eq!(cluster.listed(0), ["a"], "and dropped its silent members");
    assert_eq!(cluster.role(1), Role::Master);
    let new = cluster.core(1).epoch().expect("epoch");
    assert!(new.term > old.term);

    // A list from the deposed master reaches c: fenced, and answered with the new master.
    let mut stale_list = cluster
        .sent
        .iter()
        .rev()
        .find(|(from, _, message)| *from == 0 && message.body.name() == "UPDATEPEERLIST")
        .map(|(_, _, message)| message.clone())
        .expect("a list from a");
    // Sent now (not a replay of the copy c had).
    stale_list.seq += 1_000_000;
    stale_list.sent_at_ms = cluster.unix_ms();
    let out = cluster.nodes[2].as_mut().expect("c").handle(
        Input::Datagram {
            bytes: &community::encode(&key(), &stale_list),
            from: address(0),
        },
        cluster.now,
    );
    assert_eq!(cluster.core(2).counters().refused.stale_epoch, 1);
    assert_eq!(cluster.master_of(2).as_deref(), Some("b"));
    let fenced = out.iter().any(|output| {
        matches!(output, Output::Send { to, message } if *to == address(0)
            && matches!(&message.body, CommunityBody::Deny(deny)
                if deny.reason == DenyReason::StaleEpoch && deny.master.as_ref().is_some_and(|m| m.name == "b")))
    });
    assert!(fenced, "{out:?}");

    // The partition heals: the old master's refresh is refused by the registry, which names b; it joins
    // b as a member, and the community has one master again.
    cluster.cut.clear();
    cluster.run_for(Timers::default().announce_interval + Duration::from_millis(200));
    assert_eq!(cluster.role(0), Role::Member);
    let (master, epoch) = cluster.agreed().expect("one master");
    assert_eq!(master, "b");
    assert_eq!(epoch.term, new.term);
    assert_eq!(cluster.listed(0), ["a", "b", "c"]);
    let registry = cluster.registry.as_ref().expect("registry");
    assert!(registry.counters().stale >= 1);
    assert_eq!(registry.state().communities["site"].master.name, "b");
}

#[test]
fn location_requests_name_owners_holding_a_copy_then_holders_else_the_origin() {
    let mut cluster = formed(&[("a", 128), ("b", 128), ("c", 128)]);
    // Find a key that b owns.
    let key = (0..1000)
        .map(|index| format!("GET https://example.com/{index}"))
        .find(|key| cluster.core(0).owners("", key)[0].name == "b")
        .expect("a key of b");
    // c stores a copy (it fetched it from b, seed 003) and registers as holder.
    cluster.input(2, Input::Held(std::slice::from_ref(&key)));
    assert_eq!(cluster.core(0).directory().holders(&key).collect::<Vec<_>>(), ["c"]);
    // a (the master) locates it locally; b asks the master.
    let out = cluster.input(0, Input::Locate { key: &key, host: "" });
    let Some(Output::Event(Event::Located {
        in_reply_to: None,
        response,
    })) = out.first()
    else {
        panic!("{out:?}");
    };
    let names: Vec<(&str, bool, bool)> = response
        .peers
        .iter()
        .map(|location| (location.name.as_str(), location.owner, location.holds))
        .collect();
    assert_eq!(
        names,
        [("c", false, true), ("b", true, false)],
        "a holder before an owner without a copy"
    );
    cluster.input(1, Input::Held(std::slice::from_ref(&key)));
    cluster.input(1, Input::Locate { key: &key, host: "" });
    let located = cluster.events_of(1).into_iter().rev().find_map(|event| match event {
        Event::Located {
            in_reply_to: Some(_),
            response,
        } => Some(response.clone()),
        _ => None,
    });
    let response = located.expect("the master answered b");
    let names: Vec<&str> = response.peers.iter().map(|location| location.name.as_str()).collect();
    assert_eq!(names, ["c"], "never the requester itself");
    assert_eq!(cluster.core(0).counters().location_requests, 1);
    // Every copy evicted, and b, the owner, asks: nobody else can serve it, go to the origin.
    cluster.input(2, Input::Released(std::slice::from_ref(&key)));
    cluster.input(1, Input::Released(std::slice::from_ref(&key)));
    cluster.input(1, Input::Locate { key: &key, host: "" });
    let last = cluster.events_of(1).into_iter().rev().find_map(|event| match event {
        Event::Located { response, .. } => Some(response.clone()),
        _ => None,
    });
    assert!(last.expect("answer").go_to_origin);
    // A member dropped from the list is forgotten as a holder.
    cluster.input(2, Input::Held(std::slice::from_ref(&key)));
    cluster.crash(2);
    cluster.run_for(Duration::from_secs(2));
    assert_eq!(cluster.core(0).directory().holders(&key).count(), 0);
}

#[test]
fn without_a_registry_peers_find_each_other_by_wakeup_and_two_masters_merge() {
    let mut cluster = Cluster::new(&[("a", 128), ("b", 200), ("c", 128)], false);
    for config in &mut cluster.configs {
        config.discovery = true;
    }
    // a and b start together, hear no answer to their probes, and each create the community.
    cluster.cut.insert((0, 1));
    cluster.cut.insert((1, 0));
    cluster.boot(0);
    cluster.boot(1);
    cluster.run_for(Timers::default().probe_timeout + Duration::from_millis(10));
    assert_eq!((cluster.role(0), cluster.role(1)), (Role::Master, Role::Master));
    assert!(cluster.count_sent(Some(0), None, "WAKEUP") >= 1);
    // c probes and joins the better master it hears.
    cluster.boot(2);
    cluster.run_for(Timers::default().probe_timeout + Duration::from_millis(100));
    assert_eq!(cluster.master_of(2).as_deref(), Some("b"));
    // They can hear each other now: the weaker master steps down at the next announcement.
    cluster.cut.clear();
    cluster.run_for(Timers::default().announce_interval + Duration::from_millis(100));
    let (master, _) = cluster.agreed().expect("one master");
    assert_eq!(master, "b");
    assert_eq!(cluster.listed(0), ["a", "b", "c"]);
}

#[test]
fn a_silent_registry_gives_way_to_the_probe() {
    let mut cluster = Cluster::new(&[("a", 128), ("b", 128)], true);
    for config in &mut cluster.configs {
        config.discovery = true;
    }
    cluster.cut.insert((0, REGISTRY));
    cluster.cut.insert((1, REGISTRY));
    cluster.boot(0);
    cluster.run_for(Timers::default().registry_timeout + Timers::default().probe_timeout + Duration::from_millis(10));
    assert_eq!(cluster.role(0), Role::Master);
    cluster.boot(1);
    cluster.run_for(Timers::default().registry_timeout + Duration::from_millis(10));
    assert_eq!(
        cluster.count_sent(Some(1), None, "WAKEUP"),
        1,
        "the registry was silent: probe"
    );
    assert_eq!(cluster.count_sent(Some(0), Some(1), "WAKEUP answer"), 1);
    cluster.run_for(Timers::default().probe_timeout);
    assert_eq!(cluster.agreed().map(|(master, _)| master).as_deref(), Some("a"));
}

#[test]
fn stale_and_early_timer_firings_are_ignored() {
    let mut cluster = formed(&[("a", 128), ("b", 128)]);
    let (_, epoch) = cluster.agreed().expect("formed");
    assert!(cluster.input(1, Input::Timer(TimerKind::Election)).is_empty());
    assert!(
        cluster.input(1, Input::Timer(TimerKind::MasterSilence)).is_empty(),
        "not due"
    );
    assert!(cluster.input(0, Input::Timer(TimerKind::Ping)).is_empty());
    assert_eq!(cluster.agreed(), Some(("a".into(), epoch)));
    let limits = CommunityLimits::default();
    assert!(limits.max_peers >= cluster.core(0).config().max_peers);
}
