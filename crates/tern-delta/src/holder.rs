//! The edge side's bookkeeping (seed 000 `000_d8b28882ff59355a.txt`: the edge holds the template and
//! rebuilds pages from it): the page classes an edge has learned, the bases it holds, which base it names
//! upstream for a path, the delta ratio it sees per class, and the decoding of deltas against those bases.
//! Sans-IO: the edge fetches bases, keeps them in its cache and serves them; this says what to do.
//!
//! An edge needs no class configuration of its own. It learns a class the way a browser learns a
//! dictionary (RFC 9842 section 2.1): from the `Use-As-Dictionary` field of a base it fetched, whose
//! `match` is the class's path pattern and whose `id` is the class name. A base becomes a class's current
//! base when it is learned, and again whenever `tern delta` announces it; the current base is what the edge
//! names in `Available-Dictionary`, so the encoder only ever encodes against a base the edge holds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::base::{Base, BaseError, BaseId, BaseStore, StoreConfig, StoreError};
use crate::class::{Class, ClassError, Classes};
use crate::dcz::{self, Limits};
use crate::decoder::{DecodeError, Decoder};
use crate::drift::RatioWindow;
use crate::fields::{DictionaryType, ReprDigest, UseAsDictionary};
use crate::metrics::DecoderCounters;

/// Bounds of a [`Holder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderConfig {
    /// Retention and byte bound of the bases held.
    pub store: StoreConfig,
    /// Bounds of decoding a delta.
    pub limits: Limits,
    /// Largest base accepted, in bytes.
    pub max_base: usize,
    /// Deltas per class the recent ratio (for `/status`) is taken over.
    pub window: usize,
}

impl Default for HolderConfig {
    fn default() -> Self {
        HolderConfig {
            store: StoreConfig::default(),
            limits: Limits::default(),
            max_base: 8 << 20,
            window: 16,
        }
    }
}

/// Why a fetched base was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LearnError {
    /// `Use-As-Dictionary` names a dictionary type other than `raw` (RFC 9842 section 2.1.4).
    #[error("the base's dictionary type is not raw")]
    NotRaw,
    /// `Use-As-Dictionary` has no usable class name (`id`) or path pattern (`match`).
    #[error("the base's use-as-dictionary does not name a class: {0}")]
    Class(#[from] ClassError),
    /// The bytes are not a base, or not the one announced (their hash differs).
    #[error(transparent)]
    Base(#[from] BaseError),
    /// The bound on the bases held refuses it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A class as `/status` shows it on the edge.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldClass {
    /// Class name.
    pub name: String,
    /// Its path pattern.
    pub pattern: String,
    /// The base named for its pages.
    pub current: Option<BaseId>,
    /// Since when that base has been held.
    pub age: Option<Duration>,
    /// Mean delta ratio (delta bytes / page bytes) of the recent deltas of the class.
    pub recent_ratio: Option<f64>,
}

/// What an edge holds: learned classes, bases, and the decoder.
#[derive(Debug)]
pub struct Holder {
    config: HolderConfig,
    classes: Classes,
    store: BaseStore,
    decoder: Decoder,
    ratios: HashMap<String, RatioWindow>,
    base_changes: u64,
}

impl Holder {
    /// An empty holder.
    pub fn new(config: HolderConfig) -> Self {
        Holder {
            classes: Classes::default(),
            store: BaseStore::new(config.store.clone()),
            decoder: Decoder::new(config.limits.clone()),
            ratios: HashMap::new(),
            base_changes: 0,
            config,
        }
    }

    /// Its bounds.
    pub fn config(&self) -> &HolderConfig {
        &self.config
    }

    /// The learned class of `path` (query ignored), if any.
    pub fn class_of(&self, path: &str) -> Option<&Class> {
        self.classes.find(path)
    }

    /// The current base of class `name`.
    pub fn current(&self, name: &str) -> Option<BaseId> {
        self.store.current(name).map(Base::id)
    }

    /// The base named `id`, if held.
    pub fn base(&self, id: &BaseId) -> Option<&Base> {
        self.store.get(id)
    }

    /// Whether `id` is held.
    pub fn holds(&self, id: &BaseId) -> bool {
        self.store.get(id).is_some()
    }

    /// The base to name upstream for `path`: its class's current base, recorded as named at `now`.
    pub fn name_for(&mut self, path: &str, now: Instant) -> Option<(String, BaseId)> {
        let class = self.classes.find(path)?.name.clone();
        let id = self.store.current(&class)?.id();
        self.store.name(&id, now);
        Some((class, id))
    }

    /// `tern delta` announced `id` as its class's current base: when held, it becomes current here too
    /// (returns true); otherwise the edge fetches it (false).
    pub fn announce(&mut self, id: &BaseId, now: Instant) -> bool {
        let Some(base) = self.store.get(id).cloned() else {
            return false;
        };
        let was_current = self.store.current(base.class()).map(Base::id) == Some(*id);
        if self.store.insert_current(base, now).is_err() {
            return false;
        }
        if !was_current {
            self.base_changes = self.base_changes.saturating_add(1);
        }
        true
    }

    /// Takes the base fetched under `id` with its `Use-As-Dictionary` field: the class it names is learned
    /// (or its pattern updated) and the base becomes its current base. Refused unless the bytes hash to
    /// `id`, are within [`HolderConfig::max_base`], and the field names a raw dictionary and a valid class.
    pub fn learn(
        &mut self,
        id: BaseId,
        bytes: impl Into<bytes::Bytes>,
        field: &UseAsDictionary,
        now: Instant,
    ) -> Result<(), LearnError> {
        let base = Base::verified(field.id.clone(), bytes, id, self.config.max_base)?;
        self.learn_base(base, field, now)
    }

    /// As [`Holder::learn`], for a base the caller already made with [`Base::verified`] (hashing a large
    /// base is work a driver does off its event loop), of the class `field` names.
    pub fn learn_base(&mut self, base: Base, field: &UseAsDictionary, now: Instant) -> Result<(), LearnError> {
        if field.kind != DictionaryType::Raw {
            return Err(LearnError::NotRaw);
        }
        let class = Class::new(&field.id, &field.match_pattern)?;
        if base.class() != class.name {
            return Err(LearnError::Class(ClassError::Name(base.class().to_string())));
        }
        if base.len() > self.config.max_base {
            return Err(LearnError::Base(BaseError::TooLarge {
                len: base.len(),
                max: self.config.max_base,
            }));
        }
        let id = base.id();
        let was_current = self.store.current(&class.name).map(Base::id) == Some(id);
        self.store.insert_current(base, now)?;
        if self.classes.get(&class.name).map(|known| &known.pattern) != Some(&class.pattern) {
            self.classes.insert(class);
        }
        if !was_current {
            self.base_changes = self.base_changes.saturating_add(1);
        }
        Ok(())
    }

    /// Forgets class `name` and its current base: `tern delta` answered a page of it whole without
    /// announcing any base of it (its classes changed, or it lost the base), so naming that base again
    /// would only cost whole pages. The class is learned again from the next base `tern delta` announces
    /// for it. Returns whether the class was known.
    pub fn withdraw(&mut self, name: &str) -> bool {
        if let Some(current) = self.store.current(name).map(Base::id) {
            self.store.remove(&current);
        }
        self.ratios.remove(name);
        self.classes.remove(name)
    }

    /// Drops `id` (evicted from the edge's cache, or purged): its class has no current base until the
    /// next one is learned. Returns whether it was held.
    pub fn forget(&mut self, id: &BaseId) -> bool {
        self.store.remove(id)
    }

    /// The page in the `dcz` `body`, checked against `digest`; the base is the one its header names.
    pub fn decode(&mut self, body: &[u8], digest: Option<&ReprDigest>, now: Instant) -> Result<Vec<u8>, DecodeError> {
        let page = self.decoder.decode_with(body, &mut self.store, digest, now)?;
        if let Ok(id) = dcz::read_header(body)
            && let Some(base) = self.store.get(&id)
        {
            let window = self.config.window;
            self.ratios
                .entry(base.class().to_string())
                .or_insert_with(|| RatioWindow::new(window))
                .record(id, body.len(), page.len());
        }
        Ok(page)
    }

    /// Counts a full page checked against its digest; `Err` when it does not match (never serve it).
    pub fn verify_full(&mut self, page: &[u8], digest: Option<&ReprDigest>) -> Result<(), DecodeError> {
        self.decoder.verify_full(page, digest)
    }

    /// Counts a delta that failed before it reached the decoder (too large, cut off on its way in).
    pub fn count_failure(&mut self, error: &DecodeError) {
        self.decoder.count_failure(error);
    }

    /// The decoder's counters.
    pub fn counters(&self) -> &DecoderCounters {
        self.decoder.counters()
    }

    /// Times a class got a new current base here.
    pub fn base_changes(&self) -> u64 {
        self.base_changes
    }

    /// Bases held and their bytes.
    pub fn held(&self) -> (usize, usize) {
        (self.store.len(), self.store.bytes())
    }

    /// Applies the retention rule at `now`; returns the ids dropped.
    pub fn expire(&mut self, now: Instant) -> Vec<BaseId> {
        self.store.expire(now)
    }

    /// Every learned class, in the order learned.
    pub fn status(&self, now: Instant) -> Vec<HeldClass> {
        self.classes
            .iter()
            .map(|class| {
                let current = self.store.current(&class.name).map(Base::id);
                let recent_ratio = self
                    .ratios
                    .get(&class.name)
                    .filter(|window| window.base().is_some() && window.base() == current)
                    .and_then(RatioWindow::mean);
                HeldClass {
                    name: class.name.clone(),
                    pattern: class.pattern.as_str().to_string(),
                    current,
                    age: self.store.current_age(&class.name, now),
                    recent_ratio,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::DecodeFailure;

    fn field(class: &str, pattern: &str) -> UseAsDictionary {
        UseAsDictionary::for_class(&Class::parse(&format!("{class}={pattern}")).expect("valid"))
    }

    fn page(n: usize) -> Vec<u8> {
        (0..200)
            .map(|line| format!("<li>story {} of the day</li>\n", line + n))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn learns_classes_from_bases_and_names_the_current_one() {
        let now = Instant::now();
        let mut holder = Holder::new(HolderConfig::default());
        assert_eq!(holder.name_for("/news/today", now), None);
        let first = page(0);
        let first_id = BaseId::of(&first);
        holder
            .learn(first_id, first.clone(), &field("news", "/news/*"), now)
            .expect("learns");
        assert_eq!(holder.name_for("/news/today?x=1", now), Some(("news".into(), first_id)));
        assert_eq!(holder.name_for("/shop/1", now), None);

        // A new base is learned while the old one stays held for deltas still made against it.
        let second = page(5);
        let second_id = BaseId::of(&second);
        assert!(!holder.announce(&second_id, now));
        holder
            .learn(second_id, second.clone(), &field("news", "/news/*"), now)
            .expect("learns");
        assert_eq!(holder.current("news"), Some(second_id));
        assert!(holder.holds(&first_id));
        // Announcing the old one again makes it current again (tern delta's word wins).
        assert!(holder.announce(&first_id, now));
        assert_eq!(holder.current("news"), Some(first_id));
        assert_eq!(holder.base_changes(), 3);

        let next = page(1);
        let body = dcz::encode(holder.base(&first_id).expect("held"), &next, 3).expect("encodes");
        let decoded = holder
            .decode(&body, Some(&ReprDigest::of(&next)), now)
            .expect("decodes");
        assert_eq!(decoded, next);
        let status = holder.status(now);
        assert_eq!(status.len(), 1);
        assert!(status[0].recent_ratio.is_some_and(|ratio| ratio < 0.1));
    }

    #[test]
    fn a_withdrawn_class_is_named_no_more_and_learned_again_from_its_next_base() {
        let now = Instant::now();
        let mut holder = Holder::new(HolderConfig::default());
        let (home, all) = (page(0), page(1));
        let (home_id, all_id) = (BaseId::of(&home), BaseId::of(&all));
        holder
            .learn(home_id, home, &field("home", "/news/h*"), now)
            .expect("learns");
        holder
            .learn(all_id, all, &field("news", "/news/*"), now)
            .expect("learns");
        assert_eq!(holder.name_for("/news/home", now), Some(("home".into(), home_id)));
        assert_eq!(holder.base(&all_id).map(Base::class), Some("news"));
        assert!(holder.withdraw("home"));
        assert!(!holder.holds(&home_id));
        assert_eq!(holder.name_for("/news/home", now), Some(("news".into(), all_id)));
        assert_eq!(holder.status(now).len(), 1);
        assert!(!holder.withdraw("home"), "already gone");
    }

    #[test]
    fn refuses_bases_that_are_not_what_they_claim() {
        let now = Instant::now();
        let mut holder = Holder::new(HolderConfig {
            max_base: 100,
            ..HolderConfig::default()
        });
        let bytes = b"a base".to_vec();
        let wrong = BaseId::of(b"another");
        assert!(matches!(
            holder.learn(wrong, bytes.clone(), &field("c", "/c/*"), now),
            Err(LearnError::Base(BaseError::HashMismatch { .. }))
        ));
        let mut brotli = field("c", "/c/*");
        brotli.kind = DictionaryType::Other("brotli".into());
        assert_eq!(
            holder.learn(BaseId::of(&bytes), bytes.clone(), &brotli, now),
            Err(LearnError::NotRaw)
        );
        let mut nameless = field("c", "/c/*");
        nameless.id = String::new();
        assert!(matches!(
            holder.learn(BaseId::of(&bytes), bytes.clone(), &nameless, now),
            Err(LearnError::Class(_))
        ));
        let big = vec![b'x'; 101];
        assert!(matches!(
            holder.learn(BaseId::of(&big), big, &field("c", "/c/*"), now),
            Err(LearnError::Base(BaseError::TooLarge { .. }))
        ));
        assert_eq!(holder.held(), (0, 0));
    }

    #[test]
    fn a_forgotten_base_is_no_longer_named_and_its_deltas_fail() {
        let now = Instant::now();
        let mut holder = Holder::new(HolderConfig::default());
        let base = page(0);
        let id = BaseId::of(&base);
        holder
            .learn(id, base.clone(), &field("news", "/news/*"), now)
            .expect("learns");
        let body = dcz::encode(holder.base(&id).expect("held"), &page(1), 3).expect("encodes");
        assert!(holder.forget(&id));
        assert_eq!(holder.name_for("/news/x", now), None);
        assert_eq!(
            holder.decode(&body, Some(&ReprDigest::of(&page(1))), now),
            Err(DecodeError::MissingBase(id))
        );
        assert_eq!(holder.counters().failures(DecodeFailure::MissingBase), 1);
    }
}
