//! Messages of the content mover's local distribution (seed `004_1419c51402506f7e.txt`, "local
//! distribution" and the status reporting that follows it): the group leader (GL) sends an assignment once
//! on a segment's multicast *data channel* and repairs what its members lost (MCTP). The seed's words:
//!
//! | message | from → to | what the seed says |
//! |---|---|---|
//! | [`MctpBody::Announcement`] ([`Announcement`]) | GL → group (multicast) | "announces to a group that a session is starting, including information about the ID, size, and name of the assignment being sent, as well as the transfer rate and frame size used" |
//! | [`DataFrame`] | GL → group (multicast) | "the Content Assignment ID, a retransmission count, a frame sequence number, and data size"; a repair pass's frames are *parity frames* of a block ([`FrameId::Parity`]) |
//! | [`MctpBody::StatusReport`] ([`StatusReport`]) | member → GL (unicast) | "a list of lost packet numbers, i.e., a Negative Acknowledgement, or NACK" — here per block ("messages are broken into blocks, and blocks into frames"): how many frames of each block it still lacks; an empty list is a positive acknowledgement; a member that already holds the assignment replies with a "completion signal" |
//! | [`MctpBody::ReportRequest`] ([`ReportRequest`]) | GL → one member or the group | the end of a pass (asking for status reports), and report collection's "unicast request" and "multicast request on the LAN, including a list of group members" that did or did not report |
//! | [`MctpBody::ApplyReport`] ([`ApplyReport`]) | member → GL (unicast) | the "job status report for each assignment it receives" |
//!
//! Control messages (every [`MctpBody`]) are one authenticated frame each ([`crate::frame`], the cluster
//! key's HMAC-SHA256 tag), opened exactly as the control channel's ([`crate::control`]) and guarded against
//! replays by the same [`ReplayGuard`](crate::control::ReplayGuard) through [`MctpMessage::stamp`]; the
//! payload is JSON, every list and string bounded by [`MctpLimits`].
//!
//! Data frames are not tagged: a fixed binary header of [`DATA_HEADER_LEN`] bytes and the data, so that
//! header and data fit one Ethernet MTU ([`ETHERNET_UDP_PAYLOAD`]) without IP fragmentation. Their
//! integrity is the assignment's: the member checks the signed hash the announcement names once every
//! frame has arrived. A frame that does not fit its announced session (wrong id, pass, sequence, block or
//! parity number, length) is ignored and counted by the member ([`DataError`]).
//!
//! Repair is by erasure-coded *parity frames*, as NORM does (RFC 5740, with the Reed-Solomon FEC of RFC
//! 5510): the frames are grouped into *blocks* of [`Announcement::block_frames`] source frames, and any
//! `k` frames of a block's `k` source frames and its [`Announcement::parity_frames`] parity frames
//! rebuild it. A member's NACK says how many frames of each block it lacks; the GL's next pass sends, per
//! block, that many *new* parity frames for the member that lacks the most, and each parity frame repairs a
//! different loss at each member. Parity frames are the retransmissions of a pass with a higher pass
//! number, in the seed's words.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::control::{self, ControlError, ControlLimits, Stamp, check_name, check_text, malformed, parse_payload};
use crate::frame;
use crate::key::SecretKey;

/// Frame kind of a session announcement.
pub const KIND_ANNOUNCEMENT: u8 = 0x75;
/// Frame kind of a member's status report (NACK list or completion).
pub const KIND_STATUS_REPORT: u8 = 0x76;
/// Frame kind of the GL's report request.
pub const KIND_REPORT_REQUEST: u8 = 0x77;
/// Frame kind of a member's apply report.
pub const KIND_APPLY_REPORT: u8 = 0x78;

/// Magic of a data frame (distinct from the authenticated frames' `TRN`).
pub const DATA_MAGIC: &[u8; 3] = b"TMD";
/// Version of the data frame's layout (2: with the parity number).
pub const DATA_VERSION: u8 = 2;
/// Bytes of a data frame's header: magic (3), version (1), assignment id (u64), pass (u16), sequence
/// number (u32: the frame's, or the block's for a parity frame), parity number (u16: 0 for a source frame,
/// `n + 1` for a block's parity frame `n`), data size (u16), all big-endian.
pub const DATA_HEADER_LEN: usize = 3 + 1 + 8 + 2 + 4 + 2 + 2;
/// UDP payload that fits one 1,500-byte Ethernet MTU over IPv6 (40-byte IP header, 8-byte UDP header),
/// which also fits IPv4.
pub const ETHERNET_UDP_PAYLOAD: usize = 1500 - 40 - 8;
/// Largest frame data: header and data fit [`ETHERNET_UDP_PAYLOAD`].
pub const MAX_FRAME_DATA: usize = ETHERNET_UDP_PAYLOAD - DATA_HEADER_LEN;
/// Default frame data size, in bytes.
pub const DEFAULT_FRAME_DATA: u32 = 1400;
/// Default largest control datagram, in bytes (a report request listing 512 members of 64-byte names
/// fits; one UDP datagram holds at most 65,507 bytes).
pub const DEFAULT_MAX_DATAGRAM: usize = 60 * 1024;
/// Default most blocks one status report lists.
pub const DEFAULT_MAX_BLOCKS: usize = 512;
/// Most source and parity frames of one block together (the code works in GF(2^8)).
pub const MAX_CODED_FRAMES: u32 = 256;
/// Most source frames in a block (the announcement's `block_frames`).
pub const MAX_BLOCK_FRAMES: u32 = 128;
/// Most parity frames a block has (the announcement's `parity_frames`; a parity frame's number is below).
pub const MAX_PARITY_FRAMES: u32 = MAX_CODED_FRAMES - 1;
/// Default source frames per block: a member that lost one frame of a block rebuilds it from 32 frames.
pub const DEFAULT_BLOCK_FRAMES: u32 = 32;
/// Default parity frames per block: with [`DEFAULT_BLOCK_FRAMES`], [`MAX_CODED_FRAMES`] in all.
pub const DEFAULT_PARITY_FRAMES: u32 = MAX_CODED_FRAMES - DEFAULT_BLOCK_FRAMES;
/// Default most members a report request lists.
pub const DEFAULT_MAX_MEMBERS: usize = 1024;
/// Largest assignment a session carries: the seed's 4 GB.
pub const MAX_ASSIGNMENT_SIZE: u64 = 4 << 30;
/// Longest assignment name (the transfer id it is spooled under), in bytes.
pub const MAX_ASSIGNMENT_NAME_LEN: usize = 128;
/// Longest detail text of an apply report, in bytes.
pub const MAX_DETAIL_LEN: usize = 512;

/// The GL's announcement of a session (seed: "ID, size, and name of the assignment being sent, as well
/// as the transfer rate and frame size used"), sent at the start of every pass so that a member that
/// joins late learns of the session and later passes fill what it missed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// The Content Assignment ID the session's frames carry.
    pub assignment: u64,
    /// Bytes of the assignment.
    pub size: u64,
    /// Its name: the transfer id it is spooled under.
    pub name: String,
    /// The GL's sending rate at the start of this pass, bytes per second.
    pub rate: u64,
    /// Data bytes per frame (the last frame may be shorter), at most [`MAX_FRAME_DATA`].
    pub frame_size: u32,
    /// Frames in the assignment: `size` divided by `frame_size`, rounded up.
    pub frames: u32,
    /// The assignment's signed blake3 hash (64 hex digits): the member checks the complete assignment
    /// against it, and answers "complete" at once when it already holds an assignment with this hash.
    pub hash: String,
    /// The pass (retransmission count) about to start, from 1.
    pub pass: u16,
    /// Source frames per block (the last block may have fewer), 1 to [`MAX_BLOCK_FRAMES`].
    pub block_frames: u32,
    /// Parity frames each block has, numbered from 0, 1 to [`MAX_PARITY_FRAMES`].
    pub parity_frames: u32,
}

impl Announcement {
    /// Blocks in the assignment.
    pub fn blocks(&self) -> u32 {
        if self.block_frames == 0 {
            return 0;
        }
        self.frames.div_ceil(self.block_frames)
    }

    /// The block frame `sequence` belongs to.
    pub fn block_of(&self, sequence: u32) -> u32 {
        sequence / self.block_frames.max(1)
    }

    /// The first frame of `block` and how many source frames it has (0 past the last block).
    pub fn block_span(&self, block: u32) -> (u32, u32) {
        let first = u64::from(block) * u64::from(self.block_frames);
        if first >= u64::from(self.frames) {
            return (self.frames, 0);
        }
        let count = (u64::from(self.frames) - first).min(u64::from(self.block_frames));
        (first as u32, count as u32)
    }

    /// Bytes of a parity frame's data (the coding's shard size): the frame size.
    pub fn parity_len(&self) -> usize {
        self.frame_size as usize
    }

    /// The data length of frame `sequence`, `None` past the last frame.
    pub fn frame_len(&self, sequence: u32) -> Option<usize> {
        if sequence >= self.frames {
            return None;
        }
        let offset = u64::from(sequence) * u64::from(self.frame_size);
        let remaining = self.size.saturating_sub(offset);
        Some(remaining.min(u64::from(self.frame_size)) as usize)
    }

    /// The byte offset of frame `sequence` in the assignment.
    pub fn frame_offset(&self, sequence: u32) -> u64 {
        u64::from(sequence) * u64::from(self.frame_size)
    }
}

/// Frames needed for `size` bytes in frames of `frame_size` bytes (zero for a zero frame size).
pub fn frames_for(size: u64, frame_size: u32) -> u64 {
    if frame_size == 0 {
        return 0;
    }
    size.div_ceil(u64::from(frame_size))
}

/// One block a member lacks frames of: its number and how many frames it still needs (its source frames
/// not received, less the parity frames it holds). On the wire a pair `[block, missing]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "(u32, u32)", into = "(u32, u32)")]
pub struct BlockNack {
    /// The block number, from 0.
    pub block: u32,
    /// Frames it still needs to rebuild the block.
    pub missing: u32,
}

impl From<(u32, u32)> for BlockNack {
    fn from((block, missing): (u32, u32)) -> Self {
        BlockNack { block, missing }
    }
}

impl From<BlockNack> for (u32, u32) {
    fn from(nack: BlockNack) -> Self {
        (nack.block, nack.missing)
    }
}

/// What a member says at the end of a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// It holds the whole assignment: received in this session, or already held ("completion signal").
    Complete,
    /// The blocks it lacks frames of (the NACK list), ascending, the first [`MctpLimits::max_blocks`]
    /// of them; an empty list is a positive acknowledgement (every frame of the passes heard arrived).
    Missing {
        /// The blocks and how many frames each still needs.
        blocks: Vec<BlockNack>,
        /// How many frames it needs in all (the list may be cut short).
        count: u32,
    },
    /// It cannot take this session (its spool cannot be written: a full or read-only disk) and will not
    /// complete it: the GL stops repairing for it and leaves it to the unicast path.
    Declined {
        /// Why, for the GL's log (at most [`MAX_DETAIL_LEN`] bytes).
        reason: String,
    },
}

/// A member's status report on one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The Content Assignment ID.
    pub assignment: u64,
    /// The pass it reports on (the last pass it heard of).
    pub pass: u16,
    /// Complete or the NACK list.
    pub status: Status,
}

/// Which report a [`ReportRequest`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Wanted {
    /// The status report on the session after this pass ended.
    Status {
        /// The pass that ended.
        pass: u16,
        /// The longest random delay before answering, milliseconds: the GL scales it to the segment's
        /// size (a member answers within the shorter of this and its own bound).
        #[serde(default = "default_spread_ms")]
        spread_ms: u32,
    },
    /// The apply report (report collection).
    Apply,
}

fn default_spread_ms() -> u32 {
    1000
}

/// Whom a [`ReportRequest`] concerns (seed: "If there are fewer servers that have not reported than have
/// reported, the GL sends the list of those whose reports are missing. Otherwise, it sends the list of
/// those whose reports were received.").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Addressees {
    /// Every member of the session.
    All,
    /// Only these members (sent by unicast, or the list of those whose reports are missing).
    Missing(Vec<String>),
    /// Every member but these (the list of those whose reports were received).
    Received(Vec<String>),
}

impl Addressees {
    /// Whether member `name` is asked to report.
    pub fn includes(&self, name: &str) -> bool {
        match self {
            Addressees::All => true,
            Addressees::Missing(names) => names.iter().any(|listed| listed == name),
            Addressees::Received(names) => !names.iter().any(|listed| listed == name),
        }
    }

    fn names(&self) -> &[String] {
        match self {
            Addressees::All => &[],
            Addressees::Missing(names) | Addressees::Received(names) => names,
        }
    }
}

/// The GL asks members for a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRequest {
    /// The Content Assignment ID.
    pub assignment: u64,
    /// Which report.
    pub wanted: Wanted,
    /// Who should answer.
    pub addressees: Addressees,
}

/// A member's job status report on one assignment (the result of applying it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// The Content Assignment ID.
    pub assignment: u64,
    /// Whether the content interpreter applied it.
    pub applied: bool,
    /// Why not, or a note; at most [`MAX_DETAIL_LEN`] bytes.
    #[serde(default)]
    pub detail: String,
}

/// What a control message of local distribution says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MctpBody {
    /// A session starts or a pass begins.
    Announcement(Announcement),
    /// A member's NACK list or completion.
    StatusReport(StatusReport),
    /// The GL asks for status or apply reports.
    ReportRequest(ReportRequest),
    /// A member's job status report.
    ApplyReport(ApplyReport),
}

impl MctpBody {
    /// The frame kind it travels in.
    pub fn kind(&self) -> u8 {
        match self {
            MctpBody::Announcement(_) => KIND_ANNOUNCEMENT,
            MctpBody::StatusReport(_) => KIND_STATUS_REPORT,
            MctpBody::ReportRequest(_) => KIND_REPORT_REQUEST,
            MctpBody::ApplyReport(_) => KIND_APPLY_REPORT,
        }
    }

    /// The Content Assignment ID it is about.
    pub fn assignment(&self) -> u64 {
        match self {
            MctpBody::Announcement(body) => body.assignment,
            MctpBody::StatusReport(body) => body.assignment,
            MctpBody::ReportRequest(body) => body.assignment,
            MctpBody::ApplyReport(body) => body.assignment,
        }
    }
}

/// One control message: the envelope of the segment's other messages, and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MctpMessage {
    /// The network segment's name.
    pub segment: String,
    /// The sender's node name.
    pub sender: String,
    /// Where the sender takes unicast replies (the GL's status and apply reports address).
    pub address: SocketAddr,
    /// Random id of the sender's process run.
    pub incarnation: u64,
    /// The sender's message counter within its incarnation, strictly increasing.
    pub seq: u64,
    /// The sender's clock when it sent the message, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// What it says.
    pub body: MctpBody,
}

impl MctpMessage {
    /// What the replay guard checks.
    pub fn stamp(&self) -> Stamp<'_> {
        Stamp {
            sender: &self.sender,
            incarnation: self.incarnation,
            seq: self.seq,
            sent_at_ms: self.sent_at_ms,
        }
    }
}

/// A control message whose tag was checked with the cluster key; only [`decode`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified(MctpMessage);

impl Verified {
    /// The message.
    pub fn message(&self) -> &MctpMessage {
        &self.0
    }

    /// The message, by value.
    pub fn into_message(self) -> MctpMessage {
        self.0
    }
}

/// Bounds on what a receiver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MctpLimits {
    /// Largest control datagram, in bytes.
    pub max_datagram: usize,
    /// Most blocks a status report lists.
    pub max_blocks: usize,
    /// Most members a report request lists.
    pub max_members: usize,
    /// Largest assignment a session may announce, in bytes (at most [`MAX_ASSIGNMENT_SIZE`]).
    pub max_size: u64,
    /// Settings of the replay guard (freshness window, senders remembered).
    pub replay: ControlLimits,
}

impl Default for MctpLimits {
    fn default() -> Self {
        MctpLimits {
            max_datagram: DEFAULT_MAX_DATAGRAM,
            max_blocks: DEFAULT_MAX_BLOCKS,
            max_members: DEFAULT_MAX_MEMBERS,
            max_size: MAX_ASSIGNMENT_SIZE,
            replay: ControlLimits {
                max_datagram: DEFAULT_MAX_DATAGRAM,
                ..ControlLimits::default()
            },
        }
    }
}

/// Whether `kind` is one of this module's control frame kinds.
pub fn is_mctp_kind(kind: u8) -> bool {
    matches!(
        kind,
        KIND_ANNOUNCEMENT | KIND_STATUS_REPORT | KIND_REPORT_REQUEST | KIND_APPLY_REPORT
    )
}

/// Whether `bytes` start like a data frame (not checked further).
pub fn is_data_frame(bytes: &[u8]) -> bool {
    bytes.starts_with(DATA_MAGIC)
}

#[derive(Serialize)]
struct PayloadRef<'a, T> {
    segment: &'a str,
    sender: &'a str,
    address: SocketAddr,
    incarnation: u64,
    seq: u64,
    sent_at_ms: u64,
    body: &'a T,
}

#[derive(Deserialize)]
struct Payload<T> {
    segment: String,
    sender: String,
    address: SocketAddr,
    incarnation: u64,
    seq: u64,
    sent_at_ms: u64,
    body: T,
}

/// Encodes a control message as one datagram tagged with `key`.
pub fn encode(key: &SecretKey, message: &MctpMessage) -> Vec<u8> {
    let json = match &message.body {
        MctpBody::Announcement(body) => payload_json(message, body),
        MctpBody::StatusReport(body) => payload_json(message, body),
        MctpBody::ReportRequest(body) => payload_json(message, body),
        MctpBody::ApplyReport(body) => payload_json(message, body),
    };
    frame::encode(key, message.body.kind(), &json)
}

fn payload_json<T: Serialize>(message: &MctpMessage, body: &T) -> Vec<u8> {
    let payload = PayloadRef {
        segment: &message.segment,
        sender: &message.sender,
        address: message.address,
        incarnation: message.incarnation,
        seq: message.seq,
        sent_at_ms: message.sent_at_ms,
        body,
    };
    // Serialising strings, numbers and plain enums cannot fail.
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// Decodes one control datagram: its size, then its tag, then its fields and their bounds. Stateless:
/// replays are the receiver's [`ReplayGuard`](crate::control::ReplayGuard)'s business.
pub fn decode(key: &SecretKey, bytes: &[u8], limits: &MctpLimits) -> Result<Verified, ControlError> {
    let frame = control::open_frame(key, bytes, limits.max_datagram)?;
    let (envelope, body) = match frame.kind {
        KIND_ANNOUNCEMENT => {
            let payload: Payload<Announcement> = parse_payload(&frame.payload)?;
            check_announcement(&payload.body, limits)?;
            split(payload, MctpBody::Announcement)
        }
        KIND_STATUS_REPORT => {
            let payload: Payload<StatusReport> = parse_payload(&frame.payload)?;
            check_status(&payload.body, limits)?;
            split(payload, MctpBody::StatusReport)
        }
        KIND_REPORT_REQUEST => {
            let payload: Payload<ReportRequest> = parse_payload(&frame.payload)?;
            check_request(&payload.body, limits)?;
            split(payload, MctpBody::ReportRequest)
        }
        KIND_APPLY_REPORT => {
            let payload: Payload<ApplyReport> = parse_payload(&frame.payload)?;
            check_text("detail", &payload.body.detail, MAX_DETAIL_LEN)?;
            split(payload, MctpBody::ApplyReport)
        }
        other => return Err(ControlError::UnknownKind(other)),
    };
    check_name("segment", &envelope.segment)?;
    check_name("sender", &envelope.sender)?;
    Ok(Verified(MctpMessage {
        segment: envelope.segment,
        sender: envelope.sender,
        address: envelope.address,
        incarnation: envelope.incarnation,
        seq: envelope.seq,
        sent_at_ms: envelope.sent_at_ms,
        body,
    }))
}

fn split<T>(payload: Payload<T>, wrap: impl FnOnce(T) -> MctpBody) -> (Payload<()>, MctpBody) {
    let envelope = Payload {
        segment: payload.segment,
        sender: payload.sender,
        address: payload.address,
        incarnation: payload.incarnation,
        seq: payload.seq,
        sent_at_ms: payload.sent_at_ms,
        body: (),
    };
    (envelope, wrap(payload.body))
}

/// Checks an announcement's fields against each other and `limits`.
pub fn check_announcement(announcement: &Announcement, limits: &MctpLimits) -> Result<(), ControlError> {
    check_text("name", &announcement.name, MAX_ASSIGNMENT_NAME_LEN)?;
    if announcement.name.is_empty() {
        return Err(malformed("an assignment's name must not be empty"));
    }
    let hash_ok = announcement.hash.len() == 64 && announcement.hash.bytes().all(|b| b.is_ascii_hexdigit());
    if !hash_ok {
        return Err(malformed("an assignment's hash is 64 hex digits"));
    }
    if announcement.size == 0 || announcement.size > limits.max_size.min(MAX_ASSIGNMENT_SIZE) {
        return Err(malformed(format!(
            "assignment size {} is outside 1..={}",
            announcement.size,
            limits.max_size.min(MAX_ASSIGNMENT_SIZE)
        )));
    }
    let frame_size = announcement.frame_size as usize;
    if frame_size == 0 || frame_size > MAX_FRAME_DATA {
        return Err(malformed(format!(
            "frame size {frame_size} is outside 1..={MAX_FRAME_DATA}"
        )));
    }
    if u64::from(announcement.frames) != frames_for(announcement.size, announcement.frame_size) {
        return Err(malformed("the frame count does not match the size and frame size"));
    }
    if announcement.pass == 0 || announcement.rate == 0 {
        return Err(malformed("passes count from 1 and the rate is positive"));
    }
    if announcement.block_frames == 0 || announcement.block_frames > MAX_BLOCK_FRAMES {
        return Err(malformed(format!(
            "{} frames per block are outside 1..={MAX_BLOCK_FRAMES}",
            announcement.block_frames
        )));
    }
    if announcement.parity_frames == 0
        || announcement.parity_frames > MAX_PARITY_FRAMES
        || announcement.block_frames + announcement.parity_frames > MAX_CODED_FRAMES
    {
        return Err(malformed(format!(
            "{} parity frames per block are outside 1..={}",
            announcement.parity_frames,
            MAX_CODED_FRAMES - announcement.block_frames
        )));
    }
    Ok(())
}

fn check_status(report: &StatusReport, limits: &MctpLimits) -> Result<(), ControlError> {
    let (blocks, count) = match &report.status {
        Status::Complete => return Ok(()),
        Status::Declined { reason } if reason.len() > MAX_DETAIL_LEN => {
            return Err(malformed(format!(
                "a reason of {} bytes is over the limit of {MAX_DETAIL_LEN}",
                reason.len()
            )));
        }
        Status::Declined { .. } => return Ok(()),
        Status::Missing { blocks, count } => (blocks, count),
    };
    if blocks.len() > limits.max_blocks {
        return Err(malformed(format!(
            "{} nacked blocks are over the limit of {}",
            blocks.len(),
            limits.max_blocks
        )));
    }
    let mut covered: u64 = 0;
    let mut next_block: u64 = 0;
    for nack in blocks {
        if u64::from(nack.block) < next_block {
            return Err(malformed("nacked blocks must be ascending"));
        }
        if nack.missing == 0 || nack.missing > MAX_BLOCK_FRAMES {
            return Err(malformed(format!(
                "a block missing {} frames is outside 1..={MAX_BLOCK_FRAMES}",
                nack.missing
            )));
        }
        covered += u64::from(nack.missing);
        next_block = u64::from(nack.block) + 1;
    }
    if covered > u64::from(*count) {
        return Err(malformed("nacked blocks miss more frames than the count"));
    }
    Ok(())
}

fn check_request(request: &ReportRequest, limits: &MctpLimits) -> Result<(), ControlError> {
    let names = request.addressees.names();
    if names.len() > limits.max_members {
        return Err(malformed(format!(
            "{} members are over the limit of {}",
            names.len(),
            limits.max_members
        )));
    }
    for name in names {
        check_name("member", name)?;
    }
    Ok(())
}

/// Which frame a [`DataFrame`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrameId {
    /// A source frame: the assignment's bytes from `sequence × frame_size`.
    Source(u32),
    /// Parity frame `index` (from 0) of `block`.
    Parity {
        /// The block number.
        block: u32,
        /// The parity frame's number in the block, below the announcement's `parity_frames`.
        index: u16,
    },
}

/// One frame of a session on the data channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame<'a> {
    /// The Content Assignment ID.
    pub assignment: u64,
    /// The retransmission count: 1 for the first pass, incremented for each retransmission.
    pub pass: u16,
    /// The frame sequence number (a source frame) or block and parity number (a parity frame).
    pub id: FrameId,
    /// The frame's data (its length is the data size).
    pub data: &'a [u8],
}

/// Why a datagram on the data channel is not a data frame. A member ignores it and counts it by
/// [`DataError::reason`]; frames that decode but do not fit their session are the member's to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// Not the data frame magic or version.
    #[error("not a data frame (bad magic or version)")]
    BadMagic,
    /// Shorter than its header.
    #[error("data frame of {0} bytes is shorter than its header")]
    Truncated(usize),
    /// The declared data size is not what follows the header, or is over [`MAX_FRAME_DATA`].
    #[error("data frame declares {declared} data bytes but carries {carried}")]
    BadLength {
        /// The data size in the header.
        declared: usize,
        /// The bytes after the header.
        carried: usize,
    },
    /// The parity number is past any block's parity frames ([`MAX_PARITY_FRAMES`]).
    #[error("parity number {0} is over the limit")]
    BadParity(u16),
}

impl DataError {
    /// A short token for counters and log fields.
    pub fn reason(&self) -> &'static str {
        match self {
            DataError::BadMagic => "bad-magic",
            DataError::Truncated(_) | DataError::BadLength { .. } | DataError::BadParity(_) => "malformed",
        }
    }
}

/// Encodes a data frame: the header then the data. `data` is at most [`MAX_FRAME_DATA`] bytes (longer
/// data makes a frame every receiver refuses).
pub fn encode_data(frame: &DataFrame<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATA_HEADER_LEN + frame.data.len());
    out.extend_from_slice(DATA_MAGIC);
    out.push(DATA_VERSION);
    out.extend_from_slice(&frame.assignment.to_be_bytes());
    out.extend_from_slice(&frame.pass.to_be_bytes());
    let (sequence, parity) = match frame.id {
        FrameId::Source(sequence) => (sequence, 0u16),
        // Parity numbers are below MAX_PARITY_FRAMES, so `index + 1` fits; u16::MAX saturates to a number
        // every receiver refuses.
        FrameId::Parity { block, index } => (block, index.saturating_add(1)),
    };
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&parity.to_be_bytes());
    let data_size = u16::try_from(frame.data.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&data_size.to_be_bytes());
    out.extend_from_slice(frame.data);
    out
}

/// Decodes a data frame, borrowing its data.
pub fn decode_data(bytes: &[u8]) -> Result<DataFrame<'_>, DataError> {
    if bytes.len() >= 4 && (&bytes[..3] != DATA_MAGIC || bytes[3] != DATA_VERSION) {
        return Err(DataError::BadMagic);
    }
    let Some((header, data)) = bytes.split_at_checked(DATA_HEADER_LEN) else {
        return Err(DataError::Truncated(bytes.len()));
    };
    if &header[..3] != DATA_MAGIC {
        return Err(DataError::BadMagic);
    }
    let field = |range: std::ops::Range<usize>| &header[range];
    let assignment = u64::from_be_bytes(field(4..12).try_into().unwrap_or([0; 8]));
    let pass = u16::from_be_bytes(field(12..14).try_into().unwrap_or([0; 2]));
    let sequence = u32::from_be_bytes(field(14..18).try_into().unwrap_or([0; 4]));
    let parity = u16::from_be_bytes(field(18..20).try_into().unwrap_or([0; 2]));
    let declared = usize::from(u16::from_be_bytes(field(20..22).try_into().unwrap_or([0; 2])));
    if declared != data.len() || declared > MAX_FRAME_DATA {
        return Err(DataError::BadLength {
            declared,
            carried: data.len(),
        });
    }
    if u32::from(parity) > MAX_PARITY_FRAMES {
        return Err(DataError::BadParity(parity));
    }
    let id = match parity {
        0 => FrameId::Source(sequence),
        number => FrameId::Parity {
            block: sequence,
            index: number - 1,
        },
    };
    Ok(DataFrame {
        assignment,
        pass,
        id,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::parse(&"3c".repeat(32)).expect("key")
    }

    fn announcement() -> Announcement {
        Announcement {
            assignment: 42,
            size: 10_000,
            name: "www-000042".into(),
            rate: 12_500_000,
            frame_size: 1400,
            frames: 8,
            hash: "ab".repeat(32),
            pass: 1,
            block_frames: 4,
            parity_frames: 4,
        }
    }

    fn message(body: MctpBody) -> MctpMessage {
        MctpMessage {
            segment: "rack-1".into(),
            sender: "node-a".into(),
            address: "10.0.0.1:7300".parse().expect("address"),
            incarnation: 9,
            seq: 3,
            sent_at_ms: 1_700_000_000_000,
            body,
        }
    }

    fn every_body() -> Vec<MctpBody> {
        vec![
            MctpBody::Announcement(announcement()),
            MctpBody::StatusReport(StatusReport {
                assignment: 42,
                pass: 1,
                status: Status::Missing {
                    blocks: vec![BlockNack { block: 0, missing: 1 }, BlockNack { block: 1, missing: 2 }],
                    count: 3,
                },
            }),
            MctpBody::StatusReport(StatusReport {
                assignment: 42,
                pass: 2,
                status: Status::Complete,
            }),
            MctpBody::StatusReport(StatusReport {
                assignment: 42,
                pass: 1,
                status: Status::Declined {
                    reason: "spool file: No space left on device".into(),
                },
            }),
            MctpBody::ReportRequest(ReportRequest {
                assignment: 42,
                wanted: Wanted::Status { pass: 1, spread_ms: 40 },
                addressees: Addressees::All,
            }),
            MctpBody::ReportRequest(ReportRequest {
                assignment: 42,
                wanted: Wanted::Apply,
                addressees: Addressees::Received(vec!["node-b".into()]),
            }),
            MctpBody::ApplyReport(ApplyReport {
                assignment: 42,
                applied: false,
                detail: "disk full".into(),
            }),
        ]
    }

    #[test]
    fn every_control_message_round_trips() {
        let limits = MctpLimits::default();
        for body in every_body() {
            let original = message(body);
            let bytes = encode(&key(), &original);
            assert!(is_mctp_kind(frame::peek_kind(&bytes).expect("kind")));
            assert!(!is_data_frame(&bytes));
            assert_eq!(
                decode(&key(), &bytes, &limits).expect("decodes").into_message(),
                original
            );
        }
    }

    #[test]
    fn forged_and_out_of_bounds_control_messages_are_refused_by_name() {
        let limits = MctpLimits::default();
        let other = SecretKey::parse(&"11".repeat(32)).expect("key");
        let forged = encode(&other, &message(MctpBody::Announcement(announcement())));
        assert_eq!(
            decode(&key(), &forged, &limits).expect_err("forged").reason(),
            "bad-tag"
        );

        let absurd = StatusReport {
            assignment: 42,
            pass: 1,
            status: Status::Missing {
                blocks: (0..=limits.max_blocks as u32)
                    .map(|block| BlockNack { block, missing: 1 })
                    .collect(),
                count: u32::MAX,
            },
        };
        let bytes = encode(&key(), &message(MctpBody::StatusReport(absurd)));
        assert_eq!(
            decode(&key(), &bytes, &limits).expect_err("too many").reason(),
            "malformed"
        );

        let long_reason = StatusReport {
            assignment: 42,
            pass: 1,
            status: Status::Declined {
                reason: "x".repeat(MAX_DETAIL_LEN + 1),
            },
        };
        let bytes = encode(&key(), &message(MctpBody::StatusReport(long_reason)));
        assert_eq!(
            decode(&key(), &bytes, &limits).expect_err("too long").reason(),
            "malformed"
        );

        let nack = |block, missing| BlockNack { block, missing };
        for blocks in [
            vec![nack(3, 2), nack(3, 1)],
            vec![nack(5, 1), nack(4, 1)],
            vec![nack(1, 0)],
            vec![nack(1, MAX_BLOCK_FRAMES + 1)],
            vec![nack(1, 60), nack(2, 50)],
        ] {
            let report = StatusReport {
                assignment: 42,
                pass: 1,
                status: Status::Missing { blocks, count: 100 },
            };
            let bytes = encode(&key(), &message(MctpBody::StatusReport(report)));
            assert_eq!(
                decode(&key(), &bytes, &limits).expect_err("bad nacks").reason(),
                "malformed"
            );
        }

        let bad_announcements = [
            Announcement {
                frames: 9,
                ..announcement()
            },
            Announcement {
                frame_size: MAX_FRAME_DATA as u32 + 1,
                frames: 7,
                ..announcement()
            },
            Announcement {
                size: MAX_ASSIGNMENT_SIZE + 1,
                frames: u32::MAX,
                ..announcement()
            },
            Announcement {
                hash: "xyz".into(),
                ..announcement()
            },
            Announcement {
                name: String::new(),
                ..announcement()
            },
            Announcement {
                pass: 0,
                ..announcement()
            },
            Announcement {
                block_frames: 0,
                ..announcement()
            },
            Announcement {
                block_frames: MAX_BLOCK_FRAMES + 1,
                ..announcement()
            },
            Announcement {
                parity_frames: 0,
                ..announcement()
            },
            Announcement {
                parity_frames: u32::MAX,
                ..announcement()
            },
            Announcement {
                block_frames: MAX_BLOCK_FRAMES,
                parity_frames: MAX_CODED_FRAMES - MAX_BLOCK_FRAMES + 1,
                ..announcement()
            },
        ];
        for bad in bad_announcements {
            let bytes = encode(&key(), &message(MctpBody::Announcement(bad.clone())));
            assert_eq!(
                decode(&key(), &bytes, &limits).expect_err("bad").reason(),
                "malformed",
                "{bad:?}"
            );
        }

        let long_list = ReportRequest {
            assignment: 42,
            wanted: Wanted::Apply,
            addressees: Addressees::Missing((0..=limits.max_members).map(|i| format!("n{i}")).collect()),
        };
        let bytes = encode(&key(), &message(MctpBody::ReportRequest(long_list)));
        let roomy = MctpLimits {
            max_datagram: usize::MAX,
            ..limits
        };
        assert_eq!(decode(&key(), &bytes, &roomy).expect_err("long").reason(), "malformed");
    }

    #[test]
    fn a_full_data_frame_fits_one_ethernet_mtu_and_round_trips() {
        let data = vec![7u8; MAX_FRAME_DATA];
        for id in [
            FrameId::Source(19),
            FrameId::Parity { block: 3, index: 0 },
            FrameId::Parity {
                block: u32::MAX,
                index: MAX_PARITY_FRAMES as u16 - 1,
            },
        ] {
            let frame = DataFrame {
                assignment: u64::MAX,
                pass: 3,
                id,
                data: &data,
            };
            let bytes = encode_data(&frame);
            assert!(bytes.len() <= ETHERNET_UDP_PAYLOAD);
            assert!(is_data_frame(&bytes));
            assert_eq!(decode_data(&bytes), Ok(frame));
        }
        assert!(DATA_HEADER_LEN + DEFAULT_FRAME_DATA as usize <= ETHERNET_UDP_PAYLOAD);
    }

    #[test]
    fn damaged_data_frames_are_refused_by_name() {
        let bytes = encode_data(&DataFrame {
            assignment: 1,
            pass: 1,
            id: FrameId::Source(0),
            data: b"hello",
        });
        let absurd_parity = encode_data(&DataFrame {
            assignment: 1,
            pass: 2,
            id: FrameId::Parity {
                block: 0,
                index: MAX_PARITY_FRAMES as u16,
            },
            data: b"hello",
        });
        assert_eq!(decode_data(&absurd_parity), Err(DataError::BadParity(256)));
        assert_eq!(
            decode_data(&bytes[..bytes.len() - 1]).expect_err("short").reason(),
            "malformed"
        );
        assert_eq!(decode_data(&bytes[..10]).expect_err("header").reason(), "malformed");
        let mut wrong = bytes.clone();
        wrong[0] = b'X';
        assert_eq!(decode_data(&wrong).expect_err("magic").reason(), "bad-magic");
        let mut version = bytes;
        version[3] = 9;
        assert_eq!(decode_data(&version), Err(DataError::BadMagic));
    }

    #[test]
    fn frame_lengths_follow_the_announced_size() {
        let session = announcement();
        assert_eq!(session.frame_len(0), Some(1400));
        assert_eq!(session.frame_len(7), Some(10_000 - 7 * 1400));
        assert_eq!(session.frame_len(8), None);
        assert_eq!(frames_for(MAX_ASSIGNMENT_SIZE, 1), 4 << 30);
        // 8 frames in blocks of 4 and, with 7 frames, a short last block.
        assert_eq!(
            (session.blocks(), session.block_of(5), session.block_span(1)),
            (2, 1, (4, 4))
        );
        let short = Announcement {
            size: 9000,
            frames: 7,
            block_frames: 4,
            ..announcement()
        };
        assert_eq!(
            (short.blocks(), short.block_span(1), short.block_span(2)),
            (2, (4, 3), (7, 0))
        );
    }
}
