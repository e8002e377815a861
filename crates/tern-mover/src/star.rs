//! The star (seed 004: the simplest distribution tree, the CCM at its centre): the mover sends every node
//! its own copy of each assignment over HTTP(S), `POST NODE/assignments`, all nodes at once. A node answers
//! 200 with an [`tern_wire::mover::AssignmentAnswer`] when it applied the assignment, or an error status
//! with an [`tern_wire::mover::ErrorAnswer`]; only the status decides.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tern_http::tls::HttpsClient;

use crate::delivery::{Delivery, NodeOutcome, PhaseFuture, Recipient};

/// The star over HTTP: one request per node and assignment, each bounded by a timeout.
#[derive(Clone)]
pub struct StarDelivery {
    client: HttpsClient<Full<Bytes>>,
    timeout: Duration,
}

impl StarDelivery {
    /// A star sending with `client`; a node whose answer has not begun within `timeout` (the request sent
    /// and the status back) has failed.
    pub fn new(client: HttpsClient<Full<Bytes>>, timeout: Duration) -> StarDelivery {
        StarDelivery { client, timeout }
    }

    /// Sends `assignment` to every node at once; the outcomes come back in the order of `nodes`.
    async fn send_all(&self, job: &str, assignment: Bytes, nodes: &[Recipient]) -> Vec<NodeOutcome> {
        let mut tasks = Vec::with_capacity(nodes.len());
        for node in nodes {
            let (client, body, url, timeout) =
                (self.client.clone(), assignment.clone(), node.url.clone(), self.timeout);
            tasks.push((
                node.name.clone(),
                tokio::spawn(async move { send(&client, &url, body, timeout).await }),
            ));
        }
        let bytes = assignment.len() as u64;
        let mut outcomes = Vec::with_capacity(tasks.len());
        for (node, task) in tasks {
            let result = match task.await {
                Ok(result) => result,
                Err(error) => Err(format!("delivery task of job {job} ended: {error}")),
            };
            outcomes.push(NodeOutcome { node, bytes, result });
        }
        outcomes
    }
}

impl Delivery for StarDelivery {
    fn prepare<'a>(&'a self, job: &'a str, content: Bytes, nodes: &'a [Recipient]) -> PhaseFuture<'a> {
        Box::pin(self.send_all(job, content, nodes))
    }

    fn commit<'a>(&'a self, job: &'a str, commit: Bytes, nodes: &'a [Recipient]) -> PhaseFuture<'a> {
        Box::pin(self.send_all(job, commit, nodes))
    }
}

/// One assignment to one node.
async fn send(client: &HttpsClient<Full<Bytes>>, url: &str, body: Bytes, timeout: Duration) -> Result<(), String> {
    let request = Request::post(format!("{}/assignments", url.trim_end_matches('/')))
        .header("content-type", "application/octet-stream")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| "node did not answer in time".to_string())?
        .map_err(|e| {
            let reason = match std::error::Error::source(&e) {
                Some(cause) => tern_http::tls::error_reason(cause),
                None => e.to_string(),
            };
            format!("node unreachable: {reason}")
        })?;
    let status = response.status();
    let text = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string())
        .unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("node refused ({status}): {}", text.trim()))
    }
}
