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
//! that and then hand the stream here. Server mode uses it for the
//! upstream leg; client mode will use the same type.

use std::fmt;
use std::io;
use std::sync::Arc;

use intransit_config::{
    SpkiPin, TlsVersion, UpstreamServerName, UpstreamTls as UpstreamTlsConfig, UpstreamTlsMode,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};
use tokio_rustls::TlsConnector;

use crate::net::BoxStream;
use crate::refusal::RefusalReason;
use crate::tls::{crypto_provider, load_certs};
use crate::ProxyError;

/// The upstream leg's TLS settings, loaded and ready for handshakes.
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    mode: UpstreamTlsMode,
    pins: Vec<SpkiPin>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("mode", &self.mode)
            .field("server_name", &self.server_name)
            .field("pins", &self.pins.len())
            .finish_non_exhaustive()
    }
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

impl UpstreamTls {
    /// Loads the files the settings name and builds the client
    /// configuration: aws-lc-rs, TLS 1.3 (and 1.2 when allowed), the
    /// listener-side groups, the verifier for the mode and pins, and the
    /// client certificate if one is configured.
    pub fn build(settings: &UpstreamTlsConfig) -> Result<Self, ProxyError> {
        let provider = Arc::new(crypto_provider());
        let inner = match (&settings.mode, &settings.ca) {
            (UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull, Some(ca)) => {
                let mut roots = RootCertStore::empty();
                for cert in load_certs(ca, "upstream CA")? {
                    roots
                        .add(cert)
                        .map_err(|e| ProxyError::file("upstream CA", ca, e.to_string()))?;
                }
                Some(
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| ProxyError::Tls(format!("upstream verifier: {e}")))?,
                )
            }
            (UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull, None) => {
                return Err(ProxyError::Tls(
                    "upstream_tls verify modes need ca (the configuration check should have caught this)"
                        .into(),
                ))
            }
            (UpstreamTlsMode::Require | UpstreamTlsMode::Pinned, _) => None,
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
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| ProxyError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&settings.cert, &settings.key) {
            (Some(cert), Some(key_path)) => {
                let chain = load_certs(cert, "upstream client certificate")?;
                let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
                    ProxyError::file("upstream client key", key_path, e.to_string())
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    ProxyError::file("upstream client certificate and key", cert, e.to_string())
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        let server_name = match &settings.server_name {
            UpstreamServerName::Ip(ip) => ServerName::IpAddress((*ip).into()),
            UpstreamServerName::Dns(name) => ServerName::try_from(name.clone())
                .map_err(|e| ProxyError::Tls(format!("upstream server_name {name:?}: {e}")))?,
        };
        Ok(UpstreamTls {
            config: Arc::new(config),
            server_name,
            mode: settings.mode,
            pins: settings.pins.clone(),
        })
    }

    /// The name the certificate is checked against, for logs.
    pub fn server_name(&self) -> String {
        self.server_name.to_str().into_owned()
    }

    /// Runs the TLS handshake over `stream` (already connected, and already
    /// past the protocol's TLS request) and returns the encrypted stream
    /// with the negotiated TLS version.
    pub async fn connect(
        &self,
        stream: BoxStream,
    ) -> Result<(BoxStream, &'static str), UpstreamTlsFailure> {
        let connector = TlsConnector::from(self.config.clone());
        match connector.connect(self.server_name.clone(), stream).await {
            Ok(tls) => {
                let version = tls
                    .get_ref()
                    .1
                    .protocol_version()
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown");
                Ok((Box::new(tls), version))
            }
            Err(e) => Err(self.describe(&e)),
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
            rustls::Error::InvalidCertificate(cert) => match cert {
                CertificateError::Other(OtherError(other)) => {
                    if let Some(mismatch) = other.downcast_ref::<PinMismatch>() {
                        return UpstreamTlsFailure {
                            reason: RefusalReason::PinMismatch,
                            detail: format!("{context}: {mismatch}"),
                        };
                    }
                    RefusalReason::UpstreamTlsFailed
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    RefusalReason::UpstreamNameMismatch
                }
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    RefusalReason::UpstreamUntrusted
                }
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => RefusalReason::UpstreamExpired,
                _ => RefusalReason::UpstreamTlsFailed,
            },
            _ => RefusalReason::UpstreamTlsFailed,
        };
        let what = match tls {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                "the certificate does not chain to the configured upstream ca (unknown issuer)"
                    .to_owned()
            }
            rustls::Error::AlertReceived(alert) => {
                format!("the server sent the alert {alert:?} (did it want a client certificate, or one it trusts?)")
            }
            other => other.to_string(),
        };
        UpstreamTlsFailure {
            reason,
            detail: format!("{context}: {what}"),
        }
    }
}

/// webpki's server verifier, used as far as the mode asks, plus the SPKI
/// pins. In `verify-ca` a name mismatch is forgiven (webpki checks the name
/// last, after the chain, so any other error is still reported); in
/// `pinned` and `require` webpki is not consulted at all. Handshake
/// signatures are always checked, so the server must hold the key of the
/// certificate it presents.
#[derive(Debug)]
struct UpstreamVerifier {
    mode: UpstreamTlsMode,
    inner: Option<Arc<WebPkiServerVerifier>>,
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
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(inner) = &self.inner {
            let verified = inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
            match (self.mode, verified) {
                (_, Ok(_)) => {}
                (
                    UpstreamTlsMode::VerifyCa,
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    )),
                ) => {}
                (_, Err(e)) => return Err(e),
            }
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
