//! The erasure code behind repair passes (seed `004_1419c51402506f7e.txt`, "local distribution": "messages
//! are broken into blocks, and blocks into frames"): a block's `k` source frames make its parity frames,
//! and any `k` of the block's source and parity frames rebuild it — the FEC of NORM (RFC 5740, systematic
//! Reed-Solomon as in RFC 5510), here by [`reed_solomon_erasure`] over GF(2^8), so a block's source and
//! parity frames are at most 256 ([`tern_wire::mctp::MAX_CODED_FRAMES`]).
//!
//! Parity frame `n` of a block is the same whatever number of parity frames is made: row `k + n` of the
//! systematic Vandermonde matrix. So the GL makes only the first numbers a pass needs
//! ([`BlockEncoder::encode`]), and a member decodes with the code of all of them ([`BlockDecoder`]). The
//! cost of both is in proportion to the frames repaired (a member that lost one frame of a block of 32
//! reads 32 frames and computes one), which keeps the members' CPU low on a busy host. A member decodes a
//! block once it holds `k` of its frames, reading its source frames back from its spool, so that memory
//! holds one block at a time. Frames shorter than the shard (the assignment's last frame) are padded with
//! zeros for coding and cut back to their length after.

use std::collections::HashMap;

use reed_solomon_erasure::galois_8::ReedSolomon;

/// Codes kept, by (source frames, parity frames); beyond, the cache starts again.
const CODES_KEPT: usize = 32;

/// Why a block could not be coded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("erasure code: {0}")]
pub struct CodingError(String);

impl From<reed_solomon_erasure::Error> for CodingError {
    fn from(error: reed_solomon_erasure::Error) -> Self {
        CodingError(format!("{error:?}"))
    }
}

/// The codes in use, made once each (making one inverts a `k × k` matrix).
#[derive(Default)]
struct Codes(HashMap<(usize, usize), ReedSolomon>);

impl Codes {
    fn get(&mut self, source_count: usize, parity_count: usize) -> Result<&ReedSolomon, CodingError> {
        let key = (source_count, parity_count);
        if !self.0.contains_key(&key) && self.0.len() >= CODES_KEPT {
            self.0.clear();
        }
        let code = match self.0.entry(key) {
            std::collections::hash_map::Entry::Occupied(kept) => kept.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(ReedSolomon::new(source_count, parity_count)?)
            }
        };
        Ok(code)
    }
}

/// Makes the parity frames of blocks (the GL's side).
#[derive(Default)]
pub struct BlockEncoder {
    codes: Codes,
}

impl std::fmt::Debug for BlockEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockEncoder").finish_non_exhaustive()
    }
}

impl BlockEncoder {
    /// An encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parity frames `0..parity` of a block of `sources` (each at most `shard_len` bytes), in parity
    /// number order.
    pub fn encode(&mut self, sources: &[&[u8]], parity: usize, shard_len: usize) -> Result<Vec<Vec<u8>>, CodingError> {
        let code = self.codes.get(sources.len(), parity)?;
        let padded: Vec<Vec<u8>> = sources.iter().map(|source| padded(source, shard_len)).collect();
        let mut shards = vec![vec![0u8; shard_len]; parity];
        code.encode_sep(&padded, &mut shards)?;
        Ok(shards)
    }
}

/// Rebuilds blocks from the frames a member holds (its side).
#[derive(Default)]
pub struct BlockDecoder {
    codes: Codes,
}

impl std::fmt::Debug for BlockDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDecoder").finish_non_exhaustive()
    }
}

impl BlockDecoder {
    /// A decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The missing source frames of a block of `source_count` frames whose parity frames are numbered
    /// below `parity_count`, from the source frames it holds (`(index in the block, data)`) and parity
    /// frames (`(parity number, data)`), at least `source_count` in all. Returns the rebuilt frames as
    /// `(index in the block, shard)`, ascending; the caller cuts a short frame to its length.
    pub fn decode<'a>(
        &mut self,
        source_count: usize,
        parity_count: usize,
        shard_len: usize,
        sources: impl IntoIterator<Item = (usize, &'a [u8])>,
        parity: impl IntoIterator<Item = (usize, &'a [u8])>,
    ) -> Result<Vec<(usize, Vec<u8>)>, CodingError> {
        let code = self.codes.get(source_count, parity_count)?;
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; source_count + parity_count];
        for (index, data) in sources {
            if let Some(slot) = shards.get_mut(index).filter(|_| index < source_count) {
                *slot = Some(padded(data, shard_len));
            }
        }
        for (index, data) in parity {
            if let Some(slot) = shards.get_mut(source_count + index) {
                *slot = Some(padded(data, shard_len));
            }
        }
        let missing: Vec<usize> = (0..source_count).filter(|index| shards[*index].is_none()).collect();
        code.reconstruct_data(&mut shards)?;
        let rebuilt = missing
            .into_iter()
            .filter_map(|index| shards[index].take().map(|shard| (index, shard)))
            .collect();
        Ok(rebuilt)
    }
}

/// `data` as a shard of `shard_len` bytes, padded with zeros.
fn padded(data: &[u8], shard_len: usize) -> Vec<u8> {
    let mut shard = data[..data.len().min(shard_len)].to_vec();
    shard.resize(shard_len, 0);
    shard
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(count: usize, len: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|frame| (0..len).map(|byte| (frame * 31 + byte * 7) as u8).collect())
            .collect()
    }

    #[test]
    fn any_k_of_a_blocks_frames_rebuild_it_and_parity_numbers_do_not_depend_on_how_many_are_made() {
        let mut sources = frames(8, 100);
        sources[7].truncate(37);
        let refs: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
        let mut encoder = BlockEncoder::new();
        let parity = encoder.encode(&refs, 16, 100).expect("encode");
        assert_eq!(parity.len(), 16);
        assert_eq!(
            encoder.encode(&refs, 4, 100).expect("fewer"),
            parity[..4],
            "same numbers"
        );

        // Frames 2, 5 and 7 (the short one) lost; parity frames 3, 9 and 15 arrived.
        let held = [0, 1, 3, 4, 6].map(|index| (index, refs[index]));
        let repair = [3, 9, 15].map(|index| (index, parity[index].as_slice()));
        let mut decoder = BlockDecoder::new();
        let rebuilt = decoder.decode(8, 248, 100, held, repair).expect("decode");
        let indexes: Vec<usize> = rebuilt.iter().map(|(index, _)| *index).collect();
        assert_eq!(indexes, vec![2, 5, 7]);
        assert_eq!(rebuilt[0].1, sources[2]);
        assert_eq!(rebuilt[1].1, sources[5]);
        assert_eq!(&rebuilt[2].1[..37], &sources[7][..]);
        assert!(rebuilt[2].1[37..].iter().all(|byte| *byte == 0));

        // Too few frames, or too many for GF(2^8): errors, not panics.
        let too_few = decoder.decode(8, 16, 100, [(0, refs[0])], [(1, parity[1].as_slice())]);
        assert!(too_few.is_err());
        assert!(encoder.encode(&refs, 249, 100).is_err());
    }
}
