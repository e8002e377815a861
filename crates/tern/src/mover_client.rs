//! Clients of the mover's API: `tern publish`, `tern rollback` (both wait for the job with a progress bar and
//! each node's state, and with `--wait-fresh` for the caches in front of the site to acknowledge the commit),
//! `tern jobs` and `tern checkpoint`. The mover's URL may be `https://`; `--ca FILE` then names the CA that
//! vouches for it (else the system's roots do).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tern_http::tls::{ClientTls, HttpsClient};
use tern_wire::mover::{
    Checkpoint, FreshState, HistoryEntry, Job, JobCreated, JobKind, JobRequest, JobState, NodeState,
};

type HttpClient = HttpsClient<Full<Bytes>>;

/// A client for the mover's API, trusting `ca` alone when given (else the system's roots).
fn client(ca: Option<&Path>) -> Result<HttpClient> {
    let tls = ClientTls::new(ca).context("--ca")?;
    Ok(tls.client())
}

/// The mover's base URL as `--mover` gives it, checked by the parser of every URL flag, without a trailing
/// slash. Checked before any path is added, so that an error quotes what the user typed.
fn base(mover: &str) -> Result<String> {
    let url = crate::parse_url(mover).map_err(|why| anyhow!("--mover {mover}: {why}"))?;
    Ok(url.trim_end_matches('/').to_string())
}

/// The mover's API token, from the key file named by `TERN_API_TOKEN_FILE` (the mover's `--api-token`),
/// with that file's path, if that variable is set.
fn api_token() -> Result<Option<(PathBuf, String)>> {
    let Some(path) = std::env::var_os("TERN_API_TOKEN_FILE") else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    let key = tern_wire::SecretKey::load(&path).with_context(|| format!("TERN_API_TOKEN_FILE={}", path.display()))?;
    Ok(Some((path, key.token())))
}

async fn call(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    let token = api_token()?;
    if let Some((_, token)) = &token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))?;
    let response = client
        .request(request)
        .await
        .with_context(|| format!("cannot reach the mover at {url}"))?;
    let status = response.status();
    // The mover's own answer cannot tell a missing token from a wrong one; the client knows which it sent.
    if status == http::StatusCode::UNAUTHORIZED {
        match &token {
            None => bail!(
                "the mover needs its API token and none was given: set TERN_API_TOKEN_FILE to (a copy of) the \
                 mover's --api-token key file"
            ),
            Some((path, _)) => bail!(
                "the mover refused the API token (401): check that TERN_API_TOKEN_FILE ({}) points at the \
                 mover's --api-token key file",
                path.display()
            ),
        }
    }
    let bytes = response.into_body().collect().await?.to_bytes();
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        // Not the mover's JSON: say what came (an HTTPS listener's "use an https:// URL", a proxy's page).
        Err(error) => bail!(
            "unexpected answer from {url} ({status}): {}",
            match String::from_utf8_lossy(&bytes).trim() {
                "" => format!("an empty body ({error})"),
                text => tern_wire::cut_at(text, 300).to_string(),
            }
        ),
    };
    if !status.is_success() {
        bail!("{}", value["error"].as_str().unwrap_or("the mover refused the request"));
    }
    Ok(value)
}

/// How long a job being followed is waited for while the mover does not answer.
const FOLLOW_UNREACHABLE: Duration = Duration::from_secs(60);

/// Whether `error` is the mover not answering (no connection, a connection lost mid-answer), as opposed
/// to an answer that refuses.
fn unreachable(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.is::<hyper_util::client::legacy::Error>() || cause.is::<hyper::Error>())
}

/// Reads a job as the mover shows it.
async fn job(client: &HttpClient, base: &str, id: &str) -> Result<Job> {
    let url = format!("{base}/api/jobs/{id}");
    let value = call(client, "GET", &url, None).await?;
    serde_json::from_value(value).with_context(|| format!("unexpected answer from {url}"))
}

/// Submits a job and, when `wait`, follows it: a progress bar (nodes finished, bytes sent) and a line for
/// each node whose state changes. Fails unless the job committed. With `fresh`, once the job committed, also
/// waits (at most that long) until every cache in front of the site has acknowledged the commit, and fails
/// when they have not.
pub async fn run_job_fresh(
    mover: &str,
    ca: Option<&Path>,
    request: JobRequest,
    wait: bool,
    fresh: Option<Duration>,
) -> Result<()> {
    let base = &base(mover)?;
    let client = client(ca)?;
    let url = format!("{base}/api/jobs");
    let created = call(&client, "POST", &url, Some(serde_json::to_value(&request)?)).await?;
    let JobCreated { id } = serde_json::from_value(created).context("the mover did not return a job id")?;
    println!("job {id}");
    if !wait {
        let job = job(&client, base, &id).await?;
        println!(
            "  {} — due at {}; follow it with `tern jobs --mover {mover}`",
            job.state,
            when(job.due_ms, now_ms())
        );
        return Ok(());
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut seen: std::collections::HashMap<String, NodeState> = std::collections::HashMap::new();
    let mut last_bar = String::new();
    let mut last_note: Option<String> = None;
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        // The job runs in the mover, not here: a mover that stops answering for a while (restarted, a
        // network blip) is waited for, and the job's own state then says how it ended.
        let job = match job(&client, base, &id).await {
            Ok(job) => {
                if unreachable_since.take().is_some() {
                    println!("  the mover answers again");
                }
                job
            }
            Err(error) if unreachable(&error) => {
                let since = *unreachable_since.get_or_insert_with(|| {
                    println!("  lost the mover ({error:#}); still following job {id}");
                    std::time::Instant::now()
                });
                if since.elapsed() >= FOLLOW_UNREACHABLE {
                    bail!(
                        "the mover at {base} has not answered for {} s; job {id} may still run or have ended: see `tern jobs --mover {mover}`",
                        FOLLOW_UNREACHABLE.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        let finished = job.finished();
        // Per-node status: one line each time a node's state changes. A node that is waiting, or committed
        // without being sent anything, waits for the end of the job: when the whole publish was unchanged,
        // one line says so instead.
        let mut lines = Vec::new();
        for node in &job.nodes {
            let sent_nothing = matches!(node.state, NodeState::Pending | NodeState::Committed)
                && node.bytes == 0
                && node.error.is_none();
            if sent_nothing && !finished {
                continue;
            }
            if seen.get(&node.node) != Some(&node.state) {
                let error = node.error.as_deref().map(|e| format!(" — {e}")).unwrap_or_default();
                // A node its group leader served got nothing from the mover itself: say by whom.
                let delivered = match node.served_via() {
                    Some(leader) => format!("via {leader}"),
                    None => human_bytes(node.bytes),
                };
                lines.push(format!("  {:16} {:10} {:>10}{error}", node.node, node.state, delivered));
                seen.insert(node.node.clone(), node.state);
            }
        }
        // A running job's note says what its delivery waits for (a group leader that stopped reporting):
        // a line of its own when it changes, since it may be longer than a terminal is wide.
        if job.state == JobState::Running
            && job.error != last_note
            && let Some(note) = &job.error
        {
            lines.push(format!("  waiting: {note}"));
        }
        let count = |state: NodeState| job.nodes.iter().filter(|n| n.state == state).count();
        let (committed, failed) = (count(NodeState::Committed), count(NodeState::Failed));
        let sent: u64 = job.nodes.iter().map(|n| n.bytes).sum();
        // A node served by its group leader counts no bytes of the mover's: "0 B" read as nothing sent.
        let via_leaders = job.nodes.iter().any(|n| n.served_via().is_some());
        if finished && let Some(unchanged) = unchanged_publish(&client, base, &job).await? {
            if terminal {
                print!("\r\x1b[2K");
            }
            println!("  {unchanged}");
            // Nodes that do not hold the published version say which they hold (the mover's note).
            for node in job.nodes.iter().filter(|node| node.state != NodeState::Committed) {
                let note = node.error.as_deref().unwrap_or("not at the published version");
                println!("  {:16} {:10} — {note}", node.node, node.state);
            }
            return Ok(());
        }
        let progress = Progress {
            committed,
            failed,
            total: job.nodes.len(),
            sent,
            via_leaders,
        };
        let bar = progress_bar(job.state, &progress, job.error.as_deref());
        if terminal {
            // Clear the bar, print the node lines above it, draw it again.
            let mut out = std::io::stdout();
            let _ = write!(out, "\r\x1b[2K");
            for line in &lines {
                let _ = writeln!(out, "{line}");
            }
            let _ = write!(out, "{bar}");
            let _ = out.flush();
        } else {
            for line in &lines {
                println!("{line}");
            }
            if bar != last_bar && (finished || !lines.is_empty()) {
                println!("{bar}");
            }
        }
        last_bar = bar;
        last_note = job.error.clone();
        if finished {
            if terminal {
                println!();
            }
            if job.state == JobState::Committed {
                return match fresh {
                    Some(timeout) => wait_fresh(&client, base, &id, timeout).await,
                    None => Ok(()),
                };
            }
            bail!(
                "job {id} {}: {}",
                job.state,
                job.error.as_deref().unwrap_or("see the nodes above")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When `job` is a committed publish that found nothing to send, what the mover's history says of it
/// (`nothing changed since version N of SITE: ...`). The job's nodes alone cannot tell it from a publish whose
/// nodes already held every file.
async fn unchanged_publish(client: &HttpClient, base: &str, job: &Job) -> Result<Option<String>> {
    let sent: u64 = job.nodes.iter().map(|n| n.bytes).sum();
    if job.state != JobState::Committed || job.spec.kind != JobKind::Publish || sent > 0 {
        return Ok(None);
    }
    let history = call(client, "GET", &format!("{base}/api/history?limit=100"), None).await?;
    let history: Vec<HistoryEntry> = serde_json::from_value(history).context("unexpected answer from the mover")?;
    Ok(history
        .into_iter()
        .find(|entry| entry.job.as_deref() == Some(job.id.as_str()) && entry.message.starts_with("nothing changed"))
        .map(|entry| entry.message))
}

/// Waits until the caches in front of the site have acknowledged job `id`'s commit, at most `timeout`.
async fn wait_fresh(client: &HttpClient, base: &str, id: &str, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let job = job(client, base, id).await?;
        let Some(freshness) = job.freshness else {
            println!(
                "  no caches to wait for: the site names none (tern publish --public-url URL --sync-url URL --sync-key FILE), or the job changed nothing readers get"
            );
            return Ok(());
        };
        match freshness.state {
            FreshState::Fresh => {
                let after = freshness
                    .fresh_ms
                    .unwrap_or(freshness.since_ms)
                    .saturating_sub(freshness.since_ms);
                let urls = if freshness.purged == 1 { "URL" } else { "URLs" };
                println!(
                    "  edges fresh {after} ms after the commit: {} {urls} purged, {} fetched again, through {}",
                    freshness.purged, freshness.prefetched, freshness.via
                );
                return Ok(());
            }
            FreshState::Unconfirmed => bail!(
                "job {id} committed, but the edges were not confirmed fresh: {}",
                freshness.error.as_deref().unwrap_or("no acknowledgement")
            ),
            FreshState::Pending if std::time::Instant::now() >= deadline => {
                let waiting: Vec<&str> = freshness
                    .caches
                    .iter()
                    .filter(|cache| !cache.acknowledged)
                    .map(|cache| cache.url.as_str())
                    .collect();
                let why = match (&freshness.error, waiting.is_empty()) {
                    (Some(error), _) => error.clone(),
                    (None, false) => format!("waiting for {}", waiting.join(", ")),
                    (None, true) => format!("waiting for {}", freshness.via),
                };
                bail!(
                    "job {id} committed; the edges did not confirm within {} ({why}); the mover keeps trying: follow it with `tern jobs`",
                    humantime::format_duration(timeout)
                );
            }
            FreshState::Pending => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job's nodes so far, for the progress bar.
struct Progress {
    committed: usize,
    failed: usize,
    total: usize,
    /// Bytes the mover sent to nodes itself.
    sent: u64,
    /// Whether group leaders served some nodes (their bytes are not the mover's).
    via_leaders: bool,
}

/// `[####------] 3/4 nodes committed, 1 failed  20.7 MB  state`: the bar fills with the nodes committed.
fn progress_bar(state: JobState, progress: &Progress, note: Option<&str>) -> String {
    const WIDTH: usize = 30;
    let Progress {
        committed,
        failed,
        total,
        sent,
        via_leaders,
    } = *progress;
    let filled = (committed * WIDTH).checked_div(total).unwrap_or(0).min(WIDTH);
    let note = match (state, note) {
        (JobState::Queued | JobState::Scheduled, Some(note)) => format!(" ({note})"),
        _ => String::new(),
    };
    let failed = if failed > 0 {
        format!(", {failed} failed")
    } else {
        String::new()
    };
    let bytes = match (sent, via_leaders) {
        (0, true) => "through group leaders".to_string(),
        (sent, true) => format!("{} from the mover, the rest through group leaders", human_bytes(sent)),
        (sent, false) => human_bytes(sent),
    };
    format!(
        "[{}{}] {committed}/{total} nodes committed{failed}  {bytes}  {state}{note}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
    )
}

/// Now, in milliseconds since the epoch (the unit of the mover's times).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0)
}

/// A time of the mover's (`ms` since the epoch) as an operator reads it: RFC 3339 in UTC, and how far it is
/// from `now_ms`, e.g. `2026-12-01T14:03:55Z (in 15 s)`.
pub(crate) fn when(ms: u64, now_ms: u64) -> String {
    let stamp = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms));
    format!("{stamp} ({})", relative(ms, now_ms))
}

/// How far `ms` is from `now_ms`, rounded to the second, in the largest unit that keeps it readable.
fn relative(ms: u64, now_ms: u64) -> String {
    let ahead = ms > now_ms;
    let seconds = (ms.abs_diff(now_ms) + 500) / 1000;
    let amount = match seconds {
        0 => return "now".to_string(),
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    };
    if ahead {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Lists the registered nodes, or removes one (`remove`).
pub async fn nodes(mover: &str, ca: Option<&Path>, remove: Option<&str>) -> Result<()> {
    let base = base(mover)?;
    let client = client(ca)?;
    if let Some(name) = remove {
        let answer = call(&client, "DELETE", &format!("{base}/api/nodes/{name}"), None).await?;
        println!("node {name} removed: no job targets it any more (if it still runs, it registers again)");
        let left: Vec<&str> = answer["left_groups"]
            .as_array()
            .map(|groups| groups.iter().filter_map(|g| g.as_str()).collect())
            .unwrap_or_default();
        if !left.is_empty() {
            println!(
                "it left the content groups {} that were set with the API: a replacement under the same name \
                 rejoins only the groups it registers with (tern node --group); put it back with \
                 PUT /api/groups/NAME",
                left.join(", ")
            );
        }
        return Ok(());
    }
    let nodes = call(&client, "GET", &format!("{base}/api/nodes"), None).await?;
    for node in nodes.as_array().map(Vec::as_slice).unwrap_or_default() {
        let groups: Vec<&str> = node["groups"]
            .as_array()
            .map(|groups| groups.iter().filter_map(|g| g.as_str()).collect())
            .unwrap_or_default();
        println!(
            "{}  {}  groups: {}  free disk: {}",
            node["name"].as_str().unwrap_or("?"),
            node["url"].as_str().unwrap_or("?"),
            if groups.is_empty() {
                "-".to_string()
            } else {
                groups.join(",")
            },
            human_bytes(node["free_disk"].as_u64().unwrap_or(0))
        );
    }
    Ok(())
}

/// Cancels a job that has not started.
pub async fn cancel_job(mover: &str, ca: Option<&Path>, id: &str) -> Result<()> {
    let client = client(ca)?;
    let url = format!("{}/api/jobs/{id}/cancel", base(mover)?);
    call(&client, "POST", &url, None).await?;
    println!("job {id} cancelled");
    Ok(())
}

/// Lists recent jobs.
pub async fn list_jobs(mover: &str, ca: Option<&Path>) -> Result<()> {
    let client = client(ca)?;
    let jobs = call(&client, "GET", &format!("{}/api/jobs", base(mover)?), None).await?;
    let jobs: Vec<Job> = serde_json::from_value(jobs).context("unexpected answer from the mover")?;
    let now = now_ms();
    for job in jobs {
        let edges = job
            .freshness
            .as_ref()
            .map(|f| match (&f.error, f.state) {
                (Some(error), FreshState::Pending | FreshState::Unconfirmed) => {
                    format!("edges {} ({error}); ", f.state)
                }
                _ => format!("edges {}; ", f.state),
            })
            .unwrap_or_default();
        let due = match job.state {
            JobState::Scheduled | JobState::Queued => format!("due {}; ", when(job.due_ms, now)),
            _ => String::new(),
        };
        println!(
            "{:40} {:12} {:10} {:10} {due}{}{edges}{}",
            job.id,
            job.spec.kind,
            job.spec.site,
            job.state,
            job.spec
                .every_s
                .map(|s| format!("every {}; ", humantime::format_duration(Duration::from_secs(s))))
                .unwrap_or_default(),
            job.error.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// Creates a checkpoint.
pub async fn create_checkpoint(mover: &str, ca: Option<&Path>, site: &str) -> Result<()> {
    let client = client(ca)?;
    let url = format!("{}/api/checkpoints", base(mover)?);
    let created = call(&client, "POST", &url, Some(serde_json::json!({ "site": site }))).await?;
    println!("checkpoint {} of {site}", created["number"]);
    Ok(())
}

/// Lists checkpoints.
pub async fn list_checkpoints(mover: &str, ca: Option<&Path>, site: &str) -> Result<()> {
    let client = client(ca)?;
    let url = format!("{}/api/checkpoints?site={site}", base(mover)?);
    let checkpoints: Vec<Checkpoint> = serde_json::from_value(call(&client, "GET", &url, None).await?)
        .with_context(|| format!("unexpected answer from {url}"))?;
    if checkpoints.is_empty() {
        println!("site {site} has no checkpoints (`tern checkpoint create --site {site}` makes one)");
    }
    let now = now_ms();
    for checkpoint in checkpoints {
        println!(
            "{:>4}  version {:>6}  {:>10}  created {}",
            checkpoint.number,
            checkpoint.version,
            human_bytes(checkpoint.bytes),
            when(checkpoint.created_ms, now)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job committed on 3 of 4 nodes through group leaders read `4/4 nodes  0 B  failed` (a trial).
    #[test]
    fn the_progress_bar_counts_committed_nodes_and_says_who_sent_the_bytes() {
        let progress = |committed, failed, sent, via_leaders| Progress {
            committed,
            failed,
            total: 4,
            sent,
            via_leaders,
        };
        let bar = progress_bar(JobState::Failed, &progress(3, 1, 0, true), None);
        assert!(
            bar.ends_with("] 3/4 nodes committed, 1 failed  through group leaders  failed"),
            "{bar}"
        );
        assert!(
            bar.starts_with(&format!("[{}{}]", "#".repeat(22), "-".repeat(8))),
            "{bar}"
        );
        let bar = progress_bar(JobState::Committed, &progress(4, 0, 2048, false), None);
        assert!(bar.ends_with("] 4/4 nodes committed  2.0 KiB  committed"), "{bar}");
    }

    #[tokio::test]
    async fn a_mover_that_does_not_answer_is_told_from_one_that_refuses() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = closed.local_addr().expect("address");
        drop(closed);
        let client = client(None).expect("client");
        let error = job(&client, &format!("http://{address}"), "1")
            .await
            .expect_err("nothing listens");
        assert!(unreachable(&error), "{error:#}");
        assert!(!unreachable(&anyhow::anyhow!("job 1 not found")));
    }

    #[test]
    fn times_read_as_utc_with_how_far_they_are() {
        // 2026-12-01T14:03:55Z.
        let at = 1_796_133_835_000;
        assert_eq!(when(at, at - 15_000), "2026-12-01T14:03:55Z (in 15 s)");
        assert_eq!(when(at, at + 3 * 60_000 + 400), "2026-12-01T14:03:55Z (3 min ago)");
        assert_eq!(relative(at, at + 300), "now");
        assert_eq!(relative(at + 5 * 3_600_000, at), "in 5 h");
        assert_eq!(relative(at, at + 3 * 86_400_000), "3 days ago");
    }
}
