//! The group leader's side of a session: announce, send passes at a rate, aggregate NACKs, repair, and
//! end with all members, a quorum, or the problem (see the module header of [`super`]).

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

use tern_wire::mctp::{self, Announcement, DataFrame, MctpBody, ReportRequest, Status, StatusReport, Wanted};
use tracing::{debug, warn};

use super::bitmap::Bitmap;
use super::collect::addressees;
use super::config::{ConfigError, SenderConfig};
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
    /// Frames resent after pass 1.
    pub frames_repaired: u64,
    /// The rate at the end, bytes per second.
    pub final_rate: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberStatus {
    /// No status report yet.
    Unknown,
    /// Its last report: this many frames missing.
    Missing(u32),
    Complete,
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
    /// Pass 1: every frame from `next`.
    All { next: u32 },
    /// A repair pass: the set frames from `next`.
    Frames { frames: Bitmap, next: u32 },
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
    /// NACKed frames aggregated for the next pass.
    nacked: Bitmap,
    rate: u64,
    tokens: f64,
    refilled_at: Instant,
    timers: BTreeMap<TimerKind, Instant>,
    frames_this_pass: u64,
    best_missing: u64,
    stalled: u32,
    last_loss: f64,
    frames_sent: u64,
    frames_repaired: u64,
    buffer: Vec<u8>,
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
        let session = Session {
            announcement,
            members,
            source: start.source,
            phase: Phase::Sending,
            pending: Pending::All { next: 0 },
            nacked: Bitmap::new(frames),
            rate: self.config.rate,
            tokens: 0.0,
            refilled_at: now,
            timers: BTreeMap::new(),
            frames_this_pass: 0,
            best_missing: u64::MAX,
            stalled: 0,
            last_loss: 0.0,
            frames_sent: 0,
            frames_repaired: 0,
            buffer: vec![0; frame_size as usize],
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
            let Some(sequence) = session.peek_pending() else {
                self.end_pass(assignment, now, out);
                return;
            };
            let len = session.announcement.frame_len(sequence).unwrap_or(0);
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
            session.advance_pending();
            let offset = session.announcement.frame_offset(sequence);
            let data = &mut session.buffer[..len];
            if let Err(error) = session.source.read_at(offset, data) {
                warn!(assignment, %error, "cannot read the assignment to send");
                let outcome = Outcome::SourceFailed(error.to_string());
                self.finish(assignment, outcome, out);
                return;
            }
            let frame = DataFrame {
                assignment,
                pass: session.announcement.pass,
                sequence,
                data,
            };
            out.push(Output::Multicast(mctp::encode_data(&frame)));
            session.frames_sent += 1;
            session.frames_this_pass += 1;
            self.counters.frames_sent += 1;
            if session.announcement.pass > 1 {
                session.frames_repaired += 1;
                self.counters.frames_repaired += 1;
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
        let request = ReportRequest {
            assignment,
            wanted: Wanted::Status {
                pass: session.announcement.pass,
            },
            addressees: addressees(&incomplete, &complete),
        };
        let at = now + self.config.report_window;
        session.timers.insert(TimerKind::ReportWindow, at);
        out.push(Output::Multicast(
            self.stamper.encode(MctpBody::ReportRequest(request), now),
        ));
        self.counters.multicast_requests += 1;
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
            Status::Missing { ranges, count } => {
                if member.status != MemberStatus::Complete {
                    member.status = MemberStatus::Missing(count.min(session.announcement.frames));
                }
                for range in ranges {
                    session.nacked.insert_range(range);
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
        let all_answered = session
            .members
            .values()
            .all(|state| state.status == MemberStatus::Complete || state.reported_pass >= pass);
        if session.phase == Phase::Collecting && all_answered {
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
            TimerKind::ReportWindow => self.end_window(timer.assignment, now, out),
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
        let missing: u64 = session
            .members
            .values()
            .map(|state| match state.status {
                MemberStatus::Unknown => u64::from(frames),
                MemberStatus::Missing(count) => u64::from(count),
                MemberStatus::Complete => 0,
            })
            .sum();
        if missing < session.best_missing {
            session.best_missing = missing;
            session.stalled = 0;
        } else {
            session.stalled += 1;
        }
        if session.stalled >= stall_passes || session.announcement.pass == u16::MAX {
            let needed = (quorum_share * session.members.len() as f64).ceil() as usize;
            let outcome = if complete.len() >= needed.max(1) {
                Outcome::Quorum { incomplete }
            } else {
                Outcome::GaveUp { incomplete }
            };
            self.finish(assignment, outcome, out);
            return;
        }
        session.adjust_rate(&self.config);
        let resend = std::mem::replace(&mut session.nacked, Bitmap::new(frames));
        session.pending = Pending::Frames {
            frames: resend,
            next: 0,
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
        out.push(Output::Event(Event::SessionEnded(SessionReport {
            assignment,
            outcome,
            passes: session.announcement.pass,
            frames_sent: session.frames_sent,
            frames_repaired: session.frames_repaired,
            final_rate: session.rate,
        })));
    }
}

impl Session {
    fn peek_pending(&self) -> Option<u32> {
        match &self.pending {
            Pending::All { next } => (*next < self.announcement.frames).then_some(*next),
            Pending::Frames { frames, next } => frames.next_set(*next),
        }
    }

    fn advance_pending(&mut self) {
        let current = self.peek_pending();
        match &mut self.pending {
            Pending::All { next } => *next += 1,
            Pending::Frames { next, .. } => *next = current.map_or(u32::MAX, |sequence| sequence + 1),
        }
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

    /// Adjusts the rate by the NACKs of the pass that ended: the share of the frames sent that some
    /// member lacks.
    fn adjust_rate(&mut self, config: &SenderConfig) {
        if self.frames_this_pass == 0 {
            return;
        }
        let loss = f64::from(self.nacked.count()) / self.frames_this_pass as f64;
        if loss > self.last_loss {
            let lowered = (self.rate as f64 * config.rate_decrease) as u64;
            self.rate = lowered.max(config.floor_rate);
        } else {
            self.rate = self.rate.saturating_add(config.rate_increase).min(config.rate);
        }
        self.last_loss = loss;
    }
}
