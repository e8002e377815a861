//! Clients of the mover's API: `tern publish`, `tern rollback` (both wait for the job with a progress bar and
//! each node's state), `tern jobs` and `tern checkpoint`. The mover's URL may be `https://`; `--ca FILE`
//! then names the CA that vouches for it (else the system's roots do).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tern_http::tls::{ClientTls, HttpsClient};

type HttpClient = HttpsClient<Full<Bytes>>;

/// A client for the mover's API, trusting `ca` alone when given (else the system's roots).
fn client(ca: Option<&Path>) -> Result<HttpClient> {
    let tls = ClientTls::new(ca).context("--ca")?;
    Ok(tls.client())
}

async fn call(
    client: &HttpClient,
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))?;
    let response = client
        .request(request)
        .await
        .with_context(|| format!("cannot reach the mover at {url}"))?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer from {url}"))?;
    if !status.is_success() {
        bail!("{}", value["error"].as_str().unwrap_or("the mover refused the request"));
    }
    Ok(value)
}

/// Submits a job and, when `wait`, follows it: a progress bar (nodes finished, bytes sent) and a line for
/// each node whose state changes. Fails unless the job committed.
pub async fn run_job(mover: &str, ca: Option<&Path>, body: serde_json::Value, wait: bool) -> Result<()> {
    let client = client(ca)?;
    let base = mover.trim_end_matches('/');
    let created = call(&client, "POST", &format!("{base}/api/jobs"), Some(body)).await?;
    let id = created["id"]
        .as_str()
        .context("the mover did not return a job id")?
        .to_string();
    println!("job {id}");
    if !wait {
        let job = call(&client, "GET", &format!("{base}/api/jobs/{id}"), None).await?;
        println!(
            "  {} — due at {} ms since the epoch; follow it with `tern jobs --mover {mover}`",
            job["state"].as_str().unwrap_or("?"),
            job["due_ms"]
        );
        return Ok(());
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut last_bar = String::new();
    loop {
        let job = call(&client, "GET", &format!("{base}/api/jobs/{id}"), None).await?;
        let nodes = job["nodes"].as_array().cloned().unwrap_or_default();
        let state = job["state"].as_str().unwrap_or("?").to_string();
        let finished = matches!(state.as_str(), "committed" | "failed" | "refused" | "cancelled");
        // Per-node status: one line each time a node's state changes.
        let mut lines = Vec::new();
        for node in &nodes {
            let name = node["node"].as_str().unwrap_or("?").to_string();
            let node_state = node["state"].as_str().unwrap_or("?").to_string();
            if seen.get(&name) != Some(&node_state) {
                let error = node["error"].as_str().map(|e| format!(" — {e}")).unwrap_or_default();
                lines.push(format!(
                    "  {name:16} {node_state:10} {:>10}{error}",
                    human_bytes(node["bytes"].as_u64().unwrap_or(0))
                ));
                seen.insert(name, node_state);
            }
        }
        let done = nodes
            .iter()
            .filter(|n| matches!(n["state"].as_str(), Some("committed" | "failed")))
            .count();
        let sent: u64 = nodes.iter().map(|n| n["bytes"].as_u64().unwrap_or(0)).sum();
        let bar = progress_bar(&state, done, nodes.len(), sent, job["error"].as_str());
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
        if finished {
            if terminal {
                println!();
            }
            if state == "committed" {
                return Ok(());
            }
            bail!(
                "job {id} {state}: {}",
                job["error"].as_str().unwrap_or("see the nodes above")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn progress_bar(state: &str, done: usize, total: usize, sent: u64, note: Option<&str>) -> String {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(0);
    let note = match (state, note) {
        ("queued" | "scheduled", Some(note)) => format!(" ({note})"),
        _ => String::new(),
    };
    format!(
        "[{}{}] {done}/{total} nodes  {}  {state}{note}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        human_bytes(sent)
    )
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Cancels a job that has not started.
pub async fn cancel_job(mover: &str, ca: Option<&Path>, id: &str) -> Result<()> {
    let client = client(ca)?;
    let url = format!("{}/api/jobs/{id}/cancel", mover.trim_end_matches('/'));
    call(&client, "POST", &url, None).await?;
    println!("job {id} cancelled");
    Ok(())
}

/// Lists recent jobs.
pub async fn list_jobs(mover: &str, ca: Option<&Path>) -> Result<()> {
    let client = client(ca)?;
    let jobs = call(
        &client,
        "GET",
        &format!("{}/api/jobs", mover.trim_end_matches('/')),
        None,
    )
    .await?;
    for job in jobs.as_array().cloned().unwrap_or_default() {
        println!(
            "{:40} {:12} {:10} {:10} {}{}",
            job["id"].as_str().unwrap_or("?"),
            job["kind"].as_str().unwrap_or("?"),
            job["site"].as_str().unwrap_or("?"),
            job["state"].as_str().unwrap_or("?"),
            job["every_s"]
                .as_u64()
                .map(|s| format!("every {s} s; "))
                .unwrap_or_default(),
            job["error"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Creates a checkpoint.
pub async fn create_checkpoint(mover: &str, ca: Option<&Path>, site: &str) -> Result<()> {
    let client = client(ca)?;
    let url = format!("{}/api/checkpoints", mover.trim_end_matches('/'));
    let created = call(&client, "POST", &url, Some(serde_json::json!({ "site": site }))).await?;
    println!("checkpoint {} of {site}", created["number"]);
    Ok(())
}

/// Lists checkpoints.
pub async fn list_checkpoints(mover: &str, ca: Option<&Path>, site: &str) -> Result<()> {
    let client = client(ca)?;
    let url = format!("{}/api/checkpoints?site={site}", mover.trim_end_matches('/'));
    for checkpoint in call(&client, "GET", &url, None)
        .await?
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        println!(
            "{:>4}  version {:>6}  {:>12} bytes  created {} ms",
            checkpoint["number"], checkpoint["version"], checkpoint["bytes"], checkpoint["created_ms"]
        );
    }
    Ok(())
}
