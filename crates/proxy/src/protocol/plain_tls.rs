//! `protocol = "tls"` listeners: TLS from the first byte (Redis, Kafka,
//! NATS, MongoDB, HTTP, anything), with the same certificate policy as the
//! database protocols, and the plaintext stream forwarded upstream.
//!
//! With `upstream_tls`, the upstream leg is TLS from its first byte too.
//! Client mode (`serve_client`) takes plaintext from a local application
//! (say redis-cli without `--tls`) and opens that same TLS upstream leg.
//!
//! There is no in-band error message to send in a protocol we do not
//! speak, so refusals close the connection (with a TLS alert where the
//! handshake got that far) and are logged.
//!
//! Nor is there a login to watch, so over a TLS upstream leg the copy
//! starts at once and judges the server's first read: a TLS 1.3 server
//! refuses the proxy's client certificate with an alert after the
//! handshake, and that refusal (`upstream_tls_failed`) is the
//! connection's outcome, in the log, the audit event and the metrics; the
//! connection counts as established once the server has spoken (or the
//! session ended without it refusing).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use intransit_config::Endpoint;
use intransit_wire::tls::CONTENT_TYPE_HANDSHAKE;
use tokio::io::AsyncReadExt;

use crate::accept::Admission;
use crate::conn::{ConnectionContext, Established, Refused};
use crate::copy::{self, FreshUpstream};
use crate::listener::client_mode::PreparedClientListener;
use crate::listener::handshake::{self, AcceptedTls};
use crate::listener::server_mode::{PreparedListener, PreparedRoute};
use crate::net::{close_with, BoxStream, Rewind};
use crate::protocol::upstream;
use crate::refusal::RefusalReason;
use crate::tls::upstream::{UpstreamSession, UpstreamTls};

/// Runs one connection: handshake, then the upstream leg (both bounded by
/// the handshake timeout), then bytes both ways.
pub(crate) async fn serve(
    ctx: ConnectionContext<PreparedListener>,
    stream: BoxStream,
) -> Result<(), Refused> {
    // Boxed, as PostgreSQL's: the session does not keep room for the
    // handshake's and the upstream connect's state.
    let negotiated = ctx
        .handshake_deadline(Box::pin(negotiate(&ctx, stream)))
        .await;
    let Some(opened) = ctx.in_time(negotiated)? else {
        // An ACME CA's TLS-ALPN-01 validation, answered.
        return Ok(());
    };
    let route = &opened.route;
    let established = || {
        ctx.log_established(Established {
            user: "",
            database: "",
            upstream: &route.upstream,
            upstream_tls: opened.upstream_tls,
            server_name: None,
            handshake_micros: opened.handshake_micros,
        })
    };
    if opened.upstream_tls.is_none() {
        established();
        return copy::forward(&ctx, opened.client, opened.upstream).await;
    }
    let fresh = FreshUpstream {
        target: &route.upstream,
        established,
    };
    copy::forward_over_fresh_tls(&ctx, opened.client, opened.upstream, fresh).await
}

/// Both legs of a server-mode connection, before the copy.
struct Opened {
    client: AcceptedTls,
    upstream: BoxStream,
    route: Arc<PreparedRoute>,
    /// The upstream leg's TLS version; `None` for plaintext.
    upstream_tls: Option<&'static str>,
    handshake_micros: u128,
}

/// `None` when the connection was an ACME CA's TLS-ALPN-01 validation,
/// answered and closed.
async fn negotiate(
    ctx: &ConnectionContext<PreparedListener>,
    mut stream: BoxStream,
) -> Result<Option<Opened>, Refused> {
    let mut first = [0u8; 1];
    let n = stream
        .read(&mut first)
        .await
        .map_err(Refused::client_closed)?;
    if n == 0 {
        return Err(Refused::new(
            RefusalReason::ClientClosed,
            "client closed the connection before sending anything",
        ));
    }
    if first[0] != CONTENT_TYPE_HANDSHAKE {
        return Err(Refused::new(
            RefusalReason::PlaintextRefused,
            format!(
                "first byte 0x{:02x} is not a TLS handshake record; this listener speaks TLS only",
                first[0]
            ),
        ));
    }
    let stream = Rewind::new(Bytes::copy_from_slice(&first), stream);
    let Some(mut accepted) = handshake::accept_first_byte(ctx, stream, None, &[]).await? else {
        return Ok(None);
    };
    if accepted.admission == Admission::OverLimit {
        close_with(&mut accepted.stream, &[]).await;
        return Err(ctx.over_limit());
    }
    let route = accepted.route.clone();
    let opened = open_upstream(
        &route.upstream,
        route.upstream_tls.as_deref(),
        ctx.listener.basics.upstream_connect_timeout,
    );
    match opened.await {
        Ok((upstream, session)) => Ok(Some(Opened {
            client: accepted.stream,
            upstream,
            route,
            upstream_tls: session.map(|s| s.tls.version),
            handshake_micros: accepted.handshake_micros,
        })),
        Err(refused) => {
            // No in-band error exists in a protocol we do not speak: the
            // client sees the connection close.
            close_with(&mut accepted.stream, &[]).await;
            Err(refused)
        }
    }
}

/// The upstream connector of server-mode `tls` listeners: the
/// connection, then, with `tls`, a TLS handshake from the first byte.
async fn open_upstream(
    target: &Endpoint,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
) -> Result<(BoxStream, Option<UpstreamSession>), Refused> {
    let stream = upstream::connect(target, timeout).await?;
    let Some(tls) = tls else {
        return Ok((stream, None));
    };
    let (stream, session) = upstream::start_tls(tls, stream, target, timeout).await?;
    Ok((stream, Some(session)))
}

/// Runs one client-mode connection: plaintext from a local application,
/// TLS to the upstream from its first byte. The upstream leg opens at once
/// (the application may wait for the server to speak first); a failure
/// closes the application's connection, as there is no in-band error in a
/// protocol the proxy does not speak. The server's verdict on the proxy's
/// client certificate comes with its first read, in the copy.
pub(crate) async fn serve_client(
    ctx: ConnectionContext<PreparedClientListener>,
    mut app: BoxStream,
    admission: Admission,
) -> Result<(), Refused> {
    if admission == Admission::OverLimit {
        close_with(&mut app, &[]).await;
        return Err(ctx.over_limit());
    }
    let listener = &ctx.listener;
    let (target, timeout) = (&listener.upstream, listener.basics.upstream_connect_timeout);
    let opened = ctx
        .handshake_deadline(Box::pin(async {
            let stream = upstream::connect(target, timeout).await?;
            upstream::start_tls(&listener.upstream_tls, stream, target, timeout).await
        }))
        .await;
    match ctx.in_time(opened) {
        Ok((upstream, session)) => {
            // Known now, so that a refusal in the copy is counted with
            // the upstream leg's TLS facts.
            ctx.note_upstream_session(&session);
            let fresh = FreshUpstream {
                target,
                established: || ctx.log_client_mode_established(&session, "", ""),
            };
            copy::forward_over_fresh_tls(&ctx, app, upstream, fresh).await
        }
        Err(refused) => {
            close_with(&mut app, &[]).await;
            Err(refused)
        }
    }
}
