//! Deriving a base (the seed's template) from recent clean responses of a class.
//!
//! # The choice, by measurement
//!
//! `cargo run --release -p tern-delta --example derivation` derives a base from the 8 clean responses of
//! the 8 minutes before a time t, by each rule, and encodes pages served at t + 5 min and t + 60 min against
//! it: 12 times t, 4 pages each, zstd level 3 with long-distance matching (the encoder's setting when this
//! was measured; [`crate::encoder::DEFAULT_LEVEL`] has the search it uses now), on the `synthetic` pages (feature
//! `testsuite`): a 113 KB news home page with a new story every 3 minutes and counters that change every
//! minute; personalised account pages against the anonymous page; product pages of one template, a
//! different product each time; a 151 KB price list whose rows change at 1% a minute. Delta bytes as % of
//! the page, base size, encode time p50 (2 shared cores):
//!
//! | workload | gap | latest | medoid | concat (1 MB cap) | chunks (1 MB cap) |
//! |---|---|---|---|---|---|
//! | news | 5 min | **1.09%**, 111 KB, 355 us | 1.45%, 111 KB | 1.07%, 886 KB, 1521 us | 1.06%, 346 KB, 722 us |
//! | news | 60 min | **6.50%** | 6.83% | 6.27% | 6.27% |
//! | account (personal) | 5 / 60 min | **2.71%**, 22 KB, 81 us | 2.71% | 2.71% | 2.71% |
//! | product | 5 min | **5.15%**, 29 KB, 112 us | 5.14% | 4.87%, 232 KB, 370 us | 4.82%, 63 KB, 155 us |
//! | product | 60 min | **5.05%** | 5.15% | 4.88% | 4.82% |
//! | price list | 5 min | **0.61%**, 147 KB, 424 us | 0.91% | 0.62%, 884 KB, 1441 us | 0.61%, 206 KB, 523 us |
//! | price list | 60 min | **5.52%** | 5.88% | 5.36% | 5.56% |
//!
//! For scale, the same pages compressed alone with zstd are 4 to 40 times larger than these deltas.
//!
//! **Latest wins** and is the default ([`Derivation::Latest`]): it is within 7% of the best rule everywhere
//! (the best saves at most 6.4% of a delta, on product pages), with the smallest base (a third of `chunks`,
//! an eighth of `concat`; a base crosses to every edge and browser), the fastest encoding (shared with the
//! medoid; `chunks` and `concat` take 2 to 4 times as long, at or past issue 12's 1 ms for a 100 KB page),
//! and no derivation cost. Older responses add
//! little because what a page gains over time (new stories, new prices, another product's text) was never
//! in any earlier response. The medoid is worse on pages that evolve (it picks an older, staler response)
//! and costs n² deltas to find; its only advantage, robustness to one odd latest response, is covered by
//! the re-derivation rule, which replaces a base whose deltas grow. Account pages show why no rule can
//! help there: the delta is the user's own data, which never enters a base.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;

use crate::base::{Base, BaseError};
use crate::dcz::DczEncoder;

/// How a base is made from the recent clean responses of a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Derivation {
    /// The latest clean response as it is (the measured choice, see the module header).
    #[default]
    Latest,
    /// The medoid: the clean response with the smallest total delta to the others (the "most common"
    /// page, for pages that are never byte-identical).
    Medoid,
    /// Recent clean responses end to end, the latest last, oldest dropped first to stay within `max_bytes`.
    Concat {
        /// Largest base, in bytes.
        max_bytes: usize,
    },
    /// The latest clean response, preceded by the pieces (content-defined chunks) of older ones that it does
    /// not contain, newest first, within `max_bytes`.
    Chunks {
        /// Largest base, in bytes.
        max_bytes: usize,
    },
}

impl Derivation {
    /// A short name, for status pages and the measurement.
    pub fn name(&self) -> &'static str {
        match self {
            Derivation::Latest => "latest",
            Derivation::Medoid => "medoid",
            Derivation::Concat { .. } => "concat",
            Derivation::Chunks { .. } => "chunks",
        }
    }
}

/// The recent clean responses of a class, oldest first; a response equal to the latest is not kept twice.
#[derive(Debug, Clone)]
pub struct Samples {
    capacity: usize,
    items: VecDeque<Bytes>,
}

impl Samples {
    /// Room for `capacity` responses (at least one).
    pub fn new(capacity: usize) -> Self {
        Samples {
            capacity: capacity.max(1),
            items: VecDeque::new(),
        }
    }

    /// Keeps `body`, dropping the oldest beyond capacity. Returns whether it was kept (not a repeat).
    pub fn push(&mut self, body: Bytes) -> bool {
        if self.items.back() == Some(&body) {
            return false;
        }
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(body);
        true
    }

    /// Number held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The latest.
    pub fn latest(&self) -> Option<&Bytes> {
        self.items.back()
    }

    /// All, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Bytes> {
        self.items.iter()
    }

    /// Drops all.
    pub fn clear(&mut self) {
        self.items.clear();
    }
}

/// The bytes of a base for `class` derived from `samples`; `None` without samples. `max_base` bounds the
/// result (a single sample larger than it is refused, as [`Base::new`] does).
pub fn derive(
    derivation: Derivation,
    samples: &Samples,
    class: &str,
    max_base: usize,
) -> Option<Result<Base, BaseError>> {
    let latest = samples.latest()?;
    let bytes = match derivation {
        Derivation::Latest => latest.clone(),
        Derivation::Medoid => medoid(samples, class, max_base).unwrap_or_else(|| latest.clone()),
        Derivation::Concat { max_bytes } => concat(samples, max_bytes.min(max_base)),
        Derivation::Chunks { max_bytes } => chunked(samples, max_bytes.min(max_base)),
    };
    Some(Base::new(class, bytes, max_base))
}

/// zstd level for the deltas that rank samples: fast, and ranks like the serving level.
const MEDOID_LEVEL: i32 = 1;

fn medoid(samples: &Samples, class: &str, max_base: usize) -> Option<Bytes> {
    let bases: Vec<Base> = samples
        .iter()
        .filter_map(|sample| Base::new(class, sample.clone(), max_base).ok())
        .collect();
    let encoder = DczEncoder::new(MEDOID_LEVEL);
    let mut best: Option<(usize, &Base)> = None;
    for candidate in &bases {
        let mut total: usize = 0;
        for other in bases.iter().filter(|other| other.id() != candidate.id()) {
            let delta = encoder
                .encode(candidate, other.bytes())
                .map_or(other.len(), |d| d.len());
            total = total.saturating_add(delta);
        }
        // Ties go to the later sample (the iteration is oldest first).
        if best.is_none_or(|(best_total, _)| total <= best_total) {
            best = Some((total, candidate));
        }
    }
    best.map(|(_, base)| base.bytes().clone())
}

fn concat(samples: &Samples, max_bytes: usize) -> Bytes {
    let mut kept: Vec<&Bytes> = Vec::new();
    let mut total = 0usize;
    for sample in samples.iter().rev() {
        let next = total.saturating_add(sample.len());
        if next > max_bytes && !kept.is_empty() {
            break;
        }
        total = next;
        kept.push(sample);
    }
    let mut out = Vec::with_capacity(total);
    for sample in kept.iter().rev() {
        out.extend_from_slice(sample);
    }
    Bytes::from(out)
}

fn chunked(samples: &Samples, max_bytes: usize) -> Bytes {
    let Some(latest) = samples.latest() else {
        return Bytes::new();
    };
    let mut seen: HashSet<&[u8]> = chunks(latest).collect();
    let mut budget = max_bytes.saturating_sub(latest.len());
    let mut extra: Vec<&[u8]> = Vec::new();
    'samples: for sample in samples.iter().rev().skip(1) {
        for chunk in chunks(sample) {
            if seen.contains(chunk) {
                continue;
            }
            if chunk.len() > budget {
                break 'samples;
            }
            budget -= chunk.len();
            seen.insert(chunk);
            extra.push(chunk);
        }
    }
    let mut out = Vec::with_capacity(max_bytes.min(latest.len() + extra.iter().map(|c| c.len()).sum::<usize>()));
    for chunk in extra.iter().rev() {
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(latest);
    Bytes::from(out)
}

/// Content-defined chunks (a gear rolling hash; 64 to 1024 bytes, about 320 on average), so an insertion
/// moves only the chunk boundaries next to it.
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    const MIN: usize = 64;
    const MAX: usize = 1024;
    // The top bits depend on the last 64 bytes (the hash shifts left one bit a byte).
    const SHIFT: u32 = 56;
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= data.len() {
            return None;
        }
        let mut hash: u64 = 0;
        let mut end = data.len().min(start + MAX);
        for (offset, &byte) in data[start..end].iter().enumerate() {
            hash = (hash << 1).wrapping_add(GEAR[byte as usize]);
            if offset + 1 >= MIN && hash >> SHIFT == 0 {
                end = start + offset + 1;
                break;
            }
        }
        let chunk = &data[start..end];
        start = end;
        Some(chunk)
    })
}

/// Gear table: 256 fixed pseudo-random words (SplitMix64 from a constant seed).
const GEAR: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut state: u64 = 0x7465_726e_6465_6c74; // "terndelt"
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(texts: &[&str]) -> Samples {
        let mut samples = Samples::new(8);
        for text in texts {
            samples.push(Bytes::from(text.to_string()));
        }
        samples
    }

    #[test]
    fn samples_are_bounded_and_skip_repeats() {
        let mut samples = Samples::new(2);
        assert!(samples.push(Bytes::from_static(b"a")));
        assert!(!samples.push(Bytes::from_static(b"a")));
        assert!(samples.push(Bytes::from_static(b"b")));
        assert!(samples.push(Bytes::from_static(b"c")));
        let held: Vec<&[u8]> = samples.iter().map(|b| b.as_ref()).collect();
        assert_eq!(held, vec![b"b".as_ref(), b"c".as_ref()]);
    }

    #[test]
    fn no_samples_no_base() {
        assert!(derive(Derivation::Latest, &Samples::new(4), "c", 100).is_none());
    }

    #[test]
    fn latest_and_concat() {
        let samples = samples(&["one ", "two ", "three"]);
        let base = |derivation| derive(derivation, &samples, "c", 100).expect("samples").expect("valid");
        assert_eq!(base(Derivation::Latest).bytes().as_ref(), b"three");
        assert_eq!(
            base(Derivation::Concat { max_bytes: 100 }).bytes().as_ref(),
            b"one two three"
        );
        assert_eq!(base(Derivation::Concat { max_bytes: 9 }).bytes().as_ref(), b"two three");
        // The latest alone is kept even when over the cap; the class bound then refuses it.
        assert_eq!(base(Derivation::Concat { max_bytes: 2 }).bytes().as_ref(), b"three");
        assert!(matches!(
            derive(Derivation::Latest, &samples, "c", 4),
            Some(Err(BaseError::TooLarge { .. }))
        ));
    }

    #[test]
    fn medoid_picks_the_typical_page() {
        let typical = "<html>".to_string() + &"common text. ".repeat(200) + "</html>";
        let variant_a = typical.replace("</html>", "<p>a</p></html>");
        let variant_b = typical.replace("</html>", "<p>b</p></html>");
        let odd = "<html>an error page, nothing like the others</html>";
        let samples = samples(&[&variant_a, &typical, &variant_b, odd]);
        let base = derive(Derivation::Medoid, &samples, "c", 1 << 20)
            .expect("samples")
            .expect("valid");
        assert!(base.bytes().as_ref() != odd.as_bytes());
        assert!(String::from_utf8_lossy(base.bytes()).contains("common text"));
    }

    #[test]
    fn chunks_adds_what_the_latest_lacks() {
        let old: String = (0..200).map(|n| format!("<p>old paragraph {n}</p>\n")).collect();
        let latest: String = (100..300).map(|n| format!("<p>old paragraph {n}</p>\n")).collect();
        let samples = samples(&[&old, &latest]);
        let base = derive(Derivation::Chunks { max_bytes: 1 << 20 }, &samples, "c", 1 << 20)
            .expect("samples")
            .expect("valid");
        let text = String::from_utf8_lossy(base.bytes()).to_string();
        assert!(text.ends_with(&latest));
        assert!(text.contains("old paragraph 5</p>"));
        assert!(base.len() < old.len() + latest.len(), "shared chunks are not repeated");
        let capped = derive(
            Derivation::Chunks {
                max_bytes: latest.len(),
            },
            &samples,
            "c",
            1 << 20,
        )
        .expect("samples")
        .expect("valid");
        assert_eq!(capped.bytes().as_ref(), latest.as_bytes());
    }

    #[test]
    fn chunks_cover_the_input() {
        let data: Vec<u8> = (0..10_000u32).map(|n| (n * 7 % 251) as u8).collect();
        let pieces: Vec<&[u8]> = chunks(&data).collect();
        assert_eq!(pieces.concat(), data);
        assert!(pieces.iter().all(|piece| piece.len() <= 1024));
        assert!(pieces.len() > 5);
    }
}
