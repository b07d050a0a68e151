//! The decisions of PostgreSQL negotiation, without I/O: given this
//! message in this state, what the proxy sends and where the connection
//! goes next. The drivers in `server_mode` and `client_mode` read the
//! messages, act on these answers and do the socket work, the way rustls
//! keeps its state machine apart from its I/O.

use intransit_config::ClientAuth;
use intransit_policy::{ClientIdentity, DbUserRules};
use intransit_wire::pg::{self, CancelRequest, InitialMessage, SqlState, StartupMessage};
use intransit_wire::printable;

use super::messages::{error_response, initial_name};
use crate::conn::{check_db_user, Refusal, Refused};
use crate::refusal::RefusalReason;

/// A refusal that says nothing: in plaintext before TLS nothing the proxy
/// said would be authenticated.
fn silent(refused: Refused) -> Refusal {
    Refusal {
        reply: Vec::new(),
        refused,
    }
}

/// What a server-mode listener does with a message that arrived in
/// plaintext, before TLS.
#[derive(Debug)]
pub(crate) enum BeforeTls {
    /// Answer `N` to a GSSENCRequest and read the next message.
    RefuseGssEnc,
    /// Answer `S` to an SSLRequest, then run the TLS handshake.
    AcceptSsl,
    /// The client started TLS at once: run the handshake on the bytes
    /// read, requiring ALPN `postgresql`.
    DirectTls,
    /// Forward the cancel to every upstream and close.
    Cancel(CancelRequest),
    /// Turn the client away.
    Refuse(Refusal),
}

/// Decides on an initial message received before TLS. `pending` is how
/// many bytes were read past it; `gssenc_answered` whether a GSSENCRequest
/// was already answered on this connection.
pub(crate) fn before_tls(
    message: InitialMessage,
    pending: usize,
    gssenc_answered: bool,
    client_auth: ClientAuth,
) -> BeforeTls {
    match message {
        // Anything after the SSLRequest must come from inside TLS. Bytes
        // already waiting would be processed as if they were encrypted
        // (CVE-2021-23214), so the connection is closed.
        InitialMessage::SslRequest if pending > 0 => BeforeTls::Refuse(silent(Refused::new(
            RefusalReason::PipelinedBeforeTls,
            format!(
                "{pending} unencrypted byte(s) followed the SSLRequest before the TLS handshake"
            ),
        ))),
        InitialMessage::SslRequest => BeforeTls::AcceptSsl,
        InitialMessage::DirectTls => BeforeTls::DirectTls,
        // GSSAPI encryption is not offered; libpq then falls back to an
        // SSLRequest on the same connection.
        InitialMessage::GssEncRequest if !gssenc_answered => BeforeTls::RefuseGssEnc,
        InitialMessage::GssEncRequest => BeforeTls::Refuse(silent(Refused::new(
            RefusalReason::Malformed,
            "second GSSENCRequest on one connection",
        ))),
        InitialMessage::Cancel(cancel) => BeforeTls::Cancel(cancel),
        InitialMessage::Startup(startup) => BeforeTls::Refuse(Refusal {
            reply: plaintext_refused(client_auth),
            refused: Refused::new(
                RefusalReason::PlaintextRefused,
                format!(
                    "StartupMessage without TLS (user {:?}, database {:?})",
                    startup.user().unwrap_or_default(),
                    startup.database().unwrap_or_default()
                ),
            )
            .for_login(startup.user(), startup.database()),
        }),
    }
}

/// What a client that sent a StartupMessage without TLS is told: that TLS
/// is required, and (in libpq's terms) how to connect.
fn plaintext_refused(client_auth: ClientAuth) -> Vec<u8> {
    let (message, hint) = match client_auth {
        ClientAuth::None => (
            "TLS is required: this server accepts only encrypted connections",
            "Connect with sslmode=verify-full and sslrootcert set to the CA that signed the server certificate.",
        ),
        ClientAuth::Required | ClientAuth::Optional => (
            "TLS is required: this server accepts only encrypted connections with a client certificate",
            "Connect with sslmode=verify-full and set sslrootcert, sslcert and sslkey (libpq), or the equivalent options of your driver.",
        ),
    };
    error_response(
        SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
        message.to_owned(),
        Some(hint.to_owned()),
    )
}

/// What a server-mode listener does with the first message inside TLS.
#[derive(Debug)]
pub(crate) enum InsideTls {
    /// A StartupMessage: check the user next.
    Startup(StartupMessage),
    /// A cancel sent inside TLS: forward it to the chosen route's upstream.
    Cancel(CancelRequest),
    /// Anything else is a protocol violation.
    Refuse(Refusal),
}

/// Decides on the first message inside TLS.
pub(crate) fn inside_tls(message: InitialMessage) -> InsideTls {
    match message {
        InitialMessage::Startup(startup) => InsideTls::Startup(startup),
        InitialMessage::Cancel(cancel) => InsideTls::Cancel(cancel),
        other => InsideTls::Refuse(Refusal {
            reply: error_response(
                SqlState::PROTOCOL_VIOLATION,
                "invalid startup packet: expected a StartupMessage inside TLS".into(),
                None,
            ),
            refused: Refused::new(
                RefusalReason::Malformed,
                format!(
                    "{} inside TLS instead of a StartupMessage",
                    initial_name(&other)
                ),
            ),
        }),
    }
}

/// Checks that `identity` may log in as the StartupMessage's user under
/// `rules`; the refusal carries the FATAL the client sees.
pub(crate) fn authorize(
    rules: &DbUserRules,
    identity: Option<&ClientIdentity>,
    startup: &StartupMessage,
) -> Result<(), Refusal> {
    let user = startup.user().unwrap_or_default();
    let (who, refused) = match check_db_user(rules, identity, user) {
        Ok(()) => return Ok(()),
        Err(refusal) => refusal,
    };
    Err(Refusal {
        reply: error_response(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("{who} may not log in as database user \"{user}\""),
            Some(
                "The proxy's db_users rules decide which identities may use which database users."
                    .into(),
            ),
        ),
        refused,
    })
}

/// What a client-mode listener does with a message from a local
/// application, which speaks plaintext.
#[derive(Debug)]
pub(crate) enum FromApplication {
    /// Answer with this byte (`N`) and read the next message.
    Answer(u8),
    /// Forward the cancel over TLS and close.
    Cancel(CancelRequest),
    /// Open the TLS upstream leg and carry the StartupMessage on.
    Startup(StartupMessage),
    /// Close the connection (no ErrorResponse: see each case).
    Refuse(Refused),
}

/// What a client-mode connection has answered so far.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Answered {
    pub(crate) ssl: bool,
    pub(crate) gssenc: bool,
}

/// Decides on a message from a local application, and notes what was
/// answered.
pub(crate) fn from_application(
    message: InitialMessage,
    answered: &mut Answered,
) -> FromApplication {
    match message {
        // The application asked for TLS anyway (sslmode=prefer): this leg
        // is plaintext on loopback, the proxy encrypts the database's leg.
        // libpq continues without TLS.
        InitialMessage::SslRequest if !answered.ssl => {
            answered.ssl = true;
            FromApplication::Answer(pg::SSL_REFUSE)
        }
        InitialMessage::GssEncRequest if !answered.gssenc => {
            answered.gssenc = true;
            FromApplication::Answer(pg::GSSENC_REFUSE)
        }
        InitialMessage::SslRequest | InitialMessage::GssEncRequest => {
            FromApplication::Refuse(Refused::new(
                RefusalReason::Malformed,
                format!("second {} on one connection", initial_name(&message)),
            ))
        }
        // No ErrorResponse: the application expects a ServerHello.
        InitialMessage::DirectTls => FromApplication::Refuse(Refused::new(
            RefusalReason::Malformed,
            "the application started TLS (direct TLS), but a client-mode listener accepts plaintext only; connect with sslmode=disable (or prefer)",
        )),
        InitialMessage::Cancel(cancel) => FromApplication::Cancel(cancel),
        InitialMessage::Startup(startup) => FromApplication::Startup(startup),
    }
}

/// Where a login stands after one message from the server, in either mode.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LoginStep {
    /// An authentication request, a parameter, a notice: the login goes on.
    Continues,
    /// ReadyForQuery: authentication and startup are done.
    Ready,
    /// An ErrorResponse before ReadyForQuery: the server (or a proxy in
    /// front of it) refused the login, for this reason, in words.
    Refused(String),
}

/// Judges one message the server sent during a login. The login ends at
/// ReadyForQuery, not at AuthenticationOk: a server still refuses after
/// it (a database that does not exist, a role's connection limit).
pub(crate) fn login_step(frame: &pg::BackendFrame<'_>) -> LoginStep {
    match frame.tag {
        pg::BackendFrame::READY_FOR_QUERY => LoginStep::Ready,
        pg::BackendFrame::ERROR_RESPONSE => {
            let refusal = match pg::parse_error_response(frame.body) {
                Ok(fields) => {
                    let part = |text: Option<&str>| {
                        text.map(|t| printable(t.as_bytes())).unwrap_or_default()
                    };
                    let code = fields.code().map(|c| c.to_string()).unwrap_or_default();
                    let mut words = format!(
                        "{} {code}: {}",
                        part(fields.severity()),
                        part(fields.message())
                    );
                    if let Some(detail) = fields.detail() {
                        words.push_str(&format!(" ({})", printable(detail.as_bytes())));
                    }
                    words
                }
                Err(e) => format!("an ErrorResponse that does not parse ({e})"),
            };
            LoginStep::Refused(format!("the server refused the login: {refusal}"))
        }
        _ => LoginStep::Continues,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::conn::LoginNames;
    use intransit_policy::{DbUserRule, IdentityPattern};
    use intransit_wire::pg::captured::{self, bytes};
    use intransit_wire::pg::ErrorResponseFields;

    /// Parses a capture as the first message of a connection.
    fn initial(capture: &str) -> InitialMessage {
        let data = bytes(capture);
        let (message, used) = pg::parse_initial_message(&data).unwrap().unwrap();
        // Direct TLS consumes nothing: the bytes are the ClientHello's.
        let expected = match message {
            InitialMessage::DirectTls => 0,
            _ => data.len(),
        };
        assert_eq!(used, expected);
        message
    }

    fn fatal(reply: &[u8]) -> ErrorResponseFields {
        let (frame, used) = pg::parse_backend_frame(reply).unwrap().unwrap();
        assert_eq!(used, reply.len(), "one message, nothing after it");
        assert_eq!(frame.tag, b'E');
        let error = pg::parse_error_response(frame.body).unwrap();
        assert_eq!(error.severity(), Some("FATAL"));
        error
    }

    #[test]
    fn psql_ssl_request_is_answered_s_unless_bytes_follow_it() {
        let ssl = || initial(captured::PSQL15_SSL_REQUEST);
        assert!(matches!(
            before_tls(ssl(), 0, false, ClientAuth::Required),
            BeforeTls::AcceptSsl
        ));
        let BeforeTls::Refuse(refusal) = before_tls(ssl(), 5, false, ClientAuth::Required) else {
            panic!("pipelined bytes must refuse");
        };
        assert_eq!(refusal.refused.reason, RefusalReason::PipelinedBeforeTls);
        assert!(refusal.reply.is_empty(), "nothing is said in plaintext");
    }

    #[test]
    fn a_client_hello_first_is_direct_tls() {
        assert!(matches!(
            before_tls(
                initial(captured::PSQL15_CLIENT_HELLO),
                0,
                false,
                ClientAuth::Required
            ),
            BeforeTls::DirectTls
        ));
    }

    #[test]
    fn gssenc_is_refused_once_then_the_connection_is() {
        let gssenc = || InitialMessage::GssEncRequest;
        assert!(matches!(
            before_tls(gssenc(), 0, false, ClientAuth::Required),
            BeforeTls::RefuseGssEnc
        ));
        let BeforeTls::Refuse(refusal) = before_tls(gssenc(), 0, true, ClientAuth::Required) else {
            panic!("a second GSSENCRequest must refuse");
        };
        assert_eq!(refusal.refused.reason, RefusalReason::Malformed);
    }

    #[test]
    fn a_plaintext_startup_gets_28000_with_how_to_connect() {
        for (auth, words) in [
            (ClientAuth::Required, "sslcert and sslkey"),
            (ClientAuth::None, "sslrootcert set to the CA"),
        ] {
            let BeforeTls::Refuse(refusal) =
                before_tls(initial(captured::PSQL15_STARTUP_ALICE_SHOP), 0, false, auth)
            else {
                panic!("a plaintext StartupMessage must refuse");
            };
            assert_eq!(refusal.refused.reason, RefusalReason::PlaintextRefused);
            assert!(refusal.refused.detail.contains("\"alice\""));
            assert!(refusal.refused.detail.contains("\"shop\""));
            assert_eq!(
                refusal.refused.login.as_deref(),
                Some(&LoginNames {
                    user: Some("alice".into()),
                    database: Some("shop".into())
                }),
                "the audit event names the user a plaintext login asked for"
            );
            let error = fatal(&refusal.reply);
            assert_eq!(
                error.code().map(|c| c.as_str().to_owned()).as_deref(),
                Some("28000")
            );
            assert!(
                error.hint().unwrap_or_default().contains(words),
                "{error:?}"
            );
        }
    }

    #[test]
    fn a_plaintext_cancel_is_forwarded() {
        let BeforeTls::Cancel(cancel) = before_tls(
            initial(captured::PSQL15_CANCEL_REQUEST),
            0,
            false,
            ClientAuth::Required,
        ) else {
            panic!("a CancelRequest must be forwarded");
        };
        assert_eq!(cancel.process_id, 4242);
        assert_eq!(cancel.secret_key, 0x1234_5678u32.to_be_bytes().to_vec());
    }

    #[test]
    fn inside_tls_only_a_startup_or_a_cancel_goes_on() {
        let InsideTls::Startup(startup) = inside_tls(initial(captured::PSQL15_STARTUP_ALICE_SHOP))
        else {
            panic!("the StartupMessage goes on");
        };
        assert_eq!(startup.user(), Some("alice"));
        assert!(matches!(
            inside_tls(initial(captured::PSQL15_CANCEL_REQUEST)),
            InsideTls::Cancel(_)
        ));
        let InsideTls::Refuse(refusal) = inside_tls(initial(captured::PSQL15_SSL_REQUEST)) else {
            panic!("a nested SSLRequest must refuse");
        };
        assert_eq!(refusal.refused.reason, RefusalReason::Malformed);
        assert!(refusal.refused.detail.starts_with("SSLRequest inside TLS"));
        assert_eq!(
            fatal(&refusal.reply)
                .code()
                .map(|c| c.as_str().to_owned())
                .as_deref(),
            Some("08P01")
        );
    }

    #[test]
    fn db_users_decide_who_logs_in_as_whom() {
        let InsideTls::Startup(startup) = inside_tls(initial(captured::PSQL15_STARTUP_ALICE_SHOP))
        else {
            panic!("startup");
        };
        let rules = DbUserRules::new(vec![DbUserRule::Listed {
            identity: IdentityPattern::parse("cn:app-*").unwrap(),
            users: vec!["alice".into()],
        }]);
        let named = |cn: &str| ClientIdentity {
            common_name: Some(cn.into()),
            dns_names: Vec::new(),
            uris: Vec::new(),
            spki_pin: String::new(),
        };
        let (app, other) = (named("app-1"), named("batch"));
        assert!(authorize(&rules, Some(&app), &startup).is_ok());
        for identity in [Some(&other), None] {
            let refusal = authorize(&rules, identity, &startup).unwrap_err();
            assert_eq!(refusal.refused.reason, RefusalReason::UserDenied);
            let error = fatal(&refusal.reply);
            assert_eq!(
                error.code().map(|c| c.as_str().to_owned()).as_deref(),
                Some("28000")
            );
            assert!(
                error.message().unwrap_or_default().contains("\"alice\""),
                "{error:?}"
            );
        }
        assert!(authorize(&DbUserRules::default(), None, &startup).is_ok());
    }

    #[test]
    fn client_mode_answers_n_once_each_and_refuses_tls_from_the_application() {
        let mut answered = Answered::default();
        let ssl = || initial(captured::PSQL15_SSL_REQUEST);
        assert!(matches!(
            from_application(ssl(), &mut answered),
            FromApplication::Answer(b'N')
        ));
        assert!(matches!(
            from_application(InitialMessage::GssEncRequest, &mut answered),
            FromApplication::Answer(b'N')
        ));
        let FromApplication::Refuse(second) = from_application(ssl(), &mut answered) else {
            panic!("a second SSLRequest must refuse");
        };
        assert_eq!(second.detail, "second SSLRequest on one connection");
        assert!(matches!(
            from_application(initial(captured::PSQL15_CLIENT_HELLO), &mut answered),
            FromApplication::Refuse(_)
        ));
        assert!(matches!(
            from_application(initial(captured::PSQL15_CANCEL_REQUEST), &mut answered),
            FromApplication::Cancel(_)
        ));
        let FromApplication::Startup(startup) = from_application(
            initial(captured::PSQL15_STARTUP_ALICE_POSTGRES),
            &mut answered,
        ) else {
            panic!("the StartupMessage goes on");
        };
        assert_eq!(startup.database(), Some("postgres"));
    }

    /// The steps of captured PostgreSQL 15 logins, message by message.
    fn steps(capture: &str) -> Vec<LoginStep> {
        let data = bytes(capture);
        let mut rest = data.as_slice();
        let mut out = Vec::new();
        while let Some((frame, used)) = pg::parse_backend_frame(rest).unwrap() {
            out.push(login_step(&frame));
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        out
    }

    #[test]
    fn a_login_ends_at_ready_for_query_or_an_error_response() {
        for request in [
            captured::PG15_AUTH_SASL_PLAINTEXT,
            captured::PG15_AUTH_SASL_CONTINUE,
            captured::PG15_AUTH_MD5,
            captured::PG15_AUTH_CLEARTEXT,
        ] {
            assert_eq!(steps(request), [LoginStep::Continues]);
        }
        // SASLFinal, AuthenticationOk, 13 ParameterStatus, BackendKeyData:
        // still going; ReadyForQuery: done.
        let mut done = steps(captured::PG15_SASL_FINAL_TO_READY);
        assert_eq!(done.pop(), Some(LoginStep::Ready));
        assert!(done.iter().all(|s| *s == LoginStep::Continues), "{done:?}");
        assert_eq!(done.len(), 16);

        assert_eq!(
            steps(captured::PG15_ERROR_28P01),
            [LoginStep::Refused(
                "the server refused the login: FATAL 28P01: password authentication failed for user \"alice\"".into()
            )]
        );
    }
}
