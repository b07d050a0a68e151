//! Client mode (`mode = "client"`): plaintext in from local applications,
//! TLS out to the database. The other half of the encrypted path: a legacy
//! application that cannot do TLS (or mutual TLS) talks to a client-mode
//! listener on loopback or a unix socket, and the proxy asks the database
//! for TLS the way its protocol does, verifies the database's certificate
//! (modes, pins) and presents a client certificate of its own.
//!
//! This module owns the client-mode listener and what every protocol
//! shares in that mode: admitting only local peers, and the facts and log
//! line of an established connection. What is said on the wire lives in
//! the protocol modules (`postgres::serve_client`, `mysql::serve_client`,
//! `plain_tls::serve_client`), which reach the database through the same
//! upstream connectors as server mode.

use std::sync::Arc;
use std::time::Duration;

use intransit_config::{ClientListenerConfig, Endpoint, Protocol};
use tracing::info;

use crate::audit::AuditLog;
use crate::listener::server_mode::{ConnectionContext, Listener, Refused};
use crate::metrics::ProxyMetrics;
use crate::net::{BoxStream, PeerAddr};
use crate::protocol::{mysql, plain_tls, postgres};
use crate::refusal::RefusalReason;
use crate::tls::handshake::Negotiated;
use crate::tls::upstream::{UpstreamSession, UpstreamTls};
use crate::ProxyError;

/// The route label a client-mode connection is counted under: it has one
/// upstream and no SNI routes.
const ROUTE: &str = "default";

/// What a client-mode listener needs at run time, prepared before anything
/// binds.
#[derive(Debug)]
pub struct PreparedClientListener {
    /// Name for logs.
    pub name: String,
    /// The database protocol spoken on both legs.
    pub protocol: Protocol,
    /// Where applications connect (loopback or a unix socket unless
    /// `allow_remote_plaintext`).
    pub listen: Endpoint,
    /// Whether peers other than this host are admitted.
    pub allow_remote_plaintext: bool,
    /// Where the database is.
    pub upstream: Endpoint,
    /// TLS towards the database, built once at load.
    pub upstream_tls: Arc<UpstreamTls>,
    /// Bound on negotiation time.
    pub handshake_timeout: Duration,
    /// Bound on each step of opening the upstream leg.
    pub upstream_connect_timeout: Duration,
    /// Connection cap.
    pub max_connections: usize,
    /// Where the listener's connections are counted.
    pub metrics: Arc<ProxyMetrics>,
    /// Where each ended connection is recorded.
    pub audit: Arc<AuditLog>,
}

impl PreparedClientListener {
    /// Loads the upstream TLS material (CA, client certificate and key) and
    /// builds the rustls client configuration.
    pub fn prepare(
        config: &ClientListenerConfig,
        metrics: Arc<ProxyMetrics>,
        audit: Arc<AuditLog>,
    ) -> Result<Self, ProxyError> {
        let upstream_tls =
            UpstreamTls::build(&config.upstream_tls).map_err(|e| ProxyError::Listener {
                listener: config.name.clone(),
                source: Box::new(e),
            })?;
        Ok(PreparedClientListener {
            name: config.name.clone(),
            protocol: config.protocol,
            listen: config.listen.clone(),
            allow_remote_plaintext: config.allow_remote_plaintext,
            upstream: config.upstream.clone(),
            upstream_tls: Arc::new(upstream_tls),
            handshake_timeout: config.handshake_timeout,
            upstream_connect_timeout: config.upstream_connect_timeout,
            max_connections: config.max_connections,
            metrics,
            audit,
        })
    }

    /// Whether `peer` may speak plaintext here. The configuration already
    /// refuses a non-loopback `listen` without `allow_remote_plaintext`;
    /// this holds the line per connection as well.
    fn admits(&self, peer: &PeerAddr) -> bool {
        match peer {
            PeerAddr::Unix => true,
            PeerAddr::Tcp(addr) => {
                self.allow_remote_plaintext || addr.ip().to_canonical().is_loopback()
            }
        }
    }
}

impl Listener for PreparedClientListener {
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
        if !ctx.listener.admits(&ctx.peer) {
            // Nothing is read: whatever the peer sent stays unprocessed.
            return Err(Refused::new(
                RefusalReason::PlaintextRefused,
                format!(
                    "plaintext from {}, which is not this host, on a client-mode listener without allow_remote_plaintext",
                    ctx.peer
                ),
            ));
        }
        match ctx.listener.protocol {
            Protocol::Postgres => postgres::serve_client(ctx, stream, over_limit).await,
            Protocol::Mysql => mysql::serve_client(ctx, stream, over_limit).await,
            Protocol::Tls => plain_tls::serve_client(ctx, stream, over_limit).await,
        }
    }
}

/// Keeps what the upstream handshake negotiated on the connection, so that
/// metrics and the audit event describe the leg that is encrypted, also
/// when the connection is refused later (say, a failed MySQL login relay).
pub(crate) fn note_upstream_tls(
    ctx: &ConnectionContext<PreparedClientListener>,
    session: &UpstreamSession,
) {
    let _ = ctx.negotiated.set(Negotiated {
        route: ROUTE.to_owned(),
        tls_version: session.version,
        cipher: session.cipher,
        group: session.group,
        resumed: session.resumed,
        // Client mode takes plaintext from local applications: no client
        // certificate to name.
        identity: crate::metrics::NO_IDENTITY.to_owned(),
    });
}

/// The one log line, metric and histogram sample for an established
/// client-mode connection.
pub(crate) fn log_established(
    ctx: &ConnectionContext<PreparedClientListener>,
    session: &UpstreamSession,
    user: &str,
    database: &str,
) {
    note_upstream_tls(ctx, session);
    let listener = &ctx.listener;
    let protocol = listener.protocol.as_str();
    if let Some(negotiated) = ctx.negotiated.get() {
        listener
            .metrics
            .handshake(&listener.name, protocol, negotiated.facts(), None);
    }
    listener.metrics.handshake_duration(
        &listener.name,
        protocol,
        session.handshake_micros as f64 / 1e6,
    );
    info!(
        conn = ctx.id,
        listener = %listener.name,
        mode = "client",
        protocol = %listener.protocol,
        peer = %ctx.peer,
        user = user,
        database = database,
        upstream = %listener.upstream,
        server_name = %listener.upstream_tls.server_name(),
        upstream_tls = session.version,
        cipher = session.cipher,
        group = session.group,
        resumed = session.resumed,
        handshake_us = session.handshake_micros as u64,
        "connection established"
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn listener(listen: &str, allow_remote_plaintext: bool) -> PreparedClientListener {
        let text = format!(
            "[[listener]]\nmode = \"client\"\nlisten = \"{listen}\"\nupstream = \"db.internal:5432\"\n{}[listener.upstream_tls]\nmode = \"require\"\n",
            if allow_remote_plaintext {
                "allow_remote_plaintext = true\n"
            } else {
                ""
            }
        );
        let config = intransit_config::Config::from_toml(&text).unwrap();
        PreparedClientListener::prepare(
            &config.client_listeners[0],
            ProxyMetrics::new(),
            Arc::new(AuditLog::to_log()),
        )
        .unwrap()
    }

    #[test]
    fn only_local_peers_are_admitted_unless_remote_plaintext_is_allowed() {
        let tcp = |a: &str| PeerAddr::Tcp(a.parse().unwrap());
        let local = listener("127.0.0.1:5432", false);
        assert!(local.admits(&tcp("127.0.0.1:40000")));
        assert!(local.admits(&tcp("127.8.9.10:40000")));
        assert!(local.admits(&tcp("[::1]:40000")));
        assert!(local.admits(&tcp("[::ffff:127.0.0.1]:40000")));
        assert!(local.admits(&PeerAddr::Unix));
        assert!(!local.admits(&tcp("10.0.0.7:40000")));
        assert!(!local.admits(&tcp("[2001:db8::1]:40000")));
        assert!(!local.admits(&tcp("[::ffff:10.0.0.7]:40000")));

        let remote = listener("0.0.0.0:5432", true);
        assert!(remote.admits(&tcp("10.0.0.7:40000")));
    }
}
