//! `tern-lab bench mover`: the content mover against rsync, in two settings.
//!
//! - **One LAN** ([`lan`], the default): a `mover` host and N node hosts (8) on one bridge without rate
//!   limits, so the machine's two cores are the bottleneck. A synthetic site (10,000 files, 500 MB) is
//!   published, then changed (2% of its bytes) and published again; the same with `rsync -a` to every node
//!   one after the other and all at once. Each round starts from empty nodes and fresh processes, and every
//!   figure is the median of the rounds with its minimum and maximum.
//! - **Segments** ([`segments`], with `--segments S --nodes-per-segment M`): S LAN segments of M nodes
//!   whose group leaders relay the assignment (seed 004's store-and-forward tree), every host's link limited
//!   with `tc tbf`, and a redesign of the site as the assignment: the tree, the star (the mover sends every
//!   node its own copy) and parallel rsync, each also with one leader killed mid-run.
//!
//! Every tree (staging, the mover's data, each node's copies) lives on a tmpfs mounted for the run, unless
//! `--work` names a directory. Why: this lab's disk is an ext4 without a journal, where creating a file
//! scans past every inode deleted in the last minutes (`recently_deleted` in the kernel's inode allocator);
//! whichever method ran after a large deletion (a previous run's cleanup, a build) was measured at up to
//! twice its time. On the tmpfs every method writes to the same memory-backed file system, with no history.

mod lan;
mod machine;
mod rsync;
mod segments;
mod site;

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::topology::which;

/// Options of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct MoverBench {
    /// Node hosts (one LAN).
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
    /// LAN segments of nodes with group leaders and the store-and-forward tree, every link rate-limited
    /// (instead of one LAN of --nodes).
    #[arg(long, value_name = "S")]
    pub segments: Option<usize>,
    /// Nodes in each segment (with --segments).
    #[arg(long, value_name = "M", default_value_t = 8)]
    pub nodes_per_segment: usize,
    /// Every host's link rate with --segments, Mbit/s in each direction (`tc tbf`).
    #[arg(long, default_value_t = 100)]
    pub rate_mbit: u32,
    /// Files in the synthetic site [default: 10,000; 1,000 with --segments].
    #[arg(long)]
    pub files: Option<usize>,
    /// Bytes of the synthetic site [default: 500 MB; 45 MB with --segments].
    #[arg(long)]
    pub bytes: Option<u64>,
    /// Share of the bytes a change rewrites [default: 0.02 in one file of ten; 0.6 of every file with
    /// --segments, a redesign].
    #[arg(long)]
    pub change: Option<f64>,
    /// Rounds; every figure is the median of the rounds, with the minimum and maximum [default: 5; 3 with
    /// --segments].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// With --segments: no runs with a leader killed.
    #[arg(long)]
    pub no_kill: bool,
    /// With --segments: every node runs a multicast data channel (`tern node --data-channel`, issue 14), so
    /// that in the tree each group leader sends an assignment once to all its members instead of once to
    /// each; results go to `segments-SxM-multicast.*`.
    #[arg(long)]
    pub data_channel: bool,
    /// With --segments: the methods to measure, of tree, star and rsync.
    #[arg(long, value_delimiter = ',', default_value = "tree,star,rsync")]
    pub methods: Vec<String>,
    /// Put the trees under DIR instead of a tmpfs mounted for the run (the lab disk's inode allocator
    /// makes timings depend on what was deleted in the last minutes; see the module docs).
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Log filter of the mover and the nodes, e.g. `info` or `info,tern_node=debug`; they log to files
    /// in the work area, copied to DIR when TERN_LAB_KEEP_LOGS=DIR is set.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// One LAN: measure tern only, no rsync runs.
    #[arg(long)]
    pub tern_only: bool,
    /// One LAN: before each change step, fill this many GB of the work area with a file (what rsync's copies
    /// occupy when rsync runs), to measure what memory in use does to the change step on this machine.
    #[arg(long, value_name = "GB", default_value_t = 0)]
    pub ballast_gb: u64,
    /// One LAN: do not warm the memory a measurement fills before it. This VM hands free memory back to its
    /// hypervisor, and writing to it again costs ~8x a warm write: without warming, a method's time
    /// depends on what ran before it (see `machine::warm_memory`).
    #[arg(long)]
    pub cold_memory: bool,
    /// The tern binary (default: the release build next to this program).
    #[arg(long)]
    pub tern: Option<PathBuf>,
    /// Results directory.
    #[arg(long, default_value = "results/mover")]
    pub out: PathBuf,
}

/// Runs the benchmark and prints its figures.
pub fn run(options: &MoverBench) -> Result<()> {
    let tern = crate::bench::tern_binary(options.tern.as_deref())?;
    let tern = tern.to_str().context("tern path is not UTF-8")?.to_string();
    let wants_rsync = match options.segments {
        Some(_) => options.methods.iter().any(|m| m == "rsync"),
        None => !options.tern_only,
    };
    if wants_rsync && which("rsync").is_none() {
        crate::bench::apt_install(&["rsync"])?;
    }
    match options.segments {
        Some(segments) => segments::run(options, &tern, segments),
        None => lan::run(options, &tern),
    }
}

/// The median of some figures with their minimum and maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) count: usize,
}

impl Spread {
    /// The spread of `values` (`None` when there are none); the median of an even count is the mean of the
    /// middle two.
    pub(crate) fn of(values: &[f64]) -> Option<Spread> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        } else {
            sorted[middle]
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            count: sorted.len(),
        })
    }

    /// `median (min-max)` with `decimals` decimals.
    pub(crate) fn show(&self, decimals: usize) -> String {
        if self.count == 1 {
            return format!("{:.decimals$}", self.median);
        }
        format!(
            "{:.decimals$} ({:.decimals$}-{:.decimals$})",
            self.median, self.min, self.max
        )
    }
}

/// `Spread::of(values).show(decimals)`, or `-`.
pub(crate) fn show(values: &[f64], decimals: usize) -> String {
    Spread::of(values).map_or_else(|| "-".to_string(), |spread| spread.show(decimals))
}

/// Megabytes, for tables.
pub(crate) fn mb(bytes: f64) -> f64 {
    bytes / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_take_the_middle() {
        let spread = Spread::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((spread.median, spread.min, spread.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).expect("values").median, 2.5);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(show(&[1.0, 2.0, 3.0], 1), "2.0 (1.0-3.0)");
        assert_eq!(show(&[1.25], 2), "1.25");
        assert_eq!(show(&[], 2), "-");
    }
}
