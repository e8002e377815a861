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
