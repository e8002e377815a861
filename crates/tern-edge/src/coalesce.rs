//! Request coalescing: concurrent misses for one primary key make one upstream request. The first becomes
//! the leader; the others wait on a channel and are woken (not polled) when the leader knows the outcome:
//! stored (look it up again, it is a hit) or released (the response was not cacheable; go upstream).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// What the leader's fetch came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    /// The response is in the store.
    Stored,
    /// Nothing was stored; waiters go upstream themselves.
    Released,
}

/// The set of fills in flight, by primary key.
#[derive(Debug, Default)]
pub struct Coalescer {
    inflight: Mutex<HashMap<String, watch::Receiver<Option<FillOutcome>>>>,
}

/// Whether the caller leads a fill or waits for one.
pub enum Role {
    /// Fetch and report with [`Leader::finish`].
    Leader(Leader),
    /// Wait with [`Follower::wait`].
    Follower(Follower),
}

impl Coalescer {
    /// Joins the fill for `key`, leading it if none is in flight.
    pub fn join(self: &Arc<Self>, key: &str) -> Role {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(receiver) = inflight.get(key) {
            return Role::Follower(Follower {
                receiver: receiver.clone(),
            });
        }
        let (sender, receiver) = watch::channel(None);
        inflight.insert(key.to_string(), receiver);
        Role::Leader(Leader {
            key: key.to_string(),
            sender: Some(sender),
            coalescer: self.clone(),
        })
    }

    /// Number of fills in flight.
    pub fn len(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no fill is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The request that fetches for everyone. Dropping it without [`Leader::finish`] releases the waiters.
pub struct Leader {
    key: String,
    sender: Option<watch::Sender<Option<FillOutcome>>>,
    coalescer: Arc<Coalescer>,
}

impl Leader {
    /// Reports the outcome and wakes the waiters.
    pub fn finish(mut self, outcome: FillOutcome) {
        self.complete(outcome);
    }

    fn complete(&mut self, outcome: FillOutcome) {
        if let Some(sender) = self.sender.take() {
            self.coalescer
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.key);
            sender.send_replace(Some(outcome));
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.complete(FillOutcome::Released);
    }
}

/// A request waiting for a leader.
pub struct Follower {
    receiver: watch::Receiver<Option<FillOutcome>>,
}

impl Follower {
    /// Waits for the leader's outcome.
    pub async fn wait(mut self) -> FillOutcome {
        match self.receiver.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.unwrap_or(FillOutcome::Released),
            Err(_) => FillOutcome::Released,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_are_woken_with_the_outcome() {
        let coalescer = Arc::new(Coalescer::default());
        let Role::Leader(leader) = coalescer.join("k") else {
            panic!("first must lead")
        };
        let Role::Follower(follower) = coalescer.join("k") else {
            panic!("second must follow")
        };
        let waiting = tokio::spawn(follower.wait());
        leader.finish(FillOutcome::Stored);
        assert_eq!(waiting.await.expect("join"), FillOutcome::Stored);
        assert!(coalescer.is_empty());
    }

    #[tokio::test]
    async fn dropped_leader_releases() {
        let coalescer = Arc::new(Coalescer::default());
        let Role::Leader(leader) = coalescer.join("k") else {
            panic!("first must lead")
        };
        let Role::Follower(follower) = coalescer.join("k") else {
            panic!("second must follow")
        };
        drop(leader);
        assert_eq!(follower.wait().await, FillOutcome::Released);
        assert!(matches!(coalescer.join("k"), Role::Leader(_)));
    }
}
