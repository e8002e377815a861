//! A member's side of local distribution: follow the sessions announced, take frames into a sink, answer
//! the GL's status requests with NACK lists, and send the apply report at a random multiple of an
//! interval (see the module header of [`super`]).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tern_wire::mctp::{self, Announcement, ApplyReport, MctpBody, ReportRequest, Status, StatusReport, Wanted};
use tracing::{debug, warn};

use super::bitmap::Bitmap;
use super::config::{ConfigError, ReceiverConfig};
use super::stamp::Stamper;
use super::{Counters, Event, Output, Timer, TimerKind};
use crate::election::rng::SplitMix64;

/// Where a session's frames are written: a spool file, so memory stays bounded for any size.
pub trait Sink: Send {
    /// Writes `data` at `offset` of the assignment.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Every frame was written (flush; the driver verifies the signed hash next).
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The member's spool: what it holds and where a new session goes.
pub trait Spool: Send {
    /// Whether it already holds the assignment with this signed hash (hex).
    fn holds(&self, hash: &str) -> bool;
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

enum Reception {
    Receiving { received: Bitmap, sink: Box<dyn Sink> },
    Complete,
}

struct MemberSession {
    announcement: Announcement,
    leader: SocketAddr,
    reception: Reception,
    /// The highest pass heard of (announced, or asked about).
    pass: u16,
    timers: BTreeMap<TimerKind, Instant>,
    applied: Option<ApplyReport>,
}

/// A member's MCTP receiver core.
pub struct Receiver {
    config: ReceiverConfig,
    stamper: Stamper,
    rng: SplitMix64,
    spool: Box<dyn Spool>,
    sessions: BTreeMap<u64, MemberSession>,
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
            counters: Counters::default(),
        })
    }

    /// What it counted.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Frames still missing in a session it follows (`None`: not followed; 0: complete).
    pub fn missing(&self, assignment: u64) -> Option<u32> {
        self.sessions.get(&assignment).map(|session| match &session.reception {
            Reception::Receiving { received, .. } => received.len() - received.count(),
            Reception::Complete => 0,
        })
    }

    /// The sessions it follows.
    pub fn sessions(&self) -> Vec<u64> {
        self.sessions.keys().copied().collect()
    }

    /// Stops following a session (after its assignment was applied and reported, or abandoned).
    pub fn forget(&mut self, assignment: u64) {
        self.sessions.remove(&assignment);
    }

    /// Handles one input and says what to do.
    pub fn handle(&mut self, input: ReceiverInput<'_>, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            ReceiverInput::Datagram(bytes) if mctp::is_data_frame(bytes) => self.on_frame(bytes, &mut out),
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
            return;
        }
        if self.sessions.len() >= self.config.max_sessions {
            self.counters.refuse("too-many-sessions");
            return;
        }
        let reception = if self.spool.holds(&announcement.hash) {
            Reception::Complete
        } else {
            match self.spool.create(&announcement) {
                Ok(sink) => Reception::Receiving {
                    received: Bitmap::new(announcement.frames),
                    sink,
                },
                Err(error) => {
                    warn!(assignment, %error, "cannot spool an announced assignment");
                    self.counters.refuse("spool-error");
                    return;
                }
            }
        };
        let already_held = matches!(reception, Reception::Complete);
        let pass = announcement.pass;
        self.sessions.insert(
            assignment,
            MemberSession {
                announcement,
                leader,
                reception,
                pass,
                timers: BTreeMap::new(),
                applied: None,
            },
        );
        if already_held {
            // The seed's "completion signal", at once.
            self.send_status(assignment, now, out);
            out.push(Output::Event(Event::AlreadyHeld { assignment }));
        }
    }

    fn on_frame(&mut self, bytes: &[u8], out: &mut Vec<Output>) {
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
        let Some(expected_len) = session.announcement.frame_len(frame.sequence) else {
            self.counters.refuse("sequence-outside");
            return;
        };
        if frame.data.len() != expected_len {
            self.counters.refuse("past-size");
            return;
        }
        let Reception::Receiving { received, sink } = &mut session.reception else {
            self.counters.duplicates += 1;
            return;
        };
        if received.get(frame.sequence) {
            self.counters.duplicates += 1;
            return;
        }
        let offset = session.announcement.frame_offset(frame.sequence);
        if let Err(error) = sink.write_at(offset, frame.data) {
            warn!(assignment = frame.assignment, %error, "cannot spool a frame");
            self.counters.refuse("sink-error");
            return;
        }
        received.insert(frame.sequence);
        self.counters.frames_received += 1;
        if !received.is_full() {
            return;
        }
        if let Err(error) = sink.finish() {
            warn!(assignment = frame.assignment, %error, "cannot finish the spooled assignment");
            self.counters.refuse("sink-error");
            return;
        }
        session.reception = Reception::Complete;
        debug!(assignment = frame.assignment, "every frame received");
        out.push(Output::Event(Event::Received {
            assignment: frame.assignment,
            name: session.announcement.name.clone(),
            hash: session.announcement.hash.clone(),
        }));
    }

    fn on_request(&mut self, request: ReportRequest, leader: SocketAddr, now: Instant, out: &mut Vec<Output>) {
        if !request.addressees.includes(&self.config.identity.name) {
            return;
        }
        let Some(session) = self.sessions.get_mut(&request.assignment) else {
            // Not announced to this member yet: the next pass's announcement brings it in.
            self.counters.refuse("unannounced");
            return;
        };
        session.leader = leader;
        let (kind, delay_bound) = match request.wanted {
            Wanted::Status { pass } => {
                session.pass = session.pass.max(pass);
                (TimerKind::StatusReport, self.config.report_delay)
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

    fn send_status(&mut self, assignment: u64, now: Instant, out: &mut Vec<Output>) {
        let Some(session) = self.sessions.get(&assignment) else {
            return;
        };
        let status = match &session.reception {
            Reception::Complete => Status::Complete,
            Reception::Receiving { received, .. } => Status::Missing {
                ranges: received.clear_ranges(self.config.limits.max_ranges),
                count: received.len() - received.count(),
            },
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
