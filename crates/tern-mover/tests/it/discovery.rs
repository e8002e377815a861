//! The discovery phase end to end (seed 004: election, registration, segment and network segment
//! reports) on real sockets in one process: a mover and four node agents, each running its election and
//! registration on a multicast control channel over the loopback interface (skipped with a message where
//! multicast on `lo` does not work). One leader is elected, its segment report reaches the mover, and
//! `GET /api/segments` shows it with the four members; a forged report is refused and counted; a site is
//! published to the segment; a member new to a segment that hosts the site gets a catch-up job, and its
//! report replayed is refused; a member stopped is removed by a network segment report; the
//! administrator's override moves the leadership.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tern_http::server::Running;
use tern_mover::service::{Mover, MoverConfig, start};
use tern_node::agent::{NodeAgent, NodeConfig};
use tern_node::discovery::{self, Discovery, DiscoveryConfig, agent_profile};
use tern_node::election::driver::{self as election_driver, ControlChannel};
use tern_node::election::{ElectionConfig, State, Timers};
use tern_node::registration::driver::MoverLink;
use tern_node::registration::{RegistrationConfig, RegistrationTimers};
use tern_wire::SecretKey;
use tern_wire::segment::{self, Member, Profile, ReportKind, SegmentBody, SegmentMessage, SegmentReport};

use crate::jobs::{free_addr, write_site};

const SEGMENT: &str = "lo-segment";
const NODES: [&str; 4] = ["n1", "n2", "n3", "n4"];
/// The seed's timers, this much faster.
const SPEED: u32 = 20;

/// A multicast group and free port for this test process.
fn test_channel() -> ControlChannel {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map(|address| address.port())
        .expect("a free port");
    let group = Ipv4Addr::new(239, 255, (std::process::id() % 250) as u8, 43);
    ControlChannel::new(SocketAddrV4::new(group, port), Ipv4Addr::LOCALHOST)
}

/// Whether a datagram sent to the group on `lo` comes back to a member socket.
async fn loopback_multicast_works(channel: &ControlChannel) -> Result<(), String> {
    let socket = election_driver::bind(channel).map_err(|e| e.to_string())?;
    socket
        .send_to(b"probe", SocketAddr::V4(channel.group))
        .await
        .map_err(|e| e.to_string())?;
    let mut buffer = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buffer)).await {
        Ok(Ok((5, _))) => Ok(()),
        Ok(Ok((len, _))) => Err(format!("probe came back with {len} bytes")),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("probe did not come back within 1 s".into()),
    }
}

/// A node agent and its discovery.
struct Started {
    agent: Running<Arc<NodeAgent>>,
    discovery: Discovery,
}

struct Fleet {
    area: tempfile::TempDir,
    key: SecretKey,
    mover: Running<Arc<Mover>>,
    mover_addr: SocketAddr,
    channel: ControlChannel,
    members: Vec<(String, Option<Started>)>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Fleet {
    async fn new(channel: ControlChannel) -> Fleet {
        let area = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::generate().expect("key");
        let mover_addr = free_addr();
        let mover = start(MoverConfig {
            delivery_timeout: Duration::from_secs(10),
            checkpoints_kept: 3,
            cluster_key: Some(key.clone()),
            ..MoverConfig::new(mover_addr, area.path().join("mover"))
        })
        .await
        .expect("mover");
        let mut fleet = Fleet {
            area,
            key,
            mover,
            mover_addr,
            channel,
            members: Vec::new(),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        };
        for name in NODES {
            let member = fleet.start_member(name).await;
            fleet.members.push((name.to_string(), Some(member)));
        }
        fleet
    }

    async fn start_member(&self, name: &str) -> Started {
        let mover_key = tern_mover::keys::load_public(&self.area.path().join("mover/mover.pub")).expect("mover.pub");
        let root = self.area.path().join(name);
        let agent = tern_node::agent::start(NodeConfig {
            mover: format!("http://{}", self.mover_addr),
            listen: free_addr(),
            advertise: None,
            root: root.clone(),
            name: name.to_string(),
            mover_key,
            decryption_key: None,
            limits: Default::default(),
            register_interval: Duration::from_secs(1),
            groups: Vec::new(),
            superseded_grace: tern_node::interpreter::SUPERSEDED_GRACE,
            tls: None,
            ca: None,
            cluster_key: Some(self.key.clone()),
            tree: Default::default(),
        })
        .await
        .expect("node");
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut election = ElectionConfig::new(SEGMENT, name, unbound, self.key.clone());
        election.timers = Timers::default().scaled_down(SPEED);
        let mut registration = RegistrationConfig::new(SEGMENT, name, unbound, self.key.clone());
        registration.timers = RegistrationTimers::default().scaled_down(SPEED);
        registration.location = "Europe/London".into();
        let config = DiscoveryConfig {
            election,
            registration,
            channel: self.channel,
            registration_listen: unbound,
            mover: Some(MoverLink {
                url: format!("http://{}", self.mover_addr),
                client: tern_http::tls::ClientTls::new(None).expect("client").client(),
                timeout: Duration::from_secs(5),
            }),
            root,
            measure_every: Duration::from_millis(200),
        };
        let discovery = discovery::start(config, agent_profile(agent.role.clone(), agent.listen))
            .await
            .expect("discovery");
        Started { agent, discovery }
    }

    async fn request(&self, method: &str, path: &str, body: Bytes) -> (StatusCode, Bytes) {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.mover_addr))
            .body(Full::new(body))
            .expect("request");
        let response = self.client.request(request).await.expect("mover answers");
        let status = response.status();
        (status, response.into_body().collect().await.expect("body").to_bytes())
    }

    async fn api(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let body = Bytes::from(body.map(|b| b.to_string()).unwrap_or_default());
        let (_, bytes) = self.request(method, path, body).await;
        serde_json::from_slice(&bytes).expect("json")
    }

    /// The segment as `GET /api/segments` shows it: its leader, its members and the last report's kind.
    async fn segment(&self) -> Option<(String, BTreeSet<String>, String)> {
        let segments = self.api("GET", "/api/segments", None).await;
        let segment = segments.as_array()?.iter().find(|s| s["name"] == SEGMENT)?;
        let members = segment["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["name"].as_str().map(str::to_string))
            .collect();
        Some((
            segment["leader"].as_str()?.to_string(),
            members,
            segment["kind"].as_str()?.to_string(),
        ))
    }

    /// Waits until the mover shows `wanted` members with a leader every running member follows.
    async fn wait_for_members(&self, wanted: &BTreeSet<String>, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((leader, members, _)) = self.segment().await
                && members == *wanted
                && self.running_members_follow(&leader)
            {
                return leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the mover did not show members {wanted:?} within {within:?}: {:?}",
                self.segment().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether exactly `leader` leads and every running member knows it.
    fn running_members_follow(&self, leader: &str) -> bool {
        let running: Vec<(&String, &Started)> = self
            .members
            .iter()
            .filter_map(|(name, member)| member.as_ref().map(|m| (name, m)))
            .collect();
        let leading = running
            .iter()
            .filter(|(_, m)| m.discovery.election_status().borrow().state == State::GlIsMe)
            .count();
        let follow = running.iter().all(|(_, m)| {
            m.discovery
                .leader()
                .borrow()
                .as_ref()
                .is_some_and(|known| known.name == leader)
        });
        leading == 1 && follow
    }

    /// Runs a job on site `www` and waits for it to end.
    async fn run(&self, body: serde_json::Value) -> serde_json::Value {
        let created = self.api("POST", "/api/jobs", Some(body)).await;
        let id = created["id"]
            .as_str()
            .unwrap_or_else(|| panic!("job not created: {created}"))
            .to_string();
        for _ in 0..3000 {
            let job = self.api("GET", &format!("/api/jobs/{id}"), None).await;
            if matches!(
                job["state"].as_str(),
                Some("committed" | "failed" | "refused" | "cancelled")
            ) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} never finished");
    }

    async fn stop(&mut self, name: &str) {
        let slot = self.members.iter_mut().find(|(n, _)| n == name).expect("a member");
        if let Some(member) = slot.1.take() {
            member.discovery.stop().await;
            member.agent.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_elects_one_leader_reports_its_members_and_loses_a_stopped_one() {
    let channel = test_channel();
    if let Err(reason) = loopback_multicast_works(&channel).await {
        eprintln!("skipping: IP multicast on the loopback interface does not work here ({reason})");
        return;
    }
    let mut fleet = Fleet::new(channel).await;
    let within = Timers::default().scaled_down(SPEED).settle_bound() * 3
        + RegistrationTimers::default().scaled_down(SPEED).converge_bound() * 3;
    let everyone: BTreeSet<String> = NODES.iter().map(|n| n.to_string()).collect();
    let leader = fleet.wait_for_members(&everyone, within).await;

    // The API shows the leader with its address and URL, and the members with their resources.
    let view = fleet.api("GET", &format!("/api/segments/{SEGMENT}"), None).await;
    assert_eq!(view["leader"], leader.as_str());
    assert_eq!(view["location"], "Europe/London");
    let leader_entry = view["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["name"] == leader.as_str()))
        .expect("the leader is a member");
    assert!(
        leader_entry["profile"]["url"]
            .as_str()
            .is_some_and(|url| url.starts_with("http://127.0.0.1:"))
    );
    assert!(leader_entry["profile"]["cpus"].as_u64().is_some_and(|cpus| cpus >= 1));
    let status = fleet.api("GET", "/status", None).await;
    assert_eq!(status["segments"][0]["leader"], leader.as_str());
    assert!(
        status["segment_reports"]["taken"]
            .as_u64()
            .is_some_and(|taken| taken >= 1)
    );
    // The tree's directory has the segment too.
    let segment = fleet
        .mover
        .role
        .segments()
        .segment_of("n1")
        .expect("n1 is in a segment");
    assert_eq!(segment.leader.map(|l| l.name), Some(leader.clone()));

    // A forged report is refused and counted.
    let other = SecretKey::generate().expect("key");
    let forged = SegmentMessage {
        segment: SEGMENT.into(),
        sender: "mallory".into(),
        address: "127.0.0.1:9".parse().expect("address"),
        term: 1_000,
        incarnation: 1,
        seq: 1,
        sent_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        body: SegmentBody::SegmentReport(SegmentReport {
            kind: ReportKind::Segment,
            location: String::new(),
            members: vec![Member {
                name: "mallory".into(),
                address: "127.0.0.1:9".parse().expect("address"),
                incarnation: 1,
                profile: Profile::default(),
            }],
            appeared: vec![],
            departed: vec![],
        }),
    };
    let (status, _) = fleet
        .request(
            "POST",
            "/api/segments/report",
            Bytes::from(segment::encode(&other, &forged)),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let status = fleet.api("GET", "/status", None).await;
    assert_eq!(status["segment_reports"]["refused"]["bad-tag"], 1);
    assert_eq!(
        fleet.segment().await.map(|s| s.0),
        Some(leader.clone()),
        "nothing changed"
    );

    // A site published to the segment's nodes (through its leader, which the mover knows from the report).
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 20, "first");
    let body = serde_json::json!({ "kind": "publish", "site": "www", "staging": staging.display().to_string() });
    let job = fleet.run(body).await;
    assert_eq!(job["state"], "committed", "{job}");

    // A member new to its segment, on a site it hosts, is caught up: a leader reports a node the mover has
    // never heard from (reports are signed with the cluster key).
    let newcomer = SegmentMessage {
        segment: "annex".into(),
        sender: "ghost".into(),
        address: "127.0.0.1:9".parse().expect("address"),
        term: 1,
        incarnation: 9,
        seq: 1,
        body: SegmentBody::SegmentReport(SegmentReport {
            kind: ReportKind::Segment,
            location: "UTC".into(),
            members: vec![Member {
                name: "ghost".into(),
                address: "127.0.0.1:9".parse().expect("address"),
                incarnation: 9,
                profile: Profile {
                    url: "http://127.0.0.1:9".into(),
                    cpus: 2,
                    ..Profile::default()
                },
            }],
            appeared: vec![],
            departed: vec![],
        }),
        ..forged.clone()
    };
    let (status, answer) = fleet
        .request(
            "POST",
            "/api/segments/report",
            Bytes::from(segment::encode(&fleet.key, &newcomer)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer));
    let answer = segment::decode(&fleet.key, &answer, &Default::default()).expect("a tagged answer");
    assert!(matches!(&answer.message().body, SegmentBody::ReportAnswer(a) if a.seq == 1));
    let (status, _) = fleet
        .request(
            "POST",
            "/api/segments/report",
            Bytes::from(segment::encode(&fleet.key, &newcomer)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "a replayed report is refused");

    // A second machine under a node's name (another instance id) is neither taken as a segment's leader
    // nor listed as a member of one.
    let impostor = Member {
        name: "n1".into(),
        address: "127.0.0.1:9".parse().expect("address"),
        incarnation: 11,
        profile: Profile {
            url: "http://127.0.0.1:9".into(),
            instance: tern_wire::mover::new_instance(),
            ..Profile::default()
        },
    };
    let report_of = |segment: &str, sender: &str, incarnation: u64, members: Vec<Member>| SegmentMessage {
        segment: segment.into(),
        sender: sender.into(),
        incarnation,
        body: SegmentBody::SegmentReport(SegmentReport {
            kind: ReportKind::Segment,
            location: "UTC".into(),
            members,
            appeared: vec![],
            departed: vec![],
        }),
        ..newcomer.clone()
    };
    let as_leader = report_of("annex2", "n1", 11, vec![impostor.clone()]);
    let (status, answer) = fleet
        .request(
            "POST",
            "/api/segments/report",
            Bytes::from(segment::encode(&fleet.key, &as_leader)),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&answer));
    let ghost = Member {
        name: "ghost3".into(),
        incarnation: 12,
        ..impostor.clone()
    };
    let as_member = report_of("annex3", "ghost3", 12, vec![ghost, impostor]);
    let (status, answer) = fleet
        .request(
            "POST",
            "/api/segments/report",
            Bytes::from(segment::encode(&fleet.key, &as_member)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer));
    let annex3 = fleet.mover.role.segments().view("annex3").expect("annex3 recorded");
    let listed: Vec<&str> = annex3.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(listed, ["ghost3"], "n1's name stays with n1");
    assert_eq!(
        fleet.mover.role.segments().segment_of("n1").map(|s| s.name),
        Some(SEGMENT.to_string())
    );
    let jobs = fleet.api("GET", "/api/jobs?limit=50", None).await;
    let caught_up = jobs.as_array().is_some_and(|jobs| {
        jobs.iter()
            .any(|job| job["kind"] == "synchronise" && job["site"] == "www" && job.to_string().contains("ghost"))
    });
    assert!(caught_up, "a synchronise job brings the new member up to date: {jobs}");

    // A member stops: its keep-alives run out, and a network segment report removes it.
    let stopped = NODES.iter().find(|n| **n != leader).expect("a member").to_string();
    fleet.stop(&stopped).await;
    let remaining: BTreeSet<String> = everyone.iter().filter(|n| **n != stopped).cloned().collect();
    let after = fleet.wait_for_members(&remaining, within).await;
    assert_eq!(after, leader, "a member leaving does not change the leader");
    let (_, _, kind) = fleet.segment().await.expect("segment");
    assert!(kind == "network-segment" || kind == "segment", "{kind}");
    let history = fleet.api("GET", "/api/history?limit=100", None).await;
    let offline = history.as_array().is_some_and(|entries| {
        entries.iter().any(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("went offline {stopped}")))
        })
    });
    assert!(offline, "the history says the member went offline: {history}");

    // The administrator overrides the leader: the answers to the leader's reports carry it to the nodes.
    let chosen = remaining
        .iter()
        .find(|n| **n != leader)
        .expect("another member")
        .clone();
    let refused = fleet
        .api(
            "POST",
            &format!("/api/segments/{SEGMENT}/leader"),
            Some(serde_json::json!({ "leader": stopped })),
        )
        .await;
    assert!(
        refused["error"].as_str().is_some_and(|e| e.contains("not a member")),
        "{refused}"
    );
    let view = fleet
        .api(
            "POST",
            &format!("/api/segments/{SEGMENT}/leader"),
            Some(serde_json::json!({ "leader": chosen })),
        )
        .await;
    assert_eq!(view["leader_override"], chosen.as_str());
    // No answer shows a node's instance id (it holds the node's name against other machines).
    let members = view["members"].as_array().expect("members");
    assert!(!members.is_empty());
    assert!(
        members
            .iter()
            .all(|member| member["profile"]["instance"].as_str().unwrap_or("").is_empty()),
        "{view}"
    );
    // A body without `leader`, or with another field, is refused rather than read as a cleared override.
    for body in [
        serde_json::json!({}),
        serde_json::json!({ "leder": chosen }),
        serde_json::json!({ "leader": chosen, "x": 1 }),
    ] {
        let refused = fleet
            .api("POST", &format!("/api/segments/{SEGMENT}/leader"), Some(body.clone()))
            .await;
        assert!(
            refused["error"]
                .as_str()
                .is_some_and(|e| e.contains("with no other field")),
            "{body}: {refused}"
        );
    }
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (mover_leader, members, _) = fleet.segment().await.expect("segment");
        if mover_leader == chosen && members == remaining && fleet.running_members_follow(&chosen) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the override did not move the leadership to {chosen}: the mover shows {mover_leader}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for name in NODES {
        fleet.stop(name).await;
    }
}
