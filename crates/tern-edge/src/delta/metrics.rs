//! `/metrics` and `/status` of differential caching at the edge. The decoder's counters (in the holder)
//! are read at scrape time by a Prometheus collector; the rest is counted here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::EdgeDelta;

/// What only the edge's driver sees.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Class pages rebuilt from a delta.
    pub pages_delta: AtomicU64,
    /// Class pages that came whole.
    pub pages_whole: AtomicU64,
    /// Bytes of class pages (identity).
    pub page_bytes: AtomicU64,
    /// Bytes received for them from upstream (deltas and whole pages).
    pub wire_bytes: AtomicU64,
    /// Whole pages by reason.
    full_pages: Mutex<BTreeMap<&'static str, u64>>,
    /// Pages that did not match their digest even whole (answered 502, never served).
    pub pages_refused: AtomicU64,
    /// Bases found missing from the cache (evicted, purged) and forgotten.
    pub bases_evicted: AtomicU64,
    /// Bases taken, by where they came from.
    base_fetches: Mutex<BTreeMap<&'static str, u64>>,
    /// Base fetches that failed or were refused.
    pub base_fetch_failures: AtomicU64,
    /// Bytes of bases received from upstream (as sent).
    pub base_bytes: AtomicU64,
    /// Browser responses of class pages, by what they got.
    browser: Mutex<BTreeMap<&'static str, u64>>,
    /// Bytes of pages sent to browsers as `dcz`, before encoding.
    pub browser_raw_bytes: AtomicU64,
    /// Bytes of those `dcz` responses.
    pub browser_sent_bytes: AtomicU64,
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, label: &'static str) {
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let slot = map.entry(label).or_default();
    *slot = slot.saturating_add(1);
}

fn snapshot(map: &Mutex<BTreeMap<&'static str, u64>>) -> Vec<(&'static str, u64)> {
    let map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.iter().map(|(label, n)| (*label, *n)).collect()
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Counters {
    /// Adds one to `counter`.
    pub fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `amount` to `counter`.
    pub fn add(&self, counter: &AtomicU64, amount: usize) {
        counter.fetch_add(amount as u64, Ordering::Relaxed);
    }

    /// A class page served to the cache: rebuilt from a delta or whole, `received` bytes for `page` bytes.
    pub fn page(&self, from_delta: bool, received: usize, page: usize) {
        self.count(if from_delta {
            &self.pages_delta
        } else {
            &self.pages_whole
        });
        self.add(&self.wire_bytes, received);
        self.add(&self.page_bytes, page);
    }

    /// A class page that came whole, for `reason`.
    pub fn full_page(&self, reason: &'static str) {
        bump(&self.full_pages, reason);
    }

    /// A base taken, from `source`.
    pub fn base_fetched(&self, source: &'static str) {
        bump(&self.base_fetches, source);
    }

    /// A browser response of a class page, with what it got.
    pub fn browser(&self, result: &'static str) {
        bump(&self.browser, result);
    }
}

/// The `delta` part of the edge's `/status`.
pub(super) fn status(delta: &EdgeDelta) -> serde_json::Value {
    let now = delta.now();
    let (classes, (count, bytes), changes) =
        delta.with_holder(|holder| (holder.status(now), holder.held(), holder.base_changes()));
    let classes: Vec<serde_json::Value> = classes
        .into_iter()
        .map(|class| {
            serde_json::json!({
                "name": class.name,
                "pattern": class.pattern,
                "current_base": class.current.map(|id| id.to_string()),
                "current_base_age_seconds": class.age.map(|age| age.as_secs_f64()),
                "recent_ratio": class.recent_ratio,
            })
        })
        .collect();
    let counters = &delta.counters;
    let (pages, page_dictionary_bytes) = delta.with_pages(|pages| pages.size());
    serde_json::json!({
        "mode": format!("{:?}", delta.settings.mode).to_lowercase(),
        "active": delta.is_active(),
        "classes": classes,
        "bases": { "count": count, "bytes": bytes, "changes": changes },
        "page_dictionaries": { "count": pages, "bytes": page_dictionary_bytes },
        "pages_delta": read(&counters.pages_delta),
        "pages_whole": read(&counters.pages_whole),
        "page_bytes": read(&counters.page_bytes),
        "wire_bytes": read(&counters.wire_bytes),
    })
}

/// Reads the edge's differential-caching counters at scrape time (register it on the edge's registry).
pub struct DeltaCollector(pub Arc<EdgeDelta>);

impl std::fmt::Debug for DeltaCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeltaCollector")
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

fn labelled(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        let labels = [(label, *value)];
        ConstCounter::new(*n).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for DeltaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let delta = &self.0;
        let counters = &delta.counters;
        let (decoder, (count, bytes), changes) =
            delta.with_holder(|holder| (holder.counters().clone(), holder.held(), holder.base_changes()));
        let pages = [
            ("delta", read(&counters.pages_delta)),
            ("whole", read(&counters.pages_whole)),
        ];
        labelled(
            &mut encoder,
            "delta_pages",
            "Class pages from upstream, rebuilt from a delta or whole",
            "from",
            &pages,
        )?;
        counter(
            &mut encoder,
            "delta_page_bytes",
            "Bytes of class pages (identity)",
            read(&counters.page_bytes),
        )?;
        counter(
            &mut encoder,
            "delta_wire_bytes",
            "Bytes received from upstream for class pages (deltas and whole pages)",
            read(&counters.wire_bytes),
        )?;
        labelled(
            &mut encoder,
            "delta_full_pages",
            "Class pages that came whole, by reason (no_base: none named; upstream_whole: tern delta answered \
             whole; others: a delta failed and the whole page was fetched)",
            "reason",
            &snapshot(&counters.full_pages),
        )?;
        let failures: Vec<(&'static str, u64)> = decoder.iter_failures().collect();
        labelled(
            &mut encoder,
            "delta_decode_failures",
            "Deltas not used, by reason (each followed by a whole-page fetch)",
            "reason",
            &failures,
        )?;
        counter(
            &mut encoder,
            "delta_digest_mismatches",
            "Pages that did not match their digest (never served)",
            decoder.digest_mismatches(),
        )?;
        counter(
            &mut encoder,
            "delta_pages_refused",
            "Whole pages that did not match their digest (answered 502)",
            read(&counters.pages_refused),
        )?;
        counter(
            &mut encoder,
            "delta_base_changes",
            "Times a class got a new current base at this edge",
            changes,
        )?;
        labelled(
            &mut encoder,
            "delta_base_fetches",
            "Bases taken, by where they came from",
            "source",
            &snapshot(&counters.base_fetches),
        )?;
        counter(
            &mut encoder,
            "delta_base_fetch_failures",
            "Base fetches that failed or were refused",
            read(&counters.base_fetch_failures),
        )?;
        counter(
            &mut encoder,
            "delta_base_bytes",
            "Bytes of bases received from upstream",
            read(&counters.base_bytes),
        )?;
        counter(
            &mut encoder,
            "delta_bases_evicted",
            "Bases found gone from the cache and forgotten",
            read(&counters.bases_evicted),
        )?;
        labelled(
            &mut encoder,
            "delta_browser_responses",
            "Class pages to browsers, by what they got (dcz, or why plain)",
            "result",
            &snapshot(&counters.browser),
        )?;
        counter(
            &mut encoder,
            "delta_browser_raw_bytes",
            "Bytes of pages sent to browsers as dcz, before encoding",
            read(&counters.browser_raw_bytes),
        )?;
        counter(
            &mut encoder,
            "delta_browser_sent_bytes",
            "Bytes of the dcz responses sent to browsers",
            read(&counters.browser_sent_bytes),
        )?;
        let metric = encoder.encode_descriptor("delta_bases", "Bases held", None, MetricType::Gauge)?;
        ConstGauge::new(count as i64).encode(metric)?;
        let metric = encoder.encode_descriptor(
            "delta_base_held_bytes",
            "Bytes of the bases held",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(bytes as i64).encode(metric)?;
        Ok(())
    }
}
