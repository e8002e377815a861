//! The master (seed 001, "checks the URL validity of the variation information and converts it into
//! commands for the cache units"): checks each change against its site's hosts, drops duplicates and
//! changes superseded within a batch, and appends the rest to a durable log that the cachers read.
//!
//! A batch is acknowledged to its agent only after its records are written and synced to the log, so a
//! crash of the sync service loses nothing an agent was told was received. At start-up the log is replayed
//! to rebuild the agents' high-water marks and the cachers' work.
//!
//! Sequence numbers count within an incarnation ([`Incarnation`]): an agent's within the incarnation of its
//! state, so the high-water mark is kept per (agent, incarnation) and an agent that lost its state and
//! counts from 1 again is heard rather than dropped as a replay; the log's positions within the log's own
//! incarnation, written on the log's first line when the log is created, which the cachers send to caches
//! beside each position so that a new log is not mistaken for an old one.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tern_wire::sync::{ChangeBatch, ChangeKind, Incarnation, Reject};
use tokio::sync::watch;
use tracing::{info, warn};

/// Longest agent name the master takes, in bytes (a host name fits several times over).
pub const MAX_AGENT_NAME: usize = 255;

/// Whether `name` may name an agent: 1 to [`MAX_AGENT_NAME`] bytes without control characters (it goes
/// into every record and log line).
pub fn agent_name_is_valid(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_AGENT_NAME && !name.chars().any(char::is_control)
}

/// The log's file name in the data directory.
pub const LOG_FILE: &str = "changes.log";

/// How far past the last number taken from an agent's stream a change's sequence number may be (2^32: an
/// agent counts one by one, so only a fault gets there; see [`Master::accept`]).
pub const MAX_SEQUENCE_JUMP: u64 = 1 << 32;

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
    /// The incarnation of the agent's state `agent_seq` counts in (unknown for operator purges and for
    /// records written before incarnations existed).
    #[serde(default)]
    pub incarnation: Incarnation,
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
    /// A position whose line in the log was found damaged at start-up: what changed there is unknown
    /// (every other field is empty). Never written; caches that had not applied it are purged of every
    /// site they serve, and an edge catching up over it resets.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
}

impl Record {
    /// The stand-in for position `log_seq`, whose line is damaged.
    fn lost(log_seq: u64) -> Record {
        Record {
            log_seq,
            site: String::new(),
            agent: String::new(),
            incarnation: Incarnation::default(),
            agent_seq: 0,
            url: String::new(),
            kind: ChangeKind::Purged,
            etag: None,
            at_ms: 0,
            recorded_ms: 0,
            lost: true,
        }
    }
}

/// The log's first line, written when the log is created.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogHeader {
    /// The log's incarnation.
    log: Incarnation,
    /// When the log was created (ms since the epoch).
    created_ms: u64,
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
    /// The batch is the first of a new incarnation of an agent heard under another one before: its
    /// numbering started over, and its mark with it.
    pub restarted: bool,
}

/// An agent's stream of sequence numbers: the agent and the incarnation of its state.
type Stream = (String, Incarnation);

struct LogState {
    records: Vec<Arc<Record>>,
    /// Highest sequence number recorded per stream.
    high_water: HashMap<Stream, u64>,
    /// Each agent's latest incarnation, to notice (and say) when its stream starts over.
    latest: HashMap<String, Incarnation>,
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
    log_id: Incarnation,
}

/// What replaying the log's bytes found.
struct Replayed {
    log_id: Option<Incarnation>,
    records: Vec<Arc<Record>>,
    high_water: HashMap<Stream, u64>,
    latest: HashMap<String, Incarnation>,
}

fn replay(bytes: &[u8], path: &Path) -> Replayed {
    let mut replayed = Replayed {
        log_id: None,
        records: Vec::new(),
        high_water: HashMap::new(),
        latest: HashMap::new(),
    };
    // A damaged line still held a position: it stands as a lost record, so that positions after it keep
    // their meaning and are never given to new records (an edge holding one would skip them).
    let mut damaged: Vec<usize> = Vec::new();
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        if index == 0
            && let Ok(header) = serde_json::from_slice::<LogHeader>(line)
        {
            replayed.log_id = Some(header.log);
            continue;
        }
        let next = replayed.records.len() as u64 + 1;
        let record = match serde_json::from_slice::<Record>(line) {
            Ok(record) if record.log_seq > 0 && !record.lost => record,
            _ => {
                damaged.push(index + 1);
                replayed.records.push(Arc::new(Record::lost(next)));
                continue;
            }
        };
        if record.log_seq < next {
            // Its position is taken: by a lost stand-in (one damaged line too many was counted), which it
            // replaces, or by a record (a duplicate line), which stays.
            let slot = &mut replayed.records[(record.log_seq - 1) as usize];
            if !slot.lost {
                damaged.push(index + 1);
                continue;
            }
            *slot = Arc::new(record.clone());
        } else {
            // Positions skipped before it were lost with lines that are gone.
            for missing in next..record.log_seq {
                replayed.records.push(Arc::new(Record::lost(missing)));
            }
            replayed.records.push(Arc::new(record.clone()));
        }
        let stream = (record.agent.clone(), record.incarnation.clone());
        let mark = replayed.high_water.entry(stream).or_insert(0);
        *mark = (*mark).max(record.agent_seq);
        replayed.latest.insert(record.agent, record.incarnation);
    }
    let lost: Vec<u64> = replayed.records.iter().filter(|r| r.lost).map(|r| r.log_seq).collect();
    if !damaged.is_empty() || !lost.is_empty() {
        warn!(
            path = %path.display(),
            damaged_lines = damaged.len(),
            first_damaged_lines = ?&damaged[..damaged.len().min(10)],
            lost_positions = lost.len(),
            first_lost_positions = ?&lost[..lost.len().min(10)],
            "the change log has damaged lines: what changed at their positions is unknown. Caches that had not \
             applied them are purged of every site they serve, and edges catching up over them drop their \
             cache; the positions after them keep their meaning"
        );
    }
    if replayed.log_id.is_none()
        && let Some(first) = bytes.split(|&b| b == b'\n').next()
    {
        // A log from before incarnations: its id is derived from its first line, so it stays the same
        // across restarts, and a log created since (with a header) never has it.
        let digest = blake3::hash(first).to_hex();
        replayed.log_id = Incarnation::parse(&format!("legacy-{}", &digest[..16])).ok();
    }
    replayed
}

impl Master {
    /// Opens (or creates) the log in `data_dir` and replays it.
    pub fn open(data_dir: &Path, sites: Vec<SiteConfig>) -> std::io::Result<Master> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(LOG_FILE);
        let mut bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        // A torn last line from a crash mid-write was never acknowledged: cut it off, or the next record
        // would be appended to it and lost with it at the next replay.
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |end| end + 1);
        if complete < bytes.len() {
            warn!(path = %path.display(), bytes = bytes.len() - complete, "cutting off a torn last log line");
            OpenOptions::new().write(true).open(&path)?.set_len(complete as u64)?;
            bytes.truncate(complete);
        }
        let replayed = if bytes.is_empty() {
            let log_id = create_log(&path)?;
            info!(log = %log_id, path = %path.display(), "new change log: its positions start at 1");
            Replayed {
                log_id: Some(log_id),
                records: Vec::new(),
                high_water: HashMap::new(),
                latest: HashMap::new(),
            }
        } else {
            replay(&bytes, &path)
        };
        let log_id = replayed.log_id.unwrap_or_default();
        let file = OpenOptions::new().append(true).open(&path)?;
        let sync_handle = file.try_clone()?;
        let length = replayed.records.len() as u64;
        info!(records = length, log = %log_id, path = %path.display(), "change log opened");
        let (sender, _) = watch::channel(length);
        Ok(Master {
            sites,
            sync_handle,
            log: Mutex::new(LogState {
                records: replayed.records,
                high_water: replayed.high_water,
                latest: replayed.latest,
                file,
            }),
            length: sender,
            path,
            log_id,
        })
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log's incarnation: positions count within it.
    pub fn log_id(&self) -> &Incarnation {
        &self.log_id
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
        // The name goes into every record and log line: a key holder could otherwise make each of them
        // half a megabyte, or break the log's lines.
        if !agent_name_is_valid(&batch.agent) {
            return Err(Reject {
                reason: "agent-name".into(),
                message: format!(
                    "an agent name of {} bytes: give the agent a --name of 1 to {MAX_AGENT_NAME} bytes without control characters",
                    batch.agent.len()
                ),
            });
        }
        let Some(site) = self.sites.iter().find(|s| s.name == batch.site) else {
            return Err(Reject {
                reason: "unknown-site".into(),
                message: format!(
                    "site `{}` is not configured on the sync service (--site NAME=HOST)",
                    tern_wire::cut_at(&batch.site, 80)
                ),
            });
        };
        let stream: Stream = (batch.agent.clone(), batch.incarnation.clone());
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let known_mark = log.high_water.get(&stream).copied();
        let previous = log.latest.get(&batch.agent);
        let restarted = known_mark.is_none() && previous.is_some_and(|p| *p != batch.incarnation);
        if restarted {
            info!(
                agent = %batch.agent,
                previous = %previous.map(Incarnation::as_str).unwrap_or_default(),
                incarnation = %batch.incarnation,
                "agent's change stream started over (new state incarnation): its sequence numbers count from its first batch again"
            );
        } else if known_mark.is_some() && previous.is_some_and(|p| *p != batch.incarnation) {
            warn!(
                agent = %batch.agent,
                incarnation = %batch.incarnation,
                "changes from an earlier incarnation of the agent: do two agents share one name?"
            );
        }
        let mark = known_mark.unwrap_or(0);
        // An agent numbers its changes one by one within an incarnation, so a number far past the mark
        // is a fault (a damaged state, a buggy client holding the key). Taken, it would raise the mark so
        // far that every later change of the stream were dropped as a replay, silently.
        if let Some(change) = batch
            .changes
            .iter()
            .find(|change| change.seq > mark.saturating_add(MAX_SEQUENCE_JUMP))
        {
            warn!(agent = %batch.agent, incarnation = %batch.incarnation, mark, seq = change.seq,
                  "change batch refused: its sequence number jumps too far past the last one taken");
            return Err(Reject {
                reason: "sequence".into(),
                message: format!(
                    "sequence number {} is more than {MAX_SEQUENCE_JUMP} past the last one taken from this agent ({mark}); nothing of the batch was taken. An agent counts its changes one by one: move its state directory aside to start a new stream (it reports every file once)",
                    change.seq
                ),
            });
        }
        let mut accepted = Accepted {
            through: mark,
            restarted,
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
                incarnation: batch.incarnation.clone(),
                agent_seq: change.seq,
                url: change.url.clone(),
                kind: change.kind,
                etag: change.etag.clone(),
                at_ms: change.at_ms,
                recorded_ms: now_ms,
                lost: false,
            };
            appended.push(record);
        }
        accepted.recorded = appended.len();
        self.append(log, appended)?;
        // Only now, with the records on stable storage: a mark raised before a failed write would make the
        // agent's resend look like a duplicate, acknowledged and dropped.
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let raised = log.high_water.entry(stream).or_insert(0);
        *raised = (*raised).max(accepted.through);
        log.latest.insert(batch.agent.clone(), batch.incarnation.clone());
        Ok(accepted)
    }

    /// Records an operator's purge of `urls` (each must belong to a configured site). Returns the log
    /// position of the last record.
    pub fn purge(&self, urls: &[String]) -> Result<u64, Reject> {
        self.purge_and_prefetch(urls, &[])
    }

    /// Records a purge of `urls`, and of `prefetch`, which every cache then fetches again (the content
    /// mover's changed files, after a commit). Each URL must belong to a configured site; nothing is
    /// recorded otherwise. Returns the log position of the last record.
    pub fn purge_and_prefetch(&self, urls: &[String], prefetch: &[String]) -> Result<u64, Reject> {
        self.record_purges(urls, &[], prefetch)
    }

    /// Records an operator's purge of `urls` (the exact URLs: [`ChangeKind::Purged`]), a purge of the
    /// URLs of files that changed or are gone (`files`, recorded as [`ChangeKind::Deleted`]: purged with
    /// any query, not fetched again) and of `prefetch` (changed files: [`ChangeKind::Modified`], purged
    /// with any query and fetched again). Each URL must belong to a configured site; nothing is recorded
    /// otherwise. Returns the log position of the last record.
    pub fn record_purges(&self, urls: &[String], files: &[String], prefetch: &[String]) -> Result<u64, Reject> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let mut appended = Vec::new();
        let purged = urls.iter().map(|url| (url, ChangeKind::Purged));
        let gone = files.iter().map(|url| (url, ChangeKind::Deleted));
        let refetched = prefetch.iter().map(|url| (url, ChangeKind::Modified));
        for (url, kind) in purged.chain(gone).chain(refetched) {
            let uri = cache_url(url).map_err(|(reason, explanation)| {
                let shown: String = url.chars().take(200).collect();
                Reject {
                    reason: reason.into(),
                    message: format!("`{shown}` {explanation}: no cache can be sent a command for it"),
                }
            })?;
            let Some(site) = self.sites.iter().find(|site| site_has(&uri, site)) else {
                return Err(Reject {
                    reason: "host".into(),
                    message: format!(
                        "`{url}` belongs to no configured site (give the sync service --site NAME=HOST with its host)"
                    ),
                });
            };
            appended.push(Record {
                log_seq: log.records.len() as u64 + appended.len() as u64 + 1,
                site: site.name.clone(),
                agent: "api".into(),
                incarnation: Incarnation::default(),
                agent_seq: 0,
                url: url.clone(),
                kind,
                etag: None,
                at_ms: now_ms,
                recorded_ms: now_ms,
                lost: false,
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

/// Creates an empty log at `path` under a new incarnation, written on its first line and synced before
/// anything is appended.
fn create_log(path: &Path) -> std::io::Result<Incarnation> {
    let log_id = Incarnation::generate().map_err(std::io::Error::other)?;
    let header = LogHeader {
        log: log_id.clone(),
        created_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    let mut line = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    file.write_all(&line)?;
    file.sync_all()?;
    Ok(log_id)
}

fn internal(error: &str) -> Reject {
    Reject {
        reason: "log-write".into(),
        message: format!("the sync service could not record the changes: {error}"),
    }
}

/// The longest URL a change may carry: an edge refuses longer request targets by default (`414`, its
/// `max_uri_bytes`), and a command every cache refuses would be retried in vain.
pub const MAX_URL_BYTES: usize = 8192;

/// `url` parsed, when a cache can be sent a command for it whatever its site; else why not: `(reason,
/// explanation)`.
fn cache_url(url: &str) -> Result<http::Uri, (&'static str, &'static str)> {
    if url.len() > MAX_URL_BYTES {
        return Err((
            "too-long",
            "is longer than 8192 bytes, which caches refuse as a request target",
        ));
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Err(("malformed-url", "is not a URL"));
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(("scheme", "is not an http:// or https:// URL"));
    }
    match uri.authority() {
        None => Err(("malformed-url", "has no host")),
        // `Host` cannot carry user information (RFC 9110 section 4.2.4), so a command would be refused.
        Some(authority) if authority.as_str().contains('@') => Err(("userinfo", "carries user:password@")),
        Some(authority) if !tern_http::target::port_is_valid(authority.as_str()) => {
            Err(("malformed-url", "has a port that is not a number from 0 to 65535"))
        }
        Some(_) if !tern_http::target::escapes_are_valid(uri.path_and_query().map_or("", |p| p.as_str())) => Err((
            "malformed-url",
            "has a % not followed by two hexadecimal digits (RFC 3986 section 2.1); write a literal % as %25",
        )),
        Some(_) => Ok(uri),
    }
}

/// Whether `uri`'s host (or host and port) is one of the site's: case aside, and the trailing dot of a
/// fully qualified name aside (`www.example.com.` is `www.example.com`, as the edges key it).
fn site_has(uri: &http::Uri, site: &SiteConfig) -> bool {
    use tern_http::target::without_trailing_dot;
    let host = without_trailing_dot(uri.host().unwrap_or(""));
    let authority = without_trailing_dot(uri.authority().map_or("", |a| a.as_str()));
    site.hosts.iter().any(|allowed| {
        let allowed = without_trailing_dot(allowed);
        allowed.eq_ignore_ascii_case(&host) || allowed.eq_ignore_ascii_case(&authority)
    })
}

/// A URL is accepted when it is one a cache can be sent ([`cache_url`]) and its host is one of the
/// site's.
fn check_url(url: &str, site: &SiteConfig) -> Result<(), &'static str> {
    let uri = cache_url(url).map_err(|(reason, _)| reason)?;
    if !site_has(&uri, site) {
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

    fn sites() -> Vec<SiteConfig> {
        vec![SiteConfig {
            name: "www".into(),
            hosts: vec!["www.example.com".into()],
        }]
    }

    fn batch(incarnation: &Incarnation, changes: Vec<Change>) -> ChangeBatch {
        ChangeBatch {
            site: "www".into(),
            agent: "a".into(),
            incarnation: incarnation.clone(),
            changes,
        }
    }

    /// `count` changes of distinct URLs, numbered from 1.
    fn numbered(count: u64) -> Vec<Change> {
        (1..=count)
            .map(|seq| change(seq, &format!("http://www.example.com/{seq}")))
            .collect()
    }

    fn urls(master: &Master) -> Vec<String> {
        master.records_from(1).iter().map(|r| r.url.clone()).collect()
    }

    #[test]
    fn a_host_matches_its_site_whatever_its_case_and_trailing_dot() {
        let site = SiteConfig {
            name: "www".into(),
            hosts: vec!["www.example.com".into(), "static.example.com.:8080".into()],
        };
        let has = |url: &str| site_has(&url.parse::<http::Uri>().expect("url"), &site);
        for url in [
            "http://www.example.com/x",
            "http://www.example.com./x",
            "https://WWW.Example.COM./x",
            "http://static.example.com:8080/x",
            "http://static.example.com.:8080/x",
        ] {
            assert!(has(url), "{url}");
        }
        for url in [
            "http://www.example.com.evil/x",
            "http://example.com/x",
            "http://static.example.com/x",
        ] {
            assert!(!has(url), "{url}");
        }
    }

    #[test]
    fn checks_dedupes_supersedes_and_survives_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let master = Master::open(dir.path(), sites()).expect("open");
        let batch = batch(
            &Incarnation::generate().expect("random"),
            vec![
                change(1, "http://www.example.com/x"),
                change(2, "http://evil.example.net/x"),
                change(3, "http://www.example.com/x"),
                change(4, "http://www.example.com/y"),
            ],
        );
        let accepted = master.accept(&batch).expect("accepted");
        assert_eq!(accepted.through, 4);
        assert_eq!(accepted.recorded, 2);
        assert_eq!(accepted.superseded, 1);
        assert_eq!(accepted.refused, vec![(2, "host")]);
        let again = master.accept(&batch).expect("accepted");
        assert_eq!((again.recorded, again.duplicates), (0, 4));
        drop(master);
        let reopened = Master::open(dir.path(), sites()).expect("reopen");
        assert_eq!(reopened.len(), 2);
        assert_eq!(
            reopened.accept(&batch).expect("accepted").recorded,
            0,
            "high-water marks survive a restart"
        );
        let unknown = ChangeBatch {
            site: "nope".into(),
            ..batch.clone()
        };
        assert_eq!(
            reopened.accept(&unknown).err().map(|r| r.reason),
            Some("unknown-site".to_string())
        );
    }

    #[test]
    fn an_agent_that_starts_over_under_a_new_incarnation_is_recorded_not_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let master = Master::open(dir.path(), sites()).expect("open");
        let first = Incarnation::generate().expect("random");
        assert_eq!(
            master.accept(&batch(&first, numbered(10))).expect("accepted").recorded,
            10
        );
        // The agent lost its state: a new incarnation counts from 1 again, far below the old mark of 10.
        let second = Incarnation::generate().expect("random");
        let restarted = master
            .accept(&batch(&second, vec![change(1, "http://www.example.com/new")]))
            .expect("accepted");
        assert!(restarted.restarted, "the restart is noticed");
        assert_eq!((restarted.recorded, restarted.duplicates, restarted.through), (1, 0, 1));
        assert_eq!(master.len(), 11);
        assert_eq!(master.records_from(11)[0].url, "http://www.example.com/new");
        // Within the new incarnation, a resend is a duplicate again, and so is the old one's.
        let resent = master
            .accept(&batch(&second, vec![change(1, "http://www.example.com/new")]))
            .expect("accepted");
        assert_eq!((resent.recorded, resent.duplicates, resent.restarted), (0, 1, false));
        assert_eq!(
            master.accept(&batch(&first, numbered(10))).expect("accepted").recorded,
            0
        );
        drop(master);

        // Replay rebuilds the marks per incarnation.
        let reopened = Master::open(dir.path(), sites()).expect("reopen");
        assert_eq!(reopened.len(), 11);
        assert_eq!(
            reopened
                .accept(&batch(&second, vec![change(1, "http://www.example.com/new")]))
                .expect("accepted")
                .duplicates,
            1
        );
        let next = reopened
            .accept(&batch(&second, vec![change(2, "http://www.example.com/next")]))
            .expect("accepted");
        assert_eq!((next.recorded, next.through), (1, 2));
        let third = Incarnation::generate().expect("random");
        let again = reopened
            .accept(&batch(&third, vec![change(1, "http://www.example.com/third")]))
            .expect("accepted");
        assert_eq!((again.recorded, again.restarted), (1, true));
        assert_eq!(reopened.records_from(12).len(), 2);
        assert_eq!(
            reopened.records_from(13)[0].incarnation,
            third,
            "the record names its incarnation"
        );
    }

    #[test]
    fn the_log_keeps_its_incarnation_and_a_new_log_gets_a_new_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = Incarnation::generate().expect("random");
        let master = Master::open(dir.path(), sites()).expect("open");
        let log_id = master.log_id().clone();
        assert!(!log_id.is_unknown());
        master.accept(&batch(&agent, numbered(3))).expect("accepted");
        drop(master);
        let reopened = Master::open(dir.path(), sites()).expect("reopen");
        assert_eq!(reopened.log_id(), &log_id, "the same log keeps its id");
        assert_eq!(reopened.len(), 3);
        drop(reopened);
        std::fs::remove_file(dir.path().join(LOG_FILE)).expect("rm");
        let fresh = Master::open(dir.path(), sites()).expect("open fresh");
        assert_ne!(fresh.log_id(), &log_id, "a new log is told apart from the old one");
        assert_eq!(fresh.len(), 0);
        // The agent's numbers go on (its state survived): they are recorded from position 1.
        fresh
            .accept(&batch(&agent, vec![change(4, "http://www.example.com/4")]))
            .expect("accepted");
        assert_eq!(fresh.records_from(1)[0].log_seq, 1);
    }

    #[test]
    fn a_log_from_before_incarnations_is_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let legacy = [
            r#"{"log_seq":1,"site":"www","agent":"a","agent_seq":1,"url":"http://www.example.com/1","kind":"modified","etag":null,"at_ms":0,"recorded_ms":0}"#,
            r#"{"log_seq":2,"site":"www","agent":"a","agent_seq":2,"url":"http://www.example.com/2","kind":"modified","etag":null,"at_ms":0,"recorded_ms":0}"#,
        ];
        std::fs::write(dir.path().join(LOG_FILE), format!("{}\n{}\n", legacy[0], legacy[1])).expect("write");
        let master = Master::open(dir.path(), sites()).expect("open");
        assert_eq!(master.len(), 2);
        let log_id = master.log_id().clone();
        assert!(log_id.as_str().starts_with("legacy-"));
        // An agent from before incarnations (unknown incarnation) keeps its mark.
        let old_agent = master
            .accept(&batch(&Incarnation::default(), numbered(3)))
            .expect("accepted");
        assert_eq!((old_agent.duplicates, old_agent.recorded), (2, 1));
        drop(master);
        let reopened = Master::open(dir.path(), sites()).expect("reopen");
        assert_eq!(reopened.log_id(), &log_id, "a legacy log's id is stable");
        assert_eq!(reopened.len(), 3);
    }

    #[test]
    fn a_purge_with_prefetch_records_both_kinds_or_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let master = Master::open(dir.path(), sites()).expect("open");
        let through = master
            .purge_and_prefetch(
                &["http://www.example.com/docs".into()],
                &["http://www.example.com/docs/".into()],
            )
            .expect("recorded");
        assert_eq!(through, 2);
        let kinds: Vec<(String, ChangeKind)> = master.records_from(1).iter().map(|r| (r.url.clone(), r.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("http://www.example.com/docs".to_string(), ChangeKind::Purged),
                ("http://www.example.com/docs/".to_string(), ChangeKind::Modified),
            ]
        );
        let refused = master.purge_and_prefetch(&[], &["http://elsewhere.example/x".into()]);
        assert_eq!(refused.err().map(|r| r.reason), Some("host".to_string()));
        // URLs no cache can be sent a command for (it would refuse it, and hold back the changes after it).
        let long = format!("http://www.example.com/{}", "a".repeat(MAX_URL_BYTES));
        for (url, reason) in [
            ("http://user:pw@www.example.com/x".to_string(), "userinfo"),
            (long, "too-long"),
            ("ftp://www.example.com/x".to_string(), "scheme"),
            ("http://www.example.com:99999/x".to_string(), "malformed-url"),
            ("http://[::1]:70000/x".to_string(), "malformed-url"),
            ("http://www.example.com/%zz".to_string(), "malformed-url"),
            ("http://www.example.com/a?b=%2".to_string(), "malformed-url"),
            ("http://www.example.com/100%".to_string(), "malformed-url"),
        ] {
            let refused = master.purge_and_prefetch(&[], std::slice::from_ref(&url));
            assert_eq!(refused.err().map(|r| r.reason), Some(reason.to_string()), "{url}");
        }
        assert_eq!(master.len(), 2, "a refused purge records nothing");
        master
            .purge_and_prefetch(&[], &["http://www.example.com:8080/100%25%e2%82%ac".into()])
            .expect("well-formed escapes (either case) and a port are taken");
    }

    #[test]
    fn a_torn_last_line_is_cut_off_so_the_next_record_survives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = Incarnation::generate().expect("random");
        let master = Master::open(dir.path(), sites()).expect("open");
        master.accept(&batch(&agent, numbered(1))).expect("accepted");
        drop(master);
        let path = dir.path().join(LOG_FILE);
        let mut torn = std::fs::read(&path).expect("read");
        torn.extend_from_slice(br#"{"log_seq":2,"site":"w"#);
        std::fs::write(&path, torn).expect("write");
        let reopened = Master::open(dir.path(), sites()).expect("reopen");
        assert_eq!(reopened.len(), 1);
        reopened
            .accept(&batch(&agent, vec![change(2, "http://www.example.com/2")]))
            .expect("accepted");
        drop(reopened);
        let again = Master::open(dir.path(), sites()).expect("reopen");
        assert_eq!(
            urls(&again),
            vec!["http://www.example.com/1", "http://www.example.com/2"],
            "the record written after the torn line is replayed"
        );
    }

    #[test]
    fn a_damaged_line_in_the_middle_loses_its_position_only_and_positions_are_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = Incarnation::generate().expect("random");
        let master = Master::open(dir.path(), sites()).expect("open");
        master.accept(&batch(&agent, numbered(6))).expect("accepted");
        drop(master);
        let path = dir.path().join(LOG_FILE);
        let text = std::fs::read_to_string(&path).expect("read");
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        // Line 0 is the header; records 2 and 4 are damaged (one overwritten, one gone).
        lines[2] = "{\"log_seq\":2,\"site\":\"www\",\"ag\u{0}".into();
        lines.remove(4);
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        let reopened = Master::open(dir.path(), sites()).expect("reopen");
        let records = reopened.records_from(1);
        assert_eq!(records.len(), 6, "every position kept");
        let lost: Vec<u64> = records.iter().filter(|r| r.lost).map(|r| r.log_seq).collect();
        assert_eq!(lost, vec![2, 4]);
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record.log_seq, index as u64 + 1);
            if !record.lost {
                assert_eq!(record.url, format!("http://www.example.com/{}", index + 1));
            }
        }
        let accepted = reopened
            .accept(&batch(&agent, vec![change(7, "http://www.example.com/7")]))
            .expect("accepted");
        assert_eq!(accepted.recorded, 1);
        assert_eq!(
            reopened.records_from(7)[0].log_seq,
            7,
            "a new record takes the next position, never a lost one's"
        );
        drop(reopened);
        let again = Master::open(dir.path(), sites()).expect("reopen");
        assert_eq!(again.len(), 7, "the same positions on the next start");
        assert_eq!(
            again.records_from(1).iter().filter(|r| r.lost).count(),
            2,
            "the stand-ins are never written"
        );
    }

    #[test]
    fn a_sequence_number_far_past_the_mark_is_refused_and_the_stream_goes_on() {
        // A trial's finding: one change numbered 2^64 - 1 was taken, and every later change of the agent
        // was dropped as a replay without a word.
        let dir = tempfile::tempdir().expect("tempdir");
        let master = Master::open(dir.path(), sites()).expect("open");
        let agent = Incarnation::generate().expect("random");
        master.accept(&batch(&agent, numbered(3))).expect("accepted");
        let mut absurd = batch(&agent, vec![change(u64::MAX, "http://www.example.com/x")]);
        let reject = master.accept(&absurd).expect_err("refused");
        assert_eq!(reject.reason, "sequence");
        assert!(
            reject.message.contains("nothing of the batch was taken"),
            "{}",
            reject.message
        );
        absurd.changes = vec![change(3 + MAX_SEQUENCE_JUMP + 1, "http://www.example.com/x")];
        assert!(master.accept(&absurd).is_err(), "one past the limit");
        let next = master
            .accept(&batch(&agent, vec![change(4, "http://www.example.com/4")]))
            .expect("accepted");
        assert_eq!((next.recorded, next.through), (1, 4), "the stream goes on");
        let far = master
            .accept(&batch(
                &agent,
                vec![change(4 + MAX_SEQUENCE_JUMP, "http://www.example.com/far")],
            ))
            .expect("at the limit");
        assert_eq!(far.recorded, 1);
    }

    #[test]
    fn an_absurd_agent_name_is_refused_and_never_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = Incarnation::generate().expect("random");
        let master = Master::open(dir.path(), sites()).expect("open");
        for name in ["x".repeat(500 * 1024), "a\nb".to_string(), String::new()] {
            let mut refused = batch(&agent, numbered(1));
            refused.agent = name;
            let reject = master.accept(&refused).expect_err("refused");
            assert_eq!(reject.reason, "agent-name");
            assert!(reject.message.len() < 200, "{}", reject.message);
        }
        assert_eq!(master.len(), 0);
    }
}
