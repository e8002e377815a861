//! The mover's Prometheus metrics (served on its admin listener, `tern mover --admin ADDR`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label: a job kind and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    /// `publish`, `synchronise`, ...
    pub kind: String,
    /// `committed`, `failed`, `refused`, `retried`.
    pub outcome: String,
}

/// Label: a delivery outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok` or `failed`.
    pub outcome: String,
}

/// Label: why a message was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `bad-tag`, `stale`, `replayed`, `malformed`, `oversized`, `unknown-transfer`, ...
    pub reason: String,
}

/// Label: a network segment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SegmentLabel {
    /// Its name (`--segment`).
    pub segment: String,
}

/// Label: a load-balancer command and whether it was taken.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabel {
    /// `in` or `out`.
    pub rotation: String,
    /// `ok` or `failed`.
    pub outcome: String,
}

/// All metrics of the mover.
pub struct MoverMetrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Job runs ended, by kind and outcome.
    pub jobs: Family<JobLabel, Counter>,
    /// Assignments delivered to nodes, by outcome.
    pub deliveries: Family<OutcomeLabel, Counter>,
    /// Assignment bytes sent to nodes: each node's copy with the star, the tree's root copies (served to
    /// group leaders) with the tree.
    pub bytes_sent: Counter,
    /// Bytes the mover itself sent per delivered assignment (the star: one copy per node; the tree: about
    /// one copy in all).
    pub assignment_sent_bytes: Histogram,
    /// Tree messages (holding, next, status reports) refused, by reason.
    pub tree_refused: Family<ReasonLabel, Counter>,
    /// Registered nodes (read at scrape time).
    pub nodes: Gauge,
    /// Jobs not finished: scheduled, queued or running (read at scrape time).
    pub jobs_pending: Gauge,
    /// Jobs running now.
    pub jobs_running: Gauge,
    /// Load-balancer commands sent (a node put in or taken out of the rotation), by outcome.
    pub rotation: Family<RotationLabel, Counter>,
    /// Seconds since each segment's leader last reported (set by the scheduler's look, twice a second).
    pub segment_report_age: Family<SegmentLabel, Gauge>,
    /// 1 for a segment whose leader has not reported for 30 s (its members are served directly).
    pub segment_leader_silent: Family<SegmentLabel, Gauge>,
}

impl MoverMetrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tern_mover");
        let jobs = Family::<JobLabel, Counter>::default();
        registry.register("jobs", "Job runs ended, by kind and outcome", jobs.clone());
        let deliveries = Family::<OutcomeLabel, Counter>::default();
        registry.register("deliveries", "Assignments delivered to nodes", deliveries.clone());
        let bytes_sent = Counter::default();
        registry.register("sent_bytes", "Assignment bytes sent to nodes", bytes_sent.clone());
        let assignment_sent_bytes = Histogram::new(exponential_buckets(1024.0, 4.0, 14));
        registry.register(
            "assignment_sent_bytes",
            "Bytes the mover itself sent per delivered assignment (star: a copy per node; tree: about one)",
            assignment_sent_bytes.clone(),
        );
        let tree_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "tree_refused",
            "Tree messages and segment reports from group leaders, and node registrations, refused, by reason",
            tree_refused.clone(),
        );
        let nodes = Gauge::default();
        registry.register("nodes", "Registered nodes", nodes.clone());
        let jobs_pending = Gauge::default();
        registry.register(
            "jobs_pending",
            "Jobs scheduled, queued or running",
            jobs_pending.clone(),
        );
        let jobs_running = Gauge::default();
        registry.register("jobs_running", "Jobs running now", jobs_running.clone());
        let rotation = Family::<RotationLabel, Counter>::default();
        registry.register(
            "rotation_commands",
            "Load-balancer commands sent: a node put in or taken out of the rotation",
            rotation.clone(),
        );
        let segment_report_age = Family::<SegmentLabel, Gauge>::default();
        registry.register(
            "segment_report_age_seconds",
            "Seconds since each segment's group leader last reported",
            segment_report_age.clone(),
        );
        let segment_leader_silent = Family::<SegmentLabel, Gauge>::default();
        registry.register(
            "segment_leader_silent",
            "1 for a segment whose group leader has not reported for 30 s: the mover serves its members directly",
            segment_leader_silent.clone(),
        );
        MoverMetrics {
            registry,
            jobs,
            deliveries,
            bytes_sent,
            assignment_sent_bytes,
            tree_refused,
            nodes,
            jobs_pending,
            jobs_running,
            rotation,
            segment_report_age,
            segment_leader_silent,
        }
    }

    /// Counts a load-balancer command.
    pub fn rotation(&self, rotation: crate::rotation::Rotation, ok: bool) {
        let rotation = match rotation {
            crate::rotation::Rotation::In => "in",
            crate::rotation::Rotation::Out => "out",
        };
        self.rotation
            .get_or_create(&RotationLabel {
                rotation: rotation.to_string(),
                outcome: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
    }

    /// Counts a job run's end.
    pub fn job(&self, kind: tern_wire::mover::JobKind, outcome: &str) {
        self.jobs
            .get_or_create(&JobLabel {
                kind: kind.as_str().to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts a delivery.
    pub fn delivery(&self, ok: bool, bytes: u64) {
        let outcome = if ok { "ok" } else { "failed" };
        self.deliveries
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
        self.bytes_sent.inc_by(bytes);
    }
}

impl Default for MoverMetrics {
    fn default() -> Self {
        Self::new()
    }
}
