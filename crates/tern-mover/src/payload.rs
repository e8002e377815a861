//! An encoded assignment as the mover holds it while it delivers it (seed 004: the assignment, up to 4 GB,
//! goes from the CCM to every node). A content assignment lives in a file, never whole in memory: a plan
//! writes it to an unnamed scratch file beside the shadow copy ([`tern_wire::assignment::Builder::finish_to_file`]),
//! a catch-up opens the snapshot kept on disk, and every copy that leaves the mover (the star's requests,
//! the tree root's answers to group leaders) is read from there a chunk at a time. A commit or a removal
//! (a few hundred bytes) stays in memory.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// Bytes read at a time when a file-backed assignment is sent.
pub const CHUNK: usize = 256 << 10;

/// An encoded, signed assignment: cheap to clone (every clone reads the same bytes), and read at any offset
/// by many senders at once (positioned reads; no shared file cursor).
#[derive(Clone, Debug)]
pub struct Payload(Arc<Held>);

#[derive(Debug)]
struct Held {
    bytes: Stored,
    len: u64,
    /// The signed blake3 hash in the trailer (hex), when the bytes are an assignment.
    hash: Option<String>,
    /// A file's chunks read lately, as (offset, bytes), oldest first: the star's senders go through the
    /// same chunks at about the same time, so one read from the file serves every node near it (a publish
    /// to N nodes read the file N times, each read into a zeroed buffer). At most [`RECENT_CHUNKS`].
    recent: std::sync::Mutex<std::collections::VecDeque<(u64, Bytes)>>,
    /// Reads from the file so far.
    file_reads: std::sync::atomic::AtomicU64,
}

/// A file's chunks kept for senders close behind the first ([`CHUNK`] each: 8 MiB).
const RECENT_CHUNKS: usize = 32;

#[derive(Debug)]
enum Stored {
    Memory(Bytes),
    /// The first `len` bytes of an open file (an unnamed scratch file, or a snapshot: one that is deleted
    /// while it is sent stays readable through the open descriptor).
    File(std::fs::File),
}

impl Payload {
    /// An assignment held in memory (a commit, a removal, a rollback's check).
    pub fn memory(bytes: impl Into<Bytes>) -> Payload {
        let bytes: Bytes = bytes.into();
        Payload(Arc::new(Held {
            len: bytes.len() as u64,
            hash: tern_wire::assignment::trailer_hash(&bytes),
            bytes: Stored::Memory(bytes),
            recent: Default::default(),
            file_reads: Default::default(),
        }))
    }

    /// The first `len` bytes of `file`, an assignment whose signed hash is `hash` (hex), as
    /// [`tern_wire::assignment::Encoded`] or [`tern_wire::assignment::Checked`] gave them.
    pub fn file(file: std::fs::File, len: u64, hash: String) -> Payload {
        Payload(Arc::new(Held {
            bytes: Stored::File(file),
            len,
            hash: Some(hash),
            recent: Default::default(),
            file_reads: Default::default(),
        }))
    }

    /// Bytes of the assignment.
    pub fn len(&self) -> u64 {
        self.0.len
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// The signed hash (hex) in the trailer: the assignment's identity end to end (`None` for bytes too
    /// short to be an assignment).
    pub fn hash(&self) -> Option<&str> {
        self.0.hash.as_deref()
    }

    /// Up to `count` bytes at `offset` (fewer at the end; none past it). A file is read on a blocking
    /// thread.
    pub async fn read(&self, offset: u64, count: usize) -> std::io::Result<Bytes> {
        let end = offset.saturating_add(count as u64).min(self.0.len);
        match &self.0.bytes {
            Stored::Memory(_) => self.0.read(offset, end),
            Stored::File(_) => {
                let held = self.0.clone();
                tokio::task::spawn_blocking(move || held.read(offset, end))
                    .await
                    .map_err(std::io::Error::other)?
            }
        }
    }

    /// The whole assignment as a request or response body (`Content-Length` known), read a [`CHUNK`] at a
    /// time as the connection takes it. A read error cuts the body, so the receiver sees a short
    /// transfer, never a complete-looking wrong one.
    pub fn body(&self) -> tern_http::Body {
        if let Stored::Memory(bytes) = &self.0.bytes {
            return Full::new(bytes.clone()).map_err(|never| match never {}).boxed();
        }
        let (sender, body) = tern_http::channel(2, Some(self.0.len));
        let payload = self.clone();
        tokio::spawn(async move {
            let mut at = 0u64;
            while at < payload.len() {
                match payload.read(at, CHUNK).await {
                    Ok(chunk) if !chunk.is_empty() => {
                        at += chunk.len() as u64;
                        if sender.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {
                        let _ = sender.send(Err("assignment file shorter than recorded".into())).await;
                        return;
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

    /// Writes the assignment to `path` (created or truncated), and flushes it to disk: a file is copied
    /// in the kernel (`copy_file_range`: nothing passes through this process, and a file system with
    /// reflinks shares the blocks instead of writing them again), else a [`CHUNK`] at a time. Blocking:
    /// call it off the async threads.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::fs::File::create(path)?;
        match &self.0.bytes {
            Stored::Memory(bytes) => out.write_all(bytes)?,
            Stored::File(file) => {
                if !copy_in_kernel(file, self.0.len, &out)? {
                    let mut buffer = vec![0u8; CHUNK];
                    let mut at = 0u64;
                    while at < self.0.len {
                        let count = (self.0.len - at).min(CHUNK as u64) as usize;
                        std::os::unix::fs::FileExt::read_exact_at(file, &mut buffer[..count], at)?;
                        out.write_all(&buffer[..count])?;
                        at += count as u64;
                    }
                }
            }
        }
        out.sync_all()
    }

    /// The whole assignment in memory. Blocking; for small assignments and tests, never a content
    /// assignment on the delivery path.
    pub fn to_vec(&self) -> std::io::Result<Vec<u8>> {
        match &self.0.bytes {
            Stored::Memory(bytes) => Ok(bytes.to_vec()),
            Stored::File(file) => {
                let len = usize::try_from(self.0.len).map_err(std::io::Error::other)?;
                read_exact_at(file, len, 0)
            }
        }
    }
}

impl Held {
    /// Bytes `offset..end` (none when `offset` is not below `end`); a file is read where it is (blocking).
    fn read(&self, offset: u64, end: u64) -> std::io::Result<Bytes> {
        if offset >= end {
            return Ok(Bytes::new());
        }
        match &self.bytes {
            Stored::Memory(bytes) => Ok(bytes.slice(offset as usize..end as usize)),
            Stored::File(file) => {
                let len = (end - offset) as usize;
                let kept = |chunks: &std::collections::VecDeque<(u64, Bytes)>| {
                    chunks
                        .iter()
                        .find(|(at, bytes)| *at == offset && bytes.len() == len)
                        .map(|(_, bytes)| bytes.clone())
                };
                if let Some(bytes) = kept(&self.recent()) {
                    return Ok(bytes);
                }
                // Read without the lock (other senders go on meanwhile); two that miss the same chunk at
                // once both read it, and the first one kept is the one shared.
                let buffer = read_exact_at(file, len, offset)?;
                self.file_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut chunks = self.recent();
                if let Some(bytes) = kept(&chunks) {
                    return Ok(bytes);
                }
                let bytes = Bytes::from(buffer);
                if chunks.len() == RECENT_CHUNKS {
                    chunks.pop_front();
                }
                chunks.push_back((offset, bytes.clone()));
                Ok(bytes)
            }
        }
    }
}

impl Held {
    fn recent(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(u64, Bytes)>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Copies the first `len` bytes of `from` to `to` (at its start, empty) with `copy_file_range`; `false`
/// when the kernel or the file systems cannot (nothing was copied: copy another way).
fn copy_in_kernel(from: &std::fs::File, len: u64, to: &std::fs::File) -> std::io::Result<bool> {
    use rustix::io::Errno;
    let mut at = 0u64;
    while at < len {
        let want = usize::try_from(len - at).unwrap_or(usize::MAX).min(1 << 30);
        match rustix::fs::copy_file_range(from, Some(&mut at), to, None, want) {
            Ok(0) => return Err(std::io::Error::other("assignment file shorter than recorded")),
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP | Errno::PERM) if at == 0 => {
                return Ok(false);
            }
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(true)
}

/// Reads `len` bytes of `file` from `offset` into a new buffer (positioned reads: senders share the file),
/// which is not zeroed first (`pread` into its spare capacity: each chunk of a large assignment would
/// otherwise be written twice).
fn read_exact_at(file: &std::fs::File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut buffer = Vec::with_capacity(len);
    while buffer.len() < len {
        let at = offset.saturating_add(buffer.len() as u64);
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buffer), at) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the assignment file ended early",
                ));
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error.into()),
        }
    }
    // `with_capacity` promises at least `len`: a read into more spare room than asked is cut back.
    buffer.truncate(len);
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(len: usize) -> (Vec<u8>, Payload, Payload) {
        let signing = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let mut builder = tern_wire::assignment::Builder::new(
            "a1",
            tern_wire::assignment::AssignmentKind::Publish,
            "www",
            1,
            None,
            0,
        );
        let content: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        builder.create("f", Some(0o644), &content, false).expect("create");
        let file = tempfile::tempfile().expect("scratch");
        let encoded = builder.finish_to_file(&file, &signing, None).expect("finish");
        let file_payload = Payload::file(file, encoded.len, encoded.hash_hex());
        let bytes = file_payload.to_vec().expect("read");
        let memory = Payload::memory(bytes.clone());
        (bytes, file_payload, memory)
    }

    #[tokio::test]
    async fn a_file_and_the_same_bytes_in_memory_read_and_stream_alike() {
        let (bytes, file, memory) = assignment(3 * CHUNK + 17);
        assert_eq!(file.len(), bytes.len() as u64);
        assert_eq!(file.hash(), memory.hash());
        assert!(file.hash().is_some());
        for payload in [&file, &memory] {
            let read = payload.read(CHUNK as u64 - 3, 10).await.expect("read");
            assert_eq!(&read[..], &bytes[CHUNK - 3..CHUNK + 7]);
            let tail = payload.read(bytes.len() as u64 - 4, 100).await.expect("tail");
            assert_eq!(&tail[..], &bytes[bytes.len() - 4..]);
            assert!(payload.read(bytes.len() as u64 + 1, 10).await.expect("past").is_empty());
            let body = payload.body();
            assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(bytes.len() as u64));
            let streamed = body.collect().await.expect("streams").to_bytes();
            assert!(streamed[..] == bytes[..], "the whole body");
        }
    }

    #[tokio::test]
    async fn many_senders_read_one_file_at_once() {
        let (bytes, file, _) = assignment(2 * CHUNK + 5);
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let body = file.body();
                tokio::spawn(async move { body.collect().await.map(|b| b.to_bytes()) })
            })
            .collect();
        for reader in readers {
            assert!(reader.await.expect("task").expect("streams")[..] == bytes[..]);
        }
    }

    #[tokio::test]
    async fn senders_close_together_share_one_read_of_each_chunk() {
        let (bytes, file, _) = assignment(5 * CHUNK + 9);
        let chunks = bytes.len().div_ceil(CHUNK) as u64;
        for _ in 0..8 {
            assert!(file.body().collect().await.expect("streams").to_bytes()[..] == bytes[..]);
        }
        assert_eq!(file.0.file_reads.load(std::sync::atomic::Ordering::Relaxed), chunks);
        // A sender further behind than the chunks kept reads the file again, and gets the same bytes.
        let (bytes, file, _) = assignment((RECENT_CHUNKS + 3) * CHUNK);
        let first = file.body().collect().await.expect("streams").to_bytes();
        let second = file.body().collect().await.expect("streams").to_bytes();
        assert!(first[..] == bytes[..] && second[..] == bytes[..]);
        let reads = file.0.file_reads.load(std::sync::atomic::Ordering::Relaxed);
        assert!(reads > bytes.len().div_ceil(CHUNK) as u64, "{reads}");
    }

    #[test]
    fn a_file_shorter_than_recorded_is_not_written_as_if_whole() {
        let (bytes, _, _) = assignment(CHUNK + 1);
        let file = tempfile::tempfile().expect("scratch");
        std::io::Write::write_all(&mut &file, &bytes[..bytes.len() - 10]).expect("write");
        let short = Payload::file(file, bytes.len() as u64, "0".repeat(64));
        let dir = tempfile::tempdir().expect("dir");
        let error = short.write_to(&dir.path().join("short")).expect_err("short");
        assert!(error.to_string().contains("shorter"), "{error}");
    }

    #[test]
    fn written_to_a_path_it_is_the_same_assignment() {
        let (bytes, file, memory) = assignment(CHUNK + 1);
        let dir = tempfile::tempdir().expect("dir");
        for (name, payload) in [("file", &file), ("memory", &memory)] {
            let path = dir.path().join(name);
            payload.write_to(&path).expect("write");
            assert!(std::fs::read(&path).expect("read") == bytes);
        }
    }
}
