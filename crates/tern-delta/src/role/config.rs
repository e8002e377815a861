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

    /// The classes, checked, with every bound of the role: an error names the field or the class and
    /// what it must be. Two classes may not share a name or a pattern (one of them could never be used).
    pub fn classes(&self) -> Result<Vec<Class>, String> {
        let positive = [
            ("max_page", self.max_page as u64),
            ("max_base_bytes", self.max_base_bytes as u64),
            ("expire_every_secs", self.expire_every_secs),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_byte_timeout_ms", self.first_byte_timeout_ms),
            ("idle_body_timeout_ms", self.idle_body_timeout_ms),
            ("max_header_bytes", self.max_header_bytes as u64),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("[delta] {field} must be above 0"));
        }
        // zstd would clamp anything else; levels past 19 take tens of megabytes and milliseconds a page.
        if !(1..=19).contains(&self.level) {
            return Err(format!(
                "[delta] level = {}: 1 to 19 (the measured default is {DEFAULT_LEVEL})",
                self.level
            ));
        }
        let mut classes: Vec<Class> = Vec::with_capacity(self.classes.len());
        for config in &self.classes {
            let class = config.class().map_err(|error| match error {
                ClassError::Rule(problem) => problem,
                other => format!("{other} (give classes as --class NAME=/path/* or [[delta.classes]] tables)"),
            })?;
            if classes.iter().any(|known| known.name == class.name) {
                return Err(format!(
                    "two classes are named {}: give each class its own name",
                    class.name
                ));
            }
            if let Some(known) = classes.iter().find(|known| known.pattern == class.pattern) {
                return Err(format!(
                    "classes {} and {} have the same pattern {}: only one of them could ever be used",
                    known.name,
                    class.name,
                    class.pattern.as_str()
                ));
            }
            classes.push(class);
        }
        Ok(classes)
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
    /// Request fields that carry credentials on this site, besides `Cookie`, `Authorization` and the
    /// usual ones (`X-Api-Key`, `X-Auth-Token`, ...: `tern_delta::candidate::DEFAULT_CREDENTIAL_FIELDS`).
    pub credential_fields: Vec<String>,
    /// Whether a page reached by a URL with a query may feed the base (default no: a query may carry a
    /// reset or unsubscribe token or a signature, and a base is announced to every visitor).
    pub base_from_query: bool,
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
            credential_fields: Vec::new(),
            base_from_query: policy.base_from_query,
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
        let credential_fields = self
            .credential_fields
            .iter()
            .map(|name| {
                http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                    ClassError::Rule(format!(
                        "class {}: credential_fields: {name:?} is not a field name",
                        self.name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let policy = ClassPolicy {
            credential_fields,
            base_from_query: self.base_from_query,
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
        assert!(
            ClassConfig {
                ratio: 2.0,
                ..table.clone()
            }
            .class()
            .is_err()
        );
        assert!(ClassConfig::parse("no pattern").is_err());
        let own = ClassConfig {
            credential_fields: vec!["X-Tenant-Key".into()],
            base_from_query: true,
            ..table.clone()
        };
        let class = own.class().expect("valid");
        assert_eq!(
            class.policy.credential_fields,
            [http::HeaderName::from_static("x-tenant-key")]
        );
        assert!(class.policy.base_from_query);
        let bad_field = ClassConfig {
            credential_fields: vec!["not a name".into()],
            ..table
        };
        assert!(bad_field.class().is_err());
    }

    #[test]
    fn bounds_of_zero_and_clashing_classes_are_refused_by_name() {
        let news = ClassConfig::parse("news=/news/*").expect("valid");
        let config = |classes: Vec<ClassConfig>| DeltaConfig {
            classes,
            ..DeltaConfig::default()
        };
        assert_eq!(config(vec![news.clone()]).classes().map(|c| c.len()), Ok(1));
        let same_name = ClassConfig::parse("news=/account/*").expect("valid");
        let error = config(vec![news.clone(), same_name]).classes().expect_err("same name");
        assert!(error.contains("two classes are named news"), "{error}");
        let same_pattern = ClassConfig::parse("other=/news/*").expect("valid");
        let error = config(vec![news.clone(), same_pattern])
            .classes()
            .expect_err("same pattern");
        assert!(error.contains("same pattern /news/*"), "{error}");
        for field in ["first_byte_timeout_ms", "connect_timeout_ms", "max_page"] {
            let mut zero = config(vec![news.clone()]);
            match field {
                "first_byte_timeout_ms" => zero.first_byte_timeout_ms = 0,
                "connect_timeout_ms" => zero.connect_timeout_ms = 0,
                _ => zero.max_page = 0,
            }
            let error = zero.classes().expect_err("zero");
            assert_eq!(error, format!("[delta] {field} must be above 0"));
        }
        let no_base = ClassConfig {
            max_base: 0,
            ..news.clone()
        };
        let error = config(vec![no_base]).classes().expect_err("zero base");
        assert!(error.contains("class news: max_base"), "{error}");
        let no_window = ClassConfig {
            window: 0,
            ..news.clone()
        };
        let error = config(vec![no_window]).classes().expect_err("zero window");
        assert!(error.contains("class news: window"), "{error}");
        for level in [-5, 0, 20, 99] {
            let mut odd = config(vec![news.clone()]);
            odd.level = level;
            let error = odd.classes().expect_err("level");
            assert!(error.contains("level"), "{level}: {error}");
        }
    }
}
