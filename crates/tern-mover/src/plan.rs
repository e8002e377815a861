//! Change detection and assignment planning (seed 004: the staging server, the shadow copy and the delta
//! function). The staging tree is compared with the shadow copy (the last published version) entry by entry
//! — kind, content (blake3), permission bits, modification time, link target — and the difference becomes
//! commands: removals first, then in path order new directories, new and changed files, links, and changes
//! of mode or time alone. Each new file is sent whole, each changed file as a zstd delta against its shadow
//! version when that is smaller than the whole file (measured per file: small files and rewritten files go
//! whole), and a file whose content the nodes already hold at another path (a rename, a copy) as a `copy`
//! command that costs no data. An unchanged tree plans no command at all.
//!
//! Nothing is skipped silently: every entry the site's rules admit is carried, and an entry that cannot be
//! (a link pointing outside the site root, a socket, a name that is not UTF-8) stops the plan with a message
//! naming it; a rule that excludes it is the way to publish the rest.
//!
//! Why zstd with the old file as reference prefix rather than rsync-style blocks: the mover holds both
//! versions, so it needs no block signatures from the node, and zstd finds matches at any offset and
//! entropy-codes the rest. A 100-byte change to a 10 MB file costs a few hundred bytes (test
//! `planning::a_small_change_to_a_large_file_sends_a_small_delta`).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use ed25519_dalek::SigningKey;
use tern_tree::{Change, Entry, Kind, ROOT, Snapshot, TreeChange, changes, check_link_in, scan};
use tern_wire::assignment::{AssignmentKind, Builder, Command, Metadata, Packer, Piece, STREAM_FROM};

use crate::payload::Payload;
use crate::rules::CompiledRules;

/// Files at least this large whose content the node holds at another path go as a `copy` command (about
/// 200 bytes of JSON); smaller ones cost about as much whole.
pub const COPY_MIN_SIZE: u64 = 512;

/// How files are carried.
#[derive(Debug, Clone)]
pub struct PlanPolicy {
    /// Extensions whose files are not compressed (already compressed formats).
    pub no_compression: Vec<String>,
    /// Files smaller than this are always sent whole.
    pub delta_min_size: u64,
    /// Encrypt the assignment with this key.
    pub encryption: Option<[u8; 32]>,
}

impl Default for PlanPolicy {
    fn default() -> Self {
        PlanPolicy {
            no_compression: [
                "jpg", "jpeg", "png", "gif", "webp", "avif", "gz", "br", "zst", "zip", "mp4", "webm", "woff2", "mp3",
            ]
            .iter()
            .map(|e| e.to_string())
            .collect(),
            delta_min_size: 4096,
            encryption: None,
        }
    }
}

impl PlanPolicy {
    fn compress(&self, path: &str) -> bool {
        let extension = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
        !self.no_compression.contains(&extension)
    }
}

/// What a plan carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Files sent whole.
    pub created: usize,
    /// Files sent as deltas.
    pub patched: usize,
    /// Files placed from content the nodes hold at another path (renames, copies): no data sent.
    pub copied: usize,
    /// Entries removed (a removed directory counts once).
    pub removed: usize,
    /// Directories made.
    pub directories: usize,
    /// Symbolic links made.
    pub links: usize,
    /// Entries whose mode or time alone changed.
    pub metadata: usize,
    /// Commands in the assignment: none means the tree is unchanged.
    pub commands: usize,
    /// Bytes of the changed and new files.
    pub content_bytes: u64,
    /// Bytes of the assignment.
    pub assignment_bytes: u64,
    /// Staged entries whose set-user-ID or set-group-ID bit was not carried ([`tern_tree::CARRIED_MODE`]).
    pub setid_cleared: usize,
    /// The first of them, for the warning.
    pub setid_first: Option<String>,
}

impl PlanStats {
    /// Whether the plan changes nothing: staging is what the nodes hold.
    pub fn is_unchanged(&self) -> bool {
        self.commands == 0
    }
}

/// A planned assignment.
#[derive(Debug)]
pub struct Plan {
    /// The signed assignment, in an unnamed scratch file beside the shadow copy.
    pub assignment: Payload,
    /// What it carries.
    pub stats: PlanStats,
    /// The staging tree it was planned from (the next shadow snapshot).
    pub snapshot: Snapshot,
}

/// Why planning failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A tree could not be read.
    #[error("{what} {path}: {source}")]
    Io {
        /// Which tree.
        what: &'static str,
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Entries of the staging tree that cannot be carried, each with the reason.
    #[error(
        "staging tree {staging}: {} cannot be published: {}; exclude them with a rule (`tern publish --exclude PATTERN`) or change them",
        count(*total),
        problems.join("; ")
    )]
    Refused {
        /// The staging tree.
        staging: String,
        /// How many entries cannot be carried.
        total: usize,
        /// One message per entry, naming it, for the first [`REFUSALS_NAMED`] of them (then how many more).
        problems: Vec<String>,
    },
    /// The assignment could not be built.
    #[error(transparent)]
    Assignment(#[from] tern_wire::assignment::AssignmentError),
}

fn count(entries: usize) -> String {
    if entries == 1 {
        "1 entry".to_string()
    } else {
        format!("{entries} entries")
    }
}

/// At most this many refused entries are named in one error.
const REFUSALS_NAMED: usize = 20;

/// Which publication an assignment is for.
#[derive(Debug, Clone, Copy)]
pub struct Publication<'a> {
    /// Assignment id.
    pub id: &'a str,
    /// Hosted site.
    pub site: &'a str,
    /// The site version it produces.
    pub sequence: u64,
    /// The version the shadow copy it is planned against is, which a node must hold to apply it (the
    /// header's `base`); none for a full copy or a site's first version.
    pub base: Option<u64>,
    /// When it was planned (ms since the epoch).
    pub created_ms: u64,
}

/// Plans the assignment taking the shadow copy (`shadow`, described by `shadow_snapshot`) to the staging
/// tree, for the publication's site and version. The commit is not included: the mover sends it once every node has
/// the content (two-phase), so all nodes switch at once.
pub fn plan(
    staging: &Path,
    shadow: &Path,
    shadow_snapshot: &Snapshot,
    publication: &Publication<'_>,
    policy: &PlanPolicy,
    signing: &SigningKey,
) -> Result<Plan, PlanError> {
    plan_site(
        staging,
        shadow,
        shadow_snapshot,
        publication,
        policy,
        signing,
        AssignmentKind::Publish,
        None,
    )
}

/// [`plan`] for any kind of assignment (a `replicate` or `restore` starts the node's tree empty: pass an
/// empty `shadow_snapshot`), publishing only the staging entries the site's `rules` admit (the others count
/// as absent, so one published before is removed).
#[allow(clippy::too_many_arguments)]
pub fn plan_site(
    staging: &Path,
    shadow: &Path,
    shadow_snapshot: &Snapshot,
    publication: &Publication<'_>,
    policy: &PlanPolicy,
    signing: &SigningKey,
    kind: AssignmentKind,
    rules: Option<&CompiledRules>,
) -> Result<Plan, PlanError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source: std::io::Error| PlanError::Io { what, path, source }
    };
    // The shadow snapshot was scanned from the previous staging tree: a file of the same staging directory
    // with the same size, mtime, change time and inode keeps its hash, so an unchanged tree is not read
    // again; any other (a rewrite with the mtime set back, another staging directory, a record without
    // stat data, an empty snapshot for a restore or a full copy) is read (`tern_tree::scan`).
    let scanned = scan(staging, shadow_snapshot).map_err(io("staging tree", staging))?;
    let (mut staged, mut unsupported) = (scanned.snapshot, scanned.unsupported);
    if let Some(rules) = rules {
        rules.filter(&mut staged);
        rules.filter_unsupported(&mut unsupported);
    }
    refuse_what_cannot_be_carried(staging, &staged, &unsupported)?;
    let mut stats = PlanStats::default();
    // Set-user-ID and set-group-ID bits stay in staging: nodes never get them (counted, for a warning).
    for (path, entry) in staged.iter_mut() {
        if entry.kind != Kind::Link && entry.mode & !tern_tree::CARRIED_MODE & 0o7777 != 0 {
            entry.mode &= tern_tree::CARRIED_MODE;
            stats.setid_cleared += 1;
            stats.setid_first.get_or_insert_with(|| path.clone());
        }
    }
    let mut builder = Builder::new(
        publication.id,
        kind,
        publication.site,
        publication.sequence,
        publication.base.map(|version| version.to_string()),
        publication.created_ms,
    );
    let found = changes(shadow_snapshot, &staged);
    let sources = copy_sources(shadow_snapshot);
    let mut steps = Vec::with_capacity(found.len());
    let removed: BTreeSet<&str> = found
        .iter()
        .filter(|c| matches!(c.change, Change::Removed | Change::Replaced))
        .map(|c| c.path.as_str())
        .collect();
    for change in &found {
        // A removed directory takes its entries with it.
        if removed.contains(change.path.as_str()) && !has_removed_ancestor(&change.path, &removed) {
            builder.command(Command::Remove {
                path: change.path.clone(),
            });
            stats.removed += 1;
        }
    }
    for change in &found {
        let Some(entry) = staged.get(&change.path) else {
            continue;
        };
        if let Some(step) = step(change, entry, shadow_snapshot, &sources) {
            steps.push(step);
        }
    }
    // The data section goes to a scratch file beside the shadow copy (on the mover's data disk, not a
    // temp file system in memory), and files are packed a batch at a time: a plan holds the assignment
    // once, whatever the site's size.
    let scratch_dir = shadow
        .parent()
        .filter(|dir| dir.is_dir())
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch(&scratch_dir);
    builder
        .spool_to(scratch.file()?)
        .map_err(io("scratch file in", &scratch_dir))?;
    let mut steps = steps.into_iter().peekable();
    while steps.peek().is_some() {
        let mut held = 0u64;
        let mut batch = Vec::new();
        while let Some(step) = steps.next_if(|_| held < BATCH_BYTES) {
            // A file packed in a stream holds a scratch file (an open descriptor, its packed bytes on
            // disk) until it is added: it counts as [`STREAM_FROM`], so a batch has a few of them at most.
            if let Step::Pack { entry, .. } = &step {
                held += entry.len.min(STREAM_FROM);
            }
            batch.push(step);
        }
        let to_pack: Vec<(&str, &Entry, bool)> = batch
            .iter()
            .filter_map(|step| match step {
                Step::Pack { path, entry, modified } => Some((path.as_str(), *entry, *modified)),
                _ => None,
            })
            .collect();
        let mut pieces = pack_all(&to_pack, staging, shadow, policy, scratch)?.into_iter();
        for step in batch {
            match step {
                Step::Command(command) => {
                    match &command {
                        Command::Mkdir { .. } => stats.directories += 1,
                        Command::Symlink { .. } => stats.links += 1,
                        Command::Copy { .. } => stats.copied += 1,
                        _ => stats.metadata += 1,
                    }
                    builder.command(command);
                }
                Step::Pack { .. } => {
                    let Some(piece) = pieces.next() else {
                        break;
                    };
                    stats.content_bytes += piece.size();
                    if piece.is_delta() {
                        stats.patched += 1;
                    } else {
                        stats.created += 1;
                    }
                    builder.add(piece).map_err(io("scratch file in", &scratch_dir))?;
                }
            }
        }
    }
    stats.commands = builder.commands();
    // The encoded assignment goes to a scratch file too, in a stream: the mover sends it from there.
    let file = scratch.file()?;
    let encoded = builder.finish_to_file(&file, signing, policy.encryption.as_ref())?;
    let assignment = Payload::file(file, encoded.len, encoded.hash_hex());
    stats.assignment_bytes = encoded.len;
    Ok(Plan {
        assignment,
        stats,
        snapshot: staged,
    })
}

/// Refuses the plan when an admitted entry cannot be carried: a special file, a name or target that is not
/// UTF-8, an unreadable entry, a link that leaves the site root. Every one is named.
fn refuse_what_cannot_be_carried(
    staging: &Path,
    staged: &Snapshot,
    unsupported: &[tern_tree::Unsupported],
) -> Result<(), PlanError> {
    let mut problems: Vec<String> = unsupported.iter().map(ToString::to_string).collect();
    for (path, entry) in staged.iter().filter(|(_, entry)| entry.is_link()) {
        let target = entry.target.as_deref().unwrap_or_default();
        if let Err(reason) = check_link_in(path, target, staged) {
            problems.push(format!("symbolic link `{path}`: {reason}"));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let total = problems.len();
    problems.truncate(REFUSALS_NAMED);
    if total > REFUSALS_NAMED {
        problems.push(format!("and {} more", total - REFUSALS_NAMED));
    }
    Err(PlanError::Refused {
        staging: staging.display().to_string(),
        total,
        problems,
    })
}

fn has_removed_ancestor(path: &str, removed: &BTreeSet<&str>) -> bool {
    path.match_indices('/').any(|(at, _)| removed.contains(&path[..at]))
}

/// For each content hash the shadow copy holds in a file of at least [`COPY_MIN_SIZE`] bytes, one path
/// holding it (the first in path order, so plans are reproducible).
fn copy_sources(shadow: &Snapshot) -> HashMap<&str, &str> {
    let mut sources = HashMap::new();
    for (path, entry) in shadow {
        if entry.is_file() && entry.len >= COPY_MIN_SIZE {
            sources.entry(entry.hash.as_str()).or_insert(path.as_str());
        }
    }
    sources
}

/// What one change becomes, in path order.
enum Step<'a> {
    /// A command without data.
    Command(Command),
    /// A file to pack (whole, or as a delta when `modified`).
    Pack {
        path: String,
        entry: &'a Entry,
        modified: bool,
    },
}

fn step<'a>(
    change: &TreeChange,
    entry: &'a Entry,
    shadow: &Snapshot,
    sources: &HashMap<&str, &str>,
) -> Option<Step<'a>> {
    let path = change.path.clone();
    let mode = (entry.kind != Kind::Link).then_some(entry.mode);
    let mtime_ns = Some(entry.mtime_ns);
    let everything = Metadata { mode, mtime_ns };
    let new = matches!(change.change, Change::Added | Change::Replaced);
    let step = match (change.change, entry.kind) {
        (Change::Removed, _) => return None,
        (
            Change::Metadata {
                mode: mode_changed,
                mtime,
            },
            _,
        ) => Step::Command(Command::SetMetadata {
            path,
            mode: mode.filter(|_| mode_changed),
            mtime_ns: mtime_ns.filter(|_| mtime),
        }),
        // The root exists on every node; a full copy gives it its mode and time.
        (_, Kind::Dir) if path == ROOT => Step::Command(Command::SetMetadata {
            path,
            mode: everything.mode,
            mtime_ns: everything.mtime_ns,
        }),
        (_, Kind::Dir) => Step::Command(Command::Mkdir {
            path,
            mode: everything.mode,
            mtime_ns: everything.mtime_ns,
        }),
        (_, Kind::Link) => Step::Command(Command::Symlink {
            path,
            target: entry.target.clone().unwrap_or_default(),
            mtime_ns: everything.mtime_ns,
        }),
        (_, Kind::File) => match sources.get(entry.hash.as_str()) {
            Some(from) if entry.len >= COPY_MIN_SIZE => Step::Command(Command::Copy {
                from: from.to_string(),
                to: path,
                hash: entry.hash.clone(),
                mode: everything.mode,
                mtime_ns: everything.mtime_ns,
            }),
            _ => Step::Pack {
                modified: !new && shadow.get(&path).is_some_and(Entry::is_file),
                path,
                entry,
            },
        },
    };
    Some(step)
}

/// Bytes of files packed at a time: the rest of the plan waits, so a plan's memory is bounded whatever
/// the site's size. Files of [`STREAM_FROM`] bytes or more are packed in a stream through scratch files and
/// count as that much each.
const BATCH_BYTES: u64 = 64 << 20;

/// Changed files larger than this are sent whole (compressed in a stream) rather than as a delta: a delta
/// holds the old version in memory (zstd's reference), and its match window reaches 1 GiB at most.
pub const DELTA_MAX_SIZE: u64 = 1 << 30;

/// Where a plan's scratch files go: unnamed temporary files in one directory (`O_TMPFILE`), which vanish
/// with the process whatever happens to it.
#[derive(Debug, Clone, Copy)]
struct Scratch<'a>(&'a Path);

impl Scratch<'_> {
    fn file(self) -> Result<std::fs::File, PlanError> {
        tempfile::tempfile_in(self.0).map_err(|source| PlanError::Io {
            what: "scratch file in",
            path: self.0.display().to_string(),
            source,
        })
    }
}

/// Packs the new and changed files (reads each, compresses it or makes its delta against the shadow
/// version) on one thread per core: packing is most of a plan's time, and the files are independent.
/// Returns each file's piece, in the order given.
fn pack_all(
    files: &[(&str, &Entry, bool)],
    staging: &Path,
    shadow: &Path,
    policy: &PlanPolicy,
    scratch: Scratch<'_>,
) -> Result<Vec<Piece>, PlanError> {
    tern_tree::map_parallel_with(files, Packer::new, |packer, (path, entry, modified)| match packer {
        Ok(packer) => pack(packer, path, entry, *modified, staging, shadow, policy, scratch),
        Err(error) => Err(PlanError::Io {
            what: "compression",
            path: path.to_string(),
            source: std::io::Error::new(error.kind(), error.to_string()),
        }),
    })
    .into_iter()
    .collect()
}

/// Packs one new or changed file: whole, or as a delta against its shadow version when that is smaller.
/// The mode and time are the scanned ones, so the plan describes one consistent snapshot; content changed
/// since the scan is caught when the shadow copy is built (the hash is checked there). A file of
/// [`STREAM_FROM`] bytes or more is packed in a stream into a scratch file of its own.
#[allow(clippy::too_many_arguments)]
fn pack(
    packer: &mut Packer,
    path: &str,
    entry: &Entry,
    modified: bool,
    staging: &Path,
    shadow: &Path,
    policy: &PlanPolicy,
    scratch: Scratch<'_>,
) -> Result<Piece, PlanError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source: std::io::Error| PlanError::Io { what, path, source }
    };
    let source = staging.join(path);
    let metadata = Metadata {
        mode: Some(entry.mode),
        mtime_ns: Some(entry.mtime_ns),
    };
    let compress = policy.compress(path);
    let wants_delta = modified && entry.len >= policy.delta_min_size;
    if entry.len >= STREAM_FROM {
        let old_path = shadow.join(path);
        let old = if wants_delta
            && std::fs::metadata(&old_path).is_ok_and(|old| old.is_file() && old.len() <= DELTA_MAX_SIZE)
        {
            std::fs::read(&old_path).ok()
        } else {
            None
        };
        let piece = match old {
            Some(old) => packer.delta_file(path, metadata, &old, &source, compress, scratch.file()?),
            None => packer.whole_file(path, metadata, &source, compress, scratch.file()?),
        };
        return piece.map_err(io("staging file", &source));
    }
    let content = std::fs::read(&source).map_err(io("staging file", &source))?;
    let old = if wants_delta {
        std::fs::read(shadow.join(path)).ok()
    } else {
        None
    };
    match old {
        Some(old) => packer
            .changed(path, metadata, &old, &content, compress)
            .map_err(io("delta", &source)),
        // The content itself becomes the piece when it is stored as it is (no second copy of a large file).
        None => packer
            .whole_owned(path, metadata, std::borrow::Cow::Owned(content), compress)
            .map_err(io("compression", &source)),
    }
}
