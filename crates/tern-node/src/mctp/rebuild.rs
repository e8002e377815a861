//! The member's deferred rebuild (seed `004_1419c51402506f7e.txt`, "local distribution": a member holds
//! the assignment once it has every frame; with the erasure code of [`super::parity`], once it holds as
//! many frames of every block as the block has source frames). The [`super::Receiver`] core reports
//! "complete" at that moment and hands on a [`RebuildPlan`]: per block that lost source frames, which
//! ones, and the parity frames its sink holds for them. The node then walks the spooled assignment once,
//! in order, in chunks of whole blocks ([`rebuild`]): it rebuilds each planned block from the chunk it
//! read and the block's parity frames, writes the rebuilt frames back, and passes every chunk on (to the
//! signed hash's check), so the read that verifies the assignment is the read that rebuilds it.
//!
//! Why not rebuild each block as its parity frames arrive: with 32 members sharing two cores, reading
//! each block back, decoding and writing while the GL sends the repair pass slowed the pass (and every
//! member's status report) by most of the pass's own time. Decoding after the session costs no more
//! (the verifying read is there anyway) and leaves the session to the network.

use std::io;

use tern_wire::mctp::Announcement;

use super::parity::{BlockDecoder, CodingError};

/// Bytes read at a time, rounded down to whole blocks (at least one block).
const CHUNK: usize = 1 << 20;

/// A parity frame a member holds: its number in the block and where its [`super::Sink`] put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldParity {
    /// The parity frame's number in its block.
    pub number: u16,
    /// What [`super::Sink::hold_parity`] returned for it.
    pub handle: u64,
}

/// One block that lost source frames, and the parity frames that rebuild them (as many as it lost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRebuild {
    /// The block's number.
    pub block: u32,
    /// The source frames lost, by index in the block, ascending.
    pub lost: Vec<u32>,
    /// Parity frames held for it: at least as many as `lost`.
    pub parity: Vec<HeldParity>,
}

/// What a member must rebuild of a session's assignment before it is whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildPlan {
    /// The session's announcement: the assignment's size and its frame and block geometry.
    pub announcement: Announcement,
    /// The blocks to rebuild, ascending.
    pub blocks: Vec<BlockRebuild>,
}

impl RebuildPlan {
    /// Source frames to rebuild, all blocks together.
    pub fn frames(&self) -> u64 {
        self.blocks.iter().map(|block| block.lost.len() as u64).sum()
    }
}

/// Where [`rebuild`] reads and writes: the spooled assignment and the parity frames held.
pub trait RebuildIo {
    /// Reads `buf.len()` bytes of the assignment at `offset` (slots of lost frames read as anything).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes rebuilt bytes of the assignment at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Reads the parity frame held under `handle` into `buf` (the announcement's parity length).
    fn read_parity(&mut self, handle: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// Why a rebuild failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The spool could not be read or written.
    #[error("spool file: {0}; check the node's disk")]
    Io(#[from] io::Error),
    /// A planned block could not be decoded (a plan with too few parity frames).
    #[error("block {block}: {error}")]
    Coding {
        /// The block.
        block: u32,
        /// The code's error.
        error: CodingError,
    },
    /// The consumer of the bytes refused them (the signed hash's check).
    #[error("{0}")]
    Refused(String),
}

/// Walks the assignment of `plan` in order, rebuilding its planned blocks (the rebuilt frames are written
/// back through `io`), and gives every chunk of the whole assignment to `each` as it goes. Returns the
/// frames rebuilt.
///
/// # Errors
/// [`RebuildError::Io`] when `io` fails, [`RebuildError::Coding`] when a planned block holds too few
/// frames, and `each`'s own refusal as [`RebuildError::Refused`]; the walk stops at the first.
pub fn rebuild(
    plan: &RebuildPlan,
    io: &mut dyn RebuildIo,
    each: &mut dyn FnMut(&[u8]) -> Result<(), String>,
) -> Result<u64, RebuildError> {
    let announcement = &plan.announcement;
    let frame_size = announcement.frame_size.max(1) as usize;
    let block_len = frame_size * announcement.block_frames.max(1) as usize;
    let blocks_per_chunk = (CHUNK / block_len).max(1);
    let chunk_len = blocks_per_chunk * block_len;
    let size = announcement.size;
    let mut decoder = BlockDecoder::new();
    let mut buffer = vec![0u8; chunk_len.min(usize::try_from(size).unwrap_or(usize::MAX))];
    let mut parity = vec![0u8; announcement.parity_len()];
    let mut planned = plan.blocks.iter().peekable();
    let mut rebuilt_frames = 0;
    let mut offset = 0u64;
    let mut first_block = 0u32;
    while offset < size {
        let len = (size - offset).min(chunk_len as u64) as usize;
        let chunk = &mut buffer[..len];
        io.read_at(offset, chunk)?;
        let end_block = first_block.saturating_add(blocks_per_chunk as u32);
        while let Some(block) = planned.next_if(|block| block.block < end_block) {
            if block.block < first_block {
                continue;
            }
            let at = (block.block - first_block) as usize * block_len;
            let block_bytes = &mut chunk[at..(at + block_len).min(len)];
            rebuilt_frames += rebuild_block(announcement, block, block_bytes, io, &mut decoder, &mut parity)?;
        }
        each(chunk).map_err(RebuildError::Refused)?;
        offset += len as u64;
        first_block = end_block;
    }
    Ok(rebuilt_frames)
}

/// Rebuilds the lost frames of one block in `block_bytes` (the block as read, lost slots included) and
/// writes them back. Returns the frames rebuilt.
fn rebuild_block(
    announcement: &Announcement,
    block: &BlockRebuild,
    block_bytes: &mut [u8],
    io: &mut dyn RebuildIo,
    decoder: &mut BlockDecoder,
    parity_buffer: &mut [u8],
) -> Result<u64, RebuildError> {
    let (first, source_frames) = announcement.block_span(block.block);
    let frame_size = announcement.frame_size as usize;
    let parity_len = announcement.parity_len();
    let mut parity_frames = Vec::with_capacity(block.lost.len());
    for held in block.parity.iter().take(block.lost.len()) {
        io.read_parity(held.handle, parity_buffer)?;
        parity_frames.push((usize::from(held.number), parity_buffer.to_vec()));
    }
    let rebuilt = {
        let sources = (0..source_frames)
            .filter(|index| block.lost.binary_search(index).is_err())
            .map(|index| {
                let start = (index as usize * frame_size).min(block_bytes.len());
                let end = (start + frame_size).min(block_bytes.len());
                (index as usize, &block_bytes[start..end])
            });
        decoder
            .decode(
                source_frames as usize,
                announcement.parity_frames as usize,
                parity_len,
                sources,
                parity_frames.iter().map(|(number, data)| (*number, data.as_slice())),
            )
            .map_err(|error| RebuildError::Coding {
                block: block.block,
                error,
            })?
    };
    let mut count = 0;
    for (index, shard) in rebuilt {
        let sequence = first + index as u32;
        let len = announcement.frame_len(sequence).unwrap_or(0).min(shard.len());
        let start = index * frame_size;
        let Some(slot) = block_bytes.get_mut(start..start + len) else {
            continue;
        };
        slot.copy_from_slice(&shard[..len]);
        io.write_at(announcement.frame_offset(sequence), &shard[..len])?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mctp::parity::BlockEncoder;

    /// An assignment in memory and its parity frames by handle.
    struct Memory {
        bytes: Vec<u8>,
        parity: Vec<Vec<u8>>,
        writes: Vec<u64>,
    }

    impl RebuildIo for Memory {
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            let start = offset as usize;
            buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
            Ok(())
        }

        fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
            let start = offset as usize;
            self.bytes[start..start + data.len()].copy_from_slice(data);
            self.writes.push(offset);
            Ok(())
        }

        fn read_parity(&mut self, handle: u64, buf: &mut [u8]) -> io::Result<()> {
            let held = self
                .parity
                .get(handle as usize)
                .ok_or_else(|| io::Error::other("no such parity frame"))?;
            buf.copy_from_slice(held);
            Ok(())
        }
    }

    fn announcement(size: u64, frame_size: u32, block_frames: u32) -> Announcement {
        Announcement {
            assignment: 1,
            size,
            name: "www-000001".into(),
            rate: 1,
            frame_size,
            frames: size.div_ceil(u64::from(frame_size)) as u32,
            hash: "00".repeat(32),
            pass: 1,
            block_frames,
            parity_frames: 8,
        }
    }

    /// The parity frames `numbers` of `block` of `bytes`.
    fn parity_of(announcement: &Announcement, bytes: &[u8], block: u32, numbers: &[u16]) -> Vec<Vec<u8>> {
        let (first, count) = announcement.block_span(block);
        let frame = announcement.frame_size as usize;
        let sources: Vec<&[u8]> = (first..first + count)
            .map(|sequence| {
                let start = sequence as usize * frame;
                &bytes[start..(start + frame).min(bytes.len())]
            })
            .collect();
        let most = usize::from(*numbers.iter().max().expect("numbers")) + 1;
        let made = BlockEncoder::new()
            .encode(&sources, most, frame)
            .expect("parity frames");
        numbers
            .iter()
            .map(|number| made[usize::from(*number)].clone())
            .collect()
    }

    /// Blocks in three chunks, lost frames in the first, a middle and the last (short) block, the last
    /// frame among them: the walk rebuilds exactly those, writes them back, and hands on the exact
    /// assignment in order.
    #[test]
    fn the_walk_rebuilds_the_planned_frames_and_hands_on_the_exact_assignment() {
        let frame_size = 1000;
        let block_frames = 16;
        let size = 2 * CHUNK as u64 + 12_345;
        let announcement = announcement(size, frame_size, block_frames);
        let original: Vec<u8> = (0..size).map(|index| (index * 31 % 251) as u8).collect();
        let last_block = announcement.blocks() - 1;
        let (last_first, last_count) = announcement.block_span(last_block);
        let lost: Vec<(u32, Vec<u32>)> = vec![(0, vec![0, 7]), (70, vec![3]), (last_block, vec![1, last_count - 1])];
        let mut bytes = original.clone();
        let mut parity = Vec::new();
        let mut blocks = Vec::new();
        for (block, lost_frames) in &lost {
            let (first, _) = announcement.block_span(*block);
            for index in lost_frames {
                let start = announcement.frame_offset(first + index) as usize;
                let len = announcement.frame_len(first + index).expect("frame");
                bytes[start..start + len].fill(0xee);
            }
            // Parity numbers 2 and 5 (any of them rebuild), one more than needed for the first block.
            let numbers: Vec<u16> = [2, 5, 6][..lost_frames.len() + usize::from(*block == 0)].to_vec();
            let mut held = Vec::new();
            for (number, data) in numbers
                .iter()
                .zip(parity_of(&announcement, &original, *block, &numbers))
            {
                held.push(HeldParity {
                    number: *number,
                    handle: parity.len() as u64,
                });
                parity.push(data);
            }
            blocks.push(BlockRebuild {
                block: *block,
                lost: lost_frames.clone(),
                parity: held,
            });
        }
        let plan = RebuildPlan { announcement, blocks };
        let mut memory = Memory {
            bytes,
            parity,
            writes: Vec::new(),
        };
        let mut handed = Vec::new();
        let mut chunks = 0;
        let rebuilt = rebuild(&plan, &mut memory, &mut |chunk| {
            chunks += 1;
            handed.extend_from_slice(chunk);
            Ok(())
        })
        .expect("rebuilt");
        assert_eq!(rebuilt, 5);
        assert_eq!(plan.frames(), 5);
        assert_eq!(chunks, 3);
        assert!(handed == original, "the bytes handed on are the assignment");
        assert!(memory.bytes == original, "the spool holds the assignment");
        let frame = u64::from(frame_size);
        let last = u64::from(last_first) * frame;
        assert_eq!(
            memory.writes,
            vec![
                0,
                7 * frame,
                (70 * 16 + 3) * frame,
                last + frame,
                last + u64::from(last_count - 1) * frame
            ]
        );
    }

    #[test]
    fn a_block_with_too_few_parity_frames_or_a_refusal_stops_the_walk() {
        let announcement = announcement(10_000, 1000, 4);
        let original = vec![7u8; 10_000];
        let parity = parity_of(&announcement, &original, 1, &[0]);
        let plan = RebuildPlan {
            announcement,
            blocks: vec![BlockRebuild {
                block: 1,
                lost: vec![0, 1],
                parity: vec![HeldParity { number: 0, handle: 0 }],
            }],
        };
        let mut memory = Memory {
            bytes: original.clone(),
            parity,
            writes: Vec::new(),
        };
        let error = rebuild(&plan, &mut memory, &mut |_| Ok(())).expect_err("too few");
        assert!(matches!(error, RebuildError::Coding { block: 1, .. }), "{error}");
        let whole = RebuildPlan {
            blocks: Vec::new(),
            ..plan
        };
        let error = rebuild(&whole, &mut memory, &mut |_| Err("hash mismatch".into())).expect_err("refused");
        assert_eq!(error.to_string(), "hash mismatch");
        assert!(memory.writes.is_empty());
    }
}
