//! What is stored about a response besides its body, and its compact binary encoding for the disk tier.
//! The decoder never panics: a damaged file yields an error and the object is dropped.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::key::VaryValues;

/// Format version of the encoding; bump on any change.
const META_VERSION: u8 = 1;
/// Upper bound for one encoded record, so a damaged length cannot make the loader allocate gigabytes.
pub const MAX_META_LEN: usize = 1 << 20;

/// The stored part of a response other than its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// Primary key (the URL).
    pub url: String,
    /// Status code.
    pub status: StatusCode,
    /// End-to-end response header fields as received (hop-by-hop ones removed).
    pub headers: HeaderMap,
    /// The request values this variant was selected by.
    pub vary: VaryValues,
    /// When the request that produced the response was sent.
    pub request_time: SystemTime,
    /// When the response was received.
    pub response_time: SystemTime,
    /// Body length in bytes.
    pub body_len: u64,
    /// blake3 of the body, checked before a body read from disk is served after a restart (zeros in a
    /// memory-only store, which has no such body).
    pub body_hash: [u8; 32],
    /// Surrogate keys (`Surrogate-Key` response field) for tag purges.
    pub surrogate_keys: Vec<String>,
    /// Set by a soft purge: treat as stale from now on.
    pub invalidated: bool,
}

/// Error decoding a stored record.
#[derive(Debug, thiserror::Error)]
#[error("damaged cache record: {0}")]
pub struct DecodeError(&'static str);

impl Meta {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(META_VERSION);
        put_bytes(&mut out, self.url.as_bytes());
        out.extend_from_slice(&self.status.as_u16().to_le_bytes());
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in &self.headers {
            put_bytes(&mut out, name.as_str().as_bytes());
            put_bytes(&mut out, value.as_bytes());
        }
        out.extend_from_slice(&(self.vary.len() as u32).to_le_bytes());
        for (name, value) in &self.vary {
            put_bytes(&mut out, name.as_bytes());
            put_bytes(&mut out, value.as_bytes());
        }
        out.extend_from_slice(&unix_micros(self.request_time).to_le_bytes());
        out.extend_from_slice(&unix_micros(self.response_time).to_le_bytes());
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.extend_from_slice(&self.body_hash);
        out.extend_from_slice(&(self.surrogate_keys.len() as u32).to_le_bytes());
        for key in &self.surrogate_keys {
            put_bytes(&mut out, key.as_bytes());
        }
        out.push(u8::from(self.invalidated));
        out
    }

    /// Decodes a record written by [`Meta::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader { bytes, at: 0 };
        if reader.u8()? != META_VERSION {
            return Err(DecodeError("unknown version"));
        }
        let url = reader.string()?;
        let status = StatusCode::from_u16(reader.u16()?).map_err(|_| DecodeError("bad status"))?;
        let header_count = reader.u32()?;
        let mut headers = HeaderMap::new();
        for _ in 0..header_count {
            let name = HeaderName::from_bytes(reader.bytes()?).map_err(|_| DecodeError("bad field name"))?;
            let value = HeaderValue::from_bytes(reader.bytes()?).map_err(|_| DecodeError("bad field value"))?;
            headers.append(name, value);
        }
        let vary_count = reader.u32()?;
        let mut vary = Vec::new();
        for _ in 0..vary_count {
            vary.push((reader.string()?, reader.string()?));
        }
        let request_time = from_unix_micros(reader.u64()?)?;
        let response_time = from_unix_micros(reader.u64()?)?;
        let body_len = reader.u64()?;
        let body_hash: [u8; 32] = reader.take(32)?.try_into().map_err(|_| DecodeError("short hash"))?;
        let key_count = reader.u32()?;
        let mut surrogate_keys = Vec::new();
        for _ in 0..key_count {
            surrogate_keys.push(reader.string()?);
        }
        let invalidated = reader.u8()? != 0;
        if reader.at != bytes.len() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Meta {
            url,
            status,
            headers,
            vary,
            request_time,
            response_time,
            body_len,
            body_hash,
            surrogate_keys,
            invalidated,
        })
    }

    /// Approximate memory this record takes, counted against the memory tier's budget.
    pub fn weight(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 16).sum();
        (self.url.len() + headers + 128) as u64
    }
}

/// A copy of `headers` whose values own their bytes. A value parsed by hyper is a slice of the whole buffer
/// its connection read the response head into (8 KiB or more), and keeping the slice keeps that buffer: a
/// stored 1 KB object held 11 KB of memory (measured under `tern-lab bench edge`), more than the memory tier
/// counts. Everything the store keeps from a response goes through this.
pub fn detached(headers: &HeaderMap) -> HeaderMap {
    // One allocation holds every value; each field's value is a slice of it.
    let total: usize = headers.values().map(|value| value.len()).sum();
    let mut buffer = bytes::BytesMut::with_capacity(total);
    for value in headers.values() {
        buffer.extend_from_slice(value.as_bytes());
    }
    let buffer = buffer.freeze();
    let mut owned = HeaderMap::with_capacity(headers.len());
    let mut at = 0;
    for (name, value) in headers {
        let end = at + value.len();
        let mut copy = HeaderValue::from_maybe_shared(buffer.slice(at..end)).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        owned.append(name.clone(), copy);
        at = end;
    }
    owned
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn unix_micros(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Latest time a record may hold: the end of year 9999, the last an HTTP date can name.
const MAX_UNIX_SECONDS: u64 = 253_402_300_799;

fn from_unix_micros(micros: u64) -> Result<SystemTime, DecodeError> {
    let time = Duration::from_micros(micros);
    if time.as_secs() > MAX_UNIX_SECONDS {
        return Err(DecodeError("time out of range"));
    }
    UNIX_EPOCH.checked_add(time).ok_or(DecodeError("time out of range"))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(count).ok_or(DecodeError("length overflow"))?;
        let slice = self.bytes.get(self.at..end).ok_or(DecodeError("truncated"))?;
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().map_err(|_| DecodeError("truncated"))?,
        ))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| DecodeError("truncated"))?,
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| DecodeError("truncated"))?,
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > MAX_META_LEN {
            return Err(DecodeError("field too long"));
        }
        self.take(len)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError("not utf-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Meta {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/html"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.insert("x-bin", HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"));
        Meta {
            url: "http://h/a".into(),
            status: StatusCode::OK,
            headers,
            vary: vec![("accept-encoding".into(), "gzip".into())],
            request_time: UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_001),
            response_time: UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_002),
            body_len: 42,
            body_hash: [7; 32],
            surrogate_keys: vec!["a".into(), "b".into()],
            invalidated: true,
        }
    }

    #[test]
    fn detached_values_do_not_point_into_the_read_buffer() {
        let buffer = bytes::Bytes::from(vec![b'a'; 64 * 1024]);
        let mut headers = HeaderMap::new();
        let shared = HeaderValue::from_maybe_shared(buffer.slice(10..20)).expect("value");
        headers.insert("x-a", shared);
        let owned = detached(&headers);
        let value = owned["x-a"].as_bytes();
        assert_eq!(value, &buffer[10..20]);
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        assert!(
            !range.contains(&(value.as_ptr() as usize)),
            "the stored value must own its bytes"
        );
    }

    #[test]
    fn round_trip() {
        let meta = sample();
        assert_eq!(Meta::decode(&meta.encode()).expect("decode"), meta);
    }

    proptest! {
        #[test]
        fn damaged_records_never_panic(cut in 0usize..400, flip in 0usize..400) {
            let mut bytes = sample().encode();
            if flip < bytes.len() {
                bytes[flip] ^= 0x5a;
            }
            bytes.truncate(cut);
            let _ = Meta::decode(&bytes);
        }
    }
}
