//! Messages of a cache community (seed `002_82dbe7a209926976.txt`, dynamic distributed caching: cache
//! communities, peer list, allocation table, master election, content location) and of its directory of
//! holders (seed `003_590cbd812baaa7e3.txt`: the retrieving server that knows which storage server holds
//! which content). The protocol that uses them lives in the `tern-community` crate.
//!
//! | message (seed name) | body | from → to | claims |
//! |---|---|---|---|
//! | `CRMSG_WAKEUP` | [`Wakeup`] | a starting edge (or a master announcing itself) → the discovery group (multicast) | 54–58, 96 |
//! | its answer | [`WakeupAnswer`] | a master → the prober | 57 |
//! | `CRMSG_REQUESTTOJOIN` | [`RequestToJoin`] | newcomer → master | 2–3, 59, 97 |
//! | allow | [`CommunityBody::Allow`] ([`PeerList`]) | master → newcomer | 4–7 |
//! | deny | [`Deny`] (with a [`DenyReason`]) | master (or any peer) → sender | 2 |
//! | `CRMSG_UPDATEPEERLIST` | [`CommunityBody::UpdatePeerList`] ([`PeerList`]: peers, [`AllocationTable`], epoch) | master → every member | 5–7, 11 |
//! | `CRMSG_PEERPING` | [`PeerPing`] | member → master | 32–33 |
//! | its answer | [`PeerPingAnswer`] | master → member | 32 |
//! | `CRMSG_HOLDELECTION` | [`HoldElection`] | member → every peer | 35–36 |
//! | its answers | [`ElectionAnswer`] (a candidacy, or "the master is alive") | peer → participants | 35, 37 |
//! | `CRMSG_NOMINATEMASTER` | [`NominateMaster`] | a leaving master → every member | (description) |
//! | leave | [`CommunityBody::Leave`] | a member leaving on purpose → master | 15 |
//! | `CRMSG_ADDMASTER` | [`MasterClaim`] | a new community's master → registry | 60–61 |
//! | `CRMSG_REPLACEMASTER` | [`MasterClaim`] | an elected master → registry | 35, 38 |
//! | the registry's answer | [`RegistryAnswer`] | registry → master | 35, 60 |
//! | community request | [`CommunityListRequest`] | a starting edge → registry | 51–53, 95 |
//! | community list | [`CommunityList`] | registry → edge | 95 |
//! | location request | [`LocationRequest`] | member → master | 79, 89; seed 003 |
//! | location response | [`LocationResponse`] | master → member | 79, 89; seed 003 |
//! | holding registration / deregistration | [`Holding`] | a member that stored / evicted a copy → master | seed 003 |
//!
//! Every message is one authenticated frame ([`crate::frame`]) tagged with the cluster key: opened by the
//! control channel's [`open_frame`](crate::control) (size, then tag), its names checked by the same
//! [`valid_name`](crate::control::valid_name), guarded against replays by the same
//! [`ReplayGuard`](crate::control::ReplayGuard) through [`CommunityMessage::stamp`], and refused with the same
//! [`ControlError`]s, whose [`reason`](ControlError::reason) names the counter. The envelope carries the
//! community's name, the sender's name and address, the [`Epoch`] of the peer list it speaks under, and the
//! sender's process run, message counter and clock (replay refusal). The payload is JSON; every list and
//! string is bounded by [`CommunityLimits`], and a [`PeerList`] is checked for consistency (unique names,
//! its master listed, its table naming only listed peers).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::{self, ControlError, ControlLimits, Stamp, check_count, check_name, malformed, parse_payload};
use crate::frame;
use crate::key::SecretKey;

/// Frame kind of `CRMSG_WAKEUP`.
pub const KIND_WAKEUP: u8 = 0x60;
/// Frame kind of the answer to a `CRMSG_WAKEUP`.
pub const KIND_WAKEUP_ANSWER: u8 = 0x61;
/// Frame kind of `CRMSG_REQUESTTOJOIN`.
pub const KIND_REQUEST_TO_JOIN: u8 = 0x62;
/// Frame kind of the allow message.
pub const KIND_ALLOW: u8 = 0x63;
/// Frame kind of the deny message.
pub const KIND_DENY: u8 = 0x64;
/// Frame kind of `CRMSG_UPDATEPEERLIST`.
pub const KIND_UPDATE_PEER_LIST: u8 = 0x65;
/// Frame kind of `CRMSG_PEERPING`.
pub const KIND_PEER_PING: u8 = 0x66;
/// Frame kind of the answer to a `CRMSG_PEERPING`.
pub const KIND_PEER_PING_ANSWER: u8 = 0x67;
/// Frame kind of `CRMSG_HOLDELECTION`.
pub const KIND_HOLD_ELECTION: u8 = 0x68;
/// Frame kind of an answer to a `CRMSG_HOLDELECTION`.
pub const KIND_ELECTION_ANSWER: u8 = 0x69;
/// Frame kind of `CRMSG_NOMINATEMASTER`.
pub const KIND_NOMINATE_MASTER: u8 = 0x6A;
/// Frame kind of a member's leave.
pub const KIND_LEAVE: u8 = 0x6B;
/// Frame kind of `CRMSG_ADDMASTER`.
pub const KIND_ADD_MASTER: u8 = 0x6C;
/// Frame kind of `CRMSG_REPLACEMASTER`.
pub const KIND_REPLACE_MASTER: u8 = 0x6D;
/// Frame kind of the registry's answer to `CRMSG_ADDMASTER` and `CRMSG_REPLACEMASTER`.
pub const KIND_REGISTRY_ANSWER: u8 = 0x6E;
/// Frame kind of the community request to the registry.
pub const KIND_COMMUNITY_LIST_REQUEST: u8 = 0x6F;
/// Frame kind of the registry's community list.
pub const KIND_COMMUNITY_LIST: u8 = 0x70;
/// Frame kind of a location request.
pub const KIND_LOCATION_REQUEST: u8 = 0x71;
/// Frame kind of a location response.
pub const KIND_LOCATION_RESPONSE: u8 = 0x72;
/// Frame kind of a holding registration.
pub const KIND_HOLDING_REGISTRATION: u8 = 0x73;
/// Frame kind of a holding deregistration.
pub const KIND_HOLDING_DEREGISTRATION: u8 = 0x74;

/// Default largest datagram (one UDP datagram holds at most 65,507 bytes; a peer list of
/// [`DEFAULT_MAX_PEERS`] peers with the longest names and [`DEFAULT_MAX_HOSTS`] whole host names fits).
pub const DEFAULT_MAX_DATAGRAM: usize = 60 * 1024;
/// Default largest message body over HTTP (the registry's community list).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// Default most peers in a peer list.
pub const DEFAULT_MAX_PEERS: usize = 64;
/// Default most whole host names in an allocation table (claim 14).
pub const DEFAULT_MAX_HOSTS: usize = 32;
/// Default most cache keys in one holding (de)registration.
pub const DEFAULT_MAX_KEYS: usize = 16;
/// Default most communities in a community list.
pub const DEFAULT_MAX_COMMUNITIES: usize = 1024;
/// Most owners of one content portion (`--replicas`).
pub const MAX_REPLICAS: u8 = 8;
/// Longest cache key, in bytes.
pub const MAX_KEY_LEN: usize = 2048;
/// Longest host name, in bytes (RFC 1035's 253, plus room for a port).
pub const MAX_HOST_LEN: usize = 260;

/// The version of a community's peer list. `term` counts masters: an election, a nomination or a new
/// community takes a term higher than any seen, so a master of a later term fences every earlier one.
/// `version` counts the lists one master sent in its term (every join, leave or drop is the next epoch).
/// Epochs compare term first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch {
    /// The master's term.
    pub term: u64,
    /// The list's version within the term.
    pub version: u64,
}

impl Epoch {
    /// The first list of a master's term.
    pub fn first_of(term: u64) -> Epoch {
        Epoch { term, version: 0 }
    }

    /// The list after this one, in the same term.
    pub fn next(self) -> Epoch {
        Epoch {
            term: self.term,
            version: self.version.saturating_add(1),
        }
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.term, self.version)
    }
}

/// One peer of a community as the peer list carries it (claim 1's "peer list indicating the peers").
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// Its name, unique in the community.
    pub name: String,
    /// Where it receives community messages (UDP).
    pub address: SocketAddr,
    /// Where it serves peer requests (`--peer-listen`).
    pub http: SocketAddr,
    /// Its share of the content relative to the others' (`--weight`); 0 owns nothing.
    pub weight: u32,
    /// Configured master priority (`--master-priority`), higher is preferred.
    pub priority: u8,
    /// Its cache's capacity in bytes (the election's second criterion).
    pub capacity: u64,
    /// When its process started, milliseconds since the Unix epoch (uptime: earlier is preferred).
    pub started_at_ms: u64,
    /// Random id of its process run; a restarted peer has another.
    pub incarnation: u64,
}

/// How the allocation table divides content into portions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Portioning {
    /// Each cache key is a point of the hash space (portions are weighted shares of it).
    #[default]
    Key,
    /// Each host name is a point (claim 14: portions are sets of whole domain names).
    Host,
}

/// A peer's weighted share in the [`AllocationTable`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Portion {
    /// The peer.
    pub peer: String,
    /// Its weight: its expected share of the content is the weight over the sum of weights.
    pub weight: u32,
}

/// A whole host name and the peers that own it (claim 14).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostPortion {
    /// The host name.
    pub host: String,
    /// Its owners, the first preferred; at most `replicas`.
    pub owners: Vec<String>,
}

/// The allocation table (claims 11–14): which peer owns which content portion. Portions are computed by
/// weighted rendezvous hashing over the cache key (or the host name), so that a change of membership moves
/// only the content of the peers that came or went; `replicas` owners per point make overlapping portions
/// (claim 13), one owner distinct ones (claim 12). Host names listed in `hosts` are assigned whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AllocationTable {
    /// Owners per point, 1 to [`MAX_REPLICAS`].
    pub replicas: u8,
    /// Keys or hosts.
    pub portioning: Portioning,
    /// Every peer's weighted share, by peer name.
    pub portions: Vec<Portion>,
    /// Whole host names and their owners.
    #[serde(default)]
    pub hosts: Vec<HostPortion>,
}

/// A community's peer list as the master sends it: allow (to a newcomer) and `CRMSG_UPDATEPEERLIST` (to
/// every member). Its epoch is the envelope's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerList {
    /// The master's name (it is among `peers`).
    pub master: String,
    /// Every peer, the master included, sorted by name.
    pub peers: Vec<Peer>,
    /// The allocation table over `peers`.
    pub table: AllocationTable,
}

impl PeerList {
    /// The master's entry.
    pub fn master_peer(&self) -> Option<&Peer> {
        self.peers.iter().find(|peer| peer.name == self.master)
    }

    /// The entry named `name`.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|peer| peer.name == name)
    }
}

/// `CRMSG_WAKEUP`: "is there a community here?" (claims 54–58). A master multicasts it too, with its own
/// entry, so that two masters of one community (after a partition, or two edges that started together)
/// find each other.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wakeup {
    /// The sender's entry when it is the community's master (its term is the envelope's).
    #[serde(default)]
    pub master: Option<Peer>,
}

/// A master's answer to a `CRMSG_WAKEUP`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeupAnswer {
    /// The sequence number of the probe answered.
    pub in_reply_to: u64,
    /// The master (the sender).
    pub master: Peer,
}

/// `CRMSG_REQUESTTOJOIN` (claims 2–3): the newcomer's entry for the peer list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestToJoin {
    /// The newcomer (its name and incarnation are the envelope's).
    pub peer: Peer,
}

/// Why a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenyReason {
    /// The request's tag did not verify with the cluster key (the deny is tagged with the master's key,
    /// so a requester without it cannot verify the answer either: it learns only that it was refused).
    BadTag,
    /// The community has as many peers as its master accepts.
    Full,
    /// Another live peer of the community has this name.
    NameClash,
    /// The receiver is not the community's master; `master` names the one it knows.
    NotMaster,
    /// The sender speaks under an epoch older than the receiver's; `master` names the newer master.
    StaleEpoch,
    /// The master is leaving; `master` names its nominee.
    Leaving,
}

impl DenyReason {
    /// The word it travels as, for logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::BadTag => "bad-tag",
            DenyReason::Full => "full",
            DenyReason::NameClash => "name-clash",
            DenyReason::NotMaster => "not-master",
            DenyReason::StaleEpoch => "stale-epoch",
            DenyReason::Leaving => "leaving",
        }
    }
}

/// The deny message: a refused join, or a redirection to the master the receiver knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deny {
    /// Why.
    pub reason: DenyReason,
    /// The master to turn to, when the sender knows one (its epoch is the envelope's).
    #[serde(default)]
    pub master: Option<Peer>,
}

/// `CRMSG_PEERPING` (claims 32–33): a member's keep-alive to its master; the envelope's epoch is the
/// member's copy of the peer list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPing {
    /// The master the member believes it pings.
    pub master: String,
}

/// The master's answer to a `CRMSG_PEERPING`; the envelope's epoch is the master's list. A member whose
/// copy is older also gets the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPingAnswer {
    /// The sequence number of the ping answered.
    pub in_reply_to: u64,
    /// Whether the member is in the master's peer list (if not, it asks to join again).
    pub listed: bool,
}

/// `CRMSG_HOLDELECTION` (claims 35–36): the sender found `master` silent past the threshold and stands
/// as a candidate for the term in the envelope's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldElection {
    /// The master found silent.
    pub master: String,
    /// The sender's entry (its priority decides).
    pub candidate: Peer,
}

/// An answer to a `CRMSG_HOLDELECTION`, sent to the election's participants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ElectionAnswer {
    /// The sender takes part, with this entry, in the term of the envelope's epoch.
    Candidate(Peer),
    /// The sender is the master found silent, and alive: the election is aborted (claim 37).
    MasterAlive,
    /// The sender heard this master a moment ago: the election is aborted (a relay of claim 37's answer,
    /// so that one member's lost pings do not depose a live master).
    MasterHeard(Peer),
}

/// `CRMSG_NOMINATEMASTER`: the master leaves on purpose and names its successor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NominateMaster {
    /// The successor.
    pub nominee: String,
}

/// `CRMSG_ADDMASTER` (claims 60–61) and `CRMSG_REPLACEMASTER` (claims 35, 38): the sender is the
/// community's master at the envelope's epoch. Also sent periodically as a refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterClaim {
    /// The master (the sender).
    pub master: Peer,
}

/// A community as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommunityRecord {
    /// The community's name.
    pub community: String,
    /// Its master.
    pub master: Peer,
    /// The master's epoch when it last told the registry.
    pub epoch: Epoch,
}

/// The registry's answer to `CRMSG_ADDMASTER` or `CRMSG_REPLACEMASTER`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAnswer {
    /// The sequence number of the claim answered.
    pub in_reply_to: u64,
    /// Whether the claim was recorded (refused: an older term, or another master at the same term).
    pub accepted: bool,
    /// The record after the claim.
    #[serde(default)]
    pub record: Option<CommunityRecord>,
}

/// The community request to the registry (claims 51–53, 95).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommunityListRequest {
    /// Only this community; `None`: all of them.
    #[serde(default)]
    pub only: Option<String>,
}

/// The registry's community list (claim 95).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommunityList {
    /// The sequence number of the request answered.
    pub in_reply_to: u64,
    /// The communities, by name.
    pub communities: Vec<CommunityRecord>,
}

/// A location request (claims 79, 89; seed 003's request for retrieving a location).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationRequest {
    /// The cache key.
    pub key: String,
    /// The request's host name (the point of a host-portioned table).
    #[serde(default)]
    pub host: String,
}

/// One peer a location response names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The peer.
    pub name: String,
    /// Where it serves peer requests.
    pub http: SocketAddr,
    /// It owns the object's portion.
    pub owner: bool,
    /// It registered a copy (seed 003's holding).
    pub holds: bool,
}

/// A location response: where to fetch, in order (owners holding a copy, other holders, owners without
/// one), or the origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationResponse {
    /// The sequence number of the request answered.
    pub in_reply_to: u64,
    /// The cache key.
    pub key: String,
    /// The peers to try, in order; never the requester.
    pub peers: Vec<Location>,
    /// No peer can serve it: fetch from the origin.
    pub go_to_origin: bool,
}

/// A holding registration or deregistration (seed 003: "notifying said retrieving server of holding of
/// said contents"): the sender stored (or evicted) a copy of each key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// Cache keys.
    pub keys: Vec<String>,
}

/// What a community message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommunityBody {
    /// `CRMSG_WAKEUP`.
    Wakeup(Wakeup),
    /// A master's answer to a probe.
    WakeupAnswer(WakeupAnswer),
    /// `CRMSG_REQUESTTOJOIN`.
    RequestToJoin(RequestToJoin),
    /// Allow: the newcomer is in the enclosed peer list (claim 6: an allow message comprises an update of
    /// the peer list).
    Allow(PeerList),
    /// Deny.
    Deny(Deny),
    /// `CRMSG_UPDATEPEERLIST`.
    UpdatePeerList(PeerList),
    /// `CRMSG_PEERPING`.
    PeerPing(PeerPing),
    /// The master's answer to a ping.
    PeerPingAnswer(PeerPingAnswer),
    /// `CRMSG_HOLDELECTION`.
    HoldElection(HoldElection),
    /// An answer to `CRMSG_HOLDELECTION`.
    ElectionAnswer(ElectionAnswer),
    /// `CRMSG_NOMINATEMASTER`.
    NominateMaster(NominateMaster),
    /// A member leaves on purpose.
    Leave,
    /// `CRMSG_ADDMASTER`.
    AddMaster(MasterClaim),
    /// `CRMSG_REPLACEMASTER`.
    ReplaceMaster(MasterClaim),
    /// The registry's answer to a master claim.
    RegistryAnswer(RegistryAnswer),
    /// The community request.
    CommunityListRequest(CommunityListRequest),
    /// The community list.
    CommunityList(CommunityList),
    /// A location request.
    LocationRequest(LocationRequest),
    /// A location response.
    LocationResponse(LocationResponse),
    /// A holding registration.
    HoldingRegistration(Holding),
    /// A holding deregistration.
    HoldingDeregistration(Holding),
}

impl CommunityBody {
    /// The frame kind it travels in.
    pub fn kind(&self) -> u8 {
        match self {
            CommunityBody::Wakeup(_) => KIND_WAKEUP,
            CommunityBody::WakeupAnswer(_) => KIND_WAKEUP_ANSWER,
            CommunityBody::RequestToJoin(_) => KIND_REQUEST_TO_JOIN,
            CommunityBody::Allow(_) => KIND_ALLOW,
            CommunityBody::Deny(_) => KIND_DENY,
            CommunityBody::UpdatePeerList(_) => KIND_UPDATE_PEER_LIST,
            CommunityBody::PeerPing(_) => KIND_PEER_PING,
            CommunityBody::PeerPingAnswer(_) => KIND_PEER_PING_ANSWER,
            CommunityBody::HoldElection(_) => KIND_HOLD_ELECTION,
            CommunityBody::ElectionAnswer(_) => KIND_ELECTION_ANSWER,
            CommunityBody::NominateMaster(_) => KIND_NOMINATE_MASTER,
            CommunityBody::Leave => KIND_LEAVE,
            CommunityBody::AddMaster(_) => KIND_ADD_MASTER,
            CommunityBody::ReplaceMaster(_) => KIND_REPLACE_MASTER,
            CommunityBody::RegistryAnswer(_) => KIND_REGISTRY_ANSWER,
            CommunityBody::CommunityListRequest(_) => KIND_COMMUNITY_LIST_REQUEST,
            CommunityBody::CommunityList(_) => KIND_COMMUNITY_LIST,
            CommunityBody::LocationRequest(_) => KIND_LOCATION_REQUEST,
            CommunityBody::LocationResponse(_) => KIND_LOCATION_RESPONSE,
            CommunityBody::HoldingRegistration(_) => KIND_HOLDING_REGISTRATION,
            CommunityBody::HoldingDeregistration(_) => KIND_HOLDING_DEREGISTRATION,
        }
    }

    /// The seed's name of the message (or a plain description where the seed has none), for logs.
    pub fn name(&self) -> &'static str {
        match self {
            CommunityBody::Wakeup(_) => "WAKEUP",
            CommunityBody::WakeupAnswer(_) => "WAKEUP answer",
            CommunityBody::RequestToJoin(_) => "REQUESTTOJOIN",
            CommunityBody::Allow(_) => "allow",
            CommunityBody::Deny(_) => "deny",
            CommunityBody::UpdatePeerList(_) => "UPDATEPEERLIST",
            CommunityBody::PeerPing(_) => "PEERPING",
            CommunityBody::PeerPingAnswer(_) => "PEERPING answer",
            CommunityBody::HoldElection(_) => "HOLDELECTION",
            CommunityBody::ElectionAnswer(_) => "HOLDELECTION answer",
            CommunityBody::NominateMaster(_) => "NOMINATEMASTER",
            CommunityBody::Leave => "leave",
            CommunityBody::AddMaster(_) => "ADDMASTER",
            CommunityBody::ReplaceMaster(_) => "REPLACEMASTER",
            CommunityBody::RegistryAnswer(_) => "registry answer",
            CommunityBody::CommunityListRequest(_) => "community request",
            CommunityBody::CommunityList(_) => "community list",
            CommunityBody::LocationRequest(_) => "location request",
            CommunityBody::LocationResponse(_) => "location response",
            CommunityBody::HoldingRegistration(_) => "holding registration",
            CommunityBody::HoldingDeregistration(_) => "holding deregistration",
        }
    }
}

/// One community message: the envelope and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommunityMessage {
    /// The community's name; peers of other communities sharing a channel ignore it.
    pub community: String,
    /// The sender's name (the registry's name for its answers).
    pub sender: String,
    /// Where the sender receives community messages.
    pub address: SocketAddr,
    /// The epoch of the peer list the sender speaks under (a master: its list; a candidate: the term it
    /// stands for; zero when it knows none).
    pub epoch: Epoch,
    /// Random id of the sender's process run.
    pub incarnation: u64,
    /// The sender's message counter within its incarnation, from 1, strictly increasing.
    pub seq: u64,
    /// The sender's clock when it sent the message, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// What it says.
    pub body: CommunityBody,
}

impl CommunityMessage {
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

/// A community message whose tag was checked with the cluster key; only [`decode`] makes one, so a value
/// of this type is proof of authenticity (a simulation holding several cores decodes once and hands the
/// result to each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified(CommunityMessage);

impl Verified {
    /// The message.
    pub fn message(&self) -> &CommunityMessage {
        &self.0
    }

    /// The message, by value.
    pub fn into_message(self) -> CommunityMessage {
        self.0
    }
}

/// Bounds on what a receiver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommunityLimits {
    /// Largest datagram or body, in bytes.
    pub max_len: usize,
    /// Most peers in a peer list.
    pub max_peers: usize,
    /// Most whole host names in an allocation table.
    pub max_hosts: usize,
    /// Most cache keys in a holding (de)registration.
    pub max_keys: usize,
    /// Most communities in a community list.
    pub max_communities: usize,
    /// How far a message's send time may lie from the receiver's clock, either way.
    pub freshness: Duration,
    /// Senders the replay guard remembers.
    pub max_senders: usize,
}

impl Default for CommunityLimits {
    /// The limits of datagrams between peers.
    fn default() -> Self {
        let control = ControlLimits::default();
        CommunityLimits {
            max_len: DEFAULT_MAX_DATAGRAM,
            max_peers: DEFAULT_MAX_PEERS,
            max_hosts: DEFAULT_MAX_HOSTS,
            max_keys: DEFAULT_MAX_KEYS,
            max_communities: DEFAULT_MAX_COMMUNITIES,
            freshness: control.freshness,
            max_senders: control.max_senders,
        }
    }
}

impl CommunityLimits {
    /// The limits of bodies over HTTP (the registry's requests and answers, [`DEFAULT_MAX_BODY`]).
    pub fn http() -> Self {
        CommunityLimits {
            max_len: DEFAULT_MAX_BODY,
            ..CommunityLimits::default()
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
pub fn is_community_kind(kind: u8) -> bool {
    (KIND_WAKEUP..=KIND_HOLDING_DEREGISTRATION).contains(&kind)
}

/// Whether `bytes` look like a community message (by the frame's kind; nothing is authenticated yet).
pub fn is_community_datagram(bytes: &[u8]) -> bool {
    frame::peek_kind(bytes).is_some_and(is_community_kind)
}

#[derive(Deserialize)]
struct Payload<T> {
    community: String,
    sender: String,
    address: SocketAddr,
    epoch: Epoch,
    incarnation: u64,
    seq: u64,
    sent_at_ms: u64,
    body: T,
}

/// [`Payload`] borrowed from a message, for encoding.
#[derive(Serialize)]
struct PayloadRef<'a, T> {
    community: &'a str,
    sender: &'a str,
    address: SocketAddr,
    epoch: Epoch,
    incarnation: u64,
    seq: u64,
    sent_at_ms: u64,
    body: &'a T,
}

fn payload_json<T: Serialize>(message: &CommunityMessage, body: &T) -> Vec<u8> {
    let payload = PayloadRef {
        community: &message.community,
        sender: &message.sender,
        address: message.address,
        epoch: message.epoch,
        incarnation: message.incarnation,
        seq: message.seq,
        sent_at_ms: message.sent_at_ms,
        body,
    };
    // Serialising strings, numbers, addresses and enums with string tags cannot fail.
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// Encodes `message` as one frame tagged with `key`. A message over the receiver's limits (too many
/// peers, a name too long) is refused there; the cores keep within the defaults.
pub fn encode(key: &SecretKey, message: &CommunityMessage) -> Vec<u8> {
    let json = match &message.body {
        CommunityBody::Wakeup(body) => payload_json(message, body),
        CommunityBody::WakeupAnswer(body) => payload_json(message, body),
        CommunityBody::RequestToJoin(body) => payload_json(message, body),
        CommunityBody::Allow(body) | CommunityBody::UpdatePeerList(body) => payload_json(message, body),
        CommunityBody::Deny(body) => payload_json(message, body),
        CommunityBody::PeerPing(body) => payload_json(message, body),
        CommunityBody::PeerPingAnswer(body) => payload_json(message, body),
        CommunityBody::HoldElection(body) => payload_json(message, body),
        CommunityBody::ElectionAnswer(body) => payload_json(message, body),
        CommunityBody::NominateMaster(body) => payload_json(message, body),
        CommunityBody::Leave => payload_json(message, &Empty {}),
        CommunityBody::AddMaster(body) | CommunityBody::ReplaceMaster(body) => payload_json(message, body),
        CommunityBody::RegistryAnswer(body) => payload_json(message, body),
        CommunityBody::CommunityListRequest(body) => payload_json(message, body),
        CommunityBody::CommunityList(body) => payload_json(message, body),
        CommunityBody::LocationRequest(body) => payload_json(message, body),
        CommunityBody::LocationResponse(body) => payload_json(message, body),
        CommunityBody::HoldingRegistration(body) | CommunityBody::HoldingDeregistration(body) => {
            payload_json(message, body)
        }
    };
    frame::encode(key, message.body.kind(), &json)
}

/// The body of a message that says nothing more than its kind.
#[derive(Serialize, Deserialize)]
struct Empty {}

/// Decodes one datagram or body: its size, then its tag, then its fields and their bounds. Stateless:
/// replays are the receiver's [`ReplayGuard`](crate::control::ReplayGuard)'s business
/// ([`CommunityMessage::stamp`]).
pub fn decode(key: &SecretKey, bytes: &[u8], limits: &CommunityLimits) -> Result<Verified, ControlError> {
    let frame = control::open_frame(key, bytes, limits.max_len)?;
    let (envelope, body) = decode_body(frame.kind, &frame.payload, limits)?;
    check_name("community", &envelope.community)?;
    check_name("sender", &envelope.sender)?;
    check_sender(&envelope, &body)?;
    Ok(Verified(CommunityMessage {
        community: envelope.community,
        sender: envelope.sender,
        address: envelope.address,
        epoch: envelope.epoch,
        incarnation: envelope.incarnation,
        seq: envelope.seq,
        sent_at_ms: envelope.sent_at_ms,
        body,
    }))
}

fn decode_body(
    kind: u8,
    payload: &[u8],
    limits: &CommunityLimits,
) -> Result<(Payload<()>, CommunityBody), ControlError> {
    let decoded = match kind {
        KIND_WAKEUP => {
            let payload: Payload<Wakeup> = parse_payload(payload)?;
            if let Some(master) = &payload.body.master {
                check_peer(master)?;
            }
            split(payload, CommunityBody::Wakeup)
        }
        KIND_WAKEUP_ANSWER => {
            let payload: Payload<WakeupAnswer> = parse_payload(payload)?;
            check_peer(&payload.body.master)?;
            split(payload, CommunityBody::WakeupAnswer)
        }
        KIND_REQUEST_TO_JOIN => {
            let payload: Payload<RequestToJoin> = parse_payload(payload)?;
            check_peer(&payload.body.peer)?;
            split(payload, CommunityBody::RequestToJoin)
        }
        KIND_ALLOW | KIND_UPDATE_PEER_LIST => {
            let payload: Payload<PeerList> = parse_payload(payload)?;
            check_peer_list(&payload.body, limits)?;
            if kind == KIND_ALLOW {
                split(payload, CommunityBody::Allow)
            } else {
                split(payload, CommunityBody::UpdatePeerList)
            }
        }
        KIND_DENY => {
            let payload: Payload<Deny> = parse_payload(payload)?;
            if let Some(master) = &payload.body.master {
                check_peer(master)?;
            }
            split(payload, CommunityBody::Deny)
        }
        KIND_PEER_PING => {
            let payload: Payload<PeerPing> = parse_payload(payload)?;
            check_name("master", &payload.body.master)?;
            split(payload, CommunityBody::PeerPing)
        }
        KIND_PEER_PING_ANSWER => split(parse_payload(payload)?, CommunityBody::PeerPingAnswer),
        KIND_HOLD_ELECTION => {
            let payload: Payload<HoldElection> = parse_payload(payload)?;
            check_name("master", &payload.body.master)?;
            check_peer(&payload.body.candidate)?;
            split(payload, CommunityBody::HoldElection)
        }
        KIND_ELECTION_ANSWER => {
            let payload: Payload<ElectionAnswer> = parse_payload(payload)?;
            if let ElectionAnswer::Candidate(peer) | ElectionAnswer::MasterHeard(peer) = &payload.body {
                check_peer(peer)?;
            }
            split(payload, CommunityBody::ElectionAnswer)
        }
        KIND_NOMINATE_MASTER => {
            let payload: Payload<NominateMaster> = parse_payload(payload)?;
            check_name("nominee", &payload.body.nominee)?;
            split(payload, CommunityBody::NominateMaster)
        }
        KIND_LEAVE => {
            let payload: Payload<Empty> = parse_payload(payload)?;
            split(payload, |_| CommunityBody::Leave)
        }
        KIND_ADD_MASTER | KIND_REPLACE_MASTER => {
            let payload: Payload<MasterClaim> = parse_payload(payload)?;
            check_peer(&payload.body.master)?;
            if kind == KIND_ADD_MASTER {
                split(payload, CommunityBody::AddMaster)
            } else {
                split(payload, CommunityBody::ReplaceMaster)
            }
        }
        KIND_REGISTRY_ANSWER => {
            let payload: Payload<RegistryAnswer> = parse_payload(payload)?;
            if let Some(record) = &payload.body.record {
                check_record(record)?;
            }
            split(payload, CommunityBody::RegistryAnswer)
        }
        KIND_COMMUNITY_LIST_REQUEST => {
            let payload: Payload<CommunityListRequest> = parse_payload(payload)?;
            if let Some(only) = &payload.body.only {
                check_name("community", only)?;
            }
            split(payload, CommunityBody::CommunityListRequest)
        }
        KIND_COMMUNITY_LIST => {
            let payload: Payload<CommunityList> = parse_payload(payload)?;
            check_count("communities", payload.body.communities.len(), limits.max_communities)?;
            for record in &payload.body.communities {
                check_record(record)?;
            }
            split(payload, CommunityBody::CommunityList)
        }
        KIND_LOCATION_REQUEST => {
            let payload: Payload<LocationRequest> = parse_payload(payload)?;
            check_key(&payload.body.key)?;
            check_host(&payload.body.host, true)?;
            split(payload, CommunityBody::LocationRequest)
        }
        KIND_LOCATION_RESPONSE => {
            let payload: Payload<LocationResponse> = parse_payload(payload)?;
            check_key(&payload.body.key)?;
            check_count("peers", payload.body.peers.len(), limits.max_peers)?;
            for location in &payload.body.peers {
                check_name("peer", &location.name)?;
            }
            split(payload, CommunityBody::LocationResponse)
        }
        KIND_HOLDING_REGISTRATION | KIND_HOLDING_DEREGISTRATION => {
            let payload: Payload<Holding> = parse_payload(payload)?;
            check_count("keys", payload.body.keys.len(), limits.max_keys)?;
            for key in &payload.body.keys {
                check_key(key)?;
            }
            if kind == KIND_HOLDING_REGISTRATION {
                split(payload, CommunityBody::HoldingRegistration)
            } else {
                split(payload, CommunityBody::HoldingDeregistration)
            }
        }
        other => return Err(ControlError::UnknownKind(other)),
    };
    Ok(decoded)
}

/// The sender's own entry, where a body carries one, is the sender: same name and process run.
fn check_sender(envelope: &Payload<()>, body: &CommunityBody) -> Result<(), ControlError> {
    let own_entry = match body {
        CommunityBody::RequestToJoin(request) => Some(&request.peer),
        CommunityBody::WakeupAnswer(answer) => Some(&answer.master),
        CommunityBody::Wakeup(Wakeup { master: Some(master) }) => Some(master),
        CommunityBody::HoldElection(election) => Some(&election.candidate),
        CommunityBody::ElectionAnswer(ElectionAnswer::Candidate(candidate)) => Some(candidate),
        CommunityBody::AddMaster(claim) | CommunityBody::ReplaceMaster(claim) => Some(&claim.master),
        CommunityBody::Allow(list) | CommunityBody::UpdatePeerList(list) => {
            if list.master != envelope.sender {
                return Err(malformed("a peer list comes from its master"));
            }
            list.master_peer()
        }
        _ => None,
    };
    match own_entry {
        Some(peer) if peer.name != envelope.sender || peer.incarnation != envelope.incarnation => {
            Err(malformed("the sender's entry names another peer or process run"))
        }
        _ => Ok(()),
    }
}

fn split<T>(payload: Payload<T>, wrap: impl FnOnce(T) -> CommunityBody) -> (Payload<()>, CommunityBody) {
    let envelope = Payload {
        community: payload.community,
        sender: payload.sender,
        address: payload.address,
        epoch: payload.epoch,
        incarnation: payload.incarnation,
        seq: payload.seq,
        sent_at_ms: payload.sent_at_ms,
        body: (),
    };
    (envelope, wrap(payload.body))
}

/// A cache key: 1 to [`MAX_KEY_LEN`] bytes without control characters.
fn check_key(key: &str) -> Result<(), ControlError> {
    if !key.is_empty() && key.len() <= MAX_KEY_LEN && !key.chars().any(char::is_control) {
        return Ok(());
    }
    Err(malformed(format!(
        "a cache key must be 1 to {MAX_KEY_LEN} bytes without control characters"
    )))
}

/// Whether `host` can be a host name in an allocation table or a location request: at most
/// [`MAX_HOST_LEN`] bytes of letters, digits, `.`, `-`, `_`, `:` and brackets (an IPv6 literal with a port).
pub fn valid_host(host: &str) -> bool {
    host.len() <= MAX_HOST_LEN
        && host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_' | b':' | b'[' | b']'))
}

fn check_host(host: &str, may_be_empty: bool) -> Result<(), ControlError> {
    if valid_host(host) && (may_be_empty || !host.is_empty()) {
        return Ok(());
    }
    Err(malformed(format!(
        "a host name must be 1 to {MAX_HOST_LEN} bytes of letters, digits and . - _ : [ ]"
    )))
}

fn check_peer(peer: &Peer) -> Result<(), ControlError> {
    check_name("peer", &peer.name)
}

fn check_record(record: &CommunityRecord) -> Result<(), ControlError> {
    check_name("community", &record.community)?;
    check_peer(&record.master)
}

fn check_peer_list(list: &PeerList, limits: &CommunityLimits) -> Result<(), ControlError> {
    check_count("peers", list.peers.len(), limits.max_peers)?;
    for peer in &list.peers {
        check_peer(peer)?;
    }
    let sorted = list.peers.windows(2).all(|pair| pair[0].name < pair[1].name);
    if !sorted {
        return Err(malformed("a peer list is sorted by name without duplicates"));
    }
    if list.master_peer().is_none() {
        return Err(malformed("a peer list lists its master"));
    }
    let table = &list.table;
    if table.replicas == 0 || table.replicas > MAX_REPLICAS {
        return Err(malformed(format!("replicas must be 1 to {MAX_REPLICAS}")));
    }
    check_count("portions", table.portions.len(), limits.max_peers)?;
    check_count("hosts", table.hosts.len(), limits.max_hosts)?;
    let listed = |name: &str| list.peers.binary_search_by(|peer| peer.name.as_str().cmp(name)).is_ok();
    if !table.portions.iter().all(|portion| listed(&portion.peer)) {
        return Err(malformed("the allocation table names a peer that is not listed"));
    }
    for host in &table.hosts {
        check_host(&host.host, false)?;
        check_count("owners", host.owners.len(), usize::from(table.replicas))?;
        if !host.owners.iter().all(|owner| listed(owner)) {
            return Err(malformed("a host's owner is not listed"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameError;

    fn key() -> SecretKey {
        SecretKey::parse(&"c3".repeat(32)).expect("key")
    }

    fn peer(name: &str, incarnation: u64) -> Peer {
        Peer {
            name: name.into(),
            address: "10.0.0.1:7400".parse().expect("address"),
            http: "10.0.0.1:7401".parse().expect("address"),
            weight: 100,
            priority: 128,
            capacity: 1 << 30,
            started_at_ms: 1_700_000_000_000,
            incarnation,
        }
    }

    fn list() -> PeerList {
        PeerList {
            master: "a".into(),
            peers: vec![peer("a", 1), peer("b", 2)],
            table: AllocationTable {
                replicas: 2,
                portioning: Portioning::Host,
                portions: vec![
                    Portion {
                        peer: "a".into(),
                        weight: 100,
                    },
                    Portion {
                        peer: "b".into(),
                        weight: 50,
                    },
                ],
                hosts: vec![HostPortion {
                    host: "www.example.com".into(),
                    owners: vec!["b".into(), "a".into()],
                }],
            },
        }
    }

    fn message(body: CommunityBody) -> CommunityMessage {
        CommunityMessage {
            community: "site-1".into(),
            sender: "a".into(),
            address: "10.0.0.1:7400".parse().expect("address"),
            epoch: Epoch { term: 3, version: 7 },
            incarnation: 1,
            seq: 9,
            sent_at_ms: 1_700_000_000_123,
            body,
        }
    }

    fn record() -> CommunityRecord {
        CommunityRecord {
            community: "site-1".into(),
            master: peer("a", 1),
            epoch: Epoch { term: 3, version: 0 },
        }
    }

    /// One message of every kind, each as its sender would write it.
    fn every_body() -> Vec<CommunityBody> {
        vec![
            CommunityBody::Wakeup(Wakeup::default()),
            CommunityBody::Wakeup(Wakeup {
                master: Some(peer("a", 1)),
            }),
            CommunityBody::WakeupAnswer(WakeupAnswer {
                in_reply_to: 4,
                master: peer("a", 1),
            }),
            CommunityBody::RequestToJoin(RequestToJoin { peer: peer("a", 1) }),
            CommunityBody::Allow(list()),
            CommunityBody::Deny(Deny {
                reason: DenyReason::NotMaster,
                master: Some(peer("m", 5)),
            }),
            CommunityBody::UpdatePeerList(list()),
            CommunityBody::PeerPing(PeerPing { master: "m".into() }),
            CommunityBody::PeerPingAnswer(PeerPingAnswer {
                in_reply_to: 8,
                listed: true,
            }),
            CommunityBody::HoldElection(HoldElection {
                master: "m".into(),
                candidate: peer("a", 1),
            }),
            CommunityBody::ElectionAnswer(ElectionAnswer::Candidate(peer("a", 1))),
            CommunityBody::ElectionAnswer(ElectionAnswer::MasterAlive),
            CommunityBody::ElectionAnswer(ElectionAnswer::MasterHeard(peer("m", 5))),
            CommunityBody::NominateMaster(NominateMaster { nominee: "b".into() }),
            CommunityBody::Leave,
            CommunityBody::AddMaster(MasterClaim { master: peer("a", 1) }),
            CommunityBody::ReplaceMaster(MasterClaim { master: peer("a", 1) }),
            CommunityBody::RegistryAnswer(RegistryAnswer {
                in_reply_to: 2,
                accepted: false,
                record: Some(record()),
            }),
            CommunityBody::CommunityListRequest(CommunityListRequest {
                only: Some("site-1".into()),
            }),
            CommunityBody::CommunityList(CommunityList {
                in_reply_to: 3,
                communities: vec![record()],
            }),
            CommunityBody::LocationRequest(LocationRequest {
                key: "GET https://www.example.com/a?b".into(),
                host: "www.example.com".into(),
            }),
            CommunityBody::LocationResponse(LocationResponse {
                in_reply_to: 5,
                key: "GET https://www.example.com/a?b".into(),
                peers: vec![Location {
                    name: "b".into(),
                    http: "10.0.0.2:7401".parse().expect("address"),
                    owner: true,
                    holds: false,
                }],
                go_to_origin: false,
            }),
            CommunityBody::HoldingRegistration(Holding {
                keys: vec!["k1".into(), "k2".into()],
            }),
            CommunityBody::HoldingDeregistration(Holding {
                keys: vec!["k1".into()],
            }),
        ]
    }

    #[test]
    fn every_message_round_trips_in_its_own_kind() {
        let limits = CommunityLimits::default();
        let mut kinds = std::collections::BTreeSet::new();
        for body in every_body() {
            let message = message(body);
            let bytes = encode(&key(), &message);
            assert!(is_community_datagram(&bytes));
            assert_eq!(frame::peek_kind(&bytes), Some(message.body.kind()));
            kinds.insert(message.body.kind());
            let decoded = decode(&key(), &bytes, &limits).expect("decodes").into_message();
            assert_eq!(decoded, message, "{}", message.body.name());
        }
        assert_eq!(
            kinds.len(),
            usize::from(KIND_HOLDING_DEREGISTRATION - KIND_WAKEUP) + 1,
            "every kind is used"
        );
        assert!(!is_community_kind(control::KIND_LEADER_ALIVE));
    }

    #[test]
    fn a_full_peer_list_with_the_longest_names_fits_the_default_datagram() {
        let long = |prefix: char, index: usize| format!("{prefix}{index:02}{}", "x".repeat(61));
        let mut peers: Vec<Peer> = (0..DEFAULT_MAX_PEERS)
            .map(|index| Peer {
                name: long('p', index),
                address: "[fd00:1:2:3:4:5:6:7]:65535".parse().expect("address"),
                http: "[fd00:1:2:3:4:5:6:7]:65535".parse().expect("address"),
                weight: u32::MAX,
                priority: u8::MAX,
                capacity: u64::MAX,
                started_at_ms: u64::MAX,
                incarnation: u64::MAX,
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let master = peers[0].name.clone();
        let table = AllocationTable {
            replicas: MAX_REPLICAS,
            portioning: Portioning::Key,
            portions: peers
                .iter()
                .map(|peer| Portion {
                    peer: peer.name.clone(),
                    weight: u32::MAX,
                })
                .collect(),
            hosts: (0..DEFAULT_MAX_HOSTS)
                .map(|index| HostPortion {
                    host: format!("{index:03}{}", "h".repeat(250)),
                    owners: peers[..usize::from(MAX_REPLICAS)]
                        .iter()
                        .map(|peer| peer.name.clone())
                        .collect(),
                })
                .collect(),
        };
        let mut message = message(CommunityBody::UpdatePeerList(PeerList { master, peers, table }));
        message.sender = long('p', 0);
        message.incarnation = u64::MAX;
        message.community = "c".repeat(64);
        let bytes = encode(&key(), &message);
        assert!(bytes.len() <= DEFAULT_MAX_DATAGRAM, "{} bytes", bytes.len());
        assert_eq!(
            decode(&key(), &bytes, &CommunityLimits::default()).map(Verified::into_message),
            Ok(message)
        );
    }

    #[test]
    fn forged_oversized_malformed_and_inconsistent_messages_are_refused_by_name() {
        let limits = CommunityLimits::default();
        let good = encode(&key(), &message(CommunityBody::UpdatePeerList(list())));
        let other = SecretKey::parse(&"0d".repeat(32)).expect("key");
        let forged = encode(&other, &message(CommunityBody::UpdatePeerList(list())));
        let refused = decode(&key(), &forged, &limits).expect_err("forged");
        assert_eq!(refused, ControlError::Frame(FrameError::BadTag));
        assert_eq!(refused.reason(), "bad-tag");

        let small = CommunityLimits { max_len: 64, ..limits };
        assert_eq!(
            decode(&key(), &good, &small).expect_err("oversized").reason(),
            "oversized"
        );
        assert_eq!(
            decode(&key(), &good[..good.len() - 1], &limits),
            Err(ControlError::Truncated)
        );
        let unknown = frame::encode(&key(), 0x7f, b"{}");
        assert_eq!(decode(&key(), &unknown, &limits), Err(ControlError::UnknownKind(0x7f)));
        let not_json = frame::encode(&key(), KIND_PEER_PING, b"{");
        assert_eq!(
            decode(&key(), &not_json, &limits).expect_err("json").reason(),
            "malformed"
        );

        let refuse = |body: CommunityBody| {
            let bytes = encode(&key(), &message(body));
            let error = decode(&key(), &bytes, &limits).expect_err("refused");
            assert_eq!(error.reason(), "malformed", "{error}");
        };
        let mut unsorted = list();
        unsorted.peers.reverse();
        refuse(CommunityBody::UpdatePeerList(unsorted));
        let mut duplicate = list();
        duplicate.peers[1].name = "a".into();
        refuse(CommunityBody::UpdatePeerList(duplicate));
        let mut headless = list();
        headless.master = "z".into();
        refuse(CommunityBody::Allow(headless));
        let mut stranger = list();
        stranger.table.portions[1].peer = "z".into();
        refuse(CommunityBody::UpdatePeerList(stranger));
        let mut host_stranger = list();
        host_stranger.table.hosts[0].owners = vec!["z".into()];
        refuse(CommunityBody::UpdatePeerList(host_stranger));
        let mut no_replicas = list();
        no_replicas.table.replicas = 0;
        refuse(CommunityBody::UpdatePeerList(no_replicas));
        let mut bad_host = list();
        bad_host.table.hosts[0].host = "a host".into();
        refuse(CommunityBody::UpdatePeerList(bad_host));
        let mut too_many = list();
        too_many.peers = (0..=DEFAULT_MAX_PEERS).map(|i| peer(&format!("p{i:03}"), 1)).collect();
        too_many.peers[0].name = "a".into();
        refuse(CommunityBody::UpdatePeerList(too_many));
        // A sender cannot speak for another peer.
        refuse(CommunityBody::RequestToJoin(RequestToJoin { peer: peer("b", 1) }));
        refuse(CommunityBody::HoldElection(HoldElection {
            master: "m".into(),
            candidate: peer("a", 2),
        }));
        refuse(CommunityBody::PeerPing(PeerPing { master: String::new() }));
        refuse(CommunityBody::LocationRequest(LocationRequest {
            key: String::new(),
            host: String::new(),
        }));
        refuse(CommunityBody::LocationRequest(LocationRequest {
            key: "k\n".into(),
            host: String::new(),
        }));
        refuse(CommunityBody::HoldingRegistration(Holding {
            keys: vec!["k".repeat(MAX_KEY_LEN + 1)],
        }));
        refuse(CommunityBody::HoldingRegistration(Holding {
            keys: vec!["k".into(); DEFAULT_MAX_KEYS + 1],
        }));
        let mut long_community = message(CommunityBody::Leave);
        long_community.community = "c".repeat(65);
        let bytes = encode(&key(), &long_community);
        assert_eq!(decode(&key(), &bytes, &limits).expect_err("long").reason(), "malformed");
    }

    #[test]
    fn the_replay_guard_refuses_a_second_copy_through_the_stamp() {
        let message = message(CommunityBody::PeerPing(PeerPing { master: "m".into() }));
        let mut guard = control::ReplayGuard::new(CommunityLimits::default().replay());
        assert_eq!(guard.check_stamp(&message.stamp(), message.sent_at_ms), Ok(()));
        let again = guard.check_stamp(&message.stamp(), message.sent_at_ms);
        assert_eq!(again.expect_err("replay").reason(), "replayed");
    }

    #[test]
    fn epochs_order_by_term_then_version() {
        let old_master = Epoch { term: 4, version: 90 };
        let new_master = Epoch::first_of(5);
        assert!(new_master > old_master);
        assert!(new_master.next() > new_master);
        assert_eq!(new_master.next().to_string(), "5.1");
        assert_eq!(
            Epoch {
                term: 1,
                version: u64::MAX
            }
            .next()
            .version,
            u64::MAX
        );
    }
}
