//! Purging: who may purge, and what a purge request names.
//!
//! `PURGE <url>` on the main listener is allowed when the request carries the purge key's token
//! (`Authorization: Bearer <token>` or `X-Purge-Key: <token>`) or comes from an allowed network; with neither
//! configured every `PURGE` is refused. `Tern-Soft-Purge: 1` makes it soft; `Tern-Purge-Scope: any-query`
//! extends it to the URL's path with any query (how the sync service purges a changed file). `POST /purge`
//! on the admin listener takes `{"urls": [...], "urls_any_query": [...], "prefixes": [...], "keys": [...],
//! "soft": false}` and needs the token when a key is configured.

use std::net::IpAddr;

use http::{HeaderMap, header};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tern_http_cache::{KeyConfig, PurgeMode, primary_key};
use tern_wire::SecretKey;
use tern_wire::sync::{PURGE_ANY_QUERY, PURGE_PREFIX, PURGE_SCOPE_HEADER};

/// Who may purge.
#[derive(Debug, Clone, Default)]
pub struct PurgeAuth {
    key: Option<SecretKey>,
    allow: Vec<IpNet>,
}

/// Why a purge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No key and no allow-list configured: purging is off.
    NotConfigured,
    /// The request carried no valid token and came from outside the allow-list.
    NotAuthorised,
}

impl Refusal {
    /// The message sent back.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::NotConfigured => {
                "purging is disabled on this edge: start it with --purge-key FILE or --purge-allow NETWORK"
            }
            Refusal::NotAuthorised => {
                "purge refused: send the purge key's token as `Authorization: Bearer <token>`, or purge from an allowed network"
            }
        }
    }
}

impl PurgeAuth {
    /// Authorisation by key and/or networks.
    pub fn new(key: Option<SecretKey>, allow: Vec<IpNet>) -> Self {
        PurgeAuth { key, allow }
    }

    /// Checks a `PURGE` on the main listener.
    pub fn check(&self, headers: &HeaderMap, client: IpAddr) -> Result<(), Refusal> {
        if self.key.is_none() && self.allow.is_empty() {
            return Err(Refusal::NotConfigured);
        }
        if self.token_valid(headers) || self.allow.iter().any(|net| net.contains(&client)) {
            return Ok(());
        }
        Err(Refusal::NotAuthorised)
    }

    /// Checks an admin purge: the token when a key is configured, otherwise the admin listener's own
    /// binding is the protection.
    pub fn check_admin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        match &self.key {
            None => Ok(()),
            Some(_) if self.token_valid(headers) => Ok(()),
            Some(_) => Err(Refusal::NotAuthorised),
        }
    }

    fn token_valid(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.key else {
            return false;
        };
        let bearer = headers.get(header::AUTHORIZATION).and_then(tern_admin::bearer_token);
        let explicit = headers.get("x-purge-key").and_then(|v| v.to_str().ok());
        bearer.or(explicit).is_some_and(|token| key.matches_token(token))
    }
}

/// Whether a `PURGE` asks for the URL with any query (`Tern-Purge-Scope: any-query`).
pub fn requested_any_query(headers: &HeaderMap) -> bool {
    requested_scope(headers, PURGE_ANY_QUERY)
}

/// Whether a `PURGE` asks for every URL starting with its URL (`Tern-Purge-Scope: prefix`).
pub fn requested_prefix(headers: &HeaderMap) -> bool {
    requested_scope(headers, PURGE_PREFIX)
}

fn requested_scope(headers: &HeaderMap, scope: &str) -> bool {
    headers
        .get(PURGE_SCOPE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(scope))
}

/// Whether a `PURGE` asks for a soft purge.
pub fn requested_mode(headers: &HeaderMap) -> PurgeMode {
    let soft = headers
        .get("tern-soft-purge")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
    if soft { PurgeMode::Soft } else { PurgeMode::Hard }
}

/// The body of `POST /purge`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PurgeRequest {
    /// Absolute URLs (`http://host/path`); every variant of each is purged.
    pub urls: Vec<String>,
    /// Absolute URLs purged with any query (`http://host/a` purges `/a`, `/a?v=1`, never `/ab`; a query
    /// given here is ignored): the URLs of changed files.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls_any_query: Vec<String>,
    /// URL prefixes (`http://host/static/`).
    pub prefixes: Vec<String>,
    /// Surrogate keys.
    pub keys: Vec<String>,
    /// Mark stale instead of deleting.
    pub soft: bool,
}

/// A purge with its URLs and prefixes turned into primary keys ([`PurgeRequest::resolve`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedPurge {
    /// Primary keys of the URLs (every variant of each is purged).
    pub urls: Vec<String>,
    /// Primary keys without a query, purged with any query.
    pub urls_any_query: Vec<String>,
    /// Primary-key prefixes (queries kept).
    pub prefixes: Vec<String>,
    /// Surrogate keys, as given.
    pub keys: Vec<String>,
    /// Hard or soft.
    pub mode: PurgeMode,
}

impl PurgeRequest {
    /// Parses a purge body (`POST /purge` on the admin listener, or a purge relayed by a community member
    /// on the peer listener). Errors say what the body must look like.
    pub fn parse(body: &[u8]) -> Result<PurgeRequest, String> {
        serde_json::from_slice(body).map_err(|error| {
            format!(
                "purge body must be JSON like {{\"urls\": [..], \"urls_any_query\": [..], \"prefixes\": [..], \"keys\": [..], \"soft\": false}}: {error}"
            )
        })
    }

    /// The primary keys this purge names, in the form the store keys objects by (RFC 3986 section 6.2.2
    /// normal form, see [`primary_key`]). Every URL and prefix is checked before any is used; an error
    /// names the first that is not an absolute http(s) URL.
    pub fn resolve(&self, key_config: &KeyConfig) -> Result<ResolvedPurge, String> {
        let mut resolved = ResolvedPurge {
            keys: self.keys.clone(),
            mode: if self.soft { PurgeMode::Soft } else { PurgeMode::Hard },
            ..ResolvedPurge::default()
        };
        for url in &self.urls {
            let key = normalize_url(url, key_config).map_err(|why| format!("`{url}` {why}"))?;
            resolved.urls.push(key);
        }
        // The query dropped in the key's own normalisation, so `/a` and `/%61` name one path.
        let without_query = KeyConfig { include_query: false };
        for url in &self.urls_any_query {
            let key = normalize_url(url, &without_query).map_err(|why| format!("`{url}` {why}"))?;
            resolved.urls_any_query.push(key);
        }
        for prefix in &self.prefixes {
            let key = normalize_url(prefix, &KeyConfig { include_query: true })
                .map_err(|why| format!("`{prefix}` (a prefix) {why}"))?;
            resolved.prefixes.push(key);
        }
        Ok(resolved)
    }
}

/// Turns `http://Host/path` into a primary key; else what keeps it from naming an object: not an absolute
/// http(s) URL, a port over 65535, or a `%` that is not a percent-encoding (RFC 3986 section 2.1).
fn normalize_url(url: &str, key_config: &KeyConfig) -> Result<String, &'static str> {
    const NOT_A_URL: &str = "is not an absolute http URL";
    let uri: http::Uri = url.parse().map_err(|_| NOT_A_URL)?;
    let scheme = uri.scheme_str().ok_or(NOT_A_URL)?;
    if scheme != "http" && scheme != "https" {
        return Err(NOT_A_URL);
    }
    let host = uri.authority().ok_or(NOT_A_URL)?.as_str();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    // Either names no object this edge could hold: refused, rather than answered "0 removed".
    if !tern_http::target::port_is_valid(host) {
        return Err("has a port that is not a number from 0 to 65535");
    }
    if !tern_http::target::escapes_are_valid(path) {
        return Err("has a % not followed by two hexadecimal digits (write a literal % as %25)");
    }
    Ok(primary_key(scheme, host, path, key_config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_naming_no_object_an_edge_could_hold_is_refused_with_the_reason() {
        let config = KeyConfig { include_query: true };
        for (url, why) in [
            ("/relative", "is not an absolute http URL"),
            ("ftp://h/x", "is not an absolute http URL"),
            ("http://h:99999/x", "port"),
            ("http://h/%zz", "%"),
            ("http://h/100%", "%"),
        ] {
            let purge = PurgeRequest {
                urls: vec![url.to_string()],
                ..PurgeRequest::default()
            };
            let error = purge.resolve(&config).expect_err(url);
            assert!(error.contains(url) && error.contains(why), "{url}: {error}");
        }
        let purge = PurgeRequest {
            urls_any_query: vec!["http://h:8080/%7ex%2f".into()],
            ..PurgeRequest::default()
        };
        let resolved = purge.resolve(&config).expect("a port and well-formed escapes");
        assert_eq!(resolved.urls_any_query.len(), 1);
    }
}
