//! Server mode: the proxy greets the client with the server's greeting
//! (CLIENT_SSL set), takes TLS after the client's SSLRequest, checks the
//! HandshakeResponse's user against `db_users`, and relays the login; see
//! the diagram in the folder's module doc.

use bytes::BytesMut;
use intransit_wire::mysql::{
    encode_packet, parse_client_handshake, ClientHandshake, HandshakeResponse41, ServerError,
};
use tokio::io::AsyncWriteExt;

use super::packets::{err_packet, read_packet, unavailable_packet};
use super::relay::relay_authentication;
use super::upstream::open_upstream;
use crate::accept::Admission;
use crate::conn::{ConnectionContext, Established, Refused};
use crate::copy;
use crate::listener::server_mode::PreparedListener;
use crate::net::{close_with, BoxStream, Rewind};
use crate::refusal::RefusalReason;
use crate::tls::handshake::{self, AcceptedTls};

/// Runs one client connection from accept to close.
pub(crate) async fn serve(
    ctx: ConnectionContext<PreparedListener>,
    stream: BoxStream,
    admission: Admission,
) -> Result<(), Refused> {
    let (client, upstream) = ctx
        .within_handshake_timeout(negotiate(&ctx, stream, admission))
        .await?;
    copy::forward(&ctx, client, upstream).await;
    Ok(())
}

async fn negotiate(
    ctx: &ConnectionContext<PreparedListener>,
    mut client: BoxStream,
    admission: Admission,
) -> Result<(AcceptedTls, BoxStream), Refused> {
    let listener = &ctx.listener;
    let target = listener.default_route.upstream.clone();
    let unavailable = |detail: String| Refused::new(RefusalReason::UpstreamUnavailable, detail);

    // The server speaks first: its greeting (and scramble) is what the
    // client will answer, so the upstream leg opens before anything else.
    let upstream = match open_upstream(&target, listener.upstream_connect_timeout).await {
        Ok(opened) => opened,
        Err(refused) => {
            close_with(&mut client, &unavailable_packet(0)).await;
            return Err(refused);
        }
    };
    let mut greeting = upstream.greeting.clone();
    greeting.set_tls_offered(true);
    let encoded = greeting
        .encode()
        .and_then(|g| encode_packet(0, &g))
        .map_err(|e| unavailable(format!("re-encoding the greeting of {target}: {e}")))?;
    client
        .write_all(&encoded)
        .await
        .map_err(Refused::client_closed)?;

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
            close_with(&mut client, &reply).await;
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
            close_with(&mut client, &reply).await;
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

    let mut accepted = handshake::accept(ctx, Rewind::new(prefix, client), None, &[]).await?;
    let identity = ctx.peer_identity();
    let mut tls_buf = BytesMut::with_capacity(512);
    let (seq, payload) = read_packet(&mut accepted.stream, &mut tls_buf)
        .await
        .map_err(|e| Refused::new(RefusalReason::Malformed, format!("HandshakeResponse: {e}")))?;
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
            close_with(&mut accepted.stream, &reply).await;
            return Err(Refused::new(
                RefusalReason::Malformed,
                format!("HandshakeResponse inside TLS: {e}"),
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
    if admission == Admission::OverLimit {
        let reply = err_packet(
            seq.wrapping_add(1),
            ServerError::TOO_MANY_CONNECTIONS,
            "Too many connections",
        );
        close_with(&mut accepted.stream, &reply).await;
        return Err(ctx.over_limit());
    }
    if !accepted.route.db_users.permits(identity, &user) {
        let who = identity.map_or_else(
            || "a client without a certificate".to_owned(),
            |i| format!("certificate identity \"{i}\""),
        );
        let reply = err_packet(
            seq.wrapping_add(1),
            ServerError::ACCESS_DENIED,
            &format!("Access denied: {who} may not log in as database user '{user}'"),
        );
        close_with(&mut accepted.stream, &reply).await;
        return Err(Refused::new(
            RefusalReason::UserDenied,
            format!("database user {user:?} not permitted by db_users"),
        ));
    }
    if !tls_buf.is_empty() {
        return Err(Refused::new(
            RefusalReason::Malformed,
            "bytes followed the HandshakeResponse before the server answered",
        ));
    }

    let unavailable_reply = unavailable_packet(seq.wrapping_add(1));
    // With a TLS upstream the proxy sends its own SSLRequest (the client's
    // capabilities, CLIENT_SSL set) as packet 1, so both legs count the
    // same and the response keeps its sequence id and CLIENT_SSL. With a
    // plaintext upstream the server never sees an SSLRequest: the response
    // is its packet 1, and every later packet is one behind the client's.
    let route = accepted.route.clone();
    let mut upstream_buf = BytesMut::new();
    let (mut upstream, offset, upstream_tls_version) = match &route.upstream_tls {
        Some(tls) => {
            let secured = upstream.secure(
                tls,
                &response,
                seq.wrapping_sub(1),
                &target,
                listener.upstream_connect_timeout,
            );
            match secured.await {
                Ok((stream, session)) => (stream, 0u8, Some(session.tls.version)),
                Err(refused) => {
                    close_with(&mut accepted.stream, &unavailable_reply).await;
                    return Err(refused);
                }
            }
        }
        None => {
            response.clear_ssl();
            upstream_buf = upstream.buf;
            (upstream.stream, 1u8, None)
        }
    };
    let forwarded = response
        .encode()
        .and_then(|r| encode_packet(seq.wrapping_sub(offset), &r))
        .map_err(|e| Refused::new(RefusalReason::Malformed, format!("HandshakeResponse: {e}")))?;
    if let Err(e) = upstream.write_all(&forwarded).await {
        close_with(&mut accepted.stream, &unavailable_reply).await;
        return Err(unavailable(format!(
            "sending the HandshakeResponse to {target}: {e}"
        )));
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
        return Err(failure.answer(&mut accepted.stream).await);
    }
    ctx.log_established(Established {
        user: &user,
        database: &database,
        upstream: &target,
        upstream_tls: upstream_tls_version,
        server_name: None,
        handshake_micros: accepted.handshake_micros,
    });
    Ok((accepted.stream, upstream))
}
