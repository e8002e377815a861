//! The registration's tokio driver: a second socket on the control channel (beside the election's; each
//! takes its own frame kinds) for the registration reports, a unicast UDP socket for registrations, the
//! election's leader as a watch channel, this node's profile read every keep-alive period, the reports to
//! the mover over HTTP(S), and a loop that feeds all of it to the sans-IO [`Registration`] core.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tern_http::tls::HttpsClient;
use tern_wire::SecretKey;
use tern_wire::segment::{self, Member, Profile, ReportAnswer, SegmentBody, SegmentLimits, SegmentMessage};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Counters, Input, Output, Registration, RegistrationConfig, Role, TimerKind};
use crate::clock::unix_ms;
use crate::election::driver::{self, ControlChannel, DriverError};
use crate::election::{ConfigError, Leader};

/// Path of the mover's API that takes segment reports.
pub const REPORT_PATH: &str = "/api/segments/report";
/// Content type of a report and of its answer: one tern frame ([`tern_wire::frame`]).
pub const FRAME_CONTENT_TYPE: &str = "application/vnd.tern.frame";
/// Largest answer to a report read from the mover.
const MAX_ANSWER: usize = 64 * 1024;

/// Where the leader sends its reports.
#[derive(Clone)]
pub struct MoverLink {
    /// The mover's API, e.g. `http://10.0.0.1:7000`.
    pub url: String,
    /// The HTTP(S) client (trusting the mover's CA with `--ca`).
    pub client: HttpsClient<Full<Bytes>>,
    /// How long one report may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for MoverLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoverLink").field("url", &self.url).finish()
    }
}

/// Reads this node's profile (free disk, versions held, ...); called off the async threads.
pub type ProfileSource = Arc<dyn Fn() -> Profile + Send + Sync>;

/// Why the registration did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The settings are inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The control channel could not be joined.
    #[error(transparent)]
    Channel(#[from] DriverError),
    /// The registration socket could not be bound.
    #[error("registration socket {address}: {source} (give a free local address with --registration-listen)")]
    Socket {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: io::Error,
    },
}

/// The core's role, list and counters, as last seen by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Member, leader or idle.
    pub role: Role,
    /// Whether the leader's last report listed this node.
    pub listed: bool,
    /// Leader: the registered members.
    pub members: Vec<Member>,
    /// Members this node knows of.
    pub members_known: usize,
    /// Messages sent, heard and refused.
    pub counters: Counters,
}

/// A running registration.
#[derive(Debug)]
pub struct RegistrationHandle {
    status: watch::Receiver<Status>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    local: SocketAddr,
}

impl RegistrationHandle {
    /// The core's role, list and counters.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// The registration socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops the registration and waits for its task.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Binds the unicast socket registrations arrive on (call it inside a tokio runtime).
pub fn bind_socket(address: SocketAddr) -> Result<UdpSocket, StartError> {
    let fail = |source| StartError::Socket { address, source };
    let socket = std::net::UdpSocket::bind(address).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    UdpSocket::from_std(socket).map_err(fail)
}

/// What the registration driver works with besides its settings.
pub struct Links {
    /// The control channel (registration reports are multicast there).
    pub channel: ControlChannel,
    /// The unicast socket from [`bind_socket`]; its address must be the configuration's `address`.
    pub socket: UdpSocket,
    /// The election's leader.
    pub leader: watch::Receiver<Option<Leader>>,
    /// The mover, for the leader's reports (`None`: reports are not sent).
    pub mover: Option<MoverLink>,
    /// This node's profile.
    pub profile: ProfileSource,
    /// Where the mover's override of the leader goes (to the election).
    pub overrides: Option<mpsc::Sender<Option<String>>>,
}

/// Starts the registration for `config`, as a task of the current tokio runtime. The core's seed comes
/// from the process's random hash keys.
pub fn spawn(config: RegistrationConfig, links: Links) -> Result<RegistrationHandle, StartError> {
    let now = Instant::now().into_std();
    let core = Registration::new(config, random_seed(), now, unix_ms())?;
    let control = driver::bind(&links.channel)?;
    let local = links.socket.local_addr().map_err(|source| StartError::Socket {
        address: core.config().address,
        source,
    })?;
    let (status_tx, status_rx) = watch::channel(status_of(&core));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(core, control, links, status_tx, shutdown.clone()));
    Ok(RegistrationHandle {
        status: status_rx,
        shutdown,
        task,
        local,
    })
}

fn status_of(core: &Registration) -> Status {
    Status {
        role: core.role(),
        listed: core.listed(),
        members: if core.role() == Role::Leader {
            core.members()
        } else {
            Vec::new()
        },
        members_known: core.members_known(),
        counters: *core.counters(),
    }
}

/// The outcome of one report to the mover.
enum Answered {
    Taken(ReportAnswer),
    Failed { seq: u64 },
}

async fn run(
    mut core: Registration,
    control: UdpSocket,
    links: Links,
    status: watch::Sender<Status>,
    shutdown: CancellationToken,
) {
    let Links {
        channel,
        socket,
        mut leader,
        mover,
        profile,
        overrides,
    } = links;
    let node = core.config().node.clone();
    let group = channel.group;
    let mut control_buffer = vec![0u8; core.config().limits.max_len + 1];
    let mut unicast_buffer = vec![0u8; core.config().limits.max_len + 1];
    let mut timers: BTreeMap<TimerKind, Instant> = BTreeMap::new();
    let (answers_tx, mut answers) = mpsc::channel::<Answered>(16);
    let mut profile_tick = tokio::time::interval(core.config().timers.keepalive);
    profile_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader_open = true;
    let key = core.config().key.clone();
    let carry = Carry {
        node: &node,
        group,
        socket: &socket,
        control: &control,
        mover: mover.as_ref(),
        overrides: overrides.as_ref(),
        key: &key,
        answers: &answers_tx,
    };
    // The address members and the leader reach this node at (the socket may be bound to 0.0.0.0).
    info!(%node, registration = %core.config().address, "segment registration started");
    // The profile first, so that no registration or report goes out without this node's URL.
    let reader = profile.clone();
    if let Ok(first_profile) = tokio::task::spawn_blocking(move || reader()).await {
        core.handle(Input::Profile(first_profile), Instant::now().into_std());
    }
    profile_tick.reset();
    let first_leader = leader.borrow_and_update().clone();
    let mut outputs = core.handle(Input::Leader(first_leader), Instant::now().into_std());
    loop {
        for output in outputs.drain(..) {
            match output {
                Output::SetTimer { timer, at } => {
                    timers.insert(timer, Instant::from_std(at));
                }
                Output::CancelTimer(timer) => {
                    timers.remove(&timer);
                }
                other => carry_out(other, &carry).await,
            }
        }
        status.send_replace(status_of(&core));
        let next = timers.iter().min_by_key(|(_, at)| **at).map(|(kind, at)| (*kind, *at));
        let due = async {
            match next {
                Some((_, at)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            received = control.recv_from(&mut control_buffer) => {
                let now = clock(&mut core);
                match received {
                    // The election's own datagrams share the channel; they are its driver's business.
                    Ok((len, _)) if segment::is_segment_datagram(&control_buffer[..len]) => {
                        outputs = core.handle(Input::Datagram(&control_buffer[..len]), now);
                    }
                    Ok(_) => {}
                    Err(error) => warn!(%node, %error, "control channel receive failed"),
                }
            }
            received = socket.recv_from(&mut unicast_buffer) => {
                let now = clock(&mut core);
                match received {
                    Ok((len, _)) => outputs = core.handle(Input::Datagram(&unicast_buffer[..len]), now),
                    Err(error) => warn!(%node, %error, "registration socket receive failed"),
                }
            }
            changed = leader.changed(), if leader_open => {
                let now = clock(&mut core);
                match changed {
                    Ok(()) => {
                        let current = leader.borrow_and_update().clone();
                        outputs = core.handle(Input::Leader(current), now);
                    }
                    // The election stopped: no leader any more.
                    Err(_) => {
                        leader_open = false;
                        outputs = core.handle(Input::Leader(None), now);
                    }
                }
            }
            _ = due => {
                let now = clock(&mut core);
                if let Some((kind, _)) = next {
                    timers.remove(&kind);
                    outputs = core.handle(Input::Timer(kind), now);
                }
            }
            _ = profile_tick.tick() => {
                let reader = profile.clone();
                if let Ok(current) = tokio::task::spawn_blocking(move || reader()).await {
                    let now = clock(&mut core);
                    outputs = core.handle(Input::Profile(current), now);
                }
            }
            Some(answered) = answers.recv() => {
                let now = clock(&mut core);
                outputs = match answered {
                    Answered::Taken(answer) => core.handle(Input::ReportAnswered(answer), now),
                    Answered::Failed { seq } => core.handle(Input::ReportFailed { seq }, now),
                };
            }
        }
    }
}

/// Failed segment reports are logged at most every 30 s: a leader retries every second.
static REPORT_WARNINGS: std::sync::Mutex<tern_admin::Throttle<()>> =
    std::sync::Mutex::new(tern_admin::Throttle::new(tern_admin::throttle::DEFAULT_WARN_INTERVAL));

/// What carrying out an output needs.
struct Carry<'a> {
    node: &'a str,
    group: SocketAddrV4,
    socket: &'a UdpSocket,
    control: &'a UdpSocket,
    mover: Option<&'a MoverLink>,
    overrides: Option<&'a mpsc::Sender<Option<String>>>,
    key: &'a SecretKey,
    answers: &'a mpsc::Sender<Answered>,
}

async fn carry_out(output: Output, carry: &Carry<'_>) {
    let node = carry.node;
    match output {
        Output::Unicast { to, datagram, .. } => {
            if let Err(error) = carry.socket.send_to(&datagram, to).await {
                warn!(%node, leader = %to, %error, "registration not sent");
            }
        }
        Output::Multicast { datagram, .. } => {
            let group = carry.group;
            if let Err(error) = carry.control.send_to(&datagram, SocketAddr::V4(group)).await {
                warn!(%node, %group, %error, "registration report not sent");
            }
        }
        Output::Report { message, body } => {
            let answers = carry.answers.clone();
            let seq = message.seq;
            let Some(mover) = carry.mover.cloned() else {
                return;
            };
            let key = carry.key.clone();
            let node = node.to_string();
            tokio::spawn(async move {
                let answered = match send_report(&mover, &key, &message, body).await {
                    Ok(answer) => Answered::Taken(answer),
                    Err(reason) => {
                        let due = REPORT_WARNINGS
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .check((), std::time::Instant::now());
                        if let Some(suppressed) = due {
                            warn!(%node, mover = %mover.url, %reason, suppressed,
                                  "segment report not taken; sending it again later{}", report_hint(&reason));
                        }
                        Answered::Failed { seq }
                    }
                };
                let _ = answers.send(answered).await;
            });
        }
        Output::SetTimer { .. } | Output::CancelTimer(_) => {}
        Output::Override(leader) => {
            if let Some(overrides) = carry.overrides {
                let _ = overrides.send(leader).await;
            }
        }
    }
}

/// What to check, for a segment report the mover did not take.
fn report_hint(reason: &str) -> &'static str {
    if reason.contains("401") || reason.contains("403") {
        " (this node's --cluster-key is not the mover's)"
    } else if reason.contains("freshness") || reason.contains("stale") {
        " (this node's clock and the mover's disagree by more than the freshness window: keep them in sync with NTP)"
    } else {
        ""
    }
}

/// Posts one report; the answer must be the mover's, tagged with the cluster key, for this report.
async fn send_report(
    mover: &MoverLink,
    key: &SecretKey,
    message: &SegmentMessage,
    body: Vec<u8>,
) -> Result<ReportAnswer, String> {
    let url = format!("{}{REPORT_PATH}", mover.url.trim_end_matches('/'));
    let request = Request::post(&url)
        .header(http::header::CONTENT_TYPE, FRAME_CONTENT_TYPE)
        .body(Full::new(Bytes::from(body)))
        .map_err(|error| error.to_string())?;
    let exchange = async {
        let response = mover
            .client
            .request(request)
            .await
            .map_err(|error| tern_http::tls::error_reason(&error))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|error| error.to_string())?
            .to_bytes();
        Ok::<_, String>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(mover.timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {:?}", mover.timeout))??;
    if status != StatusCode::OK {
        return Err(format!(
            "mover answered {status}: {}",
            tern_wire::mover::ErrorAnswer::reason_in(&bytes)
        ));
    }
    let limits = SegmentLimits {
        max_len: MAX_ANSWER,
        ..SegmentLimits::default()
    };
    let verified = segment::decode(key, &bytes, &limits).map_err(|error| format!("answer refused: {error}"))?;
    match verified.into_message().body {
        SegmentBody::ReportAnswer(answer) if answer.seq == message.seq => {
            debug!(seq = answer.seq, "segment report taken");
            Ok(answer)
        }
        _ => Err("the answer is not for this report".into()),
    }
}

fn clock(core: &mut Registration) -> std::time::Instant {
    let now = Instant::now().into_std();
    core.set_wall_clock(now, unix_ms());
    now
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(unix_ms() ^ 0x5e65_6d65_6e74);
    hasher.finish()
}
