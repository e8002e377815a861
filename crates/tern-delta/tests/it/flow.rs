//! The origin side and an edge, each with its own base store, joined by a counted "long link": pages must
//! come out byte-identical, bases must never hold personal data, drift must bring a new base, and a lost
//! base must cost one full page.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, StatusCode};
use tern_delta::dcz;
use tern_delta::synthetic::{Accounts, News, User};
use tern_delta::{
    Base, BaseStore, Class, ClassPolicy, Classes, Decision, Decoder, Encoded, Encoder, EncoderConfig, Exchange,
    Fallback, Limits, RederiveRule, ReprDigest, StoreConfig,
};

struct Origin {
    classes: Classes,
    encoders: HashMap<String, Encoder>,
    store: BaseStore,
}

struct Edge {
    store: BaseStore,
    decoder: Decoder,
}

/// Bytes that crossed the link, by kind.
#[derive(Default, Debug)]
struct Link {
    raw: u64,
    deltas: u64,
    full_pages: u64,
    bases: u64,
}

impl Origin {
    fn new(classes: Vec<Class>) -> Self {
        let encoders = classes
            .iter()
            .map(|class| {
                (
                    class.name.clone(),
                    Encoder::new(class.clone(), EncoderConfig::default()),
                )
            })
            .collect();
        Origin {
            classes: Classes::new(classes),
            encoders,
            store: BaseStore::new(StoreConfig::default()),
        }
    }
}

impl Edge {
    fn new() -> Self {
        Edge {
            store: BaseStore::new(StoreConfig::default()),
            decoder: Decoder::new(Limits::default()),
        }
    }
}

/// One request through edge → origin side → edge; returns the page the client gets and how it came.
fn request(
    origin: &mut Origin,
    edge: &mut Edge,
    link: &mut Link,
    path: &str,
    cookie: Option<&str>,
    page: &[u8],
    now: Instant,
) -> (Vec<u8>, Option<Fallback>) {
    let class = origin.classes.find(path).expect("a class").name.clone();
    let named = edge.store.current(&class).map(Base::id);
    let mut request = HeaderMap::new();
    if let Some(cookie) = cookie {
        request.insert("cookie", HeaderValue::from_str(cookie).expect("ascii"));
    }
    let response = HeaderMap::new();
    let encoder = origin.encoders.get_mut(&class).expect("encoder");
    let _ = encoder.offer(&Exchange {
        target: "/news/home",
        request: &request,
        status: StatusCode::OK,
        response: &response,
        body: page,
    });
    let encoded = encoder.encode(page, named, &mut origin.store, now);
    encoder.rederive(&mut origin.store, now).expect("rederive");
    link.raw += page.len() as u64;
    let (served, fallback) = match encoded {
        Encoded::Delta { body, digest, .. } => {
            link.deltas += body.len() as u64;
            match edge.decoder.decode_with(&body, &mut edge.store, Some(&digest), now) {
                Ok(page) => (page, None),
                Err(error) => panic!("a delta the edge could not use: {error}"),
            }
        }
        Encoded::Full { reason, digest } => {
            link.full_pages += page.len() as u64;
            edge.decoder.verify_full(page, Some(&digest)).expect("digest");
            (page.to_vec(), Some(reason))
        }
    };
    // The origin side announces its current base; an edge that lacks it fetches it (counted) before its
    // next request, as a delta against the base it holds when it holds one.
    if let Some(current) = origin.store.current(&class).cloned()
        && edge.store.current(&class).map(Base::id) != Some(current.id())
    {
        let bytes = match edge.store.current(&class) {
            Some(old) => {
                let body = dcz::encode(old, current.bytes(), 3).expect("encodes");
                link.bases += body.len() as u64;
                edge.decoder
                    .decode(&body, old, Some(&ReprDigest::of(current.bytes())))
                    .expect("decodes")
            }
            None => {
                link.bases += current.len() as u64;
                current.bytes().to_vec()
            }
        };
        let fetched = Base::verified(&class, bytes, current.id(), 1 << 24).expect("verified");
        edge.store.insert_current(fetched, now).expect("fits");
    }
    (served, fallback)
}

fn news_class(rule: RederiveRule) -> Class {
    let policy = ClassPolicy {
        rederive: rule,
        ..ClassPolicy::default()
    };
    Class::parse("news=/news/*")
        .expect("valid")
        .with_policy(policy)
        .expect("valid")
}

#[test]
fn two_hundred_versions_of_a_changing_page_are_exact_and_small() {
    let start = Instant::now();
    let news = News::new(1);
    let mut origin = Origin::new(vec![news_class(RederiveRule::default())]);
    let mut edge = Edge::new();
    let mut link = Link::default();
    let mut fallbacks = Vec::new();
    for version in 0..200u64 {
        // A request every 30 seconds: 100 minutes of a page whose stories change every 3 minutes.
        let now = start + Duration::from_secs(30 * version);
        let page = news.page(300 + version / 2);
        let (served, fallback) = request(&mut origin, &mut edge, &mut link, "/news/", None, &page, now);
        assert!(served == page, "version {version} differs");
        fallbacks.extend(fallback.map(|reason| (version, reason)));
    }
    println!("{link:?}");
    println!(
        "deltas: {:.2}% of raw; with full pages and bases: {:.2}%",
        100.0 * link.deltas as f64 / link.raw as f64,
        100.0 * (link.deltas + link.full_pages + link.bases) as f64 / link.raw as f64
    );
    // Only the very first request lacks a base: new bases reach the edge before they are used.
    assert_eq!(fallbacks, vec![(0, Fallback::NoBaseNamed)]);
    assert!(
        link.deltas * 50 < link.raw,
        "deltas {} of raw {}",
        link.deltas,
        link.raw
    );
    let counters = origin.encoders["news"].counters();
    assert_eq!(counters.pages, 200);
    assert_eq!(counters.pages_encoded, 199);
    // Base pushes went as deltas too (the decoder counts those).
    assert!(edge.decoder.counters().pages_decoded >= 199);
    assert_eq!(edge.decoder.counters().digest_mismatches(), 0);
}

#[test]
fn personal_data_never_reaches_a_base_or_another_user() {
    let start = Instant::now();
    let accounts = Accounts::new(5);
    let class = Class::parse("account=/account").expect("valid");
    let mut origin = Origin::new(vec![class]);
    let mut edge = Edge::new();
    let mut link = Link::default();
    let users: Vec<User> = (1..=2).map(|n| accounts.user(n)).collect();
    for minute in 0..60u64 {
        let now = start + Duration::from_secs(60 * minute);
        // Anonymous visitors and both users, interleaved.
        let anonymous = accounts.page(None, minute);
        let (served, _) = request(&mut origin, &mut edge, &mut link, "/account", None, &anonymous, now);
        assert!(served == anonymous);
        for (n, user) in users.iter().enumerate() {
            let page = accounts.page(Some(user), minute);
            let cookie = format!("sid=user{n}");
            let (served, _) = request(&mut origin, &mut edge, &mut link, "/account", Some(&cookie), &page, now);
            assert!(served == page, "user {n} got another page at minute {minute}");
            let text = String::from_utf8_lossy(&served);
            let other = &users[1 - n];
            assert!(!text.contains(&other.name) && !text.contains(&other.account));
        }
    }
    for store in [&origin.store, &edge.store] {
        assert!(!store.is_empty());
        for id in store.ids() {
            let base = String::from_utf8_lossy(store.get(id).expect("held").bytes()).to_string();
            for user in &users {
                assert!(!base.contains(&user.name), "a base holds {}", user.name);
                assert!(!base.contains(&user.account), "a base holds {}", user.account);
                assert!(!base.contains(&user.email));
            }
        }
    }
    let counters = origin.encoders["account"].counters();
    assert_eq!(counters.refused.get(tern_delta::NotCandidate::Cookie), 120);
    assert!(counters.pages_encoded >= 170, "{counters:?}");
}

#[test]
fn a_redesign_brings_a_new_base_without_a_wrong_page() {
    let start = Instant::now();
    let rule = RederiveRule {
        ratio: 0.05,
        window: 8,
        min_interval: Duration::from_secs(120),
    };
    let news = News::new(2).with_redesign_at(260).with_story_every(30);
    let mut origin = Origin::new(vec![news_class(rule.clone())]);
    let mut edge = Edge::new();
    let mut link = Link::default();
    let mut changes_after_redesign = None;
    for minute in 0..120u64 {
        let now = start + Duration::from_secs(60 * minute);
        let page = news.page(200 + minute);
        let (served, fallback) = request(&mut origin, &mut edge, &mut link, "/news/", None, &page, now);
        assert!(served == page, "minute {minute}");
        assert!(minute == 0 || fallback.is_none(), "minute {minute}: {fallback:?}");
        let changes = origin.encoders["news"].counters().base_changes;
        if minute == 59 {
            changes_after_redesign = Some(changes);
        }
    }
    let encoder = &origin.encoders["news"];
    assert!(encoder.counters().base_changes > changes_after_redesign.expect("set"));
    let ratio = encoder.recent_ratio(&origin.store).expect("ratios");
    assert!(ratio < rule.ratio, "ratio {ratio} after the redesign");
    assert!(matches!(
        encoder.decision(&origin.store, start + Duration::from_secs(7200)),
        Decision::Keep
    ));
}

#[test]
fn a_lost_base_costs_one_full_page() {
    let start = Instant::now();
    let news = News::new(3);
    let mut origin = Origin::new(vec![news_class(RederiveRule::default())]);
    let mut edge = Edge::new();
    let mut link = Link::default();
    let mut step = 0u64;
    let mut next = |origin: &mut Origin, edge: &mut Edge| {
        step += 1;
        let now = start + Duration::from_secs(10 * step);
        let page = news.page(300 + step / 6);
        let (served, fallback) = request(origin, edge, &mut link, "/news/", None, &page, now);
        assert!(served == page);
        fallback
    };
    assert_eq!(next(&mut origin, &mut edge), Some(Fallback::NoBaseNamed));
    assert_eq!(next(&mut origin, &mut edge), None);

    // The edge restarts with an empty store.
    edge = Edge::new();
    assert_eq!(next(&mut origin, &mut edge), Some(Fallback::NoBaseNamed));
    assert_eq!(next(&mut origin, &mut edge), None);

    // The origin side loses the base the edge names (evicted).
    let named = edge.store.current("news").map(Base::id).expect("held");
    assert!(origin.store.remove(&named));
    assert_eq!(next(&mut origin, &mut edge), Some(Fallback::UnknownBase));
    assert_eq!(next(&mut origin, &mut edge), None);
}

#[test]
fn a_delta_that_does_not_match_its_digest_is_never_served() {
    let now = Instant::now();
    let news = News::new(4);
    let mut store = BaseStore::new(StoreConfig::default());
    let base = Base::new("news", news.page(0), 1 << 24).expect("valid");
    store.insert_current(base.clone(), now).expect("fits");
    let mut encoder = Encoder::new(news_class(RederiveRule::default()), EncoderConfig::default());
    let page = news.page(5);
    let Encoded::Delta { body, .. } = encoder.encode(&page, Some(base.id()), &mut store, now) else {
        panic!("expected a delta");
    };
    let mut decoder = Decoder::new(Limits::default());
    let wrong_digest = tern_delta::ReprDigest::of(&news.page(6));
    assert!(decoder.decode(&body, &base, Some(&wrong_digest)).is_err());
    assert_eq!(decoder.counters().digest_mismatches(), 1);
    assert_eq!(decoder.counters().pages_decoded, 0);
}
