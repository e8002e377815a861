//! The content interpreter (seed 004): applies a verified assignment's commands to a hosted site.
//!
//! Layout of a site under the node's root, `DIR/<site>/`:
//!
//! ```text
//! live      -> versions/<sequence>-<id>     symbolic link: what is served
//! backup    -> versions/<sequence>-<id>     symbolic link: the previous version, for rollback
//! temp/                                      the tree being prepared (the seed's temp)
//! next-<version>/                            a hard-linked copy of live, made while idle (below)
//! versions/                                  committed trees: live, backup, and those superseded
//!                                            less than a grace period ago
//! .trash-*                                   superseded versions being deleted
//! ```
//!
//! Commands are applied to `temp`, which starts as a copy of the live tree made with hard links (cheap);
//! files are never changed in place — every write goes to a new file that is renamed over the old name,
//! and chmod copies the file first — so the live tree sharing those inodes never changes. `commit` moves
//! `temp` into `versions/` and switches `live` with one rename(2) of a symbolic link: a reader sees the
//! whole old site or the whole new one, never a missing or mixed one. `rollback` switches back the same way.
//!
//! Work that is not needed for the switch is kept off the publish path: after a switch, [`Interpreter::tidy`]
//! (which the agent runs once it has answered, and again when the grace period is over) deletes superseded
//! versions and links the next temp tree from the new live one, so the next publish starts from a ready
//! tree instead of linking thousands of files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tern_wire::assignment::{Assignment, AssignmentKind, Command, Compression, DataRef};
use tracing::info;

use crate::paths::{PathError, resolve};

/// Why an assignment could not be applied. The live site is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The site name is not a plain name.
    #[error("site name `{0}` is not a plain name")]
    SiteName(String),
    /// A command's path was refused.
    #[error("command {index} ({op}): path `{path}` refused: {reason}")]
    Path {
        /// Which command.
        index: usize,
        /// Its operation.
        op: &'static str,
        /// The path.
        path: String,
        /// Why.
        reason: PathError,
    },
    /// The file a patch applies to is not the one the delta was made against.
    #[error("command {index}: `{path}` is not the version the patch was made for")]
    BaseMismatch {
        /// Which command.
        index: usize,
        /// The path.
        path: String,
    },
    /// A resulting file does not have the declared size and hash.
    #[error("command {index}: `{path}` does not match its declared size and hash")]
    ContentMismatch {
        /// Which command.
        index: usize,
        /// The path.
        path: String,
    },
    /// Nothing to roll back to.
    #[error("no backup version to roll back to")]
    NoBackup,
    /// A file-system operation failed.
    #[error("command {index} ({op}): {source}")]
    Io {
        /// Which command.
        index: usize,
        /// Its operation.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// What an applied assignment did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Commands applied.
    pub commands: usize,
    /// The version now live, if the assignment committed or rolled back.
    pub live: Option<String>,
}

/// Applies assignments under a node's root directory.
#[derive(Debug)]
pub struct Interpreter {
    root: PathBuf,
    /// One lock per site: an assignment and the tidying after a switch never work on a site at once.
    sites: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    static PID: OnceLock<u32> = OnceLock::new();
    format!(
        "{prefix}{}-{}",
        PID.get_or_init(std::process::id),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The prefix of a ready copy of a live version, `next-<version directory name>`.
const NEXT: &str = "next-";
/// The prefix of superseded versions waiting to be deleted.
const TRASH: &str = ".trash-";
/// How long a version that stopped being live is kept for readers that resolved `live` before the switch
/// (a reader holding an open file is safe regardless; this covers one that resolved the path and has yet
/// to open the next file of a read set).
pub const SUPERSEDED_GRACE: Duration = Duration::from_secs(60);

impl Interpreter {
    /// An interpreter for sites under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Interpreter {
            root: root.into(),
            sites: Mutex::new(HashMap::new()),
        }
    }

    fn site_lock(&self, site: &str) -> Arc<Mutex<()>> {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        sites.entry(site.to_string()).or_default().clone()
    }

    /// Work after a switch, off the publish path: links a copy of the live tree as the next temp tree, and
    /// deletes the versions that are neither live nor backup and stopped being live over
    /// [`SUPERSEDED_GRACE`] ago. Blocking; safe to skip or interrupt (a missing or partial copy is simply
    /// not used, a version not yet deleted is deleted next time).
    pub fn tidy(&self, site: &str) -> std::io::Result<()> {
        self.tidy_with_grace(site, SUPERSEDED_GRACE)
    }

    /// [`Interpreter::tidy`] with another grace period for superseded versions.
    pub fn tidy_with_grace(&self, site: &str, grace: Duration) -> std::io::Result<()> {
        let site_dir = self.site_dir(site).map_err(std::io::Error::other)?;
        {
            let lock = self.site_lock(site);
            let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
            retire_superseded(&site_dir, grace)?;
            prepare_next(&site_dir)?;
        }
        // The retired versions were moved aside under the lock; deleting them (thousands of files) does
        // not hold up the next assignment.
        for entry in std::fs::read_dir(&site_dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TRASH) {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }

    /// The directory of a site.
    pub fn site_dir(&self, site: &str) -> Result<PathBuf, ApplyError> {
        let plain = !site.is_empty()
            && site != "."
            && site != ".."
            && site
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !plain {
            return Err(ApplyError::SiteName(site.to_string()));
        }
        Ok(self.root.join(site))
    }

    /// The directory currently live for `site`, if any.
    pub fn live(&self, site: &str) -> Option<PathBuf> {
        let link = self.site_dir(site).ok()?.join("live");
        std::fs::read_link(&link)
            .ok()
            .map(|target| link.parent().map(|p| p.join(&target)).unwrap_or(target))
    }

    /// Applies `assignment` (already verified by `tern_wire::assignment::decode`). Blocking.
    pub fn apply(&self, assignment: &Assignment) -> Result<Applied, ApplyError> {
        let site_dir = self.site_dir(&assignment.header.site)?;
        let lock = self.site_lock(&assignment.header.site);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        let io = |index: usize, op: &'static str| move |source: std::io::Error| ApplyError::Io { index, op, source };
        if assignment.header.kind == AssignmentKind::Remove {
            // The site goes at once (one rename out of the root), then its files are deleted.
            if site_dir.exists() {
                let trash = self.root.join(unique(&format!(".removed-{}-", assignment.header.site)));
                std::fs::rename(&site_dir, &trash).map_err(io(0, "remove"))?;
                std::fs::remove_dir_all(&trash).map_err(io(0, "remove"))?;
            }
            info!(site = %assignment.header.site, id = %assignment.header.id, "site removed");
            return Ok(Applied::default());
        }
        std::fs::create_dir_all(site_dir.join("versions")).map_err(io(0, "prepare"))?;
        let temp = site_dir.join("temp");
        // An assignment with content commands prepares a fresh temp tree; a commit-only assignment (the
        // second phase, sent once every node has reported its content applied) uses the tree prepared before.
        let has_content = assignment
            .commands
            .iter()
            .any(|c| !matches!(c, Command::Commit | Command::Rollback));
        let commits = assignment.commands.iter().any(|c| matches!(c, Command::Commit));
        if commits && !has_content && !temp.is_dir() {
            return Err(ApplyError::Io {
                index: 0,
                op: "commit",
                source: std::io::Error::other("no prepared version to commit"),
            });
        }
        if has_content {
            // A full copy starts from nothing; everything else from the live tree.
            let full_copy = matches!(
                assignment.header.kind,
                AssignmentKind::Replicate | AssignmentKind::Restore
            );
            let base = if full_copy {
                None
            } else {
                self.live(&assignment.header.site)
            };
            prepare_temp(&site_dir, &temp, base.as_deref()).map_err(io(0, "prepare"))?;
        }
        let mut unpacker = Unpacker::new();
        let mut applied = Applied::default();
        for (index, command) in assignment.commands.iter().enumerate() {
            match command {
                Command::Mkdir { path } => {
                    let target = checked(&temp, path, false, index, "mkdir")?;
                    std::fs::create_dir_all(target).map_err(io(index, "mkdir"))?;
                }
                Command::Create { path, mode, data } => {
                    let target = checked(&temp, path, false, index, "create")?;
                    let content = unpacker.content(assignment, data).map_err(|_| mismatch(index, path))?;
                    write_new(&target, content, *mode).map_err(io(index, "create"))?;
                }
                Command::Patch { path, base_hash, data } => {
                    let target = checked(&temp, path, false, index, "patch")?;
                    let old = std::fs::read(&target).map_err(io(index, "patch"))?;
                    // A delta that happens to rebuild the file from a wrong base would pass the result's
                    // check; the base is checked too, since it means this node is not where the mover
                    // thinks it is.
                    if blake3::hash(&old).to_hex().as_str() != base_hash {
                        return Err(ApplyError::BaseMismatch {
                            index,
                            path: path.clone(),
                        });
                    }
                    let new = unpacker
                        .patched(assignment, &old, data)
                        .map_err(|_| mismatch(index, path))?;
                    let mode = tern_tree::file_mode(&target);
                    write_new(&target, new, mode).map_err(io(index, "patch"))?;
                }
                Command::Chmod { path, mode } => {
                    let target = checked(&temp, path, false, index, "chmod")?;
                    chmod(&target, *mode).map_err(io(index, "chmod"))?;
                }
                Command::Remove { path } => {
                    let target = checked(&temp, path, true, index, "remove")?;
                    match std::fs::symlink_metadata(&target) {
                        Ok(metadata) if metadata.is_dir() => {
                            std::fs::remove_dir_all(&target).map_err(io(index, "remove"))?
                        }
                        Ok(_) => std::fs::remove_file(&target).map_err(io(index, "remove"))?,
                        Err(_) => {}
                    }
                }
                Command::Rename { from, to } => {
                    let source = checked(&temp, from, false, index, "rename")?;
                    let target = checked(&temp, to, false, index, "rename")?;
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(io(index, "rename"))?;
                    }
                    std::fs::rename(source, target).map_err(io(index, "rename"))?;
                }
                Command::Commit => {
                    let name = format!("{}-{}", assignment.header.sequence, sanitize(&assignment.header.id));
                    let version = site_dir.join("versions").join(&name);
                    if version.exists() {
                        std::fs::remove_dir_all(&version).map_err(io(index, "commit"))?;
                    }
                    std::fs::rename(&temp, &version).map_err(io(index, "commit"))?;
                    switch(&site_dir, &format!("versions/{name}")).map_err(io(index, "commit"))?;
                    applied.live = Some(name);
                }
                Command::Rollback => {
                    let backup = std::fs::read_link(site_dir.join("backup")).map_err(|_| ApplyError::NoBackup)?;
                    let target = backup.to_string_lossy().to_string();
                    switch(&site_dir, &target).map_err(io(index, "rollback"))?;
                    applied.live = Some(target);
                }
            }
            applied.commands += 1;
        }
        info!(site = %assignment.header.site, id = %assignment.header.id, commands = applied.commands, live = ?applied.live, "assignment applied");
        Ok(applied)
    }
}

fn checked(
    base: &Path,
    path: &str,
    final_may_be_link: bool,
    index: usize,
    op: &'static str,
) -> Result<PathBuf, ApplyError> {
    resolve(base, path, final_may_be_link).map_err(|reason| ApplyError::Path {
        index,
        op,
        path: path.to_string(),
        reason,
    })
}

fn mismatch(index: usize, path: &str) -> ApplyError {
    ApplyError::ContentMismatch {
        index,
        path: path.to_string(),
    }
}

/// Turns stored bytes into file content, with one zstd context and one buffer for a whole assignment.
struct Unpacker {
    zstd: tern_wire::assignment::Unpacker,
    buffer: Vec<u8>,
}

impl Unpacker {
    fn new() -> Self {
        Unpacker {
            zstd: tern_wire::assignment::Unpacker::new(),
            buffer: Vec::new(),
        }
    }

    /// The content of a create command. Stored bytes are the content itself, covered by the assignment's
    /// signed hash; decompressed bytes are checked against their declared size and hash, since they are
    /// what a decoder made of the signed bytes.
    fn content<'a>(&'a mut self, assignment: &'a Assignment, data: &DataRef) -> std::io::Result<&'a [u8]> {
        let stored = assignment.bytes(data);
        match data.compression {
            Compression::None if stored.len() as u64 == data.size => Ok(stored),
            Compression::None => Err(std::io::Error::other("stored size differs")),
            Compression::Zstd => {
                self.zstd.decompress(stored, data.size, &mut self.buffer)?;
                verify(&self.buffer, data)?;
                Ok(&self.buffer)
            }
        }
    }

    /// The result of a patch command applied to `old`, checked against its declared size and hash.
    fn patched(&mut self, assignment: &Assignment, old: &[u8], data: &DataRef) -> std::io::Result<&[u8]> {
        self.zstd
            .apply_delta(old, assignment.bytes(data), data.size, &mut self.buffer)?;
        verify(&self.buffer, data)?;
        Ok(&self.buffer)
    }
}

fn verify(content: &[u8], data: &DataRef) -> std::io::Result<()> {
    if content.len() as u64 != data.size || blake3::hash(content).to_hex().as_str() != data.hash {
        return Err(std::io::Error::other("content differs from its declared size and hash"));
    }
    Ok(())
}

/// Changes a file's permission bits. A file still shared with the live tree (a hard link) is copied first,
/// so live never changes; a file this assignment wrote is changed in place.
fn chmod(target: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if std::fs::metadata(target)?.nlink() == 1 {
            return std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode & 0o7777));
        }
    }
    let content = std::fs::read(target)?;
    write_new(target, &content, Some(mode))
}

/// Writes `content` as a new file at `target` without modifying any existing inode: a new name is created
/// directly (never following a link there); an existing file, which may share its inode with the live tree,
/// is replaced by a new file renamed over it.
fn write_new(target: &Path, content: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let parent = target
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    match create_file(target, content, mode) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(parent)?;
            create_file(target, content, mode)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let temp = parent.join(unique(".tern-new-"));
            create_file(&temp, content, mode)?;
            std::fs::rename(&temp, target)
        }
        other => other,
    }
}

/// Creates a file that must not exist yet (`O_EXCL`: a symbolic link at the name is refused, not followed).
fn create_file(path: &Path, content: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The mode is set after the write as well: the process umask may narrow the mode given at open.
        options.mode(mode.unwrap_or(0o644) & 0o7777);
    }
    let mut file = options.open(path)?;
    file.write_all(content)?;
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    }
    Ok(())
}

/// Makes `temp` a hard-linked copy of the live tree (or empty without one), removing a leftover first. A
/// copy [`Interpreter::tidy`] made of this very live version is taken as it is.
fn prepare_temp(site_dir: &Path, temp: &Path, live: Option<&Path>) -> std::io::Result<()> {
    if std::fs::symlink_metadata(temp).is_ok() {
        std::fs::remove_dir_all(temp)?;
    }
    if let Some(name) = live.and_then(Path::file_name) {
        let ready = site_dir.join(format!("{NEXT}{}", name.to_string_lossy()));
        if std::fs::rename(&ready, temp).is_ok() {
            return Ok(());
        }
    }
    std::fs::create_dir_all(temp)?;
    if let Some(live) = live {
        link_tree(live, temp)?;
    }
    Ok(())
}

fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            std::fs::create_dir(&target)?;
            link_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::hard_link(entry.path(), &target)?;
        }
        // Symbolic links inside a site are not carried over: the mover never creates them.
    }
    Ok(())
}

/// Points `live` at `target` (relative to the site directory) with one rename, and `backup` at what `live`
/// pointed to before. The version that stops being live is stamped with the time (its directory's
/// modification time, which nothing else changes once a version is committed): a reader that resolved
/// `live` just before may still be reading it, so [`Interpreter::tidy`] deletes it only a grace period later.
fn switch(site_dir: &Path, target: &str) -> std::io::Result<()> {
    let live = site_dir.join("live");
    let previous = std::fs::read_link(&live).ok();
    let staged = site_dir.join(unique(".live-"));
    make_symlink(Path::new(target), &staged)?;
    std::fs::rename(&staged, &live)?;
    if let Some(previous) = previous.filter(|p| p.as_os_str() != target) {
        let staged = site_dir.join(unique(".backup-"));
        make_symlink(&previous, &staged)?;
        std::fs::rename(&staged, site_dir.join("backup"))?;
        if let Ok(directory) = std::fs::File::open(site_dir.join(&previous)) {
            let _ = directory.set_modified(SystemTime::now());
        }
    }
    Ok(())
}

/// Moves the versions that are neither live nor backup and stopped being live over `grace` ago to
/// `.trash-*` (one rename each), for deletion outside the site lock.
fn retire_superseded(site_dir: &Path, grace: Duration) -> std::io::Result<()> {
    let keep: Vec<PathBuf> = ["live", "backup"]
        .iter()
        .filter_map(|name| std::fs::read_link(site_dir.join(name)).ok())
        .collect();
    let Ok(entries) = std::fs::read_dir(site_dir.join("versions")) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let relative = Path::new("versions").join(entry.file_name());
        let superseded_for = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .unwrap_or(Duration::ZERO);
        if !keep.contains(&relative) && superseded_for >= grace {
            std::fs::rename(entry.path(), site_dir.join(unique(TRASH)))?;
        }
    }
    Ok(())
}

/// Links the live tree as `next-<live version>` unless that is there already; drops stale copies.
fn prepare_next(site_dir: &Path) -> std::io::Result<()> {
    let live = std::fs::read_link(site_dir.join("live")).ok();
    let wanted = live
        .as_ref()
        .and_then(|target| target.file_name())
        .map(|name| format!("{NEXT}{}", name.to_string_lossy()));
    let mut ready = false;
    for entry in std::fs::read_dir(site_dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if Some(&name) == wanted.as_ref() {
            ready = true;
        } else if name.starts_with(NEXT) || name.starts_with(".next-") {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    if let (Some(target), Some(wanted), false) = (live, wanted, ready) {
        // Built under a scratch name and renamed when whole, so a crash never leaves a partial copy
        // under the name that is used.
        let building = site_dir.join(unique(".next-"));
        std::fs::create_dir(&building)?;
        link_tree(&site_dir.join(target), &building)?;
        std::fs::rename(&building, site_dir.join(wanted))?;
    }
    Ok(())
}

fn make_symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(target, link)
    }
    #[cfg(not(unix))]
    {
        let _ = (target, link);
        Err(std::io::Error::other("symbolic links need a Unix system"))
    }
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .take(64)
        .collect()
}
