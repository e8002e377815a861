//! The star (seed 004: the simplest distribution tree, the CCM at its centre): the mover sends every node
//! its own copy of each assignment over HTTP(S), `POST NODE/assignments`, all nodes at once. A node answers
//! 200 with an [`tern_wire::mover::AssignmentAnswer`] when it applied the assignment, or an error status
//! with an [`tern_wire::mover::ErrorAnswer`]; only the status decides. A node's bytes count what left the
//! mover for it: nothing when no connection was made.

use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Limited};
use tern_http::tls::HttpsClient;
use tern_wire::mover::ErrorAnswer;

use crate::delivery::{Delivery, Early, EarlyReports, NodeOutcome, PhaseFuture, Recipient};
use crate::payload::Payload;

/// The star over HTTP: one request per node and assignment, each bounded by a timeout.
#[derive(Clone)]
pub struct StarDelivery {
    client: HttpsClient<tern_http::Body>,
    timeout: Duration,
}

impl StarDelivery {
    /// A star sending with `client`; a node whose answer has not begun within `timeout` (the request sent
    /// and the status back) has failed.
    pub fn new(client: HttpsClient<tern_http::Body>, timeout: Duration) -> StarDelivery {
        StarDelivery { client, timeout }
    }

    /// Sends `assignment` to every node at once, each request reading it a chunk at a time; the outcomes
    /// come back in the order of `nodes`, and each goes to `early` (when given) as soon as it is known.
    async fn send_all(
        &self,
        job: &str,
        assignment: Payload,
        nodes: &[Recipient],
        early: Option<EarlyReports>,
    ) -> Vec<NodeOutcome> {
        let length = assignment.len();
        let mut tasks = Vec::with_capacity(nodes.len());
        for node in nodes {
            let (client, body, url, timeout) =
                (self.client.clone(), assignment.clone(), node.url.clone(), self.timeout);
            let (name, early) = (node.name.clone(), early.clone());
            tasks.push((
                node.name.clone(),
                tokio::spawn(async move {
                    let (sent, result) = match send(&client, &url, body, timeout).await {
                        Sent::Nothing(error) => (false, Err(error)),
                        Sent::Body(result) => (true, result),
                    };
                    // Only what left the mover counts: a node that refused the connection was sent nothing.
                    let bytes = if sent { length } else { 0 };
                    let outcome = NodeOutcome {
                        node: name,
                        bytes,
                        result,
                        via: None,
                    };
                    if let Some(early) = early {
                        let _ = early.send(Early::Outcome(outcome.clone()));
                    }
                    outcome
                }),
            ));
        }
        let mut outcomes = Vec::with_capacity(tasks.len());
        for (node, task) in tasks {
            outcomes.push(task.await.unwrap_or_else(|error| NodeOutcome {
                node,
                bytes: 0,
                result: Err(format!("delivery task of job {job} ended: {error}")),
                via: None,
            }));
        }
        outcomes
    }
}

impl Delivery for StarDelivery {
    fn prepare<'a>(
        &'a self,
        job: &'a str,
        content: Payload,
        nodes: &'a [Recipient],
        early: Option<EarlyReports>,
    ) -> PhaseFuture<'a> {
        Box::pin(self.send_all(job, content, nodes, early))
    }

    fn commit<'a>(&'a self, job: &'a str, commit: Payload, nodes: &'a [Recipient]) -> PhaseFuture<'a> {
        Box::pin(self.send_all(job, commit, nodes, None))
    }
}

/// How far one assignment got to one node.
enum Sent {
    /// No connection was made (refused, no route, TLS handshake failed): nothing was sent; why.
    Nothing(String),
    /// The connection was made and the body handed to it (in part, at least, when no answer came); how the
    /// node took it.
    Body(Result<(), String>),
}

/// One assignment to one node.
async fn send(client: &HttpsClient<tern_http::Body>, url: &str, body: Payload, timeout: Duration) -> Sent {
    let request = match Request::post(format!("{}/assignments", url.trim_end_matches('/')))
        .header("content-type", "application/octet-stream")
        .body(body.body())
    {
        Ok(request) => request,
        Err(error) => return Sent::Nothing(error.to_string()),
    };
    let response = match tokio::time::timeout(timeout, client.request(request)).await {
        Err(_) => return Sent::Body(Err("node did not answer in time".to_string())),
        Ok(Err(error)) => {
            let reason = match std::error::Error::source(&error) {
                Some(cause) => tern_http::tls::error_reason(cause),
                None => error.to_string(),
            };
            let message = tern_wire::mover::assignment_not_answered(!error.is_connect(), &reason);
            return if error.is_connect() {
                Sent::Nothing(message)
            } else {
                Sent::Body(Err(message))
            };
        }
        Ok(Ok(response)) => response,
    };
    Sent::Body(answer(response).await)
}

/// How a node took an assignment, from its answer: only the status decides.
async fn answer(response: http::Response<hyper::body::Incoming>) -> Result<(), String> {
    let status = response.status();
    let body = Limited::new(response.into_body(), ErrorAnswer::MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("node refused ({status}): {}", ErrorAnswer::reason_in(&body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that reads the request's head and a little of its body, then closes the connection.
    async fn closing_node() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = vec![0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await;
                drop(stream);
            }
        });
        address
    }

    #[tokio::test]
    async fn a_node_that_closes_mid_assignment_is_not_called_unreachable() {
        let address = closing_node().await;
        let client = tern_http::tls::ClientTls::new(None).expect("client").client();
        let payload = Payload::memory(vec![7u8; 8 << 20]);
        let sent = send(&client, &format!("http://{address}"), payload, Duration::from_secs(10)).await;
        let Sent::Body(Err(message)) = sent else {
            panic!("the node was reached and the assignment did not get through");
        };
        assert!(message.starts_with("the connection to the node broke"), "{message}");
        assert!(message.contains("its log says why"), "{message}");
        // Nothing listening: unreachable, nothing sent.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let nobody = closed.local_addr().expect("address");
        drop(closed);
        let sent = send(
            &client,
            &format!("http://{nobody}"),
            Payload::memory(vec![1u8]),
            Duration::from_secs(10),
        )
        .await;
        assert!(matches!(sent, Sent::Nothing(ref m) if m.starts_with("node unreachable")));
    }
}
