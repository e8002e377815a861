//! The command line: keygen, helpful errors, the demo.

use crate::tern;

#[test]
fn keygen_writes_a_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("k");
    let first = tern().arg("keygen").arg(&path).output().expect("run");
    assert!(first.status.success());
    let key = tern_wire::SecretKey::load(&path).expect("a valid key file");
    let again = tern().arg("keygen").arg(&path).output().expect("run");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert!(
        tern_wire::SecretKey::load(&path)
            .expect("still valid")
            .matches_token(&key.token())
    );
}

#[test]
fn edge_without_origin_says_what_to_do() {
    let output = tern().args(["edge", "--listen", "127.0.0.1:0"]).output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--origin"), "{stderr}");
}

#[test]
fn bad_config_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tern.toml");
    std::fs::write(&config, "[edge]\norigin = \"http://127.0.0.1:1\"\ncache_szie = 1\n").expect("write");
    let output = tern().args(["edge", "--config"]).arg(&config).output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cache_szie"), "{stderr}");

    // URLs in the file are checked as the flags' are: a port over 65535 would quietly mean port 80.
    for (table, told) in [
        ("[edge]\norigin = \"http://127.0.0.1:99999\"\n", "port"),
        (
            "[edge]\norigin = \"http://127.0.0.1:1\"\nsync_url = \"127.0.0.1:7071\"\n",
            "sync_url",
        ),
        (
            "[edge]\norigin = \"http://127.0.0.1:1\"\nsync_url = \"http://127.0.0.1:70710\"\n",
            "port",
        ),
    ] {
        std::fs::write(&config, table).expect("write");
        let output = tern().args(["edge", "--config"]).arg(&config).output().expect("run");
        assert!(!output.status.success(), "{table}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(told), "{table}: {stderr}");
    }
}

#[test]
fn demo_smoke_check_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = tern()
        .args(["demo", "--smoke", "--dir"])
        .arg(dir.path())
        .env("TERN_LOG", "info")
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The demo logs to a file of its own; a failure shows it.
    let log = std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "{stdout}\n{}\n--- demo.log ---\n{log}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("demo smoke check passed"));
    // The three edges are one cache community, and a page is stored once, by its owner.
    assert!(
        stdout.contains("community demo: every edge follows master") && stdout.contains(", 3 peers"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/news.html is stored once, by its owner edge"),
        "{stdout}"
    );
    // The whole path: every edge served the published page, then the rolled-back one.
    assert!(
        stdout.contains("tern publish: every edge served the committed page"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tern rollback: every edge served the committed page"),
        "{stdout}"
    );
    assert!(dir.path().join("staging/index.html").exists());
    // The sync service purges every edge at once and each relays to its peers: no relay may be taken for
    // a replay (a false security warning on every publish).
    for warning in ["purge not relayed", "peer request refused"] {
        assert!(!log.contains(warning), "`{warning}` in demo.log:\n{log}");
    }
    // The terminal gets no log lines (at the default level, `info`, every role logs as it starts).
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("INFO"), "{stderr}");
    assert!(log.contains("INFO"), "{log}");
}

/// A key file for community flags.
fn key_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("cluster.key");
    let output = tern().arg("keygen").arg(&path).output().expect("run");
    assert!(output.status.success());
    path
}

#[test]
fn community_flags_without_a_community_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path());
    let output = tern()
        .args([
            "edge",
            "--listen",
            "127.0.0.1:0",
            "--origin",
            "http://127.0.0.1:1",
            "--cluster-key",
        ])
        .arg(&key)
        .args([
            "--registry",
            "http://127.0.0.1:1",
            "--weight",
            "5",
            "--community-keep",
            "hot",
        ])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("add --community NAME"), "{stderr}");
    for flag in ["--cluster-key", "--registry", "--weight", "--community-keep"] {
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
}

#[test]
fn a_weight_of_zero_or_of_billions_is_refused() {
    for weight in ["0", "4294967295"] {
        let output = tern()
            .args([
                "edge",
                "--origin",
                "http://127.0.0.1:1",
                "--community",
                "site",
                "--weight",
                weight,
            ])
            .output()
            .expect("run");
        assert!(!output.status.success(), "--weight {weight}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--weight") && stderr.contains("1..=1000000"),
            "{stderr}"
        );
    }
}

#[test]
fn a_bad_community_name_names_its_flag_and_is_not_echoed_in_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path());
    for (name, expected) in [(String::new(), "--community"), ("n".repeat(3000), "(3000 bytes)")] {
        let peer = crate::free_addr().to_string();
        let output = tern()
            .args([
                "edge",
                "--listen",
                "127.0.0.1:0",
                "--origin",
                "http://127.0.0.1:1",
                "--community",
            ])
            .arg(&name)
            .arg("--cluster-key")
            .arg(&key)
            .args(["--peer-listen", &peer])
            .output()
            .expect("run");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected) && stderr.contains("--community"), "{stderr}");
        assert!(stderr.len() < 1000, "{stderr}");
    }
}

#[test]
fn an_os_error_is_said_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let output = tern()
        .args(["edge", "--listen", &address, "--origin", "http://127.0.0.1:1"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");

    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.key");
    let output = tern()
        .args(["registry", "--listen", "127.0.0.1:0", "--cluster-key"])
        .arg(&missing)
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
}

#[test]
fn a_second_process_on_a_state_directory_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("agent.key");
    assert!(
        tern()
            .arg("keygen")
            .arg(&key)
            .output()
            .expect("keygen")
            .status
            .success()
    );
    let data = dir.path().join("sync");
    let sync = |listen: &str| {
        let mut command = tern();
        command
            .args([
                "sync",
                "--listen",
                listen,
                "--site",
                "www=www.example.com",
                "--cache",
                "http://127.0.0.1:1",
                "--key",
            ])
            .arg(&key)
            .arg("--data")
            .arg(&data);
        command
    };
    let first = sync(&crate::free_addr().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let first = crate::Running(first);
    let lock = data.join("tern.lock");
    let log = data.join("changes.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Until the first holds the lock and has written its change log's header.
    while !(std::fs::read_to_string(&lock).is_ok_and(|text| text.contains("pid"))
        && std::fs::metadata(&log).is_ok_and(|m| m.len() > 0))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first sync service took no lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log_before = std::fs::read(data.join("changes.log")).unwrap_or_default();
    let second = sync(&crate::free_addr().to_string()).output().expect("run");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use") && stderr.contains(&format!("pid {}", first.0.id())),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(data.join("changes.log")).unwrap_or_default(),
        log_before,
        "the refused process wrote nothing"
    );
}

/// An edge whose log pipe was closed (`tern edge | head -1`) still stops on SIGTERM.
#[cfg(unix)]
#[test]
fn sigterm_stops_an_edge_whose_log_pipe_is_closed() {
    use std::io::BufRead;
    let listen = crate::free_addr().to_string();
    let mut child = tern()
        .args(["edge", "--listen", &listen, "--origin", "http://127.0.0.1:1"])
        .env("TERN_LOG", "info")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut first = String::new();
    std::io::BufReader::new(stderr)
        .read_line(&mut first)
        .expect("a log line");
    assert!(first.contains("edge started"), "{first}");
    // The reader is dropped: the pipe is closed, as `head -1` closes it.
    let mut running = crate::Running(child);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(Some(_)) = running.0.try_wait() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edge still runs after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Every subcommand's `--help`, long form (about, long_about and every argument).
fn every_help() -> Vec<(String, String)> {
    let subcommands = [
        "edge",
        "registry",
        "serve",
        "agent",
        "sync",
        "delta",
        "mover",
        "node",
        "publish",
        "rollback",
        "jobs",
        "nodes",
        "checkpoint",
        "keygen",
        "demo",
    ];
    let mut commands: Vec<Vec<&str>> = vec![vec![]];
    commands.extend(subcommands.iter().map(|sub| vec![*sub]));
    for sub in ["create", "list", "restore"] {
        commands.push(vec!["checkpoint", sub]);
    }
    commands
        .into_iter()
        .map(|mut command| {
            command.push("--help");
            let output = tern().args(&command).output().expect("run");
            assert!(output.status.success(), "{command:?}");
            (command.join(" "), String::from_utf8_lossy(&output.stdout).to_string())
        })
        .collect()
}

#[test]
fn help_speaks_in_operator_terms() {
    for (command, help) in every_help() {
        // The design's internal names (seed numbers, the patent's abbreviations) mean nothing to a user.
        for jargon in [
            "seed ",
            "seeds ",
            "CCM",
            "CP agent",
            "NACK",
            " GL ",
            " LA ",
            "assignment",
            "incarnation",
            "store-and-forward",
            "shadow cop",
        ] {
            assert!(!help.contains(jargon), "`tern {command}` says {jargon:?}:\n{help}");
        }
    }
}

#[test]
fn agent_help_lists_the_editor_temporaries_it_leaves_out() {
    let output = tern().args(["agent", "--help"]).output().expect("run");
    let help = String::from_utf8_lossy(&output.stdout);
    for pattern in [".*.swp", "4913", "*~", ".#*", ".goutputstream-*"] {
        assert!(help.contains(pattern), "{pattern}: {help}");
    }
}

#[test]
fn a_url_flag_without_a_scheme_shows_the_url_meant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &str); 4] = [
        (&["jobs", "--mover", "127.0.0.1:17000"], "--mover"),
        (
            &[
                "node",
                "--root",
                "r",
                "--name",
                "n",
                "--key",
                "k",
                "--mover",
                "127.0.0.1:17000",
            ],
            "--mover",
        ),
        (&["edge", "--origin", "127.0.0.1:17000"], "--origin"),
        (
            &[
                "edge",
                "--origin",
                "http://127.0.0.1:1",
                "--community",
                "c",
                "--registry",
                "127.0.0.1:17000",
            ],
            "--registry",
        ),
    ];
    for (args, flag) in cases {
        let output = tern().args(args).current_dir(dir.path()).output().expect("run");
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains("http://127.0.0.1:17000"),
            "{args:?}: {stderr}"
        );
    }
    // The publish names the flag as typed, not a path of the API.
    let output = tern()
        .args(["publish", "--mover", "127.0.0.1:17000", "--site", "www", "--staging"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("like http://127.0.0.1:17000"), "{stderr}");
    assert!(!stderr.contains("/api/"), "{stderr}");
    // The agent's --sync is not HTTP: a URL there is named as one.
    let output = tern()
        .args(["agent", "--sync", "http://10.0.0.2:7070"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not a URL") && stderr.contains("10.0.0.2:7070"),
        "{stderr}"
    );
}

#[test]
fn a_staging_file_is_named_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hostname");
    std::fs::write(&file, "h\n").expect("write");
    let output = tern()
        .args(["publish", "--mover", "http://127.0.0.1:1", "--site", "www", "--staging"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is a file, not a directory"), "{stderr}");
}

/// A period of a fraction of a second is refused, not rounded to "every second" (nor to 0).
#[test]
fn a_job_period_in_fractions_of_a_second_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, value) in [("--every", "1ms"), ("--every", "1500ms"), ("--retry-delay", "10ms")] {
        let output = tern()
            .args(["publish", "--mover", "http://127.0.0.1:1", "--site", "www", "--staging"])
            .arg(dir.path())
            .args([flag, value, "--no-wait"])
            .output()
            .expect("run");
        assert!(!output.status.success(), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("give whole seconds"), "{flag} {value}: {stderr}");
    }
}

/// The client's messages against a real mover with an API token and one node: token errors, a name over the
/// limit, an unchanged publish, and times.
#[test]
fn the_mover_client_says_what_happened_in_plain_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    for key in ["api.key", "other.key"] {
        assert!(
            tern()
                .args(["keygen", &path(key)])
                .output()
                .expect("run")
                .status
                .success()
        );
    }
    let mover_addr = crate::free_addr();
    let _mover = crate::spawn(
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
    let _node = crate::spawn_node(&mover_url, &path("node0"), "node0", &path("mover/mover.pub"), &[]);
    let with_token = |args: &[&str]| {
        let output = tern()
            .args(args)
            .env("TERN_API_TOKEN_FILE", path("api.key"))
            .output()
            .expect("run");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
        (output.status.success(), text(&output.stdout), text(&output.stderr))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !with_token(&["nodes", "--mover", &mover_url]).1.contains("node0") {
        assert!(std::time::Instant::now() < deadline, "node0 did not register");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let staging = dir.path().join("staging");
    crate::write(&staging, "index.html", b"hello");
    let staging = staging.to_str().expect("utf-8").to_string();
    let publish = ["publish", "--mover", &mover_url, "--site", "www", "--staging", &staging];

    // No token, and a token the mover refuses, are told apart.
    let none = tern()
        .args(publish)
        .env_remove("TERN_API_TOKEN_FILE")
        .output()
        .expect("run");
    assert!(!none.status.success());
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(
        stderr.contains("none was given") && stderr.contains("TERN_API_TOKEN_FILE"),
        "{stderr}"
    );
    let wrong = tern()
        .args(publish)
        .env("TERN_API_TOKEN_FILE", path("other.key"))
        .output()
        .expect("run");
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("refused the API token (401)") && stderr.contains("other.key"),
        "{stderr}"
    );

    // A name over the limit is told the limit.
    let long = "s".repeat(300);
    let (ok, _, stderr) = with_token(&["publish", "--mover", &mover_url, "--site", &long, "--staging", &staging]);
    assert!(!ok);
    assert!(
        stderr.contains("1 to 128 letters") && stderr.contains("not starting with `.`"),
        "{stderr}"
    );

    // The first publish sends; the same tree again says nothing changed and contacts no node.
    let (ok, stdout, stderr) = with_token(&publish);
    assert!(ok, "{stdout}{stderr}");
    let (ok, stdout, stderr) = with_token(&publish);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("nothing changed since version 1"), "{stdout}");
    assert!(!stdout.contains("0 B") && !stdout.contains("committed"), "{stdout}");

    // Times are RFC 3339 in UTC with how far they are, never raw milliseconds.
    let (ok, _, stderr) = with_token(&["checkpoint", "create", "--mover", &mover_url, "--site", "www"]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = with_token(&["checkpoint", "list", "--mover", &mover_url, "--site", "www"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("created 20") && stdout.contains("Z ("), "{stdout}");
    assert!(!stdout.contains(" ms"), "{stdout}");
    let mut later = publish.to_vec();
    later.extend(["--at", "+15m", "--no-wait"]);
    let (ok, stdout, stderr) = with_token(&later);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("due at 20") && stdout.contains("Z (in 1"), "{stdout}");
    assert!(!stdout.contains(" ms"), "{stdout}");
    let mut far = publish.to_vec();
    far.extend(["--at", "3026-01-01T00:00:00Z", "--no-wait"]);
    let (ok, _, stderr) = with_token(&far);
    assert!(!ok);
    assert!(
        stderr.contains("the start time 3026-01-01T00:00:00Z is more than a year ahead: give a time up to 20"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("at_ms") && !stderr.contains("since the epoch"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = with_token(&["jobs", "--mover", &mover_url]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("due 20") && stdout.contains("(in 1"), "{stdout}");
}

#[test]
fn node_and_mover_values_that_would_stall_or_never_commit_are_refused_by_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("cluster.key");
    assert!(tern().arg("keygen").arg(&key).status().expect("keygen").success());
    // A mover's public key (the Ed25519 base point, a valid key).
    let public = dir.path().join("mover.pub");
    std::fs::write(
        &public,
        "# tern mover public key: give it to nodes (--key)\n5866666666666666666666666666666666666666666666666666666666666666\n",
    )
    .expect("write");
    let root = dir.path().join("root");
    let (root, key, public) = (
        root.to_str().expect("utf-8"),
        key.to_str().expect("utf-8"),
        public.to_str().expect("utf-8"),
    );
    let node = |extra: &[&str]| {
        let mut args = vec![
            "node",
            "--mover",
            "http://127.0.0.1:1",
            "--root",
            root,
            "--name",
            "n1",
            "--listen",
            "127.0.0.1:0",
            "--cluster-key",
            key,
            "--key",
            public,
        ];
        args.extend_from_slice(extra);
        tern().args(&args).output().expect("run")
    };
    for (extra, named) in [
        (
            &["--data-channel", "239.192.9.9:7300", "--data-report-interval", "1h"][..],
            "--data-report-interval",
        ),
        (
            &["--data-channel", "239.192.9.9:7300", "--data-report-delay", "0s"][..],
            "--data-report-delay",
        ),
        (&["--data-channel", "239.192.9.9:0"][..], "--data-channel"),
        (&["--data-channel", "239.192.9.9:7300"][..], "needs --segment"),
        (&["--superseded-grace", "1000d"][..], "--superseded-grace"),
        (
            &[
                "--segment",
                "s",
                "--control-channel",
                "239.192.9.9:7300",
                "--data-channel",
                "239.192.9.9:7300",
            ][..],
            "is the control channel too",
        ),
    ] {
        let output = node(extra);
        assert!(!output.status.success(), "{extra:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{extra:?}: {stderr}");
    }
    let data = dir.path().join("mover");
    let data = data.to_str().expect("utf-8");
    for (extra, named) in [
        (&["--quorum", "0"][..], "--quorum 0"),
        (&["--delivery-timeout", "0s"][..], "--delivery-timeout"),
        (&["--delivery-timeout", "100000000d"][..], "--delivery-timeout"),
    ] {
        let mut args = vec!["mover", "--data", data, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let output = tern().args(&args).output().expect("run");
        assert!(!output.status.success(), "{extra:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{extra:?}: {stderr}");
    }
}
