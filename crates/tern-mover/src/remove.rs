//! The remove job (seed 004): the site is taken off its nodes, and once every node has removed it the mover
//! stops hosting it. The mover's copies are kept aside under `DATA/removed/` for the operator to delete.
//! Everything the site served is purged from its caches ([`crate::freshness`]).

use std::sync::Arc;

use bytes::Bytes;
use tern_tree::Snapshot;
use tern_wire::assignment::{AssignmentKind, Builder};

use crate::ccm::{Mover, now_ms};
use crate::delivery::{Delivered, Quorum, Shipment, always_ready};
use crate::freshness::Changed;

impl Mover {
    /// Removes site `name` from `nodes` and stops hosting it.
    pub(crate) async fn run_remove(self: &Arc<Self>, job: &str, name: &str, nodes: &[String]) -> Result<(), String> {
        let wanted = name.to_string();
        let site = self
            .store
            .call(move |store| store.site(&wanted))
            .await
            .map_err(|e| e.to_string())?;
        let sequence = site.as_ref().map_or(0, |s| s.next_version());
        // Everything the site served is purged from its caches.
        let served: Snapshot = site
            .and_then(|s| serde_json::from_str(&s.snapshot).ok())
            .unwrap_or_default();
        let builder = Builder::new(job, AssignmentKind::Remove, name, sequence, None, now_ms());
        let assignment = builder
            .finish(&self.signing, self.config.policy.encryption.as_ref())
            .map_err(|e| e.to_string())?;
        // The remove assignment acts by itself, and leaves no version to record.
        let shipment = Shipment {
            job: job.to_string(),
            site: name.to_string(),
            content: None,
            commit: Bytes::from(assignment),
            version: None,
            changed: Some(Changed::all_gone(&served)),
        };
        let done = match self.ship(&shipment, nodes, Quorum::All, always_ready()).await {
            Delivered::Committed { committed } => committed,
            Delivered::Held { reason, .. } => return Err(reason.to_string()),
        };
        if done.len() < nodes.len() {
            return Err(format!(
                "removed from {} of {} nodes; the site is still hosted (run the remove again)",
                done.len(),
                nodes.len()
            ));
        }
        let lock = self.shadow_lock(name);
        let _guard = lock.lock().await;
        let (removed, site_dir, now) = (self.config.data.join("removed"), self.site_dir(name), now_ms());
        let aside = removed.join(format!("{name}-{now}"));
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&removed)?;
            if site_dir.path().exists() {
                std::fs::rename(site_dir.path(), aside)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let forgotten = name.to_string();
        self.store
            .call(move |store| store.forget_site(&forgotten, now))
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}
