//! The publish and restore jobs (seed 004: a publication from the staging server, and a restore from a
//! checkpoint). The staging tree is planned against the shadow copy ([`crate::plan`](mod@crate::plan)) into one assignment
//! carrying the difference, which is delivered in two phases ([`crate::delivery::carry`]); meanwhile the
//! next shadow copy is built and the assignment kept as the new version's snapshot; the decision to commit
//! is recorded before any node is told to commit ([`crate::recovery`]), and once the nodes have committed
//! the next shadow copy becomes the shadow copy and the site's record moves to the new version. What the commit
//! changed goes to the site's caches, when it names any ([`crate::freshness`]).
//!
//! A publish of a tree that has not changed since the published version (a re-run of a deploy script) is
//! an immediate success: no version is consumed, no snapshot kept, no node contacted, and the load balancer
//! is not told anything ([`Published::Unchanged`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_tree::{Snapshot, remove_tree};
use tern_wire::assignment::AssignmentKind;
use tern_wire::mover::{Job, NodeState};
use tracing::{info, warn};

use crate::ccm::{Mover, now_ms};
use crate::delivery::{Delivered, Quorum};
use crate::freshness::Changed;
use crate::plan::{Plan, Publication, plan_site};
use crate::rules::{CompiledRules, Rules};
use crate::schedule::Target;
use crate::store::{DecidedSite, Decision, Finish, Site, SnapshotRecord};
use crate::versions::unpack_tree;

/// How a publish ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Published {
    /// The nodes committed this new version.
    Version(u64),
    /// Staging is the published version already: nothing was sent to any node.
    Unchanged(u64),
}

impl Published {
    /// Whether nodes were contacted (and the load balancer has something to learn).
    pub(crate) fn touched_nodes(self) -> bool {
        matches!(self, Published::Version(_))
    }
}

impl Mover {
    /// Publishes the job's staging directory.
    pub(crate) async fn run_publish(self: &Arc<Self>, job: &Job, nodes: &[String]) -> Result<Published, String> {
        let staging = job.spec.staging.clone().ok_or("a publish needs a staging directory")?;
        if !Path::new(&staging).is_dir() {
            return Err(format!("staging directory {staging} is missing or not a directory"));
        }
        let rules = job.spec.rules.clone();
        self.publish_tree(job, nodes, PathBuf::from(staging), false, rules)
            .await
    }

    /// A restore publishes the checkpoint's tree whole (the nodes' trees start empty) as a new version.
    pub(crate) async fn run_restore(self: &Arc<Self>, job: &Job, nodes: &[String]) -> Result<(), String> {
        let number = job.spec.checkpoint.ok_or("a restore names a checkpoint")?;
        let site_dir = self.site_dir(&job.spec.site);
        let packed = site_dir.checkpoint(number);
        let unpacked = site_dir.path().join(format!("restore-{}", job.id));
        let target = unpacked.clone();
        tokio::task::spawn_blocking(move || {
            let _ = remove_tree(&target);
            unpack_tree(&packed, &target)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("checkpoint {number}: {e}"))?;
        let outcome = self
            .publish_tree(job, nodes, unpacked.clone(), true, Some(Rules::default()))
            .await;
        let _ = tokio::task::spawn_blocking(move || remove_tree(&unpacked)).await;
        outcome.map(|_| ())
    }

    /// Publishes `staging` as the site's next version: plan, deliver (quorum of the mover's policy), then
    /// make the planned tree the shadow copy and record the version. A tree that plans no command is not
    /// delivered at all.
    async fn publish_tree(
        self: &Arc<Self>,
        job: &Job,
        nodes: &[String],
        staging: PathBuf,
        restore: bool,
        rules: Option<Rules>,
    ) -> Result<Published, String> {
        let (id, name) = (job.id.as_str(), job.spec.site.as_str());
        self.adopt_caches(job).await?;
        let wanted = name.to_string();
        // A removed site's tombstone is read too: its versions go on above the highest it issued; so do a
        // new site's, above a first publish that failed.
        let (site, issued) = self
            .store
            .call(move |store| Ok((store.site_record(&wanted)?, store.issued_high(&wanted)?)))
            .await
            .map_err(|e| e.to_string())?;
        let mut site = site.unwrap_or_else(|| Site {
            name: name.to_string(),
            sequence: 0,
            previous: 0,
            high: issued,
            target: Target::All,
            rules: Rules::default(),
            snapshot: String::new(),
        });
        let rules = rules.unwrap_or_else(|| site.rules.clone());
        let published: Snapshot = serde_json::from_str(&site.snapshot).unwrap_or_default();
        let next = site.next_version();
        let site_dir = self.site_dir(name);
        let kind = if restore {
            AssignmentKind::Restore
        } else {
            AssignmentKind::Publish
        };
        let planned = {
            let lock = self.shadow_lock(name);
            let _guard = lock.lock().await;
            let mut base = if restore { Snapshot::new() } else { published.clone() };
            if job.spec.checksum {
                tern_tree::forget_stats(&mut base); // every staging file is read (`--checksum`)
            }
            // Nodes apply it to the published version, and one that holds another refuses it.
            let base_version = (!restore && site.sequence > 0).then_some(site.sequence);
            self.plan_in_background(id, name, next, base_version, staging.clone(), base, kind, rules.clone())
                .await?
        };
        if planned.stats.setid_cleared > 0 {
            let message = format!(
                "{} staged entries have set-user-ID or set-group-ID bits, which are not carried to the nodes \
                 (the first: {}); clear them in staging",
                planned.stats.setid_cleared,
                planned.stats.setid_first.as_deref().unwrap_or("")
            );
            warn!(job = %id, site = %name, "{message}");
            // In the job's history too, where `tern jobs` and the admin UI show it.
            let job_id = id.to_string();
            let _ = self
                .store
                .call(move |store| store.note(Some(&job_id), &message, now_ms()))
                .await;
        }
        if planned.stats.is_unchanged() && !restore && site.sequence != 0 {
            // Rules or a target given with this publish still become the site's, as after a new version;
            // the snapshot, equal to the published one, has the scan's fresher stat data (files hashed again).
            site.rules = rules;
            site.snapshot = serde_json::to_string(&planned.snapshot).map_err(|e| e.to_string())?;
            if let Some(target) = &job.spec.target
                && !matches!(target, Target::Node(_))
            {
                site.target = target.clone();
            }
            self.nothing_to_publish(id, site.clone(), nodes).await;
            return Ok(Published::Unchanged(site.sequence));
        }
        info!(job = %id, site = %name, version = next, created = planned.stats.created, patched = planned.stats.patched,
              copied = planned.stats.copied, removed = planned.stats.removed, directories = planned.stats.directories,
              links = planned.stats.links, metadata = planned.stats.metadata, bytes = planned.stats.assignment_bytes,
              "publish planned");
        let assignment = planned.assignment.clone();
        let reserved = name.to_string();
        self.store
            .call(move |store| store.reserve_version(&reserved, next))
            .await
            .map_err(|e| format!("cannot record version {next} before delivering it: {e}"))?;
        // The site's record once the nodes commit, decided before the first commit leaves.
        let mut decided = site.clone();
        decided.previous = site.sequence;
        decided.sequence = next;
        decided.high = next;
        decided.rules = rules;
        if let Some(target) = &job.spec.target
            && !matches!(target, Target::Node(_))
        {
            decided.target = target.clone();
        }
        decided.snapshot = serde_json::to_string(&planned.snapshot).map_err(|e| e.to_string())?;
        // The snapshot of this version: with it, a node one or a few versions behind is brought up to date
        // with the deltas rather than a full copy. A first publish has no base a node could hold (a node
        // without the site gets a full copy), so it is not kept.
        let keep_snapshot = !restore && site.sequence != 0;
        let snapshot = keep_snapshot.then(|| SnapshotRecord {
            sequence: next,
            base: site.sequence,
            job: id.to_string(),
            bytes: assignment.len(),
            created_ms: now_ms(),
        });
        let mut shipment = self.shipment(id, name, next, Some(assignment.clone()))?;
        shipment.changed = Some(Changed::between(&published, &planned.snapshot));
        shipment.decision = Some(Decision {
            job: id.to_string(),
            site: name.to_string(),
            version: next,
            finish: Finish::Publish {
                site: DecidedSite::of(&decided),
                snapshot,
            },
        });
        // The next shadow copy and the snapshot are written while the nodes prepare, so that the decision
        // to commit finds everything its record needs on disk (only this job changes the site's version,
        // and the shadow copy it links from changes only under the lock, after the commit).
        let (dir, snapshot, from, bytes) = (
            site_dir.clone(),
            planned.snapshot.clone(),
            staging.clone(),
            assignment.clone(),
        );
        let staged = tokio::task::spawn_blocking(move || {
            dir.stage_next(&from, &published, &snapshot)?;
            if keep_snapshot && let Err(error) = dir.save_snapshot(next, &bytes) {
                warn!(version = next, %error, "snapshot not kept");
            }
            // On disk before the decision to commit is recorded: a mover that loses power after it rolls
            // the job forward from this tree and snapshot.
            tern_tree::sync_file_system(dir.path())?;
            Ok::<_, std::io::Error>(())
        });
        let ready = async move {
            staged
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| format!("shadow copy: {e}")))
        };
        let delivered = self
            .ship(&shipment, nodes, Quorum::from_policy(self.config.quorum), ready)
            .await;
        let committed = match delivered {
            Delivered::Committed { committed } => committed,
            Delivered::Held { reason, .. } => {
                let dir = site_dir.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    dir.discard_next();
                    dir.drop_snapshot(next);
                })
                .await;
                return Err(reason.to_string());
            }
        };
        if let Some(decision) = shipment.decision {
            self.finish_decided(decision).await?;
        }
        if committed.len() < nodes.len() {
            return Err(format!(
                "committed on {} of {} nodes; the others are brought up to date when they register again",
                committed.len(),
                nodes.len()
            ));
        }
        Ok(Published::Version(next))
    }

    /// Ends an unchanged publish: the site's record keeps its version (its rules and target are saved),
    /// the job's nodes that hold the published version are marked committed (nothing was sent: they already
    /// hold it), the others say which version they hold, and the history says why no version was made.
    async fn nothing_to_publish(&self, job: &str, site: Site, nodes: &[String]) {
        info!(%job, site = %site.name, version = site.sequence, "staging is the published version; nothing sent");
        let (id, name, sequence, targets) = (job.to_string(), site.name.clone(), site.sequence, nodes.to_vec());
        let recorded = self
            .store
            .call(move |store| {
                store.save_site(&site)?;
                for node in &targets {
                    let held = store.node_version(node, &name)?;
                    if held == sequence {
                        store.set_job_node(&id, node, NodeState::Committed, 0, None, None)?;
                    } else {
                        let note = format!(
                            "holds version {held}, not {sequence}: an unchanged publish sends nothing; it is brought up to date when it registers again"
                        );
                        store.set_job_node(&id, node, NodeState::Pending, 0, Some(&note), None)?;
                    }
                }
                let message = format!("nothing changed since version {sequence} of {name}: no new version, no node contacted");
                store.note(Some(&id), &message, now_ms())
            })
            .await;
        if let Err(error) = recorded {
            warn!(%job, %error, "the outcome of an unchanged publish was not recorded");
        }
    }

    /// Plans an assignment on a blocking thread. `base` describes the shadow copy to diff against; an empty
    /// one sends every file whole (a full copy: the node's tree starts empty). `base_version` is the version
    /// that shadow copy is, which a node must hold to take the assignment (none for a full copy).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn plan_in_background(
        &self,
        job: &str,
        site: &str,
        sequence: u64,
        base_version: Option<u64>,
        staging: PathBuf,
        base: Snapshot,
        kind: AssignmentKind,
        rules: Rules,
    ) -> Result<Plan, String> {
        let compiled = CompiledRules::new(&rules).map_err(|e| e.to_string())?;
        let (signing, policy, site, job) = (
            self.signing.clone(),
            self.config.policy.clone(),
            site.to_string(),
            job.to_string(),
        );
        let shadow = self.site_dir(&site).shadow();
        tokio::task::spawn_blocking(move || {
            let publication = Publication {
                id: &job,
                site: &site,
                sequence,
                base: base_version,
                created_ms: now_ms(),
            };
            plan_site(
                &staging,
                &shadow,
                &base,
                &publication,
                &policy,
                &signing,
                kind,
                Some(&compiled),
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }
}
