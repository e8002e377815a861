//! The synchronise and replicate jobs (seed 004: a node that missed assignments is brought up to date; a
//! replicate sends a full copy). A node whose version is the base of a chain of snapshots gets those deltas,
//! one version after the other, each prepared and committed on its own; a node that registered a version on
//! that line as prepared (its temporary tree holds it whole: the mover stopped between prepare and commit)
//! is sent that version's commit alone first; any other node (or every one, for a replicate) gets a full
//! copy of the published version, planned from the shadow copy against nothing.

use std::sync::Arc;

use tern_tree::Snapshot;
use tern_wire::assignment::AssignmentKind;
use tern_wire::mover::NodeState;
use tracing::warn;

use crate::ccm::Mover;
use crate::delivery::{Delivered, Quorum, always_ready};
use crate::freshness::Changed;
use crate::payload::Payload;
use crate::rules::Rules;
use crate::store::SnapshotRecord;
use crate::versions::SiteDir;

impl Mover {
    /// Brings `nodes` to the published version of site `name`; with `full`, every node gets a full copy.
    /// Nodes already at the version are left alone (not for a replicate).
    pub(crate) async fn run_synchronise(
        self: &Arc<Self>,
        job: &str,
        name: &str,
        nodes: &[String],
        full: bool,
    ) -> Result<(), String> {
        let (wanted, targets) = (name.to_string(), nodes.to_vec());
        let read = self
            .store
            .call(move |store| {
                let Some(site) = store.site(&wanted)? else {
                    return Ok(None);
                };
                let snapshots = store.snapshots(&wanted)?;
                let held = targets
                    .iter()
                    .map(|node| store.node_version(node, &wanted))
                    .collect::<Result<Vec<u64>, _>>()?;
                Ok(Some((site, snapshots, held)))
            })
            .await
            .map_err(|e| e.to_string())?;
        let Some((site, snapshots, held)) = read else {
            return Err(format!("site {name} was never published"));
        };
        let site_dir = self.site_dir(name);
        let registered_prepared = self.prepared.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut whole = Vec::new();
        let mut current = Vec::new();
        for (node, held) in nodes.iter().zip(held) {
            if held == site.sequence && !full {
                let (id, done) = (job.to_string(), node.clone());
                let _ = self
                    .store
                    .call(move |store| store.set_job_node(&id, &done, NodeState::Committed, 0, None, None))
                    .await;
                current.push(node.clone());
                continue;
            }
            // A node that holds a version on the way prepared (a publish whose commit never came) is
            // sent that version's commit alone, then the deltas after it.
            let prepared = registered_prepared
                .get(node)
                .and_then(|sites| sites.get(name))
                .copied()
                .filter(|_| !full)
                .and_then(|prepared| {
                    after_prepared(&snapshots, held, prepared, site.sequence).map(|rest| (prepared, rest))
                });
            let (from, versions) = match prepared {
                Some((prepared, rest)) if self.commit_prepared(job, name, node, &site_dir, prepared).await => {
                    (prepared, Some(rest))
                }
                _ if full => (held, None),
                _ => (held, chain(&snapshots, held, site.sequence)),
            };
            match versions {
                Some(versions) if self.deliver_chain(job, name, node, &site_dir, &versions).await => {
                    current.push(node.clone())
                }
                Some(_) => {
                    // The history says why the node gets a full copy (its refusal, e.g. a commit of a
                    // version it did not prepare, would otherwise be only in the logs).
                    self.note_refusal(job, node, move |node, why| {
                        format!("{node} did not take the deltas from version {from} ({why}); a full copy follows")
                    })
                    .await;
                    whole.push(node.clone());
                }
                None => whole.push(node.clone()),
            }
        }
        if !whole.is_empty() {
            let full_copy = {
                let lock = self.shadow_lock(name);
                let _guard = lock.lock().await;
                self.plan_in_background(
                    job,
                    name,
                    site.sequence,
                    None,
                    site_dir.shadow(),
                    Snapshot::new(),
                    AssignmentKind::Replicate,
                    Rules::default(),
                )
                .await?
            };
            let shipment = self.shipment(job, name, site.sequence, Some(full_copy.assignment))?;
            if let Delivered::Committed { committed } =
                self.ship(&shipment, &whole, Quorum::EachNode, always_ready()).await
            {
                current.extend(committed);
            }
        }
        if current.len() < nodes.len() {
            return Err(format!("{} of {} nodes brought up to date", current.len(), nodes.len()));
        }
        Ok(())
    }

    /// Delivers the snapshots of `versions` (in order) to one node, each followed by its commit; whether
    /// the node holds the last one (`true` for none).
    async fn deliver_chain(
        self: &Arc<Self>,
        job: &str,
        name: &str,
        node: &str,
        site_dir: &SiteDir,
        versions: &[u64],
    ) -> bool {
        for &version in versions {
            let Some((assignment, changed)) = self.load_step(site_dir, version).await else {
                return false;
            };
            let Ok(mut shipment) = self.shipment(job, name, version, Some(assignment)) else {
                return false;
            };
            shipment.changed = changed;
            if !self.ship_to(&shipment, node).await {
                return false;
            }
        }
        true
    }

    /// Sends one node the commit alone of `version`, which it registered as prepared; whether it switched.
    /// A node whose temporary tree changed since it registered refuses (the refusal is in the history),
    /// and the caller goes on as if it held nothing prepared.
    async fn commit_prepared(
        self: &Arc<Self>,
        job: &str,
        name: &str,
        node: &str,
        site_dir: &SiteDir,
        version: u64,
    ) -> bool {
        let Ok(mut shipment) = self.shipment(job, name, version, None) else {
            return false;
        };
        // The snapshot is read only for what the version changed (the caches'); without it the commit
        // still goes.
        shipment.changed = self.load_step(site_dir, version).await.and_then(|(_, changed)| changed);
        if self.ship_to(&shipment, node).await {
            return true;
        }
        self.note_refusal(job, node, move |node, why| {
            format!(
                "{node} did not commit version {version}, which it registered as prepared ({why}); its content follows"
            )
        })
        .await;
        false
    }

    /// Notes in job `job`'s history why `node` did not take what it was sent: `say(node, why)`, where `why`
    /// is the error recorded for the node in the job ("no answer" without one).
    async fn note_refusal(&self, job: &str, node: &str, say: impl FnOnce(&str, &str) -> String + Send + 'static) {
        let (id, refused) = (job.to_string(), node.to_string());
        let _ = self
            .store
            .call(move |store| {
                let why = store
                    .job(&id)?
                    .and_then(|job| job.nodes.into_iter().find(|n| n.node == refused))
                    .and_then(|n| n.error)
                    .unwrap_or_else(|| "no answer".to_string());
                store.note(Some(&id), &say(&refused, &why), crate::ccm::now_ms())
            })
            .await;
    }

    /// Ships `shipment` to one node and commits it there; whether the node switched.
    async fn ship_to(self: &Arc<Self>, shipment: &crate::delivery::Shipment, node: &str) -> bool {
        let node_list = [node.to_string()];
        matches!(
            self.ship(shipment, &node_list, Quorum::All, always_ready()).await,
            Delivered::Committed { committed } if !committed.is_empty()
        )
    }

    /// The snapshot of `version` (a signed assignment) and what it changes for readers; `None` when it
    /// cannot be read. What the snapshot changed goes to the caches again once a node that was behind has
    /// it: meanwhile the edges in front of it may have fetched (and kept) its old content. Reading the
    /// snapshot's commands (verify, decrypt, parse) is CPU work: off the runtime with the load.
    async fn load_step(&self, site_dir: &SiteDir, version: u64) -> Option<(Payload, Option<Changed>)> {
        let dir = site_dir.clone();
        let (mover_key, encryption) = (self.signing.verifying_key(), self.config.policy.encryption);
        let loaded = tokio::task::spawn_blocking(move || {
            let (file, len) = dir.open_snapshot(version).map_err(|e| e.to_string())?;
            // Checked as a node checks it (a snapshot damaged on disk is not sent), and its commands read
            // without the data section, which stays in the file.
            let limits = tern_wire::assignment::Limits::default();
            let checked =
                tern_wire::assignment::check_file(&file, len, &mover_key, &limits).map_err(|e| e.to_string())?;
            let scratch_dir = dir.path().to_path_buf();
            let reader = file.try_clone().map_err(|e| e.to_string())?;
            let changed = tern_wire::assignment::open_spooled(reader, &checked, encryption.as_ref(), &limits, || {
                tempfile::tempfile_in(&scratch_dir)
            })
            .map(|opened| Changed::of_commands(&opened.commands))
            .ok()
            .filter(|changed| !changed.is_empty());
            Ok::<_, String>((Payload::file(file, len, checked.hash_hex()), changed))
        })
        .await;
        match loaded {
            Ok(Ok(step)) => Some(step),
            Ok(Err(error)) => {
                warn!(version, %error, "snapshot not usable; the node gets a full copy");
                None
            }
            Err(_) => None,
        }
    }
}

/// The versions to apply after a node commits the version it holds `prepared` (registered as such) to
/// reach `target`, when that version is on the way: the target itself (none after it), or a version
/// whose snapshots link up to the target — which proves the mover committed it, so the prepared tree is
/// that version's content (version numbers are never issued twice). `None`: the prepared version is of
/// no use (the one held, a publish that was never committed, or off the line).
fn after_prepared(snapshots: &[SnapshotRecord], held: u64, prepared: u64, target: u64) -> Option<Vec<u64>> {
    if prepared == 0 || prepared == held {
        return None;
    }
    if prepared == target {
        return Some(Vec::new());
    }
    chain(snapshots, prepared, target)
}

/// The versions to apply, in order, to go from `held` to `target` through snapshots whose bases link up;
/// none when the chain is broken (a checkpoint dropped part of it, or the node holds a version off the line).
fn chain(snapshots: &[SnapshotRecord], held: u64, target: u64) -> Option<Vec<u64>> {
    if held == 0 {
        return None;
    }
    let mut versions = Vec::new();
    let mut at = target;
    while at != held {
        let record = snapshots.iter().find(|s| s.sequence == at)?;
        versions.push(at);
        at = record.base;
        if versions.len() > snapshots.len() {
            return None;
        }
    }
    versions.reverse();
    Some(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sequence: u64, base: u64) -> SnapshotRecord {
        SnapshotRecord {
            sequence,
            base,
            job: format!("j{sequence}"),
            bytes: 1,
            created_ms: 0,
        }
    }

    #[test]
    fn a_chain_follows_the_bases_and_breaks_where_a_link_is_missing() {
        // 1 -> 2 -> 3, a rollback to 2, then 4 made from 2.
        let snapshots = [record(2, 1), record(3, 2), record(4, 2)];
        assert_eq!(chain(&snapshots, 2, 4), Some(vec![4]));
        assert_eq!(chain(&snapshots, 1, 4), Some(vec![2, 4]));
        assert_eq!(chain(&snapshots, 3, 4), None, "3 is off the line that leads to 4");
        assert_eq!(chain(&snapshots, 0, 4), None, "a node with nothing gets a full copy");
        assert_eq!(chain(&[record(4, 2)], 1, 4), None, "2 was dropped by a checkpoint");
    }

    #[test]
    fn a_prepared_version_is_used_only_when_it_is_on_the_way_to_the_target() {
        // 1 -> 2 -> 3 -> 5 (4 was issued to a publish that never committed).
        let snapshots = [record(2, 1), record(3, 2), record(5, 3)];
        assert_eq!(
            after_prepared(&snapshots, 2, 5, 5),
            Some(vec![]),
            "the target: its commit alone"
        );
        assert_eq!(
            after_prepared(&snapshots, 1, 3, 5),
            Some(vec![5]),
            "then the delta after it"
        );
        assert_eq!(
            after_prepared(&snapshots, 0, 3, 5),
            Some(vec![5]),
            "also with nothing live"
        );
        assert_eq!(after_prepared(&snapshots, 3, 4, 5), None, "4 was never committed");
        assert_eq!(after_prepared(&snapshots, 3, 3, 5), None, "it holds 3 live already");
        assert_eq!(after_prepared(&snapshots, 2, 0, 5), None);
        assert_eq!(after_prepared(&snapshots, 2, 6, 5), None, "above the target: of no use");
    }
}
