//! Catching up with the sync service at start-up (seed 001, `tern sync`): an edge that was down while
//! content changed must not serve its old copies when it comes back. The cacher's `PURGE`s carry the
//! change log position (`Tern-Sync-Seq`) and the log's incarnation (`Tern-Sync-Log`); the edge keeps the
//! highest position it applied, with the log it counts in, in its cache directory, and at start-up, before
//! it serves anything, asks the sync service for every change after it and purges those URLs.
//!
//! Positions compare only within one log: a sync service started on an empty data directory counts from 1
//! again under a new log id, so the mark follows the new log instead of keeping the old log's higher
//! number, and a catch-up from another log's position is answered with a reset (the whole cache dropped).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tern_http::tls::{ClientTls, HttpsClient};
use tern_http_cache::{KeyConfig, PurgeCount, PurgeMode, Store, primary_key};
use tern_wire::sync::{CatchUp, ChangeKind, Incarnation};
use tracing::{info, warn};

const MARK_FILE: &str = "sync-seq";

/// A change-log position and the log it counts in (unknown when it came from a sync service from before
/// log ids, or from a mark file written before them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// The change log's incarnation.
    pub log: Incarnation,
    /// The position applied through.
    pub applied: u64,
}

/// The highest change-log position this edge applied, and its log, kept in its cache directory.
#[derive(Debug)]
pub struct SyncMark {
    path: Option<PathBuf>,
    /// Also held while the file is written, so the file always ends with the latest position.
    position: Mutex<Position>,
}

impl SyncMark {
    /// Reads the mark from `cache_dir` (position 0 of an unknown log without one). The file holds
    /// `POSITION LOG`; a file from before log ids holds only the position.
    pub fn open(cache_dir: Option<&std::path::Path>) -> Self {
        let path = cache_dir.map(|dir| dir.join(MARK_FILE));
        let position = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|text| parse_mark(&text))
            .unwrap_or_default();
        SyncMark {
            path,
            position: Mutex::new(position),
        }
    }

    /// The position applied through.
    pub fn applied(&self) -> u64 {
        self.position().applied
    }

    /// The position applied through, with its log.
    pub fn position(&self) -> Position {
        self.position.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records that position `seq` of change log `log` (a `Tern-Sync-Log` value; none from a sync service
    /// from before log ids) was applied: the highest position within the same log, and the new log's
    /// position when the log is another one. A malformed log id is ignored, position and all.
    pub fn note(&self, log: Option<&str>, seq: u64) {
        let log = match log.map(Incarnation::parse).transpose() {
            Ok(log) => log.unwrap_or_default(),
            Err(error) => {
                warn!(%error, seq, "ignoring a sync position with a malformed log id");
                return;
            }
        };
        self.note_in(&log, seq);
    }

    fn note_in(&self, log: &Incarnation, seq: u64) {
        let mut position = self.position.lock().unwrap_or_else(|p| p.into_inner());
        let same_log = log.is_unknown() || *log == position.log;
        if same_log {
            if seq <= position.applied {
                return;
            }
            position.applied = seq;
        } else {
            info!(
                previous_log = %position.log,
                previous = position.applied,
                log = %log,
                seq,
                "the sync service has a new change log: following its positions"
            );
            *position = Position {
                log: log.clone(),
                applied: seq,
            };
        }
        let Some(path) = &self.path else {
            return;
        };
        let text = if position.log.is_unknown() {
            position.applied.to_string()
        } else {
            format!("{} {}", position.applied, position.log)
        };
        let temp = path.with_extension("tmp");
        let written = std::fs::write(&temp, text).and_then(|_| std::fs::rename(&temp, path));
        if let Err(error) = written {
            warn!(%error, path = %path.display(), "cannot record the sync position");
        }
    }
}

/// Reads `POSITION [LOG]`; anything unreadable is position 0 of an unknown log, which catches up from the
/// log's beginning.
fn parse_mark(text: &str) -> Position {
    let mut fields = text.split_whitespace();
    let Some(applied) = fields.next().and_then(|n| n.parse().ok()) else {
        return Position::default();
    };
    let log = match fields.next().map(Incarnation::parse) {
        None => Incarnation::default(),
        Some(Ok(log)) => log,
        Some(Err(_)) => return Position::default(),
    };
    Position { log, applied }
}

/// The catch-up request for `mark`.
fn changes_url(sync_url: &str, mark: &Position) -> String {
    let base = sync_url.trim_end_matches('/');
    if mark.log.is_unknown() {
        format!("{base}/changes?since={}", mark.applied)
    } else {
        format!("{base}/changes?since={}&log={}", mark.applied, mark.log)
    }
}

/// Asks the sync service at `sync_url` for the changes after the mark and purges them. Retries until
/// `deadline`; if the service stays unreachable, drops the whole cache rather than risk serving content
/// that changed meanwhile.
pub async fn catch_up(
    store: &Store,
    mark: &SyncMark,
    sync_url: &str,
    key_config: &KeyConfig,
    deadline: Duration,
    tls: &ClientTls,
    ports: &[u16],
) -> PurgeCount {
    let client: HttpsClient<Empty<Bytes>> = tls.client();
    // The ports this edge serves on: the sync service warns when none of its caches is this edge.
    let ports: Vec<String> = ports.iter().filter(|port| **port != 0).map(u16::to_string).collect();
    let mut url = changes_url(sync_url, &mark.position());
    if !ports.is_empty() {
        url = format!("{url}&ports={}", ports.join(","));
    }
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match fetch(&client, &url).await {
            Ok(changes) => {
                let mut count = PurgeCount::default();
                if changes.reset {
                    count += store.purge_prefix("", PurgeMode::Hard);
                } else {
                    for change in &changes.changes {
                        let Some(key) = key_of(&change.url, key_config) else {
                            continue;
                        };
                        // As the cacher sends them: a file's change with any query, an operator's exact.
                        count += match change.kind {
                            ChangeKind::Purged => store.purge_url(&key, PurgeMode::Hard),
                            ChangeKind::Created | ChangeKind::Modified | ChangeKind::Deleted => {
                                store.purge_url_any_query(&key, PurgeMode::Hard)
                            }
                        };
                    }
                }
                mark.note_in(&changes.log, changes.through);
                info!(
                    since = url.as_str(),
                    changes = changes.changes.len(),
                    reset = changes.reset,
                    removed = count.removed,
                    through = changes.through,
                    log = %changes.log,
                    "caught up with the sync service"
                );
                return count;
            }
            Err(mut error) if started.elapsed() + backoff < deadline => {
                error.push_str(hint_for(&error));
                warn!(%error, sync = sync_url, "cannot reach the sync service yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(mut error) => {
                error.push_str(hint_for(&error));
                warn!(%error, sync = sync_url, "sync service unreachable at start-up: dropping the cache so nothing that changed meanwhile is served");
                return store.purge_prefix("", PurgeMode::Hard);
            }
        }
    }
}

async fn fetch(client: &HttpsClient<Empty<Bytes>>, url: &str) -> Result<CatchUp, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad sync URL {url}: {e}"))?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| tern_http::tls::error_reason(&e))?;
    if !response.status().is_success() {
        return Err(format!("sync service answered {}", response.status()));
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
}

fn key_of(url: &str, key_config: &KeyConfig) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    Some(primary_key(
        uri.scheme_str()?,
        uri.authority()?.as_str(),
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        key_config,
    ))
}

/// What to check, for an error reaching the sync service's admin URL.
fn hint_for(error: &str) -> &'static str {
    if error.contains("certificate") {
        " (give --sync-ca the CA file that signed the sync service's certificate, or that certificate itself)"
    } else if error.contains("invalid HTTP") || error.contains("parse") || error.contains("bad magic") {
        // The agents' port answers in tern frames, not HTTP.
        " (that port does not speak HTTP: give --sync-url the sync service's admin URL, its --admin address, not the port agents send to)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark_file(dir: &std::path::Path) -> String {
        std::fs::read_to_string(dir.join(MARK_FILE)).expect("mark file")
    }

    #[test]
    fn the_mark_keeps_the_highest_position_of_a_log_and_follows_a_new_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mark = SyncMark::open(Some(dir.path()));
        assert_eq!(mark.position(), Position::default());
        mark.note(Some("old"), 500);
        mark.note(Some("old"), 499);
        assert_eq!(mark.applied(), 500, "within one log, the highest position");
        assert_eq!(mark_file(dir.path()), "500 old");
        // The sync service started a new log: its position 1 is not swallowed by the old 500.
        mark.note(Some("new"), 1);
        assert_eq!(mark.applied(), 1);
        mark.note(None, 2);
        assert_eq!(
            mark.position(),
            Position {
                log: Incarnation::parse("new").expect("id"),
                applied: 2
            },
            "a position without a log id counts in the current log"
        );
        mark.note(Some("bad id&x"), 900);
        assert_eq!(mark.applied(), 2, "a malformed log id is ignored");
        let reopened = SyncMark::open(Some(dir.path()));
        assert_eq!(reopened.position(), mark.position(), "the mark survives a restart");
        assert_eq!(
            changes_url("http://sync:7071/", &reopened.position()),
            "http://sync:7071/changes?since=2&log=new",
            "catch-up names the log its position counts in"
        );
    }

    #[test]
    fn a_mark_from_before_log_ids_is_read_and_adopts_the_first_log_it_sees() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(MARK_FILE), "500").expect("write");
        let mark = SyncMark::open(Some(dir.path()));
        assert_eq!(mark.applied(), 500);
        assert!(mark.position().log.is_unknown());
        assert_eq!(
            changes_url("http://sync", &mark.position()),
            "http://sync/changes?since=500"
        );
        mark.note(Some("current"), 3);
        assert_eq!(mark_file(dir.path()), "3 current");
        std::fs::write(dir.path().join(MARK_FILE), "garbage").expect("write");
        assert_eq!(SyncMark::open(Some(dir.path())).position(), Position::default());
    }
}
