//! Hop-by-hop fields (RFC 9110 section 7.6.1) and the proxy fields an intermediary adds (`Via`,
//! `X-Forwarded-For`, `X-Forwarded-Proto`).

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Fields that apply to one connection only and must not be forwarded or stored.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop fields, including those named in `Connection`, and `Transfer-Encoding` (the
/// framing is the receiving connection's business).
pub fn strip(headers: &mut HeaderMap) {
    // Names, not strings: removing by a `&str` parses it again on every call (a miss strips twice).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Appends this hop to `Via` (RFC 9110 section 7.6.3), with the protocol version it received.
pub fn append_via(headers: &mut HeaderMap, version: http::Version, pseudonym: &str) {
    if let Some(value) = via_value(version, pseudonym) {
        headers.append(header::VIA, value);
    }
}

fn via_value(version: http::Version, pseudonym: &str) -> Option<HeaderValue> {
    let protocol = match version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    };
    HeaderValue::try_from(format!("{protocol} {pseudonym}")).ok()
}

/// One hop's `Via` values, made once for every protocol version instead of formatted per response (what
/// [`append_via`] appends).
#[derive(Debug, Clone)]
pub struct Via {
    /// For HTTP/1.0, 1.1, 2 and 3, in that order.
    values: [Option<HeaderValue>; 4],
}

impl Via {
    /// The values for `pseudonym`.
    pub fn new(pseudonym: &str) -> Self {
        let versions = [
            http::Version::HTTP_10,
            http::Version::HTTP_11,
            http::Version::HTTP_2,
            http::Version::HTTP_3,
        ];
        Via {
            values: versions.map(|version| via_value(version, pseudonym)),
        }
    }

    /// Appends this hop to `Via`, with the protocol version it received.
    pub fn append(&self, headers: &mut HeaderMap, version: http::Version) {
        let index = match version {
            http::Version::HTTP_10 => 0,
            http::Version::HTTP_2 => 2,
            http::Version::HTTP_3 => 3,
            _ => 1,
        };
        if let Some(value) = &self.values[index] {
            headers.append(header::VIA, value.clone());
        }
    }
}

/// `X-Forwarded-Proto`: the scheme the client used to reach the first proxy (a de facto standard; RFC 7239
/// gives it as `Forwarded: proto=`).
pub const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether `name` is a field by which a proxy in front of the origin tells it about the client or its
/// request (its scheme, host, port, address, or a path to serve instead): `Forwarded` (RFC 7239), the
/// `X-Forwarded-*` conventions, `X-Original-URL`, `X-Rewrite-URL`, `X-Host`, `X-Original-Host`,
/// `Front-End-Https`, `X-Url-Scheme`, and the client-address fields `X-Real-IP`, `True-Client-IP`,
/// `X-Client-IP` and `X-Cluster-Client-IP`. An underscore counts as a hyphen: CGI-style origins (PHP,
/// WSGI) read `X_Forwarded_Host` as `X-Forwarded-Host`. `X-Forwarded-For` itself is not one of them: the
/// edge appends to it, and an origin never takes content from it.
fn is_forwarding_field(name: &HeaderName) -> bool {
    const PREFIX: &[u8] = b"x-forwarded-";
    const NAMES: [&[u8]; 11] = [
        b"forwarded",
        b"x-original-url",
        b"x-rewrite-url",
        b"x-host",
        b"x-original-host",
        b"front-end-https",
        b"x-url-scheme",
        b"x-real-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
    ];
    // Names are lowercase already; `_` and `-` compare equal.
    let same = |a: u8, b: u8| a == b || (a == b'_' && b == b'-');
    let equal =
        |name: &[u8], wanted: &[u8]| name.len() == wanted.len() && name.iter().zip(wanted).all(|(&a, &b)| same(a, b));
    let name = name.as_str().as_bytes();
    if name.len() > PREFIX.len() && name.iter().zip(PREFIX).all(|(&a, &b)| same(a, b)) {
        // `X-Forwarded-For` as the edge writes it is kept (appended to); `X_Forwarded_For` is not ours.
        return name != b"x-forwarded-for";
    }
    NAMES.iter().any(|wanted| equal(name, wanted))
}

/// Makes the forwarding fields of a request received from a client the edge's own: any the client sent is
/// removed (they are unkeyed input: an origin that trusts them would answer with the client's scheme or
/// host, and the cache would give that answer to everyone), and `X-Forwarded-Proto` is set to `scheme`,
/// the scheme of the listener the request came in on (`"http"` or `"https"`), so that an origin that
/// redirects plain HTTP to HTTPS sees HTTPS clients as such. An origin whose answer depends on the scheme
/// says `Vary: X-Forwarded-Proto`, which the cache keys on like any other `Vary`.
pub fn own_forwarding(headers: &mut HeaderMap, scheme: &'static str) {
    // One pass over the names first: most requests carry none of them, and removing by name is a lookup each.
    if headers.keys().any(is_forwarding_field) {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|name| is_forwarding_field(name))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
    headers.insert(FORWARDED_PROTO, HeaderValue::from_static(scheme));
}

/// Appends the client address to `X-Forwarded-For`, keeping what earlier proxies wrote.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let name = HeaderName::from_static("x-forwarded-for");
    let joined = match headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {client}"),
        _ => client.to_string(),
    };
    if let Ok(value) = HeaderValue::try_from(joined) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod via_tests {
    use super::*;

    #[test]
    fn the_made_values_are_those_append_via_writes() {
        let via = Via::new("edge-1");
        for version in [
            http::Version::HTTP_09,
            http::Version::HTTP_10,
            http::Version::HTTP_11,
            http::Version::HTTP_2,
            http::Version::HTTP_3,
        ] {
            let mut made = HeaderMap::new();
            via.append(&mut made, version);
            let mut formatted = HeaderMap::new();
            append_via(&mut formatted, version, "edge-1");
            assert_eq!(made, formatted, "{version:?}");
        }
        let mut headers = HeaderMap::new();
        via.append(&mut headers, http::Version::HTTP_2);
        assert_eq!(headers[header::VIA], "2 edge-1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_fields() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn a_clients_forwarding_fields_give_way_to_the_listeners_scheme() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        headers.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        headers.insert("x-forwarded-port", HeaderValue::from_static("80"));
        headers.insert(
            "forwarded",
            HeaderValue::from_static("for=1.2.3.4;proto=http;host=evil.example"),
        );
        headers.insert("x-original-url", HeaderValue::from_static("/admin"));
        headers.insert("x_forwarded_host", HeaderValue::from_static("evil.example"));
        headers.insert("x_forwarded_for", HeaderValue::from_static("1.2.3.4"));
        headers.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        own_forwarding(&mut headers, "https");
        assert_eq!(headers["x-forwarded-proto"], "https");
        for gone in [
            "x-forwarded-host",
            "x-forwarded-port",
            "forwarded",
            "x-original-url",
            "x_forwarded_host",
            "x_forwarded_for",
            "x-real-ip",
        ] {
            assert!(!headers.contains_key(gone), "{gone} kept");
        }
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1", "appended to later, not dropped");
        assert_eq!(headers["accept"], "*/*");
        assert_eq!(headers.len(), 3);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        append_forwarded_for(&mut headers, "127.0.0.1".parse().expect("ip"));
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    }
}
