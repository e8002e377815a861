//! Messages of the control channel (seed `004_1419c51402506f7e.txt`, the transport service's discovery
//! phase): the group leader's periodic "Leader Alive" (LA) and a candidate's "Leader Claim" (LC) with its
//! priority claim, multicast over UDP to every member of a LAN network segment. The election that uses
//! them (Fig. 5's finite state machine) lives in `tern-node`'s `election` module.
//!
//! One datagram is one authenticated frame ([`crate::frame`]): the cluster key's HMAC-SHA256 tag covers
//! every byte, so a machine without the key can neither vote nor lead (the seed's "prevent unauthorized
//! systems from participation in the leader election"). The payload is JSON. A datagram is refused, with a
//! [`ControlError`] naming why, when it is over the size limit, untagged or wrongly tagged, malformed, too
//! old or too far in the future ([`ControlLimits::freshness`]), or a replay of a message already accepted
//! ([`ReplayGuard`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::frame::{self, FrameDecoder, FrameError};
use crate::key::SecretKey;

/// Frame kind of a Leader Alive (LA) message.
pub const KIND_LEADER_ALIVE: u8 = 0x41;
/// Frame kind of a Leader Claim (LC) message.
pub const KIND_LEADER_CLAIM: u8 = 0x43;
/// Default largest datagram accepted, in bytes (an LC with two names of [`MAX_NAME_LEN`] needs about 450).
pub const DEFAULT_MAX_DATAGRAM: usize = 1024;
/// Longest segment or node name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Default freshness window: a message whose send time differs from the receiver's clock by more is refused.
pub const DEFAULT_FRESHNESS: Duration = Duration::from_secs(60);
/// Default number of senders the replay guard remembers.
pub const DEFAULT_MAX_SENDERS: usize = 1024;
/// Incarnations (process runs) remembered per sender.
const INCARNATIONS_PER_SENDER: usize = 4;

/// A candidate's priority claim (seed 004: "voting is done by sending an LC message, with a priority
/// claim"; claim 37 lists the parameters). Claims compare field by field in declaration order, the higher
/// claim winning; ties are broken by the sender's name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Claim {
    /// An administrator forced this node to lead (the seed's override of the election).
    pub forced: bool,
    /// Rank in the list of pre-assigned leaders: 0 when not on it, otherwise the list's length minus the
    /// node's position (the first entry ranks highest).
    pub preassigned: u16,
    /// The node is or recently was the group leader ("a recently deposed GL may have the best claim").
    pub recent_leader: bool,
    /// Priority from configuration (`--leader-priority`), higher is stronger.
    pub priority: u8,
    /// Computing power available: CPUs × 1000 minus the load average × 1000, at least 0.
    pub cpu_millis: u32,
    /// Free disk space under the sites' root, in MiB.
    pub free_disk_mib: u64,
    /// Members of the segment this node knows of.
    pub members_known: u32,
    /// Seconds since the node started.
    pub uptime_s: u64,
}

/// What a control message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlBody {
    /// "Leader Alive": the sender is the group leader (sent every LA period while it is).
    LeaderAlive,
    /// "Leader Claim": the sender claims leadership with this priority.
    LeaderClaim(Claim),
}

/// One message on the control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlMessage {
    /// The network segment's name; members of other segments sharing the channel ignore it.
    pub segment: String,
    /// The sender's node name (its id in the election), at most [`MAX_NAME_LEN`] bytes.
    pub sender: String,
    /// Where members reach the sender (registration, reports).
    pub address: SocketAddr,
    /// Election term: a leader's LA carries the term it won, an LC the term it proposes (one more than
    /// the highest the sender has seen). Terms only grow, so a report signed by a newer leader wins.
    pub term: u64,
    /// Random id of the sender's process run; sequence numbers count within it.
    pub incarnation: u64,
    /// The sender's message counter within its incarnation, from 1, strictly increasing.
    pub seq: u64,
    /// The sender's clock when it sent the message, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// LA or LC.
    pub body: ControlBody,
}

/// A message whose tag was checked with the cluster key. Only [`decode`] makes one, so a value of this
/// type is proof of authenticity; a process holding several election cores (a simulation) may decode a
/// datagram once and hand the result to each of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified(ControlMessage);

impl Verified {
    /// The message.
    pub fn message(&self) -> &ControlMessage {
        &self.0
    }

    /// The message, by value.
    pub fn into_message(self) -> ControlMessage {
        self.0
    }
}

/// Bounds on what the control channel accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlLimits {
    /// Largest datagram, in bytes.
    pub max_datagram: usize,
    /// How far a message's send time may lie from the receiver's clock, either way. Nodes of a segment
    /// need clocks agreeing within this (NTP).
    pub freshness: Duration,
    /// Senders the replay guard remembers at once (the oldest is forgotten first).
    pub max_senders: usize,
}

impl Default for ControlLimits {
    fn default() -> Self {
        ControlLimits {
            max_datagram: DEFAULT_MAX_DATAGRAM,
            freshness: DEFAULT_FRESHNESS,
            max_senders: DEFAULT_MAX_SENDERS,
        }
    }
}

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The datagram is larger than [`ControlLimits::max_datagram`]. The message names no size: a driver
    /// reads one byte past the limit, so a larger datagram arrives cut there.
    #[error("control datagram over the limit of {limit} bytes")]
    Oversized {
        /// Its length as read (the limit plus one when the reader cut it there).
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not an authenticated frame: bad magic or version, declared length over the limit, or a tag that
    /// does not match (no key or the wrong key, or damaged bytes).
    #[error("control datagram refused: {0}")]
    Frame(#[from] FrameError),
    /// The datagram ends inside its frame.
    #[error("control datagram is truncated")]
    Truncated,
    /// Bytes follow the frame.
    #[error("control datagram has {0} bytes after its frame")]
    TrailingBytes(usize),
    /// A frame kind that is neither LA nor LC.
    #[error("unknown control message kind {0}")]
    UnknownKind(u8),
    /// The payload does not parse, or a field is out of bounds.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// The send time lies outside the freshness window.
    #[error("control message from {sender} sent at {sent_at_ms} ms is outside the freshness window at {now_ms} ms")]
    Stale {
        /// The sender.
        sender: String,
        /// Its send time.
        sent_at_ms: u64,
        /// The receiver's clock.
        now_ms: u64,
    },
    /// A message with this sender, incarnation and sequence number (or a later one) was accepted before.
    #[error("control message {seq} from {sender} was accepted before (replay)")]
    Replayed {
        /// The sender.
        sender: String,
        /// The replayed sequence number.
        seq: u64,
    },
}

impl ControlError {
    /// A short token for counters and log fields.
    pub fn reason(&self) -> &'static str {
        match self {
            ControlError::Oversized { .. } | ControlError::Frame(FrameError::TooLarge { .. }) => "oversized",
            ControlError::Frame(FrameError::BadTag) => "bad-tag",
            ControlError::Frame(_)
            | ControlError::Truncated
            | ControlError::TrailingBytes(_)
            | ControlError::UnknownKind(_)
            | ControlError::Malformed(_) => "malformed",
            ControlError::Stale { .. } => "stale",
            ControlError::Replayed { .. } => "replayed",
        }
    }
}

/// The JSON payload; the frame kind says LA or LC.
#[derive(Serialize, Deserialize)]
struct Payload {
    segment: String,
    sender: String,
    address: SocketAddr,
    term: u64,
    incarnation: u64,
    seq: u64,
    sent_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claim: Option<Claim>,
}

/// Encodes `message` as one datagram tagged with `key`. Names longer than [`MAX_NAME_LEN`] make a datagram
/// receivers refuse; the election checks its names when it starts.
pub fn encode(key: &SecretKey, message: &ControlMessage) -> Vec<u8> {
    let (kind, claim) = match message.body {
        ControlBody::LeaderAlive => (KIND_LEADER_ALIVE, None),
        ControlBody::LeaderClaim(claim) => (KIND_LEADER_CLAIM, Some(claim)),
    };
    let payload = Payload {
        segment: message.segment.clone(),
        sender: message.sender.clone(),
        address: message.address,
        term: message.term,
        incarnation: message.incarnation,
        seq: message.seq,
        sent_at_ms: message.sent_at_ms,
        claim,
    };
    // Serialising plain strings and numbers cannot fail.
    let json = serde_json::to_vec(&payload).unwrap_or_default();
    frame::encode(key, kind, &json)
}

/// Decodes one datagram, checking its size, then its tag, then its fields. Stateless: replays are the
/// [`ReplayGuard`]'s business.
pub fn decode(key: &SecretKey, datagram: &[u8], limits: &ControlLimits) -> Result<Verified, ControlError> {
    let frame = open_frame(key, datagram, limits.max_datagram)?;
    if frame.kind != KIND_LEADER_ALIVE && frame.kind != KIND_LEADER_CLAIM {
        return Err(ControlError::UnknownKind(frame.kind));
    }
    let payload: Payload =
        serde_json::from_slice(&frame.payload).map_err(|e| ControlError::Malformed(e.to_string()))?;
    let body = match (frame.kind, payload.claim) {
        (KIND_LEADER_ALIVE, None) => ControlBody::LeaderAlive,
        (KIND_LEADER_CLAIM, Some(claim)) => ControlBody::LeaderClaim(claim),
        (KIND_LEADER_ALIVE, Some(_)) => return Err(ControlError::Malformed("leader alive with a claim".into())),
        _ => return Err(ControlError::Malformed("leader claim without a claim".into())),
    };
    check_name("segment", &payload.segment)?;
    check_name("sender", &payload.sender)?;
    Ok(Verified(ControlMessage {
        segment: payload.segment,
        sender: payload.sender,
        address: payload.address,
        term: payload.term,
        incarnation: payload.incarnation,
        seq: payload.seq,
        sent_at_ms: payload.sent_at_ms,
        body,
    }))
}

/// Opens one datagram (or message body) that must be exactly one authenticated frame of at most
/// `max_len` bytes: the size first, then the tag. Shared by the control channel and the segment messages
/// ([`crate::segment`]).
pub(crate) fn open_frame(key: &SecretKey, datagram: &[u8], max_len: usize) -> Result<frame::Frame, ControlError> {
    if datagram.len() > max_len {
        return Err(ControlError::Oversized {
            len: datagram.len(),
            limit: max_len,
        });
    }
    let max_payload = max_len.saturating_sub(frame::HEADER_LEN + frame::TAG_LEN);
    let mut decoder = FrameDecoder::new(key.clone(), max_payload);
    decoder.push(datagram);
    let Some(frame) = decoder.next_frame()? else {
        return Err(ControlError::Truncated);
    };
    if decoder.buffered() > 0 {
        return Err(ControlError::TrailingBytes(decoder.buffered()));
    }
    Ok(frame)
}

/// Whether `name` can be a segment or node name: 1 to [`MAX_NAME_LEN`] bytes, no control characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

/// `Ok` for a [`valid_name`]; else a malformed-message error naming `field`.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), ControlError> {
    if valid_name(name) {
        return Ok(());
    }
    Err(ControlError::Malformed(format!(
        "{field} must be 1 to {MAX_NAME_LEN} bytes without control characters"
    )))
}

/// A frame's JSON payload as `T`; a payload that does not parse is a malformed message. Shared by the
/// control channel's sibling protocols ([`crate::segment`], [`crate::mctp`], [`crate::community`]).
pub(crate) fn parse_payload<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(payload).map_err(|error| ControlError::Malformed(error.to_string()))
}

/// A malformed-message error.
pub(crate) fn malformed(message: impl Into<String>) -> ControlError {
    ControlError::Malformed(message.into())
}

/// `Ok` when `text` is at most `max_len` bytes without control characters; else an error naming `field`.
pub(crate) fn check_text(field: &str, text: &str, max_len: usize) -> Result<(), ControlError> {
    if text.len() <= max_len && !text.chars().any(char::is_control) {
        return Ok(());
    }
    Err(malformed(format!(
        "{field} must be at most {max_len} bytes without control characters"
    )))
}

/// `Ok` when `count` is within `limit`; else an error naming `field`.
pub(crate) fn check_count(field: &str, count: usize, limit: usize) -> Result<(), ControlError> {
    if count <= limit {
        return Ok(());
    }
    Err(malformed(format!("{count} {field} are over the limit of {limit}")))
}

/// What the [`ReplayGuard`] looks at in a message: who sent it, in which process run, its number in that
/// run, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp<'a> {
    /// The sender's name.
    pub sender: &'a str,
    /// Random id of the sender's process run.
    pub incarnation: u64,
    /// The sender's message counter within its incarnation.
    pub seq: u64,
    /// The sender's clock when it sent the message, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
}

impl<'a> Stamp<'a> {
    /// The stamp of a control message.
    pub fn of(message: &'a ControlMessage) -> Self {
        Stamp {
            sender: &message.sender,
            incarnation: message.incarnation,
            seq: message.seq,
            sent_at_ms: message.sent_at_ms,
        }
    }
}

/// What the guard remembers of one incarnation of a sender.
#[derive(Debug, Clone, Copy)]
struct SeenIncarnation {
    incarnation: u64,
    highest_seq: u64,
    last_accepted_ms: u64,
}

/// Refuses replayed and stale messages. For each sender it remembers, per incarnation, the highest
/// sequence number accepted; a message must be fresh ([`ControlLimits::freshness`]) and carry a higher
/// number. A record is forgotten two to three freshness windows after its last message (records are swept
/// once per window): any replay of what it guarded is stale by then. Sans-IO: the receiver's clock comes in as a parameter.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    limits: ControlLimits,
    senders: HashMap<String, Vec<SeenIncarnation>>,
    /// When to next drop records older than two windows (at most once per window).
    next_sweep_ms: u64,
}

impl ReplayGuard {
    /// An empty guard.
    pub fn new(limits: ControlLimits) -> Self {
        ReplayGuard {
            limits,
            senders: HashMap::new(),
            next_sweep_ms: 0,
        }
    }

    /// Senders remembered.
    pub fn senders(&self) -> usize {
        self.senders.len()
    }

    /// Accepts `message` (and remembers it) or says why not. `now_ms` is the receiver's clock,
    /// milliseconds since the Unix epoch.
    pub fn check(&mut self, message: &ControlMessage, now_ms: u64) -> Result<(), ControlError> {
        self.check_stamp(&Stamp::of(message), now_ms)
    }

    /// [`ReplayGuard::check`] for any message that carries a [`Stamp`] (the segment messages of
    /// [`crate::segment`] do).
    pub fn check_stamp(&mut self, message: &Stamp<'_>, now_ms: u64) -> Result<(), ControlError> {
        let window_ms = u64::try_from(self.limits.freshness.as_millis()).unwrap_or(u64::MAX);
        let too_old = message.sent_at_ms.saturating_add(window_ms) < now_ms;
        let too_new = message.sent_at_ms > now_ms.saturating_add(window_ms);
        if too_old || too_new {
            return Err(ControlError::Stale {
                sender: message.sender.to_string(),
                sent_at_ms: message.sent_at_ms,
                now_ms,
            });
        }
        if now_ms >= self.next_sweep_ms {
            self.forget_older_than(now_ms.saturating_sub(window_ms.saturating_mul(2)));
            self.next_sweep_ms = now_ms.saturating_add(window_ms);
        }
        let seen = SeenIncarnation {
            incarnation: message.incarnation,
            highest_seq: message.seq,
            last_accepted_ms: now_ms,
        };
        match self.senders.get_mut(message.sender) {
            Some(runs) => admit(runs, seen, message.sender)?,
            None => {
                self.senders.insert(message.sender.to_string(), vec![seen]);
            }
        }
        if self.senders.len() > self.limits.max_senders {
            self.forget_least_recent();
        }
        Ok(())
    }

    fn forget_older_than(&mut self, cutoff_ms: u64) {
        self.senders.retain(|_, runs| {
            runs.retain(|run| run.last_accepted_ms >= cutoff_ms);
            !runs.is_empty()
        });
    }

    fn forget_least_recent(&mut self) {
        let least_recent = self
            .senders
            .iter()
            .map(|(sender, runs)| (runs.iter().map(|run| run.last_accepted_ms).max().unwrap_or(0), sender))
            .min()
            .map(|(_, sender)| sender.clone());
        if let Some(sender) = least_recent {
            self.senders.remove(&sender);
        }
    }
}

/// Records `seen` among a sender's incarnations, or refuses it as a replay.
fn admit(runs: &mut Vec<SeenIncarnation>, seen: SeenIncarnation, sender: &str) -> Result<(), ControlError> {
    match runs.iter_mut().find(|run| run.incarnation == seen.incarnation) {
        Some(run) if seen.highest_seq <= run.highest_seq => Err(ControlError::Replayed {
            sender: sender.to_string(),
            seq: seen.highest_seq,
        }),
        Some(run) => {
            *run = seen;
            Ok(())
        }
        None => {
            if runs.len() >= INCARNATIONS_PER_SENDER {
                runs.sort_by_key(|run| std::cmp::Reverse(run.last_accepted_ms));
                runs.truncate(INCARNATIONS_PER_SENDER - 1);
            }
            runs.push(seen);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::parse(&"c0".repeat(32)).expect("key")
    }

    fn claim_message() -> ControlMessage {
        ControlMessage {
            segment: "rack-1".into(),
            sender: "node-a".into(),
            address: "10.0.0.1:7100".parse().expect("address"),
            term: 3,
            incarnation: 0xfeed,
            seq: 7,
            sent_at_ms: 1_000_000,
            body: ControlBody::LeaderClaim(Claim {
                recent_leader: true,
                priority: 200,
                cpu_millis: 3500,
                free_disk_mib: 10_000,
                members_known: 4,
                uptime_s: 60,
                ..Claim::default()
            }),
        }
    }

    #[test]
    fn leader_alive_and_claim_round_trip() {
        let limits = ControlLimits::default();
        let claim = claim_message();
        let alive = ControlMessage {
            body: ControlBody::LeaderAlive,
            ..claim.clone()
        };
        for message in [claim, alive] {
            let datagram = encode(&key(), &message);
            assert!(datagram.len() <= limits.max_datagram);
            assert_eq!(
                decode(&key(), &datagram, &limits).expect("decodes").into_message(),
                message
            );
        }
    }

    #[test]
    fn longest_names_fit_the_default_datagram() {
        let message = ControlMessage {
            segment: "s".repeat(MAX_NAME_LEN),
            sender: "n".repeat(MAX_NAME_LEN),
            address: "[fd00:1:2:3:4:5:6:7]:65535".parse().expect("address"),
            term: u64::MAX,
            incarnation: u64::MAX,
            seq: u64::MAX,
            sent_at_ms: u64::MAX,
            body: ControlBody::LeaderClaim(Claim {
                forced: true,
                preassigned: u16::MAX,
                recent_leader: true,
                priority: u8::MAX,
                cpu_millis: u32::MAX,
                free_disk_mib: u64::MAX,
                members_known: u32::MAX,
                uptime_s: u64::MAX,
            }),
        };
        let datagram = encode(&key(), &message);
        assert!(datagram.len() <= DEFAULT_MAX_DATAGRAM, "{} bytes", datagram.len());
        assert!(decode(&key(), &datagram, &ControlLimits::default()).is_ok());
    }

    #[test]
    fn forged_damaged_oversized_and_malformed_datagrams_are_refused_by_name() {
        let limits = ControlLimits::default();
        let good = encode(&key(), &claim_message());

        let other_key = SecretKey::parse(&"0d".repeat(32)).expect("key");
        let forged = encode(&other_key, &claim_message());
        let refused = decode(&key(), &forged, &limits).expect_err("forged");
        assert_eq!(refused, ControlError::Frame(FrameError::BadTag));
        assert_eq!(refused.reason(), "bad-tag");

        let mut flipped = good.clone();
        flipped[frame::HEADER_LEN + 5] ^= 0x20;
        assert_eq!(
            decode(&key(), &flipped, &limits).expect_err("damaged").reason(),
            "bad-tag"
        );

        let small = ControlLimits {
            max_datagram: 64,
            ..limits
        };
        let refused = decode(&key(), &good, &small).expect_err("oversized");
        assert!(matches!(refused, ControlError::Oversized { limit: 64, .. }));
        assert_eq!(refused.reason(), "oversized");

        assert_eq!(
            decode(&key(), &good[..good.len() - 1], &limits),
            Err(ControlError::Truncated)
        );
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode(&key(), &trailing, &limits), Err(ControlError::TrailingBytes(1)));

        let unknown = frame::encode(&key(), 0x7f, b"{}");
        assert_eq!(decode(&key(), &unknown, &limits), Err(ControlError::UnknownKind(0x7f)));

        let not_json = frame::encode(&key(), KIND_LEADER_ALIVE, b"{not json");
        assert_eq!(
            decode(&key(), &not_json, &limits).expect_err("not json").reason(),
            "malformed"
        );

        let claimless =
            br#"{"segment":"s","sender":"a","address":"10.0.0.1:1","term":1,"incarnation":1,"seq":1,"sent_at_ms":1}"#;
        let claim_without_claim = frame::encode(&key(), KIND_LEADER_CLAIM, claimless);
        assert!(matches!(
            decode(&key(), &claim_without_claim, &limits),
            Err(ControlError::Malformed(_))
        ));

        let long_name = ControlMessage {
            sender: "x".repeat(MAX_NAME_LEN + 1),
            ..claim_message()
        };
        assert!(matches!(
            decode(&key(), &encode(&key(), &long_name), &limits),
            Err(ControlError::Malformed(_))
        ));
        let control_char = ControlMessage {
            segment: "a\nb".into(),
            ..claim_message()
        };
        assert!(matches!(
            decode(&key(), &encode(&key(), &control_char), &limits),
            Err(ControlError::Malformed(_))
        ));
    }

    #[test]
    fn replays_and_stale_messages_are_refused() {
        let limits = ControlLimits::default();
        let window_ms = limits.freshness.as_millis() as u64;
        let mut guard = ReplayGuard::new(limits);
        let first = claim_message();
        let now = first.sent_at_ms + 5;
        assert_eq!(guard.check(&first, now), Ok(()));
        assert_eq!(
            guard.check(&first, now + 1),
            Err(ControlError::Replayed {
                sender: "node-a".into(),
                seq: 7
            })
        );
        let older = ControlMessage {
            seq: 6,
            ..first.clone()
        };
        assert_eq!(guard.check(&older, now + 1).expect_err("older").reason(), "replayed");
        let next = ControlMessage {
            seq: 8,
            ..first.clone()
        };
        assert_eq!(guard.check(&next, now + 2), Ok(()));

        // A restarted sender counts from 1 again under a new incarnation.
        let restarted = ControlMessage {
            incarnation: 0xbeef,
            seq: 1,
            ..first.clone()
        };
        assert_eq!(guard.check(&restarted, now + 3), Ok(()));
        assert_eq!(guard.check(&next, now + 4).expect_err("replay").reason(), "replayed");

        let stale = ControlMessage {
            seq: 100,
            sent_at_ms: now - window_ms - 1,
            ..first.clone()
        };
        assert_eq!(guard.check(&stale, now).expect_err("stale").reason(), "stale");
        let future = ControlMessage {
            seq: 100,
            sent_at_ms: now + window_ms + 1,
            ..first.clone()
        };
        assert_eq!(guard.check(&future, now).expect_err("future").reason(), "stale");
        // Arithmetic on the sender's clock saturates.
        let extreme = ControlMessage {
            seq: 101,
            sent_at_ms: u64::MAX,
            ..first
        };
        assert_eq!(guard.check(&extreme, u64::MAX).map_err(|e| e.reason()), Ok(()));
    }

    #[test]
    fn the_guard_forgets_old_senders_and_stays_bounded() {
        let limits = ControlLimits {
            max_senders: 3,
            ..ControlLimits::default()
        };
        let window_ms = limits.freshness.as_millis() as u64;
        let mut guard = ReplayGuard::new(limits);
        let base = claim_message();
        for (index, sender) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let message = ControlMessage {
                sender: sender.into(),
                sent_at_ms: base.sent_at_ms + index as u64,
                ..base.clone()
            };
            guard.check(&message, message.sent_at_ms).expect("fresh");
        }
        assert_eq!(guard.senders(), 3, "the least recent sender was forgotten");
        let much_later = base.sent_at_ms + 3 * window_ms;
        let late = ControlMessage {
            sender: "e".into(),
            sent_at_ms: much_later,
            ..base
        };
        guard.check(&late, much_later).expect("fresh");
        assert_eq!(guard.senders(), 1, "records older than two windows are dropped");
    }
}
