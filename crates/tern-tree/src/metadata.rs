//! Reading and setting the metadata a snapshot keeps (permission bits, modification times) the same way on
//! the mover and on the nodes, and deleting trees whose directories may be read-only.

use std::io;
use std::path::Path;

/// Modification time of `metadata` in nanoseconds since the Unix epoch (negative before it, saturating
/// far from it).
pub fn mtime_ns(metadata: &std::fs::Metadata) -> i64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        metadata
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(metadata.mtime_nsec())
    }
    #[cfg(not(unix))]
    {
        match metadata.modified() {
            Ok(at) => match at.duration_since(std::time::UNIX_EPOCH) {
                Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
                Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
            },
            Err(_) => 0,
        }
    }
}

/// Permission bits of `metadata` (`0o7777`).
pub fn mode_bits(metadata: &std::fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        metadata.permissions().mode() & 0o7777
    }
    #[cfg(not(unix))]
    {
        if metadata.permissions().readonly() {
            0o444
        } else {
            0o644
        }
    }
}

/// Unix permission bits of a file (following a link).
pub fn file_mode(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| mode_bits(&m))
}

/// The permission bits a tree carries from staging to the nodes: everything but set-user-ID and
/// set-group-ID (`0o6000`). A web tree has no use for them, and whoever can write to a staging area must
/// not be able to plant privileged programs on every server (a node usually runs as root).
pub const CARRIED_MODE: u32 = 0o1777;

/// Sets the permission bits of `path` ([`CARRIED_MODE`]: never set-user-ID or set-group-ID), following a
/// link (set a link's target, never a link: links have no mode of their own on Linux).
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & CARRIED_MODE))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Sets the modification time of `path` to `mtime_ns` nanoseconds since the epoch, without following a
/// link (a link gets its own time, as `rsync -a` gives it) and leaving the access time as it is.
pub fn set_mtime(path: &Path, mtime_ns: i64) -> io::Result<()> {
    #[cfg(unix)]
    {
        use rustix::fs::{AtFlags, CWD, utimensat};
        utimensat(CWD, path, &modification_only(mtime_ns), AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)
    }
    #[cfg(not(unix))]
    {
        let at = if mtime_ns >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns as u64)
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_nanos(mtime_ns.unsigned_abs())
        };
        std::fs::File::options().write(true).open(path)?.set_modified(at)
    }
}

/// Times that set the modification time to `mtime_ns` nanoseconds since the epoch and leave the access
/// time as it is (`UTIME_OMIT`).
#[cfg(unix)]
fn modification_only(mtime_ns: i64) -> rustix::fs::Timestamps {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
        },
    }
}

/// Gives an open file the permission bits ([`CARRIED_MODE`]) and modification time (nanoseconds since
/// the epoch) given, each when `Some`, through its descriptor (`fchmod`, `futimens`): no path is looked up
/// again, and the umask does not narrow the mode. The access time is left as it is.
pub fn set_file_metadata(file: &std::fs::File, mode: Option<u32>, mtime_ns: Option<i64>) -> io::Result<()> {
    #[cfg(unix)]
    {
        use rustix::fs::{Mode, fchmod, futimens};
        if let Some(mode) = mode {
            fchmod(file, Mode::from_raw_mode(mode & CARRIED_MODE)).map_err(io::Error::from)?;
        }
        if let Some(mtime_ns) = mtime_ns {
            futimens(file, &modification_only(mtime_ns)).map_err(io::Error::from)?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        match mtime_ns {
            Some(mtime_ns) if mtime_ns >= 0 => {
                file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns as u64))
            }
            Some(mtime_ns) => {
                file.set_modified(std::time::UNIX_EPOCH - std::time::Duration::from_nanos(mtime_ns.unsigned_abs()))
            }
            None => Ok(()),
        }
    }
}

/// Gives `to` the permission bits (unless it is a link) and modification time of `from` (neither
/// followed).
pub fn copy_metadata(from: &Path, to: &Path) -> io::Result<()> {
    let metadata = std::fs::symlink_metadata(from)?;
    if !metadata.file_type().is_symlink() {
        set_mode(to, mode_bits(&metadata))?;
    }
    set_mtime(to, mtime_ns(&metadata))
}

/// Deletes the tree at `path` (a file or link is simply removed; nothing is followed). A faithful copy may
/// hold directories without write permission (`0o555`), whose entries an unprivileged process cannot
/// delete: when deletion is refused, every directory of the tree is made writable and deletion tried again.
/// A missing `path` is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    if !metadata.is_dir() {
        return std::fs::remove_file(path);
    }
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(path)?;
            std::fs::remove_dir_all(path)
        }
        other => other,
    }
}

/// Gives the owner full access to every directory of the tree at `dir`.
fn make_writable(dir: &Path) -> io::Result<()> {
    let metadata = std::fs::symlink_metadata(dir)?;
    let mode = mode_bits(&metadata);
    if mode & 0o700 != 0o700 {
        set_mode(dir, mode | 0o700)?;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_writable(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_set_to_the_nanosecond_and_on_links_themselves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, "x").expect("write");
        set_mtime(&file, 1_234_567_890_123_456_789).expect("set");
        let read = |path: &Path| mtime_ns(&std::fs::symlink_metadata(path).expect("stat"));
        assert_eq!(read(&file), 1_234_567_890_123_456_789);
        set_mtime(&file, -1_500_000_000).expect("before the epoch");
        assert_eq!(read(&file), -1_500_000_000);
        #[cfg(unix)]
        {
            let link = dir.path().join("l");
            std::os::unix::fs::symlink("f", &link).expect("symlink");
            set_mtime(&link, 42_000_000_007).expect("set on the link");
            assert_eq!(read(&link), 42_000_000_007);
            assert_eq!(read(&file), -1_500_000_000, "the target is not touched");
        }
    }

    #[test]
    fn a_tree_with_read_only_directories_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("t");
        std::fs::create_dir_all(tree.join("locked/inner")).expect("mkdir");
        std::fs::write(tree.join("locked/inner/f"), "x").expect("write");
        set_mode(&tree.join("locked/inner"), 0o555).expect("chmod");
        set_mode(&tree.join("locked"), 0o500).expect("chmod");
        remove_tree(&tree).expect("removed");
        assert!(!tree.exists());
        remove_tree(&tree).expect("a missing tree is not an error");
    }
}
