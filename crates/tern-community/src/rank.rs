//! Who should be master (seed 002, claim 35's "selecting a one of the peers to be the second master"):
//! peers rank by configured priority, then cache capacity, then weight, then uptime (an earlier start),
//! then name (the alphabetically first wins a full tie). A master's claim to lead is its term first, then
//! its rank: when two masters of one community meet (a healed partition, two edges that created it at
//! once), every peer and the registry prefer the same one.

use std::cmp::Ordering;

use tern_wire::community::Peer;

/// How `a` ranks against `b` for mastership; `Greater`: `a` is preferred.
pub fn rank_cmp(a: &Peer, b: &Peer) -> Ordering {
    a.priority
        .cmp(&b.priority)
        .then(a.capacity.cmp(&b.capacity))
        .then(a.weight.cmp(&b.weight))
        .then(b.started_at_ms.cmp(&a.started_at_ms))
        .then(b.name.cmp(&a.name))
        .then(b.incarnation.cmp(&a.incarnation))
}

/// The best ranked of `peers`.
pub fn best<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Option<&'a Peer> {
    peers.into_iter().max_by(|a, b| rank_cmp(a, b))
}

/// A master's claim to lead: its term, then its rank. `None` for the peer is no master at that term
/// (an election in progress), which every master of the term outranks.
pub fn claim_cmp(a: (u64, Option<&Peer>), b: (u64, Option<&Peer>)) -> Ordering {
    a.0.cmp(&b.0).then_with(|| match (a.1, b.1) {
        (Some(a), Some(b)) => rank_cmp(a, b),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    })
}

/// Whether `a` and `b` are the same process run of the same peer.
pub fn same_peer(a: &Peer, b: &Peer) -> bool {
    a.name == b.name && a.incarnation == b.incarnation
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str) -> Peer {
        Peer {
            name: name.into(),
            address: "10.0.0.1:1".parse().expect("address"),
            http: "10.0.0.1:2".parse().expect("address"),
            weight: 100,
            priority: 128,
            capacity: 1000,
            started_at_ms: 5000,
            incarnation: 1,
        }
    }

    #[test]
    fn priority_then_capacity_then_weight_then_uptime_then_name() {
        let base = peer("m");
        let cases = [
            Peer {
                priority: 129,
                capacity: 0,
                ..peer("z")
            },
            Peer {
                capacity: 1001,
                weight: 0,
                ..peer("z")
            },
            Peer {
                weight: 101,
                started_at_ms: 9000,
                ..peer("z")
            },
            Peer {
                started_at_ms: 4000,
                ..peer("z")
            },
            peer("a"),
        ];
        for better in cases {
            assert_eq!(rank_cmp(&better, &base), Ordering::Greater, "{better:?}");
            assert_eq!(rank_cmp(&base, &better), Ordering::Less);
        }
        assert_eq!(rank_cmp(&base, &peer("m")), Ordering::Equal);
        let all = [peer("b"), peer("a"), peer("c")];
        assert_eq!(best(&all).map(|p| p.name.as_str()), Some("a"));
    }

    #[test]
    fn a_later_term_outranks_any_master_and_a_master_outranks_an_election() {
        let strong = Peer {
            priority: 255,
            ..peer("s")
        };
        let weak = Peer {
            priority: 0,
            ..peer("w")
        };
        assert_eq!(claim_cmp((5, Some(&weak)), (4, Some(&strong))), Ordering::Greater);
        assert_eq!(claim_cmp((5, Some(&strong)), (5, Some(&weak))), Ordering::Greater);
        assert_eq!(claim_cmp((5, Some(&weak)), (5, None)), Ordering::Greater);
        assert_eq!(claim_cmp((5, None), (6, Some(&weak))), Ordering::Less);
    }
}
