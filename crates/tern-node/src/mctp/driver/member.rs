//! The member's side of the driver (seed `004_1419c51402506f7e.txt`, "local distribution"): the spool
//! file each session is received into ([`FileSpool`], written through [`FileSink`], parity frames into
//! the entry's parity file) and the files the rebuild reads and writes ([`SpoolRebuild`]), what arrives on the
//! data channel (with the `--data-loss` test knob), the hand-off of a complete assignment to the node
//! ([`Received`]) and its answer for the apply report, and forgetting old sessions. What the member
//! holds already is the node's record of applied assignments ([`AppliedLog`]), whichever path applied
//! them (the data channel, `POST /assignments`, before a restart).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tern_wire::mctp::{self, Announcement};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::Received;
use super::event_loop::{Core, Driver};
use crate::mctp::rebuild::{RebuildIo, RebuildPlan};
use crate::mctp::receiver::STALE_SESSION;
use crate::mctp::{AppliedLog, Output, ReceiverInput, Sink, Spool};
use crate::spool::{Entry, Spool as NodeSpool};

/// Bytes a member's sink gathers before it writes them (frames arrive mostly in order).
const SINK_BUFFER: usize = 256 << 10;

/// Spool entries being received, by assignment, with their announced size.
type Receiving = HashMap<u64, (Arc<Entry>, u64)>;

/// What the member's spool and the driver share: the entries being received, and the node's record of
/// the assignments it applied.
#[derive(Clone)]
pub(super) struct SpoolShared {
    entries: Arc<Mutex<Receiving>>,
    applied: Arc<AppliedLog>,
}

impl SpoolShared {
    /// Shares `applied`, the node's record (an announced assignment in it is answered "complete").
    pub(super) fn new(applied: Arc<AppliedLog>) -> Self {
        SpoolShared {
            entries: Arc::default(),
            applied,
        }
    }
}

/// The member's [`Spool`]: each session is received into a spool entry of the node's data channel spool.
pub(super) struct FileSpool {
    pub(super) spool: Arc<NodeSpool>,
    pub(super) shared: SpoolShared,
}

impl Spool for FileSpool {
    fn holds(&self, hash: &str) -> bool {
        self.shared.applied.holds(hash)
    }

    fn applied(&self, assignment: u64) -> bool {
        self.shared.applied.holds_assignment(assignment)
    }

    fn create(&mut self, announcement: &Announcement) -> io::Result<Box<dyn Sink>> {
        let entry = Arc::new(self.spool.scratch(Some(announcement.size)));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(entry.path())?;
        file.set_len(announcement.size)?;
        let parity_path = entry.parity_path();
        let mut entries = self.shared.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(announcement.assignment, (entry, announcement.size));
        Ok(Box::new(FileSink {
            file,
            buffer: Vec::with_capacity(SINK_BUFFER),
            buffer_offset: 0,
            parity: ParityFile {
                path: parity_path,
                file: None,
                buffer: Vec::new(),
                len: 0,
            },
        }))
    }
}

/// A spool file written through a buffer of consecutive frames ([`SINK_BUFFER`] bytes at most).
struct FileSink {
    file: File,
    buffer: Vec<u8>,
    buffer_offset: u64,
    parity: ParityFile,
}

impl FileSink {
    /// Writes the buffer out; it is emptied even when the write fails (the session is declined then,
    /// and the buffer must not grow with every frame after).
    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let written = self.file.write_all_at(&self.buffer, self.buffer_offset);
        self.buffer.clear();
        written
    }
}

/// The parity frames a session holds, appended to a file made when the first comes: a parity frame's
/// handle is its offset there.
struct ParityFile {
    path: PathBuf,
    file: Option<File>,
    /// Frames not yet written, after the `len - buffer.len()` bytes in the file.
    buffer: Vec<u8>,
    /// Bytes held, written or not.
    len: u64,
}

impl ParityFile {
    fn hold(&mut self, data: &[u8]) -> io::Result<u64> {
        if self.buffer.len() + data.len() > SINK_BUFFER {
            self.flush()?;
        }
        let handle = self.len;
        self.buffer.extend_from_slice(data);
        self.len += data.len() as u64;
        Ok(handle)
    }

    /// Writes the buffer out; it is emptied even when the write fails (as [`FileSink::flush`]).
    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let offset = self.len - self.buffer.len() as u64;
        let written = self.write_at(offset);
        self.buffer.clear();
        written
    }

    fn write_at(&mut self, offset: u64) -> io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&self.path)?,
            ),
        };
        file.write_all_at(&self.buffer, offset)
    }
}

impl Sink for FileSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let follows = offset == self.buffer_offset + self.buffer.len() as u64;
        if !follows || self.buffer.len() + data.len() > SINK_BUFFER {
            self.flush()?;
            self.buffer_offset = offset;
        }
        if self.buffer.is_empty() {
            self.buffer_offset = offset;
        }
        self.buffer.extend_from_slice(data);
        Ok(())
    }

    fn hold_parity(&mut self, data: &[u8]) -> io::Result<u64> {
        self.parity.hold(data)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.flush()?;
        self.parity.flush()
    }
}

/// A received spool entry's files as the rebuild reads and writes them: the assignment, and the parity
/// file when the session held parity frames.
pub(crate) struct SpoolRebuild {
    spool: File,
    parity: Option<File>,
}

impl SpoolRebuild {
    /// Opens the files of `entry` for the rebuild of `plan`.
    pub(crate) fn open(entry: &Entry, plan: &RebuildPlan) -> io::Result<Self> {
        let spool = std::fs::OpenOptions::new().read(true).write(true).open(entry.path())?;
        let parity = if plan.blocks.is_empty() {
            None
        } else {
            Some(File::open(entry.parity_path())?)
        };
        Ok(SpoolRebuild { spool, parity })
    }
}

impl RebuildIo for SpoolRebuild {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.spool.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.spool.write_all_at(data, offset)
    }

    fn read_parity(&mut self, handle: u64, buf: &mut [u8]) -> io::Result<()> {
        match &self.parity {
            Some(file) => file.read_exact_at(buf, handle),
            None => Err(io::Error::other("no parity frames were held")),
        }
    }
}

impl Driver {
    /// The node's answer for a [`Received`] assignment, for the apply report (the node recorded it in
    /// its [`AppliedLog`] when applied, so a later announcement of it is answered "complete").
    pub(super) fn on_applied(
        &mut self,
        assignment: u64,
        applied: bool,
        detail: String,
        now: Instant,
        outputs: &mut Vec<(Core, Output)>,
    ) {
        let input = ReceiverInput::Applied {
            assignment,
            applied,
            detail,
        };
        let out = self.receiver.handle(input, now.into_std());
        outputs.extend(out.into_iter().map(|output| (Core::Receiver, output)));
    }

    /// A datagram on the data channel: for this node as a member, unless it is our own multicast.
    pub(super) fn on_data(&mut self, bytes: &[u8], from: SocketAddr, outputs: &mut Vec<(Core, Output)>) {
        if from == self.own {
            return;
        }
        if self.loss > 0.0 {
            let draw = (self.loss_rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if draw < self.loss {
                self.metrics.refuse("injected-loss", 1);
                return;
            }
        }
        let now = Instant::now();
        let out = self.receiver.handle(ReceiverInput::Datagram(bytes), now.into_std());
        outputs.extend(out.into_iter().map(|output| (Core::Receiver, output)));
        if !mctp::is_data_frame(bytes) {
            for assignment in self.receiver.sessions() {
                self.first_heard.entry(assignment).or_insert(now);
            }
            // An announcement may have made the core forget a session.
            self.let_go_of_forgotten();
        }
    }

    /// Forgets sessions heard of longer ago than
    /// [`DataChannelSettings::keep_sessions`](super::DataChannelSettings::keep_sessions) (applied and
    /// reported long since, or abandoned by their GL).
    /// Sessions still being received that their GL left for [`STALE_SESSION`] go sooner: their partial
    /// spool files are let go of (a leader killed mid-session left them for the whole ten minutes).
    pub(super) fn sweep(&mut self) {
        let now = Instant::now();
        let keep = self.keep_sessions;
        let mut old: Vec<u64> = self
            .first_heard
            .iter()
            .filter(|(_, heard)| now.duration_since(**heard) > keep)
            .map(|(assignment, _)| *assignment)
            .collect();
        for assignment in self.receiver.abandoned(now.into_std(), STALE_SESSION) {
            if !old.contains(&assignment) {
                debug!(assignment, "session left by its leader: its partial spool is let go of");
                old.push(assignment);
            }
        }
        for assignment in old {
            self.receiver.forget(assignment);
            self.first_heard.remove(&assignment);
            let mut entries = self.shared.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.remove(&assignment);
            self.timers
                .retain(|(core, timer), _| !(*core == Core::Receiver && timer.assignment == assignment));
        }
    }

    /// Every frame needed arrived: the spool entry goes to the node to rebuild, verify and apply, or, when
    /// the node takes no more (its queue full or closed), the assignment is reported not applied.
    pub(super) fn on_received(
        &mut self,
        assignment: u64,
        name: String,
        hash: String,
        rebuild: RebuildPlan,
        now: Instant,
        outputs: &mut Vec<(Core, Output)>,
    ) {
        self.metrics.received.inc();
        let entry = {
            let mut entries = self.shared.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.remove(&assignment)
        };
        let Some((entry, size)) = entry else {
            return;
        };
        let received = Received {
            assignment,
            name,
            hash,
            size,
            entry,
            rebuild,
        };
        if let Err(error) = self.received.try_send(received) {
            warn!(%error, "the node takes no more received assignments now");
            let input = ReceiverInput::Applied {
                assignment,
                applied: false,
                detail: "the node was busy".into(),
            };
            let out = self.receiver.handle(input, now.into_std());
            outputs.extend(out.into_iter().map(|output| (Core::Receiver, output)));
        }
    }

    /// Lets the spool entry of a session go (its files are deleted once nothing else holds it): the
    /// member declined the session, or no longer follows it.
    pub(super) fn let_go(&mut self, assignment: u64) {
        let mut entries = self.shared.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&assignment);
    }

    /// Lets go of the spool entries of sessions the member core forgot (to follow newer ones): a session
    /// it never completed would otherwise keep its partial spool file until the sweep.
    pub(super) fn let_go_of_forgotten(&mut self) {
        let followed = self.receiver.sessions();
        let mut entries = self.shared.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|assignment, _| followed.contains(assignment));
    }

    /// The member held the announced assignment already: it reports it applied.
    pub(super) fn on_already_held(&mut self, assignment: u64, now: Instant, outputs: &mut Vec<(Core, Output)>) {
        let input = ReceiverInput::Applied {
            assignment,
            applied: true,
            detail: "already held".into(),
        };
        let out = self.receiver.handle(input, now.into_std());
        outputs.extend(out.into_iter().map(|output| (Core::Receiver, output)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parity file that cannot be written (the disk full, its directory gone): the frame that finds the
    /// buffer full is refused (the member core then declines the session), and the buffer stays within
    /// its bound instead of growing by each frame after (found by a trial: 8 MB more memory per publish
    /// on a member with a full disk).
    #[test]
    fn a_parity_file_that_cannot_be_written_keeps_its_buffer_bounded() {
        let area = tempfile::tempdir().expect("tempdir");
        let mut parity = ParityFile {
            path: area.path().join("gone").join("x.parity"),
            file: None,
            buffer: Vec::new(),
            len: 0,
        };
        let frame = vec![5u8; 1400];
        let refused = (0..2000).filter(|_| parity.hold(&frame).is_err()).count();
        let per_buffer = SINK_BUFFER / frame.len();
        assert!(refused >= 2000 / (per_buffer + 1), "{refused} of 2000 refused");
        assert!(parity.buffer.len() <= SINK_BUFFER);
        assert!(parity.flush().is_err());
        assert!(parity.buffer.is_empty());
    }
}
