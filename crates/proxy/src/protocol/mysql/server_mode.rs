//! Server mode: the proxy greets the client itself (its own version and
//! scramble, CLIENT_SSL set), takes TLS after the client's SSLRequest,
//! checks the certificate and the HandshakeResponse's user against
//! `db_users`, and only then connects to the database, asks the client to
//! answer the server's own challenge, and relays the login; after login it
//! watches the client's commands for COM_CHANGE_USER. See the diagram in
//! the folder's module doc.

use bytes::BytesMut;
use intransit_wire::mysql::{CommandScanner, Scanned};
use tokio::io::AsyncWriteExt;

use super::negotiation::{
    authorize, authorize_change_user, first_packet, login_inside_tls, plan_server_login,
    proxy_greeting, too_many_connections, Login, Renumbering, ServerLogin, SCRAMBLE_LEN,
};
use super::packets::{read_packet, unavailable_packet};
use super::relay::relay_authentication;
use super::upstream::open_upstream;
use crate::accept::Admission;
use crate::conn::{ConnectionContext, Established, Refusal, Refused};
use crate::copy::{self, Inspector};
use crate::listener::handshake::{self, Accepted, AcceptedTls};
use crate::listener::server_mode::PreparedListener;
use crate::net::{close_with, BoxStream, Rewind};
use crate::refusal::RefusalReason;

/// Runs one client connection from accept to close.
pub(crate) async fn serve(
    ctx: ConnectionContext<PreparedListener>,
    stream: BoxStream,
) -> Result<(), Refused> {
    // Boxed, as PostgreSQL's: the session does not keep room for the
    // negotiation's state.
    let negotiated = ctx
        .handshake_deadline(Box::pin(negotiate(&ctx, stream)))
        .await;
    let (client, upstream, guard) = ctx.in_time(negotiated)?;
    copy::forward_inspected(&ctx, client, upstream, guard).await
}

async fn negotiate(
    ctx: &ConnectionContext<PreparedListener>,
    mut client: BoxStream,
) -> Result<(AcceptedTls, BoxStream, UserSwitchGuard<'_>), Refused> {
    // The server speaks first, but no server is asked until the client is
    // verified: the proxy greets with a version and scramble of its own.
    let greeting =
        proxy_greeting(&ctx.listener.mysql_server_version, &scramble()).map_err(|e| {
            Refused::new(
                RefusalReason::Malformed,
                format!("encoding the proxy's greeting: {e}"),
            )
        })?;
    client
        .write_all(&greeting)
        .await
        .map_err(Refused::client_closed)?;
    let mut accepted = start_tls(ctx, client).await?;
    let mut tls_buf = BytesMut::with_capacity(512);
    let login = read_login(ctx, &mut accepted, &mut tls_buf).await?;
    let target = accepted.route.upstream.clone();
    let (mut upstream, mut upstream_buf, renumbering, upstream_tls, capabilities) =
        log_in_upstream(ctx, &mut accepted, &login).await?;
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
    let guard = UserSwitchGuard {
        ctx,
        route: accepted.route.clone(),
        scanner: CommandScanner::new(capabilities),
        user: login.user,
    };
    Ok((accepted.stream, upstream, guard))
}

/// A fresh scramble for the proxy's greeting: random printable bytes, as
/// servers send.
fn scramble() -> [u8; SCRAMBLE_LEN] {
    let mut bytes = [0u8; SCRAMBLE_LEN];
    // The scramble authenticates nothing (the client's answer to it is
    // dropped), so a failing system RNG leaves it fixed rather than
    // refusing the connection.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.map(|b| b'!' + b % 94)
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

/// Starts the login at the database, now that the client is verified:
/// connects, reads the real greeting, secures the leg when the route says
/// so (the proxy's own SSLRequest, packet 1), and sends the client's
/// HandshakeResponse with the placeholder plugin and no auth response
/// (packet 1 over plaintext, 2 over TLS), to which the server answers
/// with its own challenge for the client. Returns the upstream leg, bytes it sent past what was read, the
/// renumbering for the rest of the exchange, the upstream TLS version and
/// the capabilities the server saw.
async fn log_in_upstream(
    ctx: &ConnectionContext<PreparedListener>,
    accepted: &mut Accepted,
    login: &Login,
) -> Result<(BoxStream, BytesMut, Renumbering, Option<&'static str>, u32), Refused> {
    let route = accepted.route.clone();
    let target = &route.upstream;
    let timeout = ctx.listener.basics.upstream_connect_timeout;
    let unavailable_reply = unavailable_packet(login.seq.wrapping_add(1));
    let upstream = match open_upstream(target, timeout).await {
        Ok(opened) => opened,
        Err(refused) => {
            close_with(&mut accepted.stream, &unavailable_reply).await;
            return Err(refused);
        }
    };
    let plan: ServerLogin = match plan_server_login(login, &upstream.greeting) {
        Ok(plan) => plan,
        Err(refusal) => {
            close_with(&mut accepted.stream, &refusal.reply).await;
            return Err(refusal.refused);
        }
    };
    let opened = match route.upstream_tls.as_deref() {
        Some(tls) => upstream
            .secure(tls, plan.planned(), 1, target, timeout)
            .await
            .map(|(stream, session)| (stream, BytesMut::new(), 2, Some(session.tls.version))),
        None => Ok((upstream.stream, upstream.buf, 1, None)),
    };
    let (mut stream, buf, response_seq, version) = match opened {
        Ok(opened) => opened,
        Err(refused) => {
            close_with(&mut accepted.stream, &unavailable_reply).await;
            return Err(refused);
        }
    };
    let forwarded = plan
        .response(version.is_some(), response_seq)
        .map_err(|e| Refused::new(RefusalReason::Malformed, format!("HandshakeResponse: {e}")))?;
    if let Err(e) = stream.write_all(&forwarded).await {
        close_with(&mut accepted.stream, &unavailable_reply).await;
        return Err(Refused::new(
            RefusalReason::UpstreamUnavailable,
            format!("sending the HandshakeResponse to {target}: {e}"),
        ));
    }
    let renumbering = Renumbering::aligning(login.seq, response_seq);
    Ok((stream, buf, renumbering, version, plan.capabilities()))
}

/// Watches a logged-in client's commands: a COM_CHANGE_USER goes to the
/// database only if the connection's identity may log in as the user it
/// names, as at login. An allowed change is audited at once; a refused
/// one ends the connection with ERR 1045 and is the connection's audited
/// outcome.
struct UserSwitchGuard<'a> {
    ctx: &'a ConnectionContext<PreparedListener>,
    route: std::sync::Arc<crate::listener::server_mode::PreparedRoute>,
    scanner: CommandScanner,
    /// The database user the session is logged in as.
    user: String,
}

impl Inspector for UserSwitchGuard<'_> {
    fn approve(&mut self, pending: &[u8]) -> Result<usize, Refusal> {
        let mut approved = 0;
        loop {
            let rest = pending.get(approved..).unwrap_or_default();
            let scanned = self.scanner.scan(rest).map_err(|e| Refusal {
                reply: super::packets::err_packet(
                    1,
                    intransit_wire::mysql::ServerError::ACCESS_DENIED,
                    "Access denied: unreadable COM_CHANGE_USER",
                ),
                refused: Refused::new(RefusalReason::Malformed, format!("after login: {e}")),
            })?;
            match scanned {
                Scanned::Forward(0) => return Ok(approved),
                Scanned::Forward(n) => approved += n,
                Scanned::ChangeUser { len, request } => {
                    let database = String::from_utf8_lossy(&request.database).into_owned();
                    let checked = authorize_change_user(
                        &self.route.db_users,
                        self.ctx.peer_identity(),
                        &self.user,
                        &request,
                    );
                    let new_user = match checked {
                        Ok(user) => user,
                        Err(refusal) => {
                            let attempted = String::from_utf8_lossy(&request.user).into_owned();
                            self.ctx.note_login(
                                Some(&attempted),
                                Some(&database)
                                    .filter(|d| !d.is_empty())
                                    .map(String::as_str),
                            );
                            return Err(refusal);
                        }
                    };
                    let from = std::mem::replace(&mut self.user, new_user);
                    self.ctx.user_changed(&from, &self.user, &database);
                    approved += len;
                }
            }
        }
    }
}
