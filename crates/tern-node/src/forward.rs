//! The group leader's part in the store-and-forward tree (seed `004_1419c51402506f7e.txt`, global
//! distribution, Figs. 6 and 7; claim 20 (C)–(G)). A GL that receives the CCM's *notification*
//! (`POST /tree/notify`, a [`tern_wire::tree`] message tagged with the cluster key and signed by the mover)
//!
//! 1. obtains the assignment from the source it names — the mover or another GL — into its spool
//!    ([`crate::spool`]), checking it as it arrives; with cut-through (the default) it reports *receiving*
//!    to the mover at the first bytes, so that it can already serve the next GL while the rest arrives,
//!    and *complete* once the signed hash is verified (a copy that fails is reported *failed*);
//! 2. asks the mover for the *next group leader* and forwards the notification the mover answers with to
//!    that GL ("the GL then sends the notification to the next GL"), serves it its copy
//!    (`GET /tree/assignments/ID`), and asks again when that upload ended — until the mover answers
//!    *done* (the seed's null address);
//! 3. delivers the assignment to its own members — once on the segment's multicast data channel when it
//!    has one ([`crate::mctp`], seed: local distribution), and over HTTP unicast (each one's
//!    `POST /assignments`, streamed from the spool) to every member that did not apply that copy — applies
//!    it itself if it is a target, and sends the mover its *assignment status report*: the members that
//!    applied it, and those that did not with the reason.
//!
//! A notification is refused, and counted by reason, when its tag is not the cluster key's, it is stale or
//! a replay, its signature is not the mover's, it is for another node, or it names a source that is
//! neither the mover nor one of the job's group leaders.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use tern_http::Body;
use tern_http::tls::HttpsClient;
use tern_wire::SecretKey;
use tern_wire::assignment::Checked;
use tern_wire::mover::ErrorAnswer;
use tern_wire::tree::{
    self, Envelope, Holding, HoldingReport, MemberFailure, NextAnswer, NextRequest, NonceGuard, Notification,
    SignedNotification, Source, StatusReport, TreeError, TreeLimits, TreeMessage,
};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::agent::NodeAgent;
use crate::clock::unix_ms;
use crate::spool::{self, End, Entry};

/// Longest a GL waits before asking the mover again, whatever the mover said.
const MAX_ASK_AGAIN: Duration = Duration::from_secs(10);

/// How a node takes part in distribution trees.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Bounds on tree messages (size, freshness, remembered nonces).
    pub limits: TreeLimits,
    /// A source (or a member's answer) that sends nothing for this long has failed.
    pub idle_timeout: Duration,
    /// Time for one exchange of messages with the mover or another node.
    pub request_timeout: Duration,
    /// Time for delivering the assignment to one member.
    pub member_timeout: Duration,
    /// How long a GL waits for the GL it was told to serve to fetch its copy before asking for the next
    /// (the mover gives up on that GL after its own fetch timeout).
    pub serve_wait: Duration,
    /// Members delivered to at once.
    pub parallel_members: usize,
    /// Serve the next GL while the assignment is still arriving (it checks the signed hash end to end).
    pub cut_through: bool,
    /// Tries of a report or a request to the mover before the GL gives up on it.
    pub mover_tries: u32,
    /// The segment's multicast data channel (`tern node --data-channel`): with it the GL sends each
    /// assignment to its members once there and repairs what they lost ([`crate::mctp`]), and only the
    /// members that did not apply it that way get it by HTTP unicast; without it, unicast to each.
    pub data_channel: Option<crate::mctp::driver::DataChannelSettings>,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            limits: TreeLimits::default(),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            member_timeout: Duration::from_secs(600),
            serve_wait: Duration::from_secs(300),
            parallel_members: 8,
            cut_through: true,
            mover_tries: 5,
            data_channel: None,
        }
    }
}

/// Where this node is in one transfer it leads (for `/status`).
#[derive(Debug, Clone, Serialize)]
struct Leading {
    job: String,
    phase: &'static str,
    source: String,
    state: &'static str,
    served: Vec<String>,
}

/// A node's side of the tree: the cluster key, the replay guard and what it is leading now.
pub struct Forwarder {
    key: SecretKey,
    settings: ForwardSettings,
    guard: Mutex<NonceGuard>,
    leading: Mutex<BTreeMap<String, Leading>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    client: HttpsClient<Body>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").field("settings", &self.settings).finish()
    }
}

fn json(status: StatusCode, value: impl Serialize) -> Response<Body> {
    match serde_json::to_value(value) {
        Ok(value) => tern_admin::json(status, &value),
        Err(error) => tern_admin::json_error(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

fn refusal(status: StatusCode, error: impl Into<String>) -> Response<Body> {
    json(status, ErrorAnswer { error: error.into() })
}

impl Forwarder {
    /// A forwarder authenticating with the cluster `key` and sending with `client`.
    pub fn new(key: SecretKey, settings: ForwardSettings, client: HttpsClient<Body>) -> Forwarder {
        Forwarder {
            guard: Mutex::new(NonceGuard::new(settings.limits)),
            key,
            settings,
            leading: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            client,
        }
    }

    /// Tree messages refused, by reason (`bad-tag`, `stale`, `replayed`, `bad-signature`, `bad-source`,
    /// `malformed`, `oversized`, `not-for-me`, and `bad-token` for a copy fetched without the cluster key's
    /// [`tern_wire::tree::fetch_token`]).
    pub fn refused(&self) -> BTreeMap<String, u64> {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused
            .iter()
            .map(|(reason, count)| (reason.to_string(), *count))
            .collect()
    }

    /// The forwarder's part of the node's status: transfers being led and refusals.
    pub fn status(&self) -> serde_json::Value {
        let leading = self.leading.lock().unwrap_or_else(|p| p.into_inner()).clone();
        serde_json::json!({ "leading": leading, "refused": self.refused() })
    }

    fn count_refusal(&self, reason: &'static str) {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        *refused.entry(reason).or_default() += 1;
    }

    fn set_state(&self, transfer: &str, state: &'static str) {
        let mut leading = self.leading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = leading.get_mut(transfer) {
            entry.state = state;
        }
    }

    fn served(&self, transfer: &str, target: &str) {
        let mut leading = self.leading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = leading.get_mut(transfer) {
            entry.served.push(target.to_string());
        }
    }

    /// Checks a notification as received: tag, freshness, nonce, the mover's signature, that it is for
    /// `me`, and that its source is the mover or one of the job's leaders.
    fn check(&self, bytes: &[u8], mover: &ed25519_dalek::VerifyingKey, me: &str) -> Result<Notification, TreeError> {
        let envelope = tree::decode(&self.key, bytes, &self.settings.limits)?;
        self.guard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&envelope, unix_ms())?;
        let TreeMessage::Notify { notification } = envelope.message else {
            return Err(TreeError::Malformed(format!(
                "a {} message where a notification was expected",
                envelope.message.name()
            )));
        };
        notification.verify(mover)?;
        let notification = notification.notification;
        if notification.target != me {
            return Err(TreeError::Malformed(format!(
                "notification for {}, and this node is {me}",
                notification.target
            )));
        }
        if !notification.source_allowed() {
            let source = match &notification.source {
                Source::Leader { name, .. } => name.clone(),
                Source::Mover => "the mover".to_string(),
            };
            return Err(TreeError::Source(source));
        }
        Ok(notification)
    }

    /// Sends `message` from `me` to `url`; returns the answer's status and body (bounded).
    async fn exchange(&self, me: &str, url: &str, message: TreeMessage) -> Result<(StatusCode, Bytes), String> {
        let bytes = tree::encode(&self.key, &Envelope::new(me, message, unix_ms()));
        let request = Request::post(url)
            .header("content-type", "application/octet-stream")
            .body(tern_http::full(bytes))
            .map_err(|e| e.to_string())?;
        let limit = self.settings.limits.max_message;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("unreachable: {}", tern_http::tls::error_reason(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| format!("answer cut off: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.settings.request_timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {} ms", self.settings.request_timeout.as_millis()))?
    }

    /// Tells the mover something that needs no answer but its acceptance, trying up to
    /// [`ForwardSettings::mover_tries`] times while it cannot be reached.
    async fn tell(&self, agent: &NodeAgent, path: &str, message: TreeMessage) -> Result<(), String> {
        let url = format!("{}{path}", agent.config.mover.trim_end_matches('/'));
        let mut last = String::new();
        for attempt in 0..self.settings.mover_tries.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
            }
            match self.exchange(&agent.config.name, &url, message.clone()).await {
                Ok((status, _)) if status.is_success() => return Ok(()),
                Ok((status, body)) => {
                    return Err(format!("mover refused ({status}): {}", ErrorAnswer::reason_in(&body)));
                }
                Err(reason) => last = reason,
            }
        }
        Err(format!("mover {last}"))
    }

    /// Asks the mover for the next group leader; `Err` with `true` when the mover refused (it does not
    /// count this node as a holder), with `false` when it could not be asked.
    async fn ask_next(&self, agent: &NodeAgent, request: NextRequest) -> Result<NextAnswer, (bool, String)> {
        let url = format!("{}/api/tree/next", agent.config.mover.trim_end_matches('/'));
        let (status, body) = self
            .exchange(&agent.config.name, &url, TreeMessage::Next { request })
            .await
            .map_err(|reason| (false, reason))?;
        if !status.is_success() {
            return Err((
                status.is_client_error(),
                format!("mover refused ({status}): {}", ErrorAnswer::reason_in(&body)),
            ));
        }
        let answer = tree::decode(&self.key, &body, &self.settings.limits)
            .and_then(|envelope| {
                self.guard
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .check(&envelope, unix_ms())?;
                Ok(envelope)
            })
            .map_err(|error| {
                self.count_refusal(error.reason());
                (false, format!("mover's answer refused: {error}"))
            })?;
        match answer.message {
            TreeMessage::Answer { answer } => Ok(answer),
            other => Err((false, format!("mover answered with a {} message", other.name()))),
        }
    }
}

/// `POST /tree/notify`: takes a notification and, if it passes every check, starts leading its transfer
/// (202); a transfer this node is leading already is acknowledged again (200).
pub(crate) async fn accept(agent: &Arc<NodeAgent>, request: Request<Incoming>) -> Response<Body> {
    let Some(forwarder) = agent.forwarder.as_ref() else {
        return refusal(
            StatusCode::NOT_FOUND,
            "this node has no cluster key, so it takes no part in distribution trees: start it with --cluster-key",
        );
    };
    let limit = forwarder.settings.limits.max_message;
    let bytes = match tern_http::collect_within(request.into_body(), limit, tern_http::REQUEST_BODY_DEADLINE).await {
        Ok(body) => body,
        Err(error) => {
            forwarder.count_refusal("oversized");
            return refusal(error.status(), format!("tree message: {error}"));
        }
    };
    let notification = match forwarder.check(&bytes, &agent.config.mover_key, &agent.config.name) {
        Ok(notification) => notification,
        Err(error) => {
            let reason = match &error {
                TreeError::Malformed(text) if text.starts_with("notification for ") => "not-for-me",
                other => other.reason(),
            };
            forwarder.count_refusal(reason);
            warn!(%reason, %error, "notification refused");
            let status = match reason {
                "malformed" | "not-for-me" => StatusCode::BAD_REQUEST,
                "oversized" => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::FORBIDDEN,
            };
            return refusal(status, error.to_string());
        }
    };
    let transfer = notification.transfer.clone();
    {
        let mut leading = forwarder.leading.lock().unwrap_or_else(|p| p.into_inner());
        if leading.contains_key(&transfer) {
            return json(
                StatusCode::OK,
                serde_json::json!({ "transfer": transfer, "accepted": "already" }),
            );
        }
        leading.insert(
            transfer.clone(),
            Leading {
                job: notification.job.clone(),
                phase: notification.phase.as_str(),
                source: match &notification.source {
                    Source::Mover => "mover".to_string(),
                    Source::Leader { name, .. } => name.clone(),
                },
                state: "fetching",
                served: Vec::new(),
            },
        );
    }
    info!(%transfer, job = %notification.job, source = ?notification.source, members = notification.members.len(), "notified: leading a transfer");
    let leader = agent.clone();
    let answer = json(
        StatusCode::ACCEPTED,
        serde_json::json!({ "transfer": transfer, "accepted": true }),
    );
    tokio::spawn(async move {
        lead(&leader, notification).await;
        if let Some(forwarder) = leader.forwarder.as_ref() {
            forwarder
                .leading
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&transfer);
        }
    });
    answer
}

/// `GET /tree/assignments/ID?for=NODE`: the spooled assignment, as far as it has arrived and then as it
/// arrives (cut-through).
pub(crate) fn serve(
    agent: &Arc<NodeAgent>,
    transfer: &str,
    query: Option<&str>,
    token: Option<&str>,
) -> Response<Body> {
    if !tree::valid_id(transfer) {
        return refusal(StatusCode::BAD_REQUEST, format!("`{transfer}` is not a transfer id"));
    }
    let Some(forwarder) = agent.forwarder.as_ref() else {
        return refusal(
            StatusCode::NOT_FOUND,
            "this node has no cluster key, so it forwards nothing",
        );
    };
    let requester = query
        .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("for=")))
        .unwrap_or("");
    if !token.is_some_and(|token| tree::fetch_token_matches(&forwarder.key, transfer, requester, token)) {
        forwarder.count_refusal("bad-token");
        warn!(%transfer, requester, "assignment copy refused: no valid tern-tree-token");
        return refusal(
            StatusCode::FORBIDDEN,
            format!("fetch of transfer {transfer} without a valid tern-tree-token (the cluster key's)"),
        );
    }
    let Some(entry) = agent.spool.get(transfer) else {
        return refusal(
            StatusCode::NOT_FOUND,
            format!("this node holds no assignment {transfer} (any more)"),
        );
    };
    let node = query
        .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("for=")))
        .filter(|name| tern_wire::control::valid_name(name))
        .unwrap_or("unnamed")
        .to_string();
    debug!(%transfer, %node, "serving a spooled assignment");
    let body = spool::serve(entry, node, agent.shutdown.clone());
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/octet-stream")
        .body(body)
        .unwrap_or_else(|e| refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The whole flow of one transfer this node was notified of.
async fn lead(agent: &Arc<NodeAgent>, notification: Notification) {
    let Some(forwarder) = agent.forwarder.as_ref() else {
        return;
    };
    let transfer = notification.transfer.clone();
    let Some(entry) = agent.spool.create(&transfer, Some(notification.size)) else {
        warn!(%transfer, "a transfer of that id is spooled already; the notification is ignored");
        return;
    };
    let holding = |holding: Holding| TreeMessage::Holding {
        report: HoldingReport {
            job: notification.job.clone(),
            transfer: transfer.clone(),
            leader: agent.config.name.clone(),
            holding,
        },
    };
    let fetching = tokio::spawn(fetch(agent.clone(), notification.clone(), entry.clone()));
    let fetched = async {
        let result = fetching.await.unwrap_or_else(|e| Err(format!("fetch task ended: {e}")));
        let report = match &result {
            Ok(_) => Holding::Complete,
            Err(reason) => Holding::Failed {
                reason: tree::reason(reason),
            },
        };
        if let Err(error) = forwarder.tell(agent, "/api/tree/holding", holding(report)).await {
            warn!(%transfer, %error, "holding report not taken");
        }
        result
    };
    let checked = if forwarder.settings.cut_through {
        let started = entry.started().await;
        if !matches!(started.end, Some(End::Failed(_))) {
            let receiving = holding(Holding::Receiving {
                bytes: started.received,
            });
            if let Err(error) = forwarder.tell(agent, "/api/tree/holding", receiving).await {
                warn!(%transfer, %error, "receiving report not taken");
            }
        }
        let (checked, ()) = tokio::join!(fetched, forward(agent, forwarder, &notification, &entry));
        checked
    } else {
        let checked = fetched.await;
        if checked.is_ok() {
            forward(agent, forwarder, &notification, &entry).await;
        }
        checked
    };
    let checked = match checked {
        Ok(checked) => checked,
        Err(reason) => {
            warn!(%transfer, %reason, "could not obtain the assignment; the mover was told");
            agent.spool.release(&transfer);
            return;
        }
    };
    if agent.shutdown.is_cancelled() {
        return;
    }
    forwarder.set_state(&transfer, "delivering");
    let (completed, failed) = deliver(agent, forwarder, &notification, &entry, &checked).await;
    if agent.shutdown.is_cancelled() {
        // A stopping leader does not report members it gave up on: the mover re-plans around it.
        return;
    }
    info!(%transfer, completed = completed.len(), failed = failed.len(), "members delivered to");
    forwarder.set_state(&transfer, "reporting");
    let report = TreeMessage::Status {
        report: StatusReport {
            job: notification.job.clone(),
            transfer: transfer.clone(),
            leader: agent.config.name.clone(),
            completed,
            failed,
        },
    };
    if let Err(error) = forwarder.tell(agent, "/api/tree/status", report).await {
        warn!(%transfer, %error, "assignment status report not taken; the mover counts the members as failed");
    }
    agent.spool.release(&transfer);
}

/// Obtains the assignment from the notification's source into `entry`; checks it is the one the mover
/// named (hash and size).
async fn fetch(agent: Arc<NodeAgent>, notification: Notification, entry: Arc<Entry>) -> Result<Checked, String> {
    let outcome = fetch_into(&agent, &notification, &entry).await;
    if let Err(reason) = &outcome {
        entry.fail(reason);
    }
    outcome
}

async fn fetch_into(agent: &NodeAgent, notification: &Notification, entry: &Entry) -> Result<Checked, String> {
    let Some(forwarder) = agent.forwarder.as_ref() else {
        return Err("no cluster key".into());
    };
    let me = &agent.config.name;
    let url = match &notification.source {
        Source::Mover => format!(
            "{}/api/tree/assignments/{}?for={me}",
            agent.config.mover.trim_end_matches('/'),
            notification.transfer
        ),
        Source::Leader { url, .. } => format!(
            "{}/tree/assignments/{}?for={me}",
            url.trim_end_matches('/'),
            notification.transfer
        ),
    };
    let request = Request::get(&url)
        .header(
            tree::FETCH_TOKEN_HEADER,
            tree::fetch_token(&forwarder.key, &notification.transfer, me),
        )
        .body(tern_http::empty())
        .map_err(|e| e.to_string())?;
    let timeout = forwarder.settings.request_timeout;
    let response = tokio::select! {
        _ = agent.shutdown.cancelled() => return Err("the node is stopping".into()),
        response = tokio::time::timeout(timeout, forwarder.client.request(request)) => response,
    };
    let response = response
        .map_err(|_| format!("source {url} did not answer within {} ms", timeout.as_millis()))?
        .map_err(|e| format!("source {url} unreachable: {}", tern_http::tls::error_reason(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let body = Limited::new(response.into_body(), ErrorAnswer::MAX_BODY)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        return Err(format!(
            "source {url} answered {status}: {}",
            ErrorAnswer::reason_in(&body)
        ));
    }
    let checked = spool::fill(
        entry,
        response.into_body(),
        agent.config.limits,
        agent.config.mover_key,
        forwarder.settings.idle_timeout,
        &agent.shutdown,
    )
    .await
    .map_err(|e| format!("copy from {url}: {e}"))?;
    if checked.hash_hex() != notification.hash || checked.len() != notification.size {
        return Err(format!(
            "the copy from {url} is a good assignment but not the one notified (hash {}, {} bytes)",
            checked.hash_hex(),
            checked.len()
        ));
    }
    debug!(transfer = %notification.transfer, bytes = checked.len(), "assignment obtained and verified");
    Ok(checked)
}

/// Asks the mover for the next GL and serves it, until the mover answers done (or stops counting this
/// node as a holder, or cannot be reached).
async fn forward(agent: &NodeAgent, forwarder: &Forwarder, notification: &Notification, entry: &Entry) {
    let me = &agent.config.name;
    let transfer = &notification.transfer;
    let mut unreachable = 0u32;
    loop {
        if agent.shutdown.is_cancelled() || matches!(entry.progress().end, Some(End::Failed(_))) {
            return;
        }
        let request = NextRequest {
            job: notification.job.clone(),
            transfer: transfer.clone(),
            leader: me.clone(),
        };
        let wait = match forwarder.ask_next(agent, request).await {
            Ok(NextAnswer::Serve { notification: next }) => {
                unreachable = 0;
                serve_next(agent, forwarder, entry, *next).await;
                continue;
            }
            Ok(NextAnswer::Done) => {
                debug!(%transfer, "no more group leaders to serve");
                return;
            }
            Ok(NextAnswer::AskAgain { after_ms }) => Duration::from_millis(after_ms).min(MAX_ASK_AGAIN),
            Err((true, reason)) => {
                warn!(%transfer, %reason, "the mover does not count this node as a holder; forwarding stops");
                return;
            }
            Err((false, reason)) => {
                unreachable += 1;
                if unreachable >= forwarder.settings.mover_tries.max(1) {
                    warn!(%transfer, %reason, "cannot ask the mover for the next group leader; forwarding stops");
                    return;
                }
                Duration::from_millis(200 << unreachable.min(5))
            }
        };
        tokio::select! {
            _ = agent.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Forwards the mover's notification to its target and waits until the target fetched its copy from
/// this node (the seed's "when ready, GL1 requests the next address"), or [`ForwardSettings::serve_wait`].
async fn serve_next(agent: &NodeAgent, forwarder: &Forwarder, entry: &Entry, next: SignedNotification) {
    let target = next.notification.target.clone();
    let url = format!("{}/tree/notify", next.notification.target_url.trim_end_matches('/'));
    let transfer = next.notification.transfer.clone();
    match forwarder
        .exchange(&agent.config.name, &url, TreeMessage::Notify { notification: next })
        .await
    {
        Ok((status, _)) if status.is_success() => {
            forwarder.served(&transfer, &target);
            let ended = tokio::select! {
                _ = agent.shutdown.cancelled() => return,
                ended = entry.upload_ended(&target, forwarder.settings.serve_wait) => ended,
            };
            debug!(%transfer, %target, upload = ?ended, "served the next group leader");
        }
        Ok((status, body)) => warn!(
            %transfer, %target, %status, answer = %ErrorAnswer::reason_in(&body),
            "the next group leader refused the notification; the mover gives up on it in time"
        ),
        Err(reason) => warn!(
            %transfer, %target, %reason,
            "the next group leader did not take the notification; the mover gives up on it in time"
        ),
    }
}

/// Delivers the verified assignment to the notification's members — on the data channel first when the
/// node has one, then by HTTP unicast (streamed from the spool) to those that did not apply that copy —
/// and applies it here if this node is one of them.
async fn deliver(
    agent: &Arc<NodeAgent>,
    forwarder: &Forwarder,
    notification: &Notification,
    entry: &Arc<Entry>,
    checked: &Checked,
) -> (Vec<String>, Vec<MemberFailure>) {
    let me = agent.config.name.clone();
    let permits = Arc::new(Semaphore::new(forwarder.settings.parallel_members.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    if notification.members.iter().any(|member| member.name == me) {
        let (worker, entry, checked) = (agent.clone(), entry.clone(), checked.clone());
        tasks.spawn(async move {
            let applied = tokio::task::spawn_blocking(move || {
                worker
                    .apply_received(&entry, &checked)
                    .map(|application| (worker, application))
            })
            .await;
            let result = match applied {
                Ok(Ok((worker, application))) => {
                    if !application.again && application.applied.live.is_some() {
                        crate::agent::tidy_after_switch(worker, application.site);
                    }
                    Ok(())
                }
                Ok(Err(reason)) => Err(reason),
                Err(error) => Err(format!("applying ended: {error}")),
            };
            (me.clone(), result)
        });
    }
    let others: BTreeMap<String, String> = notification
        .members
        .iter()
        .filter(|member| member.name != agent.config.name)
        .map(|member| (member.name.clone(), member.url.clone()))
        .collect();
    let unicast_to = |tasks: &mut tokio::task::JoinSet<(String, Result<(), String>)>, names: Vec<String>| {
        for name in names {
            let Some(url) = others.get(&name).cloned() else {
                continue;
            };
            let (agent, entry, checked, permits) = (agent.clone(), entry.clone(), checked.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let result = post_assignment(&agent, &url, &entry, &checked).await;
                (name, result)
            });
        }
    };
    let mut completed = Vec::new();
    match agent.data_channel.as_ref() {
        Some(channel) if !others.is_empty() => {
            let members: Vec<String> = others.keys().cloned().collect();
            let mut unicast_started: Vec<String> = Vec::new();
            let distributed = tokio::select! {
                _ = agent.shutdown.cancelled() => Err("the group leader is stopping".to_string()),
                distributed = crate::mctp::node::distribute(
                    channel,
                    &notification.transfer,
                    entry,
                    checked,
                    members.clone(),
                    |incomplete| {
                        unicast_started.extend(incomplete.iter().cloned());
                        unicast_to(&mut tasks, incomplete);
                    },
                ) => distributed,
            };
            match distributed {
                Ok(distributed) => {
                    info!(
                        transfer = %notification.transfer,
                        applied = distributed.applied.len(),
                        unicast = members.len() - distributed.applied.len(),
                        "data channel session and report collection ended"
                    );
                    completed.extend(distributed.applied);
                    unicast_to(&mut tasks, distributed.fallback);
                }
                Err(reason) => {
                    warn!(transfer = %notification.transfer, %reason, "data channel distribution failed; unicast to every member");
                    let rest = members
                        .into_iter()
                        .filter(|name| !unicast_started.contains(name))
                        .collect();
                    unicast_to(&mut tasks, rest);
                }
            }
        }
        _ => unicast_to(&mut tasks, others.keys().cloned().collect()),
    }
    let mut failed = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((node, Ok(()))) => completed.push(node),
            Ok((node, Err(reason))) => failed.push(MemberFailure {
                node,
                reason: tree::reason(&reason),
            }),
            Err(error) => warn!(%error, "a delivery task ended"),
        }
    }
    completed.sort();
    failed.sort_by(|a, b| a.node.cmp(&b.node));
    (completed, failed)
}

/// `POST URL/assignments` with the spooled assignment; `Ok` when the member applied it.
async fn post_assignment(agent: &NodeAgent, url: &str, entry: &Entry, checked: &Checked) -> Result<(), String> {
    let Some(forwarder) = agent.forwarder.as_ref() else {
        return Err("no cluster key".into());
    };
    let body = spool::body_of(entry, checked)
        .await
        .map_err(|e| format!("spool file: {e}"))?;
    let request = Request::post(format!("{}/assignments", url.trim_end_matches('/')))
        .header("content-type", "application/octet-stream")
        .header("content-length", checked.len())
        .body(body)
        .map_err(|e| e.to_string())?;
    let timeout = forwarder.settings.member_timeout;
    let exchange = async {
        let response = forwarder.client.request(request).await.map_err(|e| {
            tern_wire::mover::assignment_not_answered(!e.is_connect(), &tern_http::tls::error_reason(&e))
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), ErrorAnswer::MAX_BODY)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("node refused ({status}): {}", ErrorAnswer::reason_in(&body)))
        }
    };
    tokio::select! {
        _ = agent.shutdown.cancelled() => Err("the group leader is stopping".into()),
        outcome = tokio::time::timeout(timeout, exchange) => outcome
            .unwrap_or_else(|_| Err(format!("node did not answer within {} s", timeout.as_secs()))),
    }
}
