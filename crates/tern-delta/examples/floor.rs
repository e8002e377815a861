//! How far the deltas are from what the workload's change really costs, and what the encoder's zstd
//! parameters buy. On the benchmark's page pairs (`tern-lab bench delta`: a page against the class's base
//! one interval earlier), prints per class and interval the mean delta of the encoder, of zstd's strongest
//! levels, and the lower bounds of `tern_delta::floor` (the new text alone) and, for the news pages, the
//! information of the generator's random draws. `--grid`: delta size and encode time of zstd parameter
//! sets (the table at `tern_delta::encoder::DEFAULT_LEVEL`). `--prepared`: the encoder with a context per
//! page against the base prepared once.
//!
//!     cargo run --release -p tern-delta --features testsuite --example floor [-- --grid | --prepared]

use std::time::Duration;

use tern_delta::Base;
use tern_delta::dcz::{self, DczEncoder, HEADER_LEN};
use tern_delta::floor;
use tern_delta::synthetic::{News, Prices, Products};
use zstd::zstd_safe::{self, CCtx, CParameter, Strategy};

const START_MINUTE: u64 = 24 * 60;
const STEPS: u64 = 30;
const MAX: usize = 8 << 20;

struct Pair {
    base: Base,
    page: Vec<u8>,
    from: u64,
    to: u64,
}

/// A bare list of 2,000 lines that differ only in their number, newest first: a line a minute.
fn list(minute: u64) -> Vec<u8> {
    (minute..minute + 2000)
        .rev()
        .map(|i| format!("<li class=\"story\"><a href=\"/story/{i}\">Story number {i}</a></li>\n"))
        .collect::<String>()
        .into_bytes()
}

fn pairs(class: &str, interval: u64) -> Vec<Pair> {
    let news = News::new(1);
    let calm = News::new(1).with_story_every(30);
    let headlines = News::new(1).with_summary_words(25, 100);
    let products = Products::new(3);
    let prices = Prices::new(7, 1500);
    (1..=STEPS)
        .map(|step| {
            let to = START_MINUTE + step * interval;
            let from = to - interval;
            let (base, page) = match class {
                "news" => (news.page(from), news.page(to)),
                "calm" => (calm.page(from), calm.page(to)),
                "headlines" => (headlines.page(from), headlines.page(to)),
                "prices" => (prices.page(from), prices.page(to)),
                "list" => (list(from), list(to)),
                _ => {
                    let item = step * 7 % 400;
                    (products.page((item + 1) % 400, from), products.page(item, to))
                }
            };
            Pair {
                base: Base::new(class, base, MAX).expect("a base"),
                page,
                from,
                to,
            }
        })
        .collect()
}

/// A `dcz` stream's size with these zstd parameters on top of the encoder's (window, no checksum).
fn encode_with(base: &Base, page: &[u8], parameters: &[CParameter]) -> usize {
    let mut context = CCtx::create();
    let mut frame = Vec::with_capacity(zstd_safe::compress_bound(page.len()));
    let window = dcz::window_log(base.len(), page.len());
    context.set_parameter(CParameter::WindowLog(window)).expect("window");
    context
        .set_parameter(CParameter::ChecksumFlag(false))
        .expect("checksum");
    for parameter in parameters {
        context.set_parameter(*parameter).expect("parameter");
    }
    context.ref_prefix(base.bytes()).expect("prefix");
    context.compress2(&mut frame, page).expect("compresses");
    HEADER_LEN + frame.len()
}

fn percentile(values: &[Duration], share: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 * share).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn bounds() {
    println!(
        "| class | interval | page | encoder | zstd 19, ldm | new text | new text, zstd 19 alone | floor: new text against the base | information |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for class in ["news", "calm", "headlines", "product"] {
        for interval in [5, 60] {
            let pairs = pairs(class, interval);
            let n = pairs.len() as f64;
            let mean = |f: &dyn Fn(&Pair) -> f64| pairs.iter().map(f).sum::<f64>() / n;
            let page = mean(&|p| p.page.len() as f64);
            let encoder = DczEncoder::new(tern_delta::encoder::DEFAULT_LEVEL);
            let delta = mean(&|p| encoder.encode(&p.base, &p.page).expect("encodes").len() as f64);
            let best = mean(&|p| {
                encode_with(
                    &p.base,
                    &p.page,
                    &[
                        CParameter::CompressionLevel(19),
                        CParameter::EnableLongDistanceMatching(true),
                    ],
                ) as f64
            });
            let new = mean(&|p| {
                floor::new_text(p.base.bytes(), &p.page)
                    .iter()
                    .map(|piece| piece.len() + 1)
                    .sum::<usize>() as f64
            });
            let alone = mean(&|p| {
                let joined = floor::new_text(p.base.bytes(), &p.page).join(&b'\n');
                zstd_safe::compress(&mut Vec::with_capacity(joined.len() + 64), &joined, 19).unwrap_or(0) as f64
            });
            let bound = mean(&|p| floor::floor(&p.base, &p.page) as f64);
            let information = match class {
                "news" => Some(News::new(1)),
                "calm" => Some(News::new(1).with_story_every(30)),
                "headlines" => Some(News::new(1).with_summary_words(25, 100)),
                _ => None,
            }
            .map(|site| mean(&|p| site.new_information_bits(p.from, p.to) / 8.0));
            let pct = |bytes: f64| format!("{:.0} B ({:.2}%)", bytes, bytes / page * 100.0);
            println!(
                "| {class} | {interval} min | {:.1} KB | {} | {} | {:.0} B | {} | {} | {} |",
                page / 1000.0,
                pct(delta),
                pct(best),
                new,
                pct(alone),
                pct(bound),
                information.map_or("-".to_string(), |bytes| format!("{} + 40 B header", pct(bytes))),
            );
        }
    }
}

/// CPU time of this thread so far (a preemption does not count as encoding time).
fn thread_cpu() -> Duration {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(time.tv_sec.max(0) as u64, time.tv_nsec.clamp(0, 999_999_999) as u32)
}

fn grid() {
    let only: Option<Vec<String>> = std::env::var("GRID_ONLY")
        .ok()
        .map(|text| text.split(';').map(String::from).collect());
    let repeats: usize = std::env::var("GRID_REPEATS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    use Strategy::*;
    let level = |n: i32| CParameter::CompressionLevel(n);
    let ldm = |on: bool| CParameter::EnableLongDistanceMatching(on);
    let tuned = |strategy: Strategy, search: u32, extra: &[CParameter]| {
        let mut set = vec![
            level(3),
            ldm(false),
            CParameter::Strategy(strategy),
            CParameter::SearchLog(search),
        ];
        set.extend_from_slice(extra);
        set
    };
    let mut sets: Vec<(String, Vec<CParameter>)> = vec![
        ("encoder (DczEncoder::new(DEFAULT_LEVEL))".into(), Vec::new()),
        ("level 3, ldm (the encoder before)".into(), vec![level(3), ldm(true)]),
        ("level 3".into(), vec![level(3), ldm(false)]),
        ("level 5".into(), vec![level(5), ldm(false)]),
        ("level 6".into(), vec![level(6), ldm(false)]),
        ("level 7".into(), vec![level(7), ldm(false)]),
        ("level 8".into(), vec![level(8), ldm(false)]),
        ("level 9".into(), vec![level(9), ldm(false)]),
        ("level 9, ldm".into(), vec![level(9), ldm(true)]),
        ("level 10".into(), vec![level(10), ldm(false)]),
        ("level 19, ldm".into(), vec![level(19), ldm(true)]),
        ("lazy2 search 2".into(), tuned(ZSTD_lazy2, 2, &[])),
        ("lazy2 search 3".into(), tuned(ZSTD_lazy2, 3, &[])),
        ("lazy2 search 4".into(), tuned(ZSTD_lazy2, 4, &[])),
        ("lazy2 search 5".into(), tuned(ZSTD_lazy2, 5, &[])),
        (
            "lazy2 search 4, ldm".into(),
            vec![
                level(3),
                ldm(true),
                CParameter::Strategy(ZSTD_lazy2),
                CParameter::SearchLog(4),
            ],
        ),
        (
            "lazy2 search 4, tl 8".into(),
            tuned(ZSTD_lazy2, 4, &[CParameter::TargetLength(8)]),
        ),
        (
            "lazy2 search 4, hash 17 chain 17".into(),
            tuned(ZSTD_lazy2, 4, &[CParameter::HashLog(17), CParameter::ChainLog(17)]),
        ),
        (
            "lazy2 search 4, minMatch 5".into(),
            tuned(ZSTD_lazy2, 4, &[CParameter::MinMatch(5)]),
        ),
        (
            "lazy2 search 3, minMatch 5".into(),
            tuned(ZSTD_lazy2, 3, &[CParameter::MinMatch(5)]),
        ),
        (
            "lazy2 search 2, minMatch 5".into(),
            tuned(ZSTD_lazy2, 2, &[CParameter::MinMatch(5)]),
        ),
        (
            "lazy2 search 4, minMatch 6".into(),
            tuned(ZSTD_lazy2, 4, &[CParameter::MinMatch(6)]),
        ),
        (
            "level 6, minMatch 5".into(),
            vec![level(6), ldm(false), CParameter::MinMatch(5)],
        ),
        ("lazy search 4".into(), tuned(ZSTD_lazy, 4, &[])),
        ("greedy search 5".into(), tuned(ZSTD_greedy, 5, &[])),
    ];
    // Search, minMatch, hash and chain log, and long-distance matching (None: off; Some(None): on with
    // zstd's minimum match; Some(Some(n)): on with minimum match n).
    type Matched = (Strategy, &'static str, u32, u32, u32, Option<Option<u32>>);
    let matched: [Matched; 11] = [
        (ZSTD_lazy2, "lazy2", 4, 5, 17, None),
        (ZSTD_lazy2, "lazy2", 3, 5, 17, None),
        (ZSTD_lazy2, "lazy2", 4, 5, 15, None),
        (ZSTD_lazy2, "lazy2", 3, 5, 17, Some(None)),
        (ZSTD_lazy2, "lazy2", 3, 5, 17, Some(Some(256))),
        (ZSTD_lazy2, "lazy2", 3, 5, 17, Some(Some(1024))),
        (ZSTD_lazy2, "lazy2", 3, 5, 17, Some(Some(4096))),
        (ZSTD_lazy2, "lazy2", 2, 5, 17, None),
        (ZSTD_lazy2, "lazy2", 2, 6, 17, None),
        (ZSTD_lazy2, "lazy2", 3, 6, 17, None),
        (ZSTD_lazy, "lazy", 3, 5, 17, None),
    ];
    for (strategy, name, search, min_match, hash, long) in matched {
        let mut extra = vec![
            CParameter::MinMatch(min_match),
            CParameter::HashLog(hash),
            CParameter::ChainLog(hash),
        ];
        let mut label = format!("{name} search {search}, minMatch {min_match}, hash {hash} chain {hash}");
        if let Some(minimum) = long {
            extra.push(ldm(true));
            label.push_str(", ldm");
            if let Some(minimum) = minimum {
                extra.push(CParameter::LdmMinMatch(minimum));
                label.push_str(&format!(" {minimum}"));
            }
        }
        sets.push((label, tuned(strategy, search, &extra)));
    }
    let scenarios: Vec<(&str, u64)> = vec![
        ("news", 5),
        ("news", 60),
        ("calm", 5),
        ("calm", 60),
        ("product", 5),
        ("prices", 5),
        ("prices", 60),
        ("list", 5),
    ];
    let mut header = String::from("| zstd parameters |");
    let mut rule = String::from("|---|");
    for (class, interval) in &scenarios {
        header.push_str(&format!(" {class} {interval} min |"));
        rule.push_str("---:|");
    }
    header.push_str(" encode p50 / p99, news 5 min; 60 min (CPU) |");
    rule.push_str("---:|");
    println!("{header}\n{rule}");
    let loaded: Vec<Vec<Pair>> = scenarios
        .iter()
        .map(|(class, interval)| pairs(class, *interval))
        .collect();
    for (name, parameters) in &sets {
        if only.as_ref().is_some_and(|only| !only.contains(name)) {
            continue;
        }
        let mut row = format!("| {name} |");
        let mut times = [Vec::new(), Vec::new()];
        for (index, pairs) in loaded.iter().enumerate() {
            let mut total = 0usize;
            let encoder = DczEncoder::new(tern_delta::encoder::DEFAULT_LEVEL);
            let encode = |pair: &Pair| {
                if parameters.is_empty() {
                    encoder.encode(&pair.base, &pair.page).expect("encodes").len()
                } else {
                    encode_with(&pair.base, &pair.page, parameters)
                }
            };
            for pair in pairs {
                total += encode(pair);
                if index < 2 {
                    for _ in 0..repeats {
                        let started = thread_cpu();
                        let size = encode(pair);
                        times[index].push(thread_cpu().saturating_sub(started));
                        std::hint::black_box(size);
                    }
                }
            }
            row.push_str(&format!(" {:.0} B |", total as f64 / pairs.len() as f64));
        }
        row.push_str(&format!(
            " {:.0} / {:.0} us; {:.0} / {:.0} us |",
            percentile(&times[0], 0.5).as_secs_f64() * 1e6,
            percentile(&times[0], 0.99).as_secs_f64() * 1e6,
            percentile(&times[1], 0.5).as_secs_f64() * 1e6,
            percentile(&times[1], 0.99).as_secs_f64() * 1e6
        ));
        println!("{row}");
    }
}

/// The encoder's two paths on the benchmark's pairs: a context per page with the base as prefix
/// (`DczEncoder::encode`), and the base prepared once (`DczEncoder::prepare`, as `tern delta`'s encoder
/// keeps it per class) with the pages after the first encoded against it (`encode_prepared`): mean delta
/// and encode CPU time p50 / p99 of each, and of the first page against a prepared base (preparing it
/// included).
fn prepared() {
    println!(
        "| class | interval | delta, fresh / prepared | encode, fresh context p50 / p99 | first page, preparing the base | later pages, prepared base |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let encoder = DczEncoder::new(tern_delta::encoder::DEFAULT_LEVEL);
    for (class, interval) in [
        ("news", 5),
        ("news", 60),
        ("calm", 5),
        ("calm", 60),
        ("product", 5),
        ("prices", 60),
    ] {
        let (mut fresh, mut first, mut later) = (Vec::new(), Vec::new(), Vec::new());
        let (mut fresh_bytes, mut prepared_bytes, mut n) = (0usize, 0usize, 0usize);
        for pair in pairs(class, interval) {
            for _ in 0..8 {
                let started = thread_cpu();
                let stream = encoder.encode(&pair.base, &pair.page).expect("encodes");
                fresh.push(thread_cpu().saturating_sub(started));
                fresh_bytes += stream.len();
            }
            let started = thread_cpu();
            let mut prepared = encoder.prepare(&pair.base).expect("prepares");
            let stream = encoder.encode_prepared(&mut prepared, &pair.page).expect("encodes");
            first.push(thread_cpu().saturating_sub(started));
            prepared_bytes += stream.len();
            for _ in 1..8 {
                let started = thread_cpu();
                let stream = encoder.encode_prepared(&mut prepared, &pair.page).expect("encodes");
                later.push(thread_cpu().saturating_sub(started));
                prepared_bytes += stream.len();
            }
            n += 8;
        }
        let us = |values: &[Duration], share: f64| percentile(values, share).as_secs_f64() * 1e6;
        println!(
            "| {class} | {interval} min | {:.0} / {:.0} B | {:.0} / {:.0} us | {:.0} / {:.0} us | {:.0} / {:.0} us |",
            fresh_bytes as f64 / n as f64,
            prepared_bytes as f64 / n as f64,
            us(&fresh, 0.5),
            us(&fresh, 0.99),
            us(&first, 0.5),
            us(&first, 0.99),
            us(&later, 0.5),
            us(&later, 0.99),
        );
    }
}

fn main() {
    if std::env::args().any(|arg| arg == "--prepared") {
        prepared();
    } else if std::env::args().any(|arg| arg == "--grid") {
        grid();
    } else {
        bounds();
    }
}
