//! Walking a tree into a [`Snapshot`].

use std::io;
use std::path::{Path, PathBuf};

use crate::metadata::{mode_bits, mtime_ns};
use crate::{Entry, Excludes, ROOT, Snapshot};

/// What a scan found: the entries it can carry, and those it cannot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Every file, directory and link, the root included (as [`ROOT`]).
    pub snapshot: Snapshot,
    /// What is under the root but cannot be carried, in path order.
    pub unsupported: Vec<Unsupported>,
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

/// Scans `root` (blocking: run it on a blocking thread), leaving nothing out. Hashes of files whose size
/// and time match `previous` are taken from it. The root may be a link to a directory (a node's `live`).
pub fn scan(root: &Path, previous: &Snapshot) -> io::Result<Scan> {
    scan_excluding(root, previous, &Excludes::none())
}

/// [`scan`], leaving out the entries whose name `excludes` matches (an excluded directory is not entered).
pub fn scan_excluding(root: &Path, previous: &Snapshot, excludes: &Excludes) -> io::Result<Scan> {
    let mut scan = Scan::default();
    let root_metadata = std::fs::metadata(root)?;
    if !root_metadata.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    scan.snapshot.insert(
        ROOT.to_string(),
        Entry::dir(mtime_ns(&root_metadata), mode_bits(&root_metadata)),
    );
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
                let len = metadata.len();
                match previous.get(&relative) {
                    Some(known) if known.is_file() && known.len == len && known.mtime_ns == mtime => {
                        let entry = Entry::file(len, mtime, mode, &known.hash);
                        scan.snapshot.insert(relative, entry);
                    }
                    _ => to_hash.push((relative, entry.path(), len, mtime, mode)),
                }
            } else {
                scan.unsupported.push(Unsupported {
                    path: relative,
                    kind: UnsupportedKind::Special(special_kind(&file_type)),
                });
            }
        }
    }
    for (relative, hashed, len, mtime, mode) in hash_files(to_hash) {
        match hashed {
            Ok(hash) => {
                scan.snapshot.insert(relative, Entry::file(len, mtime, mode, &hash));
            }
            // Deleted between listing and reading: it is simply not there.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => scan.unsupported.push(Unsupported {
                path: relative,
                kind: UnsupportedKind::Unreadable(error.to_string()),
            }),
        }
    }
    scan.unsupported.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(scan)
}

type ToHash = (String, PathBuf, u64, i64, u32);

/// Hashes new and changed files on one thread per core (a first scan reads the whole tree).
fn hash_files(files: Vec<ToHash>) -> Vec<(String, io::Result<String>, u64, i64, u32)> {
    crate::map_parallel(&files, |(relative, path, len, mtime, mode)| {
        (relative.clone(), hash_file(path), *len, *mtime, *mode)
    })
}

fn hash_file(path: &Path) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex().to_string())
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
}
