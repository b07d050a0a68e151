//! The MySQL and MariaDB bytes exchanged before TLS starts, as pure
//! functions.
//!
//! This module owns packet framing (3-byte little-endian payload length and
//! a sequence id), the server's greeting ([`HandshakeV10`], or an
//! [`ErrPacket`] when the server refuses the client outright) and the
//! client's SSLRequest packet. Parsers take everything received so far and
//! answer `Ok(Some((value, consumed)))`, `Ok(None)` for "need more bytes", or
//! a [`MysqlError`]; they bound every length and never panic on what a peer
//! sends.
//!
//! It must never do I/O or decide policy (whether a server without TLS is
//! acceptable). It follows the layout in the MySQL source
//! (`sql/auth/sql_authentication.cc`, `include/mysql_com.h`) and the
//! MariaDB client/server protocol documentation. It is written to move to
//! `intransit-wire` unchanged once the proxy speaks MySQL too.

use std::fmt;

use crate::printable;

/// The largest payload one packet can carry: the 3-byte length field's
/// maximum. A payload of exactly this length continues in the next packet.
pub const MAX_PACKET_LEN: usize = 0xFF_FFFF;

/// The largest greeting this crate accepts. Real greetings are about 100
/// bytes and error messages at most 512, so anything longer is not a MySQL
/// server (an SSH banner, for one, reads as a 4.7 MB length).
pub const MAX_GREETING_LEN: usize = 4096;

/// The length of the packet header: payload length and sequence id.
pub const HEADER_LEN: usize = 4;

/// The protocol version byte that starts a HandshakeV10 greeting.
pub const PROTOCOL_VERSION_10: u8 = 10;

/// The first byte of an ERR packet.
pub const ERR_MARKER: u8 = 0xff;

/// Capability flag: the client uses the 4.1 protocol (error SQL states,
/// 4-byte capability flags). MySQL 8 refuses clients without it.
pub const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;

/// Capability flag: TLS. A server advertises it in its greeting when it
/// offers TLS; a client sets it in its SSLRequest to start TLS.
pub const CLIENT_SSL: u32 = 0x0000_0800;

/// Capability flag: 4.1 authentication with a length-prefixed response.
pub const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;

/// Collation id 45, `utf8mb4_general_ci`, understood by MySQL 5.5+ and
/// every MariaDB.
pub const UTF8MB4_GENERAL_CI: u8 = 45;

/// The payload length of an SSLRequest packet.
pub const SSL_REQUEST_LEN: usize = 32;

/// The sequence id of the client's first packet, the answer to the
/// greeting (sequence id 0).
pub const SSL_REQUEST_SEQUENCE_ID: u8 = 1;

/// The capabilities this crate's SSLRequest announces: TLS, and the 4.1
/// protocol that every server since MySQL 4.1 expects.
pub const SSL_REQUEST_CAPABILITIES: u32 =
    CLIENT_SSL | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION;

/// The offset of the reserved zero bytes in an SSLRequest payload.
const SSL_REQUEST_FILLER_AT: usize = 9;

/// Why bytes are not the MySQL packet they should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MysqlError {
    /// The length field announces more than the caller allows.
    #[error(
        "a packet of {len} bytes is longer than the {max} allowed here; is this a MySQL server?"
    )]
    PacketTooLong {
        /// The announced payload length.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// A packet with no payload where one was expected.
    #[error("empty packet")]
    Empty,
    /// A greeting of a protocol version other than 10 (version 9 is MySQL
    /// 3.x) or something that is not a greeting at all.
    #[error("unsupported greeting: protocol version {0} (only 10 is supported); is this a MySQL server?")]
    UnsupportedProtocol(u8),
    /// The payload ends in the middle of `field`.
    #[error("the packet ends inside {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A NUL-terminated string without its NUL.
    #[error("{field} is not NUL-terminated")]
    MissingNul {
        /// The field being read.
        field: &'static str,
    },
    /// An SSLRequest payload that is not what a client sends.
    #[error("not an SSLRequest: {0}")]
    NotSslRequest(&'static str),
}

/// One packet: its sequence id and a view of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The packet's position in the current exchange, starting at 0.
    pub sequence_id: u8,
    /// The payload, without the header.
    pub payload: &'a [u8],
}

/// Splits the first packet off `buf`, allowing payloads up to `max_len`
/// bytes (at most [`MAX_PACKET_LEN`]).
///
/// Returns the packet and the number of bytes it took, or `Ok(None)` when
/// `buf` does not hold a whole packet yet.
pub fn parse_packet(buf: &[u8], max_len: usize) -> Result<Option<(Packet<'_>, usize)>, MysqlError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let max = max_len.min(MAX_PACKET_LEN);
    if len > max {
        return Err(MysqlError::PacketTooLong { len, max });
    }
    let end = HEADER_LEN + len;
    Ok(buf.get(HEADER_LEN..end).map(|payload| {
        (
            Packet {
                sequence_id: header[3],
                payload,
            },
            end,
        )
    }))
}

/// Frames `payload` as one packet with `sequence_id`. Returns `None` if the
/// payload is too long for one packet.
pub fn encode_packet(sequence_id: u8, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() >= MAX_PACKET_LEN {
        return None;
    }
    let len = payload.len().to_le_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&[len[0], len[1], len[2], sequence_id]);
    out.extend_from_slice(payload);
    Some(out)
}

/// What a server sends first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// The normal greeting, which says whether TLS is offered.
    Handshake(HandshakeV10),
    /// A refusal before any negotiation, such as "Host '...' is not
    /// allowed to connect to this MySQL server" or "Too many connections".
    Error(ErrPacket),
}

/// The fields of a HandshakeV10 greeting that matter before TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeV10 {
    /// The server's version string, as sent (MariaDB 10+ prefixes it with
    /// `5.5.5-` for old clients). Control characters are escaped.
    pub server_version: String,
    /// The connection (thread) id the server assigned.
    pub connection_id: u32,
    /// All capability flags: the lower two bytes, and the upper two when the
    /// greeting has them.
    pub capabilities: u32,
    /// The server's default collation id, when the greeting has it.
    pub collation: Option<u8>,
    /// The server status flags, when the greeting has them.
    pub status_flags: Option<u16>,
}

impl HandshakeV10 {
    /// Whether the server offers TLS (`CLIENT_SSL`).
    pub fn offers_tls(&self) -> bool {
        self.capabilities & CLIENT_SSL != 0
    }
}

/// An ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    /// The MySQL error number, e.g. 1130 for a host that is not allowed.
    pub code: u16,
    /// The five-character SQL state, when the packet has one. Errors sent
    /// in place of a greeting usually do not, since the server does not yet
    /// know whether the client speaks the 4.1 protocol.
    pub sql_state: Option<String>,
    /// The human-readable message, control characters escaped.
    pub message: String,
}

impl fmt::Display for ErrPacket {
    /// The way the `mysql` client prints an error:
    /// `ERROR 1130 (HY000): Host '10.0.0.9' is not allowed ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ERROR {}", self.code)?;
        if let Some(state) = &self.sql_state {
            write!(f, " ({state})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Parses the payload of the server's first packet.
pub fn parse_greeting(payload: &[u8]) -> Result<Greeting, MysqlError> {
    let mut reader = Reader::new(payload);
    match reader
        .u8("protocol version")
        .map_err(|_| MysqlError::Empty)?
    {
        PROTOCOL_VERSION_10 => parse_handshake_v10(reader).map(Greeting::Handshake),
        ERR_MARKER => parse_err_body(reader).map(Greeting::Error),
        other => Err(MysqlError::UnsupportedProtocol(other)),
    }
}

/// Parses an ERR packet's payload, marker included.
pub fn parse_err_packet(payload: &[u8]) -> Result<ErrPacket, MysqlError> {
    let mut reader = Reader::new(payload);
    match reader.u8("ERR marker").map_err(|_| MysqlError::Empty)? {
        ERR_MARKER => parse_err_body(reader),
        other => Err(MysqlError::UnsupportedProtocol(other)),
    }
}

fn parse_handshake_v10(mut reader: Reader<'_>) -> Result<HandshakeV10, MysqlError> {
    let server_version = printable(reader.nul_terminated("server version")?);
    let connection_id = reader.u32_le("connection id")?;
    reader.skip(8, "auth-plugin-data part 1")?;
    reader.skip(1, "filler")?;
    let lower = reader.u16_le("capability flags")?;
    // Servers before 4.1 could end the greeting here; everything after is
    // optional as far as TLS is concerned.
    let (collation, status_flags, upper) = if reader.is_empty() {
        (None, None, 0)
    } else {
        let collation = reader.u8("character set")?;
        let status = reader.u16_le("status flags")?;
        let upper = reader.u16_le("upper capability flags")?;
        (Some(collation), Some(status), upper)
    };
    Ok(HandshakeV10 {
        server_version,
        connection_id,
        capabilities: u32::from(lower) | u32::from(upper) << 16,
        collation,
        status_flags,
    })
}

fn parse_err_body(mut reader: Reader<'_>) -> Result<ErrPacket, MysqlError> {
    let code = reader.u16_le("error code")?;
    let rest = reader.rest();
    let (sql_state, message) = match rest.split_first() {
        Some((b'#', after)) if after.len() >= 5 => {
            let (state, message) = after.split_at(5);
            (Some(printable(state)), message)
        }
        _ => (None, rest),
    };
    Ok(ErrPacket {
        code,
        sql_state,
        message: printable(message),
    })
}

/// The client's request to start TLS, sent in place of the
/// HandshakeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SslRequest {
    /// The client's capability flags; [`CLIENT_SSL`] is always set.
    pub capabilities: u32,
    /// The largest packet the client will accept.
    pub max_packet_size: u32,
    /// The client's collation id.
    pub collation: u8,
}

impl SslRequest {
    /// The request this crate sends: [`SSL_REQUEST_CAPABILITIES`], a 16 MiB
    /// maximum packet, and `utf8mb4_general_ci`.
    pub fn probe() -> Self {
        SslRequest {
            capabilities: SSL_REQUEST_CAPABILITIES,
            max_packet_size: 1 << 24,
            collation: UTF8MB4_GENERAL_CI,
        }
    }

    /// The whole packet, header included, with `sequence_id` (1 when it
    /// answers the greeting): capability flags, maximum packet size,
    /// collation, then 23 zero bytes.
    pub fn encode(&self, sequence_id: u8) -> [u8; HEADER_LEN + SSL_REQUEST_LEN] {
        let mut out = [0u8; HEADER_LEN + SSL_REQUEST_LEN];
        // SSL_REQUEST_LEN (32) fits in the first byte of the length field.
        out[0] = SSL_REQUEST_LEN as u8;
        out[3] = sequence_id;
        out[4..8].copy_from_slice(&(self.capabilities | CLIENT_SSL).to_le_bytes());
        out[8..12].copy_from_slice(&self.max_packet_size.to_le_bytes());
        out[12] = self.collation;
        out
    }
}

/// Parses an SSLRequest payload (the header already removed), as a server
/// reads it.
pub fn parse_ssl_request(payload: &[u8]) -> Result<SslRequest, MysqlError> {
    if payload.len() != SSL_REQUEST_LEN {
        return Err(MysqlError::NotSslRequest(
            "the payload is not 32 bytes long",
        ));
    }
    let mut reader = Reader::new(payload);
    let capabilities = reader.u32_le("capability flags")?;
    let max_packet_size = reader.u32_le("max packet size")?;
    let collation = reader.u8("character set")?;
    if capabilities & CLIENT_SSL == 0 {
        return Err(MysqlError::NotSslRequest("CLIENT_SSL is not set"));
    }
    if capabilities & CLIENT_PROTOCOL_41 == 0 {
        return Err(MysqlError::NotSslRequest("CLIENT_PROTOCOL_41 is not set"));
    }
    // MariaDB keeps extended capabilities in the last four reserved bytes,
    // so only the ones before them must be zero.
    if payload
        .get(SSL_REQUEST_FILLER_AT..SSL_REQUEST_LEN - 4)
        .is_some_and(|filler| filler.iter().any(|&b| b != 0))
    {
        return Err(MysqlError::NotSslRequest("the reserved bytes are not zero"));
    }
    Ok(SslRequest {
        capabilities,
        max_packet_size,
        collation,
    })
}

/// A cursor over a payload that reports the field it was reading when the
/// bytes run out.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn rest(self) -> &'a [u8] {
        self.buf
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], MysqlError> {
        if self.buf.len() < n {
            return Err(MysqlError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn skip(&mut self, n: usize, field: &'static str) -> Result<(), MysqlError> {
        self.take(n, field).map(drop)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, MysqlError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16_le(&mut self, field: &'static str) -> Result<u16, MysqlError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32_le(&mut self, field: &'static str) -> Result<u32, MysqlError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn nul_terminated(&mut self, field: &'static str) -> Result<&'a [u8], MysqlError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(MysqlError::MissingNul { field })?;
        let value = self.take(nul, field)?;
        self.skip(1, field)?;
        Ok(value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A MySQL 8.0 greeting (protocol 10, version "8.0.36", connection id
    /// 8, caching_sha2_password), with CLIENT_SSL set in the capabilities
    /// 0xdfff_ffff.
    const MYSQL8_GREETING: &[u8] = b"\x4a\x00\x00\x00\
        \x0a8.0.36\x00\
        \x08\x00\x00\x00\
        \x1f\x3e\x4c\x01\x6f\x52\x1d\x32\
        \x00\
        \xff\xff\
        \xff\
        \x02\x00\
        \xff\xdf\
        \x15\
        \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
        \x0c\x47\x5e\x62\x50\x2e\x5c\x3d\x3b\x13\x6a\x48\x00\
        caching_sha2_password\x00";

    /// What MySQL sends to a host that no account may connect from: no SQL
    /// state, since the client's capabilities are not known yet.
    const HOST_NOT_ALLOWED: &[u8] = b"\x41\x00\x00\x00\xff\x6a\x04\
        Host '10.0.0.9' is not allowed to connect to this MySQL server";

    #[test]
    fn mysql8_greeting_offers_tls() {
        let (packet, used) = parse_packet(MYSQL8_GREETING, MAX_GREETING_LEN)
            .unwrap()
            .unwrap();
        assert_eq!(used, MYSQL8_GREETING.len());
        assert_eq!(packet.sequence_id, 0);
        let Greeting::Handshake(hello) = parse_greeting(packet.payload).unwrap() else {
            panic!("not a handshake");
        };
        assert_eq!(hello.server_version, "8.0.36");
        assert_eq!(hello.connection_id, 8);
        assert_eq!(hello.capabilities, 0xdfff_ffff);
        assert_eq!(hello.collation, Some(0xff));
        assert_eq!(hello.status_flags, Some(2));
        assert!(hello.offers_tls());
    }

    #[test]
    fn greeting_without_client_ssl() {
        let mut bytes = MYSQL8_GREETING.to_vec();
        // The lower capability bytes follow the 4-byte header, the protocol
        // version, "8.0.36\0", the connection id, 8 bytes and a filler.
        let lower = HEADER_LEN + 1 + 7 + 4 + 8 + 1;
        bytes[lower + 1] &= !0x08;
        let (packet, _) = parse_packet(&bytes, MAX_GREETING_LEN).unwrap().unwrap();
        let Greeting::Handshake(hello) = parse_greeting(packet.payload).unwrap() else {
            panic!("not a handshake");
        };
        assert!(!hello.offers_tls());
    }

    #[test]
    fn pre_41_greeting_ends_after_lower_capabilities() {
        let payload = b"\x0a3.23.58\x00\x01\x00\x00\x00abcdefgh\x00\x2c\x08";
        let Greeting::Handshake(hello) = parse_greeting(payload).unwrap() else {
            panic!("not a handshake");
        };
        assert_eq!(hello.capabilities, 0x082c);
        assert!(hello.offers_tls());
        assert_eq!(hello.collation, None);
    }

    #[test]
    fn err_greeting_carries_the_servers_message() {
        let (packet, _) = parse_packet(HOST_NOT_ALLOWED, MAX_GREETING_LEN)
            .unwrap()
            .unwrap();
        let Greeting::Error(err) = parse_greeting(packet.payload).unwrap() else {
            panic!("not an error");
        };
        assert_eq!(err.code, 1130);
        assert_eq!(err.sql_state, None);
        assert_eq!(
            err.to_string(),
            "ERROR 1130: Host '10.0.0.9' is not allowed to connect to this MySQL server"
        );
    }

    #[test]
    fn err_packet_with_sql_state() {
        let err = parse_err_packet(b"\xff\x10\x04#08004Too many connections").unwrap();
        assert_eq!(err.code, 1040);
        assert_eq!(err.sql_state.as_deref(), Some("08004"));
        assert_eq!(err.to_string(), "ERROR 1040 (08004): Too many connections");
        assert!(parse_err_packet(b"\x0a").is_err());
        assert_eq!(parse_err_packet(b""), Err(MysqlError::Empty));
        assert_eq!(
            parse_err_packet(b"\xff\x10"),
            Err(MysqlError::Truncated {
                field: "error code"
            })
        );
    }

    #[test]
    fn server_text_cannot_drive_the_terminal() {
        let err = parse_err_packet(b"\xff\x01\x00bad \x1b[31mred\n\xfe").unwrap();
        assert_eq!(err.message, "bad \\u{1b}[31mred\\n\u{fffd}");
        let payload = b"\x0a8.0\x07\x00\x01\x00\x00\x00abcdefgh\x00\x00\x08";
        let Greeting::Handshake(hello) = parse_greeting(payload).unwrap() else {
            panic!("not a handshake");
        };
        assert_eq!(hello.server_version, "8.0\\u{7}");
    }

    #[test]
    fn need_more_bytes() {
        for end in 0..MYSQL8_GREETING.len() {
            assert_eq!(
                parse_packet(&MYSQL8_GREETING[..end], MAX_GREETING_LEN),
                Ok(None),
                "{end}"
            );
        }
    }

    #[test]
    fn lengths_are_bounded() {
        // "SSH-2.0-..." read as a MySQL header.
        assert_eq!(
            parse_packet(b"SSH-2.0-OpenSSH", MAX_GREETING_LEN),
            Err(MysqlError::PacketTooLong {
                len: 0x48_5353,
                max: MAX_GREETING_LEN
            })
        );
        assert_eq!(
            parse_packet(b"\xff\xff\xff\x00", usize::MAX),
            Ok(None),
            "the largest packet is allowed but incomplete"
        );
        assert!(encode_packet(0, &vec![0; MAX_PACKET_LEN]).is_none());
        assert_eq!(
            encode_packet(3, b"ab"),
            Some(b"\x02\x00\x00\x03ab".to_vec())
        );
    }

    #[test]
    fn truncated_and_unsupported_greetings() {
        assert_eq!(parse_greeting(b""), Err(MysqlError::Empty));
        assert_eq!(
            parse_greeting(b"\x09"),
            Err(MysqlError::UnsupportedProtocol(9))
        );
        assert_eq!(
            parse_greeting(b"\x0a8.0.36"),
            Err(MysqlError::MissingNul {
                field: "server version"
            })
        );
        assert_eq!(
            parse_greeting(b"\x0a8.0.36\x00\x01\x00"),
            Err(MysqlError::Truncated {
                field: "connection id"
            })
        );
        assert_eq!(
            parse_greeting(b"\x0a8\x00\x01\x00\x00\x00abcdefgh\x00\x00"),
            Err(MysqlError::Truncated {
                field: "capability flags"
            })
        );
        assert_eq!(
            parse_greeting(b"\x0a8\x00\x01\x00\x00\x00abcdefgh\x00\x00\x08\x2d\x02"),
            Err(MysqlError::Truncated {
                field: "status flags"
            })
        );
    }

    #[test]
    fn truncated_input_never_panics() {
        let payload = &MYSQL8_GREETING[HEADER_LEN..];
        for end in 0..payload.len() {
            let _ = parse_greeting(&payload[..end]);
            let _ = parse_err_packet(&payload[..end]);
            let _ = parse_ssl_request(&payload[..end]);
        }
        let err = &HOST_NOT_ALLOWED[HEADER_LEN..];
        for end in 0..err.len() {
            let _ = parse_greeting(&err[..end]);
        }
    }

    #[test]
    fn ssl_request_layout() {
        let packet = SslRequest::probe().encode(SSL_REQUEST_SEQUENCE_ID);
        let mut expected = vec![0x20, 0x00, 0x00, 0x01];
        // CLIENT_SSL | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION
        expected.extend_from_slice(&[0x00, 0x8a, 0x00, 0x00]);
        // 16 MiB maximum packet.
        expected.extend_from_slice(&[0x00, 0x00, 0x00, 0x01]);
        // utf8mb4_general_ci.
        expected.push(45);
        expected.extend_from_slice(&[0; 23]);
        assert_eq!(packet.to_vec(), expected);

        let (framed, used) = parse_packet(&packet, MAX_PACKET_LEN).unwrap().unwrap();
        assert_eq!(used, packet.len());
        assert_eq!(framed.sequence_id, 1);
        assert_eq!(parse_ssl_request(framed.payload), Ok(SslRequest::probe()));
    }

    #[test]
    fn ssl_request_always_sets_client_ssl() {
        let request = SslRequest {
            capabilities: CLIENT_PROTOCOL_41,
            ..SslRequest::probe()
        };
        let packet = request.encode(1);
        let parsed = parse_ssl_request(&packet[HEADER_LEN..]).unwrap();
        assert_eq!(parsed.capabilities, CLIENT_PROTOCOL_41 | CLIENT_SSL);
    }

    #[test]
    fn what_is_not_an_ssl_request() {
        let good = SslRequest::probe().encode(1);
        let payload = &good[HEADER_LEN..];
        assert!(parse_ssl_request(&payload[..31]).is_err());

        let mut no_ssl = payload.to_vec();
        no_ssl[1] &= !0x08;
        assert_eq!(
            parse_ssl_request(&no_ssl),
            Err(MysqlError::NotSslRequest("CLIENT_SSL is not set"))
        );

        let mut old = payload.to_vec();
        old[1] &= !0x02;
        assert_eq!(
            parse_ssl_request(&old),
            Err(MysqlError::NotSslRequest("CLIENT_PROTOCOL_41 is not set"))
        );

        let mut filler = payload.to_vec();
        filler[20] = 1;
        assert!(parse_ssl_request(&filler).is_err());

        // MariaDB's extended capabilities in the last four bytes are fine.
        let mut mariadb = payload.to_vec();
        mariadb[31] = 0x01;
        assert!(parse_ssl_request(&mariadb).is_ok());
    }
}
