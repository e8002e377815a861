//! The store-and-forward tree over HTTP, the CCM's driver (seed `004_1419c51402506f7e.txt`, global
//! distribution, Figs. 6 and 7; claims 20 and 49): [`TreeDelivery`], a [`Delivery`] that carries each
//! assignment to the group leaders (GLs) of its targets' segments through a [`DistributionTree`] and lets
//! each GL deliver to its own members.
//!
//! For one assignment the driver groups the targets by segment ([`crate::segments::Segments::group`]);
//! targets outside a led segment go by the star. It sorts the GLs ([`sort_leaders`]: CPU power, location,
//! an administrator's order first), serves the assignment itself as the tree's root
//! (`GET /api/tree/assignments/ID`, counting every byte it sends), and sends the first GL a notification
//! signed with the mover's key. The GLs report to the [`TreeHub`] (the API's `/api/tree/*` routes):
//! *holding* (receiving, complete, failed), *next?* — answered with the next notification to forward, done
//! (the seed's null address) or ask again — and finally their *assignment status report*, which becomes
//! one [`NodeOutcome`] per target. The commit assignment goes the same way. A target's
//! [`NodeOutcome::bytes`] counts what the mover itself sent it: nothing when its GL served it (the tree's
//! root copies are counted per tree, [`TreeRecord::mover_bytes`], and in the mover's `sent_bytes`).
//!
//! Failures: a GL that does not report holding within [`TreeSettings::fetch_timeout`] (or reports a
//! failure) is given up on; a GL that reported a failure itself is notified again (up to
//! [`TreeSettings::retries`] times); otherwise the driver waits for its segment's new leader to appear in
//! the segment directory — holders are kept asking meanwhile — and adds it to the running tree
//! ([`DistributionTree::add_leader`]), which serves that segment. A segment without a new leader within
//! [`TreeSettings::leader_grace`] is served by the star. What is still unreported at
//! [`TreeSettings::deadline`] fails; the quorum rules of [`crate::delivery::carry`] decide the rest, and
//! nodes that missed the assignment are caught up when they register.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;
use tern_http::Body;
use tern_http::tls::HttpsClient;
use tern_wire::SecretKey;
use tern_wire::mover::{ErrorAnswer, Registration};
use tern_wire::tree::{
    self, Envelope, Holding, HoldingReport, Member, NextAnswer, NextRequest, NonceGuard, Notification, Phase,
    SignedNotification, StatusReport, TreeError, TreeLimits, TreeMessage, fetch_token_matches,
};
use tokio::sync::Notify as Wake;
use tracing::{debug, info, warn};

use crate::ccm::now_ms;
use crate::delivery::{Delivery, Early, EarlyReports, NodeOutcome, PhaseFuture, Recipient};
use crate::metrics::{MoverMetrics, ReasonLabel};
use crate::payload::Payload;
use crate::segments::{SUPERSEDE_AFTER, SegmentGroup, Segments};
use crate::star::StarDelivery;
use crate::tree::{DistributionTree, Leader, LeaderState, Next, Notify, Source, TreeConfig, sort_leaders};

/// The sender name the mover signs its tree messages with.
pub const MOVER_SENDER: &str = "mover";

/// How assignments reach nodes (`tern mover --delivery`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    /// The tree when any target is in a segment with a group leader (and the mover has a cluster key), the
    /// star otherwise.
    #[default]
    Auto,
    /// Always the tree for targets in led segments (needs a cluster key); the star for the others.
    Tree,
    /// Always the star: the mover sends every node its own copy.
    Star,
}

impl std::str::FromStr for DeliveryMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(DeliveryMode::Auto),
            "tree" => Ok(DeliveryMode::Tree),
            "star" => Ok(DeliveryMode::Star),
            other => Err(format!("`{other}` is not a delivery: use auto, tree or star")),
        }
    }
}

/// Settings of the tree (`tern mover --delivery ...`).
#[derive(Debug, Clone)]
pub struct TreeSettings {
    /// Tree or star.
    pub mode: DeliveryMode,
    /// GLs first in the sorted list, in this order (the administrator's static order; seed 004: "a GUI
    /// mechanism to allow a system administrator to override").
    pub admin_order: Vec<String>,
    /// How long a notified GL may take to report that it holds (or is receiving) the assignment.
    pub fetch_timeout: Duration,
    /// How long a holder with nothing to serve waits before asking again.
    pub ask_again: Duration,
    /// GLs the mover serves itself at the start (1: its link carries one copy).
    pub mover_copies: usize,
    /// How long a segment whose GL was given up on waits for a new leader before the mover delivers to
    /// its members itself.
    pub leader_grace: Duration,
    /// Times a GL that reported a failure of its own is notified again.
    pub retries: u32,
    /// How often the driver looks at timeouts and the segment directory.
    pub tick: Duration,
    /// Longest one assignment's tree may run; members unreported by then have failed.
    pub deadline: Duration,
    /// Time for one message to a GL.
    pub request_timeout: Duration,
    /// Bounds on tree messages.
    pub limits: TreeLimits,
    /// Finished trees kept for `/status`.
    pub history: usize,
}

impl Default for TreeSettings {
    fn default() -> Self {
        TreeSettings {
            mode: DeliveryMode::Auto,
            admin_order: Vec::new(),
            fetch_timeout: Duration::from_secs(60),
            ask_again: Duration::from_millis(500),
            mover_copies: 1,
            leader_grace: Duration::from_secs(60),
            retries: 2,
            tick: Duration::from_millis(200),
            deadline: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(10),
            limits: TreeLimits::default(),
            history: 16,
        }
    }
}

/// One tree as `/status` shows it: who served whom, each GL's state, and the bytes the mover sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeRecord {
    /// The transfer id.
    pub transfer: String,
    /// The job.
    pub job: String,
    /// `prepare` or `commit`.
    pub phase: &'static str,
    /// Bytes of the assignment.
    pub size: u64,
    /// Bytes the mover itself sent as the tree's root.
    pub mover_bytes: u64,
    /// Who served whom, in order: (`mover` or the serving GL, the GL served).
    pub edges: Vec<(String, String)>,
    /// Each GL's state: `pending`, `notified`, `holding`, `failed: REASON`.
    pub leaders: BTreeMap<String, String>,
    /// Each segment's state: `tree` (its GL is in the tree), `waiting for a new leader`, `direct` (the
    /// mover is delivering to its members itself), `reported` (its GL's status report came in), `star`
    /// (the mover delivered to its members itself).
    pub segments: BTreeMap<String, String>,
    /// Whether it is still running.
    pub running: bool,
}

/// Where one segment's delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GroupState {
    /// Its GL is in the tree.
    Tree,
    /// Its GL was given up on at this instant; waiting for a new one.
    Waiting(Instant),
    /// The mover delivers to its members itself.
    Direct,
    /// Its GL's status report (or the direct delivery) came in.
    Reported,
}

/// `ms` (since the epoch) as a time of day in UTC, `HH:MM:SS UTC`: the running job's notes say when.
fn clock_time(ms: u64) -> String {
    let seconds = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

/// How long a group leader's segment reports may stop during a transfer before the running job says so
/// (a leader refreshes its report every 10 s; it is given up on at [`SUPERSEDE_AFTER`]).
const QUIET_LEADER: Duration = Duration::from_secs(15);

/// One segment's share of a delivery.
#[derive(Debug)]
struct Group {
    /// The current GL.
    leader: Leader,
    leader_url: String,
    /// The targets in the segment.
    members: Vec<Recipient>,
    state: GroupState,
    /// Whether the mover delivered to the members itself (no GL in time).
    by_star: bool,
    /// The current GL's incarnation, as the segment directory first showed it during the run.
    incarnation: Option<u64>,
    /// When its GL was last given up on (ms since the epoch): the waiting note's times are fixed by it.
    given_up_ms: u64,
}

impl Group {
    /// Whether the directory's `leader` is this group's GL restarted: its name under another process
    /// incarnation than the one the run first saw (recorded here on first sight).
    fn restarted(&mut self, leader: &crate::segments::SegmentLeader) -> bool {
        leader.name == self.leader.name && *self.incarnation.get_or_insert(leader.incarnation) != leader.incarnation
    }
}

/// One assignment's tree while it runs.
struct Run {
    transfer: String,
    job: String,
    phase: Phase,
    assignment: Payload,
    hash: String,
    core: DistributionTree,
    /// By segment name.
    groups: BTreeMap<String, Group>,
    /// Every GL the tree has had: name → (segment, URL).
    leaders: HashMap<String, (String, String)>,
    /// GLs that reported a failure themselves (so they are alive and may be notified again).
    reported_failure: HashSet<String>,
    /// How often each GL was given up on (timed out, failed, replaced).
    given_up: HashMap<String, u32>,
    outcomes: HashMap<String, Result<(), String>>,
    /// Notifications the driver is to send (the mover is their source).
    outbox: Vec<Notify>,
    /// Members the mover delivered to itself (their segment had no GL in time), with the bytes sent.
    direct: HashMap<String, u64>,
    /// How long a holder with nothing to serve waits before asking again.
    ask_again: Duration,
    mover_bytes: Arc<AtomicU64>,
    wake: Arc<Wake>,
}

impl Run {
    /// A tree for `groups` over their leaders, sorted by `settings` (not started).
    fn new(
        transfer: &str,
        job: &str,
        phase: Phase,
        assignment: Payload,
        groups: Vec<SegmentGroup>,
        settings: &TreeSettings,
    ) -> Run {
        let leaders = sort_leaders(
            groups.iter().map(|group| group.leader.clone()).collect(),
            &settings.admin_order,
        );
        let config = TreeConfig {
            mover_copies: settings.mover_copies.max(1),
            fetch_timeout: settings.fetch_timeout,
            ask_again: settings.ask_again,
        };
        let mut run = Run {
            transfer: transfer.to_string(),
            job: job.to_string(),
            phase,
            hash: assignment.hash().map(str::to_string).unwrap_or_else(|| "0".repeat(64)),
            assignment,
            core: DistributionTree::new(leaders, config),
            groups: BTreeMap::new(),
            leaders: HashMap::new(),
            reported_failure: HashSet::new(),
            given_up: HashMap::new(),
            outcomes: HashMap::new(),
            outbox: Vec::new(),
            direct: HashMap::new(),
            ask_again: settings.ask_again,
            mover_bytes: Arc::new(AtomicU64::new(0)),
            wake: Arc::new(Wake::new()),
        };
        for group in groups {
            run.leaders.insert(
                group.leader.name.clone(),
                (group.leader.segment.clone(), group.leader_url.clone()),
            );
            run.groups.insert(
                group.leader.segment.clone(),
                Group {
                    leader: group.leader,
                    leader_url: group.leader_url,
                    members: group.members,
                    state: GroupState::Tree,
                    by_star: false,
                    incarnation: None,
                    given_up_ms: 0,
                },
            );
        }
        run
    }

    fn segment_of_leader(&self, leader: &str) -> Option<&str> {
        self.leaders.get(leader).map(|(segment, _)| segment.as_str())
    }

    /// The signed notification for `target` to obtain the assignment from `source`.
    fn notification(&self, target: &str, source: &Source, signing: &SigningKey) -> Option<SignedNotification> {
        let (segment, target_url) = self.leaders.get(target)?;
        let group = self.groups.get(segment)?;
        let source = match source {
            Source::Mover => tree::Source::Mover,
            Source::Leader(name) => tree::Source::Leader {
                name: name.clone(),
                url: self.leaders.get(name)?.1.clone(),
            },
        };
        let notification = Notification {
            job: self.job.clone(),
            transfer: self.transfer.clone(),
            phase: self.phase,
            source,
            target: target.to_string(),
            target_url: target_url.clone(),
            size: self.assignment.len(),
            hash: self.hash.clone(),
            leaders: self.core.states().keys().cloned().collect(),
            members: group
                .members
                .iter()
                .map(|member| Member {
                    name: member.name.clone(),
                    url: member.url.clone(),
                })
                .collect(),
            issued_ms: now_ms(),
        };
        Some(SignedNotification::sign(notification, signing))
    }

    /// One look at timeouts and the segment directory: gives up on GLs that timed out, adds segments' new
    /// leaders, hands segments without one to the star after the grace; returns the segments now to be
    /// delivered to directly.
    fn step(&mut self, now: Instant, segments: &Segments, settings: &TreeSettings) -> Vec<String> {
        let (timed_out, notifications) = self.core.tick(now);
        for name in &timed_out {
            warn!(transfer = %self.transfer, leader = %name, "group leader did not obtain the assignment in time; given up on");
        }
        self.outbox.extend(notifications);
        let now_ms = now_ms();
        let silent_ms = u64::try_from(SUPERSEDE_AFTER.as_millis()).unwrap_or(u64::MAX);
        let directory: HashMap<String, crate::segments::Segment> = segments
            .all()
            .into_iter()
            .map(|segment| (segment.name.clone(), segment))
            .collect();
        for (name, group) in self.groups.iter_mut() {
            if group.state != GroupState::Tree {
                continue;
            }
            let segment = directory.get(name);
            let current = segment.and_then(|segment| segment.leader.as_ref());
            let replaced = current.is_some_and(|leader| leader.name != group.leader.name);
            // The same GL, restarted: it lost the transfer it was leading and would never report it.
            let restarted = current.is_some_and(|leader| group.restarted(leader));
            // The same GL, no longer reporting for its segment (it died and no one could take over): the
            // segment directory would not group a job to it now, and this run does not wait for it either.
            let silent = current.is_some_and(|leader| leader.name == group.leader.name)
                && segment.is_some_and(|segment| segment.reported_ms.saturating_add(silent_ms) <= now_ms);
            let failed = matches!(self.core.states().get(&group.leader.name), Some(LeaderState::Failed(_)));
            if silent && !restarted && !failed {
                warn!(
                    transfer = %self.transfer,
                    leader = %group.leader.name,
                    silent_s = SUPERSEDE_AFTER.as_secs(),
                    "group leader stopped reporting during the transfer; given up on"
                );
                let _ = self
                    .core
                    .failed(&group.leader.name, "stopped reporting for its segment");
            }
            let failed = failed || silent;
            if replaced && !failed {
                // Its segment elected another leader: the old one is gone (or no longer leads).
                let _ = self
                    .core
                    .failed(&group.leader.name, "replaced as its segment's group leader");
            }
            if restarted && !failed {
                warn!(transfer = %self.transfer, leader = %group.leader.name, "group leader restarted during the transfer; notified again");
                let _ = self.core.failed(&group.leader.name, "restarted during the transfer");
            }
            if replaced || restarted || failed {
                group.state = GroupState::Waiting(now);
                group.given_up_ms = now_ms;
                *self.given_up.entry(group.leader.name.clone()).or_default() += 1;
            }
        }
        let mut direct = Vec::new();
        for (name, group) in self.groups.iter_mut() {
            let GroupState::Waiting(since) = group.state else {
                continue;
            };
            let current = directory.get(name).and_then(|segment| segment.leader.clone());
            // A GL that said itself it failed is alive: it is notified again, a bounded number of times.
            let retry = |leader: &str| {
                self.reported_failure.contains(leader)
                    && self
                        .given_up
                        .get(leader)
                        .is_some_and(|count| *count <= settings.retries)
            };
            // A restarted GL is alive, and to be notified again.
            let restarted = current.as_ref().is_some_and(|leader| group.restarted(leader));
            match current {
                Some(leader) if leader.name != group.leader.name || retry(&leader.name) || restarted => {
                    info!(transfer = %self.transfer, segment = %name, leader = %leader.name, "segment's group leader added to the running tree");
                    group.leader = Leader {
                        name: leader.name.clone(),
                        segment: name.clone(),
                        location: directory.get(name).map(|s| s.location.clone()).unwrap_or_default(),
                        cpu: leader.cpu,
                    };
                    group.leader_url = leader.url.clone();
                    group.incarnation = Some(leader.incarnation);
                    group.state = GroupState::Tree;
                    self.leaders
                        .insert(leader.name.clone(), (name.clone(), leader.url.clone()));
                    self.core.add_leader(group.leader.clone());
                }
                _ if now.saturating_duration_since(since) >= settings.leader_grace => {
                    warn!(transfer = %self.transfer, segment = %name, "no new group leader in time; the mover delivers to the segment itself");
                    group.state = GroupState::Direct;
                    direct.push(name.clone());
                }
                _ => {}
            }
        }
        let waiting = self
            .groups
            .values()
            .any(|group| matches!(group.state, GroupState::Waiting(_)));
        self.core.hold_open(waiting);
        direct
    }

    /// Whether every segment reported (or was delivered to directly and that ended).
    fn finished(&self) -> bool {
        self.groups.values().all(|group| group.state == GroupState::Reported)
    }

    /// What the run waits for that the operator should know, in words, or `None`: group leaders whose
    /// segment reports stopped [`QUIET_LEADER`] ago (given up on at [`SUPERSEDE_AFTER`]) and segments
    /// waiting for a new group leader (served by the mover itself after `grace`). Without it a publish
    /// said nothing for the minute and a half a dead leader is waited out (found by a trial). The words
    /// name times of day, not durations, so that they change only when what is waited for changes.
    fn waiting(&self, now_ms: u64, segments: &Segments, grace: Duration) -> Option<String> {
        let reported: HashMap<String, u64> = segments
            .all()
            .into_iter()
            .map(|segment| (segment.name, segment.reported_ms))
            .collect();
        let quiet_ms = u64::try_from(QUIET_LEADER.as_millis()).unwrap_or(u64::MAX);
        let supersede_ms = u64::try_from(SUPERSEDE_AFTER.as_millis()).unwrap_or(u64::MAX);
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let mut notes = Vec::new();
        for (name, group) in &self.groups {
            match group.state {
                GroupState::Tree => {
                    let Some(&reported_ms) = reported.get(name) else {
                        continue;
                    };
                    if now_ms.saturating_sub(reported_ms) >= quiet_ms {
                        notes.push(format!(
                            "group leader {} of segment {name} has not reported since {} (given up on at {})",
                            group.leader.name,
                            clock_time(reported_ms),
                            clock_time(reported_ms.saturating_add(supersede_ms))
                        ));
                    }
                }
                GroupState::Waiting(_) => notes.push(format!(
                    "segment {name} waits for a new group leader until {}, then the mover sends to it itself",
                    clock_time(group.given_up_ms.saturating_add(grace_ms))
                )),
                GroupState::Direct | GroupState::Reported => {}
            }
        }
        (!notes.is_empty()).then(|| notes.join("; "))
    }

    fn record(&self, running: bool) -> TreeRecord {
        let name = |source: &Source| match source {
            Source::Mover => MOVER_SENDER.to_string(),
            Source::Leader(name) => name.clone(),
        };
        TreeRecord {
            transfer: self.transfer.clone(),
            job: self.job.clone(),
            phase: self.phase.as_str(),
            size: self.assignment.len(),
            mover_bytes: self.mover_bytes.load(Ordering::Relaxed),
            edges: self
                .core
                .edges()
                .iter()
                .map(|(source, target)| (name(source), target.clone()))
                .collect(),
            leaders: self
                .core
                .states()
                .iter()
                .map(|(leader, state)| {
                    let state = match state {
                        LeaderState::Pending => "pending".to_string(),
                        LeaderState::Notified { .. } => "notified".to_string(),
                        LeaderState::Holding => "holding".to_string(),
                        LeaderState::Failed(reason) => format!("failed: {reason}"),
                    };
                    (leader.clone(), state)
                })
                .collect(),
            segments: self
                .groups
                .iter()
                .map(|(segment, group)| {
                    let state = match group.state {
                        GroupState::Tree => "tree",
                        GroupState::Waiting(_) => "waiting for a new leader",
                        GroupState::Direct => "direct",
                        GroupState::Reported if group.by_star => "star",
                        GroupState::Reported => "reported",
                    };
                    (segment.clone(), state.to_string())
                })
                .collect(),
            running,
        }
    }
}

/// Why a GL's message was refused.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("this mover has no cluster key, so it runs no distribution tree: start it with --cluster-key FILE")]
    NoKey,
    #[error(transparent)]
    Message(#[from] TreeError),
    #[error("message from {sender} speaks for {leader}")]
    Impersonation { sender: String, leader: String },
    #[error("no distribution tree is running for transfer {0} (it ended, or never was)")]
    UnknownTransfer(String),
    #[error("{0}")]
    Tree(#[from] crate::tree::TreeError),
    #[error("a {0} message is not taken here")]
    WrongMessage(&'static str),
    #[error("fetch of transfer {transfer} for {requester} without a valid tern-tree-token (the cluster key's)")]
    BadFetchToken { transfer: String, requester: String },
    #[error(
        "this mover takes only registrations tagged with the cluster key: start the node with --cluster-key FILE (the mover's key file)"
    )]
    Untagged,
    #[error(
        "this mover has no cluster key, and the node tags its registration with one: start the mover with --cluster-key FILE (the nodes' key file)"
    )]
    NoKeyToRegister,
}

impl Refused {
    fn reason(&self) -> &'static str {
        match self {
            Refused::NoKey => "no-key",
            Refused::Message(error) => error.reason(),
            Refused::Impersonation { .. } => "impersonation",
            Refused::UnknownTransfer(_) => "unknown-transfer",
            Refused::Tree(_) => "out-of-turn",
            Refused::WrongMessage(_) => "malformed",
            Refused::BadFetchToken { .. } => "bad-token",
            Refused::Untagged => "untagged",
            Refused::NoKeyToRegister => "no-key",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refused::NoKey | Refused::UnknownTransfer(_) => StatusCode::NOT_FOUND,
            Refused::Untagged => StatusCode::UNAUTHORIZED,
            Refused::NoKeyToRegister => StatusCode::BAD_REQUEST,
            Refused::Message(TreeError::Malformed(_) | TreeError::Truncated | TreeError::TrailingBytes(_))
            | Refused::WrongMessage(_) => StatusCode::BAD_REQUEST,
            Refused::Message(TreeError::Oversized { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Refused::Tree(_) => StatusCode::CONFLICT,
            Refused::Message(_) | Refused::Impersonation { .. } | Refused::BadFetchToken { .. } => {
                StatusCode::FORBIDDEN
            }
        }
    }
}

/// The trees running now, as the API's `/api/tree/*` routes reach them: the cluster key, the mover's
/// signing key, the replay guard, and the finished trees kept for `/status`.
pub struct TreeHub {
    key: Option<SecretKey>,
    signing: SigningKey,
    limits: TreeLimits,
    history: usize,
    guard: Mutex<NonceGuard>,
    runs: Mutex<HashMap<String, Arc<Mutex<Run>>>>,
    finished: Mutex<VecDeque<TreeRecord>>,
    next_transfer: AtomicU64,
    bytes_sent: Counter,
    assignment_sent_bytes: Histogram,
    refused: Family<ReasonLabel, Counter>,
}

impl std::fmt::Debug for TreeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeHub").field("has_key", &self.key.is_some()).finish()
    }
}

fn refusal(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    tern_admin::json_error(status, message)
}

impl TreeHub {
    /// A hub authenticating with the cluster `key` (none: every tree route answers 404 and the tree is
    /// never chosen), signing notifications with the mover's `signing` key, counting into `metrics`.
    pub fn new(
        key: Option<SecretKey>,
        signing: SigningKey,
        settings: &TreeSettings,
        metrics: &MoverMetrics,
    ) -> TreeHub {
        TreeHub {
            key,
            signing,
            limits: settings.limits,
            history: settings.history,
            guard: Mutex::new(NonceGuard::new(settings.limits)),
            runs: Mutex::new(HashMap::new()),
            finished: Mutex::new(VecDeque::new()),
            next_transfer: AtomicU64::new(1),
            bytes_sent: metrics.bytes_sent.clone(),
            assignment_sent_bytes: metrics.assignment_sent_bytes.clone(),
            refused: metrics.tree_refused.clone(),
        }
    }

    /// Whether the hub has a cluster key (it can run trees).
    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// The trees running now, then the finished ones kept, newest first.
    pub fn records(&self) -> Vec<TreeRecord> {
        let runs: Vec<Arc<Mutex<Run>>> = self
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut records: Vec<TreeRecord> = runs
            .iter()
            .map(|run| run.lock().unwrap_or_else(|p| p.into_inner()).record(true))
            .collect();
        records.sort_by(|a, b| a.transfer.cmp(&b.transfer));
        let finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        records.extend(finished.iter().rev().cloned());
        records
    }

    /// Tree messages refused so far, by reason.
    pub fn refused(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for reason in [
            "bad-tag",
            "stale",
            "replayed",
            "malformed",
            "oversized",
            "impersonation",
            "unknown-transfer",
            "out-of-turn",
            "no-key",
            "bad-token",
        ] {
            let count = self
                .refused
                .get_or_create(&ReasonLabel {
                    reason: reason.to_string(),
                })
                .get();
            if count > 0 {
                counts.insert(reason.to_string(), count);
            }
        }
        counts
    }

    fn run(&self, transfer: &str) -> Option<Arc<Mutex<Run>>> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(transfer)
            .cloned()
    }

    /// Opens a GL's message: tag, freshness, nonce, and that the sender speaks for itself.
    fn open(&self, body: &[u8]) -> Result<Envelope, Refused> {
        let key = self.key.as_ref().ok_or(Refused::NoKey)?;
        let envelope = tree::decode(key, body, &self.limits)?;
        self.guard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&envelope, now_ms())?;
        let leader = match &envelope.message {
            TreeMessage::Holding { report } => &report.leader,
            TreeMessage::Next { request } => &request.leader,
            TreeMessage::Status { report } => &report.leader,
            TreeMessage::Register { registration } => &registration.name,
            other => return Err(Refused::WrongMessage(other.name())),
        };
        if *leader != envelope.sender {
            return Err(Refused::Impersonation {
                sender: envelope.sender.clone(),
                leader: leader.clone(),
            });
        }
        Ok(envelope)
    }

    fn refuse(&self, refused: Refused) -> Response<Body> {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: refused.reason().to_string(),
            })
            .inc();
        warn!(reason = refused.reason(), error = %refused, "tree message refused");
        refusal(refused.status(), refused.to_string())
    }

    /// `GET /api/tree/assignments/ID?for=NODE`: the assignment of a running tree, served by the mover as the
    /// tree's root to a GL that presents the [`tern_wire::tree::fetch_token`] for it (header
    /// [`tern_wire::tree::FETCH_TOKEN_HEADER`]; 403 otherwise); every byte sent is counted (the run's and the mover's
    /// `sent_bytes`).
    pub fn serve(&self, transfer: &str, requester: &str, token: Option<&str>) -> Response<Body> {
        let Some(key) = &self.key else {
            return self.refuse(Refused::NoKey);
        };
        if !token.is_some_and(|token| fetch_token_matches(key, transfer, requester, token)) {
            return self.refuse(Refused::BadFetchToken {
                transfer: transfer.to_string(),
                requester: requester.to_string(),
            });
        }
        let Some(run) = self.run(transfer) else {
            return refusal(
                StatusCode::NOT_FOUND,
                format!("no distribution tree is running for transfer {transfer}"),
            );
        };
        let (assignment, counter) = {
            let run = run.lock().unwrap_or_else(|p| p.into_inner());
            (run.assignment.clone(), run.mover_bytes.clone())
        };
        let total = self.bytes_sent.clone();
        // Counted as each chunk is handed to the connection: a copy cut short counts what was sent.
        let body = tern_http::with_data_counter(assignment.body(), move |sent| {
            counter.fetch_add(sent as u64, Ordering::Relaxed);
            total.inc_by(sent as u64);
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/octet-stream")
            .body(body)
            .unwrap_or_else(|e| refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    /// The registration in `body` (`POST /api/nodes/register`), or the refusal to answer (counted with the
    /// tree's refusals, `tern_mover_tree_refused_total`). A mover with a cluster key takes only a
    /// registration tagged with it ([`TreeMessage::Register`], fresh, not a replay, sent by the node it
    /// registers), so a machine without the key can neither offer itself as a node nor take over a node's
    /// name and its deliveries; a mover without one takes the plain JSON [`Registration`], for which this
    /// answers `Ok(None)` (the caller parses it).
    pub fn open_registration(&self, body: &[u8]) -> Result<Option<Registration>, Box<Response<Body>>> {
        let tagged = tern_wire::frame::peek_kind(body).is_some();
        let refused = match (tagged, self.key.is_some()) {
            (false, false) => return Ok(None),
            (false, true) => Refused::Untagged,
            (true, false) => Refused::NoKeyToRegister,
            (true, true) => match self.open(body) {
                Ok(Envelope {
                    message: TreeMessage::Register { registration },
                    ..
                }) => return Ok(Some(registration)),
                Ok(other) => Refused::WrongMessage(other.message.name()),
                Err(refused) => refused,
            },
        };
        Err(Box::new(self.refuse(refused)))
    }

    /// `POST /api/tree/holding`: a GL is receiving, holds, or could not obtain the assignment.
    pub fn holding(&self, body: &[u8]) -> Response<Body> {
        match self.take_holding(body) {
            Ok(()) => tern_admin::json(StatusCode::OK, &serde_json::json!({ "taken": true })),
            Err(refused) => self.refuse(refused),
        }
    }

    fn take_holding(&self, body: &[u8]) -> Result<(), Refused> {
        let envelope = self.open(body)?;
        let TreeMessage::Holding { report } = envelope.message else {
            return Err(Refused::WrongMessage("non-holding"));
        };
        let HoldingReport {
            transfer,
            leader,
            holding,
            ..
        } = report;
        let run = self.run(&transfer).ok_or(Refused::UnknownTransfer(transfer))?;
        let mut run = run.lock().unwrap_or_else(|p| p.into_inner());
        match holding {
            Holding::Receiving { .. } | Holding::Complete => run.core.holding(&leader)?,
            Holding::Failed { reason } => {
                warn!(transfer = %run.transfer, %leader, %reason, "group leader could not obtain the assignment");
                run.core.failed(&leader, &reason)?;
                run.reported_failure.insert(leader.clone());
            }
        }
        run.wake.notify_one();
        Ok(())
    }

    /// `POST /api/tree/next`: a holder asks for the next GL; answered with a tree message (serve this
    /// notification / done / ask again).
    pub fn next(&self, body: &[u8]) -> Response<Body> {
        match self.answer_next(body) {
            Ok(answer) => {
                let Some(key) = self.key.as_ref() else {
                    return self.refuse(Refused::NoKey);
                };
                let envelope = Envelope::new(MOVER_SENDER, TreeMessage::Answer { answer }, now_ms());
                let mut response = Response::new(tern_http::full(tree::encode(key, &envelope)));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/octet-stream"),
                );
                response
            }
            Err(refused) => self.refuse(refused),
        }
    }

    fn answer_next(&self, body: &[u8]) -> Result<NextAnswer, Refused> {
        let envelope = self.open(body)?;
        let TreeMessage::Next { request } = envelope.message else {
            return Err(Refused::WrongMessage("non-next"));
        };
        let NextRequest { transfer, leader, .. } = request;
        let run = self.run(&transfer).ok_or(Refused::UnknownTransfer(transfer))?;
        let mut run = run.lock().unwrap_or_else(|p| p.into_inner());
        let (next, notify) = run.core.next_for(&leader, Instant::now())?;
        let answer = match (next, notify) {
            (Next::Serve(target), Some(notify)) => match run.notification(&target, &notify.source, &self.signing) {
                Some(notification) => {
                    debug!(transfer = %run.transfer, holder = %leader, %target, "holder serves the next group leader");
                    NextAnswer::Serve {
                        notification: Box::new(notification),
                    }
                }
                None => {
                    let _ = run.core.failed(&target, "its segment is not known to this tree");
                    NextAnswer::AskAgain { after_ms: 0 }
                }
            },
            (Next::Serve(_), None) | (Next::AskAgain(_), _) => NextAnswer::AskAgain {
                after_ms: u64::try_from(run.ask_again.as_millis()).unwrap_or(u64::MAX),
            },
            (Next::Done, _) => NextAnswer::Done,
        };
        Ok(answer)
    }

    /// `POST /api/tree/status`: a GL's assignment status report on its members.
    pub fn status_report(&self, body: &[u8]) -> Response<Body> {
        match self.take_status(body) {
            Ok(()) => tern_admin::json(StatusCode::OK, &serde_json::json!({ "taken": true })),
            Err(refused) => self.refuse(refused),
        }
    }

    fn take_status(&self, body: &[u8]) -> Result<(), Refused> {
        let envelope = self.open(body)?;
        let TreeMessage::Status { report } = envelope.message else {
            return Err(Refused::WrongMessage("non-status"));
        };
        let StatusReport {
            transfer,
            leader,
            completed,
            failed,
            ..
        } = report;
        let run = self.run(&transfer).ok_or(Refused::UnknownTransfer(transfer))?;
        let mut run = run.lock().unwrap_or_else(|p| p.into_inner());
        let Some(segment) = run.segment_of_leader(&leader).map(str::to_string) else {
            return Err(Refused::Tree(crate::tree::TreeError::Unknown(leader)));
        };
        let members: HashSet<String> = run
            .groups
            .get(&segment)
            .map(|group| group.members.iter().map(|m| m.name.clone()).collect())
            .unwrap_or_default();
        for node in completed.into_iter().filter(|node| members.contains(node)) {
            run.outcomes.insert(node, Ok(()));
        }
        for failure in failed.into_iter().filter(|f| members.contains(&f.node)) {
            // A success another GL of the segment reported stands.
            run.outcomes
                .entry(failure.node)
                .or_insert(Err(format!("group leader {leader}: {}", failure.reason)));
        }
        let current = run
            .groups
            .get(&segment)
            .is_some_and(|group| group.leader.name == leader && group.state == GroupState::Tree);
        if current && let Some(group) = run.groups.get_mut(&segment) {
            group.state = GroupState::Reported;
        }
        info!(transfer = %run.transfer, %leader, %segment, "assignment status report taken");
        run.wake.notify_one();
        Ok(())
    }

    fn finish(&self, transfer: &str) {
        let run = self.runs.lock().unwrap_or_else(|p| p.into_inner()).remove(transfer);
        if let Some(run) = run {
            let record = run.lock().unwrap_or_else(|p| p.into_inner()).record(false);
            let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
            finished.push_back(record);
            while finished.len() > self.history {
                finished.pop_front();
            }
        }
    }
}

/// The store-and-forward tree as the mover's transport: targets in led segments go through their group
/// leaders, the rest (and everything, when the tree is off) by the star.
pub struct TreeDelivery {
    star: StarDelivery,
    hub: Arc<TreeHub>,
    segments: Arc<Segments>,
    settings: TreeSettings,
    client: HttpsClient<Full<Bytes>>,
}

impl TreeDelivery {
    /// The tree over `segments`, reporting through `hub`, with `star` for the targets outside led
    /// segments; `client` sends notifications to group leaders.
    pub fn new(
        star: StarDelivery,
        hub: Arc<TreeHub>,
        segments: Arc<Segments>,
        settings: TreeSettings,
        client: HttpsClient<Full<Bytes>>,
    ) -> TreeDelivery {
        TreeDelivery {
            star,
            hub,
            segments,
            settings,
            client,
        }
    }

    /// One phase: the tree for the led segments' targets, the star for the others, at once; one outcome
    /// per node, in the order of `nodes`.
    async fn deliver(
        &self,
        job: &str,
        phase: Phase,
        assignment: Payload,
        nodes: &[Recipient],
        early: Option<EarlyReports>,
    ) -> Vec<NodeOutcome> {
        let grouping = self.segments.group(nodes, crate::ccm::now_ms());
        let use_tree = self.hub.enabled() && self.settings.mode != DeliveryMode::Star && !grouping.groups.is_empty();
        let (tree_outcomes, mover_bytes) = if use_tree {
            let star = self.star_phase(job, phase, assignment.clone(), &grouping.direct, early.clone());
            let tree = self.run_tree(job, phase, assignment.clone(), grouping.groups, early);
            let (mut star, (tree, tree_bytes)) = tokio::join!(star, tree);
            let star_bytes: u64 = star.iter().map(|outcome| outcome.bytes).sum();
            star.extend(tree);
            (star, star_bytes + tree_bytes)
        } else {
            let star = self.star_phase(job, phase, assignment.clone(), nodes, early).await;
            let bytes = star.iter().map(|outcome| outcome.bytes).sum();
            (star, bytes)
        };
        self.hub.assignment_sent_bytes.observe(mover_bytes as f64);
        let mut by_node: HashMap<String, NodeOutcome> = tree_outcomes
            .into_iter()
            .map(|outcome| (outcome.node.clone(), outcome))
            .collect();
        nodes.iter().filter_map(|node| by_node.remove(&node.name)).collect()
    }

    async fn star_phase(
        &self,
        job: &str,
        phase: Phase,
        assignment: Payload,
        nodes: &[Recipient],
        early: Option<EarlyReports>,
    ) -> Vec<NodeOutcome> {
        if nodes.is_empty() {
            return Vec::new();
        }
        match phase {
            Phase::Prepare => self.star.prepare(job, assignment, nodes, early).await,
            Phase::Commit => self.star.commit(job, assignment, nodes).await,
        }
    }

    /// Runs one tree to its end; returns the outcomes of the groups' members and the bytes the mover sent.
    /// What it waits for goes to `early` as it changes ([`Early::Waiting`]).
    async fn run_tree(
        &self,
        job: &str,
        phase: Phase,
        assignment: Payload,
        groups: Vec<SegmentGroup>,
        early: Option<EarlyReports>,
    ) -> (Vec<NodeOutcome>, u64) {
        let mut told: Option<String> = None;
        let mut tell = |note: Option<String>| {
            if note != told
                && let Some(early) = &early
            {
                let _ = early.send(Early::Waiting(note.clone()));
                told = note;
            }
        };
        let number = self.hub.next_transfer.fetch_add(1, Ordering::Relaxed);
        let transfer = format!("{}.{}.{number}", sanitize(job), phase.as_str());
        let mut run = Run::new(&transfer, job, phase, assignment, groups, &self.settings);
        let (wake, mover_bytes) = (run.wake.clone(), run.mover_bytes.clone());
        let started = Instant::now();
        let first = run.core.start(started);
        run.outbox.extend(first);
        info!(%transfer, %job, leaders = run.leaders.len(), bytes = run.assignment.len(), "distribution tree started");
        let run = Arc::new(Mutex::new(run));
        self.hub
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(transfer.clone(), run.clone());
        let finish = FinishOnDrop {
            hub: &self.hub,
            transfer: transfer.clone(),
        };
        let mut direct_tasks = tokio::task::JoinSet::new();
        loop {
            let (outbox, direct) = {
                let mut run = run.lock().unwrap_or_else(|p| p.into_inner());
                let direct = run.step(Instant::now(), &self.segments, &self.settings);
                tell(run.waiting(now_ms(), &self.segments, self.settings.leader_grace));
                let outbox = std::mem::take(&mut run.outbox);
                let direct: Vec<(String, Vec<Recipient>)> = direct
                    .into_iter()
                    .filter_map(|segment| run.groups.get(&segment).map(|g| (segment, g.members.clone())))
                    .collect();
                let outbox: Vec<(String, Option<SignedNotification>)> = outbox
                    .into_iter()
                    .map(|notify| {
                        let signed = run.notification(&notify.target, &notify.source, &self.hub.signing);
                        (notify.target, signed)
                    })
                    .collect();
                (outbox, direct)
            };
            for (target, signed) in outbox {
                self.send_notification(&run, target, signed);
            }
            for (segment, members) in direct {
                let star_members = members.clone();
                let assignment = run.lock().unwrap_or_else(|p| p.into_inner()).assignment.clone();
                let job = job.to_string();
                let star = self.star.clone();
                direct_tasks.spawn(async move {
                    let outcomes = match phase {
                        Phase::Prepare => star.prepare(&job, assignment, &star_members, None).await,
                        Phase::Commit => star.commit(&job, assignment, &star_members).await,
                    };
                    (segment, outcomes)
                });
            }
            if run.lock().unwrap_or_else(|p| p.into_inner()).finished() && direct_tasks.is_empty() {
                break;
            }
            if started.elapsed() >= self.settings.deadline {
                warn!(%transfer, "distribution tree ran past its deadline; unreported members have failed");
                break;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.settings.tick) => {}
                Some(joined) = direct_tasks.join_next(), if !direct_tasks.is_empty() => self.take_direct(&run, joined),
            }
        }
        direct_tasks.abort_all();
        tell(None);
        let (outcomes, direct_bytes) = {
            let run = run.lock().unwrap_or_else(|p| p.into_inner());
            let mut outcomes = Vec::new();
            let mut direct_bytes = 0;
            for group in run.groups.values() {
                for member in &group.members {
                    let result = run.outcomes.get(&member.name).cloned().unwrap_or_else(|| {
                        Err(format!(
                            "no status report from group leader {} of segment {}",
                            group.leader.name, group.leader.segment
                        ))
                    });
                    // What the mover sent the node itself, and who passed the assignment on to it: a member's
                    // leader, or, for a leader, the leader it fetched from, or `mover` (its copy is counted in
                    // the tree's bytes, not here).
                    let (bytes, via) = match run.direct.get(&member.name) {
                        Some(bytes) => {
                            direct_bytes += *bytes;
                            (*bytes, None)
                        }
                        None if member.name == group.leader.name => {
                            match run.core.edges().iter().rev().find(|(_, to)| *to == member.name) {
                                Some((Source::Leader(from), _)) => (0, Some(from.clone())),
                                Some((Source::Mover, _)) => (0, Some("mover".to_string())),
                                None => (0, None),
                            }
                        }
                        None => (0, Some(group.leader.name.clone())),
                    };
                    outcomes.push(NodeOutcome {
                        node: member.name.clone(),
                        bytes,
                        result,
                        via,
                    });
                }
            }
            (outcomes, direct_bytes)
        };
        let record = run.lock().unwrap_or_else(|p| p.into_inner()).record(false);
        info!(
            %transfer, mover_bytes = record.mover_bytes, seconds = started.elapsed().as_secs_f64(),
            edges = ?record.edges, "distribution tree finished"
        );
        drop(finish);
        (outcomes, mover_bytes.load(Ordering::Relaxed) + direct_bytes)
    }

    /// Records a direct (star) delivery to a segment whose GL was given up on.
    fn take_direct(&self, run: &Arc<Mutex<Run>>, joined: Result<(String, Vec<NodeOutcome>), tokio::task::JoinError>) {
        let Ok((segment, outcomes)) = joined else { return };
        let mut run = run.lock().unwrap_or_else(|p| p.into_inner());
        for outcome in outcomes {
            run.direct.insert(outcome.node.clone(), outcome.bytes);
            match outcome.result {
                Ok(()) => {
                    run.outcomes.insert(outcome.node, Ok(()));
                }
                Err(reason) => {
                    run.outcomes.entry(outcome.node).or_insert(Err(reason));
                }
            }
        }
        if let Some(group) = run.groups.get_mut(&segment) {
            group.state = GroupState::Reported;
            group.by_star = true;
        }
    }

    /// Sends a notification whose source is the mover to its target GL; a GL that does not take it is given
    /// up on at once.
    fn send_notification(&self, run: &Arc<Mutex<Run>>, target: String, signed: Option<SignedNotification>) {
        let Some(key) = self.hub.key.clone() else { return };
        let fail = {
            let run = run.clone();
            move |target: &str, reason: String| {
                let mut run = run.lock().unwrap_or_else(|p| p.into_inner());
                warn!(transfer = %run.transfer, %target, %reason, "group leader did not take the notification; given up on");
                let _ = run.core.failed(target, &reason);
                run.wake.notify_one();
            }
        };
        let Some(signed) = signed else {
            fail(&target, "its segment is not known to this tree".into());
            return;
        };
        let url = format!("{}/tree/notify", signed.notification.target_url.trim_end_matches('/'));
        let envelope = Envelope::new(MOVER_SENDER, TreeMessage::Notify { notification: signed }, now_ms());
        let bytes = Bytes::from(tree::encode(&key, &envelope));
        let (client, timeout) = (self.client.clone(), self.settings.request_timeout);
        tokio::spawn(async move {
            let outcome = async {
                let request = Request::post(&url)
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(bytes))
                    .map_err(|e| e.to_string())?;
                let response = tokio::time::timeout(timeout, client.request(request))
                    .await
                    .map_err(|_| "no answer in time".to_string())?
                    .map_err(|e| format!("unreachable: {}", tern_http::tls::error_reason(&e)))?;
                let status = response.status();
                let body = Limited::new(response.into_body(), ErrorAnswer::MAX_BODY)
                    .collect()
                    .await
                    .map(|body| body.to_bytes())
                    .unwrap_or_default();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("refused ({status}): {}", ErrorAnswer::reason_in(&body)))
                }
            }
            .await;
            if let Err(reason) = outcome {
                fail(&target, reason);
            }
        });
    }
}

impl Delivery for TreeDelivery {
    /// The nodes the star serves report as they answer; a tree's members when their leader's status
    /// report comes, with the answer.
    fn prepare<'a>(
        &'a self,
        job: &'a str,
        content: Payload,
        nodes: &'a [Recipient],
        early: Option<EarlyReports>,
    ) -> PhaseFuture<'a> {
        Box::pin(self.deliver(job, Phase::Prepare, content, nodes, early))
    }

    fn commit<'a>(&'a self, job: &'a str, commit: Payload, nodes: &'a [Recipient]) -> PhaseFuture<'a> {
        Box::pin(self.deliver(job, Phase::Commit, commit, nodes, None))
    }
}

/// Ends a tree's run in the hub when [`TreeDelivery::run_tree`] ends, also when its caller stops waiting
/// (a quorum committed without the slowest nodes): the run and its assignment are not kept for ever.
struct FinishOnDrop<'a> {
    hub: &'a TreeHub,
    transfer: String,
}

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.hub.finish(&self.transfer);
    }
}

/// `job` as a transfer id's first part: letters, digits, `-` and `_` kept, the rest `_`, at most 96 bytes.
fn sanitize(job: &str) -> String {
    let cleaned: String = job
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect();
    if cleaned.is_empty() { "job".to_string() } else { cleaned }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_modes_parse_and_say_what_is_wrong() {
        assert_eq!("auto".parse(), Ok(DeliveryMode::Auto));
        assert_eq!("tree".parse(), Ok(DeliveryMode::Tree));
        assert_eq!("star".parse(), Ok(DeliveryMode::Star));
        assert!(
            "ring"
                .parse::<DeliveryMode>()
                .expect_err("unknown")
                .contains("auto, tree or star")
        );
    }

    fn group(segment: &str, leader: &str, members: &[&str]) -> SegmentGroup {
        SegmentGroup {
            leader: Leader {
                name: leader.to_string(),
                segment: segment.to_string(),
                location: "utc".to_string(),
                cpu: 4,
            },
            leader_url: format!("http://{leader}:7100"),
            members: members
                .iter()
                .map(|name| Recipient {
                    name: name.to_string(),
                    url: format!("http://{name}:7100"),
                })
                .collect(),
        }
    }

    fn directory(segments: &Segments, segment: &str, leader: &str, members: &[&str]) {
        report(segments, segment, leader, members, 1, crate::ccm::now_ms());
    }

    /// The segment's record as a report from `leader` (process `incarnation`) at `reported_ms` makes it.
    fn report(segments: &Segments, segment: &str, leader: &str, members: &[&str], incarnation: u64, reported_ms: u64) {
        segments.update(crate::segments::Segment {
            name: segment.to_string(),
            location: "utc".to_string(),
            leader: Some(crate::segments::SegmentLeader {
                name: leader.to_string(),
                url: format!("http://{leader}:7100"),
                cpu: 4,
                incarnation,
            }),
            members: members.iter().map(|m| m.to_string()).collect(),
            reported_ms,
        });
    }

    fn settings() -> TreeSettings {
        TreeSettings {
            fetch_timeout: Duration::from_secs(10),
            leader_grace: Duration::from_secs(30),
            ..TreeSettings::default()
        }
    }

    fn run(segments: &Segments) -> Run {
        directory(segments, "a", "a0", &["a0", "a1"]);
        directory(segments, "b", "b0", &["b0", "b1"]);
        Run::new(
            "j.prepare.1",
            "j",
            Phase::Prepare,
            Payload::memory(&b"assignment"[..]),
            vec![group("a", "a0", &["a0", "a1"]), group("b", "b0", &["b0", "b1"])],
            &settings(),
        )
    }

    #[test]
    fn a_leader_that_times_out_is_replaced_by_its_segments_new_leader_and_holders_keep_asking() {
        let segments = Segments::default();
        let mut run = run(&segments);
        let now = Instant::now();
        assert_eq!(run.core.start(now).len(), 1);
        run.core.holding("a0").expect("notified");
        assert_eq!(
            run.core.next_for("a0", now).expect("holder").0,
            Next::Serve("b0".into())
        );
        // b0 never reports: given up on after the fetch timeout; its segment has no other leader yet.
        let later = now + Duration::from_secs(11);
        assert!(run.step(later, &segments, &settings()).is_empty());
        assert!(matches!(run.groups["b"].state, GroupState::Waiting(_)));
        assert!(
            matches!(run.core.next_for("a0", later).expect("holder").0, Next::AskAgain(_)),
            "a0 keeps asking while segment b elects"
        );
        // Segment b elects b1: it joins the running tree and a0 serves it.
        directory(&segments, "b", "b1", &["b0", "b1"]);
        assert!(run.step(later, &segments, &settings()).is_empty());
        assert_eq!(run.groups["b"].state, GroupState::Tree);
        assert_eq!(run.groups["b"].leader.name, "b1");
        assert_eq!(
            run.core.next_for("a0", later).expect("holder").0,
            Next::Serve("b1".into())
        );
        let notification = run
            .notification("b1", &Source::Leader("a0".into()), &SigningKey::from_bytes(&[1; 32]))
            .expect("known");
        assert_eq!(notification.notification.target_url, "http://b1:7100");
        assert_eq!(notification.notification.members.len(), 2, "b1 serves all of segment b");
        assert!(notification.notification.source_allowed());
    }

    #[test]
    fn a_segment_without_a_new_leader_goes_by_the_star_after_the_grace() {
        let segments = Segments::default();
        let mut run = run(&segments);
        let now = Instant::now();
        run.core.start(now);
        run.core.holding("a0").expect("notified");
        run.core.next_for("a0", now).expect("holder");
        run.core.failed("b0", "unreachable").expect("known");
        assert!(
            run.step(now, &segments, &settings()).is_empty(),
            "waiting for a new leader"
        );
        let direct = run.step(now + Duration::from_secs(31), &segments, &settings());
        assert_eq!(direct, ["b"]);
        assert_eq!(run.groups["b"].state, GroupState::Direct);
        assert_eq!(
            run.core.next_for("a0", now).expect("holder").0,
            Next::Done,
            "a0 may deliver now"
        );
    }

    #[test]
    fn a_leader_that_reports_its_own_failure_is_notified_again_a_bounded_number_of_times() {
        let segments = Segments::default();
        let mut run = run(&segments);
        let now = Instant::now();
        run.core.start(now);
        run.core.holding("a0").expect("notified");
        for attempt in 1..=3 {
            assert_eq!(
                run.core.next_for("a0", now).expect("holder").0,
                Next::Serve("b0".into())
            );
            run.core.failed("b0", "copy did not verify").expect("known");
            run.reported_failure.insert("b0".into());
            run.step(now, &segments, &settings());
            if attempt <= settings().retries {
                assert_eq!(run.groups["b"].state, GroupState::Tree, "attempt {attempt} is retried");
            }
        }
        assert!(
            matches!(run.groups["b"].state, GroupState::Waiting(_)),
            "after {} retries b0 is waited out",
            settings().retries
        );
    }

    #[test]
    fn a_leader_replaced_while_it_delivers_is_given_up_on() {
        let segments = Segments::default();
        let mut run = run(&segments);
        let now = Instant::now();
        run.core.start(now);
        run.core.holding("a0").expect("notified");
        directory(&segments, "a", "a1", &["a0", "a1"]);
        run.step(now, &segments, &settings());
        assert!(matches!(run.core.states()["a0"], LeaderState::Failed(_)));
        assert_eq!(run.groups["a"].leader.name, "a1", "added at once");
        assert!(!run.finished());
    }

    /// Segment a's record as a report from its leader a0 (process `incarnation`) at `reported_ms` makes it.
    fn report_a0(segments: &Segments, incarnation: u64, reported_ms: u64) {
        report(segments, "a", "a0", &["a0", "a1"], incarnation, reported_ms);
    }

    /// The run of [`run`] once a0 holds the copy and the run has looked at the directory once.
    fn a0_holding(segments: &Segments) -> (Run, Instant) {
        let mut run = run(segments);
        let now = Instant::now();
        run.core.start(now);
        run.core.holding("a0").expect("notified");
        run.step(now, segments, &settings());
        assert_eq!(
            run.groups["a"].state,
            GroupState::Tree,
            "the same incarnation: nothing changes"
        );
        (run, now)
    }

    /// A GL killed while it holds the copy and restarted within seconds is re-elected under its name;
    /// the new process knows nothing of the transfer. Its new incarnation in the segment directory makes
    /// the run give the old one up and notify it again (found by a trial: the job hung until the delivery
    /// timeout, and could not be cancelled).
    #[test]
    fn a_leader_restarted_under_its_name_is_notified_again() {
        let segments = Segments::default();
        let (mut run, now) = a0_holding(&segments);
        report_a0(&segments, 2, crate::ccm::now_ms());
        run.step(now, &segments, &settings());
        assert_eq!(run.groups["a"].state, GroupState::Tree, "back in the tree at once");
        assert_eq!(run.groups["a"].incarnation, Some(2));
        assert_eq!(run.given_up.get("a0"), Some(&1));
        assert!(
            !matches!(run.core.states()["a0"], LeaderState::Holding),
            "the restarted a0 is to obtain the assignment again: {:?}",
            run.core.states()["a0"]
        );
    }

    /// A GL that holds the copy and then stops reporting for its segment (killed, and no other node can
    /// lead) is given up on after [`SUPERSEDE_AFTER`], and after the grace the mover delivers to its
    /// segment itself (found by a trial: the job waited for it until the delivery timeout, silently, and
    /// could not be cancelled).
    #[test]
    fn a_leader_that_stops_reporting_is_given_up_on_and_its_segment_served_directly() {
        let segments = Segments::default();
        let (mut run, now) = a0_holding(&segments);
        let grace = settings().leader_grace;
        // Reporting: nothing to say. Quiet for a while: the running job says so, before it is given up on.
        let now_ms = crate::ccm::now_ms();
        assert_eq!(run.waiting(now_ms, &segments, grace), None);
        let reported_ms = now_ms - QUIET_LEADER.as_millis() as u64 - 1_000;
        report_a0(&segments, 1, reported_ms);
        assert!(run.step(now, &segments, &settings()).is_empty());
        assert!(matches!(run.groups["a"].state, GroupState::Tree), "not given up on yet");
        let quiet = run.waiting(now_ms, &segments, grace).expect("a note");
        assert_eq!(
            quiet,
            format!(
                "group leader a0 of segment a has not reported since {} (given up on at {})",
                clock_time(reported_ms),
                clock_time(reported_ms + SUPERSEDE_AFTER.as_millis() as u64)
            )
        );
        assert_eq!(
            run.waiting(now_ms + 1_000, &segments, grace).as_deref(),
            Some(quiet.as_str()),
            "the same words a second later: nothing new to say"
        );
        report_a0(
            &segments,
            1,
            crate::ccm::now_ms() - SUPERSEDE_AFTER.as_millis() as u64 - 1,
        );
        assert!(
            run.step(now, &segments, &settings()).is_empty(),
            "waiting for a new leader first"
        );
        assert!(matches!(run.core.states()["a0"], LeaderState::Failed(_)));
        assert!(matches!(run.groups["a"].state, GroupState::Waiting(_)));
        let given_up_ms = run.groups["a"].given_up_ms;
        assert!(given_up_ms >= now_ms, "{given_up_ms}");
        let waiting = format!(
            "segment a waits for a new group leader until {}, then the mover sends to it itself",
            clock_time(given_up_ms + grace.as_millis() as u64)
        );
        assert_eq!(run.waiting(crate::ccm::now_ms(), &segments, grace), Some(waiting));
        let direct = run.step(now + Duration::from_secs(31), &segments, &settings());
        assert_eq!(direct, ["a"], "the mover serves segment a itself");
        assert_eq!(
            run.waiting(now_ms, &segments, grace),
            None,
            "served: nothing waited for"
        );
        assert_eq!(clock_time(86_400_000 + 3_723_000), "01:02:03 UTC");
    }

    #[test]
    fn transfer_ids_are_plain() {
        assert_eq!(sanitize("publish-1700000000000-3"), "publish-1700000000000-3");
        assert_eq!(sanitize("a/../b"), "a____b");
        assert_eq!(sanitize(""), "job");
        assert!(tree::valid_id(&format!("{}.prepare.12", sanitize(&"x".repeat(300)))));
    }
}
