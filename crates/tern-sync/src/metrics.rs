//! The sync service's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label: a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// Label: a cache and a command.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    /// Cache base URL.
    pub cache: String,
    /// `purge` or `prefetch`.
    pub command: String,
    /// `ok` or `failed`.
    pub outcome: String,
}

/// Label: a cache.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    /// Cache base URL.
    pub cache: String,
}

/// All metrics of the sync service.
pub struct SyncMetrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Changes received from agents.
    pub changes_received: Counter,
    /// Changes recorded in the log.
    pub changes_recorded: Counter,
    /// Changes refused, by reason (host, scheme, malformed-url, ...).
    pub changes_rejected: Family<ReasonLabel, Counter>,
    /// Frames or batches rejected, by reason (bad-tag, bad-version, too-large, bad-magic, malformed, unknown-site).
    pub frames_rejected: Family<ReasonLabel, Counter>,
    /// Commands sent to caches.
    pub commands: Family<CommandLabel, Counter>,
    /// Changes given up on after the retry limit.
    pub changes_given_up: Counter,
    /// Changes a cache refused for good (`400`, `413`, `414`, `431` to the purge): skipped, not retried.
    pub changes_refused: Counter,
    /// Changes not yet applied, per cache.
    pub lag_changes: Family<CacheLabel, Gauge>,
    /// Age of the oldest change not yet applied, per cache, milliseconds.
    pub lag_ms: Family<CacheLabel, Gauge>,
}

impl SyncMetrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tern_sync");
        let changes_received = Counter::default();
        registry.register(
            "changes_received",
            "Changes received from agents",
            changes_received.clone(),
        );
        let changes_recorded = Counter::default();
        registry.register(
            "changes_recorded",
            "Changes recorded in the log",
            changes_recorded.clone(),
        );
        let changes_rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "changes_rejected",
            "Changes refused by the master, by reason",
            changes_rejected.clone(),
        );
        let frames_rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "frames_rejected",
            "Frames or batches rejected by the listener, by reason",
            frames_rejected.clone(),
        );
        let commands = Family::<CommandLabel, Counter>::default();
        registry.register("commands", "HTTP commands sent to caches", commands.clone());
        let changes_given_up = Counter::default();
        registry.register(
            "changes_given_up",
            "Changes given up on for a failing cache after the retry limit",
            changes_given_up.clone(),
        );
        let changes_refused = Counter::default();
        registry.register(
            "changes_refused",
            "Changes a cache refused for good (400, 413, 414 or 431 to the purge), skipped rather than retried",
            changes_refused.clone(),
        );
        let lag_changes = Family::<CacheLabel, Gauge>::default();
        registry.register(
            "cache_lag_changes",
            "Changes not yet applied to a cache",
            lag_changes.clone(),
        );
        let lag_ms = Family::<CacheLabel, Gauge>::default();
        registry.register(
            "cache_lag_milliseconds",
            "Age of the oldest change not yet applied to a cache",
            lag_ms.clone(),
        );
        SyncMetrics {
            registry,
            changes_received,
            changes_recorded,
            changes_rejected,
            frames_rejected,
            commands,
            changes_given_up,
            changes_refused,
            lag_changes,
            lag_ms,
        }
    }

    /// Counts a command.
    pub fn command(&self, cache: &str, command: &str, ok: bool) {
        let label = CommandLabel {
            cache: cache.to_string(),
            command: command.to_string(),
            outcome: if ok { "ok" } else { "failed" }.to_string(),
        };
        self.commands.get_or_create(&label).inc();
    }

    /// Sets a cache's lag.
    pub fn set_lag(&self, cache: &str, changes: u64, seconds: f64) {
        let label = CacheLabel {
            cache: cache.to_string(),
        };
        self.lag_changes.get_or_create(&label).set(changes as i64);
        self.lag_ms.get_or_create(&label).set((seconds * 1000.0) as i64);
    }

    /// Counts a rejection.
    pub fn frame_rejected(&self, reason: &str) {
        self.frames_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self::new()
    }
}
