//! Settings of `tern serve` (`[serve]` table of the config file).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Settings of the static origin.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Directory served; none given (empty) is refused at start, rather than serving the working directory.
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
            root: PathBuf::new(),
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
    /// Refuses settings that cannot work, naming the setting: no root, an empty or nested `index`, a rule
    /// whose prefix is not a path (it would never match) or that is given twice.
    pub fn check(&self) -> Result<(), String> {
        if self.root.as_os_str().is_empty() {
            return Err(
                "no directory to serve: give it as `tern serve DIR` or as `root = \"DIR\"` in the config's [serve] table"
                    .into(),
            );
        }
        if self.index.is_empty() || self.index.contains('/') || self.index.starts_with('.') {
            return Err(format!(
                "index = {:?}: the name of the file served for a directory (index.html), without a slash",
                self.index
            ));
        }
        for (n, rule) in self.rules.iter().enumerate() {
            if !rule.prefix.starts_with('/') {
                return Err(format!(
                    "[[serve.rules]] prefix = {:?}: a URL path prefix starts with / (\"/{}\"); as given it matches nothing",
                    rule.prefix, rule.prefix
                ));
            }
            if self.rules[..n].iter().any(|earlier| earlier.prefix == rule.prefix) {
                return Err(format!(
                    "[[serve.rules]] prefix = {:?} is given twice: one rule per prefix",
                    rule.prefix
                ));
            }
        }
        Ok(())
    }

    /// The rule with the longest prefix matching `path`.
    pub fn rule_for(&self, path: &str) -> Option<&CacheRule> {
        self.rules
            .iter()
            .filter(|rule| path.starts_with(&rule.prefix))
            .max_by_key(|rule| rule.prefix.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooted() -> OriginConfig {
        OriginConfig {
            root: PathBuf::from("/srv/site"),
            ..OriginConfig::default()
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        assert!(rooted().check().is_ok());
        let no_root = OriginConfig::default().check().expect_err("no root");
        assert!(no_root.contains("no directory to serve"), "{no_root}");
        let rule = |prefix: &str| CacheRule {
            prefix: prefix.into(),
            cache_control: Some("max-age=60".into()),
            surrogate_key: None,
        };
        let relative = OriginConfig {
            rules: vec![rule("static")],
            ..rooted()
        };
        assert!(relative.check().expect_err("relative prefix").contains("\"/static\""));
        let twice = OriginConfig {
            rules: vec![rule("/a/"), rule("/a/")],
            ..rooted()
        };
        assert!(twice.check().expect_err("twice").contains("given twice"));
        for index in ["", "a/index.html", ".index"] {
            let config = OriginConfig {
                index: index.into(),
                ..rooted()
            };
            assert!(config.check().expect_err(index).contains("index ="), "{index}");
        }
    }
}
