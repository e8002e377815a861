//! The data channel's two UDP sockets (seed `004_1419c51402506f7e.txt`, "local distribution"): the
//! multicast group's, shared by every node on the host, and this node's unicast one, which also
//! multicasts; and the address members and the group leader are told to answer to.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use super::DataChannelSettings;

fn tune_socket(settings: &DataChannelSettings, socket: &Socket) -> io::Result<()> {
    // The kernel caps these at its maximum; a smaller buffer only means more repairs.
    let _ = socket.set_recv_buffer_size(settings.socket_buffer);
    let _ = socket.set_send_buffer_size(settings.socket_buffer);
    socket.set_nonblocking(true)
}

/// The data channel: bound to the group and port with `SO_REUSEADDR` (several nodes on one host), joined
/// on the interface.
pub(super) fn bind_data(settings: &DataChannelSettings) -> io::Result<StdUdpSocket> {
    let group = *settings.group.ip();
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::V4(settings.group).into())?;
    socket.join_multicast_v4(&group, &settings.interface)?;
    tune_socket(settings, &socket)?;
    // Linux reports twice what it grants (the bookkeeping's share); less than asked means the kernel's
    // cap, and a member that falls that far behind loses frames and waits for the next pass.
    if let Ok(reported) = socket.recv_buffer_size()
        && reported / 2 < settings.socket_buffer
    {
        tracing::warn!(
            granted_bytes = reported / 2,
            asked_bytes = settings.socket_buffer,
            "the data channel's receive buffer is smaller than asked (net.core.rmem_max caps it): a member that falls behind by more loses frames and waits for repairs; raise the cap, e.g. sysctl -w net.core.rmem_max={}",
            settings.socket_buffer
        );
    }
    Ok(socket.into())
}

/// The unicast socket: an ephemeral port on the interface; it also multicasts, with the channel's TTL.
pub(super) fn bind_unicast(settings: &DataChannelSettings) -> io::Result<StdUdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&SocketAddr::from((settings.interface, 0)).into())?;
    socket.set_multicast_if_v4(&settings.interface)?;
    socket.set_multicast_ttl_v4(settings.ttl)?;
    socket.set_multicast_loop_v4(settings.loopback)?;
    tune_socket(settings, &socket)?;
    Ok(socket.into())
}

/// The local address this host sends to the group from (no datagram is sent).
pub(super) fn route_address(settings: &DataChannelSettings) -> io::Result<IpAddr> {
    if !settings.interface.is_unspecified() {
        return Ok(IpAddr::V4(settings.interface));
    }
    let probe = StdUdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    probe.connect(SocketAddr::V4(settings.group))?;
    Ok(probe.local_addr()?.ip())
}
