//! The allocation table of seed `002_82dbe7a209926976.txt` (claims 11–14 and 26–29): which peer owns
//! which content portion. The master computes it on every join and leave ([`allocate`]) and sends it with
//! the peer list; every member looks keys up in its copy ([`Allocation`]).
//!
//! Portions come from weighted rendezvous hashing (highest random weight, with the logarithmic method of
//! Schindelhauer and Schomaker for weights): each point (a cache key, or a host name in
//! [`Portioning::Host`]) scores every peer as `weight / -ln(u)`, `u` a hash of the point and the peer's
//! name in `(0, 1)`, and the `replicas` highest scores own it. So a peer's share is its weight over the sum
//! of weights, and a join or leave moves only the points the newcomer wins or the leaver held: the
//! minimum movement (claim 1's "second content portion" differs from the first only there). One replica
//! gives distinct portions (claim 12), several overlapping ones (claim 13); host names listed in the table
//! are assigned whole (claim 14).
//!
//! Scores use `f64::ln`; two members of one community on different platforms could in principle differ
//! on a point whose two best scores agree to the last bit, which costs one peer request, never
//! correctness.

use tern_wire::community::{AllocationTable, HostPortion, MAX_REPLICAS, Peer, Portion, Portioning};

/// What the master's table is made of besides the peers (`--replicas`, claim 14's host names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationConfig {
    /// Owners per point, 1 to [`MAX_REPLICAS`] (`--replicas`).
    pub replicas: u8,
    /// Portions of cache keys, or of whole host names.
    pub portioning: Portioning,
    /// Host names listed whole in the table with their owners (shown in `/status`; with
    /// [`Portioning::Host`], any other host is placed by the same hash).
    pub hosts: Vec<String>,
}

impl Default for AllocationConfig {
    fn default() -> Self {
        AllocationConfig {
            replicas: 1,
            portioning: Portioning::Key,
            hosts: Vec::new(),
        }
    }
}

/// Computes the allocation table over `peers` (any order; the table is sorted by name, so the same
/// peers give the same table). `replicas` is clamped to 1..=[`MAX_REPLICAS`].
pub fn allocate(peers: &[Peer], config: &AllocationConfig) -> AllocationTable {
    let mut portions: Vec<Portion> = peers
        .iter()
        .map(|peer| Portion {
            peer: peer.name.clone(),
            weight: peer.weight,
        })
        .collect();
    portions.sort_by(|a, b| a.peer.cmp(&b.peer));
    portions.dedup_by(|a, b| a.peer == b.peer);
    let mut table = AllocationTable {
        replicas: config.replicas.clamp(1, MAX_REPLICAS),
        portioning: config.portioning,
        portions,
        hosts: Vec::new(),
    };
    let mut hosts: Vec<String> = config.hosts.iter().map(|host| host.to_ascii_lowercase()).collect();
    hosts.sort();
    hosts.dedup();
    let lookup = Allocation::new(table.clone());
    table.hosts = hosts
        .into_iter()
        .map(|host| {
            let owners = lookup
                .rendezvous(point(&host))
                .into_iter()
                .map(str::to_string)
                .collect();
            HostPortion { host, owners }
        })
        .collect();
    table
}

/// A member's copy of the allocation table, ready for look-ups.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    table: AllocationTable,
    /// Per portion (same order): the hash of the peer's name and its weight.
    scored: Vec<(u64, f64)>,
    total_weight: f64,
}

impl Allocation {
    /// Prepares `table` for look-ups.
    pub fn new(table: AllocationTable) -> Allocation {
        let scored: Vec<(u64, f64)> = table
            .portions
            .iter()
            .map(|portion| (peer_hash(&portion.peer), f64::from(portion.weight)))
            .collect();
        let total_weight = scored.iter().map(|(_, weight)| weight).sum();
        Allocation {
            table,
            scored,
            total_weight,
        }
    }

    /// The table as the master sent it.
    pub fn table(&self) -> &AllocationTable {
        &self.table
    }

    /// The owners of the object with cache key `key` on `host`, the first preferred: at most `replicas`
    /// peers, none when every weight is 0.
    pub fn owners(&self, host: &str, key: &str) -> Vec<&str> {
        match self.table.portioning {
            Portioning::Key => self.rendezvous(point(key)),
            Portioning::Host => self.owners_of_host(host),
        }
    }

    /// The preferred owner of the object, if any peer owns content.
    pub fn owner(&self, host: &str, key: &str) -> Option<&str> {
        self.owners(host, key).first().copied()
    }

    /// Whether `peer` is among the object's owners.
    pub fn owns(&self, peer: &str, host: &str, key: &str) -> bool {
        self.owners(host, key).contains(&peer)
    }

    /// The owners of a whole host name (claim 14): as listed in the table, else placed by the hash.
    pub fn owners_of_host(&self, host: &str) -> Vec<&str> {
        let host = host.to_ascii_lowercase();
        if let Ok(index) = self.table.hosts.binary_search_by(|portion| portion.host.cmp(&host)) {
            return self.table.hosts[index].owners.iter().map(String::as_str).collect();
        }
        self.rendezvous(point(&host))
    }

    /// The fraction of all points `peer` owns (or co-owns) in expectation: its weight over the total,
    /// times the replicas, at most 1.
    pub fn expected_share(&self, peer: &str) -> f64 {
        let Some(index) = self.table.portions.iter().position(|portion| portion.peer == peer) else {
            return 0.0;
        };
        if self.total_weight <= 0.0 {
            return 0.0;
        }
        let replicas = f64::from(self.table.replicas.max(1));
        (self.scored[index].1 / self.total_weight * replicas).min(1.0)
    }

    /// The `replicas` peers with the highest scores for `point`, best first (ties, which need equal
    /// 64-bit hashes, go to the earlier name).
    fn rendezvous(&self, point: u64) -> Vec<&str> {
        let wanted = usize::from(self.table.replicas.max(1));
        let mut best: Vec<(f64, usize)> = Vec::with_capacity(wanted + 1);
        for (index, (hash, weight)) in self.scored.iter().enumerate() {
            if *weight <= 0.0 {
                continue;
            }
            let score = weight / -unit(mix(point ^ hash)).ln();
            let position = best.iter().position(|(other, _)| score > *other).unwrap_or(best.len());
            if position < wanted {
                best.insert(position, (score, index));
                best.truncate(wanted);
            }
        }
        best.into_iter()
            .map(|(_, index)| self.table.portions[index].peer.as_str())
            .collect()
    }
}

/// The hash of a point (a cache key or a host name).
fn point(text: &str) -> u64 {
    first_u64(blake3::hash(text.as_bytes()).as_bytes())
}

/// The hash of a peer's name, in its own domain so that it never equals a point's.
fn peer_hash(name: &str) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"tern-community peer\0");
    hasher.update(name.as_bytes());
    first_u64(hasher.finalize().as_bytes())
}

fn first_u64(bytes: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(first)
}

/// SplitMix64's finaliser: every output bit depends on every input bit.
fn mix(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash mapped into the open interval (0, 1), so that its logarithm is finite and negative.
fn unit(hash: u64) -> f64 {
    ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: usize = 100_000;

    fn peer(name: &str, weight: u32) -> Peer {
        Peer {
            name: name.into(),
            address: "10.0.0.1:7400".parse().expect("address"),
            http: "10.0.0.1:7401".parse().expect("address"),
            weight,
            priority: 128,
            capacity: 0,
            started_at_ms: 0,
            incarnation: 1,
        }
    }

    fn peers(count: usize) -> Vec<Peer> {
        (0..count).map(|index| peer(&format!("edge-{index:02}"), 100)).collect()
    }

    fn keys() -> Vec<String> {
        (0..KEYS)
            .map(|index| format!("GET https://www.example.com/objects/{index}.jpg"))
            .collect()
    }

    fn config(replicas: u8) -> AllocationConfig {
        AllocationConfig {
            replicas,
            ..AllocationConfig::default()
        }
    }

    /// (key, owner) pairs that differ between two tables, as a fraction of all pairs of the first.
    fn moved(keys: &[String], before: &Allocation, after: &Allocation) -> f64 {
        let mut moved = 0usize;
        let mut total = 0usize;
        for key in keys {
            let old = before.owners("", key);
            let new = after.owners("", key);
            total += old.len();
            moved += old.iter().filter(|owner| !new.contains(owner)).count();
        }
        moved as f64 / total as f64
    }

    #[test]
    fn a_join_moves_at_most_1_1_over_n_of_ownership_and_only_to_the_newcomer() {
        let keys = keys();
        for replicas in [1u8, 2] {
            for before_count in [1usize, 2, 3, 6, 7, 11, 15] {
                if usize::from(replicas) > before_count {
                    continue;
                }
                let before_peers = peers(before_count);
                let after_peers = peers(before_count + 1);
                let newcomer = after_peers[before_count].name.clone();
                let before = Allocation::new(allocate(&before_peers, &config(replicas)));
                let after = Allocation::new(allocate(&after_peers, &config(replicas)));
                let fraction = moved(&keys, &before, &after);
                let members_after = (before_count + 1) as f64;
                println!(
                    "R={replicas}, {before_count} -> {} peers: {:.4} of ownership moved (1/N = {:.4}, bound {:.4})",
                    before_count + 1,
                    fraction,
                    1.0 / members_after,
                    1.1 / members_after
                );
                assert!(
                    fraction <= 1.1 / members_after,
                    "R={replicas}, {before_count} -> {}: {fraction:.4} of ownership moved",
                    before_count + 1
                );
                // Whatever moved went to the newcomer: no churn among the others.
                for key in keys.iter().step_by(7) {
                    let old = before.owners("", key);
                    for owner in after.owners("", key) {
                        assert!(old.contains(&owner) || owner == newcomer, "{key}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_leave_moves_only_the_leavers_portion() {
        let keys = keys();
        let all = peers(8);
        let mut without = all.clone();
        let gone = without.remove(3);
        let before = Allocation::new(allocate(&all, &config(2)));
        let after = Allocation::new(allocate(&without, &config(2)));
        for key in &keys {
            let old = before.owners("", key);
            let new = after.owners("", key);
            if !old.contains(&gone.name.as_str()) {
                assert_eq!(old, new, "{key}");
            } else {
                assert!(old.iter().filter(|o| **o != gone.name).all(|o| new.contains(o)));
            }
        }
        let fraction = moved(&keys, &before, &after);
        assert!(fraction <= 1.1 / 8.0, "{fraction}");
    }

    #[test]
    fn weights_are_respected_within_a_percent() {
        let keys = keys();
        let weighted = vec![peer("a", 10), peer("b", 20), peer("c", 30), peer("d", 40), peer("z", 0)];
        let table = Allocation::new(allocate(&weighted, &config(1)));
        let mut counts = std::collections::BTreeMap::new();
        for key in &keys {
            *counts.entry(table.owner("", key).expect("an owner")).or_insert(0usize) += 1;
        }
        for peer in &weighted {
            let share = counts.get(peer.name.as_str()).copied().unwrap_or(0) as f64 / KEYS as f64;
            let expected = table.expected_share(&peer.name);
            println!("weight {}: share {share:.4}, expected {expected:.4}", peer.weight);
            assert!(
                (share - expected).abs() < 0.01,
                "{}: {share:.4} against {expected:.4}",
                peer.name
            );
        }
        assert_eq!(counts.get("z"), None, "a weight of 0 owns nothing");
    }

    #[test]
    fn the_same_peers_give_the_same_table_in_any_order_and_replicas_are_distinct() {
        let mut shuffled = peers(7);
        let table = allocate(&shuffled, &config(3));
        shuffled.reverse();
        shuffled.swap(1, 4);
        assert_eq!(allocate(&shuffled, &config(3)), table);
        let lookup = Allocation::new(table);
        for key in keys().iter().take(2000) {
            let owners = lookup.owners("", key);
            assert_eq!(owners.len(), 3);
            let mut distinct = owners.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{owners:?}");
        }
        // Known points stay where they are across versions of this code: a table is a contract between
        // members, which may run different builds.
        let fixed = Allocation::new(allocate(&peers(7), &config(2)));
        let golden: Vec<Vec<&str>> = ["GET https://www.example.com/", "GET https://www.example.com/a.css", "x"]
            .iter()
            .map(|key| fixed.owners("", key))
            .collect();
        assert_eq!(
            golden,
            [["edge-01", "edge-02"], ["edge-03", "edge-00"], ["edge-06", "edge-01"]]
        );
        let nobody = Allocation::new(allocate(&[peer("a", 0)], &config(1)));
        assert!(nobody.owners("", "k").is_empty());
        assert_eq!(nobody.expected_share("a"), 0.0);
    }

    #[test]
    fn whole_host_names_are_listed_with_their_owners_and_keys_follow_their_host() {
        let config = AllocationConfig {
            replicas: 2,
            portioning: Portioning::Host,
            hosts: vec![
                "www.example.com".into(),
                "IMG.example.com".into(),
                "www.example.com".into(),
            ],
        };
        let table = allocate(&peers(5), &config);
        let hosts: Vec<&str> = table.hosts.iter().map(|host| host.host.as_str()).collect();
        assert_eq!(hosts, ["img.example.com", "www.example.com"]);
        assert!(table.hosts.iter().all(|host| host.owners.len() == 2));
        let lookup = Allocation::new(table.clone());
        let listed = &table.hosts[1].owners;
        for path in ["/", "/a.css", "/b/c.js"] {
            let key = format!("GET https://www.example.com{path}");
            assert_eq!(&lookup.owners("WWW.example.com", &key), listed);
        }
        // A host not listed is placed whole by the same hash.
        let other = lookup.owners_of_host("static.example.org");
        assert_eq!(other.len(), 2);
        assert_eq!(lookup.owners("static.example.org", "GET /x"), other);
    }
}
