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

/// Builds the primary key `scheme://host/path?query` (host lowercased, default port dropped).
pub fn primary_key(scheme: &str, host: &str, path_and_query: &str, config: &KeyConfig) -> String {
    let host = host.trim().to_ascii_lowercase();
    let host = host.strip_suffix(":80").filter(|_| scheme == "http").unwrap_or(&host);
    let path = if config.include_query {
        path_and_query
    } else {
        path_and_query.split('?').next().unwrap_or("/")
    };
    let path = if path.is_empty() { "/" } else { path };
    format!("{scheme}://{host}{path}")
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

/// Combines all field lines and folds whitespace around list separators, so that `gzip,br` and
/// `gzip, br` select the same variant (RFC 9111 section 4.1 allows normalizing this way).
fn normalized_value(request: &HeaderMap, name: &HeaderName) -> String {
    let joined: Vec<&str> = request
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect();
    joined.join(",")
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
        let mut other = HeaderMap::new();
        other.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        assert!(!vary_matches(&stored, &other));
        assert_ne!(
            ObjectId::new("k", &stored),
            ObjectId::new("k", &vary_values(&response, &other))
        );
    }
}
