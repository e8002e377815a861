//! The mover's ed25519 signing key: created in its data directory on first start (`mover.key`, private),
//! with the public half written to `mover.pub` for nodes (`tern node --key DIR/mover.pub`).

use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};

/// Loads the signing key from `dir`, creating it (and `mover.pub`) on first start.
pub fn load_or_create(dir: &Path) -> std::io::Result<SigningKey> {
    let private = dir.join("mover.key");
    let public = dir.join("mover.pub");
    if let Ok(text) = tern_wire::read_setting_text(&private) {
        tern_wire::key::warn_if_world_readable(&private);
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("");
        let mut seed = [0u8; 32];
        hex::decode_to_slice(line, &mut seed)
            .map_err(|_| std::io::Error::other(format!("{} is not a mover key", private.display())))?;
        let key = SigningKey::from_bytes(&seed);
        write_public(&public, &key.verifying_key())?;
        return Ok(key);
    }
    std::fs::create_dir_all(dir)?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options.open(&private)?;
    file.write_all(format!("# tern mover signing key: keep it private\n{}\n", hex::encode(seed)).as_bytes())?;
    // Nodes are given the public half from now on: the key must survive a power cut.
    file.sync_all()?;
    write_public(&public, &key.verifying_key())?;
    tern_tree::sync_directory(dir)?;
    Ok(key)
}

fn write_public(path: &Path, key: &VerifyingKey) -> std::io::Result<()> {
    std::fs::write(
        path,
        format!(
            "{}: give it to nodes (--key)\n{}\n",
            tern_wire::key::PUBLIC_KEY_HEADER,
            hex::encode(key.as_bytes())
        ),
    )
}

/// Reads a `mover.pub` file. A secret key file (`tern keygen`'s, 64 hex digits as well) is refused by its
/// header: taken as the mover's key, every assignment would fail its signature check.
pub fn load_public(path: &Path) -> std::io::Result<VerifyingKey> {
    let text = tern_wire::read_setting_text(path)?;
    if text.lines().any(|line| line.starts_with("# tern secret key")) {
        return Err(std::io::Error::other(format!(
            "{} is a secret key (from `tern keygen`), not the mover's public key: give --key the file DATA/mover.pub from the mover's data directory",
            path.display()
        )));
    }
    // The header is what tells a public key from 64 hex digits of anything else (a secret key's last line
    // would pass as a key, and every assignment would then fail its signature check).
    if !text
        .lines()
        .any(|line| line.starts_with(tern_wire::key::PUBLIC_KEY_HEADER))
    {
        return Err(std::io::Error::other(format!(
            "{} is not the mover's public key file (it starts with `{}`): give --key the file DATA/mover.pub from the mover's data directory, whole",
            path.display(),
            tern_wire::key::PUBLIC_KEY_HEADER
        )));
    }
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(line, &mut bytes).map_err(|_| {
        std::io::Error::other(format!(
            "{} is not a mover public key (from the mover's data dir)",
            path.display()
        ))
    })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| std::io::Error::other(format!("{} holds an invalid key", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_key_file_is_refused_as_the_movers_public_key_naming_the_right_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("api.key");
        tern_wire::SecretKey::write_new(&secret).expect("write");
        let error = load_public(&secret).expect_err("refused").to_string();
        assert!(
            error.contains("is a secret key") && error.contains("mover.pub"),
            "{error}"
        );
        // Its hex line alone is refused too: it could pass for a point of the curve.
        let bare = dir.path().join("bare");
        let text = std::fs::read_to_string(&secret).expect("read");
        std::fs::write(&bare, text.lines().last().expect("hex")).expect("write");
        let error = load_public(&bare).expect_err("refused").to_string();
        assert!(error.contains("not the mover's public key file"), "{error}");
        let public = dir.path().join("mover.pub");
        let key = SigningKey::from_bytes(&[3; 32]);
        write_public(&public, &key.verifying_key()).expect("write");
        assert_eq!(load_public(&public).expect("loads"), key.verifying_key());
    }
}
