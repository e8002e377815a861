//! Which request gets which page or action. Under `/ui/`:
//!
//! | request | what |
//! |---|---|
//! | `GET /ui/login`, `POST /ui/login` | the login form; the admin token opens a session |
//! | `POST /ui/logout` | ends the session |
//! | `GET /ui/` | dashboard: sites and the version each node holds, stale nodes, jobs under way |
//! | `GET /ui/nodes` | segments and their leaders, nodes as icons (new ones marked), content groups |
//! | `GET /ui/jobs`, `GET /ui/jobs/ID` | jobs; one job with its per-node progress |
//! | `POST /ui/jobs`, `POST /ui/jobs/ID/cancel` | submits a job (publish, rollback, restore, ...); cancels one |
//! | `GET /ui/schedule`, `GET /ui/checkpoints`, `GET /ui/history`, `GET /ui/chart` | schedule, checkpoints, history log, report |
//! | `POST /ui/checkpoints`, `POST /ui/groups`, `POST /ui/segments/leader` | makes a checkpoint; sets a group's members; chooses a segment's leader |
//! | `GET /ui/static/ui.js`, `ui.css` | the script and the style sheet |
//!
//! A page asked with `X-Tern-Fragment: live` answers with its live part only (the page's script asks so). A
//! `GET` without a session goes to the login form (a fragment gets 401); a `POST` must pass
//! [`crate::auth::check_change`], or it changes nothing and is answered 403 (another site, no CSRF token) or
//! 401 (no session).

use askama::Template;
use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use tern_admin::AdminRequest;
use tern_http::{Body, full};
use tern_mover::admission::SubmitError;
use tern_mover::registration::OverrideError;
use tern_mover::schedule::plain_name;
use tern_wire::mover::{ConflictPolicy, JobKind, JobRequest};
use tracing::{info, warn};

use crate::MoverUi;
use crate::auth::{self, Provenance, Verdict};
use crate::form::Form;
use crate::format::{parse_utc, relative, size, utc};
use crate::pages::{self, CheckpointRow, Facts, HistoryRow, Layout, LoginPage, MessagePage, SiteCheckpoints};

/// The script every page loads.
const SCRIPT: &str = include_str!("../static/ui.js");
/// The style sheet.
const STYLE: &str = include_str!("../static/ui.css");

/// What the browser may load and where forms may go: this origin only; no inline script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The header a page's script sets to get the live part only.
const FRAGMENT: &str = "x-tern-fragment";

/// A response with the UI's security headers: no caching, no framing, no sniffing, the policy above.
fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// An HTML page.
fn html(status: StatusCode, text: String) -> Response<Body> {
    respond(status, "text/html; charset=utf-8", text)
}

/// Renders a template; a template that fails to render (a bug) is a 500 that says so.
fn render(status: StatusCode, template: &impl Template) -> Response<Body> {
    match template.render() {
        Ok(text) => html(status, text),
        Err(error) => {
            warn!(%error, "admin UI page did not render");
            respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("the page did not render: {error}"),
            )
        }
    }
}

/// A page that only says something.
fn message(status: StatusCode, title: &str, text: &str, link: &str, link_text: &str) -> Response<Body> {
    render(
        status,
        &MessagePage {
            title: title.into(),
            message: text.into(),
            link: link.into(),
            link_text: link_text.into(),
        },
    )
}

/// A `303 See Other` to `location` (after a form: the browser then asks for it with GET).
fn see_other(location: &str) -> Response<Body> {
    let mut response = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn with_cookie(mut response: Response<Body>, cookie: &str) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// Renders a page whole, or its live part for the page's script.
macro_rules! show {
    ($status:expr, $page:expr, $fragment:expr) => {{
        let page = $page;
        if $fragment {
            render($status, &page.as_live())
        } else {
            render($status, &page)
        }
    }};
}

/// The pages a session may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page<'a> {
    Dashboard,
    Nodes,
    Jobs,
    Job(&'a str),
    Schedule,
    Checkpoints,
    History,
    Chart,
}

impl<'a> Page<'a> {
    fn of(path: &'a str) -> Option<Page<'a>> {
        Some(match path {
            "/ui" | "/ui/" => Page::Dashboard,
            "/ui/nodes" => Page::Nodes,
            "/ui/jobs" => Page::Jobs,
            "/ui/schedule" => Page::Schedule,
            "/ui/checkpoints" => Page::Checkpoints,
            "/ui/history" => Page::History,
            "/ui/chart" => Page::Chart,
            _ => {
                let id = path.strip_prefix("/ui/jobs/")?;
                if id.is_empty() || id.contains('/') {
                    return None;
                }
                Page::Job(id)
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Page::Dashboard => "dashboard",
            Page::Nodes => "nodes",
            Page::Jobs | Page::Job(_) => "jobs",
            Page::Schedule => "schedule",
            Page::Checkpoints => "checkpoints",
            Page::History => "history",
            Page::Chart => "chart",
        }
    }

    fn title(self) -> String {
        match self {
            Page::Dashboard => "Dashboard".into(),
            Page::Nodes => "Nodes".into(),
            Page::Jobs => "Jobs".into(),
            Page::Job(id) => format!("Job {id}"),
            Page::Schedule => "Schedule".into(),
            Page::Checkpoints => "Checkpoints".into(),
            Page::History => "History".into(),
            Page::Chart => "Report".into(),
        }
    }
}

impl MoverUi {
    /// Answers a request under `/ui` at `now_ms`.
    pub async fn handle(&self, request: &AdminRequest, now_ms: u64) -> Response<Body> {
        if self.settings.token.is_none() {
            return message(
                StatusCode::NOT_FOUND,
                "Admin UI off",
                "The admin web UI is off: start the mover with --admin-token FILE (a key file made with `tern keygen FILE`).",
                "",
                "",
            );
        }
        match (&request.method, request.path.as_str()) {
            (&Method::GET, "/ui/static/ui.js") => respond(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT),
            (&Method::GET, "/ui/static/ui.css") => respond(StatusCode::OK, "text/css; charset=utf-8", STYLE),
            (&Method::GET, "/ui/login") => render(StatusCode::OK, &LoginPage { error: None }),
            (&Method::POST, "/ui/login") => self.login(request, now_ms),
            (&Method::POST, _) => self.change(request, now_ms).await,
            (&Method::GET, path) => match Page::of(path) {
                Some(page) => self.page(request, page, now_ms).await,
                None => message(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    &format!("There is no page {path}."),
                    "/ui/",
                    "Dashboard",
                ),
            },
            (method, path) => message(
                StatusCode::METHOD_NOT_ALLOWED,
                "Not allowed",
                &format!("{method} {path} is not something the UI does."),
                "/ui/",
                "Dashboard",
            ),
        }
    }

    /// `POST /ui/login`: the admin token opens a session.
    fn login(&self, request: &AdminRequest, now_ms: u64) -> Response<Body> {
        if let Provenance::CrossSite(reason) = auth::provenance(&request.headers, self.settings.secure) {
            warn!(client = %request.client, %reason, "admin UI login from another site refused");
            return message(
                StatusCode::FORBIDDEN,
                "Refused",
                "A login must come from the UI's own page.",
                "/ui/login",
                "Log in",
            );
        }
        let Some(token) = &self.settings.token else {
            return message(
                StatusCode::NOT_FOUND,
                "Admin UI off",
                "The admin web UI is off.",
                "",
                "",
            );
        };
        let presented = Form::parse(&request.body)
            .ok()
            .and_then(|form| form.get("token").map(str::to_string))
            .unwrap_or_default();
        // The whole key file pasted works too: its first line that is not a comment is the token.
        let line = presented
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .unwrap_or("");
        if !token.matches_token(line) {
            warn!(client = %request.client, "admin UI login refused: not the admin token");
            return render(
                StatusCode::UNAUTHORIZED,
                &LoginPage {
                    error: Some("That is not the admin token.".into()),
                },
            );
        }
        let opened = self.sessions().open(now_ms);
        let (id, _) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                warn!(%error, "admin UI session not opened: no randomness");
                return message(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "No session",
                    "The mover could not make a session id (no randomness available).",
                    "/ui/login",
                    "Try again",
                );
            }
        };
        info!(client = %request.client, "admin UI login");
        let ttl = self.sessions().ttl();
        with_cookie(see_other("/ui/"), &auth::set_cookie(&id, ttl, self.settings.secure))
    }

    /// The frame of a page for a session whose CSRF token is `csrf`.
    fn layout(&self, page: Page<'_>, csrf: &str, now_ms: u64, error: Option<String>) -> Layout {
        Layout {
            page: page.name(),
            title: page.title(),
            csrf: csrf.to_string(),
            refresh_ms: u64::try_from(self.settings.refresh.as_millis()).unwrap_or(2000),
            now: utc(now_ms),
            error,
        }
    }

    /// A page, for a session.
    async fn page(&self, request: &AdminRequest, page: Page<'_>, now_ms: u64) -> Response<Body> {
        let fragment = request.headers.get(FRAGMENT).is_some_and(|value| value == "live");
        let session = auth::session_id(&request.headers).and_then(|id| self.sessions().find(id, now_ms));
        let Some(session) = session else {
            if fragment {
                return respond(StatusCode::UNAUTHORIZED, "text/plain; charset=utf-8", "log in again");
            }
            return see_other("/ui/login");
        };
        let layout = self.layout(page, &session.csrf, now_ms, None);
        self.show(layout, page, StatusCode::OK, fragment, now_ms).await
    }

    /// Renders `page` with `layout` (whose error, if any, says why an action was refused).
    async fn show(
        &self,
        layout: Layout,
        page: Page<'_>,
        status: StatusCode,
        fragment: bool,
        now_ms: u64,
    ) -> Response<Body> {
        let mover = &self.mover;
        let silent_after_ms = u64::try_from(self.settings.silent_after.as_millis()).unwrap_or(u64::MAX);
        let unavailable = |error: String| {
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
                &format!("The mover's database did not answer: {error}"),
                "/ui/",
                "Try again",
            )
        };
        match page {
            Page::Dashboard => {
                let facts = match Facts::read(mover).await {
                    Ok(facts) => facts,
                    Err(error) => return unavailable(error),
                };
                let holdings = match mover.holdings().await {
                    Ok(holdings) => holdings,
                    Err(error) => return unavailable(error.to_string()),
                };
                let jobs = match mover.jobs(self.settings.list_limit).await {
                    Ok(jobs) => jobs,
                    Err(error) => return unavailable(error.to_string()),
                };
                show!(
                    status,
                    pages::dashboard(layout, &facts, &holdings, &jobs, now_ms, silent_after_ms),
                    fragment
                )
            }
            Page::Nodes => match Facts::read(mover).await {
                Ok(facts) => show!(status, pages::nodes(layout, &facts, now_ms, silent_after_ms), fragment),
                Err(error) => unavailable(error),
            },
            Page::Jobs | Page::Schedule => {
                let facts = match Facts::read(mover).await {
                    Ok(facts) => facts,
                    Err(error) => return unavailable(error),
                };
                let sites = match mover.sites().await {
                    Ok(sites) => sites.into_iter().map(|site| site.name).collect(),
                    Err(error) => return unavailable(error.to_string()),
                };
                let jobs = match mover.jobs(self.settings.list_limit).await {
                    Ok(jobs) => jobs,
                    Err(error) => return unavailable(error.to_string()),
                };
                let choices = facts.choices(sites);
                if page == Page::Schedule {
                    return show!(status, pages::schedule(layout, choices, &jobs, now_ms), fragment);
                }
                let rows = jobs.iter().map(|job| pages::JobRow::of(job, now_ms)).collect();
                show!(
                    status,
                    pages::JobsPage {
                        layout,
                        choices,
                        jobs: rows,
                    },
                    fragment
                )
            }
            Page::Job(id) => match mover.job(id).await {
                Some(job) => show!(status, pages::job(layout, &job, now_ms), fragment),
                None => message(
                    StatusCode::NOT_FOUND,
                    "No such job",
                    &format!("The mover has no job {id}."),
                    "/ui/jobs",
                    "Jobs",
                ),
            },
            Page::Checkpoints => {
                let sites = match mover.sites().await {
                    Ok(sites) => sites,
                    Err(error) => return unavailable(error.to_string()),
                };
                let mut listed = Vec::with_capacity(sites.len());
                for site in sites {
                    let mut checkpoints = mover.checkpoints(&site.name).await;
                    checkpoints.sort_by_key(|checkpoint| std::cmp::Reverse(checkpoint.number));
                    listed.push(SiteCheckpoints {
                        version: site.sequence,
                        checkpoints: checkpoints
                            .iter()
                            .map(|c| CheckpointRow {
                                number: c.number,
                                version: c.version,
                                created: utc(c.created_ms),
                                size: size(c.bytes),
                            })
                            .collect(),
                        name: site.name,
                    });
                }
                show!(status, pages::CheckpointsPage { layout, sites: listed }, fragment)
            }
            Page::History => match mover.history(self.settings.history_limit).await {
                Ok(entries) => show!(
                    status,
                    pages::HistoryPage {
                        layout,
                        entries: entries
                            .into_iter()
                            .map(|entry| HistoryRow {
                                at: format!("{} ({})", utc(entry.at_ms), relative(now_ms, entry.at_ms)),
                                job: entry.job.unwrap_or_default(),
                                message: entry.message,
                            })
                            .collect(),
                    },
                    fragment
                ),
                Err(error) => unavailable(error.to_string()),
            },
            Page::Chart => match mover.jobs(self.settings.list_limit).await {
                Ok(jobs) => show!(status, pages::chart(layout, &jobs), fragment),
                Err(error) => unavailable(error.to_string()),
            },
        }
    }

    /// A `POST` other than the login: guarded, then acted on.
    async fn change(&self, request: &AdminRequest, now_ms: u64) -> Response<Body> {
        let form = match Form::parse(&request.body) {
            Ok(form) => form,
            Err(error) => {
                return message(
                    StatusCode::BAD_REQUEST,
                    "Bad form",
                    &error.to_string(),
                    "/ui/",
                    "Dashboard",
                );
            }
        };
        let verdict = auth::check_change(
            &mut self.sessions(),
            &request.headers,
            form.get("csrf"),
            self.settings.secure,
            now_ms,
        );
        let (id, session) = match verdict {
            Verdict::Allowed { id, session } => (id, session),
            Verdict::CrossSite(reason) => {
                warn!(client = %request.client, path = %request.path, %reason, "admin UI request from another site refused");
                return message(
                    StatusCode::FORBIDDEN,
                    "Refused",
                    "This request did not come from the UI's own pages; nothing was changed.",
                    "/ui/",
                    "Dashboard",
                );
            }
            Verdict::NoSession => {
                return message(
                    StatusCode::UNAUTHORIZED,
                    "Log in first",
                    "There is no session (or it ended); nothing was changed.",
                    "/ui/login",
                    "Log in",
                );
            }
            Verdict::BadToken => {
                warn!(client = %request.client, path = %request.path, "admin UI request without the session's CSRF token refused");
                return message(
                    StatusCode::FORBIDDEN,
                    "Refused",
                    "The form did not carry this session's token (reload the page and try again); nothing was changed.",
                    "/ui/",
                    "Dashboard",
                );
            }
        };
        let path = request.path.as_str();
        let csrf = session.csrf.as_str();
        match path {
            "/ui/logout" => {
                self.sessions().close(&id);
                with_cookie(see_other("/ui/login"), &auth::clear_cookie(self.settings.secure))
            }
            "/ui/jobs" => match self.submit(&form).await {
                Ok(job) => {
                    info!(client = %request.client, %job, "job submitted from the admin UI");
                    see_other(&format!("/ui/jobs/{job}"))
                }
                Err((status, error)) => self.refused(Page::Jobs, csrf, now_ms, status, error).await,
            },
            "/ui/checkpoints" => {
                let site = form.text("site").unwrap_or("");
                match self.mover.checkpoint(site).await {
                    Ok(_) => see_other("/ui/checkpoints"),
                    Err(error) => {
                        self.refused(Page::Checkpoints, csrf, now_ms, StatusCode::BAD_REQUEST, error)
                            .await
                    }
                }
            }
            "/ui/groups" => match self.set_group(&form, now_ms).await {
                Ok(()) => see_other("/ui/nodes#groups"),
                Err((status, error)) => self.refused(Page::Nodes, csrf, now_ms, status, error).await,
            },
            "/ui/segments/leader" => {
                let segment = form.text("segment").unwrap_or("");
                let leader = form.text("leader").map(str::to_string);
                match self.mover.override_leader(segment, leader, now_ms).await {
                    Ok(_) => see_other("/ui/nodes"),
                    Err(error) => {
                        let status = match error {
                            OverrideError::NoSegment(_) => StatusCode::NOT_FOUND,
                            OverrideError::NotAMember { .. } => StatusCode::BAD_REQUEST,
                            _ => StatusCode::INTERNAL_SERVER_ERROR,
                        };
                        self.refused(Page::Nodes, csrf, now_ms, status, error.to_string()).await
                    }
                }
            }
            _ => {
                let Some(job) = path
                    .strip_prefix("/ui/jobs/")
                    .and_then(|rest| rest.strip_suffix("/cancel"))
                else {
                    return message(
                        StatusCode::NOT_FOUND,
                        "Not found",
                        &format!("There is no action {path}."),
                        "/ui/",
                        "Dashboard",
                    );
                };
                match self.mover.cancel(job).await {
                    Ok(()) => see_other(&format!("/ui/jobs/{job}")),
                    Err(error) => {
                        let status = submit_status(&error);
                        self.refused(Page::Job(job), csrf, now_ms, status, error.to_string())
                            .await
                    }
                }
            }
        }
    }

    /// The page an action came from, saying why it was refused.
    async fn refused(
        &self,
        page: Page<'_>,
        csrf: &str,
        now_ms: u64,
        status: StatusCode,
        error: String,
    ) -> Response<Body> {
        let layout = self.layout(page, csrf, now_ms, Some(error));
        self.show(layout, page, status, false, now_ms).await
    }

    /// Submits the job the form describes, through the mover's admission (as `POST /api/jobs` does).
    async fn submit(&self, form: &Form) -> Result<String, (StatusCode, String)> {
        let bad = |message: String| (StatusCode::BAD_REQUEST, message);
        let kind: JobKind = form
            .text("kind")
            .unwrap_or("")
            .parse()
            .map_err(|error: tern_wire::mover::UnknownValue| bad(error.to_string()))?;
        let site = form.text("site").ok_or_else(|| bad("give the site".into()))?;
        let mut request = JobRequest::new(kind, site);
        request.staging = form.text("staging").map(str::to_string);
        request.checkpoint = number(form, "checkpoint").map_err(bad)?;
        match form.text("target") {
            None => {}
            Some(target) => match target.split_once(':') {
                Some(("group", group)) => request.group = Some(group.to_string()),
                Some(("node", node)) => request.node = Some(node.to_string()),
                _ => return Err(bad(format!("`{target}` is not a group or a node"))),
            },
        }
        request.at_ms = match form.text("at") {
            None => None,
            Some(at) => Some(parse_utc(at).ok_or_else(|| bad(format!("`{at}` is not a date and time")))?),
        };
        request.every_s = number(form, "every_s").map_err(bad)?;
        request.retries = number(form, "retries").map_err(bad)?;
        request.on_conflict = match form.text("on_conflict") {
            None => None,
            Some(policy) => Some(
                policy
                    .parse::<ConflictPolicy>()
                    .map_err(|error| bad(error.to_string()))?,
            ),
        };
        let (spec, due_ms) = request.into_spec().map_err(|error| bad(error.to_string()))?;
        self.mover
            .submit(spec, due_ms)
            .await
            .map_err(|error| (submit_status(&error), error.to_string()))
    }

    /// Sets a content group's members from the form's checked boxes.
    async fn set_group(&self, form: &Form, now_ms: u64) -> Result<(), (StatusCode, String)> {
        let group = form.text("group").unwrap_or("");
        if !plain_name(group) {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "`{group}` is not a plain group name: 1 to 128 letters, digits, `-`, `_` or `.`, not starting with `.`"
                ),
            ));
        }
        let nodes: Vec<String> = form.all("node").map(str::to_string).collect();
        if let Some(node) = nodes.iter().find(|node| !plain_name(node)) {
            return Err((StatusCode::BAD_REQUEST, format!("`{node}` is not a plain node name")));
        }
        self.mover
            .set_group(group, nodes, now_ms)
            .await
            .map_err(|error| (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))
    }
}

/// A form's optional number field.
fn number<T: std::str::FromStr>(form: &Form, name: &str) -> Result<Option<T>, String> {
    match form.text(name) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| format!("{name} `{text}` is not a number")),
    }
}

/// The status the API gives the same refusal.
fn submit_status(error: &SubmitError) -> StatusCode {
    match error {
        SubmitError::Invalid(_) => StatusCode::BAD_REQUEST,
        SubmitError::Conflict(_) => StatusCode::CONFLICT,
        SubmitError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_found_by_path() {
        assert_eq!(Page::of("/ui/"), Some(Page::Dashboard));
        assert_eq!(Page::of("/ui"), Some(Page::Dashboard));
        assert_eq!(Page::of("/ui/jobs/publish-1-0"), Some(Page::Job("publish-1-0")));
        assert_eq!(Page::of("/ui/jobs/"), None);
        assert_eq!(Page::of("/ui/jobs/a/b"), None);
        assert_eq!(Page::of("/ui/nope"), None);
    }
}
