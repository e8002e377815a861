//! Lab topologies: hosts as Linux network namespaces, one bridge per LAN segment, a router namespace
//! joining the segments, per-link rate limits with `tc tbf`, and faults (kill, isolate, heal).
//!
//! Every name a lab creates carries its run id (`tl<id>...`), and a state file under
//! `/run/tern-lab/` records the owning process; a later lab removes whatever a crashed run left behind.
//! Each lab takes its own address block 10.B.0.0/16 (B from 77 up, claimed with a lock file under
//! `/run/tern-lab/blocks/`), so labs built at the same time (tests run in parallel) never put two
//! bridges with the same subnet in the root namespace.
//! Without root (or without namespaces) a lab runs in loopback mode: each host is a distinct 127.0.0.x
//! address on this machine, with no multicast, isolation or rate limits.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use tracing::{debug, warn};

/// Where lab state files live.
const STATE_DIR: &str = "/run/tern-lab";

/// The second octets labs may take (10.B.S.H): 50 labs at a time on one machine.
const BLOCKS: std::ops::Range<u8> = 77..127;

/// Errors of the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// The topology is not valid.
    #[error("{0}")]
    Spec(String),
    /// The operation needs network namespaces, which this lab does not have.
    #[error("{0} needs network namespaces (run as root); this lab is in loopback mode")]
    Unsupported(&'static str),
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How the lab realises hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Network namespaces joined by bridges (root).
    Namespaces,
    /// Distinct loopback addresses on this machine.
    Loopback,
}

/// A LAN segment in a spec.
#[derive(Debug, Clone)]
struct SegmentSpec {
    name: String,
    /// Third octet of 10.B.N.0/24.
    index: u8,
}

/// A host in a spec.
#[derive(Debug, Clone)]
struct HostSpec {
    name: String,
    segment: String,
}

/// Describes a topology to build.
#[derive(Debug, Clone, Default)]
pub struct LabSpec {
    segments: Vec<SegmentSpec>,
    hosts: Vec<HostSpec>,
}

impl LabSpec {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a LAN segment (addresses 10.B.N.0/24, N counting from 1; B is the lab's block).
    pub fn segment(mut self, name: &str) -> Self {
        let index = self.segments.len() as u8 + 1;
        self.segments.push(SegmentSpec {
            name: name.to_string(),
            index,
        });
        self
    }

    /// Adds a host to a segment.
    pub fn host(mut self, name: &str, segment: &str) -> Self {
        self.hosts.push(HostSpec {
            name: name.to_string(),
            segment: segment.to_string(),
        });
        self
    }

    /// Builds the topology: namespaces when running as root and they work, loopback otherwise.
    pub fn build(self) -> Result<Lab, LabError> {
        self.validate()?;
        if namespaces_available() {
            Lab::build_namespaces(self)
        } else {
            Ok(Lab::build_loopback(self))
        }
    }

    /// Builds in loopback mode whatever the privileges.
    pub fn build_loopback(self) -> Result<Lab, LabError> {
        self.validate()?;
        Ok(Lab::build_loopback(self))
    }

    fn validate(&self) -> Result<(), LabError> {
        for segment in &self.segments {
            if segment.name.len() > 4 || !segment.name.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(LabError::Spec(format!(
                    "segment name `{}`: use 1-4 letters or digits",
                    segment.name
                )));
            }
        }
        for (index, host) in self.hosts.iter().enumerate() {
            if host.name.is_empty() || host.name.len() > 8 || !host.name.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(LabError::Spec(format!(
                    "host name `{}`: use 1-8 letters or digits",
                    host.name
                )));
            }
            if !self.segments.iter().any(|s| s.name == host.segment) {
                return Err(LabError::Spec(format!(
                    "host `{}` is in unknown segment `{}`",
                    host.name, host.segment
                )));
            }
            if self.hosts[..index].iter().any(|h| h.name == host.name) {
                return Err(LabError::Spec(format!("host `{}` given twice", host.name)));
            }
        }
        if self.hosts.len() > 200 {
            return Err(LabError::Spec("at most 200 hosts".into()));
        }
        Ok(())
    }
}

/// Whether this process can create network namespaces.
pub fn namespaces_available() -> bool {
    if !is_root() || which("ip").is_none() {
        return false;
    }
    // Unique per call: tests in one process probe concurrently.
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let probe = format!(
        "tlprobe{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    let created = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status();
    let works = created.is_ok_and(|s| s.success());
    if works {
        let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    }
    works
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Finds a program on PATH (and in the sbin directories, where iproute2 lives).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|candidate| candidate.is_file())
}

/// The `tern` binary built beside the running program (tests run from `target/<profile>/deps`), or the one
/// named by `TERN_BIN`.
pub fn tern_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("TERN_BIN") {
        return Some(PathBuf::from(path));
    }
    let here = std::env::current_exe().ok()?;
    here.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("tern"))
        .find(|candidate| candidate.is_file())
}

/// A host of a built lab.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its name in the spec.
    pub name: String,
    /// Its segment.
    pub segment: String,
    /// Its address.
    pub addr: Ipv4Addr,
    namespace: Option<String>,
    /// Bridge-side end of its link (namespaces mode).
    link: Option<String>,
}

/// Bytes a host's link carried, counted by the kernel ([`Lab::link_bytes`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkBytes {
    /// Bytes the host sent.
    pub sent: u64,
    /// Bytes the host received.
    pub received: u64,
}

/// A process started in a host; killed when dropped.
pub struct HostProcess {
    /// The child.
    pub child: Child,
    /// The host it runs in.
    pub host: String,
}

impl HostProcess {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A built topology. Dropping it tears everything down.
pub struct Lab {
    mode: Mode,
    id: String,
    /// Second octet of every address of this lab.
    block: u8,
    hosts: BTreeMap<String, Host>,
    bridges: Vec<String>,
    router: Option<String>,
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

impl Lab {
    fn build_loopback(spec: LabSpec) -> Lab {
        let mut hosts = BTreeMap::new();
        for (index, host) in spec.hosts.iter().enumerate() {
            let addr = Ipv4Addr::new(127, 77, 0, index as u8 + 2);
            hosts.insert(
                host.name.clone(),
                Host {
                    name: host.name.clone(),
                    segment: host.segment.clone(),
                    addr,
                    namespace: None,
                    link: None,
                },
            );
        }
        Lab {
            mode: Mode::Loopback,
            id: String::new(),
            block: 0,
            hosts,
            bridges: Vec::new(),
            router: None,
        }
    }

    fn build_namespaces(spec: LabSpec) -> Result<Lab, LabError> {
        clean_leftovers();
        let counter = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        // Short id: interface names are limited to 15 bytes.
        let id = format!("{:x}", (std::process::id() % 0xfff) * 16 + counter % 16);
        std::fs::create_dir_all(STATE_DIR)?;
        std::fs::write(state_file(&id), std::process::id().to_string())?;
        let block = match claim_block(&id) {
            Ok(block) => block,
            Err(error) => {
                let _ = std::fs::remove_file(state_file(&id));
                return Err(error);
            }
        };
        let mut lab = Lab {
            mode: Mode::Namespaces,
            id: id.clone(),
            block,
            hosts: BTreeMap::new(),
            bridges: Vec::new(),
            router: None,
        };
        // From here on, a failure drops `lab`, which removes what was made.
        let router = format!("tl{id}-rt");
        ip(&["netns", "add", &router])?;
        lab.router = Some(router.clone());
        ns_exec(&router, &["ip", "link", "set", "lo", "up"])?;
        ns_exec(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for segment in &spec.segments {
            let bridge = format!("tl{id}b{}", segment.name);
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            lab.bridges.push(bridge.clone());
            // Flood multicast to every port: without a querier, snooping would drop it.
            ip(&["link", "set", &bridge, "type", "bridge", "mcast_snooping", "0"])?;
            // The test process (root namespace) reaches the segment's hosts directly through this address.
            ip(&[
                "addr",
                "add",
                &format!("10.{block}.{}.253/24", segment.index),
                "dev",
                &bridge,
            ])?;
            ip(&["link", "set", &bridge, "up"])?;
            let link = format!("tl{id}r{}", segment.name);
            ip(&[
                "link",
                "add",
                &link,
                "type",
                "veth",
                "peer",
                "name",
                &format!("s{}", segment.name),
                "netns",
                &router,
            ])?;
            ip(&["link", "set", &link, "master", &bridge])?;
            ip(&["link", "set", &link, "up"])?;
            let router_addr = format!("10.{block}.{}.254/24", segment.index);
            ns_exec(
                &router,
                &["ip", "addr", "add", &router_addr, "dev", &format!("s{}", segment.name)],
            )?;
            ns_exec(&router, &["ip", "link", "set", &format!("s{}", segment.name), "up"])?;
        }
        let mut per_segment: BTreeMap<String, u8> = BTreeMap::new();
        for (index, host) in spec.hosts.iter().enumerate() {
            let segment = spec.segments.iter().find(|s| s.name == host.segment).ok_or_else(|| {
                LabError::Spec(format!("host `{}` is in unknown segment `{}`", host.name, host.segment))
            })?;
            let number = per_segment.entry(segment.name.clone()).or_insert(0);
            *number += 1;
            let addr = Ipv4Addr::new(10, block, segment.index, *number);
            let namespace = format!("tl{id}-{}", host.name);
            ip(&["netns", "add", &namespace])?;
            let link = format!("tl{id}v{index}");
            lab.hosts.insert(
                host.name.clone(),
                Host {
                    name: host.name.clone(),
                    segment: host.segment.clone(),
                    addr,
                    namespace: Some(namespace.clone()),
                    link: Some(link.clone()),
                },
            );
            ip(&[
                "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
            ])?;
            ip(&["link", "set", &link, "master", &format!("tl{id}b{}", segment.name)])?;
            ip(&["link", "set", &link, "up"])?;
            ns_exec(&namespace, &["ip", "link", "set", "lo", "up"])?;
            ns_exec(&namespace, &["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ns_exec(&namespace, &["ip", "link", "set", "eth0", "up"])?;
            ns_exec(
                &namespace,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.{block}.{}.254", segment.index),
                ],
            )?;
        }
        debug!(id = %lab.id, block = lab.block, hosts = lab.hosts.len(), "lab built");
        Ok(lab)
    }

    /// How hosts are realised.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> &Host {
        match self.hosts.get(name) {
            Some(host) => host,
            None => panic!("no host `{name}` in this lab"),
        }
    }

    /// Waits until `host` accepts TCP connections on `port` (from this process), up to `timeout`.
    pub fn wait_listening(&self, host: &str, port: u16, timeout: std::time::Duration) -> Result<(), LabError> {
        let addr = std::net::SocketAddr::from((self.host(host).addr, port));
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(LabError::Spec(format!(
                    "nothing listening on {addr} (host {host}) after {timeout:?}"
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Every host.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// A command that runs `program args` inside `host` (in loopback mode, on this machine).
    pub fn command(&self, host: &str, program: &str, args: &[&str]) -> Command {
        match &self.host(host).namespace {
            Some(namespace) => {
                let mut command = Command::new(which("ip").unwrap_or_else(|| PathBuf::from("ip")));
                command.args(["netns", "exec", namespace, program]).args(args);
                command
            }
            None => {
                let mut command = Command::new(program);
                command.args(args);
                command
            }
        }
    }

    /// Runs a command inside `host` to completion.
    pub fn run(&self, host: &str, program: &str, args: &[&str]) -> Result<Output, LabError> {
        Ok(self.command(host, program, args).stdin(Stdio::null()).output()?)
    }

    /// Starts a long-running command inside `host`.
    pub fn spawn(&self, host: &str, program: &str, args: &[&str]) -> Result<HostProcess, LabError> {
        let child = self.command(host, program, args).stdin(Stdio::null()).spawn()?;
        Ok(HostProcess {
            child,
            host: host.to_string(),
        })
    }

    /// Kills every process running in `host` (a host crash).
    pub fn kill(&self, host: &str) -> Result<(), LabError> {
        let namespace = self
            .host(host)
            .namespace
            .as_ref()
            .ok_or(LabError::Unsupported("killing a host"))?;
        kill_namespace(namespace);
        Ok(())
    }

    /// `kill -9` of every process in `host` whose program name (`/proc/PID/comm`) is `program`, e.g. a
    /// daemon and the children it forked for its connections; returns how many were killed.
    pub fn kill_program(&self, host: &str, program: &str) -> Result<usize, LabError> {
        let namespace = self
            .host(host)
            .namespace
            .as_ref()
            .ok_or(LabError::Unsupported("killing a program in a host"))?;
        let output = Command::new(which("ip").unwrap_or_else(|| PathBuf::from("ip")))
            .args(["netns", "pids", namespace])
            .output()?;
        let mut killed = 0;
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == program && Command::new("kill").args(["-9", pid]).status()?.success() {
                killed += 1;
            }
        }
        Ok(killed)
    }

    /// Cuts `host` off the network (its link goes down).
    pub fn isolate(&self, host: &str) -> Result<(), LabError> {
        let link = self
            .host(host)
            .link
            .as_ref()
            .ok_or(LabError::Unsupported("isolating a host"))?;
        ip(&["link", "set", link, "down"])
    }

    /// Reconnects an isolated host.
    pub fn heal(&self, host: &str) -> Result<(), LabError> {
        let link = self
            .host(host)
            .link
            .as_ref()
            .ok_or(LabError::Unsupported("healing a host"))?;
        ip(&["link", "set", link, "up"])
    }

    /// Limits `host`'s link to `mbit` megabits per second in each direction (token bucket filter).
    pub fn limit_rate(&self, host: &str, mbit: u32) -> Result<(), LabError> {
        let entry = self.host(host);
        let (Some(link), Some(namespace)) = (&entry.link, &entry.namespace) else {
            return Err(LabError::Unsupported("rate limits"));
        };
        let rate = format!("{mbit}mbit");
        // Burst must cover one timer tick at the rate; 64 KiB is plenty up to a few hundred Mbit/s.
        let tbf = ["root", "tbf", "rate", rate.as_str(), "burst", "64kb", "latency", "50ms"];
        run_checked(Command::new("tc").args(["qdisc", "replace", "dev", link]).args(tbf))?;
        ns_exec(
            namespace,
            &[&["tc", "qdisc", "replace", "dev", "eth0"][..], &tbf[..]].concat(),
        )
    }

    /// Sets the MTU of `host`'s link, both ends (a path like a tunnel's: WireGuard's is 1420).
    pub fn set_mtu(&self, host: &str, mtu: u32) -> Result<(), LabError> {
        let entry = self.host(host);
        let (Some(link), Some(namespace)) = (&entry.link, &entry.namespace) else {
            return Err(LabError::Unsupported("MTU"));
        };
        let mtu = mtu.to_string();
        run_checked(Command::new("ip").args(["link", "set", "dev", link, "mtu", mtu.as_str()]))?;
        ns_exec(namespace, &["ip", "link", "set", "dev", "eth0", "mtu", mtu.as_str()])
    }

    /// Removes a rate limit.
    pub fn unlimit_rate(&self, host: &str) -> Result<(), LabError> {
        let entry = self.host(host);
        let (Some(link), Some(namespace)) = (&entry.link, &entry.namespace) else {
            return Err(LabError::Unsupported("rate limits"));
        };
        let _ = run_checked(Command::new("tc").args(["qdisc", "del", "dev", link, "root"]));
        let _ = ns_exec(namespace, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
        Ok(())
    }

    /// The bytes `host` has sent and received over its link since the lab was built, as the kernel counts
    /// them on the bridge side of its veth pair (Ethernet frames: payload and every header). What the
    /// host's processes count themselves can be checked against these.
    pub fn link_bytes(&self, host: &str) -> Result<LinkBytes, LabError> {
        let link = self
            .host(host)
            .link
            .as_ref()
            .ok_or(LabError::Unsupported("interface counters"))?;
        let counter = |name: &str| -> Result<u64, LabError> {
            let path = format!("/sys/class/net/{link}/statistics/{name}");
            let text = std::fs::read_to_string(&path)?;
            text.trim()
                .parse()
                .map_err(|_| LabError::Spec(format!("{path}: not a number: {}", text.trim())))
        };
        // The bridge side receives what the host sends, and transmits what the host receives.
        Ok(LinkBytes {
            sent: counter("rx_bytes")?,
            received: counter("tx_bytes")?,
        })
    }

    /// The names of every namespace and link this lab made (for leak checks).
    pub fn created_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.hosts.values().filter_map(|h| h.namespace.clone()).collect();
        names.extend(self.hosts.values().filter_map(|h| h.link.clone()));
        names.extend(self.bridges.iter().cloned());
        names.extend(self.router.iter().cloned());
        names
    }

    fn teardown(&mut self) {
        if self.mode != Mode::Namespaces {
            return;
        }
        teardown_id(&self.id);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn state_file(id: &str) -> PathBuf {
    PathBuf::from(STATE_DIR).join(format!("{id}.pid"))
}

fn blocks_dir() -> PathBuf {
    PathBuf::from(STATE_DIR).join("blocks")
}

/// Claims a free address block for lab `id`: the first block whose lock file can be created. A lock file
/// whose lab has no state file any more (torn down, or cleaned as a crashed run's) is stale and is taken over.
fn claim_block(id: &str) -> Result<u8, LabError> {
    let dir = blocks_dir();
    std::fs::create_dir_all(&dir)?;
    for block in BLOCKS {
        let path = dir.join(block.to_string());
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    std::io::Write::write_all(&mut file, id.as_bytes())?;
                    return Ok(block);
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    // An empty file is a claim being written right now (unless it is old: its writer died).
                    let fresh = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() < 10));
                    let held = if holder.is_empty() {
                        fresh
                    } else {
                        state_file(holder.trim()).exists()
                    };
                    if held {
                        break;
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    Err(LabError::Spec(format!(
        "every lab address block 10.{}-{}.0.0/16 is in use: too many labs running on this machine \
         (their state is in {STATE_DIR})",
        BLOCKS.start,
        BLOCKS.end - 1
    )))
}

/// Frees the address blocks held by lab `id`.
fn release_blocks(id: &str) {
    let Ok(entries) = std::fs::read_dir(blocks_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if std::fs::read_to_string(entry.path()).is_ok_and(|holder| holder.trim() == id) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes everything of run `id`: processes, namespaces, links, its state file.
fn teardown_id(id: &str) {
    let prefix = format!("tl{id}-");
    for namespace in list_namespaces().into_iter().filter(|n| n.starts_with(&prefix)) {
        kill_namespace(&namespace);
        if let Err(error) = ip(&["netns", "del", &namespace]) {
            warn!(%namespace, %error, "namespace not removed");
        }
    }
    let link_prefix = format!("tl{id}");
    for link in list_links().into_iter().filter(|l| l.starts_with(&link_prefix)) {
        let _ = ip(&["link", "del", &link]);
    }
    release_blocks(id);
    let _ = std::fs::remove_file(state_file(id));
}

/// Tears down every lab this process owns (for a Ctrl-C handler: `Drop` does not run on a signal).
pub fn teardown_own() {
    let Ok(entries) = std::fs::read_dir(STATE_DIR) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let path = entry.path();
        let owner: Option<u32> = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok());
        if owner == Some(me)
            && let Some(id) = path.file_stem().and_then(|s| s.to_str())
        {
            teardown_id(id);
        }
    }
}

/// Tears down labs whose owning process is gone (a crashed or killed run).
pub fn clean_leftovers() {
    let Ok(entries) = std::fs::read_dir(STATE_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "pid") {
            continue;
        }
        let Some(id) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        let owner: Option<u32> = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok());
        let alive = owner.is_some_and(|pid| PathBuf::from(format!("/proc/{pid}")).exists());
        if !alive {
            warn!(%id, "removing what a crashed lab run left behind");
            teardown_id(&id);
        }
    }
}

fn list_namespaces() -> Vec<String> {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Names of the links in the root namespace.
pub fn list_links() -> Vec<String> {
    let Ok(output) = Command::new("ip").args(["-o", "link", "show"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

/// Names of the network namespaces.
pub fn namespaces() -> Vec<String> {
    list_namespaces()
}

fn kill_namespace(namespace: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "pids", namespace]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
}

fn ip(args: &[&str]) -> Result<(), LabError> {
    run_checked(Command::new(which("ip").unwrap_or_else(|| PathBuf::from("ip"))).args(args))
}

fn ns_exec(namespace: &str, args: &[&str]) -> Result<(), LabError> {
    run_checked(
        Command::new(which("ip").unwrap_or_else(|| PathBuf::from("ip")))
            .args(["netns", "exec", namespace])
            .args(args),
    )
}

fn run_checked(command: &mut Command) -> Result<(), LabError> {
    let line = format!("{command:?}");
    let output = command.stdin(Stdio::null()).output()?;
    if output.status.success() {
        return Ok(());
    }
    Err(LabError::Command {
        command: line,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}
