//! The disk tier's files: one file per stored variant, named by its object id, written to a temp file and
//! renamed into place so a reader or a restart never finds half an object.
//!
//! Layout of `objects/<first two hex digits>/<object id hex>.obj`:
//!
//! ```text
//! "TERNOBJ\x01"  body length (u64 LE)  body  meta record  meta length (u32 LE)  blake3(meta)  "TERNEND\x01"
//! ```
//!
//! The trailer lets start-up read each object's record without touching its body; the record carries the
//! body's blake3, which is checked the first time the body is served after a restart. A 304 refresh or a
//! soft purge rewrites only the record and trailer after the body.
//!
//! Everything here is blocking file I/O; the store calls it from `spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::key::ObjectId;
use crate::meta::{MAX_META_LEN, Meta};

const HEAD_MAGIC: &[u8; 8] = b"TERNOBJ\x01";
const TAIL_MAGIC: &[u8; 8] = b"TERNEND\x01";
/// Bytes before the body.
pub const HEAD_LEN: u64 = 16;
/// Bytes of the trailer after the record.
const TRAILER_LEN: u64 = 4 + 32 + 8;

/// The directory of the disk tier.
#[derive(Debug)]
pub struct DiskTier {
    objects: PathBuf,
    temp: PathBuf,
    next_temp: AtomicU64,
}

/// An object found on disk at start-up.
#[derive(Debug)]
pub struct Found {
    /// Its id, from the file name.
    pub id: ObjectId,
    /// Its record.
    pub meta: Meta,
    /// Bytes the file takes.
    pub file_len: u64,
}

impl DiskTier {
    /// Opens (creating if needed) the tier under `root`, clearing temp files a crash left behind.
    pub fn open(root: &Path) -> io::Result<Self> {
        let objects = root.join("objects");
        let temp = root.join("tmp");
        fs::create_dir_all(&objects)?;
        if temp.exists() {
            fs::remove_dir_all(&temp)?;
        }
        fs::create_dir_all(&temp)?;
        Ok(DiskTier {
            objects,
            temp,
            next_temp: AtomicU64::new(0),
        })
    }

    /// Path of an object's file.
    pub fn object_path(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        self.objects.join(&hex[..2]).join(format!("{hex}.obj"))
    }

    /// A fresh temp file path for an object being written.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        self.temp.join(format!("{}-{n}.part", std::process::id()))
    }

    /// Reads every object's record. Files that are damaged or half-written are deleted and reported in
    /// the second list.
    pub fn scan(&self) -> io::Result<(Vec<Found>, Vec<PathBuf>)> {
        let mut found = Vec::new();
        let mut dropped = Vec::new();
        for shard in fs::read_dir(&self.objects)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let path = entry?.path();
                let id = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".obj"))
                    .and_then(ObjectId::from_hex);
                let loaded = id.map(|id| (id, read_record(&path)));
                match loaded {
                    Some((id, Ok((meta, file_len)))) => found.push(Found { id, meta, file_len }),
                    _ => {
                        let _ = fs::remove_file(&path);
                        dropped.push(path);
                    }
                }
            }
        }
        Ok((found, dropped))
    }

    /// Moves a finished temp file into place.
    pub fn commit(&self, temp: &Path, id: &ObjectId) -> io::Result<()> {
        let path = self.object_path(id);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::rename(temp, path)
    }

    /// Replaces the record of a stored object (304 refresh, soft purge), if the file still holds the body
    /// the record describes. Returns the new file length.
    pub fn rewrite_record(&self, id: &ObjectId, meta: &Meta) -> io::Result<u64> {
        let path = self.object_path(id);
        let (current, _) = read_record(&path)?;
        if current.body_hash != meta.body_hash || current.body_len != meta.body_len {
            return Err(io::Error::other("object was replaced meanwhile"));
        }
        let mut file = OpenOptions::new().write(true).open(&path)?;
        file.set_len(HEAD_LEN + meta.body_len)?;
        file.seek(SeekFrom::End(0))?;
        write_record(&mut file, meta)?;
        Ok(HEAD_LEN + meta.body_len + meta.encode().len() as u64 + TRAILER_LEN)
    }

    /// Deletes an object's file; a missing file is not an error.
    pub fn remove(&self, id: &ObjectId) {
        let _ = fs::remove_file(self.object_path(id));
    }

    /// Checks that the body on disk hashes to the record's hash.
    pub fn verify_body(&self, id: &ObjectId, meta: &Meta) -> io::Result<bool> {
        let mut file = File::open(self.object_path(id))?;
        file.seek(SeekFrom::Start(HEAD_LEN))?;
        let mut hasher = blake3::Hasher::new();
        let copied = io::copy(&mut file.take(meta.body_len), &mut hasher)?;
        Ok(copied == meta.body_len && *hasher.finalize().as_bytes() == meta.body_hash)
    }
}

/// Bytes a file of this record and body takes.
pub fn file_len(meta: &Meta) -> u64 {
    HEAD_LEN + meta.body_len + meta.encode().len() as u64 + TRAILER_LEN
}

/// The head written before the body (the length is patched in by [`finish_file`]).
pub fn head(body_len: u64) -> [u8; HEAD_LEN as usize] {
    let mut head = [0u8; HEAD_LEN as usize];
    head[..8].copy_from_slice(HEAD_MAGIC);
    head[8..].copy_from_slice(&body_len.to_le_bytes());
    head
}

/// Appends the record and trailer after the body and patches the head's body length.
pub fn finish_file(file: &mut File, meta: &Meta) -> io::Result<()> {
    write_record(file, meta)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&head(meta.body_len))?;
    file.flush()
}

fn write_record(file: &mut File, meta: &Meta) -> io::Result<()> {
    let record = meta.encode();
    let mut tail = Vec::with_capacity(record.len() + TRAILER_LEN as usize);
    tail.extend_from_slice(&record);
    tail.extend_from_slice(&(record.len() as u32).to_le_bytes());
    tail.extend_from_slice(blake3::hash(&record).as_bytes());
    tail.extend_from_slice(TAIL_MAGIC);
    file.write_all(&tail)
}

fn read_record(path: &Path) -> io::Result<(Meta, u64)> {
    let damaged = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()));
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    if file_len < HEAD_LEN + TRAILER_LEN {
        return Err(damaged("too short"));
    }
    let mut head = [0u8; HEAD_LEN as usize];
    file.read_exact(&mut head)?;
    if &head[..8] != HEAD_MAGIC {
        return Err(damaged("bad head"));
    }
    let body_len = u64::from_le_bytes(head[8..].try_into().map_err(|_| damaged("bad head"))?);
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.seek(SeekFrom::End(-(TRAILER_LEN as i64)))?;
    file.read_exact(&mut trailer)?;
    if &trailer[36..] != TAIL_MAGIC {
        return Err(damaged("bad trailer"));
    }
    let record_len = u32::from_le_bytes(trailer[..4].try_into().map_err(|_| damaged("bad trailer"))?) as u64;
    if record_len as usize > MAX_META_LEN || HEAD_LEN + body_len + record_len + TRAILER_LEN != file_len {
        return Err(damaged("lengths disagree"));
    }
    let mut record = vec![0u8; record_len as usize];
    file.seek(SeekFrom::Start(HEAD_LEN + body_len))?;
    file.read_exact(&mut record)?;
    if blake3::hash(&record).as_bytes() != &trailer[4..36] {
        return Err(damaged("record checksum"));
    }
    let meta = Meta::decode(&record).map_err(|e| damaged(&e.to_string()))?;
    if meta.body_len != body_len {
        return Err(damaged("body length"));
    }
    Ok((meta, file_len))
}
