//! Secret key files: 32 random bytes, written as 64 hex digits on one line, after a comment line.
//! Lines starting with `#` are ignored, so operators can annotate the file.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;

/// Problems reading or writing a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists and would be overwritten.
    #[error("key file {0} already exists; remove it first if you mean to replace the key")]
    Exists(PathBuf),
    /// The file does not hold a key.
    #[error("key file {0} does not hold a tern key (64 hex digits); create one with `tern keygen FILE`")]
    Malformed(PathBuf),
    /// The system random source failed.
    #[error("no randomness available: {0}")]
    Random(String),
    /// The file is a public key (the mover's `mover.pub`, given to every node), not a secret.
    #[error(
        "key file {0} is a public key (handed to every node), not a secret: create a secret key with `tern keygen FILE`"
    )]
    PublicKey(PathBuf),
}

/// The first line of the mover's public key file (`mover.pub`, written by `tern-mover`'s keys module): a
/// key file that starts with it is refused as a secret ([`KeyError::PublicKey`]).
pub const PUBLIC_KEY_HEADER: &str = "# tern mover public key";

/// A shared secret key.
#[derive(Clone)]
pub struct SecretKey([u8; KEY_LEN]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey(bytes))
    }

    /// Writes a new random key to `path` (mode 0600), refusing to overwrite an existing file.
    pub fn write_new(path: &Path) -> Result<Self, KeyError> {
        let key = Self::generate()?;
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists(path.to_path_buf()),
            _ => KeyError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let text = format!("# tern secret key: keep it private\n{}\n", hex::encode(key.0));
        // Synced: the operator copies this key to every node next, so a power cut must not empty it.
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| KeyError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(key)
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = crate::read_setting_text(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // A public key file has the same shape (64 hex digits): taken as a secret, every node holding it
        // could log in to the admin UI or forge tags.
        let public = text.lines().any(|line| line.starts_with(PUBLIC_KEY_HEADER));
        if public {
            return Err(KeyError::PublicKey(path.to_path_buf()));
        }
        let key = Self::parse(&text).ok_or_else(|| KeyError::Malformed(path.to_path_buf()))?;
        warn_if_world_readable(path);
        Ok(key)
    }

    /// Parses the text of a key file.
    pub fn parse(text: &str) -> Option<Self> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))?;
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(line, &mut bytes).ok()?;
        Some(SecretKey(bytes))
    }

    /// The token a client presents to prove it holds the key (`Authorization: Bearer <token>`).
    pub fn token(&self) -> String {
        hex::encode(self.0)
    }

    /// Whether `presented` is this key's token, compared in constant time.
    pub fn matches_token(&self, presented: &str) -> bool {
        let mut bytes = [0u8; KEY_LEN];
        if hex::decode_to_slice(presented.trim(), &mut bytes).is_err() {
            return false;
        }
        bool::from(self.0.ct_eq(&bytes))
    }

    /// The raw key bytes (for message authentication tags).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// The permission bits of the file at `path` when every user of the machine may read it; `None` when not
/// (or off Unix, or when it cannot be read).
pub fn world_readable(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o004 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Logs a warning when a secret key file can be read by every user of the machine (`tern keygen` writes
/// them `0600`; a copy made with `cp` or an editor may be `0644`). It is still used: refusing would stop a
/// running service at its next restart over a mode bit.
pub fn warn_if_world_readable(path: &Path) {
    if let Some(mode) = world_readable(path) {
        tracing::warn!(
            path = %path.display(),
            mode = %format!("{mode:03o}"),
            "this secret key file can be read by every user of the machine: chmod 600 it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_key_file_every_user_can_read_is_told_apart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        SecretKey::write_new(&path).expect("write");
        assert_eq!(world_readable(&path), None, "keygen writes 0600");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert_eq!(world_readable(&path), None, "a group of the service's may read it");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert_eq!(world_readable(&path), Some(0o644));
        SecretKey::load(&path).expect("still used, with a warning");
    }

    #[test]
    fn write_load_and_refuse_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("purge.key");
        let written = SecretKey::write_new(&path).expect("write");
        let loaded = SecretKey::load(&path).expect("load");
        assert!(loaded.matches_token(&written.token()));
        assert!(!loaded.matches_token("00"));
        assert!(matches!(SecretKey::write_new(&path), Err(KeyError::Exists(_))));
        std::fs::write(&path, "not a key").expect("write");
        assert!(matches!(SecretKey::load(&path), Err(KeyError::Malformed(_))));
        // The mover's public key has the same shape; it is not a secret and is refused as one.
        std::fs::write(
            &path,
            format!(
                "# tern mover public key: give it to nodes (--key)\n{}\n",
                "ab".repeat(32)
            ),
        )
        .expect("write");
        assert!(matches!(SecretKey::load(&path), Err(KeyError::PublicKey(_))));
    }
}
