//! Bad input and failing upstreams: malformed requests, absurd headers, bodies cut off mid-way; plus h2c
//! and the admin endpoints.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tern_edge::testsuite::{Resource, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Setup;

async fn raw(setup: &Setup, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(setup.edge.listen).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).to_string()
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_edge_keeps_serving() {
    let setup = Setup::new().await;
    setup
        .origin
        .set("/ok", Resource::ok("ok", &[("cache-control", "max-age=100")]));
    let garbage = raw(&setup, b"\x16\x03\x01garbage that is not http\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let bad_header = raw(&setup, b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n").await;
    assert!(bad_header.starts_with("HTTP/1.1 400"), "{bad_header}");
    let no_host = raw(&setup, b"GET /ok HTTP/1.1\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    let two_hosts = raw(
        &setup,
        b"GET /ok HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    )
    .await;
    assert!(
        two_hosts.starts_with("HTTP/1.1 400"),
        "RFC 9112 section 3.2: {two_hosts}"
    );
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000));
    let too_big = raw(&setup, huge.as_bytes()).await;
    assert!(
        too_big.starts_with("HTTP/1.1 431"),
        "{}",
        &too_big[..too_big.len().min(100)]
    );
    assert_eq!(setup.get("/ok").await.status, 200, "still serving");
}

/// Fetches `path` and says whether the client could tell the transfer failed: a 502 or 504 (small bodies are read
/// whole before answering), a body that errors (large bodies stream), or a connection closed before the
/// head when the upstream failed before the edge's server flushed it.
async fn transfer_failed(setup: &Setup, path: &str) -> bool {
    let Ok(response) = setup
        .client
        .request(
            http::Request::get(setup.url(path))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
    else {
        return true;
    };
    if matches!(response.status().as_u16(), 502 | 504) {
        return true;
    }
    response.into_body().collect().await.is_err()
}

#[tokio::test]
async fn a_body_cut_off_mid_way_is_never_stored() {
    let setup = Setup::new().await;
    // 5,000 bytes takes the read-whole path, 200,000 the streaming path.
    for declared in [5_000u64, 200_000] {
        let path = format!("/cut-{declared}");
        let mut cut = Resource::ok(vec![b'c'; 1000], &[("cache-control", "max-age=100")]);
        cut.truncate_to = Some(declared);
        setup.origin.set(&path, cut);
        assert!(
            transfer_failed(&setup, &path).await,
            "{declared}: the client must see the transfer fail"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            setup.edge.role.store().stats().objects,
            0,
            "{declared}: the partial object is not stored"
        );
        setup.origin.set(
            &path,
            Resource::ok(vec![b'c'; declared as usize], &[("cache-control", "max-age=100")]),
        );
        let whole = setup.get(&path).await;
        assert_eq!(whole.body.len() as u64, declared);
        assert!(whole.header("cache-status").contains("fwd=miss"));
        setup.edge.role.store().purge_url(
            &format!("http://{}{path}", setup.edge.listen),
            tern_http_cache::PurgeMode::Hard,
        );
    }
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let setup = Setup::new().await;
    setup
        .origin
        .set("/h2", Resource::ok("two", &[("cache-control", "max-age=100")]));
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    for expected in ["fwd=miss", "hit"] {
        let response = h2
            .request(
                http::Request::get(setup.url("/h2"))
                    .body(Full::new(Bytes::new()))
                    .expect("request"),
            )
            .await
            .expect("h2 response");
        assert_eq!(response.version(), http::Version::HTTP_2);
        let status = response.headers()["cache-status"].to_str().expect("text").to_string();
        assert!(status.contains(expected), "{status}");
        assert_eq!(
            &response.into_body().collect().await.expect("body").to_bytes()[..],
            b"two"
        );
    }
}

#[tokio::test]
async fn hop_by_hop_fields_are_not_forwarded() {
    let setup = Setup::new().await;
    setup.origin.set(
        "/hop",
        Resource::ok(
            "x",
            &[
                ("cache-control", "max-age=100"),
                ("connection", "x-private"),
                ("x-private", "1"),
            ],
        ),
    );
    let got = setup
        .get_with("/hop", &[("connection", "x-client-secret"), ("x-client-secret", "s")])
        .await;
    assert!(got.headers.get("x-private").is_none());
    let seen = &setup.origin.seen()[0];
    assert!(seen.headers.get("x-client-secret").is_none());
    assert!(seen.headers.get("x-forwarded-for").is_some());
    assert!(seen.headers["via"].to_str().expect("via").contains("tern"));
}

#[tokio::test]
async fn metrics_and_status() {
    let setup = Setup::new().await;
    setup
        .origin
        .set("/m", Resource::ok("m", &[("cache-control", "max-age=100")]));
    setup.get("/m").await;
    setup.get("/m").await;
    let metrics = send(&setup.client, "GET", &setup.admin_url("/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("tern_edge_requests_total{result=\"hit\"} 1"), "{text}");
    assert!(text.contains("tern_edge_requests_total{result=\"miss\"} 1"));
    assert!(text.contains("tern_edge_cache_objects 1"));
    let status = send(&setup.client, "GET", &setup.admin_url("/status"), &[]).await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).expect("json");
    assert_eq!(status["role"], "edge");
    assert_eq!(status["cache"]["objects"], 1);
}

/// An origin speaking raw bytes: answers every connection with `response`, then `then` (stall or close).
async fn raw_origin(response: &'static [u8], stall: bool) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(response).await;
                if stall {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_origin_sending_more_than_it_declared_is_held_to_its_length() {
    let origin = raw_origin(
        b"HTTP/1.1 200 OK\r\ncache-control: max-age=100\r\ncontent-length: 5\r\n\r\nhelloEXTRA-BYTES-NOT-PART-OF-IT",
        false,
    )
    .await;
    let setup = Setup::with(|config| config.origin = format!("http://{origin}")).await;
    let first = setup.get("/long").await;
    assert_eq!(&first.body[..], b"hello");
    let second = setup.get("/long").await;
    assert_eq!(&second.body[..], b"hello");
    assert!(second.header("cache-status").contains("hit"));
}

#[tokio::test]
async fn an_origin_that_stalls_mid_body_is_cut_off_and_not_stored() {
    let origin = raw_origin(
        b"HTTP/1.1 200 OK\r\ncache-control: max-age=100\r\ncontent-length: 100\r\n\r\nonly part of it",
        true,
    )
    .await;
    let setup = Setup::with(|config| {
        config.origin = format!("http://{origin}");
        config.upstream.idle_body_timeout_ms = 300;
    })
    .await;
    assert!(
        transfer_failed(&setup, "/stall").await,
        "the client sees the transfer fail"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(setup.edge.role.store().stats().objects, 0);
}

#[tokio::test]
async fn a_request_body_longer_than_declared_does_not_smuggle_a_request() {
    let setup = Setup::new().await;
    setup.origin.set("/post", Resource::ok("accepted", &[]));
    let answer = raw(
        &setup,
        b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGARBAGE-NOT-A-REQUEST\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("HTTP/1.1 400"),
        "the extra bytes are a malformed request, refused: {answer}"
    );
    let seen = setup.origin.seen();
    assert_eq!(seen.len(), 1, "only the declared request reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_fails_to_start_leaves_no_community_peer_behind() {
    let origin = tern_edge::testsuite::TestOrigin::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("cluster.key");
    tern_wire::SecretKey::write_new(&key).expect("key");
    // The main port is taken, so the start fails after the community part has started.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("address")
    };
    let config = tern_edge::EdgeConfig {
        listen: taken.local_addr().expect("address"),
        origin: format!("http://{}", origin.addr),
        community: Some(tern_edge::community::CommunitySettings {
            name: "site".into(),
            cluster_key: key,
            peer_listen: peer,
            ..Default::default()
        }),
        ..tern_edge::EdgeConfig::default()
    };
    assert!(tern_edge::start(config).await.is_err(), "the main port is taken");
    // The community driver stopped with it: its socket on the peer port is closed.
    let mut freed = false;
    for _ in 0..100 {
        if std::net::UdpSocket::bind(peer).is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the community driver still holds {peer} after the failed start");
}
