//! An HTTP load generator for custom patterns: Zipf (or uniform) popularity over N objects per size class,
//! an object-size mix, cold or warm start, a fixed number of requests or a duration. It reports requests per
//! second and latency percentiles from an HDR histogram, and how many responses were cache hits.
//!
//! Paths follow the synthetic origin's scheme, `/obj/<size>/<n>`. Each connection is its own HTTP/1.1
//! keep-alive connection, so the connection count is exact.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

/// When a run stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this many requests in all.
    Requests(u64),
    /// After this long.
    Duration(Duration),
}

/// A workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Server to load.
    pub target: SocketAddr,
    /// `Host` header.
    pub host: String,
    /// Objects per size class.
    pub objects: u64,
    /// Size classes in bytes, with their share of requests.
    pub sizes: Vec<(u64, f64)>,
    /// Zipf exponent of popularity within a class; `None` for uniform.
    pub zipf: Option<f64>,
    /// Concurrent connections.
    pub connections: usize,
    /// When to stop.
    pub stop: Stop,
    /// Request every object once before measuring.
    pub warm: bool,
    /// Seed of the request sequence.
    pub seed: u64,
}

/// Figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Requests completed.
    pub requests: u64,
    /// Requests that failed (connection errors, 5xx).
    pub errors: u64,
    /// Responses whose `Cache-Status` said hit.
    pub hits: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Requests per second.
    pub requests_per_second: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest latency.
    pub max_us: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.2} s: {:.0} req/s, {} errors, {} hits; latency p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
            self.requests,
            self.seconds,
            self.requests_per_second,
            self.errors,
            self.hits,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us
        )
    }
}

/// A deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks paths by the workload's popularity and size mix.
pub struct PathPicker {
    sizes: Vec<(u64, f64)>,
    /// Cumulative popularity of object ranks (empty for uniform).
    cdf: Vec<f64>,
    objects: u64,
}

impl PathPicker {
    /// A picker for `workload`.
    pub fn new(workload: &Workload) -> Self {
        let total: f64 = workload.sizes.iter().map(|(_, w)| w).sum();
        let mut running = 0.0;
        let sizes = workload
            .sizes
            .iter()
            .map(|(size, weight)| {
                running += weight / total;
                (*size, running)
            })
            .collect();
        let cdf = match workload.zipf {
            Some(exponent) => {
                let weights: Vec<f64> = (1..=workload.objects)
                    .map(|rank| 1.0 / (rank as f64).powf(exponent))
                    .collect();
                let sum: f64 = weights.iter().sum();
                let mut acc = 0.0;
                weights
                    .iter()
                    .map(|w| {
                        acc += w / sum;
                        acc
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        PathPicker {
            sizes,
            cdf,
            objects: workload.objects.max(1),
        }
    }

    fn pick(&self, rng: &mut Rng) -> String {
        let roll = rng.unit();
        let size = self
            .sizes
            .iter()
            .find(|(_, cumulative)| roll <= *cumulative)
            .or(self.sizes.last())
            .map(|s| s.0)
            .unwrap_or(1024);
        let object = if self.cdf.is_empty() {
            rng.next() % self.objects
        } else {
            let roll = rng.unit();
            self.cdf.partition_point(|c| *c < roll) as u64
        };
        format!("/obj/{size}/{object}")
    }

    /// Every path once.
    pub fn all(&self) -> Vec<String> {
        self.sizes
            .iter()
            .flat_map(|(size, _)| (0..self.objects).map(move |n| format!("/obj/{size}/{n}")))
            .collect()
    }
}

/// Runs `workload` and reports.
pub async fn run(workload: &Workload) -> Result<Report> {
    let picker = std::sync::Arc::new(PathPicker::new(workload));
    if workload.warm {
        let mut connection = Connection::open(workload.target, &workload.host).await?;
        for path in picker.all() {
            connection.get(&path).await.with_context(|| format!("warming {path}"))?;
        }
    }
    let started = Instant::now();
    let deadline = match workload.stop {
        Stop::Duration(duration) => Some(started + duration),
        Stop::Requests(_) => None,
    };
    let per_connection = match workload.stop {
        Stop::Requests(total) => Some(total.div_ceil(workload.connections as u64)),
        Stop::Duration(_) => None,
    };
    let mut tasks = Vec::new();
    for index in 0..workload.connections {
        let picker = picker.clone();
        let workload = workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(workload.seed ^ (index as u64).wrapping_mul(0x1234_5678_9abc_def1));
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut tally = Tally::default();
            let mut connection = Connection::open(workload.target, &workload.host).await.ok();
            let mut sent = 0u64;
            loop {
                if per_connection.is_some_and(|limit| sent >= limit) || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                sent += 1;
                let path = picker.pick(&mut rng);
                let begun = Instant::now();
                let outcome = match connection.as_mut() {
                    Some(open) => open.get(&path).await,
                    None => Err(anyhow::anyhow!("not connected")),
                };
                match outcome {
                    Ok(got) => {
                        let _ = histogram.record(begun.elapsed().as_micros().max(1) as u64);
                        tally.requests += 1;
                        tally.bytes += got.bytes;
                        tally.hits += u64::from(got.hit);
                        tally.errors += u64::from(got.status >= 500);
                    }
                    Err(_) => {
                        tally.errors += 1;
                        connection = Connection::open(workload.target, &workload.host).await.ok();
                        if connection.is_none() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            (histogram, tally)
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut tally = Tally::default();
    for task in tasks {
        let (part, counts) = task.await?;
        histogram.add(part)?;
        tally.requests += counts.requests;
        tally.errors += counts.errors;
        tally.hits += counts.hits;
        tally.bytes += counts.bytes;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        requests: tally.requests,
        errors: tally.errors,
        hits: tally.hits,
        bytes: tally.bytes,
        seconds,
        requests_per_second: tally.requests as f64 / seconds.max(1e-9),
        p50_us: histogram.value_at_quantile(0.50),
        p90_us: histogram.value_at_quantile(0.90),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
    })
}

#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    hits: u64,
    bytes: u64,
}

struct Got {
    status: u16,
    hit: bool,
    bytes: u64,
}

struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
}

impl Connection {
    async fn open(target: SocketAddr, host: &str) -> Result<Self> {
        let stream = TcpStream::connect(target)
            .await
            .with_context(|| format!("connect {target}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Connection {
            sender,
            host: host.to_string(),
        })
    }

    async fn get(&mut self, path: &str) -> Result<Got> {
        self.sender.ready().await?;
        let request = http::Request::get(path)
            .header("host", &self.host)
            .body(Empty::<Bytes>::new())?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let hit = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("; hit"));
        let mut body = response.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                bytes += data.len() as u64;
            }
        }
        Ok(Got { status, hit, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_prefers_the_head() {
        let workload = Workload {
            target: "127.0.0.1:1".parse().expect("addr"),
            host: "h".into(),
            objects: 1000,
            sizes: vec![(1024, 1.0)],
            zipf: Some(1.0),
            connections: 1,
            stop: Stop::Requests(1),
            warm: false,
            seed: 7,
        };
        let picker = PathPicker::new(&workload);
        let mut rng = Rng(1);
        let picks: Vec<String> = (0..10_000).map(|_| picker.pick(&mut rng)).collect();
        let top = picks.iter().filter(|p| p.as_str() == "/obj/1024/0").count();
        let tail = picks.iter().filter(|p| p.as_str() == "/obj/1024/999").count();
        assert!(top > 1000, "rank 1 drew {top} of 10000");
        assert!(tail < 20, "rank 1000 drew {tail}");
        assert_eq!(picker.all().len(), 1000);
    }
}
