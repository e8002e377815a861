//! Which responses may feed a base. Seed 000 keeps personalised content out of what mirrors hold; here that
//! is a rule on every exchange before its body may enter a base: anything a request's credentials or a
//! response's own headers mark as one user's is refused, with a typed reason (counted by the encoder).
//!
//! A base is announced to every visitor of its class (`Link`) and cached for a year, so what may enter one
//! is narrower than what a cache may store under its own URL: besides `Cookie` and `Authorization`, a
//! request carrying any other credential field ([`DEFAULT_CREDENTIAL_FIELDS`], and those a class adds) is
//! refused, and so is a request whose target has a query (reset and unsubscribe links, signed URLs and
//! search pages carry capabilities there, and the page may echo them) unless the class allows it.

use http::{HeaderMap, StatusCode, header};
use tern_http_cache::Directives;

use crate::class::ClassPolicy;

/// Why an exchange may not feed a base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotCandidate {
    /// The request carried `Cookie`: the page may hold that user's data.
    Cookie,
    /// The request carried `Authorization` (or `Proxy-Authorization`).
    Authorization,
    /// The request carried another credential field ([`ClassPolicy::credential_fields`]: `X-Api-Key`, ...).
    CredentialField,
    /// The request target has a query, and the class does not allow bases from such pages
    /// ([`ClassPolicy::base_from_query`]).
    Query,
    /// The response sets a cookie: it starts a session, and may carry its secrets (a CSRF token).
    SetsCookie,
    /// `Cache-Control: private` and the class does not allow it.
    Private,
    /// `Cache-Control: no-store`.
    NoStore,
    /// A status other than 200.
    Status,
    /// The body is content-coded (`gzip`, ...): a base holds identity bytes.
    Encoded,
    /// Larger than the class's base bound.
    TooLarge,
    /// An empty body.
    Empty,
}

impl NotCandidate {
    /// Every reason, in a fixed order (for counters).
    pub const ALL: [NotCandidate; 11] = [
        NotCandidate::Cookie,
        NotCandidate::Authorization,
        NotCandidate::CredentialField,
        NotCandidate::Query,
        NotCandidate::SetsCookie,
        NotCandidate::Private,
        NotCandidate::NoStore,
        NotCandidate::Status,
        NotCandidate::Encoded,
        NotCandidate::TooLarge,
        NotCandidate::Empty,
    ];

    /// A metrics label.
    pub const fn label(self) -> &'static str {
        match self {
            NotCandidate::Cookie => "cookie",
            NotCandidate::Authorization => "authorization",
            NotCandidate::CredentialField => "credential_field",
            NotCandidate::Query => "query",
            NotCandidate::SetsCookie => "set_cookie",
            NotCandidate::Private => "private",
            NotCandidate::NoStore => "no_store",
            NotCandidate::Status => "status",
            NotCandidate::Encoded => "content_encoded",
            NotCandidate::TooLarge => "too_large",
            NotCandidate::Empty => "empty",
        }
    }

    /// Position in [`NotCandidate::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// One request and its response as the origin-side encoder saw them; `body` is the identity-coded page.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The request target: path and query (`/news/search?q=x`).
    pub target: &'a str,
    /// Request header fields.
    pub request: &'a HeaderMap,
    /// Response status.
    pub status: StatusCode,
    /// Response header fields.
    pub response: &'a HeaderMap,
    /// Response body.
    pub body: &'a [u8],
}

/// Whether the exchange may feed a base of a class with `policy`; the first reason it may not otherwise.
pub fn check(exchange: &Exchange<'_>, policy: &ClassPolicy) -> Result<(), NotCandidate> {
    let request = exchange.request;
    let response = exchange.response;
    if request.contains_key(header::COOKIE) {
        return Err(NotCandidate::Cookie);
    }
    if request.contains_key(header::AUTHORIZATION) || request.contains_key(header::PROXY_AUTHORIZATION) {
        return Err(NotCandidate::Authorization);
    }
    if carries_credential_field(request, policy) {
        return Err(NotCandidate::CredentialField);
    }
    if exchange.target.contains('?') && !policy.base_from_query {
        return Err(NotCandidate::Query);
    }
    if response.contains_key(header::SET_COOKIE) {
        return Err(NotCandidate::SetsCookie);
    }
    let directives = Directives::parse(response.get_all(header::CACHE_CONTROL));
    if directives.no_store {
        return Err(NotCandidate::NoStore);
    }
    if directives.private && !policy.private_may_feed_base {
        return Err(NotCandidate::Private);
    }
    if exchange.status != StatusCode::OK {
        return Err(NotCandidate::Status);
    }
    if is_content_coded(response) {
        return Err(NotCandidate::Encoded);
    }
    if exchange.body.is_empty() {
        return Err(NotCandidate::Empty);
    }
    if exchange.body.len() > policy.max_base {
        return Err(NotCandidate::TooLarge);
    }
    Ok(())
}

/// Request fields that carry credentials besides `Cookie` and `Authorization`, in the spellings APIs and
/// frameworks use; a class adds its own ([`ClassPolicy::credential_fields`]).
pub const DEFAULT_CREDENTIAL_FIELDS: [&str; 8] = [
    "x-api-key",
    "x-auth-token",
    "x-access-token",
    "x-session-id",
    "x-session-token",
    "x-csrf-token",
    "x-xsrf-token",
    "x-amz-security-token",
];

/// Whether `request` carries a credential field of [`DEFAULT_CREDENTIAL_FIELDS`] or of the class's own
/// list ([`ClassPolicy::credential_fields`]).
pub fn carries_credential_field(request: &HeaderMap, policy: &ClassPolicy) -> bool {
    DEFAULT_CREDENTIAL_FIELDS.iter().any(|name| request.contains_key(*name))
        || policy.credential_fields.iter().any(|name| request.contains_key(name))
}

/// Whether `Content-Encoding` names any coding other than `identity`.
pub(crate) fn is_content_coded(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_ENCODING).iter().any(|value| {
        value.to_str().map_or(true, |text| {
            text.split(',')
                .map(str::trim)
                .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn exchange_check(
        request: &[(&str, &str)],
        status: u16,
        response: &[(&str, &str)],
        policy: &ClassPolicy,
    ) -> Result<(), NotCandidate> {
        let to_map = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(
                    http::header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    HeaderValue::from_str(value).expect("value"),
                );
            }
            map
        };
        let (request, response) = (to_map(request), to_map(response));
        check(
            &Exchange {
                target: "/news/home",
                request: &request,
                status: StatusCode::from_u16(status).expect("status"),
                response: &response,
                body: b"<html>page</html>",
            },
            policy,
        )
    }

    #[test]
    fn every_reason() {
        let policy = ClassPolicy::default();
        let check = |request: &[(&str, &str)], status, response: &[(&str, &str)]| {
            exchange_check(request, status, response, &policy)
        };
        assert_eq!(check(&[], 200, &[("cache-control", "public, max-age=60")]), Ok(()));
        assert_eq!(check(&[("cookie", "sid=1")], 200, &[]), Err(NotCandidate::Cookie));
        assert_eq!(
            check(&[("authorization", "Bearer x")], 200, &[]),
            Err(NotCandidate::Authorization)
        );
        assert_eq!(
            check(&[("proxy-authorization", "Basic x")], 200, &[]),
            Err(NotCandidate::Authorization)
        );
        assert_eq!(
            check(&[], 200, &[("set-cookie", "sid=2")]),
            Err(NotCandidate::SetsCookie)
        );
        assert_eq!(
            check(&[], 200, &[("cache-control", "private")]),
            Err(NotCandidate::Private)
        );
        assert_eq!(
            check(&[], 200, &[("cache-control", "max-age=0, no-store")]),
            Err(NotCandidate::NoStore)
        );
        assert_eq!(check(&[], 404, &[]), Err(NotCandidate::Status));
        assert_eq!(
            check(&[], 200, &[("content-encoding", "gzip")]),
            Err(NotCandidate::Encoded)
        );
        assert_eq!(check(&[], 200, &[("content-encoding", "identity")]), Ok(()));
        // Qualified private only withholds a field; the body is shareable.
        assert_eq!(check(&[], 200, &[("cache-control", "private=\"x-user\"")]), Ok(()));
    }

    #[test]
    fn other_credential_fields_and_queries_keep_a_page_out_of_bases() {
        let policy = ClassPolicy::default();
        for field in DEFAULT_CREDENTIAL_FIELDS {
            assert_eq!(
                exchange_check(&[(field, "alice-live-key")], 200, &[], &policy),
                Err(NotCandidate::CredentialField),
                "{field}"
            );
        }
        assert_eq!(
            exchange_check(&[("x-tenant-secret", "s")], 200, &[], &policy),
            Ok(()),
            "not a credential unless the class says so"
        );
        let own = ClassPolicy {
            credential_fields: vec![http::header::HeaderName::from_static("x-tenant-secret")],
            ..ClassPolicy::default()
        };
        assert_eq!(
            exchange_check(&[("x-tenant-secret", "s")], 200, &[], &own),
            Err(NotCandidate::CredentialField)
        );
        let empty = HeaderMap::new();
        let reset = Exchange {
            target: "/news/search?reset_token=VICTIM-TOKEN",
            request: &empty,
            status: StatusCode::OK,
            response: &empty,
            body: b"<html>results for reset_token=VICTIM-TOKEN</html>",
        };
        assert_eq!(check(&reset, &policy), Err(NotCandidate::Query));
        let allowed = ClassPolicy {
            base_from_query: true,
            ..ClassPolicy::default()
        };
        assert_eq!(check(&reset, &allowed), Ok(()));
    }

    #[test]
    fn private_only_when_the_class_says_so_and_never_with_credentials() {
        let policy = ClassPolicy {
            private_may_feed_base: true,
            ..ClassPolicy::default()
        };
        assert_eq!(
            exchange_check(&[], 200, &[("cache-control", "private")], &policy),
            Ok(())
        );
        assert_eq!(
            exchange_check(&[("cookie", "a=b")], 200, &[("cache-control", "private")], &policy),
            Err(NotCandidate::Cookie)
        );
        assert_eq!(
            exchange_check(&[], 200, &[("cache-control", "private, no-store")], &policy),
            Err(NotCandidate::NoStore)
        );
    }

    #[test]
    fn size_bounds() {
        let tiny = ClassPolicy {
            max_base: 4,
            ..ClassPolicy::default()
        };
        assert_eq!(exchange_check(&[], 200, &[], &tiny), Err(NotCandidate::TooLarge));
        let empty = HeaderMap::new();
        let exchange = Exchange {
            target: "/news/home",
            request: &empty,
            status: StatusCode::OK,
            response: &empty,
            body: b"",
        };
        assert_eq!(check(&exchange, &ClassPolicy::default()), Err(NotCandidate::Empty));
    }

    #[test]
    fn labels_and_indexes_line_up() {
        for (n, reason) in NotCandidate::ALL.iter().enumerate() {
            assert_eq!(reason.index(), n);
            assert!(!reason.label().is_empty());
        }
    }
}
