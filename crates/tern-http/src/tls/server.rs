//! The server side: certificate pairs loaded from PEM files or an SNI directory, reloaded on `SIGHUP` or
//! when the files change, and the acceptor every listener uses.

use super::*;

/// One loaded certificate with its key and the DNS names it is valid for.
#[derive(Debug, Clone)]
struct LoadedPair {
    name: String,
    cert_path: PathBuf,
    names: Vec<String>,
    /// The IP addresses among its subject alternative names (for the log: clients that connect by
    /// address check them; SNI never names one).
    addresses: Vec<String>,
    key: Arc<CertifiedKey>,
    /// The certificate's validity, seconds since the Unix epoch (`None` when its dates do not parse).
    valid: Option<(i64, i64)>,
}

/// A certificate that expires within this many days is warned about at every load and reload.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// The validity (not before, not after; seconds since the Unix epoch) of a DER certificate.
pub(super) fn validity(der: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let validity = certificate.validity();
    Some((validity.not_before.timestamp(), validity.not_after.timestamp()))
}

/// The IP addresses among a DER certificate's subject alternative names, written as usual (none when it
/// does not parse or has none).
pub(super) fn ip_addresses(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(names)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::Ipv4Addr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::Ipv6Addr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Now, in seconds since the Unix epoch.
pub(super) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What is wrong with a certificate valid from `not_before` to `not_after` at `now` (seconds since the
/// Unix epoch), for a warning: expired, not valid yet, or expiring within [`EXPIRY_WARNING_DAYS`]; `None`
/// when nothing is.
pub fn validity_problem(not_before: i64, not_after: i64, now: i64) -> Option<String> {
    let date = |secs: i64| {
        let at = if secs >= 0 {
            std::time::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            std::time::UNIX_EPOCH
        };
        crate::date::format(at).to_str().unwrap_or("?").to_string()
    };
    if now > not_after {
        return Some(format!("expired on {}: clients refuse it; renew it", date(not_after)));
    }
    if now < not_before {
        return Some(format!(
            "not valid before {}: clients refuse it until then (check this machine's clock)",
            date(not_before)
        ));
    }
    let days = (not_after - now) / 86_400;
    (days < EXPIRY_WARNING_DAYS).then(|| format!("expires on {} (in {days} days): renew it", date(not_after)))
}

fn load_pair(name: &str, cert_path: &Path, key_path: &Path) -> Result<LoadedPair, TlsError> {
    let chain = load_certificates(cert_path)?;
    let valid = chain.first().and_then(validity);
    let addresses = chain.first().map(ip_addresses).unwrap_or_default();
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
    let certified =
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(|error| match error {
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
        addresses,
        key: Arc::new(certified),
        valid,
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

/// Pairs of a certificate directory that cannot be served, each with its pair's name and why.
pub type PairProblems = Vec<(String, TlsError)>;

/// The pairs of `dir`, sorted by name, and the certificates found without their key (a copy in progress
/// or a mistake: not something to skip silently), each with its pair's name. A directory that cannot be
/// read is an error.
fn scan_dir(dir: &Path) -> Result<(Vec<PairFiles>, PairProblems), TlsError> {
    let dir_error = |reason: String| TlsError::Directory {
        dir: dir.to_path_buf(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|source| TlsError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut pairs = Vec::new();
    let mut keyless = Vec::new();
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
        let (name, cert, key) = if path.is_dir() {
            let cert = path.join(SUBDIR_CERT);
            if !cert.is_file() {
                continue;
            }
            (file_name, cert, path.join(SUBDIR_KEY))
        } else if let Some(name) = file_name.strip_suffix(".crt") {
            (name.to_string(), path.clone(), dir.join(format!("{name}.key")))
        } else {
            continue;
        };
        if key.is_file() {
            pairs.push(PairFiles { name, cert, key });
        } else {
            let error = dir_error(format!("{} has no key beside it ({})", cert.display(), key.display()));
            keyless.push((name, error));
        }
    }
    pairs.sort();
    Ok((pairs, keyless))
}

/// The certificates one generation of a store serves.
#[derive(Debug)]
struct CertSet {
    /// The pairs it was built from, sorted by name (a reload keeps one whose files turned bad).
    pairs: Vec<LoadedPair>,
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
            let listed: Vec<&str> = pair.names.iter().chain(&pair.addresses).map(String::as_str).collect();
            let names = if listed.is_empty() {
                "no DNS names or IP addresses".to_string()
            } else {
                listed.join(",")
            };
            described.push(format!("{} [{}]", pair.cert_path.display(), names));
        }
        Some(CertSet {
            pairs,
            default,
            exact,
            wildcard,
            summary: described.join("; "),
        })
    }

    /// Warns about each certificate that is expired, not valid yet or expiring soon at `now` (seconds since
    /// the Unix epoch; [`validity_problem`]). It is served all the same: the operator's to renew.
    fn warn_validity(&self, now: i64) {
        for pair in &self.pairs {
            if let Some((not_before, not_after)) = pair.valid
                && let Some(problem) = validity_problem(not_before, not_after, now)
            {
                warn!(certificate = %pair.cert_path.display(), "certificate {problem}");
            }
        }
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
            // A certificate without its key is a state of its own: reload (and log why it is left out)
            // when it appears, and again when its key does.
            Ok((pairs, keyless)) => pairs
                .iter()
                .flat_map(|pair| [stamp(&pair.cert), stamp(&pair.key)])
                .chain(
                    keyless
                        .iter()
                        .map(|(name, _)| (dir.join(format!("<{name} without its key>")), None)),
                )
                .collect(),
            // An unreadable directory is a state of its own too.
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
        let (set, _) = Self::read_set(&config.source, None)?;
        set.warn_validity(unix_now());
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

    /// Reads the certificates of `source`. At the first load (`previous` is `None`) any bad file is an
    /// error. On a reload of a directory, a pair whose files are bad (a certificate without its key, a key
    /// that does not match, a half-written file) keeps the certificate it had in `previous`, or is left
    /// out if it is new, so that one site's broken renewal does not hold back every other site's; those
    /// pairs come back as the second value, each with its error.
    fn read_set(source: &CertSource, previous: Option<&CertSet>) -> Result<(CertSet, PairProblems), TlsError> {
        let no_pairs = |dir: &Path| TlsError::Directory {
            dir: dir.to_path_buf(),
            reason:
                "no certificate pairs: put NAME.crt with NAME.key, or NAME/fullchain.pem with NAME/privkey.pem, in it"
                    .into(),
        };
        let (pairs, problems) = match source {
            CertSource::Pair { cert, key } => (vec![load_pair(DEFAULT_PAIR, cert, key)?], Vec::new()),
            CertSource::Dir(dir) => {
                let (files, mut problems) = scan_dir(dir)?;
                if files.is_empty() && problems.is_empty() {
                    return Err(no_pairs(dir));
                }
                let mut pairs = Vec::new();
                for files in &files {
                    match load_pair(&files.name, &files.cert, &files.key) {
                        Ok(pair) => pairs.push(pair),
                        Err(error) => problems.push((files.name.clone(), error)),
                    }
                }
                problems.sort_by(|a, b| a.0.cmp(&b.0));
                let Some(previous) = previous else {
                    if let Some((_, error)) = problems.into_iter().next() {
                        return Err(error);
                    }
                    return CertSet::build(pairs)
                        .map(|set| (set, Vec::new()))
                        .ok_or_else(|| no_pairs(dir));
                };
                for (name, _) in &problems {
                    if let Some(kept) = previous.pairs.iter().find(|pair| &pair.name == name) {
                        pairs.push(kept.clone());
                    }
                }
                pairs.sort_by(|a, b| a.name.cmp(&b.name));
                if pairs.is_empty() {
                    return Err(problems
                        .into_iter()
                        .next()
                        .map_or_else(|| no_pairs(dir), |(_, error)| error));
                }
                (pairs, problems)
            }
        };
        let set = CertSet::build(pairs).ok_or_else(|| TlsError::Settings("no certificate to serve".into()))?;
        Ok((set, problems))
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

    /// Reads the files again and serves what is good to new connections. A single pair that is bad is an
    /// error and the certificates served before stay. In a directory, each pair is taken on its own: the
    /// answer lists the pairs whose files are bad (each keeps its previous certificate, or is left out if
    /// it is new) with why, and the others are served anew. Blocking: call it off the async runtime.
    pub fn reload(&self) -> Result<PairProblems, TlsError> {
        let previous = self.resolver.set();
        let (set, problems) = Self::read_set(&self.config.source, Some(&previous))?;
        set.warn_validity(unix_now());
        *self.resolver.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(problems)
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
                    Ok(Ok(problems)) => {
                        for (pair, error) in &problems {
                            warn!(cause, pair = %pair, %error, "certificate pair not reloaded: it keeps its previous certificate (left out if it is new) until its files are fixed");
                        }
                        info!(cause, certificates = %store.describe(), "certificates reloaded")
                    }
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
    /// Longest a client may take to complete the handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

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
