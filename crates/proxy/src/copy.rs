//! Copying bytes both ways between the client and the database, holding a
//! buffer only while data is moving.
//!
//! `tokio::io::copy_bidirectional` keeps two 8 KiB buffers for the whole
//! life of a connection. Database connections are mostly idle (pools keep
//! hundreds open), so here a direction takes a buffer when it starts a read
//! and gives it back as soon as the read would block with nothing left to
//! write. An idle connection then costs its TLS state and task, not 16 KiB
//! of buffers. Allocating per burst costs far less than the system calls
//! around it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use intransit_config::Endpoint;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use tokio_util::io::poll_read_buf;
use tracing::info;

use crate::conn::{ConnectionContext, Listener, Refusal, Refused};
use crate::net::close_with;
use crate::tls::upstream::failure_after_handshake;

/// Copies until both sides close, then logs the session's totals. With
/// nothing to inspect, nothing refuses: the result is always `Ok`.
///
/// A plain function returning the future, not an `async fn` awaiting
/// [`copy_session`]: that would keep both streams twice in every
/// connection's task (see `ConnectionContext::handshake_deadline`).
pub(crate) fn forward<'a, L, A, B>(
    ctx: &'a ConnectionContext<L>,
    client: A,
    upstream: B,
) -> impl Future<Output = Result<(), Refused>> + 'a
where
    L: Listener,
    A: AsyncRead + AsyncWrite + Unpin + 'a,
    B: AsyncRead + AsyncWrite + Unpin + 'a,
{
    copy_session(
        ctx,
        client,
        upstream,
        PassThrough,
        None::<FreshUpstream<'a, fn()>>,
    )
}

/// Copies until both sides close, with each of the client's bytes let
/// through to the database only once `inspector` approves it. When the
/// inspector stops the session, the client gets the stop's reply, both
/// legs close, and the refusal is returned for the connection's audit
/// event. Logs the session's totals either way.
pub(crate) fn forward_inspected<'a, L, A, B, I>(
    ctx: &'a ConnectionContext<L>,
    client: A,
    upstream: B,
    inspector: I,
) -> impl Future<Output = Result<(), Refused>> + 'a
where
    L: Listener,
    A: AsyncRead + AsyncWrite + Unpin + 'a,
    B: AsyncRead + AsyncWrite + Unpin + 'a,
    I: Inspector + 'a,
{
    copy_session(
        ctx,
        client,
        upstream,
        inspector,
        None::<FreshUpstream<'a, fn()>>,
    )
}

/// Copies until both sides close over an upstream TLS leg whose handshake
/// has just completed, before its server has said anything. A TLS 1.3
/// server judges the proxy's client certificate after the handshake, so
/// its verdict arrives with the first read: a TLS failure there, before
/// the server's first byte, is the connection's refusal (the server's
/// alert, as `tls::upstream::failure_after_handshake` describes it), and
/// the connection counts as established only once the server's first
/// bytes arrive, or when the copy ends without such a failure.
pub(crate) fn forward_over_fresh_tls<'a, L, A, B, F>(
    ctx: &'a ConnectionContext<L>,
    client: A,
    upstream: B,
    fresh: FreshUpstream<'a, F>,
) -> impl Future<Output = Result<(), Refused>> + 'a
where
    L: Listener,
    A: AsyncRead + AsyncWrite + Unpin + 'a,
    B: AsyncRead + AsyncWrite + Unpin + 'a,
    F: FnOnce() + 'a,
{
    copy_session(ctx, client, upstream, PassThrough, Some(fresh))
}

/// An upstream TLS leg whose server has not spoken yet, for
/// [`forward_over_fresh_tls`].
pub(crate) struct FreshUpstream<'a, F> {
    /// The database, named in a refusal's detail (for the log only).
    pub(crate) target: &'a Endpoint,
    /// Records the connection as established (its log line and metric):
    /// called once, when the server's first bytes arrive or when the copy
    /// ends without the server having refused.
    pub(crate) established: F,
}

async fn copy_session<L, A, B, I, F>(
    ctx: &ConnectionContext<L>,
    mut client: A,
    mut upstream: B,
    mut inspector: I,
    fresh: Option<FreshUpstream<'_, F>>,
) -> Result<(), Refused>
where
    L: Listener,
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    I: Inspector,
    F: FnOnce(),
{
    let started = Instant::now();
    let (target, mut established) = match fresh {
        Some(f) => (Some(f.target), Some(f.established)),
        None => (None, None),
    };
    let copied = CopyBothWays {
        a: &mut client,
        b: &mut upstream,
        a_to_b: Direction::default(),
        b_to_a: Direction::default(),
        inspector: &mut inspector,
        b_spoke: &mut established,
    }
    .await;
    let (from_client, to_client) = (copied.a_to_b, copied.b_to_a);
    ctx.note(|r| r.bytes = Some((from_client, to_client)));
    ctx.listener
        .metrics()
        .bytes(ctx.listener.name(), from_client, to_client);
    // The server refused the proxy before saying anything.
    let refusal = match (&copied.outcome, target, &established) {
        (Err((Way::FromUpstream, Stopped::Read(e))), Some(target), Some(_)) => {
            failure_after_handshake(e)
                .map(|f| Refused::new(f.reason, format!("{target}: {}", f.detail)))
        }
        _ => None,
    };
    if let Some(refused) = refusal {
        close_with(&mut client, &[]).await;
        return Err(refused);
    }
    // A server that never spoke and never refused: the session was
    // established all the same.
    if let Some(established) = established.take() {
        established();
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    let (conn, listener, peer) = (ctx.id, ctx.listener.name(), &ctx.peer);
    match copied.outcome {
        Ok(()) => {
            info!(
                conn,
                listener = %listener,
                peer = %peer,
                bytes_from_client = from_client,
                bytes_to_client = to_client,
                duration_ms,
                "connection closed"
            );
            Ok(())
        }
        Err((_, Stopped::Read(e) | Stopped::Write(e))) => {
            info!(
                conn,
                listener = %listener,
                peer = %peer,
                error = %e,
                bytes_from_client = from_client,
                bytes_to_client = to_client,
                duration_ms,
                "connection closed with an error"
            );
            Ok(())
        }
        Err((_, Stopped::Inspector(stop))) => {
            close_with(&mut client, &stop.reply).await;
            let _ = upstream.shutdown().await;
            Err(stop.refused)
        }
    }
}

/// Decides which of the client's bytes may reach the database.
pub(crate) trait Inspector {
    /// How many leading bytes of `pending` (the client's bytes not yet
    /// approved, oldest first) may go to the database now. Bytes not
    /// approved stay pending and are offered again, with more behind
    /// them, after the next read. A refusal stops the session.
    fn approve(&mut self, pending: &[u8]) -> Result<usize, Refusal>;
}

/// Lets every byte through.
pub(crate) struct PassThrough;

impl Inspector for PassThrough {
    fn approve(&mut self, pending: &[u8]) -> Result<usize, Refusal> {
        Ok(pending.len())
    }
}

/// Why the copy ended before both sides closed.
enum Stopped {
    /// A read failed.
    Read(io::Error),
    /// A write (or flush, or shutdown) failed.
    Write(io::Error),
    /// The inspector refused the client's bytes.
    Inspector(Refusal),
}

/// Which way the bytes went in the direction that stopped the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    FromClient,
    FromUpstream,
}

/// Size of the buffer a direction takes while data flows.
const BUFFER_SIZE: usize = 8 * 1024;

/// One direction of the copy.
#[derive(Debug, Default)]
struct Direction {
    /// Bytes read and not yet written; `None` while idle.
    buf: Option<BytesMut>,
    /// How many bytes at the front of `buf` the inspector approved.
    approved: usize,
    /// Written bytes not yet flushed.
    needs_flush: bool,
    /// The reader gave at least one byte.
    heard: bool,
    /// The reader reached end of stream.
    read_done: bool,
    /// The writer has been shut down: this direction is finished.
    done: bool,
    /// Bytes copied.
    copied: u64,
}

impl Direction {
    fn poll_copy<R, W, I>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        inspector: &mut I,
    ) -> Poll<Result<(), Stopped>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
        I: Inspector + ?Sized,
    {
        loop {
            if let Some(buf) = self.buf.as_mut().filter(|_| self.approved > 0) {
                let approved = buf.get(..self.approved).unwrap_or_default();
                let n = ready!(writer.as_mut().poll_write(cx, approved)).map_err(Stopped::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(Stopped::Write(io::ErrorKind::WriteZero.into())));
                }
                buf.advance(n);
                self.approved -= n;
                self.copied += n as u64;
                self.needs_flush = true;
                continue;
            }
            if self.needs_flush {
                ready!(writer.as_mut().poll_flush(cx)).map_err(Stopped::Write)?;
                self.needs_flush = false;
            }
            if self.read_done {
                // Bytes still held (the start of a packet the inspector
                // never saw whole) are dropped with the connection.
                ready!(writer.as_mut().poll_shutdown(cx)).map_err(Stopped::Write)?;
                self.done = true;
                self.buf = None;
                return Poll::Ready(Ok(()));
            }
            let buf = self
                .buf
                .get_or_insert_with(|| BytesMut::with_capacity(BUFFER_SIZE));
            if buf.is_empty() {
                buf.clear();
            }
            if buf.capacity() - buf.len() < BUFFER_SIZE {
                buf.reserve(BUFFER_SIZE);
            }
            match poll_read_buf(reader.as_mut(), cx, buf) {
                Poll::Pending => {
                    // Nothing to write and nothing to read: give the
                    // buffer back while the connection waits, unless it
                    // holds bytes awaiting approval.
                    if buf.is_empty() {
                        self.buf = None;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => self.read_done = true,
                Poll::Ready(Ok(_)) => {
                    self.heard = true;
                    self.approved = inspector.approve(buf).map_err(Stopped::Inspector)?;
                }
                // A TLS peer that closes its TCP connection without
                // close_notify, as most database clients do once their
                // exchange is complete. The database protocols frame their
                // own messages, so a cut inside one is seen there; here it
                // ends the stream like a clean close.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.read_done = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Stopped::Read(e))),
            }
        }
    }
}

/// What a copy moved, however it ended.
struct Copied {
    a_to_b: u64,
    b_to_a: u64,
    outcome: Result<(), (Way, Stopped)>,
}

struct CopyBothWays<'a, A: ?Sized, B: ?Sized, I: ?Sized, F> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Direction,
    b_to_a: Direction,
    /// Approves what goes from `a` to `b`.
    inspector: &'a mut I,
    /// Taken and called once `b` has sent its first bytes.
    b_spoke: &'a mut Option<F>,
}

impl<A, B, I, F> Future for CopyBothWays<'_, A, B, I, F>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    I: Inspector + ?Sized,
    F: FnOnce(),
{
    type Output = Copied;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let a_to_b = if this.a_to_b.done {
            Poll::Ready(Ok(()))
        } else {
            this.a_to_b.poll_copy(
                cx,
                Pin::new(&mut *this.a),
                Pin::new(&mut *this.b),
                this.inspector,
            )
        };
        let b_to_a = if this.b_to_a.done {
            Poll::Ready(Ok(()))
        } else {
            this.b_to_a.poll_copy(
                cx,
                Pin::new(&mut *this.b),
                Pin::new(&mut *this.a),
                &mut PassThrough,
            )
        };
        if this.b_to_a.heard {
            if let Some(spoke) = this.b_spoke.take() {
                spoke();
            }
        }
        let outcome = match (a_to_b, b_to_a) {
            (Poll::Ready(Err(e @ Stopped::Inspector(_))), _) => Err((Way::FromClient, e)),
            // A failed read from `b` says why it went away (a TLS alert,
            // say); a write to it failing at the same moment only says
            // that it did.
            (_, Poll::Ready(Err(e @ Stopped::Read(_)))) => Err((Way::FromUpstream, e)),
            (Poll::Ready(Err(e)), _) => Err((Way::FromClient, e)),
            (_, Poll::Ready(Err(e))) => Err((Way::FromUpstream, e)),
            _ if this.a_to_b.done && this.b_to_a.done => Ok(()),
            _ => return Poll::Pending,
        };
        Poll::Ready(Copied {
            a_to_b: this.a_to_b.copied,
            b_to_a: this.b_to_a.copied,
            outcome,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Copies `a` to `b` and `b` to `a` until both directions reach end of
    /// stream, shutting down each writer after its reader ends. Returns the
    /// bytes copied from `a` to `b` and from `b` to `a`.
    async fn copy_both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
    where
        A: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let copied = CopyBothWays {
            a,
            b,
            a_to_b: Direction::default(),
            b_to_a: Direction::default(),
            inspector: &mut PassThrough,
            b_spoke: &mut None::<fn()>,
        }
        .await;
        match copied.outcome {
            Ok(()) => Ok((copied.a_to_b, copied.b_to_a)),
            Err((_, Stopped::Read(e) | Stopped::Write(e))) => Err(e),
            Err((_, Stopped::Inspector(stop))) => Err(io::Error::other(stop.refused.detail)),
        }
    }

    #[tokio::test]
    async fn copies_both_ways_until_both_ends_close() {
        let (mut client, mut proxy_client_side) = tokio::io::duplex(64);
        let (mut proxy_db_side, mut db) = tokio::io::duplex(64);
        let copier = tokio::spawn(async move {
            copy_both_ways(&mut proxy_client_side, &mut proxy_db_side).await
        });
        // More than one buffer's worth, through a small pipe, both ways.
        let up: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..30_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client_task = tokio::spawn(async move {
            client.write_all(&up2).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let db_task = tokio::spawn(async move {
            let mut got = Vec::new();
            db.read_to_end(&mut got).await.unwrap();
            db.write_all(&down2).await.unwrap();
            db.shutdown().await.unwrap();
            got
        });
        assert_eq!(db_task.await.unwrap(), up);
        assert_eq!(client_task.await.unwrap(), down);
        let (a_to_b, b_to_a) = copier.await.unwrap().unwrap();
        assert_eq!(a_to_b, 50_000);
        assert_eq!(b_to_a, 30_000);
    }

    #[tokio::test]
    async fn idle_directions_hold_no_buffer() {
        let (_client, mut a) = tokio::io::duplex(64);
        let (mut b, _db) = tokio::io::duplex(64);
        let mut dir = Direction::default();
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        let poll = dir.poll_copy(
            &mut cx,
            Pin::new(&mut a),
            Pin::new(&mut b),
            &mut PassThrough,
        );
        assert!(poll.is_pending());
        assert!(dir.buf.is_none());
    }

    fn futures_noop_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
