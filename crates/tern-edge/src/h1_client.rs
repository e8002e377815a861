//! The origin link's own HTTP/1.1 client, for plain-http origins: a pool of keep-alive TCP connections,
//! the request head written in one write, the response head and body read by [`tern_http::h1`] straight
//! from the connection by the task that asked for them.
//!
//! Why not hyper's client here: it runs each connection as its own task and hands requests and responses
//! to it over channels, and its pool takes a lock and a wake-up per request; on a miss that is served
//! from memory these were the largest items of the edge's own CPU (README, "Performance → Edge"). This
//! client has no task per connection: an idle connection sits in the pool, a request takes it, and its
//! response body gives it back when the body has been read to its end.
//!
//! It handles GET and HEAD without a request body. Everything else (bodies, other methods, TLS origins)
//! stays on hyper's client, as does a response this client does not decode (a transfer coding other than
//! `chunked`): [`H1Error::UnsupportedCoding`] tells the caller to send the request that way instead.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Response};
use http_body::{Frame, SizeHint};
use tern_http::Body;
use tern_http::h1::{self, BodyDecoder, Decoded, H1Error, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Read buffer reserved per read, bytes.
const READ_CHUNK: usize = 8 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No connection could be made.
    #[error("{0}")]
    Connect(String),
    /// The response could not be read (malformed, cut, reset).
    #[error("{0}")]
    Failed(String),
    /// The response uses something this client does not decode; send the request with hyper's client.
    #[error("{0}")]
    Unsupported(H1Error),
}

/// Settings of the client.
#[derive(Debug, Clone)]
pub struct H1Settings {
    /// `host:port` of the origin.
    pub address: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence mid-body.
    pub idle_body_timeout: Duration,
    /// Idle keep-alive connections kept.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_lifetime: Duration,
    /// Limits on response heads and bodies.
    pub limits: Limits,
}

/// A pool of HTTP/1.1 connections to one plain-http origin.
pub struct H1Client {
    pool: Arc<Pool>,
}

struct Pool {
    settings: H1Settings,
    /// Idle connections, most recently used last (reused first: its TCP state is warmest).
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    connection: Connection,
    since: Instant,
}

/// One TCP connection and the bytes read from it that no response has consumed yet.
struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
}

impl H1Client {
    /// A client for the origin in `settings`.
    pub fn new(settings: H1Settings) -> Self {
        H1Client {
            pool: Arc::new(Pool {
                settings,
                idle: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// Whether this client takes the request (GET or HEAD without a body).
    pub fn handles(method: &Method, body_is_empty: bool) -> bool {
        body_is_empty && (*method == Method::GET || *method == Method::HEAD)
    }

    /// Sends a GET or HEAD with `headers` (which must hold `Host`) for the origin-form `target`; returns
    /// the response head with a body that reads the rest from the connection.
    pub async fn send(
        &self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, ExchangeError> {
        let head = h1::encode_request_head(method, target, headers);
        let is_head = *method == Method::HEAD;
        // A connection from the pool may have been closed by the origin meanwhile; the request (safe and
        // bodiless) is then sent once more on a new connection, as long as no byte of a response came back.
        if let Some(connection) = self.pool.take_idle() {
            match self.exchange(connection, &head, is_head).await {
                Err(Attempt::Stale) => {}
                Err(Attempt::Failed(error)) => return Err(error),
                Ok(response) => return Ok(response),
            }
        }
        let connection = self.pool.connect().await?;
        match self.exchange(connection, &head, is_head).await {
            Ok(response) => Ok(response),
            Err(Attempt::Failed(error)) => Err(error),
            Err(Attempt::Stale) => Err(ExchangeError::Failed(
                "the origin closed the connection before sending a response".into(),
            )),
        }
    }

    async fn exchange(
        &self,
        mut connection: Connection,
        head: &[u8],
        is_head: bool,
    ) -> Result<Response<Body>, Attempt> {
        let limits = self.pool.settings.limits;
        if connection.stream.write_all(head).await.is_err() {
            return Err(Attempt::Stale);
        }
        let parsed = loop {
            match h1::parse_response_head(&mut connection.buffer, is_head, &limits) {
                Ok(Some(parsed)) => break parsed,
                // Part of the head came and the rest waits: have what came acknowledged at once, in case
                // the origin holds the rest until it is (Nagle's algorithm; see `tern_http::quick_ack`).
                Ok(None) if !connection.buffer.is_empty() => tern_http::quick_ack::quick_ack(&connection.stream),
                Ok(None) => {}
                Err(error @ H1Error::UnsupportedCoding(_)) => {
                    return Err(Attempt::Failed(ExchangeError::Unsupported(error)));
                }
                Err(error) => return Err(Attempt::Failed(ExchangeError::Failed(error.to_string()))),
            }
            connection.buffer.reserve(READ_CHUNK);
            let nothing_yet = connection.buffer.is_empty();
            match connection.stream.read_buf(&mut connection.buffer).await {
                Ok(0) if nothing_yet => return Err(Attempt::Stale),
                Ok(0) => {
                    return Err(Attempt::Failed(ExchangeError::Failed(
                        "the origin closed the connection in the middle of the response head".into(),
                    )));
                }
                Ok(_) => {}
                Err(error) if nothing_yet && is_reset(&error) => return Err(Attempt::Stale),
                Err(error) => return Err(Attempt::Failed(ExchangeError::Failed(error.to_string()))),
            }
        };
        let decoder = BodyDecoder::new(parsed.framing, limits);
        let mut response = Response::new(tern_http::empty());
        *response.status_mut() = parsed.status;
        *response.version_mut() = parsed.version;
        *response.headers_mut() = parsed.headers;
        if decoder.is_done() {
            // No body (HEAD, 204, 304, `Content-Length: 0`): the connection is free at once.
            self.pool.release(connection, parsed.keep_alive);
            return Ok(response);
        }
        let body = H1Body {
            connection: Some(connection),
            decoder,
            keep_alive: parsed.keep_alive,
            pool: self.pool.clone(),
            idle: None,
            acked: false,
        };
        *response.body_mut() = http_body_util::BodyExt::boxed(body);
        Ok(response)
    }
}

/// How one attempt on one connection ended, if not with a response.
enum Attempt {
    /// The connection was dead before any response byte: the request may be sent again.
    Stale,
    /// A real failure.
    Failed(ExchangeError),
}

fn is_reset(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::BrokenPipe
    )
}

impl Pool {
    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used idle connection that has not outlived its idle lifetime.
    fn take_idle(&self) -> Option<Connection> {
        let now = Instant::now();
        let mut idle = self.idle();
        // The oldest are at the front; drop those too old (their origin may have closed them).
        while idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) > self.settings.idle_lifetime)
        {
            idle.pop_front();
        }
        idle.pop_back().map(|entry| entry.connection)
    }

    /// Puts a connection whose response was read to its end back in the pool.
    fn release(&self, connection: Connection, keep_alive: bool) {
        // Bytes after the response's end are not the start of a next response anyone asked for.
        if !keep_alive || !connection.buffer.is_empty() || self.settings.max_idle == 0 {
            return;
        }
        let mut idle = self.idle();
        if idle.len() >= self.settings.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle {
            connection,
            since: Instant::now(),
        });
    }

    async fn connect(&self) -> Result<Connection, ExchangeError> {
        let address = &self.settings.address;
        let stream = match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(ExchangeError::Connect(error.to_string())),
            Err(_) => {
                return Err(ExchangeError::Connect(format!(
                    "no connection within {:?}",
                    self.settings.connect_timeout
                )));
            }
        };
        // Requests are written whole in one write; Nagle would only delay them.
        let _ = stream.set_nodelay(true);
        Ok(Connection {
            stream,
            buffer: BytesMut::with_capacity(READ_CHUNK),
        })
    }
}

/// A response body read from its connection by whoever polls it; the connection goes back to the pool
/// when the body has been read to its end, and is closed if the body is dropped before.
struct H1Body {
    connection: Option<Connection>,
    decoder: BodyDecoder,
    keep_alive: bool,
    pool: Arc<Pool>,
    /// Armed only when a read has to wait: a body that arrives with its head costs no timer.
    idle: Option<Pin<Box<Sleep>>>,
    /// Whether what came was acknowledged at once since the last read ([`tern_http::quick_ack`]): done
    /// only when a read has to wait, so a body that arrives with its head costs no system call.
    acked: bool,
}

impl H1Body {
    fn fail(&mut self, reason: String) -> Poll<Option<Result<Frame<Bytes>, tern_http::BoxError>>> {
        self.connection = None;
        Poll::Ready(Some(Err(reason.into())))
    }

    fn finish(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.pool.release(connection, self.keep_alive);
        }
    }
}

impl http_body::Body for H1Body {
    type Data = Bytes;
    type Error = tern_http::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut connection.buffer) {
                Err(error) => return this.fail(error.to_string()),
                Ok(Decoded::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        // Give the connection back now, before the last bytes are even passed on.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::NeedMore) => {}
            }
            connection.buffer.reserve(READ_CHUNK);
            match poll_read(&connection.stream, &mut connection.buffer, cx) {
                Poll::Ready(Ok(0)) => {
                    if this.decoder.ends_at_close() {
                        this.connection = None;
                        return Poll::Ready(None);
                    }
                    this.connection = None;
                    return Poll::Ready(Some(Err(tern_http::BodyEndedEarly.into())));
                }
                Poll::Ready(Ok(_)) => {
                    this.acked = false;
                    if let Some(sleep) = this.idle.as_mut() {
                        sleep
                            .as_mut()
                            .reset(Instant::now() + this.pool.settings.idle_body_timeout);
                    }
                }
                Poll::Ready(Err(error)) => return this.fail(format!("reading the origin's body: {error}")),
                Poll::Pending => {
                    if !this.acked {
                        // The origin may hold the rest until what it sent is acknowledged.
                        tern_http::quick_ack::quick_ack(&connection.stream);
                        this.acked = true;
                    }
                    let timeout = this.pool.settings.idle_body_timeout;
                    let sleep = this.idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.connection = None;
                        return Poll::Ready(Some(Err(tern_http::BodyStalled { idle: timeout }.into())));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.connection.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

/// One read into `buffer` when the socket is readable.
fn poll_read(stream: &TcpStream, buffer: &mut BytesMut, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        match stream.try_read_buf(buffer) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}
