//! `tern-lab bench delta`: differential caching (seed 000, issue 12) over a rate-limited long link.
//!
//! Two lab segments joined by the lab's router: the origin side (`o`: a dynamic origin serving evolving
//! pages, and `tern delta` next to it) and the edge side (`e`: `tern edge --delta`, and a second edge with
//! `--delta off` that proxies straight to the origin). The router's two interfaces are limited with `tc
//! tbf` (10 Mbit/s by default), so that everything between the segments crosses one long link, and the
//! router's interface counters give the bytes that crossed it. The benchmark's client (this process, in
//! the root namespace) reaches the edges and the admin listeners directly over the segments' bridges, never
//! over the long link.
//!
//! Workload (`tern_delta::synthetic`, deterministic): a ~113 KB news home page (a story every 3 minutes,
//! comment counts and a ticker every minute), a calmer news page (a story every 30 minutes, the same
//! counters), personalised account pages of 1,000 users (a `Cookie`, `private`; anonymous visitors get
//! the sign-in page, the only responses that may feed the base), and product pages of 400 items of one
//! template. Simulated time is carried by an `x-minute` request field; for each class and change interval
//! (5 minutes, 1 hour) the benchmark walks a number of steps of that interval, with requests of several
//! users at each step, and checks every page's bytes against the generator.
//!
//! Printed per class and interval: bytes per page against raw, gzip and brotli; the `dcz` delta the encoder
//! makes against the class's base of one interval earlier (what Railgun's figures measure); the bytes that
//! crossed the long link per page, headers and base updates included; page latency p50/p99 with delta and
//! with plain proxying; encode and decode time per page; CPU of `tern delta` and of the edges per page;
//! full-page fallbacks; browser `dcz` responses on repeat visits against gzip; wrong pages.
//!
//! `--auto-cost` measures something else: the edge's CPU per request on ordinary traffic (1 KB hits,
//! CPU-bound misses) with `--delta auto` against `--delta off`, alternating over rounds.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tern_delta::fields;
use tern_delta::synthetic::{Accounts, News, Products, Rng};
use tern_delta::{Base, BaseId, DczDecoder, DczEncoder, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::topology::{HostProcess, Lab, LabSpec, Mode};

/// Options of `tern-lab bench delta`.
#[derive(clap::Args, Debug, Clone)]
pub struct DeltaBench {
    /// Measured steps of simulated time per class and interval (after one warm-up step).
    #[arg(long, default_value_t = 30)]
    pub steps: u64,
    /// Page requests per step, each from another user.
    #[arg(long, default_value_t = 8)]
    pub users: u64,
    /// Change intervals, simulated minutes.
    #[arg(long, value_delimiter = ',', default_value = "5,60")]
    pub intervals: Vec<u64>,
    /// Page classes to run (news, calm, account, product).
    #[arg(long, value_delimiter = ',', default_value = "news,calm,account,product")]
    pub classes: Vec<String>,
    /// Rate of the long link, Mbit/s.
    #[arg(long, default_value_t = 10)]
    pub mbit: u32,
    /// Pages sent through the plain edge per class and interval (each crosses the link whole).
    #[arg(long, default_value_t = 40)]
    pub plain_pages: usize,
    /// `tern delta`'s re-derivation ratio for every class (its default is 0.02).
    #[arg(long, default_value_t = 0.02)]
    pub ratio: f64,
    /// `tern delta`'s re-derivation window for every class (its default is 16).
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Only the encoder's figures, in this process (no lab, no tern processes).
    #[arg(long)]
    pub encoder_only: bool,
    /// Instead: the edge's CPU per request on ordinary traffic, `--delta auto` against `--delta off`.
    #[arg(long)]
    pub auto_cost: bool,
    /// Rounds of the `--auto-cost` measurement (auto and off alternate).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds per `--auto-cost` measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The tern binary (default: the release build next to this program).
    #[arg(long)]
    pub tern: Option<PathBuf>,
    /// Results directory.
    #[arg(long, default_value = "results/delta")]
    pub out: PathBuf,
    /// Serve the benchmark's dynamic origin on this address and nothing else (started inside the
    /// origin host by the benchmark itself).
    #[arg(long, hide = true)]
    pub serve_origin: Option<SocketAddr>,
}

/// Runs what `options` ask for and prints its figures.
pub fn run(options: &DeltaBench) -> Result<()> {
    if let Some(addr) = options.serve_origin {
        return serve_origin(addr);
    }
    if options.auto_cost {
        return auto_cost(options);
    }
    let kinds = options
        .classes
        .iter()
        .map(|name| Kind::from_name(name))
        .collect::<Result<Vec<_>>>()?;
    if options.encoder_only {
        let site = Site::new();
        let mut report = String::new();
        for &kind in &kinds {
            for &interval in &options.intervals {
                let schedule = schedule(kind, interval, options.steps, options.users);
                let figures = encoder_figures(&site, kind, interval, &schedule);
                let _ = writeln!(
                    report,
                    "{:8} {:>4} min: page {:>7} B, gzip {:>6.2}%, brotli {:>6.2}%, delta {:>6.3}% ({:.0} B), floor {:>6.3}%, encode p50/p99 {} / {}, decode p50/p99 {} / {}",
                    kind.name(),
                    interval,
                    figures.page_bytes(),
                    figures.gzip_share() * 100.0,
                    figures.brotli_share() * 100.0,
                    figures.delta_share() * 100.0,
                    figures.delta_bytes(),
                    figures.floor_share() * 100.0,
                    micros(percentile(&figures.encode, 0.5)),
                    micros(percentile(&figures.encode, 0.99)),
                    micros(percentile(&figures.decode, 0.5)),
                    micros(percentile(&figures.decode, 0.99)),
                );
            }
        }
        print!("{report}");
        return Ok(());
    }
    let tern = crate::bench::tern_binary(options.tern.as_deref())?;
    let tern = tern.to_str().context("tern path is not UTF-8")?.to_string();
    let work = std::env::temp_dir().join(format!("tern-delta-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run_lab(options, &kinds, &tern, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

// ---------------------------------------------------------------------------------------------------------
// The workload.

/// A story every this many minutes on the calm news page.
const CALM_STORY_EVERY: u64 = 30;
/// Users with accounts.
const USERS: u64 = 1000;
/// Products in the shop.
const PRODUCTS: u64 = 400;
/// Simulated minute of the first step.
const START_MINUTE: u64 = 24 * 60;
/// The product the benchmark's browser keeps coming back to.
const BROWSER_PRODUCT: u64 = 17;
/// The site's host name.
const HOST: &str = "www.bench";
/// Largest base or page the benchmark takes.
const MAX_PAGE: usize = 8 << 20;

/// A page class of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    News,
    Calm,
    Account,
    Product,
}

impl Kind {
    fn from_name(name: &str) -> Result<Kind> {
        Ok(match name.trim() {
            "news" => Kind::News,
            "calm" => Kind::Calm,
            "account" => Kind::Account,
            "product" => Kind::Product,
            other => bail!("unknown class `{other}` (news, calm, account, product)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::News => "news",
            Kind::Calm => "calm",
            Kind::Account => "account",
            Kind::Product => "product",
        }
    }

    fn pattern(self) -> &'static str {
        match self {
            Kind::News => "/news/*",
            Kind::Calm => "/calm/*",
            Kind::Account => "/account/*",
            Kind::Product => "/product/*",
        }
    }

    /// Minutes between two new stories, for the news pages.
    fn story_every(self) -> Option<u64> {
        match self {
            Kind::News => Some(3),
            Kind::Calm => Some(CALM_STORY_EVERY),
            Kind::Account | Kind::Product => None,
        }
    }

    /// Whether its pages go to browsers as `dcz` deltas (credential-free, shareable).
    fn public(self) -> bool {
        self != Kind::Account
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::News => {
                "news home page: a new story every 3 min (60 on the page), comment counts and ticker every minute, most-read box every 10 min"
            }
            Kind::Calm => "calm news page: the same, with a new story every 30 min",
            Kind::Account => {
                "account pages: 1,000 users (Cookie, private), name, account number, balance, 20 transactions; anonymous visitors get the sign-in page"
            }
            Kind::Product => {
                "product pages: 400 items of one template (own name, description, specs, reviews); price and stock change hourly"
            }
        }
    }
}

/// Who a page is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    /// Anyone (no credentials).
    Anyone,
    /// A signed-in user.
    User(u64),
    /// A product.
    Item(u64),
}

/// One page request of the workload: the page is a function of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Page {
    kind: Kind,
    minute: u64,
    who: Who,
}

impl Page {
    fn path(&self) -> String {
        match (self.kind, self.who) {
            (Kind::Product, Who::Item(item)) => format!("/product/{item}"),
            (Kind::Product, _) => "/product/0".into(),
            (kind, _) => format!("/{}/", kind.name()),
        }
    }

    fn cookie(&self) -> Option<String> {
        match self.who {
            Who::User(user) => Some(format!("session=user-{user}")),
            _ => None,
        }
    }

    /// The page as `path`, `cookie` and `minute` describe it (the origin's side of [`Page::path`]).
    fn from_request(path: &str, cookie: Option<&str>, minute: u64) -> Option<Page> {
        let user = cookie.and_then(|text| {
            text.split(';')
                .find_map(|pair| pair.trim().strip_prefix("session=user-"))
                .and_then(|n| n.parse::<u64>().ok())
        });
        let (kind, who) = if path == "/news/" {
            (Kind::News, Who::Anyone)
        } else if path == "/calm/" {
            (Kind::Calm, Who::Anyone)
        } else if path == "/account/" {
            (Kind::Account, user.map_or(Who::Anyone, Who::User))
        } else if let Some(item) = path.strip_prefix("/product/") {
            (Kind::Product, Who::Item(item.parse::<u64>().ok()? % PRODUCTS))
        } else {
            return None;
        };
        Some(Page { kind, minute, who })
    }
}

/// The site: every page of the workload.
struct Site {
    news: News,
    calm: News,
    accounts: Accounts,
    products: Products,
}

impl Site {
    fn new() -> Self {
        Site {
            news: News::new(1),
            calm: News::new(1).with_story_every(CALM_STORY_EVERY),
            accounts: Accounts::new(2),
            products: Products::new(3),
        }
    }

    fn page(&self, page: &Page) -> Vec<u8> {
        match (page.kind, page.who) {
            (Kind::News, _) => self.news.page(page.minute),
            (Kind::Calm, _) => self.calm.page(page.minute),
            (Kind::Account, Who::User(user)) => self.accounts.page(Some(&self.accounts.user(user)), page.minute),
            (Kind::Account, _) => self.accounts.page(None, page.minute),
            (Kind::Product, Who::Item(item)) => self.products.page(item, page.minute),
            (Kind::Product, _) => self.products.page(0, page.minute),
        }
    }

    /// The page the class's base is taken from when `page` is served one `interval` after it: tern delta
    /// derives a base from the latest clean response of the class (`tern_delta::derive`), which is the
    /// page itself for a news page, the sign-in page for an account page, and another product's page for
    /// a product page.
    fn base_for(&self, page: &Page, interval: u64) -> Vec<u8> {
        let minute = page.minute.saturating_sub(interval);
        let who = match page.who {
            Who::Item(item) => Who::Item((item + 1) % PRODUCTS),
            Who::User(_) | Who::Anyone => Who::Anyone,
        };
        self.page(&Page {
            kind: page.kind,
            minute,
            who,
        })
    }
}

/// The requests of one class and interval, step by step: step 0 is the warm-up (first contact).
fn schedule(kind: Kind, interval: u64, steps: u64, users: u64) -> Vec<Vec<Page>> {
    let mut rng = Rng::from_parts(&[0xde17a, interval, kind as u64]);
    (0..=steps)
        .map(|step| {
            let minute = START_MINUTE + step * interval;
            let mut pages = Vec::new();
            if kind == Kind::Account {
                // Signed-out visitors: the responses the class's base comes from.
                pages.push(Page {
                    kind,
                    minute,
                    who: Who::Anyone,
                });
            }
            for _ in 0..users {
                let who = match kind {
                    Kind::News | Kind::Calm => Who::Anyone,
                    Kind::Account => Who::User(rng.below(USERS)),
                    Kind::Product => Who::Item(rng.below(PRODUCTS)),
                };
                pages.push(Page { kind, minute, who });
            }
            pages
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// The dynamic origin (runs in the origin host, as `tern-lab bench delta --serve-origin ADDR`).

fn serve_origin(addr: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind the origin on {addr}"))?;
        let site = Arc::new(Site::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let site = site.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let site = site.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&site, &request)) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn answer(site: &Site, request: &Request<Incoming>) -> Response<tern_http::Body> {
    let headers = request.headers();
    let minute = headers
        .get("x-minute")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(START_MINUTE);
    let cookie = headers.get(header::COOKIE).and_then(|value| value.to_str().ok());
    let Some(page) = Page::from_request(request.uri().path(), cookie, minute) else {
        let mut response = Response::new(tern_http::full("not here"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    let cache_control = if matches!(page.who, Who::User(_)) {
        "private"
    } else {
        "max-age=0"
    };
    let body = site.page(&page);
    Response::builder()
        .header(header::CACHE_CONTROL, cache_control)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(tern_http::full(body))
        .unwrap_or_else(|_| Response::new(tern_http::empty()))
}

// ---------------------------------------------------------------------------------------------------------
// The encoder's figures, in this process.

/// Sizes and times of one class and interval, measured in this process.
#[derive(Debug, Default)]
struct EncoderFigures {
    pages: u64,
    raw: u64,
    delta: u64,
    /// Pages compressed with gzip and brotli (a sample: brotli 11 takes a while).
    compressed_pages: u64,
    compressed_raw: u64,
    gzip: u64,
    brotli: u64,
    encode: Vec<Duration>,
    /// Encode times with the base prepared (as `tern delta`'s class encoder keeps it), after its first
    /// page; and of first pages, preparing the base included.
    encode_prepared: Vec<Duration>,
    encode_first: Vec<Duration>,
    decode: Vec<Duration>,
    /// News pages whose base holds the same stories (only counters, ticker and clock changed).
    quiet_pages: u64,
    quiet_raw: u64,
    quiet_delta: u64,
    /// Lower bound of the deltas (`tern_delta::floor`: the `dcz` header and the page's new text alone,
    /// zstd 19 against the base), summed over the pages.
    floor: u64,
    /// News pages: the information of the generator's random draws behind the change, bytes, summed.
    information: f64,
}

impl EncoderFigures {
    fn page_bytes(&self) -> u64 {
        self.raw / self.pages.max(1)
    }
    fn delta_bytes(&self) -> f64 {
        self.delta as f64 / self.pages.max(1) as f64
    }
    fn delta_share(&self) -> f64 {
        self.delta as f64 / self.raw.max(1) as f64
    }
    fn gzip_share(&self) -> f64 {
        self.gzip as f64 / self.compressed_raw.max(1) as f64
    }
    fn brotli_share(&self) -> f64 {
        self.brotli as f64 / self.compressed_raw.max(1) as f64
    }
    fn floor_share(&self) -> f64 {
        self.floor as f64 / self.raw.max(1) as f64
    }
}

/// CPU time of this thread so far (so that a preemption does not count as encoding time).
fn thread_cpu() -> Duration {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(time.tv_sec.max(0) as u64, time.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// Pages of a scenario compressed with gzip and brotli.
const COMPRESSED_SAMPLE: usize = 12;

fn gzip(page: &[u8]) -> usize {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    let _ = encoder.write_all(page);
    encoder.finish().map(|bytes| bytes.len()).unwrap_or(page.len())
}

fn brotli(page: &[u8]) -> usize {
    let mut writer = brotli::CompressorWriter::new(Vec::new(), 64 * 1024, 11, 22);
    let _ = writer.write_all(page);
    writer.into_inner().len()
}

/// Deltas of the measured pages of `schedule` against the class's base one `interval` earlier, with their
/// encode and decode times; gzip and brotli of a sample of them.
fn encoder_figures(site: &Site, kind: Kind, interval: u64, schedule: &[Vec<Page>]) -> EncoderFigures {
    let encoder = DczEncoder::new(tern_delta::encoder::DEFAULT_LEVEL);
    let mut decoder = DczDecoder::new(Limits::default());
    let mut figures = EncoderFigures::default();
    // The floor of a (base, page) pair, computed once: a news step's requests are all the same page.
    let mut floors: HashMap<(&str, u64, u64, Who), (u64, f64)> = HashMap::new();
    // Bases prepared as a class encoder keeps them (the two last used).
    let mut prepared: Vec<tern_delta::PreparedBase> = Vec::new();
    let measured: Vec<Page> = schedule.iter().skip(1).flatten().copied().collect();
    let every = (measured.len() / COMPRESSED_SAMPLE).max(1);
    for (index, request) in measured.iter().enumerate() {
        let page = site.page(request);
        let Ok(base) = Base::new(kind.name(), site.base_for(request, interval), MAX_PAGE) else {
            continue;
        };
        let started = thread_cpu();
        let Ok(delta) = encoder.encode(&base, &page) else {
            continue;
        };
        figures.encode.push(thread_cpu().saturating_sub(started));
        let started = thread_cpu();
        let position = prepared
            .iter()
            .position(|held: &tern_delta::PreparedBase| held.id() == base.id());
        let mut held = match position {
            Some(at) => prepared.remove(at),
            None => match encoder.prepare(&base) {
                Ok(held) => held,
                Err(_) => continue,
            },
        };
        let stream = encoder.encode_prepared(&mut held, &page);
        let took = thread_cpu().saturating_sub(started);
        if position.is_some() {
            figures.encode_prepared.push(took);
        } else {
            figures.encode_first.push(took);
        }
        if stream.map(|stream| decoder.decode(&stream, &base)).ok() != Some(Ok(page.clone())) {
            eprintln!("encoder check: the prepared base gave a wrong stream ({kind:?}, {request:?})");
        }
        prepared.push(held);
        if prepared.len() > tern_delta::encoder::PREPARED_BASES {
            prepared.remove(0);
        }
        let started = thread_cpu();
        let decoded = decoder.decode(&delta, &base);
        figures.decode.push(thread_cpu().saturating_sub(started));
        if decoded.as_deref() != Ok(page.as_slice()) {
            eprintln!("encoder check: a decoded page differs from the page ({kind:?}, {request:?})");
        }
        figures.pages += 1;
        figures.raw += page.len() as u64;
        figures.delta += delta.len() as u64;
        let from = request.minute.saturating_sub(interval);
        let (floor, information) = *floors
            .entry((kind.name(), from, request.minute, request.who))
            .or_insert_with(|| {
                let information = match kind {
                    Kind::News => site.news.new_information_bits(from, request.minute) / 8.0,
                    Kind::Calm => site.calm.new_information_bits(from, request.minute) / 8.0,
                    Kind::Account | Kind::Product => 0.0,
                };
                (tern_delta::floor::floor(&base, &page) as u64, information)
            });
        figures.floor += floor;
        figures.information += information;
        if let Some(every) = kind.story_every()
            && request.minute / every == request.minute.saturating_sub(interval) / every
        {
            figures.quiet_pages += 1;
            figures.quiet_raw += page.len() as u64;
            figures.quiet_delta += delta.len() as u64;
        }
        if index % every == 0 {
            figures.compressed_pages += 1;
            figures.compressed_raw += page.len() as u64;
            figures.gzip += gzip(&page) as u64;
            figures.brotli += brotli(&page) as u64;
        }
    }
    figures
}

// ---------------------------------------------------------------------------------------------------------
// The lab.

const ORIGIN_PORT: u16 = 9000;
const DELTA_PORT: u16 = 8090;
const DELTA_ADMIN: u16 = 8190;
const EDGE_PORT: u16 = 8080;
const EDGE_ADMIN: u16 = 8180;

/// Where the bytes that cross the long link are counted.
enum Meter {
    /// The router's interfaces (namespaces): `down` toward the edge segment, `up` toward the origin's.
    Router { namespace: String },
    /// Relays in this process (loopback mode: no router, no rate limit).
    Relays { relays: Vec<Relay> },
}

impl Meter {
    /// Bytes (toward the edges, toward the origin side) so far.
    fn read(&self) -> Result<(u64, u64)> {
        match self {
            Meter::Router { namespace } => {
                let read = |device: &str| -> Result<u64> {
                    let output = Command::new("ip")
                        .args(["netns", "exec", namespace, "cat"])
                        .arg(format!("/sys/class/net/{device}/statistics/tx_bytes"))
                        .output()?;
                    let text = String::from_utf8_lossy(&output.stdout);
                    text.trim()
                        .parse()
                        .with_context(|| format!("router counter of {device}: `{}`", text.trim()))
                };
                Ok((read("se")?, read("so")?))
            }
            Meter::Relays { relays } => Ok(relays.iter().fold((0, 0), |(down, up), relay| {
                (
                    down + relay.down.load(Ordering::Relaxed),
                    up + relay.up.load(Ordering::Relaxed),
                )
            })),
        }
    }
}

/// A TCP relay that counts the bytes each way (the long link in loopback mode).
struct Relay {
    addr: SocketAddr,
    down: Arc<AtomicU64>,
    up: Arc<AtomicU64>,
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
        count.fetch_add(read as u64, Ordering::Relaxed);
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Relay {
    async fn start(listen: SocketAddr, target: SocketAddr) -> Result<Relay> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (down, up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (count_down, count_up) = (down.clone(), up.clone());
        tokio::spawn(async move {
            loop {
                let Ok((near, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(far) = TcpStream::connect(target).await else {
                    continue;
                };
                let _ = (near.set_nodelay(true), far.set_nodelay(true));
                let (near_read, near_write) = near.into_split();
                let (far_read, far_write) = far.into_split();
                tokio::spawn(pump(near_read, far_write, count_up.clone()));
                tokio::spawn(pump(far_read, near_write, count_down.clone()));
            }
        });
        Ok(Relay { addr, down, up })
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A response, read whole.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    took: Duration,
}

async fn get(client: &HttpClient, addr: SocketAddr, path: &str, fields: &[(&str, String)]) -> Result<Got> {
    let mut request = Request::get(format!("http://{addr}{path}")).header(header::HOST, HOST);
    for (name, value) in fields {
        request = request.header(*name, value);
    }
    let request = request.body(Full::new(Bytes::new()))?;
    let started = Instant::now();
    let response = client
        .request(request)
        .await
        .with_context(|| format!("GET {path} from {addr}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Got {
        status: parts.status,
        headers: parts.headers,
        body,
        took: started.elapsed(),
    })
}

fn page_fields(page: &Page) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("x-minute", page.minute.to_string()),
        ("accept-encoding", "gzip, br".to_string()),
    ];
    if let Some(cookie) = page.cookie() {
        fields.push(("cookie", cookie));
    }
    fields
}

/// The running processes of one scenario.
struct Processes {
    delta: HostProcess,
    edge: HostProcess,
    plain: HostProcess,
}

/// Everything a scenario needs.
struct Bench<'a> {
    options: &'a DeltaBench,
    lab: Lab,
    tern: &'a str,
    work: &'a Path,
    meter: Meter,
    /// Where the delta edge sends its upstream requests (tern delta, or the relay in front of it).
    delta_upstream: SocketAddr,
    /// Where the plain edge sends its upstream requests (the origin, or the relay in front of it).
    plain_upstream: SocketAddr,
    edge: SocketAddr,
    edge_admin: SocketAddr,
    plain: SocketAddr,
    delta_admin: SocketAddr,
    client: HttpClient,
    site: Site,
}

fn run_lab(options: &DeltaBench, kinds: &[Kind], tern: &str, work: &Path) -> Result<()> {
    let lab = LabSpec::new()
        .segment("o")
        .segment("e")
        .host("origin", "o")
        .host("delta", "o")
        .host("edge", "e")
        .host("plain", "e")
        .build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let origin = SocketAddr::from((lab.host("origin").addr, ORIGIN_PORT));
    let delta = SocketAddr::from((lab.host("delta").addr, DELTA_PORT));
    let (meter, delta_upstream, plain_upstream, conditions) = match lab.mode() {
        Mode::Namespaces => {
            let namespace = lab
                .created_names()
                .into_iter()
                .find(|name| name.ends_with("-rt"))
                .context("the lab has no router")?;
            // The router's interface toward each segment is `s<segment>`: shaping both limits each
            // direction of the long link. A small bucket (16 KB) so that a page does not cross at line rate.
            let rate = format!("{}mbit", options.mbit);
            for device in ["so", "se"] {
                let status = Command::new("ip")
                    .args([
                        "netns", "exec", &namespace, "tc", "qdisc", "replace", "dev", device, "root",
                    ])
                    .args(["tbf", "rate", &rate, "burst", "16kb", "latency", "200ms"])
                    .status()?;
                if !status.success() {
                    bail!("tc tbf on the router's {device} failed");
                }
            }
            let conditions = format!(
                "lab: network namespaces; long link = the router between segment o (origin, tern delta) and segment e \
                 (edges), tc tbf {} Mbit/s each way (burst 16 KB), no added propagation delay (no netem here); \
                 bytes counted by the router's interfaces (Ethernet frames: TCP/IP and HTTP headers included)",
                options.mbit
            );
            (Meter::Router { namespace }, delta, origin, conditions)
        }
        Mode::Loopback => {
            let (delta_relay, plain_relay) = runtime.block_on(async {
                let delta_relay = Relay::start(SocketAddr::from(([127, 77, 0, 10], 0)), delta).await?;
                let plain_relay = Relay::start(SocketAddr::from(([127, 77, 0, 11], 0)), origin).await?;
                anyhow::Ok((delta_relay, plain_relay))
            })?;
            let (to_delta, to_origin) = (delta_relay.addr, plain_relay.addr);
            let conditions = "lab: LOOPBACK mode (no root or no namespaces): no rate limit, so latencies are not \
                              those of a long link; bytes counted by TCP relays in this process (payload only, \
                              HTTP headers included, no TCP/IP headers)"
                .to_string();
            (
                Meter::Relays {
                    relays: vec![delta_relay, plain_relay],
                },
                to_delta,
                to_origin,
                conditions,
            )
        }
    };
    println!("differential caching benchmark");
    println!("{conditions}");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{} steps + 1 warm-up per class and interval, {} page requests a step, requests one at a time; tern delta: \
         ratio {}, window {}, min_interval 0 s, offer_interval 0 ms (simulated time runs ~100x faster than the \
         wall clock); load average before: {}",
        options.steps,
        options.users,
        options.ratio,
        options.window,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let lab_exe = std::env::current_exe()?;
    let lab_exe = lab_exe.to_str().context("tern-lab path is not UTF-8")?.to_string();
    let _origin = lab.spawn(
        "origin",
        &lab_exe,
        &["bench", "delta", "--serve-origin", &origin.to_string()],
    )?;
    lab.wait_listening("origin", ORIGIN_PORT, Duration::from_secs(20))?;
    let bench = Bench {
        options,
        edge: SocketAddr::from((lab.host("edge").addr, EDGE_PORT)),
        edge_admin: SocketAddr::from((lab.host("edge").addr, EDGE_ADMIN)),
        plain: SocketAddr::from((lab.host("plain").addr, EDGE_PORT)),
        delta_admin: SocketAddr::from((lab.host("delta").addr, DELTA_ADMIN)),
        lab,
        tern,
        work,
        meter,
        delta_upstream,
        plain_upstream,
        client: {
            let _guard = runtime.enter();
            Client::builder(TokioExecutor::new()).build(HttpConnector::new())
        },
        site: Site::new(),
    };
    let mut results = Vec::new();
    for &kind in kinds {
        for &interval in &options.intervals {
            let result = bench.scenario(&runtime, kind, interval)?;
            println!("  {}", result.line());
            results.push(result);
        }
    }
    let report = report(options, &conditions, kinds, &results);
    println!("\n{report}");
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(options.out.join("summary.md"), &report)?;
    write_csv(&options.out.join("delta.csv"), &results)?;
    println!("results: {}", options.out.display());
    Ok(())
}

/// The figures of one class and interval.
struct Scenario {
    kind: Kind,
    interval: u64,
    pages: u64,
    raw: u64,
    down: u64,
    up: u64,
    plain_pages: u64,
    plain_down: u64,
    latency: Vec<Duration>,
    plain_latency: Vec<Duration>,
    wrong: u64,
    /// Edge: pages that came whole during the measured steps, by reason.
    full_pages: BTreeMap<String, f64>,
    /// Edge: pages that came whole during the warm-up step (first contact).
    warmup_full: f64,
    base_changes: f64,
    /// Bytes of the bodies tern delta sent for the measured pages and bases (its own count).
    bodies: f64,
    delta_cpu: f64,
    edge_cpu: f64,
    plain_cpu: f64,
    browser: Browser,
    encoder: EncoderFigures,
}

impl Scenario {
    fn link_share(&self) -> f64 {
        self.down as f64 / self.raw.max(1) as f64
    }

    fn line(&self) -> String {
        format!(
            "{} every {} min: {} pages, {:.0} B/page over the link ({:.3}% of raw), encoder delta {:.3}%, latency p50 {} vs plain {}, {} whole, {} wrong",
            self.kind.name(),
            self.interval,
            self.pages,
            self.down as f64 / self.pages.max(1) as f64,
            self.link_share() * 100.0,
            self.encoder.delta_share() * 100.0,
            millis(percentile(&self.latency, 0.5)),
            millis(percentile(&self.plain_latency, 0.5)),
            self.full_pages.values().sum::<f64>() + 0.0,
            self.wrong
        )
    }
}

/// A browser's repeat visits (RFC 9842).
#[derive(Debug, Default)]
struct Browser {
    visits: u64,
    dcz: u64,
    plain: u64,
    dcz_bytes: u64,
    gzip_bytes: u64,
    /// Lower bound of the `dcz` responses against the base the browser held (`tern_delta::floor`), summed.
    floor_bytes: u64,
    /// Bases fetched after repeat visits (a response named a base the browser did not hold), and their
    /// bytes as the edge sent them (no `Accept-Encoding` asked).
    base_fetches: u64,
    base_bytes: u64,
    wrong: u64,
    /// The base it holds: fetched from the edge after a response named it.
    held: Option<Base>,
    /// The last page a response told it to keep as a dictionary (`Use-As-Dictionary`), with its `match`.
    page: Option<(String, Base)>,
    /// `dcz` responses against that page rather than the class's base.
    against_page: u64,
}

impl Bench<'_> {
    fn start(&self, kind: Kind) -> Result<Processes> {
        let delta_addr = self.lab.host("delta").addr;
        let origin = SocketAddr::from((self.lab.host("origin").addr, ORIGIN_PORT));
        let mut config = format!(
            "[delta]\nlisten = \"{delta_addr}:{DELTA_PORT}\"\nadmin = \"{delta_addr}:{DELTA_ADMIN}\"\n\
             origin = \"http://{origin}\"\noffer_interval_ms = 0\n"
        );
        let _ = write!(
            config,
            "\n[[delta.classes]]\nname = \"{}\"\npattern = \"{}\"\nratio = {}\nwindow = {}\nmin_interval_secs = 0\n",
            kind.name(),
            kind.pattern(),
            self.options.ratio,
            self.options.window
        );
        let path = self.work.join(format!("delta-{}.toml", kind.name()));
        std::fs::write(&path, config)?;
        let path = path.to_str().context("work path is not UTF-8")?;
        let delta = self
            .lab
            .spawn("delta", self.tern, &["delta", "--config", path, "--log", "warn"])?;
        self.lab.wait_listening("delta", DELTA_PORT, Duration::from_secs(20))?;
        let edge = |host: &str, upstream: SocketAddr, mode: &str| -> Result<HostProcess> {
            let addr = self.lab.host(host).addr;
            let process = self.lab.spawn(
                host,
                self.tern,
                &[
                    "edge",
                    "--listen",
                    &format!("{addr}:{EDGE_PORT}"),
                    "--admin",
                    &format!("{addr}:{EDGE_ADMIN}"),
                    "--origin",
                    &format!("http://{upstream}"),
                    &format!("--delta={mode}"),
                    "--log",
                    "warn",
                ],
            )?;
            self.lab.wait_listening(host, EDGE_PORT, Duration::from_secs(20))?;
            Ok(process)
        };
        let edge_process = edge("edge", self.delta_upstream, "on")?;
        let plain = edge("plain", self.plain_upstream, "off")?;
        Ok(Processes {
            delta,
            edge: edge_process,
            plain,
        })
    }

    fn scenario(&self, runtime: &tokio::runtime::Runtime, kind: Kind, interval: u64) -> Result<Scenario> {
        let schedule = schedule(kind, interval, self.options.steps, self.options.users);
        let processes = self.start(kind)?;
        let mut browser = Browser::default();
        let mut wrong = 0u64;
        // Warm-up: first contact (the class has no base anywhere yet).
        let edge_before = runtime.block_on(self.metrics(self.edge_admin))?;
        runtime.block_on(async {
            for page in &schedule[0] {
                if !self.fetch_checked(self.edge, page, &mut Vec::new()).await? {
                    wrong += 1;
                }
            }
            if kind.public() {
                self.browser_visit(&mut browser, &browser_page(kind, schedule[0][0].minute), false)
                    .await?;
            }
            // Let a background base fetch finish before measuring.
            tokio::time::sleep(Duration::from_millis(300)).await;
            anyhow::Ok(())
        })?;
        let edge_warm = runtime.block_on(self.metrics(self.edge_admin))?;
        let warmup_full = sum(&edge_warm, "tern_edge_delta_full_pages_total", &[])
            - sum(&edge_before, "tern_edge_delta_full_pages_total", &[]);
        let delta_before = runtime.block_on(self.metrics(self.delta_admin))?;
        let (down_before, up_before) = self.meter.read()?;
        let cpu_before = (cpu_seconds(processes.delta.id()), cpu_seconds(processes.edge.id()));
        let mut latency = Vec::new();
        let mut pages = 0u64;
        let mut raw = 0u64;
        runtime.block_on(async {
            for step in &schedule[1..] {
                for page in step {
                    if !self.fetch_checked(self.edge, page, &mut latency).await? {
                        wrong += 1;
                    }
                    pages += 1;
                    raw += self.site.page(page).len() as u64;
                }
                if kind.public() {
                    let visit = browser_page(kind, step[0].minute);
                    pages += 1;
                    raw += self.site.page(&visit).len() as u64;
                    self.browser_visit(&mut browser, &visit, true).await?;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            anyhow::Ok(())
        })?;
        let (down_after, up_after) = self.meter.read()?;
        let cpu_after = (cpu_seconds(processes.delta.id()), cpu_seconds(processes.edge.id()));
        let edge_after = runtime.block_on(self.metrics(self.edge_admin))?;
        let delta_after = runtime.block_on(self.metrics(self.delta_admin))?;
        let full_pages = by_label(&edge_after, "tern_edge_delta_full_pages_total", "reason")
            .into_iter()
            .map(|(reason, after)| {
                let before = by_label(&edge_warm, "tern_edge_delta_full_pages_total", "reason")
                    .get(&reason)
                    .copied()
                    .unwrap_or(0.0);
                (reason, after - before)
            })
            .filter(|(_, n)| *n > 0.0)
            .collect();
        let base_changes = sum(&delta_after, "tern_delta_base_changes_total", &[])
            - sum(&delta_before, "tern_delta_base_changes_total", &[]);
        let sent = |samples: &[Sample]| {
            sum(samples, "tern_delta_sent_bytes_total", &[]) + sum(samples, "tern_delta_base_bytes_sent_total", &[])
        };
        let bodies = sent(&delta_after) - sent(&delta_before);

        // Plain proxying: the same requests through the edge that proxies straight to the origin.
        let plain_requests: Vec<Page> = schedule[1..]
            .iter()
            .flatten()
            .copied()
            .take(self.options.plain_pages)
            .collect();
        let mut plain_latency = Vec::new();
        runtime.block_on(async {
            for page in &schedule[0] {
                self.fetch_checked(self.plain, page, &mut Vec::new()).await?;
            }
            anyhow::Ok(())
        })?;
        let (plain_before, _) = self.meter.read()?;
        let plain_cpu_before = cpu_seconds(processes.plain.id());
        runtime.block_on(async {
            for page in &plain_requests {
                if !self.fetch_checked(self.plain, page, &mut plain_latency).await? {
                    wrong += 1;
                }
            }
            anyhow::Ok(())
        })?;
        let (plain_after, _) = self.meter.read()?;
        let plain_cpu = cpu_seconds(processes.plain.id()) - plain_cpu_before;
        drop(processes);
        let encoder = encoder_figures(&self.site, kind, interval, &schedule);
        Ok(Scenario {
            kind,
            interval,
            pages,
            raw,
            down: down_after - down_before,
            up: up_after - up_before,
            plain_pages: plain_requests.len() as u64,
            plain_down: plain_after - plain_before,
            latency,
            plain_latency,
            wrong: wrong + browser.wrong,
            full_pages,
            warmup_full,
            base_changes,
            bodies,
            delta_cpu: (cpu_after.0 - cpu_before.0) / pages.max(1) as f64,
            edge_cpu: (cpu_after.1 - cpu_before.1) / pages.max(1) as f64,
            plain_cpu: plain_cpu / plain_requests.len().max(1) as f64,
            browser,
            encoder,
        })
    }

    /// Fetches `page` from `edge`, records its latency, and says whether its bytes are the page's.
    async fn fetch_checked(&self, edge: SocketAddr, page: &Page, latency: &mut Vec<Duration>) -> Result<bool> {
        let got = get(&self.client, edge, &page.path(), &page_fields(page)).await?;
        latency.push(got.took);
        let expected = self.site.page(page);
        let right = got.status == StatusCode::OK && got.body.as_ref() == expected.as_slice();
        if !right {
            eprintln!(
                "WRONG PAGE from {edge}: {page:?}: status {}, {} bytes, expected {} bytes",
                got.status,
                got.body.len(),
                expected.len()
            );
        }
        Ok(right)
    }

    /// A browser's visit: with the base it holds offered (`repeat`), a `dcz` response is decoded and
    /// checked; then the base the response names is fetched from the edge when it is not the one held.
    async fn browser_visit(&self, browser: &mut Browser, page: &Page, repeat: bool) -> Result<()> {
        let mut fields = vec![
            ("x-minute", page.minute.to_string()),
            ("sec-fetch-site", "same-origin".to_string()),
            ("sec-fetch-mode", "navigate".to_string()),
        ];
        // Of the dictionaries whose `match` fits the URL, a browser offers the most specific (RFC 9842
        // section 2.2.2): the page it kept for this very URL before the class's base.
        let kept_page = browser
            .page
            .as_ref()
            .filter(|(pattern, _)| *pattern == page.path())
            .map(|(_, dictionary)| dictionary.clone());
        let against_page = kept_page.is_some();
        let offered = kept_page.or_else(|| browser.held.clone()).filter(|_| repeat);
        match &offered {
            Some(base) => {
                fields.push(("accept-encoding", "dcz, br, gzip".to_string()));
                fields.push((
                    fields::AVAILABLE_DICTIONARY,
                    fields::format_available_dictionary(&base.id()),
                ));
            }
            None => fields.push(("accept-encoding", "br, gzip".to_string())),
        }
        let got = get(&self.client, self.edge, &page.path(), &fields).await?;
        let expected = self.site.page(page);
        let coded = got
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|coding| coding.eq_ignore_ascii_case(fields::DCZ));
        let body = match (&offered, coded) {
            (Some(base), true) => {
                let decoded = DczDecoder::new(Limits::default()).decode(&got.body, base);
                browser.dcz += 1;
                if against_page {
                    browser.against_page += 1;
                }
                browser.dcz_bytes += got.body.len() as u64;
                browser.gzip_bytes += gzip(&expected) as u64;
                browser.floor_bytes += tern_delta::floor::floor(base, &expected) as u64;
                decoded.unwrap_or_default()
            }
            (_, true) => {
                bail!("the edge sent dcz to a browser that offered no base");
            }
            (_, false) => {
                if repeat {
                    browser.plain += 1;
                }
                got.body.to_vec()
            }
        };
        if repeat {
            browser.visits += 1;
        }
        if got.status != StatusCode::OK || body != expected {
            browser.wrong += 1;
            eprintln!("WRONG PAGE to the browser: {page:?}");
        } else if let Some(field) = got
            .headers
            .get(fields::USE_AS_DICTIONARY)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| tern_delta::UseAsDictionary::parse(text).ok())
            && field.match_pattern == page.path()
        {
            browser.page = Base::new(page.kind.name(), body.clone(), MAX_PAGE)
                .ok()
                .map(|dictionary| (field.match_pattern, dictionary));
        }
        let named = fields::announced_bases(&got.headers);
        if let Some(id) = named.first()
            && browser.held.as_ref().map(Base::id) != Some(*id)
        {
            let base = get(&self.client, self.edge, &id.well_known_path(), &[]).await?;
            if repeat {
                browser.base_fetches += 1;
                browser.base_bytes += base.body.len() as u64;
            }
            if base.status == StatusCode::OK && BaseId::of(&base.body) == *id {
                browser.held = Base::new(page.kind.name(), base.body, MAX_PAGE).ok();
            }
        }
        Ok(())
    }

    async fn metrics(&self, admin: SocketAddr) -> Result<Vec<Sample>> {
        let got = get(&self.client, admin, "/metrics", &[]).await?;
        Ok(parse_metrics(&String::from_utf8_lossy(&got.body)))
    }
}

/// The page the benchmark's browser visits at `minute`.
fn browser_page(kind: Kind, minute: u64) -> Page {
    let who = match kind {
        Kind::Product => Who::Item(BROWSER_PRODUCT),
        _ => Who::Anyone,
    };
    Page { kind, minute, who }
}

// ---------------------------------------------------------------------------------------------------------
// Metrics, CPU, percentiles.

/// One sample of Prometheus text: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.rsplit_once(' ') {
            Some(split) => split,
            None => continue,
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.trim_end_matches('}');
                let labels = inner
                    .split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(key, value)| (key.trim().to_string(), value.trim().trim_matches('"').to_string()))
                    .collect();
                (name.to_string(), labels)
            }
            None => (head.to_string(), Vec::new()),
        };
        samples.push(Sample { name, labels, value });
    }
    samples
}

fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            filter
                .iter()
                .all(|(key, value)| sample.labels.iter().any(|(k, v)| k == key && v == value))
        })
        .map(|sample| sample.value)
        .sum()
}

fn by_label(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut values = BTreeMap::new();
    for sample in samples.iter().filter(|sample| sample.name == name) {
        if let Some((_, value)) = sample.labels.iter().find(|(key, _)| key == label) {
            *values.entry(value.clone()).or_insert(0.0) += sample.value;
        }
    }
    values
}

/// CPU time of process `pid` so far, seconds: the sum of its threads' run time (`/proc/PID/task/*/schedstat`,
/// nanoseconds; a thread that ended before the reading is missing, and tokio keeps its blocking threads
/// for ten idle seconds).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum();
    nanos as f64 / 1e9
}

fn percentile(values: &[Duration], share: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 * share).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn micros(duration: Duration) -> String {
    format!("{:.0} us", duration.as_secs_f64() * 1e6)
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

fn share(part: f64, whole: f64) -> String {
    if whole <= 0.0 {
        return "-".into();
    }
    let percent = part / whole * 100.0;
    if percent < 1.0 {
        format!("{percent:.2}%")
    } else {
        format!("{percent:.1}%")
    }
}

// ---------------------------------------------------------------------------------------------------------
// The report.

fn report(options: &DeltaBench, conditions: &str, kinds: &[Kind], results: &[Scenario]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Differential caching benchmark\n");
    let _ = writeln!(
        out,
        "`cargo run --release -p tern-lab -- bench delta` ({} steps + 1 warm-up, {} requests a step, intervals {:?} min)\n",
        options.steps, options.users, options.intervals
    );
    let _ = writeln!(out, "- {conditions}.");
    let _ = writeln!(
        out,
        "- tern delta: every class with ratio {} and window {}, `min_interval_secs = 0`, `offer_interval_ms = 0` \
         (the simulated clock runs far ahead of the wall clock, so the wall-clock bounds would freeze the base).",
        options.ratio, options.window
    );
    for kind in kinds {
        let _ = writeln!(out, "- **{}**: {}.", kind.name(), kind.describe());
    }
    let _ = writeln!(
        out,
        "\n## Bytes per page\n\nShares of the raw page. *encoder*: the `dcz` delta (40-byte header included) \
         against the class's base one interval earlier (for news, the page one interval earlier, as Railgun measured; \
         for accounts, the sign-in page; for products, another product's page). *floor*: what that delta would \
         be if it carried only the page's new text (the tokens no run of 8 tokens of the base covers: new \
         stories, changed numbers), zstd 19 with the base as dictionary, 40-byte header included, and nothing \
         saying where each piece goes (`tern_delta::floor`): no delta against that base can be much smaller. \
         *link*: bytes that crossed the \
         long link toward the edge per page, with tern delta and the delta edge (HTTP and TCP/IP headers, base \
         updates and the browser's visits included); *bodies*: of that, the delta and base bodies tern delta \
         counted (no headers). *plain*: the same through the edge that proxies to the \
         origin (the origin does not compress; gzip and brotli show what a compressing origin would send).\n"
    );
    let _ = writeln!(
        out,
        "| class | interval | page | gzip -6 | brotli 11 | encoder delta | floor | link, tern delta | bodies | link, plain | base changes |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for result in results {
        let encoder = &result.encoder;
        let _ = writeln!(
            out,
            "| {} | {} min | {:.1} KB | {} | {} | {} ({:.0} B) | {} ({:.0} B) | {} ({:.0} B) | {} ({:.0} B) | {} | {} |",
            result.kind.name(),
            result.interval,
            result.raw as f64 / result.pages.max(1) as f64 / 1000.0,
            share(encoder.gzip as f64, encoder.compressed_raw as f64),
            share(encoder.brotli as f64, encoder.compressed_raw as f64),
            share(encoder.delta as f64, encoder.raw as f64),
            encoder.delta_bytes(),
            share(encoder.floor as f64, encoder.raw as f64),
            encoder.floor as f64 / encoder.pages.max(1) as f64,
            share(result.down as f64, result.raw as f64),
            result.down as f64 / result.pages.max(1) as f64,
            share(result.bodies, result.raw as f64),
            result.bodies / result.pages.max(1) as f64,
            share(
                result.plain_down as f64,
                result.raw as f64 / result.pages.max(1) as f64 * result.plain_pages as f64
            ),
            result.base_changes
        );
    }
    let _ = writeln!(
        out,
        "\n## Latency, CPU, fallbacks\n\nPage latency at the client (through the edge and the long link, one request \
         at a time). Encode and decode: CPU time of the `dcz` calls in this process (thread CPU clock; encode in \
         a fresh context per page, the base indexed each time, as `DczEncoder::encode` does; *prepared*: as \
         `tern delta`'s class encoder does it, the base loaded once and kept, for the pages after the first \
         against it, and for first pages, loading the base included). CPU: \
         run time of the processes' threads over the measured steps, per page (`schedstat`).\n"
    );
    let _ = writeln!(
        out,
        "| class | interval | latency, delta p50 / p99 | latency, plain p50 / p99 | encode p50 / p99 | encode, prepared: p50 / p99; first page | decode p50 / p99 | CPU/page: tern delta, delta edge, plain edge | whole pages (measured; warm-up) | wrong pages |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for result in results {
        let encoder = &result.encoder;
        let whole = if result.full_pages.is_empty() {
            "0".to_string()
        } else {
            result
                .full_pages
                .iter()
                .map(|(reason, n)| format!("{n:.0} {reason}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| {} | {} min | {} / {} | {} / {} | {} / {} | {} | {} / {} | {:.2}, {:.2}, {:.2} ms | {}; {:.0} | {} |",
            result.kind.name(),
            result.interval,
            millis(percentile(&result.latency, 0.5)),
            millis(percentile(&result.latency, 0.99)),
            millis(percentile(&result.plain_latency, 0.5)),
            millis(percentile(&result.plain_latency, 0.99)),
            micros(percentile(&encoder.encode, 0.5)),
            micros(percentile(&encoder.encode, 0.99)),
            prepared_times(encoder),
            micros(percentile(&encoder.decode, 0.5)),
            micros(percentile(&encoder.decode, 0.99)),
            result.delta_cpu * 1e3,
            result.edge_cpu * 1e3,
            result.plain_cpu * 1e3,
            whole,
            result.warmup_full,
            result.wrong
        );
    }
    let _ = writeln!(
        out,
        "\n## Browsers (RFC 9842)\n\nOne browser per class revisits a page every interval (`Accept-Encoding: dcz, \
         br, gzip`, `Available-Dictionary`), offering the most specific dictionary it holds, as RFC 9842 \
         section 2.2.2 has browsers do: the page it got last time, when that response said \
         `Use-As-Dictionary` for the page's own URL, else the class's base it last fetched from a `Link`. \
         Each `dcz` response is decoded and checked. Compared with gzip -6 of the same page. *floor*: the \
         lower bound of each `dcz` response against the dictionary the browser offered (as in the first \
         table). *bases fetched*: \
         after a response named a base the browser did not hold, the base from the edge (whole: the \
         benchmark's browser asks for no compression), not counted in the dcz figures.\n"
    );
    let _ = writeln!(
        out,
        "| class | interval | repeat visits | dcz | plain | dcz mean | floor mean | gzip mean | dcz smaller than gzip by | floor smaller than gzip by | bases fetched |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for result in results {
        let browser = &result.browser;
        if !result.kind.public() {
            let _ = writeln!(
                out,
                "| {} | {} min | - | - | - | - | - | - | never (credentials: served whole) | - | - |",
                result.kind.name(),
                result.interval
            );
            continue;
        }
        let dcz = browser.dcz_bytes as f64 / browser.dcz.max(1) as f64;
        let gzip = browser.gzip_bytes as f64 / browser.dcz.max(1) as f64;
        let floor = browser.floor_bytes as f64 / browser.dcz.max(1) as f64;
        let smaller = |bytes: f64| {
            if browser.dcz > 0 {
                format!("{:.1}%", (1.0 - bytes / gzip.max(1.0)) * 100.0)
            } else {
                "-".into()
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} min | {} | {} | {} | {:.0} B | {:.0} B | {:.0} B | {} | {} | {} ({:.0} KB) |",
            result.kind.name(),
            result.interval,
            browser.visits,
            browser.dcz,
            browser.plain,
            dcz,
            floor,
            gzip,
            smaller(dcz),
            smaller(floor),
            browser.base_fetches,
            browser.base_bytes as f64 / 1000.0
        );
    }
    let _ = writeln!(out, "\n## Targets\n");
    for result in results {
        let target = match result.interval {
            5 => Some(0.003),
            60 => Some(0.03),
            _ => None,
        };
        let Some(target) = target else { continue };
        if matches!(result.kind, Kind::Account | Kind::Product) {
            continue;
        }
        let encoder = &result.encoder;
        let _ = writeln!(
            out,
            "- {} {} min apart, target ≤ {:.1}% of raw: encoder delta {} ({}), over the link {} ({}); floor {}, \
             information of the generator's draws {} + 40 B",
            result.kind.name(),
            result.interval,
            target * 100.0,
            share(encoder.delta as f64, encoder.raw as f64),
            met(encoder.delta_share() <= target),
            share(result.down as f64, result.raw as f64),
            met(result.link_share() <= target),
            share(encoder.floor as f64, encoder.raw as f64),
            share(encoder.information, encoder.raw as f64),
        );
    }
    for result in results {
        let encoder = &result.encoder;
        if encoder.quiet_pages == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "  - churn behind the {} figure at {} min: {} of {} pages had the same stories as the page one interval \
             earlier (only comment counts, ticker, clock and most-read changed): delta {:.0} B ({}); the others \
             had new stories: {:.0} B ({})",
            result.kind.name(),
            result.interval,
            encoder.quiet_pages,
            encoder.pages,
            encoder.quiet_delta as f64 / encoder.quiet_pages as f64,
            share(encoder.quiet_delta as f64, encoder.quiet_raw as f64),
            (encoder.delta - encoder.quiet_delta) as f64 / (encoder.pages - encoder.quiet_pages).max(1) as f64,
            share(
                (encoder.delta - encoder.quiet_delta) as f64,
                (encoder.raw - encoder.quiet_raw) as f64
            )
        );
    }
    for result in results.iter().filter(|result| result.kind != Kind::Account) {
        let p99 = percentile(&result.encoder.encode, 0.99);
        let _ = writeln!(
            out,
            "- encode p99 < 1 ms ({} page of {:.0} KB, {} min): {} ({}); base prepared: {}",
            result.kind.name(),
            result.encoder.page_bytes() as f64 / 1000.0,
            result.interval,
            micros(p99),
            met(p99 < Duration::from_millis(1)),
            prepared_times(&result.encoder)
        );
    }
    for result in results.iter().filter(|result| result.kind.public()) {
        let browser = &result.browser;
        if browser.dcz == 0 {
            continue;
        }
        let smaller = 1.0 - browser.dcz_bytes as f64 / browser.gzip_bytes.max(1) as f64;
        let floor = 1.0 - browser.floor_bytes as f64 / browser.gzip_bytes.max(1) as f64;
        let _ = writeln!(
            out,
            "- browser dcz ≥ 97% smaller than gzip ({} every {} min): {:.1}% ({}); floor against the same dictionaries {:.1}%; {} of {} against the page the browser kept",
            result.kind.name(),
            result.interval,
            smaller * 100.0,
            met(smaller >= 0.97),
            floor * 100.0,
            browser.against_page,
            browser.dcz
        );
    }
    let wrong: u64 = results.iter().map(|result| result.wrong).sum();
    let checked: u64 = results.iter().map(|result| result.pages + result.plain_pages).sum();
    let _ = writeln!(
        out,
        "- zero wrong pages: {wrong} wrong of {checked} checked ({})",
        met(wrong == 0)
    );
    out
}

/// Encode times with the base prepared: p50 / p99 of the pages after a base's first, and the p50 / p99
/// of first pages.
fn prepared_times(encoder: &EncoderFigures) -> String {
    let times = |values: &[Duration]| {
        if values.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{} / {}",
                micros(percentile(values, 0.5)),
                micros(percentile(values, 0.99))
            )
        }
    };
    format!(
        "{} ({} pages); first page {} ({})",
        times(&encoder.encode_prepared),
        encoder.encode_prepared.len(),
        times(&encoder.encode_first),
        encoder.encode_first.len()
    )
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "NOT met" }
}

fn write_csv(path: &Path, results: &[Scenario]) -> Result<()> {
    let mut text = String::from(
        "class,interval_min,pages,raw_bytes,link_down_bytes,link_up_bytes,plain_pages,plain_link_down_bytes,\
         encoder_delta_bytes,encoder_raw_bytes,gzip_bytes,brotli_bytes,compressed_raw_bytes,latency_p50_ms,\
         latency_p99_ms,plain_p50_ms,plain_p99_ms,encode_p50_us,encode_p99_us,decode_p50_us,decode_p99_us,\
         delta_cpu_ms_per_page,edge_cpu_ms_per_page,plain_cpu_ms_per_page,full_pages,warmup_full_pages,\
         base_changes,browser_visits,browser_dcz,browser_dcz_bytes,browser_gzip_bytes,wrong,floor_bytes,\
         information_bytes,browser_floor_bytes,browser_base_fetches,browser_base_bytes\n",
    );
    for r in results {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let _ = writeln!(
            text,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3},{:.1},{:.1},{:.1},{:.1},{:.3},{:.3},{:.3},{},{},{},{},{},{},{},{},{},{:.0},{},{},{}",
            r.kind.name(),
            r.interval,
            r.pages,
            r.raw,
            r.down,
            r.up,
            r.plain_pages,
            r.plain_down,
            r.encoder.delta,
            r.encoder.raw,
            r.encoder.gzip,
            r.encoder.brotli,
            r.encoder.compressed_raw,
            ms(percentile(&r.latency, 0.5)),
            ms(percentile(&r.latency, 0.99)),
            ms(percentile(&r.plain_latency, 0.5)),
            ms(percentile(&r.plain_latency, 0.99)),
            us(percentile(&r.encoder.encode, 0.5)),
            us(percentile(&r.encoder.encode, 0.99)),
            us(percentile(&r.encoder.decode, 0.5)),
            us(percentile(&r.encoder.decode, 0.99)),
            r.delta_cpu * 1e3,
            r.edge_cpu * 1e3,
            r.plain_cpu * 1e3,
            r.full_pages.values().sum::<f64>() + 0.0,
            r.warmup_full,
            r.base_changes,
            r.browser.visits,
            r.browser.dcz,
            r.browser.dcz_bytes,
            r.browser.gzip_bytes,
            r.wrong,
            r.encoder.floor,
            r.encoder.information,
            r.browser.floor_bytes,
            r.browser.base_fetches,
            r.browser.base_bytes
        );
    }
    std::fs::write(path, text)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The cost of `--delta auto` on ordinary traffic.

/// The edge's CPU per request on 1 KB hits and CPU-bound misses, `--delta auto` against `--delta off`,
/// alternating over rounds; the edge on core 0, wrk and the origin on core 1.
fn auto_cost(options: &DeltaBench) -> Result<()> {
    use crate::bench::{Guard, free_addr, parse_wrk, pinned, process_tree_cpu, wait_listening};
    let tern = crate::bench::tern_binary(options.tern.as_deref())?;
    let lab = std::env::current_exe()?;
    let origin = free_addr()?;
    let _origin = Guard::spawn(pinned("1", &lab, &["origin", "--listen", &origin.to_string()]))?;
    wait_listening(origin)?;
    let work = std::env::temp_dir().join(format!("tern-delta-cost-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let hit = work.join("hit.lua");
    std::fs::write(
        &hit,
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format(\"GET\", \"/obj/1024/\" .. (counter % 100))\nend\n",
    )?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "--delta auto against --delta off: {} rounds x {} s, wrk -t1 -c64, edge on cpu 0, wrk and origin on cpu 1; load average before: {}",
        options.rounds,
        options.seconds,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    // (scenario, mode) -> microseconds of edge CPU per request, one per round.
    let mut figures: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    let mut rps: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for round in 0..options.rounds {
        let mut modes = ["auto", "off"];
        if round % 2 == 1 {
            modes.reverse();
        }
        for mode in modes {
            let addr = free_addr()?;
            let edge = Guard::spawn(pinned(
                "0",
                &tern,
                &[
                    "edge",
                    "--listen",
                    &addr.to_string(),
                    "--origin",
                    &format!("http://{origin}"),
                    &format!("--delta={mode}"),
                    "--cache-size",
                    "3G",
                    "--log",
                    "warn",
                ],
            ))?;
            wait_listening(addr)?;
            for _ in 0..2 {
                for n in 0..100 {
                    crate::bench::http(addr, "GET", &format!("/obj/1024/{n}"), "")?;
                }
            }
            let miss = work.join(format!("miss-{round}-{mode}.lua"));
            std::fs::write(
                &miss,
                format!(
                    "counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format(\"GET\", \"/obj/1024/m{round}-{mode}-\" .. counter)\nend\n"
                ),
            )?;
            for (scenario, script) in [("hit 1 KB", &hit), ("miss-cpu 1 KB", &miss)] {
                let before = process_tree_cpu(edge.0.id());
                let output = Command::new("taskset")
                    .args(["-c", "1", "wrk", "-t1", "-c64"])
                    .arg(format!("-d{}s", options.seconds))
                    .args(["--latency", "-s"])
                    .arg(script)
                    .arg(format!("http://{addr}"))
                    .output()
                    .context("run wrk")?;
                let cpu = process_tree_cpu(edge.0.id()) - before;
                let measured = parse_wrk(&String::from_utf8_lossy(&output.stdout))?;
                let per_request = cpu / measured.requests.max(1.0) * 1e6;
                println!(
                    "  round {round} {mode:4} {scenario:13}: {:>8.0} req/s, {per_request:.2} us CPU/request",
                    measured.rps
                );
                figures.entry((scenario, mode)).or_default().push(per_request);
                rps.entry((scenario, mode)).or_default().push(measured.rps);
            }
            drop(edge);
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    let median = |values: &[f64]| -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
    };
    let mut out = String::from(
        "| scenario | --delta off: CPU/request, req/s | --delta auto: CPU/request, req/s | auto / off |\n|---|---:|---:|---:|\n",
    );
    for scenario in ["hit 1 KB", "miss-cpu 1 KB"] {
        let off = median(figures.get(&(scenario, "off")).map_or(&[][..], Vec::as_slice));
        let auto = median(figures.get(&(scenario, "auto")).map_or(&[][..], Vec::as_slice));
        let off_rps = median(rps.get(&(scenario, "off")).map_or(&[][..], Vec::as_slice));
        let auto_rps = median(rps.get(&(scenario, "auto")).map_or(&[][..], Vec::as_slice));
        let _ = writeln!(
            out,
            "| {scenario} | {off:.2} us, {off_rps:.0} | {auto:.2} us, {auto_rps:.0} | {:.3} |",
            auto / off.max(f64::MIN_POSITIVE)
        );
    }
    println!("\n{out}");
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(options.out.join("auto-cost.md"), &out)?;
    println!("results: {}", options.out.join("auto-cost.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_reads_back_the_pages_it_is_asked_for() {
        for kind in [Kind::News, Kind::Calm, Kind::Account, Kind::Product] {
            for page in schedule(kind, 5, 2, 3).into_iter().flatten() {
                let parsed = Page::from_request(&page.path(), page.cookie().as_deref(), page.minute);
                assert_eq!(parsed, Some(page));
            }
        }
        assert_eq!(Page::from_request("/elsewhere", None, 1), None);
    }

    #[test]
    fn metrics_text_is_read() {
        let text = "# HELP x\ntern_edge_delta_full_pages_total{reason=\"no_base\"} 2\n\
                    tern_edge_delta_full_pages_total{reason=\"upstream_whole\"} 3\ntern_delta_base_changes_total{class=\"news\"} 4\n";
        let samples = parse_metrics(text);
        assert_eq!(sum(&samples, "tern_edge_delta_full_pages_total", &[]), 5.0);
        assert_eq!(
            sum(&samples, "tern_edge_delta_full_pages_total", &[("reason", "no_base")]),
            2.0
        );
        assert_eq!(
            by_label(&samples, "tern_edge_delta_full_pages_total", "reason").get("upstream_whole"),
            Some(&3.0)
        );
    }

    #[test]
    fn percentiles_take_the_rank_above() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
