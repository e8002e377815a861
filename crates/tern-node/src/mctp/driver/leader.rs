//! The group leader's side of the driver (seed `004_1419c51402506f7e.txt`, "local distribution" and the
//! status reporting after it): the spool file a session's frames are read from ([`FileSource`]), the
//! sessions this node leads and the callers waiting on them, and what the handle's `lead` and `excuse`
//! commands, members' reports and the [`Sender`](crate::mctp::Sender)'s and
//! [`Collector`](crate::mctp::Collector)'s events mean for them.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;

use tern_wire::mctp;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::info;

use super::event_loop::{Core, Driver};
use crate::mctp::{
    AssignmentStatusReport, CollectInput, Event, FrameSource, Outcome, Output, SenderInput, SessionReport, SessionStart,
};

/// Bytes the GL reads from its spool file at a time.
const SOURCE_BUFFER: usize = 256 << 10;

/// The GL's [`FrameSource`]: its spool file, read [`SOURCE_BUFFER`] bytes at a time.
pub struct FileSource {
    file: std::fs::File,
    buffer: Vec<u8>,
    buffer_offset: u64,
}

impl FileSource {
    /// Reads the file at `path`.
    pub fn open(path: &Path) -> io::Result<FileSource> {
        Ok(FileSource {
            file: std::fs::File::open(path)?,
            buffer: Vec::new(),
            buffer_offset: 0,
        })
    }
}

impl FrameSource for FileSource {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let buffered_end = self.buffer_offset + self.buffer.len() as u64;
        if offset < self.buffer_offset || end > buffered_end {
            let size = self.file.metadata()?.len();
            let want = (SOURCE_BUFFER as u64)
                .max(buf.len() as u64)
                .min(size.saturating_sub(offset));
            if want < buf.len() as u64 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            self.buffer.resize(want as usize, 0);
            self.file.read_exact_at(&mut self.buffer, offset)?;
            self.buffer_offset = offset;
        }
        let start = (offset - self.buffer_offset) as usize;
        buf.copy_from_slice(&self.buffer[start..start + buf.len()]);
        Ok(())
    }
}

/// A session this node leads: what its end is logged and measured with, and the callers waiting for it.
pub(super) struct Leading {
    name: String,
    size: u64,
    members: usize,
    started: Instant,
    ended: Option<oneshot::Sender<SessionReport>>,
    collected: Option<oneshot::Sender<AssignmentStatusReport>>,
}

impl Driver {
    /// Starts leading `start`: report collection first, then the sender's session; `ended` and
    /// `collected` are answered when they end.
    pub(super) fn lead(
        &mut self,
        start: SessionStart,
        ended: oneshot::Sender<SessionReport>,
        collected: oneshot::Sender<AssignmentStatusReport>,
        now: Instant,
        outputs: &mut Vec<(Core, Output)>,
    ) {
        let assignment = start.assignment;
        let members = start.members.clone();
        let size = start.size;
        let name = start.name.clone();
        if self.sender.sessions().contains(&assignment) {
            // A session of this assignment is open: the caller's channels are dropped.
            return;
        }
        self.leading.insert(
            assignment,
            Leading {
                name,
                size,
                members: members.len(),
                started: now,
                ended: Some(ended),
                collected: Some(collected),
            },
        );
        let out = self
            .collector
            .handle(CollectInput::Start { assignment, members }, now.into_std());
        outputs.extend(out.into_iter().map(|output| (Core::Collector, output)));
        let unreachable = self.unaddressed(&start.members);
        let out = self.sender.handle(SenderInput::Start(start), now.into_std());
        outputs.extend(out.into_iter().map(|output| (Core::Sender, output)));
        if !unreachable.is_empty() {
            // Not registered with this leader nor heard by it yet: if they stay silent through the
            // first pass, the session does not wait for them (a member that answers is heard).
            let input = SenderInput::Unreachable {
                assignment,
                members: unreachable,
            };
            let out = self.sender.handle(input, now.into_std());
            outputs.extend(out.into_iter().map(|output| (Core::Sender, output)));
        }
        if !self.sender.sessions().contains(&assignment)
            && !outputs
                .iter()
                .any(|(_, output)| matches!(output, Output::Event(Event::SessionEnded(_))))
        {
            // Refused by the core (counted there): the caller's channels are dropped.
            self.leading.remove(&assignment);
        }
    }

    /// The `members` this node has no unicast address for: never heard, not registered with it.
    fn unaddressed(&self, members: &[String]) -> Vec<String> {
        members
            .iter()
            .filter(|member| self.addresses.address(member).is_none())
            .cloned()
            .collect()
    }

    /// These members went offline (the registration stopped hearing their keep-alives): the sessions this
    /// node leads do not wait for them past the current pass, nor does report collection (they are caught
    /// up when they come back). helper-78's trial: a killed member held its segment ~40 s more.
    pub(super) fn departed(&mut self, members: Vec<String>, now: Instant, outputs: &mut Vec<(Core, Output)>) {
        if self.leading.is_empty() {
            return;
        }
        info!(members = ?members, "members went offline: the data channel's sessions no longer wait for them");
        let out = self.sender.handle(
            SenderInput::Departed {
                members: members.clone(),
            },
            now.into_std(),
        );
        outputs.extend(out.into_iter().map(|output| (Core::Sender, output)));
        let assignments: Vec<u64> = self.leading.keys().copied().collect();
        for assignment in assignments {
            self.excuse(assignment, members.clone(), now, outputs);
        }
    }

    /// These members are caught up another way: report collection does not wait for them.
    pub(super) fn excuse(
        &mut self,
        assignment: u64,
        members: Vec<String>,
        now: Instant,
        outputs: &mut Vec<(Core, Output)>,
    ) {
        let out = self
            .collector
            .handle(CollectInput::Excuse { assignment, members }, now.into_std());
        outputs.extend(out.into_iter().map(|output| (Core::Collector, output)));
    }

    /// Remembers where a member takes unicast requests: the address its authenticated report names.
    pub(super) fn learn_address(&mut self, bytes: &[u8], from: SocketAddr) {
        if let Ok(verified) = mctp::decode(&self.key, bytes, &self.limits) {
            let message = verified.message();
            let address = if message.address.ip().is_unspecified() {
                from
            } else {
                message.address
            };
            self.addresses.heard(&message.sender, address);
        }
    }

    /// A session ended: report collection is told, its timers go, goodput is counted and the caller of
    /// `lead` gets the report.
    pub(super) fn on_session_ended(
        &mut self,
        mut report: SessionReport,
        now: Instant,
        outputs: &mut Vec<(Core, Output)>,
    ) {
        let assignment = report.assignment;
        // A silent member is asked for its apply report by unicast before the unicast path sends it the
        // assignment (it may hold it, every status report of its lost). One this leader never heard and
        // that never registered with it cannot be asked: it goes to the unicast path at once. (A leader
        // elected mid-publish is sent the mover's list of the segment's nodes, which still names the
        // leader it replaces: report collection asked that dead node, to no address, for 13 s.)
        let unaddressed = self.unaddressed(&report.silent);
        if !unaddressed.is_empty() {
            info!(
                assignment = format!("{assignment:016x}"),
                members = ?unaddressed,
                "silent in the session and unknown to this leader (not registered, never heard): left to the unicast path"
            );
            report.silent.retain(|member| !unaddressed.contains(member));
        }
        let out = self
            .collector
            .handle(CollectInput::SessionEnded { assignment }, now.into_std());
        outputs.extend(out.into_iter().map(|output| (Core::Collector, output)));
        self.timers
            .retain(|(core, timer), _| !(*core == Core::Sender && timer.assignment == assignment));
        if let Some(leading) = self.leading.get_mut(&assignment) {
            let incomplete = match &report.outcome {
                Outcome::Complete => 0,
                Outcome::Quorum { incomplete } | Outcome::GaveUp { incomplete } => incomplete.len(),
                Outcome::SourceFailed(_) => usize::MAX,
            };
            let elapsed = now.duration_since(leading.started).as_secs_f64().max(1e-3);
            if incomplete != usize::MAX {
                let members = leading.members.saturating_sub(incomplete) as u64;
                let goodput = leading.size.saturating_mul(members);
                self.metrics.goodput_bytes.inc_by(goodput);
                self.metrics.last_goodput.set((goodput as f64 / elapsed) as i64);
            }
            info!(
                assignment = format!("{assignment:016x}"),
                transfer = %leading.name,
                outcome = ?report.outcome,
                passes = report.passes,
                repaired = report.frames_repaired,
                seconds = format_args!("{elapsed:.3}"),
                "data channel session ended"
            );
            if let Some(ended) = leading.ended.take() {
                let _ = ended.send(report);
            }
            if leading.collected.is_none() {
                self.leading.remove(&assignment);
            }
        }
    }

    /// Report collection ended: the caller gets the assignment status report.
    pub(super) fn on_collection_ended(&mut self, report: AssignmentStatusReport, now: Instant) {
        // Every apply report may be in before the last status report: the session then still runs.
        let assignment = report.assignment;
        if let Some(leading) = self.leading.get_mut(&assignment) {
            info!(
                transfer = %leading.name,
                applied = report.applied.len(),
                failed = report.failed.len(),
                missing = report.missing.len(),
                requests = report.requests,
                seconds = format_args!("{:.3}", now.duration_since(leading.started).as_secs_f64()),
                "data channel report collection ended"
            );
            if let Some(collected) = leading.collected.take() {
                let _ = collected.send(report);
            }
            if leading.ended.is_none() {
                self.leading.remove(&assignment);
            }
        }
    }
}
