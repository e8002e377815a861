//! Following a fill: a request that joined a fetch whose body is streaming in is served from that body as it
//! arrives (read-while-write, [`crate::shared_fill`]), with the head the cache stores, its own
//! preconditions and ranges, and `Cache-Status: ...; collapsed`.

use std::sync::Arc;

use http::{Method, Response};
use tern_http::{Body, ChannelSender};
use tern_http_cache::key::vary_matches;
use tracing::info;

use super::{ClientRequest, Edge, Source};
use crate::cache_status::{CacheStatus, Forward};
use crate::metrics::EdgeMetrics;
use crate::shared_fill::{FELL_BEHIND, Reader, StreamedResponse};

/// Why a request that joined a fill is not served from its response as it streams in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotFollowed {
    /// The response is another variant (`Vary`) than the one this request selects: the request goes
    /// upstream at once, coalesced with the requests for its own variant.
    OtherVariant,
    /// The response must be validated before any use (`no-cache`, or not fresh): the request goes
    /// upstream itself at once.
    MustValidate,
    /// Its first bytes are no longer kept (no disk tier, or its file failed, and more than the window
    /// arrived): the response will not be stored either, and the request leads a fetch of its own.
    TooLate,
}

impl Edge {
    /// Serves `request` from a response streaming in, or says why it cannot be.
    pub(super) fn follow(
        &self,
        request: &ClientRequest,
        streamed: &StreamedResponse,
        forward: Forward,
    ) -> Result<Response<Body>, NotFollowed> {
        let now = self.clock.now();
        let freshness = &streamed.freshness;
        if !vary_matches(&streamed.vary, &request.headers) {
            return Err(NotFollowed::OtherVariant);
        }
        if freshness.no_cache || !freshness.is_fresh(now) {
            return Err(NotFollowed::MustValidate);
        }
        let body = if request.method == Method::HEAD {
            tern_http::empty()
        } else {
            let reader = streamed.body.attach().ok_or(NotFollowed::TooLate)?;
            let (sender, body) = tern_http::channel(super::fill::STREAM_CHUNKS, streamed.length);
            tokio::spawn(copy(reader, sender, self.metrics.clone(), request.primary.clone()));
            body
        };
        self.metrics.coalesced_stream("streamed");
        self.metrics.request("hit");
        let status = CacheStatus::forward(forward)
            .with_forward_status(streamed.status.as_u16())
            .with_collapsed()
            .with_ttl(freshness.ttl_seconds(now));
        Ok(self.respond(
            request,
            streamed.status,
            super::respond::stored_headers(&streamed.headers),
            streamed.length,
            Source::Stream(body, streamed.received),
            Some(freshness.age_seconds(now)),
            status,
        ))
    }
}

/// Copies the shared body to one client (the leader's own, or one that joined) until it ends, fails, or
/// the client goes away (which detaches the reader, so the bytes are not kept for it).
pub(super) async fn copy(mut reader: Reader, sender: ChannelSender, metrics: Arc<EdgeMetrics>, url: String) {
    while let Some(item) = reader.next().await {
        match item {
            Ok(chunk) => {
                if sender.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            Err(reason) => {
                if reason.as_ref() == FELL_BEHIND {
                    metrics.coalesced_stream("fell-behind");
                    info!(
                        %url,
                        "a client read more slowly than the origin sent and fell max_memory_object behind the \
                         fastest client sharing the fetch, with no file of it to read from: its response is cut"
                    );
                }
                let _ = sender.send(Err(reason.to_string().into())).await;
                return;
            }
        }
    }
}
