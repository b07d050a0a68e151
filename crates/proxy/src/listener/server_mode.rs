//! Listener runtime: accept loop, connection limit, refusal logging and
//! graceful drain.
//!
//! This module owns the life of a connection from accept to close, but not
//! what is said on it (that is `postgres`). Each accepted socket gets a task;
//! a semaphore caps concurrent connections; a shutdown signal stops
//! accepting, and the caller waits for the task tracker to drain. Server-mode
//! listeners ([`PreparedListener`]) and client-mode ones
//! ([`crate::listener::client_mode::PreparedClientListener`]) share the loop, the refusal
//! log line, the metrics and the audit event through [`Listener`].

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use intransit_config::{ClientAuth, Endpoint, ListenerConfig, Protocol, ServerNamePattern};
use intransit_policy::{ClientIdentity, DbUserRules};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use crate::audit::{rfc3339, AuditEvent, AuditLog, ConnectionRecord};
use crate::metrics::{HandshakeFacts, ProxyMetrics};
use crate::net::{BoundListener, BoxStream, PeerAddr};
use crate::protocol::{mysql, plain_tls, postgres};
use crate::refusal::RefusalReason;
use crate::tls::handshake::Negotiated;
use crate::tls::listener::{ListenerTls, ALPN_POSTGRESQL};
use crate::tls::upstream::UpstreamTls;
use crate::ProxyError;

/// Over-limit connections are told why inside TLS, which costs a handshake;
/// those refusals are themselves capped so a flood cannot turn the polite
/// path into a resource leak.
const MAX_CONCURRENT_REFUSALS: usize = 64;

/// Where one TLS server name leads: certificate and policy, upstream, and
/// database-user rules.
#[derive(Debug)]
pub struct PreparedRoute {
    /// The server name it answers; `None` for the listener's default route.
    pub server_name: Option<ServerNamePattern>,
    /// Where the database is.
    pub upstream: Endpoint,
    /// TLS towards the database, built once at load; `None` for plaintext.
    pub upstream_tls: Option<Arc<UpstreamTls>>,
    /// TLS state (certificate, trust anchors, CRL, allow-list).
    pub tls: ListenerTls,
    /// Identity to user mapping.
    pub db_users: DbUserRules,
}

impl PreparedRoute {
    /// A name for logs: the server name, or `default`.
    pub fn label(&self) -> String {
        self.server_name
            .as_ref()
            .map_or_else(|| "default".to_owned(), |n| n.to_string())
    }
}

/// What a listener needs at run time, prepared before anything binds.
#[derive(Debug)]
pub struct PreparedListener {
    /// Name for logs.
    pub name: String,
    /// The database protocol spoken on the listener.
    pub protocol: Protocol,
    /// Where to listen.
    pub listen: Endpoint,
    /// The listener's own certificate, upstream and rules: used when the
    /// client's server name matches no route (unless `require_sni_match`).
    pub default_route: Arc<PreparedRoute>,
    /// SNI routes, in configuration order.
    pub routes: Vec<Arc<PreparedRoute>>,
    /// Refuse unmatched server names instead of using the default route.
    pub require_sni_match: bool,
    /// Bound on negotiation time.
    pub handshake_timeout: Duration,
    /// Bound on upstream connect time.
    pub upstream_connect_timeout: Duration,
    /// Connection cap.
    pub max_connections: usize,
    /// What a plaintext client is told.
    pub plaintext_message: String,
    /// How a plaintext client is told to connect.
    pub plaintext_hint: String,
    /// Where the listener's connections are counted.
    pub metrics: Arc<ProxyMetrics>,
    /// Where each ended connection is recorded.
    pub audit: Arc<AuditLog>,
}

impl PreparedListener {
    /// Loads certificate files and builds TLS state for one listener and
    /// each of its routes.
    pub fn prepare(
        config: &ListenerConfig,
        metrics: Arc<ProxyMetrics>,
        audit: Arc<AuditLog>,
    ) -> Result<Self, ProxyError> {
        let alpn = match config.protocol {
            Protocol::Postgres => vec![ALPN_POSTGRESQL.to_vec()],
            Protocol::Tls | Protocol::Mysql => Vec::new(),
        };
        let in_listener = |e: ProxyError| ProxyError::Listener {
            listener: config.name.clone(),
            source: Box::new(e),
        };
        let upstream_tls = |settings: Option<&intransit_config::UpstreamTls>| {
            settings
                .map(|s| UpstreamTls::build(s).map(Arc::new))
                .transpose()
                .map_err(in_listener)
        };
        let default_route = Arc::new(PreparedRoute {
            server_name: None,
            upstream: config.upstream.clone(),
            upstream_tls: upstream_tls(config.upstream_tls.as_ref())?,
            tls: ListenerTls::build(&config.tls, alpn.clone()).map_err(in_listener)?,
            db_users: config.db_users.clone(),
        });
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            routes.push(Arc::new(PreparedRoute {
                server_name: Some(route.server_name.clone()),
                upstream: route.upstream.clone(),
                upstream_tls: upstream_tls(route.upstream_tls.as_ref())?,
                tls: ListenerTls::build(&route.tls, alpn.clone()).map_err(in_listener)?,
                db_users: route.db_users.clone(),
            }));
        }
        let (plaintext_message, plaintext_hint) = match config.tls.client_auth {
            ClientAuth::None => (
                "TLS is required: this server accepts only encrypted connections".to_owned(),
                "Connect with sslmode=verify-full and sslrootcert set to the CA that signed the server certificate.".to_owned(),
            ),
            ClientAuth::Required | ClientAuth::Optional => (
                "TLS is required: this server accepts only encrypted connections with a client certificate".to_owned(),
                "Connect with sslmode=verify-full and set sslrootcert, sslcert and sslkey (libpq), or the equivalent options of your driver.".to_owned(),
            ),
        };
        Ok(PreparedListener {
            name: config.name.clone(),
            protocol: config.protocol,
            listen: config.listen.clone(),
            default_route,
            routes,
            require_sni_match: config.require_sni_match,
            handshake_timeout: config.handshake_timeout,
            upstream_connect_timeout: config.upstream_connect_timeout,
            max_connections: config.max_connections,
            plaintext_message,
            plaintext_hint,
            metrics,
            audit,
        })
    }

    /// The route for a ClientHello's server name: the first route whose
    /// pattern matches, else the default route, or `None` when the listener
    /// requires a match.
    pub fn route_for(&self, server_name: Option<&str>) -> Option<Arc<PreparedRoute>> {
        let matched = server_name.and_then(|name| {
            self.routes
                .iter()
                .find(|r| r.server_name.as_ref().is_some_and(|p| p.matches(name)))
        });
        match matched {
            Some(route) => Some(route.clone()),
            None if self.require_sni_match => None,
            None => Some(self.default_route.clone()),
        }
    }

    /// One route per distinct upstream of the listener, the default
    /// route's first.
    pub fn upstream_routes(&self) -> Vec<Arc<PreparedRoute>> {
        let mut out = vec![self.default_route.clone()];
        for r in &self.routes {
            if !out.iter().any(|o| o.upstream == r.upstream) {
                out.push(r.clone());
            }
        }
        out
    }
}

/// What the accept loop, refusal logging, metrics and audit need from a
/// listener, whichever its mode.
pub(crate) trait Listener: fmt::Debug + Send + Sync + Sized + 'static {
    /// Name for logs and metric labels.
    fn name(&self) -> &str;
    /// The protocol spoken.
    fn protocol(&self) -> Protocol;
    /// The connection cap.
    fn max_connections(&self) -> usize;
    /// Bound on each step of opening the upstream leg.
    fn upstream_connect_timeout(&self) -> Duration;
    /// Where the listener's connections are counted.
    fn metrics(&self) -> &Arc<ProxyMetrics>;
    /// Where each ended connection is recorded.
    fn audit(&self) -> &AuditLog;
    /// Runs one connection from accept to close. `over_limit` connections
    /// are told the listener is full in the protocol's own way.
    fn serve(
        ctx: ConnectionContext<Self>,
        stream: BoxStream,
        over_limit: bool,
    ) -> impl Future<Output = Result<(), Refused>> + Send;
}

impl Listener for PreparedListener {
    fn name(&self) -> &str {
        &self.name
    }

    fn protocol(&self) -> Protocol {
        self.protocol
    }

    fn max_connections(&self) -> usize {
        self.max_connections
    }

    fn upstream_connect_timeout(&self) -> Duration {
        self.upstream_connect_timeout
    }

    fn metrics(&self) -> &Arc<ProxyMetrics> {
        &self.metrics
    }

    fn audit(&self) -> &AuditLog {
        &self.audit
    }

    async fn serve(
        ctx: ConnectionContext<Self>,
        stream: BoxStream,
        over_limit: bool,
    ) -> Result<(), Refused> {
        match ctx.listener.protocol {
            Protocol::Tls => plain_tls::serve(ctx, stream, over_limit).await,
            Protocol::Postgres => postgres::serve(ctx, stream, over_limit).await,
            Protocol::Mysql => mysql::serve(ctx, stream, over_limit).await,
        }
    }
}

/// Per-connection facts every negotiation step can see. `L` is the kind of
/// listener: server mode unless said otherwise.
#[derive(Debug)]
pub(crate) struct ConnectionContext<L = PreparedListener> {
    pub(crate) id: u64,
    pub(crate) peer: PeerAddr,
    pub(crate) listener: Arc<L>,
    /// Set once TLS is established: with the client in server mode, with
    /// the database in client mode.
    pub(crate) negotiated: Arc<OnceLock<Negotiated>>,
    /// What the audit event will say, filled in as negotiation goes.
    pub(crate) record: Arc<Mutex<ConnectionRecord>>,
    pub(crate) accepted_at: Instant,
}

impl<L> Clone for ConnectionContext<L> {
    fn clone(&self) -> Self {
        ConnectionContext {
            id: self.id,
            peer: self.peer.clone(),
            listener: self.listener.clone(),
            negotiated: self.negotiated.clone(),
            record: self.record.clone(),
            accepted_at: self.accepted_at,
        }
    }
}

impl<L: Listener> ConnectionContext<L> {
    /// Changes the audit record.
    pub(crate) fn note(&self, change: impl FnOnce(&mut ConnectionRecord)) {
        let mut record = self
            .record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut record);
    }

    /// Records the database user and name the client asked for.
    pub(crate) fn note_login(&self, user: Option<&str>, database: Option<&str>) {
        self.note(|r| {
            r.user = user.map(str::to_owned);
            r.database = database.map(str::to_owned);
        });
    }

    /// The audit event for this connection, ending now.
    fn audit_event(&self, refused: Option<&Refused>) -> AuditEvent {
        let record = self
            .record
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        let negotiated = self.negotiated.get();
        let facts = negotiated.map_or(HandshakeFacts::BEFORE_TLS, Negotiated::facts);
        let (from_client, to_client) = record.bytes.unwrap_or_default();
        AuditEvent {
            time: rfc3339(SystemTime::now()),
            conn: self.id,
            listener: self.listener.name().to_owned(),
            route: facts.route.to_owned(),
            protocol: self.listener.protocol().as_str().to_owned(),
            peer: self.peer.to_string(),
            client_cert: record.client_cert,
            db_user: record.user,
            db_name: record.database,
            tls_version: facts.tls_version.to_owned(),
            cipher: facts.cipher.to_owned(),
            group: facts.group.to_owned(),
            resumed: facts.resumed,
            sni: record.sni,
            alpn: record.alpn,
            outcome: refused.map_or("ok", |r| r.reason.as_str()).to_owned(),
            detail: refused.map(|r| r.detail.clone()),
            bytes_from_client: from_client,
            bytes_to_client: to_client,
            duration_ms: self.accepted_at.elapsed().as_millis() as u64,
        }
    }
}

/// A connection turned away, with the reason and what is known of who.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) reason: RefusalReason,
    pub(crate) detail: String,
    pub(crate) identity: Option<ClientIdentity>,
}

impl Refused {
    pub(crate) fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        Refused {
            reason,
            detail: detail.into(),
            identity: None,
        }
    }

    pub(crate) fn with_identity(mut self, identity: Option<ClientIdentity>) -> Self {
        if self.identity.is_none() {
            self.identity = identity;
        }
        self
    }
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Accepts connections until `shutdown` is cancelled. Connection tasks are
/// spawned on `tracker` so the caller can wait for them to drain.
pub(crate) async fn accept_loop<L: Listener>(
    listener: Arc<L>,
    socket: BoundListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(listener.max_connections()));
    let refusals = Arc::new(Semaphore::new(MAX_CONCURRENT_REFUSALS));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                // Running out of file descriptors must not spin the loop:
                // back off, bounded, and try again.
                error!(listener = %listener.name(), error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        let ctx = ConnectionContext {
            id,
            peer,
            listener: listener.clone(),
            negotiated: Arc::default(),
            record: Arc::default(),
            accepted_at: Instant::now(),
        };
        let (permit, over_limit) = match slots.clone().try_acquire_owned() {
            Ok(permit) => (permit, false),
            Err(_) => match refusals.clone().try_acquire_owned() {
                Ok(permit) => (permit, true),
                Err(_) => {
                    // Even the polite refusals are saturated: drop the socket.
                    let refused = Refused::new(
                        RefusalReason::TooManyConnections,
                        "listener and its refusal queue are full; connection dropped",
                    );
                    log_refusal(&ctx, &refused);
                    listener.audit().record(ctx.audit_event(Some(&refused)));
                    continue;
                }
            },
        };
        let active = listener
            .metrics()
            .connection_opened(listener.name(), listener.protocol().as_str());
        tracker.spawn(async move {
            let _permit = permit;
            let _active = active;
            let served = L::serve(ctx.clone(), stream, over_limit).await;
            if let Err(refused) = &served {
                log_refusal(&ctx, refused);
            }
            ctx.listener
                .audit()
                .record(ctx.audit_event(served.as_ref().err()));
        });
    }
}

/// The one log line and metric every refusal gets.
fn log_refusal<L: Listener>(ctx: &ConnectionContext<L>, refused: &Refused) {
    let listener = &ctx.listener;
    let facts = ctx
        .negotiated
        .get()
        .map_or(HandshakeFacts::BEFORE_TLS, Negotiated::facts);
    listener.metrics().handshake(
        listener.name(),
        listener.protocol().as_str(),
        facts,
        Some(refused.reason),
    );
    let identity = refused
        .identity
        .as_ref()
        .map(|i| i.to_string())
        .unwrap_or_default();
    // A client that simply hung up is routine, not a policy event.
    if refused.reason == RefusalReason::ClientClosed {
        tracing::debug!(
            conn = ctx.id,
            listener = %ctx.listener.name(),
            peer = %ctx.peer,
            reason = refused.reason.as_str(),
            identity = identity,
            detail = %refused.detail,
            "connection ended during negotiation"
        );
        return;
    }
    warn!(
        conn = ctx.id,
        listener = %ctx.listener.name(),
        peer = %ctx.peer,
        reason = refused.reason.as_str(),
        identity = identity,
        detail = %refused.detail,
        "connection refused"
    );
}
