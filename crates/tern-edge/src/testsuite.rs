//! Test helpers shared with other crates' tests (feature `testsuite`): a programmable origin that counts
//! what it is asked, and a client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tern_http::Body;
use tokio::net::TcpListener;

use crate::clock::{Clock, SystemClock};

/// What the origin answers for a path.
#[derive(Clone, Debug)]
pub struct Resource {
    /// Status code.
    pub status: u16,
    /// Response header fields.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Delay before the response head.
    pub delay: Duration,
    /// Answer a matching `If-None-Match` with 304.
    pub honor_validators: bool,
    /// Generate a body of this many bytes on the fly instead of `body` (for very large objects).
    pub generated_len: Option<u64>,
    /// Declare this Content-Length but close after sending `body` (a truncated response).
    pub truncate_to: Option<u64>,
    /// The first this many requests for the path get `body`'s full length in the head, then half of it,
    /// and 200 ms later a closed connection (a server dying mid-body); later ones get `body` whole.
    pub cut_first: usize,
    /// Send `body` one byte at a time with this gap between bytes (an origin that trickles).
    pub trickle: Option<Duration>,
    /// For the first request of the path: send the first half of `body`, wait until this is notified, then
    /// send the rest (a body still arriving while other requests join it). Later requests get it whole.
    pub hold_midway: Option<Arc<tokio::sync::Notify>>,
    /// With `hold_midway`: after the notification, fail the body instead of sending the rest.
    pub fail_after_hold: bool,
    /// Send the body without `Content-Length` (chunked).
    pub chunked: bool,
}

impl Resource {
    /// A 200 with `body` and the given fields.
    pub fn ok(body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Self {
        Resource {
            status: 200,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.into(),
            delay: Duration::ZERO,
            honor_validators: true,
            generated_len: None,
            truncate_to: None,
            cut_first: 0,
            trickle: None,
            hold_midway: None,
            fail_after_hold: false,
            chunked: false,
        }
    }
}

/// A request the origin saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header fields.
    pub headers: HeaderMap,
}

struct OriginState {
    resources: Mutex<HashMap<String, Resource>>,
    seen: Mutex<Vec<Seen>>,
    count: AtomicUsize,
    clock: Arc<dyn Clock>,
}

/// A programmable origin on loopback.
#[derive(Clone)]
pub struct TestOrigin {
    /// Its address.
    pub addr: SocketAddr,
    /// Whether it serves HTTPS (its URL is then `https://localhost:PORT`).
    pub tls: bool,
    state: Arc<OriginState>,
}

impl TestOrigin {
    /// Starts an origin on 127.0.0.1 that dates its responses by the system clock.
    pub async fn start() -> Self {
        Self::start_with_clock(Arc::new(SystemClock)).await
    }

    /// Starts an origin whose `Date` fields come from `clock` (share the edge's manual clock so the two
    /// agree on how old a response is).
    pub async fn start_with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::start_with(clock, None).await
    }

    /// Starts an origin that serves HTTPS with `tls` (give it a certificate for `localhost`).
    pub async fn start_tls(tls: tern_http::tls::TlsAcceptor) -> Self {
        Self::start_with(Arc::new(SystemClock), Some(tls)).await
    }

    async fn start_with(clock: Arc<dyn Clock>, tls: Option<tern_http::tls::TlsAcceptor>) -> Self {
        let serves_tls = tls.is_some();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let state = Arc::new(OriginState {
            resources: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            clock,
        });
        let serving = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = serving.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, request).await) }
                    });
                    let mut http1 = hyper::server::conn::http1::Builder::new();
                    // Room for the long heads the edge's tests send through.
                    http1.max_headers(512);
                    match tls {
                        None => {
                            let _ = http1.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http1.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        TestOrigin {
            addr,
            tls: serves_tls,
            state,
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Sets what `path` answers.
    pub fn set(&self, path: &str, resource: Resource) {
        self.state
            .resources
            .lock()
            .expect("lock")
            .insert(path.to_string(), resource);
    }

    /// Requests seen so far.
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// Requests seen for `path`.
    pub fn count_for(&self, path: &str) -> usize {
        self.state
            .seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.path == path)
            .count()
    }

    /// The requests seen, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }
}

async fn answer(state: &OriginState, request: Request<Incoming>) -> Response<Body> {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    state.count.fetch_add(1, Ordering::SeqCst);
    let seen_for_path = {
        let mut seen = state.seen.lock().expect("lock");
        seen.push(Seen {
            method: request.method().to_string(),
            path: path.clone(),
            headers: request.headers().clone(),
        });
        seen.iter().filter(|s| s.path == path).count()
    };
    let resource = state.resources.lock().expect("lock").get(&path).cloned();
    let Some(resource) = resource else {
        let mut response = Response::new(tern_http::full("not here"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    if !resource.delay.is_zero() {
        tokio::time::sleep(resource.delay).await;
    }
    let mut builder = Response::builder()
        .status(resource.status)
        .header("date", httpdate::fmt_http_date(state.clock.now()));
    for (name, value) in &resource.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let etag = resource
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("etag"))
        .map(|(_, v)| v.clone());
    if resource.honor_validators
        && let (Some(etag), Some(wanted)) = (etag, request.headers().get("if-none-match"))
        && wanted
            .to_str()
            .ok()
            .is_some_and(|w| w.split(',').any(|t| t.trim() == etag))
    {
        return builder.status(304).body(tern_http::empty()).expect("response");
    }
    if let Some(len) = resource.generated_len {
        let (sender, body) = tern_http::channel(4, Some(len));
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let mut left = len;
            while left > 0 {
                let take = left.min(chunk.len() as u64) as usize;
                if sender.send(Ok(chunk.slice(..take))).await.is_err() {
                    return;
                }
                left -= take as u64;
            }
        });
        return builder.header("content-length", len).body(body).expect("response");
    }
    if seen_for_path <= resource.cut_first {
        let (sender, body) = tern_http::channel(4, None);
        let half = resource.body.slice(..resource.body.len() / 2);
        tokio::spawn(async move {
            let _ = sender.send(Ok(half)).await;
            // Long enough for a proxy in between to have passed the head and the first half on.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = sender.send(Err("origin dies mid-body".into())).await;
        });
        return builder
            .header("content-length", resource.body.len())
            .body(body)
            .expect("response");
    }
    if let Some(gap) = resource.trickle {
        let (sender, body) = tern_http::channel(1, None);
        let sent = resource.body.clone();
        tokio::spawn(async move {
            for at in 0..sent.len() {
                if sender.send(Ok(sent.slice(at..at + 1))).await.is_err() {
                    return;
                }
                tokio::time::sleep(gap).await;
            }
        });
        return builder
            .header("content-length", resource.body.len())
            .body(body)
            .expect("response");
    }
    if let Some(hold) = resource.hold_midway.clone().filter(|_| seen_for_path == 1) {
        let (sender, body) = tern_http::channel(1, None);
        let sent = resource.body.clone();
        let fail = resource.fail_after_hold;
        tokio::spawn(async move {
            let half = sent.len() / 2;
            if sender.send(Ok(sent.slice(..half))).await.is_err() {
                return;
            }
            hold.notified().await;
            let rest = if fail {
                Err("origin fails mid-body".into())
            } else {
                Ok(sent.slice(half..))
            };
            let _ = sender.send(rest).await;
        });
        if !resource.chunked {
            builder = builder.header("content-length", resource.body.len());
        }
        return builder.body(body).expect("response");
    }
    if resource.chunked {
        let (sender, body) = tern_http::channel(1, None);
        let sent = resource.body.clone();
        tokio::spawn(async move {
            let _ = sender.send(Ok(sent)).await;
        });
        return builder.body(body).expect("response");
    }
    if let Some(declared) = resource.truncate_to {
        let (sender, body) = tern_http::channel(4, None);
        let sent = resource.body.clone();
        tokio::spawn(async move {
            let _ = sender.send(Ok(sent)).await;
            let _ = sender.send(Err("origin closes mid-body".into())).await;
        });
        return builder.header("content-length", declared).body(body).expect("response");
    }
    builder
        .body(Full::new(resource.body).map_err(|never| match never {}).boxed())
        .expect("response")
}

/// An HTTP/1.1 client for tests.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    // Room for the long heads the edge's tests receive.
    Client::builder(TokioExecutor::new())
        .http1_max_headers(512)
        .build(HttpConnector::new())
}

/// A completed response: status, fields, body.
#[derive(Debug)]
pub struct Got {
    /// Status code.
    pub status: StatusCode,
    /// Header fields.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Got {
    /// A field as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// Sends a request and reads the whole response.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = client
        .request(builder.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}
