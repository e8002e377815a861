//! The pages (askama templates under `templates/`) and what each shows, read from the mover: its own
//! types ([`tern_wire::mover`], [`tern_mover::store`], [`tern_wire::segment`]) turned into rows of text.
//! Every page but the login has a `live` block: the part that the page's script fetches again every few
//! seconds (seed 004: the GUI is refreshed from the database) and puts in place.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use tern_mover::Mover;
use tern_mover::ccm::Holding;
use tern_mover::store::Node;
use tern_wire::mover::{Job, JobKind, JobState, NodeState, Target};
use tern_wire::segment::SegmentView;

use crate::chart::{self, Bar};
use crate::format::{duration, relative, size, utc};

/// What every page's frame shows: the navigation, the session's CSRF token for its forms, how often it
/// refreshes, and an error from the last action, if any.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Which navigation entry is current.
    pub page: &'static str,
    /// The page's title.
    pub title: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// Milliseconds between refreshes of the live block.
    pub refresh_ms: u64,
    /// When the page was made (UTC).
    pub now: String,
    /// Why the last action was refused.
    pub error: Option<String>,
}

/// The job kinds the submit form offers.
const SUBMITTED_KINDS: [JobKind; 6] = [
    JobKind::Publish,
    JobKind::Rollback,
    JobKind::Restore,
    JobKind::Synchronise,
    JobKind::Replicate,
    JobKind::Remove,
];

/// A job as a row of the lists.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its site.
    pub site: String,
    /// Its state (also a CSS class).
    pub state: String,
    /// Its nodes: where hosted, a group or a node.
    pub target: String,
    /// Tries so far.
    pub attempt: u32,
    /// When it was created.
    pub created: String,
    /// When it is (was) due, and how far that is from now.
    pub due: String,
    /// How far its due time is from now.
    pub due_relative: String,
    /// When its last try started.
    pub started: String,
    /// When it ended.
    pub finished: String,
    /// How long its last try took (or has been running).
    pub took: String,
    /// Nodes that committed.
    pub committed: usize,
    /// Nodes that hold it prepared.
    pub prepared: usize,
    /// Nodes that failed.
    pub failed: usize,
    /// Nodes in its current try.
    pub total: usize,
    /// Bytes sent in its current try.
    pub bytes: String,
    /// Why it failed, was refused, or waits.
    pub error: String,
    /// Whether it may still be cancelled (it has not started).
    pub cancellable: bool,
    /// Its repeat period, if it repeats.
    pub every: String,
    /// Its staging directory (publish).
    pub staging: String,
    /// Its checkpoint (restore).
    pub checkpoint: String,
    /// The hand-over of what it changed to the site's caches (`freshness` of the job): empty when the site
    /// names no caches or nothing changed for readers.
    pub freshness: String,
    /// The freshness state (`pending`, `fresh`, `unconfirmed`), for styling; empty without one.
    pub fresh_state: String,
}

/// One line on the hand-over of a job's changes to its site's caches.
fn freshness_line(freshness: &tern_wire::mover::JobFreshness) -> String {
    let urls = format!(
        "{} URLs purged, {} fetched again, via {}",
        freshness.purged, freshness.prefetched, freshness.via
    );
    match (freshness.state, freshness.fresh_ms) {
        (tern_wire::mover::FreshState::Fresh, Some(fresh_ms)) => format!(
            "every edge fresh {} after the commit ({urls})",
            duration(fresh_ms.saturating_sub(freshness.since_ms))
        ),
        (tern_wire::mover::FreshState::Unconfirmed, _) => format!(
            "not confirmed by every cache: {} ({urls})",
            freshness.error.as_deref().unwrap_or("no answer")
        ),
        _ => format!(
            "waiting for the caches to acknowledge, {} tries ({urls})",
            freshness.attempts
        ),
    }
}

impl JobRow {
    /// The row of `job` at `now_ms`.
    pub fn of(job: &Job, now_ms: u64) -> JobRow {
        let count = |state: NodeState| job.nodes.iter().filter(|node| node.state == state).count();
        let took = match (job.started_ms, job.finished_ms) {
            (Some(started), Some(finished)) => duration(finished.saturating_sub(started)),
            (Some(started), None) if job.state == JobState::Running => {
                format!("{} so far", duration(now_ms.saturating_sub(started)))
            }
            _ => String::new(),
        };
        let target = match &job.spec.target {
            None => "where hosted".to_string(),
            Some(Target::All) => "every node".to_string(),
            Some(Target::Group(group)) => format!("group {group}"),
            Some(Target::Node(node)) => format!("node {node}"),
        };
        JobRow {
            id: job.id.clone(),
            kind: job.spec.kind.to_string(),
            site: job.spec.site.clone(),
            state: job.state.to_string(),
            target,
            attempt: job.attempt,
            created: utc(job.created_ms),
            due: utc(job.due_ms),
            due_relative: relative(now_ms, job.due_ms),
            started: job.started_ms.map(utc).unwrap_or_default(),
            finished: job.finished_ms.map(utc).unwrap_or_default(),
            took,
            committed: count(NodeState::Committed),
            prepared: count(NodeState::Prepared),
            failed: count(NodeState::Failed),
            total: job.nodes.len(),
            bytes: size(job.nodes.iter().fold(0u64, |sum, node| sum.saturating_add(node.bytes))),
            error: job.error.clone().unwrap_or_default(),
            cancellable: matches!(job.state, JobState::Scheduled | JobState::Queued),
            every: job
                .spec
                .every_s
                .map(|s| duration(s.saturating_mul(1000)))
                .unwrap_or_default(),
            staging: job.spec.staging.clone().unwrap_or_default(),
            checkpoint: job.spec.checkpoint.map(|n| n.to_string()).unwrap_or_default(),
            freshness: job.freshness.as_ref().map(freshness_line).unwrap_or_default(),
            fresh_state: job
                .freshness
                .as_ref()
                .map(|freshness| freshness.state.to_string())
                .unwrap_or_default(),
        }
    }
}

/// What the submit form offers to choose from.
#[derive(Debug, Clone, Default)]
pub struct SubmitChoices {
    /// Job kinds.
    pub kinds: Vec<&'static str>,
    /// Hosted sites.
    pub sites: Vec<String>,
    /// Content groups.
    pub groups: Vec<String>,
    /// Registered nodes.
    pub nodes: Vec<String>,
}

/// A node as an icon (seed 004: "computers shown as icons").
#[derive(Debug, Clone)]
pub struct NodeIcon {
    /// Its name.
    pub name: String,
    /// Where it takes assignments.
    pub url: String,
    /// Whether it leads its segment.
    pub leader: bool,
    /// Whether it is in no content group yet: a new server the administrator adds to groups.
    pub new: bool,
    /// Whether it registered with the mover (a segment may report members that have not).
    pub registered: bool,
    /// Whether it has not registered for longer than the UI's silence threshold.
    pub silent: bool,
    /// When it last registered.
    pub seen: String,
    /// Free disk.
    pub disk: String,
    /// CPUs.
    pub cpus: u32,
    /// Its content groups, comma-separated.
    pub groups: String,
}

/// A network segment and its members.
#[derive(Debug, Clone)]
pub struct SegmentBox {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub location: String,
    /// Its group leader.
    pub leader: String,
    /// Whether the administrator chose the leader.
    pub forced: bool,
    /// The term the leader won.
    pub term: u64,
    /// When its last report arrived.
    pub reported: String,
    /// Its members.
    pub members: Vec<NodeIcon>,
}

/// One node's box in a group's form.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The node.
    pub node: String,
    /// Whether it is in the group.
    pub member: bool,
}

/// A content group and the form that sets its members.
#[derive(Debug, Clone)]
pub struct GroupForm {
    /// Its name.
    pub name: String,
    /// Every registered node, checked when a member.
    pub members: Vec<Membership>,
}

/// One cell of the dashboard's site × node matrix.
#[derive(Debug, Clone)]
pub struct Cell {
    /// The version the node holds, or a dash.
    pub text: String,
    /// `current`, `stale` or `absent` (not hosted there).
    pub class: &'static str,
}

/// A site on the dashboard.
#[derive(Debug, Clone)]
pub struct SiteRow {
    /// Its name.
    pub name: String,
    /// Its published version.
    pub version: u64,
    /// The version a rollback returns to (0: none).
    pub previous: u64,
    /// Where it is hosted.
    pub target: String,
    /// One cell per registered node.
    pub cells: Vec<Cell>,
}

/// A node holding another version of a site than the published one.
#[derive(Debug, Clone)]
pub struct StaleRow {
    /// The node.
    pub node: String,
    /// The site.
    pub site: String,
    /// The version it holds.
    pub held: u64,
    /// The published version.
    pub current: u64,
}

/// The dashboard: sites and the version each node holds, stale nodes, jobs under way.
#[derive(Template)]
#[template(path = "dashboard.html", blocks = ["live"])]
pub struct DashboardPage {
    /// The frame.
    pub layout: Layout,
    /// Node names (the matrix's columns).
    pub node_names: Vec<String>,
    /// Sites (its rows).
    pub sites: Vec<SiteRow>,
    /// Stale nodes.
    pub stale: Vec<StaleRow>,
    /// Jobs that have not ended.
    pub active: Vec<JobRow>,
    /// The latest jobs.
    pub recent: Vec<JobRow>,
    /// Registered nodes.
    pub node_count: usize,
    /// Nodes in no content group.
    pub new_count: usize,
    /// Nodes that have gone silent.
    pub silent_count: usize,
}

/// The nodes: segments with their leaders, nodes as icons, content groups.
#[derive(Template)]
#[template(path = "nodes.html", blocks = ["live"])]
pub struct NodesPage {
    /// The frame.
    pub layout: Layout,
    /// Segments.
    pub segments: Vec<SegmentBox>,
    /// Registered nodes in no known segment.
    pub loose: Vec<NodeIcon>,
    /// Content groups.
    pub groups: Vec<GroupForm>,
    /// Every registered node (the new-group form's boxes).
    pub node_names: Vec<String>,
    /// Nodes in no content group.
    pub new_count: usize,
}

/// The jobs: the submit form and the list.
#[derive(Template)]
#[template(path = "jobs.html", blocks = ["live"])]
pub struct JobsPage {
    /// The frame.
    pub layout: Layout,
    /// The form's choices.
    pub choices: SubmitChoices,
    /// The latest jobs.
    pub jobs: Vec<JobRow>,
}

/// A node's progress in a job.
#[derive(Debug, Clone)]
pub struct NodeProgress {
    /// The node.
    pub node: String,
    /// Its state (also a CSS class).
    pub state: String,
    /// 0 pending, 1 prepared, 2 committed (the progress bar).
    pub step: u8,
    /// Bytes sent to it.
    pub bytes: String,
    /// Why its delivery failed.
    pub error: String,
}

/// One job with its per-node progress.
#[derive(Template)]
#[template(path = "job.html", blocks = ["live"])]
pub struct JobPage {
    /// The frame.
    pub layout: Layout,
    /// The job.
    pub job: JobRow,
    /// Its nodes.
    pub nodes: Vec<NodeProgress>,
    /// Whether it has ended (the page stops asking).
    pub finished: bool,
}

/// The schedule: jobs waiting for their time or for another job, and repeating jobs.
#[derive(Template)]
#[template(path = "schedule.html", blocks = ["live"])]
pub struct SchedulePage {
    /// The frame.
    pub layout: Layout,
    /// The form's choices.
    pub choices: SubmitChoices,
    /// Jobs not started yet, soonest first.
    pub waiting: Vec<JobRow>,
    /// Jobs that repeat (their latest run).
    pub repeating: Vec<JobRow>,
}

/// A checkpoint as a row.
#[derive(Debug, Clone)]
pub struct CheckpointRow {
    /// Its number.
    pub number: u64,
    /// The version it holds.
    pub version: u64,
    /// When it was made.
    pub created: String,
    /// Its size.
    pub size: String,
}

/// A site's checkpoints.
#[derive(Debug, Clone)]
pub struct SiteCheckpoints {
    /// The site.
    pub name: String,
    /// Its published version.
    pub version: u64,
    /// Its checkpoints, newest first.
    pub checkpoints: Vec<CheckpointRow>,
}

/// The checkpoints of every site, with create and restore.
#[derive(Template)]
#[template(path = "checkpoints.html", blocks = ["live"])]
pub struct CheckpointsPage {
    /// The frame.
    pub layout: Layout,
    /// Sites.
    pub sites: Vec<SiteCheckpoints>,
}

/// An entry of the history log.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    /// When.
    pub at: String,
    /// The job, if any.
    pub job: String,
    /// What happened.
    pub message: String,
}

/// The history log.
#[derive(Template)]
#[template(path = "history.html", blocks = ["live"])]
pub struct HistoryPage {
    /// The frame.
    pub layout: Layout,
    /// Entries, newest first.
    pub entries: Vec<HistoryRow>,
}

/// A charted job as a row of the table under the charts.
#[derive(Debug, Clone)]
pub struct ChartRow {
    /// The job.
    pub job: String,
    /// Its kind.
    pub kind: String,
    /// Its site.
    pub site: String,
    /// When it ended.
    pub finished: String,
    /// How long it took.
    pub took: String,
    /// Bytes sent.
    pub bytes: String,
}

/// Publish times and bytes.
#[derive(Template)]
#[template(path = "chart.html", blocks = ["live"])]
pub struct ChartPage {
    /// The frame.
    pub layout: Layout,
    /// The SVG of durations (made by [`chart::bar_chart`], escaped there).
    pub times: String,
    /// The SVG of bytes.
    pub bytes: String,
    /// The charted jobs, newest first.
    pub rows: Vec<ChartRow>,
}

/// The login form.
#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    /// Why the last try was refused.
    pub error: Option<String>,
}

/// A page that only says something (off, refused, not found).
#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    /// Its title.
    pub title: String,
    /// What it says.
    pub message: String,
    /// Where to go from here.
    pub link: String,
    /// The link's text.
    pub link_text: String,
}

/// What the pages read of the mover, gathered once per page.
pub struct Facts {
    /// Registered nodes.
    pub nodes: Vec<Node>,
    /// Segments.
    pub segments: Vec<SegmentView>,
    /// Content groups.
    pub groups: Vec<(String, Vec<String>)>,
}

impl Facts {
    /// Reads nodes, segments and groups.
    pub async fn read(mover: &Mover) -> Result<Facts, String> {
        let groups = mover.groups().await.map_err(|e| e.to_string())?;
        Ok(Facts {
            nodes: mover.nodes().await,
            segments: mover.segments().views(),
            groups,
        })
    }

    fn leaders(&self) -> BTreeSet<&str> {
        self.segments.iter().map(|view| view.leader.as_str()).collect()
    }

    fn icon(&self, node: &Node, now_ms: u64, silent_after_ms: u64) -> NodeIcon {
        NodeIcon {
            name: node.name.clone(),
            url: node.url.clone(),
            leader: self.leaders().contains(node.name.as_str()),
            new: node.groups.is_empty(),
            registered: true,
            silent: now_ms.saturating_sub(node.last_seen_ms) > silent_after_ms,
            seen: relative(now_ms, node.last_seen_ms),
            disk: size(node.free_disk),
            cpus: node.cpus,
            groups: node.groups.join(", "),
        }
    }

    /// Nodes in no content group.
    pub fn new_count(&self) -> usize {
        self.nodes.iter().filter(|node| node.groups.is_empty()).count()
    }

    /// The submit form's choices, with `sites`.
    pub fn choices(&self, sites: Vec<String>) -> SubmitChoices {
        SubmitChoices {
            kinds: SUBMITTED_KINDS.iter().map(|kind| kind.as_str()).collect(),
            sites,
            groups: self.groups.iter().map(|(name, _)| name.clone()).collect(),
            nodes: self.nodes.iter().map(|node| node.name.clone()).collect(),
        }
    }
}

/// The dashboard's content.
pub fn dashboard(
    layout: Layout,
    facts: &Facts,
    holdings: &[Holding],
    jobs: &[Job],
    now_ms: u64,
    silent_after_ms: u64,
) -> DashboardPage {
    let node_names: Vec<String> = facts.nodes.iter().map(|node| node.name.clone()).collect();
    let sites = holdings
        .iter()
        .map(|holding| SiteRow {
            name: holding.site.name.clone(),
            version: holding.site.sequence,
            previous: holding.site.previous,
            target: holding.site.target.to_string(),
            cells: node_names
                .iter()
                .map(|node| match holding.held.get(node) {
                    None => Cell {
                        text: "—".into(),
                        class: "absent",
                    },
                    Some(version) if *version == holding.site.sequence => Cell {
                        text: format!("v{version}"),
                        class: "current",
                    },
                    Some(version) => Cell {
                        text: format!("v{version}"),
                        class: "stale",
                    },
                })
                .collect(),
        })
        .collect();
    let stale = holdings
        .iter()
        .flat_map(|holding| {
            holding.stale().map(|(node, held)| StaleRow {
                node: node.to_string(),
                site: holding.site.name.clone(),
                held,
                current: holding.site.sequence,
            })
        })
        .collect();
    let silent_count = facts
        .nodes
        .iter()
        .filter(|node| facts.icon(node, now_ms, silent_after_ms).silent)
        .count();
    DashboardPage {
        layout,
        node_count: facts.nodes.len(),
        new_count: facts.new_count(),
        silent_count,
        node_names,
        sites,
        stale,
        active: jobs
            .iter()
            .filter(|job| !job.finished())
            .map(|job| JobRow::of(job, now_ms))
            .collect(),
        recent: jobs.iter().take(8).map(|job| JobRow::of(job, now_ms)).collect(),
    }
}

/// The nodes page's content.
pub fn nodes(layout: Layout, facts: &Facts, now_ms: u64, silent_after_ms: u64) -> NodesPage {
    let registered: BTreeMap<&str, &Node> = facts.nodes.iter().map(|node| (node.name.as_str(), node)).collect();
    let mut placed = BTreeSet::new();
    let segments = facts
        .segments
        .iter()
        .map(|view| SegmentBox {
            name: view.name.clone(),
            location: view.location.clone(),
            leader: view.leader.clone(),
            forced: view.leader_override.is_some(),
            term: view.term,
            reported: relative(now_ms, view.reported_ms),
            members: view
                .members
                .iter()
                .map(|member| {
                    placed.insert(member.name.clone());
                    match registered.get(member.name.as_str()) {
                        Some(node) => facts.icon(node, now_ms, silent_after_ms),
                        None => NodeIcon {
                            name: member.name.clone(),
                            url: member.profile.url.clone(),
                            leader: member.name == view.leader,
                            new: member.profile.groups.is_empty(),
                            registered: false,
                            silent: false,
                            seen: relative(now_ms, view.reported_ms),
                            disk: size(member.profile.free_disk),
                            cpus: member.profile.cpus,
                            groups: member.profile.groups.join(", "),
                        },
                    }
                })
                .collect(),
        })
        .collect();
    let loose = facts
        .nodes
        .iter()
        .filter(|node| !placed.contains(&node.name))
        .map(|node| facts.icon(node, now_ms, silent_after_ms))
        .collect();
    let groups = facts
        .groups
        .iter()
        .map(|(name, members)| GroupForm {
            name: name.clone(),
            members: facts
                .nodes
                .iter()
                .map(|node| Membership {
                    node: node.name.clone(),
                    member: members.contains(&node.name),
                })
                .collect(),
        })
        .collect();
    NodesPage {
        layout,
        segments,
        loose,
        groups,
        node_names: facts.nodes.iter().map(|node| node.name.clone()).collect(),
        new_count: facts.new_count(),
    }
}

/// The job page's content.
pub fn job(layout: Layout, job: &Job, now_ms: u64) -> JobPage {
    JobPage {
        layout,
        nodes: job
            .nodes
            .iter()
            .map(|node| NodeProgress {
                node: node.node.clone(),
                state: node.state.to_string(),
                step: match node.state {
                    NodeState::Pending | NodeState::Failed => 0,
                    NodeState::Prepared => 1,
                    NodeState::Committed => 2,
                },
                // A node its group leader served got nothing from the mover itself: say by whom.
                bytes: match node.served_via() {
                    Some(leader) => format!("via {leader}"),
                    None => size(node.bytes),
                },
                error: node.error.clone().unwrap_or_default(),
            })
            .collect(),
        finished: job.finished(),
        job: JobRow::of(job, now_ms),
    }
}

/// The schedule's content.
pub fn schedule(layout: Layout, choices: SubmitChoices, jobs: &[Job], now_ms: u64) -> SchedulePage {
    let mut waiting: Vec<&Job> = jobs
        .iter()
        .filter(|job| matches!(job.state, JobState::Scheduled | JobState::Queued))
        .collect();
    waiting.sort_by_key(|job| job.due_ms);
    let mut seen_series = BTreeSet::new();
    let repeating = jobs
        .iter()
        .filter(|job| job.spec.every_s.is_some())
        .filter(|job| seen_series.insert((job.spec.kind, job.spec.site.clone(), job.spec.every_s)))
        .map(|job| JobRow::of(job, now_ms))
        .collect();
    SchedulePage {
        layout,
        choices,
        waiting: waiting.into_iter().map(|job| JobRow::of(job, now_ms)).collect(),
        repeating,
    }
}

/// The chart page's content.
pub fn chart(layout: Layout, jobs: &[Job]) -> ChartPage {
    let points = chart::points(jobs);
    let first = points.first().map(|p| utc(p.finished_ms)).unwrap_or_default();
    let last = points.last().map(|p| utc(p.finished_ms)).unwrap_or_default();
    let tip = |p: &chart::Point| {
        format!(
            "{} {} ({}): {}, {}",
            p.kind,
            p.site,
            p.job,
            duration(p.took_ms),
            size(p.bytes)
        )
    };
    let time_bars: Vec<Bar> = points
        .iter()
        .map(|p| Bar {
            value: p.took_ms,
            tip: tip(p),
        })
        .collect();
    let byte_bars: Vec<Bar> = points
        .iter()
        .map(|p| Bar {
            value: p.bytes,
            tip: tip(p),
        })
        .collect();
    ChartPage {
        layout,
        times: chart::bar_chart("publish times", &time_bars, duration, &first, &last),
        bytes: chart::bar_chart("bytes sent", &byte_bars, size, &first, &last),
        rows: points
            .iter()
            .rev()
            .map(|p| ChartRow {
                job: p.job.clone(),
                kind: p.kind.to_string(),
                site: p.site.clone(),
                finished: utc(p.finished_ms),
                took: duration(p.took_ms),
                bytes: size(p.bytes),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use tern_wire::mover::{FreshState, JobFreshness};

    use super::freshness_line;

    #[test]
    fn a_jobs_freshness_says_when_the_edges_were_fresh_or_why_not() {
        let mut freshness = JobFreshness {
            state: FreshState::Fresh,
            via: "sync service http://10.0.0.2:7071".into(),
            purged: 4,
            prefetched: 2,
            since_ms: 1_000,
            fresh_ms: Some(1_062),
            attempts: 1,
            error: None,
            caches: Vec::new(),
        };
        let line = freshness_line(&freshness);
        assert!(line.starts_with("every edge fresh 62 ms after the commit"), "{line}");
        assert!(
            line.contains("4 URLs purged, 2 fetched again, via sync service"),
            "{line}"
        );
        freshness.state = FreshState::Unconfirmed;
        freshness.fresh_ms = None;
        freshness.error = Some("prefetch answered 502 Bad Gateway".into());
        let line = freshness_line(&freshness);
        assert!(
            line.contains("not confirmed by every cache: prefetch answered 502"),
            "{line}"
        );
        freshness.state = FreshState::Pending;
        assert!(freshness_line(&freshness).starts_with("waiting for the caches"));
    }
}
