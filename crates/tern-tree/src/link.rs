//! Which symbolic links a site may hold: those that stay inside the site root wherever the site is put.
//! The mover checks every link of the staging tree with [`check_link`] before it plans, and a node checks
//! every link an assignment asks for with the same function before it makes it (DESIGN: "no symlink
//! escapes").
//!
//! The rule is lexical, and strict enough that following the link physically cannot leave the root either:
//! the target is relative, and its `..` components all come first (`../../img/logo.png`, not
//! `img/../../x`). From the link's own directory (a real directory: scans never descend through links)
//! the leading `..`s climb real parents, at most as far as the root; the names after them descend, and any
//! link met on the way is itself held to the same rule, so no chain of links climbs out. A target such as
//! `a/../b` is refused although it may be harmless: after `a`, a link, `..` climbs from wherever `a`
//! points, which the text alone cannot tell.

/// Why a link is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The target is empty.
    #[error("its target is empty")]
    Empty,
    /// The target is absolute: it names a place on this machine, not in the site.
    #[error("its target `{0}` is absolute; a site's links must be relative to stay inside it on every node")]
    Absolute(String),
    /// A `..` after a name.
    #[error("its target `{0}` climbs with `..` after a name; write it with the `..`s first")]
    ClimbsAfterName(String),
    /// The target climbs above the root.
    #[error("its target `{0}` points outside the site root")]
    Outside(String),
    /// A NUL byte or backslash, which have no place in a portable target.
    #[error("its target `{0}` contains a backslash or NUL byte")]
    BadCharacter(String),
}

/// Checks that the link at `link` (relative to the root, `/`-separated) with target `target` stays inside
/// the root (see the module header for the rule).
pub fn check_link(link: &str, target: &str) -> Result<(), LinkError> {
    if target.is_empty() {
        return Err(LinkError::Empty);
    }
    if target.contains('\0') || target.contains('\\') {
        return Err(LinkError::BadCharacter(target.to_string()));
    }
    if target.starts_with('/') {
        return Err(LinkError::Absolute(target.to_string()));
    }
    let depth = link
        .split('/')
        .filter(|part| !part.is_empty())
        .count()
        .saturating_sub(1);
    let mut climbs = 0usize;
    let mut named = false;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if named => return Err(LinkError::ClimbsAfterName(target.to_string())),
            ".." => climbs += 1,
            _ => named = true,
        }
    }
    if climbs > depth {
        return Err(LinkError::Outside(target.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            check_link("a/x", "b/../../y"),
            Err(LinkError::ClimbsAfterName("b/../../y".into()))
        );
        assert_eq!(check_link("x", ""), Err(LinkError::Empty));
        let message = check_link("a/b", "../../../etc").expect_err("outside").to_string();
        assert!(message.contains("outside the site root"), "{message}");
    }
}
