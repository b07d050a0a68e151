//! Measurement loops over [`PgTlsConnector`]s: timed probes interleaved
//! across targets, and many idle sessions held open at once (logged in,
//! or stopped after the TLS handshake), optionally until a file appears.
//!
//! Targets are measured in turn (A, B, A, B, ...) rather than one after the
//! other, so that drift in the machine's load hits every target alike.
//! Every loop is bounded by a count.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::pg::{still_idle, BenchError, PgSession, PgTlsConnector, PgTlsStream};

/// One thing a probe does per sample.
#[derive(Debug, Clone)]
pub enum Probe {
    /// TCP connect, SSLRequest and the TLS handshake, then close.
    Handshake,
    /// A handshake, then StartupMessage up to ReadyForQuery, then the
    /// query if there is one, then Terminate.
    Session {
        /// Database user in the StartupMessage.
        user: String,
        /// Database in the StartupMessage.
        database: String,
        /// A simple query sent after the login and answered within the
        /// timed part (`SELECT 1`).
        query: Option<String>,
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
            Probe::Session {
                user,
                database,
                query,
            } => {
                let mut session = connector.session(user, database).await?;
                if let Some(sql) = query {
                    session.simple_query(sql).await?;
                }
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

/// How far each held session goes before it idles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldStage {
    /// The TLS handshake with the client certificate, and nothing inside
    /// TLS: a proxy in front of PostgreSQL waits for the StartupMessage
    /// (until its handshake timeout) and has no database connection yet.
    Tls,
    /// A StartupMessage up to ReadyForQuery: a logged-in session, with a
    /// database backend behind it.
    Ready {
        /// Database user in the StartupMessage.
        user: String,
        /// Database in the StartupMessage.
        database: String,
    },
}

/// One session held open, at the stage it was asked to reach.
#[derive(Debug)]
pub enum HeldSession {
    /// TLS established, nothing sent inside it.
    Tls(PgTlsStream),
    /// Logged in and idle.
    Ready(PgSession),
}

impl HeldSession {
    /// Opens one session on `connector` up to `stage`.
    pub async fn open(connector: &PgTlsConnector, stage: &HoldStage) -> Result<Self, BenchError> {
        match stage {
            HoldStage::Tls => Ok(HeldSession::Tls(connector.handshake().await?)),
            HoldStage::Ready { user, database } => {
                Ok(HeldSession::Ready(connector.session(user, database).await?))
            }
        }
    }

    /// Whether the other end has neither closed the session nor sent
    /// anything since it went idle.
    pub async fn still_idle(&mut self) -> bool {
        match self {
            HeldSession::Tls(stream) => still_idle(stream).await,
            HeldSession::Ready(session) => session.still_idle().await,
        }
    }

    /// Closes the session the way its client would: Terminate and
    /// close_notify for a logged-in session, close_notify alone otherwise.
    pub async fn close(self) -> Result<(), BenchError> {
        match self {
            HeldSession::Tls(mut stream) => tokio::io::AsyncWriteExt::shutdown(&mut stream)
                .await
                .map_err(|e| BenchError::Io {
                    step: "closing the session",
                    error: e,
                }),
            HeldSession::Ready(session) => session.terminate().await,
        }
    }
}

/// Opens `count` sessions on `connector` up to `stage`, at most
/// `concurrency` being set up at a time, and returns them open and idle.
pub async fn open_sessions(
    connector: &PgTlsConnector,
    stage: &HoldStage,
    count: usize,
    concurrency: usize,
) -> Result<Vec<HeldSession>, BenchError> {
    let workers = concurrency.clamp(1, count.max(1));
    let mut set = JoinSet::new();
    for worker in 0..workers {
        // Worker w opens sessions w, w + workers, w + 2 * workers, ...
        let share = (worker..count).step_by(workers).count();
        let connector = connector.clone();
        let stage = stage.clone();
        set.spawn(async move {
            let mut opened = Vec::with_capacity(share);
            for _ in 0..share {
                opened.push(HeldSession::open(&connector, &stage).await?);
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

/// Counts the sessions whose other end has neither closed them nor sent
/// anything since they went idle.
pub async fn count_still_idle(sessions: &mut [HeldSession]) -> usize {
    // Let the runtime's I/O driver take in what arrived while the task
    // slept, so a close that has reached the socket is seen.
    tokio::task::yield_now().await;
    let mut idle = 0;
    for s in sessions.iter_mut() {
        if s.still_idle().await {
            idle += 1;
        }
    }
    idle
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// The release file appeared.
    Released,
    /// The time limit passed first.
    TimedOut,
}

/// Waits until `release` exists, looking every `poll`, for at most
/// `limit`.
pub async fn hold_until_file(release: &Path, poll: Duration, limit: Duration) -> HoldEnd {
    let deadline = Instant::now() + limit;
    loop {
        if tokio::fs::try_exists(release).await.unwrap_or(false) {
            return HoldEnd::Released;
        }
        let now = Instant::now();
        if now >= deadline {
            return HoldEnd::TimedOut;
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
    }
}

/// Closes sessions in order; returns how many closed cleanly.
pub async fn close_sessions(sessions: Vec<HeldSession>) -> usize {
    let mut clean = 0;
    for s in sessions {
        if s.close().await.is_ok() {
            clean += 1;
        }
    }
    clean
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls::crypto::aws_lc_rs;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ClientConfig, RootCertStore, ServerConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// A CA, and a server configuration and a client configuration that
    /// trusts it, for `localhost`.
    fn tls_pair() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "runner test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let provider = Arc::new(aws_lc_rs::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_cert.der().to_vec()))
            .unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// What the test server does with each session once TLS is up.
    #[derive(Clone, Copy)]
    enum ServerSide {
        StayIdle,
        Close,
        Speak,
    }

    #[tokio::test]
    async fn sessions_the_server_closed_or_spoke_on_are_not_counted_as_idle() {
        let (server_config, client_config) = tls_pair();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let plan = [ServerSide::StayIdle, ServerSide::Close, ServerSide::Speak];
        let (done_tx, done_rx) = oneshot::channel();
        let server = tokio::spawn(async move {
            let acceptor = TlsAcceptor::from(server_config);
            let mut kept = Vec::new();
            for side in plan {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 8];
                tcp.read_exact(&mut request).await.unwrap();
                tcp.write_all(b"S").await.unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                match side {
                    ServerSide::StayIdle => kept.push(tls),
                    ServerSide::Close => tls.shutdown().await.unwrap(),
                    ServerSide::Speak => {
                        tls.write_all(b"Z").await.unwrap();
                        tls.flush().await.unwrap();
                        kept.push(tls);
                    }
                }
            }
            done_tx.send(()).unwrap();
            // Keep the idle and the talkative sessions open until the
            // client has looked.
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(kept);
        });
        let connector = PgTlsConnector::new(address, "localhost", client_config).unwrap();
        let mut sessions = Vec::new();
        for _ in plan {
            sessions.push(
                HeldSession::open(&connector, &HoldStage::Tls)
                    .await
                    .unwrap(),
            );
        }
        done_rx.await.unwrap();
        // Let what the server sent reach the client's sockets.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count_still_idle(&mut sessions).await, 1);
        assert!(sessions[0].still_idle().await, "the idle session is idle");
        assert!(
            !sessions[1].still_idle().await,
            "the closed session is closed"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_hold_ends_when_the_file_appears_or_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        let limit = Duration::from_millis(200);
        let poll = Duration::from_millis(10);
        assert_eq!(
            hold_until_file(&release, poll, limit).await,
            HoldEnd::TimedOut
        );
        let writer = {
            let release = release.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::fs::write(&release, b"").unwrap();
            })
        };
        let started = Instant::now();
        assert_eq!(
            hold_until_file(&release, poll, Duration::from_secs(30)).await,
            HoldEnd::Released
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        writer.await.unwrap();
    }
}
