//! HTTP/1.1 response framing for a client (RFC 9112), without I/O: the response head parsed with
//! `httparse` under explicit limits, the rule that says how the body is delimited (section 6.3), and
//! decoders for a `Content-Length` and a `chunked` body (section 7.1). The edge's origin client drives
//! these over a TCP connection; the fuzz target `h1_response` drives them over arbitrary bytes.
//!
//! Strict by design: a head that the RFC calls invalid (conflicting `Content-Length`, a transfer coding
//! other than `chunked`, an obsolete line folding, a malformed chunk) is an error that names what was
//! wrong, never guessed at; the connection it came on is not reused.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version, header};

/// Header fields parsed in place without a heap scratch array; a head with more is parsed again with
/// one of [`Limits::max_fields`].
const INLINE_FIELDS: usize = 100;
/// Header fields a response's map has room for beyond those received.
const EXTRA_FIELDS: usize = 8;
/// Longest chunk-size line (size, extensions and CRLF) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Hex digits of a chunk size (16 fill a `u64`).
const MAX_CHUNK_SIZE_DIGITS: usize = 16;

/// Bounds on what a response may make the client hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest response head, bytes (status line and fields; each interim head counts on its own).
    pub max_head_bytes: usize,
    /// Most header fields in one head.
    pub max_fields: usize,
    /// Largest trailer section of a chunked body, bytes (trailers are read and dropped).
    pub max_trailer_bytes: usize,
    /// Most interim (1xx) responses before the final one.
    pub max_interim: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 256 * 1024,
            max_fields: 512,
            max_trailer_bytes: 16 * 1024,
            max_interim: 16,
        }
    }
}

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H1Error {
    /// The head did not end within the byte limit.
    #[error("response head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// The head had more fields than allowed.
    #[error("response head has more than {0} fields")]
    TooManyFields(usize),
    /// More interim responses than allowed.
    #[error("more than {0} interim (1xx) responses")]
    TooManyInterim(usize),
    /// The head is not HTTP/1.x.
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    /// The head says two different things about the body's length.
    #[error("invalid Content-Length")]
    InvalidLength,
    /// A transfer coding this client does not decode.
    #[error("unsupported transfer coding `{0}`")]
    UnsupportedCoding(String),
    /// A `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedUpgrade,
    /// The chunked body is malformed.
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
}

/// How the body of a response is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: no body, as for HEAD, 204 and 304).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// A final response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status code (never 1xx).
    pub status: StatusCode,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: Version,
    /// Header fields as received (hop-by-hop ones included; the caller strips them).
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this response's body.
    pub keep_alive: bool,
}

/// Parses the final response head at the start of `buffer`, skipping interim (1xx) responses, and
/// removes what it parsed from `buffer` (the body's first bytes stay). `Ok(None)`: the head is not
/// complete yet; read more and call again. Header values share the buffer's memory (no copy).
pub fn parse_response_head(
    buffer: &mut BytesMut,
    request_was_head: bool,
    limits: &Limits,
) -> Result<Option<ResponseHead>, H1Error> {
    let mut interim = 0;
    loop {
        let Some(parsed) = parse_one(buffer, limits)? else {
            return Ok(None);
        };
        let head = buffer.split_to(parsed.len).freeze();
        let code = parsed.code;
        if code == 101 {
            return Err(H1Error::UnexpectedUpgrade);
        }
        if (100..200).contains(&code) {
            // Interim: its fields are never part of the final response (RFC 9110 section 15.2).
            interim += 1;
            if interim > limits.max_interim {
                return Err(H1Error::TooManyInterim(limits.max_interim));
            }
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| H1Error::Malformed("invalid status code"))?;
        // Room for the fields a proxy adds (`Age`, `Via`, `Cache-Status`, ...) without growing the map.
        let mut headers = HeaderMap::with_capacity(parsed.fields.len() + EXTRA_FIELDS);
        for (name, range) in parsed.fields {
            let value = HeaderValue::from_maybe_shared(head.slice(range))
                .map_err(|_| H1Error::Malformed("invalid header value"))?;
            headers.append(name, value);
        }
        let version = if parsed.minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let (framing, framing_allows_reuse) = framing(status, &headers, request_was_head)?;
        let keep_alive = framing_allows_reuse && persistent(version, &headers);
        return Ok(Some(ResponseHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// One head found by `httparse`: its length, status, minor version and fields (values as offsets into
/// the buffer, so they can be sliced from it once it is frozen).
struct Parsed {
    len: usize,
    code: u16,
    minor: u8,
    fields: Vec<(HeaderName, std::ops::Range<usize>)>,
}

fn parse_one(buffer: &BytesMut, limits: &Limits) -> Result<Option<Parsed>, H1Error> {
    // A TLS record (an alert, 0x15, or a handshake, 0x16, with version 3.x) where a status line belongs:
    // the server speaks HTTPS.
    if let [0x15 | 0x16, 0x03, ..] = buffer[..] {
        return Err(H1Error::Malformed(
            "the server answered with TLS: it speaks HTTPS, so use an https:// URL",
        ));
    }
    let mut inline: [MaybeUninit<httparse::Header<'_>>; INLINE_FIELDS] =
        [const { MaybeUninit::uninit() }; INLINE_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buffer,
        &mut inline,
    ) {
        Err(httparse::Error::TooManyHeaders) if limits.max_fields > INLINE_FIELDS => {
            let mut wide = vec![httparse::EMPTY_HEADER; limits.max_fields];
            let mut response = httparse::Response::new(&mut wide);
            let status = response.parse(buffer);
            return finish_parse(status, &response, buffer, limits);
        }
        other => other,
    };
    finish_parse(parsed, &response, buffer, limits)
}

fn finish_parse(
    status: httparse::Result<usize>,
    response: &httparse::Response<'_, '_>,
    buffer: &BytesMut,
    limits: &Limits,
) -> Result<Option<Parsed>, H1Error> {
    let len = match status {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buffer.len() >= limits.max_head_bytes {
                return Err(H1Error::HeadTooLarge(limits.max_head_bytes));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::TooManyFields(limits.max_fields)),
        Err(error) => return Err(H1Error::Malformed(parse_error(error))),
    };
    if len > limits.max_head_bytes {
        return Err(H1Error::HeadTooLarge(limits.max_head_bytes));
    }
    if response.headers.len() > limits.max_fields {
        return Err(H1Error::TooManyFields(limits.max_fields));
    }
    let (Some(code), Some(minor)) = (response.code, response.version) else {
        return Err(H1Error::Malformed("no status line"));
    };
    let base = buffer.as_ptr() as usize;
    let mut fields = Vec::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| H1Error::Malformed("invalid header field name"))?;
        // The value is a slice of `buffer` (httparse parses in place); its offset locates it there.
        let start = (field.value.as_ptr() as usize).wrapping_sub(base);
        let end = start + field.value.len();
        if end > len {
            return Err(H1Error::Malformed("header value outside the head"));
        }
        fields.push((name, start..end));
    }
    Ok(Some(Parsed {
        len,
        code,
        minor,
        fields,
    }))
}

fn parse_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header field name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "not HTTP/1.x",
    }
}

/// RFC 9112 section 6.3, for a response; the flag says whether the connection may be reused after it
/// (a response framed by closing, or with both `Transfer-Encoding` and `Content-Length`, may not).
fn framing(status: StatusCode, headers: &HeaderMap, request_was_head: bool) -> Result<(Framing, bool), H1Error> {
    if request_was_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), true));
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        let mut chunked = false;
        for value in codings {
            let text = value
                .to_str()
                .map_err(|_| H1Error::UnsupportedCoding("(not text)".into()))?;
            for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                // `chunked` must be the last coding and applied once (section 6.1); anything else here
                // would be a content coding this client does not undo.
                if chunked || !coding.eq_ignore_ascii_case("chunked") {
                    return Err(H1Error::UnsupportedCoding(coding.to_string()));
                }
                chunked = true;
            }
        }
        if !chunked {
            return Err(H1Error::UnsupportedCoding(String::new()));
        }
        // Both fields: Transfer-Encoding wins, and the connection is closed after (section 6.3, item 3).
        let reuse = !headers.contains_key(header::CONTENT_LENGTH);
        return Ok((Framing::Chunked, reuse));
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| H1Error::InvalidLength)?;
        // A list of identical values (`5, 5`) is one length (section 6.3, item 5); anything else is an error.
        for part in text.split(',').map(str::trim) {
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(H1Error::InvalidLength);
            }
            let parsed: u64 = part.parse().map_err(|_| H1Error::InvalidLength)?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(H1Error::InvalidLength);
            }
            length = Some(parsed);
        }
    }
    match length {
        Some(length) => Ok((Framing::Length(length), true)),
        None => Ok((Framing::UntilClose, false)),
    }
}

/// Whether the connection persists after this response (RFC 9112 section 9.3).
fn persistent(version: Version, headers: &HeaderMap) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for value in headers.get_all(header::CONNECTION) {
        let Ok(text) = value.to_str() else {
            return false;
        };
        for option in text.split(',').map(str::trim) {
            close |= option.eq_ignore_ascii_case("close");
            keep_alive |= option.eq_ignore_ascii_case("keep-alive");
        }
    }
    match version {
        Version::HTTP_10 => keep_alive && !close,
        _ => !close,
    }
}

/// What a body decoder made of the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The decoder needs more input.
    NeedMore,
    /// The body is complete.
    Done,
}

/// Takes a body's bytes from a buffer as its framing delimits them.
#[derive(Debug)]
pub struct BodyDecoder {
    state: DecoderState,
    limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecoderState {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    /// Everything until the connection closes.
    UntilClose,
    /// Before a chunk-size line.
    ChunkSize,
    /// Bytes left of a chunk's data.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// The trailer section after the last chunk, with the bytes read of it so far.
    Trailers(usize),
    /// Complete.
    Done,
}

impl BodyDecoder {
    /// A decoder for a body framed as `framing`.
    pub fn new(framing: Framing, limits: Limits) -> Self {
        let state = match framing {
            Framing::Length(0) => DecoderState::Done,
            Framing::Length(length) => DecoderState::Length(length),
            Framing::Chunked => DecoderState::ChunkSize,
            Framing::UntilClose => DecoderState::UntilClose,
        };
        BodyDecoder { state, limits }
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        self.state == DecoderState::Done
    }

    /// Whether the connection closing now ends the body properly.
    pub fn ends_at_close(&self) -> bool {
        matches!(self.state, DecoderState::UntilClose | DecoderState::Done)
    }

    /// Body bytes left to read, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            DecoderState::Length(left) => Some(left),
            DecoderState::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body from the front of `buffer`.
    pub fn decode(&mut self, buffer: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match self.state {
                DecoderState::Done => return Ok(Decoded::Done),
                DecoderState::Length(left) => {
                    if buffer.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = buffer.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        DecoderState::Done
                    } else {
                        DecoderState::Length(left)
                    };
                    return Ok(Decoded::Data(buffer.split_to(take).freeze()));
                }
                DecoderState::UntilClose => {
                    if buffer.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buffer.split().freeze()));
                }
                DecoderState::ChunkSize => {
                    let Some(size) = chunk_size(buffer)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.state = if size == 0 {
                        DecoderState::Trailers(0)
                    } else {
                        DecoderState::ChunkData(size)
                    };
                }
                DecoderState::ChunkData(left) => {
                    if buffer.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = buffer.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        DecoderState::ChunkEnd
                    } else {
                        DecoderState::ChunkData(left)
                    };
                    return Ok(Decoded::Data(buffer.split_to(take).freeze()));
                }
                DecoderState::ChunkEnd => {
                    if buffer.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buffer[..2] != b"\r\n" {
                        return Err(H1Error::Chunk("chunk data not followed by CRLF"));
                    }
                    buffer.advance(2);
                    self.state = DecoderState::ChunkSize;
                }
                DecoderState::Trailers(read) => {
                    // Trailer fields are read and dropped: the edge neither stores nor forwards them.
                    let Some(line_end) = buffer.iter().position(|&b| b == b'\n') else {
                        if read + buffer.len() > self.limits.max_trailer_bytes {
                            return Err(H1Error::Chunk("trailer section too large"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    let line_len = line_end + 1;
                    if read + line_len > self.limits.max_trailer_bytes {
                        return Err(H1Error::Chunk("trailer section too large"));
                    }
                    if line_end == 0 || buffer[line_end - 1] != b'\r' {
                        return Err(H1Error::Chunk("trailer line not ended by CRLF"));
                    }
                    let empty = line_end == 1;
                    buffer.advance(line_len);
                    self.state = if empty {
                        DecoderState::Done
                    } else {
                        DecoderState::Trailers(read + line_len)
                    };
                }
            }
        }
    }
}

/// Reads a chunk-size line (`1a;ext=1\r\n`) from the front of `buffer`: `Ok(None)` if it is not complete.
fn chunk_size(buffer: &mut BytesMut) -> Result<Option<u64>, H1Error> {
    let Some(line_end) = buffer.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        if buffer.len() >= MAX_CHUNK_LINE {
            return Err(H1Error::Chunk("chunk-size line too long"));
        }
        return Ok(None);
    };
    if line_end == 0 || buffer[line_end - 1] != b'\r' {
        return Err(H1Error::Chunk("chunk-size line not ended by CRLF"));
    }
    let line = &buffer[..line_end - 1];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(H1Error::Chunk("chunk size is not hexadecimal"));
    }
    if digits > MAX_CHUNK_SIZE_DIGITS {
        return Err(H1Error::Chunk("chunk size too large"));
    }
    let rest = &line[digits..];
    // After the size: optional whitespace, then nothing or `;` and extensions (ignored, section 7.1.1).
    let rest_trimmed = rest.iter().skip_while(|b| **b == b' ' || **b == b'\t').copied();
    let mut rest_trimmed = rest_trimmed.peekable();
    match rest_trimmed.peek() {
        None | Some(b';') => {}
        Some(_) => return Err(H1Error::Chunk("invalid character after the chunk size")),
    }
    if rest.iter().any(|b| *b == b'\r' || *b == 0) {
        return Err(H1Error::Chunk("invalid character in a chunk extension"));
    }
    let mut size: u64 = 0;
    for digit in &line[..digits] {
        let value = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            b'A'..=b'F' => digit - b'A' + 10,
            _ => return Err(H1Error::Chunk("chunk size is not hexadecimal")),
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(value)))
            .ok_or(H1Error::Chunk("chunk size too large"))?;
    }
    buffer.advance(line_end + 1);
    Ok(Some(size))
}

/// Writes a request head (`METHOD target HTTP/1.1`, the fields, the blank line) into one buffer, to be
/// sent in one write. `target` must be an origin-form target as `http::Uri` accepts it (no spaces, no
/// control characters); field names and values are valid by construction of `HeaderMap`.
pub fn encode_request_head(method: &http::Method, target: &str, headers: &HeaderMap) -> Vec<u8> {
    let fields_len: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let mut out = Vec::with_capacity(method.as_str().len() + target.len() + fields_len + 16);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Result<Option<ResponseHead>, H1Error> {
        let mut buffer = BytesMut::from(bytes);
        parse_response_head(&mut buffer, false, &Limits::default())
    }

    fn decode_all(framing: Framing, bytes: &[u8]) -> Result<(Vec<u8>, bool), H1Error> {
        let mut decoder = BodyDecoder::new(framing, Limits::default());
        let mut buffer = BytesMut::from(bytes);
        let mut body = Vec::new();
        loop {
            match decoder.decode(&mut buffer)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::NeedMore => return Ok((body, false)),
                Decoded::Done => return Ok((body, true)),
            }
        }
    }

    #[test]
    fn a_head_with_its_body_start() {
        let mut buffer = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhel"[..]);
        let parsed = parse_response_head(&mut buffer, false, &Limits::default())
            .expect("valid")
            .expect("complete");
        assert_eq!(parsed.status, StatusCode::OK);
        assert_eq!(parsed.framing, Framing::Length(5));
        assert!(parsed.keep_alive);
        assert_eq!(parsed.headers["x-a"], "b");
        assert_eq!(&buffer[..], b"hel", "the body's first bytes stay in the buffer");
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Le").expect("valid so far").is_none());
    }

    #[test]
    fn interim_responses_are_skipped_and_their_fields_dropped() {
        let parsed = head(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(parsed.status, StatusCode::OK);
        assert!(parsed.headers.get("link").is_none());
        assert!(matches!(
            head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Err(H1Error::UnexpectedUpgrade)
        ));
    }

    #[test]
    fn the_length_rule() {
        let parse = |bytes: &[u8]| head(bytes).expect("valid").expect("complete");
        assert_eq!(
            parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n").framing,
            Framing::Length(0)
        );
        assert_eq!(parse(b"HTTP/1.1 304 Not Modified\r\n\r\n").framing, Framing::Length(0));
        let chunked = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.framing, Framing::Chunked);
        assert!(chunked.keep_alive);
        let both = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(both.framing, Framing::Chunked);
        assert!(!both.keep_alive, "both fields: the connection is not reused");
        let close = parse(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(close.framing, Framing::UntilClose);
        assert!(!close.keep_alive);
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n").framing,
            Framing::Length(5)
        );
        assert!(!parse(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n").keep_alive);
        assert!(parse(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n").keep_alive);
        let mut buffer = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"[..]);
        let to_head = parse_response_head(&mut buffer, true, &Limits::default())
            .expect("valid")
            .expect("complete");
        assert_eq!(to_head.framing, Framing::Length(0), "a response to HEAD has no body");
    }

    #[test]
    fn malformed_heads_are_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 099 OK\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // A TLS alert where the status line belongs says the server speaks HTTPS.
        let alert = head(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]).expect_err("a TLS alert");
        assert!(alert.to_string().contains("https://"), "{alert}");
    }

    #[test]
    fn heads_are_held_to_their_limits() {
        let limits = Limits {
            max_head_bytes: 64,
            ..Limits::default()
        };
        let mut long = BytesMut::from(&[&b"HTTP/1.1 200 OK\r\nX: "[..], &[b'a'; 100][..]][..].concat()[..]);
        assert_eq!(
            parse_response_head(&mut long, false, &limits).err(),
            Some(H1Error::HeadTooLarge(64))
        );
        let mut wide = b"HTTP/1.1 200 OK\r\n".to_vec();
        for n in 0..200 {
            wide.extend_from_slice(format!("x-{n}: v\r\n").as_bytes());
        }
        wide.extend_from_slice(b"\r\n");
        assert_eq!(head(&wide).expect("valid").expect("complete").headers.len(), 200);
        let narrow = Limits {
            max_fields: 150,
            ..Limits::default()
        };
        let mut buffer = BytesMut::from(&wide[..]);
        assert_eq!(
            parse_response_head(&mut buffer, false, &narrow).err(),
            Some(H1Error::TooManyFields(150))
        );
    }

    #[test]
    fn chunked_bodies() {
        let (body, done) = decode_all(
            Framing::Chunked,
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(body, b"hello world");
        assert!(done);
        let (partial, done) = decode_all(Framing::Chunked, b"A\r\n01234").expect("valid so far");
        assert_eq!(partial, b"01234");
        assert!(!done);
        for bad in [
            &b"g\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"11111111111111111\r\n",
            b"5 x\r\nhello\r\n",
        ] {
            assert!(
                decode_all(Framing::Chunked, bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn length_and_close_bodies() {
        let (body, done) = decode_all(Framing::Length(3), b"abcdef").expect("valid");
        assert_eq!(body, b"abc", "held to its length");
        assert!(done);
        let (body, done) = decode_all(Framing::UntilClose, b"abcdef").expect("valid");
        assert_eq!(body, b"abcdef");
        assert!(!done, "only the close ends it");
    }

    #[test]
    fn a_request_head_in_one_buffer() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.com"));
        headers.append("x-a", HeaderValue::from_static("1"));
        let encoded = encode_request_head(&http::Method::GET, "/p?q=1", &headers);
        assert_eq!(
            encoded,
            b"GET /p?q=1 HTTP/1.1\r\nhost: example.com\r\nx-a: 1\r\n\r\n".to_vec()
        );
    }
}
