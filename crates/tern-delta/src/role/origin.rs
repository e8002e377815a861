//! The dynamic origin behind `tern delta`: an HTTP/1.1 client with pooled keep-alive connections, plain
//! or TLS, with a connect timeout, a time limit to the response head and one on silence mid-body.

use std::time::Duration;

use http::{Request, Response, Uri, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use tern_http::Body;
use tern_http::tls::{ClientTls, HttpsClient, error_reason};

/// Why the origin gave no response; logged whole, and answered as 502 or 504 with
/// [`OriginError::public_reason`] (the edge passes the answer on to its clients).
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// Could not connect (refused, timed out, TLS refused).
    #[error("cannot connect to origin {origin}: {reason}")]
    Connect {
        /// The origin.
        origin: String,
        /// What happened.
        reason: String,
    },
    /// No response head in time.
    #[error("origin {origin} sent no response within {timeout:?}")]
    Timeout {
        /// The origin.
        origin: String,
        /// The limit.
        timeout: Duration,
    },
    /// The exchange failed after connecting (reset, malformed response).
    #[error("origin {origin} failed: {reason}")]
    Failed {
        /// The origin.
        origin: String,
        /// What happened.
        reason: String,
    },
}

impl OriginError {
    /// 504 for a timeout, 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            OriginError::Timeout { .. } => http::StatusCode::GATEWAY_TIMEOUT,
            OriginError::Connect { .. } | OriginError::Failed { .. } => http::StatusCode::BAD_GATEWAY,
        }
    }

    /// What a client is told: the kind of failure, without the origin's address or the operating
    /// system's words (the log has them).
    pub fn public_reason(&self) -> String {
        match self {
            OriginError::Connect { reason, .. } => tern_http::tls::public_connect_reason(reason),
            OriginError::Timeout { timeout, .. } => {
                format!("the origin sent no response within {} ms", timeout.as_millis())
            }
            // What went wrong in the exchange (a reset, a malformed head): no address in it.
            OriginError::Failed { reason, .. } => format!("the exchange with the origin failed: {reason}"),
        }
    }
}

/// The origin's address and the client that reaches it.
pub struct Origin {
    client: HttpsClient<Body>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    first_byte_timeout: Duration,
    idle_body_timeout: Duration,
}

impl Origin {
    /// The origin at `base` (`http://` or `https://`, optionally with a path prefix); an https origin is
    /// verified against `ca` alone when given, else the system's roots.
    pub fn new(
        base: &str,
        ca: Option<&std::path::Path>,
        connect_timeout: Duration,
        first_byte_timeout: Duration,
        idle_body_timeout: Duration,
    ) -> Result<Self, String> {
        let tern_http::target::OriginBase {
            scheme,
            authority,
            path: base_path,
        } = tern_http::target::origin_base(base)?;
        let tls = ClientTls::new(ca).map_err(|e| format!("--origin-ca: {e}"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(tls.connector(connector));
        Ok(Origin {
            client,
            scheme,
            authority,
            base_path,
            first_byte_timeout,
            idle_body_timeout,
        })
    }

    /// A short name for logs and `/status`.
    pub fn describe(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.base_path)
    }

    /// Sends `request` (origin-form target) to the origin; the `Host` the edge sent is kept, and the
    /// origin's own authority is used when there is none.
    pub async fn fetch(&self, request: Request<Body>) -> Result<Response<Body>, OriginError> {
        let (mut parts, body) = request.into_parts();
        let target = format!(
            "{}{}",
            self.base_path,
            parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        );
        parts.uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(target.as_str())
            .build()
            .map_err(|e| OriginError::Failed {
                origin: self.describe(),
                reason: e.to_string(),
            })?;
        parts.version = http::Version::HTTP_11;
        if !parts.headers.contains_key(header::HOST)
            && let Ok(host) = http::HeaderValue::from_str(self.authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        let sent = tokio::time::timeout(
            self.first_byte_timeout,
            self.client.request(Request::from_parts(parts, body)),
        )
        .await;
        let response = match sent {
            Err(_) => {
                return Err(OriginError::Timeout {
                    origin: self.describe(),
                    timeout: self.first_byte_timeout,
                });
            }
            Ok(Err(error)) => {
                let reason = match std::error::Error::source(&error) {
                    Some(cause) => error_reason(cause),
                    None => error.to_string(),
                };
                let origin = self.describe();
                return Err(if error.is_connect() {
                    OriginError::Connect { origin, reason }
                } else {
                    OriginError::Failed { origin, reason }
                });
            }
            Ok(Ok(response)) => response,
        };
        let idle = self.idle_body_timeout;
        Ok(response.map(|body| tern_http::with_idle_timeout(body.map_err(Into::into).boxed(), idle)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An origin that cannot be reached is a 502 whose text says why without naming the origin: the edge
    /// passes `tern delta`'s answer on to the public (helper-77's trial, fault 5).
    #[tokio::test]
    async fn an_unreachable_origin_is_a_502_that_does_not_name_it() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = closed.local_addr().expect("address");
        drop(closed);
        let origin = Origin::new(
            &format!("http://{address}"),
            None,
            Duration::from_secs(2),
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
        .expect("origin");
        let request = Request::get("/news/").body(tern_http::empty()).expect("request");
        let error = origin.fetch(request).await.expect_err("nothing listens there");
        assert!(matches!(error, OriginError::Connect { .. }), "{error}");
        assert_eq!(error.status(), http::StatusCode::BAD_GATEWAY);
        assert!(
            error.to_string().contains(&address.to_string()),
            "the log names it: {error}"
        );
        let public = error.public_reason();
        assert_eq!(public, "cannot connect to the origin (connection refused)");
        assert!(!public.contains(&address.port().to_string()), "{public}");
    }
}
