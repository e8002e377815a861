//! Cache keys: the primary key (scheme, host, path, query) under which every variant of a URL is found, the
//! secondary key a response's `Vary` selects (RFC 9111 section 4.1), and the object id naming one stored
//! variant (also its file name on disk).

use std::fmt;

use http::{HeaderMap, HeaderName};

/// How request URLs map to primary keys.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// Whether the query string is part of the key.
    pub include_query: bool,
}

impl Default for KeyConfig {
    fn default() -> Self {
        KeyConfig { include_query: true }
    }
}

/// Builds the primary key `scheme://host/path?query` in normal form (RFC 3986 section 6.2.2): host
/// lowercased, default port dropped, the trailing dot of a fully qualified name dropped (`example.com.`
/// is `example.com`, RFC 1034 section 3.1), percent-encodings upper-cased and unreserved characters decoded
/// ([`tern_http::target::normalize`]), so every equivalent spelling of a URL names one object.
pub fn primary_key(scheme: &str, host: &str, path_and_query: &str, config: &KeyConfig) -> String {
    let host = host.trim();
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => "",
    };
    let host = match host.len().checked_sub(default_port.len()) {
        Some(cut)
            if !default_port.is_empty()
                && host.is_char_boundary(cut)
                && host[cut..].eq_ignore_ascii_case(default_port) =>
        {
            &host[..cut]
        }
        _ => host,
    };
    let host = tern_http::target::without_trailing_dot(host);
    let path = if config.include_query {
        path_and_query
    } else {
        path_and_query.split('?').next().unwrap_or("/")
    };
    let path = if path.is_empty() { "/" } else { path };
    let path = tern_http::target::normalize(path);
    // One allocation: scheme, lowercased host and path written into a string of the right size.
    let mut key = String::with_capacity(scheme.len() + 3 + host.len() + path.len());
    key.push_str(scheme);
    key.push_str("://");
    key.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    key.push_str(&path);
    key
}

/// The request field values a stored response was selected by: `(lowercased name, normalized value)` for
/// each field named in its `Vary`, in order.
pub type VaryValues = Vec<(String, String)>;

/// Collects the request values for the fields a response's `Vary` names.
pub fn vary_values(response: &HeaderMap, request: &HeaderMap) -> VaryValues {
    let mut names: Vec<String> = response
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let value = HeaderName::from_bytes(name.as_bytes())
                .map(|header| normalized_value(request, &header))
                .unwrap_or_default();
            (name, value)
        })
        .collect()
}

/// Whether a request selects a stored response with these vary values.
pub fn vary_matches(stored: &VaryValues, request: &HeaderMap) -> bool {
    stored
        .iter()
        .all(|(name, value)| match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => normalized_value(request, &header) == *value,
            Err(_) => false,
        })
}

/// The variant `request` selects among responses that vary on the fields of `stored`: the request's
/// normalised value of each, in `stored`'s (sorted) order, as one string. Two requests with the same
/// string select the same variant (RFC 9111 section 4.1).
pub fn variant_of(stored: &VaryValues, request: &HeaderMap) -> String {
    let mut variant = String::new();
    for (name, _) in stored {
        if let Ok(header) = HeaderName::from_bytes(name.as_bytes()) {
            variant.push_str(name);
            variant.push('=');
            variant.push_str(&normalized_value(request, &header));
            variant.push('\n');
        }
    }
    variant
}

/// Combines all field lines and folds whitespace around list separators, so that `gzip,br` and
/// `gzip, br` select the same variant (RFC 9111 section 4.1 allows normalizing this way). For the
/// content-negotiation fields whose members are case-insensitive and ranked by weight rather than by
/// order (`Accept-Encoding`, RFC 9110 section 12.5.3; `Accept-Language`, section 12.5.4), case and order
/// are folded too: `br, gzip` and `GZIP,br` are one variant.
fn normalized_value(request: &HeaderMap, name: &HeaderName) -> String {
    let unordered = name == http::header::ACCEPT_ENCODING || name == http::header::ACCEPT_LANGUAGE;
    let mut members: Vec<String> = request
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|member| {
            if unordered {
                member
                    .split(';')
                    .map(|piece| piece.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(";")
            } else {
                member.to_string()
            }
        })
        .collect();
    if unordered {
        members.sort();
        members.dedup();
    }
    members.join(",")
}

/// Hashes [`ObjectId`]s for the store's indexes. An id is already a blake3 digest, so SipHash over its 32
/// bytes (the default) is work for nothing; its words are folded with a multiply instead, keyed with a
/// seed drawn per process so that nobody can aim ids at one bucket.
#[derive(Debug, Clone, Copy)]
pub struct IdHashing {
    seed: u64,
}

impl Default for IdHashing {
    fn default() -> Self {
        use std::hash::BuildHasher as _;
        IdHashing {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x7465_726e_u64),
        }
    }
}

impl std::hash::BuildHasher for IdHashing {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            seed: self.seed,
            state: self.seed,
        }
    }
}

/// The hasher of [`IdHashing`].
#[derive(Debug, Clone, Copy)]
pub struct IdHasher {
    seed: u64,
    state: u64,
}

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state = folded_multiply(self.state ^ u64::from_le_bytes(word), self.seed ^ 0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.state = folded_multiply(self.state ^ value as u64, self.seed ^ 0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

/// The 128-bit product of `a` and `b`, its halves xored: every bit of the result depends on every bit of
/// both (as in foldhash).
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

/// Names one stored variant: blake3 of the primary key and the vary values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The id of the variant of `primary` selected by `vary`.
    pub fn new(primary: &str, vary: &VaryValues) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(primary.as_bytes());
        for (name, value) in vary {
            hasher.update(b"\0");
            hasher.update(name.as_bytes());
            hasher.update(b"=");
            hasher.update(value.as_bytes());
        }
        ObjectId(*hasher.finalize().as_bytes())
    }

    /// Lowercase hex, as used for file names.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex form.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(ObjectId(bytes))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn requests_that_select_one_variant_name_it_alike() {
        let mut response = HeaderMap::new();
        response.insert(http::header::VARY, HeaderValue::from_static("Accept-Language, Cookie"));
        let request = |language: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::ACCEPT_LANGUAGE, HeaderValue::from_static(language));
            headers
        };
        let stored = vary_values(&response, &request("en"));
        assert_eq!(
            variant_of(&stored, &request("de, fr")),
            variant_of(&stored, &request("FR,de")),
            "order and case of Accept-Language do not make another variant"
        );
        assert_ne!(variant_of(&stored, &request("de")), variant_of(&stored, &request("fr")));
        assert!(vary_matches(&stored, &request("en")));
    }

    #[test]
    fn id_hashing_uses_every_byte_and_its_seed() {
        use std::hash::BuildHasher as _;
        let hashing = IdHashing::default();
        let id = ObjectId([7; 32]);
        let mut last_changed = id;
        last_changed.0[31] = 8;
        assert_eq!(hashing.hash_one(id), hashing.hash_one(id));
        assert_ne!(hashing.hash_one(id), hashing.hash_one(last_changed));
        assert_ne!(
            hashing.hash_one(id),
            IdHashing::default().hash_one(id),
            "another seed, another hash"
        );
    }

    #[test]
    fn a_fully_qualified_host_name_is_the_same_host() {
        let config = KeyConfig::default();
        let key = |host: &str| primary_key("http", host, "/a", &config);
        for spelling in [
            "www.example.com.",
            "WWW.Example.COM.",
            "www.example.com.:80",
            "www.example.com:80",
        ] {
            assert_eq!(key(spelling), "http://www.example.com/a", "{spelling}");
        }
        assert_eq!(key("www.example.com.:8080"), "http://www.example.com:8080/a");
        assert_eq!(key("[::1]:8080"), "http://[::1]:8080/a");
        assert_eq!(key("[::1]"), "http://[::1]/a");
        assert_eq!(key("."), "http://./a", "nothing but a dot stays as it is");
    }

    #[test]
    fn primary_key_forms() {
        let config = KeyConfig::default();
        assert_eq!(
            primary_key("http", "Example.COM:80", "/a?b=1", &config),
            "http://example.com/a?b=1"
        );
        assert_eq!(
            primary_key("http", "example.com:8080", "", &config),
            "http://example.com:8080/"
        );
        assert_eq!(
            primary_key("http", "h", "/%7ex.html?a=%2f", &config),
            primary_key("http", "H:80", "/~x.html?a=%2F", &config),
        );
        assert_ne!(
            primary_key("http", "h", "/a+b", &config),
            primary_key("http", "h", "/a%2Bb", &config),
            "RFC 3986 does not make them equal; the sync side purges both"
        );
        let no_query = KeyConfig { include_query: false };
        assert_eq!(primary_key("http", "h", "/a?b=1", &no_query), "http://h/a");
    }

    #[test]
    fn vary_selects_variants() {
        let mut response = HeaderMap::new();
        response.insert(
            http::header::VARY,
            HeaderValue::from_static("Accept-Encoding, accept-language"),
        );
        let mut gzip = HeaderMap::new();
        gzip.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_static("gzip,br"));
        let stored = vary_values(&response, &gzip);
        let mut spaced = HeaderMap::new();
        spaced.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, br"));
        assert!(vary_matches(&stored, &spaced));
        let mut reordered = HeaderMap::new();
        reordered.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_static("BR ,Gzip"));
        assert!(
            vary_matches(&stored, &reordered),
            "order and case of Accept-Encoding do not matter"
        );
        let mut other = HeaderMap::new();
        other.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        assert!(!vary_matches(&stored, &other));
        assert_ne!(
            ObjectId::new("k", &stored),
            ObjectId::new("k", &vary_values(&response, &other))
        );
    }
}
