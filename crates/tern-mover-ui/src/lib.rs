#![warn(missing_docs)]
//! The mover's admin web UI: seed `004_1419c51402506f7e.txt`'s browser-based user interface of the content
//! control manager, where "the computers are shown as icons", a new server appears as a new icon that the
//! administrator adds to content groups, and jobs, schedules, policies and reports are shown "refreshed from
//! the database".
//!
//! It is served by `tern mover --admin ADDR --admin-token FILE` under `/ui/` on the admin listener, beside
//! `/metrics` and `/status`: [`MoverUi`] wraps the mover's own admin routes ([`tern_admin::AdminRoutes`]) and
//! adds its pages. The pages are rendered on the server (askama templates under `templates/`, compiled into
//! the binary) from the mover's own types and calls — the same ones its JSON API uses ([`tern_mover::Mover`]:
//! `submit`, `cancel`, `jobs`, `holdings`, `segments`, ...) — so the UI holds no logic of the mover's. A
//! few lines of plain script (`static/ui.js`) fetch each page's live part again every few seconds.
//!
//! - [`pages`]: the pages and what each shows; [`chart`]: the report of publish times and bytes in SVG;
//!   [`format`]: times, sizes, durations;
//! - [`auth`]: logging in with the admin token, the session cookie, the CSRF guard; [`form`]: form bodies;
//! - [`routes`]: which request gets which page or action.
//!
//! Without an admin token the UI is off (the listener serves `/metrics` and `/status` only), and says so in
//! the log and on `/ui/`.

pub mod auth;
pub mod chart;
pub mod form;
pub mod format;
pub mod pages;
pub mod routes;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tern_admin::{AdminRequest, AdminRoutes, ResponseFuture};
use tern_http::server::Running;
use tern_mover::Mover;
use tern_mover::service::{MoverConfig, StartError};
use tern_wire::SecretKey;

use crate::auth::Sessions;

/// Settings of the UI.
#[derive(Debug, Clone)]
pub struct UiSettings {
    /// The admin token (a `tern keygen` key file); `None`: the UI is off.
    pub token: Option<SecretKey>,
    /// Whether the admin listener serves HTTPS (the session cookie is then `Secure`).
    pub secure: bool,
    /// How long a session lasts from login.
    pub session_ttl: Duration,
    /// Most sessions open at once.
    pub max_sessions: usize,
    /// How often a page fetches its live part again.
    pub refresh: Duration,
    /// How long a node may go without registering before it is shown as silent.
    pub silent_after: Duration,
    /// Most jobs the lists and the report read.
    pub list_limit: usize,
    /// Most history entries shown.
    pub history_limit: usize,
}

impl UiSettings {
    /// The defaults with `token`: sessions of 12 hours (at most 64), a refresh every 2 s, nodes silent
    /// after a minute.
    pub fn new(token: Option<SecretKey>) -> UiSettings {
        UiSettings {
            token,
            secure: false,
            session_ttl: Duration::from_secs(12 * 3600),
            max_sessions: 64,
            refresh: Duration::from_secs(2),
            silent_after: Duration::from_secs(60),
            list_limit: 200,
            history_limit: 300,
        }
    }
}

/// The mover's admin routes with the UI's pages added under `/ui/`.
pub struct MoverUi {
    mover: Arc<Mover>,
    settings: UiSettings,
    sessions: Mutex<Sessions>,
}

impl MoverUi {
    /// The UI of `mover`.
    pub fn new(mover: Arc<Mover>, settings: UiSettings) -> MoverUi {
        let sessions = Sessions::new(settings.session_ttl, settings.max_sessions);
        MoverUi {
            mover,
            settings,
            sessions: Mutex::new(sessions),
        }
    }

    /// The mover it shows.
    pub fn mover(&self) -> &Mover {
        &self.mover
    }

    /// Its settings.
    pub fn settings(&self) -> &UiSettings {
        &self.settings
    }

    pub(crate) fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The UI's clock: milliseconds since the Unix epoch, read once per request and passed down.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl AdminRoutes for MoverUi {
    fn status(&self) -> serde_json::Value {
        AdminRoutes::status(&*self.mover)
    }

    fn registry(&self) -> &prometheus_client::registry::Registry {
        AdminRoutes::registry(&*self.mover)
    }

    fn refresh_metrics(&self) {
        AdminRoutes::refresh_metrics(&*self.mover)
    }

    fn route<'a>(&'a self, request: &'a AdminRequest) -> Option<ResponseFuture<'a>> {
        if request.path == "/ui" || request.path.starts_with("/ui/") {
            return Some(Box::pin(self.handle(request, now_ms())));
        }
        AdminRoutes::route(&*self.mover, request)
    }

    fn endpoints(&self) -> Vec<&'static str> {
        let mut endpoints = AdminRoutes::endpoints(&*self.mover);
        if self.settings.token.is_some() {
            endpoints.push("/ui/");
        }
        endpoints
    }
}

/// Starts the mover (as [`tern_mover::service::start`]) with the UI on its admin listener, logged in with
/// `token`; without a token, or without an admin listener, the UI is off and the log says so.
pub async fn start(config: MoverConfig, token: Option<SecretKey>) -> Result<Running<Arc<Mover>>, StartError> {
    let mut settings = UiSettings::new(token);
    settings.secure = config.tls.is_some();
    start_with(config, settings).await
}

/// Starts the mover with the UI configured by `settings`.
pub async fn start_with(config: MoverConfig, settings: UiSettings) -> Result<Running<Arc<Mover>>, StartError> {
    let has_token = settings.token.is_some();
    if let Some(token) = &settings.token {
        // Never sent to a cache as its key, whatever file a job names.
        tern_mover::freshness::hold_as_own(token.as_bytes());
    }
    let scheme = if settings.secure { "https" } else { "http" };
    let running = tern_mover::service::start_with_admin(config, move |mover| {
        Arc::new(MoverUi::new(mover, settings)) as Arc<dyn AdminRoutes>
    })
    .await?;
    match (running.admin, has_token) {
        (Some(admin), true) => tracing::info!(url = %format!("{scheme}://{admin}/ui/"), "admin web UI on"),
        (Some(_), false) => tracing::info!(
            "admin web UI off: no --admin-token FILE (a `tern keygen` file); the admin listener serves /metrics and /status only"
        ),
        (None, true) => tracing::warn!("--admin-token given without --admin ADDR: no admin listener, so no web UI"),
        (None, false) => {}
    }
    Ok(running)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode};
    use http_body_util::BodyExt;
    use tern_admin::AdminRequest;

    use super::*;

    /// A mover with no node, its API on a free port and no admin listener (the UI is called directly).
    async fn mover(area: &std::path::Path) -> Running<Arc<Mover>> {
        tern_mover::service::start(MoverConfig {
            delivery_timeout: Duration::from_secs(5),
            checkpoints_kept: 2,
            ..MoverConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), area.join("mover"))
        })
        .await
        .expect("mover")
    }

    fn request(method: Method, path: &str, headers: &[(&'static str, &str)], body: &str) -> AdminRequest {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().expect("value"));
        }
        AdminRequest {
            method,
            path: path.to_string(),
            query: None,
            headers: map,
            body: Bytes::from(body.to_string()),
            client: SocketAddr::from(([127, 0, 0, 1], 1)),
        }
    }

    async fn text(response: http::Response<tern_http::Body>) -> (StatusCode, HeaderMap, String) {
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    #[tokio::test]
    async fn every_page_renders_for_a_session_and_its_live_part_alone_on_request() {
        let area = tempfile::tempdir().expect("tempdir");
        let running = mover(area.path()).await;
        let key = SecretKey::generate().expect("key");
        let ui = MoverUi::new(running.role.clone(), UiSettings::new(Some(key.clone())));
        let host = ("host", "m:1");
        let login = request(
            Method::POST,
            "/ui/login",
            &[host, ("origin", "http://m:1")],
            &format!("token=%23+a+comment%0A{}", key.token()),
        );
        let (status, headers, _) = text(ui.handle(&login, 1_000).await).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "the whole key file pasted logs in too");
        let cookie = headers
            .get(http::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("cookie")
            .to_string();
        let pages = [
            ("/ui/", "Sites: the version each node holds live"),
            ("/ui/nodes", "No node has registered yet"),
            ("/ui/jobs", "Submit job"),
            ("/ui/schedule", "Waiting"),
            ("/ui/checkpoints", "No site published yet"),
            ("/ui/history", "Nothing has happened yet"),
            ("/ui/chart", "no committed publish yet"),
        ];
        for (path, shows) in pages {
            let page = request(Method::GET, path, &[host, ("cookie", &cookie)], "");
            let (status, headers, body) = text(ui.handle(&page, 2_000).await).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            assert!(body.contains(shows), "{path} shows {shows:?}: {body}");
            assert!(body.contains("<html") && body.contains("id=\"live\""), "{path} whole");
            assert!(
                headers
                    .get("content-security-policy")
                    .is_some_and(|v| v.to_str().unwrap_or("").contains("script-src 'self'")),
                "{path}"
            );
            let fragment = request(
                Method::GET,
                path,
                &[host, ("cookie", &cookie), ("x-tern-fragment", "live")],
                "",
            );
            let (status, _, body) = text(ui.handle(&fragment, 2_000).await).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(
                !body.contains("<html") && !body.contains("id=\"live\""),
                "{path} live part: {body}"
            );
        }
        // A group set from the nodes page, as the history log shows.
        let page = request(Method::GET, "/ui/nodes", &[host, ("cookie", &cookie)], "");
        let (_, _, body) = text(ui.handle(&page, 2_000).await).await;
        let start = body.find("name=\"csrf\" value=\"").expect("csrf") + 19;
        let csrf = &body[start..start + 64];
        let set = request(
            Method::POST,
            "/ui/groups",
            &[host, ("cookie", &cookie), ("sec-fetch-site", "same-origin")],
            &format!("csrf={csrf}&group=eu&node=n1"),
        );
        assert_eq!(text(ui.handle(&set, 3_000).await).await.0, StatusCode::SEE_OTHER);
        assert_eq!(
            ui.mover().groups().await.expect("groups"),
            [("eu".to_string(), vec!["n1".to_string()])]
        );
        let history = request(Method::GET, "/ui/history", &[host, ("cookie", &cookie)], "");
        let (_, _, body) = text(ui.handle(&history, 3_000).await).await;
        assert!(body.contains("group eu set to n1"), "{body}");
        // A job the mover refuses is shown on the jobs page with the reason, and no job is made.
        let refused = request(
            Method::POST,
            "/ui/jobs",
            &[host, ("cookie", &cookie), ("origin", "http://m:1")],
            &format!("csrf={csrf}&kind=rollback&site=www"),
        );
        let (status, _, body) = text(ui.handle(&refused, 3_000).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("site www was never published"), "{body}");
        assert!(ui.mover().jobs(10).await.expect("jobs").is_empty());
        // Without a session a page sends the browser to the login form, and its script to log in again.
        let anonymous = request(Method::GET, "/ui/", &[host], "");
        let (status, headers, _) = text(ui.handle(&anonymous, 2_000).await).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers.get("location").map(|v| v.as_bytes()), Some(&b"/ui/login"[..]));
        let anonymous = request(Method::GET, "/ui/", &[host, ("x-tern-fragment", "live")], "");
        assert_eq!(
            text(ui.handle(&anonymous, 2_000).await).await.0,
            StatusCode::UNAUTHORIZED
        );
        // A session ends at its time.
        let late = request(Method::GET, "/ui/", &[host, ("cookie", &cookie)], "");
        let ttl_ms = ui.settings().session_ttl.as_millis() as u64;
        assert_eq!(
            text(ui.handle(&late, 1_000 + ttl_ms).await).await.0,
            StatusCode::SEE_OTHER
        );
        running.shutdown().await;
    }

    #[tokio::test]
    async fn without_a_token_the_ui_is_off_and_says_how_to_turn_it_on() {
        let area = tempfile::tempdir().expect("tempdir");
        let running = mover(area.path()).await;
        let ui = MoverUi::new(running.role.clone(), UiSettings::new(None));
        for (method, path) in [
            (Method::GET, "/ui/"),
            (Method::GET, "/ui/login"),
            (Method::POST, "/ui/login"),
        ] {
            let (status, _, body) = text(ui.handle(&request(method, path, &[], "token=x"), 0).await).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert!(body.contains("--admin-token FILE"), "{body}");
        }
        let status = request(Method::GET, "/status", &[], "");
        assert!(
            AdminRoutes::route(&ui, &status).is_some(),
            "the mover's own routes stay"
        );
        running.shutdown().await;
    }
}
