//! What crosses tern's process boundaries: shared secret keys (every `--...-key` flag reads the format
//! `tern keygen` writes), the authenticated frame every TCP protocol uses, the messages of the
//! synchronisation protocol (seed 001), and those of the content mover (seed 004: [`mover`], [`assignment`],
//! the control channel's election messages in [`control`], a segment's registration and reports in
//! [`segment`], the store-and-forward tree's notifications and reports in [`tree`]), and those of a cache
//! community and its directory of holders (seeds 002 and 003: [`community`]).

pub mod assignment;
pub mod community;
pub mod control;
pub mod frame;
pub mod key;
pub mod mctp;
pub mod mover;
pub mod segment;
pub mod sync;
pub mod tree;

pub use key::{KeyError, SecretKey};

/// Largest file an operator names for a setting that is read whole: a key, a certificate chain or a CA
/// bundle (the system's whole bundle is about 200 KiB), a config file.
pub const MAX_SETTING_FILE: u64 = 16 << 20;

/// Reads a file an operator named for a setting (a key, a certificate, a CA bundle, a config file), at
/// most [`MAX_SETTING_FILE`] bytes: a path that never ends (`/dev/zero`, a wrong path to a disk image) is
/// an error of kind `InvalidData` that says so, not a read until memory runs out.
pub fn read_setting_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    // A FIFO would block the open until a writer comes (a reload, and the shutdown waiting for it, stuck
    // for good), a device would never end: only a regular file (or a link to one) is read.
    let kind = std::fs::metadata(path)?.file_type();
    if !kind.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a directory, FIFO, socket or device): give the file itself",
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SETTING_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SETTING_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "over {} MiB, which no key, certificate or config file is (a device, or the wrong path?)",
                MAX_SETTING_FILE >> 20
            ),
        ));
    }
    Ok(bytes)
}

/// [`read_setting_file`] as UTF-8 text (an error of kind `InvalidData` when it is not).
pub fn read_setting_text(path: &std::path::Path) -> std::io::Result<String> {
    String::from_utf8(read_setting_file(path)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// `text` cut to at most `max` bytes, at a character boundary: how a reason read from the network is kept
/// to a bounded size ([`tree::reason`], [`mover::ErrorAnswer::reason_in`]).
pub fn cut_at(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod setting_file_tests {
    use super::*;

    #[test]
    fn a_setting_file_that_never_ends_is_refused_not_read_until_memory_runs_out() {
        let error = read_setting_file(std::path::Path::new("/dev/zero")).expect_err("/dev/zero is endless");
        assert!(error.to_string().contains("not a regular file"), "{error}");
        let dir = std::env::temp_dir().join(format!("tern-wire-setting-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // A FIFO is refused before it is opened (an open would wait for a writer).
        let fifo = dir.join("fifo");
        let _ = std::fs::remove_file(&fifo);
        if std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success())
        {
            let error = read_setting_file(&fifo).expect_err("a FIFO");
            assert!(error.to_string().contains("not a regular file"), "{error}");
        }
        let big = dir.join("big");
        std::fs::File::create(&big)
            .and_then(|file| file.set_len(MAX_SETTING_FILE + 1))
            .expect("sparse file");
        let error = read_setting_file(&big).expect_err("over the limit");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("16 MiB"), "{error}");
        let file = dir.join("key");
        std::fs::write(&file, "some text\n").expect("write");
        assert_eq!(read_setting_text(&file).expect("read"), "some text\n");
        std::fs::write(&file, [0xff, 0xfe]).expect("write");
        assert_eq!(
            read_setting_text(&file).expect_err("binary").kind(),
            std::io::ErrorKind::InvalidData
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
