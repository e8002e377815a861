//! `tern serve DIR`: a small, correct static origin. It answers GET and HEAD from a directory with `ETag`,
//! `Last-Modified`, conditional requests, single byte ranges and content types, and sets `Cache-Control`
//! (and optionally `Surrogate-Key`) from a global setting or per-path-prefix rules. It is the origin of the
//! demo and of the tests, and a fair stand-in for any static origin.

pub mod config;
pub mod resolve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tern_admin::AdminRoutes;
use tern_http::conditional::{self, Precondition, Validators};
use tern_http::range::{self, RangeOutcome};
use tern_http::server::{Handler, ServerLimits};
use tern_http::{Body, date};
use tracing::{debug, info, warn};

pub use config::{CacheRule, OriginConfig};
use resolve::{Hidden, Refusal, Resolved, resolve};

/// Why the origin could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The directory is missing or not a directory.
    #[error("cannot serve {path}: {reason}")]
    Root {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A setting that cannot work.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] tern_admin::BindError),
    /// The certificates could not be used.
    #[error(transparent)]
    Tls(#[from] tern_http::tls::TlsError),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

struct OriginMetrics {
    registry: Registry,
    requests: Family<StatusLabel, Counter>,
    bytes: Counter,
}

/// A running origin.
pub type RunningOrigin = tern_http::server::Running<()>;

struct StaticOrigin {
    /// The configured root, as given: it may be a symbolic link (a mover node's `live`) that is switched
    /// to another version at any moment, so it is resolved afresh for every request.
    root: PathBuf,
    config: OriginConfig,
    metrics: OriginMetrics,
    /// Warnings about files this server may not read.
    permission_warnings: std::sync::Mutex<tern_admin::Throttle<()>>,
}

/// Starts serving `config.root`.
pub async fn start(config: OriginConfig) -> Result<RunningOrigin, StartError> {
    config.check().map_err(StartError::Config)?;
    let root = std::fs::canonicalize(&config.root).map_err(|e| {
        // A node's `live` link appears with the site's first publish: say so rather than "not found".
        let reason = if e.kind() == std::io::ErrorKind::NotFound && config.root.ends_with("live") {
            format!(
                "{e}; a node's live tree appears with the site's first publish: publish it, then start `tern serve`"
            )
        } else {
            e.to_string()
        };
        StartError::Root {
            path: config.root.clone(),
            reason,
        }
    })?;
    if !root.is_dir() {
        return Err(StartError::Root {
            path: config.root.clone(),
            reason: "not a directory".into(),
        });
    }
    let mut registry = Registry::with_prefix("tern_origin");
    let requests = Family::<StatusLabel, Counter>::default();
    registry.register("requests", "Requests by response status", requests.clone());
    let bytes = Counter::default();
    registry.register("body_bytes", "Body bytes sent", bytes.clone());
    let origin = Arc::new(StaticOrigin {
        root: config.root.clone(),
        config: config.clone(),
        metrics: OriginMetrics {
            registry,
            requests,
            bytes,
        },
        permission_warnings: std::sync::Mutex::new(tern_admin::Throttle::default()),
    });

    let tls =
        tern_http::tls::TlsConfig::from_flags(config.tls_cert.clone(), config.tls_key.clone(), config.tls_dir.clone())?;
    let certs = match tls {
        Some(tls) => Some(tern_http::tls::CertStore::load(tls)?),
        None => None,
    };
    let scheme = if certs.is_some() { "https" } else { "http" };
    let admin_origin = origin.clone();
    let routes = move |listen| -> Arc<dyn AdminRoutes> {
        Arc::new(OriginAdmin {
            origin: admin_origin,
            listen,
        })
    };
    let running = tern_admin::launch(
        config.listen,
        origin.clone(),
        ServerLimits::default(),
        config.admin,
        routes,
        (),
        tern_admin::RoleTls::from_store(certs),
    )
    .await?;
    info!(listen = %running.listen, scheme, root = %origin.root.display(), admin = ?running.admin, "origin serving");
    Ok(running)
}

impl Handler for StaticOrigin {
    async fn call(&self, request: Request<Incoming>, _client: SocketAddr) -> Response<Body> {
        let response = self.answer(&request).await;
        self.metrics
            .requests
            .get_or_create(&StatusLabel {
                status: response.status().as_u16(),
            })
            .inc();
        debug!(method = %request.method(), path = %request.uri().path(), status = response.status().as_u16(), "served");
        response
    }
}

impl StaticOrigin {
    /// The answer to a refused path; a path the server's user may not read is also a warning (at most one
    /// every 30 s, with the number left out), for that is the operator's to fix.
    fn refused(&self, refusal: Refusal, path: &str) -> Response<Body> {
        if refusal == Refusal::Forbidden {
            let mut warnings = self.permission_warnings.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(suppressed) = warnings.check((), std::time::Instant::now()) {
                warn!(%path, root = %self.root.display(), suppressed, "answered 403: this server's user may not read the file or a directory on its way; fix its permissions");
            }
        }
        text(refusal.status(), refusal.message())
    }

    async fn answer(&self, request: &Request<Incoming>) -> Response<Body> {
        if let Some(problem) =
            tern_http::target::host_field_problem(request.version(), request.uri(), request.headers())
        {
            return text(StatusCode::BAD_REQUEST, problem);
        }
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are served here");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let path = request.uri().path();
        // One resolution of the root per request: the whole answer comes from one version of the site.
        let Ok(root) = tokio::fs::canonicalize(&self.root).await else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "the site root is not available");
        };
        let hidden = if self.config.serve_hidden {
            Hidden::Serve
        } else {
            Hidden::Refuse
        };
        let resolved = match resolve(&root, path, &self.config.index, hidden).await {
            Ok(resolved) => resolved,
            Err(refusal) => return self.refused(refusal, path),
        };
        let (file_path, metadata) = match resolved {
            Resolved::File { path, metadata } => (path, metadata),
            Resolved::DirectoryWithoutSlash => {
                // One leading slash: `//name` in a Location is another host's (an open redirect).
                let mut location = format!("/{}/", path.trim_start_matches('/'));
                if let Some(query) = request.uri().query() {
                    location = format!("{location}?{query}");
                }
                let mut response = text(StatusCode::MOVED_PERMANENTLY, "see the directory with a trailing slash");
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                return response;
            }
        };
        // Opened before anything is answered, for HEAD too: a file the server may not read is a 403 (and a
        // warning for the operator) whatever the method.
        let file = match tokio::fs::File::open(&file_path).await {
            Ok(file) => file,
            Err(error) => return self.refused(Refusal::of(&error), path),
        };
        let length = metadata.len();
        let modified = metadata.modified().unwrap_or(UNIX_EPOCH);
        let etag = entity_tag(&metadata, modified);
        // HTTP dates have one-second resolution; comparisons use the truncated time.
        let modified_seconds = UNIX_EPOCH
            + std::time::Duration::from_secs(modified.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));

        let mut headers = HeaderMap::new();
        headers.insert(header::DATE, date::format(SystemTime::now()));
        headers.insert(header::LAST_MODIFIED, date::format(modified_seconds));
        if let Ok(value) = HeaderValue::from_str(&etag) {
            headers.insert(header::ETAG, value);
        }
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        headers.insert(header::CONTENT_TYPE, content_type(&file_path));
        let rule = self.config.rule_for(path);
        if let Some(cache_control) = rule
            .and_then(|r| r.cache_control.as_deref())
            .or(self.config.cache_control.as_deref())
            && let Ok(value) = HeaderValue::from_str(cache_control)
        {
            headers.insert(header::CACHE_CONTROL, value);
        }
        if let Some(keys) = rule.and_then(|r| r.surrogate_key.as_deref())
            && let Ok(value) = HeaderValue::from_str(keys)
        {
            headers.insert("surrogate-key", value);
        }

        let validators = Validators {
            etag: Some(&etag),
            last_modified: Some(modified_seconds),
        };
        match conditional::evaluate(method, request.headers(), validators) {
            Precondition::NotModified => {
                let mut kept = HeaderMap::new();
                for name in conditional::NOT_MODIFIED_FIELDS {
                    if let Some(value) = headers.get(&name) {
                        kept.insert(name, value.clone());
                    }
                }
                return with_headers(StatusCode::NOT_MODIFIED, kept, tern_http::empty());
            }
            Precondition::Failed => return with_headers(StatusCode::PRECONDITION_FAILED, headers, tern_http::empty()),
            Precondition::Proceed => {}
        }
        let (status, start, count) = match range::select(request.headers(), length, Some(&etag), Some(modified_seconds))
        {
            RangeOutcome::Full => (StatusCode::OK, 0, length),
            RangeOutcome::Partial { start, end } => {
                headers.insert(header::CONTENT_RANGE, range::content_range(start, end, length));
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            RangeOutcome::Unsatisfiable => {
                headers.insert(header::CONTENT_RANGE, range::unsatisfied_range(length));
                headers.remove(header::CONTENT_TYPE);
                return with_headers(StatusCode::RANGE_NOT_SATISFIABLE, headers, tern_http::empty());
            }
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
        if method == Method::HEAD {
            return with_headers(status, headers, tern_http::empty());
        }
        self.metrics.bytes.inc_by(count);
        with_headers(status, headers, tern_http::file_range(file, start, count))
    }
}

/// A strong entity tag from the file's identity, size and modification time (nanoseconds), so a rewrite
/// of the same size within one second still changes it.
/// The entity tag of a file: its size and modification time (to the nanosecond), as nginx derives it. Not
/// the inode: the content mover gives every node the same size and time for the same file, so every node
/// behind an edge answers with the same validator, and a revalidation against any of them succeeds.
fn entity_tag(metadata: &std::fs::Metadata, modified: SystemTime) -> String {
    let nanos = modified.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("\"{:x}-{:x}\"", metadata.len(), nanos)
}

fn content_type(path: &std::path::Path) -> HeaderValue {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let text = if mime.type_() == mime_guess::mime::TEXT
        || mime.essence_str() == "application/javascript"
        || mime.essence_str() == "application/json"
    {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_string()
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

fn with_headers(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(tern_http::full(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

struct OriginAdmin {
    origin: Arc<StaticOrigin>,
    listen: SocketAddr,
}

impl AdminRoutes for OriginAdmin {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "role": "origin",
            "listen": self.listen.to_string(),
            "root": self.origin.root.display().to_string(),
        })
    }

    fn registry(&self) -> &Registry {
        &self.origin.metrics.registry
    }
}

#[cfg(test)]
mod tls_tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use tern_http::testsuite::TestCa;
    use tern_http::tls::ClientTls;

    use super::*;

    #[tokio::test]
    async fn tern_serve_with_a_certificate_serves_https_on_both_listeners() {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = dir.path().join("site");
        std::fs::create_dir(&site).expect("mkdir");
        std::fs::write(site.join("index.html"), "hello over https").expect("write");
        let ca = TestCa::new("origin test CA");
        let ca_file = ca.write(&dir.path().join("ca.pem"));
        let (cert, key) = ca.issue(&["localhost"]).write(dir.path(), "origin");
        let origin = start(OriginConfig {
            root: site,
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin: Some("127.0.0.1:0".parse().expect("addr")),
            tls_cert: Some(cert),
            tls_key: Some(key),
            ..OriginConfig::default()
        })
        .await
        .expect("origin starts");
        let client = ClientTls::new(Some(&ca_file)).expect("CA").client::<Empty<Bytes>>();

        let url = format!("https://localhost:{}/index.html", origin.listen.port());
        let response = client.get(url.parse().expect("url")).await.expect("HTTPS answer");
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, Bytes::from("hello over https"));

        let admin = origin.admin.expect("admin listener");
        let status = client
            .get(
                format!("https://localhost:{}/status", admin.port())
                    .parse()
                    .expect("url"),
            )
            .await
            .expect("HTTPS admin answer");
        assert_eq!(status.status(), StatusCode::OK);

        // The listener is HTTPS only: plain HTTP is not served, only told to use https://.
        let plain = client
            .get(
                format!("http://127.0.0.1:{}/index.html", origin.listen.port())
                    .parse()
                    .expect("url"),
            )
            .await
            .expect("a plain answer");
        assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
        let body = plain.into_body().collect().await.expect("body").to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("https://"), "{body:?}");
        assert!(
            !String::from_utf8_lossy(&body).contains("hello"),
            "the file is not served"
        );
        origin.shutdown().await;
    }
}
