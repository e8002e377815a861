//! The mover's copies of each hosted site (seed 004's version control), under `DATA/sites/<site>/`:
//!
//! ```text
//! shadow/            the published tree: what every node holds (the seed's shadow copy)
//! shadow-previous/   the tree before it, for rollback
//! shadow-next/       the tree being published, until the job commits
//! snapshots/<N>.asg  the assignment that made version N from the one before, kept until a checkpoint
//! checkpoints/<n>/   compressed full copies (every file as <name>.zst, every link as <name>.link)
//! superseded-*/      an older tree moved aside at a promotion, being deleted
//! ```
//!
//! Every tree is a faithful copy of what was published — files, directories (also empty), symbolic links,
//! modes and modification times — since the next plan is made against it and a replicate or restore sends
//! it whole. Shadow files are never changed in place, so trees share unchanged files (same content, mode
//! and time) through hard links.

use std::io;
use std::path::{Path, PathBuf};

use tern_tree::{Kind, ROOT, Snapshot, remove_tree, set_mode, set_mtime};

use crate::payload::Payload;

/// The prefix of trees moved aside by [`SiteDir::promote_next`], to be deleted.
const SUPERSEDED: &str = "superseded-";

/// The directories of one site.
#[derive(Debug, Clone)]
pub struct SiteDir(PathBuf);

impl SiteDir {
    /// The site `name` under the data directory.
    pub fn new(data: &Path, name: &str) -> SiteDir {
        SiteDir(data.join("sites").join(name))
    }

    /// The site's directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The published tree.
    pub fn shadow(&self) -> PathBuf {
        self.0.join("shadow")
    }

    /// The tree before the published one.
    pub fn previous(&self) -> PathBuf {
        self.0.join("shadow-previous")
    }

    fn next(&self) -> PathBuf {
        self.0.join("shadow-next")
    }

    /// Checkpoint `number`'s directory.
    pub fn checkpoint(&self, number: u64) -> PathBuf {
        self.0.join("checkpoints").join(number.to_string())
    }

    fn snapshot(&self, sequence: u64) -> PathBuf {
        self.0.join("snapshots").join(format!("{sequence}.asg"))
    }

    /// Builds `shadow-next`, the tree being published, exactly as `snapshot` describes it: files unchanged
    /// since `published` (content, mode and time) are linked from the shadow copy, the others copied from
    /// `staging` and checked against the hash they were planned with (a staging file changed since planning
    /// fails the publish rather than leaving a shadow copy that differs from what the nodes hold); modes and
    /// times are the snapshot's, directories' set once they are filled.
    pub fn stage_next(&self, staging: &Path, published: &Snapshot, snapshot: &Snapshot) -> io::Result<()> {
        let next = self.next();
        remove_tree(&next)?;
        std::fs::create_dir_all(&next)?;
        let shadow = self.shadow();
        let mut buffer = Vec::new();
        // Path order: a directory comes before what it holds.
        for (path, entry) in snapshot {
            if path == ROOT {
                continue;
            }
            let target = next.join(path);
            match entry.kind {
                Kind::Dir => std::fs::create_dir(&target)?,
                Kind::Link => {
                    make_symlink(Path::new(entry.target.as_deref().unwrap_or_default()), &target)?;
                    set_mtime(&target, entry.mtime_ns)?;
                }
                Kind::File => {
                    let unchanged = published.get(path) == Some(entry);
                    if unchanged && std::fs::hard_link(shadow.join(path), &target).is_ok() {
                        continue;
                    }
                    if copy_hashed(&staging.join(path), &target, &mut buffer)? != entry.hash {
                        return Err(io::Error::other(format!(
                            "staging file {path} changed while it was being published; publish again"
                        )));
                    }
                    set_mode(&target, entry.mode)?;
                    set_mtime(&target, entry.mtime_ns)?;
                }
            }
        }
        for (path, entry) in snapshot.iter().rev().filter(|(_, entry)| entry.is_dir()) {
            let target = if path == ROOT { next.clone() } else { next.join(path) };
            set_mode(&target, entry.mode)?;
            set_mtime(&target, entry.mtime_ns)?;
        }
        Ok(())
    }

    /// Makes `shadow-next` the shadow copy, keeping the old one as `shadow-previous`. The tree that was
    /// `shadow-previous` is only moved aside; it is returned for the caller to delete off the publish path
    /// (a crash before that leaves it in `superseded-*`, which the next promotion returns too).
    pub fn promote_next(&self) -> io::Result<Vec<PathBuf>> {
        let (shadow, previous) = (self.shadow(), self.previous());
        if shadow.exists() {
            if previous.exists() {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                std::fs::rename(&previous, self.0.join(format!("{SUPERSEDED}{nanos}")))?;
            }
            std::fs::rename(&shadow, &previous)?;
        }
        std::fs::rename(self.next(), &shadow)?;
        Ok(std::fs::read_dir(&self.0)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(SUPERSEDED))
            .map(|e| e.path())
            .collect())
    }

    /// Drops `shadow-next` (the publish did not commit).
    pub fn discard_next(&self) {
        let _ = remove_tree(&self.next());
    }

    /// Swaps the shadow copy and the previous tree (a rollback).
    pub fn swap_previous(&self) -> io::Result<()> {
        let (shadow, previous) = (self.shadow(), self.previous());
        let swap = self.0.join("shadow-swap");
        std::fs::rename(&shadow, &swap)?;
        std::fs::rename(&previous, &shadow)?;
        std::fs::rename(&swap, &previous)
    }

    /// The inode of the previous tree: a rollback's decision names the tree it switches to by it.
    pub fn previous_inode(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(self.previous())?.ino())
    }

    /// Makes the tree with inode `inode` the shadow copy and the other the previous tree, however far a
    /// swap had gone before the mover stopped: nothing to do when the shadow copy is that tree already; an
    /// interrupted swap (`shadow-swap` present) is completed; otherwise the two swap.
    pub fn swap_previous_to(&self, inode: u64) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let (shadow, previous) = (self.shadow(), self.previous());
        let swap = self.0.join("shadow-swap");
        let inode_of = |path: &Path| std::fs::symlink_metadata(path).map(|m| m.ino()).ok();
        if inode_of(&shadow) == Some(inode) {
            if swap.exists() && !previous.exists() {
                std::fs::rename(&swap, &previous)?;
            }
            return Ok(());
        }
        if swap.exists() {
            if inode_of(&previous) == Some(inode) && !shadow.exists() {
                std::fs::rename(&previous, &shadow)?;
                return std::fs::rename(&swap, &previous);
            }
        } else if inode_of(&previous) == Some(inode) {
            return self.swap_previous();
        }
        Err(io::Error::other(format!(
            "the trees in {} are not those the rollback decided on (no tree with inode {inode}); publish again or restore a checkpoint",
            self.0.display()
        )))
    }

    /// Whether `shadow-next` (the tree a publish builds) is there.
    pub fn has_next(&self) -> bool {
        self.next().is_dir()
    }

    /// Deletes the snapshot of version `sequence` (a publish that was not committed).
    pub fn drop_snapshot(&self, sequence: u64) {
        let _ = std::fs::remove_file(self.snapshot(sequence));
    }

    /// Keeps the assignment that made version `sequence` (copied a chunk at a time, on disk before it
    /// gets its name).
    pub fn save_snapshot(&self, sequence: u64, assignment: &Payload) -> io::Result<()> {
        let path = self.snapshot(sequence);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let temp = path.with_extension("asg.tmp");
        assignment.write_to(&temp)?;
        std::fs::rename(&temp, &path)
    }

    /// The assignment that made version `sequence`, opened, and its length: read from the file as it is
    /// sent (an open snapshot stays readable when a later commit deletes it).
    pub fn open_snapshot(&self, sequence: u64) -> io::Result<(std::fs::File, u64)> {
        let file = std::fs::File::open(self.snapshot(sequence))?;
        let len = file.metadata()?.len();
        Ok((file, len))
    }

    /// Deletes the snapshots of versions up to `sequence`.
    pub fn drop_snapshots_through(&self, sequence: u64) {
        let Ok(entries) = std::fs::read_dir(self.0.join("snapshots")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let number = name
                .to_str()
                .and_then(|n| n.strip_suffix(".asg"))
                .and_then(|n| n.parse::<u64>().ok());
            if number.is_some_and(|n| n <= sequence) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Deletes what interrupted jobs left behind (at the mover's start, with no job running and no
    /// decision of this site unfinished): snapshots of versions that were never committed (every one not in
    /// `kept`) and half-written ones, trees superseded by a promotion (`superseded-*`), the tree of a
    /// publish that never committed (`shadow-next`) and a half-packed checkpoint. Returns the entries
    /// deleted, by name.
    pub fn remove_leftovers(&self, kept: &std::collections::BTreeSet<u64>) -> Vec<String> {
        let mut removed = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.0.join("snapshots")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let recorded = name
                    .strip_suffix(".asg")
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| kept.contains(&n));
                if !recorded && std::fs::remove_file(entry.path()).is_ok() {
                    removed.push(format!("snapshots/{name}"));
                }
            }
        }
        let mut trees: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(SUPERSEDED))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        trees.push(self.next());
        trees.push(self.0.join("checkpoints").join(".new"));
        for tree in trees {
            if tree.exists() && remove_tree(&tree).is_ok() {
                removed.push(tree.strip_prefix(&self.0).unwrap_or(&tree).display().to_string());
            }
        }
        removed
    }

    /// Packs the shadow copy as checkpoint `number`; returns its bytes.
    pub fn create_checkpoint(&self, number: u64) -> io::Result<u64> {
        let building = self.0.join("checkpoints").join(".new");
        let bytes = pack_tree(&self.shadow(), &building)?;
        // A checkpoint is what the operator restores after losing everything else: whole on disk before
        // it is recorded.
        tern_tree::sync_file_system(&building)?;
        let target = self.checkpoint(number);
        remove_tree(&target)?;
        std::fs::rename(&building, target)?;
        tern_tree::sync_directory(&self.0.join("checkpoints"))?;
        Ok(bytes)
    }
}

fn make_symlink(target: &Path, link: &Path) -> io::Result<()> {
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

/// Copies a tree with every file zstd-compressed (`<name>.zst`) and every link as a link named
/// `<name>.link`, each packed entry and directory with the original's mode and time (so a restore is
/// faithful); returns the bytes written.
pub fn pack_tree(from: &Path, to: &Path) -> io::Result<u64> {
    remove_tree(to)?;
    std::fs::create_dir_all(to)?;
    let mut written = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let name = entry.file_name();
        if kind.is_dir() {
            written += pack_tree(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            let mut target = name.clone();
            target.push(".zst");
            let target = to.join(target);
            // In a stream: a checkpoint of a site with large files holds a buffer of each, not the file.
            let mut out = std::io::BufWriter::new(std::fs::File::create(&target)?);
            zstd::stream::copy_encode(std::fs::File::open(entry.path())?, &mut out, 9)?;
            std::io::Write::flush(&mut out)?;
            drop(out);
            written += std::fs::metadata(&target)?.len();
            tern_tree::copy_metadata(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            let mut target = name.clone();
            target.push(".link");
            let target = to.join(target);
            make_symlink(&std::fs::read_link(entry.path())?, &target)?;
            tern_tree::copy_metadata(&entry.path(), &target)?;
        }
    }
    tern_tree::copy_metadata(from, to)?;
    Ok(written)
}

/// The inverse of [`pack_tree`].
pub fn unpack_tree(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if kind.is_dir() {
            unpack_tree(&entry.path(), &to.join(name))?;
        } else if let (true, Some(original)) = (kind.is_symlink(), name.strip_suffix(".link")) {
            let target = to.join(original);
            make_symlink(&std::fs::read_link(entry.path())?, &target)?;
            tern_tree::copy_metadata(&entry.path(), &target)?;
        } else if let (true, Some(original)) = (kind.is_file(), name.strip_suffix(".zst")) {
            let mut decoder = zstd::stream::read::Decoder::new(std::fs::File::open(entry.path())?)?;
            let target = to.join(original);
            let mut file = std::fs::File::create(&target)?;
            io::copy(&mut decoder, &mut file)?;
            drop(file);
            tern_tree::copy_metadata(&entry.path(), &target)?;
        }
    }
    tern_tree::copy_metadata(from, to)
}

/// Copies `from` to a new file `to` in a stream (memory holds a buffer, not the file) and returns the blake3
/// hash (hex) of what was copied.
fn copy_hashed(from: &Path, to: &Path, buffer: &mut Vec<u8>) -> io::Result<String> {
    use std::io::Write;
    let mut source = std::fs::File::open(from)?;
    let mut out = std::fs::File::create(to)?;
    let mut hasher = blake3::Hasher::new();
    // One buffer for every file of a tree (a new zeroed one per file cost more than the copy for small
    // files), written straight to the file: its reads are large already.
    buffer.resize(1 << 20, 0);
    loop {
        let count = match io::Read::read(&mut source, buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..count]);
        out.write_all(&buffer[..count])?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the tree at `dir` is exactly what `snapshot` describes (kinds, contents, modes, times, link
    /// targets).
    fn matches_snapshot(dir: &Path, snapshot: &Snapshot) -> io::Result<bool> {
        let found = tern_tree::scan(dir, snapshot)?;
        Ok(found.unsupported.is_empty() && found.snapshot == *snapshot)
    }

    #[test]
    fn the_next_tree_links_unchanged_files_and_refuses_a_staging_file_changed_since_planning() {
        let area = tempfile::tempdir().expect("tempdir");
        let site = SiteDir::new(area.path(), "www");
        let staging = area.path().join("staging");
        std::fs::create_dir_all(staging.join("d")).expect("mkdir");
        std::fs::write(staging.join("a.html"), "a1").expect("write");
        std::fs::write(staging.join("d/b.html"), "b1").expect("write");
        let first = tern_tree::scan(&staging, &Snapshot::new()).expect("scan").snapshot;
        site.stage_next(&staging, &Snapshot::new(), &first).expect("stage");
        site.promote_next().expect("promote");
        assert_eq!(tern_tree::contents(&site.shadow()), tern_tree::contents(&staging));

        std::fs::write(staging.join("a.html"), "a2").expect("write");
        let second = tern_tree::scan(&staging, &Snapshot::new()).expect("scan").snapshot;
        site.stage_next(&staging, &first, &second).expect("stage");
        site.promote_next().expect("promote");
        assert_eq!(tern_tree::contents(&site.shadow()), tern_tree::contents(&staging));
        assert_eq!(
            std::fs::read(site.previous().join("a.html")).expect("previous"),
            b"a1",
            "the previous tree is kept for rollback"
        );

        std::fs::write(staging.join("a.html"), "a3").expect("write");
        let third = tern_tree::scan(&staging, &Snapshot::new()).expect("scan").snapshot;
        std::fs::write(staging.join("a.html"), "changed after planning").expect("write");
        let error = site.stage_next(&staging, &second, &third).expect_err("refused");
        assert!(error.to_string().contains("publish again"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn the_shadow_copy_and_checkpoints_keep_directories_links_modes_and_times() {
        let area = tempfile::tempdir().expect("tempdir");
        let site = SiteDir::new(area.path(), "www");
        let staging = area.path().join("staging");
        std::fs::create_dir_all(staging.join(".well-known/acme-challenge")).expect("mkdir");
        std::fs::create_dir_all(staging.join("empty")).expect("mkdir");
        std::fs::create_dir_all(staging.join("private")).expect("mkdir");
        std::fs::write(staging.join(".well-known/acme-challenge/x"), "token").expect("write");
        std::fs::write(staging.join("private/run.cgi"), "#!/bin/sh").expect("write");
        set_mode(&staging.join("private/run.cgi"), 0o755).expect("chmod");
        set_mode(&staging.join("private"), 0o700).expect("chmod");
        std::os::unix::fs::symlink("private/run.cgi", staging.join("run")).expect("symlink");
        set_mtime(&staging.join("run"), 1_000_000_007).expect("touch");
        set_mtime(&staging.join("empty"), 2_000_000_009).expect("touch");
        let snapshot = tern_tree::scan(&staging, &Snapshot::new()).expect("scan").snapshot;
        site.stage_next(&staging, &Snapshot::new(), &snapshot).expect("stage");
        site.promote_next().expect("promote");
        assert!(
            matches_snapshot(&site.shadow(), &snapshot).expect("scan"),
            "the shadow copy is faithful"
        );

        // A chmod alone: the new tree does not share the inode with the previous one.
        set_mode(&staging.join("private/run.cgi"), 0o700).expect("chmod");
        let changed = tern_tree::scan(&staging, &snapshot).expect("scan").snapshot;
        site.stage_next(&staging, &snapshot, &changed).expect("stage");
        site.promote_next().expect("promote");
        assert!(matches_snapshot(&site.shadow(), &changed).expect("scan"));
        assert!(
            matches_snapshot(&site.previous(), &snapshot).expect("scan"),
            "the previous tree is kept as it was"
        );

        site.create_checkpoint(1).expect("checkpoint");
        let restored = area.path().join("restored");
        unpack_tree(&site.checkpoint(1), &restored).expect("unpack");
        assert!(
            matches_snapshot(&restored, &changed).expect("scan"),
            "a checkpoint restores exactly"
        );
    }
}
