//! Shaping the client's response from a stored or streaming one: the client's own preconditions and ranges
//! (RFC 9110 sections 13 and 14), HEAD, `Age`, `Cache-Status` (RFC 9211), `Via`; and error responses that
//! say what went wrong.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use tern_http::conditional::{self, Precondition, Validators};
use tern_http::range::{self, RangeOutcome};
use tern_http::{Body, date};
use tern_http_cache::BodySource;

use super::{ClientRequest, Edge, Source};
use crate::cache_status::CacheStatus;

impl Edge {
    /// Shapes the client's response from a (stored or streaming) response: the client's own preconditions
    /// and ranges, HEAD, `Age`, `Cache-Status`, `Via`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn respond(
        &self,
        request: &ClientRequest,
        status: StatusCode,
        mut headers: HeaderMap,
        length: Option<u64>,
        source: Source,
        age: Option<u64>,
        cache_status: CacheStatus,
    ) -> Response<Body> {
        headers.remove(&SURROGATE_KEY);
        if let Some(age) = age {
            headers.insert(header::AGE, HeaderValue::from(age));
        }
        append_cache_status(&mut headers, &cache_status, &self.name);
        self.via.append(&mut headers, source.received());
        let mut out_status = status;
        let mut slice: Option<(u64, u64)> = None;
        let mut send_body = request.method != Method::HEAD;
        if status == StatusCode::OK {
            // Without preconditions or a range (most requests) both answers below are "go on": the
            // validators are not even read.
            let asks = super::CLIENT_PRECONDITIONS
                .iter()
                .any(|name| request.headers.contains_key(name));
            let etag_value = if asks { headers.get(header::ETAG).cloned() } else { None };
            let etag = etag_value.as_ref().and_then(|v| v.to_str().ok());
            let last_modified = if asks {
                headers.get(header::LAST_MODIFIED).and_then(date::parse)
            } else {
                None
            };
            if asks {
                let validators = Validators { etag, last_modified };
                match conditional::evaluate(&request.method, &request.headers, validators) {
                    Precondition::NotModified => {
                        let mut kept = HeaderMap::new();
                        for name in conditional::NOT_MODIFIED_FIELDS.iter().chain(&[
                            header::AGE,
                            HeaderName::from_static("cache-status"),
                            header::VIA,
                        ]) {
                            for value in headers.get_all(name) {
                                kept.append(name.clone(), value.clone());
                            }
                        }
                        return bodiless(StatusCode::NOT_MODIFIED, kept);
                    }
                    Precondition::Failed => {
                        return bodiless(StatusCode::PRECONDITION_FAILED, headers_for_error(headers));
                    }
                    Precondition::Proceed => {}
                }
            }
            if let Some(length) = length {
                headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                let outcome = if asks {
                    range::select(&request.headers, length, etag, last_modified)
                } else {
                    RangeOutcome::Full
                };
                match outcome {
                    RangeOutcome::Full => {}
                    RangeOutcome::Partial { start, end } => {
                        out_status = StatusCode::PARTIAL_CONTENT;
                        headers.insert(header::CONTENT_RANGE, range::content_range(start, end, length));
                        slice = Some((start, end - start + 1));
                    }
                    RangeOutcome::Unsatisfiable => {
                        let mut headers = headers_for_error(headers);
                        headers.insert(header::CONTENT_RANGE, range::unsatisfied_range(length));
                        return bodiless(StatusCode::RANGE_NOT_SATISFIABLE, headers);
                    }
                }
            }
        }
        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED || status.is_informational() {
            send_body = false;
        }
        let body_len = match slice {
            Some((_, count)) => Some(count),
            None => length,
        };
        match body_len {
            Some(len) if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED => {
                // A stored response usually carries the right length already; a new value is one
                // allocation per response.
                if !states_length(headers.get(header::CONTENT_LENGTH), len) {
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                }
            }
            _ => {
                headers.remove(header::CONTENT_LENGTH);
            }
        }
        let body = if !send_body {
            tern_http::empty()
        } else {
            match (source, slice) {
                (Source::Stored(BodySource::Memory(bytes)), None) => tern_http::full(bytes),
                (Source::Stored(BodySource::Memory(bytes)), Some((start, count))) => {
                    tern_http::full(bytes.slice(start as usize..(start + count) as usize))
                }
                (Source::Stored(BodySource::File { file, offset, len }), None) => {
                    tern_http::file_range(tokio::fs::File::from_std(file), offset, len)
                }
                (Source::Stored(BodySource::File { file, offset, .. }), Some((start, count))) => {
                    tern_http::file_range(tokio::fs::File::from_std(file), offset + start, count)
                }
                (Source::Stream(body, _), None) => body,
                (Source::Stream(body, _), Some((start, count))) => tern_http::slice(body, start, count),
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = out_status;
        *response.headers_mut() = headers;
        response
    }

    /// A plain-text error response that says what went wrong.
    /// [`Edge::error`] for a failure of the origin (no answer, a failed body, a coalesced fetch that
    /// failed): marked [`OriginFailed`], so that a community's peer listener can say so to the requester.
    pub(super) fn origin_error(&self, status: StatusCode, message: &str, cache_status: CacheStatus) -> Response<Body> {
        let mut response = self.error(status, message, cache_status);
        response.extensions_mut().insert(OriginFailed);
        response
    }

    pub(super) fn error(&self, status: StatusCode, message: &str, cache_status: CacheStatus) -> Response<Body> {
        let mut response = Response::new(tern_http::full(format!(
            "{} {}: {message}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        append_cache_status(headers, &cache_status, &self.name);
        response
    }
}

/// Marks an error response the edge made because the origin failed (a response extension: nothing an
/// origin or a client sends can set it).
#[derive(Debug, Clone, Copy)]
pub struct OriginFailed;

/// Stored fields an edge never sends to clients.
const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// Fields the edge adds to a stored response: `Age`, `Cache-Status`, `Via`, `Accept-Ranges`, and room for
/// `Content-Length` and `Content-Range`.
const ADDED_FIELDS: usize = 6;

/// The stored fields of a response, with room for those the edge adds, so that adding them does not grow
/// (reallocate and rehash) the map; `Surrogate-Key` left out.
pub(super) fn stored_headers(stored: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(stored.len() + ADDED_FIELDS);
    for (name, value) in stored {
        if name != SURROGATE_KEY {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Whether `value` is exactly the decimal `length` (no parse, no allocation).
fn states_length(value: Option<&HeaderValue>, length: u64) -> bool {
    let Some(value) = value else {
        return false;
    };
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = length;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    value.as_bytes() == &digits[start..]
}

fn bodiless(status: StatusCode, headers: HeaderMap) -> Response<Body> {
    let mut response = Response::new(tern_http::empty());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Headers kept on a 412 or 416: the representation's metadata minus its framing.
fn headers_for_error(mut headers: HeaderMap) -> HeaderMap {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_TYPE);
    headers
}

pub(super) fn append_cache_status(headers: &mut HeaderMap, status: &CacheStatus, name: &str) {
    headers.append(HeaderName::from_static("cache-status"), status.to_header(name));
}
