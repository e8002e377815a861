//! `tern serve` as a static origin, and `tern edge` in front of it, as processes.

use bytes::Bytes;
use tern_edge::testsuite::{client, send};

use crate::{free_addr, spawn, spawn_edge, spawn_origin, write};

async fn get(url: &str, headers: &[(&str, &str)], method: &str) -> (u16, http::HeaderMap, Bytes) {
    let got = send(&client(), method, url, headers).await;
    (got.status.as_u16(), got.headers, got.body)
}

#[tokio::test]
async fn static_origin_semantics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    write(&site, "index.html", b"<h1>home</h1>");
    write(&site, "static/app.js", b"console.log(1)");
    write(&site, "docs/index.html", b"docs");
    write(dir.path(), "secret.txt", b"secret");
    let config = dir.path().join("tern.toml");
    std::fs::write(
        &config,
        "[serve]\ncache_control = \"max-age=60\"\n[[serve.rules]]\nprefix = \"/static/\"\ncache_control = \"max-age=3600, immutable\"\nsurrogate_key = \"assets\"\n",
    )
    .expect("config");
    let addr = free_addr();
    let _origin = spawn(
        &[
            "serve",
            site.to_str().expect("utf-8"),
            "--config",
            config.to_str().expect("utf-8"),
            "--listen",
            &addr.to_string(),
        ],
        addr,
    );
    let base = format!("http://{addr}");

    let (status, headers, body) = get(&format!("{base}/"), &[], "GET").await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"<h1>home</h1>");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "max-age=60");
    let etag = headers["etag"].to_str().expect("etag").to_string();
    let modified = headers["last-modified"].to_str().expect("date").to_string();

    assert_eq!(
        get(&format!("{base}/"), &[("if-none-match", &etag)], "GET").await.0,
        304
    );
    assert_eq!(
        get(&format!("{base}/"), &[("if-modified-since", &modified)], "GET")
            .await
            .0,
        304
    );
    let (status, headers, body) = get(&format!("{base}/index.html"), &[("range", "bytes=1-3")], "GET").await;
    assert_eq!(status, 206);
    assert_eq!(&body[..], b"h1>");
    assert_eq!(headers["content-range"], "bytes 1-3/13");
    let (status, headers, body) = get(&format!("{base}/index.html"), &[], "HEAD").await;
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(headers["content-length"], "13");

    let (_, headers, _) = get(&format!("{base}/static/app.js"), &[], "GET").await;
    assert_eq!(headers["cache-control"], "max-age=3600, immutable");
    assert_eq!(headers["surrogate-key"], "assets");
    let (status, headers, _) = get(&format!("{base}/docs"), &[], "GET").await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "/docs/");
    // Two leading slashes name this site's directory, and the redirect stays on this host (`//docs/` in a
    // Location is host `docs`).
    let (status, headers, _) = get(&format!("{base}//docs"), &[], "GET").await;
    assert_eq!(status, 301);
    assert_eq!(headers["location"], "/docs/");
    assert_eq!(
        get(&format!("{base}/docs/"), &[], "GET").await.2,
        Bytes::from_static(b"docs")
    );

    assert_eq!(get(&format!("{base}/nope"), &[], "GET").await.0, 404);
    // A file asked for as a directory is not there (nginx): edges would cache that spelling apart.
    for path in [
        "/index.html/",
        "/docs/index.html/",
        "/static/app.js/",
        "/static/app.js%2F",
    ] {
        assert_eq!(get(&format!("{base}{path}"), &[], "GET").await.0, 404, "{path}");
    }
    assert_eq!(get(&format!("{base}/%2e%2e/secret.txt"), &[], "GET").await.0, 400);
    assert_eq!(get(&format!("{base}/"), &[], "POST").await.0, 405);
    // RFC 9112 section 3.2: an HTTP/1.1 request without a Host, or with two, is answered 400; HTTP/1.0 may
    // come without one.
    for (request, status) in [
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", "HTTP/1.1 400 "),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        ("GET / HTTP/1.0\r\n\r\n", "HTTP/1.0 200 "),
    ] {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with(status), "{request:?}: {answer}");
    }
}

#[tokio::test]
async fn sighup_without_certificates_stops_neither_serve_nor_the_edge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    write(&site, "page.html", b"still here");
    let (mut origin, origin_addr) = spawn_origin(&site, &[]);
    let (mut edge, edge_addr) = spawn_edge(origin_addr, &[]);
    for running in [&origin, &edge] {
        let hangup = std::process::Command::new("kill")
            .args(["-HUP", &running.0.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(hangup.success());
    }
    // SIGHUP's default action would have ended both at once.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for (name, running) in [("serve", &mut origin), ("edge", &mut edge)] {
        assert!(
            running.0.try_wait().expect("status").is_none(),
            "{name} ended on SIGHUP"
        );
    }
    let (status, _, body) = get(&format!("http://{edge_addr}/page.html"), &[], "GET").await;
    assert_eq!((status, &body[..]), (200, &b"still here"[..]));
}

#[tokio::test]
async fn edge_in_front_of_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    write(&site, "page.html", b"version 1");
    let (_origin, origin_addr) = spawn_origin(&site, &["--cache-control", "max-age=300"]);
    let key = dir.path().join("purge.key");
    let keygen = crate::tern().arg("keygen").arg(&key).output().expect("keygen");
    assert!(keygen.status.success());
    let cache = dir.path().join("cache");
    let (_edge, edge_addr) = spawn_edge(
        origin_addr,
        &[
            "--cache-dir",
            cache.to_str().expect("utf-8"),
            "--purge-key",
            key.to_str().expect("utf-8"),
        ],
    );
    let url = format!("http://{edge_addr}/page.html");
    let (_, first, _) = get(&url, &[], "GET").await;
    assert!(first["cache-status"].to_str().expect("text").contains("fwd=miss"));
    write(&site, "page.html", b"version 2");
    let (_, second, body) = get(&url, &[], "GET").await;
    assert!(second["cache-status"].to_str().expect("text").contains("hit"));
    assert_eq!(&body[..], b"version 1", "fresh for 300 s: served from cache");
    let (status, _, _) = get(&url, &[], "PURGE").await;
    assert_eq!(status, 403);
    let token = format!("Bearer {}", tern_wire::SecretKey::load(&key).expect("key").token());
    let (status, _, _) = get(&url, &[("authorization", &token)], "PURGE").await;
    assert_eq!(status, 200);
    assert_eq!(&get(&url, &[], "GET").await.2[..], b"version 2");
}

#[tokio::test]
async fn stale_if_error_when_the_origin_process_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    write(&site, "page.html", b"kept");
    let (origin, origin_addr) = spawn_origin(&site, &["--cache-control", "max-age=1, stale-if-error=3"]);
    let (_edge, edge_addr) = spawn_edge(origin_addr, &[]);
    let url = format!("http://{edge_addr}/page.html");
    assert_eq!(&get(&url, &[], "GET").await.2[..], b"kept");
    drop(origin);
    // Past max-age, inside stale-if-error: the stored copy is served.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let (status, headers, body) = get(&url, &[], "GET").await;
    assert_eq!((status, &body[..]), (200, &b"kept"[..]));
    assert!(
        headers["cache-status"]
            .to_str()
            .expect("text")
            .contains("stale-if-error")
    );
    // Past the window: the failure shows.
    tokio::time::sleep(std::time::Duration::from_millis(3_000)).await;
    let (status, _, body) = get(&url, &[], "GET").await;
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// A published tree that is a git checkout, or carries server configuration, must not serve it: every
/// spelling of a hidden path answers 404, `.well-known/` is served, and `--serve-hidden` serves them all.
#[tokio::test]
async fn hidden_files_are_not_served_unless_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    write(&site, "index.html", b"home");
    write(&site, ".git/config", b"[remote \"origin\"]");
    write(&site, ".htaccess", b"Deny from all");
    write(&site, "app/.env", b"SECRET=1");
    write(&site, ".well-known/acme-challenge/token", b"challenge");
    let start = |extra: &[&str]| {
        let addr = free_addr();
        let listen = addr.to_string();
        let mut args = vec!["serve", site.to_str().expect("utf-8"), "--listen", &listen];
        args.extend_from_slice(extra);
        (spawn(&args, addr), format!("http://{addr}"))
    };
    let (_origin, base) = start(&[]);
    for path in [
        "/.git/config",
        "/%2egit/config",
        "/%2Egit%2Fconfig",
        "/./.git/config",
        "//.git/config",
        "/.git/",
        "/.htaccess",
        "/%2ehtaccess",
        "/app/.env",
    ] {
        let (status, _, body) = get(&format!("{base}{path}"), &[], "GET").await;
        assert_eq!(status, 404, "{path} must not be served");
        assert!(!body.windows(6).any(|w| w == b"remote" || w == b"SECRET"), "{path}");
    }
    let (status, _, body) = get(&format!("{base}/.well-known/acme-challenge/token"), &[], "GET").await;
    assert_eq!((status, &body[..]), (200, &b"challenge"[..]));
    assert_eq!(get(&format!("{base}/"), &[], "GET").await.0, 200);

    let (_open, base) = start(&["--serve-hidden"]);
    for (path, expected) in [
        ("/.git/config", &b"[remote \"origin\"]"[..]),
        ("/.htaccess", b"Deny from all"),
    ] {
        let (status, _, body) = get(&format!("{base}{path}"), &[], "GET").await;
        assert_eq!((status, &body[..]), (200, expected), "{path} with --serve-hidden");
    }
    for path in ["/index.html/", "/app/.env/", "/.htaccess/"] {
        let (status, _, body) = get(&format!("{base}{path}"), &[], "GET").await;
        assert_eq!(status, 404, "{path} with --serve-hidden");
        assert!(!body.windows(6).any(|w| w == b"SECRET"), "{path}");
    }
}
