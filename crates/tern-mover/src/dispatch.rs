//! The scheduler loop (seed 004: the CCM's scheduler): on every wake-up and at least every
//! [`SCHEDULER_TICK`], it starts the due jobs that [`crate::schedule::decide`] lets start, queues or refuses
//! the others, runs each started job's try in a task of its own, and records how the try ended — committed,
//! back on the schedule ([`crate::schedule::after_failure`]) or failed — then schedules a repeating job's
//! next run ([`crate::schedule::next_run`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tern_wire::mover::{Job, JobKind, JobState};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ccm::{Mover, now_ms};
use crate::schedule::{AfterFailure, Claim, Decision, after_failure, decide};

/// Longest the scheduler sleeps between looks at the schedule.
pub const SCHEDULER_TICK: Duration = Duration::from_millis(500);

/// Starts due jobs until shutdown.
pub(crate) async fn scheduler(mover: Arc<Mover>, shutdown: CancellationToken) {
    loop {
        mover.dispatch(now_ms()).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = mover.wake.notified() => {}
            _ = tokio::time::sleep(SCHEDULER_TICK) => {}
        }
    }
}

impl Mover {
    /// Sets the segments' gauges at `now_ms`, and warns once when a segment's leader falls silent (it died
    /// and no other was elected, or every member is `--never-lead`): its members are served directly.
    fn observe_segments(&self, now_ms: u64) {
        let (views, became_silent) = self.segments.newly_silent(now_ms);
        for view in &views {
            let label = crate::metrics::SegmentLabel {
                segment: view.name.clone(),
            };
            let age = now_ms.saturating_sub(view.reported_ms) / 1000;
            self.metrics
                .segment_report_age
                .get_or_create(&label)
                .set(i64::try_from(age).unwrap_or(i64::MAX));
            let silent = crate::segments::leader_silent(view, now_ms);
            self.metrics
                .segment_leader_silent
                .get_or_create(&label)
                .set(i64::from(silent));
            if became_silent.contains(&view.name) {
                warn!(segment = %view.name, leader = %view.leader,
                    "group leader {} of segment {} has not reported for 30 s: the mover serves the segment's members \
                     directly until a leader reports (it died and no other was elected, or every member is --never-lead)",
                    view.leader, view.name);
            }
        }
    }
}

/// What the schedule holds at one look.
struct Schedule {
    /// Jobs due now and not running, with the nodes each is for.
    due: Vec<(Job, BTreeSet<String>)>,
    /// Jobs not ended.
    pending: usize,
    /// Registered nodes.
    nodes: usize,
}

impl Mover {
    /// Starts the jobs due at `now` that do not conflict with running ones; queues or refuses the others.
    async fn dispatch(self: &Arc<Self>, now: u64) {
        let read = self
            .store
            .call(move |store| {
                let pending = store.pending_jobs()?;
                let mut due = Vec::new();
                for job in &pending {
                    if job.state == JobState::Running || job.due_ms > now {
                        continue;
                    }
                    match store.job_nodes(&job.spec) {
                        Ok(nodes) => due.push((job.clone(), nodes)),
                        Err(error) => warn!(job = %job.id, %error, "cannot resolve the job's nodes"),
                    }
                }
                Ok(Schedule {
                    due,
                    pending: pending.len(),
                    nodes: store.nodes()?.len(),
                })
            })
            .await;
        let schedule = match read {
            Ok(schedule) => schedule,
            Err(error) => {
                warn!(%error, "cannot read the schedule");
                return;
            }
        };
        self.metrics.jobs_pending.set(schedule.pending as i64);
        self.metrics.nodes.set(schedule.nodes as i64);
        self.observe_segments(now);
        if schedule.due.is_empty() {
            return;
        }
        let claims: Vec<Claim> = schedule
            .due
            .iter()
            .map(|(job, nodes)| Claim::new(&job.id, &job.spec, nodes.clone()))
            .collect();
        // A started job's claim is held from the decision on, so a job submitted meanwhile sees it.
        let decisions = {
            let mut running = self.running();
            let decisions = decide(&running, &claims);
            for (((job, _), claim), (_, decision)) in schedule.due.iter().zip(&claims).zip(&decisions) {
                let nowhere_to_run = job.spec.uses_nodes() && claim.nodes.is_empty();
                if *decision == Decision::Start && !nowhere_to_run {
                    running.push(claim.clone());
                }
            }
            decisions
        };
        for ((job, nodes), (_, decision)) in schedule.due.into_iter().zip(decisions) {
            match decision {
                Decision::Start if job.spec.uses_nodes() && nodes.is_empty() => {
                    let reason = "no registered nodes to run on; start `tern node --mover URL ...` first";
                    self.end(&job, JobState::Failed, Some(reason), now).await;
                }
                Decision::Start => self.start(job, nodes, now).await,
                Decision::Wait(other) => {
                    let id = job.id.clone();
                    let reason = format!("waiting for job {other}");
                    let _ = self.store.call(move |store| store.queue_job(&id, &reason, now)).await;
                }
                Decision::Refuse(other) => {
                    let reason = format!("refused: job {other} was running for the same site and nodes");
                    self.end(&job, JobState::Refused, Some(&reason), now).await;
                }
            }
        }
        self.metrics.jobs_running.set(self.running().len() as i64);
    }

    /// Marks `job` running on `nodes` and runs its try in a task of its own.
    async fn start(self: &Arc<Self>, job: Job, nodes: BTreeSet<String>, now: u64) {
        // Stamped now, not at the tick's start: a job whose claim this one waited for may have released it
        // (stamping its finish) during the tick, and a start never precedes that finish.
        let now = now.max(now_ms());
        let (id, held) = (job.id.clone(), nodes.clone());
        if let Err(error) = self.store.call(move |store| store.start_job(&id, &held, now)).await {
            warn!(job = %job.id, %error, "cannot start the job");
            self.release(&job.id);
            return;
        }
        let mover = self.clone();
        tokio::spawn(async move { mover.execute(job, nodes.into_iter().collect()).await });
    }

    /// Drops a job's claim on its nodes.
    fn release(&self, id: &str) {
        self.running().retain(|claim| claim.job != id);
    }

    /// Runs one try of a job and records how it ended: committed, failed, or back on the schedule for a
    /// retry; a repeating job's next run is scheduled once this one has ended.
    async fn execute(self: Arc<Self>, job: Job, nodes: Vec<String>) {
        let (id, site) = (job.id.as_str(), job.spec.site.as_str());
        info!(job = %id, kind = %job.spec.kind, %site, nodes = nodes.len(), attempt = job.attempt + 1, "job running");
        // An unchanged publish contacts no node, so the load balancer has nothing to learn from it.
        let mut touched_nodes = true;
        let outcome = match job.spec.kind {
            JobKind::Publish => self.run_publish(&job, &nodes).await.map(|published| {
                touched_nodes = published.touched_nodes();
            }),
            JobKind::Restore => self.run_restore(&job, &nodes).await,
            JobKind::Synchronise => self.run_synchronise(id, site, &nodes, false).await,
            JobKind::Replicate => self.run_synchronise(id, site, &nodes, true).await,
            JobKind::Rollback => self.run_rollback(id, site, &nodes).await,
            JobKind::Remove => self.run_remove(id, site, &nodes).await,
            JobKind::Checkpoint => self.checkpoint(site).await.map(|_| ()),
        };
        if touched_nodes {
            self.update_rotation(id, &nodes).await;
        }
        // The end is stamped before the claim on the nodes is dropped: a job waiting for them then starts
        // at or after this one's recorded finish.
        let now = now_ms();
        self.release(id);
        match outcome {
            Ok(()) => {
                info!(job = %id, %site, "job committed");
                self.end(&job, JobState::Committed, None, now).await;
            }
            Err(error) => match after_failure(job.attempt + 1, &job.spec, now) {
                AfterFailure::Retry { due_ms } => {
                    let (retried, reason) = (id.to_string(), error.clone());
                    let _ = self
                        .store
                        .call(move |store| store.retry_job(&retried, &reason, due_ms, now))
                        .await;
                    self.metrics.job(job.spec.kind, "retried");
                    warn!(job = %id, %site, %error, attempt = job.attempt + 1, retries = job.spec.retries, "job failed; tried again later");
                }
                AfterFailure::Fail => {
                    warn!(job = %id, %site, %error, "job failed");
                    self.end(&job, JobState::Failed, Some(&error), now).await;
                }
            },
        }
        self.wake.notify_one();
    }

    /// Ends `job` in `state` (committed, failed or refused), counts it, and schedules a repeating job's
    /// next run.
    async fn end(&self, job: &Job, state: JobState, error: Option<&str>, now: u64) {
        let (ended, reason) = (job.clone(), error.map(str::to_string));
        let next_id = self.new_job_id(job.spec.kind, now);
        let created = next_id.clone();
        let scheduled = self
            .store
            .call(move |store| store.end_job(&ended, state, reason.as_deref(), &created, now))
            .await;
        self.metrics.job(job.spec.kind, state.as_str());
        match scheduled {
            Ok(Some(next)) => {
                info!(job = %next_id, after = %job.id, in_s = next.saturating_sub(now) / 1000, "next run of a repeating job scheduled")
            }
            Ok(None) => {}
            Err(error) => {
                warn!(job = %job.id, %error, "cannot end the job or schedule the next run of a repeating job")
            }
        }
    }
}
