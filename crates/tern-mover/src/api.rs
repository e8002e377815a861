//! The mover's JSON API (the CCM's interface; the clients `tern publish`, `tern jobs`, ... and the nodes use it):
//!
//! | request | what |
//! |---|---|
//! | `POST /api/nodes/register` | a node registers: `{name, url, free_disk, cpus, groups, versions}` |
//! | `GET /api/nodes` | registered nodes |
//! | `GET /api/groups`, `PUT /api/groups/NAME` | content groups; PUT sets `{"nodes": [...]}` |
//! | `GET /api/sites`, `GET /api/sites/NAME` | hosted sites, with snapshots and checkpoints |
//! | `POST /api/jobs` | a job (see [`JobRequest`]) |
//! | `GET /api/jobs`, `GET /api/jobs/ID` | jobs, newest first, with per-node state |
//! | `POST /api/jobs/ID/cancel` | cancels a job that has not started |
//! | `POST /api/checkpoints`, `GET /api/checkpoints?site=S` | create (now) and list checkpoints |
//! | `GET /api/history?limit=N` | the history log |

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tern_http::Body;
use tern_http::server::Handler;

use crate::rules::Rules;
use crate::schedule::{ConflictPolicy, JobSpec, Target};
use crate::service::{Mover, SubmitError, now_ms};
use crate::store::Node;

/// A job as the API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// `publish`, `synchronise`, `replicate`, `remove`, `rollback`, `restore`, `checkpoint`.
    pub kind: String,
    /// The hosted site.
    pub site: String,
    /// Staging directory on the mover's machine (publish).
    pub staging: Option<String>,
    /// Checkpoint number (restore).
    pub checkpoint: Option<u64>,
    /// Only this content group's nodes (a publish hosts the site there from then on).
    pub group: Option<String>,
    /// Only this node.
    pub node: Option<String>,
    /// When to run (ms since the epoch); default now.
    pub at_ms: Option<u64>,
    /// Run again every this many seconds.
    pub every_s: Option<u64>,
    /// `queue` (default) or `refuse` when it conflicts with a running job.
    pub on_conflict: Option<ConflictPolicy>,
    /// Tries after a failure (default 0: a failed job is cancelled).
    pub retries: Option<u32>,
    /// Seconds between tries (default 30).
    pub retry_delay_s: Option<u64>,
    /// Include patterns (publish): only matching files are published.
    pub include: Option<Vec<String>>,
    /// Exclude patterns (publish).
    pub exclude: Option<Vec<String>>,
}

impl JobRequest {
    fn into_spec(self) -> Result<(JobSpec, u64), String> {
        let mut spec = JobSpec::new(&self.kind, &self.site);
        spec.staging = self.staging;
        spec.checkpoint = self.checkpoint;
        spec.target = match (self.group, self.node) {
            (Some(_), Some(_)) => return Err("give a group or a node, not both".into()),
            (Some(group), None) => Some(Target::Group(group)),
            (None, Some(node)) => Some(Target::Node(node)),
            (None, None) => None,
        };
        spec.every_s = self.every_s;
        spec.on_conflict = self.on_conflict.unwrap_or_default();
        spec.retries = self.retries.unwrap_or(0);
        if let Some(delay) = self.retry_delay_s {
            spec.retry_delay_s = delay;
        }
        if self.include.is_some() || self.exclude.is_some() {
            spec.rules = Some(Rules {
                include: self.include.unwrap_or_default(),
                exclude: self.exclude.unwrap_or_default(),
            });
        }
        Ok((spec, self.at_ms.unwrap_or(0)))
    }
}

#[derive(Deserialize)]
struct Registration {
    name: String,
    url: String,
    #[serde(default)]
    free_disk: u64,
    #[serde(default)]
    cpus: u32,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    versions: std::collections::HashMap<String, u64>,
}

#[derive(Deserialize)]
struct CheckpointRequest {
    site: String,
}

#[derive(Deserialize)]
struct GroupRequest {
    nodes: Vec<String>,
}

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

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    tern_admin::json(status, &value)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    tern_admin::json_error(status, message)
}

fn submit_error(e: SubmitError) -> Response<Body> {
    match e {
        SubmitError::Invalid(message) => error(StatusCode::BAD_REQUEST, message),
        SubmitError::Conflict(message) => error(StatusCode::CONFLICT, message),
        SubmitError::Store(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn query<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

impl Handler for Api {
    async fn call(&self, request: Request<Incoming>, _client: SocketAddr) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, 1 << 20).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB"),
        };
        let path = parts.uri.path();
        let mover = &self.mover;
        let parse_failed = |what: &str, e: serde_json::Error| error(StatusCode::BAD_REQUEST, format!("{what}: {e}"));
        match (&parts.method, path) {
            (&Method::POST, "/api/nodes/register") => match serde_json::from_slice::<Registration>(&body) {
                Ok(r) if !crate::schedule::plain_name(&r.name) => error(
                    StatusCode::BAD_REQUEST,
                    format!("`{}` is not a plain node name", r.name),
                ),
                Ok(r) => {
                    let node = Node {
                        name: r.name,
                        url: r.url,
                        last_seen_ms: now_ms(),
                        free_disk: r.free_disk,
                        cpus: r.cpus,
                        groups: r
                            .groups
                            .into_iter()
                            .filter(|g| crate::schedule::plain_name(g))
                            .collect(),
                    };
                    match mover.register(node, r.versions.into_iter().collect()) {
                        Ok(value) => json(StatusCode::OK, value),
                        Err(message) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
                    }
                }
                Err(e) => parse_failed(
                    "a registration is {\"name\", \"url\", \"free_disk\", \"cpus\", \"groups\", \"versions\"}",
                    e,
                ),
            },
            (&Method::GET, "/api/nodes") => json(StatusCode::OK, serde_json::json!(mover.nodes())),
            (&Method::GET, "/api/groups") => {
                let groups = mover.store().groups().unwrap_or_default();
                let groups: serde_json::Map<String, serde_json::Value> = groups
                    .into_iter()
                    .map(|(g, nodes)| (g, serde_json::json!(nodes)))
                    .collect();
                json(StatusCode::OK, serde_json::Value::Object(groups))
            }
            (&Method::PUT, _) if path.starts_with("/api/groups/") => {
                let group = &path["/api/groups/".len()..];
                if !crate::schedule::plain_name(group) {
                    return error(StatusCode::BAD_REQUEST, format!("`{group}` is not a plain group name"));
                }
                match serde_json::from_slice::<GroupRequest>(&body) {
                    Ok(request) => match mover.store().set_group(group, &request.nodes, now_ms()) {
                        Ok(()) => json(
                            StatusCode::OK,
                            serde_json::json!({ "group": group, "nodes": request.nodes }),
                        ),
                        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    },
                    Err(e) => parse_failed("a group is {\"nodes\": [names]}", e),
                }
            }
            (&Method::GET, "/api/sites") => json(
                StatusCode::OK,
                serde_json::json!(mover.store().sites().unwrap_or_default()),
            ),
            (&Method::GET, _) if path.starts_with("/api/sites/") => {
                let name = &path["/api/sites/".len()..];
                let store = mover.store();
                match store.site(name) {
                    Ok(Some(site)) => json(
                        StatusCode::OK,
                        serde_json::json!({
                            "site": site,
                            "snapshots": store.snapshots(name).unwrap_or_default(),
                            "checkpoints": store.checkpoints(name).unwrap_or_default().into_iter()
                                .map(|(number, version, created_ms, bytes)| serde_json::json!({ "number": number, "version": version, "created_ms": created_ms, "bytes": bytes }))
                                .collect::<Vec<_>>(),
                        }),
                    ),
                    Ok(None) => error(StatusCode::NOT_FOUND, format!("no site {name}")),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            (&Method::POST, "/api/checkpoints") => match serde_json::from_slice::<CheckpointRequest>(&body) {
                Ok(request) => match mover.checkpoint(&request.site).await {
                    Ok(number) => json(
                        StatusCode::OK,
                        serde_json::json!({ "site": request.site, "number": number }),
                    ),
                    Err(message) => error(StatusCode::BAD_REQUEST, message),
                },
                Err(e) => parse_failed("a checkpoint request is {\"site\"}", e),
            },
            (&Method::GET, "/api/checkpoints") => {
                let site = query(parts.uri.query(), "site").unwrap_or("");
                json(StatusCode::OK, serde_json::json!(mover.checkpoints(site)))
            }
            (&Method::POST, "/api/jobs") => match serde_json::from_slice::<JobRequest>(&body) {
                Ok(request) => match request.into_spec() {
                    Ok((spec, at)) => match mover.submit(spec, at) {
                        Ok(id) => json(StatusCode::ACCEPTED, serde_json::json!({ "id": id })),
                        Err(e) => submit_error(e),
                    },
                    Err(message) => error(StatusCode::BAD_REQUEST, message),
                },
                Err(e) => parse_failed(
                    "a job is {\"kind\", \"site\", \"staging\", \"checkpoint\", \"group\" or \"node\", \"at_ms\", \"every_s\", \"on_conflict\", \"retries\", \"retry_delay_s\", \"include\", \"exclude\"}",
                    e,
                ),
            },
            (&Method::GET, "/api/jobs") => {
                let limit = query(parts.uri.query(), "limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(100usize)
                    .min(10_000);
                let ids = mover.store().job_ids(limit).unwrap_or_default();
                let jobs: Vec<_> = ids.iter().filter_map(|id| mover.job(id)).collect();
                json(StatusCode::OK, serde_json::json!(jobs))
            }
            (&Method::POST, _) if path.starts_with("/api/jobs/") && path.ends_with("/cancel") => {
                let id = &path["/api/jobs/".len()..path.len() - "/cancel".len()];
                match mover.cancel(id) {
                    Ok(()) => json(StatusCode::OK, serde_json::json!({ "id": id, "state": "cancelled" })),
                    Err(e) => submit_error(e),
                }
            }
            (&Method::GET, _) if path.starts_with("/api/jobs/") => match mover.job(&path["/api/jobs/".len()..]) {
                Some(job) => json(StatusCode::OK, serde_json::json!(job)),
                None => error(StatusCode::NOT_FOUND, "no such job"),
            },
            (&Method::GET, "/api/history") => {
                let limit = query(parts.uri.query(), "limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(100usize)
                    .min(10_000);
                let entries: Vec<_> = mover
                    .store()
                    .history(limit)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(at_ms, job, message)| serde_json::json!({ "at_ms": at_ms, "job": job, "message": message }))
                    .collect();
                json(StatusCode::OK, serde_json::json!(entries))
            }
            (&Method::GET, "/status") => json(StatusCode::OK, tern_admin::AdminRoutes::status(mover.as_ref())),
            _ => error(StatusCode::NOT_FOUND, format!("no endpoint {} {path}", parts.method)),
        }
    }
}
