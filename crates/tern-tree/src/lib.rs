//! Snapshots of a directory tree and their differences: the CP agent's periodic examination of the origin
//! (seed 001) and the content mover's comparison of the staging tree with the shadow copy (seed 004) are
//! the same operation.
//!
//! A snapshot is a faithful model of the tree, the one `rsync -a` keeps: regular files (size, blake3 hash,
//! permission bits, modification time), directories (permission bits and time, also when empty), and
//! symbolic links (their target and time), each under its path relative to the root; the root itself is
//! the entry with the empty path. Hidden files and folders are entries like any other: what is left out is
//! left out by an explicit rule ([`Excludes`] here, the mover's site rules above it). What cannot be
//! carried — a name or link target that is not valid UTF-8, a socket, a fifo, a device, a file that cannot
//! be read — is listed in [`Scan::unsupported`] with the reason, never dropped silently; the caller
//! decides (the mover refuses to plan, the agent warns).
//!
//! A rescan reuses a file's hash without reading it only when the file is provably the one hashed before,
//! the way git's index decides a file is clean: a scan records, beside each hash, how it found the file
//! ([`Stat`]: change time, inode, device), and the next scan of the SAME root (the same directory, by device
//! and inode) reuses the hash only if size, modification time and that record all agree. The change time
//! is what makes this sound: the kernel sets it on every write and `chmod`, and nothing (`touch -d`,
//! `cp -p`, a build that pins mtimes with `SOURCE_DATE_EPOCH`) can set it back, so a file rewritten with
//! the same size and its old mtime is read again. A file whose mtime or change time is within
//! [`RACY_NS`] of the scan's start ("racily clean": a write in the same timestamp tick as the scan could
//! follow it unseen) gets no record, so the next scan reads it again; a snapshot written before records
//! were kept, or scanned from another tree, is simply hashed once. The record is where a copy was seen,
//! not what it holds: it takes no part in comparing entries (a node's copy has other inodes and change
//! times), and [`forget_stats`] drops it to have every file read (`tern publish --checksum`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod diff;
mod durable;
mod exclude;
mod link;
mod metadata;
mod parallel;
mod scan;

pub use diff::{Change, ChangeKind, Difference, TreeChange, changes, differences};
pub use durable::{create_private_dir, sync_directory, sync_file_system, write_durably};
pub use exclude::{EDITOR_TEMPORARIES, Excludes};
pub use link::{LinkError, check_link, check_link_in, check_link_with};
pub use metadata::{
    CARRIED_MODE, copy_metadata, file_mode, mode_bits, mtime_ns, remove_tree, set_file_metadata, set_mode, set_mtime,
};
pub use parallel::{map_parallel, map_parallel_with};
pub use scan::{RACY_NS, Scan, Unsupported, UnsupportedKind, scan, scan_excluding};

/// The path of the root in a [`Snapshot`].
pub const ROOT: &str = "";

/// What kind of entry a path is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file (snapshots written before directories and links were kept hold only these).
    #[default]
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Link,
}

impl Kind {
    fn is_file(&self) -> bool {
        *self == Kind::File
    }

    /// The word for it in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Link => "symbolic link",
        }
    }
}

/// What a snapshot knows about one path. Serialised compactly (a file's `kind` and the empty fields are left
/// out), and a snapshot written before directories, links and modes were kept still reads: its entries are
/// files with mode 0, which differs from any real mode, so the next publish sets every mode.
///
/// Two entries are equal when kind, size, time, mode, hash and target agree: [`Entry::stat`] is left out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// File, directory or link.
    #[serde(default, skip_serializing_if = "Kind::is_file")]
    pub kind: Kind,
    /// A file's size in bytes; 0 for a directory; the length of a link's target.
    pub len: u64,
    /// Modification time in nanoseconds since the Unix epoch (negative before 1970; a link's own time).
    pub mtime_ns: i64,
    /// Permission bits (`0o7777`: with setuid, setgid and sticky); not compared for links, whose mode
    /// Linux fixes at `0o777`.
    #[serde(default)]
    pub mode: u32,
    /// blake3 of a file's content, hex; empty for directories and links.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// A link's target, as stored in the link (relative or absolute, not resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How the scan found this file (the root: which directory was scanned), for the next scan's quick
    /// check; none when the file was racily clean, or for entries not made by a scan. Not compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<Stat>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        // Listed field by field, so that a field added later is a decision here. `stat` says where this copy
        // was seen, not what it is: staging and every node hold the same file under other inodes.
        let Entry {
            kind,
            len,
            mtime_ns,
            mode,
            hash,
            target,
            stat: _,
        } = self;
        *kind == other.kind
            && *len == other.len
            && *mtime_ns == other.mtime_ns
            && *mode == other.mode
            && *hash == other.hash
            && *target == other.target
    }
}

impl Eq for Entry {}

/// How a scan found a file on disk, beside the hash it computed: git's index "stat data". The next scan of
/// the same root reuses the hash only if the file still has this change time, inode and device (and its
/// size and modification time). For the root entry it identifies the directory scanned, so a record made
/// from another staging tree is never trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// Status change time (`st_ctime`), nanoseconds since the epoch: the kernel sets it on every change of
    /// content or metadata, and it cannot be set back.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
}

impl Stat {
    /// The record of `metadata` (none where the platform has no change time and inode).
    pub fn of(metadata: &std::fs::Metadata) -> Option<Stat> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Some(Stat {
                ctime_ns: metadata
                    .ctime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(metadata.ctime_nsec()),
                ino: metadata.ino(),
                dev: metadata.dev(),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = metadata;
            None
        }
    }

    /// Whether two records are of the same inode on the same device (the root's identity).
    pub fn same_inode(&self, other: &Stat) -> bool {
        self.ino == other.ino && self.dev == other.dev
    }
}

/// Drops every [`Stat`] record of `snapshot`, so that a scan against it reads and hashes every file
/// (`tern publish --checksum`, like `rsync -c`); comparisons with it are unchanged.
pub fn forget_stats(snapshot: &mut Snapshot) {
    for entry in snapshot.values_mut() {
        entry.stat = None;
    }
}

impl Entry {
    /// A regular file.
    pub fn file(len: u64, mtime_ns: i64, mode: u32, hash: &str) -> Entry {
        Entry {
            kind: Kind::File,
            len,
            mtime_ns,
            mode,
            hash: hash.to_string(),
            target: None,
            stat: None,
        }
    }

    /// A directory.
    pub fn dir(mtime_ns: i64, mode: u32) -> Entry {
        Entry {
            kind: Kind::Dir,
            len: 0,
            mtime_ns,
            mode,
            hash: String::new(),
            target: None,
            stat: None,
        }
    }

    /// A symbolic link to `target`.
    pub fn link(target: &str, mtime_ns: i64) -> Entry {
        Entry {
            kind: Kind::Link,
            len: target.len() as u64,
            mtime_ns,
            mode: 0o777,
            hash: String::new(),
            target: Some(target.to_string()),
            stat: None,
        }
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == Kind::File
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// Whether this is a symbolic link.
    pub fn is_link(&self) -> bool {
        self.kind == Kind::Link
    }

    /// Whether the permission bits differ in a way that counts (links have none of their own).
    pub fn mode_differs(&self, other: &Entry) -> bool {
        self.kind != Kind::Link && self.mode != other.mode
    }
}

/// Every entry under the root, by relative path with `/` separators; the root is [`ROOT`] (`""`).
pub type Snapshot = BTreeMap<String, Entry>;

/// Every regular file under `dir` with its bytes, by relative path (tests compare whole trees with it);
/// directories and links are not listed (compare [`scan`] snapshots for those).
#[cfg(any(test, feature = "testsuite"))]
pub fn contents(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file()
                && let (Ok(relative), Ok(bytes)) = (path.strip_prefix(dir), std::fs::read(&path))
            {
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
    fn a_snapshot_written_before_kinds_and_modes_still_reads() {
        let old = r#"{"a.txt":{"len":1,"mtime_ns":1700000000123456789,"hash":"ab"}}"#;
        let snapshot: Snapshot = serde_json::from_str(old).expect("reads");
        let entry = &snapshot["a.txt"];
        assert_eq!(entry.kind, Kind::File);
        assert_eq!(entry.mode, 0);
        assert_eq!(entry.mtime_ns, 1_700_000_000_123_456_789);
        let written = serde_json::to_string(&Entry::file(1, 5, 0o644, "ab")).expect("json");
        assert_eq!(written, r#"{"len":1,"mtime_ns":5,"mode":420,"hash":"ab"}"#);
        let link = Entry::link("../x", -5);
        let again: Entry = serde_json::from_str(&serde_json::to_string(&link).expect("json")).expect("reads");
        assert_eq!(again, link);
    }
}
