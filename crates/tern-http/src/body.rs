//! Response bodies: one boxed type for every handler, and a bounded channel body so a producer
//! (an origin fetch, a disk read) streams to a client with backpressure instead of buffering.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;

/// Error type carried by bodies: anything that can go wrong while producing bytes.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type every tern handler returns.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A body holding `bytes` in full.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A body with no bytes.
pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

/// How long a request body read whole before it is acted on may take, from its first byte to its last
/// ([`collect_within`]): a client that stops sending holds its buffer no longer than this.
pub const REQUEST_BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a request body was not read whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectError {
    /// It is over the limit (by `Content-Length` or by what arrived).
    #[error("request body over {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// It did not arrive whole within the deadline.
    #[error("request body not received whole within {} s", .deadline.as_secs())]
    Stalled {
        /// The deadline.
        deadline: std::time::Duration,
    },
    /// The connection failed while it arrived.
    #[error("request body cut off: {0}")]
    Failed(String),
}

impl CollectError {
    /// The status to answer: 413, 408 or 400.
    pub fn status(&self) -> http::StatusCode {
        match self {
            CollectError::TooLarge { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
            CollectError::Stalled { .. } => http::StatusCode::REQUEST_TIMEOUT,
            CollectError::Failed(_) => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads a request `body` whole, at most `limit` bytes within `deadline`: how every listener reads a body
/// it must hold in full before it can check it (a signed purge, a registration, an API call). A body
/// announced over the limit is refused before any of it is read; one that stalls is dropped at the
/// deadline, so a client that sends `Content-Length: 1000001` and stops one byte short holds nothing for
/// long.
pub async fn collect_within<B>(body: B, limit: usize, deadline: std::time::Duration) -> Result<Bytes, CollectError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(CollectError::TooLarge { limit });
    }
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(deadline, limited.collect()).await {
        Err(_) => Err(CollectError::Stalled { deadline }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(CollectError::TooLarge { limit }),
        Ok(Err(error)) => Err(CollectError::Failed(error.to_string())),
    }
}

/// Producer half of a [`channel`] body.
pub type ChannelSender = mpsc::Sender<Result<Bytes, BoxError>>;

/// A streaming body fed through a bounded channel of `capacity` chunks. `length`, when known, is
/// reported as the exact size so the server can send `Content-Length`. Sending an `Err` aborts the
/// body, which makes the server cut the connection rather than pass a truncated object as complete.
pub fn channel(capacity: usize, length: Option<u64>) -> (ChannelSender, Body) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (tx, ChannelBody { rx, length }.boxed())
}

struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    length: Option<u64>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                if let Some(left) = self.length.as_mut() {
                    *left = left.saturating_sub(bytes.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

/// Size of reads when streaming a file.
const FILE_CHUNK: usize = 64 * 1024;

/// Streams `count` bytes of `file` starting at `start` (an absolute offset). A file that turns out shorter
/// than promised cuts the body with an error rather than padding or passing it off as complete.
pub fn file_range(mut file: tokio::fs::File, start: u64, count: u64) -> Body {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let (sender, body) = channel(4, Some(count));
    tokio::spawn(async move {
        if let Err(error) = file.seek(std::io::SeekFrom::Start(start)).await {
            let _ = sender.send(Err(error.into())).await;
            return;
        }
        let mut left = count;
        while left > 0 {
            let mut buffer = vec![0u8; left.min(FILE_CHUNK as u64) as usize];
            match file.read(&mut buffer).await {
                Ok(0) => {
                    let _ = sender.send(Err("file shorter than expected".into())).await;
                    return;
                }
                Ok(read) => {
                    buffer.truncate(read);
                    left -= read as u64;
                    if sender.send(Ok(Bytes::from(buffer))).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = sender.send(Err(error.into())).await;
                    return;
                }
            }
        }
    });
    body
}

/// The error of a body whose sender went silent mid-body for longer than allowed ([`with_idle_timeout`],
/// and the edge's origin client): a timeout, which a gateway answers with 504 rather than 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyStalled {
    /// How long the body was silent.
    pub idle: std::time::Duration,
}

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream sent nothing for {} ms mid-body", self.idle.as_millis())
    }
}

impl std::error::Error for BodyStalled {}

impl BodyStalled {
    /// Whether `error` (or one of its causes) is a stall.
    pub fn is_cause_of(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if error.is::<BodyStalled>() {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

/// The error of a body whose sender closed the connection before the length it announced (the edge's
/// origin client): a short body, told apart from a reset or bad framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyEndedEarly;

impl std::fmt::Display for BodyEndedEarly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the sender closed the connection before the body's end")
    }
}

impl std::error::Error for BodyEndedEarly {}

/// Fails a body that produces no frame for `idle`: an upstream that stalls mid-body must not hold a
/// client (or a cache fill) forever.
pub fn with_idle_timeout(body: Body, idle: std::time::Duration) -> Body {
    IdleTimeout {
        inner: body,
        idle,
        sleep: Box::pin(tokio::time::sleep(idle)),
    }
    .boxed()
}

/// Calls `on_data` with the length of each data frame of `body` as it passes (for byte counters, e.g. the
/// bytes a cache community's peers served).
pub fn with_data_counter(body: Body, on_data: impl Fn(usize) + Send + Sync + 'static) -> Body {
    DataCounter {
        inner: body,
        on_data: Box::new(on_data),
    }
    .boxed()
}

struct DataCounter {
    inner: Body,
    on_data: Box<dyn Fn(usize) + Send + Sync>,
}

impl http_body::Body for DataCounter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            (self.on_data)(data.len());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

struct IdleTimeout {
    inner: Body,
    idle: std::time::Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for IdleTimeout {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + self.idle;
                self.sleep.as_mut().reset(deadline);
                Poll::Ready(frame)
            }
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled { idle: self.idle }.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Fails `body` with the reason `abort` resolves to, as soon as it resolves while the body is still
/// being read (a peer the community dropped mid-body: no more bytes will come, whatever the idle
/// timeout says). The frames before it pass as they come.
pub fn with_abort(body: Body, abort: impl Future<Output = String> + Send + Sync + 'static) -> Body {
    Abortable {
        inner: body,
        abort: Some(Box::pin(abort)),
    }
    .boxed()
}

struct Abortable {
    inner: Body,
    abort: Option<Pin<Box<dyn Future<Output = String> + Send + Sync>>>,
}

impl http_body::Body for Abortable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if frame.is_none() {
                self.abort = None; // the body is whole: nothing left to abort
            }
            return Poll::Ready(frame);
        }
        if let Some(abort) = self.abort.as_mut()
            && let Poll::Ready(reason) = abort.as_mut().poll(cx)
        {
            self.abort = None;
            return Poll::Ready(Some(Err(reason.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The bytes `start..start + len` of a body (for a range served from a stream).
pub fn slice(body: Body, start: u64, len: u64) -> Body {
    Slice {
        inner: body,
        skip: start,
        left: len,
    }
    .boxed()
}

struct Slice {
    inner: Body,
    skip: u64,
    left: u64,
}

impl http_body::Body for Slice {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                other => return other,
            };
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            let chunk_len = data.len() as u64;
            if self.skip >= chunk_len {
                self.skip -= chunk_len;
                continue;
            }
            let skip = self.skip as usize;
            self.skip = 0;
            data = data.slice(skip..);
            if data.len() as u64 > self.left {
                data.truncate(self.left as usize);
            }
            self.left -= data.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_request_body_is_read_whole_within_its_limit_and_deadline() {
        let deadline = std::time::Duration::from_secs(10);
        let whole = Full::new(Bytes::from_static(b"purge"));
        assert_eq!(
            collect_within(whole, 5, deadline).await,
            Ok(Bytes::from_static(b"purge"))
        );
        let over = Full::new(Bytes::from_static(b"purge!"));
        assert_eq!(
            collect_within(over, 5, deadline).await,
            Err(CollectError::TooLarge { limit: 5 })
        );
        // A body that sends its first bytes and then nothing more.
        let (tx, stalled) = channel(1, Some(10));
        tx.send(Ok(Bytes::from_static(b"12345"))).await.expect("send");
        let got = collect_within(stalled, 1 << 20, deadline).await;
        assert_eq!(got, Err(CollectError::Stalled { deadline }));
        assert_eq!(got.expect_err("stalled").status(), http::StatusCode::REQUEST_TIMEOUT);
        drop(tx);
    }

    #[tokio::test]
    async fn an_aborted_body_fails_with_the_reason_once_its_frames_stop_and_a_whole_one_is_untouched() {
        // The sender stalls after one chunk; the abort (a peer dropped from the community) fires then.
        let (tx, body) = channel(2, Some(10));
        tx.send(Ok(Bytes::from_static(b"first"))).await.expect("send");
        let (fire, fired) = tokio::sync::oneshot::channel::<()>();
        let mut body = with_abort(body, async move {
            let _ = fired.await;
            "peer left mid-body".to_string()
        });
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), Bytes::from_static(b"first"));
        fire.send(()).expect("fire");
        let cut = body.frame().await.expect("an error").expect_err("cut");
        assert_eq!(cut.to_string(), "peer left mid-body");
        drop(tx);

        let whole = with_abort(full(Bytes::from_static(b"all of it")), std::future::pending());
        assert_eq!(&whole.collect().await.expect("whole").to_bytes()[..], b"all of it");
    }

    #[tokio::test]
    async fn channel_body_streams_chunks_in_order() {
        let (tx, body) = channel(2, Some(6));
        tokio::spawn(async move {
            tx.send(Ok(Bytes::from_static(b"abc"))).await.ok();
            tx.send(Ok(Bytes::from_static(b"def"))).await.ok();
        });
        let collected = body.collect().await.expect("body").to_bytes();
        assert_eq!(&collected[..], b"abcdef");
    }

    #[tokio::test]
    async fn channel_body_error_aborts() {
        let (tx, body) = channel(2, None);
        tx.send(Ok(Bytes::from_static(b"abc"))).await.ok();
        tx.send(Err("origin closed mid-body".into())).await.ok();
        drop(tx);
        assert!(body.collect().await.is_err());
    }

    #[tokio::test]
    async fn slice_crosses_chunks() {
        let (tx, body) = channel(4, None);
        for part in ["abc", "def", "ghi"] {
            tx.send(Ok(Bytes::from(part))).await.ok();
        }
        drop(tx);
        let sliced = slice(body, 2, 5).collect().await.expect("body").to_bytes();
        assert_eq!(&sliced[..], b"cdefg");
    }

    #[tokio::test]
    async fn the_data_counter_sees_every_data_byte() {
        let counted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sink = counted.clone();
        let (tx, body) = channel(4, None);
        tx.send(Ok(Bytes::from_static(b"abc"))).await.ok();
        tx.send(Ok(Bytes::from_static(b"defgh"))).await.ok();
        drop(tx);
        let body = with_data_counter(body, move |len| {
            sink.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        });
        let collected = body.collect().await.expect("body").to_bytes();
        assert_eq!(&collected[..], b"abcdefgh");
        assert_eq!(counted.load(std::sync::atomic::Ordering::Relaxed), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fails_a_stalled_body() {
        let (tx, body) = channel(4, None);
        tx.send(Ok(Bytes::from_static(b"abc"))).await.ok();
        let guarded = with_idle_timeout(body, std::time::Duration::from_secs(5));
        let result = guarded.collect().await;
        assert!(result.is_err());
        drop(tx);
    }
}
