//! Local distribution's messages (seed 004's MCTP: session announcement, status report with its per-block
//! NACK list, report request, apply report, and the untagged data frame, source or parity): any datagram
//! decodes or is refused with a named error, never a panic; what decodes is within the bounds and encodes
//! back to the same message.
#![no_main]

use tern_wire::SecretKey;
use tern_wire::mctp::{self, MctpLimits};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = SecretKey::parse(&"00".repeat(32)).expect("key");
    let limits = MctpLimits::default();
    check(&key, data, &limits);
    // Behind a valid tag, so that the payload parser is reached; the first byte picks the kind.
    if let Some((selector, payload)) = data.split_first() {
        let kinds = [
            mctp::KIND_ANNOUNCEMENT,
            mctp::KIND_STATUS_REPORT,
            mctp::KIND_REPORT_REQUEST,
            mctp::KIND_APPLY_REPORT,
        ];
        let kind = kinds[usize::from(*selector) % kinds.len()];
        check(&key, &tern_wire::frame::encode(&key, kind, payload), &limits);
    }
    // As a data frame, with and without the magic in front.
    for bytes in [
        data.to_vec(),
        [&mctp::DATA_MAGIC[..], &[mctp::DATA_VERSION], data].concat(),
    ] {
        if let Ok(frame) = mctp::decode_data(&bytes) {
            assert!(frame.data.len() <= mctp::MAX_FRAME_DATA);
            if let mctp::FrameId::Parity { index, .. } = frame.id {
                assert!(u32::from(index) < mctp::MAX_PARITY_FRAMES);
            }
            assert_eq!(mctp::encode_data(&frame), bytes);
        }
    }
});

fn check(key: &SecretKey, bytes: &[u8], limits: &MctpLimits) {
    let Ok(verified) = mctp::decode(key, bytes, limits) else {
        return;
    };
    let message = verified.into_message();
    match &message.body {
        mctp::MctpBody::Announcement(announcement) => {
            assert!((1..=mctp::MAX_BLOCK_FRAMES).contains(&announcement.block_frames));
            assert!((1..=mctp::MAX_PARITY_FRAMES).contains(&announcement.parity_frames));
            assert!(announcement.size <= mctp::MAX_ASSIGNMENT_SIZE);
        }
        mctp::MctpBody::StatusReport(report) => {
            if let mctp::Status::Missing { blocks, count } = &report.status {
                assert!(blocks.len() <= limits.max_blocks);
                let needed: u64 = blocks.iter().map(|nack| u64::from(nack.missing)).sum();
                assert!(needed <= u64::from(*count));
                assert!(
                    blocks
                        .iter()
                        .all(|nack| (1..=mctp::MAX_BLOCK_FRAMES).contains(&nack.missing))
                );
            }
        }
        _ => {}
    }
    let unbounded = MctpLimits {
        max_datagram: usize::MAX,
        ..*limits
    };
    let again = mctp::decode(key, &mctp::encode(key, &message), &unbounded).expect("re-decodes");
    assert_eq!(again.message(), &message);
}
