//! Differences between two snapshots: every change of the tree for the content mover ([`changes`]), and the
//! changes of regular files' content for the CP agent ([`differences`]), which purges URLs.

use serde::{Deserialize, Serialize};

use crate::{Entry, Snapshot};

/// What happened to a path between two snapshots, as the mover must carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// New path.
    Added,
    /// Gone.
    Removed,
    /// Another kind of entry now (a file became a directory), or a link with another target: the old
    /// entry goes and the new one comes.
    Replaced,
    /// A file's content changed (its mode and time may have too).
    Content,
    /// Same kind and content; the permission bits or the time differ (a `chmod`, a `touch`).
    Metadata {
        /// The permission bits differ.
        mode: bool,
        /// The modification time differs.
        mtime: bool,
    },
}

/// One path's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeChange {
    /// Relative path ([`crate::ROOT`] for the root).
    pub path: String,
    /// What changed.
    pub change: Change,
}

/// Every change from `before` to `after`, in path order (a directory before what it holds). Two entries
/// are the same when kind, content (hash or link target), permission bits (not for links) and time agree.
pub fn changes(before: &Snapshot, after: &Snapshot) -> Vec<TreeChange> {
    let mut out = Vec::new();
    for (path, new) in after {
        let change = match before.get(path) {
            None => Some(Change::Added),
            Some(old) => compare(old, new),
        };
        if let Some(change) = change {
            out.push(TreeChange {
                path: path.clone(),
                change,
            });
        }
    }
    for path in before.keys() {
        if !after.contains_key(path) {
            out.push(TreeChange {
                path: path.clone(),
                change: Change::Removed,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn compare(old: &Entry, new: &Entry) -> Option<Change> {
    if old.kind != new.kind || old.target != new.target {
        return Some(Change::Replaced);
    }
    if new.is_file() && (old.hash != new.hash || old.len != new.len) {
        return Some(Change::Content);
    }
    let mode = old.mode_differs(new);
    let mtime = old.mtime_ns != new.mtime_ns;
    (mode || mtime).then_some(Change::Metadata { mode, mtime })
}

/// What happened to a regular file's content between two snapshots.
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

/// A change of a regular file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Relative path.
    pub path: String,
    /// What happened.
    pub kind: ChangeKind,
    /// New content hash (none for deletions).
    pub hash: Option<String>,
}

/// The changes of regular files' content from `before` to `after`, in path order: what a cache must purge.
/// A path that stops being a regular file counts as deleted, one that becomes one as created; directories,
/// links, modes and times are not content.
pub fn differences(before: &Snapshot, after: &Snapshot) -> Vec<Difference> {
    let file = |snapshot: &Snapshot, path: &str| snapshot.get(path).filter(|entry| entry.is_file()).cloned();
    let mut out = Vec::new();
    for (path, state) in after.iter().filter(|(_, entry)| entry.is_file()) {
        match file(before, path) {
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
    for (path, _) in before.iter().filter(|(_, entry)| entry.is_file()) {
        if file(after, path).is_none() {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{Kind, ROOT, scan};

    #[test]
    fn finds_created_modified_deleted_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("a.txt"), "a").expect("write");
        std::fs::write(dir.path().join("sub/b.txt"), "b").expect("write");
        let first = scan(dir.path(), &Snapshot::new()).expect("scan").snapshot;
        assert_eq!(first.len(), 4, "root, sub and two files");
        std::fs::write(dir.path().join("a.txt"), "a2").expect("write");
        std::fs::remove_file(dir.path().join("sub/b.txt")).expect("rm");
        std::fs::write(dir.path().join("c d.txt"), "c").expect("write");
        std::fs::create_dir(dir.path().join("empty")).expect("mkdir");
        let second = scan(dir.path(), &first).expect("scan").snapshot;
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
        let again = scan(dir.path(), &second).expect("scan").snapshot;
        assert!(differences(&second, &again).is_empty());
        assert!(
            changes(&second, &again).is_empty(),
            "a rescan of an unchanged tree finds nothing"
        );
    }

    #[test]
    fn a_chmod_a_touch_a_retargeted_link_and_a_change_of_kind_are_changes() {
        let mut before = Snapshot::new();
        before.insert(ROOT.into(), Entry::dir(1, 0o755));
        before.insert("run.cgi".into(), Entry::file(3, 10, 0o644, "h"));
        before.insert("page".into(), Entry::file(3, 10, 0o644, "h"));
        before.insert("latest".into(), Entry::link("v1", 10));
        before.insert("thing".into(), Entry::file(3, 10, 0o644, "h"));
        let mut after = before.clone();
        after.insert("run.cgi".into(), Entry::file(3, 10, 0o755, "h"));
        after.insert("page".into(), Entry::file(3, 11, 0o644, "h"));
        after.insert("latest".into(), Entry::link("v2", 10));
        after.insert("thing".into(), Entry::dir(10, 0o755));
        let found: Vec<(String, Change)> = changes(&before, &after)
            .into_iter()
            .map(|c| (c.path, c.change))
            .collect();
        assert_eq!(
            found,
            vec![
                ("latest".into(), Change::Replaced),
                (
                    "page".into(),
                    Change::Metadata {
                        mode: false,
                        mtime: true
                    }
                ),
                (
                    "run.cgi".into(),
                    Change::Metadata {
                        mode: true,
                        mtime: false
                    }
                ),
                ("thing".into(), Change::Replaced),
            ]
        );
        assert_eq!(
            differences(&before, &after)
                .into_iter()
                .map(|d| (d.path, d.kind))
                .collect::<Vec<_>>(),
            vec![("thing".to_string(), ChangeKind::Deleted)],
            "for purging only content counts"
        );
    }

    fn entry() -> impl Strategy<Value = Entry> {
        (
            0u8..3,
            0u64..3,
            -2i64..3,
            prop::sample::select(vec![0o644u32, 0o755, 0o600]),
            0u8..3,
        )
            .prop_map(|(kind, len, mtime, mode, content)| match kind {
                0 => Entry::file(len, mtime, mode, &format!("h{content}")),
                1 => Entry::dir(mtime, mode),
                _ => Entry::link(&format!("t{content}"), mtime),
            })
    }

    fn snapshot() -> impl Strategy<Value = Snapshot> {
        prop::collection::btree_map(prop::sample::select(vec!["a", "b", "a/x", "b/y", "c"]), entry(), 0..5)
            .prop_map(|map| map.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// Carries out `changes` on `before` the way the planner turns them into commands: removed and replaced
    /// entries go, then added, replaced and changed ones take the new entry (content from `after`, metadata
    /// only where the change says so).
    fn apply(before: &Snapshot, after: &Snapshot, found: &[TreeChange]) -> Snapshot {
        let mut out = before.clone();
        for change in found {
            if matches!(change.change, Change::Removed | Change::Replaced) {
                out.remove(&change.path);
            }
        }
        for change in found {
            let Some(new) = after.get(&change.path) else {
                continue;
            };
            match change.change {
                Change::Removed => {}
                Change::Added | Change::Replaced | Change::Content => {
                    out.insert(change.path.clone(), new.clone());
                }
                Change::Metadata { mode, mtime } => {
                    let Some(old) = out.get_mut(&change.path) else {
                        continue;
                    };
                    if mode {
                        old.mode = new.mode;
                    }
                    if mtime {
                        old.mtime_ns = new.mtime_ns;
                    }
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn carrying_out_the_changes_gives_the_new_tree(before in snapshot(), after in snapshot()) {
            let found = changes(&before, &after);
            let rebuilt = apply(&before, &after, &found);
            // Links' modes are not compared, so they are not carried.
            let normal = |snapshot: &Snapshot| -> Snapshot {
                snapshot.iter().map(|(path, entry)| {
                    let mut entry = entry.clone();
                    if entry.kind == Kind::Link { entry.mode = 0; }
                    (path.clone(), entry)
                }).collect()
            };
            prop_assert_eq!(normal(&rebuilt), normal(&after));
            prop_assert!(changes(&after, &after).is_empty());
            prop_assert_eq!(found.is_empty(), normal(&before) == normal(&after));
        }
    }
}
