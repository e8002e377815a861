//! The edge's own HTTP/1.1 client on the origin link, against origins that write raw bytes: chunked
//! bodies, interim responses, HEAD, keep-alive reuse, and reuse after the origin closed a connection, cut
//! a body off or sent a malformed response.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tern_edge::testsuite::send;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Setup;

/// What a scripted origin does with one request.
#[derive(Clone, Copy)]
enum Answer {
    /// Writes these bytes and keeps the connection for the next request.
    KeepOpen(&'static [u8]),
    /// Writes these bytes and closes the connection.
    Close(&'static [u8]),
}

/// An origin that answers its n-th request (over all connections) with `script[n]` (the last one
/// repeated), counting connections and requests.
struct ScriptedOrigin {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    /// The request heads received, in order.
    heads: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ScriptedOrigin {
    async fn start(script: Vec<Answer>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (counted, served, seen) = (connections.clone(), requests.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let (script, served, seen) = (script.clone(), served.clone(), seen.clone());
                tokio::spawn(serve(stream, script, served, seen));
            }
        });
        ScriptedOrigin {
            addr,
            connections,
            requests,
            heads,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut stream: TcpStream,
    script: Arc<Vec<Answer>>,
    served: Arc<AtomicUsize>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut buffer = Vec::new();
    loop {
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head: Vec<u8> = buffer.drain(..end).collect();
        seen.lock()
            .expect("lock")
            .push(String::from_utf8_lossy(&head).to_string());
        let n = served.fetch_add(1, Ordering::SeqCst);
        let answer = script[n.min(script.len() - 1)];
        match answer {
            Answer::KeepOpen(bytes) => {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Answer::Close(bytes) => {
                let _ = stream.write_all(bytes).await;
                return;
            }
        }
    }
}

async fn edge_for(origin: &ScriptedOrigin) -> Setup {
    let addr = origin.addr;
    Setup::with(move |config| {
        config.origin = format!("http://{addr}");
        config.upstream.idle_body_timeout_ms = 500;
    })
    .await
}

const OK_5: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncache-control: no-store\r\n\r\nhello";

#[tokio::test]
async fn misses_reuse_one_connection_and_send_one_request_head() {
    let origin = ScriptedOrigin::start(vec![Answer::KeepOpen(OK_5)]).await;
    let setup = edge_for(&origin).await;
    for n in 0..5 {
        let got = setup.get(&format!("/k{n}")).await;
        assert_eq!(got.status, 200);
        assert_eq!(&got.body[..], b"hello");
    }
    assert_eq!(origin.requests(), 5);
    assert_eq!(
        origin.connections(),
        1,
        "one keep-alive connection for sequential misses"
    );
    let heads = origin.heads.lock().expect("lock").clone();
    assert!(heads[0].starts_with("GET /k0 HTTP/1.1\r\n"), "{}", heads[0]);
    assert!(heads[0].to_ascii_lowercase().contains("\r\nhost: "), "{}", heads[0]);
    assert!(heads[0].to_ascii_lowercase().contains("\r\nvia: 1.1 "), "{}", heads[0]);
}

#[tokio::test]
async fn chunked_bodies_with_extensions_and_trailers_are_stored() {
    let origin = ScriptedOrigin::start(vec![Answer::KeepOpen(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncache-control: max-age=60\r\n\r\n\
          5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n",
    )])
    .await;
    let setup = edge_for(&origin).await;
    let first = setup.get("/chunked").await;
    assert_eq!(first.status, 200);
    assert_eq!(&first.body[..], b"hello, world");
    assert_eq!(first.header("x-trailer"), "", "trailers are not fields of the response");
    let second = setup.get("/chunked").await;
    assert_eq!(&second.body[..], b"hello, world");
    assert!(
        second.header("cache-status").contains("hit"),
        "{}",
        second.header("cache-status")
    );
    assert_eq!(origin.requests(), 1);
    let third = setup.get("/other").await;
    assert_eq!(&third.body[..], b"hello, world");
    assert_eq!(origin.connections(), 1, "the connection is reused after a chunked body");
}

#[tokio::test]
async fn interim_responses_are_skipped_on_a_kept_connection() {
    let origin = ScriptedOrigin::start(vec![Answer::KeepOpen(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncache-control: no-store\r\n\r\nfinal",
    )])
    .await;
    let setup = edge_for(&origin).await;
    for _ in 0..2 {
        let got = setup.get("/hinted").await;
        assert_eq!(got.status, 200);
        assert_eq!(&got.body[..], b"final");
        assert_eq!(got.header("link"), "");
    }
    assert_eq!(origin.connections(), 1);
}

#[tokio::test]
async fn a_head_response_has_no_body_and_frees_its_connection() {
    // The answer to HEAD declares a length and sends no body; the next request reads its own response.
    let origin = ScriptedOrigin::start(vec![
        Answer::KeepOpen(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncache-control: no-store\r\n\r\n"),
        Answer::KeepOpen(OK_5),
    ])
    .await;
    let setup = edge_for(&origin).await;
    let head = send(&setup.client, "HEAD", &setup.url("/h"), &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let got = setup.get("/g").await;
    assert_eq!(&got.body[..], b"hello");
    assert_eq!(origin.connections(), 1);
    let heads = origin.heads.lock().expect("lock").clone();
    assert!(heads[0].starts_with("HEAD /h "), "{}", heads[0]);
}

#[tokio::test]
async fn a_connection_the_origin_closed_while_idle_is_replaced_without_an_error() {
    // The origin answers and closes without saying so (`Connection: close` missing): the pooled connection
    // is dead, and the next request must go out again on a new one.
    let origin = ScriptedOrigin::start(vec![Answer::Close(OK_5)]).await;
    let setup = edge_for(&origin).await;
    for n in 0..3 {
        let got = setup.get(&format!("/c{n}")).await;
        assert_eq!(got.status, 200, "request {n}: {}", String::from_utf8_lossy(&got.body));
        assert_eq!(&got.body[..], b"hello");
    }
    assert_eq!(origin.requests(), 3, "each request answered once");
    assert_eq!(origin.connections(), 3);
}

#[tokio::test]
async fn after_a_body_cut_off_the_next_request_gets_a_new_connection() {
    let origin = ScriptedOrigin::start(vec![
        Answer::Close(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncache-control: max-age=60\r\n\r\nonly part"),
        Answer::KeepOpen(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncache-control: max-age=60\r\n\r\nwhole"),
    ])
    .await;
    let setup = edge_for(&origin).await;
    let cut = setup.get("/cut").await;
    assert_eq!(cut.status, 502, "a small body is read whole: the cut is a 502");
    assert_eq!(setup.edge.role.store().stats().objects, 0, "nothing stored");
    let got = setup.get("/cut").await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], b"whole");
    assert_eq!(origin.connections(), 2);
}

#[tokio::test]
async fn a_malformed_response_is_a_502_that_says_why_and_the_link_recovers() {
    let origin = ScriptedOrigin::start(vec![
        Answer::KeepOpen(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!"),
        Answer::KeepOpen(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
        Answer::KeepOpen(b"NOT HTTP AT ALL\r\n\r\n"),
        Answer::KeepOpen(OK_5),
    ])
    .await;
    let setup = edge_for(&origin).await;
    let conflicting = setup.get("/a").await;
    assert_eq!(conflicting.status, 502);
    assert!(
        String::from_utf8_lossy(&conflicting.body).contains("Content-Length"),
        "{}",
        String::from_utf8_lossy(&conflicting.body)
    );
    // A chunked body streams: its head may be on the way before the bad chunk is read, so the client
    // sees a 502 or a body that fails, never a complete one.
    let request = http::Request::get(setup.url("/b"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    if let Ok(response) = setup.client.request(request).await
        && response.status() != 502
    {
        assert!(
            http_body_util::BodyExt::collect(response.into_body()).await.is_err(),
            "the body fails"
        );
    }
    let garbage = setup.get("/c").await;
    assert_eq!(garbage.status, 502);
    assert!(
        String::from_utf8_lossy(&garbage.body).contains("malformed response head"),
        "{}",
        String::from_utf8_lossy(&garbage.body)
    );
    let got = setup.get("/d").await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], b"hello");
    assert_eq!(origin.connections(), 4, "no connection is reused after an error on it");
}

#[tokio::test]
async fn a_transfer_coding_the_client_does_not_decode_goes_through_hyper() {
    // `gzip` as a transfer coding (not a content coding): hyper's client reads it until the close.
    let origin = ScriptedOrigin::start(vec![Answer::Close(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncache-control: no-store\r\n\r\nraw",
    )])
    .await;
    let setup = edge_for(&origin).await;
    let got = setup.get("/gz").await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(
        origin.requests(),
        2,
        "once by the edge's client, once more through hyper's"
    );
    let again = setup.get("/gz2").await;
    assert_eq!(again.status, 200);
    assert_eq!(origin.requests(), 3, "from then on, only through hyper's");
}

#[tokio::test]
async fn a_stalled_head_is_a_504() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                drop(stream);
            });
        }
    });
    let setup = Setup::with(move |config| {
        config.origin = format!("http://{addr}");
        config.upstream.first_byte_timeout_ms = 200;
    })
    .await;
    let got = setup.get("/slow").await;
    assert_eq!(got.status, 504);
}
