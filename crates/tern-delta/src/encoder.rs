//! The origin-side encoder of one page class (seed 000's "difference" sent instead of the page): given the
//! full page and the base the edge names, a `dcz` delta against it or the reason to send the page whole;
//! and the class's base life cycle (clean responses offered, the base derived, re-derived when the deltas
//! grow). Sans-IO: the role passes bytes, the store and the time in, and sends what comes out.
//!
//! A base is used only once an edge names it, so a new base never costs a full page: the role announces it
//! (and the edge fetches it from its well-known path) while the encoder keeps answering deltas against the
//! base each edge still names, which the store keeps while it is named.

use std::time::Instant;

use bytes::Bytes;

use crate::base::{BaseError, BaseId, BaseStore, StoreError};
use crate::candidate::{self, Exchange, NotCandidate};
use crate::class::Class;
use crate::dcz::{DczEncoder, PreparedBase};
use crate::derive::{self, Samples};
use crate::drift::{self, Decision, RatioWindow, Why};
use crate::fields::ReprDigest;
use crate::metrics::{EncoderCounters, Fallback};

/// zstd level of deltas; below level 10 the encoder searches with [`crate::dcz::Search::Delta`]
/// (`lazy2`, 8 candidates, matches of 5 bytes and more) instead of the level's own match finder, and
/// without long-distance matching. Measured with `cargo run --release -p tern-delta --features testsuite
/// --example floor -- --grid` on the benchmark's page pairs (`tern-lab bench delta`: each page against
/// the page one interval earlier, or another product's page; 30 pairs each): mean delta bytes, `dcz`
/// header included, and encode CPU time p50 / p99 of the 113 KB news pages:
///
/// | zstd parameters | news 5 / 60 min | calm 5 / 60 min | product | price list 5 / 60 min | encode p50 / p99 |
/// |---|---|---|---|---|---|
/// | level 3, ldm (the encoder before) | 1094 / 7271 | 557 / 1276 | 1530 | 774 / 8178 | 307 / 376 us |
/// | level 3 | 1088 / 7593 | 430 / 1263 | 1537 | 963 / 9184 | 170 / 238 us |
/// | level 6 | 954 / 6510 | 398 / 1107 | 1435 | 714 / 6858 | 576 / 724 us |
/// | level 9 | 923 / 6501 | 348 / 1061 | 1415 | 692 / 6376 | 688 / 1246 us |
/// | level 9, ldm | 1018 / 6567 | 474 / 1158 | 1420 | 774 / 6971 | 655 / 1433 us |
/// | level 19, ldm | 875 / 5881 | 382 / 1009 | 1371 | 640 / 5508 | 12.4 / 17.1 ms |
/// | lazy2, search 2, minMatch 5 | 952 / 6730 | 350 / 1090 | 1444 | 710 / 6656 | 332 / 632 us |
/// | lazy2, search 4, ldm | 1043 / 6756 | 477 / 1190 | 1423 | 776 / 7016 | 546 / 1124 us |
/// | **level 3, delta search** | 923 / 6506 | 347 / 1063 | 1426 | 699 / 6527 | 355 / 687 us |
///
/// The delta search makes deltas 7 to 38% smaller than the earlier level 3 with long-distance matching,
/// as small as level 9's at half its time, within issue 12's 1 ms for a 100 KB page; level 19 with
/// long-distance matching is 4 to 16% smaller on all but the calm page at 5 minutes (10% larger there),
/// at 35 times the time. One kind of page loses: a bare list of 2,000 lines that differ only in their
/// number, five new (238 bytes against 107 with the earlier setting; both about 0.2% of the page). What is left above zstd's best is small next to what the
/// workload's change itself costs: `crate::floor` (feature `testsuite`) and the README's performance
/// section measure it.
pub const DEFAULT_LEVEL: i32 = 3;

/// Bases an [`Encoder`] keeps loaded: the class's current base and the one before it, which edges name
/// while they fetch the new one.
pub const PREPARED_BASES: usize = 2;

/// Bounds and tuning of an [`Encoder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderConfig {
    /// zstd level.
    pub level: i32,
    /// Largest page delta-encoded, in bytes; larger pages are sent whole.
    pub max_page: usize,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            level: DEFAULT_LEVEL,
            max_page: 32 << 20,
        }
    }
}

/// What to answer for a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// A `dcz` body (`Content-Encoding: dcz`) against `base`.
    Delta {
        /// The `dcz` stream.
        body: Vec<u8>,
        /// The base it was made against (also in its header).
        base: BaseId,
        /// The page's digest, checked by the edge after decoding.
        digest: ReprDigest,
    },
    /// The page itself, for `reason`.
    Full {
        /// Why not a delta.
        reason: Fallback,
        /// The page's digest.
        digest: ReprDigest,
    },
}

impl Encoded {
    /// The page's digest.
    pub fn digest(&self) -> ReprDigest {
        match self {
            Encoded::Delta { digest, .. } | Encoded::Full { digest, .. } => *digest,
        }
    }
}

/// A class's new current base.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseChange {
    /// The class.
    pub class: String,
    /// The base it replaces (still in the store while named).
    pub old: Option<BaseId>,
    /// The new current base, to be announced to edges.
    pub new: BaseId,
    /// Why it was derived.
    pub why: Why,
}

/// Why a re-derivation failed (the class keeps its base).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RederiveError {
    /// The derived bytes cannot be a base.
    #[error(transparent)]
    Base(#[from] BaseError),
    /// The store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The encoder of one class.
#[derive(Debug)]
pub struct Encoder {
    class: Class,
    config: EncoderConfig,
    dcz: DczEncoder,
    /// The bases pages were last encoded against, loaded once ([`DczEncoder::prepare`]), the most
    /// recently used last; at most [`PREPARED_BASES`].
    prepared: Vec<PreparedBase>,
    samples: Samples,
    ratios: RatioWindow,
    /// Pages in a row whose delta against the current base was no smaller than the page.
    unlike_in_a_row: usize,
    last_change: Option<Instant>,
    counters: EncoderCounters,
}

impl Encoder {
    /// The encoder of `class`.
    pub fn new(class: Class, config: EncoderConfig) -> Self {
        Encoder {
            dcz: DczEncoder::new(config.level),
            prepared: Vec::new(),
            samples: Samples::new(class.policy.samples),
            ratios: RatioWindow::new(class.policy.rederive.window),
            unlike_in_a_row: 0,
            last_change: None,
            counters: EncoderCounters::default(),
            class,
            config,
        }
    }

    /// Its class.
    pub fn class(&self) -> &Class {
        &self.class
    }

    /// Its counters.
    pub fn counters(&self) -> &EncoderCounters {
        &self.counters
    }

    /// Clean responses held for derivation.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// Offers an exchange of this class as a base candidate; it is kept only if [`candidate::check`] allows
    /// it (never with credentials, never a per-user response).
    pub fn offer(&mut self, exchange: &Exchange<'_>) -> Result<(), NotCandidate> {
        if let Err(reason) = candidate::check(exchange, &self.class.policy) {
            self.counters.refused.add(reason);
            return Err(reason);
        }
        self.counters.candidates = self.counters.candidates.saturating_add(1);
        self.samples.push(Bytes::copy_from_slice(exchange.body));
        Ok(())
    }

    /// Counts a page of `page_len` bytes that went whole without reaching [`Encoder::encode`] (too large to
    /// read whole, for one).
    pub fn count_full(&mut self, page_len: usize, reason: Fallback) {
        self.counters.full(page_len, reason);
    }

    /// The answer for `page` (identity bytes) when the edge names `named` (from `Available-Dictionary`).
    pub fn encode(&mut self, page: &[u8], named: Option<BaseId>, store: &mut BaseStore, now: Instant) -> Encoded {
        let digest = ReprDigest::of(page);
        match self.try_encode(page, named, store, now) {
            Ok((body, base)) => {
                self.counters.delta(page.len(), body.len());
                Encoded::Delta { body, base, digest }
            }
            Err(reason) => {
                self.counters.full(page.len(), reason);
                Encoded::Full { reason, digest }
            }
        }
    }

    fn try_encode(
        &mut self,
        page: &[u8],
        named: Option<BaseId>,
        store: &mut BaseStore,
        now: Instant,
    ) -> Result<(Vec<u8>, BaseId), Fallback> {
        if page.len() > self.config.max_page {
            return Err(Fallback::PageTooLarge);
        }
        let named = named.ok_or(Fallback::NoBaseNamed)?;
        let base = store.name(&named, now).ok_or(Fallback::UnknownBase)?.clone();
        if base.class() != self.class.name {
            return Err(Fallback::OtherClass);
        }
        let body = self.encode_against(&base, page).map_err(|_| Fallback::EncodeFailed)?;
        let against_current = store.current(&self.class.name).map(|current| current.id()) == Some(named);
        if body.len() >= page.len() {
            // A page with nothing in common with the base (a binary file under the class's pattern) is an
            // outlier, not drift: it counts towards a new base only when the class's pages keep coming
            // like that for a whole window (then the class really changed), so a stray one cannot make
            // the class re-derive its base again and again.
            self.unlike_in_a_row = self.unlike_in_a_row.saturating_add(1);
            if against_current && self.unlike_in_a_row >= self.class.policy.rederive.window {
                self.ratios.record(named, body.len(), page.len());
            }
            return Err(Fallback::NotSmaller);
        }
        self.unlike_in_a_row = 0;
        if against_current {
            self.ratios.record(named, body.len(), page.len());
        }
        Ok((body, named))
    }

    /// `page` against `base`, with the base's prepared context (made on its first page; the least recently
    /// used one goes when [`PREPARED_BASES`] are held).
    fn encode_against(&mut self, base: &crate::base::Base, page: &[u8]) -> Result<Vec<u8>, crate::DczError> {
        let index = match self.prepared.iter().position(|prepared| prepared.id() == base.id()) {
            Some(index) => index,
            None => {
                if self.prepared.len() >= PREPARED_BASES {
                    self.prepared.remove(0);
                }
                self.prepared.push(self.dcz.prepare(base)?);
                self.prepared.len() - 1
            }
        };
        let mut prepared = self.prepared.remove(index);
        let body = self.dcz.encode_prepared(&mut prepared, page);
        self.prepared.push(prepared);
        body
    }

    /// Whether `base` still gives the clean response `latest` a delta within the rule's ratio.
    fn fits(&self, base: &crate::base::Base, latest: &[u8]) -> bool {
        let Ok(delta) = self.dcz.encode(base, latest) else {
            return false;
        };
        (delta.len() as f64) <= self.class.policy.rederive.ratio * latest.len() as f64
    }

    /// Mean delta ratio of the recent deltas against the current base (for `/status`).
    pub fn recent_ratio(&self, store: &BaseStore) -> Option<f64> {
        let current = store.current(&self.class.name)?.id();
        (self.ratios.base() == Some(current))
            .then(|| self.ratios.mean())
            .flatten()
    }

    /// What the re-derivation rule says now.
    pub fn decision(&self, store: &BaseStore, now: Instant) -> Decision {
        let current = store.current(&self.class.name).map(|base| base.id());
        drift::decide(
            &self.class.policy.rederive,
            current,
            &self.ratios,
            self.last_change,
            !self.samples.is_empty(),
            now,
        )
    }

    /// Derives and stores a new current base when [`Encoder::decision`] says so. `Ok(None)` when the base
    /// is kept, then waiting out the rule's interval before trying again: when the derivation gives the
    /// current base again, or when the current base still fits the latest clean response within the rule's
    /// ratio (the deltas are large because of per-user content, which no base can hold).
    pub fn rederive(&mut self, store: &mut BaseStore, now: Instant) -> Result<Option<BaseChange>, RederiveError> {
        let Decision::Derive(why) = self.decision(store, now) else {
            return Ok(None);
        };
        let current = store.current(&self.class.name).cloned();
        if let (Some(current), Some(latest)) = (&current, self.samples.latest())
            && self.fits(current, latest)
        {
            self.last_change = Some(now);
            return Ok(None);
        }
        let policy = &self.class.policy;
        let Some(derived) = derive::derive(policy.derivation, &self.samples, &self.class.name, policy.max_base) else {
            return Ok(None);
        };
        let base = derived?;
        let old = current.map(|current| current.id());
        self.last_change = Some(now);
        if old == Some(base.id()) {
            return Ok(None);
        }
        let new = base.id();
        store.insert_current(base, now)?;
        self.counters.base_changes = self.counters.base_changes.saturating_add(1);
        Ok(Some(BaseChange {
            class: self.class.name.clone(),
            old,
            new,
            why,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::{Base, StoreConfig};
    use crate::class::{ClassPolicy, RederiveRule};
    use crate::dcz::{DczDecoder, Limits};
    use http::{HeaderMap, HeaderValue, StatusCode};
    use std::time::Duration;

    fn page(stories: std::ops::Range<u32>) -> Vec<u8> {
        let mut page = String::from("<html><head><title>news</title></head><body><ul>\n");
        for n in stories {
            page.push_str(&format!(
                "<li><a href=\"/story/{n}\">Story {n}: something about topic {}</a></li>\n",
                n * 7919 % 1000
            ));
        }
        page.push_str("</ul></body></html>\n");
        page.into_bytes()
    }

    fn clean(encoder: &mut Encoder, body: &[u8]) -> Result<(), NotCandidate> {
        let empty = HeaderMap::new();
        encoder.offer(&Exchange {
            target: "/news/home",
            request: &empty,
            status: StatusCode::OK,
            response: &empty,
            body,
        })
    }

    fn news_class(rule: RederiveRule) -> Class {
        let policy = ClassPolicy {
            rederive: rule,
            ..ClassPolicy::default()
        };
        Class::parse("news=/news/*")
            .expect("valid")
            .with_policy(policy)
            .expect("valid")
    }

    #[test]
    fn first_base_then_deltas() {
        let now = Instant::now();
        let mut store = BaseStore::new(StoreConfig::default());
        let mut encoder = Encoder::new(news_class(RederiveRule::default()), EncoderConfig::default());
        let first = page(0..200);
        // No base yet: the edge names none, the page goes whole.
        assert!(matches!(
            encoder.encode(&first, None, &mut store, now),
            Encoded::Full {
                reason: Fallback::NoBaseNamed,
                ..
            }
        ));
        clean(&mut encoder, &first).expect("clean");
        let change = encoder
            .rederive(&mut store, now)
            .expect("derives")
            .expect("a first base");
        assert_eq!((change.old, change.why), (None, Why::FirstBase));
        assert_eq!(store.current("news").map(Base::id), Some(change.new));

        let next = page(3..203);
        let Encoded::Delta { body, base, digest } = encoder.encode(&next, Some(change.new), &mut store, now) else {
            panic!("expected a delta");
        };
        assert_eq!(base, change.new);
        assert!(
            body.len() * 20 < next.len(),
            "delta {} for page {}",
            body.len(),
            next.len()
        );
        let decoded = DczDecoder::new(Limits::default())
            .decode(&body, store.get(&base).expect("held"))
            .expect("decodes");
        assert!(digest.verify(&decoded));
        assert_eq!(decoded, next);
        let counters = encoder.counters();
        assert_eq!(
            (counters.pages, counters.pages_encoded, counters.base_changes),
            (2, 1, 1)
        );
        assert_eq!(counters.sent_bytes, (first.len() + body.len()) as u64);
        assert!(encoder.recent_ratio(&store).is_some_and(|ratio| ratio < 0.05));
    }

    #[test]
    fn a_stray_page_unlike_the_base_is_no_drift_but_a_class_of_such_pages_is() {
        let now = Instant::now();
        let mut store = BaseStore::new(StoreConfig::default());
        let rule = RederiveRule {
            window: 4,
            min_interval: Duration::ZERO,
            ..RederiveRule::default()
        };
        let mut encoder = Encoder::new(news_class(rule), EncoderConfig::default());
        let base = Base::new("news", page(0..200), 1 << 20).expect("valid");
        let id = base.id();
        store.insert_current(base, now).expect("fits");
        let mut state = 7u64;
        let mut binary = |len: usize| -> Vec<u8> {
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        };
        // News pages with a binary file among them, one in three.
        for n in 0..13u32 {
            let stray = binary(20_000);
            let page = if n % 3 == 2 { stray } else { page(n..200 + n) };
            clean(&mut encoder, &page).expect("clean");
            let _ = encoder.encode(&page, Some(id), &mut store, now);
            assert_eq!(encoder.decision(&store, now), Decision::Keep, "page {n}");
        }
        // The class's pages all turn unlike the base: after a window of them, that is drift.
        for n in 0..4 {
            let unlike = binary(20_000);
            clean(&mut encoder, &unlike).expect("clean");
            let _ = encoder.encode(&unlike, Some(id), &mut store, now);
            if n < 3 {
                assert_eq!(encoder.decision(&store, now), Decision::Keep, "unlike page {n}");
            }
        }
        assert!(
            matches!(encoder.decision(&store, now), Decision::Derive(_)),
            "{:?}",
            encoder.decision(&store, now)
        );
    }

    #[test]
    fn pages_against_several_bases_keep_decoding() {
        let now = Instant::now();
        let mut store = BaseStore::new(StoreConfig::default());
        let mut encoder = Encoder::new(news_class(RederiveRule::default()), EncoderConfig::default());
        let bases: Vec<Base> = (0..3u32)
            .map(|n| Base::new("news", page(n * 100..n * 100 + 150), 1 << 20).expect("valid"))
            .collect();
        for base in &bases {
            store.insert_current(base.clone(), now).expect("fits");
        }
        let mut decoder = DczDecoder::new(Limits::default());
        // More bases than the encoder keeps loaded, in turns: each page still decodes against its base.
        for round in 0..3u32 {
            for (n, base) in bases.iter().enumerate() {
                let start = n as u32 * 100 + round + 1;
                let next = page(start..start + 150);
                let Encoded::Delta { body, base: used, .. } = encoder.encode(&next, Some(base.id()), &mut store, now)
                else {
                    panic!("expected a delta");
                };
                assert_eq!(used, base.id());
                assert_eq!(decoder.decode(&body, base).expect("decodes"), next);
                assert!(encoder.prepared.len() <= PREPARED_BASES);
            }
        }
    }

    #[test]
    fn every_fallback_reason() {
        let now = Instant::now();
        let mut store = BaseStore::new(StoreConfig::default());
        let news = Base::new("news", page(0..50), 1 << 20).expect("valid");
        let shop = Base::new("shop", page(100..150), 1 << 20).expect("valid");
        store.insert_current(news.clone(), now).expect("fits");
        store.insert_current(shop.clone(), now).expect("fits");
        let config = EncoderConfig {
            max_page: 100_000,
            ..EncoderConfig::default()
        };
        let mut encoder = Encoder::new(news_class(RederiveRule::default()), config);
        let reason = |encoded: Encoded| match encoded {
            Encoded::Full { reason, .. } => Some(reason),
            Encoded::Delta { .. } => None,
        };
        let page_now = page(1..51);
        assert_eq!(
            reason(encoder.encode(&page_now, Some(BaseId::of(b"gone")), &mut store, now)),
            Some(Fallback::UnknownBase)
        );
        assert_eq!(
            reason(encoder.encode(&page_now, Some(shop.id()), &mut store, now)),
            Some(Fallback::OtherClass)
        );
        assert_eq!(
            reason(encoder.encode(&vec![b'x'; 100_001], Some(news.id()), &mut store, now)),
            Some(Fallback::PageTooLarge)
        );
        let mut rng = crate::synthetic::Rng::new(1);
        let noise: Vec<u8> = (0..2000).map(|_| rng.next_u64() as u8).collect();
        assert_eq!(
            reason(encoder.encode(&noise, Some(news.id()), &mut store, now)),
            Some(Fallback::NotSmaller)
        );
        assert_eq!(
            reason(encoder.encode(&page_now, Some(news.id()), &mut store, now)),
            None
        );
        let fallbacks = &encoder.counters().fallbacks;
        assert_eq!(fallbacks.total(), 4);
        for reason in [
            Fallback::UnknownBase,
            Fallback::OtherClass,
            Fallback::PageTooLarge,
            Fallback::NotSmaller,
        ] {
            assert_eq!(fallbacks.get(reason), 1, "{reason:?}");
        }
    }

    #[test]
    fn drift_derives_a_new_base_and_the_old_one_stays_usable() {
        let start = Instant::now();
        let rule = RederiveRule {
            ratio: 0.05,
            window: 4,
            min_interval: Duration::from_secs(10),
        };
        let mut store = BaseStore::new(StoreConfig::default());
        let mut encoder = Encoder::new(news_class(rule), EncoderConfig::default());
        clean(&mut encoder, &page(0..100)).expect("clean");
        let first = encoder
            .rederive(&mut store, start)
            .expect("ok")
            .expect("first base")
            .new;

        // The template changes for good: every story line is new.
        let redesigned = |n: u32| {
            String::from_utf8_lossy(&page(n..n + 100))
                .replace("<li><a href=", "<article class=\"card\"><h2><a data-x=\"1\" href=")
                .replace("</a></li>", "</a></h2></article>")
                .into_bytes()
        };
        let mut at = start;
        for n in 0..4 {
            at += Duration::from_secs(5);
            let page = redesigned(n);
            assert!(matches!(
                encoder.encode(&page, Some(first), &mut store, at),
                Encoded::Delta { .. }
            ));
            clean(&mut encoder, &page).expect("clean");
        }
        let ratio = encoder.recent_ratio(&store).expect("ratios");
        assert!(ratio > 0.05, "ratio {ratio}");
        let change = encoder.rederive(&mut store, at).expect("ok").expect("a new base");
        assert!(matches!(change.why, Why::RatioAbove { .. }));
        assert_eq!(change.old, Some(first));

        // Edges that still name the old base get deltas against it; the new base gives small deltas.
        let page = redesigned(9);
        assert!(matches!(
            encoder.encode(&page, Some(first), &mut store, at),
            Encoded::Delta { .. }
        ));
        let Encoded::Delta { body, .. } = encoder.encode(&page, Some(change.new), &mut store, at) else {
            panic!("expected a delta");
        };
        assert!((body.len() as f64) < page.len() as f64 * 0.05);
        // The window now holds only deltas against the new base.
        assert!(encoder.recent_ratio(&store).is_some_and(|ratio| ratio < 0.05));
        assert_eq!(encoder.decision(&store, at), Decision::Keep);
    }

    #[test]
    fn personalised_responses_never_feed_a_base() {
        let now = Instant::now();
        let mut store = BaseStore::new(StoreConfig::default());
        let mut encoder = Encoder::new(news_class(RederiveRule::default()), EncoderConfig::default());
        let mut request = HeaderMap::new();
        request.insert("cookie", HeaderValue::from_static("sid=alice"));
        let empty = HeaderMap::new();
        let personal = b"<html>Hello Alice, account 12345678</html>";
        let refused = encoder.offer(&Exchange {
            target: "/news/home",
            request: &request,
            status: StatusCode::OK,
            response: &empty,
            body: personal,
        });
        assert_eq!(refused, Err(NotCandidate::Cookie));
        assert_eq!(encoder.rederive(&mut store, now), Ok(None));
        assert!(store.is_empty());
        assert_eq!(encoder.counters().refused.get(NotCandidate::Cookie), 1);
    }

    #[test]
    fn per_user_content_does_not_churn_bases() {
        let start = Instant::now();
        let rule = RederiveRule {
            ratio: 0.02,
            window: 2,
            min_interval: Duration::from_secs(10),
        };
        let mut store = BaseStore::new(StoreConfig::default());
        let mut encoder = Encoder::new(news_class(rule), EncoderConfig::default());
        let anonymous = |minute: u32| {
            let mut page = page(0..200);
            page.extend_from_slice(format!("<p>generated at minute {minute}</p>").as_bytes());
            page
        };
        clean(&mut encoder, &anonymous(0)).expect("clean");
        let base = encoder.rederive(&mut store, start).expect("ok").expect("first").new;
        let mut at = start;
        for minute in 1..10 {
            at += Duration::from_secs(30);
            // The anonymous page changes a little (its timestamp); personal pages differ a lot.
            clean(&mut encoder, &anonymous(minute)).expect("clean");
            let personal = page(1000 * minute..1000 * minute + 100);
            encoder.encode(&personal, Some(base), &mut store, at);
            encoder.encode(&personal, Some(base), &mut store, at);
            assert_eq!(encoder.rederive(&mut store, at), Ok(None), "minute {minute}");
        }
        assert_eq!(encoder.counters().base_changes, 1);
        assert_eq!(store.current("news").map(Base::id), Some(base));
    }

    #[test]
    fn the_same_base_again_is_not_a_change() {
        let start = Instant::now();
        let rule = RederiveRule {
            ratio: 0.01,
            window: 2,
            min_interval: Duration::from_secs(10),
        };
        let mut store = BaseStore::new(StoreConfig::default());
        let mut encoder = Encoder::new(news_class(rule), EncoderConfig::default());
        let template = page(0..100);
        clean(&mut encoder, &template).expect("clean");
        let base = encoder.rederive(&mut store, start).expect("ok").expect("first").new;
        // Personalised pages stay far from the anonymous template; the clean sample does not change.
        let later = start + Duration::from_secs(20);
        for n in 0..2 {
            let personal = page(500 * n + 1000..500 * n + 1100);
            encoder.encode(&personal, Some(base), &mut store, later);
        }
        assert!(matches!(encoder.decision(&store, later), Decision::Derive(_)));
        assert_eq!(encoder.rederive(&mut store, later), Ok(None));
        assert_eq!(
            encoder.decision(&store, later + Duration::from_secs(1)),
            Decision::Wait(drift::Wait::CoolingDown)
        );
        assert_eq!(encoder.counters().base_changes, 1);
    }
}
