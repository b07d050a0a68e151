//! The TLS handshake with a client, shared by every protocol: read the
//! ClientHello, check ALPN where the protocol demands it, run the handshake
//! with the listener's current material, and re-verify resumed sessions.
//!
//! This module owns what happens between "the client wants TLS" and "TLS
//! is established with an identity we accept". It sends nothing but TLS.

use std::sync::Arc;
use std::time::Instant;

use crate::audit::ClientCertFacts;
use crate::metrics::{HandshakeFacts, NO_IDENTITY};

use intransit_policy::{AllowDecision, AllowList, ClientIdentity};
use rustls::server::Acceptor;
use tokio::io::AsyncWriteExt;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tracing::info;

use crate::listener::server_mode::{ConnectionContext, PreparedRoute, Refused};
use crate::net::{BoxStream, Rewind};
use crate::refusal::RefusalReason;
use crate::tls::listener::PresentedCertificate;

/// A TLS alert record: fatal, unrecognized_name.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// The client side of an established TLS session.
pub(crate) type ClientTls = TlsStream<Rewind<BoxStream>>;

/// A completed handshake whose certificate passed every check.
pub(crate) struct Accepted {
    pub(crate) stream: ClientTls,
    /// The route the server name chose.
    pub(crate) route: Arc<PreparedRoute>,
    pub(crate) identity: Option<ClientIdentity>,
    pub(crate) resumed: bool,
    pub(crate) handshake_micros: u128,
}

/// What a completed TLS handshake negotiated, kept on the connection so
/// that a later refusal is counted with the TLS facts and route it had.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    pub(crate) route: String,
    pub(crate) tls_version: &'static str,
    pub(crate) cipher: &'static str,
    pub(crate) group: &'static str,
    pub(crate) resumed: bool,
    pub(crate) identity: String,
}

/// The identity label of a client certificate under `allow` (see
/// [`crate::metrics::HandshakeLabels::identity`]).
fn identity_label(allow: &AllowList, identity: Option<&ClientIdentity>) -> String {
    let Some(identity) = identity else {
        return NO_IDENTITY.to_owned();
    };
    match allow.permits(identity) {
        AllowDecision::Open => "any".to_owned(),
        AllowDecision::Matched { pattern, .. } => pattern.to_string(),
        AllowDecision::Denied => "unlisted".to_owned(),
    }
}

impl Negotiated {
    fn of(stream: &ClientTls, route: &PreparedRoute, identity: String) -> Self {
        let (_, conn) = stream.get_ref();
        Negotiated {
            identity,
            route: route.label(),
            tls_version: conn
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("unknown"),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown"),
            group: conn
                .negotiated_key_exchange_group()
                .and_then(|g| g.name().as_str())
                .unwrap_or("unknown"),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        }
    }

    /// The metric labels these facts give.
    pub(crate) fn facts(&self) -> HandshakeFacts<'_> {
        HandshakeFacts {
            route: &self.route,
            tls_version: self.tls_version,
            cipher: self.cipher,
            group: self.group,
            resumed: self.resumed,
            identity: &self.identity,
        }
    }
}

/// A handshake that completed, but whose resumed session no longer passes
/// today's checks. The stream is handed back so the protocol can say why.
pub(crate) struct Rejected {
    pub(crate) stream: ClientTls,
    pub(crate) refused: Refused,
}

/// Runs the handshake. With `required_alpn`, a ClientHello that does not
/// offer that protocol is refused before the server says anything.
pub(crate) async fn accept(
    ctx: &ConnectionContext,
    stream: Rewind<BoxStream>,
    required_alpn: Option<&[u8]>,
) -> Result<Result<Accepted, Rejected>, Refused> {
    let started = Instant::now();
    let start = LazyConfigAcceptor::new(Acceptor::default(), stream)
        .await
        .map_err(|e| {
            Refused::new(
                RefusalReason::from_handshake_io(&e),
                format!("reading ClientHello: {e}"),
            )
        })?;
    if let Some(required) = required_alpn {
        let offered = start
            .client_hello()
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == required));
        if !offered {
            return Err(Refused::new(
                RefusalReason::Alpn,
                format!(
                    "ClientHello without ALPN {:?}",
                    String::from_utf8_lossy(required)
                ),
            ));
        }
    }
    let server_name = start.client_hello().server_name().map(str::to_owned);
    ctx.note(|r| r.sni = server_name.clone());
    let Some(route) = ctx.listener.route_for(server_name.as_deref()) else {
        // Before any ServerHello an alert travels as a plaintext record:
        // fatal (2), unrecognized_name (112).
        let mut io = start.io;
        let _ = io.write_all(&UNRECOGNIZED_NAME_ALERT).await;
        let _ = io.shutdown().await;
        return Err(Refused::new(
            RefusalReason::UnknownServerName,
            format!(
                "server name {:?} matches no route",
                server_name.as_deref().unwrap_or("")
            ),
        ));
    };
    let presented = PresentedCertificate::default();
    let material = route.tls.snapshot();
    let handshake = start.into_stream(material.config());
    let stream = presented.scope(handshake).await;
    if let Some(der) = presented.der() {
        ctx.note(|r| r.client_cert = ClientCertFacts::from_der(der.as_ref()));
    }
    let stream = stream.map_err(|e| {
        Refused::new(
            RefusalReason::from_handshake_io(&e),
            format!("TLS handshake: {e}"),
        )
        .with_identity(presented.identity())
    })?;
    let chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or(&[])
        .to_vec();
    let identity = chain
        .first()
        .and_then(|leaf| ClientIdentity::from_der(leaf.as_ref()).ok());
    let negotiated = Negotiated::of(
        &stream,
        &route,
        identity_label(&material.settings().allow, identity.as_ref()),
    );
    let resumed = negotiated.resumed;
    // The first handshake of a connection is its only one.
    let _ = ctx.negotiated.set(negotiated);
    let (_, conn) = stream.get_ref();
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let resumed_cert = if resumed {
        // A resumed session runs no verifier; its certificate comes from
        // the session.
        conn.peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| ClientCertFacts::from_der(der.as_ref()))
    } else {
        None
    };
    ctx.note(|r| {
        r.alpn = alpn;
        if resumed_cert.is_some() {
            r.client_cert = resumed_cert;
        }
    });
    if resumed {
        // rustls does not re-run certificate verification on resumption;
        // apply today's trust anchors, CRL and allow-list again.
        if let Err(e) = material.reverify(&chain) {
            return Ok(Err(Rejected {
                stream,
                refused: Refused::new(
                    RefusalReason::from_tls_error(&e),
                    format!("resumed session re-verification: {e}"),
                )
                .with_identity(identity),
            }));
        }
    }
    Ok(Ok(Accepted {
        stream,
        route,
        identity,
        resumed,
        handshake_micros: started.elapsed().as_micros(),
    }))
}

/// Closes a TLS stream after a final message, ignoring errors: the client
/// is being turned away and may already be gone.
pub(crate) async fn close_with(stream: &mut ClientTls, message: &[u8]) {
    let _ = stream.write_all(message).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// The one log line for an established session.
pub(crate) fn log_established(
    ctx: &ConnectionContext,
    accepted: &Accepted,
    user: &str,
    database: &str,
    upstream_tls: Option<&str>,
) {
    let negotiated = ctx.negotiated.get().cloned().unwrap_or_else(|| {
        let material = accepted.route.tls.snapshot();
        let allow = &material.settings().allow;
        let identity = identity_label(allow, accepted.identity.as_ref());
        Negotiated::of(&accepted.stream, &accepted.route, identity)
    });
    let listener = &ctx.listener;
    let protocol = listener.protocol.as_str();
    listener
        .metrics
        .handshake(&listener.name, protocol, negotiated.facts(), None);
    listener.metrics.handshake_duration(
        &listener.name,
        protocol,
        accepted.handshake_micros as f64 / 1e6,
    );
    info!(
        conn = ctx.id,
        listener = %ctx.listener.name,
        protocol = %ctx.listener.protocol,
        peer = %ctx.peer,
        identity = accepted.identity.as_ref().map(|i| i.to_string()).unwrap_or_default(),
        user = user,
        database = database,
        tls_version = negotiated.tls_version,
        cipher = negotiated.cipher,
        group = negotiated.group,
        resumed = accepted.resumed,
        route = %negotiated.route,
        upstream_tls = upstream_tls.unwrap_or("off"),
        handshake_us = accepted.handshake_micros as u64,
        "connection established"
    );
}
