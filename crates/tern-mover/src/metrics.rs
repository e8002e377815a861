//! The mover's Prometheus metrics (served on its admin listener, `tern mover --admin ADDR`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    /// Assignment bytes sent to nodes.
    pub bytes_sent: Counter,
    /// Registered nodes (read at scrape time).
    pub nodes: Gauge,
    /// Jobs not finished: scheduled, queued or running (read at scrape time).
    pub jobs_pending: Gauge,
    /// Jobs running now.
    pub jobs_running: Gauge,
    /// Load-balancer commands sent (a node put in or taken out of the rotation), by outcome.
    pub rotation: Family<RotationLabel, Counter>,
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
        MoverMetrics {
            registry,
            jobs,
            deliveries,
            bytes_sent,
            nodes,
            jobs_pending,
            jobs_running,
            rotation,
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
