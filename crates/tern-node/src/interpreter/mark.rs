//! The newest version a node has held of each site, and when the mover issued the last switch it applied
//! (`ROOT/.state/marks/<site>`): what keeps a replayed assignment from taking a site back. An assignment is
//! signed by the mover but not addressed to one node, so a copy captured on its way to any node (or an old
//! snapshot) verifies everywhere; versions only grow (seed 004: each publish, restore or removal takes the
//! next number, also across a removal), so a node refuses content or a commit for a version older than one
//! it held, and a rollback issued before the switch it would undo. The mark outlives a removed site.

use std::io;
use std::path::{Path, PathBuf};

/// The directory of the marks, under the node's root.
const MARKS: &str = ".state/marks";

/// What a node has held of one site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Mark {
    /// The highest version committed or removed here.
    pub high: u64,
    /// When the mover issued the last commit or rollback applied here (`created_ms` of its header).
    pub switched_ms: u64,
}

fn path(root: &Path, site: &str) -> PathBuf {
    root.join(MARKS).join(site)
}

/// The site's mark; a node that kept none (an older release) takes the live version's number.
pub(super) fn read(root: &Path, site: &str, site_dir: &Path) -> Mark {
    let kept = std::fs::read_to_string(path(root, site)).ok().and_then(|text| {
        let mut words = text.split_whitespace().map(str::parse::<u64>);
        match (words.next(), words.next()) {
            (Some(Ok(high)), Some(Ok(switched_ms))) => Some(Mark { high, switched_ms }),
            _ => None,
        }
    });
    let live = live_version(site_dir).unwrap_or(0);
    let mut mark = kept.unwrap_or_default();
    mark.high = mark.high.max(live);
    mark
}

/// Keeps the site's mark, durably ([`tern_tree::write_durably`]): a node that loses power after a switch
/// or a removal still refuses what is older.
pub(super) fn write(root: &Path, site: &str, mark: Mark) -> io::Result<()> {
    let target = path(root, site);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    tern_tree::write_durably(&target, format!("{} {}\n", mark.high, mark.switched_ms).as_bytes())
}

/// The version a version directory is, from its name (`versions/<sequence>-<id>`).
pub(super) fn version_of(target: &Path) -> Option<u64> {
    target.file_name()?.to_str()?.split('-').next()?.parse().ok()
}

/// The version the site's `live` link names, if it has one.
pub(crate) fn live_version(site_dir: &Path) -> Option<u64> {
    version_of(&std::fs::read_link(site_dir.join("live")).ok()?)
}
