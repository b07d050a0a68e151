//! Fetching the certificate chain a server presents, without trusting it.
//!
//! This module owns [`fetch_chain`]: connect, run the database protocol's
//! negotiation ([`crate::negotiate`]), complete a TLS handshake with a
//! rustls client that accepts any certificate, record what was negotiated
//! and the chain as sent, and close.
//!
//! **The chain is unverified.** The verifier here accepts every chain for
//! every name: no trust anchor, expiry, name or revocation check is made,
//! so anyone on the path can substitute their own certificate. Use the
//! result to inspect a server, never to decide that it is genuine.
//!
//! **No application data is ever sent.** After the handshake the client
//! sends close_notify and closes: no StartupMessage, no MySQL
//! HandshakeResponse, no credentials, no command. That is what makes
//! accepting any certificate harmless here, and it must stay that way: this
//! module must never hand the TLS stream to a caller.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::{aws_lc_rs, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::{ScanError, Stage};
use crate::negotiate::{negotiate, Deadline};
use crate::Target;

/// How long a probe may take from the first connection attempt to the end
/// of the TLS handshake, unless [`FetchOptions::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOptions {
    /// The name to send as SNI and to give rustls. `None` means the
    /// target's host when it is a DNS name, and no SNI for an IP address.
    /// An IP address here also means no SNI.
    pub server_name: Option<String>,
    /// The time allowed for everything: connecting, negotiating and the
    /// TLS handshake.
    pub timeout: Duration,
    /// ALPN protocols to offer, e.g. `b"postgresql".to_vec()`; empty offers
    /// none.
    pub alpn: Vec<Vec<u8>>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            server_name: None,
            timeout: DEFAULT_TIMEOUT,
            alpn: Vec::new(),
        }
    }
}

/// What a server presented and negotiated. Nothing in it is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedChain {
    /// What was probed.
    pub target: Target,
    /// The address the connection reached.
    pub peer: SocketAddr,
    /// How TLS was requested: "PostgreSQL SSLRequest", "MySQL SSLRequest
    /// (CLIENT_SSL)" or "TLS from the first byte".
    pub negotiation: &'static str,
    /// The server's version, when its protocol announces it before TLS
    /// (MySQL and MariaDB greetings).
    pub server_version: Option<String>,
    /// The name sent as SNI, if any.
    pub server_name: Option<String>,
    /// The negotiated protocol version: `TLSv1.3` or `TLSv1.2`.
    pub tls_version: String,
    /// The negotiated cipher suite by its IANA name, e.g.
    /// `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// The negotiated key exchange group, e.g. `X25519MLKEM768`.
    pub key_exchange: Option<String>,
    /// The ALPN protocol the server chose, if any.
    pub alpn: Option<String>,
    /// Whether the server asked for a client certificate. None was sent;
    /// a server that requires one may refuse the connection right after the
    /// handshake, which this probe does not wait to see.
    pub client_certificate_requested: bool,
    /// The certificates exactly as the server sent them, leaf first.
    /// **Unverified.**
    pub chain: Vec<CertificateDer<'static>>,
}

/// Connects to `target`, starts TLS the way its clients do, and returns
/// the certificate chain the server presents along with what was
/// negotiated.
///
/// The client offers TLS 1.3 and TLS 1.2, every cipher suite and key
/// exchange group of the aws-lc-rs provider, and no session resumption, so
/// each call sees a full handshake. The chain is **not verified** (see the
/// module documentation), but the server must prove that it holds the leaf's
/// private key with a handshake signature rustls can check. The connection
/// is closed right after the handshake without sending application data.
pub async fn fetch_chain(target: &Target, opts: &FetchOptions) -> Result<FetchedChain, ScanError> {
    // A bad explicit server name is the caller's mistake: report it before
    // touching the network.
    let explicit_name = opts
        .server_name
        .as_deref()
        .map(|name| {
            ServerName::try_from(name.to_owned())
                .map_err(|_| ScanError::InvalidServerName(name.to_owned()))
        })
        .transpose()?;
    let cert_request = Arc::new(CertificateRequestSeen::default());
    let config = probe_config(opts, cert_request.clone())?;
    let deadline = Deadline::after(opts.timeout);

    let address = target.address();
    let mut stream = deadline
        .run(
            Stage::Connecting,
            TcpStream::connect((target.host(), target.port())),
        )
        .await?
        .map_err(|error| ScanError::Connect {
            address: address.clone(),
            error,
        })?;
    let peer = stream.peer_addr().map_err(|error| ScanError::Connect {
        address: address.clone(),
        error,
    })?;
    // The handshake is a few small writes each waiting for an answer.
    let _ = stream.set_nodelay(true);

    let server_name = explicit_name.unwrap_or_else(|| default_server_name(target.host(), peer));
    let sni = match &server_name {
        ServerName::DnsName(name) => Some(name.as_ref().to_owned()),
        _ => None,
    };

    let negotiated = negotiate(target, &mut stream, &deadline).await?;

    let stage = Stage::TlsHandshake;
    let mut tls = deadline
        .run(
            stage,
            TlsConnector::from(Arc::new(config)).connect(server_name, stream),
        )
        .await?
        .map_err(|err| handshake_error(stage, err))?;

    let (_, conn) = tls.get_ref();
    let fetched = FetchedChain {
        target: target.clone(),
        peer,
        negotiation: negotiated.how,
        server_version: negotiated.server_version,
        server_name: sni,
        tls_version: conn
            .protocol_version()
            .map(version_name)
            .unwrap_or_else(|| "unknown".to_owned()),
        cipher_suite: conn
            .negotiated_cipher_suite()
            .map(|suite| {
                let suite = suite.suite();
                suite
                    .as_str()
                    .map_or_else(|| format!("0x{:04x}", u16::from(suite)), str::to_owned)
            })
            .unwrap_or_else(|| "unknown".to_owned()),
        key_exchange: conn.negotiated_key_exchange_group().map(|group| {
            let name = group.name();
            name.as_str()
                .map_or_else(|| format!("0x{:04x}", u16::from(name)), str::to_owned)
        }),
        alpn: conn.alpn_protocol().map(intransit_wire::printable),
        client_certificate_requested: cert_request.seen(),
        chain: conn
            .peer_certificates()
            .map(<[_]>::to_vec)
            .unwrap_or_default(),
    };

    // close_notify, then FIN. Whether the server hears it changes nothing
    // for the result, so failures and the deadline are ignored here.
    let _ = deadline.run(stage, tls.shutdown()).await;
    Ok(fetched)
}

/// The server name rustls gets when the caller names none: the host if it
/// is a DNS name, otherwise the address reached (and so no SNI).
fn default_server_name(host: &str, peer: SocketAddr) -> ServerName<'static> {
    match ServerName::try_from(host.to_owned()) {
        Ok(name) => name,
        // Target parsing accepts a few spellings rustls does not (labels
        // longer than rustls allows, say); such a host is still probed,
        // just without SNI.
        Err(_) => ServerName::IpAddress(peer.ip().into()),
    }
}

/// A failed handshake as a [`ScanError`]: rustls's own error when it has
/// one, the I/O error (such as the server closing the connection)
/// otherwise.
fn handshake_error(stage: Stage, err: std::io::Error) -> ScanError {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => ScanError::Tls(tls.to_string()),
        None => ScanError::Io { stage, error: err },
    }
}

/// `TLSv1.3` and `TLSv1.2`, as OpenSSL and PostgreSQL's `pg_stat_ssl` name
/// them.
fn version_name(version: ProtocolVersion) -> String {
    match version {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
        other => other
            .as_str()
            .map_or_else(|| format!("0x{:04x}", u16::from(other)), str::to_owned),
    }
}

/// The client configuration of one probe.
fn probe_config(
    opts: &FetchOptions,
    cert_request: Arc<CertificateRequestSeen>,
) -> Result<ClientConfig, ScanError> {
    // Everything the provider can do is offered, so that the chain can be
    // fetched from as many servers as possible; what is negotiated is then
    // the server's choice among rustls's capabilities, not necessarily what
    // a given database driver would get.
    let provider = Arc::new(CryptoProvider {
        cipher_suites: aws_lc_rs::ALL_CIPHER_SUITES.to_vec(),
        kx_groups: aws_lc_rs::ALL_KX_GROUPS.to_vec(),
        ..aws_lc_rs::default_provider()
    });
    let verifier = Arc::new(AcceptAnyChain::new(
        provider.signature_verification_algorithms,
    ));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ScanError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(cert_request);
    config.alpn_protocols = opts.alpn.clone();
    // A resumed session shows no certificate; every probe must see one.
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// A server certificate verifier that accepts every chain, for inspection
/// only (see the module documentation). Handshake signatures are still
/// checked against the leaf's key, so the chain recorded is the one the
/// server holds the key for.
#[derive(Debug)]
pub struct AcceptAnyChain {
    algorithms: WebPkiSupportedAlgorithms,
    /// Set when the server stapled an OCSP response.
    ocsp_stapled: AtomicBool,
}

impl AcceptAnyChain {
    /// Checks handshake signatures with `algorithms`.
    pub fn new(algorithms: WebPkiSupportedAlgorithms) -> Self {
        AcceptAnyChain {
            algorithms,
            ocsp_stapled: AtomicBool::new(false),
        }
    }

    /// Whether any handshake verified so far carried a stapled OCSP
    /// response.
    pub(crate) fn ocsp_stapled(&self) -> bool {
        self.ocsp_stapled.load(Ordering::Relaxed)
    }
}

impl ServerCertVerifier for AcceptAnyChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !ocsp_response.is_empty() {
            self.ocsp_stapled.store(true, Ordering::Relaxed);
        }
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

/// Sends no client certificate, and remembers whether the server asked
/// for one.
#[derive(Debug, Default)]
pub(crate) struct CertificateRequestSeen(AtomicBool);

impl CertificateRequestSeen {
    pub(crate) fn seen(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl ResolvesClientCert for CertificateRequestSeen {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}
