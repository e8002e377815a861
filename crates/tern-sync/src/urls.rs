//! Where a file of the origin directory is served: the CP agent reports changes by URL.

/// The URLs a file is served under: its own, and for an index file its directory's too.
pub fn urls_for(base_url: &str, path: &str, index: &str) -> Vec<String> {
    let base = base_url.trim_end_matches('/');
    let mut urls = vec![format!("{base}/{}", encode_path(path))];
    let name = path.rsplit('/').next().unwrap_or(path);
    if name == index {
        let dir = &path[..path.len() - name.len()];
        urls.push(format!("{base}/{}", encode_path(dir)));
    }
    urls
}

/// Percent-encodes what may not appear raw in a URL path.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => out.push(byte as char),
            other => out.push_str(&format!("%{other:02X}")),
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
}
