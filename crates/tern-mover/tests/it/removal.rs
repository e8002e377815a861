//! A removed site and a later publish of the same name (fault F4): the remove leaves a tombstone, so the
//! new publish numbers its versions above the removed site's and tells the caches the site named, and the
//! removed site is not hosted in between.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::jobs::{Fleet, tree, write_site};

/// An edge that answers every request 200 and keeps each request line.
async fn edge() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                kept.lock()
                    .expect("lock")
                    .push(text.lines().next().unwrap_or("").to_string());
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, seen)
}

async fn status_of(fleet: &Fleet, path: &str) -> (StatusCode, serde_json::Value) {
    let request = http::Request::builder()
        .method("GET")
        .uri(format!("http://{}{path}", fleet.mover_addr))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = fleet.client.request(request).await.expect("mover answers");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

async fn publish(fleet: &Fleet, staging: &std::path::Path, caches: Option<serde_json::Value>) -> serde_json::Value {
    let mut body = serde_json::json!({ "kind": "publish", "site": "www", "staging": staging.display().to_string() });
    if let Some(caches) = caches {
        body["caches"] = caches;
    }
    let created = fleet.api("POST", "/api/jobs", Some(body)).await;
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("job not created: {created}"));
    fleet.wait_job(id).await
}

fn sequence(site: &serde_json::Value) -> u64 {
    site["site"]["sequence"]
        .as_u64()
        .unwrap_or_else(|| panic!("no sequence: {site}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_published_again_after_a_remove_numbers_on_and_keeps_its_caches() {
    let mut fleet = Fleet::new(2, None).await;
    let (edge_url, seen) = edge().await;
    let caches =
        serde_json::json!({ "public_url": "https://www.example.com", "edges": [edge_url], "confirm_within_s": 2 });
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 10, "first");
    let job = publish(&fleet, &staging, Some(caches.clone())).await;
    assert_eq!(job["state"], "committed", "{job}");
    write_site(&staging, 10, "second");
    let job = publish(&fleet, &staging, None).await;
    assert_eq!(job["state"], "committed", "{job}");
    assert_eq!(sequence(&fleet.api("GET", "/api/sites/www", None).await), 2);

    let job = fleet.run("remove", None).await;
    assert_eq!(job["state"], "committed", "{job}");
    for index in 0..2 {
        assert!(!fleet.node_root(index).join("www").exists(), "node {index}");
    }
    // Not hosted: not listed, not found, not in the status, and nodes registering again are not sent it.
    // It stays so across a restart of the mover.
    fleet.mover.take().expect("mover").shutdown().await;
    fleet.start_mover(None).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let sites = fleet.api("GET", "/api/sites", None).await;
    assert_eq!(sites, serde_json::json!([]), "a removed site is not listed");
    let (status, answer) = status_of(&fleet, "/api/sites/www").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let status = fleet.api("GET", "/api/status", None).await;
    assert!(!status.to_string().contains("\"www\""), "{status}");
    // Nothing of it is kept to roll back to, and the refusal says it was removed (not "never published").
    let refused = fleet
        .api(
            "POST",
            "/api/jobs",
            Some(serde_json::json!({ "kind": "rollback", "site": "www" })),
        )
        .await;
    assert!(refused.to_string().contains("was removed"), "{refused}");
    for index in 0..2 {
        assert!(
            !fleet.node_root(index).join("www").exists(),
            "node {index} was not sent the site back"
        );
    }

    // Published again, naming no caches: version 3, the site's caches are the ones it had, and they are told.
    seen.lock().expect("lock").clear();
    write_site(&staging, 10, "third");
    let job = publish(&fleet, &staging, None).await;
    assert_eq!(job["state"], "committed", "{job}");
    let site = fleet.api("GET", "/api/sites/www", None).await;
    assert_eq!(sequence(&site), 3, "versions go on above the removed site's: {site}");
    assert_eq!(site["caches"]["public_url"], "https://www.example.com", "{site}");
    assert_eq!(site["caches"]["edges"], caches["edges"], "{site}");
    for index in 0..2 {
        assert_eq!(fleet.live(index), tree(&staging), "node {index}");
    }
    let mut handed = false;
    for _ in 0..300 {
        let job = fleet.wait_job(job["id"].as_str().expect("id")).await;
        if !job["freshness"].is_null() && !seen.lock().expect("lock").is_empty() {
            handed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        handed,
        "the commit was handed to the site's caches: {:?}",
        seen.lock().expect("lock")
    );
}
