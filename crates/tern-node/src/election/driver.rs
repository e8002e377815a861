//! The election's tokio driver: one UDP socket on the control channel (the seed's "Multicast IP and port
//! number combination that all Network segment members listen to"), a loop that feeds datagrams, the one
//! pending timer and operator commands to the sans-IO [`Election`] core and carries out its outputs, and
//! watch channels with the current leader and the core's state and counters.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{ConfigError, Counters, Election, ElectionConfig, Input, Leader, Output, Resources, State, TimerKind};
use crate::clock::{random_seed, unix_ms};

/// Where the control channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlChannel {
    /// The IPv4 multicast group and port (`--control-channel GROUP:PORT`).
    pub group: SocketAddrV4,
    /// The local interface address to join the group on and send from (`0.0.0.0`: the kernel's choice).
    pub interface: Ipv4Addr,
    /// Multicast TTL; 1 keeps the election inside the LAN segment, as the seed intends.
    pub ttl: u32,
    /// Deliver our own datagrams to other sockets on this host (several nodes on one machine).
    pub loopback: bool,
}

impl ControlChannel {
    /// A channel on `group`, joined on `interface`, TTL 1, with loopback.
    pub fn new(group: SocketAddrV4, interface: Ipv4Addr) -> Self {
        ControlChannel {
            group,
            interface,
            ttl: 1,
            loopback: true,
        }
    }
}

/// Why the driver did not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The settings are inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The address is not a multicast group.
    #[error("{0} is not an IPv4 multicast group")]
    NotMulticast(Ipv4Addr),
    /// The socket could not be set up.
    #[error("control channel {group}: {source}")]
    Socket {
        /// The channel.
        group: SocketAddrV4,
        /// The cause.
        source: io::Error,
    },
}

/// The core's state and counters, as last seen by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The state of Fig. 5.
    pub state: State,
    /// Messages sent, heard and refused.
    pub counters: Counters,
}

/// What an operator (or the mover's API, through the node agent) can tell a running election.
#[derive(Debug, Clone)]
enum Command {
    Override(Option<String>),
    Resources(Resources),
}

/// A running election.
#[derive(Debug)]
pub struct ElectionHandle {
    leader: watch::Receiver<Option<Leader>>,
    status: watch::Receiver<Status>,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    local: SocketAddr,
}

impl ElectionHandle {
    /// The group leader as this node knows it (`None` during an election).
    pub fn leader(&self) -> watch::Receiver<Option<Leader>> {
        self.leader.clone()
    }

    /// The core's state and counters.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The control socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Forces `leader` to lead, or (`None`) returns to the normal election ([`Input::Override`]).
    pub async fn override_leader(&self, leader: Option<String>) {
        let _ = self.commands.send(Command::Override(leader)).await;
    }

    /// New measurements for the priority claim.
    pub async fn set_resources(&self, resources: Resources) {
        let _ = self.commands.send(Command::Resources(resources)).await;
    }

    /// Cancelling this token stops the election.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops the election and waits for its task.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Binds the control channel: a UDP socket on the group's port with `SO_REUSEADDR` (several nodes on one
/// host), joined to the group on the interface, sending there with the channel's TTL.
pub fn bind(channel: &ControlChannel) -> Result<UdpSocket, DriverError> {
    let group = *channel.group.ip();
    if !group.is_multicast() {
        return Err(DriverError::NotMulticast(group));
    }
    let fail = |source| DriverError::Socket {
        group: channel.group,
        source,
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    // Bound to the group address, the socket receives only this group's datagrams on the port.
    let bind_to = SocketAddrV4::new(group, channel.group.port());
    socket.bind(&SocketAddr::V4(bind_to).into()).map_err(fail)?;
    socket.join_multicast_v4(&group, &channel.interface).map_err(fail)?;
    socket.set_multicast_if_v4(&channel.interface).map_err(fail)?;
    socket.set_multicast_ttl_v4(channel.ttl).map_err(fail)?;
    socket.set_multicast_loop_v4(channel.loopback).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    UdpSocket::from_std(socket.into()).map_err(fail)
}

/// Starts an election for `config` on `channel`, as a task of the current tokio runtime (call it inside
/// one). The core's seed comes from the process's random hash keys.
pub fn spawn(config: ElectionConfig, channel: ControlChannel) -> Result<ElectionHandle, DriverError> {
    let now = Instant::now().into_std();
    let mut election = Election::new(config, random_seed(), now, unix_ms())?;
    let socket = bind(&channel)?;
    let local = socket.local_addr().map_err(|source| DriverError::Socket {
        group: channel.group,
        source,
    })?;
    let (leader_tx, leader_rx) = watch::channel(None);
    let (status_tx, status_rx) = watch::channel(Status {
        state: election.state(),
        counters: *election.counters(),
    });
    let (command_tx, command_rx) = mpsc::channel(16);
    let shutdown = CancellationToken::new();
    let first = election.start(now);
    let task = tokio::spawn(run(
        election,
        socket,
        channel.group,
        first,
        command_rx,
        leader_tx,
        status_tx,
        shutdown.clone(),
    ));
    Ok(ElectionHandle {
        leader: leader_rx,
        status: status_rx,
        commands: command_tx,
        shutdown,
        task,
        local,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run(
    mut election: Election,
    socket: UdpSocket,
    group: SocketAddrV4,
    first: Vec<Output>,
    mut commands: mpsc::Receiver<Command>,
    leader: watch::Sender<Option<Leader>>,
    status: watch::Sender<Status>,
    shutdown: CancellationToken,
) {
    let node = election.config().node.clone();
    // One byte more than the limit, so that an oversized datagram arrives truncated to a length the core
    // refuses instead of looking complete.
    let mut buffer = vec![0u8; election.config().limits.max_datagram + 1];
    let mut timer: Option<(TimerKind, Instant)> = None;
    let mut outputs = first;
    let mut commands_open = true;
    loop {
        for output in outputs.drain(..) {
            match output {
                Output::Multicast { datagram, message } => {
                    if let Err(error) = socket.send_to(&datagram, SocketAddr::V4(group)).await {
                        warn!(%node, %group, %error, kind = ?message.body, "control message not sent");
                    }
                }
                Output::SetTimer { timer: kind, at } => timer = Some((kind, Instant::from_std(at))),
                Output::CancelTimer => timer = None,
                Output::StateChanged { from, to } => debug!(%node, %from, %to, "election state changed"),
                Output::LeaderChanged(new_leader) => {
                    match &new_leader {
                        Some(known) => info!(%node, leader = %known.name, term = known.term, "group leader known"),
                        None => info!(%node, "group leader unknown"),
                    }
                    leader.send_replace(new_leader);
                }
            }
        }
        status.send_replace(Status {
            state: election.state(),
            counters: *election.counters(),
        });
        let due = async {
            match timer {
                Some((_, at)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buffer) => {
                let now = Instant::now().into_std();
                election.set_wall_clock(now, unix_ms());
                match received {
                    // The segment's registration messages share the channel; the registration's own socket
                    // takes them (crate::registration::driver).
                    Ok((len, _from)) if tern_wire::segment::is_segment_datagram(&buffer[..len]) => {}
                    Ok((len, _from)) => outputs = election.handle(Input::Datagram(&buffer[..len]), now),
                    Err(error) => warn!(%node, %error, "control channel receive failed"),
                }
            }
            _ = due => {
                let now = Instant::now().into_std();
                election.set_wall_clock(now, unix_ms());
                if let Some((kind, _)) = timer.take() {
                    outputs = election.handle(Input::Timer(kind), now);
                }
            }
            command = commands.recv(), if commands_open => {
                let now = Instant::now().into_std();
                election.set_wall_clock(now, unix_ms());
                match command {
                    Some(Command::Override(forced)) => outputs = election.handle(Input::Override(forced), now),
                    Some(Command::Resources(resources)) => {
                        outputs = election.handle(Input::Resources(resources), now);
                    }
                    // The handle is gone; keep electing until the token is cancelled.
                    None => commands_open = false,
                }
            }
        }
    }
}
