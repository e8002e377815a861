//! What the machine is doing around a measurement: the work area on a tmpfs, waiting for quiet, and the CPU
//! share other work took while a measurement ran (the figures of a 2-core machine move with it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The directory holding every tree of a run; removed (and unmounted) at the end.
pub(crate) struct WorkArea {
    pub(crate) path: PathBuf,
    mounted: bool,
}

impl WorkArea {
    /// `path` on whatever file system it is on.
    pub(crate) fn directory(path: PathBuf) -> Result<WorkArea> {
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(WorkArea { path, mounted: false })
    }

    /// A tmpfs of `needed` bytes, refused when the machine lacks the memory.
    pub(crate) fn tmpfs(needed: u64) -> Result<WorkArea> {
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
pub(crate) fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Waits until the machine is quiet (at least 90% idle over half a second; at most a minute), so the
/// background work of one measurement (a node linking its next tree or deleting a superseded version, the
/// kernel freeing a tree) never lands in the next one, whichever method that is. Returns how long it waited.
pub(crate) fn settle() -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(before) = CpuTimes::read() else {
            break;
        };
        std::thread::sleep(Duration::from_millis(500));
        let Some(after) = CpuTimes::read() else {
            break;
        };
        if after.since(&before).busy < 0.1 {
            break;
        }
    }
    started.elapsed()
}

/// Memory a measurement may fill, made ready for it: `bytes` (at most what is available, less 1 GiB) are
/// written to a file under `dir` and the file deleted, right before the measurement.
///
/// Why: this machine is a VM whose kernel hands free memory back to the hypervisor (virtio-balloon free
/// page reporting, `/sys/module/page_reporting`), within seconds of its being freed. Writing to a page
/// handed back costs a fault in the hypervisor: measured on the 2-core machine, filling a tmpfs ran at
/// 3 GB/s for the memory used lately and at 0.37 GB/s beyond it. How much memory was recently used
/// depends on what ran before (a build, a previous round deleting its trees), so the same publish took
/// from 8 to 23 CPU seconds on the nodes. Pages freed just before are taken first, so every method starts
/// with the same memory warm; the hypervisor still takes some back while a measurement runs (recorded
/// with [`memory_handed_back`]: 1 to 4 GB in the initial step, more for the longer measurements). A real
/// server has no such cost. Returns the bytes written and the seconds it took (slow: the memory was cold).
pub(crate) fn warm_memory(dir: &std::path::Path, bytes: u64) -> (u64, f64) {
    use std::io::Write;
    let limit = mem_available().unwrap_or(0).saturating_sub(1 << 30);
    let wanted = bytes.min(limit);
    let path = dir.join(".warm-memory");
    let started = Instant::now();
    let mut written = 0u64;
    if let Ok(mut file) = std::fs::File::create(&path) {
        // Not zeros: a file system may keep those as holes.
        let chunk = vec![0x5au8; 8 << 20];
        while written < wanted {
            let count = chunk.len().min(usize::try_from(wanted - written).unwrap_or(usize::MAX));
            // A full tmpfs ends the warming early; what was written is warm all the same.
            if file.write_all(&chunk[..count]).is_err() {
                break;
            }
            written += count as u64;
        }
    }
    let _ = std::fs::remove_file(&path);
    (written, started.elapsed().as_secs_f64())
}

/// Memory the guest has handed back to the hypervisor so far (free page reporting), in bytes; `None` on a
/// machine without it.
pub(crate) fn memory_handed_back() -> Option<u64> {
    std::fs::read_to_string("/sys/module/page_reporting/parameters/reported_kib")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The CPU counters of the whole machine (`/proc/stat`, first line), in jiffies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTimes {
    idle: u64,
    steal: u64,
    total: u64,
}

/// How the machine's CPUs were used over an interval, as shares of all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CpuShare {
    /// Not idle (user, system, interrupts, steal).
    pub(crate) busy: f64,
    /// Taken by the hypervisor for other guests.
    pub(crate) steal: f64,
}

impl CpuTimes {
    pub(crate) fn read() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal guest guest_nice; guests are inside user.
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        let steal = fields.get(7).copied().unwrap_or(0);
        let total = fields.iter().take(8).sum();
        Some(CpuTimes { idle, steal, total })
    }

    /// The shares since `before`.
    pub(crate) fn since(&self, before: &CpuTimes) -> CpuShare {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        CpuShare {
            busy: 1.0 - self.idle.saturating_sub(before.idle) as f64 / total,
            steal: self.steal.saturating_sub(before.steal) as f64 / total,
        }
    }
}

/// Major page faults so far, machine-wide (`pgmajfault` in /proc/vmstat): pages read back from disk, such
/// as program text the kernel dropped. This VM's kernel runs a DAMON `pageout` scheme that drops cold
/// file-backed pages, so a program idle for a while faults its code back in.
pub(crate) fn major_faults() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("pgmajfault "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The one-minute load average.
pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|first| first.parse().ok()))
        .unwrap_or(0.0)
}

/// CPU seconds (user + system) used so far by every process whose command line's first two words are
/// `program` and `role` (e.g. `tern node`): what the processes under test cost, beside what the whole
/// machine did.
pub(crate) fn cpu_seconds_of(program: &str, role: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let ticks = 100.0; // USER_HZ on Linux
    let mut seconds = 0.0;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let mut words = cmdline.split(|byte| *byte == 0);
        let first = words.next().unwrap_or_default();
        let second = words.next().unwrap_or_default();
        if !first.ends_with(program.as_bytes()) || second != role.as_bytes() {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let used: f64 = [11, 12]
            .iter()
            .filter_map(|index| fields.get(*index).and_then(|f| f.parse::<f64>().ok()))
            .sum();
        seconds += used / ticks;
    }
    seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_shares_are_fractions() {
        let before = CpuTimes::read().expect("/proc/stat");
        let mut spin = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            spin = spin.wrapping_add(1);
        }
        let share = CpuTimes::read().expect("/proc/stat").since(&before);
        assert!(spin > 0);
        assert!((0.0..=1.0).contains(&share.busy), "{share:?}");
        assert!((0.0..=1.0).contains(&share.steal), "{share:?}");
        assert!(load_average() >= 0.0);
        assert!(major_faults() < u64::MAX);
    }

    #[test]
    fn warming_writes_what_was_asked_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (written, seconds) = warm_memory(dir.path(), 20 << 20);
        assert_eq!(written, 20 << 20);
        assert!(seconds >= 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).expect("read").count(), 0);
    }
}
