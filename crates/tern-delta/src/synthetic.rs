//! Synthetic dynamic pages that evolve over simulated minutes, for tests, the derivation measurement
//! (`examples/derivation.rs`) and the lab: issue 12's workload of a ~100 KB news home page whose stories
//! rotate, personalised account pages (names, account numbers), and product pages of one template.
//! Deterministic: every page is a function of a seed, the minute and the user or product.

use std::fmt::Write;

/// SplitMix64: small, seeded, good enough to make text.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A generator from several numbers (a seed and what the value belongs to).
    pub fn from_parts(parts: &[u64]) -> Self {
        let mut rng = Rng(0x5eed);
        for part in parts {
            rng.0 ^= part.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            rng.next_u64();
        }
        rng
    }

    /// The next word.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (at least one).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// One of `items`.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const COMMON: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "new",
    "after",
    "over",
    "said",
    "year",
    "people",
    "government",
    "city",
    "report",
    "minister",
    "market",
    "police",
    "team",
    "season",
    "court",
    "plan",
    "week",
    "council",
    "company",
    "world",
];

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ter", "san", "vel", "dor", "qui", "ran", "bel", "stro", "nef", "pal", "ix", "or", "ul", "gen",
    "tal", "mor", "sev", "ard", "lin", "cra", "vo", "ent", "ast", "rem", "dus", "pho", "tri",
];

/// A pseudo-word (rare vocabulary: names, places, topics), stable for `n`.
fn rare_word(n: u64) -> String {
    let mut rng = Rng::from_parts(&[0x776f_7264, n]);
    let syllables = 2 + rng.below(2);
    (0..syllables).map(|_| rng.pick(SYLLABLES)).collect()
}

/// Rare words [`prose`] draws from.
const RARE_WORDS: u64 = 2000;

/// The information of one word of [`prose`], in bits: a rare word one time in five (one of
/// [`RARE_WORDS`]), else one of [`COMMON`].
fn prose_word_bits() -> f64 {
    let rare = 0.2 / RARE_WORDS as f64;
    let common = 0.8 / COMMON.len() as f64;
    -(0.2 * rare.log2() + 0.8 * common.log2())
}

/// `count` words of text-like prose: mostly common words, a few from a rare vocabulary.
fn prose(rng: &mut Rng, count: usize) -> String {
    let mut text = String::new();
    for i in 0..count {
        if i > 0 {
            text.push(' ');
        }
        if rng.below(5) == 0 {
            text.push_str(&rare_word(rng.below(RARE_WORDS)));
        } else {
            text.push_str(rng.pick(COMMON));
        }
    }
    text.push('.');
    text
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// Site chrome (inline style, script, navigation, footer) of about `kb` KB, from `seed` (a redesign is a
/// new seed) with class names starting with `prefix`.
fn chrome(seed: u64, prefix: &str, kb: usize) -> (String, String) {
    let mut rng = Rng::from_parts(&[seed, 0xc4]);
    let mut head = String::from("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    head.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>\n");
    let rules = kb * 6;
    for n in 0..rules {
        let _ = writeln!(
            head,
            ".{prefix}-{} {{ margin: {}px {}px; color: #{:06x}; font-size: {}px; }}",
            rare_word(n as u64 + seed * 7),
            rng.below(40),
            rng.below(40),
            rng.below(0xffffff),
            10 + rng.below(20)
        );
    }
    head.push_str("</style><script>\n");
    for n in 0..kb * 2 {
        let _ = writeln!(
            head,
            "function {prefix}_{}(el) {{ if (!el) return; el.classList.toggle('{}'); return el.dataset.{} || {}; }}",
            rare_word(n as u64 + 9000 + seed),
            rare_word(n as u64 + 500),
            rare_word(n as u64 + 700),
            rng.below(1000)
        );
    }
    head.push_str("</script></head><body>\n");
    let _ = write!(head, "<nav class=\"{prefix}-nav\"><ul>");
    for n in 0..kb * 2 {
        let section = rare_word(n as u64 + 3000);
        let _ = write!(head, "<li><a href=\"/{section}\">{}</a></li>", capitalised(&section));
    }
    head.push_str("</ul></nav>\n");
    let mut foot = format!("<footer class=\"{prefix}-footer\"><ul>");
    for n in 0..kb * 2 {
        let _ = write!(
            foot,
            "<li><a href=\"/about/{}\">{}</a></li>",
            rare_word(n as u64 + 4000),
            prose(&mut rng, 3)
        );
    }
    foot.push_str("</ul><p>Copyright and terms of use apply.</p></footer></body></html>\n");
    (head, foot)
}

/// A news home page: a story every three minutes (by default), the latest 60 on the page, comment counts and a ticker
/// that change every minute, a most-read box that changes every ten.
#[derive(Debug, Clone)]
pub struct News {
    seed: u64,
    redesign_at: Option<u64>,
    story_every: u64,
    summary_words: usize,
    on_page: u64,
}

impl News {
    /// A site from `seed`.
    pub fn new(seed: u64) -> Self {
        News {
            seed,
            redesign_at: None,
            story_every: 3,
            summary_words: 140,
            on_page: 60,
        }
    }

    /// The same site with summaries of `words` words (default 140) and the latest `stories` stories on the
    /// page (default 60, at least 1): `with_summary_words(25, 100)` is a home page of headlines and short
    /// teasers, as most news sites' are.
    pub fn with_summary_words(mut self, words: usize, stories: u64) -> Self {
        self.summary_words = words;
        self.on_page = stories.max(1);
        self
    }

    /// The same site with a new story every `minutes` (default 3, at least 1).
    pub fn with_story_every(mut self, minutes: u64) -> Self {
        self.story_every = minutes.max(1);
        self
    }

    /// The same site, redesigned for good (new chrome and markup) from `minute` on.
    pub fn with_redesign_at(mut self, minute: u64) -> Self {
        self.redesign_at = Some(minute);
        self
    }

    /// The information, in bits, of the random draws behind what the page at `to` shows and the page at
    /// `from` does not (`from` < `to`, no redesign between): each new story's title and summary (words
    /// drawn from 69 common words and a 2,000-word rare vocabulary), section and related links;
    /// the ticker's eight quotes when the minute changed; the most-read order when its ten minutes did.
    /// Comment counts and clocks are functions of the minute and cost nothing. No coder, even one that
    /// knows this generator's word lists and their odds, can send the change in fewer bits.
    pub fn new_information_bits(&self, from: u64, to: u64) -> f64 {
        let word = prose_word_bits();
        let new_stories = (to / self.story_every).saturating_sub(from / self.story_every) as f64;
        let per_story = (8.0 + self.summary_words as f64) * word + 30f64.log2() + 3.0 * 40f64.log2();
        let ticker = if to != from {
            8.0 * (5000f64 * 100.0).log2()
        } else {
            0.0
        };
        let most_read = if to / 10 != from / 10 {
            let shown = self.on_page as f64;
            (0..10).map(|n| (shown - f64::from(n)).max(1.0).log2()).sum()
        } else {
            0.0
        };
        new_stories * per_story + ticker + most_read
    }

    fn story_title(&self, story: u64) -> String {
        let mut rng = Rng::from_parts(&[self.seed, story, 1]);
        capitalised(&prose(&mut rng, 8))
    }

    /// The page at `minute`.
    pub fn page(&self, minute: u64) -> Vec<u8> {
        let redesigned = self.redesign_at.is_some_and(|at| minute >= at);
        let (prefix, chrome_seed) = if redesigned {
            ("nx", self.seed + 1)
        } else {
            ("site", self.seed)
        };
        let (head, foot) = chrome(chrome_seed, prefix, 40);
        let mut page = head;
        let _ = write!(
            page,
            "<header class=\"{prefix}-masthead\"><h1>The Daily Example</h1><p>Updated {:02}:{:02}</p><ul class=\"ticker\">",
            minute / 60 % 24,
            minute % 60
        );
        for index in ["DOW", "NASDAQ", "FTSE", "DAX", "CAC", "NIKKEI", "HSI", "ASX"] {
            let mut rng = Rng::from_parts(&[self.seed, minute, index.len() as u64, index.as_bytes()[0] as u64]);
            let _ = write!(
                page,
                "<li>{index} {}.{:02}</li>",
                10_000 + rng.below(5000),
                rng.below(100)
            );
        }
        page.push_str("</ul></header>\n<main>\n");
        let latest = minute / self.story_every;
        let first = latest.saturating_sub(self.on_page - 1);
        let mut most_read = Vec::new();
        for story in (first..=latest).rev() {
            let mut rng = Rng::from_parts(&[self.seed, story, 2]);
            let title = self.story_title(story);
            let section = rare_word(rng.below(30) + 3000);
            let summary = prose(&mut rng, self.summary_words);
            let mut related = String::new();
            for _ in 0..3 {
                let other = story.saturating_sub(1 + rng.below(40));
                let _ = write!(
                    related,
                    "<li><a href=\"/news/{other}\">{}</a></li>",
                    self.story_title(other)
                );
            }
            let published = story * self.story_every;
            let comments = (minute - published.min(minute)) * (1 + story % 7);
            if redesigned {
                let _ = writeln!(
                    page,
                    "<article class=\"nx-card\" data-story=\"{story}\"><div class=\"nx-kicker\">{section}</div>\
                     <h3 class=\"nx-title\"><a href=\"/news/{story}\">{title}</a></h3><figure><img loading=\"lazy\" \
                     src=\"https://img.example/{story}/wide.webp\"></figure><p class=\"nx-lede\">{summary}</p>\
                     <ul class=\"nx-more\">{related}</ul><footer><span>{comments} replies</span> <span>{:02}:{:02}</span></footer></article>",
                    published / 60 % 24,
                    published % 60
                );
            } else {
                let _ = writeln!(
                    page,
                    "<article class=\"story\" data-id=\"{story}\"><h2><a href=\"/news/{story}\">{title}</a></h2>\
                     <p class=\"summary\">{summary}</p><div class=\"meta\"><span class=\"section\">{section}</span>\
                     <time>{:02}:{:02}</time> <span class=\"comments\">{comments} comments</span></div>\
                     <ul class=\"related\">{related}</ul><img src=\"https://img.example/{story}.jpg\" alt=\"\"></article>",
                    published / 60 % 24,
                    published % 60
                );
            }
            let rank = Rng::from_parts(&[self.seed, story, minute / 10]).below(1000);
            most_read.push((rank, story));
        }
        most_read.sort();
        page.push_str("</main><aside class=\"most-read\"><ol>");
        for (_, story) in most_read.iter().take(10) {
            let _ = write!(
                page,
                "<li><a href=\"/news/{story}\">{}</a></li>",
                self.story_title(*story)
            );
        }
        page.push_str("</ol></aside>\n");
        page.push_str(&foot);
        page.into_bytes()
    }
}

/// A user of the account pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Full name.
    pub name: String,
    /// Account number (ten digits).
    pub account: String,
    /// Email address.
    pub email: String,
}

/// Account pages: an anonymous sign-in page for requests without credentials, and per-user pages (name,
/// account number, balance, transactions, a CSRF token) for signed-in users.
#[derive(Debug, Clone)]
pub struct Accounts {
    seed: u64,
}

impl Accounts {
    /// A bank from `seed`.
    pub fn new(seed: u64) -> Self {
        Accounts { seed }
    }

    /// User `n`.
    pub fn user(&self, n: u64) -> User {
        let mut rng = Rng::from_parts(&[self.seed, n, 3]);
        let first = capitalised(&rare_word(rng.below(500) + 6000));
        let last = capitalised(&rare_word(rng.below(500) + 7000));
        User {
            email: format!("{}.{}{}@mail.example", first.to_lowercase(), last.to_lowercase(), n),
            name: format!("{first} {last}"),
            account: format!("{:010}", rng.below(10_000_000_000)),
        }
    }

    /// The page at `minute` for `user` (`None`: the anonymous page).
    pub fn page(&self, user: Option<&User>, minute: u64) -> Vec<u8> {
        let (head, foot) = chrome(self.seed, "bank", 24);
        let mut page = head;
        let mut rng = Rng::from_parts(&[self.seed, 4]);
        page.push_str("<main class=\"bank-account\">\n");
        match user {
            None => {
                page.push_str(
                    "<section class=\"bank-signin\"><h1>Sign in to your account</h1><form method=\"post\" \
                     action=\"/login\"><label>Email <input name=\"email\" type=\"email\"></label><label>Password \
                     <input name=\"password\" type=\"password\"></label><button>Sign in</button></form></section>\n",
                );
                for _ in 0..10 {
                    let _ = writeln!(page, "<p class=\"bank-promo\">{}</p>", prose(&mut rng, 30));
                }
            }
            Some(user) => {
                let mut personal = Rng::from_parts(&[self.seed, minute / 30, user.account.len() as u64]);
                for byte in user.account.bytes() {
                    personal = Rng::from_parts(&[personal.next_u64(), byte as u64]);
                }
                let _ = write!(
                    page,
                    "<section class=\"bank-summary\"><h1>Welcome back, {}</h1><p>Account {} &middot; {}</p>\
                     <p class=\"balance\">Balance: {}.{:02} EUR</p><input type=\"hidden\" name=\"csrf\" \
                     value=\"{:016x}{:016x}\"></section>\n<table class=\"bank-transactions\">",
                    user.name,
                    user.account,
                    user.email,
                    personal.below(100_000),
                    personal.below(100),
                    personal.next_u64(),
                    personal.next_u64()
                );
                for _ in 0..20 {
                    let _ = write!(
                        page,
                        "<tr><td>2026-{:02}-{:02}</td><td>{}</td><td>{}.{:02}</td></tr>",
                        1 + personal.below(12),
                        1 + personal.below(28),
                        capitalised(&rare_word(personal.below(300) + 8000)),
                        personal.below(500),
                        personal.below(100)
                    );
                }
                page.push_str("</table>\n");
                for _ in 0..4 {
                    let _ = writeln!(page, "<p class=\"bank-promo\">{}</p>", prose(&mut rng, 30));
                }
            }
        }
        page.push_str("</main>\n");
        page.push_str(&foot);
        page.into_bytes()
    }
}

/// Product pages of one template: each product its own name, description, specifications and reviews;
/// price and stock change by the hour.
#[derive(Debug, Clone)]
pub struct Products {
    seed: u64,
}

impl Products {
    /// A shop from `seed`.
    pub fn new(seed: u64) -> Self {
        Products { seed }
    }

    /// The page of product `id` at `minute`.
    pub fn page(&self, id: u64, minute: u64) -> Vec<u8> {
        let (head, foot) = chrome(self.seed, "shop", 30);
        let mut page = head;
        let mut rng = Rng::from_parts(&[self.seed, id, 5]);
        let mut hourly = Rng::from_parts(&[self.seed, id, minute / 60]);
        let name = format!(
            "{} {}",
            capitalised(&rare_word(id % 400 + 9000)),
            capitalised(&rare_word(id % 37 + 9500))
        );
        let _ = write!(
            page,
            "<main class=\"shop-product\" data-sku=\"{id}\"><h1>{name}</h1><p class=\"price\">{}.{:02} EUR</p>\
             <p class=\"stock\">{} in stock</p><button class=\"shop-buy\">Add to basket</button>\
             <section class=\"shop-description\"><p>{}</p><p>{}</p></section><table class=\"shop-specs\">",
            10 + hourly.below(990),
            hourly.below(100),
            hourly.below(50),
            prose(&mut rng, 80),
            prose(&mut rng, 80)
        );
        for spec in [
            "Weight", "Width", "Height", "Depth", "Colour", "Material", "Warranty", "Origin",
        ] {
            let _ = write!(
                page,
                "<tr><th>{spec}</th><td>{}</td></tr>",
                rare_word(rng.below(200) + 9700)
            );
        }
        page.push_str("</table><section class=\"shop-reviews\"><h2>Reviews</h2>");
        for _ in 0..8 {
            let _ = write!(
                page,
                "<article class=\"shop-review\"><h3>{} stars</h3><p>{}</p><p class=\"by\">{}</p></article>",
                1 + rng.below(5),
                prose(&mut rng, 45),
                capitalised(&rare_word(rng.below(500) + 6000))
            );
        }
        page.push_str("</section><section class=\"shop-related\"><h2>Related</h2><ul>");
        for _ in 0..6 {
            let other = rng.below(400);
            let _ = write!(
                page,
                "<li><a href=\"/product/{other}\">{}</a></li>",
                capitalised(&rare_word(other + 9000))
            );
        }
        page.push_str("</ul></section></main>\n");
        page.push_str(&foot);
        page.into_bytes()
    }
}

/// A listing page of many rows of one shape (a price list): each minute about one row in a hundred
/// changes its price or stock. Many similar lines are the case zstd's fast match finders handle worst.
#[derive(Debug, Clone)]
pub struct Prices {
    seed: u64,
    rows: u64,
}

impl Prices {
    /// A list of `rows` items from `seed`.
    pub fn new(seed: u64, rows: u64) -> Self {
        Prices { seed, rows }
    }

    /// The page at `minute`.
    pub fn page(&self, minute: u64) -> Vec<u8> {
        let (head, foot) = chrome(self.seed, "list", 10);
        let mut page = head;
        page.push_str("<table class=\"list-prices\"><tr><th>Item</th><th>Name</th><th>Price</th><th>Stock</th></tr>\n");
        for row in 0..self.rows {
            // The row's price changes at minutes where its own clock ticks: about 1% of rows a minute.
            let version = (minute + Rng::from_parts(&[self.seed, row]).below(100)) / 100;
            let mut rng = Rng::from_parts(&[self.seed, row, version]);
            let _ = writeln!(
                page,
                "<tr class=\"list-row\"><td>ITEM-{row:05}</td><td>{}</td><td>{}.{:02}</td><td>{}</td></tr>",
                capitalised(&rare_word(row % 700 + 9000)),
                1 + rng.below(500),
                rng.below(100),
                if rng.below(4) == 0 { "out of stock" } else { "in stock" }
            );
        }
        page.push_str("</table>\n");
        page.push_str(&foot);
        page.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_deterministic_and_sized_like_the_issue_says() {
        let news = News::new(1);
        assert_eq!(news.page(100), news.page(100));
        assert_ne!(news.page(100), news.page(101));
        let len = news.page(100).len();
        assert!((80_000..130_000).contains(&len), "news page of {len} bytes");
        let accounts = Accounts::new(2);
        let alice = accounts.user(1);
        let page = String::from_utf8(accounts.page(Some(&alice), 10)).expect("utf-8");
        assert!(page.contains(&alice.name) && page.contains(&alice.account));
        let anonymous = String::from_utf8(accounts.page(None, 10)).expect("utf-8");
        assert!(!anonymous.contains(&alice.account));
        assert_ne!(accounts.user(1), accounts.user(2));
        let products = Products::new(3);
        assert_ne!(products.page(1, 0), products.page(2, 0));
        assert!(products.page(1, 0).len() > 25_000);
    }

    #[test]
    fn a_redesign_changes_the_markup_for_good() {
        let news = News::new(1).with_redesign_at(60);
        let before = String::from_utf8(news.page(59)).expect("utf-8");
        let after = String::from_utf8(news.page(61)).expect("utf-8");
        assert!(before.contains("class=\"story\"") && !after.contains("class=\"story\""));
        assert!(after.contains("nx-card"));
    }
}
