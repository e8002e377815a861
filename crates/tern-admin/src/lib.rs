//! The admin listener every long-running tern role has: `GET /metrics` in the Prometheus text format,
//! `GET /status` as JSON, and whatever routes the role adds (the edge's `POST /purge`, for instance).
//! Bind it to a loopback or management address: it is for operators, not for the public. A role given a
//! certificate serves its admin listener over HTTPS with it too.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tern_http::server::{Handler, Running, ServerLimits, serve_with};
use tern_http::tls::{CertStore, TlsAcceptor};
use tern_http::{Body, full};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod throttle;
pub use throttle::{KeyedThrottle, Throttle};

/// Largest admin request body accepted (a purge list of many URLs fits easily).
pub const MAX_ADMIN_BODY: usize = 4 << 20;

/// A request to the admin listener, with its body read.
#[derive(Debug)]
pub struct AdminRequest {
    /// Method.
    pub method: Method,
    /// Path.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Header fields.
    pub headers: HeaderMap,
    /// Body (at most [`MAX_ADMIN_BODY`] bytes).
    pub body: Bytes,
    /// Who asked.
    pub client: SocketAddr,
}

/// A boxed future of a response.
pub type ResponseFuture<'a> = Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>>;

/// What a role exposes on its admin listener.
pub trait AdminRoutes: Send + Sync + 'static {
    /// The role's `/status` document.
    fn status(&self) -> serde_json::Value;

    /// The role's metrics registry, brought up to date (gauges read at scrape time are set here).
    fn registry(&self) -> &Registry;

    /// Called before each scrape to refresh gauges that are read rather than counted.
    fn refresh_metrics(&self) {}

    /// Role-specific routes; `None` falls through to 404.
    fn route<'a>(&'a self, _request: &'a AdminRequest) -> Option<ResponseFuture<'a>> {
        None
    }

    /// The paths [`route`](AdminRoutes::route) serves, listed at `GET /` after `/status` and `/metrics` so
    /// an operator finds them (`/ui/`, `/purge`...).
    fn endpoints(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// The token of an `Authorization: Bearer <token>` field value: the scheme is matched without regard to
/// case (RFC 9110 section 11.1: `bearer` and `BEARER` are `Bearer`), and blanks around the token are
/// dropped. `None` for another scheme or no token.
pub fn bearer_token(value: &http::HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?.trim_start();
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut text = serde_json::to_vec_pretty(value).unwrap_or_default();
    text.push(b'\n');
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// A JSON error response `{"error": message}`.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message.into() }))
}

struct AdminHandler {
    routes: Arc<dyn AdminRoutes>,
    started: Instant,
}

impl Handler for AdminHandler {
    async fn call(&self, request: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = match tern_http::collect_within(body, MAX_ADMIN_BODY, tern_http::REQUEST_BODY_DEADLINE).await {
            Ok(body) => body,
            Err(error) => return json_error(error.status(), format!("admin {error}")),
        };
        let request = AdminRequest {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers,
            body,
            client,
        };
        if let Some(response) = self.routes.route(&request) {
            return response.await;
        }
        match (&request.method, request.path.as_str()) {
            (&Method::GET, "/metrics") => {
                self.routes.refresh_metrics();
                let mut text = String::new();
                if prometheus_client::encoding::text::encode(&mut text, self.routes.registry()).is_err() {
                    return json_error(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed");
                }
                let mut response = Response::new(full(text));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            }
            (&Method::GET, "/status") => {
                let mut status = self.routes.status();
                if let Some(object) = status.as_object_mut() {
                    object.insert("version".into(), env!("CARGO_PKG_VERSION").into());
                    object.insert("uptime_seconds".into(), self.started.elapsed().as_secs().into());
                }
                json(StatusCode::OK, &status)
            }
            (&Method::GET, "/") => {
                let mut endpoints = vec!["/status", "/metrics"];
                endpoints.extend(self.routes.endpoints());
                json(StatusCode::OK, &serde_json::json!({ "endpoints": endpoints }))
            }
            _ => json_error(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint {} {}", request.method, request.path),
            ),
        }
    }
}

/// Serves the admin listener (plain HTTP) until `shutdown` is cancelled.
pub async fn serve_admin(listener: TcpListener, routes: Arc<dyn AdminRoutes>, shutdown: CancellationToken) {
    serve_admin_with(listener, routes, None, shutdown).await;
}

/// Serves the admin listener until `shutdown` is cancelled; HTTPS with `tls`.
pub async fn serve_admin_with(
    listener: TcpListener,
    routes: Arc<dyn AdminRoutes>,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let handler = Arc::new(AdminHandler {
        routes,
        started: Instant::now(),
    });
    serve_with(listener, handler, ServerLimits::default(), tls, shutdown).await;
}

/// TLS of a role's listeners, and the certificates the role reloads while it runs.
#[derive(Debug, Clone, Default)]
pub struct RoleTls {
    /// HTTPS on the main listener.
    pub main: Option<TlsAcceptor>,
    /// HTTPS on the admin listener.
    pub admin: Option<TlsAcceptor>,
    /// Certificates reloaded on `SIGHUP` and on file changes until the role stops.
    pub certs: Option<Arc<CertStore>>,
}

impl RoleTls {
    /// Plain HTTP on every listener.
    pub fn none() -> Self {
        RoleTls::default()
    }

    /// HTTPS with `certs` on the main and the admin listener (the usual case: one `--tls-cert` pair
    /// serves both).
    pub fn both(certs: Arc<CertStore>) -> Self {
        RoleTls {
            main: Some(certs.acceptor()),
            admin: Some(certs.acceptor()),
            certs: Some(certs),
        }
    }

    /// [`RoleTls::both`] when there are certificates, [`RoleTls::none`] otherwise.
    pub fn from_store(certs: Option<Arc<CertStore>>) -> Self {
        certs.map(RoleTls::both).unwrap_or_default()
    }
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// The cause.
    pub source: std::io::Error,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let bound = listener.local_addr().map_err(|source| BindError { addr, source })?;
    Ok((listener, bound))
}

/// Starts a role: binds its main listener and, when `admin` is given, its admin listener (whose routes
/// `routes` builds once the main address is known), and serves both — over HTTPS where `tls` says so —
/// until the returned handle stops them; `tls.certs` are reloaded meanwhile.
pub async fn launch<H: Handler, R>(
    listen: SocketAddr,
    handler: Arc<H>,
    limits: ServerLimits,
    admin: Option<SocketAddr>,
    routes: impl FnOnce(SocketAddr) -> Arc<dyn AdminRoutes>,
    role: R,
    tls: RoleTls,
) -> Result<Running<R>, BindError> {
    let shutdown = CancellationToken::new();
    let (listener, bound) = bind(listen).await?;
    let mut admin_bound = None;
    let mut admin_listener = None;
    if let Some(addr) = admin {
        let (listener, addr) = bind(addr).await?;
        admin_bound = Some(addr);
        admin_listener = Some(listener);
    }
    let mut tasks = vec![tokio::spawn(serve_with(
        listener,
        handler,
        limits,
        tls.main,
        shutdown.clone(),
    ))];
    if let Some(listener) = admin_listener {
        tasks.push(tokio::spawn(serve_admin_with(
            listener,
            routes(bound),
            tls.admin,
            shutdown.clone(),
        )));
    }
    if let Some(certs) = &tls.certs {
        tracing::info!(certificates = %certs.describe(), "certificates loaded");
        tasks.push(tokio::spawn(certs.watch(shutdown.clone())));
    }
    Ok(Running::new(bound, admin_bound, role, shutdown, tasks))
}

/// Binds `addr`, returning the listener and the address it got (`:0` picks a free port).
pub async fn bind_listener(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case_and_other_schemes_are_not() {
        let token = |text: &'static str| bearer_token(&http::HeaderValue::from_static(text)).map(str::to_string);
        for spelled in ["Bearer abc", "bearer abc", "BEARER abc", "  Bearer   abc  "] {
            assert_eq!(token(spelled).as_deref(), Some("abc"), "{spelled:?}");
        }
        for other in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc"] {
            assert_eq!(token(other), None, "{other:?}");
        }
    }

    /// A role that serves `/purge` besides the common endpoints.
    struct PurgingRole(Registry);

    impl AdminRoutes for PurgingRole {
        fn status(&self) -> serde_json::Value {
            serde_json::json!({ "role": "test" })
        }

        fn registry(&self) -> &Registry {
            &self.0
        }

        fn route<'a>(&'a self, request: &'a AdminRequest) -> Option<ResponseFuture<'a>> {
            (request.path == "/purge")
                .then(|| Box::pin(async { json(StatusCode::OK, &serde_json::json!({})) }) as ResponseFuture<'a>)
        }

        fn endpoints(&self) -> Vec<&'static str> {
            vec!["/purge"]
        }
    }

    #[tokio::test]
    async fn the_index_lists_the_roles_own_endpoints() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(serve_admin(
            listener,
            Arc::new(PurgingRole(Registry::default())),
            shutdown.clone(),
        ));
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let index: serde_json::Value = serde_json::from_str(body).expect(&answer);
        assert_eq!(index["endpoints"], serde_json::json!(["/status", "/metrics", "/purge"]));
        shutdown.cancel();
        let _ = serving.await;
    }
}
