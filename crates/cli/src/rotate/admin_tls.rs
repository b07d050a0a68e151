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
use intransit_scan::AcceptAnyChain;
use rustls::ClientConfig;

/// A client configuration on aws-lc-rs that accepts any server chain.
pub fn unverified_client_config() -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(AcceptAnyChain::new(
        provider.signature_verification_algorithms,
    ));
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| anyhow!("building the TLS client configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}
