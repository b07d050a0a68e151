//! The measuring loop: workers repeat one operation until a duration, a
//! count or a stop signal ends the run, and the samples are gathered.
//!
//! Every run is bounded: by its count, by its duration, and by
//! [`MAX_DURATION`] and [`MAX_COUNT`] whatever the caller asks. A refusal
//! ends the run at once (every further attempt would be refused too); other
//! failures are counted and the run goes on, unless nothing at all
//! succeeds.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::client::OpError;
use crate::process::{self, CpuTicks};

/// The longest one run may last, whatever `--duration` says.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// The most operations one run may make, whatever `--count` says.
pub const MAX_COUNT: u64 = 10_000_000;
/// The most concurrent workers.
pub const MAX_CONCURRENCY: usize = 256;
/// How many failures in a row end a run, so a dead target is not hammered.
const MAX_CONSECUTIVE_FAILURES: u64 = 100;

/// When a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Stop after this long (capped at [`MAX_DURATION`]).
    pub duration: Option<Duration>,
    /// Stop after this many operations (capped at [`MAX_COUNT`]).
    pub count: Option<u64>,
    /// Workers running the operation at once (1 to [`MAX_CONCURRENCY`]).
    pub concurrency: usize,
}

impl Bounds {
    fn effective_duration(&self) -> Duration {
        match (self.duration, self.count) {
            (Some(d), _) => d.min(MAX_DURATION),
            (None, Some(_)) => MAX_DURATION,
            (None, None) => Duration::from_secs(5),
        }
    }

    fn effective_count(&self) -> u64 {
        self.count.unwrap_or(MAX_COUNT).min(MAX_COUNT)
    }
}

/// One successful operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The timed part of the operation.
    pub latency: Duration,
    /// Bytes moved, for throughput runs.
    pub bytes: u64,
    /// Whether the TLS session was resumed.
    pub resumed: bool,
}

/// A process whose cost is sampled during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// The name shown in reports (the pid when none was given).
    pub label: String,
    /// The process id.
    pub pid: u32,
}

/// What a watched process spent during a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProcessCost {
    /// The name shown in reports.
    pub label: String,
    /// The process id.
    pub pid: u32,
    /// CPU time of the process and of its exited, waited-for children
    /// (for PostgreSQL's postmaster: the backends that ended), in ms.
    pub cpu_ms: f64,
    /// The highest resident set size seen during the run, in KiB.
    pub peak_rss_kib: u64,
}

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Successful operations.
    pub samples: Vec<Sample>,
    /// Failed operations.
    pub failures: u64,
    /// The first failure's message.
    pub first_failure: Option<String>,
    /// Set when the server refused: the reason.
    pub refused: Option<String>,
    /// Wall time from the first worker's start to the last one's end.
    pub elapsed: Duration,
    /// Whether a stop signal cut the run short.
    pub interrupted: bool,
    /// The cost of each watched process.
    pub processes: Vec<ProcessCost>,
}

/// Milliseconds per clock tick (`CLK_TCK` is 100 on Linux).
const MS_PER_TICK: f64 = 10.0;

fn cpu_total(t: CpuTicks) -> u64 {
    t.total().saturating_add(t.children)
}

/// Runs `op` on `concurrency` workers within `bounds`. Each worker first
/// gets its own state from `setup` (untimed: a persistent connection, for
/// example); `op` then returns one [`Sample`] per call. A `true` on `stop`
/// ends the run early; what was measured so far is kept.
/// When a worker stops, `teardown` closes its state (a session's orderly
/// goodbye), untimed.
#[allow(clippy::too_many_arguments)]
pub async fn run<S, Setup, SetupFut, Op, OpFut, Teardown, TeardownFut>(
    bounds: Bounds,
    watched: &[Watched],
    stop: watch::Receiver<bool>,
    progress: Option<Arc<AtomicU64>>,
    setup: Setup,
    op: Op,
    teardown: Teardown,
) -> RunOutcome
where
    S: Send + 'static,
    Setup: Fn() -> SetupFut + Send + Sync + 'static,
    SetupFut: Future<Output = Result<S, OpError>> + Send,
    Op: Fn(S) -> OpFut + Send + Sync + 'static,
    OpFut: Future<Output = (Option<S>, Result<Sample, OpError>)> + Send,
    Teardown: Fn(S) -> TeardownFut + Send + Sync + 'static,
    TeardownFut: Future<Output = ()> + Send,
{
    let concurrency = bounds.concurrency.clamp(1, MAX_CONCURRENCY);
    let duration = bounds.effective_duration();
    let budget = Arc::new(AtomicU64::new(bounds.effective_count()));
    let failures = Arc::new(AtomicU64::new(0));
    let consecutive = Arc::new(AtomicU64::new(0));
    let first_failure = Arc::new(Mutex::new(None::<String>));
    let refused = Arc::new(Mutex::new(None::<String>));
    let halted = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(AtomicBool::new(false));
    let setup = Arc::new(setup);
    let op = Arc::new(op);
    let teardown = Arc::new(teardown);

    let before: Vec<Option<CpuTicks>> = watched
        .iter()
        .map(|w| process::read_cpu_ticks(w.pid).ok())
        .collect();
    let peaks: Arc<Vec<AtomicU64>> = Arc::new(watched.iter().map(|_| AtomicU64::new(0)).collect());
    let sampler_done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let pids: Vec<u32> = watched.iter().map(|w| w.pid).collect();
        let peaks = peaks.clone();
        let done = sampler_done.clone();
        tokio::spawn(async move {
            // Resident memory is sampled every 50 ms; VmHWM is the
            // process's lifetime peak and would hide what this run cost.
            loop {
                for (pid, peak) in pids.iter().zip(peaks.iter()) {
                    if let Ok(m) = process::read_memory(*pid) {
                        peak.fetch_max(m.rss_kib, Ordering::Relaxed);
                    }
                }
                if done.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let started = Instant::now();
    let deadline = started + duration;
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let (budget, failures, consecutive) =
            (budget.clone(), failures.clone(), consecutive.clone());
        let (first_failure, refused, halted) =
            (first_failure.clone(), refused.clone(), halted.clone());
        let (setup, op, teardown) = (setup.clone(), op.clone(), teardown.clone());
        let (interrupted, progress) = (interrupted.clone(), progress.clone());
        let mut stop = stop.clone();
        set.spawn(async move {
            let mut samples = Vec::new();
            let note_failure = |e: OpError| match e {
                OpError::Refused(reason) => {
                    if let Ok(mut r) = refused.lock() {
                        r.get_or_insert(reason);
                    }
                    halted.store(true, Ordering::Relaxed);
                }
                OpError::Failed(message) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut f) = first_failure.lock() {
                        f.get_or_insert(message);
                    }
                    if consecutive.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_CONSECUTIVE_FAILURES {
                        halted.store(true, Ordering::Relaxed);
                    }
                }
            };
            let mut state: Option<S> = None;
            loop {
                if *stop.borrow_and_update() {
                    interrupted.store(true, Ordering::Relaxed);
                    break;
                }
                if halted.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                let s = match state.take() {
                    Some(s) => s,
                    None => match setup().await {
                        Ok(s) => s,
                        Err(e) => {
                            note_failure(e);
                            continue;
                        }
                    },
                };
                // Take one operation from the shared budget.
                if budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_err()
                {
                    break;
                }
                let (next, result) = tokio::select! {
                    r = op(s) => r,
                    _ = stop.changed() => {
                        interrupted.store(true, Ordering::Relaxed);
                        break;
                    }
                };
                state = next;
                match result {
                    Ok(sample) => {
                        consecutive.store(0, Ordering::Relaxed);
                        if let Some(p) = &progress {
                            p.fetch_add(1, Ordering::Relaxed);
                        }
                        samples.push(sample);
                    }
                    Err(e) => note_failure(e),
                }
            }
            if let Some(s) = state {
                let _ = tokio::time::timeout(Duration::from_secs(5), teardown(s)).await;
            }
            samples
        });
    }
    let mut samples = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(s) = joined {
            samples.extend(s);
        }
    }
    let elapsed = started.elapsed();
    sampler_done.store(true, Ordering::Relaxed);
    let _ = sampler.await;

    let processes = watched
        .iter()
        .zip(before)
        .zip(peaks.iter())
        .map(|((w, before), peak)| {
            let after = process::read_cpu_ticks(w.pid).ok();
            let ticks = match (before, after) {
                (Some(b), Some(a)) => cpu_total(a).saturating_sub(cpu_total(b)),
                _ => 0,
            };
            ProcessCost {
                label: w.label.clone(),
                pid: w.pid,
                cpu_ms: ticks as f64 * MS_PER_TICK,
                peak_rss_kib: peak.load(Ordering::Relaxed),
            }
        })
        .collect();

    let refused = refused.lock().ok().and_then(|r| r.clone());
    let first_failure = first_failure.lock().ok().and_then(|f| f.clone());
    RunOutcome {
        samples,
        failures: failures.load(Ordering::Relaxed),
        first_failure,
        refused,
        elapsed,
        interrupted: interrupted.load(Ordering::Relaxed),
        processes,
    }
}
