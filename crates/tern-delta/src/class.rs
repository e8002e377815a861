//! Page classes (seed 000: pages that share a template share a base): a name, a path pattern and the
//! class's policy.
//!
//! A pattern is a path in which `*` matches any run of characters, `/` included; everything else matches
//! itself. That is the subset of the URL Pattern syntax RFC 9842 uses for `Use-As-Dictionary: match` (section
//! 2.1.1) without named groups or regular expressions, so a class's pattern is sent to browsers as its
//! `match` value unchanged and browser and tern agree on which pages a base serves. Plain prefixes are the
//! common case (`/news/*`); a glob with `*` inside (`/shop/*/item`) covers versioned or localised paths.
//! Patterns match the path only, never the query. When several classes match, the longest pattern wins, as
//! for browsers choosing among dictionaries (RFC 9842 section 2.2.3), then the first defined.

use std::time::Duration;

use crate::derive::Derivation;

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Longest class name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Why a class definition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassError {
    /// Not `NAME=PATTERN`.
    #[error("class must be NAME=PATTERN")]
    Syntax,
    /// The name is empty, too long, or has characters other than ASCII letters, digits, `-`, `_`, `.`.
    #[error("invalid class name {0:?}")]
    Name(String),
    /// The pattern does not start with `/`, is too long, or has a character that is not a visible ASCII
    /// character or is special in URL Pattern syntax (`: ( ) { } ? + \ #`).
    #[error("invalid class pattern {0:?}")]
    Pattern(String),
    /// A policy value out of its range: which field, and what it must be.
    #[error("{0}")]
    Rule(String),
}

/// A path pattern: literal characters and `*` wildcards (see the module header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Parses a pattern.
    pub fn new(text: &str) -> Result<Self, ClassError> {
        let valid_char = |c: char| c.is_ascii_graphic() && !":(){}?+\\#".contains(c);
        if !text.starts_with('/') || text.len() > MAX_PATTERN_LEN || !text.chars().all(valid_char) {
            return Err(ClassError::Pattern(text.to_string()));
        }
        Ok(Pattern(text.to_string()))
    }

    /// The pattern as written (also its RFC 9842 `match` value).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `path` (without query) matches. Linear in `path` for patterns with one `*`; at worst
    /// O(path × pattern), both bounded.
    pub fn matches(&self, path: &str) -> bool {
        wildcard_match(self.0.as_bytes(), path.as_bytes())
    }
}

/// Glob matching where `*` matches any run of bytes: the classic two-cursor walk that backtracks only to
/// the most recent `*`.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&literal) if literal == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// When a class re-derives its base (see [`crate::drift`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RederiveRule {
    /// Mean delta ratio (delta bytes / page bytes) of the recent window above which a new base is derived.
    pub ratio: f64,
    /// Number of recent deltas against the current base the mean is taken over; no decision before the
    /// window is full.
    pub window: usize,
    /// Shortest time between two base changes, so a class whose pages differ for good (personalised pages
    /// against an anonymous base) does not churn bases.
    pub min_interval: Duration,
}

impl Default for RederiveRule {
    fn default() -> Self {
        RederiveRule {
            ratio: 0.02,
            window: 16,
            min_interval: Duration::from_secs(60),
        }
    }
}

/// What a class allows and how its base is made.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPolicy {
    /// Whether `Cache-Control: private` responses may feed a base (default no). Responses to requests with
    /// `Cookie` or `Authorization`, `no-store` responses and responses setting a cookie never do.
    pub private_may_feed_base: bool,
    /// Whether browsers that advertise the base get `dcz` responses ([`crate::safety::browser_delta`]).
    pub browser_deltas: bool,
    /// How the base is derived from recent clean responses.
    pub derivation: Derivation,
    /// How many recent clean responses are kept for derivation.
    pub samples: usize,
    /// Largest base, in bytes.
    pub max_base: usize,
    /// When the base is re-derived.
    pub rederive: RederiveRule,
    /// Request fields that carry credentials on this site besides `Cookie`, `Authorization` and
    /// [`crate::candidate::DEFAULT_CREDENTIAL_FIELDS`]: a request with one never feeds a base, nor gets a
    /// browser delta.
    pub credential_fields: Vec<http::HeaderName>,
    /// Whether a page reached by a URL with a query may feed a base (default no: a query may carry a
    /// capability, a reset or unsubscribe token or a signature, and the page may echo it).
    pub base_from_query: bool,
}

impl Default for ClassPolicy {
    fn default() -> Self {
        ClassPolicy {
            private_may_feed_base: false,
            browser_deltas: true,
            derivation: Derivation::default(),
            samples: 8,
            max_base: 8 << 20,
            rederive: RederiveRule::default(),
            credential_fields: Vec::new(),
            base_from_query: false,
        }
    }
}

/// A page class: a name (metrics label, `Use-As-Dictionary` id), a pattern, a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Class {
    /// Name, `[A-Za-z0-9._-]{1,64}`.
    pub name: String,
    /// The paths it covers.
    pub pattern: Pattern,
    /// Its policy.
    pub policy: ClassPolicy,
}

impl Class {
    /// A class with the default policy.
    pub fn new(name: &str, pattern: &str) -> Result<Self, ClassError> {
        let valid_name = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_name {
            return Err(ClassError::Name(name.to_string()));
        }
        Ok(Class {
            name: name.to_string(),
            pattern: Pattern::new(pattern)?,
            policy: ClassPolicy::default(),
        })
    }

    /// Parses the command-line form `NAME=PATTERN`.
    pub fn parse(definition: &str) -> Result<Self, ClassError> {
        let (name, pattern) = definition.split_once('=').ok_or(ClassError::Syntax)?;
        Class::new(name.trim(), pattern.trim())
    }

    /// The same class with `policy`, checked.
    pub fn with_policy(mut self, policy: ClassPolicy) -> Result<Self, ClassError> {
        let rule = &policy.rederive;
        let problem = if !(rule.ratio > 0.0 && rule.ratio <= 1.0) {
            Some(format!("ratio is {}; it must be above 0 and at most 1", rule.ratio))
        } else if rule.window == 0 {
            Some("window must be at least 1 (deltas the mean is taken over)".to_string())
        } else if policy.samples == 0 {
            Some("samples must be at least 1 (clean responses kept for the base)".to_string())
        } else if policy.max_base == 0 {
            Some("max_base must be above 0 bytes".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ClassError::Rule(format!("class {}: {problem}", self.name)));
        }
        self.policy = policy;
        Ok(self)
    }
}

/// The classes of a site, in definition order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Classes(Vec<Class>);

impl Classes {
    /// A set from `classes`; a later class with an existing name replaces the earlier one.
    pub fn new(classes: impl IntoIterator<Item = Class>) -> Self {
        let mut set = Classes::default();
        for class in classes {
            set.insert(class);
        }
        set
    }

    /// Adds `class`, replacing one of the same name.
    pub fn insert(&mut self, class: Class) {
        match self.0.iter_mut().find(|existing| existing.name == class.name) {
            Some(existing) => *existing = class,
            None => self.0.push(class),
        }
    }

    /// The class of `path` (the query, if any, is ignored): the longest matching pattern, then the first.
    pub fn find(&self, path: &str) -> Option<&Class> {
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        let mut best: Option<&Class> = None;
        for class in &self.0 {
            let longer = best.is_none_or(|best| class.pattern.as_str().len() > best.pattern.as_str().len());
            if longer && class.pattern.matches(path) {
                best = Some(class);
            }
        }
        best
    }

    /// Removes the class named `name`; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|class| class.name != name);
        self.0.len() != before
    }

    /// The class named `name`.
    pub fn get(&self, name: &str) -> Option<&Class> {
        self.0.iter().find(|class| class.name == name)
    }

    /// All classes, in definition order.
    pub fn iter(&self) -> impl Iterator<Item = &Class> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn patterns_match_like_url_pattern_wildcards() {
        let cases = [
            ("/news/*", "/news/", true),
            ("/news/*", "/news/world/today", true),
            ("/news/*", "/news", false),
            ("/news/*", "/newsroom", false),
            ("/shop/*/item", "/shop/en/item", true),
            ("/shop/*/item", "/shop/en/gb/item", true),
            ("/shop/*/item", "/shop/en/item/2", false),
            ("/a*b*c", "/aXbYbZc", true),
            ("/a*b*c", "/aXbYbZ", false),
            ("/", "/", true),
            ("/", "/x", false),
            ("/*", "/anything/at/all", true),
        ];
        for (pattern, path, expected) in cases {
            let pattern = Pattern::new(pattern).expect("valid");
            assert_eq!(pattern.matches(path), expected, "{pattern:?} {path}");
        }
    }

    #[test]
    fn invalid_patterns_and_names() {
        for text in ["news/*", "/a b", "/:id", "/(x)", "/a?b", "/a+", "/a\\b", "/a#b", "/é"] {
            assert!(Pattern::new(text).is_err(), "{text}");
        }
        assert!(Pattern::new(&format!("/{}", "a".repeat(MAX_PATTERN_LEN))).is_err());
        for name in ["", "a b", "x/y", &"n".repeat(MAX_NAME_LEN + 1)] {
            assert!(Class::new(name, "/").is_err(), "{name}");
        }
        assert_eq!(Class::parse("no-equals"), Err(ClassError::Syntax));
        let class = Class::parse("news=/news/*").expect("valid");
        assert_eq!((class.name.as_str(), class.pattern.as_str()), ("news", "/news/*"));
        let bad_rule = ClassPolicy {
            rederive: RederiveRule {
                ratio: 0.0,
                ..RederiveRule::default()
            },
            ..ClassPolicy::default()
        };
        assert!(matches!(class.with_policy(bad_rule), Err(ClassError::Rule(problem)) if problem.contains("ratio")));
    }

    #[test]
    fn the_longest_matching_pattern_wins_and_the_query_is_ignored() {
        let classes = Classes::new([
            Class::parse("all=/*").expect("valid"),
            Class::parse("news=/news/*").expect("valid"),
            Class::parse("live=/news/live/*").expect("valid"),
            Class::parse("other=/news/*").expect("valid"),
        ]);
        let name = |path: &str| classes.find(path).map(|class| class.name.clone());
        assert_eq!(name("/news/live/now?x=/news/live/"), Some("live".into()));
        assert_eq!(name("/news/today"), Some("news".into()));
        assert_eq!(name("/about"), Some("all".into()));
        assert_eq!(
            Classes::new([Class::parse("n=/news/*").expect("valid")]).find("/"),
            None
        );
    }

    proptest! {
        #[test]
        fn a_prefix_pattern_matches_exactly_the_paths_with_that_prefix(
            prefix in "/[a-z/]{0,12}",
            path in "/[a-z/]{0,20}",
        ) {
            let pattern = Pattern::new(&format!("{prefix}*")).expect("valid");
            prop_assert_eq!(pattern.matches(&path), path.starts_with(&prefix));
        }

        #[test]
        fn a_literal_pattern_matches_only_itself(literal in "/[a-z]{0,10}", path in "/[a-z]{0,10}") {
            let pattern = Pattern::new(&literal).expect("valid");
            prop_assert_eq!(pattern.matches(&path), literal == path);
        }

        #[test]
        fn matching_never_panics(pattern in "/[a*/]{0,12}", path in "\\PC{0,40}") {
            if let Ok(pattern) = Pattern::new(&pattern) {
                let _ = pattern.matches(&path);
            }
        }
    }
}
