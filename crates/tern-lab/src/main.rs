//! `tern-lab`: benchmarks, workloads, probes and lab housekeeping.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use tern_lab::bench::{EdgeBench, System};
use tern_lab::load::{Stop, Workload};
use tern_lab::{origin, probe, topology};

/// tern's lab: multi-host topologies, workloads and benchmarks.
#[derive(Parser, Debug)]
#[command(name = "tern-lab", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(Bench),
    /// Drive an HTTP server with a custom workload and print requests/s and latency percentiles.
    Load(LoadArgs),
    /// Run a synthetic origin serving /obj/<size>/<n>, with optional injected latency.
    Origin {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Delay before each response, milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// max-age of every object, seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Network probes run inside lab hosts.
    #[command(subcommand)]
    Probe(Probe),
    /// Remove namespaces, bridges and links that crashed lab runs left behind.
    Clean,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Active synchronisation: time from an origin write (or an API purge) to every edge being fresh.
    Sync {
        /// Edge hosts.
        #[arg(long, default_value_t = 16)]
        edges: usize,
        /// Changes (and purges) measured.
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// max-age the origin sends, seconds (for the TTL comparison).
        #[arg(long, default_value_t = 300)]
        ttl: u64,
        /// The tern binary (default: the release build next to this program).
        #[arg(long)]
        tern: Option<PathBuf>,
        /// Results directory.
        #[arg(long, default_value = "results/sync")]
        out: PathBuf,
    },
    /// The content mover against rsync -a: a full publish and a small change to N nodes.
    Mover(tern_lab::mover_bench::MoverBench),
    /// The content mover's local distribution: one segment's leader sends an assignment to its members on
    /// the multicast data channel (with injected loss), against HTTP unicast and UFTP.
    Multicast(tern_lab::multicast_bench::MulticastBench),
    /// Differential caching over a rate-limited long link: bytes per page against raw, gzip and brotli,
    /// latency with and without deltas, encode/decode time, browser dcz; or (--auto-cost) the edge's CPU
    /// with --delta auto against --delta off.
    Delta(tern_lab::delta_bench::DeltaBench),
    /// Cache communities: N independent edges, the N edges as one community and one edge with N times the
    /// cache, cold and warm, on a Zipf workload over a far origin; then the master killed under load.
    Community(tern_lab::community_bench::CommunityBench),
    /// tern edge against nginx (proxy_cache) and Varnish (malloc) on hits and misses.
    Edge {
        /// Rounds of A/B/A/B.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// wrk connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// wrk threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Object sizes in bytes.
        #[arg(long, value_delimiter = ',', default_value = "1024,65536,1048576")]
        sizes: Vec<u64>,
        /// Distinct objects per size.
        #[arg(long, default_value_t = 100)]
        objects: u64,
        /// Origin latency in the miss-heavy run, milliseconds.
        #[arg(long, default_value_t = 5)]
        miss_delay_ms: u64,
        /// Systems to compare.
        #[arg(long, value_delimiter = ',', default_value = "tern,nginx,varnish")]
        systems: Vec<String>,
        /// Scenarios to run: hit, miss-cpu, tls, miss (all by default).
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// The tern binary (default: the release build next to this program).
        #[arg(long)]
        tern: Option<PathBuf>,
        /// Results directory.
        #[arg(long, default_value = "results/edge")]
        out: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// Server to load.
    #[arg(long)]
    target: SocketAddr,
    /// Host header.
    #[arg(long, default_value = "lab")]
    host: String,
    /// Objects per size class.
    #[arg(long, default_value_t = 1000)]
    objects: u64,
    /// Size mix as SIZE:WEIGHT pairs, e.g. 1024:0.8,65536:0.2.
    #[arg(long, value_delimiter = ',', default_value = "1024:1")]
    sizes: Vec<String>,
    /// Zipf exponent (omit for uniform popularity).
    #[arg(long)]
    zipf: Option<f64>,
    /// Connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Stop after this many requests.
    #[arg(long, conflicts_with = "seconds")]
    requests: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Request every object once before measuring.
    #[arg(long)]
    warm: bool,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Subcommand, Debug)]
enum Probe {
    /// Receive multicast datagrams until the timeout, printing each.
    McastRecv {
        group: SocketAddrV4,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Send a multicast datagram (TTL 1) a few times.
    McastSend {
        group: SocketAddrV4,
        message: String,
        #[arg(long, default_value_t = 5)]
        count: u32,
    },
    /// Echo TCP connections on a port for a while.
    Echo {
        port: u16,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Exit 0 if an echo server answers.
    EchoCheck {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Accept one connection and discard its bytes.
    Sink {
        port: u16,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Send as fast as possible and print the measured bits per second.
    Blast {
        addr: SocketAddr,
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    // Ctrl-C ends the process without running destructors: tear the labs down here instead.
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        if runtime.block_on(tokio::signal::ctrl_c()).is_ok() {
            eprintln!("interrupted: removing this run's lab");
            topology::teardown_own();
            tern_lab::community_bench::kill_started();
            std::process::exit(130);
        }
    });
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Bench(Bench::Mover(options)) => tern_lab::mover_bench::run(&options),
        Command::Bench(Bench::Multicast(options)) => tern_lab::multicast_bench::run(&options),
        Command::Bench(Bench::Delta(options)) => tern_lab::delta_bench::run(&options),
        Command::Bench(Bench::Community(options)) => tern_lab::community_bench::run(&options),
        Command::Bench(Bench::Edge {
            rounds,
            seconds,
            connections,
            threads,
            sizes,
            objects,
            miss_delay_ms,
            systems,
            scenarios,
            tern,
            out,
        }) => {
            if let Some(unknown) = scenarios
                .iter()
                .find(|name| !tern_lab::bench::SCENARIOS.contains(&name.as_str()))
            {
                bail!(
                    "unknown scenario `{unknown}` ({})",
                    tern_lab::bench::SCENARIOS.join(", ")
                );
            }
            let systems = systems
                .iter()
                .map(|name| match name.as_str() {
                    "tern" => Ok(System::Tern),
                    "nginx" => Ok(System::Nginx),
                    "varnish" => Ok(System::Varnish),
                    other => bail!("unknown system `{other}` (tern, nginx, varnish)"),
                })
                .collect::<Result<Vec<_>>>()?;
            let options = EdgeBench {
                rounds,
                duration: Duration::from_secs(seconds),
                connections,
                threads,
                sizes,
                objects,
                miss_delay: Duration::from_millis(miss_delay_ms),
                systems,
                scenarios,
                tern,
                out,
            };
            tern_lab::bench::run(&options)?;
            Ok(())
        }
        Command::Bench(Bench::Sync {
            edges,
            changes,
            ttl,
            tern,
            out,
        }) => tern_lab::sync_bench::run(&tern_lab::sync_bench::SyncBench {
            edges,
            changes,
            ttl,
            tern,
            out,
        }),
        Command::Load(args) => {
            let sizes = args
                .sizes
                .iter()
                .map(|pair| {
                    let (size, weight) = pair.split_once(':').unwrap_or((pair.as_str(), "1"));
                    Ok((size.parse::<u64>()?, weight.parse::<f64>()?))
                })
                .collect::<Result<Vec<_>>>()?;
            let workload = Workload {
                target: args.target,
                host: args.host,
                objects: args.objects,
                sizes,
                zipf: args.zipf,
                connections: args.connections,
                stop: match args.requests {
                    Some(n) => Stop::Requests(n),
                    None => Stop::Duration(Duration::from_secs(args.seconds)),
                },
                warm: args.warm,
                seed: args.seed,
            };
            let report = runtime()?.block_on(tern_lab::load::run(&workload))?;
            println!("{report}");
            Ok(())
        }
        Command::Origin { listen, delay_ms, ttl } => runtime()?.block_on(async move {
            let settings = origin::OriginSettings {
                delay: Duration::from_millis(delay_ms),
                ttl,
            };
            let origin = origin::start(listen, settings).await?;
            eprintln!("synthetic origin on {}", origin.addr);
            tokio::signal::ctrl_c().await?;
            Ok(())
        }),
        Command::Probe(probe) => match probe {
            Probe::McastRecv { group, timeout_ms } => {
                probe::multicast_receive(group, Duration::from_millis(timeout_ms))
            }
            Probe::McastSend { group, message, count } => probe::multicast_send(group, &message, count),
            Probe::Echo { port, seconds } => probe::echo_server(port, Duration::from_secs(seconds)),
            Probe::EchoCheck { addr, timeout_ms } => {
                if probe::echo_check(addr, Duration::from_millis(timeout_ms)) {
                    Ok(())
                } else {
                    bail!("no echo from {addr}")
                }
            }
            Probe::Sink { port, seconds } => probe::sink(port, Duration::from_secs(seconds)),
            Probe::Blast { addr, seconds } => {
                let bits = probe::blast(addr, Duration::from_secs(seconds))?;
                println!("{bits:.0} bit/s");
                Ok(())
            }
        },
        Command::Clean => {
            topology::clean_leftovers();
            println!("cleaned");
            Ok(())
        }
    }
}
