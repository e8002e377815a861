//! The agent's file-system notifications: one watch per directory of the site, kept in step with the tree
//! at every scan, and one on the site's parent directory for the site's own name.
//!
//! `notify`'s recursive watch failed whole when one directory could not be watched (an unreadable one),
//! leaving the agent on periodic rescans only, and it watches inodes: a site whose root was swapped
//! (`mv site.new site`, a common way to deploy) went unwatched until the agent restarted. Here each
//! directory has its own watch: one that cannot be watched is left out (and logged once) while the rest
//! are watched, and is tried again at every scan; a path whose directory was replaced is watched again;
//! and the parent's watch reports the root's own replacement, which starts a scan that watches the new
//! tree. The periodic rescan stays the authority (inotify queues can overflow, some file systems never
//! report).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use notify::Watcher;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Most directories watched; past it the rest rely on the periodic rescan (each watch costs kernel
/// memory, and `fs.inotify.max_user_watches` caps them anyway).
const MAX_WATCHES: usize = 500_000;

/// A directory's identity: device and inode.
type Identity = (u64, u64);

/// The watches of one site.
pub struct Watches {
    watcher: notify::RecommendedWatcher,
    root: PathBuf,
    /// Watched directories, with the identity each watch was placed on.
    watched: BTreeMap<PathBuf, Identity>,
    /// Directories that could not be watched, as last logged.
    failed: BTreeSet<PathBuf>,
    /// Whether the parent's watch is in place.
    parent_watched: bool,
}

impl Watches {
    /// Starts watching `root`: an event that may change what the site serves sends on `events`. `None`
    /// when the system gives no notifications at all (then the periodic rescan alone finds changes).
    pub fn start(root: &Path, events: mpsc::Sender<()>) -> Option<Watches> {
        let under = root.to_path_buf();
        let handler = move |result: notify::Result<notify::Event>| {
            let Ok(event) = result else {
                // Events may have been lost (a full queue): a scan finds what they said.
                let _ = events.try_send(());
                return;
            };
            // The parent's watch also reports the site's siblings (`site.new` being prepared): only the
            // site and what is in it count.
            if crate::agent::changes_content(&event.kind) && event.paths.iter().any(|path| path.starts_with(&under)) {
                let _ = events.try_send(());
            }
        };
        let watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(error) => {
                warn!(%error, "no file-system notifications; relying on periodic rescans");
                return None;
            }
        };
        let mut watches = Watches {
            watcher,
            root: root.to_path_buf(),
            watched: BTreeMap::new(),
            failed: BTreeSet::new(),
            parent_watched: false,
        };
        watches.reconcile();
        Some(watches)
    }

    /// Brings the watches in step with the tree: every directory under the root (links are not followed)
    /// watched on its current identity, none kept on a directory that is gone or was replaced. Blocking:
    /// it lists the tree's directories.
    pub fn reconcile(&mut self) {
        if !self.parent_watched
            && let Some(parent) = self.root.parent().filter(|parent| !parent.as_os_str().is_empty())
        {
            match self.watcher.watch(parent, notify::RecursiveMode::NonRecursive) {
                Ok(()) => self.parent_watched = true,
                Err(error) => warn!(%error, dir = %parent.display(),
                    "cannot watch the site's parent directory: a replaced site root is noticed at the next periodic rescan"),
            }
        }
        let directories = directories(&self.root);
        let gone: Vec<PathBuf> = self
            .watched
            .keys()
            .filter(|path| !directories.contains_key(*path))
            .cloned()
            .collect();
        for path in gone {
            let _ = self.watcher.unwatch(&path);
            self.watched.remove(&path);
        }
        let mut failed = BTreeSet::new();
        let mut first_error = None;
        for (path, identity) in &directories {
            match self.watched.get(path) {
                Some(watched) if watched == identity => continue,
                // Replaced (the root swapped, a directory renamed over another): the watch is on the old one.
                Some(_) => {
                    let _ = self.watcher.unwatch(path);
                    self.watched.remove(path);
                }
                None => {}
            }
            if self.watched.len() >= MAX_WATCHES {
                failed.insert(path.clone());
                continue;
            }
            match self.watcher.watch(path, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(path.clone(), *identity);
                }
                Err(error) => {
                    first_error.get_or_insert_with(|| error.to_string());
                    failed.insert(path.clone());
                }
            }
        }
        let newly: Vec<&PathBuf> = failed.difference(&self.failed).collect();
        if !newly.is_empty() {
            warn!(
                count = newly.len(),
                first = %newly[0].display(),
                error = first_error.as_deref().unwrap_or("too many directories"),
                "cannot watch these directories: their changes are found at the next periodic rescan; the rest of \
                 the site is watched (check their permissions, or raise fs.inotify.max_user_watches)"
            );
        }
        let mended = self.failed.difference(&failed).count();
        if mended > 0 && failed.is_empty() {
            info!(count = mended, "every directory of the site is watched again");
        }
        self.failed = failed;
    }

    /// Directories watched.
    pub fn len(&self) -> usize {
        self.watched.len()
    }

    /// Whether no directory is watched.
    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }
}

/// Every directory under `root` (itself included) with its identity; links are not followed, and a
/// directory that cannot be listed is still listed itself (its watch may work, or fail and be logged).
fn directories(root: &Path) -> BTreeMap<PathBuf, Identity> {
    let mut found = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        found.insert(dir.clone(), (meta.dev(), meta.ino()));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_directory_is_listed_links_are_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("site");
        std::fs::create_dir_all(root.join("a/b")).expect("dirs");
        std::fs::create_dir_all(dir.path().join("outside")).expect("dir");
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("link")).expect("link");
        let found: Vec<PathBuf> = directories(&root).into_keys().collect();
        assert_eq!(found, vec![root.clone(), root.join("a"), root.join("a/b")]);
    }
}
