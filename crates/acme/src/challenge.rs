//! intransit's own answers to ACME challenges, served only while an order
//! is pending.
//!
//! - HTTP-01 (RFC 8555 section 8.3): a small axum server that answers
//!   `GET /.well-known/acme-challenge/TOKEN` with the key authorization, and
//!   404 to anything else.
//! - TLS-ALPN-01 (RFC 8737): handshakes only for ALPN `acme-tls/1`,
//!   presenting for the server name asked a self-signed certificate that
//!   names it and carries the critical acmeIdentifier extension (the
//!   SHA-256 of the key authorization; [`ChallengeCertificate`]). Answered
//!   where the address allows, in this order: by a running proxy listener
//!   of this process ([`AcmeSettings::running_listener`], its
//!   [`TlsAlpnChallenges`]); by a TLS listener of its own; and, when the
//!   address is in use (a proxy of another process holds it), through a
//!   challenge file in the state directory that such a proxy reads
//!   (`intransit_pki::tls_alpn`).
//!
//! Each binds (or registers) when the order starts and stops when
//! [`Responder::stop`] is called (or the responder is dropped), so nothing
//! listens and no answer is left between orders.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use intransit_pki::tls_alpn::{remove_challenge_file, write_challenge_file};
use intransit_pki::{ChallengeCertificate, StateDir, TlsAlpnChallenges};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::{AcmeError, AcmeSettings};

pub use intransit_pki::ACME_TLS_ALPN;

/// How long one validation connection may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Which challenge intransit answers, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP-01, answered by an HTTP server on this address (the CA
    /// connects to port 80).
    Http01(SocketAddr),
    /// TLS-ALPN-01 on this address (the CA connects to port 443):
    /// answered by a TLS listener of the order's own, or, when the
    /// address is a running proxy listener's, by that listener (see the
    /// module documentation).
    TlsAlpn01(SocketAddr),
}

impl Challenge {
    /// `http-01` or `tls-alpn-01`.
    pub fn name(&self) -> &'static str {
        match self {
            Challenge::Http01(_) => "http-01",
            Challenge::TlsAlpn01(_) => "tls-alpn-01",
        }
    }

    /// The address the answer is served on.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Challenge::Http01(addr) | Challenge::TlsAlpn01(addr) => *addr,
        }
    }

    /// The challenge named `name` on `addr`.
    pub fn from_name(name: &str, addr: SocketAddr) -> Option<Self> {
        match name {
            "http-01" => Some(Challenge::Http01(addr)),
            "tls-alpn-01" => Some(Challenge::TlsAlpn01(addr)),
            _ => None,
        }
    }

    pub(crate) fn acme_type(&self) -> instant_acme::ChallengeType {
        match self {
            Challenge::Http01(_) => instant_acme::ChallengeType::Http01,
            Challenge::TlsAlpn01(_) => instant_acme::ChallengeType::TlsAlpn01,
        }
    }
}

/// Where the TLS-ALPN-01 answers of an order go.
enum AlpnAnswers {
    /// A listener of this process: the running proxy listener's, or the
    /// responder's own.
    Registry(TlsAlpnChallenges),
    /// Challenge files in the state directory, for the proxy of another
    /// process that holds the address; the files written so far.
    Files(StateDir, Mutex<Vec<std::path::PathBuf>>),
}

/// A running challenge server.
pub(crate) struct Responder {
    challenge: Challenge,
    http_answers: Arc<Mutex<HashMap<String, String>>>,
    tls_answers: AlpnAnswers,
    /// The identifiers answered, removed from a registry at the end.
    answered: Mutex<Vec<String>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Starts answering `settings.challenge` (nothing yet): for
    /// TLS-ALPN-01 through the running listener given, else on a listener
    /// of its own bound to the challenge's address or, when a proxy of
    /// another process holds that address, through `state`'s challenge
    /// files.
    pub(crate) async fn start(
        settings: &AcmeSettings,
        state: &StateDir,
    ) -> Result<Self, AcmeError> {
        let challenge = settings.challenge;
        let http_answers = Arc::new(Mutex::new(HashMap::new()));
        let mut responder = Responder {
            challenge,
            http_answers: http_answers.clone(),
            tls_answers: AlpnAnswers::Registry(TlsAlpnChallenges::new(None)),
            answered: Mutex::default(),
            stop: None,
            task: None,
        };
        if let (Challenge::TlsAlpn01(addr), Some(running)) = (challenge, &settings.running_listener)
        {
            info!(
                challenge = challenge.name(),
                %addr,
                "answering ACME challenges on the proxy's own listener"
            );
            responder.tls_answers = AlpnAnswers::Registry(running.clone());
            return Ok(responder);
        }
        let listener = match TcpListener::bind(challenge.addr()).await {
            Ok(listener) => listener,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && matches!(challenge, Challenge::TlsAlpn01(_)) =>
            {
                info!(
                    challenge = challenge.name(),
                    addr = %challenge.addr(),
                    dir = %intransit_pki::tls_alpn::challenge_dir(state.root()).display(),
                    "the address is in use: leaving the answers in the state directory for \
                     the intransit proxy listening there"
                );
                responder.tls_answers = AlpnAnswers::Files(state.clone(), Mutex::default());
                return Ok(responder);
            }
            Err(source) => {
                return Err(AcmeError::Bind {
                    challenge: challenge.name(),
                    addr: challenge.addr(),
                    source,
                })
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = match challenge {
            Challenge::Http01(_) => {
                let app = Router::new()
                    .route("/.well-known/acme-challenge/{token}", get(http01_answer))
                    .with_state(http_answers);
                tokio::spawn(async move {
                    let served = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                    if let Err(e) = served {
                        debug!(error = %e, "the HTTP-01 server stopped");
                    }
                })
            }
            Challenge::TlsAlpn01(_) => {
                let registry = TlsAlpnChallenges::new(None);
                let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_setup(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(AlpnCertificates(registry.clone())));
                config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                responder.tls_answers = AlpnAnswers::Registry(registry);
                tokio::spawn(serve_tls_alpn(listener, acceptor, stopped))
            }
        };
        info!(
            challenge = challenge.name(),
            addr = %challenge.addr(),
            "answering ACME challenges"
        );
        responder.stop = Some(stop);
        responder.task = Some(task);
        Ok(responder)
    }

    /// Whether the TLS-ALPN-01 answers went to challenge files, for a proxy
    /// of another process: the state directory, if so.
    pub(crate) fn answers_through_files(&self) -> Option<&StateDir> {
        match &self.tls_answers {
            AlpnAnswers::Files(state, _) => Some(state),
            AlpnAnswers::Registry(_) => None,
        }
    }

    /// Answers the challenge `token` for `identifier` with `key_authorization`.
    pub(crate) fn add(
        &self,
        identifier: &str,
        token: &str,
        key_authorization: &instant_acme::KeyAuthorization,
    ) -> Result<(), AcmeError> {
        if let Challenge::Http01(_) = self.challenge {
            lock(&self.http_answers)
                .insert(token.to_owned(), key_authorization.as_str().to_owned());
            return Ok(());
        }
        let certificate =
            ChallengeCertificate::new(identifier, key_authorization.digest().as_ref()).map_err(
                |e| tls_setup(format!("the TLS-ALPN-01 certificate for {identifier}: {e}")),
            )?;
        match &self.tls_answers {
            AlpnAnswers::Registry(registry) => {
                registry.insert(identifier, certificate);
                lock(&self.answered).push(identifier.to_owned());
            }
            AlpnAnswers::Files(state, written) => {
                let path =
                    write_challenge_file(state, identifier, &certificate).map_err(|source| {
                        AcmeError::Pki {
                            action: "leaving the TLS-ALPN-01 answer in the state directory",
                            source,
                        }
                    })?;
                lock(written).push(path);
            }
        }
        Ok(())
    }

    /// Stops answering, releases the address and removes every answer.
    pub(crate) async fn stop(mut self) {
        self.withdraw();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn withdraw(&self) {
        match &self.tls_answers {
            AlpnAnswers::Registry(registry) => {
                for identifier in lock(&self.answered).drain(..) {
                    registry.remove(&identifier);
                }
            }
            AlpnAnswers::Files(_, written) => {
                for path in lock(written).drain(..) {
                    if let Err(e) = remove_challenge_file(&path) {
                        warn!(file = %path.display(), error = %e, "could not remove a TLS-ALPN-01 answer");
                    }
                }
            }
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.withdraw();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn http01_answer(
    State(answers): State<Arc<Mutex<HashMap<String, String>>>>,
    Path(token): Path<String>,
) -> Result<String, StatusCode> {
    let answer = answers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&token)
        .cloned();
    debug!(token, answered = answer.is_some(), "HTTP-01 request");
    answer.ok_or(StatusCode::NOT_FOUND)
}

async fn serve_tls_alpn(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // The validation is the handshake itself; the CA closes the
            // connection once it has seen the certificate.
            match tokio::time::timeout(CONNECTION_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(mut tls)) => {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.shutdown().await;
                    debug!(%peer, "TLS-ALPN-01 handshake completed");
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS-ALPN-01 handshake failed"),
                Err(_) => debug!(%peer, "TLS-ALPN-01 handshake timed out"),
            }
        });
    }
}

/// The responder's own listener's certificates: the pending answers, by
/// server name.
struct AlpnCertificates(TlsAlpnChallenges);

impl fmt::Debug for AlpnCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlpnCertificates").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for AlpnCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // RFC 8737 section 3: only for the acme-tls/1 protocol.
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if !acme {
            return None;
        }
        let found = self.0.find(hello.server_name()?)?;
        certified_key(&found).ok().map(Arc::new)
    }
}

/// A challenge certificate as rustls serves it.
fn certified_key(certificate: &ChallengeCertificate) -> Result<CertifiedKey, AcmeError> {
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certificate.key_pkcs8_der().to_vec(),
    ));
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
        .map_err(|e| tls_setup(e.to_string()))?;
    Ok(CertifiedKey::new(
        vec![CertificateDer::from(certificate.cert_der().to_vec())],
        signing,
    ))
}

fn tls_setup(detail: String) -> AcmeError {
    AcmeError::Local {
        action: "the TLS-ALPN-01 answer",
        detail,
    }
}
