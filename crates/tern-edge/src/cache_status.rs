//! The `Cache-Status` response field (RFC 9211): what this cache did with each request.

use std::fmt::Write;

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
        // Written on the stack and copied once into the value (one allocation per response); a name too
        // long for the buffer takes the heap.
        let mut line = Line::default();
        if self.write_to(&mut line, name).is_ok() {
            return HeaderValue::from_bytes(line.as_bytes()).unwrap_or(HeaderValue::from_static("tern"));
        }
        let mut text = String::new();
        let _ = self.write_to(&mut text, name);
        HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("tern"))
    }

    fn write_to(&self, text: &mut impl Write, name: &str) -> std::fmt::Result {
        text.write_str(name)?;
        if self.hit {
            text.write_str("; hit")?;
        }
        if let Some(forward) = self.forward {
            text.write_str("; fwd=")?;
            text.write_str(forward.token())?;
        }
        if let Some(status) = self.forward_status {
            write!(text, "; fwd-status={status}")?;
        }
        if self.stored {
            text.write_str("; stored")?;
        }
        if self.collapsed {
            text.write_str("; collapsed")?;
        }
        if let Some(ttl) = self.ttl {
            write!(text, "; ttl={ttl}")?;
        }
        if let Some(detail) = self.detail {
            text.write_str("; detail=")?;
            text.write_str(detail)?;
        }
        Ok(())
    }
}

/// A field value being written on the stack; writing past its end fails.
struct Line {
    bytes: [u8; 128],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            bytes: [0; 128],
            len: 0,
        }
    }
}

impl Line {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Write for Line {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let end = self.len + text.len();
        let Some(room) = self.bytes.get_mut(self.len..end) else {
            return Err(std::fmt::Error);
        };
        room.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
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
        let long = "edge-".repeat(40);
        assert_eq!(
            CacheStatus::hit(-3)
                .with_detail("stale-while-revalidate")
                .to_header(&long),
            format!("{long}; hit; ttl=-3; detail=stale-while-revalidate"),
            "a name longer than the stack buffer"
        );
    }
}
