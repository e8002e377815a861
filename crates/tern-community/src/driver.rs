//! The tokio driver of one peer's [`Community`] core (seed `002_82dbe7a209926976.txt`): a short loop that
//! feeds the core datagrams from its community socket (UDP on `--peer-listen`) and from the discovery group
//! (`--discover GROUP:PORT`, claims 54–58), the registry's answers (claim 51's "cache server", over HTTP),
//! due timers and the edge's requests, and carries out what it says. The edge asks a [`CommunityHandle`]
//! for the current [`Snapshot`] (role, master, epoch, peer list, allocation table, counters), feeds it
//! seed 003's holdings, sends location requests, and leaves on SIGTERM.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use socket2::{Domain, Protocol, Socket, Type};
use tern_wire::community::{self, CommunityMessage, Epoch, LocationResponse, Peer};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Allocation, Community, CommunityConfig, ConfigError, Counters, Event, Input, Output, Role, TimerKind};
use tern_admin::throttle::{DEFAULT_WARN_INTERVAL, Throttle};

/// The HTTP path the registry answers community messages on (`POST`, the encoded message as the body).
pub const REGISTRY_PATH: &str = "/community";
/// Most keys the driver remembers as held, to send again to a new master (the directory is soft state).
pub const DEFAULT_MAX_HELD: usize = 100_000;
/// Depth of the queue of the edge's requests to the driver (holdings, locations); more are dropped and
/// counted.
pub const COMMAND_QUEUE: usize = 1024;
/// Most peer addresses whose bad-tag warnings are rate-limited separately; beyond that, new addresses are
/// counted but not logged until older entries expire.
pub const MAX_WARNED_SOURCES: usize = 256;

/// Where the driver finds its community.
#[derive(Debug, Clone)]
pub struct Links {
    /// The registry's base URL (`--registry http://HOST:PORT`); its answers come within
    /// [`crate::Timers::registry_timeout`].
    pub registry: Option<String>,
    /// The discovery group (`--discover GROUP:PORT`) for `CRMSG_WAKEUP` probes.
    pub discover: Option<SocketAddrV4>,
    /// The interface to join the discovery group on (`0.0.0.0`: the interface of the community address,
    /// see [`group_interface`]).
    pub interface: Ipv4Addr,
    /// Most keys remembered as held.
    pub max_held: usize,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            registry: None,
            discover: None,
            interface: Ipv4Addr::UNSPECIFIED,
            max_held: DEFAULT_MAX_HELD,
        }
    }
}

/// Why the driver did not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The settings are inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be set up.
    #[error("community socket {address}: {source}")]
    Socket {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The discovery group is not an IPv4 multicast group.
    #[error("{0} is not an IPv4 multicast group")]
    NotMulticast(Ipv4Addr),
    /// The registry URL is not an `http://` URL.
    #[error(
        "registry `{0}` is not an http:// URL: the registry speaks plain HTTP (its messages carry the cluster key's tag)"
    )]
    Registry(String),
}

/// How the registry last answered (`/status`'s `registry`): an edge whose registry is unreachable or
/// refuses it forms a community of its own, which an operator should see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegistryHealth {
    /// No answer yet.
    Pending,
    /// It answered.
    Ok,
    /// No connection, or no answer within the registry timeout.
    Unreachable,
    /// It refused the request as not tagged with its cluster key (403 bad-tag): the keys differ.
    Refused,
    /// It answered with another error status.
    Failing,
}

impl RegistryHealth {
    /// The state's name, for logs and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryHealth::Pending => "pending",
            RegistryHealth::Ok => "ok",
            RegistryHealth::Unreachable => "unreachable",
            RegistryHealth::Refused => "refused",
            RegistryHealth::Failing => "failing",
        }
    }
}

impl std::fmt::Display for RegistryHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a registry request brought no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RegistryFailure {
    health: RegistryHealth,
    reason: String,
}

impl RegistryFailure {
    fn unreachable(reason: impl Into<String>) -> Self {
        RegistryFailure {
            health: RegistryHealth::Unreachable,
            reason: reason.into(),
        }
    }

    /// A refusal by HTTP status: 403 is the registry's answer to a request without its key's tag.
    fn status(status: http::StatusCode) -> Self {
        let health = if status == http::StatusCode::FORBIDDEN {
            RegistryHealth::Refused
        } else {
            RegistryHealth::Failing
        };
        RegistryFailure {
            health,
            reason: format!("status {status}"),
        }
    }

    fn other(reason: impl Into<String>) -> Self {
        RegistryFailure {
            health: RegistryHealth::Failing,
            reason: reason.into(),
        }
    }
}

/// What the driver itself counts, beside the core's [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverCounters {
    /// Datagrams that could not be sent.
    pub send_failures: u64,
    /// Registry requests that failed or timed out (the refused ones among them).
    pub registry_failures: u64,
    /// Registry requests refused as not tagged with its cluster key (403).
    pub registry_refused: u64,
    /// Location requests sent to the master.
    pub locations_asked: u64,
    /// Location requests unanswered (their waiter gave up first).
    pub locations_unanswered: u64,
    /// Requests from the edge dropped because the queue was full.
    pub commands_dropped: u64,
}

/// The community as this peer sees it at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The community's name.
    pub community: String,
    /// This peer's entry.
    pub me: Peer,
    /// Its role.
    pub role: Role,
    /// The master it follows (itself when master).
    pub master: Option<Peer>,
    /// The epoch of the peer list in force.
    pub epoch: Option<Epoch>,
    /// The peers listed, the master among them.
    pub peers: Vec<Peer>,
    /// The allocation table in force.
    pub allocation: Option<Arc<Allocation>>,
    /// The core's counters.
    pub counters: Counters,
    /// The driver's counters.
    pub driver: DriverCounters,
    /// Keys remembered as held by this peer.
    pub held: usize,
    /// How the registry last answered; `None` without a registry.
    pub registry: Option<RegistryHealth>,
}

impl Snapshot {
    /// The owners of an object by the table in force, the first preferred (claims 11–14); empty without a
    /// table.
    pub fn owners(&self, host: &str, key: &str) -> Vec<&Peer> {
        let Some(allocation) = &self.allocation else {
            return Vec::new();
        };
        allocation
            .owners(host, key)
            .into_iter()
            .filter_map(|name| self.peers.iter().find(|peer| peer.name == name))
            .collect()
    }

    /// Whether this peer is among the object's owners (true without a table: alone, it owns everything).
    pub fn owns(&self, host: &str, key: &str) -> bool {
        match &self.allocation {
            Some(allocation) if !self.peers.is_empty() => allocation.owns(&self.me.name, host, key),
            _ => true,
        }
    }

    /// This peer's expected share of the content, 0 to 1 (1 without a table).
    pub fn share(&self) -> f64 {
        self.allocation
            .as_ref()
            .map_or(1.0, |allocation| allocation.expected_share(&self.me.name))
    }
}

enum Command {
    Held(Vec<String>),
    Released(Vec<String>),
    Locate {
        key: String,
        host: String,
        reply: oneshot::Sender<LocationResponse>,
    },
    Leave,
}

/// A running community driver.
#[derive(Debug, Clone)]
pub struct CommunityHandle {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    commands: mpsc::Sender<Command>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    shutdown: CancellationToken,
    leave_timeout: Duration,
    local: SocketAddr,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Held(keys) => write!(f, "held({})", keys.len()),
            Command::Released(keys) => write!(f, "released({})", keys.len()),
            Command::Locate { key, .. } => write!(f, "locate({key})"),
            Command::Leave => f.write_str("leave"),
        }
    }
}

impl CommunityHandle {
    /// The community as last seen.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    /// The community socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// This peer stored copies of `keys` (seed 003's holding registration); never blocks, dropped and
    /// counted when the queue is full.
    pub fn held(&self, keys: Vec<String>) {
        self.command(Command::Held(keys));
    }

    /// This peer evicted or purged its copies of `keys`.
    pub fn released(&self, keys: Vec<String>) {
        self.command(Command::Released(keys));
    }

    /// Asks the master where the object with cache key `key` is (seed 003's location request); `None`
    /// when no answer comes within `timeout`.
    pub async fn locate(&self, key: &str, host: &str, timeout: Duration) -> Option<LocationResponse> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Locate {
            key: key.to_string(),
            host: host.to_string(),
            reply,
        });
        tokio::time::timeout(timeout, answer).await.ok()?.ok()
    }

    /// Leaves the community on purpose (a master nominates its successor first) and waits until the core
    /// has left, at most its leave timeout and a little more; then stops the driver.
    pub async fn leave(&self) {
        let mut snapshot = self.snapshot.clone();
        if self.commands.send(Command::Leave).await.is_ok() {
            let bound = self.leave_timeout.saturating_add(Duration::from_millis(500));
            let left = snapshot.wait_for(|now| now.role == Role::Left);
            let _ = tokio::time::timeout(bound, left).await;
        }
        self.shutdown.cancel();
    }

    /// Stops the driver at once, without leaving (a crash as the others see it).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    fn command(&self, command: Command) {
        if self.commands.try_send(command).is_err() {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Binds the community socket: UDP on `address` (port 0 picks one).
pub fn bind(address: SocketAddr) -> Result<UdpSocket, DriverError> {
    let fail = |source| DriverError::Socket { address, source };
    let socket = std::net::UdpSocket::bind(address).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    UdpSocket::from_std(socket).map_err(fail)
}

/// The interface to join the discovery group on: `given` unless unspecified, else the interface of
/// `address`, where the peers reach this peer. The probes leave from the community socket, bound to that
/// address, and the kernel sends a multicast datagram from a socket bound to an address on that address's
/// interface; so the group must be joined there too. The kernel's own choice for a join on `0.0.0.0` is the
/// route to the group: another interface on a host with a default route elsewhere (on loopback, every peer
/// its own community), and none on a segment without a default route (the join fails).
pub fn group_interface(given: Ipv4Addr, address: SocketAddr) -> Ipv4Addr {
    if !given.is_unspecified() {
        return given;
    }
    match address {
        SocketAddr::V4(address) => *address.ip(),
        SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

/// Binds the discovery group: UDP on the group's port with `SO_REUSEADDR` (several peers on one host),
/// joined on `interface`, TTL 1 (the probe stays in its segment, as claim 54's broadcast does), loopback on.
pub fn bind_group(group: SocketAddrV4, interface: Ipv4Addr) -> Result<UdpSocket, DriverError> {
    let ip = *group.ip();
    if !ip.is_multicast() {
        return Err(DriverError::NotMulticast(ip));
    }
    let fail = |source| DriverError::Socket {
        address: SocketAddr::V4(group),
        source,
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.bind(&SocketAddr::V4(group).into()).map_err(fail)?;
    socket.join_multicast_v4(&ip, &interface).map_err(fail)?;
    socket.set_multicast_if_v4(&interface).map_err(fail)?;
    socket.set_multicast_ttl_v4(1).map_err(fail)?;
    socket.set_multicast_loop_v4(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    UdpSocket::from_std(socket.into()).map_err(fail)
}

/// Starts the driver for `config` on `socket` (bound with [`bind`]; `config.address` should be its
/// address as the others reach it), as a task of the current tokio runtime.
pub fn spawn(config: CommunityConfig, socket: UdpSocket, links: Links) -> Result<CommunityHandle, DriverError> {
    let local = socket.local_addr().map_err(|source| DriverError::Socket {
        address: config.address,
        source,
    })?;
    let registry = match &links.registry {
        Some(url) => Some(RegistryLink::new(url, config.timers.registry_timeout)?),
        None => None,
    };
    let interface = group_interface(links.interface, config.address);
    let group = match links.discover {
        Some(group) => Some((bind_group(group, interface)?, group)),
        None => None,
    };
    let mut config = config;
    config.registry = registry.is_some();
    config.discovery = group.is_some();
    let leave_timeout = config.timers.leave_timeout;
    let now = Instant::now().into_std();
    let mut core = Community::new(config, random_seed(), now, unix_ms())?;
    let first = core.start(now);
    let registry_health = registry.as_ref().map(|_| RegistryHealth::Pending);
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(snapshot_of(
        &core,
        None,
        DriverCounters::default(),
        0,
        registry_health,
    )));
    let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (answers_tx, answers_rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    info!(
        community = %core.config().community,
        peer = %core.me().name,
        address = %local,
        registry = ?links.registry,
        discover = ?links.discover,
        "community driver started"
    );
    let driver = Driver {
        core,
        socket,
        group,
        registry,
        answers_tx,
        answers_rx,
        commands: command_rx,
        snapshot: snapshot_tx,
        timers: BTreeMap::new(),
        locating: HashMap::new(),
        held: HashSet::new(),
        max_held: links.max_held,
        counters: DriverCounters::default(),
        dropped: dropped.clone(),
        allocation: None,
        registry_health,
        registry_warnings: Throttle::new(DEFAULT_WARN_INTERVAL),
        bad_tag_warnings: HashMap::new(),
        denied_warnings: Throttle::new(DEFAULT_WARN_INTERVAL),
    };
    let _task: JoinHandle<()> = tokio::spawn(driver.run(first, shutdown.clone()));
    Ok(CommunityHandle {
        snapshot: snapshot_rx,
        commands: command_tx,
        dropped,
        shutdown,
        leave_timeout,
        local,
    })
}

/// The registry over HTTP: each message is `POST`ed to [`REGISTRY_PATH`]; the answer's body goes back
/// into the core as a datagram.
struct RegistryLink {
    client: Client<HttpConnector, Full<Bytes>>,
    url: http::Uri,
    from: SocketAddr,
    timeout: Duration,
}

impl RegistryLink {
    fn new(base: &str, timeout: Duration) -> Result<RegistryLink, DriverError> {
        let bad = || DriverError::Registry(base.to_string());
        let parsed: http::Uri = base.parse().map_err(|_| bad())?;
        if parsed.scheme_str() != Some("http") {
            return Err(bad());
        }
        let authority = parsed.authority().ok_or_else(bad)?.clone();
        let path = format!("{}{REGISTRY_PATH}", parsed.path().trim_end_matches('/'));
        let url = http::Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|_| bad())?;
        let from = authority
            .as_str()
            .parse()
            .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Ok(RegistryLink {
            client: Client::builder(TokioExecutor::new()).build(connector),
            url,
            from,
            timeout,
        })
    }

    /// Sends `body`; the answer's bytes, or why none came.
    fn post(
        &self,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Bytes, RegistryFailure>> + Send + 'static {
        let client = self.client.clone();
        let url = self.url.clone();
        let timeout = self.timeout;
        async move {
            let request = http::Request::post(url)
                .header(http::header::CONTENT_TYPE, "application/octet-stream")
                .body(Full::new(Bytes::from(body)))
                .map_err(|error| RegistryFailure::other(error.to_string()))?;
            let exchange = async {
                let response = client
                    .request(request)
                    .await
                    .map_err(|error| RegistryFailure::unreachable(error_chain(&error)))?;
                let status = response.status();
                let limited = Limited::new(response.into_body(), tern_wire::community::DEFAULT_MAX_BODY);
                let bytes = limited
                    .collect()
                    .await
                    .map_err(|error| RegistryFailure::other(error.to_string()))?
                    .to_bytes();
                if !status.is_success() {
                    return Err(RegistryFailure::status(status));
                }
                Ok(bytes)
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| RegistryFailure::unreachable(format!("no answer within {timeout:?}")))?
        }
    }
}

/// An error with its causes, each once (hyper's client error says only "client error (Connect)").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let said = next.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = next.source();
    }
    text
}

struct Driver {
    core: Community,
    socket: UdpSocket,
    group: Option<(UdpSocket, SocketAddrV4)>,
    registry: Option<RegistryLink>,
    answers_tx: mpsc::Sender<Result<Bytes, RegistryFailure>>,
    answers_rx: mpsc::Receiver<Result<Bytes, RegistryFailure>>,
    commands: mpsc::Receiver<Command>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    timers: BTreeMap<TimerKind, Instant>,
    /// Location requests sent to the master, by the sequence number of the request message.
    locating: HashMap<u64, oneshot::Sender<LocationResponse>>,
    /// Keys this peer holds, sent again to every new master.
    held: HashSet<String>,
    max_held: usize,
    counters: DriverCounters,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    /// The table last published, with its epoch (rebuilt only when the epoch changes).
    allocation: Option<(Epoch, Arc<Allocation>)>,
    /// How the registry last answered; `None` without a registry.
    registry_health: Option<RegistryHealth>,
    registry_warnings: Throttle<RegistryHealth>,
    /// When a bad-tag warning was last logged, by source address.
    bad_tag_warnings: HashMap<SocketAddr, Instant>,
    denied_warnings: Throttle<community::DenyReason>,
}

impl Driver {
    async fn run(mut self, first: Vec<Output>, shutdown: CancellationToken) {
        // One byte more than the limit, so that an oversized datagram arrives truncated to a length the core
        // refuses instead of looking complete.
        let mut buffer = vec![0u8; self.core.config().limits.max_len + 1];
        let mut group_buffer = vec![0u8; self.core.config().limits.max_len + 1];
        let mut outputs = first;
        let mut locate_reply: Option<oneshot::Sender<LocationResponse>> = None;
        loop {
            let left = self.carry_out(std::mem::take(&mut outputs), &mut locate_reply).await;
            self.publish();
            if left {
                info!(peer = %self.core.me().name, "left the community");
                return;
            }
            let next = self.timers.values().min().copied();
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let group_recv = async {
                match &self.group {
                    Some((socket, _)) => socket.recv_from(&mut group_buffer).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = self.socket.recv_from(&mut buffer) => {
                    let now = self.now();
                    match received {
                        Ok((len, from)) => {
                            let bad_tags = self.core.counters().refused.bad_tag;
                            outputs = self.core.handle(Input::Datagram { bytes: &buffer[..len], from }, now);
                            self.note_bad_tag(bad_tags, from);
                        }
                        Err(error) => debug!(%error, "community socket receive failed"),
                    }
                }
                received = group_recv => {
                    let now = self.now();
                    match received {
                        Ok((len, from)) => {
                            let bad_tags = self.core.counters().refused.bad_tag;
                            outputs = self.core.handle(Input::Datagram { bytes: &group_buffer[..len], from }, now);
                            self.note_bad_tag(bad_tags, from);
                        }
                        Err(error) => debug!(%error, "discovery group receive failed"),
                    }
                }
                Some(answer) = self.answers_rx.recv() => {
                    let now = self.now();
                    match answer {
                        Ok(bytes) => {
                            self.registry_answered(Ok(()));
                            let from = self.registry.as_ref().map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |link| link.from);
                            outputs = self.core.handle(Input::Datagram { bytes: &bytes, from }, now);
                        }
                        Err(failure) => {
                            // The core's own timeout (registry_timeout) moves it on to probing or creating.
                            self.counters.registry_failures += 1;
                            if failure.health == RegistryHealth::Refused {
                                self.counters.registry_refused += 1;
                            }
                            self.registry_answered(Err(failure));
                        }
                    }
                }
                _ = due => {
                    let now = self.now();
                    let at = Instant::from_std(now);
                    let fired: Vec<TimerKind> = self.timers.iter().filter(|(_, due)| **due <= at).map(|(kind, _)| *kind).collect();
                    for kind in fired {
                        self.timers.remove(&kind);
                        outputs.extend(self.core.handle(Input::Timer(kind), now));
                    }
                }
                Some(command) = self.commands.recv() => {
                    let now = self.now();
                    outputs = self.command(command, now, &mut locate_reply);
                }
            }
        }
    }

    fn now(&mut self) -> std::time::Instant {
        let now = Instant::now().into_std();
        self.core.set_wall_clock(now, unix_ms());
        now
    }

    /// Notes how the registry answered; warns (rate-limited) while it fails, and says when it answers again.
    fn registry_answered(&mut self, outcome: Result<(), RegistryFailure>) {
        let health = match &outcome {
            Ok(()) => RegistryHealth::Ok,
            Err(failure) => failure.health,
        };
        let previous = self.registry_health.replace(health);
        let url = self
            .registry
            .as_ref()
            .map(|link| link.url.to_string())
            .unwrap_or_default();
        let community = self.core.config().community.clone();
        let Some(suppressed) = self.registry_warnings.check(health, Instant::now().into_std()) else {
            return;
        };
        let Err(failure) = outcome else {
            if previous.is_some_and(|previous| previous != RegistryHealth::Pending && previous != RegistryHealth::Ok) {
                info!(registry = %url, %community, "registry answers again");
            }
            return;
        };
        let reason = failure.reason;
        match failure.health {
            RegistryHealth::Unreachable => warn!(
                registry = %url,
                %community,
                %reason,
                repeated = suppressed,
                "registry unreachable: this edge cannot find its community there and may form one of its own"
            ),
            RegistryHealth::Refused => warn!(
                registry = %url,
                %community,
                %reason,
                repeated = suppressed,
                "registry refused this edge's requests (403 bad-tag): wrong --cluster-key? this edge may form a \
                 community of its own"
            ),
            _ => warn!(
                registry = %url,
                %community,
                %reason,
                repeated = suppressed,
                "registry request failed"
            ),
        }
    }

    /// Warns (at most every [`DEFAULT_WARN_INTERVAL`] per source, for at most [`MAX_WARNED_SOURCES`]
    /// sources at once) when a datagram from `from` was refused for its tag.
    fn note_bad_tag(&mut self, bad_tags_before: u64, from: SocketAddr) {
        if self.core.counters().refused.bad_tag == bad_tags_before {
            return;
        }
        let now = Instant::now();
        if let Some(at) = self.bad_tag_warnings.get(&from)
            && now.saturating_duration_since(*at) < DEFAULT_WARN_INTERVAL
        {
            return;
        }
        if self.bad_tag_warnings.len() >= MAX_WARNED_SOURCES {
            self.bad_tag_warnings
                .retain(|_, at| now.saturating_duration_since(*at) < DEFAULT_WARN_INTERVAL);
            if self.bad_tag_warnings.len() >= MAX_WARNED_SOURCES {
                return;
            }
        }
        self.bad_tag_warnings.insert(from, now);
        warn!(
            peer = %self.core.me().name,
            community = %self.core.config().community,
            %from,
            refused = self.core.counters().refused.bad_tag,
            "messages from {from} refused: wrong cluster key?"
        );
    }

    fn command(
        &mut self,
        command: Command,
        now: std::time::Instant,
        locate_reply: &mut Option<oneshot::Sender<LocationResponse>>,
    ) -> Vec<Output> {
        match command {
            Command::Held(keys) => {
                for key in &keys {
                    if self.held.len() < self.max_held {
                        self.held.insert(key.clone());
                    }
                }
                self.core.handle(Input::Held(&keys), now)
            }
            Command::Released(keys) => {
                for key in &keys {
                    self.held.remove(key);
                }
                self.core.handle(Input::Released(&keys), now)
            }
            Command::Locate { key, host, reply } => {
                // Waiters that gave up are forgotten before another is added.
                let before = self.locating.len();
                self.locating.retain(|_, waiter| !waiter.is_closed());
                self.counters.locations_unanswered += (before - self.locating.len()) as u64;
                *locate_reply = Some(reply);
                self.core.handle(Input::Locate { key: &key, host: &host }, now)
            }
            Command::Leave => self.core.handle(Input::Leave, now),
        }
    }

    /// Carries out the core's outputs; `true` once the core has left.
    async fn carry_out(
        &mut self,
        outputs: Vec<Output>,
        locate_reply: &mut Option<oneshot::Sender<LocationResponse>>,
    ) -> bool {
        let mut left = false;
        let mut resend_held = false;
        for output in outputs {
            match output {
                Output::Send { to, message } => {
                    if let Some(reply) = locate_reply.take() {
                        if matches!(message.body, community::CommunityBody::LocationRequest(_)) {
                            self.counters.locations_asked += 1;
                            self.locating.insert(message.seq, reply);
                        } else {
                            *locate_reply = Some(reply);
                        }
                    }
                    self.send(to, &message).await;
                }
                Output::Multicast { message } => {
                    if let Some((_, group)) = &self.group {
                        let to = SocketAddr::V4(*group);
                        self.send(to, &message).await;
                    }
                }
                Output::Registry { message } => {
                    if let Some(link) = &self.registry {
                        let bytes = community::encode(&self.core.config().key, &message);
                        let post = link.post(bytes);
                        let answers = self.answers_tx.clone();
                        tokio::spawn(async move {
                            let _ = answers.send(post.await).await;
                        });
                    }
                }
                Output::SetTimer { timer, at } => {
                    self.timers.insert(timer, Instant::from_std(at));
                }
                Output::CancelTimer(timer) => {
                    self.timers.remove(&timer);
                }
                Output::Event(event) => match event {
                    Event::Located { in_reply_to, response } => {
                        let waiter = match in_reply_to {
                            Some(seq) => self.locating.remove(&seq),
                            None => locate_reply.take(),
                        };
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(response);
                        }
                    }
                    Event::MasterChanged(master) => {
                        match &master {
                            Some(peer) => {
                                info!(peer = %self.core.me().name, master = %peer.name, "community master known")
                            }
                            None => info!(peer = %self.core.me().name, "community master unknown"),
                        }
                        resend_held |= master.is_some();
                    }
                    Event::RoleChanged { from, to } => {
                        info!(peer = %self.core.me().name, %from, %to, "community role changed");
                    }
                    Event::Denied(reason) => self.denied(reason),
                    Event::Left => left = true,
                    other => debug!(event = ?other, "community event"),
                },
            }
        }
        // A locate the core answered neither way (it cannot: it always answers) is dropped here.
        locate_reply.take();
        if resend_held && !self.held.is_empty() && matches!(self.core.role(), Role::Member | Role::Master) {
            // The directory is soft state: a new master learns of every copy this peer still holds.
            let keys: Vec<String> = self.held.iter().cloned().collect();
            let now = self.now();
            let more = self.core.handle(Input::Held(&keys), now);
            for output in more {
                if let Output::Send { to, message } = output {
                    self.send(to, &message).await;
                }
            }
        }
        left
    }

    /// Warns (rate-limited) that the master refused this peer's request to join, and why.
    fn denied(&mut self, reason: community::DenyReason) {
        let Some(suppressed) = self.denied_warnings.check(reason, Instant::now().into_std()) else {
            return;
        };
        let hint = match reason {
            community::DenyReason::NameClash => {
                "another live peer of the community has this name: give each edge its own --peer-name (just after a crash and restart it is this edge's previous run, which the master drops within a few seconds; this edge then joins by itself)"
            }
            community::DenyReason::Full => "the community has as many peers as its master admits",
            community::DenyReason::BadTag => "the master does not share this edge's cluster key: wrong --cluster-key?",
            _ => "the master turned this edge away",
        };
        warn!(
            peer = %self.core.me().name,
            community = %self.core.config().community,
            reason = reason.as_str(),
            repeated = suppressed,
            "request to join denied: {hint}; trying again after a back-off"
        );
    }

    async fn send(&mut self, to: SocketAddr, message: &CommunityMessage) {
        let bytes = community::encode(&self.core.config().key, message);
        if let Err(error) = self.socket.send_to(&bytes, to).await {
            self.counters.send_failures += 1;
            warn!(%to, %error, kind = message.body.name(), "community message not sent");
        }
    }

    fn publish(&mut self) {
        self.counters.commands_dropped = self.dropped.load(std::sync::atomic::Ordering::Relaxed);
        let epoch = self.core.epoch();
        let allocation = match (&self.allocation, epoch, self.core.allocation()) {
            (Some((published, table)), Some(epoch), _) if *published == epoch => Some(table.clone()),
            (_, Some(epoch), Some(current)) => {
                let table = Arc::new(current.clone());
                self.allocation = Some((epoch, table.clone()));
                Some(table)
            }
            _ => None,
        };
        let snapshot = snapshot_of(
            &self.core,
            allocation,
            self.counters,
            self.held.len(),
            self.registry_health,
        );
        self.snapshot.send_replace(Arc::new(snapshot));
    }
}

fn snapshot_of(
    core: &Community,
    allocation: Option<Arc<Allocation>>,
    driver: DriverCounters,
    held: usize,
    registry: Option<RegistryHealth>,
) -> Snapshot {
    Snapshot {
        community: core.config().community.clone(),
        me: core.me().clone(),
        role: core.role(),
        master: core.master().cloned(),
        epoch: core.epoch(),
        peers: core.peer_list().map(|list| list.peers.clone()).unwrap_or_default(),
        allocation,
        counters: *core.counters(),
        driver,
        held,
        registry,
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // The standard library seeds its hash keys from the operating system's random source.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(unix_ms());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{ServiceConfig, start};
    use tern_admin::AdminRoutes;
    use tern_wire::SecretKey;

    fn peer(name: &str, registry: &str, key: &SecretKey) -> CommunityHandle {
        let socket = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("socket");
        let address = socket.local_addr().expect("address");
        let config = CommunityConfig::new("site", name, address, address, key.clone());
        let links = Links {
            registry: Some(registry.to_string()),
            ..Links::default()
        };
        spawn(config, socket, links).expect("driver")
    }

    async fn until(handle: &CommunityHandle, what: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        let mut watch = handle.watch();
        tokio::time::timeout(Duration::from_secs(5), watch.wait_for(|now| what(now)))
            .await
            .expect("in time")
            .expect("driver running")
            .clone()
    }

    #[test]
    fn the_group_is_joined_on_the_interface_of_the_community_address() {
        let segment: SocketAddr = "10.0.1.11:7400".parse().expect("address");
        let loopback: SocketAddr = "127.0.0.1:7401".parse().expect("address");
        let given = Ipv4Addr::new(10, 0, 2, 5);
        assert_eq!(
            group_interface(Ipv4Addr::UNSPECIFIED, segment),
            Ipv4Addr::new(10, 0, 1, 11)
        );
        assert_eq!(group_interface(Ipv4Addr::UNSPECIFIED, loopback), Ipv4Addr::LOCALHOST);
        assert_eq!(group_interface(given, segment), given);
        let unspecified: SocketAddr = "0.0.0.0:7400".parse().expect("address");
        assert_eq!(
            group_interface(Ipv4Addr::UNSPECIFIED, unspecified),
            Ipv4Addr::UNSPECIFIED
        );
        let v6: SocketAddr = "[::1]:7400".parse().expect("address");
        assert_eq!(group_interface(Ipv4Addr::UNSPECIFIED, v6), Ipv4Addr::UNSPECIFIED);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registry_that_refuses_the_key_or_does_not_answer_shows_in_the_snapshot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry_key = SecretKey::parse(&"5a".repeat(32)).expect("key");
        let other_key = SecretKey::parse(&"6b".repeat(32)).expect("key");
        let registry = start(ServiceConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            key: registry_key,
            data: dir.path().to_path_buf(),
        })
        .await
        .expect("registry");
        let wrong_key = peer("edge-a", &format!("http://{}", registry.listen), &other_key);
        let refused = until(&wrong_key, |now| now.registry == Some(RegistryHealth::Refused)).await;
        assert!(refused.driver.registry_refused >= 1);
        assert!(registry.role.state().communities.is_empty(), "nothing recorded");
        wrong_key.stop();
        registry.shutdown().await;

        // A port nobody listens on (just released).
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = closed.local_addr().expect("address");
        drop(closed);
        let silent = peer("edge-b", &format!("http://{address}"), &other_key);
        // Pending until the first attempt ends; a refused connect can end it before this line runs.
        let first = silent.snapshot().registry;
        assert!(
            matches!(first, Some(RegistryHealth::Pending | RegistryHealth::Unreachable)),
            "{first:?}"
        );
        let unreachable = until(&silent, |now| now.registry == Some(RegistryHealth::Unreachable)).await;
        assert!(unreachable.driver.registry_failures >= 1);
        assert_eq!(unreachable.driver.registry_refused, 0);
        silent.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_drivers_form_one_community_through_the_registry_and_the_master_nominates_on_leave() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = SecretKey::parse(&"5a".repeat(32)).expect("key");
        let registry = start(ServiceConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            key: key.clone(),
            data: dir.path().to_path_buf(),
        })
        .await
        .expect("registry");
        let url = format!("http://{}", registry.listen);
        let first = peer("edge-a", &url, &key);
        until(&first, |now| now.role == Role::Master).await;
        let second = peer("edge-b", &url, &key);
        let joined = until(&second, |now| now.role == Role::Member && now.peers.len() == 2).await;
        assert_eq!(joined.registry, Some(RegistryHealth::Ok));
        assert_eq!(joined.master.as_ref().map(|m| m.name.as_str()), Some("edge-a"));
        assert!(joined.allocation.is_some());
        // Both see the same owner for a key.
        let master_view = until(&first, |now| now.peers.len() == 2).await;
        let owner = |snapshot: &Snapshot| snapshot.owners("h", "http://h/x").first().map(|p| p.name.clone());
        assert_eq!(owner(&joined), owner(&master_view));
        // The registry persisted the community before showing it. Both peers may have claimed the
        // community at once (the second asked before the first's ADDMASTER arrived); the registry then
        // records edge-a's REPLACEMASTER a moment after edge-b joined, so wait for the record first.
        let recorded = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let state = registry.role.state();
                if state.communities.values().any(|record| record.master.name == "edge-a") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(recorded.is_ok(), "the registry records edge-a as master");
        let persisted = std::fs::read_to_string(dir.path().join(crate::service::STATE_FILE)).expect("state file");
        assert!(persisted.contains("edge-a"));
        // The status shows when the master last claimed the community, so that a silent master shows.
        let status = crate::service::RegistryAdmin::new(registry.role.clone(), registry.listen).status();
        let shown = &status["communities"][0];
        assert!(shown["last_claim_ms"].as_u64().is_some(), "{status}");
        assert!(
            shown["seconds_since_last_claim"].as_u64().is_some_and(|s| s < 60),
            "{status}"
        );

        // The master leaves on purpose: it nominates edge-b, which takes over.
        first.leave().await;
        let took_over = until(&second, |now| now.role == Role::Master).await;
        assert_eq!(took_over.master.as_ref().map(|m| m.name.as_str()), Some("edge-b"));
        second.stop();
        registry.shutdown().await;
    }
}
