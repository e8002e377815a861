//! Feeding the master's directory of holders (seed `003_590cbd812baaa7e3.txt`: "notifying said
//! retrieving server of holding of said contents"): the store tells which URLs it comes to hold and which
//! it drops (eviction, hard purge, replacement); a task batches the changes and hands them to the driver,
//! which registers or deregisters them with the master. The directory is soft state, so when a new master
//! takes over the task registers what the store holds again.
//!
//! The same task keeps the store honest about purges it may have missed: a purge reaches the members the
//! relaying edge can reach, so an edge that was away (stopped, or cut off and then joining again, or the
//! master of a split-off part merging back) may hold copies the others purged. Whenever this edge starts
//! or joins a community as a member, everything it holds is validated with upstream before it is used
//! again ([`Store::require_validation_before`]): a conditional request each, a `304` where nothing
//! changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tern_http_cache::Store;
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::{EdgeCommunity, HoldingKind};
use crate::clock::Clock;

/// Changes gathered into one batch at most.
const BATCH: usize = 1024;
/// How long a batch waits for more changes after the first.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Keys registered again for a new master at most (the directory's own default bound).
const REREGISTER_MAX: usize = tern_community::directory::DEFAULT_MAX_KEYS;

/// Starts the task that tells the master's directory what `store` holds.
pub(super) fn spawn(store: &Arc<Store>, community: &Arc<EdgeCommunity>, clock: Arc<dyn Clock>) {
    validate_held(store, clock.as_ref(), "this edge starts");
    let (changes, mut received) = mpsc::unbounded_channel::<(String, bool)>();
    let listening = store.set_holdings_listener(Arc::new(move |url: &str, held: bool| {
        // The receiver is gone only when the edge stops.
        let _ = changes.send((url.to_string(), held));
    }));
    if !listening {
        debug!("the store already tells another listener what it holds");
        return;
    }
    let store = store.clone();
    let community = community.clone();
    tokio::spawn(async move {
        let mut snapshots = community.handle.watch();
        let mut master = None;
        // Counted by the core, not read from role changes here: the snapshots this task sees are the
        // latest ones, so a quick member → electing → discovering → member passes unseen.
        let mut joined = community.handle.snapshot().counters.joined;
        loop {
            tokio::select! {
                first = received.recv() => {
                    let Some(first) = first else { break };
                    let batch = gather(first, &mut received).await;
                    tell(&community, batch);
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let (now, now_joined) = {
                        let snapshot = snapshots.borrow_and_update();
                        let master = snapshot.master.as_ref().map(|peer| (peer.name.clone(), peer.incarnation));
                        (master, snapshot.counters.joined)
                    };
                    if now_joined > joined {
                        validate_held(&store, clock.as_ref(), "this edge joined its community again");
                    }
                    joined = now_joined;
                    if now.is_some() && now != master {
                        master = now;
                        let keys = store.urls(REREGISTER_MAX);
                        if !keys.is_empty() {
                            debug!(keys = keys.len(), "registering held copies with the new master");
                            community
                                .metrics
                                .holdings
                                .get_or_create(&HoldingKind { kind: "reregistered" })
                                .inc_by(keys.len() as u64);
                            community.handle.held(keys);
                        }
                    }
                }
            }
        }
    });
}

/// The changes that arrive within [`BATCH_WINDOW`] of `first`, at most [`BATCH`]; the last change of a
/// URL wins.
async fn gather(
    first: (String, bool),
    received: &mut mpsc::UnboundedReceiver<(String, bool)>,
) -> HashMap<String, bool> {
    let mut batch = HashMap::from([first]);
    let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
    while batch.len() < BATCH {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some((url, held))) => {
                batch.insert(url, held);
            }
            _ => break,
        }
    }
    batch
}

fn tell(community: &EdgeCommunity, batch: HashMap<String, bool>) {
    let (held, released): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(_, held)| *held);
    let count = |kind: &'static str, n: usize| {
        community
            .metrics
            .holdings
            .get_or_create(&HoldingKind { kind })
            .inc_by(n as u64);
    };
    if !held.is_empty() {
        count("held", held.len());
        community.handle.held(held.into_iter().map(|(url, _)| url).collect());
    }
    if !released.is_empty() {
        count("released", released.len());
        community
            .handle
            .released(released.into_iter().map(|(url, _)| url).collect());
    }
}

/// Has every object `store` holds now validated before use, and says so when there are any.
fn validate_held(store: &Store, clock: &dyn Clock, why: &str) {
    let held = store.stats().objects;
    store.require_validation_before(clock.now());
    if held > 0 {
        info!(
            objects = held,
            reason = why,
            "stored objects are validated before use: purges may have been missed"
        );
    }
}
