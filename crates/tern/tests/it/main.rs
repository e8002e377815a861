//! Tests of the `tern` binary as an operator runs it: real processes on loopback.

mod cli;
mod community;
mod delta;
mod fresh;
mod mover;
mod serve;
mod streaming;
mod sync;
mod ui;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

/// A free loopback port (bound and released; good enough for tests).
/// A port for a server started later ([`tern_http::testsuite::free_addr`]: outside the ephemeral range).
pub fn free_addr() -> std::net::SocketAddr {
    tern_http::testsuite::free_addr()
}

/// A child process that is killed when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tern ARGS` and waits until `addr` accepts connections.
pub fn spawn(args: &[&str], addr: SocketAddr) -> Running {
    let child = tern()
        .args(args)
        .env("TERN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tern");
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = running.0.try_wait() {
            panic!("tern {args:?} exited early with {status}");
        }
        assert!(Instant::now() < deadline, "tern {args:?} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

/// Writes `content` to `root/path`, creating directories.
pub fn write(root: &Path, path: &str, content: &[u8]) {
    let target = root.join(path);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(target, content).expect("write");
}

/// Starts `tern serve DIR` on a free port with `extra` flags; returns it and its address.
pub fn spawn_origin(site: &Path, extra: &[&str]) -> (Running, SocketAddr) {
    let addr = free_addr();
    let listen = addr.to_string();
    let mut args = vec!["serve", site.to_str().expect("utf-8 path"), "--listen", &listen];
    args.extend_from_slice(extra);
    (spawn(&args, addr), addr)
}

/// Starts `tern edge` in front of `origin` on a free port with `extra` flags; returns it and its address.
pub fn spawn_edge(origin: SocketAddr, extra: &[&str]) -> (Running, SocketAddr) {
    let addr = free_addr();
    let listen = addr.to_string();
    let origin_url = format!("http://{origin}");
    let mut args = vec!["edge", "--listen", &listen, "--origin", &origin_url];
    args.extend_from_slice(extra);
    (spawn(&args, addr), addr)
}

/// Starts `tern node NAME` for the mover at `mover_url` on a free port, its sites under `root`, trusting
/// the mover's public key at `key`, with `extra` flags; returns it and its address.
pub fn spawn_node(mover_url: &str, root: &str, name: &str, key: &str, extra: &[&str]) -> (Running, SocketAddr) {
    spawn_node_at(free_addr(), mover_url, root, name, key, extra)
}

/// [`spawn_node`] on a given address (a node restarted where it was).
pub fn spawn_node_at(
    addr: SocketAddr,
    mover_url: &str,
    root: &str,
    name: &str,
    key: &str,
    extra: &[&str],
) -> (Running, SocketAddr) {
    let listen = addr.to_string();
    let mut args = vec![
        "node", "--mover", mover_url, "--root", root, "--name", name, "--key", key, "--listen", &listen,
    ];
    args.extend_from_slice(extra);
    (spawn(&args, addr), addr)
}
