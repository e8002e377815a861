//! Datagrams in batches, through [`quinn_udp`]: a leader sends a run of equal frames in one call with
//! UDP segmentation offload (GSO: the kernel, or the network card, cuts it into datagrams), and a member
//! takes many datagrams a call (`recvmmsg`) with receive offload (GRO: a run of datagrams of one sender
//! arrives as one buffer cut at a stride). Frames on the wire stay the datagrams the seed describes, one
//! Ethernet MTU each; what changes is how many times the kernel is entered for them.
//!
//! Why: on a segment's leader every frame was a `sendto`, and the kernel's work for a datagram (route,
//! queue, and on a host that stands in for a switch, one copy per member) was most of the leader's time
//! with 32 members; a burst of the token bucket is now one call and, through a bridge, one copy per
//! member for the whole burst. Where GSO or GRO is missing (an old kernel, a card without checksum
//! offload), [`quinn_udp`] falls back to one datagram a call.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Largest buffer a receive offload can fill: one IP packet's worth of datagrams of one sender.
const GRO_BUFFER: usize = 64 << 10;
/// Most bytes a segmented send carries (an IP packet's limit, less headers).
const GSO_BYTES: usize = 60 << 10;

/// Receive buffers and their metadata for one socket.
pub(super) struct Batch {
    buffers: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    /// How many buffers the last receive filled.
    filled: usize,
    /// Datagrams longer than this are handed on cut to one byte more, so that the cores refuse them as
    /// oversized.
    max_datagram: usize,
}

impl Batch {
    /// `count` buffers (at most [`quinn_udp::BATCH_SIZE`] are used per call) for datagrams of at most
    /// `max_datagram` bytes.
    pub(super) fn new(count: usize, max_datagram: usize) -> Self {
        let count = count.clamp(1, quinn_udp::BATCH_SIZE);
        Batch {
            buffers: vec![vec![0u8; GRO_BUFFER.max(max_datagram + 1)]; count],
            metas: vec![RecvMeta::default(); count],
            filled: 0,
            max_datagram,
        }
    }

    /// One receive from `socket` (non-blocking); returns the buffers filled (0 never: nothing queued is
    /// `WouldBlock`).
    pub(super) fn recv(&mut self, state: &UdpSocketState, socket: &impl std::os::fd::AsFd) -> io::Result<usize> {
        let mut slices: Vec<IoSliceMut<'_>> = self.buffers.iter_mut().map(|buffer| IoSliceMut::new(buffer)).collect();
        self.filled = 0;
        let filled = state.recv(socket.into(), &mut slices, &mut self.metas)?;
        self.filled = filled;
        Ok(filled)
    }

    /// One receive from a socket registered with the runtime, if it is readable now.
    pub(super) fn try_recv(&mut self, state: &UdpSocketState, socket: &UdpSocket) -> io::Result<usize> {
        socket.try_io(Interest::READABLE, || self.recv(state, socket))
    }

    /// The datagrams the last receive brought, with their senders, in order.
    pub(super) fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        self.buffers
            .iter()
            .zip(&self.metas)
            .take(self.filled)
            .flat_map(move |(buffer, meta)| {
                let bytes = &buffer[..meta.len.min(buffer.len())];
                let stride = if meta.stride == 0 {
                    bytes.len().max(1)
                } else {
                    meta.stride
                };
                bytes.chunks(stride).map(move |datagram| {
                    // A datagram over the limit arrives whole here (no receive cuts it): cut it to one
                    // byte more than the limit, a length every decoder refuses.
                    (&datagram[..datagram.len().min(self.max_datagram + 1)], meta.addr)
                })
            })
    }
}

/// Frames to send to one address, gathered into runs the kernel segments.
pub(super) struct Runs {
    contents: Vec<u8>,
    segment: usize,
    segments: usize,
    /// Whether the run ended with a shorter datagram (nothing may follow it in the same send).
    closed: bool,
    /// Segmentation is off: a segmented send was refused as too long (a path whose MTU is below a
    /// frame's datagram: segments cannot be fragmented, single datagrams can).
    single: bool,
}

impl Runs {
    pub(super) fn new() -> Self {
        Runs {
            contents: Vec::with_capacity(GSO_BYTES),
            segment: 0,
            segments: 0,
            closed: false,
            single: false,
        }
    }

    /// The most datagrams a run may hold, given what the socket allows.
    pub(super) fn max_segments(&self, state: &UdpSocketState) -> usize {
        if self.single { 1 } else { state.max_gso_segments() }
    }

    /// Adds `datagram` to the run if it can go in the same send (as long as the run's datagrams, or the
    /// one shorter datagram that ends it, within `max_segments` and the size limit); returns `false`
    /// when the run must be sent first.
    pub(super) fn push(&mut self, datagram: &[u8], max_segments: usize) -> bool {
        if self.segments == 0 {
            self.contents.clear();
            self.contents.extend_from_slice(datagram);
            self.segment = datagram.len();
            self.segments = 1;
            self.closed = false;
            return true;
        }
        let fits = !self.closed
            && datagram.len() <= self.segment
            && self.segments < max_segments
            && self.contents.len() + datagram.len() <= GSO_BYTES;
        if !fits {
            return false;
        }
        self.contents.extend_from_slice(datagram);
        self.segments += 1;
        self.closed = datagram.len() < self.segment;
        true
    }

    /// Whether nothing is gathered.
    pub(super) fn is_empty(&self) -> bool {
        self.segments == 0
    }

    /// Sends the run to `destination` on `socket` in one call (segmented when it holds more than one
    /// datagram), waiting while the socket's buffer is full; returns the bytes sent.
    pub(super) async fn send(
        &mut self,
        state: &UdpSocketState,
        socket: &UdpSocket,
        destination: SocketAddr,
    ) -> io::Result<usize> {
        if self.segments == 0 {
            return Ok(0);
        }
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: &self.contents,
            segment_size: (self.segments > 1).then_some(self.segment),
            src_ip: None,
        };
        let mut sent = socket
            .async_io(Interest::WRITABLE, || state.try_send(socket.into(), &transmit))
            .await;
        if self.segments > 1
            && let Err(error) = &sent
            && error.raw_os_error() == Some(rustix::io::Errno::MSGSIZE.raw_os_error())
        {
            // Each segment must fit the path's MTU whole; one datagram at a time, IP fragments what
            // does not (as before segmentation offload). From now on for this socket.
            tracing::warn!(
                udp_payload_bytes = self.segment,
                "a frame's datagram is longer than the path's MTU: frames go one per call, fragmented by IP (raise the MTU to 1500, or lower the frame size)"
            );
            self.single = true;
            sent = Ok(());
            for datagram in self.contents.chunks(self.segment.max(1)) {
                if let Err(error) = socket.send_to(datagram, destination).await {
                    sent = Err(error);
                    break;
                }
            }
        }
        let bytes = self.contents.len();
        self.segments = 0;
        sent.map(|()| bytes)
    }
}

/// The batching state of a socket (receive offload on, where the kernel has it).
///
/// [`quinn_udp`] forbids IP fragmentation (QUIC probes the path's MTU); here data frames fit one MTU by
/// construction, but a member's status report with a long NACK list may not, and a LAN reassembles it
/// fine: the socket goes back to the kernel's default (fragment what exceeds the MTU).
pub(super) fn state(socket: &impl std::os::fd::AsFd) -> io::Result<UdpSocketState> {
    let state = UdpSocketState::new(socket.into())?;
    rustix::net::sockopt::set_ip_mtu_discover(socket, rustix::net::sockopt::Ipv4PathMtuDiscovery::WANT)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram longer than the path's MTU (a member's long NACK list) is fragmented, as the kernel
    /// does by default, not refused with `EMSGSIZE` as the batching library sets it up (found in the
    /// lab: every status report of a lossy pass was refused, and the members looked silent).
    #[tokio::test]
    async fn a_socket_set_up_for_batches_still_fragments_long_datagrams() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let _state = state(&socket).expect("state");
        let mode = rustix::net::sockopt::ip_mtu_discover(&socket).expect("IP_MTU_DISCOVER");
        assert_eq!(mode, rustix::net::sockopt::Ipv4PathMtuDiscovery::WANT);
    }

    #[test]
    fn a_run_takes_equal_datagrams_and_one_shorter_one_at_its_end() {
        let mut runs = Runs::new();
        assert!(runs.push(&[1; 100], 4));
        assert!(runs.push(&[2; 100], 4));
        assert!(!runs.push(&[3; 120], 4), "a longer datagram starts a new run");
        assert!(runs.push(&[4; 40], 4), "a shorter one ends the run");
        assert!(!runs.push(&[5; 40], 4), "nothing follows the shorter one");
        assert_eq!(runs.contents.len(), 240);
        let mut full = Runs::new();
        for _ in 0..3 {
            assert!(full.push(&[0; 10], 3));
        }
        assert!(!full.push(&[0; 10], 3), "at most max_segments");
    }

    /// Over loopback, a run of 20 datagrams sent in one segmented call arrives as the same 20
    /// datagrams, in order, whether or not the kernel hands them over in one buffer.
    #[tokio::test]
    async fn a_segmented_run_arrives_as_its_datagrams() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let sender = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let receiver_state = state(&receiver).expect("state");
        let sender_state = state(&sender).expect("state");
        let mut runs = Runs::new();
        let datagrams: Vec<Vec<u8>> = (0..20u8)
            .map(|index| vec![index; if index == 19 { 500 } else { 1200 }])
            .collect();
        let to = receiver.local_addr().expect("address");
        let mut sent = 0;
        // In as few calls as the kernel allows (one, where it segments).
        for datagram in &datagrams {
            if !runs.push(datagram, sender_state.max_gso_segments()) {
                sent += runs.send(&sender_state, &sender, to).await.expect("sent");
                assert!(runs.push(datagram, sender_state.max_gso_segments()));
            }
        }
        sent += runs.send(&sender_state, &sender, to).await.expect("sent");
        assert_eq!(sent, 19 * 1200 + 500);
        let mut batch = Batch::new(8, 1500);
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < datagrams.len() {
            receiver.readable().await.expect("readable");
            match batch.try_recv(&receiver_state, &receiver) {
                Ok(_) => got.extend(batch.datagrams().map(|(bytes, from)| {
                    assert_eq!(from, sender.local_addr().expect("address"));
                    bytes.to_vec()
                })),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => panic!("{error}"),
            }
        }
        assert_eq!(got, datagrams);
    }
}
