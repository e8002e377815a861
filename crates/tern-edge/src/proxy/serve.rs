//! Serving a stored response.

use std::time::SystemTime;

use http::Response;
use tern_http::Body;
use tern_http_cache::Hit;
use tracing::warn;

use super::{ClientRequest, Edge, Source};
use crate::cache_status::CacheStatus;

impl Edge {
    /// Serves a stored response; `None` when its body is gone or failed its checksum (look up again).
    pub(super) async fn serve_stored(
        &self,
        request: &ClientRequest,
        hit: &Hit,
        status: CacheStatus,
        now: SystemTime,
    ) -> Option<Response<Body>> {
        let object = &hit.object;
        let body = match self.store.body(hit).await {
            Ok(body) => body,
            Err(error) => {
                warn!(url = %object.meta.url, %error, "stored object unusable; fetching it again");
                return None;
            }
        };
        let age = object.freshness.age_seconds(now);
        Some(self.respond(
            request,
            object.meta.status,
            super::respond::stored_headers(&object.meta.headers),
            Some(object.meta.body_len),
            Source::Stored(body),
            Some(age),
            status,
        ))
    }
}
