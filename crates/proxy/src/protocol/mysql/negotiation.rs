//! The decisions of MySQL negotiation, without I/O: given this packet in
//! this state, what the proxy sends and where the connection goes next,
//! and how sequence ids are renumbered between the two legs. The drivers
//! in `server_mode`, `client_mode` and `relay` read the packets, act on
//! these answers and do the socket work.

use intransit_policy::{ClientIdentity, DbUserRules};
use intransit_wire::mysql::{
    encode_packet, parse_client_handshake, parse_server_auth_reply, ChangeUser, ClientHandshake,
    HandshakeResponse41, HandshakeV10, ServerAuthReply, ServerError,
    CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS, CLIENT_CONNECT_ATTRS, CLIENT_CONNECT_WITH_DB,
    CLIENT_DEPRECATE_EOF, CLIENT_FOUND_ROWS, CLIENT_IGNORE_SPACE, CLIENT_INTERACTIVE,
    CLIENT_LOCAL_FILES, CLIENT_LONG_FLAG, CLIENT_LONG_PASSWORD, CLIENT_MULTI_RESULTS,
    CLIENT_MULTI_STATEMENTS, CLIENT_PLUGIN_AUTH, CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA,
    CLIENT_PROTOCOL_41, CLIENT_PS_MULTI_RESULTS, CLIENT_SECURE_CONNECTION, CLIENT_SESSION_TRACK,
    CLIENT_SSL, CLIENT_TRANSACTIONS, MYSQL_NATIVE_PASSWORD, UTF8MB4_GENERAL_CI,
};
use intransit_wire::WireError;

use super::packets::{err_packet, unavailable_packet};
use crate::conn::{check_db_user, refused_party, Refusal, Refused};
use crate::refusal::RefusalReason;

/// The ERR a client gets for a packet that is not a handshake packet.
fn bad_handshake(seq: u8, detail: String) -> Refusal {
    Refusal {
        reply: err_packet(
            seq.wrapping_add(1),
            ServerError::BAD_HANDSHAKE,
            "Bad handshake",
        ),
        refused: Refused::new(RefusalReason::Malformed, detail),
    }
}

/// What the proxy's own greeting offers a server-mode client: what MySQL
/// 5.7+ and MariaDB 10.2+ all support, and nothing that would hide a
/// command from the proxy (no compression, no MariaDB extended
/// capabilities such as COM_MULTI) or change the command format (no query
/// attributes). A client's choices are checked against the real server's
/// greeting before its login goes on ([`plan_server_login`]).
pub(crate) const GREETING_CAPABILITIES: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_FOUND_ROWS
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_LOCAL_FILES
    | CLIENT_IGNORE_SPACE
    | CLIENT_PROTOCOL_41
    | CLIENT_INTERACTIVE
    | CLIENT_SSL
    | CLIENT_TRANSACTIONS
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS
    | CLIENT_SESSION_TRACK
    | CLIENT_DEPRECATE_EOF;

/// Capabilities that shape every later packet: a client that chose one
/// from the proxy's greeting cannot talk to a server without it.
const SESSION_FORMAT: u32 = CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_SESSION_TRACK
    | CLIENT_DEPRECATE_EOF;

/// `SERVER_STATUS_AUTOCOMMIT`, the status of a fresh session.
const STATUS_AUTOCOMMIT: u16 = 0x0002;

/// The length of a scramble (auth-plugin-data) in a greeting.
pub(crate) const SCRAMBLE_LEN: usize = 20;

/// The proxy's own greeting to a server-mode client, packet 0: the
/// configured version, no connection id (0: no server thread is behind it
/// yet), `scramble` for `mysql_native_password`, and
/// [`GREETING_CAPABILITIES`]. Nothing in it comes from the database,
/// which the proxy has not contacted: the client's answer to this
/// scramble is never used; once the client is verified, it answers the
/// real server's ([`plan_server_login`]).
pub(crate) fn proxy_greeting(
    server_version: &str,
    scramble: &[u8; SCRAMBLE_LEN],
) -> Result<Vec<u8>, WireError> {
    let (part1, part2) = scramble.split_at(8);
    let mut auth_plugin_data_part2 = part2.to_vec();
    auth_plugin_data_part2.push(0);
    let greeting = HandshakeV10 {
        server_version: server_version.as_bytes().to_vec(),
        connection_id: 0,
        auth_plugin_data_part1: part1.try_into().unwrap_or_default(),
        capabilities: GREETING_CAPABILITIES,
        collation: UTF8MB4_GENERAL_CI,
        status_flags: STATUS_AUTOCOMMIT,
        auth_plugin_data_len: SCRAMBLE_LEN as u8 + 1,
        reserved: Default::default(),
        extended_capabilities: 0,
        auth_plugin_data_part2,
        auth_plugin_name: Some(MYSQL_NATIVE_PASSWORD.as_bytes().to_vec()),
    };
    encode_packet(0, &greeting.encode()?)
}

/// The auth plugin the proxy names in the HandshakeResponse it sends the
/// server. It is no plugin at all, so the server always answers with an
/// AuthSwitchRequest for the account's own plugin and a fresh challenge,
/// which the proxy relays: the client authenticates to the server
/// directly, in one round trip, whatever plugin the account uses, and
/// drivers that follow only one switch (mysql_async) work too.
pub(crate) const PLACEHOLDER_PLUGIN: &str = "intransit_relay";

/// A verified client's login as the real server will get it.
#[derive(Debug)]
pub(crate) struct ServerLogin {
    /// The client's HandshakeResponse with the capabilities both sides
    /// share, [`PLACEHOLDER_PLUGIN`] and no auth response.
    response: HandshakeResponse41,
}

/// Plans a verified client's login at the server whose greeting is
/// `server`. The client's own auth response answered the proxy's
/// scramble and is dropped; the server's AuthSwitchRequest, relayed,
/// asks the client for the real one.
///
/// Refused when the server lacks what the client chose from the proxy's
/// greeting and every later packet depends on (a server older than MySQL
/// 5.7 or MariaDB 10.2), or when either side cannot switch auth plugins.
pub(crate) fn plan_server_login(
    login: &Login,
    server: &HandshakeV10,
) -> Result<ServerLogin, Refusal> {
    let reply_seq = login.seq.wrapping_add(1);
    let unusable_server = |detail: String| Refusal {
        reply: unavailable_packet(reply_seq),
        refused: Refused::new(RefusalReason::UpstreamUnavailable, detail),
    };
    let client_caps = login.response.capabilities;
    if client_caps & CLIENT_PLUGIN_AUTH == 0 {
        return Err(Refusal {
            reply: err_packet(
                reply_seq,
                ServerError::BAD_HANDSHAKE,
                "This client cannot switch authentication plugins (no CLIENT_PLUGIN_AUTH), which the proxy needs; use a MySQL 5.5+ or MariaDB client library",
            ),
            refused: Refused::new(
                RefusalReason::Malformed,
                "the client does not support CLIENT_PLUGIN_AUTH, so it cannot answer the server's challenge",
            ),
        });
    }
    if server.capabilities & CLIENT_PLUGIN_AUTH == 0 {
        return Err(unusable_server(
            "the server cannot switch auth plugins (no CLIENT_PLUGIN_AUTH: a server older than MySQL 5.5)".to_owned(),
        ));
    }
    let missing = client_caps & SESSION_FORMAT & !server.capabilities;
    if missing != 0 {
        return Err(unusable_server(format!(
            "the server lacks capabilities {missing:#010x} that the client chose from the proxy's greeting (a server older than MySQL 5.7 or MariaDB 10.2)"
        )));
    }
    let mut response = login.response.clone();
    response.capabilities = client_caps & GREETING_CAPABILITIES & server.capabilities & !CLIENT_SSL;
    // MariaDB's extended capabilities were not offered.
    response.extended_capabilities = 0;
    if response.database.is_none() {
        response.capabilities &= !CLIENT_CONNECT_WITH_DB;
    }
    if response.capabilities & CLIENT_CONNECT_ATTRS == 0 {
        response.connect_attrs = None;
    }
    response.zstd_compression_level = None;
    response.auth_plugin_name = Some(PLACEHOLDER_PLUGIN.as_bytes().to_vec());
    response.auth_response = Vec::new();
    Ok(ServerLogin { response })
}

impl ServerLogin {
    /// The capabilities the server will see (without CLIENT_SSL).
    pub(crate) fn capabilities(&self) -> u32 {
        self.response.capabilities
    }

    /// The planned HandshakeResponse: what the proxy's SSLRequest to a TLS
    /// upstream takes its fields from.
    pub(crate) fn planned(&self) -> &HandshakeResponse41 {
        &self.response
    }

    /// The HandshakeResponse for the server, CLIENT_SSL set exactly when
    /// the upstream leg is TLS, numbered `seq` in the server's count.
    pub(crate) fn response(&self, upstream_tls: bool, seq: u8) -> Result<Vec<u8>, WireError> {
        let mut response = self.response.clone();
        if upstream_tls {
            response.capabilities |= CLIENT_SSL;
        }
        encode_packet(seq, &response.encode()?)
    }
}

/// Checks a COM_CHANGE_USER against `rules`: the user it names must be
/// one `identity` may log in as, exactly as at login. Returns the new
/// user's name; the refusal carries the ERR 1045 (packet 1, the answer to
/// the command) the client sees before the connection closes.
pub(crate) fn authorize_change_user(
    rules: &DbUserRules,
    identity: Option<&ClientIdentity>,
    from: &str,
    request: &ChangeUser,
) -> Result<String, Refusal> {
    let Ok(user) = request.user_utf8() else {
        return Err(Refusal {
            reply: err_packet(
                1,
                ServerError::ACCESS_DENIED,
                "Access denied: the user name is not valid UTF-8",
            ),
            refused: Refused::new(
                RefusalReason::UserDenied,
                format!("COM_CHANGE_USER from {from:?} to a user name that is not UTF-8"),
            ),
        });
    };
    match check_db_user(rules, identity, user) {
        Ok(()) => Ok(user.to_owned()),
        Err((who, refused)) => Err(Refusal {
            reply: err_packet(
                1,
                ServerError::ACCESS_DENIED,
                &format!("Access denied: {who} may not log in as database user '{user}'"),
            ),
            refused: Refused::new(
                refused.reason,
                format!(
                    "COM_CHANGE_USER from {from:?} to {user:?}: {}",
                    refused.detail
                ),
            ),
        }),
    }
}

/// The server's greeting as a client-mode application gets it: with
/// CLIENT_SSL cleared, as the application's leg stays plaintext. Packet 0.
pub(crate) fn greeting_for_application(greeting: &HandshakeV10) -> Result<Vec<u8>, WireError> {
    let mut greeting = greeting.clone();
    greeting.set_tls_offered(false);
    encode_packet(0, &greeting.encode()?)
}

/// Decides on a server-mode client's first packet, its answer to the
/// greeting: only an SSLRequest goes on, to the TLS handshake.
pub(crate) fn first_packet(seq: u8, payload: &[u8]) -> Result<(), Refusal> {
    match parse_client_handshake(payload) {
        Ok(ClientHandshake::SslRequest(_)) => Ok(()),
        Ok(ClientHandshake::Response(response)) => Err(Refusal {
            reply: err_packet(
                seq.wrapping_add(1),
                ServerError::SECURE_TRANSPORT_REQUIRED,
                "Connections using insecure transport are prohibited: this server requires TLS with a client certificate (mariadb: --ssl-verify-server-cert --ssl-ca --ssl-cert --ssl-key)",
            ),
            refused: Refused::new(
                RefusalReason::PlaintextRefused,
                format!(
                    "HandshakeResponse without TLS (user {:?})",
                    response.user_utf8().unwrap_or("?")
                ),
            )
            .for_login(
                response.user_utf8().ok(),
                response.database_utf8().ok().flatten(),
            ),
        }),
        Err(e) => Err(bad_handshake(seq, format!("client handshake: {e}"))),
    }
}

/// A HandshakeResponse, with the names it logs in with.
#[derive(Debug)]
pub(crate) struct Login {
    pub(crate) response: HandshakeResponse41,
    /// Its sequence id, as the peer numbered it.
    pub(crate) seq: u8,
    /// The user name as logs and the audit record show it: invalid UTF-8
    /// replaced (`authorize` judges the bytes themselves).
    pub(crate) user: String,
    /// `""` when the response names no database.
    pub(crate) database: String,
}

impl Login {
    fn of(response: HandshakeResponse41, seq: u8) -> Self {
        let user = String::from_utf8_lossy(&response.user).into_owned();
        let database = response
            .database
            .as_deref()
            .map(|d| String::from_utf8_lossy(d).into_owned())
            .unwrap_or_default();
        Login {
            response,
            seq,
            user,
            database,
        }
    }

    /// The database for the audit record, if one was named.
    pub(crate) fn database(&self) -> Option<&str> {
        Some(self.database.as_str()).filter(|d| !d.is_empty())
    }
}

/// Reads the HandshakeResponse a server-mode client sent inside TLS. It
/// still carries CLIENT_SSL, so it is parsed as a response, not classified
/// like the first packet.
pub(crate) fn login_inside_tls(seq: u8, payload: &[u8]) -> Result<Login, Refusal> {
    HandshakeResponse41::parse(payload)
        .map(|response| Login::of(response, seq))
        .map_err(|e| bad_handshake(seq, format!("HandshakeResponse inside TLS: {e}")))
}

/// Checks that `identity` may log in as the login's user under `rules`;
/// the refusal carries the ERR 1045 the client sees.
pub(crate) fn authorize(
    rules: &DbUserRules,
    identity: Option<&ClientIdentity>,
    login: &Login,
) -> Result<(), Refusal> {
    let user = &login.user;
    let checked = match login.response.user_utf8() {
        Ok(name) => check_db_user(rules, identity, name),
        // db_users rules are text and cannot name a user that is not
        // UTF-8. Judged by a stand-in (the empty name, or the name with
        // invalid bytes replaced), a rule for the stand-in would admit
        // every name the server tells apart from it, so with rules in
        // force such a name is refused.
        Err(_) if rules.is_empty() => Ok(()),
        Err(_) => Err((
            refused_party(identity),
            Refused::new(
                RefusalReason::UserDenied,
                format!("database user {user:?} is not UTF-8, so db_users cannot permit it"),
            ),
        )),
    };
    let (who, refused) = match checked {
        Ok(()) => return Ok(()),
        Err(refusal) => refusal,
    };
    Err(Refusal {
        reply: err_packet(
            login.seq.wrapping_add(1),
            ServerError::ACCESS_DENIED,
            &format!("Access denied: {who} may not log in as database user '{user}'"),
        ),
        refused,
    })
}

/// The ERR 1040 that answers packet `seq` of a client beyond the
/// listener's `max_connections`.
pub(crate) fn too_many_connections(seq: u8) -> Vec<u8> {
    err_packet(
        seq,
        ServerError::TOO_MANY_CONNECTIONS,
        "Too many connections",
    )
}

/// Decides on a client-mode application's first packet: a plaintext
/// HandshakeResponse goes on; an SSLRequest cannot, as the greeting it got
/// offered no TLS.
pub(crate) fn application_login(seq: u8, payload: &[u8]) -> Result<Login, Refusal> {
    match parse_client_handshake(payload) {
        Ok(ClientHandshake::Response(response)) => Ok(Login::of(response, seq)),
        Ok(ClientHandshake::SslRequest(_)) => Err(Refusal {
            reply: err_packet(
                seq.wrapping_add(1),
                ServerError::BAD_HANDSHAKE,
                "This proxy port takes plaintext from local applications (intransit client mode) and encrypts the connection to the database itself; connect without TLS (mariadb: --skip-ssl, mysql: --ssl-mode=DISABLED)",
            ),
            refused: Refused::new(
                RefusalReason::Malformed,
                "the application sent an SSLRequest although the greeting offered no TLS; a client-mode listener accepts plaintext only",
            ),
        }),
        Err(e) => Err(bad_handshake(seq, format!("application handshake: {e}"))),
    }
}

/// How sequence ids differ between the peer's leg and the database's:
/// `peer = upstream + offset`, wrapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Renumbering {
    offset: u8,
}

impl Renumbering {
    /// Client mode: the proxy's SSLRequest upstream takes the place of the
    /// application's response, so the application counts one fewer.
    pub(crate) const CLIENT_MODE: Renumbering = Renumbering { offset: u8::MAX };

    /// The renumbering that makes the peer's packet `peer_seq` and the
    /// server's packet `upstream_seq` the same packet.
    pub(crate) fn aligning(peer_seq: u8, upstream_seq: u8) -> Renumbering {
        Renumbering {
            offset: peer_seq.wrapping_sub(upstream_seq),
        }
    }

    /// A server packet's sequence id as the peer numbers it.
    pub(crate) fn to_peer(self, upstream_seq: u8) -> u8 {
        upstream_seq.wrapping_add(self.offset)
    }

    /// A peer packet's sequence id as the server numbers it.
    pub(crate) fn to_upstream(self, peer_seq: u8) -> u8 {
        peer_seq.wrapping_sub(self.offset)
    }

    /// The login's HandshakeResponse as the server gets it: CLIENT_SSL set
    /// exactly when the upstream leg is TLS, and renumbered.
    pub(crate) fn response_for_upstream(
        self,
        login: &Login,
        upstream_tls: bool,
    ) -> Result<Vec<u8>, WireError> {
        let mut response = login.response.clone();
        if upstream_tls {
            response.capabilities |= CLIENT_SSL;
        } else {
            response.clear_ssl();
        }
        encode_packet(self.to_upstream(login.seq), &response.encode()?)
    }
}

/// A server packet during the authentication exchange, as the peer gets
/// it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Relayed {
    pub(crate) packet: Vec<u8>,
    /// The sequence id, in the peer's numbering, this packet took.
    pub(crate) seq: u8,
    /// The server ended the exchange with OK or ERR: from now on bytes
    /// are copied untouched.
    pub(crate) done: bool,
    /// The server ended it with ERR: the login was refused, for this
    /// reason. The peer gets the ERR as the server sent it.
    pub(crate) refused: Option<String>,
}

/// Renumbers one packet the server sent during the authentication
/// exchange and says whether it ends it, and how.
pub(crate) fn relay_from_server(
    renumbering: Renumbering,
    upstream_seq: u8,
    payload: &[u8],
) -> Result<Relayed, WireError> {
    let (done, refused) = match parse_server_auth_reply(payload) {
        Ok(ServerAuthReply::Ok(_)) => (true, None),
        Ok(ServerAuthReply::Err(err)) => {
            (true, Some(format!("the server refused the login: {err}")))
        }
        _ => (false, None),
    };
    let seq = renumbering.to_peer(upstream_seq);
    Ok(Relayed {
        packet: encode_packet(seq, payload)?,
        seq,
        done,
        refused,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use intransit_policy::{DbUserRule, IdentityPattern};
    use intransit_wire::mysql::captured::{self, bytes};
    use intransit_wire::mysql::{parse_packet, ErrPacket};

    /// The sequence id and payload of a captured packet.
    fn packet_of(capture: &str) -> (u8, Vec<u8>) {
        let data = bytes(capture);
        let (packet, used) = parse_packet(&data).unwrap().unwrap();
        assert_eq!(used, data.len());
        (packet.sequence_id, packet.payload.to_vec())
    }

    /// The sequence id and ERR of a reply the proxy built.
    fn err(reply: &[u8]) -> (u8, ErrPacket) {
        let (packet, used) = parse_packet(reply).unwrap().unwrap();
        assert_eq!(used, reply.len());
        (
            packet.sequence_id,
            ErrPacket::parse(packet.payload).unwrap(),
        )
    }

    /// The captured native-password response as a TLS client sends it:
    /// CLIENT_SSL set, packet 2 (after its SSLRequest, packet 1).
    fn response_inside_tls() -> (u8, Vec<u8>) {
        let (_, payload) = packet_of(captured::MARIADB_RESPONSE_NATIVE_DB);
        let mut response = HandshakeResponse41::parse(&payload).unwrap();
        response.capabilities |= CLIENT_SSL;
        (2, response.encode().unwrap())
    }

    /// db_users judges the name the server receives. A user name that is
    /// not UTF-8 used to be judged as the empty name, so a rule naming the
    /// empty (anonymous) user admitted every such name.
    #[test]
    fn a_user_name_that_is_not_utf8_is_refused_when_db_users_has_rules() {
        let (seq, payload) = response_inside_tls();
        let mut response = HandshakeResponse41::parse(&payload).unwrap();
        response.user = b"adm\xffin".to_vec();
        let login = login_inside_tls(seq, &response.encode().unwrap()).unwrap();
        assert_eq!(login.user, "adm\u{fffd}in");
        let reporting = ClientIdentity {
            common_name: Some("reporting".into()),
            dns_names: Vec::new(),
            uris: Vec::new(),
            spki_pin: String::new(),
        };
        for users in [vec![String::new()], vec!["*".to_owned()]] {
            let rules = DbUserRules::new(vec![DbUserRule::Listed {
                identity: IdentityPattern::parse("cn:reporting").unwrap(),
                users,
            }]);
            let refusal = authorize(&rules, Some(&reporting), &login).unwrap_err();
            assert_eq!(refusal.refused.reason, RefusalReason::UserDenied);
            assert!(refusal.refused.detail.contains("not UTF-8"));
            let (reply_seq, error) = err(&refusal.reply);
            assert_eq!(reply_seq, seq + 1);
            assert_eq!(error.code, ServerError::ACCESS_DENIED.code);
        }
        // Without rules db_users is not enforced, and the database decides.
        assert!(authorize(&DbUserRules::default(), Some(&reporting), &login).is_ok());
    }

    #[test]
    fn the_proxy_greets_with_nothing_of_the_server() {
        let scramble = *b"abcdefghijklmnopqrst";
        let packet = proxy_greeting("8.0.0-intransit", &scramble).unwrap();
        let (p, used) = parse_packet(&packet).unwrap().unwrap();
        assert_eq!((p.sequence_id, used), (0, packet.len()));
        let greeting = HandshakeV10::parse(p.payload).unwrap();
        assert!(greeting.offers_tls());
        assert_eq!(greeting.server_version_lossy(), "8.0.0-intransit");
        assert_eq!(greeting.connection_id, 0);
        assert_eq!(greeting.scramble(), scramble);
        assert_eq!(greeting.capabilities, GREETING_CAPABILITIES);
        assert_eq!(greeting.mariadb_capabilities(), None);
        assert_eq!(
            greeting.auth_plugin_name.as_deref(),
            Some(MYSQL_NATIVE_PASSWORD.as_bytes())
        );
        // The captured MariaDB greeting shares nothing with it but the
        // protocol.
        let (_, real) = packet_of(captured::MARIADB_GREETING);
        let real = HandshakeV10::parse(&real).unwrap();
        assert!(!packet
            .windows(real.server_version.len())
            .any(|w| w == real.server_version.as_slice()));
    }

    #[test]
    fn client_mode_applications_get_the_servers_greeting_without_tls() {
        let (_, payload) = packet_of(captured::MARIADB_GREETING);
        let greeting = HandshakeV10::parse(&payload).unwrap();
        let plain = greeting_for_application(&greeting).unwrap();
        let (p, _) = parse_packet(&plain).unwrap().unwrap();
        let cleared = HandshakeV10::parse(p.payload).unwrap();
        assert!(!cleared.offers_tls());
        assert_eq!(cleared.scramble(), greeting.scramble());
        assert_eq!(
            cleared.server_version_lossy(),
            greeting.server_version_lossy()
        );
    }

    #[test]
    fn only_an_ssl_request_answers_the_greeting_in_server_mode() {
        let (seq, payload) = packet_of(captured::MARIADB_SSL_REQUEST);
        assert!(first_packet(seq, &payload).is_ok());

        let (seq, payload) = packet_of(captured::MARIADB_RESPONSE_NATIVE_DB);
        let refusal = first_packet(seq, &payload).unwrap_err();
        assert_eq!(refusal.refused.reason, RefusalReason::PlaintextRefused);
        assert!(refusal.refused.detail.contains("\"nat\""));
        let login = refusal.refused.login.as_deref().expect("login names");
        assert_eq!(login.user.as_deref(), Some("nat"));
        let (reply_seq, error) = err(&refusal.reply);
        assert_eq!(reply_seq, seq + 1);
        assert_eq!(error.code, ServerError::SECURE_TRANSPORT_REQUIRED.code);

        let refusal = first_packet(1, b"\x03garbage").unwrap_err();
        assert_eq!(refusal.refused.reason, RefusalReason::Malformed);
        assert_eq!(err(&refusal.reply).1.code, ServerError::BAD_HANDSHAKE.code);
    }

    #[test]
    fn the_login_inside_tls_is_checked_against_db_users() {
        let (seq, payload) = response_inside_tls();
        let login = login_inside_tls(seq, &payload).unwrap();
        assert_eq!(
            (login.user.as_str(), login.database()),
            ("nat", Some("shop"))
        );
        let rules = DbUserRules::new(vec![DbUserRule::Listed {
            identity: IdentityPattern::parse("cn:reporting").unwrap(),
            users: vec!["nat".into()],
        }]);
        let named = |cn: &str| ClientIdentity {
            common_name: Some(cn.into()),
            dns_names: Vec::new(),
            uris: Vec::new(),
            spki_pin: String::new(),
        };
        assert!(authorize(&rules, Some(&named("reporting")), &login).is_ok());
        let refusal = authorize(&rules, Some(&named("batch")), &login).unwrap_err();
        assert_eq!(refusal.refused.reason, RefusalReason::UserDenied);
        let (reply_seq, error) = err(&refusal.reply);
        assert_eq!(reply_seq, 3);
        assert_eq!(error.code, ServerError::ACCESS_DENIED.code);
        assert!(error.message_lossy().contains("'nat'"));

        let (_, no_db) = packet_of(captured::MARIADB_RESPONSE_NATIVE_NO_DB);
        assert_eq!(login_inside_tls(2, &no_db).unwrap().database(), None);
        let refusal = login_inside_tls(2, b"\x01").unwrap_err();
        assert_eq!(err(&refusal.reply).0, 3);
    }

    #[test]
    fn a_verified_clients_login_goes_on_without_an_answer_to_the_proxys_scramble() {
        let (seq, payload) = response_inside_tls();
        let login = login_inside_tls(seq, &payload).unwrap();
        let (_, greeting) = packet_of(captured::MARIADB_GREETING);
        let server = HandshakeV10::parse(&greeting).unwrap();
        let plan = plan_server_login(&login, &server).unwrap();

        // Over plaintext the server gets packet 1 naming no real plugin
        // and carrying no auth response, without CLIENT_SSL or MariaDB
        // extended capabilities: it answers with its own challenge.
        let forwarded = plan.response(false, 1).unwrap();
        let (p, _) = parse_packet(&forwarded).unwrap().unwrap();
        assert_eq!(p.sequence_id, 1);
        let response = HandshakeResponse41::parse(p.payload).unwrap();
        assert!(response.auth_response.is_empty());
        assert_eq!(
            response.auth_plugin_name.as_deref(),
            Some(PLACEHOLDER_PLUGIN.as_bytes())
        );
        assert_eq!(response.user, b"nat");
        assert_eq!(response.database.as_deref(), Some(&b"shop"[..]));
        assert_eq!(response.capabilities & CLIENT_SSL, 0);
        assert_eq!(
            response.capabilities & !(GREETING_CAPABILITIES & server.capabilities),
            0
        );
        assert_eq!(response.extended_capabilities, 0);
        // Over TLS, packet 2 after the proxy's SSLRequest, CLIENT_SSL set.
        let over_tls = plan.response(true, 2).unwrap();
        let (p, _) = parse_packet(&over_tls).unwrap().unwrap();
        assert_eq!(p.sequence_id, 2);
        let response = HandshakeResponse41::parse(p.payload).unwrap();
        assert_ne!(response.capabilities & CLIENT_SSL, 0);
    }

    #[test]
    fn servers_and_clients_that_cannot_switch_or_keep_the_format_are_refused() {
        let (seq, payload) = response_inside_tls();
        let (_, greeting) = packet_of(captured::MARIADB_GREETING);
        let server = HandshakeV10::parse(&greeting).unwrap();

        let mut old = server.clone();
        old.capabilities &= !CLIENT_DEPRECATE_EOF;
        let mut client = login_inside_tls(seq, &payload).unwrap();
        client.response.capabilities |= CLIENT_DEPRECATE_EOF;
        let refusal = plan_server_login(&client, &old).unwrap_err();
        assert_eq!(refusal.refused.reason, RefusalReason::UpstreamUnavailable);
        let (reply_seq, error) = err(&refusal.reply);
        assert_eq!((reply_seq, error.code), (3, 1105));

        let mut no_plugins = login_inside_tls(seq, &payload).unwrap();
        no_plugins.response.capabilities &= !CLIENT_PLUGIN_AUTH;
        let refusal = plan_server_login(&no_plugins, &server).unwrap_err();
        assert_eq!(refusal.refused.reason, RefusalReason::Malformed);
        assert_eq!(err(&refusal.reply).1.code, ServerError::BAD_HANDSHAKE.code);
    }

    #[test]
    fn change_user_is_held_to_the_same_rules_as_the_login() {
        let rules = DbUserRules::new(vec![DbUserRule::Listed {
            identity: IdentityPattern::parse("cn:reporting").unwrap(),
            users: vec!["alice".into()],
        }]);
        let reporting = ClientIdentity {
            common_name: Some("reporting".into()),
            dns_names: Vec::new(),
            uris: Vec::new(),
            spki_pin: String::new(),
        };
        let to = |user: &[u8]| ChangeUser {
            user: user.to_vec(),
            auth_response: Vec::new(),
            database: Vec::new(),
            collation: None,
            auth_plugin_name: None,
            connect_attrs: None,
            trailing: Vec::new(),
        };
        let allowed = authorize_change_user(&rules, Some(&reporting), "alice", &to(b"alice"));
        assert_eq!(allowed.unwrap(), "alice");
        let refusal =
            authorize_change_user(&rules, Some(&reporting), "alice", &to(b"admin")).unwrap_err();
        assert_eq!(refusal.refused.reason, RefusalReason::UserDenied);
        let detail = &refusal.refused.detail;
        assert!(detail.contains("\"alice\" to \"admin\""), "{detail}");
        let (reply_seq, error) = err(&refusal.reply);
        assert_eq!(
            (reply_seq, error.code),
            (1, ServerError::ACCESS_DENIED.code)
        );
        assert!(error.message_lossy().contains("'admin'"));
        let refusal = authorize_change_user(&rules, Some(&reporting), "alice", &to(b"\xffadmin"))
            .unwrap_err();
        assert_eq!(refusal.refused.reason, RefusalReason::UserDenied);
    }

    #[test]
    fn an_ed25519_exchange_is_renumbered_both_ways_until_the_ok() {
        // Captured without TLS: response 1, switch 2, signature 3, OK 4.
        // A TLS client's response is its packet 2, and over a plaintext
        // upstream the server's packet 1.
        let r = Renumbering::aligning(2, 1);
        let (switch_seq, switch) = packet_of(captured::MARIADB_AUTH_SWITCH_ED25519);
        let relayed = relay_from_server(r, switch_seq, &switch).unwrap();
        assert_eq!((relayed.seq, relayed.done), (3, false));
        assert_eq!(&relayed.packet[4..], switch.as_slice());
        let (signature_seq, _) = packet_of(captured::MARIADB_ED25519_SIGNATURE);
        assert_eq!(r.to_upstream(relayed.seq + 1), signature_seq);
        let (ok_seq, ok) = packet_of(captured::MARIADB_OK_ED25519);
        let relayed = relay_from_server(r, ok_seq, &ok).unwrap();
        assert_eq!((relayed.seq, relayed.done), (5, true));
        assert_eq!(relayed.refused, None);
        let (err_seq, denied) = packet_of(captured::MARIADB_ERR_ACCESS_DENIED);
        let relayed = relay_from_server(r, err_seq, &denied).unwrap();
        assert!(relayed.done);
        assert_eq!(&relayed.packet[4..], denied.as_slice());
        let refused = relayed.refused.expect("an ERR refuses the login");
        assert!(
            refused.starts_with("the server refused the login: ERROR 1045 (28000): Access denied"),
            "{refused}"
        );
    }

    #[test]
    fn client_mode_forwards_a_plaintext_login_with_client_ssl_one_ahead() {
        let (seq, payload) = packet_of(captured::MARIADB_RESPONSE_NATIVE_DB);
        let login = application_login(seq, &payload).unwrap();
        let r = Renumbering::CLIENT_MODE;
        let forwarded = r.response_for_upstream(&login, true).unwrap();
        let (p, _) = parse_packet(&forwarded).unwrap().unwrap();
        assert_eq!(p.sequence_id, 2);
        let response = HandshakeResponse41::parse(p.payload).unwrap();
        assert_ne!(response.capabilities & CLIENT_SSL, 0);
        // The server's OK, packet 4 of its count, is 3 for the application.
        assert_eq!(r.to_peer(4), 3);
        assert_eq!(r.to_peer(0), u8::MAX, "sequence ids wrap");

        let (seq, ssl) = packet_of(captured::MARIADB_SSL_REQUEST);
        let refusal = application_login(seq, &ssl).unwrap_err();
        assert_eq!(refusal.refused.reason, RefusalReason::Malformed);
        let (reply_seq, error) = err(&refusal.reply);
        assert_eq!(reply_seq, seq + 1);
        assert!(error.message_lossy().contains("--skip-ssl"));
    }
}
