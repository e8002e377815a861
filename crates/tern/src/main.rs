//! `tern`: the one binary of the tern CDN. Each role is a subcommand; run `tern help ROLE` for its flags.

mod config;
mod demo;
mod dir_lock;
mod mover_client;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use tern_wire::mover::{ConflictPolicy, JobKind, JobRequest};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::FileConfig;

/// tern: a self-hosted content delivery network.
///
/// One binary, several roles. Start with `tern demo` to see them working together as one system, then
/// run each role on its own machine. Every role runs from flags alone; `edge`, `serve`, `agent`, `sync`
/// and `delta` also take `--config FILE` (TOML, a table per role), where flags given on the command line
/// win over the file. `mover`, `node` and `registry` take flags only.
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
    /// Run the registry of cache communities: which edges form each community and which of them leads it.
    ///
    /// Edges started with `--community NAME --registry URL` ask it for their community, and the edge that
    /// leads a community (its master) records itself there with the number of its term; a master from an
    /// older term is refused, so two edges cannot both lead. Its state is kept in --data, so a restart loses
    /// nothing.
    // The registry is seed 002's cache server.
    Registry(RegistryArgs),
    /// Serve a directory as a static origin (ETag, Last-Modified, conditional GET, ranges, Cache-Control).
    Serve(ServeArgs),
    /// Watch a site's directory on the origin server and report every changed file to the sync service,
    /// which refreshes it on the edge caches.
    ///
    /// Uses file-system notifications for speed and a periodic full rescan as the authority. Changes not
    /// yet acknowledged are kept on disk and resent, across restarts of either side. Hidden files and
    /// directories (`.htaccess`, `.well-known/`) are reported like any other.
    // The agent is seed 001's CP agent.
    // The list is `tern_tree::EDITOR_TEMPORARIES` (tern-tree is not a dependency of this crate): keep them
    // equal.
    #[command(
        after_help = "Never reported: the temporaries editors write beside a file while saving it, \
                            matched by name: .*.swp .*.swo .*.swx 4913 *~ .#* #*# .~lock.*# *.kate-swp \
                            .goutputstream-* .*.tmp"
    )]
    Agent(AgentArgs),
    /// Keep caches fresh: receive agents' changes, check them, and send PURGE + prefetch GET to every cache.
    ///
    /// Works with tern edges and with any cache that accepts PURGE (Varnish, Squid, nginx with a purge
    /// module).
    Sync(SyncArgs),
    /// Serve dynamic pages to edges as differences against an earlier copy they hold (differential caching).
    ///
    /// Runs in front of a dynamic origin, next to it. For pages of a class (--class NAME=PATTERN) it
    /// answers an edge that holds a reference copy of the page (a base) with only the difference (a dcz
    /// delta, RFC 9842) and the page's digest. It takes bases only from responses to requests without
    /// cookies or credentials, makes new ones when the differences grow, and announces each new base so
    /// edges fetch it before they use it. Start edges with `tern edge --origin URL --delta`.
    // Differential caching is seed 000.
    Delta(DeltaArgs),
    /// Run the content mover: publishes staging directories to the web servers that host the sites.
    ///
    /// For each publish it compares the staging directory with the published version, sends every server
    /// (`tern node`) what changed, and switches them to the new version together; it keeps the versions,
    /// checkpoints and a history, and runs scheduled jobs. On first start it creates its signing key in
    /// --data and writes the public half to DATA/mover.pub, which every node needs (`tern node --key`).
    // The mover is seed 004's CCM.
    Mover(MoverArgs),
    /// Run on each web server that hosts sites: registers with the content mover, receives what changed,
    /// and switches each site to a new version at once (ROOT/<site>/live).
    Node(NodeArgs),
    /// Publish a staging directory to the nodes and wait until it is committed.
    Publish(PublishArgs),
    /// Switch every node of a site back to the previous version and wait.
    Rollback(RollbackArgs),
    /// List the mover's jobs.
    Jobs(JobsArgs),
    /// List the nodes registered with the mover, or remove a retired one (`--remove NAME`).
    Nodes(NodesArgs),
    /// Create, list or restore checkpoints (compressed full copies of a site's published version).
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Write a new random secret key file (for --purge-key and the other --...-key flags).
    Keygen(KeygenArgs),
    /// Run the whole system on this machine (mover and admin UI, three nodes, their edges, the sync
    /// service, differential caching) with a sample site, and show how to use it.
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
    #[arg(long, value_parser = parse_url)]
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
    /// Largest object kept in memory [default: 8M]. Without --cache-dir, larger objects are passed on
    /// and not stored; it is also how many of a large miss's first bytes are kept so that requests may
    /// join it, and how far a client may fall behind the fastest one sharing a fetch before it is cut.
    #[arg(long, value_parser = parse_size)]
    max_memory_object: Option<u64>,
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
    #[arg(long, value_parser = parse_url)]
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
    /// Join (or create) the cache community NAME: the site's edges divide the content between them and
    /// the origin sees each object once. Needs --cluster-key and --peer-listen.
    #[arg(long, value_name = "NAME", requires_all = ["cluster_key", "peer_listen"])]
    community: Option<String>,
    /// The cluster key file shared by the community's edges and its registry.
    #[arg(long, value_name = "FILE")]
    cluster_key: Option<PathBuf>,
    /// Where community messages (UDP) and peer requests (HTTP) arrive, one port for both; the address
    /// the other edges reach this one at.
    #[arg(long, value_name = "ADDR")]
    peer_listen: Option<SocketAddr>,
    /// This edge's name in the community [default: its --peer-listen address].
    #[arg(long, value_name = "NAME")]
    peer_name: Option<String>,
    /// The registry's URL (`tern registry`), e.g. http://10.0.0.5:7300. Plain HTTP only: the registry's
    /// messages carry the cluster key's tag instead.
    #[arg(long, value_name = "URL", value_parser = parse_registry_url)]
    registry: Option<String>,
    /// Find the community with a multicast probe on GROUP:PORT (e.g. 239.255.42.1:7401) when there is
    /// no registry or it does not answer.
    #[arg(long, value_name = "GROUP:PORT")]
    discover: Option<std::net::SocketAddrV4>,
    /// This edge's share of the content relative to the others', 1 to 1000000 [default: 100].
    #[arg(long, value_name = "W", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    weight: Option<u32>,
    /// Owners of each object (1 to 8) [default: 1].
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u8).range(1..=8))]
    replicas: Option<u8>,
    /// Priority in master elections, 0 to 255, higher wins [default: 128].
    #[arg(long, value_name = "P")]
    master_priority: Option<u8>,
    /// Whether an edge keeps its own copy of what the owner served it: never (one copy in the
    /// community), hot (a copy once asked again within the hot window, 60 s) or always [default: never].
    #[arg(long, value_name = "POLICY")]
    community_keep: Option<tern_edge::community::KeepPolicy>,
    /// Milliseconds to connect to a peer before going to the origin instead [default: 300].
    #[arg(long, value_name = "MS")]
    peer_connect_timeout_ms: Option<u64>,
}

#[derive(Args, Debug)]
struct RegistryArgs {
    /// Address peers reach the registry at (HTTP), e.g. 10.0.0.5:7300.
    #[arg(long)]
    listen: SocketAddr,
    /// The cluster key file (from `tern keygen`) the community's edges share.
    #[arg(long, value_name = "FILE")]
    cluster_key: PathBuf,
    /// Directory of the registry's state [default: the user's state directory].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Admin listener address for /metrics and /status (keep it private).
    #[arg(long)]
    admin: Option<SocketAddr>,
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
    #[arg(long, value_parser = parse_url)]
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

    /// The flags' TLS settings, or else those of the role's table in the config file (`tls_cert`,
    /// `tls_key`, `tls_dir`): flags given replace the file's, whichever form either has.
    fn config_or_file(
        &self,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        dir: Option<PathBuf>,
    ) -> Result<Option<tern_http::tls::TlsConfig>> {
        if self.tls_cert.is_some() || self.tls_dir.is_some() {
            return self.config();
        }
        Ok(tern_http::tls::TlsConfig::from_flags(cert, key, dir)?)
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
    /// Serve hidden files and directories too (a path segment starting with "."; `serve_hidden = true` in
    /// the config file). By default they answer 404, so a published `.git/`, `.htaccess` or `.env` is never
    /// served; `/.well-known/` is served either way.
    #[arg(long)]
    serve_hidden: bool,
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
    #[arg(long, value_parser = parse_url)]
    base_url: Option<String>,
    /// The sync service's agent listener, HOST:PORT (not a URL: it is not HTTP), e.g. 10.0.0.2:7070 or
    /// sync.example.net:7070 (a name is looked up at every connection).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_address)]
    sync: Option<String>,
    /// Agent key file (from `tern keygen`), shared with the sync service's --key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Where the agent keeps its state [default: `.tern-agent` beside DIR, i.e. DIR/../.tern-agent made
    /// absolute]. Losing it makes the agent report every file again, as a new agent.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// This agent's name [default: the site name].
    #[arg(long)]
    name: Option<String>,
    /// Full rescan interval in seconds, 1 to 86400 [default: 30].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    rescan_secs: Option<u64>,
    /// Quiet time after a file-system event before scanning, in milliseconds (bursts become one scan), 0 to
    /// 60000 [default: 10].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=60_000))]
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
    /// A cache's base URL, e.g. https://10.0.0.7:8443 or http://127.0.0.1:8080 (repeatable). The purge
    /// token goes with every PURGE: use https:// wherever it crosses a network.
    #[arg(long = "cache", value_parser = parse_url)]
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
    /// How long commands to a cache that keeps failing are retried before a change is given up on,
    /// seconds [default: 86400; give the sites' longest freshness lifetime: after it the cache's copy
    /// has expired anyway]. A change a cache refuses as a request (400, 413, 414, 431) is skipped at once.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=30 * 24 * 3600))]
    max_retry_secs: Option<u64>,
    /// How long a cache may take to answer a command's head, and may stall while sending a prefetch's
    /// body, milliseconds [default: 10000]. A large prefetch goes on as long as bytes arrive.
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    command_timeout_ms: Option<u64>,
    /// Changes applied to each cache at a time (a purge and a prefetch of its own URL each) [default: 8].
    /// More shortens a large publish's way to the caches; 1 sends one command at a time.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    commands_in_flight: Option<u16>,
    /// PEM file of the CA (or the certificate itself) that https:// caches are verified against [default:
    /// the system's CA certificates]. Give caches as https:// URLs wherever the purge token crosses a
    /// network.
    #[arg(long, value_name = "FILE")]
    cache_ca: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Args, Debug)]
struct MoverArgs {
    /// API address [default: 127.0.0.1:7000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (database, keys, a copy of each site's published version) [default: /var/lib/tern/mover as root, else
    /// $XDG_STATE_HOME/tern/mover or ~/.local/state/tern/mover].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Nodes that must have a publish prepared before it is committed [default: all].
    #[arg(long)]
    quorum: Option<usize>,
    /// Checkpoints kept per site [default: 5].
    #[arg(long)]
    checkpoints_kept: Option<usize>,
    /// Admin listener address for /metrics, /status and, with --admin-token, the web UI (/ui/).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Key file (`tern keygen FILE`) whose token logs in to the admin web UI on --admin (its line of 64 hex
    /// digits is the password). Without it the UI is off.
    #[arg(long, value_name = "FILE", requires = "admin")]
    admin_token: Option<PathBuf>,
    /// Key file (`tern keygen FILE`) whose token every client of the API on --listen must present
    /// (`Authorization: Bearer`): `tern publish`, `rollback`, `checkpoint` and `jobs` read it from the file
    /// named by the environment variable TERN_API_TOKEN_FILE. Nodes need no token (their requests are
    /// checked otherwise). Without it anyone who reaches --listen can submit jobs:
    /// keep it on loopback or a trusted network.
    #[arg(long, value_name = "FILE")]
    api_token: Option<PathBuf>,
    /// Encrypt everything sent to the nodes (XChaCha20-Poly1305) with this key file (`tern keygen`); nodes need the
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
    /// How changes reach the nodes: `tree` (relayed by each network segment's group leader, so the mover
    /// sends about one copy; nodes outside led segments get theirs directly; needs the cluster key),
    /// `star` (the mover sends every node its own copy), or `auto`: the tree when any target is in a
    /// segment with a group leader.
    #[arg(long, default_value = "auto", value_name = "auto|tree|star")]
    delivery: tern_mover::tree_delivery::DeliveryMode,
    /// Longest a node may take to answer one delivery (prepare or commit) before it counts as failed for
    /// that job (and is caught up later), e.g. 30s or 10m. A hung node holds a job this long.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    delivery_timeout: humantime::Duration,
    /// The cluster key file (`tern keygen`) every node of the fleet also has: it authenticates the nodes'
    /// registrations (with it, a registration without the key's tag is refused, so no other machine can
    /// join as a node or take over a node's name), the group leaders' reports about their segments
    /// (`POST /api/segments/report`) and what the leaders relay.
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
    /// The content mover's URL, e.g. http://10.0.0.1:7000 or https://mover.example:7000.
    #[arg(long, value_parser = parse_url)]
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
    /// Address the mover sends this node its changes on [default: 127.0.0.1:7100].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// URL the mover should use to reach this node [default: http://LISTEN, or https://LISTEN with
    /// --tls-cert].
    #[arg(long, value_parser = parse_url)]
    advertise: Option<String>,
    /// Content group this node belongs to (repeat for several); `tern publish --group G` targets a group.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Key file that decrypts what the mover sends, when it encrypts it (its --encryption-key).
    #[arg(long)]
    encryption_key: Option<PathBuf>,
    /// How long a version that stopped being live stays on disk, for readers that resolved `live` just
    /// before the switch (e.g. 60s, 10m; 0s deletes it right after the switch).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    superseded_grace: std::time::Duration,
    #[command(flatten)]
    segment: SegmentArgs,
    #[command(flatten)]
    data: DataChannelArgs,
}

/// The segment's multicast data channel (seed 004's local distribution): a group leader sends each
/// assignment to its members once there and repairs what they lost; members that did not apply that copy
/// get it by HTTP unicast. Off by default (HTTP unicast to each member).
#[derive(Args, Debug)]
struct DataChannelArgs {
    /// The data channel: an IPv4 multicast group and port every node of the segment listens to, e.g.
    /// 239.192.0.2:7300. Needs --segment, --control-channel and --cluster-key.
    #[arg(long, value_name = "GROUP:PORT", requires = "cluster_key")]
    data_channel: Option<std::net::SocketAddrV4>,
    /// The group leader's highest sending rate on the data channel, in Mbit/s (it slows down when
    /// members report losses).
    #[arg(long, value_name = "MBIT", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000), requires = "data_channel")]
    data_rate: u64,
    /// Members report applying a change at a random multiple (1 to 10) of this interval, so that
    /// their reports do not all arrive at once.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration, requires = "data_channel")]
    data_report_interval: std::time::Duration,
    /// Longest random delay before a member reports the packets it missed, after each pass (about a second
    /// is usual). Shorter repairs faster; longer spreads the reports of a large segment.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration, requires = "data_channel")]
    data_report_delay: std::time::Duration,
    /// TEST KNOB, not for production: drop each datagram received on the data channel with this
    /// probability (0 to 1), from a generator seeded by the node's name, to stand in for a lossy LAN in
    /// labs and benchmarks.
    #[arg(long, value_name = "P", default_value_t = 0.0, requires = "data_channel")]
    data_loss: f64,
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
    /// The cluster key file (`tern keygen`; the mover's --cluster-key): control messages, registrations
    /// (also the node's own with the mover), reports and relayed changes carry its tag, so a machine
    /// without it can neither vote nor lead, nor register as a node.
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
    /// Where the segment is: a time zone such as Europe/London, or a place name; the mover orders the
    /// group leaders it relays through by it.
    #[arg(long, value_name = "TZ", requires = "segment")]
    location: Option<String>,
    /// UDP address this node takes registrations on when it leads [default: an ephemeral port on
    /// --multicast-interface, or on every interface].
    #[arg(long, value_name = "ADDR", requires = "segment")]
    registration_listen: Option<SocketAddr>,
    /// Run the leader election's and the registration's timers N times faster than normal (1, the default:
    /// the leader announces itself every 1.5 s, nodes claim the lead after 5 to 16 s, votes take 10 to 15
    /// s, a new leader is settled within 75.5 s of a crash). For labs, tests and demos on a quiet LAN;
    /// every member of a segment uses the same N.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100), requires = "segment")]
    discovery_speed: u32,
}

#[derive(Args, Debug)]
struct PublishArgs {
    /// The content mover's URL (its --listen), e.g. http://10.0.0.1:7000.
    #[arg(long)]
    mover: String,
    /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The site's name on the mover.
    #[arg(long)]
    site: String,
    /// Staging directory to publish.
    #[arg(long)]
    staging: PathBuf,
    #[command(flatten)]
    job: JobOptions,
    /// Publish only files matching this pattern (repeatable; `*.html`, `static/`). The rules given stay
    /// with the site: later publishes without --include/--exclude use them too (see --clear-rules).
    #[arg(long)]
    include: Vec<String>,
    /// Never publish files matching this pattern (repeatable; `*.tmp`, `drafts/`). Kept with the site like
    /// --include.
    #[arg(long)]
    exclude: Vec<String>,
    /// Drop the site's kept include and exclude rules: this publish, and the later ones, take every file.
    #[arg(long, conflicts_with_all = ["include", "exclude"])]
    clear_rules: bool,
    /// Read and hash every staging file, like `rsync -c` [default: a file's hash is reused when its size,
    /// mtime, change time and inode are those the last publish from the same directory saw].
    #[arg(long)]
    checksum: bool,
    #[command(flatten)]
    caches: CacheOptions,
    #[command(flatten)]
    fresh: FreshOptions,
}

/// The caches in front of the site's nodes, which the mover keeps fresh after every commit: given with a
/// publish, they become the site's (the mover keeps them, for every later publish, rollback, restore and
/// remove). Like --staging, file paths are on the mover's machine.
#[derive(Args, Debug)]
struct CacheOptions {
    /// The site's public base URL, e.g. https://www.example.com: the changed paths are purged as URLs
    /// under it (needs --sync-url or --edge).
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    public_url: Option<String>,
    /// The sync service's admin URL (`tern sync --admin`): it purges the changed URLs on every cache it
    /// drives and fetches them again.
    #[arg(long, value_name = "URL", value_parser = parse_url, requires_all = ["public_url", "sync_key"], conflicts_with = "edges")]
    sync_url: Option<String>,
    /// The sync service's key file (its --key).
    #[arg(long, value_name = "FILE", requires = "sync_url")]
    sync_key: Option<PathBuf>,
    /// An edge the mover purges itself, by base URL (repeatable), instead of through a sync service.
    #[arg(long = "edge", value_name = "URL", value_parser = parse_url, requires = "public_url")]
    edges: Vec<String>,
    /// The edges' purge key file (their --purge-key).
    #[arg(long, value_name = "FILE")]
    edge_key: Option<PathBuf>,
    /// CA certificate (PEM) that alone vouches for an https:// --sync-url or --edge [default: the system's
    /// roots].
    #[arg(long, value_name = "FILE")]
    cache_ca: Option<PathBuf>,
    /// Stop telling the site's caches of its commits.
    #[arg(long, conflicts_with_all = ["public_url", "sync_url", "edges"])]
    no_caches: bool,
}

impl CacheOptions {
    /// The caches these flags name, if any flag is given (`--no-caches`: none).
    fn caches(&self) -> Result<Option<tern_wire::mover::SiteCaches>> {
        if self.no_caches {
            return Ok(Some(tern_wire::mover::SiteCaches::default()));
        }
        let Some(public_url) = &self.public_url else {
            if self.edge_key.is_some() || self.cache_ca.is_some() {
                anyhow::bail!("--edge-key and --cache-ca go with --public-url and --sync-url or --edge");
            }
            return Ok(None);
        };
        if self.sync_url.is_none() && self.edges.is_empty() {
            anyhow::bail!(
                "--public-url names the site's caches: give the sync service (--sync-url URL --sync-key FILE) or the edges (--edge URL)"
            );
        }
        let on_mover = |path: &PathBuf| -> Result<String> {
            let absolute = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
            Ok(absolute.display().to_string())
        };
        Ok(Some(tern_wire::mover::SiteCaches {
            public_url: public_url.clone(),
            sync_url: self.sync_url.clone(),
            sync_key: self.sync_key.as_ref().map(on_mover).transpose()?,
            edges: self.edges.clone(),
            edge_key: self.edge_key.as_ref().map(on_mover).transpose()?,
            ca: self.cache_ca.as_ref().map(on_mover).transpose()?,
            confirm_within_s: None,
        }))
    }
}

/// Waiting for the caches in front of the site after the commit.
#[derive(Args, Debug)]
struct FreshOptions {
    /// After the commit, wait until every cache in front of the site has acknowledged it (the site's sync
    /// service or edges): the edges then serve what was committed.
    #[arg(long)]
    wait_fresh: bool,
    /// Longest wait for --wait-fresh (`30s`, `5m`); the mover goes on trying after it.
    #[arg(long, value_name = "DURATION", default_value = "60s", requires = "wait_fresh")]
    fresh_timeout: String,
}

impl FreshOptions {
    /// How long to wait for the caches, if at all.
    fn wait(&self) -> Result<Option<std::time::Duration>> {
        if !self.wait_fresh {
            return Ok(None);
        }
        let timeout = humantime::parse_duration(&self.fresh_timeout)
            .with_context(|| format!("--fresh-timeout {}: a duration such as 30s or 5m", self.fresh_timeout))?;
        Ok(Some(timeout))
    }
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
    /// The content mover's URL (its --listen), e.g. http://10.0.0.1:7000.
    #[arg(long)]
    mover: String,
    /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The site's name on the mover.
    #[arg(long)]
    site: String,
    #[command(flatten)]
    job: JobOptions,
    #[command(flatten)]
    fresh: FreshOptions,
}

#[derive(Subcommand, Debug)]
enum CheckpointCommand {
    /// Checkpoint the site's published version.
    Create {
        /// The content mover's URL (its --listen), e.g. http://10.0.0.1:7000.
        #[arg(long)]
        mover: String,
        /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// The site's name on the mover.
        #[arg(long)]
        site: String,
    },
    /// List the site's checkpoints.
    List {
        /// The content mover's URL (its --listen), e.g. http://10.0.0.1:7000.
        #[arg(long)]
        mover: String,
        /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// The site's name on the mover.
        #[arg(long)]
        site: String,
    },
    /// Publish checkpoint N to every node again, and wait.
    Restore {
        /// The content mover's URL (its --listen), e.g. http://10.0.0.1:7000.
        #[arg(long)]
        mover: String,
        /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// The site's name on the mover.
        #[arg(long)]
        site: String,
        /// Checkpoint number.
        number: u64,
        #[command(flatten)]
        fresh: FreshOptions,
    },
}

#[derive(Args, Debug)]
struct NodesArgs {
    /// The content mover's URL (its --listen), e.g. http://10.0.0.1:7000.
    #[arg(long)]
    mover: String,
    /// CA certificate (PEM) that alone vouches for an https:// --mover [default: the system's roots].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Forget this node (a retired server): no job targets it any more and a quorum of all stops waiting
    /// for it. Stop it first: a running node registers again.
    #[arg(long, value_name = "NAME")]
    remove: Option<String>,
}

#[derive(Args, Debug)]
struct JobsArgs {
    /// The content mover's URL (its --listen), e.g. http://10.0.0.1:7000.
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
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    // The demo logs to a file of its own, so that the terminal shows its guide.
    let log_file = match &cli.command {
        Command::Demo(args) => match demo::open_log(args) {
            Ok(file) => Some(file),
            Err(error) => {
                eprintln!("error: {}", error_report(&error));
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    init_logging(&cli.log, log_file);
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
    if matches!(
        cli.command,
        Command::Edge(_)
            | Command::Registry(_)
            | Command::Serve(_)
            | Command::Demo(_)
            | Command::Agent(_)
            | Command::Mover(_)
            | Command::Node(_)
            | Command::Sync(_)
            | Command::Delta(_)
    ) {
        // From the first moment, not once the role has started: SIGHUP's default action ends the process
        // with no log line and no clean shutdown ([`stop_on_signal`] says what each role does with it).
        #[cfg(unix)]
        {
            let _context = runtime.enter();
            let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        }
    }
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_report(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `error` with its causes, each said once. Many error types put their cause in their own message (`cannot
/// listen on ADDR: {source}`) and return it from `source()` too; anyhow's `{:#}` would then repeat it. A
/// cause whose text is already said adds nothing.
fn error_report(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if text.contains(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

/// A network (`10.0.0.0/8`) or a single address (`127.0.0.1`, read as `/32` or `/128`).
fn parse_network(text: &str) -> Result<IpNet, String> {
    tern_edge::config::parse_network(text)
}

/// The value of a URL flag (`--mover`, `--origin`, `--registry`, `--sync-url`, ...): `http://` or
/// `https://` and a host. A bare HOST:PORT is refused rather than read as http: whether the other side
/// speaks TLS is the operator's to say, and the error shows the URL they probably mean.
pub(crate) fn parse_url(text: &str) -> Result<String, String> {
    let example = "http://127.0.0.1:7000";
    let Some((scheme, rest)) = text.split_once("://") else {
        let meant = if text.is_empty() {
            example.to_string()
        } else {
            format!("http://{text}")
        };
        return Err(format!("needs a URL with http:// or https://, like {meant}"));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(format!(
            "`{scheme}://` is not served: use http:// or https://, like {example}"
        ));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("names no host: give one, like {example}"));
    }
    if host.contains('@') {
        return Err(format!(
            "carries user:password@, which tern does not send (and which would end up in logs): leave it out, like {example}"
        ));
    }
    if !tern_http::target::port_is_valid(host) || host.ends_with(':') {
        return Err(format!(
            "has a port that is not a number from 0 to 65535, like {example}"
        ));
    }
    let path = &rest[host.len()..];
    if !tern_http::target::escapes_are_valid(path) {
        return Err(format!(
            "has a % not followed by two hexadecimal digits (write a literal % as %25), like {example}"
        ));
    }
    text.parse::<http::Uri>()
        .map_err(|error| format!("is not a valid URL ({error}), like {example}"))?;
    Ok(text.to_string())
}

/// The value of `--registry`: an `http://` URL (the registry speaks plain HTTP; its messages are
/// authenticated by the cluster key's tag), with the registry's own default port in the example.
fn parse_registry_url(text: &str) -> Result<String, String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        let meant = if text.is_empty() { "10.0.0.5:7300" } else { text };
        return Err(format!("needs an http:// URL, like http://{meant}"));
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(format!(
            "the registry speaks plain HTTP (its messages carry the cluster key's tag): use http://{rest}"
        ));
    }
    parse_url(text).map_err(|error| error.replace("127.0.0.1:7000", "10.0.0.5:7300"))
}

/// The value of an address flag that is not HTTP (`tern agent --sync`): HOST:PORT. A URL given instead is
/// named as such, since the plain parser's "invalid socket address syntax" does not say what is wrong.
fn parse_address(text: &str) -> Result<String, String> {
    if let Some((_, rest)) = text.split_once("://") {
        let address = rest.trim_end_matches('/');
        return Err(format!("takes HOST:PORT, not a URL: give {address}"));
    }
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(text.to_string());
    }
    let example = "like sync.example.net:7070 or 10.0.0.2:7070";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` has no port: give HOST:PORT, {example}"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "`{text}`: the port is not a number from 0 to 65535; give HOST:PORT, {example}"
        ));
    }
    // A name (looked up at every connection) or an IPv6 address in brackets; nothing else belongs there.
    let name = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let plain_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'))
        && (name.contains(':') == host.starts_with('['));
    if !plain_name {
        return Err(format!(
            "`{text}` is not HOST:PORT with a host name or IP address, {example}"
        ));
    }
    Ok(text.to_string())
}

/// Logs to stderr, or to `file` when given.
fn init_logging(filter: &str, file: Option<std::fs::File>) {
    let mut filter = std::env::var("RUST_LOG").unwrap_or_else(|_| filter.to_string());
    // The file-watch library logs routine events (a watch removed with its directory) at info, and warns
    // when a deleted directory's watch is removed twice (by its parent's event and its own): neither is the
    // operator's business, unless the filter names it. The agent says itself what it cannot watch.
    if !filter.contains("notify") {
        filter.push_str(",notify=error");
    }
    let filter =
        tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journal gets plain text.
    let (writer, ansi) = match file {
        Some(file) => (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(file)),
            false,
        ),
        None => (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
    };
    // A log line that cannot be written (stderr a closed pipe) is dropped: by default the subscriber
    // reports it with `eprintln!`, which panics on that same closed pipe, in whatever task logged, such as
    // the one that turns SIGTERM into a shutdown.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false)
        .log_internal_errors(false)
        .init();
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Edge(args) => run_edge(args).await,
        Command::Registry(args) => run_registry(args).await,
        Command::Serve(args) => run_serve(args).await,
        Command::Keygen(args) => {
            if args.file.is_dir() {
                anyhow::bail!(
                    "{} is a directory: give the path of the key file to write, like {}",
                    args.file.display(),
                    args.file.join("purge.key").display()
                );
            }
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
            if !staging.is_dir() {
                anyhow::bail!(
                    "--staging {}: is a file, not a directory; give the directory to publish",
                    args.staging.display()
                );
            }
            let mut request = JobRequest::new(JobKind::Publish, &args.site);
            request.staging = Some(staging.display().to_string());
            if !args.include.is_empty() || !args.exclude.is_empty() || args.clear_rules {
                request.include = Some(args.include);
                request.exclude = Some(args.exclude);
            }
            request.caches = args.caches.caches()?;
            request.checksum = args.checksum;
            let wait = args.job.apply(&mut request)?;
            let fresh = args.fresh.wait()?;
            mover_client::run_job_fresh(&args.mover, args.ca.as_deref(), request, wait, fresh).await
        }
        Command::Rollback(args) => {
            let mut request = JobRequest::new(JobKind::Rollback, &args.site);
            let wait = args.job.apply(&mut request)?;
            let fresh = args.fresh.wait()?;
            mover_client::run_job_fresh(&args.mover, args.ca.as_deref(), request, wait, fresh).await
        }
        Command::Jobs(JobsArgs {
            mover,
            ca,
            cancel: Some(id),
        }) => mover_client::cancel_job(&mover, ca.as_deref(), &id).await,
        Command::Jobs(args) => mover_client::list_jobs(&args.mover, args.ca.as_deref()).await,
        Command::Nodes(args) => mover_client::nodes(&args.mover, args.ca.as_deref(), args.remove.as_deref()).await,
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
            fresh,
        }) => {
            let mut request = JobRequest::new(JobKind::Restore, &site);
            request.checkpoint = Some(number);
            let fresh = fresh.wait()?;
            mover_client::run_job_fresh(&mover, ca.as_deref(), request, true, fresh).await
        }
        Command::Sync(args) => run_sync(args).await,
        Command::Delta(args) => run_delta(args).await,
    }
}

async fn run_edge(args: EdgeArgs) -> Result<()> {
    let community_flags = community_flags_given(&args);
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
    if let Some(size) = args.max_memory_object {
        config.max_memory_object = size;
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
    if let Some(name) = args.community {
        let mut community = config.community.take().unwrap_or_default();
        community.name = name;
        config.community = Some(community);
    }
    if config.community.is_none() && !community_flags.is_empty() {
        anyhow::bail!(
            "{} {} only to a cache community: add --community NAME (or an [edge.community] table in the config \
             file)",
            community_flags.join(", "),
            if community_flags.len() == 1 { "applies" } else { "apply" }
        );
    }
    if let Some(community) = config.community.as_mut() {
        if let Some(key) = args.cluster_key {
            community.cluster_key = key;
        }
        if let Some(addr) = args.peer_listen {
            community.peer_listen = addr;
        }
        if let Some(name) = args.peer_name {
            community.peer_name = Some(name);
        }
        if let Some(url) = args.registry {
            community.registry = Some(url);
        }
        if let Some(group) = args.discover {
            community.discover = Some(group);
        }
        if let Some(weight) = args.weight {
            community.weight = weight;
        }
        if let Some(replicas) = args.replicas {
            community.replicas = replicas;
        }
        if let Some(priority) = args.master_priority {
            community.master_priority = priority;
        }
        if let Some(keep) = args.community_keep {
            community.keep = keep;
        }
        if let Some(ms) = args.peer_connect_timeout_ms {
            community.peer_connect_timeout_ms = ms;
        }
    }
    if let Some(community) = &config.community {
        // What the command line requires, asked of the config file's table too (trials found an empty key
        // path read as a file named "", and a missing peer_listen taken as a loopback address).
        let missing: Vec<&str> = [
            (
                "its cluster key: give --cluster-key FILE or cluster_key (the same file on every member; write one with `tern keygen FILE`)",
                community.cluster_key.as_os_str().is_empty(),
            ),
            (
                "the address other peers reach this edge at: give --peer-listen ADDR or peer_listen",
                community.peer_listen.ip().is_unspecified(),
            ),
            ("its name: give --community NAME or name", community.name.is_empty()),
        ]
        .into_iter()
        .filter_map(|(what, missing)| missing.then_some(what))
        .collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "a cache community needs {} (in the [edge.community] table or on the command line)",
                missing.join("; and ")
            );
        }
    }
    if let Some(community) = &config.community
        && community.registry.is_none()
        && community.discover.is_none()
    {
        warn!(
            community = %tern_community::shown_value(&community.name),
            "neither --registry nor --discover: this edge forms its community alone and other edges cannot find it"
        );
    }
    // URLs from the config file (the flags' own were checked as they were parsed).
    if let Some(url) = &config.sync_url {
        parse_url(url).map_err(|why| anyhow::anyhow!("sync_url `{url}` {why}"))?;
    }
    if let Some(url) = config.community.as_ref().and_then(|c| c.registry.as_ref()) {
        parse_registry_url(url).map_err(|why| anyhow::anyhow!("[edge.community] registry `{url}` {why}"))?;
    }
    let _lock = match &config.cache_dir {
        Some(dir) => Some(dir_lock::lock(dir, "edge cache")?),
        None => None,
    };
    let memory_only = config.cache_dir.is_none().then_some(config.max_memory_object);
    let edge = tern_edge::start(config).await.context("edge did not start")?;
    if let Some(largest) = memory_only {
        info!(
            largest_stored_bytes = largest,
            "no --cache-dir: caching in memory only; the cache is lost on restart, and responses over max_memory_object are served but not stored (counted in tern_edge_fills_abandoned_total)"
        );
    }
    stop_on_signal(edge.shutdown_token(), Hangup::Reload);
    edge.wait().await;
    info!("edge stopped");
    Ok(())
}

/// The community flags given on the command line (they mean nothing without a community).
fn community_flags_given(args: &EdgeArgs) -> Vec<&'static str> {
    [
        ("--cluster-key", args.cluster_key.is_some()),
        ("--peer-listen", args.peer_listen.is_some()),
        ("--peer-name", args.peer_name.is_some()),
        ("--registry", args.registry.is_some()),
        ("--discover", args.discover.is_some()),
        ("--weight", args.weight.is_some()),
        ("--replicas", args.replicas.is_some()),
        ("--master-priority", args.master_priority.is_some()),
        ("--community-keep", args.community_keep.is_some()),
        ("--peer-connect-timeout-ms", args.peer_connect_timeout_ms.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect()
}

async fn run_registry(args: RegistryArgs) -> Result<()> {
    let config = tern_community::service::ServiceConfig {
        listen: args.listen,
        admin: args.admin,
        key: tern_wire::SecretKey::load(&args.cluster_key)?,
        data: args.data.unwrap_or_else(|| default_state_dir("registry")),
    };
    let _lock = dir_lock::lock(&config.data, "registry")?;
    let registry = tern_community::service::start(config)
        .await
        .context("tern registry did not start")?;
    stop_on_signal(registry.shutdown_token(), Hangup::Reload);
    registry.wait().await;
    info!("registry stopped");
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
    if args.serve_hidden {
        config.serve_hidden = true;
    }
    if args.tls.tls_cert.is_some() || args.tls.tls_dir.is_some() {
        config.tls_cert = args.tls.tls_cert;
        config.tls_key = args.tls.tls_key;
        config.tls_dir = args.tls.tls_dir;
    }
    let origin = tern_origin::start(config).await.context("origin did not start")?;
    stop_on_signal(origin.shutdown_token(), Hangup::Reload);
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
    let base_url = match args.base_url {
        Some(url) => url,
        None => {
            let url = file
                .base_url
                .context("give the URL the directory is served under: --base-url URL")?;
            parse_url(&url).map_err(|why| anyhow::anyhow!("[agent] base_url `{url}` {why}"))?
        }
    };
    let sync = match args.sync {
        Some(address) => address,
        None => {
            let address = file.sync.context("give the sync service's address: --sync HOST:PORT")?;
            parse_address(&address).map_err(|why| anyhow::anyhow!("[agent] sync {why}"))?
        }
    };
    if file.debounce_ms.is_some_and(|ms| ms > 60_000) {
        anyhow::bail!("[agent] debounce_ms must be 0 to 60000");
    }
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
        rescan_interval: std::time::Duration::from_secs(
            args.rescan_secs.or(file.rescan_secs).unwrap_or(30).clamp(1, 86_400),
        ),
        debounce: std::time::Duration::from_millis(args.debounce_ms.or(file.debounce_ms).unwrap_or(10)),
        heartbeat: tern_sync::agent::HEARTBEAT,
        max_batch: 1000,
        index: "index.html".into(),
    };
    // Checked whether or not there is an admin listener to serve them on.
    let tls = args.tls.config_or_file(file.tls_cert, file.tls_key, file.tls_dir)?;
    let admin = args.admin.or(file.admin);
    if tls.is_some() && admin.is_none() {
        anyhow::bail!("TLS settings are for the agent's admin listener: give --admin ADDR too, or leave them out");
    }
    let (state_dir, name) = (config.state_dir.clone(), config.name.clone());
    let agent = tern_sync::Agent::new(config).context("agent did not start")?;
    // Agents of different names may share a state directory (sites in sibling directories share the
    // default one); two of one name would overwrite each other's state.
    let _lock = dir_lock::lock_file(
        &state_dir,
        &format!("{}.lock", tern_sync::agent::state_file_stem(&name)),
        "agent",
        &format!(
            "an agent named {name} runs there already; two agents of one name would overwrite each other's state and sequence numbers. Stop the other one, or give this one a --name of its own (each site's agent has a name of its own: the site's by default; another --state-dir alone would leave two agents of one name, whose changes the sync service cannot tell apart)"
        ),
    )?;
    let stop = tokio_util::sync::CancellationToken::new();
    stop_on_signal(stop.clone(), Hangup::Reload);
    if let Some(addr) = admin {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let routes: std::sync::Arc<dyn tern_admin::AdminRoutes> =
            std::sync::Arc::new(tern_sync::agent::AgentAdmin::new(agent.clone()));
        let certs = match tls {
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
    let mut named_here = std::collections::BTreeSet::new();
    for definition in &args.classes {
        let class = tern_delta::role::ClassConfig::parse(definition)
            .with_context(|| format!("--class {definition}: give NAME=PATTERN, for example news=/news/*"))?;
        if !named_here.insert(class.name.clone()) {
            anyhow::bail!(
                "--class {definition}: a class {} was given twice; give each class its own name",
                class.name
            );
        }
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
    stop_on_signal(delta.shutdown_token(), Hangup::Reload);
    delta.wait().await;
    info!("tern delta stopped");
    Ok(())
}

async fn run_sync(args: SyncArgs) -> Result<()> {
    let file = FileConfig::load(args.config.as_deref())?.sync.unwrap_or_default();
    if file
        .max_retry_secs
        .is_some_and(|secs| !(1..=30 * 24 * 3600).contains(&secs))
    {
        anyhow::bail!("[sync] max_retry_secs must be 1 to 2592000 (30 days)");
    }
    if file.command_timeout_ms.is_some_and(|ms| !(100..=600_000).contains(&ms)) {
        anyhow::bail!("[sync] command_timeout_ms must be 100 to 600000 (10 minutes)");
    }
    if file.commands_in_flight.is_some_and(|n| !(1..=256).contains(&n)) {
        anyhow::bail!("[sync] commands_in_flight must be 1 to 256");
    }
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
        max_retry_age: std::time::Duration::from_secs(args.max_retry_secs.or(file.max_retry_secs).unwrap_or(24 * 3600)),
        request_timeout: std::time::Duration::from_millis(
            args.command_timeout_ms.or(file.command_timeout_ms).unwrap_or(10_000),
        ),
        commands_in_flight: args
            .commands_in_flight
            .or(file.commands_in_flight)
            .map_or(tern_sync::cacher::DEFAULT_COMMANDS_IN_FLIGHT, usize::from),
        cache_ca: args.cache_ca.or(file.cache_ca),
    };
    let certs = match args.tls.config_or_file(file.tls_cert, file.tls_key, file.tls_dir)? {
        Some(tls) => Some(tern_http::tls::CertStore::load(tls)?),
        None => None,
    };
    let _lock = dir_lock::lock(&config.data_dir, "sync")?;
    let sync = tern_sync::start_with(config, certs)
        .await
        .context("sync service did not start")?;
    stop_on_signal(sync.shutdown_token(), Hangup::Reload);
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
        quorum: match args.quorum {
            Some(0) => anyhow::bail!(
                "--quorum 0 would commit a publish no node has prepared: give 1 or more, or leave it out for all"
            ),
            quorum => quorum,
        },
        delivery_timeout: {
            let timeout: std::time::Duration = args.delivery_timeout.into();
            if timeout < std::time::Duration::from_secs(1) || timeout > std::time::Duration::from_secs(86_400) {
                anyhow::bail!(
                    "--delivery-timeout {}: from 1s to 24h (the longest a node may take to prepare or commit)",
                    args.delivery_timeout
                );
            }
            timeout
        },
        checkpoints_kept: args.checkpoints_kept.unwrap_or(5),
        load_balancer: args.haproxy.as_deref().map(|api| tern_mover::rotation::LoadBalancer {
            api: tern_mover::rotation::RuntimeApi::parse(api),
            backend: args.haproxy_backend.clone(),
        }),
        tls: args.tls.config()?,
        ca: args.ca,
        api_token: args.api_token.as_deref().map(load_key).transpose()?,
        cluster_key: args.cluster_key.as_deref().map(load_key).transpose()?,
        tree: tern_mover::tree_delivery::TreeSettings {
            mode: args.delivery,
            ..Default::default()
        },
    };
    if config.api_token.is_none() && !config.listen.ip().is_loopback() {
        warn!(
            listen = %config.listen,
            "the api takes jobs from anyone who reaches this address: give --api-token FILE, or keep it on a trusted network"
        );
    }
    let public = config.data.join("mover.pub");
    let admin_token = args.admin_token.as_deref().map(load_key).transpose()?;
    let _lock = dir_lock::lock(&config.data, "mover")?;
    let mover = tern_mover_ui::start(config, admin_token)
        .await
        .context("mover did not start")?;
    info!(public_key = %public.display(), "give nodes this public key file (tern node --key)");
    stop_on_signal(mover.shutdown_token(), Hangup::Reload);
    mover.wait().await;
    Ok(())
}

async fn run_node(args: NodeArgs) -> Result<()> {
    let key = tern_mover::keys::load_public(&args.key).context("cannot read the mover's public key")?;
    let cluster_key = args.segment.cluster_key.as_deref().map(load_key).transpose()?;
    let data_channel = data_channel_settings(&args)?;
    // Checked before the node registers: a node that cannot join its segment must not appear at the mover.
    if let Some(group) = args.segment.control_channel {
        check_multicast_group("--control-channel", group)?;
    }
    // The root holds the sites, which the web server reads: made with the usual permissions, and only the
    // node's own records (ROOT/.state) are private to it.
    std::fs::create_dir_all(&args.root).with_context(|| format!("cannot create the root {}", args.root.display()))?;
    let _lock = dir_lock::lock(&args.root.join(tern_node::agent::STATE_DIR), "node")?;
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
        superseded_grace: if args.superseded_grace > std::time::Duration::from_secs(7 * 86_400) {
            anyhow::bail!(
                "--superseded-grace {}: at most 7 days (every version published meanwhile stays on disk that long)",
                humantime::format_duration(args.superseded_grace)
            );
        } else {
            args.superseded_grace
        },
        tls: args.tls.config()?,
        ca: args.ca,
        cluster_key: cluster_key.clone(),
        tree: tern_node::forward::ForwardSettings {
            data_channel,
            ..Default::default()
        },
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
    stop_on_signal(node.shutdown_token(), Hangup::Reload);
    node.wait().await;
    if let Some(discovery) = discovery {
        discovery.stop().await;
    }
    Ok(())
}

/// Refuses a `flag` group that is not an IPv4 multicast group one may use (RFC 5771): the broadcast
/// address and unicast addresses, and 224.0.0.0/24, the link's block for routing protocols (all hosts,
/// all routers, OSPF...), where every host on the link would get the segment's traffic.
fn check_multicast_group(flag: &str, group: std::net::SocketAddrV4) -> Result<()> {
    let address = *group.ip();
    if !address.is_multicast() {
        anyhow::bail!(
            "{flag} {group}: {address} is not an IPv4 multicast group (224.0.0.0/4); use one in 239.0.0.0/8, the \
             block for an organisation's own use"
        );
    }
    if address.octets()[..3] == [224, 0, 0] {
        anyhow::bail!(
            "{flag} {group}: 224.0.0.0/24 is reserved for routing protocols on the link (RFC 5771); use a group \
             in 239.0.0.0/8"
        );
    }
    Ok(())
}

/// The data channel's settings from `tern node`'s flags (`None` without --data-channel).
fn data_channel_settings(args: &NodeArgs) -> Result<Option<tern_node::mctp::driver::DataChannelSettings>> {
    let Some(group) = args.data.data_channel else {
        return Ok(None);
    };
    if !(0.0..1.0).contains(&args.data.data_loss) {
        anyhow::bail!("--data-loss {}: a probability from 0 to below 1", args.data.data_loss);
    }
    check_multicast_group("--data-channel", group)?;
    if group.port() == 0 {
        anyhow::bail!("--data-channel {group}: give the port every node of the segment listens on (not 0)");
    }
    if args.segment.control_channel == Some(group) {
        anyhow::bail!(
            "--data-channel {group} is the control channel too: give each its own group or port (frames would be read as control messages)"
        );
    }
    // Members report a change's result within 10 multiples of the interval, and the leader waits for
    // the reports after each pass: minutes of either would hold every publish as long.
    let bounded = |flag: &str, value: std::time::Duration, least: u64, most: u64| {
        if value < std::time::Duration::from_millis(least) || value > std::time::Duration::from_secs(most) {
            anyhow::bail!(
                "{flag} {}: from {least} ms to {most} s",
                humantime::format_duration(value)
            );
        }
        Ok(())
    };
    bounded("--data-report-interval", args.data.data_report_interval, 10, 60)?;
    bounded("--data-report-delay", args.data.data_report_delay, 10, 60)?;
    // Sessions on the data channel are the segment's group leader's, sent to the members registered
    // with it: a node outside any segment would listen and never be sent anything.
    let Some(segment) = args.segment.segment.as_deref() else {
        anyhow::bail!(
            "--data-channel {group} needs --segment NAME and --control-channel GROUP:PORT: the data channel carries the segment's group leader's sessions to the members registered with it"
        );
    };
    let mut settings = tern_node::mctp::driver::DataChannelSettings::new(group, segment);
    settings.interface = args
        .segment
        .multicast_interface
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    settings.rate = args.data.data_rate.saturating_mul(125_000);
    settings.apply_interval = args.data.data_report_interval;
    settings.report_delay = args.data.data_report_delay;
    // The GL waits for the slowest member's status report, and a little more.
    settings.report_window = args.data.data_report_delay + std::time::Duration::from_millis(500);
    settings.loss = args.data.data_loss;
    settings.loss_seed = args.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    Ok(Some(settings))
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
    check_multicast_group("--control-channel", group)?;
    if group.port() == 0 {
        anyhow::bail!("--control-channel {group}: give the port every node of the segment listens on (not 0)");
    }
    let interface = args.multicast_interface.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    // The real address is the registration socket's; the discovery sets it once bound.
    let unbound = SocketAddr::from((interface, 0));
    let mut election = ElectionConfig::new(segment, &link.name, unbound, link.key.clone());
    election.priority = args.leader_priority;
    election.never_lead = args.never_lead;
    election.preassigned = args.preassigned_leaders.clone();
    election.timers = election.timers.scaled_down(args.discovery_speed);
    let mut registration = RegistrationConfig::new(segment, &link.name, unbound, link.key);
    registration.location = args.location.clone().unwrap_or_default();
    registration.timers = registration.timers.scaled_down(args.discovery_speed);
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
    discovery.share_members(&node.role);
    discovery.share_metrics(&node.role);
    info!(%segment, control_channel = %group, registration = %discovery.address(), "taking part in the segment's election");
    Ok(discovery)
}

/// A command whose output goes to a reader that stopped reading (`tern jobs | head`) ends quietly with
/// the status a shell gives a process killed by SIGPIPE (141), as other Unix tools do. Rust ignores
/// SIGPIPE, so every `println!` would otherwise panic with a backtrace on the closed pipe.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn load_key(path: &std::path::Path) -> Result<tern_wire::SecretKey> {
    tern_wire::SecretKey::load(path).with_context(|| {
        format!(
            "cannot read the key file {} (write one with `tern keygen FILE`)",
            path.display()
        )
    })
}

/// A job period in whole seconds, as the mover keeps it: a fraction of a second is refused rather than
/// rounded (`--every 0s` or `1ms` read as "every second" would publish every second). The mover checks
/// the range.
fn whole_seconds(flag: &str, given: &str, period: std::time::Duration) -> Result<u64> {
    if period.subsec_nanos() != 0 {
        anyhow::bail!("{flag} {given}: give whole seconds (such as 30s, 5m or 1day)");
    }
    Ok(period.as_secs())
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
            request.every_s = Some(whole_seconds("--every", every, period)?);
        }
        let Ok(on_conflict) = self.on_conflict.parse::<ConflictPolicy>() else {
            anyhow::bail!("--on-conflict {}: use queue or refuse", self.on_conflict);
        };
        request.on_conflict = Some(on_conflict);
        request.retries = Some(self.retries);
        let delay = humantime::parse_duration(&self.retry_delay)
            .with_context(|| format!("--retry-delay {}: a duration such as 30s or 5m", self.retry_delay))?;
        request.retry_delay_s = Some(whole_seconds("--retry-delay", &self.retry_delay, delay)?);
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
        None => {
            // The parser takes no year before the epoch; such a time is in the past all the same.
            if text
                .get(..4)
                .and_then(|year| year.parse::<u32>().ok())
                .is_some_and(|year| year < 1970)
            {
                anyhow::bail!("--at {text} is in the past");
            }
            humantime::parse_rfc3339_weak(text)
                .with_context(|| format!("--at {text}: an RFC 3339 time (2026-12-01T02:00:00Z, UTC) or +DURATION"))?
        }
    };
    if at + std::time::Duration::from_secs(60) < now {
        anyhow::bail!("--at {text} is in the past");
    }
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0))
}

/// What a role does on SIGHUP, which also comes when the terminal it was started from closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hangup {
    /// Go on running: a role given certificates reads them again (its certificate store listens for the
    /// signal itself); other settings take a restart. Without this, SIGHUP's default action would end the
    /// process at once, without a log line or a clean shutdown.
    Reload,
    /// Stop as on Ctrl-C (the demo: its terminal closed, so its files are removed as on Ctrl-C).
    Stop,
}

/// Cancels `token` on Ctrl-C or SIGTERM, and on SIGHUP when `hangup` is [`Hangup::Stop`]; a
/// [`Hangup::Reload`] role logs the SIGHUP and goes on.
pub(crate) fn stop_on_signal(token: CancellationToken, hangup: Hangup) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut terminate), Ok(mut hangups)) = (signal(SignalKind::terminate()), signal(SignalKind::hangup()))
            else {
                let _ = tokio::signal::ctrl_c().await;
                token.cancel();
                return;
            };
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = terminate.recv() => break,
                    _ = hangups.recv() => match hangup {
                        Hangup::Stop => break,
                        Hangup::Reload => info!(
                            "SIGHUP: going on (certificates given with --tls-*, if any, are read again; other settings take a restart; stop with SIGTERM or Ctrl-C)"
                        ),
                    },
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        // Cancelled before anything is logged: nothing the log does can keep the process running.
        token.cancel();
        info!("stopping (signal)");
    });
}

#[cfg(test)]
mod default_dir_tests {
    use super::*;

    /// helper-78's trial: 255.255.255.255 failed later with "Permission denied", 224.0.0.1 was taken.
    #[test]
    fn only_usable_multicast_groups_make_a_channel() {
        let group = |text: &str| text.parse::<std::net::SocketAddrV4>().expect("an address");
        assert!(check_multicast_group("--control-channel", group("239.192.0.1:7200")).is_ok());
        for (text, expected) in [
            ("255.255.255.255:7200", "is not an IPv4 multicast group"),
            ("10.0.0.5:7200", "is not an IPv4 multicast group"),
            ("224.0.0.1:7200", "reserved for routing protocols"),
        ] {
            let error = check_multicast_group("--control-channel", group(text)).expect_err(text);
            assert!(error.to_string().contains(expected), "{text}: {error}");
        }
    }

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

#[cfg(test)]
mod url_flag_tests {
    use super::*;

    #[test]
    fn an_address_flag_takes_a_name_or_an_ip_address_and_a_port() {
        for good in ["10.0.0.2:7070", "[::1]:7070", "sync.example.net:7070", "localhost:1"] {
            assert_eq!(parse_address(good).as_deref(), Ok(good));
        }
        for (bad, told) in [
            ("http://10.0.0.2:7070/", "not a URL: give 10.0.0.2:7070"),
            ("sync.example.net", "no port"),
            ("sync.example.net:99999", "port"),
            (":7070", "host name"),
            ("::1:7070", "host name"),
            ("sync example:7070", "host name"),
        ] {
            let error = parse_address(bad).expect_err(bad);
            assert!(error.contains(told), "{bad}: {error}");
        }
    }

    #[test]
    fn a_url_flag_names_what_is_wrong() {
        assert_eq!(
            parse_url("http://10.0.0.2:7000/").as_deref(),
            Ok("http://10.0.0.2:7000/")
        );
        assert_eq!(parse_url("https://[::1]:443").as_deref(), Ok("https://[::1]:443"));
        for (text, told) in [
            ("10.0.0.2:7000", "http://10.0.0.2:7000"),
            ("ftp://h", "not served"),
            ("http:///x", "no host"),
            ("http://h:99999", "port"),
            ("http://[::1]:70000/", "port"),
            ("http://h:/", "port"),
            ("http://h/a%zz", "%"),
            ("http://u:secret@h/", "user:password@"),
        ] {
            let error = parse_url(text).expect_err(text);
            assert!(error.contains(told), "{text}: {error}");
        }
    }
}
