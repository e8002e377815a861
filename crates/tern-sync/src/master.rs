//! The master (seed 001, "checks the URL validity of the variation information and converts it into
//! commands for the cache units"): checks each change against its site's hosts, drops duplicates and
//! changes superseded within a batch, and appends the rest to a durable log that the cachers read.
//!
//! A batch is acknowledged to its agent only after its records are written and synced to the log, so a
//! crash of the sync service loses nothing an agent was told was received. At start-up the log is replayed
//! to rebuild the agents' high-water marks and the cachers' work.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tern_wire::sync::{ChangeBatch, ChangeKind, Reject};
use tokio::sync::watch;
use tracing::{info, warn};

/// A site the service synchronises.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Its name (agents send it).
    pub name: String,
    /// Host names its URLs may have.
    pub hosts: Vec<String>,
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log (from 1).
    pub log_seq: u64,
    /// Site.
    pub site: String,
    /// Agent that reported it.
    pub agent: String,
    /// The agent's sequence number.
    pub agent_seq: u64,
    /// URL.
    pub url: String,
    /// What happened.
    pub kind: ChangeKind,
    /// New content hash.
    pub etag: Option<String>,
    /// When the agent saw it (ms since the epoch).
    pub at_ms: u64,
    /// When the master recorded it (ms since the epoch).
    pub recorded_ms: u64,
}

/// What the master did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Highest agent sequence now recorded (to acknowledge).
    pub through: u64,
    /// Records appended.
    pub recorded: usize,
    /// Changes already recorded earlier (resent).
    pub duplicates: usize,
    /// Changes superseded by a later change of the same URL in the batch.
    pub superseded: usize,
    /// Changes refused, with the reason.
    pub refused: Vec<(u64, &'static str)>,
}

struct LogState {
    records: Vec<Arc<Record>>,
    high_water: HashMap<String, u64>,
    file: File,
}

/// The master and its log.
pub struct Master {
    sites: Vec<SiteConfig>,
    /// A second handle on the log file, to sync it without holding the log's lock.
    sync_handle: File,
    log: Mutex<LogState>,
    length: watch::Sender<u64>,
    path: PathBuf,
}

impl Master {
    /// Opens (or creates) the log in `data_dir` and replays it.
    pub fn open(data_dir: &std::path::Path, sites: Vec<SiteConfig>) -> std::io::Result<Master> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("changes.log");
        let mut records = Vec::new();
        let mut high_water: HashMap<String, u64> = HashMap::new();
        if let Ok(file) = File::open(&path) {
            for (number, line) in BufReader::new(file).lines().enumerate() {
                let line = line?;
                match serde_json::from_str::<Record>(&line) {
                    Ok(record) if record.log_seq == records.len() as u64 + 1 => {
                        let mark = high_water.entry(record.agent.clone()).or_insert(0);
                        *mark = (*mark).max(record.agent_seq);
                        records.push(Arc::new(record));
                    }
                    // A torn last line from a crash mid-write: it was never acknowledged.
                    _ => warn!(line = number + 1, path = %path.display(), "ignoring a damaged log line"),
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let sync_handle = file.try_clone()?;
        let length = records.len() as u64;
        info!(records = length, path = %path.display(), "change log opened");
        let (sender, _) = watch::channel(length);
        Ok(Master {
            sites,
            sync_handle,
            log: Mutex::new(LogState {
                records,
                high_water,
                file,
            }),
            length: sender,
            path,
        })
    }

    /// Where the log lives.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The sites.
    pub fn sites(&self) -> &[SiteConfig] {
        &self.sites
    }

    /// Watches the log's length (cachers wait on it).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.length.subscribe()
    }

    /// Records from `from` (a log position, from 1) on.
    pub fn records_from(&self, from: u64) -> Vec<Arc<Record>> {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let start = from.saturating_sub(1) as usize;
        log.records.get(start..).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// The log's length.
    pub fn len(&self) -> u64 {
        *self.length.borrow()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks and records a batch (blocking: it syncs the log file).
    pub fn accept(&self, batch: &ChangeBatch) -> Result<Accepted, Reject> {
        let Some(site) = self.sites.iter().find(|s| s.name == batch.site) else {
            return Err(Reject {
                reason: "unknown-site".into(),
                message: format!(
                    "site `{}` is not configured on the sync service (--site NAME=HOST)",
                    batch.site
                ),
            });
        };
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let mark = log.high_water.get(&batch.agent).copied().unwrap_or(0);
        let mut accepted = Accepted {
            through: mark,
            ..Accepted::default()
        };
        // The last change of each URL in the batch wins; earlier ones are superseded.
        let mut last_for_url: HashMap<&str, u64> = HashMap::new();
        for change in &batch.changes {
            last_for_url.insert(change.url.as_str(), change.seq);
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut appended = Vec::new();
        for change in &batch.changes {
            accepted.through = accepted.through.max(change.seq);
            if change.seq <= mark {
                accepted.duplicates += 1;
                continue;
            }
            if change.kind == ChangeKind::Purged {
                accepted.refused.push((change.seq, "kind"));
                continue;
            }
            if let Err(reason) = check_url(&change.url, site) {
                accepted.refused.push((change.seq, reason));
                continue;
            }
            if last_for_url.get(change.url.as_str()) != Some(&change.seq) {
                accepted.superseded += 1;
                continue;
            }
            let record = Record {
                log_seq: log.records.len() as u64 + appended.len() as u64 + 1,
                site: site.name.clone(),
                agent: batch.agent.clone(),
                agent_seq: change.seq,
                url: change.url.clone(),
                kind: change.kind,
                etag: change.etag.clone(),
                at_ms: change.at_ms,
                recorded_ms: now_ms,
            };
            appended.push(record);
        }
        accepted.recorded = appended.len();
        log.high_water.insert(batch.agent.clone(), accepted.through);
        self.append(log, appended)?;
        Ok(accepted)
    }

    /// Records an operator's purge of `urls` (each must belong to a configured site). Returns the log
    /// position of the last record.
    pub fn purge(&self, urls: &[String]) -> Result<u64, Reject> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let mut appended = Vec::new();
        for url in urls {
            let Some(site) = self.sites.iter().find(|site| check_url(url, site).is_ok()) else {
                return Err(Reject {
                    reason: "host".into(),
                    message: format!("`{url}` belongs to no configured site"),
                });
            };
            appended.push(Record {
                log_seq: log.records.len() as u64 + appended.len() as u64 + 1,
                site: site.name.clone(),
                agent: "api".into(),
                agent_seq: 0,
                url: url.clone(),
                kind: ChangeKind::Purged,
                etag: None,
                at_ms: now_ms,
                recorded_ms: now_ms,
            });
        }
        self.append(log, appended)
    }

    /// Writes records to the log (synced) and publishes them to the cachers; returns the log's length.
    fn append(&self, mut log: std::sync::MutexGuard<'_, LogState>, records: Vec<Record>) -> Result<u64, Reject> {
        let mut bytes = Vec::new();
        for record in &records {
            serde_json::to_writer(&mut bytes, record).map_err(|e| internal(&e.to_string()))?;
            bytes.push(b'\n');
        }
        if bytes.is_empty() {
            return Ok(log.records.len() as u64);
        }
        log.file.write_all(&bytes).map_err(|e| internal(&e.to_string()))?;
        log.records.extend(records.into_iter().map(Arc::new));
        let length = log.records.len() as u64;
        drop(log);
        // The cachers may start before the records are on stable storage: their commands are idempotent,
        // and a crash before the sync below only means the caller, never told the change was received,
        // sends it again. The caller's acknowledgement waits for the sync.
        self.length.send_replace(length);
        self.sync_handle.sync_data().map_err(|e| internal(&e.to_string()))?;
        Ok(length)
    }
}

fn internal(error: &str) -> Reject {
    Reject {
        reason: "log-write".into(),
        message: format!("the sync service could not record the changes: {error}"),
    }
}

/// A URL is accepted when it is http(s) and its host is one of the site's.
fn check_url(url: &str, site: &SiteConfig) -> Result<(), &'static str> {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Err("malformed-url");
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("scheme");
    }
    let Some(host) = uri.host() else {
        return Err("malformed-url");
    };
    if !site.hosts.iter().any(|allowed| {
        allowed.eq_ignore_ascii_case(host)
            || allowed.eq_ignore_ascii_case(uri.authority().map(|a| a.as_str()).unwrap_or(""))
    }) {
        return Err("host");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_wire::sync::Change;

    fn change(seq: u64, url: &str) -> Change {
        Change {
            seq,
            url: url.into(),
            kind: ChangeKind::Modified,
            etag: None,
            at_ms: 0,
        }
    }

    #[test]
    fn checks_dedupes_supersedes_and_survives_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sites = vec![SiteConfig {
            name: "www".into(),
            hosts: vec!["www.example.com".into()],
        }];
        let master = Master::open(dir.path(), sites.clone()).expect("open");
        let batch = ChangeBatch {
            site: "www".into(),
            agent: "a".into(),
            changes: vec![
                change(1, "http://www.example.com/x"),
                change(2, "http://evil.example.net/x"),
                change(3, "http://www.example.com/x"),
                change(4, "http://www.example.com/y"),
            ],
        };
        let accepted = master.accept(&batch).expect("accepted");
        assert_eq!(accepted.through, 4);
        assert_eq!(accepted.recorded, 2);
        assert_eq!(accepted.superseded, 1);
        assert_eq!(accepted.refused, vec![(2, "host")]);
        let again = master.accept(&batch).expect("accepted");
        assert_eq!((again.recorded, again.duplicates), (0, 4));
        drop(master);
        let reopened = Master::open(dir.path(), sites).expect("reopen");
        assert_eq!(reopened.len(), 2);
        assert_eq!(
            reopened.accept(&batch).expect("accepted").recorded,
            0,
            "high-water marks survive a restart"
        );
        let unknown = ChangeBatch {
            site: "nope".into(),
            agent: "a".into(),
            changes: vec![],
        };
        assert_eq!(
            reopened.accept(&unknown).err().map(|r| r.reason),
            Some("unknown-site".to_string())
        );
    }
}
