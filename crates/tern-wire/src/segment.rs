//! Messages of a network segment's registration and of its group leader's reports to the CCM (seed
//! `004_1419c51402506f7e.txt`, the transport service's discovery phase, claims 38–44, 55 and 58):
//!
//! | message | from → to | carried by |
//! |---|---|---|
//! | [`SegmentBody::Registration`] ([`Registration`]) | member → group leader | unicast UDP to the leader's address (from its LA) |
//! | [`SegmentBody::RegistrationReport`] ([`RegistrationReport`]) | leader → every member | the control channel (multicast) |
//! | [`SegmentBody::SegmentReport`] ([`SegmentReport`]) | leader → mover (CCM) | `POST /api/segments/report` |
//! | [`SegmentBody::ReportAnswer`] ([`ReportAnswer`]) | mover → leader | the answer to that request |
//!
//! The seed's words: a member sends the leader a *registration* ("a server's IP address, name, and other
//! information"); the leader multicasts a *registration report* listing the members it believes are
//! registered, and a member missing from it registers again (claim 38); once no new registration arrives,
//! the leader sends the CCM its *segment report* (claim 43's "cluster report": its address, the segment's
//! name, its location, the registered members and their resources), and later a *network segment report*
//! whenever a member goes offline or appears. A report of kind [`ReportKind::TakeOver`] tells the CCM at
//! once that a new leader took over, before its registration round is complete.
//!
//! Every message is one authenticated frame ([`crate::frame`]) tagged with the cluster key, opened and
//! guarded against replays exactly as the control channel's ([`crate::control`]: the same size check, tag
//! check and [`ReplayGuard`](crate::control::ReplayGuard) through [`SegmentMessage::stamp`]), and refused
//! with the same [`ControlError`]s. The payload is JSON; every list and string is bounded by
//! [`SegmentLimits`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::{
    self, ControlError, ControlLimits, Stamp, check_count, check_name, check_text, malformed, parse_payload,
};
use crate::frame;
use crate::key::SecretKey;

/// Frame kind of a member's registration.
pub const KIND_REGISTRATION: u8 = 0x52;
/// Frame kind of the leader's registration report.
pub const KIND_REGISTRATION_REPORT: u8 = 0x4C;
/// Frame kind of a segment or network-segment report.
pub const KIND_SEGMENT_REPORT: u8 = 0x53;
/// Frame kind of the mover's answer to a report.
pub const KIND_REPORT_ANSWER: u8 = 0x4B;
/// Default largest datagram on the segment (a registration with 256 sites, or a report of 256 members,
/// fits; one UDP datagram holds at most 65,507 bytes).
pub const DEFAULT_MAX_DATAGRAM: usize = 32 * 1024;
/// Default largest report body the mover reads over HTTP.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// Default most members a report lists.
pub const DEFAULT_MAX_MEMBERS: usize = 1024;
/// Default most content groups, and most sites, one member declares.
pub const DEFAULT_MAX_ENTRIES: usize = 256;
/// Longest URL a member gives.
pub const MAX_URL_LEN: usize = 2048;
/// Longest location (a time zone such as `America/New_York`, or a place name).
pub const MAX_LOCATION_LEN: usize = 128;

/// What a member tells its group leader about itself (seed: "IP address, name, and other information";
/// the brief adds free disk, CPU, content groups and the site versions held).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Where its agent takes assignments: `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    /// Bytes free for the hosted sites.
    #[serde(default)]
    pub free_disk: u64,
    /// CPUs.
    #[serde(default)]
    pub cpus: u32,
    /// Content groups it declares itself a member of.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The version (sequence) of each site it holds live.
    #[serde(default)]
    pub versions: BTreeMap<String, u64>,
    /// The version of each site it holds prepared and whole, waiting for a commit (as
    /// [`crate::mover::Registration::prepared`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prepared: BTreeMap<String, u64>,
    /// Where its data channel (local distribution, seed 004) takes the GL's unicast report requests, when
    /// it has one: the GL reaches there a member it never heard on the data channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_channel: Option<SocketAddr>,
    /// Its instance id (as [`crate::mover::Registration::instance`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// The id of its assignment encryption key (as [`crate::mover::Registration::encryption_key_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_id: Option<String>,
}

/// A member's registration (claim 38 (B); claim 42's identification: name and address are in the
/// envelope, the cluster key's tag on the frame).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The member found itself in this leader's last registration report, so this registration is a
    /// keep-alive; `false` asks to be listed, and the leader reports again (claim 38 (D), (E)).
    #[serde(default)]
    pub listed: bool,
    /// What it registers with.
    pub profile: Profile,
}

/// A registered member as the leader knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its node name.
    pub name: String,
    /// Its registration address (IP address and UDP port).
    pub address: SocketAddr,
    /// Its process run's random id: a member that restarts registers anew.
    pub incarnation: u64,
    /// What it registered with.
    pub profile: Profile,
}

/// One entry of a registration report: claim 38's "identifier corresponding to each registered member".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Registered {
    /// The member's node name.
    pub name: String,
    /// The process run it registered from; a member that finds its name with another incarnation
    /// registers again.
    pub incarnation: u64,
}

/// An administrator's choice of a segment's leader (seed: "a GUI mechanism to allow a system
/// administrator to override"), as the mover last said it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderOverride {
    /// The node forced to lead; `None`: the election decides.
    pub leader: Option<String>,
}

/// The leader's multicast list of the members it believes are registered (claim 38 (C)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationReport {
    /// The registered members, the leader included, sorted by name.
    pub members: Vec<Registered>,
    /// The mover's override of the segment's leader, once the leader has heard it (absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_override: Option<LeaderOverride>,
}

/// What a report to the mover is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportKind {
    /// A new leader took over; its registration round is not complete yet, so `members` may be short.
    TakeOver,
    /// The registration round converged (claim 43's cluster report); `members` is complete. Also sent
    /// periodically as a refresh.
    Segment,
    /// A network segment report: members appeared or went offline since the last report; `members` is
    /// complete.
    NetworkSegment,
}

impl ReportKind {
    /// The word it travels as.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::TakeOver => "take-over",
            ReportKind::Segment => "segment",
            ReportKind::NetworkSegment => "network-segment",
        }
    }
}

/// A group leader's report to the mover (the sender is the leader; the envelope carries the segment's
/// name, the leader's term and its registration address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentReport {
    /// Take-over, segment or network-segment report.
    pub kind: ReportKind,
    /// Where the segment is: a time zone or a place name (`--location`).
    #[serde(default)]
    pub location: String,
    /// The registered members, the leader among them, sorted by name.
    pub members: Vec<Member>,
    /// Members that registered since the last report (network-segment reports).
    #[serde(default)]
    pub appeared: Vec<String>,
    /// Members that went offline since the last report (network-segment reports).
    #[serde(default)]
    pub departed: Vec<String>,
}

/// The mover's answer to a [`SegmentReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAnswer {
    /// The sequence number of the report answered (binds the answer to that report).
    pub seq: u64,
    /// The administrator's choice of leader for the segment; `None`: the election decides.
    #[serde(default)]
    pub leader_override: Option<String>,
}

/// What a segment message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentBody {
    /// A member registers with the group leader.
    Registration(Registration),
    /// The leader's list of registered members.
    RegistrationReport(RegistrationReport),
    /// The leader's report to the mover.
    SegmentReport(SegmentReport),
    /// The mover's answer to a report.
    ReportAnswer(ReportAnswer),
}

impl SegmentBody {
    /// The frame kind it travels in.
    pub fn kind(&self) -> u8 {
        match self {
            SegmentBody::Registration(_) => KIND_REGISTRATION,
            SegmentBody::RegistrationReport(_) => KIND_REGISTRATION_REPORT,
            SegmentBody::SegmentReport(_) => KIND_SEGMENT_REPORT,
            SegmentBody::ReportAnswer(_) => KIND_REPORT_ANSWER,
        }
    }
}

/// One segment message: the envelope the control channel's messages also have, and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentMessage {
    /// The network segment's name.
    pub segment: String,
    /// The sender's node name (`ccm` for the mover's answers).
    pub sender: String,
    /// The sender's registration address (the mover: its API address).
    pub address: SocketAddr,
    /// The election term of the leader the message is sent under (a registration: the leader's term as
    /// the member knows it; a report: the term the leader won).
    pub term: u64,
    /// Random id of the sender's process run.
    pub incarnation: u64,
    /// The sender's message counter within its incarnation, strictly increasing.
    pub seq: u64,
    /// The sender's clock when it sent the message, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// What it says.
    pub body: SegmentBody,
}

impl SegmentMessage {
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

/// A segment message whose tag was checked with the cluster key; only [`decode`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified(SegmentMessage);

impl Verified {
    /// The message.
    pub fn message(&self) -> &SegmentMessage {
        &self.0
    }

    /// The message, by value.
    pub fn into_message(self) -> SegmentMessage {
        self.0
    }
}

/// Bounds on what a receiver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLimits {
    /// Largest datagram or body, in bytes.
    pub max_len: usize,
    /// Most members in a report.
    pub max_members: usize,
    /// Most content groups, and most sites, per member.
    pub max_entries: usize,
    /// How far a message's send time may lie from the receiver's clock, either way.
    pub freshness: Duration,
    /// Senders the replay guard remembers.
    pub max_senders: usize,
}

impl Default for SegmentLimits {
    /// The limits of the segment's datagrams.
    fn default() -> Self {
        let control = ControlLimits::default();
        SegmentLimits {
            max_len: DEFAULT_MAX_DATAGRAM,
            max_members: DEFAULT_MAX_MEMBERS,
            max_entries: DEFAULT_MAX_ENTRIES,
            freshness: control.freshness,
            max_senders: control.max_senders,
        }
    }
}

impl SegmentLimits {
    /// The limits of report bodies over HTTP ([`DEFAULT_MAX_BODY`]).
    pub fn http() -> Self {
        SegmentLimits {
            max_len: DEFAULT_MAX_BODY,
            ..SegmentLimits::default()
        }
    }

    /// The settings of a [`ReplayGuard`](crate::control::ReplayGuard) for these messages.
    pub fn replay(&self) -> ControlLimits {
        ControlLimits {
            max_datagram: self.max_len,
            freshness: self.freshness,
            max_senders: self.max_senders,
        }
    }
}

/// Whether `kind` is one of this module's frame kinds.
pub fn is_segment_kind(kind: u8) -> bool {
    matches!(
        kind,
        KIND_REGISTRATION | KIND_REGISTRATION_REPORT | KIND_SEGMENT_REPORT | KIND_REPORT_ANSWER
    )
}

/// Whether `bytes` look like a segment message (by the frame's kind; not authenticated): the control
/// channel carries both these and the election's messages, and each receiver takes its own.
pub fn is_segment_datagram(bytes: &[u8]) -> bool {
    frame::peek_kind(bytes).is_some_and(is_segment_kind)
}

#[derive(Deserialize)]
struct Payload<T> {
    segment: String,
    sender: String,
    address: SocketAddr,
    term: u64,
    incarnation: u64,
    seq: u64,
    sent_at_ms: u64,
    body: T,
}

/// Encodes `message` as one frame tagged with `key`.
pub fn encode(key: &SecretKey, message: &SegmentMessage) -> Vec<u8> {
    // Serialising strings, numbers and maps with string keys cannot fail.
    let json = match &message.body {
        SegmentBody::Registration(body) => payload_json(message, body),
        SegmentBody::RegistrationReport(body) => payload_json(message, body),
        SegmentBody::SegmentReport(body) => payload_json(message, body),
        SegmentBody::ReportAnswer(body) => payload_json(message, body),
    };
    frame::encode(key, message.body.kind(), &json)
}

/// [`Payload`] borrowed from a message, for encoding.
#[derive(Serialize)]
struct PayloadRef<'a, T> {
    segment: &'a str,
    sender: &'a str,
    address: SocketAddr,
    term: u64,
    incarnation: u64,
    seq: u64,
    sent_at_ms: u64,
    body: &'a T,
}

fn payload_json<T: Serialize>(message: &SegmentMessage, body: &T) -> Vec<u8> {
    let payload = PayloadRef {
        segment: &message.segment,
        sender: &message.sender,
        address: message.address,
        term: message.term,
        incarnation: message.incarnation,
        seq: message.seq,
        sent_at_ms: message.sent_at_ms,
        body,
    };
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// Decodes one datagram or body: its size, then its tag, then its fields and their bounds. Stateless:
/// replays are the receiver's [`ReplayGuard`](crate::control::ReplayGuard)'s business
/// ([`SegmentMessage::stamp`]).
pub fn decode(key: &SecretKey, bytes: &[u8], limits: &SegmentLimits) -> Result<Verified, ControlError> {
    let frame = control::open_frame(key, bytes, limits.max_len)?;
    let (envelope, body) = match frame.kind {
        KIND_REGISTRATION => {
            let payload: Payload<Registration> = parse_payload(&frame.payload)?;
            check_profile(&payload.body.profile, limits)?;
            split(payload, SegmentBody::Registration)
        }
        KIND_REGISTRATION_REPORT => {
            let payload: Payload<RegistrationReport> = parse_payload(&frame.payload)?;
            check_registration_report(&payload.body, limits)?;
            split(payload, SegmentBody::RegistrationReport)
        }
        KIND_SEGMENT_REPORT => {
            let payload: Payload<SegmentReport> = parse_payload(&frame.payload)?;
            check_segment_report(&payload.body, &payload.sender, limits)?;
            split(payload, SegmentBody::SegmentReport)
        }
        KIND_REPORT_ANSWER => {
            let payload: Payload<ReportAnswer> = parse_payload(&frame.payload)?;
            if let Some(leader) = &payload.body.leader_override {
                check_name("leader override", leader)?;
            }
            split(payload, SegmentBody::ReportAnswer)
        }
        other => return Err(ControlError::UnknownKind(other)),
    };
    check_name("segment", &envelope.segment)?;
    check_name("sender", &envelope.sender)?;
    Ok(Verified(SegmentMessage {
        segment: envelope.segment,
        sender: envelope.sender,
        address: envelope.address,
        term: envelope.term,
        incarnation: envelope.incarnation,
        seq: envelope.seq,
        sent_at_ms: envelope.sent_at_ms,
        body,
    }))
}

fn split<T>(payload: Payload<T>, wrap: impl FnOnce(T) -> SegmentBody) -> (Payload<()>, SegmentBody) {
    let envelope = Payload {
        segment: payload.segment,
        sender: payload.sender,
        address: payload.address,
        term: payload.term,
        incarnation: payload.incarnation,
        seq: payload.seq,
        sent_at_ms: payload.sent_at_ms,
        body: (),
    };
    (envelope, wrap(payload.body))
}

fn check_profile(profile: &Profile, limits: &SegmentLimits) -> Result<(), ControlError> {
    check_text("url", &profile.url, MAX_URL_LEN)?;
    if profile.url.is_empty() {
        return Err(malformed("a member's url must not be empty"));
    }
    if !crate::mover::valid_instance(&profile.instance) {
        return Err(malformed("a member's instance must be 32 lowercase hex digits"));
    }
    if !profile
        .encryption_key_id
        .as_deref()
        .is_none_or(crate::mover::valid_encryption_key_id)
    {
        return Err(malformed(
            "a member's encryption key id must be 16 lowercase hex digits",
        ));
    }
    check_count("groups", profile.groups.len(), limits.max_entries)?;
    check_count("sites", profile.versions.len(), limits.max_entries)?;
    check_count("prepared sites", profile.prepared.len(), limits.max_entries)?;
    for group in &profile.groups {
        check_name("group", group)?;
    }
    for site in profile.versions.keys().chain(profile.prepared.keys()) {
        check_name("site", site)?;
    }
    Ok(())
}

fn check_registration_report(report: &RegistrationReport, limits: &SegmentLimits) -> Result<(), ControlError> {
    check_count("members", report.members.len(), limits.max_members)?;
    for member in &report.members {
        check_name("member", &member.name)?;
    }
    if let Some(LeaderOverride { leader: Some(leader) }) = &report.leader_override {
        check_name("leader override", leader)?;
    }
    Ok(())
}

fn check_segment_report(report: &SegmentReport, sender: &str, limits: &SegmentLimits) -> Result<(), ControlError> {
    check_text("location", &report.location, MAX_LOCATION_LEN)?;
    check_count("members", report.members.len(), limits.max_members)?;
    check_count("appeared members", report.appeared.len(), limits.max_members)?;
    check_count("departed members", report.departed.len(), limits.max_members)?;
    for member in &report.members {
        check_name("member", &member.name)?;
        check_profile(&member.profile, limits)?;
    }
    for name in report.appeared.iter().chain(&report.departed) {
        check_name("member", name)?;
    }
    if !report.members.iter().any(|member| member.name == sender) {
        return Err(malformed("a segment report lists its leader among the members"));
    }
    Ok(())
}

/// A segment as the mover's API shows it (`GET /api/segments`) and its database keeps it: what the last
/// accepted report said, when, and the administrator's override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentView {
    /// The segment's name (kept when its leader changes).
    pub name: String,
    /// Where it is (a time zone or a place name).
    pub location: String,
    /// The group leader's node name.
    pub leader: String,
    /// The leader's registration address.
    pub leader_address: SocketAddr,
    /// The term the leader won.
    pub term: u64,
    /// The leader's process run.
    pub incarnation: u64,
    /// The last report's sequence number in that run.
    pub seq: u64,
    /// The last report's kind.
    pub kind: ReportKind,
    /// The registered members, the leader among them.
    pub members: Vec<Member>,
    /// When the last report was accepted, milliseconds since the Unix epoch (the mover's clock).
    pub reported_ms: u64,
    /// The administrator's choice of leader, sent to the leader with every answer; `None`: elected.
    #[serde(default)]
    pub leader_override: Option<String>,
}

impl SegmentView {
    /// The leader's entry among the members.
    pub fn leader_member(&self) -> Option<&Member> {
        self.members.iter().find(|member| member.name == self.leader)
    }
}

/// Body of `POST /api/segments/NAME/leader`: the node to force as the segment's leader, or `null` to let
/// the election decide again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideRequest {
    /// The node (a member of the segment), or `None`.
    pub leader: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::parse(&"5e".repeat(32)).expect("key")
    }

    fn profile() -> Profile {
        Profile {
            url: "http://10.0.0.2:7100".into(),
            free_disk: 1 << 30,
            cpus: 8,
            groups: vec!["web".into()],
            versions: BTreeMap::from([("www".into(), 3)]),
            prepared: BTreeMap::from([("www".into(), 4)]),
            data_channel: Some("10.0.0.2:40123".parse().expect("address")),
            instance: String::new(),
            encryption_key_id: None,
        }
    }

    fn registration(profile: Profile) -> Registration {
        Registration { listed: true, profile }
    }

    fn message(body: SegmentBody) -> SegmentMessage {
        SegmentMessage {
            segment: "rack-1".into(),
            sender: "node-a".into(),
            address: "10.0.0.1:40000".parse().expect("address"),
            term: 4,
            incarnation: 0xabc,
            seq: 9,
            sent_at_ms: 1_700_000_000_000,
            body,
        }
    }

    fn member(name: &str) -> Member {
        Member {
            name: name.into(),
            address: "10.0.0.9:40000".parse().expect("address"),
            incarnation: 7,
            profile: profile(),
        }
    }

    fn every_body() -> Vec<SegmentBody> {
        vec![
            SegmentBody::Registration(registration(profile())),
            SegmentBody::RegistrationReport(RegistrationReport {
                members: vec![Registered {
                    name: "node-a".into(),
                    incarnation: 1,
                }],
                leader_override: Some(LeaderOverride {
                    leader: Some("node-b".into()),
                }),
            }),
            SegmentBody::RegistrationReport(RegistrationReport::default()),
            SegmentBody::SegmentReport(SegmentReport {
                kind: ReportKind::NetworkSegment,
                location: "Europe/London".into(),
                members: vec![member("node-a"), member("node-b")],
                appeared: vec!["node-b".into()],
                departed: vec!["node-c".into()],
            }),
            SegmentBody::ReportAnswer(ReportAnswer {
                seq: 9,
                leader_override: None,
            }),
        ]
    }

    #[test]
    fn every_message_round_trips_and_is_told_apart_from_control_messages() {
        let limits = SegmentLimits::default();
        for body in every_body() {
            let original = message(body);
            let bytes = encode(&key(), &original);
            assert!(is_segment_datagram(&bytes));
            assert_eq!(
                decode(&key(), &bytes, &limits).expect("decodes").into_message(),
                original
            );
        }
        let alive = control::ControlMessage {
            segment: "rack-1".into(),
            sender: "node-a".into(),
            address: "10.0.0.1:1".parse().expect("address"),
            term: 1,
            incarnation: 1,
            seq: 1,
            sent_at_ms: 1,
            body: control::ControlBody::LeaderAlive,
        };
        let control_datagram = control::encode(&key(), &alive);
        assert!(!is_segment_datagram(&control_datagram));
        assert_eq!(
            decode(&key(), &control_datagram, &limits),
            Err(ControlError::UnknownKind(control::KIND_LEADER_ALIVE))
        );
    }

    #[test]
    fn forged_oversized_and_out_of_bounds_messages_are_refused_by_name() {
        let limits = SegmentLimits::default();
        let good = encode(&key(), &message(SegmentBody::Registration(registration(profile()))));
        let other = SecretKey::parse(&"11".repeat(32)).expect("key");
        let forged = encode(&other, &message(SegmentBody::Registration(registration(profile()))));
        assert_eq!(
            decode(&key(), &forged, &limits).expect_err("forged").reason(),
            "bad-tag"
        );
        let small = SegmentLimits { max_len: 64, ..limits };
        assert_eq!(
            decode(&key(), &good, &small).expect_err("oversized").reason(),
            "oversized"
        );
        assert_eq!(
            decode(&key(), &good[..good.len() - 1], &limits),
            Err(ControlError::Truncated)
        );

        let many_groups = Profile {
            groups: (0..=limits.max_entries).map(|i| format!("g{i}")).collect(),
            ..profile()
        };
        let bytes = encode(&key(), &message(SegmentBody::Registration(registration(many_groups))));
        assert!(matches!(
            decode(&key(), &bytes, &SegmentLimits::http()),
            Err(ControlError::Malformed(_))
        ));

        let no_url = Profile {
            url: String::new(),
            ..profile()
        };
        let bytes = encode(&key(), &message(SegmentBody::Registration(registration(no_url))));
        assert_eq!(
            decode(&key(), &bytes, &limits).expect_err("no url").reason(),
            "malformed"
        );

        let bad_site = Profile {
            versions: BTreeMap::from([("a\nb".into(), 1)]),
            ..profile()
        };
        let bytes = encode(&key(), &message(SegmentBody::Registration(registration(bad_site))));
        assert_eq!(
            decode(&key(), &bytes, &limits).expect_err("bad site").reason(),
            "malformed"
        );
        let bad_prepared = Profile {
            prepared: BTreeMap::from([("a\nb".into(), 2)]),
            ..profile()
        };
        let bytes = encode(&key(), &message(SegmentBody::Registration(registration(bad_prepared))));
        assert_eq!(
            decode(&key(), &bytes, &limits).expect_err("bad prepared site").reason(),
            "malformed"
        );
        let bad_key_id = Profile {
            encryption_key_id: Some("not an id".into()),
            ..profile()
        };
        let bytes = encode(&key(), &message(SegmentBody::Registration(registration(bad_key_id))));
        assert_eq!(
            decode(&key(), &bytes, &limits).expect_err("bad key id").reason(),
            "malformed"
        );
        let key_id = crate::mover::encryption_key_id(&[7; 32]);
        assert!(crate::mover::valid_encryption_key_id(&key_id), "{key_id}");
        assert_ne!(key_id, crate::mover::encryption_key_id(&[8; 32]));
        let good_key_id = Profile {
            encryption_key_id: Some(key_id),
            ..profile()
        };
        let bytes = encode(&key(), &message(SegmentBody::Registration(registration(good_key_id))));
        assert!(decode(&key(), &bytes, &limits).is_ok());

        let leaderless = SegmentReport {
            kind: ReportKind::Segment,
            location: String::new(),
            members: vec![member("node-b")],
            appeared: vec![],
            departed: vec![],
        };
        let bytes = encode(&key(), &message(SegmentBody::SegmentReport(leaderless)));
        assert!(matches!(
            decode(&key(), &bytes, &limits),
            Err(ControlError::Malformed(reason)) if reason.contains("leader")
        ));

        let wrong_body = frame::encode(&key(), KIND_REPORT_ANSWER, br#"{"segment":"s"}"#);
        assert_eq!(
            decode(&key(), &wrong_body, &limits).expect_err("partial").reason(),
            "malformed"
        );
    }

    #[test]
    fn the_control_channels_replay_guard_guards_segment_messages() {
        let limits = SegmentLimits::default();
        let mut guard = control::ReplayGuard::new(limits.replay());
        let first = message(SegmentBody::Registration(registration(profile())));
        let now = first.sent_at_ms;
        assert_eq!(guard.check_stamp(&first.stamp(), now), Ok(()));
        assert_eq!(
            guard.check_stamp(&first.stamp(), now).expect_err("replay").reason(),
            "replayed"
        );
        let next = SegmentMessage {
            seq: first.seq + 1,
            ..first.clone()
        };
        assert_eq!(guard.check_stamp(&next.stamp(), now), Ok(()));
        let window = u64::try_from(limits.freshness.as_millis()).expect("window");
        let stale = SegmentMessage {
            seq: first.seq + 2,
            sent_at_ms: now - window - 1,
            ..first
        };
        assert_eq!(
            guard.check_stamp(&stale.stamp(), now).expect_err("stale").reason(),
            "stale"
        );
    }

    #[test]
    fn a_report_of_the_largest_default_segment_fits_the_http_limit() {
        let members: Vec<Member> = (0..DEFAULT_MAX_MEMBERS)
            .map(|i| Member {
                name: format!("{i:0>64}"),
                ..member("x")
            })
            .collect();
        let mut report = message(SegmentBody::SegmentReport(SegmentReport {
            kind: ReportKind::Segment,
            location: "UTC".into(),
            members,
            appeared: vec![],
            departed: vec![],
        }));
        report.sender = format!("{:0>64}", 0);
        let bytes = encode(&key(), &report);
        assert!(bytes.len() <= DEFAULT_MAX_BODY, "{} bytes", bytes.len());
        assert!(decode(&key(), &bytes, &SegmentLimits::http()).is_ok());
    }
}
