//! Sockets: binding listeners, accepting, and connecting upstream, over TCP
//! or unix domain sockets alike.
//!
//! This module owns the byte streams and nothing about what flows in them.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use intransit_config::Endpoint;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// Anything the proxy can read and write bytes on.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> AsyncStream for T {}

/// A TCP or unix stream behind one type.
pub type BoxStream = Box<dyn AsyncStream>;

/// Where a connection came from, for logs.
#[derive(Debug, Clone)]
pub enum PeerAddr {
    /// A TCP peer.
    Tcp(std::net::SocketAddr),
    /// A unix socket peer (usually unnamed).
    Unix,
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => a.fmt(f),
            PeerAddr::Unix => f.write_str("unix"),
        }
    }
}

/// A bound listening socket.
#[derive(Debug)]
pub enum BoundListener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix domain socket, with its path so it can be removed on exit.
    Unix(UnixListener, PathBuf),
}

impl BoundListener {
    /// Binds the endpoint. A stale unix socket file is replaced only if
    /// nothing answers on it.
    pub async fn bind(endpoint: &Endpoint) -> io::Result<Self> {
        match endpoint {
            Endpoint::Tcp { .. } => {
                let addr = endpoint.bind_addr().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "listen needs an IP address")
                })?;
                Ok(BoundListener::Tcp(TcpListener::bind(addr).await?))
            }
            Endpoint::Unix(path) => {
                if path.exists() {
                    if UnixStream::connect(path).await.is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("{} is in use by another process", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                Ok(BoundListener::Unix(UnixListener::bind(path)?, path.clone()))
            }
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        match self {
            BoundListener::Tcp(l) => {
                let a = l.local_addr()?;
                Ok(Endpoint::Tcp {
                    host: a.ip().to_string(),
                    port: a.port(),
                })
            }
            BoundListener::Unix(_, path) => Ok(Endpoint::Unix(path.clone())),
        }
    }

    /// Accepts one connection, with Nagle disabled on TCP. The socket
    /// comes back unregistered ([`Accepted`]), for the worker that will
    /// serve it.
    pub async fn accept(&self) -> io::Result<(Accepted, PeerAddr)> {
        match self {
            BoundListener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                // Database protocols are request/response: waiting to
                // coalesce small writes only adds latency.
                s.set_nodelay(true)?;
                Ok((Accepted::Tcp(s.into_std()?), PeerAddr::Tcp(a)))
            }
            BoundListener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                Ok((Accepted::Unix(s.into_std()?), PeerAddr::Unix))
            }
        }
    }
}

/// An accepted connection registered with no runtime's reactor yet, so
/// that it can move to the worker thread that serves it (see `workers`).
/// Non-blocking already.
#[derive(Debug)]
pub enum Accepted {
    /// TCP.
    Tcp(std::net::TcpStream),
    /// A unix domain socket.
    Unix(std::os::unix::net::UnixStream),
}

impl Accepted {
    /// Registers the socket with the reactor of the runtime this is
    /// called on.
    pub fn register(self) -> io::Result<BoxStream> {
        Ok(match self {
            Accepted::Tcp(s) => Box::new(TcpStream::from_std(s)?),
            Accepted::Unix(s) => Box::new(UnixStream::from_std(s)?),
        })
    }
}

impl Drop for BoundListener {
    fn drop(&mut self) {
        if let BoundListener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Opens a connection to the upstream, within `timeout`.
pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> io::Result<BoxStream> {
    let attempt = async {
        match endpoint {
            Endpoint::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Ok::<BoxStream, io::Error>(Box::new(s))
            }
            Endpoint::Unix(path) => Ok(Box::new(UnixStream::connect(path).await?) as BoxStream),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no connection within {timeout:?}"),
        )),
    }
}

/// Sends a final message and closes the stream, ignoring errors: the peer
/// is being turned away and may already be gone.
pub(crate) async fn close_with<S: AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) {
    if !message.is_empty() {
        let _ = stream.write_all(message).await;
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// A stream with bytes already read from it put back in front, so a TLS
/// acceptor can see a ClientHello whose first bytes were peeked.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// Wraps `inner` so reads return `prefix` first.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S> fmt::Debug for Rewind<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewind")
            .field("prefix_len", &self.prefix.len())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn rewind_replays_the_prefix_then_reads_the_stream() {
        let (mut far, near) = tokio::io::duplex(64);
        far.write_all(b" world").await.unwrap();
        drop(far);
        let mut s = Rewind::new(Bytes::from_static(b"hello"), near);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn rewind_respects_small_read_buffers() {
        let (_far, near) = tokio::io::duplex(64);
        let mut s = Rewind::new(Bytes::from_static(b"abcdef"), near);
        let mut two = [0u8; 2];
        s.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ab");
        s.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"cd");
    }
}
