//! Bases: the seed's template, held by both the origin-side encoder and the edge, named by its SHA-256
//! (seed 000 `000_d8b28882ff59355a.txt`; RFC 9842 names a dictionary the same way in `Available-Dictionary`
//! and in the `dcz` header). [`BaseStore`] keeps the bases of every class, the current one and the old ones
//! edges may still name, under an explicit retention rule.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// First four bytes of a formatted zstd dictionary (`ZSTD_MAGIC_DICTIONARY`, little-endian 0xEC30A437).
/// zstd's dictionary loaders read content starting with them as a formatted dictionary rather than raw
/// content, so a base never starts with them: both sides then use every base as raw content, as RFC 9842
/// `type=raw` and browsers do.
pub const ZSTD_DICTIONARY_MAGIC: [u8; 4] = [0x37, 0xa4, 0x30, 0xec];

/// Where bases are served (immutable, with `Use-As-Dictionary`), followed by the lowercase hex [`BaseId`].
pub const BASE_PATH_PREFIX: &str = "/.well-known/tern-delta/base/";

/// The name of a base: the SHA-256 of its bytes (RFC 9842 section 2.2, `Available-Dictionary`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BaseId([u8; 32]);

impl BaseId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        BaseId(Sha256::digest(bytes).into())
    }

    /// An id from its 32 raw bytes (as carried in the `dcz` header and `Available-Dictionary`).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        BaseId(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex_decode(text, &mut bytes).then_some(BaseId(bytes))
    }

    /// The path the base is served at: [`BASE_PATH_PREFIX`] and the lowercase hex id.
    pub fn well_known_path(&self) -> String {
        format!("{BASE_PATH_PREFIX}{self}")
    }

    /// The id named by a path made by [`BaseId::well_known_path`]; `None` for any other path.
    pub fn from_well_known_path(path: &str) -> Option<Self> {
        Self::from_hex(path.strip_prefix(BASE_PATH_PREFIX)?)
    }
}

fn hex_decode(text: &str, out: &mut [u8; 32]) -> bool {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return false;
    }
    for (slot, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (Some(high), Some(low)) = (hex_value(pair[0]), hex_value(pair[1])) else {
            return false;
        };
        *slot = high << 4 | low;
    }
    true
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for BaseId {
    /// Lowercase hex, 64 digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BaseId({})", &self.to_string()[..12])
    }
}

/// Why bytes cannot be a base.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseError {
    /// An empty base names nothing worth a delta.
    #[error("empty base")]
    Empty,
    /// Larger than the configured bound.
    #[error("base of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Starts with [`ZSTD_DICTIONARY_MAGIC`], which zstd would not read as raw content.
    #[error("base starts with the zstd dictionary magic")]
    DictionaryMagic,
    /// The bytes do not hash to the id they were announced under.
    #[error("base bytes hash to {actual}, not {expected}")]
    HashMismatch {
        /// The id the bytes came under.
        expected: BaseId,
        /// Their actual SHA-256.
        actual: BaseId,
    },
}

/// A base: immutable bytes of one page class, named by their SHA-256. Cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Base {
    id: BaseId,
    class: String,
    bytes: Bytes,
}

impl fmt::Debug for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Base")
            .field("id", &self.id)
            .field("class", &self.class)
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl Base {
    /// A base of `class` from `bytes` (at most `max_len` bytes), named by their hash.
    pub fn new(class: impl Into<String>, bytes: impl Into<Bytes>, max_len: usize) -> Result<Self, BaseError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(BaseError::Empty);
        }
        if bytes.len() > max_len {
            return Err(BaseError::TooLarge {
                len: bytes.len(),
                max: max_len,
            });
        }
        if bytes.starts_with(&ZSTD_DICTIONARY_MAGIC) {
            return Err(BaseError::DictionaryMagic);
        }
        Ok(Base {
            id: BaseId::of(&bytes),
            class: class.into(),
            bytes,
        })
    }

    /// A base received under `expected` (pushed to an edge, fetched from the well-known path): refused
    /// unless the bytes hash to it, so an edge never holds a base under a wrong name.
    pub fn verified(
        class: impl Into<String>,
        bytes: impl Into<Bytes>,
        expected: BaseId,
        max_len: usize,
    ) -> Result<Self, BaseError> {
        let base = Base::new(class, bytes, max_len)?;
        if base.id != expected {
            return Err(BaseError::HashMismatch {
                expected,
                actual: base.id,
            });
        }
        Ok(base)
    }

    /// Its name.
    pub fn id(&self) -> BaseId {
        self.id
    }

    /// The page class it was derived for.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// Its bytes (a raw-content dictionary).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false (bases are never empty); here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Bounds and retention of a [`BaseStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Bytes of all bases together.
    pub max_bytes: usize,
    /// Old (no longer current) bases kept per class, newest first.
    pub max_old_per_class: usize,
    /// An old base not named for this long is dropped.
    pub retain_unnamed: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_bytes: 256 << 20,
            max_old_per_class: 3,
            retain_unnamed: Duration::from_secs(3600),
        }
    }
}

/// Why a base was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The current bases alone (which are never evicted) would exceed the byte bound.
    #[error("{needed} bytes of current bases exceed the store limit of {max}")]
    Full {
        /// Bytes the current bases would take.
        needed: usize,
        /// The bound.
        max: usize,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    base: Base,
    added: Instant,
    last_named: Instant,
}

/// The bases of all classes, by id.
///
/// Retention rule: the current base of each class is never evicted. An old base (replaced as current) stays
/// addressable while it was named (by [`BaseStore::name`]) within [`StoreConfig::retain_unnamed`], and only
/// the [`StoreConfig::max_old_per_class`] most recently named old bases of a class are kept. When the bytes
/// exceed [`StoreConfig::max_bytes`], old bases go first, least recently named first. Evicting is never
/// wrong, only costly: an edge naming an evicted base gets a full page and then names the current base.
#[derive(Debug, Clone, Default)]
pub struct BaseStore {
    config: StoreConfig,
    entries: HashMap<BaseId, Entry>,
    current: HashMap<String, BaseId>,
    bytes: usize,
}

impl BaseStore {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Self {
        BaseStore {
            config,
            ..BaseStore::default()
        }
    }

    /// The base named `id`, without recording a use.
    pub fn get(&self, id: &BaseId) -> Option<&Base> {
        self.entries.get(id).map(|entry| &entry.base)
    }

    /// The base named `id`, recording that an edge (or a browser) named it at `now`: this is what keeps an
    /// old base addressable.
    pub fn name(&mut self, id: &BaseId, now: Instant) -> Option<&Base> {
        let entry = self.entries.get_mut(id)?;
        entry.last_named = entry.last_named.max(now);
        Some(&entry.base)
    }

    /// The current base of `class`.
    pub fn current(&self, class: &str) -> Option<&Base> {
        self.get(self.current.get(class)?)
    }

    /// How long ago the current base of `class` was stored.
    pub fn current_age(&self, class: &str, now: Instant) -> Option<Duration> {
        let entry = self.entries.get(self.current.get(class)?)?;
        Some(now.saturating_duration_since(entry.added))
    }

    /// Makes `base` the current base of its class (the previous one becomes old) and applies the retention
    /// rule. Storing the current base again changes nothing but its naming time.
    pub fn insert_current(&mut self, base: Base, now: Instant) -> Result<(), StoreError> {
        let id = base.id();
        let class = base.class().to_string();
        let needed = self.current_bytes_with(&base);
        if needed > self.config.max_bytes {
            return Err(StoreError::Full {
                needed,
                max: self.config.max_bytes,
            });
        }
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.last_named = entry.last_named.max(now);
        } else {
            self.bytes = self.bytes.saturating_add(base.len());
            self.entries.insert(
                id,
                Entry {
                    base,
                    added: now,
                    last_named: now,
                },
            );
        }
        self.current.insert(class, id);
        self.expire(now);
        Ok(())
    }

    /// Bytes the current bases would take with `base` current for its class.
    fn current_bytes_with(&self, base: &Base) -> usize {
        let others: usize = self
            .current
            .iter()
            .filter(|(class, _)| class.as_str() != base.class())
            .filter_map(|(_, id)| self.entries.get(id))
            .map(|entry| entry.base.len())
            .sum();
        others.saturating_add(base.len())
    }

    /// Applies the retention rule at `now`; returns the ids dropped.
    pub fn expire(&mut self, now: Instant) -> Vec<BaseId> {
        let mut old: Vec<(BaseId, String, Instant)> = self
            .entries
            .iter()
            .filter(|(id, entry)| self.current.get(entry.base.class()) != Some(id))
            .map(|(id, entry)| (*id, entry.base.class().to_string(), entry.last_named))
            .collect();
        // Most recently named first, so counting per class keeps the newest.
        old.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        let mut kept_per_class: HashMap<String, usize> = HashMap::new();
        let mut dropped = Vec::new();
        let mut survivors = Vec::new();
        for (id, class, last_named) in old {
            let kept = kept_per_class.entry(class).or_default();
            let unnamed_for = now.saturating_duration_since(last_named);
            if *kept >= self.config.max_old_per_class || unnamed_for > self.config.retain_unnamed {
                dropped.push(id);
            } else {
                *kept += 1;
                survivors.push(id);
            }
        }
        for id in &dropped {
            self.remove(id);
        }
        // Over the byte bound: least recently named old bases go first.
        while self.bytes > self.config.max_bytes {
            let Some(id) = survivors.pop() else { break };
            self.remove(&id);
            dropped.push(id);
        }
        dropped
    }

    /// Drops `id` (a current base too: its class then has none). Returns whether it was there.
    pub fn remove(&mut self, id: &BaseId) -> bool {
        let Some(entry) = self.entries.remove(id) else {
            return false;
        };
        self.bytes = self.bytes.saturating_sub(entry.base.len());
        if self.current.get(entry.base.class()) == Some(id) {
            self.current.remove(entry.base.class());
        }
        true
    }

    /// Number of bases held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no base is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of all bases held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Ids of all bases held, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = &BaseId> {
        self.entries.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base(class: &str, text: &str) -> Base {
        Base::new(class, text.as_bytes().to_vec(), 1 << 20).expect("valid base")
    }

    #[test]
    fn id_is_sha256_and_round_trips_through_hex_and_path() {
        let id = BaseId::of(b"abc");
        assert_eq!(
            id.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(BaseId::from_hex(&id.to_string()), Some(id));
        assert_eq!(BaseId::from_hex(&id.to_string().to_uppercase()), Some(id));
        assert_eq!(BaseId::from_well_known_path(&id.well_known_path()), Some(id));
        assert_eq!(BaseId::from_hex("zz"), None);
        assert_eq!(BaseId::from_hex(&"g".repeat(64)), None);
        assert_eq!(BaseId::from_well_known_path("/other/path"), None);
    }

    #[test]
    fn refused_bases() {
        assert_eq!(Base::new("c", Vec::new(), 10), Err(BaseError::Empty));
        assert_eq!(
            Base::new("c", vec![b'x'; 11], 10),
            Err(BaseError::TooLarge { len: 11, max: 10 })
        );
        let mut magic = ZSTD_DICTIONARY_MAGIC.to_vec();
        magic.extend_from_slice(b"rest");
        assert_eq!(Base::new("c", magic, 10), Err(BaseError::DictionaryMagic));
        let wrong = BaseId::of(b"other");
        assert!(matches!(
            Base::verified("c", b"page".to_vec(), wrong, 10),
            Err(BaseError::HashMismatch { .. })
        ));
        let right = BaseId::of(b"page");
        assert_eq!(
            Base::verified("c", b"page".to_vec(), right, 10).map(|b| b.id()),
            Ok(right)
        );
    }

    #[test]
    fn old_bases_stay_while_named_and_go_when_not() {
        let start = Instant::now();
        let mut store = BaseStore::new(StoreConfig {
            max_bytes: 1 << 20,
            max_old_per_class: 2,
            retain_unnamed: Duration::from_secs(60),
        });
        let first = base("news", "first");
        let second = base("news", "second");
        store.insert_current(first.clone(), start).expect("fits");
        store.insert_current(second.clone(), start).expect("fits");
        assert_eq!(store.current("news").map(Base::id), Some(second.id()));
        assert!(store.get(&first.id()).is_some(), "the old base stays addressable");

        // Named 50 s later, so still there at 100 s; unnamed after that, gone at 111 s.
        assert!(store.name(&first.id(), start + Duration::from_secs(50)).is_some());
        assert!(store.expire(start + Duration::from_secs(100)).is_empty());
        assert_eq!(store.expire(start + Duration::from_secs(111)), vec![first.id()]);
        assert!(store.get(&first.id()).is_none());
        // The current base is never dropped, however long unnamed.
        assert!(store.expire(start + Duration::from_secs(10_000)).is_empty());
        assert_eq!(
            store.current_age("news", start + Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn only_the_newest_old_bases_of_a_class_are_kept() {
        let now = Instant::now();
        let mut store = BaseStore::new(StoreConfig {
            max_old_per_class: 1,
            ..StoreConfig::default()
        });
        let ids: Vec<BaseId> = (0..4)
            .map(|n| {
                let base = base("c", &format!("base {n}"));
                let id = base.id();
                store.insert_current(base, now + Duration::from_secs(n)).expect("fits");
                id
            })
            .collect();
        assert_eq!(store.len(), 2);
        assert!(store.get(&ids[3]).is_some() && store.get(&ids[2]).is_some());
    }

    #[test]
    fn current_bases_that_do_not_fit_are_refused() {
        let now = Instant::now();
        let mut store = BaseStore::new(StoreConfig {
            max_bytes: 10,
            ..StoreConfig::default()
        });
        store.insert_current(base("a", "123456"), now).expect("fits");
        assert_eq!(
            store.insert_current(base("b", "123456"), now),
            Err(StoreError::Full { needed: 12, max: 10 })
        );
        // Replacing a's base with a same-sized one fits: the old one is evicted for bytes.
        store.insert_current(base("a", "abcdef"), now).expect("fits");
        assert_eq!(store.bytes(), 6);
        assert_eq!(store.len(), 1);
    }

    proptest! {
        #[test]
        fn bounds_hold_and_current_bases_survive(
            ops in proptest::collection::vec((0u8..3, 1usize..40, 0u64..200, any::<bool>()), 1..60),
        ) {
            let start = Instant::now();
            let config = StoreConfig {
                max_bytes: 100,
                max_old_per_class: 2,
                retain_unnamed: Duration::from_secs(50),
            };
            let mut store = BaseStore::new(config.clone());
            let mut at = start;
            for (n, (class, len, advance, name_first)) in ops.into_iter().enumerate() {
                at += Duration::from_secs(advance);
                let class = format!("c{class}");
                if name_first {
                    let ids: Vec<BaseId> = store.ids().copied().collect();
                    if let Some(id) = ids.first() {
                        store.name(id, at);
                    }
                }
                let mut bytes = format!("{n}:").into_bytes();
                bytes.resize(len.max(bytes.len()), b'x');
                let base = Base::new(class.clone(), bytes, 1000).expect("valid");
                let id = base.id();
                if store.insert_current(base, at).is_ok() {
                    prop_assert_eq!(store.current(&class).map(Base::id), Some(id));
                }
                prop_assert!(store.bytes() <= config.max_bytes);
                let total: usize = store.ids().filter_map(|id| store.get(id)).map(Base::len).sum();
                prop_assert_eq!(total, store.bytes());
            }
        }
    }
}
