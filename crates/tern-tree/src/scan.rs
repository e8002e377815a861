//! Walking a tree into a [`Snapshot`].

use std::io;
use std::path::{Path, PathBuf};

use crate::metadata::{mode_bits, mtime_ns};
use crate::{Entry, Excludes, ROOT, Snapshot, Stat};

/// What a scan found: the entries it can carry, and those it cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Every file, directory and link, the root included (as [`ROOT`]).
    pub snapshot: Snapshot,
    /// What is under the root but cannot be carried, in path order.
    pub unsupported: Vec<Unsupported>,
    /// How many regular files the scan read to hash them (the others' hashes were reused).
    pub hashed: usize,
}

/// An entry a snapshot cannot hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// Its path relative to the root; a name that is not UTF-8 is shown with `\xNN` escapes for the
    /// bytes that are not.
    pub path: String,
    /// Why it cannot be carried.
    pub kind: UnsupportedKind,
}

/// Why an entry cannot be carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnsupportedKind {
    /// Its name is not valid UTF-8. Assignments, snapshots, the job API and URLs all carry paths as UTF-8
    /// text, and a web server maps a URL to a name through an encoding anyway, so such a name is refused
    /// (with its bytes shown) rather than carried in a lossy or private spelling.
    NameNotUtf8,
    /// A link whose target is not valid UTF-8.
    TargetNotUtf8,
    /// A socket, fifo, or block or character device: nothing a web server serves, and `rsync -a` without
    /// `-D` skips them too.
    Special(&'static str),
    /// It could not be read (the message says why).
    Unreadable(String),
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            UnsupportedKind::NameNotUtf8 => write!(f, "`{}`: the name is not valid UTF-8", self.path),
            UnsupportedKind::TargetNotUtf8 => {
                write!(f, "`{}`: the symbolic link's target is not valid UTF-8", self.path)
            }
            UnsupportedKind::Special(what) => write!(f, "`{}`: a {what}, not a file, directory or link", self.path),
            UnsupportedKind::Unreadable(reason) => write!(f, "`{}`: cannot be read: {reason}", self.path),
        }
    }
}

/// How close to a scan's start a file's modification or change time may be for the scan to record how it
/// found the file (2 s: coarser than any file system's timestamp granularity — FAT keeps 2 s — and than the
/// lag of the kernel's coarse clock behind the system clock). A file written within it could be written
/// again in the same timestamp tick after it was hashed, unseen by a later quick check ("racily clean", in
/// git's words), so the next scan reads it again.
pub const RACY_NS: i64 = 2_000_000_000;

/// Scans `root` (blocking: run it on a blocking thread), leaving nothing out. A file's hash is taken from
/// `previous` without reading the file only when `previous` was scanned from this same directory and the
/// file's size, modification time and [`Stat`] record (change time, inode, device) are unchanged (the crate
/// header says why that is sound); every other file is read. The root may be a link to a directory (a
/// node's `live`).
pub fn scan(root: &Path, previous: &Snapshot) -> io::Result<Scan> {
    scan_excluding(root, previous, &Excludes::none())
}

/// [`scan`], leaving out the entries whose name `excludes` matches (an excluded directory is not entered).
pub fn scan_excluding(root: &Path, previous: &Snapshot, excludes: &Excludes) -> io::Result<Scan> {
    scan_at(root, previous, excludes, now_ns())
}

fn now_ns() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// A file seen in the listing that is to be read.
struct ToHash {
    relative: String,
    path: PathBuf,
    len: u64,
    mtime: i64,
    mode: u32,
    stat: Option<Stat>,
}

/// [`scan_excluding`] as if it started at `started_ns` (tests move the clock instead of sleeping).
fn scan_at(root: &Path, previous: &Snapshot, excludes: &Excludes, started_ns: i64) -> io::Result<Scan> {
    let mut scan = Scan::default();
    let root_metadata = std::fs::metadata(root)?;
    if !root_metadata.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    // Records made from another directory (another staging tree, a copy of this one) are never trusted.
    let root_stat = Stat::of(&root_metadata);
    let same_root = match (root_stat, previous.get(ROOT).and_then(|known| known.stat)) {
        (Some(now), Some(then)) => now.same_inode(&then),
        _ => false,
    };
    let settled = |mtime: i64, stat: Option<Stat>| {
        stat.filter(|stat| {
            let before = started_ns.saturating_sub(RACY_NS);
            mtime < before && stat.ctime_ns < before
        })
    };
    let mut root_entry = Entry::dir(mtime_ns(&root_metadata), mode_bits(&root_metadata));
    root_entry.stat = root_stat;
    scan.snapshot.insert(ROOT.to_string(), root_entry);
    let mut to_hash = Vec::new();
    let mut pending: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            // Deleted between listing its parent and reading it: it is simply not there.
            Err(error) if error.kind() == io::ErrorKind::NotFound && !prefix.is_empty() => {
                scan.snapshot.remove(prefix.trim_end_matches('/'));
                continue;
            }
            Err(error) if !prefix.is_empty() => {
                let path = prefix.trim_end_matches('/').to_string();
                scan.snapshot.remove(&path);
                scan.unsupported.push(Unsupported {
                    path,
                    kind: UnsupportedKind::Unreadable(error.to_string()),
                });
                continue;
            }
            Err(error) => return Err(error),
        };
        for entry in listing {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                scan.unsupported.push(Unsupported {
                    path: format!("{prefix}{}", escaped(&name)),
                    kind: UnsupportedKind::NameNotUtf8,
                });
                continue;
            };
            if excludes.matches(name) {
                continue;
            }
            let relative = format!("{prefix}{name}");
            // Not following links (`lstat`).
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => {
                    scan.unsupported.push(Unsupported {
                        path: relative,
                        kind: UnsupportedKind::Unreadable(error.to_string()),
                    });
                    continue;
                }
            };
            let file_type = metadata.file_type();
            let (mtime, mode) = (mtime_ns(&metadata), mode_bits(&metadata));
            if file_type.is_dir() {
                scan.snapshot.insert(relative.clone(), Entry::dir(mtime, mode));
                pending.push((entry.path(), format!("{relative}/")));
            } else if file_type.is_symlink() {
                match std::fs::read_link(entry.path()) {
                    Ok(target) => match target.to_str() {
                        Some(target) => {
                            scan.snapshot.insert(relative, Entry::link(target, mtime));
                        }
                        None => scan.unsupported.push(Unsupported {
                            path: relative,
                            kind: UnsupportedKind::TargetNotUtf8,
                        }),
                    },
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => scan.unsupported.push(Unsupported {
                        path: relative,
                        kind: UnsupportedKind::Unreadable(error.to_string()),
                    }),
                }
            } else if file_type.is_file() {
                let (len, stat) = (metadata.len(), Stat::of(&metadata));
                let known = previous.get(&relative).filter(|known| {
                    same_root
                        && known.is_file()
                        && known.len == len
                        && known.mtime_ns == mtime
                        && known.stat.is_some()
                        && known.stat == stat
                });
                match known {
                    Some(known) => {
                        let mut entry = Entry::file(len, mtime, mode, &known.hash);
                        entry.stat = settled(mtime, stat);
                        scan.snapshot.insert(relative, entry);
                    }
                    None => to_hash.push(ToHash {
                        relative,
                        path: entry.path(),
                        len,
                        mtime,
                        mode,
                        stat,
                    }),
                }
            } else {
                scan.unsupported.push(Unsupported {
                    path: relative,
                    kind: UnsupportedKind::Special(special_kind(&file_type)),
                });
            }
        }
    }
    scan.hashed = to_hash.len();
    for (file, hashed) in to_hash.iter().zip(hash_files(&to_hash)) {
        match hashed {
            Ok((hash, after)) => {
                let mut entry = Entry::file(file.len, file.mtime, file.mode, &hash);
                // Changed while it was read (or replaced since it was listed): the hash may be of neither
                // version, so the next scan reads it again.
                let unchanged =
                    after.len() == file.len && mtime_ns(&after) == file.mtime && Stat::of(&after) == file.stat;
                entry.stat = settled(file.mtime, file.stat.filter(|_| unchanged));
                scan.snapshot.insert(file.relative.clone(), entry);
            }
            // Deleted between listing and reading: it is simply not there.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => scan.unsupported.push(Unsupported {
                path: file.relative.clone(),
                kind: UnsupportedKind::Unreadable(error.to_string()),
            }),
        }
    }
    scan.unsupported.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(scan)
}

/// Hashes new and changed files on one thread per core (a first scan reads the whole tree); with each
/// hash, the file's metadata once it was read.
fn hash_files(files: &[ToHash]) -> Vec<io::Result<(String, std::fs::Metadata)>> {
    crate::map_parallel(files, |file| hash_file(&file.path))
}

fn hash_file(path: &Path) -> io::Result<(String, std::fs::Metadata)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(&mut file)?;
    Ok((hasher.finalize().to_hex().to_string(), file.metadata()?))
}

/// A name with the bytes that are not UTF-8 shown as `\xNN`.
fn escaped(name: &std::ffi::OsStr) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        name.as_bytes().utf8_chunks().fold(String::new(), |mut out, chunk| {
            out.push_str(chunk.valid());
            for byte in chunk.invalid() {
                out.push_str(&format!("\\x{byte:02x}"));
            }
            out
        })
    }
    #[cfg(not(unix))]
    {
        name.to_string_lossy().to_string()
    }
}

fn special_kind(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_socket() {
            return "socket";
        }
        if file_type.is_fifo() {
            return "fifo";
        }
        if file_type.is_block_device() {
            return "block device";
        }
        if file_type.is_char_device() {
            return "character device";
        }
    }
    let _ = file_type;
    "special file"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_entries_empty_directories_links_and_modes_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join(".well-known/acme-challenge")).expect("mkdir");
        std::fs::write(root.join(".well-known/acme-challenge/x"), "token").expect("write");
        std::fs::write(root.join(".htaccess"), "Deny from all").expect("write");
        std::fs::create_dir(root.join("uploads")).expect("mkdir");
        std::fs::write(root.join("empty"), "").expect("write");
        crate::set_mode(&root.join("uploads"), 0o700).expect("chmod");
        #[cfg(unix)]
        std::os::unix::fs::symlink("empty", root.join("alias")).expect("symlink");
        std::fs::write(root.join(".index.html.swp"), "swap").expect("write");
        let found = scan(root, &Snapshot::new()).expect("scan");
        assert!(found.unsupported.is_empty(), "{:?}", found.unsupported);
        let snapshot = found.snapshot;
        assert!(snapshot[ROOT].is_dir());
        assert!(snapshot[".well-known"].is_dir());
        assert!(snapshot[".well-known/acme-challenge/x"].is_file());
        assert!(snapshot[".htaccess"].is_file());
        assert_eq!(snapshot["uploads"], {
            let metadata = std::fs::metadata(root.join("uploads")).expect("stat");
            Entry::dir(mtime_ns(&metadata), 0o700)
        });
        assert_eq!(snapshot["empty"].len, 0);
        assert_eq!(snapshot["empty"].hash, blake3::hash(b"").to_hex().to_string());
        #[cfg(unix)]
        assert_eq!(snapshot["alias"].target.as_deref(), Some("empty"));
        assert!(
            snapshot.contains_key(".index.html.swp"),
            "the mover's scan leaves out nothing"
        );
        let agent = scan_excluding(root, &Snapshot::new(), &Excludes::editor_temporaries()).expect("scan");
        assert!(!agent.snapshot.contains_key(".index.html.swp"));
        assert!(agent.snapshot.contains_key(".htaccess"));
    }

    #[cfg(unix)]
    #[test]
    fn names_that_are_not_utf8_and_special_files_are_reported_not_dropped() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join(std::ffi::OsStr::from_bytes(b"caf\xe9.html")), "latin-1").expect("write");
        std::fs::write(root.join("café.html"), "utf-8").expect("write");
        let _socket = std::os::unix::net::UnixListener::bind(root.join("app.sock")).expect("bind");
        let found = scan(root, &Snapshot::new()).expect("scan");
        assert!(found.snapshot.contains_key("café.html"));
        let messages: Vec<String> = found.unsupported.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "`app.sock`: a socket, not a file, directory or link",
                "`caf\\xe9.html`: the name is not valid UTF-8",
            ]
        );
    }

    /// A scan this long after the files were written: they are settled, so it records how it found them.
    #[cfg(unix)]
    fn later(seconds: i64) -> i64 {
        now_ns() + seconds * 1_000_000_000
    }

    #[cfg(unix)]
    #[test]
    fn a_file_rewritten_with_the_same_size_and_its_time_set_back_is_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, page) = (dir.path(), dir.path().join("index.html"));
        std::fs::write(&page, "version 1.2.3\n").expect("write");
        std::fs::write(root.join("other.html"), "untouched").expect("write");
        crate::set_mtime(&page, 1_000_000_000).expect("touch -d @1");
        let first = scan_at(root, &Snapshot::new(), &Excludes::none(), later(10)).expect("scan");
        assert_eq!(first.hashed, 2);
        assert!(
            first.snapshot["index.html"].stat.is_some(),
            "settled: the scan records it"
        );

        // What a build with pinned mtimes (SOURCE_DATE_EPOCH, Nix's mtime 1) or `cp -p` does.
        std::fs::write(&page, "version 1.2.4\n").expect("write");
        crate::set_mtime(&page, 1_000_000_000).expect("touch -d @1");
        let second = scan_at(root, &first.snapshot, &Excludes::none(), later(20)).expect("scan");
        let (before, after) = (&first.snapshot["index.html"], &second.snapshot["index.html"]);
        assert_eq!(
            (before.len, before.mtime_ns),
            (after.len, after.mtime_ns),
            "size and mtime agree"
        );
        assert_eq!(after.hash, blake3::hash(b"version 1.2.4\n").to_hex().to_string());
        assert_eq!(
            second.hashed, 1,
            "only the rewritten file is read: its change time moved"
        );
        assert_eq!(
            crate::changes(&first.snapshot, &second.snapshot),
            [crate::TreeChange {
                path: "index.html".into(),
                change: crate::Change::Content
            }]
        );
    }

    #[cfg(unix)]
    #[test]
    fn an_untouched_file_is_not_read_again_but_a_record_from_another_tree_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (root, copy) = (dir.path().join("staging"), dir.path().join("other"));
        for tree in [&root, &copy] {
            std::fs::create_dir_all(tree.join("d")).expect("mkdir");
            std::fs::write(tree.join("d/a.html"), "aaaa").expect("write");
            crate::set_mtime(&tree.join("d/a.html"), 1_000_000_000).expect("touch");
        }
        std::fs::write(copy.join("d/a.html"), "bbbb").expect("write");
        crate::set_mtime(&copy.join("d/a.html"), 1_000_000_000).expect("touch");
        let first = scan_at(&root, &Snapshot::new(), &Excludes::none(), later(10)).expect("scan");
        assert_eq!(first.hashed, 1);
        let again = scan_at(&root, &first.snapshot, &Excludes::none(), later(20)).expect("scan");
        assert_eq!(again.hashed, 0, "nothing is read");
        assert_eq!(again.snapshot, first.snapshot);
        assert_eq!(again.snapshot["d/a.html"].stat, first.snapshot["d/a.html"].stat);

        // Another staging tree whose file has the same path, size and mtime but other bytes.
        let other = scan_at(&copy, &first.snapshot, &Excludes::none(), later(20)).expect("scan");
        assert_eq!(other.hashed, 1, "a record made from another root is not trusted");
        assert_eq!(
            other.snapshot["d/a.html"].hash,
            blake3::hash(b"bbbb").to_hex().to_string()
        );

        // `--checksum`: with the records forgotten, every file is read.
        let mut forgotten = first.snapshot.clone();
        crate::forget_stats(&mut forgotten);
        assert_eq!(forgotten, first.snapshot, "the records take no part in equality");
        let checked = scan_at(&root, &forgotten, &Excludes::none(), later(20)).expect("scan");
        assert_eq!(checked.hashed, 1);
    }

    #[cfg(unix)]
    #[test]
    fn a_racily_clean_file_and_an_old_record_are_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("new.html"), "just written").expect("write");
        crate::set_mtime(&root.join("new.html"), 1_000_000_000).expect("touch");
        // Scanned now: its change time is within the racy window, so nothing is recorded...
        let first = scan(root, &Snapshot::new()).expect("scan");
        assert_eq!(first.snapshot["new.html"].stat, None);
        assert!(first.snapshot[ROOT].stat.is_some(), "the root is identified");
        // ...and the next scan reads it again (and, now settled, records it).
        let second = scan_at(root, &first.snapshot, &Excludes::none(), later(10)).expect("scan");
        assert_eq!(second.hashed, 1);
        assert!(second.snapshot["new.html"].stat.is_some());

        // A snapshot persisted before records were kept reads, and its files are hashed once.
        let mut old: Snapshot = serde_json::from_str(
            &serde_json::to_string(&second.snapshot)
                .expect("json")
                .replace(r#","stat":{"#, r#","unknown_then":{"#),
        )
        .expect("reads");
        assert!(old.values().all(|entry| entry.stat.is_none()));
        old.insert(ROOT.into(), second.snapshot[ROOT].clone());
        let third = scan_at(root, &old, &Excludes::none(), later(20)).expect("scan");
        assert_eq!(third.hashed, 1);
        let fourth = scan_at(root, &third.snapshot, &Excludes::none(), later(30)).expect("scan");
        assert_eq!(fourth.hashed, 0);
    }
}
