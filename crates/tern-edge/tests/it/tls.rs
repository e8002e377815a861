//! HTTPS at the edge: ALPN picks HTTP/2, certificates reload without dropping open connections, SNI picks
//! the certificate, plain HTTP redirects (but PURGE does not), and an `https://` origin is verified — an
//! untrusted or expired certificate is a 502 that says why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tern_edge::EdgeConfig;
use tern_edge::testsuite::{Resource, TestOrigin, send};
use tern_http::testsuite::{TestCa, TestCert};
use tern_http::tls::{CertSource, CertStore, ClientTls, TlsConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Setup;

/// A CA, a certificate for `localhost` it issued, and the files they live in.
struct Certs {
    dir: tempfile::TempDir,
    ca: TestCa,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("tern edge test CA");
        let ca_file = ca.write(&dir.path().join("ca.pem"));
        let (cert_file, key_file) = ca.issue(&["localhost"]).write(dir.path(), "edge");
        Certs {
            dir,
            ca,
            ca_file,
            cert_file,
            key_file,
        }
    }

    /// An edge config serving HTTPS with these files on a port of its own.
    fn apply(&self, config: &mut EdgeConfig) {
        config.tls_listen = Some(loopback());
        config.tls_cert = Some(self.cert_file.clone());
        config.tls_key = Some(self.key_file.clone());
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// A TLS connection to `addr` for `name`, trusting `ca` alone, offering `alpn`.
async fn connect(addr: SocketAddr, name: &str, ca: &Path, alpn: &[&[u8]]) -> std::io::Result<TlsStream<TcpStream>> {
    let trust = ClientTls::new(Some(ca)).expect("CA file");
    let mut config = (*trust.rustls_config()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
    connector.connect(server_name, tcp).await
}

fn negotiated(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

fn presented(stream: &TlsStream<TcpStream>) -> Option<CertificateDer<'static>> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.clone().into_owned())
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("test certificate")
}

/// Status, version and body of a GET sent on an HTTP/2 connection.
async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    url: &str,
) -> (StatusCode, Version, Bytes) {
    let request = Request::get(url).body(Full::new(Bytes::new())).expect("request");
    let response = sender.send_request(request).await.expect("h2 response");
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.version,
        body.collect().await.expect("body").to_bytes(),
    )
}

/// Status and body of a GET sent on an HTTP/1.1 connection.
async fn h1_get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
) -> (StatusCode, Bytes) {
    let request = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("h1 response");
    let (parts, body) = response.into_parts();
    (parts.status, body.collect().await.expect("body").to_bytes())
}

#[tokio::test]
async fn https_negotiates_http2_and_shares_the_cache_with_plain_http() {
    let certs = Certs::new();
    let setup = Setup::with(|config| certs.apply(config)).await;
    setup.origin.set(
        "/page",
        Resource::ok("hello over tls", &[("cache-control", "max-age=60")]),
    );
    let https = setup.edge.tls.expect("HTTPS listener");

    let stream = connect(https, "localhost", &certs.ca_file, &[b"h2", b"http/1.1"])
        .await
        .expect("TLS handshake with the edge");
    assert_eq!(negotiated(&stream).as_deref(), Some(&b"h2"[..]), "ALPN picks h2");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    let url = format!("https://localhost:{}/page", https.port());
    let (status, version, body) = h2_get(&mut sender, &url).await;
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(body, Bytes::from("hello over tls"));

    // Plain HTTP still serves, from the same cache (the same host, as on ports 80 and 443): the origin
    // was asked once.
    let authority = format!("localhost:{}", https.port());
    let plain = setup.get_with("/page", &[("host", authority.as_str())]).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(plain.body, Bytes::from("hello over tls"));
    assert_eq!(
        setup.origin.count_for("/page"),
        1,
        "one origin fetch for both listeners"
    );

    // A client that offers only HTTP/1.1 gets it.
    let stream = connect(https, "localhost", &certs.ca_file, &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    assert_eq!(negotiated(&stream).as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn the_origin_hears_the_listeners_scheme_and_never_a_clients_forwarding_fields() {
    let certs = Certs::new();
    let setup = Setup::with(|config| certs.apply(config)).await;
    // An origin that redirects plain HTTP to HTTPS by `X-Forwarded-Proto` says so with `Vary`.
    setup.origin.set(
        "/page",
        Resource::ok(
            "scheme-dependent",
            &[("cache-control", "max-age=60"), ("vary", "x-forwarded-proto")],
        ),
    );
    let https = setup.edge.tls.expect("HTTPS listener");
    let authority = format!("localhost:{}", https.port());

    // A client on plain HTTP claims HTTPS and another host: neither reaches the origin.
    let spoofed = setup
        .get_with(
            "/page",
            &[
                ("host", authority.as_str()),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("forwarded", "for=1.2.3.4;proto=https;host=evil.example"),
                ("x-original-url", "/admin"),
            ],
        )
        .await;
    assert_eq!(spoofed.status, StatusCode::OK);
    let seen = setup.origin.seen();
    let first = seen.last().expect("the origin was asked");
    assert_eq!(first.headers["x-forwarded-proto"], "http");
    for field in ["x-forwarded-host", "forwarded", "x-original-url"] {
        assert!(
            !first.headers.contains_key(field),
            "the client's {field} reached the origin"
        );
    }

    // An HTTPS client is told to the origin as such, and does not get the plain-HTTP answer.
    let stream = connect(https, "localhost", &certs.ca_file, &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(connection);
    let (status, _) = h1_get(&mut sender, &authority, "/page").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        setup.origin.count_for("/page"),
        2,
        "one fetch per scheme the origin varies on"
    );
    let seen = setup.origin.seen();
    assert_eq!(seen.last().expect("second fetch").headers["x-forwarded-proto"], "https");

    // Each scheme now hits its own answer.
    let (status, _) = h1_get(&mut sender, &authority, "/page").await;
    assert_eq!(status, StatusCode::OK);
    let plain = setup.get_with("/page", &[("host", authority.as_str())]).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(setup.origin.count_for("/page"), 2);
}

#[tokio::test]
async fn plain_http_to_the_https_port_is_told_to_use_https() {
    let certs = Certs::new();
    let setup = Setup::with(|config| certs.apply(config)).await;
    let https = setup.edge.tls.expect("HTTPS listener");
    let got = send(
        &tern_edge::testsuite::client(),
        "GET",
        &format!("http://{https}/page"),
        &[],
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&got.body).contains("https://"),
        "{:?}",
        got.body
    );
    // The port still speaks TLS to the next client.
    connect(https, "localhost", &certs.ca_file, &[b"http/1.1"])
        .await
        .expect("TLS handshake after the plain request");
}

#[tokio::test]
async fn curl_gets_http2_over_tls() {
    let certs = Certs::new();
    let setup = Setup::with(|config| certs.apply(config)).await;
    setup
        .origin
        .set("/curl", Resource::ok("via curl", &[("cache-control", "max-age=60")]));
    let https = setup.edge.tls.expect("HTTPS listener");
    let output = tokio::process::Command::new("curl")
        .arg("--silent")
        .arg("--show-error")
        .arg("--http2")
        .arg("--cacert")
        .arg(&certs.ca_file)
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", https.port()))
        .arg("--write-out")
        .arg("\n%{http_version} %{http_code}")
        .arg(format!("https://localhost:{}/curl", https.port()))
        .output()
        .await;
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: curl is not installed (apt-get install curl)");
            return;
        }
        Err(error) => panic!("cannot run curl: {error}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout, "via curl\n2 200", "body, then HTTP version and status");
}

#[tokio::test]
async fn a_renewed_certificate_reaches_new_connections_while_open_ones_keep_working() {
    let certs = Certs::new();
    let setup = Setup::with(|config| {
        certs.apply(config);
        config.tls_reload_poll_ms = 50;
    })
    .await;
    setup
        .origin
        .set("/r", Resource::ok("still here", &[("cache-control", "max-age=60")]));
    let https = setup.edge.tls.expect("HTTPS listener");
    let host = format!("localhost:{}", https.port());

    let open = connect(https, "localhost", &certs.ca_file, &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    let first = presented(&open).expect("a certificate");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(open))
        .await
        .expect("h1 handshake");
    let connection = tokio::spawn(connection);
    assert_eq!(h1_get(&mut sender, &host, "/r").await.0, StatusCode::OK);

    // A broken file first (a renewal caught half-way): refused, the old certificate is still served.
    std::fs::write(&certs.cert_file, "-----BEGIN CERTIFICATE-----\nnot yet").expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = connect(https, "localhost", &certs.ca_file, &[b"http/1.1"])
        .await
        .expect("the previous certificate is still served");
    assert_eq!(presented(&during), Some(first.clone()));

    let renewed = certs.ca.issue(&["localhost"]);
    renewed.write(certs.dir.path(), "edge");
    let mut served = None;
    for _ in 0..100 {
        let stream = connect(https, "localhost", &certs.ca_file, &[b"http/1.1"])
            .await
            .expect("TLS handshake during the reload");
        served = presented(&stream);
        if served.as_ref() == Some(&der(&renewed.cert_pem)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        served,
        Some(der(&renewed.cert_pem)),
        "a new connection sees the renewed certificate"
    );

    // The connection opened before the reload was never dropped.
    let (status, body) = h1_get(&mut sender, &host, "/r").await;
    assert_eq!((status, body), (StatusCode::OK, Bytes::from("still here")));
    assert!(!connection.is_finished(), "the open connection is still up");
}

#[tokio::test]
async fn a_certificate_directory_answers_each_name_with_its_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("tern edge test CA");
    let ca_file = ca.write(&dir.path().join("ca.pem"));
    let certs_dir = dir.path().join("certs");
    std::fs::create_dir(&certs_dir).expect("mkdir");
    let www = ca.issue(&["www.example"]);
    www.write(&certs_dir, "www");
    let img = ca.issue(&["*.img.example"]);
    img.write(&certs_dir, "img");
    let setup = Setup::with(|config| {
        config.tls_listen = Some(loopback());
        config.tls_dir = Some(certs_dir.clone());
    })
    .await;
    let https = setup.edge.tls.expect("HTTPS listener");
    let stream = connect(https, "www.example", &ca_file, &[b"h2"]).await.expect("www");
    assert_eq!(presented(&stream), Some(der(&www.cert_pem)));
    let stream = connect(https, "a.img.example", &ca_file, &[b"h2"]).await.expect("img");
    assert_eq!(presented(&stream), Some(der(&img.cert_pem)));
}

#[tokio::test]
async fn plain_http_redirects_to_https_but_purge_and_the_admin_listener_do_not() {
    let certs = Certs::new();
    let setup = Setup::with(|config| {
        certs.apply(config);
        config.redirect_https = true;
        config.purge_allow = vec!["127.0.0.0/8".parse().expect("network")];
    })
    .await;
    setup
        .origin
        .set("/x", Resource::ok("x", &[("cache-control", "max-age=60")]));
    let https = setup.edge.tls.expect("HTTPS listener");

    let got = setup.get_with("/x?q=1", &[("host", "www.example:8080")]).await;
    assert_eq!(got.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        got.header("location"),
        format!("https://www.example:{}/x?q=1", https.port())
    );
    assert_eq!(setup.origin.count(), 0, "a redirect asks nothing of the origin");

    let purged = send(&setup.client, "PURGE", &setup.url("/x"), &[("host", "www.example")]).await;
    assert_ne!(
        purged.status,
        StatusCode::PERMANENT_REDIRECT,
        "PURGE is served on plain HTTP"
    );

    // The admin listener speaks HTTPS with the same certificate, and never redirects.
    let admin = setup.edge.admin.expect("admin listener");
    let stream = connect(admin, "localhost", &certs.ca_file, &[b"http/1.1"])
        .await
        .expect("TLS on the admin listener");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(connection);
    let (status, body) = h1_get(&mut sender, "localhost", "/status").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&body).contains("\"role\": \"edge\""),
        "{body:?}"
    );
}

/// An origin serving HTTPS with `cert`, and an edge in front of it configured by `adjust`.
async fn edge_before_https_origin(
    cert: &TestCert,
    dir: &Path,
    adjust: impl FnOnce(&mut EdgeConfig),
) -> (TestOrigin, tern_edge::RunningEdge) {
    let (cert_file, key_file) = cert.write(dir, "origin");
    let store = CertStore::load(TlsConfig::new(CertSource::Pair {
        cert: cert_file,
        key: key_file,
    }))
    .expect("origin certificate");
    let origin = TestOrigin::start_tls(store.acceptor()).await;
    origin.set(
        "/o",
        Resource::ok("from the https origin", &[("cache-control", "max-age=60")]),
    );
    let mut config = EdgeConfig {
        listen: loopback(),
        origin: origin.url(),
        ..EdgeConfig::default()
    };
    config.upstream.first_byte_timeout_ms = 5_000;
    adjust(&mut config);
    let edge = tern_edge::start(config).await.expect("edge starts");
    (origin, edge)
}

async fn get(edge: &tern_edge::RunningEdge, path: &str) -> tern_edge::testsuite::Got {
    let client = tern_edge::testsuite::client();
    send(
        &client,
        "GET",
        &format!("http://{}{path}", edge.listen),
        &[("host", "www.example")],
    )
    .await
}

#[tokio::test]
async fn an_origin_certificate_from_an_unknown_ca_is_a_502_that_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let private_ca = TestCa::new("a CA nobody trusts");
    let (origin, edge) = edge_before_https_origin(&private_ca.issue(&["localhost"]), dir.path(), |_| {}).await;
    let got = get(&edge, "/o").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&got.body);
    assert!(
        body.contains("invalid peer certificate") && body.contains("UnknownIssuer"),
        "{body}"
    );
    assert_eq!(origin.count(), 0, "nothing reached the origin");
}

#[tokio::test]
async fn an_origin_certificate_the_given_ca_file_does_not_cover_is_a_502_that_says_so() {
    // A trial's finding: with the wrong file given, the answer read as if none had been.
    let dir = tempfile::tempdir().expect("tempdir");
    let (origin_ca, other_ca) = (TestCa::new("origin CA"), TestCa::new("another CA"));
    let other_file = other_ca.write(&dir.path().join("other-ca.pem"));
    let (origin, edge) = edge_before_https_origin(&origin_ca.issue(&["localhost"]), dir.path(), |config| {
        config.origin_ca = Some(other_file.clone());
    })
    .await;
    let got = get(&edge, "/o").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&got.body);
    assert!(
        body.contains("not one of the 1 certificate(s) given with --origin-ca/--ca") && body.contains("UnknownIssuer"),
        "{body}"
    );
    assert_eq!(origin.count(), 0, "nothing reached the origin");
}

#[tokio::test]
async fn an_expired_origin_certificate_is_a_502_that_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("origin CA");
    let ca_file = ca.write(&dir.path().join("origin-ca.pem"));
    let (origin, edge) = edge_before_https_origin(&ca.issue_expired(&["localhost"]), dir.path(), |config| {
        config.origin_ca = Some(ca_file.clone());
    })
    .await;
    let got = get(&edge, "/o").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&got.body).to_lowercase();
    assert!(
        body.contains("invalid peer certificate") && body.contains("expired"),
        "{body}"
    );
    assert_eq!(origin.count(), 0, "nothing reached the origin");
}

#[tokio::test]
async fn an_origin_certificate_for_another_name_is_a_502_that_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("origin CA");
    let ca_file = ca.write(&dir.path().join("origin-ca.pem"));
    let (_origin, edge) = edge_before_https_origin(&ca.issue(&["elsewhere.example"]), dir.path(), |config| {
        config.origin_ca = Some(ca_file.clone());
    })
    .await;
    let got = get(&edge, "/o").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&got.body);
    assert!(body.contains("not valid for name \"localhost\""), "{body}");
}

/// The certificate `openssl req -x509` makes says `CA:TRUE`; WebPKI refuses it as a server's own
/// certificate even when it is trusted. Given with `--origin-ca`, it is pinned and accepted; without, the
/// 502 says what is wrong and what to do.
#[tokio::test]
async fn a_self_signed_ca_certificate_at_the_origin_is_pinned_through_origin_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = TestCert::self_signed_ca(&["localhost"]);
    let (_untrusted_origin, edge) = edge_before_https_origin(&cert, dir.path(), |_| {}).await;
    let refused = get(&edge, "/o").await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    let pinned_file = dir.path().join("pinned.pem");
    std::fs::write(&pinned_file, &cert.cert_pem).expect("write");
    let other = TestCert::self_signed_ca(&["localhost"]);
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, &other.cert_pem).expect("write");
    let (_origin, edge) = edge_before_https_origin(&cert, dir.path(), |config| {
        config.origin_ca = Some(other_file.clone());
    })
    .await;
    let wrong = get(&edge, "/o").await;
    assert_eq!(
        wrong.status,
        StatusCode::BAD_GATEWAY,
        "another certificate is not a pin for this one"
    );
    let (_origin, edge) = edge_before_https_origin(&cert, dir.path(), |config| {
        config.origin_ca = Some(pinned_file.clone());
    })
    .await;
    let got = get(&edge, "/o").await;
    assert_eq!(got.status, StatusCode::OK, "{}", String::from_utf8_lossy(&got.body));
}

#[tokio::test]
async fn an_origin_trusted_through_its_ca_answers_and_is_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("origin CA");
    let ca_file = ca.write(&dir.path().join("origin-ca.pem"));
    let (origin, edge) = edge_before_https_origin(&ca.issue(&["localhost"]), dir.path(), |config| {
        config.origin_ca = Some(ca_file.clone());
    })
    .await;
    let got = get(&edge, "/o").await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.body, Bytes::from("from the https origin"));
    let again = get(&edge, "/o").await;
    assert_eq!(again.body, Bytes::from("from the https origin"));
    assert_eq!(origin.count(), 1, "the second answer came from the cache");
}

#[tokio::test]
async fn tls_settings_that_cannot_work_stop_the_start_with_a_reason() {
    let certs = Certs::new();
    let origin = TestOrigin::start().await;
    let base = || EdgeConfig {
        listen: loopback(),
        origin: origin.url(),
        ..EdgeConfig::default()
    };

    let mut no_address = base();
    no_address.tls_cert = Some(certs.cert_file.clone());
    no_address.tls_key = Some(certs.key_file.clone());
    let error = tern_edge::start(no_address).await.err().expect("refused");
    assert!(error.to_string().contains("--tls-listen"), "{error}");

    let mut bad_key = base();
    certs.apply(&mut bad_key);
    let wrong_key = TestCert::self_signed(&["localhost"]).write(certs.dir.path(), "other").1;
    bad_key.tls_key = Some(wrong_key);
    let error = tern_edge::start(bad_key).await.err().expect("refused");
    assert!(
        error.to_string().contains("does not belong to the first certificate"),
        "{error}"
    );

    let mut redirect_alone = base();
    redirect_alone.redirect_https = true;
    let error = tern_edge::start(redirect_alone).await.err().expect("refused");
    assert!(error.to_string().contains("--redirect-https"), "{error}");
}

#[tokio::test]
async fn the_catch_up_reaches_an_https_sync_service_only_through_its_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("sync CA");
    let ca_file = ca.write(&dir.path().join("sync-ca.pem"));
    let (cert, key) = ca.issue(&["localhost"]).write(dir.path(), "sync");
    let store = CertStore::load(TlsConfig::new(CertSource::Pair { cert, key })).expect("sync certificate");
    // Stands in for the sync service's admin listener: it counts the /changes requests that get through.
    let sync = TestOrigin::start_tls(store.acceptor()).await;
    let origin = TestOrigin::start().await;
    let config = |trusted: bool, cache: &str| EdgeConfig {
        listen: loopback(),
        origin: origin.url(),
        cache_dir: Some(dir.path().join(cache)),
        sync_url: Some(sync.url()),
        sync_ca: trusted.then(|| ca_file.clone()),
        sync_catch_up_secs: 0,
        ..EdgeConfig::default()
    };
    let untrusting = tern_edge::start(config(false, "cache-a")).await.expect("edge starts");
    assert_eq!(
        sync.count(),
        0,
        "without the sync CA the handshake fails and nothing is asked"
    );
    let trusting = tern_edge::start(config(true, "cache-b")).await.expect("edge starts");
    let asked = sync.seen();
    assert_eq!(asked.len(), 1, "the catch-up went through TLS");
    assert!(asked[0].path.starts_with("/changes?since="), "{:?}", asked[0].path);
    untrusting.shutdown().await;
    trusting.shutdown().await;
}
