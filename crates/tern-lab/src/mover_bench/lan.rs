//! `tern-lab bench mover` on one LAN: a `mover` host and N node hosts on one bridge, no rate limits (the
//! machine's cores are the bottleneck). Each round starts from empty nodes and fresh processes: the site is
//! published to them (the initial step), then changed (2% of its bytes, in one file of ten) and published
//! again (the change step); the same two steps with `rsync -a` to the nodes one after the other and all at
//! once. Every figure is the median of the rounds with the minimum and the maximum.
//!
//! tern's figures come from the mover's job record (the assignment bytes sent to each node; the time is
//! from the job's submission to its commit on every node); rsync's from `--stats` ("Total bytes sent") and
//! the wall time of the rsync processes. Beside each measurement the benchmark records what else the
//! machine did: the share of its CPUs busy during the measurement, the share the hypervisor took (steal),
//! the load average before it, the CPU time tern's processes used, and how long it waited for quiet.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::machine::{
    CpuTimes, WorkArea, cpu_seconds_of, load_average, major_faults, memory_handed_back, settle, warm_memory,
};
use super::{MoverBench, mb, rsync, show, site};
use crate::topology::{HostProcess, Lab, LabSpec};

/// The methods, in the order measured.
const METHODS: [&str; 3] = ["tern", "rsync sequential", "rsync parallel"];
const STEPS: [&str; 2] = ["initial", "change"];
const SITE: &str = "bench";

/// One measured transfer and the machine around it.
#[derive(Debug, Clone)]
struct Transfer {
    step: &'static str,
    round: usize,
    method: &'static str,
    seconds: f64,
    source_bytes: u64,
    per_node: Vec<u64>,
    /// Share of the machine's CPUs busy during the measurement.
    busy: f64,
    /// Share the hypervisor took.
    steal: f64,
    /// One-minute load average before it.
    load: f64,
    /// Seconds waited for quiet before it.
    settled: f64,
    /// CPU seconds tern's mover used during it.
    mover_cpu: f64,
    /// CPU seconds tern's nodes used during it, all together.
    nodes_cpu: f64,
    /// Major page faults during it (program text read back from disk).
    major_faults: u64,
    /// tern: from submission to the job's start (scheduling), seconds.
    queued: f64,
    /// Memory warmed right before it (bytes) and the seconds that took ([`warm_memory`]).
    warmed: u64,
    warm_seconds: f64,
    /// Memory the machine handed back to the hypervisor during it, bytes (`None`: not known here).
    handed_back: Option<u64>,
}

/// Runs the one-LAN benchmark.
pub(super) fn run(options: &MoverBench, tern: &str) -> Result<()> {
    let files = options.files.unwrap_or(10_000);
    let bytes = options.bytes.unwrap_or(500_000_000);
    let share = options.change.unwrap_or(0.02);
    let rounds = options.rounds.unwrap_or(5).max(1);
    let nodes = options.nodes.max(1);
    let work = match &options.work {
        Some(dir) => WorkArea::directory(dir.join(format!("tern-mover-bench-{}", std::process::id())))?,
        // Staging, the mover's copies, three copies per node (tern, rsync sequential, rsync parallel) and a
        // margin; each round's copies are removed before the next.
        None => WorkArea::tmpfs(bytes * (3 * nodes as u64 + 4) + (1 << 30))?,
    };
    let names: Vec<String> = (1..=nodes).map(|n| format!("n{n}")).collect();
    let mut spec = LabSpec::new().segment("a").host("mover", "a");
    for name in &names {
        spec = spec.host(name, "a");
    }
    let lab = spec.build()?;
    println!(
        "mover benchmark, one LAN: {files} files, {:.0} MB, {nodes} nodes, a {:.0}% change; {rounds} rounds, each \
         from empty nodes; trees in {}; lab mode {:?}; load average {:.2}",
        mb(bytes as f64),
        share * 100.0,
        work.path.display(),
        lab.mode(),
        load_average()
    );
    let staging = work.path.join("staging");
    let started = Instant::now();
    let site_bytes = site::generate(&staging, files, bytes)?;
    println!(
        "generated the site: {site_bytes} bytes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let logs = work.path.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut transfers = Vec::new();
    for round in 1..=rounds {
        let area = work.path.join(format!("round{round}"));
        let fleet = Fleet::start(&lab, tern, &options.log, &area, &logs, &names, !options.tern_only)?;
        for step in STEPS {
            if step == "change" {
                if options.ballast_gb > 0 {
                    write_ballast(&area.join("ballast"), options.ballast_gb)?;
                }
                let changed = site::change(&staging, share, round as u64, 10)?;
                println!(
                    "round {round}: changed {changed} bytes ({:.2}% of the site)",
                    changed as f64 * 100.0 / site_bytes as f64
                );
            }
            for method in METHODS {
                if options.tern_only && method != "tern" {
                    continue;
                }
                let settled = settle().as_secs_f64();
                // What the step fills: tern a spool and a tree per node (rsync a tree and its temporary
                // files); a change rewrites one file of ten.
                let footprint = match step {
                    "initial" => site_bytes * (2 * nodes as u64 + 1),
                    _ => site_bytes * nodes as u64 / 5,
                };
                let (warmed, warm_seconds) = if options.cold_memory {
                    (0, 0.0)
                } else {
                    warm_memory(&work.path, footprint)
                };
                let handed_back_before = memory_handed_back();
                let load = load_average();
                let cpu_before = CpuTimes::read();
                let faults_before = major_faults();
                let (mover_before, nodes_before) = (cpu_seconds_of("tern", "mover"), cpu_seconds_of("tern", "node"));
                let mut transfer = match method {
                    "tern" => fleet.publish(&staging, step)?,
                    "rsync sequential" => rsync_transfer(&lab, &staging, &names, "seq", false, step)?,
                    _ => rsync_transfer(&lab, &staging, &names, "par", true, step)?,
                };
                if let (Some(before), Some(after)) = (cpu_before, CpuTimes::read()) {
                    let shares = after.since(&before);
                    transfer.busy = shares.busy;
                    transfer.steal = shares.steal;
                }
                transfer.mover_cpu = cpu_seconds_of("tern", "mover") - mover_before;
                transfer.nodes_cpu = cpu_seconds_of("tern", "node") - nodes_before;
                transfer.major_faults = major_faults().saturating_sub(faults_before);
                transfer.warmed = warmed;
                transfer.warm_seconds = warm_seconds;
                transfer.handed_back = handed_back_before
                    .zip(memory_handed_back())
                    .map(|(before, after)| after.saturating_sub(before));
                transfer.round = round;
                transfer.load = load;
                transfer.settled = settled;
                println!(
                    "  {step} {method}: {:.2} s, {} bytes per node; CPU {:.0}% busy, steal {:.1}%, load {:.2} before, \
                     tern CPU s: mover {:.2}, nodes {:.2}; {} major faults; memory warmed before: {:.1} GB in \
                     {:.1} s, handed back during: {}",
                    transfer.seconds,
                    mean(&transfer.per_node),
                    transfer.busy * 100.0,
                    transfer.steal * 100.0,
                    load,
                    transfer.mover_cpu,
                    transfer.nodes_cpu,
                    transfer.major_faults,
                    transfer.warmed as f64 / 1e9,
                    transfer.warm_seconds,
                    transfer
                        .handed_back
                        .map_or("unknown".to_string(), |bytes| format!("{:.1} GB", bytes as f64 / 1e9)),
                );
                let copies: Vec<PathBuf> = names.iter().map(|name| fleet.copy(name, method)).collect();
                site::check_identical(&staging, &copies)?;
                transfers.push(transfer);
            }
        }
        drop(fleet);
        let removing = Instant::now();
        std::fs::remove_dir_all(&area)?;
        println!(
            "round {round}: its trees removed in {:.1} s",
            removing.elapsed().as_secs_f64()
        );
    }
    if let Some(keep) = std::env::var_os(crate::fleet::KEEP_LOGS) {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep)?;
        for entry in std::fs::read_dir(&logs)? {
            let entry = entry?;
            std::fs::copy(entry.path(), keep.join(entry.file_name()))?;
        }
        println!("logs copied to {}", keep.display());
    }
    let summary = summarize(files, nodes, share, rounds, site_bytes, &transfers);
    println!("{summary}");
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(options.out.join("summary.md"), &summary)?;
    let mut csv = String::from(
        "step,round,method,seconds,source_bytes,node_bytes_mean,node_bytes_max,cpu_busy,cpu_steal,load,settled,mover_cpu_s,nodes_cpu_s,major_faults,queued,warmed_bytes,warm_s,handed_back_bytes\n",
    );
    for t in &transfers {
        let _ = writeln!(
            csv,
            "{},{},{},{:.3},{},{},{},{:.3},{:.4},{:.2},{:.1},{:.2},{:.2},{},{:.3},{},{:.2},{}",
            t.step,
            t.round,
            t.method,
            t.seconds,
            t.source_bytes,
            mean(&t.per_node),
            t.per_node.iter().max().copied().unwrap_or(0),
            t.busy,
            t.steal,
            t.load,
            t.settled,
            t.mover_cpu,
            t.nodes_cpu,
            t.major_faults,
            t.queued,
            t.warmed,
            t.warm_seconds,
            t.handed_back.map_or(String::new(), |bytes| bytes.to_string()),
        );
    }
    std::fs::write(options.out.join("mover.csv"), csv)?;
    println!("results written to {}", options.out.display());
    Ok(())
}

/// A round's processes: the mover, a node on each node host, and (unless tern only) an rsync daemon beside
/// each node. Dropping it stops them.
struct Fleet {
    area: PathBuf,
    api: SocketAddr,
    _processes: Vec<HostProcess>,
}

impl Fleet {
    fn start(
        lab: &Lab,
        tern: &str,
        log: &str,
        area: &Path,
        logs: &Path,
        names: &[String],
        rsync: bool,
    ) -> Result<Fleet> {
        let path = |p: &Path| p.to_str().map(str::to_string).context("path is not UTF-8");
        let round = area.file_name().and_then(|n| n.to_str()).unwrap_or("round");
        let spawn = |host: &str, args: &[&str]| -> Result<HostProcess> {
            let file = std::fs::File::create(logs.join(format!("{round}-{host}.log")))?;
            let child = lab
                .command(host, tern, args)
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .spawn()?;
            Ok(HostProcess {
                child,
                host: host.to_string(),
            })
        };
        let mover_addr = lab.host("mover").addr;
        let mover_data = area.join("mover");
        let mut processes = vec![spawn(
            "mover",
            &[
                "mover",
                "--listen",
                &format!("{mover_addr}:7000"),
                "--data",
                &path(&mover_data)?,
                "--log",
                log,
            ],
        )?];
        lab.wait_listening("mover", 7000, Duration::from_secs(20))?;
        let public = mover_data.join("mover.pub");
        for name in names {
            let addr = lab.host(name).addr;
            let root = area.join(name);
            std::fs::create_dir_all(&root)?;
            processes.push(spawn(
                name,
                &[
                    "node",
                    "--mover",
                    &format!("http://{mover_addr}:7000"),
                    "--root",
                    &path(&root.join("tern"))?,
                    "--name",
                    name,
                    "--key",
                    &path(&public)?,
                    "--listen",
                    &format!("{addr}:7100"),
                    "--log",
                    log,
                    // A superseded version is deleted right after the switch, so `settle` waits for it
                    // rather than a timer firing in the middle of a later measurement.
                    "--superseded-grace",
                    "0s",
                ],
            )?);
            if rsync {
                let modules = [("seq", root.join("seq")), ("par", root.join("par"))];
                let modules: Vec<(&str, &Path)> = modules.iter().map(|(m, p)| (*m, p.as_path())).collect();
                processes.push(rsync::daemon(lab, name, &root, &modules)?);
            }
        }
        for name in names {
            lab.wait_listening(name, 7100, Duration::from_secs(20))?;
            if rsync {
                lab.wait_listening(name, rsync::PORT, Duration::from_secs(20))?;
            }
        }
        let api = SocketAddr::from((mover_addr, 7000));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes: serde_json::Value = serde_json::from_str(&crate::bench::http(api, "GET", "/api/nodes", "")?)?;
            if nodes.as_array().map(Vec::len) == Some(names.len()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the nodes did not register with the mover");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Fleet {
            area: area.to_path_buf(),
            api,
            _processes: processes,
        })
    }

    /// Where `method` put node `name`'s copy.
    fn copy(&self, name: &str, method: &str) -> PathBuf {
        let root = self.area.join(name);
        match method {
            "tern" => root.join("tern").join(SITE).join("live"),
            "rsync sequential" => root.join("seq"),
            _ => root.join("par"),
        }
    }

    fn publish(&self, staging: &Path, step: &'static str) -> Result<Transfer> {
        let body = serde_json::json!({ "kind": "publish", "site": SITE, "staging": staging.display().to_string() });
        let started = Instant::now();
        let created: serde_json::Value =
            serde_json::from_str(&crate::bench::http(self.api, "POST", "/api/jobs", &body.to_string())?)?;
        let id = created["id"]
            .as_str()
            .with_context(|| format!("the mover refused the publish: {created}"))?
            .to_string();
        loop {
            let job: serde_json::Value =
                serde_json::from_str(&crate::bench::http(self.api, "GET", &format!("/api/jobs/{id}"), "")?)?;
            match job["state"].as_str() {
                Some("committed") => {
                    let seconds = started.elapsed().as_secs_f64();
                    let per_node: Vec<u64> = job["nodes"]
                        .as_array()
                        .map(|nodes| nodes.iter().map(|n| n["bytes"].as_u64().unwrap_or(0)).collect())
                        .unwrap_or_default();
                    let queued = match (job["started_ms"].as_u64(), job["created_ms"].as_u64()) {
                        (Some(started), Some(created)) => started.saturating_sub(created) as f64 / 1000.0,
                        _ => 0.0,
                    };
                    return Ok(Transfer {
                        source_bytes: per_node.iter().sum(),
                        queued,
                        ..Transfer::new(step, "tern", seconds, per_node)
                    });
                }
                Some("failed" | "refused" | "cancelled") => bail!("the publish did not commit: {job}"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Transfer {
    /// The share of the machine's CPUs busy with something other than tern while tern was measured
    /// (another program, the kernel's work for other processes): what slowed tern down from outside.
    fn others(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let tern = (self.mover_cpu + self.nodes_cpu) / (cores * self.seconds.max(1e-9));
        (self.busy - tern).max(0.0)
    }

    fn new(step: &'static str, method: &'static str, seconds: f64, per_node: Vec<u64>) -> Transfer {
        Transfer {
            step,
            round: 0,
            method,
            seconds,
            source_bytes: per_node.iter().sum(),
            per_node,
            busy: 0.0,
            steal: 0.0,
            load: 0.0,
            settled: 0.0,
            mover_cpu: 0.0,
            nodes_cpu: 0.0,
            major_faults: 0,
            queued: 0.0,
            warmed: 0,
            warm_seconds: 0.0,
            handed_back: None,
        }
    }
}

fn rsync_transfer(
    lab: &Lab,
    staging: &Path,
    names: &[String],
    module: &str,
    parallel: bool,
    step: &'static str,
) -> Result<Transfer> {
    let run = rsync::run(lab, "mover", staging, names, module, parallel, false)?;
    let method = if parallel { "rsync parallel" } else { "rsync sequential" };
    Ok(Transfer::new(step, method, run.seconds, run.bytes()))
}

/// Writes `gb` GB of incompressible bytes to `path` (removed with the round's trees).
fn write_ballast(path: &Path, gb: u64) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..gb * 1024 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        file.write_all(&block)?;
    }
    file.flush()?;
    Ok(())
}

fn mean(values: &[u64]) -> u64 {
    if values.is_empty() {
        0
    } else {
        values.iter().sum::<u64>() / values.len() as u64
    }
}

fn summarize(files: usize, nodes: usize, share: f64, rounds: usize, site_bytes: u64, transfers: &[Transfer]) -> String {
    let of = |step: &str, method: &str| -> Vec<&Transfer> {
        transfers
            .iter()
            .filter(|t| t.step == step && t.method == method)
            .collect()
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "content mover vs rsync on one LAN: {files} files, {:.0} MB, {nodes} nodes, {:.0}% of the bytes changed; \
         {rounds} rounds, each from empty nodes; median (min-max)\n",
        mb(site_bytes as f64),
        share * 100.0,
    );
    if transfers.iter().all(|t| t.warmed == 0) {
        let _ = writeln!(
            text,
            "Memory not warmed before the measurements (--cold-memory): figures include this VM's hypervisor \
             faulting back memory it took.\n"
        );
    } else {
        for step in STEPS {
            let warm: Vec<&Transfer> = transfers.iter().filter(|t| t.step == step).collect();
            let gb: Vec<f64> = warm.iter().map(|t| t.warmed as f64 / 1e9).collect();
            let seconds: Vec<f64> = warm.iter().map(|t| t.warm_seconds).collect();
            let back: Vec<f64> = warm
                .iter()
                .filter_map(|t| t.handed_back)
                .map(|b| b as f64 / 1e9)
                .collect();
            let _ = writeln!(
                text,
                "{step}: memory warmed right before each measurement: {} GB in {} s; handed back to the \
                 hypervisor during one: {} GB",
                show(&gb, 1),
                show(&seconds, 1),
                if back.is_empty() {
                    "unknown".to_string()
                } else {
                    show(&back, 2)
                },
            );
        }
        let _ = writeln!(text);
    }
    let _ = writeln!(
        text,
        "| step | method | time to all nodes (s) | rounds (s) | bytes leaving the source (MB) | bytes per node (MB) | machine CPU busy | tern CPU, mover / nodes (s) | CPU others took |"
    );
    let _ = writeln!(text, "|---|---|---|---|---|---|---|---|---|");
    for step in STEPS {
        for method in METHODS {
            let runs = of(step, method);
            if runs.is_empty() {
                continue;
            }
            let seconds: Vec<f64> = runs.iter().map(|t| t.seconds).collect();
            let rounds: Vec<String> = seconds.iter().map(|s| format!("{s:.2}")).collect();
            let source: Vec<f64> = runs.iter().map(|t| mb(t.source_bytes as f64)).collect();
            let per_node: Vec<f64> = runs.iter().map(|t| mb(mean(&t.per_node) as f64)).collect();
            let busy: Vec<f64> = runs.iter().map(|t| t.busy * 100.0).collect();
            let mover_cpu: Vec<f64> = runs.iter().map(|t| t.mover_cpu).collect();
            let nodes_cpu: Vec<f64> = runs.iter().map(|t| t.nodes_cpu).collect();
            let others: Vec<f64> = runs.iter().map(|t| t.others() * 100.0).collect();
            let _ = writeln!(
                text,
                "| {step} | {method} | {} | {} | {} | {} | {}% | {} | {} |",
                show(&seconds, 2),
                rounds.join(" "),
                show(&source, 1),
                show(&per_node, 2),
                show(&busy, 0),
                if method == "tern" {
                    format!("{} / {}", show(&mover_cpu, 2), show(&nodes_cpu, 2))
                } else {
                    "-".into()
                },
                if method == "tern" {
                    format!("{}%", show(&others, 0))
                } else {
                    "-".into()
                },
            );
        }
    }
    let _ = writeln!(text);
    for step in STEPS {
        let tern = of(step, "tern");
        let parallel = of(step, "rsync parallel");
        let ratios: Vec<f64> = tern
            .iter()
            .filter_map(|t| {
                parallel
                    .iter()
                    .find(|p| p.round == t.round)
                    .map(|p| t.seconds / p.seconds.max(1e-9))
            })
            .collect();
        let bytes: Vec<f64> = tern
            .iter()
            .filter_map(|t| {
                parallel
                    .iter()
                    .find(|p| p.round == t.round)
                    .map(|p| mean(&t.per_node) as f64 / mean(&p.per_node).max(1) as f64)
            })
            .collect();
        if ratios.is_empty() {
            continue;
        }
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let _ = writeln!(
            text,
            "{step}: tern/parallel rsync time {} (rounds {}), bytes per node {} (targets <= 1)",
            show(&ratios, 2),
            each.join(" "),
            show(&bytes, 3)
        );
    }
    text
}
