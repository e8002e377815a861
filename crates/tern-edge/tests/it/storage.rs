//! The disk tier: restarts, damaged files, the size bound.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_edge::clock::SystemClock;
use tern_edge::testsuite::{Resource, TestOrigin, client, send};
use tern_edge::upstream::Origin;
use tern_edge::{EdgeConfig, RunningEdge, start_with};

use crate::eventually;

async fn edge_on(origin: &TestOrigin, dir: &Path, size: u64) -> RunningEdge {
    let config = EdgeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        origin: origin.url(),
        cache_dir: Some(dir.to_path_buf()),
        cache_size: size,
        memory_size: size / 4,
        ..EdgeConfig::default()
    };
    let upstream = Arc::new(Origin::new(&config.origin, config.upstream.clone()).expect("origin"));
    start_with(config, upstream, Arc::new(SystemClock))
        .await
        .expect("edge starts")
}

fn object_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(dir.join("objects")).expect("objects dir").flatten() {
        for file in std::fs::read_dir(shard.path()).expect("shard").flatten() {
            files.push(file.path());
        }
    }
    files
}

#[tokio::test]
async fn restart_serves_the_disk_cache_and_drops_a_damaged_object() {
    let origin = TestOrigin::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client = client();
    origin.set(
        "/keep",
        Resource::ok(vec![b'k'; 20_000], &[("cache-control", "max-age=3600")]),
    );
    origin.set(
        "/damage",
        Resource::ok(vec![b'd'; 20_000], &[("cache-control", "max-age=3600")]),
    );

    let edge = edge_on(&origin, dir.path(), 64 << 20).await;
    for path in ["/keep", "/damage"] {
        let got = send(
            &client,
            "GET",
            &format!("http://{}{path}", edge.listen),
            &[("host", "site.test")],
        )
        .await;
        assert!(got.header("cache-status").contains("stored"));
    }
    edge.shutdown().await;
    assert_eq!(object_files(dir.path()).len(), 2);

    // Flip one body byte of /damage.
    let damaged = object_files(dir.path())
        .into_iter()
        .find(|path| std::fs::read(path).expect("read").windows(7).any(|w| w == b"/damage"))
        .expect("file of /damage");
    let mut bytes = std::fs::read(&damaged).expect("read");
    bytes[16 + 100] ^= 0xff;
    std::fs::write(&damaged, bytes).expect("write");

    let edge = edge_on(&origin, dir.path(), 64 << 20).await;
    assert_eq!(edge.role.store().stats().objects, 2, "the index is rebuilt from disk");
    let kept = send(
        &client,
        "GET",
        &format!("http://{}/keep", edge.listen),
        &[("host", "site.test")],
    )
    .await;
    assert!(
        kept.header("cache-status").contains("hit"),
        "{}",
        kept.header("cache-status")
    );
    assert_eq!(kept.body.len(), 20_000);
    assert_eq!(origin.count_for("/keep"), 1);

    let refetched = send(
        &client,
        "GET",
        &format!("http://{}/damage", edge.listen),
        &[("host", "site.test")],
    )
    .await;
    assert_eq!(
        &refetched.body[..],
        &vec![b'd'; 20_000][..],
        "the damaged copy is never served"
    );
    assert!(refetched.header("cache-status").contains("fwd=miss"));
    assert_eq!(origin.count_for("/damage"), 2);
    assert_eq!(edge.role.store().stats().corrupt_dropped, 1);
    edge.shutdown().await;
}

#[tokio::test]
async fn cache_size_is_respected_under_twice_the_fill() {
    let origin = TestOrigin::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client = client();
    let size: u64 = 1 << 20;
    let edge = edge_on(&origin, dir.path(), size).await;
    for n in 0..64 {
        let path = format!("/fill/{n}");
        origin.set(
            &path,
            Resource::ok(vec![b'f'; 32 * 1024], &[("cache-control", "max-age=3600")]),
        );
        let got = send(&client, "GET", &format!("http://{}{path}", edge.listen), &[]).await;
        assert_eq!(got.body.len(), 32 * 1024);
        let stats = edge.role.store().stats();
        assert!(
            stats.disk_bytes <= size,
            "disk tier holds {} of {size}",
            stats.disk_bytes
        );
        assert!(stats.memory_bytes <= size / 4);
    }
    let stats = edge.role.store().stats();
    assert!(stats.disk_evictions > 0);
    eventually("evicted files are deleted", || {
        let on_disk: u64 = object_files(dir.path())
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        on_disk <= size
    })
    .await;
    edge.shutdown().await;
}

#[tokio::test]
async fn memory_only_cache_respects_its_size() {
    let origin = TestOrigin::start().await;
    let client = client();
    let size: u64 = 1 << 20;
    let config = EdgeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        origin: origin.url(),
        cache_size: size,
        ..EdgeConfig::default()
    };
    let upstream = Arc::new(Origin::new(&config.origin, config.upstream.clone()).expect("origin"));
    let edge = start_with(config, upstream, Arc::new(SystemClock)).await.expect("edge");
    for n in 0..64 {
        let path = format!("/m/{n}");
        origin.set(
            &path,
            Resource::ok(vec![b'm'; 32 * 1024], &[("cache-control", "max-age=3600")]),
        );
        send(&client, "GET", &format!("http://{}{path}", edge.listen), &[]).await;
        assert!(edge.role.store().stats().memory_bytes <= size);
    }
    assert!(edge.role.store().stats().memory_evictions > 0);
    // Objects larger than the whole cache stream through without being stored.
    origin.set(
        "/huge",
        Resource::ok(vec![b'h'; 2 << 20], &[("cache-control", "max-age=3600")]),
    );
    let got = send(&client, "GET", &format!("http://{}/huge", edge.listen), &[]).await;
    assert_eq!(got.body.len(), 2 << 20);
    assert!(!got.header("cache-status").contains("stored"));
    edge.shutdown().await;
}
