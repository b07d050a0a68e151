//! The one PostgreSQL upstream connector, shared by server mode, client
//! mode and cancel requests: the connection, then, with `upstream_tls`,
//! an SSLRequest answered `S` (or direct TLS with ALPN `postgresql`) and
//! the TLS handshake. Over that TLS leg the server offers
//! `SCRAM-SHA-256-PLUS`, whose channel binding would name the server's
//! certificate while the peer sees another TLS session (or none), so the
//! first authentication request passes with the `-PLUS` mechanisms
//! removed, and a SCRAM client that flags channel binding is refused with
//! what to change.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use intransit_config::Endpoint;
use intransit_wire::pg::{self, BackendFrame, CancelRequest, FrontendFrame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use crate::conn::{ConnectionContext, Listener, Refused};
use crate::listener::server_mode::PreparedRoute;
use crate::net::BoxStream;
use crate::protocol::upstream;
use crate::refusal::RefusalReason;
use crate::tls::upstream::{UpstreamClientCert, UpstreamSession, UpstreamTls};

/// The PostgreSQL upstream connector, shared by server mode, client mode
/// and cancel requests: the connection, then, when `tls` is set, the TLS
/// request and handshake ([`open_tls_upstream`]). Returns the stream and
/// what TLS negotiated (`None` for plaintext).
pub(crate) async fn open_upstream(
    target: &Endpoint,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
) -> Result<(BoxStream, Option<UpstreamSession>), Refused> {
    match tls {
        None => Ok((upstream::connect(target, timeout).await?, None)),
        Some(tls) => open_tls_upstream(target, tls, timeout)
            .await
            .map(|(stream, session)| (stream, Some(session))),
    }
}

/// Connects to `target` and runs TLS the way PostgreSQL asks for it: an
/// SSLRequest answered `S`, or, with `direct`, a handshake at once with
/// ALPN `postgresql` (PostgreSQL 17). Each step is bounded by `timeout`.
pub(crate) async fn open_tls_upstream(
    target: &Endpoint,
    tls: &UpstreamTls,
    timeout: Duration,
) -> Result<(BoxStream, UpstreamSession), Refused> {
    open_tls_upstream_presenting(target, tls, None, timeout).await
}

/// [`open_tls_upstream`], presenting `client` instead of the configured
/// client certificate when it is given: a pooled login's certificate for
/// its database user.
pub(crate) async fn open_tls_upstream_presenting(
    target: &Endpoint,
    tls: &UpstreamTls,
    client: Option<&UpstreamClientCert>,
    timeout: Duration,
) -> Result<(BoxStream, UpstreamSession), Refused> {
    let mut stream = upstream::connect(target, timeout).await?;
    if !tls.direct() {
        request_tls(&mut stream, target, timeout).await?;
    }
    match client {
        None => upstream::start_tls(tls, stream, target, timeout).await,
        Some(client) => tls
            .connect_presenting(stream, timeout, client)
            .await
            .map_err(|f| upstream::tls_refused(&f, target)),
    }
}

/// Sends an SSLRequest and reads the one-byte answer: `S` goes on to TLS.
async fn request_tls(
    stream: &mut BoxStream,
    target: &Endpoint,
    timeout: Duration,
) -> Result<(), Refused> {
    let unavailable = |detail: String| Refused::new(RefusalReason::UpstreamUnavailable, detail);
    stream
        .write_all(&pg::encode_ssl_request())
        .await
        .map_err(|e| unavailable(format!("sending an SSLRequest to {target}: {e}")))?;
    // Exactly one byte: anything the server sent after its 'S' must go to
    // the TLS stack, which rejects it (CVE-2021-23222 class).
    let mut answer = [0u8; 1];
    match tokio::time::timeout(timeout, stream.read_exact(&mut answer)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(unavailable(format!(
                "reading the SSLRequest answer from {target}: {e}"
            )))
        }
        Err(_) => {
            return Err(unavailable(format!(
                "{target} did not answer the SSLRequest within {timeout:?}"
            )))
        }
    }
    match answer[0] {
        pg::SSL_ACCEPT => Ok(()),
        pg::SSL_REFUSE => Err(Refused::new(
            RefusalReason::UpstreamTlsRefused,
            format!("{target} refused TLS: it answered the SSLRequest with 'N' (the server has ssl = off), and upstream_tls requires TLS"),
        )),
        other => Err(Refused::new(
            RefusalReason::UpstreamTlsRefused,
            format!("{target} answered the SSLRequest with 0x{other:02x} instead of 'S' or 'N'"),
        )),
    }
}

/// Reads the server's messages up to its first authentication request (or
/// error) and returns the bytes to pass to the client, with `-PLUS` SASL
/// mechanisms removed. Bytes read past that message are passed on as they
/// are; from then on the session is copied untouched. The flag says
/// whether a SASL offer was rewritten. This is the first read on the TLS
/// leg, so a server that rejects the proxy's client certificate (TLS 1.3
/// says so after the handshake) is reported here as `upstream_tls_failed`.
pub(crate) async fn first_authentication_request(
    upstream: &mut BoxStream,
    target: &Endpoint,
) -> Result<(Vec<u8>, bool), Refused> {
    let unavailable = |detail: String| {
        Refused::new(
            RefusalReason::UpstreamUnavailable,
            format!("{target}: {detail}"),
        )
    };
    let mut buf = BytesMut::with_capacity(512);
    let mut out = Vec::new();
    let mut rewrote = false;
    loop {
        match pg::parse_backend_frame(&buf) {
            Ok(Some((frame, used))) => {
                let rewritten = if frame.tag == BackendFrame::AUTHENTICATION {
                    // Requests this proxy cannot parse are not SASL offers
                    // it would need to change; they pass unchanged.
                    pg::without_channel_binding(frame.body).ok().flatten()
                } else {
                    None
                };
                // NegotiateProtocolVersion and notices may precede the request.
                let done = !matches!(
                    frame.tag,
                    BackendFrame::NEGOTIATE_PROTOCOL_VERSION | BackendFrame::NOTICE_RESPONSE
                );
                rewrote |= rewritten.is_some();
                let original = buf.split_to(used);
                out.extend_from_slice(rewritten.as_deref().unwrap_or(&original));
                if done {
                    out.extend_from_slice(&buf);
                    return Ok((out, rewrote));
                }
            }
            Ok(None) => {}
            Err(e) => {
                return Err(unavailable(format!(
                    "invalid message while authenticating: {e}"
                )))
            }
        }
        let n = upstream
            .read_buf(&mut buf)
            .await
            .map_err(|e| upstream::read_failed(&e, target, "reading the authentication request"))?;
        if n == 0 {
            return Err(unavailable(
                "the server closed the connection before asking for authentication".into(),
            ));
        }
    }
}

/// Reads the client's answer to a rewritten SASL offer and returns the
/// bytes to forward. A SCRAM client that could have bound the channel
/// says so with the GS2 flag `y`; a server on TLS takes that for a
/// downgrade attack and refuses, and the flag is covered by the client's
/// proof, so no rewrite can help: the client is told what to change.
pub(crate) async fn sasl_initial_response<C: AsyncRead + Unpin>(
    client: &mut C,
) -> Result<BytesMut, Refused> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match pg::parse_frontend_frame(&buf) {
            Ok(Some((frame, _))) => {
                let flag = (frame.tag == FrontendFrame::PASSWORD)
                    .then(|| pg::parse_sasl_initial_response(frame.body).ok())
                    .flatten()
                    .map(|r| (r.mechanism.to_owned(), r.channel_binding_flag()));
                if let Some((mechanism, Some(b'y'))) = flag {
                    return Err(Refused::new(
                        RefusalReason::ChannelBinding,
                        format!("the client chose {mechanism} with the GS2 flag 'y' (channel binding supported, e.g. libpq channel_binding=prefer); the database, itself on TLS, would refuse that as a downgrade"),
                    ));
                }
                return Ok(buf);
            }
            Ok(None) => {}
            // Not a message this proxy needs to judge: the server will.
            Err(_) => return Ok(buf),
        }
        let n = client
            .read_buf(&mut buf)
            .await
            .map_err(Refused::client_closed)?;
        if n == 0 {
            return Err(Refused::new(
                RefusalReason::ClientClosed,
                "client closed the connection during authentication",
            ));
        }
    }
}

/// Each route's upstream and its TLS, for [`forward_cancel`].
pub(crate) fn upstreams_of(
    routes: &[Arc<PreparedRoute>],
) -> Vec<(&Endpoint, Option<&UpstreamTls>)> {
    routes
        .iter()
        .map(|r| (&r.upstream, r.upstream_tls.as_deref()))
        .collect()
}

/// Forwards a CancelRequest to each upstream, over TLS where that leg is
/// encrypted (always in client mode). PostgreSQL accepts cancels outside
/// pg_hba and libpq before 17 sends them unencrypted; they carry only the
/// backend's process id and secret key, which the proxy passes on as is.
pub(crate) async fn forward_cancel<L: Listener>(
    ctx: &ConnectionContext<L>,
    cancel: &CancelRequest,
    upstreams: &[(&Endpoint, Option<&UpstreamTls>)],
) {
    let listener = &ctx.listener;
    let timeout = listener.upstream_connect_timeout();
    for (target, tls) in upstreams {
        match open_upstream(target, *tls, timeout).await {
            Ok((mut upstream, session)) => {
                let sent = upstream.write_all(&cancel.encode()).await;
                let _ = upstream.flush().await;
                // PostgreSQL closes the connection once it has read the
                // request; wait for that so the cancel is not cut short.
                let mut sink = [0u8; 1];
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    upstream.read(&mut sink),
                )
                .await;
                debug!(
                    conn = ctx.id,
                    listener = %listener.name(),
                    peer = %ctx.peer,
                    upstream = %target,
                    upstream_tls = session.map_or("off", |s| s.tls.version),
                    process_id = cancel.process_id,
                    ok = sent.is_ok(),
                    "cancel request forwarded"
                );
            }
            Err(refused) => {
                warn!(
                    conn = ctx.id,
                    listener = %listener.name(),
                    peer = %ctx.peer,
                    upstream = %target,
                    reason = refused.reason.as_str(),
                    error = %refused.detail,
                    "cancel request could not be forwarded"
                );
            }
        }
    }
}
