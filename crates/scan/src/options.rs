//! How to survey an endpoint: the options of [`crate::survey`] and of the
//! probes it runs.

use std::time::Duration;

use rustls_pki_types::CertificateDer;

/// How to survey.
#[derive(Debug, Clone)]
pub struct SurveyOptions {
    /// SNI for the probes (default: the target host when it is a name).
    pub server_name: Option<String>,
    /// Connections open at once.
    pub concurrency: usize,
    /// Time allowed per probe.
    pub timeout: Duration,
    /// A client certificate and key to test acceptance.
    pub client_identity: Option<ClientIdentity>,
}

/// A client certificate chain and its key.
#[derive(Debug)]
pub struct ClientIdentity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: rustls_pki_types::PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Default for SurveyOptions {
    fn default() -> Self {
        SurveyOptions {
            server_name: None,
            concurrency: 8,
            timeout: Duration::from_secs(5),
            client_identity: None,
        }
    }
}
