//! Mapping a request path to a file under the root, refusing anything that would leave it: `..` segments,
//! encoded separators, NUL bytes, and symbolic links that point outside the root; and, unless asked to
//! serve them, hidden files (a segment starting with `.`, as nginx configurations refuse with
//! `location ~ /\.(?!well-known)`), checked on the decoded path and again on the file it resolves to, so
//! no spelling (`%2e`, `%2F`, `/./`) or symbolic link reaches `.git/`.

use std::path::{Component, Path, PathBuf};

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
    /// There, but the server's user may not read it (file system permissions): the operator's to fix.
    Forbidden,
}

impl Refusal {
    /// The refusal for a failed file system call: `Forbidden` for a permission error (a file or a
    /// directory on the way the server's user may not read), `NotFound` for the rest.
    pub fn of(error: &std::io::Error) -> Refusal {
        if error.kind() == std::io::ErrorKind::PermissionDenied {
            Refusal::Forbidden
        } else {
            Refusal::NotFound
        }
    }
}

impl Refusal {
    /// The status to answer.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::BadPath => StatusCode::BAD_REQUEST,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::Forbidden => StatusCode::FORBIDDEN,
        }
    }

    /// The message to answer.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::BadPath => "malformed path",
            Refusal::NotFound => "no such file",
            Refusal::Forbidden => "this server may not read that file",
        }
    }
}

/// Whether hidden files are served (`tern serve --serve-hidden`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hidden {
    /// A path with a segment starting with `.` is answered 404, except under `/.well-known/`.
    Refuse,
    /// Hidden files are served like any other.
    Serve,
}

/// The one hidden directory served by default: RFC 8615's well-known locations (ACME challenges,
/// `security.txt`, app links), at the root of the site only.
const WELL_KNOWN: &str = ".well-known";

/// Whether the path made of `segments` (decoded, without empty and `.` segments) names a hidden file or
/// lies in a hidden directory.
fn is_hidden<'a>(mut segments: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut first = true;
    segments.any(|segment| {
        let well_known = first && segment == WELL_KNOWN.as_bytes();
        first = false;
        segment.starts_with(b".") && !well_known
    })
}

/// Whether `path`, a canonical path under `root`, is hidden below it (a symbolic link with a visible
/// name may point into `.git/`).
fn is_hidden_below(root: &Path, path: &Path) -> bool {
    let Ok(below) = path.strip_prefix(root) else {
        return true;
    };
    is_hidden(below.components().filter_map(|component| match component {
        Component::Normal(name) => Some(name.as_encoded_bytes()),
        _ => None,
    }))
}

/// Resolves `request_path` under `root` (which must be canonical).
pub async fn resolve(root: &Path, request_path: &str, index: &str, hidden: Hidden) -> Result<Resolved, Refusal> {
    let decoded = percent_decode(request_path).ok_or(Refusal::BadPath)?;
    let mut relative = PathBuf::new();
    let mut segments = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => continue,
            ".." => return Err(Refusal::BadPath),
            s if s.contains('\\') || s.contains('\0') => return Err(Refusal::BadPath),
            s => {
                relative.push(s);
                segments.push(s.as_bytes());
            }
        }
    }
    let refuse_hidden = hidden == Hidden::Refuse;
    // Checked on the decoded segments, before the file system is touched: `/%2egit/config` is `.git`.
    if refuse_hidden && is_hidden(segments.into_iter()) {
        return Err(Refusal::NotFound);
    }
    let candidate = root.join(&relative);
    let canonical = tokio::fs::canonicalize(&candidate)
        .await
        .map_err(|error| Refusal::of(&error))?;
    if !canonical.starts_with(root) {
        // A symbolic link pointing out of the root.
        return Err(Refusal::NotFound);
    }
    if refuse_hidden && is_hidden_below(root, &canonical) {
        return Err(Refusal::NotFound);
    }
    let metadata = tokio::fs::metadata(&canonical)
        .await
        .map_err(|error| Refusal::of(&error))?;
    if metadata.is_dir() {
        if !request_path.ends_with('/') {
            return Ok(Resolved::DirectoryWithoutSlash);
        }
        let index_path = tokio::fs::canonicalize(canonical.join(index))
            .await
            .map_err(|error| Refusal::of(&error))?;
        if !index_path.starts_with(root) || (refuse_hidden && is_hidden_below(root, &index_path)) {
            return Err(Refusal::NotFound);
        }
        let metadata = tokio::fs::metadata(&index_path)
            .await
            .map_err(|error| Refusal::of(&error))?;
        if !metadata.is_file() {
            return Err(Refusal::NotFound);
        }
        return Ok(Resolved::File {
            path: index_path,
            metadata,
        });
    }
    // A file asked for as a directory (`/page.html/`, `/page.html%2F`, `/page.html/.`) is not there, as
    // nginx answers: served, the spelling would be cached apart from the file and no purge would cover it.
    if !metadata.is_file() || decoded.ends_with('/') || decoded.ends_with("/.") {
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
            resolve(&root, "/ok.txt", "index.html", Hidden::Refuse).await,
            Ok(Resolved::File { .. })
        ));
        assert_eq!(
            resolve(&root, "/../secret", "index.html", Hidden::Refuse).await.err(),
            Some(Refusal::BadPath)
        );
        assert_eq!(
            resolve(&root, "/%2e%2e/secret", "index.html", Hidden::Refuse)
                .await
                .err(),
            Some(Refusal::BadPath)
        );
        assert_eq!(
            resolve(&root, "/%zz", "index.html", Hidden::Refuse).await.err(),
            Some(Refusal::BadPath)
        );
        assert_eq!(
            resolve(&root, "/a%00b", "index.html", Hidden::Refuse).await.err(),
            Some(Refusal::BadPath)
        );
        #[cfg(unix)]
        assert_eq!(
            resolve(&root, "/link", "index.html", Hidden::Refuse).await.err(),
            Some(Refusal::NotFound)
        );
        assert_eq!(
            resolve(&root, "/", "index.html", Hidden::Refuse).await.err(),
            Some(Refusal::NotFound),
            "no index file"
        );
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        assert!(matches!(
            resolve(&root, "/sub", "index.html", Hidden::Refuse).await,
            Ok(Resolved::DirectoryWithoutSlash)
        ));
    }

    #[tokio::test]
    async fn a_file_with_a_trailing_slash_is_not_found() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("site");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("style.css"), "css").expect("write");
        std::fs::write(root.join("sub/index.html"), "index").expect("write");
        std::fs::write(root.join(".env"), "KEY=1").expect("write");
        let root = std::fs::canonicalize(&root).expect("canonical");
        for path in [
            "/style.css/",
            "/style.css//",
            "/style.css%2F",
            "/style.css/.",
            "/sub/index.html/",
        ] {
            assert_eq!(
                resolve(&root, path, "index.html", Hidden::Refuse).await.err(),
                Some(Refusal::NotFound),
                "{path}"
            );
        }
        assert_eq!(
            resolve(&root, "/.env/", "index.html", Hidden::Serve).await.err(),
            Some(Refusal::NotFound),
            "/.env/ with hidden files served"
        );
        assert!(matches!(
            resolve(&root, "/.env", "index.html", Hidden::Serve).await,
            Ok(Resolved::File { .. })
        ));
        for path in ["/style.css", "/sub/index.html", "/sub/"] {
            assert!(
                matches!(
                    resolve(&root, path, "index.html", Hidden::Refuse).await,
                    Ok(Resolved::File { .. })
                ),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn hidden_files_are_refused_in_every_spelling_unless_served() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("site");
        for (path, text) in [
            (".git/config", "[core]"),
            (".htaccess", "Deny from all"),
            ("sub/.env", "KEY=1"),
            (".well-known/acme-challenge/x", "token"),
            ("sub/.well-known/x", "nested"),
            ("page.html", "page"),
        ] {
            let file = root.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, text).expect("write");
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(".git/config", root.join("config")).expect("symlink");
        let root = std::fs::canonicalize(&root).expect("canonical");
        for path in [
            "/.git/config",
            "/.git/",
            "/.git",
            "/%2egit/config",
            "/%2Egit%2Fconfig",
            "/./.git/config",
            "//.git/config",
            "/sub/../.git/config",
            "/.htaccess",
            "/sub/.env",
            "/sub/.well-known/x",
            "/config",
        ] {
            let refused = resolve(&root, path, "index.html", Hidden::Refuse).await;
            let expected = if path.contains("..") {
                Refusal::BadPath
            } else {
                Refusal::NotFound
            };
            assert_eq!(refused.err(), Some(expected), "{path}");
        }
        for path in [
            "/.well-known/acme-challenge/x",
            "/%2ewell-known/acme-challenge/x",
            "/page.html",
        ] {
            assert!(
                matches!(
                    resolve(&root, path, "index.html", Hidden::Refuse).await,
                    Ok(Resolved::File { .. })
                ),
                "{path}"
            );
        }
        for path in ["/.git/config", "/%2Egit%2Fconfig", "/.htaccess", "/sub/.env", "/config"] {
            assert!(
                matches!(
                    resolve(&root, path, "index.html", Hidden::Serve).await,
                    Ok(Resolved::File { .. })
                ),
                "{path} with hidden files served"
            );
        }
    }
}
