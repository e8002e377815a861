//! The other paths a change reaches through symbolic links. An origin that follows links (as `tern serve`
//! and most web servers do) serves a file under every link to it or to a directory above it: `current ->
//! releases/42` serves `releases/42/index.html` as `current/index.html` too, and a cache holds both. A
//! change to the file is a change to each of those URLs, and a link that points elsewhere (the atomic
//! "swap the current link" deploy) changes every file under it. The agent reports both, so no edge keeps
//! the old content under a link's name.
//!
//! One level of links is followed (a link to a link is not); links with absolute targets or targets that
//! leave the root are left out (the origin's view of them is not the tree's).

use std::collections::BTreeMap;

use tern_tree::{ChangeKind, Difference, Snapshot};

/// The differences `found` (between `before` and `after`) makes under the names of links, and those a
/// link that appeared, vanished or now points elsewhere makes for every file under its old and new
/// targets; in path order, without the paths `found` names itself.
pub fn through_links(before: &Snapshot, after: &Snapshot, found: &[Difference]) -> Vec<Difference> {
    let (old_links, new_links) = (links(before), links(after));
    let mut out: BTreeMap<String, Difference> = BTreeMap::new();
    // A file that changed, under every link to it (or to a directory above it), as the links are now.
    for difference in found {
        for (link, target) in &new_links {
            if let Some(alias) = under(&difference.path, target, link) {
                out.insert(
                    alias.clone(),
                    Difference {
                        path: alias,
                        kind: difference.kind,
                        hash: difference.hash.clone(),
                    },
                );
            }
        }
    }
    // A link that changed: every file under its old target is gone from its name, every file under its
    // new one is there now (a modification where both have it).
    for (link, old) in &old_links {
        if new_links.get(link) == Some(old) {
            continue;
        }
        for path in files_under(before, old) {
            if let Some(alias) = under(path, old, link) {
                out.entry(alias.clone()).or_insert(Difference {
                    path: alias,
                    kind: ChangeKind::Deleted,
                    hash: None,
                });
            }
        }
    }
    for (link, new) in &new_links {
        if old_links.get(link) == Some(new) {
            continue;
        }
        for path in files_under(after, new) {
            if let Some(alias) = under(path, new, link) {
                let existed = out
                    .get(&alias)
                    .is_some_and(|difference| difference.kind == ChangeKind::Deleted);
                let kind = if existed {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Created
                };
                out.insert(
                    alias.clone(),
                    Difference {
                        path: alias,
                        kind,
                        hash: after.get(path).map(|entry| entry.hash.clone()),
                    },
                );
            }
        }
    }
    let named: std::collections::BTreeSet<&str> = found.iter().map(|d| d.path.as_str()).collect();
    out.into_values().filter(|d| !named.contains(d.path.as_str())).collect()
}

/// The links of `snapshot` whose targets resolve inside the root: link path → resolved target path.
fn links(snapshot: &Snapshot) -> BTreeMap<String, String> {
    snapshot
        .iter()
        .filter(|(_, entry)| entry.is_link())
        .filter_map(|(path, entry)| {
            let target = entry.target.as_deref()?;
            Some((path.clone(), resolve(path, target)?))
        })
        .collect()
}

/// The root-relative path a link at `link` with `target` points to (`""`: the root itself, as `ln -s .`
/// at the top or `ln -s ..` one level down make); `None` for an absolute target or one that leaves the
/// root.
fn resolve(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            name => parts.push(name),
        }
    }
    Some(parts.join("/"))
}

/// `path` seen through `link` when it is `target` or under it (everything is under the root, `""`).
fn under(path: &str, target: &str, link: &str) -> Option<String> {
    if path == target {
        return Some(link.to_string());
    }
    let rest = if target.is_empty() {
        path
    } else {
        path.strip_prefix(target)?.strip_prefix('/')?
    };
    Some(format!("{link}/{rest}"))
}

/// The regular files of `snapshot` at `target` or under it (every file, for the root `""`).
fn files_under<'a>(snapshot: &'a Snapshot, target: &'a str) -> impl Iterator<Item = &'a String> + 'a {
    let prefix = format!("{target}/");
    snapshot
        .iter()
        .filter(move |(path, entry)| {
            entry.is_file() && (target.is_empty() || path.as_str() == target || path.starts_with(&prefix))
        })
        .map(|(path, _)| path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_tree::{Entry, Kind, differences};

    fn file(hash: &str) -> Entry {
        Entry {
            kind: Kind::File,
            len: 1,
            mtime_ns: 0,
            mode: 0o644,
            hash: hash.into(),
            target: None,
            stat: None,
        }
    }

    fn link(target: &str) -> Entry {
        Entry {
            kind: Kind::Link,
            len: target.len() as u64,
            mtime_ns: 0,
            mode: 0o777,
            hash: String::new(),
            target: Some(target.into()),
            stat: None,
        }
    }

    fn paths(found: &[Difference]) -> Vec<(&str, ChangeKind)> {
        found.iter().map(|d| (d.path.as_str(), d.kind)).collect()
    }

    #[test]
    fn a_changed_file_is_changed_under_every_link_to_it_or_above_it() {
        let before: Snapshot = [
            ("target.txt".to_string(), file("1")),
            ("alias.txt".to_string(), link("target.txt")),
            ("docs/a.html".to_string(), file("a")),
            ("mirror".to_string(), link("docs")),
            ("outside".to_string(), link("../etc")),
            ("absolute".to_string(), link("/etc/passwd")),
        ]
        .into();
        let mut after = before.clone();
        after.insert("target.txt".into(), file("2"));
        after.insert("docs/a.html".into(), file("b"));
        let found = differences(&before, &after);
        assert_eq!(
            paths(&through_links(&before, &after, &found)),
            [
                ("alias.txt", ChangeKind::Modified),
                ("mirror/a.html", ChangeKind::Modified)
            ]
        );
    }

    #[test]
    fn a_link_to_the_root_or_to_the_directory_above_carries_every_change_under_its_name() {
        let before: Snapshot = [
            ("real/g.txt".to_string(), file("1")),
            ("self".to_string(), link(".")),
            ("real/up".to_string(), link("..")),
            ("real/deep/up2".to_string(), link("../..")),
        ]
        .into();
        let mut after = before.clone();
        after.insert("real/g.txt".into(), file("2"));
        let found = differences(&before, &after);
        assert_eq!(
            paths(&through_links(&before, &after, &found)),
            [
                ("real/deep/up2/real/g.txt", ChangeKind::Modified),
                ("real/up/real/g.txt", ChangeKind::Modified),
                ("self/real/g.txt", ChangeKind::Modified),
            ]
        );
        // A new link to the root makes every file appear under its name.
        let mut linked = after.clone();
        linked.insert("mirror".into(), link("."));
        let appeared = through_links(&after, &linked, &differences(&after, &linked));
        assert!(
            paths(&appeared).contains(&("mirror/real/g.txt", ChangeKind::Created)),
            "{appeared:?}"
        );
    }

    #[test]
    fn a_link_swapped_to_another_release_changes_every_file_under_it() {
        let releases: Snapshot = [
            ("releases/1/index.html".to_string(), file("one")),
            ("releases/1/old.css".to_string(), file("old")),
            ("releases/2/index.html".to_string(), file("two")),
            ("releases/2/new.js".to_string(), file("new")),
        ]
        .into();
        let mut before = releases.clone();
        before.insert("current".into(), link("releases/1"));
        let mut after = releases;
        after.insert("current".into(), link("releases/2"));
        let found = differences(&before, &after);
        assert!(found.is_empty(), "no regular file changed");
        let through = through_links(&before, &after, &found);
        assert_eq!(
            paths(&through),
            [
                ("current/index.html", ChangeKind::Modified),
                ("current/new.js", ChangeKind::Created),
                ("current/old.css", ChangeKind::Deleted),
            ]
        );
        assert_eq!(through[0].hash.as_deref(), Some("two"));
        assert_eq!(resolve("a/b/link", "../c"), Some("a/c".into()));
        assert_eq!(resolve("link", "../c"), None);
    }
}
