//! Settings of the local distribution cores, with the seed's defaults where it gives them.

use std::net::SocketAddr;
use std::time::Duration;

use tern_wire::SecretKey;
use tern_wire::control::valid_name;
use tern_wire::mctp::{
    DEFAULT_BLOCK_FRAMES, DEFAULT_FRAME_DATA, DEFAULT_PARITY_FRAMES, MAX_BLOCK_FRAMES, MAX_CODED_FRAMES,
    MAX_FRAME_DATA, MctpLimits,
};

/// Who a core speaks as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The cluster key whose tag control messages carry.
    pub key: SecretKey,
    /// The network segment's name (messages of other segments are ignored).
    pub segment: String,
    /// This node's name.
    pub name: String,
    /// Where this node takes unicast control messages.
    pub address: SocketAddr,
}

/// Why settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A setting is out of its range.
    #[error("invalid local distribution setting: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

fn check_identity(identity: &Identity) -> Result<(), ConfigError> {
    if !valid_name(&identity.segment) || !valid_name(&identity.name) {
        return Err(invalid(
            "segment and node names are 1 to 64 bytes without control characters",
        ));
    }
    Ok(())
}

/// The group leader's session settings.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Who it speaks as.
    pub identity: Identity,
    /// Configured (highest) sending rate, bytes per second.
    pub rate: u64,
    /// Lowest rate the adjustment goes down to, bytes per second.
    pub floor_rate: u64,
    /// Multiplicative decrease when the NACK count rises: the new rate is the old times this (0 to 1).
    pub rate_decrease: f64,
    /// Additive increase when the NACK count falls, bytes per second per pass.
    pub rate_increase: u64,
    /// Data bytes per frame (header and data fit one Ethernet MTU up to [`MAX_FRAME_DATA`]).
    pub frame_size: u32,
    /// Most frames sent back to back (the token bucket's depth).
    pub burst_frames: u32,
    /// Source frames per block (repair passes send a block's parity frames).
    pub block_frames: u32,
    /// Parity frames each block has (numbers used once each, then again from 0).
    pub parity_frames: u32,
    /// Longest random delay the GL asks members to spread their status reports over (the seed's "up to
    /// approximately one second").
    pub status_spread: Duration,
    /// The spread asked for grows by this per member asked, up to [`Self::status_spread`]: a small
    /// segment's pass turns around quickly, a large one's reports do not arrive all at once. A status
    /// report is one datagram (at most ~1.4 KB): at one a millisecond on average, the GL's link carries
    /// about 12 Mbit/s of reports and its CPU a few percent, so 1 ms a member keeps a segment of any size
    /// from imploding while its passes turn around in tens of milliseconds (1 s from 1,000 members on).
    pub spread_per_member: Duration,
    /// How long after the spread the GL still waits for late status reports.
    pub report_margin: Duration,
    /// The longest the GL collects status reports after a pass, whatever the spread.
    pub report_window: Duration,
    /// Copies of the end-of-pass report request (a member that hears none does not report, and the GL
    /// waits out the window).
    pub request_copies: u32,
    /// Passes without fewer missing frames before the session ends (the seed's "ten tries").
    pub stall_passes: u32,
    /// Share of members that must be complete for a quorum (0 to 1, rounded up).
    pub quorum: f64,
    /// The session's announcement is sent again after every this many frames of a pass (the seed lets it
    /// ride on the periodic LA messages): a member that lost the first one, a single datagram, misses at
    /// most this many frames of the pass rather than all of them.
    pub reannounce_frames: u32,
    /// Bounds on what it accepts.
    pub limits: MctpLimits,
}

/// Frames of a pass between two copies of its announcement: about 360 KB at the default frame size, a
/// thirtieth of a second at 100 Mbit/s.
pub const DEFAULT_REANNOUNCE_FRAMES: u32 = 256;

impl SenderConfig {
    /// The defaults: 100 Mbit/s down to 1 Mbit/s, frames of [`DEFAULT_FRAME_DATA`] bytes in blocks of
    /// [`DEFAULT_BLOCK_FRAMES`] with [`DEFAULT_PARITY_FRAMES`] parity frames, status reports spread over 1 ms
    /// per member up to 1 s, a report window of at most 1.5 s, ten passes without progress, a quorum of
    /// half the members.
    pub fn new(identity: Identity) -> Self {
        SenderConfig {
            identity,
            rate: 12_500_000,
            floor_rate: 125_000,
            rate_decrease: 0.75,
            rate_increase: 1_250_000,
            frame_size: DEFAULT_FRAME_DATA,
            burst_frames: 32,
            block_frames: DEFAULT_BLOCK_FRAMES,
            parity_frames: DEFAULT_PARITY_FRAMES,
            status_spread: Duration::from_secs(1),
            spread_per_member: Duration::from_millis(1),
            report_margin: Duration::from_millis(200),
            report_window: Duration::from_millis(1500),
            request_copies: 2,
            stall_passes: 10,
            quorum: 0.5,
            reannounce_frames: DEFAULT_REANNOUNCE_FRAMES,
            limits: MctpLimits::default(),
        }
    }

    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_identity(&self.identity)?;
        if self.frame_size == 0 || self.frame_size as usize > MAX_FRAME_DATA {
            return Err(invalid(format!("frame size must be 1 to {MAX_FRAME_DATA} bytes")));
        }
        if self.floor_rate == 0 || self.floor_rate > self.rate {
            return Err(invalid("the floor rate must be positive and at most the rate"));
        }
        if !(self.rate_decrease > 0.0 && self.rate_decrease < 1.0) {
            return Err(invalid("the rate decrease is a factor between 0 and 1"));
        }
        if !(self.quorum > 0.0 && self.quorum <= 1.0) {
            return Err(invalid("the quorum is a share between 0 and 1"));
        }
        if self.burst_frames == 0 || self.stall_passes == 0 || self.request_copies == 0 || self.reannounce_frames == 0 {
            return Err(invalid(
                "burst frames, stall passes, request copies and frames between announcements are at least 1",
            ));
        }
        if self.block_frames == 0 || self.block_frames > MAX_BLOCK_FRAMES {
            return Err(invalid(format!("frames per block must be 1 to {MAX_BLOCK_FRAMES}")));
        }
        if self.parity_frames == 0 || self.block_frames.saturating_add(self.parity_frames) > MAX_CODED_FRAMES {
            return Err(invalid(format!(
                "parity frames per block must be 1 to {MAX_CODED_FRAMES} less the frames per block"
            )));
        }
        Ok(())
    }
}

/// A member's settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Who it speaks as.
    pub identity: Identity,
    /// Longest random delay before a status report (seed: "up to approximately one second"); the GL's
    /// request may ask for a shorter one.
    pub report_delay: Duration,
    /// The apply report goes at a random multiple (1 to [`Self::apply_multiples`]) of this interval.
    pub apply_interval: Duration,
    /// Largest multiple of the interval.
    pub apply_multiples: u32,
    /// Sessions followed at once; announcements of more are ignored and counted.
    pub max_sessions: usize,
    /// Bounds on what it accepts.
    pub limits: MctpLimits,
}

impl ReceiverConfig {
    /// The defaults: status reports within 1 s, apply reports at a random multiple of 1 s up to 10 s.
    pub fn new(identity: Identity) -> Self {
        ReceiverConfig {
            identity,
            report_delay: Duration::from_secs(1),
            apply_interval: Duration::from_secs(1),
            apply_multiples: 10,
            max_sessions: 16,
            limits: MctpLimits::default(),
        }
    }

    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_identity(&self.identity)?;
        if self.apply_multiples == 0 || self.max_sessions == 0 {
            return Err(invalid("apply multiples and sessions are at least 1"));
        }
        Ok(())
    }
}

/// The group leader's report collection settings.
#[derive(Debug, Clone)]
pub struct CollectConfig {
    /// Who it speaks as.
    pub identity: Identity,
    /// How long after the session ended the first look for missing reports comes (members report at a
    /// random multiple of their interval: this is the interval times the largest multiple, and a margin).
    pub first_wait: Duration,
    /// How long after a request the next look comes.
    pub request_wait: Duration,
    /// When more than this share of the members' reports is missing, one multicast request replaces the
    /// unicast ones (seed: "a configurable number such as half the number of group members").
    pub multicast_share: f64,
    /// Requests sent before the GL gives up on the missing reports.
    pub max_requests: u32,
    /// Bounds on what it accepts.
    pub limits: MctpLimits,
}

impl CollectConfig {
    /// The defaults: the first look 12 s after the session, then every 2 s, half the members, 5 requests.
    pub fn new(identity: Identity) -> Self {
        CollectConfig {
            identity,
            first_wait: Duration::from_secs(12),
            request_wait: Duration::from_secs(2),
            multicast_share: 0.5,
            max_requests: 5,
            limits: MctpLimits::default(),
        }
    }

    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_identity(&self.identity)?;
        if !(0.0..=1.0).contains(&self.multicast_share) {
            return Err(invalid("the multicast share is between 0 and 1"));
        }
        Ok(())
    }
}
