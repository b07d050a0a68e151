//! `protocol = "tls"` listeners: TLS from the first byte (Redis, Kafka,
//! NATS, MongoDB, HTTP, anything), with the same certificate policy as the
//! database protocols, and the plaintext stream forwarded upstream.
//!
//! With `upstream_tls`, the upstream leg is TLS from its first byte too.
//!
//! There is no in-band error message to send in a protocol we do not
//! speak, so refusals close the connection (with a TLS alert where the
//! handshake got that far) and are logged.

use bytes::Bytes;
use intransit_wire::tls::CONTENT_TYPE_HANDSHAKE;
use tokio::io::AsyncReadExt;

use crate::copy;
use crate::handshake;
use crate::net::{self, BoxStream, Rewind};
use crate::refusal::RefusalReason;
use crate::server::{ConnectionContext, Refused};

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
        let target = &route.upstream;
        let opened = async {
            let upstream = net::connect(target, ctx.listener.upstream_connect_timeout)
                .await
                .map_err(|e| {
                    Refused::new(
                        RefusalReason::UpstreamUnavailable,
                        format!("connecting to {target}: {e}"),
                    )
                })?;
            match &route.upstream_tls {
                None => Ok((upstream, None)),
                Some(tls) => tls
                    .connect(upstream, ctx.listener.upstream_connect_timeout)
                    .await
                    .map(|(stream, version)| (stream, Some(version)))
                    .map_err(|f| Refused::new(f.reason, format!("{target}: {}", f.detail))),
            }
        };
        match opened.await {
            Ok((upstream, tls_version)) => {
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
