//! Who may use the admin UI. The operator logs in with the admin token (the hex line of a `tern keygen`
//! file given to `tern mover --admin-token`) and gets a session: a random id in a cookie that scripts
//! cannot read (`HttpOnly`), that no other site's page sends (`SameSite=Strict`), and that travels only over
//! HTTPS when the mover serves it (`Secure`). Every request that changes something passes [`check_change`]:
//! it comes from the UI's own pages ([`provenance`]: `Sec-Fetch-Site`, `Origin`), it carries a live session,
//! and its form carries that session's CSRF token. A request failing any of the three changes nothing.
//!
//! Sessions live in the mover's memory (a restart logs everyone out), for a bounded time and in a bounded
//! number. Time comes in as `now_ms`.

use std::collections::HashMap;
use std::time::Duration;

use http::HeaderMap;
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "tern_session";

/// The path the cookie is sent for: the UI's pages only.
pub const COOKIE_PATH: &str = "/ui";

/// Random bytes in a session id and in a CSRF token.
const TOKEN_BYTES: usize = 32;

/// A random token, hex-encoded.
fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// A logged-in operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token every form of this session carries (`csrf`).
    pub csrf: String,
    /// When it ends (ms since the epoch).
    pub expires_ms: u64,
}

/// The open sessions.
#[derive(Debug)]
pub struct Sessions {
    open: HashMap<String, Session>,
    ttl: Duration,
    max: usize,
}

impl Sessions {
    /// No session yet; each lasts `ttl` from login, and at most `max` are open (logging in past that ends
    /// the one closest to its end).
    pub fn new(ttl: Duration, max: usize) -> Sessions {
        Sessions {
            open: HashMap::new(),
            ttl,
            max: max.max(1),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a session at `now_ms`: its id (the cookie's value) and the session.
    pub fn open(&mut self, now_ms: u64) -> Result<(String, Session), getrandom::Error> {
        self.open.retain(|_, session| session.expires_ms > now_ms);
        while self.open.len() >= self.max {
            let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, session)| session.expires_ms)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            self.open.remove(&oldest);
        }
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let session = Session {
            csrf: random_token()?,
            expires_ms: now_ms.saturating_add(ttl_ms),
        };
        let id = random_token()?;
        self.open.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The live session with id `id` at `now_ms` (an expired one is closed).
    pub fn find(&mut self, id: &str, now_ms: u64) -> Option<Session> {
        let session = self.open.get(id)?;
        if session.expires_ms <= now_ms {
            self.open.remove(id);
            return None;
        }
        Some(session.clone())
    }

    /// Ends a session (logging out).
    pub fn close(&mut self, id: &str) {
        self.open.remove(id);
    }

    /// How many sessions are open (expired ones included until they are next looked at).
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// The session id in the request's `Cookie` fields, if any.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then_some(value)
        })
}

/// The `Set-Cookie` value that hands the browser session `id` for `max_age` (`Secure` over HTTPS).
pub fn set_cookie(id: &str, max_age: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={id}; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age.as_secs()
    )
}

/// The `Set-Cookie` value that makes the browser forget its session.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", Duration::ZERO, secure)
}

/// Where a request says it comes from, by the fields a browser sets on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// A page of the UI itself (`Sec-Fetch-Site: same-origin`, or an `Origin` equal to the request's own).
    SameOrigin,
    /// No such field: not a browser (a script with the session cookie and token), or a very old one; the
    /// CSRF token decides.
    Unstated,
    /// Another site, or an origin that cannot be checked: refused.
    CrossSite(String),
}

/// Reads `Sec-Fetch-Site` and `Origin`: both, when present, must say "this very origin". The origin the UI
/// is served from is `scheme://Host` (`https` when `secure`); without a `Host` field (HTTP/2 carries the
/// authority elsewhere) `Sec-Fetch-Site` must vouch for the request.
pub fn provenance(headers: &HeaderMap, secure: bool) -> Provenance {
    let field = |name: &str| headers.get(name).map(|value| value.to_str().unwrap_or("(not text)"));
    let fetch_site = field("sec-fetch-site");
    if let Some(site) = fetch_site
        && site != "same-origin"
    {
        return Provenance::CrossSite(format!("Sec-Fetch-Site is {site}"));
    }
    let Some(origin) = field("origin") else {
        return match fetch_site {
            Some(_) => Provenance::SameOrigin,
            None => Provenance::Unstated,
        };
    };
    let scheme = if secure { "https" } else { "http" };
    match field("host") {
        Some(host) if origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")) => Provenance::SameOrigin,
        Some(host) => Provenance::CrossSite(format!("Origin {origin} is not {scheme}://{host}")),
        None if fetch_site.is_some() => Provenance::SameOrigin,
        None => Provenance::CrossSite(format!("Origin {origin} and no Host to check it against")),
    }
}

/// Whether `presented` is the session's CSRF token (compared in constant time).
pub fn same_token(expected: &str, presented: &str) -> bool {
    expected.len() == presented.len() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// What [`check_change`] decides about a request that changes something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It may go ahead, for this session.
    Allowed {
        /// The session's id.
        id: String,
        /// The session.
        session: Session,
    },
    /// It comes from another site (why).
    CrossSite(String),
    /// No live session: log in first.
    NoSession,
    /// The form does not carry the session's CSRF token.
    BadToken,
}

/// Checks a state-changing request: provenance first, then the session, then the form's `csrf` token.
pub fn check_change(
    sessions: &mut Sessions,
    headers: &HeaderMap,
    csrf: Option<&str>,
    secure: bool,
    now_ms: u64,
) -> Verdict {
    if let Provenance::CrossSite(reason) = provenance(headers, secure) {
        return Verdict::CrossSite(reason);
    }
    let Some(id) = session_id(headers) else {
        return Verdict::NoSession;
    };
    let Some(session) = sessions.find(id, now_ms) else {
        return Verdict::NoSession;
    };
    match csrf {
        Some(presented) if same_token(&session.csrf, presented) => Verdict::Allowed {
            id: id.to_string(),
            session,
        },
        _ => Verdict::BadToken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, value.parse().expect("value"));
        }
        map
    }

    #[test]
    fn sessions_end_at_their_time_and_are_bounded_in_number() {
        let mut sessions = Sessions::new(Duration::from_secs(10), 2);
        let (first, opened) = sessions.open(1_000).expect("random");
        assert_eq!(opened.expires_ms, 11_000);
        assert_eq!(first.len(), 64);
        assert_eq!(sessions.find(&first, 10_999), Some(opened.clone()));
        assert_eq!(sessions.find(&first, 11_000), None, "expired");
        assert!(sessions.is_empty(), "an expired session is closed when seen");
        let (a, _) = sessions.open(1_000).expect("random");
        let (b, _) = sessions.open(2_000).expect("random");
        let (c, _) = sessions.open(3_000).expect("random");
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions.find(&a, 3_000), None, "the one closest to its end made room");
        assert!(sessions.find(&b, 3_000).is_some() && sessions.find(&c, 3_000).is_some());
        sessions.close(&b);
        assert_eq!(sessions.find(&b, 3_000), None);
    }

    #[test]
    fn the_cookie_is_http_only_same_site_strict_and_secure_over_https() {
        assert_eq!(
            set_cookie("abc", Duration::from_secs(60), false),
            "tern_session=abc; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=60"
        );
        assert!(set_cookie("abc", Duration::from_secs(60), true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("tern_session=; ") && clear_cookie(false).contains("Max-Age=0"));
        let sent = headers(&[("cookie", "theme=dark; tern_session=s1"), ("cookie", "other=1")]);
        assert_eq!(session_id(&sent), Some("s1"));
        assert_eq!(session_id(&headers(&[("cookie", "tern_session=")])), None);
        assert_eq!(session_id(&headers(&[("cookie", "xtern_session=s")])), None);
    }

    #[test]
    fn only_the_uis_own_origin_is_same_origin() {
        let host = ("host", "127.0.0.1:9001");
        assert_eq!(
            provenance(&headers(&[host, ("origin", "http://127.0.0.1:9001")]), false),
            Provenance::SameOrigin
        );
        assert_eq!(
            provenance(&headers(&[host, ("sec-fetch-site", "same-origin")]), false),
            Provenance::SameOrigin
        );
        assert_eq!(provenance(&headers(&[host]), false), Provenance::Unstated);
        for (refused, secure) in [
            (vec![host, ("origin", "http://evil.example")], false),
            (vec![host, ("origin", "http://127.0.0.1:9001")], true),
            (vec![host, ("origin", "null")], false),
            (vec![host, ("sec-fetch-site", "cross-site")], false),
            (vec![host, ("sec-fetch-site", "same-site")], false),
            (
                vec![
                    host,
                    ("sec-fetch-site", "same-origin"),
                    ("origin", "http://evil.example"),
                ],
                false,
            ),
            (vec![("origin", "http://127.0.0.1:9001")], false),
        ] {
            assert!(
                matches!(provenance(&headers(&refused), secure), Provenance::CrossSite(_)),
                "{refused:?}"
            );
        }
        assert_eq!(
            provenance(
                &headers(&[("sec-fetch-site", "same-origin"), ("origin", "https://m:1")]),
                true
            ),
            Provenance::SameOrigin,
            "HTTP/2 has no Host field: Sec-Fetch-Site vouches"
        );
    }

    #[test]
    fn a_change_needs_the_origin_the_session_and_its_token() {
        let mut sessions = Sessions::new(Duration::from_secs(60), 4);
        let (id, session) = sessions.open(0).expect("random");
        let cookie = format!("{COOKIE}={id}");
        let host = ("host", "m:1");
        let good = headers(&[host, ("origin", "http://m:1"), ("cookie", &cookie)]);
        assert_eq!(
            check_change(&mut sessions, &good, Some(&session.csrf), false, 1),
            Verdict::Allowed {
                id: id.clone(),
                session: session.clone()
            }
        );
        let cross = headers(&[host, ("origin", "http://evil"), ("cookie", &cookie)]);
        assert!(matches!(
            check_change(&mut sessions, &cross, Some(&session.csrf), false, 1),
            Verdict::CrossSite(_)
        ));
        let anonymous = headers(&[host, ("origin", "http://m:1")]);
        assert_eq!(
            check_change(&mut sessions, &anonymous, Some(&session.csrf), false, 1),
            Verdict::NoSession
        );
        assert_eq!(check_change(&mut sessions, &good, None, false, 1), Verdict::BadToken);
        assert_eq!(
            check_change(&mut sessions, &good, Some("00"), false, 1),
            Verdict::BadToken
        );
        assert_eq!(
            check_change(&mut sessions, &good, Some(&session.csrf), false, 60_000),
            Verdict::NoSession,
            "expired"
        );
    }
}
