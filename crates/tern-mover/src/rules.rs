//! Include and exclude rules of a hosted site (seed 004: the CCM's per-site policies): which entries of the
//! staging tree are published. Nothing is left out by default — hidden files and folders (`.well-known/`,
//! `.htaccess`) are content like any other. A file or link is published when it matches an include pattern
//! (or there are none) and neither it nor a directory above it matches an exclude pattern; a directory is
//! published when something under it is, or when it is admitted itself (so empty directories travel too).
//! Excluded entries are treated as absent from staging, so one that was published before is removed from the
//! nodes.
//!
//! Patterns are globs over the path relative to the site root (`*` stays within a directory, `**` crosses
//! them). As with rsync and gitignore, a pattern without `/` matches a name at any depth (`*.tmp`), and a
//! pattern ending in `/` matches a directory and everything under it (`drafts/`).

use std::collections::BTreeSet;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use tern_tree::{ROOT, Snapshot, Unsupported};

/// A site's rules as the operator wrote them (they travel in job requests and answers, so the type is
/// [`tern_wire::mover::Rules`]).
pub use tern_wire::mover::Rules;

/// A pattern that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("pattern `{pattern}`: {reason}")]
pub struct RuleError {
    /// The pattern.
    pub pattern: String,
    /// Why it is refused.
    pub reason: String,
}

/// Rules ready to test paths.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    include: Option<GlobSet>,
    /// The directory patterns of `include`, matching the directory itself.
    include_dirs: Option<GlobSet>,
    exclude: GlobSet,
    /// The directory patterns of `exclude`, matching the directory itself.
    exclude_dirs: GlobSet,
}

impl CompiledRules {
    /// Checks and compiles `rules`' patterns.
    pub fn new(rules: &Rules) -> Result<CompiledRules, RuleError> {
        let (include, include_dirs) = if rules.include.is_empty() {
            (None, None)
        } else {
            (Some(set(&rules.include, false)?), Some(set(&rules.include, true)?))
        };
        Ok(CompiledRules {
            include,
            include_dirs,
            exclude: set(&rules.exclude, false)?,
            exclude_dirs: set(&rules.exclude, true)?,
        })
    }

    /// Whether the file (or link) at `path` (relative, `/`-separated) is published.
    pub fn admits(&self, path: &str) -> bool {
        self.included(path, false) && !self.excluded(path, false)
    }

    fn included(&self, path: &str, is_dir: bool) -> bool {
        let Some(include) = &self.include else {
            return true;
        };
        include.is_match(path) || (is_dir && self.include_dirs.as_ref().is_some_and(|set| set.is_match(path)))
    }

    /// Whether `path` or a directory above it is excluded.
    fn excluded(&self, path: &str, is_dir: bool) -> bool {
        if self.exclude.is_match(path) || (is_dir && self.exclude_dirs.is_match(path)) {
            return true;
        }
        path.match_indices('/').any(|(at, _)| {
            let ancestor = &path[..at];
            self.exclude.is_match(ancestor) || self.exclude_dirs.is_match(ancestor)
        })
    }

    /// Drops from `snapshot` the entries these rules do not publish: files and links not admitted, and
    /// directories neither admitted themselves nor above a published entry. The root always stays.
    pub fn filter(&self, snapshot: &mut Snapshot) {
        snapshot.retain(|path, entry| path == ROOT || entry.is_dir() || self.admits(path));
        let mut needed = BTreeSet::new();
        for path in snapshot
            .iter()
            .filter(|(_, entry)| !entry.is_dir())
            .map(|(path, _)| path)
        {
            needed.extend(path.match_indices('/').map(|(at, _)| path[..at].to_string()));
        }
        snapshot.retain(|path, entry| {
            path == ROOT
                || !entry.is_dir()
                || needed.contains(path)
                || (self.included(path, true) && !self.excluded(path, true))
        });
    }

    /// Drops from `unsupported` the entries these rules leave out anyway (a socket under an excluded
    /// directory stops nothing).
    pub fn filter_unsupported(&self, unsupported: &mut Vec<Unsupported>) {
        unsupported.retain(|entry| self.admits(&entry.path));
    }
}

/// The glob set of `patterns`; with `directories`, only the patterns ending in `/`, matching the directory
/// itself rather than what it holds.
fn set(patterns: &[String], directories: bool) -> Result<GlobSet, RuleError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        if directories {
            if pattern.trim().ends_with('/') {
                builder.add(glob(pattern.trim().trim_end_matches('/'))?);
            }
        } else {
            builder.add(glob(pattern)?);
        }
    }
    builder.build().map_err(|e| RuleError {
        pattern: patterns.join(" "),
        reason: e.to_string(),
    })
}

/// The glob a pattern stands for.
fn glob(pattern: &str) -> Result<Glob, RuleError> {
    let refuse = |reason: &str| RuleError {
        pattern: pattern.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = pattern.trim();
    if trimmed.is_empty() {
        return Err(refuse("empty pattern"));
    }
    if trimmed.starts_with('/') || trimmed.split('/').any(|part| part == "..") {
        return Err(refuse(
            "patterns are relative to the site root (no leading `/`, no `..`)",
        ));
    }
    let (body, directory) = match trimmed.strip_suffix('/') {
        Some(body) => (body, true),
        None => (trimmed, false),
    };
    let anchored = body.contains('/');
    let base = if anchored {
        body.to_string()
    } else {
        format!("**/{body}")
    };
    let text = if directory { format!("{base}/**") } else { base };
    GlobBuilder::new(&text)
        .literal_separator(true)
        .build()
        .map_err(|e| refuse(&e.kind().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(include: &[&str], exclude: &[&str]) -> CompiledRules {
        CompiledRules::new(&Rules {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        })
        .expect("valid")
    }

    #[test]
    fn names_match_at_any_depth_and_directories_match_their_contents() {
        let r = rules(&[], &["*.tmp", "drafts/", "assets/raw/*.psd"]);
        assert!(!r.admits("a.tmp"));
        assert!(!r.admits("deep/er/a.tmp"));
        assert!(r.admits("a.tmp.html"));
        assert!(!r.admits("drafts/post.html"));
        assert!(!r.admits("blog/drafts/post.html"));
        assert!(r.admits("drafts.html"));
        assert!(!r.admits("assets/raw/logo.psd"));
        assert!(r.admits("assets/raw/deeper/logo.psd"), "`*` stays within a directory");
        assert!(r.admits("index.html"));
    }

    #[test]
    fn includes_limit_and_excludes_win() {
        let r = rules(&["*.html", "static/"], &["secret.html"]);
        assert!(r.admits("index.html"));
        assert!(r.admits("static/app.js"));
        assert!(!r.admits("notes.txt"));
        assert!(!r.admits("secret.html"));
    }

    #[test]
    fn hidden_entries_are_published_and_directories_follow_their_contents() {
        use tern_tree::Entry;
        let mut snapshot = Snapshot::new();
        for dir in [
            "",
            ".well-known",
            ".well-known/acme-challenge",
            "drafts",
            "drafts/sub",
            "empty",
            "static",
        ] {
            snapshot.insert(dir.to_string(), Entry::dir(1, 0o755));
        }
        for file in [
            ".well-known/acme-challenge/x",
            ".htaccess",
            "drafts/sub/a.html",
            "static/app.js",
            "a.html",
        ] {
            snapshot.insert(file.to_string(), Entry::file(1, 1, 0o644, "h"));
        }
        let mut all = snapshot.clone();
        rules(&[], &[]).filter(&mut all);
        assert_eq!(all, snapshot, "no rule, nothing left out");

        let mut published = snapshot.clone();
        rules(&[], &["drafts/"]).filter(&mut published);
        let paths: Vec<&str> = published.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "",
                ".htaccess",
                ".well-known",
                ".well-known/acme-challenge",
                ".well-known/acme-challenge/x",
                "a.html",
                "empty",
                "static",
                "static/app.js"
            ]
        );

        let mut published = snapshot.clone();
        rules(&["*.html"], &[]).filter(&mut published);
        let paths: Vec<&str> = published.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            ["", "a.html", "drafts", "drafts/sub", "drafts/sub/a.html"],
            "directories stay where they hold what is published"
        );
        assert!(
            !rules(&[], &["*.tmp"]).admits("cache.tmp/page.html"),
            "an excluded directory's contents go with it"
        );
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for bad in ["", "/etc/passwd", "../x", "a/[b"] {
            let error = CompiledRules::new(&Rules {
                include: vec![],
                exclude: vec![bad.to_string()],
            })
            .expect_err(bad);
            assert!(error.to_string().contains("pattern"), "{error}");
        }
    }
}
