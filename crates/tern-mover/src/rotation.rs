//! The load-balancer interface (seed 004): the mover tells the load balancer in front of the nodes to take
//! a node out of its rotation when the node failed to receive or apply an assignment, so it never serves a
//! stale site, and to put it back once it has been brought up to date.
//!
//! The load balancer is HAProxy, through its runtime API (`stats socket ... level admin`, over TCP or a Unix
//! socket): `set server <backend>/<node> state maint` and `... state ready`. Each node is a server of one
//! backend, named after the node (`server n1 10.0.0.2:80` in `haproxy.cfg` for `tern node --name n1`).
//!
//! Which nodes belong in the rotation is decided by [`in_rotation`], a pure function of what the store
//! knows; the commands are sent after every job for the job's nodes (`Mover::update_rotation`). HAProxy keeps the state itself, so
//! the commands are idempotent and a restarted mover needs nothing of its own.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where HAProxy's runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeApi {
    /// `stats socket ipv4@HOST:PORT level admin`.
    Tcp(String),
    /// `stats socket /run/haproxy/admin.sock level admin`.
    Unix(PathBuf),
}

impl RuntimeApi {
    /// Reads `HOST:PORT` as TCP, anything with a `/` as a Unix socket path.
    pub fn parse(text: &str) -> RuntimeApi {
        if text.contains('/') {
            RuntimeApi::Unix(PathBuf::from(text))
        } else {
            RuntimeApi::Tcp(text.to_string())
        }
    }
}

impl std::fmt::Display for RuntimeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeApi::Tcp(address) => write!(f, "{address}"),
            RuntimeApi::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The HAProxy backend whose servers are the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    /// The runtime API.
    pub api: RuntimeApi,
    /// The backend.
    pub backend: String,
}

/// Whether a node serves traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// In the rotation (`state ready`).
    In,
    /// Out of it (`state maint`): the node holds a stale version of a site it hosts.
    Out,
}

/// Whether a node belongs in the rotation: it holds the current version of every site it hosts. `hosted`
/// lists, for each site the node hosts, (the site's version, the version the node holds).
pub fn in_rotation(hosted: &[(u64, u64)]) -> Rotation {
    if hosted.iter().all(|(current, held)| current == held) {
        Rotation::In
    } else {
        Rotation::Out
    }
}

/// Longest a runtime API command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

impl LoadBalancer {
    /// The runtime API command that puts `node` in or out of the rotation.
    pub fn command(&self, node: &str, rotation: Rotation) -> String {
        let state = match rotation {
            Rotation::In => "ready",
            Rotation::Out => "maint",
        };
        format!("set server {}/{node} state {state}\n", self.backend)
    }

    /// Sends the command for `node`. HAProxy answers an accepted command with nothing (or a blank line) and
    /// a refused one with the reason, e.g. `No such server.`.
    pub async fn set(&self, node: &str, rotation: Rotation) -> Result<(), String> {
        let command = self.command(node, rotation);
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, self.send(&command))
            .await
            .map_err(|_| format!("HAProxy runtime API at {} did not answer in time", self.api))?
            .map_err(|e| format!("HAProxy runtime API at {}: {e}", self.api))?;
        let answer = answer.trim();
        if answer.is_empty() {
            Ok(())
        } else {
            Err(format!("HAProxy refused `{}`: {answer}", command.trim()))
        }
    }

    /// One command per connection (HAProxy's non-interactive mode answers and closes).
    async fn send(&self, command: &str) -> std::io::Result<String> {
        let mut answer = String::new();
        match &self.api {
            RuntimeApi::Tcp(address) => {
                let mut stream = tokio::net::TcpStream::connect(address.as_str()).await?;
                stream.write_all(command.as_bytes()).await?;
                stream.read_to_string(&mut answer).await?;
            }
            RuntimeApi::Unix(path) => {
                #[cfg(unix)]
                {
                    let mut stream = tokio::net::UnixStream::connect(path).await?;
                    stream.write_all(command.as_bytes()).await?;
                    stream.read_to_string(&mut answer).await?;
                }
                #[cfg(not(unix))]
                {
                    let _ = path;
                    return Err(std::io::Error::other("Unix sockets need a Unix system"));
                }
            }
        }
        Ok(answer)
    }
}

impl crate::ccm::Mover {
    /// Tells the load balancer which of `nodes` serve: a node holding a stale version of a site it hosts
    /// (a delivery failed, or it was down) is taken out of the rotation until a catch-up brings it up to
    /// date. Runs after every job, before the job is reported finished.
    pub(crate) async fn update_rotation(&self, job: &str, nodes: &[String]) {
        let Some(balancer) = &self.config.load_balancer else {
            return;
        };
        let asked = nodes.to_vec();
        let read = self
            .store
            .call(move |store| {
                let sites = store.sites()?;
                let mut states = Vec::with_capacity(asked.len());
                for node in asked {
                    let mut hosted = Vec::new();
                    let mut stale = Vec::new();
                    for site in &sites {
                        if !store.target_nodes(&site.target)?.contains(&node) {
                            continue;
                        }
                        let held = store.node_version(&node, &site.name)?;
                        if held != site.sequence {
                            stale.push(format!("{} (holds {held}, current {})", site.name, site.sequence));
                        }
                        hosted.push((site.sequence, held));
                    }
                    states.push((node, in_rotation(&hosted), stale));
                }
                Ok(states)
            })
            .await;
        let states = match read {
            Ok(states) => states,
            Err(error) => {
                tracing::warn!(%job, %error, "cannot read which nodes are stale; the load balancer was not updated");
                return;
            }
        };
        for (node, rotation, stale) in states {
            let outcome = balancer.set(&node, rotation).await;
            self.metrics.rotation(rotation, outcome.is_ok());
            match (outcome, rotation) {
                (Ok(()), Rotation::In) => tracing::debug!(%job, %node, "node in the load balancer's rotation"),
                (Ok(()), Rotation::Out) => {
                    let stale = stale.join(", ");
                    tracing::warn!(%job, %node, %stale, "node taken out of the load balancer's rotation");
                    let message = format!("{node} taken out of the load balancer's rotation: stale {stale}");
                    let (id, now) = (job.to_string(), crate::ccm::now_ms());
                    let _ = self.store.call(move |store| store.note(Some(&id), &message, now)).await;
                }
                (Err(error), _) => tracing::warn!(%job, %node, %error, "the load balancer was not updated"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_behind_on_any_hosted_site_is_out() {
        assert_eq!(
            in_rotation(&[]),
            Rotation::In,
            "a node hosting nothing serves nothing stale"
        );
        assert_eq!(in_rotation(&[(3, 3), (7, 7)]), Rotation::In);
        assert_eq!(in_rotation(&[(3, 3), (7, 6)]), Rotation::Out);
        assert_eq!(in_rotation(&[(3, 0)]), Rotation::Out, "a node that never got the site");
        // After a rollback the site's version is the older one; a node that missed the rollback is out.
        assert_eq!(in_rotation(&[(4, 5)]), Rotation::Out);
    }

    #[test]
    fn commands_name_the_backend_and_the_node() {
        let balancer = LoadBalancer {
            api: RuntimeApi::parse("127.0.0.1:9999"),
            backend: "web".into(),
        };
        assert_eq!(balancer.api, RuntimeApi::Tcp("127.0.0.1:9999".into()));
        assert_eq!(balancer.command("n1", Rotation::Out), "set server web/n1 state maint\n");
        assert_eq!(balancer.command("n1", Rotation::In), "set server web/n1 state ready\n");
        assert_eq!(
            RuntimeApi::parse("/run/haproxy/admin.sock"),
            RuntimeApi::Unix("/run/haproxy/admin.sock".into())
        );
    }
}
