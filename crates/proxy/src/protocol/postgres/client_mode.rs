//! Client mode: a local application speaks PostgreSQL in plaintext and
//! the proxy carries its session to the database over TLS.
//!
//! ```text
//! SSLRequest --> 'N' (once)      GSSENCRequest --> 'N' (once)
//! CancelRequest --> forwarded upstream over TLS, closed
//! StartupMessage --> connect, SSLRequest (or direct TLS), TLS, StartupMessage --> login --> session
//! first byte 0x16 (the application starts TLS) --> closed
//! ```
//!
//! The login (the server's authentication requests, the application's
//! answers, the server's parameters) is relayed until ReadyForQuery
//! (`relay::relay_login`, as in server mode), so a login the server
//! refuses (an ErrorResponse: a wrong password, a proxy in server mode
//! whose `db_users` denies the user) ends the connection as a refusal,
//! `upstream_refused`, in the log, the audit event and the metrics, while
//! the application gets the server's ErrorResponse as sent.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::messages::{read_initial, too_many_clients_response, unavailable_response};
use super::negotiation::{from_application, Answered, FromApplication};
use super::relay::relay_login;
use super::session::Session;
use super::upstream::{first_authentication_request, forward_cancel, open_tls_upstream};
use crate::accept::Admission;
use crate::conn::{ConnectionContext, Refused};
use crate::listener::client_mode::PreparedClientListener;
use crate::net::{close_with, BoxStream};
use crate::refusal::RefusalReason;

/// Runs one client-mode connection: a local application speaking
/// plaintext, carried to the database over TLS. Negotiation is bounded by
/// the listener's handshake timeout; the copy phase is not.
pub(crate) async fn serve(
    ctx: ConnectionContext<PreparedClientListener>,
    stream: BoxStream,
    admission: Admission,
) -> Result<(), Refused> {
    let negotiated = ctx
        .handshake_deadline(Box::pin(negotiate(&ctx, stream, admission)))
        .await;
    let negotiated = ctx.in_time(negotiated)?;
    match negotiated {
        Some(session) => session.run(&ctx).await,
        None => Ok(()),
    }
}

/// Answers the application's requests for encryption with `N`, forwards a
/// cancel, and opens the TLS upstream leg for its StartupMessage. Returns
/// both legs, or `None` when the connection was a cancel.
async fn negotiate(
    ctx: &ConnectionContext<PreparedClientListener>,
    mut app: BoxStream,
    admission: Admission,
) -> Result<Option<Session<BoxStream>>, Refused> {
    let listener = &ctx.listener;
    let mut buf = BytesMut::with_capacity(512);
    let mut answered = Answered::default();
    let (startup, raw) = loop {
        let (message, consumed) = read_initial(&mut app, &mut buf).await?;
        let raw = buf.split_to(consumed).freeze();
        match from_application(message, &mut answered) {
            FromApplication::Answer(answer) => app
                .write_all(&[answer])
                .await
                .map_err(Refused::client_closed)?,
            FromApplication::Cancel(cancel) => {
                let upstream = [(&listener.upstream, Some(listener.upstream_tls.as_ref()))];
                forward_cancel(ctx, &cancel, &upstream).await;
                return Ok(None);
            }
            FromApplication::Startup(startup) => break (startup, raw),
            FromApplication::Refuse(refused) => return Err(refused),
        }
    };
    let user = startup.user().unwrap_or_default().to_owned();
    let database = startup.database().unwrap_or_default().to_owned();
    ctx.note_login(startup.user(), startup.database());
    if admission == Admission::OverLimit {
        close_with(&mut app, &too_many_clients_response()).await;
        return Err(ctx.over_limit());
    }
    let target = &listener.upstream;
    let opened = async {
        let (mut upstream, session) = open_tls_upstream(
            target,
            &listener.upstream_tls,
            listener.basics.upstream_connect_timeout,
        )
        .await?;
        ctx.note_upstream_session(&session);
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
        Ok((mut upstream, session, to_app)) => {
            relay_login(&mut app, &mut upstream, BytesMut::from(&to_app[..]), target).await?;
            ctx.log_client_mode_established(&session, &user, &database);
            Ok(Some(Session {
                peer: app,
                upstream,
            }))
        }
        Err(refused) => {
            close_with(&mut app, &unavailable_response()).await;
            Err(refused)
        }
    }
}
