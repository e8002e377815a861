//! Small network probes the lab runs inside hosts (`tern-lab probe ...`): multicast send and receive,
//! a TCP echo server and check, and a throughput sink and blaster. They are plain blocking programs with
//! bounded running times, so a test can run them with `Lab::run` / `Lab::spawn`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Receives datagrams on a multicast group until `timeout`, printing each as `received <text>`.
pub fn multicast_receive(group: SocketAddrV4, timeout: Duration) -> Result<()> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, group.port()))
        .with_context(|| format!("bind port {}", group.port()))?;
    socket
        .join_multicast_v4(group.ip(), &Ipv4Addr::UNSPECIFIED)
        .context("join group")?;
    println!("listening");
    std::io::stdout().flush()?;
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match socket.recv_from(&mut buffer) {
            Ok((len, from)) => {
                println!("received {} from {from}", String::from_utf8_lossy(&buffer[..len]));
                std::io::stdout().flush()?;
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Sends `message` to a multicast group `count` times (TTL 1: the segment only).
pub fn multicast_send(group: SocketAddrV4, message: &str, count: u32) -> Result<()> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    socket.set_multicast_ttl_v4(1)?;
    for _ in 0..count {
        socket.send_to(message.as_bytes(), group).context("send")?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Echoes what each connection sends, for `lifetime`.
pub fn echo_server(port: u16, lifetime: Duration) -> Result<()> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
    listener.set_nonblocking(true)?;
    println!("listening");
    std::io::stdout().flush()?;
    let deadline = Instant::now() + lifetime;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut buffer = [0u8; 256];
                if let Ok(len) = stream.read(&mut buffer) {
                    let _ = stream.write_all(&buffer[..len]);
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Whether an echo server at `addr` answers within `timeout`.
pub fn echo_check(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    if stream.write_all(b"ping").is_err() {
        return false;
    }
    let mut buffer = [0u8; 4];
    stream.read_exact(&mut buffer).is_ok() && &buffer == b"ping"
}

/// Accepts one connection and discards what it sends, for at most `lifetime`.
pub fn sink(port: u16, lifetime: Duration) -> Result<()> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
    println!("listening");
    std::io::stdout().flush()?;
    let (mut stream, _) = listener.accept()?;
    stream.set_read_timeout(Some(lifetime))?;
    let deadline = Instant::now() + lifetime;
    let mut buffer = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Sends as fast as the path allows for `duration` and returns the measured rate in bits per second
/// (counted from the end of the first second, so TCP slow start and the bucket's burst do not count).
pub fn blast(addr: SocketAddr, duration: Duration) -> Result<f64> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    let buffer = vec![0u8; 16 * 1024];
    let start = Instant::now();
    let warmup = Duration::from_secs(1);
    let mut counted = 0u64;
    let mut counting_since = None;
    while start.elapsed() < warmup + duration {
        stream.write_all(&buffer)?;
        if start.elapsed() >= warmup {
            let since = counting_since.get_or_insert_with(Instant::now);
            let _ = since;
            counted += buffer.len() as u64;
        }
    }
    let elapsed = counting_since.map(|s| s.elapsed()).unwrap_or(duration);
    Ok(counted as f64 * 8.0 / elapsed.as_secs_f64())
}
