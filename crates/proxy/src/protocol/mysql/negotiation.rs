//! The decisions of MySQL negotiation, without I/O: given this packet in
//! this state, what the proxy sends and where the connection goes next,
//! and how sequence ids are renumbered between the two legs. The drivers
//! in `server_mode`, `client_mode` and `relay` read the packets, act on
//! these answers and do the socket work.

use intransit_policy::{ClientIdentity, DbUserRules};
use intransit_wire::mysql::{
    encode_packet, parse_client_handshake, parse_server_auth_reply, ClientHandshake,
    HandshakeResponse41, HandshakeV10, ServerAuthReply, ServerError, CLIENT_SSL,
};
use intransit_wire::WireError;

use super::packets::err_packet;
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

/// The server's greeting as the peer gets it: with CLIENT_SSL set in
/// server mode (the proxy takes TLS), cleared in client mode (the
/// application's leg stays plaintext). Packet 0.
pub(crate) fn greeting_for_peer(
    greeting: &HandshakeV10,
    offer_tls: bool,
) -> Result<Vec<u8>, WireError> {
    let mut greeting = greeting.clone();
    greeting.set_tls_offered(offer_tls);
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
    /// Server mode, plaintext upstream: the server never sees the
    /// client's SSLRequest, so it counts one packet fewer.
    pub(crate) const PLAINTEXT_UPSTREAM: Renumbering = Renumbering { offset: 1 };
    /// Server mode, TLS upstream: the proxy sends its own SSLRequest as
    /// packet 1, so both legs count alike.
    pub(crate) const TLS_UPSTREAM: Renumbering = Renumbering { offset: 0 };
    /// Client mode: the proxy's SSLRequest upstream takes the place of the
    /// application's response, so the application counts one fewer.
    pub(crate) const CLIENT_MODE: Renumbering = Renumbering { offset: u8::MAX };

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
}

/// Renumbers one packet the server sent during the authentication
/// exchange and says whether it ends it.
pub(crate) fn relay_from_server(
    renumbering: Renumbering,
    upstream_seq: u8,
    payload: &[u8],
) -> Result<Relayed, WireError> {
    let done = matches!(
        parse_server_auth_reply(payload),
        Ok(ServerAuthReply::Ok(_) | ServerAuthReply::Err(_))
    );
    let seq = renumbering.to_peer(upstream_seq);
    Ok(Relayed {
        packet: encode_packet(seq, payload)?,
        seq,
        done,
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
    fn packet(capture: &str) -> (u8, Vec<u8>) {
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
        let (_, payload) = packet(captured::MARIADB_RESPONSE_NATIVE_DB);
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
    fn the_greeting_offers_tls_in_server_mode_and_not_in_client_mode() {
        let (seq, payload) = packet(captured::MARIADB_GREETING);
        assert_eq!(seq, 0);
        let greeting = HandshakeV10::parse(&payload).unwrap();
        assert!(greeting.offers_tls());
        // Server mode: the captured greeting already offers TLS and goes
        // out byte for byte.
        assert_eq!(
            greeting_for_peer(&greeting, true).unwrap(),
            bytes(captured::MARIADB_GREETING)
        );
        let plain = greeting_for_peer(&greeting, false).unwrap();
        let (_, plain_payload) = {
            let (p, _) = parse_packet(&plain).unwrap().unwrap();
            (p.sequence_id, p.payload.to_vec())
        };
        let cleared = HandshakeV10::parse(&plain_payload).unwrap();
        assert!(!cleared.offers_tls());
        assert_eq!(cleared.scramble(), greeting.scramble());
        assert_eq!(
            cleared.server_version_lossy(),
            greeting.server_version_lossy()
        );
    }

    #[test]
    fn only_an_ssl_request_answers_the_greeting_in_server_mode() {
        let (seq, payload) = packet(captured::MARIADB_SSL_REQUEST);
        assert!(first_packet(seq, &payload).is_ok());

        let (seq, payload) = packet(captured::MARIADB_RESPONSE_NATIVE_DB);
        let refusal = first_packet(seq, &payload).unwrap_err();
        assert_eq!(refusal.refused.reason, RefusalReason::PlaintextRefused);
        assert!(refusal.refused.detail.contains("\"nat\""));
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

        let (_, no_db) = packet(captured::MARIADB_RESPONSE_NATIVE_NO_DB);
        assert_eq!(login_inside_tls(2, &no_db).unwrap().database(), None);
        let refusal = login_inside_tls(2, b"\x01").unwrap_err();
        assert_eq!(err(&refusal.reply).0, 3);
    }

    #[test]
    fn a_plaintext_upstream_gets_the_response_as_a_plaintext_client_would_send_it() {
        let (seq, payload) = response_inside_tls();
        let login = login_inside_tls(seq, &payload).unwrap();
        // Cleared of CLIENT_SSL and renumbered 2 -> 1, the response is
        // exactly what the mariadb client sent without TLS.
        let forwarded = Renumbering::PLAINTEXT_UPSTREAM
            .response_for_upstream(&login, false)
            .unwrap();
        assert_eq!(forwarded, bytes(captured::MARIADB_RESPONSE_NATIVE_DB));
        // Over TLS it keeps CLIENT_SSL and its number.
        let over_tls = Renumbering::TLS_UPSTREAM
            .response_for_upstream(&login, true)
            .unwrap();
        let (p, _) = parse_packet(&over_tls).unwrap().unwrap();
        assert_eq!(p.sequence_id, 2);
        assert_eq!(p.payload, payload.as_slice());
    }

    #[test]
    fn an_ed25519_exchange_is_renumbered_both_ways_until_the_ok() {
        // Captured without TLS: switch 2, signature 3, OK 4. Through a TLS
        // client and a plaintext upstream the client counts one more.
        let r = Renumbering::PLAINTEXT_UPSTREAM;
        let (switch_seq, switch) = packet(captured::MARIADB_AUTH_SWITCH_ED25519);
        let relayed = relay_from_server(r, switch_seq, &switch).unwrap();
        assert_eq!((relayed.seq, relayed.done), (3, false));
        assert_eq!(&relayed.packet[4..], switch.as_slice());
        let (signature_seq, _) = packet(captured::MARIADB_ED25519_SIGNATURE);
        assert_eq!(r.to_upstream(relayed.seq + 1), signature_seq);
        let (ok_seq, ok) = packet(captured::MARIADB_OK_ED25519);
        let relayed = relay_from_server(r, ok_seq, &ok).unwrap();
        assert_eq!((relayed.seq, relayed.done), (5, true));
        let (err_seq, denied) = packet(captured::MARIADB_ERR_ACCESS_DENIED);
        assert!(relay_from_server(r, err_seq, &denied).unwrap().done);
    }

    #[test]
    fn client_mode_forwards_a_plaintext_login_with_client_ssl_one_ahead() {
        let (seq, payload) = packet(captured::MARIADB_RESPONSE_NATIVE_DB);
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

        let (seq, ssl) = packet(captured::MARIADB_SSL_REQUEST);
        let refusal = application_login(seq, &ssl).unwrap_err();
        assert_eq!(refusal.refused.reason, RefusalReason::Malformed);
        let (reply_seq, error) = err(&refusal.reply);
        assert_eq!(reply_seq, seq + 1);
        assert!(error.message_lossy().contains("--skip-ssl"));
    }
}
