//! `TCP_QUICKACK` on client connections (Linux). A server that writes a response in several small writes
//! with Nagle's algorithm on (Python's `http.server`, many frameworks) sends each after the previous one
//! is acknowledged, and on a kept-alive connection the kernel delays that acknowledgement by up to 40 ms:
//! every request then takes 40 ms more. Setting the mode sends a pending acknowledgement at once, and the
//! mode is not permanent, so it is set when a read has to wait (the peer may be holding the rest): a
//! response that arrives whole costs no system call. Measured through the edge: `results/edge/delayed-ack/`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Has the kernel acknowledge what the peer of `stream` sends at once (a no-op off Linux).
pub fn quick_ack(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
    }
}

/// An [`HttpConnector`] whose connections set `TCP_QUICKACK` when a read has to wait ([`quick_ack`]).
#[derive(Clone, Debug)]
pub struct QuickAckConnector(pub HttpConnector);

/// A connection of a [`QuickAckConnector`].
#[derive(Debug)]
pub struct QuickAckStream(TokioIo<TcpStream>);

impl tower_service::Service<http::Uri> for QuickAckConnector {
    type Response = QuickAckStream;
    type Error = crate::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAckStream, crate::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { connecting.await.map(QuickAckStream).map_err(Into::into) })
    }
}

impl hyper::rt::Read for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.0).poll_read(cx, buf);
        if polled.is_pending() {
            quick_ack(self.0.inner());
        }
        polled
    }
}

impl hyper::rt::Write for QuickAckStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

impl Connection for QuickAckStream {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}
