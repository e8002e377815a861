//! The faults issue 9 found with real-world inputs, each with the input that showed it: an absurd `Age`, a
//! purge during a slow miss, two spellings of one URL, a response that sets a cookie, a client that aborts
//! a coalesced miss, and the smaller ones (414, `Via`, `Expect`, `Cache-Status; stored`); and those a trial
//! with a hostile origin found: waiters of a failed fetch asking the origin again, a body that trickles,
//! body failures that left no trace.

use std::sync::Arc;
use std::time::Duration;

use tern_edge::clock::SystemClock;
use tern_edge::testsuite::{Resource, TestOrigin, client, send};
use tern_edge::upstream::Origin;
use tern_edge::{EdgeConfig, RunningEdge, start_with};

use crate::Setup;

fn purgeable(config: &mut EdgeConfig) {
    config.purge_allow = vec!["127.0.0.0/8".parse().expect("net")];
}

#[tokio::test]
async fn an_absurd_age_neither_panics_nor_reads_as_fresh_also_after_a_restart() {
    let origin = TestOrigin::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client = client();
    // u64::MAX panicked every request for the URL; 2^64 was read as 0 (fresh for the whole max-age).
    for (path, age) in [("/max", "18446744073709551615"), ("/past", "18446744073709551616")] {
        origin.set(
            path,
            Resource::ok(
                "body",
                &[("cache-control", "max-age=3600"), ("age", age), ("etag", "\"e\"")],
            ),
        );
    }
    let start = |origin: TestOrigin, dir: std::path::PathBuf| async move {
        let config = EdgeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            origin: origin.url(),
            cache_dir: Some(dir),
            ..EdgeConfig::default()
        };
        let upstream = Arc::new(Origin::new(&config.origin, config.upstream.clone()).expect("origin"));
        start_with(config, upstream, Arc::new(SystemClock))
            .await
            .expect("edge starts")
    };
    let edge: RunningEdge = start(origin.clone(), dir.path().to_path_buf()).await;
    for path in ["/max", "/past"] {
        for round in 0..2 {
            let got = send(&client, "GET", &format!("http://{}{path}", edge.listen), &[]).await;
            assert_eq!(got.status, 200, "{path} round {round}");
            assert_eq!(&got.body[..], b"body", "{path} round {round}");
            assert_eq!(
                got.header("age"),
                "2147483648",
                "the age is capped (RFC 9111 section 1.2.2)"
            );
        }
        assert_eq!(
            origin.count_for(path),
            2,
            "{path}: stale from the start, so validated every time"
        );
    }
    edge.shutdown().await;
    let edge = start(origin.clone(), dir.path().to_path_buf()).await;
    let got = send(&client, "GET", &format!("http://{}/max", edge.listen), &[]).await;
    assert_eq!(got.status, 200, "still served after a restart");
    assert_eq!(&got.body[..], b"body");
}

#[tokio::test]
async fn a_purge_during_a_slow_miss_is_not_lost() {
    let setup = Setup::with(purgeable).await;
    let mut slow = Resource::ok("old", &[("cache-control", "max-age=3600")]);
    slow.delay = Duration::from_millis(600);
    setup.origin.set("/page", slow);

    // A miss begins and waits on the slow origin...
    let early = {
        let client = setup.client.clone();
        let url = setup.url("/page");
        tokio::spawn(async move { send(&client, "GET", &url, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    // ...the origin changes and the purge arrives while it is in flight...
    setup
        .origin
        .set("/page", Resource::ok("new", &[("cache-control", "max-age=3600")]));
    let purged = send(&setup.client, "PURGE", &setup.url("/page"), &[]).await;
    assert_eq!(purged.status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&purged.body).expect("json");
    assert_eq!(
        answer["in_flight"], 1,
        "the answer says a fetch under way was covered: {answer}"
    );
    // ...a request after the purge (the sync service's prefetch, say) must not join the old fetch.
    let after = setup.get("/page").await;
    assert_eq!(
        &after.body[..],
        b"new",
        "a request after the purge gets the new content"
    );
    let early = early.await.expect("join");
    assert_eq!(
        &early.body[..],
        b"old",
        "the request that began before the purge got what it asked for"
    );
    // And the old body the early fetch brought back was not stored over the new one.
    for _ in 0..3 {
        let got = setup.get("/page").await;
        assert_eq!(&got.body[..], b"new");
        assert!(
            got.header("cache-status").contains("hit"),
            "{}",
            got.header("cache-status")
        );
    }
    assert_eq!(setup.origin.count_for("/page"), 2);
}

#[tokio::test]
async fn waiters_of_a_miss_a_purge_overtook_share_one_fetch_after_it() {
    let setup = Setup::with(purgeable).await;
    let mut slow = Resource::ok("old", &[("cache-control", "max-age=3600")]);
    slow.delay = Duration::from_millis(600);
    setup.origin.set("/hot", slow);
    // Twenty clients wait on one slow miss...
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (client, url) = (setup.client.clone(), setup.url("/hot"));
        waiting.spawn(async move { send(&client, "GET", &url, &[]).await });
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    // ...when the origin changes and its purge arrives.
    let mut changed = Resource::ok("new", &[("cache-control", "max-age=3600")]);
    changed.delay = Duration::from_millis(300);
    setup.origin.set("/hot", changed);
    let purged = send(&setup.client, "PURGE", &setup.url("/hot"), &[]).await;
    assert_eq!(purged.status, 200);
    while let Some(got) = waiting.join_next().await {
        let got = got.expect("join");
        assert_eq!(got.status, 200);
        assert!(&got.body[..] == b"old" || &got.body[..] == b"new", "{:?}", got.body);
    }
    // The fetch the purge overtook, and one more after it for all the others: not one per client.
    assert_eq!(setup.origin.count_for("/hot"), 2);
    let after = setup.get("/hot").await;
    assert_eq!(&after.body[..], b"new");
}

#[tokio::test]
async fn a_purge_by_surrogate_key_during_a_miss_keeps_the_old_body_out() {
    let setup = Setup::with(purgeable).await;
    let mut slow = Resource::ok(
        "old",
        &[("cache-control", "max-age=3600"), ("surrogate-key", "product-7")],
    );
    slow.delay = Duration::from_millis(400);
    setup.origin.set("/p7", slow);
    let early = {
        let client = setup.client.clone();
        let url = setup.url("/p7");
        tokio::spawn(async move { send(&client, "GET", &url, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let purged = crate::purging::post_json(&setup, r#"{"keys":["product-7"]}"#).await;
    assert_eq!(purged["removed"], 0, "nothing was stored yet");
    assert_eq!(&early.await.expect("join").body[..], b"old");
    setup.origin.set(
        "/p7",
        Resource::ok(
            "new",
            &[("cache-control", "max-age=3600"), ("surrogate-key", "product-7")],
        ),
    );
    assert_eq!(&setup.get("/p7").await.body[..], b"new", "the old body was not stored");
}

#[tokio::test]
async fn two_spellings_of_one_url_are_one_object_and_one_purge_removes_it() {
    let setup = Setup::with(purgeable).await;
    setup
        .origin
        .set("/~x.html", Resource::ok("tilde", &[("cache-control", "max-age=3600")]));
    assert_eq!(
        &setup.get("/%7Ex.html").await.body[..],
        b"tilde",
        "forwarded in normal form"
    );
    let second = setup.get("/~x.html").await;
    assert!(
        second.header("cache-status").contains("hit"),
        "one object for both spellings"
    );
    assert!(setup.get("/%7ex.html").await.header("cache-status").contains("hit"));
    assert_eq!(setup.origin.count(), 1);

    let purged = send(&setup.client, "PURGE", &setup.url("/%7ex.html"), &[]).await;
    let answer: serde_json::Value = serde_json::from_slice(&purged.body).expect("json");
    assert_eq!(answer["removed"], 1);
    assert!(setup.get("/~x.html").await.header("cache-status").contains("fwd=miss"));

    // Lower- and upper-case escapes of a reserved byte are one object too; `+` and `%2B` are not
    // equivalent under RFC 3986 (the sync side purges both spellings).
    setup
        .origin
        .set("/a%2Fb", Resource::ok("slash", &[("cache-control", "max-age=3600")]));
    setup.get("/a%2fb").await;
    assert!(setup.get("/a%2Fb").await.header("cache-status").contains("hit"));
}

#[tokio::test]
async fn a_response_that_sets_a_cookie_is_not_replayed_to_another_user() {
    let setup = Setup::new().await;
    setup.origin.set(
        "/home",
        Resource::ok(
            "hello alice",
            &[
                ("cache-control", "public, max-age=600"),
                ("set-cookie", "session=alice-secret"),
            ],
        ),
    );
    let alice = setup.get("/home").await;
    assert_eq!(alice.header("set-cookie"), "session=alice-secret");
    assert!(alice.header("cache-status").contains("detail=set-cookie"));
    setup.origin.set(
        "/home",
        Resource::ok(
            "hello bob",
            &[
                ("cache-control", "public, max-age=600"),
                ("set-cookie", "session=bob-secret"),
            ],
        ),
    );
    let bob = setup.get("/home").await;
    assert_eq!(
        bob.header("set-cookie"),
        "session=bob-secret",
        "bob never sees alice's cookie"
    );
    assert_eq!(setup.origin.count_for("/home"), 2);

    // The origin can say the cookie is the only private part: stored without it.
    setup.origin.set(
        "/news",
        Resource::ok(
            "news",
            &[
                ("cache-control", "max-age=600, no-cache=\"Set-Cookie\""),
                ("set-cookie", "tracking=carol"),
            ],
        ),
    );
    assert_eq!(setup.get("/news").await.header("set-cookie"), "tracking=carol");
    let reused = setup.get("/news").await;
    assert!(reused.header("cache-status").contains("hit"));
    assert_eq!(reused.header("set-cookie"), "", "the stored copy has no cookie");
}

#[tokio::test]
async fn set_cookie_paths_opt_in_stores_them() {
    let setup = Setup::with(|config| config.store_set_cookie_paths = vec!["/shop/".into()]).await;
    setup.origin.set(
        "/shop/list",
        Resource::ok(
            "list",
            &[("cache-control", "public, max-age=600"), ("set-cookie", "ab=1")],
        ),
    );
    setup.get("/shop/list").await;
    assert!(setup.get("/shop/list").await.header("cache-status").contains("hit"));
}

#[tokio::test]
async fn a_client_that_aborts_a_coalesced_miss_does_not_cancel_it_for_the_others() {
    let setup = Setup::new().await;
    let mut slow = Resource::ok("shared", &[("cache-control", "max-age=3600")]);
    slow.delay = Duration::from_millis(500);
    setup.origin.set("/shared", slow);
    let leader = {
        let client = setup.client.clone();
        let url = setup.url("/shared");
        tokio::spawn(async move { send(&client, "GET", &url, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let follower = {
        let client = tern_edge::testsuite::client();
        let url = setup.url("/shared");
        tokio::spawn(async move { send(&client, "GET", &url, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The first client goes away: its connection closes mid-request.
    leader.abort();
    let got = follower.await.expect("join");
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], b"shared");
    assert!(
        got.header("cache-status").contains("collapsed"),
        "{}",
        got.header("cache-status")
    );
    assert_eq!(
        setup.origin.count_for("/shared"),
        1,
        "one origin request for both clients"
    );
    assert!(setup.get("/shared").await.header("cache-status").contains("hit"));
}

#[tokio::test]
async fn a_target_past_the_limit_gets_414() {
    let setup = Setup::with(|config| config.max_uri_bytes = 1000).await;
    let long = format!("/{}", "a".repeat(2000));
    let got = setup.get(&long).await;
    assert_eq!(got.status, 414);
    assert!(String::from_utf8_lossy(&got.body).contains("1000"));
    assert_eq!(setup.origin.count(), 0);
}

#[tokio::test]
async fn via_names_the_protocol_received_and_expect_is_not_forwarded() {
    let setup = Setup::new().await;
    setup
        .origin
        .set("/v", Resource::ok("v", &[("cache-control", "max-age=60")]));
    let got = setup.get_with("/v", &[("expect", "100-continue")]).await;
    assert_eq!(got.header("via"), "1.1 tern", "the origin answered over HTTP/1.1");
    let seen = setup.origin.seen();
    assert!(
        !seen[0].headers.contains_key("expect"),
        "the edge answered the expectation itself"
    );
}

#[tokio::test]
async fn a_streamed_body_is_never_reported_stored_before_it_is() {
    let setup = Setup::new().await;
    // Large enough to arrive in several reads, so the head goes out before the body is cut.
    let mut cut = Resource::ok(vec![b'x'; 1_000_000], &[("cache-control", "max-age=60")]);
    cut.truncate_to = Some(2_000_000);
    setup.origin.set("/cut", cut);
    let got = setup.get("/cut").await;
    assert!(
        !got.header("cache-status").contains("stored"),
        "{}",
        got.header("cache-status")
    );
    assert!(
        setup.get("/cut").await.header("cache-status").contains("fwd=miss"),
        "nothing was stored"
    );
}

/// An origin that sends `103 Early Hints` before its final response (hyper's server cannot send one, so the
/// origin here writes raw bytes): the hints are never stored, and their fields never reach the final
/// response, first or cached.
#[tokio::test]
async fn interim_responses_are_never_stored_nor_merged() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                let mut read = 0;
                while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let answer = "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                              HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\
                              Connection: close\r\n\r\nfinal";
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let config = EdgeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        origin: format!("http://{addr}"),
        ..EdgeConfig::default()
    };
    let upstream = Arc::new(Origin::new(&config.origin, config.upstream.clone()).expect("origin"));
    let edge = start_with(config, upstream, Arc::new(SystemClock))
        .await
        .expect("edge starts");
    let client = client();
    for round in 0..2 {
        let got = send(&client, "GET", &format!("http://{}/hinted", edge.listen), &[]).await;
        assert_eq!(got.status, 200, "round {round}");
        assert_eq!(&got.body[..], b"final");
        assert_eq!(
            got.header("link"),
            "",
            "round {round}: the hint's field is not in the final response"
        );
        if round == 1 {
            assert!(got.header("cache-status").contains("hit"));
        }
    }
}

/// Found trying tern as a new user: a cookie set on a revalidation (`304`) was stored with the refreshed
/// fields and replayed to the next client.
#[tokio::test]
async fn a_cookie_set_on_a_revalidation_reaches_only_its_client() {
    let setup = Setup::new().await;
    setup.origin.set(
        "/r",
        Resource::ok("body", &[("cache-control", "public, max-age=1"), ("etag", "\"e1\"")]),
    );
    setup.get("/r").await;
    setup.advance(5);
    setup.origin.set(
        "/r",
        Resource::ok(
            "body",
            &[
                ("cache-control", "public, max-age=1"),
                ("etag", "\"e1\""),
                ("set-cookie", "sid=alice"),
            ],
        ),
    );
    let alice = setup.get("/r").await;
    assert!(
        alice.header("cache-status").contains("fwd-status=304"),
        "{}",
        alice.header("cache-status")
    );
    assert_eq!(
        alice.header("set-cookie"),
        "sid=alice",
        "the client that revalidated gets its cookie"
    );
    let bob = setup.get("/r").await;
    assert!(bob.header("cache-status").contains("hit"));
    assert_eq!(bob.header("set-cookie"), "", "no one else does");
}

/// Dot segments and empty segments name the object their normal form names (RFC 3986 section 6.2.2.3),
/// so one purge removes every spelling.
#[tokio::test]
async fn dot_segment_spellings_are_one_object() {
    let setup = Setup::with(purgeable).await;
    setup.origin.set(
        "/dir/page.html",
        Resource::ok("v1", &[("cache-control", "max-age=3600")]),
    );
    assert_eq!(&setup.get("/dir/./page.html").await.body[..], b"v1");
    for spelling in [
        "//dir/page.html",
        "/dir/x/../page.html",
        "/dir/page.html",
        "/dir/%2e/page.html",
    ] {
        assert!(
            setup.get(spelling).await.header("cache-status").contains("hit"),
            "{spelling}"
        );
    }
    assert_eq!(setup.origin.count(), 1);
    assert_eq!(
        setup.origin.seen()[0].path,
        "/dir/page.html",
        "the normal form is forwarded"
    );
    send(&setup.client, "PURGE", &setup.url("/dir/page.html"), &[]).await;
    assert!(
        setup
            .get("//dir/./page.html")
            .await
            .header("cache-status")
            .contains("fwd=miss")
    );
}

/// Long heads within the byte limits: an origin answering with 200 fields (more than the inline parse
/// takes, so the edge's HTTP/1.1 client parses that head again with a wider array, without asking the
/// origin twice), and 150 request fields where the operator raised `max_header_fields`; with the default
/// (100) such a request gets 431.
#[tokio::test]
async fn heads_with_many_fields_are_served() {
    let narrow = Setup::new().await;
    let many: Vec<(String, String)> = (0..150).map(|n| (format!("x-f{n}"), "v".to_string())).collect();
    let request_fields: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(narrow.get_with("/many", &request_fields).await.status, 431);

    let setup = Setup::with(|config| config.max_header_fields = 256).await;
    let many: Vec<(String, String)> = (0..200).map(|n| (format!("x-f{n}"), "v".to_string())).collect();
    let mut fields: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    fields.push(("cache-control", "max-age=60"));
    setup.origin.set("/many", Resource::ok("many", &fields));
    let request_fields: Vec<(&str, &str)> = fields[..150].to_vec();
    let got = setup.get_with("/many", &request_fields).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.header("x-f199"), "v");
    assert_eq!(setup.origin.count_for("/many"), 1, "one request to the origin");
    setup.origin.set("/many2", Resource::ok("many2", &fields));
    let got = setup.get("/many2").await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.header("x-f199"), "v");
    assert_eq!(setup.origin.count_for("/many2"), 1);
}

/// Sends `count` GETs for `path` at once, each on its own connection.
async fn at_once(setup: &Setup, path: &str, count: usize) -> Vec<tern_edge::testsuite::Got> {
    let requests: Vec<_> = (0..count)
        .map(|_| {
            let (client, url) = (client(), setup.url(path));
            tokio::spawn(async move { send(&client, "GET", &url, &[]).await })
        })
        .collect();
    let mut got = Vec::new();
    for request in requests {
        got.push(request.await.expect("join"));
    }
    got
}

#[tokio::test]
async fn waiters_of_a_fetch_that_times_out_answer_its_error_and_the_origin_is_asked_once() {
    let setup = Setup::with(|config| config.upstream.first_byte_timeout_ms = 400).await;
    let mut late = Resource::ok("late", &[("cache-control", "max-age=60")]);
    late.delay = Duration::from_secs(3);
    setup.origin.set("/sick", late);
    let got = at_once(&setup, "/sick", 4).await;
    for response in &got {
        assert_eq!(response.status, 504, "{:?}", response.body);
    }
    let collapsed = got
        .iter()
        .filter(|response| response.header("cache-status").contains("collapsed"))
        .count();
    assert_eq!(collapsed, 3, "the waiters answered the leader's failure");
    assert_eq!(
        setup.origin.count_for("/sick"),
        1,
        "a sick origin is asked once, not once more per waiter"
    );
    // The next request tries again.
    assert_eq!(setup.get("/sick").await.status, 504);
    assert_eq!(setup.origin.count_for("/sick"), 2);
}

#[tokio::test]
async fn waiters_of_a_body_that_ends_short_share_the_failure_and_it_is_counted() {
    let setup = Setup::new().await;
    let mut short = Resource::ok("only part", &[("cache-control", "max-age=60")]);
    short.truncate_to = Some(100);
    short.delay = Duration::from_millis(300);
    setup.origin.set("/short", short);
    for response in at_once(&setup, "/short", 3).await {
        assert_eq!(response.status, 502);
        assert!(
            String::from_utf8_lossy(&response.body).contains("of its 100 bytes"),
            "the error says what happened: {:?}",
            response.body
        );
    }
    assert_eq!(setup.origin.count_for("/short"), 1);
    let text = crate::metrics_text(&setup).await;
    assert!(
        text.contains("tern_edge_upstream_bodies_failed_total{outcome=\"short\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_small_body_that_trickles_is_given_up_after_the_idle_timeout_with_504() {
    let setup = Setup::with(|config| config.upstream.idle_body_timeout_ms = 600).await;
    // Each byte comes well within the idle timeout, but the whole would take 8 s.
    let mut trickle = Resource::ok("twenty bytes of body", &[("cache-control", "max-age=60")]);
    trickle.trickle = Some(Duration::from_millis(400));
    setup.origin.set("/trickle", trickle);
    let got = setup.get("/trickle").await;
    assert_eq!(got.status, 504);
    assert!(
        String::from_utf8_lossy(&got.body).contains("of its 20 bytes arrived in 600 ms"),
        "{:?}",
        got.body
    );
    let text = crate::metrics_text(&setup).await;
    assert!(
        text.contains("tern_edge_upstream_bodies_failed_total{outcome=\"stalled\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_304_naming_another_representation_updates_nothing_stored() {
    let setup = Setup::new().await;
    setup.origin.set(
        "/page",
        Resource::ok(
            "version one",
            &[
                ("cache-control", "max-age=1"),
                ("etag", "\"a\""),
                ("content-type", "text/plain"),
            ],
        ),
    );
    assert_eq!(&setup.get("/page").await.body[..], b"version one");
    // The origin now answers 304 with another strong tag and other fields, to every request.
    let mut wrong = Resource::ok("", &[("etag", "\"b\""), ("content-type", "text/evil")]);
    wrong.status = 304;
    wrong.honor_validators = false;
    setup.origin.set("/page", wrong);
    setup.advance(2);
    let got = setup.get("/page").await;
    assert_eq!(got.status, 502, "{:?}", got.body);
    assert_ne!(got.header("etag"), "\"b\"");
    // The stored body never goes out under the other tag: a client holding "b" is not told it is current.
    let conditional = setup.get_with("/page", &[("if-none-match", "\"b\"")]).await;
    assert_ne!(conditional.status, 304);
    setup.origin.set(
        "/page",
        Resource::ok("version two", &[("cache-control", "max-age=60"), ("etag", "\"b\"")]),
    );
    let got = setup.get("/page").await;
    assert_eq!(&got.body[..], b"version two");
    assert_eq!(got.header("etag"), "\"b\"");
}

#[tokio::test]
async fn a_fully_qualified_host_name_is_one_object_and_the_origin_sees_its_own_name() {
    let setup = Setup::with(purgeable).await;
    setup
        .origin
        .set("/dot", Resource::ok("one", &[("cache-control", "max-age=60")]));
    let first = setup.get_with("/dot", &[("host", "www.example.com.")]).await;
    assert_eq!(&first.body[..], b"one");
    let seen = setup.origin.seen();
    let host = seen.last().expect("a request").headers.get("host").cloned();
    assert_eq!(host.as_ref().and_then(|h| h.to_str().ok()), Some("www.example.com"));
    let plain = setup.get_with("/dot", &[("host", "www.example.com")]).await;
    assert!(
        plain.header("cache-status").contains("hit"),
        "{}",
        plain.header("cache-status")
    );
    // Purged under one spelling, gone under the other.
    let purged = send(
        &setup.client,
        "PURGE",
        &setup.url("/dot"),
        &[("host", "www.example.com")],
    )
    .await;
    assert_eq!(purged.status, 200);
    let again = setup.get_with("/dot", &[("host", "www.example.com.")]).await;
    assert!(
        !again.header("cache-status").contains("hit"),
        "{}",
        again.header("cache-status")
    );
}
