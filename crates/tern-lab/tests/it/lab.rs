//! The lab's own acceptance: segments, multicast scope, isolation and healing, rate limits, clean-up.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use tern_lab::topology::{namespaces, namespaces_available};
use tern_lab::{LabError, LabSpec, Mode};

const LAB: &str = env!("CARGO_BIN_EXE_tern-lab");

fn spec() -> LabSpec {
    LabSpec::new()
        .segment("a")
        .segment("b")
        .host("a1", "a")
        .host("a2", "a")
        .host("a3", "a")
        .host("b1", "b")
        .host("b2", "b")
}

#[test]
fn namespaces_multicast_isolation_rate_and_cleanup() {
    if !namespaces_available() {
        eprintln!("skipped: the lab needs root and network namespaces (CI runs as root)");
        return;
    }
    // A crashed run's leftovers: a namespace and a state file whose owner is gone.
    std::fs::create_dir_all("/run/tern-lab").expect("state dir");
    std::fs::write("/run/tern-lab/dead1.pid", "999999999").expect("state file");
    let status = std::process::Command::new("ip")
        .args(["netns", "add", "tldead1-x"])
        .status()
        .expect("ip");
    assert!(status.success());

    let lab = spec().build().expect("lab builds");
    assert_eq!(lab.mode(), Mode::Namespaces);
    assert!(
        !namespaces().contains(&"tldead1-x".to_string()),
        "leftovers of a crashed run are removed first"
    );
    let created = lab.created_names();

    // Multicast from a1 reaches a2 and a3, and not the other segment.
    let group = "239.77.0.1:7777";
    let mut receivers = Vec::new();
    for host in ["a2", "a3", "b1", "b2"] {
        let mut child = lab
            .command(host, LAB, &["probe", "mcast-recv", group, "--timeout-ms", "1500"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("receiver");
        let mut first = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        reader.read_line(&mut first).expect("read");
        assert_eq!(first.trim(), "listening", "{host}");
        receivers.push((host, child, reader));
    }
    let sent = lab
        .run("a1", LAB, &["probe", "mcast-send", group, "hello-lab", "--count", "3"])
        .expect("send");
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    for (host, mut child, mut reader) in receivers {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        let _ = child.wait();
        let got = rest.contains("received hello-lab");
        if host.starts_with('a') {
            assert!(got, "{host} in the sender's segment must receive the multicast: {rest}");
        } else {
            assert!(!got, "{host} in the other segment must not receive it: {rest}");
        }
    }

    // Isolation and healing; and routing between segments.
    let _echo = lab
        .spawn("a2", LAB, &["probe", "echo", "7000", "--seconds", "30"])
        .expect("echo");
    let _echo_b = lab
        .spawn("b1", LAB, &["probe", "echo", "7000", "--seconds", "30"])
        .expect("echo");
    let a2 = format!("{}:7000", lab.host("a2").addr);
    let b1 = format!("{}:7000", lab.host("b1").addr);
    let check = |from: &str, to: &str| {
        (0..50).any(|_| {
            let ok = lab
                .run(from, LAB, &["probe", "echo-check", to, "--timeout-ms", "300"])
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            ok
        })
    };
    assert!(check("a1", &a2), "a2 answers");
    lab.wait_listening("a2", 7000, std::time::Duration::from_secs(5))
        .expect("the test process reaches a2 directly");
    assert!(check("a1", &b1), "b1 answers across the router");
    lab.isolate("a2").expect("isolate");
    let answered = lab
        .run("a1", LAB, &["probe", "echo-check", &a2, "--timeout-ms", "500"])
        .expect("run");
    assert!(!answered.status.success(), "an isolated host does not answer");
    lab.heal("a2").expect("heal");
    assert!(check("a1", &a2), "a2 answers again after healing");

    // A rate-limited link measures within 20% of its limit.
    let limit_mbit = 20.0;
    lab.limit_rate("a3", limit_mbit as u32).expect("limit");
    let _sink = lab
        .spawn("a1", LAB, &["probe", "sink", "7001", "--seconds", "20"])
        .expect("sink");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let a1 = format!("{}:7001", lab.host("a1").addr);
    let blast = lab
        .run("a3", LAB, &["probe", "blast", &a1, "--seconds", "3"])
        .expect("blast");
    let text = String::from_utf8_lossy(&blast.stdout);
    let bits: f64 = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("rate printed");
    let mbit = bits / 1e6;
    println!("rate-limited link: {mbit:.1} Mbit/s against a limit of {limit_mbit} Mbit/s");
    assert!(
        (mbit - limit_mbit).abs() <= limit_mbit * 0.2,
        "measured {mbit:.1} Mbit/s"
    );

    // Nothing is left behind.
    drop(_sink);
    drop(_echo);
    drop(_echo_b);
    drop(lab);
    crate::assert_nothing_left(created);
}

#[test]
fn loopback_mode_gives_distinct_addresses_and_refuses_faults() {
    let lab = spec().build_loopback().expect("loopback lab");
    assert_eq!(lab.mode(), Mode::Loopback);
    let mut addresses: Vec<_> = lab.hosts().map(|h| h.addr).collect();
    addresses.dedup();
    assert_eq!(addresses.len(), 5);
    assert!(addresses.iter().all(|a| a.is_loopback()));
    assert!(matches!(lab.isolate("a1"), Err(LabError::Unsupported(_))));
    let output = lab.run("a1", "true", &[]).expect("runs on this machine");
    assert!(output.status.success());
}

#[test]
fn bad_specs_are_refused() {
    assert!(LabSpec::new().segment("a").host("x", "nope").build_loopback().is_err());
    assert!(LabSpec::new().segment("toolongname").build_loopback().is_err());
    assert!(
        LabSpec::new()
            .segment("a")
            .host("h", "a")
            .host("h", "a")
            .build_loopback()
            .is_err()
    );
}

#[test]
fn tern_roles_run_in_lab_hosts() {
    if !namespaces_available() {
        eprintln!("skipped: the lab needs root and network namespaces (CI runs as root)");
        return;
    }
    let Some(tern) = tern_lab::topology::tern_binary() else {
        eprintln!("skipped: no tern binary beside the tests (build it with `cargo build -p tern`)");
        return;
    };
    let tern = tern.to_str().expect("utf-8 path").to_string();
    let site = tempfile::tempdir().expect("tempdir");
    std::fs::write(site.path().join("hello.txt"), "hello from a1").expect("write");
    let lab = LabSpec::new()
        .segment("a")
        .segment("b")
        .host("a1", "a")
        .host("b1", "b")
        .build()
        .expect("lab");
    let site_path = site.path().to_str().expect("utf-8");
    let _origin = lab
        .spawn(
            "a1",
            &tern,
            &[
                "serve",
                site_path,
                "--listen",
                "0.0.0.0:9000",
                "--cache-control",
                "max-age=60",
                "--log",
                "warn",
            ],
        )
        .expect("origin");
    lab.wait_listening("a1", 9000, std::time::Duration::from_secs(10))
        .expect("origin listens");
    let origin = format!("http://{}:9000", lab.host("a1").addr);
    let _edge = lab
        .spawn(
            "b1",
            &tern,
            &["edge", "--listen", "0.0.0.0:8080", "--origin", &origin, "--log", "warn"],
        )
        .expect("edge");
    lab.wait_listening("b1", 8080, std::time::Duration::from_secs(10))
        .expect("edge listens");

    let edge = std::net::SocketAddr::from((lab.host("b1").addr, 8080));
    let get = || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(edge).expect("connect");
        write!(
            stream,
            "GET /hello.txt HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        answer
    };
    let first = get();
    assert!(first.contains("hello from a1") && first.contains("fwd=miss"), "{first}");
    let second = get();
    assert!(second.contains("tern; hit"), "{second}");
    // The origin's host crashes: the edge still serves what it holds.
    lab.kill("a1").expect("kill");
    assert!(get().contains("hello from a1"));
}
