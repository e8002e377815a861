//! Cache communities found by multicast (issue 11's lab acceptance; seed `002_82dbe7a209926976.txt`, claims
//! 54–62): two LAN segments, four `tern edge --community` processes in one and two in the other, every one
//! with the same community name, cluster key and `--discover GROUP:PORT`, and no registry.
//!
//! - The four edges of segment one find each other with the `CRMSG_WAKEUP` probe (and the masters'
//!   periodic `CRMSG_WAKEUP`, which merges the communities that edges starting at the same moment each
//!   created) and form one community: one master, four peers, one epoch, as every edge's `/status` shows.
//! - The probe is multicast with TTL 1 and the segments are joined only by a router, so the two edges of
//!   segment two never hear it: they form their own community of two, with its own master, and no edge of
//!   one segment is ever listed in the other's community.
//! - Segment two's hosts have no default route (a LAN-only segment): an edge joins the discovery group on
//!   the interface of its `--peer-listen` address, not on the kernel's route to the group, which such a
//!   host does not have (the join failed there with "No such device" and the edge did not start).
//!
//! Needs root and network namespaces, and the `tern` binary beside the tests (`cargo build -p tern`);
//! skips with a message without them.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tern_lab::{HostProcess, Lab, LabSpec, Mode};

/// The discovery group every edge of both segments probes on.
const GROUP: &str = "239.77.11.1:7401";
const COMMUNITY: &str = "site";
/// Each edge's ports, the same in every host (each host is its own namespace).
const LISTEN_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9080;
const PEER_PORT: u16 = 7400;
/// Longest wait for a segment's community to settle: the probe threshold (1 s), then the masters'
/// periodic `CRMSG_WAKEUP` (every 1 s) merging the communities created at the same moment, several times
/// over for a loaded machine.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);
const SEGMENT_ONE: [&str; 4] = ["a1", "a2", "a3", "a4"];
const SEGMENT_TWO: [&str; 2] = ["b1", "b2"];

/// What one edge's `/status` says of its community.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    host: String,
    role: String,
    master: Option<String>,
    epoch: Option<String>,
    peers: BTreeSet<String>,
}

/// `GET /status` from `admin`, its `community` object; `None` when it does not answer (yet).
fn community_of(admin: SocketAddr) -> Option<serde_json::Value> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    // HTTP/1.0: the answer is the body as it is (never chunked), and the connection closes after it.
    write!(stream, "GET /status HTTP/1.0\r\nHost: {admin}\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    let status: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(status["community"].clone())
}

fn view_of(lab: &Lab, host: &str) -> Option<View> {
    let community = community_of(SocketAddr::from((lab.host(host).addr, ADMIN_PORT)))?;
    let text = |field: &str| community[field].as_str().map(str::to_string);
    Some(View {
        host: host.to_string(),
        role: text("role")?,
        master: text("master"),
        epoch: text("epoch"),
        peers: community["peers"]
            .as_array()?
            .iter()
            .filter_map(|peer| peer["name"].as_str().map(str::to_string))
            .collect(),
    })
}

/// The peer names of `hosts` (an edge's name is its `--peer-listen` address).
fn names_of(lab: &Lab, hosts: &[&str]) -> BTreeSet<String> {
    hosts
        .iter()
        .map(|host| SocketAddr::from((lab.host(host).addr, PEER_PORT)).to_string())
        .collect()
}

/// Whether `views` (one per host of a segment) are one settled community of exactly `members`: one
/// master among them, named by all, one epoch, every member listed and no one else.
fn settled(views: &[Option<View>], members: &BTreeSet<String>) -> bool {
    let Some(views) = views.iter().cloned().collect::<Option<Vec<View>>>() else {
        return false;
    };
    let Some(first) = views.first() else {
        return false;
    };
    let masters = views.iter().filter(|view| view.role == "master").count();
    let master_named = first.master.as_ref().is_some_and(|master| members.contains(master));
    masters == 1
        && master_named
        && first.epoch.is_some()
        && views.iter().all(|view| {
            view.master == first.master
                && view.epoch == first.epoch
                && &view.peers == members
                && matches!(view.role.as_str(), "master" | "member")
        })
}

/// Waits until each segment is its own settled community; returns the last views of both.
fn wait_settled(lab: &Lab, one: &BTreeSet<String>, two: &BTreeSet<String>) -> (Vec<View>, Vec<View>) {
    let started = Instant::now();
    loop {
        let views_one: Vec<Option<View>> = SEGMENT_ONE.iter().map(|host| view_of(lab, host)).collect();
        let views_two: Vec<Option<View>> = SEGMENT_TWO.iter().map(|host| view_of(lab, host)).collect();
        if settled(&views_one, one) && settled(&views_two, two) {
            let all = |views: Vec<Option<View>>| views.into_iter().flatten().collect();
            return (all(views_one), all(views_two));
        }
        assert!(
            started.elapsed() < SETTLE_WITHIN,
            "the segments did not each settle into one community within {SETTLE_WITHIN:?}:\n\
             segment one {views_one:#?}\nsegment two {views_two:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `tern edge` in `host`, its log in `logs/HOST.log`.
fn start_edge(lab: &Lab, tern: &str, host: &str, key: &Path, logs: &Path) -> HostProcess {
    let addr = lab.host(host).addr;
    let peer = SocketAddr::from((addr, PEER_PORT)).to_string();
    let listen = format!("0.0.0.0:{LISTEN_PORT}");
    let admin = format!("0.0.0.0:{ADMIN_PORT}");
    let log = std::fs::File::create(logs.join(format!("{host}.log"))).expect("log file");
    let log_err = log.try_clone().expect("log file");
    let args = [
        "edge",
        "--listen",
        &listen,
        "--admin",
        &admin,
        // Nothing is requested through the edges: their origin is never asked.
        "--origin",
        "http://127.0.0.1:9",
        "--community",
        COMMUNITY,
        "--cluster-key",
        key.to_str().expect("utf-8 path"),
        "--peer-listen",
        &peer,
        "--discover",
        GROUP,
        "--log",
        "info",
    ];
    let child = lab
        .command(host, tern, &args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .expect("tern edge starts");
    HostProcess {
        child,
        host: host.to_string(),
    }
}

/// Prints every edge's log when the test fails (the processes are killed by then; their logs stay).
struct LogsOnFailure<'a>(&'a Path);

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for host in SEGMENT_ONE.iter().chain(SEGMENT_TWO.iter()) {
            let log = std::fs::read_to_string(self.0.join(format!("{host}.log"))).unwrap_or_default();
            eprintln!("--- {host} ---\n{log}");
        }
    }
}

#[test]
fn edges_of_a_segment_find_each_other_by_multicast_and_the_other_segment_does_not_hear_them() {
    let Some(tern) = crate::lab_tern() else {
        return;
    };
    let tern = tern.to_str().expect("utf-8 path").to_string();
    let area = tempfile::tempdir().expect("tempdir");
    let logs = area.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    let key = area.path().join("cluster.key");
    let keygen = std::process::Command::new(&tern)
        .args(["keygen", key.to_str().expect("utf-8 path")])
        .output()
        .expect("tern keygen");
    assert!(
        keygen.status.success(),
        "tern keygen: {}",
        String::from_utf8_lossy(&keygen.stderr)
    );

    // Printed last on a failure: dropped after the lab and its processes (locals drop in reverse order).
    let _logs = LogsOnFailure(&logs);
    let mut spec = LabSpec::new().segment("a").segment("b");
    for host in SEGMENT_ONE {
        spec = spec.host(host, "a");
    }
    for host in SEGMENT_TWO {
        spec = spec.host(host, "b");
    }
    let lab = match spec.build() {
        Ok(lab) if lab.mode() == Mode::Namespaces => lab,
        Ok(_) => {
            eprintln!("skipped: the lab fell back to loopback mode, which has no segments to keep multicast in");
            return;
        }
        Err(error) => {
            eprintln!("skipped: the lab's namespaces could not be made: {error}");
            return;
        }
    };
    let created = lab.created_names();
    for host in SEGMENT_TWO {
        let removed = lab.run(host, "ip", &["route", "del", "default"]).expect("ip route");
        assert!(
            removed.status.success(),
            "{host}: {}",
            String::from_utf8_lossy(&removed.stderr)
        );
    }
    let one = names_of(&lab, &SEGMENT_ONE);
    let two = names_of(&lab, &SEGMENT_TWO);

    // Every edge starts at the same moment: each probes, hears no master, and creates its community;
    // the masters' periodic WAKEUP then merges those of one segment.
    let edges: Vec<HostProcess> = SEGMENT_ONE
        .iter()
        .chain(SEGMENT_TWO.iter())
        .map(|host| start_edge(&lab, &tern, host, &key, &logs))
        .collect();
    for host in SEGMENT_ONE.iter().chain(SEGMENT_TWO.iter()) {
        lab.wait_listening(host, ADMIN_PORT, Duration::from_secs(20))
            .expect("the edge's admin listener answers");
    }

    let (views_one, views_two) = wait_settled(&lab, &one, &two);
    let master_one = views_one[0].master.clone().expect("a master");
    let master_two = views_two[0].master.clone().expect("a master");
    println!(
        "segment one: master {master_one}, epoch {:?}, peers {one:?}",
        views_one[0].epoch
    );
    println!(
        "segment two: master {master_two}, epoch {:?}, peers {two:?}",
        views_two[0].epoch
    );
    assert!(one.contains(&master_one), "segment one's master is one of its edges");
    assert!(two.contains(&master_two), "segment two's master is one of its edges");
    assert!(
        views_two.iter().all(|view| view.peers.is_disjoint(&one)),
        "no edge of segment one is listed in segment two: {views_two:#?}"
    );

    // And it stays so: several more of the masters' periodic WAKEUPs (every 1 s) go out on both segments,
    // and neither community hears the other.
    std::thread::sleep(Duration::from_secs(3));
    let (again_one, again_two) = wait_settled(&lab, &one, &two);
    assert_eq!(
        again_one[0].master.as_ref(),
        Some(&master_one),
        "segment one keeps its master"
    );
    assert_eq!(
        again_two[0].master.as_ref(),
        Some(&master_two),
        "segment two keeps its master"
    );
    assert!(
        again_two.iter().all(|view| view.peers.is_disjoint(&one))
            && again_one.iter().all(|view| view.peers.is_disjoint(&two)),
        "each segment lists only its own edges: {again_one:#?} {again_two:#?}"
    );

    drop(edges);
    drop(lab);
    crate::assert_nothing_left(created);
}
