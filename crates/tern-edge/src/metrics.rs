//! The edge's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tern_http_cache::StoreStats;

/// Label: what the cache did with a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `hit`, `stale`, `miss`, `revalidated`, `pass`, `error`, `purge`, `refused`.
    pub result: &'static str,
}

/// Label: how an upstream exchange ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok`, `connect`, `timeout`, `failed`.
    pub outcome: &'static str,
}

/// Label: the kind of purge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurgeLabel {
    /// `url`, `url-any-query`, `prefix`, `key`.
    pub kind: &'static str,
}

/// All metrics of one edge.
pub struct EdgeMetrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Requests by result.
    pub requests: Family<ResultLabel, Counter>,
    /// Time to the response head, seconds.
    pub response_seconds: Histogram,
    /// Upstream requests by outcome.
    pub upstream_requests: Family<OutcomeLabel, Counter>,
    /// Requests that waited for another's fetch.
    pub coalesced: Counter,
    /// Objects written to the store.
    pub stored: Counter,
    /// Fills abandoned (too large, cut off, write failure).
    pub fills_abandoned: Counter,
    /// Purge requests by kind.
    pub purges: Family<PurgeLabel, Counter>,
    /// Objects removed or marked by purges.
    pub purged_objects: Counter,
    /// Objects in the store.
    pub objects: Gauge,
    /// Bytes in the memory tier.
    pub memory_bytes: Gauge,
    /// Bytes in the disk tier.
    pub disk_bytes: Gauge,
    /// Memory-tier evictions since start.
    pub memory_evictions: Gauge,
    /// Disk-tier evictions since start.
    pub disk_evictions: Gauge,
    /// Objects dropped for failing a checksum.
    pub corrupt_dropped: Gauge,
}

impl EdgeMetrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tern_edge");
        let requests = Family::<ResultLabel, Counter>::default();
        registry.register("requests", "Client requests by what the cache did", requests.clone());
        let response_seconds = Histogram::new(exponential_buckets(0.0001, 3.0, 12));
        registry.register(
            "response_seconds",
            "Time to the response head",
            response_seconds.clone(),
        );
        let upstream_requests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "upstream_requests",
            "Requests sent upstream by outcome",
            upstream_requests.clone(),
        );
        let coalesced = Counter::default();
        registry.register(
            "coalesced",
            "Requests that waited for another request's upstream fetch",
            coalesced.clone(),
        );
        let stored = Counter::default();
        registry.register("stored_objects", "Objects written to the cache", stored.clone());
        let fills_abandoned = Counter::default();
        registry.register(
            "fills_abandoned",
            "Cache fills abandoned (too large, cut off, write failed)",
            fills_abandoned.clone(),
        );
        let purges = Family::<PurgeLabel, Counter>::default();
        registry.register("purges", "Purge requests by kind", purges.clone());
        let purged_objects = Counter::default();
        registry.register(
            "purged_objects",
            "Objects removed or marked stale by purges",
            purged_objects.clone(),
        );
        let objects = Gauge::default();
        registry.register("cache_objects", "Objects in the cache", objects.clone());
        let memory_bytes = Gauge::default();
        registry.register("cache_memory_bytes", "Bytes in the memory tier", memory_bytes.clone());
        let disk_bytes = Gauge::default();
        registry.register("cache_disk_bytes", "Bytes in the disk tier", disk_bytes.clone());
        let memory_evictions = Gauge::default();
        registry.register(
            "cache_memory_evictions",
            "Memory-tier evictions since start",
            memory_evictions.clone(),
        );
        let disk_evictions = Gauge::default();
        registry.register(
            "cache_disk_evictions",
            "Disk-tier evictions since start",
            disk_evictions.clone(),
        );
        let corrupt_dropped = Gauge::default();
        registry.register(
            "cache_corrupt_dropped",
            "Objects dropped for failing their checksum",
            corrupt_dropped.clone(),
        );
        EdgeMetrics {
            registry,
            requests,
            response_seconds,
            upstream_requests,
            coalesced,
            stored,
            fills_abandoned,
            purges,
            purged_objects,
            objects,
            memory_bytes,
            disk_bytes,
            memory_evictions,
            disk_evictions,
            corrupt_dropped,
        }
    }

    /// Counts a request by result.
    pub fn request(&self, result: &'static str) {
        self.requests.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts an upstream exchange.
    pub fn upstream(&self, outcome: &'static str) {
        self.upstream_requests.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Copies the store's figures into the gauges.
    pub fn set_store(&self, stats: &StoreStats) {
        self.objects.set(stats.objects as i64);
        self.memory_bytes.set(stats.memory_bytes as i64);
        self.disk_bytes.set(stats.disk_bytes as i64);
        self.memory_evictions.set(stats.memory_evictions as i64);
        self.disk_evictions.set(stats.disk_evictions as i64);
        self.corrupt_dropped.set(stats.corrupt_dropped as i64);
    }
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}
