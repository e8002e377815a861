//! The group leader's side of a session: announce, send passes at a rate, aggregate NACKs, repair with
//! parity frames, and end with all members, a quorum, or the problem (see the module header of
//! [`super`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::time::{Duration, Instant};

use tern_wire::mctp::{self, Announcement, DataFrame, FrameId, MctpBody, ReportRequest, Status, StatusReport, Wanted};
use tracing::{debug, warn};

use super::collect::addressees;
use super::config::{ConfigError, SenderConfig};
use super::parity::BlockEncoder;
use super::stamp::Stamper;
use super::{Counters, Event, Output, Timer, TimerKind};
use crate::election::rng::SplitMix64;

/// Where the GL reads the frames it sends: its spooled copy of the assignment.
pub trait FrameSource: Send {
    /// Fills `buf` with the assignment's bytes from `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl FrameSource for Vec<u8> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// A session to start: one assignment for a set of members.
pub struct SessionStart {
    /// The Content Assignment ID its frames carry (unique among the GL's open sessions).
    pub assignment: u64,
    /// Its name (transfer id).
    pub name: String,
    /// Its signed blake3 hash, hex.
    pub hash: String,
    /// Its size in bytes.
    pub size: u64,
    /// The members that take part (node names).
    pub members: Vec<String>,
    /// Where its bytes are read.
    pub source: Box<dyn FrameSource>,
}

impl std::fmt::Debug for SessionStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStart")
            .field("assignment", &self.assignment)
            .field("name", &self.name)
            .field("size", &self.size)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

/// What the GL core is told.
#[derive(Debug)]
pub enum SenderInput<'a> {
    /// Start a session.
    Start(SessionStart),
    /// A datagram received on the GL's unicast address (status reports), as received.
    Datagram(&'a [u8]),
    /// A timer the core set is due (early or replaced firings are ignored).
    Timer(Timer),
    /// Members of a session the GL has no address for (never heard, not registered with it): once a
    /// pass ended without a word from them they are not waited for, and the session ends as soon as the
    /// others are complete (they are named among its incomplete members, for the unicast path). A
    /// member that answers is waited for as any other.
    Unreachable {
        /// The session's Content Assignment ID.
        assignment: u64,
        /// The members.
        members: Vec<String>,
    },
    /// Members that went offline (the segment's registration stopped hearing their keep-alives): in every
    /// open session, those not complete are not waited for past the current pass, and are named among its
    /// incomplete members (caught up when they come back).
    Departed {
        /// The members.
        members: Vec<String>,
    },
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every member reported complete.
    Complete,
    /// The missing frames stopped falling, but a quorum of members is complete; the others (named) are
    /// caught up later.
    Quorum {
        /// The members that did not report complete.
        incomplete: Vec<String>,
    },
    /// The missing frames stopped falling without a quorum: the problem the GL reports to the mover.
    GaveUp {
        /// The members that did not report complete.
        incomplete: Vec<String>,
    },
    /// The GL could not read its copy of the assignment.
    SourceFailed(String),
}

/// The GL's account of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReport {
    /// The Content Assignment ID.
    pub assignment: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Passes sent.
    pub passes: u16,
    /// Frames sent in all passes.
    pub frames_sent: u64,
    /// Parity frames sent after pass 1.
    pub frames_repaired: u64,
    /// The rate at the end, bytes per second.
    pub final_rate: u64,
    /// The members not complete that the GL never heard in the session (no status report): they may
    /// hold the assignment all the same, their reports lost, so report collection asks them (by their
    /// registered address) before the unicast path catches them up.
    pub silent: Vec<String>,
}

impl SessionReport {
    /// The members the unicast path catches up at once: those not complete that the GL heard (they said
    /// what they lack). The silent ones stay in report collection, which asks them first.
    pub fn left_out(&self) -> Vec<String> {
        match &self.outcome {
            Outcome::Quorum { incomplete } | Outcome::GaveUp { incomplete } => incomplete
                .iter()
                .filter(|name| !self.silent.contains(name))
                .cloned()
                .collect(),
            Outcome::Complete | Outcome::SourceFailed(_) => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberStatus {
    /// No status report yet.
    Unknown,
    /// Its last report: this many frames missing.
    Missing(u32),
    Complete,
    /// It cannot take the session (its disk): not waited for, left to the unicast path.
    Declined,
}

#[derive(Debug, Clone, Copy)]
struct MemberState {
    status: MemberStatus,
    /// The pass its last status report was about.
    reported_pass: u16,
}

/// The frames of the current pass still to send.
#[derive(Debug)]
enum Pending {
    /// Pass 1: every source frame from `next`.
    All { next: u32 },
    /// A repair pass: for each block that needs repair (ascending), how many new parity frames; `position`
    /// is the block being sent, `sent` its parity frames sent so far, `shards` its parity frames once
    /// encoded.
    Parity {
        blocks: Vec<(u32, u32)>,
        position: usize,
        sent: u32,
        shards: Option<Vec<Vec<u8>>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Sending,
    Collecting,
}

struct Session {
    announcement: Announcement,
    members: BTreeMap<String, MemberState>,
    source: Box<dyn FrameSource>,
    phase: Phase,
    pending: Pending,
    /// Per block, the most frames a member said it needs since the last pass began (NACK aggregation:
    /// one parity frame repairs a different loss at each member, so the worst member's count is enough).
    needed: Vec<u32>,
    /// Per block, the next parity number to send (parity frames already sent are not sent again until
    /// every number was used).
    next_parity: Vec<u32>,
    encoder: BlockEncoder,
    rate: u64,
    tokens: f64,
    refilled_at: Instant,
    timers: BTreeMap<TimerKind, Instant>,
    frames_this_pass: u64,
    best_missing: u64,
    stalled: u32,
    /// The loss of the last pass (`None` before the first ended).
    last_loss: Option<f64>,
    frames_sent: u64,
    frames_repaired: u64,
    buffer: Vec<u8>,
    /// Members the GL has no address for ([`SenderInput::Unreachable`]).
    unreachable: BTreeSet<String>,
    /// Members that went offline during the session ([`SenderInput::Departed`]).
    departed: BTreeSet<String>,
}

/// What the pump sends next.
#[derive(Debug, Clone, Copy)]
enum Next {
    Source(u32),
    Parity { block: u32, index: u32 },
}

/// The group leader's MCTP sender core.
pub struct Sender {
    config: SenderConfig,
    stamper: Stamper,
    sessions: BTreeMap<u64, Session>,
    counters: Counters,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("sessions", &self.sessions.keys().collect::<Vec<_>>())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A core with no session; `seed` makes its incarnation id, `unix_ms` is the wall clock at `now`.
    pub fn new(config: SenderConfig, seed: u64, now: Instant, unix_ms: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let incarnation = SplitMix64(seed).next_u64();
        let stamper = Stamper::new(config.identity.clone(), config.limits, incarnation, now, unix_ms);
        Ok(Sender {
            config,
            stamper,
            sessions: BTreeMap::new(),
            counters: Counters::default(),
        })
    }

    /// What it counted.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The open sessions' ids.
    pub fn sessions(&self) -> Vec<u64> {
        self.sessions.keys().copied().collect()
    }

    /// The current rate of a session, bytes per second.
    pub fn rate(&self, assignment: u64) -> Option<u64> {
        self.sessions.get(&assignment).map(|session| session.rate)
    }

    /// Handles one input and says what to do.
    pub fn handle(&mut self, input: SenderInput<'_>, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            SenderInput::Start(start) => self.start(start, now, &mut out),
            SenderInput::Datagram(bytes) => self.on_datagram(bytes, now, &mut out),
            SenderInput::Timer(timer) => self.on_timer(timer, now, &mut out),
            SenderInput::Unreachable { assignment, members } => {
                if let Some(session) = self.sessions.get_mut(&assignment) {
                    session.unreachable.extend(members);
                }
            }
            SenderInput::Departed { members } => {
                for session in self.sessions.values_mut() {
                    session.departed.extend(members.iter().cloned());
                }
            }
        }
        out
    }

    fn start(&mut self, start: SessionStart, now: Instant, out: &mut Vec<Output>) {
        let frame_size = self.config.frame_size;
        let frames = u32::try_from(mctp::frames_for(start.size, frame_size)).unwrap_or(u32::MAX);
        let announcement = Announcement {
            assignment: start.assignment,
            size: start.size,
            name: start.name,
            rate: self.config.rate,
            frame_size,
            frames,
            hash: start.hash,
            pass: 1,
            block_frames: self.config.block_frames,
            parity_frames: self.config.parity_frames,
        };
        if let Err(error) = mctp::check_announcement(&announcement, &self.config.limits) {
            warn!(assignment = start.assignment, %error, "session not started");
            self.counters.refuse("bad-session");
            return;
        }
        if self.sessions.contains_key(&start.assignment) {
            self.counters.refuse("session-open");
            return;
        }
        let unknown = MemberState {
            status: MemberStatus::Unknown,
            reported_pass: 0,
        };
        let members = start.members.into_iter().map(|name| (name, unknown)).collect();
        let blocks = announcement.blocks() as usize;
        let session = Session {
            announcement,
            members,
            source: start.source,
            phase: Phase::Sending,
            pending: Pending::All { next: 0 },
            needed: vec![0; blocks],
            next_parity: vec![0; blocks],
            encoder: BlockEncoder::new(),
            rate: self.config.rate,
            tokens: 0.0,
            refilled_at: now,
            timers: BTreeMap::new(),
            frames_this_pass: 0,
            best_missing: u64::MAX,
            stalled: 0,
            last_loss: None,
            unreachable: BTreeSet::new(),
            departed: BTreeSet::new(),
            frames_sent: 0,
            frames_repaired: 0,
            buffer: vec![0; (frame_size as usize).next_multiple_of(2)],
        };
        self.counters.sessions += 1;
        self.counters.passes += 1;
        let assignment = session.announcement.assignment;
        self.sessions.insert(assignment, session);
        self.announce(assignment, now, out);
        self.pump(assignment, now, out);
    }

    fn announce(&mut self, assignment: u64, now: Instant, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get(&assignment) else {
            return;
        };
        let body = MctpBody::Announcement(session.announcement.clone());
        out.push(Output::Multicast(self.stamper.encode(body, now)));
    }

    /// Sends what the token bucket allows, then sets the next send timer or ends the pass.
    fn pump(&mut self, assignment: u64, now: Instant, out: &mut Vec<Output>) {
        let burst_bytes = f64::from(self.config.burst_frames) * f64::from(self.config.frame_size);
        let Some(session) = self.sessions.get_mut(&assignment) else {
            return;
        };
        let elapsed = now.saturating_duration_since(session.refilled_at).as_secs_f64();
        session.tokens = (session.tokens + elapsed * session.rate as f64).min(burst_bytes);
        session.refilled_at = now;
        loop {
            let Some(next) = session.peek_pending() else {
                self.end_pass(assignment, now, out);
                return;
            };
            let len = match next {
                Next::Source(sequence) => session.announcement.frame_len(sequence).unwrap_or(0),
                Next::Parity { .. } => session.announcement.parity_len(),
            };
            // Half a byte of slack for rounding; waits are whole microseconds, at least one, so that a
            // refill always makes progress.
            if session.tokens + 0.5 < len as f64 {
                let wait = (len as f64 - session.tokens) / session.rate as f64;
                let micros = (wait * 1e6).ceil().max(1.0) as u64;
                let at = now + Duration::from_micros(micros);
                session.timers.insert(TimerKind::Send, at);
                out.push(Output::SetTimer {
                    timer: Timer {
                        assignment,
                        kind: TimerKind::Send,
                    },
                    at,
                });
                return;
            }
            session.tokens = (session.tokens - len as f64).max(0.0);
            let made = match next {
                Next::Source(sequence) => session.read_frame(sequence).map(|()| FrameId::Source(sequence)),
                Next::Parity { block, index } => session.parity_frame(block, index).map(|()| FrameId::Parity {
                    block,
                    // Below MAX_PARITY_FRAMES (checked in the announcement).
                    index: index as u16,
                }),
            };
            let id = match made {
                Ok(id) => id,
                Err(error) => {
                    warn!(assignment, %error, "cannot read the assignment to send");
                    let outcome = Outcome::SourceFailed(error.to_string());
                    self.finish(assignment, outcome, out);
                    return;
                }
            };
            session.advance_pending();
            let frame = DataFrame {
                assignment,
                pass: session.announcement.pass,
                id,
                data: &session.buffer[..len],
            };
            out.push(Output::Multicast(mctp::encode_data(&frame)));
            session.frames_sent += 1;
            session.frames_this_pass += 1;
            self.counters.frames_sent += 1;
            if session.announcement.pass > 1 {
                session.frames_repaired += 1;
                self.counters.frames_repaired += 1;
            }
            if session.frames_this_pass % u64::from(self.config.reannounce_frames) == 0 {
                // Again, for a member that lost it (the frames it drops until then are repaired).
                let body = MctpBody::Announcement(session.announcement.clone());
                out.push(Output::Multicast(self.stamper.encode(body, now)));
            }
        }
    }

    /// The pass was sent: ask the members that are not complete for their status reports.
    fn end_pass(&mut self, assignment: u64, now: Instant, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get_mut(&assignment) else {
            return;
        };
        session.phase = Phase::Collecting;
        let (complete, incomplete) = session.split_members();
        // Reports spread over a time that grows with the members asked ("report implosion" on a large
        // segment), and no longer than needed on a small one: the pass's turnaround is this spread.
        let asked = u32::try_from(incomplete.len()).unwrap_or(u32::MAX);
        let spread = self
            .config
            .spread_per_member
            .saturating_mul(asked)
            .min(self.config.status_spread);
        let spread_ms = u32::try_from(spread.as_millis()).unwrap_or(u32::MAX).max(1);
        let request = ReportRequest {
            assignment,
            wanted: Wanted::Status {
                pass: session.announcement.pass,
                spread_ms,
            },
            addressees: addressees(&incomplete, &complete),
        };
        let window = (spread + self.config.report_margin).min(self.config.report_window);
        let at = now + window;
        session.timers.insert(TimerKind::ReportWindow, at);
        // The end of a pass is the one message whose loss stalls the pass (the window then runs out):
        // it goes more than once, as NORM repeats its flush; members answer the first copy they hear.
        debug!(
            assignment,
            pass = session.announcement.pass,
            frames = session.frames_this_pass,
            spread_ms,
            "pass sent, status reports asked"
        );
        let body = MctpBody::ReportRequest(request);
        for _ in 0..self.config.request_copies {
            out.push(Output::Multicast(self.stamper.encode(body.clone(), now)));
            self.counters.multicast_requests += 1;
        }
        out.push(Output::SetTimer {
            timer: Timer {
                assignment,
                kind: TimerKind::ReportWindow,
            },
            at,
        });
    }

    fn on_datagram(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<Output>) {
        let Some(message) = self.stamper.open(bytes, now, &mut self.counters) else {
            return;
        };
        let MctpBody::StatusReport(report) = message.body else {
            self.counters.refuse("unexpected");
            return;
        };
        self.on_status(&message.sender, report, now, out);
    }

    fn on_status(&mut self, sender: &str, report: StatusReport, now: Instant, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get_mut(&report.assignment) else {
            self.counters.refuse("unknown-session");
            return;
        };
        let Some(member) = session.members.get_mut(sender) else {
            self.counters.refuse("not-a-member");
            return;
        };
        self.counters.status_reports += 1;
        member.reported_pass = member.reported_pass.max(report.pass);
        match report.status {
            Status::Complete => member.status = MemberStatus::Complete,
            Status::Declined { reason } => {
                if !matches!(member.status, MemberStatus::Complete | MemberStatus::Declined) {
                    warn!(
                        assignment = %format_args!("{:016x}", report.assignment),
                        member = sender,
                        %reason,
                        "a member cannot take the session; it gets the assignment by unicast"
                    );
                    member.status = MemberStatus::Declined;
                }
            }
            Status::Missing { blocks, count } => {
                if member.status != MemberStatus::Complete {
                    member.status = MemberStatus::Missing(count.min(session.announcement.frames));
                }
                let block_frames = session.announcement.block_frames;
                for nack in blocks {
                    // Blocks past the end are ignored; a block needs at most its size in parity frames.
                    if let Some(needed) = session.needed.get_mut(nack.block as usize) {
                        *needed = (*needed).max(nack.missing.min(block_frames));
                    }
                }
                self.counters.nacks += u64::from(count);
            }
        }
        // The seed: "If the GL receives completion signals from all participants, then it knows that all
        // servers have already received the assignment" — even before the pass ends.
        if session
            .members
            .values()
            .all(|state| state.status == MemberStatus::Complete)
        {
            self.finish(report.assignment, Outcome::Complete, out);
            return;
        }
        // Everyone asked has answered: no need to wait for the rest of the window.
        let pass = session.announcement.pass;
        let all_answered = session.members.iter().all(|(name, state)| {
            state.status == MemberStatus::Complete || state.reported_pass >= pass || session.gone(name, state)
        });
        if session.phase == Phase::Collecting && all_answered {
            debug!(assignment = report.assignment, pass, "every member asked answered");
            session.timers.remove(&TimerKind::ReportWindow);
            self.end_window(report.assignment, now, out);
        }
    }

    fn on_timer(&mut self, timer: Timer, now: Instant, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get_mut(&timer.assignment) else {
            return;
        };
        let due = session.timers.get(&timer.kind).copied();
        if due.is_none_or(|at| now < at) {
            return;
        }
        session.timers.remove(&timer.kind);
        match timer.kind {
            TimerKind::Send => self.pump(timer.assignment, now, out),
            TimerKind::ReportWindow => {
                debug!(
                    assignment = timer.assignment,
                    "report window ended before every member answered"
                );
                self.end_window(timer.assignment, now, out)
            }
            _ => {}
        }
    }

    /// The report window ended: finish, give up, or adjust the rate and send the next pass.
    fn end_window(&mut self, assignment: u64, now: Instant, out: &mut Vec<Output>) {
        let stall_passes = self.config.stall_passes;
        let quorum_share = self.config.quorum;
        let Some(session) = self.sessions.get_mut(&assignment) else {
            return;
        };
        let frames = session.announcement.frames;
        let (complete, incomplete) = session.split_members();
        if incomplete.is_empty() {
            self.finish(assignment, Outcome::Complete, out);
            return;
        }
        // Only members that cannot be reached and never answered, or that declined, are left: no pass
        // can help them.
        let only_gone = incomplete
            .iter()
            .all(|name| session.members.get(name).is_some_and(|state| session.gone(name, state)));
        if only_gone {
            let outcome = quorum_outcome(quorum_share, session.members.len(), &complete, incomplete);
            self.finish(assignment, outcome, out);
            return;
        }
        let missing: u64 = session
            .members
            .values()
            .map(|state| match state.status {
                MemberStatus::Unknown => u64::from(frames),
                MemberStatus::Missing(count) => u64::from(count),
                MemberStatus::Complete | MemberStatus::Declined => 0,
            })
            .sum();
        if missing < session.best_missing {
            session.best_missing = missing;
            session.stalled = 0;
        } else {
            session.stalled += 1;
        }
        if session.stalled >= stall_passes || session.announcement.pass == u16::MAX {
            let outcome = quorum_outcome(quorum_share, session.members.len(), &complete, incomplete);
            self.finish(assignment, outcome, out);
            return;
        }
        session.adjust_rate(&self.config);
        let blocks: Vec<(u32, u32)> = session
            .needed
            .iter()
            .enumerate()
            .filter(|(_, needed)| **needed > 0)
            .map(|(block, needed)| (block as u32, *needed))
            .collect();
        session.needed.iter_mut().for_each(|needed| *needed = 0);
        session.pending = Pending::Parity {
            blocks,
            position: 0,
            sent: 0,
            shards: None,
        };
        session.phase = Phase::Sending;
        session.frames_this_pass = 0;
        session.announcement.pass += 1;
        session.announcement.rate = session.rate;
        debug!(
            assignment,
            pass = session.announcement.pass,
            rate = session.rate,
            missing,
            "next pass"
        );
        self.counters.passes += 1;
        self.announce(assignment, now, out);
        self.pump(assignment, now, out);
    }

    fn finish(&mut self, assignment: u64, outcome: Outcome, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.remove(&assignment) else {
            return;
        };
        if let Outcome::GaveUp { incomplete } = &outcome {
            warn!(assignment, incomplete = incomplete.len(), "local distribution gave up");
        }
        let silent = session
            .members
            .iter()
            .filter(|(_, state)| state.status == MemberStatus::Unknown)
            .map(|(name, _)| name.clone())
            .collect();
        out.push(Output::Event(Event::SessionEnded(SessionReport {
            assignment,
            outcome,
            passes: session.announcement.pass,
            frames_sent: session.frames_sent,
            frames_repaired: session.frames_repaired,
            final_rate: session.rate,
            silent,
        })));
    }
}

/// A session that stops short of every member: a quorum if at least `quorum_share` of the `members`
/// are complete (and at least one), else the problem the GL reports.
fn quorum_outcome(quorum_share: f64, members: usize, complete: &[String], incomplete: Vec<String>) -> Outcome {
    let needed = (quorum_share * members as f64).ceil() as usize;
    if complete.len() >= needed.max(1) {
        Outcome::Quorum { incomplete }
    } else {
        Outcome::GaveUp { incomplete }
    }
}

impl Session {
    /// A member that cannot be reached and has said nothing, that went offline before completing, or that
    /// declined the session: not waited for once a pass ended (the callers ask only then: the end of a
    /// report window, or a status report while collecting).
    fn gone(&self, name: &str, state: &MemberState) -> bool {
        state.status == MemberStatus::Declined
            || (state.status == MemberStatus::Unknown && self.unreachable.contains(name))
            || (state.status != MemberStatus::Complete && self.departed.contains(name))
    }

    fn peek_pending(&self) -> Option<Next> {
        match &self.pending {
            Pending::All { next } => (*next < self.announcement.frames).then_some(Next::Source(*next)),
            Pending::Parity {
                blocks, position, sent, ..
            } => {
                let (block, _) = blocks.get(*position)?;
                let first = self.next_parity.get(*block as usize).copied().unwrap_or(0);
                // Parity numbers wrap around once every one was sent: a member that lost one can use it.
                let index = (first + sent) % self.announcement.parity_frames.max(1);
                Some(Next::Parity { block: *block, index })
            }
        }
    }

    fn advance_pending(&mut self) {
        let parity_frames = self.announcement.parity_frames.max(1);
        match &mut self.pending {
            Pending::All { next } => *next += 1,
            Pending::Parity {
                blocks,
                position,
                sent,
                shards,
            } => {
                let Some((block, count)) = blocks.get(*position).copied() else {
                    return;
                };
                *sent += 1;
                if *sent < count {
                    return;
                }
                if let Some(next) = self.next_parity.get_mut(block as usize) {
                    *next = (*next + count) % parity_frames;
                }
                *position += 1;
                *sent = 0;
                *shards = None;
            }
        }
    }

    /// Reads source frame `sequence` into the buffer.
    fn read_frame(&mut self, sequence: u32) -> io::Result<()> {
        let len = self.announcement.frame_len(sequence).unwrap_or(0);
        let offset = self.announcement.frame_offset(sequence);
        self.source.read_at(offset, &mut self.buffer[..len])
    }

    /// Puts parity frame `index` of `block` into the buffer, encoding the block when it is the first of
    /// its parity frames this pass.
    fn parity_frame(&mut self, block: u32, index: u32) -> io::Result<()> {
        if let Pending::Parity {
            shards: Some(shards), ..
        } = &self.pending
            && let Some(shard) = shards.get(index as usize)
        {
            self.buffer[..shard.len()].copy_from_slice(shard);
            return Ok(());
        }
        // The block's frames are contiguous in the assignment: one read for all of them.
        let (first, count) = self.announcement.block_span(block);
        let lens: Vec<usize> = (first..first + count)
            .map(|sequence| self.announcement.frame_len(sequence).unwrap_or(0))
            .collect();
        let mut bytes = vec![0; lens.iter().sum()];
        self.source.read_at(self.announcement.frame_offset(first), &mut bytes)?;
        let mut sources: Vec<&[u8]> = Vec::with_capacity(lens.len());
        let mut rest = bytes.as_slice();
        for len in lens {
            let (frame, after) = rest.split_at(len);
            sources.push(frame);
            rest = after;
        }
        let parity_len = self.announcement.parity_len();
        // Only the numbers this pass sends of the block (parity frame `n` does not depend on how many
        // are made): up to the last, or all of them when the numbers wrap around.
        let parity_frames = self.announcement.parity_frames;
        let first = self.next_parity.get(block as usize).copied().unwrap_or(0);
        let count = match &self.pending {
            Pending::Parity { blocks, position, .. } => blocks.get(*position).map_or(1, |(_, count)| *count),
            Pending::All { .. } => 1,
        };
        let made = first.saturating_add(count).min(parity_frames).max(index + 1);
        let encoded = self
            .encoder
            .encode(&sources, made as usize, parity_len)
            .map_err(io::Error::other)?;
        let shard = encoded
            .get(index as usize)
            .ok_or_else(|| io::Error::other("parity number past the block's"))?;
        self.buffer[..shard.len()].copy_from_slice(shard);
        if let Pending::Parity { shards, .. } = &mut self.pending {
            *shards = Some(encoded);
        }
        Ok(())
    }

    /// The members that reported complete, and the others.
    fn split_members(&self) -> (Vec<String>, Vec<String>) {
        let (complete, incomplete): (Vec<_>, Vec<_>) = self
            .members
            .iter()
            .partition(|(_, state)| state.status == MemberStatus::Complete);
        let names = |list: Vec<(&String, &MemberState)>| list.into_iter().map(|(name, _)| name.clone()).collect();
        (names(complete), names(incomplete))
    }

    /// Adjusts the rate by the NACKs of the pass that ended: the parity frames the next pass needs, as a
    /// share of the frames sent, against the last pass's share.
    fn adjust_rate(&mut self, config: &SenderConfig) {
        if self.frames_this_pass == 0 {
            return;
        }
        let needed: u64 = self.needed.iter().map(|needed| u64::from(*needed)).sum();
        let loss = needed as f64 / self.frames_this_pass as f64;
        let last_loss = self.last_loss.replace(loss);
        // The first pass's loss is the segment's own (a lossy link loses as much at any rate): the rate
        // falls when the loss rises above the last pass's, and rises back while it does not.
        let Some(last_loss) = last_loss else {
            return;
        };
        if loss > last_loss {
            let lowered = (self.rate as f64 * config.rate_decrease) as u64;
            self.rate = lowered.max(config.floor_rate);
        } else {
            self.rate = self.rate.saturating_add(config.rate_increase).min(config.rate);
        }
    }
}
