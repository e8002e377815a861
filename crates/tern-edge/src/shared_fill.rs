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
//! - with a disk tier, every chunk is in the cache's file being written (the fill's temp file) before it is
//!   pushed here: a request may join at any time and reads what it missed, or fell behind on, from the
//!   file at its own pace, and memory holds at most about a window of the latest bytes;
//! - without one (or once writing the file failed), the first window of bytes is kept so that requests may
//!   join from the first byte; past it no request joins any more (the object is then past what the memory
//!   tier stores: a request that comes later leads a new fetch, which later requests join), chunks every reader has read are let
//!   go, and a reader more than a window behind is cut with an error rather than making the edge hold the
//!   body for it.
//!
//! A body that fails upstream (short, stalled, broken) ends every reader with the same error, so no client
//! takes a cut body for a whole one. The state is synchronous and takes no clock; [`Reader::next`] waits
//! on a `watch` channel the writer bumps, and reads the file on the blocking pool.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{Notify, watch};

/// Most bytes one read from the file hands on.
const FILE_READ: u64 = 256 * 1024;

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

/// The file the body is also written to, from which readers that fell behind read.
#[derive(Debug)]
struct Spill {
    file: Arc<File>,
    /// Offset of the body's first byte in the file.
    offset: u64,
}

/// The bytes of one streamed fill, shared by the requests that joined it.
#[derive(Debug)]
pub struct SharedBody {
    state: Mutex<State>,
    /// Bumped on every chunk and at the end: readers wait on it.
    progress: watch::Sender<u64>,
    /// Notified when a reader moves on or leaves: the writer waits on it for room
    /// ([`SharedBody::room`]).
    moved: Notify,
    /// Bytes kept in memory for readers (see the module's comment).
    window: u64,
    spill: Option<Spill>,
}

#[derive(Debug, Default)]
struct State {
    /// Kept chunks; `chunks[0]` starts at byte `first`.
    chunks: VecDeque<Bytes>,
    first: u64,
    /// Bytes pushed so far.
    pushed: u64,
    /// Bytes held in `chunks`.
    kept: u64,
    /// Bytes `[0, on_disk)` can be read from the file.
    on_disk: u64,
    ended: Option<Ending>,
    /// Attached readers by id.
    readers: HashMap<u64, Cursor>,
    next_reader: u64,
}

#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The next byte it reads.
    at: u64,
    /// Fell more than the window behind with no file to read from, and was cut.
    cut: bool,
}

/// What a reader can do now.
enum Step {
    Chunk(Bytes),
    /// Read `[at, at + len)` from the file.
    FromFile {
        at: u64,
        len: u64,
    },
    End,
    Failed(Arc<str>),
    Wait,
}

impl SharedBody {
    /// A body that keeps up to `window` bytes in memory for readers; `spill` is the file the body is also
    /// written to and the offset of its first byte there ([`tern_http_cache::Fill::open_written`]).
    pub fn new(window: u64, spill: Option<(File, u64)>) -> Arc<SharedBody> {
        Arc::new(SharedBody {
            state: Mutex::new(State::default()),
            progress: watch::channel(0).0,
            moved: Notify::new(),
            window,
            spill: spill.map(|(file, offset)| Spill {
                file: Arc::new(file),
                offset,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a reader at the first byte; `None` once some of the first bytes are neither in memory nor in
    /// the file, or the body ended in failure.
    pub fn attach(self: &Arc<Self>) -> Option<Reader> {
        let mut state = self.lock();
        let whole = state.first == 0 || state.first <= state.on_disk;
        if !whole || matches!(state.ended, Some(Err(_))) {
            return None;
        }
        let id = state.next_reader;
        state.next_reader += 1;
        state.readers.insert(id, Cursor { at: 0, cut: false });
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

    /// Bytes held in memory for readers now.
    pub fn kept_bytes(&self) -> u64 {
        self.lock().kept
    }

    /// Waits until the next chunk may be pushed without leaving every reader behind: at once when the
    /// file holds every byte pushed (a reader that falls behind reads it from there), when no reader is
    /// attached, or once the body ended; otherwise until the fastest reader is less than a window behind.
    /// So without a file the transfer goes at the pace of its fastest client (one client alone holds it
    /// back as a plain proxy would, rather than being cut), and a slower one is cut once it is a window
    /// behind; with one, nobody holds the transfer back.
    pub async fn room(&self) {
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            {
                let state = self.lock();
                let roomy = match state.positions().max() {
                    None => true,
                    Some(at) => {
                        state.ended.is_some()
                            || (self.spill.is_some() && state.on_disk >= state.pushed)
                            || state.pushed.saturating_sub(at) < self.window
                    }
                };
                if roomy {
                    return;
                }
            }
            moved.await;
        }
    }

    /// Appends the next chunk of the body. `on_disk`: every byte pushed so far, this chunk included, is in
    /// the file (the fill still writes to it). Returns how many readers were cut for falling more than the
    /// window behind with no file to read from.
    pub fn push(&self, chunk: Bytes, on_disk: bool) -> usize {
        let mut state = self.lock();
        if state.ended.is_some() {
            return 0;
        }
        state.pushed += chunk.len() as u64;
        state.kept += chunk.len() as u64;
        state.chunks.push_back(chunk);
        if on_disk && self.spill.is_some() {
            state.on_disk = state.pushed;
        }
        let cut = state.trim(self.window);
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
            state.kept = 0;
        }
        state.ended = Some(ending);
        drop(state);
        self.progress.send_modify(|n| *n += 1);
    }

    fn detach(&self, id: u64) {
        let mut state = self.lock();
        state.readers.remove(&id);
        state.trim(self.window);
        drop(state);
        self.moved.notify_waiters();
    }
}

impl State {
    /// Where the readers that were not cut are: the next byte each reads.
    fn positions(&self) -> impl Iterator<Item = u64> + '_ {
        self.readers
            .values()
            .filter(|cursor| !cursor.cut)
            .map(|cursor| cursor.at)
    }

    /// Lets go of the bytes no reader needs from memory: beyond a window, those the file holds; and those
    /// every reader has read, unless they are the first window's, kept for requests that may still join
    /// and not in the file. A reader that the rest would strand (more than a window behind, with no file
    /// for what it has not read, and a faster reader to go on for) is cut; the fastest never is (the
    /// writer waits for it: [`SharedBody::room`]). Returns how many were cut.
    fn trim(&mut self, window: u64) -> usize {
        let mut cut = 0;
        let (pushed, on_disk) = (self.pushed, self.on_disk);
        let fastest = self.positions().max().unwrap_or(pushed);
        for cursor in self.readers.values_mut() {
            if !cursor.cut && cursor.at >= on_disk && cursor.at < pushed.saturating_sub(window) && cursor.at < fastest {
                // More than a window behind the head, behind another reader, and the file does not hold
                // its next bytes.
                cursor.cut = true;
                cut += 1;
            }
        }
        let slowest = self.positions().min().unwrap_or(pushed);
        while let Some(front) = self.chunks.front() {
            let end = self.first + front.len() as u64;
            let read_by_all = end <= slowest && (end <= on_disk || pushed > window);
            let in_file_and_over_window = end <= on_disk && self.kept > window;
            if !(read_by_all || in_file_and_over_window) {
                break;
            }
            self.kept -= front.len() as u64;
            self.first = end;
            self.chunks.pop_front();
        }
        cut
    }

    /// What reader `id` can do now.
    fn step(&mut self, id: u64) -> Step {
        let Some(cursor) = self.readers.get(&id).copied() else {
            return Step::Failed("the shared transfer stopped".into());
        };
        if cursor.cut {
            return Step::Failed(FELL_BEHIND.into());
        }
        if let Some(Err(reason)) = &self.ended {
            return Step::Failed(reason.clone());
        }
        if cursor.at < self.first {
            // Let go of from memory: it is in the file (a chunk leaves memory before a reader read it only
            // when it is).
            let len = self.first.min(self.on_disk).saturating_sub(cursor.at).min(FILE_READ);
            if len == 0 {
                return Step::Failed(FELL_BEHIND.into());
            }
            return Step::FromFile { at: cursor.at, len };
        }
        if cursor.at < self.pushed {
            let mut start = self.first;
            for chunk in &self.chunks {
                let end = start + chunk.len() as u64;
                if cursor.at < end {
                    let piece = chunk.slice((cursor.at - start) as usize..);
                    self.advance(id, end);
                    return Step::Chunk(piece);
                }
                start = end;
            }
        }
        match &self.ended {
            Some(Ok(())) if cursor.at >= self.pushed => Step::End,
            _ => Step::Wait,
        }
    }

    fn advance(&mut self, id: u64, to: u64) {
        if let Some(cursor) = self.readers.get_mut(&id) {
            cursor.at = to;
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
    /// because this reader fell behind with no file to read from).
    pub async fn next(&mut self) -> Option<Result<Bytes, Arc<str>>> {
        loop {
            self.progress.borrow_and_update();
            let step = {
                let mut state = self.body.lock();
                let step = state.step(self.id);
                if matches!(step, Step::Chunk(_)) {
                    state.trim(self.body.window);
                }
                step
            };
            match step {
                Step::Chunk(chunk) => {
                    self.body.moved.notify_waiters();
                    return Some(Ok(chunk));
                }
                Step::FromFile { at, len } => return Some(self.read_file(at, len).await),
                Step::End => return None,
                Step::Failed(reason) => return Some(Err(reason)),
                Step::Wait => {
                    if self.progress.changed().await.is_err() {
                        return Some(Err("the shared transfer stopped".into()));
                    }
                }
            }
        }
    }

    /// Reads `[at, at + len)` of the body from the file and moves past it.
    async fn read_file(&mut self, at: u64, len: u64) -> Result<Bytes, Arc<str>> {
        let Some(spill) = &self.body.spill else {
            return Err(FELL_BEHIND.into());
        };
        let (file, offset) = (spill.file.clone(), spill.offset);
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, offset + at).map(|()| buf)
        })
        .await;
        match read {
            Ok(Ok(buf)) => {
                self.body.lock().advance(self.id, at + len);
                self.body.moved.notify_waiters();
                Ok(Bytes::from(buf))
            }
            Ok(Err(error)) => Err(format!("reading the body from the cache's file failed: {error}; cut").into()),
            Err(error) => Err(format!("reading the body from the cache's file failed: {error}; cut").into()),
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
    use std::io::Write;

    fn chunk(byte: u8, len: usize) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    /// Reads what is in memory now, without waiting (and without reading the file).
    fn ready(reader: &mut Reader) -> Vec<Result<Bytes, Arc<str>>> {
        let mut out = Vec::new();
        loop {
            let step = reader.body.lock().step(reader.id);
            match step {
                Step::Chunk(chunk) => out.push(Ok(chunk)),
                Step::Failed(reason) => {
                    out.push(Err(reason));
                    break;
                }
                Step::FromFile { .. } | Step::End | Step::Wait => break,
            }
        }
        out
    }

    /// Reads to the end.
    async fn read_all(reader: &mut Reader) -> Result<Vec<u8>, Arc<str>> {
        let mut got = Vec::new();
        while let Some(item) = reader.next().await {
            got.extend_from_slice(&item?);
        }
        Ok(got)
    }

    /// Whether [`SharedBody::room`] returns within a short while.
    async fn roomy(body: &SharedBody) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(50), body.room())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn without_a_file_the_writer_goes_at_the_pace_of_the_fastest_reader_and_the_slower_are_cut() {
        let body = SharedBody::new(100, None);
        assert!(roomy(&body).await, "no reader: nothing to wait for");
        let mut slow = body.attach().expect("open");
        body.push(chunk(b'a', 60), false);
        body.push(chunk(b'b', 60), false);
        assert!(
            !roomy(&body).await,
            "a window ahead of its only reader: the writer waits for it"
        );
        assert!(
            matches!(slow.body.lock().readers.get(&slow.id), Some(cursor) if !cursor.cut),
            "the only reader is never cut for being slow"
        );
        let mut fast = body.attach().expect("the first bytes are still kept");
        let waiting = tokio::spawn({
            let body = body.clone();
            async move { body.room().await }
        });
        assert_eq!(fast.next().await.expect("a").expect("a"), chunk(b'a', 60));
        assert_eq!(fast.next().await.expect("b").expect("b"), chunk(b'b', 60));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("a faster reader makes room")
            .expect("task");
        body.push(chunk(b'c', 60), false);
        assert_eq!(
            slow.next().await.expect("an answer").expect_err("cut"),
            FELL_BEHIND.into(),
            "more than a window behind a faster reader"
        );
        assert_eq!(fast.next().await.expect("c").expect("c"), chunk(b'c', 60));
        drop(fast);
        assert!(roomy(&body).await, "every reader left: nothing to wait for");
    }

    #[tokio::test]
    async fn with_the_file_the_writer_never_waits_for_a_reader() {
        let mut file = tempfile::tempfile().expect("temp file");
        let body = SharedBody::new(100, Some((file.try_clone().expect("clone"), 0)));
        let _idle = body.attach().expect("open");
        for byte in 0..5u8 {
            file.write_all(&[byte; 60]).expect("write");
            body.push(chunk(byte, 60), true);
            assert!(roomy(&body).await, "the file holds what the reader has not read");
        }
    }

    #[tokio::test]
    async fn a_reader_gets_every_chunk_in_order_and_the_end() {
        let body = SharedBody::new(1000, None);
        body.push(chunk(b'a', 10), false);
        let mut reader = body.attach().expect("open");
        let writer = {
            let body = body.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                body.push(chunk(b'b', 10), false);
                body.end(Ok(()));
            })
        };
        let got = read_all(&mut reader).await.expect("whole");
        writer.await.expect("join");
        assert_eq!(got, [vec![b'a'; 10], vec![b'b'; 10]].concat());
    }

    #[test]
    fn without_a_file_no_reader_joins_once_the_first_bytes_are_past_the_window() {
        let body = SharedBody::new(100, None);
        body.push(chunk(b'a', 60), false);
        assert!(
            body.attach().is_some(),
            "within the window a reader starts at the first byte"
        );
        body.push(chunk(b'b', 60), false);
        assert!(body.attach().is_none(), "past it the first bytes may be gone");
    }

    #[test]
    fn chunks_every_reader_has_read_are_dropped_past_the_window() {
        let body = SharedBody::new(100, None);
        let mut fast = body.attach().expect("open");
        for _ in 0..10 {
            body.push(chunk(b'x', 50), false);
            assert_eq!(ready(&mut fast).len(), 1);
        }
        assert!(body.kept_bytes() <= 100, "kept {} bytes", body.kept_bytes());
        drop(fast);
        body.push(chunk(b'x', 50), false);
        assert_eq!(body.kept_bytes(), 0, "nobody reads: nothing is kept");
    }

    #[test]
    fn without_a_file_a_reader_that_falls_a_window_behind_is_cut_and_the_others_go_on() {
        let body = SharedBody::new(100, None);
        let mut slow = body.attach().expect("open");
        let mut fast = body.attach().expect("open");
        let mut cut = 0;
        for _ in 0..5 {
            cut += body.push(chunk(b'x', 50), false);
            assert_eq!(ready(&mut fast).len(), 1);
        }
        assert_eq!(cut, 1, "the slow reader is cut once");
        let slow_got = ready(&mut slow);
        assert_eq!(slow_got.len(), 1);
        assert_eq!(slow_got[0].as_ref().expect_err("cut").as_ref(), FELL_BEHIND);
        assert!(body.kept_bytes() <= 100, "the slow reader's backlog is let go");
        body.push(chunk(b'y', 50), false);
        assert_eq!(ready(&mut fast).len(), 1, "the fast reader goes on");
        assert!(body.has_readers());
        drop(fast);
        assert!(!body.has_readers(), "a cut reader does not keep the transfer going");
    }

    #[tokio::test]
    async fn with_the_file_a_reader_far_behind_reads_it_from_there_and_memory_stays_a_window() {
        // The fill writes every chunk to its file before it is pushed; here the test writes them.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fill");
        let mut file = File::create(&path).expect("create");
        file.write_all(b"HEAD").expect("head");
        let body = SharedBody::new(100, Some((File::open(&path).expect("open"), 4)));
        let mut slow = body.attach().expect("open");
        let mut fast = body.attach().expect("open");
        let mut expected = Vec::new();
        for i in 0..40u8 {
            let piece = chunk(i, 50);
            file.write_all(&piece).expect("write");
            expected.extend_from_slice(&piece);
            assert_eq!(
                body.push(piece, true),
                0,
                "nobody is cut: the file holds what they need"
            );
            assert_eq!(ready(&mut fast).len(), 1);
            assert!(
                body.kept_bytes() <= 150,
                "memory holds about a window: {}",
                body.kept_bytes()
            );
        }
        let mut late = body.attach().expect("with the file, a request may join at any time");
        body.end(Ok(()));
        assert!(
            read_all(&mut late).await.expect("whole") == expected,
            "from the first byte"
        );
        assert_eq!(
            read_all(&mut slow).await.expect("whole"),
            expected,
            "read from the file, then memory"
        );
        assert!(
            read_all(&mut fast).await.expect("whole").is_empty(),
            "the fast reader was at the end"
        );
    }

    #[test]
    fn with_the_file_and_no_reader_memory_holds_only_what_is_not_in_it_yet() {
        let body = SharedBody::new(1 << 20, Some((tempfile::tempfile().expect("file"), 0)));
        for _ in 0..10 {
            body.push(chunk(b'x', 1000), true);
        }
        assert_eq!(body.kept_bytes(), 0);
        body.push(chunk(b'x', 1000), false);
        assert_eq!(
            body.kept_bytes(),
            1000,
            "not in the file: kept for requests that may join"
        );
    }

    #[test]
    fn a_failed_body_ends_every_reader_with_its_reason() {
        let body = SharedBody::new(1000, None);
        let mut reader = body.attach().expect("open");
        body.push(chunk(b'a', 10), false);
        body.end(Err("the origin's body ended after 10 of 20 bytes".into()));
        let got = ready(&mut reader);
        assert_eq!(got.len(), 1, "no byte of a failed body is handed on after the failure");
        assert!(got[0].as_ref().expect_err("cut").contains("10 of 20"));
        assert!(body.attach().is_none(), "nobody joins a failed body");
    }

    #[tokio::test]
    async fn a_writer_that_stops_without_an_ending_cuts_its_readers() {
        let body = SharedBody::new(1000, None);
        let mut reader = body.attach().expect("open");
        let writer = Writer(body.clone());
        body.push(chunk(b'a', 10), false);
        drop(writer);
        assert!(reader.next().await.expect("chunk").is_err(), "the partial body is cut");
    }

    #[tokio::test]
    async fn a_whole_ending_is_not_overwritten_by_the_writers_drop() {
        let body = SharedBody::new(1000, None);
        let mut reader = body.attach().expect("open");
        let writer = Writer(body.clone());
        body.push(chunk(b'a', 10), false);
        body.end(Ok(()));
        drop(writer);
        assert_eq!(read_all(&mut reader).await.expect("whole"), vec![b'a'; 10]);
    }
}
