//! The proxy runtime: listeners, negotiation drivers, TLS, upstream
//! connections, limits and drain.
//!
//! Lifecycle, in three steps so that nothing binds before everything is
//! known to be valid:
//!
//! 1. [`Proxy::prepare`] loads every certificate, key, trust anchor and CRL
//!    the configuration names and builds the TLS state. `intransit
//!    check-config` stops here.
//! 2. [`Proxy::bind`] binds every listener, or none.
//! 3. [`BoundProxy::run`] accepts until the shutdown future completes, then
//!    stops accepting and gives open connections a grace period to finish.
//!
//! This crate never parses wire formats by hand (that is `intransit-wire`)
//! and never decides access by itself (that is `intransit-policy`).

mod accept;
mod admission;
pub mod audit;
mod conn;
mod copy;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod listener;
pub mod metrics;
mod net;
mod protocol;
mod refusal;
pub mod tls;
mod workers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use intransit_config::{Config, Endpoint};
use intransit_pki::TlsAlpnChallenges;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use workers::Workers;

pub use audit::AuditLog;
pub use conn::ListenerBasics;
pub use error::ProxyError;
pub use listener::client_mode::PreparedClientListener;
pub use listener::server_mode::{PreparedListener, PreparedRoute};
pub use metrics::ProxyMetrics;
pub use net::connect as connect_upstream;
pub use protocol::postgres::pool::{PoolStatus, Pools, PoolsStatus};
pub use refusal::RefusalReason;
pub use tls::{
    ListenerTls, LoadedCertificate, LoadedCrl, PolicySummary, ReloadError, ReloadFailure, Reloaded,
    TlsMaterial, UpstreamMaterial, UpstreamSession, UpstreamTls, UpstreamTlsFailure,
};

/// Logs each CRL of a listener that is already stale when it starts
/// serving: later ones are logged by the verifier the first time a
/// client meets them.
fn warn_stale_crls(listener: &PreparedListener) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for route in std::iter::once(&listener.default_route).chain(&listener.routes) {
        let material = route.tls.snapshot();
        for crl in material.crls.iter().filter(|c| c.is_stale(now)) {
            warn!(
                listener = %listener.basics.name,
                route = %route.label(),
                crl = %crl.path.display(),
                issuer = %crl.issuer,
                next_update = %refusal::rfc3339(crl.next_update_unix.unwrap_or_default()),
                stale_crl = %material.policy.stale_crl,
                "CRL is past its nextUpdate: with stale_crl = \"refuse\" client certificates of this CA are refused (crl_expired), with \"allow\" they are admitted although one revoked since would not be in it"
            );
        }
    }
}

/// A validated configuration with its TLS material loaded, not yet bound.
#[derive(Debug)]
pub struct Proxy {
    listeners: Vec<Arc<PreparedListener>>,
    /// Each server-mode listener's pools (`None` without `[listener.pool]`),
    /// in the order of `listeners`.
    pools: Vec<Option<Arc<Pools>>>,
    client_listeners: Vec<Arc<PreparedClientListener>>,
    shutdown_grace: Duration,
    worker_threads: usize,
    metrics: Arc<ProxyMetrics>,
    audit: Arc<AuditLog>,
}

impl Proxy {
    /// Loads and checks everything the configuration names.
    pub fn prepare(config: &Config) -> Result<Self, ProxyError> {
        let metrics = ProxyMetrics::new();
        let audit = Arc::new(match &config.audit_log {
            Some(path) => AuditLog::to_file(path)?,
            None => AuditLog::to_log(),
        });
        // One registry for every listener: an ACME order for this process
        // (`up`) puts its answers here, and another process's (`cert
        // issue`) leaves them in the state directory, read from here.
        let acme_challenges = TlsAlpnChallenges::new(config.state_dir.as_deref());
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let alpn = protocol::alpn(l.protocol);
                PreparedListener::prepare(
                    l,
                    alpn,
                    metrics.clone(),
                    audit.clone(),
                    acme_challenges.clone(),
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pools = config
            .listeners
            .iter()
            .zip(&listeners)
            .map(|(l, prepared)| {
                let Some(pool) = &l.pool else {
                    return Ok(None);
                };
                let route = &prepared.default_route;
                Pools::prepare(
                    &l.name,
                    pool,
                    &route.upstream,
                    route.upstream_tls.clone(),
                    l.upstream_connect_timeout,
                    metrics.clone(),
                )
                .map(|p| Some(Arc::new(p)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client_listeners = config
            .client_listeners
            .iter()
            .map(|l| {
                PreparedClientListener::prepare(l, metrics.clone(), audit.clone()).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Proxy {
            listeners,
            pools,
            client_listeners,
            shutdown_grace: config.shutdown_grace,
            worker_threads: config
                .worker_threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            metrics,
            audit,
        })
    }

    /// The prepared server-mode listeners.
    pub fn listeners(&self) -> impl Iterator<Item = &PreparedListener> {
        self.listeners.iter().map(|l| l.as_ref())
    }

    /// The prepared client-mode listeners.
    pub fn client_listeners(&self) -> impl Iterator<Item = &PreparedClientListener> {
        self.client_listeners.iter().map(|l| l.as_ref())
    }

    /// Binds every listener; if one fails, none stays bound.
    pub async fn bind(self) -> Result<BoundProxy, ProxyError> {
        let bind = |name: &str, listen: &Endpoint| {
            let (name, listen) = (name.to_owned(), listen.clone());
            async move {
                net::BoundListener::bind(&listen)
                    .await
                    .map_err(|error| ProxyError::Bind {
                        listener: name,
                        endpoint: listen,
                        error,
                    })
            }
        };
        let mut bound = Vec::with_capacity(self.listeners.len());
        for (listener, pools) in self.listeners.into_iter().zip(self.pools) {
            let socket = bind(&listener.basics.name, &listener.basics.listen).await?;
            bound.push((listener, socket, pools));
        }
        let mut clients = Vec::with_capacity(self.client_listeners.len());
        for listener in self.client_listeners {
            let socket = bind(&listener.basics.name, &listener.basics.listen).await?;
            clients.push((listener, socket));
        }
        Ok(BoundProxy {
            listeners: bound,
            client_listeners: clients,
            shutdown_grace: self.shutdown_grace,
            worker_threads: self.worker_threads,
            metrics: self.metrics,
            audit: self.audit,
        })
    }
}

/// Listeners bound and ready to accept.
#[derive(Debug)]
pub struct BoundProxy {
    listeners: Vec<(
        Arc<PreparedListener>,
        net::BoundListener,
        Option<Arc<Pools>>,
    )>,
    client_listeners: Vec<(Arc<PreparedClientListener>, net::BoundListener)>,
    shutdown_grace: Duration,
    worker_threads: usize,
    metrics: Arc<ProxyMetrics>,
    audit: Arc<AuditLog>,
}

impl BoundProxy {
    /// The addresses actually bound, by listener name (port 0 resolved).
    pub fn local_endpoints(&self) -> Vec<(String, Endpoint)> {
        let server = self.listeners.iter().map(|(l, s, _)| (&l.basics.name, s));
        let client = self
            .client_listeners
            .iter()
            .map(|(l, s)| (&l.basics.name, s));
        server
            .chain(client)
            .filter_map(|(name, s)| s.local_endpoint().ok().map(|e| (name.clone(), e)))
            .collect()
    }

    /// The proxy's counters, for the admin server.
    pub fn metrics(&self) -> Arc<ProxyMetrics> {
        self.metrics.clone()
    }

    /// The audit log, for the admin server's recent refusals.
    pub fn audit(&self) -> Arc<AuditLog> {
        self.audit.clone()
    }

    /// The running server-mode listeners, for reloading their TLS material
    /// while the proxy serves (each route's `tls` and `upstream_tls`).
    pub fn listeners(&self) -> Vec<Arc<PreparedListener>> {
        self.listeners.iter().map(|(l, _, _)| l.clone()).collect()
    }

    /// The pools of every pooled listener, for status and reload.
    pub fn pools(&self) -> Vec<Arc<Pools>> {
        self.listeners
            .iter()
            .filter_map(|(_, _, p)| p.clone())
            .collect()
    }

    /// The running client-mode listeners, for reloading their upstream TLS
    /// material while the proxy serves.
    pub fn client_listeners(&self) -> Vec<Arc<PreparedClientListener>> {
        self.client_listeners
            .iter()
            .map(|(l, _)| l.clone())
            .collect()
    }

    /// Serves until `shutdown` completes, then drains: no new connections
    /// are accepted and open ones get the grace period to finish before
    /// they are cut. Returns how many connections were still open when the
    /// grace period ran out.
    ///
    /// Connections run on `worker_threads` threads of their own (see
    /// `workers`), stopped before this returns; if they cannot be
    /// started, on the caller's runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> usize {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let workers = Arc::new(Workers::start(self.worker_threads).unwrap_or_else(|e| {
            warn!(error = %e, worker_threads = self.worker_threads, "could not start the connection worker threads; connections run on the shared runtime");
            Workers::none()
        }));
        let mut loops = Vec::new();
        for (listener, socket, pools) in self.listeners {
            info!(
                listener = %listener.basics.name,
                listen = %socket.local_endpoint().map(|e| e.to_string()).unwrap_or_default(),
                upstream = %listener.default_route.upstream,
                upstream_tls = %listener
                    .default_route
                    .upstream_tls
                    .as_ref()
                    .map_or_else(|| "off".to_owned(), |t| t.settings().mode.to_string()),
                routes = listener.routes.len(),
                "listening"
            );
            warn_stale_crls(&listener);
            if let Some(pools) = &pools {
                info!(
                    listener = %listener.basics.name,
                    pool_mode = pools.config.mode.as_str(),
                    pool_size = pools.config.size,
                    server_auth = pools.config.server_auth.as_str(),
                    "pooling server connections"
                );
                tokio::spawn(pools.clone().maintain(token.clone()));
            }
            let serve = move |ctx, stream| protocol::serve_server_mode(ctx, stream, pools.clone());
            loops.push(tokio::spawn(accept::accept_loop(
                listener,
                socket,
                serve,
                token.clone(),
                tracker.clone(),
                workers.clone(),
            )));
        }
        for (listener, socket) in self.client_listeners {
            info!(
                listener = %listener.basics.name,
                mode = "client",
                protocol = %listener.basics.protocol,
                listen = %socket.local_endpoint().map(|e| e.to_string()).unwrap_or_default(),
                upstream = %listener.upstream,
                upstream_tls = %listener.upstream_tls.settings().mode,
                server_name = %listener.upstream_tls.server_name(),
                direct = listener.upstream_tls.direct(),
                client_cert = listener.upstream_tls.settings().cert.is_some(),
                pins = listener.upstream_tls.settings().pins.len(),
                "listening"
            );
            if listener.allow_remote_plaintext {
                warn!(
                    listener = %listener.basics.name,
                    listen = %listener.basics.listen,
                    "allow_remote_plaintext: this client-mode listener accepts plaintext from other hosts"
                );
            }
            loops.push(tokio::spawn(accept::accept_loop(
                listener,
                socket,
                protocol::serve_client_mode,
                token.clone(),
                tracker.clone(),
                workers.clone(),
            )));
        }
        shutdown.await;
        token.cancel();
        for l in loops {
            let _ = l.await;
        }
        tracker.close();
        let left = drain(&tracker, self.shutdown_grace).await;
        // The accept loops are gone, and with them every other handle.
        if let Ok(workers) = Arc::try_unwrap(workers) {
            workers.stop().await;
        }
        left
    }
}

/// Waits up to `grace` for the tracked connections to finish; returns how
/// many were still open then.
async fn drain(tracker: &TaskTracker, grace: Duration) -> usize {
    let open = tracker.len();
    if open == 0 {
        info!("shut down: no connections were open");
        return 0;
    }
    info!(
        open,
        grace_secs = grace.as_secs_f64(),
        "draining open connections"
    );
    if tokio::time::timeout(grace, tracker.wait()).await.is_ok() {
        info!("shut down: all connections finished");
        0
    } else {
        let left = tracker.len();
        warn!(left, "grace period over; closing the remaining connections");
        left
    }
}
