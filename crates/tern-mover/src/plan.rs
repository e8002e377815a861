//! Change detection and assignment planning (seed 004: the staging server, the shadow copy and the delta
//! function). The staging tree is compared with the shadow copy (the last published version) by size,
//! modification time and blake3 hash; each new file is sent whole, each changed file as a zstd delta against
//! its shadow version when that is smaller than the whole file (measured per file: small files and rewritten
//! files go whole), each removed file as a removal.
//!
//! Why zstd with the old file as reference prefix rather than rsync-style blocks: the mover holds both
//! versions, so it needs no block signatures from the node, and zstd finds matches at any offset and
//! entropy-codes the rest. A 100-byte change to a 10 MB file costs a few hundred bytes (test
//! `planning::a_small_change_to_a_large_file_sends_a_small_delta`).

use std::path::Path;

use ed25519_dalek::SigningKey;
use tern_tree::{ChangeKind, Difference, Snapshot, differences, scan};
use tern_wire::assignment::{AssignmentKind, Builder, Command, Packer, Piece};

use crate::rules::CompiledRules;

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
    /// Files removed.
    pub removed: usize,
    /// Bytes of the changed and new files.
    pub content_bytes: u64,
    /// Bytes of the assignment.
    pub assignment_bytes: u64,
}

/// A planned assignment.
#[derive(Debug)]
pub struct Plan {
    /// The signed assignment.
    pub assignment: Vec<u8>,
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
    /// The assignment could not be built.
    #[error(transparent)]
    Assignment(#[from] tern_wire::assignment::AssignmentError),
}

/// Which publication an assignment is for.
#[derive(Debug, Clone, Copy)]
pub struct Publication<'a> {
    /// Assignment id.
    pub id: &'a str,
    /// Hosted site.
    pub site: &'a str,
    /// The site version it produces.
    pub sequence: u64,
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

/// [`plan`] for any kind of assignment (a `replicate` or `restore` starts the node's tree empty), publishing
/// only the staging files the site's `rules` admit (the others count as absent, so one published before is
/// removed).
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
    // The shadow snapshot was scanned from the previous staging tree: a file with the same size and
    // modification time keeps its hash, so an unchanged tree is not read again.
    let mut staged = scan(staging, shadow_snapshot).map_err(io("staging tree", staging))?;
    if let Some(rules) = rules {
        rules.filter(&mut staged);
    }
    let mut builder = Builder::new(
        publication.id,
        kind,
        publication.site,
        publication.sequence,
        None,
        publication.created_ms,
    );
    let mut stats = PlanStats::default();
    let changes = differences(shadow_snapshot, &staged);
    let to_pack: Vec<&Difference> = changes.iter().filter(|d| d.kind != ChangeKind::Deleted).collect();
    let mut pieces = pack_all(&to_pack, staging, shadow, policy)?.into_iter();
    for difference in &changes {
        if difference.kind == ChangeKind::Deleted {
            builder.command(Command::Remove {
                path: difference.path.clone(),
            });
            stats.removed += 1;
            continue;
        }
        let Some((content_len, piece)) = pieces.next() else {
            break;
        };
        stats.content_bytes += content_len;
        if piece.is_delta() {
            stats.patched += 1;
        } else {
            stats.created += 1;
        }
        builder.add(piece);
    }
    let assignment = builder.finish(signing, policy.encryption.as_ref())?;
    stats.assignment_bytes = assignment.len() as u64;
    Ok(Plan {
        assignment,
        stats,
        snapshot: staged,
    })
}

/// Packs the new and changed files (reads each, compresses it or makes its delta against the shadow
/// version) on one thread per core: packing is most of a plan's time, and the files are independent.
/// Returns each file's size and piece, in the order given.
fn pack_all(
    files: &[&Difference],
    staging: &Path,
    shadow: &Path,
    policy: &PlanPolicy,
) -> Result<Vec<(u64, Piece)>, PlanError> {
    tern_tree::map_parallel_with(files, Packer::new, |packer, difference| match packer {
        Ok(packer) => pack(packer, difference, staging, shadow, policy),
        Err(error) => Err(PlanError::Io {
            what: "compression",
            path: difference.path.clone(),
            source: std::io::Error::new(error.kind(), error.to_string()),
        }),
    })
    .into_iter()
    .collect()
}

/// Packs one new or changed file: whole, or as a delta against its shadow version when that is smaller.
fn pack(
    packer: &mut Packer,
    difference: &Difference,
    staging: &Path,
    shadow: &Path,
    policy: &PlanPolicy,
) -> Result<(u64, Piece), PlanError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source: std::io::Error| PlanError::Io { what, path, source }
    };
    let source = staging.join(&difference.path);
    let content = std::fs::read(&source).map_err(io("staging file", &source))?;
    let mode = tern_tree::file_mode(&source);
    let compress = policy.compress(&difference.path);
    let old = if difference.kind == ChangeKind::Modified && content.len() as u64 >= policy.delta_min_size {
        std::fs::read(shadow.join(&difference.path)).ok()
    } else {
        None
    };
    let piece = match old {
        Some(old) => packer
            .changed(&difference.path, mode, &old, &content, compress)
            .map_err(io("delta", &source))?,
        None => packer
            .whole(&difference.path, mode, &content, compress)
            .map_err(io("compression", &source))?,
    };
    Ok((content.len() as u64, piece))
}
