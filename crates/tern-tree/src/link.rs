//! Which symbolic links a site may hold: those that stay inside the site root wherever the site is put.
//! The mover checks every link of the staging tree with [`check_link_in`] before it plans, and a node checks
//! every link an assignment asks for with [`check_link`] before it makes it (DESIGN: "no symlink escapes").
//!
//! The target must be relative (an absolute one names a place on this machine, not in the site), and it is
//! resolved lexically against the link's directory, the way `rsync --safe-links` judges links: each name
//! descends, each `..` climbs back, and at no point may it climb above the root (`../../etc/passwd` from
//! `docs/`, or `a/../../x` from the root, is refused). `bin/../index.html` stays inside and passes, as
//! rsync copies it.
//!
//! Lexical resolution is what the kernel does only where the names a `..` climbs out of are real
//! directories: after `bin`, a link, `..` climbs from wherever `bin` points, and with `bin -> .` at the
//! root, `bin/../x` is the root's *parent*'s `x` although the text says `x`. So [`check_link_in`], which
//! sees the whole tree, also requires every name of the target that a `..` climbs back out of to be a
//! directory of the tree (not a link, and not missing: a name under a link is not in a snapshot, since scans
//! never descend through links). The names of the link's own path are real directories by construction,
//! and the links its target passes through without climbing back are held to the same rule themselves, so
//! no chain of links climbs out. [`check_link`] alone, without the tree, applies only the lexical rule.

use crate::Snapshot;

/// Why a link is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The target is empty.
    #[error("its target is empty")]
    Empty,
    /// The target is absolute: it names a place on this machine, not in the site.
    #[error("its target `{0}` is absolute; a site's links must be relative to stay inside it on every node")]
    Absolute(String),
    /// A `..` climbs back out of a name that is not a directory of the tree (a link, or nothing).
    #[error(
        "its target `{target}` climbs with `..` out of `{through}`, which is not a directory of the site (a file, a symbolic link, or missing), so where it lands cannot be told; point the link at the place itself"
    )]
    ClimbsOutOfLink {
        /// The target.
        target: String,
        /// The path (relative to the root) of the name climbed out of.
        through: String,
    },
    /// The target climbs above the root.
    #[error("its target `{0}` points outside the site root")]
    Outside(String),
    /// A NUL byte or backslash, which have no place in a portable target.
    #[error("its target `{0}` contains a backslash or NUL byte")]
    BadCharacter(String),
}

/// Checks that the link at `link` (relative to the root, `/`-separated) with target `target` stays inside
/// the root, resolved lexically (see the module header). Without the tree it cannot tell whether a name
/// climbed out of with `..` is a link: the mover uses [`check_link_in`].
pub fn check_link(link: &str, target: &str) -> Result<(), LinkError> {
    climbed_out_of(link, target).map(|_| ())
}

/// [`check_link`], and every name of the target that a `..` climbs back out of is a directory of `tree`
/// (the snapshot the link is part of).
pub fn check_link_in(link: &str, target: &str, tree: &Snapshot) -> Result<(), LinkError> {
    check_link_with(link, target, |path| tree.get(path).is_some_and(|entry| entry.is_dir()))
}

/// [`check_link_in`] against any tree: `is_dir` says whether a path (relative to the root) is a real
/// directory, not a link (a node can answer it with `symlink_metadata` on the tree it has applied).
pub fn check_link_with(link: &str, target: &str, is_dir: impl Fn(&str) -> bool) -> Result<(), LinkError> {
    for through in climbed_out_of(link, target)? {
        if !is_dir(&through) {
            return Err(LinkError::ClimbsOutOfLink {
                target: target.to_string(),
                through,
            });
        }
    }
    Ok(())
}

/// Resolves `target` lexically from the directory of `link`; the paths (relative to the root) of the
/// target's names that a later `..` climbs back out of.
fn climbed_out_of(link: &str, target: &str) -> Result<Vec<String>, LinkError> {
    if target.is_empty() {
        return Err(LinkError::Empty);
    }
    if target.contains('\0') || target.contains('\\') {
        return Err(LinkError::BadCharacter(target.to_string()));
    }
    if target.starts_with('/') {
        return Err(LinkError::Absolute(target.to_string()));
    }
    // Where the resolution stands: each name with whether it came from the target (the link's own
    // directories are real ones).
    let mut at: Vec<(&str, bool)> = link
        .split('/')
        .filter(|part| !part.is_empty())
        .map(|part| (part, false))
        .collect();
    at.pop();
    let mut climbed = Vec::new();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                let path = at.iter().map(|(name, _)| *name).collect::<Vec<_>>().join("/");
                match at.pop() {
                    None => return Err(LinkError::Outside(target.to_string())),
                    Some((_, true)) => climbed.push(path),
                    Some((_, false)) => {}
                }
            }
            name => at.push((name, true)),
        }
    }
    Ok(climbed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, ROOT};

    #[test]
    fn links_inside_the_root_pass_and_the_others_say_why() {
        assert_eq!(check_link("latest", "v2"), Ok(()));
        assert_eq!(check_link("latest", "."), Ok(()));
        assert_eq!(check_link("docs/logo.png", "../img/logo.png"), Ok(()));
        assert_eq!(check_link("a/b/c", "../../x/./y"), Ok(()));
        assert_eq!(check_link("a/b/c", "./../../x"), Ok(()));
        assert_eq!(check_link("top", ".."), Err(LinkError::Outside("..".into())));
        assert_eq!(
            check_link("a/b", "../../etc/passwd"),
            Err(LinkError::Outside("../../etc/passwd".into()))
        );
        assert_eq!(
            check_link("x", "/etc/passwd"),
            Err(LinkError::Absolute("/etc/passwd".into()))
        );
        assert_eq!(check_link("x", ""), Err(LinkError::Empty));
        let message = check_link("a/b", "../../../etc").expect_err("outside").to_string();
        assert!(message.contains("outside the site root"), "{message}");
    }

    #[test]
    fn a_target_that_climbs_after_a_name_is_resolved_and_passes_while_it_stays_inside() {
        assert_eq!(check_link("index", "bin/../index.html"), Ok(()));
        assert_eq!(
            check_link("docs/a", "x/../../img/logo.png"),
            Ok(()),
            "docs/x/.. is docs, .. is the root"
        );
        assert_eq!(check_link("a/x", "b/../../y"), Ok(()));
        // Leaving the root is refused however it is spelt.
        assert_eq!(
            check_link("link", "a/../../x"),
            Err(LinkError::Outside("a/../../x".into()))
        );
        assert_eq!(
            check_link("docs/link", "a/../../../x"),
            Err(LinkError::Outside("a/../../../x".into()))
        );
        assert_eq!(
            check_link("link", "a/b/../../.."),
            Err(LinkError::Outside("a/b/../../..".into()))
        );
        // Absolute targets are refused even when they name the site's own directory.
        assert_eq!(
            check_link("link", "/srv/www/index.html"),
            Err(LinkError::Absolute("/srv/www/index.html".into()))
        );
        let message = check_link("link", "a/../../x").expect_err("outside").to_string();
        assert_eq!(message, "its target `a/../../x` points outside the site root");
    }

    #[test]
    fn in_the_tree_a_climb_out_of_a_link_or_of_nothing_is_refused() {
        let mut tree = Snapshot::new();
        tree.insert(ROOT.into(), Entry::dir(0, 0o755));
        tree.insert("bin".into(), Entry::dir(0, 0o755));
        tree.insert("bin/tool".into(), Entry::dir(0, 0o755));
        tree.insert("index.html".into(), Entry::file(1, 0, 0o644, "h"));
        tree.insert("self".into(), Entry::link(".", 0));
        assert_eq!(check_link_in("index", "bin/../index.html", &tree), Ok(()));
        assert_eq!(check_link_in("bin/x", "tool/../../index.html", &tree), Ok(()));
        assert_eq!(
            check_link_in("x", "self/index.html", &tree),
            Ok(()),
            "through a link, not out of it"
        );
        // `self -> .`: `self/..` is the root's parent, although the text says the root.
        assert_eq!(
            check_link_in("escape", "self/../secret", &tree),
            Err(LinkError::ClimbsOutOfLink {
                target: "self/../secret".into(),
                through: "self".into()
            })
        );
        assert_eq!(
            check_link_in("escape", "self/bin/../x", &tree),
            Err(LinkError::ClimbsOutOfLink {
                target: "self/bin/../x".into(),
                through: "self/bin".into()
            }),
            "a name under a link is not in the tree"
        );
        assert!(matches!(
            check_link_in("x", "missing/../index.html", &tree),
            Err(LinkError::ClimbsOutOfLink { .. })
        ));
        assert_eq!(
            check_link_in("x", "bin/../../x", &tree),
            Err(LinkError::Outside("bin/../../x".into()))
        );
        assert_eq!(
            check_link_in("x", "/etc/passwd", &tree),
            Err(LinkError::Absolute("/etc/passwd".into()))
        );
        let message = check_link_in("escape", "self/../secret", &tree)
            .expect_err("refused")
            .to_string();
        assert!(message.contains("out of `self`, which is not a directory"), "{message}");
    }
}
