//! Delivery of assignments to nodes (seed 004: the transport service, and the CCM's two-phase commit):
//! the [`Delivery`] seam, and the one path every job that reaches nodes goes through, [`carry`].
//!
//! A [`Shipment`] is delivered in two phases. Phase one *prepares*: the content assignment goes to every
//! target node, which applies it into a temporary tree. Then the mover decides: it must be ready itself (a
//! publish has built its next shadow copy) and a [`Quorum`] of the targets must have prepared — otherwise
//! nothing is switched anywhere. Phase two *commits*: the commit assignment goes to the nodes that
//! prepared, and each switches its live tree at once. Finally the version each committed node now holds is
//! recorded. A rollback or a remove has no phase one: its single assignment switches by itself.
//!
//! [`Delivery`] is only the transport — how one assignment reaches a set of nodes. The star over HTTP
//! ([`crate::star::StarDelivery`], the mover sends every node its own copy) is one; the store-and-forward
//! tree over group leaders (seed 004, Figs. 6 and 7, [`crate::tree_delivery::TreeDelivery`]) is another. Everything else — the quorum, the
//! per-node states of the job, the versions — is here, written once.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tern_wire::assignment::{AssignmentKind, Builder, Command};
use tern_wire::mover::NodeState;
use tracing::warn;

use crate::ccm::{Mover, now_ms};
use crate::fault::{Fault, reached};
use crate::metrics::MoverMetrics;
use crate::payload::Payload;
use crate::store::Decision;
use crate::store_thread::StoreThread;

/// A node an assignment is sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Its name.
    pub name: String,
    /// Where it takes assignments (`http://HOST:PORT` or `https://...`), as it registered.
    pub url: String,
}

/// How one node took one assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOutcome {
    /// The node's name.
    pub node: String,
    /// Bytes sent to it for this assignment.
    pub bytes: u64,
    /// `Ok` when it applied the assignment; else why not, in lowercase words.
    pub result: Result<(), String>,
    /// Who passed the assignment on to it through the store-and-forward tree (seed 004): its group leader,
    /// the leader a leader fetched from, or `mover` for a leader that fetched from the mover (the tree's
    /// bytes count that copy). `bytes` is then what the mover sent it otherwise, usually nothing.
    pub via: Option<String>,
}

/// A boxed future of the outcomes of one phase.
pub type PhaseFuture<'a> = Pin<Box<dyn Future<Output = Vec<NodeOutcome>> + Send + 'a>>;

/// What a transport tells during phase one, before the phase ends ([`Delivery::prepare`] with `early`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Early {
    /// A node's outcome, as soon as it is known.
    Outcome(NodeOutcome),
    /// What the delivery is waiting for, in words for the operator (a group leader that stopped reporting,
    /// a segment waiting for a new one), or `None` once it no longer waits for anything in particular: the
    /// running job's note, shown by `tern publish` and `tern jobs`.
    Waiting(Option<String>),
}

/// Where a transport sends what it tells early ([`Early`]).
pub type EarlyReports = tokio::sync::mpsc::UnboundedSender<Early>;

/// How long [`carry`] still waits for the other nodes once a quorum smaller than the targets has
/// prepared, at least: then it commits on the nodes that prepared (a hung node would otherwise hold the
/// publish for the whole delivery timeout). It waits as long again as the quorum took, when that is more.
pub const QUORUM_GRACE: Duration = Duration::from_secs(5);

/// The transport of assignments: how one assignment reaches a set of nodes (seed 004's transport service).
/// Implementations answer with one [`NodeOutcome`] per recipient, in the order given; a recipient left out
/// of the answer counts as failed. Neither phase decides anything: the quorum and the records are
/// [`carry`]'s.
pub trait Delivery: Send + Sync {
    /// Phase one: sends the content assignment of `job` to every one of `nodes`; each applies it into a
    /// temporary tree. With `early`, each node's outcome is also told there as soon as it is known (a
    /// tree's members when their leader's status report comes): the job shows it at once, and [`carry`]
    /// may commit on a quorum without waiting for a hung node.
    fn prepare<'a>(
        &'a self,
        job: &'a str,
        content: Payload,
        nodes: &'a [Recipient],
        early: Option<EarlyReports>,
    ) -> PhaseFuture<'a>;

    /// Phase two: sends the assignment that switches (a commit; or a rollback or remove, which switch by
    /// themselves) to every one of `nodes`.
    fn commit<'a>(&'a self, job: &'a str, commit: Payload, nodes: &'a [Recipient]) -> PhaseFuture<'a>;
}

/// How many of a delivery's target nodes must have prepared before any of them is sent the commit (seed
/// 004: the CCM's quorum policy, `tern mover --quorum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// Every target: one that did not prepare holds back the commit for all (a publish by default).
    All,
    /// At least this many (capped at the number of targets).
    AtLeast(usize),
    /// Each node on its own: every node that prepared is committed, however many did not (a catch-up,
    /// which brings nodes to a version the others already hold).
    EachNode,
}

impl Quorum {
    /// The quorum of the mover's policy: `None` is every node.
    pub fn from_policy(policy: Option<usize>) -> Quorum {
        match policy {
            Some(count) => Quorum::AtLeast(count),
            None => Quorum::All,
        }
    }

    /// How many of `targets` nodes must prepare.
    pub fn needed(self, targets: usize) -> usize {
        match self {
            Quorum::All => targets,
            Quorum::AtLeast(count) => count.min(targets),
            Quorum::EachNode => 0,
        }
    }

    /// Whether `prepared` of `targets` nodes is enough to commit.
    pub fn met(self, prepared: usize, targets: usize) -> bool {
        prepared >= self.needed(targets)
    }
}

/// What [`carry`] delivers.
#[derive(Debug, Clone)]
pub struct Shipment {
    /// The job it is for (its per-node states are recorded).
    pub job: String,
    /// The hosted site.
    pub site: String,
    /// Phase one's content assignment; `None` when the commit assignment switches by itself (rollback,
    /// remove).
    pub content: Option<Payload>,
    /// Phase two's assignment: a commit, a rollback or a remove.
    pub commit: Payload,
    /// The version of the site a node holds once it committed, recorded for each; `None` when the
    /// assignment removes the site (nothing to record).
    pub version: Option<u64>,
    /// What the commit changes for readers, handed to the site's caches once it is committed
    /// ([`crate::freshness`]); `None` when readers see nothing new (a catch-up brings nodes to the
    /// version the others serve).
    pub changed: Option<crate::freshness::Changed>,
    /// The job's decision to commit, recorded durably once the quorum is met and before the first commit
    /// message leaves (write-ahead: a mover that stops after it finishes the job's record at its next
    /// start, [`crate::recovery`]); `None` for a delivery that leaves the mover's record as it is (a
    /// catch-up).
    pub decision: Option<Decision>,
}

/// Why a shipment was not committed anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotCommitted {
    /// The mover was not ready to commit (why).
    NotReady(String),
    /// Too few nodes prepared.
    NoQuorum {
        /// Nodes that prepared.
        prepared: usize,
        /// Nodes needed.
        needed: usize,
        /// Target nodes.
        targets: usize,
    },
}

impl std::fmt::Display for NotCommitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotCommitted::NotReady(reason) => write!(f, "{reason}; nothing was switched"),
            NotCommitted::NoQuorum {
                prepared,
                needed,
                targets,
            } => write!(
                f,
                "{prepared} of {targets} nodes prepared, {needed} needed; nothing was switched: start the nodes \
                 that did not prepare, forget a retired one (`tern nodes --remove NAME`), or lower the quorum \
                 (`tern mover --quorum N`)"
            ),
        }
    }
}

/// What became of a shipment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// The commit was sent to the nodes that prepared; those in `committed` switched, and their version is
    /// recorded.
    Committed {
        /// Nodes that switched, in the order of the targets.
        committed: Vec<String>,
    },
    /// Nothing was switched anywhere.
    Held {
        /// Nodes that prepared (they hold the content in a temporary tree, which the next assignment
        /// replaces).
        prepared: Vec<String>,
        /// Why.
        reason: NotCommitted,
    },
}

/// Carries `shipment` to `nodes` — prepare, decide, commit, record — through `transport`: the one path of
/// every job that reaches nodes. `ready` is awaited after phase one (it may run alongside it: a publish
/// builds its next shadow copy meanwhile); an error holds the commit back, as too few prepared nodes do.
/// Each node's state in the job is recorded as its outcome arrives; nodes that are not registered get
/// nothing and stay `pending`.
pub async fn carry<R>(
    transport: &dyn Delivery,
    store: &StoreThread,
    metrics: &MoverMetrics,
    shipment: &Shipment,
    nodes: &[String],
    quorum: Quorum,
    ready: R,
) -> Delivered
where
    R: Future<Output = Result<(), String>>,
{
    let recipients = recipients(store, nodes).await;
    let job = shipment.job.as_str();
    let prepared = match &shipment.content {
        Some(content) => {
            let applied = prepare_phase(
                transport,
                store,
                metrics,
                job,
                content,
                &recipients,
                quorum,
                nodes.len(),
            )
            .await;
            recipients
                .into_iter()
                .filter(|recipient| applied.contains(&recipient.name))
                .collect()
        }
        None => recipients,
    };
    let prepared_names = || prepared.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    if let Err(reason) = ready.await {
        return Delivered::Held {
            prepared: prepared_names(),
            reason: NotCommitted::NotReady(reason),
        };
    }
    if !quorum.met(prepared.len(), nodes.len()) {
        return Delivered::Held {
            prepared: prepared_names(),
            reason: NotCommitted::NoQuorum {
                prepared: prepared.len(),
                needed: quorum.needed(nodes.len()),
                targets: nodes.len(),
            },
        };
    }
    if let Some(decision) = &shipment.decision {
        let decision = decision.clone();
        if let Err(error) = store.call(move |store| store.decide(&decision, now_ms())).await {
            return Delivered::Held {
                prepared: prepared_names(),
                reason: NotCommitted::NotReady(format!(
                    "the decision to commit could not be recorded ({error}); check the mover's data disk"
                )),
            };
        }
        reached(Fault::AfterCommitDecision);
    }
    let outcomes = transport.commit(job, shipment.commit.clone(), &prepared).await;
    if shipment.decision.is_some() {
        reached(Fault::AfterCommit);
    }
    let switched = record(store, metrics, job, &prepared, outcomes, NodeState::Committed).await;
    let committed: Vec<String> = prepared
        .into_iter()
        .map(|r| r.name)
        .filter(|name| switched.contains(name))
        .collect();
    if let Some(version) = shipment.version {
        let (site, nodes) = (shipment.site.clone(), committed.clone());
        let recorded = store
            .call(move |store| {
                for node in &nodes {
                    store.set_node_version(node, &site, version)?;
                }
                Ok(())
            })
            .await;
        if let Err(error) = recorded {
            warn!(%job, site = %shipment.site, version, %error, "versions of committed nodes not recorded");
        }
    }
    Delivered::Committed { committed }
}

/// Phase one: sends `content` to `recipients`, recording each node's outcome as it arrives; returns the
/// nodes that prepared. Once a quorum smaller than the targets has prepared, the others get
/// [`QUORUM_GRACE`] (or as long again as the quorum took) and are then recorded as failed: a hung node
/// does not hold the commit for the whole delivery timeout.
#[allow(clippy::too_many_arguments)]
async fn prepare_phase(
    transport: &dyn Delivery,
    store: &StoreThread,
    metrics: &MoverMetrics,
    job: &str,
    content: &Payload,
    recipients: &[Recipient],
    quorum: Quorum,
    targets: usize,
) -> BTreeSet<String> {
    let (early, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let phase = transport.prepare(job, content.clone(), recipients, Some(early));
    tokio::pin!(phase);
    let needed = quorum.needed(targets);
    let may_leave_early = quorum != Quorum::All && needed < recipients.len();
    let started = tokio::time::Instant::now();
    let mut recorded: BTreeSet<String> = BTreeSet::new();
    let mut applied: BTreeSet<String> = BTreeSet::new();
    let mut grace_until: Option<tokio::time::Instant> = None;
    // Whether the transport noted what it waits for: cleared when the phase ends, however it ends (on a
    // quorum's grace the transport is dropped before it says it no longer waits).
    let mut noted = false;
    let last = loop {
        let grace = async {
            match grace_until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            outcomes = &mut phase => break Some(outcomes),
            Some(early) = arrivals.recv() => {
                let outcome = match early {
                    Early::Outcome(outcome) => outcome,
                    Early::Waiting(note) => {
                        noted |= note.is_some();
                        note_running(store, job, note).await;
                        continue;
                    }
                };
                let Some(recipient) = recipients.iter().find(|r| r.name == outcome.node) else { continue };
                if !recorded.insert(outcome.node.clone()) {
                    continue;
                }
                applied.extend(record(store, metrics, job, std::slice::from_ref(recipient), vec![outcome], NodeState::Prepared).await);
                if may_leave_early && grace_until.is_none() && applied.len() >= needed {
                    let grace = QUORUM_GRACE.max(started.elapsed());
                    grace_until = Some(tokio::time::Instant::now() + grace);
                }
            }
            () = grace => break None,
        }
    };
    if noted {
        note_running(store, job, None).await;
    }
    let outcomes: Vec<NodeOutcome> = match last {
        Some(outcomes) => outcomes.into_iter().filter(|o| !recorded.contains(&o.node)).collect(),
        None => {
            let waited = started.elapsed().as_secs();
            recipients
                .iter()
                .filter(|r| !recorded.contains(&r.name))
                .map(|r| NodeOutcome {
                    node: r.name.clone(),
                    bytes: 0,
                    result: Err(format!(
                        "not prepared {waited} s into the delivery, when the quorum ({needed} of {targets}) had been for a while: committed without it (it is caught up when it registers again)"
                    )),
                    via: None,
                })
                .collect()
        }
    };
    let rest: Vec<Recipient> = recipients
        .iter()
        .filter(|r| !recorded.contains(&r.name))
        .cloned()
        .collect();
    applied.extend(record(store, metrics, job, &rest, outcomes, NodeState::Prepared).await);
    applied
}

/// Records what a running `job` waits for ([`Early::Waiting`]), or that it no longer waits.
async fn note_running(store: &StoreThread, job: &str, note: Option<String>) {
    let job = job.to_string();
    if let Err(error) = store
        .call(move |store| store.note_running(&job, note.as_deref(), now_ms()))
        .await
    {
        warn!(%error, "a running job's note not recorded");
    }
}

/// The registered nodes among `nodes`, in that order, with their addresses.
async fn recipients(store: &StoreThread, nodes: &[String]) -> Vec<Recipient> {
    let urls: HashMap<String, String> = match store.call(|store| store.nodes()).await {
        Ok(all) => all.into_iter().map(|node| (node.name, node.url)).collect(),
        Err(error) => {
            warn!(%error, "cannot read the registered nodes; nothing is delivered");
            HashMap::new()
        }
    };
    nodes
        .iter()
        .filter_map(|name| {
            urls.get(name).map(|url| Recipient {
                name: name.clone(),
                url: url.clone(),
            })
        })
        .collect()
}

/// Records one phase's outcomes (a recipient without one failed) as each node's state in the job; returns
/// the nodes that applied the assignment.
async fn record(
    store: &StoreThread,
    metrics: &MoverMetrics,
    job: &str,
    recipients: &[Recipient],
    mut outcomes: Vec<NodeOutcome>,
    success: NodeState,
) -> BTreeSet<String> {
    let answered: BTreeSet<String> = outcomes.iter().map(|o| o.node.clone()).collect();
    for recipient in recipients.iter().filter(|r| !answered.contains(&r.name)) {
        outcomes.push(NodeOutcome {
            node: recipient.name.clone(),
            bytes: 0,
            result: Err("the transport gave no outcome for this node".into()),
            via: None,
        });
    }
    let mut applied = BTreeSet::new();
    for outcome in &outcomes {
        metrics.delivery(outcome.result.is_ok(), outcome.bytes);
        match &outcome.result {
            Ok(()) => {
                applied.insert(outcome.node.clone());
            }
            Err(error) => warn!(%job, node = %outcome.node, %error, "delivery failed"),
        }
    }
    let job = job.to_string();
    let written = store
        .call(move |store| {
            for outcome in &outcomes {
                let (state, error) = match &outcome.result {
                    Ok(()) => (success, None),
                    Err(error) => (NodeState::Failed, Some(error.as_str())),
                };
                store.set_job_node(&job, &outcome.node, state, outcome.bytes, error, outcome.via.as_deref())?;
            }
            Ok(())
        })
        .await;
    if let Err(error) = written {
        warn!(%error, "node states of a delivery not recorded");
    }
    applied
}

impl Mover {
    /// A shipment of `job` for `site`: `content` to prepare (if any), then the commit of `version`.
    pub(crate) fn shipment(
        &self,
        job: &str,
        site: &str,
        version: u64,
        content: Option<Payload>,
    ) -> Result<Shipment, String> {
        let mut builder = Builder::new(job, AssignmentKind::Publish, site, version, None, now_ms());
        builder.command(Command::Commit);
        let commit = builder
            .finish(&self.signing, self.config.policy.encryption.as_ref())
            .map_err(|e| e.to_string())?;
        Ok(Shipment {
            job: job.to_string(),
            site: site.to_string(),
            content,
            commit: Payload::memory(commit),
            version: Some(version),
            changed: None,
            decision: None,
        })
    }

    /// [`carry`] with the mover's transport, database and metrics; once any node committed, what the
    /// shipment changed goes to the site's caches ([`Mover::freshen`], which does not wait for them).
    pub(crate) async fn ship<R>(&self, shipment: &Shipment, nodes: &[String], quorum: Quorum, ready: R) -> Delivered
    where
        R: Future<Output = Result<(), String>>,
    {
        let delivered = carry(
            self.delivery.as_ref(),
            &self.store,
            &self.metrics,
            shipment,
            nodes,
            quorum,
            ready,
        )
        .await;
        if let (Delivered::Committed { committed }, Some(changed)) = (&delivered, &shipment.changed)
            && !committed.is_empty()
        {
            self.freshen(&shipment.job, &shipment.site, changed).await;
        }
        delivered
    }
}

/// A `ready` for [`carry`] that never holds the commit back.
pub fn always_ready() -> std::future::Ready<Result<(), String>> {
    std::future::ready(Ok(()))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tern_wire::mover::{JobKind, JobSpec};

    use super::*;
    use crate::store::{Node, Store};

    /// A transport that records what it was asked to send and fails the nodes it is told to.
    #[derive(Default)]
    struct Recorder {
        sent: Mutex<Vec<(&'static str, String)>>,
        fail_prepare: BTreeSet<String>,
        fail_commit: BTreeSet<String>,
    }

    impl Recorder {
        fn phase(
            &self,
            phase: &'static str,
            fail: &BTreeSet<String>,
            body: &Payload,
            nodes: &[Recipient],
        ) -> Vec<NodeOutcome> {
            let mut sent = self.sent.lock().expect("sent");
            nodes
                .iter()
                .map(|node| {
                    sent.push((phase, node.name.clone()));
                    NodeOutcome {
                        node: node.name.clone(),
                        bytes: body.len(),
                        result: if fail.contains(&node.name) {
                            Err("node refused".into())
                        } else {
                            Ok(())
                        },
                        via: None,
                    }
                })
                .collect()
        }

        fn sent(&self, phase: &str) -> Vec<String> {
            let sent = self.sent.lock().expect("sent");
            sent.iter()
                .filter(|(p, _)| *p == phase)
                .map(|(_, n)| n.clone())
                .collect()
        }
    }

    impl Delivery for Recorder {
        fn prepare<'a>(
            &'a self,
            _job: &'a str,
            content: Payload,
            nodes: &'a [Recipient],
            _early: Option<EarlyReports>,
        ) -> PhaseFuture<'a> {
            Box::pin(async move { self.phase("prepare", &self.fail_prepare, &content, nodes) })
        }

        fn commit<'a>(&'a self, _job: &'a str, commit: Payload, nodes: &'a [Recipient]) -> PhaseFuture<'a> {
            Box::pin(async move { self.phase("commit", &self.fail_commit, &commit, nodes) })
        }
    }

    struct Bench {
        _area: tempfile::TempDir,
        store: StoreThread,
        metrics: MoverMetrics,
        nodes: Vec<String>,
    }

    /// A database with nodes n0..n{count} registered at version 1 of `www`, and job `j` running on them.
    async fn bench(count: usize) -> Bench {
        let area = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&area.path().join("mover.db")).expect("open");
        let nodes: Vec<String> = (0..count).map(|n| format!("n{n}")).collect();
        for name in &nodes {
            let node = Node {
                name: name.clone(),
                url: format!("http://{name}.invalid"),
                last_seen_ms: 0,
                free_disk: 0,
                cpus: 1,
                groups: Vec::new(),
                instance: String::new(),
            };
            store.register(&node, &[("www".into(), 1)]).expect("register");
        }
        let mut spec = JobSpec::new(JobKind::Publish, "www");
        spec.staging = Some("/staging".into());
        store.create_job("j", &spec, 0, 0).expect("job");
        store
            .start_job("j", &nodes.iter().cloned().collect(), 0)
            .expect("start");
        Bench {
            _area: area,
            store: StoreThread::spawn(store).expect("thread"),
            metrics: MoverMetrics::new(),
            nodes,
        }
    }

    fn shipment(content: bool, version: Option<u64>) -> Shipment {
        Shipment {
            job: "j".into(),
            site: "www".into(),
            content: content.then(|| Payload::memory(&b"content"[..])),
            commit: Payload::memory(&b"commit"[..]),
            version,
            changed: None,
            decision: None,
        }
    }

    impl Bench {
        async fn states(&self) -> Vec<(String, NodeState, u64)> {
            let job = self.store.call(|s| s.job("j")).await.expect("read").expect("job");
            job.nodes.into_iter().map(|n| (n.node, n.state, n.bytes)).collect()
        }

        async fn versions(&self) -> Vec<u64> {
            let nodes = self.nodes.clone();
            self.store
                .call(move |s| nodes.iter().map(|n| s.node_version(n, "www")).collect())
                .await
                .expect("versions")
        }

        async fn carry(
            &self,
            transport: &dyn Delivery,
            shipment: &Shipment,
            quorum: Quorum,
            ready: Result<(), String>,
        ) -> Delivered {
            carry(
                transport,
                &self.store,
                &self.metrics,
                shipment,
                &self.nodes,
                quorum,
                std::future::ready(ready),
            )
            .await
        }
    }

    #[test]
    fn the_quorum_is_every_node_at_least_n_or_each_node() {
        assert_eq!(Quorum::from_policy(None), Quorum::All);
        assert!(Quorum::All.met(3, 3));
        assert!(!Quorum::All.met(2, 3));
        assert!(Quorum::AtLeast(2).met(2, 3));
        assert!(!Quorum::AtLeast(2).met(1, 3));
        assert_eq!(Quorum::AtLeast(5).needed(3), 3, "never more than the targets");
        assert!(Quorum::AtLeast(0).met(0, 3));
        assert!(Quorum::EachNode.met(0, 3));
        assert!(Quorum::All.met(0, 0), "no targets, nothing to wait for");
    }

    #[tokio::test]
    async fn without_a_quorum_nothing_is_committed_and_no_version_is_recorded() {
        let bench = bench(3).await;
        let transport = Recorder {
            fail_prepare: ["n2".to_string()].into(),
            ..Recorder::default()
        };
        let delivered = bench
            .carry(&transport, &shipment(true, Some(2)), Quorum::All, Ok(()))
            .await;
        let Delivered::Held { prepared, reason } = delivered else {
            panic!("committed without a quorum: {delivered:?}");
        };
        assert_eq!(prepared, ["n0", "n1"]);
        assert_eq!(
            reason.to_string(),
            "2 of 3 nodes prepared, 3 needed; nothing was switched: start the nodes that did not prepare, \
             forget a retired one (`tern nodes --remove NAME`), or lower the quorum (`tern mover --quorum N`)"
        );
        assert!(transport.sent("commit").is_empty(), "no commit was sent");
        assert_eq!(bench.versions().await, [1, 1, 1], "no version recorded");
        assert_eq!(
            bench.states().await,
            [
                ("n0".into(), NodeState::Prepared, 7),
                ("n1".into(), NodeState::Prepared, 7),
                ("n2".into(), NodeState::Failed, 7),
            ]
        );
    }

    #[tokio::test]
    async fn with_a_quorum_the_prepared_nodes_commit_and_their_versions_are_recorded() {
        let bench = bench(3).await;
        let transport = Recorder {
            fail_prepare: ["n2".to_string()].into(),
            fail_commit: ["n1".to_string()].into(),
            ..Recorder::default()
        };
        let delivered = bench
            .carry(&transport, &shipment(true, Some(2)), Quorum::AtLeast(2), Ok(()))
            .await;
        assert_eq!(
            delivered,
            Delivered::Committed {
                committed: vec!["n0".into()]
            }
        );
        assert_eq!(
            transport.sent("commit"),
            ["n0", "n1"],
            "the commit goes to the prepared only"
        );
        assert_eq!(
            bench.versions().await,
            [2, 1, 1],
            "only the node that switched holds version 2"
        );
        let states: Vec<NodeState> = bench.states().await.into_iter().map(|(_, s, _)| s).collect();
        assert_eq!(states, [NodeState::Committed, NodeState::Failed, NodeState::Failed]);
        assert_eq!(bench.states().await[0].2, 13, "bytes of both phases");
    }

    /// A transport whose `hung` node never answers phase one; the others answer at once, each reported
    /// as it comes.
    struct Hung {
        hung: String,
        inner: Recorder,
    }

    impl Delivery for Hung {
        fn prepare<'a>(
            &'a self,
            _job: &'a str,
            content: Payload,
            nodes: &'a [Recipient],
            early: Option<EarlyReports>,
        ) -> PhaseFuture<'a> {
            Box::pin(async move {
                // It says what it waits for, and is dropped on the quorum's grace before it could take it back.
                if let Some(early) = &early {
                    let _ = early.send(Early::Waiting(Some(format!("waiting for {}", self.hung))));
                }
                let answered: Vec<Recipient> = nodes.iter().filter(|n| n.name != self.hung).cloned().collect();
                for outcome in self
                    .inner
                    .phase("prepare", &self.inner.fail_prepare, &content, &answered)
                {
                    if let Some(early) = &early {
                        let _ = early.send(Early::Outcome(outcome));
                    }
                }
                std::future::pending().await
            })
        }

        fn commit<'a>(&'a self, job: &'a str, commit: Payload, nodes: &'a [Recipient]) -> PhaseFuture<'a> {
            self.inner.commit(job, commit, nodes)
        }
    }

    #[tokio::test]
    async fn a_hung_node_does_not_hold_the_commit_once_a_smaller_quorum_prepared() {
        let bench = bench(3).await;
        let transport = Hung {
            hung: "n2".into(),
            inner: Recorder::default(),
        };
        let started = tokio::time::Instant::now();
        let shipment = shipment(true, Some(2));
        let carried = bench.carry(&transport, &shipment, Quorum::AtLeast(2), Ok(()));
        let delivered = tokio::time::timeout(QUORUM_GRACE * 4, carried)
            .await
            .expect("committed without waiting for the hung node");
        let job = bench.store.call(|s| s.job("j")).await.expect("read").expect("job");
        assert_eq!(
            (job.state, job.error),
            (tern_wire::mover::JobState::Running, None),
            "the note of a phase that ended is not left behind"
        );
        let history = bench.store.call(|s| s.history(50)).await.expect("history");
        assert!(
            history.iter().any(|entry| entry.message == "waiting: waiting for n2"),
            "{history:?}"
        );
        assert_eq!(
            delivered,
            Delivered::Committed {
                committed: vec!["n0".into(), "n1".into()]
            }
        );
        assert!(
            started.elapsed() <= QUORUM_GRACE + Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let states: Vec<NodeState> = bench.states().await.into_iter().map(|(_, s, _)| s).collect();
        assert_eq!(states, [NodeState::Committed, NodeState::Committed, NodeState::Failed]);
        assert_eq!(transport.inner.sent("commit"), ["n0", "n1"]);
    }

    #[tokio::test]
    async fn with_every_node_needed_a_hung_node_is_waited_for() {
        let bench = bench(2).await;
        let transport = Hung {
            hung: "n1".into(),
            inner: Recorder::default(),
        };
        let shipment = shipment(true, Some(2));
        let carried = bench.carry(&transport, &shipment, Quorum::All, Ok(()));
        let waited = tokio::time::timeout(Duration::from_secs(1), carried).await;
        assert!(
            waited.is_err(),
            "quorum all: the commit waits for the last node (until the transport's timeout)"
        );
    }

    #[tokio::test]
    async fn a_mover_not_ready_holds_the_commit_back_even_with_a_quorum() {
        let bench = bench(2).await;
        let transport = Recorder::default();
        let delivered = bench
            .carry(
                &transport,
                &shipment(true, Some(2)),
                Quorum::All,
                Err("shadow copy: disk full".into()),
            )
            .await;
        assert_eq!(
            delivered,
            Delivered::Held {
                prepared: vec!["n0".into(), "n1".into()],
                reason: NotCommitted::NotReady("shadow copy: disk full".into()),
            }
        );
        assert!(transport.sent("commit").is_empty());
        assert_eq!(bench.versions().await, [1, 1]);
    }

    #[tokio::test]
    async fn an_assignment_that_switches_by_itself_goes_to_every_node_and_a_remove_records_no_version() {
        let bench = bench(2).await;
        let transport = Recorder::default();
        let rollback = bench
            .carry(&transport, &shipment(false, Some(7)), Quorum::All, Ok(()))
            .await;
        assert_eq!(
            rollback,
            Delivered::Committed {
                committed: vec!["n0".into(), "n1".into()]
            }
        );
        assert!(transport.sent("prepare").is_empty(), "no phase one");
        assert_eq!(bench.versions().await, [7, 7]);
        let remove = bench
            .carry(&transport, &shipment(false, None), Quorum::All, Ok(()))
            .await;
        assert!(matches!(remove, Delivered::Committed { .. }));
        assert_eq!(bench.versions().await, [7, 7], "a remove records nothing");
    }

    #[tokio::test]
    async fn an_unregistered_node_gets_nothing_and_a_missing_outcome_is_a_failure() {
        let bench = bench(2).await;
        struct Silent;
        impl Delivery for Silent {
            fn prepare<'a>(
                &'a self,
                _: &'a str,
                _: Payload,
                _: &'a [Recipient],
                _: Option<EarlyReports>,
            ) -> PhaseFuture<'a> {
                Box::pin(async { Vec::new() })
            }
            fn commit<'a>(&'a self, _: &'a str, _: Payload, _: &'a [Recipient]) -> PhaseFuture<'a> {
                Box::pin(async { Vec::new() })
            }
        }
        let mut targets = bench.nodes.clone();
        targets.push("ghost".into());
        let delivered = carry(
            &Silent,
            &bench.store,
            &bench.metrics,
            &shipment(true, Some(2)),
            &targets,
            Quorum::EachNode,
            always_ready(),
        )
        .await;
        assert_eq!(delivered, Delivered::Committed { committed: vec![] });
        let states: Vec<NodeState> = bench.states().await.into_iter().map(|(_, s, _)| s).collect();
        assert_eq!(states, [NodeState::Failed, NodeState::Failed]);
    }
}
