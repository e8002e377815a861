//! Cache directives (RFC 9111 section 5.2) from `Cache-Control` or a targeted field such as
//! `CDN-Cache-Control` (RFC 9213).

use http::HeaderValue;

/// Largest delta-seconds value kept; RFC 9111 section 1.2.2 says larger values mean this one.
const DELTA_SECONDS_CAP: u64 = 2_147_483_648;

/// The directives a cache acts on, from a request or a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `max-age=N`.
    pub max_age: Option<u64>,
    /// `s-maxage=N` (shared caches only).
    pub s_maxage: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (with or without field names: both make every use need validation here).
    pub no_cache: bool,
    /// `private` (a shared cache must not store the response).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `must-understand`.
    pub must_understand: bool,
    /// `immutable` (RFC 8246).
    pub immutable: bool,
    /// `stale-while-revalidate=N` (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error=N` (RFC 5861), in a response or a request.
    pub stale_if_error: Option<u64>,
    /// Request `max-stale[=N]`: `Some(u64::MAX)` when given without a value.
    pub max_stale: Option<u64>,
    /// Request `min-fresh=N`.
    pub min_fresh: Option<u64>,
    /// Request `only-if-cached`.
    pub only_if_cached: bool,
    /// Whether any directive at all was present and understood.
    pub present: bool,
}

impl Directives {
    /// Parses all field lines of a directive field. A directive given twice keeps its first value; a
    /// freshness directive whose value is not a number counts as zero, so the response is stale rather
    /// than fresh for longer than the origin meant (RFC 9111 section 4.2.1).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Self {
        let mut directives = Directives::default();
        for value in values {
            let Ok(text) = value.to_str() else {
                continue;
            };
            for item in tern_http::list::split(text) {
                directives.apply(item);
            }
        }
        directives
    }

    fn apply(&mut self, item: &str) {
        let (name, argument) = match item.split_once('=') {
            Some((name, argument)) => (name.trim(), Some(unquote(argument.trim()))),
            None => (item.trim(), None),
        };
        if name.is_empty() {
            return;
        }
        let name = name.to_ascii_lowercase();
        self.present = true;
        let seconds = || argument.map(parse_delta).unwrap_or(Some(0)).unwrap_or(0);
        match name.as_str() {
            "max-age" => {
                self.max_age.get_or_insert_with(seconds);
            }
            "s-maxage" => {
                self.s_maxage.get_or_insert_with(seconds);
            }
            "stale-while-revalidate" => {
                self.stale_while_revalidate.get_or_insert_with(seconds);
            }
            "stale-if-error" => {
                self.stale_if_error.get_or_insert_with(seconds);
            }
            "min-fresh" => {
                self.min_fresh.get_or_insert_with(seconds);
            }
            "max-stale" => {
                let limit = match argument {
                    None => u64::MAX,
                    Some(text) => parse_delta(text).unwrap_or(0),
                };
                self.max_stale.get_or_insert(limit);
            }
            "no-store" => self.no_store = true,
            "no-cache" => self.no_cache = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "immutable" => self.immutable = true,
            "only-if-cached" => self.only_if_cached = true,
            _ => {}
        }
    }
}

fn parse_delta(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(DELTA_SECONDS_CAP).min(DELTA_SECONDS_CAP))
}

fn unquote(text: &str) -> &str {
    text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Directives {
        Directives::parse([&HeaderValue::from_str(text).expect("value")])
    }

    #[test]
    fn common_forms() {
        let d = parse("public, max-age=60, s-maxage=\"120\", stale-while-revalidate=30");
        assert!(d.public);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(120));
        assert_eq!(d.stale_while_revalidate, Some(30));
    }

    #[test]
    fn first_value_wins_and_invalid_is_zero() {
        assert_eq!(parse("max-age=10, max-age=99").max_age, Some(10));
        assert_eq!(parse("max-age=ten").max_age, Some(0));
        assert_eq!(parse("max-age=-1").max_age, Some(0));
        assert_eq!(parse("max-age=99999999999999999999").max_age, Some(DELTA_SECONDS_CAP));
    }

    #[test]
    fn no_cache_with_fields_and_case() {
        let d = parse("No-Cache=\"set-cookie, x-a\", PRIVATE");
        assert!(d.no_cache);
        assert!(d.private);
    }

    #[test]
    fn max_stale_without_value_is_unbounded() {
        assert_eq!(parse("max-stale").max_stale, Some(u64::MAX));
        assert_eq!(parse("max-stale=5").max_stale, Some(5));
    }
}
