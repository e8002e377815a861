//! Fresh edges after a commit (seed 004: "the CCM and/or GL will send invalidation messages to the cache on
//! each network segment ... to conform with third-party specifications"; seed 001: the cacher, which purges
//! each changed URL on every cache and fetches it again). After every commit that changes what readers get —
//! a publish, a restore, a rollback, a remove — the paths it changed ([`Changed`]) become URLs under the
//! site's public base URL ([`PurgeList`]: every spelling the edges key apart, and an index file's directory,
//! spelled as the CP agent spells them, [`tern_sync::urls::served_urls`]) and go to the site's caches
//! ([`SiteCaches`]): to the sync service (`POST /purge`, [`SyncCaches`]), whose cacher purges them on every
//! cache it drives and fetches the changed ones again, or straight to the edges (`PURGE`, then a prefetch
//! `GET`, [`EdgeCaches`]).
//!
//! The hand-over never holds a commit back. The job records it as pending ([`JobFreshness`]) before the job
//! is marked committed, and a task of its own carries it out ([`carry_over`]): it hands the URLs over,
//! again with back-off while the sync service or an edge cannot be reached, then asks after them until every
//! cache has acknowledged them (the sync service's `GET /applied`), and records when the edges were fresh —
//! or, once the site's [`SiteCaches::confirm_within_s`] has passed, that they were not confirmed. A restart
//! of the mover resumes the hand-overs it left pending ([`Mover::resume_freshness`]).

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use tern_http::tls::{ClientTls, HttpsClient};
use tern_tree::Snapshot;
use tern_wire::SecretKey;
use tern_wire::mover::{
    CacheFreshness, DEFAULT_CONFIRM_WITHIN_S, ErrorAnswer, FreshState, Job, JobFreshness, JobKind, SiteCaches,
};
use tern_wire::sync::{Applied, Incarnation, PurgeRecorded, PurgeRequest};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::ccm::{Mover, now_ms};
use crate::store_thread::StoreThread;

/// The index file of a directory: a change to `docs/index.html` is a change to `docs/` too (`tern serve`'s
/// default index).
pub const INDEX: &str = "index.html";

/// Most URLs in one `POST /purge` to the sync service (a site of many files is handed over in several).
pub const PURGE_CHUNK: usize = 1000;

/// The paths a commit changed for readers, relative to the site root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Paths with new content, or a new mode or time (and so new validators): purged and fetched again.
    pub fetch: BTreeSet<String>,
    /// Paths no longer served: purged.
    pub gone: BTreeSet<String>,
}

impl Changed {
    /// What readers see change when the site goes from `before` to `after` (a publish or restore; a
    /// rollback with the published tree as `before` and the tree it switches back to as `after`): every file
    /// or link that is new or differs in any way, and every file or link that is gone, also where a
    /// directory took its place. Directories serve nothing themselves: their index file stands for them.
    pub fn between(before: &Snapshot, after: &Snapshot) -> Changed {
        let mut changed = Changed::default();
        for (path, entry) in after {
            if !entry.is_dir() && before.get(path) != Some(entry) {
                changed.fetch.insert(path.clone());
            }
        }
        for (path, entry) in before {
            let still_served = after.get(path).is_some_and(|now| !now.is_dir());
            if !entry.is_dir() && !still_served {
                changed.gone.insert(path.clone());
            }
        }
        changed
    }

    /// Everything a removed site served.
    pub fn all_gone(before: &Snapshot) -> Changed {
        Changed {
            fetch: BTreeSet::new(),
            gone: before
                .iter()
                .filter(|(_, entry)| !entry.is_dir())
                .map(|(path, _)| path.clone())
                .collect(),
        }
    }

    /// What an assignment's `commands` change for readers: every file or link created, patched, copied or
    /// renamed to, or given a new mode or time, is fetched again; every path removed or renamed from is
    /// purged. Used for a catch-up, which sends a node the snapshots it missed: the edges in front of it may
    /// have cached what it served while behind. A removed directory is purged by its own path only (the
    /// assignment does not list the files it held).
    pub fn of_commands<'a>(commands: impl IntoIterator<Item = &'a tern_wire::assignment::Command>) -> Changed {
        use tern_wire::assignment::Command;
        let mut changed = Changed::default();
        for command in commands {
            let (fetched, gone) = match command {
                Command::Create { path, .. }
                | Command::Patch { path, .. }
                | Command::Symlink { path, .. }
                | Command::SetMetadata { path, .. }
                | Command::Chmod { path, .. } => (Some(path), None),
                Command::Copy { to, .. } => (Some(to), None),
                Command::Rename { from, to } => (Some(to), Some(from)),
                Command::Remove { path } => (None, Some(path)),
                _ => (None, None),
            };
            if let Some(path) = gone {
                changed.fetch.remove(path);
                changed.gone.insert(path.clone());
            }
            if let Some(path) = fetched {
                changed.gone.remove(path);
                changed.fetch.insert(path.clone());
            }
        }
        changed
    }

    /// Whether nothing readers get changed.
    pub fn is_empty(&self) -> bool {
        self.fetch.is_empty() && self.gone.is_empty()
    }
}

/// The URLs a commit's caches are told: each changed object purged, and the changed ones fetched again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeList {
    /// URLs purged only (the content is gone, or another spelling of an object fetched again).
    pub purge: Vec<String>,
    /// URLs purged and fetched again at once.
    pub prefetch: Vec<String>,
}

impl PurgeList {
    /// The URLs of `changed` under `public_url`, in path order: every URL a changed or removed file is served
    /// under ([`tern_sync::urls::served_urls`], `index` naming directories' index files), the changed ones'
    /// main spellings to be fetched again.
    pub fn new(public_url: &str, changed: &Changed, index: &str) -> PurgeList {
        let mut list = PurgeList::default();
        let mut seen = BTreeSet::new();
        let mut purge_only = Vec::new();
        for path in &changed.fetch {
            for served in tern_sync::urls::served_urls(public_url, path, index) {
                if served.prefetch {
                    seen.insert(served.url.clone());
                    list.prefetch.push(served.url);
                } else {
                    purge_only.push(served.url);
                }
            }
        }
        for path in &changed.gone {
            for served in tern_sync::urls::served_urls(public_url, path, index) {
                purge_only.push(served.url);
            }
        }
        for url in purge_only {
            if seen.insert(url.clone()) {
                list.purge.push(url);
            }
        }
        list
    }

    /// URLs in all.
    pub fn len(&self) -> usize {
        self.purge.len() + self.prefetch.len()
    }

    /// Whether there is nothing to tell.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks a site's caches as a job names them: URLs that are absolute `http://` or `https://`, a key for the
/// sync service, and the sync service or edges, not both. Caches naming neither turn them off.
pub fn check(caches: &SiteCaches) -> Result<(), String> {
    if caches.is_off() {
        return Ok(());
    }
    base_url("the public URL", &caches.public_url).map_err(|e| {
        format!("{e}: give the site's public base URL (--public-url https://www.example.com), under which published paths are read")
    })?;
    if caches.sync_url.is_some() && !caches.edges.is_empty() {
        return Err(
            "name the sync service or the edges, not both: the sync service purges every cache it drives".into(),
        );
    }
    if let Some(sync) = &caches.sync_url {
        base_url("the sync URL", sync).map_err(|e| format!("{e}: give the sync service's admin URL"))?;
        if caches.sync_key.is_none() {
            return Err(
                "the sync service takes purges only with its key: give --sync-key FILE (the sync service's --key file)"
                    .into(),
            );
        }
    }
    for edge in &caches.edges {
        base_url("an edge URL", edge).map_err(|e| format!("{e}: give each edge's base URL"))?;
    }
    if caches.confirm_within_s == Some(0) {
        return Err("confirm_within_s is at least 1 second".into());
    }
    Ok(())
}

/// Checks that the key and CA files a site's caches name can be read on the mover's machine.
pub async fn check_files(caches: &SiteCaches) -> Result<(), String> {
    let caches = caches.clone();
    // Paths on the mover's machine, as `tern publish` sends them: a relative one would depend on where the
    // mover was started.
    for path in caches
        .sync_key
        .iter()
        .chain(caches.edge_key.iter())
        .chain(caches.ca.iter())
    {
        if !Path::new(path).is_absolute() {
            return Err(format!(
                "{path} is not an absolute path: give the full path of the file on the mover's machine"
            ));
        }
    }
    tokio::task::spawn_blocking(move || {
        for key in caches.sync_key.iter().chain(caches.edge_key.iter()) {
            load_token(key)?;
        }
        if let Some(ca) = &caches.ca {
            ClientTls::new(Some(Path::new(ca))).map_err(|e| format!("CA file {ca} on the mover's machine: {e}"))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Checks that `text` is an absolute `http://` or `https://` URL without query or fragment.
fn base_url(what: &str, text: &str) -> Result<Uri, String> {
    let uri: Uri = text.parse().map_err(|_| format!("{what} `{text}` is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!("{what} `{text}` is not an http:// or https:// URL"));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(format!("{what} `{text}` has a query or fragment"));
    }
    Ok(uri)
}

/// The tokens of the secrets this process holds as its own (the mover's signing seed, the cluster key,
/// the API and admin tokens, the encryption key): a cache's key file is a path on the mover's machine,
/// named by whoever submits a job, and must never make the mover send one of them to a URL of the
/// submitter's choosing.
static OWN_SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records `secret` (32 bytes) as one of this process's own: a key file holding it is refused as a
/// cache's key.
pub fn hold_as_own(secret: &[u8; 32]) {
    let token = hex::encode(secret);
    let mut own = OWN_SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    if !own.contains(&token) {
        own.push(token);
    }
}

/// Reads a key file on the mover's machine: its token. A file holding one of the mover's own secrets
/// ([`hold_as_own`]) is refused.
fn load_token(path: &str) -> Result<String, String> {
    let token = SecretKey::load(Path::new(path))
        .map(|key| key.token())
        .map_err(|e| format!("key file {path} on the mover's machine: {e} (write one with `tern keygen FILE`)"))?;
    if OWN_SECRETS.lock().unwrap_or_else(|p| p.into_inner()).contains(&token) {
        return Err(format!(
            "key file {path} holds one of the mover's own secrets (its signing key, cluster key, API or admin \
             token, or encryption key), which is never sent to a cache: give the sync service's --key file or \
             the edges' --purge-key file"
        ));
    }
    Ok(token)
}

/// How a hand-over retries and waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Wait after the first failed hand-over; doubled after each further failure.
    pub first_retry: Duration,
    /// Longest wait between tries.
    pub max_retry: Duration,
    /// First wait between questions to the caches about how far they are; doubled up to `max_poll`.
    pub first_poll: Duration,
    /// Longest wait between questions.
    pub max_poll: Duration,
    /// How long after the commit the mover stops trying and records the edges as not confirmed fresh.
    pub confirm_within: Duration,
    /// Timeout of one request to the sync service or an edge.
    pub request_timeout: Duration,
}

impl Bounds {
    /// The bounds of a site's caches: its `confirm_within_s` (default [`DEFAULT_CONFIRM_WITHIN_S`]), retries
    /// from 0.5 s up to 30 s apart, questions from 20 ms up to 1 s apart, requests of at most 10 s.
    pub fn of(caches: &SiteCaches) -> Bounds {
        Bounds {
            first_retry: Duration::from_millis(500),
            max_retry: Duration::from_secs(30),
            first_poll: Duration::from_millis(20),
            max_poll: Duration::from_secs(1),
            confirm_within: Duration::from_secs(caches.confirm_within_s.unwrap_or(DEFAULT_CONFIRM_WITHIN_S).max(1)),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// The wait after the `failures`-th failed hand-over (from 1).
    pub fn retry_delay(&self, failures: u32) -> Duration {
        doubled(self.first_retry, failures.saturating_sub(1), self.max_retry)
    }

    /// The wait after the `asked`-th question to the caches (from 1).
    pub fn poll_delay(&self, asked: u32) -> Duration {
        doubled(self.first_poll, asked.saturating_sub(1), self.max_poll)
    }
}

/// `first` doubled `times` times, at most `cap`.
fn doubled(first: Duration, times: u32, cap: Duration) -> Duration {
    first.saturating_mul(1u32 << times.min(20)).min(cap)
}

/// What a hand-over left with the caches: how to ask after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// The sync service recorded the URLs in its change log, through position `through` of log `log`.
    Recorded {
        /// The change log's incarnation.
        log: Incarnation,
        /// The log's length once they were recorded.
        through: u64,
    },
    /// The caches applied the URLs as they were handed over: every one acknowledged.
    Applied(Vec<CacheFreshness>),
}

/// How far the caches are with a hand-over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every cache acknowledged.
    Fresh(Vec<CacheFreshness>),
    /// Not every cache has yet.
    Waiting(Vec<CacheFreshness>),
    /// The receipt no longer counts (the sync service started a new change log): hand the URLs over again.
    Lost(String),
}

/// A boxed future of a cache operation; the error says what went wrong and what to do.
pub type CacheFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// A site's caches as the mover drives them: through the sync service ([`SyncCaches`]) or directly
/// ([`EdgeCaches`]). A test drives [`carry_over`] with its own.
pub trait Caches: Send + Sync {
    /// Where the URLs go, for the job's record.
    fn via(&self) -> String;

    /// Hands the URLs over.
    fn hand_over<'a>(&'a self, list: &'a PurgeList) -> CacheFuture<'a, Receipt>;

    /// How far the caches are with what `receipt` stands for.
    fn progress<'a>(&'a self, receipt: &'a Receipt) -> CacheFuture<'a, Progress>;
}

/// The caches of `caches` (the sync service, or the edges).
pub fn caches_of(caches: &SiteCaches, bounds: &Bounds) -> Box<dyn Caches> {
    match &caches.sync_url {
        Some(url) => Box::new(SyncCaches::new(caches, url, bounds.request_timeout)),
        None => Box::new(EdgeCaches::new(caches, bounds.request_timeout)),
    }
}

type Client = HttpsClient<Full<Bytes>>;

/// An HTTP client trusting `ca` alone when given, made once and kept (a CA file that cannot be read fails
/// each try, so fixing the file is enough).
struct LazyClient {
    ca: Option<String>,
    client: Mutex<Option<Client>>,
}

impl LazyClient {
    fn new(ca: Option<String>) -> LazyClient {
        LazyClient {
            ca,
            client: Mutex::new(None),
        }
    }

    fn get(&self) -> Result<Client, String> {
        let mut kept = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = kept.as_ref() {
            return Ok(client.clone());
        }
        let tls = ClientTls::new(self.ca.as_deref().map(Path::new)).map_err(|e| {
            format!(
                "CA file {} on the mover's machine: {e}",
                self.ca.as_deref().unwrap_or("")
            )
        })?;
        let client = tls.client();
        *kept = Some(client.clone());
        Ok(client)
    }
}

/// One request; its status and body, or why there is none.
async fn exchange(
    client: &Client,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let answer = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| match std::error::Error::source(&e) {
                Some(cause) => tern_http::tls::error_reason(cause),
                None => e.to_string(),
            })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs_f64()))?
}

/// The sync service (seed 001's listener, master and cacher): `POST /purge` records the URLs in its change
/// log, its cacher purges them on every cache and fetches the changed ones again, and `GET /applied` tells
/// how far each cache is.
pub struct SyncCaches {
    base: String,
    key: Option<String>,
    client: LazyClient,
    timeout: Duration,
}

impl SyncCaches {
    /// The sync service at `url` (its admin listener), with `caches`' key and CA.
    pub fn new(caches: &SiteCaches, url: &str, timeout: Duration) -> SyncCaches {
        SyncCaches {
            base: url.trim_end_matches('/').to_string(),
            key: caches.sync_key.clone(),
            client: LazyClient::new(caches.ca.clone()),
            timeout,
        }
    }

    async fn post_purge(&self, client: &Client, token: &str, request: &PurgeRequest) -> Result<PurgeRecorded, String> {
        let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        let url = format!("{}/purge", self.base);
        let request = Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let (status, body) = exchange(client, request, self.timeout)
            .await
            .map_err(|e| format!("sync service unreachable at {url}: {e}; is `tern sync --admin` running there?"))?;
        match status {
            StatusCode::OK => serde_json::from_slice(&body).map_err(|e| format!("unexpected answer from {url}: {e}")),
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => Err(format!(
                "the sync service at {url} refused the key: give --sync-key the sync service's --key file"
            )),
            status => Err(format!(
                "the sync service at {url} refused the purge ({status}): {}",
                ErrorAnswer::reason_in(&body)
            )),
        }
    }
}

impl Caches for SyncCaches {
    fn via(&self) -> String {
        format!("sync service {}", self.base)
    }

    fn hand_over<'a>(&'a self, list: &'a PurgeList) -> CacheFuture<'a, Receipt> {
        Box::pin(async move {
            let key = self
                .key
                .clone()
                .ok_or("the sync service needs its key (--sync-key FILE)")?;
            let token = tokio::task::spawn_blocking(move || load_token(&key))
                .await
                .map_err(|e| e.to_string())??;
            let client = self.client.get()?;
            let chunks = list
                .purge
                .chunks(PURGE_CHUNK)
                // The commit's URLs are files': purged with any query their links carry.
                .map(|urls| PurgeRequest {
                    files: urls.to_vec(),
                    ..PurgeRequest::default()
                })
                .chain(list.prefetch.chunks(PURGE_CHUNK).map(|urls| PurgeRequest {
                    prefetch: urls.to_vec(),
                    ..PurgeRequest::default()
                }));
            let mut receipt: Option<(Incarnation, u64)> = None;
            for chunk in chunks {
                let recorded = self.post_purge(&client, &token, &chunk).await?;
                if let Some((log, _)) = &receipt
                    && *log != recorded.log
                {
                    return Err("the sync service started a new change log during the hand-over".into());
                }
                receipt = Some((recorded.log, recorded.through));
            }
            let (log, through) = receipt.unwrap_or_default();
            Ok(Receipt::Recorded { log, through })
        })
    }

    fn progress<'a>(&'a self, receipt: &'a Receipt) -> CacheFuture<'a, Progress> {
        Box::pin(async move {
            let (log, through) = match receipt {
                Receipt::Recorded { log, through } => (log, *through),
                Receipt::Applied(caches) => return Ok(Progress::Fresh(caches.clone())),
            };
            let client = self.client.get()?;
            let url = format!("{}/applied?through={through}", self.base);
            let request = Request::get(&url)
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let (status, body) = exchange(&client, request, self.timeout)
                .await
                .map_err(|e| format!("sync service unreachable at {url}: {e}"))?;
            if status != StatusCode::OK {
                return Err(format!(
                    "the sync service at {url} answered {status}: {} (is it older than this mover?)",
                    ErrorAnswer::reason_in(&body)
                ));
            }
            let applied: Applied =
                serde_json::from_slice(&body).map_err(|e| format!("unexpected answer from {url}: {e}"))?;
            if applied.log != *log {
                return Ok(Progress::Lost(
                    "the sync service started a new change log; the URLs are handed over again".into(),
                ));
            }
            let caches = applied
                .caches
                .iter()
                .map(|cache| CacheFreshness {
                    url: cache.url.clone(),
                    acknowledged: cache.applied_through >= through,
                    error: cache.last_error.clone(),
                })
                .collect();
            Ok(if applied.all_applied() {
                Progress::Fresh(caches)
            } else {
                Progress::Waiting(caches)
            })
        })
    }
}

/// Edges driven by the mover itself, with the sync service's cacher's commands (seed 001): `PURGE` of each
/// URL, then a prefetch `GET` of the changed ones, each edge in turn with the site's public host. An edge
/// that applied every URL is not sent them again when another edge fails and the hand-over is retried.
pub struct EdgeCaches {
    edges: Vec<String>,
    key: Option<String>,
    client: LazyClient,
    timeout: Duration,
    done: Mutex<BTreeSet<String>>,
}

impl EdgeCaches {
    /// The edges of `caches`.
    pub fn new(caches: &SiteCaches, timeout: Duration) -> EdgeCaches {
        EdgeCaches {
            edges: caches
                .edges
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            key: caches.edge_key.clone(),
            client: LazyClient::new(caches.ca.clone()),
            timeout,
            done: Mutex::new(BTreeSet::new()),
        }
    }

    fn acknowledged(&self) -> Vec<CacheFreshness> {
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        self.edges
            .iter()
            .map(|edge| CacheFreshness {
                url: edge.clone(),
                acknowledged: done.contains(edge),
                error: None,
            })
            .collect()
    }
}

/// One edge: every URL of `list` purged, the prefetch ones fetched again.
async fn apply_to_edge(
    client: &Client,
    edge: &str,
    token: Option<&str>,
    list: &PurgeList,
    timeout: Duration,
) -> Result<(), String> {
    let commands = list
        .purge
        .iter()
        .map(|url| (url, false))
        .chain(list.prefetch.iter().map(|url| (url, true)));
    for (url, prefetch) in commands {
        let uri: Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
        let host = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        let target = format!("{edge}{}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        let mut purge = Request::builder()
            .method(Method::from_bytes(b"PURGE").map_err(|e| e.to_string())?)
            .uri(&target)
            .header(http::header::HOST, &host)
            // A file's URL: every query variant of it is stale too.
            .header(tern_wire::sync::PURGE_SCOPE_HEADER, tern_wire::sync::PURGE_ANY_QUERY);
        if let Some(token) = token {
            purge = purge.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let purge = purge.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let (status, body) = exchange(client, purge, timeout)
            .await
            .map_err(|e| format!("edge {edge} unreachable: {e}"))?;
        match status {
            // An edge that does not hold the object answers 404: nothing to remove is fine.
            status if status.is_success() || status == StatusCode::NOT_FOUND => {}
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
                return Err(format!(
                    "edge {edge} refused PURGE ({status}): give --edge-key the edges' --purge-key file"
                ));
            }
            status => {
                return Err(format!(
                    "edge {edge}: PURGE {url} answered {status}: {}",
                    ErrorAnswer::reason_in(&body)
                ));
            }
        }
        if !prefetch {
            continue;
        }
        // No credentials on the prefetch: a shared cache does not store a response to a request that carries
        // Authorization (RFC 9111 section 3.5), and the prefetch exists to be stored.
        let get = Request::get(&target)
            .header(http::header::HOST, &host)
            .header("tern-prefetch", "1")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, _) = exchange(client, get, timeout)
            .await
            .map_err(|e| format!("edge {edge} unreachable: {e}"))?;
        if status.is_server_error() {
            return Err(format!("edge {edge}: prefetch of {url} answered {status}"));
        }
    }
    Ok(())
}

impl Caches for EdgeCaches {
    fn via(&self) -> String {
        match self.edges.len() {
            1 => "1 edge".to_string(),
            count => format!("{count} edges"),
        }
    }

    fn hand_over<'a>(&'a self, list: &'a PurgeList) -> CacheFuture<'a, Receipt> {
        Box::pin(async move {
            let token = match self.key.clone() {
                Some(key) => Some(
                    tokio::task::spawn_blocking(move || load_token(&key))
                        .await
                        .map_err(|e| e.to_string())??,
                ),
                None => None,
            };
            let client = self.client.get()?;
            let pending: Vec<String> = {
                let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
                self.edges.iter().filter(|e| !done.contains(*e)).cloned().collect()
            };
            let list = Arc::new(list.clone());
            let mut tasks = Vec::new();
            for edge in pending {
                let (client, token, list, timeout) = (client.clone(), token.clone(), list.clone(), self.timeout);
                tasks.push((
                    edge.clone(),
                    tokio::spawn(async move { apply_to_edge(&client, &edge, token.as_deref(), &list, timeout).await }),
                ));
            }
            let mut failures = Vec::new();
            for (edge, task) in tasks {
                match task.await.map_err(|e| e.to_string()).and_then(|r| r) {
                    Ok(()) => {
                        self.done.lock().unwrap_or_else(|p| p.into_inner()).insert(edge);
                    }
                    Err(error) => failures.push(error),
                }
            }
            if !failures.is_empty() {
                return Err(failures.join("; "));
            }
            Ok(Receipt::Applied(self.acknowledged()))
        })
    }

    fn progress<'a>(&'a self, receipt: &'a Receipt) -> CacheFuture<'a, Progress> {
        Box::pin(async move {
            Ok(match receipt {
                Receipt::Applied(caches) => Progress::Fresh(caches.clone()),
                Receipt::Recorded { .. } => Progress::Waiting(self.acknowledged()),
            })
        })
    }
}

/// Carries one hand-over through, recording each change of `view` as the job's freshness: hands `list` over
/// (again after each failure, with [`Bounds::retry_delay`]), then asks the caches how far they are (at
/// [`Bounds::poll_delay`]) until every one acknowledged. Gives up at `deadline` (the edges are then recorded
/// as not confirmed fresh; the commit stands). Returns how it ended.
pub async fn carry_over(
    caches: &dyn Caches,
    list: &PurgeList,
    bounds: &Bounds,
    deadline: Instant,
    store: &StoreThread,
    job: &str,
    mut view: JobFreshness,
) -> FreshState {
    let mut recorded = view.clone();
    let mut failures = 0u32;
    'hand_over: loop {
        view.attempts = view.attempts.saturating_add(1);
        let receipt = match tokio::time::timeout_at(deadline, caches.hand_over(list)).await {
            Ok(Ok(receipt)) => {
                view.error = None;
                receipt
            }
            Ok(Err(error)) => {
                failures = failures.saturating_add(1);
                let delay = bounds.retry_delay(failures);
                warn!(%job, via = %view.via, %error, retry_in_s = delay.as_secs_f64(), "the caches could not be told of a commit; tried again");
                view.error = Some(format!(
                    "{error}; the commit stands, and the URLs are handed over again in {} s",
                    delay.as_secs_f64()
                ));
                if Instant::now() + delay >= deadline {
                    return give_up(store, job, view, bounds).await;
                }
                record(store, job, &view, &mut recorded).await;
                tokio::time::sleep(delay).await;
                continue 'hand_over;
            }
            Err(_) => return give_up(store, job, view, bounds).await,
        };
        record(store, job, &view, &mut recorded).await;
        let mut asked = 0u32;
        loop {
            asked = asked.saturating_add(1);
            match caches.progress(&receipt).await {
                Ok(Progress::Fresh(acknowledged)) => {
                    view.state = FreshState::Fresh;
                    view.fresh_ms = Some(now_ms().max(view.since_ms));
                    view.caches = acknowledged;
                    view.error = None;
                    record(store, job, &view, &mut recorded).await;
                    let after_ms = view.fresh_ms.unwrap_or(view.since_ms) - view.since_ms;
                    info!(%job, via = %view.via, urls = view.purged, after_ms, "the edges are fresh");
                    let note = format!(
                        "edges fresh {after_ms} ms after the commit: {} URLs purged, {} fetched again, through {}",
                        view.purged, view.prefetched, view.via
                    );
                    let id = job.to_string();
                    let _ = store.call(move |store| store.note(Some(&id), &note, now_ms())).await;
                    return FreshState::Fresh;
                }
                Ok(Progress::Waiting(caches)) => {
                    view.caches = caches;
                    view.error = None;
                }
                Ok(Progress::Lost(why)) => {
                    view.error = Some(why);
                    record(store, job, &view, &mut recorded).await;
                    continue 'hand_over;
                }
                Err(error) => view.error = Some(error),
            }
            record(store, job, &view, &mut recorded).await;
            let delay = bounds.poll_delay(asked);
            if Instant::now() + delay >= deadline {
                return give_up(store, job, view, bounds).await;
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// Records `view` when it differs from what was last recorded.
async fn record(store: &StoreThread, job: &str, view: &JobFreshness, recorded: &mut JobFreshness) {
    if view == recorded {
        return;
    }
    let (id, written) = (job.to_string(), view.clone());
    if let Err(error) = store.call(move |store| store.update_freshness(&id, &written)).await {
        warn!(%job, %error, "the caches' progress was not recorded");
    }
    *recorded = view.clone();
}

/// Ends a hand-over that ran out of time: the edges are not confirmed fresh.
async fn give_up(store: &StoreThread, job: &str, mut view: JobFreshness, bounds: &Bounds) -> FreshState {
    let waiting: Vec<&str> = view
        .caches
        .iter()
        .filter(|cache| !cache.acknowledged)
        .map(|cache| cache.url.as_str())
        .collect();
    let last = match (&view.error, waiting.is_empty()) {
        (Some(error), _) => error.clone(),
        (None, false) => format!("not acknowledged by {}", waiting.join(", ")),
        (None, true) => "no acknowledgement".to_string(),
    };
    let error = format!(
        "the edges were not confirmed fresh within {} s ({last}); the commit stands: an edge not confirmed serves its old copy until it expires or is purged (POST /purge on the sync service, or publish again)",
        bounds.confirm_within.as_secs()
    );
    warn!(%job, via = %view.via, %error, "gave up on the caches' acknowledgement");
    view.state = FreshState::Unconfirmed;
    view.error = Some(error.clone());
    let (id, written) = (job.to_string(), view.clone());
    let _ = store
        .call(move |store| {
            store.update_freshness(&id, &written)?;
            store.note(Some(&id), &error, now_ms())
        })
        .await;
    FreshState::Unconfirmed
}

/// Starts the task that carries a recorded hand-over through, until `deadline`.
fn spawn_carry_over(
    store: StoreThread,
    job: String,
    caches: SiteCaches,
    list: PurgeList,
    view: JobFreshness,
    deadline: Instant,
) {
    tokio::spawn(async move {
        let bounds = Bounds::of(&caches);
        let driven = caches_of(&caches, &bounds);
        carry_over(driven.as_ref(), &list, &bounds, deadline, &store, &job, view).await;
    });
}

impl Mover {
    /// Makes the caches a publish or restore names its site's (before anything is sent: they apply to this
    /// job's commit already).
    pub(crate) async fn adopt_caches(&self, job: &Job) -> Result<(), String> {
        let Some(caches) = job.spec.caches.clone() else {
            return Ok(());
        };
        let site = job.spec.site.clone();
        self.store
            .call(move |store| store.set_site_caches(&site, &caches, now_ms()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Hands what `job`'s commit changed on `site` to the site's caches, if it names any: the hand-over is
    /// recorded as the job's freshness (pending), then carried through by a task of its own, so the job goes
    /// on at once.
    pub(crate) async fn freshen(&self, job: &str, site: &str, changed: &Changed) {
        let wanted = site.to_string();
        let caches = match self.store.call(move |store| store.site_caches(&wanted)).await {
            Ok(Some(caches)) if !caches.is_off() => caches,
            Ok(_) => return,
            Err(error) => {
                warn!(%job, %site, %error, "cannot read the site's caches; they are not told of the commit");
                return;
            }
        };
        let list = PurgeList::new(&caches.public_url, changed, INDEX);
        let bounds = Bounds::of(&caches);
        let since_ms = now_ms();
        let nothing = list.is_empty();
        let view = JobFreshness {
            state: if nothing {
                FreshState::Fresh
            } else {
                FreshState::Pending
            },
            via: caches_of(&caches, &bounds).via(),
            purged: list.len() as u64,
            prefetched: list.prefetch.len() as u64,
            since_ms,
            fresh_ms: nothing.then_some(since_ms),
            attempts: 0,
            error: None,
            caches: Vec::new(),
        };
        let work = match serde_json::to_string(&list) {
            Ok(work) => work,
            Err(error) => {
                warn!(%job, %error, "the URLs of a commit could not be kept");
                return;
            }
        };
        let (id, name, recorded, kept) = (job.to_string(), site.to_string(), view.clone(), caches.clone());
        let started = self
            .store
            .call(move |store| store.start_freshness(&id, &name, &recorded, &work, &kept))
            .await;
        if let Err(error) = started {
            warn!(%job, %error, "the hand-over to the caches was not recorded; it goes on");
        }
        if nothing {
            return;
        }
        info!(%job, %site, via = %view.via, purged = view.purged, prefetched = view.prefetched, "commit handed to the caches");
        let deadline = Instant::now() + bounds.confirm_within;
        spawn_carry_over(self.store.clone(), job.to_string(), caches, list, view, deadline);
    }

    /// Resumes the hand-overs a previous run of the mover left pending (each keeps its deadline, counted
    /// from its commit); returns how many.
    pub async fn resume_freshness(&self) -> usize {
        let pending = match self.store.call(|store| store.pending_freshness()).await {
            Ok(pending) => pending,
            Err(error) => {
                warn!(%error, "cannot read the pending hand-overs to the caches");
                return 0;
            }
        };
        let count = pending.len();
        for hand_over in pending {
            let Ok(list) = serde_json::from_str::<PurgeList>(&hand_over.work) else {
                warn!(job = %hand_over.job, "the URLs of a pending hand-over are unreadable; left pending");
                continue;
            };
            let bounds = Bounds::of(&hand_over.caches);
            let elapsed = Duration::from_millis(now_ms().saturating_sub(hand_over.view.since_ms));
            let deadline = Instant::now() + bounds.confirm_within.saturating_sub(elapsed);
            info!(job = %hand_over.job, site = %hand_over.site, "hand-over to the caches resumed");
            spawn_carry_over(
                self.store.clone(),
                hand_over.job,
                hand_over.caches,
                list,
                hand_over.view,
                deadline,
            );
        }
        count
    }
}

/// Whether a job of `kind` may name caches: those that publish content (the caches become the site's).
pub fn may_name_caches(kind: JobKind) -> bool {
    matches!(kind, JobKind::Publish | JobKind::Restore)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tern_tree::Entry;
    use tern_wire::mover::JobSpec;

    use super::*;

    #[test]
    fn a_snapshots_commands_name_what_readers_see_change() {
        use tern_wire::assignment::Command;
        let commands = vec![
            Command::Mkdir {
                path: "new".into(),
                mode: None,
                mtime_ns: None,
            },
            Command::Copy {
                from: "a.html".into(),
                to: "new/a.html".into(),
                hash: "00".repeat(32),
                mode: None,
                mtime_ns: None,
            },
            Command::Symlink {
                path: "latest".into(),
                target: "new".into(),
                mtime_ns: None,
            },
            Command::Chmod {
                path: "run.cgi".into(),
                mode: 0o755,
            },
            Command::Rename {
                from: "old.html".into(),
                to: "moved.html".into(),
            },
            Command::Remove {
                path: "gone.html".into(),
            },
            // Removed, then made again: fetched, not gone.
            Command::Remove {
                path: "back.html".into(),
            },
            Command::SetMetadata {
                path: "back.html".into(),
                mode: Some(0o644),
                mtime_ns: Some(1),
            },
            Command::Commit,
        ];
        let changed = Changed::of_commands(&commands);
        let names = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(&changed.fetch),
            ["back.html", "latest", "moved.html", "new/a.html", "run.cgi"]
        );
        assert_eq!(names(&changed.gone), ["gone.html", "old.html"]);
        assert!(Changed::of_commands(&[Command::Commit]).is_empty());
    }
    use crate::store::Store;

    fn file(hash: &str) -> Entry {
        Entry::file(1, 1_000, 0o644, hash)
    }

    fn snapshot(entries: &[(&str, Entry)]) -> Snapshot {
        entries
            .iter()
            .map(|(path, entry)| (path.to_string(), entry.clone()))
            .collect()
    }

    /// Version 1 of a site, and version 2: `page.html` and `docs/index.html` changed, `old.html` removed,
    /// `new.css` added, `same.css` untouched, `run.cgi` made executable, `blog` a file turned directory.
    fn versions() -> (Snapshot, Snapshot) {
        let dir = Entry::dir(1_000, 0o755);
        let v1 = snapshot(&[
            ("", dir.clone()),
            ("blog", file("b")),
            ("docs", dir.clone()),
            ("docs/index.html", file("d1")),
            ("old.html", file("o")),
            ("page.html", file("p1")),
            ("run.cgi", file("r")),
            ("same.css", file("s")),
        ]);
        let v2 = snapshot(&[
            ("", dir.clone()),
            ("blog", dir.clone()),
            ("blog/index.html", file("bi")),
            ("docs", dir.clone()),
            ("docs/index.html", file("d2")),
            ("new.css", file("n")),
            ("page.html", file("p2")),
            ("run.cgi", Entry::file(1, 1_000, 0o755, "r")),
            ("same.css", file("s")),
        ]);
        (v1, v2)
    }

    fn urls(list: &[String]) -> Vec<&str> {
        list.iter().map(String::as_str).collect()
    }

    #[test]
    fn a_publish_purges_what_changed_and_fetches_the_changed_content_again() {
        let (v1, v2) = versions();
        let changed = Changed::between(&v1, &v2);
        let list = PurgeList::new("https://www.example.com/", &changed, INDEX);
        assert_eq!(
            urls(&list.prefetch),
            [
                "https://www.example.com/blog/index.html",
                "https://www.example.com/blog/",
                "https://www.example.com/docs/index.html",
                "https://www.example.com/docs/",
                "https://www.example.com/new.css",
                "https://www.example.com/page.html",
                "https://www.example.com/run.cgi",
            ]
        );
        assert_eq!(
            urls(&list.purge),
            [
                "https://www.example.com/blog",
                "https://www.example.com/docs",
                "https://www.example.com/old.html",
            ],
            "the bare directories, and what is gone (`blog` the file is `blog` the directory's bare URL)"
        );
        assert!(!list.prefetch.iter().chain(&list.purge).any(|u| u.contains("same.css")));
    }

    #[test]
    fn a_rollback_purges_what_it_switched_back_and_fetches_the_old_content_again() {
        let (v1, v2) = versions();
        // The published tree is v2; the rollback switches back to v1.
        let list = PurgeList::new("http://www.test", &Changed::between(&v2, &v1), INDEX);
        assert_eq!(
            urls(&list.prefetch),
            [
                "http://www.test/blog",
                "http://www.test/docs/index.html",
                "http://www.test/docs/",
                "http://www.test/old.html",
                "http://www.test/page.html",
                "http://www.test/run.cgi",
            ]
        );
        assert_eq!(
            urls(&list.purge),
            [
                "http://www.test/docs",
                "http://www.test/blog/index.html",
                "http://www.test/blog/",
                "http://www.test/new.css",
            ]
        );
        let removed = PurgeList::new("http://www.test", &Changed::all_gone(&v1), INDEX);
        assert!(removed.prefetch.is_empty(), "a removed site is only purged");
        assert_eq!(removed.purge.len(), 8, "{:?}", removed.purge);
        assert!(Changed::between(&v1, &v1).is_empty());
    }

    #[test]
    fn caches_are_checked_before_a_job_is_accepted() {
        let mut caches = SiteCaches {
            public_url: "https://www.example.com".into(),
            sync_url: Some("http://127.0.0.1:7071".into()),
            sync_key: Some("/etc/tern/sync.key".into()),
            ..SiteCaches::default()
        };
        assert_eq!(check(&caches), Ok(()));
        assert_eq!(check(&SiteCaches::default()), Ok(()), "none named: off");
        caches.sync_key = None;
        assert!(check(&caches).expect_err("no key").contains("--sync-key"));
        caches.sync_key = Some("k".into());
        caches.edges = vec!["http://e".into()];
        assert!(check(&caches).expect_err("both").contains("not both"));
        caches.sync_url = None;
        caches.public_url = "www.example.com".into();
        assert!(check(&caches).expect_err("relative").contains("--public-url"));
        caches.public_url = "http://www.example.com".into();
        caches.edges = vec!["ftp://e".into()];
        assert!(check(&caches).expect_err("scheme").contains("edge"));
    }

    #[tokio::test]
    async fn an_unreachable_sync_service_or_edge_is_named_with_what_to_do() {
        let area = tempfile::tempdir().expect("tempdir");
        let key = area.path().join("sync.key");
        SecretKey::write_new(&key).expect("key");
        let closed = tern_http::testsuite::free_addr();
        let caches = SiteCaches {
            public_url: "http://www.test".into(),
            sync_url: Some(format!("http://{closed}")),
            sync_key: Some(key.display().to_string()),
            ..SiteCaches::default()
        };
        assert_eq!(check_files(&caches).await, Ok(()));
        let list = PurgeList::new(
            "http://www.test",
            &Changed::all_gone(&snapshot(&[("a", file("a"))])),
            INDEX,
        );
        let sync = SyncCaches::new(&caches, &format!("http://{closed}"), Duration::from_secs(2));
        let error = sync.hand_over(&list).await.expect_err("nothing listens");
        assert!(
            error.contains("sync service unreachable") && error.contains("tern sync --admin"),
            "{error}"
        );
        let edges = SiteCaches {
            edges: vec![format!("http://{closed}")],
            sync_url: None,
            ..caches.clone()
        };
        let error = EdgeCaches::new(&edges, Duration::from_secs(2))
            .hand_over(&list)
            .await
            .expect_err("nothing listens");
        assert!(error.contains(&format!("edge http://{closed} unreachable")), "{error}");
        let missing = SiteCaches {
            sync_key: Some(area.path().join("nope.key").display().to_string()),
            ..caches
        };
        let error = check_files(&missing).await.expect_err("no key file");
        assert!(error.contains("tern keygen"), "{error}");
    }

    #[tokio::test]
    async fn a_key_file_holding_one_of_the_movers_own_secrets_is_never_sent() {
        let area = tempfile::tempdir().expect("tempdir");
        // The mover's signing key file has a key file's shape: named as an edge's key by a job, its secret
        // would go to any URL the job names.
        let signing = crate::keys::load_or_create(area.path()).expect("signing key");
        hold_as_own(&signing.to_bytes());
        let caches = SiteCaches {
            public_url: "http://www.test".into(),
            edges: vec!["http://127.0.0.1:9".into()],
            edge_key: Some(area.path().join("mover.key").display().to_string()),
            ..SiteCaches::default()
        };
        let error = check_files(&caches).await.expect_err("refused");
        assert!(error.contains("one of the mover's own secrets"), "{error}");
        // And at the hand-over too (a site's caches recorded before this check).
        let list = PurgeList::new(
            "http://www.test",
            &Changed::all_gone(&snapshot(&[("a", file("a"))])),
            INDEX,
        );
        let error = EdgeCaches::new(&caches, Duration::from_secs(1))
            .hand_over(&list)
            .await
            .expect_err("refused");
        assert!(error.contains("one of the mover's own secrets"), "{error}");
        // A cache's own key is taken.
        let edge_key = area.path().join("purge.key");
        SecretKey::write_new(&edge_key).expect("key");
        let theirs = SiteCaches {
            edge_key: Some(edge_key.display().to_string()),
            ..caches
        };
        assert_eq!(check_files(&theirs).await, Ok(()));
    }

    #[test]
    fn back_off_doubles_up_to_its_bound() {
        let bounds = Bounds::of(&SiteCaches::default());
        assert_eq!(bounds.confirm_within, Duration::from_secs(DEFAULT_CONFIRM_WITHIN_S));
        assert_eq!(bounds.retry_delay(1), Duration::from_millis(500));
        assert_eq!(bounds.retry_delay(3), Duration::from_secs(2));
        assert_eq!(bounds.retry_delay(40), Duration::from_secs(30));
        assert_eq!(bounds.poll_delay(1), Duration::from_millis(20));
        assert_eq!(bounds.poll_delay(100), Duration::from_secs(1));
    }

    /// Caches that fail the first `failing` hand-overs, then answer `waiting` questions with "not yet".
    struct Scripted {
        failing: u32,
        waiting: u32,
        handed: AtomicU32,
        asked: AtomicU32,
    }

    impl Caches for Scripted {
        fn via(&self) -> String {
            "scripted".into()
        }

        fn hand_over<'a>(&'a self, _list: &'a PurgeList) -> CacheFuture<'a, Receipt> {
            Box::pin(async move {
                if self.handed.fetch_add(1, Ordering::SeqCst) < self.failing {
                    return Err("sync service unreachable".into());
                }
                Ok(Receipt::Recorded {
                    log: Incarnation::default(),
                    through: 3,
                })
            })
        }

        fn progress<'a>(&'a self, _receipt: &'a Receipt) -> CacheFuture<'a, Progress> {
            Box::pin(async move {
                let cache = |acknowledged| CacheFreshness {
                    url: "http://edge".into(),
                    acknowledged,
                    error: None,
                };
                Ok(if self.asked.fetch_add(1, Ordering::SeqCst) < self.waiting {
                    Progress::Waiting(vec![cache(false)])
                } else {
                    Progress::Fresh(vec![cache(true)])
                })
            })
        }
    }

    fn quick(confirm_within: Duration) -> Bounds {
        Bounds {
            first_retry: Duration::from_millis(5),
            max_retry: Duration::from_millis(20),
            first_poll: Duration::from_millis(1),
            max_poll: Duration::from_millis(5),
            confirm_within,
            request_timeout: Duration::from_secs(1),
        }
    }

    async fn store_with_job(area: &tempfile::TempDir) -> (StoreThread, JobFreshness) {
        let store = Store::open(&area.path().join("mover.db")).expect("open");
        let mut spec = JobSpec::new(JobKind::Publish, "www");
        spec.staging = Some("/staging".into());
        store.create_job("j", &spec, 0, 0).expect("job");
        let view = JobFreshness {
            state: FreshState::Pending,
            via: "scripted".into(),
            purged: 2,
            prefetched: 1,
            since_ms: now_ms(),
            fresh_ms: None,
            attempts: 0,
            error: None,
            caches: Vec::new(),
        };
        store
            .start_freshness("j", "www", &view, "{}", &SiteCaches::default())
            .expect("start");
        (StoreThread::spawn(store).expect("thread"), view)
    }

    #[tokio::test]
    async fn an_unreachable_sync_service_is_retried_and_the_acknowledgement_recorded() {
        let area = tempfile::tempdir().expect("tempdir");
        let (store, view) = store_with_job(&area).await;
        let caches = Scripted {
            failing: 2,
            waiting: 3,
            handed: AtomicU32::new(0),
            asked: AtomicU32::new(0),
        };
        let bounds = quick(Duration::from_secs(10));
        let deadline = Instant::now() + bounds.confirm_within;
        let ended = carry_over(&caches, &PurgeList::default(), &bounds, deadline, &store, "j", view).await;
        assert_eq!(ended, FreshState::Fresh);
        assert_eq!(caches.handed.load(Ordering::SeqCst), 3, "two failures, then recorded");
        assert_eq!(
            caches.asked.load(Ordering::SeqCst),
            4,
            "three times not yet, then fresh"
        );
        let job = store.call(|s| s.job("j")).await.expect("read").expect("job");
        let freshness = job.freshness.expect("the job shows its freshness");
        assert_eq!(freshness.state, FreshState::Fresh);
        assert_eq!(freshness.attempts, 3);
        assert!(freshness.fresh_ms.is_some_and(|at| at >= freshness.since_ms));
        assert_eq!(freshness.error, None);
        assert!(freshness.caches.iter().all(|c| c.acknowledged));
        assert!(store.call(|s| s.pending_freshness()).await.expect("pending").is_empty());
    }

    #[tokio::test]
    async fn a_sync_service_that_stays_away_leaves_the_edges_unconfirmed_within_the_bound() {
        let area = tempfile::tempdir().expect("tempdir");
        let (store, view) = store_with_job(&area).await;
        let caches = Scripted {
            failing: u32::MAX,
            waiting: 0,
            handed: AtomicU32::new(0),
            asked: AtomicU32::new(0),
        };
        let bounds = quick(Duration::from_millis(100));
        let started = Instant::now();
        let deadline = started + bounds.confirm_within;
        let ended = carry_over(&caches, &PurgeList::default(), &bounds, deadline, &store, "j", view).await;
        assert_eq!(ended, FreshState::Unconfirmed);
        assert!(started.elapsed() < Duration::from_secs(2), "bounded");
        assert!(caches.handed.load(Ordering::SeqCst) >= 2, "retried");
        let freshness = store.call(|s| s.freshness("j")).await.expect("read").expect("recorded");
        assert_eq!(freshness.state, FreshState::Unconfirmed);
        let error = freshness.error.expect("says why");
        assert!(
            error.contains("not confirmed fresh") && error.contains("sync service unreachable"),
            "{error}"
        );
        assert!(error.contains("the commit stands"), "{error}");
    }
}
