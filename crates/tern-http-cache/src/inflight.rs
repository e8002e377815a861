//! Purges that fetches in flight must honour. A miss that went upstream before a purge brings back the
//! content the purge meant to remove; if it were stored after the purge, the edge would serve the old
//! content for its whole lifetime, and the promise that every edge is fresh the moment the origin changes
//! would break (issue 9, fault 2).
//!
//! Every fetch takes a [`FetchTicket`] before its request goes upstream; the ticket carries the store's purge
//! generation at that moment. Every purge bumps the generation and, while any ticket is out, is remembered
//! with what it matched. When the fetch's response is about to be stored, the purges newer than its ticket
//! decide: a matching hard purge drops it, a matching soft purge stores it already invalidated. Purges older
//! than every ticket out are forgotten, so the log holds only what some fetch in flight still needs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::PurgeMode;

/// Most purges remembered while fetches are in flight; past it they collapse into one purge of everything
/// (safe: a fetch in flight then stores nothing, and is fetched again).
const MAX_REMEMBERED: usize = 65_536;

/// What a purge matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeScope {
    /// One primary key (every variant).
    Url(String),
    /// One primary key without a query, and every primary key that is it with a query (`http://h/a`
    /// and `http://h/a?v=1`, never `http://h/ab`): a changed file, whatever query its links carry.
    UrlAnyQuery(String),
    /// Every primary key starting with this (the empty prefix is everything).
    Prefix(String),
    /// Every object tagged with this surrogate key.
    SurrogateKey(String),
}

impl PurgeScope {
    /// Whether an object of `url` tagged `keys` is in scope. With `keys` unknown (`None`, the response has
    /// not arrived yet), a surrogate-key purge may match anything and counts as matching.
    fn matches(&self, url: &str, keys: Option<&[String]>) -> bool {
        match self {
            PurgeScope::Url(purged) => purged == url,
            PurgeScope::UrlAnyQuery(base) => is_with_any_query(url, base),
            PurgeScope::Prefix(prefix) => url.starts_with(prefix.as_str()),
            PurgeScope::SurrogateKey(key) => keys.is_none_or(|keys| keys.iter().any(|k| k == key)),
        }
    }
}

/// Whether primary key `url` is `base` (a primary key without a query) or `base` with a query.
pub(crate) fn is_with_any_query(url: &str, base: &str) -> bool {
    url.strip_prefix(base)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'))
}

#[derive(Debug)]
struct Remembered {
    generation: u64,
    scope: PurgeScope,
    mode: PurgeMode,
}

#[derive(Debug, Default)]
struct State {
    generation: u64,
    remembered: VecDeque<Remembered>,
    /// Tickets out, by the generation they were taken at.
    tickets: BTreeMap<u64, usize>,
}

/// The purge generation and the purges that fetches in flight have not yet seen.
#[derive(Debug, Default)]
pub struct PurgeLog {
    state: Mutex<State>,
}

/// Held by a fetch from before its request goes upstream until its response is stored or dropped.
#[derive(Debug)]
pub struct FetchTicket {
    log: Arc<PurgeLog>,
    generation: u64,
}

impl FetchTicket {
    /// The purge generation when the fetch began.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl Drop for FetchTicket {
    fn drop(&mut self) {
        let mut state = self.log.lock();
        if let Some(count) = state.tickets.get_mut(&self.generation) {
            *count -= 1;
            if *count == 0 {
                state.tickets.remove(&self.generation);
            }
        }
        state.forget_unneeded();
    }
}

impl State {
    fn forget_unneeded(&mut self) {
        match self.tickets.keys().next().copied() {
            None => self.remembered.clear(),
            Some(oldest) => {
                while self.remembered.front().is_some_and(|r| r.generation <= oldest) {
                    self.remembered.pop_front();
                }
            }
        }
    }
}

impl PurgeLog {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a ticket at the current generation.
    pub fn ticket(self: &Arc<Self>) -> FetchTicket {
        let mut state = self.lock();
        let generation = state.generation;
        *state.tickets.entry(generation).or_default() += 1;
        FetchTicket {
            log: self.clone(),
            generation,
        }
    }

    /// Records a purge; returns its generation.
    pub fn record(&self, scope: PurgeScope, mode: PurgeMode) -> u64 {
        let mut state = self.lock();
        state.generation += 1;
        let generation = state.generation;
        if state.tickets.is_empty() {
            // No fetch in flight can be affected, and later ones start after this purge.
            return generation;
        }
        if state.remembered.len() >= MAX_REMEMBERED {
            state.remembered.clear();
            state.remembered.push_back(Remembered {
                generation,
                scope: PurgeScope::Prefix(String::new()),
                mode: PurgeMode::Hard,
            });
            return generation;
        }
        state.remembered.push_back(Remembered {
            generation,
            scope,
            mode,
        });
        generation
    }

    /// The strongest purge since `generation` that matches an object of `url` tagged `keys`: `Hard` wins
    /// over `Soft`; `None` when nothing newer matches.
    pub fn purged_since(&self, generation: u64, url: &str, keys: Option<&[String]>) -> Option<PurgeMode> {
        let state = self.lock();
        let mut strongest = None;
        for purge in state.remembered.iter().rev() {
            if purge.generation <= generation {
                break;
            }
            if purge.scope.matches(url, keys) {
                if purge.mode == PurgeMode::Hard {
                    return Some(PurgeMode::Hard);
                }
                strongest = Some(PurgeMode::Soft);
            }
        }
        strongest
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Purges remembered (for tests and `/status`).
    pub fn remembered(&self) -> usize {
        self.lock().remembered.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_after_the_ticket_is_seen_and_one_before_is_not() {
        let log = Arc::new(PurgeLog::default());
        log.record(PurgeScope::Url("http://h/a".into()), PurgeMode::Hard);
        let ticket = log.ticket();
        assert_eq!(log.purged_since(ticket.generation(), "http://h/a", None), None);
        log.record(PurgeScope::Prefix("http://h/".into()), PurgeMode::Soft);
        assert_eq!(
            log.purged_since(ticket.generation(), "http://h/a", None),
            Some(PurgeMode::Soft)
        );
        log.record(PurgeScope::Url("http://h/a".into()), PurgeMode::Hard);
        assert_eq!(
            log.purged_since(ticket.generation(), "http://h/a", None),
            Some(PurgeMode::Hard)
        );
        assert_eq!(log.purged_since(ticket.generation(), "http://other/a", None), None);
    }

    #[test]
    fn surrogate_keys_match_when_unknown_or_named() {
        let log = Arc::new(PurgeLog::default());
        let ticket = log.ticket();
        log.record(PurgeScope::SurrogateKey("product-7".into()), PurgeMode::Hard);
        let tagged = vec!["product-7".to_string()];
        let other = vec!["product-8".to_string()];
        let at = ticket.generation();
        assert_eq!(log.purged_since(at, "http://h/p", None), Some(PurgeMode::Hard));
        assert_eq!(log.purged_since(at, "http://h/p", Some(&tagged)), Some(PurgeMode::Hard));
        assert_eq!(log.purged_since(at, "http://h/p", Some(&other)), None);
    }

    #[test]
    fn purges_are_forgotten_once_no_fetch_needs_them() {
        let log = Arc::new(PurgeLog::default());
        log.record(PurgeScope::Url("u".into()), PurgeMode::Hard);
        assert_eq!(log.remembered(), 0, "nothing in flight: nothing to remember");
        let first = log.ticket();
        log.record(PurgeScope::Url("u".into()), PurgeMode::Hard);
        let second = log.ticket();
        log.record(PurgeScope::Url("v".into()), PurgeMode::Hard);
        assert_eq!(log.remembered(), 2);
        drop(first);
        assert_eq!(
            log.remembered(),
            1,
            "only the purge after the second ticket is still needed"
        );
        drop(second);
        assert_eq!(log.remembered(), 0);
    }

    #[test]
    fn a_purge_storm_collapses_to_everything() {
        let log = Arc::new(PurgeLog::default());
        let ticket = log.ticket();
        for n in 0..=MAX_REMEMBERED {
            log.record(PurgeScope::Url(format!("u{n}")), PurgeMode::Soft);
        }
        assert_eq!(log.remembered(), 1);
        assert_eq!(
            log.purged_since(ticket.generation(), "anything", Some(&[])),
            Some(PurgeMode::Hard)
        );
    }
}
