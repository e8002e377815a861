//! Purges: PURGE on the main listener, POST /purge on the admin listener, by URL, prefix and surrogate key,
//! hard and soft; and who may purge.

use std::sync::Arc;

use tern_edge::testsuite::{Resource, send};
use tern_wire::SecretKey;

use crate::{Setup, eventually};

async fn keyed() -> (Setup, SecretKey, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("purge.key");
    let key = SecretKey::write_new(&path).expect("key");
    let setup = Setup::with(|config| config.purge_key = Some(path)).await;
    (setup, key, dir)
}

#[tokio::test]
async fn purge_without_token_is_refused_and_removes_nothing() {
    let (setup, key, _dir) = keyed().await;
    setup
        .origin
        .set("/p", Resource::ok("p", &[("cache-control", "max-age=100")]));
    setup.get("/p").await;
    let refused = send(&setup.client, "PURGE", &setup.url("/p"), &[]).await;
    assert_eq!(refused.status, 403);
    let wrong = send(
        &setup.client,
        "PURGE",
        &setup.url("/p"),
        &[("authorization", "Bearer 00ff")],
    )
    .await;
    assert_eq!(wrong.status, 403);
    assert!(
        setup.get("/p").await.header("cache-status").contains("hit"),
        "refused purges remove nothing"
    );

    let token = format!("Bearer {}", key.token());
    let purged = send(&setup.client, "PURGE", &setup.url("/p"), &[("authorization", &token)]).await;
    assert_eq!(purged.status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&purged.body).expect("json");
    assert_eq!(answer["removed"], 1);
    assert!(setup.get("/p").await.header("cache-status").contains("fwd=miss"));
}

#[tokio::test]
async fn purge_is_off_without_key_or_allow_list() {
    let setup = Setup::new().await;
    let refused = send(&setup.client, "PURGE", &setup.url("/p"), &[]).await;
    assert_eq!(refused.status, 403);
    assert!(String::from_utf8_lossy(&refused.body).contains("--purge-key"));
}

#[tokio::test]
async fn allow_list_permits_purge() {
    let setup = Setup::with(|config| config.purge_allow = vec!["127.0.0.0/8".parse().expect("net")]).await;
    setup
        .origin
        .set("/p", Resource::ok("p", &[("cache-control", "max-age=100")]));
    setup.get("/p").await;
    let purged = send(&setup.client, "PURGE", &setup.url("/p"), &[]).await;
    assert_eq!(purged.status, 200);
}

#[tokio::test]
async fn one_purge_removes_every_variant() {
    let (setup, key, _dir) = keyed().await;
    setup.origin.set(
        "/v",
        Resource::ok("v", &[("cache-control", "max-age=100"), ("vary", "accept-encoding")]),
    );
    setup.get_with("/v", &[("accept-encoding", "gzip")]).await;
    setup.get_with("/v", &[("accept-encoding", "br")]).await;
    let token = format!("Bearer {}", key.token());
    let purged = send(&setup.client, "PURGE", &setup.url("/v"), &[("authorization", &token)]).await;
    let answer: serde_json::Value = serde_json::from_slice(&purged.body).expect("json");
    assert_eq!(answer["removed"], 2);
    assert!(
        setup
            .get_with("/v", &[("accept-encoding", "gzip")])
            .await
            .header("cache-status")
            .contains("fwd=miss")
    );
    assert!(
        setup
            .get_with("/v", &[("accept-encoding", "br")])
            .await
            .header("cache-status")
            .contains("fwd=vary-miss")
    );
}

#[tokio::test]
async fn surrogate_key_purge_among_ten_thousand() {
    let setup = Arc::new(Setup::new().await);
    for n in 0..10_000 {
        let tag = if n % 100 == 0 { "blue all" } else { "all" };
        setup.origin.set(
            &format!("/o/{n}"),
            Resource::ok(
                format!("{n}"),
                &[("cache-control", "max-age=1000"), ("surrogate-key", tag)],
            ),
        );
    }
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let setup = setup.clone();
        tasks.push(tokio::spawn(async move {
            for n in (worker..10_000).step_by(16) {
                let got = setup.get(&format!("/o/{n}")).await;
                assert_eq!(got.status, 200);
                assert!(
                    got.headers.get("surrogate-key").is_none(),
                    "surrogate keys are not shown to clients"
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("join");
    }
    assert_eq!(setup.edge.role.store().stats().objects, 10_000);

    let purged = send(
        &setup.client,
        "POST",
        &setup.admin_url("/purge"),
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(purged.status, 400, "an empty body is not a purge request");
    let body = serde_json::json!({ "keys": ["blue"] }).to_string();
    let purged = post_json(&setup, &body).await;
    assert_eq!(purged["removed"], 100);
    assert_eq!(setup.edge.role.store().stats().objects, 9_900);
    assert!(setup.get("/o/0").await.header("cache-status").contains("fwd=miss"));
    assert!(setup.get("/o/1").await.header("cache-status").contains("hit"));
    assert!(setup.get("/o/250").await.header("cache-status").contains("hit"));
}

pub(crate) async fn post_json(setup: &Setup, body: &str) -> serde_json::Value {
    use http_body_util::BodyExt;
    let request = http::Request::post(setup.admin_url("/purge"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
        .expect("request");
    let response = setup.client.request(request).await.expect("response");
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).expect("json answer")
}

#[tokio::test]
async fn prefix_purge_and_url_purge_on_admin() {
    let setup = Setup::new().await;
    for path in ["/static/a.css", "/static/b.js", "/static2/c", "/index.html"] {
        setup
            .origin
            .set(path, Resource::ok(path, &[("cache-control", "max-age=100")]));
        setup.get(path).await;
    }
    let prefix = format!("http://{}/static/", setup.edge.listen);
    let answer = post_json(&setup, &serde_json::json!({ "prefixes": [prefix] }).to_string()).await;
    assert_eq!(answer["removed"], 2);
    assert!(setup.get("/static2/c").await.header("cache-status").contains("hit"));
    let url = format!("http://{}/index.html", setup.edge.listen);
    let answer = post_json(&setup, &serde_json::json!({ "urls": [url] }).to_string()).await;
    assert_eq!(answer["removed"], 1);
}

#[tokio::test]
async fn soft_purge_serves_stale_while_refetching() {
    let (setup, key, _dir) = keyed().await;
    setup.origin.set(
        "/soft",
        Resource::ok("old", &[("cache-control", "max-age=100"), ("etag", "\"1\"")]),
    );
    setup.get("/soft").await;
    setup.origin.set(
        "/soft",
        Resource::ok("newer", &[("cache-control", "max-age=100"), ("etag", "\"2\"")]),
    );
    let token = format!("Bearer {}", key.token());
    let purged = send(
        &setup.client,
        "PURGE",
        &setup.url("/soft"),
        &[("authorization", &token), ("tern-soft-purge", "1")],
    )
    .await;
    let answer: serde_json::Value = serde_json::from_slice(&purged.body).expect("json");
    assert_eq!(answer["marked"], 1);
    assert_eq!(answer["removed"], 0);
    let stale = setup.get("/soft").await;
    assert_eq!(&stale.body[..], b"old", "served stale at once");
    assert!(stale.header("cache-status").contains("stale-while-revalidate"));
    let store = setup.edge.role.store().clone();
    let key = format!("http://{}/soft", setup.edge.listen);
    eventually("the background revalidation stored the new body", || {
        store
            .variants(&key)
            .first()
            .is_some_and(|o| o.meta.body_len == 5 && !o.meta.invalidated)
    })
    .await;
    assert_eq!(&setup.get("/soft").await.body[..], b"newer");
    assert_eq!(setup.origin.count_for("/soft"), 2);
}

/// The sync service purges a host's `/` by prefix when a position of its change log was lost: everything
/// of that host goes, nothing of another host.
#[tokio::test]
async fn a_purge_with_the_prefix_scope_removes_everything_under_its_url() {
    let (setup, key, _dir) = keyed().await;
    for path in ["/a", "/b/c", "/d?x=1"] {
        setup
            .origin
            .set(path, Resource::ok(path, &[("cache-control", "max-age=100")]));
        setup.get(path).await;
    }
    let other = send(&setup.client, "GET", &setup.url("/a"), &[("host", "other.example")]).await;
    assert_eq!(other.status, 200);
    let token = format!("Bearer {}", key.token());
    let purged = send(
        &setup.client,
        "PURGE",
        &setup.url("/"),
        &[("authorization", &token), ("tern-purge-scope", "prefix")],
    )
    .await;
    assert_eq!(purged.status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&purged.body).expect("json");
    assert_eq!(answer["removed"], 3, "{answer}");
    for path in ["/a", "/b/c", "/d?x=1"] {
        assert!(
            setup.get(path).await.header("cache-status").contains("fwd=miss"),
            "{path}"
        );
    }
    let kept = send(&setup.client, "GET", &setup.url("/a"), &[("host", "other.example")]).await;
    assert!(
        kept.header("cache-status").contains("hit"),
        "another host's objects stay"
    );
}
