//! Fault points for tests of crash recovery: `TERN_FAULT=exit-after-commit-decision` or
//! `TERN_FAULT=exit-after-commit` makes the mover process exit at once (no record written after it, as
//! after `kill -9`) at that point of a delivery. Only tests set it; the variable is read once, at the first
//! point reached, and a mover without it behaves as if the points were not there.

use std::sync::OnceLock;

/// The environment variable that names a fault point.
pub const FAULT_VARIABLE: &str = "TERN_FAULT";

/// The exit status of a mover stopped at a fault point (tests tell it from a crash).
pub const FAULT_EXIT_STATUS: i32 = 86;

/// A point of a delivery where a test may stop the mover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The decision to commit is durable; no commit message has left.
    AfterCommitDecision,
    /// The nodes answered the commit; nothing about it is recorded yet.
    AfterCommit,
}

impl Fault {
    /// The value of [`FAULT_VARIABLE`] that names it.
    pub fn word(self) -> &'static str {
        match self {
            Fault::AfterCommitDecision => "exit-after-commit-decision",
            Fault::AfterCommit => "exit-after-commit",
        }
    }
}

/// Exits the process when the test asked for a stop at `point`.
pub(crate) fn reached(point: Fault) {
    static CHOSEN: OnceLock<Option<String>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| std::env::var(FAULT_VARIABLE).ok());
    if chosen.as_deref() == Some(point.word()) {
        tracing::warn!(
            point = point.word(),
            "fault point reached; the mover exits as a test asked"
        );
        std::process::exit(FAULT_EXIT_STATUS);
    }
}
