//! The node's own metrics on `/metrics` (`tern_node_*`), beside local distribution's (`tern_node_mctp_*`,
//! with a data channel): what happened to the assignments it received, however they came (from the mover,
//! from its group leader, on the data channel's unicast repair), and to its registrations with the mover.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// An outcome label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// What happened.
    pub outcome: &'static str,
}

/// The node's counters.
#[derive(Debug)]
pub struct NodeMetrics {
    /// Where they are registered.
    pub registry: Registry,
    /// Assignments received over HTTP, by outcome: `applied`, `again` (applied before: answered from the
    /// record), `refused` (a bad signature or key, a full disk...: the reason is logged).
    pub assignments: Family<OutcomeLabel, Counter>,
    /// Registrations with the mover, by outcome: `ok`, `refused` (the mover answered no: its reason is
    /// logged), `failed` (no answer).
    pub registrations: Family<OutcomeLabel, Counter>,
    /// Bytes free for the hosted sites, as last registered.
    pub free_disk: Gauge,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tern_node");
        let assignments = Family::<OutcomeLabel, Counter>::default();
        registry.register("assignments", "Assignments received, by outcome", assignments.clone());
        let registrations = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "registrations",
            "Registrations with the mover, by outcome",
            registrations.clone(),
        );
        let free_disk = Gauge::default();
        registry.register(
            "free_disk_bytes",
            "Bytes free for the hosted sites, as last registered",
            free_disk.clone(),
        );
        // Every outcome from the start, at zero: a rate over a series that appears late misses its first
        // increase.
        for outcome in ["applied", "again", "refused"] {
            let _ = assignments.get_or_create(&OutcomeLabel { outcome });
        }
        for outcome in ["ok", "refused", "failed"] {
            let _ = registrations.get_or_create(&OutcomeLabel { outcome });
        }
        NodeMetrics {
            registry,
            assignments,
            registrations,
            free_disk,
        }
    }
}

impl NodeMetrics {
    /// Counts an assignment's outcome.
    pub fn assignment(&self, outcome: &'static str) {
        self.assignments.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts a registration's outcome.
    pub fn registration(&self, outcome: &'static str) {
        self.registrations.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}
