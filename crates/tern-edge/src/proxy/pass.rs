//! Methods the cache does not serve: forwarded with their body, the client's own conditionals and ranges
//! included; unsafe ones invalidate what they touch (RFC 9111 section 4.4).

use std::sync::Arc;

use http::{HeaderMap, Method, Request, Response, Uri, header};
use tern_http::{Body, hop};
use tern_http_cache::policy;
use tern_http_cache::{PurgeMode, primary_key};
use tracing::debug;

use super::respond::append_cache_status;
use super::{CLIENT_PRECONDITIONS, ClientRequest, Edge};
use crate::cache_status::{CacheStatus, Forward};

impl Edge {
    /// Methods the cache does not serve: forwarded with their body; unsafe ones invalidate what they touch.
    pub(super) async fn pass(self: &Arc<Self>, request: ClientRequest, body: Body, forward: Forward) -> Response<Body> {
        let upstream_request = self.upstream_request(&request, request.method.clone(), body, None);
        let upstream_request = {
            let (mut parts, body) = upstream_request.into_parts();
            // A pass is the origin's business: the client's own conditionals and ranges go with it.
            for name in CLIENT_PRECONDITIONS {
                for value in request.headers.get_all(&name) {
                    parts.headers.append(name.clone(), value.clone());
                }
            }
            Request::from_parts(parts, body)
        };
        let response = match self.upstream.fetch(upstream_request).await {
            Ok(response) => {
                self.metrics.upstream("ok");
                response
            }
            Err(error) => {
                self.count_upstream_error(&error);
                tracing::warn!(url = %request.primary, method = %request.method, %error, "upstream failed");
                self.metrics.request("error");
                return self.origin_error(error.status(), &error.public_reason(), CacheStatus::forward(forward));
            }
        };
        let (mut parts, body) = response.into_parts();
        hop::strip(&mut parts.headers);
        if policy::invalidates(&request.method, parts.status) {
            self.invalidate(&request, &parts.headers);
        }
        self.metrics.request("pass");
        let status = CacheStatus::forward(forward).with_forward_status(parts.status.as_u16());
        let mut headers = parts.headers;
        headers.remove("surrogate-key");
        append_cache_status(&mut headers, &status, &self.name);
        hop::append_via(&mut headers, parts.version, &self.name);
        let mut response = Response::new(if request.method == Method::HEAD {
            tern_http::empty()
        } else {
            body
        });
        *response.status_mut() = parts.status;
        *response.headers_mut() = headers;
        response
    }

    /// RFC 9111 section 4.4: after a successful unsafe request, stored responses for its target and for the
    /// same-host `Location` and `Content-Location` are invalid.
    fn invalidate(&self, request: &ClientRequest, response: &HeaderMap) {
        let primary = &request.primary;
        let mut removed = self.store.purge_url(primary, PurgeMode::Hard);
        let host = &request.host;
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(target) = response.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(uri) = target.parse::<Uri>() else {
                continue;
            };
            let same_host = uri.authority().is_none_or(|a| a.as_str().eq_ignore_ascii_case(host));
            if same_host && let Some(path) = uri.path_and_query() {
                let key = primary_key("http", host, path.as_str(), &self.key_config);
                removed += self.store.purge_url(&key, PurgeMode::Hard);
            }
        }
        if removed.removed > 0 {
            debug!(url = %primary, removed = removed.removed, method = %request.method, "invalidated after unsafe method");
        }
    }
}
