//! `PURGE <url>` on the main listener (the sync service's cacher sends these; an operator may too).

use http::{Response, StatusCode};
use tern_http::Body;
use tracing::{info, warn};

use super::{ClientRequest, Edge};
use crate::purge::requested_mode;

impl Edge {
    /// `PURGE <url>` on the main listener.
    pub(super) fn purge(&self, request: &ClientRequest) -> Response<Body> {
        let primary = &request.primary;
        if let Err(refusal) = self.purge_auth.check(&request.headers, request.client.ip()) {
            warn!(client = %request.client, url = %primary, "purge refused");
            self.metrics.request("refused");
            return tern_admin::json_error(StatusCode::FORBIDDEN, refusal.message());
        }
        let mode = requested_mode(&request.headers);
        let count = self.store.purge_url(primary, mode);
        // The sync service's purges carry their change-log position, for catching up after a restart.
        if let Some(seq) = request
            .headers
            .get("tern-sync-seq")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            // With the log it counts in, so a new log's positions are not swallowed by an old log's mark.
            let log = request
                .headers
                .get(tern_wire::sync::LOG_HEADER)
                .and_then(|v| v.to_str().ok());
            self.sync_mark.note(log, seq);
        }
        self.count_purge("url", count);
        info!(client = %request.client, url = %primary, removed = count.removed, marked = count.marked, "purged");
        self.metrics.request("purge");
        tern_admin::json(
            StatusCode::OK,
            &serde_json::json!({ "url": primary, "removed": count.removed, "marked": count.marked }),
        )
    }
}
