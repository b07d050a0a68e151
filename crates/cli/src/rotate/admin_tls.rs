//! The TLS client configuration of the administrative connection that
//! `rotate` opens to a server over TCP (to read its settings and ask it to
//! reload).
//!
//! It does not verify the server's certificate chain, like libpq's
//! `sslmode=require`: the point of the connection is to replace a
//! certificate that may be expired, wrongly named or from another CA.
//! Handshake signatures are still checked against the presented key, and
//! the password-based logins the servers use (SCRAM, or the MySQL
//! scramble) never send the password itself. Prefer a unix socket
//! (`host=/var/run/postgresql`, `--socket`) where the server is local,
//! which it must be for the files to be written.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// A client configuration on aws-lc-rs that accepts any server chain.
pub fn unverified_client_config() -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(AnyServerChain {
        algorithms: provider.signature_verification_algorithms,
    });
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| anyhow!("building the TLS client configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Accepts every chain; checks handshake signatures (see the module
/// documentation for why).
#[derive(Debug)]
struct AnyServerChain {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
