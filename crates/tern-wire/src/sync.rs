//! Messages between the CP agent and the synchronisation service's listener (seed 001): the agent sends
//! batches of content changes, the listener acknowledges them through a sequence number or rejects them
//! with a reason. Payloads are JSON inside authenticated frames ([`crate::frame`]). Beside them, the JSON
//! bodies of the service's admin API: `POST /purge` ([`PurgeRequest`] → [`PurgeRecorded`], used by operators
//! and by the content mover after a commit), `GET /applied` ([`Applied`]) and `GET /changes` ([`CatchUp`]).
//!
//! Every sequence number that outlives a process is read together with the [`Incarnation`] of its stream:
//! the agent's numbers with the agent state's incarnation, the change log's positions (sent to caches in
//! [`SEQ_HEADER`] and asked for again at `GET /changes`) with the log's incarnation ([`LOG_HEADER`]). A
//! stream whose state was lost starts over at 1 under a new incarnation, and that resets the reader's mark
//! instead of looking like a replay of numbers it has seen.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::frame::{self, Frame};
use crate::key::SecretKey;

/// Frame kind of a change batch.
pub const KIND_CHANGES: u8 = 1;
/// Frame kind of an acknowledgement.
pub const KIND_ACK: u8 = 2;
/// Frame kind of a rejection.
pub const KIND_REJECT: u8 = 3;

/// Header of the cacher's commands carrying the change-log position of the change (`Tern-Sync-Seq`).
pub const SEQ_HEADER: &str = "tern-sync-seq";
/// Header of the cacher's commands carrying the change log's incarnation (`Tern-Sync-Log`).
pub const LOG_HEADER: &str = "tern-sync-log";
/// Header of a `PURGE` naming what it covers beyond the exact URL (`Tern-Purge-Scope`); without it a purge
/// covers the exact URL (every `Vary` variant). Caches that do not know it purge the exact URL.
pub const PURGE_SCOPE_HEADER: &str = "tern-purge-scope";
/// [`PURGE_SCOPE_HEADER`]'s value for the URL's path with any query (`/a`, `/a?utm=1`, never `/ab`): how a
/// changed file is purged, since links to it carry queries (`?utm_source=`, `?v=`) that are cache objects
/// of their own.
pub const PURGE_ANY_QUERY: &str = "any-query";
/// [`PURGE_SCOPE_HEADER`]'s value for every URL that starts with the purge's URL (a host's `/`: all of it):
/// how the sync service purges a cache of a site when a position of its change log was lost.
pub const PURGE_PREFIX: &str = "prefix";
/// Longest incarnation accepted from outside.
pub const MAX_INCARNATION_LEN: usize = 64;

/// The incarnation of a numbered stream: an id made when the stream's state is created (an agent's state
/// file, the sync service's change log). Sequence numbers compare only within one incarnation. The empty
/// incarnation is what a peer from before incarnations existed sends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Incarnation(String);

/// Why an incarnation could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum IncarnationError {
    /// The system random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
    /// Too long, or a character other than ASCII letters, digits, `-` and `_`.
    #[error("malformed incarnation (at most {MAX_INCARNATION_LEN} ASCII letters, digits, `-` or `_`)")]
    Malformed,
}

impl Incarnation {
    /// A new random incarnation (16 random bytes, hex).
    pub fn generate() -> Result<Self, IncarnationError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| IncarnationError::Random(e.to_string()))?;
        Ok(Incarnation(hex::encode(bytes)))
    }

    /// Reads an incarnation from outside (a header, a file, a query), checking it is short and URL-safe.
    pub fn parse(text: &str) -> Result<Self, IncarnationError> {
        let well_formed = text.len() <= MAX_INCARNATION_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !well_formed {
            return Err(IncarnationError::Malformed);
        }
        Ok(Incarnation(text.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the empty incarnation of a peer from before incarnations.
    pub fn is_unknown(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Incarnation {
    type Error = IncarnationError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Incarnation::parse(&text)
    }
}

impl From<Incarnation> for String {
    fn from(incarnation: Incarnation) -> String {
        incarnation.0
    }
}

/// What happened to a piece of content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// New content.
    Created,
    /// Changed content.
    Modified,
    /// Removed content.
    Deleted,
    /// Purged by an operator through the sync service's API (caches drop it; agents never send this).
    Purged,
}

/// One change, as the CP agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The agent's sequence number: strictly increasing within the agent's incarnation, never reused in it.
    pub seq: u64,
    /// Absolute URL of the content.
    pub url: String,
    /// What happened.
    pub kind: ChangeKind,
    /// Content hash (blake3, hex) of the new content; none for deletions.
    pub etag: Option<String>,
    /// When the agent saw it, milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A batch of changes from one agent for one site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// The site the changes belong to.
    pub site: String,
    /// The agent's name (stable across restarts).
    pub agent: String,
    /// The incarnation of the agent's state: its sequence numbers count within it.
    #[serde(default)]
    pub incarnation: Incarnation,
    /// The changes, in sequence order.
    pub changes: Vec<Change>,
}

/// The listener has durably recorded (or refused, with a logged reason) every change of `agent`'s
/// `incarnation` up to `through`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The agent.
    pub agent: String,
    /// The incarnation of the batch acknowledged; an agent ignores acknowledgements of another one.
    #[serde(default)]
    pub incarnation: Incarnation,
    /// Highest sequence number recorded.
    pub through: u64,
    /// Changes of the batch the master refused (acknowledged, never recorded), by reason (`host`: the URL
    /// names a host the sync service does not serve for the site, ...): the agent says so.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub refused: std::collections::BTreeMap<String, u64>,
}

/// The listener refused a frame or batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// A short token (`bad-tag`, `unknown-site`, ...).
    pub reason: String,
    /// What to do about it.
    pub message: String,
}

/// The sync service's answer to `GET /changes?since=N&log=ID`, for an edge catching up at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUp {
    /// The change log's incarnation: the positions below and `through` count within it.
    #[serde(default)]
    pub log: Incarnation,
    /// The log's length: the position the edge is caught up through once it applied the answer.
    pub through: u64,
    /// The edge must drop its whole cache: it is too far behind, or its position belongs to another log.
    pub reset: bool,
    /// The changes after the edge's position (empty on a reset).
    pub changes: Vec<LoggedChange>,
}

/// One change of the log, as `GET /changes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedChange {
    /// Position in the log (from 1).
    pub log_seq: u64,
    /// Site.
    pub site: String,
    /// Absolute URL of the content.
    pub url: String,
    /// What happened.
    pub kind: ChangeKind,
}

/// The body of `POST /purge` on the sync service's admin listener (authorised by the agents' key token,
/// `Authorization: Bearer`): URLs every cache drops, and URLs every cache drops and fetches again at once
/// (the content mover's changed files). Each URL must belong to a configured site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// URLs purged (exactly: a query is part of the URL).
    #[serde(default)]
    pub urls: Vec<String>,
    /// URLs purged and then fetched again (the cacher's prefetch `GET`); as content changed, each with
    /// any query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefetch: Vec<String>,
    /// URLs of content that changed or is gone (the content mover's removed files, and other spellings of
    /// changed ones): purged with any query, not fetched again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// The sync service's answer to a [`PurgeRequest`]: the purges are in its change log, through position
/// `through` of log `log`; [`Applied`] tells when every cache has applied them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeRecorded {
    /// URLs recorded.
    pub recorded: usize,
    /// The log's length once they were recorded.
    pub through: u64,
    /// The change log's incarnation `through` counts in.
    #[serde(default)]
    pub log: Incarnation,
}

/// The sync service's answer to `GET /applied?through=N`: how far each cache has applied the change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The change log's incarnation the positions count in.
    pub log: Incarnation,
    /// The position asked about.
    pub through: u64,
    /// Every cache the service drives.
    pub caches: Vec<CacheApplied>,
}

impl Applied {
    /// Whether every cache has applied the log through the position asked about.
    pub fn all_applied(&self) -> bool {
        self.caches.iter().all(|cache| cache.applied_through >= self.through)
    }
}

/// One cache in an [`Applied`] answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheApplied {
    /// The cache's base URL.
    pub url: String,
    /// The log position it has applied through: every change up to it is acknowledged by the cache (or
    /// older than the service's retry limit, so the cache's copy has expired anyway).
    pub applied_through: u64,
    /// Why its last command failed, while it is failing.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A message of the agent protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMessage {
    /// Agent to listener.
    Changes(ChangeBatch),
    /// Listener to agent.
    Ack(Ack),
    /// Listener to agent.
    Reject(Reject),
}

/// Why a frame's payload was not a message.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Unknown frame kind.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The payload does not parse.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl SyncMessage {
    /// Encodes the message into an authenticated frame.
    pub fn encode(&self, key: &SecretKey) -> Vec<u8> {
        let (kind, payload) = match self {
            SyncMessage::Changes(batch) => (KIND_CHANGES, serde_json::to_vec(batch)),
            SyncMessage::Ack(ack) => (KIND_ACK, serde_json::to_vec(ack)),
            SyncMessage::Reject(reject) => (KIND_REJECT, serde_json::to_vec(reject)),
        };
        frame::encode(key, kind, &payload.unwrap_or_default())
    }

    /// Decodes a frame's payload.
    pub fn decode(frame: &Frame) -> Result<Self, MessageError> {
        let malformed = |e: serde_json::Error| MessageError::Malformed(e.to_string());
        match frame.kind {
            KIND_CHANGES => serde_json::from_slice(&frame.payload)
                .map(SyncMessage::Changes)
                .map_err(malformed),
            KIND_ACK => serde_json::from_slice(&frame.payload)
                .map(SyncMessage::Ack)
                .map_err(malformed),
            KIND_REJECT => serde_json::from_slice(&frame.payload)
                .map(SyncMessage::Reject)
                .map_err(malformed),
            other => Err(MessageError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;

    #[test]
    fn batch_round_trip() {
        let key = SecretKey::parse(&"01".repeat(32)).expect("key");
        let batch = SyncMessage::Changes(ChangeBatch {
            site: "www".into(),
            agent: "origin-1".into(),
            incarnation: Incarnation::generate().expect("random"),
            changes: vec![Change {
                seq: 7,
                url: "http://www.example.com/a.html".into(),
                kind: ChangeKind::Modified,
                etag: Some("abc".into()),
                at_ms: 1,
            }],
        });
        let mut decoder = FrameDecoder::new(key.clone(), 1 << 20);
        decoder.push(&batch.encode(&key));
        let frame = decoder.next_frame().expect("valid").expect("complete");
        assert_eq!(SyncMessage::decode(&frame).expect("decodes"), batch);
        let garbage = Frame {
            kind: KIND_CHANGES,
            payload: b"{not json".to_vec(),
        };
        assert!(matches!(SyncMessage::decode(&garbage), Err(MessageError::Malformed(_))));
        assert!(matches!(
            SyncMessage::decode(&Frame {
                kind: 99,
                payload: vec![]
            }),
            Err(MessageError::UnknownKind(99))
        ));
    }

    #[test]
    fn incarnations_are_fresh_url_safe_and_checked_on_input() {
        let first = Incarnation::generate().expect("random");
        let second = Incarnation::generate().expect("random");
        assert_ne!(first, second, "each state gets its own incarnation");
        assert_eq!(first.as_str().len(), 32);
        assert_eq!(Incarnation::parse(first.as_str()).expect("parses"), first);
        assert!(
            Incarnation::parse("")
                .expect("empty is the unknown incarnation")
                .is_unknown()
        );
        for bad in ["a b", "a&log=b", "é", &"a".repeat(MAX_INCARNATION_LEN + 1)] {
            assert!(Incarnation::parse(bad).is_err(), "{bad:?}");
        }
        // A batch whose incarnation is malformed does not decode.
        let hostile = br#"{"site":"www","agent":"a","incarnation":"x y","changes":[]}"#;
        assert!(serde_json::from_slice::<ChangeBatch>(hostile).is_err());
    }

    #[test]
    fn a_purge_request_without_prefetch_reads_as_before_and_applied_needs_every_cache() {
        let old: PurgeRequest = serde_json::from_str(r#"{"urls": ["http://h/a"]}"#).expect("old request");
        assert!(old.prefetch.is_empty());
        assert_eq!(serde_json::to_string(&old).expect("json"), r#"{"urls":["http://h/a"]}"#);
        assert!(serde_json::from_str::<PurgeRequest>(r#"{"urls": [], "refetch": []}"#).is_err());
        let cache = |applied_through| CacheApplied {
            url: "http://e".into(),
            applied_through,
            last_error: None,
        };
        let mut applied = Applied {
            log: Incarnation::default(),
            through: 7,
            caches: vec![cache(7), cache(9)],
        };
        assert!(applied.all_applied());
        applied.caches.push(cache(6));
        assert!(!applied.all_applied(), "one cache behind");
    }

    #[test]
    fn messages_from_before_incarnations_still_decode() {
        let batch: ChangeBatch =
            serde_json::from_str(r#"{"site":"www","agent":"a","changes":[]}"#).expect("old batch decodes");
        assert!(batch.incarnation.is_unknown());
        let ack: Ack = serde_json::from_str(r#"{"agent":"a","through":3}"#).expect("old ack decodes");
        assert!(ack.incarnation.is_unknown());
        let answer: CatchUp =
            serde_json::from_str(r#"{"through":2,"reset":false,"changes":[]}"#).expect("old answer decodes");
        assert!(answer.log.is_unknown());
    }
}
