//! Mapping a request path to a file under the root, refusing anything that would leave it: `..` segments,
//! encoded separators, NUL bytes, and symbolic links that point outside the root.

use std::path::{Path, PathBuf};

use http::StatusCode;

/// What a path names.
#[derive(Debug)]
pub enum Resolved {
    /// A regular file.
    File {
        /// Its canonical path.
        path: PathBuf,
        /// Its metadata.
        metadata: std::fs::Metadata,
    },
    /// A directory asked for without the trailing slash.
    DirectoryWithoutSlash,
}

/// Why a path is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed or escaping path.
    BadPath,
    /// Nothing there (or nothing served there).
    NotFound,
}

impl Refusal {
    /// The status to answer.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::BadPath => StatusCode::BAD_REQUEST,
            Refusal::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// The message to answer.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::BadPath => "malformed path",
            Refusal::NotFound => "no such file",
        }
    }
}

/// Resolves `request_path` under `root` (which must be canonical).
pub async fn resolve(root: &Path, request_path: &str, index: &str) -> Result<Resolved, Refusal> {
    let decoded = percent_decode(request_path).ok_or(Refusal::BadPath)?;
    let mut relative = PathBuf::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => continue,
            ".." => return Err(Refusal::BadPath),
            s if s.contains('\\') || s.contains('\0') => return Err(Refusal::BadPath),
            s => relative.push(s),
        }
    }
    let candidate = root.join(&relative);
    let canonical = tokio::fs::canonicalize(&candidate)
        .await
        .map_err(|_| Refusal::NotFound)?;
    if !canonical.starts_with(root) {
        // A symbolic link pointing out of the root.
        return Err(Refusal::NotFound);
    }
    let metadata = tokio::fs::metadata(&canonical).await.map_err(|_| Refusal::NotFound)?;
    if metadata.is_dir() {
        if !request_path.ends_with('/') {
            return Ok(Resolved::DirectoryWithoutSlash);
        }
        let index_path = tokio::fs::canonicalize(canonical.join(index))
            .await
            .map_err(|_| Refusal::NotFound)?;
        if !index_path.starts_with(root) {
            return Err(Refusal::NotFound);
        }
        let metadata = tokio::fs::metadata(&index_path).await.map_err(|_| Refusal::NotFound)?;
        if !metadata.is_file() {
            return Err(Refusal::NotFound);
        }
        return Ok(Resolved::File {
            path: index_path,
            metadata,
        });
    }
    if !metadata.is_file() {
        return Err(Refusal::NotFound);
    }
    Ok(Resolved::File {
        path: canonical,
        metadata,
    })
}

/// Decodes `%XX` escapes; `None` for malformed escapes or non-UTF-8 results. An encoded `/` stays a
/// literal character inside a segment and is refused by the caller only if it forms `..`.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes.get(index + 1..index + 3)?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(value);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_escapes() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("site");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::write(outer.path().join("secret"), "s").expect("write");
        std::fs::write(root.join("ok.txt"), "ok").expect("write");
        #[cfg(unix)]
        std::os::unix::fs::symlink(outer.path().join("secret"), root.join("link")).expect("symlink");
        let root = std::fs::canonicalize(&root).expect("canonical");
        assert!(matches!(
            resolve(&root, "/ok.txt", "index.html").await,
            Ok(Resolved::File { .. })
        ));
        assert_eq!(
            resolve(&root, "/../secret", "index.html").await.err(),
            Some(Refusal::BadPath)
        );
        assert_eq!(
            resolve(&root, "/%2e%2e/secret", "index.html").await.err(),
            Some(Refusal::BadPath)
        );
        assert_eq!(resolve(&root, "/%zz", "index.html").await.err(), Some(Refusal::BadPath));
        assert_eq!(
            resolve(&root, "/a%00b", "index.html").await.err(),
            Some(Refusal::BadPath)
        );
        #[cfg(unix)]
        assert_eq!(
            resolve(&root, "/link", "index.html").await.err(),
            Some(Refusal::NotFound)
        );
        assert_eq!(
            resolve(&root, "/", "index.html").await.err(),
            Some(Refusal::NotFound),
            "no index file"
        );
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        assert!(matches!(
            resolve(&root, "/sub", "index.html").await,
            Ok(Resolved::DirectoryWithoutSlash)
        ));
    }
}
