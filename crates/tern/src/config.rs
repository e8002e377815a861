//! The TOML config file: one table per role (`[edge]`, `[serve]`), each holding every setting of that role.
//! Unknown keys are errors, so a typo is reported instead of silently ignored.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// The whole config file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Settings of `tern edge`.
    pub edge: Option<tern_edge::EdgeConfig>,
    /// Settings of `tern serve`.
    pub serve: Option<tern_origin::OriginConfig>,
    /// Settings of `tern agent`.
    pub agent: Option<AgentFile>,
    /// Settings of `tern sync`.
    pub sync: Option<SyncFile>,
    /// Settings of `tern delta`.
    pub delta: Option<tern_delta::role::DeltaConfig>,
}

/// The `[agent]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentFile {
    /// Origin content directory.
    pub dir: Option<std::path::PathBuf>,
    /// Site name.
    pub site: Option<String>,
    /// Agent name (default: the site name).
    pub name: Option<String>,
    /// URL the directory is served under.
    pub base_url: Option<String>,
    /// The sync service's listener, HOST:PORT.
    pub sync: Option<String>,
    /// Agent key file.
    pub key: Option<std::path::PathBuf>,
    /// State directory.
    pub state_dir: Option<std::path::PathBuf>,
    /// Full rescan interval, seconds.
    pub rescan_secs: Option<u64>,
    /// How long a burst of file events is gathered before it is read, milliseconds.
    pub debounce_ms: Option<u64>,
    /// Admin listener.
    pub admin: Option<std::net::SocketAddr>,
    /// The admin listener's certificate chain (with `tls_key`), or a directory of them (`tls_dir`).
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// Certificates chosen by name (SNI), instead of `tls_cert`.
    pub tls_dir: Option<std::path::PathBuf>,
}

/// The `[sync]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncFile {
    /// Listener for agents.
    pub listen: Option<std::net::SocketAddr>,
    /// Admin listener.
    pub admin: Option<std::net::SocketAddr>,
    /// Agent key file.
    pub key: Option<std::path::PathBuf>,
    /// The caches' purge key file.
    pub cache_key: Option<std::path::PathBuf>,
    /// Data directory (change log, cache positions).
    pub data: Option<std::path::PathBuf>,
    /// Sites.
    pub sites: Vec<tern_sync::SiteConfig>,
    /// Caches.
    pub caches: Vec<tern_sync::CacheConfig>,
    /// How long commands to a failing cache are retried, seconds (the sites' longest freshness lifetime).
    pub max_retry_secs: Option<u64>,
    /// How long a cache may take to answer a command's head, or stall in a prefetch's body, milliseconds.
    pub command_timeout_ms: Option<u64>,
    /// Changes applied to each cache at a time.
    pub commands_in_flight: Option<u16>,
    /// The CA file https:// caches are verified against.
    pub cache_ca: Option<std::path::PathBuf>,
    /// The admin listener's certificate chain (with `tls_key`), or a directory of them (`tls_dir`).
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// Certificates chosen by name (SNI), instead of `tls_cert`.
    pub tls_dir: Option<std::path::PathBuf>,
}

impl FileConfig {
    /// Reads `path`, or the empty config when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text =
            tern_wire::read_setting_text(path).with_context(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config {} is not valid", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_example_parses() {
        let text = r#"
            [edge]
            listen = "127.0.0.1:8080"
            origin = "http://127.0.0.1:9000"
            cache_dir = "/var/cache/tern"
            cache_size = "10G"
            memory_size = 268435456
            purge_allow = ["10.0.0.0/8"]
            targeted_cache_control = ["tern-cache-control", "cdn-cache-control"]
            [edge.upstream]
            first_byte_timeout_ms = 10000

            [serve]
            root = "/srv/site"
            cache_control = "public, max-age=60"
            [[serve.rules]]
            prefix = "/static/"
            cache_control = "public, max-age=31536000, immutable"
            surrogate_key = "static"
        "#;
        let config: FileConfig = toml::from_str(text).expect("parses");
        let edge = config.edge.expect("edge");
        assert_eq!(edge.cache_size, 10 << 30);
        assert_eq!(edge.upstream.first_byte_timeout_ms, 10_000);
        let serve = config.serve.expect("serve");
        assert_eq!(serve.rules.len(), 1);
    }

    #[test]
    fn delta_tables_parse() {
        let text = r#"
            [edge]
            origin = "http://10.0.0.5:8090"
            [edge.delta]
            mode = "on"
            max_delta = 4096

            [delta]
            origin = "http://127.0.0.1:9000"
            offer_interval_ms = 0
            [[delta.classes]]
            name = "news"
            pattern = "/news/*"
            ratio = 0.05
        "#;
        let config: FileConfig = toml::from_str(text).expect("parses");
        let edge = config.edge.expect("edge");
        assert_eq!(edge.delta.mode, tern_edge::delta::DeltaMode::On);
        assert_eq!(edge.delta.max_delta, 4096);
        let delta = config.delta.expect("delta");
        let classes = delta.classes().expect("valid classes");
        assert_eq!(classes[0].policy.rederive.ratio, 0.05);
        assert!(
            toml::from_str::<FileConfig>(
                "[delta]
clases = []
"
            )
            .is_err()
        );
    }

    #[test]
    fn sync_and_agent_tables_hold_their_tls_and_every_other_setting() {
        let text = r#"
            [sync]
            key = "/etc/tern/agent.key"
            cache_key = "/etc/tern/purge.key"
            cache_ca = "/etc/tern/ca.pem"
            commands_in_flight = 16
            tls_cert = "/etc/tern/sync.crt"
            tls_key = "/etc/tern/sync.key"
            [[sync.sites]]
            name = "www"
            hosts = ["www.example.com"]
            [[sync.caches]]
            url = "https://edge1.example.net:443"

            [agent]
            dir = "/srv/www"
            site = "www"
            base_url = "https://www.example.com"
            sync = "sync.example.net:7070"
            key = "/etc/tern/agent.key"
            debounce_ms = 50
            tls_dir = "/etc/letsencrypt/live"
        "#;
        let config: FileConfig = toml::from_str(text).expect("parses");
        let sync = config.sync.expect("sync");
        assert_eq!(sync.tls_key.as_deref(), Some(Path::new("/etc/tern/sync.key")));
        assert_eq!(sync.commands_in_flight, Some(16));
        let agent = config.agent.expect("agent");
        assert_eq!(agent.sync.as_deref(), Some("sync.example.net:7070"));
        assert_eq!(agent.debounce_ms, Some(50));
        assert!(agent.tls_dir.is_some());
    }

    #[test]
    fn typos_are_errors() {
        let result: Result<FileConfig, _> = toml::from_str("[edge]\ncache_szie = 5\n");
        assert!(result.is_err());
    }
}
