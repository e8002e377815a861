//! The assignment decoder (seed 004), which a node runs on bytes from the network (a `POST /assignments`,
//! or a copy fetched from a group leader): any input is refused with a named error or decodes, never a
//! panic. The streaming check a node runs while spooling, in any chunking, refuses for the reason the
//! buffer decoder does; behind a valid signature (the input split into a header and a body and signed
//! here), the size checks and the header and command parsers are reached, and the spooled copy reads the
//! same header, commands and data as the buffer.
#![no_main]

use std::io::Write;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use tern_wire::assignment::{self, AssignmentKind, Builder, Command, Limits, StreamCheck};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let signing = SigningKey::from_bytes(&[7; 32]);
    let mover = signing.verifying_key();
    let limits = Limits {
        max_header: 4096,
        max_commands: 1 << 16,
        max_total: 1 << 20,
    };
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // As received: the signature stops whatever the mover did not sign.
    check(rest, usize::from(selector) + 1, &mover, &limits);
    // Signed: the rest split into a header and a body at the selector's position.
    let at = usize::from(selector).min(rest.len());
    let (header, body) = rest.split_at(at);
    check(&seal(header, body, &signing), usize::from(selector) % 97 + 1, &mover, &limits);
});

/// `header` and `body` framed as an assignment and signed, with the magic and end marker of a real one.
fn seal(header: &[u8], body: &[u8], signing: &SigningKey) -> Vec<u8> {
    let mut builder = Builder::new("f", AssignmentKind::Publish, "www", 1, None, 0);
    builder.command(Command::Commit);
    let real = builder.finish(signing, None).expect("finish");
    let mut out = real[..8].to_vec();
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(body);
    let hash = blake3::hash(&out);
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(&signing.sign(hash.as_bytes()).to_bytes());
    out.extend_from_slice(&real[real.len() - 8..]);
    out
}

fn check(bytes: &[u8], chunk: usize, mover: &VerifyingKey, limits: &Limits) {
    let buffered = assignment::decode(bytes, mover, None, limits);
    let mut stream = StreamCheck::new(limits);
    let streamed = bytes
        .chunks(chunk)
        .try_for_each(|piece| stream.push(piece))
        .and_then(|()| stream.finish(mover));
    let checked = match streamed {
        Ok(checked) => checked,
        Err(refused) => {
            assert_eq!(buffered.expect_err("the buffer is refused too"), refused);
            return;
        }
    };
    let path = std::env::temp_dir().join(format!("tern-fuzz-assignment-{}", std::process::id()));
    let mut file = std::fs::File::create(&path).expect("spool");
    file.write_all(bytes).expect("write");
    let spool = std::fs::File::open(&path).expect("open");
    let scratch = || tempfile_like(&path);
    let spooled = assignment::open_spooled(spool, &checked, None, limits, scratch);
    match (buffered, spooled) {
        (Ok(buffered), Ok(spooled)) => {
            assert_eq!(buffered.header, spooled.header);
            assert_eq!(buffered.commands, spooled.commands);
            assert_eq!(buffered.data_len(), spooled.data_len());
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for command in &buffered.commands {
                if let Command::Create { data, .. } | Command::Patch { data, .. } = command {
                    assert_eq!(
                        buffered.stored(data, &mut a).expect("memory").to_vec(),
                        spooled.stored(data, &mut b).expect("file").to_vec()
                    );
                }
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("buffer and spool disagree: {:?} / {:?}", a.err(), b.err()),
    }
    let _ = std::fs::remove_file(&path);
}

fn tempfile_like(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path.with_extension("plain"))
}
