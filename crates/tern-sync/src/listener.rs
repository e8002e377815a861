//! The listener (seed 001, "examines the protocol fitness of the variation information"): reads frames from
//! agents, checks framing, version, size and authentication tag, hands good batches to the master and
//! answers with an acknowledgement or a reasoned rejection. Bad input is counted and answered, and the
//! connection closed; it never stops the listener serving other agents.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_wire::SecretKey;
use tern_wire::frame::FrameDecoder;
use tern_wire::sync::{Ack, Reject, SyncMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::master::Master;
use crate::metrics::{ReasonLabel, SyncMetrics};

/// How long an agent connection may stay silent between two frames.
const IDLE: Duration = Duration::from_secs(300);

/// How long a frame may take to arrive whole once begun, and a new connection to begin its first: a client
/// that connects and sends nothing, or half a frame, holds its connection no longer than this.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(10);

/// Agent connections served at once; more are closed as they come (with a warning at most every 30 s),
/// so no client can take the file descriptors the listener and the admin listener need.
pub const MAX_CONNECTIONS: usize = 512;

/// Settings of the listener.
#[derive(Clone)]
pub struct ListenerSettings {
    /// The agents' key.
    pub key: SecretKey,
    /// Largest frame payload accepted.
    pub max_frame: usize,
    /// How long a frame may take to arrive whole once begun, and a new connection to begin its first
    /// ([`FRAME_DEADLINE`] by default).
    pub frame_deadline: Duration,
}

/// Accepts agent connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    settings: ListenerSettings,
    master: Arc<Master>,
    metrics: Arc<SyncMetrics>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut full_warnings: tern_admin::Throttle<()> = tern_admin::Throttle::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.frame_rejected("too-many-connections");
            if let Some(suppressed) = full_warnings.check((), std::time::Instant::now()) {
                warn!(%peer, limit = MAX_CONNECTIONS, suppressed, "agent connection refused: as many are open as the listener serves (repeats counted in /metrics)");
            }
            drop(stream);
            continue;
        };
        let settings = settings.clone();
        let master = master.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = connection(stream, peer, settings, master, metrics) => {}
            }
            drop(slot);
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    settings: ListenerSettings,
    master: Arc<Master>,
    metrics: Arc<SyncMetrics>,
) {
    let _ = stream.set_nodelay(true);
    let mut decoder = FrameDecoder::new(settings.key.clone(), settings.max_frame);
    let mut buffer = vec![0u8; 16 * 1024];
    let mut frames = 0u64;
    loop {
        // The first frame, and the rest of a frame begun, must come within the frame deadline; between
        // frames an agent may stay silent longer.
        let begun = frames == 0 || decoder.buffered() > 0;
        let mut deadline = tokio::time::Instant::now() + if begun { settings.frame_deadline } else { IDLE };
        let frame = loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(error) => {
                    warn!(%peer, %error, "rejected frame");
                    metrics.frame_rejected(error.reason());
                    reject(&mut stream, &settings.key, error.reason(), &error.to_string()).await;
                    return;
                }
            }
            let read = match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Err(_) => {
                    if decoder.buffered() > 0 {
                        metrics.frame_rejected("truncated");
                        debug!(%peer, bytes = decoder.buffered(), "connection closed mid-frame (or the frame was not whole in time)");
                    }
                    return;
                }
                Ok(Ok(read)) => read,
                Ok(Err(_)) => return,
            };
            if decoder.buffered() == 0 {
                // A frame begins: it has the frame deadline to arrive whole.
                deadline = deadline.min(tokio::time::Instant::now() + settings.frame_deadline);
            }
            decoder.push(&buffer[..read]);
        };
        frames += 1;
        let batch = match SyncMessage::decode(&frame) {
            Ok(SyncMessage::Changes(batch)) => batch,
            Ok(_) => {
                warn!(%peer, "rejected frame: an agent sent something other than a change batch");
                metrics.frame_rejected("unexpected");
                reject(
                    &mut stream,
                    &settings.key,
                    "unexpected",
                    "agents send change batches only",
                )
                .await;
                return;
            }
            Err(error) => {
                warn!(%peer, %error, "rejected frame: its tag is right but its message does not parse (another tern release?)");
                metrics.frame_rejected("malformed");
                reject(&mut stream, &settings.key, "malformed", &error.to_string()).await;
                return;
            }
        };
        metrics.changes_received.inc_by(batch.changes.len() as u64);
        let agent = batch.agent.clone();
        let incarnation = batch.incarnation.clone();
        let site = batch.site.clone();
        let master_for_batch = master.clone();
        let outcome = tokio::task::spawn_blocking(move || master_for_batch.accept(&batch)).await;
        let answer = match outcome {
            Ok(Ok(accepted)) => {
                metrics.changes_recorded.inc_by(accepted.recorded as u64);
                let mut refused = std::collections::BTreeMap::<String, u64>::new();
                for (seq, reason) in &accepted.refused {
                    debug!(%agent, %site, seq, reason, "change refused by the master");
                    metrics
                        .changes_rejected
                        .get_or_create(&ReasonLabel {
                            reason: reason.to_string(),
                        })
                        .inc();
                    *refused.entry(reason.to_string()).or_default() += 1;
                }
                if !refused.is_empty() {
                    // One line a batch, not one a change (a wrong --base-url refuses every change).
                    warn!(%agent, %site, ?refused, "changes refused by the master; the agent is told");
                }
                if accepted.recorded > 0 {
                    info!(%agent, %site, recorded = accepted.recorded, agent_through = accepted.through, log_length = master.len(), "changes recorded");
                }
                SyncMessage::Ack(Ack {
                    agent,
                    incarnation,
                    through: accepted.through,
                    refused,
                })
            }
            Ok(Err(rejection)) => {
                warn!(%peer, %agent, %site, reason = %rejection.reason, "batch rejected");
                metrics.frame_rejected(&rejection.reason);
                SyncMessage::Reject(rejection)
            }
            Err(error) => SyncMessage::Reject(Reject {
                reason: "internal".into(),
                message: error.to_string(),
            }),
        };
        if stream.write_all(&answer.encode(&settings.key)).await.is_err() {
            return;
        }
    }
}

async fn reject(stream: &mut TcpStream, key: &SecretKey, reason: &str, message: &str) {
    let answer = SyncMessage::Reject(Reject {
        reason: reason.to_string(),
        message: message.to_string(),
    });
    let _ = stream.write_all(&answer.encode(key)).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_that_sends_nothing_or_half_a_frame_is_closed_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let master = Arc::new(Master::open(dir.path(), Vec::new()).expect("master"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let settings = ListenerSettings {
            key: SecretKey::parse(&"ab".repeat(32)).expect("key"),
            max_frame: 1 << 20,
            frame_deadline: Duration::from_millis(300),
        };
        let metrics = Arc::new(SyncMetrics::new());
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, settings, master, metrics.clone(), shutdown.clone()));
        for sent in [&b""[..], b"TRN"] {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(sent).await.expect("write");
            let started = std::time::Instant::now();
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
            assert!(closed.is_ok(), "{sent:?}: the connection was held past the deadline");
            assert!(
                started.elapsed() >= Duration::from_millis(250),
                "{sent:?}: closed before the deadline"
            );
        }
        shutdown.cancel();
    }
}
