//! The rollback job (seed 004: commit and rollback; the nodes' temp/live/backup switch-over): every node
//! switches back to the version it kept as `backup`, and the mover swaps its shadow copy with the previous
//! tree. It runs in two phases, as a publish does: every node first checks that its backup is the version
//! rolled back to (`CheckBackup`), and no node switches unless the quorum can (a node brought up to date
//! by a full copy keeps no backup). A rollback goes to the version before the live one in the publish history (7 → 6); a second one
//! would go to the version before that (5), which neither the nodes nor the mover keep, so it is refused
//! with what to do instead — it never switches forward again to the version just rolled back from (that
//! is a publish or a restore of it). What the switch changed
//! for readers — every path that differs between the two trees — goes to the site's caches
//! ([`crate::freshness`]).

use std::sync::Arc;

use tern_tree::Snapshot;
use tern_wire::assignment::{AssignmentKind, Builder, Command};

use crate::ccm::{Mover, now_ms};
use crate::delivery::{Delivered, Quorum, Shipment, always_ready};
use crate::freshness::Changed;
use crate::payload::Payload;
use crate::store::{DecidedSite, Decision, Finish, Site};

impl Mover {
    /// Rolls site `name` back to its previous version on `nodes`.
    pub(crate) async fn run_rollback(self: &Arc<Self>, job: &str, name: &str, nodes: &[String]) -> Result<(), String> {
        let wanted = name.to_string();
        let site = self
            .store
            .call(move |store| store.site(&wanted))
            .await
            .map_err(|e| e.to_string())?;
        let Some(site) = site else {
            return Err(format!("site {name} was never published"));
        };
        if let Some(refusal) = self.rollback_refusal(&site).await {
            return Err(refusal);
        }
        let site_dir = self.site_dir(name);
        // The tree switched back to, for the caches (what differs from the published tree is purged) and as
        // the site's snapshot afterwards; hashes of files unchanged since the published tree are reused.
        let published: Snapshot = serde_json::from_str(&site.snapshot).unwrap_or_default();
        let (previous_dir, base) = (site_dir.previous(), published.clone());
        let previous = tokio::task::spawn_blocking(move || tern_tree::scan(&previous_dir, &base))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("the previous version on the mover: {e}"))?
            .snapshot;
        let dir = site_dir.clone();
        let inode = tokio::task::spawn_blocking(move || dir.previous_inode())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("the previous version on the mover: {e}"))?;
        let encryption = self.config.policy.encryption;
        let signed = |command: Command| {
            let mut builder = Builder::new(job, AssignmentKind::Rollback, name, site.previous, None, now_ms());
            builder.command(command);
            builder
                .finish(&self.signing, encryption.as_ref())
                .map_err(|e| e.to_string())
        };
        // Two phases, as a publish: every node first checks that its backup is the version rolled back to
        // (a node brought up to date by a full copy has none), and none switches unless the quorum can.
        let check = signed(Command::CheckBackup)?;
        let assignment = signed(Command::Rollback)?;
        // The versions swap: the one rolled back from stays `previous`, above the live one, which is how a
        // second rollback knows it would go forward again.
        let mut decided = site.clone();
        (decided.sequence, decided.previous) = (site.previous, site.sequence);
        decided.snapshot = serde_json::to_string(&previous).map_err(|e| e.to_string())?;
        let shipment = Shipment {
            job: job.to_string(),
            site: name.to_string(),
            content: Some(Payload::memory(check)),
            commit: Payload::memory(assignment),
            version: Some(site.previous),
            changed: Some(Changed::between(&published, &previous)),
            decision: Some(Decision {
                job: job.to_string(),
                site: name.to_string(),
                version: site.previous,
                finish: Finish::Rollback {
                    site: DecidedSite::of(&decided),
                    inode,
                },
            }),
        };
        let done = match self
            .ship(
                &shipment,
                nodes,
                Quorum::from_policy(self.config.quorum),
                always_ready(),
            )
            .await
        {
            Delivered::Committed { committed } => committed,
            Delivered::Held { reason, .. } => {
                return Err(format!(
                    "{reason}. A node whose backup is not v{} (brought up to date by a full copy) cannot roll back: publish the content of v{} again, or restore a checkpoint of it",
                    site.previous, site.previous
                ));
            }
        };
        if let Some(decision) = shipment.decision {
            self.finish_decided(decision).await?;
        }
        if done.len() < nodes.len() {
            return Err(format!(
                "rolled back on {} of {} nodes; the others are brought to the rolled-back version when they register again",
                done.len(),
                nodes.len()
            ));
        }
        Ok(())
    }

    /// Why `site` cannot be rolled back now, or `None` when it can: no previous version kept, or its live
    /// version is itself a rollback. Asked when a rollback is submitted (so that one due now is refused at
    /// once, before any node is shown as pending) and again when it runs.
    pub(crate) async fn rollback_refusal(&self, site: &Site) -> Option<String> {
        if site.previous == 0 || !self.site_dir(&site.name).previous().is_dir() {
            return Some(format!("site {} has no previous version to roll back to", site.name));
        }
        if site.previous > site.sequence {
            return Some(self.rolled_back_already(site).await);
        }
        None
    }

    /// Why a site whose live version is itself a rollback is not rolled back again: the version before
    /// it is not kept (only the one just rolled back from is); names a checkpoint that holds it, if any.
    async fn rolled_back_already(&self, site: &Site) -> String {
        let (name, live) = (site.name.clone(), site.sequence);
        let found = self
            .store
            .call(move |store| {
                let before = store
                    .snapshots(&name)?
                    .into_iter()
                    .find(|s| s.sequence == live)
                    .map(|s| s.base);
                let checkpoint = store
                    .checkpoints(&name)?
                    .into_iter()
                    .filter(|c| before.is_some_and(|b| b == c.version))
                    .map(|c| c.number)
                    .next_back();
                Ok((before, checkpoint))
            })
            .await;
        let (before, checkpoint) = found.unwrap_or((None, None));
        let wanted = before.map_or("the version before it".to_string(), |v| format!("v{v}"));
        let instead = match checkpoint {
            Some(number) => format!("restore checkpoint {number}, which holds {wanted}"),
            None => "publish the wanted content again, or restore a checkpoint".to_string(),
        };
        format!(
            "site {} is at v{live}, rolled back from v{}; rolling back again would go to {wanted}, which the mover does not keep: {instead}",
            site.name, site.previous
        )
    }
}
