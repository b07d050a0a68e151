//! Does the server still take a login without TLS? One login request for a
//! probe user that should not exist, classified by the server's first
//! answer. The probe never sends a password: it hangs up at the first
//! answer, whatever it is.

use intransit_wire::{mysql, pg, printable};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::Stage;
use crate::negotiate::Deadline;

/// What a plaintext login attempt got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Plaintext {
    /// The server asked for credentials (or let the probe in): a plaintext
    /// login is possible.
    Accepted,
    /// The server refused a login without TLS.
    Refused,
    /// The probe could not tell.
    Unknown,
}

/// The user and database the probe names.
pub const PROBE_USER: &str = "intransit_scan_probe";

/// The most of an answer the probe reads.
const MAX_ANSWER: usize = 16 * 1024;

async fn read_until<F>(stream: &mut TcpStream, deadline: &Deadline, done: F) -> Vec<u8>
where
    F: Fn(&[u8]) -> bool,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while buf.len() < MAX_ANSWER && !done(&buf) {
        match deadline
            .run(Stage::AwaitingSslAnswer, stream.read(&mut chunk))
            .await
        {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    buf
}

/// PostgreSQL: a StartupMessage without TLS.
pub(crate) async fn postgres(stream: &mut TcpStream, deadline: &Deadline) -> (Plaintext, String) {
    let startup = pg::StartupMessage {
        protocol: pg::ProtocolVersion::V3_0,
        params: vec![
            ("user".into(), PROBE_USER.into()),
            ("database".into(), PROBE_USER.into()),
            ("application_name".into(), "intransit-scan".into()),
        ],
    };
    let Ok(bytes) = startup.encode() else {
        return (Plaintext::Unknown, "could not build the probe".into());
    };
    if stream.write_all(&bytes).await.is_err() {
        return (
            Plaintext::Unknown,
            "the server closed the connection".into(),
        );
    }
    let answer = read_until(stream, deadline, |b| {
        matches!(pg::parse_backend_frame(b), Ok(Some(_)) | Err(_))
    })
    .await;
    classify_postgres(&answer)
}

/// Classifies PostgreSQL's first answer to a plaintext StartupMessage.
pub(crate) fn classify_postgres(answer: &[u8]) -> (Plaintext, String) {
    match pg::parse_backend_frame(answer) {
        Ok(Some((frame, _))) if frame.tag == b'R' => {
            let code = frame
                .body
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            let what = match code {
                Some(0) => "let the probe in without authentication (trust)",
                Some(3) => "asked for a cleartext password",
                Some(5) => "asked for an MD5 password",
                Some(10) => "offered SCRAM authentication",
                _ => "asked for authentication",
            };
            (
                Plaintext::Accepted,
                format!("a StartupMessage without TLS was answered: the server {what}"),
            )
        }
        Ok(Some((frame, _))) if frame.tag == b'E' => {
            let fields = pg::parse_error_response(frame.body).ok();
            let message = fields
                .as_ref()
                .and_then(|f| f.message())
                .map(|m| printable(m.as_bytes()))
                .unwrap_or_default();
            // pg_hba.conf's refusals name the missing encryption ("no
            // encryption"), or the rule that rejects; proxies in front of
            // PostgreSQL (intransit among them) say TLS is required.
            let refused = message.contains("encrypt")
                || message.contains("SSL")
                || message.contains("TLS")
                || message.contains("rejects connection");
            if refused {
                (
                    Plaintext::Refused,
                    format!("a StartupMessage without TLS was refused: {message}"),
                )
            } else {
                (
                    Plaintext::Accepted,
                    format!("a StartupMessage without TLS passed pg_hba.conf and was refused only later: {message}"),
                )
            }
        }
        _ => (
            Plaintext::Unknown,
            "the server's answer to a StartupMessage was not understood".into(),
        ),
    }
}

/// MySQL/MariaDB: a HandshakeResponse without CLIENT_SSL and an empty auth
/// response.
pub(crate) async fn mysql(stream: &mut TcpStream, deadline: &Deadline) -> (Plaintext, String) {
    let greeting = read_until(stream, deadline, |b| {
        !matches!(mysql::parse_packet(b), Ok(None))
    })
    .await;
    let Ok(Some((packet, _))) = mysql::parse_packet(&greeting) else {
        return (Plaintext::Unknown, "no greeting".into());
    };
    if mysql::is_err_packet(packet.payload) {
        return (
            Plaintext::Unknown,
            "the server refused the connection before its greeting".into(),
        );
    }
    let Ok(hello) = mysql::HandshakeV10::parse(packet.payload) else {
        return (Plaintext::Unknown, "the greeting was not understood".into());
    };
    let caps = mysql::CLIENT_PROTOCOL_41
        | mysql::CLIENT_SECURE_CONNECTION
        | mysql::CLIENT_PLUGIN_AUTH
        | (hello.capabilities & mysql::CLIENT_LONG_PASSWORD);
    let response = mysql::HandshakeResponse41 {
        capabilities: caps,
        max_packet_size: 1 << 24,
        collation: 45,
        extended_capabilities: 0,
        user: PROBE_USER.as_bytes().to_vec(),
        auth_response: Vec::new(),
        database: None,
        auth_plugin_name: Some(b"mysql_native_password".to_vec()),
        connect_attrs: None,
        zstd_compression_level: None,
    };
    let Ok(payload) = response.encode() else {
        return (Plaintext::Unknown, "could not build the probe".into());
    };
    let Ok(bytes) = mysql::encode_packet(packet.sequence_id.wrapping_add(1), &payload) else {
        return (Plaintext::Unknown, "could not build the probe".into());
    };
    if stream.write_all(&bytes).await.is_err() {
        return (
            Plaintext::Unknown,
            "the server closed the connection".into(),
        );
    }
    let answer = read_until(stream, deadline, |b| {
        !matches!(mysql::parse_packet(b), Ok(None))
    })
    .await;
    classify_mysql(&answer)
}

/// Classifies the server's answer to a plaintext HandshakeResponse.
pub(crate) fn classify_mysql(answer: &[u8]) -> (Plaintext, String) {
    let Ok(Some((packet, _))) = mysql::parse_packet(answer) else {
        return (Plaintext::Unknown, "no answer to the login request".into());
    };
    match packet.payload.first() {
        Some(&mysql::ERR_MARKER) => {
            let Ok(err) = mysql::ErrPacket::parse(packet.payload) else {
                return (
                    Plaintext::Unknown,
                    "an error packet that was not understood".into(),
                );
            };
            let message = printable(&err.message);
            let transport = err.code == mysql::ServerError::SECURE_TRANSPORT_REQUIRED.code
                || message.contains("insecure transport")
                || message.contains("secure_transport");
            if transport {
                (
                    Plaintext::Refused,
                    format!("a login without TLS was refused: {} {message}", err.code),
                )
            } else {
                // MariaDB checks require_secure_transport only after a
                // successful authentication, and the probe never
                // authenticates: an access-denied answer says nothing
                // about transport.
                (
                    Plaintext::Unknown,
                    format!(
                        "cannot tell: the probe user was refused ({} {message}) before any transport check; \
                         MariaDB checks require_secure_transport only after authenticating (lint its configuration)",
                        err.code
                    ),
                )
            }
        }
        Some(_) => (
            Plaintext::Accepted,
            "a login without TLS was answered with an authentication step".into(),
        ),
        None => (Plaintext::Unknown, "an empty answer".into()),
    }
}

/// `tls` targets: the protocol is unknown, so nothing can be concluded.
pub(crate) async fn raw(_stream: &mut TcpStream, _deadline: &Deadline) -> (Plaintext, String) {
    (
        Plaintext::Unknown,
        "not tested: a tls:// target's application protocol is unknown".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_answers_are_classified() {
        let mut sasl = vec![b'R', 0, 0, 0, 23, 0, 0, 0, 10];
        sasl.extend_from_slice(b"SCRAM-SHA-256\0\0");
        assert_eq!(classify_postgres(&sasl).0, Plaintext::Accepted);
        let error = |msg: &str| {
            let mut body = b"SFATAL\0C28000\0M".to_vec();
            body.extend_from_slice(msg.as_bytes());
            body.extend_from_slice(b"\0\0");
            let mut frame = vec![b'E'];
            frame.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            frame.extend_from_slice(&body);
            frame
        };
        let refused = error("no pg_hba.conf entry for host \"127.0.0.1\", user \"x\", database \"x\", no encryption");
        assert_eq!(classify_postgres(&refused).0, Plaintext::Refused);
        let past = error("role \"intransit_scan_probe\" does not exist");
        assert_eq!(classify_postgres(&past).0, Plaintext::Accepted);
        assert_eq!(classify_postgres(b"garbage").0, Plaintext::Unknown);
    }

    #[test]
    fn mysql_answers_are_classified() {
        let err = |code: u16, msg: &str| {
            let mut payload = vec![0xff];
            payload.extend_from_slice(&code.to_le_bytes());
            payload.extend_from_slice(b"#HY000");
            payload.extend_from_slice(msg.as_bytes());
            mysql::encode_packet(2, &payload).unwrap_or_default()
        };
        assert_eq!(
            classify_mysql(&err(
                3159,
                "Connections using insecure transport are prohibited"
            ))
            .0,
            Plaintext::Refused
        );
        assert_eq!(
            classify_mysql(&err(1045, "Access denied for user")).0,
            Plaintext::Unknown
        );
        let switch = mysql::encode_packet(2, b"\xfemysql_native_password\0abc").unwrap_or_default();
        assert_eq!(classify_mysql(&switch).0, Plaintext::Accepted);
    }
}
