//! The rollback job (seed 004: commit and rollback; the nodes' temp/live/backup switch-over): every node
//! switches back to the version it kept as `backup`, and the mover swaps its shadow copy with the previous
//! tree. The versions swap too, so rolling back twice returns to where it started. What the switch changed
//! for readers — every path that differs between the two trees — goes to the site's caches
//! ([`crate::freshness`]).

use std::sync::Arc;

use bytes::Bytes;
use tern_tree::Snapshot;
use tern_wire::assignment::{AssignmentKind, Builder, Command};

use crate::ccm::{Mover, now_ms};
use crate::delivery::{Delivered, Quorum, Shipment, always_ready};
use crate::freshness::Changed;

impl Mover {
    /// Rolls site `name` back to its previous version on `nodes`.
    pub(crate) async fn run_rollback(self: &Arc<Self>, job: &str, name: &str, nodes: &[String]) -> Result<(), String> {
        let wanted = name.to_string();
        let site = self
            .store
            .call(move |store| store.site(&wanted))
            .await
            .map_err(|e| e.to_string())?;
        let Some(mut site) = site else {
            return Err(format!("site {name} was never published"));
        };
        let site_dir = self.site_dir(name);
        if site.previous == 0 || !site_dir.previous().is_dir() {
            return Err(format!("site {name} has no previous version to roll back to"));
        }
        // The tree switched back to, for the caches (what differs from the published tree is purged) and as
        // the site's snapshot afterwards; hashes of files unchanged since the published tree are reused.
        let published: Snapshot = serde_json::from_str(&site.snapshot).unwrap_or_default();
        let (previous_dir, base) = (site_dir.previous(), published.clone());
        let previous = tokio::task::spawn_blocking(move || tern_tree::scan(&previous_dir, &base))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("the previous version on the mover: {e}"))?
            .snapshot;
        let mut builder = Builder::new(job, AssignmentKind::Rollback, name, site.previous, None, now_ms());
        builder.command(Command::Rollback);
        let assignment = builder
            .finish(&self.signing, self.config.policy.encryption.as_ref())
            .map_err(|e| e.to_string())?;
        // The rollback assignment switches by itself: no phase one.
        let shipment = Shipment {
            job: job.to_string(),
            site: name.to_string(),
            content: None,
            commit: Bytes::from(assignment),
            version: Some(site.previous),
            changed: Some(Changed::between(&published, &previous)),
        };
        let done = match self.ship(&shipment, nodes, Quorum::All, always_ready()).await {
            Delivered::Committed { committed } => committed,
            Delivered::Held { reason, .. } => return Err(reason.to_string()),
        };
        let lock = self.shadow_lock(name);
        let _guard = lock.lock().await;
        let dir = site_dir.clone();
        let snapshot = tokio::task::spawn_blocking(move || -> std::io::Result<Snapshot> {
            dir.swap_previous()?;
            Ok(tern_tree::scan(&dir.shadow(), &previous)?.snapshot)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        (site.sequence, site.previous) = (site.previous, site.sequence);
        site.snapshot = serde_json::to_string(&snapshot).map_err(|e| e.to_string())?;
        self.store
            .call(move |store| store.save_site(&site))
            .await
            .map_err(|e| e.to_string())?;
        if done.len() < nodes.len() {
            return Err(format!(
                "rolled back on {} of {} nodes; the others are brought to the rolled-back version when they register again",
                done.len(),
                nodes.len()
            ));
        }
        Ok(())
    }
}
