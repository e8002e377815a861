//! Writing one entry of the temp tree exactly as the assignment describes it — content, permission bits,
//! modification time, link target — without changing any inode the live tree shares (temp starts as a
//! hard-linked copy of live): a new file is written beside the old name and renamed over it, and metadata
//! is only changed in place on an inode nobody else holds.
//!
//! Directories are the exception to "apply at once": writing an entry into a directory changes its time,
//! and a read-only directory refuses the write. [`Directories`] records every directory before the first
//! write into it (opening it for writing meanwhile) and applies modes and times once all the assignment's
//! other commands are done: the ones the assignment gives, else the ones the directory had.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use tern_tree::{mode_bits, mtime_ns, remove_tree, set_file_metadata, set_mode, set_mtime};

use super::unique;

/// Directories written into or given a mode or time by an assignment, set right at its end.
#[derive(Debug, Default)]
pub(super) struct Directories {
    /// Mode and time of each directory before the first write into it.
    found: BTreeMap<PathBuf, (u32, i64)>,
    /// Mode and time commands gave directories.
    given: BTreeMap<PathBuf, (Option<u32>, Option<i64>)>,
}

impl Directories {
    /// Records the directory holding `path` before something is written into it.
    pub(super) fn before_writing_beside(&mut self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) => self.before_writing_into(parent),
            None => Ok(()),
        }
    }

    /// Records `dir`'s mode and time before the first write into it, and opens it to its owner meanwhile.
    pub(super) fn before_writing_into(&mut self, dir: &Path) -> io::Result<()> {
        if self.found.contains_key(dir) {
            return Ok(());
        }
        let metadata = match std::fs::symlink_metadata(dir) {
            Ok(metadata) if metadata.is_dir() => metadata,
            Ok(_) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        let mode = mode_bits(&metadata);
        self.found.insert(dir.to_path_buf(), (mode, mtime_ns(&metadata)));
        if mode & 0o700 != 0o700 {
            set_mode(dir, mode | 0o700)?;
        }
        Ok(())
    }

    /// A mode and time for `dir`, set at the end.
    pub(super) fn give(&mut self, dir: &Path, mode: Option<u32>, mtime_ns: Option<i64>) {
        let given = self.given.entry(dir.to_path_buf()).or_default();
        if mode.is_some() {
            given.0 = mode;
        }
        if mtime_ns.is_some() {
            given.1 = mtime_ns;
        }
    }

    /// Sets every recorded directory's mode and time (given, else as found); directories removed since
    /// are skipped. Deepest first, though setting a directory's metadata does not change its parent's.
    pub(super) fn finish(&mut self) -> io::Result<()> {
        let mut wanted: BTreeMap<PathBuf, (Option<u32>, Option<i64>)> = std::mem::take(&mut self.found)
            .into_iter()
            .map(|(dir, (mode, mtime))| (dir, (Some(mode), Some(mtime))))
            .collect();
        for (dir, (mode, mtime)) in std::mem::take(&mut self.given) {
            let entry = wanted.entry(dir).or_default();
            if mode.is_some() {
                entry.0 = mode;
            }
            if mtime.is_some() {
                entry.1 = mtime;
            }
        }
        for (dir, (mode, mtime)) in wanted.iter().rev() {
            if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            if let Some(mode) = mode {
                set_mode(dir, *mode)?;
            }
            if let Some(mtime) = mtime {
                set_mtime(dir, *mtime)?;
            }
        }
        Ok(())
    }
}

/// Writes `content` as a new file at `target` without modifying any existing inode: a new name is created
/// directly (never following a link there); an existing file, which may share its inode with the live tree,
/// is replaced by a new file renamed over it. The mode and time are set before the file gets its name.
pub(super) fn write_new(target: &Path, content: &[u8], mode: Option<u32>, mtime: Option<i64>) -> io::Result<()> {
    write_new_with(target, mode, mtime, |file| file.write_all(content))
}

/// [`write_new`] with the content written by `fill` (a stream, never whole in memory). A `fill` that fails
/// leaves what it wrote in the temporary tree, which the failed assignment does not make live.
pub(super) fn write_new_with(
    target: &Path,
    mode: Option<u32>,
    mtime: Option<i64>,
    mut fill: impl FnMut(&mut dyn io::Write) -> io::Result<()>,
) -> io::Result<()> {
    let parent = target.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    match create_file(target, &mut fill, mode, mtime) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(parent)?;
            create_file(target, &mut fill, mode, mtime)
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let temp = parent.join(unique(".tern-new-"));
            create_file(&temp, &mut fill, mode, mtime)?;
            std::fs::rename(&temp, target)
        }
        other => other,
    }
}

/// Creates a file that must not exist yet (`O_EXCL`: a symbolic link at the name is refused, not followed),
/// its content written by `fill`.
fn create_file(
    path: &Path,
    fill: &mut impl FnMut(&mut dyn io::Write) -> io::Result<()>,
    mode: Option<u32>,
    mtime: Option<i64>,
) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The mode is set after the write as well: the process umask may narrow the mode given at open.
        options.mode(mode.unwrap_or(0o644) & 0o7777);
    }
    let mut file = options.open(path)?;
    // Not buffered: both fillers write large pieces (a whole patched file, or 128 KiB of a stream at a time,
    // `tern_wire::assignment::Assignment::unpack_to`); a buffer would copy every byte once more.
    fill(&mut file)?;
    // Through the descriptor: the path is not looked up twice more. The time last, after every write.
    set_file_metadata(&file, mode, mtime)
}

/// Why a copy failed.
#[derive(Debug)]
pub(super) enum CopyError {
    /// The source is not the file the mover planned with (absent, another kind, another content).
    NotTheSource,
    /// A file-system operation failed.
    Io(io::Error),
}

impl From<io::Error> for CopyError {
    fn from(error: io::Error) -> Self {
        CopyError::Io(error)
    }
}

/// Places at `target` the content of the live tree's file `source`, checked against `hash`, with `mode`
/// and `mtime` (absent: the source's). With the source's mode and time the new name is a hard link (the
/// content is not even read twice); otherwise a copy with its own metadata.
pub(super) fn copy_from(
    source: &Path,
    target: &Path,
    hash: &str,
    mode: Option<u32>,
    mtime: Option<i64>,
) -> Result<(), CopyError> {
    let metadata = match std::fs::symlink_metadata(source) {
        Ok(metadata) if metadata.is_file() => metadata,
        Ok(_) => return Err(CopyError::NotTheSource),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(CopyError::NotTheSource),
        Err(error) => return Err(error.into()),
    };
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(source)?)?;
    if hasher.finalize().to_hex().as_str() != hash {
        return Err(CopyError::NotTheSource);
    }
    let (source_mode, source_mtime) = (mode_bits(&metadata), mtime_ns(&metadata));
    let (mode, mtime) = (mode.unwrap_or(source_mode), mtime.unwrap_or(source_mtime));
    let parent = target.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(parent)?;
    let staged = parent.join(unique(".tern-new-"));
    let linked = mode == source_mode && mtime == source_mtime && std::fs::hard_link(source, &staged).is_ok();
    if !linked {
        std::fs::copy(source, &staged)?;
        set_mode(&staged, mode)?;
        set_mtime(&staged, mtime)?;
    }
    if std::fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
        remove_tree(target)?;
    }
    std::fs::rename(&staged, target)?;
    Ok(())
}

/// Makes `target` a symbolic link to `link_target` (already checked to stay inside the root), replacing
/// what is there, with the link's own time.
pub(super) fn place_link(target: &Path, link_target: &str, mtime: Option<i64>) -> io::Result<()> {
    let parent = target.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
    let staged = parent.join(unique(".tern-link-"));
    make_symlink(Path::new(link_target), &staged)?;
    if let Some(mtime) = mtime {
        set_mtime(&staged, mtime)?;
    }
    if std::fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
        remove_tree(target)?;
    }
    std::fs::rename(&staged, target)
}

/// Gives the file or link at `target` this mode (not for links) and time. A file still shared with the
/// live tree (a hard link) is copied first, with its metadata, so live never changes; directories are left
/// to [`Directories`] by the caller.
pub(super) fn set_metadata(target: &Path, mode: Option<u32>, mtime: Option<i64>) -> io::Result<()> {
    let metadata = std::fs::symlink_metadata(target)?;
    if metadata.file_type().is_symlink() {
        return match mtime {
            Some(mtime) => set_mtime(target, mtime),
            None => Ok(()),
        };
    }
    if shared(&metadata) {
        let parent = target.parent().ok_or_else(|| io::Error::other("no parent directory"))?;
        let staged = parent.join(unique(".tern-new-"));
        std::fs::copy(target, &staged)?;
        tern_tree::copy_metadata(target, &staged)?;
        std::fs::rename(&staged, target)?;
    }
    if let Some(mode) = mode {
        set_mode(target, mode)?;
    }
    if let Some(mtime) = mtime {
        set_mtime(target, mtime)?;
    }
    Ok(())
}

fn shared(metadata: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        metadata.nlink() > 1
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        true
    }
}

/// Makes `to` a copy of the tree `from` with hard links for files, new links for links, and new directories
/// with `from`'s modes and times (set once each is filled).
pub(super) fn link_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            std::fs::create_dir(&target)?;
            link_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::hard_link(entry.path(), &target)?;
        } else if kind.is_symlink() {
            make_symlink(&std::fs::read_link(entry.path())?, &target)?;
            tern_tree::copy_metadata(&entry.path(), &target)?;
        }
        // Nothing else is ever made in a site.
    }
    tern_tree::copy_metadata(from, to)
}

/// Makes a symbolic link at `link` pointing to `target`.
pub(super) fn make_symlink(target: &Path, link: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, link)
    }
    #[cfg(not(unix))]
    {
        let _ = (target, link);
        Err(io::Error::other("symbolic links need a Unix system"))
    }
}
