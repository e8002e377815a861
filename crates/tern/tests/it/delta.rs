//! Differential caching (seed 000, issue 12) with real processes: a dynamic origin in this test process,
//! `tern delta` in front of it, a relay that counts the bytes of the "long link", `tern edge --delta` in
//! front of that, and clients (one of them a browser speaking RFC 9842). Every page a client gets is
//! compared with what the origin sent for that very request (the origin logs each body's SHA-256 under the
//! request's `x-request-id`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tern_delta::fields::{self, UseAsDictionary};
use tern_delta::synthetic::{Accounts, News};
use tern_delta::{Base, BaseId, DczDecoder, Limits, ReprDigest, dcz};
use tern_edge::testsuite::{Got, client, send};
use tern_http::Body;
use tern_http::server::{Handler, ServerLimits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::{Running, free_addr, spawn};

/// The dynamic origin: a news home page that changes every minute (the minute comes from the request's
/// `x-minute`), account pages personalised by a `user=N` cookie, and pages that only ever go to signed-in
/// users.
struct OriginState {
    news: News,
    accounts: Accounts,
    /// SHA-256 of the body sent, by `x-request-id`.
    sent: Mutex<HashMap<String, ReprDigest>>,
    requests: AtomicU64,
}

struct DynamicOrigin {
    addr: SocketAddr,
    state: Arc<OriginState>,
    stop: CancellationToken,
}

impl Drop for DynamicOrigin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn number(headers: &HeaderMap, name: &str) -> u64 {
    text(headers, name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The `user=N` cookie's N.
fn user_of(headers: &HeaderMap) -> Option<u64> {
    text(headers, "cookie")?
        .split(';')
        .find_map(|pair| pair.trim().strip_prefix("user="))
        .and_then(|n| n.parse().ok())
}

struct OriginHandler(Arc<OriginState>);

impl Handler for OriginHandler {
    async fn call(&self, request: Request<Incoming>, _client: SocketAddr) -> Response<Body> {
        let state = &self.0;
        state.requests.fetch_add(1, Ordering::SeqCst);
        let headers = request.headers();
        let minute = number(headers, "x-minute");
        let path = request.uri().path();
        let (body, cache_control) = if path == "/news/missing" {
            let mut response = Response::new(tern_http::full("no such story"));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        } else if path.starts_with("/news/") {
            // What a search or reset page does: it echoes its query, and an API's page names its key.
            let mut page = state.news.page(minute);
            if let Some(query) = request.uri().query() {
                page.extend_from_slice(format!("<p>results for {query}</p>").as_bytes());
            }
            if let Some(key) = text(headers, "x-api-key") {
                page.extend_from_slice(format!("<p>key owner {key}</p>").as_bytes());
            }
            (page, "max-age=0")
        } else if path.starts_with("/static/") {
            (b"body { color: black }".to_vec(), "max-age=0")
        } else if path.starts_with("/account/") {
            match user_of(headers) {
                Some(n) => (state.accounts.page(Some(&state.accounts.user(n)), minute), "private"),
                None => (state.accounts.page(None, minute), "max-age=0"),
            }
        } else if path.starts_with("/me/") {
            let user = state.accounts.user(user_of(headers).unwrap_or(0));
            (state.accounts.page(Some(&user), minute), "private, no-cache")
        } else {
            let mut response = Response::new(tern_http::full("not here"));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        };
        if let Some(id) = text(headers, "x-request-id") {
            state
                .sent
                .lock()
                .expect("lock")
                .insert(id.to_string(), ReprDigest::of(&body));
        }
        let mut response = Response::new(tern_http::full(body));
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, cache_control.parse().expect("value"));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, "text/html; charset=utf-8".parse().expect("value"));
        response
    }
}

impl DynamicOrigin {
    async fn start(news: News) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(OriginState {
            news,
            accounts: Accounts::new(7),
            sent: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            Arc::new(OriginHandler(state.clone())),
            ServerLimits::default(),
            stop.clone(),
        ));
        DynamicOrigin { addr, state, stop }
    }

    fn sent(&self, id: &str) -> ReprDigest {
        *self
            .state
            .sent
            .lock()
            .expect("lock")
            .get(id)
            .unwrap_or_else(|| panic!("the origin never saw request {id}"))
    }
}

/// A TCP relay that counts the bytes each way: the long link between `tern delta` and the edge, measured
/// by the test rather than by tern.
struct Relay {
    addr: SocketAddr,
    /// Bytes from `tern delta` to the edge.
    down: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        count.fetch_add(read as u64, Ordering::SeqCst);
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let down = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (counted, stopped) = (down.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((edge_side, _)) = accepted else { continue };
                let Ok(delta_side) = TcpStream::connect(target).await else {
                    continue;
                };
                let (edge_read, edge_write) = edge_side.into_split();
                let (delta_read, delta_write) = delta_side.into_split();
                tokio::spawn(pump(edge_read, delta_write, Arc::new(AtomicU64::new(0))));
                tokio::spawn(pump(delta_read, edge_write, counted.clone()));
            }
        });
        Relay { addr, down, stop }
    }

    fn down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }
}

/// Origin, `tern delta`, relay, edge.
struct Stack {
    origin: DynamicOrigin,
    /// `tern delta` (`None` only while it restarts).
    delta: Option<Running>,
    delta_addr: SocketAddr,
    delta_admin: SocketAddr,
    relay: Relay,
    edge: Option<Running>,
    edge_addr: SocketAddr,
    edge_admin: SocketAddr,
    edge_args: Vec<String>,
    _dir: tempfile::TempDir,
    next_id: AtomicU64,
}

/// The `[delta]` table the tests use: every clean response offered, a news class that re-derives its base
/// when the mean of four deltas passes `news_ratio` of the page (no minimum interval: the tests' minutes
/// pass in milliseconds), account pages, and pages for signed-in users only.
fn delta_config(news_ratio: f64) -> String {
    format!(
        r#"
[delta]
offer_interval_ms = 0

[[delta.classes]]
name = "news"
pattern = "/news/*"
ratio = {news_ratio}
window = 4
min_interval_secs = 0

[[delta.classes]]
name = "account"
pattern = "/account/*"

[[delta.classes]]
name = "me"
pattern = "/me/*"
"#
    )
}

impl Stack {
    async fn start(news: News, edge_extra: &[&str]) -> Self {
        Self::with_ratio(news, 0.02, edge_extra).await
    }

    async fn with_ratio(news: News, news_ratio: f64, edge_extra: &[&str]) -> Self {
        Self::with_config(news, &delta_config(news_ratio), edge_extra).await
    }

    async fn with_config(news: News, delta_config: &str, edge_extra: &[&str]) -> Self {
        let origin = DynamicOrigin::start(news).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("delta.toml");
        std::fs::write(&config, delta_config).expect("write config");
        let (delta_addr, delta_admin) = (free_addr(), free_addr());
        let delta = spawn(
            &[
                "delta",
                "--listen",
                &delta_addr.to_string(),
                "--admin",
                &delta_admin.to_string(),
                "--origin",
                &format!("http://{}", origin.addr),
                "--config",
                config.to_str().expect("utf-8"),
            ],
            delta_addr,
        );
        let relay = Relay::start(delta_addr).await;
        let (edge_addr, edge_admin) = (free_addr(), free_addr());
        let mut edge_args: Vec<String> = [
            "edge",
            "--listen",
            &edge_addr.to_string(),
            "--admin",
            &edge_admin.to_string(),
            "--origin",
            &format!("http://{}", relay.addr),
            "--delta",
            "--purge-allow",
            "127.0.0.1",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        edge_args.extend(edge_extra.iter().map(ToString::to_string));
        let mut stack = Stack {
            origin,
            delta: Some(delta),
            delta_addr,
            delta_admin,
            relay,
            edge: None,
            edge_addr,
            edge_admin,
            edge_args,
            _dir: dir,
            next_id: AtomicU64::new(0),
        };
        stack.start_edge();
        stack
    }

    fn start_edge(&mut self) {
        let args: Vec<&str> = self.edge_args.iter().map(String::as_str).collect();
        self.edge = Some(spawn(&args, self.edge_addr));
    }

    fn restart_edge(&mut self) {
        self.edge = None;
        self.start_edge();
    }

    /// Stops `tern delta` and starts it again on the same addresses with `config` (its bases are gone).
    fn restart_delta(&mut self, config: &str) {
        let path = self._dir.path().join("delta.toml");
        std::fs::write(&path, config).expect("write config");
        self.delta = None;
        self.delta = Some(spawn(
            &[
                "delta",
                "--listen",
                &self.delta_addr.to_string(),
                "--admin",
                &self.delta_admin.to_string(),
                "--origin",
                &format!("http://{}", self.origin.addr),
                "--config",
                path.to_str().expect("utf-8"),
            ],
            self.delta_addr,
        ));
    }

    /// GETs `path` at `minute` from the edge with `extra` fields; checks the page is exactly what the
    /// origin sent for this request.
    async fn page(&self, path: &str, minute: u64, extra: &[(&str, &str)]) -> Got {
        let got = self.fetch(path, minute, extra).await;
        assert_eq!(got.status, StatusCode::OK, "{path} at minute {minute}: {:?}", got.body);
        got
    }

    /// As [`Stack::page`]; returns the response whatever it is, checking a 200's body against the origin.
    async fn fetch(&self, path: &str, minute: u64, extra: &[(&str, &str)]) -> Got {
        let id = format!("r{}", self.next_id.fetch_add(1, Ordering::SeqCst));
        let minute_text = minute.to_string();
        let mut headers = vec![("x-request-id", id.as_str()), ("x-minute", minute_text.as_str())];
        headers.extend_from_slice(extra);
        let got = send(&client(), "GET", &format!("http://{}{path}", self.edge_addr), &headers).await;
        if got.status == StatusCode::OK && got.header("content-encoding").is_empty() {
            assert_eq!(
                ReprDigest::of(&got.body),
                self.origin.sent(&id),
                "{path} at minute {minute}: the page differs from what the origin sent"
            );
        }
        got
    }

    async fn delta_status(&self) -> serde_json::Value {
        json(&format!("http://{}/status", self.delta_admin)).await
    }

    async fn edge_status(&self) -> serde_json::Value {
        json(&format!("http://{}/status", self.edge_admin)).await["delta"].clone()
    }

    async fn edge_metrics(&self) -> String {
        let got = send(&client(), "GET", &format!("http://{}/metrics", self.edge_admin), &[]).await;
        String::from_utf8_lossy(&got.body).to_string()
    }

    async fn delta_metrics(&self) -> String {
        let got = send(&client(), "GET", &format!("http://{}/metrics", self.delta_admin), &[]).await;
        String::from_utf8_lossy(&got.body).to_string()
    }

    /// The current base of `class` at `tern delta`.
    async fn delta_base(&self, class: &str) -> Option<BaseId> {
        class_field(&self.delta_status().await, class, "current_base")
            .as_str()
            .and_then(BaseId::from_hex)
    }

    /// The current base of `class` at the edge.
    async fn edge_base(&self, class: &str) -> Option<BaseId> {
        class_field(&self.edge_status().await, class, "current_base")
            .as_str()
            .and_then(BaseId::from_hex)
    }
}

async fn json(url: &str) -> serde_json::Value {
    let got = send(&client(), "GET", url, &[]).await;
    serde_json::from_slice(&got.body).unwrap_or_else(|e| panic!("{url}: {e}: {:?}", got.body))
}

fn class_field(status: &serde_json::Value, class: &str, field: &str) -> serde_json::Value {
    status["classes"]
        .as_array()
        .and_then(|classes| classes.iter().find(|c| c["name"] == class))
        .map(|c| c[field].clone())
        .unwrap_or(serde_json::Value::Null)
}

/// The value of the metric line starting with `prefix` (name and labels), 0 when absent.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Waits (bounded) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_versions_arrive_exact_at_a_fraction_of_the_bytes() {
    let stack = Stack::start(News::new(1), &[]).await;
    let mut raw = 0u64;
    for minute in 0..200 {
        let got = stack.page("/news/home", minute, &[]).await;
        raw += got.body.len() as u64;
    }
    let wire = stack.relay.down();
    let ratio = wire as f64 / raw as f64;
    println!(
        "200 versions of the news page: {raw} bytes raw, {wire} bytes from tern delta to the edge ({:.2}%)",
        ratio * 100.0
    );
    assert!(ratio < 0.04, "{wire} bytes over the link for {raw} raw");
    let metrics = stack.edge_metrics().await;
    assert!(
        metric(&metrics, "tern_edge_delta_pages_total{from=\"delta\"}") >= 195.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "tern_edge_delta_digest_mismatches_total"), 0.0);
    let delta_metrics = stack.delta_metrics().await;
    assert!(metric(&delta_metrics, "tern_delta_pages_encoded_total{class=\"news\"}") >= 195.0);
    assert!(
        metric(&delta_metrics, "tern_delta_sent_bytes_total{class=\"news\"}")
            < metric(&delta_metrics, "tern_delta_raw_bytes_total{class=\"news\"}") * 0.04
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_never_enters_a_base_or_another_users_page() {
    let stack = Stack::start(News::new(2), &[]).await;
    let accounts = Accounts::new(7);
    let (alice, bob) = (accounts.user(1), accounts.user(2));
    let secrets =
        |user: &tern_delta::synthetic::User| vec![user.name.clone(), user.account.clone(), user.email.clone()];
    for minute in 0..12 {
        let anonymous = stack.page("/account/home", minute, &[]).await;
        assert!(!String::from_utf8_lossy(&anonymous.body).contains(&alice.name));
        let for_alice = stack.page("/account/home", minute, &[("cookie", "user=1")]).await;
        let for_bob = stack.page("/account/home", minute, &[("cookie", "user=2")]).await;
        let (alice_page, bob_page) = (
            String::from_utf8_lossy(&for_alice.body).to_string(),
            String::from_utf8_lossy(&for_bob.body).to_string(),
        );
        assert!(alice_page.contains(&alice.account) && bob_page.contains(&bob.account));
        for secret in secrets(&bob) {
            assert!(!alice_page.contains(&secret), "bob's {secret} in alice's page");
        }
        for secret in secrets(&alice) {
            assert!(!bob_page.contains(&secret), "alice's {secret} in bob's page");
        }
        // Pages only signed-in users ever get.
        stack.page("/me/home", minute, &[("cookie", "user=1")]).await;
    }
    let status = stack.delta_status().await;
    assert!(class_field(&status, "me", "current_base").is_null(), "{status}");
    assert!(!class_field(&status, "account", "current_base").is_null(), "{status}");
    let ids = status["bases"]["ids"].as_array().expect("ids").clone();
    assert!(!ids.is_empty());
    for id in ids {
        let url = format!(
            "http://{}/.well-known/tern-delta/base/{}",
            stack.delta_addr,
            id.as_str().expect("hex")
        );
        let base = send(&client(), "GET", &url, &[]).await;
        assert_eq!(base.status, StatusCode::OK);
        let text = String::from_utf8_lossy(&base.body);
        for secret in secrets(&alice).into_iter().chain(secrets(&bob)) {
            assert!(!text.contains(&secret), "{secret} in base {id}");
        }
    }
    let metrics = stack.delta_metrics().await;
    assert!(
        metric(
            &metrics,
            "tern_delta_base_refusals_total{class=\"me\",reason=\"cookie\"}"
        ) >= 12.0
    );
    assert!(
        metric(
            &metrics,
            "tern_delta_base_refusals_total{class=\"account\",reason=\"cookie\"}"
        ) >= 24.0
    );
    // Personalised pages crossed the link as deltas against the anonymous base, and were not stored at
    // the edge (`private`): every request of them reached the origin.
    assert!(
        metric(&metrics, "tern_delta_pages_encoded_total{class=\"account\"}") >= 20.0,
        "{metrics}"
    );
    let before = stack.origin.state.requests.load(Ordering::SeqCst);
    stack.page("/account/home", 20, &[("cookie", "user=1")]).await;
    stack.page("/account/home", 20, &[("cookie", "user=1")]).await;
    assert_eq!(stack.origin.state.requests.load(Ordering::SeqCst), before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redesign_brings_a_new_base_pushed_before_use() {
    let redesign = 30;
    // A 5% rule: the redesign, not the news of the day, is what makes a new base.
    let stack = Stack::with_ratio(News::new(3).with_redesign_at(redesign), 0.05, &[]).await;
    for minute in 0..redesign {
        stack.page("/news/home", minute, &[]).await;
    }
    let old = stack.delta_base("news").await.expect("a base");
    eventually("the edge names the base tern delta announces", || async {
        stack.edge_base("news").await == Some(old)
    })
    .await;
    let mut minute = redesign;
    // The window is four deltas: a new base within a few pages of the redesign.
    while stack.delta_base("news").await == Some(old) {
        assert!(minute < redesign + 8, "no new base 8 pages after the redesign");
        stack.page("/news/home", minute, &[]).await;
        minute += 1;
    }
    let new = stack.delta_base("news").await.expect("a base");
    eventually("the edge holds and names the new base", || async {
        stack.edge_base("news").await == Some(new)
    })
    .await;
    let pages_before = stack.edge_status().await;
    for _ in 0..6 {
        stack.page("/news/home", minute, &[]).await;
        minute += 1;
    }
    let status = stack.delta_status().await;
    let ratio = class_field(&status, "news", "recent_ratio").as_f64().expect("a ratio");
    assert!(ratio < 0.05, "ratio {ratio} after the new base");
    let edge = stack.edge_status().await;
    assert_eq!(
        edge["pages_whole"], pages_before["pages_whole"],
        "a page came whole after the base change"
    );
    let metrics = stack.edge_metrics().await;
    assert!(
        metric(
            &metrics,
            "tern_edge_delta_base_fetches_total{source=\"upstream_delta\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "tern_edge_delta_full_pages_total{reason=\"upstream_whole\"}"),
        0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_base_costs_one_whole_page() {
    let mut stack = Stack::start(News::new(4), &[]).await;
    for minute in 0..3 {
        stack.page("/news/home", minute, &[]).await;
    }
    let page_len = stack.page("/news/home", 3, &[]).await.body.len() as u64;
    // Bytes over the link for one page: a whole page (and the base) or a delta.
    let link_bytes = |minute| {
        let stack = &stack;
        async move {
            let before = stack.relay.down();
            stack.page("/news/home", minute, &[]).await;
            stack.relay.down() - before
        }
    };
    assert!(link_bytes(4).await < page_len / 10, "a delta in the steady state");

    // The base evicted at the edge (purged from its cache).
    let base = stack.edge_base("news").await.expect("a base");
    let purge = send(
        &client(),
        "PURGE",
        &format!("http://{}{}", stack.edge_addr, base.well_known_path()),
        &[],
    )
    .await;
    assert_eq!(purge.status, StatusCode::OK, "{:?}", purge.body);
    assert!(
        link_bytes(5).await > page_len,
        "the page after the eviction comes whole"
    );
    assert!(
        link_bytes(6).await < page_len / 10,
        "and the one after is a delta again"
    );

    // The edge restarted (memory cache: it holds nothing).
    stack.restart_edge();
    let link_bytes = |minute| {
        let stack = &stack;
        async move {
            let before = stack.relay.down();
            stack.page("/news/home", minute, &[]).await;
            stack.relay.down() - before
        }
    };
    assert!(
        link_bytes(7).await > page_len,
        "the first page after a restart comes whole"
    );
    assert!(
        link_bytes(8).await < page_len / 10,
        "and the one after is a delta again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_that_hold_the_base_get_dcz() {
    let stack = Stack::start(News::new(5), &[]).await;
    for minute in 0..3 {
        stack.page("/news/home", minute, &[]).await;
    }
    // A client without the RFC 9842 fields: the plain page, told where the base is and how it varies.
    let plain = stack.page("/news/home", 3, &[("accept-encoding", "gzip, br")]).await;
    assert!(plain.header("content-encoding").is_empty());
    let vary = plain.header("vary").to_ascii_lowercase();
    assert!(
        vary.contains("accept-encoding") && vary.contains("available-dictionary"),
        "{vary}"
    );
    let announced = fields::announced_bases(&plain.headers);
    assert_eq!(announced.len(), 1, "{:?}", plain.headers);
    let id = announced[0];
    let before = stack.relay.down();
    let fetched = send(
        &client(),
        "GET",
        &format!("http://{}{}", stack.edge_addr, id.well_known_path()),
        &[],
    )
    .await;
    assert_eq!(fetched.status, StatusCode::OK);
    let field = UseAsDictionary::parse(fetched.header("use-as-dictionary")).expect("use-as-dictionary");
    assert_eq!(field.match_pattern, "/news/*");
    let base = Base::verified("news", fetched.body.clone(), id, 1 << 30).expect("the base hashes to its name");
    // The edge holds the base already: it serves it from its cache, not whole over the long link again.
    let crossed = stack.relay.down() - before;
    assert!(
        crossed < 1_000,
        "{crossed} bytes over the link for a base of {}",
        base.len()
    );
    // Under any Host and query it is the same object: no copy fetched or stored per spelling.
    for (host, query) in [
        ("other.example", ""),
        ("bases.tern-delta.invalid", ""),
        ("demo", "?v=2"),
    ] {
        let before = stack.relay.down();
        let again = send(
            &client(),
            "GET",
            &format!("http://{}{}{query}", stack.edge_addr, id.well_known_path()),
            &[("host", host)],
        )
        .await;
        assert_eq!(again.status, StatusCode::OK);
        assert!(again.body == fetched.body, "{host}{query}");
        assert!(
            again.header("cache-status").contains("hit"),
            "{host}{query}: {:?}",
            again.headers
        );
        assert!(stack.relay.down() - before < 1_000, "{host}{query}");
    }

    // The browser names the base and accepts dcz.
    let available = fields::format_available_dictionary(&id);
    let offer = [
        ("accept-encoding", "gzip, br, zstd, dcz"),
        ("available-dictionary", available.as_str()),
    ];
    let id_for_check = format!("r{}", stack.next_id.load(Ordering::SeqCst));
    let coded = stack.page("/news/home", 4, &offer).await;
    assert_eq!(coded.header("content-encoding"), "dcz");
    let vary = coded.header("vary").to_ascii_lowercase();
    assert!(
        vary.contains("accept-encoding") && vary.contains("available-dictionary"),
        "{vary}"
    );
    assert!(coded.body.len() * 20 < base.len(), "dcz of {} bytes", coded.body.len());
    let page = DczDecoder::new(Limits::default())
        .decode(&coded.body, &base)
        .expect("decodes with the base");
    assert_eq!(
        ReprDigest::of(&page),
        stack.origin.sent(&id_for_check),
        "the exact page"
    );
    // RFC 9530: the page's digest travels as the unencoded one; `Repr-Digest` would name the dcz bytes.
    assert!(coded.header("repr-digest").is_empty());
    let unencoded = ReprDigest::parse(coded.header("unencoded-digest")).expect("unencoded-digest");
    assert!(unencoded.verify(&page));
    assert!(
        ReprDigest::parse(plain.header("repr-digest"))
            .expect("repr-digest")
            .verify(&plain.body)
    );

    // The same browser signed in gets the plain page (credentials: never a browser delta).
    let signed_in = [offer[0], offer[1], ("cookie", "session=1")];
    let credentialed = stack.page("/news/home", 5, &signed_in).await;
    assert!(credentialed.header("content-encoding").is_empty());
    // Without dcz in Accept-Encoding, or naming an unknown dictionary: plain.
    let no_dcz = stack
        .page(
            "/news/home",
            6,
            &[
                ("accept-encoding", "gzip"),
                ("available-dictionary", available.as_str()),
            ],
        )
        .await;
    assert!(no_dcz.header("content-encoding").is_empty());
    let unknown = fields::format_available_dictionary(&BaseId::of(b"nothing"));
    let unknown_base = stack
        .page(
            "/news/home",
            7,
            &[("accept-encoding", "dcz"), ("available-dictionary", unknown.as_str())],
        )
        .await;
    assert!(unknown_base.header("content-encoding").is_empty());
    let metrics = stack.edge_metrics().await;
    assert_eq!(
        metric(&metrics, "tern_edge_delta_browser_responses_total{result=\"dcz\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tern_edge_delta_browser_responses_total{result=\"credentials\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_gets_the_next_version_against_the_page_it_holds() {
    let stack = Stack::start(News::new(5), &[]).await;
    for minute in 0..3 {
        stack.page("/news/home", minute, &[]).await;
    }
    // A shareable page is offered as the dictionary of its own URL's next version (RFC 9842 section 2.1).
    let first = stack.page("/news/home", 3, &[("accept-encoding", "gzip, br")]).await;
    let field = UseAsDictionary::parse(first.header("use-as-dictionary")).expect("use-as-dictionary");
    assert_eq!(field.match_pattern, "/news/home");
    let held = Base::new("news", first.body.clone(), 1 << 30).expect("the page as a dictionary");

    // The next visit names that page: the new version comes as a delta against it, exact.
    let available = fields::format_available_dictionary(&held.id());
    let id_for_check = format!("r{}", stack.next_id.load(Ordering::SeqCst));
    let next = stack
        .page(
            "/news/home",
            4,
            &[
                ("accept-encoding", "gzip, dcz"),
                ("available-dictionary", available.as_str()),
            ],
        )
        .await;
    assert_eq!(next.header("content-encoding"), "dcz");
    let page = DczDecoder::new(Limits::default())
        .decode(&next.body, &held)
        .expect("decodes with the page the browser holds");
    assert_eq!(
        ReprDigest::of(&page),
        stack.origin.sent(&id_for_check),
        "the exact page"
    );
    assert!(next.body.len() * 20 < page.len(), "dcz of {} bytes", next.body.len());
    let status = stack.edge_status().await;
    assert!(status["page_dictionaries"]["count"].as_u64() >= Some(2), "{status:#}");

    // A signed-in user's page is never a dictionary: not offered, and naming its hash gets the plain page.
    let signed_in = stack.page("/account/home", 4, &[("cookie", "user=1")]).await;
    assert!(
        signed_in.header("use-as-dictionary").is_empty(),
        "{:?}",
        signed_in.headers
    );
    let theirs = fields::format_available_dictionary(&BaseId::of(&signed_in.body));
    let other = stack
        .page(
            "/account/home",
            5,
            &[("accept-encoding", "dcz"), ("available-dictionary", theirs.as_str())],
        )
        .await;
    assert!(other.header("content-encoding").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_delta_answers_bad_fields_with_the_whole_page() {
    let stack = Stack::start(News::new(6), &[]).await;
    for minute in 0..2 {
        stack.page("/news/home", minute, &[]).await;
    }
    let url = format!("http://{}/news/home", stack.delta_addr);
    let unknown = fields::format_available_dictionary(&BaseId::of(b"no such base"));
    for named in ["garbage", ":AAAA:", unknown.as_str()] {
        let got = send(
            &client(),
            "GET",
            &url,
            &[
                ("tern-delta-edge", "?1"),
                ("accept-encoding", "dcz"),
                ("available-dictionary", named),
                ("x-minute", "9"),
            ],
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "{named}");
        assert!(got.header("content-encoding").is_empty(), "{named}");
        let digest = ReprDigest::parse(got.header("repr-digest")).expect("a page digest");
        assert!(digest.verify(&got.body));
        assert_eq!(&got.body[..], &News::new(6).page(9)[..]);
    }
    let missing = send(
        &client(),
        "GET",
        &format!("http://{}{}", stack.delta_addr, BaseId::of(b"none").well_known_path()),
        &[],
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let metrics = stack.delta_metrics().await;
    assert_eq!(metric(&metrics, "tern_delta_bad_fields_total"), 2.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "tern_delta_full_page_fallbacks_total{class=\"news\",reason=\"unknown_base\"}"
        ),
        1.0
    );
}

/// How the fake `tern delta` misbehaves when the edge names its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    DigestMismatch,
    Truncated,
    UnknownBase,
    Oversized,
    WrongWholePage,
    /// A delta request answered in a coding not asked for (`gzip`).
    WrongCoding,
    /// Every base served with bytes that do not hash to its name.
    TamperedBase,
}

/// A fake `tern delta` that announces one base per class and answers deltas with the fault set.
struct FakeDelta {
    fault: Mutex<Fault>,
    news: Base,
    big: Base,
    pages: AtomicU64,
}

impl FakeDelta {
    fn page(&self, minute: u64) -> Vec<u8> {
        let mut page = self.news.bytes().to_vec();
        page.extend_from_slice(format!("<p>minute {minute}</p>").as_bytes());
        page
    }
}

struct FakeHandler(Arc<FakeDelta>);

impl Handler for FakeHandler {
    async fn call(&self, request: Request<Incoming>, _client: SocketAddr) -> Response<Body> {
        let fake = &self.0;
        let headers = request.headers().clone();
        let path = request.uri().path().to_string();
        if let Some(id) = BaseId::from_well_known_path(&path) {
            let (base, class) = if id == fake.news.id() {
                (&fake.news, tern_delta::Class::parse("news=/news/*").expect("class"))
            } else if id == fake.big.id() {
                (&fake.big, tern_delta::Class::parse("big=/big/*").expect("class"))
            } else {
                let mut response = Response::new(tern_http::full("no such base"));
                *response.status_mut() = StatusCode::NOT_FOUND;
                return response;
            };
            let bytes = if *fake.fault.lock().expect("lock") == Fault::TamperedBase {
                bytes::Bytes::from_static(b"<p>not the base its name says</p>")
            } else {
                base.bytes().clone()
            };
            let mut response = Response::new(tern_http::full(bytes));
            let field = UseAsDictionary::for_class(&class).format().expect("field");
            response
                .headers_mut()
                .insert("use-as-dictionary", field.parse().expect("value"));
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                "public, max-age=31536000, immutable".parse().expect("v"),
            );
            return response;
        }
        fake.pages.fetch_add(1, Ordering::SeqCst);
        let minute = number(&headers, "x-minute");
        let page = fake.page(minute);
        let (base, link) = if path.starts_with("/big/") {
            (&fake.big, fields::compression_dictionary_link(&fake.big.id()))
        } else {
            (&fake.news, fields::compression_dictionary_link(&fake.news.id()))
        };
        let named = fields::available_dictionary(&headers).ok().flatten();
        let fault = *fake.fault.lock().expect("lock");
        let (body, coded, digest) = if fault == Fault::WrongWholePage {
            (page.clone(), false, ReprDigest::of(b"not this page"))
        } else if named == Some(base.id()) {
            let delta = dcz::encode(base, &page, 3).expect("encodes");
            match fault {
                Fault::None | Fault::WrongWholePage | Fault::TamperedBase => (delta, true, ReprDigest::of(&page)),
                Fault::WrongCoding => (page.clone(), false, ReprDigest::of(&page)),
                Fault::DigestMismatch => (delta, true, ReprDigest::of(b"some other page")),
                Fault::Truncated => (delta[..delta.len() - 3].to_vec(), true, ReprDigest::of(&page)),
                Fault::UnknownBase => {
                    let stranger = Base::new("news", b"a base the edge never saw".to_vec(), 1 << 20).expect("base");
                    (
                        dcz::encode(&stranger, &page, 3).expect("encodes"),
                        true,
                        ReprDigest::of(&page),
                    )
                }
                Fault::Oversized => {
                    let mut noise = tern_delta::synthetic::Rng::new(minute);
                    let mut big = page.clone();
                    big.extend((0..20_000).map(|_| noise.next_u64() as u8));
                    (dcz::encode(base, &big, 3).expect("encodes"), true, ReprDigest::of(&big))
                }
            }
        } else {
            (page.clone(), false, ReprDigest::of(&page))
        };
        let mut response = Response::new(tern_http::full(body));
        let out = response.headers_mut();
        if fault == Fault::WrongCoding && named.is_some() {
            out.insert(header::CONTENT_ENCODING, "gzip".parse().expect("v"));
        }
        out.insert(header::CACHE_CONTROL, "no-cache".parse().expect("v"));
        out.insert(header::LINK, link.parse().expect("v"));
        if coded {
            out.insert(header::CONTENT_ENCODING, "dcz".parse().expect("v"));
            out.insert("unencoded-digest", digest.format().parse().expect("v"));
        } else {
            out.insert("repr-digest", digest.format().parse().expect("v"));
        }
        response
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deltas_and_bases_never_give_a_wrong_page() {
    let template: String = (0..300).map(|n| format!("<p>line {n} of the template</p>\n")).collect();
    let fake = Arc::new(FakeDelta {
        fault: Mutex::new(Fault::None),
        news: Base::new("news", template.clone().into_bytes(), 1 << 20).expect("base"),
        big: Base::new("big", template.repeat(10).into_bytes(), 1 << 20).expect("base"),
        pages: AtomicU64::new(0),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let fake_addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        Arc::new(FakeHandler(fake.clone())),
        ServerLimits::default(),
        stop.clone(),
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edge.toml");
    // Deltas over 4 KB and bases over 64 KB are refused.
    std::fs::write(&config, "[edge.delta]\nmax_delta = 4096\nmax_base = 65536\n").expect("config");
    let (edge_addr, edge_admin) = (free_addr(), free_addr());
    let _edge = spawn(
        &[
            "edge",
            "--config",
            config.to_str().expect("utf-8"),
            "--listen",
            &edge_addr.to_string(),
            "--admin",
            &edge_admin.to_string(),
            "--origin",
            &format!("http://{fake_addr}"),
            "--delta",
        ],
        edge_addr,
    );
    let get = |path: &'static str, minute: u64| async move {
        let minute_text = minute.to_string();
        send(
            &client(),
            "GET",
            &format!("http://{edge_addr}{path}"),
            &[("x-minute", minute_text.as_str())],
        )
        .await
    };
    let metrics = || async move {
        let got = send(&client(), "GET", &format!("http://{edge_admin}/metrics"), &[]).await;
        String::from_utf8_lossy(&got.body).to_string()
    };
    // First page whole (the base is learned meanwhile), then deltas.
    for minute in 0..3 {
        let got = get("/news/a", minute).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(&got.body[..], &fake.page(minute)[..]);
    }
    assert_eq!(
        metric(&metrics().await, "tern_edge_delta_pages_total{from=\"delta\"}"),
        2.0
    );
    let cases = [
        (Fault::DigestMismatch, "digest_mismatch"),
        (Fault::Truncated, "malformed"),
        (Fault::UnknownBase, "missing_base"),
        (Fault::Oversized, "too_large"),
    ];
    for (n, (fault, reason)) in cases.into_iter().enumerate() {
        *fake.fault.lock().expect("lock") = fault;
        let minute = 10 + n as u64;
        let before = fake.pages.load(Ordering::SeqCst);
        let got = get("/news/a", minute).await;
        assert_eq!(got.status, StatusCode::OK, "{fault:?}");
        assert_eq!(
            &got.body[..],
            &fake.page(minute)[..],
            "{fault:?}: the right page, fetched whole"
        );
        assert_eq!(
            fake.pages.load(Ordering::SeqCst),
            before + 2,
            "{fault:?}: one delta, one whole page"
        );
        let text = metrics().await;
        assert_eq!(
            metric(
                &text,
                &format!("tern_edge_delta_full_pages_total{{reason=\"{reason}\"}}")
            ),
            1.0,
            "{fault:?}: {text}"
        );
        assert_eq!(
            metric(
                &text,
                &format!("tern_edge_delta_decode_failures_total{{reason=\"{reason}\"}}")
            ),
            1.0,
            "{fault:?}"
        );
    }
    // A whole page that does not match its digest: a clear error, not the page.
    *fake.fault.lock().expect("lock") = Fault::WrongWholePage;
    let refused = get("/news/b", 20).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8_lossy(&refused.body).contains("Repr-Digest"));
    *fake.fault.lock().expect("lock") = Fault::None;
    // A base over the edge's bound: refused; its class keeps getting whole pages, correct ones.
    for minute in 0..3 {
        let got = get("/big/x", minute).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(&got.body[..], &fake.page(minute)[..]);
    }
    let text = metrics().await;
    assert!(
        metric(&text, "tern_edge_delta_base_fetch_failures_total") >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "tern_edge_delta_full_pages_total{reason=\"no_base\"}") >= 3.0,
        "{text}"
    );
    assert_eq!(metric(&text, "tern_edge_delta_pages_refused_total"), 1.0);
    // A delta request answered in another coding: the page is fetched without one, and no client gets
    // bytes in a coding it did not ask for.
    *fake.fault.lock().expect("lock") = Fault::WrongCoding;
    let before = fake.pages.load(Ordering::SeqCst);
    let got = get("/news/a", 30).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], &fake.page(30)[..]);
    assert!(got.headers.get(header::CONTENT_ENCODING).is_none(), "{:?}", got.headers);
    assert_eq!(fake.pages.load(Ordering::SeqCst), before + 2);
    // A base whose bytes do not hash to its name is not served under it (to a browser following the Link).
    *fake.fault.lock().expect("lock") = Fault::TamperedBase;
    let tampered = send(
        &client(),
        "GET",
        &format!("http://{edge_addr}{}", fake.big.id().well_known_path()),
        &[],
    )
    .await;
    assert_eq!(tampered.status, StatusCode::BAD_GATEWAY);
    assert!(!String::from_utf8_lossy(&tampered.body).contains("not the base"));
    // Nor do its fields vouch for it to a HEAD.
    let tampered_head = send(
        &client(),
        "HEAD",
        &format!("http://{edge_addr}{}", fake.big.id().well_known_path()),
        &[],
    )
    .await;
    assert_eq!(tampered_head.status, StatusCode::BAD_GATEWAY);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_host_names_cost_no_base_and_no_whole_page() {
    let stack = Stack::start(News::new(11), &[]).await;
    for minute in 0..3 {
        stack.page("/news/home", minute, &[]).await;
    }
    let sent = metric(&stack.delta_metrics().await, "tern_delta_base_bytes_sent_total");
    let deltas = metric(
        &stack.edge_metrics().await,
        "tern_edge_delta_pages_total{from=\"delta\"}",
    );
    // A client (or an attacker) naming other hosts for the same pages: the base is the edge's, not a host's.
    for n in 0..10u64 {
        let host = format!("h{n}.attacker.example");
        stack.page("/news/home", 3 + n, &[("host", host.as_str())]).await;
    }
    let metrics = stack.edge_metrics().await;
    assert_eq!(
        metric(&metrics, "tern_edge_delta_bases_evicted_total"),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "tern_edge_delta_pages_total{from=\"delta\"}"),
        deltas + 10.0,
        "every page a delta: {metrics}"
    );
    // A base change of the news of those minutes goes as a delta of about a kilobyte; a whole base per
    // host (what a base kept under the request's host cost) would be 10 times the first one.
    let again = metric(&stack.delta_metrics().await, "tern_delta_base_bytes_sent_total") - sent;
    assert!(again < 10_000.0, "{again} bytes of bases after the first {sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_in_a_query_or_an_api_key_never_reach_a_base() {
    let stack = Stack::start(News::new(12), &[]).await;
    // The first responses tern delta sees carry a reset token in the query and an API key's owner.
    stack.page("/news/search?reset_token=VICTIM-RESET-TOKEN", 0, &[]).await;
    stack
        .page("/news/home", 1, &[("x-api-key", "alice-live-key-123")])
        .await;
    for minute in 2..5 {
        stack.page("/news/home", minute, &[]).await;
    }
    let base = stack.delta_base("news").await.expect("a base from a clean page");
    let got = send(
        &client(),
        "GET",
        &format!("http://{}{}", stack.delta_addr, base.well_known_path()),
        &[],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&got.body);
    assert!(
        !text.contains("VICTIM-RESET-TOKEN"),
        "a query's capability is in the base"
    );
    assert!(
        !text.contains("alice-live-key-123"),
        "an API key's owner is in the base"
    );
    let metrics = stack.delta_metrics().await;
    for reason in ["query", "credential_field"] {
        assert!(
            metric(
                &metrics,
                &format!("tern_delta_base_refusals_total{{class=\"news\",reason=\"{reason}\"}}")
            ) >= 1.0,
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_tern_delta_no_longer_has_is_withdrawn_at_the_edge() {
    let with_home = format!(
        "{}\n[[delta.classes]]\nname = \"home\"\npattern = \"/news/h*\"\n",
        delta_config(0.02)
    );
    let mut stack = Stack::with_config(News::new(13), &with_home, &[]).await;
    for minute in 0..3 {
        stack.page("/news/home", minute, &[]).await;
    }
    assert!(
        stack.edge_base("home").await.is_some(),
        "the edge learned the class home"
    );
    // tern delta restarted without the class (and without its bases).
    stack.restart_delta(&delta_config(0.02));
    let deltas = |metrics: &str| metric(metrics, "tern_edge_delta_pages_total{from=\"delta\"}");
    let before = deltas(&stack.edge_metrics().await);
    for minute in 3..9 {
        stack.page("/news/home", minute, &[]).await;
    }
    let metrics = stack.edge_metrics().await;
    assert!(
        deltas(&metrics) >= before + 3.0,
        "pages are deltas again within a few pages: {metrics}"
    );
    let status = stack.edge_status().await;
    assert_eq!(
        class_field(&status, "home", "name"),
        serde_json::Value::Null,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_the_edge_refuses_crosses_the_link_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edge.toml");
    // News pages are over 100 KB: their base is over this edge's bound.
    std::fs::write(&config, "[edge.delta]\nmax_base = 16384\n").expect("config");
    let stack = Stack::start(News::new(14), &["--config", config.to_str().expect("utf-8")]).await;
    for minute in 0..6 {
        stack.page("/news/home", minute, &[]).await;
    }
    let page = stack.page("/news/home", 6, &[]).await.body.len() as f64;
    let sent = metric(&stack.delta_metrics().await, "tern_delta_base_bytes_sent_total");
    assert!(sent < 2.0 * page, "the base went {sent} bytes for pages of {page}");
    let metrics = stack.edge_metrics().await;
    assert_eq!(
        metric(&metrics, "tern_edge_delta_base_fetch_failures_total"),
        1.0,
        "{metrics}"
    );
    // A page outside every class is no full-page fallback.
    let no_base = metric(&metrics, "tern_edge_delta_full_pages_total{reason=\"no_base\"}");
    for minute in 0..3 {
        stack.page("/static/site.css", minute, &[]).await;
    }
    let metrics = stack.edge_metrics().await;
    assert_eq!(
        metric(&metrics, "tern_edge_delta_full_pages_total{reason=\"no_base\"}"),
        no_base,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_page_that_comes_whole_for_its_own_reasons_keeps_the_base() {
    let stack = Stack::start(News::new(15), &[]).await;
    for minute in 0..3 {
        stack.page("/news/home", minute, &[]).await;
    }
    let metrics = stack.edge_metrics().await;
    let deltas = metric(&metrics, "tern_edge_delta_pages_total{from=\"delta\"}");
    let no_base = metric(&metrics, "tern_edge_delta_full_pages_total{reason=\"no_base\"}");
    // A scanner's 404s inside the class: tern delta answers them whole, and the class keeps its base.
    for _ in 0..5 {
        let missing = stack.fetch("/news/missing", 3, &[]).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
    }
    for minute in 3..6 {
        stack.page("/news/home", minute, &[]).await;
    }
    let metrics = stack.edge_metrics().await;
    assert_eq!(
        metric(&metrics, "tern_edge_delta_pages_total{from=\"delta\"}"),
        deltas + 3.0,
        "every page after the 404s a delta: {metrics}"
    );
    assert_eq!(
        metric(&metrics, "tern_edge_delta_full_pages_total{reason=\"no_base\"}"),
        no_base,
        "{metrics}"
    );
    assert!(stack.edge_base("news").await.is_some(), "the class is still here");
}
