//! Lab tests. The namespace test needs root (CI runs as root); elsewhere it says so and skips.

mod community;
mod lab;
mod mover_tree;
mod multicast;

/// The `tern` binary for a lab test on real processes in network namespaces, or `None` (having said why
/// the test skips) when not root or the binary is not built.
pub fn lab_tern() -> Option<std::path::PathBuf> {
    if !tern_lab::topology::namespaces_available() {
        eprintln!("skipped: the lab needs root and network namespaces (CI runs as root)");
        return None;
    }
    let tern = tern_lab::topology::tern_binary();
    if tern.is_none() {
        eprintln!("skipped: no tern binary beside the tests (build it with `cargo build -p tern`)");
    }
    tern
}

/// Whether the temporary directory's file system has `needed` bytes free for a test that writes that much
/// (`what` says what for); otherwise says so and the test skips. A machine out of disk is not a fault of the
/// code under test, and a test that fills the disk takes every test running beside it down with it.
pub fn disk_for(needed: u64, what: &str) -> bool {
    let dir = std::env::temp_dir();
    match rustix::fs::statvfs(&dir) {
        Ok(stat) => {
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            if free < needed {
                eprintln!(
                    "skipped: {what} needs {} MB free under {}, and only {} MB are (free some disk or set TMPDIR)",
                    needed >> 20,
                    dir.display(),
                    free >> 20
                );
                return false;
            }
            true
        }
        Err(error) => {
            eprintln!("cannot read the free space under {}: {error}; going on", dir.display());
            true
        }
    }
}

/// Asserts that none of the namespaces and links named in `created` is left after the lab was dropped.
pub fn assert_nothing_left<I: IntoIterator<Item = String>>(created: I) {
    let left_namespaces = tern_lab::topology::namespaces();
    let left_links = tern_lab::topology::list_links();
    for name in created {
        assert!(!left_namespaces.contains(&name), "namespace {name} left behind");
        assert!(!left_links.contains(&name), "link {name} left behind");
    }
}
