//! The content mover's store-and-forward tree on real processes (issue 13's lab acceptance; seed 004,
//! discovery and global distribution): a mover and three LAN segments of four `tern node` processes, every
//! host's link limited to 40 Mbit/s, each segment electing its group leader by real UDP multicast on its
//! bridge (timers ten times the seed's speed, `tern node --discovery-speed 10`).
//!
//! - One leader per segment, as the mover's `GET /api/segments` shows it, with every node a member.
//! - A publish reaches every node through the tree (the mover's status shows the tree's edges, and no node
//!   was sent a copy by the mover itself) and every `live` tree is identical to staging; the mover sends
//!   about one copy of the assignment, by its own counter and by the kernel's counter of its link.
//! - `kill -9` of the leader the mover serves first, while it is receiving and forwarding the next publish:
//!   its segment elects a new leader within the election's configured bound, the job commits on the eleven
//!   other nodes (`--quorum 11`), and the killed node, restarted, is caught up.
//!
//! Needs root and network namespaces, and the `tern` binary beside the tests (`cargo build -p tern`);
//! skips with a message without them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tern_lab::fleet::{Fleet, FleetSpec, noise, segment_of};
use tern_node::election::Timers;
use tern_node::registration::RegistrationTimers;

/// The seed's discovery timers, this many times faster.
const SPEED: u32 = 10;
/// Every host's link, Mbit/s: slow enough that a publish takes seconds, so a kill lands in the middle.
const RATE_MBIT: u32 = 40;
const SITE: &str = "www";
const NODES: usize = 12;

/// A site of 50 pages and `media` incompressible files of 1 MiB, all named by `version`.
fn write_site(staging: &Path, version: u64, media: usize) {
    let _ = std::fs::remove_dir_all(staging);
    for page in 0..50 {
        let path = staging.join(format!("pages/p{page}.html"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, format!("<h1>page {page}, version {version}</h1>\n").repeat(40)).expect("write");
    }
    for file in 0..media {
        let path = staging.join(format!("media/v{version}-{file}.bin"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, noise(version * 1000 + file as u64, 1 << 20)).expect("write");
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

/// The state of every node in a job record.
fn node_states(job: &serde_json::Value) -> BTreeMap<String, String> {
    job["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|node| {
                    (
                        node["node"].as_str().unwrap_or_default().to_string(),
                        node["state"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn tree_of<'a>(trees: &'a [serde_json::Value], phase: &str) -> &'a serde_json::Value {
    trees
        .iter()
        .find(|tree| tree["phase"] == phase && tree["running"] == false)
        .unwrap_or_else(|| panic!("no finished {phase} tree: {trees:?}"))
}

/// Waits for job `id` polling slowly (the answers leave through the mover's link, which is measured).
fn wait_job(fleet: &Fleet, id: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let job = fleet.job(id).expect("the mover answers");
        if matches!(
            job["state"].as_str(),
            Some("committed" | "failed" | "refused" | "cancelled")
        ) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not end within {timeout:?}: {job}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn three_segments_elect_leaders_and_publishes_go_through_the_tree_even_with_a_leader_killed() {
    let Some(tern) = crate::lab_tern() else {
        return;
    };
    let area = tempfile::tempdir().expect("tempdir");
    let spec = FleetSpec {
        tern,
        work: area.path().join("fleet"),
        segments: 3,
        nodes_per_segment: 4,
        rate_mbit: Some(RATE_MBIT),
        discovery: true,
        discovery_speed: SPEED,
        quorum: Some(NODES - 1),
        log: "info".into(),
    };
    let election = Timers::default().scaled_down(SPEED);
    let registration = RegistrationTimers::default().scaled_down(SPEED);
    // A segment without its leader: the election settles, and the new leader's registration report
    // round ends with its segment report to the mover.
    let leader_bound = election.settle_bound() + registration.report_max_wait * 2;
    let mut fleet = Fleet::start(spec, "tree").expect("the fleet starts");
    let created = fleet.lab.created_names();
    fleet
        .wait_registered(NODES, Duration::from_secs(30))
        .expect("every node registers");

    // One leader per segment, every node a member; and it stays so.
    let leaders = fleet
        .wait_leaders(leader_bound + registration.converge_bound())
        .expect("every segment elects a leader and reports its members");
    assert_eq!(leaders.len(), 3, "{leaders:?}");
    for (segment, leader) in &leaders {
        assert_eq!(segment_of(leader), segment, "{leader} leads its own segment");
    }
    std::thread::sleep(election.la_period * 4);
    let again = fleet.segments().expect("segments");
    for (segment, leader) in &leaders {
        assert_eq!(&again[segment].leader, leader, "the leadership of {segment} is stable");
        assert_eq!(again[segment].members.len(), 4, "{segment}: {:?}", again[segment]);
    }
    println!("leaders: {leaders:?}");

    // A publish through the tree: one copy leaves the mover.
    let staging = area.path().join("staging");
    write_site(&staging, 1, 6);
    let expected = digest(&staging);
    let link_before = fleet.lab.link_bytes("mover").expect("counters");
    let counted_before = fleet.metric("tern_mover_sent_bytes").expect("metrics");
    let id = fleet.submit_publish(SITE, &staging).expect("submitted");
    let job = wait_job(&fleet, &id, Duration::from_secs(120));
    assert_eq!(job["state"], "committed", "{job}");
    let link_sent = fleet.lab.link_bytes("mover").expect("counters").sent - link_before.sent;
    let counted = fleet.metric("tern_mover_sent_bytes").expect("metrics") - counted_before;
    let states = node_states(&job);
    assert_eq!(states.len(), NODES, "{job}");
    assert!(states.values().all(|state| state == "committed"), "{job}");
    for name in fleet.spec.node_names() {
        assert_eq!(
            digest(&fleet.live(&name, SITE)),
            expected,
            "{name}'s live tree is staging"
        );
    }
    let trees = fleet.trees_of(&id).expect("status");
    let prepare = tree_of(&trees, "prepare");
    let size = prepare["size"].as_u64().expect("size");
    let edges = prepare["edges"].as_array().expect("edges");
    println!(
        "publish 1: assignment {size} bytes; the mover counted {counted} bytes sent, its link carried {link_sent} \
         ({:.2} copies; the star would send {NODES}); tree {edges:?}",
        link_sent as f64 / size as f64
    );
    assert_eq!(edges.len(), 3, "one edge per leader: {edges:?}");
    assert_eq!(edges[0][0], "mover", "{edges:?}");
    assert!(
        edges[1..].iter().all(|edge| edge[0] != "mover"),
        "leaders serve leaders: {edges:?}"
    );
    assert_eq!(prepare["mover_bytes"].as_u64(), Some(size), "the mover served one copy");
    assert!(
        prepare["segments"]
            .as_object()
            .is_some_and(|segments| segments.values().all(|state| state == "reported")),
        "{prepare}"
    );
    assert!(
        job["nodes"]
            .as_array()
            .is_some_and(|nodes| nodes.iter().all(|node| node["bytes"] == 0)),
        "the mover sent no node a copy of its own: {job}"
    );
    assert!(
        (size as f64) <= counted && counted <= size as f64 * 1.2,
        "the mover's counter shows one copy: {counted} for {size}"
    );
    assert!(
        size <= link_sent && (link_sent as f64) <= size as f64 * 1.5,
        "the mover's link carried about one copy: {link_sent} for {size}"
    );

    // The next publish: the leader the mover serves first is killed while it receives and forwards.
    write_site(&staging, 2, 6);
    let expected = digest(&staging);
    let id = fleet.submit_publish(SITE, &staging).expect("submitted");
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let running = fleet
            .trees_of(&id)
            .expect("status")
            .into_iter()
            .find(|tree| tree["phase"] == "prepare" && tree["running"] == true);
        let first = running.as_ref().and_then(|tree| {
            let target = tree["edges"].as_array()?.first()?[1].as_str()?.to_string();
            (tree["leaders"][&target] == "holding").then_some(target)
        });
        if let Some(first) = first {
            break first;
        }
        assert!(Instant::now() < deadline, "the prepare tree never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    // A third of a copy in at 40 Mbit/s: it is receiving, and serving the next leader as it does.
    std::thread::sleep(Duration::from_millis(400));
    let victim_segment = segment_of(&victim).to_string();
    fleet.kill_node(&victim).expect("kill -9");
    let killed = Instant::now();
    println!("killed {victim}, the first leader, mid-publish");
    let new_leader = loop {
        let seen = fleet.segments().expect("segments");
        let leader = &seen[&victim_segment].leader;
        if leader != &victim {
            break leader.clone();
        }
        assert!(
            killed.elapsed() <= leader_bound,
            "no new leader in {victim_segment} within {leader_bound:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "{victim_segment} elected {new_leader} {:.2} s after the kill (bound {:.2} s)",
        killed.elapsed().as_secs_f64(),
        leader_bound.as_secs_f64()
    );
    let job = wait_job(&fleet, &id, Duration::from_secs(120));
    let states = node_states(&job);
    assert_eq!(states[&victim], "failed", "{job}");
    for name in fleet.spec.node_names().iter().filter(|name| **name != victim) {
        assert_eq!(states[name], "committed", "{name}: {job}");
        assert_eq!(
            digest(&fleet.live(name, SITE)),
            expected,
            "{name}'s live tree is the new staging"
        );
    }
    let trees = fleet.trees_of(&id).expect("status");
    let prepare = tree_of(&trees, "prepare");
    println!(
        "publish 2: {} ({:?}); tree {} {}",
        job["state"], job["error"], prepare["edges"], prepare["leaders"]
    );
    assert!(
        prepare["leaders"][&victim]
            .as_str()
            .is_some_and(|state| state.starts_with("failed")),
        "the tree gave up on {victim}: {prepare}"
    );
    assert_eq!(prepare["leaders"][&new_leader], "holding", "{prepare}");
    assert_eq!(prepare["segments"][&victim_segment], "reported", "{prepare}");

    // The killed node comes back: it rejoins its segment and is caught up.
    fleet.start_node(&victim).expect("restart");
    let deadline = Instant::now() + Duration::from_secs(60);
    while digest(&fleet.live(&victim, SITE)) != expected {
        assert!(Instant::now() < deadline, "{victim} was not caught up");
        std::thread::sleep(Duration::from_millis(100));
    }
    fleet
        .wait_leaders(leader_bound + registration.converge_bound())
        .expect("the restarted node is a member again");
    println!("{victim} restarted and caught up");

    drop(fleet);
    crate::assert_nothing_left(created);
}
