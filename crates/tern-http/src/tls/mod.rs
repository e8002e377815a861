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

mod client;
mod server;

pub use client::*;
pub use server::*;

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
    #[error("{path} holds no usable PEM certificate ({reason}); give a file with -----BEGIN CERTIFICATE----- blocks")]
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
        "the key in {key} does not belong to the first certificate in {cert}; give the key the certificate was issued for{hint}"
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// More on what is wrong, when known (the chain's certificates in the wrong order), starting with
        /// `"; "`; else empty.
        hint: String,
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
                "--tls-cert (`tls_cert` in a config file) needs --tls-key (`tls_key`): the PEM private key of the certificate".into(),
            )),
            (None, Some(_), None) => Err(TlsError::Settings(
                "--tls-key (`tls_key` in a config file) needs --tls-cert (`tls_cert`): the PEM certificate chain of the key".into(),
            )),
            (_, _, Some(_)) => Err(TlsError::Settings(
                "give either --tls-cert with --tls-key (one certificate) or --tls-dir (several, chosen by name), not both (`tls_cert`, `tls_key`, `tls_dir` in a config file)"
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
    tern_wire::read_setting_file(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// What is wrong with a PEM file, in words (rustls-pki-types shows the lines it quotes as byte arrays).
fn pem_reason(error: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { end_marker } => format!(
            "a block has no `-----END {}-----` line: the file is cut short or damaged",
            String::from_utf8_lossy(end_marker)
                .trim()
                .trim_start_matches("-----END ")
                .trim_end_matches("-----")
        ),
        Error::IllegalSectionStart { line } => format!(
            "a malformed BEGIN line: `{}`",
            tern_wire::cut_at(String::from_utf8_lossy(line).trim(), 80)
        ),
        Error::Base64Decode(_) => {
            "the text between a BEGIN and its END line is not valid base64: damaged, or not a PEM block".into()
        }
        Error::NoItemsFound => "no PEM block found".into(),
        other => other.to_string(),
    }
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
        .map_err(|e| certificate_error(pem_reason(&e)))?;
    if chain.is_empty() {
        return Err(certificate_error("no CERTIFICATE block found".into()));
    }
    Ok(chain)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    // An encrypted key (`ENCRYPTED PRIVATE KEY`, or an OpenSSL `Proc-Type: 4,ENCRYPTED` header) would
    // need a passphrase at every start and reload; say so rather than "no key found".
    let text = String::from_utf8_lossy(&pem);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(TlsError::Key {
            path: path.to_path_buf(),
            reason: format!(
                "it is encrypted with a passphrase, which tern does not ask for; decrypt it once with `openssl pkey -in {0} -out {0}.plain` and give that file, readable by tern's user only",
                path.display()
            ),
        });
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Key {
        path: path.to_path_buf(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block found".into(),
            other => pem_reason(&other),
        },
    })
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
        assert!(error.to_string().contains("does not belong to the first certificate"));
    }

    #[test]
    fn a_chain_in_the_wrong_order_an_encrypted_key_and_a_cut_file_are_named_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::testsuite::TestCa::new("order test CA");
        let leaf = ca.issue(&["a.example"]);
        let (cert, key) = leaf.write(dir.path(), "site");
        // The CA's certificate pasted before the server's own.
        std::fs::write(&cert, format!("{}{}", ca.pem(), leaf.cert_pem)).expect("write");
        let message = CertStore::load(TlsConfig::new(CertSource::Pair {
            cert: cert.clone(),
            key: key.clone(),
        }))
        .expect_err("wrong order")
        .to_string();
        assert!(message.contains("certificate 2 of the file"), "{message}");
        assert!(message.contains("comes first"), "{message}");

        let encrypted = dir.path().join("encrypted.key");
        std::fs::write(
            &encrypted,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .expect("write");
        let message = load_key(&encrypted).expect_err("encrypted").to_string();
        assert!(
            message.contains("encrypted with a passphrase") && message.contains("openssl pkey"),
            "{message}"
        );
        std::fs::write(
            &encrypted,
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .expect("write");
        let message = load_key(&encrypted).expect_err("traditional encrypted").to_string();
        assert!(message.contains("encrypted with a passphrase"), "{message}");

        let pem = leaf.cert_pem.clone();
        std::fs::write(&cert, &pem[..pem.len() / 2]).expect("write");
        let message = load_certificates(&cert).expect_err("cut short").to_string();
        assert!(message.contains("cut short"), "{message}");
        assert!(!message.contains("[45"), "no byte arrays: {message}");
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

    #[test]
    fn the_log_of_what_was_loaded_names_ip_addresses_too() {
        let ca = TestCa::new("tern test CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = ca.issue(&["a.example", "127.0.0.1", "::1"]).write(dir.path(), "site");
        let store = CertStore::load(TlsConfig::new(CertSource::Pair { cert, key })).expect("load");
        let described = store.describe();
        assert!(described.contains("[a.example,127.0.0.1,::1]"), "{described}");
        let (cert, key) = ca.issue(&["10.0.0.7"]).write(dir.path(), "by-address");
        let store = CertStore::load(TlsConfig::new(CertSource::Pair { cert, key })).expect("load");
        assert!(store.describe().ends_with("[10.0.0.7]"), "{}", store.describe());
    }

    #[test]
    fn an_expired_or_expiring_certificate_is_named_as_such_and_served_all_the_same() {
        let day = 86_400;
        let now = 1_800_000_000;
        assert_eq!(validity_problem(now - day, now + 60 * day, now), None);
        let expired = validity_problem(now - 90 * day, now - day, now).expect("expired");
        assert!(
            expired.starts_with("expired on") && expired.contains("GMT"),
            "{expired}"
        );
        let early = validity_problem(now + day, now + 90 * day, now).expect("not yet valid");
        assert!(early.contains("not valid before") && early.contains("clock"), "{early}");
        let soon = validity_problem(now - day, now + 3 * day + 5, now).expect("expiring");
        assert!(soon.contains("in 3 days"), "{soon}");

        // The dates come from the certificate itself; an expired one still loads.
        let ca = TestCa::new("tern test CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = ca.issue_expired(&["old.example"]).write(dir.path(), "old");
        let chain = load_certificates(&cert).expect("PEM");
        let (not_before, not_after) = server::validity(&chain[0]).expect("dates");
        assert!(
            not_before < not_after && not_after < server::unix_now(),
            "{not_before} {not_after}"
        );
        assert!(CertStore::load(TlsConfig::new(CertSource::Pair { cert, key })).is_ok());
    }

    #[tokio::test]
    async fn in_a_directory_one_broken_pair_keeps_its_certificate_and_holds_back_no_other() {
        let ca = TestCa::new("tern test CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("mkdir");
        let a1 = ca.issue(&["a.example"]);
        a1.write(&certs, "a");
        let b1 = ca.issue(&["b.example"]);
        b1.write(&certs, "b");
        let store = CertStore::load(TlsConfig::new(CertSource::Dir(certs.clone()))).expect("load");
        let addr = handshake_server(&store).await;
        let trust = ClientTls::new(Some(&ca.write(&dir.path().join("ca.pem")))).expect("trust");

        // a's key is replaced by another's, b is renewed, and a new certificate c comes without its key.
        std::fs::write(certs.join("a.key"), ca.issue(&["a.example"]).key_pem).expect("write");
        let b2 = ca.issue(&["b.example"]);
        b2.write(&certs, "b");
        std::fs::write(certs.join("c.crt"), ca.issue(&["c.example"]).cert_pem).expect("write");
        let problems = store.reload().expect("the good pairs reload");
        let named: Vec<&str> = problems.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(named, ["a", "c"], "{problems:?}");
        assert!(problems[0].1.to_string().contains("a.key"), "{}", problems[0].1);
        assert!(
            problems[1].1.to_string().contains("no key beside it"),
            "{}",
            problems[1].1
        );
        assert_eq!(presented(addr, "a.example", &trust).await.expect("a kept"), der_of(&a1));
        assert_eq!(
            presented(addr, "b.example", &trust).await.expect("b renewed"),
            der_of(&b2)
        );

        // At start, the same directory is refused, naming the bad file.
        let error = CertStore::load(TlsConfig::new(CertSource::Dir(certs))).expect_err("bad pair at start");
        assert!(
            error.to_string().contains("a.key") || error.to_string().contains("c.crt"),
            "{error}"
        );
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
