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
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};

use tokio_util::io::poll_read_buf;
use tracing::info;

use crate::conn::{ConnectionContext, Listener};

/// Copies until both sides close, then logs the session's totals.
pub(crate) async fn forward<L, A, B>(ctx: &ConnectionContext<L>, mut client: A, mut upstream: B)
where
    L: Listener,
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    match copy_both_ways(&mut client, &mut upstream).await {
        Ok((from_client, to_client)) => {
            ctx.note(|r| r.bytes = Some((from_client, to_client)));
            ctx.listener
                .metrics()
                .bytes(ctx.listener.name(), from_client, to_client);
            info!(
            conn = ctx.id,
            listener = %ctx.listener.name(),
            peer = %ctx.peer,
            bytes_from_client = from_client,
            bytes_to_client = to_client,
            duration_ms = started.elapsed().as_millis() as u64,
            "connection closed"
            )
        }
        Err(e) => info!(
            conn = ctx.id,
            listener = %ctx.listener.name(),
            peer = %ctx.peer,
            error = %e,
            duration_ms = started.elapsed().as_millis() as u64,
            "connection closed with an error"
        ),
    }
}

/// Size of the buffer a direction takes while data flows.
const BUFFER_SIZE: usize = 8 * 1024;

/// One direction of the copy.
#[derive(Debug, Default)]
struct Direction {
    /// Bytes read and not yet written; `None` while idle.
    buf: Option<BytesMut>,
    /// Written bytes not yet flushed.
    needs_flush: bool,
    /// The reader reached end of stream.
    read_done: bool,
    /// The writer has been shut down: this direction is finished.
    done: bool,
    /// Bytes copied.
    copied: u64,
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if let Some(buf) = self.buf.as_mut().filter(|b| !b.is_empty()) {
                let n = ready!(writer.as_mut().poll_write(cx, buf))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                buf.advance(n);
                self.copied += n as u64;
                self.needs_flush = true;
                continue;
            }
            if self.needs_flush {
                ready!(writer.as_mut().poll_flush(cx))?;
                self.needs_flush = false;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                self.buf = None;
                return Poll::Ready(Ok(()));
            }
            let buf = self
                .buf
                .get_or_insert_with(|| BytesMut::with_capacity(BUFFER_SIZE));
            buf.clear();
            if buf.capacity() < BUFFER_SIZE {
                buf.reserve(BUFFER_SIZE);
            }
            match poll_read_buf(reader.as_mut(), cx, buf) {
                Poll::Pending => {
                    // Nothing to write and nothing to read: give the
                    // buffer back while the connection waits.
                    self.buf = None;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => self.read_done = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Copies `a` to `b` and `b` to `a` until both directions reach end of
/// stream, shutting down each writer after its reader ends. Returns the
/// bytes copied from `a` to `b` and from `b` to `a`.
pub async fn copy_both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    CopyBothWays {
        a,
        b,
        a_to_b: Direction::default(),
        b_to_a: Direction::default(),
    }
    .await
}

struct CopyBothWays<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Direction,
    b_to_a: Direction,
}

impl<A, B> Future for CopyBothWays<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let a_to_b = if this.a_to_b.done {
            Poll::Ready(Ok(()))
        } else {
            this.a_to_b
                .poll_copy(cx, Pin::new(&mut *this.a), Pin::new(&mut *this.b))
        };
        let b_to_a = if this.b_to_a.done {
            Poll::Ready(Ok(()))
        } else {
            this.b_to_a
                .poll_copy(cx, Pin::new(&mut *this.b), Pin::new(&mut *this.a))
        };
        if let Poll::Ready(Err(e)) = a_to_b {
            return Poll::Ready(Err(e));
        }
        if let Poll::Ready(Err(e)) = b_to_a {
            return Poll::Ready(Err(e));
        }
        if this.a_to_b.done && this.b_to_a.done {
            return Poll::Ready(Ok((this.a_to_b.copied, this.b_to_a.copied)));
        }
        Poll::Pending
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        let poll = dir.poll_copy(&mut cx, Pin::new(&mut a), Pin::new(&mut b));
        assert!(poll.is_pending());
        assert!(dir.buf.is_none());
    }

    fn futures_noop_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }
}
