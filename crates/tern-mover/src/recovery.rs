//! Finishing a decided job's record (seed 004: the CCM's commit, made durable). A job that changes the
//! mover's record — publish, restore, rollback, remove — writes its [`Decision`] to the database before
//! the first commit message leaves ([`crate::delivery::Shipment::decision`]); from then on the nodes may
//! have switched, so the mover's record follows them whatever happens to the mover.
//!
//! The job finishes its record itself ([`finish_on_disk`], then [`crate::store::Store::finish_decision`]).
//! A mover that stopped between the decision and that (a crash, `kill -9`, a power cut after the database
//! write) finds the decision unfinished at its next start and rolls the job forward ([`roll_forward`]): the
//! shadow copy becomes the decided tree, the snapshot is recorded when it was written, the site's record
//! takes the decided version, and the job ends committed. Nodes that had not committed are brought up to
//! date by the normal catch-up when they register — with the commit alone when they registered the version
//! as prepared, else with the snapshot's delta, not a full copy ([`crate::synchronise`]) — and a
//! node that did commit but whose answer was not recorded shows committed once it registers holding the
//! version ([`crate::store::Store::confirm_commits`]). A job that had not reached its decision switched
//! nothing anywhere, and is rolled back as before (tried again or failed, `Store::recover_interrupted`).

use std::path::{Path, PathBuf};

use tern_tree::remove_tree;
use tern_wire::mover::JobState;
use tracing::{info, warn};

use crate::store::{Decision, Finish, Site, SnapshotRecord, Store};
use crate::versions::SiteDir;

/// What finishing a decision on disk leaves for the database to record.
#[derive(Debug)]
pub struct Finished {
    /// The site's record after the commit (`None`: a remove, the record becomes a tombstone).
    pub site: Option<Site>,
    /// The snapshot of the version, when it is on disk.
    pub snapshot: Option<SnapshotRecord>,
    /// Trees superseded by the new shadow copy, to delete off the job's path.
    pub superseded: Vec<PathBuf>,
}

/// Does the filesystem part of finishing `decision` under the mover's data directory `data`; safe to
/// repeat (a step already done is not done again).
pub fn finish_on_disk(data: &Path, decision: &Decision, now_ms: u64) -> std::io::Result<Finished> {
    let site_dir = SiteDir::new(data, &decision.site);
    match &decision.finish {
        Finish::Publish { site, snapshot } => {
            // `shadow-next` was complete before the decision; if it is gone, it was promoted already.
            let superseded = if site_dir.has_next() {
                site_dir.promote_next()?
            } else {
                Vec::new()
            };
            // The renames are durable before the record says the job finished (below, by the caller).
            tern_tree::sync_directory(site_dir.path())?;
            // The snapshot was written before the decision, unless writing it failed (then it is not kept:
            // nodes behind get a full copy instead of the delta).
            let snapshot = snapshot
                .clone()
                .filter(|record| site_dir.open_snapshot(record.sequence).is_ok());
            Ok(Finished {
                site: Some(site.to_site(&decision.site)),
                snapshot,
                superseded,
            })
        }
        Finish::Rollback { site, inode } => {
            site_dir.swap_previous_to(*inode)?;
            tern_tree::sync_directory(site_dir.path())?;
            Ok(Finished {
                site: Some(site.to_site(&decision.site)),
                snapshot: None,
                superseded: Vec::new(),
            })
        }
        Finish::Remove => {
            // The mover's copies are kept aside for the operator to delete.
            let removed = data.join("removed");
            std::fs::create_dir_all(&removed)?;
            if site_dir.path().exists() {
                std::fs::rename(site_dir.path(), removed.join(format!("{}-{now_ms}", decision.site)))?;
                tern_tree::sync_directory(&removed)?;
                if let Some(sites) = site_dir.path().parent() {
                    tern_tree::sync_directory(sites)?;
                }
            }
            Ok(Finished {
                site: None,
                snapshot: None,
                superseded: Vec::new(),
            })
        }
    }
}

/// Rolls forward every job that decided to commit before the mover stopped (run at start, before
/// interrupted jobs are tried again or failed, on a blocking thread). Returns how many.
pub fn roll_forward(store: &Store, data: &Path, now_ms: u64) -> Result<usize, String> {
    let decisions = store.unfinished_decisions().map_err(|e| e.to_string())?;
    let mut finished = 0;
    for (n, decision) in decisions.into_iter().enumerate() {
        let job = decision.job.clone();
        let on_disk = match finish_on_disk(data, &decision, now_ms) {
            Ok(on_disk) => on_disk,
            Err(error) => {
                // The record stays behind the nodes; the decision stays, so the next start tries again.
                warn!(%job, site = %decision.site, %error, "decided job not finished; the next start tries again");
                let message = format!(
                    "the mover stopped after deciding to commit, and cannot finish the record ({error}); fix the cause and restart the mover"
                );
                store.note(Some(&job), &message, now_ms).map_err(|e| e.to_string())?;
                continue;
            }
        };
        store
            .finish_decision(
                &job,
                &decision.site,
                on_disk.site.as_ref(),
                on_disk.snapshot.as_ref(),
                now_ms,
            )
            .map_err(|e| e.to_string())?;
        for tree in on_disk.superseded {
            let _ = remove_tree(&tree);
        }
        let outcome = match decision.finish {
            Finish::Remove => format!(
                "the mover stopped after deciding to remove {}; finished at its start (a node that did not remove it: run the remove again)",
                decision.site
            ),
            _ => format!(
                "the mover stopped after deciding to commit version {} of {}; finished at its start (nodes that did not commit are brought up to date when they register)",
                decision.version, decision.site
            ),
        };
        store.note(Some(&job), &outcome, now_ms).map_err(|e| e.to_string())?;
        match store.job(&job).map_err(|e| e.to_string())? {
            // A repeating job's next run is scheduled as when a run ends without a restart.
            Some(record) => {
                let next_id = crate::store::restart_job_id(record.spec.kind, now_ms, "rolled", n);
                // The job's message says how it ended: its nodes' commits were not all answered.
                store
                    .end_job(&record, JobState::Committed, Some(&outcome), &next_id, now_ms)
                    .map_err(|e| e.to_string())?;
            }
            None => store
                .set_job_state(&job, JobState::Committed, Some(&outcome), now_ms)
                .map_err(|e| e.to_string())?,
        }
        info!(%job, site = %decision.site, version = decision.version, "decided job rolled forward");
        finished += 1;
    }
    Ok(finished)
}

/// At the mover's start, after [`roll_forward`]: deletes what interrupted jobs left in every site's
/// directory ([`SiteDir::remove_leftovers`]), except in sites with a decision still unfinished (the next
/// start finishes it from those files). Returns the entries deleted.
pub fn remove_leftovers(store: &Store, data: &Path) -> Result<usize, String> {
    let Ok(entries) = std::fs::read_dir(data.join("sites")) else {
        return Ok(0);
    };
    let unfinished: std::collections::BTreeSet<String> = store
        .unfinished_decisions()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|decision| decision.site)
        .collect();
    let mut count = 0;
    for entry in entries.flatten() {
        let Some(site) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if unfinished.contains(&site) || !entry.path().is_dir() {
            continue;
        }
        let kept = store
            .snapshots(&site)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|record| record.sequence)
            .collect();
        let removed = SiteDir::new(data, &site).remove_leftovers(&kept);
        if !removed.is_empty() {
            info!(%site, removed = %removed.join(", "), "left behind by jobs the mover's stop interrupted; deleted");
            count += removed.len();
        }
    }
    Ok(count)
}

impl crate::ccm::Mover {
    /// Finishes a decided job's record once its commit went out (the path every decided job takes when the
    /// mover does not stop): under the site's lock, the disk first, then the database in one transaction.
    /// An error leaves the decision unfinished, so the next start finishes it.
    pub(crate) async fn finish_decided(&self, decision: Decision) -> Result<(), String> {
        let lock = self.shadow_lock(&decision.site);
        let _guard = lock.lock().await;
        let (data, now) = (self.config.data.clone(), crate::ccm::now_ms());
        let (job, site) = (decision.job.clone(), decision.site.clone());
        let on_disk = tokio::task::spawn_blocking(move || finish_on_disk(&data, &decision, now))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("the nodes committed, but the mover's copy was not updated ({e}); restart the mover to finish the record"))?;
        let (record, snapshot) = (on_disk.site, on_disk.snapshot);
        self.store
            .call(move |store| store.finish_decision(&job, &site, record.as_ref(), snapshot.as_ref(), now))
            .await
            .map_err(|e| {
                format!(
                    "the nodes committed, but the mover's record was not updated ({e}); restart the mover to finish it"
                )
            })?;
        // The tree before the previous one is deleted after the job, not before it reports.
        let superseded = on_disk.superseded;
        tokio::task::spawn_blocking(move || {
            for tree in superseded {
                let _ = remove_tree(&tree);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tern_wire::mover::{JobKind, JobSpec};

    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    #[test]
    fn a_repeating_job_ended_by_a_restart_keeps_repeating() {
        let area = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&area.path().join("mover.db")).expect("open");
        let repeating = |kind, site: &str| {
            let mut spec = JobSpec::new(kind, site);
            spec.every_s = Some(3600);
            spec
        };
        // Two hourly jobs were running when the mover stopped: one had decided to commit (it is rolled
        // forward), the other had not and has no retries left (it fails).
        let (decided, undecided) = (
            repeating(JobKind::Remove, "www"),
            repeating(JobKind::Synchronise, "blog"),
        );
        store.create_job("remove-1", &decided, 1_000, 1_000).expect("create");
        store
            .create_job("synchronise-1", &undecided, 1_000, 1_000)
            .expect("create");
        for id in ["remove-1", "synchronise-1"] {
            store.start_job(id, &BTreeSet::new(), 1_000).expect("start");
        }
        let decision = Decision {
            job: "remove-1".into(),
            site: "www".into(),
            version: 0,
            finish: Finish::Remove,
        };
        store.decide(&decision, 1_500).expect("decide");

        let now = 2 * HOUR_MS + 5_000;
        assert_eq!(roll_forward(&store, area.path(), now).expect("roll forward"), 1);
        assert_eq!(store.recover_interrupted(now).expect("recover"), (0, 1));

        let ended = |id: &str| store.job(id).expect("read").expect("job");
        assert_eq!(ended("remove-1").state, JobState::Committed);
        let failed = ended("synchronise-1");
        assert_eq!(failed.state, JobState::Failed);
        assert!(
            failed
                .error
                .as_deref()
                .is_some_and(|e| e.contains("next run is on the schedule")),
            "{:?}",
            failed.error
        );
        // Each has its next run on the schedule, at the next hour of its own due time after now.
        let mut next: Vec<(String, JobKind, u64, JobState)> = store
            .pending_jobs()
            .expect("pending")
            .into_iter()
            .map(|job| (job.spec.site.clone(), job.spec.kind, job.due_ms, job.state))
            .collect();
        next.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            next,
            vec![
                (
                    "blog".into(),
                    JobKind::Synchronise,
                    1_000 + 3 * HOUR_MS,
                    JobState::Scheduled
                ),
                ("www".into(), JobKind::Remove, 1_000 + 3 * HOUR_MS, JobState::Scheduled),
            ],
            "pending: {next:?}"
        );
    }

    #[test]
    fn a_job_whose_record_was_finished_before_the_stop_ends_committed_and_is_not_run_again() {
        let area = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&area.path().join("mover.db")).expect("open");
        let mut spec = JobSpec::new(JobKind::Remove, "www");
        spec.retries = 3;
        store.create_job("remove-1", &spec, 1_000, 1_000).expect("create");
        store.start_job("remove-1", &BTreeSet::new(), 1_000).expect("start");
        let decision = Decision {
            job: "remove-1".into(),
            site: "www".into(),
            version: 0,
            finish: Finish::Remove,
        };
        store.decide(&decision, 1_500).expect("decide");
        // The job finished its record (the path of every job the mover does not stop), then the mover
        // was killed before the job was marked committed.
        store
            .finish_decision("remove-1", "www", None, None, 1_600)
            .expect("finish");
        assert_eq!(roll_forward(&store, area.path(), 2_000).expect("roll forward"), 0);
        assert_eq!(store.recover_interrupted(2_000).expect("recover"), (0, 0));
        let job = store.job("remove-1").expect("read").expect("job");
        assert_eq!(job.state, JobState::Committed, "not failed, and not tried again");
    }

    #[test]
    fn what_interrupted_jobs_left_is_deleted_at_start_but_not_where_a_decision_waits() {
        let area = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&area.path().join("mover.db")).expect("open");
        let record = |sequence| SnapshotRecord {
            sequence,
            base: sequence - 1,
            job: format!("j{sequence}"),
            bytes: 1,
            created_ms: 0,
        };
        store.add_snapshot("www", &record(3)).expect("record");
        for site in ["www", "blog"] {
            let dir = area.path().join("sites").join(site);
            std::fs::create_dir_all(dir.join("snapshots")).expect("mkdir");
            for name in ["3.asg", "5.asg", "6.asg.tmp"] {
                std::fs::write(dir.join("snapshots").join(name), "x").expect("write");
            }
            for tree in [
                "superseded-17/a",
                "shadow-next/b",
                "shadow/index.html",
                "checkpoints/.new/c",
            ] {
                let path = dir.join(tree);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(path, "x").expect("write");
            }
        }
        // blog's publish decided to commit and could not finish: its files are what the next start needs.
        let decision = Decision {
            job: "blog-publish".into(),
            site: "blog".into(),
            version: 6,
            finish: Finish::Remove,
        };
        store.decide(&decision, 1).expect("decide");
        assert_eq!(remove_leftovers(&store, area.path()).expect("tidy"), 5);
        let www = area.path().join("sites/www");
        assert!(www.join("snapshots/3.asg").exists(), "a recorded snapshot stays");
        assert!(www.join("shadow/index.html").exists(), "the shadow copy stays");
        for gone in [
            "snapshots/5.asg",
            "snapshots/6.asg.tmp",
            "superseded-17",
            "shadow-next",
            "checkpoints/.new",
        ] {
            assert!(!www.join(gone).exists(), "{gone}");
        }
        let blog = area.path().join("sites/blog");
        assert!(blog.join("shadow-next/b").exists() && blog.join("snapshots/5.asg").exists());
    }
}
