//! Bad input at the listener: each kind is rejected with a reason, and good agents keep being served.

use std::time::Duration;

use tern_wire::SecretKey;
use tern_wire::frame::{self, FrameDecoder};
use tern_wire::sync::{Change, ChangeBatch, ChangeKind, Incarnation, SyncMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{HOST, World};

/// Sends `bytes` and returns the rejection reason the listener answered (if any).
async fn answer_to(world: &World, bytes: &[u8], key: &SecretKey) -> Option<String> {
    let mut stream = TcpStream::connect(world.sync_addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let mut decoder = FrameDecoder::new(key.clone(), 1 << 20);
    decoder.push(&answer);
    match decoder.next_frame().ok().flatten().map(|f| SyncMessage::decode(&f)) {
        Some(Ok(SyncMessage::Reject(reject))) => Some(reject.reason),
        Some(Ok(SyncMessage::Ack(_))) => Some("ack".into()),
        _ => None,
    }
}

fn batch(url: &str, seq: u64) -> SyncMessage {
    SyncMessage::Changes(ChangeBatch {
        site: "www".into(),
        agent: "intruder-test".into(),
        incarnation: Incarnation::parse("intruder-test").expect("id"),
        changes: vec![Change {
            seq,
            url: url.into(),
            kind: ChangeKind::Modified,
            etag: None,
            at_ms: 0,
        }],
    })
}

#[tokio::test]
async fn every_kind_of_bad_frame_is_rejected_and_good_agents_go_on() {
    let world = World::new(1).await;
    let key = world.agent_key.clone();
    let good = batch(&format!("http://{HOST}/x"), 1).encode(&key);

    let wrong_key = SecretKey::generate().expect("key");
    assert_eq!(
        answer_to(&world, &batch("http://www.test/x", 1).encode(&wrong_key), &key)
            .await
            .as_deref(),
        Some("bad-tag")
    );
    let mut flipped = good.clone();
    flipped[frame::HEADER_LEN + 5] ^= 0x20;
    assert_eq!(answer_to(&world, &flipped, &key).await.as_deref(), Some("bad-tag"));
    let mut version = good.clone();
    version[3] = 42;
    assert_eq!(answer_to(&world, &version, &key).await.as_deref(), Some("bad-version"));
    let mut oversized = good[..frame::HEADER_LEN].to_vec();
    oversized[5..9].copy_from_slice(&(64u32 << 20).to_be_bytes());
    assert_eq!(answer_to(&world, &oversized, &key).await.as_deref(), Some("too-large"));
    assert_eq!(
        answer_to(&world, b"\x00\x01garbage bytes that are no frame", &key)
            .await
            .as_deref(),
        Some("bad-magic")
    );
    assert_eq!(
        answer_to(&world, &good[..good.len() - 10], &key).await,
        None,
        "a truncated frame gets no answer"
    );
    let not_json = frame::encode(&key, tern_wire::sync::KIND_CHANGES, b"{ not json");
    assert_eq!(answer_to(&world, &not_json, &key).await.as_deref(), Some("malformed"));
    let unknown_site = SyncMessage::Changes(ChangeBatch {
        site: "other".into(),
        agent: "a".into(),
        incarnation: Incarnation::default(),
        changes: vec![],
    });
    assert_eq!(
        answer_to(&world, &unknown_site.encode(&key), &key).await.as_deref(),
        Some("unknown-site")
    );

    // A URL outside the site's host is refused by the master (the batch itself is acknowledged).
    assert_eq!(
        answer_to(&world, &batch("http://elsewhere.example/x", 2).encode(&key), &key)
            .await
            .as_deref(),
        Some("ack")
    );
    assert_eq!(
        world.service().master().len(),
        0,
        "nothing outside the site's host is recorded"
    );

    // The real agent is still served.
    std::fs::write(world.site().join("after.html"), "still working").expect("write");
    world.scan().await;
    world.settled().await;
    assert_eq!(&world.get(0, "/after.html").await.body[..], b"still working");
}
