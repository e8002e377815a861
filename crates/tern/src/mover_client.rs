//! Clients of the mover's API: `tern publish`, `tern rollback` (both wait for the job and show each node's
//! state) and `tern jobs`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

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

/// Submits a job and waits for it, printing progress; fails unless it committed.
pub async fn run_job(mover: &str, body: serde_json::Value) -> Result<()> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let base = mover.trim_end_matches('/');
    let created = call(&client, "POST", &format!("{base}/api/jobs"), Some(body)).await?;
    let id = created["id"]
        .as_str()
        .context("the mover did not return a job id")?
        .to_string();
    println!("job {id}");
    let mut last = String::new();
    loop {
        let job = call(&client, "GET", &format!("{base}/api/jobs/{id}"), None).await?;
        let nodes = job["nodes"].as_array().cloned().unwrap_or_default();
        let done = nodes
            .iter()
            .filter(|n| matches!(n["state"].as_str(), Some("committed" | "failed")))
            .count();
        let line = format!(
            "  {} — {done}/{} nodes finished",
            job["state"].as_str().unwrap_or("?"),
            nodes.len()
        );
        if line != last {
            print!("\r{line}   ");
            let _ = std::io::stdout().flush();
            last = line;
        }
        if matches!(job["state"].as_str(), Some("committed" | "failed")) {
            println!();
            for node in &nodes {
                let error = node["error"].as_str().map(|e| format!(" ({e})")).unwrap_or_default();
                println!(
                    "  {:12} {:10} {} bytes{error}",
                    node["node"].as_str().unwrap_or("?"),
                    node["state"].as_str().unwrap_or("?"),
                    node["bytes"]
                );
            }
            if job["state"] == "committed" {
                return Ok(());
            }
            bail!(
                "job {id} failed: {}",
                job["error"].as_str().unwrap_or("see the nodes above")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lists recent jobs.
pub async fn list_jobs(mover: &str) -> Result<()> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let jobs = call(
        &client,
        "GET",
        &format!("{}/api/jobs", mover.trim_end_matches('/')),
        None,
    )
    .await?;
    for job in jobs.as_array().cloned().unwrap_or_default() {
        println!(
            "{:40} {:12} {:10} {:10} {}",
            job["id"].as_str().unwrap_or("?"),
            job["kind"].as_str().unwrap_or("?"),
            job["site"].as_str().unwrap_or("?"),
            job["state"].as_str().unwrap_or("?"),
            job["error"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Creates a checkpoint.
pub async fn create_checkpoint(mover: &str, site: &str) -> Result<()> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let url = format!("{}/api/checkpoints", mover.trim_end_matches('/'));
    let created = call(&client, "POST", &url, Some(serde_json::json!({ "site": site }))).await?;
    println!("checkpoint {} of {site}", created["number"]);
    Ok(())
}

/// Lists checkpoints.
pub async fn list_checkpoints(mover: &str, site: &str) -> Result<()> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
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
