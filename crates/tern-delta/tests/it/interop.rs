//! `dcz` against the reference `zstd` program (`zstd --patch-from` uses the base as reference prefix, the
//! raw-content semantics RFC 9842 and browsers use), and the browser path end to end. Skipped, with a
//! message, where `zstd` is not installed.

use std::path::Path;
use std::process::Command;

use http::{HeaderMap, HeaderValue, StatusCode};
use tern_delta::dcz::{self, DczDecoder, HEADER_LEN, Limits, MAGIC};
use tern_delta::fields::{self, VARY_DCZ};
use tern_delta::synthetic::News;
use tern_delta::{Base, BaseStore, Class, Encoded, Encoder, EncoderConfig, StoreConfig, browser_delta};

fn zstd_program() -> bool {
    let found = Command::new("zstd")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        eprintln!("skipped: the zstd program is not installed");
    }
    found
}

fn cli_decode(dir: &Path, base: &[u8], stream: &[u8]) -> Vec<u8> {
    std::fs::write(dir.join("base"), base).expect("write");
    std::fs::write(dir.join("page.dcz"), stream).expect("write");
    let status = Command::new("zstd")
        .current_dir(dir)
        .args(["-q", "-d", "-f", "--patch-from=base", "page.dcz", "-o", "page.out"])
        .status()
        .expect("zstd runs");
    assert!(status.success(), "zstd -d failed");
    std::fs::read(dir.join("page.out")).expect("read")
}

#[test]
fn the_zstd_program_decodes_our_dcz() {
    if !zstd_program() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let news = News::new(9);
    let base = Base::new("news", news.page(0), 1 << 24).expect("valid");
    for minute in [1, 30, 300] {
        let page = news.page(minute);
        let stream = dcz::encode(&base, &page, 3).expect("encodes");
        // The dcz header is a skippable frame: the plain zstd decoder steps over it.
        assert_eq!(cli_decode(dir.path(), base.bytes(), &stream), page, "minute {minute}");
    }
}

#[test]
fn we_decode_the_zstd_programs_patches() {
    if !zstd_program() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let news = News::new(10);
    let base = Base::new("news", news.page(0), 1 << 24).expect("valid");
    let page = news.page(20);
    std::fs::write(dir.path().join("base"), base.bytes()).expect("write");
    std::fs::write(dir.path().join("page"), &page).expect("write");
    let status = Command::new("zstd")
        .current_dir(dir.path())
        .args(["-q", "-f", "-19", "--patch-from=base", "page", "-o", "page.zst"])
        .status()
        .expect("zstd runs");
    assert!(status.success());
    let frame = std::fs::read(dir.path().join("page.zst")).expect("read");
    let mut stream = MAGIC.to_vec();
    stream.extend_from_slice(base.id().as_bytes());
    stream.extend_from_slice(&frame);
    assert_eq!(stream.len(), HEADER_LEN + frame.len());
    let decoded = DczDecoder::new(Limits::default())
        .decode(&stream, &base)
        .expect("decodes");
    assert!(decoded == page);
}

#[test]
fn a_browser_with_the_base_gets_dcz_and_one_without_gets_the_page() {
    let now = std::time::Instant::now();
    let news = News::new(11);
    let class = Class::parse("news=/news/*").expect("valid");
    let base = Base::new("news", news.page(0), 1 << 24).expect("valid");
    let mut store = BaseStore::new(StoreConfig::default());
    store.insert_current(base.clone(), now).expect("fits");
    let mut encoder = Encoder::new(class.clone(), EncoderConfig::default());
    let page = news.page(4);
    let response = HeaderMap::new();

    // curl -H 'Accept-Encoding: dcz' -H 'Available-Dictionary: :<base>:'
    let mut browser = HeaderMap::new();
    browser.insert("accept-encoding", HeaderValue::from_static("gzip, br, zstd, dcz"));
    let named = fields::format_available_dictionary(&base.id());
    browser.insert("available-dictionary", HeaderValue::from_str(&named).expect("ascii"));
    assert_eq!(browser_delta(&class, &browser, StatusCode::OK, &response), Ok(()));
    let named = fields::available_dictionary(&browser).expect("valid");
    let Encoded::Delta { body, .. } = encoder.encode(&page, named, &mut store, now) else {
        panic!("expected a delta");
    };
    assert_eq!(VARY_DCZ, "accept-encoding, available-dictionary");
    assert!(body.len() * 20 < page.len());
    if zstd_program() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(cli_decode(dir.path(), base.bytes(), &body) == page);
    }

    // A plain client, and a signed-in browser, get the page.
    let plain = HeaderMap::new();
    assert!(browser_delta(&class, &plain, StatusCode::OK, &response).is_err());
    browser.insert("cookie", HeaderValue::from_static("sid=1"));
    assert!(browser_delta(&class, &browser, StatusCode::OK, &response).is_err());

    // The base as served to browsers: Use-As-Dictionary for the class, linked from its pages.
    let field = fields::UseAsDictionary::for_class(&class).format().expect("formats");
    assert_eq!(field, r#"match="/news/*", match-dest=("document"), id="news""#);
    assert!(fields::compression_dictionary_link(&base.id()).contains(&base.id().to_string()));
}
