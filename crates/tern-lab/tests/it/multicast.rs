//! Local distribution on real processes and real UDP multicast (issue 14's lab acceptance; seed 004,
//! "local distribution"): one LAN segment of nine `tern node` processes started with `--data-channel`,
//! electing their group leader on the control channel; every node drops 2% of what the data channel brings
//! (`--data-loss 0.02`, the in-process test knob: the lab's kernel has no netem).
//!
//! A publish of a 50 MB site goes from the mover to the leader, and from the leader to its eight members
//! once on the data channel, repaired where they lost frames:
//! - every node's `live` tree is identical to staging after the commit, and every node committed;
//! - the leader's link carried about one copy of the assignment plus the repairs, by the kernel's counter of
//!   its veth (HTTP unicast would send eight copies);
//! - the leader's `/metrics` show the sessions, the repair passes and eight members' worth of goodput; each
//!   member's show the session it received and the frames it rebuilt from parity frames;
//! - with the links' MTU then lowered to 1400, below a frame's datagram, a change still goes by the data
//!   channel (frames one per call, fragmented by IP).
//!
//! Needs root and network namespaces, and the `tern` binary beside the tests (`cargo build -p tern`);
//! skips with a message without them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tern_lab::fleet::{Fleet, FleetSpec, noise};
use tern_node::election::Timers;
use tern_node::registration::RegistrationTimers;

/// The seed's discovery timers, this many times faster.
const SPEED: u32 = 10;
const SITE: &str = "www";
/// The leader and its eight members.
const NODES: usize = 9;
/// Files of 1 MiB in the site: a 50 MB assignment.
const MEDIA_FILES: usize = 50;
const DATA_CHANNEL: &str = "239.192.77.2:7300";

fn write_site(staging: &Path) {
    for page in 0..20 {
        let path = staging.join(format!("pages/p{page}.html"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, format!("<h1>page {page}</h1>\n").repeat(40)).expect("write");
    }
    for file in 0..MEDIA_FILES {
        let path = staging.join(format!("media/m{file}.bin"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, noise(file as u64 + 1, 1 << 20)).expect("write");
    }
}

/// Every file under `root`: path → (size, blake3 hash).
fn digest(root: &Path) -> BTreeMap<String, (u64, String)> {
    match tern_tree::scan(root, &tern_tree::Snapshot::new()) {
        Ok(scanned) => scanned
            .snapshot
            .into_iter()
            .map(|(path, state)| (path, (state.len, state.hash)))
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}

#[test]
fn one_segment_of_eight_members_gets_a_50_mb_publish_by_multicast_with_2_percent_loss() {
    let Some(tern) = crate::lab_tern() else {
        return;
    };
    // Nine nodes each spool and then hold the 52 MB site (measured peak: about 0.8 GB).
    if !crate::disk_for(1536 << 20, "nine nodes holding a 52 MB site") {
        return;
    }
    let area = tempfile::tempdir().expect("tempdir");
    let spec = FleetSpec {
        tern,
        work: area.path().join("fleet"),
        segments: 1,
        nodes_per_segment: NODES,
        rate_mbit: None,
        discovery: true,
        discovery_speed: SPEED,
        quorum: None,
        log: "info".into(),
    };
    let node_args: Vec<String> = [
        "--data-channel",
        DATA_CHANNEL,
        "--data-rate",
        "200",
        "--data-report-interval",
        "100ms",
        "--data-loss",
        "0.02",
    ]
    .map(String::from)
    .to_vec();
    let election = Timers::default().scaled_down(SPEED);
    let registration = RegistrationTimers::default().scaled_down(SPEED);
    let leader_bound = election.settle_bound() + registration.report_max_wait * 2 + registration.converge_bound();
    let fleet = Fleet::start_with(spec, "tree", &node_args).expect("the fleet starts");
    let created = fleet.lab.created_names();
    fleet
        .wait_registered(NODES, Duration::from_secs(30))
        .expect("every node registers");
    let leaders = fleet
        .wait_leaders(leader_bound)
        .expect("the segment elects a leader and reports its members");
    let leader = leaders["s1"].clone();
    println!("leader: {leader}");

    let staging = area.path().join("staging");
    write_site(&staging);
    let expected = digest(&staging);
    let link_before = fleet.lab.link_bytes(&leader).expect("counters");
    let id = fleet.submit_publish(SITE, &staging).expect("submitted");
    let job = fleet.wait_job(&id, Duration::from_secs(180)).expect("the job ends");
    assert_eq!(job["state"], "committed", "{job}");
    let link_sent = fleet.lab.link_bytes(&leader).expect("counters").sent - link_before.sent;
    let nodes = job["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), NODES, "{job}");
    assert!(nodes.iter().all(|node| node["state"] == "committed"), "{job}");
    for name in fleet.spec.node_names() {
        assert_eq!(
            digest(&fleet.live(&name, SITE)),
            expected,
            "{name}'s live tree is staging"
        );
    }

    let trees = fleet.trees_of(&id).expect("status");
    let prepare = trees
        .iter()
        .find(|tree| tree["phase"] == "prepare")
        .unwrap_or_else(|| panic!("no prepare tree: {trees:?}"));
    let size = prepare["size"].as_u64().expect("size") as f64;
    let metric = |name: &str, metric: &str| fleet.node_metric(name, metric).expect("node metrics");
    let sessions = metric(&leader, "tern_node_mctp_sessions");
    let passes = metric(&leader, "tern_node_mctp_passes");
    let repaired = metric(&leader, "tern_node_mctp_frames_repaired");
    let goodput = metric(&leader, "tern_node_mctp_goodput_bytes");
    let data_sent = metric(&leader, "tern_node_mctp_sent_bytes");
    let copies = link_sent as f64 / size;
    println!(
        "assignment {size} bytes; the leader's link carried {link_sent} bytes ({copies:.3} copies; HTTP unicast \
         would send {} copies); data channel: {sessions} sessions, {passes} passes, {repaired} frames repaired, \
         {data_sent} bytes sent, {goodput} bytes of goodput",
        NODES - 1
    );
    assert!(sessions >= 2.0, "prepare and commit each went as a session: {sessions}");
    assert!(repaired > 0.0, "2% loss needs repairs");
    assert!(passes > sessions, "repair passes were sent: {passes}");
    assert!(
        goodput >= size * (NODES - 1) as f64,
        "every member took the prepare from the data channel: {goodput} for {size} x {}",
        NODES - 1
    );
    for name in fleet.spec.node_names().iter().filter(|name| **name != leader) {
        assert!(
            metric(name, "tern_node_mctp_received") >= 1.0,
            "{name} received a session"
        );
        assert!(
            metric(name, "tern_node_mctp_refused") > 0.0,
            "{name} dropped some datagrams on purpose"
        );
        assert!(
            metric(name, "tern_node_mctp_frames_rebuilt") > 0.0,
            "{name} rebuilt the frames it lost from parity frames"
        );
        // However an assignment came, it is counted (the data channel's were not, found by a trial).
        assert!(
            metric(name, "tern_node_assignments") >= metric(name, "tern_node_mctp_received"),
            "{name} counts the assignments it applied from the data channel"
        );
    }
    assert!(
        (1.0..=1.6).contains(&copies),
        "the leader's link carried about one copy plus the repairs: {copies:.3}"
    );

    // The segment's links at MTU 1400 (a tunnel's), below a frame's 1450-byte datagram: a burst cannot
    // go segmented, so frames go one by one, fragmented by IP, and a change still arrives by the data
    // channel (found by a trial: every segmented send was refused and the session never ended).
    for name in fleet.spec.node_names() {
        fleet.lab.set_mtu(&name, 1400).expect("MTU");
    }
    for file in 0..3 {
        std::fs::write(
            staging.join(format!("media/m{file}.bin")),
            noise(1000 + file as u64, 1 << 20),
        )
        .expect("change");
    }
    let expected = digest(&staging);
    let goodput_before = goodput;
    let id = fleet.submit_publish(SITE, &staging).expect("submitted");
    let job = fleet.wait_job(&id, Duration::from_secs(120)).expect("the job ends");
    assert_eq!(job["state"], "committed", "{job}");
    for name in fleet.spec.node_names() {
        assert_eq!(
            digest(&fleet.live(&name, SITE)),
            expected,
            "{name}'s live tree is staging at MTU 1400"
        );
    }
    let log = std::fs::read_to_string(fleet.spec.work.join("logs").join(format!("{leader}.log"))).expect("log");
    assert!(
        log.contains("longer than the path's MTU"),
        "the leader said why it stopped segmenting"
    );
    let goodput = metric(&leader, "tern_node_mctp_goodput_bytes");
    assert!(
        goodput >= goodput_before + 3.0 * (1 << 20) as f64 * (NODES - 1) as f64,
        "the change went to every member by the data channel at MTU 1400: {goodput} after {goodput_before}"
    );

    drop(fleet);
    crate::assert_nothing_left(created);
}
