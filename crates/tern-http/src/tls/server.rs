//! The server side: certificate pairs loaded from PEM files or an SNI directory, reloaded on `SIGHUP` or
//! when the files change, and the acceptor every listener uses.

use super::*;

/// One loaded certificate with its key and the DNS names it is valid for.
#[derive(Debug)]
struct LoadedPair {
    name: String,
    cert_path: PathBuf,
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

fn load_pair(name: &str, cert_path: &Path, key_path: &Path) -> Result<LoadedPair, TlsError> {
    let chain = load_certificates(cert_path)?;
    let names = match chain.first().map(webpki::EndEntityCert::try_from) {
        Some(Ok(end_entity)) => end_entity.valid_dns_names().map(str::to_ascii_lowercase).collect(),
        Some(Err(error)) => {
            return Err(TlsError::Certificate {
                path: cert_path.to_path_buf(),
                reason: format!("the first certificate is not a valid X.509 certificate: {error:?}"),
            });
        }
        None => Vec::new(),
    };
    let key = load_key(key_path)?;
    let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(|error| match error {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            hint: chain_order_hint(&chain, &key),
        },
        other => TlsError::Key {
            path: key_path.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    Ok(LoadedPair {
        name: name.to_string(),
        cert_path: cert_path.to_path_buf(),
        names,
        key: Arc::new(certified),
    })
}

/// When the key belongs to a later certificate of the chain than the first (an intermediate or the
/// server's own certificate pasted after the CA's), says which one and that it must come first; else empty.
fn chain_order_hint(chain: &[CertificateDer<'static>], key: &PrivateKeyDer<'static>) -> String {
    let provider = provider();
    let Ok(signing) = provider.key_provider.load_private_key(key.clone_key()) else {
        return String::new();
    };
    for (index, certificate) in chain.iter().enumerate().skip(1) {
        let candidate = CertifiedKey::new(vec![certificate.clone()], signing.clone());
        if candidate.keys_match().is_ok() {
            return format!(
                "; it belongs to certificate {} of the file: the server's own certificate comes first, then its issuers",
                index + 1
            );
        }
    }
    String::new()
}

/// A certificate pair found in a `--tls-dir`: its name and files.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PairFiles {
    name: String,
    cert: PathBuf,
    key: PathBuf,
}

/// The pairs of `dir`, sorted by name. A certificate without its key is an error (a copy in progress or a
/// mistake), not something to skip silently.
fn scan_dir(dir: &Path) -> Result<Vec<PairFiles>, TlsError> {
    let dir_error = |reason: String| TlsError::Directory {
        dir: dir.to_path_buf(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|source| TlsError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut pairs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| TlsError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            let cert = path.join(SUBDIR_CERT);
            let key = path.join(SUBDIR_KEY);
            match (cert.is_file(), key.is_file()) {
                (true, true) => pairs.push(PairFiles {
                    name: file_name,
                    cert,
                    key,
                }),
                (true, false) => {
                    return Err(dir_error(format!(
                        "{} has no key beside it ({})",
                        cert.display(),
                        key.display()
                    )));
                }
                _ => {}
            }
        } else if let Some(name) = file_name.strip_suffix(".crt") {
            let key = dir.join(format!("{name}.key"));
            if !key.is_file() {
                return Err(dir_error(format!(
                    "{} has no key beside it ({})",
                    path.display(),
                    key.display()
                )));
            }
            pairs.push(PairFiles {
                name: name.to_string(),
                cert: path,
                key,
            });
        }
    }
    if pairs.is_empty() {
        return Err(dir_error(
            "no certificate pairs: put NAME.crt with NAME.key, or NAME/fullchain.pem with NAME/privkey.pem, in it"
                .into(),
        ));
    }
    pairs.sort();
    Ok(pairs)
}

/// The certificates one generation of a store serves.
#[derive(Debug)]
struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    summary: String,
}

impl CertSet {
    fn build(pairs: Vec<LoadedPair>) -> Option<CertSet> {
        let default_index = pairs.iter().position(|p| p.name == DEFAULT_PAIR).unwrap_or(0);
        let default = pairs.get(default_index)?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut described = Vec::new();
        for pair in &pairs {
            for name in &pair.names {
                // The first pair (by file name) that claims a name keeps it.
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert_with(|| pair.key.clone()),
                    None => exact.entry(name.clone()).or_insert_with(|| pair.key.clone()),
                };
            }
            let names = if pair.names.is_empty() {
                "no DNS names".to_string()
            } else {
                pair.names.join(",")
            };
            described.push(format!("{} [{}]", pair.cert_path.display(), names));
        }
        Some(CertSet {
            default,
            exact,
            wildcard,
            summary: described.join("; "),
        })
    }

    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(key) = self.wildcard.get(parent)
        {
            return key.clone();
        }
        self.default.clone()
    }
}

/// The resolver rustls asks at each handshake; a reload replaces its set.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertSet>>,
}

impl Resolver {
    fn set(&self) -> Arc<CertSet> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set().pick(client_hello.server_name()))
    }
}

/// What a file looked like when last checked: modification time and length, or absent.
type FileStamp = (PathBuf, Option<(SystemTime, u64)>);

fn stamp(path: &Path) -> FileStamp {
    // `metadata` follows symbolic links, so a swapped link target (certbot, Kubernetes secrets) counts.
    let seen = std::fs::metadata(path)
        .ok()
        .map(|meta| (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len()));
    (path.to_path_buf(), seen)
}

/// The files `source` reads, as they are now.
fn stamps(source: &CertSource) -> Vec<FileStamp> {
    match source {
        CertSource::Pair { cert, key } => vec![stamp(cert), stamp(key)],
        CertSource::Dir(dir) => match scan_dir(dir) {
            Ok(pairs) => pairs
                .iter()
                .flat_map(|pair| [stamp(&pair.cert), stamp(&pair.key)])
                .collect(),
            // An unreadable or half-filled directory is a state of its own: reload (and log why it is
            // refused) when it enters it, and again when it leaves it.
            Err(error) => vec![(dir.join(format!("<{error}>")), None)],
        },
    }
}

/// A listener's certificates, reloadable while it serves.
#[derive(Debug)]
pub struct CertStore {
    config: TlsConfig,
    resolver: Arc<Resolver>,
    server_config: Arc<ServerConfig>,
    /// The files as they were just before the first load, so a change made while loading is caught.
    loaded: Vec<FileStamp>,
}

impl CertStore {
    /// Loads the certificates of `config`; an error names the file and what is wrong with it.
    pub fn load(config: TlsConfig) -> Result<Arc<CertStore>, TlsError> {
        let loaded = stamps(&config.source);
        let set = Self::read_set(&config.source)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(set)),
        });
        let mut server_config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server_config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(CertStore {
            config,
            resolver,
            server_config: Arc::new(server_config),
            loaded,
        }))
    }

    fn read_set(source: &CertSource) -> Result<CertSet, TlsError> {
        let pairs = match source {
            CertSource::Pair { cert, key } => vec![load_pair(DEFAULT_PAIR, cert, key)?],
            CertSource::Dir(dir) => scan_dir(dir)?
                .iter()
                .map(|files| load_pair(&files.name, &files.cert, &files.key))
                .collect::<Result<Vec<_>, _>>()?,
        };
        CertSet::build(pairs).ok_or_else(|| TlsError::Settings("no certificate to serve".into()))
    }

    /// The settings it was loaded with.
    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// The certificates served now, one `FILE [names]` each, for logs.
    pub fn describe(&self) -> String {
        self.resolver.set().summary.clone()
    }

    /// An acceptor for a listener; every acceptor of a store sees its reloads.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(self.server_config.clone()),
            handshake_timeout: self.config.handshake_timeout,
        }
    }

    /// Reads the files again and, when they are all good, serves them to new connections; on an error the
    /// certificates served before stay. Blocking: call it off the async runtime.
    pub fn reload(&self) -> Result<(), TlsError> {
        let set = Self::read_set(&self.config.source)?;
        *self.resolver.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(())
    }

    /// Reloads on `SIGHUP` and whenever a file changes (checked every [`TlsConfig::reload_poll`]) until
    /// `shutdown`, logging what was loaded or why a reload was refused. Call it inside the Tokio runtime
    /// (it installs the signal handler there).
    ///
    /// Files are polled (a few `stat` calls) rather than watched with inotify: certificate tools replace
    /// files by renaming or by swapping a symbolic link to a new directory (certbot, Kubernetes secrets),
    /// which a watch on the old files misses, while a look at what the paths resolve to now catches every
    /// form of replacement. The signal handler is installed before this returns, so a `SIGHUP` sent after
    /// it is never lost.
    pub fn watch(self: &Arc<Self>, shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        let store = self.clone();
        #[cfg(unix)]
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|error| warn!(%error, "cannot watch for SIGHUP; certificates reload on file changes only"))
            .ok();
        async move {
            let poll = store.config.reload_poll.max(Duration::from_millis(10));
            let mut seen = store.loaded.clone();
            loop {
                #[cfg(unix)]
                let signalled = async {
                    match hangup.as_mut() {
                        Some(hangup) => {
                            // `None`: signals can no longer arrive; wait on file changes alone.
                            if hangup.recv().await.is_none() {
                                std::future::pending::<()>().await;
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let signalled = std::future::pending::<()>();
                let cause = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = signalled => "SIGHUP",
                    _ = tokio::time::sleep(poll) => "files changed",
                };
                let worker = store.clone();
                let Ok(current) = tokio::task::spawn_blocking(move || stamps(&worker.config.source)).await else {
                    continue;
                };
                if cause != "SIGHUP" && current == seen {
                    continue;
                }
                seen = current;
                let worker = store.clone();
                let outcome = tokio::task::spawn_blocking(move || worker.reload()).await;
                match outcome {
                    Ok(Ok(())) => info!(cause, certificates = %store.describe(), "certificates reloaded"),
                    Ok(Err(error)) => warn!(
                        cause,
                        %error,
                        certificates = %store.describe(),
                        "certificate reload refused; still serving the previous certificates"
                    ),
                    Err(error) => {
                        warn!(cause, %error, "certificate reload failed; still serving the previous certificates")
                    }
                }
            }
        }
    }
}

/// Accepts TLS on a listener's connections: a handshake bounded in time, then the TLS stream.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish in time.
    #[error("TLS handshake not finished within {0:?}")]
    Timeout(Duration),
    /// The client sent something that is not TLS, or the handshake failed (the reason is rustls's).
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

impl TlsAcceptor {
    /// Runs the server side of the handshake on `stream`.
    pub async fn accept<IO>(&self, stream: IO) -> Result<tokio_rustls::server::TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(self.handshake_timeout, self.inner.accept(stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(HandshakeError::Failed(error)),
            Err(_) => Err(HandshakeError::Timeout(self.handshake_timeout)),
        }
    }
}
