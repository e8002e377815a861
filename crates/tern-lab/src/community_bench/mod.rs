//! `tern-lab bench community`: cache communities (issue 11; seeds `002_82dbe7a209926976.txt`, the cache
//! community, and `003_590cbd812baaa7e3.txt`, the directory of holders) against the two setups they are
//! meant to sit between.
//!
//! A synthetic origin with injected latency (a far origin) serves distinct objects; a Zipf workload whose
//! working set is about the edges' summed caches is spread evenly over the edges in round robin, as a DNS
//! round robin would. Three systems, one after the other in one run, each from empty caches (cold) and
//! then again (warm):
//!
//! - **independent**: N `tern edge` processes, each with a cache of C bytes, each alone;
//! - **community**: the same N edges as one cache community with a `tern registry`;
//! - **ideal**: one edge with an N×C cache taking every request.
//!
//! Per system and phase it prints origin requests (and, cold, per distinct object requested), the hit
//! ratio (requests served without an origin request of their own: 1 − origin requests / requests), p50 and
//! p99 latency, the traffic between peers and the edges' CPU seconds per 10k requests. For the community it
//! then measures the latency a peer hit adds over a local hit (sequential requests on an idle community),
//! and kills the master with SIGKILL under load: the failover time read from the survivors' `/status` and
//! the errors the clients saw. Last, the targets with PASS or MISS.
//!
//! The benchmark only uses the edges' command line and HTTP (`/status`, `/metrics`, `Cache-Status`), so it
//! keeps measuring whatever the community's miss path becomes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::bench::{Guard, process_tree_cpu, tern_binary, wait_listening};
use crate::origin::{OriginSettings, SyntheticOrigin};

/// The `Host` every client names, so that every edge keys an object alike.
const SITE_HOST: &str = "bench.test";
/// The community's name.
const COMMUNITY: &str = "bench";
/// A client request that takes longer than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a phase may run before it is cut short (and said to be).
const PHASE_LIMIT: Duration = Duration::from_secs(240);
/// Longest the community may take to form, and to agree on a new master after the kill.
const CONVERGE_LIMIT: Duration = Duration::from_secs(30);
const FAILOVER_LIMIT: Duration = Duration::from_secs(15);
/// Load before the master is killed, and after the survivors agree on a new one.
const LOAD_BEFORE_KILL: Duration = Duration::from_millis(1500);
const LOAD_AFTER_FAILOVER: Duration = Duration::from_millis(1500);
/// How often the survivors' `/status` is read during the failover.
const STATUS_POLL: Duration = Duration::from_millis(20);
/// The synthetic origin's largest object.
const MAX_OBJECT: u64 = 64 << 20;
/// An open-loop request sent this long after its due time is late.
const LATE: Duration = Duration::from_millis(5);
/// Objects (by popularity rank) of the idle peer-hit against local-hit measurement, asked of every edge.
const LATENCY_OBJECTS: u64 = 256;

/// Options of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct CommunityBench {
    /// Edge processes (N).
    #[arg(long, default_value_t = 8)]
    pub edges: usize,
    /// Cache of each edge (C), bytes; K, M and G suffixes (binary) allowed. The ideal edge gets N×C.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub cache: u64,
    /// Bytes of each object.
    #[arg(long, default_value = "16K", value_parser = parse_size)]
    pub object_size: u64,
    /// Distinct objects [default: 0.9 × N×C / object size]. A working set of exactly N×C does not fit
    /// even the ideal edge: each stored object's headers and record count against the cache too (a run
    /// with 2,048 objects of 16 KiB in 32 MiB evicted 355 of them at the ideal edge).
    #[arg(long)]
    pub objects: Option<u64>,
    /// Zipf exponent of the objects' popularity.
    #[arg(long, default_value_t = 0.9)]
    pub zipf: f64,
    /// Requests per phase (cold, warm) and system: enough that the Zipf tail reaches several independent
    /// edges (with 20,000, most of it is asked once or twice, and no design could cut the cold origin
    /// requests of independent edges by 6).
    #[arg(long, default_value_t = 100_000)]
    pub requests: u64,
    /// Most client requests in flight (with --rate 0: always this many, a closed loop).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Requests per second, sent on a fixed schedule whatever the answers (an open loop, as independent
    /// clients behave); 0 for a closed loop of --connections requests.
    #[arg(long, default_value_t = 3000.0)]
    pub rate: f64,
    /// Origin latency, milliseconds, before each response (a far origin).
    #[arg(long, default_value_t = 20)]
    pub origin_delay_ms: u64,
    /// Worker threads of each edge (`tern edge --threads`); N edges share this machine's cores.
    #[arg(long, default_value_t = 1)]
    pub edge_threads: usize,
    /// The community's `--community-keep` (never, always, or hot where the edges have it).
    #[arg(long, default_value = "never")]
    pub keep: String,
    /// The community's `--replicas`.
    #[arg(long, default_value_t = 1)]
    pub replicas: u8,
    /// Systems to run, of independent, community and ideal.
    #[arg(long, value_delimiter = ',', default_value = "independent,ideal,community")]
    pub systems: Vec<String>,
    /// No kill of the master.
    #[arg(long)]
    pub no_failover: bool,
    /// Seed of the request sequence.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The tern binary (default: the release build next to this program).
    #[arg(long)]
    pub tern: Option<PathBuf>,
    /// Results directory.
    #[arg(long, default_value = "results/community")]
    pub out: PathBuf,
}

/// Parses a byte size with an optional K, M or G suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let (number, factor) = match trimmed.char_indices().last() {
        Some((at, 'K' | 'k')) => (&trimmed[..at], 1u64 << 10),
        Some((at, 'M' | 'm')) => (&trimmed[..at], 1u64 << 20),
        Some((at, 'G' | 'g')) => (&trimmed[..at], 1u64 << 30),
        _ => (trimmed, 1),
    };
    let value: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 4M)"))?;
    value
        .checked_mul(factor)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("`{text}`: give a size above zero and below 16 EiB"))
}

/// The three systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    /// N edges, each alone.
    Independent,
    /// The N edges as one community.
    Community,
    /// One edge with N×C.
    Ideal,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Independent => "independent",
            Setup::Community => "community",
            Setup::Ideal => "ideal",
        }
    }

    fn parse(text: &str) -> Result<Setup> {
        match text {
            "independent" | "a" => Ok(Setup::Independent),
            "community" | "b" => Ok(Setup::Community),
            "ideal" | "c" => Ok(Setup::Ideal),
            other => bail!("unknown system `{other}` (independent, community, ideal)"),
        }
    }
}

/// Cold (from empty caches) or warm (the same workload again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Cold,
    Warm,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Cold => "cold",
            Phase::Warm => "warm",
        }
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn http_client(connections: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections.max(1))
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Everything printed, kept for the results file.
#[derive(Default)]
struct Printer {
    text: String,
}

impl Printer {
    fn line(&mut self, line: impl AsRef<str>) {
        println!("{}", line.as_ref());
        self.text.push_str(line.as_ref());
        self.text.push('\n');
    }
}

/// Pids of the processes this benchmark started, for [`kill_started`] on Ctrl-C (which ends the program
/// without running the guards' destructors).
static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kills (SIGKILL) every process this benchmark started that is still running.
pub fn kill_started() {
    let pids = match STARTED.lock() {
        Ok(mut pids) => std::mem::take(&mut *pids),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// A started process: killed when dropped, and known to [`kill_started`] until then.
struct Started {
    guard: Guard,
}

impl Started {
    fn spawn(mut command: Command, log: &Path) -> Result<Started> {
        let log_file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        command.stderr(log_file);
        let guard = Guard::spawn(command)?;
        if let Ok(mut pids) = STARTED.lock() {
            pids.push(guard.0.id());
        }
        Ok(Started { guard })
    }

    fn pid(&self) -> u32 {
        self.guard.0.id()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let pid = self.pid();
        if let Ok(mut pids) = STARTED.lock() {
            pids.retain(|started| *started != pid);
        }
        // The guard's own drop sends SIGKILL and reaps the process.
    }
}

/// One edge process and its addresses.
struct Edge {
    process: Option<Started>,
    listen: SocketAddr,
    admin: SocketAddr,
    /// Its `--peer-listen` address (its name in the community), in a community.
    peer: Option<SocketAddr>,
}

/// A system under test: its origin, edges and registry.
struct System {
    setup: Setup,
    origin: SyntheticOrigin,
    edges: Vec<Edge>,
    registry: Option<Started>,
}

impl System {
    fn targets(&self) -> Vec<SocketAddr> {
        self.edges.iter().map(|edge| edge.listen).collect()
    }

    /// CPU seconds of the running edges and the registry so far.
    fn cpu_seconds(&self) -> f64 {
        self.edges
            .iter()
            .filter_map(|edge| edge.process.as_ref())
            .chain(self.registry.as_ref())
            .map(|process| process_tree_cpu(process.pid()))
            .sum()
    }
}

/// The paths of a run: the tern binary and the work directory.
struct Paths {
    tern: PathBuf,
    work: PathBuf,
}

/// Runs the benchmark and prints its figures.
pub fn run(options: &CommunityBench) -> Result<()> {
    if options.edges < 2 {
        bail!("--edges: a community needs at least 2 edges");
    }
    if options.connections == 0 || options.requests == 0 {
        bail!("--connections and --requests must be above zero");
    }
    if options.object_size > MAX_OBJECT {
        bail!(
            "--object-size: the synthetic origin serves at most {}",
            human(MAX_OBJECT)
        );
    }
    if !(options.rate.is_finite() && options.rate >= 0.0) {
        bail!("--rate must be 0 (closed loop) or a number of requests per second");
    }
    if !(options.zipf.is_finite() && options.zipf >= 0.0) {
        bail!("--zipf must be a number of 0 or more");
    }
    let setups = options
        .systems
        .iter()
        .map(|name| Setup::parse(name))
        .collect::<Result<Vec<_>>>()?;
    let tern = tern_binary(options.tern.as_deref())?;
    let work = std::env::temp_dir().join(format!("tern-community-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let paths = Paths { tern, work };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run_all(options, &setups, &paths));
    kill_started();
    let keep_logs = result.is_err();
    if keep_logs {
        eprintln!("the processes' logs are kept in {}", paths.work.display());
    } else {
        let _ = std::fs::remove_dir_all(&paths.work);
    }
    result
}

/// Figures of one system in one phase.
#[derive(Debug, Clone)]
struct Figures {
    requests: u64,
    errors: u64,
    distinct: u64,
    origin_requests: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    local_hits: u64,
    peer_hits: u64,
    /// Peer requests the owners served (from their `/metrics`).
    peer_served: u64,
    /// Objects the edges evicted (from their `/metrics`).
    evictions: u64,
    /// Misses a non-owner took to the origin because no owner served them.
    fallbacks: u64,
    /// Body bytes members served each other, from the edges' counter when they have one.
    peer_bytes: Option<u64>,
    /// Fewest and most objects an edge held at the end of the phase.
    held_min: u64,
    held_max: u64,
    /// Open loop: requests sent late (the schedule could not be kept).
    late: u64,
    cpu_seconds: f64,
    truncated: bool,
}

impl Figures {
    fn hit_ratio(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        (1.0 - self.origin_requests as f64 / self.requests as f64).max(0.0)
    }

    fn origin_per_distinct(&self) -> f64 {
        self.origin_requests as f64 / self.distinct.max(1) as f64
    }

    fn cpu_per_10k(&self) -> f64 {
        self.cpu_seconds / self.requests.max(1) as f64 * 10_000.0
    }
}

/// The idle latency of local and peer hits.
#[derive(Debug, Clone)]
struct PeerLatency {
    local_p50_ms: f64,
    peer_p50_ms: f64,
    local_samples: u64,
    peer_samples: u64,
    /// The same from the warm phase, under load.
    loaded_local_p50_ms: f64,
    loaded_peer_p50_ms: f64,
}

/// What the kill of the master showed.
#[derive(Debug, Clone)]
struct Failover {
    old_master: String,
    old_term: u64,
    new_master: String,
    new_term: u64,
    /// Kill to the first survivor naming a new master with a higher term.
    first_seen: Duration,
    /// Kill to every survivor agreeing on it and listing every survivor.
    agreed: Duration,
    requests: u64,
    errors: u64,
    error_samples: Vec<String>,
    origin_requests: u64,
}

async fn run_all(options: &CommunityBench, setups: &[Setup], paths: &Paths) -> Result<()> {
    let objects = options
        .objects
        .unwrap_or_else(|| (options.edges as u64 * options.cache * 9 / 10 / options.object_size).max(1));
    let working_set = objects * options.object_size;
    let mut out = Printer::default();
    let command_line: Vec<String> = std::env::args().collect();
    out.line(format!("$ {}", command_line.join(" ")));
    out.line(format!(
        "community benchmark: {} edges with a {} cache each (C), ideal edge {}; {objects} objects of {} \
         (working set {}, {:.2}×(N×C)), Zipf s={}, {} requests per phase, {}, round robin over the edges; \
         origin latency {} ms; edges with --threads {}; community keep={} replicas={}",
        options.edges,
        human(options.cache),
        human(options.cache * options.edges as u64),
        human(options.object_size),
        human(working_set),
        working_set as f64 / (options.cache * options.edges as u64) as f64,
        options.zipf,
        options.requests,
        Shape::of(options).describe(),
        options.origin_delay_ms,
        options.edge_threads,
        options.keep,
        options.replicas
    ));
    out.line(format!(
        "machine: {} cores; load generator and origin run in this process; tern binary {} built {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        paths.tern.display(),
        built_at(&paths.tern)
    ));
    let workload = Arc::new(Zipf::new(objects, options.zipf));
    let client = http_client(options.connections);
    let mut figures: BTreeMap<(Setup, Phase), Figures> = BTreeMap::new();
    let mut peer_latency = None;
    let mut failover = None;
    for &setup in setups {
        out.line(String::new());
        out.line(format!("== {} ==", setup.name()));
        let mut system = start_system(options, setup, paths, &client, &mut out).await?;
        let mut warm_classes = None;
        for phase in [Phase::Cold, Phase::Warm] {
            let seed = options.seed.wrapping_add(phase as u64);
            let (measured, classes) = measure_phase(options, &system, &client, &workload, seed).await?;
            out.line(describe(setup, phase, &measured, options.object_size));
            if phase == Phase::Warm {
                warm_classes = Some(classes);
            }
            figures.insert((setup, phase), measured);
        }
        if setup == Setup::Community {
            let (loaded_local, loaded_peer) = match &warm_classes {
                Some(classes) => (classes.local_p50_ms(), classes.peer_p50_ms()),
                None => (0.0, 0.0),
            };
            let measured = idle_latency(&system, &client, objects, options.object_size).await?;
            let latency = PeerLatency {
                loaded_local_p50_ms: loaded_local,
                loaded_peer_p50_ms: loaded_peer,
                ..measured
            };
            out.line(format!(
                "peer hit against local hit, idle (sequential requests, top {} objects from every edge): \
                 local p50 {:.3} ms ({} samples), peer p50 {:.3} ms ({} samples): +{:.3} ms; under the warm \
                 load: local p50 {:.3} ms, peer p50 {:.3} ms: +{:.3} ms",
                LATENCY_OBJECTS.min(objects),
                latency.local_p50_ms,
                latency.local_samples,
                latency.peer_p50_ms,
                latency.peer_samples,
                latency.peer_p50_ms - latency.local_p50_ms,
                latency.loaded_local_p50_ms,
                latency.loaded_peer_p50_ms,
                latency.loaded_peer_p50_ms - latency.loaded_local_p50_ms
            ));
            peer_latency = Some(latency);
            if !options.no_failover {
                let measured = kill_master(options, &mut system, &client, &workload).await?;
                out.line(describe_failover(&measured));
                failover = Some(measured);
            }
        }
        drop(system);
    }
    out.line(String::new());
    summary(&mut out, options, &figures);
    out.line(String::new());
    targets(&mut out, &figures, peer_latency.as_ref(), failover.as_ref());
    std::fs::create_dir_all(&options.out)?;
    let file = options.out.join("community.txt");
    std::fs::write(&file, &out.text)?;
    println!("results: {}", file.display());
    Ok(())
}

mod load;
mod report;
mod system;

use load::*;
use report::*;
use system::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("16k"), Ok(16 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn cache_status_entries_tell_local_from_peer_hits() {
        let mut headers = http::HeaderMap::new();
        headers.append("cache-status", "tern; hit; ttl=3500".parse().expect("value"));
        assert_eq!(classify(&headers), Served::LocalHit);
        let mut headers = http::HeaderMap::new();
        headers.append("cache-status", "tern; hit; ttl=3500".parse().expect("value"));
        headers.append(
            "cache-status",
            "tern; fwd=miss; fwd-status=200; detail=community-owner"
                .parse()
                .expect("value"),
        );
        assert_eq!(classify(&headers), Served::PeerHit);
        let mut headers = http::HeaderMap::new();
        headers.append("cache-status", "tern; fwd=miss; stored".parse().expect("value"));
        headers.append(
            "cache-status",
            "tern; fwd=miss; detail=community-owner".parse().expect("value"),
        );
        assert_eq!(classify(&headers), Served::Forwarded);
        assert_eq!(classify(&http::HeaderMap::new()), Served::Forwarded);
    }

    #[test]
    fn zipf_picks_every_rank_in_range_and_prefers_the_head() {
        let zipf = Zipf::new(100, 0.9);
        let mut rng = SplitMix(3);
        let picks: Vec<u64> = (0..10_000).map(|_| zipf.pick(&mut rng)).collect();
        assert!(picks.iter().all(|rank| *rank < 100));
        let head = picks.iter().filter(|rank| **rank == 0).count();
        let tail = picks.iter().filter(|rank| **rank == 99).count();
        assert!(head > 5 * tail.max(1), "head {head}, tail {tail}");
    }
}
