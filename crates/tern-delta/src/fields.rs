//! The HTTP fields of differential caching: `Available-Dictionary`, `Dictionary-ID` and `Use-As-Dictionary`
//! (RFC 9842 sections 2.1 to 2.3), the page digest `Repr-Digest` (RFC 9530 section 3), and the
//! `Link: rel="compression-dictionary"` value (RFC 9842 section 3).
//!
//! All are RFC 8941 Structured Fields. Their grammar is checked by the parser the cache already has
//! (`tern_http_cache::structured`), so a field is valid here exactly when it is valid there (a failure
//! anywhere invalidates the whole field, RFC 8941 section 4.2). That parser keeps byte sequences
//! undecoded, so this module decodes their base64 itself, from the member's position in the text; an
//! Item field (`Available-Dictionary`, `Dictionary-ID`) is checked as the value of a one-member Dictionary,
//! which has the same grammar (`bare-item` and parameters).
//!
//! On the digest: RFC 9530's `Repr-Digest` covers the selected representation *with* its content coding, so
//! on a `dcz` response it would name the delta's bytes. The page's digest there travels in
//! [`UNENCODED_DIGEST`] (draft-ietf-httpbis-unencoded-digest, same syntax, digest before content coding);
//! the edge serves the rebuilt page, which is identity-coded, with `Repr-Digest` of the same value.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use tern_http_cache::structured::{self, Item};

use crate::base::BaseId;
use crate::class::Class;

/// `Available-Dictionary` (RFC 9842 section 2.2): the SHA-256 of the dictionary the client holds.
pub const AVAILABLE_DICTIONARY: &str = "available-dictionary";
/// `Dictionary-ID` (RFC 9842 section 2.3): the `id` the dictionary was served with.
pub const DICTIONARY_ID: &str = "dictionary-id";
/// `Use-As-Dictionary` (RFC 9842 section 2.1), on a base's response.
pub const USE_AS_DICTIONARY: &str = "use-as-dictionary";
/// `Repr-Digest` (RFC 9530 section 3).
pub const REPR_DIGEST: &str = "repr-digest";
/// `Unencoded-Digest` (draft-ietf-httpbis-unencoded-digest): a digest of the content before content coding.
pub const UNENCODED_DIGEST: &str = "unencoded-digest";
/// The `dcz` content coding (RFC 9842 section 5).
pub const DCZ: &str = "dcz";
/// The request field by which an edge tells `tern delta` that it decodes deltas (value `?1`). `tern delta`
/// encodes only for requests that carry it; an edge removes it from every client's request and sets it
/// on its own, so a client can never make `tern delta` send a delta that an edge would take for a page.
pub const TERN_DELTA_EDGE: &str = "tern-delta-edge";
/// The response field (value `?1`) by which `tern delta` tells an edge that the base it named is not one
/// it holds for the page's class, or that the page is in no class of its own: the edge's idea of that
/// class is stale (`tern delta`'s classes changed, or it lost its bases), and the edge withdraws it. A
/// whole page for any other reason (a 404, a page a delta would not shrink) carries no such field.
pub const BASE_UNKNOWN: &str = "tern-delta-base-unknown";
/// `Vary` of a response that may be `dcz`-coded for a browser (RFC 9842 section 6.2).
pub const VARY_DCZ: &str = "accept-encoding, available-dictionary";
/// Longest `Dictionary-ID` and `Use-As-Dictionary: id`, in characters (RFC 9842 section 2.1.3).
pub const MAX_ID_LEN: usize = 1024;

/// Why a field value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// Not a valid RFC 8941 structure of the field's type.
    #[error("{0} is not a valid structured field")]
    Syntax(&'static str),
    /// A member or item has the wrong RFC 8941 type.
    #[error("{0} has a value of the wrong type")]
    Type(&'static str),
    /// A byte sequence of the wrong length (a SHA-256 is 32 bytes).
    #[error("{field} carries {len} bytes, not 32")]
    Length {
        /// The field.
        field: &'static str,
        /// Bytes carried.
        len: usize,
    },
    /// `Use-As-Dictionary` without `match` (RFC 9842 section 2.1.1 requires it).
    #[error("use-as-dictionary has no match")]
    NoMatch,
    /// An `id` longer than [`MAX_ID_LEN`].
    #[error("dictionary id longer than {MAX_ID_LEN} characters")]
    IdTooLong,
    /// A string with a character RFC 8941 strings cannot carry (only visible ASCII and space).
    #[error("string with a character outside visible ASCII")]
    NotAscii,
    /// `Repr-Digest` without a `sha-256` member.
    #[error("no sha-256 digest")]
    NoSha256,
    /// More than one field line where one value is allowed, or a line that is not text.
    #[error("{0} given more than once or not as text")]
    Lines(&'static str),
}

/// RFC 8941 section 4.2.7: parsers should accept missing padding and non-zero pad bits.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Formats a byte sequence, `:base64:`.
fn byte_sequence(bytes: &[u8]) -> String {
    format!(":{}:", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Decodes the byte sequence that starts at `text[at]` (already validated by the structured parser).
fn read_byte_sequence(text: &str, at: usize, field: &'static str) -> Result<Vec<u8>, FieldError> {
    let rest = text
        .get(at..)
        .and_then(|rest| rest.strip_prefix(':'))
        .ok_or(FieldError::Type(field))?;
    let end = rest.find(':').ok_or(FieldError::Syntax(field))?;
    LENIENT_BASE64
        .decode(&rest[..end])
        .map_err(|_| FieldError::Syntax(field))
}

/// Reads a 32-byte SHA-256 byte sequence at `text[at]`.
fn read_sha256(text: &str, at: usize, field: &'static str) -> Result<[u8; 32], FieldError> {
    let bytes = read_byte_sequence(text, at, field)?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| FieldError::Length { field, len })
}

/// Checks `text` as an RFC 8941 Item and returns it with the text trimmed of the SP RFC 8941 discards.
fn item<'t>(text: &'t str, field: &'static str) -> Result<(Item, &'t str), FieldError> {
    let trimmed = text.trim_matches(' ');
    let wrapped = format!("v={trimmed}");
    let mut members = structured::dictionary(&wrapped).ok_or(FieldError::Syntax(field))?;
    if members.len() != 1 || members[0].0 != "v" {
        return Err(FieldError::Syntax(field));
    }
    let (_, value) = members.remove(0);
    Ok((value, trimmed))
}

/// Formats an RFC 8941 String; refuses characters it cannot carry.
fn string(text: &str) -> Result<String, FieldError> {
    if !text.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(FieldError::NotAscii);
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

/// The one line of a field that allows one value (several lines would make a List, not an Item).
fn single_line<'h>(headers: &'h HeaderMap, name: &str, field: &'static str) -> Result<Option<&'h str>, FieldError> {
    let mut lines = headers.get_all(name).iter();
    let Some(first) = lines.next() else {
        return Ok(None);
    };
    if lines.next().is_some() {
        return Err(FieldError::Lines(field));
    }
    first.to_str().map(Some).map_err(|_| FieldError::Lines(field))
}

/// All lines of a Dictionary field joined as RFC 8941 section 4.2 says (`, `).
fn joined_lines(headers: &HeaderMap, name: &str, field: &'static str) -> Result<Option<String>, FieldError> {
    let mut joined: Option<String> = None;
    for line in headers.get_all(name) {
        let text = line.to_str().map_err(|_| FieldError::Lines(field))?;
        match joined.as_mut() {
            Some(all) => {
                all.push_str(", ");
                all.push_str(text);
            }
            None => joined = Some(text.to_string()),
        }
    }
    Ok(joined)
}

/// Parses `Available-Dictionary` (an RFC 8941 Byte Sequence of 32 bytes) into the base it names.
pub fn parse_available_dictionary(text: &str) -> Result<BaseId, FieldError> {
    const FIELD: &str = "available-dictionary";
    let (value, trimmed) = item(text, FIELD)?;
    if value != Item::Binary {
        return Err(FieldError::Type(FIELD));
    }
    read_sha256(trimmed, 0, FIELD).map(BaseId::from_bytes)
}

/// Formats `Available-Dictionary` naming `id`.
pub fn format_available_dictionary(id: &BaseId) -> String {
    byte_sequence(id.as_bytes())
}

/// The base a request names in `Available-Dictionary`, if any.
pub fn available_dictionary(headers: &HeaderMap) -> Result<Option<BaseId>, FieldError> {
    single_line(headers, AVAILABLE_DICTIONARY, "available-dictionary")?
        .map(parse_available_dictionary)
        .transpose()
}

/// Parses `Dictionary-ID` (an RFC 8941 String of at most [`MAX_ID_LEN`] characters).
pub fn parse_dictionary_id(text: &str) -> Result<String, FieldError> {
    const FIELD: &str = "dictionary-id";
    match item(text, FIELD)?.0 {
        Item::String(id) if id.len() > MAX_ID_LEN => Err(FieldError::IdTooLong),
        Item::String(id) => Ok(id),
        _ => Err(FieldError::Type(FIELD)),
    }
}

/// Formats `Dictionary-ID`.
pub fn format_dictionary_id(id: &str) -> Result<String, FieldError> {
    if id.len() > MAX_ID_LEN {
        return Err(FieldError::IdTooLong);
    }
    string(id)
}

/// The `type` of a dictionary (RFC 9842 section 2.1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DictionaryType {
    /// `raw`, the only defined type (and the default): unformatted bytes.
    Raw,
    /// Any other token: a client must not use the dictionary.
    Other(String),
}

/// `Use-As-Dictionary` (RFC 9842 section 2.1), sent with a base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseAsDictionary {
    /// `match`: the URL Pattern of the requests the dictionary serves (a class pattern).
    pub match_pattern: String,
    /// `match-dest`: request destinations (`document`, ...); empty matches all.
    pub match_dest: Vec<String>,
    /// `id`: echoed by clients in `Dictionary-ID`; empty means none.
    pub id: String,
    /// `type`.
    pub kind: DictionaryType,
}

impl UseAsDictionary {
    /// The field for a page that serves as the dictionary of the next version of its own URL: a pattern
    /// that matches exactly `path` (its URL Pattern special characters escaped), `document` requests.
    pub fn for_page(path: &str) -> Self {
        let mut pattern = String::with_capacity(path.len() + 8);
        for c in path.chars() {
            if matches!(c, '*' | ':' | '(' | ')' | '{' | '}' | '+' | '?' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        UseAsDictionary {
            match_pattern: pattern,
            match_dest: vec!["document".to_string()],
            id: String::new(),
            kind: DictionaryType::Raw,
        }
    }

    /// The field for the base of `class`: its pattern, `document` requests, the class name as `id`.
    pub fn for_class(class: &Class) -> Self {
        UseAsDictionary {
            match_pattern: class.pattern.as_str().to_string(),
            match_dest: vec!["document".to_string()],
            id: class.name.clone(),
            kind: DictionaryType::Raw,
        }
    }

    /// Formats the field; members at their default values are left out.
    pub fn format(&self) -> Result<String, FieldError> {
        let mut out = format!("match={}", string(&self.match_pattern)?);
        if !self.match_dest.is_empty() {
            let dests: Result<Vec<String>, FieldError> = self.match_dest.iter().map(|dest| string(dest)).collect();
            out.push_str(&format!(", match-dest=({})", dests?.join(" ")));
        }
        if !self.id.is_empty() {
            out.push_str(&format!(", id={}", format_dictionary_id(&self.id)?));
        }
        match &self.kind {
            DictionaryType::Raw => {}
            DictionaryType::Other(token) => {
                let valid = token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '*')
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"\"(),;=\\".contains(&b));
                if !valid {
                    return Err(FieldError::Type("use-as-dictionary"));
                }
                out.push_str(&format!(", type={token}"));
            }
        }
        Ok(out)
    }

    /// Parses the field; unknown members are ignored, as RFC 8941 dictionaries allow.
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "use-as-dictionary";
        let members = structured::dictionary(text).ok_or(FieldError::Syntax(FIELD))?;
        let mut parsed = UseAsDictionary {
            match_pattern: String::new(),
            match_dest: Vec::new(),
            id: String::new(),
            kind: DictionaryType::Raw,
        };
        let mut has_match = false;
        // A key given twice: the last one wins (RFC 8941 section 4.2.2).
        for (key, value) in members {
            match (key, value) {
                ("match", Item::String(pattern)) => {
                    parsed.match_pattern = pattern;
                    has_match = true;
                }
                ("match-dest", Item::InnerList(dests)) => parsed.match_dest = dests,
                ("id", Item::String(id)) if id.len() > MAX_ID_LEN => return Err(FieldError::IdTooLong),
                ("id", Item::String(id)) => parsed.id = id,
                ("type", Item::Token(token)) if token == "raw" => parsed.kind = DictionaryType::Raw,
                ("type", Item::Token(token)) => parsed.kind = DictionaryType::Other(token),
                ("match" | "match-dest" | "id" | "type", _) => return Err(FieldError::Type(FIELD)),
                _ => {}
            }
        }
        if !has_match {
            return Err(FieldError::NoMatch);
        }
        Ok(parsed)
    }
}

/// A `Link` value pointing browsers at a base (RFC 9842 section 3).
pub fn compression_dictionary_link(base: &BaseId) -> String {
    format!("<{}>; rel=\"compression-dictionary\"", base.well_known_path())
}

/// The relation type of a link to a dictionary (RFC 9842 section 3).
pub const COMPRESSION_DICTIONARY: &str = "compression-dictionary";

/// One link-value of a `Link` field (RFC 8288 section 3): its target and where it sits in the field text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkValue<'t> {
    /// The URI reference between `<` and `>`.
    target: &'t str,
    /// Whether one of its `rel` relation types is `compression-dictionary` (compared case-insensitively).
    dictionary: bool,
    /// Byte range of the whole link-value in the field text.
    span: (usize, usize),
}

/// Splits a `Link` field value into its link-values. Lenient as RFC 8288 section 3 asks of parsers: a
/// malformed link-value is skipped up to the next comma outside quotes, never an error, and never a panic.
fn link_values(text: &str) -> Vec<LinkValue<'_>> {
    let bytes = text.as_bytes();
    let mut values = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        while at < bytes.len() && (bytes[at] == b',' || bytes[at] == b' ' || bytes[at] == b'\t') {
            at += 1;
        }
        if at >= bytes.len() {
            break;
        }
        let start = at;
        let parsed = (|| {
            if bytes.get(at) != Some(&b'<') {
                return None;
            }
            let close = at + text[at..].find('>')?;
            let target = &text[at + 1..close];
            // A URI reference holds no `<` or space: this `<` was never closed.
            if target.contains(['<', ' ']) {
                return None;
            }
            at = close + 1;
            let mut dictionary = false;
            loop {
                while at < bytes.len() && (bytes[at] == b' ' || bytes[at] == b'\t') {
                    at += 1;
                }
                match bytes.get(at) {
                    None | Some(b',') => break,
                    Some(b';') => at += 1,
                    Some(_) => return None,
                }
                while at < bytes.len() && (bytes[at] == b' ' || bytes[at] == b'\t') {
                    at += 1;
                }
                let name_start = at;
                while at < bytes.len() && is_tchar(bytes[at]) {
                    at += 1;
                }
                let name = &text[name_start..at];
                while at < bytes.len() && (bytes[at] == b' ' || bytes[at] == b'\t') {
                    at += 1;
                }
                let mut value = String::new();
                if bytes.get(at) == Some(&b'=') {
                    at += 1;
                    while at < bytes.len() && (bytes[at] == b' ' || bytes[at] == b'\t') {
                        at += 1;
                    }
                    if bytes.get(at) == Some(&b'"') {
                        at += 1;
                        loop {
                            match bytes.get(at) {
                                None => return None,
                                Some(b'"') => {
                                    at += 1;
                                    break;
                                }
                                Some(b'\\') => {
                                    let escaped = text.get(at + 1..)?.chars().next()?;
                                    value.push(escaped);
                                    at += 1 + escaped.len_utf8();
                                }
                                Some(_) => {
                                    let c = text[at..].chars().next()?;
                                    value.push(c);
                                    at += c.len_utf8();
                                }
                            }
                        }
                    } else {
                        let value_start = at;
                        while at < bytes.len() && is_tchar(bytes[at]) {
                            at += 1;
                        }
                        value.push_str(&text[value_start..at]);
                    }
                }
                if name.eq_ignore_ascii_case("rel") {
                    dictionary |= value
                        .split_ascii_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case(COMPRESSION_DICTIONARY));
                }
            }
            Some(LinkValue {
                target,
                dictionary,
                span: (start, at),
            })
        })();
        match parsed {
            Some(value) => values.push(value),
            None => {
                // Skip the malformed link-value: to the next comma outside a quoted string.
                at = start;
                let mut quoted = false;
                while at < bytes.len() {
                    match bytes[at] {
                        b'\\' if quoted => at += 1,
                        b'"' => quoted = !quoted,
                        b',' if !quoted => break,
                        _ => {}
                    }
                    at += 1;
                }
            }
        }
    }
    values
}

/// RFC 9110 section 5.6.2 `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// The base a link target names: a path made by [`BaseId::well_known_path`], alone or after an
/// `http://` or `https://` authority.
fn linked_base(target: &str) -> Option<BaseId> {
    let path = match target.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {
            &rest[rest.find('/')?..]
        }
        Some(_) => return None,
        None => target,
    };
    BaseId::from_well_known_path(path)
}

/// The bases a response announces: `Link` targets with `rel="compression-dictionary"` at the well-known
/// base path (how `tern delta` tells edges, and the edge tells browsers, which base a class uses now).
/// Link-values of any other kind, and malformed ones, are ignored.
pub fn announced_bases(headers: &HeaderMap) -> Vec<BaseId> {
    let mut found = Vec::new();
    for line in headers.get_all(http::header::LINK) {
        let Ok(text) = line.to_str() else {
            continue;
        };
        for value in link_values(text) {
            if value.dictionary
                && let Some(id) = linked_base(value.target)
                && !found.contains(&id)
            {
                found.push(id);
            }
        }
    }
    found
}

/// Removes the base announcements ([`announced_bases`]) from the `Link` fields of `headers`, keeping every
/// other link-value as it was written. Returns whether any was removed.
pub fn remove_announcements(headers: &mut HeaderMap) -> bool {
    let lines: Vec<http::HeaderValue> = headers.get_all(http::header::LINK).iter().cloned().collect();
    let mut removed = false;
    let mut kept_lines = Vec::with_capacity(lines.len());
    for line in lines {
        let Ok(text) = line.to_str() else {
            kept_lines.push(line);
            continue;
        };
        let values = link_values(text);
        let announcements = values
            .iter()
            .filter(|value| value.dictionary && linked_base(value.target).is_some())
            .count();
        if announcements == 0 {
            kept_lines.push(line);
            continue;
        }
        removed = true;
        let kept: Vec<&str> = values
            .iter()
            .filter(|value| !(value.dictionary && linked_base(value.target).is_some()))
            .map(|value| text[value.span.0..value.span.1].trim())
            .collect();
        if !kept.is_empty()
            && let Ok(value) = http::HeaderValue::from_str(&kept.join(", "))
        {
            kept_lines.push(value);
        }
    }
    if removed {
        headers.remove(http::header::LINK);
        for line in kept_lines {
            headers.append(http::header::LINK, line);
        }
    }
    removed
}

/// A page's SHA-256, as carried by `Repr-Digest` (RFC 9530 section 3) or `Unencoded-Digest`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReprDigest([u8; 32]);

impl std::fmt::Debug for ReprDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReprDigest({})", &self.format()[9..21])
    }
}

impl ReprDigest {
    /// The digest of `page`.
    pub fn of(page: &[u8]) -> Self {
        ReprDigest(Sha256::digest(page).into())
    }

    /// A digest from its 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        ReprDigest(bytes)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `page` has this digest.
    pub fn verify(&self, page: &[u8]) -> bool {
        *self == ReprDigest::of(page)
    }

    /// The field value, `sha-256=:base64:`.
    pub fn format(&self) -> String {
        format!("sha-256={}", byte_sequence(&self.0))
    }

    /// Parses the field value (an RFC 8941 Dictionary of Byte Sequences keyed by algorithm); takes the
    /// `sha-256` member and ignores other algorithms (RFC 9530 section 5).
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "repr-digest";
        let members = structured::dictionary(text).ok_or(FieldError::Syntax(FIELD))?;
        // The last `sha-256` wins; its value starts right after "sha-256=" at the key's place in `text`.
        let key = members
            .iter()
            .rev()
            .find(|(key, _)| *key == "sha-256")
            .ok_or(FieldError::NoSha256)?;
        if key.1 != Item::Binary {
            return Err(FieldError::Type(FIELD));
        }
        let key_at = key.0.as_ptr() as usize - text.as_ptr() as usize;
        read_sha256(text, key_at + key.0.len() + 1, FIELD).map(ReprDigest)
    }

    /// The digest in field `name` (all lines joined), if present.
    pub fn from_headers(headers: &HeaderMap, name: &str) -> Result<Option<Self>, FieldError> {
        joined_lines(headers, name, "repr-digest")?
            .map(|text| ReprDigest::parse(&text))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_dictionary_matches_its_own_path_only() {
        let field = UseAsDictionary::for_page("/p/a*b:c(1)");
        assert_eq!(field.match_pattern, "/p/a\\*b\\:c\\(1\\)");
        let text = field.format().expect("formats");
        assert_eq!(UseAsDictionary::parse(&text).expect("parses"), field);
        assert_eq!(
            UseAsDictionary::for_page("/news/today.html").match_pattern,
            "/news/today.html"
        );
    }
    use http::HeaderValue;
    use proptest::prelude::*;

    // RFC 9842 section 2.2's example value.
    const EXAMPLE: &str = ":pZGm1Av0IEBKARczz7exkNYsZb8LzaMrV7J32a2fFG4=:";

    #[test]
    fn available_dictionary_of_the_rfc_example() {
        let id = parse_available_dictionary(EXAMPLE).expect("valid");
        assert_eq!(id.as_bytes()[..3], [0xa5, 0x91, 0xa6]);
        assert_eq!(format_available_dictionary(&id), EXAMPLE);
        // Surrounding spaces and parameters are allowed; padding may be left out.
        assert_eq!(parse_available_dictionary(&format!("  {EXAMPLE};x=1 ")), Ok(id));
        assert_eq!(
            parse_available_dictionary(":pZGm1Av0IEBKARczz7exkNYsZb8LzaMrV7J32a2fFG4:"),
            Ok(id)
        );
    }

    #[test]
    fn invalid_available_dictionaries() {
        let short = format_available_dictionary(&BaseId::of(b"x"))
            .replace("=:", "")
            .replace(':', "")
            + "AA";
        for text in [
            "",
            "pZGm1Av0IEBKARczz7exkNYsZb8LzaMrV7J32a2fFG4=",
            "\"a string\"",
            ":unterminated",
            ":!!!!:",
            &format!("{EXAMPLE}, {EXAMPLE}"),
            &format!("{EXAMPLE} x"),
            &format!(":{short}:"),
        ] {
            assert!(parse_available_dictionary(text).is_err(), "{text:?}");
        }
        assert_eq!(
            parse_available_dictionary(":AAAA:"),
            Err(FieldError::Length {
                field: "available-dictionary",
                len: 3
            })
        );
        assert_eq!(
            parse_available_dictionary("?1"),
            Err(FieldError::Type("available-dictionary"))
        );
    }

    #[test]
    fn available_dictionary_from_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(available_dictionary(&headers), Ok(None));
        headers.append(AVAILABLE_DICTIONARY, HeaderValue::from_static(EXAMPLE));
        assert!(matches!(available_dictionary(&headers), Ok(Some(_))));
        headers.append(AVAILABLE_DICTIONARY, HeaderValue::from_static(EXAMPLE));
        assert_eq!(
            available_dictionary(&headers),
            Err(FieldError::Lines("available-dictionary"))
        );
    }

    #[test]
    fn dictionary_ids() {
        assert_eq!(
            parse_dictionary_id(r#""/v1/main.js 33a6\"x""#),
            Ok("/v1/main.js 33a6\"x".to_string())
        );
        assert_eq!(format_dictionary_id("a\"b\\c"), Ok(r#""a\"b\\c""#.to_string()));
        assert_eq!(parse_dictionary_id("token"), Err(FieldError::Type("dictionary-id")));
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(parse_dictionary_id(&format!("\"{long}\"")), Err(FieldError::IdTooLong));
        assert_eq!(format_dictionary_id(&long), Err(FieldError::IdTooLong));
        assert_eq!(format_dictionary_id("é"), Err(FieldError::NotAscii));
    }

    #[test]
    fn use_as_dictionary_for_a_class_round_trips() {
        let class = Class::parse("product=/product/*").expect("valid");
        let field = UseAsDictionary::for_class(&class);
        let text = field.format().expect("formats");
        assert_eq!(text, r#"match="/product/*", match-dest=("document"), id="product""#);
        assert_eq!(UseAsDictionary::parse(&text), Ok(field));
    }

    #[test]
    fn use_as_dictionary_parsing() {
        let parsed = UseAsDictionary::parse(r#"match="/app/*/main.js""#).expect("valid");
        assert_eq!(parsed.match_dest, Vec::<String>::new());
        assert_eq!((parsed.id.as_str(), &parsed.kind), ("", &DictionaryType::Raw));
        let other = UseAsDictionary::parse(r#"match="/", type=brotli, future=?1"#).expect("valid");
        assert_eq!(other.kind, DictionaryType::Other("brotli".into()));
        assert_eq!(UseAsDictionary::parse("id=\"x\""), Err(FieldError::NoMatch));
        assert_eq!(
            UseAsDictionary::parse("match=tok"),
            Err(FieldError::Type("use-as-dictionary"))
        );
        assert_eq!(
            UseAsDictionary::parse("match=\"/\", type=\"raw\""),
            Err(FieldError::Type("use-as-dictionary"))
        );
        assert_eq!(
            UseAsDictionary::parse("match=\"/\","),
            Err(FieldError::Syntax("use-as-dictionary"))
        );
    }

    #[test]
    fn repr_digest() {
        // RFC 9530's examples: the SHA-256 of `{"hello": "world"}`.
        let digest = ReprDigest::of(b"{\"hello\": \"world\"}");
        assert_eq!(
            digest.format(),
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
        assert!(digest.verify(b"{\"hello\": \"world\"}"));
        assert!(!digest.verify(b"{\"hello\": \"world\"}\n"));
        let with_others = format!("sha-512=:AAAA:, {}, unixsum=:AA==:", digest.format());
        assert_eq!(ReprDigest::parse(&with_others), Ok(digest));
        assert_eq!(ReprDigest::parse("sha-512=:AAAA:"), Err(FieldError::NoSha256));
        assert_eq!(ReprDigest::parse("sha-256=1"), Err(FieldError::Type("repr-digest")));
        assert!(ReprDigest::parse("sha-256=:AAAA:").is_err());
        assert!(ReprDigest::parse("sha-256=:").is_err());

        let mut headers = HeaderMap::new();
        headers.append(REPR_DIGEST, HeaderValue::from_static("sha-512=:AAAA:"));
        headers.append(REPR_DIGEST, HeaderValue::from_str(&digest.format()).expect("ascii"));
        assert_eq!(ReprDigest::from_headers(&headers, REPR_DIGEST), Ok(Some(digest)));
        assert_eq!(ReprDigest::from_headers(&headers, UNENCODED_DIGEST), Ok(None));
    }

    #[test]
    fn announcements_are_found_and_removed() {
        let id = BaseId::of(b"base");
        let other = BaseId::of(b"other");
        let mut headers = HeaderMap::new();
        headers.append(
            http::header::LINK,
            HeaderValue::from_str(&format!(
                "</style.css>; rel=preload; as=style, {}, <https://cdn.example{}>; REL=\"prefetch Compression-Dictionary\"",
                compression_dictionary_link(&id),
                other.well_known_path()
            ))
            .expect("ascii"),
        );
        headers.append(
            http::header::LINK,
            HeaderValue::from_static("</dict.bin>; rel=\"compression-dictionary\""),
        );
        assert_eq!(announced_bases(&headers), vec![id, other]);
        assert!(remove_announcements(&mut headers));
        let kept: Vec<&str> = headers
            .get_all(http::header::LINK)
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect();
        assert_eq!(
            kept,
            vec![
                "</style.css>; rel=preload; as=style",
                "</dict.bin>; rel=\"compression-dictionary\""
            ]
        );
        assert!(announced_bases(&headers).is_empty());
        assert!(!remove_announcements(&mut headers));
    }

    #[test]
    fn malformed_links_are_skipped() {
        let id = BaseId::of(b"base");
        let mut headers = HeaderMap::new();
        let text = format!(
            "garbage; rel=\"a,b\", <unterminated, {}, <{}>; rel=preload, <ftp://x{}>; rel=compression-dictionary",
            compression_dictionary_link(&id),
            id.well_known_path(),
            id.well_known_path()
        );
        headers.append(http::header::LINK, HeaderValue::from_str(&text).expect("ascii"));
        assert_eq!(announced_bases(&headers), vec![id]);
    }

    #[test]
    fn link_to_a_base() {
        let id = BaseId::of(b"base");
        assert_eq!(
            compression_dictionary_link(&id),
            format!(
                "<{}{id}>; rel=\"compression-dictionary\"",
                crate::base::BASE_PATH_PREFIX
            )
        );
    }

    proptest! {
        #[test]
        fn hashes_round_trip(bytes in any::<[u8; 32]>()) {
            let id = BaseId::from_bytes(bytes);
            prop_assert_eq!(parse_available_dictionary(&format_available_dictionary(&id)), Ok(id));
            let digest = ReprDigest::from_bytes(bytes);
            prop_assert_eq!(ReprDigest::parse(&digest.format()), Ok(digest));
        }

        #[test]
        fn use_as_dictionary_round_trips(
            pattern in "[ -~]{0,30}",
            dests in proptest::collection::vec("[a-z]{1,8}", 0..3),
            id in "[ -~]{0,30}",
        ) {
            let field = UseAsDictionary { match_pattern: pattern, match_dest: dests, id, kind: DictionaryType::Raw };
            let text = field.format().expect("visible ascii formats");
            prop_assert_eq!(UseAsDictionary::parse(&text), Ok(field));
        }

        #[test]
        fn link_parsing_never_panics(text in "[<>;,=\" a-z/\\\\é.-]{0,80}") {
            if let Ok(value) = http::HeaderValue::from_str(&text) {
                let mut headers = HeaderMap::new();
                headers.append(http::header::LINK, value);
                let _ = announced_bases(&headers);
                remove_announcements(&mut headers);
            }
        }

        #[test]
        fn parsers_never_panic(text in "\\PC{0,80}") {
            let _ = parse_available_dictionary(&text);
            let _ = parse_dictionary_id(&text);
            let _ = UseAsDictionary::parse(&text);
            let _ = ReprDigest::parse(&text);
        }

        #[test]
        fn parsers_never_panic_on_near_valid_input(text in "[:a-zA-Z0-9+/=\", -]{0,60}") {
            let _ = parse_available_dictionary(&text);
            let _ = ReprDigest::parse(&format!("sha-256={text}"));
        }
    }
}
