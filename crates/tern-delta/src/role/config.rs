//! Settings of `tern delta`, read from the `[delta]` table of the config file (TOML) and overridden by
//! flags. Every bound the role has is here: page, frame and base sizes, the base store's retention, the
//! origin's timeouts, how often a busy class is sampled for its base.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::base::StoreConfig;
use crate::class::{Class, ClassError, ClassPolicy, RederiveRule};
use crate::encoder::{DEFAULT_LEVEL, EncoderConfig};

/// Settings of the `tern delta` role.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeltaConfig {
    /// Address of the listener edges send their requests to.
    pub listen: SocketAddr,
    /// Address of the admin listener (`/metrics`, `/status`); none disables it.
    pub admin: Option<SocketAddr>,
    /// The dynamic origin's base URL, e.g. `http://127.0.0.1:9000` or `https://app.internal`.
    pub origin: String,
    /// CA certificate file (PEM) that alone vouches for an `https://` origin; without it the system's
    /// roots do.
    pub origin_ca: Option<PathBuf>,
    /// The page classes.
    pub classes: Vec<ClassConfig>,
    /// zstd level of deltas (the measured default is 3, searched as `tern_delta::dcz::Search::Delta`
    /// below level 10; see `tern_delta::encoder::DEFAULT_LEVEL`).
    pub level: i32,
    /// Largest page delta-encoded, in bytes; larger pages are streamed through whole.
    pub max_page: usize,
    /// Bytes of all bases held together (current ones are never evicted).
    pub max_base_bytes: usize,
    /// Old bases kept per class while edges may still name them.
    pub max_old_bases: usize,
    /// An old base no edge named for this long is dropped, seconds.
    pub retain_unnamed_secs: u64,
    /// How often the retention rule runs, seconds.
    pub expire_every_secs: u64,
    /// Shortest time between two responses of one class offered as base candidates, milliseconds (0:
    /// every clean response). A busy class is sampled rather than copied on every request; a class
    /// without a base is always offered its next clean response.
    pub offer_interval_ms: u64,
    /// Origin connect timeout, milliseconds.
    pub connect_timeout_ms: u64,
    /// Time to the origin's response head, milliseconds (504 after it).
    pub first_byte_timeout_ms: u64,
    /// Longest silence in the middle of an origin's body, milliseconds.
    pub idle_body_timeout_ms: u64,
    /// Largest request head accepted from an edge, bytes.
    pub max_header_bytes: usize,
    /// PEM certificate chain: with `tls_key`, the listener and the admin listener serve HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Directory of certificates chosen by SNI (`NAME.crt` with `NAME.key`; `default` for unknown names).
    pub tls_dir: Option<PathBuf>,
}

impl Default for DeltaConfig {
    fn default() -> Self {
        let store = StoreConfig::default();
        DeltaConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            admin: None,
            origin: String::new(),
            origin_ca: None,
            classes: Vec::new(),
            level: DEFAULT_LEVEL,
            max_page: 8 << 20,
            max_base_bytes: store.max_bytes,
            max_old_bases: store.max_old_per_class,
            retain_unnamed_secs: store.retain_unnamed.as_secs(),
            expire_every_secs: 60,
            offer_interval_ms: 1_000,
            connect_timeout_ms: 3_000,
            first_byte_timeout_ms: 30_000,
            idle_body_timeout_ms: 30_000,
            max_header_bytes: 64 * 1024,
            tls_cert: None,
            tls_key: None,
            tls_dir: None,
        }
    }
}

impl DeltaConfig {
    /// The base store's bounds.
    pub fn store(&self) -> StoreConfig {
        StoreConfig {
            max_bytes: self.max_base_bytes,
            max_old_per_class: self.max_old_bases,
            retain_unnamed: Duration::from_secs(self.retain_unnamed_secs),
        }
    }

    /// The encoders' settings.
    pub fn encoder(&self) -> EncoderConfig {
        EncoderConfig {
            level: self.level,
            max_page: self.max_page,
        }
    }

    /// The classes, checked.
    pub fn classes(&self) -> Result<Vec<Class>, ClassError> {
        self.classes.iter().map(ClassConfig::class).collect()
    }
}

/// One page class: `--class NAME=PATTERN` on the command line, or a `[[delta.classes]]` table with its
/// policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassConfig {
    /// Class name (`[A-Za-z0-9._-]`, at most 64): a metrics label and the `id` browsers echo.
    pub name: String,
    /// Path pattern (`/news/*`); `*` matches any run of characters.
    pub pattern: String,
    /// Mean delta ratio (delta / page) of the recent deltas above which a new base is derived.
    pub ratio: f64,
    /// Number of recent deltas the mean is taken over.
    pub window: usize,
    /// Shortest time between two base changes, seconds.
    pub min_interval_secs: u64,
    /// Recent clean responses kept for derivation.
    pub samples: usize,
    /// Largest base, bytes.
    pub max_base: usize,
    /// Whether `Cache-Control: private` responses may feed the base (requests with credentials never do).
    pub private_may_feed_base: bool,
    /// Whether browsers that hold the base get `dcz` responses (the edge decides per response too).
    pub browser_deltas: bool,
}

impl Default for ClassConfig {
    fn default() -> Self {
        let policy = ClassPolicy::default();
        ClassConfig {
            name: String::new(),
            pattern: String::new(),
            ratio: policy.rederive.ratio,
            window: policy.rederive.window,
            min_interval_secs: policy.rederive.min_interval.as_secs(),
            samples: policy.samples,
            max_base: policy.max_base,
            private_may_feed_base: policy.private_may_feed_base,
            browser_deltas: policy.browser_deltas,
        }
    }
}

impl ClassConfig {
    /// The class with the default policy from `NAME=PATTERN`.
    pub fn parse(definition: &str) -> Result<Self, ClassError> {
        let class = Class::parse(definition)?;
        Ok(ClassConfig {
            name: class.name,
            pattern: class.pattern.as_str().to_string(),
            ..ClassConfig::default()
        })
    }

    /// The class with its policy, checked.
    pub fn class(&self) -> Result<Class, ClassError> {
        let policy = ClassPolicy {
            private_may_feed_base: self.private_may_feed_base,
            browser_deltas: self.browser_deltas,
            samples: self.samples,
            max_base: self.max_base,
            rederive: RederiveRule {
                ratio: self.ratio,
                window: self.window,
                min_interval: Duration::from_secs(self.min_interval_secs),
            },
            ..ClassPolicy::default()
        };
        Class::new(&self.name, &self.pattern)?.with_policy(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_from_flags_and_tables() {
        let flag = ClassConfig::parse("news=/news/*").expect("valid");
        assert_eq!(flag.class().expect("valid").policy, ClassPolicy::default());
        let table = ClassConfig {
            name: "account".into(),
            pattern: "/account*".into(),
            ratio: 0.1,
            window: 4,
            min_interval_secs: 0,
            ..ClassConfig::default()
        };
        let class = table.class().expect("valid");
        assert_eq!(class.policy.rederive.window, 4);
        assert!(ClassConfig { ratio: 2.0, ..table }.class().is_err());
        assert!(ClassConfig::parse("no pattern").is_err());
    }
}
