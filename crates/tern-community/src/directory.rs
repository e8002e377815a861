//! The directory of holders of seed `003_590cbd812baaa7e3.txt`: the retrieving server "for retrieving a
//! location of the contents stored by each of said storage servers". In a community the master keeps it:
//! a peer that stores a copy registers as a holder ("notifying said retrieving server of holding of said
//! contents"), eviction and purge deregister it, and a location request is answered from it together
//! with the allocation table (claims 79 and 89 of seed 002). It is soft state: a new master starts empty
//! and fills as peers store copies; a peer dropped from the list is forgotten as a holder.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Default most cache keys the directory remembers (the least recently registered is forgotten first).
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// Default most holders remembered per key.
pub const DEFAULT_MAX_HOLDERS: usize = 16;

/// Bounds of the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryLimits {
    /// Most cache keys remembered.
    pub max_keys: usize,
    /// Most holders per key (a further registration replaces none: the first holders stay).
    pub max_holders: usize,
}

impl Default for DirectoryLimits {
    fn default() -> Self {
        DirectoryLimits {
            max_keys: DEFAULT_MAX_KEYS,
            max_holders: DEFAULT_MAX_HOLDERS,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    holders: BTreeSet<String>,
    /// When the key was last registered (a counter), its place in `order`.
    stamp: u64,
}

/// Which peers hold a copy of which object, bounded.
#[derive(Debug, Clone)]
pub struct Directory {
    limits: DirectoryLimits,
    entries: HashMap<String, Entry>,
    /// Keys by last registration, oldest first.
    order: BTreeMap<u64, String>,
    next_stamp: u64,
}

impl Directory {
    /// An empty directory.
    pub fn new(limits: DirectoryLimits) -> Directory {
        Directory {
            limits,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
        }
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// `holder` stored a copy of `key`. The key becomes the most recent; when the directory is full the
    /// least recent key is forgotten.
    pub fn register(&mut self, holder: &str, key: &str) {
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        match self.entries.get_mut(key) {
            Some(entry) => {
                self.order.remove(&entry.stamp);
                entry.stamp = stamp;
                if entry.holders.len() < self.limits.max_holders {
                    entry.holders.insert(holder.to_string());
                }
            }
            None => {
                if self.limits.max_keys == 0 || self.limits.max_holders == 0 {
                    return;
                }
                if self.entries.len() >= self.limits.max_keys
                    && let Some((_, oldest)) = self.order.pop_first()
                {
                    self.entries.remove(&oldest);
                }
                let holders = BTreeSet::from([holder.to_string()]);
                self.entries.insert(key.to_string(), Entry { holders, stamp });
            }
        }
        self.order.insert(stamp, key.to_string());
    }

    /// `holder` no longer has a copy of `key`.
    pub fn deregister(&mut self, holder: &str, key: &str) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.holders.remove(holder);
        if entry.holders.is_empty() {
            let stamp = entry.stamp;
            self.entries.remove(key);
            self.order.remove(&stamp);
        }
    }

    /// `holder` left the community: it holds nothing any more.
    pub fn forget_holder(&mut self, holder: &str) {
        let mut emptied = Vec::new();
        for (key, entry) in &mut self.entries {
            if entry.holders.remove(holder) && entry.holders.is_empty() {
                emptied.push((key.clone(), entry.stamp));
            }
        }
        for (key, stamp) in emptied {
            self.entries.remove(&key);
            self.order.remove(&stamp);
        }
    }

    /// The peers holding `key`, by name.
    pub fn holders(&self, key: &str) -> impl Iterator<Item = &str> {
        self.entries
            .get(key)
            .into_iter()
            .flat_map(|entry| entry.holders.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holders(directory: &Directory, key: &str) -> Vec<String> {
        directory.holders(key).map(str::to_string).collect()
    }

    #[test]
    fn holders_register_deregister_and_are_forgotten_with_their_peer() {
        let mut directory = Directory::new(DirectoryLimits::default());
        directory.register("b", "k1");
        directory.register("a", "k1");
        directory.register("a", "k2");
        assert_eq!(holders(&directory, "k1"), ["a", "b"]);
        directory.deregister("b", "k1");
        assert_eq!(holders(&directory, "k1"), ["a"]);
        directory.forget_holder("a");
        assert!(directory.is_empty(), "keys without holders are dropped");
        directory.deregister("a", "unknown");
    }

    #[test]
    fn the_directory_stays_within_its_bounds_forgetting_the_least_recent_key() {
        let limits = DirectoryLimits {
            max_keys: 3,
            max_holders: 2,
        };
        let mut directory = Directory::new(limits);
        for key in ["k1", "k2", "k3"] {
            directory.register("a", key);
        }
        directory.register("b", "k1");
        directory.register("a", "k4");
        assert_eq!(directory.len(), 3);
        assert!(holders(&directory, "k2").is_empty(), "k2 was the least recent");
        assert_eq!(holders(&directory, "k1"), ["a", "b"]);
        directory.register("c", "k1");
        assert_eq!(holders(&directory, "k1"), ["a", "b"], "at most two holders");
        directory.clear();
        assert!(directory.is_empty());
    }
}
