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
//! `caching_sha2_password` full authentication (MySQL 8) wants a secure
//! upstream leg: over plaintext TCP it asks for the server's RSA key and
//! works only if the client allows that; a unix-socket or TLS upstream
//! counts as secure.
//!
//! This module owns the order of events and the MySQL packets sent to
//! clients; the bytes are parsed and built by `intransit_wire::mysql`.

use bytes::BytesMut;
use intransit_wire::mysql::{
    encode_packet, parse_client_handshake, parse_packet, parse_server_auth_reply, ClientHandshake,
    ErrPacket, HandshakeResponse41, HandshakeV10, ServerAuthReply, ServerError, SslRequest,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::handshake::{self, ClientTls};
use crate::net::{self, BoxStream, Rewind};
use crate::refusal::RefusalReason;
use crate::server::{ConnectionContext, Refused};

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

/// Reads one packet, keeping what follows it in `buf`.
async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(u8, Vec<u8>), String> {
    loop {
        match parse_packet(buf) {
            Ok(Some((packet, used))) => {
                let out = (packet.sequence_id, packet.payload.to_vec());
                let _ = buf.split_to(used);
                return Ok(out);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("invalid packet: {e}")),
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            return Err("connection closed".into());
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
    let mut upstream = match net::connect(&target, listener.upstream_connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            let reply = err_packet(
                0,
                UNAVAILABLE,
                "the database is unavailable right now; try again later",
            );
            send_and_close(&mut client, &reply).await;
            return Err(unavailable(format!("connecting to {target}: {e}")));
        }
    };
    let mut upstream_buf = BytesMut::with_capacity(256);
    let (_, greeting_payload) = match read_packet(&mut upstream, &mut upstream_buf).await {
        Ok(p) => p,
        Err(e) => {
            let reply = err_packet(
                0,
                UNAVAILABLE,
                "the database is unavailable right now; try again later",
            );
            send_and_close(&mut client, &reply).await;
            return Err(unavailable(format!("greeting from {target}: {e}")));
        }
    };
    let mut greeting = match HandshakeV10::parse(&greeting_payload) {
        Ok(g) => g,
        Err(e) => {
            let what = ErrPacket::parse(&greeting_payload)
                .map(|err| format!("the server refused: {} {}", err.code, err.message_lossy()))
                .unwrap_or_else(|_| format!("unusable greeting: {e}"));
            let reply = err_packet(
                0,
                UNAVAILABLE,
                "the database is unavailable right now; try again later",
            );
            send_and_close(&mut client, &reply).await;
            return Err(unavailable(format!("{target}: {what}")));
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

    let unavailable_reply = err_packet(
        seq.wrapping_add(1),
        UNAVAILABLE,
        "the database is unavailable right now; try again later",
    );
    // With a TLS upstream the proxy sends its own SSLRequest (the client's
    // capabilities, CLIENT_SSL set) as packet 1, so both legs count the
    // same and the response keeps its sequence id and CLIENT_SSL. With a
    // plaintext upstream the server never sees an SSLRequest: the response
    // is its packet 1, and every later packet is one behind the client's.
    let route = accepted.route.clone();
    let (offset, upstream_tls_version) = match &route.upstream_tls {
        Some(tls) => {
            let secured = async {
                if !upstream_offers_tls {
                    return Err(Refused::new(
                        RefusalReason::UpstreamTlsRefused,
                        format!("{target} does not offer TLS (its greeting lacks CLIENT_SSL; is ssl off?), and upstream_tls requires TLS"),
                    ));
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
                let packet = encode_packet(seq.wrapping_sub(1), &request.encode())
                    .map_err(|e| unavailable(format!("SSLRequest: {e}")))?;
                upstream
                    .write_all(&packet)
                    .await
                    .map_err(|e| unavailable(format!("sending the SSLRequest to {target}: {e}")))?;
                tls.connect(upstream, listener.upstream_connect_timeout)
                    .await
                    .map_err(|f| Refused::new(f.reason, format!("{target}: {}", f.detail)))
            };
            match secured.await {
                Ok((stream, version)) => {
                    upstream = stream;
                    (0u8, Some(version))
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

    relay_authentication(
        &mut accepted.stream,
        &mut tls_buf,
        &mut upstream,
        &mut upstream_buf,
        offset,
    )
    .await
    .map_err(|e| {
        Refused::new(
            RefusalReason::Malformed,
            format!("authentication exchange: {e}"),
        )
        .with_identity(identity.clone())
    })?;
    handshake::log_established(ctx, &accepted, &user, &database, upstream_tls_version);
    Ok((accepted.stream, upstream))
}

/// Relays the authentication exchange (auth switch, more data, the
/// client's answers) in both directions with sequence ids renumbered
/// (client = upstream + `offset`), until
/// the server ends it with OK or ERR. Bytes already read past that point
/// are passed on as they are.
async fn relay_authentication(
    client: &mut ClientTls,
    client_buf: &mut BytesMut,
    upstream: &mut BoxStream,
    upstream_buf: &mut BytesMut,
    offset: u8,
) -> Result<(), String> {
    loop {
        tokio::select! {
            from_server = read_packet(upstream, upstream_buf) => {
                let (seq, payload) = from_server?;
                let done = matches!(
                    parse_server_auth_reply(&payload),
                    Ok(ServerAuthReply::Ok(_) | ServerAuthReply::Err(_))
                );
                let packet = encode_packet(seq.wrapping_add(offset), &payload).map_err(|e| e.to_string())?;
                client.write_all(&packet).await.map_err(|e| format!("to client: {e}"))?;
                if done {
                    if !upstream_buf.is_empty() {
                        client.write_all(upstream_buf).await.map_err(|e| format!("to client: {e}"))?;
                        upstream_buf.clear();
                    }
                    if !client_buf.is_empty() {
                        upstream.write_all(client_buf).await.map_err(|e| format!("to server: {e}"))?;
                        client_buf.clear();
                    }
                    client.flush().await.map_err(|e| format!("to client: {e}"))?;
                    return Ok(());
                }
                client.flush().await.map_err(|e| format!("to client: {e}"))?;
            }
            from_client = read_packet(client, client_buf) => {
                let (seq, payload) = from_client?;
                let packet = encode_packet(seq.wrapping_sub(offset), &payload).map_err(|e| e.to_string())?;
                upstream.write_all(&packet).await.map_err(|e| format!("to server: {e}"))?;
            }
        }
    }
}
