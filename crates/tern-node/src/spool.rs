//! The node's spool (seed `004_1419c51402506f7e.txt`, global distribution: the group leader *stores* an
//! assignment and *forwards* it): every assignment a node receives — from the mover, from another group
//! leader, or in a `POST /assignments` — is written to a file under the spool directory as it arrives, and
//! checked as it goes ([`tern_wire::assignment::StreamCheck`]: the magic and the size limit at once, the
//! blake3 hash chunk by chunk, the mover's signature at the end). A node never holds a whole assignment in
//! memory: the interpreter reads its commands and data from the file ([`apply`]), and a group leader serves
//! the file to others ([`serve`]) — while it is still arriving, if they ask (cut-through): whoever receives
//! it checks the signed hash end to end, so a copy cut short or damaged anywhere along the tree is refused.
//!
//! A spool [`Entry`] is deleted (with its decrypted twin, if any) when the last holder of it lets go: the
//! leader's flow, and each upload still running.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use http_body_util::BodyExt;
use tern_http::Body;
use tern_wire::assignment::{AssignmentError, Checked, Limits, StreamCheck, open_spooled};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::interpreter::{Applied, Interpreter};

/// Bytes read from the spool at a time when serving it.
const CHUNK: usize = 64 << 10;

/// Chunks queued between the network and the spool file's writer.
const WRITE_QUEUE: usize = 16;

/// How receiving an assignment into the spool ended, once it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Whole, and its signature and hash verified.
    Verified(Checked),
    /// Refused or cut short; why.
    Failed(String),
}

/// How far an entry is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes written to the file so far.
    pub received: u64,
    /// How it ended, once it has.
    pub end: Option<End>,
}

/// An upload of an entry to another node (a group leader serving the next one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// Being sent.
    Serving,
    /// Ended, after this many bytes; `complete` when the whole verified assignment was sent.
    Served {
        /// Bytes sent.
        bytes: u64,
        /// Whether it was all of it.
        complete: bool,
    },
}

/// Why an assignment could not be received into the spool.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// The sender stopped, cut the body off, or went silent.
    #[error("assignment cut off: {0}")]
    CutOff(String),
    /// The bytes are not a good assignment (its reason names which check failed).
    #[error(transparent)]
    Refused(AssignmentError),
    /// The spool file could not be written.
    #[error("spool file: {0}; check the node's disk")]
    Disk(String),
}

/// One assignment in the spool.
#[derive(Debug)]
pub struct Entry {
    /// The transfer id it is held under (or a scratch name).
    transfer: String,
    path: PathBuf,
    /// Bytes it will have, when the sender said.
    expected: Option<u64>,
    progress: watch::Sender<Progress>,
    uploads: watch::Sender<BTreeMap<String, Upload>>,
}

impl Entry {
    /// The transfer id.
    pub fn transfer(&self) -> &str {
        &self.transfer
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where an encrypted assignment is decrypted to.
    fn plain_path(&self) -> PathBuf {
        self.path.with_extension("plain")
    }

    /// Where a data channel member holds the parity frames it received until it rebuilt the lost frames
    /// (`crate::mctp::rebuild`); deleted with the entry.
    pub fn parity_path(&self) -> PathBuf {
        self.path.with_extension("parity")
    }

    /// How far it is now.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Marks receiving as failed (before it began, or from outside: the source could not be reached), so
    /// readers waiting for more are cut off. An entry that ended already keeps its end.
    pub fn fail(&self, reason: &str) {
        self.progress.send_if_modified(|progress| {
            if progress.end.is_some() {
                return false;
            }
            progress.end = Some(End::Failed(reason.to_string()));
            true
        });
    }

    /// Waits until at least one byte arrived or receiving ended; returns the progress then.
    pub async fn started(&self) -> Progress {
        let mut watcher = self.progress.subscribe();
        let outcome = watcher
            .wait_for(|progress| progress.received > 0 || progress.end.is_some())
            .await
            .map(|progress| progress.clone());
        outcome.unwrap_or_else(|_| self.progress())
    }

    /// Waits until the upload to `node` ended, for at most `wait`; `None` when it did not (it never
    /// started, or is still running).
    pub async fn upload_ended(&self, node: &str, wait: Duration) -> Option<Upload> {
        let mut watcher = self.uploads.subscribe();
        let ended = watcher.wait_for(|uploads| matches!(uploads.get(node), Some(Upload::Served { .. })));
        match tokio::time::timeout(wait, ended).await {
            Ok(Ok(uploads)) => uploads.get(node).copied(),
            _ => None,
        }
    }

    /// Uploads of this entry, by the node they are for.
    pub fn uploads(&self) -> BTreeMap<String, Upload> {
        self.uploads.borrow().clone()
    }

    /// Uploads still running.
    pub fn uploads_running(&self) -> usize {
        self.uploads
            .borrow()
            .values()
            .filter(|upload| matches!(upload, Upload::Serving))
            .count()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Unlinking files is a metadata operation; a file already gone (or never made) is fine.
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.plain_path());
        let _ = std::fs::remove_file(self.parity_path());
    }
}

/// The spool directory and the entries held by transfer id.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

static SCRATCH: AtomicU64 = AtomicU64::new(0);

impl Spool {
    /// The spool in `dir`, created if missing; files a previous run left are deleted (nothing in them is
    /// trusted or needed: a transfer that was cut short is sent again).
    pub fn open(dir: &Path) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)?.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new entry held under `transfer` (a valid id, see [`tern_wire::tree::valid_id`]); `None` when one is
    /// held under that id already.
    pub fn create(&self, transfer: &str, expected: Option<u64>) -> Option<Arc<Entry>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.contains_key(transfer) {
            return None;
        }
        let entry = Arc::new(self.entry(transfer, format!("{transfer}.spool"), expected));
        entries.insert(transfer.to_string(), entry.clone());
        Some(entry)
    }

    /// A new entry held by nobody else (an assignment posted to this node), deleted when dropped.
    pub fn scratch(&self, expected: Option<u64>) -> Entry {
        let name = format!(
            ".posted-{}-{}",
            std::process::id(),
            SCRATCH.fetch_add(1, Ordering::Relaxed)
        );
        self.entry(&name, format!("{name}.spool"), expected)
    }

    fn entry(&self, transfer: &str, file: String, expected: Option<u64>) -> Entry {
        Entry {
            transfer: transfer.to_string(),
            path: self.dir.join(file),
            expected,
            progress: watch::Sender::new(Progress::default()),
            uploads: watch::Sender::new(BTreeMap::new()),
        }
    }

    /// The entry held under `transfer`.
    pub fn get(&self, transfer: &str) -> Option<Arc<Entry>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(transfer).cloned()
    }

    /// Stops holding `transfer`: its files go when the uploads still running end.
    pub fn release(&self, transfer: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(transfer);
    }

    /// Transfer ids held.
    pub fn held(&self) -> Vec<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut held: Vec<String> = entries.keys().cloned().collect();
        held.sort();
        held
    }
}

/// Receives `body` into `entry`'s file, checking it on the way (on a blocking thread: writing and hashing
/// stay off the async threads), and at the end its signature with `mover`. A body that sends nothing for
/// `idle`, or `shutdown`, cuts it off. The entry's progress tells readers (cut-through uploads) how far it
/// got and how it ended.
pub async fn fill<B>(
    entry: &Entry,
    mut body: B,
    limits: Limits,
    mover: VerifyingKey,
    idle: Duration,
    shutdown: &CancellationToken,
) -> Result<Checked, FillError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Display,
{
    let (sender, mut receiver) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let path = entry.path.clone();
    let progress = entry.progress.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<Checked, FillError> {
        let disk = |e: std::io::Error| FillError::Disk(e.to_string());
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(disk)?;
        let mut check = StreamCheck::new(&limits);
        while let Some(chunk) = receiver.blocking_recv() {
            check.push(&chunk).map_err(FillError::Refused)?;
            file.write_all(&chunk).map_err(disk)?;
            progress.send_modify(|progress| progress.received += chunk.len() as u64);
        }
        check.finish(&mover).map_err(FillError::Refused)
    });
    let read = loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break Err(FillError::CutOff("the node is stopping".into())),
            frame = tokio::time::timeout(idle, body.frame()) => frame,
        };
        match frame {
            Err(_) => break Err(FillError::CutOff(format!("sender silent for {} ms", idle.as_millis()))),
            Ok(None) => break Ok(()),
            Ok(Some(Err(error))) => break Err(FillError::CutOff(error.to_string())),
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else { continue };
                // A writer that stopped has refused the bytes; its error is the one that counts.
                if sender.send(data).await.is_err() {
                    break Ok(());
                }
            }
        }
    };
    drop(sender);
    let written = writer
        .await
        .map_err(|e| FillError::Disk(format!("spool writer ended: {e}")))
        .and_then(|outcome| outcome);
    let outcome = match (read, written) {
        (_, Err(refused @ FillError::Refused(AssignmentError::TooLarge(_)))) => Err(refused),
        (Err(cut), _) => Err(cut),
        (Ok(()), written) => written,
    };
    let end = match &outcome {
        Ok(checked) => End::Verified(checked.clone()),
        Err(error) => End::Failed(error.to_string()),
    };
    entry.progress.send_modify(|progress| progress.end = Some(end));
    outcome
}

/// A body streaming `entry`'s file to `node` (a group leader fetching it), as far as it has arrived and
/// then as it arrives (cut-through). It is cut with an error — never passed off as complete — when
/// receiving the entry fails or `shutdown` is cancelled; the uploads of the entry record how it ended.
pub fn serve(entry: Arc<Entry>, node: String, shutdown: CancellationToken) -> Body {
    let (sender, body) = tern_http::channel(4, entry.expected);
    entry.uploads.send_modify(|uploads| {
        uploads.insert(node.clone(), Upload::Serving);
    });
    tokio::spawn(async move {
        let (sent, complete) = stream_entry(&entry, &sender, &shutdown).await;
        entry.uploads.send_modify(|uploads| {
            uploads.insert(node, Upload::Served { bytes: sent, complete });
        });
    });
    body
}

/// Sends `entry` through `sender`; returns the bytes sent and whether that was the whole verified entry.
async fn stream_entry(entry: &Entry, sender: &tern_http::ChannelSender, shutdown: &CancellationToken) -> (u64, bool) {
    let mut watcher = entry.progress.subscribe();
    let mut file: Option<tokio::fs::File> = None;
    let mut sent = 0u64;
    loop {
        let progress = watcher.borrow_and_update().clone();
        if sent < progress.received {
            let file = match file.as_mut() {
                Some(file) => file,
                None => match tokio::fs::File::open(&entry.path).await {
                    Ok(opened) => file.insert(opened),
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return (sent, false);
                    }
                },
            };
            let count = (progress.received - sent).min(CHUNK as u64) as usize;
            let mut buffer = vec![0u8; count];
            let read = match file.seek(std::io::SeekFrom::Start(sent)).await {
                Ok(_) => file.read_exact(&mut buffer).await.map(|_| ()),
                Err(error) => Err(error),
            };
            if let Err(error) = read {
                let _ = sender.send(Err(error.into())).await;
                return (sent, false);
            }
            if sender.send(Ok(Bytes::from(buffer))).await.is_err() {
                return (sent, false);
            }
            sent += count as u64;
            continue;
        }
        match progress.end {
            Some(End::Verified(_)) => return (sent, true),
            Some(End::Failed(reason)) => {
                let _ = sender.send(Err(format!("upstream copy failed: {reason}").into())).await;
                return (sent, false);
            }
            None => {}
        }
        tokio::select! {
            changed = watcher.changed() => {
                if changed.is_err() {
                    return (sent, false);
                }
            }
            _ = shutdown.cancelled() => {
                let _ = sender.send(Err("the node is stopping".into())).await;
                return (sent, false);
            }
        }
    }
}

/// The whole of a verified entry's file, as a request body (a group leader delivering to a member).
pub async fn body_of(entry: &Entry, checked: &Checked) -> std::io::Result<Body> {
    let file = tokio::fs::File::open(&entry.path).await?;
    Ok(tern_http::file_range(file, 0, checked.len()))
}

/// Applies the verified assignment in `entry` with `interpreter`: its commands and data are read from the
/// spool file (an encrypted body is decrypted in a stream beside it first). Blocking. Returns the
/// assignment's id and site, and what it did.
pub fn apply(
    interpreter: &Interpreter,
    entry: &Entry,
    checked: &Checked,
    decryption_key: Option<&[u8; 32]>,
    limits: &Limits,
) -> Result<(String, String, Applied), String> {
    let file = std::fs::File::open(&entry.path).map_err(|e| format!("spool file: {e}"))?;
    let plain = entry.plain_path();
    let scratch = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&plain)
    };
    let assignment = open_spooled(file, checked, decryption_key, limits, scratch).map_err(|e| e.to_string())?;
    let applied = interpreter.apply(&assignment).map_err(|e| e.to_string())?;
    if let Err(error) = std::fs::remove_file(entry.plain_path())
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(%error, "decrypted spool file not removed");
    }
    Ok((assignment.header.id.clone(), assignment.header.site.clone(), applied))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use tern_wire::assignment::{AssignmentKind, Builder, Command};

    fn assignment(signing: &SigningKey) -> Vec<u8> {
        let mut builder = Builder::new("a1", AssignmentKind::Publish, "www", 1, None, 0);
        builder
            .create("big.bin", None, &vec![7u8; 300_000], false)
            .expect("create");
        builder.command(Command::Commit);
        builder.finish(signing, None).expect("finish")
    }

    #[tokio::test]
    async fn a_reader_gets_what_arrived_then_the_rest_and_the_copy_verifies() {
        let signing = SigningKey::from_bytes(&[5; 32]);
        let bytes = assignment(&signing);
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("spool");
        let entry = spool.create("t1", Some(bytes.len() as u64)).expect("new");
        assert!(spool.create("t1", None).is_none(), "one entry per transfer");
        let shutdown = CancellationToken::new();
        let (sender, upstream) = tern_http::channel(64, None);
        let filling = {
            let entry = entry.clone();
            let shutdown = shutdown.clone();
            let key = signing.verifying_key();
            tokio::spawn(async move {
                fill(
                    &entry,
                    upstream,
                    Limits::default(),
                    key,
                    Duration::from_secs(5),
                    &shutdown,
                )
                .await
            })
        };
        let half = bytes.len() / 2;
        sender
            .send(Ok(Bytes::copy_from_slice(&bytes[..half])))
            .await
            .expect("send");
        let started = entry.started().await;
        assert!(started.received > 0);
        // A reader starts while the entry is still arriving (cut-through).
        let served = serve(entry.clone(), "gl2".into(), shutdown.clone());
        sender
            .send(Ok(Bytes::copy_from_slice(&bytes[half..])))
            .await
            .expect("send");
        drop(sender);
        let checked = filling.await.expect("task").expect("verified");
        let copy = served.collect().await.expect("whole").to_bytes();
        assert_eq!(copy.as_ref(), bytes.as_slice());
        assert_eq!(
            entry.upload_ended("gl2", Duration::from_secs(5)).await,
            Some(Upload::Served {
                bytes: bytes.len() as u64,
                complete: true
            })
        );
        let interpreter = Interpreter::new(dir.path().join("root"));
        let (id, site, applied) = apply(&interpreter, &entry, &checked, None, &Limits::default()).expect("applies");
        assert_eq!((id.as_str(), site.as_str()), ("a1", "www"));
        assert!(applied.live.is_some());
        let path = entry.path().to_path_buf();
        spool.release("t1");
        drop(entry);
        assert!(!path.exists(), "the file goes with the last holder");
    }

    #[tokio::test]
    async fn a_reader_of_a_copy_that_fails_is_cut_off_not_given_a_short_copy() {
        let signing = SigningKey::from_bytes(&[5; 32]);
        let bytes = assignment(&signing);
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("spool");
        let entry = spool.create("t2", Some(bytes.len() as u64)).expect("new");
        let shutdown = CancellationToken::new();
        let (sender, upstream) = tern_http::channel(64, None);
        let served = serve(entry.clone(), "gl3".into(), shutdown.clone());
        let filling = {
            let entry = entry.clone();
            let shutdown = shutdown.clone();
            let key = signing.verifying_key();
            tokio::spawn(async move {
                fill(
                    &entry,
                    upstream,
                    Limits::default(),
                    key,
                    Duration::from_secs(5),
                    &shutdown,
                )
                .await
            })
        };
        sender
            .send(Ok(Bytes::copy_from_slice(&bytes[..1000])))
            .await
            .expect("send");
        sender.send(Err("connection reset".into())).await.expect("send");
        let failed = filling.await.expect("task").expect_err("cut off");
        assert!(failed.to_string().contains("connection reset"), "{failed}");
        assert!(served.collect().await.is_err(), "the reader's body ends in an error");
        let damaged = {
            let mut damaged = bytes.clone();
            damaged[5000] ^= 1;
            damaged
        };
        let entry = spool.create("t3", None).expect("new");
        let (sender, upstream) = tern_http::channel(64, None);
        sender.send(Ok(Bytes::from(damaged))).await.expect("send");
        drop(sender);
        let refused = fill(
            &entry,
            upstream,
            Limits::default(),
            signing.verifying_key(),
            Duration::from_secs(5),
            &shutdown,
        )
        .await
        .expect_err("damaged");
        assert!(
            matches!(refused, FillError::Refused(AssignmentError::Hash)),
            "{refused}"
        );
    }
}
