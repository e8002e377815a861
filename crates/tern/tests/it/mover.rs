//! `tern mover`, `tern node`, `tern publish` and `tern rollback` as processes.

use std::time::Duration;

use tern_edge::testsuite::{client, send};

use crate::{free_addr, spawn, spawn_node, spawn_node_at, tern, write};

/// Waits until `count` nodes have registered with the mover.
pub(crate) async fn wait_for_nodes(mover_url: &str, count: usize) {
    wait_for_nodes_with(mover_url, count, &[]).await;
}

/// The number of nodes the mover lists, asked with `headers`.
async fn node_count(mover_url: &str, headers: &[(&str, &str)]) -> Option<usize> {
    let got = send(&client(), "GET", &format!("{mover_url}/api/nodes"), headers).await;
    serde_json::from_slice::<serde_json::Value>(&got.body)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
}

/// [`wait_for_nodes`], asking with `headers` (an API token).
async fn wait_for_nodes_with(mover_url: &str, count: usize, headers: &[(&str, &str)]) {
    for _ in 0..300 {
        if node_count(mover_url, headers).await == Some(count) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{count} nodes did not register with the mover");
}

#[tokio::test]
async fn publish_and_rollback_through_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    let mover_addr = free_addr();
    // Every assignment is encrypted: the mover and the nodes share a key file.
    let keygen = tern().args(["keygen", &path("assignments.key")]).output().expect("run");
    assert!(keygen.status.success());
    let _mover = spawn(
        &[
            "mover",
            "--listen",
            &mover_addr.to_string(),
            "--data",
            &path("mover"),
            "--encryption-key",
            &path("assignments.key"),
        ],
        mover_addr,
    );
    let mover_url = format!("http://{mover_addr}");
    let mut nodes = Vec::new();
    for n in 0..2 {
        let name = format!("node{n}");
        let extra = [
            "--encryption-key",
            &path("assignments.key"),
            "--group",
            if n == 0 { "eu" } else { "us" },
        ];
        nodes.push(spawn_node(
            &mover_url,
            &path(&name),
            &name,
            &path("mover/mover.pub"),
            &extra,
        ));
    }
    wait_for_nodes(&mover_url, 2).await;

    // A node that could open none of this mover's assignments (no key, another key) is refused at
    // registration, naming the flag, instead of failing every publish later.
    let other_key = tern_wire::SecretKey::generate().expect("key");
    for key_id in [None, Some(tern_wire::mover::encryption_key_id(other_key.as_bytes()))] {
        let registration = tern_wire::mover::Registration {
            name: "node9".into(),
            url: "http://127.0.0.1:9".into(),
            encryption_key_id: key_id,
            ..Default::default()
        };
        let request = http::Request::post(format!("{mover_url}/api/nodes/register"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::to_vec(&registration).expect("json"),
            )))
            .expect("request");
        let answer = client().request(request).await.expect("an answer");
        assert_eq!(answer.status(), http::StatusCode::BAD_REQUEST);
        let body = http_body_util::BodyExt::collect(answer.into_body())
            .await
            .expect("body")
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("--encryption-key"), "{text}");
    }
    assert_eq!(node_count(&mover_url, &[]).await, Some(2), "node9 was not registered");

    let staging = dir.path().join("staging");
    write(&staging, "index.html", b"first version");
    write(&staging, "css/site.css", b"body {}");
    let published = tern()
        .args(["publish", "--mover", &mover_url, "--site", "www", "--staging"])
        .arg(&staging)
        .output()
        .expect("run");
    assert!(
        published.status.success(),
        "{}{}",
        String::from_utf8_lossy(&published.stdout),
        String::from_utf8_lossy(&published.stderr)
    );
    write(&staging, "index.html", b"second version");
    let published = tern()
        .args(["publish", "--mover", &mover_url, "--site", "www", "--staging"])
        .arg(&staging)
        .output()
        .expect("run");
    assert!(published.status.success());
    for n in 0..2 {
        let live = dir.path().join(format!("node{n}/www/live"));
        assert_eq!(std::fs::read(live.join("index.html")).expect("read"), b"second version");
        assert_eq!(std::fs::read(live.join("css/site.css")).expect("read"), b"body {}");
    }
    // Each node counts what it was sent and its registrations (prepare and commit of two publishes).
    let metrics = send(&client(), "GET", &format!("http://{}/metrics", nodes[0].1), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let value = |line_start: &str| {
        text.lines()
            .find(|line| line.starts_with(line_start))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(value("tern_node_assignments_total{outcome=\"applied\"}") >= 4, "{text}");
    assert!(value("tern_node_registrations_total{outcome=\"ok\"}") >= 1, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    // A re-run of an unchanged publish succeeds and makes no version.
    let again = tern()
        .args(["publish", "--mover", &mover_url, "--site", "www", "--staging"])
        .arg(&staging)
        .output()
        .expect("run");
    assert!(
        again.status.success(),
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    let site = send(&client(), "GET", &format!("{mover_url}/api/sites/www"), &[]).await;
    let site: serde_json::Value = serde_json::from_slice(&site.body).expect("json");
    assert_eq!(site["site"]["sequence"], 2, "no version for an unchanged tree: {site}");
    let checkpoint = tern()
        .args(["checkpoint", "create", "--mover", &mover_url, "--site", "www"])
        .output()
        .expect("run");
    assert!(
        checkpoint.status.success(),
        "{}",
        String::from_utf8_lossy(&checkpoint.stderr)
    );
    let listed = tern()
        .args(["checkpoint", "list", "--mover", &mover_url, "--site", "www"])
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 1);
    let rolled = tern()
        .args(["rollback", "--mover", &mover_url, "--site", "www"])
        .output()
        .expect("run");
    assert!(rolled.status.success(), "{}", String::from_utf8_lossy(&rolled.stderr));
    for n in 0..2 {
        let live = dir.path().join(format!("node{n}/www/live"));
        assert_eq!(std::fs::read(live.join("index.html")).expect("read"), b"first version");
    }
    let restored = tern()
        .args(["checkpoint", "restore", "--mover", &mover_url, "--site", "www", "1"])
        .output()
        .expect("run");
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    for n in 0..2 {
        let live = dir.path().join(format!("node{n}/www/live"));
        assert_eq!(
            std::fs::read(live.join("index.html")).expect("read"),
            b"second version",
            "checkpoint 1 was taken at the second version"
        );
    }
    let jobs = tern().args(["jobs", "--mover", &mover_url]).output().expect("run");
    assert_eq!(String::from_utf8_lossy(&jobs.stdout).lines().count(), 5);

    let missing = tern()
        .args([
            "publish",
            "--mover",
            &mover_url,
            "--site",
            "www",
            "--staging",
            &path("nope"),
        ])
        .output()
        .expect("run");
    assert!(!missing.status.success(), "a missing staging directory is an error");

    // A job for later can be cancelled before it runs; a group without nodes and a bad time are refused.
    let scheduled = tern()
        .args([
            "publish",
            "--mover",
            &mover_url,
            "--site",
            "blog",
            "--at",
            "+1h",
            "--no-wait",
            "--staging",
        ])
        .arg(&staging)
        .output()
        .expect("run");
    assert!(
        scheduled.status.success(),
        "{}",
        String::from_utf8_lossy(&scheduled.stderr)
    );
    let text = String::from_utf8_lossy(&scheduled.stdout).to_string();
    assert!(text.contains("scheduled"), "{text}");
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("job "))
        .expect("job id")
        .trim()
        .to_string();
    let cancelled = tern()
        .args(["jobs", "--mover", &mover_url, "--cancel", &id])
        .output()
        .expect("run");
    assert!(
        cancelled.status.success(),
        "{}",
        String::from_utf8_lossy(&cancelled.stderr)
    );
    for (args, expected) in [
        (vec!["--group", "asia"], "group asia has no registered nodes"),
        (vec!["--at", "yesterday"], "RFC 3339"),
        (vec!["--exclude", "/etc"], "pattern"),
    ] {
        let refused = tern()
            .args(["publish", "--mover", &mover_url, "--site", "www", "--staging"])
            .arg(&staging)
            .args(&args)
            .output()
            .expect("run");
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    // A publish to group eu, without the drafts: only node0 changes.
    write(&staging, "index.html", b"eu version");
    write(&staging, "drafts/next.html", b"not yet");
    let published = tern()
        .args([
            "publish",
            "--mover",
            &mover_url,
            "--site",
            "www",
            "--group",
            "eu",
            "--exclude",
            "drafts/",
            "--staging",
        ])
        .arg(&staging)
        .output()
        .expect("run");
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let live = |n: usize| dir.path().join(format!("node{n}/www/live"));
    assert_eq!(std::fs::read(live(0).join("index.html")).expect("read"), b"eu version");
    assert!(!live(0).join("drafts").exists());
    assert_eq!(
        std::fs::read(live(1).join("index.html")).expect("read"),
        b"second version"
    );

    // The rule stays with the site; --clear-rules drops it, and the drafts go out.
    let publish = |extra: &[&str]| {
        let mut command = tern();
        command
            .args(["publish", "--mover", &mover_url, "--site", "www", "--staging"])
            .arg(&staging);
        command.args(extra).output().expect("run")
    };
    write(&staging, "index.html", b"eu version 2");
    assert!(publish(&[]).status.success());
    assert!(!live(0).join("drafts").exists(), "the kept rule still applies");
    let cleared = publish(&["--clear-rules"]);
    assert!(cleared.status.success(), "{}", String::from_utf8_lossy(&cleared.stderr));
    assert_eq!(
        std::fs::read(live(0).join("drafts/next.html")).expect("read"),
        b"not yet"
    );
    assert!(
        !publish(&["--clear-rules", "--exclude", "x"]).status.success(),
        "one or the other"
    );
}

/// HAProxy's view of one server of backend `tern`: its admin state bits (`show servers state`), or `None`.
fn haproxy_admin_state(api: std::net::SocketAddr, server: &str) -> Option<u32> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(api).ok()?;
    stream.write_all(b"show servers state tern\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    // "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ..."
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(3) == Some(&server))
        .and_then(|fields| fields.get(6)?.parse().ok())
}

/// With a real HAProxy in front of two nodes: the node that misses a publish is put in maintenance
/// through the runtime API, and back in the rotation once it has caught up; publishing an unchanged tree
/// sends the load balancer nothing (issue 10).
#[tokio::test]
async fn haproxy_takes_a_node_that_missed_a_publish_out_of_the_rotation() {
    let Some(haproxy) = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("skipped: haproxy is not installed (Debian package haproxy; .ci/run installs it)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    let (api, front, mover_addr) = (free_addr(), free_addr(), free_addr());
    let node_addrs = [free_addr(), free_addr()];
    let config = format!(
        "global\n    stats socket ipv4@{api} level admin\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\nfrontend www\n    bind {front}\n    default_backend tern\nbackend tern\n    server node0 {}\n    server node1 {}\n",
        node_addrs[0], node_addrs[1]
    );
    write(dir.path(), "haproxy.cfg", config.as_bytes());
    let _haproxy = crate::Running(
        std::process::Command::new(haproxy)
            .args(["-db", "-f", &path("haproxy.cfg")])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("haproxy starts"),
    );
    let mut up = false;
    for _ in 0..250 {
        if haproxy_admin_state(api, "node0").is_some() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "haproxy's runtime API answers on {api}");

    let _mover = spawn(
        &[
            "mover",
            "--listen",
            &mover_addr.to_string(),
            "--data",
            &path("mover"),
            "--quorum",
            "1",
            "--haproxy",
            &api.to_string(),
            "--haproxy-backend",
            "tern",
        ],
        mover_addr,
    );
    let mover_url = format!("http://{mover_addr}");
    let node = |n: usize| {
        let name = format!("node{n}");
        spawn_node_at(
            node_addrs[n],
            &mover_url,
            &path(&name),
            &name,
            &path("mover/mover.pub"),
            &[],
        )
        .0
    };
    let mut nodes = [Some(node(0)), Some(node(1))];
    wait_for_nodes(&mover_url, 2).await;
    let staging = dir.path().join("staging");
    let publish = || {
        tern()
            .args(["publish", "--mover", &mover_url, "--site", "www", "--staging"])
            .arg(&staging)
            .output()
            .expect("run")
    };
    write(&staging, "index.html", b"first version");
    assert!(publish().status.success());
    assert_eq!(haproxy_admin_state(api, "node0"), Some(0));
    assert_eq!(haproxy_admin_state(api, "node1"), Some(0));

    // node1 is down for the second version: HAProxy has it in maintenance (admin state bit 0x01).
    nodes[1] = None;
    write(&staging, "index.html", b"second version");
    assert!(
        !publish().status.success(),
        "node1 missed it: the publish reports failure"
    );
    assert_eq!(haproxy_admin_state(api, "node0"), Some(0));
    assert_eq!(haproxy_admin_state(api, "node1").map(|s| s & 1), Some(1));

    // Back: caught up without anyone acting, and in the rotation again.
    nodes[1] = Some(node(1));
    let mut state = None;
    for _ in 0..500 {
        state = haproxy_admin_state(api, "node1");
        if state == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, Some(0), "node1 is back in the rotation");
    assert_eq!(
        std::fs::read(dir.path().join("node1/www/live/index.html")).expect("live"),
        b"second version"
    );

    // An unchanged tree, twice: both succeed, and the load balancer is told nothing. The operator takes
    // node0 out by hand first; a command from the mover (a "ready" for a node that committed) would put
    // it back.
    haproxy_command(api, "set server tern/node0 state maint");
    assert_eq!(haproxy_admin_state(api, "node0").map(|s| s & 1), Some(1));
    for attempt in 1..=2 {
        let unchanged = publish();
        assert!(
            unchanged.status.success(),
            "unchanged publish {attempt}: {}",
            String::from_utf8_lossy(&unchanged.stderr)
        );
        assert_eq!(
            haproxy_admin_state(api, "node0").map(|s| s & 1),
            Some(1),
            "unchanged publish {attempt} sent the load balancer a command"
        );
        assert_eq!(haproxy_admin_state(api, "node1"), Some(0));
    }
}

/// Sends one command to HAProxy's runtime API and reads its answer to the end.
fn haproxy_command(api: std::net::SocketAddr, command: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(api).expect("haproxy's runtime API");
    stream.write_all(format!("{command}\n").as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_token_guards_jobs_and_node_removal_while_nodes_still_register() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    let keygen = tern().args(["keygen", &path("api.key")]).output().expect("run");
    assert!(keygen.status.success());
    let token = tern_wire::SecretKey::load(std::path::Path::new(&path("api.key")))
        .expect("api key")
        .token();
    let mover_addr = free_addr();
    let _mover = spawn(
        &[
            "mover",
            "--listen",
            &mover_addr.to_string(),
            "--data",
            &path("mover"),
            "--api-token",
            &path("api.key"),
        ],
        mover_addr,
    );
    let mover_url = format!("http://{mover_addr}");
    // The node registers without the token (its own route).
    let _node = spawn_node(&mover_url, &path("node0"), "node0", &path("mover/mover.pub"), &[]);
    let bearer = format!("Bearer {token}");
    let authorised = [("authorization", bearer.as_str())];
    wait_for_nodes_with(&mover_url, 1, &authorised).await;

    // Without the token, or with another, nothing is read or submitted.
    for headers in [vec![], vec![("authorization", "Bearer 00")]] {
        let got = send(&client(), "GET", &format!("{mover_url}/api/jobs"), &headers).await;
        assert_eq!(got.status, 401);
    }
    let staging = dir.path().join("staging");
    write(&staging, "index.html", b"hello");
    let refused = tern()
        .args(["publish", "--mover", &mover_url, "--site", "www", "--staging"])
        .arg(&staging)
        .env_remove("TERN_API_TOKEN_FILE")
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("TERN_API_TOKEN_FILE"),
        "the error says what to do: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!dir.path().join("node0/www/live").exists());

    // With it, the publish goes through.
    let published = tern()
        .args(["publish", "--mover", &mover_url, "--site", "www", "--staging"])
        .arg(&staging)
        .env("TERN_API_TOKEN_FILE", path("api.key"))
        .output()
        .expect("run");
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    assert_eq!(
        std::fs::read(dir.path().join("node0/www/live/index.html")).expect("live"),
        b"hello"
    );

    // A second node is retired: stopped, then removed; the next publish (quorum: all) no longer waits for
    // it, and the history log says who removed it.
    let (retired, _) = spawn_node(&mover_url, &path("node1"), "node1", &path("mover/mover.pub"), &[]);
    wait_for_nodes_with(&mover_url, 2, &authorised).await;
    drop(retired);
    let removed = tern()
        .args(["nodes", "--mover", &mover_url, "--remove", "node1"])
        .env("TERN_API_TOKEN_FILE", path("api.key"))
        .output()
        .expect("run");
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    assert_eq!(node_count(&mover_url, &authorised).await, Some(1));
    let unknown = tern()
        .args(["nodes", "--mover", &mover_url, "--remove", "node9"])
        .env("TERN_API_TOKEN_FILE", path("api.key"))
        .output()
        .expect("run");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no node node9"));
    write(&staging, "index.html", b"after the retirement");
    let published = tern()
        .args(["publish", "--mover", &mover_url, "--site", "www", "--staging"])
        .arg(&staging)
        .env("TERN_API_TOKEN_FILE", path("api.key"))
        .output()
        .expect("run");
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let history = send(&client(), "GET", &format!("{mover_url}/api/history"), &authorised).await;
    assert!(String::from_utf8_lossy(&history.body).contains("node node1 removed by the operator"));
}
