//! Registration of nodes (seed 004: a node registers with the CCM, and a node that missed assignments is
//! brought up to date). A node sends a [`Registration`] at start and then periodically; the mover records
//! it, and for every site the node hosts but holds an older (or no) version of, submits a `synchronise` job
//! for that node — unless [`catch_up`] says otherwise.

use std::collections::HashMap;
use std::time::Duration;

use tern_wire::mover::{JobKind, Registered, Registration};
use tracing::info;

use crate::ccm::Mover;
use crate::schedule::{JobSpec, Target, plain_name};
use crate::store::Node;
use crate::store_thread::StoreError;

/// Least time between two catch-up jobs for the same node and site: a node that keeps failing is retried
/// at most this often, not on every registration.
pub const SYNCHRONISE_BACKOFF: Duration = Duration::from_secs(60);

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The node's name is not plain (HTTP 400).
    #[error("`{0}` is not a plain node name")]
    Name(String),
    /// The database failed (HTTP 500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the database says about one hosted site, for a registering node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedSite {
    /// The site.
    pub site: String,
    /// Whether the node is one of the site's nodes.
    pub hosts: bool,
    /// The version the node holds (0: none).
    pub held: u64,
    /// The site's published version.
    pub current: u64,
    /// Whether a job for the site is due now (it brings the node along, or would conflict with a catch-up).
    pub busy: bool,
}

/// Whether a registering node is sent a catch-up of a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// It is behind: a `synchronise` job is submitted.
    Due,
    /// The node does not host the site.
    NotHosted,
    /// It holds the published version.
    Current,
    /// A job for the site is due now.
    Busy,
    /// It was sent one less than [`SYNCHRONISE_BACKOFF`] ago.
    BackingOff,
}

/// Decides, at `now_ms`, whether a node is sent a catch-up of `site`; `last_sent_ms` is when it was last
/// sent one. A clock that went back counts as long ago.
pub fn catch_up(site: &HostedSite, last_sent_ms: Option<u64>, now_ms: u64, backoff: Duration) -> CatchUp {
    if !site.hosts {
        return CatchUp::NotHosted;
    }
    if site.held == site.current {
        return CatchUp::Current;
    }
    if site.busy {
        return CatchUp::Busy;
    }
    let backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
    let recently = last_sent_ms.is_some_and(|sent| now_ms >= sent && now_ms - sent < backoff_ms);
    if recently {
        return CatchUp::BackingOff;
    }
    CatchUp::Due
}

impl Mover {
    /// Registers a node at `now_ms`; a node that is behind on a site it hosts (it was down, or a delivery
    /// failed) is brought up to date by itself.
    pub async fn register(&self, registration: Registration, now_ms: u64) -> Result<Registered, RegisterError> {
        if !plain_name(&registration.name) {
            return Err(RegisterError::Name(registration.name));
        }
        let node = Node {
            name: registration.name,
            url: registration.url,
            last_seen_ms: now_ms,
            free_disk: registration.free_disk,
            cpus: registration.cpus,
            groups: registration.groups.into_iter().filter(|g| plain_name(g)).collect(),
        };
        let versions: Vec<(String, u64)> = registration.versions.into_iter().collect();
        let name = node.name.clone();
        let hosted = self
            .store
            .call(move |store| {
                store.register(&node, &versions)?;
                let pending = store.pending_jobs()?;
                let mut hosted = Vec::new();
                for site in store.sites()? {
                    hosted.push(HostedSite {
                        hosts: store.target_nodes(&site.target)?.contains(&node.name),
                        held: store.node_version(&node.name, &site.name)?,
                        current: site.sequence,
                        busy: pending
                            .iter()
                            .any(|job| job.spec.site == site.name && job.due_ms <= now_ms),
                        site: site.name,
                    });
                }
                Ok(hosted)
            })
            .await?;
        let mut started = Vec::new();
        for site in hosted {
            let key = (name.clone(), site.site.clone());
            let last_sent = self.sent_catch_ups().get(&key).copied();
            if catch_up(&site, last_sent, now_ms, SYNCHRONISE_BACKOFF) != CatchUp::Due {
                continue;
            }
            let mut spec = JobSpec::new(JobKind::Synchronise, &site.site);
            spec.target = Some(Target::Node(name.clone()));
            if let Ok(id) = self.submit(spec, now_ms).await {
                self.sent_catch_ups().insert(key, now_ms);
                info!(node = %name, site = %site.site, held = site.held, version = site.current, job = %id, "node is behind; synchronising it");
                started.push(id);
            }
        }
        Ok(Registered {
            registered: name,
            synchronising: started,
        })
    }

    fn sent_catch_ups(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u64>> {
        self.last_synchronise.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(hosts: bool, held: u64, current: u64, busy: bool) -> HostedSite {
        HostedSite {
            site: "www".into(),
            hosts,
            held,
            current,
            busy,
        }
    }

    #[test]
    fn a_node_behind_on_a_site_it_hosts_is_caught_up_at_most_once_per_backoff() {
        let backoff = Duration::from_secs(60);
        assert_eq!(catch_up(&site(true, 2, 3, false), None, 1_000, backoff), CatchUp::Due);
        assert_eq!(
            catch_up(&site(true, 0, 3, false), None, 1_000, backoff),
            CatchUp::Due,
            "never got it"
        );
        assert_eq!(
            catch_up(&site(true, 4, 3, false), None, 1_000, backoff),
            CatchUp::Due,
            "missed a rollback"
        );
        assert_eq!(
            catch_up(&site(false, 2, 3, false), None, 1_000, backoff),
            CatchUp::NotHosted
        );
        assert_eq!(
            catch_up(&site(true, 3, 3, false), None, 1_000, backoff),
            CatchUp::Current
        );
        assert_eq!(catch_up(&site(true, 2, 3, true), None, 1_000, backoff), CatchUp::Busy);
        let behind = site(true, 2, 3, false);
        assert_eq!(catch_up(&behind, Some(1_000), 60_999, backoff), CatchUp::BackingOff);
        assert_eq!(catch_up(&behind, Some(1_000), 61_000, backoff), CatchUp::Due);
        assert_eq!(
            catch_up(&behind, Some(90_000), 1_000, backoff),
            CatchUp::Due,
            "a clock that went back does not hold catch-ups back"
        );
    }
}
