//! The sync listener's decoder: arbitrary bytes must yield frames, "need more", or a named error.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = tern_wire::SecretKey::parse(&"00".repeat(32)).expect("key");
    let mut decoder = tern_wire::frame::FrameDecoder::new(key, 1 << 16);
    decoder.push(data);
    while let Ok(Some(frame)) = decoder.next_frame() {
        let _ = tern_wire::sync::SyncMessage::decode(&frame);
    }
});
