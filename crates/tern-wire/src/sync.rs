//! Messages between the CP agent and the synchronisation service's listener (seed 001): the agent sends
//! batches of content changes, the listener acknowledges them through a sequence number or rejects them
//! with a reason. Payloads are JSON inside authenticated frames ([`crate::frame`]).

use serde::{Deserialize, Serialize};

use crate::frame::{self, Frame};
use crate::key::SecretKey;

/// Frame kind of a change batch.
pub const KIND_CHANGES: u8 = 1;
/// Frame kind of an acknowledgement.
pub const KIND_ACK: u8 = 2;
/// Frame kind of a rejection.
pub const KIND_REJECT: u8 = 3;

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
    /// The agent's sequence number: strictly increasing per agent, never reused.
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
    /// The changes, in sequence order.
    pub changes: Vec<Change>,
}

/// The listener has durably recorded every change of `agent` up to `through`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The agent.
    pub agent: String,
    /// Highest sequence number recorded.
    pub through: u64,
}

/// The listener refused a frame or batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// A short token (`bad-tag`, `unknown-site`, ...).
    pub reason: String,
    /// What to do about it.
    pub message: String,
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
}
