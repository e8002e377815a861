//! HTTP dates (RFC 9110 section 5.6.7): IMF-fixdate out, the three historic formats in.

use std::time::SystemTime;

use http::HeaderValue;

/// Parses an HTTP date; `None` for anything invalid (RFC 9111 treats an invalid date as in the past where
/// it matters, which callers decide).
pub fn parse(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()
}

/// Formats `time` as an IMF-fixdate header value.
pub fn format(time: SystemTime) -> HeaderValue {
    HeaderValue::from_str(&httpdate::fmt_http_date(time)).unwrap_or(HeaderValue::from_static(""))
}
