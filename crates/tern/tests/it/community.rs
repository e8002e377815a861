//! Cache communities (issue 11, seeds 002 and 003) on real processes: `tern registry`, four `tern edge
//! --community` and a counting origin on loopback. The origin must see each object once however many edges
//! ask for it at the same moment; the master's death must cost no client request; a peer request without
//! the community's token is refused.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tern_edge::testsuite::{Resource, TestOrigin, client, send};

use crate::{Running, free_addr, spawn};

/// The host every client names, so that all edges key an object alike.
const HOST: &str = "site.test";

/// One edge of the community and its addresses.
struct Member {
    process: Option<Running>,
    listen: SocketAddr,
    admin: SocketAddr,
    peer: SocketAddr,
    args: Vec<String>,
}

impl Member {
    fn start(origin: SocketAddr, registry: SocketAddr, key: &Path, priority: u8) -> Member {
        Member::start_with(origin, registry, key, priority, &[])
    }

    /// A member with `extra` arguments after the common ones.
    fn start_with(origin: SocketAddr, registry: SocketAddr, key: &Path, priority: u8, extra: &[&str]) -> Member {
        let (listen, admin, peer) = (free_addr(), free_addr(), free_addr());
        let args: Vec<String> = [
            "edge",
            "--listen",
            &listen.to_string(),
            "--origin",
            &format!("http://{origin}"),
            "--admin",
            &admin.to_string(),
            "--community",
            "site",
            "--cluster-key",
            key.to_str().expect("utf-8 path"),
            "--peer-listen",
            &peer.to_string(),
            "--registry",
            &format!("http://{registry}"),
            "--master-priority",
            &priority.to_string(),
            "--purge-allow",
            "127.0.0.0/8",
        ]
        .iter()
        .chain(extra)
        .map(|arg| arg.to_string())
        .collect();
        let mut member = Member {
            process: None,
            listen,
            admin,
            peer,
            args,
        };
        member.restart();
        member
    }

    fn restart(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.process = Some(spawn(&args, self.listen));
    }

    fn kill(&mut self) {
        // Running's drop sends SIGKILL and reaps the process: `kill -9`.
        self.process.take();
    }
}

/// A registry, a counting origin and four edges, the first ranked highest so that it ends up master.
struct Site {
    _dir: tempfile::TempDir,
    _registry: Running,
    registry: SocketAddr,
    key: std::path::PathBuf,
    origin: TestOrigin,
    members: Vec<Member>,
}

async fn site(objects: usize) -> Site {
    site_of(objects, &[200, 100, 100, 100]).await
}

/// A site whose members have these master priorities.
async fn site_of(objects: usize, priorities: &[u8]) -> Site {
    site_with(objects, priorities, &[]).await
}

/// A site whose members have these master priorities and `extra` arguments.
async fn site_with(objects: usize, priorities: &[u8], extra: &[&str]) -> Site {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("cluster.key");
    tern_wire::SecretKey::write_new(&key).expect("key");
    let origin = TestOrigin::start().await;
    for index in 0..objects {
        let mut resource = Resource::ok(body_of(index), &[("cache-control", "max-age=3600")]);
        // The four requests for an object overlap at the owner.
        resource.delay = Duration::from_millis(30);
        origin.set(&format!("/obj/{index}"), resource);
    }
    let registry_addr = free_addr();
    let data = dir.path().join("registry");
    let registry = spawn(
        &[
            "registry",
            "--listen",
            &registry_addr.to_string(),
            "--cluster-key",
            key.to_str().expect("utf-8 path"),
            "--data",
            data.to_str().expect("utf-8 path"),
        ],
        registry_addr,
    );
    let mut members = Vec::new();
    for &priority in priorities {
        members.push(Member::start_with(origin.addr, registry_addr, &key, priority, extra));
    }
    let site = Site {
        _dir: dir,
        _registry: registry,
        registry: registry_addr,
        key,
        origin,
        members,
    };
    site.converged(Duration::from_secs(15), None).await;
    site
}

/// Object `index`'s body: distinct bytes, a few of them larger than the edge reads whole (streamed).
fn body_of(index: usize) -> Bytes {
    let len = if index % 50 == 7 { 200_000 } else { 500 + index * 13 };
    Bytes::from(
        (0..len)
            .map(|at| (at.wrapping_mul(31) ^ index.wrapping_mul(7)) as u8)
            .collect::<Vec<u8>>(),
    )
}

async fn status(admin: SocketAddr) -> Option<serde_json::Value> {
    let client: Client<HttpConnector, Full<Bytes>> = client();
    let request = Request::get(format!("http://{admin}/status"))
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = tokio::time::timeout(Duration::from_secs(2), client.request(request))
        .await
        .ok()?
        .ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

impl Site {
    /// Waits until every running member follows one master (not `not`) with the same epoch and lists
    /// every running member; returns that master's name and how long it took.
    async fn converged(&self, within: Duration, not: Option<&str>) -> (String, Duration) {
        let started = Instant::now();
        let running: Vec<&Member> = self.members.iter().filter(|m| m.process.is_some()).collect();
        loop {
            let mut views = Vec::new();
            for member in &running {
                if let Some(status) = status(member.admin).await {
                    views.push(status["community"].clone());
                }
            }
            let agreed = views.len() == running.len()
                && views.iter().all(|view| {
                    view["master"] == views[0]["master"]
                        && view["epoch"] == views[0]["epoch"]
                        && view["peers"].as_array().map(Vec::len) == Some(running.len())
                        && view["master"].is_string()
                        && not.is_none_or(|old| view["master"] != old)
                });
            if agreed {
                let master = views[0]["master"].as_str().unwrap_or_default().to_string();
                return (master, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "the community did not converge within {within:?}: {views:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn member_named(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|member| member.peer.to_string() == name)
            .expect("the master is one of the members")
    }
}

/// GET `/obj/{index}` from the edge at `edge`; the body, or why not.
async fn get(client: &Client<HttpConnector, Full<Bytes>>, edge: SocketAddr, index: usize) -> Result<Bytes, String> {
    let request = Request::get(format!("http://{edge}/obj/{index}"))
        .header(http::header::HOST, HOST)
        .body(Full::new(Bytes::new()))
        .map_err(|error| error.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| "no response within 10 s".to_string())?
        .map_err(|error| error.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| error.to_string())?
        .to_bytes();
    if status != http::StatusCode::OK {
        return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_edges_fetch_each_object_from_the_origin_once_and_refuse_peers_without_the_token() {
    const OBJECTS: usize = 200;
    let site = site(OBJECTS).await;
    let edges: Vec<SocketAddr> = site.members.iter().map(|member| member.listen).collect();
    let client = client();
    let started = Instant::now();
    // Objects in waves of 20; each object asked from all four edges at the same moment.
    for wave in (0..OBJECTS).collect::<Vec<_>>().chunks(20) {
        let mut requests = tokio::task::JoinSet::new();
        for &index in wave {
            for &edge in &edges {
                let client = client.clone();
                requests.spawn(async move { (index, edge, get(&client, edge, index).await) });
            }
        }
        while let Some(done) = requests.join_next().await {
            let (index, edge, result) = done.expect("request task");
            let body = result.unwrap_or_else(|error| panic!("/obj/{index} from {edge}: {error}"));
            assert!(
                body == body_of(index),
                "/obj/{index} from {edge}: not the origin's bytes"
            );
        }
    }
    let elapsed = started.elapsed();
    let mut extra = Vec::new();
    for index in 0..OBJECTS {
        let count = site.origin.count_for(&format!("/obj/{index}"));
        if count != 1 {
            extra.push((index, count));
        }
    }
    println!(
        "{} requests ({OBJECTS} objects x 4 edges) in {elapsed:?}; origin requests: {}",
        OBJECTS * 4,
        site.origin.count()
    );
    assert!(extra.is_empty(), "objects the origin saw other than once: {extra:?}");
    assert_eq!(site.origin.count(), OBJECTS);

    // `keep = never`: only the owner holds a copy; the other three pass the owner's answer on unstored.
    let mut unstored = 0;
    for &edge in &edges {
        let got = send(&client, "GET", &format!("http://{edge}/obj/0"), &[("host", HOST)]).await;
        assert_eq!(got.status, http::StatusCode::OK);
        // Cache-Status has one field line per cache on the way (RFC 9211): the owner's, then this edge's.
        let statuses: Vec<&str> = got
            .headers
            .get_all("cache-status")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        if statuses.iter().any(|status| status.contains("community-owner")) {
            unstored += 1;
        }
    }
    assert_eq!(unstored, 3, "every edge but the owner passes the object on unstored");
    assert_eq!(site.origin.count(), OBJECTS);

    // A peer request without the token is refused and counted.
    let peer = site.members[1].peer;
    let refused = send(&client, "GET", &format!("http://{peer}/obj/1"), &[("host", HOST)]).await;
    assert_eq!(refused.status, http::StatusCode::FORBIDDEN);
    let wrong = send(
        &client,
        "GET",
        &format!("http://{peer}/obj/1"),
        &[("host", HOST), ("tern-community-token", &"0".repeat(64))],
    )
    .await;
    assert_eq!(wrong.status, http::StatusCode::FORBIDDEN);
    let metrics = send(
        &client,
        "GET",
        &format!("http://{}/metrics", site.members[1].admin),
        &[],
    )
    .await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("tern_community_peer_requests_total{outcome=\"refused\"} 2"),
        "refusals counted:\n{text}"
    );
    let peer_bytes = metric(site.members[1].admin, "tern_community_peer_bytes_total").await;
    assert!(
        peer_bytes > 100_000.0,
        "bodies other members served are counted: {peer_bytes}"
    );
    // A client cannot pose as a peer on the public listener: the hop marker is stripped there, and the
    // origin still saw each object once.
    assert_eq!(site.origin.count(), OBJECTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_masters_death_costs_no_request_and_it_rejoins_as_a_member() {
    const OBJECTS: usize = 400;
    let mut site = site(OBJECTS).await;
    let (master, _) = site.converged(Duration::from_secs(5), None).await;
    let master_index = site.member_named(&master);
    let others: Vec<SocketAddr> = site
        .members
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != master_index)
        .map(|(_, member)| member.listen)
        .collect();

    // Clients ask the other edges for objects, old and new, without pause.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let served = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for (offset, edge) in others.iter().copied().enumerate() {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        clients.spawn(async move {
            let client = client();
            let mut index = offset * 7;
            while !stop.load(Ordering::Relaxed) {
                index = (index + 11) % OBJECTS;
                match get(&client, edge, index).await {
                    Ok(body) if body == body_of(index) => {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("/obj/{index} from {edge}: wrong bytes")),
                    Err(error) => failures
                        .lock()
                        .expect("lock")
                        .push(format!("/obj/{index} from {edge}: {error}")),
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    site.members[master_index].kill();
    let killed = Instant::now();
    let (new_master, _) = site.converged(Duration::from_secs(10), Some(&master)).await;
    let failover = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = clients.join_next().await {
        done.expect("client task");
    }
    let failures = failures.lock().expect("lock").clone();
    println!(
        "master {master} killed; {new_master} master after {failover:?}; {} requests served, {} failed",
        served.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failover < Duration::from_secs(3), "failover took {failover:?}");
    assert!(failures.is_empty(), "failed client requests: {failures:?}");
    assert!(served.load(Ordering::Relaxed) > 0);

    // The old master, restarted, joins the new one as a member.
    site.members[master_index].restart();
    let (after, rejoined) = site.converged(Duration::from_secs(10), None).await;
    assert_eq!(after, new_master, "the restarted old master must not take over");
    let status = status(site.members[master_index].admin).await.expect("status");
    assert_eq!(status["community"]["role"], "member", "{status:#}");
    println!("the old master rejoined as a member in {rejoined:?}");
}

/// The edges' names (peer addresses) whose answer for `/obj/{index}` says the owner served it unstored:
/// the non-owners; and the one that stored it.
async fn owner_of(site: &Site, index: usize) -> (usize, Vec<usize>) {
    let client = client();
    let mut owner = None;
    let mut others = Vec::new();
    for (at, member) in site.members.iter().enumerate() {
        let got = send(
            &client,
            "GET",
            &format!("http://{}/obj/{index}", member.listen),
            &[("host", HOST)],
        )
        .await;
        assert_eq!(got.status, http::StatusCode::OK);
        let passed_on = got
            .headers
            .get_all("cache-status")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|status| status.contains("community-owner"));
        if passed_on {
            others.push(at);
        } else {
            owner = Some(at);
        }
    }
    (owner.expect("one member stores the object"), others)
}

/// Milliseconds since the Unix epoch.
fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis())
}

/// A series' value in the Prometheus text of the edge's `/metrics`, 0 when absent.
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let got = send(&client(), "GET", &format!("http://{admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&got.body).to_string();
    // The edge's registry prefixes its series (`tern_edge_...`).
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            name.ends_with(series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_owner_takes_its_portion_from_the_holders_the_directory_names() {
    const OBJECTS: usize = 80;
    let mut site = site_of(OBJECTS, &[200, 100, 100]).await;
    let client = client();
    for index in 0..OBJECTS {
        let body = get(&client, site.members[0].listen, index).await.expect("first fetch");
        assert!(body == body_of(index));
    }
    assert_eq!(site.origin.count(), OBJECTS);

    // A fourth edge joins: about a quarter of the portions move to it, while their copies stay with the
    // old owners, registered in the master's directory.
    let newcomer = Member::start(site.origin.addr, site.registry, &site.key, 100);
    site.members.push(newcomer);
    site.converged(Duration::from_secs(10), None).await;
    for member in &site.members {
        for index in 0..OBJECTS {
            let body = get(&client, member.listen, index)
                .await
                .unwrap_or_else(|error| panic!("/obj/{index} from {}: {error}", member.listen));
            assert!(
                body == body_of(index),
                "/obj/{index} from {}: not the origin's bytes",
                member.listen
            );
        }
    }
    let newcomer = &site.members[3];
    let from_holders = metric(
        newcomer.admin,
        "tern_community_peer_requests_total{outcome=\"holder-ok\"}",
    )
    .await;
    let located = metric(
        newcomer.admin,
        "tern_community_location_requests_total{outcome=\"holder\"}",
    )
    .await;
    println!(
        "the newcomer took {from_holders} objects from holders ({located} located); origin requests: {}",
        site.origin.count()
    );
    assert!(
        from_holders > 0.0,
        "the newcomer owns a portion and took it from the old owners"
    );
    assert!(located >= from_holders);
    assert_eq!(site.origin.count(), OBJECTS, "a join costs the origin nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_fails_mid_body_costs_the_client_nothing() {
    let site = site(8).await;
    let client = client();
    // Object 7 is one of the larger ones (200 KB): the owner streams it on to the others.
    let (_, others) = owner_of(&site, 7).await;
    let path = "/obj/7";
    let at = site.members[others[0]].listen;
    let purged = send(&client, "PURGE", &format!("http://{at}{path}"), &[("host", HOST)]).await;
    assert_eq!(purged.status, http::StatusCode::OK);

    // The owner's next fetch dies halfway through the body (as when the owner itself dies mid-transfer:
    // the member asking it sees its body cut); the member goes to the origin and the client never knows.
    let before = site.origin.count_for(path);
    let mut resource = Resource::ok(body_of(7), &[("cache-control", "max-age=3600")]);
    resource.cut_first = before + 1;
    site.origin.set(path, resource);
    let member = &site.members[others[1]];
    let body = get(&client, member.listen, 7).await.expect("the whole object");
    assert!(body == body_of(7), "{} bytes, not the object", body.len());
    assert_eq!(
        metric(member.admin, "tern_community_peer_requests_total{outcome=\"body-cut\"}").await,
        1.0,
        "the cut body was seen and counted"
    );
    assert_eq!(
        site.origin.count_for(path),
        before + 2,
        "one request from the owner, cut, and one from the member that fell back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_at_any_member_reaches_the_owner_and_a_prefetch_costs_one_origin_request() {
    let site = site(4).await;
    let client = client();
    let (owner, others) = owner_of(&site, 1).await;
    assert_eq!(others.len(), 3);
    assert_eq!(site.origin.count_for("/obj/1"), 1);

    // The origin changes; a purge at a member that does not hold the object reaches the owner.
    let changed = Bytes::from_static(b"version two");
    site.origin.set(
        "/obj/1",
        Resource::ok(changed.clone(), &[("cache-control", "max-age=3600")]),
    );
    let at = site.members[others[0]].listen;
    let purged = send(&client, "PURGE", &format!("http://{at}/obj/1"), &[("host", HOST)]).await;
    assert_eq!(purged.status, http::StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_slice(&purged.body).expect("purge answer");
    assert_eq!(answer["community"]["relayed"], 3, "{answer}");
    for member in &site.members {
        let body = get(&client, member.listen, 1).await.expect("after the purge");
        assert!(body == changed, "{} still serves the old copy", member.listen);
    }
    assert_eq!(site.origin.count_for("/obj/1"), 2);

    // A purge relay without a valid token (forged, or a token copied from another request) is refused
    // and purges nothing.
    let owner_peer = site.members[owner].peer;
    let body = br#"{"urls":["http://site.test/obj/1"]}"#.to_vec();
    // A well-formed token made for another request (a GET of the same path) does not authorise a purge.
    let wrong_mac = format!("v2 {} {}", unix_ms(), "ab".repeat(32));
    for token in ["0".repeat(64), wrong_mac] {
        let request = Request::post(format!("http://{owner_peer}{}", tern_edge::community::PEER_PURGE_PATH))
            .header("tern-community-token", token)
            .body(Full::new(Bytes::from(body.clone())))
            .expect("request");
        let refused = client.request(request).await.expect("answer");
        assert_eq!(refused.status(), http::StatusCode::FORBIDDEN);
    }
    let still = get(&client, site.members[owner].listen, 1).await.expect("still cached");
    assert!(still == changed);
    assert_eq!(
        site.origin.count_for("/obj/1"),
        2,
        "a forged purge relay purged nothing"
    );

    // The sync service's order: purge, then prefetch at every edge. The owner fetches once; the others
    // pass the prefetch to it and take no body.
    let third = Bytes::from_static(b"version three");
    site.origin.set(
        "/obj/1",
        Resource::ok(third.clone(), &[("cache-control", "max-age=3600")]),
    );
    let purged = send(&client, "PURGE", &format!("http://{at}/obj/1"), &[("host", HOST)]).await;
    assert_eq!(purged.status, http::StatusCode::OK);
    for &other in &others {
        let edge = site.members[other].listen;
        let prefetched = send(
            &client,
            "GET",
            &format!("http://{edge}/obj/1"),
            &[("host", HOST), ("tern-prefetch", "1")],
        )
        .await;
        assert_eq!(
            prefetched.status,
            http::StatusCode::NO_CONTENT,
            "{edge} passes the prefetch to the owner"
        );
        assert!(prefetched.body.is_empty());
    }
    assert_eq!(site.origin.count_for("/obj/1"), 3, "one origin request for the change");
    let owner_admin = site.members[owner].admin;
    assert_eq!(
        metric(
            owner_admin,
            "tern_community_peer_requests_total{outcome=\"prefetched\"}"
        )
        .await,
        3.0
    );
    let got = send(
        &client,
        "GET",
        &format!("http://{}/obj/1", site.members[owner].listen),
        &[("host", HOST)],
    )
    .await;
    assert!(got.body == third);
    assert_eq!(
        site.origin.count_for("/obj/1"),
        3,
        "the owner serves the prefetched copy"
    );
    let relayed = metric(
        site.members[owner].admin,
        "tern_community_purge_relays_total{outcome=\"received\"}",
    )
    .await;
    assert_eq!(relayed, 2.0, "both purges reached the owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_hot_stores_a_copy_at_a_non_owner_on_the_second_request() {
    let site = site_with(4, &[200, 100], &["--community-keep", "hot"]).await;
    let client = client();
    let (owner, others) = owner_of(&site, 2).await;
    let other = site.members[others[0]].listen;
    let cache_status = |got: &tern_edge::testsuite::Got| -> Vec<String> {
        got.headers
            .get_all("cache-status")
            .iter()
            .filter_map(|value| value.to_str().ok().map(str::to_string))
            .collect()
    };
    // `owner_of` asked once at each edge: the non-owner passed its first answer on. The second request
    // within the window is kept, and the third is a local hit.
    let second = send(&client, "GET", &format!("http://{other}/obj/2"), &[("host", HOST)]).await;
    assert!(second.body == body_of(2));
    assert!(
        !cache_status(&second)
            .iter()
            .any(|status| status.contains("community-owner")),
        "the second request is stored: {:?}",
        cache_status(&second)
    );
    let third = send(&client, "GET", &format!("http://{other}/obj/2"), &[("host", HOST)]).await;
    assert!(third.body == body_of(2));
    let last = cache_status(&third).last().cloned().unwrap_or_default();
    assert!(last.contains("hit"), "a local hit: {last}");
    assert_eq!(site.origin.count_for("/obj/2"), 1, "the owner {owner} fetched it once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_was_away_during_a_purge_validates_what_it_kept() {
    const OBJECTS: usize = 40;
    let mut site = site_of(OBJECTS, &[200, 100, 100]).await;
    let disk = tempfile::tempdir().expect("cache dir");
    let cache_dir = disk.path().to_str().expect("utf-8 path").to_string();
    let returning = Member::start_with(
        site.origin.addr,
        site.registry,
        &site.key,
        50,
        &["--cache-dir", &cache_dir],
    );
    site.members.push(returning);
    site.converged(Duration::from_secs(10), None).await;
    // An object the fourth edge owns, stored on its disk.
    let mut owned = None;
    for index in 0..OBJECTS {
        if owner_of(&site, index).await.0 == 3 {
            owned = Some(index);
            break;
        }
    }
    let index = owned.expect("the fourth edge owns some of 40 objects");
    let path = format!("/obj/{index}");

    // It goes away; meanwhile the object changes and is purged at another member.
    site.members[3].kill();
    site.converged(Duration::from_secs(10), None).await;
    let changed = Bytes::from_static(b"changed while the owner was away");
    site.origin.set(
        &path,
        Resource::ok(changed.clone(), &[("cache-control", "max-age=3600")]),
    );
    let client = client();
    let at = site.members[0].listen;
    let purged = send(&client, "PURGE", &format!("http://{at}{path}"), &[("host", HOST)]).await;
    assert_eq!(purged.status, http::StatusCode::OK);

    // It comes back with its disk cache: nobody is served the copy it kept.
    site.members[3].restart();
    site.converged(Duration::from_secs(10), None).await;
    for member in &site.members {
        let body = get(&client, member.listen, index).await.expect("after the return");
        assert!(
            body == changed,
            "{} serves the copy the returning owner kept",
            member.listen
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_the_origin_still_sees_each_object_once() {
    const OBJECTS: usize = 30;
    let site = site_with(OBJECTS, &[200, 100, 100], &["--replicas", "2"]).await;
    let client = client();
    let mut requests = tokio::task::JoinSet::new();
    for index in 0..OBJECTS {
        for member in &site.members {
            let (client, edge) = (client.clone(), member.listen);
            requests.spawn(async move { (index, edge, get(&client, edge, index).await) });
        }
    }
    while let Some(done) = requests.join_next().await {
        let (index, edge, result) = done.expect("request task");
        let body = result.unwrap_or_else(|error| panic!("/obj/{index} from {edge}: {error}"));
        assert!(
            body == body_of(index),
            "/obj/{index} from {edge}: not the origin's bytes"
        );
    }
    let twice: Vec<(usize, usize)> = (0..OBJECTS)
        .map(|index| (index, site.origin.count_for(&format!("/obj/{index}"))))
        .filter(|(_, count)| *count != 1)
        .collect();
    assert!(twice.is_empty(), "objects the origin saw other than once: {twice:?}");
    // Both owners hold a copy: one edge in three passes each object on unstored.
    let (_, passed_on) = owner_of(&site, 3).await;
    assert_eq!(passed_on.len(), 1, "two owners store the object");

    // A change, purged and prefetched at every edge as the sync service does: one origin request, both
    // owners store the new copy (the second takes it from the first), the non-owner takes no body.
    let changed = Bytes::from_static(b"three, changed");
    site.origin.set(
        "/obj/3",
        Resource::ok(changed.clone(), &[("cache-control", "max-age=3600")]),
    );
    let at = site.members[0].listen;
    let purged = send(&client, "PURGE", &format!("http://{at}/obj/3"), &[("host", HOST)]).await;
    assert_eq!(purged.status, http::StatusCode::OK);
    for member in &site.members {
        let edge = member.listen;
        let prefetched = send(
            &client,
            "GET",
            &format!("http://{edge}/obj/3"),
            &[("host", HOST), ("tern-prefetch", "1")],
        )
        .await;
        assert!(prefetched.status.is_success(), "{edge}: {}", prefetched.status);
    }
    assert_eq!(site.origin.count_for("/obj/3"), 2, "one origin request for the change");
    for member in &site.members {
        let body = get(&client, member.listen, 3).await.expect("after the change");
        assert!(body == changed, "{} serves the new copy", member.listen);
    }
    assert_eq!(
        site.origin.count_for("/obj/3"),
        2,
        "the owners serve their prefetched copies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_refuses_the_token_costs_the_client_nothing() {
    const OBJECTS: usize = 40;
    let mut site = site(OBJECTS).await;
    // Member 3 restarts at once with another cluster key (same addresses): until the master drops it,
    // it is still listed as an owner, and it refuses every peer's token.
    let other_key = site._dir.path().join("other.key");
    tern_wire::SecretKey::write_new(&other_key).expect("key");
    let member = &mut site.members[3];
    member.kill();
    let key_arg = member
        .args
        .iter()
        .position(|arg| arg == "--cluster-key")
        .expect("the key argument")
        + 1;
    member.args[key_arg] = other_key.to_str().expect("utf-8 path").to_string();
    member.restart();
    let client = client();
    let asked = site.members[1].listen;
    for index in 0..OBJECTS {
        let body = get(&client, asked, index)
            .await
            .unwrap_or_else(|error| panic!("/obj/{index}: a peer's refusal reached the client: {error}"));
        assert!(body == body_of(index), "/obj/{index}: not the origin's bytes");
    }
    let refused = metric(
        site.members[1].admin,
        "tern_community_peer_requests_total{outcome=\"refused-by-peer\"}",
    )
    .await;
    println!("peers that refused the token were skipped {refused} times");
}

/// Sends `signal` (`-STOP`, `-CONT`) to a member's process.
fn signal(member: &Member, signal: &str) {
    let pid = member.process.as_ref().expect("running").0.id().to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_owner_is_given_up_once_the_master_drops_it() {
    let site = site(20).await;
    let (master, _) = site.converged(Duration::from_secs(15), None).await;
    let mut found = None;
    for index in 0..20 {
        let (owner, others) = owner_of(&site, index).await;
        if site.members[owner].peer.to_string() != master {
            found = Some((index, owner, others));
            break;
        }
    }
    let (index, owner, others) = found.expect("an object owned by a member that is not the master");
    // The owner hangs (a paused VM, a long stall): alive to TCP, silent to everyone.
    signal(&site.members[owner], "-STOP");
    let started = Instant::now();
    let body = get(&client(), site.members[others[0]].listen, index).await;
    let waited = started.elapsed();
    signal(&site.members[owner], "-CONT");
    let body = body.unwrap_or_else(|error| panic!("/obj/{index}: {error}"));
    assert!(body == body_of(index), "/obj/{index}: not the origin's bytes");
    // Given up when the master dropped it (about 2 s), not after the 35 s first-byte timeout.
    assert!(
        waited < Duration::from_secs(10),
        "the client waited {waited:?} for a hung owner"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_token_for_one_host_fetches_nothing_for_another() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let site = site(4).await;
    let key = tern_wire::SecretKey::load(&site.key).expect("cluster key");
    let auth = tern_edge::community::PeerAuth::new(&key, "site", "an-onlooker");
    let now_ms = u64::try_from(unix_ms()).expect("ms");
    let peer = site.members[1].peer;
    // A token seen on the wire for site.test, replayed in an absolute-form request for another host
    // (which the edge would key and fetch on), and as an ordinary request with another Host.
    let attempts = [
        ("GET http://evil.test/obj/3 HTTP/1.1", HOST),
        ("GET /obj/3 HTTP/1.1", "evil.test"),
    ];
    for (line, host) in attempts {
        let token = auth.sign("GET", HOST, "/obj/3", b"", now_ms);
        let mut stream = tokio::net::TcpStream::connect(peer).await.expect("connect");
        let request = format!("{line}\r\nhost: {host}\r\ntern-community-token: {token}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 403"), "{line} (host {host}): {answer}");
    }
    assert_eq!(
        site.origin.count_for("/obj/3"),
        0,
        "nothing was fetched for another host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_origin_fails_is_answered_without_asking_the_origin_again() {
    let site = site(2).await;
    let client = client();
    // The origin announces more than it sends: every fetch of it fails.
    let mut broken = Resource::ok("part", &[("cache-control", "max-age=3600")]);
    broken.truncate_to = Some(100);
    site.origin.set("/broken", broken);
    let mut relayed = 0.0;
    for (at, member) in site.members.iter().enumerate() {
        let got = send(
            &client,
            "GET",
            &format!("http://{}/broken", member.listen),
            &[("host", HOST)],
        )
        .await;
        assert_eq!(got.status, http::StatusCode::BAD_GATEWAY, "member {at}");
        assert!(
            got.headers.get("tern-community-origin-failed").is_none(),
            "the peers' field stays between them"
        );
        relayed += metric(
            member.admin,
            "tern_community_peer_requests_total{outcome=\"owner-origin-failed\"}",
        )
        .await;
    }
    assert_eq!(
        site.origin.count_for("/broken"),
        site.members.len(),
        "one origin request per client request: the owner's; the member that asked it does not try again"
    );
    assert_eq!(relayed, (site.members.len() - 1) as f64);
}
