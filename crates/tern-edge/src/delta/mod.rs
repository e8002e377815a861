//! Differential caching at the edge (seed 000, `000_d8b28882ff59355a.txt`: the edge keeps the template of
//! non-static and personalised pages and receives only the difference). The pieces:
//!
//! - [`DeltaUpstream`] (behind the [`crate::upstream::Upstream`] seam): names the base the edge holds for a
//!   page's class (`Available-Dictionary`), rebuilds the page from base + `dcz` delta, checks it against
//!   its digest, and fetches the whole page when anything is wrong; learns the bases `tern delta`
//!   announces (`Link: <...>; rel="compression-dictionary"`), fetching each before naming it, and keeps
//!   them in the edge's cache as immutable objects. The cache above it sees identity pages with their own
//!   cache headers: a `private` page is not stored, a base is.
//! - [`browser`]: browsers (RFC 9842): class pages carry `Link` to the base and `Vary: accept-encoding,
//!   available-dictionary`, and a shareable page `Use-As-Dictionary` for its own URL (`pages`); a browser
//!   that holds the base or the page's previous version and sends `Accept-Encoding: dcz` gets a `dcz`
//!   delta when [`tern_delta::browser_delta`] allows it (credential-free, shareable responses only).
//! - `metrics`: `/metrics` ([`DeltaCollector`]) and `/status` ([`EdgeDelta::status`]).
//!
//! The bookkeeping (which classes, which bases, what to name) is the sans-IO [`tern_delta::Holder`].

mod body;
pub mod browser;
mod metrics;
mod pages;
mod upstream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use tern_delta::{DczEncoder, Holder, HolderConfig, Limits, StoreConfig};
use tracing::info;

pub use metrics::DeltaCollector;
pub use upstream::{BASE_AUTHORITY, DeltaUpstream, RETRY_FAILED_BASE, RETRY_REFUSED_BASE};

/// The cache key the edge keeps the base at `target` under (`/.well-known/...` of a base, query ignored),
/// or `None` when `target` is not a base's path.
pub fn base_key(target: &str, key_config: &tern_http_cache::KeyConfig) -> Option<String> {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    tern_delta::BaseId::from_well_known_path(path)?;
    Some(tern_http_cache::primary_key("http", BASE_AUTHORITY, path, key_config))
}

use crate::clock::Clock;

/// The request field by which an edge tells `tern delta` it decodes deltas. The edge removes it from
/// every client's request (a client could otherwise make `tern delta` send a delta the edge would store
/// as it is) and sets it on its own requests when differential caching is on.
pub const EDGE_FIELD: &str = tern_delta::fields::TERN_DELTA_EDGE;

/// Whether the edge speaks differential caching with its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaMode {
    /// Never (the upstream's announcements and `Link` fields pass through untouched).
    Off,
    /// From the first response that announces a `tern delta` base.
    #[default]
    Auto,
    /// From the start (`--delta`).
    On,
}

impl std::str::FromStr for DeltaMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(DeltaMode::Off),
            "auto" => Ok(DeltaMode::Auto),
            "on" => Ok(DeltaMode::On),
            _ => Err(format!("`{text}` is not a delta mode: give on, auto or off")),
        }
    }
}

/// Smallest `max_window_log` zstd takes (`ZSTD_WINDOWLOG_MIN`).
pub const MIN_WINDOW_LOG: u32 = 10;
/// Largest `max_window_log` zstd takes on 64-bit machines (`ZSTD_WINDOWLOG_MAX_64`).
pub const MAX_WINDOW_LOG: u32 = 31;

/// Settings of differential caching at the edge (the `[edge.delta]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeltaSettings {
    /// `on`, `auto` (on once the upstream announces a base) or `off`.
    pub mode: DeltaMode,
    /// Largest `dcz` delta accepted from upstream, bytes (larger: the whole page is fetched).
    pub max_delta: usize,
    /// Largest page rebuilt or checked against its digest, bytes.
    pub max_page: usize,
    /// Largest zstd window a delta may ask for, as a power of two.
    pub max_window_log: u32,
    /// Largest base accepted, bytes (larger bases are refused and their class stays on whole pages).
    pub max_base: usize,
    /// Bytes of all bases held in memory for decoding (the cache holds them too).
    pub max_base_bytes: usize,
    /// Old bases kept per class while deltas may still name them.
    pub max_old_bases: usize,
    /// An old base not named for this long is dropped from memory, seconds.
    pub retain_unnamed_secs: u64,
    /// Longest wait for a class's first base before its page is answered whole, milliseconds.
    pub base_fetch_timeout_ms: u64,
    /// Whether browsers that hold a base get `dcz` responses (RFC 9842).
    pub browser_deltas: bool,
    /// zstd level of browser deltas.
    pub browser_level: i32,
    /// Largest page delta-encoded for a browser, bytes.
    pub browser_max_page: usize,
    /// Bytes of recent shareable pages kept as browser dictionaries (a page goes out with
    /// `Use-As-Dictionary` for its own URL, and the next version is a delta against it); 0 turns that off.
    pub browser_page_dictionaries: usize,
}

impl Default for DeltaSettings {
    fn default() -> Self {
        let limits = Limits::default();
        let holder = HolderConfig::default();
        DeltaSettings {
            mode: DeltaMode::Auto,
            max_delta: limits.max_frame,
            max_page: limits.max_decoded,
            max_window_log: limits.max_window_log,
            max_base: holder.max_base,
            max_base_bytes: holder.store.max_bytes,
            max_old_bases: holder.store.max_old_per_class,
            retain_unnamed_secs: holder.store.retain_unnamed.as_secs(),
            base_fetch_timeout_ms: 5_000,
            browser_deltas: true,
            browser_level: tern_delta::encoder::DEFAULT_LEVEL,
            browser_max_page: 8 << 20,
            browser_page_dictionaries: 32 << 20,
        }
    }
}

impl DeltaSettings {
    /// Checks the bounds: an error names the `[edge.delta]` field and its range. A bound of zero, or a
    /// window zstd cannot open, would make every delta fail and every page cost two upstream requests.
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("max_delta", self.max_delta),
            ("max_page", self.max_page),
            ("max_base", self.max_base),
            ("max_base_bytes", self.max_base_bytes),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("[edge.delta] {field} must be above 0"));
        }
        if !(MIN_WINDOW_LOG..=MAX_WINDOW_LOG).contains(&self.max_window_log) {
            return Err(format!(
                "[edge.delta] max_window_log must be from {MIN_WINDOW_LOG} to {MAX_WINDOW_LOG} (a window of 2^N bytes), not {}",
                self.max_window_log
            ));
        }
        if self.max_base > self.max_base_bytes {
            return Err(format!(
                "[edge.delta] max_base ({}) is larger than max_base_bytes ({}): no base that large could be held",
                self.max_base, self.max_base_bytes
            ));
        }
        Ok(())
    }

    /// The holder's bounds.
    pub fn holder(&self) -> HolderConfig {
        HolderConfig {
            store: StoreConfig {
                max_bytes: self.max_base_bytes,
                max_old_per_class: self.max_old_bases,
                retain_unnamed: Duration::from_secs(self.retain_unnamed_secs),
            },
            limits: Limits {
                max_frame: self.max_delta,
                max_decoded: self.max_page,
                max_window_log: self.max_window_log,
            },
            max_base: self.max_base,
            window: HolderConfig::default().window,
        }
    }
}

/// The edge's differential-caching state, shared by its upstream, its response path and its admin.
pub struct EdgeDelta {
    settings: DeltaSettings,
    active: AtomicBool,
    holder: Mutex<Holder>,
    browser_encoder: DczEncoder,
    /// Recent shareable pages, the dictionaries browsers were told to keep.
    pages: Mutex<pages::PageDictionaries>,
    counters: metrics::Counters,
    clock: Arc<dyn Clock>,
    /// One instant and the clock's time at that instant: the holder's monotonic time is derived from
    /// the edge's clock, so a test's manual clock ages bases too.
    anchor: (Instant, SystemTime),
}

impl std::fmt::Debug for EdgeDelta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeDelta")
            .field("mode", &self.settings.mode)
            .field("active", &self.is_active())
            .finish()
    }
}

impl EdgeDelta {
    /// The state for `settings`, on `clock`.
    pub fn new(settings: DeltaSettings, clock: Arc<dyn Clock>) -> Self {
        EdgeDelta {
            active: AtomicBool::new(settings.mode == DeltaMode::On),
            holder: Mutex::new(Holder::new(settings.holder())),
            browser_encoder: DczEncoder::new(settings.browser_level),
            pages: Mutex::new(pages::PageDictionaries::new(settings.browser_page_dictionaries)),
            counters: metrics::Counters::default(),
            anchor: (Instant::now(), clock.now()),
            clock,
            settings,
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &DeltaSettings {
        &self.settings
    }

    /// Whether differential caching is on (always with `on`; with `auto` once a base was announced).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Turns differential caching on after the upstream announced a base (mode `auto`).
    fn activate(&self) {
        if self.settings.mode != DeltaMode::Off && !self.active.swap(true, Ordering::Relaxed) {
            info!("the upstream announces tern delta bases: differential caching is on");
        }
    }

    /// The holder's time now, from the edge's clock.
    fn now(&self) -> Instant {
        let elapsed = self.clock.now().duration_since(self.anchor.1).unwrap_or_default();
        self.anchor.0 + elapsed
    }

    /// Runs `work` on the recent pages.
    fn with_pages<T>(&self, work: impl FnOnce(&mut pages::PageDictionaries) -> T) -> T {
        let mut pages = self.pages.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&mut pages)
    }

    /// Runs `work` on the holder.
    fn with_holder<T>(&self, work: impl FnOnce(&mut Holder) -> T) -> T {
        let mut holder = self.holder.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&mut holder)
    }

    /// The `delta` part of the edge's `/status`: mode, classes with their current base, its age and the
    /// recent delta ratio, bases held.
    pub fn status(&self) -> serde_json::Value {
        metrics::status(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_that_would_fail_every_delta_are_refused_by_name() {
        assert_eq!(DeltaSettings::default().check(), Ok(()));
        let window = DeltaSettings {
            max_window_log: 100,
            ..DeltaSettings::default()
        };
        assert!(
            window
                .check()
                .is_err_and(|e| e.contains("max_window_log must be from 10 to 31"))
        );
        for field in ["max_delta", "max_page", "max_base"] {
            let mut zero = DeltaSettings::default();
            match field {
                "max_delta" => zero.max_delta = 0,
                "max_page" => zero.max_page = 0,
                _ => zero.max_base = 0,
            }
            assert_eq!(zero.check(), Err(format!("[edge.delta] {field} must be above 0")));
        }
        let held = DeltaSettings {
            max_base: 2 << 20,
            max_base_bytes: 1 << 20,
            ..DeltaSettings::default()
        };
        assert!(held.check().is_err_and(|e| e.contains("larger than max_base_bytes")));
    }

    #[test]
    fn a_base_is_keyed_under_its_own_authority_whatever_the_host() {
        let config = tern_http_cache::KeyConfig::default();
        let id = tern_delta::BaseId::of(b"base");
        let key = base_key(&id.well_known_path(), &config).expect("a base path");
        assert!(key.contains(BASE_AUTHORITY), "{key}");
        assert_eq!(base_key(&format!("{}?x=1", id.well_known_path()), &config), Some(key));
        assert_eq!(base_key("/news/home", &config), None);
    }
}
