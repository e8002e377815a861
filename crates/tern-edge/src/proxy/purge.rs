//! Purges: `PURGE <url>` on the main listener (the sync service's cacher sends these; an operator may
//! too), `POST /purge` on the admin listener, and purges relayed by community members. In a community a
//! purge this edge receives from outside is relayed to every other member before it is answered
//! ([`crate::community::PEER_PURGE_PATH`]).

use http::{Response, StatusCode};
use tern_http::Body;
use tern_http_cache::{PurgeCount, PurgeMode};
use tracing::{info, warn};

use super::{ClientRequest, Edge};
use crate::community::RelaySummary;
use crate::purge::{PurgeRequest, requested_any_query, requested_mode, requested_prefix};

impl Edge {
    /// `PURGE <url>` on the main listener.
    pub(super) async fn purge(&self, request: &ClientRequest) -> Response<Body> {
        let primary = &request.primary;
        if let Err(refusal) = self.purge_auth.check(&request.headers, request.client.ip()) {
            warn!(client = %request.client, url = %primary, "purge refused");
            self.metrics.request("refused");
            return tern_admin::json_error(StatusCode::FORBIDDEN, refusal.message());
        }
        let mode = requested_mode(&request.headers);
        if requested_prefix(&request.headers) {
            return self.purge_prefix(request, mode).await;
        }
        let any_query = requested_any_query(&request.headers);
        // The primary key's query starts at its first `?` (a host has none): what is left is the path's key.
        let base = primary.split_once('?').map_or(primary.as_str(), |(path, _)| path);
        let mut count = if any_query {
            self.store.purge_url_any_query(base, mode)
        } else {
            self.store.purge_url(primary, mode)
        };
        // A differential-caching base is kept under an authority of its own, whatever the host: a purge of
        // its path under any host drops it (its class then gets whole pages until it is fetched again).
        if let Some(key) = crate::delta::base_key(&request.target, &self.key_config) {
            count += self.store.purge_url(&key, mode);
        }
        // A fetch of the URL under way when the purge came stores nothing (or, soft, stores it stale): said
        // in the answer, where removed and marked would otherwise read as "nothing was done".
        let in_flight = usize::from(self.coalescer.in_flight(primary));
        self.note_sync_position(&request.headers);
        self.count_purge(if any_query { "url-any-query" } else { "url" }, count);
        let relayed_purge = if any_query {
            PurgeRequest {
                urls_any_query: vec![base.to_string()],
                soft: mode == PurgeMode::Soft,
                ..PurgeRequest::default()
            }
        } else {
            PurgeRequest {
                urls: vec![primary.clone()],
                soft: mode == PurgeMode::Soft,
                ..PurgeRequest::default()
            }
        };
        let relayed = self.relay_purge(&relayed_purge).await;
        info!(
            client = %request.client,
            url = %primary,
            any_query,
            removed = count.removed,
            marked = count.marked,
            in_flight,
            relayed = relayed.map(|r| r.applied),
            relay_failed = relayed.map(|r| r.failed),
            "purged"
        );
        self.metrics.request("purge");
        let mut answer = purge_answer(Some(primary), count, relayed);
        answer["in_flight"] = serde_json::Value::from(in_flight);
        tern_admin::json(StatusCode::OK, &answer)
    }

    /// `PURGE <url>` with `Tern-Purge-Scope: prefix`: every URL that starts with it (the sync service sends
    /// a host's `/` when a position of its change log was lost).
    async fn purge_prefix(&self, request: &ClientRequest, mode: PurgeMode) -> Response<Body> {
        let prefix = &request.primary;
        let count = self.store.purge_prefix(prefix, mode);
        self.note_sync_position(&request.headers);
        self.count_purge("prefix", count);
        let relayed = self
            .relay_purge(&PurgeRequest {
                prefixes: vec![prefix.clone()],
                soft: mode == PurgeMode::Soft,
                ..PurgeRequest::default()
            })
            .await;
        info!(client = %request.client, %prefix, removed = count.removed, marked = count.marked,
              relayed = relayed.map(|r| r.applied), relay_failed = relayed.map(|r| r.failed), "purged by prefix");
        self.metrics.request("purge");
        tern_admin::json(StatusCode::OK, &purge_answer(Some(prefix), count, relayed))
    }

    /// Notes the change-log position a purge from the sync service carries, for catching up after a
    /// restart.
    fn note_sync_position(&self, headers: &http::HeaderMap) {
        if let Some(seq) = headers
            .get(tern_wire::sync::SEQ_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            // With the log it counts in, so a new log's positions are not swallowed by an old log's mark.
            let log = headers.get(tern_wire::sync::LOG_HEADER).and_then(|v| v.to_str().ok());
            self.sync_mark.note(log, seq);
        }
    }

    /// Applies `purge` to this edge's store only. Every URL and prefix is checked before anything is
    /// purged; an error names the first that is not an absolute http(s) URL.
    pub(crate) fn purge_here(&self, purge: &PurgeRequest) -> Result<PurgeCount, String> {
        let resolved = purge.resolve(&self.key_config)?;
        let mut total = PurgeCount::default();
        for key in &resolved.urls {
            let count = self.store.purge_url(key, resolved.mode);
            self.count_purge("url", count);
            total += count;
        }
        for key in &resolved.urls_any_query {
            let count = self.store.purge_url_any_query(key, resolved.mode);
            self.count_purge("url-any-query", count);
            total += count;
        }
        for key in &resolved.prefixes {
            let count = self.store.purge_prefix(key, resolved.mode);
            self.count_purge("prefix", count);
            total += count;
        }
        for key in &resolved.keys {
            let count = self.store.purge_key(key, resolved.mode);
            self.count_purge("key", count);
            total += count;
        }
        Ok(total)
    }

    /// Relays `purge` to the other members of this edge's community; `None` outside a community.
    pub(crate) async fn relay_purge(&self, purge: &PurgeRequest) -> Option<RelaySummary> {
        match &self.community {
            Some(community) => Some(community.relay_purge(purge).await),
            None => None,
        }
    }
}

/// The JSON answer to a purge: what this edge did and, in a community, how many members it reached.
pub(crate) fn purge_answer(url: Option<&str>, count: PurgeCount, relayed: Option<RelaySummary>) -> serde_json::Value {
    let mut answer = serde_json::json!({ "removed": count.removed, "marked": count.marked });
    if let Some(url) = url {
        answer["url"] = serde_json::Value::from(url);
    }
    if let Some(relayed) = relayed {
        answer["community"] = serde_json::json!({ "relayed": relayed.applied, "failed": relayed.failed });
    }
    answer
}
