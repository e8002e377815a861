//! RFC 9111 behaviour: hits and misses, age, validation, variants, coalescing, stale serving.

use std::sync::Arc;
use std::time::Duration;

use tern_edge::testsuite::{Resource, send};

use crate::{Setup, eventually};

#[tokio::test]
async fn miss_then_hit_and_age_grows() {
    let setup = Setup::new().await;
    setup
        .origin
        .set("/a", Resource::ok("hello", &[("cache-control", "max-age=100")]));

    let first = setup.get("/a").await;
    assert_eq!(first.status, 200);
    assert_eq!(&first.body[..], b"hello");
    assert!(
        first
            .header("cache-status")
            .starts_with("tern; fwd=miss; fwd-status=200; stored"),
        "{:?}",
        first.headers
    );

    let second = setup.get("/a").await;
    assert_eq!(&second.body[..], b"hello");
    assert!(
        second.header("cache-status").starts_with("tern; hit"),
        "{}",
        second.header("cache-status")
    );
    let age_before: u64 = second.header("age").parse().expect("age");

    setup.advance(30);
    let third = setup.get("/a").await;
    let age_after: u64 = third.header("age").parse().expect("age");
    assert!(
        age_after >= age_before + 30,
        "age grew from {age_before} to {age_after}"
    );
    assert_eq!(
        third.header("cache-status"),
        format!("tern; hit; ttl={}", 100 - age_after)
    );
    assert_eq!(setup.origin.count_for("/a"), 1);
    assert!(third.header("via").contains("tern"));
}

#[tokio::test]
async fn without_freshness_every_use_is_validated() {
    let setup = Setup::new().await;
    setup.origin.set("/plain", Resource::ok("v1", &[("etag", "\"v1\"")]));
    let first = setup.get("/plain").await;
    assert_eq!(&first.body[..], b"v1");
    let second = setup.get("/plain").await;
    assert_eq!(&second.body[..], b"v1");
    assert_eq!(
        setup.origin.count_for("/plain"),
        2,
        "a response without freshness must be revalidated"
    );
    let seen = setup.origin.seen();
    assert_eq!(
        seen[1].headers.get("if-none-match").map(|v| v.to_str().unwrap_or("")),
        Some("\"v1\"")
    );
    assert!(
        second.header("cache-status").contains("fwd=stale; fwd-status=304"),
        "{}",
        second.header("cache-status")
    );

    // No validator and no freshness: not stored at all.
    setup.origin.set("/bare", Resource::ok("x", &[]));
    setup.get("/bare").await;
    setup.get("/bare").await;
    assert_eq!(setup.origin.count_for("/bare"), 2);
}

#[tokio::test]
async fn five_hundred_concurrent_misses_make_one_origin_request() {
    let setup = Arc::new(Setup::new().await);
    let mut slow = Resource::ok(vec![b'z'; 100_000], &[("cache-control", "max-age=60")]);
    slow.delay = Duration::from_millis(300);
    setup.origin.set("/cold", slow);
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let setup = setup.clone();
        tasks.push(tokio::spawn(async move { setup.get("/cold").await }));
    }
    for task in tasks {
        let got = task.await.expect("join");
        assert_eq!(got.status, 200);
        assert_eq!(got.body.len(), 100_000);
    }
    assert_eq!(
        setup.origin.count_for("/cold"),
        1,
        "coalescing must make exactly one origin request"
    );
}

#[tokio::test]
async fn uncacheable_response_releases_waiters_to_go_upstream() {
    let setup = Arc::new(Setup::new().await);
    let mut private = Resource::ok("mine", &[("cache-control", "private")]);
    private.delay = Duration::from_millis(200);
    setup.origin.set("/private", private);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let setup = setup.clone();
        tasks.push(tokio::spawn(async move { setup.get("/private").await }));
    }
    for task in tasks {
        assert_eq!(&task.await.expect("join").body[..], b"mine");
    }
    assert_eq!(setup.origin.count_for("/private"), 5);
}

#[tokio::test]
async fn revalidation_304_refreshes_and_updates_headers() {
    let setup = Setup::new().await;
    setup.origin.set(
        "/r",
        Resource::ok(
            "body",
            &[("cache-control", "max-age=10"), ("etag", "\"e1\""), ("x-version", "1")],
        ),
    );
    setup.get("/r").await;
    setup.advance(20);
    // The origin now answers the conditional request with 304 and a new header value.
    setup.origin.set(
        "/r",
        Resource::ok(
            "body",
            &[("cache-control", "max-age=10"), ("etag", "\"e1\""), ("x-version", "2")],
        ),
    );
    let validated = setup.get("/r").await;
    assert_eq!(&validated.body[..], b"body");
    assert_eq!(validated.header("x-version"), "2");
    assert!(validated.header("cache-status").contains("fwd=stale; fwd-status=304"));
    assert_eq!(setup.origin.count_for("/r"), 2);
    // Fresh again: a hit, with the updated header.
    let hit = setup.get("/r").await;
    assert!(hit.header("cache-status").contains("hit"));
    assert_eq!(hit.header("x-version"), "2");
    assert_eq!(setup.origin.count_for("/r"), 2);
}

#[tokio::test]
async fn client_conditionals_and_ranges_from_cache() {
    let setup = Setup::new().await;
    let modified = "Wed, 21 Oct 2015 07:28:00 GMT";
    setup.origin.set(
        "/c",
        Resource::ok(
            "0123456789",
            &[
                ("cache-control", "max-age=100"),
                ("etag", "\"c1\""),
                ("last-modified", modified),
            ],
        ),
    );
    setup.get("/c").await;
    let not_modified = setup.get_with("/c", &[("if-none-match", "\"c1\"")]).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), "\"c1\"");
    let since = setup.get_with("/c", &[("if-modified-since", modified)]).await;
    assert_eq!(since.status, 304);
    let other = setup.get_with("/c", &[("if-none-match", "\"old\"")]).await;
    assert_eq!(other.status, 200);

    let partial = setup.get_with("/c", &[("range", "bytes=2-5")]).await;
    assert_eq!(partial.status, 206);
    assert_eq!(&partial.body[..], b"2345");
    assert_eq!(partial.header("content-range"), "bytes 2-5/10");
    let unsatisfiable = setup.get_with("/c", &[("range", "bytes=50-")]).await;
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(unsatisfiable.header("content-range"), "bytes */10");

    let head = send(&setup.client, "HEAD", &setup.url("/c"), &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), "10");
    assert_eq!(setup.origin.count_for("/c"), 1, "all of these are answered from cache");
}

#[tokio::test]
async fn range_on_a_miss_fetches_the_whole_object() {
    let setup = Setup::new().await;
    setup
        .origin
        .set("/m", Resource::ok("abcdefghij", &[("cache-control", "max-age=100")]));
    let partial = setup.get_with("/m", &[("range", "bytes=-3")]).await;
    assert_eq!(partial.status, 206);
    assert_eq!(&partial.body[..], b"hij");
    assert!(setup.origin.seen()[0].headers.get("range").is_none());
    let full = setup.get("/m").await;
    assert_eq!(&full.body[..], b"abcdefghij");
    assert!(full.header("cache-status").contains("hit"));
}

#[tokio::test]
async fn vary_variants_are_stored_apart() {
    let setup = Setup::new().await;
    setup.origin.set(
        "/v",
        Resource::ok(
            "either",
            &[("cache-control", "max-age=100"), ("vary", "accept-language")],
        ),
    );
    let en = setup.get_with("/v", &[("accept-language", "en")]).await;
    assert!(en.header("cache-status").contains("fwd=miss"));
    let fr = setup.get_with("/v", &[("accept-language", "fr")]).await;
    assert!(
        fr.header("cache-status").contains("fwd=vary-miss"),
        "{}",
        fr.header("cache-status")
    );
    assert_eq!(setup.origin.count_for("/v"), 2);
    assert!(
        setup
            .get_with("/v", &[("accept-language", "en")])
            .await
            .header("cache-status")
            .contains("hit")
    );
    assert!(
        setup
            .get_with("/v", &[("accept-language", "fr")])
            .await
            .header("cache-status")
            .contains("hit")
    );
    let key = format!("http://{}/v", setup.edge.listen);
    assert_eq!(setup.edge.role.store().variants(&key).len(), 2);
}

#[tokio::test]
async fn targeted_cache_control_wins() {
    let setup = Setup::new().await;
    setup.origin.set(
        "/t",
        Resource::ok(
            "t",
            &[("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")],
        ),
    );
    setup.get("/t").await;
    let hit = setup.get("/t").await;
    assert!(hit.header("cache-status").contains("hit"));
    assert_eq!(
        hit.header("cache-control"),
        "no-store",
        "the browser still sees the origin's own field"
    );
    assert_eq!(setup.origin.count_for("/t"), 1);
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes() {
    let setup = Setup::new().await;
    setup.origin.set(
        "/s",
        Resource::ok("old", &[("cache-control", "max-age=10, stale-while-revalidate=60")]),
    );
    setup.get("/s").await;
    setup.advance(20);
    setup.origin.set(
        "/s",
        Resource::ok("newer", &[("cache-control", "max-age=10, stale-while-revalidate=60")]),
    );
    let stale = setup.get("/s").await;
    assert_eq!(&stale.body[..], b"old");
    assert!(stale.header("cache-status").contains("stale-while-revalidate"));
    let store = setup.edge.role.store().clone();
    let key = format!("http://{}/s", setup.edge.listen);
    eventually("the background refresh stored the new body", || {
        store
            .variants(&key)
            .first()
            .is_some_and(|object| object.meta.body_len == 5)
    })
    .await;
    let fresh = setup.get("/s").await;
    assert_eq!(&fresh.body[..], b"newer");
    assert!(fresh.header("cache-status").contains("hit"));
    assert_eq!(setup.origin.count_for("/s"), 2);
}

#[tokio::test]
async fn stale_if_error_within_and_beyond_the_window() {
    let setup = Setup::new().await;
    setup.origin.set(
        "/e",
        Resource::ok("kept", &[("cache-control", "max-age=10, stale-if-error=60")]),
    );
    setup.get("/e").await;
    setup.advance(30);
    let mut broken = Resource::ok("oops", &[]);
    broken.status = 500;
    setup.origin.set("/e", broken);
    let rescued = setup.get("/e").await;
    assert_eq!(rescued.status, 200);
    assert_eq!(&rescued.body[..], b"kept");
    assert!(rescued.header("cache-status").contains("stale-if-error"));
    setup.advance(60);
    let failed = setup.get("/e").await;
    assert_eq!(failed.status, 500, "beyond the window the origin's error goes through");
}

#[tokio::test]
async fn stale_if_error_when_the_origin_times_out() {
    let setup = Setup::with(|config| config.upstream.first_byte_timeout_ms = 300).await;
    setup.origin.set(
        "/down",
        Resource::ok("saved", &[("cache-control", "max-age=1, stale-if-error=100")]),
    );
    setup.get("/down").await;
    setup.advance(5);
    let mut hang = Resource::ok("never", &[]);
    hang.delay = Duration::from_secs(3);
    setup.origin.set("/down", hang);
    let rescued = setup.get("/down").await;
    assert_eq!(&rescued.body[..], b"saved", "a first-byte timeout counts as an error");
    setup.advance(200);
    let failed = setup.get("/down").await;
    assert_eq!(failed.status, 504);
    assert!(String::from_utf8_lossy(&failed.body).contains("sent no response"));
}

#[tokio::test]
async fn unreachable_origin_is_a_502_with_the_reason_but_not_the_origins_address() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let setup = Setup::with(|config| config.origin = format!("http://{dead_addr}")).await;
    let failed = setup.get("/x").await;
    assert_eq!(failed.status, 502);
    let body = String::from_utf8_lossy(&failed.body);
    assert!(
        body.contains("cannot connect to the origin (connection refused)"),
        "{body}"
    );
    // The origin's address and the system's error are for the operator (the log), not for the public.
    assert!(
        !body.contains(&dead_addr.port().to_string()) && !body.contains("os error"),
        "{body}"
    );
}

#[tokio::test]
async fn unsafe_methods_invalidate() {
    let setup = Setup::new().await;
    setup
        .origin
        .set("/doc", Resource::ok("v1", &[("cache-control", "max-age=100")]));
    setup.get("/doc").await;
    let mut accepted = Resource::ok("ok", &[]);
    accepted.status = 204;
    setup.origin.set("/doc", accepted);
    let posted = send(&setup.client, "POST", &setup.url("/doc"), &[]).await;
    assert_eq!(posted.status, 204);
    assert!(posted.header("cache-status").contains("fwd=method"));
    setup
        .origin
        .set("/doc", Resource::ok("v2", &[("cache-control", "max-age=100")]));
    assert_eq!(&setup.get("/doc").await.body[..], b"v2");
}

#[tokio::test]
async fn request_no_cache_and_only_if_cached() {
    let setup = Setup::new().await;
    setup.origin.set(
        "/n",
        Resource::ok("n", &[("cache-control", "max-age=100"), ("etag", "\"n\"")]),
    );
    let cold = setup
        .get_with("/cold-only", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(cold.status, 504);
    setup.get("/n").await;
    let forced = setup.get_with("/n", &[("cache-control", "no-cache")]).await;
    assert!(forced.header("cache-status").contains("fwd=request"));
    assert_eq!(setup.origin.count_for("/n"), 2);
}
