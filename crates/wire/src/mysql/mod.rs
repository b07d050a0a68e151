//! MySQL and MariaDB client/server protocol: the packets a TLS-terminating
//! proxy reads and writes during connection setup, before the byte pump
//! starts.
//!
//! This module owns:
//! - packet framing ([`parse_packet`], [`encode_packet`]): a 3-byte
//!   little-endian payload length and a sequence id;
//! - length-encoded integers and strings ([`lenenc`]);
//! - the server's greeting ([`HandshakeV10`]), including MariaDB's extended
//!   capabilities, parsed completely and re-encoded byte for byte so the
//!   proxy can re-emit it with [`CLIENT_SSL`] set; and, for a client that
//!   only decides whether to ask for TLS, the server's first packet read
//!   leniently ([`parse_server_greeting`]: a [`GreetingSummary`], pre-4.1
//!   greetings included, or an ERR packet sent in place of a greeting);
//! - the client's first packet ([`parse_client_handshake`]): an
//!   [`SslRequest`] or a [`HandshakeResponse41`];
//! - the server's answers during authentication ([`parse_server_auth_reply`]):
//!   OK, ERR, AuthSwitchRequest, AuthMoreData; and the ERR packets the proxy
//!   sends itself ([`ErrPacket`], [`ServerError`]).
//!
//! - after login, where each client command starts and the one command
//!   that logs in again as another user ([`CommandScanner`],
//!   [`ChangeUser`]), so the proxy's user rules hold for the whole
//!   session.
//!
//! It must never touch a socket, decide policy (whether plaintext is refused,
//! which identity may log in as which user) or interpret query traffic
//! beyond a command's first byte.
//! Layouts follow the MySQL server (`sql/auth/sql_authentication.cc`,
//! `include/mysql_com.h`) and MariaDB's `sql/sql_acl.cc`.
//!
//! Every parser except [`parse_server_greeting`] is strict where being lenient would break the byte-exact
//! round trip `encode(parse(bytes)) == bytes` (reserved bytes must be zero,
//! length-encoded integers must be minimal, no trailing bytes): real clients
//! and servers always send the canonical form, and a proxy that re-encodes
//! a packet must not silently change what it forwards.

mod codec;
mod command;
mod handshake;
pub mod lenenc;
mod packet;
mod reply;

#[doc(hidden)]
pub mod captured;

pub use command::{ChangeUser, CommandScanner, Scanned, COM_CHANGE_USER};
pub use handshake::{
    parse_client_handshake, parse_server_greeting, AuthResponseEncoding, ClientHandshake,
    ConnectAttrs, GreetingSummary, HandshakeResponse41, HandshakeV10, ServerGreeting, SslRequest,
    SSL_REQUEST_LEN,
};
pub use packet::{
    encode_packet, parse_packet, parse_packet_with_max, Packet, HEADER_LEN,
    MAX_GREETING_PAYLOAD_LEN, MAX_HANDSHAKE_PAYLOAD_LEN, MAX_PAYLOAD_LEN,
};
pub use reply::{
    is_eof_packet, is_err_packet, is_ok_packet, parse_server_auth_reply, AuthSwitchRequest,
    ErrPacket, OkPacket, ServerAuthReply, ServerError, AUTH_MORE_DATA_MARKER, EOF_MARKER,
    ERR_MARKER, MAX_ERROR_MESSAGE_LEN, OK_MARKER,
};

/// The protocol version byte that starts every greeting since MySQL 3.21.
pub const PROTOCOL_VERSION_10: u8 = 10;

/// Capability flag: long passwords (MySQL). MariaDB servers and clients clear
/// it to say "MariaDB, read the extended capabilities in the reserved bytes";
/// MariaDB calls it `CLIENT_MYSQL`.
pub const CLIENT_LONG_PASSWORD: u32 = 0x0000_0001;
/// Capability flag: found rows instead of affected rows.
pub const CLIENT_FOUND_ROWS: u32 = 0x0000_0002;
/// Capability flag: long column flags.
pub const CLIENT_LONG_FLAG: u32 = 0x0000_0004;
/// Capability flag: a database name follows the auth response in the
/// HandshakeResponse.
pub const CLIENT_CONNECT_WITH_DB: u32 = 0x0000_0008;
/// Capability flag: the client uses compression.
pub const CLIENT_COMPRESS: u32 = 0x0000_0020;
/// Capability flag: LOAD DATA LOCAL.
pub const CLIENT_LOCAL_FILES: u32 = 0x0000_0080;
/// Capability flag: the parser ignores spaces before `(` (SQL mode
/// IGNORE_SPACE).
pub const CLIENT_IGNORE_SPACE: u32 = 0x0000_0100;
/// Capability flag: the 4.1 protocol (SQL states in errors, 4-byte
/// capability flags). MySQL 8 and MariaDB refuse clients without it.
pub const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
/// Capability flag: interactive client (interactive_timeout).
pub const CLIENT_INTERACTIVE: u32 = 0x0000_0400;
/// Capability flag: TLS. A server sets it in its greeting when it offers
/// TLS; a client sets it in its SSLRequest to start TLS.
pub const CLIENT_SSL: u32 = 0x0000_0800;
/// Capability flag: transactions (status flags in OK packets).
pub const CLIENT_TRANSACTIONS: u32 = 0x0000_2000;
/// Capability flag: 4.1 authentication, a length-prefixed auth response.
pub const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
/// Capability flag: several statements per query.
pub const CLIENT_MULTI_STATEMENTS: u32 = 0x0001_0000;
/// Capability flag: several result sets per query.
pub const CLIENT_MULTI_RESULTS: u32 = 0x0002_0000;
/// Capability flag: several result sets from prepared statements.
pub const CLIENT_PS_MULTI_RESULTS: u32 = 0x0004_0000;
/// Capability flag: authentication plugins; the greeting and the
/// HandshakeResponse name one.
pub const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;
/// Capability flag: the HandshakeResponse carries connection attributes.
pub const CLIENT_CONNECT_ATTRS: u32 = 0x0010_0000;
/// Capability flag: the auth response is length-encoded, so it may be
/// longer than 250 bytes.
pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x0020_0000;
/// Capability flag: the client handles expired passwords.
pub const CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS: u32 = 0x0040_0000;
/// Capability flag: session state tracking in OK packets.
pub const CLIENT_SESSION_TRACK: u32 = 0x0080_0000;
/// Capability flag: OK packets replace EOF packets.
pub const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
/// Capability flag (MySQL 8.0.18+): zstd compression; the
/// HandshakeResponse then ends with a compression level byte.
pub const CLIENT_ZSTD_COMPRESSION_ALGORITHM: u32 = 0x0400_0000;
/// Capability flag (MySQL 8.0.23+): query attributes.
pub const CLIENT_QUERY_ATTRIBUTES: u32 = 0x0800_0000;

/// MariaDB extended capability (reserved bytes): progress reports.
pub const MARIADB_CLIENT_PROGRESS: u32 = 0x0000_0001;
/// MariaDB extended capability: bulk COM_STMT_EXECUTE.
pub const MARIADB_CLIENT_STMT_BULK_OPERATIONS: u32 = 0x0000_0004;
/// MariaDB extended capability: extended type information in metadata.
pub const MARIADB_CLIENT_EXTENDED_METADATA: u32 = 0x0000_0008;
/// MariaDB extended capability: metadata caching for prepared statements.
pub const MARIADB_CLIENT_CACHE_METADATA: u32 = 0x0000_0010;

/// Collation id 33, `utf8mb3_general_ci`, what the MariaDB client sends.
pub const UTF8_GENERAL_CI: u8 = 33;
/// Collation id 45, `utf8mb4_general_ci`.
pub const UTF8MB4_GENERAL_CI: u8 = 45;

/// The auth plugin that signs the scramble with SHA-1 (every server).
pub const MYSQL_NATIVE_PASSWORD: &str = "mysql_native_password";
/// MySQL 8's default auth plugin. Its full authentication needs a secure
/// connection (TLS or unix socket) or an RSA key exchange.
pub const CACHING_SHA2_PASSWORD: &str = "caching_sha2_password";
/// MariaDB's ed25519 auth plugin, as the client names it.
pub const CLIENT_ED25519: &str = "client_ed25519";

/// Test helpers shared by the test modules of this folder.
#[cfg(test)]
pub(crate) mod test_util {
    pub(crate) use crate::pg::test_util::hex;

    /// The payload of a captured packet: the bytes after the 4-byte header.
    pub(crate) fn payload(packet_hex: &str) -> Vec<u8> {
        hex(packet_hex)[super::HEADER_LEN..].to_vec()
    }
}
