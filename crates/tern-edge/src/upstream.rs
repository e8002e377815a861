//! The miss path's seam: where the edge gets what it does not hold. Today the origin; the cache community
//! (owner peer, holder from the directory) and the differential-caching client plug in behind the same trait.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response, Uri, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tern_http::Body;
use tern_http::tls::{ClientTls, error_reason};

use crate::config::UpstreamConfig;
use crate::h1_client::{ExchangeError, H1Client, H1Settings};

/// Most header fields accepted in an origin's response head, on the retry of a head that was too wide
/// for hyper's inline parse (100 fields).
const ORIGIN_MAX_HEADER_FIELDS: usize = 512;
/// Largest origin response head accepted, bytes (also the read buffer's bound).
const ORIGIN_MAX_HEAD_BYTES: usize = 256 * 1024;

/// Why an upstream fetch failed; the edge turns it into 502 or 504 with the reason.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Could not connect.
    #[error("cannot connect to {upstream}: {reason}")]
    Connect {
        /// Which upstream.
        upstream: String,
        /// What happened.
        reason: String,
    },
    /// No response head in time.
    #[error("{upstream} sent no response within {timeout:?}")]
    Timeout {
        /// Which upstream.
        upstream: String,
        /// The limit.
        timeout: Duration,
    },
    /// The exchange failed otherwise (connection reset, malformed response).
    #[error("{upstream} failed: {reason}")]
    Failed {
        /// Which upstream.
        upstream: String,
        /// What happened.
        reason: String,
    },
    /// A community's owner could not fetch from the origin itself and said so: its failure is this
    /// request's too (the origin is not asked again).
    #[error("{peer} could not fetch from the origin: {reason}")]
    Relayed {
        /// The owner.
        peer: String,
        /// Its status: 502 or 504.
        status: http::StatusCode,
        /// Its error message.
        reason: String,
    },
}

impl UpstreamError {
    /// What a client is told: what went wrong, without the origin's address or the operating system's
    /// words (the edge's log has them, with the URL).
    pub fn public_reason(&self) -> String {
        match self {
            UpstreamError::Connect { reason, .. } => tern_http::tls::public_connect_reason(reason),
            UpstreamError::Timeout { timeout, .. } => {
                format!("the origin sent no response within {} ms", timeout.as_millis())
            }
            // What was wrong with the response (a malformed head, conflicting lengths): no address in it.
            UpstreamError::Failed { reason, .. } => format!("the origin's response was refused: {reason}"),
            UpstreamError::Relayed { reason, .. } => {
                format!("the origin failed (seen by the community's owner): {reason}")
            }
        }
    }

    /// 504 for a timeout, 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Timeout { .. } => http::StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::Relayed { status, .. } => *status,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// A boxed upstream response future.
pub type UpstreamFuture<'a> = Pin<Box<dyn Future<Output = Result<Response<Body>, UpstreamError>> + Send + 'a>>;

/// Where misses go. The request's URI is origin-form (`/path?query`); the upstream chooses the authority.
pub trait Upstream: Send + Sync + 'static {
    /// Sends a request and returns the response head with a streaming body.
    fn fetch(&self, request: Request<Body>) -> UpstreamFuture<'_>;

    /// A short name for logs and `/status`.
    fn describe(&self) -> String;
}

/// The origin server, over HTTP/1.1 (plain, or TLS for an `https://` origin) with pooled keep-alive
/// connections. GET and HEAD to a plain-http origin go through the edge's own client ([`H1Client`]);
/// the rest, and any origin that answers with something that client does not decode, through hyper's.
pub struct Origin {
    /// The edge's own HTTP/1.1 client, for a plain-http origin.
    h1: Option<H1Client>,
    /// Set once the origin sent a response `h1` does not decode; its requests then all go to hyper.
    h1_unsupported: AtomicBool,
    /// Parses response heads of up to 100 fields in place (hyper's inline capacity).
    client: tern_http::tls::HttpsClient<Body>,
    /// Parses response heads of up to [`ORIGIN_MAX_HEADER_FIELDS`]; used for a request whose response
    /// was too wide for `client`, and for every request once the origin has sent such a response.
    wide: tern_http::tls::HttpsClient<Body>,
    /// Set once the origin sent a head too wide for `client`.
    sends_wide_heads: AtomicBool,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    config: UpstreamConfig,
}

impl Origin {
    /// An origin at `base` (for example `http://127.0.0.1:9000` or `https://origin.example`); an https
    /// origin is verified against the system's roots.
    pub fn new(base: &str, config: UpstreamConfig) -> Result<Self, String> {
        Origin::with_ca(base, config, None)
    }

    /// An origin at `base`; an `https://` origin's certificate must be issued by the CA in the PEM file
    /// `ca` when given (only by it: a private CA pins trust), else by one of the system's roots. The TLS
    /// server name (SNI) is the origin's host; ALPN offers `http/1.1`.
    pub fn with_ca(base: &str, config: UpstreamConfig, ca: Option<&Path>) -> Result<Self, String> {
        let tern_http::target::OriginBase {
            scheme,
            authority,
            path: base_path,
        } = tern_http::target::origin_base(base)?;
        let tls = ClientTls::new(ca).map_err(|e| format!("--origin-ca: {e}"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout()));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_max_idle_per_host(config.max_idle_connections)
            .pool_idle_timeout(Duration::from_secs(60))
            .http1_max_buf_size(ORIGIN_MAX_HEAD_BYTES);
        // hyper parses up to 100 fields in a stack array; a higher limit makes it allocate and fill a
        // scratch array of that size for every response (measured: 4% of the CPU of a miss at 512 fields).
        // Origins behind frameworks and CDNs may send more (a 200-field head was a 502 with the narrow
        // parse alone), so a head too wide is fetched again with the wide client.
        let client = builder.build(tls.connector(connector.clone()));
        let wide = builder
            .http1_max_headers(ORIGIN_MAX_HEADER_FIELDS)
            .build(tls.connector(connector));
        let h1 = (scheme == http::uri::Scheme::HTTP).then(|| {
            H1Client::new(H1Settings {
                address: format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80)),
                connect_timeout: config.connect_timeout(),
                idle_body_timeout: config.idle_body_timeout(),
                max_idle: config.max_idle_connections,
                idle_lifetime: Duration::from_secs(60),
                limits: tern_http::h1::Limits {
                    max_head_bytes: ORIGIN_MAX_HEAD_BYTES,
                    max_fields: ORIGIN_MAX_HEADER_FIELDS,
                    ..tern_http::h1::Limits::default()
                },
            })
        });
        Ok(Origin {
            h1,
            h1_unsupported: AtomicBool::new(false),
            client,
            wide,
            sends_wide_heads: AtomicBool::new(false),
            scheme,
            authority,
            base_path,
            config,
        })
    }
}

impl Upstream for Origin {
    fn fetch(&self, request: Request<Body>) -> UpstreamFuture<'_> {
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            if (self.config.rewrite_host || !parts.headers.contains_key(header::HOST))
                && let Ok(host) = http::HeaderValue::from_str(self.authority.as_str())
            {
                parts.headers.insert(header::HOST, host);
            }
            let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let target: std::borrow::Cow<'_, str> = if self.base_path.is_empty() {
                path_and_query.into()
            } else {
                format!("{}{}", self.base_path, path_and_query).into()
            };
            if let Some(h1) = &self.h1
                && !self.h1_unsupported.load(Ordering::Relaxed)
                && H1Client::handles(&parts.method, http_body::Body::is_end_stream(&body))
            {
                match self.fetch_h1(h1, &parts.method, &target, &parts.headers).await {
                    Ok(response) => return Ok(response),
                    Err(Some(error)) => return Err(error),
                    // Not decoded by the edge's client: the same request goes through hyper's below.
                    Err(None) => {}
                }
            }
            parts.uri = Uri::builder()
                .scheme(self.scheme.clone())
                .authority(self.authority.clone())
                .path_and_query(target.as_ref())
                .build()
                .map_err(|e| UpstreamError::Failed {
                    upstream: self.describe(),
                    reason: e.to_string(),
                })?;
            parts.version = http::Version::HTTP_11;
            let wide = self.sends_wide_heads.load(Ordering::Relaxed);
            // A request without a body can be sent again if its response head is too wide.
            let replay = (!wide
                && matches!(parts.method, http::Method::GET | http::Method::HEAD)
                && http_body::Body::is_end_stream(&body))
            .then(|| (parts.method.clone(), parts.uri.clone(), parts.headers.clone()));
            let request = Request::from_parts(parts, body);
            let client = if wide { &self.wide } else { &self.client };
            let timeout = self.config.first_byte_timeout();
            let send = async {
                let sent = client.request(request).await;
                match (sent, replay) {
                    (Err(error), Some((method, uri, headers))) if head_too_wide(&error) => {
                        self.sends_wide_heads.store(true, Ordering::Relaxed);
                        tracing::info!(
                            upstream = %self.describe(),
                            "the origin sent a response head of more than 100 fields; its heads are \
                             parsed with the wide parser from now on"
                        );
                        let mut again = Request::new(tern_http::empty());
                        *again.method_mut() = method;
                        *again.uri_mut() = uri;
                        *again.headers_mut() = headers;
                        self.wide.request(again).await
                    }
                    (sent, _) => sent,
                }
            };
            let response = match tokio::time::timeout(timeout, send).await {
                Err(_) => {
                    return Err(UpstreamError::Timeout {
                        upstream: self.describe(),
                        timeout,
                    });
                }
                Ok(Err(error)) if error.is_connect() => {
                    // The whole chain: a TLS failure's reason (`invalid peer certificate: Expired`) is
                    // two causes down, under `client error (Connect)`.
                    let reason = cause_of(&error);
                    return Err(UpstreamError::Connect {
                        upstream: self.describe(),
                        reason,
                    });
                }
                Ok(Err(error)) => {
                    let reason = cause_of(&error);
                    return Err(UpstreamError::Failed {
                        upstream: self.describe(),
                        reason,
                    });
                }
                Ok(Ok(response)) => response,
            };
            let idle = self.config.idle_body_timeout();
            Ok(response.map(|body| tern_http::with_idle_timeout(body.map_err(Into::into).boxed(), idle)))
        })
    }

    fn describe(&self) -> String {
        format!("origin {}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

impl Origin {
    /// A GET or HEAD through the edge's own client. `Err(None)`: the origin answered with something that
    /// client does not decode, and the request is to go through hyper's instead (from now on, all are).
    async fn fetch_h1(
        &self,
        h1: &H1Client,
        method: &http::Method,
        target: &str,
        headers: &http::HeaderMap,
    ) -> Result<Response<Body>, Option<UpstreamError>> {
        let timeout = self.config.first_byte_timeout();
        match tokio::time::timeout(timeout, h1.send(method, target, headers)).await {
            Err(_) => Err(Some(UpstreamError::Timeout {
                upstream: self.describe(),
                timeout,
            })),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(ExchangeError::Connect(reason))) => Err(Some(UpstreamError::Connect {
                upstream: self.describe(),
                reason,
            })),
            Ok(Err(ExchangeError::Failed(reason))) => Err(Some(UpstreamError::Failed {
                upstream: self.describe(),
                reason,
            })),
            Ok(Err(ExchangeError::Unsupported(why))) => {
                self.h1_unsupported.store(true, Ordering::Relaxed);
                tracing::info!(
                    upstream = %self.describe(),
                    %why,
                    "the origin sent a response the edge's HTTP/1.1 client does not decode; its requests go \
                     through hyper's client from now on"
                );
                Err(None)
            }
        }
    }
}

/// Whether the origin's response head was over the parser's limits (fields or bytes).
fn head_too_wide(error: &hyper_util::client::legacy::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|cause| cause.downcast_ref::<hyper::Error>())
        .is_some_and(hyper::Error::is_parse_too_large)
}

/// What went wrong, without hyper's `client error (...)` wrapper when it has a cause.
fn cause_of(error: &hyper_util::client::legacy::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => error_reason(cause),
        None => error.to_string(),
    }
}
