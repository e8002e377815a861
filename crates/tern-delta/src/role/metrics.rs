//! `/metrics` and `/status` of `tern delta`. The encoders' own counters ([`crate::EncoderCounters`]) are
//! the source of truth and are read at scrape time by a Prometheus collector; the driver adds what only it
//! sees (bases served, requests passed through, origin errors).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tern_admin::AdminRoutes;

use super::DeltaRole;
use crate::base::Base;
use crate::metrics::EncoderCounters;

/// Counts only the driver sees.
#[derive(Debug, Default)]
pub(super) struct RoleCounters {
    /// Requests outside every class, passed through.
    pub passed: AtomicU64,
    /// Origin requests that failed (502/504 answered).
    pub origin_errors: AtomicU64,
    /// Unusable `Available-Dictionary` fields from edges (answered with the whole page).
    pub bad_fields: AtomicU64,
    /// Bases served whole.
    pub bases_whole: AtomicU64,
    /// Bases served as a `dcz` delta against the older base the edge named.
    pub bases_as_delta: AtomicU64,
    /// Requests for a base not held (404).
    pub bases_missing: AtomicU64,
    /// Bytes of bases served (as sent).
    pub base_bytes_sent: AtomicU64,
}

impl RoleCounters {
    /// Adds one to `counter`.
    pub fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `amount` to `counter`.
    pub fn add(&self, counter: &AtomicU64, amount: usize) {
        counter.fetch_add(amount as u64, Ordering::Relaxed);
    }
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl DeltaRole {
    /// Each class's counters, in definition order.
    fn class_counters(&self) -> Vec<(String, EncoderCounters)> {
        self.classes
            .iter()
            .filter_map(|class| {
                let counters = self.with_class(&class.name, |state| state.encoder.counters().clone())?;
                Some((class.name.clone(), counters))
            })
            .collect()
    }

    pub(super) fn status_at(&self, now: Instant) -> serde_json::Value {
        let classes: Vec<serde_json::Value> = self
            .classes
            .iter()
            .map(|class| {
                let (ratio, samples, counters) = self
                    .with_class(&class.name, |state| {
                        let store = self.lock_store();
                        (
                            state.encoder.recent_ratio(&store),
                            state.encoder.samples(),
                            state.encoder.counters().clone(),
                        )
                    })
                    .unwrap_or_default();
                let store = self.lock_store();
                serde_json::json!({
                    "name": class.name,
                    "pattern": class.pattern.as_str(),
                    "current_base": store.current(&class.name).map(|base| base.id().to_string()),
                    "current_base_bytes": store.current(&class.name).map(Base::len),
                    "current_base_age_seconds": store.current_age(&class.name, now).map(|age| age.as_secs_f64()),
                    "recent_ratio": ratio,
                    "samples": samples,
                    "pages": counters.pages,
                    "pages_encoded": counters.pages_encoded,
                    "raw_bytes": counters.raw_bytes,
                    "sent_bytes": counters.sent_bytes,
                    "base_changes": counters.base_changes,
                })
            })
            .collect();
        let store = self.lock_store();
        let mut ids: Vec<String> = store.ids().map(ToString::to_string).collect();
        ids.sort();
        serde_json::json!({
            "role": "delta",
            "origin": self.origin.describe(),
            "classes": classes,
            "bases": { "count": store.len(), "bytes": store.bytes(), "ids": ids },
        })
    }
}

/// The admin routes of a role listening on `listen`.
pub(super) fn admin(role: Arc<DeltaRole>, listen: SocketAddr) -> Arc<dyn AdminRoutes> {
    let mut registry = Registry::with_prefix("tern_delta");
    registry.register_collector(Box::new(RoleCollector(role.clone())));
    Arc::new(DeltaAdmin { role, listen, registry })
}

struct DeltaAdmin {
    role: Arc<DeltaRole>,
    listen: SocketAddr,
    registry: Registry,
}

impl AdminRoutes for DeltaAdmin {
    fn status(&self) -> serde_json::Value {
        let mut status = self.role.status();
        if let Some(object) = status.as_object_mut() {
            object.insert("listen".into(), self.listen.to_string().into());
        }
        status
    }

    fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Reads the role's counters at scrape time.
struct RoleCollector(Arc<DeltaRole>);

impl std::fmt::Debug for RoleCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoleCollector")
    }
}

/// Encodes one counter family: `name` with one label set per value.
fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Vec<(&str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

impl Collector for RoleCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let role = &self.0;
        let classes = role.class_counters();
        let per_class = |field: fn(&EncoderCounters) -> u64| -> Vec<(Vec<(&str, String)>, u64)> {
            classes
                .iter()
                .map(|(name, counters)| (vec![("class", name.clone())], field(counters)))
                .collect()
        };
        counter_family(
            &mut encoder,
            "pages",
            "Pages of a class answered",
            &per_class(|c| c.pages),
        )?;
        counter_family(
            &mut encoder,
            "pages_encoded",
            "Pages answered as a dcz delta",
            &per_class(|c| c.pages_encoded),
        )?;
        counter_family(
            &mut encoder,
            "raw_bytes",
            "Bytes of the pages (identity)",
            &per_class(|c| c.raw_bytes),
        )?;
        counter_family(
            &mut encoder,
            "sent_bytes",
            "Bytes answered for those pages: deltas, and whole pages for fallbacks",
            &per_class(|c| c.sent_bytes),
        )?;
        counter_family(
            &mut encoder,
            "base_changes",
            "Times a class got a new current base",
            &per_class(|c| c.base_changes),
        )?;
        counter_family(
            &mut encoder,
            "base_candidates",
            "Responses kept as base candidates",
            &per_class(|c| c.candidates),
        )?;
        let fallbacks: Vec<(Vec<(&str, String)>, u64)> = classes
            .iter()
            .flat_map(|(name, counters)| {
                counters
                    .fallbacks
                    .iter()
                    .map(|(reason, n)| (vec![("class", name.clone()), ("reason", reason.to_string())], n))
            })
            .collect();
        counter_family(
            &mut encoder,
            "full_page_fallbacks",
            "Pages answered whole instead of as a delta, by reason",
            &fallbacks,
        )?;
        let refused: Vec<(Vec<(&str, String)>, u64)> = classes
            .iter()
            .flat_map(|(name, counters)| {
                counters
                    .refused
                    .iter()
                    .map(|(reason, n)| (vec![("class", name.clone()), ("reason", reason.to_string())], n))
            })
            .collect();
        counter_family(
            &mut encoder,
            "base_refusals",
            "Responses refused as base candidates (credentials, private, ...), by reason",
            &refused,
        )?;
        let counters = &role.counters;
        let bases_served = [
            (vec![("encoding", "identity".to_string())], read(&counters.bases_whole)),
            (vec![("encoding", "dcz".to_string())], read(&counters.bases_as_delta)),
            (vec![("encoding", "missing".to_string())], read(&counters.bases_missing)),
        ];
        counter_family(
            &mut encoder,
            "bases_served",
            "Base requests by how they were answered",
            &bases_served,
        )?;
        counter(
            &mut encoder,
            "base_bytes_sent",
            "Bytes of bases sent to edges",
            read(&counters.base_bytes_sent),
        )?;
        counter(
            &mut encoder,
            "passed",
            "Requests outside every class, passed through",
            read(&counters.passed),
        )?;
        counter(
            &mut encoder,
            "origin_errors",
            "Origin requests that failed",
            read(&counters.origin_errors),
        )?;
        counter(
            &mut encoder,
            "bad_fields",
            "Unusable Available-Dictionary fields received",
            read(&counters.bad_fields),
        )?;
        let (count, bytes) = {
            let store = role.lock_store();
            (store.len(), store.bytes())
        };
        gauge(&mut encoder, "bases", "Bases held", count as i64)?;
        gauge(&mut encoder, "base_bytes", "Bytes of the bases held", bytes as i64)?;
        Ok(())
    }
}
