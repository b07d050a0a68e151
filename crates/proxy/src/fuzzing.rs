//! Entry points for the cargo-fuzz targets `pg_negotiation` and
//! `mysql_negotiation` in `fuzz/`: the negotiation decisions a client
//! reaches before anything else, over arbitrary bytes; and
//! `pki_trust_material`: a route's client CA and CRL files loaded as the
//! proxy loads them at start and on every reload.
//!
//! Each function drives the pure decisions of `protocol::*::negotiation`
//! the way the drivers do and asserts what must hold for any input: no
//! panic; an SSLRequest followed by bytes is refused without a reply; a
//! StartupMessage or HandshakeResponse in plaintext never goes on in
//! server mode; every reply the proxy writes is one well-formed message
//! of its protocol; `db_users` decides on exactly the user name that is
//! forwarded; sequence ids renumber both ways. A failed assertion here is
//! a bug in the crate. It is not part of the crate's API (hidden from the
//! documentation); the unit tests run these functions over captured
//! messages, so they are exercised on stable Rust too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use intransit_config::{ClientAuth, ServerTls, StaleCrl, TlsVersion};
use intransit_policy::{AllowList, ClientIdentity, DbUserRule, DbUserRules, IdentityPattern};
use intransit_wire::mysql::{
    self, parse_client_handshake, parse_packet, parse_server_auth_reply, ClientHandshake,
    ErrPacket, HandshakeResponse41, HandshakeV10, ServerAuthReply, ServerError, CLIENT_SSL,
};
use intransit_wire::pg::{self, InitialMessage, SqlState};

use crate::error::ProxyError;
use crate::protocol::mysql::negotiation as my;
use crate::protocol::postgres::negotiation as pgn;
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
