//! Cache directives (RFC 9111 section 5.2) from `Cache-Control` or a targeted field such as
//! `CDN-Cache-Control` (RFC 9213).

use http::HeaderValue;

use crate::structured;

/// Largest delta-seconds value kept (2^31, about 68 years); RFC 9111 section 1.2.2 says a larger value
/// means this one, so every duration taken from a header fits any arithmetic done with it.
pub const DELTA_SECONDS_CAP: u64 = 2_147_483_648;

/// The directives a cache acts on, from a request or a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    /// `max-age=N`.
    pub max_age: Option<u64>,
    /// `s-maxage=N` (shared caches only).
    pub s_maxage: Option<u64>,
    /// `no-store`.
    pub no_store: bool,
    /// Unqualified `no-cache`: every use needs validation.
    pub no_cache: bool,
    /// `no-cache="field, ..."` (lowercased names): the response may be reused without validation only
    /// without these fields (RFC 9111 section 5.2.2.4).
    pub no_cache_fields: Vec<String>,
    /// Unqualified `private`: a shared cache must not store the response.
    pub private: bool,
    /// `private="field, ..."` (lowercased names): a shared cache may store the response without these
    /// fields (RFC 9111 section 5.2.2.7).
    pub private_fields: Vec<String>,
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
        let seconds = || argument.map(delta_seconds).unwrap_or(Some(0)).unwrap_or(0);
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
                    Some(text) => delta_seconds(text).unwrap_or(0),
                };
                self.max_stale.get_or_insert(limit);
            }
            "no-store" => self.no_store = true,
            "no-cache" => match field_names(argument) {
                Some(fields) => self.no_cache_fields.extend(fields),
                None => self.no_cache = true,
            },
            "private" => match field_names(argument) {
                Some(fields) => self.private_fields.extend(fields),
                None => self.private = true,
            },
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

/// Parses delta-seconds (RFC 9111 section 1.2.2): one or more ASCII digits, nothing else (no sign, no
/// space, no fraction). A value beyond [`DELTA_SECONDS_CAP`] is read as the cap, never wrapped or
/// dropped. `None` for anything that is not delta-seconds; what that means is the caller's rule.
pub fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(DELTA_SECONDS_CAP).min(DELTA_SECONDS_CAP))
}

/// The field names of a qualified `no-cache` or `private`; `None` when unqualified (or qualified with
/// nothing, which means the same).
fn field_names(argument: Option<&str>) -> Option<Vec<String>> {
    let names: Vec<String> = argument?
        .split(',')
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    if names.is_empty() { None } else { Some(names) }
}

impl Directives {
    /// Whether a qualified `no-cache` or `private` names `field` (lowercase): the cache may keep the
    /// response, but never serves that field from storage.
    pub fn withholds(&self, field: &str) -> bool {
        self.no_cache_fields
            .iter()
            .chain(&self.private_fields)
            .any(|name| name == field)
    }

    /// Parses a targeted cache-control field (RFC 9213 section 2.1): an RFC 8941 Dictionary whose
    /// members have the types the directives need. `None` when the field is not a valid Dictionary or a
    /// member has the wrong type; the cache then ignores the field and uses `Cache-Control` (RFC 9213
    /// section 2.2).
    pub fn parse_targeted<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Option<Self> {
        let mut text = String::new();
        for value in values {
            if !text.is_empty() {
                text.push_str(", ");
            }
            text.push_str(value.to_str().ok()?);
        }
        let mut directives = Directives::default();
        for (key, value) in structured::dictionary(&text)? {
            match (key, value) {
                (
                    "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error",
                    structured::Item::Integer(n),
                ) => {
                    // A negative integer is a valid Integer but not a valid age: the field is invalid.
                    let seconds = u64::try_from(n).ok()?.min(DELTA_SECONDS_CAP);
                    let slot = match key {
                        "max-age" => &mut directives.max_age,
                        "s-maxage" => &mut directives.s_maxage,
                        "stale-while-revalidate" => &mut directives.stale_while_revalidate,
                        _ => &mut directives.stale_if_error,
                    };
                    // Dictionary semantics: the last member of a key wins (RFC 8941 section 3.2).
                    *slot = Some(seconds);
                }
                ("max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error", _) => return None,
                (name, structured::Item::Boolean(flag)) => {
                    let slot = match name {
                        "no-store" => &mut directives.no_store,
                        "no-cache" => &mut directives.no_cache,
                        "private" => &mut directives.private,
                        "public" => &mut directives.public,
                        "must-revalidate" => &mut directives.must_revalidate,
                        "proxy-revalidate" => &mut directives.proxy_revalidate,
                        "must-understand" => &mut directives.must_understand,
                        "immutable" => &mut directives.immutable,
                        _ => continue,
                    };
                    *slot = flag;
                }
                ("no-cache" | "private", structured::Item::InnerList(names)) => {
                    let fields = names.into_iter().map(|n| n.to_ascii_lowercase());
                    if key == "no-cache" {
                        directives.no_cache_fields.extend(fields);
                    } else {
                        directives.private_fields.extend(fields);
                    }
                }
                (
                    "no-store" | "no-cache" | "private" | "public" | "must-revalidate" | "proxy-revalidate"
                    | "must-understand" | "immutable",
                    _,
                ) => return None,
                // Unknown members are ignored, whatever their type.
                _ => {}
            }
        }
        directives.present = true;
        Some(directives)
    }
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
        let d = parse("No-Cache=\"set-cookie, X-A\", PRIVATE");
        assert!(!d.no_cache, "qualified no-cache withholds fields, not the response");
        assert_eq!(d.no_cache_fields, vec!["set-cookie", "x-a"]);
        assert!(d.withholds("x-a"));
        assert!(d.private);
        let d = parse("private=\"Set-Cookie\", max-age=60");
        assert!(!d.private);
        assert!(d.withholds("set-cookie"));
    }

    fn targeted(text: &str) -> Option<Directives> {
        Directives::parse_targeted([&HeaderValue::from_str(text).expect("value")])
    }

    #[test]
    fn targeted_fields_are_structured_dictionaries() {
        let d = targeted("max-age=60, must-revalidate, no-cache=(\"set-cookie\")").expect("valid");
        assert_eq!(d.max_age, Some(60));
        assert!(d.must_revalidate);
        assert!(d.withholds("set-cookie"));
        assert_eq!(
            targeted("max-age=99999999999").and_then(|d| d.max_age),
            Some(DELTA_SECONDS_CAP)
        );
        assert!(
            targeted("max-age=\"60\"").is_none(),
            "a String where an Integer belongs"
        );
        assert!(targeted("max-age=6.5").is_none(), "a Decimal where an Integer belongs");
        assert!(targeted("max-age=-1").is_none());
        assert!(targeted("no-store=1").is_none(), "an Integer where a Boolean belongs");
        assert!(targeted("Max-Age=60").is_none(), "keys are lowercase");
        assert!(targeted("max-age=60,").is_none(), "trailing comma");
        assert!(targeted("max-age=1234567890123456").is_none(), "more than 15 digits");
        assert_eq!(targeted("max-age=5;foo=bar, x=?0").and_then(|d| d.max_age), Some(5));
        assert!(targeted("no-store=?0").is_some_and(|d| !d.no_store));
    }

    #[test]
    fn max_stale_without_value_is_unbounded() {
        assert_eq!(parse("max-stale").max_stale, Some(u64::MAX));
        assert_eq!(parse("max-stale=5").max_stale, Some(5));
    }
}
