//! `tern-lab bench multicast`: local distribution (seed 004, "local distribution"; issue 14) on real
//! processes. One LAN segment in network namespaces: a group leader and N members (`tern node
//! --data-channel`), every host's link limited with `tc tbf`; a publish of an incompressible site of the
//! given size goes from the mover to the leader and from the leader to its members once on the multicast
//! data channel, with repairs. Loss is injected in-process on every member (`tern node --data-loss`, a test
//! knob: the lab's kernel has no netem). Members send their status reports within 100 ms of a pass's end
//! (`--data-report-delay 100ms`; the seed's default is about a second, for large segments).
//!
//! For each member count and loss it prints the data channel's goodput (assignment bytes per second of the
//! prepare session: the rate at which the whole assignment reached every member), passes, repair bytes,
//! time to the last apply report, the leader's bytes on its link, and the job's time; then the same
//! publish by HTTP unicast from the leader (no data channel), and the same file by UFTP (`uftp`/`uftpd`,
//! Debian package `uftp`) from the leader's namespace to the members' at the same rate. UFTP has no
//! injected loss, so its column is measured at 0% only; without `uftp` installed the column is skipped
//! and the bench says so. Figures go to `OUT/summary.txt`. Benchmarks print numbers; they assert nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::fleet::{Fleet, FleetSpec};
use crate::topology::{LabSpec, Mode, namespaces_available, tern_binary, which};

/// The data channel every run uses.
const DATA_CHANNEL: &str = "239.192.77.3:7300";
/// UDP payload bytes of one data frame (1,400 data and the 22-byte header); a parity frame is as long.
const FRAME_PAYLOAD: f64 = 1422.0;

/// Options of `tern-lab bench multicast`.
#[derive(clap::Args, Debug, Clone)]
pub struct MulticastBench {
    /// Member counts (besides the leader).
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    pub members: Vec<usize>,
    /// Injected loss on every member's data channel, as probabilities.
    #[arg(long, value_delimiter = ',', default_value = "0,0.02,0.05")]
    pub loss: Vec<f64>,
    /// Size of the site published, MB (files of 1 MiB of noise).
    #[arg(long, default_value_t = 100)]
    pub size_mb: usize,
    /// Every host's link, Mbit/s (`tc tbf`); the data channel's rate is set just under it.
    #[arg(long, default_value_t = 200)]
    pub rate_mbit: u32,
    /// Skip the HTTP unicast comparison.
    #[arg(long)]
    pub no_unicast: bool,
    /// Skip the UFTP comparison.
    #[arg(long)]
    pub no_uftp: bool,
    /// The tern binary (default: the one beside this program).
    #[arg(long)]
    pub tern: Option<PathBuf>,
    /// Where the fleets' trees go (default: `/dev/shm` when it has room for the largest fleet's spools and
    /// trees, else the temporary directory; see [`default_work`]).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Results directory.
    #[arg(long, default_value = "results/multicast")]
    pub out: PathBuf,
    /// Log filter of every process.
    #[arg(long, default_value = "info,tern_node=debug")]
    pub log: String,
    /// Keep the leader's log of each run in `OUT/logs/` (to see where a run's time went).
    #[arg(long)]
    pub keep_logs: bool,
}

/// One measured publish.
#[derive(Debug, Clone, Default)]
struct Row {
    method: String,
    members: usize,
    loss: f64,
    /// Seconds of the leader's stage: the data channel's session (multicast), or from the verified copy to
    /// the last member's answer (unicast), or uftp's run.
    stage_seconds: f64,
    passes: Option<u64>,
    repair_bytes: Option<f64>,
    /// Seconds from the session's start to the last apply report.
    last_report_seconds: Option<f64>,
    leader_link_bytes: u64,
    job_seconds: Option<f64>,
}

/// Runs the benchmark and prints (and writes) its figures.
pub fn run(options: &MulticastBench) -> Result<()> {
    if !namespaces_available() {
        bail!("the multicast benchmark needs root and network namespaces");
    }
    let tern = options
        .tern
        .clone()
        .or_else(tern_binary)
        .context("no tern binary beside tern-lab: build it (cargo build -p tern) or pass --tern")?;
    let work_root = options.work.clone().unwrap_or_else(|| default_work(options));
    println!("the fleets' files go to {}", work_root.display());
    let work = work_root.join(format!("tern-multicast-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let staging = work.join("staging");
    write_site(&staging, options.size_mb)?;
    let uftp = match (which("uftp"), which("uftpd")) {
        (Some(server), Some(client)) if !options.no_uftp => Some((server, client)),
        _ if options.no_uftp => None,
        _ => {
            println!("uftp is not installed (apt-get install uftp): the UFTP column is skipped");
            None
        }
    };
    // Just under the link: the token bucket's bursts and the control messages fit beside the frames.
    let data_rate = (u64::from(options.rate_mbit) * 95 / 100).max(1);
    println!(
        "multicast benchmark: one segment, every link {} Mbit/s (data channel {data_rate} Mbit/s), a {} MB site, \
         members {:?}, injected loss {:?}",
        options.rate_mbit, options.size_mb, options.members, options.loss
    );
    let mut rows = Vec::new();
    for &members in &options.members {
        for &loss in &options.loss {
            let row = measure_tern(options, &tern, &work, &staging, members, Some((loss, data_rate)))?;
            println!("{}", format_row(&row, options));
            rows.push(row);
        }
        if !options.no_unicast {
            let row = measure_tern(options, &tern, &work, &staging, members, None)?;
            println!("{}", format_row(&row, options));
            rows.push(row);
        }
        if let Some((server, client)) = &uftp {
            match measure_uftp(options, server, client, &work, &staging, members) {
                Ok(row) => {
                    println!("{}", format_row(&row, options));
                    rows.push(row);
                }
                Err(error) => println!("uftp with {members} members failed: {error:#}"),
            }
        }
    }
    let summary = summarize(&rows, options);
    println!("\n{summary}");
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(options.out.join("summary.txt"), &summary)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// A site of `mb` incompressible files of 1 MiB.
fn write_site(staging: &Path, mb: usize) -> Result<()> {
    let _ = std::fs::remove_dir_all(staging);
    std::fs::create_dir_all(staging.join("media"))?;
    for file in 0..mb.max(1) {
        let bytes = crate::fleet::noise(0x9E37_79B9_7F4A_7C15 ^ file as u64, 1 << 20);
        std::fs::write(staging.join(format!("media/m{file}.bin")), &bytes)?;
    }
    Ok(())
}

/// One publish through a fresh fleet of a leader and `members` members; with `data` (loss, rate Mbit/s)
/// on the data channel, without it by HTTP unicast.
fn measure_tern(
    options: &MulticastBench,
    tern: &Path,
    work: &Path,
    staging: &Path,
    members: usize,
    data: Option<(f64, u64)>,
) -> Result<Row> {
    let fleet_dir = work.join("fleet");
    let _ = std::fs::remove_dir_all(&fleet_dir);
    let spec = FleetSpec {
        tern: tern.to_path_buf(),
        work: fleet_dir.clone(),
        segments: 1,
        nodes_per_segment: members + 1,
        rate_mbit: Some(options.rate_mbit),
        discovery: true,
        discovery_speed: 10,
        quorum: None,
        log: options.log.clone(),
    };
    let node_args: Vec<String> = match data {
        Some((loss, rate)) => vec![
            "--data-channel".into(),
            DATA_CHANNEL.into(),
            "--data-rate".into(),
            rate.to_string(),
            "--data-report-interval".into(),
            "100ms".into(),
            "--data-report-delay".into(),
            "100ms".into(),
            "--data-loss".into(),
            loss.to_string(),
        ],
        None => Vec::new(),
    };
    let fleet = Fleet::start_with(spec, "tree", &node_args)?;
    fleet.wait_registered(members + 1, Duration::from_secs(120))?;
    let leaders = fleet.wait_leaders(Duration::from_secs(120))?;
    let leader = leaders.get("s1").cloned().context("no leader in s1")?;
    settle_disk();
    let link_before = fleet.lab.link_bytes(&leader)?;
    let started = Instant::now();
    let id = fleet.submit_publish("www", staging)?;
    let job = fleet.wait_job(&id, Duration::from_secs(1800))?;
    let job_seconds = started.elapsed().as_secs_f64();
    if job["state"] != "committed" {
        bail!("the publish did not commit: {job}");
    }
    let leader_link_bytes = fleet.lab.link_bytes(&leader)?.sent - link_before.sent;
    let log = std::fs::read_to_string(fleet_dir.join("logs").join(format!("{leader}.log")))?;
    if options.keep_logs {
        let kept = options.out.join("logs");
        std::fs::create_dir_all(&kept)?;
        let how = data.map_or("unicast".to_string(), |(loss, _)| format!("loss{loss}"));
        std::fs::write(kept.join(format!("leader-{members}-{how}.log")), &log)?;
    }
    let mut row = Row {
        method: if data.is_some() {
            "tern multicast"
        } else {
            "HTTP unicast"
        }
        .into(),
        members,
        loss: data.map_or(0.0, |(loss, _)| loss),
        leader_link_bytes,
        job_seconds: Some(job_seconds),
        ..Row::default()
    };
    if data.is_some() {
        let session = find_line(&log, ".prepare.", "data channel session ended")
            .context("the leader logged no prepare session")?;
        row.stage_seconds = field(&session, "seconds").unwrap_or(0.0);
        row.passes = field(&session, "passes").map(|passes| passes as u64);
        row.repair_bytes = field(&session, "repaired").map(|frames| frames * FRAME_PAYLOAD);
        row.last_report_seconds = find_line(&log, ".prepare.", "data channel report collection ended")
            .and_then(|line| field(&line, "seconds"));
    } else {
        let obtained =
            find_line(&log, ".prepare.", "assignment obtained and verified").and_then(|line| timestamp(&line));
        let delivered = find_line(&log, ".prepare.", "members delivered to").and_then(|line| timestamp(&line));
        if let (Some(from), Some(to)) = (obtained, delivered) {
            row.stage_seconds = to - from;
        }
    }
    drop(fleet);
    let _ = std::fs::remove_dir_all(&fleet_dir);
    Ok(row)
}

/// The same bytes by UFTP: `uftpd` in every member's namespace, `uftp` at the same rate in the leader's.
fn measure_uftp(
    options: &MulticastBench,
    server: &Path,
    client: &Path,
    work: &Path,
    staging: &Path,
    members: usize,
) -> Result<Row> {
    let mut spec = LabSpec::new().segment("s1").host("leader", "s1");
    let names: Vec<String> = (1..=members).map(|index| format!("m{index}")).collect();
    for name in &names {
        spec = spec.host(name, "s1");
    }
    let lab = spec.build()?;
    if lab.mode() != Mode::Namespaces {
        bail!("uftp needs network namespaces");
    }
    lab.limit_rate("leader", options.rate_mbit)?;
    let dir = work.join("uftp");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let client_path = client.to_str().context("uftpd path")?;
    let mut clients = Vec::new();
    for name in &names {
        let dest = dir.join(name);
        std::fs::create_dir_all(&dest)?;
        let dest = dest.to_str().context("path")?.to_string();
        let log = dir.join(format!("{name}.log"));
        let log = log.to_str().context("path")?.to_string();
        let child = lab
            .command(name, client_path, &["-d", "-D", &dest, "-L", &log, "-B", "8388608"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start uftpd")?;
        clients.push(child);
    }
    std::thread::sleep(Duration::from_secs(1));
    let rate_kbps = (u64::from(options.rate_mbit) * 1000 * 95 / 100).to_string();
    let files: Vec<String> = std::fs::read_dir(staging.join("media"))?
        .flatten()
        .filter_map(|entry| entry.path().to_str().map(str::to_string))
        .collect();
    let mut args = vec!["-R", rate_kbps.as_str(), "-b", "1400", "-B", "8388608", "-x", "0"];
    args.extend(files.iter().map(String::as_str));
    settle_disk();
    let link_before = lab.link_bytes("leader")?;
    let started = Instant::now();
    let output = lab
        .command("leader", server.to_str().context("uftp path")?, &args)
        .stdin(Stdio::null())
        .output()
        .context("run uftp")?;
    let seconds = started.elapsed().as_secs_f64();
    let leader_link_bytes = lab.link_bytes("leader")?.sent - link_before.sent;
    for mut child in clients {
        let _ = child.kill();
        let _ = child.wait();
    }
    if !output.status.success() {
        bail!("uftp failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Row {
        method: "UFTP".into(),
        members,
        loss: 0.0,
        stage_seconds: seconds,
        leader_link_bytes,
        ..Row::default()
    })
}

/// Where the fleets' files go by default: `/dev/shm` (memory) when it has room for every node's spool and
/// tree of the largest fleet twice over, else the temporary directory. The lab's nodes all write to one
/// disk, 33 copies of the assignment at once, which no segment of real servers does: measured on the
/// lab's virtual disk (ext4 with online discard) 32-member runs varied from 4.5 to 6.3 s back to back, on
/// tmpfs 4.7 s. The bench measures the network's distribution, not one disk shared by every member.
fn default_work(options: &MulticastBench) -> PathBuf {
    let largest = options.members.iter().copied().max().unwrap_or(0) as u64 + 2;
    let needed = largest * options.size_mb as u64 * (1 << 20) * 4;
    let shm = PathBuf::from("/dev/shm");
    let room = rustix::fs::statvfs(&shm)
        .map(|stat| stat.f_bavail.saturating_mul(stat.f_frsize))
        .unwrap_or(0);
    if room >= needed { shm } else { std::env::temp_dir() }
}

/// Writes what earlier steps left in the page cache out to disk before a run is timed (the site written
/// at the start, the trees of the run before), so that its write-back does not land in this run.
fn settle_disk() {
    rustix::fs::sync();
}

/// The last line of `log` that mentions `transfer_part` and `message`.
fn find_line(log: &str, transfer_part: &str, message: &str) -> Option<String> {
    log.lines()
        .rev()
        .find(|line| line.contains(transfer_part) && line.contains(message))
        .map(str::to_string)
}

/// A numeric `name=value` field of a log line.
fn field(line: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&prefix))
        .and_then(|value| value.trim_matches('"').parse().ok())
}

/// Seconds since midnight of a log line's RFC 3339 timestamp.
fn timestamp(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

fn size_bytes(options: &MulticastBench) -> f64 {
    (options.size_mb.max(1) as f64) * (1u64 << 20) as f64
}

fn format_row(row: &Row, options: &MulticastBench) -> String {
    let size = size_bytes(options);
    let goodput_mbit = if row.stage_seconds > 0.0 {
        size * 8.0 / row.stage_seconds / 1e6
    } else {
        0.0
    };
    let optional = |value: Option<f64>, unit: &str| value.map_or("-".to_string(), |v| format!("{v:.1}{unit}"));
    format!(
        "{:<15} {:>3} members {:>4.1}% loss: stage {:>7.1} s, goodput {:>6.1} Mbit/s ({:>3.0}% of the link), \
         passes {:>2}, repair {:>7} MB, last report {:>7}, leader link {:>7.1} MB ({:.2} copies), job {:>7}",
        row.method,
        row.members,
        row.loss * 100.0,
        row.stage_seconds,
        goodput_mbit,
        goodput_mbit / f64::from(options.rate_mbit) * 100.0,
        row.passes.map_or("-".to_string(), |passes| passes.to_string()),
        optional(row.repair_bytes.map(|bytes| bytes / 1e6), ""),
        optional(row.last_report_seconds, " s"),
        row.leader_link_bytes as f64 / 1e6,
        row.leader_link_bytes as f64 / size,
        optional(row.job_seconds, " s"),
    )
}

fn summarize(rows: &[Row], options: &MulticastBench) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "tern-lab bench multicast: one segment, links {} Mbit/s (tc tbf), a {} MB site; goodput is the assignment's \
         bytes over the leader's stage (the whole assignment reaching every member)",
        options.rate_mbit, options.size_mb
    );
    for row in rows {
        let _ = writeln!(text, "{}", format_row(row, options));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_and_timestamps_are_read() {
        let line = "2026-12-01T05:20:02.945832Z  INFO data channel session ended assignment=\"49d3\" \
                    transfer=publish-1-0.prepare.1 outcome=Complete passes=5 repaired=5793 seconds=7.501982999";
        assert_eq!(field(line, "passes"), Some(5.0));
        assert_eq!(field(line, "repaired"), Some(5793.0));
        assert_eq!(field(line, "seconds"), Some(7.501982999));
        assert_eq!(field(line, "absent"), None);
        let at = timestamp(line).expect("timestamp");
        assert!((at - (5.0 * 3600.0 + 20.0 * 60.0 + 2.945832)).abs() < 1e-6);
    }
}
