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
fn a_weight_of_zero_is_refused() {
    let output = tern()
        .args([
            "edge",
            "--origin",
            "http://127.0.0.1:1",
            "--community",
            "site",
            "--weight",
            "0",
        ])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--weight"), "{stderr}");
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
