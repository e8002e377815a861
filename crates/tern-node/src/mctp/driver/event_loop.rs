//! The driver's loop (seed `004_1419c51402506f7e.txt`, "local distribution"): it feeds the sans-IO cores
//! — the group leader's [`Sender`] and [`Collector`], the member's [`Receiver`] — with what arrives on the
//! data channel and the unicast socket, their timers' expiries and the handle's commands, and carries out
//! what they return: datagrams to send, timers to set, events to act on. What a command or an event means
//! for the leader or the member is in [`super::leader`] and [`super::member`].

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn_udp::UdpSocketState;
use tern_wire::SecretKey;
use tern_wire::mctp::{self, KIND_APPLY_REPORT, KIND_STATUS_REPORT, MctpLimits};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::datagrams::{self, Batch, Runs};
use super::leader::Leading;
use super::member::SpoolShared;
use super::metrics::{MctpMetrics, ReasonLabel};
use super::{Command, Received};
use crate::election::rng::SplitMix64;
use crate::mctp::{
    CollectInput, Collector, Counters, Event, MemberAddresses, Output, Receiver, ReceiverInput, Sender, SenderInput,
    Timer,
};

/// How often the driver looks for sessions to forget.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often the cores' counters are published to the metrics (not after every datagram: at tens of
/// thousands of frames a second that was the loop's largest cost after the kernel's).
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// Refusals are logged at most this often (a flood of junk is counted datagram by datagram in
/// `/metrics`; the log says it happens).
const LOG_REFUSALS_EVERY: Duration = Duration::from_secs(60);
/// Refusals that are part of normal operation, or told otherwise, not logged: frames heard before their
/// session's announcement (a member that joins late), the `--data-loss` test knob's drops, a leader's
/// own multicast heard back, and frames of a session this member declined (its warning said so).
const ROUTINE_REFUSALS: [&str; 4] = ["unannounced", "injected-loss", "own-message", "declined"];
/// Datagrams taken from the data channel in one turn of the loop once it is readable (the socket is
/// drained without a new `select!` per datagram).
const DATA_BATCH: usize = 64;
/// What the driver counts besides the cores' refusals, also summed up in the log: datagrams the kernel
/// would not send, and requests to members with no known address.
const DRIVER_REFUSALS: [&str; 2] = ["send-error", "no-member-address"];
/// Receive buffers of the unicast socket (reports and requests: a few at a time).
const UNICAST_BUFFERS: usize = 4;
/// How long a member lets frames gather in its socket's buffer between two reads while a session
/// streams in (see [`Driver::gather`]).
const GATHER: Duration = Duration::from_millis(1);
/// Datagrams read in one gathering turn at most, so that timers, commands and the unicast socket are
/// served between turns whatever the rate.
const GATHER_BATCH: usize = 4096;

/// Which core set a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Core {
    Sender,
    Collector,
    Receiver,
}

/// The three cores and what the loop keeps beside them; the leader's and the member's halves of its
/// methods are in [`super::leader`] and [`super::member`].
pub(super) struct Driver {
    pub(super) sender: Sender,
    pub(super) collector: Collector,
    pub(super) receiver: Receiver,
    pub(super) group: SocketAddr,
    pub(super) own: SocketAddr,
    pub(super) timers: BTreeMap<(Core, Timer), Instant>,
    /// Members' unicast addresses, from their authenticated messages or their registration.
    pub(super) addresses: MemberAddresses,
    pub(super) leading: HashMap<u64, Leading>,
    pub(super) shared: SpoolShared,
    pub(super) received: mpsc::Sender<Received>,
    /// When the member first heard of each session it follows.
    pub(super) first_heard: HashMap<u64, Instant>,
    pub(super) keep_sessions: Duration,
    pub(super) loss: f64,
    pub(super) loss_rng: SplitMix64,
    pub(super) key: SecretKey,
    pub(super) limits: MctpLimits,
    pub(super) metrics: Arc<MctpMetrics>,
    pub(super) published: [Counters; 3],
    /// When refusals were last logged, and the counts then (by reason, all cores together).
    pub(super) refusals_logged: (Instant, BTreeMap<&'static str, u64>),
}

impl Driver {
    /// Runs until `shutdown` or until the handle is dropped.
    pub(super) async fn run(
        mut self,
        data: StdUdpSocket,
        unicast: StdUdpSocket,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        // The same socket, read directly (not through the runtime's readiness) while frames gather.
        let data_direct = match data.try_clone() {
            Ok(direct) => direct,
            Err(error) => {
                warn!(%error, "the data channel's socket could not be shared");
                return;
            }
        };
        // Batched receives (and receive offload) on both sockets, segmented sends on the unicast one,
        // which also multicasts ([`datagrams`]).
        let (data_state, unicast_state) = match (datagrams::state(&data_direct), datagrams::state(&unicast)) {
            (Ok(data_state), Ok(unicast_state)) => (data_state, unicast_state),
            (Err(error), _) | (_, Err(error)) => {
                warn!(%error, "the data channel's sockets could not be set up for batches");
                return;
            }
        };
        let (data, unicast) = match (UdpSocket::from_std(data), UdpSocket::from_std(unicast)) {
            (Ok(data), Ok(unicast)) => (data, unicast),
            (Err(error), _) | (_, Err(error)) => {
                warn!(%error, "the data channel's sockets could not be registered");
                return;
            }
        };
        // Datagrams longer than the largest arrive cut to one byte more, a length the cores refuse.
        let mut data_batch = Batch::new(quinn_udp::BATCH_SIZE, mctp::DEFAULT_MAX_DATAGRAM);
        let mut unicast_batch = Batch::new(UNICAST_BUFFERS, mctp::DEFAULT_MAX_DATAGRAM);
        let mut runs = Runs::new();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outputs: Vec<(Core, Output)> = Vec::new();
        let mut published = Instant::now();
        let mut gathering = false;
        loop {
            self.carry_out(&unicast, &unicast_state, &mut runs, &mut outputs).await;
            if published.elapsed() >= PUBLISH_EVERY {
                self.publish_metrics();
                published = Instant::now();
            }
            let next_timer = self
                .timers
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(key, at)| (*key, *at));
            let due = async {
                match next_timer {
                    Some((_, at)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command, &mut outputs),
                    None => return,
                },
                _ = due => {
                    if let Some((key, _)) = next_timer {
                        self.timers.remove(&key);
                        self.on_timer(key, &mut outputs);
                    }
                }
                ready = unicast.readable() => match ready.and_then(|()| unicast_batch.try_recv(&unicast_state, &unicast)) {
                    Ok(_) => {
                        for (bytes, from) in unicast_batch.datagrams() {
                            self.on_unicast(bytes, from, &mut outputs);
                        }
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(error) => debug!(%error, "unicast receive failed"),
                },
                ready = data.readable(), if !gathering => {
                    // What is queued, in the same turn (outputs wait until the batch is in, which
                    // keeps the member's status report after the frames before it).
                    let mut taken = 0;
                    while ready.is_ok() && taken < DATA_BATCH {
                        match data_batch.try_recv(&data_state, &data) {
                            Ok(_) => {
                                for (bytes, from) in data_batch.datagrams() {
                                    self.on_data(bytes, from, &mut outputs);
                                    taken += 1;
                                }
                            }
                            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(error) => {
                                debug!(%error, "data channel receive failed");
                                break;
                            }
                        }
                    }
                    gathering = taken > 0 && self.leading.is_empty();
                }
                _ = sweep.tick() => {
                    self.sweep();
                    // Also when nothing arrives: the last burst is told within a sweep.
                    self.log_refusals();
                }
                () = std::future::ready(()), if gathering => {
                    gathering = self.gather(&data_direct, &data_state, &mut data_batch, &mut outputs);
                    // Lets the runtime look at the sockets and timers without parking.
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    /// One gathering turn of a member while a session streams in: sleeps [`GATHER`], then reads what
    /// arrived meanwhile straight from the socket. Returns whether to go on gathering: something
    /// arrived, and this node leads no session (a GL's loop paces its frames and must not sleep).
    ///
    /// Why: a member parked on the socket's readiness is woken by every frame, and each of those
    /// wake-ups costs more than the frame (measured: 175,000 context switches a second with 32 members
    /// on two cores, one per frame and member, and half the machine's time). A thread asleep outside
    /// the socket's wait queue is not woken; the frames wait in the socket's buffer (8 MiB: hundreds of
    /// milliseconds at the link's rate) and are read a millisecond's worth at a time, as a network
    /// card's interrupt moderation does. The first frame after a quiet spell still wakes the member.
    fn gather(
        &mut self,
        socket: &StdUdpSocket,
        state: &UdpSocketState,
        batch: &mut Batch,
        outputs: &mut Vec<(Core, Output)>,
    ) -> bool {
        std::thread::sleep(GATHER);
        let mut taken = 0;
        while taken < GATHER_BATCH {
            match batch.recv(state, socket) {
                Ok(_) => {
                    for (bytes, from) in batch.datagrams() {
                        self.on_data(bytes, from, outputs);
                        taken += 1;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    debug!(%error, "data channel receive failed");
                    break;
                }
            }
        }
        taken > 0 && self.leading.is_empty()
    }

    /// A command from the handle, for the leader's or the member's side.
    fn on_command(&mut self, command: Command, outputs: &mut Vec<(Core, Output)>) {
        let now = Instant::now();
        match command {
            Command::Lead {
                start,
                ended,
                collected,
            } => self.lead(start, ended, collected, now, outputs),
            Command::Excuse { assignment, members } => self.excuse(assignment, members, now, outputs),
            Command::Applied {
                assignment,
                applied,
                detail,
            } => self.on_applied(assignment, applied, detail, now, outputs),
            Command::Registered { members } => {
                let departed = self.addresses.registered(members);
                if !departed.is_empty() {
                    self.departed(departed, now, outputs);
                }
            }
        }
    }

    fn on_timer(&mut self, (core, timer): (Core, Timer), outputs: &mut Vec<(Core, Output)>) {
        let now = Instant::now().into_std();
        let out = match core {
            Core::Sender => self.sender.handle(SenderInput::Timer(timer), now),
            Core::Collector => self.collector.handle(CollectInput::Timer(timer), now),
            Core::Receiver => self.receiver.handle(ReceiverInput::Timer(timer), now),
        };
        outputs.extend(out.into_iter().map(|output| (core, output)));
    }

    /// A datagram on the unicast socket: members' reports to the GL, or the GL's requests to a member.
    fn on_unicast(&mut self, bytes: &[u8], from: SocketAddr, outputs: &mut Vec<(Core, Output)>) {
        let now = Instant::now().into_std();
        match tern_wire::frame::peek_kind(bytes) {
            Some(KIND_STATUS_REPORT) => {
                self.learn_address(bytes, from);
                let out = self.sender.handle(SenderInput::Datagram(bytes), now);
                outputs.extend(out.into_iter().map(|output| (Core::Sender, output)));
            }
            Some(KIND_APPLY_REPORT) => {
                self.learn_address(bytes, from);
                let out = self.collector.handle(CollectInput::Datagram(bytes), now);
                outputs.extend(out.into_iter().map(|output| (Core::Collector, output)));
            }
            _ => {
                let out = self.receiver.handle(ReceiverInput::Datagram(bytes), now);
                outputs.extend(out.into_iter().map(|output| (Core::Receiver, output)));
            }
        }
    }

    /// Sends what the cores asked for, sets their timers, and handles their events (which may ask for
    /// more). The leader's multicasts go in runs of equal datagrams, one call each ([`datagrams`]), in
    /// the order they were asked for.
    async fn carry_out(
        &mut self,
        socket: &UdpSocket,
        state: &UdpSocketState,
        runs: &mut Runs,
        outputs: &mut Vec<(Core, Output)>,
    ) {
        while !outputs.is_empty() {
            let batch = std::mem::take(outputs);
            for (core, output) in batch {
                if let Output::Multicast(datagram) = &output
                    && core != Core::Receiver
                {
                    if !runs.push(datagram, runs.max_segments(state)) {
                        self.send_run(socket, state, runs).await;
                        runs.push(datagram, runs.max_segments(state));
                    }
                    continue;
                }
                if !matches!(output, Output::SetTimer { .. }) {
                    self.send_run(socket, state, runs).await;
                }
                match output {
                    Output::Multicast(datagram) => self.send(socket, &datagram, self.group, core).await,
                    Output::ToMember { member, datagram } => match self.addresses.address(&member) {
                        Some(address) => self.send(socket, &datagram, address, core).await,
                        None => {
                            debug!(%member, "neither heard nor registered: its request is not sent");
                            self.metrics.refuse("no-member-address", 1);
                        }
                    },
                    Output::ToLeader { address, datagram } => self.send(socket, &datagram, address, core).await,
                    Output::SetTimer { timer, at } => {
                        self.timers.insert((core, timer), Instant::from_std(at));
                    }
                    Output::Event(event) => self.on_event(event, outputs),
                }
            }
        }
        self.send_run(socket, state, runs).await;
    }

    /// Sends the leader's run of multicast datagrams gathered so far, if any.
    async fn send_run(&self, socket: &UdpSocket, state: &UdpSocketState, runs: &mut Runs) {
        if runs.is_empty() {
            return;
        }
        match runs.send(state, socket, self.group).await {
            Ok(sent) => {
                self.metrics.sent_bytes.inc_by(sent as u64);
            }
            Err(error) => {
                // Counted, and so told in the once-a-minute summary of refusals.
                debug!(to = %self.group, %error, "datagrams not sent");
                self.metrics.refuse("send-error", 1);
            }
        }
    }

    /// Sends one datagram; only the leader's cores count toward `sent_bytes` (a member's reports are not
    /// the data channel's load).
    async fn send(&self, socket: &UdpSocket, datagram: &[u8], to: SocketAddr, core: Core) {
        match socket.send_to(datagram, to).await {
            Ok(sent) => {
                if core != Core::Receiver {
                    self.metrics.sent_bytes.inc_by(sent as u64);
                }
            }
            Err(error) => {
                debug!(%to, %error, "datagram not sent");
                self.metrics.refuse("send-error", 1);
            }
        }
    }

    /// A core's event, for the leader's or the member's side to act on (which may ask for more).
    fn on_event(&mut self, event: Event, outputs: &mut Vec<(Core, Output)>) {
        let now = Instant::now();
        match event {
            Event::SessionEnded(report) => self.on_session_ended(report, now, outputs),
            Event::CollectionEnded(report) => self.on_collection_ended(report, now),
            Event::Received {
                assignment,
                name,
                hash,
                rebuild,
            } => self.on_received(assignment, name, hash, rebuild, now, outputs),
            Event::AlreadyHeld { assignment } => self.on_already_held(assignment, now, outputs),
            Event::Declined { assignment } => self.let_go(assignment),
        }
    }

    fn publish_metrics(&mut self) {
        let [sender, collector, receiver] = &mut self.published;
        self.metrics.publish(sender, self.sender.counters());
        self.metrics.publish(collector, self.collector.counters());
        self.metrics.publish(receiver, self.receiver.counters());
        self.log_refusals();
    }

    /// Once a minute at most: the datagrams refused since the last time, by reason, if any but the
    /// routine ones (a flood of junk or forged messages on the channel shows in the log, not only in
    /// `/metrics`).
    fn log_refusals(&mut self) {
        let (at, logged) = &mut self.refusals_logged;
        if at.elapsed() < LOG_REFUSALS_EVERY {
            return;
        }
        let mut now: BTreeMap<&'static str, u64> = BTreeMap::new();
        for counters in [
            self.sender.counters(),
            self.collector.counters(),
            self.receiver.counters(),
        ] {
            for (reason, count) in &counters.refused {
                *now.entry(reason).or_default() += count;
            }
        }
        // What the driver itself refused or could not do (counted in the metrics only).
        for reason in DRIVER_REFUSALS {
            let label = ReasonLabel {
                reason: reason.to_string(),
            };
            *now.entry(reason).or_default() += self.metrics.refused.get_or_create(&label).get();
        }
        let added: Vec<String> = now
            .iter()
            .filter(|(reason, _)| !ROUTINE_REFUSALS.contains(reason))
            .filter_map(|(reason, count)| {
                let added = count.saturating_sub(logged.get(reason).copied().unwrap_or(0));
                (added > 0).then(|| format!("{reason}: {added}"))
            })
            .collect();
        if !added.is_empty() {
            warn!(
                refused = %added.join(", "),
                seconds = at.elapsed().as_secs(),
                "datagrams refused on the data channel (by reason; tern_node_mctp_refused_total has every count)"
            );
        }
        *at = Instant::now();
        *logged = now;
    }
}
