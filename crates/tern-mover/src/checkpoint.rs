//! Checkpoints (seed 004's version control: full copies of a published version, from which a restore
//! publishes it again). A checkpoint packs the shadow copy compressed ([`crate::versions`]); it covers the
//! snapshots up to its version, which are then forgotten, and only the newest
//! [`crate::service::MoverConfig::checkpoints_kept`] are kept.

use tern_wire::mover::Checkpoint;
use tracing::info;

use crate::ccm::{Mover, now_ms};

impl Mover {
    /// Creates a checkpoint of site `name`'s published tree; returns its number.
    pub async fn checkpoint(&self, name: &str) -> Result<u64, String> {
        let wanted = name.to_string();
        let site = self
            .store
            .call(move |store| store.site(&wanted))
            .await
            .map_err(|e| e.to_string())?;
        let Some(site) = site else {
            return Err(format!("site {name} was never published"));
        };
        let lock = self.shadow_lock(name);
        let _guard = lock.lock().await;
        // Numbered after the newest, read under the lock.
        let wanted = name.to_string();
        let newest = self
            .store
            .call(move |store| store.checkpoints(&wanted))
            .await
            .map_err(|e| e.to_string())?
            .pop();
        // The published version is in a checkpoint already (a scheduled checkpoint job while nothing was
        // published): that one is the answer, rather than another full copy of the same files that would
        // push an older version out of the kept ones.
        if let Some(newest) = &newest
            && newest.version == site.sequence
        {
            info!(site = %name, number = newest.number, version = site.sequence, "checkpoint not made: the newest already holds the published version");
            return Ok(newest.number);
        }
        let number = newest.map_or(1, |newest| newest.number + 1);
        let site_dir = self.site_dir(name);
        let dir = site_dir.clone();
        let bytes = tokio::task::spawn_blocking(move || dir.create_checkpoint(number))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("checkpoint: {e}"))?;
        let (kept, sequence, site_name, now) =
            (self.config.checkpoints_kept.max(1), site.sequence, site.name, now_ms());
        let dropped: Vec<u64> = self
            .store
            .call(move |store| {
                store.add_checkpoint(&site_name, number, sequence, bytes, now)?;
                let _ = store.drop_snapshots_through(&site_name, sequence);
                let all = store.checkpoints(&site_name)?;
                let excess = all.len().saturating_sub(kept);
                let dropped: Vec<u64> = all.iter().take(excess).map(|old| old.number).collect();
                for old in &dropped {
                    let _ = store.remove_checkpoint(&site_name, *old);
                }
                Ok(dropped)
            })
            .await
            .map_err(|e| e.to_string())?;
        let dir = site_dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            dir.drop_snapshots_through(sequence);
            for old in dropped {
                let _ = tern_tree::remove_tree(&dir.checkpoint(old));
            }
        })
        .await;
        info!(site = %name, number, version = sequence, bytes, "checkpoint created");
        Ok(number)
    }

    /// A site's checkpoints, oldest first (none when the database fails).
    pub async fn checkpoints(&self, site: &str) -> Vec<Checkpoint> {
        let wanted = site.to_string();
        self.store
            .call(move |store| store.checkpoints(&wanted))
            .await
            .unwrap_or_default()
    }
}
