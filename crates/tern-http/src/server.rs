//! The accept loop every tern listener uses: HTTP/1.1 with keep-alive and HTTP/2 (prior knowledge, h2c) on
//! one port, bounded request-header size, and graceful shutdown that lets requests in flight finish. With a
//! [`TlsAcceptor`] the same loop serves HTTPS: the handshake (bounded in time) runs in the connection's own
//! task, never in the accept loop, and ALPN picks HTTP/2 or HTTP/1.1.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
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
    /// How long a client may take to send its request head.
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
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_header_fields)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
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
        tracker.spawn(async move {
            let Some(acceptor) = tls else {
                serve_connection(&builder, stream, handler, client, stop).await;
                return;
            };
            let handshake = tokio::select! {
                handshake = acceptor.accept(stream) => handshake,
                _ = stop.cancelled() => return,
            };
            match handshake {
                Ok(stream) => serve_connection(&builder, stream, handler, client, stop).await,
                Err(error) => debug!(%client, %error, "TLS handshake failed"),
            }
        });
    }
    connections.cancel();
    tracker.close();
    let _ = tokio::time::timeout(limits.drain_timeout, tracker.wait()).await;
}

/// Serves HTTP on one accepted (and, for HTTPS, handshaken) connection until it ends or `stop`.
async fn serve_connection<H, S>(
    builder: &auto::Builder<TokioExecutor>,
    stream: S,
    handler: Arc<H>,
    client: SocketAddr,
    stop: CancellationToken,
) where
    H: Handler,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.call(request, client).await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%client, %error, "connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
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
