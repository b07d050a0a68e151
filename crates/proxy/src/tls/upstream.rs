//! TLS on the leg from the proxy to the database: the rustls client side.
//!
//! This module owns turning an [`intransit_config::UpstreamTls`] into a
//! rustls [`ClientConfig`] (built once, when the configuration is loaded),
//! the server-certificate verifier with its SPKI pins, running the
//! handshake over an already-open upstream stream, and saying precisely
//! why a handshake failed (which pin was presented and which were
//! expected, which name did not match, which issuer is unknown, when the
//! certificate expired). It does not decide how a protocol asks the
//! server for TLS (`SSLRequest`, `CLIENT_SSL`): the protocol modules do
//! that and then hand the stream here. Server mode and client mode use
//! the same type, through the same per-protocol connectors.
//!
//! A pooled PostgreSQL login presents a certificate of its database user
//! instead of the configured one ([`UpstreamClientCert`]): the same
//! verifier, versions, ALPN and server name, from the material in service
//! at each handshake.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use intransit_config::{
    SpkiPin, TlsVersion, UpstreamServerName, UpstreamTls as UpstreamTlsConfig, UpstreamTlsMode,
};
use intransit_pki::ServerTrust;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::error::ProxyError;
use crate::net::BoxStream;
use crate::refusal::{alert_name, describe_tls_error, RefusalReason};
use crate::tls::facts::TlsFacts;
use crate::tls::listener::{crypto_provider, LoadedCertificate};
use crate::tls::material::{self, SourceFingerprint};
use crate::tls::reloadable::{Fingerprinted, ReloadError, ReloadFailure, Reloadable, Reloaded};

/// The upstream leg's TLS, ready for handshakes: the material in service
/// (rustls configuration, verifier, pins, client certificate) behind a
/// lock, so a reload swaps it for new handshakes while established upstream
/// sessions keep theirs.
pub struct UpstreamTls {
    material: Reloadable<UpstreamMaterial>,
    /// The certificate the database presented last.
    peer: PeerSeen,
}

/// The leaf certificate of the latest upstream handshake that succeeded,
/// so its expiry can be watched like the proxy's own certificates. Parsed
/// only when it differs from the one before.
#[derive(Debug, Default)]
struct PeerSeen(Mutex<Option<(CertificateDer<'static>, LoadedCertificate, SystemTime)>>);

impl PeerSeen {
    fn record(&self, leaf: &CertificateDer<'_>) {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if guard
            .as_ref()
            .is_some_and(|(der, _, _)| der.as_ref() == leaf.as_ref())
        {
            return;
        }
        // The handshake has just verified this certificate (or, in
        // `require` mode, at least its signature over the handshake), so it
        // parses; if it did not, there is nothing to show.
        if let Ok(loaded) = LoadedCertificate::from_der(
            leaf,
            std::path::Path::new("(upstream handshake)"),
            "upstream server certificate",
        ) {
            *guard = Some((leaf.clone().into_owned(), loaded, SystemTime::now()));
        }
    }

    fn get(&self) -> Option<(LoadedCertificate, SystemTime)> {
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .map(|(_, loaded, first_seen)| (loaded.clone(), *first_seen))
    }
}

/// One loaded set of upstream TLS material. Immutable; a reload builds a
/// new one.
pub struct UpstreamMaterial {
    settings: UpstreamTlsConfig,
    source: SourceFingerprint,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    mode: UpstreamTlsMode,
    pins: Vec<SpkiPin>,
    /// The client certificate the proxy presents, if any.
    pub client_cert: Option<LoadedCertificate>,
    /// The anchors the server's certificate must chain to (`verify-*`).
    pub trust_anchors: Vec<LoadedCertificate>,
    /// When this material was loaded.
    pub loaded_at: SystemTime,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("current", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for UpstreamMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamMaterial")
            .field("mode", &self.mode)
            .field("server_name", &self.server_name)
            .field("pins", &self.pins.len())
            .field("client_cert", &self.client_cert)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// What a completed upstream handshake negotiated, for logs, metrics and
/// audit events (client mode reports these as the connection's TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSession {
    /// Version, suite, group, resumption.
    pub tls: TlsFacts,
    /// How long the handshake took.
    pub handshake_micros: u128,
}

/// Why a TLS handshake with the upstream failed, for the refusal log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsFailure {
    /// The refusal reason (and metric label).
    pub reason: RefusalReason,
    /// What exactly failed, for the log.
    pub detail: String,
}

/// The presented certificate's key matches none of the configured pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinMismatch {
    /// The pin of the certificate the server presented.
    pub presented: String,
    /// The pins that would have been accepted.
    pub expected: Vec<String>,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the certificate's public key pin {} matches none of the expected pins [{}]",
            self.presented,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for PinMismatch {}

/// The bytes of the files an upstream leg names, read once so that what is
/// fingerprinted is exactly what is parsed.
struct UpstreamFiles {
    ca: Option<Vec<u8>>,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
}

impl UpstreamFiles {
    fn read(settings: &UpstreamTlsConfig) -> Result<Self, ProxyError> {
        let read = |path: &Option<std::path::PathBuf>, what| {
            path.as_deref().map(|p| material::read(p, what)).transpose()
        };
        Ok(UpstreamFiles {
            ca: read(&settings.ca, "upstream CA")?,
            cert: read(&settings.cert, "upstream client certificate")?,
            key: read(&settings.key, "upstream client key")?,
        })
    }

    fn fingerprint(&self, settings: &UpstreamTlsConfig) -> SourceFingerprint {
        SourceFingerprint::of(
            settings,
            &[
                self.ca.as_deref(),
                self.cert.as_deref(),
                self.key.as_deref(),
            ],
        )
    }
}

impl UpstreamTls {
    /// Loads the files the settings name and builds the client
    /// configuration: aws-lc-rs, TLS 1.3 (and 1.2 when allowed), the
    /// listener-side groups, the verifier for the mode and pins, and the
    /// client certificate if one is configured.
    pub fn build(settings: &UpstreamTlsConfig) -> Result<Self, ProxyError> {
        let files = UpstreamFiles::read(settings)?;
        Ok(UpstreamTls {
            material: Reloadable::new(UpstreamMaterial::build(settings, &files)?),
            peer: PeerSeen::default(),
        })
    }

    /// The certificate the database presented in the latest upstream
    /// handshake that succeeded, if there was one since the start, and
    /// when that certificate was first seen.
    pub fn last_peer_certificate(&self) -> Option<(LoadedCertificate, SystemTime)> {
        self.peer.get()
    }

    /// The material new upstream handshakes use now.
    pub fn snapshot(&self) -> Arc<UpstreamMaterial> {
        self.material.snapshot()
    }

    /// Why the latest reload failed, unless a later one succeeded or found
    /// the files back to what is in service.
    pub fn last_failure(&self) -> Option<ReloadFailure> {
        self.material.last_failure()
    }

    /// Reads the files `settings` name and, when they or the settings
    /// differ from the material in service, builds and checks new material
    /// and makes it the material for new upstream handshakes. On error the
    /// old material stays.
    pub fn reload(
        &self,
        settings: &UpstreamTlsConfig,
    ) -> Result<Reloaded<UpstreamMaterial>, ReloadError> {
        self.material.reload(
            || UpstreamFiles::read(settings).map(|files| (files.fingerprint(settings), files)),
            |files| UpstreamMaterial::build(settings, &files),
        )
    }

    /// The settings in service (a reload triggered by a file change
    /// rebuilds from them).
    pub fn settings(&self) -> UpstreamTlsConfig {
        self.snapshot().settings.clone()
    }

    /// The name the certificate is checked against, for logs.
    pub fn server_name(&self) -> String {
        self.snapshot().server_name()
    }

    /// Whether the protocol's TLS request is skipped: PostgreSQL direct TLS.
    pub fn direct(&self) -> bool {
        self.snapshot().settings.direct
    }

    /// Runs the TLS handshake over `stream` (already connected, and already
    /// past the protocol's TLS request, if it has one), within `timeout`,
    /// with the material in service when it starts, and returns the
    /// encrypted stream with what was negotiated.
    pub async fn connect(
        &self,
        stream: BoxStream,
        timeout: Duration,
    ) -> Result<(BoxStream, UpstreamSession), UpstreamTlsFailure> {
        let material = self.snapshot();
        material
            .connect(material.config.clone(), stream, timeout, Some(&self.peer))
            .await
    }

    /// Runs the TLS handshake as [`UpstreamTls::connect`] does, with the
    /// material in service when it starts, but presents `client` instead of
    /// the configured client certificate (or none).
    pub(crate) async fn connect_presenting(
        &self,
        stream: BoxStream,
        timeout: Duration,
        client: &UpstreamClientCert,
    ) -> Result<(BoxStream, UpstreamSession), UpstreamTlsFailure> {
        let material = self.snapshot();
        let config = client.config_for(&material);
        material
            .connect(config, stream, timeout, Some(&self.peer))
            .await
    }
}

impl Fingerprinted for UpstreamMaterial {
    fn source(&self) -> SourceFingerprint {
        self.source
    }
}

impl UpstreamMaterial {
    fn build(settings: &UpstreamTlsConfig, files: &UpstreamFiles) -> Result<Self, ProxyError> {
        let provider = Arc::new(crypto_provider());
        let mut trust_anchors = Vec::new();
        let inner = match (&settings.mode, &settings.ca, &files.ca) {
            (UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull, Some(ca), Some(bytes)) => {
                let certs = material::parse_certs(bytes, ca, "upstream CA")?;
                for cert in &certs {
                    trust_anchors.push(LoadedCertificate::from_der(cert, ca, "upstream CA")?);
                }
                Some(Arc::new(
                    ServerTrust::new(certs, provider.clone())
                        .map_err(|e| ProxyError::file("upstream CA", ca, e.to_string()))?,
                ))
            }
            (UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull, _, _) => {
                return Err(ProxyError::Tls(
                    "upstream_tls verify modes need ca (the configuration check should have caught this)"
                        .into(),
                ))
            }
            (UpstreamTlsMode::Require | UpstreamTlsMode::Pinned, _, _) => None,
        };
        let verifier = Arc::new(UpstreamVerifier {
            mode: settings.mode,
            inner,
            pins: settings.pins.clone(),
            algorithms: provider.signature_verification_algorithms,
        });
        let versions = match settings.min_version {
            TlsVersion::V1_3 => &[&rustls::version::TLS13][..],
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12][..],
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| ProxyError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut client_cert = None;
        let mut config = match (&settings.cert, &settings.key, &files.cert, &files.key) {
            (Some(cert), Some(key_path), Some(cert_bytes), Some(key_bytes)) => {
                let (chain, key, loaded) = load_client_chain(
                    &ClientChainFiles {
                        cert_bytes,
                        key_bytes,
                        cert_path: cert,
                        key_path,
                        cert_what: "upstream client certificate",
                        key_what: "upstream client key",
                    },
                    &provider,
                )?;
                client_cert = Some(loaded);
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    ProxyError::file("upstream client certificate and key", cert, e.to_string())
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        if settings.direct {
            // PostgreSQL 17 accepts direct TLS only with this ALPN.
            config.alpn_protocols = vec![intransit_wire::pg::ALPN.to_vec()];
        }
        let server_name = match &settings.server_name {
            UpstreamServerName::Ip(ip) => ServerName::IpAddress((*ip).into()),
            UpstreamServerName::Dns(name) => ServerName::try_from(name.clone())
                .map_err(|e| ProxyError::Tls(format!("upstream server_name {name:?}: {e}")))?,
        };
        Ok(UpstreamMaterial {
            settings: settings.clone(),
            source: files.fingerprint(settings),
            config: Arc::new(config),
            server_name,
            mode: settings.mode,
            pins: settings.pins.clone(),
            client_cert,
            trust_anchors,
            loaded_at: SystemTime::now(),
        })
    }

    /// The settings this material was built from.
    pub fn settings(&self) -> &UpstreamTlsConfig {
        &self.settings
    }

    /// The name the certificate is checked against, for logs.
    pub fn server_name(&self) -> String {
        self.server_name.to_str().into_owned()
    }

    /// Runs the TLS handshake over `stream` (already connected, and already
    /// past the protocol's TLS request, if it has one) with `config` (this
    /// material's own, or one built from it for another client
    /// certificate), within `timeout`, and returns the encrypted stream
    /// with what was negotiated.
    async fn connect(
        &self,
        config: Arc<ClientConfig>,
        stream: BoxStream,
        timeout: Duration,
        peer: Option<&PeerSeen>,
    ) -> Result<(BoxStream, UpstreamSession), UpstreamTlsFailure> {
        let started = Instant::now();
        let connector = TlsConnector::from(config);
        let handshake = connector.connect(self.server_name.clone(), stream);
        let Ok(finished) = tokio::time::timeout(timeout, handshake).await else {
            return Err(UpstreamTlsFailure {
                reason: RefusalReason::UpstreamTlsFailed,
                detail: format!(
                    "TLS with the upstream (server name {}): no handshake within {timeout:?}",
                    self.server_name()
                ),
            });
        };
        match finished {
            Ok(tls) => {
                let conn = tls.get_ref().1;
                if self.settings.direct && conn.alpn_protocol() != Some(intransit_wire::pg::ALPN) {
                    return Err(UpstreamTlsFailure {
                        reason: RefusalReason::UpstreamTlsFailed,
                        detail: format!(
                            "direct TLS with the upstream (server name {}): the server did not agree to ALPN \"postgresql\", so it may not be a PostgreSQL server",
                            self.server_name()
                        ),
                    });
                }
                let session = UpstreamSession {
                    tls: TlsFacts::of(conn),
                    handshake_micros: started.elapsed().as_micros(),
                };
                if let (Some(peer), Some(leaf)) =
                    (peer, conn.peer_certificates().and_then(|c| c.first()))
                {
                    peer.record(leaf);
                }
                Ok((Box::new(tls), session))
            }
            Err(e) => {
                let mut failure = self.describe(&e);
                if self.settings.direct && failure.reason == RefusalReason::UpstreamTlsFailed {
                    failure.detail.push_str(
                        " (direct TLS needs PostgreSQL 17 or later, or a proxy that accepts it; without upstream_tls.direct the proxy sends an SSLRequest first)",
                    );
                }
                Err(failure)
            }
        }
    }

    /// Says what failed, from the error a handshake returned.
    fn describe(&self, error: &io::Error) -> UpstreamTlsFailure {
        let context = format!(
            "TLS with the upstream (mode {}, server name {})",
            self.mode,
            self.server_name()
        );
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return UpstreamTlsFailure {
                reason: RefusalReason::UpstreamTlsFailed,
                detail: format!("{context}: {error}"),
            };
        };
        let reason = match tls {
            rustls::Error::InvalidCertificate(cert) => {
                if let CertificateError::Other(OtherError(other)) = cert {
                    if let Some(mismatch) = other.downcast_ref::<PinMismatch>() {
                        return UpstreamTlsFailure {
                            reason: RefusalReason::PinMismatch,
                            detail: format!("{context}: {mismatch}"),
                        };
                    }
                }
                match cert {
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. } => {
                        RefusalReason::UpstreamNameMismatch
                    }
                    other => RefusalReason::from_certificate_error(other).for_upstream(),
                }
            }
            _ => RefusalReason::UpstreamTlsFailed,
        };
        let what = match tls {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                "the certificate does not chain to the configured upstream ca (unknown issuer)"
                    .to_owned()
            }
            rustls::Error::AlertReceived(alert) => {
                format!("the server sent the TLS alert {} (did it want a client certificate, or one it trusts?)", alert_name(*alert))
            }
            other => describe_tls_error(other),
        };
        UpstreamTlsFailure {
            reason,
            detail: format!("{context}: {what}"),
        }
    }
}

/// The files of a client certificate chain and its key, with what each is
/// called in error messages.
pub(crate) struct ClientChainFiles<'a> {
    pub(crate) cert_bytes: &'a [u8],
    pub(crate) key_bytes: &'a [u8],
    pub(crate) cert_path: &'a std::path::Path,
    pub(crate) key_path: &'a std::path::Path,
    pub(crate) cert_what: &'a str,
    pub(crate) key_what: &'a str,
}

/// Parses and checks a client certificate chain and its key: the leaf
/// valid now, the chain linked for client authentication, the key the
/// leaf's own.
fn load_client_chain(
    files: &ClientChainFiles<'_>,
    provider: &CryptoProvider,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        LoadedCertificate,
    ),
    ProxyError,
> {
    let (cert, what) = (files.cert_path, files.cert_what);
    let chain = material::parse_certs(files.cert_bytes, cert, what)?;
    let loaded = LoadedCertificate::from_der(&chain[0], cert, what)?;
    material::check_valid_now(loaded.validity(), &loaded.serial, cert, what)?;
    material::check_chain_links(
        &chain,
        provider,
        webpki::KeyUsage::client_auth(),
        cert,
        what,
    )?;
    let key = material::parse_key(files.key_bytes, files.key_path, files.key_what)?;
    material::check_key_matches(&chain, &key, provider, cert, files.key_path, files.key_what)?;
    Ok((chain, key, loaded))
}

/// A client certificate that upstream handshakes present instead of the
/// one `upstream_tls` configures: a pooled login's certificate for its
/// database user. It keeps the rustls configuration built for it from
/// the upstream material last used, so a handshake builds one only when
/// that material has been reloaded since.
pub(crate) struct UpstreamClientCert {
    certified: Arc<CertifiedKey>,
    /// The leaf certificate, for logs and expiry.
    pub(crate) leaf: LoadedCertificate,
    /// The material the configuration was built from (held weakly, so
    /// material swapped out by a reload is freed; while the pointer is
    /// held, its address cannot be reused by newer material) and the
    /// configuration.
    config: Mutex<Option<(Weak<UpstreamMaterial>, Arc<ClientConfig>)>>,
}

impl fmt::Debug for UpstreamClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamClientCert")
            .field("leaf", &self.leaf)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl UpstreamClientCert {
    /// Loads a chain and key from PEM with the checks every client
    /// certificate passes (see `load_client_chain`).
    pub(crate) fn from_pem(files: &ClientChainFiles<'_>) -> Result<Self, ProxyError> {
        let provider = crypto_provider();
        let (chain, key, leaf) = load_client_chain(files, &provider)?;
        Self::assemble(chain, key, leaf, &provider, files.key_path, files.key_what)
    }

    /// A certificate and key this process has just issued (PEM): parsed,
    /// without the checks of files someone configured, since the CA made
    /// them together and dated them itself.
    pub(crate) fn issued(cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<Self, ProxyError> {
        let provider = crypto_provider();
        let here = std::path::Path::new("(in memory)");
        let chain = material::parse_certs(cert_pem, here, what)?;
        let leaf = LoadedCertificate::from_der(&chain[0], here, what)?;
        let key = material::parse_key(key_pem, here, what)?;
        Self::assemble(chain, key, leaf, &provider, here, what)
    }

    fn assemble(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        leaf: LoadedCertificate,
        provider: &CryptoProvider,
        key_path: &std::path::Path,
        key_what: &str,
    ) -> Result<Self, ProxyError> {
        let signing = provider.key_provider.load_private_key(key).map_err(|e| {
            ProxyError::file(key_what, key_path, format!("unusable private key: {e}"))
        })?;
        Ok(UpstreamClientCert {
            certified: Arc::new(CertifiedKey::new(chain, signing)),
            leaf,
            config: Mutex::new(None),
        })
    }

    /// The chain presented, leaf first.
    #[cfg(test)]
    pub(crate) fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The rustls configuration of `material` with this certificate as the
    /// client's: built on first use and again after each reload of the
    /// material.
    fn config_for(&self, material: &Arc<UpstreamMaterial>) -> Arc<ClientConfig> {
        let mut cached = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_from, config)) = cached.as_ref() {
            if std::ptr::eq(built_from.as_ptr(), Arc::as_ptr(material)) {
                return config.clone();
            }
        }
        let mut config = (*material.config).clone();
        config.client_auth_cert_resolver = Arc::new(SingleCertAndKey::from(self.certified.clone()));
        // A resumed TLS 1.3 session keeps the client identity of the
        // handshake that made it, so sessions are not shared with the
        // material's own configuration (PostgreSQL issues no tickets
        // anyway).
        config.resumption = Resumption::disabled();
        let config = Arc::new(config);
        *cached = Some((Arc::downgrade(material), config.clone()));
        config
    }
}

/// Describes a TLS failure on an upstream leg whose handshake completed:
/// a TLS 1.3 server checks the client certificate after its side of the
/// handshake, so its verdict (say, the alert `CertificateRequired`) arrives
/// with the first read. `None` when `error` is not a TLS error.
pub(crate) fn failure_after_handshake(error: &io::Error) -> Option<UpstreamTlsFailure> {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())?;
    let what = match tls {
        rustls::Error::AlertReceived(alert) => format!(
            "the server sent the TLS alert {} after the handshake (a TLS 1.3 server checks the client certificate then: did it want one, or one it trusts?)",
            alert_name(*alert)
        ),
        other => format!("after the handshake: {}", describe_tls_error(other)),
    };
    Some(UpstreamTlsFailure {
        reason: RefusalReason::UpstreamTlsFailed,
        detail: format!("TLS with the upstream: {what}"),
    })
}

/// The upstream CA's [`ServerTrust`] (webpki, and a certificate that is
/// itself one of the anchors accepted as libpq accepts it), used as far as
/// the mode asks, plus the SPKI pins. In `verify-ca` a name mismatch is
/// forgiven (the name is checked last, after the chain, so any other error
/// is still reported); in `pinned` and `require` the CA is not consulted
/// at all. Handshake
/// signatures are always checked, so the server must hold the key of the
/// certificate it presents.
#[derive(Debug)]
struct UpstreamVerifier {
    mode: UpstreamTlsMode,
    inner: Option<Arc<ServerTrust>>,
    pins: Vec<SpkiPin>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl UpstreamVerifier {
    fn check_pins(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.pins.is_empty() {
            return Ok(());
        }
        let presented = intransit_pki::spki_pin(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.pins.iter().any(|p| p.as_str() == presented) {
            return Ok(());
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(PinMismatch {
                presented,
                expected: self.pins.iter().map(|p| p.to_string()).collect(),
            })),
        )))
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(inner) = &self.inner {
            let verified = inner.verify(end_entity, intermediates, server_name, now);
            match (self.mode, verified) {
                (_, Ok(_)) => {}
                (
                    UpstreamTlsMode::VerifyCa,
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    )),
                ) => {}
                // A key too small to verify with fails as BadSignature;
                // say so instead.
                (_, Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature))) => {
                    if let Some(weak) = std::iter::once(end_entity)
                        .chain(intermediates)
                        .find_map(material::weak_key)
                    {
                        return Err(weak.into());
                    }
                    return Err(CertificateError::BadSignature.into());
                }
                (_, Err(e)) => return Err(e),
            }
        }
        // The server's handshake signature with such a key would fail as
        // BadSignature, in every mode.
        if let Some(weak) = material::weak_key(end_entity) {
            return Err(weak.into());
        }
        self.check_pins(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use intransit_pki::{
        CertificateAuthority, CertificateKind, IssueRequest, KeyAlgorithm, Validity,
    };
    use rustls::RootCertStore;

    struct Fixture {
        anchors: Vec<CertificateDer<'static>>,
        leaf: CertificateDer<'static>,
        leaf_pin: String,
        foreign_leaf: CertificateDer<'static>,
        expired_leaf: CertificateDer<'static>,
    }

    fn leaf_of(ca: &CertificateAuthority, validity: Validity) -> CertificateDer<'static> {
        let issued = ca
            .issue(&IssueRequest {
                kind: CertificateKind::Server,
                common_name: "db.internal".into(),
                dns_names: vec!["db.internal".into()],
                ip_addresses: vec!["127.0.0.1".parse().unwrap()],
                uris: vec![],
                key: KeyAlgorithm::EcdsaP256,
                validity,
            })
            .unwrap();
        let der = intransit_pki::pem_to_der_certs(&issued.cert_pem).unwrap();
        CertificateDer::from(der[0].clone())
    }

    fn fixture() -> Fixture {
        let ca = CertificateAuthority::generate(
            "database CA",
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(10),
        )
        .unwrap();
        let other = CertificateAuthority::generate(
            "other CA",
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(10),
        )
        .unwrap();
        let leaf = leaf_of(&ca, Validity::days_from_now(5));
        let now = time::OffsetDateTime::now_utc();
        let expired = Validity {
            not_before: now - time::Duration::days(3),
            not_after: now - time::Duration::days(1),
        };
        Fixture {
            anchors: vec![CertificateDer::from(ca.cert_der().to_vec())],
            leaf_pin: intransit_pki::spki_pin(leaf.as_ref()).unwrap(),
            leaf,
            foreign_leaf: leaf_of(&other, Validity::days_from_now(5)),
            expired_leaf: leaf_of(&ca, expired),
        }
    }

    fn verifier(f: &Fixture, mode: UpstreamTlsMode, pins: &[&str]) -> UpstreamVerifier {
        let provider = Arc::new(crypto_provider());
        let inner = matches!(
            mode,
            UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull
        )
        .then(|| Arc::new(ServerTrust::new(f.anchors.clone(), provider.clone()).unwrap()));
        UpstreamVerifier {
            mode,
            inner,
            pins: pins.iter().map(|p| SpkiPin::parse(p).unwrap()).collect(),
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check(
        v: &UpstreamVerifier,
        leaf: &CertificateDer<'_>,
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        v.verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
    }

    const WRONG_PIN: &str = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    /// The reason `describe` gives for a verifier error, as the handshake
    /// reports it (a rustls error inside an io::Error).
    fn reason_of(error: rustls::Error) -> UpstreamTlsFailure {
        let settings = UpstreamTlsConfig {
            mode: UpstreamTlsMode::VerifyFull,
            ca: None,
            cert: None,
            key: None,
            server_name: UpstreamServerName::Dns("db.internal".into()),
            server_name_explicit: true,
            pins: Vec::new(),
            min_version: TlsVersion::V1_3,
            direct: false,
        };
        let tls = UpstreamMaterial {
            source: SourceFingerprint::of(&settings, &[]),
            settings,
            config: Arc::new(
                ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth(),
            ),
            server_name: ServerName::try_from("db.internal").unwrap(),
            mode: UpstreamTlsMode::VerifyFull,
            pins: Vec::new(),
            client_cert: None,
            trust_anchors: Vec::new(),
            loaded_at: SystemTime::now(),
        };
        tls.describe(&io::Error::new(io::ErrorKind::InvalidData, error))
    }

    #[test]
    fn verify_full_checks_chain_name_and_expiry() {
        let f = fixture();
        let v = verifier(&f, UpstreamTlsMode::VerifyFull, &[]);
        assert!(check(&v, &f.leaf, "db.internal").is_ok());
        assert!(check(&v, &f.leaf, "127.0.0.1").is_ok());

        let wrong_name = check(&v, &f.leaf, "other.internal").unwrap_err();
        let failure = reason_of(wrong_name);
        assert_eq!(failure.reason, RefusalReason::UpstreamNameMismatch);
        assert!(
            failure.detail.contains("other.internal"),
            "{}",
            failure.detail
        );
        assert!(failure.detail.contains("db.internal"), "{}", failure.detail);

        let foreign = check(&v, &f.foreign_leaf, "db.internal").unwrap_err();
        let failure = reason_of(foreign);
        assert_eq!(failure.reason, RefusalReason::UpstreamUntrusted);
        assert!(
            failure.detail.contains("unknown issuer"),
            "{}",
            failure.detail
        );

        let expired = check(&v, &f.expired_leaf, "db.internal").unwrap_err();
        assert_eq!(reason_of(expired).reason, RefusalReason::UpstreamExpired);
    }

    /// A not-yet-valid certificate, a CA certificate and an RSA-1024 key
    /// each get their own reason, not `upstream_expired`,
    /// `upstream_tls_failed` and `upstream_untrusted`.
    #[test]
    fn misleading_verdicts_on_the_database_certificate_get_their_own_reasons() {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let now = time::OffsetDateTime::now_utc();
        let params = || {
            let mut params = rcgen::CertificateParams::new(vec!["db.internal".to_owned()]).unwrap();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(5);
            params
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let mut future = params();
        future.not_before = now + time::Duration::days(1);
        let future = future.signed_by(&key, &issuer).unwrap().der().clone();
        let mut as_ca = params();
        as_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let as_ca = as_ca.signed_by(&key, &issuer).unwrap().der().clone();
        let weak =
            rcgen::SubjectPublicKeyInfo::from_pem(include_str!("../../testdata/rsa-1024.pub.pem"))
                .unwrap();
        let weak = params().signed_by(&weak, &issuer).unwrap().der().clone();
        let f = Fixture {
            anchors: vec![ca_cert.der().clone()],
            ..fixture()
        };
        let cases = [
            (
                UpstreamTlsMode::VerifyFull,
                &future,
                RefusalReason::UpstreamNotYetValid,
                "not valid before",
            ),
            (
                UpstreamTlsMode::VerifyFull,
                &as_ca,
                RefusalReason::UpstreamCaAsLeaf,
                "CA certificate",
            ),
            (
                UpstreamTlsMode::VerifyFull,
                &weak,
                RefusalReason::UpstreamWeakKey,
                "1024 bits",
            ),
            // Without chain checks the key would still fail the handshake
            // signature, so it is refused as such in every mode.
            (
                UpstreamTlsMode::Require,
                &weak,
                RefusalReason::UpstreamWeakKey,
                "1024 bits",
            ),
        ];
        for (mode, leaf, reason, words) in cases {
            let v = verifier(&f, mode, &[]);
            let failure = reason_of(check(&v, leaf, "db.internal").unwrap_err());
            assert_eq!(failure.reason, reason, "{}", failure.detail);
            assert!(
                failure.detail.contains(words),
                "{reason}: {}",
                failure.detail
            );
        }
    }

    #[test]
    fn verify_ca_forgives_only_the_name() {
        let f = fixture();
        let v = verifier(&f, UpstreamTlsMode::VerifyCa, &[]);
        assert!(check(&v, &f.leaf, "other.internal").is_ok());
        assert!(check(&v, &f.foreign_leaf, "db.internal").is_err());
        assert!(check(&v, &f.expired_leaf, "other.internal").is_err());
    }

    #[test]
    fn pins_are_checked_on_top_of_the_chain_or_alone() {
        let f = fixture();
        let good = f.leaf_pin.as_str();
        let backup = verifier(&f, UpstreamTlsMode::VerifyFull, &[WRONG_PIN, good]);
        assert!(check(&backup, &f.leaf, "db.internal").is_ok());
        // A pin does not excuse a wrong name in verify-full.
        assert!(check(&backup, &f.leaf, "other.internal").is_err());

        let mismatch = verifier(&f, UpstreamTlsMode::VerifyFull, &[WRONG_PIN]);
        let failure = reason_of(check(&mismatch, &f.leaf, "db.internal").unwrap_err());
        assert_eq!(failure.reason, RefusalReason::PinMismatch);
        assert!(failure.detail.contains(good), "{}", failure.detail);
        assert!(failure.detail.contains(WRONG_PIN), "{}", failure.detail);

        // Pinned: neither chain nor name nor expiry, only the key.
        let pinned = verifier(&f, UpstreamTlsMode::Pinned, &[good]);
        assert!(check(&pinned, &f.leaf, "other.internal").is_ok());
        assert!(check(&pinned, &f.foreign_leaf, "db.internal").is_err());
        let expired_pin = intransit_pki::spki_pin(f.expired_leaf.as_ref()).unwrap();
        let pinned_expired = verifier(&f, UpstreamTlsMode::Pinned, &[&expired_pin]);
        assert!(check(&pinned_expired, &f.expired_leaf, "db.internal").is_ok());

        let require = verifier(&f, UpstreamTlsMode::Require, &[]);
        assert!(check(&require, &f.foreign_leaf, "anything.internal").is_ok());
    }

    /// A per-user certificate's configuration is the material's own with
    /// that certificate: built once per material, again after a reload.
    #[test]
    fn a_presented_certificate_follows_the_material_in_service() {
        let ca = CertificateAuthority::generate(
            "client CA",
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(10),
        )
        .unwrap();
        let issued = ca
            .issue(&IssueRequest::new(CertificateKind::Client, "app_user"))
            .unwrap();
        let client = UpstreamClientCert::issued(
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            "test client certificate",
        )
        .unwrap();
        assert!(!format!("{client:?}").contains("PRIVATE"), "{client:?}");
        let mut settings = UpstreamTlsConfig {
            mode: UpstreamTlsMode::Require,
            ca: None,
            cert: None,
            key: None,
            server_name: UpstreamServerName::Dns("db.internal".into()),
            server_name_explicit: true,
            pins: Vec::new(),
            min_version: TlsVersion::V1_3,
            direct: false,
        };
        let tls = UpstreamTls::build(&settings).unwrap();
        let first = client.config_for(&tls.snapshot());
        assert!(Arc::ptr_eq(&first, &client.config_for(&tls.snapshot())));
        assert!(first.client_auth_cert_resolver.has_certs());
        assert!(first.alpn_protocols.is_empty());
        // The material's own configuration still presents nothing.
        assert!(!tls.snapshot().config.client_auth_cert_resolver.has_certs());

        settings.direct = true;
        assert!(matches!(tls.reload(&settings), Ok(Reloaded::Swapped(_))));
        let second = client.config_for(&tls.snapshot());
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(second.alpn_protocols, [intransit_wire::pg::ALPN.to_vec()]);
        assert!(second.client_auth_cert_resolver.has_certs());
        assert!(Arc::ptr_eq(&second, &client.config_for(&tls.snapshot())));
    }

    #[test]
    fn alerts_and_other_errors_are_upstream_tls_failed() {
        let failure = reason_of(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        ));
        assert_eq!(failure.reason, RefusalReason::UpstreamTlsFailed);
        assert!(
            failure
                .detail
                .contains("the TLS alert certificate_required"),
            "{}",
            failure.detail
        );
        let tls = reason_of(rustls::Error::DecryptError);
        assert_eq!(tls.reason, RefusalReason::UpstreamTlsFailed);
    }
}
