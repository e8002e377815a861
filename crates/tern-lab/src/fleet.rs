//! A tern fleet in a lab: a `mover` host alone in segment `mv`, and node hosts in LAN segments `s1`,
//! `s2`, ... (hosts `s1n1`, `s1n2`, ...), each role a real `tern` process. With a control channel the nodes
//! of each segment elect their group leader on it by real UDP multicast (seed 004's discovery phase), and
//! the mover can deliver through the store-and-forward tree of those leaders.
//!
//! Shared by the lab test of the tree (`tests/it/mover_tree.rs`) and `tern-lab bench mover --segments`.
//! Each process logs to `WORK/logs/NAME.log`; with `TERN_LAB_KEEP_LOGS=DIR` the logs are copied to DIR when
//! the fleet ends, and when a test fails with the fleet running, their last warnings are printed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::topology::{HostProcess, Lab, LabSpec, Mode};

/// The mover's API port.
pub const MOVER_PORT: u16 = 7000;
/// The mover's admin port (`/metrics`, `/status`).
pub const ADMIN_PORT: u16 = 7001;
/// A node's assignment port.
pub const NODE_PORT: u16 = 7100;
/// Every segment's control channel (multicast stays inside its bridge, so one group serves them all).
pub const CONTROL_CHANNEL: &str = "239.192.77.1:7200";

/// What fleet to build.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The `tern` binary.
    pub tern: PathBuf,
    /// Where the mover's data, the nodes' roots, the keys and the logs go.
    pub work: PathBuf,
    /// LAN segments of nodes.
    pub segments: usize,
    /// Nodes in each.
    pub nodes_per_segment: usize,
    /// Every host's link limited to this many Mbit/s in each direction (`tc tbf`).
    pub rate_mbit: Option<u32>,
    /// Nodes take part in their segment's election (`--segment`, `--control-channel`).
    pub discovery: bool,
    /// `tern node --discovery-speed`: the seed's election and registration timers this many times faster.
    pub discovery_speed: u32,
    /// `tern mover --quorum`.
    pub quorum: Option<usize>,
    /// Log filter of every process.
    pub log: String,
}

impl FleetSpec {
    /// Host names of the nodes, segment by segment.
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.segments)
            .flat_map(|segment| (1..=self.nodes_per_segment).map(move |node| format!("s{segment}n{node}")))
            .collect()
    }

    /// Segment names.
    pub fn segment_names(&self) -> Vec<String> {
        (1..=self.segments).map(|segment| format!("s{segment}")).collect()
    }
}

/// The segment of node `name` (`s3n2` is in `s3`).
pub fn segment_of(name: &str) -> &str {
    name.split_once('n').map_or(name, |(segment, _)| segment)
}

/// A running fleet. Dropping it stops every process and tears the lab down.
pub struct Fleet {
    /// The lab the fleet runs in.
    pub lab: Lab,
    /// What was built.
    pub spec: FleetSpec,
    mover: Option<HostProcess>,
    nodes: BTreeMap<String, HostProcess>,
    cluster_key: PathBuf,
    /// More `tern node` flags, for every node (e.g. `--data-channel`).
    node_args: Vec<String>,
}

impl Fleet {
    /// Builds the lab (namespaces only: the fleet needs multicast and per-host links), writes the cluster
    /// key, and starts the mover with `delivery` (`auto`, `tree` or `star`) and every node.
    pub fn start(spec: FleetSpec, delivery: &str) -> Result<Fleet> {
        Fleet::start_with(spec, delivery, &[])
    }

    /// [`Fleet::start`], every node started with `node_args` too.
    pub fn start_with(spec: FleetSpec, delivery: &str, node_args: &[String]) -> Result<Fleet> {
        if spec.segments == 0 || spec.nodes_per_segment == 0 || spec.segments > 50 || spec.nodes_per_segment > 99 {
            bail!("a fleet has 1 to 50 segments of 1 to 99 nodes");
        }
        let mut lab_spec = LabSpec::new().segment("mv").host("mover", "mv");
        for segment in spec.segment_names() {
            lab_spec = lab_spec.segment(&segment);
        }
        for name in spec.node_names() {
            lab_spec = lab_spec.host(&name, segment_of(&name));
        }
        let lab = lab_spec.build()?;
        if lab.mode() != Mode::Namespaces {
            bail!("a fleet needs network namespaces (run as root)");
        }
        if let Some(mbit) = spec.rate_mbit {
            lab.limit_rate("mover", mbit)?;
            for name in spec.node_names() {
                lab.limit_rate(&name, mbit)?;
            }
        }
        std::fs::create_dir_all(spec.work.join("logs"))?;
        let cluster_key = spec.work.join("cluster.key");
        if !cluster_key.exists() {
            let output = std::process::Command::new(&spec.tern)
                .args(["keygen", "--log", "warn"])
                .arg(&cluster_key)
                .output()
                .context("run tern keygen")?;
            if !output.status.success() {
                bail!("tern keygen failed: {}", String::from_utf8_lossy(&output.stderr));
            }
        }
        let mut fleet = Fleet {
            lab,
            spec,
            mover: None,
            nodes: BTreeMap::new(),
            cluster_key,
            node_args: node_args.to_vec(),
        };
        fleet.start_mover(delivery)?;
        for name in fleet.spec.node_names() {
            fleet.start_node(&name)?;
        }
        for name in fleet.spec.node_names() {
            fleet.lab.wait_listening(&name, NODE_PORT, Duration::from_secs(30))?;
        }
        Ok(fleet)
    }

    /// The mover's API address.
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::from((self.lab.host("mover").addr, MOVER_PORT))
    }

    /// The mover's data directory.
    pub fn mover_data(&self) -> PathBuf {
        self.spec.work.join("mover")
    }

    /// A node's sites root.
    pub fn root(&self, name: &str) -> PathBuf {
        self.spec.work.join(name).join("tern")
    }

    /// A node's `live` tree of `site`.
    pub fn live(&self, name: &str, site: &str) -> PathBuf {
        self.root(name).join(site).join("live")
    }

    fn log_file(&self, name: &str) -> Result<std::fs::File> {
        let path = self.spec.work.join("logs").join(format!("{name}.log"));
        Ok(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
    }

    fn spawn_logged(&self, host: &str, log: &str, args: &[&str]) -> Result<HostProcess> {
        let tern = self.spec.tern.to_str().context("the tern path is not UTF-8")?;
        let stderr = self.log_file(log)?;
        let stdout = stderr.try_clone()?;
        let child = self
            .lab
            .command(host, tern, args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("start tern {} in {host}", args.first().copied().unwrap_or("")))?;
        Ok(HostProcess {
            child,
            host: host.to_string(),
        })
    }

    /// Starts (or restarts) the mover with `delivery`, on the same data directory; waits until it listens.
    pub fn start_mover(&mut self, delivery: &str) -> Result<()> {
        self.mover = None;
        let addr = self.lab.host("mover").addr;
        let data = path_str(&self.mover_data())?;
        let key = path_str(&self.cluster_key)?;
        let listen = format!("{addr}:{MOVER_PORT}");
        let admin = format!("{addr}:{ADMIN_PORT}");
        let quorum = self.spec.quorum.map(|q| q.to_string());
        let mut args = vec![
            "mover",
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--data",
            &data,
            "--cluster-key",
            &key,
            "--delivery",
            delivery,
            "--log",
            &self.spec.log,
        ];
        if let Some(quorum) = &quorum {
            args.extend(["--quorum", quorum]);
        }
        let process = self.spawn_logged("mover", "mover", &args)?;
        self.mover = Some(process);
        self.lab.wait_listening("mover", MOVER_PORT, Duration::from_secs(30))?;
        self.lab.wait_listening("mover", ADMIN_PORT, Duration::from_secs(30))?;
        Ok(())
    }

    /// Starts (or restarts) node `name` on its root; returns once the process runs (see
    /// [`Fleet::wait_node`]).
    pub fn start_node(&mut self, name: &str) -> Result<()> {
        self.nodes.remove(name);
        let addr = self.lab.host(name).addr;
        let mover = format!("http://{}:{MOVER_PORT}", self.lab.host("mover").addr);
        let root = path_str(&self.root(name))?;
        let public = path_str(&self.mover_data().join("mover.pub"))?;
        let key = path_str(&self.cluster_key)?;
        let listen = format!("{addr}:{NODE_PORT}");
        let speed = self.spec.discovery_speed.to_string();
        let mut args = vec![
            "node",
            "--mover",
            &mover,
            "--root",
            &root,
            "--name",
            name,
            "--key",
            &public,
            "--listen",
            &listen,
            "--log",
            &self.spec.log,
            // A superseded version is deleted right after the switch, not in a later measurement.
            "--superseded-grace",
            "0s",
            "--cluster-key",
            &key,
        ];
        if self.spec.discovery {
            args.extend([
                "--segment",
                segment_of(name),
                "--control-channel",
                CONTROL_CHANNEL,
                "--discovery-speed",
                &speed,
            ]);
        }
        args.extend(self.node_args.iter().map(String::as_str));
        let process = self.spawn_logged(name, name, &args)?;
        self.nodes.insert(name.to_string(), process);
        Ok(())
    }

    /// Waits until node `name` takes connections.
    pub fn wait_node(&self, name: &str, timeout: Duration) -> Result<()> {
        Ok(self.lab.wait_listening(name, NODE_PORT, timeout)?)
    }

    /// `kill -9` of node `name`'s tern process (the host, its link and its other processes stay).
    pub fn kill_node(&mut self, name: &str) -> Result<()> {
        let mut process = self
            .nodes
            .remove(name)
            .with_context(|| format!("node {name} is not running"))?;
        process.child.kill()?;
        process.child.wait()?;
        Ok(())
    }

    /// Whether node `name`'s process runs (as far as the fleet knows).
    pub fn running(&self, name: &str) -> bool {
        self.nodes.contains_key(name)
    }

    /// One exchange with the mover's API; the answer parsed as JSON.
    pub fn api(&self, method: &str, path: &str, body: &str) -> Result<serde_json::Value> {
        let text = crate::bench::http(self.api_addr(), method, path, body)?;
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: not JSON: {text}"))
    }

    /// The mover's status document.
    pub fn status(&self) -> Result<serde_json::Value> {
        self.api("GET", "/status", "")
    }

    /// A counter or gauge of the mover's `/metrics` (the sum of its labelled series), 0 when absent.
    pub fn metric(&self, name: &str) -> Result<f64> {
        let addr = SocketAddr::from((self.lab.host("mover").addr, ADMIN_PORT));
        let text = crate::bench::http(addr, "GET", "/metrics", "")?;
        Ok(metric_value(&text, name))
    }

    /// A counter or gauge of node `name`'s `/metrics` (the sum of its labelled series), 0 when absent.
    pub fn node_metric(&self, name: &str, metric: &str) -> Result<f64> {
        let addr = SocketAddr::from((self.lab.host(name).addr, NODE_PORT));
        let text = crate::bench::http(addr, "GET", "/metrics", "")?;
        Ok(metric_value(&text, metric))
    }

    /// Waits until `count` nodes are registered with the mover.
    pub fn wait_registered(&self, count: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let nodes = self.api("GET", "/api/nodes", "")?;
            if nodes.as_array().map(Vec::len) == Some(count) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{count} nodes did not register with the mover within {timeout:?}: {nodes}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Each segment's group leader and reported members, from the mover's `GET /api/segments`.
    pub fn segments(&self) -> Result<BTreeMap<String, SegmentSeen>> {
        let views = self.api("GET", "/api/segments", "")?;
        let mut seen = BTreeMap::new();
        for view in views.as_array().context("/api/segments is not a list")? {
            let name = view["name"].as_str().unwrap_or_default().to_string();
            let members = view["members"]
                .as_array()
                .map(|members| {
                    members
                        .iter()
                        .filter_map(|member| member["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            seen.insert(
                name,
                SegmentSeen {
                    leader: view["leader"].as_str().unwrap_or_default().to_string(),
                    term: view["term"].as_u64().unwrap_or(0),
                    members,
                },
            );
        }
        Ok(seen)
    }

    /// Waits until the mover knows every segment with a leader among the running nodes and every running
    /// node of it as a member; returns the leaders by segment.
    pub fn wait_leaders(&self, timeout: Duration) -> Result<BTreeMap<String, String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.segments()?;
            let settled = self.spec.segment_names().iter().all(|segment| {
                let running: Vec<String> = self
                    .nodes
                    .keys()
                    .filter(|name| segment_of(name) == segment)
                    .cloned()
                    .collect();
                seen.get(segment).is_some_and(|view| {
                    running.contains(&view.leader) && running.iter().all(|name| view.members.contains(name))
                })
            });
            if settled {
                return Ok(seen.into_iter().map(|(segment, view)| (segment, view.leader)).collect());
            }
            if Instant::now() > deadline {
                bail!("the segments did not settle within {timeout:?}: {seen:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Submits a publish of `staging` as `site`; returns the job's id.
    pub fn submit_publish(&self, site: &str, staging: &Path) -> Result<String> {
        let body = serde_json::json!({ "kind": "publish", "site": site, "staging": path_str(staging)? });
        let created = self.api("POST", "/api/jobs", &body.to_string())?;
        created["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("the mover refused the publish: {created}"))
    }

    /// The job record of `id`.
    pub fn job(&self, id: &str) -> Result<serde_json::Value> {
        self.api("GET", &format!("/api/jobs/{id}"), "")
    }

    /// Waits until job `id` has ended (committed, failed, refused or cancelled); returns its record.
    pub fn wait_job(&self, id: &str, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.job(id)?;
            if matches!(
                job["state"].as_str(),
                Some("committed" | "failed" | "refused" | "cancelled")
            ) {
                return Ok(job);
            }
            if Instant::now() > deadline {
                bail!("job {id} did not end within {timeout:?}: {job}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The mover's trees of job `id` (`prepare` and `commit`, running or finished), from its status.
    pub fn trees_of(&self, id: &str) -> Result<Vec<serde_json::Value>> {
        let status = self.status()?;
        Ok(status["trees"]
            .as_array()
            .map(|trees| trees.iter().filter(|tree| tree["job"] == id).cloned().collect())
            .unwrap_or_default())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.nodes.clear();
        self.mover = None;
        let logs = self.spec.work.join("logs");
        if let Some(keep) = std::env::var_os(KEEP_LOGS) {
            let keep = PathBuf::from(keep);
            let copied = std::fs::create_dir_all(&keep).and_then(|()| {
                for entry in std::fs::read_dir(&logs)? {
                    let entry = entry?;
                    std::fs::copy(entry.path(), keep.join(entry.file_name()))?;
                }
                Ok(())
            });
            match copied {
                Ok(()) => eprintln!("the fleet's logs are in {}", keep.display()),
                Err(error) => eprintln!("the fleet's logs were not kept in {}: {error}", keep.display()),
            }
        } else if std::thread::panicking() {
            print_warnings(&logs);
        }
    }
}

/// The environment variable naming a directory the fleet copies its processes' logs to when it ends.
pub const KEEP_LOGS: &str = "TERN_LAB_KEEP_LOGS";

/// Prints the last warnings and errors of every log under `logs` (a test failed: the logs go with it).
fn print_warnings(logs: &Path) {
    let Ok(entries) = std::fs::read_dir(logs) else { return };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let noted: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .collect();
        let shown = &noted[noted.len().saturating_sub(10)..];
        if !shown.is_empty() {
            eprintln!(
                "--- {} (last warnings; set {KEEP_LOGS}=DIR to keep the logs)",
                path.display()
            );
            for line in shown {
                eprintln!("{line}");
            }
        }
    }
}

/// A segment as the mover reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSeen {
    /// Its group leader.
    pub leader: String,
    /// The term the leader won.
    pub term: u64,
    /// Its members, the leader among them.
    pub members: Vec<String>,
}

/// The sum of the series of metric `name` in a Prometheus text exposition (`name` or `name_total`).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name || metric.strip_suffix("_total") == Some(name))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// `len` bytes of noise from `seed` (xorshift64*), so that a test's or benchmark's files do not compress
/// and every seed gives other bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_segments() {
        let spec = FleetSpec {
            tern: PathBuf::from("tern"),
            work: PathBuf::from("/tmp"),
            segments: 2,
            nodes_per_segment: 3,
            rate_mbit: None,
            discovery: true,
            discovery_speed: 10,
            quorum: None,
            log: "warn".into(),
        };
        assert_eq!(spec.node_names(), ["s1n1", "s1n2", "s1n3", "s2n1", "s2n2", "s2n3"]);
        assert_eq!(spec.segment_names(), ["s1", "s2"]);
        assert_eq!(segment_of("s12n7"), "s12");
    }

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# HELP tern_mover_sent_bytes x\ntern_mover_sent_bytes_total 120\n\
                    tern_mover_deliveries_total{outcome=\"ok\"} 3\ntern_mover_deliveries_total{outcome=\"failed\"} 1\n";
        assert_eq!(metric_value(text, "tern_mover_sent_bytes"), 120.0);
        assert_eq!(metric_value(text, "tern_mover_deliveries"), 4.0);
        assert_eq!(metric_value(text, "absent"), 0.0);
    }
}
