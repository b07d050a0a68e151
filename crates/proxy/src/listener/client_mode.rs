//! Client-mode listeners (`mode = "client"`): plaintext in from local
//! applications, TLS out to the database. The other half of the encrypted
//! path: a legacy application that cannot do TLS (or mutual TLS) talks to
//! a client-mode listener on loopback or a unix socket, and the proxy asks
//! the database for TLS the way its protocol does, verifies the
//! database's certificate (modes, pins) and presents a client certificate
//! of its own.
//!
//! This module owns what a client-mode listener is once prepared, and the
//! rule that only local peers speak plaintext to it. What is said on the
//! wire lives in `protocol`, which reaches the database through the same
//! upstream connectors as server mode.

use std::sync::Arc;

use intransit_config::{ClientListenerConfig, Endpoint};

use crate::audit::AuditLog;
use crate::conn::{ConnectionContext, Established, Listener, ListenerBasics, Negotiated};
use crate::error::ProxyError;
use crate::metrics::{ProxyMetrics, NO_IDENTITY};
use crate::net::PeerAddr;
use crate::tls::upstream::{UpstreamSession, UpstreamTls};

/// The route label a client-mode connection is counted under: it has one
/// upstream and no SNI routes.
const ROUTE: &str = "default";

/// What a client-mode listener needs at run time, prepared before anything
/// binds.
#[derive(Debug)]
pub struct PreparedClientListener {
    /// Name, protocol, address, limits, metrics and audit.
    pub basics: ListenerBasics,
    /// Whether peers other than this host are admitted.
    pub allow_remote_plaintext: bool,
    /// Where the database is.
    pub upstream: Endpoint,
    /// TLS towards the database, built once at load.
    pub upstream_tls: Arc<UpstreamTls>,
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
            UpstreamTls::build(&config.upstream_tls).map_err(|e| e.in_listener(&config.name))?;
        Ok(PreparedClientListener {
            basics: ListenerBasics {
                name: config.name.clone(),
                protocol: config.protocol,
                listen: config.listen.clone(),
                handshake_timeout: config.handshake_timeout,
                upstream_connect_timeout: config.upstream_connect_timeout,
                max_connections: config.max_connections,
                unauthenticated: None,
                metrics,
                audit,
            },
            allow_remote_plaintext: config.allow_remote_plaintext,
            upstream: config.upstream.clone(),
            upstream_tls: Arc::new(upstream_tls),
        })
    }

    /// Whether `peer` may speak plaintext here. The configuration already
    /// refuses a non-loopback `listen` without `allow_remote_plaintext`;
    /// this holds the line per connection as well.
    pub(crate) fn admits(&self, peer: &PeerAddr) -> bool {
        match peer {
            PeerAddr::Unix => true,
            PeerAddr::Tcp(addr) => {
                self.allow_remote_plaintext || addr.ip().to_canonical().is_loopback()
            }
        }
    }
}

impl Listener for PreparedClientListener {
    fn basics(&self) -> &ListenerBasics {
        &self.basics
    }

    fn mode(&self) -> &'static str {
        "client"
    }
}

impl ConnectionContext<PreparedClientListener> {
    /// Keeps what the upstream handshake negotiated as the connection's
    /// TLS facts, so that metrics and the audit event describe the leg
    /// that is encrypted, also when the connection is refused later (say,
    /// a failed MySQL login relay).
    pub(crate) fn note_upstream_session(&self, session: &UpstreamSession) {
        self.note_negotiated(Negotiated {
            route: ROUTE.to_owned(),
            tls: session.tls,
            // Client mode takes plaintext from local applications: no
            // client certificate to name.
            identity_label: NO_IDENTITY.to_owned(),
            peer_identity: None,
        });
    }

    /// The "connection established" line of a client-mode connection,
    /// whose encrypted leg is the upstream one.
    pub(crate) fn log_client_mode_established(
        &self,
        session: &UpstreamSession,
        user: &str,
        database: &str,
    ) {
        self.note_upstream_session(session);
        let listener = &self.listener;
        self.log_established(Established {
            user,
            database,
            upstream: &listener.upstream,
            upstream_tls: Some(session.tls.version),
            server_name: Some(listener.upstream_tls.server_name()),
            handshake_micros: session.handshake_micros,
        });
    }
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
