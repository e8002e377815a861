//! When a class needs a new base: the pages drift away from their template (stories rotate, a redesign
//! ships) and the deltas grow. DESIGN.md ("Differential caching") re-derives the base when the delta grows
//! past a ratio of the page; here that is the mean delta ratio (delta bytes / page bytes) of the recent
//! deltas against the class's current base, decided by [`decide`] with the time passed in.

use std::collections::VecDeque;
use std::time::Instant;

use crate::base::BaseId;
use crate::class::RederiveRule;

/// The recent delta ratios of a class against one base (its current base).
#[derive(Debug, Clone)]
pub struct RatioWindow {
    capacity: usize,
    base: Option<BaseId>,
    ratios: VecDeque<f64>,
}

impl RatioWindow {
    /// A window of `capacity` deltas (at least one).
    pub fn new(capacity: usize) -> Self {
        RatioWindow {
            capacity: capacity.max(1),
            base: None,
            ratios: VecDeque::new(),
        }
    }

    /// Records a delta of `delta_len` bytes for a page of `page_len` bytes against `base`. A delta against
    /// another base than the window's starts the window over: only the current base's deltas say whether
    /// it still fits.
    pub fn record(&mut self, base: BaseId, delta_len: usize, page_len: usize) {
        if self.base != Some(base) {
            self.base = Some(base);
            self.ratios.clear();
        }
        if self.ratios.len() == self.capacity {
            self.ratios.pop_front();
        }
        // An empty page has nothing to save; count it as a perfect delta rather than divide by zero.
        let ratio = if page_len == 0 {
            0.0
        } else {
            delta_len as f64 / page_len as f64
        };
        self.ratios.push_back(ratio);
    }

    /// The base the window is about.
    pub fn base(&self) -> Option<BaseId> {
        self.base
    }

    /// Mean ratio of the deltas held; `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        if self.ratios.is_empty() {
            return None;
        }
        Some(self.ratios.iter().sum::<f64>() / self.ratios.len() as f64)
    }

    /// Number of deltas held.
    pub fn len(&self) -> usize {
        self.ratios.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.ratios.is_empty()
    }

    /// Whether the window is full.
    pub fn is_full(&self) -> bool {
        self.ratios.len() == self.capacity
    }
}

/// Why a new base is derived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Why {
    /// The class has no base yet.
    FirstBase,
    /// The recent deltas grew past the rule's ratio.
    RatioAbove {
        /// The mean of the window.
        mean: f64,
    },
}

/// Why no base is derived now although one might be needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// No clean response to derive from yet.
    NoSamples,
    /// The last base change is more recent than the rule's interval.
    CoolingDown,
    /// Fewer deltas against the current base than the window holds.
    FewDeltas,
}

/// The decision for a class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Keep the current base.
    Keep,
    /// Derive a new base.
    Derive(Why),
    /// Not now.
    Wait(Wait),
}

/// What a class's state says about its base at `now`: `current` is its current base, `window` the recent
/// ratios (against `current` only when `window.base() == current`), `last_change` when its base last
/// changed, `has_samples` whether clean responses are held.
pub fn decide(
    rule: &RederiveRule,
    current: Option<BaseId>,
    window: &RatioWindow,
    last_change: Option<Instant>,
    has_samples: bool,
    now: Instant,
) -> Decision {
    let Some(current) = current else {
        return if has_samples {
            Decision::Derive(Why::FirstBase)
        } else {
            Decision::Wait(Wait::NoSamples)
        };
    };
    let about_current = window.base() == Some(current);
    let mean = match window.mean() {
        Some(mean) if about_current => mean,
        _ => return Decision::Wait(Wait::FewDeltas),
    };
    if mean <= rule.ratio {
        return Decision::Keep;
    }
    if window.len() < rule.window.min(window.capacity) {
        return Decision::Wait(Wait::FewDeltas);
    }
    if last_change.is_some_and(|at| now.saturating_duration_since(at) < rule.min_interval) {
        return Decision::Wait(Wait::CoolingDown);
    }
    if !has_samples {
        return Decision::Wait(Wait::NoSamples);
    }
    Decision::Derive(Why::RatioAbove { mean })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn rule() -> RederiveRule {
        RederiveRule {
            ratio: 0.05,
            window: 4,
            min_interval: Duration::from_secs(60),
        }
    }

    #[test]
    fn first_base_when_samples_exist() {
        let now = Instant::now();
        let window = RatioWindow::new(4);
        assert_eq!(
            decide(&rule(), None, &window, None, false, now),
            Decision::Wait(Wait::NoSamples)
        );
        assert_eq!(
            decide(&rule(), None, &window, None, true, now),
            Decision::Derive(Why::FirstBase)
        );
    }

    #[test]
    fn derives_when_the_full_window_mean_exceeds_the_ratio() {
        let start = Instant::now();
        let base = BaseId::of(b"base");
        let mut window = RatioWindow::new(4);
        let decision = |window: &RatioWindow, at| decide(&rule(), Some(base), window, Some(start), true, at);
        for _ in 0..3 {
            window.record(base, 10, 100);
        }
        assert_eq!(decision(&window, start), Decision::Wait(Wait::FewDeltas));
        window.record(base, 10, 100);
        assert_eq!(decision(&window, start), Decision::Wait(Wait::CoolingDown));
        let later = start + Duration::from_secs(61);
        assert!(matches!(
            decision(&window, later),
            Decision::Derive(Why::RatioAbove { mean }) if (mean - 0.1).abs() < 1e-9
        ));
        for _ in 0..4 {
            window.record(base, 1, 100);
        }
        assert_eq!(decision(&window, later), Decision::Keep);
    }

    #[test]
    fn deltas_against_an_old_base_do_not_count() {
        let now = Instant::now();
        let (old, new) = (BaseId::of(b"old"), BaseId::of(b"new"));
        let mut window = RatioWindow::new(2);
        window.record(old, 90, 100);
        window.record(old, 90, 100);
        assert_eq!(
            decide(&rule(), Some(new), &window, None, true, now),
            Decision::Wait(Wait::FewDeltas)
        );
        window.record(new, 1, 100);
        assert_eq!(window.len(), 1);
        assert_eq!(window.base(), Some(new));
    }

    #[test]
    fn empty_pages_do_not_divide_by_zero() {
        let mut window = RatioWindow::new(2);
        window.record(BaseId::of(b"b"), 40, 0);
        assert_eq!(window.mean(), Some(0.0));
    }

    proptest! {
        #[test]
        fn mean_is_within_the_recorded_ratios(
            deltas in proptest::collection::vec((0usize..usize::MAX, 1usize..usize::MAX), 1..40),
        ) {
            let base = BaseId::of(b"b");
            let mut window = RatioWindow::new(8);
            for (delta, page) in &deltas {
                window.record(base, *delta, *page);
            }
            let recent: Vec<f64> = deltas.iter().rev().take(8).map(|(d, p)| *d as f64 / *p as f64).collect();
            let mean = window.mean().expect("not empty");
            let low = recent.iter().cloned().fold(f64::INFINITY, f64::min);
            let high = recent.iter().cloned().fold(0.0, f64::max);
            prop_assert!(mean.is_finite());
            prop_assert!(mean >= low * (1.0 - 1e-9) && mean <= high * (1.0 + 1e-9));
        }
    }
}
