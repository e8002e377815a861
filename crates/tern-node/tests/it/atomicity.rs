//! Readers hammering a node while it switches versions 50 times: a reader that resolves `live` once (as one
//! request does) always finds one whole version, and `tern serve` on the `live` link never answers with a
//! missing or torn file.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ed25519_dalek::SigningKey;
use tern_edge::testsuite::{client, send};
use tern_node::Interpreter;
use tern_wire::assignment::{AssignmentKind, Builder, Command, Limits, decode};

const FILES: [&str; 3] = ["index.html", "style.css", "data/app.js"];

fn publish(interpreter: &Interpreter, version: u64) {
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut content = Builder::new(&format!("v{version}"), AssignmentKind::Publish, "www", version, None, 0);
    for file in FILES {
        // Sizes differ between versions, so a torn read would show.
        let body = format!(
            "version {version} of {file} {}",
            "x".repeat((version as usize * 37) % 500)
        );
        content
            .create(file, None, body.as_bytes(), version.is_multiple_of(2))
            .expect("create");
    }
    let bytes = content.finish(&key, None).expect("finish");
    interpreter
        .apply(&decode(&bytes, &key.verifying_key(), None, &Limits::default()).expect("verify"))
        .expect("content");
    let mut commit = Builder::new(&format!("c{version}"), AssignmentKind::Publish, "www", version, None, 0);
    commit.command(Command::Commit);
    let bytes = commit.finish(&key, None).expect("finish");
    interpreter
        .apply(&decode(&bytes, &key.verifying_key(), None, &Limits::default()).expect("verify"))
        .expect("commit");
}

fn version_of(text: &str) -> Option<u64> {
    text.strip_prefix("version ")?.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_two_versions_during_fifty_publishes() {
    let root = tempfile::tempdir().expect("tempdir");
    let interpreter = Arc::new(Interpreter::new(root.path()));
    publish(&interpreter, 1);
    let live = root.path().join("www/live");
    let origin = tern_origin::start(tern_origin::OriginConfig {
        root: live.clone(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..tern_origin::OriginConfig::default()
    })
    .await
    .expect("tern serve on the live link");

    let done = Arc::new(AtomicBool::new(false));
    let read_sets = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (done, read_sets, live) = (done.clone(), read_sets.clone(), live.clone());
        readers.push(std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                // One resolution of `live`, then the whole read set from that tree.
                let tree = std::fs::canonicalize(&live).expect("live always resolves");
                let versions: Vec<Option<u64>> = FILES
                    .iter()
                    .map(|file| {
                        std::fs::read_to_string(tree.join(file))
                            .ok()
                            .as_deref()
                            .and_then(version_of)
                    })
                    .collect();
                assert!(
                    versions.iter().all(Option::is_some),
                    "a file was missing in {tree:?}: {versions:?}"
                );
                assert!(
                    versions.windows(2).all(|w| w[0] == w[1]),
                    "two versions in one read set: {versions:?}"
                );
                read_sets.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let http_reads = Arc::new(AtomicU64::new(0));
    let mut fetchers = Vec::new();
    for _ in 0..2 {
        let (done, http_reads) = (done.clone(), http_reads.clone());
        let url = format!("http://{}/index.html", origin.listen);
        fetchers.push(tokio::spawn(async move {
            let client = client();
            while !done.load(Ordering::Relaxed) {
                let got = send(&client, "GET", &url, &[]).await;
                assert_eq!(got.status, 200, "the site is never missing during a switch");
                let text = String::from_utf8_lossy(&got.body).to_string();
                let version = version_of(&text).expect("a whole file of one version");
                let expected = format!(
                    "version {version} of index.html {}",
                    "x".repeat((version as usize * 37) % 500)
                );
                assert_eq!(text, expected, "a complete file");
                http_reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let writer = {
        let interpreter = interpreter.clone();
        tokio::task::spawn_blocking(move || {
            for version in 2..=51 {
                publish(&interpreter, version);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    writer.await.expect("50 publishes");
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().expect("reader saw only whole versions");
    }
    for fetcher in fetchers {
        fetcher.await.expect("http reader saw only whole files");
    }
    let final_text = std::fs::read_to_string(live.join("index.html")).expect("read");
    assert_eq!(version_of(&final_text), Some(51));
    println!(
        "{} read sets and {} HTTP reads during 50 publishes",
        read_sets.load(Ordering::Relaxed),
        http_reads.load(Ordering::Relaxed)
    );
    assert!(
        read_sets.load(Ordering::Relaxed) > 50 && http_reads.load(Ordering::Relaxed) > 50,
        "the readers really ran"
    );
}
