//! Entry points for the cargo-fuzz targets in `fuzz/` at the workspace root.
//!
//! Each function takes arbitrary bytes, drives the parsers, and asserts the
//! properties that must hold for any input: no panic, consumed counts within
//! the input, "need more bytes" only while a message can still complete, and
//! encode(parse(bytes)) giving back the exact bytes parsed. A failed
//! assertion here is a bug in the crate. The unit tests run these functions
//! over captured messages and their mutations, so they are exercised on
//! stable Rust too.

use crate::mysql::{self, ClientHandshake, HandshakeResponse41, HandshakeV10, ServerAuthReply};
use crate::pg::session;
use crate::pg::{
    self, AuthenticationRequest, BackendFrame, ErrorResponse, InitialMessage, SqlState,
    MAX_STARTUP_PACKET_LEN,
};
use crate::tls;

/// Drives [`pg::parse_initial_message`].
pub fn pg_initial_message(data: &[u8]) {
    let parsed = pg::parse_initial_message(data);
    let Ok(Some((message, used))) = parsed else {
        if let Ok(None) = parsed {
            // "Need more" must only be answered while the declared length
            // can still arrive.
            assert!(data.len() < MAX_STARTUP_PACKET_LEN + 4);
        }
        return;
    };
    let Some(original) = data.get(..used) else {
        panic!("consumed {used} of {} bytes", data.len());
    };
    match &message {
        InitialMessage::DirectTls => {
            assert_eq!(used, 0);
            assert_eq!(data.first(), Some(&tls::CONTENT_TYPE_HANDSHAKE));
            return;
        }
        InitialMessage::SslRequest => assert_eq!(original, pg::encode_ssl_request()),
        InitialMessage::GssEncRequest => assert_eq!(original, pg::encode_gssenc_request()),
        InitialMessage::Cancel(cancel) => assert_eq!(cancel.encode(), original),
        InitialMessage::Startup(startup) => {
            assert!(startup.user().is_some());
            assert!(startup.database().is_some());
            assert_eq!(startup.encode().as_deref(), Ok(original));
        }
    }
    // The message is complete without the bytes after it, and one byte
    // short of complete it needs more.
    assert_eq!(
        pg::parse_initial_message(original),
        Ok(Some((message, used)))
    );
    if let Some(short) = original.get(..used - 1) {
        assert_eq!(pg::parse_initial_message(short), Ok(None));
    }
}

/// Drives [`pg::parse_backend_frame`] over a stream of messages, and the
/// body parsers over each message and over the raw input. Also encodes the
/// input as ErrorResponse text and reads it back.
pub fn pg_backend_frame(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((frame, used))) = pg::parse_backend_frame(rest) {
        assert_eq!(used, frame.body.len() + 5);
        let Some(original) = rest.get(..used) else {
            panic!("consumed {used} of {} bytes", rest.len());
        };
        match frame.tag {
            BackendFrame::AUTHENTICATION => authentication_round_trip(frame.body, original),
            BackendFrame::ERROR_RESPONSE | BackendFrame::NOTICE_RESPONSE => {
                let _ = pg::parse_error_response(frame.body);
            }
            _ => {}
        }
        rest = rest.get(used..).unwrap_or_default();
    }
    let _ = pg::parse_authentication(data);
    let _ = pg::parse_error_response(data);

    let text = String::from_utf8_lossy(data);
    let encoded = ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, text.clone())
        .with_hint(text)
        .encode();
    let Ok(Some((frame, used))) = pg::parse_backend_frame(&encoded) else {
        panic!("an encoded ErrorResponse does not frame");
    };
    assert_eq!(used, encoded.len());
    let Ok(fields) = pg::parse_error_response(frame.body) else {
        panic!("an encoded ErrorResponse does not parse");
    };
    assert_eq!(fields.code(), Some(SqlState::PROTOCOL_VIOLATION));
    assert!(fields
        .message()
        .is_some_and(|m| m.len() <= pg::MAX_ERROR_FIELD_LEN));
}

fn authentication_round_trip(body: &[u8], original: &[u8]) {
    if let Ok(AuthenticationRequest::Sasl { mechanisms }) = pg::parse_authentication(body) {
        assert_eq!(
            pg::encode_authentication_sasl(&mechanisms).as_deref(),
            Ok(original)
        );
        // The rewrite a TLS upstream needs: no -PLUS left, the rest kept in
        // order, and a message that frames and parses again.
        if let Ok(Some(rewritten)) = pg::without_channel_binding(body) {
            let Ok(Some((frame, used))) = pg::parse_backend_frame(&rewritten) else {
                panic!("a rewritten SASL offer does not frame");
            };
            assert_eq!(used, rewritten.len());
            let Ok(AuthenticationRequest::Sasl { mechanisms: kept }) =
                pg::parse_authentication(frame.body)
            else {
                panic!("a rewritten SASL offer does not parse");
            };
            let expected: Vec<&str> = mechanisms
                .iter()
                .copied()
                .filter(|m| !m.ends_with("-PLUS"))
                .collect();
            assert_eq!(kept, expected);
        }
    }
}

/// Drives [`pg::parse_frontend_frame`] over a stream of messages.
pub fn pg_frontend_frame(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((frame, used))) = pg::parse_frontend_frame(rest) {
        assert_eq!(used, frame.body.len() + 5);
        assert!(used <= rest.len());
        if frame.tag == pg::FrontendFrame::PASSWORD {
            if let Ok(response) = pg::parse_sasl_initial_response(frame.body) {
                assert!(response.data.is_none_or(|d| d.len() < frame.body.len()));
            }
        }
        rest = rest.get(used..).unwrap_or_default();
    }
    let _ = pg::parse_sasl_initial_response(data);
}

/// Drives [`tls::parse_record_header`].
pub fn tls_record_header(data: &[u8]) {
    match tls::parse_record_header(data) {
        Ok(Some(header)) => {
            assert!(usize::from(header.length) <= tls::MAX_RECORD_LEN);
            let mut encoded = vec![header.content_type];
            encoded.extend_from_slice(&header.legacy_version.to_be_bytes());
            encoded.extend_from_slice(&header.length.to_be_bytes());
            assert_eq!(data.get(..tls::RECORD_HEADER_LEN), Some(&encoded[..]));
        }
        Ok(None) => assert!(data.len() < tls::RECORD_HEADER_LEN),
        Err(_) => {}
    }
}

/// Drives [`hello::parse_server_flight`]: any bytes give a result or an
/// error, never a panic; a complete flight stays complete with more bytes
/// after it, with the same ServerHello, certificates and alert (a probe
/// stops reading there); certificates are taken only from whole messages.
pub fn tls_server_flight(data: &[u8]) {
    let Ok(flight) = crate::hello::parse_server_flight(data) else {
        return;
    };
    let total: usize = flight.certificates.iter().map(Vec::len).sum();
    assert!(total <= data.len());
    if flight.is_complete() {
        let mut longer = data.to_vec();
        longer.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0x00]);
        if let Ok(again) = crate::hello::parse_server_flight(&longer) {
            assert!(again.is_complete());
            assert_eq!(again.hello, flight.hello);
            assert_eq!(again.certificates, flight.certificates);
            assert_eq!(again.ocsp_stapled, flight.ocsp_stapled);
            assert_eq!(again.done, flight.done);
            // An alert record cut short may complete with the bytes after
            // it; one already read stays.
            if flight.alert.is_some() {
                assert_eq!(again.alert, flight.alert);
            }
        }
    }
}

/// Drives [`mysql::parse_packet`] over a stream of packets, and the
/// server-reply parsers over each payload.
pub fn mysql_packet(data: &[u8]) {
    let mut rest = data;
    loop {
        match mysql::parse_packet(rest) {
            Ok(Some((packet, used))) => {
                assert_eq!(used, packet.payload.len() + mysql::HEADER_LEN);
                assert!(packet.payload.len() <= mysql::MAX_HANDSHAKE_PAYLOAD_LEN);
                let Some(original) = rest.get(..used) else {
                    panic!("consumed {used} of {} bytes", rest.len());
                };
                assert_eq!(
                    mysql::encode_packet(packet.sequence_id, packet.payload).as_deref(),
                    Ok(original)
                );
                mysql_server_reply(packet.payload);
                rest = rest.get(used..).unwrap_or_default();
            }
            Ok(None) => {
                // "Need more" only while the declared payload can still arrive.
                if let Some(header) = rest.get(..mysql::HEADER_LEN) {
                    let len = usize::from(header[0])
                        | usize::from(header[1]) << 8
                        | usize::from(header[2]) << 16;
                    assert!(rest.len() < mysql::HEADER_LEN + len);
                }
                break;
            }
            Err(_) => break,
        }
    }
}

fn mysql_server_reply(payload: &[u8]) {
    match mysql::parse_server_auth_reply(payload) {
        Ok(ServerAuthReply::Ok(ok)) => assert_eq!(ok.encode(), payload),
        Ok(ServerAuthReply::Err(err)) => {
            assert_eq!(err.encode(), payload);
            let _ = err.to_string();
        }
        Ok(ServerAuthReply::AuthSwitch(switch)) => {
            assert_eq!(switch.encode().as_deref(), Ok(payload));
        }
        Ok(ServerAuthReply::AuthMoreData(data)) => assert_eq!(payload.get(1..), Some(data)),
        Ok(ServerAuthReply::OldAuthSwitch) => assert_eq!(payload, [mysql::EOF_MARKER]),
        Err(_) => {}
    }
}

/// Drives [`HandshakeV10::parse`] and [`mysql::parse_server_greeting`] on
/// the input as a payload: whatever the strict parser accepts, the lenient
/// one reads alike, and it re-encodes to the same bytes, also with
/// CLIENT_SSL toggled and restored.
pub fn mysql_greeting(data: &[u8]) {
    let lenient = mysql::parse_server_greeting(data);
    let Ok(mut greeting) = HandshakeV10::parse(data) else {
        return;
    };
    // What the strict parser accepts, the lenient one reads the same way.
    let Ok(mysql::ServerGreeting::Handshake(summary)) = lenient else {
        panic!("a greeting HandshakeV10 accepts is refused by parse_server_greeting");
    };
    assert_eq!(summary.server_version, greeting.server_version);
    assert_eq!(summary.capabilities, greeting.capabilities);
    assert_eq!(summary.collation, Some(greeting.collation));
    assert_eq!(greeting.encode().as_deref(), Ok(data));
    let offered = greeting.offers_tls();
    greeting.set_tls_offered(!offered);
    let toggled = greeting.encode();
    assert!(toggled.as_ref().is_ok_and(|t| t.len() == data.len()));
    greeting.set_tls_offered(offered);
    assert_eq!(greeting.encode().as_deref(), Ok(data));
}

/// Drives [`mysql::parse_client_handshake`] and
/// [`HandshakeResponse41::parse`] on the input as a payload.
pub fn mysql_handshake_response(data: &[u8]) {
    match mysql::parse_client_handshake(data) {
        Ok(ClientHandshake::SslRequest(request)) => assert_eq!(request.encode()[..], *data),
        Ok(ClientHandshake::Response(response)) => {
            assert_eq!(response.encode().as_deref(), Ok(data));
        }
        Err(_) => {}
    }
    if let Ok(mut response) = HandshakeResponse41::parse(data) {
        assert_eq!(response.encode().as_deref(), Ok(data));
        let _ = response.user_utf8();
        response.clear_ssl();
        let cleared = response.encode();
        assert!(cleared.as_ref().is_ok_and(|c| c.len() == data.len()));
        if let Ok(cleared) = cleared {
            assert_eq!(HandshakeResponse41::parse(&cleared), Ok(response));
        }
    }
}

/// Drives [`mysql::CommandScanner`] the way the proxy does after login:
/// the first 4 bytes are the client's capabilities, the next byte a read
/// size, the rest the client's byte stream, fed in reads of that size.
/// Every COM_CHANGE_USER reported is a whole packet with sequence id 0
/// whose payload [`mysql::ChangeUser::encode`] gives back; bytes held back
/// never exceed one login-sized packet; and reading the stream in one
/// piece finds the same requests at the same offsets.
pub fn mysql_commands(data: &[u8]) {
    let Some((caps, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Some((&step, stream)) = rest.split_first() else {
        return;
    };
    let caps = u32::from_le_bytes(*caps);
    let stepped = scan_commands(caps, stream, usize::from(step).max(1));
    let whole = scan_commands(caps, stream, stream.len().max(1));
    assert_eq!(stepped, whole);
}

/// The offset and user of each COM_CHANGE_USER found, and whether the
/// scan ended in an error.
fn scan_commands(caps: u32, stream: &[u8], step: usize) -> (Vec<(usize, Vec<u8>)>, bool) {
    let mut scanner = mysql::CommandScanner::new(caps);
    let mut pending: Vec<u8> = Vec::new();
    let mut passed = 0;
    let mut found = Vec::new();
    for chunk in stream.chunks(step) {
        pending.extend_from_slice(chunk);
        loop {
            match scanner.scan(&pending) {
                Err(_) => return (found, true),
                Ok(mysql::Scanned::Forward(0)) => break,
                Ok(mysql::Scanned::Forward(n)) => {
                    assert!(n <= pending.len());
                    pending.drain(..n);
                    passed += n;
                }
                Ok(mysql::Scanned::ChangeUser { len, request }) => {
                    let Some(packet) = pending.get(..len) else {
                        panic!(
                            "a change-user packet of {len} bytes with {} pending",
                            pending.len()
                        );
                    };
                    assert_eq!(packet.get(3), Some(&0));
                    assert_eq!(packet.get(4), Some(&mysql::COM_CHANGE_USER));
                    assert_eq!(
                        request.encode(caps).as_deref(),
                        Ok(packet.get(mysql::HEADER_LEN..).unwrap_or_default())
                    );
                    found.push((passed, request.user));
                    pending.drain(..len);
                    passed += len;
                }
            }
        }
        assert!(pending.len() <= mysql::HEADER_LEN + mysql::MAX_HANDSHAKE_PAYLOAD_LEN);
    }
    (found, false)
}

/// Drives [`session::MessageScanner`] the way a pool follows a session:
/// byte 0 says how the rest, the stream, is cut into reads; each read is
/// appended to what the scanner left, and the scanner steps over the
/// front until it needs more. Reading the stream whole, in reads of byte
/// 0's size and in reads whose sizes come from the stream's own bytes
/// finds the same messages (tag, body length, the prefix the caller
/// wanted) at the same offsets, steps over the same bytes and fails at
/// the same header. Every step stays within the bytes given, "need more"
/// comes only while a header or a wanted prefix is incomplete, and
/// `inside_message` is false exactly at message boundaries. The messages
/// a pool says itself parse back, and what the body parsers accept
/// encodes to the same bytes.
pub fn pg_session(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let whole = scan_session(stream, std::iter::once(stream.len()));
    let stepped = scan_session(stream, std::iter::repeat(usize::from(split).max(1)));
    assert_eq!(stepped, whole, "reads of {split} bytes");
    let from_content = stream
        .iter()
        .cycle()
        .map(|&b| 1 + usize::from(b ^ split) % 64);
    assert_eq!(
        scan_session(stream, from_content),
        whole,
        "reads cut by content"
    );

    for (tag, body_len, prefix) in &whole.messages {
        if prefix.len() == *body_len {
            session_body_round_trip(*tag, prefix);
        }
    }
    let _ = session::TransactionStatus::parse(stream);
    let _ = session::parse_parameter_status(stream);
    let _ = session::parse_backend_key_data(stream);
    session_own_messages(stream);
}

/// How much of a message's body the fuzzed caller wants before judging
/// it, by tag: what the pool asks for (a ReadyForQuery's status, a whole
/// ParameterStatus or BackendKeyData, a Query's first 256 bytes), and for
/// other tags none, one byte, a few or all of it.
fn session_want(tag: u8) -> usize {
    match tag {
        b'Z' => 1,
        b'S' | b'K' => usize::MAX,
        b'Q' => 256,
        _ => [0, 1, 5, usize::MAX][usize::from(tag % 4)],
    }
}

/// What one reading of a stream found.
#[derive(Debug, PartialEq, Eq)]
struct SessionScan {
    /// Tag, body length and wanted prefix of each message.
    messages: Vec<(u8, usize, Vec<u8>)>,
    /// Where each message starts.
    offsets: Vec<usize>,
    /// The bytes stepped over.
    passed: usize,
    /// The error the scan ended with, at the offset `passed`.
    error: Option<crate::WireError>,
}

/// Scans `stream` in reads of the sizes `reads` gives (each at least 1),
/// checking every step against what the bytes it was given allow.
fn scan_session(stream: &[u8], reads: impl Iterator<Item = usize>) -> SessionScan {
    let mut scanner = session::MessageScanner::new();
    let mut found = SessionScan {
        messages: Vec::new(),
        offsets: Vec::new(),
        passed: 0,
        error: None,
    };
    // Bytes of the current message still to come after what was stepped
    // over: the scanner's state, kept here from the steps alone.
    let mut rest_of_message = 0usize;
    let mut pending: Vec<u8> = Vec::new();
    let mut read = 0;
    for size in reads {
        if read == stream.len() {
            break;
        }
        let end = read.saturating_add(size.max(1)).min(stream.len());
        pending.extend_from_slice(&stream[read..end]);
        read = end;
        loop {
            let scanned = scanner.scan(&pending, session::MAX_MESSAGE_LEN, session_want);
            match scanned {
                Err(e) => {
                    assert_eq!(rest_of_message, 0, "an error inside a message");
                    let Some(header) = pending.get(..session::HEADER_LEN) else {
                        panic!("an error before a whole header: {e}");
                    };
                    let declared = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                    assert!(declared < 4 || declared as usize > session::MAX_MESSAGE_LEN + 4);
                    found.error = Some(e);
                    return found;
                }
                Ok(session::Scanned::NeedMore) => {
                    if rest_of_message > 0 {
                        assert!(
                            pending.is_empty(),
                            "need more with the message's bytes here"
                        );
                    } else if let Some(header) = pending.get(..session::HEADER_LEN) {
                        let declared =
                            u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                        let body_len = (declared as usize).saturating_sub(4);
                        let wanted = session_want(header[0]).min(body_len);
                        assert!(
                            pending.len() - session::HEADER_LEN < wanted,
                            "need more with the header and {wanted} wanted bytes here"
                        );
                    }
                    break;
                }
                Ok(session::Scanned::Continues { len }) => {
                    assert!(
                        len > 0 && len <= pending.len(),
                        "continues over {len} bytes"
                    );
                    assert!(len <= rest_of_message, "continues past the message's end");
                    rest_of_message -= len;
                    pending.drain(..len);
                    found.passed += len;
                }
                Ok(session::Scanned::Message {
                    tag,
                    body_len,
                    prefix,
                    len,
                }) => {
                    assert_eq!(rest_of_message, 0, "a message inside a message");
                    assert!(len <= pending.len(), "a message of {len} bytes");
                    assert!(
                        pending.len() >= session::HEADER_LEN,
                        "a message without a header"
                    );
                    assert!(body_len <= session::MAX_MESSAGE_LEN);
                    assert_eq!(pending.first(), Some(&tag));
                    let body_here = pending.len() - session::HEADER_LEN;
                    assert_eq!(len, session::HEADER_LEN + body_here.min(body_len));
                    let wanted = session_want(tag).min(body_len);
                    assert_eq!(
                        Some(prefix),
                        pending.get(session::HEADER_LEN..session::HEADER_LEN + wanted)
                    );
                    found.messages.push((tag, body_len, prefix.to_vec()));
                    found.offsets.push(found.passed);
                    rest_of_message = session::HEADER_LEN + body_len - len;
                    pending.drain(..len);
                    found.passed += len;
                }
            }
            assert_eq!(scanner.inside_message(), rest_of_message > 0);
        }
    }
    assert_eq!(found.passed + pending.len(), stream.len());
    found
}

/// A whole message body that a body parser accepts encodes back to the
/// same message.
fn session_body_round_trip(tag: u8, body: &[u8]) {
    let mut original = vec![tag];
    original.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    original.extend_from_slice(body);
    let mut encoded = Vec::new();
    match tag {
        b'Z' => {
            if let Ok(status) = session::TransactionStatus::parse(body) {
                assert_eq!(body, [status.byte()]);
                session::encode_ready_for_query(status, &mut encoded);
                assert_eq!(encoded, original);
            }
        }
        b'S' => {
            if let Ok((name, value)) = session::parse_parameter_status(body) {
                assert!(session::encode_parameter_status(name, value, &mut encoded).is_ok());
                assert_eq!(encoded, original);
            }
        }
        b'K' => {
            if let Ok((pid, key)) = session::parse_backend_key_data(body) {
                assert!(!key.is_empty() && key.len() <= 256);
                if let Ok(secret) = <[u8; 4]>::try_from(key) {
                    session::encode_backend_key_data(pid, u32::from_be_bytes(secret), &mut encoded);
                    assert_eq!(encoded, original);
                }
            }
        }
        _ => {}
    }
}

/// The pool's own messages, with text taken from `data`, scan as one
/// message each and parse back to what was encoded; a NUL in the text is
/// refused by the encoders that take text.
fn session_own_messages(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let nul = text.contains('\0');
    let (name, value) = text.split_once('=').unwrap_or((&text, ""));
    let status = [
        session::TransactionStatus::Idle,
        session::TransactionStatus::InTransaction,
        session::TransactionStatus::Failed,
    ][data.len() % 3];
    let pid = data
        .iter()
        .fold(0u32, |h, &b| h.rotate_left(5) ^ u32::from(b));
    let mut out = Vec::new();
    session::encode_authentication_ok(&mut out);
    session::encode_ready_for_query(status, &mut out);
    session::encode_backend_key_data(pid, !pid, &mut out);
    assert_eq!(
        session::encode_parameter_status(name, value, &mut out).is_ok(),
        !nul
    );
    assert_eq!(session::encode_query(&text, &mut out).is_ok(), !nul);
    session::encode_terminate(&mut out);

    let scan = scan_session(&out, std::iter::once(out.len()));
    assert_eq!((scan.passed, &scan.error), (out.len(), &None));
    let tags: Vec<u8> = scan.messages.iter().map(|m| m.0).collect();
    assert_eq!(tags, if nul { &b"RZKX"[..] } else { b"RZKSQX" });
    for (tag, _, body) in &scan.messages {
        match tag {
            b'R' => assert_eq!(body[..], [0, 0, 0, 0]),
            b'Z' => assert_eq!(session::TransactionStatus::parse(body), Ok(status)),
            b'K' => assert_eq!(
                session::parse_backend_key_data(body),
                Ok((pid, &(!pid).to_be_bytes()[..]))
            ),
            b'S' => assert_eq!(session::parse_parameter_status(body), Ok((name, value))),
            b'Q' => {
                let mut sent = text.as_bytes().to_vec();
                sent.push(0);
                assert_eq!(body[..], sent[..body.len()]);
            }
            _ => assert!(body.is_empty()),
        }
    }
}

/// The fuzz entry points over captured messages, every prefix of them and
/// deterministic mutations: a stable-Rust smoke run of what `cargo fuzz`
/// explores at length.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::captured::ALL;
    use crate::pg::test_util::hex;

    fn drive(data: &[u8]) {
        mysql_packet(data);
        mysql_greeting(data);
        mysql_handshake_response(data);
        pg_initial_message(data);
        pg_backend_frame(data);
        pg_frontend_frame(data);
        tls_record_header(data);
        tls_server_flight(data);
        mysql_commands(data);
        pg_session(data);
    }

    /// xorshift64: a fixed, dependency-free source of varied bytes.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn command_streams_split_any_way_find_the_same_change_users() {
        let caps = mysql::CLIENT_PROTOCOL_41
            | mysql::CLIENT_SECURE_CONNECTION
            | mysql::CLIENT_PLUGIN_AUTH
            | mysql::CLIENT_CONNECT_ATTRS;
        let change = mysql::ChangeUser {
            user: b"admin".to_vec(),
            auth_response: vec![1; 20],
            database: b"shop".to_vec(),
            collation: Some(45),
            auth_plugin_name: Some(b"mysql_native_password".to_vec()),
            connect_attrs: Some(Vec::new()),
            trailing: Vec::new(),
        };
        let mut stream = mysql::encode_packet(0, b"\x03SELECT 1").unwrap();
        stream.extend(mysql::encode_packet(0, &change.encode(caps).unwrap()).unwrap());
        stream.extend(mysql::encode_packet(2, b"\x11\x00").unwrap());
        for step in [1u8, 2, 3, 7, 255] {
            let mut data = caps.to_le_bytes().to_vec();
            data.push(step);
            data.extend_from_slice(&stream);
            mysql_commands(&data);
            let (found, failed) = scan_commands(caps, &stream, usize::from(step));
            assert!(!failed);
            assert_eq!(found, [(13, b"admin".to_vec())]);
        }
    }

    /// The server's login stream and a client's pipeline, each read in
    /// every size of read the first byte can ask for.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn session_streams_read_any_way_give_the_same_messages() {
        let server = hex(crate::pg::captured::PG15_SASL_FINAL_TO_READY);
        let mut client = hex(crate::pg::captured::PSQL15_QUERY_SELECT_1);
        for (tag, body) in [
            (b'P', &b"\0SELECT $1\0\0\0"[..]),
            (b'B', b"\0\0\0\0\0\x01\0\0\0\x011\0\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
            (b'Q', &[b'x'; 300]),
        ] {
            client.push(tag);
            client.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            client.extend_from_slice(body);
        }
        client.extend(hex(crate::pg::captured::PSQL15_TERMINATE));
        for stream in [&server, &client] {
            let whole = scan_session(stream, std::iter::once(stream.len()));
            assert_eq!((whole.passed, &whole.error), (stream.len(), &None));
            for split in 0..=u8::MAX {
                let mut data = vec![split];
                data.extend_from_slice(stream);
                pg_session(&data);
            }
        }
        let tags: Vec<u8> = scan_session(&client, std::iter::once(client.len()))
            .messages
            .iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(tags, b"QPBESQX");
    }

    #[test]
    fn captures_their_prefixes_and_single_byte_mutations() {
        for capture in ALL.iter().chain(crate::mysql::captured::ALL) {
            let bytes = hex(capture);
            for end in 0..=bytes.len() {
                drive(&bytes[..end]);
            }
            for at in 0..bytes.len() {
                for value in [0x00, 0x01, 0x16, 0x7f, 0x80, 0xff, bytes[at] ^ 0x20] {
                    let mut mutated = bytes.clone();
                    mutated[at] = value;
                    drive(&mutated);
                }
            }
        }
    }

    #[test]
    fn random_splices_of_captures() {
        let captures: Vec<Vec<u8>> = ALL
            .iter()
            .chain(crate::mysql::captured::ALL)
            .map(|c| hex(c))
            .collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut data = Vec::new();
            for _ in 0..=rng.below(3) {
                let source = &captures[rng.below(captures.len())];
                let start = rng.below(source.len());
                let end = start + rng.below(source.len() - start + 1);
                data.extend_from_slice(&source[start..end]);
                if rng.below(2) == 0 {
                    let noise = rng.next().to_be_bytes();
                    data.extend_from_slice(&noise[..rng.below(9)]);
                }
            }
            drive(&data);
        }
    }

    /// MySQL payloads: the captures without their headers, so the payload
    /// parsers see them, mutated at every byte.
    #[test]
    fn mysql_payloads_and_their_mutations() {
        for capture in crate::mysql::captured::ALL {
            let bytes = crate::mysql::test_util::payload(capture);
            for end in 0..=bytes.len() {
                drive(&bytes[..end]);
            }
            for at in 0..bytes.len() {
                for value in [
                    0x00,
                    0x01,
                    0x08,
                    0x0a,
                    0xfb,
                    0xfc,
                    0xfe,
                    0xff,
                    bytes[at] ^ 0x08,
                ] {
                    let mut mutated = bytes.clone();
                    mutated[at] = value;
                    drive(&mutated);
                }
            }
        }
    }

    #[test]
    fn random_startup_packets() {
        // Valid length words and protocol 3 codes, random bodies built from
        // the alphabet that matters (NUL, letters, invalid UTF-8).
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let body_len = rng.below(40);
            let body: Vec<u8> = (0..body_len)
                .map(|_| [0, 0, b'u', b's', b'e', b'r', b'x', 0xff][rng.below(8)])
                .collect();
            let code = [
                crate::pg::PROTOCOL_VERSION_3_0,
                crate::pg::PROTOCOL_VERSION_3_2,
                crate::pg::CANCEL_REQUEST_CODE,
                crate::pg::SSL_REQUEST_CODE,
            ][rng.below(4)];
            let mut data = ((body_len + 8) as u32).to_be_bytes().to_vec();
            data.extend_from_slice(&code.to_be_bytes());
            data.extend_from_slice(&body);
            drive(&data);
        }
        // And the shape that parses: user plus random pairs.
        let mut message = crate::pg::StartupMessage {
            protocol: crate::pg::ProtocolVersion::V3_0,
            params: vec![("user".into(), "alice".into())],
        };
        for i in 0..50 {
            message
                .params
                .push((format!("k{i}"), "v".repeat(rng.below(20))));
            if let Ok(bytes) = message.encode() {
                drive(&bytes);
            }
        }
    }
}
