//! A minimal PostgreSQL client for measurements: TCP connect, SSLRequest,
//! TLS 1.3 with a client certificate, and (optionally) the StartupMessage
//! up to the first ReadyForQuery and simple queries after it.
//!
//! It behaves like libpq with `sslmode=verify-full` and a client
//! certificate, so that the same connector measures intransit and
//! PostgreSQL's own TLS alike: no ALPN (libpq before 17 sends none), no
//! session resumption (libpq does not reuse TLS sessions across
//! connections), Nagle disabled. It speaks only `trust` authentication:
//! a benchmark that needs a password would measure the password exchange.
//!
//! Message bytes are built and parsed by `intransit_wire::pg`; this module
//! only moves them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use intransit_wire::pg::{self, AuthenticationRequest, BackendFrame, StartupMessage};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// What went wrong while connecting or starting a session.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
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
    /// A key exchange group name is not one this client knows.
    #[error("unknown key exchange group {0:?}; use x25519mlkem768, x25519 or secp256r1")]
    UnknownGroup(String),
    /// The server name is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// A socket or TLS operation failed.
    #[error("{step}: {error}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The error, part of the message (and so not a `source()`).
        error: io::Error,
    },
    /// The server answered the SSLRequest with something other than `S`.
    #[error("the server refused TLS (answered {0:?} to the SSLRequest)")]
    TlsRefused(u8),
    /// The server sent something this client does not expect.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server refused the session with an ErrorResponse.
    #[error("the server refused the session: {0}")]
    Refused(String),
}

fn io_error(step: &'static str) -> impl FnOnce(io::Error) -> BenchError {
    move |error| BenchError::Io { step, error }
}

/// The files a client needs for `sslmode=verify-full` with a client
/// certificate.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    /// Trust anchors for the server certificate (`sslrootcert`).
    pub ca: PathBuf,
    /// Client certificate chain, leaf first (`sslcert`).
    pub cert: PathBuf,
    /// The client certificate's private key (`sslkey`).
    pub key: PathBuf,
}

/// A key exchange group by the name used in reports.
pub fn kx_group(name: &str) -> Result<&'static dyn SupportedKxGroup, BenchError> {
    match name.to_ascii_lowercase().as_str() {
        "x25519mlkem768" => Ok(aws_lc_rs::kx_group::X25519MLKEM768),
        "x25519" => Ok(aws_lc_rs::kx_group::X25519),
        "secp256r1" | "p-256" | "p256" | "prime256v1" => Ok(aws_lc_rs::kx_group::SECP256R1),
        other => Err(BenchError::UnknownGroup(other.to_owned())),
    }
}

/// The groups libpq offers when linked against OpenSSL 3.0 to 3.4, in its
/// order: a key share for X25519 and, on a HelloRetryRequest, P-256.
pub const LIBPQ_GROUPS: &[&str] = &["x25519", "secp256r1"];

/// Builds a TLS 1.3-only client configuration that verifies the server
/// against `files.ca`, presents `files.cert`, and offers `groups` in order
/// (the first gets a key share).
pub fn client_config(files: &ClientTlsFiles, groups: &[&str]) -> Result<ClientConfig, BenchError> {
    let kx_groups = groups
        .iter()
        .map(|g| kx_group(g))
        .collect::<Result<Vec<_>, _>>()?;
    let provider = CryptoProvider {
        kx_groups,
        ..aws_lc_rs::default_provider()
    };
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&files.ca, "CA certificate")? {
        roots.add(cert).map_err(|e| BenchError::File {
            what: "CA certificate",
            path: files.ca.clone(),
            reason: e.to_string(),
        })?;
    }
    let chain = load_certs(&files.cert, "client certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| BenchError::File {
        what: "client key",
        path: files.key.clone(),
        reason: intransit_pki::describe_pem_error(&e),
    })?;
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| BenchError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| BenchError::Tls(e.to_string()))?;
    // Every measured handshake is a full one, as with libpq.
    config.resumption = Resumption::disabled();
    Ok(config)
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, BenchError> {
    read_pem_certs(path).map_err(|reason| BenchError::File {
        what,
        path: path.to_owned(),
        reason,
    })
}

/// Every certificate in a PEM file; the error says why there is none.
pub(crate) fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| intransit_pki::describe_pem_error(&e))?;
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// A TLS stream to a PostgreSQL server (or to intransit) after the
/// SSLRequest exchange.
pub type PgTlsStream = TlsStream<TcpStream>;

/// Connects to one PostgreSQL endpoint the way libpq does with
/// `sslmode=verify-full` and a client certificate.
#[derive(Clone)]
pub struct PgTlsConnector {
    address: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
}

impl std::fmt::Debug for PgTlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTlsConnector")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PgTlsConnector {
    /// A connector for `address` (`host:port`), verifying the server
    /// certificate for `server_name` (a DNS name or an IP address).
    pub fn new(
        address: impl Into<String>,
        server_name: &str,
        config: Arc<ClientConfig>,
    ) -> Result<Self, BenchError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| BenchError::ServerName(server_name.to_owned()))?;
        Ok(PgTlsConnector {
            address: address.into(),
            server_name,
            tls: TlsConnector::from(config),
        })
    }

    /// The address this connector dials.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// TCP connect, SSLRequest, `S`, and the TLS 1.3 handshake with the
    /// client certificate. Returns when the client has sent its Finished;
    /// the server checks the client's certificate after that, so its cost
    /// shows up in the first reply the server sends, not here.
    pub async fn handshake(&self) -> Result<PgTlsStream, BenchError> {
        let mut tcp = TcpStream::connect(self.address.as_str())
            .await
            .map_err(io_error("connecting"))?;
        tcp.set_nodelay(true)
            .map_err(io_error("setting TCP_NODELAY"))?;
        tcp.write_all(&pg::encode_ssl_request())
            .await
            .map_err(io_error("sending SSLRequest"))?;
        let answer = tcp
            .read_u8()
            .await
            .map_err(io_error("reading the SSLRequest answer"))?;
        if answer != pg::SSL_ACCEPT {
            return Err(BenchError::TlsRefused(answer));
        }
        self.tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(io_error("TLS handshake"))
    }

    /// A handshake followed by a StartupMessage for `user` and `database`,
    /// read up to the first ReadyForQuery: a session ready for a query.
    pub async fn session(&self, user: &str, database: &str) -> Result<PgSession, BenchError> {
        let mut stream = self.handshake().await?;
        start_session(&mut stream, user, database).await?;
        Ok(PgSession { stream })
    }
}

/// An open, idle PostgreSQL session.
#[derive(Debug)]
pub struct PgSession {
    stream: PgTlsStream,
}

impl PgSession {
    /// Whether the server has neither closed the session nor sent anything
    /// since ReadyForQuery (see [`still_idle`]).
    pub async fn still_idle(&mut self) -> bool {
        still_idle(&mut self.stream).await
    }

    /// Sends `sql` as a simple query and reads its answer up to
    /// ReadyForQuery; an ErrorResponse is an error. A pooling proxy lends
    /// a server connection only for a query, so a probe that stops at the
    /// login's ReadyForQuery would not measure that.
    pub async fn simple_query(&mut self, sql: &str) -> Result<(), BenchError> {
        let mut bytes = Vec::with_capacity(sql.len() + 6);
        pg::session::encode_query(sql, &mut bytes)
            .map_err(|e| BenchError::Protocol(e.to_string()))?;
        self.stream
            .write_all(&bytes)
            .await
            .map_err(io_error("sending the query"))?;
        read_until_ready(&mut self.stream, "reading the query's answer").await
    }

    /// Sends Terminate and closes TLS, as libpq's `PQfinish` does.
    pub async fn terminate(mut self) -> Result<(), BenchError> {
        self.stream
            .write_all(&TERMINATE)
            .await
            .map_err(io_error("sending Terminate"))?;
        self.stream
            .shutdown()
            .await
            .map_err(io_error("closing the session"))
    }
}

/// Whether the peer has neither closed `stream` nor sent it anything
/// since it was last read: one read attempt that does not wait. TLS
/// records without application data (a session ticket) are consumed and
/// do not count; an alert, an end of stream or any application byte does.
pub async fn still_idle(stream: &mut PgTlsStream) -> bool {
    let mut byte = [0u8; 1];
    // A timeout of zero polls the read once: `Timeout` polls the inner
    // future before it looks at the clock.
    tokio::time::timeout(std::time::Duration::ZERO, stream.read(&mut byte))
        .await
        .is_err()
}

/// Terminate ('X') with its length word and no body.
const TERMINATE: [u8; 5] = [pg::FrontendFrame::TERMINATE, 0, 0, 0, 4];

/// Sends the StartupMessage and reads until ReadyForQuery.
async fn start_session(
    stream: &mut PgTlsStream,
    user: &str,
    database: &str,
) -> Result<(), BenchError> {
    let startup = StartupMessage {
        protocol: pg::ProtocolVersion::V3_0,
        params: vec![
            ("user".into(), user.into()),
            ("database".into(), database.into()),
            ("application_name".into(), "intransit-bench".into()),
        ],
    };
    let bytes = startup
        .encode()
        .map_err(|e| BenchError::Protocol(e.to_string()))?;
    stream
        .write_all(&bytes)
        .await
        .map_err(io_error("sending StartupMessage"))?;
    read_until_ready(stream, "reading the session start").await
}

/// Reads server messages up to the next ReadyForQuery.
async fn read_until_ready(stream: &mut PgTlsStream, step: &'static str) -> Result<(), BenchError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        while let Some((tag, consumed)) = next_frame(&buf)? {
            buf.advance(consumed);
            if tag == BackendFrame::READY_FOR_QUERY {
                return Ok(());
            }
        }
        let n = stream.read_buf(&mut buf).await.map_err(io_error(step))?;
        if n == 0 {
            return Err(BenchError::Protocol(
                "the server closed the connection before ReadyForQuery".into(),
            ));
        }
    }
}

/// Checks the next complete server message and returns its tag and length,
/// or `None` when more bytes are needed.
fn next_frame(buf: &[u8]) -> Result<Option<(u8, usize)>, BenchError> {
    let Some((frame, consumed)) =
        pg::parse_backend_frame(buf).map_err(|e| BenchError::Protocol(e.to_string()))?
    else {
        return Ok(None);
    };
    match frame.tag {
        BackendFrame::AUTHENTICATION => {
            match pg::parse_authentication(frame.body)
                .map_err(|e| BenchError::Protocol(e.to_string()))?
            {
                AuthenticationRequest::Ok => {}
                other => {
                    return Err(BenchError::Protocol(format!(
                        "the server asked for authentication ({other:?}); \
                         the benchmark needs `trust` for its user in pg_hba.conf"
                    )))
                }
            }
        }
        BackendFrame::ERROR_RESPONSE => {
            let fields = pg::parse_error_response(frame.body)
                .map_err(|e| BenchError::Protocol(e.to_string()))?;
            return Err(BenchError::Refused(format!(
                "{} {}",
                fields
                    .code()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
                fields.message().unwrap_or_default()
            )));
        }
        _ => {}
    }
    Ok(Some((frame.tag, consumed)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn group_names_from_reports_and_openssl_are_understood() {
        assert_eq!(
            kx_group("X25519").unwrap().name(),
            rustls::NamedGroup::X25519
        );
        assert_eq!(
            kx_group("P-256").unwrap().name(),
            rustls::NamedGroup::secp256r1
        );
        assert_eq!(
            kx_group("x25519mlkem768").unwrap().name(),
            rustls::NamedGroup::X25519MLKEM768
        );
        assert!(matches!(kx_group("x448"), Err(BenchError::UnknownGroup(_))));
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn buffer(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    #[test]
    fn trust_login_frames_are_accepted_in_order() {
        let mut wire = frame(b'R', &0u32.to_be_bytes());
        wire.extend(frame(b'S', b"server_version\x0015\x00"));
        wire.extend(frame(b'Z', b"I"));
        let mut buf = buffer(&wire);
        let mut tags = Vec::new();
        while let Some((tag, n)) = next_frame(&buf).unwrap() {
            buf.advance(n);
            tags.push(tag);
        }
        assert_eq!(tags, b"RSZ");
        assert!(buf.is_empty());
    }

    #[test]
    fn a_partial_frame_needs_more_bytes() {
        let wire = frame(b'Z', b"I");
        assert_eq!(next_frame(&buffer(&wire[..3])).unwrap(), None);
    }

    #[test]
    fn a_password_request_is_an_error_that_names_pg_hba() {
        let wire = frame(
            b'R',
            &10u32
                .to_be_bytes()
                .iter()
                .chain(b"SCRAM-SHA-256\0\0")
                .copied()
                .collect::<Vec<_>>(),
        );
        let err = next_frame(&buffer(&wire)).unwrap_err().to_string();
        assert!(err.contains("trust"), "{err}");
    }

    #[test]
    fn an_error_response_is_reported_with_its_code() {
        let wire = frame(
            b'E',
            b"SFATAL\0C53300\0Msorry, too many clients already\0\0",
        );
        let err = next_frame(&buffer(&wire)).unwrap_err().to_string();
        assert!(
            err.contains("53300") && err.contains("too many clients"),
            "{err}"
        );
    }
}
