//! Assignments that arrive in a stream: checked as they are written to a spool file ([`StreamCheck`]),
//! then opened there without reading the data section into memory ([`open_spooled`]).

use super::*;

const TRAILER_LEN: usize = HASH_LEN + SIGNATURE_LEN + 8;

/// Checks an assignment as it arrives, without holding it: the magic and the size limit at once, the
/// blake3 hash chunk by chunk, and at the end ([`StreamCheck::finish`]) the end marker, the mover's
/// signature and the hash — the checks of [`decode`], in its order, so a stream is refused for the same
/// reason a buffer would be. Only the last [`TRAILER_LEN`] bytes are held (they may be the trailer).
#[derive(Debug)]
pub struct StreamCheck {
    max_total: u64,
    hasher: blake3::Hasher,
    /// The last bytes received, not yet hashed.
    tail: Vec<u8>,
    received: u64,
}

/// An assignment stream whose signature and hash were checked ([`StreamCheck::finish`]): only that makes
/// one, so holding it is proof the bytes written along the way are the mover's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    hash: [u8; HASH_LEN],
    len: u64,
}

impl Checked {
    /// The signed blake3 hash (hex): the assignment's identity end to end.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// Bytes of the whole assignment.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the assignment is empty (never: a checked one has at least its fixed parts).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl StreamCheck {
    /// A check refusing streams over `limits.max_total` bytes.
    pub fn new(limits: &Limits) -> Self {
        StreamCheck {
            max_total: limits.max_total,
            hasher: blake3::Hasher::new(),
            tail: Vec::with_capacity(2 * TRAILER_LEN),
            received: 0,
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes the next bytes. Refuses, at once, a stream that does not start with the magic or grows over
    /// the limit; the caller stops receiving then.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), AssignmentError> {
        let received = self.received.saturating_add(chunk.len() as u64);
        if received > self.max_total {
            return Err(AssignmentError::TooLarge(received));
        }
        if self.received < MAGIC.len() as u64 {
            let at = self.received as usize;
            let count = (MAGIC.len() - at).min(chunk.len());
            for (offset, byte) in chunk[..count].iter().enumerate() {
                let position = at + offset;
                if *byte == MAGIC[position] {
                    continue;
                }
                // The version digit differs (the stem before it matched): another release's assignment.
                if position == MAGIC_STEM.len() && byte.is_ascii_digit() {
                    return Err(AssignmentError::OtherVersion(byte - b'0'));
                }
                return Err(AssignmentError::NotAnAssignment("bad magic or too short"));
            }
        }
        self.received = received;
        if chunk.len() >= TRAILER_LEN {
            self.hasher.update(&self.tail);
            self.tail.clear();
            let (hashed, kept) = chunk.split_at(chunk.len() - TRAILER_LEN);
            self.hasher.update(hashed);
            self.tail.extend_from_slice(kept);
        } else {
            self.tail.extend_from_slice(chunk);
            let excess = self.tail.len().saturating_sub(TRAILER_LEN);
            if excess > 0 {
                self.hasher.update(&self.tail[..excess]);
                self.tail.drain(..excess);
            }
        }
        Ok(())
    }

    /// The stream ended: checks the end marker, the signature with `mover`'s key and the hash.
    pub fn finish(self, mover: &VerifyingKey) -> Result<Checked, AssignmentError> {
        if self.received < FIXED as u64 {
            return Err(AssignmentError::NotAnAssignment("bad magic or too short"));
        }
        let (hash, rest) = self.tail.split_at(HASH_LEN);
        let (signature, end) = rest.split_at(SIGNATURE_LEN);
        if end != END {
            return Err(AssignmentError::NotAnAssignment("bad end marker"));
        }
        let signature: [u8; SIGNATURE_LEN] = signature.try_into().map_err(|_| AssignmentError::Signature)?;
        mover
            .verify(hash, &Signature::from_bytes(&signature))
            .map_err(|_| AssignmentError::Signature)?;
        if self.hasher.finalize().as_bytes() != hash {
            return Err(AssignmentError::Hash);
        }
        let hash: [u8; HASH_LEN] = hash.try_into().map_err(|_| AssignmentError::Hash)?;
        Ok(Checked {
            hash,
            len: self.received,
        })
    }
}

/// [`StreamCheck`] over the first `len` bytes of `file` (an assignment the caller kept, such as a mover's
/// snapshot), read a chunk at a time: the same checks as for an assignment arriving over the network.
pub fn check_file(
    file: &std::fs::File,
    len: u64,
    mover: &VerifyingKey,
    limits: &Limits,
) -> Result<Checked, AssignmentError> {
    let mut check = StreamCheck::new(limits);
    let mut buffer = vec![0u8; DECRYPT_CHUNK];
    let mut at = 0u64;
    while at < len {
        let count = (len - at).min(DECRYPT_CHUNK as u64) as usize;
        read_exact_at(file, &mut buffer[..count], at).map_err(|e| AssignmentError::Spool(e.to_string()))?;
        check.push(&buffer[..count])?;
        at += count as u64;
    }
    check.finish(mover)
}

/// The signed hash (hex) in an encoded assignment's trailer, without checking anything: what a mover
/// names in a notification, so that whoever fetches the assignment can tell it got the right one.
pub fn trailer_hash(bytes: &[u8]) -> Option<String> {
    if bytes.len() < FIXED {
        return None;
    }
    let at = bytes.len() - TRAILER_LEN;
    Some(hex::encode(&bytes[at..at + HASH_LEN]))
}

/// Opens an assignment written to `spool` and checked on the way ([`StreamCheck::finish`] gave `checked`):
/// reads and checks its sizes, header and commands as [`decode`] does, and leaves the data section in the
/// file. An encrypted body is decrypted in a stream into the file `scratch` makes (its tag checked); the
/// data is then read from there.
pub fn open_spooled(
    spool: std::fs::File,
    checked: &Checked,
    decryption_key: Option<&[u8; 32]>,
    limits: &Limits,
    scratch: impl FnOnce() -> std::io::Result<std::fs::File>,
) -> Result<Assignment, AssignmentError> {
    let spool_error = |e: std::io::Error| AssignmentError::Spool(e.to_string());
    let signed_end = checked.len.saturating_sub(TRAILER_LEN as u64);
    let mut word = [0u8; 4];
    read_exact_at(&spool, &mut word, MAGIC.len() as u64).map_err(spool_error)?;
    let header_len = u32::from_be_bytes(word) as usize;
    if header_len > limits.max_header {
        return Err(AssignmentError::Sizes("header over the limit"));
    }
    let body_len_at = 12 + header_len as u64;
    let body_at = body_len_at + 8;
    if body_at > signed_end {
        return Err(AssignmentError::Sizes("header runs past the end"));
    }
    let mut header_bytes = vec![0u8; header_len];
    read_exact_at(&spool, &mut header_bytes, 12).map_err(spool_error)?;
    let header: Header =
        serde_json::from_slice(&header_bytes).map_err(|e| AssignmentError::Malformed("header", e.to_string()))?;
    let mut long = [0u8; 8];
    read_exact_at(&spool, &mut long, body_len_at).map_err(spool_error)?;
    let body_len = u64::from_be_bytes(long);
    if body_at.checked_add(body_len) != Some(signed_end) {
        return Err(AssignmentError::Sizes("body length"));
    }
    let (body, body_at, body_len) = match (header.encrypted, decryption_key) {
        (false, _) => (spool, body_at, body_len),
        (true, None) => return Err(AssignmentError::Decrypt("encrypted and this node has no key")),
        (true, Some(key)) => {
            let nonce = header.nonce_bytes()?;
            if body_len < TAG_LEN as u64 {
                return Err(AssignmentError::Sizes("encrypted body too short"));
            }
            let cipher_len = body_len - TAG_LEN as u64;
            let mut tag = [0u8; TAG_LEN];
            read_exact_at(&spool, &mut tag, body_at + cipher_len).map_err(spool_error)?;
            let mut plain = scratch().map_err(spool_error)?;
            decrypt_stream(key, &nonce, &spool, body_at, cipher_len, &tag, &mut plain)?;
            (plain, 0, cipher_len)
        }
    };
    if body_len < 4 {
        return Err(AssignmentError::Sizes("body too short"));
    }
    read_exact_at(&body, &mut word, body_at).map_err(spool_error)?;
    let commands_len = u32::from_be_bytes(word) as usize;
    if commands_len > limits.max_commands || 4 + commands_len as u64 > body_len {
        return Err(AssignmentError::Sizes("command list runs past the body"));
    }
    let mut command_bytes = vec![0u8; commands_len];
    read_exact_at(&body, &mut command_bytes, body_at + 4).map_err(spool_error)?;
    let commands: Vec<Command> =
        serde_json::from_slice(&command_bytes).map_err(|e| AssignmentError::Malformed("commands", e.to_string()))?;
    let data_at = body_at + 4 + commands_len as u64;
    let data_len = body_len - 4 - commands_len as u64;
    check_commands(&header, &commands, data_len)?;
    Ok(Assignment {
        header,
        commands,
        data: DataSection::File {
            file: body,
            offset: data_at,
            len: data_len,
        },
    })
}

/// Bytes decrypted at a time; a multiple of Poly1305's 16-byte block, so only the last piece is padded.
const DECRYPT_CHUNK: usize = 64 << 10;

/// XChaCha20-Poly1305 (as `chacha20poly1305` does it, no associated data) over `len` bytes of `source` at
/// `offset`, in a stream: the plaintext goes to `plain`, and counts only if the tag verifies.
fn decrypt_stream(
    key: &[u8; 32],
    nonce: &[u8; 24],
    source: &std::fs::File,
    offset: u64,
    len: u64,
    tag: &[u8; TAG_LEN],
    plain: &mut std::fs::File,
) -> Result<(), AssignmentError> {
    use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
    use poly1305::universal_hash::{KeyInit as _, UniversalHash};
    use std::io::Write;
    let spool_error = |e: std::io::Error| AssignmentError::Spool(e.to_string());
    let mut cipher = chacha20::XChaCha20::new(key.into(), nonce.into());
    // The Poly1305 key is the first 32 bytes of the keystream; the body's keystream starts at block 1.
    let mut mac_key = [0u8; 32];
    cipher.apply_keystream(&mut mac_key);
    let mut mac = poly1305::Poly1305::new(&mac_key.into());
    cipher.seek(64u64);
    let mut buffer = vec![0u8; DECRYPT_CHUNK];
    let mut done = 0u64;
    while done < len {
        let count = (len - done).min(DECRYPT_CHUNK as u64) as usize;
        let piece = &mut buffer[..count];
        read_exact_at(source, piece, offset + done).map_err(spool_error)?;
        mac.update_padded(piece);
        cipher.apply_keystream(piece);
        plain.write_all(piece).map_err(spool_error)?;
        done += count as u64;
    }
    let mut lengths = poly1305::Block::default();
    lengths[8..].copy_from_slice(&len.to_le_bytes());
    mac.update(&[lengths]);
    mac.verify(tag.into())
        .map_err(|_| AssignmentError::Decrypt("wrong key"))
}

/// One positioned read of up to `buffer.len()` bytes at `offset`.
pub(super) fn read_at(file: &std::fs::File, buffer: &mut [u8], offset: u64) -> std::io::Result<usize> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_at(file, buffer, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek};
        let mut handle = file;
        handle.seek(std::io::SeekFrom::Start(offset))?;
        handle.read(buffer)
    }
}

/// Reads exactly `buffer.len()` bytes of `file` at `offset`.
pub(super) fn read_exact_at(file: &std::fs::File, buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buffer.len() {
        match read_at(file, &mut buffer[done..], offset.saturating_add(done as u64)) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            Ok(n) => done += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
