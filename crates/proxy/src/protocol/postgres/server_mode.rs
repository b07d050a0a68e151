//! Server mode: a client asks for TLS the PostgreSQL way, proves who it
//! is, and names the database user it wants; see the diagram in the
//! folder's module doc. Each state is its own type and each step consumes
//! it. The login is relayed until the database's ReadyForQuery
//! (`relay::relay_login`), so a login it refuses (a wrong password, a
//! database that does not exist, a server shutting down) is counted and
//! audited as `upstream_refused`, and only a session that got in is
//! `ok`; from then on bytes are copied untouched.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use intransit_wire::pg::{self, CancelRequest, SqlState, StartupMessage};
use tokio::io::AsyncWriteExt;

use super::messages::{
    error_response, read_initial, too_many_clients_response, unavailable_response,
};
use super::negotiation::{authorize, before_tls, inside_tls, BeforeTls, InsideTls};
use super::pool::{self, Pools};
use super::relay::relay_login;
use super::session::Session;
use super::upstream::{
    first_authentication_request, forward_cancel, open_upstream, sasl_initial_response,
    upstreams_of,
};
use crate::accept::Admission;
use crate::conn::{ConnectionContext, Established, Listener as _, Refused};
use crate::listener::handshake::{self, Accepted, AcceptedTls};
use crate::listener::server_mode::{PreparedListener, PreparedRoute};
use crate::net::{close_with, BoxStream, Rewind};
use crate::refusal::RefusalReason;

type Ctx = ConnectionContext<PreparedListener>;

/// Runs one client connection from accept to close. The negotiation part is
/// bounded by the listener's handshake timeout; the copy phase is not.
///
/// Over-limit connections are negotiated only as far as needed to tell
/// the client, inside TLS, that the proxy is full: a plaintext error before
/// the handshake would be unauthenticated, and libpq rightly ignores it.
///
/// With `pools`, a verified client's login is completed by the proxy and
/// its transactions go to pooled server connections (`pool::session`);
/// the wait for a server connection is bounded by the pool's
/// `wait_timeout`, not the handshake timeout.
pub(crate) async fn serve(
    ctx: ConnectionContext<PreparedListener>,
    stream: BoxStream,
    pools: Option<Arc<Pools>>,
) -> Result<(), Refused> {
    // Each phase is boxed: the connection's task holds only the phase it
    // is in (an idle pooled client does not keep room for a handshake or
    // a server login), and each box is freed when its phase ends.
    let negotiated = ctx
        .handshake_deadline(Box::pin(negotiate(&ctx, stream, pools.as_ref())))
        .await;
    let negotiated = ctx.in_time(negotiated)?;
    match negotiated {
        Some(Next::Session(session)) => Box::pin(session.run(&ctx)).await,
        Some(Next::Pooled(authorized)) => match &pools {
            Some(pools) => Box::pin(authorized.pooled(&ctx, pools)).await,
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// Where a negotiated connection goes.
enum Next {
    /// Its own server connection, bytes copied both ways.
    Session(Session<AcceptedTls>),
    /// A pool.
    Pooled(Box<Authorized>),
}

async fn negotiate(
    ctx: &Ctx,
    stream: BoxStream,
    pools: Option<&Arc<Pools>>,
) -> Result<Option<Next>, Refused> {
    let state = AwaitingRequest {
        stream,
        buf: BytesMut::with_capacity(512),
        gssenc_answered: false,
    };
    let tls_requested = match state.next(ctx).await? {
        Request::Tls(t) => t,
        Request::Cancel(cancel) => {
            if let Some(pools) = pools {
                cancel_pooled(ctx, pools, &cancel).await;
                return Ok(None);
            }
            // A plaintext cancel carries no server name, so with SNI routes
            // the backend may be behind any upstream: each checks the secret
            // key and ignores a request that is not its own.
            let routes = ctx.listener.upstream_routes();
            forward_cancel(ctx, &cancel, &upstreams_of(&routes)).await;
            return Ok(None);
        }
    };
    let Some(established) = tls_requested.handshake(ctx).await? else {
        // An ACME CA's TLS-ALPN-01 validation, answered.
        return Ok(None);
    };
    let received = match established.read_startup().await? {
        Startup::Message(m) => m,
        Startup::Cancel(cancel, route) => {
            match pools {
                Some(pools) => cancel_pooled(ctx, pools, &cancel).await,
                None => forward_cancel(ctx, &cancel, &upstreams_of(&[route])).await,
            }
            return Ok(None);
        }
    };
    ctx.note_login(received.startup.user(), received.startup.database());
    if received.tls.accepted.admission == Admission::OverLimit {
        return Err(received.refuse_over_limit(ctx).await);
    }
    let authorized = received.authorize(ctx).await?;
    if pools.is_some() {
        return Ok(Some(Next::Pooled(Box::new(authorized))));
    }
    authorized
        .connect_upstream(ctx)
        .await
        .map(|s| Some(Next::Session(s)))
}

/// A cancel request on a pooled listener carries the proxy's own key of
/// a client: it goes, with the server's key, to the server connection
/// that client is using, or nowhere when it is using none. A key another
/// instance handed out (its `peer_id` in the process id) goes to that
/// peer, over mutual TLS, as it came.
async fn cancel_pooled(ctx: &Ctx, pools: &Pools, cancel: &CancelRequest) {
    match pools.cancels.target(cancel.process_id, &cancel.secret_key) {
        Some(Some(server)) => {
            let to_server = CancelRequest {
                process_id: server.pid,
                secret_key: server.secret.to_be_bytes().to_vec(),
            };
            forward_cancel(ctx, &to_server, &[(pools.target(), pools.upstream_tls())]).await;
            ctx.listener
                .metrics()
                .pool_cancel(ctx.listener.name(), "server");
        }
        Some(None) => {
            tracing::debug!(
                conn = ctx.id,
                "cancel request for a pooled client with no query running"
            );
            ctx.listener
                .metrics()
                .pool_cancel(ctx.listener.name(), "idle");
        }
        None => match pools.peer_of(cancel.process_id) {
            Some(peer) => {
                tracing::info!(
                    conn = ctx.id,
                    listener = %ctx.listener.name(),
                    peer_id = peer.id,
                    peer = %peer.address,
                    "cancel request for a client of a peer: forwarding it"
                );
                forward_cancel(ctx, cancel, &[(&peer.address, Some(&peer.tls))]).await;
                ctx.listener
                    .metrics()
                    .pool_cancel(ctx.listener.name(), "peer");
            }
            None => {
                tracing::debug!(
                    conn = ctx.id,
                    "cancel request with a key of no pooled client"
                );
                ctx.listener
                    .metrics()
                    .pool_cancel(ctx.listener.name(), "unknown");
            }
        },
    }
}

/// The first state: plaintext, before any request is answered.
struct AwaitingRequest {
    stream: BoxStream,
    buf: BytesMut,
    gssenc_answered: bool,
}

enum Request {
    Tls(TlsRequested),
    Cancel(CancelRequest),
}

impl AwaitingRequest {
    async fn next(mut self, ctx: &Ctx) -> Result<Request, Refused> {
        loop {
            let (message, consumed) = read_initial(&mut self.stream, &mut self.buf).await?;
            let _ = self.buf.split_to(consumed);
            let decision = before_tls(
                message,
                self.buf.len(),
                self.gssenc_answered,
                ctx.listener.client_auth,
            );
            let (answer, direct) = match decision {
                BeforeTls::RefuseGssEnc => {
                    self.gssenc_answered = true;
                    self.stream
                        .write_all(&[pg::GSSENC_REFUSE])
                        .await
                        .map_err(Refused::client_closed)?;
                    continue;
                }
                BeforeTls::AcceptSsl => (Some(pg::SSL_ACCEPT), false),
                BeforeTls::DirectTls => (None, true),
                BeforeTls::Cancel(cancel) => return Ok(Request::Cancel(cancel)),
                BeforeTls::Refuse(refusal) => {
                    close_with(&mut self.stream, &refusal.reply).await;
                    return Err(refusal.refused);
                }
            };
            if let Some(answer) = answer {
                self.stream
                    .write_all(&[answer])
                    .await
                    .map_err(Refused::client_closed)?;
            }
            // With direct TLS the bytes read are the start of the
            // ClientHello; after an SSLRequest there are none, and an
            // empty prefix must not keep the read buffer alive for the
            // life of the connection.
            let prefix = if direct {
                self.buf.split().freeze()
            } else {
                Bytes::new()
            };
            return Ok(Request::Tls(TlsRequested {
                stream: Rewind::new(prefix, self.stream),
                direct,
            }));
        }
    }
}

/// TLS was asked for (SSLRequest answered `S`, or direct TLS).
struct TlsRequested {
    stream: Rewind<BoxStream>,
    direct: bool,
}

impl TlsRequested {
    /// `None` when the connection was an ACME CA's TLS-ALPN-01 validation
    /// (direct TLS only), answered and closed.
    async fn handshake(self, ctx: &Ctx) -> Result<Option<TlsEstablished>, Refused> {
        let no_longer_accepted = error_response(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "the client certificate is no longer accepted; connect again with a valid certificate"
                .into(),
            None,
        );
        let accepted = if self.direct {
            // PostgreSQL 17 accepts direct TLS only with ALPN "postgresql",
            // so that a TLS connection meant for another protocol (say
            // HTTPS routed to the wrong port) is never taken for a
            // database session.
            let required = Some(pg::ALPN);
            match handshake::accept_first_byte(ctx, self.stream, required, &no_longer_accepted)
                .await?
            {
                Some(accepted) => accepted,
                None => return Ok(None),
            }
        } else {
            handshake::accept(ctx, self.stream, None, &no_longer_accepted).await?
        };
        Ok(Some(TlsEstablished {
            accepted,
            buf: BytesMut::with_capacity(512),
        }))
    }
}

/// The TLS handshake is complete and the client certificate (if any) passed
/// trust and allow-list checks.
struct TlsEstablished {
    accepted: Accepted,
    buf: BytesMut,
}

enum Startup {
    Message(Box<StartupReceived>),
    /// A cancel sent inside TLS, with the chosen route.
    Cancel(CancelRequest, Arc<PreparedRoute>),
}

impl TlsEstablished {
    async fn read_startup(mut self) -> Result<Startup, Refused> {
        let (message, consumed) = read_initial(&mut self.accepted.stream, &mut self.buf).await?;
        let raw = self.buf.split_to(consumed).freeze();
        match inside_tls(message) {
            InsideTls::Startup(startup) => Ok(Startup::Message(Box::new(StartupReceived {
                tls: self,
                startup,
                raw,
            }))),
            InsideTls::Cancel(cancel) => Ok(Startup::Cancel(cancel, self.accepted.route.clone())),
            InsideTls::Refuse(refusal) => {
                close_with(&mut self.accepted.stream, &refusal.reply).await;
                Err(refusal.refused)
            }
        }
    }
}

/// A StartupMessage arrived inside TLS; the user is not checked yet.
struct StartupReceived {
    tls: TlsEstablished,
    startup: StartupMessage,
    raw: Bytes,
}

impl StartupReceived {
    async fn refuse_over_limit(mut self: Box<Self>, ctx: &Ctx) -> Refused {
        close_with(&mut self.tls.accepted.stream, &too_many_clients_response()).await;
        ctx.over_limit()
    }

    async fn authorize(mut self: Box<Self>, ctx: &Ctx) -> Result<Authorized, Refused> {
        let rules = &self.tls.accepted.route.db_users;
        if let Err(refusal) = authorize(rules, ctx.peer_identity(), &self.startup) {
            close_with(&mut self.tls.accepted.stream, &refusal.reply).await;
            return Err(refusal.refused);
        }
        Ok(Authorized {
            tls: self.tls,
            startup: self.startup,
            raw: self.raw,
        })
    }
}

/// The user is permitted; next is the upstream.
struct Authorized {
    tls: TlsEstablished,
    startup: StartupMessage,
    raw: Bytes,
}

impl Authorized {
    /// Hands the verified client to its pool.
    async fn pooled(self: Box<Self>, ctx: &Ctx, pools: &Arc<Pools>) -> Result<(), Refused> {
        let Authorized { tls, startup, raw } = *self;
        // The StartupMessage's bytes share the read buffer's allocation:
        // dropped now, the session holds no buffer while the client idles.
        drop(raw);
        let TlsEstablished { accepted, buf } = tls;
        pool::session::serve(
            ctx,
            pools,
            pool::session::Verified {
                client: accepted.stream,
                startup,
                pending: buf,
                handshake_micros: accepted.handshake_micros,
            },
        )
        .await
    }

    async fn connect_upstream(mut self, ctx: &Ctx) -> Result<Session<AcceptedTls>, Refused> {
        let route = self.tls.accepted.route.clone();
        let target = &route.upstream;
        let mut first = BytesMut::with_capacity(self.raw.len() + self.tls.buf.len());
        first.extend_from_slice(&self.raw);
        first.extend_from_slice(&self.tls.buf);
        let opened = async {
            let (mut upstream, session) = open_upstream(
                target,
                route.upstream_tls.as_deref(),
                ctx.listener.basics.upstream_connect_timeout,
            )
            .await?;
            let tls_version = session.map(|s| s.tls.version);
            upstream.write_all(&first).await.map_err(|e| {
                Refused::new(
                    RefusalReason::UpstreamUnavailable,
                    format!("sending StartupMessage to {target}: {e}"),
                )
            })?;
            // Over a TLS upstream the server offers SCRAM-SHA-256-PLUS; its
            // channel binding would be to the server's certificate while
            // the client sees the proxy's, so the offer is rewritten.
            let (to_client, offer_rewritten) = if tls_version.is_some() {
                first_authentication_request(&mut upstream, target).await?
            } else {
                (Vec::new(), false)
            };
            Ok::<_, Refused>((upstream, tls_version, to_client, offer_rewritten))
        };
        let (upstream, tls_version, to_client, offer_rewritten) = match opened.await {
            Ok(opened) => opened,
            Err(refused) => {
                close_with(&mut self.tls.accepted.stream, &unavailable_response()).await;
                return Err(refused);
            }
        };
        let client = &mut self.tls.accepted.stream;
        let mut upstream = upstream;
        let mut from_server = BytesMut::from(&to_client[..]);
        if offer_rewritten {
            // The client's answer to the rewritten offer is judged before
            // it goes on; the server says nothing until it has it.
            client
                .write_all(&from_server.split())
                .await
                .map_err(Refused::client_closed)?;
            let answer = match sasl_initial_response(client).await {
                Ok(answer) => answer,
                Err(refused) => {
                    if refused.reason == RefusalReason::ChannelBinding {
                        let reply = error_response(
                            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                            "SCRAM channel binding is not possible through this proxy: the database's TLS session is not the client's".into(),
                            Some("Connect with channel_binding=disable; the proxy verifies the database's certificate itself.".into()),
                        );
                        close_with(client, &reply).await;
                    }
                    return Err(refused);
                }
            };
            upstream.write_all(&answer).await.map_err(|e| {
                Refused::new(
                    RefusalReason::UpstreamUnavailable,
                    format!("sending the SASL response to {target}: {e}"),
                )
            })?;
        }
        // Until ReadyForQuery, so that a login the database refuses is
        // this connection's refusal, not an established session.
        relay_login(client, &mut upstream, from_server, target).await?;
        Ok(self.established(ctx, upstream, tls_version))
    }

    fn established(
        self,
        ctx: &Ctx,
        upstream: BoxStream,
        tls_version: Option<&'static str>,
    ) -> Session<AcceptedTls> {
        let accepted = self.tls.accepted;
        ctx.log_established(Established {
            user: self.startup.user().unwrap_or_default(),
            database: self.startup.database().unwrap_or_default(),
            upstream: &accepted.route.upstream,
            upstream_tls: tls_version,
            server_name: None,
            handshake_micros: accepted.handshake_micros,
        });
        Session {
            peer: accepted.stream,
            upstream,
        }
    }
}
