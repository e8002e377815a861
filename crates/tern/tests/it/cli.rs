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
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("demo smoke check passed"));
    assert!(dir.path().join("site/index.html").exists());
}
