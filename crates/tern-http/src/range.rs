//! Byte range requests (RFC 9110 section 14): which part of a complete representation to send.

use std::time::SystemTime;

use http::{HeaderMap, HeaderValue, header};

use crate::date;
use crate::etag::EntityTag;

/// What to send for a request, given the full length of the representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Send the whole representation with 200 (no Range, an ignored Range, or a failed If-Range).
    Full,
    /// Send bytes `start..=end` with 206.
    Partial {
        /// First byte offset.
        start: u64,
        /// Last byte offset, inclusive.
        end: u64,
    },
    /// Answer 416 with `Content-Range: bytes */length`.
    Unsatisfiable,
}

/// Decides the range to serve. Multiple ranges are answered with the full representation, which RFC 9110
/// allows (a server may ignore Range) and which avoids multipart bodies that few clients want. A Range
/// field that does not parse is ignored likewise.
pub fn select(request: &HeaderMap, length: u64, etag: Option<&str>, last_modified: Option<SystemTime>) -> RangeOutcome {
    let mut fields = request.get_all(header::RANGE).iter();
    let (Some(range), None) = (fields.next().and_then(|v| v.to_str().ok()), fields.next()) else {
        // No Range, or several field lines: together one list of ranges (RFC 9110 section 5.3), answered
        // whole like any other list.
        return RangeOutcome::Full;
    };
    if let Some(if_range) = request.get(header::IF_RANGE)
        && !if_range_holds(if_range, etag, last_modified)
    {
        return RangeOutcome::Full;
    }
    // The unit is case-insensitive (RFC 9110 section 14.1).
    let Some(spec) = range
        .trim()
        .split_once('=')
        .and_then(|(unit, spec)| unit.trim().eq_ignore_ascii_case("bytes").then_some(spec))
    else {
        return RangeOutcome::Full;
    };
    if spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeOutcome::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last N bytes.
        let Some(suffix) = position(last) else {
            return RangeOutcome::Full;
        };
        if suffix == 0 || length == 0 {
            return RangeOutcome::Unsatisfiable;
        }
        let start = length.saturating_sub(suffix);
        return RangeOutcome::Partial { start, end: length - 1 };
    }
    let Some(start) = position(first) else {
        return RangeOutcome::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match position(last) {
            Some(end) if end >= start => end,
            _ => return RangeOutcome::Full,
        }
    };
    if start >= length {
        return RangeOutcome::Unsatisfiable;
    }
    RangeOutcome::Partial {
        start,
        end: end.min(length - 1),
    }
}

/// A byte position or suffix length (RFC 9110 section 14.1.1: `1*DIGIT`): one past `u64::MAX` means
/// "beyond any representation", so it is `u64::MAX` (a first position past the end is then unsatisfiable,
/// a last one or a suffix reaches the end, as for any other large number); `None` when not digits.
fn position(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(u64::MAX))
}

/// `If-Range` holds when its strong entity tag matches, or its date equals `Last-Modified` exactly.
fn if_range_holds(value: &HeaderValue, etag: Option<&str>, last_modified: Option<SystemTime>) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    if let Some(wanted) = EntityTag::parse(text) {
        let current = etag.and_then(EntityTag::parse);
        return current.is_some_and(|current| current.strong_eq(&wanted));
    }
    match (date::parse(value), last_modified) {
        (Some(wanted), Some(modified)) => wanted == modified,
        _ => false,
    }
}

/// `Content-Range` value for a partial response.
pub fn content_range(start: u64, end: u64, length: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes {start}-{end}/{length}")).unwrap_or(HeaderValue::from_static("*"))
}

/// `Content-Range` value for a 416 response.
pub fn unsatisfied_range(length: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes */{length}")).unwrap_or(HeaderValue::from_static("*"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(header::RANGE, HeaderValue::from_str(value).expect("value"));
        map
    }

    #[test]
    fn forms() {
        assert_eq!(
            select(&range("bytes=0-9"), 100, None, None),
            RangeOutcome::Partial { start: 0, end: 9 }
        );
        assert_eq!(
            select(&range("bytes=90-"), 100, None, None),
            RangeOutcome::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            select(&range("bytes=-10"), 100, None, None),
            RangeOutcome::Partial { start: 90, end: 99 }
        );
        assert_eq!(
            select(&range("bytes=50-200"), 100, None, None),
            RangeOutcome::Partial { start: 50, end: 99 }
        );
        assert_eq!(
            select(&range("bytes=100-"), 100, None, None),
            RangeOutcome::Unsatisfiable
        );
        assert_eq!(select(&range("bytes=9-1"), 100, None, None), RangeOutcome::Full);
        assert_eq!(select(&range("items=0-1"), 100, None, None), RangeOutcome::Full);
        assert_eq!(select(&range("bytes=0-1,5-6"), 100, None, None), RangeOutcome::Full);
        assert_eq!(select(&range("bytes=abc"), 100, None, None), RangeOutcome::Full);
        // Numbers past u64 behave as other numbers past the end; the unit is case-insensitive.
        assert_eq!(
            select(&range("bytes=18446744073709551616-"), 100, None, None),
            RangeOutcome::Unsatisfiable
        );
        assert_eq!(
            select(&range("bytes=0-99999999999999999999999"), 100, None, None),
            RangeOutcome::Partial { start: 0, end: 99 }
        );
        assert_eq!(
            select(&range("bytes=-99999999999999999999999"), 100, None, None),
            RangeOutcome::Partial { start: 0, end: 99 }
        );
        assert_eq!(
            select(&range("BYTES=0-1"), 100, None, None),
            RangeOutcome::Partial { start: 0, end: 1 }
        );
        assert_eq!(select(&range("bytes=+1-2"), 100, None, None), RangeOutcome::Full);
        let mut two = range("bytes=0-1");
        two.append(header::RANGE, HeaderValue::from_static("bytes=5-6"));
        assert_eq!(
            select(&two, 100, None, None),
            RangeOutcome::Full,
            "two field lines are a list"
        );
    }

    #[test]
    fn if_range_with_other_etag_sends_full() {
        let mut request = range("bytes=0-9");
        request.insert(header::IF_RANGE, HeaderValue::from_static("\"old\""));
        assert_eq!(select(&request, 100, Some("\"new\""), None), RangeOutcome::Full);
        assert_eq!(
            select(&request, 100, Some("\"old\""), None),
            RangeOutcome::Partial { start: 0, end: 9 }
        );
    }
}
