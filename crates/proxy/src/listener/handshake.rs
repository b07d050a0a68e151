//! The TLS handshake with a client in server mode, shared by every
//! protocol: read the ClientHello, check ALPN where the protocol demands
//! it, choose the route by server name, run the handshake with that
//! route's current material, and re-verify resumed sessions.
//!
//! This module owns what happens between "the client wants TLS" and "TLS
//! is established with an identity we accept". It sends nothing but TLS,
//! and the bytes a protocol gives it to say that a resumed session is no
//! longer accepted. Its success is where a connection stops counting as
//! unauthenticated and asks for a `max_connections` slot.
//!
//! Where TLS starts at the first byte ([`accept_first_byte`]: `tls`
//! listeners, PostgreSQL direct TLS), a ClientHello offering ALPN
//! `acme-tls/1` is an ACME CA validating a TLS-ALPN-01 challenge (RFC
//! 8737), not a client: it gets the challenge certificate pending for its
//! server name in the listener's [`TlsAlpnChallenges`], `acme-tls/1` is
//! negotiated and the connection is closed without any database protocol;
//! with no challenge pending for that name it is refused with a
//! handshake_failure alert. Other ClientHellos never meet that material,
//! and the routes' configurations do not offer `acme-tls/1`.

use std::sync::Arc;
use std::time::Instant;

use intransit_pki::{TlsAlpnChallenges, ACME_TLS_ALPN};
use intransit_policy::{AllowDecision, AllowList, ClientIdentity};
use rustls::server::Acceptor;
use tokio::io::AsyncWriteExt;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, StartHandshake};
use tracing::info;

use crate::admission::Admission;
use crate::audit::ClientCertFacts;
use crate::conn::{ConnectionContext, Negotiated, Refused};
use crate::listener::server_mode::{PreparedListener, PreparedRoute};
use crate::metrics::NO_IDENTITY;
use crate::net::{close_with, BoxStream, Rewind};
use crate::refusal::{describe_handshake_io, describe_tls_error, RefusalReason};
use crate::tls::facts::TlsFacts;
use crate::tls::listener::{acme_validation_config, PresentedCertificate};

/// A TLS alert record: fatal, unrecognized_name.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
/// A TLS alert record: fatal, handshake_failure.
const HANDSHAKE_FAILURE_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];

/// The TLS stream a server-mode listener accepted from a client. Boxed:
/// the TLS state is over a kilobyte, and a connection's futures then hold
/// a pointer to it wherever they pass it on, instead of a copy each.
pub(crate) type AcceptedTls = Box<TlsStream<Rewind<BoxStream>>>;

/// A completed handshake whose certificate passed every check. What it
/// negotiated, and the client's identity, are on the connection's context.
pub(crate) struct Accepted {
    pub(crate) stream: AcceptedTls,
    /// The route the server name chose.
    pub(crate) route: Arc<PreparedRoute>,
    pub(crate) handshake_micros: u128,
    /// Whether the verified client got a `max_connections` slot; one over
    /// the limit is told so inside TLS, in its protocol's words.
    pub(crate) admission: Admission,
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

/// Runs the handshake of a connection that asked for TLS its protocol's
/// way (an SSLRequest, MySQL's CLIENT_SSL): a database client, never an
/// ACME CA. With `required_alpn`, a ClientHello that does not offer that
/// protocol is refused before the server says anything. A resumed session
/// whose certificate no longer passes today's checks gets `on_rejected`
/// (the protocol's own error, or nothing) inside TLS before the connection
/// closes.
pub(crate) async fn accept(
    ctx: &ConnectionContext<PreparedListener>,
    stream: Rewind<BoxStream>,
    required_alpn: Option<&[u8]>,
    on_rejected: &[u8],
) -> Result<Accepted, Refused> {
    let started = Instant::now();
    let start = read_client_hello(stream).await?;
    accept_client(ctx, start, started, required_alpn, on_rejected).await
}

/// [`accept`] for TLS from the connection's first byte, where an ACME
/// CA's TLS-ALPN-01 validation may arrive too: `None` when the connection
/// was one, answered (see the module doc) and closed.
pub(crate) async fn accept_first_byte(
    ctx: &ConnectionContext<PreparedListener>,
    stream: Rewind<BoxStream>,
    required_alpn: Option<&[u8]>,
    on_rejected: &[u8],
) -> Result<Option<Accepted>, Refused> {
    let started = Instant::now();
    let start = read_client_hello(stream).await?;
    if offers(&start, ACME_TLS_ALPN) {
        answer_acme_validation(ctx, start, &ctx.listener.acme_challenges).await?;
        return Ok(None);
    }
    accept_client(ctx, start, started, required_alpn, on_rejected)
        .await
        .map(Some)
}

type ClientHelloRead = StartHandshake<Rewind<BoxStream>>;

async fn read_client_hello(stream: Rewind<BoxStream>) -> Result<ClientHelloRead, Refused> {
    LazyConfigAcceptor::new(Acceptor::default(), stream)
        .await
        .map_err(|e| {
            Refused::new(
                RefusalReason::from_handshake_io(&e),
                format!("reading ClientHello: {e}"),
            )
        })
}

/// Whether the ClientHello offers ALPN `protocol`.
fn offers(start: &ClientHelloRead, protocol: &[u8]) -> bool {
    start
        .client_hello()
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == protocol))
}

/// Answers a TLS-ALPN-01 validation with the challenge certificate
/// pending for the ClientHello's server name, or refuses it with a
/// handshake_failure alert when none is. An answered validation is logged
/// and audited (outcome `acme_validation`) but not counted as a client's
/// handshake.
async fn answer_acme_validation(
    ctx: &ConnectionContext<PreparedListener>,
    start: ClientHelloRead,
    challenges: &TlsAlpnChallenges,
) -> Result<(), Refused> {
    let server_name = start.client_hello().server_name().map(str::to_owned);
    ctx.note(|r| {
        r.sni = server_name.clone();
        r.alpn = Some(String::from_utf8_lossy(ACME_TLS_ALPN).into_owned());
    });
    let pending = server_name
        .as_deref()
        .and_then(|name| challenges.find(name));
    let Some(certificate) = pending else {
        let mut io = start.io;
        let _ = io.write_all(&HANDSHAKE_FAILURE_ALERT).await;
        let _ = io.shutdown().await;
        return Err(Refused::new(
            RefusalReason::Alpn,
            format!(
                "ClientHello offering ALPN \"acme-tls/1\" for server name {:?}, with no \
                 TLS-ALPN-01 challenge pending for it",
                server_name.as_deref().unwrap_or("")
            ),
        ));
    };
    let config = acme_validation_config(&certificate).map_err(|e| {
        Refused::new(
            RefusalReason::HandshakeFailed,
            format!("the TLS-ALPN-01 answer: {e}"),
        )
    })?;
    let mut stream = start.into_stream(config).await.map_err(|e| {
        Refused::new(
            RefusalReason::from_handshake_io(&e),
            format!("TLS-ALPN-01 handshake: {}", describe_handshake_io(&e)),
        )
    })?;
    // The validation is the handshake itself: nothing follows it.
    let _ = stream.shutdown().await;
    ctx.note(|r| r.acme_validation = true);
    info!(
        conn = ctx.id,
        listener = %ctx.listener.basics.name,
        peer = %ctx.peer,
        server_name = server_name.as_deref().unwrap_or(""),
        "answered an ACME TLS-ALPN-01 validation"
    );
    Ok(())
}

/// The handshake of a database client whose ClientHello has been read.
async fn accept_client(
    ctx: &ConnectionContext<PreparedListener>,
    start: ClientHelloRead,
    started: Instant,
    required_alpn: Option<&[u8]>,
    on_rejected: &[u8],
) -> Result<Accepted, Refused> {
    if let Some(required) = required_alpn {
        if !offers(&start, required) {
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
            format!("TLS handshake: {}", describe_handshake_io(&e)),
        )
        .presented(presented.identity())
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
    let (_, conn) = stream.get_ref();
    let tls = TlsFacts::of(conn);
    let resumed = tls.resumed;
    ctx.note_negotiated(Negotiated {
        route: route.label(),
        tls,
        identity_label: identity_label(&material.settings().allow, identity.as_ref()),
        peer_identity: identity,
    });
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
            let mut stream = stream;
            close_with(&mut stream, on_rejected).await;
            return Err(Refused::new(
                RefusalReason::from_tls_error(&e),
                format!(
                    "resumed session re-verification: {}",
                    describe_tls_error(&e)
                ),
            ));
        }
    }
    Ok(Accepted {
        stream: Box::new(stream),
        route,
        handshake_micros: started.elapsed().as_micros(),
        admission: ctx.admission.promote(),
    })
}
