//! Assignments (seed `004_1419c51402506f7e.txt`): the unit of work the content mover sends to nodes. An
//! assignment carries a header (id, kind, site, sequence, sizes), an ordered list of commands (mkdir,
//! create, patch from a delta, copy, symlink, set-metadata, chmod, remove, rename, commit, rollback), a
//! data section the commands point into, and a trailer: the blake3 hash of everything before it, signed by
//! the mover with ed25519. The commands and data may be encrypted with XChaCha20-Poly1305.
//!
//! Layout (all integers big-endian; the format is documented in `docs/assignment-format.md`):
//!
//! ```text
//! "TERNASG2"  header length (u32)  header (JSON)  body length (u64)  body  blake3 (32)  ed25519 signature (64)  "TERNEND1"
//! body = commands length (u32)  commands (JSON)  data          (encrypted as a whole when the header says so)
//! ```
//!
//! The digit of the magic is the format version ([`FORMAT_VERSION`]). Version 2 carries a faithful tree:
//! modes and modification times on every entry, directories with their mode (also empty ones), symbolic
//! links, metadata-only changes, and copies of content the node already holds. A version-1 assignment is
//! refused with [`AssignmentError::OtherVersion`] rather than read: it cannot say what version 2 says, and a
//! mover and its nodes run the same release.
//!
//! [`decode`] checks the magic, the sizes, the hash and the signature before it parses anything, and then
//! checks every declared size against what is there. Nothing in an assignment is trusted before that.
//!
//! A node never holds a whole assignment in memory: it writes what arrives to a spool file while a
//! [`StreamCheck`] hashes it (refusing a wrong magic or an oversized stream at once), checks the signed hash
//! at the end, and then [`open_spooled`] reads the header and commands from the file and leaves the data
//! section there (an encrypted body is decrypted in a stream into a second file, its tag checked).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

mod build;
mod spooled;

pub use build::{Builder, Encoded, Packer, Piece, STREAM_FROM, delta};
pub use spooled::{Checked, StreamCheck, check_file, open_spooled, trailer_hash};
use spooled::{read_at, read_exact_at};

/// The version of the format this code writes and reads (the last byte of the magic).
pub const FORMAT_VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"TERNASG2";
/// The magic's first seven bytes, shared by every version.
const MAGIC_STEM: &[u8; 7] = b"TERNASG";
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
    /// The version the commands apply to, as its sequence in decimal (`"7"`): a node whose live version
    /// is another refuses the assignment rather than apply changes to a tree they were not planned
    /// against. None for a full copy, a site's first version, and an assignment without content (seed 004:
    /// the interpreter works on the version the assignment was made for).
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

impl Header {
    /// The encryption's nonce, 24 bytes from [`Header::nonce`]'s hex; [`AssignmentError::Decrypt`] when it
    /// is missing or not 24 bytes.
    pub fn nonce_bytes(&self) -> Result<[u8; 24], AssignmentError> {
        self.nonce
            .as_deref()
            .and_then(|n| hex::decode(n).ok())
            .and_then(|n| <[u8; 24]>::try_from(n).ok())
            .ok_or(AssignmentError::Decrypt("missing nonce"))
    }
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

/// A mode and a modification time, as commands carry them (either may be absent: left as it is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Unix permission bits (`0o7777`).
    pub mode: Option<u32>,
    /// Modification time, nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: Option<i64>,
}

/// One command of an assignment. Paths are relative to the site root, with `/` separators; the empty path
/// names the root itself (only `set-metadata` takes it). `mode` is the Unix permission bits (`0o7777`),
/// `mtime_ns` the modification time in nanoseconds since the Unix epoch; an absent one leaves the node's
/// default (a new entry) or what the entry has. A node applies a directory's mode and time after the
/// assignment's other commands, since writing into a directory changes its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Make a directory (and its parents), or give an existing one this mode and time.
    Mkdir {
        /// Path.
        path: String,
        /// Permission bits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// Modification time (ns since the epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<i64>,
    },
    /// Create or replace a file with the bytes in `data`.
    Create {
        /// Path.
        path: String,
        /// Permission bits.
        mode: Option<u32>,
        /// Modification time (ns since the epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<i64>,
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
        /// Permission bits (absent: the old file's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// Modification time (ns since the epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<i64>,
        /// The delta; `size` and `hash` describe the result.
        data: DataRef,
    },
    /// Create or replace the file at `to` with the content of the file the node's current version holds at
    /// `from` (its live tree, which the assignment is planned against), whose blake3 is `hash`: content the
    /// node has already, moved or duplicated, costs no data.
    Copy {
        /// Path in the current version.
        from: String,
        /// Path in the new version.
        to: String,
        /// blake3 (hex) of the content.
        hash: String,
        /// Permission bits (absent: the source's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// Modification time (absent: the source's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<i64>,
    },
    /// Create or replace a symbolic link. The target must stay inside the site root (relative, and never
    /// above the root resolved lexically from the link's directory: `tern_tree::check_link`).
    Symlink {
        /// Path of the link.
        path: String,
        /// What it points to, as stored in the link.
        target: String,
        /// The link's own modification time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<i64>,
    },
    /// Change only the mode and time of an existing entry (a `chmod`, a `touch`); a link's mode is ignored.
    SetMetadata {
        /// Path (empty: the root).
        path: String,
        /// Permission bits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// Modification time (ns since the epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtime_ns: Option<i64>,
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
    /// Make the backup the live site again. The node switches only when its backup is the version the
    /// header names (`header.sequence`).
    Rollback,
    /// Check, changing nothing, that the node's backup is the version the header names: phase one of a
    /// rollback, so that no node switches back unless every node can (seed 004's two-phase commit).
    CheckBackup,
}

/// A verified, decrypted assignment.
#[derive(Debug)]
pub struct Assignment {
    /// Its header.
    pub header: Header,
    /// Its commands, in order.
    pub commands: Vec<Command>,
    /// Where its data section is.
    data: DataSection,
}

/// Where an assignment's data section is.
#[derive(Debug)]
enum DataSection {
    /// In the assignment as received (decrypted in place), at `range`.
    Memory {
        buffer: Vec<u8>,
        range: std::ops::Range<usize>,
    },
    /// In a file (the spool, or the decrypted body beside it): `len` bytes from `offset`.
    File { file: std::fs::File, offset: u64, len: u64 },
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
    /// An assignment in another version of the format.
    #[error(
        "assignment format version {0} is not read here (this node reads version {FORMAT_VERSION}): run the same tern release on the mover and its nodes"
    )]
    OtherVersion(u8),
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
    /// The spool file holding the assignment could not be read or written (disk full, removed).
    #[error("assignment spool: {0}; check the node's disk")]
    Spool(String),
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
    /// Content passed on a [`STREAM_READ`] at a time by [`Assignment::unpack_to`] (`std::io::copy` goes
    /// 8 KiB at a time through a writer it cannot see into: a read from the spool and a hash update each),
    /// sized on first use.
    copy_buffer: Vec<u8>,
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
            copy_buffer: Vec::new(),
        }
    }

    /// Applies a delta made by [`delta`] to `old` into `out` (replacing its contents); a result of any
    /// size other than `size` is refused. (A raw-content dictionary is decoded exactly as the reference
    /// prefix the delta was made with.)
    pub fn apply_delta(&mut self, old: &[u8], delta: &[u8], size: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
        Self::prepare(out, size)?;
        let result = self.context.decompress_using_dict(out, delta, old);
        Self::finish(result, out, size)
    }

    /// The context for one streamed frame: any window the mover's compressor chose (up to zstd's largest),
    /// since a file packed in a stream may be larger than memory. Whatever a frame that failed mid-way left
    /// in it is discarded first (zstd takes parameters only between frames).
    fn stream_context<'c>(
        context: &'c mut zstd::zstd_safe::DCtx<'static>,
    ) -> std::io::Result<&'c mut zstd::zstd_safe::DCtx<'static>> {
        let error = |code| invalid(zstd::zstd_safe::get_error_name(code));
        context
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(error)?;
        context
            .set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(31))
            .map_err(error)?;
        Ok(context)
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

/// Stored bytes read from a spool at a time while a zstd frame is decoded in a stream (zstd's own input
/// block size).
const STREAM_READ: usize = 128 << 10;

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
    if bytes.len() >= 8 && &bytes[..7] == MAGIC_STEM && bytes[7] != MAGIC[7] && bytes[7].is_ascii_digit() {
        return Err(AssignmentError::OtherVersion(bytes[7] - b'0'));
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
    if (body_at as u64).checked_add(body_len) != Some(signed_end as u64) {
        return Err(AssignmentError::Sizes("body length"));
    }
    let mut body_end = signed_end;
    match (header.encrypted, decryption_key) {
        (false, _) => {}
        (true, None) => return Err(AssignmentError::Decrypt("encrypted and this node has no key")),
        (true, Some(key)) => {
            let nonce = header.nonce_bytes()?;
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
    check_commands(&header, &commands, data.len() as u64)?;
    Ok(Assignment {
        header,
        commands,
        data: DataSection::Memory {
            buffer: bytes,
            range: data,
        },
    })
}

/// Checks the command list against the header and the data section: the count, the length, and that
/// every data reference lies inside.
fn check_commands(header: &Header, commands: &[Command], data_len: u64) -> Result<(), AssignmentError> {
    if commands.len() != header.commands as usize {
        return Err(AssignmentError::Sizes("command count differs from the header"));
    }
    if data_len != header.data_len {
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
    Ok(())
}

impl Assignment {
    /// The stored bytes `data` points to (bounds were checked when the assignment was decoded): borrowed
    /// from memory, or read from the spool file into `scratch`. Errors only when the file cannot be read.
    pub fn stored<'a>(&'a self, data: &DataRef, scratch: &'a mut Vec<u8>) -> std::io::Result<&'a [u8]> {
        match &self.data {
            DataSection::Memory { buffer, range } => {
                let start = range.start + data.offset as usize;
                Ok(&buffer[start..start + data.len as usize])
            }
            DataSection::File { file, offset, .. } => {
                let len = usize::try_from(data.len).map_err(|_| std::io::Error::other("data reference too large"))?;
                scratch.clear();
                scratch
                    .try_reserve(len)
                    .map_err(|_| std::io::Error::other("data reference too large"))?;
                scratch.resize(len, 0);
                read_exact_at(file, scratch, offset.saturating_add(data.offset))?;
                Ok(scratch)
            }
        }
    }

    /// Writes the file content of a create command's `data` to `out` as it is unpacked, without holding it
    /// (memory stays bounded whatever the file's size: the stored bytes are read from the spool in chunks
    /// and a zstd frame is decoded in a stream, with `unpacker`'s context: one for a whole assignment of
    /// any number of files). The content is checked on the way against its declared size (more is refused
    /// at once) and at the end against its blake3 hash: an error of kind `InvalidData` then, after which
    /// what `out` received must be thrown away; other errors are `out`'s or the spool's.
    pub fn unpack_to(
        &self,
        data: &DataRef,
        unpacker: &mut Unpacker,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        let stored: Box<dyn std::io::Read + '_> = match &self.data {
            DataSection::Memory { buffer, range } => {
                let start = range.start + data.offset as usize;
                Box::new(&buffer[start..start + data.len as usize])
            }
            DataSection::File { file, offset, .. } => {
                let at = offset.saturating_add(data.offset);
                Box::new(Section {
                    file,
                    at,
                    end: at.saturating_add(data.len),
                })
            }
        };
        let mut checked = CheckedWriter {
            out,
            hasher: blake3::Hasher::new(),
            written: 0,
            size: data.size,
        };
        match data.compression {
            Compression::None => {
                let mut stored = stored;
                copy(&mut stored, &mut checked, &mut unpacker.copy_buffer)?;
            }
            Compression::Zstd => {
                let stored = std::io::BufReader::with_capacity(STREAM_READ, stored);
                // The unpacker's context, its session reset: no context made (and the CPU probed) per file.
                let Unpacker { context, copy_buffer } = unpacker;
                let mut decoder = zstd::stream::read::Decoder::with_context(stored, Unpacker::stream_context(context)?)
                    .single_frame();
                copy(&mut decoder, &mut checked, copy_buffer)?;
            }
        }
        if checked.written != data.size || checked.hasher.finalize().to_hex().as_str() != data.hash {
            return Err(invalid("content differs from its declared size and hash"));
        }
        Ok(())
    }

    /// Bytes of the data section.
    pub fn data_len(&self) -> u64 {
        match &self.data {
            DataSection::Memory { range, .. } => range.len() as u64,
            DataSection::File { len, .. } => *len,
        }
    }
}

/// Copies `from` to `to` until the end of `from`, [`STREAM_READ`] bytes at a time through `buffer` (sized
/// on first use).
fn copy(from: &mut impl std::io::Read, to: &mut impl std::io::Write, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    buffer.resize(STREAM_READ, 0);
    loop {
        let count = match from.read(buffer) {
            Ok(0) => return Ok(()),
            Ok(count) => count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        to.write_all(&buffer[..count])?;
    }
}

/// `end - at` bytes of a file from `at`, read in place (positioned reads: the file's cursor is not used).
struct Section<'a> {
    file: &'a std::fs::File,
    at: u64,
    end: u64,
}

impl std::io::Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.at);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = read_at(self.file, &mut buf[..want], self.at)?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// Passes content on to `out`, hashing and counting it, and refuses any byte past the declared `size`.
struct CheckedWriter<'a> {
    out: &'a mut dyn std::io::Write,
    hasher: blake3::Hasher,
    written: u64,
    size: u64,
}

impl std::io::Write for CheckedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.size {
            return Err(invalid("decoded content is larger than its declared size"));
        }
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Bytes after the signed part: the hash, the signature and the end marker.
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
        builder.command(Command::Mkdir {
            path: "docs".into(),
            mode: Some(0o700),
            mtime_ns: Some(-5),
        });
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
    fn the_tree_commands_round_trip_and_an_old_version_is_refused_by_name() {
        let signing = SigningKey::from_bytes(&[9; 32]);
        let mut builder = Builder::new("t", AssignmentKind::Publish, "www", 2, None, 1);
        let commands = vec![
            Command::SetMetadata {
                path: String::new(),
                mode: Some(0o755),
                mtime_ns: Some(1_700_000_000_000_000_001),
            },
            Command::Copy {
                from: "old name.bin".into(),
                to: "new name.bin".into(),
                hash: "ab".into(),
                mode: Some(0o644),
                mtime_ns: Some(7),
            },
            Command::Symlink {
                path: "latest".into(),
                target: "v2".into(),
                mtime_ns: None,
            },
        ];
        for command in &commands {
            builder.command(command.clone());
        }
        let bytes = builder.finish(&signing, None).expect("finish");
        assert_eq!(&bytes[..8], b"TERNASG2");
        let decoded = decode(&bytes, &signing.verifying_key(), None, &Limits::default()).expect("valid");
        assert_eq!(decoded.commands, commands);
        let json = serde_json::to_string(&commands[2]).expect("json");
        assert_eq!(
            json, r#"{"op":"symlink","path":"latest","target":"v2"}"#,
            "absent fields are left out"
        );

        let mut old = bytes.clone();
        old[7] = b'1';
        let refused = decode(&old, &signing.verifying_key(), None, &Limits::default()).expect_err("old");
        assert_eq!(refused, AssignmentError::OtherVersion(1));
        assert!(refused.to_string().contains("format version 1"), "{refused}");
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
        let mut scratch = Vec::new();
        let stored = plain.stored(data, &mut scratch).expect("in memory");
        let rebuilt = apply_delta(b"the old text of b", stored, data.size).expect("delta applies");
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

    /// Streams `bytes` through a [`StreamCheck`] in chunks of `chunk` bytes into a spool file, then opens it.
    fn spooled(
        bytes: &[u8],
        chunk: usize,
        mover: &VerifyingKey,
        key: Option<&[u8; 32]>,
    ) -> Result<Assignment, AssignmentError> {
        use std::io::Write;
        let limits = Limits::default();
        let mut check = StreamCheck::new(&limits);
        let mut spool = tempfile::tempfile().expect("spool");
        for piece in bytes.chunks(chunk.max(1)) {
            check.push(piece)?;
            spool.write_all(piece).expect("write");
        }
        let checked = check.finish(mover)?;
        assert_eq!(checked.len(), bytes.len() as u64);
        assert_eq!(Some(checked.hash_hex()), trailer_hash(bytes));
        open_spooled(spool, &checked, key, &limits, tempfile::tempfile)
    }

    fn contents(assignment: &Assignment) -> Vec<Vec<u8>> {
        let mut scratch = Vec::new();
        assignment
            .commands
            .iter()
            .filter_map(|command| match command {
                Command::Create { data, .. } | Command::Patch { data, .. } => {
                    Some(assignment.stored(data, &mut scratch).expect("read").to_vec())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_create_unpacks_in_a_stream_from_the_spool_and_a_wrong_size_or_hash_is_refused() {
        let signing = SigningKey::from_bytes(&[9; 32]);
        // 3 MB compressible and 300 KB incompressible: a zstd frame and a stored file, each read from the
        // spool in chunks.
        let compressible = b"tern streams ".repeat(240_000);
        let random: Vec<u8> = (0..300_000u32)
            .map(|n| (n.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut builder = Builder::new("u", AssignmentKind::Publish, "www", 1, None, 1);
        builder.create("big.txt", None, &compressible, true).expect("create");
        builder.create("noise.bin", None, &random, true).expect("create");
        let bytes = builder.finish(&signing, None).expect("finish");
        // One unpacker for every file of both assignments, as a node uses one per assignment.
        let mut unpacker = Unpacker::new();
        for assignment in [
            spooled(&bytes, 64 * 1024, &signing.verifying_key(), None).expect("spooled"),
            decode(&bytes, &signing.verifying_key(), None, &Limits::default()).expect("in memory"),
        ] {
            let datas: Vec<DataRef> = assignment
                .commands
                .iter()
                .filter_map(|command| match command {
                    Command::Create { data, .. } => Some(data.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(datas[0].compression, Compression::Zstd);
            for (data, expected) in datas.iter().zip([&compressible, &random]) {
                let mut out = Vec::new();
                assignment.unpack_to(data, &mut unpacker, &mut out).expect("unpacks");
                assert_eq!(&out, expected);
                let mut short = data.clone();
                short.size -= 1;
                let error = assignment
                    .unpack_to(&short, &mut unpacker, &mut Vec::new())
                    .expect_err("larger than declared");
                assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
                let mut other = data.clone();
                other.hash = blake3::hash(b"something else").to_hex().to_string();
                let error = assignment
                    .unpack_to(&other, &mut unpacker, &mut Vec::new())
                    .expect_err("another hash");
                assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
                if data.compression == Compression::Zstd {
                    let mut cut = data.clone();
                    cut.len -= 16;
                    assignment
                        .unpack_to(&cut, &mut unpacker, &mut Vec::new())
                        .expect_err("a truncated frame");
                }
                // The context a failed frame left mid-way serves the next file whole.
                let mut again = Vec::new();
                assignment
                    .unpack_to(data, &mut unpacker, &mut again)
                    .expect("unpacks again");
                assert_eq!(&again, expected);
            }
        }
    }

    #[test]
    fn a_spooled_assignment_reads_as_the_one_in_memory_in_any_chunking() {
        let signing = SigningKey::from_bytes(&[9; 32]);
        let verifying = signing.verifying_key();
        let key = [3u8; 32];
        for encryption in [None, Some(&key)] {
            let bytes = sample(&signing, encryption);
            let in_memory = decode(&bytes, &verifying, encryption, &Limits::default()).expect("valid");
            for chunk in [1, 7, 103, 104, 105, 4096, bytes.len()] {
                let from_file = spooled(&bytes, chunk, &verifying, encryption).expect("valid spool");
                assert_eq!(from_file.header, in_memory.header);
                assert_eq!(from_file.commands, in_memory.commands);
                assert_eq!(from_file.data_len(), in_memory.data_len());
                assert_eq!(contents(&from_file), contents(&in_memory), "chunks of {chunk}");
            }
        }
        let sealed = sample(&signing, Some(&key));
        assert_eq!(
            spooled(&sealed, 64, &verifying, Some(&[4; 32])).expect_err("wrong key"),
            AssignmentError::Decrypt("wrong key")
        );
        assert!(matches!(
            spooled(&sealed, 64, &verifying, None),
            Err(AssignmentError::Decrypt(_))
        ));
    }

    #[test]
    fn a_stream_is_refused_for_the_reason_a_buffer_is() {
        let signing = SigningKey::from_bytes(&[9; 32]);
        let verifying = signing.verifying_key();
        let bytes = sample(&signing, None);
        for position in (0..bytes.len()).step_by(5) {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x01;
            let buffered = decode(&damaged, &verifying, None, &Limits::default()).expect_err("damaged");
            let streamed = spooled(&damaged, 13, &verifying, None).expect_err("damaged");
            assert_eq!(streamed, buffered, "bit flip at {position}");
        }
        let short = [MAGIC.as_slice(), b" not really"].concat();
        assert_eq!(
            spooled(&short, 4, &verifying, None).expect_err("short"),
            AssignmentError::NotAnAssignment("bad magic or too short")
        );
        let mut older = bytes.clone();
        older[7] = b'1';
        assert_eq!(
            spooled(&older, 3, &verifying, None).expect_err("older"),
            decode(&older, &verifying, None, &Limits::default()).expect_err("older"),
            "another version is named as such"
        );
        let mut check = StreamCheck::new(&Limits::default());
        assert_eq!(
            check.push(b"GET / HTTP/1.1"),
            Err(AssignmentError::NotAnAssignment("bad magic or too short")),
            "refused at the first bytes"
        );
        let small = Limits {
            max_total: 100,
            ..Limits::default()
        };
        let mut check = StreamCheck::new(&small);
        assert_eq!(check.push(&bytes[..64]), Ok(()));
        assert_eq!(
            check.push(&bytes[64..128]),
            Err(AssignmentError::TooLarge(128)),
            "refused as soon as it grows over the limit"
        );
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
            decode(&bytes, &other.verifying_key(), None, &Limits::default()).expect_err("foreign"),
            AssignmentError::Signature
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
            mtime_ns: None,
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
            decode(&bytes, &signing.verifying_key(), None, &Limits::default()).expect_err("inconsistent"),
            AssignmentError::DataRange { index: 0 }
        );
    }

    #[test]
    fn one_unpacker_applies_deltas_to_many_files_and_refuses_a_wrong_size() {
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
