//! The demo's differential caching (seed 000, `docs/delta.md`): a small dynamic origin — a ~110 KB news
//! home page that changes every two seconds and personalised account pages — behind `tern delta`, with an
//! edge (`--delta`) in front. Self-contained: [`start`] it, [`DeltaDemo::print_guide`] or
//! [`DeltaDemo::smoke`], then [`DeltaDemo::shutdown`].
//!
//! The pages come from `tern_delta::synthetic` (one demo "minute" is two seconds of wall time; a new story
//! every three of them, comment counts and a ticker every one). A request may name its minute with
//! `x-demo-minute`, which the smoke check uses to compare each page with the one the origin made.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tern_delta::fields;
use tern_delta::role::{ClassConfig, DeltaConfig, RunningDelta};
use tern_delta::synthetic::{Accounts, News};
use tern_edge::{EdgeConfig, RunningEdge};
use tern_http::Body;
use tern_http::server::{Handler, Running, ServerLimits};
use tokio_util::sync::CancellationToken;

/// Fixed ports (any free port when taken, or when checking): the dynamic origin, `tern delta` and its
/// admin listener, the delta edge and its admin listener (beside `tern delta`'s: 8080 to 8082 are the
/// static site's edges).
const ORIGIN_PORT: u16 = 9002;
const DELTA_PORT: u16 = 8090;
const DELTA_ADMIN_PORT: u16 = 9090;
const EDGE_PORT: u16 = 8092;
const EDGE_ADMIN_PORT: u16 = 9092;
/// Wall-clock seconds per demo minute.
const SECONDS_PER_MINUTE: u64 = 2;
/// The demo minute at start-up (so the news page has a full day of stories).
const FIRST_MINUTE: u64 = 24 * 60;

/// The dynamic origin's pages.
struct DynamicOrigin {
    news: News,
    accounts: Accounts,
    started: Instant,
}

impl DynamicOrigin {
    fn minute(&self, request: &Request<Incoming>) -> u64 {
        request
            .headers()
            .get("x-demo-minute")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| FIRST_MINUTE + self.started.elapsed().as_secs() / SECONDS_PER_MINUTE)
    }

    /// The user a `Cookie: user=N` names.
    fn user(request: &Request<Incoming>) -> Option<u64> {
        request
            .headers()
            .get(header::COOKIE)
            .and_then(|value| value.to_str().ok())?
            .split(';')
            .find_map(|pair| pair.trim().strip_prefix("user="))
            .and_then(|n| n.parse().ok())
    }

    /// The page at `path` for `user` at `minute`, with its `Cache-Control`.
    fn page(&self, path: &str, user: Option<u64>, minute: u64) -> Option<(Vec<u8>, &'static str)> {
        if path == "/news/" {
            return Some((self.news.page(minute), "max-age=0"));
        }
        if path == "/account/" {
            return Some(match user {
                Some(n) => (self.accounts.page(Some(&self.accounts.user(n)), minute), "private"),
                // The signed-out page: the only responses of the class that may become its base.
                None => (self.accounts.page(None, minute), "max-age=0"),
            });
        }
        None
    }
}

impl Handler for DynamicOrigin {
    async fn call(&self, request: Request<Incoming>, _client: SocketAddr) -> Response<Body> {
        let minute = self.minute(&request);
        let Some((body, cache_control)) = self.page(request.uri().path(), Self::user(&request), minute) else {
            let mut response = Response::new(tern_http::full("the demo's dynamic pages are /news/ and /account/\n"));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        };
        Response::builder()
            .header(header::CACHE_CONTROL, cache_control)
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(tern_http::full(body))
            .unwrap_or_else(|_| Response::new(tern_http::empty()))
    }
}

/// The running differential-caching part of the demo.
pub struct DeltaDemo {
    origin: Running<Arc<DynamicOrigin>>,
    delta: RunningDelta,
    edge: RunningEdge,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Binds `port` on loopback, or any free port when it is taken (or when `fixed` is false).
async fn bind(port: u16, fixed: bool) -> Result<tokio::net::TcpListener> {
    if fixed {
        match tokio::net::TcpListener::bind(loopback(port)).await {
            Ok(listener) => return Ok(listener),
            Err(error) => {
                tracing::info!(port, %error, "a memorable port is taken: a free one is used (the guide shows it)")
            }
        }
    }
    Ok(tokio::net::TcpListener::bind(loopback(0)).await?)
}

/// Starts the dynamic origin, `tern delta` in front of it and an edge in front of that, on fixed ports
/// when `fixed` and they are free.
pub async fn start(fixed: bool) -> Result<DeltaDemo> {
    let listener = bind(ORIGIN_PORT, fixed)
        .await
        .context("the dynamic origin did not start")?;
    let origin_addr = listener.local_addr()?;
    let role = Arc::new(DynamicOrigin {
        news: News::new(1),
        accounts: Accounts::new(2),
        started: Instant::now(),
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(tern_http::server::serve(
        listener,
        role.clone(),
        ServerLimits::default(),
        stop.clone(),
    ));
    let origin = Running::new(origin_addr, None, role, stop, vec![task]);
    let classes = ["news=/news/*", "account=/account/*"]
        .into_iter()
        .map(ClassConfig::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let delta_config = |listen: u16, admin: u16| DeltaConfig {
        listen: loopback(listen),
        admin: Some(loopback(admin)),
        origin: format!("http://{origin_addr}"),
        classes: classes.clone(),
        ..DeltaConfig::default()
    };
    let delta = match tern_delta::role::start(delta_config(
        if fixed { DELTA_PORT } else { 0 },
        if fixed { DELTA_ADMIN_PORT } else { 0 },
    ))
    .await
    {
        Ok(delta) => delta,
        Err(tern_delta::role::StartError::Bind(_)) if fixed => tern_delta::role::start(delta_config(0, 0))
            .await
            .context("tern delta did not start")?,
        Err(error) => return Err(error).context("tern delta did not start"),
    };
    let edge_config = |listen: u16, admin: u16| {
        let mut config = EdgeConfig {
            listen: loopback(listen),
            admin: Some(loopback(admin)),
            origin: format!("http://{}", delta.listen),
            memory_size: 64 << 20,
            cache_size: 64 << 20,
            name: "tern-edge-delta".into(),
            ..EdgeConfig::default()
        };
        config.delta.mode = tern_edge::delta::DeltaMode::On;
        config
    };
    let edge = match tern_edge::start(edge_config(
        if fixed { EDGE_PORT } else { 0 },
        if fixed { EDGE_ADMIN_PORT } else { 0 },
    ))
    .await
    {
        Ok(edge) => edge,
        Err(tern_edge::StartError::Bind(_)) if fixed => tern_edge::start(edge_config(0, 0))
            .await
            .context("the delta edge did not start")?,
        Err(error) => return Err(error).context("the delta edge did not start"),
    };
    Ok(DeltaDemo { origin, delta, edge })
}

type DemoClient = Client<HttpConnector, Full<Bytes>>;

/// A response read whole.
struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn get(client: &DemoClient, url: String, fields: &[(&str, String)]) -> Result<Got> {
    let mut request = Request::get(&url);
    for (name, value) in fields {
        request = request.header(*name, value);
    }
    let response = client
        .request(request.body(Full::new(Bytes::new()))?)
        .await
        .with_context(|| format!("GET {url}"))?;
    let (parts, body) = response.into_parts();
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// A counter of the edge's `/metrics`, summed over its labels (`filter`: only samples whose labels hold it).
async fn metric(client: &DemoClient, admin: SocketAddr, name: &str, filter: &str) -> Result<f64> {
    let text = get(client, format!("http://{admin}/metrics"), &[]).await?.body;
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| line.contains(filter))
        .filter_map(|line| line.rsplit_once(' ').and_then(|(_, value)| value.parse::<f64>().ok()))
        .sum())
}

impl DeltaDemo {
    fn edge_admin(&self) -> Result<SocketAddr> {
        self.edge.admin.context("the delta edge has no admin listener")
    }

    /// Prints what to try, with the news class's current base (fetched through the edge) in the curl
    /// lines that show a delta's size.
    pub async fn print_guide(&self) {
        let client: DemoClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let edge = self.edge.listen;
        let edge_admin = self.edge.admin.map(|a| a.to_string()).unwrap_or_default();
        let delta_admin = self.delta.admin.map(|a| a.to_string()).unwrap_or_default();
        // First contact makes the edge take the news base; from the next page on, `Link` names it.
        let mut base = None;
        for _ in 0..2 {
            if let Ok(got) = get(&client, format!("http://{edge}/news/"), &[]).await {
                base = fields::announced_bases(&got.headers).first().copied();
            }
        }
        let named = base
            .map(|id| fields::format_available_dictionary(&id))
            .unwrap_or_default();
        println!("\nDifferential caching: dynamic pages from the edge as a base plus a delta (docs/delta.md).");
        println!(
            "  dynamic origin http://{}/news/ (changes every {SECONDS_PER_MINUTE} s) and /account/ (Cookie: user=N)",
            self.origin.listen
        );
        println!(
            "  tern delta     http://{}/   admin http://{delta_admin}/status",
            self.delta.listen
        );
        println!("  delta edge     http://{edge}/   admin http://{edge_admin}/status");
        println!("Try:");
        println!(
            "  curl -s -o /dev/null -w '%{{size_download}} bytes whole\\n' http://{edge}/news/   # rebuilt at the edge from base + delta"
        );
        println!(
            "  curl -s -o /dev/null -w '%{{size_download}} bytes as a delta\\n' -H 'Tern-Delta-Edge: ?1' -H 'Accept-Encoding: dcz' \\\n      -H 'Available-Dictionary: {named}' http://{}/news/   # what crosses the long link",
            self.delta.listen
        );
        println!(
            "  curl -s -o /dev/null -w '%{{size_download}} bytes as dcz\\n' -H 'Accept-Encoding: dcz' \\\n      -H 'Available-Dictionary: {named}' http://{edge}/news/   # a browser holding the base (RFC 9842)"
        );
        println!(
            "  curl -s -H 'Cookie: user=7' http://{edge}/account/ | grep -o 'Welcome back, [A-Za-z ]*'   # personalised, a delta too"
        );
        println!("  curl -s http://{edge_admin}/metrics | grep -E '^tern_edge_delta_(pages|page_bytes|wire_bytes)'");
    }

    /// Checks the delta path: pages through the edge are byte-identical to the origin's, they come as
    /// small deltas, and one user's page never reaches another.
    pub async fn smoke(&self) -> Result<()> {
        let client: DemoClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let admin = self.edge_admin()?;
        let url = |path: &str| format!("http://{}{path}", self.edge.listen);
        let origin = &self.origin.role;
        // First contact: the page comes whole and the edge takes the class's base before answering.
        let minute = FIRST_MINUTE + 100;
        let first = get(&client, url("/news/"), &[("x-demo-minute", minute.to_string())]).await?;
        if first.status != StatusCode::OK || first.body != origin.news.page(minute) {
            bail!("delta edge: the first news page is not the origin's ({})", first.status);
        }
        let page_before = metric(&client, admin, "tern_edge_delta_page_bytes_total", "").await?;
        let wire_before = metric(&client, admin, "tern_edge_delta_wire_bytes_total", "").await?;
        let deltas_before = metric(&client, admin, "tern_edge_delta_pages_total", "from=\"delta\"").await?;
        // Later pages (a story and some counters further on) come as deltas and are rebuilt exactly.
        for later in [minute + 1, minute + 3] {
            let got = get(&client, url("/news/"), &[("x-demo-minute", later.to_string())]).await?;
            if got.status != StatusCode::OK || got.body != origin.news.page(later) {
                bail!("delta edge: the news page of minute {later} is not the origin's");
            }
            if !got.headers.contains_key(header::LINK) {
                bail!("delta edge: a news page does not name its base to browsers (Link)");
            }
        }
        let deltas = metric(&client, admin, "tern_edge_delta_pages_total", "from=\"delta\"").await? - deltas_before;
        let pages = metric(&client, admin, "tern_edge_delta_page_bytes_total", "").await? - page_before;
        let wire = metric(&client, admin, "tern_edge_delta_wire_bytes_total", "").await? - wire_before;
        if deltas < 2.0 || pages <= 0.0 || wire / pages > 0.05 {
            bail!(
                "delta edge: expected the two later news pages as small deltas, got {deltas} deltas, {wire} bytes for {pages}"
            );
        }
        println!(
            "delta edge: news pages byte-identical to the origin's; {:.0} bytes from tern delta for {:.0} bytes of pages ({:.2}%)",
            wire,
            pages,
            wire / pages * 100.0
        );
        // Personalised pages: the signed-out page feeds the base; each user gets exactly their own page.
        let signed_out = get(&client, url("/account/"), &[("x-demo-minute", minute.to_string())]).await?;
        if signed_out.body != origin.accounts.page(None, minute) {
            bail!("delta edge: the signed-out account page is not the origin's");
        }
        for user in [1u64, 2, 1] {
            let expected = origin.accounts.page(Some(&origin.accounts.user(user)), minute);
            let got = get(
                &client,
                url("/account/"),
                &[
                    ("x-demo-minute", minute.to_string()),
                    ("cookie", format!("user={user}")),
                ],
            )
            .await?;
            if got.status != StatusCode::OK || got.body != expected {
                bail!("delta edge: user {user}'s account page is not the origin's page for that user");
            }
        }
        let account_deltas =
            metric(&client, admin, "tern_edge_delta_pages_total", "from=\"delta\"").await? - deltas_before - deltas;
        if account_deltas < 1.0 {
            bail!("delta edge: no personalised page came as a delta");
        }
        println!("delta edge: personalised pages byte-identical, {account_deltas:.0} of 3 as deltas");
        println!("differential caching smoke check passed");
        Ok(())
    }

    /// Stops the edge, `tern delta` and the origin.
    pub async fn shutdown(self) {
        self.edge.shutdown().await;
        self.delta.shutdown().await;
        self.origin.shutdown().await;
    }
}
