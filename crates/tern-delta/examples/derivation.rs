//! Measures how to derive a base: for evolving synthetic pages (issue 12's workload), the delta size of a
//! later page against a base derived by each candidate rule, and the zstd level. Prints a table; the figures
//! and the choice are written down in `src/derive.rs` and `src/encoder.rs`.
//!
//!     cargo run --release -p tern-delta --example derivation

use std::time::{Duration, Instant};

use tern_delta::dcz::DczEncoder;
use tern_delta::derive::{self, Derivation, Samples};
use tern_delta::fields::ReprDigest;
use tern_delta::synthetic::{Accounts, News, Prices, Products, Rng};

/// Clean responses a base is derived from (one a minute before the evaluation time).
const SAMPLES: u64 = 8;
/// Evaluation times per workload and gap.
const POINTS: u64 = 12;
const MAX_BASE: usize = 8 << 20;

/// A workload: the clean responses seen before minute `t`, and the page served at minute `t`.
trait Workload {
    fn name(&self) -> &'static str;
    fn clean(&self, minute: u64, n: u64) -> Vec<u8>;
    fn served(&self, minute: u64, n: u64) -> Vec<u8>;
}

struct NewsLoad(News);

impl Workload for NewsLoad {
    fn name(&self) -> &'static str {
        "news 110 KB"
    }
    fn clean(&self, minute: u64, _n: u64) -> Vec<u8> {
        self.0.page(minute)
    }
    fn served(&self, minute: u64, _n: u64) -> Vec<u8> {
        self.0.page(minute)
    }
}

struct PriceLoad(Prices);

impl Workload for PriceLoad {
    fn name(&self) -> &'static str {
        "price list"
    }
    fn clean(&self, minute: u64, _n: u64) -> Vec<u8> {
        self.0.page(minute)
    }
    fn served(&self, minute: u64, _n: u64) -> Vec<u8> {
        self.0.page(minute)
    }
}

struct AccountLoad(Accounts);

impl Workload for AccountLoad {
    fn name(&self) -> &'static str {
        "account (personal)"
    }
    fn clean(&self, minute: u64, _n: u64) -> Vec<u8> {
        self.0.page(None, minute)
    }
    fn served(&self, minute: u64, n: u64) -> Vec<u8> {
        self.0.page(Some(&self.0.user(n)), minute)
    }
}

struct ProductLoad(Products);

impl Workload for ProductLoad {
    fn name(&self) -> &'static str {
        "product pages"
    }
    fn clean(&self, minute: u64, n: u64) -> Vec<u8> {
        self.0.page(Rng::from_parts(&[minute, n, 11]).below(400), minute)
    }
    fn served(&self, minute: u64, n: u64) -> Vec<u8> {
        self.0.page(Rng::from_parts(&[minute, n, 13]).below(400), minute)
    }
}

struct Row {
    base_bytes: usize,
    page_bytes: usize,
    delta_bytes: usize,
    plain_zstd_bytes: usize,
    derive_time: Duration,
    encode_times: Vec<Duration>,
}

fn measure(load: &dyn Workload, derivation: Derivation, gap: u64, encoder: &DczEncoder) -> Row {
    let mut row = Row {
        base_bytes: 0,
        page_bytes: 0,
        delta_bytes: 0,
        plain_zstd_bytes: 0,
        derive_time: Duration::ZERO,
        encode_times: Vec::new(),
    };
    for point in 0..POINTS {
        let t = 240 + point * 37;
        let mut samples = Samples::new(SAMPLES as usize);
        for back in (1..=SAMPLES).rev() {
            samples.push(load.clean(t - back, point * 100 + back).into());
        }
        let started = Instant::now();
        let base = derive::derive(derivation, &samples, "c", MAX_BASE)
            .expect("samples")
            .expect("valid base");
        row.derive_time += started.elapsed();
        row.base_bytes += base.len();
        for user in 0..4 {
            let page = load.served(t + gap, point * 10 + user);
            let started = Instant::now();
            let delta = encoder.encode(&base, &page).expect("encodes");
            let _digest = ReprDigest::of(&page);
            row.encode_times.push(started.elapsed());
            row.page_bytes += page.len();
            row.delta_bytes += delta.len();
            row.plain_zstd_bytes += zstd::bulk::compress(&page, 3).expect("compresses").len();
        }
    }
    row
}

fn percentile(times: &mut [Duration], p: f64) -> Duration {
    times.sort();
    let at = ((times.len() as f64 - 1.0) * p).round() as usize;
    times[at]
}

fn main() {
    let loads: Vec<Box<dyn Workload>> = vec![
        Box::new(NewsLoad(News::new(7))),
        Box::new(AccountLoad(Accounts::new(7))),
        Box::new(ProductLoad(Products::new(7))),
        Box::new(PriceLoad(Prices::new(7, 1500))),
    ];
    let derivations = [
        Derivation::Latest,
        Derivation::Medoid,
        Derivation::Concat { max_bytes: 1 << 20 },
        Derivation::Chunks { max_bytes: 1 << 20 },
    ];
    println!(
        "{:<20} {:>4} {:<8} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "workload", "gap", "rule", "base KB", "page B", "delta B", "% raw", "% zstd", "enc p50", "enc p99", "derive"
    );
    for load in &loads {
        for gap in [5, 60] {
            for derivation in derivations {
                let mut row = measure(load.as_ref(), derivation, gap, &DczEncoder::new(3));
                let pages = row.encode_times.len();
                let points = POINTS as usize;
                println!(
                    "{:<20} {:>3}m {:<8} {:>9.1} {:>9} {:>9} {:>7.2}% {:>8.1}% {:>7}us {:>7}us {:>7}ms",
                    load.name(),
                    gap,
                    derivation.name(),
                    row.base_bytes as f64 / points as f64 / 1024.0,
                    row.page_bytes / pages,
                    row.delta_bytes / pages,
                    100.0 * row.delta_bytes as f64 / row.page_bytes as f64,
                    100.0 * row.delta_bytes as f64 / row.plain_zstd_bytes as f64,
                    percentile(&mut row.encode_times, 0.5).as_micros(),
                    percentile(&mut row.encode_times, 0.99).as_micros(),
                    (row.derive_time / POINTS as u32).as_millis(),
                );
            }
        }
    }
    println!();
    println!(
        "zstd level (its own parameters) and long-distance matching (ldm), latest-response base; the encoder's search: examples/floor.rs --grid"
    );
    println!(
        "{:<20} {:>5} {:>4} {:>4} {:>9} {:>8} {:>9} {:>9}",
        "workload", "level", "ldm", "gap", "delta B", "% raw", "enc p50", "enc p99"
    );
    let configs = [(1, true), (3, true), (3, false), (6, true), (9, false), (19, false)];
    for load in &loads {
        for (level, ldm) in configs {
            for gap in [5, 60] {
                let encoder = DczEncoder::new(level)
                    .with_search(tern_delta::dcz::Search::Level)
                    .with_long_distance(ldm);
                let mut row = measure(load.as_ref(), Derivation::Latest, gap, &encoder);
                let pages = row.encode_times.len();
                println!(
                    "{:<20} {:>5} {:>4} {:>3}m {:>9} {:>7.2}% {:>7}us {:>7}us",
                    load.name(),
                    level,
                    if ldm { "on" } else { "off" },
                    gap,
                    row.delta_bytes / pages,
                    100.0 * row.delta_bytes as f64 / row.page_bytes as f64,
                    percentile(&mut row.encode_times, 0.5).as_micros(),
                    percentile(&mut row.encode_times, 0.99).as_micros(),
                );
            }
        }
    }
}
