//! TLS for every tern listener and client, with rustls and its `ring` provider (no cmake, no C toolchain
//! beyond what `ring` needs).
//!
//! Servers: a [`CertStore`] loads a PEM certificate chain and key ([`CertSource::Pair`], `--tls-cert` and
//! `--tls-key`), or a directory of pairs chosen by the name the client asks for (SNI,
//! [`CertSource::Dir`], `--tls-dir`). It hands out [`TlsAcceptor`]s that offer ALPN `h2` and `http/1.1`
//! over TLS 1.3 and 1.2. [`CertStore::watch`] reloads the files on `SIGHUP` and when they change; a
//! reload swaps the certificates that *new* handshakes see, so open connections (which keep their session
//! keys) are never dropped, and a broken new file is refused with a log line while the old certificates
//! go on being served.
//!
//! Clients: [`ClientTls`] builds HTTPS-capable hyper clients that verify servers against the system's
//! roots, or only against a private CA given with `--ca FILE` / `--origin-ca FILE`.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// ALPN protocols a tern server offers, most preferred first.
pub const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Default bound on a TLS handshake, from the accepted TCP connection to the first request byte.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default interval at which certificate files are checked for changes.
pub const DEFAULT_RELOAD_POLL: Duration = Duration::from_secs(5);

/// File names of a certificate pair inside a per-name subdirectory of a `--tls-dir` (certbot's layout,
/// so `--tls-dir /etc/letsencrypt/live` works as it is).
const SUBDIR_CERT: &str = "fullchain.pem";
const SUBDIR_KEY: &str = "privkey.pem";

/// The name of the pair a `--tls-dir` serves to clients that send no name, or a name no certificate has.
pub const DEFAULT_PAIR: &str = "default";

/// Why TLS could not be set up; every message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate file holds no usable PEM certificate.
    #[error(
        "{path} holds no usable PEM certificate ({reason}); give a file with -----BEGIN CERTIFICATE----- blocks, the server's own certificate first"
    )]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A key file holds no usable PEM private key.
    #[error(
        "{path} holds no usable PEM private key ({reason}); give a file with a -----BEGIN PRIVATE KEY----- (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY block"
    )]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key is not the one the certificate was issued for.
    #[error(
        "the key in {key} does not belong to the certificate in {cert}; give the key the certificate was issued for"
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A certificate directory has a certificate without its key, or no pair at all.
    #[error("{dir}: {reason}")]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The settings contradict each other (for example a certificate without a key).
    #[error("{0}")]
    Settings(String),
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where a server's certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// One PEM certificate chain (server certificate first) and its PEM private key, served to every client.
    Pair {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
    },
    /// A directory of pairs, each chosen when a client asks for one of the names in its certificate
    /// (subject alternative names, wildcards included): `NAME.crt` with `NAME.key`, or `NAME/fullchain.pem`
    /// with `NAME/privkey.pem`. The pair named [`DEFAULT_PAIR`] (else the first by name) answers clients
    /// that send no name or an unknown one.
    Dir(PathBuf),
}

/// TLS settings of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificates.
    pub source: CertSource,
    /// Longest a client may take to complete the handshake; the connection is closed after it.
    pub handshake_timeout: Duration,
    /// How often the files are checked for changes (they are reloaded on `SIGHUP` too).
    pub reload_poll: Duration,
}

impl TlsConfig {
    /// Settings with the default timeout and poll interval.
    pub fn new(source: CertSource) -> Self {
        TlsConfig {
            source,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            reload_poll: DEFAULT_RELOAD_POLL,
        }
    }

    /// Settings from the `--tls-cert`, `--tls-key` and `--tls-dir` flags: `None` when none is given; an
    /// error naming the missing or conflicting flag otherwise.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        dir: Option<PathBuf>,
    ) -> Result<Option<Self>, TlsError> {
        match (cert, key, dir) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), None) => Ok(Some(TlsConfig::new(CertSource::Pair { cert, key }))),
            (None, None, Some(dir)) => Ok(Some(TlsConfig::new(CertSource::Dir(dir)))),
            (Some(_), None, None) => Err(TlsError::Settings(
                "--tls-cert needs --tls-key (the PEM private key of the certificate)".into(),
            )),
            (None, Some(_), None) => Err(TlsError::Settings(
                "--tls-key needs --tls-cert (the PEM certificate chain of the key)".into(),
            )),
            (_, _, Some(_)) => Err(TlsError::Settings(
                "give either --tls-cert with --tls-key (one certificate) or --tls-dir (several, chosen by name), not both"
                    .into(),
            )),
        }
    }
}

/// The crypto provider every tern TLS endpoint uses.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a PEM certificate chain.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certificate_error = |reason: String| TlsError::Certificate {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| certificate_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(certificate_error("no CERTIFICATE block found".into()));
    }
    Ok(chain)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block found".into(),
            other => other.to_string(),
        },
    })
}

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
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|error| match error {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
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

/// The system's trusted roots, read once per process.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                warn!(%error, "a system CA certificate could not be read");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                warn!(
                    "no system CA certificates found (install the ca-certificates package, or give a CA file); https servers cannot be verified"
                );
            } else if ignored > 0 {
                tracing::debug!(added, ignored, "system CA certificates read");
            }
            Arc::new(roots)
        })
        .clone()
}

/// TLS settings of a tern client: whom it trusts. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    trusts: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("trusts", &self.trusts).finish()
    }
}

/// An HTTP client that speaks `http://` and `https://` URLs.
pub type HttpsClient<B> = Client<hyper_rustls::HttpsConnector<HttpConnector>, B>;

impl ClientTls {
    /// Trust the system's roots, or — when `ca` is given — only the CA certificates in that PEM file (a
    /// private CA then vouches for the servers alone; a public CA it did not sign for is refused).
    pub fn new(ca: Option<&Path>) -> Result<Self, TlsError> {
        let (roots, trusts) = match ca {
            None => (system_roots(), "the system's CA certificates".to_string()),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for certificate in load_certificates(path)? {
                    roots.add(certificate).map_err(|error| TlsError::Certificate {
                        path: path.to_path_buf(),
                        reason: format!("not a usable CA certificate: {error}"),
                    })?;
                }
                (Arc::new(roots), format!("the CA in {}", path.display()))
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            config: Arc::new(config),
            trusts,
        })
    }

    /// Whom it trusts, for logs.
    pub fn trusts(&self) -> &str {
        &self.trusts
    }

    /// The rustls configuration (no ALPN set), for connections that are not HTTP.
    pub fn rustls_config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    /// Wraps `http` so that `https://` URLs get TLS (SNI from the URL's host, ALPN `http/1.1`) and
    /// `http://` URLs stay plain. `http` must not enforce the `http` scheme (it is set here).
    pub fn connector(&self, mut http: HttpConnector) -> hyper_rustls::HttpsConnector<HttpConnector> {
        http.enforce_http(false);
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.config).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http)
    }

    /// An HTTP/1.1 client with pooled connections for `http://` and `https://` URLs.
    pub fn client<B>(&self) -> HttpsClient<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
    {
        Client::builder(TokioExecutor::new()).build(self.connector(HttpConnector::new()))
    }
}

/// An error and its causes, joined with `: ` (a cause already contained in the message before it is left
/// out), so that a TLS failure's reason — `invalid peer certificate: UnknownIssuer` — reaches the operator
/// instead of only `client error (Connect)`.
pub fn error_reason(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let message = inner.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsuite::{TestCa, TestCert};
    use rustls_pki_types::ServerName;
    use tokio::net::{TcpListener, TcpStream};

    /// Serves TLS handshakes with `store` on a local port until the test ends.
    async fn handshake_server(store: &Arc<CertStore>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let acceptor = store.acceptor();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut stream) = acceptor.accept(stream).await {
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                    }
                });
            }
        });
        addr
    }

    /// The certificate the server at `addr` presents for `name`, verified with `trust`.
    async fn presented(
        addr: std::net::SocketAddr,
        name: &str,
        trust: &ClientTls,
    ) -> Result<CertificateDer<'static>, std::io::Error> {
        let connector = tokio_rustls::TlsConnector::from(trust.rustls_config());
        let tcp = TcpStream::connect(addr).await?;
        let server_name = ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
        let stream = connector.connect(server_name, tcp).await?;
        let (_, connection) = stream.get_ref();
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.clone().into_owned())
            .ok_or_else(|| std::io::Error::other("no certificate"))
    }

    fn der_of(cert: &TestCert) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("test certificate")
    }

    #[test]
    fn a_file_without_a_certificate_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = TestCert::self_signed(&["a.example"]);
        let (cert, key) = good.write(dir.path(), "site");
        std::fs::write(&cert, "this is not PEM\n").expect("write");
        let error = CertStore::load(TlsConfig::new(CertSource::Pair {
            cert: cert.clone(),
            key: key.clone(),
        }))
        .expect_err("garbage certificate");
        let message = error.to_string();
        assert!(message.contains(&cert.display().to_string()), "{message}");
        assert!(message.contains("no usable PEM certificate"), "{message}");

        let (cert, key) = good.write(dir.path(), "site");
        std::fs::write(&key, good.cert_pem.as_bytes()).expect("write");
        let message = CertStore::load(TlsConfig::new(CertSource::Pair { cert, key: key.clone() }))
            .expect_err("a certificate where the key should be")
            .to_string();
        assert!(message.contains(&key.display().to_string()), "{message}");
        assert!(message.contains("no usable PEM private key"), "{message}");

        let missing = dir.path().join("absent.crt");
        let message = load_certificates(&missing).expect_err("missing file").to_string();
        assert!(
            message.contains("cannot read") && message.contains("absent.crt"),
            "{message}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, _) = TestCert::self_signed(&["a.example"]).write(dir.path(), "a");
        let (_, other_key) = TestCert::self_signed(&["a.example"]).write(dir.path(), "b");
        let error =
            CertStore::load(TlsConfig::new(CertSource::Pair { cert, key: other_key })).expect_err("mismatched key");
        assert!(matches!(error, TlsError::Mismatch { .. }), "{error}");
        assert!(error.to_string().contains("does not belong to the certificate"));
    }

    #[test]
    fn a_directory_with_a_certificate_but_no_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        TestCert::self_signed(&["a.example"]).write(dir.path(), "a");
        std::fs::write(dir.path().join("b.crt"), TestCert::self_signed(&["b.example"]).cert_pem).expect("write");
        let message = CertStore::load(TlsConfig::new(CertSource::Dir(dir.path().to_path_buf())))
            .expect_err("lonely certificate")
            .to_string();
        assert!(message.contains("b.crt has no key beside it"), "{message}");

        let empty = tempfile::tempdir().expect("tempdir");
        let message = CertStore::load(TlsConfig::new(CertSource::Dir(empty.path().to_path_buf())))
            .expect_err("empty directory")
            .to_string();
        assert!(message.contains("no certificate pairs"), "{message}");
    }

    #[test]
    fn flags_must_come_as_a_pair_or_a_directory() {
        let path = || Some(PathBuf::from("x"));
        assert_eq!(TlsConfig::from_flags(None, None, None).expect("nothing"), None);
        assert!(TlsConfig::from_flags(path(), path(), None).expect("pair").is_some());
        assert!(TlsConfig::from_flags(None, None, path()).expect("dir").is_some());
        let message = TlsConfig::from_flags(path(), None, None)
            .expect_err("no key")
            .to_string();
        assert!(message.contains("--tls-key"), "{message}");
        assert!(TlsConfig::from_flags(None, path(), None).is_err());
        assert!(TlsConfig::from_flags(path(), path(), path()).is_err());
    }

    #[tokio::test]
    async fn a_directory_serves_each_name_its_certificate() {
        let ca = TestCa::new("tern test CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let fallback = ca.issue(&["127.0.0.1"]);
        fallback.write(dir.path(), DEFAULT_PAIR);
        let exact = ca.issue(&["a.example"]);
        exact.write(dir.path(), "a");
        // certbot's layout: NAME/fullchain.pem with NAME/privkey.pem.
        let wildcard = ca.issue(&["*.b.example"]);
        std::fs::create_dir(dir.path().join("b")).expect("mkdir");
        std::fs::write(dir.path().join("b/fullchain.pem"), &wildcard.cert_pem).expect("write");
        std::fs::write(dir.path().join("b/privkey.pem"), &wildcard.key_pem).expect("write");
        std::fs::write(dir.path().join("README"), "certbot leaves one of these").expect("write");

        let store = CertStore::load(TlsConfig::new(CertSource::Dir(dir.path().to_path_buf()))).expect("load");
        let addr = handshake_server(&store).await;
        let ca_file = ca.write(&dir.path().join("ca.pem"));
        let trust = ClientTls::new(Some(&ca_file)).expect("trust");

        assert_eq!(presented(addr, "a.example", &trust).await.expect("a"), der_of(&exact));
        assert_eq!(
            presented(addr, "A.Example", &trust).await.expect("case"),
            der_of(&exact)
        );
        assert_eq!(
            presented(addr, "x.b.example", &trust).await.expect("wildcard"),
            der_of(&wildcard)
        );
        // No SNI (an IP address): the default pair.
        assert_eq!(
            presented(addr, "127.0.0.1", &trust).await.expect("no SNI"),
            der_of(&fallback)
        );
        // An unknown name gets the default pair too, which the client then refuses for that name.
        let refused = presented(addr, "c.example", &trust)
            .await
            .expect_err("not valid for c.example");
        assert!(error_reason(&refused).contains("certificate"), "{refused}");
    }

    #[tokio::test]
    async fn a_broken_reload_keeps_the_old_certificate_and_a_good_one_replaces_it() {
        let ca = TestCa::new("tern test CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ca.issue(&["a.example"]);
        let (cert, key) = first.write(dir.path(), "site");
        let store = CertStore::load(TlsConfig::new(CertSource::Pair {
            cert: cert.clone(),
            key: key.clone(),
        }))
        .expect("load");
        let addr = handshake_server(&store).await;
        let trust = ClientTls::new(Some(&ca.write(&dir.path().join("ca.pem")))).expect("trust");

        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ntruncated").expect("write");
        let error = store.reload().expect_err("broken file");
        assert!(error.to_string().contains(&cert.display().to_string()), "{error}");
        assert_eq!(presented(addr, "a.example", &trust).await.expect("old"), der_of(&first));

        let second = ca.issue(&["a.example"]);
        second.write(dir.path(), "site");
        store.reload().expect("good files");
        assert_eq!(
            presented(addr, "a.example", &trust).await.expect("new"),
            der_of(&second)
        );
        assert!(store.describe().contains("a.example"), "{}", store.describe());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sighup_reloads_the_certificates() {
        let ca = TestCa::new("tern test CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = ca.issue(&["a.example"]).write(dir.path(), "site");
        let mut config = TlsConfig::new(CertSource::Pair { cert, key });
        // Polling would find the change only after an hour: what reloads here is the signal.
        config.reload_poll = Duration::from_secs(3600);
        let store = CertStore::load(config).expect("load");
        let stop = CancellationToken::new();
        tokio::spawn(store.watch(stop.clone()));
        let addr = handshake_server(&store).await;
        let trust = ClientTls::new(Some(&ca.write(&dir.path().join("ca.pem")))).expect("trust");

        let renewed = ca.issue(&["a.example"]);
        renewed.write(dir.path(), "site");
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let mut served = None;
        for _ in 0..100 {
            served = presented(addr, "a.example", &trust).await.ok();
            if served.as_ref() == Some(&der_of(&renewed)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            served,
            Some(der_of(&renewed)),
            "the renewed certificate is served after SIGHUP"
        );
        stop.cancel();
    }

    #[test]
    fn an_error_reason_names_every_cause_once() {
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(
            error_reason(&Outer(inner)),
            "client error (Connect): invalid peer certificate: UnknownIssuer"
        );
    }
}
