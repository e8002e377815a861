//! `tern`: the one binary of the tern CDN. Each role is a subcommand; run `tern help ROLE` for its flags.

mod config;
mod demo;
mod mover_client;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use tern_wire::mover::{ConflictPolicy, JobKind, JobRequest};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::FileConfig;

/// tern: a self-hosted content delivery network.
///
/// One binary, several roles. Start with `tern demo` to see an origin and two edges working together,
/// then run each role on its own machine. Every role runs without a config file for the simple case and
/// takes `--config FILE` (TOML) for the rest; flags given on the command line win over the file.
#[derive(Parser, Debug)]
#[command(name = "tern", version, propagate_version = true)]
struct Cli {
    /// Log filter, e.g. `info`, `debug`, `tern_edge=debug` (also read from RUST_LOG).
    #[arg(long, global = true, env = "TERN_LOG", default_value = "info")]
    log: String,

    /// Worker threads [default: one per CPU core this process may use]. With one, tern runs a
    /// single-threaded event loop, which avoids cross-thread wake-ups.
    #[arg(long, global = true, env = "TERN_THREADS")]
    threads: Option<usize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an HTTP edge cache in front of an origin.
    ///
    /// Caches per RFC 9111 (with stale-while-revalidate and stale-if-error, CDN-Cache-Control and
    /// Cache-Status), collapses concurrent misses into one origin request, and purges by URL (`PURGE`),
    /// prefix or surrogate key (`POST /purge` on the admin listener).
    Edge(EdgeArgs),
    /// Serve a directory as a static origin (ETag, Last-Modified, conditional GET, ranges, Cache-Control).
    Serve(ServeArgs),
    /// Watch an origin directory and report every change to the sync service (the CP agent).
    ///
    /// Uses file-system notifications for speed and a periodic full rescan as the authority. Changes not
    /// yet acknowledged are kept on disk and resent, across restarts of either side.
    Agent(AgentArgs),
    /// Keep caches fresh: receive agents' changes, check them, and send PURGE + prefetch GET to every cache.
    ///
    /// Works with tern edges and with any cache that accepts PURGE (Varnish, Squid, nginx with a purge
    /// module).
    Sync(SyncArgs),
    /// Serve dynamic pages to edges as deltas against a base (differential caching, seed 000).
    ///
    /// Runs in front of a dynamic origin, next to it. For pages of a class (--class NAME=PATTERN) it
    /// answers an edge that names a base it holds with a dcz delta (RFC 9842) and the page's digest, derives
    /// bases from credential-free responses only, re-derives them when the deltas grow, and announces each
    /// new base so edges fetch it before they use it. Start edges with `tern edge --origin URL --delta`.
    Delta(DeltaArgs),
    /// Run the content mover (CCM): plans assignments from a staging tree and delivers them to nodes.
    ///
    /// On first start it creates its signing key in --data and writes the public half to DATA/mover.pub,
    /// which every node needs (`tern node --key`).
    Mover(MoverArgs),
    /// Run the agent on a backend server: registers with the mover, applies assignments, switches sites
    /// atomically (DIR/<site>/live).
    Node(NodeArgs),
    /// Publish a staging directory to the nodes and wait until it is committed.
    Publish(PublishArgs),
    /// Switch every node of a site back to the previous version and wait.
    Rollback(RollbackArgs),
    /// List the mover's jobs.
    Jobs(JobsArgs),
    /// Create, list or restore checkpoints (compressed full copies of a site's published version).
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Write a new random secret key file (for --purge-key and the other --...-key flags).
    Keygen(KeygenArgs),
    /// Start an origin and two edges on this machine with a sample site, and show how to use them.
    Demo(demo::DemoArgs),
}

#[derive(Args, Debug)]
struct EdgeArgs {
    /// TOML config file; its `[edge]` table holds every setting (see README).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve HTTP on [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Origin base URL, e.g. http://127.0.0.1:9000.
    #[arg(long)]
    origin: Option<String>,
    /// Directory of the disk cache; without it the cache is in memory only and lost on restart.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Size of the cache in bytes (suffixes K, M, G allowed) [default: 1G].
    #[arg(long, value_parser = parse_size)]
    cache_size: Option<u64>,
    /// Size of the memory tier in front of the disk cache [default: 256M].
    #[arg(long, value_parser = parse_size)]
    memory_size: Option<u64>,
    /// Admin listener address for /metrics, /status and POST /purge (keep it private).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Key file (from `tern keygen`) whose token authorises PURGE requests.
    #[arg(long)]
    purge_key: Option<PathBuf>,
    /// Network allowed to PURGE without the key (repeatable), e.g. 10.0.0.0/8; a bare address means
    /// that address alone.
    #[arg(long, value_parser = parse_network)]
    purge_allow: Vec<IpNet>,
    /// Admin URL of the sync service; with --cache-dir the edge catches up with it at start-up, so content
    /// that changed while it was down is never served.
    #[arg(long)]
    sync_url: Option<String>,
    /// Path prefix under which responses that set cookies may be stored (repeatable, e.g. /shop/). By
    /// default a response with Set-Cookie is never stored, so no user's cookie reaches another.
    #[arg(long, value_name = "PATH_PREFIX")]
    store_set_cookie: Vec<String>,
    /// Most header fields a request may have (more get 431) [default: 100, as Apache's
    /// LimitRequestFields]. Above 100 every request costs more CPU, so raise it only if clients need it.
    #[arg(long, value_name = "N")]
    max_header_fields: Option<usize>,
    /// Address to serve HTTPS on, beside the plain HTTP of --listen (e.g. 0.0.0.0:443); needs --tls-cert
    /// with --tls-key, or --tls-dir.
    #[arg(long, value_name = "ADDR")]
    tls_listen: Option<SocketAddr>,
    /// PEM certificate chain (server certificate first) served on --tls-listen and, when there is one, on
    /// the admin listener. Reloaded on SIGHUP and when the file changes, without dropping connections.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Directory of certificates chosen by the name the client asks for (SNI), instead of --tls-cert:
    /// NAME.crt with NAME.key, or NAME/fullchain.pem with NAME/privkey.pem (certbot's live/ directory);
    /// the pair named `default` answers unknown names. Reloaded like --tls-cert.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_dir: Option<PathBuf>,
    /// Answer plain HTTP requests on --listen with 308 to the same URL on --tls-listen (PURGE is still
    /// served on --listen; the admin listener is unaffected).
    #[arg(long)]
    redirect_https: bool,
    /// CA certificate (PEM) that alone vouches for an https:// --origin [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    origin_ca: Option<PathBuf>,
    /// CA certificate (PEM) that alone vouches for an https:// --sync-url [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    sync_ca: Option<PathBuf>,
    /// Differential caching with a `tern delta` upstream: `on` (the flag alone), `auto` (on once the
    /// upstream announces a base; the default) or `off`.
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "on")]
    delta: Option<tern_edge::delta::DeltaMode>,
}

#[derive(Args, Debug)]
struct DeltaArgs {
    /// TOML config file; its `[delta]` table holds every setting, `[[delta.classes]]` the classes with their
    /// policies (see docs/delta.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address edges send their requests to [default: 127.0.0.1:8090].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The dynamic origin's base URL, e.g. http://127.0.0.1:9000.
    #[arg(long)]
    origin: Option<String>,
    /// A page class, NAME=PATTERN (repeatable), e.g. news=/news/* ; `*` matches any run of characters.
    #[arg(long = "class", value_name = "NAME=PATTERN")]
    classes: Vec<String>,
    /// Admin listener address for /metrics and /status (keep it private).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// CA certificate (PEM) that alone vouches for an https:// --origin [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    origin_ca: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// HTTPS for a role's listeners: its main listener and its admin listener both serve HTTPS only, with the
/// same certificate.
#[derive(Args, Debug)]
struct TlsArgs {
    /// PEM certificate chain (server certificate first): with --tls-key, this role's HTTP listeners (its
    /// API and its admin listener) serve HTTPS only, both with this certificate. Reloaded on SIGHUP and
    /// when the file changes, without dropping connections.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Directory of certificates chosen by the name the client asks for (SNI), instead of --tls-cert:
    /// NAME.crt with NAME.key, or NAME/fullchain.pem with NAME/privkey.pem; `default` answers unknown names.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_dir: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS settings these flags give, if any.
    fn config(&self) -> Result<Option<tern_http::tls::TlsConfig>> {
        Ok(tern_http::tls::TlsConfig::from_flags(
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls_dir.clone(),
        )?)
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Directory to serve.
    dir: Option<PathBuf>,
    /// TOML config file; its `[serve]` table holds every setting, including per-prefix rules.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to serve HTTP on [default: 127.0.0.1:9000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin listener address for /metrics and /status.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Cache-Control sent with every file, e.g. "public, max-age=60".
    #[arg(long)]
    cache_control: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// TOML config file; its `[agent]` table holds every setting.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Origin content directory to watch.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Site name, as configured on the sync service.
    #[arg(long)]
    site: Option<String>,
    /// URL the directory is served under, e.g. http://www.example.com.
    #[arg(long)]
    base_url: Option<String>,
    /// The sync service's agent listener, e.g. 10.0.0.2:7070.
    #[arg(long)]
    sync: Option<SocketAddr>,
    /// Agent key file (from `tern keygen`), shared with the sync service's --key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Where the agent keeps its state [default: `.tern-agent` beside DIR, i.e. DIR/../.tern-agent made
    /// absolute]. Losing it makes the agent report every file again, under a new incarnation.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// This agent's name [default: the site name].
    #[arg(long)]
    name: Option<String>,
    /// Full rescan interval in seconds [default: 30].
    #[arg(long)]
    rescan_secs: Option<u64>,
    /// Quiet time after a file-system event before scanning, in milliseconds (bursts become one scan)
    /// [default: 10].
    #[arg(long)]
    debounce_ms: Option<u64>,
    /// Admin listener address for /metrics and /status.
    #[arg(long)]
    admin: Option<SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args, Debug)]
struct SyncArgs {
    /// TOML config file; its `[sync]` table holds every setting, including many sites and caches.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address agents connect to [default: 127.0.0.1:7070]. Its framed protocol authenticates every
    /// frame with --key; --tls-cert applies to the admin listener.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Agent key file (from `tern keygen`).
    #[arg(long)]
    key: Option<PathBuf>,
    /// A site as NAME=HOST[,HOST...] (repeatable).
    #[arg(long = "site")]
    sites: Vec<String>,
    /// A cache's base URL, e.g. http://10.0.0.7:8080 (repeatable).
    #[arg(long = "cache")]
    caches: Vec<String>,
    /// The caches' purge key file (the edges' --purge-key).
    #[arg(long)]
    cache_key: Option<PathBuf>,
    /// Data directory for the change log and cache positions [default: /var/lib/tern/sync as root, else
    /// $XDG_STATE_HOME/tern/sync or ~/.local/state/tern/sync].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Admin listener address for /metrics and /status.
    #[arg(long)]
    admin: Option<SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args, Debug)]
struct MoverArgs {
    /// API address [default: 127.0.0.1:7000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (database, keys, shadow copies) [default: /var/lib/tern/mover as root, else
    /// $XDG_STATE_HOME/tern/mover or ~/.local/state/tern/mover].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Nodes that must have a publish prepared before it is committed [default: all].
    #[arg(long)]
    quorum: Option<usize>,
    /// Checkpoints kept per site [default: 5].
    #[arg(long)]
    checkpoints_kept: Option<usize>,
    /// Admin listener address for /metrics and /status.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Encrypt every assignment (XChaCha20-Poly1305) with this key file (`tern keygen`); nodes need the
    /// same file as their --encryption-key.
    #[arg(long)]
    encryption_key: Option<PathBuf>,
    /// HAProxy's runtime API (`HOST:PORT`, or a Unix socket path; `stats socket ... level admin` in
    /// haproxy.cfg): a node that misses a publish is taken out of the rotation until it is brought up to
    /// date. Its servers must be named after the nodes.
    #[arg(long, value_name = "ADDR|SOCKET")]
    haproxy: Option<String>,
    /// The HAProxy backend whose servers are the nodes.
    #[arg(long, default_value = "tern", requires = "haproxy")]
    haproxy_backend: String,
    /// How assignments reach nodes: `tree` (store and forward through the segments' group leaders, so the
    /// mover sends about one copy; nodes outside led segments get theirs directly; needs the cluster key),
    /// `star` (the mover sends every node its own copy), or `auto`: the tree when any target is in a
    /// segment with a group leader.
    #[arg(long, default_value = "auto", value_name = "auto|tree|star")]
    delivery: tern_mover::tree_delivery::DeliveryMode,
    /// The cluster key file (`tern keygen`) every node of the fleet also has: it authenticates the group
    /// leaders' segment reports (`POST /api/segments/report`) and the store-and-forward tree.
    #[arg(long, value_name = "FILE")]
    cluster_key: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    /// CA certificate (PEM) that alone vouches for nodes registered with https:// URLs [default: the
    /// system's roots].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct NodeArgs {
    /// The mover's API, e.g. http://10.0.0.1:7000 or https://mover.example:7000.
    #[arg(long)]
    mover: String,
    /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Root of the hosted sites (each is served from ROOT/<site>/live).
    #[arg(long)]
    root: PathBuf,
    /// This node's name.
    #[arg(long)]
    name: String,
    /// The mover's public key file (DATA/mover.pub on the mover).
    #[arg(long)]
    key: PathBuf,
    /// Address to take assignments on [default: 127.0.0.1:7100].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// URL the mover should use to reach this node [default: http://LISTEN, or https://LISTEN with
    /// --tls-cert].
    #[arg(long)]
    advertise: Option<String>,
    /// Content group this node belongs to (repeat for several); `tern publish --group G` targets a group.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Key file that decrypts assignments, when the mover encrypts them (its --encryption-key).
    #[arg(long)]
    encryption_key: Option<PathBuf>,
    /// How long a version that stopped being live stays on disk, for readers that resolved `live` just
    /// before the switch (e.g. 60s, 10m; 0s deletes it right after the switch).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    superseded_grace: std::time::Duration,
    #[command(flatten)]
    segment: SegmentArgs,
}

/// The node's network segment: with `--segment`, the node takes part in its LAN's group-leader election
/// and registration (seed 004's discovery phase) on a multicast control channel, and, when it leads, reports
/// the segment to the mover.
#[derive(Args, Debug)]
struct SegmentArgs {
    /// The network segment this node belongs to (e.g. a rack or a data centre's LAN); nodes with the same
    /// segment and control channel elect one group leader. Needs --control-channel and --cluster-key.
    #[arg(long, value_name = "NAME", requires_all = ["control_channel", "cluster_key"])]
    segment: Option<String>,
    /// The segment's control channel: an IPv4 multicast group and port every member listens to, e.g.
    /// 239.192.0.1:7200.
    #[arg(long, value_name = "GROUP:PORT", requires = "segment")]
    control_channel: Option<std::net::SocketAddrV4>,
    /// The cluster key file (`tern keygen`; the mover's --cluster-key): control messages, registrations,
    /// reports and the store-and-forward tree carry its tag, so a machine without it can neither vote nor
    /// lead.
    #[arg(long, value_name = "FILE")]
    cluster_key: Option<PathBuf>,
    /// This node's claim to lead, 0 to 255 (higher is stronger); CPU, free disk, members known and uptime
    /// break ties.
    #[arg(long, value_name = "N", default_value_t = tern_node::election::DEFAULT_PRIORITY, requires = "segment")]
    leader_priority: u8,
    /// Never become the group leader (the node still follows and registers).
    #[arg(long, requires = "segment")]
    never_lead: bool,
    /// A pre-assigned leader (repeat, strongest first): when given, only these nodes claim leadership.
    #[arg(long = "preassigned-leader", value_name = "NODE", requires = "segment")]
    preassigned_leaders: Vec<String>,
    /// The local IPv4 address of the interface the control channel is on [default: the one the route to
    /// the group uses].
    #[arg(long, value_name = "ADDR", requires = "segment")]
    multicast_interface: Option<std::net::Ipv4Addr>,
    /// Where the segment is: a time zone such as Europe/London, or a place name; the mover sorts the
    /// tree's group leaders by it.
    #[arg(long, value_name = "TZ", requires = "segment")]
    location: Option<String>,
    /// UDP address this node takes registrations on when it leads [default: an ephemeral port on
    /// --multicast-interface, or on every interface].
    #[arg(long, value_name = "ADDR", requires = "segment")]
    registration_listen: Option<SocketAddr>,
}

#[derive(Args, Debug)]
struct PublishArgs {
    /// The mover's API.
    #[arg(long)]
    mover: String,
    /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Hosted site.
    #[arg(long)]
    site: String,
    /// Staging directory to publish.
    #[arg(long)]
    staging: PathBuf,
    #[command(flatten)]
    job: JobOptions,
    /// Publish only files matching this pattern (repeatable; `*.html`, `static/`).
    #[arg(long)]
    include: Vec<String>,
    /// Never publish files matching this pattern (repeatable; `*.tmp`, `drafts/`).
    #[arg(long)]
    exclude: Vec<String>,
}

/// When and where a job runs, and its policies.
#[derive(Args, Debug)]
struct JobOptions {
    /// Only the nodes of this content group (a publish hosts the site there from then on) [default: the
    /// site's nodes; every registered node for a new site].
    #[arg(long)]
    group: Option<String>,
    /// Run at this time instead of now: RFC 3339 (`2026-12-01T02:00:00Z`) or from now (`+30m`, `+2h`).
    #[arg(long)]
    at: Option<String>,
    /// Run again every DURATION (`1h`, `1day`) until cancelled (`tern jobs --cancel ID`).
    #[arg(long)]
    every: Option<String>,
    /// When another job for the same site and nodes is running: `queue` (wait for it) or `refuse`.
    #[arg(long, default_value = "queue")]
    on_conflict: String,
    /// Try a failed job again this many times before it is failed.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Time between tries (`30s`, `5m`).
    #[arg(long, default_value = "30s")]
    retry_delay: String,
    /// Do not wait for a job scheduled for later (or repeating) to finish.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Args, Debug)]
struct RollbackArgs {
    /// The mover's API.
    #[arg(long)]
    mover: String,
    /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Hosted site.
    #[arg(long)]
    site: String,
    #[command(flatten)]
    job: JobOptions,
}

#[derive(Subcommand, Debug)]
enum CheckpointCommand {
    /// Checkpoint the site's published version.
    Create {
        /// The mover's API.
        #[arg(long)]
        mover: String,
        /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Hosted site.
        #[arg(long)]
        site: String,
    },
    /// List the site's checkpoints.
    List {
        /// The mover's API.
        #[arg(long)]
        mover: String,
        /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Hosted site.
        #[arg(long)]
        site: String,
    },
    /// Publish checkpoint N to every node again, and wait.
    Restore {
        /// The mover's API.
        #[arg(long)]
        mover: String,
        /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Hosted site.
        #[arg(long)]
        site: String,
        /// Checkpoint number.
        number: u64,
    },
}

#[derive(Args, Debug)]
struct JobsArgs {
    /// The mover's API.
    #[arg(long)]
    mover: String,
    /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Cancel this job (one that has not started; a repeating job's next run ends the series).
    #[arg(long)]
    cancel: Option<String>,
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// File to create (refuses to overwrite an existing one).
    file: PathBuf,
}

fn parse_size(text: &str) -> Result<u64, String> {
    tern_edge::config::parse_byte_size(text)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A network (`10.0.0.0/8`) or a single address (`127.0.0.1`, read as `/32` or `/128`).
fn parse_network(text: &str) -> Result<IpNet, String> {
    if let Ok(network) = text.parse::<IpNet>() {
        return Ok(network);
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}` is neither a network (10.0.0.0/8) nor an address (10.0.0.1)"))
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    let filter =
        tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Edge(args) => run_edge(args).await,
        Command::Serve(args) => run_serve(args).await,
        Command::Keygen(args) => {
            tern_wire::SecretKey::write_new(&args.file)?;
            println!("wrote a new key to {}", args.file.display());
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Agent(args) => run_agent(args).await,
        Command::Mover(args) => run_mover(args).await,
        Command::Node(args) => run_node(args).await,
        Command::Publish(args) => {
            let staging = std::fs::canonicalize(&args.staging)
                .with_context(|| format!("staging directory {}", args.staging.display()))?;
            let mut request = JobRequest::new(JobKind::Publish, &args.site);
            request.staging = Some(staging.display().to_string());
            if !args.include.is_empty() || !args.exclude.is_empty() {
                request.include = Some(args.include);
                request.exclude = Some(args.exclude);
            }
            let wait = args.job.apply(&mut request)?;
            mover_client::run_job(&args.mover, args.ca.as_deref(), request, wait).await
        }
        Command::Rollback(args) => {
            let mut request = JobRequest::new(JobKind::Rollback, &args.site);
            let wait = args.job.apply(&mut request)?;
            mover_client::run_job(&args.mover, args.ca.as_deref(), request, wait).await
        }
        Command::Jobs(JobsArgs {
            mover,
            ca,
            cancel: Some(id),
        }) => mover_client::cancel_job(&mover, ca.as_deref(), &id).await,
        Command::Jobs(args) => mover_client::list_jobs(&args.mover, args.ca.as_deref()).await,
        Command::Checkpoint(CheckpointCommand::Create { mover, ca, site }) => {
            mover_client::create_checkpoint(&mover, ca.as_deref(), &site).await
        }
        Command::Checkpoint(CheckpointCommand::List { mover, ca, site }) => {
            mover_client::list_checkpoints(&mover, ca.as_deref(), &site).await
        }
        Command::Checkpoint(CheckpointCommand::Restore {
            mover,
            ca,
            site,
            number,
        }) => {
            let mut request = JobRequest::new(JobKind::Restore, &site);
            request.checkpoint = Some(number);
            mover_client::run_job(&mover, ca.as_deref(), request, true).await
        }
        Command::Sync(args) => run_sync(args).await,
        Command::Delta(args) => run_delta(args).await,
    }
}

async fn run_edge(args: EdgeArgs) -> Result<()> {
    let file = FileConfig::load(args.config.as_deref())?;
    let mut config = file.edge.unwrap_or_default();
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(origin) = args.origin {
        config.origin = origin;
    }
    if let Some(dir) = args.cache_dir {
        config.cache_dir = Some(dir);
    }
    if let Some(size) = args.cache_size {
        config.cache_size = size;
    }
    if let Some(size) = args.memory_size {
        config.memory_size = size;
    }
    if let Some(admin) = args.admin {
        config.admin = Some(admin);
    }
    if let Some(key) = args.purge_key {
        config.purge_key = Some(key);
    }
    if !args.purge_allow.is_empty() {
        config.purge_allow = args.purge_allow;
    }
    if let Some(url) = args.sync_url {
        config.sync_url = Some(url);
    }
    if !args.store_set_cookie.is_empty() {
        config.store_set_cookie_paths = args.store_set_cookie;
    }
    if let Some(fields) = args.max_header_fields {
        config.max_header_fields = fields;
    }
    if let Some(addr) = args.tls_listen {
        config.tls_listen = Some(addr);
    }
    // Certificates on the command line replace those of the file, whichever form either has.
    if args.tls_cert.is_some() || args.tls_dir.is_some() {
        config.tls_cert = args.tls_cert;
        config.tls_key = args.tls_key;
        config.tls_dir = args.tls_dir;
    }
    if args.redirect_https {
        config.redirect_https = true;
    }
    if let Some(ca) = args.origin_ca {
        config.origin_ca = Some(ca);
    }
    if let Some(ca) = args.sync_ca {
        config.sync_ca = Some(ca);
    }
    if let Some(mode) = args.delta {
        config.delta.mode = mode;
    }
    let memory_only = config.cache_dir.is_none();
    let edge = tern_edge::start(config).await.context("edge did not start")?;
    if memory_only {
        info!("no --cache-dir: caching in memory only; the cache is lost on restart");
    }
    stop_on_signal(edge.shutdown_token());
    edge.wait().await;
    info!("edge stopped");
    Ok(())
}

async fn run_serve(args: ServeArgs) -> Result<()> {
    let file = FileConfig::load(args.config.as_deref())?;
    let mut config = file.serve.unwrap_or_default();
    match (args.dir, &args.config) {
        (Some(dir), _) => config.root = dir,
        (None, None) => anyhow::bail!("give the directory to serve: tern serve DIR"),
        (None, Some(_)) => {}
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(admin) = args.admin {
        config.admin = Some(admin);
    }
    if let Some(cache_control) = args.cache_control {
        config.cache_control = Some(cache_control);
    }
    if args.tls.tls_cert.is_some() || args.tls.tls_dir.is_some() {
        config.tls_cert = args.tls.tls_cert;
        config.tls_key = args.tls.tls_key;
        config.tls_dir = args.tls.tls_dir;
    }
    let origin = tern_origin::start(config).await.context("origin did not start")?;
    stop_on_signal(origin.shutdown_token());
    origin.wait().await;
    info!("origin stopped");
    Ok(())
}

async fn run_agent(args: AgentArgs) -> Result<()> {
    let file = FileConfig::load(args.config.as_deref())?.agent.unwrap_or_default();
    let dir = args
        .dir
        .or(file.dir)
        .context("give the directory to watch: --dir DIR")?;
    let site = args.site.or(file.site).context("give the site name: --site NAME")?;
    let base_url = args
        .base_url
        .or(file.base_url)
        .context("give the URL the directory is served under: --base-url URL")?;
    let sync = args
        .sync
        .or(file.sync)
        .context("give the sync service's address: --sync HOST:PORT")?;
    let key_path = args
        .key
        .or(file.key)
        .context("give the agent key: --key FILE (create it with `tern keygen FILE`)")?;
    let key = tern_wire::SecretKey::load(&key_path)?;
    let state_dir = args
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(|| default_agent_state_dir(&dir));
    let config = tern_sync::AgentConfig {
        name: args.name.or(file.name).unwrap_or_else(|| site.clone()),
        dir,
        site,
        base_url,
        sync,
        key,
        state_dir,
        rescan_interval: std::time::Duration::from_secs(args.rescan_secs.or(file.rescan_secs).unwrap_or(30).max(1)),
        debounce: std::time::Duration::from_millis(args.debounce_ms.unwrap_or(10)),
        max_batch: 1000,
        index: "index.html".into(),
    };
    let agent = tern_sync::Agent::new(config).context("agent did not start")?;
    let stop = tokio_util::sync::CancellationToken::new();
    stop_on_signal(stop.clone());
    if let Some(addr) = args.admin.or(file.admin) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let routes: std::sync::Arc<dyn tern_admin::AdminRoutes> =
            std::sync::Arc::new(tern_sync::agent::AgentAdmin::new(agent.clone()));
        let certs = match args.tls.config()? {
            Some(tls) => Some(tern_http::tls::CertStore::load(tls)?),
            None => None,
        };
        if let Some(certs) = &certs {
            tokio::spawn(certs.watch(stop.clone()));
        }
        let acceptor = certs.as_ref().map(|certs| certs.acceptor());
        tokio::spawn(tern_admin::serve_admin_with(listener, routes, acceptor, stop.clone()));
    }
    info!("agent watching");
    agent.run(stop).await;
    info!("agent stopped");
    Ok(())
}

/// The default data directory of `role`, absolute so that it does not depend on where the role was started:
/// `/var/lib/tern/ROLE` as root, else `$XDG_STATE_HOME/tern/ROLE` or `$HOME/.local/state/tern/ROLE`.
fn default_state_dir(role: &str) -> PathBuf {
    state_dir_for(
        role,
        running_as_root(),
        std::env::var_os("XDG_STATE_HOME"),
        std::env::var_os("HOME"),
    )
}

/// [`default_state_dir`] from its inputs; relative values of the variables are ignored, as the XDG base
/// directory specification asks.
fn state_dir_for(
    role: &str,
    root: bool,
    xdg_state_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    let system = PathBuf::from("/var/lib/tern").join(role);
    if root {
        return system;
    }
    let absolute = |value: Option<std::ffi::OsString>| value.map(PathBuf::from).filter(|path| path.is_absolute());
    if let Some(state_home) = absolute(xdg_state_home) {
        return state_home.join("tern").join(role);
    }
    match absolute(home) {
        Some(home) => home.join(".local/state/tern").join(role),
        None => system,
    }
}

/// Whether this process runs as root: the owner of `/proc/self` is the process's effective user.
fn running_as_root() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
    }
    #[cfg(not(unix))]
    false
}

/// The agent's default state directory: `.tern-agent` beside the directory it watches, absolute.
fn default_agent_state_dir(dir: &std::path::Path) -> PathBuf {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    // A path ending in `..` (or the root) has no lexical parent to put the state beside.
    let resolved = if absolute.file_name().is_none() {
        std::fs::canonicalize(&absolute).unwrap_or(absolute)
    } else {
        absolute
    };
    resolved
        .parent()
        .unwrap_or(std::path::Path::new("/"))
        .join(".tern-agent")
}

async fn run_delta(args: DeltaArgs) -> Result<()> {
    let mut config = FileConfig::load(args.config.as_deref())?.delta.unwrap_or_default();
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(origin) = args.origin {
        config.origin = origin;
    }
    if let Some(admin) = args.admin {
        config.admin = Some(admin);
    }
    if let Some(ca) = args.origin_ca {
        config.origin_ca = Some(ca);
    }
    for definition in &args.classes {
        let class = tern_delta::role::ClassConfig::parse(definition)
            .with_context(|| format!("--class {definition}: give NAME=PATTERN, for example news=/news/*"))?;
        // A class on the command line replaces one of the same name from the file.
        config.classes.retain(|existing| existing.name != class.name);
        config.classes.push(class);
    }
    if args.tls.tls_cert.is_some() || args.tls.tls_dir.is_some() {
        config.tls_cert = args.tls.tls_cert;
        config.tls_key = args.tls.tls_key;
        config.tls_dir = args.tls.tls_dir;
    }
    let delta = tern_delta::role::start(config)
        .await
        .context("tern delta did not start")?;
    stop_on_signal(delta.shutdown_token());
    delta.wait().await;
    info!("tern delta stopped");
    Ok(())
}

async fn run_sync(args: SyncArgs) -> Result<()> {
    let file = FileConfig::load(args.config.as_deref())?.sync.unwrap_or_default();
    let key_path = args
        .key
        .or(file.key)
        .context("give the agents' key: --key FILE (create it with `tern keygen FILE`)")?;
    let mut sites = file.sites;
    for site in &args.sites {
        let (name, hosts) = site.split_once('=').context("--site takes NAME=HOST[,HOST...]")?;
        sites.push(tern_sync::SiteConfig {
            name: name.trim().to_string(),
            hosts: hosts
                .split(',')
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .collect(),
        });
    }
    let mut caches = file.caches;
    caches.extend(
        args.caches
            .into_iter()
            .map(|url| tern_sync::CacheConfig { url, sites: Vec::new() }),
    );
    let cache_key = match args.cache_key.or(file.cache_key) {
        Some(path) => Some(tern_wire::SecretKey::load(&path)?),
        None => None,
    };
    let config = tern_sync::SyncConfig {
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070))),
        admin: args.admin.or(file.admin),
        key: tern_wire::SecretKey::load(&key_path)?,
        cache_key,
        data_dir: args.data.or(file.data).unwrap_or_else(|| default_state_dir("sync")),
        sites,
        caches,
        max_frame: tern_wire::frame::DEFAULT_MAX_PAYLOAD,
        max_retry_age: std::time::Duration::from_secs(file.max_retry_secs.unwrap_or(24 * 3600)),
        request_timeout: std::time::Duration::from_secs(10),
    };
    let certs = match args.tls.config()? {
        Some(tls) => Some(tern_http::tls::CertStore::load(tls)?),
        None => None,
    };
    let sync = tern_sync::start_with(config, certs)
        .await
        .context("sync service did not start")?;
    stop_on_signal(sync.shutdown_token());
    sync.wait().await;
    info!("sync service stopped");
    Ok(())
}

async fn run_mover(args: MoverArgs) -> Result<()> {
    let config = tern_mover::service::MoverConfig {
        listen: args.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7000))),
        data: args.data.unwrap_or_else(|| default_state_dir("mover")),
        policy: tern_mover::PlanPolicy {
            encryption: match &args.encryption_key {
                Some(path) => Some(*load_key(path)?.as_bytes()),
                None => None,
            },
            ..Default::default()
        },
        admin: args.admin,
        quorum: args.quorum,
        delivery_timeout: std::time::Duration::from_secs(600),
        checkpoints_kept: args.checkpoints_kept.unwrap_or(5),
        load_balancer: args.haproxy.as_deref().map(|api| tern_mover::rotation::LoadBalancer {
            api: tern_mover::rotation::RuntimeApi::parse(api),
            backend: args.haproxy_backend.clone(),
        }),
        tls: args.tls.config()?,
        ca: args.ca,
        cluster_key: args.cluster_key.as_deref().map(load_key).transpose()?,
        tree: tern_mover::tree_delivery::TreeSettings {
            mode: args.delivery,
            ..Default::default()
        },
    };
    let public = config.data.join("mover.pub");
    let mover = tern_mover::service::start(config)
        .await
        .context("mover did not start")?;
    info!(public_key = %public.display(), "give nodes this public key file (tern node --key)");
    stop_on_signal(mover.shutdown_token());
    mover.wait().await;
    Ok(())
}

async fn run_node(args: NodeArgs) -> Result<()> {
    let key = tern_mover::keys::load_public(&args.key).context("cannot read the mover's public key")?;
    let cluster_key = args.segment.cluster_key.as_deref().map(load_key).transpose()?;
    let (mover, ca, root, name) = (
        args.mover.clone(),
        args.ca.clone(),
        args.root.clone(),
        args.name.clone(),
    );
    let node = tern_node::agent::start(tern_node::agent::NodeConfig {
        mover: args.mover,
        listen: args.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7100))),
        advertise: args.advertise,
        root: args.root,
        name: args.name,
        mover_key: key,
        decryption_key: match &args.encryption_key {
            Some(path) => Some(*load_key(path)?.as_bytes()),
            None => None,
        },
        limits: Default::default(),
        register_interval: std::time::Duration::from_secs(10),
        groups: args.groups,
        superseded_grace: args.superseded_grace,
        tls: args.tls.config()?,
        ca: args.ca,
        cluster_key: cluster_key.clone(),
        tree: Default::default(),
    })
    .await
    .context("node agent did not start")?;
    let discovery = match (&args.segment.segment, cluster_key) {
        (Some(segment), Some(key)) => {
            let link = NodeLink {
                mover,
                ca,
                root,
                name,
                key,
            };
            Some(start_discovery(segment, &args.segment, link, &node).await?)
        }
        _ => None,
    };
    stop_on_signal(node.shutdown_token());
    node.wait().await;
    if let Some(discovery) = discovery {
        discovery.stop().await;
    }
    Ok(())
}

/// What a node's discovery needs from the rest of its settings.
struct NodeLink {
    mover: String,
    ca: Option<PathBuf>,
    root: PathBuf,
    name: String,
    key: tern_wire::SecretKey,
}

/// Starts the node's group-leader election and registration in `segment` (seed 004's discovery phase),
/// beside the agent `node`, whose registration it registers with.
async fn start_discovery(
    segment: &str,
    args: &SegmentArgs,
    link: NodeLink,
    node: &tern_http::server::Running<std::sync::Arc<tern_node::agent::NodeAgent>>,
) -> Result<tern_node::discovery::Discovery> {
    use tern_node::discovery::{DiscoveryConfig, agent_profile};
    use tern_node::election::ElectionConfig;
    use tern_node::election::driver::ControlChannel;
    use tern_node::registration::RegistrationConfig;
    use tern_node::registration::driver::MoverLink;

    let Some(group) = args.control_channel else {
        anyhow::bail!("--segment needs --control-channel GROUP:PORT (an IPv4 multicast group, e.g. 239.192.0.1:7200)");
    };
    let interface = args.multicast_interface.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    // The real address is the registration socket's; the discovery sets it once bound.
    let unbound = SocketAddr::from((interface, 0));
    let mut election = ElectionConfig::new(segment, &link.name, unbound, link.key.clone());
    election.priority = args.leader_priority;
    election.never_lead = args.never_lead;
    election.preassigned = args.preassigned_leaders.clone();
    let mut registration = RegistrationConfig::new(segment, &link.name, unbound, link.key);
    registration.location = args.location.clone().unwrap_or_default();
    let client = tern_http::tls::ClientTls::new(link.ca.as_deref())?.client();
    let config = DiscoveryConfig {
        election,
        registration,
        channel: ControlChannel::new(group, interface),
        registration_listen: args.registration_listen.unwrap_or(unbound),
        mover: Some(MoverLink {
            url: link.mover,
            client,
            timeout: std::time::Duration::from_secs(10),
        }),
        root: link.root,
        measure_every: std::time::Duration::from_secs(10),
    };
    let profile = agent_profile(node.role.clone(), node.listen);
    let discovery = tern_node::discovery::start(config, profile)
        .await
        .with_context(|| format!("segment {segment}: discovery did not start"))?;
    info!(%segment, control_channel = %group, registration = %discovery.address(), "taking part in the segment's election");
    Ok(discovery)
}

fn load_key(path: &std::path::Path) -> Result<tern_wire::SecretKey> {
    tern_wire::SecretKey::load(path).with_context(|| {
        format!(
            "cannot read the key file {} (write one with `tern keygen FILE`)",
            path.display()
        )
    })
}

impl JobOptions {
    /// Adds these options to a job request; returns whether the client should wait for the job.
    fn apply(&self, request: &mut JobRequest) -> Result<bool> {
        request.group = self.group.clone();
        if let Some(at) = &self.at {
            request.at_ms = Some(parse_time(at)?);
        }
        if let Some(every) = &self.every {
            let period = humantime::parse_duration(every)
                .with_context(|| format!("--every {every}: a duration such as 30m, 1h or 1day"))?;
            request.every_s = Some(period.as_secs().max(1));
        }
        let Ok(on_conflict) = self.on_conflict.parse::<ConflictPolicy>() else {
            anyhow::bail!("--on-conflict {}: use queue or refuse", self.on_conflict);
        };
        request.on_conflict = Some(on_conflict);
        request.retries = Some(self.retries);
        let delay = humantime::parse_duration(&self.retry_delay)
            .with_context(|| format!("--retry-delay {}: a duration such as 30s or 5m", self.retry_delay))?;
        request.retry_delay_s = Some(delay.as_secs());
        Ok(!(self.no_wait && (self.at.is_some() || self.every.is_some())))
    }
}

/// A time given on the command line: RFC 3339, or `+DURATION` from now. Milliseconds since the epoch.
fn parse_time(text: &str) -> Result<u64> {
    let now = std::time::SystemTime::now();
    let at = match text.strip_prefix('+') {
        Some(duration) => {
            now + humantime::parse_duration(duration)
                .with_context(|| format!("--at {text}: after `+`, a duration such as 30m or 2h"))?
        }
        None => humantime::parse_rfc3339_weak(text)
            .with_context(|| format!("--at {text}: an RFC 3339 time (2026-12-01T02:00:00Z, UTC) or +DURATION"))?,
    };
    if at + std::time::Duration::from_secs(60) < now {
        anyhow::bail!("--at {text} is in the past");
    }
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0))
}

/// Cancels `token` on Ctrl-C or SIGTERM.
pub(crate) fn stop_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut terminate) = signal(SignalKind::terminate()) else {
                let _ = tokio::signal::ctrl_c().await;
                token.cancel();
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        info!("stopping");
        token.cancel();
    });
}

#[cfg(test)]
mod default_dir_tests {
    use super::*;

    #[test]
    fn default_state_dirs_are_absolute() {
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            state_dir_for("sync", true, os("/x"), os("/home/u")),
            PathBuf::from("/var/lib/tern/sync")
        );
        assert_eq!(
            state_dir_for("sync", false, os("/x"), os("/home/u")),
            PathBuf::from("/x/tern/sync")
        );
        assert_eq!(
            state_dir_for("mover", false, os("relative"), os("/home/u")),
            PathBuf::from("/home/u/.local/state/tern/mover")
        );
        assert_eq!(
            state_dir_for("mover", false, None, None),
            PathBuf::from("/var/lib/tern/mover")
        );
        assert!(default_state_dir("sync").is_absolute());
        let agent = default_agent_state_dir(std::path::Path::new("site"));
        assert!(agent.is_absolute());
        assert_eq!(agent.file_name().and_then(|n| n.to_str()), Some(".tern-agent"));
        let beside_cwd = default_agent_state_dir(std::path::Path::new("."));
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(
            beside_cwd,
            cwd.parent().unwrap_or(&cwd).join(".tern-agent"),
            "not inside the watched directory"
        );
    }
}
