//! The framing of tern's TCP protocols: every message travels in one authenticated frame.
//!
//! ```text
//! "TRN"  version (u8)  kind (u8)  payload length (u32 BE)  payload  HMAC-SHA256(key, everything before)
//! ```
//!
//! The length is checked against the receiver's limit before any payload is read, the tag before the
//! payload is parsed. [`FrameDecoder`] is sans-IO: feed it bytes, take frames out; it never panics, and any
//! error says what was wrong so the listener can reject with a reason.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::key::SecretKey;

const MAGIC: &[u8; 3] = b"TRN";
/// Version of the framing and its messages.
pub const VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 3 + 1 + 1 + 4;
/// Bytes of the tag after the payload.
pub const TAG_LEN: usize = 32;
/// Default largest payload accepted.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

/// One authenticated frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload holds (see the message modules).
    pub kind: u8,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Why bytes were not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first bytes are not tern's magic.
    #[error("not a tern frame (bad magic)")]
    BadMagic,
    /// A version this side does not speak.
    #[error("frame version {0} is not supported (this side speaks {VERSION})")]
    BadVersion(u8),
    /// The declared payload is larger than the receiver's limit.
    #[error("frame payload of {declared} bytes is over the limit of {limit}")]
    TooLarge {
        /// Declared length.
        declared: usize,
        /// The limit.
        limit: usize,
    },
    /// The tag does not match: wrong key, or bytes changed on the way.
    #[error("frame tag does not match: wrong key or damaged frame")]
    BadTag,
}

impl FrameError {
    /// A short token for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::BadMagic => "bad-magic",
            FrameError::BadVersion(_) => "bad-version",
            FrameError::TooLarge { .. } => "too-large",
            FrameError::BadTag => "bad-tag",
        }
    }
}

fn tag(key: &SecretKey, bytes: &[u8]) -> [u8; TAG_LEN] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(bytes);
    mac.finalize().into_bytes().into()
}

/// Encodes a frame with `key`'s tag.
pub fn encode(key: &SecretKey, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    let tag = tag(key, &out);
    out.extend_from_slice(&tag);
    out
}

/// The kind of the frame `bytes` start with, if they start with tern's magic and version (nothing is
/// authenticated yet: use it only to route bytes to the decoder that will check them).
pub fn peek_kind(bytes: &[u8]) -> Option<u8> {
    let header = bytes.get(..HEADER_LEN)?;
    (header[..3] == MAGIC[..] && header[3] == VERSION).then_some(header[4])
}

/// Reassembles frames from a byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    key: SecretKey,
    max_payload: usize,
    buffer: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder checking tags with `key` and refusing payloads over `max_payload` bytes.
    pub fn new(key: SecretKey, max_payload: usize) -> Self {
        FrameDecoder {
            key,
            max_payload,
            buffer: Vec::new(),
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet form a frame.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error the stream is not
    /// trusted any more; the caller closes the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let available = self.buffer.len();
        let magic_len = available.min(3);
        if self.buffer[..magic_len] != MAGIC[..magic_len] {
            return Err(FrameError::BadMagic);
        }
        if available >= 4 && self.buffer[3] != VERSION {
            return Err(FrameError::BadVersion(self.buffer[3]));
        }
        if available < HEADER_LEN {
            return Ok(None);
        }
        let declared = u32::from_be_bytes([self.buffer[5], self.buffer[6], self.buffer[7], self.buffer[8]]) as usize;
        if declared > self.max_payload {
            return Err(FrameError::TooLarge {
                declared,
                limit: self.max_payload,
            });
        }
        let total = HEADER_LEN + declared + TAG_LEN;
        if available < total {
            return Ok(None);
        }
        let body_end = HEADER_LEN + declared;
        let expected = tag(&self.key, &self.buffer[..body_end]);
        let given = &self.buffer[body_end..total];
        use subtle::ConstantTimeEq;
        if !bool::from(expected.ct_eq(given)) {
            return Err(FrameError::BadTag);
        }
        let kind = self.buffer[4];
        let payload = self.buffer[HEADER_LEN..body_end].to_vec();
        self.buffer.drain(..total);
        Ok(Some(Frame { kind, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::parse(&"ab".repeat(32)).expect("key")
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let bytes = [encode(&key(), 1, b"hello"), encode(&key(), 2, b"")].concat();
        let mut decoder = FrameDecoder::new(key(), 1024);
        let mut frames = Vec::new();
        for byte in bytes {
            decoder.push(&[byte]);
            while let Some(frame) = decoder.next_frame().expect("valid") {
                frames.push(frame);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame {
                    kind: 1,
                    payload: b"hello".to_vec()
                },
                Frame {
                    kind: 2,
                    payload: vec![]
                }
            ]
        );
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn every_kind_of_bad_input_is_named() {
        let good = encode(&key(), 1, b"payload");
        let other = SecretKey::parse(&"cd".repeat(32)).expect("key");
        let mut decoder = FrameDecoder::new(other, 1024);
        decoder.push(&good);
        assert_eq!(decoder.next_frame(), Err(FrameError::BadTag));

        let mut flipped = good.clone();
        flipped[HEADER_LEN + 2] ^= 1;
        let mut decoder = FrameDecoder::new(key(), 1024);
        decoder.push(&flipped);
        assert_eq!(decoder.next_frame(), Err(FrameError::BadTag));

        let mut version = good.clone();
        version[3] = 9;
        let mut decoder = FrameDecoder::new(key(), 1024);
        decoder.push(&version);
        assert_eq!(decoder.next_frame(), Err(FrameError::BadVersion(9)));

        let mut decoder = FrameDecoder::new(key(), 4);
        decoder.push(&good);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge { declared: 7, limit: 4 })
        );

        let mut decoder = FrameDecoder::new(key(), 1024);
        decoder.push(b"GET / HTTP/1.1\r\n");
        assert_eq!(decoder.next_frame(), Err(FrameError::BadMagic));

        let mut decoder = FrameDecoder::new(key(), 1024);
        decoder.push(&good[..good.len() - 1]);
        assert_eq!(decoder.next_frame(), Ok(None), "a truncated frame waits for more bytes");
    }
}
