//! The `dcz` content coding (RFC 9842 section 5, "Dictionary-Compressed Zstandard"): a 40-byte header (the
//! 8 bytes [`MAGIC`], a zstd skippable frame of 32 bytes, then the SHA-256 of the dictionary) followed by
//! one zstd frame (RFC 8878) compressed with the dictionary as raw content.
//!
//! Raw content: the encoder uses the base as zstd reference prefix, as `zstd --patch-from` does; the decoder
//! loads it as a dictionary, which zstd reads as raw content because a base never starts with the
//! formatted-dictionary magic ([`crate::base::ZSTD_DICTIONARY_MAGIC`]). Both are the same bitstream
//! semantics browsers use for `type=raw` (the integration tests check both directions against the `zstd`
//! program). The frame records its content size, no checksum (the page digest covers it), and no
//! dictionary id (raw content has none).
//!
//! Window: a prefix is reachable only within the window behind the byte being coded, so the encoder asks
//! for a window of base + page, but never more than RFC 9842 section 5 requires clients to accept (the
//! larger of 8 MB and 1.25 times the dictionary, at most 128 MB).
//!
//! Decoding is bounded by [`Limits`]: frame size, decoded size, and the window a frame may ask for. Wrong
//! magic, a dictionary hash other than the base given, a truncated or corrupt frame, trailing bytes and
//! oversized output are each a [`DczError`]; partial output is never returned.

use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective, Strategy};

use crate::base::{Base, BaseId};

/// The first 8 bytes of every `dcz` stream: skippable frame magic 0x184D2A5E and length 32, little-endian.
pub const MAGIC: [u8; 8] = [0x5e, 0x2a, 0x4d, 0x18, 0x20, 0x00, 0x00, 0x00];

/// Length of the `dcz` header: [`MAGIC`] and the SHA-256 of the dictionary.
pub const HEADER_LEN: usize = 40;

/// Smallest zstd window log (1 KB).
const WINDOW_LOG_MIN: u32 = 10;

/// RFC 9842's ceiling on the window a client must accept: 128 MB.
const WINDOW_LOG_RFC_MAX: u32 = 27;

/// Bounds of decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `dcz` stream accepted, header included, in bytes.
    pub max_frame: usize,
    /// Largest decoded page, in bytes.
    pub max_decoded: usize,
    /// Largest window a frame may ask for, as a power of two (zstd allocates about this much).
    pub max_window_log: u32,
}

impl Default for Limits {
    /// 32 MB streams and pages, and a window of at most 32 MB: a frame that records its size has a window
    /// of that size, so the window bound matches the page bound. (RFC 9842 lets encoders ask for up to
    /// 128 MB; this crate's encoder asks for at most the larger of 8 MB and 1.25 times the base.)
    fn default() -> Self {
        Limits {
            max_frame: 32 << 20,
            max_decoded: 32 << 20,
            max_window_log: 25,
        }
    }
}

/// What went wrong encoding or decoding `dcz`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DczError {
    /// The stream is larger than [`Limits::max_frame`].
    #[error("dcz stream of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Bytes received.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The stream ends inside the header or the zstd frame.
    #[error("truncated dcz stream")]
    Truncated,
    /// The first 8 bytes are not [`MAGIC`].
    #[error("not a dcz stream")]
    BadMagic,
    /// The header names another dictionary than the base given.
    #[error("dcz stream names base {named}, not {given}")]
    WrongBase {
        /// The base the header names.
        named: BaseId,
        /// The base given to decode with.
        given: BaseId,
    },
    /// The decoded page would exceed [`Limits::max_decoded`].
    #[error("decoded page exceeds the limit of {max} bytes")]
    TooLarge {
        /// The bound.
        max: usize,
    },
    /// Bytes follow the zstd frame.
    #[error("bytes after the zstd frame")]
    TrailingData,
    /// zstd refused the frame (corrupt data, a window over the limit, ...).
    #[error("zstd: {0}")]
    Zstd(&'static str),
}

fn zstd_error(code: usize) -> DczError {
    DczError::Zstd(zstd_safe::get_error_name(code))
}

/// The base a `dcz` stream names, from its header.
pub fn read_header(stream: &[u8]) -> Result<BaseId, DczError> {
    let header = stream.get(..HEADER_LEN).ok_or(DczError::Truncated)?;
    if header[..MAGIC.len()] != MAGIC {
        return Err(DczError::BadMagic);
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&header[MAGIC.len()..]);
    Ok(BaseId::from_bytes(hash))
}

/// The window log for a page of `page_len` against a base of `base_len` (see the module header).
pub fn window_log(base_len: usize, page_len: usize) -> u32 {
    let wanted = ceil_log2(base_len.saturating_add(page_len)).max(WINDOW_LOG_MIN);
    let client_bound = (8usize << 20).max(base_len.saturating_add(base_len / 4));
    let allowed = floor_log2(client_bound).min(WINDOW_LOG_RFC_MAX);
    wanted.min(allowed)
}

fn ceil_log2(n: usize) -> u32 {
    usize::BITS - n.saturating_sub(1).leading_zeros()
}

fn floor_log2(n: usize) -> u32 {
    (usize::BITS - 1).saturating_sub(n.max(1).leading_zeros())
}

/// How the encoder looks for matches in the base and the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// zstd's own parameters of the level (what `zstd --patch-from -LEVEL` does).
    Level,
    /// The delta search: zstd's `lazy2` strategy (a match is taken only when the next two positions do
    /// not start a longer one) over a row hash of 2^17 entries, 2^3 candidates a position, matches of 5
    /// bytes and more. Measured against zstd's levels (`cargo run --release -p tern-delta --features
    /// testsuite --example floor -- --grid`): see [`crate::encoder::DEFAULT_LEVEL`].
    Delta,
}

/// Levels below this one search with [`Search::Delta`]; this one and above with their own parameters
/// (level 10 is `lazy2` with a deeper search, level 11 on binary trees and optimal parsing).
pub const DELTA_SEARCH_BELOW: i32 = 10;

/// Compresses pages into `dcz` streams.
///
/// Each page is compressed with the base as zstd reference prefix (raw content). Below level
/// [`DELTA_SEARCH_BELOW`] the match search is [`Search::Delta`]: zstd's fast levels keep one or two
/// candidates per hash (`fast`, `dfast`) or take the first match (`greedy`), and on pages of many
/// similar lines (story lists, tables) the first candidate is usually a similar line, not the same one
/// in the base; `lazy2` with eight candidates finds it. On the benchmark's pages it makes deltas 7 to 38%
/// smaller than level 3 with long-distance matching (the encoder's earlier setting) at an encode p99 of
/// about 0.7 ms for a 113 KB page. Long-distance matching is off by default: with `lazy2` it made the
/// deltas of the news, product and price-list pages 5 to 35% larger. It wins only on a bare list of
/// lines that differ in nothing but a number (2,000 such lines, five new: 107 bytes with it, 238
/// without), where both are about 0.2% of the page; with a minimum match long enough not to hurt the
/// other pages (4 KB) it costs 1.5 ms a page.
///
/// [`DczEncoder::encode`] makes a context per page with the base as prefix, which zstd indexes anew
/// each time; [`DczEncoder::prepare`] loads a base once (by copy: zstd's prefix API borrows the base for
/// one frame only, which a long-lived context could not express without unsafe code) and
/// [`DczEncoder::encode_prepared`] reuses that index for every page against it: a third of the time for a
/// 113 KB page five minutes after its base, two thirds an hour after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DczEncoder {
    level: i32,
    long_distance: bool,
    search: Search,
}

impl DczEncoder {
    /// An encoder at zstd `level`, searching with [`Search::Delta`] below level [`DELTA_SEARCH_BELOW`],
    /// without long-distance matching (see [`crate::encoder::DEFAULT_LEVEL`] for the measured level).
    pub fn new(level: i32) -> Self {
        DczEncoder {
            level,
            long_distance: false,
            search: if level < DELTA_SEARCH_BELOW {
                Search::Delta
            } else {
                Search::Level
            },
        }
    }

    /// The same encoder with long-distance matching on or off (for measurement).
    pub fn with_long_distance(mut self, on: bool) -> Self {
        self.long_distance = on;
        self
    }

    /// The same encoder with another match search (for measurement).
    pub fn with_search(mut self, search: Search) -> Self {
        self.search = search;
        self
    }

    /// The `dcz` stream of `page` against `base`, in a context made for it (the base as prefix).
    pub fn encode(&self, base: &Base, page: &[u8]) -> Result<Vec<u8>, DczError> {
        let mut context = CCtx::create();
        self.configure(&mut context, window_log(base.len(), page.len()))?;
        context.ref_prefix(base.bytes()).map_err(zstd_error)?;
        frame(&mut context, base.id(), page)
    }

    /// `base` loaded into a context of its own (a copy, indexed on the first page), for encoding many
    /// pages against it with [`DczEncoder::encode_prepared`], without indexing the base again for each
    /// page. The streams are those of [`DczEncoder::encode`] for pages of 32 KB and more; below that zstd
    /// matches against the base's own index rather than a copy of it, which may choose other matches
    /// (on the benchmark's 30 KB product pages: 1,427 bytes against 1,426 on average).
    pub fn prepare(&self, base: &Base) -> Result<PreparedBase, DczError> {
        let mut context = CCtx::create();
        self.configure(&mut context, window_log(base.len(), base.len()))?;
        context.load_dictionary(base.bytes()).map_err(zstd_error)?;
        Ok(PreparedBase {
            id: base.id(),
            len: base.len(),
            encoder: self.clone(),
            context,
        })
    }

    /// The `dcz` stream of `page` against a base this encoder prepared.
    pub fn encode_prepared(&self, prepared: &mut PreparedBase, page: &[u8]) -> Result<Vec<u8>, DczError> {
        if prepared.encoder != *self {
            return Err(DczError::Zstd("base prepared by another encoder"));
        }
        prepared
            .context
            .set_parameter(CParameter::WindowLog(window_log(prepared.len, page.len())))
            .map_err(zstd_error)?;
        let result = frame(&mut prepared.context, prepared.id, page);
        if result.is_err() {
            // A failed frame leaves the session midway; the parameters and the base stay.
            let _ = prepared.context.reset(ResetDirective::SessionOnly);
        }
        result
    }

    fn configure(&self, context: &mut CCtx<'_>, window: u32) -> Result<(), DczError> {
        context
            .set_parameter(CParameter::CompressionLevel(self.level))
            .map_err(zstd_error)?;
        context
            .set_parameter(CParameter::WindowLog(window))
            .map_err(zstd_error)?;
        if self.search == Search::Delta {
            for parameter in [
                CParameter::Strategy(Strategy::ZSTD_lazy2),
                CParameter::SearchLog(3),
                CParameter::MinMatch(5),
                CParameter::HashLog(17),
                CParameter::ChainLog(17),
            ] {
                context.set_parameter(parameter).map_err(zstd_error)?;
            }
        }
        context
            .set_parameter(CParameter::EnableLongDistanceMatching(self.long_distance))
            .map_err(zstd_error)?;
        context
            .set_parameter(CParameter::ContentSizeFlag(true))
            .map_err(zstd_error)?;
        context
            .set_parameter(CParameter::ChecksumFlag(false))
            .map_err(zstd_error)?;
        Ok(())
    }
}

/// The `dcz` header naming `base`, then one zstd frame of `page` from a configured `context`.
fn frame(context: &mut CCtx<'_>, base: BaseId, page: &[u8]) -> Result<Vec<u8>, DczError> {
    let bound = zstd_safe::compress_bound(page.len());
    let mut out = Vec::with_capacity(HEADER_LEN.saturating_add(bound));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(base.as_bytes());
    let mut frame = Vec::with_capacity(bound);
    context.compress2(&mut frame, page).map_err(zstd_error)?;
    out.extend_from_slice(&frame);
    Ok(out)
}

/// A base loaded into a zstd context by [`DczEncoder::prepare`]: a copy of the base and its index (about
/// 1 MB for a 100 KB base at the default level).
pub struct PreparedBase {
    id: BaseId,
    len: usize,
    encoder: DczEncoder,
    context: CCtx<'static>,
}

impl PreparedBase {
    /// The base's id.
    pub fn id(&self) -> BaseId {
        self.id
    }
}

impl std::fmt::Debug for PreparedBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedBase")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

/// Encodes `page` against `base` at zstd `level` ([`DczEncoder::new`]).
pub fn encode(base: &Base, page: &[u8], level: i32) -> Result<Vec<u8>, DczError> {
    DczEncoder::new(level).encode(base, page)
}

/// Decodes `dcz` streams within [`Limits`]; keeps one zstd context for all of them.
pub struct DczDecoder {
    context: DCtx<'static>,
    limits: Limits,
    chunk: Vec<u8>,
}

impl std::fmt::Debug for DczDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DczDecoder").field("limits", &self.limits).finish()
    }
}

impl DczDecoder {
    /// A decoder bounded by `limits`.
    pub fn new(limits: Limits) -> Self {
        DczDecoder {
            context: DCtx::create(),
            limits,
            chunk: vec![0; DCtx::out_size()],
        }
    }

    /// Its limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The page in `stream`, decoded against `base`; the whole page or an error.
    pub fn decode(&mut self, stream: &[u8], base: &Base) -> Result<Vec<u8>, DczError> {
        if stream.len() > self.limits.max_frame {
            return Err(DczError::FrameTooLarge {
                len: stream.len(),
                max: self.limits.max_frame,
            });
        }
        let named = read_header(stream)?;
        if named != base.id() {
            return Err(DczError::WrongBase {
                named,
                given: base.id(),
            });
        }
        let frame = &stream[HEADER_LEN..];
        if frame.is_empty() {
            return Err(DczError::Truncated);
        }
        // A frame that declares its size is refused before any work when too large, and decoded into one
        // allocation otherwise.
        let declared = zstd_safe::get_frame_content_size(frame).ok().flatten();
        if let Some(size) = declared
            && size > self.limits.max_decoded as u64
        {
            return Err(DczError::TooLarge {
                max: self.limits.max_decoded,
            });
        }
        let result = self.decompress(frame, base, declared);
        let reset = self.context.reset(ResetDirective::SessionAndParameters);
        let page = result?;
        reset.map_err(zstd_error)?;
        Ok(page)
    }

    fn decompress(&mut self, frame: &[u8], base: &Base, declared: Option<u64>) -> Result<Vec<u8>, DczError> {
        let max = self.limits.max_decoded;
        let context = &mut self.context;
        context
            .reset(ResetDirective::SessionAndParameters)
            .map_err(zstd_error)?;
        context
            .set_parameter(DParameter::WindowLogMax(self.limits.max_window_log))
            .map_err(zstd_error)?;
        context.load_dictionary(base.bytes()).map_err(zstd_error)?;
        let mut page = Vec::new();
        if let Some(size) = declared {
            // Bounded by `max_decoded` above; `try_reserve` turns an allocation failure into an error.
            let size = usize::try_from(size).map_err(|_| DczError::TooLarge { max })?;
            page.try_reserve_exact(size).map_err(|_| DczError::TooLarge { max })?;
        }
        let mut input = InBuffer::around(frame);
        loop {
            let mut output = OutBuffer::around(self.chunk.as_mut_slice());
            let remaining = context.decompress_stream(&mut output, &mut input).map_err(zstd_error)?;
            let produced = output.pos();
            let chunk_full = produced == self.chunk.len();
            if page.len().saturating_add(produced) > max {
                return Err(DczError::TooLarge { max });
            }
            page.extend_from_slice(&self.chunk[..produced]);
            if remaining == 0 {
                break;
            }
            if input.pos() == frame.len() && !chunk_full {
                // All input consumed, output not limited by space, frame not finished: it was cut short.
                return Err(DczError::Truncated);
            }
        }
        if input.pos() != frame.len() {
            return Err(DczError::TrailingData);
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base(text: &[u8]) -> Base {
        Base::new("test", text.to_vec(), 1 << 24).expect("valid base")
    }

    fn page_like(base: &[u8], change: &str) -> Vec<u8> {
        let mut page = base.to_vec();
        let at = page.len() / 2;
        page.splice(at..at, change.bytes());
        page
    }

    fn html(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| format!("<li class=\"story\"><a href=\"/story/{i}\">Story number {i}</a></li>\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn round_trip_is_small_and_framed() {
        let base = base(&html(500));
        let page = page_like(base.bytes(), "<p>breaking: something happened</p>");
        let stream = encode(&base, &page, 3).expect("encodes");
        assert_eq!(stream[..8], MAGIC);
        assert_eq!(read_header(&stream), Ok(base.id()));
        // Lines that differ only in their number are the delta search's worst case (see `DczEncoder`):
        // 160 bytes here, 30 KB of page.
        assert!(stream.len() < HEADER_LEN + 160, "delta of {} bytes", stream.len());
        let decoded = DczDecoder::new(Limits::default())
            .decode(&stream, &base)
            .expect("decodes");
        assert_eq!(decoded, page);
    }

    #[test]
    fn the_delta_search_beats_the_fast_levels_on_a_news_page() {
        use crate::synthetic::News;
        let news = News::new(1);
        let mut decoder = DczDecoder::new(Limits::default());
        let (mut delta, mut fast, mut fast_ldm) = (0, 0, 0);
        for minute in [1445, 1500, 1620] {
            // A new story, comment counts and the ticker changed: the page 5 minutes later.
            let base = base(&news.page(minute - 5));
            let page = news.page(minute);
            let stream = DczEncoder::new(3).encode(&base, &page).expect("encodes");
            assert_eq!(decoder.decode(&stream, &base).expect("decodes"), page);
            delta += stream.len();
            let level = DczEncoder::new(3).with_search(Search::Level);
            fast += level.encode(&base, &page).expect("encodes").len();
            fast_ldm += level
                .with_long_distance(true)
                .encode(&base, &page)
                .expect("encodes")
                .len();
        }
        // Measured: 9 to 15% smaller than level 3's own search, with or without long-distance matching.
        assert!(delta * 100 < fast * 95, "delta search {delta} B, level 3 {fast} B");
        assert!(
            delta * 100 < fast_ldm * 95,
            "delta search {delta} B, level 3 with ldm {fast_ldm} B"
        );
        assert_eq!(DczEncoder::new(12).search, Search::Level);
    }

    #[test]
    fn a_prepared_base_gives_the_same_streams_page_after_page() {
        use crate::synthetic::{News, Products};
        let news = News::new(1);
        let products = Products::new(3);
        let encoder = DczEncoder::new(3);
        let mut decoder = DczDecoder::new(Limits::default());
        for (base, pages) in [
            (
                news.page(1440),
                vec![news.page(1445), news.page(1500), news.page(1441), Vec::new()],
            ),
            (products.page(1, 0), vec![products.page(2, 0), products.page(3, 60)]),
            (html(10), vec![html(2000), html(11)]),
        ] {
            let base = super::tests::base(&base);
            let mut prepared = encoder.prepare(&base).expect("prepares");
            assert_eq!(prepared.id(), base.id());
            for page in pages {
                let stream = encoder.encode_prepared(&mut prepared, &page).expect("encodes");
                assert_eq!(decoder.decode(&stream, &base).expect("decodes"), page);
                let fresh = encoder.encode(&base, &page).expect("encodes");
                // zstd indexes a loaded base as it indexes a prefix; a page below 32 KB is matched
                // against the base's own index instead of a copy of it, which may pick other matches.
                let (a, b) = (stream.len() as f64, fresh.len() as f64);
                assert!((a - b).abs() <= b * 0.05 + 8.0, "prepared {a} B, fresh {b} B");
            }
        }
        let mut prepared = encoder.prepare(&base(&html(10))).expect("prepares");
        assert!(DczEncoder::new(5).encode_prepared(&mut prepared, b"page").is_err());
        assert!(encoder.encode_prepared(&mut prepared, b"page").is_ok());
    }

    #[test]
    fn the_encoder_and_decoder_are_reusable_and_send() {
        fn assert_send<T: Send>() {}
        assert_send::<DczEncoder>();
        assert_send::<PreparedBase>();
        assert_send::<DczDecoder>();
        assert_send::<crate::Encoder>();
        assert_send::<crate::Decoder>();
        assert_send::<crate::BaseStore>();
        let first = base(&html(100));
        let second = base(&html(120));
        let encoder = DczEncoder::new(3);
        let mut decoder = DczDecoder::new(Limits::default());
        for round in 0..3 {
            for base in [&first, &second] {
                let page = page_like(base.bytes(), &format!("round {round}"));
                let stream = encoder.encode(base, &page).expect("encodes");
                assert_eq!(decoder.decode(&stream, base).expect("decodes"), page);
            }
        }
    }

    #[test]
    fn empty_page_round_trips() {
        let base = base(b"some base");
        let stream = encode(&base, b"", 3).expect("encodes");
        assert_eq!(
            DczDecoder::new(Limits::default()).decode(&stream, &base),
            Ok(Vec::new())
        );
    }

    #[test]
    fn header_errors() {
        let base = base(&html(10));
        let stream = encode(&base, &html(11), 3).expect("encodes");
        let mut decoder = DczDecoder::new(Limits::default());
        assert_eq!(decoder.decode(&[], &base), Err(DczError::Truncated));
        assert_eq!(decoder.decode(&stream[..39], &base), Err(DczError::Truncated));
        assert_eq!(decoder.decode(&stream[..40], &base), Err(DczError::Truncated));
        let mut bad_magic = stream.clone();
        bad_magic[0] ^= 1;
        assert_eq!(decoder.decode(&bad_magic, &base), Err(DczError::BadMagic));
        let other = super::tests::base(b"another base");
        assert_eq!(
            decoder.decode(&stream, &other),
            Err(DczError::WrongBase {
                named: base.id(),
                given: other.id()
            })
        );
        // The decoder still works after errors.
        assert_eq!(decoder.decode(&stream, &base), Ok(html(11)));
    }

    #[test]
    fn truncated_frames_are_errors_at_every_length() {
        let base = base(&html(50));
        let page = page_like(&html(300), "new");
        let stream = encode(&base, &page, 3).expect("encodes");
        let mut decoder = DczDecoder::new(Limits::default());
        for len in HEADER_LEN..stream.len() {
            let result = decoder.decode(&stream[..len], &base);
            assert!(
                result.is_err(),
                "a stream cut to {len} of {} bytes decoded",
                stream.len()
            );
        }
        assert_eq!(decoder.decode(&stream, &base), Ok(page));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let base = base(&html(10));
        let mut stream = encode(&base, &html(12), 3).expect("encodes");
        stream.extend_from_slice(b"extra");
        assert_eq!(
            DczDecoder::new(Limits::default()).decode(&stream, &base),
            Err(DczError::TrailingData)
        );
    }

    #[test]
    fn size_limits() {
        let base = base(b"0123456789");
        let page = vec![b'a'; 100_000];
        let stream = encode(&base, &page, 3).expect("encodes");
        let limits = |max_frame, max_decoded| Limits {
            max_frame,
            max_decoded,
            max_window_log: 27,
        };
        assert_eq!(
            DczDecoder::new(limits(10, 1 << 20)).decode(&stream, &base),
            Err(DczError::FrameTooLarge {
                len: stream.len(),
                max: 10
            })
        );
        // Declared content size over the limit: refused up front.
        assert_eq!(
            DczDecoder::new(limits(1 << 20, 99_999)).decode(&stream, &base),
            Err(DczError::TooLarge { max: 99_999 })
        );
        assert_eq!(
            DczDecoder::new(limits(1 << 20, 100_000)).decode(&stream, &base),
            Ok(page)
        );
    }

    #[test]
    fn undeclared_sizes_are_bounded_while_decoding() {
        // A frame from a streaming compressor does not declare its size.
        let base = base(b"0123456789");
        let page = vec![b'z'; 300_000];
        let mut frame = Vec::new();
        {
            use std::io::Write;
            let mut writer =
                zstd::stream::write::Encoder::with_ref_prefix(&mut frame, 3, base.bytes()).expect("encoder");
            writer.write_all(&page).expect("write");
            writer.finish().expect("finish");
        }
        assert!(matches!(zstd_safe::get_frame_content_size(&frame), Ok(None)));
        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(base.id().as_bytes());
        stream.extend_from_slice(&frame);
        let limits = Limits {
            max_decoded: 200_000,
            ..Limits::default()
        };
        assert_eq!(
            DczDecoder::new(limits).decode(&stream, &base),
            Err(DczError::TooLarge { max: 200_000 })
        );
        assert_eq!(DczDecoder::new(Limits::default()).decode(&stream, &base), Ok(page));
    }

    #[test]
    fn windows_over_the_limit_are_refused() {
        let base = base(&html(10));
        let page = html(20_000); // about 1.2 MB: a 2 MB window
        let stream = encode(&base, &page, 1).expect("encodes");
        let limits = Limits {
            max_window_log: 16,
            ..Limits::default()
        };
        assert!(matches!(
            DczDecoder::new(limits).decode(&stream, &base),
            Err(DczError::Zstd(_))
        ));
    }

    #[test]
    fn window_sizes_follow_rfc_9842() {
        assert_eq!(window_log(0, 0), 10);
        assert_eq!(window_log(100_000, 100_000), 18);
        // Base + page beyond 8 MB: capped at 8 MB unless the base is large.
        assert_eq!(window_log(1 << 20, 20 << 20), 23);
        assert_eq!(window_log(16 << 20, 16 << 20), 24); // 1.25 * 16 MB = 20 MB: 16 MB window
        assert_eq!(window_log(usize::MAX, usize::MAX), 27);
    }

    proptest! {
        #[test]
        fn round_trips(
            base_bytes in proptest::collection::vec(any::<u8>(), 1..2000),
            page in proptest::collection::vec(any::<u8>(), 0..4000),
            level in 1i32..6,
        ) {
            prop_assume!(!base_bytes.starts_with(&crate::base::ZSTD_DICTIONARY_MAGIC));
            let base = base(&base_bytes);
            let stream = encode(&base, &page, level).expect("encodes");
            prop_assert_eq!(DczDecoder::new(Limits::default()).decode(&stream, &base), Ok(page));
        }

        #[test]
        fn arbitrary_streams_never_panic(
            base_bytes in proptest::collection::vec(any::<u8>(), 1..200),
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            prop_assume!(!base_bytes.starts_with(&crate::base::ZSTD_DICTIONARY_MAGIC));
            let base = base(&base_bytes);
            let mut decoder = DczDecoder::new(Limits { max_decoded: 1 << 16, ..Limits::default() });
            let _ = decoder.decode(&body, &base);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(base.id().as_bytes());
            framed.extend_from_slice(&body);
            let _ = decoder.decode(&framed, &base);
        }
    }
}
