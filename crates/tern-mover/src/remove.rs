//! The remove job (seed 004): the site is taken off its nodes, and once every node has removed it the mover
//! stops hosting it. Its record becomes a tombstone ([`crate::store::Store::forget_site`]) that keeps the
//! highest version it issued and its caches, so a later publish of the name numbers its versions on and
//! tells the same caches (unless it names others). The mover's copies are kept aside under
//! `DATA/removed/` for the operator to delete. Everything the site served is purged from its caches
//! ([`crate::freshness`]). The decision to remove is recorded before the remove leaves
//! ([`crate::recovery`]): a mover that stops after it finishes the remove at its next start, rather than
//! sending the site back to nodes that removed it.

use std::sync::Arc;

use tern_tree::Snapshot;
use tern_wire::assignment::{AssignmentKind, Builder};

use crate::ccm::{Mover, now_ms};
use crate::delivery::{Delivered, Quorum, Shipment, always_ready};
use crate::freshness::Changed;
use crate::payload::Payload;
use crate::store::{Decision, Finish};

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
            commit: Payload::memory(assignment),
            version: None,
            changed: Some(Changed::all_gone(&served)),
            decision: Some(Decision {
                job: job.to_string(),
                site: name.to_string(),
                version: 0,
                finish: Finish::Remove,
            }),
        };
        let done = match self.ship(&shipment, nodes, Quorum::All, always_ready()).await {
            Delivered::Committed { committed } => committed,
            Delivered::Held { reason, .. } => return Err(reason.to_string()),
        };
        if done.len() < nodes.len() {
            let abandoned = job.to_string();
            let _ = self.store.call(move |store| store.abandon_decision(&abandoned)).await;
            return Err(format!(
                "removed from {} of {} nodes; the site is still hosted (run the remove again)",
                done.len(),
                nodes.len()
            ));
        }
        // The mover's copies go aside under `DATA/removed/` and the site's record becomes a tombstone.
        if let Some(decision) = shipment.decision {
            self.finish_decided(decision).await?;
        }
        Ok(())
    }
}
