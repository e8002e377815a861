//! The registration core event by event with a fake clock: a member's first registration, retry (claim
//! 41) and keep-alive; the leader's report delay (claim 40), repeated reports until no new registration
//! arrives (claim 38), its reports to the mover (take-over, segment, network segment), a member going
//! offline, refusals, the mover not taking a report, and the override.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tern_wire::SecretKey;
use tern_wire::segment::{
    self, Profile, Registered, RegistrationReport, ReportAnswer, ReportKind, SegmentBody, SegmentMessage, SegmentReport,
};

use super::*;

const UNIX_MS: u64 = 1_700_000_000_000;

fn key() -> SecretKey {
    SecretKey::parse(&"a7".repeat(32)).expect("key")
}

fn address(index: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, index], 40_000))
}

fn core(name: &str, index: u8, seed: u64, epoch: Instant) -> Registration {
    let mut config = RegistrationConfig::new("rack-1", name, address(index), key());
    config.location = "Europe/London".into();
    let mut core = Registration::new(config, seed, epoch, UNIX_MS).expect("config");
    let profile = Profile {
        url: format!("http://10.0.0.{index}:7100"),
        free_disk: 1 << 30,
        cpus: 4,
        groups: vec!["web".into()],
        versions: [("www".to_string(), 3)].into(),
        prepared: Default::default(),
        data_channel: None,
        instance: String::new(),
        encryption_key_id: None,
    };
    core.handle(Input::Profile(profile), epoch);
    core
}

fn leader(name: &str, index: u8, term: u64) -> Leader {
    Leader {
        name: name.into(),
        address: address(index),
        term,
    }
}

fn timer(outputs: &[Output], kind: TimerKind) -> Option<Instant> {
    outputs.iter().rev().find_map(|output| match output {
        Output::SetTimer { timer, at } if *timer == kind => Some(*at),
        _ => None,
    })
}

fn unicasts(outputs: &[Output]) -> Vec<(SocketAddr, SegmentMessage, Vec<u8>)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Unicast { to, message, datagram } => Some((*to, message.clone(), datagram.clone())),
            _ => None,
        })
        .collect()
}

fn multicasts(outputs: &[Output]) -> Vec<(SegmentMessage, Vec<u8>)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Multicast { message, datagram } => Some((message.clone(), datagram.clone())),
            _ => None,
        })
        .collect()
}

fn reports(outputs: &[Output]) -> Vec<(u64, SegmentReport)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Report { message, .. } => match &message.body {
                SegmentBody::SegmentReport(report) => Some((message.seq, report.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn listed_names(message: &SegmentMessage) -> Vec<String> {
    match &message.body {
        SegmentBody::RegistrationReport(report) => report.members.iter().map(|m| m.name.clone()).collect(),
        other => panic!("not a registration report: {other:?}"),
    }
}

/// Fires `kind` on `core` at its due time; returns the time and the outputs.
fn fire(core: &mut Registration, kind: TimerKind) -> (Instant, Vec<Output>) {
    let at = core.timer(kind).unwrap_or_else(|| panic!("{kind:?} is armed"));
    (at, core.handle(Input::Timer(kind), at))
}

/// A member that has been told of `gl` and has sent its first registration; returns the datagram.
fn first_registration(member: &mut Registration, gl: &Leader, now: Instant) -> (Instant, Vec<u8>) {
    let outputs = member.handle(Input::Leader(Some(gl.clone())), now);
    let due = timer(&outputs, TimerKind::Register).expect("registration armed");
    assert!(
        due <= now + Duration::from_secs(1),
        "first registration within the jitter"
    );
    let (at, outputs) = fire(member, TimerKind::Register);
    let sent = unicasts(&outputs);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, gl.address, "registration goes to the leader's address");
    (at, sent[0].2.clone())
}

#[test]
fn a_member_registers_with_a_new_leader_and_again_until_it_is_listed() {
    let epoch = Instant::now();
    let gl = leader("gl", 1, 3);
    let mut member = core("m2", 2, 7, epoch);
    assert_eq!(member.role(), Role::Idle);
    let (at, datagram) = first_registration(&mut member, &gl, epoch);
    assert_eq!(member.role(), Role::Member);
    let message = segment::decode(&key(), &datagram, &Default::default())
        .expect("tagged")
        .into_message();
    assert_eq!((message.sender.as_str(), message.term), ("m2", 3));
    let SegmentBody::Registration(registration) = message.body else {
        panic!("a registration")
    };
    assert!(!registration.listed, "asks to be listed");
    assert_eq!(registration.profile.versions.get("www"), Some(&3));

    // No report confirms it: it registers again after the confirm timeout plus up to 1 s.
    let timers = RegistrationTimers::default();
    let retry = member.timer(TimerKind::Register).expect("retry armed");
    assert!(retry >= at + timers.confirm_timeout && retry < at + timers.confirm_timeout + timers.retry_jitter);

    // A report from the leader without it: again after 200 ms plus up to 1 s (claim 41).
    let mut gl_core = core("gl", 1, 1, epoch);
    gl_core.handle(Input::Leader(Some(gl.clone())), epoch);
    let (_, outputs) = fire(&mut gl_core, TimerKind::Report);
    let (_, report) = multicasts(&outputs).pop().expect("report multicast");
    let heard = at + Duration::from_millis(100);
    let outputs = member.handle(Input::Datagram(&report), heard);
    let again = timer(&outputs, TimerKind::Register).expect("re-registration armed");
    assert!(again >= heard + timers.retry_fixed && again < heard + timers.retry_fixed + timers.retry_jitter);
    assert_eq!(member.counters().missing_from_report, 1);
    assert!(!member.listed());

    // The leader takes the registration; its next report lists the member, which then only keeps alive.
    gl_core.handle(Input::Datagram(&datagram), heard);
    let (_, outputs) = fire(&mut gl_core, TimerKind::Report);
    let (message, report) = multicasts(&outputs).pop().expect("report multicast");
    assert_eq!(listed_names(&message), ["gl", "m2"]);
    let outputs = member.handle(Input::Datagram(&report), heard + Duration::from_secs(4));
    assert!(member.listed());
    let keepalive = timer(&outputs, TimerKind::Register).expect("keep-alive armed");
    let listed_at = heard + Duration::from_secs(4);
    assert!(
        keepalive >= listed_at + timers.keepalive && keepalive < listed_at + timers.keepalive + timers.retry_jitter
    );
    let (_, outputs) = fire(&mut member, TimerKind::Register);
    let (_, message, _) = unicasts(&outputs).pop().expect("keep-alive sent");
    assert!(matches!(
        message.body,
        SegmentBody::Registration(segment::Registration { listed: true, .. })
    ));
}

#[test]
fn the_leader_reports_after_the_last_registration_and_repeats_until_none_is_new() {
    let epoch = Instant::now();
    let gl = leader("gl", 1, 1);
    let mut gl_core = core("gl", 1, 1, epoch);
    let outputs = gl_core.handle(Input::Leader(Some(gl.clone())), epoch);
    assert_eq!(gl_core.role(), Role::Leader);
    // Taking over: the mover hears at once, before the round is complete.
    let taken_over = reports(&outputs);
    assert_eq!(taken_over.len(), 1);
    assert_eq!(taken_over[0].1.kind, ReportKind::TakeOver);
    assert_eq!(taken_over[0].1.location, "Europe/London");

    let mut members: Vec<Registration> = (2..=4)
        .map(|i| core(&format!("m{i}"), i, u64::from(i), epoch))
        .collect();
    let mut registrations = Vec::new();
    for member in &mut members {
        registrations.push(first_registration(member, &gl, epoch));
    }
    registrations.sort_by_key(|(at, _)| *at);
    let mut last = epoch;
    for (at, datagram) in &registrations {
        let outputs = gl_core.handle(Input::Datagram(datagram), *at);
        // Claim 40: the report is due 3 to 5 s after the most recent registration.
        let due = timer(&outputs, TimerKind::Report).expect("report re-armed");
        assert!(due >= *at + Duration::from_secs(3) && due <= *at + Duration::from_secs(5));
        last = *at;
    }
    assert_eq!(gl_core.counters().registrations_heard, 3);
    let (at, outputs) = fire(&mut gl_core, TimerKind::Report);
    assert!(at >= last + Duration::from_secs(3));
    let (message, report) = multicasts(&outputs).pop().expect("report multicast");
    assert_eq!(listed_names(&message), ["gl", "m2", "m3", "m4"]);
    assert!(
        reports(&outputs).is_empty(),
        "not converged yet: the report may have been missed"
    );
    for member in &mut members {
        member.handle(Input::Datagram(&report), at);
        assert!(member.listed());
    }
    // No new registration during the delay: the round has converged, and the mover gets the segment report.
    let (_, outputs) = fire(&mut gl_core, TimerKind::Report);
    assert!(multicasts(&outputs).is_empty(), "nothing new to report on the segment");
    let segment_report = reports(&outputs);
    assert_eq!(segment_report.len(), 1);
    let (_, report) = &segment_report[0];
    assert_eq!(report.kind, ReportKind::Segment);
    let names: Vec<&str> = report.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["gl", "m2", "m3", "m4"]);
    assert_eq!(report.members[1].address, address(2));
    assert_eq!(report.members[1].profile.url, "http://10.0.0.2:7100");
    assert!(gl_core.timer(TimerKind::Report).is_none(), "the round is over");
    assert_eq!(gl_core.reported().map(|set| set.len()), Some(4));
}

/// A leader with `count` listed members after a converged round; returns the leader, the members and
/// the time.
fn converged(count: u8) -> (Registration, Vec<Registration>, Instant) {
    let epoch = Instant::now();
    let gl = leader("gl", 1, 1);
    let mut gl_core = core("gl", 1, 1, epoch);
    gl_core.handle(Input::Leader(Some(gl.clone())), epoch);
    let mut members: Vec<Registration> = (2..2 + count)
        .map(|i| core(&format!("m{i}"), i, u64::from(i), epoch))
        .collect();
    for member in &mut members {
        let (at, datagram) = first_registration(member, &gl, epoch);
        gl_core.handle(Input::Datagram(&datagram), at);
    }
    let (at, outputs) = fire(&mut gl_core, TimerKind::Report);
    let (_, report) = multicasts(&outputs).pop().expect("report");
    for member in &mut members {
        member.handle(Input::Datagram(&report), at);
    }
    let (now, outputs) = fire(&mut gl_core, TimerKind::Report);
    assert_eq!(reports(&outputs).len(), 1, "segment report");
    (gl_core, members, now)
}

#[test]
fn a_silent_member_goes_offline_and_a_new_one_appears_in_network_segment_reports() {
    let (mut gl_core, mut members, now) = converged(3);
    let timers = RegistrationTimers::default();
    // m2 and m3 keep alive; m4 stopped.
    let mut clock = now;
    let deadline = now + timers.member_timeout + timers.keepalive * 2;
    let mut departed = None;
    while clock < deadline && departed.is_none() {
        let next_member = members[..2]
            .iter()
            .enumerate()
            .filter_map(|(index, member)| member.timer(TimerKind::Register).map(|at| (at, index)))
            .min();
        let next_expiry = gl_core.timer(TimerKind::Expiry).expect("expiry armed");
        match next_member {
            Some((at, index)) if at < next_expiry => {
                clock = at;
                let (_, outputs) = fire(&mut members[index], TimerKind::Register);
                for (_, _, datagram) in unicasts(&outputs) {
                    gl_core.handle(Input::Datagram(&datagram), at);
                }
            }
            _ => {
                let (at, outputs) = fire(&mut gl_core, TimerKind::Expiry);
                clock = at;
                departed = reports(&outputs).pop();
            }
        }
    }
    let (_, report) = departed.expect("a network segment report");
    assert_eq!(report.kind, ReportKind::NetworkSegment);
    assert_eq!(report.departed, ["m4"]);
    let names: Vec<&str> = report.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["gl", "m2", "m3"]);
    assert_eq!(gl_core.counters().members_expired, 1);
    assert!(clock >= now + timers.member_timeout - timers.keepalive - timers.retry_jitter);

    // A new member registers: a new round, and once it converges the mover hears that m9 appeared.
    let mut newcomer = core("m9", 9, 9, clock);
    let (at, datagram) = first_registration(&mut newcomer, &leader("gl", 1, 1), clock);
    gl_core.handle(Input::Datagram(&datagram), at);
    let (at, outputs) = fire(&mut gl_core, TimerKind::Report);
    let (_, report) = multicasts(&outputs).pop().expect("report");
    newcomer.handle(Input::Datagram(&report), at);
    assert!(newcomer.listed());
    let (_, outputs) = fire(&mut gl_core, TimerKind::Report);
    let (_, report) = reports(&outputs).pop().expect("network segment report");
    assert_eq!(report.kind, ReportKind::NetworkSegment);
    assert_eq!((report.appeared, report.departed), (vec!["m9".to_string()], vec![]));
    members.truncate(2);
}

#[test]
fn forged_replayed_foreign_and_misdirected_messages_are_refused_and_counted() {
    let epoch = Instant::now();
    let gl = leader("gl", 1, 1);
    let mut gl_core = core("gl", 1, 1, epoch);
    gl_core.handle(Input::Leader(Some(gl.clone())), epoch);
    let mut member = core("m2", 2, 2, epoch);
    let (at, datagram) = first_registration(&mut member, &gl, epoch);

    let message = segment::decode(&key(), &datagram, &Default::default())
        .expect("tagged")
        .into_message();
    let other_key = SecretKey::parse(&"0b".repeat(32)).expect("key");
    gl_core.handle(Input::Datagram(&segment::encode(&other_key, &message)), at);
    assert_eq!(gl_core.counters().refused.bad_tag, 1);
    assert!(
        gl_core.members().iter().all(|m| m.name != "m2"),
        "a forged registration is not taken"
    );

    gl_core.handle(Input::Datagram(&datagram), at);
    gl_core.handle(Input::Datagram(&datagram), at);
    assert_eq!(gl_core.counters().refused.replayed, 1);
    assert_eq!(gl_core.counters().registrations_heard, 1);

    let elsewhere = SegmentMessage {
        segment: "rack-2".into(),
        seq: message.seq + 10,
        ..message.clone()
    };
    gl_core.handle(Input::Datagram(&segment::encode(&key(), &elsewhere)), at);
    assert_eq!(gl_core.counters().refused.other_segment, 1);

    let stale = SegmentMessage {
        seq: message.seq + 11,
        sent_at_ms: UNIX_MS - 3_600_000,
        ..message.clone()
    };
    gl_core.handle(Input::Datagram(&segment::encode(&key(), &stale)), at);
    assert_eq!(gl_core.counters().refused.stale, 1);

    // A registration reaching a node that does not lead is counted, not taken.
    let mut bystander = core("m3", 3, 3, epoch);
    bystander.handle(Input::Leader(Some(gl.clone())), epoch);
    bystander.handle(Input::Datagram(&datagram), at);
    assert_eq!(bystander.counters().not_leader, 1);

    // A registration report from a node that is not the member's leader changes nothing.
    let impostor = SegmentMessage {
        segment: "rack-1".into(),
        sender: "m3".into(),
        address: address(3),
        term: 9,
        incarnation: 5,
        seq: 1,
        sent_at_ms: UNIX_MS,
        body: SegmentBody::RegistrationReport(RegistrationReport {
            members: vec![Registered {
                name: "m2".into(),
                incarnation: member.incarnation(),
            }],
            leader_override: None,
        }),
    };
    member.handle(Input::Datagram(&segment::encode(&key(), &impostor)), at);
    assert_eq!(member.counters().foreign_reports, 1);
    assert!(!member.listed());
}

#[test]
fn a_report_the_mover_did_not_take_is_sent_again_in_full() {
    let (mut gl_core, _members, now) = converged(2);
    let (_, outputs) = fire(&mut gl_core, TimerKind::Refresh);
    let (seq, report) = reports(&outputs).pop().expect("refresh report");
    assert_eq!(report.kind, ReportKind::Segment);
    assert!(now < gl_core.timer(TimerKind::Refresh).expect("refresh re-armed"));
    let failed_at = gl_core.timer(TimerKind::Refresh).expect("armed") - Duration::from_secs(50);
    let outputs = gl_core.handle(Input::ReportFailed { seq }, failed_at);
    let retry = timer(&outputs, TimerKind::ReportRetry).expect("retry armed");
    assert_eq!(retry, failed_at + RegistrationTimers::default().report_retry);
    assert_eq!(gl_core.counters().mover_reports_failed, 1);
    let (_, outputs) = fire(&mut gl_core, TimerKind::ReportRetry);
    let (_, again) = reports(&outputs).pop().expect("sent again");
    assert_eq!(again.kind, ReportKind::Segment);
    assert_eq!(again.members.len(), 3);
    // A failure of an older report than the one pending changes nothing.
    let outputs = gl_core.handle(Input::ReportFailed { seq }, retry);
    assert!(outputs.is_empty());
}

#[test]
fn the_movers_override_reaches_the_election_of_the_leader_and_of_its_members() {
    let (mut gl_core, mut members, now) = converged(2);
    let outputs = gl_core.handle(
        Input::ReportAnswered(ReportAnswer {
            seq: 1,
            leader_override: Some("m3".into()),
        }),
        now,
    );
    assert!(outputs.contains(&Output::Override(Some("m3".into()))));
    let (message, report) = multicasts(&outputs).pop().expect("the override is multicast at once");
    let SegmentBody::RegistrationReport(listed) = &message.body else {
        panic!("a registration report")
    };
    assert_eq!(
        listed.leader_override.as_ref().and_then(|o| o.leader.as_deref()),
        Some("m3")
    );
    for member in &mut members {
        let outputs = member.handle(Input::Datagram(&report), now);
        assert!(outputs.contains(&Output::Override(Some("m3".into()))));
        // Heard again: no second override.
        let again = member.handle(Input::Datagram(&report), now);
        assert!(!again.iter().any(|o| matches!(o, Output::Override(_))));
    }
    // It is repeated once more after the report delay.
    let (_, outputs) = fire(&mut gl_core, TimerKind::Report);
    assert_eq!(multicasts(&outputs).len(), 1);
    // The same answer again changes nothing.
    let outputs = gl_core.handle(
        Input::ReportAnswered(ReportAnswer {
            seq: 2,
            leader_override: Some("m3".into()),
        }),
        now,
    );
    assert!(outputs.is_empty());
}

#[test]
fn a_deposed_leader_stops_reporting_and_registers_with_the_new_one() {
    let (mut gl_core, _members, now) = converged(2);
    let successor = leader("m2", 2, 2);
    let outputs = gl_core.handle(Input::Leader(Some(successor.clone())), now);
    assert_eq!(gl_core.role(), Role::Member);
    for kind in [TimerKind::Report, TimerKind::Expiry, TimerKind::Refresh] {
        assert!(gl_core.timer(kind).is_none(), "{kind:?} cancelled");
    }
    assert!(outputs.contains(&Output::CancelTimer(TimerKind::Refresh)));
    assert!(timer(&outputs, TimerKind::Register).is_some());
    let (_, outputs) = fire(&mut gl_core, TimerKind::Register);
    assert_eq!(unicasts(&outputs)[0].0, successor.address);
    // During an election nobody registers.
    let outputs = gl_core.handle(Input::Leader(None), now + Duration::from_secs(2));
    assert!(outputs.contains(&Output::CancelTimer(TimerKind::Register)));
    assert_eq!(gl_core.role(), Role::Idle);
}

#[test]
fn the_same_run_twice_gives_the_same_messages() {
    let run = || {
        let (gl_core, members, now) = converged(3);
        let timers: Vec<Option<Instant>> = members.iter().map(|m| m.timer(TimerKind::Register)).collect();
        (
            gl_core.members(),
            timers.into_iter().map(|t| t.map(|t| t - now)).collect::<Vec<_>>(),
        )
    };
    let (first_members, first_timers) = run();
    let (second_members, second_timers) = run();
    assert_eq!(first_members.len(), second_members.len());
    assert_eq!(first_timers, second_timers);
}
