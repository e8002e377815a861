//! Local distribution in the node agent (seed `004_1419c51402506f7e.txt`, "local distribution"): the
//! member's side — each assignment the data channel received whole has its lost frames rebuilt from the
//! parity frames held as it is verified (the mover's signature and the signed hash the GL announced;
//! one read of the spool file does both, [`rebuild`]) and is handed to the content interpreter exactly as one posted to
//! `POST /assignments` — and the group leader's — one session per assignment for the members of a
//! notification, whose outcome says who applied it, who failed, and who must be caught up by the unicast
//! path ([`crate::forward`]).

use std::sync::Arc;

use tern_wire::assignment::{Checked, StreamCheck};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::driver::{DataChannel, FileSource, Received, SpoolRebuild, assignment_id};
use super::rebuild::{RebuildPlan, rebuild};
use super::{Outcome, SessionStart};
use crate::agent::NodeAgent;
use crate::spool::Entry;

/// How much lower than the node's other threads the data channel's apply thread runs (a `nice` value).
/// Rebuilding, verifying and unpacking a received assignment is background work, CPU-bound for a
/// second or more with a large one: at normal priority it takes the CPU from the node's serving and from
/// the data channel's own reading, whose receive buffer then overflows and costs every member a repair
/// pass (seen in the lab, where members that had finished applying starved those still receiving).
pub const APPLY_NICENESS: i32 = 10;

/// An assignment to apply, and where it goes back with its outcome.
type ApplyWork = (Received, oneshot::Sender<(Received, Result<(String, bool), String>)>);

/// Takes the assignments the data channel received, rebuilds, verifies and applies each, one at a time,
/// on a thread of lower CPU priority ([`APPLY_NICENESS`]), and tells the channel the result for the
/// apply report; until the agent stops.
pub(crate) async fn apply_received(agent: Arc<NodeAgent>, mut received: mpsc::Receiver<Received>) {
    let (work, queue) = std::sync::mpsc::channel::<ApplyWork>();
    let worker = agent.clone();
    let spawned = std::thread::Builder::new()
        .name("tern-data-apply".into())
        .spawn(move || apply_thread(&worker, &queue));
    if let Err(error) = spawned {
        warn!(%error, "cannot start the data channel's apply thread; received assignments are caught up by unicast");
        return;
    }
    loop {
        let item = tokio::select! {
            _ = agent.shutdown.cancelled() => return,
            item = received.recv() => item,
        };
        let Some(item) = item else {
            return;
        };
        let (answer, applied) = oneshot::channel();
        if work.send((item, answer)).is_err() {
            return;
        }
        let agent = agent.clone();
        tokio::spawn(async move {
            // The thread ended (the agent stops): nothing to report.
            let Ok((item, outcome)) = applied.await else {
                return;
            };
            let outcome = match outcome {
                Ok((site, switched)) => {
                    debug!(transfer = %item.name, %site, "assignment from the data channel applied");
                    if switched {
                        crate::agent::tidy_after_switch(agent.clone(), site);
                    }
                    Ok(())
                }
                Err(reason) => {
                    warn!(
                        transfer = %item.name,
                        %reason,
                        "assignment from the data channel refused (damaged or forged frames on the channel, or the node's disk); the leader sends it by unicast"
                    );
                    Err(reason)
                }
            };
            if let Some(channel) = agent.data_channel.as_ref() {
                channel.applied(&item, outcome).await;
            }
        });
    }
}

/// The apply thread: lowers its own priority, then applies what comes until the queue closes.
fn apply_thread(agent: &NodeAgent, queue: &std::sync::mpsc::Receiver<ApplyWork>) {
    // On Linux a thread id names one thread: only this one is lowered. Failing leaves it as it was.
    if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), APPLY_NICENESS) {
        debug!(%error, "the apply thread keeps its priority");
    }
    while let Ok((item, answer)) = queue.recv() {
        // A panic in one apply is that assignment's failure, not the end of the thread.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            verify_and_apply(agent, &item.entry, &item.hash, &item.rebuild)
        }))
        .unwrap_or_else(|_| Err("applying it failed unexpectedly (see the log)".to_string()));
        let _ = answer.send((item, outcome));
    }
}

/// Rebuilds the lost frames of the spooled copy, checks it end to end and applies it. Blocking. Returns
/// the site and whether its `live` version switched.
fn verify_and_apply(
    agent: &NodeAgent,
    entry: &Entry,
    announced_hash: &str,
    plan: &RebuildPlan,
) -> Result<(String, bool), String> {
    let metrics = agent.data_channel.as_ref().map(|channel| channel.metrics());
    let checked = match verify(agent, entry, announced_hash, plan) {
        Ok(checked) => checked,
        Err(reason) => {
            // Counted as the unicast path counts an assignment it refuses, and as the data channel's.
            agent.metrics.assignment("refused");
            if let Some(metrics) = metrics {
                metrics.received_refused.inc();
            }
            return Err(reason);
        }
    };
    if let Some(metrics) = metrics {
        metrics.frames_rebuilt.inc_by(plan.frames());
    }
    // Once only: the unicast path may have brought (or be applying) the same assignment. Counted in
    // `tern_node_assignments_total` as the unicast path's are.
    let application = agent.apply_received(entry, &checked)?;
    if application.again {
        debug!(site = %application.site, id = %application.id, "the data channel's copy was applied already");
    }
    Ok((
        application.site,
        !application.again && application.applied.live.is_some(),
    ))
}

/// Rebuilds the frames of `plan` and checks the spooled copy end to end in one read: the mover's
/// signature, and that it is the assignment announced. The parity frames are let go of after.
fn verify(agent: &NodeAgent, entry: &Entry, announced_hash: &str, plan: &RebuildPlan) -> Result<Checked, String> {
    let mut files = SpoolRebuild::open(entry, plan).map_err(|e| format!("spool file: {e}"))?;
    let mut check = StreamCheck::new(&agent.config.limits);
    let walked = rebuild(plan, &mut files, &mut |chunk| {
        check.push(chunk).map_err(|e| e.to_string())
    });
    drop(files);
    let _ = std::fs::remove_file(entry.parity_path());
    walked.map_err(|e| e.to_string())?;
    let checked = check.finish(&agent.config.mover_key).map_err(|e| e.to_string())?;
    if checked.hash_hex() != announced_hash {
        return Err(format!(
            "the copy received is a good assignment but not the one announced (hash {})",
            checked.hash_hex()
        ));
    }
    Ok(checked)
}

/// How a data channel session to a notification's members went.
#[derive(Debug, Default)]
pub(crate) struct Distributed {
    /// Members that reported applying it.
    pub(crate) applied: Vec<String>,
    /// Members that reported a failure, or whose report never came (silent in the session, or complete
    /// and then not heard): the unicast path tries them (those that said they did not complete the
    /// session went to `incomplete` already).
    pub(crate) fallback: Vec<String>,
}

/// Sends the verified assignment in `entry` to `members` on the data channel. `incomplete` is called as
/// soon as the session ended with the members that said they did not complete it (the unicast path can
/// start on them while the others' apply reports come in); the result names those that applied it and
/// the rest.
pub(crate) async fn distribute(
    channel: &DataChannel,
    transfer: &str,
    entry: &Entry,
    checked: &Checked,
    members: Vec<String>,
    incomplete: impl FnOnce(Vec<String>),
) -> Result<Distributed, String> {
    let hash = checked.hash_hex();
    let assignment = assignment_id(&hash);
    let source = FileSource::open(entry.path()).map_err(|e| format!("spool file: {e}"))?;
    let start = SessionStart {
        assignment,
        name: transfer.to_string(),
        hash,
        size: checked.len(),
        members: members.clone(),
        source: Box::new(source),
    };
    let led = channel.lead(start).await?;
    if let Outcome::SourceFailed(reason) = &led.session.outcome {
        return Err(format!("reading the spool file: {reason}"));
    }
    // Members never heard in the session may hold it all the same (every report of theirs lost): report
    // collection asks them by unicast before the unicast path sends them the assignment.
    let left_out = led.session.left_out();
    if !left_out.is_empty() {
        channel.excuse(assignment, left_out.clone()).await;
    }
    incomplete(left_out.clone());
    let report = led
        .collected
        .await
        .map_err(|_| "the data channel stopped before report collection ended".to_string())?;
    let mut fallback: Vec<String> = report.missing;
    for (member, detail) in report.failed {
        debug!(%transfer, %member, %detail, "member could not apply the data channel's copy");
        fallback.push(member);
    }
    fallback.retain(|member| !left_out.contains(member));
    Ok(Distributed {
        applied: report.applied,
        fallback,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use ed25519_dalek::SigningKey;
    use socket2::{Domain, Protocol, Socket, Type};
    use tern_wire::SecretKey;
    use tern_wire::assignment::{AssignmentKind, Builder, Command, Limits};
    use tern_wire::mctp;

    use super::*;
    use crate::interpreter::Interpreter;
    use crate::mctp::applied::{AppliedLog, REMEMBERED};
    use crate::mctp::driver::{self, DataChannelSettings};
    use crate::spool::Spool;

    const MARKER: &[u8] = b"PLAINTEXT-MARKER-OF-SEED-004";

    fn settings(port: u16) -> DataChannelSettings {
        let group = SocketAddrV4::new(Ipv4Addr::new(239, 192, 201, 9), port);
        DataChannelSettings {
            interface: Ipv4Addr::LOCALHOST,
            rate: 40_000_000,
            report_window: Duration::from_millis(400),
            report_delay: Duration::from_millis(100),
            apply_interval: Duration::from_millis(50),
            apply_multiples: 2,
            ..DataChannelSettings::new(group, "rack-1")
        }
    }

    /// Every datagram on the data channel, as another host on the segment sees it.
    fn sniff(group: SocketAddrV4, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
        socket.set_reuse_address(true).expect("reuse");
        socket.bind(&SocketAddr::V4(group).into()).expect("bind");
        socket
            .join_multicast_v4(group.ip(), &Ipv4Addr::LOCALHOST)
            .expect("join");
        let socket: std::net::UdpSocket = socket.into();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buffer = vec![0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(len) = socket.recv(&mut buffer) {
                    seen.push(buffer[..len].to_vec());
                }
            }
            seen
        })
    }

    /// Distributes one assignment whose file holds [`MARKER`] (encrypted with `encryption`, or not) from a
    /// GL's spool entry to one member, through [`distribute`] as the GL's delivery does; returns what
    /// travelled on the data channel.
    async fn distribute_marked(port: u16, encryption: Option<&[u8; 32]>) -> Vec<Vec<u8>> {
        let signing = SigningKey::from_bytes(&[5; 32]);
        let mut builder = Builder::new("v1", AssignmentKind::Publish, "www", 1, None, 0);
        let content = MARKER.repeat(4_000);
        builder.create("secret.txt", None, &content, false).expect("create");
        builder.command(Command::Commit);
        let bytes = builder.finish(&signing, encryption).expect("finish");
        assert_eq!(
            bytes.windows(MARKER.len()).any(|window| window == MARKER),
            encryption.is_none()
        );

        let area = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(&area.path().join("gl-spool")).expect("spool");
        let entry = spool.scratch(Some(bytes.len() as u64));
        std::fs::write(entry.path(), &bytes).expect("spool file");
        let mut check = StreamCheck::new(&Limits::default());
        check.push(&bytes).expect("push");
        let checked = check.finish(&signing.verifying_key()).expect("verifies");

        let key = SecretKey::parse(&"4e".repeat(32)).expect("key");
        let stop = Arc::new(AtomicBool::new(false));
        let sniffer = sniff(settings(port).group, stop.clone());
        let (leader, _) = driver::start(
            settings(port),
            key.clone(),
            "gl",
            &area.path().join("gl"),
            Arc::default(),
        )
        .expect("gl");
        let (member, mut received) =
            driver::start(settings(port), key, "m1", &area.path().join("m1"), Arc::default()).expect("member");
        let member = Arc::new(member);
        let applier = {
            let member = member.clone();
            let expected = bytes.clone();
            tokio::spawn(async move {
                let item = received.recv().await.expect("received");
                let spooled = std::fs::read(item.entry.path()).expect("spooled");
                assert!(spooled == expected, "the member spooled the GL's bytes");
                member.applied(&item, Ok(())).await;
            })
        };
        let distributed = tokio::time::timeout(
            Duration::from_secs(60),
            distribute(&leader, "www-000001", &entry, &checked, vec!["m1".into()], |_| {}),
        )
        .await
        .expect("in time")
        .expect("distributed");
        assert_eq!(distributed.applied, vec!["m1".to_string()]);
        applier.await.expect("applier");
        stop.store(true, Ordering::Relaxed);
        leader.stop();
        member.stop();
        sniffer.join().expect("sniffer")
    }

    /// Fault 3 of the MCTP review: with encryption configured, what the data channel carries is the
    /// mover's encrypted assignment from the GL's spool (covered by its signature and its encryption), so
    /// nothing travels there in clear that would not over unicast; without encryption the same sniffer
    /// sees the marker (it would catch plaintext).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_encryption_no_plaintext_travels_on_the_data_channel() {
        let port = 41_000 + (std::process::id() % 20_000) as u16;
        let contains = |datagram: &Vec<u8>| datagram.windows(MARKER.len()).any(|window| window == MARKER);

        let seen = distribute_marked(port, Some(&[9u8; 32])).await;
        let frames = seen.iter().filter(|datagram| mctp::is_data_frame(datagram)).count();
        assert!(frames > 50, "the sniffer saw the session ({frames} frames)");
        assert!(!seen.iter().any(contains), "plaintext on the data channel");

        let seen = distribute_marked(port.wrapping_add(1), None).await;
        assert!(
            seen.iter().any(contains),
            "the sniffer sees plaintext when there is some"
        );
    }

    /// Follow-up 2 of the MCTP review: an assignment the member applied by the unicast path (`POST
    /// /assignments`, through the node's record of applied assignments) is answered "complete" when the
    /// data channel announces it later: the member receives and applies nothing, and its apply report
    /// says applied. Before, the data channel knew only the assignments it had brought itself, and the
    /// member received the whole assignment again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_assignment_applied_over_http_is_answered_complete_on_the_data_channel() {
        let port = 41_000 + (std::process::id() % 20_000) as u16 + 2;
        let signing = SigningKey::from_bytes(&[5; 32]);
        let mut builder = Builder::new("v1", AssignmentKind::Publish, "www", 1, None, 0);
        builder
            .create("index.html", None, &MARKER.repeat(4_000), false)
            .expect("create");
        builder.command(Command::Commit);
        let bytes = builder.finish(&signing, None).expect("finish");
        let area = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(&area.path().join("spool")).expect("spool");
        let entry = spool.scratch(Some(bytes.len() as u64));
        std::fs::write(entry.path(), &bytes).expect("spool file");
        let mut check = StreamCheck::new(&Limits::default());
        check.push(&bytes).expect("push");
        let checked = check.finish(&signing.verifying_key()).expect("verifies");

        // The member applied it from `POST /assignments`.
        let record = Arc::new(AppliedLog::open(&area.path().join("m1-state"), REMEMBERED).expect("record"));
        let interpreter = Interpreter::new(area.path().join("m1-root"));
        let by_http = record
            .apply(&interpreter, &entry, &checked, None, &Limits::default())
            .expect("applied over HTTP");
        assert!(!by_http.again);

        let key = SecretKey::parse(&"4e".repeat(32)).expect("key");
        let (leader, _) = driver::start(
            settings(port),
            key.clone(),
            "gl",
            &area.path().join("gl"),
            Arc::default(),
        )
        .expect("gl");
        let (member, mut received) =
            driver::start(settings(port), key, "m1", &area.path().join("m1"), record.clone()).expect("member");
        let distributed = tokio::time::timeout(
            Duration::from_secs(60),
            distribute(&leader, "www-000001", &entry, &checked, vec!["m1".into()], |_| {}),
        )
        .await
        .expect("in time")
        .expect("distributed");
        assert_eq!(distributed.applied, vec!["m1".to_string()]);
        assert!(distributed.fallback.is_empty(), "{distributed:?}");
        assert!(received.try_recv().is_err(), "the member received the assignment again");
        assert_eq!(member.metrics().received.get(), 0);
        leader.stop();
        member.stop();
    }
}
