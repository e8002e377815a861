//! Starting the mover (seed 004's CCM as a process): its data directory, signing key and database (on its
//! own thread), the transport (the store-and-forward tree over led segments,
//! [`crate::tree_delivery::TreeDelivery`], and the star over HTTP, [`crate::star::StarDelivery`]), the JSON API
//! ([`crate::api`]) with the admin listener, and the scheduler loop ([`crate::dispatch`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_http::server::{Running, ServerLimits};
use tern_http::tls::{CertStore, ClientTls, TlsError};
use tracing::{info, warn};

pub use crate::admission::SubmitError;
use crate::ccm::now_ms;
pub use crate::ccm::{Mover, MoverConfig};
use crate::star::StarDelivery;
use crate::store::Store;
use crate::store_thread::StoreThread;

/// Why the mover could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory, keys or database are unusable.
    #[error("mover data {path}: {reason}")]
    Data {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] tern_admin::BindError),
    /// The certificates or the CA file could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The transport and what it shares with the mover.
struct Distribution {
    transport: Arc<dyn crate::delivery::Delivery>,
    segments: Arc<crate::segments::Segments>,
    trees: Arc<crate::tree_delivery::TreeHub>,
    metrics: crate::metrics::MoverMetrics,
}

/// The transport of `config`: the tree over led segments (with the star for the other nodes), or the
/// star alone (`--delivery star`). `--delivery tree` without a cluster key is refused.
fn distribution(
    config: &MoverConfig,
    signing: &ed25519_dalek::SigningKey,
    client_tls: &ClientTls,
) -> Result<Distribution, StartError> {
    use crate::tree_delivery::{DeliveryMode, TreeDelivery, TreeHub};
    if config.tree.mode == DeliveryMode::Tree && config.cluster_key.is_none() {
        return Err(StartError::Data {
            path: config.data.clone(),
            reason: "--delivery tree needs --cluster-key FILE (the key file the nodes use)".into(),
        });
    }
    let metrics = crate::metrics::MoverMetrics::new();
    let segments = Arc::new(crate::segments::Segments::default());
    let trees = Arc::new(TreeHub::new(
        config.cluster_key.clone(),
        signing.clone(),
        &config.tree,
        &metrics,
    ));
    let star = StarDelivery::new(client_tls.client(), config.delivery_timeout);
    let transport: Arc<dyn crate::delivery::Delivery> = match config.tree.mode {
        DeliveryMode::Star => Arc::new(star),
        DeliveryMode::Auto | DeliveryMode::Tree => Arc::new(TreeDelivery::new(
            star,
            trees.clone(),
            segments.clone(),
            config.tree.clone(),
            client_tls.client(),
        )),
    };
    Ok(Distribution {
        transport,
        segments,
        trees,
        metrics,
    })
}

/// Starts the mover: its API, its admin listener and its scheduler. Jobs a previous run left running are
/// finished when they had decided to commit ([`crate::recovery`]); the others are tried again where their
/// policy allows, and failed otherwise.
pub async fn start(config: MoverConfig) -> Result<Running<Arc<Mover>>, StartError> {
    start_with_admin(config, |mover| mover).await
}

/// Starts the mover like [`start`], with the admin listener's routes made from the mover by `admin` (the
/// admin web UI, `tern-mover-ui`, wraps the mover's own routes this way).
pub async fn start_with_admin(
    config: MoverConfig,
    admin: impl FnOnce(Arc<Mover>) -> Arc<dyn tern_admin::AdminRoutes>,
) -> Result<Running<Arc<Mover>>, StartError> {
    let data_error = |path: &Path, reason: String| StartError::Data {
        path: path.to_path_buf(),
        reason,
    };
    let data = config.data.clone();
    let opened = tokio::task::spawn_blocking(move || -> Result<_, String> {
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let signing = crate::keys::load_or_create(&data).map_err(|e| e.to_string())?;
        let store = Store::open(&data.join("mover.db")).map_err(|e| e.to_string())?;
        // Jobs that decided to commit are finished first: their nodes may have switched.
        let rolled_forward = crate::recovery::roll_forward(&store, &data, now_ms())?;
        if rolled_forward > 0 {
            warn!(
                rolled_forward,
                "jobs that had decided to commit when the mover stopped were finished"
            );
        }
        let (resumed, failed) = store.recover_interrupted(now_ms()).map_err(|e| e.to_string())?;
        crate::recovery::remove_leftovers(&store, &data)?;
        Ok((signing, store, resumed, failed))
    })
    .await
    .map_err(|e| data_error(&config.data, e.to_string()))?;
    let (signing, store, resumed, failed) = opened.map_err(|reason| data_error(&config.data, reason))?;
    if resumed + failed > 0 {
        warn!(
            resumed,
            failed, "jobs interrupted by a restart: retried where their policy allows, failed otherwise"
        );
    }
    let store = StoreThread::spawn(store).map_err(|e| data_error(&config.data, e.to_string()))?;
    let certs = match config.tls.clone() {
        Some(tls) => Some(CertStore::load(tls)?),
        None => None,
    };
    let client_tls = ClientTls::new(config.ca.as_deref())?;
    let delivery = distribution(&config, &signing, &client_tls)?;
    let mover = Arc::new(
        Mover::new(config.clone(), signing, store, delivery.transport).with_distribution(
            delivery.segments,
            delivery.trees,
            delivery.metrics,
        ),
    );
    match mover.restore_segments().await {
        Ok(count) if count > 0 => info!(segments = count, "network segments restored from the database"),
        Ok(_) => {}
        Err(error) => warn!(%error, "network segments not restored; they return with their leaders' next reports"),
    }
    let resumed = mover.resume_freshness().await;
    if resumed > 0 {
        info!(resumed, "hand-overs of commits to the sites' caches resumed");
    }
    let api = Arc::new(crate::api::Api::new(mover.clone()));
    let routes = admin(mover.clone());
    let mut running = tern_admin::launch(
        config.listen,
        api,
        ServerLimits::default(),
        config.admin,
        move |_| routes,
        mover.clone(),
        tern_admin::RoleTls::from_store(certs),
    )
    .await?;
    running.spawn(crate::dispatch::scheduler(mover.clone(), running.shutdown_token()));
    info!(listen = %running.listen, admin = ?running.admin, data = %config.data.display(), "mover started");
    Ok(running)
}
