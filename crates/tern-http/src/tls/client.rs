//! The client side: whom tern's HTTPS clients trust (the system's roots, or one private CA).

use super::*;

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
pub type HttpsClient<B> = Client<hyper_rustls::HttpsConnector<crate::quick_ack::QuickAckConnector>, B>;

impl ClientTls {
    /// Trust the system's roots, or — when `ca` is given — only the CA certificates in that PEM file (a
    /// private CA then vouches for the servers alone; a public CA it did not sign for is refused).
    pub fn new(ca: Option<&Path>) -> Result<Self, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let (config, trusts) = match ca {
            None => (
                builder.with_root_certificates(system_roots()).with_no_client_auth(),
                "the system's CA certificates".to_string(),
            ),
            Some(path) => {
                let pinned = load_certificates(path)?;
                let mut roots = RootCertStore::empty();
                for certificate in &pinned {
                    roots.add(certificate.clone()).map_err(|error| TlsError::Certificate {
                        path: path.to_path_buf(),
                        reason: format!("not a usable CA certificate: {error}"),
                    })?;
                }
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|error| TlsError::Certificate {
                        path: path.to_path_buf(),
                        reason: format!("cannot verify with these certificates: {error}"),
                    })?;
                let verifier = PinningVerifier { inner, pinned };
                (
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(verifier))
                        .with_no_client_auth(),
                    format!("the CA in {}", path.display()),
                )
            }
        };
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
    /// `http://` URLs stay plain, every connection acknowledging at once ([`crate::quick_ack`]). `http` must not
    /// enforce the `http` scheme (it is set here).
    pub fn connector(
        &self,
        mut http: HttpConnector,
    ) -> hyper_rustls::HttpsConnector<crate::quick_ack::QuickAckConnector> {
        http.enforce_http(false);
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.config).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(crate::quick_ack::QuickAckConnector(http))
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

/// Verifies servers against a private CA file, and also accepts a server whose certificate is itself in that
/// file. A self-signed certificate made the usual way (`openssl req -x509`) carries `CA:TRUE`, which
/// WebPKI refuses as a server's own certificate (`CaUsedAsEndEntity`) even when it is trusted; an operator
/// who hands tern that very certificate with `--origin-ca` (or `--ca`) has pinned it. Only that refusal, and
/// an unknown issuer, are overridden, and only for a byte-identical certificate; expiry and signatures are
/// still checked by WebPKI.
#[derive(Debug)]
struct PinningVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match verdict {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::Other(_),
            )) if self.pinned.iter().any(|pinned| pinned.as_ref() == end_entity.as_ref()) => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            // Neither signed by a certificate of the file nor one of them: say so, rather than WebPKI's
            // reason alone (`CaUsedAsEndEntity` read as if no file had been given).
            Err(rustls::Error::InvalidCertificate(
                reason @ (rustls::CertificateError::UnknownIssuer | rustls::CertificateError::Other(_)),
            )) => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(NotInCaFile {
                    reason: format!("{reason:?}"),
                    given: self.pinned.len(),
                })),
            ))),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server certificate that the CA file given (`--origin-ca`, `--ca`) neither signed nor holds.
#[derive(thiserror::Error)]
#[error(
    "the server's certificate is not one of the {given} certificate(s) given with --origin-ca/--ca, nor signed \
     by one of them ({reason}): the server presents another certificate than the file holds (compare \
     `openssl x509 -noout -fingerprint -sha256` of both), or the file is not the one its CA issued"
)]
struct NotInCaFile {
    reason: String,
    given: usize,
}

/// The message itself: rustls shows a verifier's own error with `Debug`, and the operator reads it.
impl std::fmt::Debug for NotInCaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// What a public client is told about a failure to reach an upstream whose reason (from
/// [`error_reason`]) is `reason`: the kind of failure (refused, timed out, a certificate verdict, which is
/// what to fix and no secret), without the upstream's address or the operating system's words, which stay
/// in the log. Used by every role that answers clients for an origin it could not reach (edge, `tern delta`).
pub fn public_connect_reason(reason: &str) -> String {
    if reason.contains("certificate") {
        return format!("cannot connect to the origin: {reason}");
    }
    let why = if reason.contains("refused") {
        " (connection refused)"
    } else if reason.contains("timed out") || reason.contains("timeout") {
        " (connect timed out)"
    } else {
        ""
    };
    format!("cannot connect to the origin{why}")
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
    if text.contains("CaUsedAsEndEntity") && !text.contains("given with --origin-ca/--ca") {
        text.push_str(
            " (the server's own certificate is a CA certificate, basicConstraints CA:TRUE, as `openssl req -x509` \
             makes by default: give that certificate with --origin-ca/--ca to pin it, or issue the server a \
             certificate with CA:FALSE)",
        );
    }
    text
}
