//! The store-and-forward distribution tree, the CCM's side (seed `004_1419c51402506f7e.txt`, global
//! distribution, Figs. 6 and 7), as a sans-IO core: events in, with the time; notifications out.
//!
//! The CCM sorts the group leaders (GLs) of a job's targets ([`sort_leaders`]: CPU power fastest first,
//! then location; an administrator's order overrides) and sends the first a *notification*: the source to
//! obtain the assignment from (the CCM itself) and the GL it is for. A GL that holds a verified copy asks
//! the CCM for the *next group leader* to serve; the CCM hands out the GLs of its sorted list one by one to
//! whichever holder asks first — which is how, in Fig. 7, the CCM "decides that GL3 should next forward a
//! copy to GL5" rather than GL2 — until none is left, and then answers with a null address: that holder is
//! done forwarding and delivers to its own members. The CCM is a holder too, but serves at most
//! [`TreeConfig::mover_copies`] GLs, so its own link carries about one copy whatever the number of GLs.
//!
//! Beyond the seed: a GL that was notified but has not reported holding the copy within
//! [`TreeConfig::fetch_timeout`] is given up on (its segment elects a new leader, which the CCM adds with
//! [`DistributionTree::add_leader`]), and its source is free to serve another GL.
//!
//! The core never blocks and holds no sockets: the driver turns [`Notify`] into an HTTP request to the
//! target GL (or to the source GL, which forwards it, as in the seed), and feeds back what GLs report.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A group leader as the CCM knows it from its segment report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leader's node name (unique among nodes).
    pub name: String,
    /// Its network segment's name.
    pub segment: String,
    /// Where it is (a time zone or a place name, from the segment report); leaders in the same location
    /// serve each other first.
    pub location: String,
    /// Its CPU power (CPUs, or a benchmark figure; higher is faster).
    pub cpu: u32,
}

/// Who a GL obtains the assignment from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The CCM (the mover) itself, the root of the tree.
    Mover,
    /// A group leader that holds a copy.
    Leader(String),
}

/// A notification the driver sends (seed 004: "the address of a server from which the GL is to obtain a
/// copy of the assignment and the address of the GL to which the notification should be forwarded").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// The GL that is to obtain the assignment.
    pub target: String,
    /// Where it obtains it from.
    pub source: Source,
}

/// The CCM's answer to a holder asking for the next group leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Serve this GL: notify it to obtain the assignment from you.
    Serve(String),
    /// None is left for you (the seed's null address): deliver to your own members.
    Done,
    /// Some GLs are still being served by others and may yet fail; ask again after this long.
    AskAgain(Duration),
}

/// Where one GL stands in this distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderState {
    /// Waiting in the sorted list.
    Pending,
    /// Notified at this instant, obtaining the assignment from this source.
    Notified {
        /// Its source.
        source: Source,
        /// When it was notified.
        at: Instant,
    },
    /// Holds a verified copy.
    Holding,
    /// Given up on (timed out or reported failure); why.
    Failed(String),
}

/// Bounds of a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeConfig {
    /// How many GLs the CCM serves itself (default 1: the mover's link carries one copy; with a GL given up
    /// on, one more).
    pub mover_copies: usize,
    /// How long a notified GL may take to obtain and verify the assignment before it is given up on.
    pub fetch_timeout: Duration,
    /// How long a holder with nothing to serve waits before asking again while GLs are still in flight.
    pub ask_again: Duration,
}

impl Default for TreeConfig {
    fn default() -> Self {
        TreeConfig {
            mover_copies: 1,
            fetch_timeout: Duration::from_secs(300),
            ask_again: Duration::from_secs(1),
        }
    }
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The GL is not part of this distribution.
    #[error("{0} is not a group leader of this distribution")]
    Unknown(String),
    /// The GL asked to serve others but holds no copy.
    #[error("{0} holds no copy of the assignment, so it cannot serve another group leader")]
    NotHolding(String),
    /// A holding report from a GL that was not notified (forged or replayed).
    #[error("{0} reports holding the assignment but was never notified")]
    NotNotified(String),
}

/// The distribution of one assignment over the group leaders of its targets.
#[derive(Debug)]
pub struct DistributionTree {
    config: TreeConfig,
    /// The GLs not yet notified, in the sorted order.
    pending: VecDeque<Leader>,
    /// Every GL's state.
    states: BTreeMap<String, LeaderState>,
    /// Where each GL is, for pairing a holder with a GL in its location.
    locations: HashMap<String, String>,
    /// GLs the CCM itself has served so far.
    mover_served: usize,
    /// Which holder served which GL (for the status and for tests: the shape of the tree).
    edges: Vec<(Source, String)>,
    /// Holders answered [`Next::Done`]: they deliver to their members and ask no more.
    finished: BTreeSet<String>,
    /// While set, a holder with nothing to serve is told to ask again rather than done: the driver expects
    /// a GL to be added (a segment whose leader was given up on is electing a new one).
    hold_open: bool,
}

impl DistributionTree {
    /// A distribution over `leaders`, already sorted ([`sort_leaders`]). Duplicated names are kept once.
    pub fn new(leaders: Vec<Leader>, config: TreeConfig) -> DistributionTree {
        let mut tree = DistributionTree {
            config,
            pending: VecDeque::new(),
            states: BTreeMap::new(),
            locations: HashMap::new(),
            mover_served: 0,
            edges: Vec::new(),
            finished: BTreeSet::new(),
            hold_open: false,
        };
        for leader in leaders {
            tree.add_leader(leader);
        }
        tree
    }

    /// Adds a GL late (a segment elected a new leader after its old one was given up on); it is served
    /// after the GLs already waiting. A GL already known is left as it is, unless it failed: then it waits
    /// again.
    pub fn add_leader(&mut self, leader: Leader) {
        match self.states.get(&leader.name) {
            None | Some(LeaderState::Failed(_)) => {}
            Some(_) => return,
        }
        self.states.insert(leader.name.clone(), LeaderState::Pending);
        self.locations.insert(leader.name.clone(), leader.location.clone());
        self.pending.push_back(leader);
    }

    /// Keeps holders asking (`true`: [`Next::AskAgain`] where it would answer [`Next::Done`]) while the
    /// driver waits for a segment's new leader to [`add`](DistributionTree::add_leader); `false` lets
    /// them finish.
    pub fn hold_open(&mut self, open: bool) {
        self.hold_open = open;
    }

    /// Starts the distribution: the CCM notifies the first GLs itself (up to
    /// [`TreeConfig::mover_copies`]), each to obtain the assignment from the CCM.
    pub fn start(&mut self, now: Instant) -> Vec<Notify> {
        let mut out = Vec::new();
        while self.mover_served < self.config.mover_copies {
            let Some(leader) = self.take_for(None) else { break };
            self.mover_served += 1;
            out.push(self.notify(leader, Source::Mover, now));
        }
        out
    }

    /// A GL reports that it holds a verified copy. Refused for a GL that was never notified.
    pub fn holding(&mut self, name: &str) -> Result<(), TreeError> {
        match self.states.get(name) {
            None => Err(TreeError::Unknown(name.to_string())),
            Some(LeaderState::Notified { .. } | LeaderState::Holding) => {
                self.states.insert(name.to_string(), LeaderState::Holding);
                Ok(())
            }
            // A GL given up on that got there after all still holds a good copy.
            Some(LeaderState::Failed(_)) => {
                self.pending.retain(|leader| leader.name != name);
                self.states.insert(name.to_string(), LeaderState::Holding);
                Ok(())
            }
            Some(LeaderState::Pending) => Err(TreeError::NotNotified(name.to_string())),
        }
    }

    /// A GL reports that it could not obtain the assignment (its source went away, the copy did not verify).
    /// It is given up on; its segment's next leader is added with [`DistributionTree::add_leader`].
    pub fn failed(&mut self, name: &str, reason: &str) -> Result<(), TreeError> {
        match self.states.get(name) {
            None => Err(TreeError::Unknown(name.to_string())),
            Some(_) => {
                self.pending.retain(|leader| leader.name != name);
                self.states
                    .insert(name.to_string(), LeaderState::Failed(reason.to_string()));
                Ok(())
            }
        }
    }

    /// A holder asks for the next group leader to serve (seed 004: "the GL requests another GL address
    /// from the CCM"). The CCM gives it a waiting GL in its own location if there is one, else the first
    /// waiting GL; none left gives [`Next::Done`], unless GLs are still being served and may yet fail.
    pub fn next_for(&mut self, holder: &str, now: Instant) -> Result<(Next, Option<Notify>), TreeError> {
        match self.states.get(holder) {
            None => return Err(TreeError::Unknown(holder.to_string())),
            Some(LeaderState::Holding) => {}
            Some(_) => return Err(TreeError::NotHolding(holder.to_string())),
        }
        let location = self.locations.get(holder).cloned();
        if let Some(leader) = self.take_for(location.as_deref()) {
            let notify = self.notify(leader, Source::Leader(holder.to_string()), now);
            return Ok((Next::Serve(notify.target.clone()), Some(notify)));
        }
        if self.in_flight() > 0 || self.hold_open {
            return Ok((Next::AskAgain(self.config.ask_again), None));
        }
        self.finished.insert(holder.to_string());
        Ok((Next::Done, None))
    }

    /// Gives up on GLs that were notified more than [`TreeConfig::fetch_timeout`] ago without reporting a
    /// copy; returns their names. When no GL that still asks holds a copy to serve the ones waiting (the
    /// first GL died, or a GL was added after every holder was answered done), the CCM serves one more
    /// itself, and that notification is returned too.
    pub fn tick(&mut self, now: Instant) -> (Vec<String>, Vec<Notify>) {
        let timed_out: Vec<String> = self
            .states
            .iter()
            .filter_map(|(name, state)| match state {
                LeaderState::Notified { at, .. } if now.saturating_duration_since(*at) >= self.config.fetch_timeout => {
                    Some(name.clone())
                }
                _ => None,
            })
            .collect();
        for name in &timed_out {
            self.states.insert(
                name.clone(),
                LeaderState::Failed("did not obtain the assignment in time".to_string()),
            );
        }
        let mut notifications = Vec::new();
        let asking_holders = self
            .states
            .iter()
            .filter(|(name, state)| matches!(state, LeaderState::Holding) && !self.finished.contains(*name))
            .count();
        if asking_holders == 0 && self.in_flight() == 0 && !self.pending.is_empty() {
            // Nobody can serve the waiting GLs: the CCM does, one more copy over its own link.
            if let Some(leader) = self.take_for(None) {
                self.mover_served += 1;
                notifications.push(self.notify(leader, Source::Mover, now));
            }
        }
        (timed_out, notifications)
    }

    /// Whether every GL holds a copy or was given up on.
    pub fn is_complete(&self) -> bool {
        self.pending.is_empty() && self.in_flight() == 0
    }

    /// Every GL's state, by name.
    pub fn states(&self) -> &BTreeMap<String, LeaderState> {
        &self.states
    }

    /// The GLs holding a copy.
    pub fn holders(&self) -> Vec<String> {
        self.states
            .iter()
            .filter(|(_, state)| matches!(state, LeaderState::Holding))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Who served whom, in the order of the notifications: the tree's edges.
    pub fn edges(&self) -> &[(Source, String)] {
        &self.edges
    }

    /// How many copies the CCM sent itself.
    pub fn mover_copies(&self) -> usize {
        self.mover_served
    }

    /// GLs notified and not yet holding or given up on.
    fn in_flight(&self) -> usize {
        self.states
            .values()
            .filter(|state| matches!(state, LeaderState::Notified { .. }))
            .count()
    }

    /// Takes the next waiting GL: the first in `location` if any, else the first.
    fn take_for(&mut self, location: Option<&str>) -> Option<Leader> {
        let index = location
            .and_then(|location| self.pending.iter().position(|leader| leader.location == location))
            .unwrap_or(0);
        self.pending.remove(index)
    }

    fn notify(&mut self, leader: Leader, source: Source, now: Instant) -> Notify {
        self.states.insert(
            leader.name.clone(),
            LeaderState::Notified {
                source: source.clone(),
                at: now,
            },
        );
        self.edges.push((source.clone(), leader.name.clone()));
        Notify {
            target: leader.name,
            source,
        }
    }
}

/// Sorts group leaders for distribution (seed 004: "sorted according to the CPU power (fastest first) and
/// the location"): fastest first, then grouped by location, then by name for a stable order. An
/// administrator's order (`admin_order`, names) overrides: the leaders it names come first, in its order.
pub fn sort_leaders(mut leaders: Vec<Leader>, admin_order: &[String]) -> Vec<Leader> {
    let rank = |leader: &Leader| {
        admin_order
            .iter()
            .position(|name| *name == leader.name)
            .unwrap_or(usize::MAX)
    };
    leaders.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then(b.cpu.cmp(&a.cpu))
            .then(a.location.cmp(&b.location))
            .then(a.name.cmp(&b.name))
    });
    leaders
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(name: &str, location: &str, cpu: u32) -> Leader {
        Leader {
            name: name.to_string(),
            segment: format!("seg-{name}"),
            location: location.to_string(),
            cpu,
        }
    }

    fn leaders(count: usize) -> Vec<Leader> {
        (1..=count).map(|n| leader(&format!("gl{n}"), "utc", 4)).collect()
    }

    /// Runs a whole distribution where every notified GL obtains its copy at once, and each holder asks
    /// for the next GL in turn (round-robin over holders), as the driver would.
    fn run_to_end(tree: &mut DistributionTree, now: Instant) -> Vec<Notify> {
        let mut sent = tree.start(now);
        let mut queue: VecDeque<String> = sent.iter().map(|n| n.target.clone()).collect();
        while let Some(holder) = queue.pop_front() {
            tree.holding(&holder).expect("a notified GL may report holding");
            let (next, notify) = tree.next_for(&holder, now).expect("a holder may ask");
            match next {
                Next::Serve(target) => {
                    queue.push_back(target);
                    sent.extend(notify);
                    // The holder serves one at a time; it asks again after the others had their turn.
                    queue.push_back(holder);
                }
                Next::AskAgain(_) => queue.push_back(holder),
                Next::Done => {}
            }
        }
        sent
    }

    #[test]
    fn the_mover_sends_one_copy_and_every_leader_is_served_once() {
        let now = Instant::now();
        let mut tree = DistributionTree::new(leaders(8), TreeConfig::default());
        let sent = run_to_end(&mut tree, now);
        assert_eq!(tree.mover_copies(), 1);
        assert_eq!(sent.iter().filter(|n| n.source == Source::Mover).count(), 1);
        assert_eq!(sent.len(), 8, "each GL notified once: {sent:?}");
        assert!(tree.is_complete());
        assert_eq!(tree.holders().len(), 8);
    }

    #[test]
    fn holders_double_so_the_tree_is_logarithmically_deep() {
        let now = Instant::now();
        let mut tree = DistributionTree::new(leaders(16), TreeConfig::default());
        run_to_end(&mut tree, now);
        // Depth of each GL: the number of store-and-forward steps from the CCM.
        let mut depth: HashMap<String, usize> = HashMap::new();
        for (source, target) in tree.edges() {
            let d = match source {
                Source::Mover => 1,
                Source::Leader(name) => depth[name] + 1,
            };
            depth.insert(target.clone(), d);
        }
        let deepest = depth.values().copied().max().expect("accepted");
        assert!(
            deepest <= 5,
            "16 GLs from one copy need about log2(16)+1 steps, got {deepest}"
        );
    }

    #[test]
    fn a_holder_serves_a_leader_of_its_own_location_first() {
        let now = Instant::now();
        let list = vec![
            leader("boston1", "boston", 8),
            leader("london1", "london", 8),
            leader("boston2", "boston", 4),
            leader("london2", "london", 4),
        ];
        let mut tree = DistributionTree::new(list, TreeConfig::default());
        let first = tree.start(now);
        assert_eq!(
            first,
            vec![Notify {
                target: "boston1".into(),
                source: Source::Mover
            }]
        );
        tree.holding("boston1").expect("accepted");
        let (next, _) = tree.next_for("boston1", now).expect("accepted");
        assert_eq!(next, Next::Serve("boston2".into()));
    }

    #[test]
    fn the_last_answer_is_the_null_address_once_nothing_is_in_flight() {
        let now = Instant::now();
        let mut tree = DistributionTree::new(leaders(2), TreeConfig::default());
        tree.start(now);
        tree.holding("gl1").expect("accepted");
        assert_eq!(
            tree.next_for("gl1", now).expect("accepted").0,
            Next::Serve("gl2".into())
        );
        // gl2 is still obtaining its copy from gl1 and may fail: gl1 must ask again, not stop.
        assert!(matches!(
            tree.next_for("gl1", now).expect("accepted").0,
            Next::AskAgain(_)
        ));
        tree.holding("gl2").expect("accepted");
        assert_eq!(tree.next_for("gl1", now).expect("accepted").0, Next::Done);
        assert_eq!(tree.next_for("gl2", now).expect("accepted").0, Next::Done);
    }

    #[test]
    fn a_leader_that_dies_is_given_up_on_and_its_replacement_is_served() {
        let now = Instant::now();
        let config = TreeConfig {
            fetch_timeout: Duration::from_secs(10),
            ..TreeConfig::default()
        };
        let mut tree = DistributionTree::new(leaders(3), config);
        tree.start(now);
        tree.holding("gl1").expect("accepted");
        assert_eq!(
            tree.next_for("gl1", now).expect("accepted").0,
            Next::Serve("gl2".into())
        );
        // gl2 dies mid-fetch.
        let (gone, _) = tree.tick(now + Duration::from_secs(11));
        assert_eq!(gone, vec!["gl2".to_string()]);
        // Its segment elects gl2b, which the CCM adds.
        tree.add_leader(Leader {
            segment: "seg-gl2".into(),
            ..leader("gl2b", "utc", 4)
        });
        let later = now + Duration::from_secs(12);
        assert_eq!(
            tree.next_for("gl1", later).expect("accepted").0,
            Next::Serve("gl3".into())
        );
        tree.holding("gl3").expect("accepted");
        assert_eq!(
            tree.next_for("gl3", later).expect("accepted").0,
            Next::Serve("gl2b".into())
        );
        tree.holding("gl2b").expect("accepted");
        assert!(tree.is_complete());
        assert_eq!(tree.holders(), vec!["gl1", "gl2b", "gl3"]);
    }

    #[test]
    fn when_the_first_leader_dies_the_mover_serves_another_itself() {
        let now = Instant::now();
        let config = TreeConfig {
            fetch_timeout: Duration::from_secs(10),
            ..TreeConfig::default()
        };
        let mut tree = DistributionTree::new(leaders(3), config);
        tree.start(now);
        let (gone, notify) = tree.tick(now + Duration::from_secs(10));
        assert_eq!(gone, vec!["gl1".to_string()]);
        assert_eq!(
            notify,
            vec![Notify {
                target: "gl2".into(),
                source: Source::Mover
            }]
        );
        assert_eq!(tree.mover_copies(), 2);
    }

    #[test]
    fn holders_keep_asking_while_a_segment_elects_and_a_late_leader_is_still_served() {
        let now = Instant::now();
        let mut tree = DistributionTree::new(leaders(2), TreeConfig::default());
        tree.start(now);
        tree.holding("gl1").expect("accepted");
        assert_eq!(tree.next_for("gl1", now).expect("asks").0, Next::Serve("gl2".into()));
        tree.failed("gl2", "unreachable").expect("known");
        tree.hold_open(true);
        assert!(
            matches!(tree.next_for("gl1", now).expect("asks").0, Next::AskAgain(_)),
            "the segment of gl2 may elect a new leader"
        );
        tree.add_leader(leader("gl2b", "utc", 4));
        tree.hold_open(false);
        assert_eq!(tree.next_for("gl1", now).expect("asks").0, Next::Serve("gl2b".into()));
        tree.holding("gl2b").expect("accepted");
        assert_eq!(tree.next_for("gl1", now).expect("asks").0, Next::Done);
        assert_eq!(tree.next_for("gl2b", now).expect("asks").0, Next::Done);
        // A leader added after every holder finished: nobody asks any more, so the CCM serves it.
        tree.add_leader(leader("gl3", "utc", 4));
        let (gone, notify) = tree.tick(now);
        assert!(gone.is_empty());
        assert_eq!(
            notify,
            vec![Notify {
                target: "gl3".into(),
                source: Source::Mover
            }]
        );
    }

    #[test]
    fn forged_and_out_of_turn_reports_are_refused() {
        let now = Instant::now();
        let mut tree = DistributionTree::new(leaders(3), TreeConfig::default());
        tree.start(now);
        assert_eq!(tree.holding("intruder"), Err(TreeError::Unknown("intruder".into())));
        assert_eq!(tree.holding("gl3"), Err(TreeError::NotNotified("gl3".into())));
        assert_eq!(tree.next_for("gl1", now), Err(TreeError::NotHolding("gl1".into())));
        assert_eq!(tree.next_for("gl3", now), Err(TreeError::NotHolding("gl3".into())));
    }

    #[test]
    fn leaders_sort_fastest_first_and_an_administrators_order_overrides() {
        let list = vec![leader("slow", "b", 2), leader("fast", "a", 16), leader("mid", "a", 8)];
        let sorted: Vec<String> = sort_leaders(list.clone(), &[]).into_iter().map(|l| l.name).collect();
        assert_eq!(sorted, ["fast", "mid", "slow"]);
        let sorted: Vec<String> = sort_leaders(list, &["slow".to_string()])
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(sorted, ["slow", "fast", "mid"]);
    }
}
