//! The group leader's report collection (seed 004: "The Group Leader sends a unicast request to any
//! participating group member who did not report or whose response was lost. If the number of missing
//! reports exceeds a configurable number such as half the number of group members, then the GL sends a
//! multicast request on the LAN, including a list of group members. If there are fewer servers that have
//! not reported than have reported, the GL sends the list of those whose reports are missing. Otherwise,
//! it sends the list of those whose reports were received. … The GL retransmits its request and
//! corresponding list until each participant has reported or a configurable maximum number of
//! transmission has been reached."), ending with the *assignment status report*.

use std::collections::BTreeMap;
use std::time::Instant;

use tern_wire::mctp::{Addressees, ApplyReport, MctpBody, ReportRequest, Wanted};

use super::config::{CollectConfig, ConfigError};
use super::stamp::Stamper;
use super::{Counters, Event, Output, Timer, TimerKind};
use crate::election::rng::SplitMix64;

/// The list a multicast report request carries: those whose reports are missing when they are fewer
/// than those whose reports were received, otherwise those whose reports were received.
pub fn addressees(missing: &[String], received: &[String]) -> Addressees {
    if received.is_empty() {
        return Addressees::All;
    }
    if missing.len() < received.len() {
        Addressees::Missing(missing.to_vec())
    } else {
        Addressees::Received(received.to_vec())
    }
}

/// What the collection core is told.
#[derive(Debug, Clone)]
pub enum CollectInput<'a> {
    /// Expect apply reports for this assignment from these members (at the session's start, so that
    /// early reports count).
    Start {
        /// The Content Assignment ID.
        assignment: u64,
        /// The members (node names).
        members: Vec<String>,
    },
    /// The distribution ended: the first look for missing reports comes [`CollectConfig::first_wait`]
    /// later.
    SessionEnded {
        /// The Content Assignment ID.
        assignment: u64,
    },
    /// These members did not complete the session and are caught up another way (the unicast path):
    /// their reports are no longer waited for, and they are left out of the status report.
    Excuse {
        /// The Content Assignment ID.
        assignment: u64,
        /// The members excused.
        members: Vec<String>,
    },
    /// A datagram received on the GL's unicast address (apply reports), as received.
    Datagram(&'a [u8]),
    /// A timer the core set is due.
    Timer(Timer),
}

/// The GL's assignment status report: who completed, who did not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssignmentStatusReport {
    /// The Content Assignment ID.
    pub assignment: u64,
    /// Members that reported successful completion.
    pub applied: Vec<String>,
    /// Members that reported a failure, with their detail.
    pub failed: Vec<(String, String)>,
    /// Members whose report never came.
    pub missing: Vec<String>,
    /// Report requests sent (unicast rounds and multicast requests alike).
    pub requests: u32,
}

struct Collection {
    reports: BTreeMap<String, Option<ApplyReport>>,
    requests: u32,
    due: Option<Instant>,
}

/// The GL's report collection core.
pub struct Collector {
    config: CollectConfig,
    stamper: Stamper,
    collections: BTreeMap<u64, Collection>,
    counters: Counters,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("collections", &self.collections.keys().collect::<Vec<_>>())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// A core with no collection; `seed` makes its incarnation id, `unix_ms` is the wall clock at `now`.
    pub fn new(config: CollectConfig, seed: u64, now: Instant, unix_ms: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let incarnation = SplitMix64(seed).next_u64();
        let stamper = Stamper::new(config.identity.clone(), config.limits, incarnation, now, unix_ms);
        Ok(Collector {
            config,
            stamper,
            collections: BTreeMap::new(),
            counters: Counters::default(),
        })
    }

    /// What it counted.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Handles one input and says what to do.
    pub fn handle(&mut self, input: CollectInput<'_>, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            CollectInput::Start { assignment, members } => {
                let reports = members.into_iter().map(|name| (name, None)).collect();
                self.collections.insert(
                    assignment,
                    Collection {
                        reports,
                        requests: 0,
                        due: None,
                    },
                );
            }
            CollectInput::SessionEnded { assignment } => {
                if let Some(collection) = self.collections.get_mut(&assignment) {
                    let at = now + self.config.first_wait;
                    collection.due = Some(at);
                    out.push(collect_timer(assignment, at));
                }
            }
            CollectInput::Excuse { assignment, members } => {
                if let Some(collection) = self.collections.get_mut(&assignment) {
                    for member in &members {
                        collection.reports.remove(member);
                    }
                    if collection.reports.values().all(Option::is_some) {
                        self.finish(assignment, &mut out);
                    }
                }
            }
            CollectInput::Datagram(bytes) => self.on_datagram(bytes, &mut out, now),
            CollectInput::Timer(timer) => self.on_timer(timer, now, &mut out),
        }
        out
    }

    fn on_datagram(&mut self, bytes: &[u8], out: &mut Vec<Output>, now: Instant) {
        let Some(message) = self.stamper.open(bytes, now, &mut self.counters) else {
            return;
        };
        let MctpBody::ApplyReport(report) = message.body else {
            self.counters.refuse("unexpected");
            return;
        };
        let assignment = report.assignment;
        let Some(collection) = self.collections.get_mut(&assignment) else {
            self.counters.refuse("unknown-session");
            return;
        };
        let Some(slot) = collection.reports.get_mut(&message.sender) else {
            self.counters.refuse("not-a-member");
            return;
        };
        *slot = Some(report);
        if collection.reports.values().all(Option::is_some) {
            self.finish(assignment, out);
        }
    }

    fn on_timer(&mut self, timer: Timer, now: Instant, out: &mut Vec<Output>) {
        let assignment = timer.assignment;
        let Some(collection) = self.collections.get_mut(&assignment) else {
            return;
        };
        if timer.kind != TimerKind::Collect || collection.due.is_none_or(|at| now < at) {
            return;
        }
        collection.due = None;
        if collection.requests >= self.config.max_requests {
            self.finish(assignment, out);
            return;
        }
        let (received, missing): (Vec<_>, Vec<_>) = collection.reports.iter().partition(|(_, report)| report.is_some());
        let received: Vec<String> = received.into_iter().map(|(name, _)| name.clone()).collect();
        let missing: Vec<String> = missing.into_iter().map(|(name, _)| name.clone()).collect();
        if missing.is_empty() {
            self.finish(assignment, out);
            return;
        }
        collection.requests += 1;
        let members = collection.reports.len();
        if missing.len() as f64 > self.config.multicast_share * members as f64 {
            let request = ReportRequest {
                assignment,
                wanted: Wanted::Apply,
                addressees: addressees(&missing, &received),
            };
            out.push(Output::Multicast(
                self.stamper.encode(MctpBody::ReportRequest(request), now),
            ));
            self.counters.multicast_requests += 1;
        } else {
            for member in missing {
                let request = ReportRequest {
                    assignment,
                    wanted: Wanted::Apply,
                    addressees: Addressees::Missing(vec![member.clone()]),
                };
                let datagram = self.stamper.encode(MctpBody::ReportRequest(request), now);
                out.push(Output::ToMember { member, datagram });
                self.counters.unicast_requests += 1;
            }
        }
        let at = now + self.config.request_wait;
        if let Some(collection) = self.collections.get_mut(&assignment) {
            collection.due = Some(at);
        }
        out.push(collect_timer(assignment, at));
    }

    fn finish(&mut self, assignment: u64, out: &mut Vec<Output>) {
        let Some(collection) = self.collections.remove(&assignment) else {
            return;
        };
        let mut report = AssignmentStatusReport {
            assignment,
            requests: collection.requests,
            ..AssignmentStatusReport::default()
        };
        for (name, apply) in collection.reports {
            match apply {
                Some(apply) if apply.applied => report.applied.push(name),
                Some(apply) => report.failed.push((name, apply.detail)),
                None => report.missing.push(name),
            }
        }
        out.push(Output::Event(Event::CollectionEnded(report)));
    }
}

fn collect_timer(assignment: u64, at: Instant) -> Output {
    Output::SetTimer {
        timer: Timer {
            assignment,
            kind: TimerKind::Collect,
        },
        at,
    }
}
