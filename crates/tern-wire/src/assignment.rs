//! Assignments (seed `004_1419c51402506f7e.txt`): the unit of work the content mover sends to nodes. An
//! assignment carries a header (id, kind, site, sequence, sizes), an ordered list of commands (mkdir,
//! create, patch from a delta, chmod, remove, rename, commit, rollback), a data section the commands point
//! into, and a trailer: the blake3 hash of everything before it, signed by the mover with ed25519. The
//! commands and data may be encrypted with XChaCha20-Poly1305.
//!
//! Layout (all integers big-endian; the format is documented in `docs/assignment-format.md`):
//!
//! ```text
//! "TERNASG1"  header length (u32)  header (JSON)  body length (u64)  body  blake3 (32)  ed25519 signature (64)  "TERNEND1"
//! body = commands length (u32)  commands (JSON)  data          (encrypted as a whole when the header says so)
//! ```
//!
//! [`decode`] checks the magic, the sizes, the hash and the signature before it parses anything, and then
//! checks every declared size against what is there. Nothing in an assignment is trusted before that.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"TERNASG1";
const END: &[u8; 8] = b"TERNEND1";
const HASH_LEN: usize = 32;
const SIGNATURE_LEN: usize = 64;
/// Bytes of the Poly1305 tag after an encrypted body.
const TAG_LEN: usize = 16;
/// Bytes of everything but header, body and their lengths.
const FIXED: usize = 8 + 4 + 8 + HASH_LEN + SIGNATURE_LEN + 8;

/// What an assignment does (seed 004's job types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignmentKind {
    /// New content from staging.
    Publish,
    /// Bring a node to the shadow copy.
    Synchronise,
    /// A full copy to a new node.
    Replicate,
    /// Remove a site.
    Remove,
    /// Switch back to the previous version.
    Rollback,
    /// Restore a checkpoint.
    Restore,
}

/// How blobs in the data section are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    /// Stored as they are.
    None,
    /// zstd.
    Zstd,
}

/// The header: readable before decryption, so a node can tell what an assignment is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Unique id.
    pub id: String,
    /// What it does.
    pub kind: AssignmentKind,
    /// The hosted site.
    pub site: String,
    /// The site's version sequence this assignment produces.
    pub sequence: u64,
    /// The version (tree hash) the commands apply to; none for a full copy.
    pub base: Option<String>,
    /// Number of commands.
    pub commands: u32,
    /// Bytes of the data section.
    pub data_len: u64,
    /// Whether the body is encrypted.
    pub encrypted: bool,
    /// Nonce of the encryption (hex, 24 bytes).
    pub nonce: Option<String>,
    /// When it was made (ms since the epoch).
    pub created_ms: u64,
}

/// Where a command's bytes are in the data section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataRef {
    /// Offset in the data section.
    pub offset: u64,
    /// Length in the data section.
    pub len: u64,
    /// How the bytes are compressed.
    pub compression: Compression,
    /// Size of the resulting file.
    pub size: u64,
    /// blake3 (hex) of the resulting file.
    pub hash: String,
}

/// One command of an assignment. Paths are relative to the site root, with `/` separators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Make a directory (and its parents).
    Mkdir {
        /// Path.
        path: String,
    },
    /// Create or replace a file with the bytes in `data`.
    Create {
        /// Path.
        path: String,
        /// Unix permission bits.
        mode: Option<u32>,
        /// Content.
        data: DataRef,
    },
    /// Replace a file with the result of applying a zstd delta (made with the old file as reference
    /// prefix) to the file whose hash is `base_hash`.
    Patch {
        /// Path.
        path: String,
        /// blake3 (hex) of the file the delta applies to.
        base_hash: String,
        /// The delta; `size` and `hash` describe the result.
        data: DataRef,
    },
    /// Change permission bits.
    Chmod {
        /// Path.
        path: String,
        /// Unix permission bits.
        mode: u32,
    },
    /// Remove a file or directory tree.
    Remove {
        /// Path.
        path: String,
    },
    /// Rename a file or directory.
    Rename {
        /// Old path.
        from: String,
        /// New path.
        to: String,
    },
    /// Make the prepared tree the live site (atomically), keeping the previous one as backup.
    Commit,
    /// Make the backup the live site again.
    Rollback,
}

/// A verified, decrypted assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Its header.
    pub header: Header,
    /// Its commands, in order.
    pub commands: Vec<Command>,
    /// The assignment as received (decrypted in place); `data` is where its data section is.
    buffer: Vec<u8>,
    data: std::ops::Range<usize>,
}

/// Bounds a node applies to assignments it receives.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest header.
    pub max_header: usize,
    /// Largest command list, in bytes.
    pub max_commands: usize,
    /// Largest assignment.
    pub max_total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // Assignments are verified in memory, so the total is bounded by what a node can hold.
        Limits {
            max_header: 64 << 10,
            max_commands: 64 << 20,
            max_total: 2 << 30,
        }
    }
}

/// Why an assignment was refused. Every reason is checked before anything touches disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    /// Not an assignment (bad magic or end marker, too short).
    #[error("not a tern assignment: {0}")]
    NotAnAssignment(&'static str),
    /// Larger than the node accepts.
    #[error("assignment of {0} bytes is over the limit")]
    TooLarge(u64),
    /// The declared lengths do not add up to what arrived.
    #[error("assignment sizes do not add up: {0}")]
    Sizes(&'static str),
    /// The hash does not match: damaged on the way.
    #[error("assignment hash does not match its contents (damaged)")]
    Hash,
    /// The signature is missing or not the mover's.
    #[error("assignment signature does not verify with the mover's public key")]
    Signature,
    /// Encrypted, and no key (or the wrong key) to decrypt it.
    #[error("assignment cannot be decrypted: {0}")]
    Decrypt(&'static str),
    /// The header or command list does not parse.
    #[error("assignment {0} is malformed: {1}")]
    Malformed(&'static str, String),
    /// A command points outside the data section.
    #[error("command {index} points outside the data section")]
    DataRange {
        /// Which command.
        index: usize,
    },
}

/// zstd level of whole files.
const CREATE_LEVEL: i32 = 3;

/// A file's content made ready for an assignment: compressed, or a delta against the node's version.
/// Packing is the costly part of building an assignment, and it needs no [`Builder`], so a planner can
/// pack files on several threads and add the pieces in order.
#[derive(Debug)]
pub struct Piece {
    path: String,
    mode: Option<u32>,
    /// blake3 (hex) of the file the delta applies to; `None` for a whole file.
    base_hash: Option<String>,
    stored: Vec<u8>,
    compression: Compression,
    size: u64,
    hash: String,
}

impl Piece {
    /// Whether the piece is a delta (else the whole file).
    pub fn is_delta(&self) -> bool {
        self.base_hash.is_some()
    }

    /// Bytes the piece adds to the data section.
    pub fn stored_len(&self) -> usize {
        self.stored.len()
    }
}

/// Packs files into [`Piece`]s, reusing one zstd context for all of them (one per thread).
pub struct Packer {
    compressor: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Packer")
    }
}

impl Packer {
    /// A packer.
    pub fn new() -> std::io::Result<Self> {
        Ok(Packer {
            compressor: zstd::bulk::Compressor::new(CREATE_LEVEL)?,
        })
    }

    /// A whole file, compressed when `compress` says so and it helps.
    pub fn whole(&mut self, path: &str, mode: Option<u32>, content: &[u8], compress: bool) -> std::io::Result<Piece> {
        let packed = if compress {
            Some(self.compressor.compress(content)?)
        } else {
            None
        };
        let (stored, compression) = match packed {
            Some(packed) if packed.len() < content.len() => (packed, Compression::Zstd),
            _ => (content.to_vec(), Compression::None),
        };
        Ok(Piece {
            path: path.to_string(),
            mode,
            base_hash: None,
            stored,
            compression,
            size: content.len() as u64,
            hash: blake3::hash(content).to_hex().to_string(),
        })
    }

    /// A zstd delta of `new` against `old` (the node holds `old`).
    pub fn delta(&mut self, path: &str, mode: Option<u32>, old: &[u8], new: &[u8]) -> std::io::Result<Piece> {
        Ok(Piece {
            path: path.to_string(),
            mode,
            base_hash: Some(blake3::hash(old).to_hex().to_string()),
            stored: delta(old, new)?,
            compression: Compression::Zstd,
            size: new.len() as u64,
            hash: blake3::hash(new).to_hex().to_string(),
        })
    }

    /// A changed file as a delta against `old` or whole, whichever is smaller.
    pub fn changed(
        &mut self,
        path: &str,
        mode: Option<u32>,
        old: &[u8],
        new: &[u8],
        compress: bool,
    ) -> std::io::Result<Piece> {
        let delta = self.delta(path, mode, old, new)?;
        // A delta made with the old file as reference can use the new file's own repetitions as well, so a
        // whole copy rarely beats a small one: it is only tried when the delta is over an eighth of the file.
        if delta.stored.len() <= new.len() / 8 {
            return Ok(delta);
        }
        let whole = self.whole(path, mode, new, compress)?;
        Ok(if delta.stored.len() < whole.stored.len() {
            delta
        } else {
            whole
        })
    }
}

/// Builds and signs assignments.
#[derive(Debug)]
pub struct Builder {
    header: Header,
    commands: Vec<Command>,
    /// The data section, as the pieces added (joined once, into the encoded assignment).
    data: Vec<Vec<u8>>,
    data_len: u64,
}

impl Builder {
    /// A new assignment for `site`.
    pub fn new(
        id: &str,
        kind: AssignmentKind,
        site: &str,
        sequence: u64,
        base: Option<String>,
        created_ms: u64,
    ) -> Self {
        Builder {
            header: Header {
                id: id.to_string(),
                kind,
                site: site.to_string(),
                sequence,
                base,
                commands: 0,
                data_len: 0,
                encrypted: false,
                nonce: None,
                created_ms,
            },
            commands: Vec::new(),
            data: Vec::new(),
            data_len: 0,
        }
    }

    /// Adds a packed file: a create command, or a patch (with a chmod after it when the mode is known).
    pub fn add(&mut self, piece: Piece) {
        let data = DataRef {
            offset: self.data_len,
            len: piece.stored.len() as u64,
            compression: piece.compression,
            size: piece.size,
            hash: piece.hash,
        };
        self.data_len += piece.stored.len() as u64;
        self.data.push(piece.stored);
        match piece.base_hash {
            None => self.commands.push(Command::Create {
                path: piece.path,
                mode: piece.mode,
                data,
            }),
            Some(base_hash) => {
                self.commands.push(Command::Patch {
                    path: piece.path.clone(),
                    base_hash,
                    data,
                });
                if let Some(mode) = piece.mode {
                    self.commands.push(Command::Chmod { path: piece.path, mode });
                }
            }
        }
    }

    /// Adds a file with its full content, compressed when `compress` says so and it helps.
    pub fn create(&mut self, path: &str, mode: Option<u32>, content: &[u8], compress: bool) -> std::io::Result<()> {
        let piece = Packer::new()?.whole(path, mode, content, compress)?;
        self.add(piece);
        Ok(())
    }

    /// Adds a patch: a zstd delta of `new` against `old` (the node holds `old`).
    pub fn patch(&mut self, path: &str, old: &[u8], new: &[u8]) -> std::io::Result<()> {
        let piece = Packer::new()?.delta(path, None, old, new)?;
        self.add(piece);
        Ok(())
    }

    /// Adds any command without data.
    pub fn command(&mut self, command: Command) {
        self.commands.push(command);
    }

    /// Encodes and signs; encrypts the body with `encryption_key` when given. The data is copied once,
    /// into the encoded assignment, and encrypted where it lies.
    pub fn finish(
        mut self,
        signing: &SigningKey,
        encryption_key: Option<&[u8; 32]>,
    ) -> Result<Vec<u8>, AssignmentError> {
        self.header.commands = self.commands.len() as u32;
        self.header.data_len = self.data_len;
        let commands =
            serde_json::to_vec(&self.commands).map_err(|e| AssignmentError::Malformed("commands", e.to_string()))?;
        let mut nonce = [0u8; 24];
        if encryption_key.is_some() {
            getrandom::fill(&mut nonce).map_err(|_| AssignmentError::Decrypt("no randomness for a nonce"))?;
            self.header.encrypted = true;
            self.header.nonce = Some(hex::encode(nonce));
        }
        let header =
            serde_json::to_vec(&self.header).map_err(|e| AssignmentError::Malformed("header", e.to_string()))?;
        let plain_len = 4 + commands.len() as u64 + self.data_len;
        let body_len = plain_len + if encryption_key.is_some() { TAG_LEN as u64 } else { 0 };
        let mut out = Vec::with_capacity(FIXED + header.len() + body_len as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&body_len.to_be_bytes());
        let body_at = out.len();
        out.extend_from_slice(&(commands.len() as u32).to_be_bytes());
        out.extend_from_slice(&commands);
        for piece in self.data.drain(..) {
            out.extend_from_slice(&piece);
        }
        if let Some(key) = encryption_key {
            let cipher = XChaCha20Poly1305::new(key.into());
            let tag = cipher
                .encrypt_in_place_detached(XNonce::from_slice(&nonce), b"", &mut out[body_at..])
                .map_err(|_| AssignmentError::Decrypt("encryption failed"))?;
            out.extend_from_slice(&tag);
        }
        let hash = blake3::hash(&out);
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(&signing.sign(hash.as_bytes()).to_bytes());
        out.extend_from_slice(END);
        Ok(out)
    }
}

/// zstd level of deltas. Measured with `tern-lab bench mover` (1,000 changed files, 2% of a 500 MB site):
/// level 19 made deltas a few percent smaller than level 3 but took most of the publish's time.
const DELTA_LEVEL: i32 = 3;

/// Files from this size on are matched with zstd's long-distance matcher as well (its window covers a
/// whole file; smaller files are within reach of the normal match finder, and the matcher costs time).
const LONG_DISTANCE_FROM: usize = 1 << 20;

/// A zstd delta of `new` against `old` (the old file is the reference prefix, so unchanged stretches cost
/// a few bytes each).
pub fn delta(old: &[u8], new: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), DELTA_LEVEL, old)?;
    let largest = old.len().max(new.len());
    if largest >= LONG_DISTANCE_FROM {
        encoder.long_distance_matching(true)?;
    }
    encoder.window_log(window_log(largest))?;
    encoder.write_all(new)?;
    encoder.finish()
}

/// Applies a delta made by [`delta`]; `size` is the expected result size, and more is refused.
pub fn apply_delta(old: &[u8], delta: &[u8], size: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    Unpacker::new().apply_delta(old, delta, size, &mut out)?;
    Ok(out)
}

/// Turns stored bytes back into file content, with one zstd context for any number of files: making a
/// context probes the CPU (CPUID, which traps to the hypervisor in a VM), a cost worth paying once.
pub struct Unpacker {
    context: zstd::zstd_safe::DCtx<'static>,
}

impl std::fmt::Debug for Unpacker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unpacker")
    }
}

impl Default for Unpacker {
    fn default() -> Self {
        Unpacker::new()
    }
}

impl Unpacker {
    /// An unpacker.
    pub fn new() -> Self {
        Unpacker {
            context: zstd::zstd_safe::DCtx::create(),
        }
    }

    /// Decompresses a whole file of `size` bytes into `out` (replacing its contents); a frame that
    /// decodes to any other size is refused.
    pub fn decompress(&mut self, stored: &[u8], size: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
        Self::prepare(out, size)?;
        let result = self.context.decompress(out, stored);
        Self::finish(result, out, size)
    }

    /// Applies a delta made by [`delta`] to `old` into `out` (replacing its contents); a result of any
    /// size other than `size` is refused. (A raw-content dictionary is decoded exactly as the reference
    /// prefix the delta was made with.)
    pub fn apply_delta(&mut self, old: &[u8], delta: &[u8], size: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
        Self::prepare(out, size)?;
        let result = self.context.decompress_using_dict(out, delta, old);
        Self::finish(result, out, size)
    }

    fn prepare(out: &mut Vec<u8>, size: u64) -> std::io::Result<()> {
        let size = usize::try_from(size).map_err(|_| invalid("declared size too large"))?;
        out.clear();
        // One byte over the declared size: a frame that decodes to more fails the size check below
        // instead of filling the buffer exactly.
        out.try_reserve(size.saturating_add(1))
            .map_err(|_| invalid("declared size too large"))
    }

    fn finish(result: Result<usize, usize>, out: &[u8], size: u64) -> std::io::Result<()> {
        match result {
            Ok(_) if out.len() as u64 == size => Ok(()),
            Ok(_) => Err(invalid("decoded content has the wrong size")),
            Err(code) => Err(invalid(zstd::zstd_safe::get_error_name(code))),
        }
    }
}

fn invalid(reason: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, reason.to_string())
}

fn window_log(len: usize) -> u32 {
    let bits = usize::BITS - len.max(1).leading_zeros();
    bits.clamp(10, 30)
}

/// Verifies, decrypts and parses an assignment (copying it; see [`decode_owned`]).
pub fn decode(
    bytes: &[u8],
    mover: &VerifyingKey,
    decryption_key: Option<&[u8; 32]>,
    limits: &Limits,
) -> Result<Assignment, AssignmentError> {
    if bytes.len() as u64 > limits.max_total {
        return Err(AssignmentError::TooLarge(bytes.len() as u64));
    }
    decode_owned(bytes.to_vec(), mover, decryption_key, limits)
}

/// Verifies, decrypts and parses an assignment, keeping `bytes` as its data section (decrypted in place):
/// the data is never copied.
pub fn decode_owned(
    mut bytes: Vec<u8>,
    mover: &VerifyingKey,
    decryption_key: Option<&[u8; 32]>,
    limits: &Limits,
) -> Result<Assignment, AssignmentError> {
    if bytes.len() as u64 > limits.max_total {
        return Err(AssignmentError::TooLarge(bytes.len() as u64));
    }
    if bytes.len() < FIXED || &bytes[..8] != MAGIC {
        return Err(AssignmentError::NotAnAssignment("bad magic or too short"));
    }
    if &bytes[bytes.len() - 8..] != END {
        return Err(AssignmentError::NotAnAssignment("bad end marker"));
    }
    let signed_end = bytes.len() - 8 - SIGNATURE_LEN - HASH_LEN;
    let stored_hash = &bytes[signed_end..signed_end + HASH_LEN];
    let signature: [u8; SIGNATURE_LEN] = bytes[signed_end + HASH_LEN..bytes.len() - 8]
        .try_into()
        .map_err(|_| AssignmentError::Signature)?;
    mover
        .verify(stored_hash, &Signature::from_bytes(&signature))
        .map_err(|_| AssignmentError::Signature)?;
    if blake3::hash(&bytes[..signed_end]).as_bytes() != stored_hash {
        return Err(AssignmentError::Hash);
    }
    // Signed and intact; now the sizes.
    let header_len = u32::from_be_bytes(
        bytes[8..12]
            .try_into()
            .map_err(|_| AssignmentError::Sizes("header length"))?,
    ) as usize;
    if header_len > limits.max_header {
        return Err(AssignmentError::Sizes("header over the limit"));
    }
    let body_len_at = 12usize
        .checked_add(header_len)
        .ok_or(AssignmentError::Sizes("header length"))?;
    let body_at = body_len_at
        .checked_add(8)
        .ok_or(AssignmentError::Sizes("header length"))?;
    if body_at > signed_end {
        return Err(AssignmentError::Sizes("header runs past the end"));
    }
    let header: Header = serde_json::from_slice(&bytes[12..body_len_at])
        .map_err(|e| AssignmentError::Malformed("header", e.to_string()))?;
    let body_len = u64::from_be_bytes(
        bytes[body_len_at..body_at]
            .try_into()
            .map_err(|_| AssignmentError::Sizes("body length"))?,
    );
    if body_at as u64 + body_len != signed_end as u64 {
        return Err(AssignmentError::Sizes("body length"));
    }
    let mut body_end = signed_end;
    match (header.encrypted, decryption_key) {
        (false, _) => {}
        (true, None) => return Err(AssignmentError::Decrypt("encrypted and this node has no key")),
        (true, Some(key)) => {
            let nonce = header
                .nonce
                .as_deref()
                .and_then(|n| hex::decode(n).ok())
                .filter(|n| n.len() == 24);
            let nonce = nonce.ok_or(AssignmentError::Decrypt("missing nonce"))?;
            if signed_end - body_at < TAG_LEN {
                return Err(AssignmentError::Sizes("encrypted body too short"));
            }
            body_end = signed_end - TAG_LEN;
            let tag = Tag::clone_from_slice(&bytes[body_end..signed_end]);
            let cipher = XChaCha20Poly1305::new(key.into());
            cipher
                .decrypt_in_place_detached(XNonce::from_slice(&nonce), b"", &mut bytes[body_at..body_end], &tag)
                .map_err(|_| AssignmentError::Decrypt("wrong key"))?;
        }
    }
    let body = &bytes[body_at..body_end];
    if body.len() < 4 {
        return Err(AssignmentError::Sizes("body too short"));
    }
    let commands_len = u32::from_be_bytes(
        body[..4]
            .try_into()
            .map_err(|_| AssignmentError::Sizes("commands length"))?,
    ) as usize;
    if commands_len > limits.max_commands || 4 + commands_len > body.len() {
        return Err(AssignmentError::Sizes("command list runs past the body"));
    }
    let commands: Vec<Command> = serde_json::from_slice(&body[4..4 + commands_len])
        .map_err(|e| AssignmentError::Malformed("commands", e.to_string()))?;
    let data = body_at + 4 + commands_len..body_end;
    if commands.len() != header.commands as usize {
        return Err(AssignmentError::Sizes("command count differs from the header"));
    }
    if data.len() as u64 != header.data_len {
        return Err(AssignmentError::Sizes("data section differs from the header"));
    }
    for (index, command) in commands.iter().enumerate() {
        let data_ref = match command {
            Command::Create { data, .. } | Command::Patch { data, .. } => data,
            _ => continue,
        };
        let end = data_ref
            .offset
            .checked_add(data_ref.len)
            .ok_or(AssignmentError::DataRange { index })?;
        if end > header.data_len {
            return Err(AssignmentError::DataRange { index });
        }
    }
    Ok(Assignment {
        header,
        commands,
        buffer: bytes,
        data,
    })
}

impl Assignment {
    /// The stored bytes a data reference points to (bounds were checked by [`decode_owned`]).
    pub fn bytes(&self, data: &DataRef) -> &[u8] {
        let start = self.data.start + data.offset as usize;
        &self.buffer[start..start + data.len as usize]
    }

    /// The whole data section.
    pub fn data(&self) -> &[u8] {
        &self.buffer[self.data.clone()]
    }
}

/// Generates a new ed25519 signing key.
pub fn generate_signing_key() -> Result<SigningKey, AssignmentError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|_| AssignmentError::Decrypt("no randomness"))?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(signing: &SigningKey, key: Option<&[u8; 32]>) -> Vec<u8> {
        let mut builder = Builder::new("a1", AssignmentKind::Publish, "www", 7, None, 1);
        builder.command(Command::Mkdir { path: "docs".into() });
        builder
            .create("docs/a.txt", Some(0o644), &b"hello ".repeat(100), true)
            .expect("create");
        builder
            .patch("b.txt", b"the old text of b", b"the new text of b")
            .expect("patch");
        builder.command(Command::Commit);
        builder.finish(signing, key).expect("finish")
    }

    #[test]
    fn round_trip_plain_and_encrypted() {
        let signing = SigningKey::from_bytes(&[9; 32]);
        let verifying = signing.verifying_key();
        let plain = decode(&sample(&signing, None), &verifying, None, &Limits::default()).expect("valid");
        assert_eq!(plain.commands.len(), 4);
        let Command::Patch { data, .. } = &plain.commands[2] else {
            panic!("patch")
        };
        let rebuilt = apply_delta(b"the old text of b", plain.bytes(data), data.size).expect("delta applies");
        assert_eq!(rebuilt, b"the new text of b");
        let key = [3u8; 32];
        let sealed = sample(&signing, Some(&key));
        assert_eq!(
            decode(&sealed, &verifying, Some(&key), &Limits::default())
                .expect("decrypts")
                .commands,
            plain.commands
        );
        assert!(matches!(
            decode(&sealed, &verifying, None, &Limits::default()),
            Err(AssignmentError::Decrypt(_))
        ));
        assert!(matches!(
            decode(&sealed, &verifying, Some(&[4; 32]), &Limits::default()),
            Err(AssignmentError::Decrypt(_))
        ));
    }

    #[test]
    fn a_flipped_bit_anywhere_is_refused() {
        let signing = SigningKey::from_bytes(&[9; 32]);
        let verifying = signing.verifying_key();
        let bytes = sample(&signing, None);
        for position in (0..bytes.len()).step_by(7) {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x01;
            assert!(
                decode(&damaged, &verifying, None, &Limits::default()).is_err(),
                "bit flip at {position} accepted"
            );
        }
        let other = SigningKey::from_bytes(&[1; 32]);
        assert_eq!(
            decode(&bytes, &other.verifying_key(), None, &Limits::default()),
            Err(AssignmentError::Signature)
        );
    }

    #[test]
    fn a_signed_but_inconsistent_assignment_is_refused() {
        // The mover's own bug (or a stolen key) must still not make a node read out of bounds.
        let signing = SigningKey::from_bytes(&[9; 32]);
        let mut builder = Builder::new("a2", AssignmentKind::Publish, "www", 1, None, 1);
        builder.command(Command::Create {
            path: "x".into(),
            mode: None,
            data: DataRef {
                offset: 10,
                len: 1 << 40,
                compression: Compression::None,
                size: 1,
                hash: String::new(),
            },
        });
        let bytes = builder.finish(&signing, None).expect("finish");
        assert_eq!(
            decode(&bytes, &signing.verifying_key(), None, &Limits::default()),
            Err(AssignmentError::DataRange { index: 0 })
        );
    }

    #[test]
    fn one_unpacker_decodes_many_files_and_refuses_a_wrong_size() {
        let mut unpacker = Unpacker::new();
        let mut out = Vec::new();
        // Large enough for the long-distance matcher, small files without it.
        for len in [100usize, 50_000, 3 << 20] {
            let old: Vec<u8> = (0..len as u32)
                .map(|n| (n.wrapping_mul(2654435761) >> 11) as u8)
                .collect();
            let mut new = old.clone();
            new[len / 2..len / 2 + 10].copy_from_slice(b"0123456789");
            let patch = delta(&old, &new).expect("delta");
            unpacker
                .apply_delta(&old, &patch, new.len() as u64, &mut out)
                .expect("applies");
            assert_eq!(out, new);
            assert!(
                unpacker
                    .apply_delta(&old, &patch, new.len() as u64 - 1, &mut out)
                    .is_err(),
                "a result longer than declared is refused"
            );
            let packed = zstd::bulk::compress(&new, 3).expect("compress");
            unpacker
                .decompress(&packed, new.len() as u64, &mut out)
                .expect("decompresses");
            assert_eq!(out, new);
            assert!(unpacker.decompress(&packed, new.len() as u64 + 1, &mut out).is_err());
        }
    }

    #[test]
    fn a_small_change_makes_a_small_delta() {
        let old: Vec<u8> = (0..2_000_000u32).flat_map(|n| n.to_le_bytes()).collect();
        let mut new = old.clone();
        new[4_000_000..4_000_100].copy_from_slice(&[0xAB; 100]);
        let delta = delta(&old, &new).expect("delta");
        assert!(
            delta.len() < 1000,
            "delta of a 100-byte change to 8 MB is {} bytes",
            delta.len()
        );
        assert_eq!(apply_delta(&old, &delta, new.len() as u64).expect("applies"), new);
    }
}
