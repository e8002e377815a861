//! The load: a Zipf sampler, the open-loop driver over the edges in round robin, the idle peer-latency
//! probe and the master's kill under load.

use super::*;

/// Zipf popularity over object ranks (rank 0 the most popular).
pub(super) struct Zipf {
    pub(super) cdf: Vec<f64>,
}

impl Zipf {
    pub(super) fn new(objects: u64, exponent: f64) -> Zipf {
        let weights: Vec<f64> = (1..=objects.max(1))
            .map(|rank| 1.0 / (rank as f64).powf(exponent))
            .collect();
        let sum: f64 = weights.iter().sum();
        let mut running = 0.0;
        let cdf = weights
            .iter()
            .map(|weight| {
                running += weight / sum;
                running
            })
            .collect();
        Zipf { cdf }
    }

    pub(super) fn objects(&self) -> u64 {
        self.cdf.len() as u64
    }

    pub(super) fn pick(&self, rng: &mut SplitMix) -> u64 {
        let roll = rng.unit();
        (self.cdf.partition_point(|c| *c < roll) as u64).min(self.objects() - 1)
    }
}

/// A deterministic generator (splitmix64).
pub(super) struct SplitMix(pub(super) u64);

impl SplitMix {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where a response came from, by its `Cache-Status` entries (RFC 9211: one per cache on the way, the
/// answering edge's last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Served {
    /// The edge's own cache.
    LocalHit,
    /// Another edge's cache (an earlier entry says hit, the edge's own does not).
    PeerHit,
    /// Neither: an origin fetch, its own or one it joined.
    Forwarded,
}

pub(super) fn classify(response: &http::HeaderMap) -> Served {
    let entries: Vec<&str> = response
        .get_all("cache-status")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let is_hit = |entry: &&str| entry.split(';').any(|param| param.trim() == "hit");
    match entries.split_last() {
        Some((own, _)) if is_hit(own) => Served::LocalHit,
        Some((_, before)) if before.iter().any(is_hit) => Served::PeerHit,
        _ => Served::Forwarded,
    }
}

pub(super) fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits; these bounds are valid, so creation cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// Latencies of one run by where the responses came from.
pub(super) struct Classes {
    pub(super) all: Histogram<u64>,
    pub(super) local: Histogram<u64>,
    pub(super) peer: Histogram<u64>,
}

impl Classes {
    pub(super) fn new() -> Classes {
        Classes {
            all: histogram(),
            local: histogram(),
            peer: histogram(),
        }
    }

    pub(super) fn record(&mut self, served: Served, micros: u64) {
        let micros = micros.max(1);
        let _ = self.all.record(micros);
        let _ = match served {
            Served::LocalHit => self.local.record(micros),
            Served::PeerHit => self.peer.record(micros),
            Served::Forwarded => Ok(()),
        };
    }

    pub(super) fn add(&mut self, other: &Classes) {
        let _ = self.all.add(&other.all);
        let _ = self.local.add(&other.local);
        let _ = self.peer.add(&other.peer);
    }

    pub(super) fn local_p50_ms(&self) -> f64 {
        ms(&self.local, 0.5)
    }

    pub(super) fn peer_p50_ms(&self) -> f64 {
        ms(&self.peer, 0.5)
    }
}

pub(super) fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// How a load run stops.
pub(super) enum Until {
    /// After this many requests (or [`PHASE_LIMIT`]).
    Requests(u64),
    /// When the flag is set.
    Flag(Arc<AtomicBool>),
}

/// The edges a load run drives, in round robin: each request goes to the next edge that is in rotation.
pub(super) struct Rotation {
    pub(super) targets: Vec<SocketAddr>,
    pub(super) in_rotation: Vec<AtomicBool>,
    pub(super) in_flight: Vec<AtomicU64>,
    pub(super) next: AtomicU64,
}

impl Rotation {
    pub(super) fn new(targets: Vec<SocketAddr>) -> Rotation {
        Rotation {
            in_rotation: targets.iter().map(|_| AtomicBool::new(true)).collect(),
            in_flight: targets.iter().map(|_| AtomicU64::new(0)).collect(),
            next: AtomicU64::new(0),
            targets,
        }
    }

    pub(super) fn pick(&self) -> Option<usize> {
        let count = self.targets.len();
        for _ in 0..count {
            let index = (self.next.fetch_add(1, Ordering::Relaxed) % count as u64) as usize;
            if self.in_rotation[index].load(Ordering::Relaxed) {
                return Some(index);
            }
        }
        None
    }
}

/// Figures of one load run.
pub(super) struct LoadRun {
    pub(super) requests: u64,
    pub(super) errors: u64,
    pub(super) error_samples: Vec<String>,
    pub(super) distinct: u64,
    pub(super) seconds: f64,
    pub(super) classes: Classes,
    pub(super) local_hits: u64,
    pub(super) peer_hits: u64,
    /// Open loop: requests sent more than [`LATE`] after their due time.
    pub(super) late: u64,
    pub(super) truncated: bool,
}

/// How requests are sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub(super) object_size: u64,
    /// Most requests in flight (closed loop: always this many).
    pub(super) connections: usize,
    /// Requests per second on a fixed schedule (open loop), or `None` for a closed loop.
    pub(super) rate: Option<f64>,
}

impl Shape {
    pub(super) fn of(options: &CommunityBench) -> Shape {
        Shape {
            object_size: options.object_size,
            connections: options.connections,
            rate: (options.rate > 0.0).then_some(options.rate),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self.rate {
            Some(rate) => format!(
                "open loop at {rate:.0} requests/s (at most {} in flight)",
                self.connections
            ),
            None => format!("closed loop of {} concurrent requests", self.connections),
        }
    }
}

/// Drives the rotation until `until`: `shape.connections` workers take the requests in order; in an open
/// loop request n is due at n / rate seconds. Latency counts from the moment a request is sent: tokio's
/// timer wakes up to a millisecond after the due time, which is no part of the server's latency. A request
/// sent more than [`LATE`] after its due time (every worker was busy: the schedule could not be kept) is
/// counted as late, so a saturated run shows as one.
pub(super) async fn drive(
    client: &HttpClient,
    rotation: Arc<Rotation>,
    workload: Arc<Zipf>,
    shape: Shape,
    until: Until,
    seed: u64,
) -> Result<LoadRun> {
    let object_size = shape.object_size;
    let seen: Arc<Vec<AtomicBool>> = Arc::new((0..workload.objects()).map(|_| AtomicBool::new(false)).collect());
    let issued = Arc::new(AtomicU64::new(0));
    let (limit, stop) = match until {
        Until::Requests(count) => (count, Arc::new(AtomicBool::new(false))),
        Until::Flag(flag) => (u64::MAX, flag),
    };
    let started = Instant::now();
    let deadline = started + PHASE_LIMIT;
    let truncated = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..shape.connections {
        let (client, rotation, workload, seen, issued, stop, truncated) = (
            client.clone(),
            rotation.clone(),
            workload.clone(),
            seen.clone(),
            issued.clone(),
            stop.clone(),
            truncated.clone(),
        );
        tasks.spawn(async move {
            let mut rng = SplitMix(seed ^ (task as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
            let mut classes = Classes::new();
            let (mut requests, mut errors, mut local_hits, mut peer_hits, mut late) = (0u64, 0u64, 0u64, 0u64, 0u64);
            let mut error_samples = Vec::new();
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let ticket = issued.fetch_add(1, Ordering::Relaxed);
                if ticket >= limit {
                    break;
                }
                let due = shape
                    .rate
                    .map(|rate| started + Duration::from_secs_f64(ticket as f64 / rate));
                if let Some(due) = due {
                    tokio::time::sleep_until(due.into()).await;
                }
                if Instant::now() > deadline {
                    truncated.store(true, Ordering::Relaxed);
                    break;
                }
                let Some(edge) = rotation.pick() else {
                    break;
                };
                let object = workload.pick(&mut rng);
                seen[object as usize].store(true, Ordering::Relaxed);
                let url = format!("http://{}/obj/{object_size}/{object}", rotation.targets[edge]);
                rotation.in_flight[edge].fetch_add(1, Ordering::Relaxed);
                let begun = Instant::now();
                late += u64::from(due.is_some_and(|due| begun.duration_since(due) > LATE));
                let outcome = fetch(&client, &url, object_size).await;
                let micros = begun.elapsed().as_micros() as u64;
                rotation.in_flight[edge].fetch_sub(1, Ordering::Relaxed);
                requests += 1;
                match outcome {
                    Ok(served) => {
                        classes.record(served, micros);
                        local_hits += u64::from(served == Served::LocalHit);
                        peer_hits += u64::from(served == Served::PeerHit);
                    }
                    Err(error) => {
                        errors += 1;
                        if error_samples.len() < 5 {
                            error_samples.push(format!("{url}: {error:#}"));
                        }
                    }
                }
            }
            (classes, requests, errors, local_hits, peer_hits, late, error_samples)
        });
    }
    let mut run = LoadRun {
        requests: 0,
        errors: 0,
        error_samples: Vec::new(),
        distinct: 0,
        seconds: 0.0,
        classes: Classes::new(),
        local_hits: 0,
        peer_hits: 0,
        late: 0,
        truncated: false,
    };
    while let Some(done) = tasks.join_next().await {
        let (classes, requests, errors, local_hits, peer_hits, late, samples) = done?;
        run.late += late;
        run.classes.add(&classes);
        run.requests += requests;
        run.errors += errors;
        run.local_hits += local_hits;
        run.peer_hits += peer_hits;
        for sample in samples {
            if run.error_samples.len() < 10 {
                run.error_samples.push(sample);
            }
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    run.distinct = seen.iter().filter(|flag| flag.load(Ordering::Relaxed)).count() as u64;
    run.truncated = truncated.load(Ordering::Relaxed);
    Ok(run)
}

/// GETs `url`: where it was served from, or why it failed (no answer in time, a status other than 200, a
/// body of the wrong length).
pub(super) async fn fetch(client: &HttpClient, url: &str, object_size: u64) -> Result<Served> {
    let request = http::Request::get(url)
        .header(http::header::HOST, SITE_HOST)
        .body(Empty::new())?;
    let exchange = async {
        let response = client.request(request).await?;
        let status = response.status();
        let served = classify(response.headers());
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, served, body.len() as u64))
    };
    let (status, served, length) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))??;
    if status != http::StatusCode::OK {
        bail!("status {status}");
    }
    if length != object_size {
        bail!("{length} body bytes, not {object_size}");
    }
    Ok(served)
}

pub(super) async fn measure_phase(
    options: &CommunityBench,
    system: &System,
    client: &HttpClient,
    workload: &Arc<Zipf>,
    seed: u64,
) -> Result<(Figures, Classes)> {
    let origin_before = system.origin.requests();
    let cpu_before = system.cpu_seconds();
    let served_before = metric_sum(client, system, PEER_SERVED).await;
    let evictions_before = metric_sum(client, system, EVICTIONS).await;
    let fallbacks_before = metric_sum(client, system, PEER_FALLBACKS).await;
    let peer_bytes_before = metric_sum_if_any(client, system, PEER_BYTES).await;
    let rotation = Arc::new(Rotation::new(system.targets()));
    let run = drive(
        client,
        rotation,
        workload.clone(),
        Shape::of(options),
        Until::Requests(options.requests),
        seed,
    )
    .await?;
    let cpu_seconds = system.cpu_seconds() - cpu_before;
    let origin_requests = system.origin.requests().saturating_sub(origin_before);
    let peer_served = metric_sum(client, system, PEER_SERVED)
        .await
        .saturating_sub(served_before);
    let evictions = metric_sum(client, system, EVICTIONS)
        .await
        .saturating_sub(evictions_before);
    let fallbacks = metric_sum(client, system, PEER_FALLBACKS)
        .await
        .saturating_sub(fallbacks_before);
    let held = metric_per_edge(client, system, OBJECTS_HELD).await;
    let peer_bytes = match (peer_bytes_before, metric_sum_if_any(client, system, PEER_BYTES).await) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    for sample in &run.error_samples {
        eprintln!("{} error: {sample}", system.setup.name());
    }
    let figures = Figures {
        requests: run.requests,
        errors: run.errors,
        distinct: run.distinct,
        origin_requests,
        seconds: run.seconds,
        p50_ms: ms(&run.classes.all, 0.5),
        p99_ms: ms(&run.classes.all, 0.99),
        local_hits: run.local_hits,
        peer_hits: run.peer_hits,
        peer_served,
        evictions,
        fallbacks,
        peer_bytes,
        held_min: held.iter().copied().min().unwrap_or(0),
        held_max: held.iter().copied().max().unwrap_or(0),
        late: run.late,
        cpu_seconds,
        truncated: run.truncated,
    };
    Ok((figures, run.classes))
}

/// Sequential requests on the idle community for the most popular objects, from every edge: each is a
/// local hit at the object's owner and a peer hit elsewhere (unless the edges keep copies).
pub(super) async fn idle_latency(
    system: &System,
    client: &HttpClient,
    objects: u64,
    object_size: u64,
) -> Result<PeerLatency> {
    let mut classes = Classes::new();
    let ranks = LATENCY_OBJECTS.min(objects);
    // One round first so that every connection is open and every object is where the warm run left it.
    for round in 0..2 {
        for object in 0..ranks {
            for edge in &system.edges {
                let url = format!("http://{}/obj/{object_size}/{object}", edge.listen);
                let begun = Instant::now();
                let served = fetch(client, &url, object_size).await?;
                let micros = begun.elapsed().as_micros() as u64;
                if round == 1 {
                    classes.record(served, micros);
                }
            }
        }
    }
    Ok(PeerLatency {
        local_p50_ms: classes.local_p50_ms(),
        peer_p50_ms: classes.peer_p50_ms(),
        local_samples: classes.local.len(),
        peer_samples: classes.peer.len(),
        loaded_local_p50_ms: 0.0,
        loaded_peer_p50_ms: 0.0,
    })
}

/// Kills the master with SIGKILL under load on the other edges and times the failover.
pub(super) async fn kill_master(
    options: &CommunityBench,
    system: &mut System,
    client: &HttpClient,
    workload: &Arc<Zipf>,
) -> Result<Failover> {
    let before = converged(client, system, None).await?;
    let Some(master_index) = system
        .edges
        .iter()
        .position(|edge| edge.peer.is_some_and(|peer| peer.to_string() == before.master))
    else {
        bail!("the master {} is none of the edges", before.master);
    };
    let rotation = Arc::new(Rotation::new(system.targets()));
    let stop = Arc::new(AtomicBool::new(false));
    let origin_before = system.origin.requests();
    let load = {
        let (client, rotation, workload, stop) = (client.clone(), rotation.clone(), workload.clone(), stop.clone());
        let (shape, seed) = (Shape::of(options), options.seed.wrapping_add(7));
        tokio::spawn(async move { drive(&client, rotation, workload, shape, Until::Flag(stop), seed).await })
    };
    // Stops the load even when this function returns early with an error.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());
    tokio::time::sleep(LOAD_BEFORE_KILL).await;
    // The killed edge leaves the rotation first, as a health-checked DNS or load balancer would take it
    // out: the errors counted are those the survivors' clients see, not requests sent to a dead host.
    rotation.in_rotation[master_index].store(false, Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    while rotation.in_flight[master_index].load(Ordering::Relaxed) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    system.edges[master_index].process.take();
    let killed = Instant::now();
    let mut first_seen = None;
    let survivors: Vec<SocketAddr> = system
        .edges
        .iter()
        .filter(|edge| edge.process.is_some())
        .map(|edge| edge.admin)
        .collect();
    let (agreed, after) = loop {
        if first_seen.is_none() {
            for admin in &survivors {
                let Some(view) = status(client, *admin).await else {
                    continue;
                };
                let community = &view["community"];
                let new_master = community["master"].is_string() && community["master"] != before.master.as_str();
                if new_master && community["term"].as_u64().unwrap_or(0) > before.term {
                    first_seen = Some(killed.elapsed());
                    break;
                }
            }
        }
        if let Some(view) = agreed_view(client, system, Some(&before.master)).await
            && view.term > before.term
        {
            break (killed.elapsed(), view);
        }
        if killed.elapsed() > FAILOVER_LIMIT {
            bail!("no new master agreed within {FAILOVER_LIMIT:?} of the kill");
        }
        tokio::time::sleep(STATUS_POLL).await;
    };
    tokio::time::sleep(LOAD_AFTER_FAILOVER).await;
    stop.store(true, Ordering::Relaxed);
    let run = load.await??;
    Ok(Failover {
        old_master: before.master,
        old_term: before.term,
        new_master: after.master,
        new_term: after.term,
        first_seen: first_seen.unwrap_or(agreed),
        agreed,
        requests: run.requests,
        errors: run.errors,
        error_samples: run.error_samples,
        origin_requests: system.origin.requests().saturating_sub(origin_before),
    })
}
