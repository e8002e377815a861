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
    /// `ok`, `connect`, `timeout`, `failed`, `relayed` (a community owner's origin failed).
    pub outcome: &'static str,
}

/// Why an upstream response body failed after its head was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFailure {
    /// It ended (the connection closed) before the length its head announced.
    Short {
        /// Bytes received.
        received: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// It went silent for longer than allowed, or a small body read whole did not arrive in time.
    Stalled(String),
    /// The connection failed or the framing was bad (a reset, an invalid chunk size).
    Error(String),
    /// It went on past the length its head announced.
    TooLong {
        /// Bytes announced.
        expected: u64,
    },
}

impl BodyFailure {
    /// The failure of a body whose stream gave `error` after `received` bytes of the `expected` its head
    /// announced (if it did): a stall, a connection closed before the end (short), or another error.
    pub fn of_error(error: &tern_http::BoxError, received: u64, expected: Option<u64>) -> BodyFailure {
        let error: &(dyn std::error::Error + 'static) = error.as_ref();
        if tern_http::BodyStalled::is_cause_of(error) {
            return BodyFailure::Stalled(error.to_string());
        }
        let ended_early = error.is::<tern_http::BodyEndedEarly>()
            || error
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_incomplete_message);
        match expected {
            Some(expected) if ended_early => BodyFailure::Short { received, expected },
            _ => BodyFailure::Error(error.to_string()),
        }
    }

    /// The metric label: `short`, `stalled`, `error`, `too-long`.
    pub fn label(&self) -> &'static str {
        match self {
            BodyFailure::Short { .. } => "short",
            BodyFailure::Stalled(_) => "stalled",
            BodyFailure::Error(_) => "error",
            BodyFailure::TooLong { .. } => "too-long",
        }
    }

    /// What a gateway answers when nothing of the response was sent yet: 504 for a stall (a timeout),
    /// 502 otherwise (RFC 9110 sections 15.6.3 and 15.6.5).
    pub fn status(&self) -> http::StatusCode {
        match self {
            BodyFailure::Stalled(_) => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

impl std::fmt::Display for BodyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyFailure::Short { received, expected } => {
                write!(f, "the upstream body ended after {received} of its {expected} bytes")
            }
            BodyFailure::Stalled(reason) => write!(f, "the upstream body stalled: {reason}"),
            BodyFailure::Error(reason) => write!(f, "the upstream body failed: {reason}"),
            BodyFailure::TooLong { expected } => {
                write!(f, "the upstream body went on past its {expected} bytes")
            }
        }
    }
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
    /// What became of requests that joined a fetch whose body was streaming in (read-while-write):
    /// `streamed` (served from it as it arrived), `fell-behind` (cut: their client read far more slowly
    /// than the origin sent), `other-response` (another variant, or a response to validate first: went
    /// upstream itself at once), `too-late` (joined past the first bytes kept, without a disk tier: led a
    /// new fetch at once, which later requests join).
    pub coalesced_streams: Family<OutcomeLabel, Counter>,
    /// Objects written to the store.
    pub stored: Counter,
    /// Fills abandoned (too large, cut off, write failure).
    pub fills_abandoned: Counter,
    /// Upstream bodies that failed after their head, by why ([`BodyFailure::label`]).
    pub upstream_bodies_failed: Family<OutcomeLabel, Counter>,
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
        let coalesced_streams = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "coalesced_streams",
            "Requests that joined a fetch whose body was streaming in: streamed (served as it arrived), \
             fell-behind (cut: read far more slowly than the origin sent), other-response (another variant or a \
             response to validate: fetched at once), too-late (joined past the first bytes kept, without a disk \
             tier: led a new fetch at once, which later requests join)",
            coalesced_streams.clone(),
        );
        let stored = Counter::default();
        registry.register("stored_objects", "Objects written to the cache", stored.clone());
        let fills_abandoned = Counter::default();
        registry.register(
            "fills_abandoned",
            "Cache fills abandoned (too large, cut off, write failed)",
            fills_abandoned.clone(),
        );
        let upstream_bodies_failed = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "upstream_bodies_failed",
            "Upstream response bodies that failed after their head: short (ended before their length), \
             stalled (silent too long, or a small body not whole in time), error (reset, bad framing), \
             too-long (past their length)",
            upstream_bodies_failed.clone(),
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
            coalesced_streams,
            stored,
            fills_abandoned,
            upstream_bodies_failed,
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

    /// Counts what became of a request that joined a streaming fetch (see [`EdgeMetrics::coalesced_streams`]).
    pub fn coalesced_stream(&self, outcome: &'static str) {
        self.coalesced_streams.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts a request by result.
    pub fn request(&self, result: &'static str) {
        self.requests.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts an upstream exchange.
    pub fn upstream(&self, outcome: &'static str) {
        self.upstream_requests.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts an upstream body that failed after its head.
    pub fn body_failed(&self, failure: &BodyFailure) {
        self.upstream_bodies_failed
            .get_or_create(&OutcomeLabel {
                outcome: failure.label(),
            })
            .inc();
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
