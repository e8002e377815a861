//! The `Cache-Status` response field (RFC 9211): what this cache did with each request.

use std::fmt::Write as _;

use http::HeaderValue;

/// Why a request went forward (the `fwd` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Nothing stored under the URL.
    Miss,
    /// Stored variants exist but none matches the request's `Vary` fields.
    VaryMiss,
    /// A stored response needed validation.
    Stale,
    /// The request's own directives made it go forward.
    Request,
    /// The method is not cached.
    Method,
}

impl Forward {
    fn token(self) -> &'static str {
        match self {
            Forward::Miss => "miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Stale => "stale",
            Forward::Request => "request",
            Forward::Method => "method",
        }
    }
}

/// One `Cache-Status` entry.
#[derive(Debug, Clone, Default)]
pub struct CacheStatus {
    hit: bool,
    forward: Option<Forward>,
    forward_status: Option<u16>,
    stored: bool,
    collapsed: bool,
    ttl: Option<i64>,
    detail: Option<&'static str>,
}

impl CacheStatus {
    /// Served from cache.
    pub fn hit(ttl: i64) -> Self {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..Default::default()
        }
    }

    /// Went forward for `why`.
    pub fn forward(why: Forward) -> Self {
        CacheStatus {
            forward: Some(why),
            ..Default::default()
        }
    }

    /// Adds the upstream status.
    pub fn with_forward_status(mut self, status: u16) -> Self {
        self.forward_status = Some(status);
        self
    }

    /// Marks the response as stored.
    pub fn with_stored(mut self, stored: bool) -> Self {
        self.stored = stored;
        self
    }

    /// Marks the request as collapsed into another's fetch.
    pub fn with_collapsed(mut self) -> Self {
        self.collapsed = true;
        self
    }

    /// Sets the remaining freshness.
    pub fn with_ttl(mut self, ttl: i64) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Adds a detail token.
    pub fn with_detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Whether this was a hit.
    pub fn is_hit(&self) -> bool {
        self.hit
    }

    /// The field value, with this cache's name.
    pub fn to_header(&self, name: &str) -> HeaderValue {
        let mut text = String::with_capacity(48);
        text.push_str(name);
        if self.hit {
            text.push_str("; hit");
        }
        if let Some(forward) = self.forward {
            text.push_str("; fwd=");
            text.push_str(forward.token());
        }
        if let Some(status) = self.forward_status {
            let _ = write!(text, "; fwd-status={status}");
        }
        if self.stored {
            text.push_str("; stored");
        }
        if self.collapsed {
            text.push_str("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(text, "; ttl={ttl}");
        }
        if let Some(detail) = self.detail {
            text.push_str("; detail=");
            text.push_str(detail);
        }
        // From the `String` itself: its buffer becomes the value's, without a copy.
        HeaderValue::try_from(text).unwrap_or(HeaderValue::from_static("tern"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        assert_eq!(CacheStatus::hit(42).to_header("tern"), "tern; hit; ttl=42");
        let miss = CacheStatus::forward(Forward::Miss)
            .with_forward_status(200)
            .with_stored(true);
        assert_eq!(miss.to_header("tern"), "tern; fwd=miss; fwd-status=200; stored");
    }
}
