//! The edge's origin client reads responses with `tern_http::h1`: whatever an origin sends, split into
//! reads at any points, the head parser and the body decoders return data or an error, never panic, never
//! hand out more body than the framing allows, and never loop.
#![no_main]

use bytes::BytesMut;
use tern_http::h1::{self, BodyDecoder, Decoded, Framing, Limits};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&control, data)) = data.split_first() else { return };
    let request_was_head = control & 1 == 1;
    // Reads of `step` bytes (1 to 32), so every split of the head and body is tried somewhere.
    let step = usize::from(control >> 3) + 1;
    let limits = Limits { max_head_bytes: 4096, max_fields: 128, max_trailer_bytes: 512, max_interim: 4 };
    let mut buffer = BytesMut::new();
    let mut input = data.chunks(step);
    let head = loop {
        match h1::parse_response_head(&mut buffer, request_was_head, &limits) {
            Ok(Some(head)) => break head,
            Ok(None) => match input.next() {
                Some(chunk) => buffer.extend_from_slice(chunk),
                None => return,
            },
            Err(_) => return,
        }
    };
    assert!(!head.status.is_informational());
    let mut decoder = BodyDecoder::new(head.framing, limits);
    let mut body_len: u64 = 0;
    loop {
        match decoder.decode(&mut buffer) {
            Ok(Decoded::Data(bytes)) => {
                assert!(!bytes.is_empty(), "no empty data frames");
                body_len += bytes.len() as u64;
                if let Framing::Length(length) = head.framing {
                    assert!(body_len <= length, "held to its Content-Length");
                }
            }
            Ok(Decoded::NeedMore) => match input.next() {
                Some(chunk) => buffer.extend_from_slice(chunk),
                None => return,
            },
            Ok(Decoded::Done) => {
                if let Framing::Length(length) = head.framing {
                    assert_eq!(body_len, length);
                }
                return;
            }
            Err(_) => return,
        }
    }
});
