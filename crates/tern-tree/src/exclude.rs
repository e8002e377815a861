//! Names a scan leaves out, by pattern. The content mover leaves out nothing by default (its site rules
//! decide); the CP agent leaves out the temporaries editors write next to the file being edited, which
//! appear and vanish within a save and are never served.

/// The temporaries editors write beside the file being edited, matched against the entry's name (not its
/// path): vim's swap files (`.*.swp`, `.*.swo`, `.*.swx`) and its write test `4913`, backup files (`*~`),
/// Emacs lock and auto-save files (`.#*`, `#*#`), LibreOffice locks (`.~lock.*#`), Kate swap files
/// (`*.kate-swp`), GNOME's atomic-save files (`.goutputstream-*`), and the hidden temporaries of tools that
/// write a file beside its name and rename it into place (`.*.tmp`).
pub const EDITOR_TEMPORARIES: &[&str] = &[
    ".*.swp",
    ".*.swo",
    ".*.swx",
    "4913",
    "*~",
    ".#*",
    "#*#",
    ".~lock.*#",
    "*.kate-swp",
    ".goutputstream-*",
    ".*.tmp",
];

/// Name patterns a scan leaves out (an excluded directory is not entered). A pattern matches a whole name;
/// `*` stands for any run of characters and `?` for one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Excludes {
    patterns: Vec<String>,
}

impl Excludes {
    /// Nothing is left out.
    pub fn none() -> Excludes {
        Excludes::default()
    }

    /// [`EDITOR_TEMPORARIES`], the CP agent's default.
    pub fn editor_temporaries() -> Excludes {
        Excludes::new(EDITOR_TEMPORARIES.iter().copied())
    }

    /// These patterns.
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Excludes {
        Excludes {
            patterns: patterns.into_iter().map(str::to_string).collect(),
        }
    }

    /// Whether an entry called `name` is left out.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns
            .iter()
            .any(|pattern| wildcard(pattern.as_bytes(), name.as_bytes()))
    }
}

/// Whether `name` matches `pattern` (`*` any run, `?` one byte), by backtracking to the last `*`.
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editor_temporaries_are_left_out_and_other_dotfiles_are_not() {
        let excludes = Excludes::editor_temporaries();
        for temporary in [
            ".index.html.swp",
            ".a.swo",
            "4913",
            "index.html~",
            ".#index.html",
            "#index.html#",
            ".~lock.report.odt#",
            "notes.txt.kate-swp",
            ".goutputstream-ABC123",
            ".index.html.tmp",
        ] {
            assert!(excludes.matches(temporary), "{temporary} is an editor temporary");
        }
        for kept in [
            ".htaccess",
            ".well-known",
            ".nojekyll",
            "security.txt",
            "index.html",
            "a.swp",
            "49130",
            "~start",
        ] {
            assert!(!excludes.matches(kept), "{kept} is content");
        }
        assert!(!Excludes::none().matches(".index.html.swp"));
    }

    #[test]
    fn wildcards_backtrack() {
        assert!(wildcard(b"*a*b", b"xxaxxab"));
        assert!(wildcard(b"a?c", b"abc"));
        assert!(!wildcard(b"a?c", b"ac"));
        assert!(wildcard(b"**", b""));
        assert!(!wildcard(b"*.swp", b"a.swpx"));
    }
}
