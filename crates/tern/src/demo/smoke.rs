//! `tern demo --smoke`: checks the whole path of the running system and fails on the first fault. The nodes
//! hold the site; the three edges are one cache community (one master, one epoch, three peers, as each
//! edge's `/status` shows and the registry records); a page is stored once, by its owner, which hits while
//! the other edges are served by it, and a purge there makes its next request a miss; a change published with the very
//! `tern publish` line the guide prints reaches every edge within [`FRESH_WITHIN`] of the commit, and the
//! printed `tern rollback` line brings the old page back on every edge as fast.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tern_wire::mover::FreshState;

use super::community::{self, StatusReader};
use super::site;
use super::system::{NODES, System};

/// Longest time from a commit to every edge serving what it committed (the mover's hand-over, the sync
/// service's purge and prefetch on every edge: tens of milliseconds on loopback).
const FRESH_WITHIN: Duration = Duration::from_secs(2);
/// Longest wait for a `tern publish` or `tern rollback` run by the check.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The pages of the site whose bytes the check follows: the index file and its directory's URL, which the
/// mover purges with it.
const PAGES: [&str; 2] = ["/index.html", "/"];

type DemoClient = Client<HttpConnector, Full<Bytes>>;

/// A response read whole.
struct Got {
    status: StatusCode,
    /// The edge's own `Cache-Status` entry: the last of the list (RFC 9211: the cache nearest the client
    /// last). A page the owner served carries the owner's entry first.
    cache_status: String,
    body: Bytes,
}

impl Got {
    /// Whether the page's owner in the community served it to this edge, which did not store it
    /// (`--community-keep never`).
    fn served_by_owner(&self) -> bool {
        self.cache_status.contains("detail=community-owner")
    }

    /// Whether this edge served the page from its own cache.
    fn hit(&self) -> bool {
        self.cache_status.contains("hit") && !self.cache_status.contains("fwd=")
    }
}

/// The check, with its HTTP client.
struct Smoke<'a> {
    system: &'a System,
    client: DemoClient,
}

/// Runs every check of the system.
pub async fn check(system: &System) -> Result<()> {
    let smoke = Smoke {
        system,
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
    };
    smoke.nodes_hold_the_site()?;
    smoke.edges_form_one_community().await?;
    smoke.edges_cache_and_purge().await?;
    smoke.publish_and_roll_back().await
}

impl Smoke<'_> {
    /// A request for the site's `path` to the edge at `index`.
    async fn request(&self, method: &str, index: usize, path: &str, token: Option<&str>) -> Result<Got> {
        let url = format!("http://{}{path}", self.system.edges[index].listen);
        let mut request = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::HOST, site::HOST);
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = self
            .client
            .request(request.body(Full::new(Bytes::new()))?)
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let cache_status = response
            .headers()
            .get_all("cache-status")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|list| list.split(','))
            .next_back()
            .unwrap_or("")
            .trim()
            .to_string();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Got {
            status,
            cache_status,
            body,
        })
    }

    /// Every node's live tree holds the staging directory's index page.
    fn nodes_hold_the_site(&self) -> Result<()> {
        let paths = &self.system.paths;
        let expected = std::fs::read(paths.staging.join("index.html"))?;
        for number in 1..=NODES {
            let live = paths.node_live(number).join("index.html");
            if std::fs::read(&live).ok().as_deref() != Some(expected.as_slice()) {
                bail!("node {number} does not hold the published site at {}", live.display());
            }
        }
        println!("content mover: the site is live on {NODES} nodes");
        Ok(())
    }

    /// The edges are one community: every edge's `/status` names the same master at the same epoch and
    /// lists the three edges, exactly one edge is master, and the registry records it.
    async fn edges_form_one_community(&self) -> Result<()> {
        let admins = self.system.edge_admins()?;
        let views = StatusReader::new().views(&admins).await?;
        let Some(agreement) = community::agreement(&views) else {
            bail!("the edges do not agree on one community: {views:?}");
        };
        if agreement.peers.len() != NODES {
            bail!("the community should list the {NODES} edges: {agreement:?}");
        }
        let recorded = self
            .system
            .registry
            .role
            .state()
            .communities
            .get(community::COMMUNITY)
            .map(|record| record.master.name.clone());
        if recorded.as_ref() != Some(&agreement.master) {
            bail!(
                "the registry records {recorded:?} as the community's master, the edges follow {}",
                agreement.master
            );
        }
        println!(
            "community {}: every edge follows master {} at epoch {}, {} peers",
            community::COMMUNITY,
            agreement.master,
            agreement.epoch,
            agreement.peers.len()
        );
        Ok(())
    }

    /// A page asked of every edge twice: exactly one edge, the page's owner, stores it and hits; the others
    /// are served by the owner both times and store nothing. A purge at the owner removes that copy, and
    /// its next request is a miss again.
    async fn edges_cache_and_purge(&self) -> Result<()> {
        let token = self.system.purge_token.as_str();
        let page = "/news.html";
        let mut owners = Vec::new();
        let mut seen = Vec::new();
        for index in 0..self.system.edges.len() {
            let number = index + 1;
            let first = self.request("GET", index, page, None).await?;
            let second = self.request("GET", index, page, None).await?;
            for got in [&first, &second] {
                if got.status != StatusCode::OK || !got.body.starts_with(b"<!doctype html>") {
                    bail!(
                        "edge {number}: {page} should be the page, got {} `{}`",
                        got.status,
                        got.cache_status
                    );
                }
            }
            let owner = !first.served_by_owner() && !second.served_by_owner() && second.hit();
            let served = first.served_by_owner() && second.served_by_owner();
            if !owner && !served {
                bail!(
                    "edge {number}: {page} should be stored and hit at its owner, or served by the owner twice, got \
                     `{}` then `{}`",
                    first.cache_status,
                    second.cache_status
                );
            }
            if owner {
                owners.push(number);
            }
            seen.push(format!(
                "edge {number}: {} -> {}",
                first.cache_status, second.cache_status
            ));
        }
        let [owner] = owners[..] else {
            bail!("exactly one edge should store {page}, got edges {owners:?}: {seen:?}");
        };
        // The purge goes to the owner, which holds the one copy (a member that relays purges to the
        // others would find it there too; the owner finds it either way).
        let purged = self.request("PURGE", owner - 1, page, Some(token)).await?;
        let answer: serde_json::Value = serde_json::from_slice(&purged.body).unwrap_or_default();
        if purged.status != StatusCode::OK || answer["removed"].as_u64().is_none_or(|removed| removed == 0) {
            bail!(
                "edge {owner}: a purge of {page} should remove the copy its owner holds, got {} {answer}",
                purged.status
            );
        }
        let again = self.request("GET", owner - 1, page, None).await?;
        if !again.cache_status.contains("fwd=miss") || again.served_by_owner() {
            bail!(
                "edge {owner}: a purge should make the owner's next request a miss, got `{}`",
                again.cache_status
            );
        }
        for line in seen {
            println!("{line}");
        }
        println!(
            "{page} is stored once, by its owner edge {owner}; purged there ({answer}) -> edge {owner}: {}",
            again.cache_status
        );
        Ok(())
    }

    /// Publishes a change with the printed `tern publish` line and rolls it back with the printed
    /// `tern rollback` line; after each, every edge serves the committed page within [`FRESH_WITHIN`].
    async fn publish_and_roll_back(&self) -> Result<()> {
        let index_file = self.system.paths.staging.join("index.html");
        let old = Bytes::from(std::fs::read(&index_file)?);
        // Every edge holds the old page for an hour: only the mover's purge can bring the new one.
        for _ in 0..2 {
            self.every_edge_serves(&old).await?;
        }
        // Each page is held by one edge, its owner, which hits; the others are served by it.
        for page in PAGES {
            let mut holders = Vec::new();
            for index in 0..self.system.edges.len() {
                let got = self.request("GET", index, page, None).await?;
                if got.body != old || !(got.hit() || got.served_by_owner()) {
                    bail!(
                        "edge {}: {page} should be the published page, a hit at its owner or served by the owner, \
                         got `{}`",
                        index + 1,
                        got.cache_status
                    );
                }
                if got.hit() {
                    holders.push(index + 1);
                }
            }
            if holders.len() != 1 {
                bail!("exactly one edge should hold {page}, got edges {holders:?}");
            }
        }
        let mut changed = old.to_vec();
        changed.extend_from_slice(b"<p>published by tern demo --smoke</p>\n");
        let new = Bytes::from(changed);
        std::fs::write(&index_file, &new)?;
        let published = self.run_until_served(&self.system.publish_command()?, &new).await;
        // Staging goes back to what is live after the rollback, also when the check failed.
        let rolled_back = match published {
            Ok(()) => self.run_until_served(&self.system.rollback_command()?, &old).await,
            Err(error) => Err(error),
        };
        std::fs::write(&index_file, &old)?;
        rolled_back
    }

    /// Whether every edge serves `body` for every page of [`PAGES`].
    async fn every_edge_serves(&self, body: &Bytes) -> Result<bool> {
        let mut all = true;
        for index in 0..self.system.edges.len() {
            for page in PAGES {
                let got = self.request("GET", index, page, None).await?;
                all &= got.status == StatusCode::OK && got.body == *body;
            }
        }
        Ok(all)
    }

    /// Runs `command` (a `tern publish` or `tern rollback` with `--wait-fresh`) while watching the edges;
    /// fails unless it succeeds and every edge served `body` within [`FRESH_WITHIN`] of the commit.
    async fn run_until_served(&self, command: &[String], body: &Bytes) -> Result<()> {
        let (program, args) = command.split_first().context("an empty command")?;
        let what = args.first().cloned().unwrap_or_default();
        let running = tokio::process::Command::new(program)
            .args(args)
            .env("TERN_LOG", "warn")
            .kill_on_drop(true)
            .output();
        let running = tokio::spawn(running);
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let served_ms = loop {
            // Sampled before the edges are asked: a command that had ended by then waited for them.
            let ended = running.is_finished();
            if self.every_edge_serves(body).await? {
                break now_ms();
            }
            if ended {
                succeeded(&what, running.await?.with_context(|| format!("cannot run {program}"))?)?;
                bail!("tern {what} --wait-fresh returned before every edge served the committed page");
            }
            if Instant::now() > deadline {
                bail!("tern {what}: the edges did not serve the committed page within {COMMAND_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let output = tokio::time::timeout(COMMAND_TIMEOUT, running)
            .await
            .with_context(|| format!("tern {what} did not end within {COMMAND_TIMEOUT:?}"))??
            .with_context(|| format!("cannot run {program}"))?;
        let stdout = succeeded(&what, output)?;
        let id = stdout
            .lines()
            .find_map(|line| line.strip_prefix("job "))
            .with_context(|| format!("tern {what} printed no job: {stdout}"))?;
        let job = self
            .system
            .mover
            .role
            .job(id.trim())
            .await
            .with_context(|| format!("the mover does not know job {id}"))?;
        let freshness = job
            .freshness
            .with_context(|| format!("job {id} did not hand its commit to the site's caches"))?;
        if freshness.state != FreshState::Fresh {
            bail!(
                "job {id}: the edges are {} after `tern {what} --wait-fresh`",
                freshness.state
            );
        }
        // After --wait-fresh returned, the edges serve the committed page without any more waiting.
        if !self.every_edge_serves(body).await? {
            bail!("tern {what} --wait-fresh returned before every edge served the committed page");
        }
        let served_after = Duration::from_millis(served_ms.saturating_sub(freshness.since_ms));
        if served_after > FRESH_WITHIN {
            bail!("tern {what}: every edge served the committed page only {served_after:?} after the commit");
        }
        let acknowledged = freshness
            .fresh_ms
            .unwrap_or(freshness.since_ms)
            .saturating_sub(freshness.since_ms);
        let urls = if freshness.purged == 1 { "URL" } else { "URLs" };
        println!(
            "tern {what}: every edge served the committed page {} ms after the commit (the sync service acknowledged after {acknowledged} ms; {} {urls} purged, {} prefetched)",
            served_after.as_millis(),
            freshness.purged,
            freshness.prefetched
        );
        Ok(())
    }
}

/// The stdout of `tern what` when it succeeded; else an error with everything it printed.
fn succeeded(what: &str, output: std::process::Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "tern {what} failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// Milliseconds since the Unix epoch: the mover's clock, which records the commit.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
