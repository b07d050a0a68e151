//! The connection-phase handshake: the server's greeting
//! ([`HandshakeV10`]) and the client's first packet, an [`SslRequest`] or a
//! [`HandshakeResponse41`].

use super::codec::{put_nul_terminated, Reader};
use super::lenenc;
use super::{ErrPacket, ERR_MARKER, HEADER_LEN};
use super::{
    CLIENT_CONNECT_ATTRS, CLIENT_CONNECT_WITH_DB, CLIENT_LONG_PASSWORD, CLIENT_PLUGIN_AUTH,
    CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA, CLIENT_PROTOCOL_41, CLIENT_SECURE_CONNECTION,
    CLIENT_SSL, CLIENT_ZSTD_COMPRESSION_ALGORITHM, PROTOCOL_VERSION_10,
};
use crate::{printable, WireError};

/// The payload length of an SSLRequest, and the fixed part of a
/// HandshakeResponse41: capabilities, max packet size, collation and 23
/// reserved bytes.
pub const SSL_REQUEST_LEN: usize = 32;

/// Connection attributes: name/value pairs in the order sent.
pub type ConnectAttrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The length of auth-plugin-data part 1 in the greeting.
const AUTH_DATA_PART1_LEN: usize = 8;

/// The shortest auth-plugin-data part 2 a greeting carries: servers always
/// send at least 12 scramble bytes and a NUL.
const AUTH_DATA_PART2_MIN_LEN: usize = 13;

/// The reserved bytes that must be zero in the greeting; the four after
/// them are MariaDB's extended capabilities.
const GREETING_RESERVED_LEN: usize = 6;

/// The reserved bytes that must be zero in a client's SSLRequest or
/// HandshakeResponse41; the four after them are MariaDB's extended
/// capabilities.
const CLIENT_RESERVED_LEN: usize = 19;

/// MariaDB uses the extended capabilities in the reserved bytes only when
/// the peer clears [`CLIENT_LONG_PASSWORD`] (MariaDB's `CLIENT_MYSQL`).
fn mariadb_extended(capabilities: u32, extended: u32) -> Option<u32> {
    (capabilities & CLIENT_LONG_PASSWORD == 0).then_some(extended)
}

/// The server's greeting, protocol version 10, with every field kept so
/// that [`HandshakeV10::encode`] gives back the exact bytes parsed.
///
/// Servers older than MySQL 4.1, whose greeting ends after the lower
/// capability flags, are refused: no current client can log in to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeV10 {
    /// The version string as sent, without its NUL (MariaDB 10+ prefixes it
    /// with `5.5.5-` for old clients).
    pub server_version: Vec<u8>,
    /// The connection (thread) id the server assigned.
    pub connection_id: u32,
    /// The first 8 bytes of the scramble.
    pub auth_plugin_data_part1: [u8; AUTH_DATA_PART1_LEN],
    /// Capability flags, lower and upper halves joined.
    pub capabilities: u32,
    /// The server's default collation id.
    pub collation: u8,
    /// Server status flags.
    pub status_flags: u16,
    /// The length byte of the whole scramble plus its NUL (21 in practice)
    /// when [`CLIENT_PLUGIN_AUTH`] is set, else 0; kept as sent.
    pub auth_plugin_data_len: u8,
    /// The reserved bytes before MariaDB's extended capabilities; zero.
    pub reserved: [u8; GREETING_RESERVED_LEN],
    /// The last 4 reserved bytes: MariaDB's extended capabilities (see
    /// [`HandshakeV10::mariadb_capabilities`]); zero from MySQL.
    pub extended_capabilities: u32,
    /// The rest of the scramble, as sent: normally 12 bytes and a NUL.
    /// Present when [`CLIENT_SECURE_CONNECTION`] is set.
    pub auth_plugin_data_part2: Vec<u8>,
    /// The default auth plugin, when [`CLIENT_PLUGIN_AUTH`] is set.
    pub auth_plugin_name: Option<Vec<u8>>,
}

impl HandshakeV10 {
    const MESSAGE: &'static str = "HandshakeV10 greeting";

    /// Parses a greeting payload (the packet header already removed).
    pub fn parse(payload: &[u8]) -> Result<HandshakeV10, WireError> {
        let mut r = Reader::new(payload, Self::MESSAGE);
        let GreetingStart {
            server_version,
            connection_id,
            auth_plugin_data_part1,
            lower_capabilities: lower,
        } = GreetingStart::read(&mut r)?;
        let server_version = server_version.to_vec();
        if r.is_empty() {
            return Err(r.error("ends after the capability flags (a server older than MySQL 4.1)"));
        }
        let collation = r.u8("ends inside the character set")?;
        let status_flags = r.u16("ends inside the status flags")?;
        let upper = r.u16("ends inside the upper capability flags")?;
        let capabilities = u32::from(lower) | u32::from(upper) << 16;
        let auth_plugin_data_len = r.u8("ends inside the auth plugin data length")?;
        let reserved: [u8; GREETING_RESERVED_LEN] = r.array("ends inside the reserved bytes")?;
        if reserved.iter().any(|&b| b != 0) {
            return Err(r.error("reserved bytes are not zero"));
        }
        let extended_capabilities = r.u32("ends inside the reserved bytes")?;
        if capabilities & CLIENT_PLUGIN_AUTH == 0 && auth_plugin_data_len != 0 {
            return Err(r.error("auth plugin data length without CLIENT_PLUGIN_AUTH"));
        }
        let auth_plugin_data_part2 = if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let len = usize::from(auth_plugin_data_len)
                .saturating_sub(AUTH_DATA_PART1_LEN)
                .max(AUTH_DATA_PART2_MIN_LEN);
            r.take(len, "ends inside auth-plugin-data part 2")?.to_vec()
        } else {
            Vec::new()
        };
        let auth_plugin_name = if capabilities & CLIENT_PLUGIN_AUTH != 0 {
            // MySQL 5.5.7 to 5.5.9 left out the NUL; they are long gone,
            // and accepting that would break the byte-exact round trip.
            Some(
                r.nul_terminated("auth plugin name is not NUL-terminated")?
                    .to_vec(),
            )
        } else {
            None
        };
        r.finish("trailing bytes after the greeting")?;
        Ok(HandshakeV10 {
            server_version,
            connection_id,
            auth_plugin_data_part1,
            capabilities,
            collation,
            status_flags,
            auth_plugin_data_len,
            reserved,
            extended_capabilities,
            auth_plugin_data_part2,
            auth_plugin_name,
        })
    }

    /// The greeting payload, byte for byte what [`HandshakeV10::parse`]
    /// read when nothing was changed.
    ///
    /// Fails if a string holds a NUL, or if the scramble's part 2 or plugin
    /// name disagree with the capability flags (which would make the
    /// payload unparsable).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let inconsistent = |reason| WireError::Malformed {
            message: Self::MESSAGE,
            reason,
        };
        let secure = self.capabilities & CLIENT_SECURE_CONNECTION != 0;
        let plugin = self.capabilities & CLIENT_PLUGIN_AUTH != 0;
        let expected_part2 = usize::from(self.auth_plugin_data_len)
            .saturating_sub(AUTH_DATA_PART1_LEN)
            .max(AUTH_DATA_PART2_MIN_LEN);
        if secure && self.auth_plugin_data_part2.len() != expected_part2 {
            return Err(inconsistent(
                "auth-plugin-data part 2 does not match the auth plugin data length",
            ));
        }
        if !secure && !self.auth_plugin_data_part2.is_empty() {
            return Err(inconsistent(
                "auth-plugin-data part 2 without CLIENT_SECURE_CONNECTION",
            ));
        }
        if plugin != self.auth_plugin_name.is_some() || (!plugin && self.auth_plugin_data_len != 0)
        {
            return Err(inconsistent(
                "auth plugin fields do not match CLIENT_PLUGIN_AUTH",
            ));
        }
        let mut out = Vec::with_capacity(64 + self.server_version.len());
        out.push(PROTOCOL_VERSION_10);
        put_nul_terminated(&mut out, &self.server_version, "MySQL server version")?;
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        out.extend_from_slice(&self.auth_plugin_data_part1);
        out.push(0);
        let caps = self.capabilities.to_le_bytes();
        out.extend_from_slice(&caps[..2]);
        out.push(self.collation);
        out.extend_from_slice(&self.status_flags.to_le_bytes());
        out.extend_from_slice(&caps[2..]);
        out.push(self.auth_plugin_data_len);
        out.extend_from_slice(&self.reserved);
        out.extend_from_slice(&self.extended_capabilities.to_le_bytes());
        out.extend_from_slice(&self.auth_plugin_data_part2);
        if let Some(name) = &self.auth_plugin_name {
            put_nul_terminated(&mut out, name, "MySQL auth plugin name")?;
        }
        Ok(out)
    }

    /// Whether the server offers TLS ([`CLIENT_SSL`]).
    pub fn offers_tls(&self) -> bool {
        self.capabilities & CLIENT_SSL != 0
    }

    /// Sets or clears [`CLIENT_SSL`]: a proxy that terminates TLS itself
    /// advertises it to the client whatever the server offers.
    pub fn set_tls_offered(&mut self, offered: bool) {
        if offered {
            self.capabilities |= CLIENT_SSL;
        } else {
            self.capabilities &= !CLIENT_SSL;
        }
    }

    /// MariaDB's extended capabilities, when the server is MariaDB (it
    /// clears [`CLIENT_LONG_PASSWORD`]).
    pub fn mariadb_capabilities(&self) -> Option<u32> {
        mariadb_extended(self.capabilities, self.extended_capabilities)
    }

    /// The whole scramble (20 bytes from current servers): part 1, then
    /// part 2 without its trailing NUL.
    pub fn scramble(&self) -> Vec<u8> {
        let part2 = match self.auth_plugin_data_part2.split_last() {
            Some((0, head)) => head,
            _ => &self.auth_plugin_data_part2,
        };
        let mut out = self.auth_plugin_data_part1.to_vec();
        out.extend_from_slice(part2);
        out
    }

    /// The server version for logs, with invalid UTF-8 replaced.
    pub fn server_version_lossy(&self) -> String {
        String::from_utf8_lossy(&self.server_version).into_owned()
    }
}

/// The fields every HandshakeV10 greeting starts with, up to the lower
/// capability flags; MySQL before 4.1 ended the greeting there.
struct GreetingStart<'a> {
    server_version: &'a [u8],
    connection_id: u32,
    auth_plugin_data_part1: [u8; AUTH_DATA_PART1_LEN],
    lower_capabilities: u16,
}

impl<'a> GreetingStart<'a> {
    fn read(r: &mut Reader<'a>) -> Result<GreetingStart<'a>, WireError> {
        let version = r.u8("empty payload")?;
        if version != PROTOCOL_VERSION_10 {
            return Err(r.error("protocol version is not 10"));
        }
        let server_version = r.nul_terminated("server version is not NUL-terminated")?;
        let connection_id = r.u32("ends inside the connection id")?;
        let auth_plugin_data_part1 = r.array("ends inside auth-plugin-data part 1")?;
        if r.u8("ends before the filler")? != 0 {
            return Err(r.error("filler after auth-plugin-data part 1 is not zero"));
        }
        let lower_capabilities = r.u16("ends inside the capability flags")?;
        Ok(GreetingStart {
            server_version,
            connection_id,
            auth_plugin_data_part1,
            lower_capabilities,
        })
    }
}

/// What a client needs from the server's greeting to decide whether to ask
/// for TLS: the leading fields only, read leniently.
///
/// Unlike [`HandshakeV10::parse`], [`GreetingSummary::parse`] accepts a
/// greeting that ends after the lower capability flags (MySQL before 4.1)
/// and ignores everything after the upper capability flags, so a scanner
/// can still report on a server whose greeting the proxy would refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreetingSummary {
    /// The version string as sent, without its NUL; show it with
    /// [`GreetingSummary::server_version_printable`].
    pub server_version: Vec<u8>,
    /// The connection (thread) id the server assigned.
    pub connection_id: u32,
    /// Capability flags: the lower half, and the upper half when the
    /// greeting has it.
    pub capabilities: u32,
    /// The server's default collation id, when the greeting has it.
    pub collation: Option<u8>,
    /// The server status flags, when the greeting has them.
    pub status_flags: Option<u16>,
}

impl GreetingSummary {
    /// Parses the leading fields of a greeting payload (the packet header
    /// already removed).
    pub fn parse(payload: &[u8]) -> Result<GreetingSummary, WireError> {
        let mut r = Reader::new(payload, HandshakeV10::MESSAGE);
        let start = GreetingStart::read(&mut r)?;
        let (collation, status_flags, upper) = if r.is_empty() {
            (None, None, 0)
        } else {
            let collation = r.u8("ends inside the character set")?;
            let status_flags = r.u16("ends inside the status flags")?;
            let upper = r.u16("ends inside the upper capability flags")?;
            (Some(collation), Some(status_flags), upper)
        };
        Ok(GreetingSummary {
            server_version: start.server_version.to_vec(),
            connection_id: start.connection_id,
            capabilities: u32::from(start.lower_capabilities) | u32::from(upper) << 16,
            collation,
            status_flags,
        })
    }

    /// Whether the server offers TLS ([`CLIENT_SSL`]).
    pub fn offers_tls(&self) -> bool {
        self.capabilities & CLIENT_SSL != 0
    }

    /// The server version, safe to print (see [`crate::printable`]).
    pub fn server_version_printable(&self) -> String {
        printable(&self.server_version)
    }
}

/// What a server sends first: its greeting, or an ERR packet when it
/// refuses the client before any negotiation ("Host '...' is not allowed to
/// connect", "Too many connections").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerGreeting {
    /// A HandshakeV10 greeting, read as a [`GreetingSummary`].
    Handshake(GreetingSummary),
    /// A refusal. Its SQLSTATE is usually absent: the server does not yet
    /// know whether the client speaks the 4.1 protocol.
    Error(ErrPacket),
}

/// Parses the payload of the server's first packet: an ERR packet when it
/// starts with [`ERR_MARKER`], otherwise a greeting read leniently (see
/// [`GreetingSummary`]).
pub fn parse_server_greeting(payload: &[u8]) -> Result<ServerGreeting, WireError> {
    match payload.first() {
        Some(&ERR_MARKER) => ErrPacket::parse(payload).map(ServerGreeting::Error),
        _ => GreetingSummary::parse(payload).map(ServerGreeting::Handshake),
    }
}

/// The client's request to start TLS, sent in place of the
/// HandshakeResponse41 (whose first 32 bytes it repeats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SslRequest {
    /// The client's capability flags; [`CLIENT_SSL`] is always set in a
    /// parsed request and always written by [`SslRequest::encode`].
    pub capabilities: u32,
    /// The largest packet the client will accept.
    pub max_packet_size: u32,
    /// The client's collation id.
    pub collation: u8,
    /// MariaDB's extended client capabilities (the last 4 reserved bytes).
    pub extended_capabilities: u32,
}

impl SslRequest {
    const MESSAGE: &'static str = "SSLRequest";

    /// Parses an SSLRequest payload (the header already removed).
    pub fn parse(payload: &[u8]) -> Result<SslRequest, WireError> {
        let mut r = Reader::new(payload, Self::MESSAGE);
        let fixed = ClientFixed::read(&mut r)?;
        if fixed.capabilities & CLIENT_SSL == 0 {
            return Err(r.error("CLIENT_SSL is not set"));
        }
        r.finish("payload is longer than 32 bytes")?;
        Ok(SslRequest {
            capabilities: fixed.capabilities,
            max_packet_size: fixed.max_packet_size,
            collation: fixed.collation,
            extended_capabilities: fixed.extended_capabilities,
        })
    }

    /// The 32-byte payload, [`CLIENT_SSL`] set.
    pub fn encode(&self) -> [u8; SSL_REQUEST_LEN] {
        let mut out = [0u8; SSL_REQUEST_LEN];
        let fixed = ClientFixed {
            capabilities: self.capabilities | CLIENT_SSL,
            max_packet_size: self.max_packet_size,
            collation: self.collation,
            extended_capabilities: self.extended_capabilities,
        };
        let mut bytes = Vec::with_capacity(SSL_REQUEST_LEN);
        fixed.write(&mut bytes);
        out.copy_from_slice(&bytes);
        out
    }

    /// The whole packet, header included, with `sequence_id` (1 when it
    /// answers the greeting).
    pub fn encode_packet(&self, sequence_id: u8) -> [u8; HEADER_LEN + SSL_REQUEST_LEN] {
        let mut out = [0u8; HEADER_LEN + SSL_REQUEST_LEN];
        let len = SSL_REQUEST_LEN.to_le_bytes();
        out[..3].copy_from_slice(&len[..3]);
        out[3] = sequence_id;
        out[HEADER_LEN..].copy_from_slice(&self.encode());
        out
    }

    /// MariaDB's extended capabilities, when the client is MariaDB's.
    pub fn mariadb_capabilities(&self) -> Option<u32> {
        mariadb_extended(self.capabilities, self.extended_capabilities)
    }
}

/// The first 32 bytes of an SSLRequest and a HandshakeResponse41.
struct ClientFixed {
    capabilities: u32,
    max_packet_size: u32,
    collation: u8,
    extended_capabilities: u32,
}

impl ClientFixed {
    fn read(r: &mut Reader<'_>) -> Result<ClientFixed, WireError> {
        let capabilities = r.u32("ends inside the capability flags")?;
        if capabilities & CLIENT_PROTOCOL_41 == 0 {
            return Err(r.error("CLIENT_PROTOCOL_41 is not set (a pre-4.1 client)"));
        }
        let max_packet_size = r.u32("ends inside the max packet size")?;
        let collation = r.u8("ends inside the character set")?;
        let reserved: [u8; CLIENT_RESERVED_LEN] = r.array("ends inside the reserved bytes")?;
        if reserved.iter().any(|&b| b != 0) {
            return Err(r.error("reserved bytes are not zero"));
        }
        let extended_capabilities = r.u32("ends inside the reserved bytes")?;
        Ok(ClientFixed {
            capabilities,
            max_packet_size,
            collation,
            extended_capabilities,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.capabilities.to_le_bytes());
        out.extend_from_slice(&self.max_packet_size.to_le_bytes());
        out.push(self.collation);
        out.extend_from_slice(&[0; CLIENT_RESERVED_LEN]);
        out.extend_from_slice(&self.extended_capabilities.to_le_bytes());
    }
}

/// How the auth response of a [`HandshakeResponse41`] is framed, which the
/// client's capability flags decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResponseEncoding {
    /// A length-encoded string ([`CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA`]).
    LengthEncoded,
    /// A one-byte length, then at most 255 bytes
    /// ([`CLIENT_SECURE_CONNECTION`]).
    OneByteLength,
    /// NUL-terminated (neither flag; pre-4.1 authentication).
    NulTerminated,
}

impl AuthResponseEncoding {
    /// The framing the flags in `capabilities` select.
    pub fn for_capabilities(capabilities: u32) -> Self {
        if capabilities & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            AuthResponseEncoding::LengthEncoded
        } else if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            AuthResponseEncoding::OneByteLength
        } else {
            AuthResponseEncoding::NulTerminated
        }
    }
}

/// The client's login packet: who logs in, to which database, with which
/// auth plugin and response.
///
/// The optional fields follow the capability flags: each is `Some` exactly
/// when its flag is set and the client sent it (a client may end the packet
/// early, which servers accept), and [`HandshakeResponse41::encode`] writes
/// exactly the fields that are `Some`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse41 {
    /// The client's capability flags.
    pub capabilities: u32,
    /// The largest packet the client will accept.
    pub max_packet_size: u32,
    /// The client's collation id.
    pub collation: u8,
    /// MariaDB's extended client capabilities (the last 4 reserved bytes).
    pub extended_capabilities: u32,
    /// The user name, as sent (in the client's character set).
    pub user: Vec<u8>,
    /// The auth plugin's answer to the scramble (empty for no password).
    pub auth_response: Vec<u8>,
    /// The database to use ([`CLIENT_CONNECT_WITH_DB`]).
    pub database: Option<Vec<u8>>,
    /// The auth plugin the response is for ([`CLIENT_PLUGIN_AUTH`]).
    pub auth_plugin_name: Option<Vec<u8>>,
    /// Connection attributes in the order sent ([`CLIENT_CONNECT_ATTRS`]).
    pub connect_attrs: Option<ConnectAttrs>,
    /// The zstd compression level
    /// ([`CLIENT_ZSTD_COMPRESSION_ALGORITHM`], MySQL 8.0.18+).
    pub zstd_compression_level: Option<u8>,
}

impl HandshakeResponse41 {
    const MESSAGE: &'static str = "HandshakeResponse41";

    /// Parses a HandshakeResponse41 payload (the header already removed).
    pub fn parse(payload: &[u8]) -> Result<HandshakeResponse41, WireError> {
        let mut r = Reader::new(payload, Self::MESSAGE);
        let fixed = ClientFixed::read(&mut r)?;
        let caps = fixed.capabilities;
        let user = r
            .nul_terminated("user name is missing or not NUL-terminated")?
            .to_vec();
        let auth_response = match AuthResponseEncoding::for_capabilities(caps) {
            AuthResponseEncoding::LengthEncoded => {
                r.lenenc_bytes("ends inside the auth response")?
            }
            AuthResponseEncoding::OneByteLength => {
                let len = r.u8("ends inside the auth response length")?;
                r.take(usize::from(len), "ends inside the auth response")?
            }
            AuthResponseEncoding::NulTerminated => {
                r.nul_terminated("auth response is not NUL-terminated")?
            }
        }
        .to_vec();
        let mut optional = |flag: u32, reason| -> Result<Option<Vec<u8>>, WireError> {
            if caps & flag == 0 || r.is_empty() {
                return Ok(None);
            }
            Ok(Some(r.nul_terminated(reason)?.to_vec()))
        };
        let database = optional(CLIENT_CONNECT_WITH_DB, "database is not NUL-terminated")?;
        let auth_plugin_name =
            optional(CLIENT_PLUGIN_AUTH, "auth plugin name is not NUL-terminated")?;
        let connect_attrs = if caps & CLIENT_CONNECT_ATTRS != 0 && !r.is_empty() {
            Some(parse_connect_attrs(
                r.lenenc_bytes("ends inside the connection attributes")?,
            )?)
        } else {
            None
        };
        let zstd_compression_level =
            if caps & CLIENT_ZSTD_COMPRESSION_ALGORITHM != 0 && !r.is_empty() {
                Some(r.u8("ends inside the zstd compression level")?)
            } else {
                None
            };
        r.finish("trailing bytes after the last field")?;
        let response = HandshakeResponse41 {
            capabilities: caps,
            max_packet_size: fixed.max_packet_size,
            collation: fixed.collation,
            extended_capabilities: fixed.extended_capabilities,
            user,
            auth_response,
            database,
            auth_plugin_name,
            connect_attrs,
            zstd_compression_level,
        };
        response.check_field_order()?;
        Ok(response)
    }

    /// The payload, byte for byte what [`HandshakeResponse41::parse`] read
    /// when nothing was changed.
    ///
    /// Fails if a string holds a NUL, if the auth response does not fit its
    /// framing, or if an optional field is present without its flag or
    /// after a missing earlier one.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        self.check_field_order()?;
        let caps = self.capabilities;
        let mut out = Vec::with_capacity(128);
        ClientFixed {
            capabilities: caps,
            max_packet_size: self.max_packet_size,
            collation: self.collation,
            extended_capabilities: self.extended_capabilities,
        }
        .write(&mut out);
        put_nul_terminated(&mut out, &self.user, "MySQL user name")?;
        match AuthResponseEncoding::for_capabilities(caps) {
            AuthResponseEncoding::LengthEncoded => {
                lenenc::encode_bytes(&mut out, &self.auth_response)
            }
            AuthResponseEncoding::OneByteLength => {
                let len = u8::try_from(self.auth_response.len()).map_err(|_| {
                    WireError::Malformed {
                        message: Self::MESSAGE,
                        reason: "auth response longer than 255 bytes without CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA",
                    }
                })?;
                out.push(len);
                out.extend_from_slice(&self.auth_response);
            }
            AuthResponseEncoding::NulTerminated => {
                put_nul_terminated(&mut out, &self.auth_response, "MySQL auth response")?;
            }
        }
        if let Some(database) = &self.database {
            put_nul_terminated(&mut out, database, "MySQL database name")?;
        }
        if let Some(name) = &self.auth_plugin_name {
            put_nul_terminated(&mut out, name, "MySQL auth plugin name")?;
        }
        if let Some(attrs) = &self.connect_attrs {
            let mut body = Vec::new();
            for (key, value) in attrs {
                lenenc::encode_bytes(&mut body, key);
                lenenc::encode_bytes(&mut body, value);
            }
            lenenc::encode_bytes(&mut out, &body);
        }
        if let Some(level) = self.zstd_compression_level {
            out.push(level);
        }
        Ok(out)
    }

    /// Clears [`CLIENT_SSL`], for a response carried to a plaintext
    /// upstream: the server would otherwise wait for a TLS handshake.
    pub fn clear_ssl(&mut self) {
        self.capabilities &= !CLIENT_SSL;
    }

    /// The user name as UTF-8, which the proxy's user allow-list needs.
    pub fn user_utf8(&self) -> Result<&str, WireError> {
        std::str::from_utf8(&self.user).map_err(|_| WireError::InvalidUtf8 {
            what: "MySQL user name",
        })
    }

    /// The database name as UTF-8, when the client named one.
    pub fn database_utf8(&self) -> Result<Option<&str>, WireError> {
        self.database
            .as_deref()
            .map(std::str::from_utf8)
            .transpose()
            .map_err(|_| WireError::InvalidUtf8 {
                what: "MySQL database name",
            })
    }

    /// MariaDB's extended capabilities, when the client is MariaDB's.
    pub fn mariadb_capabilities(&self) -> Option<u32> {
        mariadb_extended(self.capabilities, self.extended_capabilities)
    }

    /// Each optional field needs its flag, and a present field needs every
    /// earlier flagged field present, or the bytes would not parse back.
    fn check_field_order(&self) -> Result<(), WireError> {
        let fields = [
            (CLIENT_CONNECT_WITH_DB, self.database.is_some()),
            (CLIENT_PLUGIN_AUTH, self.auth_plugin_name.is_some()),
            (CLIENT_CONNECT_ATTRS, self.connect_attrs.is_some()),
            (
                CLIENT_ZSTD_COMPRESSION_ALGORITHM,
                self.zstd_compression_level.is_some(),
            ),
        ];
        let mut ended = false;
        for (flag, present) in fields {
            let flagged = self.capabilities & flag != 0;
            if present && (!flagged || ended) {
                return Err(WireError::Malformed {
                    message: Self::MESSAGE,
                    reason: "an optional field is present without its capability flag or after a missing one",
                });
            }
            ended |= flagged && !present;
        }
        Ok(())
    }
}

/// Splits the connection attributes into key/value pairs.
pub(super) fn parse_connect_attrs(body: &[u8]) -> Result<ConnectAttrs, WireError> {
    let mut r = Reader::new(body, "HandshakeResponse41 connection attributes");
    let mut attrs = Vec::new();
    while !r.is_empty() {
        let key = r.lenenc_bytes("ends inside an attribute name")?.to_vec();
        let value = r.lenenc_bytes("ends inside an attribute value")?.to_vec();
        attrs.push((key, value));
    }
    Ok(attrs)
}

/// The client's answer to the greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientHandshake {
    /// The client asks for TLS; its HandshakeResponse follows inside TLS.
    SslRequest(SslRequest),
    /// The client logs in without TLS.
    Response(HandshakeResponse41),
}

/// Parses the client's first packet payload: an SSLRequest when
/// [`CLIENT_SSL`] is set, otherwise a HandshakeResponse41.
///
/// A packet that sets CLIENT_SSL but is longer than an SSLRequest is an
/// error: servers would start TLS and ignore the rest, and a proxy must not
/// let bytes ride along in front of the handshake.
pub fn parse_client_handshake(payload: &[u8]) -> Result<ClientHandshake, WireError> {
    let capabilities = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(WireError::Malformed {
            message: "client handshake",
            reason: "ends inside the capability flags",
        })?;
    if capabilities & CLIENT_SSL != 0 {
        SslRequest::parse(payload).map(ClientHandshake::SslRequest)
    } else {
        HandshakeResponse41::parse(payload).map(ClientHandshake::Response)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::mysql::captured::*;
    use crate::mysql::test_util::payload;
    use crate::mysql::{
        CLIENT_DEPRECATE_EOF, CLIENT_ED25519, MARIADB_CLIENT_CACHE_METADATA,
        MARIADB_CLIENT_EXTENDED_METADATA, MARIADB_CLIENT_PROGRESS,
        MARIADB_CLIENT_STMT_BULK_OPERATIONS, MYSQL_NATIVE_PASSWORD, UTF8_GENERAL_CI,
    };

    #[test]
    fn mariadb_greeting_parses_completely() {
        let bytes = payload(MARIADB_GREETING);
        let greeting = HandshakeV10::parse(&bytes).unwrap();
        assert_eq!(
            greeting.server_version_lossy(),
            "5.5.5-10.11.14-MariaDB-0+deb12u2"
        );
        assert_eq!(greeting.connection_id, 4);
        assert_eq!(greeting.capabilities, 0x81ff_fffe);
        assert!(greeting.offers_tls());
        assert_eq!(greeting.collation, 8);
        assert_eq!(greeting.status_flags, 0x0002);
        assert_eq!(greeting.auth_plugin_data_len, 21);
        assert_eq!(
            greeting.mariadb_capabilities(),
            Some(
                MARIADB_CLIENT_PROGRESS
                    | MARIADB_CLIENT_STMT_BULK_OPERATIONS
                    | MARIADB_CLIENT_EXTENDED_METADATA
                    | MARIADB_CLIENT_CACHE_METADATA
            )
        );
        assert_eq!(greeting.scramble().len(), 20);
        assert_eq!(greeting.auth_plugin_data_part2.last(), Some(&0));
        assert_eq!(
            greeting.auth_plugin_name.as_deref(),
            Some(MYSQL_NATIVE_PASSWORD.as_bytes())
        );
        assert_eq!(greeting.encode().unwrap(), bytes);
    }

    #[test]
    fn greeting_re_emitted_without_and_with_tls() {
        let bytes = payload(MARIADB_GREETING);
        let mut greeting = HandshakeV10::parse(&bytes).unwrap();
        greeting.set_tls_offered(false);
        let plain = greeting.encode().unwrap();
        assert_eq!(plain.len(), bytes.len());
        let differing: Vec<usize> = (0..bytes.len()).filter(|&i| plain[i] != bytes[i]).collect();
        // Only the second byte of the lower capability flags changes:
        // protocol, version and NUL, connection id, part 1, filler, then it.
        let version_end = bytes.iter().position(|&b| b == 0).unwrap();
        assert_eq!(differing, [version_end + 1 + 4 + 8 + 1 + 1]);
        greeting.set_tls_offered(true);
        assert_eq!(greeting.encode().unwrap(), bytes);
    }

    #[test]
    fn mysql8_style_greeting_round_trips() {
        // MySQL 8.0 layout: CLIENT_LONG_PASSWORD set (so no MariaDB
        // extended capabilities), caching_sha2_password.
        let mut bytes = vec![10];
        bytes.extend_from_slice(b"8.0.36\0");
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(b"\x1f\x3e\x4c\x01\x6f\x52\x1d\x32\0");
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0x02, 0x00, 0xff, 0xdf, 21]);
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(b"\x16\x57\x07\x2b\x47\x22\x3b\x65\x5b\x0c\x51\x6a\0");
        bytes.extend_from_slice(b"caching_sha2_password\0");
        let greeting = HandshakeV10::parse(&bytes).unwrap();
        assert_eq!(greeting.mariadb_capabilities(), None);
        assert_eq!(greeting.capabilities, 0xdfff_ffff);
        assert_eq!(greeting.encode().unwrap(), bytes);
    }

    #[test]
    fn greeting_every_prefix_is_an_error_not_a_panic() {
        let bytes = payload(MARIADB_GREETING);
        for end in 0..bytes.len() {
            assert!(HandshakeV10::parse(&bytes[..end]).is_err(), "cut at {end}");
        }
    }

    #[test]
    fn greeting_mutations() {
        let bytes = payload(MARIADB_GREETING);
        let version_end = bytes.iter().position(|&b| b == 0).unwrap();
        let filler = version_end + 1 + 4 + 8;
        let reserved = filler + 1 + 2 + 1 + 2 + 2 + 1;
        let cases: Vec<(usize, u8, &str)> = vec![
            (0, 9, "protocol version"),
            (filler, 1, "filler"),
            (reserved, 1, "reserved"),
            (bytes.len() - 1, b'x', "NUL-terminated"),
        ];
        for (at, value, expected) in cases {
            let mut mutated = bytes.clone();
            mutated[at] = value;
            let err = HandshakeV10::parse(&mutated).unwrap_err();
            assert!(err.to_string().contains(expected), "{at}: {err}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(HandshakeV10::parse(&trailing).is_err());
    }

    /// A MySQL 8.0 greeting payload with `capabilities` (CLIENT_SSL set in
    /// 0xdfff_ffff).
    fn mysql8_greeting(capabilities: u32) -> Vec<u8> {
        let caps = capabilities.to_le_bytes();
        let mut bytes = vec![10];
        bytes.extend_from_slice(b"8.0.36\0");
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(b"\x1f\x3e\x4c\x01\x6f\x52\x1d\x32\0");
        bytes.extend_from_slice(&[caps[0], caps[1], 0xff, 0x02, 0x00, caps[2], caps[3], 21]);
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(b"\x16\x57\x07\x2b\x47\x22\x3b\x65\x5b\x0c\x51\x6a\0");
        bytes.extend_from_slice(b"caching_sha2_password\0");
        bytes
    }

    #[test]
    fn summary_agrees_with_the_full_greeting() {
        for bytes in [payload(MARIADB_GREETING), mysql8_greeting(0xdfff_ffff)] {
            let full = HandshakeV10::parse(&bytes).unwrap();
            let ServerGreeting::Handshake(summary) = parse_server_greeting(&bytes).unwrap() else {
                panic!("not a handshake");
            };
            assert_eq!(summary.server_version, full.server_version);
            assert_eq!(summary.connection_id, full.connection_id);
            assert_eq!(summary.capabilities, full.capabilities);
            assert_eq!(summary.collation, Some(full.collation));
            assert_eq!(summary.status_flags, Some(full.status_flags));
            assert!(summary.offers_tls());
        }
        let summary = GreetingSummary::parse(&mysql8_greeting(0xdfff_ffff & !CLIENT_SSL)).unwrap();
        assert!(!summary.offers_tls());
        assert_eq!(summary.server_version_printable(), "8.0.36");
    }

    #[test]
    fn summary_reads_what_the_full_parser_refuses() {
        // MySQL 3.23: the greeting ends after the lower capability flags.
        let old = b"\x0a3.23.58\x00\x01\x00\x00\x00abcdefgh\x00\x2c\x08";
        assert!(HandshakeV10::parse(old).is_err());
        let summary = GreetingSummary::parse(old).unwrap();
        assert_eq!(summary.capabilities, 0x082c);
        assert!(summary.offers_tls());
        assert_eq!((summary.collation, summary.status_flags), (None, None));
        // Whatever follows the upper capability flags is not looked at.
        let mut odd = mysql8_greeting(0xdfff_ffff);
        odd.truncate(odd.len() - 3);
        assert!(HandshakeV10::parse(&odd).is_err());
        assert_eq!(
            GreetingSummary::parse(&odd).unwrap().capabilities,
            0xdfff_ffff
        );
    }

    #[test]
    fn summary_escapes_the_server_version() {
        let bytes = b"\x0a8.0\x07\x1b[2J\xfe\x00\x01\x00\x00\x00abcdefgh\x00\x00\x08";
        let summary = GreetingSummary::parse(bytes).unwrap();
        assert_eq!(
            summary.server_version_printable(),
            "8.0\\u{7}\\u{1b}[2J\u{fffd}"
        );
    }

    #[test]
    fn summary_errors_name_the_field() {
        let cases: [(&[u8], &str); 6] = [
            (b"", "empty payload"),
            (b"\x09", "protocol version is not 10"),
            (b"\x0a8.0.36", "NUL-terminated"),
            (b"\x0a8.0.36\x00\x01\x00", "connection id"),
            (
                b"\x0a8\x00\x01\x00\x00\x00abcdefgh\x00\x00",
                "capability flags",
            ),
            (
                b"\x0a8\x00\x01\x00\x00\x00abcdefgh\x00\x00\x08\x2d\x02",
                "status flags",
            ),
        ];
        for (bytes, expected) in cases {
            let err = parse_server_greeting(bytes).unwrap_err();
            assert!(err.to_string().contains(expected), "{bytes:?}: {err}");
        }
        let bytes = mysql8_greeting(0xdfff_ffff);
        for end in 0..bytes.len() {
            // Every prefix is an answer or an error, never a panic.
            let _ = parse_server_greeting(&bytes[..end]);
        }
    }

    #[test]
    fn err_packet_in_place_of_a_greeting() {
        let mut bytes = vec![0xff, 0x6a, 0x04];
        bytes.extend_from_slice(b"Host '10.0.0.9' is not allowed to connect to this MySQL server");
        let ServerGreeting::Error(err) = parse_server_greeting(&bytes).unwrap() else {
            panic!("not an error");
        };
        assert_eq!((err.code, err.sql_state), (1130, None));
        assert_eq!(
            err.to_string(),
            "ERROR 1130: Host '10.0.0.9' is not allowed to connect to this MySQL server"
        );
        let ServerGreeting::Error(err) =
            parse_server_greeting(b"\xff\x10\x04#08004Too many\x1b[31m connections\n").unwrap()
        else {
            panic!("not an error");
        };
        assert_eq!(
            err.to_string(),
            "ERROR 1040 (08004): Too many\\u{1b}[31m connections\\n"
        );
        assert!(parse_server_greeting(b"\xff\x10").is_err());
        for end in 0..bytes.len() {
            let _ = parse_server_greeting(&bytes[..end]);
        }
    }

    #[test]
    fn ssl_request_packet_layout() {
        let request = SslRequest {
            capabilities: CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION,
            max_packet_size: 1 << 24,
            collation: crate::mysql::UTF8MB4_GENERAL_CI,
            extended_capabilities: 0,
        };
        let packet = request.encode_packet(1);
        let mut expected = vec![0x20, 0x00, 0x00, 0x01];
        // CLIENT_SSL (always set) | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION
        expected.extend_from_slice(&[0x00, 0x8a, 0x00, 0x00]);
        // 16 MiB maximum packet.
        expected.extend_from_slice(&[0x00, 0x00, 0x00, 0x01]);
        // utf8mb4_general_ci.
        expected.push(45);
        expected.extend_from_slice(&[0; 23]);
        assert_eq!(packet.to_vec(), expected);
        let (framed, used) = crate::mysql::parse_packet(&packet).unwrap().unwrap();
        assert_eq!((framed.sequence_id, used), (1, packet.len()));
        let parsed = SslRequest::parse(framed.payload).unwrap();
        assert_eq!(parsed.capabilities, request.capabilities | CLIENT_SSL);
        assert_eq!(parsed.encode(), request.encode());
    }

    #[test]
    fn ssl_request_from_the_mariadb_client() {
        let bytes = payload(MARIADB_SSL_REQUEST);
        let ClientHandshake::SslRequest(request) = parse_client_handshake(&bytes).unwrap() else {
            panic!("not an SSLRequest");
        };
        assert_eq!(request.capabilities, 0x00bf_aa8c);
        assert_eq!(request.max_packet_size, 1 << 24);
        assert_eq!(request.collation, UTF8_GENERAL_CI);
        assert_eq!(request.mariadb_capabilities(), Some(0x1d));
        assert_eq!(request.encode()[..], bytes[..]);
        for end in 0..bytes.len() {
            assert!(
                parse_client_handshake(&bytes[..end]).is_err(),
                "cut at {end}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(b'x');
        let err = parse_client_handshake(&longer).unwrap_err();
        assert!(err.to_string().contains("longer than 32"), "{err}");
        let mut reserved = bytes.clone();
        reserved[20] = 1;
        assert!(SslRequest::parse(&reserved).is_err());
        let mut no_ssl = bytes.clone();
        no_ssl[1] &= !0x08;
        assert!(SslRequest::parse(&no_ssl).is_err());
        let mut no_41 = bytes;
        no_41[1] &= !0x02;
        assert!(SslRequest::parse(&no_41).is_err());
    }

    #[test]
    fn handshake_response_native_password_with_database() {
        let bytes = payload(MARIADB_RESPONSE_NATIVE_DB);
        let ClientHandshake::Response(response) = parse_client_handshake(&bytes).unwrap() else {
            panic!("not a HandshakeResponse41");
        };
        assert_eq!(response.user_utf8().unwrap(), "nat");
        assert_eq!(response.database_utf8().unwrap(), Some("shop"));
        assert_eq!(response.auth_response.len(), 20);
        assert_eq!(
            AuthResponseEncoding::for_capabilities(response.capabilities),
            AuthResponseEncoding::LengthEncoded
        );
        assert_eq!(
            response.auth_plugin_name.as_deref(),
            Some(MYSQL_NATIVE_PASSWORD.as_bytes())
        );
        assert_eq!(response.mariadb_capabilities(), Some(0x1d));
        assert_eq!(response.capabilities & CLIENT_SSL, 0);
        assert_eq!(response.capabilities & CLIENT_DEPRECATE_EOF, 0);
        let attrs = response.connect_attrs.as_ref().unwrap();
        let find = |key: &[u8]| {
            attrs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_slice())
        };
        assert_eq!(find(b"_client_name"), Some(&b"libmariadb"[..]));
        assert_eq!(find(b"program_name"), Some(&b"mysql"[..]));
        assert_eq!(find(b"_server_host"), Some(&b"127.0.0.1"[..]));
        assert_eq!(response.zstd_compression_level, None);
        assert_eq!(response.encode().unwrap(), bytes);
    }

    #[test]
    fn handshake_response_without_database_and_for_ed25519_user() {
        let bytes = payload(MARIADB_RESPONSE_NATIVE_NO_DB);
        let response = HandshakeResponse41::parse(&bytes).unwrap();
        assert_eq!(response.database, None);
        assert_eq!(response.capabilities & CLIENT_CONNECT_WITH_DB, 0);
        assert_eq!(response.encode().unwrap(), bytes);

        let bytes = payload(MARIADB_RESPONSE_ED25519_USER);
        let response = HandshakeResponse41::parse(&bytes).unwrap();
        assert_eq!(response.user_utf8().unwrap(), "ed");
        // The client answers the greeting's default plugin; the server
        // switches it to ed25519 afterwards.
        assert_ne!(
            response.auth_plugin_name.as_deref(),
            Some(CLIENT_ED25519.as_bytes())
        );
        assert_eq!(response.encode().unwrap(), bytes);
    }

    #[test]
    fn response_from_inside_tls_has_ssl_cleared_for_a_plaintext_upstream() {
        // What the client sends inside TLS: the same response with
        // CLIENT_SSL set, as in its SSLRequest.
        let mut response =
            HandshakeResponse41::parse(&payload(MARIADB_RESPONSE_NATIVE_DB)).unwrap();
        response.capabilities |= CLIENT_SSL;
        let inside_tls = response.encode().unwrap();
        assert!(matches!(
            parse_client_handshake(&inside_tls),
            Err(WireError::Malformed { .. })
        ));
        let mut parsed = HandshakeResponse41::parse(&inside_tls).unwrap();
        assert_ne!(parsed.capabilities & CLIENT_SSL, 0);
        parsed.clear_ssl();
        assert_eq!(
            parsed.encode().unwrap(),
            payload(MARIADB_RESPONSE_NATIVE_DB)
        );
    }

    #[test]
    fn response_prefixes_are_errors_or_shorter_valid_packets() {
        // A client may end the packet after any complete optional field, so
        // some prefixes parse; none may panic, and each that parses must
        // re-encode to itself.
        for capture in [
            MARIADB_RESPONSE_NATIVE_DB,
            MARIADB_RESPONSE_NATIVE_NO_DB,
            MARIADB_RESPONSE_ED25519_USER,
        ] {
            let bytes = payload(capture);
            for end in 0..bytes.len() {
                if let Ok(response) = HandshakeResponse41::parse(&bytes[..end]) {
                    assert_eq!(response.encode().unwrap(), &bytes[..end], "cut at {end}");
                    assert!(end > SSL_REQUEST_LEN);
                }
            }
        }
    }

    #[test]
    fn response_encodings_by_capability() {
        let base = HandshakeResponse41::parse(&payload(MARIADB_RESPONSE_NATIVE_NO_DB)).unwrap();
        for (clear, encoding) in [
            (0, AuthResponseEncoding::LengthEncoded),
            (
                CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
                AuthResponseEncoding::OneByteLength,
            ),
            (
                CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA | CLIENT_SECURE_CONNECTION,
                AuthResponseEncoding::NulTerminated,
            ),
        ] {
            let mut response = base.clone();
            response.capabilities &= !clear;
            assert_eq!(
                AuthResponseEncoding::for_capabilities(response.capabilities),
                encoding
            );
            let bytes = response.encode().unwrap();
            assert_eq!(HandshakeResponse41::parse(&bytes).unwrap(), response);
        }
        // A long RSA-encrypted password needs the length-encoded form.
        let mut long = base.clone();
        long.auth_response = vec![7; 300];
        let bytes = long.encode().unwrap();
        assert_eq!(HandshakeResponse41::parse(&bytes).unwrap(), long);
        long.capabilities &= !CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
        assert!(long.encode().is_err());
        // Fields out of step with the flags cannot be encoded.
        let mut stray = base.clone();
        stray.database = Some(b"shop".to_vec());
        assert!(stray.encode().is_err());
        let mut nul = base;
        nul.user = b"a\0b".to_vec();
        assert_eq!(
            nul.encode(),
            Err(WireError::NulInString {
                what: "MySQL user name"
            })
        );
    }

    #[test]
    fn response_mutations_are_rejected() {
        let bytes = payload(MARIADB_RESPONSE_NATIVE_DB);
        let mut trailing = bytes.clone();
        trailing.push(1);
        assert!(HandshakeResponse41::parse(&trailing).is_err());
        // The attribute block claims one byte more than there is.
        let attrs_at = bytes.len() - 1 - 0x7e;
        assert_eq!(bytes[attrs_at], 0x7e);
        let mut attrs = bytes.clone();
        attrs[attrs_at] = 0x7f;
        assert!(HandshakeResponse41::parse(&attrs).is_err());
        // A non-minimal length of the auth response (0xfc 0x14 0x00).
        let user_end = SSL_REQUEST_LEN + 4;
        let mut non_minimal = bytes[..user_end].to_vec();
        non_minimal.extend_from_slice(&[0xfc, 0x14, 0x00]);
        non_minimal.extend_from_slice(&bytes[user_end + 1..]);
        let err = HandshakeResponse41::parse(&non_minimal).unwrap_err();
        assert!(err.to_string().contains("minimally"), "{err}");
        let mut bad_utf8 = HandshakeResponse41::parse(&bytes).unwrap();
        bad_utf8.user = vec![0xff];
        assert!(bad_utf8.user_utf8().is_err());
    }

    #[test]
    fn zstd_level_round_trips() {
        let mut response =
            HandshakeResponse41::parse(&payload(MARIADB_RESPONSE_NATIVE_DB)).unwrap();
        response.capabilities |= CLIENT_ZSTD_COMPRESSION_ALGORITHM;
        response.zstd_compression_level = Some(3);
        let bytes = response.encode().unwrap();
        assert_eq!(bytes.last(), Some(&3));
        assert_eq!(HandshakeResponse41::parse(&bytes).unwrap(), response);
    }
}
