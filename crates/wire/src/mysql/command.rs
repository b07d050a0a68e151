//! The client's side of the command phase, looked at only as far as a
//! proxy that enforces who may log in as which user must: where each
//! command packet starts, and the one command that changes the logged-in
//! user, COM_CHANGE_USER ([`ChangeUser`]).
//!
//! [`CommandScanner`] follows the client's byte stream packet by packet
//! without buffering what it lets through: every packet except a
//! COM_CHANGE_USER may be forwarded as soon as its first payload byte is
//! seen, and a COM_CHANGE_USER is held until it is complete and parsed.
//!
//! A command starts with a packet whose sequence id is 0 (a server answers
//! a command with sequence id 1 and refuses a command with any other id as
//! out of order). Packets with other ids carry the rest of an exchange the
//! server started: authentication after a COM_CHANGE_USER, the contents of
//! a `LOAD DATA LOCAL INFILE` file. A payload of exactly
//! [`MAX_PAYLOAD_LEN`](super::MAX_PAYLOAD_LEN) bytes continues in the next
//! packet, whatever that packet's id. The scanner does not read the
//! server's side, so a file upload longer than 255 packets, whose ids wrap
//! through 0, is read as commands too: each such packet that starts with
//! the COM_CHANGE_USER byte is reported, and the caller decides. Erring
//! this way never lets a user change through unseen.

use super::codec::{put_nul_terminated, Reader};
use super::lenenc;
use super::{
    ConnectAttrs, CLIENT_CONNECT_ATTRS, CLIENT_PLUGIN_AUTH, CLIENT_SECURE_CONNECTION, HEADER_LEN,
    MAX_HANDSHAKE_PAYLOAD_LEN, MAX_PAYLOAD_LEN,
};
use crate::WireError;

/// The command byte of COM_CHANGE_USER.
pub const COM_CHANGE_USER: u8 = 0x11;

/// A COM_CHANGE_USER request: log the connection in again as another user.
///
/// The fields after the database are optional (old clients end the packet
/// there); each is `Some` exactly when it was sent, and
/// [`ChangeUser::encode`] writes exactly those, so that
/// `encode(parse(bytes)) == bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeUser {
    /// The user name, as sent (in the connection's character set).
    pub user: Vec<u8>,
    /// The auth plugin's answer for the new user.
    pub auth_response: Vec<u8>,
    /// The database to use, as sent; may be empty.
    pub database: Vec<u8>,
    /// The new character set (collation id).
    pub collation: Option<u16>,
    /// The auth plugin the response is for ([`CLIENT_PLUGIN_AUTH`]).
    pub auth_plugin_name: Option<Vec<u8>>,
    /// Connection attributes in the order sent ([`CLIENT_CONNECT_ATTRS`]).
    pub connect_attrs: Option<ConnectAttrs>,
    /// Bytes after the fields the capabilities announce, kept as sent:
    /// servers ignore them (mysql_async always sends empty connection
    /// attributes, announced or not).
    pub trailing: Vec<u8>,
}

impl ChangeUser {
    const MESSAGE: &'static str = "COM_CHANGE_USER";

    /// Parses a COM_CHANGE_USER payload, command byte included, sent by a
    /// client that logged in with `capabilities`.
    pub fn parse(payload: &[u8], capabilities: u32) -> Result<ChangeUser, WireError> {
        let mut r = Reader::new(payload, Self::MESSAGE);
        if r.u8("empty payload")? != COM_CHANGE_USER {
            return Err(r.error("not a COM_CHANGE_USER"));
        }
        let user = r
            .nul_terminated("user name is missing or not NUL-terminated")?
            .to_vec();
        let auth_response = if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let len = r.u8("ends inside the auth response length")?;
            r.take(usize::from(len), "ends inside the auth response")?
        } else {
            r.nul_terminated("auth response is not NUL-terminated")?
        }
        .to_vec();
        let database = r
            .nul_terminated("database is missing or not NUL-terminated")?
            .to_vec();
        let collation = if r.is_empty() {
            None
        } else {
            Some(r.u16("ends inside the character set")?)
        };
        let auth_plugin_name =
            if collation.is_some() && capabilities & CLIENT_PLUGIN_AUTH != 0 && !r.is_empty() {
                Some(
                    r.nul_terminated("auth plugin name is not NUL-terminated")?
                        .to_vec(),
                )
            } else {
                None
            };
        let connect_attrs = if auth_plugin_name.is_some()
            && capabilities & CLIENT_CONNECT_ATTRS != 0
            && !r.is_empty()
        {
            Some(super::handshake::parse_connect_attrs(
                r.lenenc_bytes("ends inside the connection attributes")?,
            )?)
        } else {
            None
        };
        let trailing = r.rest().to_vec();
        Ok(ChangeUser {
            user,
            auth_response,
            database,
            collation,
            auth_plugin_name,
            connect_attrs,
            trailing,
        })
    }

    /// The payload, command byte included, for a client that logged in
    /// with `capabilities`: byte for byte what [`ChangeUser::parse`] read
    /// when nothing was changed.
    ///
    /// Fails if a string holds a NUL, if the auth response does not fit its
    /// framing, or if an optional field is present without its flag or
    /// after a missing earlier one.
    pub fn encode(&self, capabilities: u32) -> Result<Vec<u8>, WireError> {
        let malformed = |reason| WireError::Malformed {
            message: Self::MESSAGE,
            reason,
        };
        let order_ok = (self.auth_plugin_name.is_none()
            || (self.collation.is_some() && capabilities & CLIENT_PLUGIN_AUTH != 0))
            && (self.connect_attrs.is_none()
                || (self.auth_plugin_name.is_some() && capabilities & CLIENT_CONNECT_ATTRS != 0));
        if !order_ok {
            return Err(malformed(
                "an optional field is present without its capability flag or after a missing one",
            ));
        }
        let mut out = vec![COM_CHANGE_USER];
        put_nul_terminated(&mut out, &self.user, "MySQL user name")?;
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let len = u8::try_from(self.auth_response.len())
                .map_err(|_| malformed("auth response longer than 255 bytes"))?;
            out.push(len);
            out.extend_from_slice(&self.auth_response);
        } else {
            put_nul_terminated(&mut out, &self.auth_response, "MySQL auth response")?;
        }
        put_nul_terminated(&mut out, &self.database, "MySQL database name")?;
        if let Some(collation) = self.collation {
            out.extend_from_slice(&collation.to_le_bytes());
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
        out.extend_from_slice(&self.trailing);
        Ok(out)
    }

    /// The user name as UTF-8, which the proxy's user allow-list needs.
    pub fn user_utf8(&self) -> Result<&str, WireError> {
        std::str::from_utf8(&self.user).map_err(|_| WireError::InvalidUtf8 {
            what: "MySQL user name",
        })
    }
}

/// What [`CommandScanner::scan`] found at the front of the bytes it was
/// given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scanned {
    /// This many bytes may go to the server as they are; scan the rest
    /// again. Zero means nothing can be decided until more bytes arrive.
    Forward(usize),
    /// The first `len` bytes are a complete COM_CHANGE_USER packet: the
    /// caller lets them through or refuses the connection.
    ChangeUser {
        /// The whole packet's length, header included.
        len: usize,
        /// The request it carries.
        request: ChangeUser,
    },
}

/// Where the scanner is in the client's packet stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// At a packet header; `continued` when the previous payload was
    /// [`MAX_PAYLOAD_LEN`] bytes long, so this packet carries its rest.
    Header { continued: bool },
    /// Inside a payload that is being let through.
    Payload { remaining: usize, continues: bool },
}

/// Follows a client's packets after login and picks out COM_CHANGE_USER.
#[derive(Debug, Clone)]
pub struct CommandScanner {
    capabilities: u32,
    position: Position,
}

impl CommandScanner {
    /// A scanner for a client that logged in with `capabilities` (they
    /// decide how COM_CHANGE_USER is framed), at the start of a packet.
    pub fn new(capabilities: u32) -> Self {
        CommandScanner {
            capabilities,
            position: Position::Header { continued: false },
        }
    }

    /// Looks at `pending`, the client's bytes that have not been let
    /// through yet, starting where the last call's answer ended.
    ///
    /// A [`Scanned::Forward`] or [`Scanned::ChangeUser`] answer moves the
    /// scanner past those bytes; the caller must not offer them again. A
    /// COM_CHANGE_USER longer than
    /// [`MAX_HANDSHAKE_PAYLOAD_LEN`](super::MAX_HANDSHAKE_PAYLOAD_LEN), or
    /// one that does not parse, is an error: the caller cannot know which
    /// user the server would see.
    pub fn scan(&mut self, pending: &[u8]) -> Result<Scanned, WireError> {
        let mut forward = 0;
        loop {
            let rest = pending.get(forward..).unwrap_or_default();
            match self.position {
                Position::Payload {
                    remaining,
                    continues,
                } => {
                    let n = remaining.min(rest.len());
                    forward += n;
                    if n < remaining {
                        self.position = Position::Payload {
                            remaining: remaining - n,
                            continues,
                        };
                        return Ok(Scanned::Forward(forward));
                    }
                    self.position = Position::Header {
                        continued: continues,
                    };
                }
                Position::Header { continued } => {
                    let Some(header) = rest.get(..HEADER_LEN) else {
                        return Ok(Scanned::Forward(forward));
                    };
                    let len = usize::from(header[0])
                        | usize::from(header[1]) << 8
                        | usize::from(header[2]) << 16;
                    let sequence_id = header[3];
                    let starts_command = !continued && sequence_id == 0;
                    if starts_command && len > 0 {
                        let Some(&command) = rest.get(HEADER_LEN) else {
                            return Ok(Scanned::Forward(forward));
                        };
                        if command == COM_CHANGE_USER {
                            if forward > 0 {
                                // Let the packets before it go first.
                                return Ok(Scanned::Forward(forward));
                            }
                            return self.change_user(rest, len);
                        }
                    }
                    forward += HEADER_LEN;
                    self.position = Position::Payload {
                        remaining: len,
                        continues: len == MAX_PAYLOAD_LEN,
                    };
                }
            }
        }
    }

    /// A COM_CHANGE_USER packet of payload length `len` at the front of
    /// `rest`: parsed once whole.
    fn change_user(&mut self, rest: &[u8], len: usize) -> Result<Scanned, WireError> {
        if len > MAX_HANDSHAKE_PAYLOAD_LEN {
            return Err(WireError::Malformed {
                message: ChangeUser::MESSAGE,
                reason: "longer than any login packet",
            });
        }
        let Some(payload) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(Scanned::Forward(0));
        };
        let request = ChangeUser::parse(payload, self.capabilities)?;
        self.position = Position::Header { continued: false };
        Ok(Scanned::ChangeUser {
            len: HEADER_LEN + len,
            request,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::mysql::{encode_packet, CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA, CLIENT_PROTOCOL_41};

    const CAPS: u32 = CLIENT_PROTOCOL_41
        | CLIENT_SECURE_CONNECTION
        | CLIENT_PLUGIN_AUTH
        | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
        | CLIENT_CONNECT_ATTRS;

    fn change_user(user: &str) -> ChangeUser {
        ChangeUser {
            user: user.as_bytes().to_vec(),
            auth_response: vec![7; 20],
            database: b"shop".to_vec(),
            collation: Some(45),
            auth_plugin_name: Some(b"mysql_native_password".to_vec()),
            connect_attrs: Some(vec![(b"_client_name".to_vec(), b"libmariadb".to_vec())]),
            trailing: Vec::new(),
        }
    }

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        encode_packet(seq, payload).unwrap()
    }

    /// Feeds `stream` to a scanner `step` bytes at a time, as a proxy
    /// would, and returns what it forwarded and the users it saw.
    fn scan_in_steps(stream: &[u8], step: usize) -> (Vec<u8>, Vec<String>) {
        let mut scanner = CommandScanner::new(CAPS);
        let mut pending: Vec<u8> = Vec::new();
        let mut forwarded = Vec::new();
        let mut users = Vec::new();
        for chunk in stream.chunks(step) {
            pending.extend_from_slice(chunk);
            loop {
                match scanner.scan(&pending).unwrap() {
                    Scanned::Forward(0) => break,
                    Scanned::Forward(n) => {
                        forwarded.extend(pending.drain(..n));
                    }
                    Scanned::ChangeUser { len, request } => {
                        users.push(request.user_utf8().unwrap().to_owned());
                        forwarded.extend(pending.drain(..len));
                    }
                }
            }
        }
        assert!(pending.is_empty(), "{} bytes left over", pending.len());
        (forwarded, users)
    }

    #[test]
    fn a_change_user_round_trips_in_every_shape() {
        let full = change_user("admin");
        let bytes = full.encode(CAPS).unwrap();
        assert_eq!(ChangeUser::parse(&bytes, CAPS).unwrap(), full);
        let old = ChangeUser {
            collation: None,
            auth_plugin_name: None,
            connect_attrs: None,
            ..full.clone()
        };
        let bytes = old.encode(CAPS).unwrap();
        assert_eq!(ChangeUser::parse(&bytes, CAPS).unwrap(), old);
        // Without CLIENT_SECURE_CONNECTION the response is NUL-terminated.
        let pre41 = ChangeUser {
            auth_response: b"scrambled".to_vec(),
            ..old
        };
        let bytes = pre41.encode(0).unwrap();
        assert_eq!(ChangeUser::parse(&bytes, 0).unwrap(), pre41);
        // mysql_async sends empty connection attributes whatever the
        // capabilities: kept as trailing bytes, which servers skip.
        let caps = CAPS & !CLIENT_CONNECT_ATTRS;
        let mut bytes = ChangeUser {
            connect_attrs: None,
            ..full.clone()
        }
        .encode(caps)
        .unwrap();
        bytes.push(0);
        let parsed = ChangeUser::parse(&bytes, caps).unwrap();
        assert_eq!(parsed.trailing, [0]);
        assert_eq!(parsed.user, b"admin");
        assert_eq!(parsed.encode(caps).unwrap(), bytes);
        assert!(ChangeUser::parse(b"\x11admin", CAPS).is_err());
        assert!(ChangeUser::parse(b"\x03admin\0\0shop\0", CAPS).is_err());
    }

    #[test]
    fn commands_pass_and_change_user_is_picked_out_in_any_split() {
        let mut stream = packet(0, b"\x03SELECT 1");
        stream.extend(packet(0, &change_user("admin").encode(CAPS).unwrap()));
        // The server's AuthSwitchRequest would come here; the client's
        // answer is packet 2 and not a command.
        stream.extend(packet(2, b"\x11\x11\x11"));
        stream.extend(packet(0, b"\x0e"));
        stream.extend(packet(0, &[]));
        for step in [1, 2, 3, 5, 7, 64, stream.len()] {
            let (forwarded, users) = scan_in_steps(&stream, step);
            assert_eq!(forwarded, stream, "step {step}");
            assert_eq!(users, ["admin"], "step {step}");
        }
    }

    #[test]
    fn the_rest_of_a_long_packet_is_never_read_as_a_command() {
        // A 16 MiB - 1 payload continues in the next packet, and a
        // continuation packet with sequence id 0 is not a command.
        let mut stream = vec![0xff, 0xff, 0xff, 0x00, 0x03];
        stream.resize(HEADER_LEN + MAX_PAYLOAD_LEN, b'x');
        stream.extend(packet(0, &change_user("admin").encode(CAPS).unwrap()));
        stream.extend(packet(0, &change_user("bob").encode(CAPS).unwrap()));
        let (forwarded, users) = scan_in_steps(&stream, 65_536);
        assert_eq!(forwarded.len(), stream.len());
        assert_eq!(users, ["bob"]);
    }

    #[test]
    fn an_oversized_or_unparsable_change_user_is_an_error() {
        let mut scanner = CommandScanner::new(CAPS);
        let header = [0x00, 0x00, 0x10, 0x00, COM_CHANGE_USER];
        assert!(scanner.scan(&header).is_err());
        let mut scanner = CommandScanner::new(CAPS);
        assert!(scanner.scan(&packet(0, b"\x11admin")).is_err());
        // Until it is whole, nothing of it is let through.
        let mut scanner = CommandScanner::new(CAPS);
        let whole = packet(0, &change_user("admin").encode(CAPS).unwrap());
        assert_eq!(
            scanner.scan(&whole[..whole.len() - 1]).unwrap(),
            Scanned::Forward(0)
        );
    }
}
