//! rsync, the benchmark's competitor (Debian's package): an rsync daemon on each node host and `rsync -a
//! --delete --stats` from the `mover` host to each, one after the other or all at once.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::topology::{HostProcess, Lab};

/// The daemons' port.
pub(crate) const PORT: u16 = 8730;

/// Starts an rsync daemon in `host` serving each `(module, path)` read-write; its config and pid file go in
/// `dir`.
pub(crate) fn daemon(lab: &Lab, host: &str, dir: &Path, modules: &[(&str, &Path)]) -> Result<HostProcess> {
    let path = |p: &Path| p.to_str().map(str::to_string).context("path is not UTF-8");
    let config = dir.join("rsyncd.conf");
    let mut text = format!(
        "use chroot = no\nreverse lookup = no\nuid = root\ngid = root\npid file = {}\n",
        path(&dir.join("rsyncd.pid"))?
    );
    for (module, root) in modules {
        std::fs::create_dir_all(root)?;
        text.push_str(&format!("[{module}]\npath = {}\nread only = no\n", path(root)?));
    }
    std::fs::write(&config, text)?;
    let _ = std::fs::remove_file(dir.join("rsyncd.pid"));
    let addr = lab.host(host).addr;
    Ok(lab.spawn(
        host,
        "rsync",
        &[
            "--daemon",
            "--no-detach",
            &format!("--config={}", path(&config)?),
            &format!("--address={addr}"),
            &format!("--port={PORT}"),
        ],
    )?)
}

/// How one rsync run to many nodes went.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    /// Until the last rsync process ended.
    pub(crate) seconds: f64,
    /// Per node, in the order given: when its rsync ended (seconds from the start) and the bytes it sent
    /// (`Total bytes sent`); `None` for a node whose rsync failed.
    pub(crate) nodes: Vec<Option<(f64, u64)>>,
}

impl Run {
    /// Bytes sent to every node whose rsync succeeded.
    pub(crate) fn bytes(&self) -> Vec<u64> {
        self.nodes.iter().flatten().map(|(_, bytes)| *bytes).collect()
    }
}

/// rsync -a of `staging` to module `module` on every one of `nodes`, from host `from`, one after the other
/// or all at once. With `tolerate_failures`, a node whose rsync fails (its daemon was killed) is recorded
/// as `None`; otherwise it is an error.
pub(crate) fn run(
    lab: &Lab,
    from: &str,
    staging: &Path,
    nodes: &[String],
    module: &str,
    parallel: bool,
    tolerate_failures: bool,
) -> Result<Run> {
    let source = format!("{}/", staging.display());
    let command = |name: &str| {
        let mut command = lab.command(
            from,
            "rsync",
            &[
                "-a",
                "--delete",
                "--stats",
                &source,
                &format!("rsync://{}:{PORT}/{module}/", lab.host(name).addr),
            ],
        );
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    };
    let started = Instant::now();
    let mut ended: Vec<Option<(f64, std::process::Output)>> = Vec::new();
    if parallel {
        let mut children = nodes
            .iter()
            .map(|name| command(name).spawn().map(Some))
            .collect::<std::io::Result<Vec<_>>>()?;
        ended.resize_with(nodes.len(), || None);
        while children.iter().any(Option::is_some) {
            for (index, slot) in children.iter_mut().enumerate() {
                let done = match slot {
                    Some(child) => child.try_wait()?.is_some(),
                    None => false,
                };
                if done && let Some(child) = slot.take() {
                    let at = started.elapsed().as_secs_f64();
                    ended[index] = Some((at, child.wait_with_output()?));
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    } else {
        for name in nodes {
            let output = command(name).output()?;
            ended.push(Some((started.elapsed().as_secs_f64(), output)));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut per_node = Vec::new();
    for (name, end) in nodes.iter().zip(ended) {
        let Some((at, output)) = end else {
            bail!("rsync to {name} did not end");
        };
        if !output.status.success() {
            if tolerate_failures {
                per_node.push(None);
                continue;
            }
            bail!("rsync to {name} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let sent = total_bytes_sent(&text).context("rsync --stats printed no `Total bytes sent`")?;
        per_node.push(Some((at, sent)));
    }
    Ok(Run {
        seconds,
        nodes: per_node,
    })
}

fn total_bytes_sent(stats: &str) -> Option<u64> {
    stats
        .lines()
        .find_map(|line| line.strip_prefix("Total bytes sent:"))
        .map(|n| n.trim().replace(',', ""))
        .and_then(|n| n.parse().ok())
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
}
