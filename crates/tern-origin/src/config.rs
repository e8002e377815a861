//! Settings of `tern serve` (`[serve]` table of the config file).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Settings of the static origin.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Directory served.
    pub root: PathBuf,
    /// Address of the HTTP listener.
    pub listen: SocketAddr,
    /// Address of the admin listener; none disables it.
    pub admin: Option<SocketAddr>,
    /// `Cache-Control` sent with every file unless a rule says otherwise.
    pub cache_control: Option<String>,
    /// Per-path-prefix settings; the longest matching prefix wins.
    pub rules: Vec<CacheRule>,
    /// File served for a directory.
    pub index: String,
    /// Serve hidden files and directories (a path segment starting with `.`, such as `.git/` or
    /// `.htaccess`). Off by default: a published tree may be a checkout or carry server configuration
    /// that was never meant for readers; `.well-known/` (RFC 8615) is served either way.
    pub serve_hidden: bool,
    /// PEM certificate chain: with `tls_key`, the listener and the admin listener serve HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Directory of certificates chosen by SNI (`NAME.crt` with `NAME.key`, or `NAME/fullchain.pem` with
    /// `NAME/privkey.pem`), instead of `tls_cert` and `tls_key`.
    pub tls_dir: Option<PathBuf>,
}

/// Settings for the files under one path prefix.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    /// URL path prefix, e.g. `/static/`.
    pub prefix: String,
    /// `Cache-Control` for files under it.
    pub cache_control: Option<String>,
    /// `Surrogate-Key` for files under it (space-separated keys an edge can purge by).
    pub surrogate_key: Option<String>,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            root: PathBuf::from("."),
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            admin: None,
            cache_control: None,
            rules: Vec::new(),
            index: "index.html".into(),
            serve_hidden: false,
            tls_cert: None,
            tls_key: None,
            tls_dir: None,
        }
    }
}

impl OriginConfig {
    /// The rule with the longest prefix matching `path`.
    pub fn rule_for(&self, path: &str) -> Option<&CacheRule> {
        self.rules
            .iter()
            .filter(|rule| path.starts_with(&rule.prefix))
            .max_by_key(|rule| rule.prefix.len())
    }
}
