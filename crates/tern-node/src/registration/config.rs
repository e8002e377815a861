//! Settings of a segment's registration: who this node is, where the segment is, and the timers of the
//! registration round (claims 40 and 41) and of the keep-alive, with the seed's values as defaults where it
//! gives one.

use std::net::SocketAddr;
use std::time::Duration;

use tern_wire::SecretKey;
use tern_wire::control::valid_name;
use tern_wire::segment::{MAX_LOCATION_LEN, SegmentLimits};

use crate::election::ConfigError;

/// Settings of one node's registration core.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// The network segment's name (`--segment`), the election's.
    pub segment: String,
    /// This node's name, the election's.
    pub node: String,
    /// This node's registration address: where its UDP socket for registrations listens. The election
    /// carries the same address in its LA, so members know where to register.
    pub address: SocketAddr,
    /// The cluster key: tags every message; messages without its tag are refused.
    pub key: SecretKey,
    /// Where the segment is (`--location`, a time zone such as `Europe/London` or a place name); the
    /// leader puts it in its reports to the mover, which sorts the tree's leaders by it.
    pub location: String,
    /// The timers.
    pub timers: RegistrationTimers,
    /// Bounds on segment datagrams.
    pub limits: SegmentLimits,
}

impl RegistrationConfig {
    /// Settings with the default timers.
    pub fn new(segment: impl Into<String>, node: impl Into<String>, address: SocketAddr, key: SecretKey) -> Self {
        RegistrationConfig {
            segment: segment.into(),
            node: node.into(),
            address,
            key,
            location: String::new(),
            timers: RegistrationTimers::default(),
            limits: SegmentLimits::default(),
        }
    }

    /// Checks names, the location and the timers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for name in [&self.segment, &self.node] {
            if !valid_name(name) {
                return Err(ConfigError::BadName(name.clone()));
            }
        }
        if self.location.len() > MAX_LOCATION_LEN || self.location.chars().any(char::is_control) {
            return Err(ConfigError::BadName(self.location.clone()));
        }
        self.timers.validate()
    }
}

/// The registration's timers.
///
/// A member registers with a new leader after a random delay of up to `first_jitter`; it registers again
/// `retry_fixed` plus up to `retry_jitter` after a registration report that does not list it (claim 41),
/// `confirm_timeout` (plus jitter) after a registration that no report confirmed, and every `keepalive`
/// (plus jitter) once listed. The leader multicasts its registration report `report_delay_min` to
/// `report_delay_max` after the last registration that changed the list (claim 40), but never later than
/// `report_max_wait` after the first one (beyond the seed: members that keep asking to be listed would
/// otherwise postpone the report that lists them for ever), repeats it while registrations keep changing
/// the list, and reports to the mover once a report goes out with no change following it. **Keep-alive rule**: a member the leader has not heard from for `member_timeout` is
/// offline; with the defaults that is three keep-alives missed (10 s each, plus up to 1 s) and 2 s to
/// spare, so a single lost datagram never takes a member offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrationTimers {
    /// Random delay of up to this much before a member's first registration with a new leader, so that a
    /// whole segment does not register at once ("possible transmission collisions"). Default 1 s.
    pub first_jitter: Duration,
    /// Shortest delay from the last registration that changed the list to the registration report.
    /// Default 3 s (seed: "approximately 3-5 seconds after the last received" registration).
    pub report_delay_min: Duration,
    /// Longest such delay; each report draws uniformly between the two. Default 5 s.
    pub report_delay_max: Duration,
    /// Longest time from the first registration that changed the list to the report, however many follow.
    /// Default 8 s.
    pub report_max_wait: Duration,
    /// Fixed part of a member's wait before registering again when a report does not list it (claim 41).
    /// Default 200 ms.
    pub retry_fixed: Duration,
    /// Random part of that wait, and of every keep-alive (claim 41: "up to one second"). Default 1 s.
    pub retry_jitter: Duration,
    /// How long after registering a member waits for a report listing it before registering again (its
    /// registration or the report may have been lost). Default 6 s, longer than the report delay.
    pub confirm_timeout: Duration,
    /// How often a listed member registers again as a keep-alive. Default 10 s (the agent's period of
    /// registering with the mover).
    pub keepalive: Duration,
    /// How long the leader waits for a member's keep-alive before it counts the member offline and sends
    /// a network segment report. Default 35 s.
    pub member_timeout: Duration,
    /// How often the leader sends the mover a full segment report when nothing changed (the mover counts a
    /// leader silent for three of these as gone). Default 10 s.
    pub report_refresh: Duration,
    /// How long after a report the mover did not take the leader sends it again (in full). Default 5 s.
    pub report_retry: Duration,
}

impl Default for RegistrationTimers {
    fn default() -> Self {
        RegistrationTimers {
            first_jitter: Duration::from_secs(1),
            report_delay_min: Duration::from_secs(3),
            report_delay_max: Duration::from_secs(5),
            report_max_wait: Duration::from_secs(8),
            retry_fixed: Duration::from_millis(200),
            retry_jitter: Duration::from_secs(1),
            confirm_timeout: Duration::from_secs(6),
            keepalive: Duration::from_secs(10),
            member_timeout: Duration::from_secs(35),
            report_refresh: Duration::from_secs(10),
            report_retry: Duration::from_secs(5),
        }
    }
}

impl RegistrationTimers {
    /// Every timer divided by `factor` (tests and demos run the seed's proportions faster).
    pub fn scaled_down(&self, factor: u32) -> RegistrationTimers {
        let factor = factor.max(1);
        RegistrationTimers {
            first_jitter: self.first_jitter / factor,
            report_delay_min: self.report_delay_min / factor,
            report_delay_max: self.report_delay_max / factor,
            report_max_wait: self.report_max_wait / factor,
            retry_fixed: self.retry_fixed / factor,
            retry_jitter: self.retry_jitter / factor,
            confirm_timeout: self.confirm_timeout / factor,
            keepalive: self.keepalive / factor,
            member_timeout: self.member_timeout / factor,
            report_refresh: self.report_refresh / factor,
            report_retry: self.report_retry / factor,
        }
    }

    /// The bound within which, once every live member knows the same leader, the leader's registration
    /// report lists exactly the live members, every member has seen itself listed, and the mover has
    /// been told, when loss is moderate (up to 10%): a member's first registration plus five
    /// registrations lost or unconfirmed in a row (`confirm_timeout` and jitter each), the last one's
    /// report (at most `report_max_wait`) and the report that finds nothing new; or a crashed member's
    /// keep-alives running out (`member_timeout`) and a report round. With the defaults, 52 s.
    pub fn converge_bound(&self) -> Duration {
        let attempt = self.confirm_timeout.saturating_add(self.retry_jitter);
        let rounds = self
            .first_jitter
            .saturating_add(attempt.saturating_mul(5))
            .saturating_add(self.report_max_wait.saturating_mul(2));
        let expiry = self
            .member_timeout
            .saturating_add(self.report_max_wait.saturating_mul(2));
        rounds.max(expiry)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.report_delay_min.is_zero() || self.report_delay_min > self.report_delay_max {
            return Err(ConfigError::Timers("report delays need 0 < minimum <= maximum"));
        }
        if self.report_max_wait < self.report_delay_max {
            return Err(ConfigError::Timers(
                "the longest wait for a report must not be shorter than the longest report delay",
            ));
        }
        if self.confirm_timeout <= self.report_delay_max {
            return Err(ConfigError::Timers(
                "the confirm timeout must be longer than the longest report delay",
            ));
        }
        if self.keepalive.is_zero() || self.report_refresh.is_zero() || self.report_retry.is_zero() {
            return Err(ConfigError::Timers(
                "keep-alive, report refresh and report retry must be positive",
            ));
        }
        let one_loss = self.keepalive.saturating_add(self.retry_jitter).saturating_mul(2);
        if self.member_timeout <= one_loss {
            return Err(ConfigError::Timers(
                "the member timeout must outlast two keep-alives, so one lost datagram never takes a member offline",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds_values_and_validate() {
        let timers = RegistrationTimers::default();
        assert_eq!(
            (timers.report_delay_min, timers.report_delay_max),
            (Duration::from_secs(3), Duration::from_secs(5))
        );
        assert_eq!(
            timers.retry_jitter,
            Duration::from_secs(1),
            "claim 41: up to one second"
        );
        assert_eq!(timers.converge_bound(), Duration::from_secs(52));
        assert_eq!(timers.validate(), Ok(()));
        assert_eq!(timers.scaled_down(20).validate(), Ok(()));
    }

    #[test]
    fn contradictory_settings_are_refused() {
        let key = SecretKey::parse(&"11".repeat(32)).expect("key");
        let mut config = RegistrationConfig::new("seg", "a", "127.0.0.1:1".parse().expect("address"), key);
        assert_eq!(config.validate(), Ok(()));
        config.location = "x".repeat(MAX_LOCATION_LEN + 1);
        assert!(matches!(config.validate(), Err(ConfigError::BadName(_))));
        config.location = "UTC".into();
        config.timers.member_timeout = config.timers.keepalive;
        assert!(matches!(config.validate(), Err(ConfigError::Timers(_))));
        config.timers = RegistrationTimers::default();
        config.timers.confirm_timeout = config.timers.report_delay_max;
        assert!(matches!(config.validate(), Err(ConfigError::Timers(_))));
    }
}
