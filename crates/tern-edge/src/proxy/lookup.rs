//! Lookup: find the stored variant a request selects, decide how it may be used (RFC 9111 section 4, RFC
//! 5861), and coalesce misses so that concurrent requests for one key make one upstream request: a request
//! that joins a fetch is served from its body as it streams in where it can ([`super::follow`]), else when
//! it is stored. A request after a purge never waits for a fetch that began before it
//! ([`crate::coalesce`]).

use std::sync::Arc;

use http::{Method, Response, StatusCode};
use tern_http::Body;
use tern_http_cache::policy::{self, request_directives};
use tern_http_cache::{Directives, Hit, Usability};
use tracing::warn;

use super::fill::Miss;
use super::follow::NotFollowed;
use super::{ClientRequest, Edge};
use crate::cache_status::{CacheStatus, Forward};
use crate::coalesce::{FillOutcome, Joined, Role};

/// Lookups a request makes after waiting for another's fill before it goes upstream on its own.
const MAX_COALESCED_ROUNDS: usize = 3;

impl Edge {
    /// GET and HEAD: the caching path.
    pub(super) async fn cached(self: &Arc<Self>, request: ClientRequest) -> Response<Body> {
        let directives = request_directives(&request.headers);
        let primary = request.primary.clone();
        let mut collapsed = false;
        // The fill this request gave up waiting for (it leads a new one rather than join it again).
        let mut given_up = None;
        // Once a fill in flight turned out to be another variant than this request selects: the URL's key
        // with this request's variant, which it coalesces under instead of the URL's, so that the requests
        // for one variant share one fetch while the other streams.
        let mut variant_key: Option<String> = None;
        for _ in 0..MAX_COALESCED_ROUNDS {
            let now = self.clock.now();
            let hit = self.store.find(&primary, &request.headers);
            let forward = match &hit {
                Some(hit) => {
                    let object = &hit.object;
                    let ttl = object.freshness.ttl_seconds(now);
                    // A copy stored before this edge may have missed purges (it was away from its
                    // community) is validated before use.
                    let must_validate = self.store.needs_validation(&object.meta);
                    let usability = if must_validate {
                        Usability::MustValidate
                    } else {
                        policy::usability(
                            &object.freshness,
                            object.meta.invalidated,
                            &directives,
                            now,
                            self.policy(),
                        )
                    };
                    let served = match usability {
                        Usability::Fresh | Usability::StaleAllowedByClient if collapsed => Some((
                            CacheStatus::forward(Forward::Miss)
                                .with_forward_status(object.meta.status.as_u16())
                                .with_collapsed()
                                .with_ttl(ttl),
                            "hit",
                        )),
                        Usability::Fresh | Usability::StaleAllowedByClient => Some((CacheStatus::hit(ttl), "hit")),
                        Usability::StaleWhileRevalidate => {
                            self.revalidate_in_background(&request, hit.clone());
                            Some((CacheStatus::hit(ttl).with_detail("stale-while-revalidate"), "stale"))
                        }
                        Usability::MustValidate => None,
                    };
                    if let Some((status, result)) = served {
                        // `None`: the body vanished or failed its checksum; look up again.
                        let Some(response) = self.serve_stored(&request, hit, status, now).await else {
                            continue;
                        };
                        self.metrics.request(result);
                        return response;
                    }
                    // Fresh but validated anyway: the client's own directives sent it forward.
                    let fresh = object.freshness.is_fresh(now)
                        && !object.meta.invalidated
                        && !object.freshness.no_cache
                        && !must_validate;
                    if fresh { Forward::Request } else { Forward::Stale }
                }
                None if self.store.variants(&primary).is_empty() => Forward::Miss,
                None => Forward::VaryMiss,
            };
            if directives.only_if_cached {
                self.metrics.request("error");
                return self.error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "only-if-cached: no usable stored response",
                    CacheStatus::forward(forward),
                );
            }
            if request.method == Method::HEAD && hit.is_none() {
                // A HEAD miss is passed as it is rather than fetching a whole body nobody asked for, unless a
                // fetch for the URL is on its way: its response answers the HEAD too.
                let store = &self.store;
                if let Some(mut follower) = self
                    .coalescer
                    .follow_existing(&primary, |since| store.purged_since(since, &primary))
                {
                    self.metrics.coalesced.inc();
                    match follower.wait().await {
                        Joined::Streaming(streamed) => {
                            if let Ok(response) = self.follow(&request, &streamed, forward) {
                                return response;
                            }
                        }
                        Joined::Done(FillOutcome::Stored) => {
                            collapsed = true;
                            continue;
                        }
                        Joined::Done(_) => {}
                    }
                }
                return self.pass(request, tern_http::empty(), forward).await;
            }
            // The ticket is taken before joining, so a fill records the purge generation its fetch began at.
            let ticket = self.store.fetch_ticket();
            let store = &self.store;
            match self.coalescer.join_unless(
                variant_key.as_deref().unwrap_or(&primary),
                ticket.generation(),
                |since| store.purged_since(since, &primary),
                given_up,
            ) {
                Role::Leader(leader) => {
                    let miss = Miss {
                        hit,
                        leader: Some(leader),
                        ticket,
                        forward,
                        directives,
                    };
                    return self.lead(request, miss).await;
                }
                Role::Follower(mut follower) => {
                    drop(ticket);
                    self.metrics.coalesced.inc();
                    let outcome = match follower.wait().await {
                        Joined::Done(outcome) => outcome,
                        Joined::Streaming(streamed) => match self.follow(&request, &streamed, forward) {
                            Ok(response) => return response,
                            // Another variant: join, or lead, the fetch of this request's own.
                            Err(NotFollowed::OtherVariant) if variant_key.is_none() => {
                                self.metrics.coalesced_stream("other-response");
                                variant_key = Some(format!(
                                    "{primary}\n{}",
                                    tern_http_cache::variant_of(&streamed.vary, &request.headers)
                                ));
                                continue;
                            }
                            // A response to validate first (or a variant's fill that is yet another
                            // variant): nothing to wait for.
                            Err(NotFollowed::OtherVariant | NotFollowed::MustValidate) => {
                                self.metrics.coalesced_stream("other-response");
                                FillOutcome::Released
                            }
                            // Joined too late to read from the first byte: the fill is past the bytes kept
                            // for joiners, so it is past what the memory tier may store, and there is no
                            // disk tier (or writing its file failed): nothing will be stored to wait for.
                            // Lead a new fetch at once, which the requests arriving from then on join from
                            // its first byte (one more origin request per window of the body, not one per
                            // request).
                            Err(NotFollowed::TooLate) => {
                                self.metrics.coalesced_stream("too-late");
                                given_up = Some(follower.fill_id());
                                continue;
                            }
                        },
                    };
                    match outcome {
                        FillOutcome::Stored => collapsed = true,
                        // Looked up again: this request joins the fetch begun after the purge, or leads it.
                        FillOutcome::Purged => {}
                        FillOutcome::Failed(failure) => {
                            return self
                                .answer_failure(&request, hit.as_ref(), &directives, forward, &failure)
                                .await;
                        }
                        FillOutcome::Released => {
                            let miss = Miss {
                                hit,
                                leader: None,
                                ticket: self.store.fetch_ticket(),
                                forward,
                                directives,
                            };
                            return self.fetch(&request, miss).await;
                        }
                    }
                }
            }
        }
        let miss = Miss {
            hit: self.store.find(&primary, &request.headers),
            leader: None,
            ticket: self.store.fetch_ticket(),
            forward: Forward::Miss,
            directives,
        };
        self.fetch(&request, miss).await
    }

    /// A request that waited for a fetch that failed upstream: its stale copy where `stale-if-error` allows
    /// (RFC 5861 section 4), else the leader's error, at once.
    async fn answer_failure(
        self: &Arc<Self>,
        request: &ClientRequest,
        hit: Option<&Hit>,
        directives: &Directives,
        forward: Forward,
        failure: &crate::coalesce::UpstreamFailure,
    ) -> Response<Body> {
        let now = self.clock.now();
        if let Some(hit) = hit
            && hit.object.freshness.may_serve_on_error(now, directives)
        {
            let status = CacheStatus::forward(Forward::Stale)
                .with_ttl(hit.object.freshness.ttl_seconds(now))
                .with_collapsed()
                .with_detail("stale-if-error");
            if let Some(response) = self.serve_stored(request, hit, status, now).await {
                self.metrics.request("stale");
                return response;
            }
        }
        self.metrics.request("error");
        self.origin_error(
            failure.status,
            &failure.reason,
            CacheStatus::forward(forward).with_collapsed(),
        )
    }

    /// Runs a coalesced fetch on its own task, so that the client who happened to lead it can go away
    /// without cancelling it for the others waiting (issue 9, fault 5): the fetch goes on, is stored, and
    /// wakes its waiters; only this client's copy of the response is dropped.
    async fn lead(self: &Arc<Self>, request: ClientRequest, miss: Miss) -> Response<Body> {
        let forward = miss.forward;
        let edge = self.clone();
        let shared = tokio::spawn(async move { edge.fetch(&request, miss).await });
        match shared.await {
            Ok(response) => response,
            Err(error) => {
                warn!(%error, "shared fetch task failed");
                self.metrics.request("error");
                self.error(
                    StatusCode::BAD_GATEWAY,
                    "the fetch for this request failed inside the edge",
                    CacheStatus::forward(forward),
                )
            }
        }
    }

    /// Refreshes a stale object without making the client wait, unless a fetch for it is already running.
    fn revalidate_in_background(self: &Arc<Self>, request: &ClientRequest, hit: Hit) {
        let ticket = self.store.fetch_ticket();
        let store = &self.store;
        let primary = &request.primary;
        let Role::Leader(leader) = self
            .coalescer
            .join(primary, ticket.generation(), |since| store.purged_since(since, primary))
        else {
            return;
        };
        let edge = self.clone();
        let request = request.clone();
        let miss = Miss {
            hit: Some(hit),
            leader: Some(leader),
            ticket,
            forward: Forward::Stale,
            directives: Directives::default(),
        };
        tokio::spawn(async move {
            // The fill runs on its own task; the client side of it is simply not read.
            drop(edge.fetch(&request, miss).await);
        });
    }
}
