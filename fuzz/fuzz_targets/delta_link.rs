//! The `Link` field parser of differential caching (base announcements, RFC 8288 link-values with
//! `rel="compression-dictionary"`, RFC 9842 section 3) must never panic on any field text, and what it
//! does must hold together: after the announcements are removed none is left, removing them again changes
//! nothing, other link-values survive as written, and a well-formed announcement on a line of its own is
//! always found whatever the other lines hold.
#![no_main]

use http::{HeaderMap, HeaderValue, header};
use tern_delta::BaseId;
use tern_delta::fields::{announced_bases, compression_dictionary_link, remove_announcements};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Each line of the input is one `Link` field line (values that are not valid field text are skipped,
    // as the http crate would refuse them).
    let mut headers = HeaderMap::new();
    for line in data.split(|&byte| byte == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(header::LINK, value);
        }
    }
    let announced = announced_bases(&headers);
    let mut unique = announced.clone();
    unique.dedup();
    assert_eq!(unique.len(), announced.len(), "a base is announced once however often it is named");

    let mut removed = headers.clone();
    let any = remove_announcements(&mut removed);
    assert_eq!(any, !announced.is_empty(), "removal reports whether there were announcements");
    assert!(announced_bases(&removed).is_empty(), "no announcement survives removal");
    let lines_after = removed.get_all(header::LINK).iter().count();
    assert!(lines_after <= headers.get_all(header::LINK).iter().count());
    if !any {
        assert_eq!(removed, headers, "nothing to remove leaves the field as it was");
    }
    let mut again = removed.clone();
    assert!(!remove_announcements(&mut again), "removal is idempotent");
    assert_eq!(again, removed);

    // A well-formed announcement on its own line is found next to anything, and removed with the rest.
    let id = BaseId::of(data);
    let mut with_ours = headers.clone();
    let ours = HeaderValue::from_str(&compression_dictionary_link(&id)).expect("a formatted link is field text");
    with_ours.append(header::LINK, ours);
    let found = announced_bases(&with_ours);
    assert!(found.contains(&id), "our announcement is found");
    for base in &announced {
        assert!(found.contains(base), "adding a line loses no announcement");
    }
    assert!(remove_announcements(&mut with_ours));
    assert!(announced_bases(&with_ours).is_empty());
});
