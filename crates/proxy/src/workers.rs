//! Where connections run: one single-threaded runtime per worker thread.
//!
//! A connection's task does the same thing over and over: wait for a
//! message on one leg, write it on the other. On tokio's multi-thread
//! runtime every such wake-up can land on another thread than the one
//! that polled the socket, and the runtime wakes a parked worker with a
//! futex to steal it: about one futex call and one more context switch
//! per transaction, for nothing (see docs/benchmarks.md). Here each
//! worker thread owns a current-thread runtime with its own epoll: a
//! connection accepted by the listener's accept loop (on the main
//! runtime) is handed once, as a plain socket, to the worker with the
//! fewest connections, registered with that worker's reactor, and lives
//! there until it closes. Its two legs, its timers and its wake-ups stay
//! on one thread.
//!
//! `worker_threads = 0` keeps connections on the main runtime, as before.
//! A pooled server connection may be used by clients on several workers;
//! it works (tokio's reactors wake tasks across runtimes), at the cost of
//! a cross-thread wake-up while it serves a client of another worker.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// The worker threads of a running proxy, or none.
#[derive(Debug)]
pub(crate) struct Workers {
    workers: Vec<Worker>,
    stop: CancellationToken,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Connections running on this worker.
    active: Arc<AtomicUsize>,
    /// Fires once the worker's runtime, and every task left on it, is gone.
    finished: oneshot::Receiver<()>,
}

impl Workers {
    /// Starts `count` worker threads; with 0, connections run on the
    /// caller's runtime.
    pub(crate) fn start(count: usize) -> io::Result<Self> {
        let stop = CancellationToken::new();
        let mut workers = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (done, finished) = oneshot::channel();
            let stopped = stop.clone();
            std::thread::Builder::new()
                .name(format!("intransit-conn-{i}"))
                .spawn(move || {
                    WORKER.set(Some(i));
                    runtime.block_on(stopped.cancelled());
                    // Dropping the runtime drops the connections still on
                    // it (after the drain's grace period), closing them.
                    drop(runtime);
                    let _ = done.send(());
                })?;
            workers.push(Worker {
                handle,
                active: Arc::default(),
                finished,
            });
        }
        debug!(workers = count, "connection worker threads started");
        Ok(Workers { workers, stop })
    }

    /// No worker threads: connections run on the caller's runtime.
    pub(crate) fn none() -> Self {
        Workers {
            workers: Vec::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Runs the task `make` returns on the worker with the fewest
    /// connections (or on the caller's runtime without workers). The task
    /// receives nothing from the caller's runtime: what it needs of the
    /// reactor (its socket) it registers itself, on the worker. It must
    /// hold the [`Placed`] it is given until it ends: that is what counts
    /// it on its worker.
    ///
    /// The guard goes into the task rather than around it: an `async`
    /// block that awaited the task would keep room for the task twice
    /// (its captured value and the value being awaited), a few KiB per
    /// idle connection.
    pub(crate) fn spawn<F>(&self, make: impl FnOnce(Placed) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.active.load(Ordering::Relaxed))
        else {
            tokio::spawn(make(Placed(None)));
            return;
        };
        let placed = Placed(Some(Active::enter(worker.active.clone())));
        worker.handle.spawn(make(placed));
    }

    /// Stops every worker, dropping the connections still on them, and
    /// waits until they are gone.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for worker in self.workers {
            let _ = worker.finished.await;
        }
    }
}

thread_local! {
    /// The index of the worker thread this is, on a worker thread.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Which worker thread the caller runs on (`None` off the workers), so
/// that what a connection opens (a pooled server connection) can be
/// matched with later connections on the same thread.
pub(crate) fn current() -> Option<usize> {
    WORKER.get()
}

/// A task's place on its worker, counted while the task holds it.
pub(crate) struct Placed(#[allow(dead_code)] Option<Active>);

/// One connection counted on its worker while its task lives.
struct Active(Arc<AtomicUsize>);

impl Active {
    fn enter(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Active(count)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_the_least_busy_worker_thread_and_end_with_stop() {
        let workers = Workers::start(2).unwrap();
        let (held_tx, held_rx) = oneshot::channel::<()>();
        let (name_tx, mut names) = tokio::sync::mpsc::unbounded_channel();
        // The first task holds its worker; the next two both go to the
        // other one, which has fewer connections.
        let tx = name_tx.clone();
        workers.spawn(|placed| async move {
            let _placed = placed;
            tx.send(std::thread::current().name().map(str::to_owned))
                .unwrap();
            let _ = held_rx.await;
        });
        let first = names.recv().await.unwrap().unwrap();
        for _ in 0..2 {
            let tx = name_tx.clone();
            workers.spawn(|placed| async move {
                let _placed = placed;
                tx.send(std::thread::current().name().map(str::to_owned))
                    .unwrap();
            });
            let other = names.recv().await.unwrap().unwrap();
            assert_ne!(other, first);
            assert!(other.starts_with("intransit-conn-"), "{other}");
            // The finished task leaves its worker's count before the next
            // spawn (bounded: 5 s).
            for _ in 0..500 {
                let total: usize = workers
                    .workers
                    .iter()
                    .map(|w| w.active.load(Ordering::Relaxed))
                    .sum();
                if total == 1 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        // Stopping drops the task still holding its worker.
        workers.stop().await;
        assert!(held_tx.is_closed());
    }

    #[tokio::test]
    async fn without_workers_tasks_run_on_the_callers_runtime() {
        let workers = Workers::start(0).unwrap();
        let (tx, rx) = oneshot::channel();
        workers.spawn(|placed| async move {
            let _placed = placed;
            tx.send(std::thread::current().name().map(str::to_owned))
                .unwrap();
        });
        let name = rx.await.unwrap();
        assert!(!name.unwrap_or_default().starts_with("intransit-conn-"));
        workers.stop().await;
    }
}
