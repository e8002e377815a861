//! The demo's edges as one cache community (seeds `002_82dbe7a209926976.txt` and `003_590cbd812baaa7e3.txt`;
//! issue 11, item 8): a `tern registry` (seed 002's "cache server") in the demo, and every edge started with
//! `--community demo --cluster-key DIR/cluster.key --registry URL`. Each edge's origin is its own node and
//! the nodes hold the same content, so any edge may fetch any object: the allocation table gives each
//! object one owner, which alone stores it; the other edges ask the owner. What each edge's `/status` says
//! of the community is read here, and agreement (one master, one epoch, every edge listed) is waited for
//! before the demo goes on.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tern_community::service::{RunningRegistry, ServiceConfig};
use tern_edge::community::CommunitySettings;

/// The community's name.
pub const COMMUNITY: &str = "demo";
/// Longest wait for one `/status` answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the demo's registry on `listen`, its state under `data`. The state of an earlier run on the
/// same `--dir` is removed first: the masters it names are gone, and the edges would first try to join
/// them.
pub async fn start_registry(listen: SocketAddr, data: &Path, key: &Path) -> Result<RunningRegistry> {
    if data.exists() {
        std::fs::remove_dir_all(data)
            .with_context(|| format!("cannot remove an earlier run's registry state {}", data.display()))?;
    }
    let key = tern_wire::SecretKey::load(key).with_context(|| format!("cannot read the key file {}", key.display()))?;
    let config = ServiceConfig {
        listen,
        admin: None,
        key,
        data: data.to_path_buf(),
    };
    tern_community::service::start(config)
        .await
        .context("the community registry did not start")
}

/// An edge's community settings: the demo's community, found through `registry`, peer requests and
/// community messages on `peer_listen`.
pub fn settings(key: &Path, peer_listen: SocketAddr, registry: SocketAddr) -> CommunitySettings {
    CommunitySettings {
        name: COMMUNITY.into(),
        cluster_key: key.to_path_buf(),
        peer_listen,
        registry: Some(format!("http://{registry}")),
        ..CommunitySettings::default()
    }
}

/// What one edge's `/status` says of its community.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// `discovering`, `joining`, `member`, `master`, ...
    pub role: String,
    /// This edge's name in the community.
    pub name: String,
    /// The master it follows.
    pub master: Option<String>,
    /// The epoch of its peer list.
    pub epoch: Option<String>,
    /// The peers listed, by name, sorted.
    pub peers: Vec<String>,
}

impl View {
    /// The view in the `community` object of an edge's `/status`; `None` when it has none.
    pub fn from_status(status: &serde_json::Value) -> Option<View> {
        let community = &status["community"];
        let text = |field: &str| community[field].as_str().map(str::to_string);
        let mut peers: Vec<String> = community["peers"]
            .as_array()?
            .iter()
            .filter_map(|peer| peer["name"].as_str().map(str::to_string))
            .collect();
        peers.sort();
        Some(View {
            role: text("role")?,
            name: text("name")?,
            master: text("master"),
            epoch: text("epoch"),
            peers,
        })
    }
}

/// What every edge agrees on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// The master's name.
    pub master: String,
    /// The epoch.
    pub epoch: String,
    /// The peers, by name, sorted.
    pub peers: Vec<String>,
}

/// Whether `views` (one per edge) agree: exactly one of them is master, every one follows it at the same
/// epoch, and every one lists exactly the edges of `views`.
pub fn agreement(views: &[View]) -> Option<Agreement> {
    let mut names: Vec<String> = views.iter().map(|view| view.name.clone()).collect();
    names.sort();
    let first = views.first()?;
    let master = first.master.clone()?;
    let epoch = first.epoch.clone()?;
    let masters: Vec<&View> = views.iter().filter(|view| view.role == "master").collect();
    let one_master = masters.len() == 1 && masters[0].name == master;
    let all_follow = views.iter().all(|view| {
        view.master.as_ref() == Some(&master)
            && view.epoch.as_ref() == Some(&epoch)
            && view.peers == names
            && matches!(view.role.as_str(), "master" | "member")
    });
    (one_master && all_follow).then_some(Agreement {
        master,
        epoch,
        peers: names,
    })
}

/// Reads the `/status` of every edge admin listener in `admins`.
pub struct StatusReader {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl StatusReader {
    /// A reader with its own HTTP client.
    pub fn new() -> StatusReader {
        StatusReader {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    /// `GET /status` from the admin listener `admin`, as JSON.
    pub async fn status(&self, admin: SocketAddr) -> Result<serde_json::Value> {
        let url = format!("http://{admin}/status");
        let request = http::Request::get(&url).body(Full::new(Bytes::new()))?;
        let response = tokio::time::timeout(STATUS_TIMEOUT, self.client.request(request))
            .await
            .with_context(|| format!("GET {url}: no answer within {STATUS_TIMEOUT:?}"))?
            .with_context(|| format!("GET {url}"))?;
        let body = response.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&body).with_context(|| format!("GET {url}: not JSON"))
    }

    /// Every edge's community view, in the order of `admins`.
    pub async fn views(&self, admins: &[SocketAddr]) -> Result<Vec<View>> {
        let mut views = Vec::new();
        for admin in admins {
            let status = self.status(*admin).await?;
            let view = View::from_status(&status)
                .with_context(|| format!("the edge at {admin} shows no community in its /status"))?;
            views.push(view);
        }
        Ok(views)
    }

    /// Waits until the edges at `admins` agree on one master, one epoch and every one of them as a peer;
    /// fails after `timeout` with what each one showed last.
    pub async fn wait_agreed(&self, admins: &[SocketAddr], timeout: Duration) -> Result<Agreement> {
        let deadline = Instant::now() + timeout;
        loop {
            let views = self.views(admins).await;
            if let Ok(views) = &views
                && let Some(agreement) = agreement(views)
            {
                return Ok(agreement);
            }
            if Instant::now() > deadline {
                bail!("the demo's edges did not form one community within {timeout:?}: {views:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, role: &str, master: &str, epoch: &str, peers: &[&str]) -> View {
        View {
            role: role.into(),
            name: name.into(),
            master: Some(master.into()),
            epoch: Some(epoch.into()),
            peers: peers.iter().map(|peer| peer.to_string()).collect(),
        }
    }

    const ALL: [&str; 3] = ["a", "b", "c"];

    #[test]
    fn three_edges_agree_on_one_master_one_epoch_and_three_peers() {
        let views = [
            view("a", "master", "a", "2.5", &ALL),
            view("b", "member", "a", "2.5", &ALL),
            view("c", "member", "a", "2.5", &ALL),
        ];
        assert_eq!(
            agreement(&views),
            Some(Agreement {
                master: "a".into(),
                epoch: "2.5".into(),
                peers: ALL.iter().map(|peer| peer.to_string()).collect(),
            })
        );
    }

    #[test]
    fn disagreement_is_not_agreement() {
        let cases: [[View; 3]; 5] = [
            // One edge has not heard of the last join.
            [
                view("a", "master", "a", "2.5", &ALL),
                view("b", "member", "a", "2.5", &ALL),
                view("c", "member", "a", "2.4", &["a", "c"]),
            ],
            // Two masters (a split not yet healed).
            [
                view("a", "master", "a", "2.5", &ALL),
                view("b", "master", "a", "2.5", &ALL),
                view("c", "member", "a", "2.5", &ALL),
            ],
            // The master named is no edge's role.
            [
                view("a", "member", "a", "2.5", &ALL),
                view("b", "member", "a", "2.5", &ALL),
                view("c", "member", "a", "2.5", &ALL),
            ],
            // A peer list with a stranger in it.
            [
                view("a", "master", "a", "2.5", &["a", "b", "x"]),
                view("b", "member", "a", "2.5", &["a", "b", "x"]),
                view("c", "member", "a", "2.5", &["a", "b", "x"]),
            ],
            // Still joining.
            [
                view("a", "master", "a", "2.5", &ALL),
                view("b", "member", "a", "2.5", &ALL),
                view("c", "joining", "a", "2.5", &ALL),
            ],
        ];
        for views in cases {
            assert_eq!(agreement(&views), None, "{views:?}");
        }
    }
}
