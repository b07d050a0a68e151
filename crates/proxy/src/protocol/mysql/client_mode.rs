//! Client mode: a local application speaks MySQL in plaintext and the
//! proxy carries its login and session to the database over TLS; see the
//! diagram in the folder's module doc.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::negotiation::{
    application_login, greeting_for_application, too_many_connections, Renumbering,
};
use super::packets::{read_packet, unavailable_packet};
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
    let negotiated = ctx
        .handshake_deadline(Box::pin(negotiate(&ctx, stream, admission)))
        .await;
    let (app, upstream) = ctx.in_time(negotiated)?;
    copy::forward(&ctx, app, upstream).await
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
        close_with(&mut app, &too_many_connections(0)).await;
        return Err(ctx.over_limit());
    }
    let upstream = match open_upstream(target, listener.basics.upstream_connect_timeout).await {
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
    // The application's leg is plaintext on loopback: it must not try TLS
    // with the proxy, whose certificate it could not verify anyway.
    let greeting = greeting_for_application(&upstream.greeting).map_err(|e| {
        Refused::new(
            RefusalReason::UpstreamUnavailable,
            format!("re-encoding the greeting of {target}: {e}"),
        )
    })?;
    app.write_all(&greeting)
        .await
        .map_err(Refused::client_closed)?;

    let mut app_buf = BytesMut::with_capacity(256);
    let (seq, first) = read_packet(&mut app, &mut app_buf).await.map_err(|e| {
        Refused::new(
            RefusalReason::Malformed,
            format!("application handshake: {e}"),
        )
    })?;
    let login = match application_login(seq, &first) {
        Ok(login) => login,
        Err(refusal) => {
            close_with(&mut app, &refusal.reply).await;
            return Err(refusal.refused);
        }
    };
    ctx.note_login(Some(&login.user), login.database());
    if !app_buf.is_empty() {
        return Err(Refused::new(
            RefusalReason::Malformed,
            "bytes followed the HandshakeResponse before the server answered",
        ));
    }

    // Upstream the proxy's SSLRequest takes the place of the application's
    // response (packet 1), and the response follows inside TLS as packet
    // 2 with CLIENT_SSL set: the application counts one packet fewer.
    let renumbering = Renumbering::CLIENT_MODE;
    let unavailable_reply = unavailable_packet(seq.wrapping_add(1));
    let secured = upstream.secure(
        &listener.upstream_tls,
        &login.response,
        seq,
        target,
        listener.basics.upstream_connect_timeout,
    );
    let (mut upstream, session) = match secured.await {
        Ok(secured) => secured,
        Err(refused) => {
            close_with(&mut app, &unavailable_reply).await;
            return Err(refused);
        }
    };
    ctx.note_upstream_session(&session);
    let forwarded = renumbering
        .response_for_upstream(&login, true)
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
        renumbering,
        seq,
    )
    .await;
    if let Err(failure) = relayed {
        return Err(failure.answer(&mut app).await);
    }
    ctx.log_client_mode_established(&session, &login.user, &login.database);
    Ok((app, upstream))
}
