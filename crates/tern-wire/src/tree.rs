//! Messages of the store-and-forward tree (seed `004_1419c51402506f7e.txt`, global distribution, Figs. 6
//! and 7): the CCM's *notification* to a group leader (GL) — the source to obtain the assignment from and
//! the GL it is for — the GL's *holding* report, its request for the *next group leader* and the CCM's
//! answer (serve this GL / done, the seed's null address / ask again), and the GL's *assignment status
//! report* on its members. They travel as HTTP bodies between the mover and the nodes' agents.
//!
//! Every message is one authenticated frame ([`crate::frame`], the framing of the control channel,
//! [`crate::control`]): the cluster key's HMAC-SHA256 tag covers every byte, and the JSON payload is an
//! [`Envelope`] naming its sender, a random nonce and the send time, so that a forged message (no key),
//! a stale one or a replay ([`NonceGuard`]) is refused with a [`TreeError`] naming why. A notification is
//! moreover signed by the mover's ed25519 key ([`SignedNotification`]): a GL forwards the CCM's
//! notification to the next GL as the seed says, and cannot change its source or its list of members; a
//! node refuses a notification naming a source that is neither the mover nor one of the job's leaders
//! ([`Notification::source_allowed`]). Every field is bounded ([`TreeLimits`], the `MAX_*` constants).
//!
//! A node's registration with the mover ([`crate::mover::Registration`]) travels in the same envelope
//! ([`TreeMessage::Register`]) when the mover and the nodes share a cluster key, so that a machine
//! without the key cannot offer itself as a node, nor take over a node's name and its deliveries.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::control::{ControlError, open_frame, valid_name};
use crate::frame::{self, FrameError};
use crate::key::SecretKey;

/// Frame kind of a tree message.
pub const KIND_TREE: u8 = 0x54;
/// Default largest message accepted, in bytes (a notification listing [`MAX_MEMBERS`] members fits).
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// Default freshness window: a message whose send time differs from the receiver's clock by more is
/// refused (the mover and the nodes need clocks agreeing within this: NTP).
pub const DEFAULT_FRESHNESS: Duration = Duration::from_secs(60);
/// Default number of nonces the replay guard remembers.
pub const DEFAULT_MAX_NONCES: usize = 65_536;
/// Longest job or transfer id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest URL, in bytes.
pub const MAX_URL_LEN: usize = 1024;
/// Most members one notification or status report lists.
pub const MAX_MEMBERS: usize = 4096;
/// Most leaders one notification lists.
pub const MAX_LEADERS: usize = 4096;
/// Most content groups, and most sites, one registration lists.
pub const MAX_REGISTERED: usize = 4096;
/// Longest failure reason, in bytes ([`reason`] shortens longer ones).
pub const MAX_REASON_LEN: usize = 512;

/// Which phase of the two-phase delivery an assignment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The content assignment, applied into a temporary tree.
    Prepare,
    /// The assignment that switches (commit, rollback, remove).
    Commit,
}

impl Phase {
    /// `prepare` or `commit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Commit => "commit",
        }
    }
}

/// Where a GL obtains the assignment (seed 004: "the address of a server from which the GL is to obtain a
/// copy of the assignment").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Source {
    /// The mover, the root of the tree: `MOVER/api/tree/assignments/TRANSFER` at the URL the node was
    /// configured with.
    Mover,
    /// A GL that holds (or is receiving) a copy: `URL/tree/assignments/TRANSFER`.
    Leader {
        /// Its node name.
        name: String,
        /// Its agent's URL.
        url: String,
    },
}

/// A node the target GL delivers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Its node name.
    pub name: String,
    /// Its agent's URL (where it takes `POST /assignments`).
    pub url: String,
}

/// The CCM's notification to a GL: obtain the assignment `transfer` from `source`, then ask for the next
/// group leader, then deliver to `members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// The job.
    pub job: String,
    /// The assignment's transfer id, unique per delivery (the name it is fetched and spooled under).
    pub transfer: String,
    /// Which phase it is.
    pub phase: Phase,
    /// Where to obtain it.
    pub source: Source,
    /// The GL it is for (its node name).
    pub target: String,
    /// That GL's URL (where whoever forwards the notification sends it).
    pub target_url: String,
    /// Bytes of the assignment.
    pub size: u64,
    /// The assignment's signed blake3 hash (hex): the copy obtained must carry this one.
    pub hash: String,
    /// The job's group leaders (node names): the only GLs a notification may name as source.
    pub leaders: Vec<String>,
    /// The target's members to deliver to (the target itself among them when it is a target).
    pub members: Vec<Member>,
    /// When the mover issued it, milliseconds since the Unix epoch.
    pub issued_ms: u64,
}

impl Notification {
    /// Whether the source is the mover or one of the job's leaders other than the target itself.
    pub fn source_allowed(&self) -> bool {
        match &self.source {
            Source::Mover => true,
            Source::Leader { name, .. } => *name != self.target && self.leaders.iter().any(|leader| leader == name),
        }
    }

    fn validate(&self) -> Result<(), TreeError> {
        check_id("job", &self.job)?;
        check_id("transfer", &self.transfer)?;
        check_name("target", &self.target)?;
        check_url("target_url", &self.target_url)?;
        if let Source::Leader { name, url } = &self.source {
            check_name("source name", name)?;
            check_url("source url", url)?;
        }
        if self.hash.len() != 64 || !self.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TreeError::Malformed("hash must be 64 hex digits".into()));
        }
        if self.leaders.len() > MAX_LEADERS {
            return Err(TreeError::Malformed(format!("more than {MAX_LEADERS} leaders")));
        }
        for leader in &self.leaders {
            check_name("leader", leader)?;
        }
        check_members(&self.members)
    }
}

/// A [`Notification`] signed by the mover (ed25519 over its JSON): GLs forward it unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedNotification {
    /// The notification.
    pub notification: Notification,
    /// The mover's signature (hex, 64 bytes) over the notification's JSON.
    pub signature: String,
}

impl SignedNotification {
    /// Signs `notification` with the mover's key.
    pub fn sign(notification: Notification, key: &SigningKey) -> SignedNotification {
        let signature = key.sign(&signed_bytes(&notification));
        SignedNotification {
            notification,
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// Checks the mover's signature.
    pub fn verify(&self, mover: &VerifyingKey) -> Result<(), TreeError> {
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut signature).map_err(|_| TreeError::Signature)?;
        mover
            .verify(&signed_bytes(&self.notification), &Signature::from_bytes(&signature))
            .map_err(|_| TreeError::Signature)
    }
}

/// The bytes a notification's signature covers: its JSON, fields in declaration order.
fn signed_bytes(notification: &Notification) -> Vec<u8> {
    // Serialising plain strings, numbers and enums cannot fail.
    serde_json::to_vec(notification).unwrap_or_default()
}

/// How far a GL got obtaining the assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Holding {
    /// Receiving: it may already serve what it has to another GL (cut-through; every copy is verified end
    /// to end by the signed hash).
    Receiving {
        /// Bytes received so far.
        bytes: u64,
    },
    /// Holds the whole assignment, its signature and hash checked.
    Complete,
    /// Could not obtain it (its source went away, the copy did not verify, the disk is full).
    Failed {
        /// Why, in lowercase words.
        reason: String,
    },
}

/// A GL's report on obtaining the assignment (seed 004 claim 20 (E): "reporting completion of said
/// receiving").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldingReport {
    /// The job.
    pub job: String,
    /// The transfer.
    pub transfer: String,
    /// The reporting GL.
    pub leader: String,
    /// How far it got.
    pub holding: Holding,
}

/// A holder's request for the next group leader to serve (seed 004: "the GL requests another GL address
/// from the CCM").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextRequest {
    /// The job.
    pub job: String,
    /// The transfer.
    pub transfer: String,
    /// The asking GL.
    pub leader: String,
}

/// The CCM's answer to a [`NextRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case", deny_unknown_fields)]
pub enum NextAnswer {
    /// Send this notification (which names you as source) to its target, and serve it.
    Serve {
        /// The notification to forward.
        notification: Box<SignedNotification>,
    },
    /// None left for you (the seed's null address): deliver to your members.
    Done,
    /// GLs are still being served and may yet fail: ask again after this long.
    AskAgain {
        /// Milliseconds to wait.
        after_ms: u64,
    },
}

/// A member the GL could not deliver to, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberFailure {
    /// The member's node name.
    pub node: String,
    /// Why, in lowercase words.
    pub reason: String,
}

/// A GL's assignment status report: which of its members applied the assignment (seed 004: local
/// distribution's status reports, summed up for the CCM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// The job.
    pub job: String,
    /// The transfer.
    pub transfer: String,
    /// The reporting GL.
    pub leader: String,
    /// Members that applied it.
    pub completed: Vec<String>,
    /// Members that did not.
    pub failed: Vec<MemberFailure>,
}

/// What a tree message says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TreeMessage {
    /// Mover (or a GL forwarding it) → GL.
    Notify {
        /// The signed notification.
        notification: SignedNotification,
    },
    /// GL → mover.
    Holding {
        /// The report.
        report: HoldingReport,
    },
    /// GL → mover.
    Next {
        /// The request.
        request: NextRequest,
    },
    /// Mover → GL, the answer to [`TreeMessage::Next`].
    Answer {
        /// The answer.
        answer: NextAnswer,
    },
    /// GL → mover.
    Status {
        /// The report.
        report: StatusReport,
    },
    /// Node → mover: its registration (`POST /api/nodes/register`); the sender is the node it registers.
    Register {
        /// The registration.
        registration: crate::mover::Registration,
    },
}

impl TreeMessage {
    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            TreeMessage::Notify { .. } => "notify",
            TreeMessage::Holding { .. } => "holding",
            TreeMessage::Next { .. } => "next",
            TreeMessage::Answer { .. } => "answer",
            TreeMessage::Status { .. } => "status",
            TreeMessage::Register { .. } => "register",
        }
    }

    fn validate(&self) -> Result<(), TreeError> {
        let ids = |job: &str, transfer: &str, leader: &str| -> Result<(), TreeError> {
            check_id("job", job)?;
            check_id("transfer", transfer)?;
            check_name("leader", leader)
        };
        match self {
            TreeMessage::Notify { notification } => notification.notification.validate(),
            TreeMessage::Holding { report } => {
                ids(&report.job, &report.transfer, &report.leader)?;
                match &report.holding {
                    Holding::Failed { reason } => check_reason(reason),
                    Holding::Receiving { .. } | Holding::Complete => Ok(()),
                }
            }
            TreeMessage::Next { request } => ids(&request.job, &request.transfer, &request.leader),
            TreeMessage::Answer { answer } => match answer {
                NextAnswer::Serve { notification } => notification.notification.validate(),
                NextAnswer::Done | NextAnswer::AskAgain { .. } => Ok(()),
            },
            TreeMessage::Status { report } => {
                ids(&report.job, &report.transfer, &report.leader)?;
                if report.completed.len() + report.failed.len() > MAX_MEMBERS {
                    return Err(TreeError::Malformed(format!("more than {MAX_MEMBERS} members")));
                }
                for node in &report.completed {
                    check_name("member", node)?;
                }
                for failure in &report.failed {
                    check_name("member", &failure.node)?;
                    check_reason(&failure.reason)?;
                }
                Ok(())
            }
            TreeMessage::Register { registration } => {
                check_name("node", &registration.name)?;
                check_url("node url", &registration.url)?;
                let lists = [
                    registration.groups.len(),
                    registration.versions.len(),
                    registration.prepared.len(),
                ];
                if lists.into_iter().any(|len| len > MAX_REGISTERED) {
                    return Err(TreeError::Malformed(format!(
                        "more than {MAX_REGISTERED} groups or sites"
                    )));
                }
                let names = registration.groups.iter();
                let sites = registration.versions.keys().chain(registration.prepared.keys());
                for name in names.chain(sites) {
                    check_name("group or site", name)?;
                }
                Ok(())
            }
        }
    }
}

/// One message with who sent it and when: the unit that is tagged and checked for replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The sender's node name (`mover` for the mover).
    pub sender: String,
    /// A random number, never reused by the sender within the freshness window.
    pub nonce: u64,
    /// The sender's clock when it sent the message, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// The message.
    pub message: TreeMessage,
}

impl Envelope {
    /// `message` from `sender`, sent now (`now_ms`), with a fresh random nonce.
    pub fn new(sender: &str, message: TreeMessage, now_ms: u64) -> Envelope {
        let mut nonce = [0u8; 8];
        // Without randomness the nonce is the clock's: still unique per sender unless two messages share
        // a millisecond, which the receiver then refuses as a replay (the sender retries).
        if getrandom::fill(&mut nonce).is_err() {
            nonce = now_ms.to_be_bytes();
        }
        Envelope {
            sender: sender.to_string(),
            nonce: u64::from_be_bytes(nonce),
            sent_at_ms: now_ms,
            message,
        }
    }
}

/// Bounds on what a receiver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeLimits {
    /// Largest message (frame included), in bytes.
    pub max_message: usize,
    /// How far a message's send time may lie from the receiver's clock, either way.
    pub freshness: Duration,
    /// Nonces the replay guard remembers at once (the oldest is forgotten first).
    pub max_nonces: usize,
}

impl Default for TreeLimits {
    fn default() -> Self {
        TreeLimits {
            max_message: DEFAULT_MAX_MESSAGE,
            freshness: DEFAULT_FRESHNESS,
            max_nonces: DEFAULT_MAX_NONCES,
        }
    }
}

/// Why a tree message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// Larger than [`TreeLimits::max_message`].
    #[error("tree message of {len} bytes is over the limit of {limit}")]
    Oversized {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not an authenticated frame: bad magic or version, or a tag that does not match (no cluster key or
    /// another one: check that the mover and every node have the same `--cluster-key`).
    #[error("tree message refused: {0}")]
    Frame(#[from] FrameError),
    /// The bytes end inside the frame.
    #[error("tree message is truncated")]
    Truncated,
    /// Bytes follow the frame.
    #[error("tree message has {0} bytes after its frame")]
    TrailingBytes(usize),
    /// A frame kind other than [`KIND_TREE`].
    #[error("unknown tree message kind {0}")]
    UnknownKind(u8),
    /// The payload does not parse, or a field is out of bounds.
    #[error("malformed tree message: {0}")]
    Malformed(String),
    /// The send time lies outside the freshness window (or the clocks disagree: check NTP).
    #[error("tree message from {sender} sent at {sent_at_ms} ms is outside the freshness window at {now_ms} ms")]
    Stale {
        /// The sender.
        sender: String,
        /// Its send time.
        sent_at_ms: u64,
        /// The receiver's clock.
        now_ms: u64,
    },
    /// This sender's nonce was seen before.
    #[error("tree message {nonce} from {sender} was accepted before (replay)")]
    Replayed {
        /// The sender.
        sender: String,
        /// The nonce.
        nonce: u64,
    },
    /// A notification whose signature is not the mover's.
    #[error("notification signature does not verify with the mover's public key")]
    Signature,
    /// A notification naming a source outside the job's leaders and the mover.
    #[error("notification names source {0}, which is neither the mover nor one of the job's group leaders")]
    Source(String),
}

impl TreeError {
    /// A short token for counters and log fields.
    pub fn reason(&self) -> &'static str {
        match self {
            TreeError::Oversized { .. } | TreeError::Frame(FrameError::TooLarge { .. }) => "oversized",
            TreeError::Frame(FrameError::BadTag) => "bad-tag",
            TreeError::Frame(_)
            | TreeError::Truncated
            | TreeError::TrailingBytes(_)
            | TreeError::UnknownKind(_)
            | TreeError::Malformed(_) => "malformed",
            TreeError::Stale { .. } => "stale",
            TreeError::Replayed { .. } => "replayed",
            TreeError::Signature => "bad-signature",
            TreeError::Source(_) => "bad-source",
        }
    }
}

/// Encodes `envelope` as one frame tagged with the cluster key.
pub fn encode(key: &SecretKey, envelope: &Envelope) -> Vec<u8> {
    // Serialising plain strings, numbers and enums cannot fail.
    let json = serde_json::to_vec(envelope).unwrap_or_default();
    frame::encode(key, KIND_TREE, &json)
}

/// Decodes one message, checking its size, then its tag, then its fields. Stateless: freshness and replays
/// are the [`NonceGuard`]'s business, the notification's signature [`SignedNotification::verify`]'s.
pub fn decode(key: &SecretKey, bytes: &[u8], limits: &TreeLimits) -> Result<Envelope, TreeError> {
    let frame = open_frame(key, bytes, limits.max_message).map_err(|error| match error {
        ControlError::Oversized { len, limit } => TreeError::Oversized { len, limit },
        ControlError::Frame(error) => TreeError::Frame(error),
        ControlError::Truncated => TreeError::Truncated,
        ControlError::TrailingBytes(count) => TreeError::TrailingBytes(count),
        other => TreeError::Malformed(other.to_string()),
    })?;
    if frame.kind != KIND_TREE {
        return Err(TreeError::UnknownKind(frame.kind));
    }
    let envelope: Envelope = serde_json::from_slice(&frame.payload).map_err(|e| TreeError::Malformed(e.to_string()))?;
    check_name("sender", &envelope.sender)?;
    envelope.message.validate()?;
    Ok(envelope)
}

/// `text` cut to at most [`MAX_REASON_LEN`] bytes (at a character boundary), for a failure reason.
pub fn reason(text: &str) -> String {
    crate::cut_at(text, MAX_REASON_LEN).to_string()
}

/// The request header that carries a [`fetch_token`] when a GL obtains an assignment copy from its source
/// (`GET /api/tree/assignments/ID?for=NODE` on the mover, `GET /tree/assignments/ID?for=NODE` on a GL).
pub const FETCH_TOKEN_HEADER: &str = "tern-tree-token";

/// The token node `requester` presents to fetch the copy of `transfer` from its source: lowercase hex of
/// HMAC-SHA256 with the cluster key over a label, the transfer id and the requester's name. Only a machine
/// with the cluster key can compute it, so an assignment (site content, possibly not yet published) is
/// never handed to a client that merely reaches the mover's or a GL's port; it names one transfer and one
/// requester, so a token seen on the wire fetches nothing else.
pub fn fetch_token(key: &SecretKey, transfer: &str, requester: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(b"tern tree fetch v1\0");
    mac.update(transfer.as_bytes());
    mac.update(b"\0");
    mac.update(requester.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `presented` is [`fetch_token`]`(key, transfer, requester)`, compared in constant time.
pub fn fetch_token_matches(key: &SecretKey, transfer: &str, requester: &str, presented: &str) -> bool {
    let expected = fetch_token(key, transfer, requester);
    expected.len() == presented.len() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// Whether `id` can be a job or transfer id: 1 to [`MAX_ID_LEN`] bytes of letters, digits, `-`, `_` and
/// `.`, not starting with `.` (it names a spool file).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_id(field: &str, id: &str) -> Result<(), TreeError> {
    if valid_id(id) {
        return Ok(());
    }
    Err(TreeError::Malformed(format!(
        "{field} must be 1 to {MAX_ID_LEN} letters, digits, '-', '_' or '.'"
    )))
}

fn check_name(field: &str, name: &str) -> Result<(), TreeError> {
    if valid_name(name) {
        return Ok(());
    }
    Err(TreeError::Malformed(format!(
        "{field} must be 1 to {} bytes without control characters",
        crate::control::MAX_NAME_LEN
    )))
}

fn check_url(field: &str, url: &str) -> Result<(), TreeError> {
    let scheme = url.starts_with("http://") || url.starts_with("https://");
    let plain = !url.chars().any(|c| c.is_control() || c.is_whitespace());
    if scheme && plain && url.len() <= MAX_URL_LEN {
        return Ok(());
    }
    Err(TreeError::Malformed(format!(
        "{field} must be an http:// or https:// URL of at most {MAX_URL_LEN} bytes"
    )))
}

fn check_reason(reason: &str) -> Result<(), TreeError> {
    if reason.len() <= MAX_REASON_LEN {
        return Ok(());
    }
    Err(TreeError::Malformed(format!("reason over {MAX_REASON_LEN} bytes")))
}

fn check_members(members: &[Member]) -> Result<(), TreeError> {
    if members.len() > MAX_MEMBERS {
        return Err(TreeError::Malformed(format!("more than {MAX_MEMBERS} members")));
    }
    for member in members {
        check_name("member", &member.name)?;
        check_url("member url", &member.url)?;
    }
    Ok(())
}

/// Refuses stale and replayed messages: a message must be fresh ([`TreeLimits::freshness`]) and carry a
/// nonce its sender has not used within the window. (Not the control channel's sequence numbers: a node
/// sends tree messages from several tasks at once over separate connections, so they may arrive out of
/// order.) Nonces are forgotten once any replay of them would be
/// stale anyway, and the oldest first when [`TreeLimits::max_nonces`] are held. Sans-IO: the receiver's
/// clock comes in as a parameter.
#[derive(Debug, Clone)]
pub struct NonceGuard {
    limits: TreeLimits,
    /// When each (sender, nonce) was accepted (its send time), milliseconds.
    seen: HashMap<(String, u64), u64>,
    /// The same, in the order accepted, for forgetting the oldest.
    order: VecDeque<((String, u64), u64)>,
}

impl NonceGuard {
    /// An empty guard.
    pub fn new(limits: TreeLimits) -> NonceGuard {
        NonceGuard {
            limits,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Nonces remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Accepts `envelope` (and remembers its nonce) or says why not. `now_ms` is the receiver's clock,
    /// milliseconds since the Unix epoch.
    pub fn check(&mut self, envelope: &Envelope, now_ms: u64) -> Result<(), TreeError> {
        let window_ms = u64::try_from(self.limits.freshness.as_millis()).unwrap_or(u64::MAX);
        let too_old = envelope.sent_at_ms.saturating_add(window_ms) < now_ms;
        let too_new = envelope.sent_at_ms > now_ms.saturating_add(window_ms);
        if too_old || too_new {
            return Err(TreeError::Stale {
                sender: envelope.sender.clone(),
                sent_at_ms: envelope.sent_at_ms,
                now_ms,
            });
        }
        // A nonce sent over two windows ago cannot come back fresh: forget it.
        let cutoff = now_ms.saturating_sub(window_ms.saturating_mul(2));
        while let Some((key, sent)) = self.order.front() {
            if *sent >= cutoff && self.seen.len() < self.limits.max_nonces.max(1) {
                break;
            }
            self.seen.remove(key);
            self.order.pop_front();
        }
        let key = (envelope.sender.clone(), envelope.nonce);
        if self.seen.contains_key(&key) {
            return Err(TreeError::Replayed {
                sender: envelope.sender.clone(),
                nonce: envelope.nonce,
            });
        }
        self.seen.insert(key.clone(), envelope.sent_at_ms);
        self.order
            .push_back((key, envelope.sent_at_ms.max(now_ms.saturating_sub(window_ms))));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_token_names_one_transfer_and_one_requester() {
        let key = SecretKey::generate().expect("key");
        let other = SecretKey::generate().expect("key");
        let token = fetch_token(&key, "publish-1-0.prepare.1", "web1");
        assert_eq!(token.len(), 64);
        assert!(fetch_token_matches(&key, "publish-1-0.prepare.1", "web1", &token));
        assert!(!fetch_token_matches(&key, "publish-1-0.prepare.2", "web1", &token));
        assert!(!fetch_token_matches(&key, "publish-1-0.prepare.1", "web2", &token));
        assert!(!fetch_token_matches(&other, "publish-1-0.prepare.1", "web1", &token));
        assert!(!fetch_token_matches(&key, "publish-1-0.prepare.1", "web1", ""));
        assert!(!fetch_token_matches(
            &key,
            "publish-1-0.prepare.1",
            "web1",
            &token[..63]
        ));
    }

    fn key() -> SecretKey {
        SecretKey::parse(&"5e".repeat(32)).expect("key")
    }

    fn mover() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn notification() -> Notification {
        Notification {
            job: "publish-1-0".into(),
            transfer: "publish-1-0.prepare.1".into(),
            phase: Phase::Prepare,
            source: Source::Leader {
                name: "gl1".into(),
                url: "http://10.0.0.1:7100".into(),
            },
            target: "gl2".into(),
            target_url: "http://10.0.1.1:7100".into(),
            size: 1234,
            hash: "ab".repeat(32),
            leaders: vec!["gl1".into(), "gl2".into()],
            members: vec![Member {
                name: "n1".into(),
                url: "http://10.0.1.2:7100".into(),
            }],
            issued_ms: 1_000,
        }
    }

    fn messages() -> Vec<TreeMessage> {
        let signed = SignedNotification::sign(notification(), &mover());
        vec![
            TreeMessage::Notify {
                notification: signed.clone(),
            },
            TreeMessage::Holding {
                report: HoldingReport {
                    job: "j".into(),
                    transfer: "t".into(),
                    leader: "gl1".into(),
                    holding: Holding::Receiving { bytes: 10 },
                },
            },
            TreeMessage::Holding {
                report: HoldingReport {
                    job: "j".into(),
                    transfer: "t".into(),
                    leader: "gl1".into(),
                    holding: Holding::Failed {
                        reason: "source went away".into(),
                    },
                },
            },
            TreeMessage::Next {
                request: NextRequest {
                    job: "j".into(),
                    transfer: "t".into(),
                    leader: "gl1".into(),
                },
            },
            TreeMessage::Answer {
                answer: NextAnswer::Serve {
                    notification: Box::new(signed),
                },
            },
            TreeMessage::Answer {
                answer: NextAnswer::AskAgain { after_ms: 500 },
            },
            TreeMessage::Answer {
                answer: NextAnswer::Done,
            },
            TreeMessage::Status {
                report: StatusReport {
                    job: "j".into(),
                    transfer: "t".into(),
                    leader: "gl1".into(),
                    completed: vec!["n1".into()],
                    failed: vec![MemberFailure {
                        node: "n2".into(),
                        reason: "node unreachable".into(),
                    }],
                },
            },
            TreeMessage::Register {
                registration: registration(),
            },
        ]
    }

    fn registration() -> crate::mover::Registration {
        crate::mover::Registration {
            name: "n1".into(),
            url: "https://10.0.1.2:7100".into(),
            free_disk: 1 << 30,
            cpus: 4,
            groups: vec!["web".into()],
            versions: [("www".to_string(), 3)].into(),
            prepared: [("www".to_string(), 4)].into(),
            instance: String::new(),
            encryption_key_id: None,
        }
    }

    #[test]
    fn every_message_round_trips() {
        for message in messages() {
            let envelope = Envelope::new("gl1", message, 5_000);
            let bytes = encode(&key(), &envelope);
            assert_eq!(decode(&key(), &bytes, &TreeLimits::default()), Ok(envelope));
        }
    }

    #[test]
    fn a_notification_is_the_movers_and_names_a_source_among_the_jobs_leaders() {
        let signed = SignedNotification::sign(notification(), &mover());
        assert_eq!(signed.verify(&mover().verifying_key()), Ok(()));
        assert!(signed.notification.source_allowed());
        let other = SigningKey::from_bytes(&[8; 32]);
        assert_eq!(signed.verify(&other.verifying_key()), Err(TreeError::Signature));
        // A GL that rewrites the source (to itself) breaks the signature.
        let mut rewritten = signed.clone();
        rewritten.notification.source = Source::Leader {
            name: "intruder".into(),
            url: "http://10.9.9.9:1".into(),
        };
        assert_eq!(rewritten.verify(&mover().verifying_key()), Err(TreeError::Signature));
        assert!(!rewritten.notification.source_allowed(), "not one of the job's leaders");
        let mut itself = notification();
        itself.source = Source::Leader {
            name: "gl2".into(),
            url: "http://10.0.1.1:7100".into(),
        };
        assert!(!itself.source_allowed(), "a GL is not its own source");
        let mover_source = Notification {
            source: Source::Mover,
            ..notification()
        };
        assert!(mover_source.source_allowed());
    }

    #[test]
    fn forged_damaged_oversized_and_malformed_messages_are_refused_by_name() {
        let limits = TreeLimits::default();
        let envelope = Envelope::new("gl1", messages().remove(0), 5_000);
        let good = encode(&key(), &envelope);
        let forged = encode(&SecretKey::parse(&"01".repeat(32)).expect("key"), &envelope);
        assert_eq!(
            decode(&key(), &forged, &limits).expect_err("forged").reason(),
            "bad-tag"
        );
        let mut flipped = good.clone();
        flipped[frame::HEADER_LEN + 3] ^= 0x04;
        assert_eq!(
            decode(&key(), &flipped, &limits).expect_err("flipped").reason(),
            "bad-tag"
        );
        let small = TreeLimits {
            max_message: 100,
            ..limits
        };
        assert_eq!(decode(&key(), &good, &small).expect_err("big").reason(), "oversized");
        assert_eq!(
            decode(&key(), &good[..good.len() - 1], &limits),
            Err(TreeError::Truncated)
        );
        let unknown = frame::encode(&key(), 0x01, b"{}");
        assert_eq!(decode(&key(), &unknown, &limits), Err(TreeError::UnknownKind(1)));
        let not_json = frame::encode(&key(), KIND_TREE, b"{");
        assert_eq!(
            decode(&key(), &not_json, &limits).expect_err("json").reason(),
            "malformed"
        );

        let mut bad = notification();
        bad.transfer = "../../etc/passwd".into();
        let bad = Envelope::new(
            "gl1",
            TreeMessage::Notify {
                notification: SignedNotification::sign(bad, &mover()),
            },
            5_000,
        );
        assert!(matches!(
            decode(&key(), &encode(&key(), &bad), &limits),
            Err(TreeError::Malformed(_))
        ));
        let mut long = notification();
        long.members = (0..=MAX_MEMBERS)
            .map(|n| Member {
                name: format!("n{n}"),
                url: "http://x".into(),
            })
            .collect();
        let long = Envelope::new(
            "gl1",
            TreeMessage::Notify {
                notification: SignedNotification::sign(long, &mover()),
            },
            5_000,
        );
        assert!(matches!(
            decode(&key(), &encode(&key(), &long), &limits),
            Err(TreeError::Malformed(_))
        ));
        let mut no_scheme = notification();
        no_scheme.target_url = "file:///etc".into();
        assert!(no_scheme.validate().is_err());

        let register = |registration| Envelope::new("n1", TreeMessage::Register { registration }, 5_000);
        let bad_url = crate::mover::Registration {
            url: "file:///etc".into(),
            ..registration()
        };
        let many_sites = crate::mover::Registration {
            prepared: (0..=MAX_REGISTERED).map(|n| (format!("s{n}"), 1)).collect(),
            ..registration()
        };
        let bad_group = crate::mover::Registration {
            groups: vec!["a\nb".into()],
            ..registration()
        };
        for bad in [bad_url, many_sites, bad_group] {
            assert!(matches!(
                decode(&key(), &encode(&key(), &register(bad)), &limits),
                Err(TreeError::Malformed(_))
            ));
        }
    }

    #[test]
    fn replays_and_stale_messages_are_refused_and_the_guard_stays_bounded() {
        let limits = TreeLimits {
            max_nonces: 3,
            ..TreeLimits::default()
        };
        let window = limits.freshness.as_millis() as u64;
        let mut guard = NonceGuard::new(limits);
        let message = messages().remove(3);
        let first = Envelope::new("gl1", message.clone(), 1_000_000);
        assert_eq!(guard.check(&first, 1_000_010), Ok(()));
        assert_eq!(guard.check(&first, 1_000_020).expect_err("replay").reason(), "replayed");
        let other_sender = Envelope {
            sender: "gl2".into(),
            ..first.clone()
        };
        assert_eq!(guard.check(&other_sender, 1_000_020), Ok(()), "nonces are per sender");
        let stale = Envelope::new("gl1", message.clone(), 1_000_000 - window - 11);
        assert_eq!(guard.check(&stale, 1_000_000).expect_err("stale").reason(), "stale");
        let future = Envelope::new("gl1", message.clone(), 1_000_000 + window + 1);
        assert_eq!(guard.check(&future, 1_000_000).expect_err("future").reason(), "stale");
        let extreme = Envelope {
            sent_at_ms: u64::MAX,
            ..first.clone()
        };
        assert_eq!(guard.check(&extreme, u64::MAX).map_err(|e| e.reason()), Ok(()));
        for n in 0..10u64 {
            let envelope = Envelope {
                nonce: n,
                ..Envelope::new("gl3", message.clone(), 1_000_100)
            };
            guard.check(&envelope, 1_000_100).expect("fresh");
        }
        assert!(guard.len() <= 3, "bounded: {}", guard.len());
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_REASON_LEN);
        let cut = reason(&long);
        assert!(cut.len() <= MAX_REASON_LEN);
        assert!(check_reason(&cut).is_ok());
        assert_eq!(reason("short"), "short");
    }
}
