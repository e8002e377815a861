//! An in-memory segment for the cores: one GL (a [`Sender`] and a [`Collector`]) and members
//! ([`Receiver`]s) on a multicast network with a fixed latency, seeded per-receiver loss, scripted drops,
//! late joins and crashes, all on a fake clock. The event-by-event tests ([`super::tests`]) and the
//! simulation below use it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_wire::SecretKey;
use tern_wire::frame;
use tern_wire::mctp::{self, Announcement, FrameId, KIND_APPLY_REPORT};

use super::rebuild::{self, RebuildIo};
use super::{
    AssignmentStatusReport, CollectConfig, CollectInput, Collector, Event, Identity, MemberAddresses, Output, Receiver,
    ReceiverConfig, ReceiverInput, Sender, SenderConfig, SenderInput, SessionReport, SessionStart, Sink, Spool, Timer,
};
use crate::election::rng::SplitMix64;

pub(super) const UNIX_MS: u64 = 1_700_000_000_000;
pub(super) const ASSIGNMENT: u64 = 42;
const LATENCY: Duration = Duration::from_micros(200);

pub(super) fn key() -> SecretKey {
    SecretKey::parse(&"6d".repeat(32)).expect("key")
}

pub(super) fn identity(name: &str, index: usize) -> Identity {
    Identity {
        key: key(),
        segment: "rack-1".into(),
        name: name.into(),
        address: format!("10.0.0.{}:7300", index + 1).parse().expect("address"),
    }
}

pub(super) fn member_name(index: usize) -> String {
    format!("m{index}")
}

/// Assignment bytes that differ frame to frame.
pub(super) fn assignment_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

pub(super) fn hash_of(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Spooled assignments of one member, by assignment id.
pub(super) type Files = Arc<Mutex<BTreeMap<u64, Vec<u8>>>>;

/// Parity frames a member held, by handle.
pub(super) type Parity = Arc<Mutex<Vec<Vec<u8>>>>;

struct MemSpool {
    held: Vec<String>,
    files: Files,
    writes: Writes,
    parity: Parity,
    /// A disk that fills: writes a session's sink takes before it fails (`Some(0)`: the spool cannot
    /// even be created).
    disk: Option<usize>,
}

/// A member's spooled copy of one assignment and its parity frames: the core's sink, and what the
/// rebuild reads and writes (as the driver's spool file and parity file are).
struct MemSink {
    assignment: u64,
    files: Files,
    writes: Writes,
    parity: Parity,
    /// Writes left before the disk is full (`None`: no limit).
    room: Option<usize>,
}

impl MemSink {
    fn take_room(&mut self) -> io::Result<()> {
        match &mut self.room {
            Some(0) => Err(io::Error::new(io::ErrorKind::StorageFull, "No space left on device")),
            Some(room) => {
                *room -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// The offsets a member's sink was written at, in order.
pub(super) type Writes = Arc<Mutex<Vec<u64>>>;

impl Sink for MemSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.take_room()?;
        let mut files = self.files.lock().map_err(|_| io::Error::other("poisoned"))?;
        let file = files.entry(self.assignment).or_default();
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        if file.len() < start + data.len() {
            file.resize(start + data.len(), 0);
        }
        file[start..start + data.len()].copy_from_slice(data);
        self.writes
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .push(offset);
        Ok(())
    }

    fn hold_parity(&mut self, data: &[u8]) -> io::Result<u64> {
        self.take_room()?;
        let mut parity = self.parity.lock().map_err(|_| io::Error::other("poisoned"))?;
        parity.push(data.to_vec());
        Ok(parity.len() as u64 - 1)
    }
}

impl RebuildIo for MemSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        Sink::write_at(self, offset, data)
    }

    fn read_parity(&mut self, handle: u64, buf: &mut [u8]) -> io::Result<()> {
        let parity = self.parity.lock().map_err(|_| io::Error::other("poisoned"))?;
        let held = parity
            .get(usize::try_from(handle).map_err(io::Error::other)?)
            .ok_or_else(|| io::Error::other("no such parity frame"))?;
        buf.copy_from_slice(held);
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let files = self.files.lock().map_err(|_| io::Error::other("poisoned"))?;
        // Like a spool file set to the assignment's size: zeros where nothing was written yet.
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        buf.fill(0);
        let written = files
            .get(&self.assignment)
            .and_then(|file| file.get(start..))
            .unwrap_or_default();
        let len = written.len().min(buf.len());
        buf[..len].copy_from_slice(&written[..len]);
        Ok(())
    }
}

impl Spool for MemSpool {
    fn holds(&self, hash: &str) -> bool {
        self.held.iter().any(|held| held == hash)
    }

    fn applied(&self, assignment: u64) -> bool {
        // The segment runs one assignment, [`ASSIGNMENT`]: a member holding any hash applied it.
        assignment == ASSIGNMENT && !self.held.is_empty()
    }

    fn create(&mut self, announcement: &Announcement) -> io::Result<Box<dyn Sink>> {
        if self.disk == Some(0) {
            return Err(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                "Read-only file system",
            ));
        }
        Ok(Box::new(MemSink {
            assignment: announcement.assignment,
            files: self.files.clone(),
            writes: self.writes.clone(),
            parity: self.parity.clone(),
            room: self.disk,
        }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A datagram arrives at node `to` (0: the GL).
    Deliver {
        to: usize,
        bytes: Vec<u8>,
    },
    SenderTimer(Timer),
    CollectTimer(Timer),
    MemberTimer(usize, Timer),
    Join(usize),
    Crash(usize),
    /// The GL's registration says member `usize` went offline (its keep-alives stopped).
    Depart(usize),
}

/// A datagram the GL sent or received, for the tests to read.
#[derive(Debug, Clone)]
pub(super) struct Logged {
    pub(super) at: Instant,
    /// 0: the GL; otherwise the member's index.
    pub(super) from: usize,
    pub(super) bytes: Vec<u8>,
}

/// Decides whether a datagram to node `to` is lost.
pub(super) type DropRule = Box<dyn FnMut(usize, &[u8]) -> bool>;

/// The simulated segment.
pub(super) struct Segment {
    pub(super) now: Instant,
    queue: BinaryHeap<Reverse<(Instant, u64, Ev)>>,
    next_id: u64,
    pub(super) sender: Sender,
    pub(super) collector: Collector,
    /// Index 0 unused (the GL); `None`: not joined yet, or crashed.
    pub(super) members: Vec<Option<Receiver>>,
    configs: Vec<ReceiverConfig>,
    held: Vec<Vec<String>>,
    /// Per member, the writes its disk takes per session (`None`: no limit).
    disks: Vec<Option<usize>>,
    pub(super) files: Vec<Files>,
    /// Per member, the offsets its sink (or its rebuild) was written at.
    pub(super) writes: Vec<Writes>,
    /// Per member, the parity frames it held.
    parity: Vec<Parity>,
    loss: f64,
    loss_rng: SplitMix64,
    pub(super) drop_rule: DropRule,
    /// Everything the GL sent, and every datagram members sent to the GL.
    pub(super) log: Vec<Logged>,
    pub(super) sessions: Vec<SessionReport>,
    pub(super) collections: Vec<AssignmentStatusReport>,
    /// When each apply report arrived at the GL.
    pub(super) apply_reports_at: Vec<Instant>,
    /// Where the GL unicasts to members, as the driver keeps it: heard from their messages, and (unless a
    /// test clears it) registered.
    pub(super) addresses: MemberAddresses,
    /// Unicast datagrams the GL could not send (no address known).
    pub(super) unsent: usize,
    /// Per member, the times it was told to apply the assignment (Received or AlreadyHeld).
    pub(super) applies: Vec<u32>,
    expected: Vec<u8>,
}

impl Segment {
    /// `members` members (all joined, none holding anything) with these configurations.
    pub(super) fn new(
        members: usize,
        sender: SenderConfig,
        receiver: impl Fn(Identity) -> ReceiverConfig,
        collect: CollectConfig,
        seed: u64,
    ) -> Self {
        let now = Instant::now();
        let mut segment = Segment {
            now,
            queue: BinaryHeap::new(),
            next_id: 0,
            sender: Sender::new(sender, seed, now, UNIX_MS).expect("sender"),
            collector: Collector::new(collect, seed ^ 1, now, UNIX_MS).expect("collector"),
            members: (0..=members).map(|_| None).collect(),
            configs: (0..=members)
                .map(|index| receiver(identity(&member_name(index), index)))
                .collect(),
            held: vec![Vec::new(); members + 1],
            disks: vec![None; members + 1],
            files: (0..=members).map(|_| Files::default()).collect(),
            writes: (0..=members).map(|_| Writes::default()).collect(),
            parity: (0..=members).map(|_| Parity::default()).collect(),
            loss: 0.0,
            loss_rng: SplitMix64(seed ^ 2),
            drop_rule: Box::new(|_, _| false),
            log: Vec::new(),
            sessions: Vec::new(),
            collections: Vec::new(),
            apply_reports_at: Vec::new(),
            addresses: MemberAddresses::new(1024),
            unsent: 0,
            applies: vec![0; members + 1],
            expected: Vec::new(),
        };
        segment
            .addresses
            .registered((1..=members).map(|index| (member_name(index), identity(&member_name(index), index).address)));
        for index in 1..=members {
            segment.join(index);
        }
        segment
    }

    /// Member `index` already holds assignments with these hashes (before it joins).
    pub(super) fn hold(&mut self, index: usize, hash: &str) {
        self.held[index].push(hash.to_string());
        self.members[index] = None;
        self.join(index);
    }

    /// Member `index`'s disk takes `writes` writes per session, then is full (0: its spool cannot be
    /// created, as on a read-only disk); it rejoins with that disk.
    pub(super) fn fill_disk(&mut self, index: usize, writes: usize) {
        self.disks[index] = Some(writes);
        self.members[index] = None;
        self.join(index);
    }

    /// Random loss of every datagram to every node with this probability.
    pub(super) fn set_loss(&mut self, loss: f64) {
        self.loss = loss;
    }

    fn join(&mut self, index: usize) {
        let spool = MemSpool {
            held: self.held[index].clone(),
            files: self.files[index].clone(),
            writes: self.writes[index].clone(),
            parity: self.parity[index].clone(),
            disk: self.disks[index],
        };
        let seed = 1000 + index as u64;
        let receiver = Receiver::new(self.configs[index].clone(), Box::new(spool), seed, self.now, UNIX_MS);
        self.members[index] = Some(receiver.expect("receiver"));
    }

    /// Member `index` leaves now and joins at `at`.
    pub(super) fn join_at(&mut self, index: usize, at: Instant) {
        self.members[index] = None;
        self.push(at, Ev::Join(index));
    }

    /// Member `index` crashes at `at`.
    pub(super) fn crash_at(&mut self, index: usize, at: Instant) {
        self.push(at, Ev::Crash(index));
    }

    /// The GL is told at `at` that member `index` went offline, as the driver tells it when the
    /// registration's member list loses it.
    pub(super) fn depart_at(&mut self, index: usize, at: Instant) {
        self.push(at, Ev::Depart(index));
    }

    fn push(&mut self, at: Instant, event: Ev) {
        self.next_id += 1;
        self.queue.push(Reverse((at, self.next_id, event)));
    }

    /// Starts a session (and its report collection) for `bytes` to every member.
    pub(super) fn start(&mut self, bytes: Vec<u8>) {
        let members: Vec<String> = (1..self.members.len()).map(member_name).collect();
        self.expected = bytes.clone();
        let start = SessionStart {
            assignment: ASSIGNMENT,
            name: "www-000042".into(),
            hash: hash_of(&bytes),
            size: bytes.len() as u64,
            members: members.clone(),
            source: Box::new(bytes),
        };
        let now = self.now;
        let out = self.collector.handle(
            CollectInput::Start {
                assignment: ASSIGNMENT,
                members,
            },
            now,
        );
        self.apply(0, out);
        let out = self.sender.handle(SenderInput::Start(start), now);
        self.apply(0, out);
    }

    /// Runs events until none is left or the clock passes `limit` after the start.
    pub(super) fn run_for(&mut self, limit: Duration) {
        let deadline = self.now + limit;
        let mut events = 0u64;
        while let Some(Reverse((at, _, event))) = self.queue.pop() {
            if at > deadline {
                break;
            }
            events += 1;
            assert!(events < 2_000_000, "the simulation does not settle");
            self.now = self.now.max(at);
            self.dispatch(event);
        }
    }

    fn dispatch(&mut self, event: Ev) {
        let now = self.now;
        match event {
            Ev::Deliver { to: 0, bytes } => {
                self.log.push(Logged {
                    at: now,
                    from: usize::MAX,
                    bytes: bytes.clone(),
                });
                // The driver learns a member's address from its authenticated messages.
                if let Ok(verified) = mctp::decode(&key(), &bytes, &Default::default()) {
                    let message = verified.message();
                    self.addresses.heard(&message.sender, message.address);
                }
                if frame::peek_kind(&bytes) == Some(KIND_APPLY_REPORT) {
                    self.apply_reports_at.push(now);
                    let out = self.collector.handle(CollectInput::Datagram(&bytes), now);
                    self.apply(0, out);
                } else {
                    let out = self.sender.handle(SenderInput::Datagram(&bytes), now);
                    self.apply(0, out);
                }
            }
            Ev::Deliver { to, bytes } => {
                if let Some(member) = self.members[to].as_mut() {
                    let out = member.handle(ReceiverInput::Datagram(&bytes), now);
                    self.apply(to, out);
                }
            }
            Ev::SenderTimer(timer) => {
                let out = self.sender.handle(SenderInput::Timer(timer), now);
                self.apply(0, out);
            }
            Ev::CollectTimer(timer) => {
                let out = self.collector.handle(CollectInput::Timer(timer), now);
                self.apply(0, out);
            }
            Ev::MemberTimer(index, timer) => {
                if let Some(member) = self.members[index].as_mut() {
                    let out = member.handle(ReceiverInput::Timer(timer), now);
                    self.apply(index, out);
                }
            }
            Ev::Join(index) => self.join(index),
            Ev::Crash(index) => self.members[index] = None,
            Ev::Depart(index) => {
                let members = vec![member_name(index)];
                let out = self.sender.handle(
                    SenderInput::Departed {
                        members: members.clone(),
                    },
                    now,
                );
                self.apply(0, out);
                let out = self.collector.handle(
                    CollectInput::Excuse {
                        assignment: ASSIGNMENT,
                        members,
                    },
                    now,
                );
                self.apply(0, out);
            }
        }
    }

    fn lost(&mut self, to: usize, bytes: &[u8]) -> bool {
        if (self.drop_rule)(to, bytes) {
            return true;
        }
        self.loss > 0.0 && (self.loss_rng.next_u64() as f64 / u64::MAX as f64) < self.loss
    }

    fn send(&mut self, to: usize, bytes: &[u8]) {
        if !self.lost(to, bytes) {
            self.push(
                self.now + LATENCY,
                Ev::Deliver {
                    to,
                    bytes: bytes.to_vec(),
                },
            );
        }
    }

    fn apply(&mut self, from: usize, outputs: Vec<Output>) {
        let now = self.now;
        for output in outputs {
            match output {
                Output::Multicast(bytes) => {
                    self.log.push(Logged {
                        at: now,
                        from,
                        bytes: bytes.clone(),
                    });
                    for to in 1..self.members.len() {
                        if to != from {
                            self.send(to, &bytes);
                        }
                    }
                }
                Output::ToMember { member, datagram } => {
                    self.log.push(Logged {
                        at: now,
                        from,
                        bytes: datagram.clone(),
                    });
                    // By address, as the driver sends it.
                    let address = self.addresses.address(&member);
                    let to = (1..self.members.len())
                        .find(|&index| Some(identity(&member_name(index), index).address) == address);
                    match to {
                        Some(to) => self.send(to, &datagram),
                        None => self.unsent += 1,
                    }
                }
                Output::ToLeader { datagram, .. } => self.send(0, &datagram),
                Output::SetTimer { timer, at } => {
                    let event = match (from, timer.kind) {
                        (0, super::TimerKind::Collect) => Ev::CollectTimer(timer),
                        (0, _) => Ev::SenderTimer(timer),
                        (index, _) => Ev::MemberTimer(index, timer),
                    };
                    self.push(at, event);
                }
                Output::Event(event) => self.on_event(from, event),
            }
        }
    }

    fn on_event(&mut self, from: usize, event: Event) {
        let now = self.now;
        match event {
            Event::SessionEnded(report) => {
                let assignment = report.assignment;
                // As the node does (`node::distribute`): the members that said they lack frames are
                // caught up by the unicast path; the silent ones are asked for their reports.
                let members = report.left_out();
                self.sessions.push(report);
                let out = self.collector.handle(CollectInput::SessionEnded { assignment }, now);
                self.apply(0, out);
                if !members.is_empty() {
                    let out = self.collector.handle(CollectInput::Excuse { assignment, members }, now);
                    self.apply(0, out);
                }
            }
            Event::Received {
                assignment, rebuild, ..
            } => {
                self.applies[from] += 1;
                // As the driver does: the rebuild, then the check of the bytes (here, the bytes
                // themselves rather than the signed hash).
                let mut sink = MemSink {
                    assignment,
                    files: self.files[from].clone(),
                    writes: self.writes[from].clone(),
                    parity: self.parity[from].clone(),
                    room: None,
                };
                let mut handed = Vec::new();
                let rebuilt = rebuild::rebuild(&rebuild, &mut sink, &mut |chunk| {
                    handed.extend_from_slice(chunk);
                    Ok(())
                });
                let applied = rebuilt.is_ok() && handed == self.expected;
                self.applied(from, assignment, applied);
            }
            Event::AlreadyHeld { assignment } => {
                self.applies[from] += 1;
                self.applied(from, assignment, true);
            }
            Event::Declined { .. } => {}
            Event::CollectionEnded(report) => self.collections.push(report),
        }
    }

    fn applied(&mut self, index: usize, assignment: u64, applied: bool) {
        let now = self.now;
        if let Some(member) = self.members[index].as_mut() {
            let input = ReceiverInput::Applied {
                assignment,
                applied,
                detail: if applied { String::new() } else { "hash mismatch".into() },
            };
            let out = member.handle(input, now);
            self.apply(index, out);
        }
    }

    /// The source frames the GL sent in `pass`, by sequence number.
    pub(super) fn frames_sent_in(&self, pass: u16) -> Vec<u32> {
        self.data_frames_in(pass)
            .filter_map(|id| match id {
                FrameId::Source(sequence) => Some(sequence),
                FrameId::Parity { .. } => None,
            })
            .collect()
    }

    /// The parity frames the GL sent in `pass`, as (block, parity number).
    pub(super) fn parity_sent_in(&self, pass: u16) -> Vec<(u32, u16)> {
        self.data_frames_in(pass)
            .filter_map(|id| match id {
                FrameId::Parity { block, index } => Some((block, index)),
                FrameId::Source(_) => None,
            })
            .collect()
    }

    fn data_frames_in(&self, pass: u16) -> impl Iterator<Item = FrameId> + '_ {
        self.log
            .iter()
            .filter(|logged| logged.from == 0)
            .filter_map(|logged| mctp::decode_data(&logged.bytes).ok())
            .filter(move |frame| frame.pass == pass)
            .map(|frame| frame.id)
    }

    /// Member `index`'s spooled copy.
    pub(super) fn spooled(&self, index: usize) -> Option<Vec<u8>> {
        self.files[index].lock().expect("files").get(&ASSIGNMENT).cloned()
    }
}

#[cfg(test)]
mod simulation {
    use super::*;
    use crate::mctp::Outcome;

    /// 30 members, 5% random loss of every datagram to every node, three members crashing mid-session:
    /// every live member ends with the exact bytes, the session ends with a quorum naming the crashed
    /// members, and the apply reports arrive spread over the interval (no report implosion).
    #[test]
    fn thirty_members_five_percent_loss_and_crashes() {
        const MEMBERS: usize = 30;
        let interval = Duration::from_millis(200);
        let multiples = 20;
        let sender = SenderConfig::new(identity("gl", 0));
        let collect = CollectConfig {
            first_wait: interval * (multiples + 2),
            request_wait: Duration::from_secs(2),
            ..CollectConfig::new(identity("gl", 0))
        };
        let receiver = |identity| ReceiverConfig {
            apply_interval: interval,
            apply_multiples: multiples,
            ..ReceiverConfig::new(identity)
        };
        let mut segment = Segment::new(MEMBERS, sender, receiver, collect, 7);
        segment.set_loss(0.05);
        let bytes = assignment_bytes(512 * 1024, 11);
        let start = segment.now;
        let crashed = [4, 17, 29];
        for (n, index) in crashed.into_iter().enumerate() {
            segment.crash_at(index, start + Duration::from_millis(10 + 15 * n as u64));
        }
        segment.start(bytes.clone());
        segment.run_for(Duration::from_secs(120));

        let [session] = segment.sessions.as_slice() else {
            panic!("one session report: {:?}", segment.sessions);
        };
        let crashed_names: Vec<String> = crashed.iter().map(|&index| member_name(index)).collect();
        assert_eq!(
            session.outcome,
            Outcome::Quorum {
                incomplete: {
                    let mut names = crashed_names.clone();
                    names.sort();
                    names
                }
            }
        );
        for index in (1..=MEMBERS).filter(|index| !crashed.contains(index)) {
            assert!(
                segment.spooled(index).as_deref() == Some(&bytes[..]),
                "member {index} has the exact bytes"
            );
        }
        let frames = mctp::frames_for(bytes.len() as u64, 1400);
        println!(
            "simulation: {MEMBERS} members, 5% loss, {} crashed: {} passes, {} frames sent for {frames} frames ({} repaired), final rate {} B/s",
            crashed.len(),
            session.passes,
            session.frames_sent,
            session.frames_repaired,
            session.final_rate
        );
        // About one copy plus the repairs: with 5% loss per member, a frame is lost by at least one of
        // 30 members 79% of the time, so resending lost frames would resend most of them; a parity frame
        // repairs a different loss at each member, so the repairs are the worst member's losses per block
        // (about 12% here), and a few more for parity frames lost in turn.
        assert!(
            session.frames_sent < frames * 3 / 2,
            "{} frames sent",
            session.frames_sent
        );

        let [collection] = segment.collections.as_slice() else {
            panic!("one collection report: {:?}", segment.collections);
        };
        let mut missing = crashed_names;
        missing.sort();
        assert_eq!(collection.missing, missing);
        assert_eq!(collection.applied.len(), MEMBERS - crashed.len());
        assert!(collection.failed.is_empty());

        // No report implosion: reports per slot of half an interval.
        let slot = interval / 2;
        let mut per_slot: BTreeMap<u128, usize> = BTreeMap::new();
        for at in &segment.apply_reports_at {
            *per_slot.entry((*at - start).as_nanos() / slot.as_nanos()).or_default() += 1;
        }
        let busiest = per_slot.values().copied().max().unwrap_or(0);
        let first = segment.apply_reports_at.iter().min().copied().expect("reports");
        let last = segment.apply_reports_at.iter().max().copied().expect("reports");
        println!(
            "report collection: {} apply reports over {:?}, at most {busiest} in any {slot:?} slot, {} requests",
            segment.apply_reports_at.len(),
            last - first,
            collection.requests
        );
        assert!(busiest <= 6, "{busiest} reports in one slot");
        assert!(
            last - first >= interval * (multiples / 2),
            "spread over {:?}",
            last - first
        );
    }
}
