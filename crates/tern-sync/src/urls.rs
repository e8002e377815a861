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

/// A URL a changed file is served under, and whether a cache should fetch it again at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedUrl {
    /// The absolute URL.
    pub url: String,
    /// Whether to fetch it again after purging it: one spelling of each object readers ask for.
    pub prefetch: bool,
}

/// Every URL a changed file must be purged under: [`urls_for`]'s, and for an index file also its directory
/// without the trailing slash (`/docs`, which servers redirect to `/docs/` or answer themselves). Fetched again
/// are the file's own URL and an index file's directory (`/docs/`), each in the spelling browsers send
/// (sub-delimiters raw), so every cache fetches each object readers ask for once; the other spellings are
/// only purged, and fetched on the first request for them.
pub fn served_urls(base_url: &str, path: &str, index: &str) -> Vec<ServedUrl> {
    let base = base_url.trim_end_matches('/');
    let name = path.rsplit('/').next().unwrap_or(path);
    let mut served: Vec<ServedUrl> = Vec::new();
    let mut add = |url: String, prefetch: bool| match served.iter_mut().find(|s| s.url == url) {
        Some(known) => known.prefetch |= prefetch,
        None => served.push(ServedUrl { url, prefetch }),
    };
    let mut paths = vec![path];
    if name == index {
        paths.push(&path[..path.len() - name.len()]);
    }
    for path in &paths {
        add(format!("{base}/{}", encode_path(path, false)), false);
        add(format!("{base}/{}", encode_path(path, true)), true);
    }
    if name == index && path.len() > name.len() {
        let directory = &path[..path.len() - name.len() - 1];
        for raw_sub_delims in [false, true] {
            add(format!("{base}/{}", encode_path(directory, raw_sub_delims)), false);
        }
    }
    served
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
    fn served_urls_prefetch_one_spelling_of_each_object_and_purge_the_bare_directory() {
        let served = |path: &str| -> Vec<(String, bool)> {
            served_urls("http://h/site/", path, "index.html")
                .into_iter()
                .map(|s| (s.url, s.prefetch))
                .collect()
        };
        let owned = |list: &[(&str, bool)]| -> Vec<(String, bool)> {
            list.iter()
                .map(|(url, prefetch)| (url.to_string(), *prefetch))
                .collect()
        };
        assert_eq!(served("a.css"), owned(&[("http://h/site/a.css", true)]));
        assert_eq!(
            served("docs/index.html"),
            owned(&[
                ("http://h/site/docs/index.html", true),
                ("http://h/site/docs/", true),
                ("http://h/site/docs", false),
            ])
        );
        assert_eq!(
            served("index.html"),
            owned(&[("http://h/site/index.html", true), ("http://h/site/", true)]),
            "the root has no bare form"
        );
        assert_eq!(
            served("a+b/index.html"),
            owned(&[
                ("http://h/site/a%2Bb/index.html", false),
                ("http://h/site/a+b/index.html", true),
                ("http://h/site/a%2Bb/", false),
                ("http://h/site/a+b/", true),
                ("http://h/site/a%2Bb", false),
                ("http://h/site/a+b", false),
            ])
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
