//! Pages as browser dictionaries (RFC 9842 section 2.1): a shareable page of a class goes to the browser
//! with `Use-As-Dictionary` matching its own URL, and the edge keeps its bytes by hash for a while. On the
//! browser's next visit it names that page in `Available-Dictionary`, and the edge sends the new version as
//! a `dcz` delta against the version the browser already has: closer than the class's base, which is
//! re-derived only when deltas grow. Only pages [`tern_delta::shareable_page`] allows are kept: pages any
//! anonymous client gets, with no secret in them (the same rule as for bases).

use std::collections::{HashMap, VecDeque};

use tern_delta::{Base, BaseId};

/// Recent shareable pages by their SHA-256, bounded in bytes (the oldest go first).
#[derive(Debug)]
pub(super) struct PageDictionaries {
    max_bytes: usize,
    bytes: usize,
    pages: HashMap<BaseId, Base>,
    order: VecDeque<BaseId>,
}

impl PageDictionaries {
    /// An empty set holding at most `max_bytes` of pages.
    pub(super) fn new(max_bytes: usize) -> Self {
        PageDictionaries {
            max_bytes,
            bytes: 0,
            pages: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Keeps `page` (a page larger than the whole bound is not kept).
    pub(super) fn insert(&mut self, page: Base) {
        let id = page.id();
        if page.len() > self.max_bytes || self.pages.contains_key(&id) {
            return;
        }
        while self.bytes + page.len() > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.pages.remove(&oldest) {
                self.bytes -= gone.len();
            }
        }
        self.bytes += page.len();
        self.order.push_back(id);
        self.pages.insert(id, page);
    }

    /// The page with hash `id`, if kept.
    pub(super) fn get(&self, id: &BaseId) -> Option<&Base> {
        self.pages.get(id)
    }

    /// Pages kept and their bytes.
    pub(super) fn size(&self) -> (usize, usize) {
        (self.pages.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(text: &str) -> Base {
        Base::new("news", text.as_bytes().to_vec(), 1 << 20).expect("page")
    }

    #[test]
    fn pages_are_found_by_hash_and_the_oldest_go_first() {
        let mut pages = PageDictionaries::new(10);
        let (a, b, c) = (page("aaaa"), page("bbbb"), page("cccc"));
        pages.insert(a.clone());
        pages.insert(b.clone());
        pages.insert(b.clone());
        assert_eq!(pages.size(), (2, 8));
        pages.insert(c.clone());
        assert!(pages.get(&a.id()).is_none(), "the oldest made room");
        assert!(pages.get(&b.id()).is_some() && pages.get(&c.id()).is_some());
        assert_eq!(pages.size(), (2, 8));
        pages.insert(page("a page larger than the bound"));
        assert_eq!(pages.size(), (2, 8));
    }
}
