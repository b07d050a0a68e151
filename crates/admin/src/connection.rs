//! One admin connection, plain or TLS, bounded by time.
//!
//! Two limits, measured on the bytes of the TCP stream (below TLS, so the
//! handshake counts like a request):
//!
//! - *header read timeout*: from the connection's start, and from the first
//!   byte of each later request, the server must have answered within it.
//!   A request sent in pieces, or never sent, ends the connection.
//! - *idle timeout*: no byte moving either way for that long ends the
//!   connection: a kept-alive connection waiting for its next request, or
//!   a client that stopped reading an answer.
//!
//! The admin endpoints are `GET`s with small, quick answers, so "the
//! server has written something" is a faithful sign that a request was
//! read in full.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use intransit_config::AdminLimits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

/// Serves HTTP/1.1 on one accepted connection, over TLS with `tls`, until
/// the client is done or a limit ends it.
pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    limits: AdminLimits,
) {
    let activity = Arc::new(Activity::new(Instant::now()));
    let io = Watched {
        inner: tcp,
        activity: activity.clone(),
    };
    let service = TowerToHyperService::new(router);
    let http = hyper::server::conn::http1::Builder::new();
    let work = async {
        let served = match tls {
            Some(config) => match tokio_rustls::TlsAcceptor::from(config).accept(io).await {
                Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "admin server: TLS handshake refused");
                    return;
                }
            },
            None => http.serve_connection(TokioIo::new(io), service).await,
        };
        if let Err(e) = served {
            debug!(peer = %peer, error = %e, "admin server: connection ended with an error");
        }
    };
    tokio::select! {
        () = work => {}
        why = expired(&activity, limits) => {
            debug!(peer = %peer, limit = why, "admin server: connection closed");
        }
    }
}

/// Completes when a limit is over, naming it.
async fn expired(activity: &Activity, limits: AdminLimits) -> &'static str {
    loop {
        let (deadline, why) = activity.deadline(limits);
        if Instant::now() >= deadline {
            return why;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// When bytes last moved on a connection, and since when a request has
/// been waiting for its answer.
#[derive(Debug)]
struct Activity {
    state: Mutex<Moments>,
}

#[derive(Debug, Clone, Copy)]
struct Moments {
    last_io: Instant,
    /// Set at the start and by the first byte read after a write; cleared
    /// by the next write.
    awaiting_answer_since: Option<Instant>,
}

impl Activity {
    fn new(now: Instant) -> Self {
        Activity {
            state: Mutex::new(Moments {
                last_io: now,
                awaiting_answer_since: Some(now),
            }),
        }
    }

    fn moments(&self) -> std::sync::MutexGuard<'_, Moments> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self, now: Instant) {
        let mut m = self.moments();
        m.last_io = now;
        m.awaiting_answer_since.get_or_insert(now);
    }

    fn wrote(&self, now: Instant) {
        let mut m = self.moments();
        m.last_io = now;
        m.awaiting_answer_since = None;
    }

    /// The moment the connection ends unless bytes move, and which limit
    /// that is.
    fn deadline(&self, limits: AdminLimits) -> (Instant, &'static str) {
        let m = *self.moments();
        let idle = (m.last_io + limits.idle_timeout, "admin_idle_timeout");
        match m.awaiting_answer_since {
            Some(since) if since + limits.header_read_timeout < idle.0 => (
                since + limits.header_read_timeout,
                "admin_header_read_timeout",
            ),
            _ => idle,
        }
    }
}

/// A stream that tells its [`Activity`] when bytes move.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read(Instant::now());
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote(Instant::now());
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Lets one "closed at accept" line through per interval, with the count
/// of those left out since the previous one.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    last: Option<Instant>,
    left_out: u64,
}

impl RefusalLog {
    const INTERVAL: Duration = Duration::from_secs(10);

    pub(crate) fn sample(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(at) if now.duration_since(at) < Self::INTERVAL => {
                self.left_out += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.left_out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: AdminLimits = AdminLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        max_connections: 1,
    };

    #[test]
    fn a_new_connection_must_send_its_request_within_the_header_timeout() {
        let start = Instant::now();
        let a = Activity::new(start);
        assert_eq!(
            a.deadline(LIMITS),
            (
                start + LIMITS.header_read_timeout,
                "admin_header_read_timeout"
            )
        );
        // Bytes trickling in do not move the header deadline.
        a.read(start + Duration::from_secs(5));
        assert_eq!(a.deadline(LIMITS).0, start + LIMITS.header_read_timeout);
    }

    #[test]
    fn an_answered_connection_waits_for_the_idle_timeout_until_the_next_request() {
        let start = Instant::now();
        let a = Activity::new(start);
        let answered = start + Duration::from_secs(1);
        a.wrote(answered);
        assert_eq!(
            a.deadline(LIMITS),
            (answered + LIMITS.idle_timeout, "admin_idle_timeout")
        );
        let next = answered + Duration::from_secs(20);
        a.read(next);
        assert_eq!(
            a.deadline(LIMITS),
            (
                next + LIMITS.header_read_timeout,
                "admin_header_read_timeout"
            )
        );
    }
}
