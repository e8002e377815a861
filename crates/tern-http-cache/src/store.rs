//! The object store: a size-bounded memory tier over an optional size-bounded disk tier, a catalog that
//! finds the variants of a URL, and the indexes that let a prefix or surrogate-key purge touch only the
//! objects it names.
//!
//! With a cache directory every object is written to disk (so it survives restarts) and objects up to
//! `max_memory_object` bytes are also kept in memory; the disk tier's size is the cache size. Without a
//! cache directory the memory tier is the whole cache. Both tiers evict with [`S3Fifo`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{self, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use crate::disk::{self, DiskTier};
use crate::inflight::{FetchTicket, PurgeLog, PurgeScope};
use crate::key::{IdHashing, ObjectId, vary_matches};
use crate::meta::Meta;
use crate::policy::{Freshness, PolicyConfig};
use crate::s3fifo::S3Fifo;

/// Settings of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of the disk tier; `None` keeps everything in memory.
    pub dir: Option<PathBuf>,
    /// Total bytes of cached objects (the disk tier's size, or the memory tier's without a directory).
    pub capacity: u64,
    /// Bytes of the memory tier when there is a disk tier.
    pub memory_capacity: u64,
    /// Largest body kept in memory; larger ones live on disk only (or are not cached without a disk tier).
    pub max_memory_object: u64,
    /// Caching policy, used to compute each object's freshness.
    pub policy: PolicyConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: None,
            capacity: 256 << 20,
            memory_capacity: 256 << 20,
            max_memory_object: 8 << 20,
            policy: PolicyConfig::default(),
        }
    }
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The cache directory could not be used.
    #[error("cache directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The stored body no longer matches its checksum; the object was dropped.
    #[error("stored body of {0} failed its checksum and was dropped")]
    Corrupt(String),
    /// The object vanished (evicted or purged) before its body could be opened.
    #[error("object was evicted before it could be read")]
    Gone,
    /// The body was larger than the cache can hold or a write failed; nothing was stored.
    #[error("object not stored: {0}")]
    NotStored(&'static str),
    /// A purge matched the response while it was being fetched; it was not stored.
    #[error("purged while it was being fetched; not stored")]
    Purged,
    /// A background task failed.
    #[error("store task failed: {0}")]
    Task(String),
}

/// One stored variant: its record and the freshness facts computed from it.
#[derive(Debug)]
pub struct CachedObject {
    /// Its id.
    pub id: ObjectId,
    /// Its record.
    pub meta: Meta,
    /// Freshness facts.
    pub freshness: Freshness,
    verified: AtomicBool,
}

impl CachedObject {
    fn new(id: ObjectId, meta: Meta, config: &PolicyConfig, verified: bool) -> Self {
        let freshness = Freshness::of(
            meta.status,
            &meta.headers,
            meta.request_time,
            meta.response_time,
            config,
        );
        Self::with_freshness(id, meta, freshness, verified)
    }

    fn with_freshness(id: ObjectId, meta: Meta, freshness: Freshness, verified: bool) -> Self {
        CachedObject {
            id,
            meta,
            freshness,
            verified: AtomicBool::new(verified),
        }
    }
}

/// A stored variant found for a request.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The object.
    pub object: Arc<CachedObject>,
    memory: Option<Bytes>,
}

/// Where to read a body from.
#[derive(Debug)]
pub enum BodySource {
    /// The whole body, in memory.
    Memory(Bytes),
    /// An open file holding the body at `offset`.
    File {
        /// The open file (kept open, so eviction meanwhile does not matter).
        file: std::fs::File,
        /// Offset of the first body byte.
        offset: u64,
        /// Body length.
        len: u64,
    },
}

/// How a purge treats what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PurgeMode {
    /// Delete the objects (the default).
    #[default]
    Hard,
    /// Mark them stale: they may still be served stale while they are revalidated.
    Soft,
}

/// What a purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCount {
    /// Objects deleted.
    pub removed: usize,
    /// Objects marked stale.
    pub marked: usize,
}

impl std::ops::AddAssign for PurgeCount {
    fn add_assign(&mut self, other: Self) {
        self.removed += other.removed;
        self.marked += other.marked;
    }
}

/// Figures about the store for `/metrics` and `/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreStats {
    /// Objects held.
    pub objects: usize,
    /// Bytes in the memory tier.
    pub memory_bytes: u64,
    /// Capacity of the memory tier.
    pub memory_capacity: u64,
    /// Bytes in the disk tier.
    pub disk_bytes: u64,
    /// Capacity of the disk tier (0 without one).
    pub disk_capacity: u64,
    /// Objects evicted from memory since start.
    pub memory_evictions: u64,
    /// Objects evicted from disk since start.
    pub disk_evictions: u64,
    /// Objects dropped because their bytes failed a checksum.
    pub corrupt_dropped: u64,
}

struct Slot {
    object: Arc<CachedObject>,
    memory: Option<Bytes>,
    on_disk: bool,
}

struct Catalog {
    /// The stored variants of each URL (primary key), in place: a hit is one lookup in one large table
    /// (with the indexes sized for every object the cache can hold, each table a hit visits costs cache and
    /// TLB misses; an index of ids beside a table of slots made it two).
    by_url: HashMap<Arc<str>, Vec<Slot>>,
    /// The URL each object is stored under: the way from an id (an eviction, a surrogate key) to its slot.
    url_of: HashMap<ObjectId, Arc<str>, IdHashing>,
    urls: BTreeSet<String>,
    by_tag: HashMap<String, HashSet<ObjectId>>,
    memory: S3Fifo,
    disk: Option<S3Fifo>,
}

impl Catalog {
    /// The slot of object `id`.
    fn slot(&self, id: &ObjectId) -> Option<&Slot> {
        let url = self.url_of.get(id)?;
        self.by_url.get(url)?.iter().find(|slot| slot.object.id == *id)
    }

    /// The slot of object `id`, to change.
    fn slot_mut(&mut self, id: &ObjectId) -> Option<&mut Slot> {
        let url = self.url_of.get(id)?;
        self.by_url.get_mut(url)?.iter_mut().find(|slot| slot.object.id == *id)
    }
}

/// Objects a cache of `capacity` bytes is sized for: one per 4 KiB, between 1,024 and 4 Mi.
fn expected_objects(capacity: u64) -> usize {
    (capacity / 4096).clamp(1024, 4 << 20) as usize
}

/// Told when the store comes to hold a URL (primary key) it did not hold (`true`), or drops the last
/// variant of one (`false`) by eviction, purge or replacement. A cache community feeds its directory of
/// holders with it (seed `003_590cbd812baaa7e3.txt`). It is called under the catalog's lock: it must
/// return at once (queue the change) and never call back into the store.
pub type HoldingsListener = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// The cache's object store.
pub struct Store {
    config: StoreConfig,
    disk: Option<DiskTier>,
    catalog: RwLock<Catalog>,
    /// Serialises renames and record rewrites of one object id (striped by the id's first byte).
    file_locks: Vec<Mutex<()>>,
    /// Purges that fills in flight must honour.
    purges: Arc<PurgeLog>,
    memory_evictions: AtomicU64,
    disk_evictions: AtomicU64,
    corrupt_dropped: AtomicU64,
    /// Who hears of URLs held and dropped ([`Store::set_holdings_listener`]).
    holdings: OnceLock<HoldingsListener>,
    /// Objects received before this time (milliseconds since the Unix epoch; 0: none) are validated with
    /// upstream before use ([`Store::require_validation_before`]).
    validate_before_ms: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store; with a cache directory, rebuilds the catalog from the files there (blocking: call
    /// it before serving or from `spawn_blocking`).
    pub fn open(config: StoreConfig) -> Result<Arc<Store>, StoreError> {
        let disk = match &config.dir {
            Some(dir) => Some(DiskTier::open(dir).map_err(|source| StoreError::Directory {
                path: dir.clone(),
                source,
            })?),
            None => None,
        };
        let memory_capacity = if disk.is_some() {
            config.memory_capacity
        } else {
            config.capacity
        };
        // The indexes are sized for the objects the cache can hold, as nginx sizes its keys zone: a hash map
        // that doubles while serving moves every entry at once, and with hundreds of thousands of objects
        // that stalled the event loop for tens of milliseconds (the p99 of `tern-lab bench edge`'s miss run).
        // Only the control bytes are touched up front; the rest is faulted in as objects arrive.
        let expected = expected_objects(config.capacity);
        let catalog = Catalog {
            by_url: HashMap::with_capacity(expected),
            url_of: HashMap::with_capacity_and_hasher(expected, IdHashing::default()),
            urls: BTreeSet::new(),
            by_tag: HashMap::new(),
            memory: S3Fifo::with_expected(memory_capacity, expected_objects(memory_capacity)),
            disk: disk.as_ref().map(|_| S3Fifo::with_expected(config.capacity, expected)),
        };
        let store = Arc::new(Store {
            config,
            disk,
            catalog: RwLock::new(catalog),
            file_locks: (0..64).map(|_| Mutex::new(())).collect(),
            purges: Arc::new(PurgeLog::default()),
            memory_evictions: AtomicU64::new(0),
            disk_evictions: AtomicU64::new(0),
            corrupt_dropped: AtomicU64::new(0),
            holdings: OnceLock::new(),
            validate_before_ms: AtomicU64::new(0),
        });
        store.rebuild()?;
        Ok(store)
    }

    fn rebuild(&self) -> Result<(), StoreError> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let dir = self.config.dir.clone().unwrap_or_default();
        let (mut found, dropped) = disk
            .scan()
            .map_err(|source| StoreError::Directory { path: dir, source })?;
        for path in &dropped {
            warn!(path = %path.display(), "dropped damaged cache file");
        }
        self.corrupt_dropped.fetch_add(dropped.len() as u64, Ordering::Relaxed);
        // Oldest first, so that if the cache shrank the oldest go first.
        found.sort_by_key(|f| f.meta.response_time);
        let count = found.len();
        for item in found {
            let object = Arc::new(CachedObject::new(item.id, item.meta, &self.config.policy, false));
            let deleted = self.insert(object, None, Some(item.file_len));
            self.delete_files(deleted);
        }
        debug!(objects = count, "rebuilt cache index from disk");
        Ok(())
    }

    /// Sets who hears of URLs held and dropped from now on; once per store (a second listener is refused
    /// and `false` returned). URLs held before are listed by [`Store::urls`].
    pub fn set_holdings_listener(&self, listener: HoldingsListener) -> bool {
        self.holdings.set(listener).is_ok()
    }

    /// From now on, every object received before `at` is validated with upstream before it is used (a
    /// conditional request; a `304` refreshes it), whatever its freshness: for a cache that may have missed
    /// purges, such as a community member that was away (seed 002). Objects received after `at` are not
    /// affected. Not persisted: a restarted edge sets it again.
    pub fn require_validation_before(&self, at: SystemTime) {
        let ms = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        self.validate_before_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Whether `meta`'s object must be validated before use ([`Store::require_validation_before`]).
    pub fn needs_validation(&self, meta: &Meta) -> bool {
        let before = self.validate_before_ms.load(Ordering::Relaxed);
        if before == 0 {
            return false;
        }
        let received = meta
            .response_time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        received < before
    }

    /// The URLs (primary keys) held now, at most `limit` of them, in key order.
    pub fn urls(&self, limit: usize) -> Vec<String> {
        self.read().urls.iter().take(limit).cloned().collect()
    }

    fn tell_holdings(&self, url: &str, held: bool) {
        if let Some(listener) = self.holdings.get() {
            listener(url, held);
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Catalog> {
        self.catalog.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The policy configuration objects' freshness is computed with.
    pub fn policy(&self) -> &PolicyConfig {
        &self.config.policy
    }

    /// Takes a ticket for a fetch about to go upstream; pass it to [`Store::begin_fill`]. Purges after this
    /// moment that match the response keep it from being stored as fresh (see [`crate::inflight`]).
    pub fn fetch_ticket(&self) -> FetchTicket {
        self.purges.ticket()
    }

    /// Whether a purge since `generation` may have matched `primary` (a surrogate-key purge counts, as the
    /// response's keys are not known yet). A request must not wait for a fetch that began before such a
    /// purge.
    pub fn purged_since(&self, generation: u64, primary: &str) -> bool {
        self.purges.purged_since(generation, primary, None).is_some()
    }

    /// Finds the most recent stored variant of `primary` that `request` selects, and records the hit.
    pub fn find(&self, primary: &str, request: &HeaderMap) -> Option<Hit> {
        let catalog = self.read();
        let slot = catalog
            .by_url
            .get(primary)?
            .iter()
            .filter(|slot| vary_matches(&slot.object.meta.vary, request))
            .max_by_key(|slot| slot.object.meta.response_time)?;
        let id = slot.object.id;
        if slot.memory.is_some() {
            catalog.memory.touch(&id);
        }
        if let Some(policy) = &catalog.disk {
            policy.touch(&id);
        }
        Some(Hit {
            object: slot.object.clone(),
            memory: slot.memory.clone(),
        })
    }

    /// Every stored variant of `primary` (for invalidation and inspection).
    pub fn variants(&self, primary: &str) -> Vec<Arc<CachedObject>> {
        let catalog = self.read();
        catalog
            .by_url
            .get(primary)
            .map(|slots| slots.iter().map(|s| s.object.clone()).collect())
            .unwrap_or_default()
    }

    /// Opens the body of a hit. A disk body not yet checked since start-up is hashed first; if it fails, the
    /// object is dropped and [`StoreError::Corrupt`] returned so the caller fetches it anew.
    pub async fn body(self: &Arc<Self>, hit: &Hit) -> Result<BodySource, StoreError> {
        if let Some(bytes) = &hit.memory {
            return Ok(BodySource::Memory(bytes.clone()));
        }
        let Some(disk) = &self.disk else {
            return Err(StoreError::Gone);
        };
        let object = hit.object.clone();
        if !object.verified.load(Ordering::Acquire) {
            let path = disk.object_path(&object.id);
            let check_object = object.clone();
            let store = self.clone();
            let verified = tokio::task::spawn_blocking(move || {
                store
                    .disk
                    .as_ref()
                    .map(|d| d.verify_body(&check_object.id, &check_object.meta))
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
            match verified {
                Some(Ok(true)) => object.verified.store(true, Ordering::Release),
                Some(Ok(false)) => {
                    warn!(url = %object.meta.url, path = %path.display(), "cached body failed its checksum; dropping it");
                    self.corrupt_dropped.fetch_add(1, Ordering::Relaxed);
                    self.remove_if_current(&object);
                    return Err(StoreError::Corrupt(object.meta.url.clone()));
                }
                Some(Err(_)) | None => {
                    self.remove_if_current(&object);
                    return Err(StoreError::Gone);
                }
            }
            if object.meta.body_len <= self.config.max_memory_object {
                self.promote(&object).await;
            }
        }
        let path = disk.object_path(&object.id);
        let len = object.meta.body_len;
        let opened = tokio::task::spawn_blocking(move || std::fs::File::open(path))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        match opened {
            Ok(file) => Ok(BodySource::File {
                file,
                offset: disk::HEAD_LEN,
                len,
            }),
            Err(_) => {
                self.remove_if_current(&object);
                Err(StoreError::Gone)
            }
        }
    }

    /// Loads a small disk object into the memory tier after it was checked.
    async fn promote(&self, object: &Arc<CachedObject>) {
        let Some(disk) = &self.disk else {
            return;
        };
        let path = disk.object_path(&object.id);
        let len = object.meta.body_len;
        let read = tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
            use std::io::Read;
            let mut file = std::fs::File::open(path)?;
            file.seek(SeekFrom::Start(disk::HEAD_LEN))?;
            let mut buffer = Vec::with_capacity(len as usize);
            file.take(len).read_to_end(&mut buffer)?;
            Ok(Bytes::from(buffer))
        })
        .await;
        let Ok(Ok(bytes)) = read else {
            return;
        };
        if blake3::hash(&bytes).as_bytes() != &object.meta.body_hash {
            return;
        }
        let mut catalog = self.write();
        let Some(slot) = catalog.slot(&object.id) else {
            return;
        };
        if !Arc::ptr_eq(&slot.object, object) || slot.memory.is_some() {
            return;
        }
        let weight = bytes.len() as u64 + object.meta.weight();
        let evicted = catalog.memory.insert(object.id, weight);
        self.drop_memory(&mut catalog, evicted);
        if catalog.memory.contains(&object.id)
            && let Some(slot) = catalog.slot_mut(&object.id)
        {
            slot.memory = Some(bytes);
        }
    }

    /// Starts storing a response fetched under `ticket` (taken before the request went upstream), whose
    /// freshness the policy computed from `meta` ([`crate::policy::Storing`]). Write its body with
    /// [`Fill::write`] and finish with [`Fill::finish`]; dropping the fill stores nothing.
    pub async fn begin_fill(
        self: &Arc<Self>,
        id: ObjectId,
        meta: Meta,
        freshness: Freshness,
        expected_len: Option<u64>,
        ticket: FetchTicket,
    ) -> Fill {
        let memory_limit = if self.disk.is_some() {
            self.config.max_memory_object
        } else {
            self.config.max_memory_object.min(self.config.capacity)
        };
        let too_big = match expected_len {
            Some(len) => len > self.config.capacity || (self.disk.is_none() && len > memory_limit),
            None => false,
        };
        let mut fill = Fill {
            store: self.clone(),
            id,
            meta,
            // The hash guards bodies read back from disk after a restart; a memory-only store has none to
            // check, and skips it (1 KB misses spent about a twentieth of their user-space CPU on it).
            hasher: self.disk.is_some().then(|| Box::new(blake3::Hasher::new())),
            len: 0,
            memory_limit,
            memory: None,
            file: None,
            temp_path: None,
            failure: None,
            ticket,
            freshness,
        };
        if too_big {
            fill.failure = Some("larger than the cache allows");
            return fill;
        }
        if expected_len.is_none_or(|len| len <= memory_limit) {
            fill.memory = Some(BytesMut::with_capacity(expected_len.unwrap_or(0) as usize));
        }
        if let Some(disk) = &self.disk {
            let temp_path = disk.temp_path();
            match tokio::fs::File::create(&temp_path).await {
                Ok(mut file) => {
                    if file.write_all(&disk::head(0)).await.is_ok() {
                        fill.file = Some(file);
                    }
                    fill.temp_path = Some(temp_path);
                }
                Err(error) => warn!(%error, path = %temp_path.display(), "cannot create cache temp file"),
            }
        }
        if fill.memory.is_none() && fill.file.is_none() {
            fill.failure = Some("no tier can take it");
        }
        fill
    }

    /// Inserts a finished object; returns the ids whose files must be deleted.
    fn insert(&self, object: Arc<CachedObject>, memory: Option<Bytes>, disk_len: Option<u64>) -> Vec<ObjectId> {
        let mut catalog = self.write();
        self.insert_locked(&mut catalog, object, memory, disk_len)
    }

    /// Inserts a fill's object unless a purge newer than its ticket's generation `fetched_at` matched it
    /// meanwhile. The check and the
    /// insertion happen under the catalog lock that purges also take, so no purge falls between them. A
    /// refused object is unlinked with whatever its id held (its file was already renamed over it).
    fn insert_fill(
        &self,
        object: Arc<CachedObject>,
        memory: Option<Bytes>,
        disk_len: Option<u64>,
        fetched_at: u64,
    ) -> Result<Vec<ObjectId>, StoreError> {
        let mut catalog = self.write();
        let meta = &object.meta;
        let purged = self
            .purges
            .purged_since(fetched_at, &meta.url, Some(&meta.surrogate_keys));
        // A soft purge seen by the check in `finish` is already in `meta.invalidated`; one that came after
        // it (the record on disk says fresh) is rare enough to be treated as hard.
        let refuse = match purged {
            Some(PurgeMode::Hard) => true,
            Some(PurgeMode::Soft) => !meta.invalidated,
            None => false,
        };
        if refuse {
            let had_slot = self.unlink(&mut catalog, &object.id).is_some();
            debug!(url = %meta.url, had_slot, "fill purged while it was being fetched; not stored");
            return Err(StoreError::Purged);
        }
        Ok(self.insert_locked(&mut catalog, object, memory, disk_len))
    }

    fn insert_locked(
        &self,
        catalog: &mut Catalog,
        object: Arc<CachedObject>,
        memory: Option<Bytes>,
        disk_len: Option<u64>,
    ) -> Vec<ObjectId> {
        let id = object.id;
        // A new version replaces the old in place: its file was already renamed over the old one.
        self.unlink(catalog, &id);
        let mut delete = Vec::new();
        let on_disk = match (disk_len, catalog.disk.as_mut()) {
            (Some(len), Some(policy)) if policy.fits(len) => {
                let evicted = policy.insert(id, len);
                self.disk_evictions.fetch_add(evicted.len() as u64, Ordering::Relaxed);
                for victim in evicted {
                    if self.unlink(catalog, &victim).is_some() {
                        delete.push(victim);
                    }
                }
                true
            }
            (Some(_), Some(_)) => {
                delete.push(id);
                false
            }
            _ => false,
        };
        let mut kept_memory = None;
        if let Some(bytes) = memory {
            let weight = bytes.len() as u64 + object.meta.weight();
            if catalog.memory.fits(weight) {
                let evicted = catalog.memory.insert(id, weight);
                self.drop_memory(catalog, evicted);
                kept_memory = Some(bytes);
            }
        }
        if !on_disk && kept_memory.is_none() {
            return delete;
        }
        for tag in &object.meta.surrogate_keys {
            catalog.by_tag.entry(tag.clone()).or_default().insert(id);
        }
        let url: Arc<str> = match catalog.by_url.get_key_value(object.meta.url.as_str()) {
            Some((url, _)) => url.clone(),
            None => Arc::from(object.meta.url.as_str()),
        };
        catalog.url_of.insert(id, url.clone());
        // Most URLs have one variant; a default Vec would reserve four slots on the first push.
        let variants = catalog
            .by_url
            .entry(url.clone())
            .or_insert_with(|| Vec::with_capacity(1));
        let first = variants.is_empty();
        // `unlink` above took out any slot of this id.
        variants.push(Slot {
            object,
            memory: kept_memory,
            on_disk,
        });
        if first {
            self.tell_holdings(&url, true);
            catalog.urls.insert(url.to_string());
        }
        delete
    }

    /// Drops memory bodies the memory tier evicted: with a disk tier the object stays on disk, without
    /// one it is gone.
    fn drop_memory(&self, catalog: &mut Catalog, evicted: Vec<ObjectId>) {
        self.memory_evictions.fetch_add(evicted.len() as u64, Ordering::Relaxed);
        for victim in evicted {
            let keep = match catalog.slot_mut(&victim) {
                Some(slot) if slot.on_disk => {
                    slot.memory = None;
                    true
                }
                _ => false,
            };
            if !keep {
                self.unlink(catalog, &victim);
            }
        }
    }

    /// Removes an object from the catalog and both policies. Returns its slot.
    fn unlink(&self, catalog: &mut Catalog, id: &ObjectId) -> Option<Slot> {
        let url = catalog.url_of.remove(id)?;
        catalog.memory.remove(id);
        if let Some(policy) = catalog.disk.as_mut() {
            policy.remove(id);
        }
        let variants = catalog.by_url.get_mut(&url)?;
        let index = variants.iter().position(|slot| slot.object.id == *id)?;
        let slot = variants.remove(index);
        if variants.is_empty() {
            catalog.by_url.remove(&url);
            catalog.urls.remove(&*url);
            self.tell_holdings(&url, false);
        }
        for tag in &slot.object.meta.surrogate_keys {
            if let Some(ids) = catalog.by_tag.get_mut(tag) {
                ids.remove(id);
                if ids.is_empty() {
                    catalog.by_tag.remove(tag);
                }
            }
        }
        Some(slot)
    }

    /// Removes `object` if it is still the stored version of its id (and deletes its file).
    pub fn remove_if_current(&self, object: &Arc<CachedObject>) {
        let removed = {
            let mut catalog = self.write();
            let current = catalog.slot(&object.id).is_some_and(|s| Arc::ptr_eq(&s.object, object));
            if current {
                self.unlink(&mut catalog, &object.id)
            } else {
                None
            }
        };
        if let Some(slot) = removed
            && slot.on_disk
        {
            self.delete_files(vec![object.id]);
        }
    }

    fn delete_files(&self, ids: Vec<ObjectId>) {
        if ids.is_empty() || self.disk.is_none() {
            return;
        }
        let paths: Vec<PathBuf> = ids
            .iter()
            .filter_map(|id| self.disk.as_ref().map(|d| d.object_path(id)))
            .collect();
        let remove = move || {
            for path in paths {
                let _ = std::fs::remove_file(path);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }

    /// Updates a stored object's header fields from a 304 response (RFC 9111 section 4.3.4) and its
    /// timing, keeping the body. Returns the refreshed object.
    pub fn refresh(
        &self,
        object: &Arc<CachedObject>,
        not_modified: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Arc<CachedObject> {
        let mut meta = object.meta.clone();
        let names: HashSet<&http::HeaderName> = not_modified.keys().collect();
        for name in names {
            if name == header::CONTENT_LENGTH {
                continue;
            }
            meta.headers.remove(name);
            for value in not_modified.get_all(name) {
                // Owned copies: a slice would keep the 304's whole read buffer alive (`meta::detached`).
                let owned = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
                meta.headers.append(name.clone(), owned);
            }
        }
        meta.request_time = request_time;
        meta.response_time = response_time;
        meta.invalidated = false;
        self.replace_meta(object, meta).unwrap_or_else(|| object.clone())
    }

    /// Replaces the record of `object` if it is still current, in memory and on disk.
    fn replace_meta(&self, object: &Arc<CachedObject>, meta: Meta) -> Option<Arc<CachedObject>> {
        let verified = object.verified.load(Ordering::Acquire);
        let updated = Arc::new(CachedObject::new(object.id, meta, &self.config.policy, verified));
        let on_disk = {
            let mut catalog = self.write();
            let slot = catalog
                .slot_mut(&object.id)
                .filter(|s| Arc::ptr_eq(&s.object, object))?;
            slot.object = updated.clone();
            let on_disk = slot.on_disk;
            let old_tags: HashSet<&String> = object.meta.surrogate_keys.iter().collect();
            let new_tags: HashSet<&String> = updated.meta.surrogate_keys.iter().collect();
            if old_tags != new_tags {
                for tag in old_tags.difference(&new_tags) {
                    if let Some(ids) = catalog.by_tag.get_mut(*tag) {
                        ids.remove(&object.id);
                    }
                }
                for tag in new_tags.difference(&old_tags) {
                    catalog.by_tag.entry((*tag).clone()).or_default().insert(object.id);
                }
            }
            on_disk
        };
        if on_disk && self.disk.is_some() {
            let persisted = updated.clone();
            // Rewriting the record is a small write after the body; doing it here keeps the file and the
            // catalog in step (a restart sees the refreshed headers or the soft purge).
            let _guard = self.file_lock(&persisted.id);
            if let Some(disk) = &self.disk
                && let Err(error) = disk.rewrite_record(&persisted.id, &persisted.meta)
            {
                debug!(%error, url = %persisted.meta.url, "cache record not rewritten");
            }
        }
        Some(updated)
    }

    fn file_lock(&self, id: &ObjectId) -> std::sync::MutexGuard<'_, ()> {
        let stripe = id.0[0] as usize % self.file_locks.len();
        self.file_locks[stripe]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Purges every variant of a URL.
    pub fn purge_url(&self, primary: &str, mode: PurgeMode) -> PurgeCount {
        self.purge(PurgeScope::Url(primary.to_string()), mode, |catalog| {
            catalog
                .by_url
                .get(primary)
                .map(|slots| slots.iter().map(|slot| slot.object.id).collect())
                .unwrap_or_default()
        })
    }

    /// Purges every variant of `base` (a primary key without a query) and of `base` with any query:
    /// `http://h/a` purges `http://h/a?v=1` too, never `http://h/ab`. A changed file is served under
    /// every query its links carry (`?utm_source=`, `?v=`), each a cache object of its own. Its exact
    /// entry and a range of the sorted URL index (`base?`), not a scan.
    pub fn purge_url_any_query(&self, base: &str, mode: PurgeMode) -> PurgeCount {
        let base = base.split_once('?').map_or(base, |(path, _)| path);
        let with_query = format!("{base}?");
        self.purge(PurgeScope::UrlAnyQuery(base.to_string()), mode, |catalog| {
            let exact = catalog.by_url.get(base).into_iter().flatten();
            let queried = catalog
                .urls
                .range::<str, _>((
                    std::ops::Bound::Included(with_query.as_str()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|url| url.starts_with(&with_query))
                .filter_map(|url| catalog.by_url.get(url.as_str()))
                .flatten();
            exact.chain(queried).map(|slot| slot.object.id).collect()
        })
    }

    /// Purges every URL starting with `prefix` (a range of the sorted URL index, not a scan).
    pub fn purge_prefix(&self, prefix: &str, mode: PurgeMode) -> PurgeCount {
        self.purge(PurgeScope::Prefix(prefix.to_string()), mode, |catalog| {
            catalog
                .urls
                .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
                .take_while(|url| url.starts_with(prefix))
                .filter_map(|url| catalog.by_url.get(url.as_str()))
                .flatten()
                .map(|slot| slot.object.id)
                .collect()
        })
    }

    /// Purges every object tagged with a surrogate key.
    pub fn purge_key(&self, key: &str, mode: PurgeMode) -> PurgeCount {
        self.purge(PurgeScope::SurrogateKey(key.to_string()), mode, |catalog| {
            catalog
                .by_tag
                .get(key)
                .map(|ids| ids.iter().copied().collect())
                .unwrap_or_default()
        })
    }

    /// Records the purge for fills in flight and applies it to what is stored, under one catalog lock so a
    /// fill is either stored before the purge (and purged) or checked after it (and refused).
    fn purge(&self, scope: PurgeScope, mode: PurgeMode, select: impl FnOnce(&Catalog) -> Vec<ObjectId>) -> PurgeCount {
        let mut count = PurgeCount::default();
        let mut deleted = Vec::new();
        let mut to_mark = Vec::new();
        {
            let mut catalog = self.write();
            self.purges.record(scope, mode);
            let ids = select(&catalog);
            for id in ids {
                match mode {
                    PurgeMode::Hard => {
                        if let Some(slot) = self.unlink(&mut catalog, &id) {
                            count.removed += 1;
                            if slot.on_disk {
                                deleted.push(id);
                            }
                        }
                    }
                    PurgeMode::Soft => {
                        if let Some(slot) = catalog.slot(&id) {
                            to_mark.push(slot.object.clone());
                        }
                    }
                }
            }
        }
        self.delete_files(deleted);
        for object in to_mark {
            let mut meta = object.meta.clone();
            meta.invalidated = true;
            if self.replace_meta(&object, meta).is_some() {
                count.marked += 1;
            }
        }
        count
    }

    /// Figures about the store.
    pub fn stats(&self) -> StoreStats {
        let catalog = self.read();
        StoreStats {
            objects: catalog.url_of.len(),
            memory_bytes: catalog.memory.used(),
            memory_capacity: catalog.memory.capacity(),
            disk_bytes: catalog.disk.as_ref().map(S3Fifo::used).unwrap_or(0),
            disk_capacity: catalog.disk.as_ref().map(S3Fifo::capacity).unwrap_or(0),
            memory_evictions: self.memory_evictions.load(Ordering::Relaxed),
            disk_evictions: self.disk_evictions.load(Ordering::Relaxed),
            corrupt_dropped: self.corrupt_dropped.load(Ordering::Relaxed),
        }
    }
}

/// A response body being stored. Bytes go to memory (up to the memory limit) and to a temp file; the object
/// becomes visible only when [`Fill::finish`] succeeds. Dropping an unfinished fill deletes its temp file,
/// so a body cut off mid-way is never stored or served as complete.
pub struct Fill {
    store: Arc<Store>,
    id: ObjectId,
    meta: Meta,
    /// Boxed: 1.9 KB inline would be copied with every move of the future that holds the fill.
    hasher: Option<Box<blake3::Hasher>>,
    len: u64,
    memory_limit: u64,
    memory: Option<BytesMut>,
    file: Option<tokio::fs::File>,
    temp_path: Option<PathBuf>,
    failure: Option<&'static str>,
    ticket: FetchTicket,
    freshness: Freshness,
}

impl Fill {
    /// Whether the fill can still produce a stored object.
    pub fn is_viable(&self) -> bool {
        self.failure.is_none()
    }

    /// A read-only handle on the file the body is written to, and the offset of the body's first byte in
    /// it: requests that read the body while it is written (read-while-write, the edge's
    /// `shared_fill`) read what they fell behind on from it. `None` without a disk tier or once writing
    /// to it failed. The handle stays valid when the file is renamed into the store or deleted.
    pub async fn open_written(&self) -> Option<(std::fs::File, u64)> {
        self.file.as_ref()?;
        let file = tokio::fs::File::open(self.temp_path.as_ref()?).await.ok()?;
        Some((file.into_std().await, disk::HEAD_LEN))
    }

    /// Whether every chunk written before the last [`Fill::write`] is in the file ([`Fill::open_written`]):
    /// a write returns once its bytes are handed to the file's writer and the previous write has
    /// completed, so all but the last chunk are in the file while this holds.
    pub fn writes_to_disk(&self) -> bool {
        self.file.is_some()
    }

    /// Appends a chunk of the body. Storage problems stop the fill, never the response being served.
    pub async fn write(&mut self, chunk: &Bytes) {
        if self.failure.is_some() {
            return;
        }
        self.len += chunk.len() as u64;
        if self.len > self.store.config.capacity {
            self.abandon("larger than the cache");
            return;
        }
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(chunk);
        }
        if let Some(memory) = self.memory.as_mut() {
            if self.len <= self.memory_limit {
                memory.extend_from_slice(chunk);
            } else {
                self.memory = None;
            }
        }
        if let Some(file) = self.file.as_mut()
            && let Err(error) = file.write_all(chunk).await
        {
            warn!(%error, url = %self.meta.url, "cache write failed; not storing this object");
            self.file = None;
        }
        if self.memory.is_none() && self.file.is_none() {
            self.abandon("too large for memory and no disk tier");
        }
    }

    fn abandon(&mut self, why: &'static str) {
        self.failure = Some(why);
        self.memory = None;
        self.file = None;
    }

    /// Completes the object and makes it visible. `complete` says the body arrived whole (the upstream
    /// finished cleanly and its length matched); anything else stores nothing.
    pub async fn finish(mut self, complete: bool) -> Result<Arc<CachedObject>, StoreError> {
        if !complete {
            return Err(StoreError::NotStored("body incomplete"));
        }
        if let Some(why) = self.failure {
            return Err(StoreError::NotStored(why));
        }
        match self.store.purges.purged_since(
            self.ticket.generation(),
            &self.meta.url,
            Some(&self.meta.surrogate_keys),
        ) {
            Some(PurgeMode::Hard) => return Err(StoreError::Purged),
            // Soft: keep it, as the purge would have kept it had it been stored already.
            Some(PurgeMode::Soft) => self.meta.invalidated = true,
            None => {}
        }
        self.meta.body_len = self.len;
        if let Some(hasher) = &self.hasher {
            self.meta.body_hash = *hasher.finalize().as_bytes();
        }
        let memory = self.memory.take().map(BytesMut::freeze);
        let object = Arc::new(CachedObject::with_freshness(
            self.id,
            self.meta.clone(),
            self.freshness,
            true,
        ));
        let (Some(file), Some(temp_path)) = (self.file.take(), self.temp_path.clone()) else {
            if memory.is_none() {
                return Err(StoreError::NotStored("no tier took it"));
            }
            let deleted = self
                .store
                .insert_fill(object.clone(), memory, None, self.ticket.generation())?;
            self.store.delete_files(deleted);
            return Ok(object);
        };
        let mut file = file.into_std().await;
        let store = self.store.clone();
        let committed_object = object.clone();
        let fetched_at = self.ticket.generation();
        let inserted = tokio::task::spawn_blocking(move || -> Result<Vec<ObjectId>, StoreError> {
            let meta = &committed_object.meta;
            let id = committed_object.id;
            let written = disk::finish_file(&mut file, meta);
            drop(file);
            // The rename and the insertion happen under the id's file lock, so another fill of the same id
            // cannot put its body under this one's record.
            let _guard = store.file_lock(&id);
            let disk_len = match written.and_then(|_| match &store.disk {
                Some(disk) => disk.commit(&temp_path, &id),
                None => Ok(()),
            }) {
                Ok(()) => Some(disk::file_len(meta)),
                Err(error) => {
                    warn!(%error, url = %meta.url, "cache commit failed");
                    let _ = std::fs::remove_file(&temp_path);
                    None
                }
            };
            if disk_len.is_none() && memory.is_none() {
                return Err(StoreError::NotStored("no tier took it"));
            }
            match store.insert_fill(committed_object, memory, disk_len, fetched_at) {
                Ok(deleted) => Ok(deleted),
                Err(refused) => {
                    if disk_len.is_some()
                        && let Some(disk) = &store.disk
                    {
                        let _ = std::fs::remove_file(disk.object_path(&id));
                    }
                    Err(refused)
                }
            }
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
        self.temp_path = None;
        let deleted = inserted?;
        self.store.delete_files(deleted);
        Ok(object)
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        if let Some(path) = self.temp_path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, StatusCode};
    use std::time::{Duration, SystemTime};

    fn meta(url: &str, tags: &[&str]) -> Meta {
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=100"));
        let now = SystemTime::now();
        Meta {
            url: url.to_string(),
            status: StatusCode::OK,
            headers,
            vary: Vec::new(),
            request_time: now,
            response_time: now,
            body_len: 0,
            body_hash: [0; 32],
            surrogate_keys: tags.iter().map(|t| t.to_string()).collect(),
            invalidated: false,
        }
    }

    async fn put(store: &Arc<Store>, url: &str, tags: &[&str], body: &[u8]) -> Arc<CachedObject> {
        fill_after(store, store.fetch_ticket(), url, tags, body)
            .await
            .expect("stored")
    }

    fn disk_store(dir: &std::path::Path) -> Arc<Store> {
        Store::open(StoreConfig {
            dir: Some(dir.to_path_buf()),
            ..StoreConfig::default()
        })
        .expect("open")
    }

    #[tokio::test]
    async fn soft_purge_and_refresh_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = disk_store(dir.path());
        let object = put(&store, "http://h/a", &["t"], b"body").await;
        assert_eq!(
            store.purge_key("t", PurgeMode::Soft),
            PurgeCount { removed: 0, marked: 1 }
        );
        drop(store);
        let reopened = disk_store(dir.path());
        let hit = reopened
            .find("http://h/a", &HeaderMap::new())
            .expect("found after restart");
        assert!(hit.object.meta.invalidated, "the soft purge was persisted");
        assert_eq!(hit.object.meta.body_hash, object.meta.body_hash);

        let mut fields = HeaderMap::new();
        fields.insert("x-new", HeaderValue::from_static("1"));
        let later = SystemTime::now() + Duration::from_secs(5);
        let refreshed = reopened.refresh(&hit.object, &fields, later, later);
        assert!(!refreshed.meta.invalidated);
        drop(reopened);
        let again = disk_store(dir.path());
        let hit = again.find("http://h/a", &HeaderMap::new()).expect("found");
        assert_eq!(hit.object.meta.headers["x-new"], "1");
        match again.body(&hit).await.expect("body verifies") {
            BodySource::File { len, .. } => assert_eq!(len, 4),
            BodySource::Memory(bytes) => assert_eq!(&bytes[..], b"body"),
        }
    }

    #[tokio::test]
    async fn the_holdings_listener_hears_every_url_held_and_dropped() {
        let store = Store::open(StoreConfig {
            capacity: 16 * 1024,
            ..StoreConfig::default()
        })
        .expect("open");
        let heard: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let sink = heard.clone();
        assert!(store.set_holdings_listener(Arc::new(move |url: &str, held: bool| {
            sink.lock().expect("lock").push((url.to_string(), held));
        })));
        assert!(
            !store.set_holdings_listener(Arc::new(|_: &str, _: bool| {})),
            "one listener per store"
        );
        put(&store, "http://h/a", &["t"], b"a").await;
        put(&store, "http://h/b", &[], b"b").await;
        store.purge_key("t", PurgeMode::Hard);
        // A soft purge keeps the copy: nothing to tell.
        store.purge_url("http://h/b", PurgeMode::Soft);
        {
            let heard = heard.lock().expect("lock");
            assert_eq!(
                heard[..],
                [
                    ("http://h/a".to_string(), true),
                    ("http://h/b".to_string(), true),
                    ("http://h/a".to_string(), false),
                ]
            );
        }
        // Eviction: far more than the capacity; what the listener believes held is what the store holds.
        let body = vec![b'x'; 2000];
        for n in 0..40 {
            put(&store, &format!("http://h/many/{n}"), &[], &body).await;
        }
        let mut believed = BTreeSet::new();
        for (url, held) in heard.lock().expect("lock").iter() {
            if *held {
                believed.insert(url.clone());
            } else {
                believed.remove(url);
            }
        }
        let held: BTreeSet<String> = store.urls(usize::MAX).into_iter().collect();
        assert!(held.len() < 40, "the small store evicted: {}", held.len());
        assert_eq!(believed, held);
    }

    #[tokio::test]
    async fn prefix_and_key_purges_touch_only_what_they_name() {
        let store = Store::open(StoreConfig::default()).expect("open");
        for url in ["http://h/a/1", "http://h/a/2", "http://h/ab", "http://h/b/1"] {
            put(&store, url, &[if url.contains("/b/") { "b" } else { "a" }], b"x").await;
        }
        assert_eq!(store.purge_prefix("http://h/a/", PurgeMode::Hard).removed, 2);
        assert!(store.find("http://h/ab", &HeaderMap::new()).is_some());
        assert_eq!(store.purge_key("b", PurgeMode::Hard).removed, 1);
        assert_eq!(store.purge_key("b", PurgeMode::Hard).removed, 0);
        assert_eq!(store.stats().objects, 1);
    }

    #[tokio::test]
    async fn a_purge_of_a_url_with_any_query_spares_longer_paths() {
        let store = Store::open(StoreConfig::default()).expect("open");
        let purged = ["http://h/a", "http://h/a?utm=1", "http://h/a?v=2&x=%2F"];
        let kept = [
            "http://h/ab",
            "http://h/ab?utm=1",
            "http://h/a/",
            "http://h/a/b?v=1",
            "http://h/",
        ];
        for url in purged.iter().chain(&kept) {
            put(&store, url, &[], b"x").await;
        }
        let (ticket, other_ticket) = (store.fetch_ticket(), store.fetch_ticket());
        assert_eq!(store.purge_url_any_query("http://h/a", PurgeMode::Hard).removed, 3);
        for url in purged {
            assert!(store.find(url, &HeaderMap::new()).is_none(), "{url} purged");
        }
        for url in kept {
            assert!(store.find(url, &HeaderMap::new()).is_some(), "{url} kept");
        }
        // A fill of a query variant in flight during the purge is not stored; another path's is.
        assert!(
            fill_after(&store, ticket, "http://h/a?late=1", &[], b"old")
                .await
                .is_err()
        );
        assert!(
            fill_after(&store, other_ticket, "http://h/ab?late=1", &[], b"x")
                .await
                .is_ok()
        );
        // Given with a query, the base is its path.
        put(&store, "http://h/a?utm=1", &[], b"x").await;
        assert_eq!(store.purge_url_any_query("http://h/a?v=9", PurgeMode::Soft).marked, 1);
    }

    #[tokio::test]
    async fn damaged_files_are_dropped_at_start_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = disk_store(dir.path());
        put(&store, "http://h/a", &[], b"body").await;
        drop(store);
        let shard = std::fs::read_dir(dir.path().join("objects"))
            .expect("dir")
            .flatten()
            .next()
            .expect("shard");
        let file = std::fs::read_dir(shard.path())
            .expect("dir")
            .flatten()
            .next()
            .expect("file")
            .path();
        let bytes = std::fs::read(&file).expect("read");
        std::fs::write(&file, &bytes[..bytes.len() - 3]).expect("truncate");
        let reopened = disk_store(dir.path());
        assert_eq!(reopened.stats().objects, 0);
        assert_eq!(reopened.stats().corrupt_dropped, 1);
        assert!(!file.exists());
    }

    async fn fill_after(
        store: &Arc<Store>,
        ticket: FetchTicket,
        url: &str,
        tags: &[&str],
        body: &[u8],
    ) -> Result<Arc<CachedObject>, StoreError> {
        let meta = meta(url, tags);
        let id = ObjectId::new(url, &meta.vary);
        let freshness = Freshness::of(
            meta.status,
            &meta.headers,
            meta.request_time,
            meta.response_time,
            store.policy(),
        );
        let mut fill = store
            .begin_fill(id, meta, freshness, Some(body.len() as u64), ticket)
            .await;
        fill.write(&Bytes::copy_from_slice(body)).await;
        fill.finish(true).await
    }

    #[tokio::test]
    async fn a_purge_during_a_fetch_keeps_its_response_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        for store in [
            Store::open(StoreConfig::default()).expect("open"),
            disk_store(dir.path()),
        ] {
            put(&store, "http://h/a", &["t"], b"old").await;
            // Hard purge of the URL while a re-fetch is in flight: the old body it brings is not stored.
            let ticket = store.fetch_ticket();
            assert!(!store.purged_since(ticket.generation(), "http://h/a"));
            store.purge_url("http://h/a", PurgeMode::Hard);
            assert!(store.purged_since(ticket.generation(), "http://h/a"));
            let refused = fill_after(&store, ticket, "http://h/a", &["t"], b"old").await;
            assert!(matches!(refused, Err(StoreError::Purged)), "{refused:?}");
            assert!(store.find("http://h/a", &HeaderMap::new()).is_none());

            // A soft purge by surrogate key: stored, but already invalidated.
            let ticket = store.fetch_ticket();
            store.purge_key("t", PurgeMode::Soft);
            let stored = fill_after(&store, ticket, "http://h/a", &["t"], b"old")
                .await
                .expect("stored");
            assert!(stored.meta.invalidated);

            // A purge of something else does not matter; a fetch begun after the purge stores normally.
            let ticket = store.fetch_ticket();
            store.purge_prefix("http://h/b/", PurgeMode::Hard);
            store.purge_key("other", PurgeMode::Hard);
            let stored = fill_after(&store, ticket, "http://h/a", &["t"], b"new")
                .await
                .expect("stored");
            assert!(!stored.meta.invalidated);
            let hit = store.find("http://h/a", &HeaderMap::new()).expect("stored");
            match store.body(&hit).await.expect("body") {
                BodySource::Memory(bytes) => assert_eq!(&bytes[..], b"new"),
                BodySource::File { mut file, offset, len } => {
                    use std::io::Read;
                    file.seek(SeekFrom::Start(offset)).expect("seek");
                    let mut body = Vec::new();
                    file.take(len).read_to_end(&mut body).expect("read");
                    assert_eq!(&body[..], b"new");
                }
            }
        }
    }
}
