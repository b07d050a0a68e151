//! One connection, whichever the listener's mode and protocol: what is
//! known about it ([`ConnectionContext`]), how it is turned away
//! ([`Refused`]), what its encrypted leg negotiated ([`Negotiated`]), and
//! the log lines, metrics and audit event that describe it.
//!
//! Words used throughout the crate: a listener is in *server mode* (TLS
//! from clients, the database behind) or *client mode* (plaintext from
//! local applications, TLS to the database). The *peer* is whoever
//! connected to the listener: a database client in server mode, a local
//! application in client mode. The *upstream* is the database (or another
//! proxy in front of it).
//!
//! This module is a leaf of the crate's runtime: it imports listeners,
//! protocols and TLS handshakes by none of their names; they all import it.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use intransit_config::{Endpoint, Protocol, UnauthenticatedLimits};
use intransit_policy::{ClientIdentity, DbUserRules};
use tokio::time::error::Elapsed;
use tokio::time::Timeout;
use tracing::{info, warn};

use crate::admission::Ticket;
use crate::audit::{rfc3339, AuditEvent, AuditLog, ConnectionRecord, ACME_VALIDATION};
use crate::metrics::{HandshakeFacts, ProxyMetrics};
use crate::net::PeerAddr;
use crate::refusal::RefusalReason;
use crate::tls::TlsFacts;

/// What every listener has, whichever its mode: its name, protocol and
/// address, its limits, and where its connections are counted and
/// recorded.
#[derive(Debug)]
pub struct ListenerBasics {
    /// Name for logs and metric labels.
    pub name: String,
    /// The database protocol spoken.
    pub protocol: Protocol,
    /// Where to listen.
    pub listen: Endpoint,
    /// Bound on negotiation, from accept to the start of the copy phase.
    pub handshake_timeout: Duration,
    /// Bound on each step of opening the upstream leg.
    pub upstream_connect_timeout: Duration,
    /// Cap on connections of verified clients (in client mode, on all
    /// connections).
    pub max_connections: usize,
    /// Caps on connections before the TLS handshake has verified the
    /// client, counted apart from `max_connections`; `None` in client
    /// mode, where no connection is ever verified by the proxy.
    pub unauthenticated: Option<UnauthenticatedLimits>,
    /// Where the listener's connections are counted.
    pub metrics: Arc<ProxyMetrics>,
    /// Where each ended connection is recorded.
    pub audit: Arc<AuditLog>,
}

/// What the accept loop, refusal logging, metrics and audit need from a
/// listener, whichever its mode.
pub(crate) trait Listener: fmt::Debug + Send + Sync + Sized + 'static {
    /// The listener's name, protocol, limits and sinks.
    fn basics(&self) -> &ListenerBasics;
    /// `server` or `client`, for logs.
    fn mode(&self) -> &'static str;

    /// Name for logs and metric labels.
    fn name(&self) -> &str {
        &self.basics().name
    }
    /// The protocol spoken.
    fn protocol(&self) -> Protocol {
        self.basics().protocol
    }
    /// The connection cap.
    fn max_connections(&self) -> usize {
        self.basics().max_connections
    }
    /// Bound on negotiation, from accept to the start of the copy phase.
    fn handshake_timeout(&self) -> Duration {
        self.basics().handshake_timeout
    }
    /// Bound on each step of opening the upstream leg.
    fn upstream_connect_timeout(&self) -> Duration {
        self.basics().upstream_connect_timeout
    }
    /// Where the listener's connections are counted.
    fn metrics(&self) -> &Arc<ProxyMetrics> {
        &self.basics().metrics
    }
    /// Where each ended connection is recorded.
    fn audit(&self) -> &AuditLog {
        &self.basics().audit
    }
}

/// What the encrypted leg of a connection negotiated: with the client in
/// server mode, with the database in client mode. Kept on the connection
/// so that a later refusal is counted with the TLS facts, route and
/// identity it had.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    /// The route label (`default` or the SNI route's server name).
    pub(crate) route: String,
    pub(crate) tls: TlsFacts,
    /// The metric label of the peer's identity (see
    /// [`crate::metrics::HandshakeLabels::identity`]).
    pub(crate) identity_label: String,
    /// The identity of the peer's verified certificate, if any.
    pub(crate) peer_identity: Option<ClientIdentity>,
}

impl Negotiated {
    /// The metric labels these facts give.
    pub(crate) fn facts(&self) -> HandshakeFacts<'_> {
        HandshakeFacts {
            route: &self.route,
            tls_version: self.tls.version,
            cipher: self.tls.cipher,
            group: self.tls.group,
            resumed: self.tls.resumed,
            identity: &self.identity_label,
        }
    }
}

/// Per-connection facts every negotiation step can see. `L` is the kind of
/// listener the connection arrived on.
#[derive(Debug)]
pub(crate) struct ConnectionContext<L> {
    pub(crate) id: u64,
    pub(crate) peer: PeerAddr,
    pub(crate) listener: Arc<L>,
    /// Set once TLS is established.
    pub(crate) negotiated: Arc<OnceLock<Negotiated>>,
    /// What the audit event will say, filled in as negotiation goes.
    pub(crate) record: Arc<Mutex<ConnectionRecord>>,
    pub(crate) accepted_at: Instant,
    /// The connection's place in the listener's pools.
    pub(crate) admission: Arc<Ticket>,
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
            admission: self.admission.clone(),
        }
    }
}

/// What the "connection established" line says beyond the context's own
/// facts.
#[derive(Debug)]
pub(crate) struct Established<'a> {
    /// The database user the peer logged in as (`""` where the protocol
    /// has none).
    pub(crate) user: &'a str,
    /// The database, likewise.
    pub(crate) database: &'a str,
    /// Where the upstream leg goes.
    pub(crate) upstream: &'a Endpoint,
    /// The upstream leg's TLS version; `None` for plaintext.
    pub(crate) upstream_tls: Option<&'a str>,
    /// The name the database's certificate was checked against (client
    /// mode).
    pub(crate) server_name: Option<String>,
    /// How long the TLS handshake of the encrypted leg took.
    pub(crate) handshake_micros: u128,
}

impl<L: Listener> ConnectionContext<L> {
    /// A fresh connection, accepted now, holding `admission`.
    pub(crate) fn new(id: u64, peer: PeerAddr, listener: Arc<L>, admission: Arc<Ticket>) -> Self {
        ConnectionContext {
            id,
            peer,
            listener,
            negotiated: Arc::default(),
            record: Arc::default(),
            accepted_at: Instant::now(),
            admission,
        }
    }

    /// Bounds negotiation by the listener's handshake timeout; the copy
    /// phase that may follow is not bounded. [`Self::in_time`] reads the
    /// outcome.
    ///
    /// Deliberately not an `async fn` that takes the negotiation and
    /// awaits it: such a function keeps its argument and the future it
    /// awaits side by side in its own state (rust-lang/rust#62958), so
    /// every connection's task would hold the negotiation's state twice
    /// for its whole life, idle sessions included (30.4 against 17.3 KiB
    /// per idle PostgreSQL session, measured). So each protocol's `serve`
    /// writes its three lines (deadline, `in_time`, copy) itself.
    pub(crate) fn handshake_deadline<F: Future>(&self, negotiation: F) -> Timeout<F> {
        tokio::time::timeout(self.listener.handshake_timeout(), negotiation)
    }

    /// What a negotiation bounded by [`Self::handshake_deadline`] gave, or
    /// a `timeout` refusal when the deadline came first.
    pub(crate) fn in_time<T>(
        &self,
        outcome: Result<Result<T, Refused>, Elapsed>,
    ) -> Result<T, Refused> {
        match outcome {
            Ok(negotiated) => negotiated,
            Err(_) => Err(Refused::new(
                RefusalReason::Timeout,
                format!(
                    "negotiation did not finish within the handshake timeout ({:?})",
                    self.listener.handshake_timeout()
                ),
            )),
        }
    }

    /// The refusal of a connection beyond `max_connections`, once the peer
    /// has been told in its protocol's way.
    pub(crate) fn over_limit(&self) -> Refused {
        Refused::new(
            RefusalReason::TooManyConnections,
            format!(
                "listener is at max_connections ({})",
                self.listener.max_connections()
            ),
        )
    }

    /// Changes the audit record.
    pub(crate) fn note(&self, change: impl FnOnce(&mut ConnectionRecord)) {
        let mut record = self
            .record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut record);
    }

    /// Records the database user and name the peer asked for.
    pub(crate) fn note_login(&self, user: Option<&str>, database: Option<&str>) {
        self.note(|r| {
            r.user = user.map(str::to_owned);
            r.database = database.map(str::to_owned);
        });
    }

    /// Records a change of database user inside a running session (MySQL's
    /// COM_CHANGE_USER, let through after the same check as a login): a
    /// log line and an audit event now, with outcome `user_changed`, and
    /// the new user and database in the record the connection's final
    /// event is made from.
    pub(crate) fn user_changed(&self, from: &str, to: &str, database: &str) {
        let database = Some(database).filter(|d| !d.is_empty());
        self.note_login(Some(to), database);
        info!(
            conn = self.id,
            listener = %self.listener.name(),
            peer = %self.peer,
            identity = self.peer_identity().map(|i| i.to_string()).unwrap_or_default(),
            from_user = from,
            user = to,
            database = database.unwrap_or_default(),
            "database user changed"
        );
        let mut event = self.audit_event(None);
        event.outcome = "user_changed".to_owned();
        event.detail = Some(format!("database user changed from {from:?}"));
        self.listener.audit().record(event);
    }

    /// Keeps what the encrypted leg negotiated. The first handshake of a
    /// connection is its only one, so a second call changes nothing.
    pub(crate) fn note_negotiated(&self, negotiated: Negotiated) {
        let _ = self.negotiated.set(negotiated);
    }

    fn facts(&self) -> HandshakeFacts<'_> {
        self.negotiated
            .get()
            .map_or(HandshakeFacts::BEFORE_TLS, Negotiated::facts)
    }

    /// The peer's verified identity, once TLS has established one.
    pub(crate) fn peer_identity(&self) -> Option<&ClientIdentity> {
        self.negotiated.get()?.peer_identity.as_ref()
    }

    /// The one log line, metric and histogram sample of an established
    /// connection. TLS facts come from [`Self::note_negotiated`].
    pub(crate) fn log_established(&self, established: Established<'_>) {
        let listener = &self.listener;
        let (name, protocol) = (listener.name(), listener.protocol().as_str());
        let metrics = listener.metrics();
        metrics.handshake(name, protocol, self.facts(), None);
        self.note(|r| r.established = true);
        metrics.handshake_duration(name, protocol, established.handshake_micros as f64 / 1e6);
        let negotiated = self.negotiated.get();
        let tls = negotiated.map(|n| n.tls);
        info!(
            conn = self.id,
            listener = %name,
            mode = listener.mode(),
            protocol = %protocol,
            peer = %self.peer,
            identity = self.peer_identity().map(|i| i.to_string()).unwrap_or_default(),
            user = established.user,
            database = established.database,
            tls_version = tls.map_or("unknown", |t| t.version),
            cipher = tls.map_or("unknown", |t| t.cipher),
            group = tls.map_or("unknown", |t| t.group),
            resumed = tls.is_some_and(|t| t.resumed),
            route = negotiated.map_or("default", |n| n.route.as_str()),
            upstream = %established.upstream,
            server_name = established.server_name,
            upstream_tls = established.upstream_tls.unwrap_or("off"),
            handshake_us = established.handshake_micros as u64,
            "connection established"
        );
    }

    /// The one log line and metric every refusal gets.
    ///
    /// A session that was already established and then ended with a
    /// refusal (a pooled client's exhausted pool, a database gone
    /// mid-session, a COM_CHANGE_USER refused) was counted once as `ok`:
    /// its end is logged and audited, not counted as a second handshake.
    pub(crate) fn log_refusal(&self, refused: &Refused) {
        let listener = &self.listener;
        let established = self
            .record
            .lock()
            .map(|r| r.established)
            .unwrap_or_else(|p| p.into_inner().established);
        if !established {
            listener.metrics().handshake(
                listener.name(),
                listener.protocol().as_str(),
                self.facts(),
                Some(refused.reason),
            );
        }
        let identity = refused
            .presented_identity
            .as_deref()
            .or(self.peer_identity())
            .map(|i| i.to_string())
            .unwrap_or_default();
        // A client that simply hung up is routine, not a policy event.
        if refused.reason == RefusalReason::ClientClosed {
            tracing::debug!(
                conn = self.id,
                listener = %listener.name(),
                peer = %self.peer,
                reason = refused.reason.as_str(),
                identity = identity,
                detail = %refused.detail,
                "connection ended during negotiation"
            );
            return;
        }
        warn!(
            conn = self.id,
            listener = %listener.name(),
            peer = %self.peer,
            reason = refused.reason.as_str(),
            identity = identity,
            detail = %refused.detail,
            "connection refused"
        );
    }

    /// The metric of a refusal that a flood causes (closed at accept,
    /// evicted before the handshake), and its log line and audit event
    /// only when `sampled` is `Some`: the number of like refusals whose
    /// line and event were left out since the previous ones.
    pub(crate) fn log_flood_refusal(&self, refused: &Refused, sampled: Option<u64>) {
        let listener = &self.listener;
        listener.metrics().handshake(
            listener.name(),
            listener.protocol().as_str(),
            self.facts(),
            Some(refused.reason),
        );
        let Some(left_out) = sampled else {
            return;
        };
        warn!(
            conn = self.id,
            listener = %listener.name(),
            peer = %self.peer,
            reason = refused.reason.as_str(),
            detail = %refused.detail,
            left_out,
            "connection refused"
        );
        let mut event = self.audit_event(Some(refused));
        if left_out > 0 {
            event.detail = Some(format!(
                "{}; {left_out} more refused for this reason since the previous event, counted in the metrics only",
                refused.detail
            ));
        }
        listener.audit().record(event);
    }

    /// The audit event for this connection, ending now.
    pub(crate) fn audit_event(&self, refused: Option<&Refused>) -> AuditEvent {
        let record = self
            .record
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        let facts = self.facts();
        let (from_client, to_client) = record.bytes.unwrap_or_default();
        let login = refused.and_then(|r| r.login.as_deref());
        let db_user = record.user.or_else(|| login.and_then(|l| l.user.clone()));
        let db_name = record
            .database
            .or_else(|| login.and_then(|l| l.database.clone()));
        AuditEvent {
            time: rfc3339(SystemTime::now()),
            conn: self.id,
            listener: self.listener.name().to_owned(),
            route: facts.route.to_owned(),
            protocol: self.listener.protocol().as_str().to_owned(),
            peer: self.peer.to_string(),
            client_cert: record.client_cert,
            db_user,
            db_name,
            tls_version: facts.tls_version.to_owned(),
            cipher: facts.cipher.to_owned(),
            group: facts.group.to_owned(),
            resumed: facts.resumed,
            sni: record.sni,
            alpn: record.alpn,
            outcome: match refused {
                Some(r) => r.reason.as_str(),
                None if record.acme_validation => ACME_VALIDATION,
                None => "ok",
            }
            .to_owned(),
            detail: refused.map(|r| r.detail.clone()),
            bytes_from_client: from_client,
            bytes_to_client: to_client,
            duration_ms: self.accepted_at.elapsed().as_millis() as u64,
            pool_mode: record.pool.map(|(mode, _)| mode.to_owned()),
            server_connections: record.pool.map(|(_, n)| n),
        }
    }
}

/// A connection turned away, with the reason.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) reason: RefusalReason,
    pub(crate) detail: String,
    /// The identity in a certificate the TLS handshake refused. Once a
    /// certificate is accepted the context knows its identity
    /// ([`ConnectionContext::peer_identity`]).
    pub(crate) presented_identity: Option<Box<ClientIdentity>>,
    /// The database user and name of a login the refusal itself read (a
    /// StartupMessage or HandshakeResponse sent without TLS), which never
    /// reached [`ConnectionContext::note_login`]: the audit event still
    /// says who was turned away.
    pub(crate) login: Option<Box<LoginNames>>,
}

/// The names a login asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LoginNames {
    pub(crate) user: Option<String>,
    pub(crate) database: Option<String>,
}

impl Refused {
    pub(crate) fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        Refused {
            reason,
            detail: detail.into(),
            presented_identity: None,
            login: None,
        }
    }

    /// Names the database user and name of the login being refused.
    pub(crate) fn for_login(mut self, user: Option<&str>, database: Option<&str>) -> Self {
        let names = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        self.login = Some(Box::new(LoginNames {
            user: names(user),
            database: names(database),
        }));
        self
    }

    /// The peer went away (or its stream failed) while the proxy read or
    /// wrote negotiation bytes.
    pub(crate) fn client_closed(error: impl fmt::Display) -> Self {
        Refused::new(RefusalReason::ClientClosed, error.to_string())
    }

    /// Names the identity of a certificate the handshake refused.
    pub(crate) fn presented(mut self, identity: Option<ClientIdentity>) -> Self {
        self.presented_identity = identity.map(Box::new);
        self
    }
}

/// A refusal and the bytes, in the peer's protocol, that tell it why
/// before the connection closes (empty where nothing can be said).
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) reply: Vec<u8>,
    pub(crate) refused: Refused,
}

/// Who a `db_users` refusal is about, in the words the peer is told.
pub(crate) fn refused_party(identity: Option<&ClientIdentity>) -> String {
    identity.map_or_else(
        || "a client without a certificate".to_owned(),
        |i| format!("certificate identity \"{i}\""),
    )
}

/// Checks that `identity` may log in as `user` under `rules`. A refusal
/// comes with who was refused, in the words the peer is told.
pub(crate) fn check_db_user(
    rules: &DbUserRules,
    identity: Option<&ClientIdentity>,
    user: &str,
) -> Result<(), (String, Refused)> {
    if rules.permits(identity, user) {
        return Ok(());
    }
    Err((
        refused_party(identity),
        Refused::new(
            RefusalReason::UserDenied,
            format!("database user {user:?} not permitted by db_users"),
        ),
    ))
}
