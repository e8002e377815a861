//! Settings of `tern edge`, read from TOML (`[edge]` table of the config file) and overridden by flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// Settings of the edge cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Address of the HTTP listener.
    pub listen: SocketAddr,
    /// Address of the admin listener (`/metrics`, `/status`, `POST /purge`); none disables it.
    pub admin: Option<SocketAddr>,
    /// Origin base URL, e.g. `http://127.0.0.1:9000`, or `https://origin.example` (verified against
    /// `origin_ca` or the system's roots, SNI from its host).
    pub origin: String,
    /// Directory of the disk tier; without one the cache lives in memory only and is lost on restart.
    pub cache_dir: Option<PathBuf>,
    /// Total bytes of cached objects (disk tier, or memory without a cache directory).
    #[serde(deserialize_with = "byte_size")]
    pub cache_size: u64,
    /// Bytes of the memory tier in front of the disk tier.
    #[serde(deserialize_with = "byte_size")]
    pub memory_size: u64,
    /// Largest object kept in memory.
    #[serde(deserialize_with = "byte_size")]
    pub max_memory_object: u64,
    /// Key file (from `tern keygen`) whose token authorises `PURGE` and admin purges.
    pub purge_key: Option<PathBuf>,
    /// Client networks allowed to `PURGE` without the key: `10.0.0.0/8`, or a bare address for that
    /// address alone ([`parse_network`]).
    #[serde(deserialize_with = "networks")]
    pub purge_allow: Vec<IpNet>,
    /// Targeted cache-control fields this edge obeys before `Cache-Control` (RFC 9213), most specific first.
    pub targeted_cache_control: Vec<String>,
    /// Whether client `Cache-Control: no-cache` / `max-age` make the edge revalidate.
    pub honor_request_cache_control: bool,
    /// Fraction of the time since `Last-Modified` used as heuristic freshness.
    pub heuristic_fraction: f64,
    /// Upper bound of heuristic freshness, in seconds.
    pub heuristic_max_secs: u64,
    /// Path prefixes under which responses with `Set-Cookie` are stored when their directives allow it.
    /// Elsewhere (by default, everywhere) they are passed to their client and never stored, so one user's
    /// session cookie is not replayed to others; `no-cache="Set-Cookie"` or `private="Set-Cookie"` from the
    /// origin also makes a response storable, without its cookie.
    pub store_set_cookie_paths: Vec<String>,
    /// Whether the query string is part of the cache key.
    pub key_include_query: bool,
    /// Name this edge gives itself in `Via` and `Cache-Status`.
    pub name: String,
    /// Largest request head accepted, in bytes (larger gets 431).
    pub max_header_bytes: usize,
    /// Most request header fields accepted over HTTP/1.1 (more gets 431). The default, 100, is Apache's
    /// `LimitRequestFields` and hyper's inline parse capacity; a larger value makes every request's parse
    /// take a heap scratch array (measured: about a fifth more CPU per cache hit at 256).
    pub max_header_fields: usize,
    /// Longest request target accepted, in bytes (longer gets 414, RFC 9110 section 15.5.15). RFC 9112
    /// section 3 recommends supporting at least 8000 octets.
    pub max_uri_bytes: usize,
    /// Admin URL of the sync service (`http://HOST:PORT` or `https://HOST:PORT`); with a cache directory,
    /// the edge catches up with it at start-up before serving, so content that changed while it was down is
    /// never served.
    pub sync_url: Option<String>,
    /// How long to try to reach the sync service at start-up before dropping the cache instead, seconds.
    pub sync_catch_up_secs: u64,
    /// Upstream (origin) connection settings.
    pub upstream: UpstreamConfig,
    /// CA certificate file (PEM) that alone vouches for an `https://` origin; without it the system's
    /// roots do.
    pub origin_ca: Option<PathBuf>,
    /// CA certificate file (PEM) that alone vouches for an `https://` sync URL; without it the system's
    /// roots do.
    pub sync_ca: Option<PathBuf>,
    /// Address of the HTTPS listener, beside the plain HTTP one (`listen`); needs `tls_cert` and
    /// `tls_key`, or `tls_dir`.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain (server certificate first) served on `tls_listen` and the admin listener.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Directory of certificates chosen by the name the client asks for (SNI): `NAME.crt` with
    /// `NAME.key`, or `NAME/fullchain.pem` with `NAME/privkey.pem`; `default` answers unknown names.
    pub tls_dir: Option<PathBuf>,
    /// How often the certificate files are checked for changes, milliseconds (they reload on SIGHUP too).
    pub tls_reload_poll_ms: u64,
    /// Longest a client may take to finish the TLS handshake, milliseconds.
    pub tls_handshake_timeout_ms: u64,
    /// Answer requests on the plain listener with `308 Permanent Redirect` to the same URL on
    /// `tls_listen` (`PURGE` is still served there, and the admin listener is unaffected).
    pub redirect_https: bool,
    /// Differential caching with a `tern delta` upstream (the `[edge.delta]` table; seed 000).
    pub delta: crate::delta::DeltaSettings,
    /// The cache community this edge joins (the `[edge.community]` table; seeds 002, 003); none: alone.
    pub community: Option<crate::community::CommunitySettings>,
}

/// How the edge talks to its origin.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Connect timeout, milliseconds.
    pub connect_timeout_ms: u64,
    /// Time to the response head, milliseconds (504 after it).
    pub first_byte_timeout_ms: u64,
    /// Longest silence mid-body, milliseconds (the transfer is cut and nothing is stored).
    pub idle_body_timeout_ms: u64,
    /// Idle keep-alive connections kept per origin.
    pub max_idle_connections: usize,
    /// Send the origin's own authority as `Host` instead of the client's.
    pub rewrite_host: bool,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: None,
            origin: String::new(),
            cache_dir: None,
            cache_size: 1 << 30,
            memory_size: 256 << 20,
            max_memory_object: 8 << 20,
            purge_key: None,
            purge_allow: Vec::new(),
            targeted_cache_control: vec!["cdn-cache-control".into()],
            honor_request_cache_control: true,
            heuristic_fraction: 0.1,
            heuristic_max_secs: 24 * 3600,
            store_set_cookie_paths: Vec::new(),
            key_include_query: true,
            name: "tern".into(),
            max_header_bytes: 64 * 1024,
            max_header_fields: tern_http::server::DEFAULT_MAX_HEADER_FIELDS,
            max_uri_bytes: 8 * 1024,
            sync_url: None,
            sync_catch_up_secs: 10,
            upstream: UpstreamConfig::default(),
            origin_ca: None,
            sync_ca: None,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_dir: None,
            tls_reload_poll_ms: 5_000,
            tls_handshake_timeout_ms: 10_000,
            redirect_https: false,
            delta: crate::delta::DeltaSettings::default(),
            community: None,
        }
    }
}

/// Smallest `max_header_bytes`: the HTTP/1.1 parser reads a request head in a buffer of at least this
/// many bytes, so a smaller value would not be what the edge enforces.
pub const MIN_HEADER_BYTES: usize = tern_http::server::MIN_HEAD_BUFFER;

/// Smallest `max_uri_bytes` accepted: below it ordinary pages and assets get 414.
pub const MIN_URI_BYTES: usize = 256;
/// The smallest `cache_size` taken: below it an edge would hold next to nothing (a typo of `1K` for `1G`).
pub const MIN_CACHE_SIZE: u64 = 1 << 20;

impl EdgeConfig {
    /// Refuses settings that cannot work or would not do what they say, naming the setting (the config
    /// file's key): sizes and limits that would refuse every request, zero timeouts (every connection
    /// would fail), a CA for a scheme that uses none, a cookie path that is not a path.
    pub fn check(&self) -> Result<(), String> {
        if !(self.heuristic_fraction.is_finite() && (0.0..=1.0).contains(&self.heuristic_fraction)) {
            return Err(format!(
                "heuristic_fraction must be between 0 and 1 (RFC 9111 suggests 0.1), not {}",
                self.heuristic_fraction
            ));
        }
        if self.cache_size < MIN_CACHE_SIZE {
            return Err(format!(
                "--cache-size (cache_size) {}: at least 1M, or the edge stores next to nothing (the default is 1G)",
                self.cache_size
            ));
        }
        if !(10..=3_600_000).contains(&self.tls_reload_poll_ms) {
            return Err(format!(
                "tls_reload_poll_ms = {}: 10 to 3600000 (how often certificate files are checked; the default is 5000)",
                self.tls_reload_poll_ms
            ));
        }
        // The name goes into `Via` (a received-by pseudonym) and `Cache-Status` (a token, RFC 9211).
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if self.name.is_empty() || self.name.len() > 64 || !self.name.bytes().all(token) {
            return Err(format!(
                "name = {:?}: 1 to 64 letters, digits or !#$%&'*+-.^_`|~ (it goes into Via and Cache-Status)",
                tern_wire::cut_at(&self.name, 80)
            ));
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(format!(
                "max_header_bytes = {}: at least {MIN_HEADER_BYTES} (the HTTP/1.1 parser reads heads in buffers that large; the default is 65536)",
                self.max_header_bytes
            ));
        }
        if self.max_header_fields == 0 {
            return Err("max_header_fields = 0 would refuse every request (the default is 100)".into());
        }
        if self.max_uri_bytes < MIN_URI_BYTES {
            return Err(format!(
                "max_uri_bytes = {}: at least {MIN_URI_BYTES}, or ordinary URLs get 414 (RFC 9112 section 3 recommends 8000; the default is 8192)",
                self.max_uri_bytes
            ));
        }
        for (name, value) in [
            ("tls_handshake_timeout_ms", self.tls_handshake_timeout_ms),
            ("upstream.connect_timeout_ms", self.upstream.connect_timeout_ms),
            ("upstream.first_byte_timeout_ms", self.upstream.first_byte_timeout_ms),
            ("upstream.idle_body_timeout_ms", self.upstream.idle_body_timeout_ms),
        ] {
            if value < 10 {
                return Err(format!(
                    "{name} = {value}: at least 10 milliseconds, or every connection fails"
                ));
            }
        }
        if let Some(community) = &self.community {
            for (name, value) in [
                ("community.peer_connect_timeout_ms", community.peer_connect_timeout_ms),
                (
                    "community.peer_first_byte_timeout_ms",
                    community.peer_first_byte_timeout_ms,
                ),
                ("community.peer_location_timeout_ms", community.peer_location_timeout_ms),
            ] {
                if value < 10 {
                    return Err(format!(
                        "{name} = {value}: at least 10 milliseconds, or every peer is skipped"
                    ));
                }
            }
            if community.hot_window_secs == 0 {
                return Err(
                    "community.hot_window_secs = 0: at least 1 second (how long a second request keeps a copy hot)"
                        .into(),
                );
            }
        }
        // Port 0 (any free port, as tests ask) is never a clash.
        let clash = self.listen.port() != 0
            && (self.admin == Some(self.listen)
                || self
                    .community
                    .as_ref()
                    .is_some_and(|community| community.peer_listen == self.listen));
        if clash {
            return Err(format!(
                "{} is given twice (--listen and --admin or --peer-listen): each listener needs its own port",
                self.listen
            ));
        }
        let https = |url: &str| url.trim().to_ascii_lowercase().starts_with("https://");
        if self.origin_ca.is_some() && !self.origin.is_empty() && !https(&self.origin) {
            return Err(format!(
                "--origin-ca (origin_ca) vouches for an https:// origin; the origin {} is plain HTTP",
                self.origin
            ));
        }
        if self.sync_ca.is_some() && !self.sync_url.as_deref().is_some_and(https) {
            return Err("--sync-ca (sync_ca) vouches for an https:// --sync-url; give one, or leave the CA out".into());
        }
        if let Some(path) = self.store_set_cookie_paths.iter().find(|path| !path.starts_with('/')) {
            return Err(format!(
                "store_set_cookie_paths: {path:?} is not a path prefix (they start with /); as given it matches nothing"
            ));
        }
        Ok(())
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout_ms: 3_000,
            first_byte_timeout_ms: 30_000,
            idle_body_timeout_ms: 30_000,
            max_idle_connections: 256,
            rewrite_host: false,
        }
    }
}

impl UpstreamConfig {
    /// Connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// Time to the response head.
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_millis(self.first_byte_timeout_ms)
    }
    /// Longest silence mid-body.
    pub fn idle_body_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_body_timeout_ms)
    }
}

/// Parses a byte size: a number of bytes, or a number with a `K`, `M`, `G` or `T` suffix (powers of 1024,
/// optional `B`/`iB`), e.g. `512M` or `2GiB`.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let upper = text.to_ascii_uppercase();
    let trimmed = upper.trim_end_matches("IB").trim_end_matches('B');
    let (digits, shift) = match trimmed.chars().last() {
        Some('K') => (&trimmed[..trimmed.len() - 1], 10),
        Some('M') => (&trimmed[..trimmed.len() - 1], 20),
        Some('G') => (&trimmed[..trimmed.len() - 1], 30),
        Some('T') => (&trimmed[..trimmed.len() - 1], 40),
        _ => (trimmed, 0),
    };
    let number: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a byte size (write e.g. 1048576, 512M or 2G)"))?;
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses a network (`10.0.0.0/8`, `fd00::/8`) or a bare address, which means that address alone
/// (`10.0.0.1` is `10.0.0.1/32`).
///
/// # Errors
/// A message naming the text when it is neither.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    if let Ok(network) = text.parse::<IpNet>() {
        return Ok(network);
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}` is neither a network (10.0.0.0/8) nor an address (10.0.0.1)"))
}

fn networks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse_network(text).map_err(serde::de::Error::custom))
        .collect()
}

fn byte_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Number(n) => Ok(n),
        Size::Text(text) => parse_byte_size(&text).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_networks_take_a_bare_address_as_on_the_command_line() {
        let config: EdgeConfig =
            serde_json::from_str(r#"{"purge_allow": ["127.0.0.1", "10.0.0.0/8", "::1"]}"#).expect("parses");
        let expected: Vec<IpNet> = ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
            .iter()
            .map(|text| text.parse().expect("network"))
            .collect();
        assert_eq!(config.purge_allow, expected);
        let error = serde_json::from_str::<EdgeConfig>(r#"{"purge_allow": ["localhost"]}"#).expect_err("refused");
        assert!(
            error.to_string().contains("`localhost` is neither a network"),
            "{error}"
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("1024"), Ok(1024));
        assert_eq!(parse_byte_size("64M"), Ok(64 << 20));
        assert_eq!(parse_byte_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_byte_size("1kb"), Ok(1024));
        assert!(parse_byte_size("lots").is_err());
    }

    #[test]
    fn settings_that_would_refuse_every_request_are_refused_by_name() {
        let base = || EdgeConfig {
            origin: "http://127.0.0.1:9000".into(),
            ..EdgeConfig::default()
        };
        assert_eq!(base().check(), Ok(()));
        let refused = |change: fn(&mut EdgeConfig), named: &str| {
            let mut config = base();
            change(&mut config);
            let error = config.check().expect_err(named);
            assert!(error.contains(named), "{named}: {error}");
        };
        refused(|c| c.max_uri_bytes = 0, "max_uri_bytes");
        refused(|c| c.max_header_bytes = 0, "max_header_bytes");
        refused(|c| c.max_header_fields = 0, "max_header_fields");
        refused(|c| c.tls_handshake_timeout_ms = 0, "tls_handshake_timeout_ms");
        refused(|c| c.upstream.connect_timeout_ms = 0, "upstream.connect_timeout_ms");
        refused(|c| c.origin_ca = Some("ca.pem".into()), "origin_ca");
        refused(|c| c.sync_ca = Some("ca.pem".into()), "sync_ca");
        refused(|c| c.admin = Some(c.listen), "given twice");
        refused(
            |c| {
                c.community = Some(crate::community::CommunitySettings {
                    peer_connect_timeout_ms: 0,
                    ..Default::default()
                })
            },
            "community.peer_connect_timeout_ms",
        );
        refused(
            |c| {
                c.community = Some(crate::community::CommunitySettings {
                    hot_window_secs: 0,
                    ..Default::default()
                })
            },
            "community.hot_window_secs",
        );
        refused(
            |c| c.store_set_cookie_paths = vec!["account".into()],
            "store_set_cookie_paths",
        );
        refused(|c| c.cache_size = 0, "cache_size");
        refused(|c| c.cache_size = 1 << 10, "cache_size");
        refused(|c| c.tls_reload_poll_ms = 0, "tls_reload_poll_ms");
        refused(|c| c.name = "a\nb".into(), "name");
        refused(|c| c.name = "edge one".into(), "name");
        let mut https = base();
        https.origin = "https://origin.example".into();
        https.origin_ca = Some("ca.pem".into());
        assert_eq!(https.check(), Ok(()));
    }
}
