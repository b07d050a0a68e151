//! The first packet of a PostgreSQL connection, and the negotiation requests
//! the proxy sends upstream.
//!
//! Startup-phase packets have no type byte: a length word (counting itself)
//! and a 32-bit code. The code is either a special request (SSL, GSSAPI
//! encryption, cancel) or the protocol version of a StartupMessage.

use std::fmt;

use super::{read_u32, split_cstr};
use crate::tls::CONTENT_TYPE_HANDSHAKE;
use crate::WireError;

/// Request code of an SSLRequest (1234 << 16 | 5679).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// Request code of a GSSENCRequest (1234 << 16 | 5680).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// Request code of a CancelRequest (1234 << 16 | 5678).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Protocol version 3.0 as sent in a StartupMessage (3 << 16).
pub const PROTOCOL_VERSION_3_0: u32 = 196_608;
/// Protocol version 3.2 (PostgreSQL 18) as sent in a StartupMessage.
pub const PROTOCOL_VERSION_3_2: u32 = 196_610;

/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`: the largest startup packet the
/// server reads, counted like the server counts it, without the 4-byte
/// length word. A packet may therefore declare a length of up to 10 004.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// The longest cancel secret key: 4 bytes in protocol 3.0, up to 256 bytes
/// from protocol 3.2 (PostgreSQL 18).
pub const MAX_CANCEL_KEY_LEN: usize = 256;

/// The ALPN protocol id of direct TLS (PostgreSQL 17): a server accepts
/// direct TLS only from a client that offers it.
pub const ALPN: &[u8] = b"postgresql";

/// The server's one-byte answer to an SSLRequest: go ahead with TLS.
pub const SSL_ACCEPT: u8 = b'S';
/// The server's one-byte answer to an SSLRequest: no TLS here.
pub const SSL_REFUSE: u8 = b'N';
/// The server's one-byte answer to a GSSENCRequest: no GSSAPI encryption
/// (libpq then tries an SSLRequest or plaintext, depending on `sslmode`).
pub const GSSENC_REFUSE: u8 = b'N';

/// Length word, request code, process id.
const CANCEL_HEADER_LEN: usize = 12;
/// Length word and code: the smallest packet of the startup phase.
const MIN_STARTUP_PACKET_LEN: usize = 8;

/// The first thing a client sends on a new PostgreSQL connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitialMessage {
    /// SSLRequest: the client wants TLS. Answer [`SSL_ACCEPT`] or
    /// [`SSL_REFUSE`]. Bytes that arrive after it and before the TLS
    /// handshake must not be processed (CVE-2021-23214): a caller that finds
    /// more than the consumed 8 bytes in its buffer must close the
    /// connection.
    SslRequest,
    /// GSSENCRequest: the client wants GSSAPI encryption.
    GssEncRequest,
    /// CancelRequest: cancel a query on another connection.
    Cancel(CancelRequest),
    /// StartupMessage: a plaintext session start.
    Startup(StartupMessage),
    /// The first byte is a TLS handshake record (PostgreSQL 17
    /// `sslnegotiation=direct`). Nothing is consumed: the TLS stack must see
    /// every byte.
    DirectTls,
}

/// A protocol version: major in the upper 16 bits of the code, minor in the
/// lower 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// Major version; only 3 is supported.
    pub major: u16,
    /// Minor version; 0 (all servers) or 2 (PostgreSQL 18).
    pub minor: u16,
}

impl ProtocolVersion {
    /// Protocol 3.0, spoken by every PostgreSQL since 7.4.
    pub const V3_0: Self = Self::from_code(PROTOCOL_VERSION_3_0);
    /// Protocol 3.2, PostgreSQL 18 (longer cancel keys).
    pub const V3_2: Self = Self::from_code(PROTOCOL_VERSION_3_2);

    /// Splits a 32-bit code into major and minor.
    pub const fn from_code(code: u32) -> Self {
        Self {
            major: (code >> 16) as u16,
            minor: (code & 0xffff) as u16,
        }
    }

    /// The 32-bit code sent on the wire.
    pub const fn code(self) -> u32 {
        ((self.major as u32) << 16) | self.minor as u32
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A StartupMessage: protocol version and the session parameters.
///
/// Names and values are kept as UTF-8 `String`s and a packet with invalid
/// UTF-8 is rejected. PostgreSQL itself accepts any bytes here, but the
/// proxy matches and rewrites `user` and `database` against its identity
/// rules, and a lossy conversion could make two different user names look
/// equal. Every client library in use sends UTF-8 (or ASCII) names.
///
/// Duplicate names are kept in order; like PostgreSQL, lookups use the last
/// one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Requested protocol version (major is 3 for any parsed message).
    pub protocol: ProtocolVersion,
    /// Parameters in the order the client sent them (`user`, `database`,
    /// `application_name`, `options`, `_pq_.*` protocol options, ...).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of the last parameter called `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The database user, if present and non-empty (always the case for a
    /// parsed message).
    pub fn user(&self) -> Option<&str> {
        self.get("user").filter(|u| !u.is_empty())
    }

    /// The database, defaulting to the user name when absent or empty, as
    /// PostgreSQL does.
    pub fn database(&self) -> Option<&str> {
        self.get("database")
            .filter(|d| !d.is_empty())
            .or_else(|| self.user())
    }

    /// Sets `key` to `value`: every existing occurrence is overwritten in
    /// place (so a duplicate cannot shadow the new value), or the pair is
    /// appended.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        let mut found = false;
        for (k, v) in &mut self.params {
            if k == key {
                v.clone_from(&value);
                found = true;
            }
        }
        if !found {
            self.params.push((key.to_owned(), value));
        }
    }

    /// The message as sent on the wire; parsing the result gives back
    /// `self`.
    ///
    /// This fails instead of truncating or escaping when a name or value
    /// contains NUL or a name is empty: either would let the server see a
    /// different user or database than the proxy checked. It also fails when
    /// the packet would exceed [`MAX_STARTUP_PACKET_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.protocol.code().to_be_bytes());
        for (key, value) in &self.params {
            if key.is_empty() {
                return Err(WireError::StartupPacketLayout {
                    reason: "empty parameter name",
                });
            }
            if key.contains('\0') || value.contains('\0') {
                return Err(WireError::NulInString {
                    what: "startup parameter",
                });
            }
            out.extend_from_slice(key.as_bytes());
            out.push(0);
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
        out.push(0);
        write_length_word(out)
    }
}

/// A CancelRequest: which backend to interrupt and the key that proves the
/// right to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    /// Process id of the backend, from its BackendKeyData.
    pub process_id: u32,
    /// Secret key from BackendKeyData: 4 bytes in protocol 3.0, 1 to
    /// [`MAX_CANCEL_KEY_LEN`] bytes in protocol 3.2.
    pub secret_key: Vec<u8>,
}

impl CancelRequest {
    /// The request as sent on the wire. A key outside 1 to
    /// [`MAX_CANCEL_KEY_LEN`] bytes gives a packet that PostgreSQL and
    /// [`parse_initial_message`] reject; that is harmless, since a cancel
    /// request carries no data and gets no answer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CANCEL_HEADER_LEN + self.secret_key.len());
        let length = u32::try_from(CANCEL_HEADER_LEN.saturating_add(self.secret_key.len()))
            .unwrap_or(u32::MAX);
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        out.extend_from_slice(&self.process_id.to_be_bytes());
        out.extend_from_slice(&self.secret_key);
        out
    }
}

/// The SSLRequest the proxy sends to an upstream PostgreSQL before its TLS
/// handshake.
pub fn encode_ssl_request() -> [u8; 8] {
    fixed_request(SSL_REQUEST_CODE)
}

/// A GSSENCRequest, for tests and probes.
pub fn encode_gssenc_request() -> [u8; 8] {
    fixed_request(GSSENC_REQUEST_CODE)
}

fn fixed_request(code: u32) -> [u8; 8] {
    let mut out = [0; 8];
    out[..4].copy_from_slice(&8u32.to_be_bytes());
    out[4..].copy_from_slice(&code.to_be_bytes());
    out
}

/// Parses the first packet of a connection.
///
/// Returns `Ok(None)` while more bytes are needed. The header (length and
/// code) is checked as soon as it has arrived, so a hostile length or an
/// unsupported protocol is rejected without waiting for the body.
///
/// A first byte of 0x16 is [`InitialMessage::DirectTls`] with nothing
/// consumed. It cannot be confused with a length word: the first byte of any
/// valid length is 0.
pub fn parse_initial_message(buf: &[u8]) -> Result<Option<(InitialMessage, usize)>, WireError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first == CONTENT_TYPE_HANDSHAKE {
        return Ok(Some((InitialMessage::DirectTls, 0)));
    }
    let Some(length) = read_u32(buf, 0) else {
        return Ok(None);
    };
    let packet_len = usize::try_from(length).unwrap_or(usize::MAX);
    if !(MIN_STARTUP_PACKET_LEN..=MAX_STARTUP_PACKET_LEN + 4).contains(&packet_len) {
        return Err(WireError::StartupPacketLength { length });
    }
    let Some(code) = read_u32(buf, 4) else {
        return Ok(None);
    };
    match code {
        SSL_REQUEST_CODE => fixed_length_request(InitialMessage::SslRequest, "SSLRequest", length),
        GSSENC_REQUEST_CODE => {
            fixed_length_request(InitialMessage::GssEncRequest, "GSSENCRequest", length)
        }
        CANCEL_REQUEST_CODE => {
            // PostgreSQL 18 accepts any key length from 1 to 256 bytes; older
            // servers only ever hand out (and expect) 4.
            if !(CANCEL_HEADER_LEN + 1..=CANCEL_HEADER_LEN + MAX_CANCEL_KEY_LEN)
                .contains(&packet_len)
            {
                return Err(WireError::CancelRequestLength { length });
            }
            let Some(packet) = buf.get(..packet_len) else {
                return Ok(None);
            };
            let (Some(process_id), Some(key)) =
                (read_u32(packet, 8), packet.get(CANCEL_HEADER_LEN..))
            else {
                return Err(WireError::CancelRequestLength { length });
            };
            let cancel = CancelRequest {
                process_id,
                secret_key: key.to_vec(),
            };
            Ok(Some((InitialMessage::Cancel(cancel), packet_len)))
        }
        _ => {
            // PostgreSQL treats every other code as a protocol version and
            // accepts any 3.x, answering newer minors with
            // NegotiateProtocolVersion; that answer is the server's to give.
            let protocol = ProtocolVersion::from_code(code);
            if protocol.major != 3 {
                return Err(WireError::UnsupportedProtocolVersion {
                    major: protocol.major,
                    minor: protocol.minor,
                });
            }
            let Some(params) = buf.get(MIN_STARTUP_PACKET_LEN..packet_len) else {
                return Ok(None);
            };
            let message = StartupMessage {
                protocol,
                params: parse_params(params)?,
            };
            if message.user().is_none() {
                return Err(WireError::MissingUser);
            }
            Ok(Some((InitialMessage::Startup(message), packet_len)))
        }
    }
}

fn fixed_length_request(
    message: InitialMessage,
    request: &'static str,
    length: u32,
) -> Result<Option<(InitialMessage, usize)>, WireError> {
    // A request with a body is not something any client sends; refusing it
    // keeps the byte count after the request exact for the CVE-2021-23214
    // check.
    if length as usize != MIN_STARTUP_PACKET_LEN {
        return Err(WireError::RequestLength { request, length });
    }
    Ok(Some((message, MIN_STARTUP_PACKET_LEN)))
}

/// Parses `name\0value\0 ... \0`, requiring the final NUL to be the last
/// byte, as PostgreSQL does.
fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let layout = |reason| WireError::StartupPacketLayout { reason };
    let mut params = Vec::new();
    loop {
        let Some((name, after_name)) = split_cstr(rest) else {
            return Err(layout(if rest.is_empty() {
                "missing final terminator"
            } else {
                "unterminated parameter name"
            }));
        };
        if name.is_empty() {
            if !after_name.is_empty() {
                return Err(layout("expected terminator as last byte"));
            }
            return Ok(params);
        }
        let (value, after_value) =
            split_cstr(after_name).ok_or(layout("unterminated parameter value"))?;
        params.push((utf8(name)?, utf8(value)?));
        rest = after_value;
    }
}

fn utf8(bytes: &[u8]) -> Result<String, WireError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::InvalidUtf8 {
        what: "startup parameter",
    })
}

/// Fills in the length word of a startup packet built in `out`.
fn write_length_word(mut out: Vec<u8>) -> Result<Vec<u8>, WireError> {
    let length = u32::try_from(out.len()).unwrap_or(u32::MAX);
    if out.len() > MAX_STARTUP_PACKET_LEN + 4 {
        return Err(WireError::StartupPacketLength { length });
    }
    if let Some(word) = out.get_mut(..4) {
        word.copy_from_slice(&length.to_be_bytes());
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::pg::captured::*;
    use crate::pg::test_util::hex;

    fn parse(buf: &[u8]) -> Result<Option<(InitialMessage, usize)>, WireError> {
        parse_initial_message(buf)
    }

    fn parse_full(buf: &[u8]) -> InitialMessage {
        let (message, used) = parse(buf).unwrap().expect("complete message");
        assert_eq!(used, buf.len());
        message
    }

    fn startup(buf: &[u8]) -> StartupMessage {
        match parse_full(buf) {
            InitialMessage::Startup(s) => s,
            other => panic!("expected StartupMessage, got {other:?}"),
        }
    }

    /// Builds a startup-phase packet: length word, code, body.
    fn packet(code: u32, body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len() + 8)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn assert_every_prefix_needs_more(buf: &[u8]) {
        for end in 0..buf.len() {
            assert_eq!(parse(&buf[..end]), Ok(None), "prefix of {end} bytes");
        }
    }

    #[test]
    fn captured_ssl_request() {
        let bytes = hex(PSQL15_SSL_REQUEST);
        assert_eq!(parse_full(&bytes), InitialMessage::SslRequest);
        assert_eq!(encode_ssl_request()[..], bytes[..]);
        assert_every_prefix_needs_more(&bytes);
    }

    #[test]
    fn gssenc_request_built_from_the_docs() {
        // Int32(8), Int32(80877104).
        let bytes = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        assert_eq!(parse_full(&bytes), InitialMessage::GssEncRequest);
        assert_eq!(encode_gssenc_request(), bytes);
        assert_every_prefix_needs_more(&bytes);
    }

    #[test]
    fn ssl_and_gssenc_requests_must_be_exactly_8_bytes() {
        for code in [SSL_REQUEST_CODE, GSSENC_REQUEST_CODE] {
            for extra in [1usize, 4, 8, 100] {
                let bytes = packet(code, &vec![0; extra]);
                // The header alone is enough to refuse it.
                assert!(
                    matches!(parse(&bytes[..8]), Err(WireError::RequestLength { length, .. }) if length as usize == 8 + extra),
                    "code {code} with {extra} extra bytes"
                );
            }
        }
    }

    #[test]
    fn bytes_after_ssl_request_are_not_consumed() {
        // The CVE-2021-23214 pattern: a StartupMessage pipelined behind the
        // SSLRequest. The parser consumes the request only; the caller sees
        // the leftover and closes the connection.
        let mut bytes = hex(PSQL15_SSL_REQUEST);
        bytes.extend_from_slice(&hex(PSQL15_STARTUP_ALICE_SHOP));
        assert_eq!(parse(&bytes), Ok(Some((InitialMessage::SslRequest, 8))));
    }

    #[test]
    fn captured_startup_message() {
        let bytes = hex(PSQL15_STARTUP_ALICE_SHOP);
        let message = startup(&bytes);
        assert_eq!(message.protocol, ProtocolVersion::V3_0);
        assert_eq!(
            message.params,
            [
                ("user", "alice"),
                ("database", "shop"),
                ("application_name", "x")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(message.user(), Some("alice"));
        assert_eq!(message.database(), Some("shop"));
        assert_eq!(message.get("application_name"), Some("x"));
        assert_eq!(message.get("options"), None);
        assert_eq!(message.encode().unwrap(), bytes);
        assert_every_prefix_needs_more(&bytes);
    }

    #[test]
    fn second_captured_startup_message() {
        let bytes = hex(PSQL15_STARTUP_ALICE_POSTGRES);
        let message = startup(&bytes);
        assert_eq!(message.database(), Some("postgres"));
        assert_eq!(message.get("application_name"), Some("cap"));
        assert_eq!(message.encode().unwrap(), bytes);
        assert_every_prefix_needs_more(&bytes);
    }

    #[test]
    fn startup_parse_ignores_bytes_after_the_message() {
        let mut bytes = hex(PSQL15_STARTUP_ALICE_SHOP);
        let len = bytes.len();
        bytes.extend_from_slice(b"Q garbage");
        let (_, used) = parse(&bytes).unwrap().unwrap();
        assert_eq!(used, len);
    }

    #[test]
    fn protocol_3_2_startup_is_accepted() {
        // What a PostgreSQL 18 libpq sends with max_protocol_version=3.2.
        let bytes = packet(PROTOCOL_VERSION_3_2, b"user\0alice\0_pq_.foo\x001\0\0");
        let message = startup(&bytes);
        assert_eq!(message.protocol, ProtocolVersion::V3_2);
        assert_eq!(message.protocol.to_string(), "3.2");
        assert_eq!(message.get("_pq_.foo"), Some("1"));
        assert_eq!(message.encode().unwrap(), bytes);
    }

    #[test]
    fn protocol_2_and_unknown_codes_are_unsupported_versions() {
        for (code, major, minor) in [
            (0x0002_0000, 2, 0),
            (0x0001_0000, 1, 0),
            (0x0004_0000, 4, 0),
            (0, 0, 0),
            ((1234 << 16) | 5681, 1234, 5681),
        ] {
            let bytes = packet(code, b"user\0alice\0\0");
            let expected = Err(WireError::UnsupportedProtocolVersion { major, minor });
            // Refused from the header alone.
            assert_eq!(parse(&bytes[..8]), expected);
            assert_eq!(parse(&bytes), expected);
        }
        let message = parse(&packet(0x0002_0000, b"")).unwrap_err().to_string();
        assert!(
            message.contains("unsupported frontend protocol 2.0"),
            "{message}"
        );
    }

    #[test]
    fn length_word_below_8_is_refused() {
        for length in 0u32..8 {
            let mut bytes = length.to_be_bytes().to_vec();
            bytes.extend_from_slice(&PROTOCOL_VERSION_3_0.to_be_bytes());
            assert_eq!(
                parse(&bytes[..4]),
                Err(WireError::StartupPacketLength { length })
            );
        }
    }

    #[test]
    fn length_word_above_postgresql_limit_is_refused() {
        for length in [10_005u32, 0x0100_0000, u32::MAX >> 1, 0x1500_0000] {
            assert_eq!(
                parse(&length.to_be_bytes()),
                Err(WireError::StartupPacketLength { length })
            );
        }
    }

    #[test]
    fn largest_startup_packet_postgresql_accepts_is_accepted() {
        // 10 000 bytes after the length word: code (4), "user\0alice\0"
        // (11), "x\0" (2), a value, its NUL, the final NUL.
        let value = "v".repeat(MAX_STARTUP_PACKET_LEN - 4 - 11 - 2 - 2);
        let body = format!("user\0alice\0x\0{value}\0\0");
        let bytes = packet(PROTOCOL_VERSION_3_0, body.as_bytes());
        assert_eq!(bytes.len(), MAX_STARTUP_PACKET_LEN + 4);
        assert_eq!(startup(&bytes).get("x").map(str::len), Some(value.len()));

        let mut too_big = startup(&bytes);
        too_big.set("x", format!("{value}v"));
        assert_eq!(
            too_big.encode(),
            Err(WireError::StartupPacketLength { length: 10_005 })
        );
    }

    #[test]
    fn missing_or_empty_user_is_refused() {
        for body in [
            &b"database\0shop\0\0"[..],
            b"\0",
            b"user\0\0\0",
            b"USER\0alice\0\0",
        ] {
            assert_eq!(
                parse(&packet(PROTOCOL_VERSION_3_0, body)),
                Err(WireError::MissingUser),
                "{body:?}"
            );
        }
    }

    #[test]
    fn database_defaults_to_user() {
        let message = startup(&packet(PROTOCOL_VERSION_3_0, b"user\0alice\0\0"));
        assert_eq!(message.database(), Some("alice"));
        let message = startup(&packet(
            PROTOCOL_VERSION_3_0,
            b"user\0alice\0database\0\0\0",
        ));
        assert_eq!(message.database(), Some("alice"));
    }

    #[test]
    fn duplicate_keys_keep_order_and_the_last_one_wins() {
        let bytes = packet(
            PROTOCOL_VERSION_3_0,
            b"user\0mallory\0database\0x\0user\0alice\0\0",
        );
        let mut message = startup(&bytes);
        assert_eq!(message.params.len(), 3);
        assert_eq!(message.user(), Some("alice"));
        assert_eq!(message.encode().unwrap(), bytes);

        // Rewriting the user must not leave the other copy behind.
        message.set("user", "trainer");
        assert_eq!(
            message
                .params
                .iter()
                .filter(|(_, v)| v == "trainer")
                .count(),
            2
        );
        assert!(!message
            .params
            .iter()
            .any(|(_, v)| v == "mallory" || v == "alice"));
        message.set("application_name", "intransit");
        assert_eq!(message.params.last().unwrap().0, "application_name");
    }

    #[test]
    fn malformed_parameter_lists_are_refused() {
        let layout = |reason| Err(WireError::StartupPacketLayout { reason });
        for (body, expected) in [
            (&b""[..], layout("missing final terminator")),
            (b"user\0alice\0", layout("missing final terminator")),
            (b"user\0alice", layout("unterminated parameter value")),
            (b"user", layout("unterminated parameter name")),
            (
                b"user\0alice\0\0\0",
                layout("expected terminator as last byte"),
            ),
            (
                b"user\0alice\0\0garbage",
                layout("expected terminator as last byte"),
            ),
            (
                b"user\0alice\0\0user\0eve\0\0",
                layout("expected terminator as last byte"),
            ),
        ] {
            assert_eq!(
                parse(&packet(PROTOCOL_VERSION_3_0, body)),
                expected,
                "{body:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let bytes = packet(PROTOCOL_VERSION_3_0, b"user\0al\xffice\0\0");
        assert_eq!(
            parse(&bytes),
            Err(WireError::InvalidUtf8 {
                what: "startup parameter"
            })
        );
    }

    #[test]
    fn encode_refuses_what_would_change_meaning_on_the_wire() {
        let mut message = startup(&hex(PSQL15_STARTUP_ALICE_SHOP));
        message.set("user", "admin\0alice");
        assert!(matches!(
            message.encode(),
            Err(WireError::NulInString { .. })
        ));

        let mut message = startup(&hex(PSQL15_STARTUP_ALICE_SHOP));
        message.params.insert(0, (String::new(), "x".into()));
        assert!(matches!(
            message.encode(),
            Err(WireError::StartupPacketLayout { .. })
        ));
    }

    #[test]
    fn captured_cancel_request() {
        let bytes = hex(PSQL15_CANCEL_REQUEST);
        let expected = CancelRequest {
            process_id: 4242,
            secret_key: vec![0x12, 0x34, 0x56, 0x78],
        };
        assert_eq!(parse_full(&bytes), InitialMessage::Cancel(expected.clone()));
        assert_eq!(expected.encode(), bytes);
        assert_every_prefix_needs_more(&bytes);
    }

    #[test]
    fn protocol_3_2_cancel_keys_of_1_to_256_bytes() {
        for key_len in [1, 4, 32, MAX_CANCEL_KEY_LEN] {
            let cancel = CancelRequest {
                process_id: 7,
                secret_key: (0..key_len).map(|i| i as u8).collect(),
            };
            let bytes = cancel.encode();
            assert_eq!(parse_full(&bytes), InitialMessage::Cancel(cancel));
            assert_every_prefix_needs_more(&bytes);
        }
        for key_len in [0, MAX_CANCEL_KEY_LEN + 1] {
            let bytes = CancelRequest {
                process_id: 7,
                secret_key: vec![1; key_len],
            }
            .encode();
            let length = u32::try_from(bytes.len()).unwrap();
            assert_eq!(
                parse(&bytes[..8]),
                Err(WireError::CancelRequestLength { length })
            );
        }
        // Length 8: a cancel code with neither process id nor key.
        assert_eq!(
            parse(&packet(CANCEL_REQUEST_CODE, b"")),
            Err(WireError::CancelRequestLength { length: 8 })
        );
    }

    #[test]
    fn direct_tls_is_recognised_from_the_first_byte() {
        let hello = hex(PSQL15_CLIENT_HELLO);
        assert_eq!(parse(&hello), Ok(Some((InitialMessage::DirectTls, 0))));
        assert_eq!(parse(&[0x16]), Ok(Some((InitialMessage::DirectTls, 0))));
        assert_eq!(parse(&[]), Ok(None));
    }

    #[test]
    fn protocol_version_codes() {
        assert_eq!(ProtocolVersion::V3_0.code(), PROTOCOL_VERSION_3_0);
        assert_eq!(ProtocolVersion::V3_2.code(), PROTOCOL_VERSION_3_2);
        assert_eq!(
            ProtocolVersion::from_code(SSL_REQUEST_CODE).to_string(),
            "1234.5679"
        );
        assert_eq!(SSL_REQUEST_CODE, (1234 << 16) | 5679);
        assert_eq!(GSSENC_REQUEST_CODE, (1234 << 16) | 5680);
        assert_eq!(CANCEL_REQUEST_CODE, (1234 << 16) | 5678);
    }
}
