//! Integration tests of the edge on real loopback sockets: a programmable origin, an edge in front of it,
//! a real HTTP client. Time that matters to caching comes from a manual clock.

mod caching;
mod faults;
mod origin_link;
mod purging;
mod read_while_write;
mod robustness;
mod storage;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tern_edge::clock::ManualClock;
use tern_edge::testsuite::{Got, TestOrigin, client, send};
use tern_edge::upstream::Origin;
use tern_edge::{EdgeConfig, RunningEdge, start_with};

/// An origin, an edge in front of it, a client and the edge's clock.
pub struct Setup {
    pub origin: TestOrigin,
    pub edge: RunningEdge,
    pub clock: Arc<ManualClock>,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

impl Setup {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut EdgeConfig)) -> Self {
        let clock = Arc::new(ManualClock::new());
        let origin = TestOrigin::start_with_clock(clock.clone()).await;
        let mut config = EdgeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            admin: Some("127.0.0.1:0".parse().expect("addr")),
            origin: origin.url(),
            ..EdgeConfig::default()
        };
        config.upstream.first_byte_timeout_ms = 2_000;
        config.upstream.idle_body_timeout_ms = 2_000;
        adjust(&mut config);
        let upstream = Arc::new(Origin::new(&config.origin, config.upstream.clone()).expect("origin"));
        let edge = start_with(config, upstream, clock.clone()).await.expect("edge starts");
        Setup {
            origin,
            edge,
            clock,
            client: client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.edge.listen, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.edge.admin.expect("admin listener"), path)
    }

    pub async fn get(&self, path: &str) -> Got {
        send(&self.client, "GET", &self.url(path), &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        send(&self.client, "GET", &self.url(path), headers).await
    }

    pub fn advance(&self, seconds: u64) {
        self.clock.advance(Duration::from_secs(seconds));
    }
}

/// The edge's `/metrics` text.
pub async fn metrics_text(setup: &Setup) -> String {
    String::from_utf8_lossy(&send(&setup.client, "GET", &setup.admin_url("/metrics"), &[]).await.body).into_owned()
}

/// Waits (bounded) until `check` holds; for effects of background tasks.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}
