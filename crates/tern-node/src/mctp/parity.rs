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
//! reads 32 frames and computes one), which keeps the members' CPU low on a busy host. A member decodes
//! after the session, block by block as it reads its spool to verify it ([`super::rebuild`]), so that
//! memory holds one chunk of blocks at a time. Frames shorter than the shard (the assignment's last frame) are padded with
//! zeros for coding and cut back to their length after.

use std::collections::HashMap;

use reed_solomon_erasure::galois_8::{self, ReedSolomon};

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
///
/// It solves for the lost source frames only, with the code's parity rows: for `m` frames lost, `m`
/// parity frames less what the held source frames contribute give `m` equations in the `m` unknowns,
/// whose `m × m` matrix is inverted. The general decoder of [`reed_solomon_erasure`] inverts the whole
/// `k × k` matrix of the frames held for every block (tens of microseconds for `k` = 32, a block of
/// random losses seldom repeats a pattern) and copies every frame into a buffer of its own first; with
/// thirty-odd members on one host that was most of a repair pass's time. The rows are the encoder's
/// own (made by it, see [`BlockDecoder::rows`]), so what the GL sends and what a member solves with
/// cannot differ.
#[derive(Default)]
pub struct BlockDecoder {
    /// Parity rows by (source frames, parity frames): row `n` (`k` bytes from `n * k`) holds the
    /// coefficients of parity frame `n` over the block's source frames.
    rows: HashMap<(usize, usize), Vec<u8>>,
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

    /// The parity rows of the code of `source_count` source and `parity_count` parity frames, made once:
    /// the encoder's parity frames of the `k` unit blocks (source frame `i` of `k` bytes is 1 at byte `i`
    /// and 0 elsewhere), whose byte `j` of parity frame `n` is then the coefficient of source frame `j`.
    fn rows(&mut self, source_count: usize, parity_count: usize) -> Result<&[u8], CodingError> {
        let key = (source_count, parity_count);
        if !self.rows.contains_key(&key) {
            // Made once per block size and not kept: the rows are all the decoder needs of it.
            let code = ReedSolomon::new(source_count, parity_count)?;
            let units: Vec<Vec<u8>> = (0..source_count)
                .map(|index| {
                    let mut unit = vec![0u8; source_count];
                    unit[index] = 1;
                    unit
                })
                .collect();
            let mut parity = vec![vec![0u8; source_count]; parity_count];
            code.encode_sep(&units, &mut parity)?;
            if self.rows.len() >= CODES_KEPT {
                self.rows.clear();
            }
            self.rows.insert(key, parity.concat());
        }
        Ok(self.rows.get(&key).map(Vec::as_slice).unwrap_or_default())
    }

    /// The missing source frames of a block of `source_count` frames whose parity frames are numbered
    /// below `parity_count`, from the source frames it holds (`(index in the block, data)`) and parity
    /// frames (`(parity number, data)`), at least `source_count` in all. Returns the rebuilt frames as
    /// `(index in the block, shard)`, ascending; the caller cuts a short frame to its length. Data longer
    /// than `shard_len` is cut to it, shorter is taken as padded with zeros; an index out of range or
    /// given twice is ignored (the first is used).
    ///
    /// # Errors
    /// Fewer frames than `source_count`, or a code GF(2^8) cannot make (more than 256 frames in all).
    pub fn decode<'a>(
        &mut self,
        source_count: usize,
        parity_count: usize,
        shard_len: usize,
        sources: impl IntoIterator<Item = (usize, &'a [u8])>,
        parity: impl IntoIterator<Item = (usize, &'a [u8])>,
    ) -> Result<Vec<(usize, Vec<u8>)>, CodingError> {
        let rows = self.rows(source_count, parity_count)?;
        let mut held: Vec<Option<&[u8]>> = vec![None; source_count];
        for (index, data) in sources {
            if let Some(slot @ None) = held.get_mut(index) {
                *slot = Some(&data[..data.len().min(shard_len)]);
            }
        }
        let missing: Vec<usize> = (0..source_count).filter(|index| held[*index].is_none()).collect();
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        // The first `m` distinct parity frames.
        let mut chosen: Vec<(usize, &[u8])> = Vec::with_capacity(missing.len());
        for (number, data) in parity {
            if chosen.len() == missing.len() {
                break;
            }
            if number < parity_count && chosen.iter().all(|(taken, _)| *taken != number) {
                chosen.push((number, &data[..data.len().min(shard_len)]));
            }
        }
        if chosen.len() < missing.len() {
            return Err(CodingError(format!(
                "{} frames of a block of {source_count} held: too few to rebuild it",
                source_count - missing.len() + chosen.len()
            )));
        }
        let row = |number: usize| &rows[number * source_count..(number + 1) * source_count];
        // Each chosen parity frame less what the held source frames contribute: what the lost ones make.
        let remainders: Vec<Vec<u8>> = chosen
            .iter()
            .map(|(number, data)| {
                let mut remainder = vec![0u8; shard_len];
                remainder[..data.len()].copy_from_slice(data);
                let coefficients = row(*number);
                for (index, source) in held.iter().enumerate() {
                    if let Some(source) = source.filter(|source| !source.is_empty()) {
                        let coefficient = coefficients[index];
                        if coefficient != 0 {
                            galois_8::mul_slice_xor(coefficient, source, &mut remainder[..source.len()]);
                        }
                    }
                }
                remainder
            })
            .collect();
        let system: Vec<Vec<u8>> = chosen
            .iter()
            .map(|(number, _)| missing.iter().map(|index| row(*number)[*index]).collect())
            .collect();
        let inverse = invert(system)?;
        let rebuilt = missing
            .iter()
            .zip(&inverse)
            .map(|(index, coefficients)| {
                let mut shard = vec![0u8; shard_len];
                if shard_len > 0 {
                    for (coefficient, remainder) in coefficients.iter().zip(&remainders) {
                        if *coefficient != 0 {
                            galois_8::mul_slice_xor(*coefficient, remainder, &mut shard);
                        }
                    }
                }
                (*index, shard)
            })
            .collect();
        Ok(rebuilt)
    }
}

/// The inverse of a square matrix over GF(2^8), by Gauss-Jordan elimination.
///
/// # Errors
/// A singular matrix (it cannot be, for the parity rows of a Reed-Solomon code under distinct lost
/// frames; refused rather than trusted).
fn invert(mut matrix: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, CodingError> {
    let size = matrix.len();
    let mut inverse: Vec<Vec<u8>> = (0..size)
        .map(|row| (0..size).map(|column| u8::from(row == column)).collect())
        .collect();
    for column in 0..size {
        let pivot = (column..size)
            .find(|row| matrix[*row][column] != 0)
            .ok_or_else(|| CodingError("the repair frames' equations are singular".to_string()))?;
        matrix.swap(column, pivot);
        inverse.swap(column, pivot);
        let scale = galois_8::div(1, matrix[column][column]);
        for value in matrix[column].iter_mut().chain(inverse[column].iter_mut()) {
            *value = galois_8::mul(*value, scale);
        }
        for row in 0..size {
            let factor = matrix[row][column];
            if row == column || factor == 0 {
                continue;
            }
            for index in 0..size {
                let (pivot_value, pivot_inverse) = (matrix[column][index], inverse[column][index]);
                matrix[row][index] ^= galois_8::mul(factor, pivot_value);
                inverse[row][index] ^= galois_8::mul(factor, pivot_inverse);
            }
        }
    }
    Ok(inverse)
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

    #[test]
    fn random_losses_and_repair_frames_rebuild_exactly_the_lost_frames() {
        let mut rng = crate::election::rng::SplitMix64(7);
        let mut encoder = BlockEncoder::new();
        let mut decoder = BlockDecoder::new();
        for round in 0..300 {
            let source_count = [1, 2, 5, 32, 32, 64][round % 6];
            let shard_len = 1 + (rng.next_u64() % 300) as usize;
            let mut sources: Vec<Vec<u8>> = (0..source_count)
                .map(|_| (0..shard_len).map(|_| rng.next_u64() as u8).collect())
                .collect();
            // The assignment's last frame is often short.
            let short = 1 + (rng.next_u64() % shard_len as u64) as usize;
            sources[source_count - 1].truncate(short);
            let refs: Vec<&[u8]> = sources.iter().map(Vec::as_slice).collect();
            let parity_count = 24;
            let parity = encoder.encode(&refs, parity_count, shard_len).expect("encode");
            let lost: Vec<usize> = (0..source_count)
                .filter(|_| rng.next_u64().is_multiple_of(4))
                .take(parity_count)
                .collect();
            // Any parity numbers, as many as lost, in any order, some given twice.
            let mut numbers: Vec<usize> = (0..parity_count).collect();
            for index in (1..numbers.len()).rev() {
                numbers.swap(index, (rng.next_u64() % (index as u64 + 1)) as usize);
            }
            numbers.truncate(lost.len());
            if let Some(first) = numbers.first().copied() {
                numbers.push(first);
            }
            let held = (0..source_count)
                .filter(|index| !lost.contains(index))
                .map(|index| (index, refs[index]));
            let repair = numbers.iter().map(|number| (*number, parity[*number].as_slice()));
            let rebuilt = decoder
                .decode(source_count, 256 - source_count, shard_len, held, repair)
                .expect("decode");
            assert_eq!(rebuilt.len(), lost.len(), "round {round}");
            for ((index, shard), expected) in rebuilt.iter().zip(&lost) {
                assert_eq!(index, expected, "round {round}");
                let source = &sources[*index];
                assert_eq!(&shard[..source.len()], &source[..], "round {round}, frame {index}");
                assert!(shard[source.len()..].iter().all(|byte| *byte == 0), "round {round}");
            }
        }
    }

    #[test]
    fn frames_out_of_range_empty_or_too_long_are_ignored_or_refused_without_a_panic() {
        let mut decoder = BlockDecoder::new();
        let long = vec![7u8; 500];
        let empty: &[u8] = &[];
        // Empty and over-long frames, indexes past the block and past the parity numbers.
        let sources = [(0, empty), (1, &long[..]), (9, &long[..]), (usize::MAX, empty)];
        let parity = [
            (0, &long[..]),
            (0, empty),
            (300, &long[..]),
            (usize::MAX, empty),
            (1, empty),
        ];
        let rebuilt = decoder
            .decode(4, 8, 100, sources, parity)
            .expect("two lost, two parity frames");
        assert_eq!(rebuilt.iter().map(|(index, _)| *index).collect::<Vec<_>>(), vec![2, 3]);
        assert!(rebuilt.iter().all(|(_, shard)| shard.len() == 100));
        // Nothing usable: a clear error.
        assert!(decoder.decode(4, 8, 100, [(7, empty)], [(200, empty)]).is_err());
        // A zero-length shard and a code GF(2^8) cannot make.
        assert!(decoder.decode(2, 2, 0, [(0, empty)], [(0, empty)]).is_ok());
        assert!(decoder.decode(200, 100, 10, [(0, empty)], [(0, empty)]).is_err());
        assert!(decoder.decode(0, 4, 10, [(0, empty)], [(0, empty)]).is_err());
    }
}
