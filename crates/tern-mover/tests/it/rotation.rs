//! The load-balancer interface against a stand-in for HAProxy's runtime API (one command per connection,
//! an empty answer when accepted, the reason when not): a node that misses a publish is taken out of the
//! rotation, and put back once it has been brought up to date without anyone acting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_mover::rotation::{LoadBalancer, RuntimeApi};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::jobs::{Fleet, tree, write_site};

/// A runtime API that records the commands it takes; servers other than `tern/node*` are refused as
/// HAProxy refuses them.
async fn fake_haproxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let commands = Arc::new(Mutex::new(Vec::new()));
    let seen = commands.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while stream.read(&mut byte).await.unwrap_or(0) == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            let command = String::from_utf8_lossy(&line).to_string();
            let answer = if command.starts_with("set server tern/node") {
                "\n"
            } else {
                "No such server.\n"
            };
            seen.lock().expect("commands").push(command);
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (address, commands)
}

/// The last command sent for `node`.
fn last_for(commands: &Mutex<Vec<String>>, node: &str) -> Option<String> {
    let needle = format!("tern/{node} ");
    commands
        .lock()
        .expect("commands")
        .iter()
        .rev()
        .find(|c| c.contains(&needle))
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_misses_a_publish_leaves_the_rotation_until_it_is_caught_up() {
    let (address, commands) = fake_haproxy().await;
    let balancer = LoadBalancer {
        api: RuntimeApi::parse(&address),
        backend: "tern".into(),
    };
    // A quorum of one: the publish commits on the node that is up.
    let mut fleet = Fleet::with_load_balancer(2, Some(1), Some(balancer)).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 20, "one");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");
    for node in ["node0", "node1"] {
        assert_eq!(
            last_for(&commands, node).as_deref(),
            Some(format!("set server tern/{node} state ready").as_str()),
            "{node} serves after the first publish"
        );
    }

    // node1 is down for version 2: it is taken out, and the history says why.
    fleet.nodes[1].take().expect("node1").shutdown().await;
    write_site(&staging, 20, "two");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "failed");
    assert_eq!(
        last_for(&commands, "node1").as_deref(),
        Some("set server tern/node1 state maint")
    );
    assert_eq!(
        last_for(&commands, "node0").as_deref(),
        Some("set server tern/node0 state ready")
    );
    let history = fleet.api("GET", "/api/history", None).await;
    assert!(
        history
            .to_string()
            .contains("node1 taken out of the load balancer's rotation"),
        "{history}"
    );

    // Back: the catch-up commits and node1 serves again.
    let back = fleet.start_node(1).await;
    fleet.nodes[1] = Some(back);
    let mut back_in = false;
    for _ in 0..500 {
        if last_for(&commands, "node1").as_deref() == Some("set server tern/node1 state ready") {
            back_in = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back_in, "node1 was put back: {:?}", commands.lock().expect("commands"));
    assert_eq!(fleet.live(1), tree(&staging), "and it holds the current site");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_publish_tells_the_load_balancer_nothing() {
    let (address, commands) = fake_haproxy().await;
    let balancer = LoadBalancer {
        api: RuntimeApi::parse(&address),
        backend: "tern".into(),
    };
    let fleet = Fleet::with_load_balancer(2, None, Some(balancer)).await;
    let staging = fleet.area.path().join("staging");
    write_site(&staging, 20, "one");
    assert_eq!(fleet.run("publish", Some(&staging)).await["state"], "committed");
    let sent = commands.lock().expect("commands").len();
    assert!(sent >= 2, "the first publish put both nodes in the rotation");
    for attempt in 1..=2 {
        let job = fleet.run("publish", Some(&staging)).await;
        assert_eq!(job["state"], "committed", "unchanged publish {attempt}: {job}");
        assert_eq!(
            commands.lock().expect("commands").len(),
            sent,
            "no load-balancer command for unchanged publish {attempt}"
        );
    }
    for index in 0..2 {
        assert_eq!(fleet.live(index), tree(&staging));
    }
}
