//! `tern delta`: the origin-side encoder of seed 000 (`000_d8b28882ff59355a.txt`), an HTTP server in front
//! of a dynamic origin, on the fast side of the long link to the edges. This module is the driver only (a
//! hyper server, an origin client, the admin listener, a retention timer); every decision is the core's
//! ([`crate::Encoder`], [`crate::BaseStore`], [`crate::candidate`]). Built with the crate's `role` feature,
//! so the socket-free core keeps its short dependency list.
//!
//! Per request of a page class (`GET`):
//!
//! 1. the page is fetched whole from the origin (identity coding, bounded by `max_page`);
//! 2. it is offered as a base candidate ([`crate::Encoder::offer`]; sampled at most every
//!    `offer_interval_ms` per class, and never kept when the request had credentials or the response is
//!    per-user);
//! 3. it is encoded against the base the edge names in `Available-Dictionary`
//!    ([`crate::Encoder::encode`]): a `dcz` body with the page's digest in `Unencoded-Digest`, or the page
//!    with `Repr-Digest`;
//! 4. the class's re-derivation rule runs ([`crate::Encoder::rederive`]);
//! 5. the answer carries `Link: <base>; rel="compression-dictionary"` naming the class's current base,
//!    unless the edge named that very base.
//!
//! **Bases ahead of use.** The encoder never encodes against a base the edge did not name, so a new base
//! costs no full page: it is announced in `Link` on the class's responses, the edge fetches it from
//! `/.well-known/tern-delta/base/HEX` (as a `dcz` delta against the base it already holds, when it names
//! that one), and only then names it. Until it does, this role keeps answering deltas against the old
//! base, which the store keeps while it is named ([`crate::BaseStore`]'s retention rule).
//!
//! Other requests (other paths, other methods) are passed to the origin and back as they are, streamed.

mod body;
pub mod config;
mod metrics;
mod origin;
mod service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_http::server::{Running, ServerLimits};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::{ClassConfig, DeltaConfig};
pub use origin::OriginError;

use crate::base::BaseStore;
use crate::class::Classes;
use crate::dcz::DczEncoder;
use crate::encoder::Encoder;

/// Why `tern delta` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] tern_admin::BindError),
    /// The certificates could not be used.
    #[error(transparent)]
    Tls(#[from] tern_http::tls::TlsError),
}

/// A running `tern delta`; `role` is the [`DeltaRole`].
pub type RunningDelta = Running<Arc<DeltaRole>>;

/// One class's encoder and when it last took a base candidate.
struct ClassState {
    encoder: Encoder,
    last_offer: Option<Instant>,
    /// Whether this run warned that the class has no base because every candidate was refused.
    warned_no_base: bool,
}

/// Responses of a class without a base refused as candidates before `tern delta` says so in its log.
const REFUSALS_BEFORE_WARNING: u64 = 50;

/// The role: classes, their encoders, the bases, the origin.
pub struct DeltaRole {
    config: DeltaConfig,
    classes: Classes,
    states: HashMap<String, Mutex<ClassState>>,
    store: Mutex<BaseStore>,
    origin: origin::Origin,
    /// Encodes a new base against the old one an edge holds.
    base_encoder: DczEncoder,
    counters: metrics::RoleCounters,
}

impl DeltaRole {
    /// The role's `/status` document: its classes with their current base, its age and the recent delta
    /// ratio, and the bases held.
    pub fn status(&self) -> serde_json::Value {
        self.status_at(Instant::now())
    }

    fn lock_store(&self) -> std::sync::MutexGuard<'_, BaseStore> {
        self.store.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Starts `tern delta` with `config`.
pub async fn start(config: DeltaConfig) -> Result<RunningDelta, StartError> {
    if config.origin.is_empty() {
        return Err(StartError::Config(
            "no origin: give --origin URL (the dynamic origin, for example http://127.0.0.1:9000)".into(),
        ));
    }
    let classes = config.classes().map_err(StartError::Config)?;
    if classes.is_empty() {
        return Err(StartError::Config(
            "no page classes: give at least one --class NAME=PATTERN (for example --class news=/news/*)".into(),
        ));
    }
    let origin = origin::Origin::new(
        &config.origin,
        config.origin_ca.as_deref(),
        Duration::from_millis(config.connect_timeout_ms),
        Duration::from_millis(config.first_byte_timeout_ms),
        Duration::from_millis(config.idle_body_timeout_ms),
    )
    .map_err(StartError::Config)?;
    let tls =
        tern_http::tls::TlsConfig::from_flags(config.tls_cert.clone(), config.tls_key.clone(), config.tls_dir.clone())?;
    let certs = match tls {
        Some(tls) => Some(
            tokio::task::spawn_blocking(move || tern_http::tls::CertStore::load(tls))
                .await
                .map_err(|e| StartError::Config(format!("loading the certificates failed: {e}")))??,
        ),
        None => None,
    };
    let states = classes
        .iter()
        .map(|class| {
            let state = ClassState {
                encoder: Encoder::new(class.clone(), config.encoder()),
                last_offer: None,
                warned_no_base: false,
            };
            (class.name.clone(), Mutex::new(state))
        })
        .collect();
    let role = Arc::new(DeltaRole {
        classes: Classes::new(classes),
        states,
        store: Mutex::new(BaseStore::new(config.store())),
        origin,
        base_encoder: DczEncoder::new(config.level),
        counters: metrics::RoleCounters::default(),
        config,
    });
    let limits = ServerLimits {
        max_header_bytes: role.config.max_header_bytes,
        ..ServerLimits::default()
    };
    let admin_role = role.clone();
    let routes = move |listen| -> Arc<dyn tern_admin::AdminRoutes> { metrics::admin(admin_role, listen) };
    let mut running = tern_admin::launch(
        role.config.listen,
        Arc::new(service::Front(role.clone())),
        limits,
        role.config.admin,
        routes,
        role.clone(),
        tern_admin::RoleTls::from_store(certs),
    )
    .await?;
    running.spawn(expire_bases(
        role.clone(),
        Duration::from_secs(role.config.expire_every_secs.max(1)),
        running.shutdown_token(),
    ));
    info!(
        listen = %running.listen,
        admin = ?running.admin,
        origin = %role.origin.describe(),
        classes = role.classes.iter().map(|c| format!("{}={}", c.name, c.pattern.as_str())).collect::<Vec<_>>().join(" "),
        "tern delta serving"
    );
    Ok(running)
}

/// Applies the base store's retention rule every `every` until `shutdown`.
async fn expire_bases(role: Arc<DeltaRole>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                let dropped = role.lock_store().expire(Instant::now());
                if !dropped.is_empty() {
                    info!(dropped = dropped.len(), "old bases no edge names any more dropped");
                }
            }
        }
    }
}
