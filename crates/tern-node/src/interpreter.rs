//! The content interpreter (seed 004): applies a verified assignment's commands to a hosted site.
//!
//! Layout of a site under the node's root, `DIR/<site>/`:
//!
//! ```text
//! live      -> versions/<sequence>-<id>     symbolic link: what is served
//! backup    -> versions/<sequence>-<id>     symbolic link: the previous version, for rollback
//! temp/                                      the tree being prepared (the seed's temp)
//! temp.prepared                              the version `temp` holds, once whole (a commit must name it)
//! next-<version>/                            a hard-linked copy of live, made while idle (below)
//! versions/                                  committed trees: live, backup, and those superseded
//!                                            less than a grace period ago
//! .trash-*                                   superseded versions being deleted
//! .superseded/<version>                      empty files, stamped with when each version stopped being live
//! ```
//!
//! Commands are applied to `temp`, which starts as a copy of the live tree made with hard links (cheap);
//! files are never changed in place — every write goes to a new file that is renamed over the old name,
//! and a change of mode or time copies the file first — so the live tree sharing those inodes never
//! changes. The tree is made exactly as the assignment describes it: files, directories (also empty) and
//! symbolic links with their modes and modification times, so every node serves the same `Last-Modified`
//! and the same validators for the same file ([`entries`] says how; a directory's mode and time are applied
//! after the assignment's other commands, since writing into a directory changes its time). `commit` moves
//! `temp` into `versions/` and switches `live` with one rename(2) of a symbolic link: a reader sees the
//! whole old site or the whole new one, never a missing or mixed one. `rollback` switches back the same way.
//!
//! Work that is not needed for the switch is kept off the publish path: after a switch, [`Interpreter::tidy`]
//! (which the agent runs once it has answered, and again when the grace period is over) deletes superseded
//! versions and links the next temp tree from the new live one, so the next publish starts from a ready
//! tree instead of linking thousands of files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tern_tree::{remove_tree, sync_directory, sync_file_system};
use tern_wire::assignment::{Assignment, AssignmentKind, Command, DataRef};
use tracing::info;

use crate::paths::{PathError, resolve};

mod entries;
mod mark;

pub(crate) use mark::live_version;

use entries::{
    CopyError, Directories, copy_from, link_tree, make_symlink, place_link, set_metadata, write_new, write_new_with,
};

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
    /// A symbolic link whose target would leave the site root.
    #[error("command {index} (symlink): link `{path}` refused: {reason}")]
    Link {
        /// Which command.
        index: usize,
        /// The link's path.
        path: String,
        /// Why.
        reason: tern_tree::LinkError,
    },
    /// The file a copy takes its content from is not the one the mover planned with.
    #[error("command {index}: `{from}` in the live version is not the file the copy was planned from")]
    SourceMismatch {
        /// Which command.
        index: usize,
        /// The source path.
        from: String,
    },
    /// Nothing to roll back to.
    #[error("no backup version to roll back to")]
    NoBackup,
    /// The backup is another version than the one the rollback goes to (the node was brought up to date
    /// by a full copy, or missed a publish): switching to it would serve a version the others do not.
    #[error("the backup here is {held}, not version {wanted}, which the rollback goes to")]
    OtherBackup {
        /// The version the rollback goes to.
        wanted: u64,
        /// What the backup holds (`versions/NAME`).
        held: String,
    },
    /// A commit-only assignment named a version other than the one `temp` holds whole, or none is
    /// prepared: a commit never switches to a tree it was not meant for (a prepare that failed or was
    /// overtaken, a node that missed the prepare). Nothing was switched.
    #[error(
        "commit of version {asked} refused: {}; the mover brings this node up to date",
        prepared.map_or("no version is prepared".to_string(), |version| format!("the version prepared is {version}"))
    )]
    NotPrepared {
        /// The version `temp` holds, if a prepare finished.
        prepared: Option<u64>,
        /// The version the commit names.
        asked: u64,
    },
    /// The assignment is for an older version than one this node held (a replayed assignment, captured on
    /// its way to this or another node), or is a rollback issued before the switch it would undo.
    #[error(
        "{what} of site {site} refused: this node held version {held} (issued at {switched_ms} ms) already. \
         A replayed assignment, or a mover whose records went back; to accept it anyway, delete \
         ROOT/.state/marks/{site}"
    )]
    Stale {
        /// The site.
        site: String,
        /// What was refused: `version N`, or `a rollback issued at T ms`.
        what: String,
        /// The highest version held.
        held: u64,
        /// When the last switch applied was issued.
        switched_ms: u64,
    },
    /// The assignment changes another version than the one live here (a node that missed a publish, or
    /// whose catch-up failed): applying it would make a tree the mover never planned, a site with files
    /// missing that the mover counts as committed. Nothing was changed.
    #[error(
        "the assignment changes version {base} of site {site} and this node holds {}: nothing was changed; \
         the mover brings this node up to date when it registers again",
        live.map_or("no version of it".to_string(), |version| format!("version {version}"))
    )]
    NotAtBase {
        /// The site.
        site: String,
        /// The version the assignment was planned against.
        base: u64,
        /// The version live here, if any.
        live: Option<u64>,
    },
    /// A commit or rollback issued too long ago: switches are built by the mover when it sends them, so an
    /// old one is a replayed capture (or the mover's and this node's clocks are far apart).
    #[error(
        "{what} of site {site} refused: it was issued {age_s} s ago, and a node takes switches issued within \
         {limit_s} s (a replayed assignment; if it is not, check the clocks of the mover and this node)"
    )]
    Expired {
        /// The site.
        site: String,
        /// `a commit of version N` or `a rollback to version N`.
        what: String,
        /// Its age, seconds.
        age_s: u64,
        /// The limit, seconds.
        limit_s: u64,
    },
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
    /// The oldest a commit or rollback may be (by its `created_ms`), if limited
    /// ([`Interpreter::refusing_switches_older_than`]).
    max_switch_age: Option<Duration>,
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

/// How old a commit or rollback a node's agent takes at most ([`Interpreter::refusing_switches_older_than`]).
pub const MAX_SWITCH_AGE: Duration = Duration::from_secs(24 * 3600);

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
            max_switch_age: None,
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses commits and rollbacks issued more than `age` ago (by the system clock): a node that never
    /// held a site has no version mark, so this bounds how long a captured switch can be replayed to it.
    /// The mover builds each switch when it sends it; [`MAX_SWITCH_AGE`] leaves room for slow prepares and
    /// clocks apart.
    pub fn refusing_switches_older_than(mut self, age: Duration) -> Self {
        self.max_switch_age = Some(age);
        self
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
                remove_tree(&entry.path())?;
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

    /// The version each site's `temp` holds whole, waiting for its commit (`temp.prepared`), by site name;
    /// what a node registers as prepared, so the mover's catch-up sends the commit alone. Sites without a
    /// whole prepared tree are left out. Blocking (reads the root).
    pub fn prepared(&self) -> BTreeMap<String, u64> {
        let mut prepared = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return prepared;
        };
        for entry in entries.flatten() {
            let Some(site) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(site_dir) = self.site_dir(&site) else {
                continue;
            };
            if let Some(version) = read_prepared(&site_dir.join(PREPARED)).filter(|_| site_dir.join("temp").is_dir()) {
                prepared.insert(site, version);
            }
        }
        prepared
    }

    /// Applies `assignment` (already verified by `tern_wire::assignment::decode`). Blocking.
    pub fn apply(&self, assignment: &Assignment) -> Result<Applied, ApplyError> {
        let site_dir = self.site_dir(&assignment.header.site)?;
        let lock = self.site_lock(&assignment.header.site);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        let io = |index: usize, op: &'static str| move |source: std::io::Error| ApplyError::Io { index, op, source };
        let site = assignment.header.site.as_str();
        let mut held = mark::read(&self.root, site, &site_dir);
        let stale = |what: String| ApplyError::Stale {
            site: site.to_string(),
            what,
            held: held.high,
            switched_ms: held.switched_ms,
        };
        if assignment.header.kind == AssignmentKind::Remove && assignment.header.sequence < held.high {
            return Err(stale(format!("version {}", assignment.header.sequence)));
        }
        if assignment.header.kind == AssignmentKind::Remove {
            // The site goes at once (one rename out of the root), then its files are deleted.
            if site_dir.exists() {
                let trash = self.root.join(unique(&format!(".removed-{}-", assignment.header.site)));
                std::fs::rename(&site_dir, &trash).map_err(io(0, "remove"))?;
                // Gone for good before it is reported gone: a power cut must not bring it back to be served.
                sync_directory(&self.root).map_err(io(0, "remove"))?;
                remove_tree(&trash).map_err(io(0, "remove"))?;
            }
            // Kept after the site is gone: an old publish replayed later must not bring it back.
            held.high = held.high.max(assignment.header.sequence);
            mark::write(&self.root, site, held).map_err(io(0, "remove"))?;
            info!(site = %assignment.header.site, id = %assignment.header.id, "site removed");
            return Ok(Applied::default());
        }
        let temp = site_dir.join("temp");
        // An assignment with content commands prepares a fresh temp tree; a commit-only assignment (the
        // second phase, sent once every node has reported its content applied) uses the tree prepared before.
        let has_content = assignment
            .commands
            .iter()
            .any(|c| !matches!(c, Command::Commit | Command::Rollback | Command::CheckBackup));
        let commits = assignment.commands.iter().any(|c| matches!(c, Command::Commit));
        let rolls_back = assignment.commands.iter().any(|c| matches!(c, Command::Rollback));
        if (has_content || commits) && assignment.header.sequence < held.high {
            return Err(stale(format!("version {}", assignment.header.sequence)));
        }
        if rolls_back && assignment.header.created_ms < held.switched_ms {
            return Err(stale(format!(
                "a rollback issued at {} ms",
                assignment.header.created_ms
            )));
        }
        if let Some(limit) = self.max_switch_age
            && (commits || rolls_back)
        {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64);
            let age_ms = now_ms.saturating_sub(assignment.header.created_ms);
            if age_ms > limit.as_millis() as u64 {
                let kind = if commits { "a commit" } else { "a rollback" };
                return Err(ApplyError::Expired {
                    site: site.to_string(),
                    what: format!("{kind} of version {}", assignment.header.sequence),
                    age_s: age_ms / 1000,
                    limit_s: limit.as_secs(),
                });
            }
        }
        let prepared_marker = site_dir.join(PREPARED);
        if commits && !has_content {
            let prepared = read_prepared(&prepared_marker).filter(|_| temp.is_dir());
            if prepared != Some(assignment.header.sequence) {
                return Err(ApplyError::NotPrepared {
                    prepared,
                    asked: assignment.header.sequence,
                });
            }
        }
        // A full copy starts from nothing; everything else from the live tree, which `copy` commands also
        // take content from.
        let full_copy = matches!(
            assignment.header.kind,
            AssignmentKind::Replicate | AssignmentKind::Restore
        );
        let base = if full_copy {
            None
        } else {
            self.live(&assignment.header.site)
        };
        if has_content
            && !full_copy
            && let Some(wanted) = &assignment.header.base
        {
            let live = mark::live_version(&site_dir);
            // A base this node cannot read (another mover's notion of it) is not one it can check.
            let wanted = wanted.parse::<u64>().ok();
            if wanted.is_none() || live != wanted {
                return Err(ApplyError::NotAtBase {
                    site: site.to_string(),
                    base: wanted.unwrap_or(0),
                    live,
                });
            }
        }
        // Made once the assignment is taken: a refused one leaves nothing behind.
        std::fs::create_dir_all(site_dir.join("versions")).map_err(io(0, "prepare"))?;
        if has_content {
            // Whatever `temp` held is replaced: until this prepare is whole, no version is prepared.
            remove_marker(&prepared_marker).map_err(io(0, "prepare"))?;
            prepare_temp(&site_dir, &temp, base.as_deref()).map_err(io(0, "prepare"))?;
        }
        let mut unpacker = Unpacker::new();
        let mut applied = Applied::default();
        let mut directories = Directories::default();
        // Links made by this assignment: checked against the finished tree before it can go live.
        let mut links: Vec<(usize, &str, &str)> = Vec::new();
        for (index, command) in assignment.commands.iter().enumerate() {
            match command {
                Command::Mkdir { path, mode, mtime_ns } => {
                    let target = checked(&temp, path, false, index, "mkdir")?;
                    directories.before_writing_beside(&target).map_err(io(index, "mkdir"))?;
                    std::fs::create_dir_all(&target).map_err(io(index, "mkdir"))?;
                    directories.give(&target, *mode, *mtime_ns);
                }
                Command::Create {
                    path,
                    mode,
                    mtime_ns,
                    data,
                } => {
                    let target = checked(&temp, path, false, index, "create")?;
                    directories
                        .before_writing_beside(&target)
                        .map_err(io(index, "create"))?;
                    // Unpacked in a stream from the spool into the file: a file of any size costs no
                    // more memory than a small one.
                    write_new_with(&target, *mode, *mtime_ns, |file| {
                        assignment.unpack_to(data, &mut unpacker.zstd, file)
                    })
                    .map_err(|error| {
                        if error.kind() == std::io::ErrorKind::InvalidData {
                            mismatch(index, path)
                        } else {
                            io(index, "create")(error)
                        }
                    })?;
                }
                Command::Patch {
                    path,
                    base_hash,
                    mode,
                    mtime_ns,
                    data,
                } => {
                    let target = checked(&temp, path, false, index, "patch")?;
                    let old = std::fs::read(&target).map_err(io(index, "patch"))?;
                    // The result is checked against its signed size and hash, so what is written is right
                    // whatever the base was. The base is hashed only when the result is wrong, to say
                    // which it was: a base other than the mover's (this node is not where the mover
                    // thinks it is: its file was changed here) or damaged data. A base that differs only
                    // where the delta does not read still rebuilds the right file, which is taken.
                    let new = unpacker.patched(assignment, &old, data).map_err(|_| {
                        if blake3::hash(&old).to_hex().as_str() != base_hash {
                            ApplyError::BaseMismatch {
                                index,
                                path: path.clone(),
                            }
                        } else {
                            mismatch(index, path)
                        }
                    })?;
                    let mode = mode.or_else(|| tern_tree::file_mode(&target));
                    directories.before_writing_beside(&target).map_err(io(index, "patch"))?;
                    write_new(&target, new, mode, *mtime_ns).map_err(io(index, "patch"))?;
                }
                Command::Copy {
                    from,
                    to,
                    hash,
                    mode,
                    mtime_ns,
                } => {
                    let Some(live) = base.as_deref() else {
                        return Err(ApplyError::SourceMismatch {
                            index,
                            from: from.clone(),
                        });
                    };
                    let source = checked(live, from, false, index, "copy")?;
                    let target = checked(&temp, to, false, index, "copy")?;
                    directories.before_writing_beside(&target).map_err(io(index, "copy"))?;
                    copy_from(&source, &target, hash, *mode, *mtime_ns).map_err(|error| match error {
                        CopyError::NotTheSource => ApplyError::SourceMismatch {
                            index,
                            from: from.clone(),
                        },
                        CopyError::Io(source) => ApplyError::Io {
                            index,
                            op: "copy",
                            source,
                        },
                    })?;
                }
                Command::Symlink {
                    path,
                    target: link_target,
                    mtime_ns,
                } => {
                    let target = checked(&temp, path, true, index, "symlink")?;
                    tern_tree::check_link(path, link_target).map_err(|reason| ApplyError::Link {
                        index,
                        path: path.clone(),
                        reason,
                    })?;
                    directories
                        .before_writing_beside(&target)
                        .map_err(io(index, "symlink"))?;
                    place_link(&target, link_target, *mtime_ns).map_err(io(index, "symlink"))?;
                    links.push((index, path, link_target));
                }
                Command::SetMetadata { path, mode, mtime_ns } => {
                    // The empty path is the root itself.
                    let target = if path.is_empty() {
                        temp.clone()
                    } else {
                        checked(&temp, path, true, index, "set-metadata")?
                    };
                    change_metadata(&target, *mode, *mtime_ns, &mut directories).map_err(io(index, "set-metadata"))?;
                }
                Command::Chmod { path, mode } => {
                    let target = checked(&temp, path, false, index, "chmod")?;
                    change_metadata(&target, Some(*mode), None, &mut directories).map_err(io(index, "chmod"))?;
                }
                Command::Remove { path } => {
                    let target = checked(&temp, path, true, index, "remove")?;
                    directories
                        .before_writing_beside(&target)
                        .map_err(io(index, "remove"))?;
                    remove_tree(&target).map_err(io(index, "remove"))?;
                }
                Command::Rename { from, to } => {
                    let source = checked(&temp, from, false, index, "rename")?;
                    let target = checked(&temp, to, false, index, "rename")?;
                    directories
                        .before_writing_beside(&source)
                        .and_then(|()| directories.before_writing_beside(&target))
                        .map_err(io(index, "rename"))?;
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent).map_err(io(index, "rename"))?;
                    }
                    std::fs::rename(source, target).map_err(io(index, "rename"))?;
                }
                Command::Commit => {
                    directories.finish().map_err(io(index, "commit"))?;
                    links_stay_inside(&temp, &links)?;
                    // The tree is on disk before `live` can point at it (a no-op flush when a prepare
                    // flushed it already); the switch itself is flushed before the answer, below.
                    sync_file_system(&temp).map_err(io(index, "commit"))?;
                    let name = format!("{}-{}", assignment.header.sequence, sanitize(&assignment.header.id));
                    let version = site_dir.join("versions").join(&name);
                    remove_tree(&version).map_err(io(index, "commit"))?;
                    // Moving the tree to another parent may change its time on some file systems: it is put
                    // back as it was.
                    let root_time = std::fs::symlink_metadata(&temp).map(|m| tern_tree::mtime_ns(&m));
                    std::fs::rename(&temp, &version).map_err(io(index, "commit"))?;
                    if let Ok(root_time) = root_time {
                        tern_tree::set_mtime(&version, root_time).map_err(io(index, "commit"))?;
                    }
                    switch(&site_dir, &format!("versions/{name}")).map_err(io(index, "commit"))?;
                    remove_marker(&prepared_marker).map_err(io(index, "commit"))?;
                    applied.live = Some(name);
                }
                Command::Rollback => {
                    let target = backup_of(&site_dir, assignment.header.sequence)?;
                    switch(&site_dir, &target).map_err(io(index, "rollback"))?;
                    applied.live = Some(target);
                }
                Command::CheckBackup => {
                    backup_of(&site_dir, assignment.header.sequence)?;
                }
            }
            applied.commands += 1;
        }
        let last = assignment.commands.len();
        directories.finish().map_err(io(last, "finish"))?;
        if commits || rolls_back {
            held.high = held.high.max(assignment.header.sequence);
            held.switched_ms = held.switched_ms.max(assignment.header.created_ms);
            mark::write(&self.root, site, held).map_err(io(last, "mark"))?;
        }
        if has_content && !commits {
            // Prepared for a later commit (with a commit, the tree was checked before it went live).
            links_stay_inside(&temp, &links)?;
            std::fs::write(&prepared_marker, format!("{}\n", assignment.header.sequence))
                .map_err(io(last, "prepare"))?;
        }
        // What the node answers next ("prepared", "committed", "rolled back") is a promise the mover acts
        // on: it holds after a power cut (`tern_tree::durable` says why one flush of the file system).
        sync_file_system(&site_dir).map_err(io(last, "sync"))?;
        info!(site = %assignment.header.site, id = %assignment.header.id, commands = applied.commands, live = ?applied.live, "assignment applied");
        Ok(applied)
    }
}

/// The target of the site's `backup` link (`versions/SEQUENCE-ID`), when it is version `wanted`.
fn backup_of(site_dir: &Path, wanted: u64) -> Result<String, ApplyError> {
    let backup = std::fs::read_link(site_dir.join("backup")).map_err(|_| ApplyError::NoBackup)?;
    let target = backup.to_string_lossy().to_string();
    if !target.starts_with("versions/") || mark::version_of(&backup) != Some(wanted) {
        return Err(ApplyError::OtherBackup { wanted, held: target });
    }
    Ok(target)
}

/// Every link in `links` (command index, path, target) resolves inside `tree`: each name its target climbs
/// back out of with `..` is a real directory there, not a link (`tern_tree::check_link_with`; the text rule
/// alone cannot see that `self/..` leaves the root when `self` links to `.`). Checked once the tree is
/// complete, since a link may come before the directories its target names.
fn links_stay_inside(tree: &Path, links: &[(usize, &str, &str)]) -> Result<(), ApplyError> {
    for &(index, path, target) in links {
        let is_dir = |relative: &str| {
            std::fs::symlink_metadata(tree.join(relative)).is_ok_and(|metadata| metadata.file_type().is_dir())
        };
        tern_tree::check_link_with(path, target, is_dir).map_err(|reason| ApplyError::Link {
            index,
            path: path.to_string(),
            reason,
        })?;
    }
    Ok(())
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

/// Turns stored bytes into file content, with one zstd context and two buffers for a whole assignment: one
/// for stored bytes read from a spooled assignment's file (one file's worth at a time), one for content.
struct Unpacker {
    zstd: tern_wire::assignment::Unpacker,
    buffer: Vec<u8>,
    stored: Vec<u8>,
}

impl Unpacker {
    fn new() -> Self {
        Unpacker {
            zstd: tern_wire::assignment::Unpacker::new(),
            buffer: Vec::new(),
            stored: Vec::new(),
        }
    }

    /// The result of a patch command applied to `old`, checked against its declared size and hash.
    fn patched(&mut self, assignment: &Assignment, old: &[u8], data: &DataRef) -> std::io::Result<&[u8]> {
        let stored = assignment.stored(data, &mut self.stored)?;
        self.zstd.apply_delta(old, stored, data.size, &mut self.buffer)?;
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

/// Gives `target` a mode and time: a directory's are set at the end of the assignment, a file's or link's
/// at once ([`entries::set_metadata`]).
fn change_metadata(
    target: &Path,
    mode: Option<u32>,
    mtime_ns: Option<i64>,
    directories: &mut Directories,
) -> std::io::Result<()> {
    if std::fs::symlink_metadata(target)?.is_dir() {
        directories.give(target, mode, mtime_ns);
        return Ok(());
    }
    directories.before_writing_beside(target)?;
    set_metadata(target, mode, mtime_ns)
}

/// Makes `temp` a hard-linked copy of the live tree (or empty without one), removing a leftover first. A
/// copy [`Interpreter::tidy`] made of this very live version is taken as it is.
fn prepare_temp(site_dir: &Path, temp: &Path, live: Option<&Path>) -> std::io::Result<()> {
    remove_tree(temp)?;
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

/// The file in a site directory naming the version `temp` holds whole (written when a prepare finishes,
/// removed when one starts and at the commit).
const PREPARED: &str = "temp.prepared";

/// The version a prepared-version file names (`None`: no file, or not a version number).
fn read_prepared(marker: &Path) -> Option<u64> {
    std::fs::read_to_string(marker).ok()?.trim().parse().ok()
}

/// Removes the prepared-version file, if any.
fn remove_marker(marker: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(marker) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Where the stamps of superseded versions are, in a site directory.
const SUPERSEDED: &str = ".superseded";

/// Points `live` at `target` (relative to the site directory) with one rename, and `backup` at what `live`
/// pointed to before. The version that stops being live is stamped with the time (an empty file under
/// `.superseded/`, not the version's own directory, whose time is the site's): a reader that resolved `live`
/// just before may still be reading it, so [`Interpreter::tidy`] deletes it only a grace period later.
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
        if let Some(name) = previous.file_name() {
            let stamps = site_dir.join(SUPERSEDED);
            std::fs::create_dir_all(&stamps)?;
            // A new file each time, so its time is now even when the version was superseded before.
            let stamp = stamps.join(name);
            let _ = std::fs::remove_file(&stamp);
            std::fs::write(&stamp, b"")?;
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
    let stamps = site_dir.join(SUPERSEDED);
    for entry in entries.flatten() {
        let relative = Path::new("versions").join(entry.file_name());
        // A version superseded before stamps were kept has its stamp in its directory's time.
        let stamp = stamps.join(entry.file_name());
        let stamped = std::fs::metadata(&stamp).or_else(|_| entry.metadata());
        let superseded_for = stamped
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .unwrap_or(Duration::ZERO);
        if !keep.contains(&relative) && superseded_for >= grace {
            std::fs::rename(entry.path(), site_dir.join(unique(TRASH)))?;
            let _ = std::fs::remove_file(&stamp);
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
            remove_tree(&entry.path())?;
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

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .take(64)
        .collect()
}
