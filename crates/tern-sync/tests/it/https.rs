//! Caches reached over HTTPS: the purge token crosses the network encrypted, the cache is verified
//! against `--cache-ca`, and a cache that redirects plain HTTP (an edge with `redirect_https`) has its
//! prefetches counted as failed rather than stored nowhere while counted as done.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tern_edge::EdgeConfig;
use tern_edge::testsuite::{client, send};
use tern_http::testsuite::TestCa;
use tern_sync::{CacheConfig, SiteConfig, SyncConfig};
use tern_wire::SecretKey;

use crate::{HOST, agent_config, free_addr, start_origin};

#[tokio::test]
async fn an_https_cache_is_verified_purged_and_prefetched_and_a_redirecting_one_is_told_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("page.html"), "version 1").expect("write");
    let origin = start_origin(&site).await;
    let purge_key = dir.path().join("purge.key");
    SecretKey::write_new(&purge_key).expect("purge key");
    let ca = TestCa::new("tern sync test CA");
    let ca_file = ca.write(&dir.path().join("ca.pem"));
    let (cert, key) = ca.issue(&["localhost"]).write(dir.path(), "edge");
    let edge = tern_edge::start(EdgeConfig {
        listen: free_addr(),
        tls_listen: Some(free_addr()),
        tls_cert: Some(cert),
        tls_key: Some(key),
        redirect_https: true,
        origin: format!("http://{}", origin.listen),
        cache_dir: Some(dir.path().join("edge")),
        purge_key: Some(purge_key.clone()),
        ..EdgeConfig::default()
    })
    .await
    .expect("edge");
    let https_port = edge.tls.expect("an HTTPS listener").port();
    let secure = format!("https://localhost:{https_port}");
    let redirecting = format!("http://{}", edge.listen);

    let agent_key = SecretKey::generate().expect("key");
    let (sync_addr, sync_admin) = (free_addr(), free_addr());
    let sync = tern_sync::start(SyncConfig {
        listen: sync_addr,
        admin: Some(sync_admin),
        key: agent_key.clone(),
        cache_key: Some(SecretKey::load(&purge_key).expect("purge key")),
        data_dir: dir.path().join("sync"),
        sites: vec![SiteConfig {
            name: "www".into(),
            hosts: vec![HOST.into()],
        }],
        caches: [&secure, &redirecting]
            .into_iter()
            .map(|url| CacheConfig {
                url: url.clone(),
                sites: vec![],
            })
            .collect(),
        max_frame: 1 << 20,
        max_retry_age: Duration::from_secs(3600),
        request_timeout: Duration::from_secs(5),
        commands_in_flight: tern_sync::cacher::DEFAULT_COMMANDS_IN_FLIGHT,
        cache_ca: Some(ca_file.clone()),
    })
    .await
    .expect("sync");
    let agent = tern_sync::Agent::new(agent_config(dir.path(), sync_addr, &agent_key)).expect("agent");
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(agent.clone().run(stop.clone()));

    // A change: both caches apply it, over HTTPS and over the redirecting plain port.
    agent.scan_once().await;
    std::fs::write(site.join("page.html"), "version 2").expect("write");
    agent.scan_once().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(agent.stats().pending == 0 && sync.role.caught_up()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {:?}",
            sync.role.progress()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The HTTPS cache stored the new bytes before anyone asked: the first request is a hit.
    let https = tern_http::tls::ClientTls::new(Some(&ca_file))
        .expect("CA")
        .client::<Empty<Bytes>>();
    let request = http::Request::get(format!("{secure}/page.html"))
        .header("host", HOST)
        .body(Empty::new())
        .expect("request");
    let response = https.request(request).await.expect("an HTTPS answer");
    let status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"version 2");
    assert!(status.contains("hit"), "prefetched over HTTPS: {status}");

    // The plain port redirects: its purges count, its prefetches are failures, not "ok".
    let metrics = send(&client(), "GET", &format!("http://{sync_admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let count = |cache: &str, command: &str, outcome: &str| {
        text.lines()
            .find(|line| {
                line.starts_with("tern_sync_commands_total{")
                    && line.contains(&format!("cache=\"{cache}\""))
                    && line.contains(&format!("command=\"{command}\""))
                    && line.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count(&secure, "prefetch", "ok") >= 1, "{text}");
    assert!(count(&redirecting, "purge", "ok") >= 1, "{text}");
    assert!(count(&redirecting, "prefetch", "failed") >= 1, "{text}");
    assert_eq!(count(&redirecting, "prefetch", "ok"), 0, "{text}");

    stop.cancel();
    let _ = running.await;
}
