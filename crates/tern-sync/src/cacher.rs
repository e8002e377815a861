//! The cacher (seed 001, "the cache unit converts the variation information into commands; the cache server
//! deletes the previous contents and demands the new contents"): one worker per cache reads the master's
//! log in order and sends plain HTTP, `PURGE` and then, for created or modified content, a prefetch `GET`,
//! so the cache holds the new bytes before any user asks. Changes of different URLs go to a cache side by
//! side ([`CacherSettings::commands_in_flight`]); a URL's own commands go one after the other. Because the
//! commands are standard HTTP, the same worker drives tern edges, Varnish, Squid or nginx with a purge
//! module. A file's change is purged with
//! `Tern-Purge-Scope: any-query`, which a tern edge applies to the URL with any query (links carry
//! `?utm_source=` or `?v=`); other caches ignore the field and purge the exact URL.
//!
//! A cache that does not answer keeps its commands: the worker retries with backoff until the change is
//! older than the longest freshness lifetime the site uses (after that the cache's copy has expired anyway).
//! A command the cache refuses as a request (`400`, `413`, `414`, `431`: no retry can succeed) is logged,
//! counted and skipped, so it never holds back the changes after it.
//! Its position in the log is kept on disk, so a restart resumes where it stopped. Within a backlog, only
//! the last change of each URL is sent.
//!
//! Positions count within the log's incarnation: every command carries it beside the position
//! (`Tern-Sync-Log`, `Tern-Sync-Seq`), so a cache's own mark follows a new log instead of waiting for
//! positions it has seen, and a saved position of another log (the log was deleted, the files beside it
//! were not) starts the worker from the new log's beginning.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tern_wire::sync::{
    ChangeKind, Incarnation, LOG_HEADER, PURGE_ANY_QUERY, PURGE_PREFIX, PURGE_SCOPE_HEADER, SEQ_HEADER,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::master::{Master, Record};
use crate::metrics::SyncMetrics;

/// A cache the service keeps fresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Base URL of the cache, e.g. `http://10.0.0.7:8080`.
    pub url: String,
    /// Sites it serves (empty: all).
    #[serde(default)]
    pub sites: Vec<String>,
}

/// Where a worker stands, for `/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CacheProgress {
    /// The cache.
    pub url: String,
    /// Log position applied through.
    pub applied_through: u64,
    /// Changes not yet applied.
    pub lag_changes: u64,
    /// Age of the oldest change not yet applied, seconds.
    pub lag_seconds: f64,
    /// Last error, if the cache is failing.
    pub last_error: Option<String>,
    /// Commands sent.
    pub commands: u64,
    /// The sites it serves (empty: all), for reading its lag from the log.
    #[serde(skip)]
    pub sites: Vec<String>,
}

impl CacheProgress {
    /// This cache's lag as of now, read from `master`: the changes after its position for the sites it
    /// serves, and the age in seconds of the oldest (what `/status` and `/metrics` show, so they move
    /// between the worker's own reports).
    pub fn lag_now(&self, master: &Master) -> (u64, f64) {
        lag_over(&self.sites, master.records_from(self.applied_through + 1).iter())
    }
}

/// The changes of `backlog` for a cache serving `sites` (empty: all), and the age in seconds of the oldest.
fn lag_over<'a>(sites: &[String], backlog: impl Iterator<Item = &'a Arc<Record>>) -> (u64, f64) {
    let mut wanted = backlog.filter(|r| sites.is_empty() || sites.iter().any(|s| *s == r.site));
    let oldest = wanted.next();
    let lag_seconds = oldest.map_or(0.0, |r| now_ms().saturating_sub(r.recorded_ms) as f64 / 1000.0);
    (u64::from(oldest.is_some()) + wanted.count() as u64, lag_seconds)
}

#[derive(Serialize, Deserialize)]
struct Position {
    url: String,
    next: u64,
    /// The log `next` counts in (none in a file from before log incarnations).
    #[serde(default)]
    log: Option<Incarnation>,
}

/// One HTTP command to a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// `PURGE` of the exact URL (an operator's purge).
    Purge,
    /// `PURGE` of the URL with any query ([`PURGE_SCOPE_HEADER`]: a file's URL). A cache that does not
    /// know the field purges the exact URL.
    PurgeAnyQuery,
    /// The prefetch `GET` of the plain URL.
    Prefetch,
    /// `PURGE` of every URL starting with the URL ([`PURGE_SCOPE_HEADER`]): a host's `/` for a position of
    /// the change log that was lost.
    PurgePrefix,
}

impl Command {
    fn method(self) -> &'static str {
        match self {
            Command::Purge | Command::PurgeAnyQuery | Command::PurgePrefix => "PURGE",
            Command::Prefetch => "GET",
        }
    }
}

/// Why a command to a cache failed.
#[derive(Debug)]
enum Failure {
    /// Worth retrying: the cache is down, busy, or refuses every command (a wrong purge key) until the
    /// operator mends it.
    Transient(String),
    /// This change's command can never succeed on this cache (the cache says the request itself is
    /// wrong): retrying would hold back every later change.
    Refused(String),
}

/// Whether a cache's answer to a purge refuses the request itself, whatever is retried: a malformed
/// request (`400`), a target or header section over the cache's limits (`413`, `414`, `431`). Answers that
/// refuse every command alike (`401`, `403`, `405`, `501`, `5xx`) are the cache's state or configuration,
/// and are retried until it is mended.
fn refuses_for_good(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 413 | 414 | 431)
}

/// Changes applied to one cache at a time unless configured ([`CacherSettings::commands_in_flight`]): enough
/// to hide each command's round trip and the cache's work on it, few enough that a burst of changes takes
/// little of an edge that serves users.
pub const DEFAULT_COMMANDS_IN_FLIGHT: usize = 8;

/// Settings shared by the workers.
#[derive(Debug, Clone)]
pub struct CacherSettings {
    /// Token of the caches' purge key (`Authorization: Bearer`).
    pub token: Option<String>,
    /// Changes older than this are given up on for a cache that keeps failing.
    pub max_retry_age: Duration,
    /// How long a cache may take to answer a command's head, and may then stall while sending its body
    /// (a prefetch of a large file goes on as long as bytes arrive).
    pub request_timeout: Duration,
    /// Where positions are kept.
    pub data_dir: PathBuf,
    /// Whom `https://` caches are verified against (the system's roots, or the `--cache-ca` file).
    pub tls: tern_http::tls::ClientTls,
    /// Changes applied to one cache at a time (at least 1; [`DEFAULT_COMMANDS_IN_FLIGHT`]). Each is a purge
    /// and a prefetch of its own URL: within a backlog only a URL's last change is sent, so two changes in
    /// flight never name the same URL.
    pub commands_in_flight: usize,
}

/// One cache's worker.
pub struct CacheWorker {
    cache: CacheConfig,
    settings: CacherSettings,
    master: Arc<Master>,
    metrics: Arc<SyncMetrics>,
    client: tern_http::tls::HttpsClient<Empty<Bytes>>,
    progress: Arc<Mutex<CacheProgress>>,
    /// The last failure logged (without its URL), so a cache that keeps failing the same way for every
    /// change in flight is logged once.
    logged_failure: Mutex<Option<String>>,
    position_path: PathBuf,
    base: String,
}

/// How a change ended for a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivered {
    /// The cache applied it.
    Applied,
    /// Refused by the cache for good, or older than the retry limit: skipped.
    GivenUp,
}

/// A change's URL on the cache, and the `Host` it is asked for.
struct Target {
    url: String,
    host: String,
}

/// Whose purge goes next, within one backlog: purges go to a cache one after the other, in log order, while
/// prefetches (the cache's real work: a fetch from the origin and a store) go side by side. So every purge's
/// `Tern-Sync-Seq` is a position the cache has applied through, every earlier purge answered: an edge keeps the
/// highest one it saw and, after a restart, catches up only on the changes after it (`tern_edge::catch_up`).
struct PurgeTurn(tokio::sync::watch::Sender<usize>);

/// Holds the turn of one backlog index; passes it on when dropped.
struct TurnHeld<'a> {
    turn: &'a PurgeTurn,
    index: usize,
}

impl Drop for TurnHeld<'_> {
    fn drop(&mut self) {
        self.turn.0.send_replace(self.index + 1);
    }
}

impl PurgeTurn {
    fn new() -> Self {
        PurgeTurn(tokio::sync::watch::Sender::new(0))
    }

    /// Waits for the turn of backlog index `index`; `None` when shutting down.
    async fn wait(&self, index: usize, shutdown: &CancellationToken) -> Option<TurnHeld<'_>> {
        let mut turn = self.0.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => None,
            reached = turn.wait_for(|at| *at == index) => reached.ok().map(|_| TurnHeld { turn: self, index }),
        }
    }

    /// Passes the turn of an index that sends no purge (a change of another site, or one a later change of
    /// the same URL supersedes); `false` when shutting down.
    async fn pass(&self, index: usize, shutdown: &CancellationToken) -> bool {
        self.wait(index, shutdown).await.is_some()
    }
}

impl CacheWorker {
    /// A worker for `cache`, resuming from its saved position.
    pub fn new(cache: CacheConfig, settings: CacherSettings, master: Arc<Master>, metrics: Arc<SyncMetrics>) -> Self {
        let name = blake3::hash(cache.url.as_bytes()).to_hex()[..16].to_string();
        let position_path = settings.data_dir.join(format!("cache-{name}.pos"));
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(settings.tls.connector(connector));
        let base = cache.url.trim_end_matches('/').to_string();
        let progress = Arc::new(Mutex::new(CacheProgress {
            url: cache.url.clone(),
            sites: cache.sites.clone(),
            ..CacheProgress::default()
        }));
        CacheWorker {
            cache,
            settings,
            master,
            metrics,
            client,
            progress,
            logged_failure: Mutex::new(None),
            position_path,
            base,
        }
    }

    /// Shared view of the worker's progress.
    pub fn progress(&self) -> Arc<Mutex<CacheProgress>> {
        self.progress.clone()
    }

    fn load_position(&self) -> u64 {
        let saved = std::fs::read(&self.position_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Position>(&bytes).ok())
            .filter(|p| p.url == self.cache.url);
        let Some(position) = saved else {
            return 1;
        };
        let log_id = self.master.log_id();
        let end = self.master.len() + 1;
        match &position.log {
            Some(saved_log) if saved_log != log_id => {
                info!(cache = %self.cache.url, saved_log = %saved_log, log = %log_id, "saved position belongs to another change log; starting this cache from the log's beginning");
                return 1;
            }
            // From before log incarnations: only a position past the log's end shows it was another log's.
            None if position.next > end => {
                info!(cache = %self.cache.url, next = position.next, length = end - 1, "saved position is past the end of the change log; starting this cache from the log's beginning");
                return 1;
            }
            Some(_) | None => {}
        }
        if position.next > end {
            warn!(cache = %self.cache.url, next = position.next, length = end - 1, "saved position is past the end of its change log (records lost?); resuming at the end");
            return end;
        }
        position.next
    }

    fn save_position(&self, next: u64) {
        let position = Position {
            url: self.cache.url.clone(),
            next,
            log: Some(self.master.log_id().clone()),
        };
        // No fsync: losing a position only resends commands, and they are idempotent.
        let temp = self.position_path.with_extension("tmp");
        let written = serde_json::to_vec(&position)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&temp, bytes))
            .and_then(|_| std::fs::rename(&temp, &self.position_path));
        if let Err(error) = written {
            warn!(%error, cache = %self.cache.url, "cannot save cache position");
        }
    }

    fn serves(&self, site: &str) -> bool {
        self.cache.sites.is_empty() || self.cache.sites.iter().any(|s| s == site)
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut next = self.load_position();
        let mut length = self.master.subscribe();
        let in_flight = self.settings.commands_in_flight.max(1);
        loop {
            let backlog = self.master.records_from(next);
            self.report(next, &backlog, &[]);
            if backlog.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = length.changed() => if changed.is_err() { return },
                }
                continue;
            }
            let mut last_for_url: HashMap<&str, u64> = HashMap::new();
            for record in &backlog {
                last_for_url.insert(record.url.as_str(), record.log_seq);
            }
            // Up to `in_flight` changes at once, finished in log order so that the saved position never passes
            // a change still on its way; their purges go one after the other ([`PurgeTurn`]).
            let turn = PurgeTurn::new();
            let (worker, turn, shutdown, backlog_ref, last_for_url) =
                (&self, &turn, &shutdown, &backlog, &last_for_url);
            // By index: a closure over `&Record` items is not `Send` for every lifetime the runtime needs.
            let deliveries = (0..backlog.len()).map(move |index| {
                let record = &backlog_ref[index];
                // A lost position may have been any site's change: every cache takes it.
                let wanted = record.lost
                    || (worker.serves(&record.site) && last_for_url.get(record.url.as_str()) == Some(&record.log_seq));
                async move {
                    let delivered = if wanted {
                        worker.deliver(record, index, turn, shutdown).await
                    } else {
                        turn.pass(index, shutdown).await
                    };
                    (index, delivered)
                }
            });
            let mut completed = futures_util::stream::iter(deliveries).buffered(in_flight);
            let end = backlog.last().map_or(next, |record| record.log_seq + 1);
            while let Some((index, delivered)) = completed.next().await {
                if !delivered {
                    return;
                }
                next = backlog[index].log_seq + 1;
                self.save_position(next);
                // What is left: the rest of this backlog and whatever the log gained meanwhile.
                self.report(next, &backlog[index + 1..], &self.master.records_from(end));
            }
        }
    }

    /// A position whose log line was damaged ([`Record::lost`]) and that this cache had not applied: what
    /// changed is unknown, so the cache is purged of every site it serves (each host's `/`, by prefix)
    /// rather than left holding one stale URL for its whole lifetime. `false` when shutting down.
    async fn deliver_lost(
        &self,
        record: &Record,
        index: usize,
        turn: &PurgeTurn,
        shutdown: &CancellationToken,
    ) -> bool {
        let Some(turn_held) = turn.wait(index, shutdown).await else {
            return false;
        };
        warn!(cache = %self.base, position = record.log_seq,
              "this cache had not applied a position of the change log whose line is damaged (what changed there is \
               unknown): purging every site it serves");
        // Retried for the usual time from now: the stand-in has no time of its own.
        let attempt = Record {
            recorded_ms: now_ms(),
            ..record.clone()
        };
        for site in self.master.sites().iter().filter(|site| self.serves(&site.name)) {
            for host in &site.hosts {
                let target = Target {
                    url: format!("{}/", self.base),
                    host: host.clone(),
                };
                let purged = self
                    .retrying(&attempt, shutdown, || {
                        self.purge(Command::PurgePrefix, &target, &attempt)
                    })
                    .await;
                if purged.is_none() {
                    return false;
                }
            }
        }
        drop(turn_held);
        true
    }

    /// Applies the backlog's record number `index`: its purge in its turn, then its prefetch beside the
    /// later changes' commands, each retried; `false` when shutting down. A change the cache refuses for good
    /// is skipped (logged and counted): retrying it would hold back every later change for this cache.
    async fn deliver(&self, record: &Record, index: usize, turn: &PurgeTurn, shutdown: &CancellationToken) -> bool {
        if record.lost {
            return self.deliver_lost(record, index, turn, shutdown).await;
        }
        let Some(turn_held) = turn.wait(index, shutdown).await else {
            return false;
        };
        let target = match self.target(record) {
            Ok(target) => target,
            Err(error) => {
                self.skip(record, &error);
                return true;
            }
        };
        // A file's change makes every query variant of its URL stale (`/?utm=1` shows the same page as `/`):
        // those are purged with it, and only the plain URL is fetched again. An operator's purge means the
        // exact URL.
        let scope = match record.kind {
            ChangeKind::Created | ChangeKind::Modified | ChangeKind::Deleted => Command::PurgeAnyQuery,
            ChangeKind::Purged => Command::Purge,
        };
        let purged = self
            .retrying(record, shutdown, || self.purge(scope, &target, record))
            .await;
        drop(turn_held);
        if purged != Some(Delivered::Applied) || matches!(record.kind, ChangeKind::Deleted | ChangeKind::Purged) {
            return purged.is_some();
        }
        self.retrying(record, shutdown, || self.prefetch(&target, record))
            .await
            .is_some()
    }

    /// Runs `attempt` until it succeeds, is refused for good, or the change is older than the retry limit;
    /// `None` when shutting down.
    async fn retrying<F, Fut>(&self, record: &Record, shutdown: &CancellationToken, attempt: F) -> Option<Delivered>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), Failure>>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            match attempt().await {
                Ok(()) => return Some(Delivered::Applied),
                Err(Failure::Refused(error)) => return Some(self.skip(record, &error)),
                Err(Failure::Transient(error)) => {
                    let age_ms = now_ms().saturating_sub(record.recorded_ms);
                    if Duration::from_millis(age_ms) > self.settings.max_retry_age {
                        warn!(cache = %self.cache.url, url = %record.url, %error, "giving up on a change older than the retry limit");
                        self.metrics.changes_given_up.inc();
                        return Some(Delivered::GivenUp);
                    }
                    debug!(cache = %self.cache.url, url = %record.url, %error, "command failed; retrying");
                    self.note_failure(&error, &record.url, true);
                    self.refresh_lag();
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn skip(&self, record: &Record, error: &str) -> Delivered {
        warn!(cache = %self.cache.url, url = %record.url, %error, "the cache refuses this change for good (a request it cannot take, whatever is retried); skipped, and its later changes go on");
        self.metrics.changes_refused.inc();
        Delivered::GivenUp
    }

    /// The cache's URL for `record`'s: the cache's base with the record's path and query.
    fn target(&self, record: &Record) -> Result<Target, String> {
        let uri: Uri = record.url.parse().map_err(|e| format!("bad URL {}: {e}", record.url))?;
        let host = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        Ok(Target {
            url: format!("{}{}", self.base, path),
            host,
        })
    }

    async fn purge(&self, scope: Command, target: &Target, record: &Record) -> Result<(), Failure> {
        let purge = self.command(scope, &target.url, &target.host, record.log_seq).await;
        self.count("purge", purge.is_ok());
        match purge {
            // A cache that does not hold the object answers 404 (Varnish does): nothing to remove is fine.
            Ok(status) if status.is_success() || status == http::StatusCode::NOT_FOUND => Ok(()),
            Ok(status) if refuses_for_good(status) => Err(Failure::Refused(format!("PURGE answered {status}"))),
            Ok(status) if matches!(status, http::StatusCode::UNAUTHORIZED | http::StatusCode::FORBIDDEN) => {
                Err(Failure::Transient(format!(
                    "PURGE answered {status}: the cache refuses the purge token; give the sync service --cache-key \
                     the key file the cache was given as --purge-key (or let the sync service's address purge: \
                     the edge's purge_allow)"
                )))
            }
            Ok(status) => Err(Failure::Transient(format!("PURGE answered {status}"))),
            Err(error) => Err(Failure::Transient(error)),
        }
    }

    async fn prefetch(&self, target: &Target, record: &Record) -> Result<(), Failure> {
        let prefetch = self
            .command(Command::Prefetch, &target.url, &target.host, record.log_seq)
            .await;
        self.count(
            "prefetch",
            prefetch
                .as_ref()
                .is_ok_and(|s| !s.is_server_error() && !s.is_redirection()),
        );
        match prefetch {
            // The cache sends its users elsewhere (an edge with `redirect_https` answers plain HTTP with
            // 308): the prefetch stored nothing, and no retry will. The purge did its part; the object is
            // fetched on the first user request.
            Ok(status) if status.is_redirection() => {
                self.note_failure(
                    &format!(
                        "prefetch answered {status}, a redirect: nothing was stored (an edge with redirect_https? give the sync service its https:// URL, with --cache-ca for a private CA)"
                    ),
                    &record.url,
                    false,
                );
                Ok(())
            }
            Ok(status) if !status.is_server_error() => Ok(()),
            Ok(status) => Err(Failure::Transient(format!("prefetch answered {status}"))),
            Err(error) => Err(Failure::Transient(error)),
        }
    }

    /// Sends one command carrying `position`, the change's log position: every earlier change's purge was
    /// answered before this one is sent ([`PurgeTurn`]), so it is what the cache has applied through. The
    /// answer's head must come within the request timeout, and then its body is read through (so the cache completes and stores a
    /// prefetch) and dropped as it comes, a chunk at a time: the body may be any size, and may take any
    /// time as long as it never stalls for the timeout.
    async fn command(
        &self,
        command: Command,
        target: &str,
        host: &str,
        position: u64,
    ) -> Result<http::StatusCode, String> {
        let method = command.method();
        let mut request = Request::builder()
            .method(method)
            .uri(target)
            .header(header::HOST, host)
            .header(SEQ_HEADER, position.to_string());
        let log_id = self.master.log_id();
        if !log_id.is_unknown() {
            request = request.header(LOG_HEADER, log_id.as_str());
        }
        if command == Command::PurgeAnyQuery {
            request = request.header(PURGE_SCOPE_HEADER, PURGE_ANY_QUERY);
        }
        if command == Command::PurgePrefix {
            request = request.header(PURGE_SCOPE_HEADER, PURGE_PREFIX);
        }
        if command == Command::Prefetch {
            // No credentials on the prefetch: a shared cache must not store a response to a request that
            // carries Authorization (RFC 9111 section 3.5), and the prefetch exists to be stored.
            request = request.header("tern-prefetch", "1");
        } else if let Some(token) = &self.settings.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let timeout = self.settings.request_timeout;
        let response = tokio::time::timeout(timeout, self.client.request(request))
            .await
            .map_err(|_| format!("{method} had no answer within {} ms", timeout.as_millis()))?
            .map_err(|e| {
                format!(
                    "{method} failed: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or(e.to_string())
                )
            })?;
        let status = response.status();
        let mut body = response.into_body();
        loop {
            match tokio::time::timeout(timeout, body.frame()).await {
                Err(_) => {
                    return Err(format!(
                        "{method} body stalled for {} ms (the cache sent nothing)",
                        timeout.as_millis()
                    ));
                }
                Ok(None) => break,
                Ok(Some(Ok(_frame))) => {}
                Ok(Some(Err(error))) => return Err(format!("{method} body failed: {error}")),
            }
        }
        Ok(status)
    }

    fn count(&self, command: &'static str, ok: bool) {
        self.metrics.command(&self.cache.url, command, ok);
        self.progress.lock().unwrap_or_else(|p| p.into_inner()).commands += 1;
    }

    /// Records where the worker stands: applied through `next - 1`, with `left` and then `more` still to
    /// apply. Nothing left clears the last failure.
    fn report(&self, next: u64, left: &[Arc<Record>], more: &[Arc<Record>]) {
        let (lag_changes, lag_seconds) = self.lag(left.iter().chain(more));
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        progress.applied_through = next.saturating_sub(1);
        progress.lag_changes = lag_changes;
        progress.lag_seconds = lag_seconds;
        if lag_changes == 0 {
            progress.last_error = None;
            *self.logged_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.metrics.set_lag(&self.cache.url, lag_changes, lag_seconds);
    }

    /// The changes of `backlog` this cache is sent, and the age in seconds of the oldest.
    fn lag<'a>(&self, backlog: impl Iterator<Item = &'a Arc<Record>>) -> (u64, f64) {
        lag_over(&self.cache.sites, backlog)
    }

    /// Brings the lag up to date while commands are being retried: it grows with the changes the log gains
    /// and with the age of the oldest, so alerts on it fire while a cache is failing.
    fn refresh_lag(&self) {
        let next = self.progress.lock().unwrap_or_else(|p| p.into_inner()).applied_through + 1;
        let (lag_changes, lag_seconds) = self.lag(self.master.records_from(next).iter());
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        progress.lag_changes = lag_changes;
        progress.lag_seconds = lag_seconds;
        self.metrics.set_lag(&self.cache.url, lag_changes, lag_seconds);
    }

    /// Shows a failed command in `/status` (with its URL), and logs each new kind of failure once: a cache
    /// that keeps failing the same way, for every change in flight, is logged once. /status shows it too,
    /// but an operator waiting on `--wait-fresh` reads the log. `retried`: whether the command is tried
    /// again.
    fn note_failure(&self, error: &str, url: &str, retried: bool) {
        let mut logged = self.logged_failure.lock().unwrap_or_else(|p| p.into_inner());
        if logged.as_deref() != Some(error) {
            if retried {
                warn!(cache = %self.cache.url, %error, %url, "cache command failed; retrying with back-off");
            } else {
                warn!(cache = %self.cache.url, %error, %url, "cache command failed; not retried");
            }
            *logged = Some(error.to_string());
        }
        drop(logged);
        self.progress.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(format!("{error} ({url})"));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::{LOG_FILE, SiteConfig};
    use tern_wire::sync::{Change, ChangeBatch};

    const CACHE: &str = "http://127.0.0.1:9";

    fn master_with(dir: &std::path::Path, changes: u64) -> Arc<Master> {
        let sites = vec![SiteConfig {
            name: "www".into(),
            hosts: vec!["www.example.com".into()],
        }];
        let master = Master::open(dir, sites).expect("open");
        let batch = ChangeBatch {
            site: "www".into(),
            agent: "a".into(),
            incarnation: Incarnation::generate().expect("random"),
            changes: (1..=changes)
                .map(|seq| Change {
                    seq,
                    url: format!("http://www.example.com/{seq}"),
                    kind: ChangeKind::Modified,
                    etag: None,
                    at_ms: 0,
                })
                .collect(),
        };
        master.accept(&batch).expect("accepted");
        Arc::new(master)
    }

    fn worker(dir: &std::path::Path, master: Arc<Master>) -> CacheWorker {
        worker_for(CACHE, dir, master)
    }

    fn worker_for(url: &str, dir: &std::path::Path, master: Arc<Master>) -> CacheWorker {
        let settings = CacherSettings {
            token: None,
            max_retry_age: Duration::from_secs(60),
            request_timeout: Duration::from_secs(1),
            data_dir: dir.to_path_buf(),
            tls: tern_http::tls::ClientTls::new(None).expect("system roots"),
            commands_in_flight: 1,
        };
        let cache = CacheConfig {
            url: url.into(),
            sites: vec![],
        };
        CacheWorker::new(cache, settings, master, Arc::new(SyncMetrics::new()))
    }

    fn write_position(worker: &CacheWorker, next: u64, log: Option<&str>) {
        let log = log.map(|id| format!(r#","log":"{id}""#)).unwrap_or_default();
        let text = format!(r#"{{"url":"{CACHE}","next":{next}{log}}}"#);
        std::fs::write(&worker.position_path, text).expect("write position");
    }

    #[tokio::test]
    async fn a_saved_position_counts_only_in_its_own_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let master = master_with(dir.path(), 5);
        let own = worker(dir.path(), master.clone());
        own.save_position(4);
        assert_eq!(own.load_position(), 4, "a position of this log resumes");
        write_position(&own, 4, Some("another-log"));
        assert_eq!(
            own.load_position(),
            1,
            "another log's position starts from the beginning"
        );
        write_position(&own, 3, None);
        assert_eq!(
            own.load_position(),
            3,
            "a position from before log ids, inside the log, is trusted"
        );
        write_position(&own, 40, None);
        assert_eq!(own.load_position(), 1, "one past the log's end was another log's");
        write_position(&own, 40, Some(master.log_id().as_str()));
        assert_eq!(
            own.load_position(),
            6,
            "past the end of its own log: resumes at the end, skipping nothing new"
        );

        // The log is deleted, the position files beside it are not: the new log's changes are all sent.
        own.save_position(3);
        drop(own);
        drop(master);
        std::fs::remove_file(dir.path().join(LOG_FILE)).expect("rm");
        let fresh = worker(dir.path(), master_with(dir.path(), 2));
        assert_eq!(
            fresh.load_position(),
            1,
            "position 3 of the old log is not waited for in the new one"
        );
    }

    /// A request head read a byte at a time (nothing past it: the next request's bytes stay unread);
    /// `None` when the connection closes first.
    async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
        use tokio::io::AsyncReadExt;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        Some(String::from_utf8_lossy(&head).into_owned())
    }

    /// A cache on loopback that records each request's method and path: a `PURGE` of `/2` is refused
    /// with `414`; a `GET` of `/3` answers 3 MiB in 30 pieces 50 ms apart (longer in all than the 1 s
    /// timeout, never stalled that long); a `GET` of `/stall` sends a piece and then nothing for 3 s.
    async fn fake_cache() -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    let line = head.lines().next().unwrap_or("").to_string();
                    let mut words = line.split(' ');
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let scope = head
                        .lines()
                        .find_map(|line| line.strip_prefix("tern-purge-scope: prefix"))
                        .map_or("", |_| " (prefix)");
                    log.lock().expect("log").push(format!("{method} {path}{scope}"));
                    let piece = vec![b'x'; 100 << 10];
                    match (method, path) {
                        ("PURGE", "/2") => {
                            let _ = stream
                                .write_all(
                                    b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                                )
                                .await;
                        }
                        ("GET", "/3") => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                30 * piece.len()
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                            for _ in 0..30 {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                if stream.write_all(&piece).await.is_err() {
                                    return;
                                }
                            }
                        }
                        ("GET", "/stall") => {
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                2 * piece.len()
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(&piece).await;
                            tokio::time::sleep(Duration::from_secs(3)).await;
                        }
                        _ => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                                .await;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn a_change_the_cache_refuses_is_skipped_and_a_long_prefetch_that_never_stalls_completes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (url, seen) = fake_cache().await;
        let master = master_with(dir.path(), 3);
        let worker = worker_for(&url, dir.path(), master);
        let (progress, metrics) = (worker.progress(), worker.metrics.clone());
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while progress.lock().expect("progress").applied_through < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "stuck: {:?}",
                progress.lock().expect("progress")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        let _ = running.await;
        assert_eq!(
            *seen.lock().expect("seen"),
            ["PURGE /1", "GET /1", "PURGE /2", "PURGE /3", "GET /3"],
            "the refused purge of /2 is sent once, and the 1.5 s prefetch of /3 once"
        );
        assert_eq!(metrics.changes_refused.get(), 1);
        assert_eq!(metrics.changes_given_up.get(), 0);
    }

    /// What a cache saw of the commands sent to it side by side.
    #[derive(Default)]
    struct Overlap {
        in_flight: usize,
        most_in_flight: usize,
        /// Positions whose purge was answered.
        answered: std::collections::BTreeSet<u64>,
        /// Purges whose `Tern-Sync-Seq` claimed a position whose purge was not answered yet.
        claims_too_far: Vec<String>,
        purges: usize,
    }

    /// A cache on loopback that answers every command after `delay`, recording how many were in flight at
    /// once and whether each purge's `Tern-Sync-Seq` claims only purges it had answered (paths are the
    /// positions: `/1`, `/2`, ...).
    async fn slow_cache(delay: Duration) -> (String, Arc<Mutex<Overlap>>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Overlap::default()));
        let state = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    loop {
                        let Some(text) = read_head(&mut stream).await else {
                            return;
                        };
                        let mut words = text.lines().next().unwrap_or("").split(' ');
                        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                        let own: u64 = path.trim_start_matches('/').parse().expect("a position");
                        let claim: u64 = text
                            .lines()
                            .find_map(|line| line.strip_prefix("tern-sync-seq: "))
                            .and_then(|value| value.trim().parse().ok())
                            .expect("Tern-Sync-Seq");
                        {
                            let mut state = state.lock().expect("state");
                            state.in_flight += 1;
                            state.most_in_flight = state.most_in_flight.max(state.in_flight);
                            if method == "PURGE" {
                                state.purges += 1;
                                let unanswered: Vec<u64> = (1..=claim)
                                    .filter(|p| *p != own && !state.answered.contains(p))
                                    .collect();
                                if claim > own || !unanswered.is_empty() {
                                    state
                                        .claims_too_far
                                        .push(format!("PURGE /{own} claimed {claim}; unanswered: {unanswered:?}"));
                                }
                            }
                        }
                        tokio::time::sleep(delay).await;
                        {
                            let mut state = state.lock().expect("state");
                            state.in_flight -= 1;
                            if method == "PURGE" {
                                state.answered.insert(own);
                            }
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn changes_go_to_a_cache_side_by_side_and_no_purge_claims_one_still_on_its_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (url, seen) = slow_cache(Duration::from_millis(30)).await;
        let master = master_with(dir.path(), 40);
        let mut worker = worker_for(&url, dir.path(), master);
        worker.settings.commands_in_flight = 4;
        let progress = worker.progress();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while progress.lock().expect("progress").applied_through < 40 {
            assert!(tokio::time::Instant::now() < deadline, "stuck");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        let _ = running.await;
        let seen = seen.lock().expect("seen");
        assert_eq!(seen.purges, 40);
        assert_eq!(seen.answered.len(), 40);
        assert!(
            (2..=4).contains(&seen.most_in_flight),
            "up to 4 commands at once, and more than one: {}",
            seen.most_in_flight
        );
        assert!(seen.claims_too_far.is_empty(), "{:?}", seen.claims_too_far);
        let saved: Position = serde_json::from_slice(
            &std::fs::read(
                dir.path()
                    .join(format!("cache-{}.pos", &blake3::hash(url.as_bytes()).to_hex()[..16])),
            )
            .expect("position file"),
        )
        .expect("position");
        assert_eq!(saved.next, 41, "every change's position saved");
    }

    #[test]
    fn a_caches_lag_is_read_from_the_log_as_of_now_for_its_own_sites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let master = master_with(dir.path(), 5);
        let mut progress = CacheProgress {
            applied_through: 2,
            ..CacheProgress::default()
        };
        let (changes, seconds) = progress.lag_now(&master);
        assert_eq!(changes, 3);
        assert!(seconds >= 0.0);
        progress.sites = vec!["static".into()];
        assert_eq!(progress.lag_now(&master), (0, 0.0), "no change of its site waits");
        progress.sites = vec!["www".into()];
        progress.applied_through = 5;
        assert_eq!(progress.lag_now(&master), (0, 0.0), "applied through the end");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lag_of_a_failing_cache_grows_with_the_log_and_with_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let master = master_with(dir.path(), 3);
        let worker = worker(dir.path(), master.clone());
        let progress = worker.progress();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone()));
        let wait_for = |what: &'static str, done: &dyn Fn(&CacheProgress) -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                let now = progress.lock().expect("progress").clone();
                if done(&now) {
                    return now;
                }
                assert!(std::time::Instant::now() < deadline, "{what}: {now:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let failing = tokio::task::block_in_place(|| wait_for("failing", &|p| p.last_error.is_some()));
        assert_eq!((failing.applied_through, failing.lag_changes), (0, 3));
        // More changes while the cache is down: the lag counts them, and its age goes on growing.
        let batch = ChangeBatch {
            site: "www".into(),
            agent: "b".into(),
            incarnation: Incarnation::generate().expect("random"),
            changes: (1..=5)
                .map(|seq| Change {
                    seq,
                    url: format!("http://www.example.com/more/{seq}"),
                    kind: ChangeKind::Modified,
                    etag: None,
                    at_ms: 0,
                })
                .collect(),
        };
        master.accept(&batch).expect("accepted");
        let grown = tokio::task::block_in_place(|| {
            wait_for("grown", &|p| p.lag_changes == 8 && p.lag_seconds > failing.lag_seconds)
        });
        assert_eq!(grown.applied_through, 0);
        shutdown.cancel();
        let _ = running.await;
    }

    #[tokio::test]
    async fn a_prefetch_whose_body_stalls_fails_naming_the_stall() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (url, _) = fake_cache().await;
        let master = master_with(dir.path(), 1);
        let worker = worker_for(&url, dir.path(), master.clone());
        let record = master.records_from(1)[0].clone();
        let target = format!("{url}/stall");
        let started = std::time::Instant::now();
        let error = worker
            .command(Command::Prefetch, &target, "www.example.com", record.log_seq)
            .await
            .expect_err("stalls");
        assert!(error.contains("stalled"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "given up after the 1 s stall, not the 3 s"
        );
    }

    #[tokio::test]
    async fn a_lost_position_purges_the_cache_of_every_site_it_serves_and_the_next_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(master_with(dir.path(), 2));
        // Position 2's line is damaged (it was written; what it said is gone).
        let path = dir.path().join(crate::master::LOG_FILE);
        let text = std::fs::read_to_string(&path).expect("read");
        let mut lines: Vec<&str> = text.lines().collect();
        lines[2] = "{\"log_seq\":2,garbage";
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        let sites = vec![SiteConfig {
            name: "www".into(),
            hosts: vec!["www.example.com".into()],
        }];
        let master = Arc::new(Master::open(dir.path(), sites).expect("reopen"));
        assert!(master.records_from(2)[0].lost);
        let (url, seen) = fake_cache().await;
        let worker = worker_for(&url, dir.path(), master);
        let progress = worker.progress();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while progress.lock().expect("progress").applied_through < 2 {
            assert!(tokio::time::Instant::now() < deadline, "stuck");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        let _ = running.await;
        assert_eq!(*seen.lock().expect("seen"), ["PURGE /1", "GET /1", "PURGE / (prefix)"]);
    }
}
