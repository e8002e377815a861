//! Building assignments: files packed into pieces (compressed, or deltas against the node's version), and
//! the signed, optionally encrypted encoding ([`Builder::finish`]).

use super::*;

/// zstd level of whole files.
const CREATE_LEVEL: i32 = 3;

/// Files from this size on are best packed in a stream ([`Packer::whole_file`], [`Packer::delta_file`]):
/// their stored bytes go to a scratch file of their own, so that packing holds no whole copy of them.
pub const STREAM_FROM: u64 = 16 << 20;

/// A file's content made ready for an assignment: compressed, or a delta against the node's version.
/// Packing is the costly part of building an assignment, and it needs no [`Builder`], so a planner can
/// pack files on several threads and add the pieces in order.
#[derive(Debug)]
pub struct Piece {
    path: String,
    metadata: Metadata,
    /// blake3 (hex) of the file the delta applies to; `None` for a whole file.
    base_hash: Option<String>,
    stored: Stored,
    compression: Compression,
    size: u64,
    hash: String,
}

/// A piece's stored bytes.
#[derive(Debug)]
enum Stored {
    /// In memory.
    Memory(Vec<u8>),
    /// The first `len` bytes of a scratch file of the piece's own (a large file packed in a stream).
    File { file: std::fs::File, len: u64 },
}

impl Stored {
    fn len(&self) -> u64 {
        match self {
            Stored::Memory(bytes) => bytes.len() as u64,
            Stored::File { len, .. } => *len,
        }
    }

    /// Writes the bytes to `out`.
    fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        match self {
            Stored::Memory(bytes) => out.write_all(bytes),
            Stored::File { file, len } => {
                let copied = std::io::copy(&mut Section { file, at: 0, end: *len }, out)?;
                if copied != *len {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                }
                Ok(())
            }
        }
    }
}

impl Piece {
    /// Whether the piece is a delta (else the whole file).
    pub fn is_delta(&self) -> bool {
        self.base_hash.is_some()
    }

    /// Bytes the piece adds to the data section.
    pub fn stored_len(&self) -> u64 {
        self.stored.len()
    }

    /// Bytes of the file the piece makes on a node.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Counts and hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
    read: u64,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let count = self.inner.read(buf)?;
        self.hasher.update(&buf[..count]);
        self.read += count as u64;
        Ok(count)
    }
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: blake3::Hasher::new(),
            read: 0,
        }
    }

    fn hash(&self) -> String {
        self.hasher.finalize().to_hex().to_string()
    }
}

/// Bytes read from a source file at a time when packing in a stream.
const STREAM_CHUNK: usize = 1 << 20;

/// Opens `source` for reading in [`STREAM_CHUNK`]s, with its hash and length taken on the way.
fn hashing_reader(source: &std::path::Path) -> std::io::Result<Hashing<std::io::BufReader<std::fs::File>>> {
    let file = std::fs::File::open(source)?;
    Ok(Hashing::new(std::io::BufReader::with_capacity(STREAM_CHUNK, file)))
}

/// Empties `scratch` and returns a buffered writer at its start.
fn rewound(scratch: &mut std::fs::File) -> std::io::Result<std::io::BufWriter<&mut std::fs::File>> {
    use std::io::Seek;
    scratch.set_len(0)?;
    scratch.rewind()?;
    Ok(std::io::BufWriter::with_capacity(STREAM_CHUNK, scratch))
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
    pub fn whole(&mut self, path: &str, metadata: Metadata, content: &[u8], compress: bool) -> std::io::Result<Piece> {
        self.whole_owned(path, metadata, std::borrow::Cow::Borrowed(content), compress)
    }

    /// [`Packer::whole`] taking the content: when it is stored as it is, it becomes the piece's bytes
    /// without a copy (a large incompressible file is held once, not twice).
    pub fn whole_owned(
        &mut self,
        path: &str,
        metadata: Metadata,
        content: std::borrow::Cow<'_, [u8]>,
        compress: bool,
    ) -> std::io::Result<Piece> {
        let size = content.len() as u64;
        let hash = blake3::hash(&content).to_hex().to_string();
        let packed = if compress {
            Some(self.compressor.compress(&content)?)
        } else {
            None
        };
        let (stored, compression) = match packed {
            Some(packed) if packed.len() < content.len() => (packed, Compression::Zstd),
            _ => (content.into_owned(), Compression::None),
        };
        Ok(Piece {
            path: path.to_string(),
            metadata,
            base_hash: None,
            stored: Stored::Memory(stored),
            compression,
            size,
            hash,
        })
    }

    /// The whole file at `source`, packed in a stream into `scratch` (emptied first): compressed when
    /// `compress` says so and it helps, else read a second time and stored as it is. Memory holds a
    /// buffer, not the file. The size and hash are those of the bytes read for the stored copy, so a file
    /// rewritten meanwhile is carried consistently as one of its versions.
    pub fn whole_file(
        &mut self,
        path: &str,
        metadata: Metadata,
        source: &std::path::Path,
        compress: bool,
        mut scratch: std::fs::File,
    ) -> std::io::Result<Piece> {
        use std::io::Write;
        if compress {
            let mut reader = hashing_reader(source)?;
            let mut encoder = zstd::stream::write::Encoder::new(rewound(&mut scratch)?, CREATE_LEVEL)?;
            std::io::copy(&mut reader, &mut encoder)?;
            encoder.finish()?.flush()?;
            let len = scratch.metadata()?.len();
            if len < reader.read {
                return Ok(Piece {
                    path: path.to_string(),
                    metadata,
                    base_hash: None,
                    stored: Stored::File { file: scratch, len },
                    compression: Compression::Zstd,
                    size: reader.read,
                    hash: reader.hash(),
                });
            }
        }
        let mut reader = hashing_reader(source)?;
        let mut out = rewound(&mut scratch)?;
        std::io::copy(&mut reader, &mut out)?;
        out.flush()?;
        drop(out);
        Ok(Piece {
            path: path.to_string(),
            metadata,
            base_hash: None,
            stored: Stored::File {
                file: scratch,
                len: reader.read,
            },
            compression: Compression::None,
            size: reader.read,
            hash: reader.hash(),
        })
    }

    /// A zstd delta of `new` against `old` (the node holds `old`).
    pub fn delta(&mut self, path: &str, metadata: Metadata, old: &[u8], new: &[u8]) -> std::io::Result<Piece> {
        Ok(Piece {
            path: path.to_string(),
            metadata,
            base_hash: Some(blake3::hash(old).to_hex().to_string()),
            stored: Stored::Memory(delta(old, new)?),
            compression: Compression::Zstd,
            size: new.len() as u64,
            hash: blake3::hash(new).to_hex().to_string(),
        })
    }

    /// [`Packer::delta`] of the file at `source` against `old`, read in a stream and written to `scratch`
    /// (emptied first): memory holds `old` (which the caller may map from a file) and buffers, not the new
    /// file. The frame is the one [`delta`] makes, so a node applies it alike. When the delta comes out no
    /// smaller than the file itself, the file is packed whole ([`Packer::whole_file`]) instead.
    pub fn delta_file(
        &mut self,
        path: &str,
        metadata: Metadata,
        old: &[u8],
        source: &std::path::Path,
        compress: bool,
        mut scratch: std::fs::File,
    ) -> std::io::Result<Piece> {
        use std::io::Write;
        let expected = std::fs::metadata(source)?.len();
        let mut reader = hashing_reader(source)?;
        let mut encoder = zstd::stream::write::Encoder::with_ref_prefix(rewound(&mut scratch)?, DELTA_LEVEL, old)?;
        let largest = (old.len() as u64).max(expected);
        if largest >= LONG_DISTANCE_FROM as u64 {
            encoder.long_distance_matching(true)?;
        }
        encoder.window_log(window_log(usize::try_from(largest).unwrap_or(usize::MAX)))?;
        std::io::copy(&mut reader, &mut encoder)?;
        encoder.finish()?.flush()?;
        let len = scratch.metadata()?.len();
        if len >= reader.read {
            return self.whole_file(path, metadata, source, compress, scratch);
        }
        Ok(Piece {
            path: path.to_string(),
            metadata,
            base_hash: Some(blake3::hash(old).to_hex().to_string()),
            stored: Stored::File { file: scratch, len },
            compression: Compression::Zstd,
            size: reader.read,
            hash: reader.hash(),
        })
    }

    /// A changed file as a delta against `old` or whole, whichever is smaller.
    pub fn changed(
        &mut self,
        path: &str,
        metadata: Metadata,
        old: &[u8],
        new: &[u8],
        compress: bool,
    ) -> std::io::Result<Piece> {
        let delta = self.delta(path, metadata, old, new)?;
        // A delta made with the old file as reference can use the new file's own repetitions as well, so a
        // whole copy rarely beats a small one: it is only tried when the delta is over an eighth of the file.
        if delta.stored_len() <= new.len() as u64 / 8 {
            return Ok(delta);
        }
        let whole = self.whole(path, metadata, new, compress)?;
        Ok(if delta.stored_len() < whole.stored_len() {
            delta
        } else {
            whole
        })
    }
}

/// Where the data section of an assignment being built is kept.
#[derive(Debug)]
enum Data {
    /// The pieces as added, joined once, into the encoded assignment.
    Memory(Vec<Stored>),
    /// Written to a file as the pieces are added ([`Builder::spool_to`]).
    Spool(std::io::BufWriter<std::fs::File>),
}

/// Builds and signs assignments.
#[derive(Debug)]
pub struct Builder {
    header: Header,
    commands: Vec<Command>,
    data: Data,
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
            data: Data::Memory(Vec::new()),
            data_len: 0,
        }
    }

    /// From now on, writes the data section to `file` (emptied first) as pieces are added, instead of
    /// holding it: an assignment of any size is then built with the memory of one piece. Pieces added
    /// before go there too.
    pub fn spool_to(&mut self, mut file: std::fs::File) -> std::io::Result<()> {
        use std::io::Seek;
        file.set_len(0)?;
        file.rewind()?;
        let mut out = std::io::BufWriter::with_capacity(STREAM_CHUNK, file);
        if let Data::Memory(pieces) = &self.data {
            for piece in pieces {
                piece.write_to(&mut out)?;
            }
        }
        self.data = Data::Spool(out);
        Ok(())
    }

    /// Adds a packed file: a create command, or a patch, each with the file's mode and time. Fails only
    /// when the data section is spooled and its file cannot be written.
    pub fn add(&mut self, piece: Piece) -> std::io::Result<()> {
        let data = DataRef {
            offset: self.data_len,
            len: piece.stored.len(),
            compression: piece.compression,
            size: piece.size,
            hash: piece.hash,
        };
        match &mut self.data {
            Data::Memory(pieces) => pieces.push(piece.stored),
            Data::Spool(out) => piece.stored.write_to(out)?,
        }
        self.data_len += data.len;
        let Metadata { mode, mtime_ns } = piece.metadata;
        self.commands.push(match piece.base_hash {
            None => Command::Create {
                path: piece.path,
                mode,
                mtime_ns,
                data,
            },
            Some(base_hash) => Command::Patch {
                path: piece.path,
                base_hash,
                mode,
                mtime_ns,
                data,
            },
        });
        Ok(())
    }

    /// Adds a file with its full content, compressed when `compress` says so and it helps.
    pub fn create(&mut self, path: &str, mode: Option<u32>, content: &[u8], compress: bool) -> std::io::Result<()> {
        let metadata = Metadata { mode, mtime_ns: None };
        let piece = Packer::new()?.whole(path, metadata, content, compress)?;
        self.add(piece)
    }

    /// Adds a patch: a zstd delta of `new` against `old` (the node holds `old`).
    pub fn patch(&mut self, path: &str, old: &[u8], new: &[u8]) -> std::io::Result<()> {
        let piece = Packer::new()?.delta(path, Metadata::default(), old, new)?;
        self.add(piece)
    }

    /// Adds any command without data.
    pub fn command(&mut self, command: Command) {
        self.commands.push(command);
    }

    /// Commands added so far.
    pub fn commands(&self) -> usize {
        self.commands.len()
    }

    /// Encodes and signs into memory; encrypts the body with `encryption_key` when given. For small
    /// assignments (a commit, a removal, tests): a content assignment of any size goes to a file
    /// ([`Builder::finish_to_file`]).
    pub fn finish(self, signing: &SigningKey, encryption_key: Option<&[u8; 32]>) -> Result<Vec<u8>, AssignmentError> {
        let layout = self.layout(encryption_key)?;
        let total = usize::try_from(layout.total).map_err(|_| AssignmentError::TooLarge(layout.total))?;
        let mut out = Vec::with_capacity(total);
        self.encode_to(layout, &mut out, signing, encryption_key)?;
        Ok(out)
    }

    /// Encodes and signs into `file` (emptied first), in a stream: memory holds buffers, not the
    /// assignment, whatever its size (the data section is read from the spool, encrypted and hashed a
    /// chunk at a time). The file holds exactly what [`Builder::finish`] would return.
    pub fn finish_to_file(
        self,
        file: &std::fs::File,
        signing: &SigningKey,
        encryption_key: Option<&[u8; 32]>,
    ) -> Result<Encoded, AssignmentError> {
        use std::io::{Seek, Write};
        let spool_error = |e: std::io::Error| AssignmentError::Spool(e.to_string());
        let layout = self.layout(encryption_key)?;
        let mut handle = file;
        handle.set_len(0).map_err(spool_error)?;
        handle.rewind().map_err(spool_error)?;
        let mut out = std::io::BufWriter::with_capacity(STREAM_CHUNK, handle);
        let encoded = self.encode_to(layout, &mut out, signing, encryption_key)?;
        out.flush().map_err(spool_error)?;
        Ok(encoded)
    }

    /// The encoded header and commands, the nonce, and the sizes they give.
    fn layout(&self, encryption_key: Option<&[u8; 32]>) -> Result<Layout, AssignmentError> {
        let mut header = self.header.clone();
        header.commands = self.commands.len() as u32;
        header.data_len = self.data_len;
        let commands =
            serde_json::to_vec(&self.commands).map_err(|e| AssignmentError::Malformed("commands", e.to_string()))?;
        let mut nonce = [0u8; 24];
        if encryption_key.is_some() {
            getrandom::fill(&mut nonce).map_err(|_| AssignmentError::Decrypt("no randomness for a nonce"))?;
            header.encrypted = true;
            header.nonce = Some(hex::encode(nonce));
        }
        let header = serde_json::to_vec(&header).map_err(|e| AssignmentError::Malformed("header", e.to_string()))?;
        let plain_len = 4 + commands.len() as u64 + self.data_len;
        let body_len = plain_len + if encryption_key.is_some() { TAG_LEN as u64 } else { 0 };
        let total = (FIXED as u64 + header.len() as u64)
            .checked_add(body_len)
            .ok_or(AssignmentError::TooLarge(body_len))?;
        Ok(Layout {
            header,
            commands,
            nonce,
            body_len,
            total,
        })
    }

    /// Writes the assignment to `out` in a stream: the fixed parts and header, the body (commands and
    /// data, encrypted as they pass when a key is given, then the tag), the hash of all that, the
    /// signature of the hash and the end marker.
    fn encode_to(
        self,
        layout: Layout,
        out: &mut impl std::io::Write,
        signing: &SigningKey,
        encryption_key: Option<&[u8; 32]>,
    ) -> Result<Encoded, AssignmentError> {
        let spool_error = |e: std::io::Error| AssignmentError::Spool(e.to_string());
        let Layout {
            header,
            commands,
            nonce,
            body_len,
            total,
        } = layout;
        let mut sealer = Sealer::new(out, encryption_key.map(|key| (key, &nonce)));
        for part in [
            MAGIC.as_slice(),
            &(header.len() as u32).to_be_bytes(),
            &header,
            &body_len.to_be_bytes(),
        ] {
            sealer.plain(part).map_err(spool_error)?;
        }
        sealer
            .body(&(commands.len() as u32).to_be_bytes())
            .map_err(spool_error)?;
        sealer.body(&commands).map_err(spool_error)?;
        match self.data {
            Data::Memory(pieces) => {
                for piece in pieces {
                    piece.write_to(&mut sealer).map_err(spool_error)?;
                }
            }
            Data::Spool(spool) => {
                let file = spool.into_inner().map_err(|e| spool_error(e.into_error()))?;
                let copied = std::io::copy(
                    &mut Section {
                        file: &file,
                        at: 0,
                        end: self.data_len,
                    },
                    &mut sealer,
                )
                .map_err(spool_error)?;
                if copied != self.data_len {
                    return Err(spool_error(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)));
                }
            }
        }
        let (out, hash, written) = sealer.finish().map_err(spool_error)?;
        let mut trailer = Vec::with_capacity(HASH_LEN + SIGNATURE_LEN + END.len());
        trailer.extend_from_slice(hash.as_bytes());
        trailer.extend_from_slice(&signing.sign(hash.as_bytes()).to_bytes());
        trailer.extend_from_slice(END);
        out.write_all(&trailer).map_err(spool_error)?;
        let len = written + trailer.len() as u64;
        debug_assert_eq!(len, total);
        Ok(Encoded {
            len,
            hash: *hash.as_bytes(),
        })
    }
}

/// What [`Builder::finish_to_file`] wrote: its length and signed hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// Bytes of the whole assignment.
    pub len: u64,
    /// The signed blake3 hash (the one [`trailer_hash`] reads back).
    pub hash: [u8; HASH_LEN],
}

impl Encoded {
    /// The signed hash, hex: the assignment's identity end to end.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

/// The parts of an assignment that are encoded before its data, and its sizes.
struct Layout {
    header: Vec<u8>,
    commands: Vec<u8>,
    nonce: [u8; 24],
    body_len: u64,
    total: u64,
}

/// Bytes of the body encrypted at a time: a multiple of Poly1305's 16-byte block, so that only the last
/// piece is padded (as `chacha20poly1305` pads the whole ciphertext once).
const SEAL_CHUNK: usize = 64 << 10;

/// Passes an assignment on to `out` as it is encoded, hashing everything before the trailer, and
/// encrypting the body with XChaCha20-Poly1305 when given a key: the same bytes as
/// `XChaCha20Poly1305::encrypt_in_place_detached` (no associated data) over the whole body, a chunk at a
/// time (the receiver's `decrypt_stream` is the inverse).
struct Sealer<'a, W: std::io::Write> {
    out: &'a mut W,
    hasher: blake3::Hasher,
    written: u64,
    cipher: Option<(chacha20::XChaCha20, poly1305::Poly1305)>,
    /// Body bytes not yet encrypted (fewer than [`SEAL_CHUNK`]).
    pending: Vec<u8>,
    body_len: u64,
}

impl<'a, W: std::io::Write> Sealer<'a, W> {
    fn new(out: &'a mut W, key: Option<(&[u8; 32], &[u8; 24])>) -> Self {
        use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
        use poly1305::universal_hash::KeyInit as _;
        let cipher = key.map(|(key, nonce)| {
            let mut cipher = chacha20::XChaCha20::new(key.into(), nonce.into());
            // The Poly1305 key is the first 32 bytes of the keystream; the body's starts at block 1.
            let mut mac_key = [0u8; 32];
            cipher.apply_keystream(&mut mac_key);
            cipher.seek(64u64);
            (cipher, poly1305::Poly1305::new(&mac_key.into()))
        });
        Sealer {
            out,
            hasher: blake3::Hasher::new(),
            written: 0,
            cipher,
            pending: Vec::with_capacity(SEAL_CHUNK),
            body_len: 0,
        }
    }

    /// Bytes outside the body: hashed and written as they are.
    fn plain(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    /// Body bytes: buffered, then encrypted (when a key is given), hashed and written a chunk at a time.
    fn body(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        self.body_len += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (SEAL_CHUNK - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == SEAL_CHUNK {
                self.seal_pending()?;
            }
        }
        Ok(())
    }

    fn seal_pending(&mut self) -> std::io::Result<()> {
        use chacha20::cipher::StreamCipher;
        use poly1305::universal_hash::UniversalHash;
        let mut pending = std::mem::take(&mut self.pending);
        if let Some((cipher, mac)) = &mut self.cipher {
            cipher.apply_keystream(&mut pending);
            mac.update_padded(&pending);
        }
        self.plain(&pending)?;
        pending.clear();
        self.pending = pending;
        Ok(())
    }

    /// Ends the body (the tag follows it when encrypted); returns the writer, the hash of everything
    /// written and its length.
    fn finish(mut self) -> std::io::Result<(&'a mut W, blake3::Hash, u64)> {
        use poly1305::universal_hash::UniversalHash;
        self.seal_pending()?;
        if let Some((_, mac)) = self.cipher.take() {
            let mut mac = mac;
            let mut lengths = poly1305::Block::default();
            lengths[8..].copy_from_slice(&self.body_len.to_le_bytes());
            mac.update(&[lengths]);
            let tag = mac.finalize();
            self.plain(&tag)?;
        }
        Ok((self.out, self.hasher.finalize(), self.written))
    }
}

impl<W: std::io::Write> std::io::Write for Sealer<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.body(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn signing() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    /// A pseudo-random stream that does not compress (`len` bytes).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// The file contents an assignment carries, rebuilt the way a node does: whole files unpacked in a
    /// stream, patches applied to `old`.
    fn contents(assignment: &Assignment, old: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut scratch = Vec::new();
        let mut unpacker = Unpacker::new();
        assignment
            .commands
            .iter()
            .filter_map(|command| match command {
                Command::Create { path, data, .. } => {
                    let mut out = Vec::new();
                    assignment.unpack_to(data, &mut unpacker, &mut out).expect("unpacks");
                    Some((path.clone(), out))
                }
                Command::Patch { path, data, .. } => {
                    let delta = assignment.stored(data, &mut scratch).expect("stored");
                    Some((path.clone(), apply_delta(old, delta, data.size).expect("applies")))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn files_packed_in_a_stream_and_a_spooled_data_section_give_the_same_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text: Vec<u8> = b"<p>a line of a page that compresses well</p>\n".repeat(20_000);
        let random = noise(300_000, 3);
        let mut edited = random.clone();
        edited[150_000..150_050].copy_from_slice(&[0x42; 50]);
        for (name, content) in [("text", &text), ("random", &random), ("edited", &edited)] {
            std::fs::write(dir.path().join(name), content).expect("write");
        }
        let scratch = || tempfile::tempfile_in(dir.path()).expect("scratch");
        let metadata = Metadata::default();
        let pack = |packer: &mut Packer| {
            vec![
                packer
                    .whole_file("text", metadata, &dir.path().join("text"), true, scratch())
                    .expect("text"),
                packer
                    .whole_file("random", metadata, &dir.path().join("random"), true, scratch())
                    .expect("random"),
                packer
                    .delta_file("edited", metadata, &random, &dir.path().join("edited"), true, scratch())
                    .expect("edited"),
            ]
        };
        let mut packer = Packer::new().expect("packer");
        let pieces = pack(&mut packer);
        // Text compresses; noise is stored as it is (its compressed copy is no smaller); the edit is a delta.
        assert_eq!(pieces[0].compression, Compression::Zstd);
        assert!(pieces[0].stored_len() < text.len() as u64 / 10);
        assert_eq!(pieces[1].compression, Compression::None);
        assert_eq!(pieces[1].stored_len(), random.len() as u64);
        assert!(pieces[2].is_delta());
        assert!(
            pieces[2].stored_len() < 1_000,
            "delta of {} bytes",
            pieces[2].stored_len()
        );
        assert_eq!(pieces[2].hash, blake3::hash(&edited).to_hex().to_string());

        let key = [9u8; 32];
        let expected = vec![
            ("text".to_string(), text.clone()),
            ("random".to_string(), random.clone()),
            ("edited".to_string(), edited.clone()),
        ];
        // The body is longer than a sealing chunk and not a multiple of one, so the streamed encryption's
        // chunking and its padded last piece are what the in-memory decoder's AEAD checks.
        for (spooled, to_file, encryption) in [
            (false, false, None),
            (true, false, None),
            (true, false, Some(&key)),
            (true, true, None),
            (true, true, Some(&key)),
            (false, true, Some(&key)),
        ] {
            let mut builder = Builder::new("a1", AssignmentKind::Publish, "www", 1, None, 0);
            if spooled {
                builder.spool_to(scratch()).expect("spool");
            }
            for piece in pack(&mut packer) {
                builder.add(piece).expect("add");
            }
            let bytes = if to_file {
                let file = scratch();
                let encoded = builder.finish_to_file(&file, &signing(), encryption).expect("finish");
                let checked = check_file(&file, encoded.len, &signing().verifying_key(), &Limits::default())
                    .expect("the file checks");
                assert_eq!(checked.hash_hex(), encoded.hash_hex());
                let mut bytes = Vec::new();
                std::io::Seek::rewind(&mut &file).expect("rewind");
                std::io::Read::read_to_end(&mut &file, &mut bytes).expect("read");
                assert_eq!(bytes.len() as u64, encoded.len);
                assert_eq!(trailer_hash(&bytes), Some(encoded.hash_hex()));
                bytes
            } else {
                builder.finish(&signing(), encryption).expect("finish")
            };
            let assignment =
                decode(&bytes, &signing().verifying_key(), encryption, &Limits::default()).expect("verifies");
            assert_eq!(
                contents(&assignment, &random),
                expected,
                "spooled {spooled}, to a file {to_file}, encrypted {encryption:?}"
            );
        }
    }

    #[test]
    fn a_delta_no_smaller_than_the_file_is_sent_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let new = noise(200_000, 5);
        std::fs::write(dir.path().join("f"), &new).expect("write");
        let unrelated = noise(200_000, 11);
        let piece = Packer::new()
            .expect("packer")
            .delta_file(
                "f",
                Metadata::default(),
                &unrelated,
                &dir.path().join("f"),
                true,
                tempfile::tempfile_in(dir.path()).expect("scratch"),
            )
            .expect("packs");
        assert!(!piece.is_delta());
        assert_eq!(piece.stored_len(), new.len() as u64);
    }

    #[test]
    fn pieces_added_before_the_data_section_is_spooled_go_to_the_spool_too() {
        let mut memory = Builder::new("a1", AssignmentKind::Publish, "www", 1, None, 0);
        let mut spooled = Builder::new("a1", AssignmentKind::Publish, "www", 1, None, 0);
        for builder in [&mut memory, &mut spooled] {
            builder.create("a", Some(0o644), b"first file", true).expect("a");
        }
        spooled.spool_to(tempfile::tempfile().expect("scratch")).expect("spool");
        for builder in [&mut memory, &mut spooled] {
            builder.create("b", Some(0o644), b"second file", false).expect("b");
        }
        let decoded: Vec<Vec<(String, Vec<u8>)>> = [memory, spooled]
            .into_iter()
            .map(|builder| {
                let bytes = builder.finish(&signing(), None).expect("finish");
                let assignment =
                    decode(&bytes, &signing().verifying_key(), None, &Limits::default()).expect("verifies");
                contents(&assignment, b"")
            })
            .collect();
        assert_eq!(decoded[0], decoded[1]);
        assert_eq!(decoded[1][1], ("b".to_string(), b"second file".to_vec()));
    }

    #[test]
    fn an_assignment_written_to_a_file_is_the_one_finish_returns() {
        let build = || {
            let mut builder = Builder::new("a1", AssignmentKind::Publish, "www", 3, None, 17);
            builder.create("a", Some(0o644), &noise(100_000, 1), true).expect("a");
            builder.command(Command::Remove { path: "old".into() });
            builder
        };
        let memory = build().finish(&signing(), None).expect("finish");
        let file = tempfile::tempfile().expect("file");
        // A file holding something longer is emptied first.
        std::fs::File::set_len(&file, 1 << 20).expect("grow");
        let encoded = build().finish_to_file(&file, &signing(), None).expect("finish");
        let mut written = Vec::new();
        std::io::Seek::rewind(&mut &file).expect("rewind");
        std::io::Read::read_to_end(&mut &file, &mut written).expect("read");
        assert!(
            written == memory,
            "{} bytes written, {} returned",
            written.len(),
            memory.len()
        );
        assert_eq!(encoded.len, memory.len() as u64);
    }
}
