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

use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

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

/// Compresses pages into `dcz` streams.
///
/// Each page is compressed with the base as zstd reference prefix (raw content) and long-distance matching
/// on: zstd's fast match finders keep few candidates per hash, so on pages of many similar lines (story
/// lists, tables) they miss the long match into the base that the long-distance matcher finds; a prepared
/// dictionary (`CDict`) cannot use that matcher. Measured on a 111 KB list page with one insertion: 64 bytes
/// with the matcher, 277 without, 4,116 with a level-1 `CDict`, in 130 to 170 us. A context is made per page
/// (about 20 us); zstd's prefix API borrows the base only for one frame, which a long-lived context could
/// not express without unsafe code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DczEncoder {
    level: i32,
    long_distance: bool,
}

impl DczEncoder {
    /// An encoder at zstd `level` with long-distance matching (see [`crate::encoder::DEFAULT_LEVEL`] for
    /// the measured level).
    pub fn new(level: i32) -> Self {
        DczEncoder {
            level,
            long_distance: true,
        }
    }

    /// The same encoder with long-distance matching on or off (for measurement).
    pub fn with_long_distance(mut self, on: bool) -> Self {
        self.long_distance = on;
        self
    }

    /// The `dcz` stream of `page` against `base`.
    pub fn encode(&self, base: &Base, page: &[u8]) -> Result<Vec<u8>, DczError> {
        let bound = zstd_safe::compress_bound(page.len());
        let mut out = Vec::with_capacity(HEADER_LEN.saturating_add(bound));
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(base.id().as_bytes());
        let mut frame = Vec::with_capacity(bound);
        let mut context = CCtx::create();
        context
            .set_parameter(CParameter::CompressionLevel(self.level))
            .map_err(zstd_error)?;
        let window = window_log(base.len(), page.len());
        context
            .set_parameter(CParameter::WindowLog(window))
            .map_err(zstd_error)?;
        context
            .set_parameter(CParameter::EnableLongDistanceMatching(self.long_distance))
            .map_err(zstd_error)?;
        context
            .set_parameter(CParameter::ContentSizeFlag(true))
            .map_err(zstd_error)?;
        context
            .set_parameter(CParameter::ChecksumFlag(false))
            .map_err(zstd_error)?;
        context.ref_prefix(base.bytes()).map_err(zstd_error)?;
        context.compress2(&mut frame, page).map_err(zstd_error)?;
        out.extend_from_slice(&frame);
        Ok(out)
    }
}

/// Encodes `page` against `base` at zstd `level` (long-distance matching on).
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
        assert!(stream.len() < HEADER_LEN + 80, "delta of {} bytes", stream.len());
        let decoded = DczDecoder::new(Limits::default())
            .decode(&stream, &base)
            .expect("decodes");
        assert_eq!(decoded, page);
    }

    #[test]
    fn the_encoder_and_decoder_are_reusable_and_send() {
        fn assert_send<T: Send>() {}
        assert_send::<DczEncoder>();
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
