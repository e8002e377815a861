//! The report of publish times and bytes (seed 004: the CCM's reports): one point per committed job that
//! made a version (publish, restore, rollback), drawn as bar charts in SVG on the server, so the page needs
//! no script and no chart library.

use tern_wire::mover::{Job, JobKind, JobState};

/// Most jobs a chart shows (the latest ones).
pub const MAX_POINTS: usize = 60;

/// One committed job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// The job's id.
    pub job: String,
    /// Its kind.
    pub kind: JobKind,
    /// Its site.
    pub site: String,
    /// When it ended (ms since the epoch).
    pub finished_ms: u64,
    /// How long its last try took.
    pub took_ms: u64,
    /// Bytes sent to nodes in its last try.
    pub bytes: u64,
}

/// The latest [`MAX_POINTS`] committed publishes, restores and rollbacks among `jobs`, oldest first.
pub fn points(jobs: &[Job]) -> Vec<Point> {
    let mut points: Vec<Point> = jobs
        .iter()
        .filter(|job| job.state == JobState::Committed)
        .filter(|job| matches!(job.spec.kind, JobKind::Publish | JobKind::Restore | JobKind::Rollback))
        .filter_map(|job| {
            let (started, finished) = (job.started_ms?, job.finished_ms?);
            Some(Point {
                job: job.id.clone(),
                kind: job.spec.kind,
                site: job.spec.site.clone(),
                finished_ms: finished,
                took_ms: finished.saturating_sub(started),
                bytes: job.nodes.iter().fold(0u64, |sum, node| sum.saturating_add(node.bytes)),
            })
        })
        .collect();
    points.sort_by(|a, b| a.finished_ms.cmp(&b.finished_ms).then_with(|| a.job.cmp(&b.job)));
    let skip = points.len().saturating_sub(MAX_POINTS);
    points.split_off(skip)
}

/// One bar: its height's value and the tooltip that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    /// The value.
    pub value: u64,
    /// What hovering shows.
    pub tip: String,
}

/// Drawing area (SVG user units).
const WIDTH: u64 = 720;
const HEIGHT: u64 = 200;
const LEFT: u64 = 80;
const RIGHT: u64 = 10;
const TOP: u64 = 12;
const BOTTOM: u64 = 24;
/// Widest bar: a few jobs still look like bars, not blocks.
const MAX_BAR_WIDTH: u64 = 48;

/// An SVG bar chart titled `title`, values written with `unit`; `first` and `last` label the x axis.
pub fn bar_chart(title: &str, bars: &[Bar], unit: fn(u64) -> String, first: &str, last: &str) -> String {
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\" \
         xmlns=\"http://www.w3.org/2000/svg\">",
        escape(title)
    );
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let baseline = TOP + plot_height;
    if bars.is_empty() {
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" class=\"empty\">no committed publish yet</text></svg>",
            WIDTH / 2,
            HEIGHT / 2
        ));
        return svg;
    }
    let max = bars.iter().map(|bar| bar.value).max().unwrap_or(0).max(1);
    for (fraction, label) in [(0u64, unit(0)), (1, unit(max / 2)), (2, unit(max))] {
        let y = baseline - plot_height * fraction / 2;
        svg.push_str(&format!(
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>\
             <text class=\"axis\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6,
            y + 4,
            escape(&label)
        ));
    }
    let count = bars.len() as u64;
    let slot = plot_width / count.max(1);
    let bar_width = (slot * 3 / 4).clamp(1, MAX_BAR_WIDTH);
    for (index, bar) in bars.iter().enumerate() {
        // Scaled in u128: a value times the height never overflows.
        let height = (u128::from(bar.value) * u128::from(plot_height) / u128::from(max)) as u64;
        let height = height.max(u64::from(bar.value > 0));
        let x = LEFT + slot * index as u64 + (slot - bar_width) / 2;
        svg.push_str(&format!(
            "<rect class=\"bar\" x=\"{x}\" y=\"{}\" width=\"{bar_width}\" height=\"{height}\"><title>{}</title></rect>",
            baseline - height,
            escape(&bar.tip)
        ));
    }
    svg.push_str(&format!(
        "<text class=\"axis\" x=\"{LEFT}\" y=\"{}\">{}</text>\
         <text class=\"axis\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text></svg>",
        HEIGHT - 6,
        escape(first),
        WIDTH - RIGHT,
        HEIGHT - 6,
        escape(last)
    ));
    svg
}

/// Escapes text for SVG (XML) content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use tern_wire::mover::{JobNode, JobSpec, NodeState};

    use super::*;

    fn job(id: &str, kind: JobKind, state: JobState, started: u64, finished: u64, bytes: &[u64]) -> Job {
        Job {
            id: id.into(),
            spec: JobSpec::new(kind, "www"),
            state,
            error: None,
            nodes: bytes
                .iter()
                .enumerate()
                .map(|(n, bytes)| JobNode {
                    node: format!("n{n}"),
                    state: NodeState::Committed,
                    bytes: *bytes,
                    error: None,
                    via: None,
                })
                .collect(),
            created_ms: 0,
            due_ms: 0,
            attempt: 1,
            started_ms: Some(started),
            finished_ms: Some(finished),
            freshness: None,
        }
    }

    #[test]
    fn points_are_committed_version_changes_oldest_first() {
        let jobs = [
            job("p2", JobKind::Publish, JobState::Committed, 5_000, 7_500, &[100, 200]),
            job("s1", JobKind::Synchronise, JobState::Committed, 1_000, 2_000, &[9]),
            job(
                "p1",
                JobKind::Publish,
                JobState::Committed,
                1_000,
                1_400,
                &[u64::MAX, 1],
            ),
            job("f1", JobKind::Publish, JobState::Failed, 1_000, 3_000, &[1]),
            job("r1", JobKind::Rollback, JobState::Committed, 8_000, 8_100, &[]),
        ];
        let points = points(&jobs);
        let ids: Vec<_> = points.iter().map(|p| p.job.as_str()).collect();
        assert_eq!(ids, ["p1", "p2", "r1"]);
        assert_eq!(points[0].bytes, u64::MAX, "sums saturate");
        assert_eq!(points[1].took_ms, 2_500);
        assert_eq!(points[1].bytes, 300);
        let many: Vec<Job> = (0..MAX_POINTS as u64 + 5)
            .map(|n| {
                job(
                    &format!("p{n:03}"),
                    JobKind::Publish,
                    JobState::Committed,
                    n,
                    n + 1,
                    &[1],
                )
            })
            .collect();
        let latest = super::points(&many);
        assert_eq!(latest.len(), MAX_POINTS);
        assert_eq!(latest[0].job, "p005");
    }

    #[test]
    fn a_chart_draws_one_bar_per_point_scaled_to_the_largest() {
        let bars = [
            Bar {
                value: 50,
                tip: "p1 <50>".into(),
            },
            Bar {
                value: 100,
                tip: "p2".into(),
            },
            Bar {
                value: 0,
                tip: "p3".into(),
            },
        ];
        let svg = bar_chart("bytes & time", &bars, |v| format!("{v} B"), "first", "last");
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 3);
        let plot_height = HEIGHT - TOP - BOTTOM;
        assert!(
            svg.contains(&format!("height=\"{plot_height}\"")),
            "the largest fills the plot: {svg}"
        );
        assert!(svg.contains(&format!("height=\"{}\"", plot_height / 2)), "{svg}");
        assert!(svg.contains("height=\"0\""), "{svg}");
        assert!(
            svg.contains("p1 &lt;50&gt;") && svg.contains("bytes &amp; time"),
            "escaped: {svg}"
        );
        assert!(svg.contains(">100 B<") && svg.contains(">50 B<"), "axis labels: {svg}");
        assert!(bar_chart("t", &[], |v| v.to_string(), "", "").contains("no committed publish yet"));
        let huge = [Bar {
            value: u64::MAX,
            tip: String::new(),
        }];
        assert!(bar_chart("t", &huge, |v| v.to_string(), "", "").contains(&format!("height=\"{plot_height}\"")));
    }
}
