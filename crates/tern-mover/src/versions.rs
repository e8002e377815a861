//! The mover's copies of each hosted site (seed 004's version control), under `DATA/sites/<site>/`:
//!
//! ```text
//! shadow/            the published tree: what every node holds (the seed's shadow copy)
//! shadow-previous/   the tree before it, for rollback
//! shadow-next/       the tree being published, until the job commits
//! snapshots/<N>.asg  the assignment that made version N from the one before, kept until a checkpoint
//! checkpoints/<n>/   compressed full copies (every file as <name>.zst)
//! superseded-*/      an older tree moved aside at a promotion, being deleted
//! ```
//!
//! Shadow files are never changed in place, so trees share unchanged files through hard links.

use std::io;
use std::path::{Path, PathBuf};

use tern_tree::Snapshot;

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
    /// since `published` are linked from the shadow copy, the others copied from `staging` and checked
    /// against the hash they were planned with (a staging file changed since planning fails the publish
    /// rather than leaving a shadow copy that differs from what the nodes hold).
    pub fn stage_next(&self, staging: &Path, published: &Snapshot, snapshot: &Snapshot) -> io::Result<()> {
        let next = self.next();
        if next.exists() {
            std::fs::remove_dir_all(&next)?;
        }
        std::fs::create_dir_all(&next)?;
        let shadow = self.shadow();
        for (path, state) in snapshot {
            let target = next.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let unchanged = published.get(path).is_some_and(|old| old.hash == state.hash);
            if unchanged && std::fs::hard_link(shadow.join(path), &target).is_ok() {
                continue;
            }
            let content = std::fs::read(staging.join(path))?;
            if blake3::hash(&content).to_hex().as_str() != state.hash {
                return Err(io::Error::other(format!(
                    "staging file {path} changed while it was being published; publish again"
                )));
            }
            std::fs::write(&target, content)?;
            if let Some(mode) = tern_tree::file_mode(&staging.join(path)) {
                set_mode(&target, mode)?;
            }
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
        let _ = std::fs::remove_dir_all(self.next());
    }

    /// Swaps the shadow copy and the previous tree (a rollback).
    pub fn swap_previous(&self) -> io::Result<()> {
        let (shadow, previous) = (self.shadow(), self.previous());
        let swap = self.0.join("shadow-swap");
        std::fs::rename(&shadow, &swap)?;
        std::fs::rename(&previous, &shadow)?;
        std::fs::rename(&swap, &previous)
    }

    /// Keeps the assignment that made version `sequence`.
    pub fn save_snapshot(&self, sequence: u64, assignment: &[u8]) -> io::Result<()> {
        let path = self.snapshot(sequence);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let temp = path.with_extension("asg.tmp");
        std::fs::write(&temp, assignment)?;
        std::fs::rename(&temp, &path)
    }

    /// The assignment that made version `sequence`.
    pub fn load_snapshot(&self, sequence: u64) -> io::Result<Vec<u8>> {
        std::fs::read(self.snapshot(sequence))
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

    /// Packs the shadow copy as checkpoint `number`; returns its bytes.
    pub fn create_checkpoint(&self, number: u64) -> io::Result<u64> {
        let building = self.0.join("checkpoints").join(".new");
        let bytes = pack_tree(&self.shadow(), &building)?;
        let target = self.checkpoint(number);
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        std::fs::rename(&building, target)?;
        Ok(bytes)
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// Copies a tree with every file zstd-compressed (`<name>.zst`); returns the bytes written.
pub fn pack_tree(from: &Path, to: &Path) -> io::Result<u64> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    let mut written = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let name = entry.file_name();
        if kind.is_dir() {
            written += pack_tree(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            let packed = zstd::bulk::compress(&std::fs::read(entry.path())?, 9)?;
            written += packed.len() as u64;
            let mut target = name.clone();
            target.push(".zst");
            std::fs::write(to.join(target), packed)?;
        }
    }
    Ok(written)
}

/// The inverse of [`pack_tree`].
pub fn unpack_tree(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let name = entry.file_name();
        if kind.is_dir() {
            unpack_tree(&entry.path(), &to.join(&name))?;
        } else if let Some(original) = name.to_str().and_then(|n| n.strip_suffix(".zst")) {
            let mut decoder = zstd::stream::read::Decoder::new(std::fs::File::open(entry.path())?)?;
            let mut file = std::fs::File::create(to.join(original))?;
            io::copy(&mut decoder, &mut file)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_tree_links_unchanged_files_and_refuses_a_staging_file_changed_since_planning() {
        let area = tempfile::tempdir().expect("tempdir");
        let site = SiteDir::new(area.path(), "www");
        let staging = area.path().join("staging");
        std::fs::create_dir_all(staging.join("d")).expect("mkdir");
        std::fs::write(staging.join("a.html"), "a1").expect("write");
        std::fs::write(staging.join("d/b.html"), "b1").expect("write");
        let first = tern_tree::scan(&staging, &Snapshot::new()).expect("scan");
        site.stage_next(&staging, &Snapshot::new(), &first).expect("stage");
        site.promote_next().expect("promote");
        assert_eq!(tern_tree::contents(&site.shadow()), tern_tree::contents(&staging));

        std::fs::write(staging.join("a.html"), "a2").expect("write");
        let second = tern_tree::scan(&staging, &Snapshot::new()).expect("scan");
        site.stage_next(&staging, &first, &second).expect("stage");
        site.promote_next().expect("promote");
        assert_eq!(tern_tree::contents(&site.shadow()), tern_tree::contents(&staging));
        assert_eq!(
            std::fs::read(site.previous().join("a.html")).expect("previous"),
            b"a1",
            "the previous tree is kept for rollback"
        );

        std::fs::write(staging.join("a.html"), "a3").expect("write");
        let third = tern_tree::scan(&staging, &Snapshot::new()).expect("scan");
        std::fs::write(staging.join("a.html"), "changed after planning").expect("write");
        let error = site.stage_next(&staging, &second, &third).expect_err("refused");
        assert!(error.to_string().contains("publish again"), "{error}");
    }
}
