//! `tern-lab bench mover --segments S --nodes-per-segment M`: the store-and-forward tree (seed 004) against
//! the star and parallel rsync, on S LAN segments of M nodes and a mover in a segment of its own, every
//! host's link limited to `--rate-mbit` with `tc tbf`. The nodes of each segment elect their group leader on
//! a multicast control channel (the seed's timers ten times faster, `tern node --discovery-speed 10`).
//!
//! The site (1,000 files, 45 MB by default) is published to the nodes once through the tree, and copied to
//! each node's rsync module. Then each measurement publishes a redesign of it (60% of every file rewritten,
//! a new one each time) by one method: the tree (`tern mover --delivery tree`), the star (`--delivery star`:
//! the mover sends every node its own copy) or `rsync -a` to every node at once; and each again with one
//! group leader killed (`kill -9`) once it has received half a copy (the tree: the first leader to have a
//! third of one). Figures, as the median of the rounds with their minimum and maximum:
//!
//! - **bytes leaving the mover**: the kernel's counter of the mover's link (frames, with every header),
//!   and tern's own counter (`tern_mover_sent_bytes`) or rsync's `--stats`; in copies of the assignment S;
//! - **every leader holds it**: until the link of every segment's leader (after a kill, the new leader) has
//!   received S bytes since the start (headers count too, so this is at most a few percent early), or for
//!   rsync until the rsync to each leader's host ended;
//! - **every node committed**: until the `live` link of every running node names the new version (read on
//!   the file system, which this machine shares with every host), or for rsync until the last rsync ended.
//!
//! Targets (issue 13): the mover's egress at most 2 copies (the star: one per node), every leader holding
//! it within 3 × S/B, every node committed in at most a quarter of the star's time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::machine::{CpuTimes, WorkArea, load_average, settle};
use super::{MoverBench, mb, rsync, show, site};
use crate::fleet::{Fleet, FleetSpec};
use crate::topology::HostProcess;

const SITE: &str = "www";
/// The seed's election and registration timers, this many times faster.
const DISCOVERY_SPEED: u32 = 10;
/// Longest one measurement may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
/// The multicast data channel of every segment with `--data-channel` (multicast stays inside a segment's
/// bridge, so the segments can share one group).
const DATA_CHANNEL: &str = "239.192.77.4:7300";
/// How often link counters and `live` links are sampled.
const SAMPLE: Duration = Duration::from_millis(20);

/// One measurement.
#[derive(Debug, Clone)]
struct Measured {
    method: &'static str,
    killed: Option<String>,
    round: usize,
    /// The assignment's size (tern), or the mean bytes rsync sent a node.
    size: u64,
    /// Bytes the mover's link sent (kernel counter).
    link_bytes: u64,
    /// Bytes the sender counted itself: tern's `sent_bytes`, or the sum of rsync's `Total bytes sent`.
    counted_bytes: u64,
    /// Until every segment's leader held it.
    leaders_seconds: Option<f64>,
    /// Until every running node committed.
    commit_seconds: f64,
    /// Machine CPU busy share.
    busy: f64,
    /// How the job ended (tern) and what it said.
    outcome: String,
}

struct Bench<'a> {
    options: &'a MoverBench,
    fleet: Fleet,
    delivery: &'static str,
    staging_tern: PathBuf,
    staging_rsync: PathBuf,
    rsync_daemons: BTreeMap<String, HostProcess>,
    share: f64,
    changes: u64,
    /// The last assignment's size, for the kill triggers.
    last_size: u64,
}

/// Runs the segments benchmark.
pub(super) fn run(options: &MoverBench, tern: &str, segments: usize) -> Result<()> {
    let files = options.files.unwrap_or(1_000);
    let bytes = options.bytes.unwrap_or(45_000_000);
    let share = options.change.unwrap_or(0.6);
    let rounds = options.rounds.unwrap_or(3).max(1);
    let per_segment = options.nodes_per_segment.max(1);
    let nodes = segments * per_segment;
    let work = match &options.work {
        Some(dir) => WorkArea::directory(dir.join(format!("tern-mover-bench-{}", std::process::id())))?,
        // Two stagings and the mover's copies; per node tern's live, backup and temp trees (a redesign
        // rewrites every file, so none is shared), its spool, and the rsync copy; a margin.
        None => WorkArea::tmpfs(bytes * (5 * nodes as u64 + 8) + (1 << 30))?,
    };
    let spec = FleetSpec {
        tern: PathBuf::from(tern),
        work: work.path.join("fleet"),
        segments,
        nodes_per_segment: per_segment,
        rate_mbit: Some(options.rate_mbit),
        discovery: true,
        discovery_speed: DISCOVERY_SPEED,
        quorum: Some(nodes.saturating_sub(1).max(1)),
        log: options.log.clone(),
    };
    println!(
        "mover benchmark, segments: {segments} x {per_segment} nodes, every link {} Mbit/s; a site of {files} files, \
         {:.0} MB, each change rewriting {:.0}% of every file; {rounds} rounds; trees in {}; load average {:.2}",
        options.rate_mbit,
        mb(bytes as f64),
        share * 100.0,
        work.path.display(),
        load_average()
    );
    let started = Instant::now();
    // The data channel's rate: 90% of the link, leaving room for the control channel and reports.
    let node_args: Vec<String> = if options.data_channel {
        vec![
            "--data-channel".into(),
            DATA_CHANNEL.into(),
            "--data-rate".into(),
            (u64::from(options.rate_mbit) * 9 / 10).max(1).to_string(),
            "--data-report-interval".into(),
            "100ms".into(),
            "--data-report-delay".into(),
            "100ms".into(),
        ]
    } else {
        Vec::new()
    };
    let fleet = Fleet::start_with(spec, "tree", &node_args)?;
    fleet.wait_registered(nodes, Duration::from_secs(120))?;
    let leaders = fleet.wait_leaders(Duration::from_secs(120))?;
    println!(
        "{nodes} nodes and the mover started, leaders elected in {:.1} s: {leaders:?}",
        started.elapsed().as_secs_f64()
    );
    let staging_tern = work.path.join("staging-tern");
    let site_bytes = site::generate(&staging_tern, files, bytes)?;
    let staging_rsync = work.path.join("staging-rsync");
    copy_tree(&staging_tern, &staging_rsync)?;
    let mut bench = Bench {
        options,
        fleet,
        delivery: "tree",
        staging_tern,
        staging_rsync,
        rsync_daemons: BTreeMap::new(),
        share,
        changes: 0,
        last_size: bytes / 2,
    };
    bench.setup()?;
    let mut measured = Vec::new();
    let kills: &[bool] = if options.no_kill { &[false] } else { &[false, true] };
    for round in 1..=rounds {
        for method in ["tree", "star", "rsync"] {
            if !options.methods.iter().any(|m| m == method) {
                continue;
            }
            for kill in kills {
                let mut result = match method {
                    "rsync" => bench.measure_rsync(*kill)?,
                    "star" => bench.measure_tern("star", *kill)?,
                    _ => bench.measure_tern("tree", *kill)?,
                };
                result.round = round;
                print_one(&result, options.rate_mbit);
                measured.push(result);
            }
        }
    }
    let summary = summarize(options, segments, per_segment, files, site_bytes, rounds, &measured);
    println!("{summary}");
    std::fs::create_dir_all(&options.out)?;
    let name = if options.data_channel {
        format!("segments-{segments}x{per_segment}-multicast")
    } else {
        format!("segments-{segments}x{per_segment}")
    };
    std::fs::write(options.out.join(format!("{name}.md")), &summary)?;
    let mut csv = String::from(
        "round,method,killed,size,link_bytes,counted_bytes,leaders_seconds,commit_seconds,cpu_busy,outcome\n",
    );
    for m in &measured {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{:.3},{:.3},{}",
            m.round,
            m.method,
            m.killed.as_deref().unwrap_or(""),
            m.size,
            m.link_bytes,
            m.counted_bytes,
            m.leaders_seconds.map(|s| format!("{s:.3}")).unwrap_or_default(),
            m.commit_seconds,
            m.busy,
            m.outcome.replace(',', ";")
        );
    }
    std::fs::write(options.out.join(format!("{name}.csv")), csv)?;
    println!("results written to {}", options.out.display());
    Ok(())
}

impl Bench<'_> {
    fn nodes(&self) -> Vec<String> {
        self.fleet.spec.node_names()
    }

    fn rsync_copy(&self, name: &str) -> PathBuf {
        self.fleet.spec.work.join(name).join("rsync")
    }

    /// The site on every node: published once through the tree, and copied into each rsync module.
    fn setup(&mut self) -> Result<()> {
        let started = Instant::now();
        let id = self.fleet.submit_publish(SITE, &self.staging_tern)?;
        let job = self.fleet.wait_job(&id, RUN_TIMEOUT)?;
        if job["state"] != "committed" {
            bail!("the first publish did not commit: {job}");
        }
        println!(
            "the site published to every node through the tree in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        if self.options.methods.iter().any(|m| m == "rsync") {
            for name in self.nodes() {
                copy_tree(&self.staging_rsync, &self.rsync_copy(&name))?;
                self.start_rsync_daemon(&name)?;
            }
            for name in self.nodes() {
                self.fleet
                    .lab
                    .wait_listening(&name, rsync::PORT, Duration::from_secs(20))?;
            }
        }
        Ok(())
    }

    fn start_rsync_daemon(&mut self, name: &str) -> Result<()> {
        let dir = self.fleet.spec.work.join(name);
        let copy = self.rsync_copy(name);
        let daemon = rsync::daemon(&self.fleet.lab, name, &dir, &[("www", copy.as_path())])?;
        self.rsync_daemons.insert(name.to_string(), daemon);
        Ok(())
    }

    fn next_change(&mut self, staging: &Path) -> Result<u64> {
        self.changes += 1;
        site::change(staging, self.share, self.changes, 1)
    }

    /// Bytes each node's link has received, in the order of `nodes`.
    fn received(&self, nodes: &[String]) -> Result<Vec<u64>> {
        nodes
            .iter()
            .map(|name| Ok(self.fleet.lab.link_bytes(name)?.received))
            .collect()
    }

    fn live_target(&self, name: &str) -> Option<PathBuf> {
        std::fs::read_link(self.fleet.live(name, SITE)).ok()
    }

    /// One publish of a new change through `delivery`; with `kill`, a leader is killed mid-run (and
    /// restarted and caught up afterwards).
    fn measure_tern(&mut self, delivery: &'static str, kill: bool) -> Result<Measured> {
        if self.delivery != delivery {
            self.fleet.start_mover(delivery)?;
            self.delivery = delivery;
            self.fleet.wait_leaders(Duration::from_secs(60))?;
        }
        let staging = self.staging_tern.clone();
        self.next_change(&staging)?;
        settle();
        let nodes = self.nodes();
        let leaders = self.leaders()?;
        let before_live: Vec<Option<PathBuf>> = nodes.iter().map(|n| self.live_target(n)).collect();
        let before_rx = self.received(&nodes)?;
        let before_link = self.fleet.lab.link_bytes("mover")?.sent;
        let before_counted = self.fleet.metric("tern_mover_sent_bytes")?;
        let cpu = CpuTimes::read();
        let started = Instant::now();
        let id = self.fleet.submit_publish(SITE, &staging)?;
        let mut samples: Vec<(f64, Vec<u64>)> = Vec::new();
        let mut killed: Option<String> = None;
        let mut commit_seconds = None;
        while started.elapsed() < RUN_TIMEOUT {
            let at = started.elapsed().as_secs_f64();
            let rx: Vec<u64> = self
                .received(&nodes)?
                .iter()
                .zip(&before_rx)
                .map(|(now, before)| now - before)
                .collect();
            if kill && killed.is_none() {
                let victim = victim(&nodes, &rx, &leaders, delivery, self.last_size);
                if let Some(victim) = victim {
                    self.fleet.kill_node(&victim)?;
                    println!("    killed leader {victim} at {at:.2} s");
                    killed = Some(victim);
                }
            }
            samples.push((at, rx));
            let all_switched = nodes
                .iter()
                .zip(&before_live)
                .filter(|(name, _)| self.fleet.running(name))
                .all(|(name, before)| self.live_target(name).is_some_and(|now| Some(&now) != before.as_ref()));
            if all_switched {
                commit_seconds = Some(at);
                break;
            }
            // A job that ended without switching every running node will not switch them any more.
            if samples.len().is_multiple_of(100) {
                let job = self.fleet.job(&id)?;
                if matches!(job["state"].as_str(), Some("failed" | "refused" | "cancelled")) {
                    bail!("the publish ended before every running node committed: {job}");
                }
            }
            std::thread::sleep(SAMPLE);
        }
        let job = self.fleet.wait_job(&id, Duration::from_secs(120))?;
        let shares = cpu.zip(CpuTimes::read()).map(|(b, a)| a.since(&b)).unwrap_or_default();
        let link_bytes = self.fleet.lab.link_bytes("mover")?.sent - before_link;
        let counted_bytes = (self.fleet.metric("tern_mover_sent_bytes")? - before_counted) as u64;
        let Some(commit_seconds) = commit_seconds else {
            bail!("not every node committed within {RUN_TIMEOUT:?}: {job}");
        };
        let size = assignment_size(&self.fleet, &id, &job)?;
        self.last_size = size;
        // The leaders at the end: a killed leader's segment counts its new one.
        let final_leaders: Vec<String> = self
            .fleet
            .segments()?
            .into_values()
            .map(|view| view.leader)
            .filter(|leader| self.fleet.running(leader))
            .collect();
        let leaders_seconds = held_by_all(&nodes, &final_leaders, &samples, size);
        let survivors: Vec<PathBuf> = nodes
            .iter()
            .filter(|name| self.fleet.running(name))
            .map(|name| self.fleet.live(name, SITE))
            .collect();
        site::check_identical(&staging, &survivors)?;
        if let Some(victim) = &killed {
            self.restart_and_catch_up(victim)?;
        }
        Ok(Measured {
            method: delivery,
            killed,
            round: 0,
            size,
            link_bytes,
            counted_bytes,
            leaders_seconds,
            commit_seconds,
            busy: shares.busy,
            outcome: format!(
                "{} {}",
                job["state"].as_str().unwrap_or("?"),
                job["error"].as_str().unwrap_or("")
            ),
        })
    }

    /// Restarts a killed node and waits until its segment lists it and the mover has caught it up.
    fn restart_and_catch_up(&mut self, victim: &str) -> Result<()> {
        let started = Instant::now();
        self.fleet.start_node(victim)?;
        self.fleet.wait_node(victim, Duration::from_secs(30))?;
        let expected = site::digest(&self.staging_tern)?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while site::digest(&self.fleet.live(victim, SITE)).ok().as_ref() != Some(&expected) {
            if Instant::now() > deadline {
                bail!("{victim} was not caught up after its restart");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        self.fleet.wait_leaders(Duration::from_secs(120))?;
        println!(
            "    {victim} restarted and caught up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Segment → its group leader, as the mover last heard.
    fn leaders(&self) -> Result<BTreeMap<String, String>> {
        Ok(self
            .fleet
            .segments()?
            .into_iter()
            .map(|(segment, view)| (segment, view.leader))
            .collect())
    }

    /// One parallel rsync of a new change to every node; with `kill`, a leader host's rsync daemon is
    /// killed mid-run (and restarted, its copy repaired locally, afterwards).
    fn measure_rsync(&mut self, kill: bool) -> Result<Measured> {
        let staging = self.staging_rsync.clone();
        self.next_change(&staging)?;
        settle();
        let nodes = self.nodes();
        let leaders = self.leaders()?;
        let victim = leaders.values().next().cloned().filter(|_| kill);
        let before_rx = self.received(&nodes)?;
        let before_link = self.fleet.lab.link_bytes("mover")?.sent;
        let cpu = CpuTimes::read();
        let threshold = self.last_size / 2;
        let lab = &self.fleet.lab;
        let run = std::thread::scope(|scope| -> Result<rsync::Run> {
            let running = scope.spawn(|| rsync::run(lab, "mover", &staging, &nodes, "www", true, kill));
            if let Some(victim) = &victim {
                let index = nodes.iter().position(|n| n == victim).context("victim")?;
                while !running.is_finished() {
                    let got = lab.link_bytes(victim)?.received - before_rx[index];
                    if got >= threshold {
                        let killed = lab.kill_program(victim, "rsync")?;
                        println!("    killed {killed} rsync processes in leader host {victim}");
                        break;
                    }
                    std::thread::sleep(SAMPLE);
                }
            }
            running
                .join()
                .map_err(|_| anyhow::anyhow!("the rsync thread panicked"))?
        })?;
        let shares = cpu.zip(CpuTimes::read()).map(|(b, a)| a.since(&b)).unwrap_or_default();
        let link_bytes = self.fleet.lab.link_bytes("mover")?.sent - before_link;
        let ended: Vec<(f64, u64)> = run.nodes.iter().flatten().copied().collect();
        let leaders_seconds = nodes
            .iter()
            .zip(&run.nodes)
            .filter(|(name, _)| leaders.values().any(|leader| leader == *name))
            .filter_map(|(_, end)| end.map(|(at, _)| at))
            .fold(None, |latest: Option<f64>, at| Some(latest.map_or(at, |l| l.max(at))));
        let commit_seconds = ended.iter().map(|(at, _)| *at).fold(0.0, f64::max);
        let counted_bytes: u64 = run.bytes().iter().sum();
        let size = counted_bytes / ended.len().max(1) as u64;
        let survivors: Vec<PathBuf> = nodes
            .iter()
            .zip(&run.nodes)
            .filter(|(_, end)| end.is_some())
            .map(|(name, _)| self.rsync_copy(name))
            .collect();
        site::check_identical(&staging, &survivors)?;
        let failed: Vec<&String> = nodes
            .iter()
            .zip(&run.nodes)
            .filter(|(_, end)| end.is_none())
            .map(|(name, _)| name)
            .collect();
        let outcome = format!("{} of {} nodes", ended.len(), nodes.len());
        for name in failed {
            self.rsync_daemons.remove(name);
            let _ = self.fleet.lab.kill_program(name, "rsync");
            copy_tree(&staging, &self.rsync_copy(name))?;
            self.start_rsync_daemon(name)?;
            self.fleet
                .lab
                .wait_listening(name, rsync::PORT, Duration::from_secs(20))?;
        }
        Ok(Measured {
            method: "rsync",
            killed: victim,
            round: 0,
            size,
            link_bytes,
            counted_bytes,
            leaders_seconds,
            commit_seconds,
            busy: shares.busy,
            outcome,
        })
    }
}

/// Which leader to kill now, if any: for the tree the first leader to have received a third of a copy (it
/// is receiving and forwarding), for the star the first segment's leader once it has half of its copy.
fn victim(
    nodes: &[String],
    received: &[u64],
    leaders: &BTreeMap<String, String>,
    delivery: &str,
    size: u64,
) -> Option<String> {
    let got = |leader: &str| {
        nodes
            .iter()
            .position(|name| name == leader)
            .map_or(0, |index| received[index])
    };
    if delivery == "tree" {
        return leaders
            .values()
            .filter(|leader| got(leader) >= size / 3)
            .max_by_key(|leader| got(leader))
            .cloned();
    }
    let first = leaders.values().next()?;
    (got(first) >= size / 2).then(|| first.clone())
}

/// The first sample at which every one of `leaders` had received `size` bytes.
fn held_by_all(nodes: &[String], leaders: &[String], samples: &[(f64, Vec<u64>)], size: u64) -> Option<f64> {
    let indexes: Vec<usize> = leaders
        .iter()
        .filter_map(|leader| nodes.iter().position(|name| name == leader))
        .collect();
    if indexes.is_empty() {
        return None;
    }
    samples
        .iter()
        .find(|(_, rx)| indexes.iter().all(|index| rx[*index] >= size))
        .map(|(at, _)| *at)
}

/// The size of job `id`'s assignment: its prepare tree's, or the most bytes the star sent a node.
fn assignment_size(fleet: &Fleet, id: &str, job: &serde_json::Value) -> Result<u64> {
    let from_tree = fleet
        .trees_of(id)?
        .iter()
        .find(|tree| tree["phase"] == "prepare")
        .and_then(|tree| tree["size"].as_u64());
    let from_star = job["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().filter_map(|n| n["bytes"].as_u64()).max());
    from_tree
        .or(from_star)
        .filter(|size| *size > 0)
        .with_context(|| format!("no assignment size in job {id}: {job}"))
}

/// `cp -a SOURCE/. TARGET/` (a local copy: the starting state, not measured).
fn copy_tree(source: &Path, target: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(target);
    std::fs::create_dir_all(target)?;
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", source.display()))
        .arg(target)
        .status()
        .context("run cp")?;
    if !status.success() {
        bail!("cp -a {} {} failed", source.display(), target.display());
    }
    Ok(())
}

fn print_one(m: &Measured, rate_mbit: u32) {
    let copy_seconds = m.size as f64 * 8.0 / (f64::from(rate_mbit) * 1e6);
    println!(
        "  round {} {}{}: S {:.1} MB ({copy_seconds:.2} s at the link rate); mover sent {:.1} MB on its link ({:.2} \
         copies), counted {:.1} MB; leaders hold it at {}; all committed at {:.2} s; CPU {:.0}% busy; {}",
        m.round,
        m.method,
        m.killed
            .as_ref()
            .map(|v| format!(" (leader {v} killed)"))
            .unwrap_or_default(),
        mb(m.size as f64),
        mb(m.link_bytes as f64),
        m.link_bytes as f64 / m.size.max(1) as f64,
        mb(m.counted_bytes as f64),
        m.leaders_seconds.map_or("-".to_string(), |s| format!("{s:.2} s")),
        m.commit_seconds,
        m.busy * 100.0,
        m.outcome.trim()
    );
}

fn summarize(
    options: &MoverBench,
    segments: usize,
    per_segment: usize,
    files: usize,
    site_bytes: u64,
    rounds: usize,
    measured: &[Measured],
) -> String {
    let nodes = segments * per_segment;
    let of = |method: &str, kill: bool| -> Vec<&Measured> {
        measured
            .iter()
            .filter(|m| m.method == method && m.killed.is_some() == kill)
            .collect()
    };
    let tern_sizes: Vec<f64> = measured
        .iter()
        .filter(|m| m.method != "rsync")
        .map(|m| m.size as f64)
        .collect();
    let size = super::Spread::of(&tern_sizes).map_or(0.0, |s| s.median);
    let copy_seconds = size * 8.0 / (f64::from(options.rate_mbit) * 1e6);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "content mover, store-and-forward tree vs star vs parallel rsync: {segments} segments x {per_segment} nodes \
         ({nodes}), every link {} Mbit/s (tc tbf){}; a site of {files} files, {:.0} MB; each run a redesign \
         rewriting {:.0}% of every file: assignment S = {:.1} MB (S/B = {copy_seconds:.2} s); median (min-max) of \
         {rounds} rounds\n",
        options.rate_mbit,
        if options.data_channel {
            "; leaders send to their members on a multicast data channel (tern node --data-channel)"
        } else {
            ""
        },
        mb(site_bytes as f64),
        options.change.unwrap_or(0.6) * 100.0,
        mb(size),
    );
    let _ = writeln!(
        text,
        "| method | leader killed | bytes leaving the mover, link (MB) | in copies of S | sender's own count (MB) | every leader holds it (s) | every node committed (s) | machine CPU busy |"
    );
    let _ = writeln!(text, "|---|---|---|---|---|---|---|---|");
    let star_commit = super::Spread::of(&of("star", false).iter().map(|m| m.commit_seconds).collect::<Vec<_>>());
    for method in ["tree", "star", "rsync"] {
        for kill in [false, true] {
            let runs = of(method, kill);
            if runs.is_empty() {
                continue;
            }
            let link: Vec<f64> = runs.iter().map(|m| mb(m.link_bytes as f64)).collect();
            let copies: Vec<f64> = runs
                .iter()
                .map(|m| m.link_bytes as f64 / if method == "rsync" { size } else { m.size as f64 }.max(1.0))
                .collect();
            let counted: Vec<f64> = runs.iter().map(|m| mb(m.counted_bytes as f64)).collect();
            let leaders: Vec<f64> = runs.iter().filter_map(|m| m.leaders_seconds).collect();
            let commit: Vec<f64> = runs.iter().map(|m| m.commit_seconds).collect();
            let busy: Vec<f64> = runs.iter().map(|m| m.busy * 100.0).collect();
            let _ = writeln!(
                text,
                "| {method} | {} | {} | {} | {} | {} | {} | {}% |",
                if kill { "yes" } else { "no" },
                show(&link, 1),
                show(&copies, 2),
                show(&counted, 1),
                show(&leaders, 2),
                show(&commit, 2),
                show(&busy, 0)
            );
        }
    }
    let _ = writeln!(text);
    let tree = of("tree", false);
    if !tree.is_empty() {
        let copies: Vec<f64> = tree
            .iter()
            .map(|m| m.link_bytes as f64 / m.size.max(1) as f64)
            .collect();
        let worst_copies = copies.iter().copied().fold(0.0, f64::max);
        let leaders: Vec<f64> = tree.iter().filter_map(|m| m.leaders_seconds).collect();
        let worst_leaders = leaders.iter().copied().fold(0.0, f64::max);
        let commit: Vec<f64> = tree.iter().map(|m| m.commit_seconds).collect();
        let worst_commit = commit.iter().copied().fold(0.0, f64::max);
        let verdict = |met: bool| if met { "met" } else { "missed" };
        let _ = writeln!(
            text,
            "- mover egress, tree: {} copies (worst round {worst_copies:.2}); target <= 2 (the star: {nodes}): {}",
            show(&copies, 2),
            verdict(worst_copies <= 2.0)
        );
        let _ = writeln!(
            text,
            "- every leader holds it, tree: {} s (worst {worst_leaders:.2} s); target <= 3 x S/B = {:.2} s: {}",
            show(&leaders, 2),
            3.0 * copy_seconds,
            verdict(!leaders.is_empty() && worst_leaders <= 3.0 * copy_seconds)
        );
        if let Some(star) = star_commit {
            let _ = writeln!(
                text,
                "- every node committed, tree: {} s (worst {worst_commit:.2} s); target <= star / 4 = {:.2} s: {}",
                show(&commit, 2),
                star.median / 4.0,
                verdict(worst_commit <= star.median / 4.0)
            );
        }
    }
    text
}
