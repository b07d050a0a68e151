//! The TLS that clients see: rustls server configuration and client
//! certificate policy.
//!
//! This module owns turning a [`ServerTls`] into a rustls [`ServerConfig`]:
//! loading the certificate chain, key, trust anchors and CRLs, choosing
//! versions, suites and key-exchange groups, and wrapping webpki's client
//! verifier with the listener's identity allow-list. It never reads from or
//! writes to a socket.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use intransit_config::{ClientAuth, ServerTls, TlsVersion};
use intransit_policy::{AllowList, ClientIdentity};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};

use crate::ProxyError;

/// The ALPN protocol id PostgreSQL 17 clients send with direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// How many TLS sessions each listener remembers for stateful resumption.
const SESSION_CACHE_SIZE: usize = 4096;

/// The cryptography every listener uses: aws-lc-rs with the TLS 1.3 AEAD
/// suites, ECDHE AEAD suites for TLS 1.2 when allowed, and key exchange
/// preferring the post-quantum hybrid X25519MLKEM768, then X25519, then P-256.
pub fn crypto_provider() -> CryptoProvider {
    use aws_lc_rs::cipher_suite as cs;
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![
            aws_lc_rs::kx_group::X25519MLKEM768,
            aws_lc_rs::kx_group::X25519,
            aws_lc_rs::kx_group::SECP256R1,
        ],
        ..aws_lc_rs::default_provider()
    }
}

static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS13_AND_TLS12: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    match min {
        TlsVersion::V1_3 => &TLS13_ONLY,
        TlsVersion::V1_2 => &TLS13_AND_TLS12,
    }
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ProxyError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ProxyError::file(what, path, e.to_string()))?;
    if certs.is_empty() {
        return Err(ProxyError::file(
            what,
            path,
            "no PEM CERTIFICATE block found",
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ProxyError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| ProxyError::file("private key", path, e.to_string()))
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, ProxyError> {
    let bytes = std::fs::read(path).map_err(|e| ProxyError::file("CRL", path, e.to_string()))?;
    if bytes.starts_with(b"-----") {
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ProxyError::file("CRL", path, e.to_string()))?;
        if crls.is_empty() {
            return Err(ProxyError::file("CRL", path, "no PEM X509 CRL block found"));
        }
        Ok(crls)
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// One loaded set of TLS material: the rustls configuration built from the
/// files, the client verifier, and what was loaded. Immutable; a reload
/// builds a new one.
pub struct TlsMaterial {
    config: Arc<ServerConfig>,
    verifier: Option<Arc<PolicyVerifier>>,
    /// Summary of the server certificate in use.
    pub server_cert: LoadedCertificate,
    /// The trust anchors client certificates must chain to.
    pub trust_anchors: Vec<LoadedCertificate>,
    /// The client policy this material enforces, for status pages.
    pub policy: PolicySummary,
    /// When this material was loaded.
    pub loaded_at: SystemTime,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("server_cert", &self.server_cert)
            .field("client_auth", &self.verifier.is_some())
            .finish_non_exhaustive()
    }
}

/// The client-facing policy of one route, as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySummary {
    /// Lowest TLS version accepted: `1.3` or `1.2`.
    pub min_version: String,
    /// `required`, `optional` or `none`.
    pub client_auth: String,
    /// Whether a CRL is checked.
    pub crl: bool,
    /// Identity allow-list patterns; empty allows any trusted certificate.
    pub allow: Vec<String>,
}

/// What the proxy knows about a certificate it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCertificate {
    /// Subject distinguished name.
    pub subject: String,
    /// Serial number, uppercase hex.
    pub serial: String,
    /// Subject alternative names: `DNS:`, `IP:` and `URI:` prefixed.
    pub sans: Vec<String>,
    /// SHA-256 fingerprint of the DER certificate.
    pub fingerprint_sha256: String,
    /// Expiry, as seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl LoadedCertificate {
    fn from_der(der: &CertificateDer<'_>, path: &Path) -> Result<Self, ProxyError> {
        let summary = intransit_pki::summarize(der.as_ref())
            .map_err(|e| ProxyError::file("certificate", path, e.to_string()))?;
        let sans = summary
            .dns_names
            .iter()
            .map(|d| format!("DNS:{d}"))
            .chain(summary.ip_addresses.iter().map(|ip| format!("IP:{ip}")))
            .chain(summary.uris.iter().map(|u| format!("URI:{u}")))
            .collect();
        Ok(LoadedCertificate {
            subject: summary.subject,
            serial: summary.serial_hex,
            sans,
            fingerprint_sha256: summary.fingerprint_sha256,
            not_after_unix: summary.not_after.unix_timestamp(),
        })
    }
}

impl TlsMaterial {
    /// The rustls configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Checks a peer chain again, as for a fresh handshake. Resumed TLS
    /// sessions skip certificate verification inside rustls, so the proxy
    /// re-applies trust, expiry, revocation and the allow-list itself.
    pub fn reverify(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return if verifier.client_auth_mandatory() {
                Err(rustls::Error::NoCertificatesPresented)
            } else {
                Ok(())
            };
        };
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
    }
}

/// The TLS state of one listener. New handshakes take the current
/// [`TlsMaterial`]; [`ListenerTls::reload`] swaps in new material only after
/// all of it loaded and checked, so a bad file never takes effect and
/// established connections keep the material they started with.
pub struct ListenerTls {
    current: RwLock<Arc<TlsMaterial>>,
    /// ALPN protocols offered: `postgresql` for PostgreSQL listeners,
    /// none for plain TLS (the client's choice is then not constrained).
    alpn: Vec<Vec<u8>>,
    // Kept across reloads so clients can resume sessions after a renewal;
    // resumed sessions are re-verified against the new material anyway.
    session_storage: Arc<dyn rustls::server::StoresServerSessions>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("current", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Loads the files a listener names and builds its TLS configuration.
    pub fn build(tls: &ServerTls, alpn: Vec<Vec<u8>>) -> Result<Self, ProxyError> {
        let session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        let ticketer = aws_lc_rs::Ticketer::new().map_err(|e| ProxyError::Tls(e.to_string()))?;
        let material = build_material(tls, &alpn, session_storage.clone(), ticketer.clone())?;
        Ok(ListenerTls {
            current: RwLock::new(Arc::new(material)),
            alpn,
            session_storage,
            ticketer,
        })
    }

    /// The material new handshakes use now.
    pub fn snapshot(&self) -> Arc<TlsMaterial> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            // A panic while holding the lock cannot leave a half-written
            // Arc behind, so the value is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Loads `tls` afresh and, if everything loads and checks, makes it the
    /// material for new handshakes. On error the old material stays.
    pub fn reload(&self, tls: &ServerTls) -> Result<Arc<TlsMaterial>, ProxyError> {
        let material = Arc::new(build_material(
            tls,
            &self.alpn,
            self.session_storage.clone(),
            self.ticketer.clone(),
        )?);
        match self.current.write() {
            Ok(mut guard) => *guard = material.clone(),
            Err(poisoned) => *poisoned.into_inner() = material.clone(),
        }
        Ok(material)
    }
}

fn build_material(
    tls: &ServerTls,
    alpn: &[Vec<u8>],
    session_storage: Arc<dyn rustls::server::StoresServerSessions>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
) -> Result<TlsMaterial, ProxyError> {
    let provider = Arc::new(crypto_provider());
    let chain = load_certs(&tls.cert, "server certificate")?;
    let server_cert = LoadedCertificate::from_der(&chain[0], &tls.cert)?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if server_cert.not_after_unix < now {
        return Err(ProxyError::file(
            "server certificate",
            &tls.cert,
            format!("expired (serial {})", server_cert.serial),
        ));
    }
    let key = load_key(&tls.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(tls.min_version))
        .map_err(|e| ProxyError::Tls(e.to_string()))?;
    let mut trust_anchors = Vec::new();
    let (builder, verifier) = match tls.client_auth {
        ClientAuth::None => (builder.with_no_client_auth(), None),
        ClientAuth::Required | ClientAuth::Optional => {
            let Some(ca_path) = &tls.client_ca else {
                return Err(ProxyError::Tls(
                    "client_auth needs client_ca (the configuration check should have caught this)"
                        .into(),
                ));
            };
            let mut roots = RootCertStore::empty();
            for cert in load_certs(ca_path, "client CA")? {
                trust_anchors.push(LoadedCertificate::from_der(&cert, ca_path)?);
                roots
                    .add(cert)
                    .map_err(|e| ProxyError::file("client CA", ca_path, e.to_string()))?;
            }
            let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl) = &tls.crl {
                vb = vb.with_crls(load_crls(crl)?);
            }
            if tls.client_auth == ClientAuth::Optional {
                vb = vb.allow_unauthenticated();
            }
            let inner = vb.build().map_err(|e| ProxyError::Tls(e.to_string()))?;
            let verifier = Arc::new(PolicyVerifier {
                inner,
                allow: tls.allow.clone(),
            });
            (
                builder.with_client_cert_verifier(verifier.clone()),
                Some(verifier),
            )
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| ProxyError::file("server certificate and key", &tls.cert, e.to_string()))?;
    config.alpn_protocols = alpn.to_vec();
    // Our order (AES-128-GCM first) rather than the client's: libpq asks for
    // AES-256-GCM-SHA384 first, which costs more for no practical gain.
    config.ignore_client_order = true;
    config.session_storage = session_storage;
    config.ticketer = ticketer;
    Ok(TlsMaterial {
        config: Arc::new(config),
        verifier,
        server_cert,
        trust_anchors,
        policy: PolicySummary {
            min_version: tls.min_version.to_string(),
            client_auth: tls.client_auth.to_string(),
            crl: tls.crl.is_some(),
            allow: tls.allow.patterns().iter().map(|p| p.to_string()).collect(),
        },
        loaded_at: SystemTime::now(),
    })
}

/// webpki's client verifier plus the listener's identity allow-list, so an
/// identity that is not allowed fails the handshake with `access_denied`.
/// It also records the presented certificate for the connection's log.
#[derive(Debug)]
pub struct PolicyVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: AllowList,
}

impl ClientCertVerifier for PolicyVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        PresentedCertificate::record(end_entity);
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allow.is_empty() {
            return Ok(verified);
        }
        let identity = ClientIdentity::from_der(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.allow.permits(&identity).is_allowed() {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The end-entity certificate a client presented during one handshake,
/// whether or not it was accepted, so that a refusal can be logged with the
/// identity that was refused.
#[derive(Debug, Clone, Default)]
pub struct PresentedCertificate(Arc<Mutex<Option<CertificateDer<'static>>>>);

tokio::task_local! {
    static PRESENTED: PresentedCertificate;
}

impl PresentedCertificate {
    /// Runs a handshake future with this slot visible to the verifier. The
    /// verifier is called synchronously while the future is polled, inside
    /// the connection's task, so a task-local reaches it without giving
    /// every connection its own rustls configuration.
    pub async fn scope<F: std::future::Future>(&self, handshake: F) -> F::Output {
        PRESENTED.scope(self.clone(), handshake).await
    }

    fn record(cert: &CertificateDer<'_>) {
        let _ = PRESENTED.try_with(|slot| {
            if let Ok(mut slot) = slot.0.lock() {
                *slot = Some(cert.clone().into_owned());
            }
        });
    }

    /// The presented certificate, if any.
    pub fn der(&self) -> Option<CertificateDer<'static>> {
        self.0.lock().ok()?.clone()
    }

    /// The identity in the presented certificate, if one was presented and
    /// parses.
    pub fn identity(&self) -> Option<ClientIdentity> {
        let slot = self.0.lock().ok()?;
        ClientIdentity::from_der(slot.as_ref()?.as_ref()).ok()
    }
}
