//! Include and exclude rules of a hosted site (seed 004: the CCM's per-site policies): which files of the
//! staging tree are published. A file is published when it matches an include pattern (or there are none) and
//! no exclude pattern. Excluded files are treated as absent from staging, so one that was published before is
//! removed from the nodes.
//!
//! Patterns are globs over the path relative to the site root (`*` stays within a directory, `**` crosses
//! them). As with rsync and gitignore, a pattern without `/` matches a name at any depth (`*.tmp`), and a
//! pattern ending in `/` matches a directory and everything under it (`drafts/`).

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use tern_tree::Snapshot;

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
    exclude: GlobSet,
}

impl CompiledRules {
    /// Checks and compiles `rules`' patterns.
    pub fn new(rules: &Rules) -> Result<CompiledRules, RuleError> {
        let include = if rules.include.is_empty() {
            None
        } else {
            Some(set(&rules.include)?)
        };
        Ok(CompiledRules {
            include,
            exclude: set(&rules.exclude)?,
        })
    }

    /// Whether the file at `path` (relative, `/`-separated) is published.
    pub fn admits(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(path)) && !self.exclude.is_match(path)
    }

    /// Drops from `snapshot` the files these rules do not publish.
    pub fn filter(&self, snapshot: &mut Snapshot) {
        snapshot.retain(|path, _| self.admits(path));
    }
}

fn set(patterns: &[String]) -> Result<GlobSet, RuleError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(glob(pattern)?);
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
