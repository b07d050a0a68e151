//! Entry points for the cargo-fuzz targets `pg_negotiation` and
//! `mysql_negotiation` in `fuzz/`: the negotiation decisions a client
//! reaches before anything else, over arbitrary bytes;
//! `pg_pool_decisions`: what a PostgreSQL pool decides from a pooled
//! client's conversation and parameters; and `pki_trust_material`: a
//! route's client CA and CRL files loaded as the proxy loads them at
//! start and on every reload.
//!
//! Each function drives the pure decisions of `protocol::*::negotiation`
//! and `protocol::postgres::pool::tracking` the way the drivers do and
//! asserts what must hold for any input: no panic; an SSLRequest
//! followed by bytes is refused without a reply; a StartupMessage or
//! HandshakeResponse in plaintext never goes on in server mode; every
//! reply the proxy writes is one well-formed message of its protocol;
//! `db_users` decides on exactly the user name that is forwarded;
//! sequence ids renumber both ways; a pooled server connection changes
//! hands only when everything sent to it is answered; the statement that
//! restores a client's parameters cannot be escaped by their values. A
//! failed assertion here is a bug in the crate. It is not part of the
//! crate's API (hidden from the documentation); the unit tests run these
//! functions over captured messages, so they are exercised on stable
//! Rust too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use intransit_config::{ClientAuth, ServerTls, StaleCrl, TlsVersion};
use intransit_policy::{AllowList, ClientIdentity, DbUserRule, DbUserRules, IdentityPattern};
use intransit_wire::mysql::{
    self, parse_client_handshake, parse_packet, parse_server_auth_reply, ClientHandshake,
    ErrPacket, HandshakeResponse41, HandshakeV10, ServerAuthReply, ServerError, CLIENT_SSL,
};
use intransit_wire::pg::session::{backend, frontend, TransactionStatus};
use intransit_wire::pg::{self, InitialMessage, SqlState};

use crate::error::ProxyError;
use crate::protocol::mysql::negotiation as my;
use crate::protocol::postgres::negotiation as pgn;
use crate::protocol::postgres::pool::tracking::{
    has_listen, is_listen, listen_in_any_statement, ClientMessage, Exchange, Parameters, RESTORED,
};
use crate::refusal::RefusalReason;
use crate::tls::listener::{client_verifier, crypto_provider, ClientTrust};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;

/// Drives PostgreSQL negotiation over `data` as the bytes a client sends:
/// server mode before TLS (for each `client_auth`), the first message
/// inside TLS with the `db_users` check, and client mode.
pub fn pg_negotiation(data: &[u8]) {
    for client_auth in [ClientAuth::Required, ClientAuth::Optional, ClientAuth::None] {
        pg_before_tls(data, client_auth);
    }
    if let Ok(Some((message, _))) = pg::parse_initial_message(data) {
        pg_inside_tls(message);
    }
    pg_from_application(data);
}

/// The messages of one plaintext connection, decided in turn as the
/// server-mode driver does until one ends the plaintext phase.
fn pg_before_tls(data: &[u8], client_auth: ClientAuth) {
    let mut rest = data;
    let mut gssenc_answered = false;
    while let Ok(Some((message, used))) = pg::parse_initial_message(rest) {
        let after = rest.get(used..).unwrap_or_default();
        match pgn::before_tls(message.clone(), after.len(), gssenc_answered, client_auth) {
            pgn::BeforeTls::RefuseGssEnc => {
                assert_eq!(message, InitialMessage::GssEncRequest);
                assert!(!gssenc_answered, "a second GSSENCRequest answered");
                gssenc_answered = true;
                rest = after;
            }
            pgn::BeforeTls::AcceptSsl => {
                assert_eq!(message, InitialMessage::SslRequest);
                assert!(after.is_empty(), "TLS accepted with bytes pipelined");
                return;
            }
            pgn::BeforeTls::DirectTls => {
                assert_eq!(message, InitialMessage::DirectTls);
                return;
            }
            pgn::BeforeTls::Cancel(cancel) => {
                assert_eq!(message, InitialMessage::Cancel(cancel));
                return;
            }
            pgn::BeforeTls::Refuse(refusal) => {
                match message {
                    // Nothing said in plaintext would be authenticated.
                    InitialMessage::SslRequest => {
                        assert!(!after.is_empty());
                        assert_eq!(refusal.refused.reason, RefusalReason::PipelinedBeforeTls);
                        assert!(refusal.reply.is_empty());
                    }
                    InitialMessage::GssEncRequest => {
                        assert!(gssenc_answered);
                        assert!(refusal.reply.is_empty());
                    }
                    InitialMessage::Startup(_) => {
                        assert_eq!(refusal.refused.reason, RefusalReason::PlaintextRefused);
                        one_fatal(
                            &refusal.reply,
                            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                        );
                    }
                    other => panic!("{other:?} refused before TLS"),
                }
                return;
            }
        }
    }
}

/// The first message inside TLS, and the `db_users` check on a
/// StartupMessage.
fn pg_inside_tls(message: InitialMessage) {
    match pgn::inside_tls(message.clone()) {
        pgn::InsideTls::Startup(startup) => {
            assert_eq!(message, InitialMessage::Startup(startup.clone()));
            let user = startup.user().unwrap_or_default();
            for (rules, identity, expected) in rule_cases(Some(user)) {
                match pgn::authorize(&rules, identity.as_ref(), &startup) {
                    Ok(()) => assert!(expected, "user {user:?} permitted"),
                    Err(refusal) => {
                        assert!(!expected, "user {user:?} refused");
                        assert_eq!(refusal.refused.reason, RefusalReason::UserDenied);
                        one_fatal(
                            &refusal.reply,
                            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                        );
                    }
                }
            }
        }
        pgn::InsideTls::Cancel(cancel) => assert_eq!(message, InitialMessage::Cancel(cancel)),
        pgn::InsideTls::Refuse(refusal) => {
            assert!(!matches!(
                message,
                InitialMessage::Startup(_) | InitialMessage::Cancel(_)
            ));
            assert_eq!(refusal.refused.reason, RefusalReason::Malformed);
            one_fatal(&refusal.reply, SqlState::PROTOCOL_VIOLATION);
        }
    }
}

/// A client-mode connection: `N` to each of SSLRequest and GSSENCRequest
/// once, then a StartupMessage or CancelRequest goes on.
fn pg_from_application(data: &[u8]) {
    let mut rest = data;
    let mut answered = pgn::Answered::default();
    while let Ok(Some((message, used))) = pg::parse_initial_message(rest) {
        let before = answered;
        match pgn::from_application(message.clone(), &mut answered) {
            pgn::FromApplication::Answer(byte) => {
                assert_eq!(byte, b'N');
                match message {
                    InitialMessage::SslRequest => assert!(!before.ssl && answered.ssl),
                    InitialMessage::GssEncRequest => assert!(!before.gssenc && answered.gssenc),
                    other => panic!("{other:?} answered with a byte"),
                }
                rest = rest.get(used..).unwrap_or_default();
            }
            pgn::FromApplication::Cancel(cancel) => {
                assert_eq!(message, InitialMessage::Cancel(cancel));
                return;
            }
            pgn::FromApplication::Startup(startup) => {
                assert_eq!(message, InitialMessage::Startup(startup));
                return;
            }
            pgn::FromApplication::Refuse(refused) => {
                assert_eq!(refused.reason, RefusalReason::Malformed);
                match message {
                    InitialMessage::SslRequest => assert!(before.ssl),
                    InitialMessage::GssEncRequest => assert!(before.gssenc),
                    InitialMessage::DirectTls => {}
                    other => panic!("{other:?} refused in client mode"),
                }
                return;
            }
        }
    }
}

/// Asserts that `reply` is exactly one FATAL ErrorResponse with `code`.
fn one_fatal(reply: &[u8], code: SqlState) {
    let Ok(Some((frame, used))) = pg::parse_backend_frame(reply) else {
        panic!("a reply that does not frame");
    };
    assert_eq!(used, reply.len(), "one message, nothing after it");
    assert_eq!(frame.tag, b'E');
    let Ok(fields) = pg::parse_error_response(frame.body) else {
        panic!("a reply that does not parse");
    };
    assert_eq!(fields.severity(), Some("FATAL"));
    assert_eq!(fields.code(), Some(code));
}

/// `db_users` rule sets, an identity, and whether `user` is permitted:
/// none configured (anyone), a listed rule for `cn:alice` (that also
/// names the empty user), and a `pg_ident`-like rule mapping a common
/// name to the same user. `None` is a user name that is not UTF-8, which
/// no rule can name.
fn rule_cases(user: Option<&str>) -> Vec<(DbUserRules, Option<ClientIdentity>, bool)> {
    let named = |cn: &str| ClientIdentity {
        common_name: Some(cn.to_owned()),
        dns_names: Vec::new(),
        uris: Vec::new(),
        spki_pin: String::new(),
    };
    let mut cases = vec![
        (DbUserRules::default(), None, true),
        (DbUserRules::default(), Some(named("mallory")), true),
    ];
    if let Ok(alice) = IdentityPattern::parse("cn:alice") {
        let listed = DbUserRules::new(vec![DbUserRule::Listed {
            identity: alice,
            users: vec!["alice".into(), String::new()],
        }]);
        let permitted = user.is_some_and(|u| u == "alice" || u.is_empty());
        cases.push((listed.clone(), Some(named("alice")), permitted));
        cases.push((listed.clone(), Some(named("mallory")), false));
        cases.push((listed, None, false));
    }
    if let Ok(mapped) = DbUserRule::regex("^cn:([a-z]+)$", "\\1") {
        let rules = DbUserRules::new(vec![mapped]);
        let plain =
            user.is_some_and(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_lowercase()));
        let same = named(user.unwrap_or("alice"));
        cases.push((rules.clone(), Some(same), plain));
        cases.push((rules, Some(named("mallory")), user == Some("mallory")));
    }
    cases
}

/// Drives MySQL negotiation over `data`: byte 0 is the packet's sequence
/// id, byte 1 picks the renumbering (and, bit 7, a TLS upstream), and the
/// rest is a packet payload, read as the client's first packet, as its
/// login inside TLS, as a client-mode application's login, as a server
/// packet relayed during authentication and as a greeting.
pub fn mysql_negotiation(data: &[u8]) {
    let [seq, choice, payload @ ..] = data else {
        return;
    };
    let (seq, choice) = (*seq, *choice);
    // Server mode's two legs (the server's response is its packet 1 over
    // plaintext, 2 after the proxy's SSLRequest) and client mode.
    let renumbering = [
        my::Renumbering::aligning(2, 1),
        my::Renumbering::aligning(2, 2),
        my::Renumbering::CLIENT_MODE,
    ][usize::from(choice & 0x7f) % 3];
    let upstream_tls = choice & 0x80 != 0;
    assert_eq!(renumbering.to_upstream(renumbering.to_peer(seq)), seq);
    assert_eq!(renumbering.to_peer(renumbering.to_upstream(seq)), seq);

    let classified = parse_client_handshake(payload);
    match my::first_packet(seq, payload) {
        Ok(()) => assert!(matches!(classified, Ok(ClientHandshake::SslRequest(_)))),
        Err(refusal) => {
            let plaintext_login = matches!(classified, Ok(ClientHandshake::Response(_)));
            assert_eq!(
                refusal.refused.reason == RefusalReason::PlaintextRefused,
                plaintext_login
            );
            let expected = if plaintext_login {
                ServerError::SECURE_TRANSPORT_REQUIRED
            } else {
                ServerError::BAD_HANDSHAKE
            };
            one_err(&refusal.reply, seq.wrapping_add(1), expected);
        }
    }

    match my::login_inside_tls(seq, payload) {
        Ok(login) => mysql_login(&login, seq, payload, renumbering, upstream_tls),
        Err(refusal) => {
            assert!(HandshakeResponse41::parse(payload).is_err());
            assert_eq!(refusal.refused.reason, RefusalReason::Malformed);
            one_err(
                &refusal.reply,
                seq.wrapping_add(1),
                ServerError::BAD_HANDSHAKE,
            );
        }
    }

    match my::application_login(seq, payload) {
        Ok(login) => {
            assert!(matches!(classified, Ok(ClientHandshake::Response(_))));
            mysql_login(&login, seq, payload, renumbering, upstream_tls);
        }
        Err(refusal) => {
            assert!(!matches!(classified, Ok(ClientHandshake::Response(_))));
            one_err(
                &refusal.reply,
                seq.wrapping_add(1),
                ServerError::BAD_HANDSHAKE,
            );
        }
    }

    if let Ok(relayed) = my::relay_from_server(renumbering, seq, payload) {
        assert_eq!(relayed.seq, renumbering.to_peer(seq));
        let Ok(Some((packet, used))) = parse_packet(&relayed.packet) else {
            panic!("a relayed packet that does not frame");
        };
        assert_eq!(used, relayed.packet.len());
        assert_eq!((packet.sequence_id, packet.payload), (relayed.seq, payload));
        assert_eq!(
            relayed.done,
            matches!(
                parse_server_auth_reply(payload),
                Ok(ServerAuthReply::Ok(_) | ServerAuthReply::Err(_))
            )
        );
    }

    if let Ok(greeting) = HandshakeV10::parse(payload) {
        let Ok(framed) = my::greeting_for_application(&greeting) else {
            panic!("a greeting that parsed does not encode");
        };
        let Ok(Some((packet, used))) = parse_packet(&framed) else {
            panic!("a greeting for the application that does not frame");
        };
        assert_eq!((used, packet.sequence_id), (framed.len(), 0));
        assert_eq!(packet.payload.len(), payload.len());
        let Ok(again) = HandshakeV10::parse(packet.payload) else {
            panic!("a greeting for the application that does not parse");
        };
        assert!(!again.offers_tls());
        assert_eq!(again.scramble(), greeting.scramble());
        assert_eq!(again.server_version, greeting.server_version);

        // The proxy's own greeting, with any printable version, parses
        // back with that version and nothing of this one's scramble.
        let version = String::from_utf8_lossy(&greeting.server_version)
            .chars()
            .filter(char::is_ascii_graphic)
            .take(60)
            .collect::<String>();
        let scramble = [b'x'; my::SCRAMBLE_LEN];
        let Ok(own) = my::proxy_greeting(&version, &scramble) else {
            panic!("the proxy's greeting does not encode for {version:?}");
        };
        let Ok(Some((packet, _))) = parse_packet(&own) else {
            panic!("the proxy's greeting does not frame");
        };
        let Ok(own) = HandshakeV10::parse(packet.payload) else {
            panic!("the proxy's greeting does not parse");
        };
        assert_eq!(own.server_version, version.as_bytes());
        assert_eq!(own.scramble(), scramble);
        assert!(own.offers_tls());
    }
}

/// A login read from `payload`: the names it carries, the `db_users`
/// check, and the response as the server gets it.
fn mysql_login(
    login: &my::Login,
    seq: u8,
    payload: &[u8],
    renumbering: my::Renumbering,
    upstream_tls: bool,
) {
    assert_eq!(login.seq, seq);
    assert_eq!(
        HandshakeResponse41::parse(payload).as_ref(),
        Ok(&login.response)
    );
    // db_users judges exactly the name the server receives.
    let name = std::str::from_utf8(&login.response.user).ok();
    for (rules, identity, expected) in rule_cases(name) {
        match my::authorize(&rules, identity.as_ref(), login) {
            Ok(()) => assert!(expected, "user {:?} permitted", login.user),
            Err(refusal) => {
                assert!(!expected, "user {:?} refused", login.user);
                assert_eq!(refusal.refused.reason, RefusalReason::UserDenied);
                one_err(
                    &refusal.reply,
                    seq.wrapping_add(1),
                    ServerError::ACCESS_DENIED,
                );
            }
        }
    }

    let Ok(forwarded) = renumbering.response_for_upstream(login, upstream_tls) else {
        panic!("a response that parsed does not encode");
    };
    let Ok(Some((packet, used))) = parse_packet(&forwarded) else {
        panic!("a forwarded response that does not frame");
    };
    assert_eq!(used, forwarded.len());
    assert_eq!(packet.sequence_id, renumbering.to_upstream(seq));
    assert_eq!(packet.payload.len(), payload.len());
    let Ok(mut upstream) = HandshakeResponse41::parse(packet.payload) else {
        panic!("a forwarded response that does not parse");
    };
    assert_eq!(upstream.capabilities & CLIENT_SSL != 0, upstream_tls);
    // Only CLIENT_SSL differs from what the client sent.
    upstream.capabilities =
        (upstream.capabilities & !CLIENT_SSL) | (login.response.capabilities & CLIENT_SSL);
    assert_eq!(upstream, login.response);

    // Server mode's login at the real server: the client's names, no
    // auth response, the placeholder plugin, only capabilities both
    // sides offered, and CLIENT_SSL exactly for a TLS upstream.
    let server = server_greeting();
    if let Ok(plan) = my::plan_server_login(login, &server) {
        let Ok(framed) = plan.response(upstream_tls, 2) else {
            panic!("a planned login that does not encode");
        };
        let Ok(Some((packet, _))) = parse_packet(&framed) else {
            panic!("a planned login that does not frame");
        };
        let Ok(sent) = HandshakeResponse41::parse(packet.payload) else {
            panic!("a planned login that does not parse");
        };
        assert_eq!(sent.user, login.response.user);
        assert!(sent.auth_response.is_empty());
        assert_eq!(
            sent.auth_plugin_name.as_deref(),
            Some(my::PLACEHOLDER_PLUGIN.as_bytes())
        );
        assert_eq!(sent.capabilities & CLIENT_SSL != 0, upstream_tls);
        assert_eq!(
            sent.capabilities & !CLIENT_SSL & !(my::GREETING_CAPABILITIES & server.capabilities),
            0
        );
        assert_eq!(sent.extended_capabilities, 0);
    }
}

/// A MariaDB greeting as a server sends it, for planning logins.
fn server_greeting() -> HandshakeV10 {
    let scramble = [b's'; my::SCRAMBLE_LEN];
    let Ok(framed) = my::proxy_greeting("5.5.5-10.11.6-MariaDB", &scramble) else {
        panic!("a fixed greeting does not encode");
    };
    let Ok(Some((packet, _))) = parse_packet(&framed) else {
        panic!("a fixed greeting does not frame");
    };
    let Ok(greeting) = HandshakeV10::parse(packet.payload) else {
        panic!("a fixed greeting does not parse");
    };
    greeting
}

/// Asserts that `reply` is exactly one ERR packet numbered `seq` with
/// `error`'s code and SQLSTATE.
fn one_err(reply: &[u8], seq: u8, error: ServerError) {
    let Ok(Some((packet, used))) = parse_packet(reply) else {
        panic!("a reply that does not frame");
    };
    assert_eq!(used, reply.len(), "one packet, nothing after it");
    assert_eq!(packet.sequence_id, seq);
    assert!(packet.payload.len() <= mysql::MAX_HANDSHAKE_PAYLOAD_LEN);
    let Ok(err) = ErrPacket::parse(packet.payload) else {
        panic!("a reply that is not an ERR packet");
    };
    assert_eq!(
        (err.code, err.sql_state),
        (error.code, Some(error.sql_state))
    );
}

/// Drives the pool's decisions over `data`, read three ways: as a
/// conversation for [`Exchange`] (each byte a client message's tag, except
/// `Z` and the byte after it, a ReadyForQuery and its status); as
/// NUL-separated names and values, the client's startup parameters until
/// an empty name and then what the server reported, for [`Parameters`];
/// and as the start of a Query for [`is_listen`].
pub fn pg_pool_decisions(data: &[u8]) {
    pool_exchange(data);
    pool_parameters(data);
    pool_listen(data);
}

/// An [`Exchange`] agrees at every step with a count of the Query, Sync
/// and FunctionCall messages not yet matched by a ReadyForQuery and
/// whether an extended-protocol message came after the last Sync: it is
/// answered exactly when nothing is due and no such message is waiting,
/// and at a transaction boundary exactly when, moreover, the latest
/// status is idle. Terminate and unknown tags are never forwarded and
/// change nothing.
fn pool_exchange(data: &[u8]) {
    let mut exchange = Exchange::default();
    let mut due = 0u32;
    let mut sequence_open = false;
    let mut status = TransactionStatus::Idle;
    let mut bytes = data.iter();
    while let Some(&tag) = bytes.next() {
        if tag == backend::READY_FOR_QUERY {
            // The proxy ends the session on a status it cannot read.
            let Some(Ok(ready)) = bytes.next().map(|b| TransactionStatus::parse(&[*b])) else {
                return;
            };
            exchange.ready(ready);
            due = due.saturating_sub(1);
            status = ready;
        } else {
            let before = exchange;
            let verdict = exchange.client_message(tag);
            match tag {
                frontend::QUERY | frontend::FUNCTION_CALL => due += 1,
                frontend::SYNC => {
                    due += 1;
                    sequence_open = false;
                }
                frontend::PARSE
                | frontend::BIND
                | frontend::DESCRIBE
                | frontend::EXECUTE
                | frontend::CLOSE
                | frontend::FLUSH => sequence_open = true,
                frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => {}
                frontend::TERMINATE => {
                    assert_eq!(verdict, ClientMessage::Terminate);
                    assert_eq!(exchange, before, "Terminate changed the exchange");
                    continue;
                }
                _ => {
                    assert_eq!(verdict, ClientMessage::Invalid, "tag 0x{tag:02x}");
                    assert_eq!(exchange, before, "tag 0x{tag:02x} changed the exchange");
                    continue;
                }
            }
            assert_eq!(verdict, ClientMessage::Forward, "tag 0x{tag:02x}");
        }
        let answered = due == 0 && !sequence_open;
        assert_eq!(exchange.status(), status);
        assert_eq!(
            exchange.answered(),
            answered,
            "{due} due, open {sequence_open}"
        );
        assert_eq!(
            exchange.at_transaction_boundary(),
            answered && status == TransactionStatus::Idle
        );
        if exchange.at_transaction_boundary() {
            assert!(exchange.answered() && exchange.status() == TransactionStatus::Idle);
        }
    }
}

/// [`Parameters::from_startup`] keeps the restored parameters by
/// lower-case name (the last value of each) and names the first one it
/// cannot honour; [`Parameters::record`] keeps the restored ones only.
/// The statement that makes a server connection hold the client's values
/// sets exactly the ones that differ, in ASCII, as one `SELECT` whose
/// only variable parts are escape string literals holding the values.
fn pool_parameters(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\0');
    let mut startup = Vec::new();
    let mut reported = Vec::new();
    let mut from_server = false;
    while let Some(name) = fields.next() {
        if name.is_empty() && !from_server {
            from_server = true;
            continue;
        }
        let value = fields.next().unwrap_or_default();
        if from_server {
            reported.push((name, value));
        } else {
            startup.push((name, value));
        }
    }

    let restored = |pairs: &[(&str, &str)]| {
        let mut kept = BTreeMap::new();
        for (name, value) in pairs {
            let lower = name.to_ascii_lowercase();
            if RESTORED.contains(&lower.as_str()) {
                kept.insert(lower, value.to_string());
            }
        }
        kept
    };
    let wanted = restored(&startup);
    let held = restored(&reported);
    let refused = startup.iter().find(|(name, _)| {
        let lower = name.to_ascii_lowercase();
        !matches!(lower.as_str(), "user" | "database")
            && !lower.starts_with("_pq_.")
            && !RESTORED.contains(&lower.as_str())
    });

    let client = match Parameters::from_startup(startup.iter().copied()) {
        Ok(client) => {
            assert_eq!(refused, None, "{refused:?} accepted");
            client
        }
        Err(not) => {
            assert_eq!(refused.map(|(name, _)| *name), Some(not.name.as_str()));
            let mut client = Parameters::default();
            for (name, value) in &startup {
                client.record(name, value);
            }
            client
        }
    };
    let mut server = Parameters::default();
    for (name, value) in &reported {
        server.record(name, value);
    }
    for name in RESTORED {
        assert_eq!(client.get(name), wanted.get(*name).map(String::as_str));
        assert_eq!(server.get(name), held.get(*name).map(String::as_str));
    }

    let differing: Vec<(&String, &String)> = wanted
        .iter()
        .filter(|(name, value)| held.get(*name) != Some(*value))
        .collect();
    let statement = client.difference_from(&server);
    match &statement {
        None => assert!(differing.is_empty(), "{differing:?} not set"),
        Some(sql) => restore_statement(sql, &differing),
    }
    // What the client leaves unset it takes from the server, which then
    // needs no setting; once set, nothing differs.
    assert_eq!(
        client.clone().or_defaults(&server).difference_from(&server),
        statement
    );
    let mut after = server.clone();
    for (name, value) in &wanted {
        after.record(name, value);
    }
    assert_eq!(client.difference_from(&after), None);
}

/// `sql` is one statement, in ASCII, whose text outside its escape
/// string literals is exactly the `set_config` calls of `differing`, and
/// whose literals read back as their values.
fn restore_statement(sql: &str, differing: &[(&String, &String)]) {
    assert!(sql.is_ascii(), "{sql:?} is not ASCII");
    let mut query = Vec::new();
    assert!(intransit_wire::pg::session::encode_query(sql, &mut query).is_ok());
    let calls: Vec<String> = differing
        .iter()
        .map(|(name, _)| format!("pg_catalog.set_config('{name}', E'', false)"))
        .collect();
    let expected = format!("SELECT {}", calls.join(", "));
    let (skeleton, literals) = escape_string_literals(sql);
    assert_eq!(skeleton, expected);
    let values: Vec<&str> = differing.iter().map(|(_, value)| value.as_str()).collect();
    assert_eq!(literals, values);
}

/// Reads `sql` as PostgreSQL's lexer reads string literals: the text
/// with every escape string literal (`E'...'`) emptied, and the value of
/// each. Standard literals stay in the text; a backslash in one would
/// read differently with `standard_conforming_strings` off, so it fails
/// here, as does any escape `string_literal` has no reason to write.
fn escape_string_literals(sql: &str) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut literals = Vec::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        text.push(c);
        if c != '\'' {
            continue;
        }
        let mut before = text.chars().rev().skip(1);
        let escape = matches!(before.next(), Some('E' | 'e'))
            && !before
                .next()
                .is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '$');
        let mut value = String::new();
        loop {
            let Some(c) = chars.next() else {
                panic!("a literal that does not end in {sql:?}");
            };
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    value.push('\'');
                }
                '\'' => break,
                '\\' if !escape => panic!("a backslash in a standard literal in {sql:?}"),
                '\\' => match chars.next() {
                    Some(c @ ('\\' | '\'')) => value.push(c),
                    Some(width @ ('u' | 'U')) => {
                        let count = if width == 'u' { 4 } else { 8 };
                        let digits: String = chars.by_ref().take(count).collect();
                        let hex =
                            digits.len() == count && digits.chars().all(|c| c.is_ascii_hexdigit());
                        let code = u32::from_str_radix(&digits, 16)
                            .ok()
                            .filter(|&c| hex && c != 0);
                        let Some(decoded) = code.and_then(char::from_u32) else {
                            panic!("an invalid escape \\{width}{digits} in {sql:?}");
                        };
                        value.push(decoded);
                    }
                    other => panic!("an escape \\{other:?} in {sql:?}"),
                },
                c => value.push(c),
            }
        }
        if escape {
            literals.push(value);
        } else {
            text.push_str(&value.replace('\'', "''"));
        }
        text.push('\'');
    }
    (text, literals)
}

/// [`is_listen`] and [`has_listen`] never panic; `is_listen`'s verdict
/// does not change with
/// blanks, comments or empty statements put before the query, or with
/// letter case; `LISTEN` followed by anything that ends a keyword is
/// LISTEN, followed by what continues an identifier it is another word.
fn pool_listen(data: &[u8]) {
    let verdict = is_listen(data);
    // Any statement of a query: a LISTEN first is one, and the verdict
    // does not depend on letter case.
    let anywhere = has_listen(data);
    assert!(anywhere || !verdict);
    // Its shortcuts change no verdict.
    assert_eq!(listen_in_any_statement(data), anywhere);
    assert_eq!(has_listen(&data.to_ascii_lowercase()), anywhere);
    assert_eq!(has_listen(&data.to_ascii_uppercase()), anywhere);
    for before in [
        &b" "[..],
        b"\t\r\n\x0b\x0c",
        b"-- c\n",
        b"-- c\r",
        b"/* c */",
        b"/* a /* b */ c */",
        b"/**/",
        b";",
        b"(",
    ] {
        assert_eq!(
            is_listen(&[before, data].concat()),
            verdict,
            "after {before:?}"
        );
    }
    assert_eq!(is_listen(&data.to_ascii_lowercase()), verdict);
    assert_eq!(is_listen(&data.to_ascii_uppercase()), verdict);
    for end in [
        &b" "[..],
        b"\n",
        b"\r",
        b"\x0b",
        b"\x0c",
        b"/*",
        b"--",
        b"\"",
        b";",
        b"(",
    ] {
        assert!(
            is_listen(&[b"LiStEn", end, data].concat()),
            "LISTEN then {end:?}"
        );
    }
    for more in [&b"_"[..], b"1", b"$", b"s", b"\xc3"] {
        assert!(
            !is_listen(&[b"LISTEN", more, data].concat()),
            "LISTEN then {more:?}"
        );
    }
}

const CLIENT_CA: &str = "client-ca.pem";
const CRL: &str = "crl.pem";

/// Loads a route's client trust from `data`: the first two bytes (big
/// endian, modulo the length) say where the client CA file ends and the
/// CRL file begins. Any contents give a verifier or an error about one of
/// the two files, never a panic; a verifier trusts every certificate of
/// the CA file, as summarised; and the identity the policy would read from
/// each certificate has the key pin the summary shows.
pub fn pki_trust_material(data: &[u8]) {
    let [high, low, files @ ..] = data else {
        return;
    };
    let split = usize::from(u16::from_be_bytes([*high, *low])) % (files.len() + 1);
    let (client_ca, crl) = files.split_at(split);
    for (client_auth, crl) in [
        (ClientAuth::Required, Some(crl)),
        (ClientAuth::Optional, Some(crl)),
        (ClientAuth::Required, None),
    ] {
        let tls = ServerTls {
            cert: PathBuf::from("cert.pem"),
            key: PathBuf::from("key.pem"),
            client_ca: Some(PathBuf::from(CLIENT_CA)),
            crl: crl.map(|_| PathBuf::from(CRL)),
            min_version: TlsVersion::V1_3,
            client_auth,
            allow: AllowList::new(Vec::new()),
            stale_crl: StaleCrl::Refuse,
        };
        match client_verifier(&tls, Some(client_ca), crl, Arc::new(crypto_provider())) {
            Ok(ClientTrust {
                verifier, anchors, ..
            }) => {
                assert_eq!(
                    verifier.client_auth_mandatory(),
                    client_auth == ClientAuth::Required
                );
                let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(client_ca)
                    .filter_map(Result::ok)
                    .collect();
                assert_eq!(anchors.len(), certs.len());
                for (anchor, der) in anchors.iter().zip(&certs) {
                    assert_eq!(
                        anchor.fingerprint_sha256,
                        intransit_pki::sha256_fingerprint(der.as_ref())
                    );
                }
            }
            Err(ProxyError::File { path, reason, .. }) => {
                assert!(path == Path::new(CLIENT_CA) || path == Path::new(CRL));
                assert!(!reason.is_empty());
            }
            Err(ProxyError::Tls(reason)) => assert!(!reason.is_empty()),
            Err(other) => panic!("an error that names no file: {other}"),
        }
    }
    for der in CertificateDer::pem_slice_iter(client_ca).filter_map(Result::ok) {
        if let (Ok(identity), Ok(pin)) = (
            ClientIdentity::from_der(der.as_ref()),
            intransit_pki::spki_pin(der.as_ref()),
        ) {
            assert_eq!(identity.spki_pin, pin);
        }
    }
}

/// The fuzz entry points over captured client and server messages, their
/// prefixes and single-byte mutations: a stable-Rust smoke run of what
/// `cargo fuzz` explores at length.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .filter_map(|i| text.get(i..i + 2))
            .filter_map(|pair| u8::from_str_radix(pair, 16).ok())
            .collect()
    }

    #[test]
    fn postgres_captures_their_prefixes_and_mutations() {
        for capture in pg::captured::ALL {
            let bytes = hex(capture);
            for end in 0..=bytes.len() {
                pg_negotiation(&bytes[..end]);
            }
            for at in 0..bytes.len() {
                for value in [0x00, 0x16, 0x2f, 0x30, 0xff, bytes[at] ^ 0x20] {
                    let mut mutated = bytes.clone();
                    mutated[at] = value;
                    pg_negotiation(&mutated);
                }
            }
        }
        // Pipelined and repeated requests.
        let ssl = pg::encode_ssl_request();
        let gssenc = pg::encode_gssenc_request();
        let startup = hex(pg::captured::PSQL15_STARTUP_ALICE_SHOP);
        for parts in [
            vec![&ssl[..], &startup[..]],
            vec![&gssenc[..], &gssenc[..]],
            vec![&gssenc[..], &ssl[..]],
            vec![&ssl[..], &ssl[..], &gssenc[..], &startup[..]],
        ] {
            pg_negotiation(&parts.concat());
        }
    }

    /// Pipelines, COPY, transactions, startup parameters with quotes,
    /// backslashes, dollars and non-ASCII values, and queries behind
    /// comments, each with single-byte mutations.
    #[test]
    fn pool_decisions_over_conversations_parameters_and_queries() {
        let inputs: [&[u8]; 10] = [
            b"QZI",
            b"PBDEHSZI",
            b"PBESBESBESZIZIZI",
            b"QdddcZIXQ",
            b"QZTQZEQZIFZI",
            b"PBEQZISZT",
            b"user\0alice\0database\0shop\0application_name\0it's \\ $$ caf\xc3\xa9\0TimeZone\0Europe/Paris\0\0timezone\0UTC\0client_encoding\0UTF8\0",
            b"search_path\0\"$user\", public\0extra_float_digits\x003\0options\0-c x\0",
            b"/* a /* nested */ comment */ -- and a line\r\n\x0c;LISTEN/**/chan",
            b"listen_chan",
        ];
        for data in inputs {
            pg_pool_decisions(data);
            for at in 0..data.len() {
                for value in [0x00, b'Z', b'I', b'S', b'\'', b'\\', 0xff, data[at] ^ 0x20] {
                    let mut mutated = data.to_vec();
                    mutated[at] = value;
                    pg_pool_decisions(&mutated);
                }
            }
        }
    }

    /// A client CA and a CRL of its own, then a CRL of another CA.
    #[test]
    fn trust_material_of_a_generated_ca_and_its_mutations() {
        use intransit_pki::{CertificateAuthority, KeyAlgorithm, Validity};
        let generate = |name: &str| {
            CertificateAuthority::generate(
                name,
                KeyAlgorithm::EcdsaP256,
                Validity::days_from_now(30),
            )
            .unwrap()
        };
        let (ca, other) = (generate("clients"), generate("others"));
        let week = time::Duration::days(7);
        let crl = ca.crl_pem(&[], week, 1).unwrap();
        let files = |crl: &str| {
            let mut data = (ca.cert_pem().len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(ca.cert_pem().as_bytes());
            data.extend_from_slice(crl.as_bytes());
            data
        };
        let tls = |crl: bool| ServerTls {
            cert: PathBuf::from("cert.pem"),
            key: PathBuf::from("key.pem"),
            client_ca: Some(PathBuf::from(CLIENT_CA)),
            crl: crl.then(|| PathBuf::from(CRL)),
            min_version: TlsVersion::V1_3,
            client_auth: ClientAuth::Required,
            allow: AllowList::new(Vec::new()),
            stale_crl: StaleCrl::Refuse,
        };
        let load = |crl: &str| {
            client_verifier(
                &tls(true),
                Some(ca.cert_pem().as_bytes()),
                Some(crl.as_bytes()),
                Arc::new(crypto_provider()),
            )
        };
        assert!(load(&crl).is_ok());
        let foreign = other.crl_pem(&[], week, 1).unwrap();
        assert!(
            matches!(load(&foreign), Err(ProxyError::File { path, .. }) if path == Path::new(CRL))
        );

        let good = files(&crl);
        pki_trust_material(&good);
        pki_trust_material(&files(&foreign));
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..300 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut mutated = good.clone();
            let at = 2 + (rng % (good.len() as u64 - 2)) as usize;
            mutated[at] = (rng >> 32) as u8;
            pki_trust_material(&mutated);
            pki_trust_material(&good[..at]);
        }
    }

    #[test]
    fn mysql_captures_their_prefixes_and_mutations() {
        for capture in mysql::captured::ALL {
            let packet = hex(capture);
            let payload = packet.get(4..).unwrap_or_default();
            for choice in [0x00, 0x01, 0x02, 0x80, 0x81, 0x82] {
                for seq in [0, 1, 2, 0xff] {
                    let mut data = vec![seq, choice];
                    data.extend_from_slice(payload);
                    for end in 0..=data.len() {
                        mysql_negotiation(&data[..end]);
                    }
                }
            }
            let mut data = vec![1, 0x80];
            data.extend_from_slice(payload);
            for at in 2..data.len() {
                for value in [0x00, 0x08, 0xfb, 0xfe, 0xff, data[at] ^ 0x08] {
                    let mut mutated = data.clone();
                    mutated[at] = value;
                    mysql_negotiation(&mutated);
                }
            }
        }
    }
}
