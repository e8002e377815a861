//! The discovery phase of seed `004_1419c51402506f7e.txt` on one node: the LAN group-leader election
//! ([`crate::election`]) and the segment's registration ([`crate::registration`]) started together on the
//! control channel, the election fed this node's measured resources (CPUs less the load, free disk under
//! the sites' root, members known: claim 37's parameters), and the mover's override of the leader, which
//! arrives with the answers to the leader's reports, passed on to the election.
//!
//! `tern node --segment NAME --control-channel GROUP:PORT` starts this beside the node agent.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tern_wire::segment::Profile;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::agent::NodeAgent;
use crate::election::driver::{self as election_driver, ControlChannel, DriverError};
use crate::election::{ElectionConfig, Leader, Resources};
use crate::registration::RegistrationConfig;
use crate::registration::driver::{self as registration_driver, Links, MoverLink, ProfileSource, StartError};

/// Settings of a node's discovery phase.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The election's settings; `address` is replaced by the registration socket's.
    pub election: ElectionConfig,
    /// The registration's settings; `address` is replaced by the registration socket's.
    pub registration: RegistrationConfig,
    /// The control channel.
    pub channel: ControlChannel,
    /// Where registrations arrive (UDP). Port 0 picks a free port; an unspecified address listens on
    /// every interface and is advertised as the address this host sends to the control channel from.
    pub registration_listen: SocketAddr,
    /// The mover, for the leader's reports.
    pub mover: Option<MoverLink>,
    /// The sites' root, whose file system's free space is measured.
    pub root: PathBuf,
    /// How often resources are measured for the election.
    pub measure_every: Duration,
}

/// Why discovery did not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The election did not start.
    #[error(transparent)]
    Election(#[from] DriverError),
    /// The registration did not start.
    #[error(transparent)]
    Registration(#[from] StartError),
    /// No address to advertise.
    #[error(
        "no local address reaches the control channel {group}: {source} (name the interface with --multicast-interface ADDR)"
    )]
    NoAddress {
        /// The channel's group.
        group: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// A node's running discovery phase.
#[derive(Debug)]
pub struct Discovery {
    segment: String,
    channel: SocketAddrV4,
    leader: watch::Receiver<Option<Leader>>,
    election: watch::Receiver<election_driver::Status>,
    registration: watch::Receiver<registration_driver::Status>,
    address: SocketAddr,
    overrides: mpsc::Sender<Option<String>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Discovery {
    /// The group leader as this node knows it.
    pub fn leader(&self) -> watch::Receiver<Option<Leader>> {
        self.leader.clone()
    }

    /// The election's state and counters.
    pub fn election_status(&self) -> watch::Receiver<election_driver::Status> {
        self.election.clone()
    }

    /// The registration's role, list and counters.
    pub fn registration_status(&self) -> watch::Receiver<registration_driver::Status> {
        self.registration.clone()
    }

    /// The address this node registers at and advertises (in its LAs and registrations).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// While this node leads the segment, tells `agent`'s data channel where the registered members take
    /// unicast report requests (their profiles' data channel addresses), as the registration changes.
    pub fn share_members(&self, agent: &Arc<NodeAgent>) {
        let Some(channel) = agent.data_channel.clone() else {
            return;
        };
        let mut status = self.registration.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut shared = None;
            loop {
                let members: Vec<(String, SocketAddr)> = status
                    .borrow_and_update()
                    .members
                    .iter()
                    .filter_map(|member| {
                        member
                            .profile
                            .data_channel
                            .map(|address| (member.name.clone(), address))
                    })
                    .collect();
                // The status changes with every counter: the channel hears only of new lists.
                if shared.as_ref() != Some(&members) {
                    channel.registered(members.clone()).await;
                    shared = Some(members);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = status.changed() => if changed.is_err() {
                        return;
                    },
                }
            }
        });
    }

    /// Forces `leader` to lead, or (`None`) returns to the normal election, on this node.
    pub async fn override_leader(&self, leader: Option<String>) {
        let _ = self.overrides.send(leader).await;
    }

    /// A token that stops discovery when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops the election and the registration and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Starts the election and the registration (inside a tokio runtime). `profile` reads what this node
/// registers with.
pub async fn start(config: DiscoveryConfig, profile: ProfileSource) -> Result<Discovery, DiscoveryError> {
    let DiscoveryConfig {
        mut election,
        mut registration,
        channel,
        registration_listen,
        mover,
        root,
        measure_every,
    } = config;
    let socket = registration_driver::bind_socket(registration_listen)?;
    let bound = socket.local_addr().map_err(|source| StartError::Socket {
        address: registration_listen,
        source,
    })?;
    let address = if bound.ip().is_unspecified() {
        let ip = route_address(&channel).map_err(|source| DiscoveryError::NoAddress {
            group: SocketAddr::V4(channel.group),
            source,
        })?;
        SocketAddr::new(ip, bound.port())
    } else {
        bound
    };
    election.address = address;
    registration.address = address;
    let segment = election.segment.clone();
    let election = election_driver::spawn(election, channel)?;
    let (overrides_tx, overrides_rx) = mpsc::channel(8);
    let registration = registration_driver::spawn(
        registration,
        Links {
            channel,
            socket,
            leader: election.leader(),
            mover,
            profile,
            overrides: Some(overrides_tx.clone()),
        },
    )?;
    info!(%address, group = %channel.group, "discovery started");
    let shutdown = CancellationToken::new();
    let discovery = Discovery {
        segment,
        channel: channel.group,
        leader: election.leader(),
        election: election.status(),
        registration: registration.status(),
        address,
        overrides: overrides_tx,
        shutdown: shutdown.clone(),
        task: tokio::spawn(
            Tended {
                election,
                registration,
                overrides: overrides_rx,
                root,
                measure_every,
            }
            .run(shutdown),
        ),
    };
    Ok(discovery)
}

/// What the discovery task looks after.
struct Tended {
    election: election_driver::ElectionHandle,
    registration: registration_driver::RegistrationHandle,
    overrides: mpsc::Receiver<Option<String>>,
    root: PathBuf,
    measure_every: Duration,
}

impl Tended {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut measure = tokio::time::interval(self.measure_every.max(Duration::from_millis(10)));
        measure.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(forced) = self.overrides.recv() => self.election.override_leader(forced).await,
                _ = measure.tick() => {
                    let root = self.root.clone();
                    let members_known = self.registration.status().borrow().members_known;
                    if let Ok(mut resources) = tokio::task::spawn_blocking(move || measure_resources(&root)).await {
                        resources.members_known = u32::try_from(members_known).unwrap_or(u32::MAX);
                        self.election.set_resources(resources).await;
                    }
                }
            }
        }
        self.registration.stop().await;
        self.election.stop().await;
    }
}

/// What the node agent listening on `bound` registers with the mover, as its profile in its segment.
pub fn agent_profile(agent: Arc<NodeAgent>, bound: SocketAddr) -> ProfileSource {
    Arc::new(move || {
        let registration = agent.registration(bound);
        Profile {
            url: registration.url,
            free_disk: registration.free_disk,
            cpus: registration.cpus,
            groups: registration.groups,
            versions: registration.versions,
            prepared: registration.prepared,
            data_channel: agent.data_channel.as_ref().map(|channel| channel.address()),
            instance: registration.instance,
            encryption_key_id: registration.encryption_key_id,
        }
    })
}

/// This node's resources for its priority claim: CPUs × 1000 less the one-minute load average × 1000
/// (at least 0), and the free space under `root` in MiB. `members_known` is left 0.
pub fn measure_resources(root: &Path) -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let capacity = u64::try_from(cpus).unwrap_or(u64::MAX).saturating_mul(1000);
    let load = load_average_millis().unwrap_or(0);
    let cpu_millis = u32::try_from(capacity.saturating_sub(load)).unwrap_or(u32::MAX);
    let free_disk_mib = rustix::fs::statvfs(root)
        .map(|stats| stats.f_bavail.saturating_mul(stats.f_frsize) >> 20)
        .unwrap_or(0);
    Resources {
        cpu_millis,
        free_disk_mib,
        members_known: 0,
    }
}

/// The one-minute load average × 1000, where the system says it (`/proc/loadavg`).
fn load_average_millis() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let first: f64 = text.split_whitespace().next()?.parse().ok()?;
    (first.is_finite() && first >= 0.0).then(|| (first * 1000.0).min(u64::MAX as f64) as u64)
}

/// The local address this host sends to the control channel from (no datagram is sent).
fn route_address(channel: &ControlChannel) -> std::io::Result<IpAddr> {
    if !channel.interface.is_unspecified() {
        return Ok(IpAddr::V4(channel.interface));
    }
    let probe = StdUdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    probe.connect(SocketAddr::V4(channel.group))?;
    Ok(probe.local_addr()?.ip())
}

/// The discovery phase's figures on the node's `/metrics` (`tern_node_control_*`, `tern_node_election*`,
/// `tern_node_group_leader`, `tern_node_registration_*`), read from the election's and the registration's
/// status as of the request.
#[derive(Debug, Clone)]
pub struct DiscoveryMetrics {
    segment: String,
    channel: SocketAddrV4,
    leader: watch::Receiver<Option<Leader>>,
    election: watch::Receiver<election_driver::Status>,
    registration: watch::Receiver<registration_driver::Status>,
}

impl DiscoveryMetrics {
    /// What the node's `/status` shows of its segment: its name and control channel, the election's state
    /// (Fig. 5), the leader and its term as this node knows them, this node's registration role, and
    /// whether the leader's last report listed it.
    pub fn status(&self) -> serde_json::Value {
        let election = *self.election.borrow();
        let registration = self.registration.borrow();
        let leader = self.leader.borrow();
        serde_json::json!({
            "name": self.segment,
            "control_channel": self.channel.to_string(),
            "state": election.state.as_str(),
            "leader": leader.as_ref().map(|leader| leader.name.clone()),
            "term": leader.as_ref().map(|leader| leader.term),
            "role": registration.role.as_str(),
            "listed": registration.listed,
            "members_known": registration.members_known,
        })
    }
}

impl Discovery {
    /// The figures `/metrics` shows for this discovery phase.
    pub fn metrics(&self) -> DiscoveryMetrics {
        DiscoveryMetrics {
            segment: self.segment.clone(),
            channel: self.channel,
            leader: self.leader.clone(),
            election: self.election.clone(),
            registration: self.registration.clone(),
        }
    }

    /// Shows this discovery phase's figures on `agent`'s `/metrics`.
    pub fn share_metrics(&self, agent: &Arc<NodeAgent>) {
        let _ = agent.discovery_metrics.set(self.metrics());
    }
}

impl prometheus_client::collector::Collector for DiscoveryMetrics {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let election = *self.election.borrow();
        let registration = self.registration.borrow().counters;
        let refused = |name: &'static str, refusals: &crate::election::Refusals| {
            [
                (name, "bad-tag", refusals.bad_tag),
                (name, "oversized", refusals.oversized),
                (name, "malformed", refusals.malformed),
                (name, "stale", refusals.stale),
                (name, "replayed", refusals.replayed),
                (name, "other-segment", refusals.other_segment),
                (name, "duplicate-name", refusals.duplicate_name),
            ]
        };
        let mut metric = encoder.encode_descriptor(
            "control_refused",
            "Control-channel messages refused, by what refused them (election, registration) and why: bad-tag \
             (another --cluster-key, forged or damaged), stale (a clock outside the freshness window), replayed, \
             oversized, malformed, other-segment, duplicate-name",
            None,
            MetricType::Counter,
        )?;
        for (what, reason, count) in refused("election", &election.counters.refused)
            .into_iter()
            .chain(refused("registration", &registration.refused))
        {
            let labels = [("what", what), ("reason", reason)];
            ConstCounter::new(count).encode(metric.encode_family(&labels)?)?;
        }
        let counters = &election.counters;
        let mut metric = encoder.encode_descriptor(
            "election_messages",
            "Leader Alive (LA) and Leader Claim (LC) messages sent and heard",
            None,
            MetricType::Counter,
        )?;
        for (kind, direction, count) in [
            ("la", "sent", counters.leader_alive_sent),
            ("la", "heard", counters.leader_alive_heard),
            ("lc", "sent", counters.leader_claim_sent),
            ("lc", "heard", counters.leader_claim_heard),
        ] {
            let labels = [("kind", kind), ("direction", direction)];
            ConstCounter::new(count).encode(metric.encode_family(&labels)?)?;
        }
        let metric = encoder.encode_descriptor(
            "elections_won",
            "Times this node became its segment's group leader",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(counters.elections_won).encode(metric)?;
        let metric = encoder.encode_descriptor(
            "group_leader",
            "1 while this node leads its segment",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(election.state == crate::election::State::GlIsMe)).encode(metric)?;
        let metric = encoder.encode_descriptor(
            "registration_mover_reports_failed",
            "Segment reports the mover did not take (the leader's log says why)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(registration.mover_reports_failed).encode(metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_control_messages_and_the_leader_role_are_on_metrics() {
        let mut election = election_driver::Status {
            state: crate::election::State::GlIsMe,
            counters: crate::election::Counters::default(),
        };
        election.counters.refused.bad_tag = 3;
        election.counters.refused.stale = 2;
        election.counters.elections_won = 1;
        let mut registration = registration_driver::Status {
            role: crate::registration::Role::Leader,
            listed: true,
            members: Vec::new(),
            members_known: 0,
            counters: crate::registration::Counters::default(),
        };
        registration.counters.refused.replayed = 4;
        let leader = Leader {
            name: "n1".into(),
            address: "10.0.0.1:40000".parse().expect("address"),
            term: 4,
        };
        let metrics = DiscoveryMetrics {
            segment: "rack-1".into(),
            channel: "239.192.0.1:7200".parse().expect("group"),
            leader: watch::channel(Some(leader)).1,
            election: watch::channel(election).1,
            registration: watch::channel(registration).1,
        };
        // The node's `/status` says where it stands in its segment.
        assert_eq!(
            metrics.status(),
            serde_json::json!({
                "name": "rack-1", "control_channel": "239.192.0.1:7200", "state": "GL is me", "leader": "n1",
                "term": 4, "role": "leader", "listed": true, "members_known": 0,
            })
        );
        let mut registry = prometheus_client::registry::Registry::with_prefix("tern_node");
        registry.register_collector(Box::new(metrics));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "tern_node_control_refused_total{what=\"election\",reason=\"bad-tag\"} 3",
            "tern_node_control_refused_total{what=\"election\",reason=\"stale\"} 2",
            "tern_node_control_refused_total{what=\"registration\",reason=\"replayed\"} 4",
            "tern_node_elections_won_total 1",
            "tern_node_group_leader 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn resources_are_measured_and_saturate() {
        let area = std::env::temp_dir();
        let resources = measure_resources(&area);
        assert!(resources.cpu_millis <= 1000 * 4096);
        assert!(
            resources.free_disk_mib > 0,
            "the temporary directory's file system has room"
        );
        assert_eq!(measure_resources(Path::new("/no/such/root")).free_disk_mib, 0);
    }
}
