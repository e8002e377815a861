//! The scheduler's decisions (seed 004: the CCM's scheduler, with its runtime conflict policy). Pure: the
//! service feeds it the running jobs and the jobs that are due, and acts on what it decides.
//!
//! Two jobs conflict when they are for the same hosted site and their nodes overlap, or when both change the
//! site's version (publish, restore, rollback, remove: a site has one line of versions, whatever nodes each
//! job targets). A due job that conflicts with a running job, or with an earlier due job that is itself
//! waiting, waits (policy `queue`) or is refused (policy `refuse`); so jobs for one site keep their order and
//! jobs for other sites or other nodes run alongside.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::rules::Rules;

/// What to do with a job that conflicts with another at the time it is due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    /// Wait until the other job is finished.
    #[default]
    Queue,
    /// Give up: the job ends `refused`.
    Refuse,
}

/// Which nodes a job is for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Every registered node.
    #[default]
    All,
    /// The nodes of a content group.
    Group(String),
    /// One node.
    Node(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::All => f.write_str("every node"),
            Target::Group(group) => write!(f, "group {group}"),
            Target::Node(node) => write!(f, "node {node}"),
        }
    }
}

/// The job kinds of seed 004.
pub const KINDS: &[&str] = &[
    "publish",
    "synchronise",
    "replicate",
    "remove",
    "rollback",
    "restore",
    "checkpoint",
];

/// Everything needed to run a job, now or later, and again after a restart of the mover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// One of [`KINDS`].
    pub kind: String,
    /// The hosted site.
    pub site: String,
    /// Staging directory (publish; restore uses the unpacked checkpoint).
    #[serde(default)]
    pub staging: Option<String>,
    /// Checkpoint number (restore).
    #[serde(default)]
    pub checkpoint: Option<u64>,
    /// Which nodes; none: where the site is hosted (every node, for a site not published yet). A publish
    /// or restore with a target hosts the site there from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Run again this many seconds after each run was due (a repeating job).
    #[serde(default)]
    pub every_s: Option<u64>,
    /// When it conflicts with another job.
    #[serde(default)]
    pub on_conflict: ConflictPolicy,
    /// How many times a failed run is tried again (0: it is cancelled at the first failure).
    #[serde(default)]
    pub retries: u32,
    /// Seconds between a failure and the next try.
    #[serde(default = "default_retry_delay")]
    pub retry_delay_s: u64,
    /// Include and exclude rules (publish); they become the site's rules.
    #[serde(default)]
    pub rules: Option<Rules>,
}

fn default_retry_delay() -> u64 {
    30
}

impl JobSpec {
    /// A job of `kind` for `site` where the site is hosted, due now, queued on conflict, not retried.
    pub fn new(kind: &str, site: &str) -> JobSpec {
        JobSpec {
            kind: kind.to_string(),
            site: site.to_string(),
            staging: None,
            checkpoint: None,
            target: None,
            every_s: None,
            on_conflict: ConflictPolicy::Queue,
            retries: 0,
            retry_delay_s: default_retry_delay(),
            rules: None,
        }
    }

    /// Whether the job makes a new version of the site (or removes it).
    pub fn changes_version(&self) -> bool {
        matches!(self.kind.as_str(), "publish" | "restore" | "rollback" | "remove")
    }

    /// Whether the job is sent to nodes at all.
    pub fn uses_nodes(&self) -> bool {
        self.kind != "checkpoint"
    }

    /// Checks what can be checked before the job runs.
    pub fn validate(&self) -> Result<(), String> {
        if !KINDS.contains(&self.kind.as_str()) {
            return Err(format!("unknown job kind `{}`; one of {}", self.kind, KINDS.join(", ")));
        }
        if !plain_name(&self.site) {
            return Err(format!(
                "`{}` is not a plain site name (letters, digits, `-`, `_`, `.`)",
                self.site
            ));
        }
        match &self.target {
            Some(Target::Group(name) | Target::Node(name)) if !plain_name(name) => {
                return Err(format!("`{name}` is not a plain group or node name"));
            }
            _ => {}
        }
        if self.kind == "publish" && self.staging.is_none() {
            return Err("a publish needs a staging directory".into());
        }
        if self.kind == "restore" && self.checkpoint.is_none() {
            return Err("a restore names a checkpoint".into());
        }
        if self.every_s == Some(0) {
            return Err("a repeating job repeats every 1 second or more".into());
        }
        if let Some(rules) = &self.rules {
            rules.compile().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A site, group or node name: letters, digits, `-`, `_`, `.`, not starting with a dot.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A job as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Job id.
    pub job: String,
    /// Its site.
    pub site: String,
    /// Whether it changes the site's version.
    pub changes_version: bool,
    /// The nodes it is for.
    pub nodes: BTreeSet<String>,
    /// Its conflict policy (of due jobs).
    pub on_conflict: ConflictPolicy,
}

impl Claim {
    fn conflicts_with(&self, other: &Claim) -> bool {
        self.site == other.site
            && ((self.changes_version && other.changes_version) || !self.nodes.is_disjoint(&other.nodes))
    }
}

/// What becomes of a due job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It starts now.
    Start,
    /// It waits for the named job.
    Wait(String),
    /// It is refused because of the named job.
    Refuse(String),
}

/// Decides for each due job (in the order given: by due time, then creation) whether it starts, waits or
/// is refused, given the jobs running now.
pub fn decide(running: &[Claim], due: &[Claim]) -> Vec<(String, Decision)> {
    let mut holding: Vec<&Claim> = running.iter().collect();
    let mut decisions = Vec::with_capacity(due.len());
    for job in due {
        let decision = match holding.iter().find(|other| job.conflicts_with(other)) {
            None => Decision::Start,
            Some(other) => match job.on_conflict {
                ConflictPolicy::Queue => Decision::Wait(other.job.clone()),
                ConflictPolicy::Refuse => Decision::Refuse(other.job.clone()),
            },
        };
        // A started job holds its nodes; so does a waiting one, so later jobs do not overtake it.
        if !matches!(decision, Decision::Refuse(_)) {
            holding.push(job);
        }
        decisions.push((job.job.clone(), decision));
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(job: &str, site: &str, changes: bool, nodes: &[&str], policy: ConflictPolicy) -> Claim {
        Claim {
            job: job.into(),
            site: site.into(),
            changes_version: changes,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            on_conflict: policy,
        }
    }

    #[test]
    fn overlapping_jobs_of_one_site_wait_and_others_start() {
        let running = [claim("sync-a", "www", false, &["a"], ConflictPolicy::Queue)];
        let due = [
            claim("sync-a-again", "www", false, &["a", "b"], ConflictPolicy::Queue),
            claim("sync-c", "www", false, &["c"], ConflictPolicy::Queue),
            claim("blog", "blog", true, &["a", "b", "c"], ConflictPolicy::Queue),
            claim("sync-b", "www", false, &["b"], ConflictPolicy::Queue),
        ];
        let decisions = decide(&running, &due);
        assert_eq!(
            decisions,
            vec![
                ("sync-a-again".into(), Decision::Wait("sync-a".into())),
                ("sync-c".into(), Decision::Start),
                ("blog".into(), Decision::Start),
                // b is held by the job waiting before it: no overtaking.
                ("sync-b".into(), Decision::Wait("sync-a-again".into())),
            ]
        );
    }

    #[test]
    fn two_version_changes_of_one_site_conflict_even_on_other_nodes() {
        let running = [claim("publish-1", "www", true, &["a"], ConflictPolicy::Queue)];
        let due = [
            claim("publish-2", "www", true, &["b"], ConflictPolicy::Refuse),
            claim("sync-b", "www", false, &["b"], ConflictPolicy::Queue),
        ];
        assert_eq!(
            decide(&running, &due),
            vec![
                ("publish-2".into(), Decision::Refuse("publish-1".into())),
                // A refused job holds nothing.
                ("sync-b".into(), Decision::Start),
            ]
        );
    }

    #[test]
    fn specs_are_checked() {
        let mut spec = JobSpec::new("publish", "www");
        assert!(spec.validate().is_err(), "publish without staging");
        spec.staging = Some("/tmp".into());
        assert!(spec.validate().is_ok());
        spec.site = "../etc".into();
        assert!(spec.validate().is_err());
        let mut spec = JobSpec::new("explode", "www");
        assert!(spec.validate().expect_err("refused").contains("unknown job kind"));
        spec.kind = "synchronise".into();
        spec.every_s = Some(0);
        assert!(spec.validate().is_err());
    }
}
