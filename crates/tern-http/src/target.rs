//! Request targets in normal form (RFC 3986 section 6.2.2): percent-encodings with upper-case hex digits,
//! percent-encoded unreserved characters decoded, and dot segments removed from the path (section 6.2.2.3,
//! by the algorithm of section 5.2.4); all of these keep a URI equivalent to every other spelling of it.
//! Empty path segments (`//`) are merged too, as nginx does by default: RFC 3986 does not make `//a` equal
//! to `/a`, but every static origin serves the same file for both, and a cache that kept them apart would
//! keep a copy that no purge names. A cache that keys on the normal form, and forwards it, serves
//! `/%7Ex.html`, `/~x.html`, `/./~x.html` and `//~x.html` as one object that one purge removes, and its
//! origin sees exactly the target the object is stored under.
//!
//! Encodings of reserved characters (`%2F`, `%2B`, `%3F`...) are kept encoded: RFC 3986 does not make them
//! equivalent to the character itself. The query is left as it is apart from its percent-encodings.

use std::borrow::Cow;

/// Why a request cannot be served for its `Host`, as a message for the 400 answer, or `None` when it can:
/// more than one `Host` field line, or an HTTP/1.1 request with no host at all (RFC 9112 section 3.2: a
/// server must answer 400 to both). An absolute-form target or HTTP/2's `:authority` names the host in
/// `uri`; an HTTP/1.0 request may come without one. The one rule of every listener that serves a site
/// (edge, `tern serve`, `tern delta`).
pub fn host_field_problem(version: http::Version, uri: &http::Uri, headers: &http::HeaderMap) -> Option<&'static str> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Some("request has more than one Host field");
    }
    let named = uri.authority().is_some() || first.is_some_and(|host| !host.as_bytes().trim_ascii().is_empty());
    (!named && version >= http::Version::HTTP_11).then_some("request has no Host")
}

/// Whether `byte` is an unreserved character (RFC 3986 section 2.3).
pub fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Whether `authority`'s port, when it has one, is a number from 0 to 65535. RFC 3986 section 3.2.3 allows
/// any digits, but a TCP port has 16 bits, and `http::Uri` takes any digits and then shows no port at all (so
/// `host:99999` would quietly mean port 80). An empty port (`host:`) is the scheme's default.
pub fn port_is_valid(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        // The colon of an IPv6 literal's address, not of a port.
        Some((_, port)) if port.contains(']') => true,
        Some((_, port)) => port.is_empty() || port.parse::<u16>().is_ok(),
        None => true,
    }
}

/// Whether every `%` in `text` starts a percent-encoded octet, `%` and two hexadecimal digits (RFC 3986
/// section 2.1). [`normalize`] keeps other `%`s as they are; an origin refuses them, so a URL that has one
/// names nothing a cache can hold.
pub fn escapes_are_valid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().all(|(at, &byte)| {
        byte != b'%'
            || bytes
                .get(at + 1..at + 3)
                .is_some_and(|digits| digits.iter().all(u8::is_ascii_hexdigit))
    })
}

/// An origin's base URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginBase {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and port.
    pub authority: http::uri::Authority,
    /// The path every request's path is put under, without a trailing `/` (empty for the root).
    pub path: String,
}

/// Reads an origin's base URL (`--origin`, `origin =` in a config file): `http://` or `https://`, a host,
/// a port from 0 to 65535 if any ([`port_is_valid`]: otherwise `http::Uri` would quietly mean the default
/// port), and an optional path. The error names the URL and what to mend.
pub fn origin_base(base: &str) -> Result<OriginBase, String> {
    let uri: http::Uri = base.parse().map_err(|e| format!("origin `{base}` is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("origin `{base}` needs a scheme (http:// or https://)"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!("origin `{base}`: give an http:// or https:// URL"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("origin `{base}` has no host"))?;
    if authority.as_str().contains('@') {
        // tern sends no credentials to origins, and a password in a URL ends up in logs.
        return Err("the origin URL carries user:password@, which tern does not send: leave it out".into());
    }
    if !port_is_valid(authority.as_str()) || authority.as_str().ends_with(':') {
        return Err(format!(
            "origin `{base}` has a port that is not a number from 0 to 65535"
        ));
    }
    if !escapes_are_valid(uri.path()) {
        return Err(format!(
            "origin `{base}` has a % not followed by two hexadecimal digits in its path (write a literal % as %25)"
        ));
    }
    Ok(OriginBase {
        scheme,
        authority,
        path: uri.path().trim_end_matches('/').to_string(),
    })
}

/// `host` (a `Host` field value: a name or address, maybe a port) without the trailing dot of a fully
/// qualified name (`www.example.com.:8080` is `www.example.com:8080`, RFC 1034 section 3.1): what the edge
/// keys on and forwards, so the origin sees one spelling of its own name, and how the sync service matches a
/// change's host to its site's.
pub fn without_trailing_dot(host: &str) -> Cow<'_, str> {
    let (name, port) = match host.rfind(':') {
        // A port after the name (an IPv6 literal ends with `]` before its port).
        Some(at) if !host[at..].contains(']') && !host[..at].contains(':') => host.split_at(at),
        _ => (host, ""),
    };
    let trimmed = name.trim_end_matches('.');
    if trimmed.len() < name.len() && !trimmed.is_empty() {
        Cow::Owned(format!("{trimmed}{port}"))
    } else {
        Cow::Borrowed(host)
    }
}

/// The normal form of a request target (`/path?query`, or any part of a URI): borrowed when it already is.
/// Malformed percent-encodings (`%4`, `%zz`) are kept as they are.
pub fn normalize(target: &str) -> Cow<'_, str> {
    let encoded = normalize_encodings(target);
    let (path, query) = match encoded.find('?') {
        Some(at) => encoded.split_at(at),
        None => (&encoded[..], ""),
    };
    match clean_path(path) {
        Some(clean) => Cow::Owned(clean + query),
        None => encoded,
    }
}

/// Removes dot segments and empty segments from an absolute path; `None` when there is nothing to remove
/// (or the path is not absolute).
fn clean_path(path: &str) -> Option<String> {
    if !path.starts_with('/') || !(path.contains("//") || path.contains("/.")) {
        return None;
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (index, segment) in segments.iter().enumerate() {
        let last = index + 1 == segments.len();
        match *segment {
            "." | "" => trailing_slash = last,
            ".." => {
                kept.pop();
                trailing_slash = last;
            }
            name => {
                kept.push(name);
                trailing_slash = false;
            }
        }
    }
    let mut clean = String::with_capacity(path.len());
    clean.push('/');
    clean.push_str(&kept.join("/"));
    if trailing_slash && !kept.is_empty() {
        clean.push('/');
    }
    if clean == path { None } else { Some(clean) }
}

/// Upper-case percent-encodings, unreserved characters decoded.
fn normalize_encodings(target: &str) -> Cow<'_, str> {
    let bytes = target.as_bytes();
    if !needs_work(bytes) {
        return Cow::Borrowed(target);
    }
    let mut out = String::with_capacity(target.len());
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if byte == b'%'
            && let (Some(high), Some(low)) = (hex(bytes.get(at + 1)), hex(bytes.get(at + 2)))
        {
            let decoded = high << 4 | low;
            // A decoded hex digit right after a malformed `%` (or `%` and one hex digit) would make a
            // valid encoding the next pass reads differently (`%a%30` -> `%a0`): it stays encoded, so
            // the normal form is the normal form of itself.
            if is_unreserved(decoded) && !(decoded.is_ascii_hexdigit() && ends_in_open_escape(&out)) {
                out.push(decoded as char);
            } else {
                out.push('%');
                out.push(HEX_UPPER[usize::from(high)] as char);
                out.push(HEX_UPPER[usize::from(low)] as char);
            }
            at += 3;
            continue;
        }
        // Copy the run up to the next '%' in one piece (it is valid UTF-8: `target` is a str and '%' is
        // ASCII, so the run ends on a character boundary).
        let run_end = bytes[at + 1..]
            .iter()
            .position(|b| *b == b'%')
            .map_or(bytes.len(), |offset| at + 1 + offset);
        out.push_str(&target[at..run_end]);
        at = run_end;
    }
    Cow::Owned(out)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Whether `out` ends in a `%` that begins no complete encoding: a `%` last, or a `%` and one hex digit.
fn ends_in_open_escape(out: &str) -> bool {
    let bytes = out.as_bytes();
    match bytes {
        [.., b'%'] => true,
        [.., b'%', digit] => digit.is_ascii_hexdigit(),
        _ => false,
    }
}

fn hex(byte: Option<&u8>) -> Option<u8> {
    let byte = *byte?;
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Whether some percent-encoding is in lower case or encodes an unreserved character.
fn needs_work(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(at, byte)| {
        *byte == b'%'
            && match (hex(bytes.get(at + 1)), hex(bytes.get(at + 2))) {
                (Some(high), Some(low)) => {
                    is_unreserved(high << 4 | low)
                        || bytes[at + 1].is_ascii_lowercase()
                        || bytes[at + 2].is_ascii_lowercase()
                }
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_request_needs_one_host_unless_it_is_http_1_0() {
        use http::{HeaderMap, HeaderValue, Uri, Version, header::HOST};
        let origin_form: Uri = "/page".parse().expect("a URI");
        let absolute: Uri = "http://www.example.com/page".parse().expect("a URI");
        let mut one = HeaderMap::new();
        one.insert(HOST, HeaderValue::from_static("www.example.com"));
        let mut two = one.clone();
        two.append(HOST, HeaderValue::from_static("evil.example"));
        let mut blank = HeaderMap::new();
        blank.insert(HOST, HeaderValue::from_static(" "));
        let none = HeaderMap::new();
        assert_eq!(host_field_problem(Version::HTTP_11, &origin_form, &one), None);
        assert_eq!(host_field_problem(Version::HTTP_11, &absolute, &none), None);
        assert_eq!(host_field_problem(Version::HTTP_2, &absolute, &none), None);
        assert_eq!(host_field_problem(Version::HTTP_10, &origin_form, &none), None);
        assert_eq!(
            host_field_problem(Version::HTTP_11, &origin_form, &two),
            Some("request has more than one Host field")
        );
        assert_eq!(
            host_field_problem(Version::HTTP_10, &absolute, &two),
            Some("request has more than one Host field")
        );
        for headers in [&none, &blank] {
            assert_eq!(
                host_field_problem(Version::HTTP_11, &origin_form, headers),
                Some("request has no Host")
            );
        }
    }

    #[test]
    fn equivalent_spellings_meet() {
        assert_eq!(normalize("/%7Ex.html"), "/~x.html");
        assert_eq!(normalize("/%7ex.html"), "/~x.html");
        assert_eq!(normalize("/a%2fb"), "/a%2Fb");
        assert_eq!(normalize("/a%2Fb"), "/a%2Fb");
        assert_eq!(normalize("/%41%62c?q=%7e%20"), "/Abc?q=~%20");
        assert_eq!(normalize("/caf%c3%a9"), "/caf%C3%A9");
    }

    #[test]
    fn ports_over_16_bits_and_stray_percent_signs_are_told() {
        for good in ["h", "h:", "h:0", "h:65535", "[::1]", "[::1]:8080", "u@h:80"] {
            assert!(port_is_valid(good), "{good}");
        }
        for bad in ["h:65536", "h:99999", "[::1]:70000", "h:8o", "h:-1"] {
            assert!(!port_is_valid(bad), "{bad}");
        }
        for good in ["/", "/a%2Fb", "/%e2%82%AC?q=%20", "/100%25"] {
            assert!(escapes_are_valid(good), "{good}");
        }
        for bad in ["/%zz", "/100%", "/a?b=%2", "/%%41", "/%g0"] {
            assert!(!escapes_are_valid(bad), "{bad}");
        }
    }

    #[test]
    fn an_origin_url_is_taken_apart_or_refused_naming_why() {
        let base = origin_base("https://origin.example:8443/shop/").expect("an origin");
        assert_eq!(base.scheme, http::uri::Scheme::HTTPS);
        assert_eq!(base.authority.as_str(), "origin.example:8443");
        assert_eq!(base.path, "/shop");
        assert_eq!(origin_base("http://[::1]").expect("IPv6").path, "");
        let error = origin_base("http://user:secret@origin.example").expect_err("userinfo");
        assert!(error.contains("user:password@") && !error.contains("secret"), "{error}");
        for (base, told) in [
            ("origin.example", "needs a scheme"),
            ("ftp://origin.example", "http:// or https://"),
            ("http://origin.example:99999", "port"),
            ("http://origin.example:8o", "port"),
            ("http://origin.example:/", "port"),
            ("http://origin.example/a%zz", "%"),
        ] {
            let error = origin_base(base).expect_err(base);
            assert!(error.contains(base) && error.contains(told), "{base}: {error}");
        }
    }

    #[test]
    fn dot_segments_and_empty_segments_go() {
        assert_eq!(normalize("/./index.html"), "/index.html");
        assert_eq!(normalize("//index.html"), "/index.html");
        assert_eq!(normalize("/sub/./a.txt?x=/./y"), "/sub/a.txt?x=/./y");
        assert_eq!(normalize("/x/../store/c"), "/store/c");
        assert_eq!(
            normalize("/%2e%2e/etc/passwd"),
            "/etc/passwd",
            "decoded dots are dot segments"
        );
        assert_eq!(normalize("/../../a"), "/a");
        assert_eq!(normalize("/a/b/.."), "/a/");
        assert_eq!(normalize("/a/."), "/a/");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("/a//"), "/a/");
        assert!(matches!(normalize("/.well-known/acme"), Cow::Borrowed(_)));
        assert!(matches!(normalize("/a/b/"), Cow::Borrowed(_)));
    }

    #[test]
    fn reserved_and_malformed_stay() {
        assert_eq!(normalize("/a+b"), "/a+b");
        assert_eq!(normalize("/a%2Bb"), "/a%2Bb");
        assert_eq!(normalize("/100%"), "/100%");
        assert_eq!(normalize("/%zz%4"), "/%zz%4");
        // A decoded hex digit after a malformed `%` would complete an encoding: it stays encoded.
        assert_eq!(normalize("/%a%30"), "/%a%30");
        assert_eq!(normalize("/%%41%42"), "/%%41B");
        assert_eq!(normalize("/%%41%67"), "/%%41g");
        assert!(matches!(normalize("/plain/path?x=1"), Cow::Borrowed(_)));
    }

    proptest! {
        #[test]
        fn normal_form_is_stable(target in "/[/a-zA-Z0-9%~._+?-]{0,30}") {
            let once = normalize(&target).into_owned();
            prop_assert_eq!(normalize(&once).into_owned(), once.clone());
        }

        #[test]
        fn never_panics_on_any_text(target in "\\PC{0,40}") {
            let _ = normalize(&target);
        }
    }
}
