//! Read-while-write: requests that join a fill whose body is streamed (larger than the edge reads whole
//! before answering, or of unknown length) are served from its bytes as they arrive, rather than waiting
//! for the whole body to be stored. Without it a request that joined a 1 GB miss got its first byte only
//! when the last one had reached the edge, however fast the origin began (as with nginx's
//! `proxy_cache_lock`); with it every joined request follows the leader's transfer, and the origin still
//! sees one request (Varnish and Traffic Server stream to waiters the same way).
//!
//! The leader's copying task pushes each chunk into a [`SharedBody`] as it passes it to its own client.
//! Memory is bounded by a window (the edge's `max_memory_object`):
//!
//! - while no more than the window has arrived, every chunk is kept, and a request may still join from the
//!   first byte ([`SharedBody::attach`]);
//! - past it, no request joins any more (it waits for the stored object, or goes upstream itself after
//!   `coalesce_wait_ms`), and chunks every attached reader has read are dropped;
//! - a reader that falls more than the window behind the upstream is cut with an error rather than making
//!   the edge hold the body for it (its client reads far slower than the origin sends).
//!
//! A body that fails upstream (short, stalled, broken) ends every reader with the same error, so no client
//! takes a cut body for a whole one. The core is synchronous and takes no clock; [`Reader::next`] waits
//! on a `watch` channel the writer bumps.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

/// A streamed fill as the requests that join it see it: the response head as it is stored, and its body
/// as it arrives.
#[derive(Debug)]
pub struct StreamedResponse {
    /// The request-header values the response was selected with (`Vary`): a joining request that differs
    /// is not served this response.
    pub vary: tern_http_cache::VaryValues,
    /// Status code from upstream.
    pub status: http::StatusCode,
    /// The fields that are stored (and served on hits).
    pub headers: http::HeaderMap,
    /// The body's length, when the head gave it.
    pub length: Option<u64>,
    /// The stored response's freshness (for `Age` and the `Cache-Status` TTL).
    pub freshness: tern_http_cache::Freshness,
    /// The protocol version the response was received with (for `Via`).
    pub received: http::Version,
    /// The body.
    pub body: Arc<SharedBody>,
}

/// How a shared body ended for its readers: whole, or cut with the reason each reader's client is given.
pub type Ending = Result<(), Arc<str>>;

/// The bytes of one streamed fill, shared by the requests that joined it.
#[derive(Debug)]
pub struct SharedBody {
    state: Mutex<State>,
    /// Bumped on every chunk and at the end: readers wait on it.
    progress: watch::Sender<u64>,
    /// Bytes kept for readers (see the module's comment).
    window: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Kept chunks; `chunks[0]` is chunk number `first`.
    chunks: VecDeque<Bytes>,
    first: u64,
    /// Chunks and bytes pushed so far.
    pushed: u64,
    pushed_bytes: u64,
    /// Bytes held in `chunks`.
    kept_bytes: u64,
    /// Whether every chunk from the first is still kept (a new reader may start).
    open: bool,
    ended: Option<Ending>,
    /// Attached readers: the next chunk number each reads and the bytes it has read.
    readers: HashMap<u64, Cursor>,
    next_reader: u64,
}

#[derive(Debug, Clone, Copy)]
struct Cursor {
    next: u64,
    read_bytes: u64,
    /// Fell more than the window behind and was cut.
    cut: bool,
}

impl SharedBody {
    /// A body that keeps up to `window` bytes for readers.
    pub fn new(window: u64) -> Arc<SharedBody> {
        Arc::new(SharedBody {
            state: Mutex::new(State {
                open: true,
                ..State::default()
            }),
            progress: watch::channel(0).0,
            window,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a reader at the first byte; `None` once more than the window has arrived (the first bytes are
    /// gone) or the body ended in failure.
    pub fn attach(self: &Arc<Self>) -> Option<Reader> {
        let mut state = self.lock();
        if !state.open || matches!(state.ended, Some(Err(_))) {
            return None;
        }
        let id = state.next_reader;
        state.next_reader += 1;
        state.readers.insert(
            id,
            Cursor {
                next: 0,
                read_bytes: 0,
                cut: false,
            },
        );
        drop(state);
        Some(Reader {
            body: self.clone(),
            id,
            progress: self.progress.subscribe(),
        })
    }

    /// Whether any reader is attached (the upstream transfer goes on for them when the leader's own client
    /// has left).
    pub fn has_readers(&self) -> bool {
        self.lock().readers.values().any(|cursor| !cursor.cut)
    }

    /// Bytes held for readers now.
    pub fn kept_bytes(&self) -> u64 {
        self.lock().kept_bytes
    }

    /// Appends the next chunk of the body; returns how many readers were cut for falling more than the
    /// window behind.
    pub fn push(&self, chunk: Bytes) -> usize {
        let mut state = self.lock();
        if state.ended.is_some() {
            return 0;
        }
        state.pushed += 1;
        state.pushed_bytes += chunk.len() as u64;
        state.kept_bytes += chunk.len() as u64;
        state.chunks.push_back(chunk);
        if state.pushed_bytes > self.window {
            state.open = false;
        }
        let mut cut = 0;
        if !state.open {
            let (pushed_bytes, window) = (state.pushed_bytes, self.window);
            for cursor in state.readers.values_mut() {
                if !cursor.cut && pushed_bytes - cursor.read_bytes > window {
                    cursor.cut = true;
                    cut += 1;
                }
            }
            state.drop_read_chunks();
        }
        drop(state);
        self.progress.send_modify(|n| *n += 1);
        cut
    }

    /// Ends the body; the first ending counts (a later one, such as the writer's drop, is ignored).
    pub fn end(&self, ending: Ending) {
        let mut state = self.lock();
        if state.ended.is_some() {
            return;
        }
        if ending.is_err() {
            // Nothing more is read; the readers learn the reason at their next read.
            state.chunks.clear();
            state.kept_bytes = 0;
        }
        state.ended = Some(ending);
        drop(state);
        self.progress.send_modify(|n| *n += 1);
    }

    fn detach(&self, id: u64) {
        let mut state = self.lock();
        state.readers.remove(&id);
        if !state.open {
            state.drop_read_chunks();
        }
    }
}

impl State {
    /// Drops the chunks every attached reader has read (all of them when none is attached).
    fn drop_read_chunks(&mut self) {
        let oldest = self
            .readers
            .values()
            .filter(|cursor| !cursor.cut)
            .map(|cursor| cursor.next)
            .min()
            .unwrap_or(self.pushed);
        while self.first < oldest {
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            self.kept_bytes -= chunk.len() as u64;
            self.first += 1;
        }
    }
}

/// One request's place in a [`SharedBody`]. Dropping it detaches it (its chunks may then be dropped).
#[derive(Debug)]
pub struct Reader {
    body: Arc<SharedBody>,
    id: u64,
    progress: watch::Receiver<u64>,
}

/// Why a reader stopped before the end of a body that others may still read.
pub const FELL_BEHIND: &str =
    "this client read more slowly than the origin sent, and fell too far behind the shared transfer; cut";

impl Reader {
    /// The next chunk; `None` at the end of a whole body, `Some(Err(reason))` when it was cut (upstream, or
    /// because this reader fell behind).
    pub async fn next(&mut self) -> Option<Result<Bytes, Arc<str>>> {
        loop {
            self.progress.borrow_and_update();
            if let Some(step) = self.step() {
                return step;
            }
            if self.progress.changed().await.is_err() {
                return Some(Err("the shared transfer stopped".into()));
            }
        }
    }

    /// What can be read now without waiting; `None` when nothing can.
    fn step(&mut self) -> Option<Option<Result<Bytes, Arc<str>>>> {
        let mut state = self.body.lock();
        let cursor = *state.readers.get(&self.id)?;
        if cursor.cut {
            return Some(Some(Err(FELL_BEHIND.into())));
        }
        if let Some(Err(reason)) = &state.ended {
            return Some(Some(Err(reason.clone())));
        }
        if cursor.next < state.pushed {
            // Kept: a reader's chunks are dropped only once it has read them, or when it is cut.
            let chunk = state.chunks.get((cursor.next - state.first) as usize)?.clone();
            if let Some(cursor) = state.readers.get_mut(&self.id) {
                cursor.next += 1;
                cursor.read_bytes += chunk.len() as u64;
            }
            if !state.open {
                state.drop_read_chunks();
            }
            return Some(Some(Ok(chunk)));
        }
        match &state.ended {
            Some(Ok(())) => Some(None),
            _ => None,
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.body.detach(self.id);
    }
}

/// The writer's handle: ends the body with an error if the writer stops without saying how it ended (its
/// task was cancelled or panicked), so no reader waits for ever.
#[derive(Debug)]
pub struct Writer(pub Arc<SharedBody>);

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.end(Err("the shared transfer stopped".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(byte: u8, len: usize) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    /// Reads what is there now, without waiting.
    fn ready(reader: &mut Reader) -> Vec<Result<Bytes, Arc<str>>> {
        let mut out = Vec::new();
        while let Some(Some(item)) = reader.step() {
            let stop = item.is_err();
            out.push(item);
            if stop {
                break;
            }
        }
        out
    }

    #[tokio::test]
    async fn a_reader_gets_every_chunk_in_order_and_the_end() {
        let body = SharedBody::new(1000);
        body.push(chunk(b'a', 10));
        let mut reader = body.attach().expect("open");
        let writer = {
            let body = body.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                body.push(chunk(b'b', 10));
                body.end(Ok(()));
            })
        };
        let mut got = Vec::new();
        while let Some(item) = reader.next().await {
            got.extend_from_slice(&item.expect("whole"));
        }
        writer.await.expect("join");
        assert_eq!(got, [vec![b'a'; 10], vec![b'b'; 10]].concat());
    }

    #[test]
    fn no_reader_joins_once_the_first_bytes_are_past_the_window() {
        let body = SharedBody::new(100);
        body.push(chunk(b'a', 60));
        assert!(
            body.attach().is_some(),
            "within the window a reader starts at the first byte"
        );
        body.push(chunk(b'b', 60));
        assert!(body.attach().is_none(), "past it the first bytes may be gone");
    }

    #[test]
    fn chunks_every_reader_has_read_are_dropped_past_the_window() {
        let body = SharedBody::new(100);
        let mut fast = body.attach().expect("open");
        for _ in 0..10 {
            body.push(chunk(b'x', 50));
            assert_eq!(ready(&mut fast).len(), 1);
        }
        assert!(body.kept_bytes() <= 100, "kept {} bytes", body.kept_bytes());
        drop(fast);
        body.push(chunk(b'x', 50));
        assert_eq!(body.kept_bytes(), 0, "nobody reads: nothing is kept");
    }

    #[test]
    fn a_reader_that_falls_a_window_behind_is_cut_and_the_others_go_on() {
        let body = SharedBody::new(100);
        let mut slow = body.attach().expect("open");
        let mut fast = body.attach().expect("open");
        let mut cut = 0;
        for _ in 0..5 {
            cut += body.push(chunk(b'x', 50));
            assert_eq!(ready(&mut fast).len(), 1);
        }
        assert_eq!(cut, 1, "the slow reader is cut once");
        let slow_got = ready(&mut slow);
        assert_eq!(slow_got.len(), 1);
        assert_eq!(slow_got[0].as_ref().expect_err("cut").as_ref(), FELL_BEHIND);
        assert!(body.kept_bytes() <= 100, "the slow reader's backlog is let go");
        body.push(chunk(b'y', 50));
        assert_eq!(ready(&mut fast).len(), 1, "the fast reader goes on");
        assert!(body.has_readers());
        drop(fast);
        assert!(!body.has_readers(), "a cut reader does not keep the transfer going");
    }

    #[test]
    fn a_failed_body_ends_every_reader_with_its_reason() {
        let body = SharedBody::new(1000);
        let mut reader = body.attach().expect("open");
        body.push(chunk(b'a', 10));
        body.end(Err("the origin's body ended after 10 of 20 bytes".into()));
        let got = ready(&mut reader);
        assert_eq!(got.len(), 1, "no byte of a failed body is handed on after the failure");
        assert!(got[0].as_ref().expect_err("cut").contains("10 of 20"));
        assert!(body.attach().is_none(), "nobody joins a failed body");
    }

    #[tokio::test]
    async fn a_writer_that_stops_without_an_ending_cuts_its_readers() {
        let body = SharedBody::new(1000);
        let mut reader = body.attach().expect("open");
        let writer = Writer(body.clone());
        body.push(chunk(b'a', 10));
        drop(writer);
        assert!(reader.next().await.expect("chunk").is_err(), "the partial body is cut");
    }

    #[test]
    fn a_whole_ending_is_not_overwritten_by_the_writers_drop() {
        let body = SharedBody::new(1000);
        let mut reader = body.attach().expect("open");
        let writer = Writer(body.clone());
        body.push(chunk(b'a', 10));
        body.end(Ok(()));
        drop(writer);
        let got = ready(&mut reader);
        assert_eq!(got.len(), 1);
        assert!(got[0].is_ok());
        assert!(matches!(reader.step(), Some(None)), "then the end");
    }
}
