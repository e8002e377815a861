//! `tern-lab bench mover`: the content mover against rsync. A synthetic site (by default 10,000 files,
//! about 500 MB: HTML-like text and incompressible images) is published from a `mover` host to N node hosts,
//! then changed (about 2% of its bytes rewritten, in one file of ten) and published again. The same two
//! steps are done with `rsync -a` (Debian package, to an rsync daemon on each node) to the nodes one after
//! the other, and to all of them at once. For each: bytes leaving the source, bytes each node received, and
//! the time until every node has the new tree.
//!
//! tern's figures come from the mover's job record (the assignment bytes sent to each node; the time is
//! from the job's submission to its commit on every node); rsync's from `--stats` ("Total bytes sent") and
//! the wall time of the rsync processes. The change step is repeated (`--rounds`, a new change each time)
//! and the median reported.
//!
//! Every tree (staging, the mover's data, each node's copies) lives on a tmpfs mounted for the run, unless
//! `--work` names a directory. Why: this lab's disk is an ext4 without a journal, where creating a file
//! scans past every inode deleted in the last minutes (`recently_deleted` in the kernel's inode allocator);
//! whichever method ran after a large deletion (a previous run's cleanup, a build) was measured at up to
//! twice its time. On the tmpfs both methods write to the same memory-backed file system, with no history.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::topology::{HostProcess, LabSpec, which};

/// Options of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct MoverBench {
    /// Node hosts.
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
    /// Files in the synthetic site.
    #[arg(long, default_value_t = 10_000)]
    pub files: usize,
    /// Bytes of the synthetic site.
    #[arg(long, default_value_t = 500_000_000)]
    pub bytes: u64,
    /// Share of the bytes the change rewrites.
    #[arg(long, default_value_t = 0.02)]
    pub change: f64,
    /// Times the change step is measured (a new change each time); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Put the trees under DIR instead of a tmpfs mounted for the run (the lab disk's inode allocator
    /// makes timings depend on what was deleted in the last minutes; see the module docs).
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Log filter of the mover and the nodes, e.g. `info` or `info,tern_node=debug`.
    #[arg(long, default_value = "warn")]
    pub log: String,
    /// Measure tern only: no rsync runs.
    #[arg(long)]
    pub tern_only: bool,
    /// The tern binary (default: the release build next to this program).
    #[arg(long)]
    pub tern: Option<PathBuf>,
    /// Results directory.
    #[arg(long, default_value = "results/mover")]
    pub out: PathBuf,
}

/// One measured transfer.
#[derive(Debug, Clone)]
struct Transfer {
    step: &'static str,
    round: usize,
    method: &'static str,
    seconds: f64,
    source_bytes: u64,
    per_node: Vec<u64>,
}

/// Runs the benchmark and prints its figures.
pub fn run(options: &MoverBench) -> Result<()> {
    let tern = crate::bench::tern_binary(options.tern.as_deref())?;
    let tern = tern.to_str().context("tern path is not UTF-8")?.to_string();
    if which("rsync").is_none() && !options.tern_only {
        crate::bench::apt_install(&["rsync"])?;
    }
    let work = match &options.work {
        Some(dir) => WorkArea::directory(dir.join(format!("tern-mover-bench-{}", std::process::id())))?,
        None => WorkArea::tmpfs(options)?,
    };
    run_in(options, &tern, &work.path)
}

/// The directory holding every tree of a run; removed (and unmounted) at the end.
struct WorkArea {
    path: PathBuf,
    mounted: bool,
}

impl WorkArea {
    fn directory(path: PathBuf) -> Result<WorkArea> {
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(WorkArea { path, mounted: false })
    }

    /// A tmpfs large enough for staging, the mover's copies and three copies per node (tern, rsync
    /// sequential, rsync parallel), with a margin; refused when the machine lacks the memory.
    fn tmpfs(options: &MoverBench) -> Result<WorkArea> {
        let needed = options.bytes * (3 * options.nodes as u64 + 4) + (1 << 30);
        let available = mem_available().unwrap_or(0);
        if needed > available {
            bail!(
                "the trees need about {} GB of tmpfs and {} GB of memory is available: use fewer nodes or bytes, \
                 or put the trees on disk with --work DIR",
                needed >> 30,
                available >> 30
            );
        }
        let path = std::env::temp_dir().join(format!("tern-mover-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={needed}"), "tern-mover-bench"])
            .arg(&path)
            .status()
            .context("run mount")?;
        if !status.success() {
            let _ = std::fs::remove_dir(&path);
            bail!("mounting a tmpfs failed (the benchmark runs as root); or put the trees on disk with --work DIR");
        }
        Ok(WorkArea { path, mounted: true })
    }
}

impl Drop for WorkArea {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount").arg(&self.path).status();
            let _ = std::fs::remove_dir(&self.path);
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn run_in(options: &MoverBench, tern: &str, work: &Path) -> Result<()> {
    let names: Vec<String> = (1..=options.nodes).map(|n| format!("n{n}")).collect();
    let mut spec = LabSpec::new().segment("a").host("mover", "a");
    for name in &names {
        spec = spec.host(name, "a");
    }
    let lab = spec.build()?;
    println!(
        "mover benchmark: {} files, {:.0} MB, {} nodes, a {:.0}% change ({} rounds); trees in {}; lab mode {:?}",
        options.files,
        options.bytes as f64 / 1e6,
        options.nodes,
        options.change * 100.0,
        options.rounds,
        work.display(),
        lab.mode()
    );
    let staging = work.join("staging");
    let started = Instant::now();
    let site_bytes = generate(&staging, options.files, options.bytes)?;
    println!(
        "generated the site: {site_bytes} bytes in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let path = |p: &Path| p.to_str().unwrap_or_default().to_string();
    let log = options.log.as_str();
    let mover_addr = lab.host("mover").addr;
    let mut processes: Vec<HostProcess> = Vec::new();
    let mover_data = work.join("mover");
    processes.push(lab.spawn(
        "mover",
        tern,
        &[
            "mover",
            "--listen",
            &format!("{mover_addr}:7000"),
            "--data",
            &path(&mover_data),
            "--log",
            log,
        ],
    )?);
    lab.wait_listening("mover", 7000, Duration::from_secs(20))?;
    let public = mover_data.join("mover.pub");
    for name in &names {
        let addr = lab.host(name).addr;
        let root = work.join(name);
        std::fs::create_dir_all(root.join("seq"))?;
        std::fs::create_dir_all(root.join("par"))?;
        processes.push(lab.spawn(
            name,
            tern,
            &[
                "node",
                "--mover",
                &format!("http://{mover_addr}:7000"),
                "--root",
                &path(&root.join("tern")),
                "--name",
                name,
                "--key",
                &path(&public),
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
        if options.tern_only {
            continue;
        }
        let config = root.join("rsyncd.conf");
        std::fs::write(
            &config,
            format!(
                "use chroot = no\nreverse lookup = no\nuid = root\ngid = root\npid file = {pid}\n[seq]\npath = {seq}\nread only = no\n[par]\npath = {par}\nread only = no\n",
                pid = path(&root.join("rsyncd.pid")),
                seq = path(&root.join("seq")),
                par = path(&root.join("par")),
            ),
        )?;
        processes.push(lab.spawn(
            name,
            "rsync",
            &[
                "--daemon",
                "--no-detach",
                &format!("--config={}", path(&config)),
                &format!("--address={addr}"),
                "--port=8730",
            ],
        )?);
    }
    for name in &names {
        lab.wait_listening(name, 7100, Duration::from_secs(20))?;
        if !options.tern_only {
            lab.wait_listening(name, 8730, Duration::from_secs(20))?;
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

    let mut transfers = Vec::new();
    let steps = std::iter::once(("initial", 0)).chain((1..=options.rounds.max(1)).map(|round| ("change", round)));
    for (step, round) in steps {
        if step == "change" {
            let changed = change(&staging, options.change, round as u64)?;
            println!(
                "round {round}: changed {changed} bytes ({:.2}% of the site)",
                changed as f64 * 100.0 / site_bytes as f64
            );
        }
        let measured = |mut transfer: Transfer| {
            transfer.round = round;
            println!(
                "  {step} {}: {:.2} s, {} bytes per node",
                transfer.method,
                transfer.seconds,
                mean(&transfer.per_node)
            );
            transfer
        };
        settle();
        transfers.push(measured(publish(api, &staging, step)?));
        check_identical(&staging, &names, work, "tern/bench/live")?;
        if options.tern_only {
            continue;
        }
        settle();
        transfers.push(measured(rsync(&lab, &staging, &names, "seq", false, step)?));
        check_identical(&staging, &names, work, "seq")?;
        settle();
        transfers.push(measured(rsync(&lab, &staging, &names, "par", true, step)?));
        check_identical(&staging, &names, work, "par")?;
    }
    drop(processes);
    let summary = summarize(options, site_bytes, &transfers);
    println!("{summary}");
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(options.out.join("summary.md"), &summary)?;
    let mut csv = String::from("step,round,method,seconds,source_bytes,node_bytes_mean,node_bytes_max\n");
    for t in &transfers {
        let _ = writeln!(
            csv,
            "{},{},{},{:.3},{},{},{}",
            t.step,
            t.round,
            t.method,
            t.seconds,
            t.source_bytes,
            mean(&t.per_node),
            t.per_node.iter().max().copied().unwrap_or(0)
        );
    }
    std::fs::write(options.out.join("mover.csv"), csv)?;
    println!("results written to {}", options.out.display());
    Ok(())
}

/// Waits until the machine is quiet (at least 90% idle over half a second; at most a minute), so the
/// background work of one measurement (a node linking its next tree or deleting a superseded version, the
/// kernel freeing a tree) never lands in the next one, whichever method that is.
fn settle() {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some((idle_before, total_before)) = cpu_times() else {
            return;
        };
        std::thread::sleep(Duration::from_millis(500));
        let Some((idle_after, total_after)) = cpu_times() else {
            return;
        };
        let total = total_after.saturating_sub(total_before).max(1);
        if idle_after.saturating_sub(idle_before) * 10 >= total * 9 {
            return;
        }
    }
}

/// (idle, total) jiffies of all CPUs, from the first line of /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((idle, fields.iter().sum()))
}

fn mean(values: &[u64]) -> u64 {
    if values.is_empty() {
        0
    } else {
        values.iter().sum::<u64>() / values.len() as u64
    }
}

/// The measurement of `method` at `step` with the median time (over the rounds).
fn median<'a>(transfers: &'a [Transfer], step: &str, method: &str) -> Option<&'a Transfer> {
    let mut runs: Vec<&Transfer> = transfers
        .iter()
        .filter(|t| t.step == step && t.method == method)
        .collect();
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    runs.get(runs.len() / 2).copied()
}

fn summarize(options: &MoverBench, site_bytes: u64, transfers: &[Transfer]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "content mover vs rsync: {} files, {:.0} MB, {} nodes, {:.0}% of the bytes changed; change: median of {} rounds\n",
        options.files,
        site_bytes as f64 / 1e6,
        options.nodes,
        options.change * 100.0,
        options.rounds.max(1)
    );
    let _ = writeln!(
        text,
        "| step | method | time to all nodes (s) | rounds (s) | bytes leaving the source | bytes per node (mean) | per node (max) |"
    );
    let _ = writeln!(text, "|---|---|---|---|---|---|---|");
    for step in ["initial", "change"] {
        for method in ["tern", "rsync sequential", "rsync parallel"] {
            let Some(t) = median(transfers, step, method) else {
                continue;
            };
            let rounds: Vec<String> = transfers
                .iter()
                .filter(|r| r.step == step && r.method == method)
                .map(|r| format!("{:.2}", r.seconds))
                .collect();
            let _ = writeln!(
                text,
                "| {step} | {method} | {:.2} | {} | {} | {} | {} |",
                t.seconds,
                rounds.join(" "),
                t.source_bytes,
                mean(&t.per_node),
                t.per_node.iter().max().copied().unwrap_or(0)
            );
        }
    }
    for step in ["initial", "change"] {
        if let (Some(tern), Some(parallel)) = (
            median(transfers, step, "tern"),
            median(transfers, step, "rsync parallel"),
        ) {
            let _ = writeln!(
                text,
                "\n{step}: tern/rsync bytes per node {:.3} (target <= 1), tern/parallel rsync time {:.2} (target <= 1)",
                mean(&tern.per_node) as f64 / mean(&parallel.per_node).max(1) as f64,
                tern.seconds / parallel.seconds.max(1e-9)
            );
        }
    }
    text
}

fn publish(api: SocketAddr, staging: &Path, step: &'static str) -> Result<Transfer> {
    let body = serde_json::json!({ "kind": "publish", "site": "bench", "staging": staging.display().to_string() });
    let started = Instant::now();
    let created: serde_json::Value =
        serde_json::from_str(&crate::bench::http(api, "POST", "/api/jobs", &body.to_string())?)?;
    let id = created["id"]
        .as_str()
        .with_context(|| format!("the mover refused the publish: {created}"))?
        .to_string();
    loop {
        let job: serde_json::Value =
            serde_json::from_str(&crate::bench::http(api, "GET", &format!("/api/jobs/{id}"), "")?)?;
        match job["state"].as_str() {
            Some("committed") => {
                let seconds = started.elapsed().as_secs_f64();
                let per_node: Vec<u64> = job["nodes"]
                    .as_array()
                    .map(|nodes| nodes.iter().map(|n| n["bytes"].as_u64().unwrap_or(0)).collect())
                    .unwrap_or_default();
                return Ok(Transfer {
                    step,
                    round: 0,
                    method: "tern",
                    seconds,
                    source_bytes: per_node.iter().sum(),
                    per_node,
                });
            }
            Some("failed" | "refused" | "cancelled") => bail!("the publish did not commit: {job}"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// rsync -a of `staging` to module `module` on every node, one after the other or all at once.
fn rsync(
    lab: &crate::topology::Lab,
    staging: &Path,
    names: &[String],
    module: &str,
    parallel: bool,
    step: &'static str,
) -> Result<Transfer> {
    let source = format!("{}/", staging.display());
    let command = |name: &str| {
        let mut command = lab.command(
            "mover",
            "rsync",
            &[
                "-a",
                "--delete",
                "--stats",
                &source,
                &format!("rsync://{}:8730/{module}/", lab.host(name).addr),
            ],
        );
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    let started = Instant::now();
    let mut outputs = Vec::new();
    if parallel {
        let children: Vec<_> = names
            .iter()
            .map(|name| command(name).spawn())
            .collect::<std::io::Result<_>>()?;
        for child in children {
            outputs.push(child.wait_with_output()?);
        }
    } else {
        for name in names {
            outputs.push(command(name).output()?);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut per_node = Vec::new();
    for output in outputs {
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!("rsync failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        per_node.push(total_bytes_sent(&text).context("rsync --stats printed no `Total bytes sent`")?);
    }
    Ok(Transfer {
        step,
        round: 0,
        method: if parallel { "rsync parallel" } else { "rsync sequential" },
        seconds,
        source_bytes: per_node.iter().sum(),
        per_node,
    })
}

fn total_bytes_sent(stats: &str) -> Option<u64> {
    stats
        .lines()
        .find_map(|line| line.strip_prefix("Total bytes sent:"))
        .map(|n| n.trim().replace(',', ""))
        .and_then(|n| n.parse().ok())
}

/// Every node's copy is byte-identical to staging (same paths, sizes and blake3 hashes).
fn check_identical(staging: &Path, names: &[String], work: &Path, tree: &str) -> Result<()> {
    let digest = |root: &Path| -> Result<Vec<(String, u64, String)>> {
        let snapshot = tern_tree::scan(root, &tern_tree::Snapshot::new())
            .with_context(|| format!("read {}", root.display()))?
            .snapshot;
        Ok(snapshot
            .into_iter()
            .map(|(path, state)| (path, state.len, state.hash))
            .collect())
    };
    let expected = digest(staging)?;
    for name in names {
        let copy = work.join(name).join(tree);
        if digest(&copy)? != expected {
            bail!("{} differs from staging", copy.display());
        }
    }
    Ok(())
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
}

const WORDS: &[&str] = &[
    "<div class=\"post\">",
    "</div>",
    "<p>",
    "</p>",
    "the",
    "content",
    "delivery",
    "network",
    "edge",
    "cache",
    "origin",
    "tern",
    "publish",
    "<a href=\"/archive/",
    "\">",
    "</a>",
    "server",
    "fresh",
    "version",
    "node",
    "assignment",
    "commit",
    "rollback",
    "site",
    "2026",
    "november",
    "article",
    "<li>",
    "</li>",
];

/// `len` bytes of HTML-like text (compresses about as well as real pages) or, for images, random bytes.
fn synthetic(rng: &mut Rng, len: usize, binary: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    if binary {
        while out.len() < len {
            out.extend_from_slice(&rng.next().to_le_bytes());
        }
    } else {
        while out.len() < len {
            let r = rng.next();
            out.extend_from_slice(WORDS[(r % WORDS.len() as u64) as usize].as_bytes());
            out.push(if r >> 60 == 0 { b'\n' } else { b' ' });
            if r >> 56 & 0x7 == 0 {
                out.extend_from_slice((r >> 20 & 0xffff).to_string().as_bytes());
            }
        }
    }
    out.truncate(len);
    out
}

/// Writes the synthetic site; returns its bytes.
fn generate(root: &Path, files: usize, bytes: u64) -> Result<u64> {
    let mut rng = Rng(0x7e57_c0de);
    // Relative sizes: many small pages, some larger ones, a few big images; scaled to `bytes`.
    let weights: Vec<(u64, bool)> = (0..files)
        .map(|n| {
            let r = rng.next();
            match n % 10 {
                0 => (100_000 + r % 900_000, true),
                1..=3 => (20_000 + r % 100_000, false),
                _ => (4_000 + r % 16_000, false),
            }
        })
        .collect();
    let total: u64 = weights.iter().map(|(w, _)| w).sum();
    let mut written = 0;
    for (n, (weight, binary)) in weights.into_iter().enumerate() {
        let len = (weight as u128 * bytes as u128 / total.max(1) as u128) as usize;
        let name = if binary {
            format!("s{:02}/img/p{n}.jpg", n % 50)
        } else {
            format!("s{:02}/page{n}.html", n % 50)
        };
        let path = root.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, synthetic(&mut rng, len, binary))?;
        written += len as u64;
    }
    Ok(written)
}

/// Rewrites a region of one file in ten so that about `share` of the site's bytes change; returns the
/// bytes rewritten.
fn change(root: &Path, share: f64, round: u64) -> Result<u64> {
    let mut rng = Rng(0x00c4_a76e ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    let size = |path: &PathBuf| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let total: u64 = files.iter().map(size).sum();
    // One file in ten (another tenth each round), each rewritten over the same fraction of its length:
    // `share` of all bytes.
    let offset = (round % 10) as usize;
    let chosen: u64 = files.iter().skip(offset).step_by(10).map(size).sum();
    let fraction = (share * total as f64 / chosen.max(1) as f64).min(1.0);
    let mut changed = 0;
    for path in files.iter().skip(offset).step_by(10) {
        let mut content = Vec::new();
        std::fs::File::open(path)?.read_to_end(&mut content)?;
        let region = ((content.len() as f64) * fraction) as usize;
        if region == 0 {
            continue;
        }
        let start = (rng.next() as usize) % (content.len() - region + 1);
        let binary = path.extension().is_some_and(|e| e == "jpg");
        let fresh = synthetic(&mut rng, region, binary);
        content[start..start + region].copy_from_slice(&fresh);
        let mut file = std::fs::File::create(path)?;
        file.write_all(&content)?;
        changed += region as u64;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_stats_are_read() {
        let stats = "Number of files: 10\nTotal bytes sent: 1,234,567\nTotal bytes received: 89\n";
        assert_eq!(total_bytes_sent(stats), Some(1_234_567));
        assert_eq!(total_bytes_sent("nothing"), None);
    }

    #[test]
    fn the_site_has_the_size_asked_for_and_the_change_its_share() {
        let area = tempfile::tempdir().expect("tempdir");
        let written = generate(area.path(), 200, 4_000_000).expect("generate");
        assert!((3_900_000..=4_000_000).contains(&written), "{written}");
        let before = tern_tree::scan(area.path(), &tern_tree::Snapshot::new())
            .expect("scan")
            .snapshot;
        for round in 1..=2 {
            let changed = change(area.path(), 0.02, round).expect("change");
            let share = changed as f64 / written as f64;
            assert!((0.01..0.03).contains(&share), "{share}");
        }
        // Each round changes other files: two rounds touch about a fifth of them.
        let after = tern_tree::scan(area.path(), &before).expect("scan").snapshot;
        let touched = tern_tree::differences(&before, &after).len();
        assert!((30..=50).contains(&touched), "{touched} of 200 files changed");
    }
}
