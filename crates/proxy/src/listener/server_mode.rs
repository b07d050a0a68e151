//! Server-mode listeners: TLS from clients, the database behind.
//!
//! This module owns what a server-mode listener is once prepared: its
//! routes (certificate and policy, upstream and its TLS, database-user
//! rules per TLS server name) and its limits. What is said on its
//! connections lives in `protocol`; the accept loop in `accept`.

use std::sync::Arc;

use intransit_config::{ClientAuth, Endpoint, ListenerConfig, ServerNamePattern};
use intransit_pki::TlsAlpnChallenges;
use intransit_policy::DbUserRules;

use crate::audit::AuditLog;
use crate::conn::{Listener, ListenerBasics};
use crate::error::ProxyError;
use crate::metrics::ProxyMetrics;
use crate::tls::listener::ListenerTls;
use crate::tls::upstream::UpstreamTls;

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
    /// Name, protocol, address, limits, metrics and audit.
    pub basics: ListenerBasics,
    /// The listener's own certificate, upstream and rules: used when the
    /// client's server name matches no route (unless `require_sni_match`).
    pub default_route: Arc<PreparedRoute>,
    /// SNI routes, in configuration order.
    pub routes: Vec<Arc<PreparedRoute>>,
    /// Refuse unmatched server names instead of using the default route.
    pub require_sni_match: bool,
    /// Whether clients must present a certificate (of the default
    /// route), for what a plaintext client is told.
    pub client_auth: ClientAuth,
    /// The server version a MySQL listener's own greeting announces.
    pub mysql_server_version: String,
    /// The TLS-ALPN-01 challenges pending for an ACME CA validating on
    /// this listener's address (shared by every listener of the proxy).
    pub acme_challenges: TlsAlpnChallenges,
}

impl PreparedListener {
    /// Loads certificate files and builds TLS state for one listener and
    /// each of its routes, offering the ALPN protocols `alpn` (the
    /// protocol's choice); an ACME CA's TLS-ALPN-01 validation is answered
    /// from `acme_challenges`.
    pub fn prepare(
        config: &ListenerConfig,
        alpn: Vec<Vec<u8>>,
        metrics: Arc<ProxyMetrics>,
        audit: Arc<AuditLog>,
        acme_challenges: TlsAlpnChallenges,
    ) -> Result<Self, ProxyError> {
        let in_listener = |e: ProxyError| e.in_listener(&config.name);
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
        Ok(PreparedListener {
            basics: ListenerBasics {
                name: config.name.clone(),
                protocol: config.protocol,
                listen: config.listen.clone(),
                handshake_timeout: config.handshake_timeout,
                upstream_connect_timeout: config.upstream_connect_timeout,
                max_connections: config.max_connections,
                unauthenticated: Some(config.unauthenticated),
                metrics,
                audit,
            },
            default_route,
            routes,
            require_sni_match: config.require_sni_match,
            client_auth: config.tls.client_auth,
            mysql_server_version: config.mysql_server_version.clone(),
            acme_challenges,
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

impl Listener for PreparedListener {
    fn basics(&self) -> &ListenerBasics {
        &self.basics
    }

    fn mode(&self) -> &'static str {
        "server"
    }
}
