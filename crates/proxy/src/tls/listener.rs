//! The TLS that clients see: rustls server configuration and client
//! certificate policy.
//!
//! This module owns turning a [`ServerTls`] into a rustls [`ServerConfig`]:
//! loading the certificate chain, key, trust anchors and CRLs, choosing
//! versions, suites and key-exchange groups, and wrapping webpki's client
//! verifier with the listener's identity allow-list. It never reads from or
//! writes to a socket.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use intransit_config::{ClientAuth, ServerTls, StaleCrl, TlsVersion};
use intransit_pki::{crl_freshness, ChallengeCertificate, CrlFreshness};
use intransit_policy::{AllowList, ClientIdentity};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};

use crate::error::ProxyError;
use crate::refusal;
use crate::tls::material::{self, SourceFingerprint};
use crate::tls::reloadable::{Fingerprinted, ReloadError, ReloadFailure, Reloadable, Reloaded};

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
    material::parse_certs(&material::read(path, what)?, path, what)
}

fn parse_crls(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, ProxyError> {
    if bytes.starts_with(b"-----") {
        let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ProxyError::file("CRL", path, intransit_pki::describe_pem_error(&e)))?;
        if crls.is_empty() {
            return Err(ProxyError::file("CRL", path, "no PEM X509 CRL block found"));
        }
        Ok(crls)
    } else if bytes.is_empty() {
        Err(ProxyError::file("CRL", path, "the file is empty"))
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())])
    }
}

/// The bytes of every file a route's TLS names, read once so that what is
/// fingerprinted is exactly what is parsed.
struct ServerTlsFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
    crl: Option<Vec<u8>>,
}

impl ServerTlsFiles {
    fn read(tls: &ServerTls) -> Result<Self, ProxyError> {
        Ok(ServerTlsFiles {
            cert: material::read(&tls.cert, "server certificate")?,
            key: material::read(&tls.key, "private key")?,
            client_ca: match (&tls.client_auth, &tls.client_ca) {
                (ClientAuth::None, _) | (_, None) => None,
                (_, Some(path)) => Some(material::read(path, "client CA")?),
            },
            crl: match (&tls.client_auth, &tls.crl) {
                (ClientAuth::None, _) | (_, None) => None,
                (_, Some(path)) => Some(material::read(path, "CRL")?),
            },
        })
    }

    fn fingerprint(&self, tls: &ServerTls) -> SourceFingerprint {
        SourceFingerprint::of(
            tls,
            &[
                Some(&self.cert),
                Some(&self.key),
                self.client_ca.as_deref(),
                self.crl.as_deref(),
            ],
        )
    }
}

/// One loaded set of TLS material: the rustls configuration built from the
/// files, the client verifier, and what was loaded. Immutable; a reload
/// builds a new one.
pub struct TlsMaterial {
    config: Arc<ServerConfig>,
    verifier: Option<Arc<PolicyVerifier>>,
    /// The settings this material was built from; a reload triggered by a
    /// file change rebuilds from them.
    settings: ServerTls,
    source: SourceFingerprint,
    /// Summary of the server certificate in use.
    pub server_cert: LoadedCertificate,
    /// The trust anchors client certificates must chain to.
    pub trust_anchors: Vec<LoadedCertificate>,
    /// The CRLs client certificates are checked against.
    pub crls: Vec<LoadedCrl>,
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
            .field("source", &self.source)
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
    /// What happens to client certificates once a CRL is past its
    /// nextUpdate.
    pub stale_crl: StaleCrl,
    /// Identity allow-list patterns; empty allows any trusted certificate.
    pub allow: Vec<String>,
}

/// What the proxy knows about a CRL it checks client certificates against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCrl {
    /// The file it came from.
    pub path: PathBuf,
    /// Issuer distinguished name: the client CA whose certificates it covers.
    pub issuer: String,
    /// thisUpdate, as seconds since the Unix epoch.
    pub this_update_unix: i64,
    /// nextUpdate, as seconds since the Unix epoch; `None` when the CRL
    /// has none (it then never goes stale).
    pub next_update_unix: Option<i64>,
}

impl LoadedCrl {
    pub(crate) fn from_der(der: &[u8], path: &Path) -> Result<Self, ProxyError> {
        let (_, parsed) = x509_parser::parse_x509_crl(der)
            .map_err(|e| ProxyError::file("CRL", path, format!("does not parse: {e}")))?;
        Ok(LoadedCrl {
            path: path.to_owned(),
            issuer: parsed.issuer().to_string(),
            this_update_unix: parsed.last_update().timestamp(),
            next_update_unix: parsed.next_update().map(|t| t.timestamp()),
        })
    }

    /// Whether the CRL is past its nextUpdate at `now` (Unix seconds).
    pub fn is_stale(&self, now: i64) -> bool {
        self.next_update_unix.is_some_and(|next| next <= now)
    }

    /// How fresh the CRL is at `now` (Unix seconds), judged against its own
    /// validity period by [`intransit_pki::crl_freshness`].
    pub fn freshness(&self, now: i64) -> CrlFreshness {
        // Times from an X.509 CRL are within what `OffsetDateTime` holds.
        let at = |unix: i64| {
            time::OffsetDateTime::from_unix_timestamp(unix)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        };
        crl_freshness(
            at(self.this_update_unix),
            self.next_update_unix.map(at),
            at(now),
        )
    }
}

/// What the proxy knows about a certificate it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedCertificate {
    /// Subject distinguished name.
    pub subject: String,
    /// Serial number, uppercase hex.
    pub serial: String,
    /// Subject alternative names: `DNS:`, `IP:` and `URI:` prefixed.
    pub sans: Vec<String>,
    /// SHA-256 fingerprint of the DER certificate.
    pub fingerprint_sha256: String,
    /// Start of validity, as seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// Expiry, as seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl LoadedCertificate {
    pub(crate) fn from_der(
        der: &CertificateDer<'_>,
        path: &Path,
        what: &str,
    ) -> Result<Self, ProxyError> {
        let summary = intransit_pki::summarize(der.as_ref())
            .map_err(|e| ProxyError::file(what, path, e.to_string()))?;
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
            not_before_unix: summary.not_before.unix_timestamp(),
            not_after_unix: summary.not_after.unix_timestamp(),
        })
    }

    pub(crate) fn validity(&self) -> material::Validity {
        material::Validity {
            not_before: self.not_before_unix,
            not_after: self.not_after_unix,
        }
    }
}

impl TlsMaterial {
    /// The rustls configuration new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The settings this material was built from.
    pub fn settings(&self) -> &ServerTls {
        &self.settings
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
/// all of it loaded and checked (see [`Reloadable`]).
pub struct ListenerTls {
    material: Reloadable<TlsMaterial>,
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

impl Fingerprinted for TlsMaterial {
    fn source(&self) -> SourceFingerprint {
        self.source
    }
}

impl ListenerTls {
    /// Loads the files a listener names and builds its TLS configuration.
    pub fn build(tls: &ServerTls, alpn: Vec<Vec<u8>>) -> Result<Self, ProxyError> {
        let session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        let ticketer = aws_lc_rs::Ticketer::new().map_err(|e| ProxyError::Tls(e.to_string()))?;
        let files = ServerTlsFiles::read(tls)?;
        let material = build_material(
            tls,
            &files,
            &alpn,
            session_storage.clone(),
            ticketer.clone(),
        )?;
        Ok(ListenerTls {
            material: Reloadable::new(material),
            alpn,
            session_storage,
            ticketer,
        })
    }

    /// The material new handshakes use now.
    pub fn snapshot(&self) -> Arc<TlsMaterial> {
        self.material.snapshot()
    }

    /// Why the latest reload failed, unless a later one succeeded or found
    /// the files back to what is in service.
    pub fn last_failure(&self) -> Option<ReloadFailure> {
        self.material.last_failure()
    }

    /// Reads the files `tls` names and, when they or the settings differ
    /// from the material in service, builds and checks new material and
    /// makes it the material for new handshakes. On error the old material
    /// stays.
    pub fn reload(&self, tls: &ServerTls) -> Result<Reloaded<TlsMaterial>, ReloadError> {
        self.material.reload(
            || ServerTlsFiles::read(tls).map(|files| (files.fingerprint(tls), files)),
            |files| {
                build_material(
                    tls,
                    &files,
                    &self.alpn,
                    self.session_storage.clone(),
                    self.ticketer.clone(),
                )
            },
        )
    }
}

/// The client-certificate verifier of a route requiring or accepting
/// client certificates, and the anchors it trusts, from the contents of
/// its `client_ca` and `crl` files: every anchor parses and is summarised;
/// with a CRL file, every CRL parses and was issued by an anchor, and
/// every anchor has one.
pub(crate) fn client_verifier(
    tls: &ServerTls,
    client_ca: Option<&[u8]>,
    crl: Option<&[u8]>,
    provider: Arc<CryptoProvider>,
) -> Result<ClientTrust, ProxyError> {
    let (Some(ca_path), Some(ca_bytes)) = (&tls.client_ca, client_ca) else {
        return Err(ProxyError::Tls(
            "client_auth needs client_ca (the configuration check should have caught this)".into(),
        ));
    };
    let mut roots = RootCertStore::empty();
    let mut trust_anchors = Vec::new();
    let mut loaded_crls = Vec::new();
    let anchors = material::parse_certs(ca_bytes, ca_path, "client CA")?;
    for cert in &anchors {
        trust_anchors.push(LoadedCertificate::from_der(cert, ca_path, "client CA")?);
        roots
            .add(cert.clone())
            .map_err(|e| ProxyError::file("client CA", ca_path, e.to_string()))?;
    }
    let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if let (Some(crl_path), Some(crl_bytes)) = (&tls.crl, crl) {
        let crls = parse_crls(crl_bytes, crl_path)?;
        for der in &crls {
            material::check_crl_issuer(der, &anchors, crl_path, ca_path)?;
            loaded_crls.push(LoadedCrl::from_der(der, crl_path)?);
        }
        material::check_crls_cover_anchors(&crls, &anchors, crl_path, ca_path)?;
        vb = vb.with_crls(crls);
        // webpki ignores nextUpdate unless asked; a stale CRL then
        // vouches for certificates revoked after it was issued.
        if tls.stale_crl == StaleCrl::Refuse {
            vb = vb.enforce_revocation_expiration();
        }
    }
    if tls.client_auth == ClientAuth::Optional {
        vb = vb.allow_unauthenticated();
    }
    let inner = vb.build().map_err(|e| ProxyError::Tls(e.to_string()))?;
    let verifier = Arc::new(PolicyVerifier {
        inner,
        allow: tls.allow.clone(),
        crls: loaded_crls.clone(),
        stale_crl: tls.stale_crl,
        stale_logged: AtomicBool::new(false),
    });
    Ok(ClientTrust {
        verifier,
        anchors: trust_anchors,
        crls: loaded_crls,
    })
}

/// A route's client verifier and what it was built from.
pub(crate) struct ClientTrust {
    pub(crate) verifier: Arc<PolicyVerifier>,
    /// The client CA's certificates, for `/status`.
    pub(crate) anchors: Vec<LoadedCertificate>,
    /// The CRLs with their issuers and nextUpdate.
    pub(crate) crls: Vec<LoadedCrl>,
}

/// The configuration of one answer to an ACME CA's TLS-ALPN-01
/// validation (RFC 8737): the challenge certificate, ALPN `acme-tls/1`
/// only, no client certificate asked, no session to resume. Built for
/// each validation, which is rare, and never used for a client.
pub(crate) fn acme_validation_config(
    certificate: &ChallengeCertificate,
) -> Result<Arc<ServerConfig>, ProxyError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certificate.key_pkcs8_der().to_vec(),
    ));
    let provider = Arc::new(crypto_provider());
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| ProxyError::Tls(e.to_string()))?;
    let cert = CertificateDer::from(certificate.cert_der().to_vec());
    // A resolver rather than `with_single_cert`, which would check the
    // certificate as a web server's and refuse the critical acmeIdentifier
    // extension RFC 8737 requires.
    let answer =
        rustls::sign::SingleCertAndKey::from(rustls::sign::CertifiedKey::new(vec![cert], signing));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(TlsVersion::V1_2))
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(answer));
    config.alpn_protocols = vec![intransit_pki::ACME_TLS_ALPN.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

fn build_material(
    tls: &ServerTls,
    files: &ServerTlsFiles,
    alpn: &[Vec<u8>],
    session_storage: Arc<dyn rustls::server::StoresServerSessions>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
) -> Result<TlsMaterial, ProxyError> {
    let provider = Arc::new(crypto_provider());
    const WHAT: &str = "server certificate";
    let chain = material::parse_certs(&files.cert, &tls.cert, WHAT)?;
    let server_cert = LoadedCertificate::from_der(&chain[0], &tls.cert, WHAT)?;
    material::check_valid_now(server_cert.validity(), &server_cert.serial, &tls.cert, WHAT)?;
    material::check_chain_links(
        &chain,
        &provider,
        webpki::KeyUsage::server_auth(),
        &tls.cert,
        WHAT,
    )?;
    let key = material::parse_key(&files.key, &tls.key, "private key")?;
    material::check_key_matches(&chain, &key, &provider, &tls.cert, &tls.key, "private key")?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(tls.min_version))
        .map_err(|e| ProxyError::Tls(e.to_string()))?;
    let (builder, verifier, trust_anchors, loaded_crls) = match tls.client_auth {
        ClientAuth::None => (builder.with_no_client_auth(), None, Vec::new(), Vec::new()),
        ClientAuth::Required | ClientAuth::Optional => {
            let ClientTrust {
                verifier,
                anchors,
                crls,
            } = client_verifier(
                tls,
                files.client_ca.as_deref(),
                files.crl.as_deref(),
                provider,
            )?;
            (
                builder.with_client_cert_verifier(verifier.clone()),
                Some(verifier),
                anchors,
                crls,
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
        settings: tls.clone(),
        source: files.fingerprint(tls),
        server_cert,
        trust_anchors,
        crls: loaded_crls,
        policy: PolicySummary {
            min_version: tls.min_version.to_string(),
            client_auth: tls.client_auth.to_string(),
            crl: tls.crl.is_some(),
            stale_crl: tls.stale_crl,
            allow: tls.allow.patterns().iter().map(|p| p.to_string()).collect(),
        },
        loaded_at: SystemTime::now(),
    })
}

/// webpki's client verifier plus the listener's identity allow-list, so an
/// identity that is not allowed fails the handshake with `access_denied`.
/// It also records the presented certificate for the connection's log,
/// names the CRL file and CA behind a stale-CRL refusal, and refuses an
/// RSA key too small to verify with as such, before webpki would report
/// its signature as bad.
#[derive(Debug)]
pub struct PolicyVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: AllowList,
    crls: Vec<LoadedCrl>,
    stale_crl: StaleCrl,
    /// Set once this material has logged that a CRL went stale, so a busy
    /// listener says it once per load rather than once per connection.
    stale_logged: AtomicBool,
}

impl PolicyVerifier {
    /// Turns webpki's verdict into one that says what is wrong: a stale
    /// CRL named by file and issuer, a weak key instead of a bad signature.
    fn explain(
        &self,
        error: rustls::Error,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> rustls::Error {
        match &error {
            rustls::Error::InvalidCertificate(CertificateError::ExpiredRevocationListContext {
                next_update,
                ..
            }) => {
                let next_update = next_update.as_secs() as i64;
                let Some(crl) = self
                    .crls
                    .iter()
                    .find(|c| c.next_update_unix == Some(next_update))
                else {
                    return error;
                };
                self.log_stale_once(crl);
                refusal::StaleCrl {
                    path: crl.path.clone(),
                    issuer: crl.issuer.clone(),
                    next_update,
                }
                .into()
            }
            rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
                std::iter::once(end_entity)
                    .chain(intermediates)
                    .find_map(material::weak_key)
                    .map_or(error, rustls::Error::from)
            }
            _ => error,
        }
    }

    /// Logs, once per loaded material, that a CRL is stale and what the
    /// listener does about it.
    fn log_stale_once(&self, crl: &LoadedCrl) {
        if self.stale_logged.swap(true, Ordering::Relaxed) {
            return;
        }
        let next_update = refusal::rfc3339(crl.next_update_unix.unwrap_or_default());
        match self.stale_crl {
            StaleCrl::Refuse => tracing::warn!(
                crl = %crl.path.display(),
                issuer = %crl.issuer,
                next_update = %next_update,
                "CRL is past its nextUpdate: client certificates of this CA are refused (crl_expired) until a fresh CRL is installed"
            ),
            StaleCrl::Allow => tracing::warn!(
                crl = %crl.path.display(),
                issuer = %crl.issuer,
                next_update = %next_update,
                "CRL is past its nextUpdate and stale_crl = \"allow\": client certificates of this CA are admitted although one revoked since the CRL was issued would not be in it"
            ),
        }
    }
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
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| self.explain(e, end_entity, intermediates))?;
        // webpki accepts the chain (the CA's signature is fine) and only the
        // client's own signature with that key would fail, as BadSignature.
        if let Some(weak) = material::weak_key(end_entity) {
            return Err(weak.into());
        }
        if self.stale_crl == StaleCrl::Allow {
            let now = now.as_secs() as i64;
            if let Some(stale) = self.crls.iter().find(|c| c.is_stale(now)) {
                self.log_stale_once(stale);
            }
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use intransit_pki::ACME_TLS_ALPN;
    use intransit_pki::{
        CertificateAuthority, CertificateKind, IssueRequest, IssuedCertificate, KeyAlgorithm,
        Validity,
    };
    use rustls::pki_types::CertificateDer;

    fn ca(name: &str) -> CertificateAuthority {
        CertificateAuthority::generate(name, KeyAlgorithm::EcdsaP256, Validity::days_from_now(10))
            .unwrap()
    }

    fn server(ca: &CertificateAuthority, validity: Validity) -> IssuedCertificate {
        ca.issue(&IssueRequest {
            kind: CertificateKind::Server,
            common_name: "localhost".into(),
            dns_names: vec!["localhost".into()],
            ip_addresses: vec![],
            uris: vec![],
            key: KeyAlgorithm::EcdsaP256,
            validity,
        })
        .unwrap()
    }

    struct Files {
        dir: tempfile::TempDir,
        tls: ServerTls,
    }

    impl Files {
        fn new(ca: &CertificateAuthority, first: &IssuedCertificate) -> Files {
            let dir = tempfile::tempdir().unwrap();
            let tls = ServerTls {
                cert: dir.path().join("chain.pem"),
                key: dir.path().join("key.pem"),
                client_ca: Some(dir.path().join("ca.pem")),
                crl: None,
                stale_crl: intransit_config::StaleCrl::Refuse,
                min_version: TlsVersion::V1_3,
                client_auth: ClientAuth::Required,
                allow: AllowList::default(),
            };
            std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
            let files = Files { dir, tls };
            files.install(first);
            files
        }

        fn install(&self, issued: &IssuedCertificate) {
            std::fs::write(&self.tls.cert, issued.chain_pem()).unwrap();
            std::fs::write(&self.tls.key, &issued.key_pem).unwrap();
        }
    }

    fn fingerprint(issued: &IssuedCertificate) -> String {
        let der = intransit_pki::pem_to_der_certs(&issued.cert_pem).unwrap();
        intransit_pki::sha256_fingerprint(&der[0])
    }

    fn served(tls: &ListenerTls) -> String {
        tls.snapshot().server_cert.fingerprint_sha256.clone()
    }

    #[test]
    fn unchanged_files_are_not_rebuilt_and_changed_ones_are_swapped() {
        let ca = ca("test CA");
        let (one, two) = (
            server(&ca, Validity::days_from_now(5)),
            server(&ca, Validity::days_from_now(5)),
        );
        let files = Files::new(&ca, &one);
        let tls = ListenerTls::build(&files.tls, Vec::new()).unwrap();
        let first = tls.snapshot();
        assert!(matches!(
            tls.reload(&files.tls).unwrap(),
            Reloaded::Unchanged(m) if Arc::ptr_eq(&m, &first)
        ));
        files.install(&two);
        assert!(matches!(
            tls.reload(&files.tls).unwrap(),
            Reloaded::Swapped(_)
        ));
        assert_eq!(served(&tls), fingerprint(&two));
        // A grown trust bundle is a change too.
        let mut bundle = ca.cert_pem().to_owned();
        bundle.push_str(self::ca("second CA").cert_pem());
        std::fs::write(files.tls.client_ca.as_ref().unwrap(), bundle).unwrap();
        let grown = tls.reload(&files.tls).unwrap();
        assert_eq!(grown.material().trust_anchors.len(), 2);
        assert!(files.dir.path().exists());
    }

    /// Each bad replacement is refused with its reason, the material in
    /// service stays, and putting the good files back clears the failure.
    #[test]
    fn bad_material_is_refused_whole_and_the_old_stays() {
        let ca = ca("test CA");
        let good = server(&ca, Validity::days_from_now(5));
        let files = Files::new(&ca, &good);
        let tls = ListenerTls::build(&files.tls, Vec::new()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let expired = server(
            &ca,
            Validity {
                not_before: now - time::Duration::days(3),
                not_after: now - time::Duration::days(1),
            },
        );
        let future = server(
            &ca,
            Validity {
                not_before: now + time::Duration::days(1),
                not_after: now + time::Duration::days(3),
            },
        );
        let other = server(&ca, Validity::days_from_now(5));
        let foreign = server(&self::ca("other CA"), Validity::days_from_now(5));
        let chain = good.chain_pem();
        let cases: Vec<(&str, String, String, &str)> = vec![
            (
                "expired",
                expired.chain_pem(),
                expired.key_pem.clone(),
                "expired at",
            ),
            (
                "not yet valid",
                future.chain_pem(),
                future.key_pem.clone(),
                "not valid before",
            ),
            (
                "key of another certificate",
                chain.clone(),
                other.key_pem.clone(),
                "does not belong to the certificate",
            ),
            (
                "truncated certificate",
                chain[..chain.len() / 2].to_owned(),
                good.key_pem.clone(),
                "is the file complete?",
            ),
            (
                "truncated key",
                chain.clone(),
                good.key_pem[..good.key_pem.len() / 2].to_owned(),
                "is the file complete?",
            ),
            (
                "empty certificate",
                String::new(),
                good.key_pem.clone(),
                "no PEM CERTIFICATE block",
            ),
            (
                "garbage",
                "not a certificate\n".into(),
                good.key_pem.clone(),
                "no PEM CERTIFICATE block",
            ),
            (
                "leaf with a foreign CA",
                format!("{}{}", foreign.cert_pem, ca.cert_pem()),
                foreign.key_pem.clone(),
                "the chain does not build",
            ),
        ];
        for (case, cert, key, reason) in cases {
            std::fs::write(&files.tls.cert, &cert).unwrap();
            std::fs::write(&files.tls.key, &key).unwrap();
            let err = tls.reload(&files.tls).expect_err(case);
            assert!(err.to_string().contains(reason), "{case}: {err}");
            // Words, never the bytes of a PEM label as a list of numbers.
            assert!(!err.to_string().contains('['), "{case}: {err}");
            assert!(!err.repeated, "{case}");
            assert!(tls.reload(&files.tls).unwrap_err().repeated, "{case}");
            assert_eq!(served(&tls), fingerprint(&good), "{case}");
            assert!(tls.last_failure().is_some(), "{case}");
        }
        files.install(&good);
        assert!(matches!(
            tls.reload(&files.tls).unwrap(),
            Reloaded::Unchanged(_)
        ));
        assert!(tls.last_failure().is_none());
    }

    #[test]
    fn a_crl_must_come_from_a_client_ca() {
        let ca = ca("test CA");
        let files = Files::new(&ca, &server(&ca, Validity::days_from_now(5)));
        let crl_path = files.dir.path().join("ca.crl");
        let mut tls_config = files.tls.clone();
        tls_config.crl = Some(crl_path.clone());
        std::fs::write(
            &crl_path,
            ca.crl_pem(&[], time::Duration::days(7), 1).unwrap(),
        )
        .unwrap();
        let tls = ListenerTls::build(&tls_config, Vec::new()).unwrap();
        assert!(tls.snapshot().policy.crl);

        let other = self::ca("other CA");
        std::fs::write(
            &crl_path,
            other.crl_pem(&[], time::Duration::days(7), 2).unwrap(),
        )
        .unwrap();
        let err = tls.reload(&tls_config).unwrap_err();
        assert!(
            err.to_string().contains("which is none of the client CAs"),
            "{err}"
        );
        assert!(ListenerTls::build(&tls_config, Vec::new()).is_err());
    }

    #[test]
    fn every_client_ca_needs_its_crl_in_the_file() {
        let ca = ca("test CA");
        let second = self::ca("second CA");
        let files = Files::new(&ca, &server(&ca, Validity::days_from_now(5)));
        let ca_bundle = files.tls.client_ca.clone().unwrap();
        std::fs::write(
            &ca_bundle,
            format!("{}{}", ca.cert_pem(), second.cert_pem()),
        )
        .unwrap();
        let crl_path = files.dir.path().join("ca.crl");
        let mut tls_config = files.tls.clone();
        tls_config.crl = Some(crl_path.clone());
        let first_crl = ca.crl_pem(&[], time::Duration::days(7), 1).unwrap();
        std::fs::write(&crl_path, &first_crl).unwrap();
        let err = ListenerTls::build(&tls_config, Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("has no CRL from the client CA")
                && err.to_string().contains("second CA"),
            "{err}"
        );

        // Both CRLs in one file: accepted.
        let second_crl = second.crl_pem(&[], time::Duration::days(7), 1).unwrap();
        std::fs::write(&crl_path, format!("{first_crl}{second_crl}")).unwrap();
        let tls = ListenerTls::build(&tls_config, Vec::new()).unwrap();
        assert!(tls.snapshot().policy.crl);
    }

    /// A CA made with rcgen directly, for leaves the CA crate refuses to
    /// issue (CA:TRUE leaves, RSA-1024 keys) and CRLs dated in the past.
    struct RawCa {
        pem: String,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    fn raw_ca() -> RawCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "raw test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        RawCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn client_params(now: time::OffsetDateTime) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "trainer");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(5);
        params
    }

    fn crl_pem(
        ca: &RawCa,
        this_update: time::OffsetDateTime,
        next_update: time::OffsetDateTime,
    ) -> String {
        rcgen::CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    /// The listener's own files, with `ca` as the client CA and `crl`.
    fn listener_trusting(ca: &RawCa, crl: Option<&str>, stale_crl: StaleCrl) -> (Files, ServerTls) {
        let server_ca = self::ca("server CA");
        let files = Files::new(&server_ca, &server(&server_ca, Validity::days_from_now(5)));
        std::fs::write(files.tls.client_ca.as_ref().unwrap(), &ca.pem).unwrap();
        let mut tls = files.tls.clone();
        if let Some(crl) = crl {
            let path = files.dir.path().join("ca.crl");
            std::fs::write(&path, crl).unwrap();
            tls.crl = Some(path);
        }
        tls.stale_crl = stale_crl;
        (files, tls)
    }

    fn verdict(tls: &ServerTls, leaf: &CertificateDer<'static>) -> Result<(), rustls::Error> {
        ListenerTls::build(tls, Vec::new())
            .unwrap()
            .snapshot()
            .reverify(std::slice::from_ref(leaf))
    }

    #[test]
    fn a_stale_crl_refuses_by_default_and_names_its_file() {
        let ca = raw_ca();
        let now = time::OffsetDateTime::now_utc();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = client_params(now)
            .signed_by(&key, &ca.issuer)
            .unwrap()
            .der()
            .clone();
        let stale = crl_pem(
            &ca,
            now - time::Duration::days(30),
            now - time::Duration::days(23),
        );

        let (_files, refusing) = listener_trusting(&ca, Some(&stale), StaleCrl::Refuse);
        let material = ListenerTls::build(&refusing, Vec::new())
            .unwrap()
            .snapshot();
        assert!(material.crls[0].is_stale(now.unix_timestamp()));
        let err = verdict(&refusing, &leaf).unwrap_err();
        assert_eq!(
            refusal::RefusalReason::from_tls_error(&err),
            refusal::RefusalReason::CrlExpired
        );
        let detail = refusal::describe_tls_error(&err);
        assert!(
            detail.contains("ca.crl") && detail.contains("raw test CA") && detail.contains("stale"),
            "{detail}"
        );

        let (_files, allowing) = listener_trusting(&ca, Some(&stale), StaleCrl::Allow);
        verdict(&allowing, &leaf).unwrap();

        // A fresh CRL admits the same certificate under the default.
        let fresh = crl_pem(
            &ca,
            now - time::Duration::days(1),
            now + time::Duration::days(6),
        );
        let (_files, fresh) = listener_trusting(&ca, Some(&fresh), StaleCrl::Refuse);
        verdict(&fresh, &leaf).unwrap();
    }

    #[test]
    fn misleading_verdicts_get_their_own_reasons() {
        use refusal::RefusalReason as R;
        let ca = raw_ca();
        let now = time::OffsetDateTime::now_utc();
        let (_files, tls) = listener_trusting(&ca, None, StaleCrl::Refuse);

        let mut future = client_params(now);
        future.not_before = now + time::Duration::days(1);
        let key = rcgen::KeyPair::generate().unwrap();
        let future = future.signed_by(&key, &ca.issuer).unwrap().der().clone();

        let mut as_ca = client_params(now);
        as_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let as_ca = as_ca.signed_by(&key, &ca.issuer).unwrap().der().clone();

        let weak =
            rcgen::SubjectPublicKeyInfo::from_pem(include_str!("../../testdata/rsa-1024.pub.pem"))
                .unwrap();
        let weak = client_params(now)
            .signed_by(&weak, &ca.issuer)
            .unwrap()
            .der()
            .clone();

        let cases = [
            (future, R::NotYetValid, "not valid before"),
            (
                as_ca,
                R::CaAsLeaf,
                "CA certificate (basicConstraints CA:TRUE)",
            ),
            (weak, R::WeakKey, "RSA key has 1024 bits"),
        ];
        for (leaf, reason, words) in cases {
            let err = verdict(&tls, &leaf).unwrap_err();
            assert_eq!(R::from_tls_error(&err), reason, "{err:?}");
            let detail = refusal::describe_tls_error(&err);
            assert!(detail.contains(words), "{reason}: {detail}");
        }
    }

    /// A client that accepts any server certificate: what an ACME CA's
    /// validation does (it checks the acmeIdentifier, not a chain).
    #[derive(Debug)]
    struct AnyServer;

    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            crypto_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// An in-memory handshake of a client offering `alpn` for `name`
    /// against `server`: the protocol negotiated and the certificate
    /// served, or the server's error.
    fn handshake(
        server: Arc<ServerConfig>,
        alpn: &[&[u8]],
        name: &str,
    ) -> Result<(Option<Vec<u8>>, Vec<u8>), rustls::Error> {
        let mut client_config =
            rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer))
                .with_no_client_auth();
        client_config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut client =
            rustls::ClientConnection::new(Arc::new(client_config), server_name).unwrap();
        let mut server = rustls::ServerConnection::new(server).unwrap();
        while client.is_handshaking() || server.is_handshaking() {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).unwrap();
            server.read_tls(&mut bytes.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut bytes = Vec::new();
            server.write_tls(&mut bytes).unwrap();
            client.read_tls(&mut bytes.as_slice()).unwrap();
            if client.process_new_packets().is_err() {
                break;
            }
        }
        let served = client.peer_certificates().unwrap()[0].to_vec();
        Ok((server.alpn_protocol().map(<[u8]>::to_vec), served))
    }

    #[test]
    fn the_acme_answer_negotiates_acme_tls_only_and_a_route_never_does() {
        let challenge = ChallengeCertificate::new("db.example.com", &[5; 32]).unwrap();
        let answer = acme_validation_config(&challenge).unwrap();
        // The CA's hello: acme-tls/1, the challenge certificate, although
        // the certificate's critical acmeIdentifier is not a web server's.
        let (alpn, served) = handshake(answer.clone(), &[ACME_TLS_ALPN], "db.example.com").unwrap();
        assert_eq!(alpn.as_deref(), Some(ACME_TLS_ALPN));
        assert_eq!(served, challenge.cert_der());
        // A database client's hello never gets the answer's protocol.
        let refused = handshake(answer, &[intransit_wire::pg::ALPN], "db.example.com");
        assert!(
            matches!(refused, Err(rustls::Error::NoApplicationProtocol)),
            "{refused:?}"
        );

        // A route's own configuration offers its protocol's ALPN only: a
        // hello asking for acme-tls/1 alone is refused there, and a
        // client's gets the route's certificate.
        let ca = ca("test CA");
        let issued = server(&ca, Validity::days_from_now(5));
        let mut files = Files::new(&ca, &issued);
        files.tls.client_auth = ClientAuth::None;
        let route =
            ListenerTls::build(&files.tls, vec![intransit_wire::pg::ALPN.to_vec()]).unwrap();
        let refused = handshake(route.snapshot().config(), &[ACME_TLS_ALPN], "localhost");
        assert!(
            matches!(refused, Err(rustls::Error::NoApplicationProtocol)),
            "{refused:?}"
        );
        let (alpn, served) = handshake(
            route.snapshot().config(),
            &[intransit_wire::pg::ALPN],
            "localhost",
        )
        .unwrap();
        assert_eq!(alpn.as_deref(), Some(intransit_wire::pg::ALPN));
        assert_eq!(
            intransit_pki::sha256_fingerprint(&served),
            fingerprint(&issued)
        );
    }
}
