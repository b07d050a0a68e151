//! The proxy's own login to PostgreSQL, for a pooled server connection:
//! the connection (plaintext, or TLS the way `upstream` asks for it, with
//! the user's client certificate for `server_auth = "cert"`), a
//! StartupMessage, the answers to the server's authentication (none,
//! clear text, md5, SCRAM-SHA-256 without channel binding) and the
//! session's parameters and cancel key, up to ReadyForQuery.
//!
//! The answers are decided by [`State`], which does no I/O: each server
//! message takes it to the next state and maybe a message to send, so the
//! exchange is tested over captured bytes; [`log_in`] only reads, writes and
//! bounds the time. A server's ErrorResponse comes back whole, so the
//! client the connection was for can be told what the server said. This
//! module never logs, and never keeps an authentication message past the
//! step that needs it.

use std::fmt;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use intransit_config::{Endpoint, ServerAuth};
use intransit_wire::pg::{
    self, session, AuthenticationRequest, BackendFrame, ErrorResponseFields, ProtocolVersion,
    StartupMessage,
};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::credentials::{Secret, ServerLogin, WayIn};
use crate::conn::Refused;
use crate::net::{BoxStream, Rewind};
use crate::protocol::postgres::upstream::{open_tls_upstream_presenting, open_upstream};
use crate::protocol::upstream;
use crate::refusal::RefusalReason;
use crate::tls::upstream::UpstreamSession;

/// What a CancelRequest for a server connection must carry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct BackendKey {
    /// The backend's process id.
    pub(crate) pid: u32,
    /// Its secret key (protocol 3.0: four bytes).
    pub(crate) secret: u32,
}

/// The secret lets anyone cancel the session's queries: not for logs.
impl fmt::Debug for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendKey")
            .field("pid", &self.pid)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// A server connection logged in and ready for a query.
pub(crate) struct LoggedIn {
    /// The connection, past ReadyForQuery.
    pub(crate) stream: BoxStream,
    /// Every ParameterStatus the server sent, in order.
    pub(crate) parameters: Vec<(String, String)>,
    /// The key that cancels its queries.
    pub(crate) key: BackendKey,
    /// What the upstream TLS negotiated, if the leg is TLS.
    pub(crate) tls: Option<UpstreamSession>,
}

impl fmt::Debug for LoggedIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggedIn")
            .field("parameters", &self.parameters.len())
            .field("key", &self.key)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The ErrorResponse a server refused a login with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerError {
    /// Its fields (SQLSTATE, message, ...).
    pub(crate) fields: ErrorResponseFields,
    /// The message as the server sent it ('E', length, body), to relay.
    pub(crate) frame: Vec<u8>,
}

/// Why a login failed.
#[derive(Debug)]
pub(crate) struct LoginFailure {
    /// Reason and detail for logs and metrics; the detail names the
    /// target, the user and the database.
    pub(crate) refused: Refused,
    /// The server's ErrorResponse, when it refused the login itself.
    pub(crate) server_error: Option<ServerError>,
}

impl From<Refused> for LoginFailure {
    fn from(refused: Refused) -> Self {
        LoginFailure {
            refused,
            server_error: None,
        }
    }
}

/// Connects to `target` and logs in to `database` as `user` the way
/// `login` says, sending `startup`'s pairs (such as `client_encoding` or
/// `application_name`; a `user` or `database` among them is left out for
/// the arguments) in the StartupMessage.
///
/// With the listener's upstream TLS the connection asks for TLS as
/// [`open_upstream`] does (SSLRequest, or direct TLS), presenting the
/// user's certificate for `server_auth = "cert"`. Connecting, the TLS
/// request and the handshake are each bounded by `connect_timeout`; the
/// login from the StartupMessage to ReadyForQuery by `login_timeout`.
pub(crate) async fn log_in(
    target: &Endpoint,
    login: &ServerLogin,
    database: &str,
    user: &str,
    startup: &[(String, String)],
    connect_timeout: Duration,
    login_timeout: Duration,
) -> Result<LoggedIn, LoginFailure> {
    let context = format!(
        "logging in to {target} as user {user:?} to database {database:?} (server_auth = {:?})",
        login.server_auth.as_str()
    );
    // Every refusal names the target, the user and the database, once.
    let in_context = |refused: Refused| {
        let what = refused
            .detail
            .strip_prefix(&format!("{target}: "))
            .unwrap_or(&refused.detail);
        let detail = format!("{context}: {what}");
        LoginFailure::from(
            Refused::new(refused.reason, detail).for_login(Some(user), Some(database)),
        )
    };
    let failed = |reason: RefusalReason, what: String| in_context(Refused::new(reason, what));

    let opened = match (&login.tls, &login.way) {
        (Some(tls), WayIn::Cert(cert)) => {
            open_tls_upstream_presenting(target, tls, Some(cert), connect_timeout)
                .await
                .map(|(stream, session)| (stream, Some(session)))
        }
        (None, WayIn::Cert(_)) => {
            return Err(failed(
                RefusalReason::ServerLoginFailed,
                "a client certificate needs TLS on the upstream leg, and the listener has no upstream_tls".into(),
            ))
        }
        (tls, _) => open_upstream(target, tls.as_deref(), connect_timeout).await,
    };
    let (mut stream, tls) = opened.map_err(in_context)?;

    let mut message = StartupMessage {
        protocol: ProtocolVersion::V3_0,
        params: vec![
            ("user".to_owned(), user.to_owned()),
            ("database".to_owned(), database.to_owned()),
        ],
    };
    for (key, value) in startup {
        if key != "user" && key != "database" {
            message.params.push((key.clone(), value.clone()));
        }
    }
    let startup = message.encode().map_err(|e| {
        failed(
            RefusalReason::ServerLoginFailed,
            format!("the StartupMessage cannot be built: {e}"),
        )
    })?;

    let answers = Answers {
        user,
        server_auth: login.server_auth,
        way: &login.way,
    };
    let exchange = exchange(&mut stream, &startup, &answers, target);
    let (parameters, key, unread) = match tokio::time::timeout(login_timeout, exchange).await {
        Ok(Ok(ready)) => ready,
        Ok(Err(Stop::Refused(refused))) => return Err(in_context(refused)),
        Ok(Err(Stop::Failed(step))) => {
            let mut failure = failed(step.reason, step.what);
            failure.server_error = step.server_error;
            return Err(failure);
        }
        Err(_) => {
            return Err(failed(
                RefusalReason::UpstreamUnavailable,
                format!("the server did not finish the login within {login_timeout:?} (server_login_timeout)"),
            ))
        }
    };
    // A server sends nothing after ReadyForQuery until asked, but a notice
    // may come at any time; whatever was read past it stays in front.
    if !unread.is_empty() {
        stream = Box::new(Rewind::new(unread.freeze(), stream));
    }
    Ok(LoggedIn {
        stream,
        parameters,
        key,
        tls,
    })
}

/// Why [`exchange`] stopped short of ReadyForQuery.
enum Stop {
    /// Reading or writing failed; the refusal says how.
    Refused(Refused),
    /// The exchange itself failed.
    Failed(Failed),
}

/// Sends the StartupMessage and answers the server until ReadyForQuery.
/// Returns the parameters, the key and any bytes read past ReadyForQuery.
async fn exchange(
    stream: &mut BoxStream,
    startup: &[u8],
    answers: &Answers<'_>,
    target: &Endpoint,
) -> Result<(Vec<(String, String)>, BackendKey, BytesMut), Stop> {
    send(stream, startup, target).await?;
    let mut state = State::AwaitingRequest;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        loop {
            let (next, used) = match pg::parse_backend_frame(&buf) {
                Ok(Some((frame, used))) => (state.on(frame, answers).map_err(Stop::Failed)?, used),
                Ok(None) => break,
                Err(e) => {
                    return Err(Stop::Failed(Failed::unavailable(format!(
                        "invalid message during the login: {e}"
                    ))))
                }
            };
            buf.advance(used);
            state = match next {
                Next::Continue(state, None) => state,
                Next::Continue(state, Some(reply)) => {
                    send(stream, &reply, target).await?;
                    state
                }
                Next::Ready(parameters, key) => return Ok((parameters, key, buf)),
            };
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| Stop::Refused(upstream::read_failed(&e, target, "reading the login")))?;
        if n == 0 {
            return Err(Stop::Failed(Failed::unavailable(format!(
                "the server closed the connection {}",
                state.waiting_for()
            ))));
        }
    }
}

async fn send(stream: &mut BoxStream, bytes: &[u8], target: &Endpoint) -> Result<(), Stop> {
    let written = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    written.await.map_err(|e| {
        Stop::Refused(Refused::new(
            RefusalReason::UpstreamUnavailable,
            format!("{target}: writing the login: {e}"),
        ))
    })
}

/// What answers the server's authentication requests.
struct Answers<'a> {
    user: &'a str,
    server_auth: ServerAuth,
    way: &'a WayIn,
}

/// A step of the login that failed, before the context is added.
#[derive(Debug)]
struct Failed {
    reason: RefusalReason,
    what: String,
    server_error: Option<ServerError>,
}

impl Failed {
    fn unavailable(what: String) -> Self {
        Failed {
            reason: RefusalReason::UpstreamUnavailable,
            what,
            server_error: None,
        }
    }

    fn cannot_answer(what: String) -> Self {
        Failed {
            reason: RefusalReason::ServerLoginFailed,
            what,
            server_error: None,
        }
    }

    /// The server's ErrorResponse, `frame` its whole message.
    fn server(body: &[u8], frame: Vec<u8>) -> Self {
        match pg::parse_error_response(body) {
            Ok(fields) => {
                let said = [
                    fields.severity(),
                    fields.get(pg::error_field::CODE),
                    fields.message(),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
                Failed {
                    reason: RefusalReason::UpstreamRefused,
                    what: format!("the server refused the login: {said}"),
                    server_error: Some(ServerError { fields, frame }),
                }
            }
            Err(e) => Failed::unavailable(format!("the server sent an invalid ErrorResponse: {e}")),
        }
    }
}

/// Where the login stands, between two server messages.
enum State {
    /// The StartupMessage is sent: the server asks for authentication, or
    /// lets the user in.
    AwaitingRequest,
    /// A password (clear text or md5) is sent: AuthenticationOk or an
    /// error.
    PasswordSent,
    /// The SCRAM client-first-message is sent: the server-first-message.
    ScramStarted(Box<ScramSha256>),
    /// The SCRAM client-final-message is sent: the server-final-message.
    ScramProofSent(Box<ScramSha256>),
    /// The server proved it knows the password: AuthenticationOk.
    ScramVerified,
    /// Authenticated: parameters and the cancel key until ReadyForQuery.
    Starting {
        parameters: Vec<(String, String)>,
        key: Option<BackendKey>,
    },
}

/// What a server message leads to.
enum Next {
    /// The next state, and a message to send first, if any.
    Continue(State, Option<Vec<u8>>),
    /// ReadyForQuery: the parameters and the key.
    Ready(Vec<(String, String)>, BackendKey),
}

impl State {
    /// Takes one server message.
    fn on(self, frame: BackendFrame<'_>, answers: &Answers<'_>) -> Result<Next, Failed> {
        match frame.tag {
            BackendFrame::ERROR_RESPONSE => {
                let mut whole = Vec::with_capacity(frame.body.len() + 5);
                whole.push(frame.tag);
                whole.extend_from_slice(
                    &u32::try_from(frame.body.len() + 4)
                        .unwrap_or(u32::MAX)
                        .to_be_bytes(),
                );
                whole.extend_from_slice(frame.body);
                return Err(Failed::server(frame.body, whole));
            }
            // Notices may come at any point; their text is the server's
            // business and is not kept.
            BackendFrame::NOTICE_RESPONSE => return Ok(Next::Continue(self, None)),
            // Only `_pq_.` options in the StartupMessage make a server
            // send this; it goes on with what it supports.
            BackendFrame::NEGOTIATE_PROTOCOL_VERSION if matches!(self, State::AwaitingRequest) => {
                return Ok(Next::Continue(self, None))
            }
            _ => {}
        }
        match (self, frame.tag) {
            (State::Starting { parameters, key }, tag) => {
                Self::starting(parameters, key, tag, frame.body)
            }
            (state, BackendFrame::AUTHENTICATION) => {
                let request = pg::parse_authentication(frame.body).map_err(|e| match e {
                    intransit_wire::WireError::UnsupportedAuthentication { code } => Failed::cannot_answer(format!(
                        "the server asks for authentication request code {code}, which the proxy cannot answer; use a pg_hba method the pool can: cert, scram-sha-256, md5, password or trust"
                    )),
                    other => Failed::unavailable(format!("invalid authentication request: {other}")),
                })?;
                state.authenticate(request, answers)
            }
            (state, tag) => Err(Failed::unavailable(format!(
                "unexpected message '{}' {}",
                tag.escape_ascii(),
                state.waiting_for()
            ))),
        }
    }

    /// What the state waits for, for messages.
    fn waiting_for(&self) -> &'static str {
        match self {
            State::AwaitingRequest => "before asking for authentication",
            State::PasswordSent => "after the password was sent",
            State::ScramStarted(_) | State::ScramProofSent(_) | State::ScramVerified => {
                "during SCRAM authentication"
            }
            State::Starting { .. } => "before ReadyForQuery",
        }
    }

    /// An authentication request in this state.
    fn authenticate(
        self,
        request: AuthenticationRequest<'_>,
        answers: &Answers<'_>,
    ) -> Result<Next, Failed> {
        use AuthenticationRequest as R;
        let authenticated = || {
            Ok(Next::Continue(
                State::Starting {
                    parameters: Vec::new(),
                    key: None,
                },
                None,
            ))
        };
        match (self, request) {
            (State::AwaitingRequest | State::PasswordSent | State::ScramVerified, R::Ok) => authenticated(),
            (State::AwaitingRequest, R::CleartextPassword) => {
                let password = match answers.secret("a password in clear text")? {
                    Secret::Plain(password) => password,
                    Secret::Md5(_) => {
                        return Err(Failed::cannot_answer(
                            "the server asks for the password in clear text (pg_hba password), which the md5 hash in auth_file cannot answer; store the password itself in auth_file".into(),
                        ))
                    }
                };
                let reply = pg::encode_password_message(password.as_bytes())
                    .map_err(|e| Failed::cannot_answer(format!("the password cannot be sent: {e}")))?;
                Ok(Next::Continue(State::PasswordSent, Some(reply)))
            }
            (State::AwaitingRequest, R::Md5Password { salt }) => {
                let answer = match answers.secret("an md5 password")? {
                    Secret::Plain(password) => postgres_protocol::authentication::md5_hash(
                        answers.user.as_bytes(),
                        password.as_bytes(),
                        salt,
                    ),
                    Secret::Md5(hex) => md5_answer_from_hash(hex, salt),
                };
                let reply = pg::encode_password_message(answer.as_bytes())
                    .map_err(|e| Failed::cannot_answer(format!("the password cannot be sent: {e}")))?;
                Ok(Next::Continue(State::PasswordSent, Some(reply)))
            }
            (State::AwaitingRequest, R::Sasl { mechanisms }) => {
                if !mechanisms.contains(&pg::SCRAM_SHA_256) {
                    return Err(Failed::cannot_answer(format!(
                        "the server offers SASL mechanisms [{}], none of which is SCRAM-SHA-256, the one the proxy speaks",
                        mechanisms.join(", ")
                    )));
                }
                let password = match answers.secret("a SCRAM-SHA-256 password")? {
                    Secret::Plain(password) => password,
                    Secret::Md5(_) => {
                        return Err(Failed::cannot_answer(
                            "the server asks for SCRAM-SHA-256, which the md5 hash in auth_file cannot answer; store the password itself in auth_file".into(),
                        ))
                    }
                };
                // Channel binding would tie the exchange to the TLS session
                // on this leg, which the proxy could do; but the GS2 flag
                // `n` (client without binding) is accepted by every server,
                // whether or not it offered SCRAM-SHA-256-PLUS.
                let scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                let reply = pg::encode_sasl_initial_response(pg::SCRAM_SHA_256, scram.message())
                    .map_err(|e| Failed::cannot_answer(format!("the SCRAM message cannot be sent: {e}")))?;
                Ok(Next::Continue(State::ScramStarted(Box::new(scram)), Some(reply)))
            }
            (State::ScramStarted(mut scram), R::SaslContinue { data }) => {
                scram
                    .update(data)
                    .map_err(|e| Failed::unavailable(format!("invalid SCRAM server-first-message: {e}")))?;
                let reply = pg::encode_sasl_response(scram.message());
                Ok(Next::Continue(State::ScramProofSent(scram), Some(reply)))
            }
            (State::ScramProofSent(mut scram), R::SaslFinal { data }) => {
                scram.finish(data).map_err(|e| {
                    Failed::cannot_answer(format!(
                        "the server's SCRAM signature does not verify ({e}): it does not hold this password's verifier, so it may not be the database it claims to be"
                    ))
                })?;
                Ok(Next::Continue(State::ScramVerified, None))
            }
            (State::AwaitingRequest, R::Gss | R::Sspi | R::GssContinue { .. }) => Err(Failed::cannot_answer(
                "the server asks for GSSAPI or SSPI, which the proxy cannot answer; give the proxy's address a pg_hba method the pool can: cert, scram-sha-256, md5, password or trust".into(),
            )),
            (state, request) => Err(Failed::unavailable(format!(
                "unexpected authentication request {} {}",
                request_name(&request),
                state.waiting_for()
            ))),
        }
    }

    /// A message after authentication: parameters, the key, ReadyForQuery.
    fn starting(
        mut parameters: Vec<(String, String)>,
        mut key: Option<BackendKey>,
        tag: u8,
        body: &[u8],
    ) -> Result<Next, Failed> {
        match tag {
            BackendFrame::PARAMETER_STATUS => {
                let (name, value) = session::parse_parameter_status(body)
                    .map_err(|e| Failed::unavailable(format!("invalid ParameterStatus: {e}")))?;
                parameters.push((name.to_owned(), value.to_owned()));
            }
            BackendFrame::BACKEND_KEY_DATA => {
                let (pid, secret) = session::parse_backend_key_data(body)
                    .map_err(|e| Failed::unavailable(format!("invalid BackendKeyData: {e}")))?;
                let secret = <[u8; 4]>::try_from(secret).map_err(|_| {
                    Failed::unavailable(format!(
                        "BackendKeyData with a {}-byte key in protocol 3.0, which has 4",
                        secret.len()
                    ))
                })?;
                key = Some(BackendKey {
                    pid,
                    secret: u32::from_be_bytes(secret),
                });
            }
            BackendFrame::READY_FOR_QUERY => {
                return match key {
                    Some(key) => Ok(Next::Ready(parameters, key)),
                    None => Err(Failed::unavailable(
                        "ReadyForQuery without BackendKeyData: the session's queries could not be cancelled".into(),
                    )),
                };
            }
            other => {
                return Err(Failed::unavailable(format!(
                    "unexpected message '{}' before ReadyForQuery",
                    other.escape_ascii()
                )))
            }
        }
        Ok(Next::Continue(State::Starting { parameters, key }, None))
    }
}

impl Answers<'_> {
    /// The user's password, for a server that asks for `what`; a user who
    /// logs in another way cannot answer.
    fn secret(&self, what: &str) -> Result<&Secret, Failed> {
        match self.way {
            WayIn::Password(secret) => Ok(secret),
            WayIn::Trust | WayIn::Cert(_) => Err(Failed::cannot_answer(format!(
                "the server asks for {what}, but the user's server_auth is {:?}: set server_auth = \"password\" for the user with its password in auth_file, or give the proxy a pg_hba rule of {}",
                self.server_auth.as_str(),
                match self.server_auth {
                    ServerAuth::Cert => "method cert (hostssl ... cert) for this user",
                    _ => "method trust for this user and the proxy's address",
                }
            ))),
        }
    }
}

/// The md5 answer from a stored hash (`md5` + hex MD5 of password and
/// user, as pg_authid holds it): `md5` + hex MD5 of that hex and the salt,
/// which is what libpq computes from the password.
fn md5_answer_from_hash(hex: &str, salt: [u8; 4]) -> String {
    use md5::Digest as _;
    let mut md5 = md5::Md5::new();
    md5.update(hex.as_bytes());
    md5.update(salt);
    let digest = md5.finalize();
    let mut answer = String::with_capacity(35);
    answer.push_str("md5");
    for b in digest.iter() {
        answer.push_str(&format!("{b:02x}"));
    }
    answer
}

/// The name of an authentication request, for messages.
fn request_name(request: &AuthenticationRequest<'_>) -> &'static str {
    match request {
        AuthenticationRequest::Ok => "AuthenticationOk",
        AuthenticationRequest::CleartextPassword => "AuthenticationCleartextPassword",
        AuthenticationRequest::Md5Password { .. } => "AuthenticationMD5Password",
        AuthenticationRequest::Gss => "AuthenticationGSS",
        AuthenticationRequest::GssContinue { .. } => "AuthenticationGSSContinue",
        AuthenticationRequest::Sspi => "AuthenticationSSPI",
        AuthenticationRequest::Sasl { .. } => "AuthenticationSASL",
        AuthenticationRequest::SaslContinue { .. } => "AuthenticationSASLContinue",
        AuthenticationRequest::SaslFinal { .. } => "AuthenticationSASLFinal",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Arc;

    use intransit_wire::pg::captured::{self, bytes};
    use intransit_wire::pg::{FrontendFrame, SqlState};

    use super::*;

    fn password(secret: Secret) -> WayIn {
        WayIn::Password(Arc::new(secret))
    }

    /// How [`drive`] ended: ready, failed, or out of messages.
    type Ended = Result<Option<(Vec<(String, String)>, BackendKey)>, Failed>;

    /// Feeds the frames of `stream` to `state` until it is ready or fails;
    /// returns the messages it sent and how it ended.
    fn drive(
        mut state: State,
        stream: &[u8],
        user: &str,
        server_auth: ServerAuth,
        way: &WayIn,
    ) -> (Vec<Vec<u8>>, Ended) {
        let answers = Answers {
            user,
            server_auth,
            way,
        };
        let mut sent = Vec::new();
        let mut rest = stream;
        while let Some((frame, used)) = pg::parse_backend_frame(rest).unwrap() {
            rest = &rest[used..];
            match state.on(frame, &answers) {
                Ok(Next::Continue(next, reply)) => {
                    sent.extend(reply);
                    state = next;
                }
                Ok(Next::Ready(parameters, key)) => return (sent, Ok(Some((parameters, key)))),
                Err(failed) => return (sent, Err(failed)),
            }
        }
        (sent, Ok(None))
    }

    fn md5_hex(text: &str) -> String {
        use md5::Digest as _;
        md5::Md5::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn md5_is_answered_as_psql_answered_it_from_the_password_or_its_hash() {
        let request = bytes(captured::PG15_AUTH_MD5);
        let expected = bytes(captured::PSQL15_MD5_PASSWORD);
        for secret in [
            Secret::Plain("secret".into()),
            Secret::Md5(md5_hex("secretbob")),
        ] {
            let way = password(secret);
            let (sent, end) = drive(
                State::AwaitingRequest,
                &request,
                "bob",
                ServerAuth::Password,
                &way,
            );
            assert!(matches!(end, Ok(None)));
            assert_eq!(sent, std::slice::from_ref(&expected));
        }
    }

    #[test]
    fn clear_text_is_answered_with_the_password_only() {
        let request = bytes(captured::PG15_AUTH_CLEARTEXT);
        let way = password(Secret::Plain("pw \"1\"".into()));
        let (sent, _) = drive(
            State::AwaitingRequest,
            &request,
            "bob",
            ServerAuth::Password,
            &way,
        );
        assert_eq!(sent, [pg::encode_password_message(b"pw \"1\"").unwrap()]);

        let way = password(Secret::Md5(md5_hex("pwbob")));
        let (sent, end) = drive(
            State::AwaitingRequest,
            &request,
            "bob",
            ServerAuth::Password,
            &way,
        );
        assert!(sent.is_empty());
        let failed = end.unwrap_err();
        assert_eq!(failed.reason, RefusalReason::ServerLoginFailed);
        assert!(
            failed.what.contains("store the password itself"),
            "{}",
            failed.what
        );
    }

    #[test]
    fn scram_is_chosen_without_channel_binding_even_when_plus_is_offered() {
        for offer in [
            captured::PG15_AUTH_SASL_TLS,
            captured::PG15_AUTH_SASL_PLAINTEXT,
            captured::PG15_NEGOTIATE_THEN_SASL,
        ] {
            let way = password(Secret::Plain("pw".into()));
            let (sent, end) = drive(
                State::AwaitingRequest,
                &bytes(offer),
                "alice",
                ServerAuth::Password,
                &way,
            );
            assert!(matches!(end, Ok(None)), "{offer}");
            let [first] = &sent[..] else {
                panic!("{offer}: {sent:?}")
            };
            let (frame, _) = pg::parse_frontend_frame(first).unwrap().unwrap();
            assert_eq!(frame.tag, FrontendFrame::PASSWORD);
            let response = pg::parse_sasl_initial_response(frame.body).unwrap();
            assert_eq!(response.mechanism, pg::SCRAM_SHA_256);
            assert_eq!(response.channel_binding_flag(), Some(b'n'));
        }

        let way = password(Secret::Md5(md5_hex("pwalice")));
        let (sent, end) = drive(
            State::AwaitingRequest,
            &bytes(captured::PG15_AUTH_SASL_TLS),
            "alice",
            ServerAuth::Password,
            &way,
        );
        assert!(sent.is_empty());
        let failed = end.unwrap_err();
        assert_eq!(failed.reason, RefusalReason::ServerLoginFailed);
        assert!(
            failed.what.contains("SCRAM-SHA-256")
                && failed.what.contains("store the password itself"),
            "{}",
            failed.what
        );

        let plus_only = pg::encode_authentication_sasl(&[pg::SCRAM_SHA_256_PLUS]).unwrap();
        let (_, end) = drive(
            State::AwaitingRequest,
            &plus_only,
            "alice",
            ServerAuth::Password,
            &password(Secret::Plain("pw".into())),
        );
        assert!(end
            .unwrap_err()
            .what
            .contains("none of which is SCRAM-SHA-256"));
    }

    #[test]
    fn a_password_asked_of_a_trust_or_cert_user_says_which_server_auth_to_use() {
        for (server_auth, words) in [
            (ServerAuth::Trust, "method trust"),
            (ServerAuth::Cert, "hostssl ... cert"),
        ] {
            for request in [
                captured::PG15_AUTH_MD5,
                captured::PG15_AUTH_CLEARTEXT,
                captured::PG15_AUTH_SASL_TLS,
            ] {
                let (sent, end) = drive(
                    State::AwaitingRequest,
                    &bytes(request),
                    "alice",
                    server_auth,
                    &WayIn::Trust,
                );
                assert!(sent.is_empty());
                let failed = end.unwrap_err();
                assert_eq!(failed.reason, RefusalReason::ServerLoginFailed);
                assert!(
                    failed.what.contains("server_auth = \"password\""),
                    "{}",
                    failed.what
                );
                assert!(failed.what.contains(words), "{}", failed.what);
            }
        }
    }

    #[test]
    fn gss_and_unknown_methods_cannot_be_answered() {
        let gss = [b'R', 0, 0, 0, 8, 0, 0, 0, 7];
        let unknown = [b'R', 0, 0, 0, 8, 0, 0, 0, 13];
        for (request, words) in [(&gss[..], "GSSAPI"), (&unknown[..], "code 13")] {
            let way = password(Secret::Plain("pw".into()));
            let (_, end) = drive(
                State::AwaitingRequest,
                request,
                "alice",
                ServerAuth::Password,
                &way,
            );
            let failed = end.unwrap_err();
            assert_eq!(failed.reason, RefusalReason::ServerLoginFailed);
            assert!(failed.what.contains(words), "{}", failed.what);
        }
    }

    #[test]
    fn the_servers_error_comes_back_whole() {
        let error = bytes(captured::PG15_ERROR_28P01);
        let way = password(Secret::Plain("wrong".into()));
        let (_, end) = drive(
            State::PasswordSent,
            &error,
            "alice",
            ServerAuth::Password,
            &way,
        );
        let failed = end.unwrap_err();
        assert_eq!(failed.reason, RefusalReason::UpstreamRefused);
        assert!(
            failed
                .what
                .contains("FATAL 28P01 password authentication failed"),
            "{}",
            failed.what
        );
        let server_error = failed.server_error.unwrap();
        assert_eq!(server_error.fields.code(), Some(SqlState::INVALID_PASSWORD));
        assert_eq!(server_error.frame, error);
    }

    #[test]
    fn parameters_and_key_are_kept_until_ready_for_query() {
        let stream = bytes(captured::PG15_SASL_FINAL_TO_READY);
        // After the SASL final message: AuthenticationOk onwards.
        let (_, used) = pg::parse_backend_frame(&stream).unwrap().unwrap();
        let way = password(Secret::Plain("pw".into()));
        let (sent, end) = drive(
            State::ScramVerified,
            &stream[used..],
            "alice",
            ServerAuth::Password,
            &way,
        );
        assert!(sent.is_empty());
        let (parameters, key) = end.unwrap().expect("ReadyForQuery");
        assert_eq!(parameters.len(), 13);
        assert_eq!(
            parameters[0],
            ("application_name".to_owned(), "cap".to_owned())
        );
        assert!(parameters.contains(&("session_authorization".to_owned(), "alice".to_owned())));
        assert_eq!(
            key,
            BackendKey {
                pid: 0x297f,
                secret: 0xa12a_17f8
            }
        );
        assert!(!format!("{key:?}").contains(&0xa12a_17f8u32.to_string()));

        // The same stream without its BackendKeyData is refused.
        let mut rest = &stream[used..];
        let mut without_key = Vec::new();
        while let Some((frame, n)) = pg::parse_backend_frame(rest).unwrap() {
            if frame.tag != BackendFrame::BACKEND_KEY_DATA {
                without_key.extend_from_slice(&rest[..n]);
            }
            rest = &rest[n..];
        }
        let (_, end) = drive(
            State::ScramVerified,
            &without_key,
            "alice",
            ServerAuth::Password,
            &way,
        );
        assert!(end.unwrap_err().what.contains("without BackendKeyData"));
    }

    #[test]
    fn out_of_order_messages_are_refused() {
        let way = password(Secret::Plain("pw".into()));
        // ReadyForQuery before any authentication.
        let (_, end) = drive(
            State::AwaitingRequest,
            &[b'Z', 0, 0, 0, 5, b'I'],
            "alice",
            ServerAuth::Password,
            &way,
        );
        assert_eq!(end.unwrap_err().reason, RefusalReason::UpstreamUnavailable);
        // A SASL final message where a password's verdict is due.
        let (_, end) = drive(
            State::PasswordSent,
            &bytes(captured::PG15_SASL_FINAL_TO_READY),
            "alice",
            ServerAuth::Password,
            &way,
        );
        assert!(end.unwrap_err().what.contains("AuthenticationSASLFinal"));
    }
}

/// Logins against a real PostgreSQL 15 started by the testkit.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod against_postgres {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, OnceLock};

    use intransit_config::{
        PoolConfig, PoolUser, TlsVersion, UpstreamServerName, UpstreamTls as UpstreamTlsConfig,
        UpstreamTlsMode,
    };
    use intransit_pki::{
        CertificateAuthority, CertificateKind, IssueRequest, KeyAlgorithm, Validity,
    };
    use intransit_testkit::{PgOptions, PgServer, PgSsl};
    use intransit_wire::pg::SqlState;

    use super::super::credentials::Credentials;
    use super::*;
    use crate::tls::upstream::UpstreamTls;

    const CONNECT: Duration = Duration::from_secs(10);
    const LOGIN: Duration = Duration::from_secs(20);

    fn pool(server_auth: ServerAuth) -> PoolConfig {
        PoolConfig {
            server_login_timeout: LOGIN,
            ..super::super::test_config(server_auth)
        }
    }

    fn endpoint(pg: &PgServer) -> Endpoint {
        Endpoint::Tcp {
            host: pg.host().to_owned(),
            port: pg.port(),
        }
    }

    fn md5_hex(text: &str) -> String {
        use md5::Digest as _;
        md5::Md5::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A PostgreSQL without TLS whose pg_hba gives each user a method, and
    /// the credentials of a pool logging in to it.
    struct PlainDb {
        pg: PgServer,
        credentials: Credentials,
    }

    fn plain_db() -> &'static PlainDb {
        static DB: OnceLock<PlainDb> = OnceLock::new();
        DB.get_or_init(|| {
            let pg = PgServer::start(PgOptions {
                hba_first: vec![
                    "host all pool_trust 127.0.0.1/32 trust".into(),
                    "host all pool_md5 127.0.0.1/32 md5".into(),
                    "host all pool_md5h 127.0.0.1/32 md5".into(),
                    "host all pool_clear 127.0.0.1/32 password".into(),
                ],
                ..PgOptions::default()
            })
            .expect("PostgreSQL");
            pg.psql(
                "postgres",
                "CREATE ROLE pool_trust LOGIN; \
                 CREATE ROLE pool_scram LOGIN PASSWORD 'scram-pw'; \
                 CREATE ROLE pool_clear LOGIN PASSWORD 'clear-pw'; \
                 CREATE ROLE pool_wrong LOGIN PASSWORD 'right-pw'; \
                 CREATE ROLE pool_asks LOGIN PASSWORD 'asks-pw'; \
                 SET password_encryption = 'md5'; \
                 CREATE ROLE pool_md5 LOGIN PASSWORD 'md5-pw'; \
                 CREATE ROLE pool_md5h LOGIN PASSWORD 'md5h-pw';",
            )
            .expect("roles");
            let dir = tempfile::tempdir().unwrap();
            let auth_file = dir.path().join("userlist.txt");
            std::fs::write(
                &auth_file,
                format!(
                    "; the pool's passwords\n\
                     \"pool_scram\" \"scram-pw\"\n\
                     \"pool_clear\" \"clear-pw\"\n\
                     \"pool_md5\" \"md5-pw\"\n\
                     \"pool_md5h\" \"md5{}\"\n\
                     \"pool_wrong\" \"wrong-pw\"\n",
                    md5_hex("md5h-pwpool_md5h")
                ),
            )
            .unwrap();
            std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(0o600)).unwrap();
            let mut config = pool(ServerAuth::Password);
            config.auth_file = Some(auth_file);
            for user in ["pool_trust", "pool_asks"] {
                config.users.insert(
                    user.into(),
                    PoolUser {
                        server_auth: Some(ServerAuth::Trust),
                        ..PoolUser::default()
                    },
                );
            }
            // Everything is in memory once loaded.
            let credentials = Credentials::load(&config, None).expect("credentials");
            PlainDb { pg, credentials }
        })
    }

    /// Runs `sql` on a logged-in connection; the first column of each row.
    async fn query(stream: &mut BoxStream, sql: &str) -> Vec<String> {
        let mut message = Vec::new();
        session::encode_query(sql, &mut message).unwrap();
        stream.write_all(&message).await.unwrap();
        stream.flush().await.unwrap();
        let mut buf = BytesMut::new();
        let mut rows = Vec::new();
        loop {
            while let Some((frame, used)) = pg::parse_backend_frame(&buf).unwrap() {
                match frame.tag {
                    b'D' => {
                        let len = i32::from_be_bytes(frame.body[2..6].try_into().unwrap());
                        let value = &frame.body[6..6 + usize::try_from(len).unwrap()];
                        rows.push(String::from_utf8(value.to_vec()).unwrap());
                    }
                    b'E' => panic!("{:?}", pg::parse_error_response(frame.body).unwrap()),
                    b'Z' => return rows,
                    _ => {}
                }
                buf.advance(used);
            }
            assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "closed");
        }
    }

    async fn log_in_as(
        db: &PgServer,
        credentials: &Credentials,
        user: &str,
    ) -> Result<LoggedIn, LoginFailure> {
        let login = credentials.for_user(user).map_err(LoginFailure::from)?;
        let startup = [
            ("application_name".to_owned(), "pool-login-test".to_owned()),
            ("client_encoding".to_owned(), "UTF8".to_owned()),
            ("user".to_owned(), "ignored".to_owned()),
        ];
        log_in(
            &endpoint(db),
            &login,
            "postgres",
            user,
            &startup,
            CONNECT,
            LOGIN,
        )
        .await
    }

    /// Logs in as `user` and checks who the server thinks it is.
    async fn logs_in(db: &PgServer, credentials: &Credentials, user: &str) -> LoggedIn {
        let mut logged_in = log_in_as(db, credentials, user)
            .await
            .unwrap_or_else(|f| panic!("{user}: {}", f.refused.detail));
        let parameter = |name: &str| {
            logged_in
                .parameters
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(parameter("session_authorization").as_deref(), Some(user));
        assert_eq!(
            parameter("application_name").as_deref(),
            Some("pool-login-test")
        );
        assert!(
            parameter("server_version").is_some_and(|v| v.starts_with("15")),
            "{:?}",
            logged_in.parameters
        );
        let pid = query(&mut logged_in.stream, "SELECT pg_backend_pid()").await;
        assert_eq!(pid, [logged_in.key.pid.to_string()]);
        assert_eq!(
            query(&mut logged_in.stream, "SELECT current_user").await,
            [user]
        );
        logged_in
    }

    #[tokio::test]
    async fn trust() {
        let db = plain_db();
        let logged_in = logs_in(&db.pg, &db.credentials, "pool_trust").await;
        assert!(logged_in.tls.is_none());
    }

    #[tokio::test]
    async fn password_with_scram_sha_256() {
        let db = plain_db();
        logs_in(&db.pg, &db.credentials, "pool_scram").await;
    }

    #[tokio::test]
    async fn password_with_md5_from_the_password_or_its_hash() {
        let db = plain_db();
        logs_in(&db.pg, &db.credentials, "pool_md5").await;
        logs_in(&db.pg, &db.credentials, "pool_md5h").await;
    }

    #[tokio::test]
    async fn password_in_clear_text() {
        let db = plain_db();
        logs_in(&db.pg, &db.credentials, "pool_clear").await;
    }

    #[tokio::test]
    async fn a_wrong_password_carries_the_servers_28p01() {
        let db = plain_db();
        let failure = log_in_as(&db.pg, &db.credentials, "pool_wrong")
            .await
            .unwrap_err();
        assert_eq!(failure.refused.reason, RefusalReason::UpstreamRefused);
        let detail = &failure.refused.detail;
        let target = endpoint(&db.pg).to_string();
        for names in [target.as_str(), "\"pool_wrong\"", "\"postgres\"", "28P01"] {
            assert!(detail.contains(names), "{names}: {detail}");
        }
        assert!(!detail.contains("wrong-pw"), "{detail}");
        let server_error = failure.server_error.expect("the server's error");
        assert_eq!(server_error.fields.code(), Some(SqlState::INVALID_PASSWORD));
        assert_eq!(server_error.frame[0], b'E');
        let login = failure.refused.login.expect("names");
        assert_eq!(login.user.as_deref(), Some("pool_wrong"));
        assert_eq!(login.database.as_deref(), Some("postgres"));
    }

    #[tokio::test]
    async fn a_password_asked_of_a_trust_user_is_not_guessed() {
        let db = plain_db();
        let failure = log_in_as(&db.pg, &db.credentials, "pool_asks")
            .await
            .unwrap_err();
        assert_eq!(failure.refused.reason, RefusalReason::ServerLoginFailed);
        assert!(failure.server_error.is_none());
        assert!(
            failure
                .refused
                .detail
                .contains("server_auth = \"password\""),
            "{}",
            failure.refused.detail
        );
        let missing = log_in_as(&db.pg, &db.credentials, "pool_nobody")
            .await
            .unwrap_err();
        assert_eq!(missing.refused.reason, RefusalReason::ServerLoginFailed);
        assert!(
            missing.refused.detail.contains("auth_file"),
            "{}",
            missing.refused.detail
        );
    }

    /// A PostgreSQL with TLS whose pg_hba logs everyone in by client
    /// certificate, trusting the CA that mints them.
    struct TlsDb {
        pg: PgServer,
        /// The minting CA's state directory.
        state: PathBuf,
        /// A client certificate issued ahead for `pool_configured`.
        configured: intransit_pki::CertificatePaths,
        _dir: tempfile::TempDir,
    }

    fn tls_db() -> &'static TlsDb {
        static DB: OnceLock<TlsDb> = OnceLock::new();
        DB.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            let ca = CertificateAuthority::generate(
                "pool login test CA",
                KeyAlgorithm::EcdsaP256,
                Validity::days_from_now(10),
            )
            .unwrap();
            ca.save(&state.join("ca")).unwrap();
            let issue = |kind, name: &str, ips: Vec<std::net::IpAddr>, to: &Path| {
                ca.issue(&IssueRequest {
                    kind,
                    common_name: name.to_owned(),
                    dns_names: if kind == CertificateKind::Server { vec!["localhost".into()] } else { vec![] },
                    ip_addresses: ips,
                    uris: Vec::new(),
                    key: KeyAlgorithm::EcdsaP256,
                    validity: Validity::days_from_now(5),
                })
                .unwrap()
                .write_to(to)
                .unwrap()
            };
            let server = issue(CertificateKind::Server, "localhost", vec!["127.0.0.1".parse().unwrap()], &dir.path().join("server"));
            let configured = issue(CertificateKind::Client, "pool_configured", vec![], &dir.path().join("configured"));
            let pg = PgServer::start(PgOptions {
                ssl: Some(PgSsl {
                    cert_file: server.chain.clone(),
                    key_file: server.key.clone(),
                    ca_file: state.join("ca").join("ca.pem"),
                }),
                hba_first: vec![
                    "hostssl all all 127.0.0.1/32 cert".into(),
                    "hostnossl all all 127.0.0.1/32 reject".into(),
                ],
                ..PgOptions::default()
            })
            .expect("PostgreSQL with TLS");
            pg.psql(
                "postgres",
                "CREATE ROLE pool_minted LOGIN; CREATE ROLE pool_configured LOGIN; CREATE ROLE pool_other LOGIN;",
            )
            .expect("roles");
            TlsDb {
                pg,
                state,
                configured,
                _dir: dir,
            }
        })
    }

    fn upstream_tls(db: &TlsDb) -> Arc<UpstreamTls> {
        Arc::new(
            UpstreamTls::build(&UpstreamTlsConfig {
                mode: UpstreamTlsMode::VerifyFull,
                ca: Some(db.state.join("ca").join("ca.pem")),
                cert: None,
                key: None,
                server_name: UpstreamServerName::Ip("127.0.0.1".parse().unwrap()),
                server_name_explicit: false,
                pins: Vec::new(),
                min_version: TlsVersion::V1_3,
                direct: false,
            })
            .unwrap(),
        )
    }

    fn cert_credentials(db: &TlsDb) -> Credentials {
        let mut config = pool(ServerAuth::Cert);
        config.cert_authority = Some(db.state.clone());
        config.users.insert(
            "pool_configured".into(),
            PoolUser {
                server_auth: Some(ServerAuth::Cert),
                cert: Some(db.configured.cert.clone()),
                key: Some(db.configured.key.clone()),
                size: None,
            },
        );
        // A configured certificate whose CN is another user's.
        config.users.insert(
            "pool_other".into(),
            PoolUser {
                server_auth: Some(ServerAuth::Cert),
                cert: Some(db.configured.cert.clone()),
                key: Some(db.configured.key.clone()),
                size: None,
            },
        );
        Credentials::load(&config, Some(upstream_tls(db))).expect("credentials")
    }

    const CLIENT_DN: &str = "SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    #[tokio::test]
    async fn cert_with_a_minted_certificate() {
        let db = tls_db();
        let credentials = cert_credentials(db);
        let mut logged_in = logs_in(&db.pg, &credentials, "pool_minted").await;
        let tls = logged_in.tls.expect("TLS facts");
        assert_eq!(tls.tls.version, "TLSv1_3");
        assert_eq!(
            query(&mut logged_in.stream, CLIENT_DN).await,
            ["/CN=pool_minted"]
        );
        // The next login reuses the certificate and the configuration.
        let mut again = logs_in(&db.pg, &credentials, "pool_minted").await;
        assert_eq!(
            query(&mut again.stream, CLIENT_DN).await,
            ["/CN=pool_minted"]
        );
    }

    #[tokio::test]
    async fn cert_with_a_configured_certificate() {
        let db = tls_db();
        let credentials = cert_credentials(db);
        let mut logged_in = logs_in(&db.pg, &credentials, "pool_configured").await;
        assert_eq!(
            query(&mut logged_in.stream, CLIENT_DN).await,
            ["/CN=pool_configured"]
        );

        let failure = log_in_as(&db.pg, &credentials, "pool_other")
            .await
            .unwrap_err();
        assert_eq!(failure.refused.reason, RefusalReason::UpstreamRefused);
        let fields = failure.server_error.expect("the server's error").fields;
        assert_eq!(
            fields.code(),
            Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        );
        assert!(
            fields
                .message()
                .is_some_and(|m| m.contains("certificate authentication failed")),
            "{fields:?}"
        );
    }
}
