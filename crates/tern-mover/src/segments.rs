//! The network segments the CCM knows from its group leaders' segment reports (seed
//! `004_1419c51402506f7e.txt`, discovery phase: "the GLs will report information to the CCM such as their
//! specific IP address, number of members registered in the group, IP addresses of the BESs, free disk
//! space, CPU power"), and the grouping of a job's target nodes by segment that the store-and-forward tree
//! ([`crate::tree`]) distributes over.
//!
//! The directory is held in memory behind a lock, so that a delivery can group its targets without a
//! database round trip; the segment reports that fill it are also persisted by the registration module
//! ([`crate::registration`]), and read back at start-up. Beside each [`Segment`] (what the tree needs) it
//! keeps the report's whole [`SegmentView`] (members with their resources, term, override) for the API.
//!
//! Which report wins is a pure decision ([`admit_report`]), and so is what a report makes of the record
//! ([`merge_report`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::time::Duration;

use tern_wire::segment::{Member, ReportKind, SegmentMessage, SegmentReport, SegmentView};

use crate::delivery::Recipient;
use crate::tree::Leader;

/// How long a segment's leader may stay silent before a report from another leader with a lower term is
/// taken anyway: terms only grow along the messages a node hears, so a candidate whose claim nobody heard,
/// or a segment that restarted, may leave a higher term on record than the leader its segment follows.
/// Three of a leader's default refresh periods (10 s).
pub const SUPERSEDE_AFTER: Duration = Duration::from_secs(30);

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
    /// Its process's incarnation, from its last report: another one under the same name is the same
    /// node restarted, which knows nothing of the transfers it was leading.
    pub incarnation: u64,
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
    views: RwLock<BTreeMap<String, SegmentView>>,
    /// Segments whose leader was last seen silent ([`Segments::newly_silent`]).
    silent: std::sync::Mutex<BTreeSet<String>>,
}

impl Segment {
    /// What the tree needs of a segment's record: its leader (URL and CPUs from the leader's own
    /// registration) and its members' names.
    pub fn of_view(view: &SegmentView) -> Segment {
        let leader = view.leader_member().map(|member| SegmentLeader {
            name: member.name.clone(),
            url: member.profile.url.clone(),
            cpu: member.profile.cpus,
            incarnation: view.incarnation,
        });
        Segment {
            name: view.name.clone(),
            location: view.location.clone(),
            leader,
            members: view.members.iter().map(|member| member.name.clone()).collect(),
            reported_ms: view.reported_ms,
        }
    }
}

impl Segments {
    /// Records a segment's report (and override) as accepted: the whole view for the API, and the
    /// [`Segment`] the tree groups targets by.
    pub fn record(&self, view: SegmentView) {
        self.update(Segment::of_view(&view));
        let mut views = self.views.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        views.insert(view.name.clone(), view);
    }

    /// The segments whose leader became silent ([`leader_silent`]) since the last call, at `now_ms`, with
    /// every segment's view: what the scheduler's look warns about once and sets the gauges from.
    pub fn newly_silent(&self, now_ms: u64) -> (Vec<SegmentView>, Vec<String>) {
        let views = self.views();
        let mut silent = self.silent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut became = Vec::new();
        for view in &views {
            if leader_silent(view, now_ms) {
                if silent.insert(view.name.clone()) {
                    became.push(view.name.clone());
                }
            } else {
                silent.remove(&view.name);
            }
        }
        (views, became)
    }

    /// Every segment's last accepted report, by name.
    pub fn views(&self) -> Vec<SegmentView> {
        let views = self.views.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        views.values().cloned().collect()
    }

    /// One segment's last accepted report.
    pub fn view(&self, name: &str) -> Option<SegmentView> {
        let views = self.views.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        views.get(name).cloned()
    }

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

    /// Divides `targets` by segment at `now_ms`: each segment with a leader is one group, in segment-name
    /// order; targets in no segment, in one without a leader, or in one whose leader has not reported for
    /// [`SUPERSEDE_AFTER`] (it refreshes its report every 10 s: it is gone, or its segment elected no one
    /// and nobody reports) are served directly, rather than through a leader that would be waited for.
    pub fn group(&self, targets: &[Recipient], now_ms: u64) -> Grouping {
        let segments = self.segments.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut groups: BTreeMap<String, SegmentGroup> = BTreeMap::new();
        let mut direct = Vec::new();
        for target in targets {
            let home = segments.values().find(|segment| {
                segment.leader.is_some()
                    && !silent_for(segment.reported_ms, now_ms, SUPERSEDE_AFTER)
                    && segment.members.contains(&target.name)
            });
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

/// Why a report was not taken although its tag was good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefusal {
    /// Another leader with a higher term reported recently: this one was deposed (or is cut off).
    #[error(
        "segment {segment} is led by {leader} (term {current}); a report of term {term} from {sender} is superseded"
    )]
    Superseded {
        /// The segment.
        segment: String,
        /// The reporting node.
        sender: String,
        /// Its term.
        term: u64,
        /// The leader on record.
        leader: String,
        /// Its term.
        current: u64,
    },
    /// Another node reports as leader with the recorded leader's own term while that leader still reports:
    /// both were elected where neither heard the other (a split segment).
    #[error(
        "segment {segment} has two group leaders of term {term}: {leader}, on record, and {sender}, whose report \
         is refused; its nodes do not hear each other on the control channel (multicast blocked between them: \
         check the switch's IGMP snooping or a firewall); the mover keeps {leader} until it stops reporting"
    )]
    TwoLeaders {
        /// The segment.
        segment: String,
        /// The reporting node.
        sender: String,
        /// The term both claim.
        term: u64,
        /// The leader on record.
        leader: String,
    },
    /// The leader on record already sent a report with this number or a later one (a replay, across
    /// restarts of the mover too).
    #[error("segment {segment}: report {seq} from {sender} is not newer than the last one taken (replay)")]
    Replayed {
        /// The segment.
        segment: String,
        /// The reporting node.
        sender: String,
        /// The report's number.
        seq: u64,
    },
}

impl ReportRefusal {
    /// A short token for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            ReportRefusal::Superseded { .. } => "superseded",
            ReportRefusal::TwoLeaders { .. } => "two-leaders",
            ReportRefusal::Replayed { .. } => "replayed",
        }
    }
}

/// Whether the leader on record of `view` has not reported for [`SUPERSEDE_AFTER`] at `now_ms` (it died,
/// or its segment elected no one, e.g. every member is `--never-lead`): the mover serves the segment's
/// members directly, and `/status` and the API say so rather than show it as leading.
pub fn leader_silent(view: &SegmentView, now_ms: u64) -> bool {
    silent_for(view.reported_ms, now_ms, SUPERSEDE_AFTER)
}

/// Whether a leader that last reported at `reported_ms` has been silent for `after` at `now_ms` (times in
/// ms since the epoch; the sum saturates): the one rule of the tree's grouping, the API's
/// `leader_silent` and the admission of another leader's report.
fn silent_for(reported_ms: u64, now_ms: u64, after: Duration) -> bool {
    let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
    reported_ms.saturating_add(after_ms) <= now_ms
}

/// Whether a report (authenticated, fresh, not seen before) replaces the record `stored` at `now_ms`: a
/// report from the leader on record must be newer than its last one; a report from another node must carry
/// a higher term than the recorded one (a later election: a winner's term is above every term it heard), or
/// list the recorded leader among its members as a process run other than the one that led (it restarted
/// and registered with the new leader), or come after the recorded leader has been silent for
/// `supersede_after`. A leader cut off from its segment keeps its term and keeps reporting, and is refused
/// while the segment's new leader (whose term is higher) reports, even though its member list still names
/// that new leader from before; two leaders of one term (a segment split in two) are refused as
/// [`ReportRefusal::TwoLeaders`], so that the record does not flip between them.
pub fn admit_report(
    stored: Option<&SegmentView>,
    message: &SegmentMessage,
    report: &SegmentReport,
    now_ms: u64,
    supersede_after: Duration,
) -> Result<(), ReportRefusal> {
    let Some(stored) = stored else {
        return Ok(());
    };
    let same_run = stored.leader == message.sender && stored.incarnation == message.incarnation;
    if same_run && message.seq <= stored.seq {
        return Err(ReportRefusal::Replayed {
            segment: message.segment.clone(),
            sender: message.sender.clone(),
            seq: message.seq,
        });
    }
    if message.term > stored.term || stored.leader == message.sender {
        return Ok(());
    }
    if report
        .members
        .iter()
        .any(|member| member.name == stored.leader && member.incarnation != stored.incarnation)
    {
        return Ok(());
    }
    if silent_for(stored.reported_ms, now_ms, supersede_after) {
        return Ok(());
    }
    if message.term == stored.term {
        return Err(ReportRefusal::TwoLeaders {
            segment: message.segment.clone(),
            sender: message.sender.clone(),
            term: message.term,
            leader: stored.leader.clone(),
        });
    }
    Err(ReportRefusal::Superseded {
        segment: message.segment.clone(),
        sender: message.sender.clone(),
        term: message.term,
        leader: stored.leader.clone(),
        current: stored.term,
    })
}

/// The record a report makes, at `now_ms`, and the members that are new to the segment. A take-over report
/// (its leader's round is not complete) adds to the members on record; segment and network segment reports
/// list them all. The administrator's override is kept.
pub fn merge_report(
    stored: Option<&SegmentView>,
    message: &SegmentMessage,
    report: &SegmentReport,
    now_ms: u64,
) -> (SegmentView, Vec<Member>) {
    let before: BTreeSet<&str> = stored
        .map(|view| view.members.iter().map(|member| member.name.as_str()).collect())
        .unwrap_or_default();
    let appeared: Vec<Member> = report
        .members
        .iter()
        .filter(|member| !before.contains(member.name.as_str()))
        .cloned()
        .collect();
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    if report.kind == ReportKind::TakeOver
        && let Some(stored) = stored
    {
        members.extend(
            stored
                .members
                .iter()
                .map(|member| (member.name.clone(), member.clone())),
        );
    }
    members.extend(
        report
            .members
            .iter()
            .map(|member| (member.name.clone(), member.clone())),
    );
    let view = SegmentView {
        name: message.segment.clone(),
        location: report.location.clone(),
        leader: message.sender.clone(),
        leader_address: message.address,
        term: message.term,
        incarnation: message.incarnation,
        seq: message.seq,
        kind: report.kind,
        members: members.into_values().collect(),
        reported_ms: now_ms,
        leader_override: stored.and_then(|view| view.leader_override.clone()),
    };
    (view, appeared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_wire::segment::{Profile, SegmentBody};

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
                incarnation: 1,
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
        let targets = [recipient("b2"), recipient("l1"), recipient("x"), recipient("b1")];
        let grouping = segments.group(&targets, 1_000);
        assert_eq!(grouping.groups.len(), 1);
        let boston = &grouping.groups[0];
        assert_eq!(boston.leader.name, "b1");
        assert_eq!(boston.members, vec![recipient("b2"), recipient("b1")]);
        assert_eq!(grouping.direct, vec![recipient("l1"), recipient("x")]);
        assert_eq!(segments.segment_of("b2").map(|s| s.name), Some("boston".to_string()));
        // A leader silent for SUPERSEDE_AFTER is gone (or its segment elected no one): the mover serves
        // its members itself rather than waiting for it.
        let later = 1 + SUPERSEDE_AFTER.as_millis() as u64;
        let grouping = segments.group(&targets, later);
        assert!(grouping.groups.is_empty(), "{grouping:?}");
        assert_eq!(grouping.direct.len(), 4);
    }

    fn member(name: &str, cpus: u32) -> Member {
        Member {
            name: name.into(),
            address: "10.0.0.1:40000".parse().expect("address"),
            incarnation: 1,
            profile: Profile {
                url: format!("http://{name}:7100"),
                cpus,
                ..Profile::default()
            },
        }
    }

    fn report(
        sender: &str,
        term: u64,
        seq: u64,
        kind: ReportKind,
        members: &[&str],
    ) -> (SegmentMessage, SegmentReport) {
        let report = SegmentReport {
            kind,
            location: "Europe/London".into(),
            members: members.iter().map(|name| member(name, 8)).collect(),
            appeared: vec![],
            departed: vec![],
        };
        let message = SegmentMessage {
            segment: "london".into(),
            sender: sender.into(),
            address: "10.0.0.1:40000".parse().expect("address"),
            term,
            incarnation: 7,
            seq,
            sent_at_ms: 1,
            body: SegmentBody::SegmentReport(report.clone()),
        };
        (message, report)
    }

    #[test]
    fn a_segment_is_said_silent_once_when_its_leader_stops_reporting_and_again_after_it_came_back() {
        let segments = Segments::default();
        let (message, first) = report("a", 1, 1, ReportKind::Segment, &["a", "b"]);
        let (view, _) = merge_report(None, &message, &first, 1_000);
        segments.record(view.clone());
        let silent_at = 1_000 + SUPERSEDE_AFTER.as_millis() as u64;
        assert!(segments.newly_silent(silent_at - 1).1.is_empty());
        assert!(!leader_silent(&view, silent_at - 1));
        assert_eq!(segments.newly_silent(silent_at).1, ["london"]);
        assert!(leader_silent(&view, silent_at));
        assert!(segments.newly_silent(silent_at + 500).1.is_empty(), "said once");
        let (message, again) = report("a", 1, 2, ReportKind::Segment, &["a", "b"]);
        let (view, _) = merge_report(Some(&view), &message, &again, silent_at + 1_000);
        segments.record(view);
        assert!(segments.newly_silent(silent_at + 1_000).1.is_empty());
        assert_eq!(segments.newly_silent(silent_at * 3).1, ["london"], "silent again later");
    }

    #[test]
    fn a_report_makes_the_record_and_the_trees_segment() {
        let (message, first) = report("a", 1, 1, ReportKind::Segment, &["a", "b"]);
        let (view, appeared) = merge_report(None, &message, &first, 1_000);
        assert_eq!(
            appeared.len(),
            2,
            "every member of a segment seen for the first time is new"
        );
        let segments = Segments::default();
        segments.record(view.clone());
        let segment = segments.segment_of("b").expect("b is in a segment");
        assert_eq!(
            segment
                .leader
                .as_ref()
                .map(|l| (l.name.as_str(), l.url.as_str(), l.cpu)),
            Some(("a", "http://a:7100", 8))
        );
        assert_eq!(segment.location, "Europe/London");
        assert_eq!(segments.view("london").map(|v| v.members.len()), Some(2));

        // A new leader takes over: the members on record stay until its round completes.
        let (message, take_over) = report("b", 2, 1, ReportKind::TakeOver, &["b"]);
        let (view, appeared) = merge_report(Some(&view), &message, &take_over, 2_000);
        assert!(appeared.is_empty());
        assert_eq!(view.leader, "b");
        assert_eq!(view.members.len(), 2);
        // Its network segment report lists them all: a departed, c appeared.
        let (message, change) = report("b", 2, 2, ReportKind::NetworkSegment, &["b", "c"]);
        let (view, appeared) = merge_report(Some(&view), &message, &change, 3_000);
        assert_eq!(appeared.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["c"]);
        assert_eq!(
            view.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
    }

    #[test]
    fn replays_and_deposed_leaders_are_refused_until_the_leader_on_record_falls_silent() {
        let (message, first) = report("a", 5, 10, ReportKind::Segment, &["a", "b"]);
        let (view, _) = merge_report(None, &message, &first, 1_000);
        assert_eq!(admit_report(None, &message, &first, 1_000, SUPERSEDE_AFTER), Ok(()));
        let refused = admit_report(Some(&view), &message, &first, 1_000, SUPERSEDE_AFTER).expect_err("replay");
        assert_eq!(refused.reason(), "replayed");
        let (newer, newer_report) = report("a", 5, 11, ReportKind::Segment, &["a"]);
        assert_eq!(
            admit_report(Some(&view), &newer, &newer_report, 1_000, SUPERSEDE_AFTER),
            Ok(())
        );

        // A lower term from a node the recorded leader is not registered with: a leader cut off, or one
        // elected where the recorded term was never heard. Refused until the recorded leader falls silent.
        let (cut_off, cut_off_report) = report("c", 4, 1, ReportKind::Segment, &["c"]);
        let refused =
            admit_report(Some(&view), &cut_off, &cut_off_report, 2_000, SUPERSEDE_AFTER).expect_err("lower term");
        assert_eq!(refused.reason(), "superseded");
        let later = 1_000 + SUPERSEDE_AFTER.as_millis() as u64;
        assert_eq!(
            admit_report(Some(&view), &cut_off, &cut_off_report, later, SUPERSEDE_AFTER),
            Ok(())
        );
        // The recorded leader, restarted (another process run), registered with the reporting one: it no
        // longer leads, whatever the terms.
        let (followed, followed_report) = report("c", 4, 2, ReportKind::Segment, &["a", "c"]);
        assert_ne!(followed_report.members[0].incarnation, view.incarnation);
        assert_eq!(
            admit_report(Some(&view), &followed, &followed_report, 2_000, SUPERSEDE_AFTER),
            Ok(())
        );
        // A leader cut off and back (helper-78's trial): its member list still names the recorded leader
        // as the process run that leads now; refused.
        let (stale, mut stale_report) = report("c", 4, 3, ReportKind::Segment, &["a", "c"]);
        stale_report.members[0].incarnation = view.incarnation;
        let refused =
            admit_report(Some(&view), &stale, &stale_report, 2_000, SUPERSEDE_AFTER).expect_err("a stale leader");
        assert_eq!(refused.reason(), "superseded");
        // Two leaders of the recorded term (a split segment): the one on record stays while it reports.
        let (twin, twin_report) = report("d", 5, 1, ReportKind::Segment, &["d"]);
        let refused =
            admit_report(Some(&view), &twin, &twin_report, 2_000, SUPERSEDE_AFTER).expect_err("the same term");
        assert_eq!(refused.reason(), "two-leaders");
        assert!(refused.to_string().contains("two group leaders of term 5"), "{refused}");
        assert_eq!(
            admit_report(Some(&view), &twin, &twin_report, later, SUPERSEDE_AFTER),
            Ok(())
        );
        let (elected, elected_report) = report("b", 6, 1, ReportKind::TakeOver, &["b"]);
        assert_eq!(
            admit_report(Some(&view), &elected, &elected_report, 2_000, SUPERSEDE_AFTER),
            Ok(())
        );
        // Arithmetic on recorded times saturates.
        let ancient = SegmentView {
            reported_ms: u64::MAX,
            ..view
        };
        assert!(admit_report(Some(&ancient), &cut_off, &cut_off_report, u64::MAX, Duration::MAX).is_ok());
    }
}
