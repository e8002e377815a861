//! The accept loop every tern listener uses: HTTP/1.1 with keep-alive and HTTP/2 (prior knowledge, h2c) on
//! one port, bounded request-header size, and graceful shutdown that lets requests in flight finish. With a
//! [`TlsAcceptor`] the same loop serves HTTPS: the handshake (bounded in time) runs in the connection's own
//! task, never in the accept loop, and ALPN picks HTTP/2 or HTTP/1.1.
//!
//! The slow-header guard (slowloris) is one timer per connection rather than one per request: hyper's own
//! `header_read_timeout` arms, registers and drops a boxed timer for every request head it reads, which was
//! a measurable share of a keep-alive cache hit. The connection's timer is re-armed only when it fires, and
//! closes the connection when a whole period went by with no request head received, no request being
//! served and no response byte written ([`Activity`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::Body;
use crate::tls::TlsAcceptor;

/// Default of [`ServerLimits::max_header_fields`]: 100, as Apache's `LimitRequestFields`. It is also
/// hyper's inline parse capacity: above it, hyper allocates and initialises a scratch array of that many
/// entries for every request head it parses (measured: 256 fields cost about a fifth more CPU per 1 KB
/// cache hit), so raise it only for clients that need it.
pub const DEFAULT_MAX_HEADER_FIELDS: usize = 100;

/// Limits of a listener.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest request head (request line and fields) accepted over HTTP/1.1; larger ones get 431.
    pub max_header_bytes: usize,
    /// Most request header fields accepted over HTTP/1.1; more get 431. Default
    /// [`DEFAULT_MAX_HEADER_FIELDS`].
    pub max_header_fields: usize,
    /// How long a client may take to send its request head (also how long a keep-alive connection may
    /// idle, and a response may stall unread). Checked once per period per connection, so a connection
    /// that stops making progress is closed between one and two periods after its last progress.
    pub header_read_timeout: Duration,
    /// How long to wait for requests in flight at shutdown.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_header_bytes: 64 * 1024,
            max_header_fields: DEFAULT_MAX_HEADER_FIELDS,
            header_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Handles one request from `client`.
pub trait Handler: Send + Sync + 'static {
    /// Produces the response.
    fn call(&self, request: Request<Incoming>, client: SocketAddr) -> impl Future<Output = Response<Body>> + Send;
}

/// Serves `listener` (plain HTTP) with `handler` until `shutdown` is cancelled, then drains connections.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    serve_with(listener, handler, limits, None, shutdown).await;
}

/// Smallest buffer the HTTP/1.1 parser reads a request head into (hyper's floor): a `max_header_bytes`
/// below it is not what a server enforces.
pub const MIN_HEAD_BUFFER: usize = 8 * 1024;

/// Serves `listener` with `handler` until `shutdown` is cancelled, then drains connections; with `tls`,
/// every connection is HTTPS (a client that does not complete the handshake in time is closed).
pub async fn serve_with<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(limits.max_header_bytes.max(MIN_HEAD_BUFFER))
        .max_headers(limits.max_header_fields);
    builder.http2().max_header_list_size(limits.max_header_bytes as u32);
    let builder = Arc::new(builder);
    let connections = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let stop = connections.clone();
        let tls = tls.clone();
        let guard = limits.header_read_timeout;
        tracker.spawn(async move {
            let Some(acceptor) = tls else {
                serve_connection(&builder, stream, handler, client, guard, stop).await;
                return;
            };
            // A client speaking plain HTTP to the HTTPS port gets a plain answer that says so, not a TLS
            // alert its HTTP parser reports as "invalid HTTP version" (nginx answers the same way).
            let mut first = [0u8; 1];
            let peeked = tokio::select! {
                peeked = tokio::time::timeout(acceptor.handshake_timeout(), stream.peek(&mut first)) => peeked,
                _ = stop.cancelled() => return,
            };
            match peeked {
                Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
                    plain_http_on_https(stream, client).await;
                    return;
                }
                Ok(Ok(1)) => {}
                _ => return,
            }
            let handshake = tokio::select! {
                handshake = acceptor.accept(stream) => handshake,
                _ = stop.cancelled() => return,
            };
            match handshake {
                Ok(stream) => serve_connection(&builder, stream, handler, client, guard, stop).await,
                Err(error) => debug!(%client, %error, "TLS handshake failed"),
            }
        });
    }
    connections.cancel();
    tracker.close();
    let _ = tokio::time::timeout(limits.drain_timeout, tracker.wait()).await;
}

/// Answers a plain-HTTP request that came to an HTTPS listener (its first byte is a method's letter, where a
/// TLS handshake starts with 0x16) with `400 Bad Request` saying to use `https://`, then closes. The request
/// head is read first (up to 16 KiB, for at most a second), so that closing does not reset the connection
/// before the client has read the answer.
async fn plain_http_on_https(mut stream: tokio::net::TcpStream, client: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = vec![0u8; 16 * 1024];
    let mut read = 0;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while read < head.len() {
            match stream.read(&mut head[read..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
            if head[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    debug!(%client, "plain HTTP on the HTTPS listener: answered 400");
    let body = "this port speaks HTTPS: use an https:// URL\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves HTTP on one accepted (and, for HTTPS, handshaken) connection until it ends, `stop`, or the
/// slow-header guard finds a period of `guard` without progress.
async fn serve_connection<H, S>(
    builder: &auto::Builder<TokioExecutor>,
    stream: S,
    handler: Arc<H>,
    client: SocketAddr,
    guard: Duration,
    stop: CancellationToken,
) where
    H: Handler,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let shared = Arc::new((handler, activity.clone()));
    let service = service_fn(move |request: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            let (handler, activity) = &*shared;
            let _serving = activity.serving();
            Ok::<_, Infallible>(handler.call(request, client).await)
        }
    });
    let stream = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let timer = tokio::time::sleep(guard);
    tokio::pin!(timer);
    let mut last = activity.progress();
    loop {
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(error) = result {
                    debug!(%client, %error, "connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
                return;
            }
            _ = timer.as_mut() => {
                let progress = activity.progress();
                if progress == last && !activity.is_serving() {
                    debug!(%client, timeout = ?guard, "no progress within the header read timeout; closing");
                    // An idle connection closes at once (HTTP/2 with a GOAWAY); one that still holds a
                    // partial head gets one more period at most.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(guard, connection).await;
                    return;
                }
                last = progress;
                timer.as_mut().reset(tokio::time::Instant::now() + guard);
            }
        }
    }
}

/// What one connection did, for its slow-header guard: request heads received (a service call each),
/// response bytes written, and requests being served. Touched by the connection's task and, on HTTP/2,
/// by its streams' tasks (hence atomics).
#[derive(Debug, Default)]
struct Activity {
    /// Request heads received plus bytes written: it moves whenever the client or the server progress.
    progress: AtomicU64,
    /// Requests whose handler has not returned yet (a slow upstream is not the client's fault).
    serving: AtomicU64,
}

impl Activity {
    fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    fn advance(&self, by: u64) {
        self.progress.fetch_add(by, Ordering::Relaxed);
    }

    fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed) > 0
    }

    /// Counts a request head and marks a request in progress until the returned guard drops.
    fn serving(&self) -> Serving<'_> {
        self.advance(1);
        self.serving.fetch_add(1, Ordering::Relaxed);
        Serving(self)
    }
}

/// A request in progress on a connection (see [`Activity::serving`]).
struct Serving<'a>(&'a Activity);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.serving.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's stream that counts the bytes written to it into the connection's [`Activity`].
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(count)) = written {
            self.activity.advance(count as u64);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(count)) = written {
            self.activity.advance(count as u64);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A running role: its listeners' addresses, the role itself, and the tasks that one token stops.
pub struct Running<R> {
    /// The main listener's address.
    pub listen: SocketAddr,
    /// The admin listener's address, if any.
    pub admin: Option<SocketAddr>,
    /// The HTTPS listener's address when it is a listener of its own beside the main one (the edge's
    /// `--tls-listen`); `None` otherwise.
    pub tls: Option<SocketAddr>,
    /// The role (for inspection by tests and embedding programs).
    pub role: R,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl<R> Running<R> {
    /// Bundles the tasks of a started role.
    pub fn new(
        listen: SocketAddr,
        admin: Option<SocketAddr>,
        role: R,
        shutdown: CancellationToken,
        tasks: Vec<JoinHandle<()>>,
    ) -> Self {
        Running {
            listen,
            admin,
            tls: None,
            role,
            shutdown,
            tasks,
        }
    }

    /// Runs `task` as part of the role: [`Running::wait`] and [`Running::shutdown`] wait for it too, so it
    /// must end when the role's token is cancelled.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// A token that stops the role when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, lets requests in flight finish (bounded), and returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until the role stops (its token is cancelled).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// Answers after `delay` (a slow upstream).
    struct Slow {
        delay: Duration,
    }

    impl Handler for Slow {
        async fn call(&self, _request: Request<Incoming>, _client: SocketAddr) -> Response<Body> {
            tokio::time::sleep(self.delay).await;
            Response::new(crate::full("ok"))
        }
    }

    async fn start(delay: Duration) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let limits = ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            ..ServerLimits::default()
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::new(Slow { delay }), limits, shutdown.clone()));
        (addr, shutdown)
    }

    /// Reads until the server closes (the bytes read), or `None` when it keeps the connection open.
    async fn read_to_close(stream: &mut TcpStream) -> Option<String> {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut answer)).await;
        let _ = read.ok()?;
        Some(String::from_utf8_lossy(&answer).into_owned())
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_finishes_its_head_is_closed_within_two_periods() {
        let (addr, shutdown) = start(Duration::ZERO).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.expect("write");
        let answer = read_to_close(&mut stream).await;
        assert_eq!(answer.as_deref(), Some(""), "no response to a head that never ended");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited <= Duration::from_secs(30),
            "closed after {waited:?}"
        );
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_dribbling_its_head_is_closed_too() {
        let (addr, shutdown) = start(Duration::ZERO).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        stream.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        // One header line every 5 s: progress on the wire, but never a whole head.
        let mut closed = false;
        for line in 0..20 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if stream.write_all(format!("X-{line}: y\r\n").as_bytes()).await.is_err() {
                closed = true;
                break;
            }
        }
        let answer = read_to_close(&mut stream).await;
        assert!(
            closed || answer.as_deref() == Some(""),
            "a head that never ended was answered or left open: {answer:?}"
        );
        assert!(
            started.elapsed() <= Duration::from_secs(40),
            "closed after {:?}",
            started.elapsed()
        );
        shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_slower_than_the_period_is_answered_and_keep_alive_goes_on() {
        let (addr, shutdown) = start(Duration::from_secs(35)).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        for _ in 0..2 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .expect("write");
            let mut answer = vec![0; 256];
            let read = stream.read(&mut answer).await.expect("read");
            let text = String::from_utf8_lossy(&answer[..read]);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(text.ends_with("ok"), "{text}");
        }
        shutdown.cancel();
    }
}
