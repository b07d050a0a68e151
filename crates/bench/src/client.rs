//! The client side of every measurement: which TLS configuration to offer,
//! and getting from a target's address to an established TLS stream the
//! way that target's clients do.
//!
//! The pre-TLS step (PostgreSQL SSLRequest, MySQL CLIENT_SSL, nothing for
//! `tls://`) is `intransit_scan::request_tls`, so `bench` and `scan` speak
//! to servers identically. This module owns the rustls `ClientConfig` of
//! each [`Configuration`] and the sorting of failures into "the server
//! refused this configuration" and "something is broken".

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use intransit_scan::{AcceptAnyChain, ScanError, Target};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The TLS configurations `intransit bench handshake` measures, each a
/// client offer the server may accept or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Configuration {
    /// TLS 1.2 only, full handshake.
    Tls12,
    /// TLS 1.3 only, full handshake, the default groups (X25519MLKEM768
    /// preferred, X25519 and P-256 offered).
    Tls13,
    /// TLS 1.3 resuming a session from an earlier connection (tickets or
    /// the server's session cache).
    Tls13Resumed,
    /// TLS 1.3, full handshake, presenting a client certificate.
    Tls13ClientCert,
    /// TLS 1.3, full handshake, only X25519 offered.
    X25519,
    /// TLS 1.3, full handshake, only the hybrid X25519MLKEM768 offered.
    X25519Mlkem768,
}

impl Configuration {
    /// Every configuration, in report order.
    pub const ALL: [Configuration; 6] = [
        Configuration::Tls12,
        Configuration::Tls13,
        Configuration::Tls13Resumed,
        Configuration::Tls13ClientCert,
        Configuration::X25519,
        Configuration::X25519Mlkem768,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Configuration::Tls12 => "tls1.2",
            Configuration::Tls13 => "tls1.3",
            Configuration::Tls13Resumed => "tls1.3-resumed",
            Configuration::Tls13ClientCert => "tls1.3-client-cert",
            Configuration::X25519 => "x25519",
            Configuration::X25519Mlkem768 => "x25519mlkem768",
        }
    }

    /// The configuration called `name`.
    pub fn from_name(name: &str) -> Option<Configuration> {
        Configuration::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// What went wrong with one operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// The server declined what this configuration offers (a TLS alert
    /// during or right after the handshake, no common version or group,
    /// TLS not offered, no resumption). Not a fault of the tool or target.
    #[error("refused: {0}")]
    Refused(String),
    /// Anything else: connection failures, certificate verification,
    /// protocol errors, timeouts.
    #[error("{0}")]
    Failed(String),
}

/// Why a client could not be set up; reported before anything connects.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A certificate or key file could not be used.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file is for.
        what: &'static str,
        /// Where it is.
        path: PathBuf,
        /// Why it could not be used.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The server name is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// No way to verify the server was given.
    #[error("no trust anchors: pass --ca FILE (the CA that signed the server's certificate) or --insecure")]
    NoTrust,
}

/// How the client authenticates the server and itself.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Trust anchors for the server's certificate (PEM). `None` uses the
    /// system bundle when it exists.
    pub ca: Option<PathBuf>,
    /// Skip verification of the server's certificate (the handshake
    /// signature is still checked).
    pub insecure: bool,
    /// Client certificate chain and key (PEM): needed by
    /// [`Configuration::Tls13ClientCert`], and presented in every
    /// configuration (and by `query` and `throughput`) to a server that
    /// asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name to send as SNI and verify; `None` means the target's host.
    pub server_name: Option<String>,
}

/// The system trust bundle, used when no `--ca` is given.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A client configuration ready to dial: the rustls config for one
/// [`Configuration`] (or the default offer), the target and its name.
#[derive(Clone)]
pub struct Endpoint {
    target: Target,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    /// Which configuration this endpoint offers, if one of the measured ones.
    pub configuration: Option<Configuration>,
    /// Per-operation timeout: connect, negotiation and handshake.
    pub timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("target", &self.target)
            .field("server_name", &self.server_name)
            .field("configuration", &self.configuration)
            .finish_non_exhaustive()
    }
}

/// The timeout for one connect, negotiation and handshake.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

static TLS12: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
static TLS13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static ANY: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];

impl Endpoint {
    /// An endpoint offering `configuration`, or with `None` the default
    /// offer (TLS 1.3 and 1.2, every group, resumption, the client
    /// certificate if one is given). `Ok(None)` when the configuration needs
    /// a client certificate and none was given.
    pub fn new(
        target: &Target,
        configuration: Option<Configuration>,
        opts: &TlsOptions,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Option<Endpoint>, SetupError> {
        let name = opts
            .server_name
            .clone()
            .unwrap_or_else(|| target.host().to_owned());
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| SetupError::ServerName(name))?;
        let default_provider = aws_lc_rs::default_provider();
        let groups = match configuration {
            Some(Configuration::X25519) => vec![aws_lc_rs::kx_group::X25519],
            Some(Configuration::X25519Mlkem768) => vec![aws_lc_rs::kx_group::X25519MLKEM768],
            _ => vec![
                aws_lc_rs::kx_group::X25519MLKEM768,
                aws_lc_rs::kx_group::X25519,
                aws_lc_rs::kx_group::SECP256R1,
            ],
        };
        let provider = Arc::new(CryptoProvider {
            kx_groups: groups,
            ..default_provider
        });
        let versions: &[&SupportedProtocolVersion] = match configuration {
            Some(Configuration::Tls12) => &TLS12,
            Some(_) => &TLS13,
            None => &ANY,
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| SetupError::Tls(e.to_string()))?;
        let builder = if opts.insecure {
            builder
                .dangerous()
                // `--insecure`: any certificate for any name; handshake
                // signatures are still checked, so the peer holds the key
                // it presents.
                .with_custom_certificate_verifier(Arc::new(AcceptAnyChain::new(
                    provider.signature_verification_algorithms,
                )))
        } else {
            builder.with_root_certificates(roots(opts.ca.as_deref())?)
        };
        // A client certificate, when given, is offered in every
        // configuration: rustls sends it only to a server that asks, so a
        // server without client authentication sees no difference, and a
        // proxy that requires one can be measured in every configuration.
        let wants_cert = opts.client_cert.is_some()
            || matches!(configuration, Some(Configuration::Tls13ClientCert));
        let mut config = if wants_cert {
            let Some((cert, key)) = &opts.client_cert else {
                return Ok(None);
            };
            let chain = load_certs(cert, "client certificate")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| SetupError::File {
                what: "client key",
                path: key.clone(),
                reason: intransit_pki::describe_pem_error(&e),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| SetupError::Tls(e.to_string()))?
        } else {
            builder.with_no_client_auth()
        };
        // Only the resumed configuration (and the default offer, like most
        // clients) may resume; every other sample is a full handshake.
        config.resumption = match configuration {
            Some(Configuration::Tls13Resumed) | None => Resumption::in_memory_sessions(256),
            Some(_) => Resumption::disabled(),
        };
        config.alpn_protocols = alpn;
        Ok(Some(Endpoint {
            target: target.clone(),
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
            configuration,
            timeout: OP_TIMEOUT,
        }))
    }

    /// The target this endpoint dials.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// TCP connect, the protocol's request for TLS and the TLS handshake,
    /// timed from before the connect until the client's handshake is
    /// complete. For MySQL, the SSLRequest announces `mysql_capabilities`.
    pub async fn connect(&self, mysql_capabilities: u32) -> Result<Connected, OpError> {
        let started = Instant::now();
        let work = async {
            let mut tcp = TcpStream::connect((self.target.host(), self.target.port()))
                .await
                .map_err(|e| OpError::Failed(format!("connecting to {}: {e}", self.target)))?;
            let _ = tcp.set_nodelay(true);
            let requested = intransit_scan::request_tls(
                &self.target,
                &mut tcp,
                mysql_capabilities,
                self.timeout,
            )
            .await
            .map_err(|e| match e {
                ScanError::TlsRefused { .. } => OpError::Refused(e.to_string()),
                other => OpError::Failed(other.to_string()),
            })?;
            let stream = self
                .connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(handshake_error)?;
            Ok::<_, OpError>((stream, requested.mysql_greeting))
        };
        let (stream, mysql_greeting) = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| OpError::Failed(format!("no handshake within {:?}", self.timeout)))??;
        let handshake = started.elapsed();
        let resumed = stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        Ok(Connected {
            stream,
            mysql_greeting,
            handshake,
            resumed,
        })
    }
}

/// An established TLS connection and what it took.
#[derive(Debug)]
pub struct Connected {
    /// The TLS stream, ready for the protocol's login.
    pub stream: TlsStream<TcpStream>,
    /// For MySQL, the greeting's payload (the scramble is in it).
    pub mysql_greeting: Option<Vec<u8>>,
    /// From before the TCP connect until the client's handshake completed.
    pub handshake: Duration,
    /// Whether the server resumed an earlier session.
    pub resumed: bool,
}

impl Connected {
    /// The negotiated protocol version, suite and group, for reports.
    pub fn facts(&self) -> TlsFacts {
        let conn = self.stream.get_ref().1;
        TlsFacts {
            version: conn
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("unknown")
                .to_owned(),
            cipher_suite: conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown")
                .to_owned(),
            group: conn
                .negotiated_key_exchange_group()
                .and_then(|g| g.name().as_str())
                .map(str::to_owned),
            hello_retry: conn.handshake_kind() == Some(HandshakeKind::FullWithHelloRetryRequest),
        }
    }

    /// close_notify and FIN, then reads until the server closes too.
    ///
    /// Reading to the end is what makes a refusal visible: a TLS 1.3
    /// server checks the client's certificate after the client finished
    /// its handshake, so its alert arrives here. It also collects the
    /// session tickets a TLS 1.3 server sends after the handshake.
    pub async fn close(mut self) -> Result<(), OpError> {
        let _ = self.stream.shutdown().await;
        drain_until_closed(&mut self.stream).await
    }
}

/// Reads and discards until the server closes; an alert is a refusal.
pub async fn drain_until_closed(stream: &mut TlsStream<TcpStream>) -> Result<(), OpError> {
    let mut buf = [0u8; 4096];
    let work = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(OP_TIMEOUT, work).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => match classify(&e) {
            // A reset after our close_notify is how some servers end.
            None if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
            None if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            Some(refused) => Err(refused),
            None => Err(OpError::Failed(format!("closing: {e}"))),
        },
        Err(_) => Err(OpError::Failed(format!(
            "the server did not close within {OP_TIMEOUT:?}"
        ))),
    }
}

/// The negotiated parameters of a connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsFacts {
    /// `TLSv1_3` or `TLSv1_2`.
    pub version: String,
    /// The cipher suite's IANA name.
    pub cipher_suite: String,
    /// The key exchange group, when known.
    pub group: Option<String>,
    /// Whether the server asked for another key share first (a
    /// HelloRetryRequest: one more round trip).
    pub hello_retry: bool,
}

/// A refusal, if the I/O error carries a TLS error that means the server
/// declined what was offered.
pub(crate) fn classify(e: &io::Error) -> Option<OpError> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::AlertReceived(alert) => Some(OpError::Refused(format!(
            "the server sent the alert {alert:?}"
        ))),
        rustls::Error::PeerIncompatible(why) => Some(OpError::Refused(format!(
            "the server is incompatible with this offer: {why:?}"
        ))),
        _ => None,
    }
}

fn handshake_error(e: io::Error) -> OpError {
    if let Some(refused) = classify(&e) {
        return refused;
    }
    if let Some(rustls::Error::InvalidCertificate(why)) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return OpError::Failed(format!(
            "the server's certificate did not verify ({why:?}); pass --ca with the CA that signed it, --sni with its name, or --insecure"
        ));
    }
    if e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::ConnectionReset {
        // A server that closes in the middle of the handshake without an
        // alert (OpenSSL does this for some version mismatches).
        return OpError::Refused(format!(
            "the server closed the connection during the handshake ({e})"
        ));
    }
    OpError::Failed(format!("TLS handshake: {e}"))
}

fn roots(ca: Option<&Path>) -> Result<RootCertStore, SetupError> {
    let path = match ca {
        Some(path) => path,
        None if Path::new(SYSTEM_BUNDLE).exists() => Path::new(SYSTEM_BUNDLE),
        None => return Err(SetupError::NoTrust),
    };
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "CA certificate")? {
        roots.add(cert).map_err(|e| SetupError::File {
            what: "CA certificate",
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    crate::pg::read_pem_certs(path).map_err(|reason| SetupError::File {
        what,
        path: path.to_owned(),
        reason,
    })
}
