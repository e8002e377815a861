//! The scheduler's decisions (seed 004: the CCM's scheduler, with its runtime conflict policy). Pure: the
//! service feeds it the running jobs and the jobs that are due, and acts on what it decides.
//!
//! Two jobs conflict when they are for the same hosted site and their nodes overlap, or when both change the
//! site's version (publish, restore, rollback, remove: a site has one line of versions, whatever nodes each
//! job targets). A due job that conflicts with a running job, or with an earlier due job that is itself
//! waiting, waits (policy `queue`) or is refused (policy `refuse`); so jobs for one site keep their order and
//! jobs for other sites or other nodes run alongside.
//!
//! After a try, [`after_failure`] decides whether a failed job is tried again and when, and [`next_run`]
//! when a repeating job's next run is due: pure functions of the job and of `now`, which the caller passes.

use std::collections::BTreeSet;

/// The job's description, its target and conflict policy travel in the job API, so they are the types of
/// [`tern_wire::mover`].
pub use tern_wire::mover::{ConflictPolicy, JobKind, JobSpec, Target};

use crate::rules::CompiledRules;

/// The furthest ahead a job may be due: a year (366 days). A later time is a typo or an overflow, not a
/// plan, and the schedule would hold it for ever.
pub const MAX_AHEAD_MS: u64 = 366 * 24 * 3600 * 1000;
/// The longest period of a repeating job: a year (366 days).
pub const MAX_EVERY_S: u64 = 366 * 24 * 3600;
/// The most tries again after a failure.
pub const MAX_RETRIES: u32 = 100;
/// The longest wait before a try again: a day.
pub const MAX_RETRY_DELAY_S: u64 = 24 * 3600;

/// How far in the past a start time may be and still mean "now": a minute, for the clocks of the client
/// and of the mover and for the time the request takes (the command line refuses `--at` earlier too).
pub const MAX_BEHIND_MS: u64 = 60 * 1000;

/// Checks, at `now_ms`, when a job is asked to be due (from `at_ms` of the job API; 0: now, which no `at_ms` gives): at most
/// [`MAX_AHEAD_MS`] ahead and at most [`MAX_BEHIND_MS`] behind (a time in the past is a mistake, not a
/// wish to start at once).
pub fn validate_due(due_ms: u64, now_ms: u64) -> Result<(), String> {
    let latest = now_ms.saturating_add(MAX_AHEAD_MS);
    if due_ms > latest {
        return Err(format!(
            "the start time {} is more than a year ahead: give a time up to {}, or none to start now",
            rfc3339(due_ms),
            rfc3339(latest)
        ));
    }
    if due_ms != 0 && due_ms.saturating_add(MAX_BEHIND_MS) < now_ms {
        return Err(format!(
            "the start time {} is in the past (it is now {}): give a later time, or none to start now",
            rfc3339(due_ms),
            rfc3339(now_ms)
        ));
    }
    Ok(())
}

/// Days from 1970-01-01 to 0000-03-01 in the proleptic Gregorian calendar (H. Hinnant's civil algorithms).
const EPOCH_SHIFT: i64 = 719_468;
/// Days in a 400-year era.
const ERA_DAYS: i64 = 146_097;

/// A time (ms since the epoch) in RFC 3339, UTC, to the second: `2026-12-01T02:00:00Z`.
pub fn rfc3339(ms: u64) -> String {
    let seconds = ms / 1000;
    let of_day = seconds % 86_400;
    // At most 2.2e11 days: no overflow below.
    let z = (seconds / 86_400) as i64 + EPOCH_SHIFT;
    let era = z.div_euclid(ERA_DAYS);
    let day_of_era = z.rem_euclid(ERA_DAYS);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Checks what can be checked of a job before it runs: a plain site name (and group or node name), a
/// staging directory for a publish, a checkpoint for a restore, a period between a second and a year,
/// retries and their delay within their bounds ([`MAX_RETRIES`], [`MAX_RETRY_DELAY_S`]), valid rules.
pub fn validate(spec: &JobSpec) -> Result<(), String> {
    if !plain_name(&spec.site) {
        return Err(format!(
            "`{}` is not a plain site name: 1 to 128 letters, digits, `-`, `_` or `.`, not starting with `.`",
            spec.site
        ));
    }
    match &spec.target {
        Some(Target::Group(name) | Target::Node(name)) if !plain_name(name) => {
            return Err(format!(
                "`{name}` is not a plain group or node name: 1 to 128 letters, digits, `-`, `_` or `.`, not starting with `.`"
            ));
        }
        _ => {}
    }
    if spec.kind == JobKind::Publish && spec.staging.is_none() {
        return Err("a publish needs a staging directory".into());
    }
    if spec.kind == JobKind::Restore && spec.checkpoint.is_none() {
        return Err("a restore names a checkpoint".into());
    }
    if let Some(every_s) = spec.every_s
        && !(1..=MAX_EVERY_S).contains(&every_s)
    {
        return Err(format!(
            "the repeat period must be from 1 s to 366 days (1 to {MAX_EVERY_S} seconds), not {every_s} seconds"
        ));
    }
    if spec.retries > MAX_RETRIES {
        return Err(format!(
            "the number of retries must be from 0 to {MAX_RETRIES}, not {}",
            spec.retries
        ));
    }
    if spec.retry_delay_s > MAX_RETRY_DELAY_S {
        return Err(format!(
            "the retry delay must be from 0 s to a day (0 to {MAX_RETRY_DELAY_S} seconds), not {} seconds",
            spec.retry_delay_s
        ));
    }
    if let Some(rules) = &spec.rules {
        CompiledRules::new(rules).map_err(|e| e.to_string())?;
    }
    if let Some(caches) = &spec.caches {
        if !crate::freshness::may_name_caches(spec.kind) {
            return Err(format!(
                "a site's caches are named with a publish or restore, not with a {}",
                spec.kind
            ));
        }
        crate::freshness::check(caches)?;
    }
    Ok(())
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
    /// The claim of job `id` (described by `spec`) on `nodes`.
    pub fn new(id: &str, spec: &JobSpec, nodes: BTreeSet<String>) -> Claim {
        Claim {
            job: id.to_string(),
            site: spec.site.clone(),
            changes_version: spec.changes_version(),
            nodes,
            on_conflict: spec.on_conflict,
        }
    }

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

/// What becomes of a job whose try failed (seed 004: the CCM's retry policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// It goes back on the schedule, due at `due_ms` (ms since the epoch).
    Retry {
        /// When the next try is due.
        due_ms: u64,
    },
    /// It has no tries left: it ends `failed`.
    Fail,
}

/// Whether a job that has had `tries` tries (the failed one included) may have another: a job is tried
/// once and then again up to `retries` times.
pub fn may_try_again(tries: u32, retries: u32) -> bool {
    tries <= retries
}

/// Decides, at `now_ms`, what becomes of a job whose try number `tries` failed: back on the schedule
/// `retry_delay_s` seconds from now while it has tries left, else failed.
pub fn after_failure(tries: u32, spec: &JobSpec, now_ms: u64) -> AfterFailure {
    if !may_try_again(tries, spec.retries) {
        return AfterFailure::Fail;
    }
    let delay_ms = spec.retry_delay_s.saturating_mul(1000);
    AfterFailure::Retry {
        due_ms: now_ms.saturating_add(delay_ms),
    }
}

/// When the next run of a repeating job (one run every `every_s` seconds, at least 1) is due, given that
/// the run that just ended was due at `due_ms`: the first time `due_ms + k × period` after `now_ms`, so a
/// series keeps its phase and skips the runs it missed. `None` for a job that does not repeat.
pub fn next_run(due_ms: u64, every_s: Option<u64>, now_ms: u64) -> Option<u64> {
    let period_ms = every_s?.max(1).saturating_mul(1000);
    let next = due_ms.saturating_add(period_ms);
    if next > now_ms {
        return Some(next);
    }
    let missed = (now_ms - next) / period_ms;
    Some(
        next.saturating_add(missed.saturating_mul(period_ms))
            .saturating_add(period_ms),
    )
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
        let mut spec = JobSpec::new(JobKind::Publish, "www");
        assert!(validate(&spec).is_err(), "publish without staging");
        spec.staging = Some("/tmp".into());
        assert!(validate(&spec).is_ok());
        let mut repeating = spec.clone();
        repeating.every_s = Some(u64::MAX);
        let refused = validate(&repeating).expect_err("a period beyond a year");
        assert!(
            refused.starts_with("the repeat period must be from 1 s to 366 days"),
            "{refused}"
        );
        assert!(refused.contains("1 to 31622400 seconds"), "{refused}");
        repeating.every_s = Some(MAX_EVERY_S);
        assert!(validate(&repeating).is_ok(), "a yearly job");
        let mut retried = spec.clone();
        retried.retry_delay_s = u64::MAX;
        let refused = validate(&retried).expect_err("a retry delay beyond a day");
        assert!(
            refused.starts_with("the retry delay must be from 0 s to a day"),
            "{refused}"
        );
        retried.retry_delay_s = 0;
        retried.retries = u32::MAX;
        assert!(validate(&retried).is_err(), "more than {MAX_RETRIES} retries");
        let now = 1_700_000_000_000;
        assert!(validate_due(0, now).is_ok(), "now");
        assert!(validate_due(now + MAX_AHEAD_MS, now).is_ok(), "a year ahead");
        let refused = validate_due(u64::MAX, now).expect_err("18446744073709551615");
        assert!(refused.contains("more than a year ahead"), "{refused}");
        let refused = validate_due(33_324_134_400_000, now).expect_err("the year 3026");
        assert_eq!(
            refused,
            "the start time 3026-01-01T00:00:00Z is more than a year ahead: give a time up to \
             2024-11-14T22:13:20Z, or none to start now"
        );
        assert!(validate_due(now - MAX_BEHIND_MS, now).is_ok(), "a minute ago: now");
        let refused = validate_due(946_684_800_000, now).expect_err("2000-01-01");
        assert_eq!(
            refused,
            "the start time 2000-01-01T00:00:00Z is in the past (it is now 2023-11-14T22:13:20Z): give a \
             later time, or none to start now"
        );
        assert!(!refused.contains("at_ms"), "{refused}");
        assert!(
            validate_due(u64::MAX, u64::MAX).is_ok(),
            "no overflow at the end of time"
        );
        spec.site = "../etc".into();
        assert!(validate(&spec).is_err());
        let mut spec = JobSpec::new(JobKind::Synchronise, "www");
        spec.every_s = Some(0);
        assert!(validate(&spec).is_err());
        spec.every_s = None;
        spec.target = Some(Target::Group("../x".into()));
        assert!(validate(&spec).is_err());
    }

    #[test]
    fn times_are_written_in_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_999), "2000-02-29T00:00:00Z", "a leap day");
        assert_eq!(rfc3339(1_764_551_585_123), "2025-12-01T01:13:05Z");
        assert_eq!(rfc3339(33_324_134_400_000), "3026-01-01T00:00:00Z");
        assert!(rfc3339(u64::MAX).ends_with('Z'), "no overflow");
    }

    #[test]
    fn a_failed_try_is_retried_after_the_delay_while_tries_are_left() {
        let mut spec = JobSpec::new(JobKind::Publish, "www");
        assert_eq!(
            after_failure(1, &spec, 5_000),
            AfterFailure::Fail,
            "no retries: failed at once"
        );
        spec.retries = 2;
        spec.retry_delay_s = 30;
        assert_eq!(after_failure(1, &spec, 5_000), AfterFailure::Retry { due_ms: 35_000 });
        assert_eq!(after_failure(2, &spec, 5_000), AfterFailure::Retry { due_ms: 35_000 });
        assert_eq!(after_failure(3, &spec, 5_000), AfterFailure::Fail, "1 try + 2 retries");
        spec.retry_delay_s = u64::MAX;
        assert_eq!(
            after_failure(1, &spec, 5_000),
            AfterFailure::Retry { due_ms: u64::MAX },
            "a huge delay saturates"
        );
        // A job interrupted by a restart counts the interrupted try.
        assert!(may_try_again(2, 2));
        assert!(!may_try_again(3, 2));
    }

    #[test]
    fn a_repeating_job_keeps_its_phase_and_skips_missed_runs() {
        assert_eq!(next_run(10_000, None, 12_000), None);
        assert_eq!(next_run(10_000, Some(5), 12_000), Some(15_000), "the next period");
        assert_eq!(next_run(10_000, Some(5), 15_000), Some(20_000), "strictly after now");
        assert_eq!(
            next_run(10_000, Some(5), 31_000),
            Some(35_000),
            "runs missed while the job ran long are skipped"
        );
        assert_eq!(next_run(10_000, Some(0), 10_500), Some(11_000), "at least a second");
        assert_eq!(next_run(u64::MAX - 10, Some(u64::MAX), 0), Some(u64::MAX), "saturates");
    }
}
