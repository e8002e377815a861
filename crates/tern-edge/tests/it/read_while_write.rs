//! Read-while-write: a request that joins a miss whose body is still streaming in is served from that body
//! as it arrives (not when the whole of it is stored), and the origin sees one request; with a disk tier a
//! request may join at any time (it reads what it missed from the file), without one a request too late
//! for the first bytes leads a fetch of its own at once; a body that fails upstream is cut for every
//! client. A HEAD, a range, and a request for another variant that arrive meanwhile are answered from
//! the streaming response (the first two) or fetched at once (the last).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tern_edge::testsuite::Resource;

use crate::Setup;

/// A body of `len` bytes that tells its halves apart.
fn pattern(len: usize) -> Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// Serves a 400 000-byte body at `path` whose first request the origin holds midway until the returned
/// `Notify` is notified; `adjust` sets the rest of the resource. Returns the body and the hold.
fn held(setup: &Setup, path: &str, adjust: impl FnOnce(&mut Resource)) -> (Bytes, Arc<tokio::sync::Notify>) {
    let body = pattern(400_000);
    let hold = Arc::new(tokio::sync::Notify::new());
    let mut resource = Resource::ok(body.clone(), &[("cache-control", "max-age=600")]);
    resource.hold_midway = Some(hold.clone());
    adjust(&mut resource);
    setup.origin.set(path, resource);
    (body, hold)
}

/// A response whose body is read chunk by chunk.
struct Streaming {
    head: http::response::Parts,
    body: hyper::body::Incoming,
    read: Vec<u8>,
}

impl Streaming {
    async fn get(setup: &Setup, path: &str) -> Streaming {
        let client = tern_edge::testsuite::client();
        let request = http::Request::get(setup.url(path))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
            .await
            .expect("the head arrives while the origin holds the rest of the body")
            .expect("response");
        let (head, body) = response.into_parts();
        Streaming {
            head,
            body,
            read: Vec::new(),
        }
    }

    /// Reads until at least `len` bytes have arrived.
    async fn read_at_least(&mut self, len: usize) {
        while self.read.len() < len {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("bytes arrive while the origin holds the rest of the body")
                .expect("not the end yet")
                .expect("no error");
            if let Ok(data) = frame.into_data() {
                self.read.extend_from_slice(&data);
            }
        }
    }

    /// Reads to the end: the whole body, or the error that cut it.
    async fn finish(mut self) -> Result<Vec<u8>, String> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("the body ends")
            {
                None => return Ok(self.read),
                Some(Err(error)) => return Err(error.to_string()),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.read.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    fn header(&self, name: &str) -> String {
        self.head
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

#[tokio::test]
async fn a_request_that_joins_a_streaming_miss_reads_it_as_it_arrives() {
    let setup = Setup::new().await;
    for (path, chunked) in [("/video", false), ("/feed", true)] {
        let (body, hold) = held(&setup, path, |resource| resource.chunked = chunked);

        let mut leader = Streaming::get(&setup, path).await;
        leader.read_at_least(100_000).await;
        // The origin holds the second half: the joining request must get its head and the first half now.
        let mut follower = Streaming::get(&setup, path).await;
        follower.read_at_least(150_000).await;
        assert!(
            follower.header("cache-status").contains("collapsed"),
            "{path}: {}",
            follower.header("cache-status")
        );
        assert_eq!(follower.head.status, 200);
        hold.notify_one();
        assert!(leader.finish().await.expect("whole") == body, "{path}");
        assert!(follower.finish().await.expect("whole") == body, "{path}");
        assert_eq!(setup.origin.count_for(path), 1, "{path}: one origin request for both");
        assert!(setup.get(path).await.header("cache-status").contains("hit"), "{path}");
    }
    let metrics = crate::metrics_text(&setup).await;
    assert!(
        metrics.contains("tern_edge_coalesced_streams_total{outcome=\"streamed\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_a_disk_tier_requests_join_at_any_time_and_read_what_they_missed_from_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let setup = Arc::new(
        Setup::with(|config| {
            config.cache_dir = Some(dir.path().to_path_buf());
            config.max_memory_object = 100_000;
        })
        .await,
    );
    let (body, hold) = held(&setup, "/big", |_| {});

    let mut leader = Streaming::get(&setup, "/big").await;
    // More than the 100 000 bytes kept in memory has gone by: the first bytes are in the file only.
    leader.read_at_least(120_000).await;
    let mut late = Vec::new();
    for _ in 0..5 {
        let mut joiner = Streaming::get(&setup, "/big").await;
        joiner.read_at_least(150_000).await;
        assert!(joiner.header("cache-status").contains("collapsed"));
        late.push(joiner);
    }
    hold.notify_one();
    for joiner in late {
        let got = joiner.finish().await.expect("whole");
        assert!(got == body, "a late joiner got {} bytes, not the whole body", got.len());
    }
    assert!(leader.finish().await.expect("whole") == body);
    assert_eq!(setup.origin.count_for("/big"), 1, "one origin request for all six");
}

#[tokio::test]
async fn without_a_disk_tier_a_request_too_late_for_the_first_bytes_leads_a_fetch_at_once() {
    let setup = Setup::with(|config| config.max_memory_object = 100_000).await;
    let (body, hold) = held(&setup, "/big", |_| {});

    let mut leader = Streaming::get(&setup, "/big").await;
    // More than the 100 000 bytes kept for joiners has gone by, and there is no file to read them from: the
    // object is past what the memory tier stores, so there is nothing to wait for.
    leader.read_at_least(120_000).await;
    let late = tokio::time::timeout(Duration::from_secs(10), setup.get("/big"))
        .await
        .expect("the late request does not wait for the held fetch");
    assert!(late.body == body, "the late request got {} bytes", late.body.len());
    assert_eq!(setup.origin.count_for("/big"), 2, "it led a fetch of its own");
    hold.notify_one();
    assert!(leader.finish().await.expect("whole") == body);
    let metrics = crate::metrics_text(&setup).await;
    assert!(
        metrics.contains("tern_edge_coalesced_streams_total{outcome=\"too-late\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_back_neither_the_transfer_nor_those_who_joined() {
    let dir = tempfile::tempdir().expect("temp dir");
    // More than the sockets between the edge and a client can buffer.
    let body = pattern(32 << 20);
    for disk in [false, true] {
        let setup = Setup::with(|config| {
            if disk {
                config.cache_dir = Some(dir.path().to_path_buf());
            } else {
                // The whole body is kept for joiners: only a client that does not read could hold it back.
                config.max_memory_object = 64 << 20;
            }
        })
        .await;
        setup.origin.set(
            "/large",
            Resource::ok(body.clone(), &[("cache-control", "max-age=600")]),
        );
        let stalled = Streaming::get(&setup, "/large").await;
        let joined = tokio::time::timeout(Duration::from_secs(30), setup.get("/large"))
            .await
            .unwrap_or_else(|_| {
                panic!("disk tier {disk}: the joined request is held back by a client that does not read")
            });
        assert!(joined.body == body, "disk tier {disk}: {} bytes", joined.body.len());
        assert!(
            joined.header("cache-status").contains("collapsed"),
            "{}",
            joined.header("cache-status")
        );
        assert_eq!(setup.origin.count_for("/large"), 1, "disk tier {disk}");
        assert!(
            setup.get("/large").await.header("cache-status").contains("hit"),
            "disk tier {disk}: stored while its first client read nothing"
        );
        assert!(
            stalled.finish().await.expect("whole") == body,
            "disk tier {disk}: the idle client reads it all later"
        );
    }
}

#[tokio::test]
async fn a_streaming_body_that_fails_upstream_is_cut_for_every_client() {
    let setup = Setup::new().await;
    let (body, hold) = held(&setup, "/breaks", |resource| resource.fail_after_hold = true);

    let mut leader = Streaming::get(&setup, "/breaks").await;
    leader.read_at_least(100_000).await;
    let mut follower = Streaming::get(&setup, "/breaks").await;
    follower.read_at_least(100_000).await;
    hold.notify_one();
    assert!(leader.finish().await.is_err(), "the leader's body is cut");
    assert!(
        follower.finish().await.is_err(),
        "the joined body is cut, never passed off as whole"
    );
    let next = setup.get("/breaks").await;
    assert!(
        next.body == body,
        "nothing was stored: the next request fetches it whole"
    );
    assert_eq!(setup.origin.count_for("/breaks"), 2);
}

#[tokio::test]
async fn requests_for_another_variant_go_upstream_at_once_sharing_one_fetch() {
    let setup = Setup::new().await;
    let (body, hold) = held(&setup, "/page", |resource| {
        resource.headers.push(("vary".into(), "accept-language".into()));
        // Every answer takes a while, so that the other variant's requests overlap its fetch.
        resource.delay = Duration::from_millis(300);
    });

    let mut leader = Streaming::get(&setup, "/page").await;
    leader.read_at_least(100_000).await;
    // Eight requests for another variant while the first streams (held by the origin).
    let others: Vec<_> = (0..8)
        .map(|_| {
            let client = setup.client.clone();
            let url = setup.url("/page");
            tokio::spawn(
                async move { tern_edge::testsuite::send(&client, "GET", &url, &[("accept-language", "de")]).await },
            )
        })
        .collect();
    for other in others {
        let other = tokio::time::timeout(Duration::from_secs(10), other)
            .await
            .expect("another variant does not wait for the streaming one")
            .expect("task");
        assert!(other.body == body);
    }
    assert_eq!(
        setup.origin.count_for("/page"),
        2,
        "the other variant was fetched once, for all eight"
    );
    let metrics = crate::metrics_text(&setup).await;
    assert!(
        metrics.contains("tern_edge_coalesced_streams_total{outcome=\"other-response\"}"),
        "{metrics}"
    );
    hold.notify_one();
    assert!(leader.finish().await.expect("whole") == body);
}

#[tokio::test]
async fn a_head_request_during_a_streaming_miss_is_answered_from_it() {
    let setup = Setup::new().await;
    let (body, hold) = held(&setup, "/file", |_| {});

    let mut leader = Streaming::get(&setup, "/file").await;
    leader.read_at_least(100_000).await;
    let head = tokio::time::timeout(
        Duration::from_secs(10),
        tern_edge::testsuite::send(&setup.client, "HEAD", &setup.url("/file"), &[]),
    )
    .await
    .expect("the HEAD is answered while the body still streams in");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), "400000");
    assert!(
        head.header("cache-status").contains("collapsed"),
        "{}",
        head.header("cache-status")
    );
    assert_eq!(setup.origin.count_for("/file"), 1, "the HEAD did not go to the origin");
    hold.notify_one();
    assert!(leader.finish().await.expect("whole") == body);
}

#[tokio::test]
async fn a_range_request_that_joins_a_streaming_miss_gets_its_range_from_it() {
    let setup = Setup::new().await;
    let (body, hold) = held(&setup, "/clip", |_| {});

    let mut leader = Streaming::get(&setup, "/clip").await;
    leader.read_at_least(100_000).await;
    // The range lies in the half that has arrived: it is answered while the origin holds the rest.
    let ranged = tokio::time::timeout(
        Duration::from_secs(10),
        setup.get_with("/clip", &[("range", "bytes=1000-1999")]),
    )
    .await
    .expect("the range is answered from the bytes that have arrived");
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.header("content-range"), "bytes 1000-1999/400000");
    assert!(ranged.body == body.slice(1000..2000));
    assert!(
        ranged.header("cache-status").contains("collapsed"),
        "{}",
        ranged.header("cache-status")
    );
    hold.notify_one();
    assert!(leader.finish().await.expect("whole") == body);
    assert_eq!(setup.origin.count_for("/clip"), 1, "one origin request for both");
}
