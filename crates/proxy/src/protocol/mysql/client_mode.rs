//! Client mode: a local application speaks MySQL in plaintext and the
//! proxy carries its login and session to the database over TLS; see the
//! diagram in the folder's module doc.

use bytes::BytesMut;
use intransit_wire::mysql::{
    encode_packet, parse_client_handshake, ClientHandshake, ServerError, CLIENT_SSL,
};
use tokio::io::AsyncWriteExt;

use super::packets::{err_packet, read_packet, unavailable_packet};
use super::relay::relay_authentication;
use super::upstream::{open_upstream, tls_refused};
use crate::accept::Admission;
use crate::conn::{ConnectionContext, Refused};
use crate::copy;
use crate::listener::client_mode::PreparedClientListener;
use crate::net::{close_with, BoxStream};
use crate::refusal::RefusalReason;

/// Runs one client-mode connection: a local application speaking MySQL in
/// plaintext, carried to the database over TLS. Negotiation (through the
/// end of authentication) is bounded by the handshake timeout.
pub(crate) async fn serve(
    ctx: ConnectionContext<PreparedClientListener>,
    stream: BoxStream,
    admission: Admission,
) -> Result<(), Refused> {
    let (app, upstream) = ctx
        .within_handshake_timeout(negotiate(&ctx, stream, admission))
        .await?;
    copy::forward(&ctx, app, upstream).await;
    Ok(())
}

async fn negotiate(
    ctx: &ConnectionContext<PreparedClientListener>,
    mut app: BoxStream,
    admission: Admission,
) -> Result<(BoxStream, BoxStream), Refused> {
    let listener = &ctx.listener;
    let target = &listener.upstream;
    if admission == Admission::OverLimit {
        // A server that is full answers the connection with ERR 1040 in
        // place of its greeting; so does the proxy, without asking it.
        let reply = err_packet(0, ServerError::TOO_MANY_CONNECTIONS, "Too many connections");
        close_with(&mut app, &reply).await;
        return Err(ctx.over_limit());
    }
    let upstream = match open_upstream(target, listener.upstream_connect_timeout).await {
        Ok(opened) if opened.greeting.offers_tls() => opened,
        refused => {
            // Before the application answers anything: a server without
            // TLS is refused without a login attempt.
            close_with(&mut app, &unavailable_packet(0)).await;
            return Err(match refused {
                Ok(_) => tls_refused(target),
                Err(refused) => refused,
            });
        }
    };
    let mut greeting = upstream.greeting.clone();
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
        .map_err(Refused::client_closed)?;

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
            close_with(&mut app, &reply).await;
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
            close_with(&mut app, &reply).await;
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
    let unavailable_reply = unavailable_packet(seq.wrapping_add(1));
    let secured = upstream.secure(
        &listener.upstream_tls,
        &response,
        seq,
        target,
        listener.upstream_connect_timeout,
    );
    let (mut upstream, session) = match secured.await {
        Ok(secured) => secured,
        Err(refused) => {
            close_with(&mut app, &unavailable_reply).await;
            return Err(refused);
        }
    };
    ctx.note_upstream_session(&session);
    let forwarded = response
        .encode()
        .and_then(|r| encode_packet(seq.wrapping_add(1), &r))
        .map_err(|e| Refused::new(RefusalReason::Malformed, format!("HandshakeResponse: {e}")))?;
    if let Err(e) = upstream.write_all(&forwarded).await {
        close_with(&mut app, &unavailable_reply).await;
        return Err(Refused::new(
            RefusalReason::UpstreamUnavailable,
            format!("sending the HandshakeResponse to {target}: {e}"),
        ));
    }
    let relayed = relay_authentication(
        &mut app,
        &mut app_buf,
        &mut upstream,
        &mut BytesMut::new(),
        u8::MAX,
        seq,
    )
    .await;
    if let Err(failure) = relayed {
        return Err(failure.answer(&mut app).await);
    }
    ctx.log_client_mode_established(&session, &user, &database);
    Ok((app, upstream))
}
