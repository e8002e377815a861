//! One process per state directory. Two processes started on one data directory (a manual start beside the
//! service manager's, a second edge given the same `--cache-dir`) would each append to the same logs and
//! rewrite the same files: the sync service's change log got two records at one position and then lost
//! one, and a second mover would mark the first one's running jobs as interrupted. So every role that keeps
//! state takes an exclusive lock (`flock`) on `DIR/tern.lock` before it reads or writes anything there,
//! holds it until it exits (the kernel releases it when the process dies, even by `kill -9`), and a second
//! process is refused, naming the one that holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use tracing::warn;

/// The lock file's name inside a state directory.
pub const LOCK_FILE: &str = "tern.lock";

/// The held lock of a state directory; released when dropped or when the process ends.
#[derive(Debug)]
pub struct DirLock {
    _file: Option<File>,
}

/// Takes `dir` (created if missing, readable by this user only: it holds logs, positions, databases) for
/// this process, running `role` (`sync`, `edge cache`...). Errors when another process holds it, naming its
/// pid and role, and when the directory cannot be created or the lock file opened. A filesystem without
/// locks (some network filesystems) is logged and let through.
pub fn lock(dir: &Path, role: &str) -> Result<DirLock> {
    lock_file(
        dir,
        LOCK_FILE,
        role,
        &format!(
            "two processes on one {role} directory would overwrite each other's records. Stop the other one, or give this one a directory of its own"
        ),
    )
}

/// [`lock`] for one of several processes that share a state directory, each with files of its own (agents
/// of different names): the lock file is `DIR/NAME`; `clash` says what is wrong and what to do when it is
/// taken.
pub fn lock_file(dir: &Path, name: &str, role: &str, clash: &str) -> Result<DirLock> {
    tern_tree::create_private_dir(dir)
        .with_context(|| format!("cannot create the {role} directory {}", dir.display()))?;
    let path = dir.join(name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("another process ({holder})")
            };
            bail!("{} is in use by {holder}: {clash}", dir.display());
        }
        Err(TryLockError::Error(error)) => {
            warn!(%error, path = %path.display(), "cannot lock the {role} directory (a filesystem without locks?); make sure no other process uses it");
            return Ok(DirLock { _file: None });
        }
    }
    // Who holds it, for the next one's error; the lock works without it.
    let note = format!("pid {}, tern {role}\n", std::process::id());
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(note.as_bytes()));
    if let Err(error) = written {
        warn!(%error, path = %path.display(), "cannot write the lock file's note");
    }
    Ok(DirLock { _file: Some(file) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_the_directory_is_free_again_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("sync");
        let first = lock(&state, "sync").expect("first");
        assert!(state.is_dir(), "created");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&state).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(
                mode & 0o077,
                0,
                "only its owner may read a new state directory: {mode:o}"
            );
        }
        let error = lock(&state, "sync").expect_err("second").to_string();
        assert!(
            error.contains(&format!("pid {}", std::process::id())) && error.contains("in use"),
            "{error}"
        );
        drop(first);
        lock(&state, "sync").expect("free once the first is gone");
    }
}
