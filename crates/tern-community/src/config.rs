//! Settings of one peer's community core: who it is, how much it takes, how its community is found and
//! divided, and the timers of seed 002's liveness and election (claims 32–34, 53, 57) with defaults that
//! fail a dead master over within 3 seconds.

use std::net::SocketAddr;
use std::time::Duration;

use tern_wire::SecretKey;
use tern_wire::community::{CommunityLimits, DEFAULT_MAX_PEERS, MAX_REPLICAS};
use tern_wire::control::valid_name;

use crate::allocation::AllocationConfig;
use crate::directory::DirectoryLimits;

/// Default weight (`--weight`): every peer the same share.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Default master priority (`--master-priority`), the middle of `0..=255`.
pub const DEFAULT_PRIORITY: u8 = 128;

/// Settings of one peer's community core.
#[derive(Debug, Clone)]
pub struct CommunityConfig {
    /// The community's name (`--community`).
    pub community: String,
    /// This peer's name, unique in the community.
    pub name: String,
    /// Where this peer receives community messages.
    pub address: SocketAddr,
    /// Where this peer serves peer requests (`--peer-listen`).
    pub http: SocketAddr,
    /// The cluster key: tags every message; messages without its tag are refused and counted.
    pub key: SecretKey,
    /// This peer's share of the content relative to the others' (`--weight`), at least 1.
    pub weight: u32,
    /// Master priority (`--master-priority`): the election's first criterion, higher wins.
    pub priority: u8,
    /// The cache's capacity in bytes: the election's second criterion.
    pub capacity: u64,
    /// A registry is configured (`--registry`): the core asks it for communities (claim 51) and tells it
    /// of masters ([`Output::Registry`](crate::Output::Registry)).
    pub registry: bool,
    /// A discovery group is configured (`--discover`): the core multicasts `CRMSG_WAKEUP` probes
    /// ([`Output::Multicast`](crate::Output::Multicast), claims 54–58).
    pub discovery: bool,
    /// How the master divides content (`--replicas`, claim 14's host names).
    pub allocation: AllocationConfig,
    /// Most peers the master admits; more are denied as full.
    pub max_peers: usize,
    /// Bounds of the master's directory of holders (seed 003).
    pub directory: DirectoryLimits,
    /// The timers.
    pub timers: Timers,
    /// Bounds on the messages accepted.
    pub limits: CommunityLimits,
}

impl CommunityConfig {
    /// Settings with defaults for everything but the identity and the key; no registry, no discovery
    /// group (a lone peer creates its community at once).
    pub fn new(
        community: impl Into<String>,
        name: impl Into<String>,
        address: SocketAddr,
        http: SocketAddr,
        key: SecretKey,
    ) -> Self {
        CommunityConfig {
            community: community.into(),
            name: name.into(),
            address,
            http,
            key,
            weight: DEFAULT_WEIGHT,
            priority: DEFAULT_PRIORITY,
            capacity: 0,
            registry: false,
            discovery: false,
            allocation: AllocationConfig::default(),
            max_peers: DEFAULT_MAX_PEERS,
            directory: DirectoryLimits::default(),
            timers: Timers::default(),
            limits: CommunityLimits::default(),
        }
    }

    /// Checks names, bounds and timers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, name) in [
            ("community name (--community)", &self.community),
            ("peer name (--peer-name)", &self.name),
        ] {
            if !valid_name(name) {
                return Err(ConfigError::bad_name(field, name));
            }
        }
        if self.weight == 0 || self.weight > MAX_WEIGHT {
            // A share of 0 owns nothing: every edge would keep its own copy of what it asked for; one in
            // the billions would own everything.
            return Err(ConfigError::Bounds(
                "weight must be 1 to 1000000 (a share of the content relative to the others', default 100)",
            ));
        }
        if self.allocation.replicas == 0 || self.allocation.replicas > MAX_REPLICAS {
            return Err(ConfigError::Bounds("replicas must be 1 to 8"));
        }
        if self.allocation.hosts.len() > self.limits.max_hosts {
            return Err(ConfigError::Bounds("more whole host names than a peer list carries"));
        }
        if let Some(bad) = self
            .allocation
            .hosts
            .iter()
            .find(|host| host.is_empty() || !tern_wire::community::valid_host(host))
        {
            return Err(ConfigError::bad_name("host name", bad));
        }
        if self.max_peers == 0 || self.max_peers > self.limits.max_peers {
            return Err(ConfigError::Bounds("max peers must be 1 to the peer list's limit"));
        }
        self.timers.validate()
    }
}

/// Most characters of a refused value an error message repeats.
pub const SHOWN_VALUE_LEN: usize = 80;

/// `value` cut to [`SHOWN_VALUE_LEN`] characters for an error message, saying how long it was.
pub fn shown_value(value: &str) -> String {
    if value.chars().count() <= SHOWN_VALUE_LEN {
        return value.to_string();
    }
    let start: String = value.chars().take(SHOWN_VALUE_LEN).collect();
    format!("{start}… ({} bytes)", value.len())
}

/// Why settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A community, peer or host name that messages cannot carry.
    #[error(
        "{field} {value:?} must be 1 to 64 bytes without control characters (host names: letters, digits, . - _ :)"
    )]
    BadName {
        /// Which name, with its flag.
        field: &'static str,
        /// The name given, cut to [`SHOWN_VALUE_LEN`] characters.
        value: String,
    },
    /// A bound out of range.
    #[error("community settings: {0}")]
    Bounds(&'static str),
    /// Timers that contradict each other.
    #[error("community timers: {0}")]
    Timers(&'static str),
}

impl ConfigError {
    fn bad_name(field: &'static str, value: &str) -> ConfigError {
        ConfigError::BadName {
            field,
            value: shown_value(value),
        }
    }
}

/// Largest `--weight`: ten thousand times the default share.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// The community's timers. The defaults fail a dead master over in about 2 s: its silence is noticed
/// after [`master_silence`](Timers::master_silence) (1.5 s), the election collects candidacies for
/// [`election`](Timers::election) (0.5 s), and the winner's peer list reaches every member at once or at
/// its next ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// How often a member sends `CRMSG_PEERPING` to its master (claim 32). Default 250 ms: six pings fit
    /// in the silence threshold, so that message loss alone rarely looks like a dead master.
    pub ping_interval: Duration,
    /// How long without a word from the master before a member holds an election (claims 32, 34).
    /// Default 1.5 s.
    pub master_silence: Duration,
    /// How long without a ping before the master drops a member from the peer list. Default 1.5 s.
    pub member_silence: Duration,
    /// How long an election collects candidacies, and how long a participant then waits for the
    /// winner's peer list before it holds the next one. Default 500 ms.
    pub election: Duration,
    /// A member that heard its master this recently answers a `CRMSG_HOLDELECTION` with "master heard",
    /// aborting an election one member's lost pings started. Default 500 ms (two pings).
    pub vouch_window: Duration,
    /// How long a starting peer waits for the registry's community list (claim 53). Default 1 s.
    pub registry_timeout: Duration,
    /// How long a starting peer waits for answers to its `CRMSG_WAKEUP` probe (claim 57). Default 1 s.
    pub probe_timeout: Duration,
    /// How often a `CRMSG_REQUESTTOJOIN` is sent again while unanswered. Default 250 ms.
    pub join_retry: Duration,
    /// Unanswered `CRMSG_REQUESTTOJOIN`s before the peer looks for its community again. Default 6.
    pub join_attempts: u32,
    /// How often a master tells the registry it is master (a refresh, answered with the registry's
    /// record) and multicasts its `CRMSG_WAKEUP`, so that two masters of one community find each other.
    /// Default 1 s.
    pub announce_interval: Duration,
    /// How long a leaving master repeats its `CRMSG_NOMINATEMASTER` before it goes. Default 1 s.
    pub leave_timeout: Duration,
    /// How long a denied newcomer (full community, name clash) waits before it tries again. Default 5 s.
    pub denied_backoff: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            ping_interval: Duration::from_millis(250),
            master_silence: Duration::from_millis(1500),
            member_silence: Duration::from_millis(1500),
            election: Duration::from_millis(500),
            vouch_window: Duration::from_millis(500),
            registry_timeout: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
            join_retry: Duration::from_millis(250),
            join_attempts: 6,
            announce_interval: Duration::from_secs(1),
            leave_timeout: Duration::from_secs(1),
            denied_backoff: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// The bound within which a dead master is replaced and every live member holds the new peer list,
    /// when at most one message of each exchange is lost: the silence noticed, the election, its wait for
    /// the winner, and two pings for a list that was lost. With the defaults, 3 s.
    pub fn failover_bound(&self) -> Duration {
        self.master_silence
            .saturating_add(self.election.saturating_mul(2))
            .saturating_add(self.ping_interval.saturating_mul(2))
    }

    /// How late a timer must fire for this peer to take it that it stood still itself (a stopped process,
    /// a frozen VM) and measure no silence across that time: two ping intervals (500 ms by default), far
    /// beyond a busy scheduler's delay and well inside the silence thresholds, so that a stall too short
    /// to be noticed is also too short to look like a silent peer.
    pub fn stall_threshold(&self) -> Duration {
        self.ping_interval.saturating_mul(2)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.ping_interval.is_zero() || self.election.is_zero() || self.join_retry.is_zero() {
            return Err(ConfigError::Timers("ping, election and join retry must be positive"));
        }
        if self.master_silence <= self.ping_interval * 2 {
            return Err(ConfigError::Timers("master silence must span more than two pings"));
        }
        if self.member_silence <= self.ping_interval * 2 {
            return Err(ConfigError::Timers("member silence must span more than two pings"));
        }
        if self.vouch_window >= self.master_silence {
            return Err(ConfigError::Timers(
                "the vouch window must be shorter than master silence",
            ));
        }
        if self.announce_interval.is_zero() || self.join_attempts == 0 {
            return Err(ConfigError::Timers(
                "announce interval and join attempts must be positive",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CommunityConfig {
        let key = SecretKey::parse(&"11".repeat(32)).expect("key");
        let address = "127.0.0.1:7400".parse().expect("address");
        CommunityConfig::new("site", "edge-a", address, address, key)
    }

    #[test]
    fn defaults_validate_and_fail_over_within_three_seconds() {
        assert_eq!(config().validate(), Ok(()));
        assert!(Timers::default().failover_bound() <= Duration::from_secs(3));
    }

    #[test]
    fn a_bad_name_is_refused_naming_its_flag_and_not_echoed_in_full() {
        let mut bad = config();
        bad.community = String::new();
        let message = bad.validate().expect_err("empty name").to_string();
        assert!(message.starts_with("community name (--community) \"\""), "{message}");
        let mut bad = config();
        bad.name = "n".repeat(3000);
        let message = bad.validate().expect_err("long name").to_string();
        assert!(message.contains("--peer-name"), "{message}");
        assert!(message.contains("(3000 bytes)"), "{message}");
        assert!(message.len() < 300, "{message}");
    }

    #[test]
    fn contradictory_settings_are_refused() {
        let mut bad = config();
        bad.name = String::new();
        assert!(matches!(bad.validate(), Err(ConfigError::BadName { .. })));
        let mut bad = config();
        bad.allocation.replicas = 9;
        assert!(matches!(bad.validate(), Err(ConfigError::Bounds(_))));
        let mut bad = config();
        bad.allocation.hosts = vec!["a b".into()];
        assert!(matches!(bad.validate(), Err(ConfigError::BadName { .. })));
        let mut bad = config();
        bad.weight = 0;
        assert!(matches!(bad.validate(), Err(ConfigError::Bounds(_))));
        let mut bad = config();
        bad.max_peers = 0;
        assert!(matches!(bad.validate(), Err(ConfigError::Bounds(_))));
        let mut bad = config();
        bad.timers.master_silence = bad.timers.ping_interval;
        assert!(matches!(bad.validate(), Err(ConfigError::Timers(_))));
        let mut bad = config();
        bad.timers.vouch_window = bad.timers.master_silence;
        assert!(matches!(bad.validate(), Err(ConfigError::Timers(_))));
    }
}
