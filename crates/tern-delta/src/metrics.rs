//! Counters the `tern delta` role and the edge export on `/metrics` (issue 12): pages encoded, bytes raw
//! against sent, full-page fallbacks by reason, base changes, digest mismatches. Plain structs of `u64`s
//! that only grow (saturating); the driver reads them and renders Prometheus text.

use crate::candidate::NotCandidate;

/// Why the encoder answered a full page instead of a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// The request named no base (`Available-Dictionary` absent).
    NoBaseNamed,
    /// The request named a base the store does not hold (never existed, or evicted).
    UnknownBase,
    /// The named base belongs to another class.
    OtherClass,
    /// The delta was not smaller than the page.
    NotSmaller,
    /// The page exceeds the encoder's bound.
    PageTooLarge,
    /// zstd failed.
    EncodeFailed,
}

impl Fallback {
    /// Every reason, in a fixed order (for counters).
    pub const ALL: [Fallback; 6] = [
        Fallback::NoBaseNamed,
        Fallback::UnknownBase,
        Fallback::OtherClass,
        Fallback::NotSmaller,
        Fallback::PageTooLarge,
        Fallback::EncodeFailed,
    ];

    /// A metrics label.
    pub const fn label(self) -> &'static str {
        match self {
            Fallback::NoBaseNamed => "no_base_named",
            Fallback::UnknownBase => "unknown_base",
            Fallback::OtherClass => "other_class",
            Fallback::NotSmaller => "not_smaller",
            Fallback::PageTooLarge => "page_too_large",
            Fallback::EncodeFailed => "encode_failed",
        }
    }

    /// Position in [`Fallback::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Counts per [`Fallback`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FallbackCounts([u64; Fallback::ALL.len()]);

impl FallbackCounts {
    /// The count of `reason`.
    pub fn get(&self, reason: Fallback) -> u64 {
        self.0[reason.index()]
    }

    /// Adds one.
    pub fn add(&mut self, reason: Fallback) {
        let slot = &mut self.0[reason.index()];
        *slot = slot.saturating_add(1);
    }

    /// All counts with their labels.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Fallback::ALL.iter().map(|reason| (reason.label(), self.get(*reason)))
    }

    /// Sum over reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, n| sum.saturating_add(*n))
    }
}

/// Counts per [`NotCandidate`] reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusalCounts([u64; NotCandidate::ALL.len()]);

impl RefusalCounts {
    /// The count of `reason`.
    pub fn get(&self, reason: NotCandidate) -> u64 {
        self.0[reason.index()]
    }

    /// Adds one.
    pub fn add(&mut self, reason: NotCandidate) {
        let slot = &mut self.0[reason.index()];
        *slot = slot.saturating_add(1);
    }

    /// All counts with their labels.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        NotCandidate::ALL
            .iter()
            .map(|reason| (reason.label(), self.get(*reason)))
    }
}

/// The origin-side encoder's counters, per class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncoderCounters {
    /// Pages passed to the encoder.
    pub pages: u64,
    /// Pages answered with a delta.
    pub pages_encoded: u64,
    /// Bytes of all pages (identity).
    pub raw_bytes: u64,
    /// Bytes answered: deltas, and full pages for fallbacks.
    pub sent_bytes: u64,
    /// Full-page answers by reason.
    pub fallbacks: FallbackCounts,
    /// Times the class got a new current base.
    pub base_changes: u64,
    /// Responses kept as base candidates.
    pub candidates: u64,
    /// Responses refused as base candidates, by reason.
    pub refused: RefusalCounts,
}

impl EncoderCounters {
    /// Counts a delta of `delta_len` bytes for a page of `page_len` bytes.
    pub fn delta(&mut self, page_len: usize, delta_len: usize) {
        self.pages = self.pages.saturating_add(1);
        self.pages_encoded = self.pages_encoded.saturating_add(1);
        self.raw_bytes = self.raw_bytes.saturating_add(page_len as u64);
        self.sent_bytes = self.sent_bytes.saturating_add(delta_len as u64);
    }

    /// Counts a full page of `page_len` bytes sent for `reason`.
    pub fn full(&mut self, page_len: usize, reason: Fallback) {
        self.pages = self.pages.saturating_add(1);
        self.raw_bytes = self.raw_bytes.saturating_add(page_len as u64);
        self.sent_bytes = self.sent_bytes.saturating_add(page_len as u64);
        self.fallbacks.add(reason);
    }
}

/// Why the edge could not use a delta (and fetched the full page instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeFailure {
    /// The delta names a base the edge does not hold.
    MissingBase,
    /// The rebuilt page does not match its digest.
    DigestMismatch,
    /// No page digest came with the delta.
    NoDigest,
    /// The `dcz` stream is malformed (magic, truncation, corruption, trailing bytes, wrong base).
    Malformed,
    /// The stream or the page exceeds a bound.
    TooLarge,
}

impl DecodeFailure {
    /// Every reason, in a fixed order (for counters).
    pub const ALL: [DecodeFailure; 5] = [
        DecodeFailure::MissingBase,
        DecodeFailure::DigestMismatch,
        DecodeFailure::NoDigest,
        DecodeFailure::Malformed,
        DecodeFailure::TooLarge,
    ];

    /// A metrics label.
    pub const fn label(self) -> &'static str {
        match self {
            DecodeFailure::MissingBase => "missing_base",
            DecodeFailure::DigestMismatch => "digest_mismatch",
            DecodeFailure::NoDigest => "no_digest",
            DecodeFailure::Malformed => "malformed",
            DecodeFailure::TooLarge => "too_large",
        }
    }

    /// Position in [`DecodeFailure::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The edge-side decoder's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecoderCounters {
    /// Pages rebuilt from a delta and verified.
    pub pages_decoded: u64,
    /// Bytes of the deltas those pages came in.
    pub delta_bytes: u64,
    /// Bytes of those pages.
    pub page_bytes: u64,
    /// Full pages checked against their digest.
    pub full_pages: u64,
    /// Failures by reason (each leads to a full-page fetch).
    failures: [u64; DecodeFailure::ALL.len()],
}

impl DecoderCounters {
    /// The count of `failure`.
    pub fn failures(&self, failure: DecodeFailure) -> u64 {
        self.failures[failure.index()]
    }

    /// Digest mismatches (deltas and full pages): pages that were never served.
    pub fn digest_mismatches(&self) -> u64 {
        self.failures(DecodeFailure::DigestMismatch)
    }

    /// All failure counts with their labels.
    pub fn iter_failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DecodeFailure::ALL
            .iter()
            .map(|reason| (reason.label(), self.failures(*reason)))
    }

    /// Adds one failure.
    pub fn fail(&mut self, failure: DecodeFailure) {
        let slot = &mut self.failures[failure.index()];
        *slot = slot.saturating_add(1);
    }

    /// Counts a page rebuilt from a delta.
    pub fn decoded(&mut self, delta_len: usize, page_len: usize) {
        self.pages_decoded = self.pages_decoded.saturating_add(1);
        self.delta_bytes = self.delta_bytes.saturating_add(delta_len as u64);
        self.page_bytes = self.page_bytes.saturating_add(page_len as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_saturate() {
        let mut counters = EncoderCounters {
            raw_bytes: u64::MAX - 1,
            sent_bytes: u64::MAX,
            ..EncoderCounters::default()
        };
        counters.delta(10, 5);
        counters.full(usize::MAX, Fallback::NotSmaller);
        assert_eq!((counters.raw_bytes, counters.sent_bytes), (u64::MAX, u64::MAX));
        assert_eq!((counters.pages, counters.pages_encoded), (2, 1));
        assert_eq!(counters.fallbacks.get(Fallback::NotSmaller), 1);
        assert_eq!(counters.fallbacks.total(), 1);
    }

    #[test]
    fn labels_and_indexes_line_up() {
        for (n, reason) in Fallback::ALL.iter().enumerate() {
            assert_eq!(reason.index(), n);
        }
        for (n, reason) in DecodeFailure::ALL.iter().enumerate() {
            assert_eq!(reason.index(), n);
        }
        let counts = FallbackCounts::default();
        let labels: Vec<&str> = counts.iter().map(|(label, _)| label).collect();
        assert_eq!(labels.len(), Fallback::ALL.len());
        let mut decoder = DecoderCounters::default();
        decoder.fail(DecodeFailure::DigestMismatch);
        assert_eq!(decoder.digest_mismatches(), 1);
        assert_eq!(decoder.iter_failures().map(|(_, n)| n).sum::<u64>(), 1);
    }
}
