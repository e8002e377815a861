//! The benchmark's synthetic site: HTML-like pages and incompressible images of a chosen total size, and
//! changes that rewrite a chosen share of its bytes; and the check that a copy is identical to staging.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Every file under `root`: path, size and blake3 hash.
pub(crate) fn digest(root: &Path) -> Result<Vec<(String, u64, String)>> {
    let snapshot = tern_tree::scan(root, &tern_tree::Snapshot::new())
        .with_context(|| format!("read {}", root.display()))?
        .snapshot;
    Ok(snapshot
        .into_iter()
        .map(|(path, state)| (path, state.len, state.hash))
        .collect())
}

/// Every one of `copies` is byte-identical to `staging` (same paths, sizes and blake3 hashes).
pub(crate) fn check_identical(staging: &Path, copies: &[PathBuf]) -> Result<()> {
    let expected = digest(staging)?;
    for copy in copies {
        if digest(copy)? != expected {
            bail!("{} differs from staging", copy.display());
        }
    }
    Ok(())
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
}

const WORDS: &[&str] = &[
    "<div class=\"post\">",
    "</div>",
    "<p>",
    "</p>",
    "the",
    "content",
    "delivery",
    "network",
    "edge",
    "cache",
    "origin",
    "tern",
    "publish",
    "<a href=\"/archive/",
    "\">",
    "</a>",
    "server",
    "fresh",
    "version",
    "node",
    "assignment",
    "commit",
    "rollback",
    "site",
    "2026",
    "november",
    "article",
    "<li>",
    "</li>",
];

/// `len` bytes of HTML-like text (compresses about as well as real pages) or, for images, random bytes.
fn synthetic(rng: &mut Rng, len: usize, binary: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    if binary {
        while out.len() < len {
            out.extend_from_slice(&rng.next().to_le_bytes());
        }
    } else {
        while out.len() < len {
            let r = rng.next();
            out.extend_from_slice(WORDS[(r % WORDS.len() as u64) as usize].as_bytes());
            out.push(if r >> 60 == 0 { b'\n' } else { b' ' });
            if r >> 56 & 0x7 == 0 {
                out.extend_from_slice((r >> 20 & 0xffff).to_string().as_bytes());
            }
        }
    }
    out.truncate(len);
    out
}

/// Writes the synthetic site; returns its bytes.
pub(crate) fn generate(root: &Path, files: usize, bytes: u64) -> Result<u64> {
    let mut rng = Rng(0x7e57_c0de);
    // Relative sizes: many small pages, some larger ones, a few big images; scaled to `bytes`.
    let weights: Vec<(u64, bool)> = (0..files)
        .map(|n| {
            let r = rng.next();
            match n % 10 {
                0 => (100_000 + r % 900_000, true),
                1..=3 => (20_000 + r % 100_000, false),
                _ => (4_000 + r % 16_000, false),
            }
        })
        .collect();
    let total: u64 = weights.iter().map(|(w, _)| w).sum();
    let mut written = 0;
    for (n, (weight, binary)) in weights.into_iter().enumerate() {
        let len = (weight as u128 * bytes as u128 / total.max(1) as u128) as usize;
        let name = if binary {
            format!("s{:02}/img/p{n}.jpg", n % 50)
        } else {
            format!("s{:02}/page{n}.html", n % 50)
        };
        let path = root.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, synthetic(&mut rng, len, binary))?;
        written += len as u64;
    }
    Ok(written)
}

/// Rewrites a region of one file in `stride` (another one each round) so that about `share` of the site's
/// bytes change; returns the bytes rewritten. With a stride of 10, a small edit of a site; with 1, a
/// redesign that touches every file.
pub(crate) fn change(root: &Path, share: f64, round: u64, stride: usize) -> Result<u64> {
    let stride = stride.max(1);
    let mut rng = Rng(0x00c4_a76e ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    let size = |path: &PathBuf| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let total: u64 = files.iter().map(size).sum();
    // One file in `stride` (another one each round), each rewritten over the same fraction of its length:
    // `share` of all bytes.
    let offset = (round % stride as u64) as usize;
    let chosen: u64 = files.iter().skip(offset).step_by(stride).map(size).sum();
    let fraction = (share * total as f64 / chosen.max(1) as f64).min(1.0);
    let mut changed = 0;
    for path in files.iter().skip(offset).step_by(stride) {
        let mut content = Vec::new();
        std::fs::File::open(path)?.read_to_end(&mut content)?;
        let region = ((content.len() as f64) * fraction) as usize;
        if region == 0 {
            continue;
        }
        let start = (rng.next() as usize) % (content.len() - region + 1);
        let binary = path.extension().is_some_and(|e| e == "jpg");
        let fresh = synthetic(&mut rng, region, binary);
        content[start..start + region].copy_from_slice(&fresh);
        let mut file = std::fs::File::create(path)?;
        file.write_all(&content)?;
        changed += region as u64;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_has_the_size_asked_for_and_the_change_its_share() {
        let area = tempfile::tempdir().expect("tempdir");
        let written = generate(area.path(), 200, 4_000_000).expect("generate");
        assert!((3_900_000..=4_000_000).contains(&written), "{written}");
        let before = tern_tree::scan(area.path(), &tern_tree::Snapshot::new())
            .expect("scan")
            .snapshot;
        for round in 1..=2 {
            let changed = change(area.path(), 0.02, round, 10).expect("change");
            let share = changed as f64 / written as f64;
            assert!((0.01..0.03).contains(&share), "{share}");
        }
        // Each round changes other files: two rounds touch about a fifth of them.
        let after = tern_tree::scan(area.path(), &before).expect("scan").snapshot;
        let touched = tern_tree::differences(&before, &after).len();
        assert!((30..=50).contains(&touched), "{touched} of 200 files changed");
        // A redesign: every file, half of the bytes.
        let changed = change(area.path(), 0.5, 3, 1).expect("change");
        let share = changed as f64 / written as f64;
        assert!((0.45..0.55).contains(&share), "{share}");
        let redesigned = tern_tree::scan(area.path(), &after).expect("scan").snapshot;
        assert_eq!(tern_tree::differences(&after, &redesigned).len(), 200);
    }
}
