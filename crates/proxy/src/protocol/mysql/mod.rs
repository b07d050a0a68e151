//! MySQL and MariaDB negotiation: the server speaks first.
//!
//! ```text
//! connect upstream, read its greeting --> greeting with CLIENT_SSL set to the client
//! client SSLRequest (seq 1) --> TLS handshake (the ClientHello follows at once)
//! client HandshakeResponse without TLS --> ERR 3159, closed, nothing sent upstream
//! HandshakeResponse inside TLS (seq 2) --db_users-->
//!   plaintext upstream: response with CLIENT_SSL cleared (seq 1)
//!   upstream_tls: proxy's SSLRequest (seq 1), TLS, response as sent (seq 2)
//! authentication exchange relayed, sequence ids renumbered
//! (client = upstream + 1 over plaintext, + 0 over TLS),
//! until the server's OK or ERR; then bytes are copied untouched
//! ```
//!
//! With a plaintext upstream leg (loopback or unix socket) the server never
//! sees an SSLRequest and counts one packet fewer than the client. With
//! `upstream_tls` the proxy sends its own SSLRequest (seq 1, the client's
//! capabilities), runs TLS, and forwards the response with CLIENT_SSL kept:
//! both legs then count alike. The upstream TLS starts only after the
//! client passed TLS and `db_users`.
//!
//! Client mode (`serve_client`) mirrors this for a local application in
//! plaintext, through the same upstream connector ([`open_upstream`],
//! [`secure_upstream`]):
//!
//! ```text
//! connect upstream, read its greeting (no CLIENT_SSL: ERR 1105, closed)
//!   --> greeting with CLIENT_SSL cleared to the application (seq 0)
//! application HandshakeResponse in plaintext (seq 1)
//!   --> proxy's SSLRequest upstream (seq 1), TLS, response with CLIENT_SSL set (seq 2)
//! authentication exchange relayed (application = upstream - 1)
//! ```
//!
//! `caching_sha2_password` full authentication (MySQL 8) wants a secure
//! upstream leg: over plaintext TCP it asks for the server's RSA key and
//! works only if the client allows that; a unix-socket or TLS upstream
//! counts as secure. In client mode the server sees TLS and expects the
//! cleartext password, but the client judges its own leg: it sends the
//! password over a unix-socket listener, and over loopback TCP asks for
//! the RSA key instead, which a server on TLS takes for the password.
//!
//! This module owns the order of events and the MySQL packets sent to
//! clients; the bytes are parsed and built by `intransit_wire::mysql`.

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use intransit_config::Endpoint;
use intransit_wire::mysql::{
    encode_packet, parse_client_handshake, parse_packet, parse_server_auth_reply, ClientHandshake,
    ErrPacket, HandshakeResponse41, HandshakeV10, ServerAuthReply, ServerError, SslRequest,
    CLIENT_SSL,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::listener::client_mode::{self, PreparedClientListener};
use crate::listener::server_mode::{ConnectionContext, Refused};
use crate::net::{self, BoxStream, Rewind};
use crate::refusal::RefusalReason;
use crate::tls::handshake::{self, ClientTls};
use crate::tls::upstream::{UpstreamSession, UpstreamTls};

/// What a client is told when the database cannot be reached or secured.
const UNAVAILABLE_MESSAGE: &str = "the database is unavailable right now; try again later";

/// ER_UNKNOWN_ERROR: the proxy could not reach or use the database.
const UNAVAILABLE: ServerError = ServerError {
    code: 1105,
    sql_state: *b"HY000",
};

/// Runs one client connection from accept to close.
pub(crate) async fn serve(
    ctx: ConnectionContext,
    stream: BoxStream,
    over_limit: bool,
) -> Result<(), Refused> {
    let (client, upstream) = tokio::time::timeout(
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
    crate::copy::forward(&ctx, client, upstream).await;
    Ok(())
}

/// Why a packet could not be read.
#[derive(Debug)]
enum PacketError {
    Io(io::Error),
    Closed,
    Invalid(String),
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketError::Io(e) => write!(f, "reading: {e}"),
            PacketError::Closed => f.write_str("connection closed"),
            PacketError::Invalid(e) => write!(f, "invalid packet: {e}"),
        }
    }
}

/// Reads one packet, keeping what follows it in `buf`.
async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(u8, Vec<u8>), PacketError> {
    loop {
        match parse_packet(buf) {
            Ok(Some((packet, used))) => {
                let out = (packet.sequence_id, packet.payload.to_vec());
                let _ = buf.split_to(used);
                return Ok(out);
            }
            Ok(None) => {}
            Err(e) => return Err(PacketError::Invalid(e.to_string())),
        }
        let n = stream.read_buf(buf).await.map_err(PacketError::Io)?;
        if n == 0 {
            return Err(PacketError::Closed);
        }
    }
}

fn err_packet(sequence_id: u8, error: ServerError, message: &str) -> Vec<u8> {
    let payload = ErrPacket::new(error, message).encode();
    encode_packet(sequence_id, &payload).unwrap_or_default()
}

async fn send_and_close<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

async fn negotiate(
    ctx: &ConnectionContext,
    mut client: BoxStream,
    over_limit: bool,
) -> Result<(ClientTls, BoxStream), Refused> {
    let listener = &ctx.listener;
    let target = listener.default_route.upstream.clone();
    let unavailable = |detail: String| Refused::new(RefusalReason::UpstreamUnavailable, detail);

    // The server speaks first: its greeting (and scramble) is what the
    // client will answer, so the upstream leg opens before anything else.
    let Upstream {
        stream: mut upstream,
        buf: mut upstream_buf,
        mut greeting,
    } = match open_upstream(&target, listener.upstream_connect_timeout).await {
        Ok(opened) => opened,
        Err(refused) => {
            send_and_close(
                &mut client,
                &err_packet(0, UNAVAILABLE, UNAVAILABLE_MESSAGE),
            )
            .await;
            return Err(refused);
        }
    };
    let upstream_offers_tls = greeting.offers_tls();
    greeting.set_tls_offered(true);
    let encoded = greeting
        .encode()
        .and_then(|g| encode_packet(0, &g))
        .map_err(|e| unavailable(format!("re-encoding the greeting of {target}: {e}")))?;
    client
        .write_all(&encoded)
        .await
        .map_err(|e| Refused::new(RefusalReason::ClientClosed, e.to_string()))?;

    let mut client_buf = BytesMut::with_capacity(256);
    let (seq, first) = read_packet(&mut client, &mut client_buf)
        .await
        .map_err(|e| Refused::new(RefusalReason::Malformed, format!("client handshake: {e}")))?;
    match parse_client_handshake(&first) {
        Ok(ClientHandshake::SslRequest(_)) => {}
        Ok(ClientHandshake::Response(response)) => {
            let reply = err_packet(
                seq.wrapping_add(1),
                ServerError::SECURE_TRANSPORT_REQUIRED,
                "Connections using insecure transport are prohibited: this server requires TLS with a client certificate (mariadb: --ssl-verify-server-cert --ssl-ca --ssl-cert --ssl-key)",
            );
            send_and_close(&mut client, &reply).await;
            return Err(Refused::new(
                RefusalReason::PlaintextRefused,
                format!(
                    "HandshakeResponse without TLS (user {:?})",
                    response.user_utf8().unwrap_or("?")
                ),
            ));
        }
        Err(e) => {
            let reply = err_packet(
                seq.wrapping_add(1),
                ServerError::BAD_HANDSHAKE,
                "Bad handshake",
            );
            send_and_close(&mut client, &reply).await;
            return Err(Refused::new(
                RefusalReason::Malformed,
                format!("client handshake: {e}"),
            ));
        }
    }
    // Unlike PostgreSQL's, MySQL's SSLRequest gets no answer: the client
    // starts its TLS handshake right behind it, so bytes already read are
    // the start of the ClientHello and go to the TLS stack. Any plaintext
    // there fails the handshake; none of it reaches the server.
    let prefix = client_buf.split().freeze();

    let mut accepted = match handshake::accept(ctx, Rewind::new(prefix, client), None).await? {
        Ok(a) => a,
        Err(mut rejected) => {
            handshake::close_with(&mut rejected.stream, &[]).await;
            return Err(rejected.refused);
        }
    };
    let identity = accepted.identity.clone();
    let mut tls_buf = BytesMut::with_capacity(512);
    let (seq, payload) = read_packet(&mut accepted.stream, &mut tls_buf)
        .await
        .map_err(|e| {
            Refused::new(RefusalReason::Malformed, format!("HandshakeResponse: {e}"))
                .with_identity(identity.clone())
        })?;
    // Inside TLS the response still carries CLIENT_SSL, so it is parsed as
    // a response, not classified like the first packet.
    let mut response = match HandshakeResponse41::parse(&payload) {
        Ok(r) => r,
        Err(e) => {
            let reply = err_packet(
                seq.wrapping_add(1),
                ServerError::BAD_HANDSHAKE,
                "Bad handshake",
            );
            handshake::close_with(&mut accepted.stream, &reply).await;
            return Err(Refused::new(
                RefusalReason::Malformed,
                format!("HandshakeResponse inside TLS: {e}"),
            )
            .with_identity(identity));
        }
    };
    let user = response.user_utf8().unwrap_or("").to_owned();
    let database = response
        .database_utf8()
        .ok()
        .flatten()
        .unwrap_or("")
        .to_owned();
    ctx.note_login(
        Some(&user),
        Some(&database)
            .filter(|d| !d.is_empty())
            .map(|d| d.as_str()),
    );
    if over_limit {
        let reply = err_packet(
            seq.wrapping_add(1),
            ServerError::TOO_MANY_CONNECTIONS,
            "Too many connections",
        );
        handshake::close_with(&mut accepted.stream, &reply).await;
        return Err(Refused::new(
            RefusalReason::TooManyConnections,
            format!(
                "listener is at max_connections ({})",
                listener.max_connections
            ),
        )
        .with_identity(identity));
    }
    if !accepted.route.db_users.permits(identity.as_ref(), &user) {
        let who = identity.as_ref().map_or_else(
            || "a client without a certificate".to_owned(),
            |i| format!("certificate identity \"{i}\""),
        );
        let reply = err_packet(
            seq.wrapping_add(1),
            ServerError::ACCESS_DENIED,
            &format!("Access denied: {who} may not log in as database user '{user}'"),
        );
        handshake::close_with(&mut accepted.stream, &reply).await;
        return Err(Refused::new(
            RefusalReason::UserDenied,
            format!("database user {user:?} not permitted by db_users"),
        )
        .with_identity(identity));
    }
    if !tls_buf.is_empty() {
        return Err(Refused::new(
            RefusalReason::Malformed,
            "bytes followed the HandshakeResponse before the server answered",
        )
        .with_identity(identity));
    }

    let unavailable_reply = err_packet(seq.wrapping_add(1), UNAVAILABLE, UNAVAILABLE_MESSAGE);
    // With a TLS upstream the proxy sends its own SSLRequest (the client's
    // capabilities, CLIENT_SSL set) as packet 1, so both legs count the
    // same and the response keeps its sequence id and CLIENT_SSL. With a
    // plaintext upstream the server never sees an SSLRequest: the response
    // is its packet 1, and every later packet is one behind the client's.
    let route = accepted.route.clone();
    let (offset, upstream_tls_version) = match &route.upstream_tls {
        Some(tls) => {
            let secured = secure_upstream(
                upstream,
                &upstream_buf,
                upstream_offers_tls,
                tls,
                &response,
                seq.wrapping_sub(1),
                &target,
                listener.upstream_connect_timeout,
            );
            match secured.await {
                Ok((stream, session)) => {
                    upstream = stream;
                    (0u8, Some(session.version))
                }
                Err(refused) => {
                    handshake::close_with(&mut accepted.stream, &unavailable_reply).await;
                    return Err(refused.with_identity(identity));
                }
            }
        }
        None => {
            response.clear_ssl();
            (1u8, None)
        }
    };
    let forwarded = response
        .encode()
        .and_then(|r| encode_packet(seq.wrapping_sub(offset), &r))
        .map_err(|e| Refused::new(RefusalReason::Malformed, format!("HandshakeResponse: {e}")))?;
    if let Err(e) = upstream.write_all(&forwarded).await {
        handshake::close_with(&mut accepted.stream, &unavailable_reply).await;
        return Err(
            unavailable(format!("sending the HandshakeResponse to {target}: {e}"))
                .with_identity(identity),
        );
    }

    let relayed = relay_authentication(
        &mut accepted.stream,
        &mut tls_buf,
        &mut upstream,
        &mut upstream_buf,
        offset,
        seq,
    )
    .await;
    if let Err(failure) = relayed {
        let refused = failure.answer(&mut accepted.stream).await;
        return Err(refused.with_identity(identity));
    }
    handshake::log_established(ctx, &accepted, &user, &database, upstream_tls_version);
    Ok((accepted.stream, upstream))
}

/// The server's side of a fresh connection, greeting read.
struct Upstream {
    stream: BoxStream,
    /// Bytes read past the greeting.
    buf: BytesMut,
    greeting: HandshakeV10,
}

/// The MySQL upstream connector's first half, shared by both modes: connect
/// and read the server's greeting (MySQL's server speaks first). A server
/// that answers with an ERR packet (too many connections, host blocked) is
/// reported with its code and message.
async fn open_upstream(target: &Endpoint, timeout: Duration) -> Result<Upstream, Refused> {
    let unavailable = |detail: String| Refused::new(RefusalReason::UpstreamUnavailable, detail);
    let mut stream = net::connect(target, timeout)
        .await
        .map_err(|e| unavailable(format!("connecting to {target}: {e}")))?;
    let mut buf = BytesMut::with_capacity(256);
    let (_, payload) = read_packet(&mut stream, &mut buf)
        .await
        .map_err(|e| unavailable(format!("greeting from {target}: {e}")))?;
    let greeting = HandshakeV10::parse(&payload).map_err(|e| {
        let what = ErrPacket::parse(&payload)
            .map(|err| format!("the server refused: {} {}", err.code, err.message_lossy()))
            .unwrap_or_else(|_| format!("unusable greeting: {e}"));
        unavailable(format!("{target}: {what}"))
    })?;
    Ok(Upstream {
        stream,
        buf,
        greeting,
    })
}

/// The MySQL upstream connector's second half, shared by both modes: the
/// proxy's own SSLRequest (packet `ssl_request_seq`, the capabilities of
/// the client's `response` with CLIENT_SSL) and the TLS handshake. A
/// greeting without CLIENT_SSL is `upstream_tls_refused`.
#[allow(clippy::too_many_arguments)]
async fn secure_upstream(
    mut upstream: BoxStream,
    upstream_buf: &BytesMut,
    offers_tls: bool,
    tls: &UpstreamTls,
    response: &HandshakeResponse41,
    ssl_request_seq: u8,
    target: &Endpoint,
    timeout: Duration,
) -> Result<(BoxStream, UpstreamSession), Refused> {
    let unavailable = |detail: String| Refused::new(RefusalReason::UpstreamUnavailable, detail);
    if !offers_tls {
        return Err(tls_refused(target));
    }
    if !upstream_buf.is_empty() {
        return Err(unavailable(format!(
            "{target} sent {} byte(s) after its greeting, before the proxy spoke",
            upstream_buf.len()
        )));
    }
    let request = SslRequest {
        capabilities: response.capabilities,
        max_packet_size: response.max_packet_size,
        collation: response.collation,
        extended_capabilities: response.extended_capabilities,
    };
    let packet = encode_packet(ssl_request_seq, &request.encode())
        .map_err(|e| unavailable(format!("SSLRequest: {e}")))?;
    upstream
        .write_all(&packet)
        .await
        .map_err(|e| unavailable(format!("sending the SSLRequest to {target}: {e}")))?;
    tls.connect(upstream, timeout)
        .await
        .map_err(|f| Refused::new(f.reason, format!("{target}: {}", f.detail)))
}

fn tls_refused(target: &Endpoint) -> Refused {
    Refused::new(
        RefusalReason::UpstreamTlsRefused,
        format!("{target} does not offer TLS (its greeting lacks CLIENT_SSL; is ssl off?), and upstream_tls requires TLS"),
    )
}

/// How the authentication relay failed.
struct RelayFailure {
    refused: Refused,
    /// When the server's side failed and the client still waits for its
    /// answer: the sequence id that answer takes, for an ERR 1105.
    answer_seq: Option<u8>,
}

impl RelayFailure {
    fn client(detail: String) -> Self {
        RelayFailure {
            refused: Refused::new(
                RefusalReason::Malformed,
                format!("authentication exchange: {detail}"),
            ),
            answer_seq: None,
        }
    }

    /// The server's side failed: a TLS error (a TLS 1.3 server rejects the
    /// proxy's client certificate after the handshake, so it shows here),
    /// a closed connection, or bytes that are not packets.
    fn server(error: &PacketError, answer_seq: u8) -> Self {
        let refused = match error {
            PacketError::Io(e) => match crate::tls::upstream::failure_after_handshake(e) {
                Some(f) => Refused::new(f.reason, f.detail),
                None => Refused::new(
                    RefusalReason::UpstreamUnavailable,
                    format!("authentication exchange: the server: {error}"),
                ),
            },
            PacketError::Closed => Refused::new(
                RefusalReason::UpstreamUnavailable,
                "authentication exchange: the server closed the connection",
            ),
            PacketError::Invalid(_) => Refused::new(
                RefusalReason::Malformed,
                format!("authentication exchange: the server: {error}"),
            ),
        };
        RelayFailure {
            refused,
            answer_seq: Some(answer_seq),
        }
    }

    /// Tells a client still waiting for the server that the database is
    /// unavailable, and returns the refusal.
    async fn answer<C: AsyncWrite + Unpin>(self, client: &mut C) -> Refused {
        if let Some(seq) = self.answer_seq {
            send_and_close(client, &err_packet(seq, UNAVAILABLE, UNAVAILABLE_MESSAGE)).await;
        }
        self.refused
    }
}

/// Relays the authentication exchange (auth switch, more data, the
/// client's answers) in both directions with sequence ids renumbered
/// (client = upstream + `offset`, wrapping: client mode, where the
/// application is one behind, passes `u8::MAX`), until
/// the server ends it with OK or ERR. Bytes already read past that point
/// are passed on as they are. `response_seq` is the sequence id of the
/// client's HandshakeResponse, as the client numbered it.
async fn relay_authentication<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    client_buf: &mut BytesMut,
    upstream: &mut BoxStream,
    upstream_buf: &mut BytesMut,
    offset: u8,
    response_seq: u8,
) -> Result<(), RelayFailure> {
    // The sequence id, in the client's numbering, of the server's next packet.
    let mut next_to_client = response_seq.wrapping_add(1);
    let to_client = |e: io::Error| RelayFailure::client(format!("to client: {e}"));
    loop {
        tokio::select! {
            from_server = read_packet(upstream, upstream_buf) => {
                let (seq, payload) = from_server
                    .map_err(|e| RelayFailure::server(&e, next_to_client))?;
                let done = matches!(
                    parse_server_auth_reply(&payload),
                    Ok(ServerAuthReply::Ok(_) | ServerAuthReply::Err(_))
                );
                let seq = seq.wrapping_add(offset);
                next_to_client = seq.wrapping_add(1);
                let packet = encode_packet(seq, &payload)
                    .map_err(|e| RelayFailure::client(e.to_string()))?;
                client.write_all(&packet).await.map_err(to_client)?;
                if done {
                    if !upstream_buf.is_empty() {
                        client.write_all(upstream_buf).await.map_err(to_client)?;
                        upstream_buf.clear();
                    }
                    if !client_buf.is_empty() {
                        upstream.write_all(client_buf).await.map_err(|e| {
                            RelayFailure::server(&PacketError::Io(e), next_to_client)
                        })?;
                        client_buf.clear();
                    }
                    client.flush().await.map_err(to_client)?;
                    return Ok(());
                }
                client.flush().await.map_err(to_client)?;
            }
            from_client = read_packet(client, client_buf) => {
                let (seq, payload) = from_client
                    .map_err(|e| RelayFailure::client(format!("the client: {e}")))?;
                next_to_client = seq.wrapping_add(1);
                let packet = encode_packet(seq.wrapping_sub(offset), &payload)
                    .map_err(|e| RelayFailure::client(e.to_string()))?;
                upstream.write_all(&packet).await.map_err(|e| {
                    RelayFailure::server(&PacketError::Io(e), next_to_client)
                })?;
            }
        }
    }
}

/// Runs one client-mode connection: a local application speaking MySQL in
/// plaintext, carried to the database over TLS. Negotiation (through the
/// end of authentication) is bounded by the handshake timeout.
pub(crate) async fn serve_client(
    ctx: ConnectionContext<PreparedClientListener>,
    stream: BoxStream,
    over_limit: bool,
) -> Result<(), Refused> {
    let (app, upstream) = tokio::time::timeout(
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
    crate::copy::forward(&ctx, app, upstream).await;
    Ok(())
}

async fn negotiate_client(
    ctx: &ConnectionContext<PreparedClientListener>,
    mut app: BoxStream,
    over_limit: bool,
) -> Result<(BoxStream, BoxStream), Refused> {
    let listener = &ctx.listener;
    let target = &listener.upstream;
    if over_limit {
        // A server that is full answers the connection with ERR 1040 in
        // place of its greeting; so does the proxy, without asking it.
        let reply = err_packet(0, ServerError::TOO_MANY_CONNECTIONS, "Too many connections");
        send_and_close(&mut app, &reply).await;
        return Err(Refused::new(
            RefusalReason::TooManyConnections,
            format!(
                "listener is at max_connections ({})",
                listener.max_connections
            ),
        ));
    }
    let Upstream {
        stream: upstream,
        buf: mut upstream_buf,
        mut greeting,
    } = match open_upstream(target, listener.upstream_connect_timeout).await {
        Ok(opened) if opened.greeting.offers_tls() => opened,
        refused => {
            // Before the application answers anything: a server without
            // TLS is refused without a login attempt.
            send_and_close(&mut app, &err_packet(0, UNAVAILABLE, UNAVAILABLE_MESSAGE)).await;
            return Err(match refused {
                Ok(_) => tls_refused(target),
                Err(refused) => refused,
            });
        }
    };
    // The application's leg is plaintext on loopback: it must not try TLS
    // with the proxy, whose certificate it could not verify anyway.
    greeting.set_tls_offered(false);
    let encoded = greeting
        .encode()
        .and_then(|g| encode_packet(0, &g))
        .map_err(|e| {
            Refused::new(
                RefusalReason::UpstreamUnavailable,
                format!("re-encoding the greeting of {target}: {e}"),
            )
        })?;
    app.write_all(&encoded)
        .await
        .map_err(|e| Refused::new(RefusalReason::ClientClosed, e.to_string()))?;

    let mut app_buf = BytesMut::with_capacity(256);
    let (seq, first) = read_packet(&mut app, &mut app_buf).await.map_err(|e| {
        Refused::new(
            RefusalReason::Malformed,
            format!("application handshake: {e}"),
        )
    })?;
    let mut response = match parse_client_handshake(&first) {
        Ok(ClientHandshake::Response(response)) => response,
        Ok(ClientHandshake::SslRequest(_)) => {
            let reply = err_packet(
                seq.wrapping_add(1),
                ServerError::BAD_HANDSHAKE,
                "This proxy port takes plaintext from local applications (intransit client mode) and encrypts the connection to the database itself; connect without TLS (mariadb: --skip-ssl, mysql: --ssl-mode=DISABLED)",
            );
            send_and_close(&mut app, &reply).await;
            return Err(Refused::new(
                RefusalReason::Malformed,
                "the application sent an SSLRequest although the greeting offered no TLS; a client-mode listener accepts plaintext only",
            ));
        }
        Err(e) => {
            let reply = err_packet(
                seq.wrapping_add(1),
                ServerError::BAD_HANDSHAKE,
                "Bad handshake",
            );
            send_and_close(&mut app, &reply).await;
            return Err(Refused::new(
                RefusalReason::Malformed,
                format!("application handshake: {e}"),
            ));
        }
    };
    let user = response.user_utf8().unwrap_or("").to_owned();
    let database = response
        .database_utf8()
        .ok()
        .flatten()
        .unwrap_or("")
        .to_owned();
    ctx.note_login(
        Some(&user),
        Some(&database)
            .filter(|d| !d.is_empty())
            .map(|d| d.as_str()),
    );
    if !app_buf.is_empty() {
        return Err(Refused::new(
            RefusalReason::Malformed,
            "bytes followed the HandshakeResponse before the server answered",
        ));
    }

    // Upstream the proxy's SSLRequest takes the place of the application's
    // response (packet 1), and the response follows inside TLS as packet
    // 2 with CLIENT_SSL set: the application counts one packet fewer.
    response.capabilities |= CLIENT_SSL;
    let unavailable_reply = err_packet(seq.wrapping_add(1), UNAVAILABLE, UNAVAILABLE_MESSAGE);
    let secured = secure_upstream(
        upstream,
        &upstream_buf,
        true,
        &listener.upstream_tls,
        &response,
        seq,
        target,
        listener.upstream_connect_timeout,
    );
    let (mut upstream, session) = match secured.await {
        Ok(secured) => secured,
        Err(refused) => {
            send_and_close(&mut app, &unavailable_reply).await;
            return Err(refused);
        }
    };
    client_mode::note_upstream_tls(ctx, &session);
    let forwarded = response
        .encode()
        .and_then(|r| encode_packet(seq.wrapping_add(1), &r))
        .map_err(|e| Refused::new(RefusalReason::Malformed, format!("HandshakeResponse: {e}")))?;
    if let Err(e) = upstream.write_all(&forwarded).await {
        send_and_close(&mut app, &unavailable_reply).await;
        return Err(Refused::new(
            RefusalReason::UpstreamUnavailable,
            format!("sending the HandshakeResponse to {target}: {e}"),
        ));
    }
    let relayed = relay_authentication(
        &mut app,
        &mut app_buf,
        &mut upstream,
        &mut upstream_buf,
        u8::MAX,
        seq,
    )
    .await;
    if let Err(failure) = relayed {
        return Err(failure.answer(&mut app).await);
    }
    client_mode::log_established(ctx, &session, &user, &database);
    Ok((app, upstream))
}
