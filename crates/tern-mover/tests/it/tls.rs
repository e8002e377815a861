//! The mover and its nodes over HTTPS: the API client, the nodes' registrations and the mover's deliveries
//! all verified against a private CA.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tern_http::testsuite::TestCa;
use tern_http::tls::{CertSource, ClientTls, HttpsClient, TlsConfig};
use tern_mover::service::{MoverConfig, start};
use tern_node::agent::NodeConfig;

use crate::jobs::{free_addr, tree, write_site};

async fn api(
    client: &HttpsClient<Full<Bytes>>,
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> serde_json::Value {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
        .expect("request");
    let response = client.request(request).await.expect("the mover answers over HTTPS");
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_goes_over_https_from_client_to_mover_to_node() {
    let area = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("mover test CA");
    let ca_file = ca.write(&area.path().join("ca.pem"));
    // The mover is reached by name; nodes advertise https://127.0.0.1:PORT.
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]).write(area.path(), "tls");
    let tls = || {
        Some(TlsConfig::new(CertSource::Pair {
            cert: cert.clone(),
            key: key.clone(),
        }))
    };
    let mover_addr = free_addr();
    let mover = start(MoverConfig {
        delivery_timeout: Duration::from_secs(10),
        checkpoints_kept: 3,
        tls: tls(),
        ca: Some(ca_file.clone()),
        ..MoverConfig::new(mover_addr, area.path().join("mover"))
    })
    .await
    .expect("mover starts with TLS");
    let mover_url = format!("https://localhost:{}", mover_addr.port());
    let key_file = area.path().join("mover/mover.pub");
    let node_root = area.path().join("node");
    let node = tern_node::agent::start(NodeConfig {
        mover: mover_url.clone(),
        listen: free_addr(),
        advertise: None,
        root: node_root.clone(),
        name: "node0".into(),
        mover_key: tern_mover::keys::load_public(&key_file).expect("mover.pub"),
        decryption_key: None,
        limits: Default::default(),
        register_interval: Duration::from_millis(200),
        groups: Vec::new(),
        superseded_grace: tern_node::interpreter::SUPERSEDED_GRACE,
        tls: tls(),
        ca: Some(ca_file.clone()),
        cluster_key: None,
        tree: Default::default(),
    })
    .await
    .expect("node starts with TLS");

    let client: HttpsClient<Full<Bytes>> = ClientTls::new(Some(&ca_file)).expect("CA").client();
    let mut registered = serde_json::Value::Null;
    for _ in 0..500 {
        registered = api(&client, "GET", &format!("{mover_url}/api/nodes"), None).await;
        if registered.as_array().map(Vec::len) == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let nodes = registered.as_array().expect("node list");
    assert_eq!(nodes.len(), 1, "the node registered over HTTPS: {registered}");
    assert!(
        registered.to_string().contains("https://127.0.0.1:"),
        "it advertises https: {registered}"
    );

    let staging = area.path().join("staging");
    write_site(&staging, 50, "secure");
    let body = serde_json::json!({ "kind": "publish", "site": "www", "staging": staging.display().to_string() });
    let created = api(&client, "POST", &format!("{mover_url}/api/jobs"), Some(body)).await;
    let id = created["id"].as_str().expect("job id").to_string();
    let mut job = serde_json::Value::Null;
    for _ in 0..3000 {
        job = api(&client, "GET", &format!("{mover_url}/api/jobs/{id}"), None).await;
        if matches!(
            job["state"].as_str(),
            Some("committed" | "failed" | "refused" | "cancelled")
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(job["state"], "committed", "{job}");
    assert_eq!(
        tree(&node_root.join("www/live")),
        tree(&staging),
        "delivered over HTTPS byte for byte"
    );
    node.shutdown().await;
    mover.shutdown().await;
}
