//! Evaluation of conditional requests against a selected representation (RFC 9110 section 13.2.2).
//!
//! The same order of evaluation serves the origin answering from its files and the edge answering from its
//! cache, so a client gets the same answer from either.

use std::time::SystemTime;

use http::{HeaderMap, Method, header};

use crate::date;
use crate::etag::{EntityTag, TagList};

/// What the preconditions say to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No precondition stops the request: serve it normally.
    Proceed,
    /// Answer `304 Not Modified` (GET and HEAD only).
    NotModified,
    /// Answer `412 Precondition Failed`.
    Failed,
}

/// The validators of the selected representation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Validators<'a> {
    /// Its entity tag, as sent in `ETag`.
    pub etag: Option<&'a str>,
    /// Its modification time, as sent in `Last-Modified`.
    pub last_modified: Option<SystemTime>,
}

/// Evaluates `If-Match`, `If-Unmodified-Since`, `If-None-Match` and `If-Modified-Since` in the order
/// RFC 9110 section 13.2.2 gives.
pub fn evaluate(method: &Method, request: &HeaderMap, current: Validators<'_>) -> Precondition {
    let current_tag = current.etag.and_then(EntityTag::parse);
    let safe = method == Method::GET || method == Method::HEAD;

    if let Some(if_match) = request.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        if !TagList::parse(if_match).matches_strong(current_tag.as_ref()) {
            return Precondition::Failed;
        }
    } else if let Some(since) = request.get(header::IF_UNMODIFIED_SINCE).and_then(date::parse)
        && let Some(modified) = current.last_modified
        && modified > since
    {
        return Precondition::Failed;
    }

    if let Some(if_none_match) = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        if TagList::parse(if_none_match).matches_weak(current_tag.as_ref()) {
            return if safe {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
        return Precondition::Proceed;
    }

    if safe
        && let Some(since) = request.get(header::IF_MODIFIED_SINCE).and_then(date::parse)
        && let Some(modified) = current.last_modified
        && modified <= since
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// Whether the request carries any precondition that [`evaluate`] looks at.
pub fn has_preconditions(request: &HeaderMap) -> bool {
    [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|name| request.contains_key(name))
}

/// Fields a 304 response carries from the representation it stands for (RFC 9110 section 15.4.5).
pub const NOT_MODIFIED_FIELDS: [header::HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
];

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::Duration;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn if_none_match_wins_over_if_modified_since() {
        let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let current = Validators {
            etag: Some("\"v2\""),
            last_modified: Some(modified),
        };
        let request = headers(&[
            (header::IF_NONE_MATCH, "\"v1\""),
            (header::IF_MODIFIED_SINCE, &httpdate::fmt_http_date(modified)),
        ]);
        assert_eq!(evaluate(&Method::GET, &request, current), Precondition::Proceed);
        let request = headers(&[(header::IF_NONE_MATCH, "W/\"v2\"")]);
        assert_eq!(evaluate(&Method::GET, &request, current), Precondition::NotModified);
        assert_eq!(evaluate(&Method::PUT, &request, current), Precondition::Failed);
    }

    #[test]
    fn if_modified_since() {
        let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let current = Validators {
            etag: None,
            last_modified: Some(modified),
        };
        let same = headers(&[(header::IF_MODIFIED_SINCE, &httpdate::fmt_http_date(modified))]);
        assert_eq!(evaluate(&Method::GET, &same, current), Precondition::NotModified);
        let earlier = modified - Duration::from_secs(10);
        let older = headers(&[(header::IF_MODIFIED_SINCE, &httpdate::fmt_http_date(earlier))]);
        assert_eq!(evaluate(&Method::GET, &older, current), Precondition::Proceed);
    }

    #[test]
    fn if_match_failure() {
        let current = Validators {
            etag: Some("\"v2\""),
            last_modified: None,
        };
        let request = headers(&[(header::IF_MATCH, "\"v1\"")]);
        assert_eq!(evaluate(&Method::GET, &request, current), Precondition::Failed);
        let weak = Validators {
            etag: Some("W/\"v1\""),
            last_modified: None,
        };
        assert_eq!(evaluate(&Method::GET, &request, weak), Precondition::Failed);
    }
}
