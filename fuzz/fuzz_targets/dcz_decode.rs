//! The edge's dcz decoder must refuse any damaged, truncated, oversized or foreign stream without panicking,
//! and a page comes out only when it matches its digest.
#![no_main]

use tern_delta::dcz::{HEADER_LEN, Limits, MAGIC};
use tern_delta::{Base, Decoder, ReprDigest};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // First byte: the base length (the base is the next bytes); the rest is the stream.
    let Some((&base_len, rest)) = data.split_first() else {
        return;
    };
    let base_len = (base_len as usize).min(rest.len());
    let (base_bytes, stream) = rest.split_at(base_len);
    let Ok(base) = Base::new("fuzz", base_bytes.to_vec(), 1 << 16) else {
        return;
    };
    let limits = Limits {
        max_frame: 1 << 16,
        max_decoded: 1 << 18,
        max_window_log: 20,
    };
    let mut decoder = Decoder::new(limits);
    let digest = ReprDigest::of(stream);
    // As received, and with a valid header naming the base, so the fuzzer reaches zstd.
    if let Ok(page) = decoder.decode(stream, &base, Some(&digest)) {
        assert!(digest.verify(&page));
    }
    let mut framed = Vec::with_capacity(HEADER_LEN + stream.len());
    framed.extend_from_slice(&MAGIC);
    framed.extend_from_slice(base.id().as_bytes());
    framed.extend_from_slice(stream);
    let mut raw = tern_delta::DczDecoder::new(Limits {
        max_frame: 1 << 16,
        max_decoded: 1 << 18,
        max_window_log: 20,
    });
    if let Ok(page) = raw.decode(&framed, &base) {
        assert!(page.len() <= 1 << 18);
    }
});
