//! The network segments the CCM knows from its group leaders' segment reports (seed
//! `004_1419c51402506f7e.txt`, discovery phase: "the GLs will report information to the CCM such as their
//! specific IP address, number of members registered in the group, IP addresses of the BESs, free disk
//! space, CPU power"), and the grouping of a job's target nodes by segment that the store-and-forward tree
//! ([`crate::tree`]) distributes over.
//!
//! The directory is held in memory behind a lock, so that a delivery can group its targets without a
//! database round trip; the segment reports that fill it are also persisted by the registration module.

use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::delivery::Recipient;
use crate::tree::Leader;

/// What the CCM knows of one network segment: its current group leader and its registered members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The segment's name (kept when its leader changes).
    pub name: String,
    /// Where it is (a time zone or a place name).
    pub location: String,
    /// Its group leader's node name and the URL where it takes notifications and serves assignments.
    pub leader: Option<SegmentLeader>,
    /// Node names of the members the leader last reported (the leader included).
    pub members: Vec<String>,
    /// When the last segment report arrived, milliseconds since the Unix epoch.
    pub reported_ms: u64,
}

/// A segment's group leader as the CCM addresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentLeader {
    /// The leader's node name.
    pub name: String,
    /// Its URL (`http://HOST:PORT` or `https://...`).
    pub url: String,
    /// Its CPU power (for sorting the tree).
    pub cpu: u32,
}

/// The target nodes of one segment, with the leader that serves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentGroup {
    /// The group leader, as the tree sees it.
    pub leader: Leader,
    /// Its URL.
    pub leader_url: String,
    /// The targets in this segment (the leader too, if it is a target).
    pub members: Vec<Recipient>,
}

/// How a delivery's targets divide up: groups served through their leaders, and targets the CCM serves
/// directly (in no known segment, or in a segment without a leader).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grouping {
    /// Segments with a leader.
    pub groups: Vec<SegmentGroup>,
    /// Everyone else.
    pub direct: Vec<Recipient>,
}

/// The CCM's directory of segments.
#[derive(Debug, Default)]
pub struct Segments {
    segments: RwLock<BTreeMap<String, Segment>>,
}

impl Segments {
    /// Records (or replaces) what a segment report says of `segment`.
    pub fn update(&self, segment: Segment) {
        let mut segments = self.segments.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        segments.insert(segment.name.clone(), segment);
    }

    /// Every known segment, by name.
    pub fn all(&self) -> Vec<Segment> {
        let segments = self.segments.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        segments.values().cloned().collect()
    }

    /// The segment a node was last reported in, if any.
    pub fn segment_of(&self, node: &str) -> Option<Segment> {
        let segments = self.segments.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        segments
            .values()
            .find(|segment| segment.members.iter().any(|member| member == node))
            .cloned()
    }

    /// Divides `targets` by segment: each segment with a leader is one group, in segment-name order; targets
    /// in no segment, or in one without a leader, are served directly.
    pub fn group(&self, targets: &[Recipient]) -> Grouping {
        let segments = self.segments.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut groups: BTreeMap<String, SegmentGroup> = BTreeMap::new();
        let mut direct = Vec::new();
        for target in targets {
            let home = segments
                .values()
                .find(|segment| segment.leader.is_some() && segment.members.contains(&target.name));
            match home.and_then(|segment| segment.leader.as_ref().map(|leader| (segment, leader))) {
                Some((segment, leader)) => {
                    groups
                        .entry(segment.name.clone())
                        .or_insert_with(|| SegmentGroup {
                            leader: Leader {
                                name: leader.name.clone(),
                                segment: segment.name.clone(),
                                location: segment.location.clone(),
                                cpu: leader.cpu,
                            },
                            leader_url: leader.url.clone(),
                            members: Vec::new(),
                        })
                        .members
                        .push(target.clone());
                }
                None => direct.push(target.clone()),
            }
        }
        Grouping {
            groups: groups.into_values().collect(),
            direct,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient(name: &str) -> Recipient {
        Recipient {
            name: name.to_string(),
            url: format!("http://{name}:7000"),
        }
    }

    #[test]
    fn targets_group_by_their_segments_leader_and_the_rest_go_direct() {
        let segments = Segments::default();
        segments.update(Segment {
            name: "boston".into(),
            location: "America/New_York".into(),
            leader: Some(SegmentLeader {
                name: "b1".into(),
                url: "http://b1:7000".into(),
                cpu: 8,
            }),
            members: vec!["b1".into(), "b2".into()],
            reported_ms: 1,
        });
        segments.update(Segment {
            name: "leaderless".into(),
            location: "UTC".into(),
            leader: None,
            members: vec!["l1".into()],
            reported_ms: 1,
        });
        let grouping = segments.group(&[recipient("b2"), recipient("l1"), recipient("x"), recipient("b1")]);
        assert_eq!(grouping.groups.len(), 1);
        let boston = &grouping.groups[0];
        assert_eq!(boston.leader.name, "b1");
        assert_eq!(boston.members, vec![recipient("b2"), recipient("b1")]);
        assert_eq!(grouping.direct, vec![recipient("l1"), recipient("x")]);
        assert_eq!(segments.segment_of("b2").map(|s| s.name), Some("boston".to_string()));
    }
}
