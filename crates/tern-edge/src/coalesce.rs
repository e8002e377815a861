//! Request coalescing: concurrent misses for one primary key make one upstream request. The first becomes
//! the leader; the others wait on a channel and are woken (not polled) when the leader knows the outcome:
//! stored (look it up again, it is a hit), released (the response was not cacheable; go upstream), or
//! failed (the origin did not answer, or its body failed: answer the same error at once, rather than each
//! waiter asking a sick origin again and waiting as long).
//!
//! A fill whose body is streamed (see [`crate::shared_fill`]) also publishes its response while it is
//! still arriving: waiters are served from it at once instead of waiting for the end of the body.
//!
//! A fill remembers the store's purge generation at which its fetch began. A request that arrives after a
//! purge which may have matched the key does not wait for a fetch that began before it (it would get the
//! content the purge removed): it leads a new fetch, and the old one finishes for its own waiters only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::shared_fill::StreamedResponse;

/// Why a leader's fetch failed upstream, as its waiters answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    /// 502 or 504.
    pub status: http::StatusCode,
    /// What happened, for the error body.
    pub reason: Arc<str>,
}

/// What the leader's fetch came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillOutcome {
    /// The response is in the store.
    Stored,
    /// Nothing was stored; waiters go upstream themselves.
    Released,
    /// A purge matched the response while it was fetched, so it was not stored: waiters look up again and
    /// share one fetch begun after the purge (the one the first of them, or a later request, leads),
    /// instead of each going upstream.
    Purged,
    /// The origin failed: no response head (refused, timed out, malformed), or a body that ended short,
    /// stalled or broke before anything was stored. Waiters answer this error (or serve a stale copy where
    /// `stale-if-error` allows) without going upstream.
    Failed(UpstreamFailure),
}

impl FillOutcome {
    /// The outcome of a fill whose store answered `stored`.
    pub fn of<T>(stored: &Result<T, tern_http_cache::StoreError>) -> FillOutcome {
        match stored {
            Ok(_) => FillOutcome::Stored,
            Err(tern_http_cache::StoreError::Purged) => FillOutcome::Purged,
            Err(_) => FillOutcome::Released,
        }
    }
}

/// The set of fills in flight, by primary key.
#[derive(Debug, Default)]
pub struct Coalescer {
    inflight: Mutex<HashMap<String, InFlight>>,
    next_id: AtomicU64,
}

/// Where a fill stands, as its waiters see it.
#[derive(Debug, Clone)]
enum Progress {
    /// Fetching: no response yet.
    Fetching,
    /// The response is being stored while its body streams in; waiters may read it as it arrives.
    Streaming(Arc<StreamedResponse>),
    /// Done.
    Done(FillOutcome),
}

/// What a waiter learns first: the outcome, or a response it may read while it streams in.
#[derive(Debug)]
pub enum Joined {
    /// The fill's response is streaming in; waiting again ([`Follower::wait`]) gives the fill's outcome.
    Streaming(Arc<StreamedResponse>),
    /// The fill is done.
    Done(FillOutcome),
}

#[derive(Debug)]
struct InFlight {
    receiver: watch::Receiver<Progress>,
    /// The store's purge generation when the fetch began.
    generation: u64,
    /// Tells this fill from a newer one that replaced it under the same key.
    id: u64,
}

impl InFlight {
    /// A new waiter for this fill.
    fn follower(&self) -> Follower {
        Follower {
            receiver: self.receiver.clone(),
            id: self.id,
        }
    }
}

/// Whether the caller leads a fill or waits for one.
pub enum Role {
    /// Fetch and report with [`Leader::finish`].
    Leader(Leader),
    /// Wait with [`Follower::wait`].
    Follower(Follower),
}

impl Coalescer {
    /// Joins the fill for `key`, leading it if none is in flight or if `purged_since(generation of the fill
    /// in flight)` says a purge may have matched the key since that fill began. `generation` is the caller's
    /// own purge generation (its [`tern_http_cache::FetchTicket`]), recorded if it leads.
    pub fn join(self: &Arc<Self>, key: &str, generation: u64, purged_since: impl FnOnce(u64) -> bool) -> Role {
        self.join_unless(key, generation, purged_since, None)
    }

    /// [`Coalescer::join`], but a caller that gave up waiting for fill `given_up` ([`Follower::fill_id`])
    /// leads a new fill if that one is still in flight: requests that arrive from then on join the new fill
    /// (and read it from its first byte) rather than each going upstream on its own.
    pub fn join_unless(
        self: &Arc<Self>,
        key: &str,
        generation: u64,
        purged_since: impl FnOnce(u64) -> bool,
        given_up: Option<u64>,
    ) -> Role {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fill) = inflight.get(key)
            && given_up != Some(fill.id)
            && !purged_since(fill.generation)
        {
            return Role::Follower(fill.follower());
        }
        let (sender, receiver) = watch::channel(Progress::Fetching);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        inflight.insert(
            key.to_string(),
            InFlight {
                receiver,
                generation,
                id,
            },
        );
        Role::Leader(Leader {
            key: key.to_string(),
            id,
            sender: Some(sender),
            coalescer: self.clone(),
        })
    }

    /// The fill in flight for `key` to wait for, without leading one when there is none (`None`), or when
    /// `purged_since(generation of the fill in flight)` says a purge may have matched it since it began:
    /// for a request that would rather not start a fetch itself (a HEAD).
    pub fn follow_existing(&self, key: &str, purged_since: impl FnOnce(u64) -> bool) -> Option<Follower> {
        let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        let fill = inflight.get(key)?;
        (!purged_since(fill.generation)).then(|| fill.follower())
    }

    /// Whether a fill for `key` is in flight.
    pub fn in_flight(&self, key: &str) -> bool {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
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
    id: u64,
    sender: Option<watch::Sender<Progress>>,
    coalescer: Arc<Coalescer>,
}

impl Leader {
    /// Publishes the response whose body is now streaming in: waiters, and requests that join from now
    /// on, read it as it arrives. [`Leader::finish`] still reports the end of the fill.
    pub fn streaming(&self, response: Arc<StreamedResponse>) {
        if let Some(sender) = &self.sender {
            sender.send_replace(Progress::Streaming(response));
        }
    }

    /// Reports the outcome and wakes the waiters.
    pub fn finish(mut self, outcome: FillOutcome) {
        self.complete(outcome);
    }

    fn complete(&mut self, outcome: FillOutcome) {
        if let Some(sender) = self.sender.take() {
            let mut inflight = self.coalescer.inflight.lock().unwrap_or_else(|p| p.into_inner());
            // A newer fill may have taken the key after a purge; it is not this one's to remove.
            if inflight.get(&self.key).is_some_and(|fill| fill.id == self.id) {
                inflight.remove(&self.key);
            }
            drop(inflight);
            sender.send_replace(Progress::Done(outcome));
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
    receiver: watch::Receiver<Progress>,
    /// The fill it waits for.
    id: u64,
}

impl Follower {
    /// Names the fill this request waits for (for [`Coalescer::join_unless`]).
    pub fn fill_id(&self) -> u64 {
        self.id
    }

    /// Waits for the leader's outcome, or for a response streaming in, whichever comes first.
    pub async fn wait(&mut self) -> Joined {
        match self
            .receiver
            .wait_for(|progress| !matches!(progress, Progress::Fetching))
            .await
        {
            Ok(progress) => match &*progress {
                Progress::Streaming(response) => Joined::Streaming(response.clone()),
                Progress::Done(outcome) => Joined::Done(outcome.clone()),
                Progress::Fetching => Joined::Done(FillOutcome::Released),
            },
            Err(_) => Joined::Done(FillOutcome::Released),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The outcome a follower learns (these fills stream nothing).
    async fn done(mut follower: Follower) -> FillOutcome {
        match follower.wait().await {
            Joined::Done(outcome) => outcome,
            Joined::Streaming(_) => panic!("nothing streams here"),
        }
    }

    #[tokio::test]
    async fn followers_are_woken_with_the_outcome() {
        let coalescer = Arc::new(Coalescer::default());
        let Role::Leader(leader) = coalescer.join("k", 0, |_| false) else {
            panic!("first must lead")
        };
        let Role::Follower(follower) = coalescer.join("k", 0, |_| false) else {
            panic!("second must follow")
        };
        let waiting = tokio::spawn(done(follower));
        leader.finish(FillOutcome::Stored);
        assert_eq!(waiting.await.expect("join"), FillOutcome::Stored);
        assert!(coalescer.is_empty());
    }

    #[tokio::test]
    async fn dropped_leader_releases() {
        let coalescer = Arc::new(Coalescer::default());
        let Role::Leader(leader) = coalescer.join("k", 0, |_| false) else {
            panic!("first must lead")
        };
        let Role::Follower(follower) = coalescer.join("k", 0, |_| false) else {
            panic!("second must follow")
        };
        drop(leader);
        assert_eq!(done(follower).await, FillOutcome::Released);
        assert!(matches!(coalescer.join("k", 0, |_| false), Role::Leader(_)));
    }

    #[tokio::test]
    async fn a_request_after_a_purge_does_not_join_an_older_fill() {
        let coalescer = Arc::new(Coalescer::default());
        let Role::Leader(old) = coalescer.join("k", 3, |_| false) else {
            panic!("first must lead")
        };
        // A purge at generation 4 matched "k": the next request leads its own fetch.
        let Role::Leader(new) = coalescer.join("k", 4, |since| since < 4) else {
            panic!("a request after the purge must not wait for the fill begun before it")
        };
        let Role::Follower(follower) = coalescer.join("k", 4, |since| since < 4) else {
            panic!("it follows the fill begun after the purge")
        };
        old.finish(FillOutcome::Released);
        assert_eq!(coalescer.len(), 1, "the old fill does not remove the new one");
        new.finish(FillOutcome::Stored);
        assert_eq!(done(follower).await, FillOutcome::Stored);
        assert!(coalescer.is_empty());
    }

    #[tokio::test]
    async fn followers_share_the_leaders_failure() {
        let coalescer = Arc::new(Coalescer::default());
        let Role::Leader(leader) = coalescer.join("k", 0, |_| false) else {
            panic!("first must lead")
        };
        let followers: Vec<_> = (0..3)
            .map(|_| match coalescer.join("k", 0, |_| false) {
                Role::Follower(follower) => tokio::spawn(done(follower)),
                Role::Leader(_) => panic!("the others follow"),
            })
            .collect();
        let failure = UpstreamFailure {
            status: http::StatusCode::GATEWAY_TIMEOUT,
            reason: "origin sent no response within 30s".into(),
        };
        leader.finish(FillOutcome::Failed(failure.clone()));
        for follower in followers {
            assert_eq!(follower.await.expect("join"), FillOutcome::Failed(failure.clone()));
        }
        assert!(
            matches!(coalescer.join("k", 0, |_| false), Role::Leader(_)),
            "the next request tries again"
        );
    }
}

#[cfg(test)]
mod streaming_tests {
    use super::*;
    use crate::shared_fill::SharedBody;

    fn response() -> Arc<StreamedResponse> {
        Arc::new(StreamedResponse {
            vary: Default::default(),
            status: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            length: None,
            freshness: tern_http_cache::Freshness::of(
                http::StatusCode::OK,
                &http::HeaderMap::new(),
                std::time::SystemTime::UNIX_EPOCH,
                std::time::SystemTime::UNIX_EPOCH,
                &tern_http_cache::PolicyConfig::default(),
            ),
            received: http::Version::HTTP_11,
            body: SharedBody::new(1 << 20, None),
        })
    }

    #[tokio::test]
    async fn waiters_and_later_joiners_see_the_streaming_response_then_the_outcome() {
        let coalescer = Arc::new(Coalescer::default());
        let Role::Leader(leader) = coalescer.join("k", 0, |_| false) else {
            panic!("first must lead")
        };
        let Role::Follower(mut early) = coalescer.join("k", 0, |_| false) else {
            panic!("second must follow")
        };
        let streamed = response();
        leader.streaming(streamed.clone());
        assert!(matches!(early.wait().await, Joined::Streaming(r) if Arc::ptr_eq(&r, &streamed)));
        let Role::Follower(mut late) = coalescer.join("k", 0, |_| false) else {
            panic!("a request during the stream joins it")
        };
        assert!(matches!(late.wait().await, Joined::Streaming(_)));
        leader.finish(FillOutcome::Stored);
        assert!(matches!(late.wait().await, Joined::Done(FillOutcome::Stored)));
        assert!(coalescer.is_empty());
    }

    #[tokio::test]
    async fn a_request_that_gave_up_on_a_fill_leads_a_new_one_which_later_requests_join() {
        let coalescer = Arc::new(Coalescer::default());
        let Role::Leader(first) = coalescer.join("k", 0, |_| false) else {
            panic!("first must lead")
        };
        let Role::Follower(waiter) = coalescer.join("k", 0, |_| false) else {
            panic!("second must follow")
        };
        let Role::Leader(second) = coalescer.join_unless("k", 0, |_| false, Some(waiter.fill_id())) else {
            panic!("it gave up on the first fill: it leads a new one")
        };
        let Role::Follower(later) = coalescer.join_unless("k", 0, |_| false, Some(waiter.fill_id())) else {
            panic!("the new fill is not the one given up on: join it")
        };
        assert_ne!(later.fill_id(), waiter.fill_id());
        first.finish(FillOutcome::Stored);
        assert_eq!(coalescer.len(), 1, "the first fill does not remove the second");
        second.finish(FillOutcome::Stored);
        assert!(coalescer.is_empty());
    }
}
