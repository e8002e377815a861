//! Snapshots of a directory tree and their differences: the CP agent's periodic examination of the origin
//! (seed 001) and the content mover's comparison of the staging tree with the shadow copy (seed 004) are
//! the same operation. A snapshot holds every file's size, modification time and blake3 hash; hashes are
//! reused when size and time are unchanged, so a rescan of an unchanged tree reads no file contents.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

/// What the agent knows about one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// Size in bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: u128,
    /// blake3 of the contents, hex.
    pub hash: String,
}

/// Every file under the root, by relative path with `/` separators.
pub type Snapshot = BTreeMap<String, FileState>;

/// What happened to a file between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// New file.
    Created,
    /// Changed content.
    Modified,
    /// Removed file.
    Deleted,
}

/// A difference between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Relative path.
    pub path: String,
    /// What happened.
    pub kind: ChangeKind,
    /// New content hash (none for deletions).
    pub hash: Option<String>,
}

/// Scans `root` (blocking: run it on a blocking thread). Symbolic links and special files are skipped;
/// hidden files (a leading `.`) are skipped too, since editors write their temporaries there.
pub fn scan(root: &Path, previous: &Snapshot) -> io::Result<Snapshot> {
    let mut snapshot = Snapshot::new();
    let mut to_hash = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let file_type = entry.file_type()?;
            let path = entry.path();
            if file_type.is_dir() {
                pending.push(path);
                continue;
            }
            if !file_type.is_file() {
                continue;
            }
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            let relative: Vec<&str> = relative.iter().filter_map(|part| part.to_str()).collect();
            let relative = relative.join("/");
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                // Deleted between listing and reading: it is simply not there.
                Err(_) => continue,
            };
            let len = metadata.len();
            let mtime_ns = metadata
                .modified()
                .ok()
                .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            match previous.get(&relative) {
                Some(known) if known.len == len && known.mtime_ns == mtime_ns => {
                    let hash = known.hash.clone();
                    snapshot.insert(relative, FileState { len, mtime_ns, hash });
                }
                _ => to_hash.push((relative, path, len, mtime_ns)),
            }
        }
    }
    for (relative, hash, len, mtime_ns) in hash_files(to_hash) {
        snapshot.insert(relative, FileState { len, mtime_ns, hash });
    }
    Ok(snapshot)
}

/// Hashes new and changed files on one thread per core (a first scan reads the whole tree). A file that
/// cannot be read (deleted since it was listed) is left out.
fn hash_files(files: Vec<(String, std::path::PathBuf, u64, u128)>) -> Vec<(String, String, u64, u128)> {
    map_parallel(&files, |(relative, path, len, mtime_ns)| {
        hash_file(path)
            .ok()
            .map(|hash| (relative.clone(), hash, *len, *mtime_ns))
    })
    .into_iter()
    .flatten()
    .collect()
}

/// Maps `f` over `items` on one thread per core (at most 8), in order. For work on many independent files
/// (reading, hashing, compressing), which would otherwise leave all cores but one idle.
pub fn map_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    map_parallel_with(items, || (), |_, item| f(item))
}

/// [`map_parallel`] with a state each thread makes once (a compression context, a buffer).
pub fn map_parallel_with<T: Sync, S, R: Send>(
    items: &[T],
    state: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(items.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut own = state();
                    let mut results = Vec::new();
                    loop {
                        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(index) else {
                            return results;
                        };
                        results.push((index, f(&mut own, item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    done.sort_unstable_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, result)| result).collect()
}

fn hash_file(path: &Path) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// What changed from `before` to `after`, in path order.
pub fn differences(before: &Snapshot, after: &Snapshot) -> Vec<Difference> {
    let mut out = Vec::new();
    for (path, state) in after {
        match before.get(path) {
            None => out.push(Difference {
                path: path.clone(),
                kind: ChangeKind::Created,
                hash: Some(state.hash.clone()),
            }),
            Some(old) if old.hash != state.hash => out.push(Difference {
                path: path.clone(),
                kind: ChangeKind::Modified,
                hash: Some(state.hash.clone()),
            }),
            Some(_) => {}
        }
    }
    for path in before.keys() {
        if !after.contains_key(path) {
            out.push(Difference {
                path: path.clone(),
                kind: ChangeKind::Deleted,
                hash: None,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Unix permission bits of a file.
pub fn file_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).ok().map(|m| m.permissions().mode() & 0o7777)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Every file under `dir` with its bytes, by relative path (tests compare whole trees with it).
#[cfg(any(test, feature = "testsuite"))]
pub fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let (Ok(relative), Ok(bytes)) = (path.strip_prefix(dir), std::fs::read(&path)) {
                out.insert(relative.to_string_lossy().to_string(), bytes);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_created_modified_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("a.txt"), "a").expect("write");
        std::fs::write(dir.path().join("sub/b.txt"), "b").expect("write");
        std::fs::write(dir.path().join(".swp"), "x").expect("write");
        let first = scan(dir.path(), &Snapshot::new()).expect("scan");
        assert_eq!(first.len(), 2);
        std::fs::write(dir.path().join("a.txt"), "a2").expect("write");
        std::fs::remove_file(dir.path().join("sub/b.txt")).expect("rm");
        std::fs::write(dir.path().join("c d.txt"), "c").expect("write");
        let second = scan(dir.path(), &first).expect("scan");
        let kinds: Vec<(String, ChangeKind)> = differences(&first, &second)
            .into_iter()
            .map(|d| (d.path, d.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("a.txt".into(), ChangeKind::Modified),
                ("c d.txt".into(), ChangeKind::Created),
                ("sub/b.txt".into(), ChangeKind::Deleted)
            ]
        );
        assert!(differences(&second, &scan(dir.path(), &second).expect("scan")).is_empty());
    }
}

#[cfg(test)]
mod parallel_tests {
    use super::*;

    #[test]
    fn a_parallel_map_keeps_the_order_and_each_thread_its_state() {
        let items: Vec<u64> = (0..1000).collect();
        let squares = map_parallel(&items, |n| n * n);
        assert_eq!(squares, items.iter().map(|n| n * n).collect::<Vec<_>>());
        // Each thread counts the items it saw; together they saw every item once.
        let seen = map_parallel_with(
            &items,
            || 0u64,
            |count, n| {
                *count += 1;
                (*n, *count)
            },
        );
        assert_eq!(seen.iter().map(|(n, _)| *n).collect::<Vec<_>>(), items);
        assert!(seen.iter().all(|(_, count)| *count >= 1));
        assert!(map_parallel(&Vec::<u8>::new(), |n| *n).is_empty());
    }
}
