//! Admission of jobs (seed 004: the CCM takes jobs from the operator): a job is checked before it is put on
//! the schedule — its description, its staging directory, its site, checkpoint and group, the key files of
//! the caches it names, its numbers (due at most a year ahead and not in the past, a period between a
//! second and a year, retries and their delay bounded: [`crate::schedule::validate`],
//! [`crate::schedule::validate_due`]) — and one due now whose conflict policy is `refuse` is refused at
//! once when it conflicts with a running job. A job that has not started can be cancelled.

use std::path::Path;

use tern_wire::mover::{JobKind, JobState, Target};

use crate::ccm::{Mover, now_ms};
use crate::schedule::{Claim, ConflictPolicy, Decision, JobSpec, decide, validate, validate_due};
use crate::store_thread::StoreError;

/// Why a job was not accepted, or not cancelled.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request is not valid (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// It conflicts with a running job and its policy is `refuse`, or the job to cancel has started
    /// (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the database says about a job being submitted.
struct Facts {
    /// The site's record, when it is hosted.
    site: Option<crate::store::Site>,
    /// The site was hosted once and removed (its tombstone is kept).
    site_removed: bool,
    /// The job names a group or node (`target`) with no registered node in it.
    target_empty: bool,
    nodes: std::collections::BTreeSet<String>,
}

/// What became of a cancellation, decided on the store thread so a job cannot start in between.
enum Cancelled {
    Done,
    NoSuchJob,
    /// Running; whether it repeats (its next run is scheduled when it ends).
    Running(bool),
    Ended(JobState),
}

impl Mover {
    /// Accepts a job due at `due_ms` (ms since the epoch; 0, or up to a minute ago: as soon as it does not
    /// conflict; earlier is refused); returns its id.
    pub async fn submit(&self, spec: JobSpec, due_ms: u64) -> Result<String, SubmitError> {
        validate(&spec).map_err(SubmitError::Invalid)?;
        validate_due(due_ms, now_ms()).map_err(SubmitError::Invalid)?;
        if let Some(caches) = &spec.caches {
            crate::freshness::check_files(caches)
                .await
                .map_err(SubmitError::Invalid)?;
        }
        if let Some(staging) = &spec.staging
            && spec.kind == JobKind::Publish
        {
            // Where the mover was started from is no part of a job: a relative path would name another
            // directory after a restart from elsewhere (`tern publish` makes its path absolute).
            if !Path::new(staging).is_absolute() {
                return Err(SubmitError::Invalid(format!(
                    "staging directory {staging} is not an absolute path: give the full path on the mover's machine"
                )));
            }
            if !Path::new(staging).is_dir() {
                return Err(SubmitError::Invalid(format!(
                    "staging directory {staging} is missing or not a directory (on the mover's machine)"
                )));
            }
            overlaps_data(Path::new(staging), &self.config.data).map_err(SubmitError::Invalid)?;
        }
        let asked = spec.clone();
        let facts = self
            .store
            .call(move |store| {
                let target_empty = match &asked.target {
                    Some(target @ (Target::Group(_) | Target::Node(_))) => store.target_nodes(target)?.is_empty(),
                    _ => false,
                };
                let site = store.site(&asked.site)?;
                Ok(Facts {
                    site,
                    site_removed: store.is_removed(&asked.site)?,
                    target_empty,
                    nodes: store.job_nodes(&asked)?,
                })
            })
            .await?;
        if facts.site.is_none() && facts.site_removed && spec.kind != JobKind::Publish {
            return Err(SubmitError::Invalid(format!(
                "site {} was removed: nothing of it is kept to roll back, restore or synchronise; publish it again",
                spec.site
            )));
        }
        if facts.site.is_none() && spec.kind != JobKind::Publish {
            return Err(SubmitError::Invalid(format!(
                "site {} was never published; publish it first",
                spec.site
            )));
        }
        if let Some(number) = spec.checkpoint
            && !self.site_dir(&spec.site).checkpoint(number).is_dir()
        {
            return Err(SubmitError::Invalid(format!(
                "site {} has no checkpoint {number} (see GET /api/checkpoints?site={})",
                spec.site, spec.site
            )));
        }
        if facts.target_empty {
            match &spec.target {
                Some(Target::Group(group)) => {
                    return Err(SubmitError::Invalid(format!(
                        "group {group} has no registered nodes (nodes join with `tern node --group {group}`, or PUT /api/groups/{group})"
                    )));
                }
                Some(Target::Node(node)) => {
                    return Err(SubmitError::Invalid(format!(
                        "no node {node} is registered (`tern nodes` lists them; a node registers when `tern node --name {node}` starts)"
                    )));
                }
                _ => {}
            }
        }
        let now = now_ms();
        // A rollback due now that cannot be done is refused here, not shown starting and then failing; a
        // later one is checked when it runs (a publish in between gives it a version to go back to).
        if spec.kind == JobKind::Rollback
            && due_ms <= now
            && let Some(site) = &facts.site
            && let Some(refusal) = self.rollback_refusal(site).await
        {
            return Err(SubmitError::Invalid(refusal));
        }
        if due_ms <= now && spec.on_conflict == ConflictPolicy::Refuse {
            let claim = Claim::new("new", &spec, facts.nodes);
            let running = self.running().clone();
            if let Some((_, Decision::Refuse(other))) = decide(&running, &[claim]).pop() {
                return Err(SubmitError::Conflict(format!(
                    "job {other} is running for {} on the same nodes; this job's policy is to refuse (use on_conflict \"queue\" to wait)",
                    spec.site
                )));
            }
        }
        let id = self.new_job_id(spec.kind, now);
        let created = id.clone();
        self.store
            .call(move |store| store.create_job(&created, &spec, due_ms.max(now), now))
            .await?;
        self.wake.notify_one();
        Ok(id)
    }

    /// Cancels a job that has not started (a repeating job's next run: that ends the series).
    pub async fn cancel(&self, id: &str) -> Result<(), SubmitError> {
        let job = id.to_string();
        let now = now_ms();
        let outcome = self
            .store
            .call(move |store| {
                let Some(current) = store.job(&job)? else {
                    return Ok(Cancelled::NoSuchJob);
                };
                Ok(match current.state {
                    JobState::Scheduled | JobState::Queued => {
                        store.set_job_state(&job, JobState::Cancelled, Some("cancelled by the operator"), now)?;
                        Cancelled::Done
                    }
                    JobState::Running => Cancelled::Running(current.spec.every_s.is_some()),
                    ended => Cancelled::Ended(ended),
                })
            })
            .await?;
        match outcome {
            Cancelled::Done => Ok(()),
            Cancelled::NoSuchJob => Err(SubmitError::Invalid(format!("no job {id}"))),
            Cancelled::Running(false) => Err(SubmitError::Conflict(format!(
                "job {id} is running and cannot be cancelled halfway; it ends by itself: nodes that do not answer fail \
                 within the delivery timeout, a group leader that stops reporting is given up on after 30 s and its \
                 segment served directly (the mover's log says what it waits for)"
            ))),
            Cancelled::Running(true) => Err(SubmitError::Conflict(format!(
                "job {id} is running and cannot be cancelled halfway; it ends by itself (nodes that do not answer \
                 fail within the delivery timeout), then its next run is scheduled: cancel that run (`tern jobs` \
                 lists it) to end the series"
            ))),
            Cancelled::Ended(state) => Err(SubmitError::Conflict(format!("job {id} has already ended ({state})"))),
        }
    }
}

/// Refuses a staging directory inside the mover's data directory or holding it: publishing it would send
/// the mover's keys and database to every node.
fn overlaps_data(staging: &Path, data: &Path) -> Result<(), String> {
    let (Ok(staging), Ok(data)) = (staging.canonicalize(), data.canonicalize()) else {
        return Ok(());
    };
    if staging.starts_with(&data) || data.starts_with(&staging) {
        return Err(format!(
            "staging directory {} overlaps the mover's data directory {} (its keys and database would be \
             published): stage the site elsewhere",
            staging.display(),
            data.display()
        ));
    }
    Ok(())
}
