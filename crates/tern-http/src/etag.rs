//! Entity tags (RFC 9110 section 8.8.3) and their strong and weak comparison.

/// An entity tag: its opaque value and whether it is weak (`W/"..."`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTag<'a> {
    /// The quoted part, without quotes.
    pub opaque: &'a str,
    /// Whether the tag was marked `W/`.
    pub weak: bool,
}

impl<'a> EntityTag<'a> {
    /// Parses one entity tag such as `"abc"` or `W/"abc"`.
    pub fn parse(text: &'a str) -> Option<Self> {
        let text = text.trim();
        let (weak, rest) = match text.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let opaque = rest.strip_prefix('"')?.strip_suffix('"')?;
        if opaque.contains('"') {
            return None;
        }
        Some(EntityTag { opaque, weak })
    }

    /// Weak comparison: the opaque parts match, whatever the weakness (used by `If-None-Match`).
    pub fn weak_eq(&self, other: &EntityTag<'_>) -> bool {
        self.opaque == other.opaque
    }

    /// Strong comparison: both strong and the opaque parts match (used by `If-Match`, `If-Range`).
    pub fn strong_eq(&self, other: &EntityTag<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }
}

/// The value of an `If-Match` / `If-None-Match` field.
#[derive(Debug, PartialEq, Eq)]
pub enum TagList<'a> {
    /// `*`: any current representation.
    Any,
    /// A list of tags; malformed members are skipped.
    Tags(Vec<EntityTag<'a>>),
}

impl<'a> TagList<'a> {
    /// Parses a comma-separated list of entity tags or `*`.
    pub fn parse(text: &'a str) -> Self {
        if text.trim() == "*" {
            return TagList::Any;
        }
        TagList::Tags(
            crate::list::split(text)
                .into_iter()
                .filter_map(EntityTag::parse)
                .collect(),
        )
    }

    /// Whether any tag in the list matches `current` by weak comparison.
    pub fn matches_weak(&self, current: Option<&EntityTag<'_>>) -> bool {
        match (self, current) {
            (TagList::Any, current) => current.is_some(),
            (TagList::Tags(tags), Some(current)) => tags.iter().any(|tag| tag.weak_eq(current)),
            (TagList::Tags(_), None) => false,
        }
    }

    /// Whether any tag in the list matches `current` by strong comparison.
    pub fn matches_strong(&self, current: Option<&EntityTag<'_>>) -> bool {
        match (self, current) {
            (TagList::Any, current) => current.is_some(),
            (TagList::Tags(tags), Some(current)) => tags.iter().any(|tag| tag.strong_eq(current)),
            (TagList::Tags(_), None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strong_and_weak() {
        assert_eq!(
            EntityTag::parse("\"x\""),
            Some(EntityTag {
                opaque: "x",
                weak: false
            })
        );
        assert_eq!(
            EntityTag::parse("W/\"x\""),
            Some(EntityTag {
                opaque: "x",
                weak: true
            })
        );
        assert_eq!(EntityTag::parse("x"), None);
    }

    #[test]
    fn list_with_comma_inside_tag() {
        let list = TagList::parse("\"a,b\", W/\"c\"");
        let current = EntityTag::parse("\"c\"");
        assert!(list.matches_weak(current.as_ref()));
        assert!(!list.matches_strong(current.as_ref()));
        let comma = EntityTag::parse("\"a,b\"");
        assert!(list.matches_strong(comma.as_ref()));
    }
}
