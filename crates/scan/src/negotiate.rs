//! Getting from an open TCP connection to the first TLS byte, the way each
//! database's clients do.
//!
//! This module owns the pre-TLS exchange per [`Target`] kind: PostgreSQL's
//! SSLRequest and one-byte answer, MySQL's greeting and SSLRequest packet,
//! and nothing at all for direct TLS. Every read is bounded in size and by
//! the probe's deadline.
//!
//! It must never send anything a server could take as a login attempt or
//! application data: no StartupMessage, no HandshakeResponse, no
//! credentials. [`request_tls`] exposes the same exchange to callers that
//! run their own TLS handshake and login afterwards (`intransit bench`);
//! what they send after TLS is theirs, not this crate's. Bytes that arrive before the TLS handshake beyond the
//! answer it expects must never reach the handshake as the server's (the
//! CVE-2021-23222 class): the PostgreSQL answer is read one byte exactly,
//! and a MySQL greeting followed by anything ends the probe.

use std::future::Future;
use std::io;
use std::time::Duration;

use intransit_wire::mysql::{
    self, ServerGreeting, SslRequest, CLIENT_PROTOCOL_41, CLIENT_SECURE_CONNECTION, CLIENT_SSL,
    MAX_GREETING_PAYLOAD_LEN, UTF8MB4_GENERAL_CI,
};
use intransit_wire::{pg, printable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::{ScanError, Stage};
use crate::Target;

/// The largest ErrorResponse read after a PostgreSQL server answers an
/// SSLRequest with `E`; its text only decorates the error.
const MAX_PG_ERROR_LEN: usize = 8192;

/// The capabilities of the probe's own SSLRequest: TLS, and the 4.1
/// protocol that every server since MySQL 4.1 expects.
const PROBE_CAPABILITIES: u32 = CLIENT_SSL | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION;

/// The SSLRequest sent with `capabilities` (CLIENT_SSL is always added), a
/// 16 MiB maximum packet and `utf8mb4_general_ci`.
fn ssl_request(capabilities: u32) -> SslRequest {
    SslRequest {
        capabilities,
        max_packet_size: 1 << 24,
        collation: UTF8MB4_GENERAL_CI,
        extended_capabilities: 0,
    }
}

/// How a probe reached TLS, and what it learnt on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// How the client asked for TLS, for reports.
    pub(crate) how: &'static str,
    /// The server's version, when the protocol announces it before TLS.
    pub(crate) server_version: Option<String>,
}

/// The probe's single deadline, shared by every stage.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    /// A deadline `timeout` from now.
    pub(crate) fn after(timeout: Duration) -> Self {
        Deadline {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    /// Runs `fut` until the deadline; at the deadline the probe fails with
    /// [`ScanError::Timeout`] naming `stage`.
    pub(crate) async fn run<F: Future>(
        &self,
        stage: Stage,
        fut: F,
    ) -> Result<F::Output, ScanError> {
        tokio::time::timeout_at(self.at, fut)
            .await
            .map_err(|_| ScanError::Timeout {
                stage,
                timeout: self.timeout,
            })
    }
}

/// Performs the pre-TLS exchange that `target`'s protocol needs.
pub(crate) async fn negotiate(
    target: &Target,
    stream: &mut TcpStream,
    deadline: &Deadline,
) -> Result<Negotiated, ScanError> {
    let request = ssl_request(PROBE_CAPABILITIES);
    negotiate_with(target, stream, deadline, &request)
        .await
        .map(|(negotiated, _)| negotiated)
}

async fn negotiate_with(
    target: &Target,
    stream: &mut TcpStream,
    deadline: &Deadline,
    request: &SslRequest,
) -> Result<(Negotiated, Option<Vec<u8>>), ScanError> {
    match target {
        Target::Postgres { .. } => postgres(stream, deadline).await.map(|n| (n, None)),
        Target::Mysql { .. } => mysql(stream, deadline, request)
            .await
            .map(|(n, greeting)| (n, Some(greeting))),
        Target::Tls { .. } => Ok((
            Negotiated {
                how: "TLS from the first byte",
                server_version: None,
            },
            None,
        )),
    }
}

/// What [`request_tls`] learnt before the first TLS byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRequested {
    /// How TLS was requested: "PostgreSQL SSLRequest", "MySQL SSLRequest
    /// (CLIENT_SSL)" or "TLS from the first byte".
    pub how: &'static str,
    /// The server's version, when the protocol announces it before TLS.
    pub server_version: Option<String>,
    /// For MySQL, the greeting's payload as sent (header removed): a client
    /// that logs in after TLS needs its scramble and capabilities.
    pub mysql_greeting: Option<Vec<u8>>,
}

/// Runs the pre-TLS exchange of `target`'s protocol on an open connection
/// within `timeout`, leaving `stream` where the client's ClientHello goes.
///
/// For MySQL the SSLRequest announces `mysql_capabilities` (with
/// `CLIENT_SSL` added), which must match the HandshakeResponse the caller
/// sends after TLS. A server that does not offer TLS is
/// [`ScanError::TlsRefused`].
pub async fn request_tls(
    target: &Target,
    stream: &mut TcpStream,
    mysql_capabilities: u32,
    timeout: Duration,
) -> Result<TlsRequested, ScanError> {
    let deadline = Deadline::after(timeout);
    let request = ssl_request(mysql_capabilities);
    let (negotiated, mysql_greeting) = negotiate_with(target, stream, &deadline, &request).await?;
    Ok(TlsRequested {
        how: negotiated.how,
        server_version: negotiated.server_version,
        mysql_greeting,
    })
}

/// Sends an SSLRequest and reads the one-byte answer.
async fn postgres(stream: &mut TcpStream, deadline: &Deadline) -> Result<Negotiated, ScanError> {
    write_all(stream, &pg::encode_ssl_request(), deadline).await?;
    let stage = Stage::AwaitingSslAnswer;
    let mut answer = [0u8; 1];
    read_some(stream, &mut answer, stage, deadline).await?;
    match answer[0] {
        pg::SSL_ACCEPT => Ok(Negotiated {
            how: "PostgreSQL SSLRequest",
            server_version: None,
        }),
        pg::SSL_REFUSE => Err(ScanError::TlsRefused {
            reason: "it answered the SSLRequest with N (ssl = off)",
        }),
        b'E' => Err(ScanError::ServerError {
            message: postgres_error(stream, deadline).await,
        }),
        other => Err(ScanError::Protocol(format!(
            "the server answered the SSLRequest with byte 0x{other:02x}, \
             not S, N or E; is this a PostgreSQL server?"
        ))),
    }
}

/// Reads the rest of an ErrorResponse whose `E` was already read, and
/// returns its text. Anything that goes wrong here still leaves a useful
/// message, since the server has already refused.
async fn postgres_error(stream: &mut TcpStream, deadline: &Deadline) -> String {
    let fallback = "the server answered the SSLRequest with an error".to_owned();
    let mut buf = vec![b'E'];
    loop {
        match pg::parse_backend_frame_with_max(&buf, MAX_PG_ERROR_LEN) {
            Ok(Some((frame, _))) => {
                return match pg::parse_error_response(frame.body) {
                    Ok(fields) => {
                        let severity = fields.severity().unwrap_or("ERROR");
                        let message = fields.message().unwrap_or("(no message)");
                        let code = fields
                            .code()
                            .map(|code| format!(" ({})", code.as_str()))
                            .unwrap_or_default();
                        printable(format!("{severity}{code}: {message}").as_bytes())
                    }
                    Err(_) => fallback,
                };
            }
            Ok(None) => {}
            Err(_) => return fallback,
        }
        let mut chunk = [0u8; 1024];
        match read_some(stream, &mut chunk, Stage::AwaitingSslAnswer, deadline).await {
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(_) => return fallback,
        }
    }
}

/// Reads the server's greeting and, if it offers TLS, sends `request`.
/// Returns the greeting's payload too.
async fn mysql(
    stream: &mut TcpStream,
    deadline: &Deadline,
    request: &SslRequest,
) -> Result<(Negotiated, Vec<u8>), ScanError> {
    let stage = Stage::AwaitingGreeting;
    let mut buf = Vec::with_capacity(256);
    let (greeting, payload, sequence_id) = loop {
        match mysql::parse_packet_with_max(&buf, MAX_GREETING_PAYLOAD_LEN) {
            Ok(Some((packet, used))) => {
                if used != buf.len() {
                    return Err(ScanError::Protocol(format!(
                        "the server sent {} bytes after its greeting, before the client answered",
                        buf.len() - used
                    )));
                }
                if packet.sequence_id != 0 {
                    return Err(ScanError::Protocol(format!(
                        "the greeting has sequence id {}, not 0; is this a MySQL server?",
                        packet.sequence_id
                    )));
                }
                let parsed = mysql::parse_server_greeting(packet.payload).map_err(not_mysql)?;
                break (parsed, packet.payload.to_vec(), packet.sequence_id);
            }
            Ok(None) => {}
            Err(e) => return Err(not_mysql(e)),
        }
        let mut chunk = [0u8; 512];
        let n = read_some(stream, &mut chunk, stage, deadline).await?;
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };

    let hello = match greeting {
        ServerGreeting::Handshake(hello) => hello,
        ServerGreeting::Error(err) => {
            return Err(ScanError::ServerError {
                message: err.to_string(),
            })
        }
    };
    if !hello.offers_tls() {
        return Err(ScanError::TlsRefused {
            reason: "its greeting does not advertise CLIENT_SSL",
        });
    }
    // The SSLRequest answers the greeting: the next sequence id.
    let packet = request.encode_packet(sequence_id.wrapping_add(1));
    write_all(stream, &packet, deadline).await?;
    Ok((
        Negotiated {
            how: "MySQL SSLRequest (CLIENT_SSL)",
            server_version: Some(hello.server_version_printable()),
        },
        payload,
    ))
}

/// A greeting that is not a MySQL greeting, as the probe reports it.
fn not_mysql(e: intransit_wire::WireError) -> ScanError {
    ScanError::Protocol(format!(
        "reading the greeting: {e}; is this a MySQL server?"
    ))
}

/// Writes all of `bytes` before the deadline.
async fn write_all(
    stream: &mut TcpStream,
    bytes: &[u8],
    deadline: &Deadline,
) -> Result<(), ScanError> {
    let stage = Stage::RequestingTls;
    deadline
        .run(stage, stream.write_all(bytes))
        .await?
        .map_err(|error| ScanError::Io { stage, error })
}

/// Reads at least one byte into `buf` before the deadline; the server
/// closing the connection is an error.
async fn read_some(
    stream: &mut TcpStream,
    buf: &mut [u8],
    stage: Stage,
    deadline: &Deadline,
) -> Result<usize, ScanError> {
    match deadline.run(stage, stream.read(buf)).await? {
        Ok(0) => Err(ScanError::Io {
            stage,
            error: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ),
        }),
        Ok(n) => Ok(n),
        Err(error) => Err(ScanError::Io { stage, error }),
    }
}
