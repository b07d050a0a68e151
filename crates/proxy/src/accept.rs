//! The accept loop every listener runs, whichever its mode: a task per
//! connection, a semaphore capping concurrent connections, a bounded
//! refusal path for connections beyond the cap, one refusal log line and
//! one audit event per connection, and a stop on shutdown that leaves the
//! open connections to drain.
//!
//! What is said on a connection is not decided here: the caller passes the
//! function that serves one (see `protocol::serve_server_mode` and
//! `protocol::serve_client_mode`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

use crate::conn::{ConnectionContext, Listener, Refused};
use crate::net::{BoundListener, BoxStream};
use crate::refusal::RefusalReason;

/// Over-limit connections are told why in their protocol's way (inside
/// TLS in server mode), which costs a handshake; those refusals are
/// themselves capped so a flood cannot turn the polite path into a
/// resource leak.
const MAX_CONCURRENT_REFUSALS: usize = 64;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Whether a connection got one of the listener's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Within `max_connections`: serve it.
    Admitted,
    /// Beyond it: negotiate only as far as needed to say so.
    OverLimit,
}

/// Accepts connections until `shutdown` is cancelled, and runs `serve` on
/// each in a task spawned on `tracker`, so the caller can wait for them to
/// drain.
pub(crate) async fn accept_loop<L, S, F>(
    listener: Arc<L>,
    socket: BoundListener,
    serve: S,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) where
    L: Listener,
    S: Fn(ConnectionContext<L>, BoxStream, Admission) -> F + Copy + Send + 'static,
    F: Future<Output = Result<(), Refused>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(listener.max_connections()));
    let refusals = Arc::new(Semaphore::new(MAX_CONCURRENT_REFUSALS));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // Running out of file descriptors must not spin the loop:
                // back off, bounded, and try again.
                error!(listener = %listener.name(), error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        let ctx = ConnectionContext::new(id, peer, listener.clone());
        let (permit, admission) = match slots.clone().try_acquire_owned() {
            Ok(permit) => (permit, Admission::Admitted),
            Err(_) => match refusals.clone().try_acquire_owned() {
                Ok(permit) => (permit, Admission::OverLimit),
                Err(_) => {
                    // Even the polite refusals are saturated: drop the socket.
                    let refused = Refused::new(
                        RefusalReason::TooManyConnections,
                        "listener and its refusal queue are full; connection dropped",
                    );
                    ctx.log_refusal(&refused);
                    listener.audit().record(ctx.audit_event(Some(&refused)));
                    continue;
                }
            },
        };
        let active = listener
            .metrics()
            .connection_opened(listener.name(), listener.protocol().as_str());
        tracker.spawn(async move {
            let _permit = permit;
            let _active = active;
            let served = serve(ctx.clone(), stream, admission).await;
            if let Err(refused) = &served {
                ctx.log_refusal(refused);
            }
            ctx.listener
                .audit()
                .record(ctx.audit_event(served.as_ref().err()));
        });
    }
}
