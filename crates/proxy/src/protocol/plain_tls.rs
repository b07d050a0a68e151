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

use std::time::Duration;

use bytes::Bytes;
use intransit_config::Endpoint;
use intransit_wire::tls::CONTENT_TYPE_HANDSHAKE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::copy;
use crate::listener::client_mode::{self, PreparedClientListener};
use crate::listener::server_mode::{ConnectionContext, Refused};
use crate::net::{self, BoxStream, Rewind};
use crate::refusal::RefusalReason;
use crate::tls::handshake;
use crate::tls::upstream::{UpstreamSession, UpstreamTls};

/// Runs one connection: handshake (bounded by the handshake timeout), then
/// the upstream leg, then bytes both ways.
pub(crate) async fn serve(
    ctx: ConnectionContext,
    mut stream: BoxStream,
    over_limit: bool,
) -> Result<(), Refused> {
    let negotiated = tokio::time::timeout(ctx.listener.handshake_timeout, async {
        let mut first = [0u8; 1];
        let n = stream
            .read(&mut first)
            .await
            .map_err(|e| Refused::new(RefusalReason::ClientClosed, e.to_string()))?;
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
        let accepted = match handshake::accept(&ctx, stream, None).await? {
            Ok(accepted) => accepted,
            Err(mut rejected) => {
                handshake::close_with(&mut rejected.stream, &[]).await;
                return Err(rejected.refused);
            }
        };
        if over_limit {
            let mut accepted = accepted;
            handshake::close_with(&mut accepted.stream, &[]).await;
            return Err(Refused::new(
                RefusalReason::TooManyConnections,
                format!(
                    "listener is at max_connections ({})",
                    ctx.listener.max_connections
                ),
            )
            .with_identity(accepted.identity));
        }
        let route = accepted.route.clone();
        let opened = open_upstream(
            &route.upstream,
            route.upstream_tls.as_deref(),
            ctx.listener.upstream_connect_timeout,
        );
        match opened.await {
            Ok((upstream, session)) => {
                let tls_version = session.map(|s| s.version);
                handshake::log_established(&ctx, &accepted, "", "", tls_version);
                Ok((accepted.stream, upstream))
            }
            Err(refused) => {
                // No in-band error exists in a protocol we do not speak:
                // the client sees the connection close.
                let mut accepted = accepted;
                handshake::close_with(&mut accepted.stream, &[]).await;
                Err(refused.with_identity(accepted.identity))
            }
        }
    })
    .await
    .map_err(|_| {
        Refused::new(
            RefusalReason::Timeout,
            "client did not finish the TLS handshake in time",
        )
    })??;
    let (client, upstream) = negotiated;
    copy::forward(&ctx, client, upstream).await;
    Ok(())
}

/// The upstream connector of `tls` listeners, shared by both modes: the
/// connection, then, with `tls`, a TLS handshake from the first byte
/// ([`open_tls_upstream`]).
async fn open_upstream(
    target: &Endpoint,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
) -> Result<(BoxStream, Option<UpstreamSession>), Refused> {
    match tls {
        None => Ok((connect(target, timeout).await?, None)),
        Some(tls) => open_tls_upstream(target, tls, timeout)
            .await
            .map(|(stream, session)| (stream, Some(session))),
    }
}

/// Connects to `target` and runs TLS from the first byte.
async fn open_tls_upstream(
    target: &Endpoint,
    tls: &UpstreamTls,
    timeout: Duration,
) -> Result<(BoxStream, UpstreamSession), Refused> {
    let upstream = connect(target, timeout).await?;
    tls.connect(upstream, timeout)
        .await
        .map_err(|f| Refused::new(f.reason, format!("{target}: {}", f.detail)))
}

async fn connect(target: &Endpoint, timeout: Duration) -> Result<BoxStream, Refused> {
    net::connect(target, timeout).await.map_err(|e| {
        Refused::new(
            RefusalReason::UpstreamUnavailable,
            format!("connecting to {target}: {e}"),
        )
    })
}

/// Runs one client-mode connection: plaintext from a local application,
/// TLS to the upstream from its first byte. The upstream leg opens at once
/// (the application may wait for the server to speak first); a failure
/// closes the application's connection, as there is no in-band error in a
/// protocol the proxy does not speak.
pub(crate) async fn serve_client(
    ctx: ConnectionContext<PreparedClientListener>,
    mut app: BoxStream,
    over_limit: bool,
) -> Result<(), Refused> {
    let listener = &ctx.listener;
    if over_limit {
        let _ = app.shutdown().await;
        return Err(Refused::new(
            RefusalReason::TooManyConnections,
            format!(
                "listener is at max_connections ({})",
                listener.max_connections
            ),
        ));
    }
    let opened = tokio::time::timeout(
        listener.handshake_timeout,
        open_tls_upstream(
            &listener.upstream,
            &listener.upstream_tls,
            listener.upstream_connect_timeout,
        ),
    );
    let opened = match opened.await {
        Ok(opened) => opened,
        Err(_) => Err(Refused::new(
            RefusalReason::Timeout,
            "the upstream leg did not open within the handshake timeout",
        )),
    };
    match opened {
        Ok((upstream, session)) => {
            client_mode::log_established(&ctx, &session, "", "");
            copy::forward(&ctx, app, upstream).await;
            Ok(())
        }
        Err(refused) => {
            let _ = app.shutdown().await;
            Err(refused)
        }
    }
}
