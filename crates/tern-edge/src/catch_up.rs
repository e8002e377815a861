//! Catching up with the sync service at start-up (seed 001, `tern sync`): an edge that was down while
//! content changed must not serve its old copies when it comes back. The cacher's `PURGE`s carry the
//! change log position (`Tern-Sync-Seq`); the edge keeps the highest one it applied in its cache directory,
//! and at start-up, before it serves anything, asks the sync service for every change after it and purges
//! those URLs.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tern_http_cache::{KeyConfig, PurgeCount, PurgeMode, Store, primary_key};
use tracing::{info, warn};

const MARK_FILE: &str = "sync-seq";

/// The highest change-log position this edge applied, kept in its cache directory.
#[derive(Debug)]
pub struct SyncMark {
    path: Option<PathBuf>,
    applied: AtomicU64,
    write: Mutex<()>,
}

impl SyncMark {
    /// Reads the mark from `cache_dir` (0 without one).
    pub fn open(cache_dir: Option<&std::path::Path>) -> Self {
        let path = cache_dir.map(|dir| dir.join(MARK_FILE));
        let applied = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        SyncMark {
            path,
            applied: AtomicU64::new(applied),
            write: Mutex::new(()),
        }
    }

    /// The position applied through.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Records that position `seq` was applied (keeps the highest).
    pub fn note(&self, seq: u64) {
        let previous = self.applied.fetch_max(seq, Ordering::AcqRel);
        if seq <= previous {
            return;
        }
        let Some(path) = &self.path else {
            return;
        };
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.applied();
        let temp = path.with_extension("tmp");
        let written = std::fs::write(&temp, current.to_string()).and_then(|_| std::fs::rename(&temp, path));
        if let Err(error) = written {
            warn!(%error, path = %path.display(), "cannot record the sync position");
        }
    }
}

#[derive(Deserialize)]
struct Changes {
    through: u64,
    reset: bool,
    changes: Vec<ChangedUrl>,
}

#[derive(Deserialize)]
struct ChangedUrl {
    url: String,
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
) -> PurgeCount {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let url = format!("{}/changes?since={}", sync_url.trim_end_matches('/'), mark.applied());
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
                        if let Some(key) = key_of(&change.url, key_config) {
                            count += store.purge_url(&key, PurgeMode::Hard);
                        }
                    }
                }
                mark.note(changes.through);
                info!(
                    since = url.as_str(),
                    changes = changes.changes.len(),
                    removed = count.removed,
                    through = changes.through,
                    "caught up with the sync service"
                );
                return count;
            }
            Err(error) if started.elapsed() + backoff < deadline => {
                warn!(%error, sync = sync_url, "cannot reach the sync service yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(error) => {
                warn!(%error, sync = sync_url, "sync service unreachable at start-up: dropping the cache so nothing that changed meanwhile is served");
                return store.purge_prefix("", PurgeMode::Hard);
            }
        }
    }
}

async fn fetch(client: &Client<HttpConnector, Empty<Bytes>>, url: &str) -> Result<Changes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad sync URL {url}: {e}"))?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
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
