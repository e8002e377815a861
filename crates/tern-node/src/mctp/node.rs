//! Local distribution in the node agent (seed `004_1419c51402506f7e.txt`, "local distribution"): the
//! member's side — each assignment the data channel received whole is verified (the mover's signature
//! and the signed hash the GL announced) and handed to the content interpreter exactly as one posted to
//! `POST /assignments` — and the group leader's — one session per assignment for the members of a
//! notification, whose outcome says who applied it, who failed, and who must be caught up by the unicast
//! path ([`crate::forward`]).

use std::io::Read;
use std::sync::Arc;

use tern_wire::assignment::{Checked, StreamCheck};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::driver::{DataChannel, FileSource, Received, assignment_id};
use super::{Outcome, SessionStart};
use crate::agent::NodeAgent;
use crate::spool::{self, Entry};

/// Bytes read at a time when verifying a received spool file.
const VERIFY_CHUNK: usize = 1 << 20;

/// Takes the assignments the data channel received, verifies and applies each (on the blocking pool),
/// and tells the channel the result for the apply report; until the agent stops.
pub(crate) async fn apply_received(agent: Arc<NodeAgent>, mut received: mpsc::Receiver<Received>) {
    loop {
        let item = tokio::select! {
            _ = agent.shutdown.cancelled() => return,
            item = received.recv() => item,
        };
        let Some(item) = item else {
            return;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let (worker, entry, hash) = (agent.clone(), item.entry.clone(), item.hash.clone());
            let outcome = tokio::task::spawn_blocking(move || verify_and_apply(&worker, &entry, &hash))
                .await
                .unwrap_or_else(|error| Err(format!("applying ended: {error}")));
            let outcome = match outcome {
                Ok((site, switched)) => {
                    debug!(transfer = %item.name, %site, "assignment from the data channel applied");
                    if switched {
                        crate::agent::tidy_after_switch(agent.clone(), site);
                    }
                    Ok(())
                }
                Err(reason) => {
                    warn!(transfer = %item.name, %reason, "assignment from the data channel refused");
                    Err(reason)
                }
            };
            if let Some(channel) = agent.data_channel.as_ref() {
                channel.applied(&item, outcome).await;
            }
        });
    }
}

/// Checks the spooled copy end to end and applies it. Blocking. Returns the site and whether its `live`
/// version switched.
fn verify_and_apply(agent: &NodeAgent, entry: &Entry, announced_hash: &str) -> Result<(String, bool), String> {
    let mut file = std::fs::File::open(entry.path()).map_err(|e| format!("spool file: {e}"))?;
    let mut check = StreamCheck::new(&agent.config.limits);
    let mut buffer = vec![0u8; VERIFY_CHUNK];
    loop {
        let read = file.read(&mut buffer).map_err(|e| format!("spool file: {e}"))?;
        if read == 0 {
            break;
        }
        check.push(&buffer[..read]).map_err(|e| e.to_string())?;
    }
    let checked = check.finish(&agent.config.mover_key).map_err(|e| e.to_string())?;
    if checked.hash_hex() != announced_hash {
        return Err(format!(
            "the copy received is a good assignment but not the one announced (hash {})",
            checked.hash_hex()
        ));
    }
    let (_, site, applied) = spool::apply(
        &agent.interpreter,
        entry,
        &checked,
        agent.config.decryption_key.as_ref(),
        &agent.config.limits,
    )?;
    Ok((site, applied.live.is_some()))
}

/// How a data channel session to a notification's members went.
#[derive(Debug, Default)]
pub(crate) struct Distributed {
    /// Members that reported applying it.
    pub(crate) applied: Vec<String>,
    /// Members that completed the session but reported a failure, or whose report never came: the
    /// unicast path tries them (those that did not complete the session went to `incomplete` already).
    pub(crate) fallback: Vec<String>,
}

/// Sends the verified assignment in `entry` to `members` on the data channel. `incomplete` is called as
/// soon as the session ended with the members that did not complete it (the unicast path can start on
/// them while the others' apply reports come in); the result names those that applied it and the rest.
pub(crate) async fn distribute(
    channel: &DataChannel,
    transfer: &str,
    entry: &Entry,
    checked: &Checked,
    members: Vec<String>,
    incomplete: impl FnOnce(Vec<String>),
) -> Result<Distributed, String> {
    let hash = checked.hash_hex();
    let assignment = assignment_id(&hash);
    let source = FileSource::open(entry.path()).map_err(|e| format!("spool file: {e}"))?;
    let start = SessionStart {
        assignment,
        name: transfer.to_string(),
        hash,
        size: checked.len(),
        members: members.clone(),
        source: Box::new(source),
    };
    let led = channel.lead(start).await?;
    let left_out = match led.session.outcome {
        Outcome::Complete => Vec::new(),
        Outcome::Quorum { incomplete } | Outcome::GaveUp { incomplete } => incomplete,
        Outcome::SourceFailed(reason) => return Err(format!("reading the spool file: {reason}")),
    };
    if !left_out.is_empty() {
        channel.excuse(assignment, left_out.clone()).await;
    }
    incomplete(left_out.clone());
    let report = led
        .collected
        .await
        .map_err(|_| "the data channel stopped before report collection ended".to_string())?;
    let mut fallback: Vec<String> = report.missing;
    for (member, detail) in report.failed {
        debug!(%transfer, %member, %detail, "member could not apply the data channel's copy");
        fallback.push(member);
    }
    fallback.retain(|member| !left_out.contains(member));
    Ok(Distributed {
        applied: report.applied,
        fallback,
    })
}
