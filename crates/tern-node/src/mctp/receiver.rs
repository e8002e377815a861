//! A member's side of local distribution: follow the sessions announced, take frames into a sink (parity
//! frames too, held for the [`super::rebuild`] after the session), answer the GL's status requests with
//! NACK lists (per block, the frames it still needs), and send the apply report at a random multiple of an
//! interval (see the module header of [`super`]).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use std::time::Duration;

use tern_wire::mctp::{
    self, Addressees, Announcement, ApplyReport, BlockNack, DataFrame, FrameId, MctpBody, ReportRequest, Status,
    StatusReport, Wanted,
};
use tracing::{debug, warn};

use super::bitmap::Bitmap;
use super::config::{ConfigError, ReceiverConfig};
use super::rebuild::{BlockRebuild, HeldParity, RebuildPlan};
use super::stamp::Stamper;
use super::{Counters, Event, Output, Timer, TimerKind};
use crate::election::rng::SplitMix64;

/// A session heard of this long ago may be forgotten to follow a new one when
/// [`ReceiverConfig::max_sessions`] are followed and none is finished.
pub const STALE_SESSION: Duration = Duration::from_secs(60);

/// Where a session's frames are written: a spool file, so memory stays bounded for any size.
pub trait Sink: Send {
    /// Writes `data` at `offset` of the assignment.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Keeps a parity frame's data until the rebuild ([`super::rebuild`]); returns the handle the
    /// rebuild reads it by ([`super::rebuild::RebuildIo::read_parity`]). A block takes parity frames
    /// only while it needs them, so a session's parity frames are at most its assignment's size.
    fn hold_parity(&mut self, data: &[u8]) -> io::Result<u64>;
    /// Every frame needed was written (flush; the driver rebuilds and verifies the signed hash next).
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The member's spool: what it holds and where a new session goes.
pub trait Spool: Send {
    /// Whether it already holds the assignment with this signed hash (hex).
    fn holds(&self, hash: &str) -> bool;
    /// Whether it applied the assignment with this Content Assignment ID, by whatever path (asked when
    /// the GL wants the apply report of a session this member does not follow: never heard of, or
    /// forgotten in a restart). Without such a record, nothing was applied.
    fn applied(&self, _assignment: u64) -> bool {
        false
    }
    /// A sink for the announced assignment.
    fn create(&mut self, announcement: &Announcement) -> io::Result<Box<dyn Sink>>;
}

/// What the member core is told.
#[derive(Debug, Clone)]
pub enum ReceiverInput<'a> {
    /// A datagram from the data channel or the member's unicast address, as received.
    Datagram(&'a [u8]),
    /// A timer the core set is due.
    Timer(Timer),
    /// The content interpreter's result of applying an assignment (after [`Event::Received`] or
    /// [`Event::AlreadyHeld`]): the apply report goes at a random multiple of the interval.
    Applied {
        /// The Content Assignment ID.
        assignment: u64,
        /// Whether it was applied.
        applied: bool,
        /// Why not, or a note.
        detail: String,
    },
}

/// A session's frames so far.
struct Receiving {
    /// Source frames received.
    received: Bitmap,
    /// Per block, source frames received.
    per_block: Vec<u32>,
    /// Per block that lacks source frames, the parity frames held (in the sink).
    parity: BTreeMap<u32, Vec<HeldParity>>,
    /// Blocks with as many frames (source and parity) as source frames: rebuildable.
    ready: u32,
    sink: Box<dyn Sink>,
}

impl Receiving {
    /// Frames of `block` held, source and parity.
    fn held(&self, block: u32) -> u32 {
        let sources = self.per_block.get(block as usize).copied().unwrap_or(0);
        let parity = self.parity.get(&block).map_or(0, Vec::len) as u32;
        sources.saturating_add(parity)
    }
}

enum Reception {
    Receiving(Receiving),
    Complete,
    /// Its spool could not be written (why): the member answers every status request with this and
    /// leaves the assignment to the unicast path.
    Declined(String),
}

struct MemberSession {
    announcement: Announcement,
    leader: SocketAddr,
    reception: Reception,
    /// The highest pass heard of (announced, or asked about).
    pass: u16,
    timers: BTreeMap<TimerKind, Instant>,
    applied: Option<ApplyReport>,
    /// When the member first heard of it.
    heard: Instant,
    /// When its GL last sent anything for it (a frame, an announcement, a request).
    active: Instant,
}

impl MemberSession {
    /// Received and applied (or not) by the node: what is left is answering for it, which the node's
    /// record of applied assignments does as well once the session is forgotten.
    fn finished(&self) -> bool {
        match self.reception {
            Reception::Complete => self.applied.is_some(),
            Reception::Declined(_) => true,
            Reception::Receiving(_) => false,
        }
    }
}

/// The answer to a request for the apply report of a session the member does not follow, due at `at`.
struct UnheardAnswer {
    leader: SocketAddr,
    report: ApplyReport,
    at: Instant,
}

/// A member's MCTP receiver core.
pub struct Receiver {
    config: ReceiverConfig,
    stamper: Stamper,
    rng: SplitMix64,
    spool: Box<dyn Spool>,
    sessions: BTreeMap<u64, MemberSession>,
    /// Answers due to requests for the apply reports of sessions not followed (at most
    /// [`ReceiverConfig::max_sessions`]).
    unheard: BTreeMap<u64, UnheardAnswer>,
    counters: Counters,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("name", &self.config.identity.name)
            .field("sessions", &self.sessions.keys().collect::<Vec<_>>())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// A member core; `seed` drives its random delays, `unix_ms` is the wall clock at `now`.
    pub fn new(
        config: ReceiverConfig,
        spool: Box<dyn Spool>,
        seed: u64,
        now: Instant,
        unix_ms: u64,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut rng = SplitMix64(seed);
        let incarnation = rng.next_u64();
        let stamper = Stamper::new(config.identity.clone(), config.limits, incarnation, now, unix_ms);
        Ok(Receiver {
            config,
            stamper,
            rng,
            spool,
            sessions: BTreeMap::new(),
            unheard: BTreeMap::new(),
            counters: Counters::default(),
        })
    }

    /// What it counted.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Frames still needed in a session it follows, source or parity (`None`: not followed; 0:
    /// complete).
    pub fn missing(&self, assignment: u64) -> Option<u32> {
        self.sessions.get(&assignment).map(|session| match &session.reception {
            Reception::Receiving(receiving) => (0..session.announcement.blocks())
                .map(|block| {
                    let (_, source_frames) = session.announcement.block_span(block);
                    source_frames.saturating_sub(receiving.held(block))
                })
                .sum(),
            Reception::Complete | Reception::Declined(_) => 0,
        })
    }

    /// The sessions it follows.
    pub fn sessions(&self) -> Vec<u64> {
        self.sessions.keys().copied().collect()
    }

    /// Stops following a session (after its assignment was applied and reported, or abandoned).
    pub fn forget(&mut self, assignment: u64) {
        self.unheard.remove(&assignment);
        self.sessions.remove(&assignment);
    }

    /// Sessions still being received whose GL has sent nothing for them for `idle` (it died, or gave the
    /// member up): their partial spool is of no more use, the unicast path brings the assignment.
    pub fn abandoned(&self, now: Instant, idle: Duration) -> Vec<u64> {
        self.sessions
            .iter()
            .filter(|(_, session)| {
                matches!(session.reception, Reception::Receiving(_)) && now.duration_since(session.active) >= idle
            })
            .map(|(assignment, _)| *assignment)
            .collect()
    }

    /// Makes room for a new session: forgets the finished session heard of first, preferring one whose
    /// apply report went already (no timer left); without one, the session heard of first if that was
    /// [`STALE_SESSION`] ago (one this member never completed: heavy loss, a leader that died; the
    /// unicast path catches it up). A publish is two sessions (prepare and commit), so without this a
    /// member refused every session after [`ReceiverConfig::max_sessions`] ones until the driver's
    /// sweep forgot them, ten minutes later. Returns whether one was forgotten.
    fn forget_oldest_finished(&mut self, now: Instant) -> bool {
        let finished = self
            .sessions
            .iter()
            .filter(|(_, session)| session.finished())
            .min_by_key(|(_, session)| (!session.timers.is_empty(), session.heard))
            .map(|(assignment, _)| *assignment);
        let stale = || {
            self.sessions
                .iter()
                .filter(|(_, session)| now.duration_since(session.heard) >= STALE_SESSION)
                .min_by_key(|(_, session)| session.heard)
                .map(|(assignment, _)| *assignment)
        };
        let oldest = finished.or_else(stale);
        match oldest {
            Some(assignment) => {
                debug!(assignment, "session forgotten to follow a new one");
                self.forget(assignment);
                true
            }
            None => false,
        }
    }

    /// Handles one input and says what to do.
    pub fn handle(&mut self, input: ReceiverInput<'_>, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            ReceiverInput::Datagram(bytes) if mctp::is_data_frame(bytes) => self.on_frame(bytes, now, &mut out),
            ReceiverInput::Datagram(bytes) => self.on_control(bytes, now, &mut out),
            ReceiverInput::Timer(timer) => self.on_timer(timer, now, &mut out),
            ReceiverInput::Applied {
                assignment,
                applied,
                detail,
            } => self.on_applied(assignment, applied, detail, now, &mut out),
        }
        out
    }

    fn on_control(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<Output>) {
        let Some(message) = self.stamper.open(bytes, now, &mut self.counters) else {
            return;
        };
        match message.body {
            MctpBody::Announcement(announcement) => self.on_announcement(announcement, message.address, now, out),
            MctpBody::ReportRequest(request) => self.on_request(request, message.address, now, out),
            MctpBody::StatusReport(_) | MctpBody::ApplyReport(_) => self.counters.refuse("unexpected"),
        }
    }

    fn on_announcement(&mut self, announcement: Announcement, leader: SocketAddr, now: Instant, out: &mut Vec<Output>) {
        let assignment = announcement.assignment;
        if let Some(session) = self.sessions.get_mut(&assignment) {
            if session.announcement.hash != announcement.hash || session.announcement.size != announcement.size {
                self.counters.refuse("conflicting-announcement");
                return;
            }
            session.pass = session.pass.max(announcement.pass);
            session.leader = leader;
            session.active = now;
            return;
        }
        if self.sessions.len() >= self.config.max_sessions && !self.forget_oldest_finished(now) {
            self.counters.refuse("too-many-sessions");
            return;
        }
        let reception = if self.spool.holds(&announcement.hash) {
            Reception::Complete
        } else {
            match self.spool.create(&announcement) {
                Ok(sink) => Reception::Receiving(Receiving {
                    received: Bitmap::new(announcement.frames),
                    per_block: vec![0; announcement.blocks() as usize],
                    parity: BTreeMap::new(),
                    ready: 0,
                    sink,
                }),
                Err(error) => {
                    warn!(
                        assignment = %format_args!("{assignment:016x}"),
                        %error,
                        "cannot spool an announced assignment; declined, it comes by unicast"
                    );
                    self.counters.refuse("spool-error");
                    Reception::Declined(format!("spool file: {error}"))
                }
            }
        };
        let already_held = matches!(reception, Reception::Complete);
        let declined = matches!(reception, Reception::Declined(_));
        let pass = announcement.pass;
        // Followed from now on: the session answers for itself.
        self.unheard.remove(&assignment);
        self.sessions.insert(
            assignment,
            MemberSession {
                announcement,
                leader,
                reception,
                pass,
                timers: BTreeMap::new(),
                applied: None,
                heard: now,
                active: now,
            },
        );
        if already_held {
            // The seed's "completion signal", at once.
            self.send_status(assignment, now, out);
            out.push(Output::Event(Event::AlreadyHeld { assignment }));
        }
        if declined {
            // At once, so that the GL does not repair for it.
            self.send_status(assignment, now, out);
            out.push(Output::Event(Event::Declined { assignment }));
        }
    }

    /// The session's spool failed (`error`): the session is declined — the sink is dropped, the GL told
    /// at once, and the driver lets the spool entry go. One warning per session, however many frames
    /// come after.
    fn decline(&mut self, assignment: u64, error: &io::Error, now: Instant, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get_mut(&assignment) else {
            return;
        };
        warn!(
            assignment = %format_args!("{assignment:016x}"),
            %error,
            "cannot spool the session's frames; declined, it comes by unicast"
        );
        self.counters.refuse("sink-error");
        session.reception = Reception::Declined(format!("spool file: {error}"));
        session.timers.remove(&TimerKind::StatusReport);
        self.send_status(assignment, now, out);
        out.push(Output::Event(Event::Declined { assignment }));
    }

    fn on_frame(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<Output>) {
        let frame = match mctp::decode_data(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                self.counters.refuse(error.reason());
                return;
            }
        };
        let Some(session) = self.sessions.get_mut(&frame.assignment) else {
            // A wrong assignment id, or a session whose announcement this member has not heard yet (it
            // joined late: later passes fill these frames).
            self.counters.refuse("unannounced");
            return;
        };
        if frame.pass == 0 || frame.pass > session.pass.saturating_add(1) {
            self.counters.refuse("pass-outside");
            return;
        }
        session.active = now;
        if matches!(session.reception, Reception::Declined(_)) {
            // Said once, in the warning when it was declined.
            self.counters.refuse("declined");
            return;
        }
        let taken = match frame.id {
            FrameId::Source(sequence) => self.on_source(&frame, sequence),
            FrameId::Parity { block, index } => self.on_parity(&frame, block, index),
        };
        match taken {
            Ok(Some(_)) => self.finish_if_full(frame.assignment, now, out),
            Ok(None) => {}
            Err(error) => self.decline(frame.assignment, &error, now, out),
        }
    }

    /// Writes a new source frame; returns its block (`None`: refused or held already), or the sink's
    /// error.
    fn on_source(&mut self, frame: &DataFrame<'_>, sequence: u32) -> io::Result<Option<u32>> {
        let Some(session) = self.sessions.get_mut(&frame.assignment) else {
            return Ok(None);
        };
        let Some(expected_len) = session.announcement.frame_len(sequence) else {
            self.counters.refuse("sequence-outside");
            return Ok(None);
        };
        if frame.data.len() != expected_len {
            self.counters.refuse("past-size");
            return Ok(None);
        }
        let Reception::Receiving(receiving) = &mut session.reception else {
            self.counters.duplicates += 1;
            return Ok(None);
        };
        if receiving.received.get(sequence) {
            self.counters.duplicates += 1;
            return Ok(None);
        }
        let offset = session.announcement.frame_offset(sequence);
        receiving.sink.write_at(offset, frame.data)?;
        receiving.received.insert(sequence);
        let block = session.announcement.block_of(sequence);
        let (_, source_frames) = session.announcement.block_span(block);
        let was_ready = receiving.held(block) >= source_frames;
        if let Some(count) = receiving.per_block.get_mut(block as usize) {
            *count += 1;
        }
        if receiving.per_block.get(block as usize).copied().unwrap_or(0) >= source_frames {
            // Whole without parity: what was held for it is not needed.
            receiving.parity.remove(&block);
        }
        if !was_ready && receiving.held(block) >= source_frames {
            receiving.ready += 1;
        }
        self.counters.frames_received += 1;
        Ok(Some(block))
    }

    /// Holds a new parity frame of a block that still needs frames; returns the block (`None`: refused or
    /// not needed), or the sink's error.
    fn on_parity(&mut self, frame: &DataFrame<'_>, block: u32, index: u16) -> io::Result<Option<u32>> {
        let Some(session) = self.sessions.get_mut(&frame.assignment) else {
            return Ok(None);
        };
        let announcement = &session.announcement;
        if block >= announcement.blocks() {
            self.counters.refuse("block-outside");
            return Ok(None);
        }
        if u32::from(index) >= announcement.parity_frames {
            self.counters.refuse("parity-outside");
            return Ok(None);
        }
        if frame.data.len() != announcement.parity_len() {
            self.counters.refuse("past-size");
            return Ok(None);
        }
        let (_, source_frames) = announcement.block_span(block);
        let Reception::Receiving(receiving) = &mut session.reception else {
            self.counters.duplicates += 1;
            return Ok(None);
        };
        let ready = receiving.held(block) >= source_frames;
        let held_already = receiving
            .parity
            .get(&block)
            .is_some_and(|held| held.iter().any(|parity| parity.number == index));
        if ready || held_already {
            self.counters.duplicates += 1;
            return Ok(None);
        }
        let handle = receiving.sink.hold_parity(frame.data)?;
        receiving
            .parity
            .entry(block)
            .or_default()
            .push(HeldParity { number: index, handle });
        if receiving.held(block) >= source_frames {
            receiving.ready += 1;
        }
        Ok(Some(block))
    }

    /// Every block is whole or holds enough parity frames to be rebuilt: the sink is finished and the
    /// assignment handed on with its [`RebuildPlan`] (the node rebuilds as it verifies).
    fn finish_if_full(&mut self, assignment: u64, now: Instant, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get_mut(&assignment) else {
            return;
        };
        let Reception::Receiving(receiving) = &mut session.reception else {
            return;
        };
        if receiving.ready < session.announcement.blocks() {
            return;
        }
        if let Err(error) = receiving.sink.finish() {
            self.decline(assignment, &error, now, out);
            return;
        }
        let announcement = &session.announcement;
        let blocks: Vec<BlockRebuild> = std::mem::take(&mut receiving.parity)
            .into_iter()
            .filter_map(|(block, parity)| {
                let (first, source_frames) = announcement.block_span(block);
                let lost: Vec<u32> = (0..source_frames)
                    .filter(|index| !receiving.received.get(first + index))
                    .collect();
                (!lost.is_empty()).then_some(BlockRebuild { block, lost, parity })
            })
            .collect();
        let plan = RebuildPlan {
            announcement: announcement.clone(),
            blocks,
        };
        self.counters.frames_rebuilt += plan.frames();
        session.reception = Reception::Complete;
        debug!(assignment, rebuild = plan.frames(), "every frame needed received");
        out.push(Output::Event(Event::Received {
            assignment,
            name: session.announcement.name.clone(),
            hash: session.announcement.hash.clone(),
            rebuild: plan,
        }));
    }

    fn on_request(&mut self, request: ReportRequest, leader: SocketAddr, now: Instant, out: &mut Vec<Output>) {
        if !request.addressees.includes(&self.config.identity.name) {
            return;
        }
        let Some(session) = self.sessions.get_mut(&request.assignment) else {
            self.answer_unheard(request, leader, now, out);
            return;
        };
        session.leader = leader;
        session.active = now;
        let (kind, delay_bound) = match request.wanted {
            Wanted::Status { pass, spread_ms } => {
                session.pass = session.pass.max(pass);
                let asked = Duration::from_millis(u64::from(spread_ms));
                (TimerKind::StatusReport, self.config.report_delay.min(asked))
            }
            Wanted::Apply if session.applied.is_some() => (TimerKind::ApplyReport, self.config.report_delay),
            Wanted::Apply => return,
        };
        if session.timers.contains_key(&kind) {
            return;
        }
        let at = now + self.rng.duration_below(delay_bound);
        session.timers.insert(kind, at);
        out.push(Output::SetTimer {
            timer: Timer {
                assignment: request.assignment,
                kind,
            },
            at,
        });
    }

    /// A request for a session this member does not follow. A status request waits for the next pass's
    /// announcement, which brings the member in. An apply report request that names this member is
    /// answered, after the usual random delay: "applied" when its spool's record says so (it applied the
    /// assignment by another path, or before a restart), otherwise "not received" — the GL then stops
    /// waiting for it and the unicast path catches it up at once. A request that does not name it (every
    /// member, or all but those that reported) stays unanswered: a node that never heard of the session
    /// cannot tell whether it is one of its members, and every bystander answering would be an implosion.
    fn answer_unheard(&mut self, request: ReportRequest, leader: SocketAddr, now: Instant, out: &mut Vec<Output>) {
        let named = matches!(&request.addressees, Addressees::Missing(_));
        if request.wanted != Wanted::Apply || !named {
            self.counters.refuse("unannounced");
            return;
        }
        let assignment = request.assignment;
        if self.unheard.contains_key(&assignment) {
            return;
        }
        if self.unheard.len() >= self.config.max_sessions {
            self.counters.refuse("too-many-sessions");
            return;
        }
        let applied = self.spool.applied(assignment);
        let detail = if applied {
            "applied already (the session was not followed)".to_string()
        } else {
            "not received: this member never heard of the session".to_string()
        };
        let at = now + self.rng.duration_below(self.config.report_delay);
        let report = ApplyReport {
            assignment,
            applied,
            detail,
        };
        self.unheard.insert(assignment, UnheardAnswer { leader, report, at });
        out.push(Output::SetTimer {
            timer: Timer {
                assignment,
                kind: TimerKind::ApplyReport,
            },
            at,
        });
    }

    fn on_applied(&mut self, assignment: u64, applied: bool, detail: String, now: Instant, out: &mut Vec<Output>) {
        let multiples = self.config.apply_multiples;
        let interval = self.config.apply_interval;
        let multiple = 1 + (self.rng.next_u64() % u64::from(multiples)) as u32;
        let Some(session) = self.sessions.get_mut(&assignment) else {
            return;
        };
        session.applied = Some(ApplyReport {
            assignment,
            applied,
            detail,
        });
        // "A random multiple of a predetermined interval": reports of a segment spread over the interval
        // times the largest multiple instead of all arriving at once ("report implosion").
        let at = now + interval.saturating_mul(multiple);
        session.timers.insert(TimerKind::ApplyReport, at);
        out.push(Output::SetTimer {
            timer: Timer {
                assignment,
                kind: TimerKind::ApplyReport,
            },
            at,
        });
    }

    fn on_timer(&mut self, timer: Timer, now: Instant, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get_mut(&timer.assignment) else {
            self.send_unheard(timer, now, out);
            return;
        };
        let due = session.timers.get(&timer.kind).copied();
        if due.is_none_or(|at| now < at) {
            return;
        }
        session.timers.remove(&timer.kind);
        match timer.kind {
            TimerKind::StatusReport => self.send_status(timer.assignment, now, out),
            TimerKind::ApplyReport => {
                if let Some(report) = session.applied.clone() {
                    let leader = session.leader;
                    let datagram = self.stamper.encode(MctpBody::ApplyReport(report), now);
                    out.push(Output::ToLeader {
                        address: leader,
                        datagram,
                    });
                }
            }
            _ => {}
        }
    }

    /// Sends the answer due for a session not followed.
    fn send_unheard(&mut self, timer: Timer, now: Instant, out: &mut Vec<Output>) {
        if timer.kind != TimerKind::ApplyReport {
            return;
        }
        let due = self.unheard.get(&timer.assignment).map(|answer| answer.at);
        if due.is_none_or(|at| now < at) {
            return;
        }
        let Some(answer) = self.unheard.remove(&timer.assignment) else {
            return;
        };
        let datagram = self.stamper.encode(MctpBody::ApplyReport(answer.report), now);
        out.push(Output::ToLeader {
            address: answer.leader,
            datagram,
        });
    }

    fn send_status(&mut self, assignment: u64, now: Instant, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get(&assignment) else {
            return;
        };
        let status = match &session.reception {
            Reception::Complete => Status::Complete,
            Reception::Declined(reason) => Status::Declined { reason: reason.clone() },
            Reception::Receiving(receiving) => nacks(&session.announcement, receiving, self.config.limits.max_blocks),
        };
        let report = StatusReport {
            assignment,
            pass: session.pass,
            status,
        };
        let leader = session.leader;
        let datagram = self.stamper.encode(MctpBody::StatusReport(report), now);
        out.push(Output::ToLeader {
            address: leader,
            datagram,
        });
    }
}

/// The NACK list: per block, the frames it still needs (source frames missing, less parity frames held),
/// the first `max_blocks` blocks; the count is over every block.
fn nacks(announcement: &Announcement, receiving: &Receiving, max_blocks: usize) -> Status {
    let mut blocks = Vec::new();
    let mut count: u32 = 0;
    for block in 0..announcement.blocks() {
        let (_, source_frames) = announcement.block_span(block);
        let missing = source_frames.saturating_sub(receiving.held(block));
        if missing == 0 {
            continue;
        }
        count = count.saturating_add(missing);
        if blocks.len() < max_blocks {
            blocks.push(BlockNack { block, missing });
        }
    }
    Status::Missing { blocks, count }
}
