//! Paths in assignments are relative to the site's tree and must stay inside it: no absolute paths, no `..`
//! or `.` components, no backslashes or NUL bytes, and no symbolic link anywhere along the way (a link could
//! point out of the tree, and following it would write outside the site root).

use std::path::{Component, Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty path.
    #[error("empty path")]
    Empty,
    /// Absolute path.
    #[error("absolute path")]
    Absolute,
    /// A `..` or `.` component.
    #[error("path climbs with `..` or uses `.`")]
    Climbs,
    /// A character that has no place in a portable path here.
    #[error("path contains a backslash or NUL byte")]
    BadCharacter,
    /// A symbolic link along the way.
    #[error("path goes through a symbolic link")]
    Symlink,
}

/// Resolves `relative` under `base`, refusing anything that could leave it. `final_may_be_link` allows the
/// last component itself to be a symbolic link (removing a link does not follow it).
pub fn resolve(base: &Path, relative: &str, final_may_be_link: bool) -> Result<PathBuf, PathError> {
    if relative.is_empty() {
        return Err(PathError::Empty);
    }
    if relative.contains('\\') || relative.contains('\0') {
        return Err(PathError::BadCharacter);
    }
    if relative.starts_with('/') {
        return Err(PathError::Absolute);
    }
    let mut resolved = base.to_path_buf();
    let parts: Vec<&str> = relative.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err(PathError::Empty);
    }
    for (index, part) in parts.iter().enumerate() {
        let component = Path::new(part).components().next();
        if !matches!(component, Some(Component::Normal(_))) || *part == "." || *part == ".." {
            return Err(PathError::Climbs);
        }
        resolved.push(part);
        let last = index + 1 == parts.len();
        if let Ok(metadata) = std::fs::symlink_metadata(&resolved)
            && metadata.file_type().is_symlink()
            && !(last && final_may_be_link)
        {
            return Err(PathError::Symlink);
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        std::fs::create_dir(base.join("d")).expect("mkdir");
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc", base.join("out")).expect("symlink");
        assert_eq!(resolve(base, "d/a.txt", false), Ok(base.join("d/a.txt")));
        assert_eq!(resolve(base, "", false), Err(PathError::Empty));
        assert_eq!(resolve(base, "/etc/passwd", false), Err(PathError::Absolute));
        assert_eq!(resolve(base, "d/../../x", false), Err(PathError::Climbs));
        assert_eq!(resolve(base, "./x", false), Err(PathError::Climbs));
        assert_eq!(resolve(base, "a\\\\b", false), Err(PathError::BadCharacter));
        #[cfg(unix)]
        {
            assert_eq!(resolve(base, "out/passwd", false), Err(PathError::Symlink));
            assert_eq!(resolve(base, "out", false), Err(PathError::Symlink));
            assert_eq!(resolve(base, "out", true), Ok(base.join("out")));
        }
    }
}
