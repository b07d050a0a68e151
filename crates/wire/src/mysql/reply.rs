//! What the server answers during authentication (OK, ERR,
//! AuthSwitchRequest, AuthMoreData), and the ERR packets the proxy sends
//! itself.

use std::fmt;

use super::codec::{put_nul_terminated, Reader};
use super::lenenc;
use crate::text::write_printable;
use crate::WireError;

/// The first byte of an OK packet.
pub const OK_MARKER: u8 = 0x00;
/// The first byte of AuthMoreData (a plugin's extra round trip, such as
/// caching_sha2_password's fast-auth result or RSA public key).
pub const AUTH_MORE_DATA_MARKER: u8 = 0x01;
/// The first byte of an EOF packet, and of an AuthSwitchRequest.
pub const EOF_MARKER: u8 = 0xfe;
/// The first byte of an ERR packet.
pub const ERR_MARKER: u8 = 0xff;

/// The longest error message [`ErrPacket::new`] keeps: the server's own
/// limit (`MYSQL_ERRMSG_SIZE`).
pub const MAX_ERROR_MESSAGE_LEN: usize = 512;

/// An EOF packet is shorter than this; a 0xfe packet at least this long is
/// an OK packet in EOF clothing (CLIENT_DEPRECATE_EOF) or row data.
const EOF_MAX_LEN: usize = 9;

/// An error the proxy reports with the server's own code and SQLSTATE, so
/// clients show it the way they show the server's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerError {
    /// The MySQL error number.
    pub code: u16,
    /// The five-character SQLSTATE.
    pub sql_state: [u8; 5],
}

impl ServerError {
    /// `ER_SECURE_TRANSPORT_REQUIRED`: the client did not ask for TLS.
    pub const SECURE_TRANSPORT_REQUIRED: ServerError = ServerError {
        code: 3159,
        sql_state: *b"HY000",
    };
    /// `ER_ACCESS_DENIED_ERROR`: this identity may not log in as that user.
    pub const ACCESS_DENIED: ServerError = ServerError {
        code: 1045,
        sql_state: *b"28000",
    };
    /// `ER_CON_COUNT_ERROR`: too many connections.
    pub const TOO_MANY_CONNECTIONS: ServerError = ServerError {
        code: 1040,
        sql_state: *b"08004",
    };
    /// `ER_HANDSHAKE_ERROR`: a malformed handshake packet.
    pub const BAD_HANDSHAKE: ServerError = ServerError {
        code: 1043,
        sql_state: *b"08S01",
    };
}

/// An ERR packet: code, SQLSTATE (4.1 protocol) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    /// The MySQL error number.
    pub code: u16,
    /// The SQLSTATE, present when the packet has the `#` marker (every 4.1
    /// server sends it, except in place of a greeting).
    pub sql_state: Option<[u8; 5]>,
    /// The message as sent.
    pub message: Vec<u8>,
}

impl ErrPacket {
    const MESSAGE: &'static str = "ERR packet";

    /// An ERR packet for `error` with `message`, cut at
    /// [`MAX_ERROR_MESSAGE_LEN`] bytes on a character boundary.
    pub fn new(error: ServerError, message: &str) -> ErrPacket {
        let mut end = message.len().min(MAX_ERROR_MESSAGE_LEN);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        ErrPacket {
            code: error.code,
            sql_state: Some(error.sql_state),
            message: message.as_bytes().get(..end).unwrap_or_default().to_vec(),
        }
    }

    /// The whole packet, header included, that sends `error` with
    /// `message` as packet `sequence_id`. It cannot fail: the message is
    /// cut at [`MAX_ERROR_MESSAGE_LEN`] bytes, so the payload always fits
    /// one packet.
    pub fn framed(error: ServerError, message: &str, sequence_id: u8) -> Vec<u8> {
        let payload = ErrPacket::new(error, message).encode();
        let len = (payload.len() as u32).to_le_bytes();
        let mut out = Vec::with_capacity(4 + payload.len());
        out.extend_from_slice(&[len[0], len[1], len[2], sequence_id]);
        out.extend_from_slice(&payload);
        out
    }

    /// Parses an ERR packet payload, marker included.
    pub fn parse(payload: &[u8]) -> Result<ErrPacket, WireError> {
        let mut r = Reader::new(payload, Self::MESSAGE);
        if r.u8("empty payload")? != ERR_MARKER {
            return Err(r.error("does not start with 0xff"));
        }
        let code = r.u16("ends inside the error code")?;
        let rest = r.rest();
        let (sql_state, message) = match rest.split_first() {
            Some((b'#', after)) => match (after.get(..5), after.get(5..)) {
                (Some(state), Some(message)) => (state.try_into().ok(), message),
                _ => return Err(r.error("ends inside the SQLSTATE")),
            },
            _ => (None, rest),
        };
        Ok(ErrPacket {
            code,
            sql_state,
            message: message.to_vec(),
        })
    }

    /// The payload: 0xff, code, `#` and SQLSTATE when present, message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.message.len());
        out.push(ERR_MARKER);
        out.extend_from_slice(&self.code.to_le_bytes());
        if let Some(state) = &self.sql_state {
            out.push(b'#');
            out.extend_from_slice(state);
        }
        out.extend_from_slice(&self.message);
        out
    }

    /// The message for logs, with invalid UTF-8 replaced.
    pub fn message_lossy(&self) -> String {
        String::from_utf8_lossy(&self.message).into_owned()
    }
}

impl fmt::Display for ErrPacket {
    /// The way the `mariadb` client prints an error:
    /// `ERROR 1045 (28000): Access denied ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ERROR {}", self.code)?;
        if let Some(state) = &self.sql_state {
            write!(f, " ({})", state.escape_ascii())?;
        }
        f.write_str(": ")?;
        // Control characters from the peer are escaped so a message cannot
        // forge log lines; everything else prints as the client would.
        write_printable(f, &self.message)
    }
}

/// The fixed fields of an OK packet (4.1 protocol); what follows them
/// (info text, session state changes) is kept as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OkPacket {
    /// Rows affected by the statement (0 after authentication).
    pub affected_rows: u64,
    /// The last AUTO_INCREMENT value.
    pub last_insert_id: u64,
    /// Server status flags.
    pub status_flags: u16,
    /// Number of warnings.
    pub warnings: u16,
    /// Everything after the warnings: info and session state, whose layout
    /// depends on CLIENT_SESSION_TRACK.
    pub rest: Vec<u8>,
}

impl OkPacket {
    const MESSAGE: &'static str = "OK packet";

    /// Parses an OK packet payload (marker 0x00 included).
    pub fn parse(payload: &[u8]) -> Result<OkPacket, WireError> {
        let mut r = Reader::new(payload, Self::MESSAGE);
        if r.u8("empty payload")? != OK_MARKER {
            return Err(r.error("does not start with 0x00"));
        }
        let affected_rows = r.lenenc_int("ends inside the affected rows")?;
        let last_insert_id = r.lenenc_int("ends inside the last insert id")?;
        let status_flags = r.u16("ends inside the status flags")?;
        let warnings = r.u16("ends inside the warnings count")?;
        Ok(OkPacket {
            affected_rows,
            last_insert_id,
            status_flags,
            warnings,
            rest: r.rest().to_vec(),
        })
    }

    /// The payload, byte for byte what [`OkPacket::parse`] read.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![OK_MARKER];
        lenenc::encode_int(&mut out, self.affected_rows);
        lenenc::encode_int(&mut out, self.last_insert_id);
        out.extend_from_slice(&self.status_flags.to_le_bytes());
        out.extend_from_slice(&self.warnings.to_le_bytes());
        out.extend_from_slice(&self.rest);
        out
    }
}

/// The server asks the client to authenticate again with another plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSwitchRequest {
    /// The plugin to use, such as `client_ed25519`.
    pub plugin_name: Vec<u8>,
    /// The plugin's data (a new scramble or nonce), as sent.
    pub plugin_data: Vec<u8>,
}

impl AuthSwitchRequest {
    const MESSAGE: &'static str = "AuthSwitchRequest";

    /// Parses an AuthSwitchRequest payload (marker 0xfe included). The
    /// one-byte form (pre-4.1 "old password" switch) has no plugin name and
    /// is refused here; [`parse_server_auth_reply`] reports it separately.
    pub fn parse(payload: &[u8]) -> Result<AuthSwitchRequest, WireError> {
        let mut r = Reader::new(payload, Self::MESSAGE);
        if r.u8("empty payload")? != EOF_MARKER {
            return Err(r.error("does not start with 0xfe"));
        }
        let plugin_name = r
            .nul_terminated("plugin name is missing or not NUL-terminated")?
            .to_vec();
        Ok(AuthSwitchRequest {
            plugin_name,
            plugin_data: r.rest().to_vec(),
        })
    }

    /// The payload: 0xfe, plugin name and NUL, data.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = vec![EOF_MARKER];
        put_nul_terminated(&mut out, &self.plugin_name, "MySQL auth plugin name")?;
        out.extend_from_slice(&self.plugin_data);
        Ok(out)
    }
}

/// A server packet during authentication, after the client's
/// HandshakeResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAuthReply<'a> {
    /// Logged in.
    Ok(OkPacket),
    /// Refused.
    Err(ErrPacket),
    /// Authenticate again with another plugin.
    AuthSwitch(AuthSwitchRequest),
    /// The one-byte 0xfe: switch to the pre-4.1 password hash. No current
    /// server sends it, and a proxy should refuse it.
    OldAuthSwitch,
    /// More data for the current plugin, after the 0x01 marker.
    AuthMoreData(&'a [u8]),
}

/// Classifies a server packet payload during authentication.
pub fn parse_server_auth_reply(payload: &[u8]) -> Result<ServerAuthReply<'_>, WireError> {
    match payload {
        [] => Err(WireError::Malformed {
            message: "server authentication reply",
            reason: "empty payload",
        }),
        [OK_MARKER, ..] => OkPacket::parse(payload).map(ServerAuthReply::Ok),
        [ERR_MARKER, ..] => ErrPacket::parse(payload).map(ServerAuthReply::Err),
        [EOF_MARKER] => Ok(ServerAuthReply::OldAuthSwitch),
        [EOF_MARKER, ..] => AuthSwitchRequest::parse(payload).map(ServerAuthReply::AuthSwitch),
        [AUTH_MORE_DATA_MARKER, data @ ..] => Ok(ServerAuthReply::AuthMoreData(data)),
        [_, ..] => Err(WireError::Malformed {
            message: "server authentication reply",
            reason: "not OK, ERR, AuthSwitchRequest or AuthMoreData",
        }),
    }
}

/// Whether `payload` is an OK packet (marker 0x00 and at least the 7 bytes
/// of its fixed fields).
pub fn is_ok_packet(payload: &[u8]) -> bool {
    payload.first() == Some(&OK_MARKER) && payload.len() >= 7
}

/// Whether `payload` is an EOF packet (marker 0xfe, shorter than 9 bytes;
/// longer 0xfe packets are OK packets or row data).
pub fn is_eof_packet(payload: &[u8]) -> bool {
    payload.first() == Some(&EOF_MARKER) && payload.len() < EOF_MAX_LEN
}

/// Whether `payload` is an ERR packet.
pub fn is_err_packet(payload: &[u8]) -> bool {
    payload.first() == Some(&ERR_MARKER)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::mysql::captured::*;
    use crate::mysql::test_util::payload;
    use crate::mysql::{encode_packet, parse_packet, CLIENT_ED25519};

    #[test]
    fn access_denied_from_mariadb() {
        let bytes = payload(MARIADB_ERR_ACCESS_DENIED);
        let ServerAuthReply::Err(err) = parse_server_auth_reply(&bytes).unwrap() else {
            panic!("not an ERR packet");
        };
        assert_eq!(err.code, ServerError::ACCESS_DENIED.code);
        assert_eq!(err.sql_state, Some(ServerError::ACCESS_DENIED.sql_state));
        assert_eq!(
            err.to_string(),
            "ERROR 1045 (28000): Access denied for user 'nat'@'127.0.0.1' (using password: YES)"
        );
        assert_eq!(err.encode(), bytes);
        assert!(is_err_packet(&bytes));
        let forged = ErrPacket::new(ServerError::ACCESS_DENIED, "a\nb");
        assert_eq!(forged.to_string(), "ERROR 1045 (28000): a\\nb");
    }

    #[test]
    fn proxy_errors_encode_as_the_server_would() {
        let err = ErrPacket::new(
            ServerError::SECURE_TRANSPORT_REQUIRED,
            "Connections using insecure transport are prohibited; connect with TLS",
        );
        let packet = encode_packet(2, &err.encode()).unwrap();
        assert_eq!(&packet[3..10], b"\x02\xff\x57\x0c#HY");
        let (framed, _) = parse_packet(&packet).unwrap().unwrap();
        assert_eq!(ErrPacket::parse(framed.payload).unwrap(), err);
        for (error, code, state) in [
            (ServerError::ACCESS_DENIED, 1045, b"28000"),
            (ServerError::TOO_MANY_CONNECTIONS, 1040, b"08004"),
            (ServerError::BAD_HANDSHAKE, 1043, b"08S01"),
        ] {
            assert_eq!((error.code, &error.sql_state), (code, state));
        }
        let long = "é".repeat(400);
        let cut = ErrPacket::new(ServerError::ACCESS_DENIED, &long);
        assert_eq!(cut.message.len(), MAX_ERROR_MESSAGE_LEN);
        assert!(std::str::from_utf8(&cut.message).is_ok());
    }

    #[test]
    fn framed_err_packets_parse_back_whatever_the_message_length() {
        for len in [0, 10, MAX_ERROR_MESSAGE_LEN, 20_000_000] {
            let message = "x".repeat(len);
            let bytes = ErrPacket::framed(ServerError::ACCESS_DENIED, &message, 7);
            let (packet, used) = crate::mysql::parse_packet(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(packet.sequence_id, 7);
            let err = ErrPacket::parse(packet.payload).unwrap();
            assert_eq!(err.code, ServerError::ACCESS_DENIED.code);
            assert_eq!(err.message.len(), len.min(MAX_ERROR_MESSAGE_LEN));
        }
    }

    #[test]
    fn err_without_sql_state_and_truncated_ones() {
        // ERR sent in place of a greeting: no SQLSTATE.
        let bytes = b"\xff\x69\x04Host '10.0.0.9' is not allowed to connect";
        let err = ErrPacket::parse(bytes).unwrap();
        assert_eq!((err.code, err.sql_state), (1129, None));
        assert_eq!(err.encode(), bytes);
        assert!(ErrPacket::parse(b"\xff\x15").is_err());
        assert!(ErrPacket::parse(b"\xff\x15\x04#280").is_err());
        assert!(ErrPacket::parse(b"\x00\x15\x04").is_err());
    }

    #[test]
    fn ok_packets_from_mariadb() {
        for capture in [MARIADB_OK_DB, MARIADB_OK_NO_DB, MARIADB_OK_ED25519] {
            let bytes = payload(capture);
            assert!(is_ok_packet(&bytes));
            let ServerAuthReply::Ok(ok) = parse_server_auth_reply(&bytes).unwrap() else {
                panic!("not an OK packet");
            };
            assert_eq!((ok.affected_rows, ok.last_insert_id), (0, 0));
            assert_eq!(ok.status_flags & 0x0002, 0x0002, "autocommit");
            assert_eq!(ok.encode(), bytes);
            for end in 1..7 {
                assert!(parse_server_auth_reply(&bytes[..end]).is_err());
            }
        }
    }

    #[test]
    fn auth_switch_to_ed25519() {
        let bytes = payload(MARIADB_AUTH_SWITCH_ED25519);
        let ServerAuthReply::AuthSwitch(switch) = parse_server_auth_reply(&bytes).unwrap() else {
            panic!("not an AuthSwitchRequest");
        };
        assert_eq!(switch.plugin_name, CLIENT_ED25519.as_bytes());
        assert_eq!(switch.plugin_data.len(), 32);
        assert_eq!(switch.encode().unwrap(), bytes);
        assert!(!is_eof_packet(&bytes));
        assert!(parse_server_auth_reply(&bytes[..5]).is_err());
    }

    #[test]
    fn eof_more_data_and_unknown_markers() {
        assert_eq!(
            parse_server_auth_reply(&[EOF_MARKER]),
            Ok(ServerAuthReply::OldAuthSwitch)
        );
        assert!(is_eof_packet(&[0xfe, 0, 0, 2, 0]));
        assert!(!is_eof_packet(&[0xfe; 9]));
        // caching_sha2_password's "fast auth succeeded".
        assert_eq!(
            parse_server_auth_reply(&[AUTH_MORE_DATA_MARKER, 3]),
            Ok(ServerAuthReply::AuthMoreData(&[3]))
        );
        assert!(parse_server_auth_reply(&[]).is_err());
        assert!(parse_server_auth_reply(&[0x02, 0]).is_err());
        assert!(!is_ok_packet(&[0, 0, 0]));
    }
}
