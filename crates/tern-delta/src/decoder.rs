//! The edge-side decoder (seed 000: the edge rebuilds the page from the template it holds and the
//! difference it receives). A page comes out only when it matches the digest the encoder sent; every other
//! outcome is a typed failure, counted, after which the edge fetches the full page. A wrong page is never
//! returned.

use std::time::Instant;

use crate::base::{Base, BaseId, BaseStore};
use crate::dcz::{self, DczDecoder, DczError, Limits};
use crate::fields::ReprDigest;
use crate::metrics::{DecodeFailure, DecoderCounters};

/// Why no page came out of a delta.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The delta names a base the edge does not hold.
    #[error("base {0} not held")]
    MissingBase(BaseId),
    /// The delta carried no page digest.
    #[error("no page digest")]
    NoDigest,
    /// The rebuilt page does not have the digest sent with it.
    #[error("page does not match its digest")]
    DigestMismatch,
    /// The `dcz` stream is unusable.
    #[error(transparent)]
    Dcz(#[from] DczError),
}

impl DecodeError {
    /// The counter it goes to.
    pub fn failure(&self) -> DecodeFailure {
        match self {
            DecodeError::MissingBase(_) => DecodeFailure::MissingBase,
            DecodeError::NoDigest => DecodeFailure::NoDigest,
            DecodeError::DigestMismatch => DecodeFailure::DigestMismatch,
            DecodeError::Dcz(DczError::FrameTooLarge { .. } | DczError::TooLarge { .. }) => DecodeFailure::TooLarge,
            DecodeError::Dcz(_) => DecodeFailure::Malformed,
        }
    }
}

/// Rebuilds pages from deltas, within bounds, and checks them.
#[derive(Debug)]
pub struct Decoder {
    dcz: DczDecoder,
    counters: DecoderCounters,
}

impl Decoder {
    /// A decoder bounded by `limits`.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            dcz: DczDecoder::new(limits),
            counters: DecoderCounters::default(),
        }
    }

    /// Its counters.
    pub fn counters(&self) -> &DecoderCounters {
        &self.counters
    }

    /// Counts a failure found before decoding (a delta too large or cut off on its way in).
    pub fn count_failure(&mut self, error: &DecodeError) {
        self.counters.fail(error.failure());
    }

    /// The page in the `dcz` `body` against `base`, returned only if its digest is `digest`.
    pub fn decode(&mut self, body: &[u8], base: &Base, digest: Option<&ReprDigest>) -> Result<Vec<u8>, DecodeError> {
        let result = self.rebuild(body, base, digest);
        self.count(body.len(), &result);
        result
    }

    /// As [`Decoder::decode`], with the base the `dcz` header names looked up in `store` (and recorded as
    /// named at `now`).
    pub fn decode_with(
        &mut self,
        body: &[u8],
        store: &mut BaseStore,
        digest: Option<&ReprDigest>,
        now: Instant,
    ) -> Result<Vec<u8>, DecodeError> {
        let result = match dcz::read_header(body) {
            Ok(named) => match store.name(&named, now) {
                Some(base) => self.rebuild(body, base, digest),
                None => Err(DecodeError::MissingBase(named)),
            },
            Err(error) => Err(DecodeError::Dcz(error)),
        };
        self.count(body.len(), &result);
        result
    }

    /// Checks a full page against its digest (when one came); counted like a delta's check.
    pub fn verify_full(&mut self, page: &[u8], digest: Option<&ReprDigest>) -> Result<(), DecodeError> {
        let Some(digest) = digest else {
            return Ok(());
        };
        self.counters.full_pages = self.counters.full_pages.saturating_add(1);
        if digest.verify(page) {
            return Ok(());
        }
        self.counters.fail(DecodeFailure::DigestMismatch);
        Err(DecodeError::DigestMismatch)
    }

    fn rebuild(&mut self, body: &[u8], base: &Base, digest: Option<&ReprDigest>) -> Result<Vec<u8>, DecodeError> {
        // Without a digest there is nothing to check the page against: not worth decoding.
        let digest = digest.ok_or(DecodeError::NoDigest)?;
        let page = self.dcz.decode(body, base)?;
        if !digest.verify(&page) {
            return Err(DecodeError::DigestMismatch);
        }
        Ok(page)
    }

    fn count(&mut self, body_len: usize, result: &Result<Vec<u8>, DecodeError>) {
        match result {
            Ok(page) => self.counters.decoded(body_len, page.len()),
            Err(error) => self.counters.fail(error.failure()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::StoreConfig;
    use proptest::prelude::*;

    fn base() -> Base {
        let text: String = (0..300).map(|n| format!("<p>line {n} of the template</p>\n")).collect();
        Base::new("c", text.into_bytes(), 1 << 20).expect("valid")
    }

    fn page(base: &Base) -> Vec<u8> {
        String::from_utf8_lossy(base.bytes())
            .replace("line 150 of", "line 150, now changed, of")
            .into_bytes()
    }

    #[test]
    fn a_page_comes_out_only_with_its_digest() {
        let base = base();
        let page = page(&base);
        let body = dcz::encode(&base, &page, 3).expect("encodes");
        let mut decoder = Decoder::new(Limits::default());
        assert_eq!(
            decoder.decode(&body, &base, Some(&ReprDigest::of(&page))),
            Ok(page.clone())
        );
        assert_eq!(
            decoder.decode(&body, &base, Some(&ReprDigest::of(b"another page"))),
            Err(DecodeError::DigestMismatch)
        );
        assert_eq!(decoder.decode(&body, &base, None), Err(DecodeError::NoDigest));
        let counters = decoder.counters();
        assert_eq!(counters.pages_decoded, 1);
        assert_eq!(counters.page_bytes, page.len() as u64);
        assert_eq!(counters.digest_mismatches(), 1);
        assert_eq!(counters.failures(DecodeFailure::NoDigest), 1);
    }

    #[test]
    fn bases_come_from_the_store() {
        let now = Instant::now();
        let base = base();
        let page = page(&base);
        let body = dcz::encode(&base, &page, 3).expect("encodes");
        let digest = ReprDigest::of(&page);
        let mut store = BaseStore::new(StoreConfig::default());
        let mut decoder = Decoder::new(Limits::default());
        assert_eq!(
            decoder.decode_with(&body, &mut store, Some(&digest), now),
            Err(DecodeError::MissingBase(base.id()))
        );
        store.insert_current(base, now).expect("fits");
        assert_eq!(decoder.decode_with(&body, &mut store, Some(&digest), now), Ok(page));
        assert_eq!(
            decoder.decode_with(b"short", &mut store, Some(&digest), now),
            Err(DecodeError::Dcz(DczError::Truncated))
        );
        let counters = decoder.counters();
        assert_eq!(counters.failures(DecodeFailure::MissingBase), 1);
        assert_eq!(counters.failures(DecodeFailure::Malformed), 1);
    }

    #[test]
    fn full_pages_are_checked_too() {
        let mut decoder = Decoder::new(Limits::default());
        let digest = ReprDigest::of(b"page");
        assert_eq!(decoder.verify_full(b"page", Some(&digest)), Ok(()));
        assert_eq!(
            decoder.verify_full(b"gape", Some(&digest)),
            Err(DecodeError::DigestMismatch)
        );
        assert_eq!(decoder.verify_full(b"anything", None), Ok(()));
        assert_eq!(decoder.counters().full_pages, 2);
        assert_eq!(decoder.counters().digest_mismatches(), 1);
    }

    #[test]
    fn oversized_deltas_count_as_too_large() {
        let base = base();
        let body = dcz::encode(&base, &vec![b'a'; 50_000], 3).expect("encodes");
        let mut decoder = Decoder::new(Limits {
            max_decoded: 10_000,
            ..Limits::default()
        });
        let digest = ReprDigest::of(&vec![b'a'; 50_000]);
        assert!(matches!(
            decoder.decode(&body, &base, Some(&digest)),
            Err(DecodeError::Dcz(DczError::TooLarge { .. }))
        ));
        assert_eq!(decoder.counters().failures(DecodeFailure::TooLarge), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn a_damaged_delta_never_gives_a_wrong_page(at in 0usize..10_000, flip in 1u8..=255, cut in any::<bool>()) {
            let base = base();
            let page = page(&base);
            let mut body = dcz::encode(&base, &page, 3).expect("encodes");
            let at = at % body.len();
            if cut {
                body.truncate(at);
            } else {
                body[at] ^= flip;
            }
            let mut decoder = Decoder::new(Limits::default());
            match decoder.decode(&body, &base, Some(&ReprDigest::of(&page))) {
                Ok(decoded) => prop_assert_eq!(decoded, page),
                Err(_) => prop_assert_eq!(decoder.counters().pages_decoded, 0),
            }
        }
    }
}
