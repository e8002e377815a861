//! A member's record of the assignments it applied (seed `004_1419c51402506f7e.txt`, "local
//! distribution" and the status reporting after it: "each registered group member participating in a
//! content move must send a job status report for each assignment it receives"; the GL "sends a unicast
//! request to any participating group member who did not report or whose response was lost").
//!
//! With a data channel an assignment can reach a member twice: on the data channel, and by the unicast
//! path (`POST /assignments`) when the GL did not hear that the member completed the session or applied
//! it — its status or apply reports were lost — and caught it up another way. Applying it a second time
//! is not harmless: a patch no longer finds the content it patches, so the member is reported failed
//! although it holds the new version; a commit-only assignment finds nothing prepared; and a commit again
//! deletes and replaces the live version's directory under the `live` link while it is served. Every
//! path that applies an assignment goes through [`AppliedLog::apply`]: the first copy is applied, a copy
//! arriving while it is applied waits for that result, and a later copy is answered from the record (its
//! stored result), by the assignment's signed hash. A failed apply is not recorded, so the unicast path
//! may try again. The data channel asks the same record whether it already holds an announced
//! assignment ("complete" at once) and what to answer the GL's report request for a session it never
//! followed.
//!
//! The record survives a restart (`kill -9` included): each applied assignment is appended to a file
//! ([`RECORD_FILE`] in the node's state directory, one checksummed line per assignment) and synced after
//! the interpreter applied it and before the result is reported; the file is rewritten atomically with
//! the last [`REMEMBERED`] records when it holds twice as many, and at start. A damaged file does not stop
//! the node: each line carries its own checksum, so the intact records are recovered and the damaged ones
//! (a line torn by a crash, a flipped byte) are skipped and logged. The sites' version directories are not
//! enough to answer from: they name the sequence and id of committed versions only — a content-only
//! assignment of a two-phase publish, a rollback or a removal leaves none, superseded versions are deleted
//! after a grace period, and an id is not the signed hash — and the answer must repeat what applying did.
//! What the record cannot cover is a crash between the interpreter's switch and the sync of its line: that
//! copy is applied again after the restart.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tern_wire::assignment::{Checked, Limits};
use tracing::{info, warn};

use super::driver::assignment_id;
use crate::interpreter::{Applied, Interpreter};
use crate::spool::{self, Entry};

/// Applied assignments remembered by default (the oldest are forgotten first).
pub const REMEMBERED: usize = 256;

/// The record's file name in the node's state directory.
pub const RECORD_FILE: &str = "applied-assignments";

/// The most of a record file read at start (its tail): far more than [`REMEMBERED`] lines take, so only
/// a file grown by something else is cut.
const MAX_RECORD_BYTES: u64 = 8 << 20;

/// The result of applying one assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// The assignment's id.
    pub id: String,
    /// Its site.
    pub site: String,
    /// What applying it did.
    pub applied: Applied,
    /// Whether this copy was answered from the record: it had been applied before (nothing was done now).
    pub again: bool,
}

enum State {
    Applying,
    Applied(Application),
}

#[derive(Default)]
struct Ledger {
    states: HashMap<String, State>,
    /// Hashes of applied assignments, oldest first.
    order: VecDeque<String>,
}

impl Ledger {
    /// Records `application` under `hash`, forgetting the oldest beyond `remembered`.
    fn insert(&mut self, hash: &str, application: Application, remembered: usize) {
        if let Some(State::Applied(_)) = self.states.insert(hash.to_string(), State::Applied(application)) {
            self.order.retain(|known| known != hash);
        }
        self.order.push_back(hash.to_string());
        while self.order.len() > remembered {
            if let Some(oldest) = self.order.pop_front() {
                self.states.remove(&oldest);
            }
        }
    }
}

/// One line of the record file: an applied assignment and what applying it did.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    hash: String,
    id: String,
    site: String,
    commands: u64,
    live: Option<String>,
}

impl Record {
    fn new(hash: &str, application: &Application) -> Self {
        Record {
            hash: hash.to_string(),
            id: application.id.clone(),
            site: application.site.clone(),
            commands: application.applied.commands as u64,
            live: application.applied.live.clone(),
        }
    }

    fn application(&self) -> Application {
        Application {
            id: self.id.clone(),
            site: self.site.clone(),
            applied: Applied {
                commands: usize::try_from(self.commands).unwrap_or(usize::MAX),
                live: self.live.clone(),
            },
            again: false,
        }
    }

    /// The line: the record's JSON (which escapes tabs and newlines), a tab, and the first 16 hex digits
    /// of its blake3 hash.
    fn line(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let sum = checksum(&json);
        format!("{json}\t{sum}\n")
    }

    /// The record of one line (without its newline), if it is intact.
    fn parse(line: &str) -> Option<Record> {
        let (json, sum) = line.rsplit_once('\t')?;
        if sum != checksum(json) {
            return None;
        }
        serde_json::from_str(json).ok()
    }
}

fn checksum(json: &str) -> String {
    let hash = blake3::hash(json.as_bytes()).to_hex();
    hash[..16].to_string()
}

/// The record file: appended to, and rewritten with the last records when it grew to twice as many.
struct RecordFile {
    path: PathBuf,
    file: File,
    /// The last records' lines (at most `remembered`).
    lines: VecDeque<String>,
    /// Lines in the file.
    written: usize,
    remembered: usize,
}

impl RecordFile {
    fn append(&mut self, line: String) -> io::Result<()> {
        self.lines.push_back(line);
        while self.lines.len() > self.remembered {
            self.lines.pop_front();
        }
        if self.written + 1 > 2 * self.remembered {
            return self.rewrite();
        }
        let appended = self.lines.back().map(String::as_bytes).unwrap_or_default();
        self.file.write_all(appended)?;
        self.file.sync_data()?;
        self.written += 1;
        Ok(())
    }

    /// Replaces the file with `lines` at once (a new file synced, then renamed over it).
    fn rewrite(&mut self) -> io::Result<()> {
        self.file = rewrite(&self.path, &self.lines)?;
        self.written = self.lines.len();
        Ok(())
    }
}

/// Writes `lines` to `path` durably (`tern_tree::write_durably`: a new file synced, renamed over it, the
/// directory synced); returns the file opened for appending.
fn rewrite(path: &Path, lines: &VecDeque<String>) -> io::Result<File> {
    let contents: String = lines.iter().map(String::as_str).collect();
    tern_tree::write_durably(path, contents.as_bytes())?;
    OpenOptions::new().append(true).open(path)
}

/// The tail of the record file at `path` (at most [`MAX_RECORD_BYTES`]); empty when there is none.
fn read_tail(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(MAX_RECORD_BYTES)))?;
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The assignments a member applied, by signed hash, and those it is applying now; kept in a file when
/// opened with [`AppliedLog::open`] (in memory only by [`Default`]).
pub struct AppliedLog {
    ledger: Mutex<Ledger>,
    settled: Condvar,
    remembered: usize,
    record: Option<Mutex<RecordFile>>,
}

impl Default for AppliedLog {
    fn default() -> Self {
        AppliedLog {
            ledger: Mutex::new(Ledger::default()),
            settled: Condvar::new(),
            remembered: REMEMBERED,
            record: None,
        }
    }
}

impl std::fmt::Debug for AppliedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppliedLog")
            .field("applied", &self.lock().order.len())
            .field("kept", &self.record.is_some())
            .finish_non_exhaustive()
    }
}

/// Clears an `Applying` mark that was not settled (the apply panicked), so that waiters go on.
struct Claim<'a> {
    log: &'a AppliedLog,
    hash: String,
    settled: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.log.lock().states.remove(&self.hash);
            self.log.settled.notify_all();
        }
    }
}

impl AppliedLog {
    /// The record kept in `dir` ([`RECORD_FILE`], created with the directory if missing), remembering the
    /// last `remembered` assignments. Damaged lines are skipped and logged; an unreadable file is logged
    /// and the record starts empty. Blocking. Fails only when the file cannot be written.
    pub fn open(dir: &Path, remembered: usize) -> io::Result<AppliedLog> {
        let remembered = remembered.max(1);
        let path = dir.join(RECORD_FILE);
        let write_error = |error: io::Error| {
            io::Error::new(
                error.kind(),
                format!(
                    "record of applied assignments {}: {error}; check that the node's root is writable",
                    path.display()
                ),
            )
        };
        std::fs::create_dir_all(dir).map_err(write_error)?;
        let bytes = read_tail(&path).unwrap_or_else(|error| {
            warn!(path = %path.display(), %error, "the record of applied assignments cannot be read; starting empty (a repeated copy of an assignment applied before is applied again)");
            Vec::new()
        });
        let mut ledger = Ledger::default();
        let mut damaged = 0usize;
        let text = String::from_utf8_lossy(&bytes);
        let mut pieces: Vec<&str> = text.split('\n').collect();
        // What follows the last newline is a line a crash cut short (or nothing).
        if pieces.pop().is_some_and(|torn| !torn.is_empty()) {
            damaged += 1;
        }
        for piece in pieces {
            match Record::parse(piece) {
                Some(record) => ledger.insert(&record.hash, record.application(), remembered),
                None => damaged += 1,
            }
        }
        if damaged > 0 {
            warn!(path = %path.display(), damaged, recovered = ledger.order.len(), "damaged records of applied assignments skipped; a repeated copy of one of those assignments is applied again");
        } else if !ledger.order.is_empty() {
            info!(path = %path.display(), recovered = ledger.order.len(), "record of applied assignments read");
        }
        let lines: VecDeque<String> = ledger
            .order
            .iter()
            .filter_map(|hash| match ledger.states.get(hash) {
                Some(State::Applied(application)) => Some(Record::new(hash, application).line()),
                _ => None,
            })
            .collect();
        // Rewritten at once: a torn last line would otherwise run into the next record appended.
        let file = rewrite(&path, &lines).map_err(write_error)?;
        let written = lines.len();
        Ok(AppliedLog {
            ledger: Mutex::new(ledger),
            settled: Condvar::new(),
            remembered,
            record: Some(Mutex::new(RecordFile {
                path,
                file,
                lines,
                written,
                remembered,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the assignment with this signed hash (hex) was applied.
    pub fn holds(&self, hash: &str) -> bool {
        matches!(self.lock().states.get(hash), Some(State::Applied(_)))
    }

    /// Whether an assignment with this Content Assignment ID (the first 64 bits of its signed hash, see
    /// [`assignment_id`]) was applied.
    pub fn holds_assignment(&self, assignment: u64) -> bool {
        self.lock()
            .states
            .iter()
            .any(|(hash, state)| matches!(state, State::Applied(_)) && assignment_id(hash) == assignment)
    }

    /// Writes the record of an applied assignment to the file (when kept); a failure is logged, since
    /// the assignment is applied all the same.
    fn keep(&self, hash: &str, application: &Application) {
        let Some(record) = &self.record else {
            return;
        };
        let mut record = record.lock().unwrap_or_else(|p| p.into_inner());
        let line = Record::new(hash, application).line();
        if let Err(error) = record.append(line) {
            warn!(path = %record.path.display(), %error, id = %application.id, "the record of an applied assignment was not written (a repeated copy after a restart is applied again); check the node's disk");
        }
    }

    /// Applies the verified assignment in `entry` unless it was applied already; then the stored result
    /// is returned with [`Application::again`] set. Blocking (it may wait for the same assignment being
    /// applied from another copy, and it syncs the record file).
    pub fn apply(
        &self,
        interpreter: &Interpreter,
        entry: &Entry,
        checked: &Checked,
        decryption_key: Option<&[u8; 32]>,
        limits: &Limits,
    ) -> Result<Application, String> {
        let hash = checked.hash_hex();
        {
            let mut ledger = self.lock();
            loop {
                match ledger.states.get(&hash) {
                    Some(State::Applied(application)) => {
                        return Ok(Application {
                            again: true,
                            ..application.clone()
                        });
                    }
                    Some(State::Applying) => {
                        ledger = self.settled.wait(ledger).unwrap_or_else(|p| p.into_inner());
                    }
                    None => {
                        ledger.states.insert(hash.clone(), State::Applying);
                        break;
                    }
                }
            }
        }
        let mut claim = Claim {
            log: self,
            hash,
            settled: false,
        };
        let result =
            spool::apply(interpreter, entry, checked, decryption_key, limits).map(|(id, site, applied)| Application {
                id,
                site,
                applied,
                again: false,
            });
        // On disk before the result is reported: a copy arriving after a restart is answered from it.
        if let Ok(application) = &result {
            self.keep(&claim.hash, application);
        }
        let mut ledger = self.lock();
        match &result {
            Ok(application) => ledger.insert(&claim.hash, application.clone(), self.remembered),
            // Not applied: a later copy (the unicast path's retry) may try again.
            Err(_) => {
                ledger.states.remove(&claim.hash);
            }
        }
        claim.settled = true;
        drop(ledger);
        self.settled.notify_all();
        result
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use tern_wire::assignment::{AssignmentKind, Builder, Command, StreamCheck};

    fn signing() -> SigningKey {
        SigningKey::from_bytes(&[5; 32])
    }

    fn publish(id: &str, sequence: u64, text: &[u8]) -> Vec<u8> {
        let mut builder = Builder::new(id, AssignmentKind::Publish, "www", sequence, None, 0);
        builder.create("index.html", None, text, false).expect("create");
        builder.command(Command::Commit);
        builder.finish(&signing(), None).expect("finish")
    }

    /// A page whose delta from one version to the next reads its base: version 2 is longer, so that a
    /// patch applied to the wrong version rebuilds the wrong bytes (a node checks the result, not the base).
    fn version(number: u64) -> Vec<u8> {
        let head = if number == 1 {
            "version one\n"
        } else {
            "version two, a longer head\n"
        };
        [head.as_bytes(), &b"the same body line\n".repeat(40)].concat()
    }

    fn patch(id: &str, sequence: u64, from: &[u8], to: &[u8]) -> Vec<u8> {
        let mut builder = Builder::new(id, AssignmentKind::Publish, "www", sequence, None, 0);
        builder.patch("index.html", from, to).expect("patch");
        builder.command(Command::Commit);
        builder.finish(&signing(), None).expect("finish")
    }

    /// A copy of `bytes` received into a new spool entry, checked as the agent checks it.
    fn received(spool: &spool::Spool, bytes: &[u8]) -> (Entry, Checked) {
        let entry = spool.scratch(Some(bytes.len() as u64));
        std::fs::write(entry.path(), bytes).expect("spool file");
        let mut check = StreamCheck::new(&Limits::default());
        check.push(bytes).expect("push");
        let checked = check.finish(&signing().verifying_key()).expect("verifies");
        (entry, checked)
    }

    fn link(path: &std::path::Path) -> String {
        std::fs::read_link(path).expect("link").to_string_lossy().into_owned()
    }

    /// Fault 1 of the MCTP review: a member whose apply report (or every status report) was lost applies
    /// the data channel's copy, and the GL, not hearing of it, catches it up by the unicast path with the
    /// same assignment. The second copy is answered from the member's stored result, not applied again
    /// (applied again, the patch no longer matched the live content and the member answered a failure).
    #[test]
    fn the_same_assignment_by_the_data_channel_and_the_unicast_path_is_applied_once() {
        let area = tempfile::tempdir().expect("tempdir");
        let root = area.path().join("root");
        let interpreter = Interpreter::new(&root);
        let spool = spool::Spool::open(&area.path().join("spool")).expect("spool");
        let log = AppliedLog::default();
        let limits = Limits::default();

        let (entry, checked) = received(&spool, &publish("v1", 1, &version(1)));
        let first = log.apply(&interpreter, &entry, &checked, None, &limits).expect("v1");
        assert!(!first.again);
        let v2 = patch("v2", 2, &version(1), &version(2));
        let (channel_copy, channel_checked) = received(&spool, &v2);
        let by_channel = log
            .apply(&interpreter, &channel_copy, &channel_checked, None, &limits)
            .expect("v2 by the data channel");
        assert!(!by_channel.again);
        let live = link(&root.join("www/live"));
        let backup = link(&root.join("www/backup"));
        assert_ne!(live, backup);
        assert!(log.holds(&channel_checked.hash_hex()));

        let (unicast_copy, unicast_checked) = received(&spool, &v2);
        let by_unicast = log
            .apply(&interpreter, &unicast_copy, &unicast_checked, None, &limits)
            .expect("v2 by the unicast path");
        assert!(by_unicast.again, "answered from the stored result");
        assert_eq!(
            (&by_unicast.id, &by_unicast.site, &by_unicast.applied),
            (&by_channel.id, &by_channel.site, &by_channel.applied)
        );
        assert_eq!(link(&root.join("www/live")), live);
        assert_eq!(link(&root.join("www/backup")), backup);
        let served = std::fs::read(root.join("www/live/index.html")).expect("served");
        assert_eq!(served, version(2));
    }

    /// Follow-up 1 of the MCTP review: the record survives a restart (`kill -9` included: each line is
    /// synced before the result is reported, and nothing else is needed). A member applies v2 (a patch)
    /// from the data channel, restarts, and then gets v2 again by the unicast path: it is answered from
    /// the record, nothing is applied. Without the record (memory only, as before) the copy is applied
    /// again and fails, although the member holds v2.
    #[test]
    fn an_assignment_applied_before_a_restart_is_answered_from_the_record() {
        let area = tempfile::tempdir().expect("tempdir");
        let root = area.path().join("root");
        let state = root.join(".state");
        let interpreter = Interpreter::new(&root);
        let spool = spool::Spool::open(&area.path().join("spool")).expect("spool");
        let limits = Limits::default();
        let v2 = patch("v2", 2, &version(1), &version(2));
        let by_channel = {
            let log = AppliedLog::open(&state, REMEMBERED).expect("record");
            let (entry, checked) = received(&spool, &publish("v1", 1, &version(1)));
            log.apply(&interpreter, &entry, &checked, None, &limits).expect("v1");
            let (entry, checked) = received(&spool, &v2);
            log.apply(&interpreter, &entry, &checked, None, &limits).expect("v2")
            // Dropped here, as a crash drops it: nothing is flushed on the way out.
        };
        let live = link(&root.join("www/live"));
        let backup = link(&root.join("www/backup"));

        let interpreter = Interpreter::new(&root);
        let log = AppliedLog::open(&state, REMEMBERED).expect("record after the restart");
        let (entry, checked) = received(&spool, &v2);
        assert!(log.holds(&checked.hash_hex()));
        assert!(log.holds_assignment(crate::mctp::driver::assignment_id(&checked.hash_hex())));
        let again = log
            .apply(&interpreter, &entry, &checked, None, &limits)
            .expect("answered from the record");
        assert!(again.again);
        assert_eq!(
            (&again.id, &again.site, &again.applied),
            (&by_channel.id, &by_channel.site, &by_channel.applied)
        );
        assert_eq!(link(&root.join("www/live")), live);
        assert_eq!(link(&root.join("www/backup")), backup);
        let served = std::fs::read(root.join("www/live/index.html")).expect("served");
        assert_eq!(served, version(2));

        let forgetful = AppliedLog::default();
        let (entry, checked) = received(&spool, &v2);
        let error = forgetful
            .apply(&interpreter, &entry, &checked, None, &limits)
            .expect_err("applied again without the record");
        assert!(error.contains("not the version the patch was made for"), "{error}");
    }

    /// A damaged record does not stop the node: a line whose byte flipped and a line a crash cut short
    /// are skipped, the intact records are kept, and the file is whole again for the next record. A file
    /// of garbage starts an empty record.
    #[test]
    fn a_damaged_record_keeps_its_intact_records() {
        let area = tempfile::tempdir().expect("tempdir");
        let root = area.path().join("root");
        let state = root.join(".state");
        let interpreter = Interpreter::new(&root);
        let spool = spool::Spool::open(&area.path().join("spool")).expect("spool");
        let limits = Limits::default();
        let mut hashes = Vec::new();
        {
            let log = AppliedLog::open(&state, REMEMBERED).expect("record");
            for sequence in 1..=3u64 {
                let text = format!("version {sequence}");
                let (entry, checked) = received(&spool, &publish(&format!("v{sequence}"), sequence, text.as_bytes()));
                log.apply(&interpreter, &entry, &checked, None, &limits)
                    .expect("applies");
                hashes.push(checked.hash_hex());
            }
        }
        let path = state.join(RECORD_FILE);
        let mut bytes = std::fs::read(&path).expect("record file");
        let second_line = bytes.iter().position(|byte| *byte == b'\n').expect("a line") + 1;
        bytes[second_line + 20] ^= 0x01;
        bytes.extend_from_slice(b"{\"hash\":\"ab");
        std::fs::write(&path, &bytes).expect("damage");

        let log = AppliedLog::open(&state, REMEMBERED).expect("a damaged record opens");
        assert!(log.holds(&hashes[0]));
        assert!(!log.holds(&hashes[1]), "the damaged line is skipped");
        assert!(log.holds(&hashes[2]));
        let (entry, checked) = received(&spool, &publish("v4", 4, b"version 4"));
        log.apply(&interpreter, &entry, &checked, None, &limits)
            .expect("applies");
        drop(log);
        let log = AppliedLog::open(&state, REMEMBERED).expect("record");
        assert!(log.holds(&hashes[0]) && log.holds(&hashes[2]) && log.holds(&checked.hash_hex()));
        let text = std::fs::read_to_string(&path).expect("record file");
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().all(|line| Record::parse(line).is_some()), "{text}");

        std::fs::write(&path, [0xff, 0x00, b'\n', b'x', b'\t', b'y']).expect("garbage");
        let log = AppliedLog::open(&state, REMEMBERED).expect("a garbage record opens");
        assert!(!log.holds(&hashes[0]));
    }

    /// The record keeps the last `remembered` assignments, and its file holds at most twice as many lines.
    #[test]
    fn the_record_is_bounded() {
        let area = tempfile::tempdir().expect("tempdir");
        let root = area.path().join("root");
        let state = root.join(".state");
        let interpreter = Interpreter::new(&root);
        let spool = spool::Spool::open(&area.path().join("spool")).expect("spool");
        let limits = Limits::default();
        let log = AppliedLog::open(&state, 4).expect("record");
        let mut hashes = Vec::new();
        for sequence in 1..=21u64 {
            let text = format!("version {sequence}");
            let (entry, checked) = received(&spool, &publish(&format!("v{sequence}"), sequence, text.as_bytes()));
            log.apply(&interpreter, &entry, &checked, None, &limits)
                .expect("applies");
            hashes.push(checked.hash_hex());
            let lines = std::fs::read_to_string(state.join(RECORD_FILE))
                .expect("file")
                .lines()
                .count();
            assert!(lines <= 8, "{lines} lines after {sequence}");
        }
        drop(log);
        let log = AppliedLog::open(&state, 4).expect("record");
        let held: Vec<bool> = hashes.iter().map(|hash| log.holds(hash)).collect();
        assert_eq!(held.iter().filter(|held| **held).count(), 4);
        assert!(held[17..].iter().all(|held| *held), "the last four: {held:?}");
    }

    /// A copy that arrives while another is being applied waits for that result; a failed apply is not
    /// remembered, so the unicast path's retry applies it.
    #[test]
    fn concurrent_copies_wait_and_failures_are_retried() {
        let area = tempfile::tempdir().expect("tempdir");
        let root = area.path().join("root");
        let interpreter = Interpreter::new(&root);
        let spool = spool::Spool::open(&area.path().join("spool")).expect("spool");
        let log = AppliedLog::default();
        let limits = Limits::default();

        // A commit with nothing prepared fails, and is not remembered.
        let mut builder = Builder::new("c1", AssignmentKind::Publish, "www", 1, None, 0);
        builder.command(Command::Commit);
        let commit = builder.finish(&signing(), None).expect("finish");
        let (entry, checked) = received(&spool, &commit);
        assert!(log.apply(&interpreter, &entry, &checked, None, &limits).is_err());
        assert!(!log.holds(&checked.hash_hex()));

        let bytes = publish("v1", 1, b"one");
        let copies: Vec<(Entry, Checked)> = (0..4).map(|_| received(&spool, &bytes)).collect();
        let results: Vec<Application> = std::thread::scope(|scope| {
            let handles: Vec<_> = copies
                .iter()
                .map(|(entry, checked)| {
                    let (log, interpreter, limits) = (&log, &interpreter, &limits);
                    scope.spawn(move || log.apply(interpreter, entry, checked, None, limits).expect("applies"))
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("joined"))
                .collect()
        });
        assert_eq!(results.iter().filter(|result| !result.again).count(), 1, "{results:?}");
        let versions = std::fs::read_dir(root.join("www/versions")).expect("versions").count();
        assert_eq!(versions, 1);
    }
}
