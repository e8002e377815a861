//! Settings of the group-leader election: who this node is, whether and how strongly it may lead, and the
//! timers of seed 004's Fig. 5 with the seed's values as defaults.

use std::net::SocketAddr;
use std::time::Duration;

use tern_wire::SecretKey;
use tern_wire::control::{ControlLimits, valid_name};

/// Default configured leader priority (`--leader-priority`), the middle of `0..=255`.
pub const DEFAULT_PRIORITY: u8 = 128;

/// Settings of one node's election core.
#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// The network segment's name (`--segment`); messages of other segments are ignored.
    pub segment: String,
    /// This node's name, its id in the election.
    pub node: String,
    /// Where members reach this node; carried in its LA and LC messages.
    pub address: SocketAddr,
    /// The cluster key: tags every control message, and messages without its tag are refused.
    pub key: SecretKey,
    /// Priority from configuration (`--leader-priority`), higher is stronger.
    pub priority: u8,
    /// Never claim leadership (`--never-lead`); the node still follows the elected leader.
    pub never_lead: bool,
    /// The seed's "list of pre-assigned leaders": when not empty, only these nodes claim leadership, and
    /// earlier entries claim more strongly.
    pub preassigned: Vec<String>,
    /// The election's timers.
    pub timers: Timers,
    /// Bounds on control messages (size, freshness, senders remembered).
    pub limits: ControlLimits,
}

impl ElectionConfig {
    /// Settings with the seed's defaults for everything but the identity and the key.
    pub fn new(segment: impl Into<String>, node: impl Into<String>, address: SocketAddr, key: SecretKey) -> Self {
        ElectionConfig {
            segment: segment.into(),
            node: node.into(),
            address,
            key,
            priority: DEFAULT_PRIORITY,
            never_lead: false,
            preassigned: Vec::new(),
            timers: Timers::default(),
            limits: ControlLimits::default(),
        }
    }

    /// Checks names and timers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_name(&self.segment) {
            return Err(ConfigError::BadName(self.segment.clone()));
        }
        if !valid_name(&self.node) {
            return Err(ConfigError::BadName(self.node.clone()));
        }
        if let Some(bad) = self.preassigned.iter().find(|name| !valid_name(name)) {
            return Err(ConfigError::BadName(bad.clone()));
        }
        self.timers.validate()
    }

    /// Rank of `node` in the pre-assigned list: 0 when absent, the list's length for the first entry.
    pub(crate) fn preassigned_rank(&self, node: &str) -> u16 {
        let Some(position) = self.preassigned.iter().position(|name| name == node) else {
            return 0;
        };
        let rank = self.preassigned.len().saturating_sub(position);
        u16::try_from(rank).unwrap_or(u16::MAX)
    }
}

/// Why settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A segment or node name that control messages cannot carry.
    #[error("name {0:?} must be 1 to 64 bytes without control characters")]
    BadName(String),
    /// Timers that contradict each other.
    #[error("election timers: {0}")]
    Timers(&'static str),
}

/// The timers of Fig. 5. Defaults are the seed's illustrative values where it gives one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// How often the leader multicasts LA. Default 1.5 s, so that a member notices "three missed LAs"
    /// (seed) inside `leader_silence`.
    pub la_period: Duration,
    /// How long without an LA before a member in "GL known" decides the leader is lost and moves to "GL
    /// unknown". Default 5 s (claim 34: "no less than five seconds after the last group leader alive").
    pub leader_silence: Duration,
    /// Claim interval of a recently deposed leader, the strongest claim. Default 5 s (seed: "5 seconds
    /// as the minimum time").
    pub min_claim: Duration,
    /// Claim interval of the strongest candidate that was not recently leader. Default 10 s (seed: "an
    /// initial LC period ... set to 10 seconds").
    pub initial_claim: Duration,
    /// Added to `initial_claim` in proportion to how weak a claim is: the weakest waits
    /// `initial_claim + claim_spread`. Default 5 s.
    pub claim_spread: Duration,
    /// Random delay of up to this much added to every claim interval, so that equal claims rarely
    /// collide. Default 1 s.
    pub claim_jitter: Duration,
    /// Shortest "voting open" timeout. Default 10 s (seed: "in the range of 10 to 15 seconds").
    pub voting_min: Duration,
    /// Longest "voting open" timeout; each vote draws uniformly between the two. Default 15 s (claim 36:
    /// "no greater than 15 seconds").
    pub voting_max: Duration,
    /// How long a conceding node waits for the winner's LA before the leader counts as unknown again.
    /// Restarted by every claim at least as strong as the one conceded to. Not in the seed; default 20 s,
    /// longer than a vote.
    pub concede_timeout: Duration,
    /// How long a deposed leader keeps its "recently leader" claim. Not in the seed; default 60 s.
    pub deposed_memory: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            la_period: Duration::from_millis(1500),
            leader_silence: Duration::from_secs(5),
            min_claim: Duration::from_secs(5),
            initial_claim: Duration::from_secs(10),
            claim_spread: Duration::from_secs(5),
            claim_jitter: Duration::from_secs(1),
            voting_min: Duration::from_secs(10),
            voting_max: Duration::from_secs(15),
            concede_timeout: Duration::from_secs(20),
            deposed_memory: Duration::from_secs(60),
        }
    }
}

impl Timers {
    /// Every timer divided by `factor` (tests and demos run the seed's proportions faster).
    pub fn scaled_down(&self, factor: u32) -> Timers {
        let factor = factor.max(1);
        Timers {
            la_period: self.la_period / factor,
            leader_silence: self.leader_silence / factor,
            min_claim: self.min_claim / factor,
            initial_claim: self.initial_claim / factor,
            claim_spread: self.claim_spread / factor,
            claim_jitter: self.claim_jitter / factor,
            voting_min: self.voting_min / factor,
            voting_max: self.voting_max / factor,
            concede_timeout: self.concede_timeout / factor,
            deposed_memory: self.deposed_memory / factor,
        }
    }

    /// The longest claim interval any candidate draws.
    pub fn max_claim_interval(&self) -> Duration {
        self.initial_claim
            .saturating_add(self.claim_spread)
            .saturating_add(self.claim_jitter)
    }

    /// The bound within which a segment has one leader known to every live member after its last crash
    /// or restart, when loss is moderate: the leader's silence noticed, the slowest claim, two votes (a
    /// late weaker claim re-opens one), a concession running out, and three LA periods for the news to
    /// arrive. With the defaults, 75.5 s.
    pub fn settle_bound(&self) -> Duration {
        self.leader_silence
            .saturating_add(self.max_claim_interval())
            .saturating_add(self.voting_max.saturating_mul(2))
            .saturating_add(self.concede_timeout)
            .saturating_add(self.la_period.saturating_mul(3))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.la_period.is_zero() {
            return Err(ConfigError::Timers("the LA period must be positive"));
        }
        if self.leader_silence <= self.la_period {
            return Err(ConfigError::Timers("leader silence must be longer than the LA period"));
        }
        if self.voting_min.is_zero() || self.voting_min > self.voting_max {
            return Err(ConfigError::Timers("voting timeouts need 0 < minimum <= maximum"));
        }
        if self.min_claim > self.initial_claim {
            return Err(ConfigError::Timers(
                "the minimum claim interval must not exceed the initial one",
            ));
        }
        if self.concede_timeout <= self.voting_max {
            return Err(ConfigError::Timers("the concede timeout must be longer than a vote"));
        }
        Ok(())
    }
}

/// What a node measures about itself for its priority claim (claim 37's parameters besides the
/// configured priority and leadership). Fed to the core whenever it changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPUs × 1000 minus the load average × 1000, at least 0.
    pub cpu_millis: u32,
    /// Free disk space under the sites' root, in MiB.
    pub free_disk_mib: u64,
    /// Members of the segment this node knows of.
    pub members_known: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds_values_and_validate() {
        let timers = Timers::default();
        assert_eq!(timers.min_claim, Duration::from_secs(5));
        assert_eq!(timers.initial_claim, Duration::from_secs(10));
        assert_eq!(
            (timers.voting_min, timers.voting_max),
            (Duration::from_secs(10), Duration::from_secs(15))
        );
        assert!(
            timers.leader_silence >= timers.la_period * 3,
            "three missed LAs fit in the silence"
        );
        assert_eq!(timers.settle_bound(), Duration::from_millis(75_500));
        assert_eq!(timers.validate(), Ok(()));
        assert_eq!(timers.scaled_down(10).validate(), Ok(()));
    }

    #[test]
    fn contradictory_settings_are_refused() {
        let key = SecretKey::parse(&"11".repeat(32)).expect("key");
        let address = "127.0.0.1:1".parse().expect("address");
        let mut config = ElectionConfig::new("seg", "a", address, key);
        assert_eq!(config.validate(), Ok(()));
        config.preassigned = vec!["a".into(), String::new()];
        assert_eq!(config.validate(), Err(ConfigError::BadName(String::new())));
        config.preassigned.clear();
        config.timers.voting_min = config.timers.voting_max + Duration::from_secs(1);
        assert!(matches!(config.validate(), Err(ConfigError::Timers(_))));
        config.timers = Timers::default();
        config.timers.concede_timeout = config.timers.voting_max;
        assert!(matches!(config.validate(), Err(ConfigError::Timers(_))));
        config.timers = Timers::default();
        config.node = "x".repeat(65);
        assert!(matches!(config.validate(), Err(ConfigError::BadName(_))));
    }

    #[test]
    fn earlier_preassigned_entries_rank_higher() {
        let key = SecretKey::parse(&"11".repeat(32)).expect("key");
        let mut config = ElectionConfig::new("seg", "a", "127.0.0.1:1".parse().expect("address"), key);
        config.preassigned = vec!["first".into(), "second".into()];
        assert_eq!(config.preassigned_rank("first"), 2);
        assert_eq!(config.preassigned_rank("second"), 1);
        assert_eq!(config.preassigned_rank("other"), 0);
    }
}
