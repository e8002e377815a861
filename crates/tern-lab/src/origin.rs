//! A synthetic origin for workloads and benchmarks: `/obj/<size>/<n>` answers `size` bytes with
//! `Cache-Control: max-age=<ttl>` and an ETag, after an optional injected delay (the machine has no netem,
//! so origin latency is injected here, in-process).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tern_http::Body;
use tokio::net::TcpListener;

/// Settings of the synthetic origin.
#[derive(Debug, Clone)]
pub struct OriginSettings {
    /// Delay before each response head.
    pub delay: Duration,
    /// `max-age` of every object, seconds.
    pub ttl: u64,
}

/// A running synthetic origin.
pub struct SyntheticOrigin {
    /// Its address.
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
}

impl SyntheticOrigin {
    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Starts the origin on `listen`.
pub async fn start(listen: SocketAddr, settings: OriginSettings) -> std::io::Result<SyntheticOrigin> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    let settings = Arc::new(settings);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let settings = settings.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let settings = settings.clone();
                    let counter = counter.clone();
                    async move {
                        // `/__count` reports how many object requests were served (itself not counted).
                        if request.uri().path() == "/__count" {
                            return Ok::<_, Infallible>(Response::new(tern_http::full(
                                counter.load(Ordering::Relaxed).to_string(),
                            )));
                        }
                        counter.fetch_add(1, Ordering::Relaxed);
                        Ok(answer(&settings, request).await)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(SyntheticOrigin { addr, requests })
}

async fn answer(settings: &OriginSettings, request: Request<Incoming>) -> Response<Body> {
    if !settings.delay.is_zero() {
        tokio::time::sleep(settings.delay).await;
    }
    let mut parts = request.uri().path().trim_start_matches('/').split('/');
    let (Some("obj"), Some(size), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(tern_http::full("use /obj/<size>/<n>"))
            .unwrap_or_else(|_| Response::new(tern_http::empty()));
    };
    let Ok(size) = size.parse::<usize>() else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(tern_http::full("size must be a number"))
            .unwrap_or_else(|_| Response::new(tern_http::empty()));
    };
    let size = size.min(64 << 20);
    let body = Bytes::from(vec![b'a' + (name.len() % 26) as u8; size]);
    Response::builder()
        .header("cache-control", format!("public, max-age={}", settings.ttl))
        .header("etag", format!("\"{size}-{name}\""))
        .header("content-type", "application/octet-stream")
        .body(tern_http::full(body))
        .unwrap_or_else(|_| Response::new(tern_http::empty()))
}
