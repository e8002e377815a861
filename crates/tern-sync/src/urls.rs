//! Where a file of the origin directory is served: the CP agent reports changes by URL.
//!
//! A file's path can be spelled several ways in a URL. The edges key on the normal form of RFC 3986
//! section 6.2.2 (`tern_http::target::normalize`), which makes `%7E` and `~` one object, but RFC 3986 does
//! not make a sub-delimiter equal to its percent-encoding: `/a+b.html` and `/a%2Bb.html` are two URLs, two
//! cache objects, and one file to the origin. So the agent reports both: every byte outside the unreserved
//! set encoded (what a careful client sends), and the characters a path may carry raw (`pchar`: the
//! sub-delimiters, `:` and `@`) left raw (what browsers send). Mixtures of the two are not reported; they
//! are rare, and their number grows as 2^n with the characters in the name.

/// The URLs a file is served under: its own, and for an index file its directory's too; each in every
/// spelling the edges key apart (see the module header).
pub fn urls_for(base_url: &str, path: &str, index: &str) -> Vec<String> {
    let base = base_url.trim_end_matches('/');
    let mut paths = vec![path];
    let name = path.rsplit('/').next().unwrap_or(path);
    if name == index {
        paths.push(&path[..path.len() - name.len()]);
    }
    let mut urls = Vec::new();
    for path in paths {
        for raw_sub_delims in [false, true] {
            let url = format!("{base}/{}", encode_path(path, raw_sub_delims));
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    urls
}

/// Percent-encodes what may not appear raw in a URL path; with `raw_sub_delims`, the characters RFC 3986
/// allows raw in a path segment (`pchar`) stay raw.
fn encode_path(path: &str, raw_sub_delims: bool) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        let raw = tern_http::target::is_unreserved(byte)
            || byte == b'/'
            || (raw_sub_delims && b"!$&'()*+,;=:@".contains(&byte));
        if raw {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_index_files_include_the_directory() {
        assert_eq!(
            urls_for("http://h/", "docs/index.html", "index.html"),
            vec!["http://h/docs/index.html", "http://h/docs/"]
        );
        assert_eq!(
            urls_for("http://h", "a b.txt", "index.html"),
            vec!["http://h/a%20b.txt"]
        );
    }

    #[test]
    fn sub_delimiters_are_reported_in_both_spellings() {
        assert_eq!(
            urls_for("http://h", "c++/a+b (1).html", "index.html"),
            vec!["http://h/c%2B%2B/a%2Bb%20%281%29.html", "http://h/c++/a+b%20(1).html",]
        );
        assert_eq!(
            urls_for("http://h", "x=1/index.html", "index.html"),
            vec![
                "http://h/x%3D1/index.html",
                "http://h/x=1/index.html",
                "http://h/x%3D1/",
                "http://h/x=1/",
            ]
        );
    }
}
