//! A member's memory of the assignments it applied (seed `004_1419c51402506f7e.txt`, "local
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
//! arriving while it is applied waits for that result, and a later copy is answered from what the member
//! remembers (its stored result), by the assignment's signed hash. A failed apply is forgotten, so the
//! unicast path may try again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

use tern_wire::assignment::{Checked, Limits};

use crate::interpreter::{Applied, Interpreter};
use crate::spool::{self, Entry};

/// Applied assignments remembered (the oldest are forgotten first).
pub(crate) const REMEMBERED: usize = 256;

/// The result of applying one assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Application {
    /// The assignment's id.
    pub(crate) id: String,
    /// Its site.
    pub(crate) site: String,
    /// What applying it did.
    pub(crate) applied: Applied,
    /// Whether this copy was answered from memory: it had been applied before (nothing was done now).
    pub(crate) again: bool,
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

/// The assignments a member applied, by signed hash, and those it is applying now.
#[derive(Default)]
pub(crate) struct AppliedLog {
    ledger: Mutex<Ledger>,
    settled: Condvar,
}

impl std::fmt::Debug for AppliedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppliedLog")
            .field("applied", &self.lock().order.len())
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
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the assignment with this signed hash (hex) was applied.
    #[cfg(test)]
    pub(crate) fn holds(&self, hash: &str) -> bool {
        matches!(self.lock().states.get(hash), Some(State::Applied(_)))
    }

    /// Applies the verified assignment in `entry` unless it was applied already; then the stored result
    /// is returned with [`Application::again`] set. Blocking (it may wait for the same assignment being
    /// applied from another copy).
    pub(crate) fn apply(
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
        let mut ledger = self.lock();
        match &result {
            Ok(application) => {
                ledger
                    .states
                    .insert(claim.hash.clone(), State::Applied(application.clone()));
                ledger.order.push_back(claim.hash.clone());
                while ledger.order.len() > REMEMBERED {
                    if let Some(oldest) = ledger.order.pop_front() {
                        ledger.states.remove(&oldest);
                    }
                }
            }
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

        let (entry, checked) = received(&spool, &publish("v1", 1, b"version one"));
        let first = log.apply(&interpreter, &entry, &checked, None, &limits).expect("v1");
        assert!(!first.again);
        let v2 = patch("v2", 2, b"version one", b"version two");
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
        assert_eq!(served, b"version two");
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
