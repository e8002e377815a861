//! How small a delta could be: the text of a page that is really new against a base, and what it costs
//! compressed. A measurement aid for the benchmark (`tern-lab bench delta`) and `examples/floor.rs`
//! (feature `testsuite`); nothing on the serving path uses it.
//!
//! [`new_text`] splits both pages into tokens (runs of ASCII letters and digits, every other byte a token
//! of its own) and keeps the page's tokens that no run of [`RUN`] tokens also found in the base covers:
//! a changed number between unchanged markup is one short piece, a new story is one long piece, and text
//! that moved (a story pushed down the list) is not new. [`floor`] is the `dcz` stream a delta would be
//! if it had to carry only that new text, at zstd's strongest usual level with the base as dictionary
//! (so the base's vocabulary helps it as it helps a real delta), and no instruction saying where each
//! piece goes or what was removed: no delta of the page against that base can be much smaller.

use std::collections::HashSet;

use zstd::zstd_safe::{self, CCtx, CParameter};

use crate::base::Base;
use crate::dcz::{self, HEADER_LEN};

/// Tokens in a run that counts as present in the base: 8 tokens are four words with their spaces, or a
/// short stretch of markup; a run of four random common words of the synthetic pages occurs in a 100 KB
/// base by chance about once in 2,500 runs.
pub const RUN: usize = 8;

/// zstd level of [`floor`]: 19, the strongest level without `--ultra`.
pub const FLOOR_LEVEL: i32 = 19;

/// The pieces of `page` that are new against `base` (see the module header), in page order.
pub fn new_text<'a>(base: &[u8], page: &'a [u8]) -> Vec<&'a [u8]> {
    let base_tokens = tokens(base);
    let page_tokens = tokens(page);
    let base_hashes = token_hashes(base, &base_tokens);
    let page_hashes = token_hashes(page, &page_tokens);
    let known: HashSet<u64> = run_hashes(&base_hashes).collect();
    let mut covered = vec![false; page_tokens.len()];
    for (start, hash) in run_hashes(&page_hashes).enumerate() {
        if known.contains(&hash) {
            covered[start..start + RUN].fill(true);
        }
    }
    let mut pieces = Vec::new();
    let mut index = 0;
    while index < page_tokens.len() {
        if covered[index] {
            index += 1;
            continue;
        }
        let first = index;
        while index < page_tokens.len() && !covered[index] {
            index += 1;
        }
        let from = page_tokens[first].0;
        let to = page_tokens[index - 1].1;
        pieces.push(&page[from..to]);
    }
    pieces
}

/// The lower bound of a delta of `page` against `base`: the `dcz` header and a zstd frame (level
/// [`FLOOR_LEVEL`], the base as prefix, the smaller of with and without long-distance matching) of the
/// new text alone, its pieces joined by newlines. In bytes.
pub fn floor(base: &Base, page: &[u8]) -> usize {
    let joined = new_text(base.bytes(), page).join(&b'\n');
    let frame = [false, true]
        .into_iter()
        .map(|long_distance| compressed_against(base, &joined, FLOOR_LEVEL, long_distance))
        .min()
        .unwrap_or(joined.len());
    HEADER_LEN.saturating_add(frame)
}

/// The size of a zstd frame of `text` at `level` with `base` as prefix (as [`crate::DczEncoder`] makes,
/// without its header); `text.len()` when zstd fails.
pub fn compressed_against(base: &Base, text: &[u8], level: i32, long_distance: bool) -> usize {
    let mut context = CCtx::create();
    let mut frame = Vec::with_capacity(zstd_safe::compress_bound(text.len()));
    let window = dcz::window_log(base.len(), text.len());
    let result = context
        .set_parameter(CParameter::CompressionLevel(level))
        .and_then(|_| context.set_parameter(CParameter::WindowLog(window)))
        .and_then(|_| context.set_parameter(CParameter::EnableLongDistanceMatching(long_distance)))
        .and_then(|_| context.set_parameter(CParameter::ChecksumFlag(false)))
        .and_then(|_| context.ref_prefix(base.bytes()))
        .and_then(|_| context.compress2(&mut frame, text));
    match result {
        Ok(_) => frame.len(),
        Err(_) => text.len(),
    }
}

/// Byte ranges of the tokens of `text`.
fn tokens(text: &[u8]) -> Vec<(usize, usize)> {
    let mut tokens = Vec::with_capacity(text.len() / 3);
    let mut at = 0;
    while at < text.len() {
        let start = at;
        if text[at].is_ascii_alphanumeric() {
            while at < text.len() && text[at].is_ascii_alphanumeric() {
                at += 1;
            }
        } else {
            at += 1;
        }
        tokens.push((start, at));
    }
    tokens
}

/// FNV-1a of each token.
fn token_hashes(text: &[u8], tokens: &[(usize, usize)]) -> Vec<u64> {
    tokens
        .iter()
        .map(|&(from, to)| {
            text[from..to].iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            })
        })
        .collect()
}

/// A hash of each run of [`RUN`] consecutive tokens, by the run's first token.
fn run_hashes(hashes: &[u64]) -> impl Iterator<Item = u64> + '_ {
    hashes.windows(RUN).map(|run| {
        run.iter().fold(0u64, |acc, &hash| {
            acc.rotate_left(7) ^ hash.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn story(n: u32) -> String {
        format!(
            "<article class=\"story\"><h2>Story {n}</h2><p>the council said on monday that the plan for the city would go ahead {n}</p><span class=\"comments\">{} comments</span></article>\n",
            n * 3
        )
    }

    #[test]
    fn a_changed_number_is_new_and_moved_text_is_not() {
        let base: String = (0..20).map(story).collect();
        // Story 20 is new, 0 is gone, and story 7 has another comment count.
        let page: String = (1..21)
            .map(|n| {
                if n == 7 {
                    story(7).replace("21 comments", "22 comments")
                } else {
                    story(n)
                }
            })
            .collect();
        let pieces = new_text(base.as_bytes(), page.as_bytes());
        let text: Vec<String> = pieces
            .iter()
            .map(|piece| String::from_utf8_lossy(piece).into_owned())
            .collect();
        // The changed count, and of the new story only what is not template: its number (twice) and its
        // count; story 7's line around its count, and the stories that moved, are not new.
        assert_eq!(text, ["22", "20", "20", "60"]);
    }

    #[test]
    fn the_floor_is_below_the_delta() {
        let base_text: String = (0..200).map(story).collect();
        let page: String = (3..203).map(story).collect();
        let base = Base::new("news", base_text.into_bytes(), 1 << 24).expect("valid base");
        let delta = dcz::encode(&base, page.as_bytes(), 3).expect("encodes");
        let floor = floor(&base, page.as_bytes());
        assert!(
            floor > HEADER_LEN && floor <= delta.len(),
            "floor {floor}, delta {}",
            delta.len()
        );
        assert_eq!(new_text(base.bytes(), base.bytes()), Vec::<&[u8]>::new());
    }
}
