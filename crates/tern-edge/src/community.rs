//! The edge in a cache community (seed `002_82dbe7a209926976.txt`, claims 75–94: content location; seed
//! `003_590cbd812baaa7e3.txt`: the directory of holders). A miss for an object whose portion another
//! peer owns by the allocation table goes to that owner over HTTP on its peer address (`--peer-listen`),
//! authenticated with a token derived from the cluster key and marked with a hop field, so that the owner
//! fetches it from the origin at most once for the whole community (its coalescing joins every peer's
//! request) and a marked request is never forwarded to another owner. Before anyone goes to the origin
//! (the owner on its own miss, or a requester whose owners did not answer) it asks the master's directory
//! for a peer that holds a copy ([`upstream`]). The store tells the directory what it holds and drops
//! ([`holdings`]). A purge at any member reaches every member ([`peer`]). An owner that does not answer
//! within the peer timeouts is skipped: a client never sees an error because a peer died. By default
//! (`keep = never`) a non-owner does not store what an owner served it, so the community's disks hold one
//! copy of each object; `hot` and `always` keep more ([`keep`]).
//!
//! The community's membership, election and table come from [`tern_community::driver`].

mod auth;
mod holdings;
mod keep;
mod peer;
mod upstream;

pub use auth::{FRESHNESS_WINDOW, PeerAuth, PeerAuthError};
pub use keep::{DEFAULT_HOT_WINDOW_SECS, KeepPolicy};
pub use peer::{PEER_PURGE_PATH, PeerHandler, RelaySummary};
pub(crate) use peer::{strip_client_fields, take_peer_mark};
pub use upstream::CommunityUpstream;

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tern_community::Role;
use tern_community::driver::{CommunityHandle, Snapshot};
use tern_http::Body;
use tern_http_cache::Store;
use tern_wire::SecretKey;

/// The request field carrying the peer token ([`PeerAuth`]).
pub const TOKEN_FIELD: &str = "tern-community-token";
/// The hop marker: set on a request an owner received from a peer (its value names the sender). A request
/// carrying it goes to the origin, never to another peer.
pub const HOP_FIELD: &str = "tern-community-hop";

/// The response field by which a member's peer listener says it refused a request's token (its value is
/// the reason: `stale`, `bad-mac`, ...): the requester then goes on without it (to a holder or the
/// origin), so a client never gets a peer's refusal as its answer.
pub const REFUSED_FIELD: &str = "tern-community-refused";
/// Set by a requester on a prefetch it passes to the owner (unless `keep = always`): the owner fetches the
/// object into its own cache and answers `204 No Content`, so the body does not cross the peer link for a
/// copy nobody keeps.
pub const PREFETCH_FIELD: &str = "tern-community-prefetch";
/// Set by an owner's peer listener on a `502` or `504` it answers because its own fetch from the origin
/// failed (not because it is broken or shutting down): the requester answers that failure rather than
/// asking the origin itself, so that a sick origin is asked once per object by the whole community.
pub const ORIGIN_FAILED_FIELD: &str = "tern-community-origin-failed";
/// The sync service's prefetch field (`tern-prefetch: 1`), see `tern_sync`'s cacher.
pub(crate) const SYNC_PREFETCH_FIELD: &str = "tern-prefetch";
/// Set by the community upstream on a response an owner served (a response extension, so that nothing an
/// origin or a peer sends can set it), for the fill to leave unstored when the keep policy does not keep
/// it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerServed;

/// Settings of the edge's community (`--community NAME` and the flags beside it; the `[edge.community]`
/// table).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommunitySettings {
    /// The community's name (`--community`).
    pub name: String,
    /// This edge's name in the community (`--peer-name`); default: its peer address.
    pub peer_name: Option<String>,
    /// The cluster key file (`--cluster-key`): tags every community message and derives the peer token.
    pub cluster_key: PathBuf,
    /// Where community messages (UDP) and peer requests (HTTP over TCP) arrive, one port number for both
    /// (`--peer-listen`); a concrete address, as the other peers reach it. Required: the default, the
    /// unspecified `0.0.0.0:7400`, is refused at start.
    pub peer_listen: SocketAddr,
    /// The registry's URL (`--registry http://HOST:PORT`).
    pub registry: Option<String>,
    /// The discovery group (`--discover GROUP:PORT`).
    pub discover: Option<SocketAddrV4>,
    /// This edge's share relative to the others (`--weight`).
    pub weight: u32,
    /// Owners per object (`--replicas`, claim 13).
    pub replicas: u8,
    /// Master priority (`--master-priority`), higher wins.
    pub master_priority: u8,
    /// Connect timeout to a peer, milliseconds; a peer slower than this is skipped.
    pub peer_connect_timeout_ms: u64,
    /// Time to a peer's response head, milliseconds; a peer slower than this is skipped. A peer is also
    /// given up as soon as the master drops it from the community (a dead or hung member), so this can be
    /// as long as the origin's own first-byte timeout: an owner waiting on a slow origin is waited for,
    /// and the origin still sees each object once.
    pub peer_first_byte_timeout_ms: u64,
    /// Time to the master's answer to a location request, milliseconds; without an answer in time the
    /// edge goes to the origin.
    pub peer_location_timeout_ms: u64,
    /// Whether a non-owner keeps a copy (`--community-keep`).
    pub keep: KeepPolicy,
    /// The window of the `hot` keep policy, seconds: a non-owner keeps a copy of an object asked for
    /// again here within it.
    pub hot_window_secs: u64,
}

impl Default for CommunitySettings {
    fn default() -> Self {
        CommunitySettings {
            name: String::new(),
            peer_name: None,
            cluster_key: PathBuf::new(),
            // No usable default: the address other peers reach this edge at (refused unless given).
            peer_listen: SocketAddr::from(([0, 0, 0, 0], 7400)),
            registry: None,
            discover: None,
            weight: tern_community::DEFAULT_WEIGHT,
            replicas: 1,
            master_priority: tern_community::DEFAULT_PRIORITY,
            peer_connect_timeout_ms: 300,
            peer_first_byte_timeout_ms: 35_000,
            peer_location_timeout_ms: 100,
            keep: KeepPolicy::Never,
            hot_window_secs: keep::DEFAULT_HOT_WINDOW_SECS,
        }
    }
}

/// Label: how a peer request ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerOutcome {
    /// Requester side: `ok`, `connect`, `timeout`, `failed`, `body-cut`, `left-mid-body`, `error-status`, `origin-fallback`,
    /// `holder-ok`, `holder-miss` (a holder named by the directory had no copy left); owner side: `served`,
    /// `prefetched`, `refused`.
    pub outcome: &'static str,
}

/// Label: how a location request (seed 003) ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LocationOutcome {
    /// `holder` (a peer holding a copy was named), `none` (no other holder: the origin), `unanswered`
    /// (no answer within the location timeout).
    pub outcome: &'static str,
}

/// Label: a holding change told to the master's directory.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HoldingKind {
    /// `held`, `released`, or `reregistered` (all held keys again, for a new master).
    pub kind: &'static str,
}

/// The community's counters on `/metrics`.
#[derive(Clone, Default)]
pub struct CommunityMetrics {
    /// Peer requests by outcome, both sides.
    pub peer_requests: Family<PeerOutcome, Counter>,
    /// Misses fetched from the origin by this edge as the object's owner (or with the hop marker).
    pub owner_fetches: Counter,
    /// Body bytes peers served this edge (owners and holders), for the cost of the community's traffic.
    pub peer_bytes: Counter,
    /// Location requests by outcome.
    pub locations: Family<LocationOutcome, Counter>,
    /// Keys registered with or deregistered from the master's directory.
    pub holdings: Family<HoldingKind, Counter>,
    /// Purges relayed to the other members, by outcome (`ok`, `failed`), and received from them
    /// (`received`).
    pub purge_relays: Family<PeerOutcome, Counter>,
    /// The core's counters as of the last scrape, by event: `elections`, `elections-won`,
    /// `joins-allowed`, `joins-denied`, `refused` (bad tag, stale epoch, ...), `location-answers` (as
    /// master), `members-dropped`.
    pub core_events: Family<PeerOutcome, Gauge>,
    /// Peers listed in the community, this edge among them.
    pub peers: Gauge,
    /// The term of the epoch in force (rises with every new master).
    pub term: Gauge,
    /// 1 while this edge is the master.
    pub is_master: Gauge,
}

impl CommunityMetrics {
    /// Registers the counters.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tern_community_peer_requests",
            "Peer requests by outcome (requester: ok, connect, timeout, failed, body-cut, left-mid-body, error-status, owner-origin-failed, origin-fallback, holder-ok, holder-miss; owner: served, prefetched, refused)",
            self.peer_requests.clone(),
        );
        registry.register(
            "tern_community_owner_fetches",
            "Misses this edge took to the origin itself (as owner, or marked by a peer)",
            self.owner_fetches.clone(),
        );
        registry.register(
            "tern_community_peer_bytes",
            "Body bytes other members served this edge",
            self.peer_bytes.clone(),
        );
        registry.register(
            "tern_community_location_requests",
            "Location requests to the master's directory of holders by outcome (holder, none, unanswered)",
            self.locations.clone(),
        );
        registry.register(
            "tern_community_holdings",
            "Keys told to the master's directory (held, released, reregistered)",
            self.holdings.clone(),
        );
        registry.register(
            "tern_community_core_events",
            "The community core's counters since start (elections, elections-won, joins-allowed, joins-denied, refused, location-answers, members-dropped)",
            self.core_events.clone(),
        );
        registry.register(
            "tern_community_peers",
            "Peers listed in the community",
            self.peers.clone(),
        );
        registry.register(
            "tern_community_term",
            "Term of the community's epoch in force",
            self.term.clone(),
        );
        registry.register(
            "tern_community_is_master",
            "1 while this edge is the master",
            self.is_master.clone(),
        );
        registry.register(
            "tern_community_purge_relays",
            "Purges relayed to other members (ok, failed) and received from them (received)",
            self.purge_relays.clone(),
        );
    }

    fn count(&self, outcome: &'static str) {
        self.peer_requests.get_or_create(&PeerOutcome { outcome }).inc();
    }

    /// Copies the core's counters and state from `snapshot` (called before each scrape).
    pub fn refresh(&self, snapshot: &Snapshot) {
        let counters = &snapshot.counters;
        let clamp = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        for (outcome, value) in [
            ("elections", counters.elections),
            ("elections-won", counters.elections_won),
            ("joins-allowed", counters.joins_allowed),
            ("joins-denied", counters.joins_denied),
            ("refused", counters.refused.total()),
            ("location-answers", counters.location_requests),
            ("members-dropped", counters.members_dropped),
        ] {
            self.core_events
                .get_or_create(&PeerOutcome { outcome })
                .set(clamp(value));
        }
        self.peers.set(clamp(snapshot.peers.len() as u64));
        self.term.set(clamp(snapshot.epoch.map_or(0, |epoch| epoch.term)));
        self.is_master.set(i64::from(snapshot.role == Role::Master));
    }
}

/// Resolves once the peer serving at `http` is no longer in the community's view (the master dropped it:
/// dead, hung, or gone); never while it is listed.
pub(crate) async fn until_left(
    mut view: tokio::sync::watch::Receiver<Arc<tern_community::driver::Snapshot>>,
    http: SocketAddr,
) {
    loop {
        if !view.borrow_and_update().peers.iter().any(|peer| peer.http == http) {
            return;
        }
        if view.changed().await.is_err() {
            // The driver stopped: the view never changes again.
            std::future::pending::<()>().await;
        }
    }
}

/// The edge's part of the community: the driver's handle, the token, the peer client and the counters.
pub struct EdgeCommunity {
    /// The driver.
    pub handle: CommunityHandle,
    /// The counters.
    pub metrics: CommunityMetrics,
    auth: PeerAuth,
    keep: keep::Keeping,
    /// Peer requests and purge relays.
    client: Client<HttpConnector, Body>,
    /// Time to a peer's response head.
    first_byte_timeout: Duration,
    /// Time to the master's location answer.
    location_timeout: Duration,
}

impl EdgeCommunity {
    /// The edge's community state for `/status`: community, role, epoch, master, peers with their
    /// expected shares, and this edge's portion.
    pub fn status(&self) -> serde_json::Value {
        let snapshot = self.handle.snapshot();
        let share = |name: &str| {
            snapshot
                .allocation
                .as_ref()
                .map_or(0.0, |allocation| allocation.expected_share(name))
        };
        let peers: Vec<serde_json::Value> = snapshot
            .peers
            .iter()
            .map(|peer| {
                serde_json::json!({
                    "name": peer.name,
                    "address": peer.address.to_string(),
                    "http": peer.http.to_string(),
                    "weight": peer.weight,
                    "priority": peer.priority,
                    "share": share(&peer.name),
                })
            })
            .collect();
        let counters = snapshot.counters;
        serde_json::json!({
            "community": snapshot.community,
            "name": snapshot.me.name,
            "role": snapshot.role.as_str(),
            "epoch": snapshot.epoch.map(|epoch| epoch.to_string()),
            "term": snapshot.epoch.map(|epoch| epoch.term),
            "master": snapshot.master.as_ref().map(|master| master.name.clone()),
            "peers": peers,
            "share": snapshot.share(),
            "keep": self.keep.policy().as_str(),
            "registry": snapshot.registry.map(|health| health.as_str()),
            "counters": {
                "joins_allowed": counters.joins_allowed,
                "joins_denied": counters.joins_denied,
                "elections": counters.elections,
                "elections_won": counters.elections_won,
                "location_requests": counters.location_requests,
                "locations_asked": snapshot.driver.locations_asked,
                "held_keys": snapshot.held,
                "refused": counters.refused.total(),
                "refused_bad_tag": counters.refused.bad_tag,
            },
        })
    }
}

/// Starts the community part of an edge: binds the peer port (TCP for peer requests, UDP for community
/// messages, one port number), starts the driver, tells the master's directory what `store` holds from
/// now on, and has what `store` holds validated before use whenever this edge (re)joins, since it may
/// have missed purges while it was away ([`holdings`]). Returns the community and the TCP listener to
/// serve peer requests on.
pub async fn start(
    settings: &CommunitySettings,
    capacity: u64,
    store: &Arc<Store>,
    clock: Arc<dyn crate::clock::Clock>,
) -> Result<(Arc<EdgeCommunity>, tokio::net::TcpListener), crate::StartError> {
    let config_error = |message: String| crate::StartError::Config(message);
    if settings.peer_listen.ip().is_unspecified() {
        return Err(config_error(format!(
            "--peer-listen {}: give the address the other peers reach this edge at",
            settings.peer_listen
        )));
    }
    let key = SecretKey::load(&settings.cluster_key)?;
    let (listener, bound) = tern_admin::bind_listener(settings.peer_listen).await?;
    let socket = tern_community::driver::bind(bound).map_err(|error| config_error(error.to_string()))?;
    let name = settings.peer_name.clone().unwrap_or_else(|| bound.to_string());
    let mut config = tern_community::CommunityConfig::new(&settings.name, name.clone(), bound, bound, key.clone());
    config.weight = settings.weight;
    config.priority = settings.master_priority;
    config.capacity = capacity;
    config.allocation.replicas = settings.replicas;
    let links = tern_community::driver::Links {
        registry: settings.registry.clone(),
        discover: settings.discover,
        ..tern_community::driver::Links::default()
    };
    let handle =
        tern_community::driver::spawn(config, socket, links).map_err(|error| config_error(error.to_string()))?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_millis(settings.peer_connect_timeout_ms.max(1))));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let community = Arc::new(EdgeCommunity {
        handle,
        metrics: CommunityMetrics::default(),
        auth: PeerAuth::new(&key, &settings.name, &name),
        keep: keep::Keeping::new(settings.keep, Duration::from_secs(settings.hot_window_secs.max(1))),
        client,
        first_byte_timeout: Duration::from_millis(settings.peer_first_byte_timeout_ms.max(1)),
        location_timeout: Duration::from_millis(settings.peer_location_timeout_ms.max(1)),
    });
    holdings::spawn(store, &community, clock);
    Ok((community, listener))
}
