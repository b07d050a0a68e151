//! PostgreSQL negotiation, as a typed state machine over one connection.
//!
//! ```text
//! AwaitingRequest --SSLRequest--> 'S' --> TlsRequested
//!        |  ^   \--first byte 0x16 (direct TLS)--> TlsRequested
//!        |  '--GSSENCRequest--> 'N' (once)
//!        |--CancelRequest--> forwarded upstream, closed
//!        '--StartupMessage--> ErrorResponse 28000 (TLS required), closed
//! TlsRequested --handshake + policy--> TlsEstablished
//! TlsEstablished --StartupMessage--> StartupReceived --db_users--> Authorized
//! Authorized --connect upstream [SSLRequest, TLS], send StartupMessage--> bytes copied both ways
//! ```
//!
//! With `upstream_tls`, the proxy sends its own SSLRequest upstream (or
//! starts TLS at once with ALPN `postgresql` when `direct`) and runs TLS
//! before the StartupMessage, and removes `SCRAM-SHA-256-PLUS` from the
//! server's first authentication request: the client's channel binding
//! would name the proxy's certificate, not the server's.
//!
//! Client mode (`serve_client`) is the mirror image over the same upstream
//! connector ([`open_tls_upstream`]):
//!
//! ```text
//! plaintext from a local application:
//!   SSLRequest --> 'N' (once)      GSSENCRequest --> 'N' (once)
//!   CancelRequest --> forwarded upstream over TLS, closed
//!   StartupMessage --> connect, SSLRequest (or direct TLS), TLS, StartupMessage --> bytes copied
//!   first byte 0x16 (the application starts TLS) --> closed
//! ```
//!
//! The server, on TLS, offers `SCRAM-SHA-256-PLUS`; libpq on a connection
//! without TLS refuses such an offer ("server offered SCRAM-SHA-256-PLUS
//! authentication over a non-SSL connection"), so client mode removes it
//! too. The application then uses SCRAM-SHA-256 with the GS2 flag `n` (it
//! cannot bind a channel), which the server accepts on TLS.
//!
//! Each state is its own type and each step consumes it, so a connection
//! cannot skip the TLS handshake or the user check. This module owns the
//! order of events and the messages sent to clients; the bytes themselves
//! are built and parsed by `intransit_wire::pg`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use intransit_config::Endpoint;
use intransit_wire::pg::{
    self, BackendFrame, CancelRequest, ErrorResponse, FrontendFrame, InitialMessage, SqlState,
    StartupMessage,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::copy;
use crate::listener::client_mode::{self, PreparedClientListener};
use crate::listener::server_mode::{ConnectionContext, Listener, PreparedRoute, Refused};
use crate::net::{self, BoxStream, Rewind};
use crate::refusal::RefusalReason;
use crate::tls::handshake::{self, Accepted, ClientTls};
use crate::tls::listener::ALPN_POSTGRESQL;
use crate::tls::upstream::{UpstreamSession, UpstreamTls};

const SQLSTATE_INVALID_AUTHORIZATION: SqlState = SqlState::INVALID_AUTHORIZATION_SPECIFICATION;
const SQLSTATE_CONNECTION_FAILURE: SqlState = SqlState::CONNECTION_FAILURE;
const SQLSTATE_PROTOCOL_VIOLATION: SqlState = SqlState::PROTOCOL_VIOLATION;
const SQLSTATE_TOO_MANY_CONNECTIONS: SqlState = SqlState::TOO_MANY_CONNECTIONS;

/// Runs one client connection from accept to close. The negotiation part is
/// bounded by the listener's handshake timeout; the copy phase is not.
///
/// `over_limit` connections are negotiated only as far as needed to tell
/// the client, inside TLS, that the proxy is full: a plaintext error before
/// the handshake would be unauthenticated, and libpq rightly ignores it.
pub(crate) async fn serve(
    ctx: ConnectionContext,
    stream: BoxStream,
    over_limit: bool,
) -> Result<(), Refused> {
    let negotiated = tokio::time::timeout(
        ctx.listener.handshake_timeout,
        negotiate(&ctx, stream, over_limit),
    )
    .await
    .map_err(|_| {
        Refused::new(
            RefusalReason::Timeout,
            "client did not finish negotiating in time",
        )
    })??;
    let Some(session) = negotiated else {
        return Ok(());
    };
    session.forward(&ctx).await;
    Ok(())
}

async fn negotiate(
    ctx: &ConnectionContext,
    stream: BoxStream,
    over_limit: bool,
) -> Result<Option<Session>, Refused> {
    let state = AwaitingRequest {
        stream,
        buf: BytesMut::with_capacity(512),
        gssenc_answered: false,
    };
    let tls_requested = match state.next(ctx).await? {
        Request::Tls(t) => t,
        Request::Cancel(cancel) => {
            // A plaintext cancel carries no server name, so with SNI routes
            // the backend may be behind any upstream: each checks the secret
            // key and ignores a request that is not its own.
            let routes = ctx.listener.upstream_routes();
            forward_cancel(ctx, &cancel, &upstreams_of(&routes)).await;
            return Ok(None);
        }
    };
    let established = tls_requested.handshake(ctx).await?;
    let received = match established.read_startup(ctx).await? {
        Startup::Message(m) => m,
        Startup::Cancel(cancel, route) => {
            forward_cancel(ctx, &cancel, &upstreams_of(&[route])).await;
            return Ok(None);
        }
    };
    ctx.note_login(received.startup.user(), received.startup.database());
    if over_limit {
        return Err(received.refuse_over_limit(ctx).await);
    }
    let authorized = received.authorize().await?;
    authorized.connect_upstream(ctx).await.map(Some)
}

/// Reads from `stream` into `buf` until one initial message parses.
async fn read_initial<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(InitialMessage, usize), Refused> {
    loop {
        match pg::parse_initial_message(buf) {
            Ok(Some(parsed)) => return Ok(parsed),
            Ok(None) => {}
            Err(e) => {
                return Err(Refused::new(
                    RefusalReason::Malformed,
                    format!("invalid startup packet: {e}"),
                ))
            }
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| Refused::new(RefusalReason::ClientClosed, e.to_string()))?;
        if n == 0 {
            return Err(Refused::new(
                RefusalReason::ClientClosed,
                "client closed the connection during negotiation",
            ));
        }
    }
}

fn error_response(code: SqlState, message: String, hint: Option<String>) -> Vec<u8> {
    let mut error = ErrorResponse::fatal(code, message);
    if let Some(hint) = hint {
        error = error.with_hint(hint);
    }
    error.encode()
}

/// Sends a final ErrorResponse. Failures are ignored: the client is being
/// turned away and may already be gone.
async fn send_error<S: AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) {
    let _ = stream.write_all(message).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// The first state: plaintext, before any request is answered.
struct AwaitingRequest {
    stream: BoxStream,
    buf: BytesMut,
    gssenc_answered: bool,
}

enum Request {
    Tls(TlsRequested),
    Cancel(CancelRequest),
}

impl AwaitingRequest {
    async fn next(mut self, ctx: &ConnectionContext) -> Result<Request, Refused> {
        loop {
            let (message, consumed) = read_initial(&mut self.stream, &mut self.buf).await?;
            let _ = self.buf.split_to(consumed);
            match message {
                InitialMessage::SslRequest => {
                    // Anything after the SSLRequest must come from inside TLS.
                    // Bytes already waiting would be processed as if they were
                    // encrypted (CVE-2021-23214), so the connection is closed.
                    if !self.buf.is_empty() {
                        return Err(Refused::new(
                            RefusalReason::PipelinedBeforeTls,
                            format!(
                                "{} unencrypted byte(s) followed the SSLRequest before the TLS handshake",
                                self.buf.len()
                            ),
                        ));
                    }
                    self.stream
                        .write_all(&[pg::SSL_ACCEPT])
                        .await
                        .map_err(|e| Refused::new(RefusalReason::ClientClosed, e.to_string()))?;
                    return Ok(Request::Tls(TlsRequested {
                        stream: Rewind::new(Bytes::new(), self.stream),
                        direct: false,
                    }));
                }
                InitialMessage::DirectTls => {
                    let prefix = self.buf.split().freeze();
                    return Ok(Request::Tls(TlsRequested {
                        stream: Rewind::new(prefix, self.stream),
                        direct: true,
                    }));
                }
                InitialMessage::GssEncRequest if !self.gssenc_answered => {
                    // GSSAPI encryption is not offered; libpq then falls back
                    // to an SSLRequest on the same connection.
                    self.gssenc_answered = true;
                    self.stream
                        .write_all(&[pg::GSSENC_REFUSE])
                        .await
                        .map_err(|e| Refused::new(RefusalReason::ClientClosed, e.to_string()))?;
                }
                InitialMessage::GssEncRequest => {
                    return Err(Refused::new(
                        RefusalReason::Malformed,
                        "second GSSENCRequest on one connection",
                    ));
                }
                InitialMessage::Cancel(cancel) => return Ok(Request::Cancel(cancel)),
                InitialMessage::Startup(startup) => {
                    let reply = error_response(
                        SQLSTATE_INVALID_AUTHORIZATION,
                        ctx.listener.plaintext_message.clone(),
                        Some(ctx.listener.plaintext_hint.clone()),
                    );
                    send_error(&mut self.stream, &reply).await;
                    return Err(Refused::new(
                        RefusalReason::PlaintextRefused,
                        format!(
                            "StartupMessage without TLS (user {:?}, database {:?})",
                            startup.user().unwrap_or_default(),
                            startup.database().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    }
}

/// TLS was asked for (SSLRequest answered `S`, or direct TLS).
struct TlsRequested {
    stream: Rewind<BoxStream>,
    direct: bool,
}

impl TlsRequested {
    async fn handshake(self, ctx: &ConnectionContext) -> Result<TlsEstablished, Refused> {
        // PostgreSQL 17 accepts direct TLS only with ALPN "postgresql", so
        // that a TLS connection meant for another protocol (say HTTPS routed
        // to the wrong port) is never taken for a database session.
        let required = self.direct.then_some(ALPN_POSTGRESQL);
        match handshake::accept(ctx, self.stream, required).await? {
            Ok(accepted) => Ok(TlsEstablished {
                accepted,
                buf: BytesMut::with_capacity(512),
            }),
            Err(mut rejected) => {
                let reply = error_response(
                    SQLSTATE_INVALID_AUTHORIZATION,
                    "the client certificate is no longer accepted; connect again with a valid certificate".into(),
                    None,
                );
                handshake::close_with(&mut rejected.stream, &reply).await;
                Err(rejected.refused)
            }
        }
    }
}

/// The TLS handshake is complete and the client certificate (if any) passed
/// trust and allow-list checks.
struct TlsEstablished {
    accepted: Accepted,
    buf: BytesMut,
}

enum Startup {
    Message(Box<StartupReceived>),
    /// A cancel sent inside TLS, with the chosen route.
    Cancel(CancelRequest, Arc<PreparedRoute>),
}

impl TlsEstablished {
    async fn read_startup(mut self, _ctx: &ConnectionContext) -> Result<Startup, Refused> {
        let (message, consumed) = match read_initial(&mut self.accepted.stream, &mut self.buf).await
        {
            Ok(m) => m,
            Err(refused) => return Err(refused.with_identity(self.accepted.identity)),
        };
        let raw = self.buf.split_to(consumed).freeze();
        match message {
            InitialMessage::Startup(startup) => Ok(Startup::Message(Box::new(StartupReceived {
                tls: self,
                startup,
                raw,
            }))),
            InitialMessage::Cancel(cancel) => {
                Ok(Startup::Cancel(cancel, self.accepted.route.clone()))
            }
            other => {
                let reply = error_response(
                    SQLSTATE_PROTOCOL_VIOLATION,
                    "invalid startup packet: expected a StartupMessage inside TLS".into(),
                    None,
                );
                send_error(&mut self.accepted.stream, &reply).await;
                Err(Refused::new(
                    RefusalReason::Malformed,
                    format!(
                        "{} inside TLS instead of a StartupMessage",
                        initial_name(&other)
                    ),
                )
                .with_identity(self.accepted.identity))
            }
        }
    }
}

fn initial_name(message: &InitialMessage) -> &'static str {
    match message {
        InitialMessage::SslRequest => "SSLRequest",
        InitialMessage::GssEncRequest => "GSSENCRequest",
        InitialMessage::Cancel(_) => "CancelRequest",
        InitialMessage::Startup(_) => "StartupMessage",
        InitialMessage::DirectTls => "a nested TLS record",
    }
}

/// A StartupMessage arrived inside TLS; the user is not checked yet.
struct StartupReceived {
    tls: TlsEstablished,
    startup: StartupMessage,
    raw: Bytes,
}

impl StartupReceived {
    async fn refuse_over_limit(mut self: Box<Self>, ctx: &ConnectionContext) -> Refused {
        let reply = error_response(
            SQLSTATE_TOO_MANY_CONNECTIONS,
            "sorry, too many clients already".into(),
            Some("The proxy is at its connection limit; try again later.".into()),
        );
        send_error(&mut self.tls.accepted.stream, &reply).await;
        Refused::new(
            RefusalReason::TooManyConnections,
            format!(
                "listener is at max_connections ({})",
                ctx.listener.max_connections
            ),
        )
        .with_identity(self.tls.accepted.identity)
    }

    async fn authorize(mut self: Box<Self>) -> Result<Authorized, Refused> {
        let user = self.startup.user().unwrap_or_default().to_owned();
        if !self
            .tls
            .accepted
            .route
            .db_users
            .permits(self.tls.accepted.identity.as_ref(), &user)
        {
            let who = self.tls.accepted.identity.as_ref().map_or_else(
                || "a client without a certificate".to_owned(),
                |i| format!("certificate identity \"{i}\""),
            );
            let reply = error_response(
                SQLSTATE_INVALID_AUTHORIZATION,
                format!("{who} may not log in as database user \"{user}\""),
                Some("The proxy's db_users rules decide which identities may use which database users.".into()),
            );
            send_error(&mut self.tls.accepted.stream, &reply).await;
            return Err(Refused::new(
                RefusalReason::UserDenied,
                format!("database user {user:?} not permitted by db_users"),
            )
            .with_identity(self.tls.accepted.identity));
        }
        Ok(Authorized {
            tls: self.tls,
            startup: self.startup,
            raw: self.raw,
        })
    }
}

/// The user is permitted; next is the upstream.
struct Authorized {
    tls: TlsEstablished,
    startup: StartupMessage,
    raw: Bytes,
}

impl Authorized {
    async fn connect_upstream(mut self, ctx: &ConnectionContext) -> Result<Session, Refused> {
        let route = self.tls.accepted.route.clone();
        let target = &route.upstream;
        let mut first = BytesMut::with_capacity(self.raw.len() + self.tls.buf.len());
        first.extend_from_slice(&self.raw);
        first.extend_from_slice(&self.tls.buf);
        let opened = async {
            let (mut upstream, session) = open_upstream(
                target,
                route.upstream_tls.as_deref(),
                ctx.listener.upstream_connect_timeout,
            )
            .await?;
            let tls_version = session.map(|s| s.version);
            upstream.write_all(&first).await.map_err(|e| {
                Refused::new(
                    RefusalReason::UpstreamUnavailable,
                    format!("sending StartupMessage to {target}: {e}"),
                )
            })?;
            // Over a TLS upstream the server offers SCRAM-SHA-256-PLUS; its
            // channel binding would be to the server's certificate while
            // the client sees the proxy's, so the offer is rewritten.
            let (to_client, offer_rewritten) = if tls_version.is_some() {
                first_authentication_request(&mut upstream, target).await?
            } else {
                (Vec::new(), false)
            };
            Ok::<_, Refused>((upstream, tls_version, to_client, offer_rewritten))
        };
        let (upstream, tls_version, to_client, offer_rewritten) = match opened.await {
            Ok(opened) => opened,
            Err(refused) => {
                send_error(&mut self.tls.accepted.stream, &unavailable_response()).await;
                return Err(refused.with_identity(self.tls.accepted.identity));
            }
        };
        let client = &mut self.tls.accepted.stream;
        let identity = &self.tls.accepted.identity;
        if let Err(e) = client.write_all(&to_client).await {
            return Err(Refused::new(RefusalReason::ClientClosed, e.to_string())
                .with_identity(identity.clone()));
        }
        let mut upstream = upstream;
        if offer_rewritten {
            let answer = match sasl_initial_response(client).await {
                Ok(answer) => answer,
                Err(refused) => {
                    if refused.reason == RefusalReason::ChannelBinding {
                        let reply = error_response(
                            SQLSTATE_INVALID_AUTHORIZATION,
                            "SCRAM channel binding is not possible through this proxy: the database's TLS session is not the client's".into(),
                            Some("Connect with channel_binding=disable; the proxy verifies the database's certificate itself.".into()),
                        );
                        send_error(client, &reply).await;
                    }
                    return Err(refused.with_identity(identity.clone()));
                }
            };
            upstream.write_all(&answer).await.map_err(|e| {
                Refused::new(
                    RefusalReason::UpstreamUnavailable,
                    format!("sending the SASL response to {target}: {e}"),
                )
                .with_identity(identity.clone())
            })?;
        }
        Ok(self.established(ctx, upstream, tls_version))
    }

    fn established(
        self,
        ctx: &ConnectionContext,
        upstream: BoxStream,
        tls_version: Option<&'static str>,
    ) -> Session {
        handshake::log_established(
            ctx,
            &self.tls.accepted,
            self.startup.user().unwrap_or_default(),
            self.startup.database().unwrap_or_default(),
            tls_version,
        );
        Session {
            client: self.tls.accepted.stream,
            upstream,
        }
    }
}

/// The ErrorResponse a client gets when the upstream leg cannot be opened:
/// the same in both modes, and without the database's address.
fn unavailable_response() -> Vec<u8> {
    error_response(
        SQLSTATE_CONNECTION_FAILURE,
        "the database is unavailable right now".into(),
        Some("Try again later. The proxy's log has the details.".into()),
    )
}

/// The PostgreSQL upstream connector, shared by server mode, client mode
/// and cancel requests: the connection, then, when `tls` is set, the TLS
/// request and handshake ([`open_tls_upstream`]). Returns the stream and
/// what TLS negotiated (`None` for plaintext).
async fn open_upstream(
    target: &Endpoint,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
) -> Result<(BoxStream, Option<UpstreamSession>), Refused> {
    match tls {
        None => {
            let stream = net::connect(target, timeout).await.map_err(|e| {
                Refused::new(
                    RefusalReason::UpstreamUnavailable,
                    format!("connecting to {target}: {e}"),
                )
            })?;
            Ok((stream, None))
        }
        Some(tls) => open_tls_upstream(target, tls, timeout)
            .await
            .map(|(stream, session)| (stream, Some(session))),
    }
}

/// Connects to `target` and runs TLS the way PostgreSQL asks for it: an
/// SSLRequest answered `S`, or, with `direct`, a handshake at once with
/// ALPN `postgresql` (PostgreSQL 17). Each step is bounded by `timeout`.
async fn open_tls_upstream(
    target: &Endpoint,
    tls: &UpstreamTls,
    timeout: Duration,
) -> Result<(BoxStream, UpstreamSession), Refused> {
    let unavailable = |detail: String| Refused::new(RefusalReason::UpstreamUnavailable, detail);
    let mut stream = net::connect(target, timeout)
        .await
        .map_err(|e| unavailable(format!("connecting to {target}: {e}")))?;
    if tls.direct() {
        return tls
            .connect(stream, timeout)
            .await
            .map_err(|f| Refused::new(f.reason, format!("{target}: {}", f.detail)));
    }
    stream
        .write_all(&pg::encode_ssl_request())
        .await
        .map_err(|e| unavailable(format!("sending an SSLRequest to {target}: {e}")))?;
    // Exactly one byte: anything the server sent after its 'S' must go to
    // the TLS stack, which rejects it (CVE-2021-23222 class).
    let mut answer = [0u8; 1];
    match tokio::time::timeout(timeout, stream.read_exact(&mut answer)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(unavailable(format!(
                "reading the SSLRequest answer from {target}: {e}"
            )))
        }
        Err(_) => {
            return Err(unavailable(format!(
                "{target} did not answer the SSLRequest within {timeout:?}"
            )))
        }
    }
    match answer[0] {
        pg::SSL_ACCEPT => {}
        pg::SSL_REFUSE => {
            return Err(Refused::new(
                RefusalReason::UpstreamTlsRefused,
                format!("{target} refused TLS: it answered the SSLRequest with 'N' (the server has ssl = off), and upstream_tls requires TLS"),
            ))
        }
        other => {
            return Err(Refused::new(
                RefusalReason::UpstreamTlsRefused,
                format!("{target} answered the SSLRequest with 0x{other:02x} instead of 'S' or 'N'"),
            ))
        }
    }
    tls.connect(stream, timeout)
        .await
        .map_err(|f| Refused::new(f.reason, format!("{target}: {}", f.detail)))
}

/// Reads the server's messages up to its first authentication request (or
/// error) and returns the bytes to pass to the client, with `-PLUS` SASL
/// mechanisms removed. Bytes read past that message are passed on as they
/// are; from then on the session is copied untouched. The flag says
/// whether a SASL offer was rewritten. This is the first read on the TLS
/// leg, so a server that rejects the proxy's client certificate (TLS 1.3
/// says so after the handshake) is reported here as `upstream_tls_failed`.
async fn first_authentication_request(
    upstream: &mut BoxStream,
    target: &Endpoint,
) -> Result<(Vec<u8>, bool), Refused> {
    let unavailable = |detail: String| {
        Refused::new(
            RefusalReason::UpstreamUnavailable,
            format!("{target}: {detail}"),
        )
    };
    let mut buf = BytesMut::with_capacity(512);
    let mut out = Vec::new();
    let mut rewrote = false;
    loop {
        match pg::parse_backend_frame(&buf) {
            Ok(Some((frame, used))) => {
                let rewritten = if frame.tag == BackendFrame::AUTHENTICATION {
                    // Requests this proxy cannot parse are not SASL offers
                    // it would need to change; they pass unchanged.
                    pg::without_channel_binding(frame.body).ok().flatten()
                } else {
                    None
                };
                // NegotiateProtocolVersion and notices may precede the request.
                let done = !matches!(
                    frame.tag,
                    BackendFrame::NEGOTIATE_PROTOCOL_VERSION | BackendFrame::NOTICE_RESPONSE
                );
                rewrote |= rewritten.is_some();
                let original = buf.split_to(used);
                out.extend_from_slice(rewritten.as_deref().unwrap_or(&original));
                if done {
                    out.extend_from_slice(&buf);
                    return Ok((out, rewrote));
                }
            }
            Ok(None) => {}
            Err(e) => {
                return Err(unavailable(format!(
                    "invalid message while authenticating: {e}"
                )))
            }
        }
        let n = upstream.read_buf(&mut buf).await.map_err(|e| {
            match crate::tls::upstream::failure_after_handshake(&e) {
                Some(f) => Refused::new(f.reason, format!("{target}: {}", f.detail)),
                None => unavailable(format!("reading the authentication request: {e}")),
            }
        })?;
        if n == 0 {
            return Err(unavailable(
                "the server closed the connection before asking for authentication".into(),
            ));
        }
    }
}

/// Both legs are open; bytes flow untouched until either side closes.
struct Session {
    client: ClientTls,
    upstream: BoxStream,
}

impl Session {
    async fn forward(self, ctx: &ConnectionContext) {
        copy::forward(ctx, self.client, self.upstream).await;
    }
}

/// Reads the client's answer to a rewritten SASL offer and returns the
/// bytes to forward. A SCRAM client that could have bound the channel
/// says so with the GS2 flag `y`; a server on TLS takes that for a
/// downgrade attack and refuses, and the flag is covered by the client's
/// proof, so no rewrite can help: the client is told what to change.
async fn sasl_initial_response(client: &mut ClientTls) -> Result<BytesMut, Refused> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match pg::parse_frontend_frame(&buf) {
            Ok(Some((frame, _))) => {
                let flag = (frame.tag == FrontendFrame::PASSWORD)
                    .then(|| pg::parse_sasl_initial_response(frame.body).ok())
                    .flatten()
                    .map(|r| (r.mechanism.to_owned(), r.channel_binding_flag()));
                if let Some((mechanism, Some(b'y'))) = flag {
                    return Err(Refused::new(
                        RefusalReason::ChannelBinding,
                        format!("the client chose {mechanism} with the GS2 flag 'y' (channel binding supported, e.g. libpq channel_binding=prefer); the database, itself on TLS, would refuse that as a downgrade"),
                    ));
                }
                return Ok(buf);
            }
            Ok(None) => {}
            // Not a message this proxy needs to judge: the server will.
            Err(_) => return Ok(buf),
        }
        let n = client
            .read_buf(&mut buf)
            .await
            .map_err(|e| Refused::new(RefusalReason::ClientClosed, e.to_string()))?;
        if n == 0 {
            return Err(Refused::new(
                RefusalReason::ClientClosed,
                "client closed the connection during authentication",
            ));
        }
    }
}

/// Each route's upstream and its TLS, for [`forward_cancel`].
fn upstreams_of(routes: &[Arc<PreparedRoute>]) -> Vec<(&Endpoint, Option<&UpstreamTls>)> {
    routes
        .iter()
        .map(|r| (&r.upstream, r.upstream_tls.as_deref()))
        .collect()
}

/// Forwards a CancelRequest to each upstream, over TLS where that leg is
/// encrypted (always in client mode). PostgreSQL accepts cancels outside
/// pg_hba and libpq before 17 sends them unencrypted; they carry only the
/// backend's process id and secret key, which the proxy passes on as is.
async fn forward_cancel<L: Listener>(
    ctx: &ConnectionContext<L>,
    cancel: &CancelRequest,
    upstreams: &[(&Endpoint, Option<&UpstreamTls>)],
) {
    let listener = &ctx.listener;
    let timeout = listener.upstream_connect_timeout();
    for (target, tls) in upstreams {
        match open_upstream(target, *tls, timeout).await {
            Ok((mut upstream, session)) => {
                let sent = upstream.write_all(&cancel.encode()).await;
                let _ = upstream.flush().await;
                // PostgreSQL closes the connection once it has read the
                // request; wait for that so the cancel is not cut short.
                let mut sink = [0u8; 1];
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    upstream.read(&mut sink),
                )
                .await;
                debug!(
                    conn = ctx.id,
                    listener = %listener.name(),
                    peer = %ctx.peer,
                    upstream = %target,
                    upstream_tls = session.map_or("off", |s| s.version),
                    process_id = cancel.process_id,
                    ok = sent.is_ok(),
                    "cancel request forwarded"
                );
            }
            Err(refused) => {
                tracing::warn!(
                    conn = ctx.id,
                    listener = %listener.name(),
                    peer = %ctx.peer,
                    upstream = %target,
                    reason = refused.reason.as_str(),
                    error = %refused.detail,
                    "cancel request could not be forwarded"
                );
            }
        }
    }
}

/// Runs one client-mode connection: a local application speaking
/// plaintext, carried to the database over TLS. Negotiation is bounded by
/// the listener's handshake timeout; the copy phase is not.
pub(crate) async fn serve_client(
    ctx: ConnectionContext<PreparedClientListener>,
    stream: BoxStream,
    over_limit: bool,
) -> Result<(), Refused> {
    let negotiated = tokio::time::timeout(
        ctx.listener.handshake_timeout,
        negotiate_client(&ctx, stream, over_limit),
    )
    .await
    .map_err(|_| {
        Refused::new(
            RefusalReason::Timeout,
            "application did not finish negotiating in time",
        )
    })??;
    if let Some((app, upstream)) = negotiated {
        copy::forward(&ctx, app, upstream).await;
    }
    Ok(())
}

/// Answers the application's requests for encryption with `N`, forwards a
/// cancel, and opens the TLS upstream leg for its StartupMessage. Returns
/// both legs, or `None` when the connection was a cancel.
async fn negotiate_client(
    ctx: &ConnectionContext<PreparedClientListener>,
    mut app: BoxStream,
    over_limit: bool,
) -> Result<Option<(BoxStream, BoxStream)>, Refused> {
    let listener = &ctx.listener;
    let mut buf = BytesMut::with_capacity(512);
    let (mut ssl_answered, mut gssenc_answered) = (false, false);
    let (startup, raw) = loop {
        let (message, consumed) = read_initial(&mut app, &mut buf).await?;
        let raw = buf.split_to(consumed).freeze();
        let refusal = match message {
            InitialMessage::SslRequest if !ssl_answered => {
                // The application asked for TLS anyway (sslmode=prefer):
                // this leg is plaintext on loopback, the proxy encrypts
                // the database's leg. libpq continues without TLS.
                ssl_answered = true;
                pg::SSL_REFUSE
            }
            InitialMessage::GssEncRequest if !gssenc_answered => {
                gssenc_answered = true;
                pg::GSSENC_REFUSE
            }
            InitialMessage::SslRequest | InitialMessage::GssEncRequest => {
                return Err(Refused::new(
                    RefusalReason::Malformed,
                    format!("second {} on one connection", initial_name(&message)),
                ));
            }
            InitialMessage::DirectTls => {
                // No ErrorResponse: the application expects a ServerHello.
                return Err(Refused::new(
                    RefusalReason::Malformed,
                    "the application started TLS (direct TLS), but a client-mode listener accepts plaintext only; connect with sslmode=disable (or prefer)",
                ));
            }
            InitialMessage::Cancel(cancel) => {
                let upstream = [(&listener.upstream, Some(listener.upstream_tls.as_ref()))];
                forward_cancel(ctx, &cancel, &upstream).await;
                return Ok(None);
            }
            InitialMessage::Startup(startup) => break (startup, raw),
        };
        app.write_all(&[refusal])
            .await
            .map_err(|e| Refused::new(RefusalReason::ClientClosed, e.to_string()))?;
    };
    let user = startup.user().unwrap_or_default().to_owned();
    let database = startup.database().unwrap_or_default().to_owned();
    ctx.note_login(startup.user(), startup.database());
    if over_limit {
        let reply = error_response(
            SQLSTATE_TOO_MANY_CONNECTIONS,
            "sorry, too many clients already".into(),
            Some("The proxy is at its connection limit; try again later.".into()),
        );
        send_error(&mut app, &reply).await;
        return Err(Refused::new(
            RefusalReason::TooManyConnections,
            format!(
                "listener is at max_connections ({})",
                listener.max_connections
            ),
        ));
    }
    let target = &listener.upstream;
    let opened = async {
        let (mut upstream, session) = open_tls_upstream(
            target,
            &listener.upstream_tls,
            listener.upstream_connect_timeout,
        )
        .await?;
        client_mode::note_upstream_tls(ctx, &session);
        // The StartupMessage and whatever the application sent behind it.
        let mut first = BytesMut::with_capacity(raw.len() + buf.len());
        first.extend_from_slice(&raw);
        first.extend_from_slice(&buf);
        upstream.write_all(&first).await.map_err(|e| {
            Refused::new(
                RefusalReason::UpstreamUnavailable,
                format!("sending StartupMessage to {target}: {e}"),
            )
        })?;
        // As in server mode, SCRAM-SHA-256-PLUS goes: libpq without TLS
        // refuses a server that offers it.
        let (to_app, _) = first_authentication_request(&mut upstream, target).await?;
        Ok::<_, Refused>((upstream, session, to_app))
    };
    match opened.await {
        Ok((upstream, session, to_app)) => {
            app.write_all(&to_app)
                .await
                .map_err(|e| Refused::new(RefusalReason::ClientClosed, e.to_string()))?;
            client_mode::log_established(ctx, &session, &user, &database);
            Ok(Some((app, upstream)))
        }
        Err(refused) => {
            send_error(&mut app, &unavailable_response()).await;
            Err(refused)
        }
    }
}
