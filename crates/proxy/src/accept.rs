//! The accept loop every listener runs, whichever its mode: a task per
//! connection, admission into the listener's pools (see `admission`), one
//! refusal log line and one audit event per connection (throttled for the
//! refusals a flood causes), and a stop on shutdown that leaves the open
//! connections to drain.
//!
//! What is said on a connection is not decided here: the caller passes the
//! function that serves one (see `protocol::serve_server_mode` and
//! `protocol::serve_client_mode`).

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error};

pub(crate) use crate::admission::Admission;
use crate::admission::{Entry, Gate, Source, Ticket};
use crate::conn::{ConnectionContext, Listener, Refused};
use crate::net::{BoundListener, BoxStream};
use crate::refusal::RefusalReason;
use crate::workers::Workers;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Accepts connections until `shutdown` is cancelled, and runs `serve` on
/// each in a task on one of `workers`, tracked by `tracker`, so the caller
/// can wait for them to drain.
pub(crate) async fn accept_loop<L, S, F>(
    listener: Arc<L>,
    socket: BoundListener,
    serve: S,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    workers: Arc<Workers>,
) where
    L: Listener,
    S: Fn(ConnectionContext<L>, BoxStream) -> F + Clone + Send + 'static,
    F: Future<Output = Result<(), Refused>> + Send + 'static,
{
    let gate = Arc::new(Gate::new(
        listener.max_connections(),
        listener.basics().unauthenticated,
    ));
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
            Err(e) if is_per_connection(&e) => {
                // One peer's failure (it reset before accept returned):
                // nothing to wait for.
                debug!(listener = %listener.name(), error = %e, "accept failed for one connection");
                continue;
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
        let ticket = match gate.enter(id, Source::of(&peer)) {
            Entry::Enter(ticket) => Arc::new(ticket),
            Entry::Refuse(reason, detail) => {
                // Closed before a byte is read: the cheapest refusal there
                // is, and the one a flood meets.
                drop(stream);
                let ctx = ConnectionContext::new(id, peer, listener.clone(), Arc::default());
                ctx.log_flood_refusal(&Refused::new(reason, detail), gate.flood_log.sample(reason));
                continue;
            }
        };
        let ctx = ConnectionContext::new(id, peer, listener.clone(), ticket.clone());
        let active = listener
            .metrics()
            .connection_opened(listener.name(), listener.protocol().as_str());
        let gate = gate.clone();
        let serve = serve.clone();
        workers.spawn(|placed| {
            tracker.track_future(async move {
                let _placed = placed;
                let _active = active;
                // On the worker's runtime: its reactor owns the socket from
                // here on.
                let stream = match stream.register() {
                    Ok(s) => s,
                    Err(e) => {
                        error!(
                            conn = ctx.id,
                            listener = %ctx.listener.name(),
                            error = %e,
                            "could not register an accepted connection"
                        );
                        return;
                    }
                };
                let served = tokio::select! {
                    biased;
                    () = ticket.evicted() => Err(evicted(&ticket)),
                    served = serve(ctx.clone(), stream) => served,
                };
                match &served {
                    Err(refused) if refused.reason == RefusalReason::TooManyUnauthenticated => {
                        ctx.log_flood_refusal(refused, gate.flood_log.sample(refused.reason));
                    }
                    Err(refused) => {
                        ctx.log_refusal(refused);
                        ctx.listener.audit().record(ctx.audit_event(Some(refused)));
                    }
                    Ok(()) => ctx.listener.audit().record(ctx.audit_event(None)),
                }
            })
        });
    }
}

fn evicted(ticket: &Ticket) -> Refused {
    Refused::new(
        RefusalReason::TooManyUnauthenticated,
        ticket.eviction_detail(),
    )
}

/// Accept errors that concern one connection only, after which the next
/// accept may succeed at once; any other (out of descriptors or memory)
/// calls for a pause.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::Interrupted
    )
}
