//! Because the cacher speaks plain HTTP, it keeps third-party caches fresh too: Varnish from Debian with the
//! usual PURGE VCL. Skips with a message where varnishd is not installed (CI installs it).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tern_edge::testsuite::{client, send};
use tern_sync::{Agent, CacheConfig, SiteConfig, SyncConfig};
use tern_wire::SecretKey;
use tokio_util::sync::CancellationToken;

use crate::{HOST, agent_config, free_addr, start_origin};

/// The usual Varnish setup for purging: PURGE from an allowed address removes the object.
const VCL: &str = r#"vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "ORIGIN_PORT"; }
acl purgers { "127.0.0.1"; }
sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) { return (synth(405, "Not allowed")); }
        return (purge);
    }
}
"#;

struct Varnish(Child);

impl Drop for Varnish {
    fn drop(&mut self) {
        // SIGTERM lets the manager stop its cache child; SIGKILL would orphan the child.
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn varnishd() -> Option<std::path::PathBuf> {
    ["/usr/sbin/varnishd", "/usr/bin/varnishd"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

#[tokio::test]
async fn a_varnish_instance_is_kept_fresh_by_the_same_sync_service() {
    let Some(varnishd) = varnishd() else {
        eprintln!("skipped: varnishd is not installed (apt-get install varnish); CI installs it");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("page.html"), "first").expect("write");
    let origin = start_origin(&site).await;

    // Varnish's work directory must be reachable by its unprivileged child.
    let work = std::env::temp_dir().join(format!("tern-varnish-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let vcl = work.join("purge.vcl");
    std::fs::write(&vcl, VCL.replace("ORIGIN_PORT", &origin.listen.port().to_string())).expect("vcl");
    let varnish_addr = free_addr();
    let child = Command::new(varnishd)
        .args([
            "-F",
            "-a",
            &varnish_addr.to_string(),
            "-f",
            vcl.to_str().expect("utf-8"),
            "-s",
            "malloc,32m",
        ])
        .arg("-n")
        .arg(work.join("instance"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start varnishd");
    let _varnish = Varnish(child);
    let mut ready = false;
    for _ in 0..300 {
        if std::net::TcpStream::connect(varnish_addr).is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "varnishd did not start");

    let agent_key = SecretKey::generate().expect("key");
    let sync_addr = free_addr();
    let sync = tern_sync::start(SyncConfig {
        listen: sync_addr,
        admin: None,
        key: agent_key.clone(),
        cache_key: None,
        data_dir: dir.path().join("sync"),
        sites: vec![SiteConfig {
            name: "www".into(),
            hosts: vec![HOST.into()],
        }],
        caches: vec![CacheConfig {
            url: format!("http://{varnish_addr}"),
            sites: vec![],
        }],
        max_frame: 1 << 20,
        max_retry_age: Duration::from_secs(3600),
        request_timeout: Duration::from_secs(5),
        commands_in_flight: tern_sync::cacher::DEFAULT_COMMANDS_IN_FLIGHT,
        cache_ca: None,
    })
    .await
    .expect("sync");
    let agent: Arc<Agent> = Agent::new(agent_config(dir.path(), sync_addr, &agent_key)).expect("agent");
    let stop = CancellationToken::new();
    tokio::spawn(agent.clone().run(stop.clone()));

    let url = format!("http://{varnish_addr}/page.html");
    let fetch = || async { send(&client(), "GET", &url, &[("host", HOST)]).await };
    // The agent's first scan reports the page; Varnish gets it prefetched.
    let settle = || async {
        for _ in 0..1000 {
            if agent.stats().pending == 0 && sync.role.caught_up() && !sync.role.master().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("sync did not settle: {:?}", sync.role.progress());
    };
    agent.scan_once().await;
    settle().await;
    assert_eq!(&fetch().await.body[..], b"first");

    std::fs::write(site.join("page.html"), "second, from the origin").expect("write");
    agent.scan_once().await;
    settle().await;
    let got = fetch().await;
    assert_eq!(
        &got.body[..],
        b"second, from the origin",
        "Varnish serves the new bytes"
    );
    // X-Varnish carries two ids when the response came from cache: it was prefetched.
    let ids = got.header("x-varnish").split_whitespace().count();
    assert_eq!(
        ids,
        2,
        "served from Varnish's cache (x-varnish: {})",
        got.header("x-varnish")
    );
    stop.cancel();
    sync.shutdown().await;
    let _ = std::fs::remove_dir_all(&work);
}
