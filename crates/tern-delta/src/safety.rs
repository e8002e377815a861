//! Which responses the edge may send to a browser as a `dcz` delta (RFC 9842), and why that is safe against
//! compression side channels (CRIME, BREACH; RFC 9842 section 9.2).
//!
//! Those attacks need a secret and attacker-chosen input compressed together, and the compressed size
//! visible to the attacker, over many requests the attacker triggers from the victim's browser. The rule:
//!
//! 1. **Secrets never in a base.** A base is derived only from responses to requests without `Cookie`,
//!    `Authorization` or another credential field (`X-Api-Key` and the like), and without a query (which
//!    may carry a capability), never from a response that sets a cookie or is `no-store`, and not from a
//!    `private` one unless the class says so ([`crate::candidate::check`]). A base is public: anyone can
//!    fetch it at its well-known path, so what a size reveals about it is nothing.
//! 2. **Only credential-free exchanges are delta-encoded for browsers.** A request with `Cookie`,
//!    `Authorization` or another credential field, and a response that sets a cookie, is `private` or
//!    `no-store`, or varies on `Cookie`,
//!    `Authorization` or `*`, is sent plain. What remains is content any anonymous client gets for that URL:
//!    there is no secret of the victim's in it for a size to reveal.
//! 3. **Responses that reflect request input** (search pages echoing the query) are therefore safe too:
//!    the attacker controls the reflected part but the response holds no per-user secret to guess against,
//!    and the base holds none either (1). Classes of such pages need no special flag; a page that mixes
//!    reflected input with a secret is credentialed or sets a cookie, and is excluded by (2).
//! 4. **Cross-site requests are not delta-encoded** unless the response is readable by the requesting
//!    context anyway: the `Sec-Fetch-Site`/`Sec-Fetch-Mode`/CORS check of RFC 9842 section 9.3.3.
//!
//! Between `tern delta` and the edge, personalised pages do travel as deltas: over the operator's own link
//! (TLS), against a base without secrets, so their sizes say what the origin's own gzip would; the edge
//! serves such pages to the browser whole, so no delta size of a personalised page reaches a browser.

use http::{HeaderMap, StatusCode, header};
use tern_http_cache::Directives;

use crate::candidate::is_content_coded;
use crate::class::Class;
use crate::fields::{AVAILABLE_DICTIONARY, DCZ};

/// Why a response goes to a browser without `dcz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoBrowserDelta {
    /// The class does not allow browser deltas.
    ClassDisabled,
    /// The request does not offer `dcz` in `Accept-Encoding` or names no dictionary.
    NotOffered,
    /// The request carries `Cookie`, `Authorization` or another credential field
    /// ([`crate::candidate::DEFAULT_CREDENTIAL_FIELDS`], the class's own).
    Credentials,
    /// A cross-site request whose response the requesting context could not read (RFC 9842 section 9.3.3).
    CrossSite,
    /// A status other than 200.
    Status,
    /// The response sets a cookie.
    SetsCookie,
    /// `Cache-Control: private` or `no-store`.
    NotShareable,
    /// `Vary` names `Cookie`, `Authorization` or `*`: the response depends on who asks.
    VariesByUser,
    /// The response is already content-coded.
    AlreadyEncoded,
}

/// Whether `response` to `request` (of `class`) may go to the browser as a `dcz` delta; see the module
/// header for the rule and why it is safe. The encoder then still needs the named dictionary to be the
/// class's base or a page of the class ([`shareable_page`]).
pub fn browser_delta(
    class: &Class,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
) -> Result<(), NoBrowserDelta> {
    if !class.policy.browser_deltas {
        return Err(NoBrowserDelta::ClassDisabled);
    }
    if !accepts_dcz(request) || !request.contains_key(AVAILABLE_DICTIONARY) {
        return Err(NoBrowserDelta::NotOffered);
    }
    if carries_credentials(class, request) {
        return Err(NoBrowserDelta::Credentials);
    }
    if !same_origin_or_readable(request, response) {
        return Err(NoBrowserDelta::CrossSite);
    }
    shareable_page(class, request, status, response)
}

/// Whether `response` to `request` (of `class`) is a page any anonymous client gets for its URL: a
/// credential-free request, a 200 that sets no cookie, is neither `private` nor `no-store`, does not vary
/// on credentials and is not content-coded. Such a page may itself serve as a browser's dictionary for
/// the next version of its URL (`Use-As-Dictionary`, RFC 9842 section 2.1): it holds no secret, as a base
/// holds none (rule 1 of the module header).
pub fn shareable_page(
    class: &Class,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
) -> Result<(), NoBrowserDelta> {
    if !class.policy.browser_deltas {
        return Err(NoBrowserDelta::ClassDisabled);
    }
    if carries_credentials(class, request) {
        return Err(NoBrowserDelta::Credentials);
    }
    if status != StatusCode::OK {
        return Err(NoBrowserDelta::Status);
    }
    if response.contains_key(header::SET_COOKIE) {
        return Err(NoBrowserDelta::SetsCookie);
    }
    let directives = Directives::parse(response.get_all(header::CACHE_CONTROL));
    if directives.private || directives.no_store {
        return Err(NoBrowserDelta::NotShareable);
    }
    if varies_by_user(response) {
        return Err(NoBrowserDelta::VariesByUser);
    }
    if is_content_coded(response) {
        return Err(NoBrowserDelta::AlreadyEncoded);
    }
    Ok(())
}

/// Whether `request` carries `Cookie`, `Authorization` or another credential field of the class
/// ([`crate::candidate::carries_credential_field`]).
fn carries_credentials(class: &Class, request: &HeaderMap) -> bool {
    request.contains_key(header::COOKIE)
        || request.contains_key(header::AUTHORIZATION)
        || request.contains_key(header::PROXY_AUTHORIZATION)
        || crate::candidate::carries_credential_field(request, &class.policy)
}

/// Whether `Accept-Encoding` lists `dcz` with a non-zero weight (`*` does not count: RFC 9842 section 6.1
/// has clients list it only when they hold a matching dictionary).
pub fn accepts_dcz(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','))
        .any(|member| {
            let mut parts = member.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            if !coding.eq_ignore_ascii_case(DCZ) {
                return false;
            }
            let weight = parts
                .filter_map(|param| param.trim().split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map(|(_, value)| value.trim().parse::<f32>().unwrap_or(0.0));
            weight.is_none_or(|q| q > 0.0)
        })
}

/// RFC 9842 section 9.3.3's algorithm: false for cross-origin requests whose response is not readable.
fn same_origin_or_readable(request: &HeaderMap, response: &HeaderMap) -> bool {
    fn text<'m>(map: &'m HeaderMap, name: &str) -> Option<&'m str> {
        map.get(name).and_then(|value| value.to_str().ok()).map(str::trim)
    }
    let Some(site) = text(request, "sec-fetch-site") else {
        return true;
    };
    if site.eq_ignore_ascii_case("same-origin") {
        return true;
    }
    let Some(mode) = text(request, "sec-fetch-mode") else {
        return true;
    };
    if mode.eq_ignore_ascii_case("navigate") || mode.eq_ignore_ascii_case("same-origin") {
        return true;
    }
    if !mode.eq_ignore_ascii_case("cors") {
        return false;
    }
    let (Some(allowed), Some(origin)) = (text(response, "access-control-allow-origin"), text(request, "origin")) else {
        return false;
    };
    allowed == "*" || allowed == origin
}

fn varies_by_user(response: &HeaderMap) -> bool {
    response
        .get_all(header::VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','))
        .map(str::trim)
        .any(|name| name == "*" || name.eq_ignore_ascii_case("cookie") || name.eq_ignore_ascii_case("authorization"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::class::ClassPolicy;
    use http::HeaderValue;
    use http::header::HeaderName;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    const OFFER: [(&str, &str); 2] = [
        ("accept-encoding", "gzip, br, zstd, dcb, dcz"),
        ("available-dictionary", ":pZGm1Av0IEBKARczz7exkNYsZb8LzaMrV7J32a2fFG4=:"),
    ];

    fn decide(extra_request: &[(&str, &str)], status: u16, response: &[(&str, &str)]) -> Result<(), NoBrowserDelta> {
        let class = Class::parse("news=/news/*").expect("valid");
        let mut request = OFFER.to_vec();
        request.extend_from_slice(extra_request);
        browser_delta(
            &class,
            &map(&request),
            StatusCode::from_u16(status).expect("status"),
            &map(response),
        )
    }

    #[test]
    fn an_anonymous_shareable_page_may_be_a_delta() {
        assert_eq!(decide(&[], 200, &[("cache-control", "public, max-age=10")]), Ok(()));
        assert_eq!(decide(&[("sec-fetch-site", "same-origin")], 200, &[]), Ok(()));
        assert_eq!(
            decide(
                &[("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "navigate")],
                200,
                &[]
            ),
            Ok(())
        );
        assert_eq!(
            decide(&[], 200, &[("vary", "Accept-Encoding, Available-Dictionary")]),
            Ok(())
        );
    }

    #[test]
    fn every_refusal() {
        assert_eq!(
            decide(&[("cookie", "sid=1")], 200, &[]),
            Err(NoBrowserDelta::Credentials)
        );
        assert_eq!(
            decide(&[("authorization", "Basic eA==")], 200, &[]),
            Err(NoBrowserDelta::Credentials)
        );
        assert_eq!(decide(&[], 404, &[]), Err(NoBrowserDelta::Status));
        assert_eq!(
            decide(&[], 200, &[("set-cookie", "sid=2")]),
            Err(NoBrowserDelta::SetsCookie)
        );
        assert_eq!(
            decide(&[], 200, &[("cache-control", "private")]),
            Err(NoBrowserDelta::NotShareable)
        );
        assert_eq!(
            decide(&[], 200, &[("cache-control", "no-store")]),
            Err(NoBrowserDelta::NotShareable)
        );
        assert_eq!(
            decide(&[], 200, &[("vary", "Cookie")]),
            Err(NoBrowserDelta::VariesByUser)
        );
        assert_eq!(decide(&[], 200, &[("vary", "*")]), Err(NoBrowserDelta::VariesByUser));
        assert_eq!(
            decide(&[], 200, &[("content-encoding", "br")]),
            Err(NoBrowserDelta::AlreadyEncoded)
        );
        let class = Class::parse("news=/news/*").expect("valid");
        let off = Class {
            policy: ClassPolicy {
                browser_deltas: false,
                ..ClassPolicy::default()
            },
            ..class.clone()
        };
        let offer = map(&OFFER);
        let none = HeaderMap::new();
        assert_eq!(
            browser_delta(&off, &offer, StatusCode::OK, &none),
            Err(NoBrowserDelta::ClassDisabled)
        );
        let no_dictionary = map(&[("accept-encoding", "dcz")]);
        assert_eq!(
            browser_delta(&class, &no_dictionary, StatusCode::OK, &none),
            Err(NoBrowserDelta::NotOffered)
        );
    }

    #[test]
    fn cross_site_requests_follow_rfc_9842() {
        let cross = [
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "cors"),
            ("origin", "https://a.example"),
        ];
        assert_eq!(decide(&cross, 200, &[]), Err(NoBrowserDelta::CrossSite));
        assert_eq!(decide(&cross, 200, &[("access-control-allow-origin", "*")]), Ok(()));
        assert_eq!(
            decide(&cross, 200, &[("access-control-allow-origin", "https://a.example")]),
            Ok(())
        );
        assert_eq!(
            decide(&cross, 200, &[("access-control-allow-origin", "https://b.example")]),
            Err(NoBrowserDelta::CrossSite)
        );
        let no_cors = [("sec-fetch-site", "cross-site"), ("sec-fetch-mode", "no-cors")];
        assert_eq!(decide(&no_cors, 200, &[]), Err(NoBrowserDelta::CrossSite));
        assert_eq!(decide(&[("sec-fetch-site", "cross-site")], 200, &[]), Ok(()));
    }

    #[test]
    fn accept_encoding_weights() {
        let accepts = |value: &str| accepts_dcz(&map(&[("accept-encoding", value)]));
        assert!(accepts("dcz"));
        assert!(accepts("gzip;q=1.0, DCZ;q=0.5"));
        assert!(!accepts("dcz;q=0"));
        assert!(!accepts("dcz;q=0.000"));
        assert!(!accepts("*"));
        assert!(!accepts("gzip, dcb"));
        assert!(!accepts_dcz(&HeaderMap::new()));
    }
}
