//! Measurement loops over [`PgTlsConnector`]s: timed probes interleaved
//! across targets, and many idle sessions held open at once.
//!
//! Targets are measured in turn (A, B, A, B, ...) rather than one after the
//! other, so that drift in the machine's load hits every target alike.
//! Every loop is bounded by a count.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::pg::{BenchError, PgSession, PgTlsConnector};

/// One thing a probe does per sample.
#[derive(Debug, Clone)]
pub enum Probe {
    /// TCP connect, SSLRequest and the TLS handshake, then close.
    Handshake,
    /// A handshake, then StartupMessage up to ReadyForQuery, then Terminate.
    Session {
        /// Database user in the StartupMessage.
        user: String,
        /// Database in the StartupMessage.
        database: String,
    },
}

impl Probe {
    /// Runs the probe once and returns how long the timed part took. The
    /// orderly close afterwards is not timed.
    pub async fn run_once(&self, connector: &PgTlsConnector) -> Result<Duration, BenchError> {
        let started = Instant::now();
        match self {
            Probe::Handshake => {
                let mut stream = connector.handshake().await?;
                let elapsed = started.elapsed();
                // A close_notify then FIN, so neither server logs an abort.
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                Ok(elapsed)
            }
            Probe::Session { user, database } => {
                let session = connector.session(user, database).await?;
                let elapsed = started.elapsed();
                session.terminate().await?;
                Ok(elapsed)
            }
        }
    }
}

/// A named endpoint to measure.
#[derive(Debug, Clone)]
pub struct Target {
    /// Name used in reports (`proxy`, `native`).
    pub name: String,
    /// How to reach it.
    pub connector: PgTlsConnector,
}

/// The samples taken from one target.
#[derive(Debug, Clone)]
pub struct Samples {
    /// The target's name.
    pub target: String,
    /// One duration per probe, in the order taken.
    pub durations: Vec<Duration>,
}

/// Runs `probe` `warmup` times untimed and then `count` times timed on each
/// target, alternating between targets on every iteration. Stops at the
/// first error.
pub async fn interleaved(
    targets: &[Target],
    probe: &Probe,
    warmup: usize,
    count: usize,
) -> Result<Vec<Samples>, (String, BenchError)> {
    for _ in 0..warmup {
        for t in targets {
            probe
                .run_once(&t.connector)
                .await
                .map_err(|e| (t.name.clone(), e))?;
        }
    }
    let mut samples: Vec<Samples> = targets
        .iter()
        .map(|t| Samples {
            target: t.name.clone(),
            durations: Vec::with_capacity(count),
        })
        .collect();
    for _ in 0..count {
        for (t, s) in targets.iter().zip(samples.iter_mut()) {
            let d = probe
                .run_once(&t.connector)
                .await
                .map_err(|e| (t.name.clone(), e))?;
            s.durations.push(d);
        }
    }
    Ok(samples)
}

/// Opens `count` sessions on `connector`, at most `concurrency` being set
/// up at a time, and returns them open and idle.
pub async fn open_sessions(
    connector: &PgTlsConnector,
    user: &str,
    database: &str,
    count: usize,
    concurrency: usize,
) -> Result<Vec<PgSession>, BenchError> {
    let workers = concurrency.clamp(1, count.max(1));
    let mut set = JoinSet::new();
    for worker in 0..workers {
        // Worker w opens sessions w, w + workers, w + 2 * workers, ...
        let share = (worker..count).step_by(workers).count();
        let connector = connector.clone();
        let (user, database) = (user.to_owned(), database.to_owned());
        set.spawn(async move {
            let mut opened = Vec::with_capacity(share);
            for _ in 0..share {
                opened.push(connector.session(&user, &database).await?);
            }
            Ok::<_, BenchError>(opened)
        });
    }
    let mut sessions = Vec::with_capacity(count);
    while let Some(joined) = set.join_next().await {
        let opened = joined.map_err(|e| BenchError::Protocol(format!("worker failed: {e}")))??;
        sessions.extend(opened);
    }
    Ok(sessions)
}

/// Closes sessions in order, each with Terminate; returns how many closed
/// cleanly.
pub async fn close_sessions(sessions: Vec<PgSession>) -> usize {
    let mut clean = 0;
    for s in sessions {
        if s.terminate().await.is_ok() {
            clean += 1;
        }
    }
    clean
}
