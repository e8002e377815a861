//! `tern-lab bench edge`: tern's edge against nginx (`proxy_cache`) and Varnish (malloc storage) on the same
//! origin, driven by `wrk` with the same connections, threads and duration, alternating A/B/A/B over rounds.
//! Hits at several object sizes, a miss run against an origin without latency (CPU-bound: the edge's own
//! miss path is the limit), then a miss-heavy run against an origin with injected latency. Each server
//! is pinned to core 0 and the load generator and origin to core 1, so they do not steal each other's CPU.
//! Prints requests/s, p50/p99 latency and server CPU seconds per 10k requests, the tern/nginx and
//! tern/varnish ratios, and writes a CSV and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::topology::which;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    /// tern edge.
    Tern,
    /// nginx with proxy_cache.
    Nginx,
    /// Varnish with malloc storage.
    Varnish,
}

impl System {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            System::Tern => "tern",
            System::Nginx => "nginx",
            System::Varnish => "varnish",
        }
    }
}

/// Options of the benchmark.
#[derive(Debug, Clone)]
pub struct EdgeBench {
    /// Rounds of A/B/A/B.
    pub rounds: usize,
    /// Length of each measurement.
    pub duration: Duration,
    /// wrk connections.
    pub connections: usize,
    /// wrk threads.
    pub threads: usize,
    /// Object sizes for the hit runs.
    pub sizes: Vec<u64>,
    /// Distinct objects per size.
    pub objects: u64,
    /// Origin latency for the miss-heavy run.
    pub miss_delay: Duration,
    /// Systems to compare.
    pub systems: Vec<System>,
    /// Scenarios to run: `hit`, `miss-cpu`, `tls`, `miss` (all when empty).
    pub scenarios: Vec<String>,
    /// The tern binary (default: next to this program, built if missing).
    pub tern: Option<PathBuf>,
    /// Where results go.
    pub out: PathBuf,
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Round.
    pub round: usize,
    /// Server.
    pub system: System,
    /// Scenario (`hit-1024`, `miss`, ...).
    pub scenario: String,
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Server CPU seconds per 10k requests.
    pub cpu_per_10k: f64,
    /// Requests the origin saw during the measurement.
    pub origin_requests: u64,
}

/// Runs the benchmark and prints its figures.
pub fn run(options: &EdgeBench) -> Result<Vec<Sample>> {
    ensure_tools(&options.systems)?;
    let tern = tern_binary(options.tern.as_deref())?;
    std::fs::create_dir_all(&options.out)?;
    let work = std::env::temp_dir().join(format!("tern-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run_in(options, &tern, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The scenario groups `--scenarios` names.
pub const SCENARIOS: [&str; 4] = ["hit", "miss-cpu", "tls", "miss"];

impl EdgeBench {
    /// Whether the scenario group `name` runs.
    fn runs(&self, name: &str) -> bool {
        self.scenarios.is_empty() || self.scenarios.iter().any(|s| s == name)
    }
}

fn run_in(options: &EdgeBench, tern: &Path, work: &Path) -> Result<Vec<Sample>> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (server_cpu, load_cpu) = if cores >= 2 { ("0", "1") } else { ("0", "0") };
    let lab = std::env::current_exe()?;
    let origin_addr = free_addr()?;
    let _origin = Guard::spawn(pinned(
        load_cpu,
        &lab,
        &["origin", "--listen", &origin_addr.to_string()],
    ))?;
    wait_listening(origin_addr)?;
    let slow_addr = free_addr()?;
    let delay = options.miss_delay.as_millis().to_string();
    let _slow = Guard::spawn(pinned(
        load_cpu,
        &lab,
        &["origin", "--listen", &slow_addr.to_string(), "--delay-ms", &delay],
    ))?;
    wait_listening(slow_addr)?;

    println!(
        "edge benchmark: {} rounds x {} s, wrk -t{} -c{}, servers on cpu {server_cpu}, wrk and origin on cpu {load_cpu}",
        options.rounds,
        options.duration.as_secs(),
        options.threads,
        options.connections
    );
    let cert = BenchCert::create(work)?;
    let mut samples = Vec::new();
    for round in 0..options.rounds {
        // A/B/A/B: the order of systems alternates between rounds.
        let mut order = options.systems.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for &system in &order {
            let run = Run {
                options,
                load_cpu,
                round,
                system,
            };
            let server = Server::start(system, tern, work, origin_addr, server_cpu)?;
            if options.runs("hit") {
                for &size in &options.sizes {
                    warm(server.addr, size, options.objects)?;
                    let script = write_script(work, &format!("hit-{size}"), &hit_script(size, options.objects))?;
                    let scenario = format!("hit-{}", human(size));
                    samples.push(run.measure(
                        &server,
                        &format!("http://{}", server.addr),
                        origin_addr,
                        &script,
                        scenario,
                    )?);
                }
            }
            if options.runs("miss-cpu") {
                // Misses against the origin without injected latency: the edge's own miss path is the limit.
                let script = write_script(work, "miss-cpu", &miss_script(round, system, "cpu"))?;
                let url = format!("http://{}", server.addr);
                samples.push(run.measure(&server, &url, origin_addr, &script, "miss-cpu".to_string())?);
            }
            drop(server);
            if options.runs("tls") && matches!(system, System::Tern | System::Nginx) {
                samples.extend(tls_runs(
                    options,
                    tern,
                    work,
                    &cert,
                    origin_addr,
                    system,
                    round,
                    server_cpu,
                    load_cpu,
                )?);
            }
            if options.runs("miss") {
                let server = Server::start(system, tern, work, slow_addr, server_cpu)?;
                let script = write_script(work, "miss", &miss_script(round, system, "slow"))?;
                let url = format!("http://{}", server.addr);
                samples.push(run.measure(&server, &url, slow_addr, &script, "miss".to_string())?);
            }
        }
    }
    let summary = summarize(&samples, &options.systems);
    println!("\n{summary}");
    write_csv(&options.out.join("edge.csv"), &samples)?;
    std::fs::write(options.out.join("summary.txt"), &summary)?;
    chart(&options.out.join("edge.svg"), &samples, &options.systems)?;
    println!("results: {}", options.out.display());
    Ok(samples)
}

/// One system in one round: what every measurement shares.
struct Run<'a> {
    options: &'a EdgeBench,
    load_cpu: &'a str,
    round: usize,
    system: System,
}

impl Run<'_> {
    /// Drives `url` on `server` with `script`, counting the server's CPU and the requests `origin` saw.
    fn measure(
        &self,
        server: &Server,
        url: &str,
        origin: SocketAddr,
        script: &Path,
        scenario: String,
    ) -> Result<Sample> {
        let before = origin_count(origin)?;
        let cpu_before = server.cpu_seconds();
        let measured = wrk_url(self.options, self.load_cpu, url, script)?;
        let origin_requests = origin_count(origin)?.saturating_sub(before);
        let cpu = server.cpu_seconds() - cpu_before;
        let sample = measured.into_sample(self.round, self.system, scenario, cpu, origin_requests);
        println!("{}", describe(&sample));
        Ok(sample)
    }
}

/// The TLS runs (tern and nginx; Varnish has no TLS of its own): keep-alive hits at 1 KB and 64 KB over
/// HTTPS, then hits over a new connection each (full handshakes per second). wrk speaks HTTP/1.1 over TLS.
#[allow(clippy::too_many_arguments)]
fn tls_runs(
    options: &EdgeBench,
    tern: &Path,
    work: &Path,
    cert: &BenchCert,
    origin_addr: SocketAddr,
    system: System,
    round: usize,
    server_cpu: &str,
    load_cpu: &str,
) -> Result<Vec<Sample>> {
    let server = Server::start_with(system, tern, work, origin_addr, server_cpu, Some(cert))?;
    let Some(tls) = server.tls else {
        bail!("{} started without its TLS listener", system.name());
    };
    let url = format!("https://{tls}");
    let mut samples = Vec::new();
    let runs = [
        ("tls-hit-1KB", 1024u64, false),
        ("tls-hit-64KB", 65_536, false),
        ("tls-new-conn", 1024, true),
    ];
    for (scenario, size, new_connections) in runs {
        warm(server.addr, size, options.objects)?;
        let text = if new_connections {
            new_connection_script(size, options.objects)
        } else {
            hit_script(size, options.objects)
        };
        let script = write_script(work, scenario, &text)?;
        let run = Run {
            options,
            load_cpu,
            round,
            system,
        };
        samples.push(run.measure(&server, &url, origin_addr, &script, scenario.to_string())?);
    }
    Ok(samples)
}

fn human(size: u64) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}MB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{}KB", s >> 10),
        s => format!("{s}B"),
    }
}

fn describe(sample: &Sample) -> String {
    format!(
        "round {} {:8} {:10} {:>10.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  cpu/10k {:>6.3} s  origin requests {}",
        sample.round + 1,
        sample.system.name(),
        sample.scenario,
        sample.rps,
        sample.p50_ms,
        sample.p99_ms,
        sample.cpu_per_10k,
        sample.origin_requests
    )
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

/// The table of medians over rounds, with tern's ratios to the others.
pub fn summarize(samples: &[Sample], systems: &[System]) -> String {
    let mut scenarios: Vec<String> = Vec::new();
    for sample in samples {
        if !scenarios.contains(&sample.scenario) {
            scenarios.push(sample.scenario.clone());
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "medians over rounds");
    let _ = writeln!(
        out,
        "{:12} {:8} {:>10} {:>9} {:>9} {:>9}",
        "scenario", "system", "req/s", "p50 ms", "p99 ms", "cpu/10k"
    );
    let mut medians: BTreeMap<(String, System), (f64, f64, f64)> = BTreeMap::new();
    for scenario in &scenarios {
        for &system in systems {
            // Varnish has no TLS runs: a system without samples for a scenario has no row and no ratio.
            if !samples.iter().any(|s| &s.scenario == scenario && s.system == system) {
                continue;
            }
            let pick = |f: fn(&Sample) -> f64| {
                let mut values: Vec<f64> = samples
                    .iter()
                    .filter(|s| &s.scenario == scenario && s.system == system)
                    .map(f)
                    .collect();
                median(&mut values)
            };
            let (rps, p50, p99, cpu) = (
                pick(|s| s.rps),
                pick(|s| s.p50_ms),
                pick(|s| s.p99_ms),
                pick(|s| s.cpu_per_10k),
            );
            medians.insert((scenario.clone(), system), (rps, p99, cpu));
            let _ = writeln!(
                out,
                "{scenario:12} {:8} {rps:>10.0} {p50:>9.3} {p99:>9.3} {cpu:>9.3}",
                system.name()
            );
        }
    }
    let _ = writeln!(
        out,
        "\nratios (tern / other): req/s; p99 and CPU per request (lower is better for tern)"
    );
    for scenario in &scenarios {
        let Some((tern_rps, tern_p99, tern_cpu)) = medians.get(&(scenario.clone(), System::Tern)).copied() else {
            continue;
        };
        for &other in systems.iter().filter(|s| **s != System::Tern) {
            if let Some((rps, p99, cpu)) = medians.get(&(scenario.clone(), other)).copied() {
                let _ = writeln!(
                    out,
                    "{scenario:12} tern/{:8} req/s {:>5.2}   p99 {:>5.2}   cpu {:>5.2}",
                    other.name(),
                    tern_rps / rps.max(1e-9),
                    tern_p99 / p99.max(1e-9),
                    tern_cpu / cpu.max(1e-9)
                );
            }
        }
    }
    out
}

fn write_csv(path: &Path, samples: &[Sample]) -> Result<()> {
    let mut text =
        String::from("round,system,scenario,requests_per_second,p50_ms,p99_ms,cpu_seconds_per_10k,origin_requests\n");
    for s in samples {
        let _ = writeln!(
            text,
            "{},{},{},{:.1},{:.4},{:.4},{:.4},{}",
            s.round + 1,
            s.system.name(),
            s.scenario,
            s.rps,
            s.p50_ms,
            s.p99_ms,
            s.cpu_per_10k,
            s.origin_requests
        );
    }
    std::fs::write(path, text)?;
    Ok(())
}

fn chart(path: &Path, samples: &[Sample], systems: &[System]) -> Result<()> {
    use plotters::prelude::*;
    let mut scenarios: Vec<String> = Vec::new();
    for sample in samples {
        if !scenarios.contains(&sample.scenario) {
            scenarios.push(sample.scenario.clone());
        }
    }
    let mut bars = Vec::new();
    let mut top: f64 = 1.0;
    for (x, scenario) in scenarios.iter().enumerate() {
        for (offset, &system) in systems.iter().enumerate() {
            let mut values: Vec<f64> = samples
                .iter()
                .filter(|s| &s.scenario == scenario && s.system == system)
                .map(|s| s.rps)
                .collect();
            let value = median(&mut values);
            top = top.max(value);
            bars.push((x, offset, value));
        }
    }
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("edge: requests per second (median over rounds)", ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..scenarios.len() as f64, 0f64..top * 1.15)
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let labels = scenarios.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(scenarios.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let index = x.floor() as usize;
            if (x - index as f64 - 0.5).abs() < 0.01 {
                labels.get(index).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("req/s")
        .draw()
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let colors = [RGBColor(43, 108, 176), RGBColor(56, 161, 105), RGBColor(221, 107, 32)];
    let width = 0.8 / systems.len().max(1) as f64;
    for (index, &system) in systems.iter().enumerate() {
        let color = colors[index % colors.len()];
        chart
            .draw_series(
                bars.iter()
                    .filter(|(_, offset, _)| *offset == index)
                    .map(|(x, offset, value)| {
                        let left = *x as f64 + 0.1 + *offset as f64 * width;
                        Rectangle::new([(left, 0.0), (left + width * 0.95, *value)], color.filled())
                    }),
            )
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?
            .label(system.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    Ok(())
}

/// Installs wrk, nginx and Varnish from Debian if they are missing.
fn ensure_tools(systems: &[System]) -> Result<()> {
    let mut missing = Vec::new();
    if which("wrk").is_none() {
        missing.push("wrk");
    }
    if systems.contains(&System::Nginx) && which("nginx").is_none() {
        missing.push("nginx-light");
    }
    if systems.contains(&System::Varnish) && which("varnishd").is_none() {
        missing.push("varnish");
    }
    if which("taskset").is_none() {
        missing.push("util-linux");
    }
    apt_install(&missing)?;
    // The packages start their services; the benchmark runs its own instances.
    let _ = Command::new("service").args(["nginx", "stop"]).status();
    let _ = Command::new("service").args(["varnish", "stop"]).status();
    Ok(())
}

/// Installs Debian packages (the benchmarks' competitors and tools).
pub(crate) fn apt_install(missing: &[&str]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    println!("installing {} from Debian", missing.join(", "));
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("apt-get (run as root)")?;
    if !update.success() {
        bail!("apt-get update failed; install {} by hand", missing.join(" "));
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !install.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

/// Finds the release tern binary next to this program, building it if needed.
pub(crate) fn tern_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let here = std::env::current_exe()?;
    let beside = here.with_file_name("tern");
    if !beside.exists() {
        println!("building the tern binary (release)");
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "tern"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()?;
        if !status.success() {
            bail!("cargo build --release -p tern failed");
        }
    }
    if !beside.exists() {
        bail!("no tern binary at {}; pass --tern PATH", beside.display());
    }
    Ok(beside)
}

pub(crate) fn pinned(cpu: &str, program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", cpu]).arg(program).args(args);
    command
}

pub(crate) fn free_addr() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

pub(crate) fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listening on {addr} after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A child process killed when dropped.
pub(crate) struct Guard(pub(crate) Child);

impl Guard {
    pub(crate) fn spawn(mut command: Command) -> Result<Guard> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("start {command:?}"))?;
        Ok(Guard(child))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Server {
    addr: SocketAddr,
    /// The HTTPS listener (same certificate for every system), when the system serves TLS.
    tls: Option<SocketAddr>,
    guard: Guard,
    dir: PathBuf,
}

/// The certificate every system serves in the TLS runs: ECDSA P-256, as a CDN would deploy.
struct BenchCert {
    cert: PathBuf,
    key: PathBuf,
}

impl BenchCert {
    fn create(work: &Path) -> Result<BenchCert> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        let cert = params.self_signed(&key)?;
        let paths = BenchCert {
            cert: work.join("bench-cert.pem"),
            key: work.join("bench-key.pem"),
        };
        std::fs::write(&paths.cert, cert.pem())?;
        std::fs::write(&paths.key, key.serialize_pem())?;
        Ok(paths)
    }
}

impl Server {
    fn start(system: System, tern: &Path, work: &Path, origin: SocketAddr, cpu: &str) -> Result<Server> {
        Self::start_with(system, tern, work, origin, cpu, None)
    }

    /// Starts `system`; with `cert`, also an HTTPS listener serving it (tern and nginx; Varnish has no TLS).
    fn start_with(
        system: System,
        tern: &Path,
        work: &Path,
        origin: SocketAddr,
        cpu: &str,
        cert: Option<&BenchCert>,
    ) -> Result<Server> {
        let addr = free_addr()?;
        let tls = match (cert, system) {
            (Some(_), System::Tern | System::Nginx) => Some(free_addr()?),
            _ => None,
        };
        let dir = work.join(format!("{}-{}", system.name(), addr.port()));
        std::fs::create_dir_all(&dir)?;
        let command = match system {
            System::Tern => {
                let mut command = pinned(
                    cpu,
                    tern,
                    &[
                        "edge",
                        "--listen",
                        &addr.to_string(),
                        "--origin",
                        &format!("http://{origin}"),
                        "--cache-size",
                        "3G",
                        "--log",
                        "warn",
                    ],
                );
                if let (Some(cert), Some(tls)) = (cert, tls) {
                    command.args(["--tls-listen", &tls.to_string()]);
                    command.arg("--tls-cert").arg(&cert.cert);
                    command.arg("--tls-key").arg(&cert.key);
                }
                command.stderr(Stdio::null());
                command
            }
            System::Nginx => {
                std::fs::create_dir_all(dir.join("logs"))?;
                // proxy_cache keeps objects in files; on tmpfs they live in memory like tern's and
                // Varnish's caches here. On this machine's disk nginx managed under 1,300 misses/s.
                let cache = nginx_cache_dir(addr);
                std::fs::create_dir_all(&cache)?;
                let config = dir.join("nginx.conf");
                let tls_listen = match (cert, tls) {
                    (Some(cert), Some(tls)) => Some((tls, cert)),
                    _ => None,
                };
                std::fs::write(&config, nginx_config(&dir, &cache, addr, origin, tls_listen))?;
                let mut command = pinned(
                    cpu,
                    Path::new("nginx"),
                    &["-p", dir.to_str().unwrap_or("."), "-c", config.to_str().unwrap_or("")],
                );
                command.stderr(Stdio::null());
                command
            }
            System::Varnish => {
                let vcl = dir.join("default.vcl");
                std::fs::write(&vcl, varnish_vcl(origin))?;
                let mut command = pinned(
                    cpu,
                    Path::new("varnishd"),
                    &[
                        "-F",
                        "-a",
                        &addr.to_string(),
                        "-f",
                        vcl.to_str().unwrap_or(""),
                        "-s",
                        "malloc,3G",
                        "-n",
                        dir.join("varnish").to_str().unwrap_or(""),
                        "-p",
                        "default_ttl=3600",
                    ],
                );
                command.stderr(Stdio::null());
                command
            }
        };
        let guard = Guard::spawn(command)?;
        wait_listening(addr)?;
        if let Some(tls) = tls {
            wait_listening(tls)?;
        }
        Ok(Server { addr, tls, guard, dir })
    }

    /// CPU seconds used by the server and all its descendants.
    fn cpu_seconds(&self) -> f64 {
        process_tree_cpu(self.guard.0.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Varnish and nginx run workers as children: stop the whole tree.
        for pid in descendants(self.guard.0.id()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(nginx_cache_dir(self.addr));
    }
}

/// Where nginx keeps its cache: tmpfs when there is one.
fn nginx_cache_dir(addr: SocketAddr) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("tern-bench-nginx-{}-{}", std::process::id(), addr.port()))
}

fn nginx_config(
    dir: &Path,
    cache: &Path,
    addr: SocketAddr,
    origin: SocketAddr,
    tls: Option<(SocketAddr, &BenchCert)>,
) -> String {
    let cache = cache.display();
    let dir = dir.display();
    // The same certificate, protocols and ALPN (h2, http/1.1) as tern's listener; session resumption off
    // on both (tern keeps no session cache), so every new connection is a full handshake.
    let tls_listen = match tls {
        Some((tls, cert)) => format!(
            "listen {tls} ssl http2;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
             ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache off;\n    ssl_session_tickets off;\n    ",
            cert.cert.display(),
            cert.key.display()
        ),
        None => String::new(),
    };
    format!(
        "worker_processes 1;\ndaemon off;\nmaster_process on;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
           fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
           proxy_cache_path {cache} levels=1:2 keys_zone=tern:64m max_size=3g inactive=1h use_temp_path=off;\n\
           upstream origin {{ server {origin}; keepalive 64; }}\n\
           server {{\n    listen {addr};\n    {tls_listen}location / {{\n      proxy_pass http://origin;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n      proxy_cache tern;\n      proxy_cache_lock on;\n\
               add_header X-Cache-Status $upstream_cache_status;\n    }}\n  }}\n}}\n"
    )
}

fn varnish_vcl(origin: SocketAddr) -> String {
    format!(
        "vcl 4.1;\nbackend default {{ .host = \"{}\"; .port = \"{}\"; }}\n",
        origin.ip(),
        origin.port()
    )
}

/// Hits over new connections: every request closes its connection, so with TLS each is a full handshake
/// (requests/s = handshakes/s).
fn new_connection_script(size: u64, objects: u64) -> String {
    format!(
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format(\"GET\", \"/obj/{size}/\" .. (counter % {objects}), {{[\"Connection\"] = \"close\"}})\nend\n"
    )
}

fn hit_script(size: u64, objects: u64) -> String {
    format!(
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format(\"GET\", \"/obj/{size}/\" .. (counter % {objects}))\nend\n"
    )
}

fn miss_script(round: usize, system: System, run: &str) -> String {
    // Every request names a new object, so every request is a miss.
    format!(
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  return wrk.format(\"GET\", \"/obj/1024/m{}-{}-{run}-\" .. counter)\nend\n",
        round,
        system.name()
    )
}

fn write_script(work: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = work.join(format!("{name}.lua"));
    std::fs::write(&path, text)?;
    Ok(path)
}

fn warm(addr: SocketAddr, size: u64, objects: u64) -> Result<()> {
    for _ in 0..2 {
        for n in 0..objects {
            http(addr, "GET", &format!("/obj/{size}/{n}"), "")?;
        }
    }
    Ok(())
}

fn origin_count(origin: SocketAddr) -> Result<u64> {
    let body = http(origin, "GET", "/__count", "")?;
    let body = body.trim();
    body.parse().with_context(|| format!("origin count: `{body}`"))
}

/// A minimal blocking HTTP/1.1 exchange (one request, `Connection: close`); returns the body. For the
/// benchmarks' small control requests, not for load.
pub(crate) fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    // Bodies that are not text (a warmed object) are only discarded.
    let response = String::from_utf8_lossy(&response);
    let (_, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("the answer from {addr} has no body"))?;
    Ok(body.to_string())
}

pub(crate) struct Measured {
    pub(crate) rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    pub(crate) requests: f64,
}

impl Measured {
    fn into_sample(self, round: usize, system: System, scenario: String, cpu: f64, origin_requests: u64) -> Sample {
        Sample {
            round,
            system,
            scenario,
            rps: self.rps,
            p50_ms: self.p50_ms,
            p99_ms: self.p99_ms,
            cpu_per_10k: if self.requests > 0.0 {
                cpu / self.requests * 10_000.0
            } else {
                0.0
            },
            origin_requests,
        }
    }
}

fn wrk_url(options: &EdgeBench, cpu: &str, url: &str, script: &Path) -> Result<Measured> {
    let output = Command::new("taskset")
        .args(["-c", cpu, "wrk"])
        .arg(format!("-t{}", options.threads))
        .arg(format!("-c{}", options.connections))
        .arg(format!("-d{}s", options.duration.as_secs()))
        .args(["--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    parse_wrk(&text)
}

pub(crate) fn parse_wrk(text: &str) -> Result<Measured> {
    let mut rps = None;
    let mut requests = None;
    let mut p50 = None;
    let mut p99 = None;
    for line in text.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            rps = value.trim().parse::<f64>().ok();
        } else if let Some(value) = line.strip_prefix("50%") {
            p50 = parse_duration_ms(value.trim());
        } else if let Some(value) = line.strip_prefix("99%") {
            p99 = parse_duration_ms(value.trim());
        } else if line.contains("requests in") {
            requests = line.split_whitespace().next().and_then(|n| n.parse::<f64>().ok());
        }
    }
    match (rps, p50, p99, requests) {
        (Some(rps), Some(p50_ms), Some(p99_ms), Some(requests)) => Ok(Measured {
            rps,
            p50_ms,
            p99_ms,
            requests,
        }),
        _ => bail!("cannot read wrk's output:\n{text}"),
    }
}

fn parse_duration_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|n| n * factor)
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields after it are space-separated.
    let after = text.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_string).collect())
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

fn descendants(root: u32) -> Vec<u32> {
    let mut all = vec![root];
    let mut frontier = vec![root];
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default();
    while let Some(parent) = frontier.pop() {
        for &pid in &pids {
            if parent_of(pid) == Some(parent) && !all.contains(&pid) {
                all.push(pid);
                frontier.push(pid);
            }
        }
    }
    all
}

/// utime + stime of a process and its descendants, in seconds.
pub(crate) fn process_tree_cpu(root: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    descendants(root)
        .into_iter()
        .filter_map(stat_fields)
        .map(|fields| {
            let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            (utime + stime) / ticks
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:8080\n  1 threads and 64 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   580.12us  120.11us   4.00ms   90.00%\n  Latency Distribution\n     50%  560.00us\n     75%  600.00us\n     90%  700.00us\n     99%    1.20ms\n  1100000 requests in 10.00s, 1.20GB read\nRequests/sec: 110000.00\nTransfer/sec:    123.00MB\n";
        let measured = parse_wrk(text).expect("parses");
        assert_eq!(measured.rps, 110000.0);
        assert!((measured.p50_ms - 0.56).abs() < 1e-9);
        assert!((measured.p99_ms - 1.2).abs() < 1e-9);
        assert_eq!(measured.requests, 1_100_000.0);
    }
}
