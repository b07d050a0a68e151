//! Server mode: the proxy greets the client with the server's greeting
//! (CLIENT_SSL set), takes TLS after the client's SSLRequest, checks the
//! HandshakeResponse's user against `db_users`, and relays the login; see
//! the diagram in the folder's module doc.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::negotiation::{
    authorize, first_packet, greeting_for_peer, login_inside_tls, too_many_connections, Login,
    Renumbering,
};
use super::packets::{read_packet, unavailable_packet};
use super::relay::relay_authentication;
use super::upstream::{open_upstream, Upstream};
use crate::accept::Admission;
use crate::conn::{ConnectionContext, Established, Refusal, Refused};
use crate::copy;
use crate::listener::handshake::{self, Accepted, AcceptedTls};
use crate::listener::server_mode::PreparedListener;
use crate::net::{close_with, BoxStream, Rewind};
use crate::refusal::RefusalReason;

/// Runs one client connection from accept to close.
pub(crate) async fn serve(
    ctx: ConnectionContext<PreparedListener>,
    stream: BoxStream,
) -> Result<(), Refused> {
    let negotiated = ctx.handshake_deadline(negotiate(&ctx, stream)).await;
    let (client, upstream) = ctx.in_time(negotiated)?;
    copy::forward(&ctx, client, upstream).await;
    Ok(())
}

async fn negotiate(
    ctx: &ConnectionContext<PreparedListener>,
    mut client: BoxStream,
) -> Result<(AcceptedTls, BoxStream), Refused> {
    let listener = &ctx.listener;
    let target = listener.default_route.upstream.clone();
    // The server speaks first: its greeting (and scramble) is what the
    // client will answer, so the upstream leg opens before anything else.
    let upstream = match open_upstream(&target, listener.basics.upstream_connect_timeout).await {
        Ok(opened) => opened,
        Err(refused) => {
            close_with(&mut client, &unavailable_packet(0)).await;
            return Err(refused);
        }
    };
    let greeting = greeting_for_peer(&upstream.greeting, true).map_err(|e| {
        Refused::new(
            RefusalReason::UpstreamUnavailable,
            format!("re-encoding the greeting of {target}: {e}"),
        )
    })?;
    client
        .write_all(&greeting)
        .await
        .map_err(Refused::client_closed)?;
    let mut accepted = start_tls(ctx, client).await?;
    let mut tls_buf = BytesMut::with_capacity(512);
    let login = read_login(ctx, &mut accepted, &mut tls_buf).await?;
    let (mut upstream, mut upstream_buf, renumbering, upstream_tls) =
        forward_login(ctx, &mut accepted, upstream, &login).await?;
    let relayed = relay_authentication(
        &mut accepted.stream,
        &mut tls_buf,
        &mut upstream,
        &mut upstream_buf,
        renumbering,
        login.seq,
    )
    .await;
    if let Err(failure) = relayed {
        return Err(failure.answer(&mut accepted.stream).await);
    }
    ctx.log_established(Established {
        user: &login.user,
        database: &login.database,
        upstream: &target,
        upstream_tls,
        server_name: None,
        handshake_micros: accepted.handshake_micros,
    });
    Ok((accepted.stream, upstream))
}

/// Reads the client's answer to the greeting and, for an SSLRequest, runs
/// the TLS handshake.
async fn start_tls(
    ctx: &ConnectionContext<PreparedListener>,
    mut client: BoxStream,
) -> Result<Accepted, Refused> {
    let mut buf = BytesMut::with_capacity(256);
    let (seq, first) = read_packet(&mut client, &mut buf)
        .await
        .map_err(|e| Refused::new(RefusalReason::Malformed, format!("client handshake: {e}")))?;
    if let Err(refusal) = first_packet(seq, &first) {
        close_with(&mut client, &refusal.reply).await;
        return Err(refusal.refused);
    }
    // Unlike PostgreSQL's, MySQL's SSLRequest gets no answer: the client
    // starts its TLS handshake right behind it, so bytes already read are
    // the start of the ClientHello and go to the TLS stack. Any plaintext
    // there fails the handshake; none of it reaches the server.
    let prefix = buf.split().freeze();
    handshake::accept(ctx, Rewind::new(prefix, client), None, &[]).await
}

/// Reads the HandshakeResponse inside TLS and checks the connection may
/// go on: within `max_connections`, a user `db_users` permits, nothing
/// sent ahead of the server's answer.
async fn read_login(
    ctx: &ConnectionContext<PreparedListener>,
    accepted: &mut Accepted,
    buf: &mut BytesMut,
) -> Result<Login, Refused> {
    let (seq, payload) = read_packet(&mut accepted.stream, buf)
        .await
        .map_err(|e| Refused::new(RefusalReason::Malformed, format!("HandshakeResponse: {e}")))?;
    let checked = login_inside_tls(seq, &payload).and_then(|login| {
        ctx.note_login(Some(&login.user), login.database());
        if accepted.admission == Admission::OverLimit {
            return Err(Refusal {
                reply: too_many_connections(seq.wrapping_add(1)),
                refused: ctx.over_limit(),
            });
        }
        authorize(&accepted.route.db_users, ctx.peer_identity(), &login)?;
        Ok(login)
    });
    let login = match checked {
        Ok(login) => login,
        Err(refusal) => {
            close_with(&mut accepted.stream, &refusal.reply).await;
            return Err(refusal.refused);
        }
    };
    if !buf.is_empty() {
        return Err(Refused::new(
            RefusalReason::Malformed,
            "bytes followed the HandshakeResponse before the server answered",
        ));
    }
    Ok(login)
}

/// Sends the login upstream: over TLS after the proxy's own SSLRequest
/// (packet 1, so both legs count the same and the response keeps its
/// sequence id and CLIENT_SSL), or over plaintext, where the server never
/// sees an SSLRequest, the response is its packet 1 and every later packet
/// is one behind the client's. Returns the upstream leg, bytes it sent
/// past its greeting, the renumbering and the upstream TLS version.
async fn forward_login(
    ctx: &ConnectionContext<PreparedListener>,
    accepted: &mut Accepted,
    upstream: Upstream,
    login: &Login,
) -> Result<(BoxStream, BytesMut, Renumbering, Option<&'static str>), Refused> {
    let route = accepted.route.clone();
    let target = &route.upstream;
    let timeout = ctx.listener.basics.upstream_connect_timeout;
    let unavailable_reply = unavailable_packet(login.seq.wrapping_add(1));
    let opened = match route.upstream_tls.as_deref() {
        Some(tls) => {
            let r = Renumbering::TLS_UPSTREAM;
            let ssl_request_seq = r.to_upstream(login.seq).wrapping_sub(1);
            upstream
                .secure(tls, &login.response, ssl_request_seq, target, timeout)
                .await
                .map(|(stream, session)| (stream, BytesMut::new(), r, Some(session.tls.version)))
        }
        None => Ok((
            upstream.stream,
            upstream.buf,
            Renumbering::PLAINTEXT_UPSTREAM,
            None,
        )),
    };
    let (mut stream, buf, renumbering, version) = match opened {
        Ok(opened) => opened,
        Err(refused) => {
            close_with(&mut accepted.stream, &unavailable_reply).await;
            return Err(refused);
        }
    };
    let forwarded = renumbering
        .response_for_upstream(login, version.is_some())
        .map_err(|e| Refused::new(RefusalReason::Malformed, format!("HandshakeResponse: {e}")))?;
    if let Err(e) = stream.write_all(&forwarded).await {
        close_with(&mut accepted.stream, &unavailable_reply).await;
        return Err(Refused::new(
            RefusalReason::UpstreamUnavailable,
            format!("sending the HandshakeResponse to {target}: {e}"),
        ));
    }
    Ok((stream, buf, renumbering, version))
}
