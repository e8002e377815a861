//! Making trees and renames durable before they are promised: a node says "prepared" or "committed", and
//! the mover records a decision, only once what they wrote would survive a power cut.
//!
//! Without this, the page cache holds a new tree for up to half a minute after it is written: a node that
//! loses power just after answering "committed" can come back with `live` pointing at files that are
//! empty or missing (ext4 allocates blocks late; only the rename of a file over another is flushed early),
//! while the mover counts it as serving the new version. rsync has `--fsync` for the same reason.
//!
//! A whole tree is flushed with one `syncfs(2)` of the file system that holds it rather than an `fsync(2)`
//! per file: one call instead of thousands, each of which would wait for its own journal commit (git's
//! `core.fsyncMethod=batch` makes the same trade). It also flushes what other programs wrote to that file
//! system, which costs time and loses nothing. On tmpfs both calls return at once.

use std::fs::File;
use std::io;
use std::path::Path;

/// Flushes everything written to the file system that holds `path` (a file or a directory): file
/// contents, new directory entries and renames. `syncfs(2)` on Linux; elsewhere `fsync(2)` of `path`
/// alone (there, call [`sync_directory`] on each directory changed as well).
///
/// Errors: `path` cannot be opened, or the flush failed (`EIO`: the disk did not take the data; what was
/// written must not be promised).
pub fn sync_file_system(path: &Path) -> io::Result<()> {
    let handle = File::open(path)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        rustix::fs::syncfs(&handle)?;
        Ok(())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        handle.sync_all()
    }
}

/// Flushes the entries of directory `dir`: files created, renamed into or out of it, or removed
/// (`fsync(2)` of the directory; a rename is durable once both directories are flushed).
///
/// Errors: `dir` cannot be opened, or the flush failed.
pub fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and the directories above it that are missing, readable by this user only (`0700` on
/// Unix): a role's state (logs, positions, databases) is nobody else's business. Directories that exist
/// keep their mode.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|error| {
        // `mkdir -p` over a file says only "File exists" or "Not a directory"; name the entry in the way.
        let blocking = match error.kind() {
            io::ErrorKind::AlreadyExists if !dir.is_dir() => Some(dir),
            io::ErrorKind::NotADirectory => dir.ancestors().skip(1).find(|a| a.exists() && !a.is_dir()),
            _ => None,
        };
        match blocking {
            Some(entry) => io::Error::new(
                io::ErrorKind::NotADirectory,
                format!(
                    "{} is not a directory (a file or another kind of entry is there)",
                    entry.display()
                ),
            ),
            None => error,
        }
    })
}

/// Writes `contents` to `path` durably: to a temporary file beside it, flushed, renamed over `path`, and
/// the directory flushed, so that a crash leaves the old file or the new one, never a partial one.
///
/// Errors: any of those steps failed (the temporary file is removed).
pub fn write_durably(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a file name is needed"))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(format!(".{}.tmp", std::process::id()));
    let temporary = parent.join(temporary_name);
    let written = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    remove_stale_temporaries(parent, name);
    sync_directory(parent)
}

/// Removes the temporary files that earlier writes of `name` in `dir` left behind when their process was
/// killed between creating and renaming them (`.NAME.PID.tmp` of a process that is gone). Only on Linux,
/// where `/proc` tells which processes live; elsewhere they stay (and are harmless).
fn remove_stale_temporaries(dir: &Path, name: &std::ffi::OsStr) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Some(name) = name.to_str() else {
        return;
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_directory_over_a_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cache");
        std::fs::write(&file, b"not a directory").expect("file");
        let error = create_private_dir(&file).expect_err("a file is there");
        assert_eq!(error.kind(), io::ErrorKind::NotADirectory);
        assert!(error.to_string().contains("is not a directory"), "{error}");
        assert_eq!(std::fs::read(&file).expect("read"), b"not a directory", "left alone");
        let under = create_private_dir(&file.join("sub/dir")).expect_err("under a file");
        assert!(
            under
                .to_string()
                .starts_with(&format!("{} is not a directory", file.display())),
            "{under}"
        );
        create_private_dir(&dir.path().join("a/b")).expect("made");
        create_private_dir(&dir.path().join("a/b")).expect("there already");
    }

    #[test]
    fn a_durable_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        write_durably(&path, b"one").expect("first");
        write_durably(&path, b"two").expect("second");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state")]);
        sync_file_system(dir.path()).expect("syncfs");
        sync_directory(dir.path()).expect("fsync");
    }

    #[test]
    fn a_temporary_left_by_a_killed_writer_goes_with_the_next_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state");
        // A process killed between creating and renaming its temporary (pid 0 never names a process
        // in /proc), and one of a live process (ours, as if written concurrently), which stays.
        let stale = dir.path().join(".state.0.tmp");
        let live = dir.path().join(format!(".state.{}.tmp.other", std::process::id()));
        std::fs::write(&stale, b"half").expect("write");
        std::fs::write(&live, b"not ours to judge").expect("write");
        write_durably(&path, b"new").expect("written");
        assert!(
            !stale.exists() || !Path::new("/proc/self").exists(),
            "the stale temporary is removed"
        );
        assert!(live.exists(), "a file that is not a temporary of this name stays");
    }

    #[test]
    fn a_write_that_cannot_be_placed_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory in the way: the rename fails, the temporary file goes.
        let path = dir.path().join("taken");
        std::fs::create_dir(path.join("")).expect("dir");
        std::fs::write(path.join("inside"), b"x").expect("write");
        assert!(write_durably(&path, b"new").is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("taken")]);
        assert!(sync_file_system(&dir.path().join("missing")).is_err());
    }
}
