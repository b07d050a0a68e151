//! intransit's own answers to ACME challenges, served only while an order
//! is pending.
//!
//! - HTTP-01 (RFC 8555 section 8.3): a small axum server that answers
//!   `GET /.well-known/acme-challenge/TOKEN` with the key authorization, and
//!   404 to anything else.
//! - TLS-ALPN-01 (RFC 8737): a TLS listener that completes handshakes only
//!   for ALPN `acme-tls/1`, presenting for the server name asked a
//!   self-signed certificate that names it and carries the critical
//!   acmeIdentifier extension (the SHA-256 of the key authorization). It
//!   is a listener of its own, not the proxy's: the CA connects to port 443.
//!
//! Both bind when the order starts and stop when [`Responder::stop`] is
//! called (or the responder is dropped), so nothing listens between orders.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::AcmeError;

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// How long one validation connection may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Which challenge intransit answers, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP-01, answered by an HTTP server on this address (the CA
    /// connects to port 80).
    Http01(SocketAddr),
    /// TLS-ALPN-01, answered by a TLS listener on this address (the CA
    /// connects to port 443).
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

/// A running challenge server.
pub(crate) struct Responder {
    challenge: Challenge,
    http_answers: Arc<Mutex<HashMap<String, String>>>,
    tls_answers: Arc<AlpnCertificates>,
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
    /// Binds the challenge's address and starts answering (nothing yet).
    pub(crate) async fn start(challenge: Challenge) -> Result<Self, AcmeError> {
        let listener = TcpListener::bind(challenge.addr())
            .await
            .map_err(|source| AcmeError::Bind {
                challenge: challenge.name(),
                addr: challenge.addr(),
                source,
            })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let http_answers = Arc::new(Mutex::new(HashMap::new()));
        let tls_answers = Arc::new(AlpnCertificates::default());
        let task = match challenge {
            Challenge::Http01(_) => {
                let app = Router::new()
                    .route("/.well-known/acme-challenge/{token}", get(http01_answer))
                    .with_state(http_answers.clone());
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
                let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_setup(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(tls_answers.clone());
                config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                tokio::spawn(serve_tls_alpn(listener, acceptor, stopped))
            }
        };
        info!(
            challenge = challenge.name(),
            addr = %challenge.addr(),
            "answering ACME challenges"
        );
        Ok(Self {
            challenge,
            http_answers,
            tls_answers,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Answers the challenge `token` for `identifier` with `key_authorization`.
    pub(crate) fn add(
        &self,
        identifier: &str,
        token: &str,
        key_authorization: &instant_acme::KeyAuthorization,
    ) -> Result<(), AcmeError> {
        match self.challenge {
            Challenge::Http01(_) => {
                self.http_answers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(token.to_owned(), key_authorization.as_str().to_owned());
            }
            Challenge::TlsAlpn01(_) => {
                let certified = alpn_certificate(identifier, key_authorization.digest().as_ref())?;
                self.tls_answers
                    .by_name
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(identifier.to_ascii_lowercase(), Arc::new(certified));
            }
        }
        Ok(())
    }

    /// Stops answering and releases the address.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
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

/// The TLS-ALPN-01 certificates by server name.
#[derive(Default)]
struct AlpnCertificates {
    by_name: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

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
        let name = hello.server_name()?.to_ascii_lowercase();
        self.by_name
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name)
            .cloned()
    }
}

/// The RFC 8737 certificate for `identifier`: self-signed, the identifier
/// as its only subjectAltName, and the acmeIdentifier extension.
fn alpn_certificate(identifier: &str, digest: &[u8]) -> Result<CertifiedKey, AcmeError> {
    let mut params = CertificateParams::new(vec![identifier.to_owned()])
        .map_err(|e| tls_setup(format!("the TLS-ALPN-01 certificate for {identifier}: {e}")))?;
    params
        .custom_extensions
        .push(CustomExtension::new_acme_identifier(digest));
    let key = KeyPair::generate().map_err(|e| tls_setup(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| tls_setup(e.to_string()))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
        .map_err(|e| tls_setup(e.to_string()))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

fn tls_setup(detail: String) -> AcmeError {
    AcmeError::Local {
        action: "the TLS-ALPN-01 answer",
        detail,
    }
}
