//! The mover's JSON API (the CCM's interface; the clients `tern publish`, `tern jobs`, ... and the nodes use
//! it). The bodies are the types of [`tern_wire::mover`]:
//!
//! | request | what |
//! |---|---|
//! | `POST /api/nodes/register` | a node registers: [`Registration`] → [`tern_wire::mover::Registered`] |
//! | `GET /api/nodes` | registered nodes |
//! | `GET /api/groups`, `PUT /api/groups/NAME` | content groups; PUT sets them: [`GroupRequest`] |
//! | `GET /api/sites`, `GET /api/sites/NAME` | hosted sites, with snapshots, checkpoints and the caches in front of them ([`tern_wire::mover::SiteCaches`]) |
//! | `POST /api/jobs` | a job: [`JobRequest`] → [`JobCreated`] (202) |
//! | `GET /api/jobs`, `GET /api/jobs/ID` | jobs, newest first, with per-node state: [`tern_wire::mover::Job`] |
//! | `POST /api/jobs/ID/cancel` | cancels a job that has not started: [`JobCancelled`] |
//! | `POST /api/checkpoints`, `GET /api/checkpoints?site=S` | create (now) and list checkpoints |
//! | `GET /api/history?limit=N` | the history log: [`tern_wire::mover::HistoryEntry`] |
//! | `POST /api/segments/report` | a group leader's segment report: one frame tagged with the cluster key → the answer frame ([`tern_wire::segment`]) |
//! | `GET /api/segments`, `GET /api/segments/NAME` | network segments, their leaders and members: [`tern_wire::segment::SegmentView`] |
//! | `POST /api/segments/NAME/leader` | overrides a segment's leader: [`OverrideRequest`] → its view |
//! | `GET /api/tree/assignments/ID?for=NODE` | the assignment of a running store-and-forward tree, served as its root to a node presenting the cluster key's `tern-tree-token` for it ([`crate::tree_delivery`], [`tern_wire::tree::fetch_token`]) |
//! | `POST /api/tree/holding`, `/api/tree/next`, `/api/tree/status` | a group leader's holding report, request for the next leader (→ the answer frame), assignment status report: frames tagged with the cluster key ([`tern_wire::tree`]) |
//!
//! Every refusal is `{"error": REASON}` ([`tern_wire::mover::ErrorAnswer`]) with a 4xx or 5xx status.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tern_http::Body;
use tern_http::server::Handler;
use tern_wire::mover::{
    CheckpointCreated, CheckpointRequest, GroupRequest, JobCancelled, JobCreated, JobRequest, JobState, Registration,
};
use tracing::warn;

use tern_wire::segment::OverrideRequest;

use crate::admission::SubmitError;
use crate::ccm::{Mover, now_ms};
use crate::registration::{OverrideError, RegisterError};
use crate::schedule::plain_name;
use crate::store_thread::StoreError;

/// Largest request body the API reads.
pub const MAX_REQUEST_BODY: usize = 1 << 20;

/// Most entries `GET /api/jobs` and `GET /api/history` return (`?limit=N`, default 100).
pub const MAX_LIST: usize = 10_000;

/// The API handler.
pub struct Api {
    mover: Arc<Mover>,
}

impl Api {
    /// The API of `mover`.
    pub fn new(mover: Arc<Mover>) -> Self {
        Api { mover }
    }
}

fn json(status: StatusCode, value: impl Serialize) -> Response<Body> {
    match serde_json::to_value(value) {
        Ok(value) => tern_admin::json(status, &value),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    tern_admin::json_error(status, message)
}

/// A refusal: an error response, boxed (it is the rare path of [`Answer`]).
type Refusal = Box<Response<Body>>;

/// What a route answers: `Ok` or a refusal, both responses.
type Answer = Result<Response<Body>, Refusal>;

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Box::new(error(status, message))
}

fn store_error(e: StoreError) -> Refusal {
    refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn submit_error(e: SubmitError) -> Refusal {
    match e {
        SubmitError::Invalid(message) => refuse(StatusCode::BAD_REQUEST, message),
        SubmitError::Conflict(message) => refuse(StatusCode::CONFLICT, message),
        SubmitError::Store(e) => store_error(e),
    }
}

fn query<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn limit(query_text: Option<&str>) -> usize {
    query(query_text, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(100usize)
        .min(MAX_LIST)
}

/// Whether `path` is one of the routes nodes call themselves: registration, segment reports and the
/// store-and-forward tree, which need no API token (the tree's and the reports' frames carry the cluster
/// key's tag; a registration only offers a node, which must still hold the mover's public key to apply
/// anything).
fn for_nodes(path: &str) -> bool {
    path == "/api/nodes/register" || path == SEGMENT_REPORT || path.starts_with("/api/tree/")
}

/// The token of an `Authorization: Bearer TOKEN` field.
fn bearer<B>(request: &Request<B>) -> Option<&str> {
    tern_admin::bearer_token(request.headers().get(http::header::AUTHORIZATION)?)
}

/// Why a state-changing request looks like it was sent by a web page, if it does: its `Origin` or
/// `Sec-Fetch-Site` field (RFC 6454; Fetch Metadata). The API's clients (`tern publish` and friends, nodes,
/// group leaders) never send them; a browser always does on a cross-origin POST, also for the "simple"
/// `text/plain` bodies that skip CORS preflight. Without this any page open in an operator's browser could
/// submit a publish of any directory on the mover's machine. GET and HEAD change nothing and pass.
fn from_a_browser<B>(request: &Request<B>) -> Option<String> {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "none"
    {
        return Some(format!("Sec-Fetch-Site is {site}"));
    }
    headers
        .get(http::header::ORIGIN)
        .map(|origin| format!("Origin is {}", origin.to_str().unwrap_or("not text")))
}

/// Reads a JSON body; a body that does not parse is refused (400) with `shape`, what it should look like.
fn parse<T: DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("{shape}: {e}")))
}

impl Handler for Api {
    async fn call(&self, request: Request<Incoming>, _client: SocketAddr) -> Response<Body> {
        if let Some(reason) = from_a_browser(&request) {
            warn!(method = %request.method(), path = request.uri().path(), %reason, "api request from a web page refused");
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "the API takes no state-changing requests from web pages ({reason}); use the tern command \
                     line, or the admin UI on --admin"
                ),
            );
        }
        if let Some(token) = &self.mover.config.api_token
            && !for_nodes(request.uri().path())
            && !bearer(&request).is_some_and(|presented| token.matches_token(presented))
        {
            warn!(method = %request.method(), path = request.uri().path(), "api request without the api token refused");
            return error(
                StatusCode::UNAUTHORIZED,
                "this mover needs its API token and the request had none or another: send the token of its \
                 --api-token key file (tern: set TERN_API_TOKEN_FILE to that file; others: Authorization: \
                 Bearer <token>)",
            );
        }
        let (parts, body) = request.into_parts();
        let body = match tern_http::collect_within(body, MAX_REQUEST_BODY, tern_http::REQUEST_BODY_DEADLINE).await {
            Ok(body) => body,
            Err(refused) => {
                if parts.uri.path() == SEGMENT_REPORT {
                    self.mover.segment_intake().count_refusal("oversized");
                }
                return error(refused.status(), refused.to_string());
            }
        };
        let path = parts.uri.path();
        let mover = &self.mover;
        let outcome = match (&parts.method, path) {
            (&Method::POST, "/api/nodes/register") => register(mover, &body).await,
            (&Method::GET, "/api/nodes") => Ok(json(StatusCode::OK, mover.nodes().await)),
            (&Method::DELETE, _) if path.starts_with("/api/nodes/") => {
                let name = &path["/api/nodes/".len()..];
                match mover.remove_node(name).await {
                    Ok(Some(groups)) => Ok(json(
                        StatusCode::OK,
                        serde_json::json!({ "removed": name, "left_groups": groups }),
                    )),
                    Ok(None) => Err(refuse(StatusCode::NOT_FOUND, format!("no node {name}"))),
                    Err(error) => Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, error)),
                }
            }
            (&Method::GET, "/api/groups") => groups(mover).await,
            (&Method::PUT, _) if path.starts_with("/api/groups/") => {
                set_group(mover, &path["/api/groups/".len()..], &body).await
            }
            (&Method::GET, "/api/sites") => mover
                .sites()
                .await
                .map(|sites| json(StatusCode::OK, sites))
                .map_err(store_error),
            (&Method::GET, _) if path.starts_with("/api/sites/") => site(mover, &path["/api/sites/".len()..]).await,
            (&Method::POST, "/api/checkpoints") => checkpoint(mover, &body).await,
            (&Method::GET, "/api/checkpoints") => checkpoints(mover, query(parts.uri.query(), "site")).await,
            (&Method::POST, "/api/jobs") => submit(mover, &body).await,
            (&Method::GET, "/api/jobs") => {
                let limit = limit(parts.uri.query());
                mover
                    .jobs(limit)
                    .await
                    .map(|jobs| json(StatusCode::OK, jobs))
                    .map_err(store_error)
            }
            (&Method::POST, _) if path.starts_with("/api/jobs/") && path.ends_with("/cancel") => {
                let id = &path["/api/jobs/".len()..path.len() - "/cancel".len()];
                match mover.cancel(id).await {
                    Ok(()) => Ok(json(
                        StatusCode::OK,
                        JobCancelled {
                            id: id.to_string(),
                            state: JobState::Cancelled,
                        },
                    )),
                    Err(e) => Err(submit_error(e)),
                }
            }
            (&Method::GET, _) if path.starts_with("/api/jobs/") => match mover.job(&path["/api/jobs/".len()..]).await {
                Some(job) => Ok(json(StatusCode::OK, job)),
                None => Err(refuse(StatusCode::NOT_FOUND, "no such job")),
            },
            (&Method::GET, "/api/history") => {
                let limit = limit(parts.uri.query());
                mover
                    .history(limit)
                    .await
                    .map(|entries| json(StatusCode::OK, entries))
                    .map_err(store_error)
            }
            (&Method::POST, SEGMENT_REPORT) => segment_report(mover, &body).await,
            (&Method::GET, "/api/segments") => Ok(json(
                StatusCode::OK,
                mover.segments().views().into_iter().map(shown).collect::<Vec<_>>(),
            )),
            (&Method::POST, _) if path.starts_with("/api/segments/") && path.ends_with("/leader") => {
                let name = &path["/api/segments/".len()..path.len() - "/leader".len()];
                override_leader(mover, name, &body).await
            }
            (&Method::GET, _) if path.starts_with("/api/segments/") => {
                let name = &path["/api/segments/".len()..];
                match mover.segments().view(name) {
                    Some(view) => Ok(json(StatusCode::OK, shown(view))),
                    None => Err(refuse(StatusCode::NOT_FOUND, format!("no segment {name}"))),
                }
            }
            (&Method::GET, _) if path.starts_with("/api/tree/assignments/") => {
                let requester = query(parts.uri.query(), "for").unwrap_or("");
                let token = parts
                    .headers
                    .get(tern_wire::tree::FETCH_TOKEN_HEADER)
                    .and_then(|value| value.to_str().ok());
                Ok(mover
                    .trees
                    .serve(&path["/api/tree/assignments/".len()..], requester, token))
            }
            (&Method::POST, "/api/tree/holding") => Ok(mover.trees.holding(&body)),
            (&Method::POST, "/api/tree/next") => Ok(mover.trees.next(&body)),
            (&Method::POST, "/api/tree/status") => Ok(mover.trees.status_report(&body)),
            (&Method::GET, "/status") => Ok(json(StatusCode::OK, mover.status().await)),
            _ => Err(refuse(
                StatusCode::NOT_FOUND,
                format!("no endpoint {} {path}", parts.method),
            )),
        };
        outcome.unwrap_or_else(|refusal| *refusal)
    }
}

/// Registrations refused for the node's setup (another machine holds the name, the node cannot open this
/// mover's assignments) are logged at most every 30 s per node name: a refused node tries again every
/// 10 s, and one node's refusals must not hide another's.
static REFUSAL_WARNINGS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, tern_admin::Throttle<String>>>,
> = std::sync::LazyLock::new(Default::default);

/// Names kept in [`REFUSAL_WARNINGS`] before it starts afresh (names come from the network).
const REFUSAL_NAMES: usize = 1024;

fn warn_refused(error: &RegisterError) {
    let name = match error {
        RegisterError::Taken { name, .. } | RegisterError::Encryption { name, .. } => name.as_str(),
        _ => "",
    };
    let mut throttles = REFUSAL_WARNINGS.lock().unwrap_or_else(|p| p.into_inner());
    if throttles.len() >= REFUSAL_NAMES && !throttles.contains_key(name) {
        throttles.clear();
    }
    let due = throttles
        .entry(name.to_string())
        .or_default()
        .check(error.to_string(), std::time::Instant::now());
    if let Some(suppressed) = due {
        warn!(%error, suppressed, "registration refused");
    }
}

async fn register(mover: &Mover, body: &[u8]) -> Answer {
    let registration: Registration = match mover.trees.open_registration(body)? {
        Some(tagged) => tagged,
        None => parse(
            body,
            "a registration is {\"name\", \"url\", \"free_disk\", \"cpus\", \"groups\", \"versions\", \"prepared\"}",
        )?,
    };
    match mover.register(registration, now_ms()).await {
        Ok(registered) => Ok(json(StatusCode::OK, registered)),
        Err(
            e @ (RegisterError::Name(_) | RegisterError::Instance(_) | RegisterError::Url(_) | RegisterError::Group(_)),
        ) => Err(refuse(StatusCode::BAD_REQUEST, e.to_string())),
        Err(e @ RegisterError::Encryption { .. }) => {
            warn_refused(&e);
            Err(refuse(StatusCode::BAD_REQUEST, e.to_string()))
        }
        Err(e @ RegisterError::Taken { .. }) => {
            warn_refused(&e);
            Err(refuse(StatusCode::CONFLICT, e.to_string()))
        }
        Err(RegisterError::Store(e)) => Err(store_error(e)),
    }
}

/// Where group leaders send their segment reports.
const SEGMENT_REPORT: &str = "/api/segments/report";

async fn segment_report(mover: &Mover, body: &[u8]) -> Answer {
    match mover.take_segment_report(body, now_ms()).await {
        Ok(answer) => {
            let mut response = Response::new(tern_http::body::full(answer));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/vnd.tern.frame"),
            );
            Ok(response)
        }
        Err(e) => Err(refuse(e.status(), e.to_string())),
    }
}

async fn override_leader(mover: &Mover, segment: &str, body: &[u8]) -> Answer {
    const SHAPE: &str = "an override is {\"leader\": NODE or null}";
    // `leader` must be there, alone: a misspelt field would otherwise read as `null` and clear the override.
    let fields: serde_json::Map<String, serde_json::Value> = parse(body, SHAPE)?;
    if fields.len() != 1 || !fields.contains_key("leader") {
        let given: Vec<&str> = fields.keys().map(String::as_str).collect();
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("{SHAPE}, with no other field; given: {given:?}"),
        ));
    }
    let request: OverrideRequest = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("{SHAPE}: {e}")))?;
    if let Some(node) = &request.leader
        && !plain_name(node)
    {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "`{node}` is not a plain node name: 1 to 128 letters, digits, `-`, `_` or `.`, not starting with `.`"
            ),
        ));
    }
    match mover.override_leader(segment, request.leader, now_ms()).await {
        Ok(view) => Ok(json(StatusCode::OK, shown(view))),
        Err(e @ OverrideError::NoSegment(_)) => Err(refuse(StatusCode::NOT_FOUND, e.to_string())),
        Err(e @ OverrideError::NotAMember { .. }) => Err(refuse(StatusCode::BAD_REQUEST, e.to_string())),
        Err(OverrideError::Store(e)) => Err(store_error(e)),
    }
}

async fn groups(mover: &Mover) -> Answer {
    let groups = mover.groups().await.map_err(store_error)?;
    let groups: serde_json::Map<String, serde_json::Value> = groups
        .into_iter()
        .map(|(group, nodes)| (group, serde_json::json!(nodes)))
        .collect();
    Ok(json(StatusCode::OK, groups))
}

async fn set_group(mover: &Mover, group: &str, body: &[u8]) -> Answer {
    if !plain_name(group) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "`{group}` is not a plain group name: 1 to 128 letters, digits, `-`, `_` or `.`, not starting with `.`"
            ),
        ));
    }
    let request: GroupRequest = parse(body, "a group is {\"nodes\": [names]}")?;
    if let Some(bad) = request.nodes.iter().find(|node| !plain_name(node)) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "`{}` is not a plain node name: 1 to 128 letters, digits, `-`, `_` or `.`, not starting with `.`",
                tern_wire::cut_at(bad, 130)
            ),
        ));
    }
    mover
        .set_group(group, request.nodes.clone(), now_ms())
        .await
        .map_err(store_error)?;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "group": group, "nodes": request.nodes }),
    ))
}

async fn site(mover: &Mover, name: &str) -> Answer {
    let wanted = name.to_string();
    let read = mover
        .store
        .call(move |store| {
            let Some(site) = store.site(&wanted)? else {
                return Ok(Err(store.is_removed(&wanted)?));
            };
            let caches = store.site_caches(&wanted)?;
            Ok(Ok((
                site,
                store.snapshots(&wanted)?,
                store.checkpoints(&wanted)?,
                caches,
            )))
        })
        .await
        .map_err(store_error)?;
    let (site, snapshots, checkpoints, caches) = match read {
        Ok(found) => found,
        Err(true) => {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                format!("site {name} was removed (a new publish of it keeps its caches and numbers its versions on)"),
            ));
        }
        Err(false) => return Err(refuse(StatusCode::NOT_FOUND, format!("no site {name}"))),
    };
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "site": site, "snapshots": snapshots, "checkpoints": checkpoints, "caches": caches }),
    ))
}

/// A segment as the API shows it: [`tern_wire::segment::SegmentView`] and `leader_silent` (its leader has
/// not reported for 30 s: the mover serves its members directly, [`crate::segments::leader_silent`]),
/// without its members' instance ids, which no answer shows (a node's instance id is what holds its name
/// against another machine's registration).
fn shown(mut view: tern_wire::segment::SegmentView) -> serde_json::Value {
    for member in &mut view.members {
        member.profile.instance.clear();
    }
    let silent = crate::segments::leader_silent(&view, now_ms());
    let mut shown = serde_json::to_value(view).unwrap_or_default();
    if let Some(fields) = shown.as_object_mut() {
        fields.insert("leader_silent".into(), serde_json::Value::Bool(silent));
    }
    shown
}

/// The checkpoints of a site; 404 for a site the mover never hosted (an empty list would read as "none
/// yet").
async fn checkpoints(mover: &Mover, site: Option<&str>) -> Answer {
    let Some(site) = site.filter(|site| !site.is_empty()) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "name the site: GET /api/checkpoints?site=NAME",
        ));
    };
    let wanted = site.to_string();
    let (known, checkpoints) = mover
        .store
        .call(move |store| Ok((store.site(&wanted)?.is_some(), store.checkpoints(&wanted)?)))
        .await
        .map_err(store_error)?;
    if !known && checkpoints.is_empty() {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no site {site}: it was never published (GET /api/sites lists the hosted sites)"),
        ));
    }
    Ok(json(StatusCode::OK, checkpoints))
}

async fn checkpoint(mover: &Mover, body: &[u8]) -> Answer {
    let request: CheckpointRequest = parse(body, "a checkpoint request is {\"site\"}")?;
    match mover.checkpoint(&request.site).await {
        Ok(number) => Ok(json(
            StatusCode::OK,
            CheckpointCreated {
                site: request.site,
                number,
            },
        )),
        Err(message) => Err(refuse(StatusCode::BAD_REQUEST, message)),
    }
}

async fn submit(mover: &Mover, body: &[u8]) -> Answer {
    let request: JobRequest = parse(
        body,
        "a job is {\"kind\", \"site\", \"staging\", \"checkpoint\", \"group\" or \"node\", \"at_ms\", \"every_s\", \"on_conflict\", \"retries\", \"retry_delay_s\", \"include\", \"exclude\", \"caches\"}",
    )?;
    let (spec, at) = request
        .into_spec()
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
    match mover.submit(spec, at).await {
        Ok(id) => Ok(json(StatusCode::ACCEPTED, JobCreated { id })),
        Err(e) => Err(submit_error(e)),
    }
}
