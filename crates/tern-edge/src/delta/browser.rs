//! Class pages to browsers (RFC 9842, Compression Dictionary Transport). Every response of a class page
//! carries `Vary: accept-encoding, available-dictionary` (section 6.2), and a 200 carries `Link: <base>;
//! rel="compression-dictionary"` (section 3) naming the class's current base, which the edge serves from
//! its cache with `Use-As-Dictionary`. A shareable page also carries `Use-As-Dictionary` matching its own
//! URL, and the edge keeps it a while ([`super::pages`]). A browser that then sends `Available-Dictionary`
//! for a base of the class the edge holds, or for a kept page of the class, with `dcz` in
//! `Accept-Encoding`, gets the page as a `dcz` delta against it — only when [`tern_delta::browser_delta`]
//! allows it: a credential-free request and a shareable response (no `Set-Cookie`, not `private` or
//! `no-store`, not varying on credentials), same-origin or readable by the requester. Why that is safe
//! against BREACH is in [`tern_delta::safety`] and `docs/delta.md`.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use tern_delta::fields::{self, DCZ, USE_AS_DICTIONARY};
use tern_delta::safety::{NoBrowserDelta, accepts_dcz};
use tern_delta::{Base, BaseId, Class, UseAsDictionary, browser_delta, shareable_page};
use tern_http::Body;

use super::EdgeDelta;
use super::body::{Bounded, chain, failed, read_bounded};

/// What the response path needs to know about a request of a class page, taken before the request is
/// handled (the request is consumed by then).
pub struct BrowserPlan {
    class: Class,
    current: Option<BaseId>,
    /// The request's path, which a page kept as a dictionary is matched by.
    path: String,
    /// A GET (a HEAD's empty body is no page to keep).
    get: bool,
    /// The request's fields, which the safety rule reads.
    request: HeaderMap,
    /// The dictionary the browser holds (a base or a kept page of this class, held here); `None` unless
    /// the browser offered `dcz`.
    offered: Option<Base>,
}

/// The `Vary` members of a response that may be `dcz`-coded for a browser.
const VARY_MEMBERS: [&str; 2] = ["accept-encoding", "available-dictionary"];

fn label(reason: NoBrowserDelta) -> &'static str {
    match reason {
        NoBrowserDelta::ClassDisabled => "class_disabled",
        NoBrowserDelta::NotOffered => "not_offered",
        NoBrowserDelta::Credentials => "credentials",
        NoBrowserDelta::CrossSite => "cross_site",
        NoBrowserDelta::Status => "status",
        NoBrowserDelta::SetsCookie => "sets_cookie",
        NoBrowserDelta::NotShareable => "not_shareable",
        NoBrowserDelta::VariesByUser => "varies_by_user",
        NoBrowserDelta::AlreadyEncoded => "already_encoded",
    }
}

/// Adds the [`VARY_MEMBERS`] missing from `Vary` (a `Vary: *` stays as it is).
fn add_vary(headers: &mut HeaderMap) {
    let present: Vec<String> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','))
        .map(|member| member.trim().to_ascii_lowercase())
        .collect();
    if present.iter().any(|member| member == "*") {
        return;
    }
    let missing: Vec<&str> = VARY_MEMBERS
        .into_iter()
        .filter(|member| !present.iter().any(|have| have == member))
        .collect();
    if missing.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(&missing.join(", ")) {
        headers.append(header::VARY, value);
    }
}

/// A strong validator made weak: the `dcz` bytes differ from the identity bytes it names.
fn weaken_etag(headers: &mut HeaderMap) {
    let Some(etag) = headers.get(header::ETAG).and_then(|value| value.to_str().ok()) else {
        return;
    };
    if etag.starts_with("W/") {
        return;
    }
    if let Ok(weak) = HeaderValue::from_str(&format!("W/{etag}")) {
        headers.insert(header::ETAG, weak);
    }
}

impl EdgeDelta {
    /// The plan for a browser request of `target`, or `None` when it is not a page of a learned class.
    pub fn browser_plan(&self, method: &Method, target: &str, headers: &HeaderMap) -> Option<BrowserPlan> {
        if !self.is_active() || !(method == Method::GET || method == Method::HEAD) {
            return None;
        }
        let path = target.split('?').next().unwrap_or(target);
        if BaseId::from_well_known_path(path).is_some() {
            return None;
        }
        let wants_delta = self.settings.browser_deltas && method == Method::GET && accepts_dcz(headers);
        let named = if wants_delta {
            fields::available_dictionary(headers).ok().flatten()
        } else {
            None
        };
        let (class, current, base) = self.with_holder(|holder| {
            let class = holder.class_of(path)?.clone();
            let current = holder.current(&class.name);
            let base = named.and_then(|id| holder.base(&id).cloned());
            Some((class, current, base))
        })?;
        let offered = base
            .or_else(|| named.and_then(|id| self.with_pages(|pages| pages.get(&id).cloned())))
            .filter(|dictionary| dictionary.class() == class.name);
        Some(BrowserPlan {
            class,
            current,
            path: path.to_string(),
            get: method == Method::GET,
            request: headers.clone(),
            offered,
        })
    }

    /// Shapes the response of a class page for the browser: `Vary`, `Link`, `Use-As-Dictionary` on a
    /// shareable page (kept as a dictionary), and `dcz` when the plan and the safety rule allow it.
    pub async fn to_browser(self: &Arc<Self>, plan: BrowserPlan, mut response: Response<Body>) -> Response<Body> {
        let status = response.status();
        let headers = response.headers_mut();
        add_vary(headers);
        if self.settings.browser_deltas
            && status == StatusCode::OK
            && let Some(current) = plan.current
            && let Ok(link) = HeaderValue::from_str(&fields::compression_dictionary_link(&current))
        {
            headers.append(header::LINK, link);
        }
        // The page may be the browser's dictionary for its URL's next version.
        let keep_page = self.settings.browser_deltas
            && self.settings.browser_page_dictionaries > 0
            && plan.get
            && !headers.contains_key(header::CONTENT_RANGE)
            && shareable_page(&plan.class, &plan.request, status, headers).is_ok();
        let delta_to = match plan.offered {
            None => {
                self.counters.browser(label(NoBrowserDelta::NotOffered));
                None
            }
            Some(_) if status != StatusCode::OK || headers.contains_key(header::CONTENT_RANGE) => {
                self.counters.browser(label(NoBrowserDelta::Status));
                None
            }
            Some(dictionary) => match browser_delta(&plan.class, &plan.request, status, headers) {
                Ok(()) => Some(dictionary),
                Err(reason) => {
                    self.counters.browser(label(reason));
                    None
                }
            },
        };
        if !keep_page && delta_to.is_none() {
            return response;
        }
        let (mut parts, body) = response.into_parts();
        let page = match read_bounded(body, self.settings.browser_max_page).await {
            Bounded::Whole(page) => page,
            Bounded::Over { head, rest } => {
                self.counters.browser("too_large");
                return Response::from_parts(parts, chain(head, rest));
            }
            Bounded::Failed(error) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                return Response::from_parts(parts, failed(error));
            }
        };
        if keep_page
            && let Ok(dictionary) = Base::new(plan.class.name.clone(), page.clone(), self.settings.browser_max_page)
            && let Ok(field) = UseAsDictionary::for_page(&plan.path).format()
            && let Ok(value) = HeaderValue::from_str(&field)
        {
            self.with_pages(|pages| pages.insert(dictionary));
            parts.headers.insert(USE_AS_DICTIONARY, value);
        }
        let Some(base) = delta_to else {
            return Response::from_parts(parts, tern_http::full(page));
        };
        let delta = self.clone();
        let raw = page.clone();
        let encoded = tokio::task::spawn_blocking(move || delta.browser_encoder.encode(&base, &raw))
            .await
            .ok()
            .and_then(Result::ok)
            .filter(|encoded| encoded.len() < page.len());
        let Some(encoded) = encoded else {
            self.counters.browser("not_smaller");
            return Response::from_parts(parts, tern_http::full(page));
        };
        self.counters.browser("dcz");
        self.counters.add(&self.counters.browser_raw_bytes, page.len());
        self.counters.add(&self.counters.browser_sent_bytes, encoded.len());
        let headers = &mut parts.headers;
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(DCZ));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(encoded.len()));
        // RFC 9530: `Repr-Digest` would now name the coded bytes; the page's digest is the unencoded one.
        if let Some(digest) = headers.remove(fields::REPR_DIGEST) {
            headers.insert(fields::UNENCODED_DIGEST, digest);
        }
        headers.remove(header::ACCEPT_RANGES);
        weaken_etag(headers);
        Response::from_parts(parts, tern_http::full(encoded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vary_gets_the_dictionary_members_once() {
        let mut headers = HeaderMap::new();
        add_vary(&mut headers);
        assert_eq!(
            headers.get(header::VARY).map(|v| v.as_bytes()),
            Some(&b"accept-encoding, available-dictionary"[..])
        );
        add_vary(&mut headers);
        assert_eq!(headers.get_all(header::VARY).iter().count(), 1);
        let mut origin = HeaderMap::new();
        origin.insert(
            header::VARY,
            HeaderValue::from_static("Accept-Encoding, Accept-Language"),
        );
        add_vary(&mut origin);
        let all: Vec<&[u8]> = origin.get_all(header::VARY).iter().map(|v| v.as_bytes()).collect();
        assert_eq!(
            all,
            vec![&b"Accept-Encoding, Accept-Language"[..], &b"available-dictionary"[..]]
        );
        let mut star = HeaderMap::new();
        star.insert(header::VARY, HeaderValue::from_static("*"));
        add_vary(&mut star);
        assert_eq!(star.get_all(header::VARY).iter().count(), 1);
    }

    #[test]
    fn strong_etags_become_weak() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        weaken_etag(&mut headers);
        assert_eq!(headers.get(header::ETAG).map(|v| v.as_bytes()), Some(&b"W/\"v1\""[..]));
        weaken_etag(&mut headers);
        assert_eq!(headers.get(header::ETAG).map(|v| v.as_bytes()), Some(&b"W/\"v1\""[..]));
    }
}
