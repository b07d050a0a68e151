//! The admin HTTP server: Prometheus metrics, liveness and readiness.
//!
//! | Path       | Answer |
//! |------------|--------|
//! | `/metrics` | OpenMetrics text: the proxy's counters, plus the expiry of every certificate in use, read from the live TLS material at scrape time |
//! | `/healthz` | `200 ok` while the process serves HTTP |
//! | `/readyz`  | `200` when every listener is bound, every certificate in use is valid now and no CRL that refuses when stale is past its nextUpdate; `503` with the reasons otherwise; warnings (a stale CRL under `stale_crl = "allow"`) follow `ready` |
//! | `/status`  | JSON: listeners, routes, policies and certificates in force, outcome totals and timeline, recent refusals |
//! | `/`        | the status page for people (`page.rs`), built from `/status` in the browser |
//!
//! The server only reads proxy state; it changes nothing. Without
//! `[admin_tls]` it speaks plain HTTP and the configuration allows loopback
//! addresses only; with it, every connection is TLS (mutual TLS by
//! default) and any address is allowed. Either way a connection that
//! takes too long to send its request, or sits idle, is closed, and the
//! number of connections is capped (`connection.rs`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use intransit_config::{AdminLimits, Endpoint, StaleCrl};
use intransit_proxy::{
    AuditLog, BoundProxy, ListenerTls, LoadedCertificate, Pools, PreparedClientListener,
    PreparedListener, ProxyMetrics, UpstreamTls,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::warn;

mod connection;
mod page;
mod status;

/// The OpenMetrics content type Prometheus negotiates.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin server reads.
#[derive(Debug)]
pub struct Admin {
    registry: Registry,
    metrics: Arc<ProxyMetrics>,
    audit: Arc<AuditLog>,
    listeners: Vec<Arc<PreparedListener>>,
    client_listeners: Vec<Arc<PreparedClientListener>>,
    /// The pools of pooled listeners.
    pools: Vec<Arc<Pools>>,
    /// The addresses bound, by listener name (port 0 resolved).
    endpoints: Vec<(String, Endpoint)>,
    started_at: SystemTime,
}

impl Admin {
    /// Builds the registry for a bound proxy's metrics and listeners.
    pub fn new(bound: &BoundProxy) -> Arc<Self> {
        let metrics = bound.metrics();
        let listeners = bound.listeners();
        let mut registry = Registry::with_prefix("intransit");
        metrics.register(&mut registry);
        registry.register_collector(Box::new(CertificateExpiry {
            listeners: listeners.clone(),
            client_listeners: bound.client_listeners(),
        }));
        registry.register_collector(Box::new(PoolGauges {
            pools: bound.pools(),
        }));
        Arc::new(Admin {
            registry,
            metrics,
            audit: bound.audit(),
            listeners,
            client_listeners: bound.client_listeners(),
            pools: bound.pools(),
            endpoints: bound.local_endpoints(),
            started_at: SystemTime::now(),
        })
    }

    /// The metrics exposition, as `/metrics` serves it.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        // Writing into a String does not fail; an encoding error would be a
        // bug in a label, and the scrape then shows what was written.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Why the proxy is not ready, or an empty list when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        self.readiness().not_ready
    }

    /// Why the proxy is not ready, and what an operator should know while
    /// it is: both computed now, so a CRL that went stale while the proxy
    /// ran shows up without a reload.
    pub fn readiness(&self) -> Readiness {
        let now = unix_now();
        let mut readiness = Readiness::default();
        for listener in &self.listeners {
            for route in std::iter::once(&listener.default_route).chain(&listener.routes) {
                let material = route.tls.snapshot();
                let at = format!("listener {} route {}", listener.basics.name, route.label());
                let cert = &material.server_cert;
                if cert.not_after_unix <= now {
                    readiness.not_ready.push(format!(
                        "{at}: server certificate {} (serial {}) has expired",
                        cert.subject, cert.serial
                    ));
                }
                for anchor in &material.trust_anchors {
                    if anchor.not_after_unix <= now {
                        readiness.not_ready.push(format!(
                            "{at}: client CA {} (serial {}) has expired",
                            anchor.subject, anchor.serial
                        ));
                    }
                }
                for crl in material.crls.iter().filter(|c| c.is_stale(now)) {
                    let since = crl
                        .next_update_unix
                        .map(status::rfc3339_unix)
                        .unwrap_or_default();
                    // A refusing listener turns away every client of that CA,
                    // which a replica with a fresh CRL would admit: take this
                    // one out of rotation. An allowing one still serves.
                    match material.policy.stale_crl {
                        StaleCrl::Refuse => readiness.not_ready.push(format!(
                            "{at}: the CRL from {} in {} is stale since {since} (its nextUpdate); client certificates of that CA are refused (crl_expired) until a fresh CRL is installed",
                            crl.issuer,
                            crl.path.display()
                        )),
                        StaleCrl::Allow => readiness.warnings.push(format!(
                            "{at}: the CRL from {} in {} is stale since {since} (its nextUpdate); stale_crl = \"allow\" admits client certificates of that CA that are not in it, including any revoked since",
                            crl.issuer,
                            crl.path.display()
                        )),
                    }
                }
            }
        }
        readiness
    }

    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/status", get(status_json))
            .route("/", get(page::index))
            .route("/assets/status.js", get(page::script))
            .route("/assets/status.css", get(page::style))
            .with_state(self.clone())
    }
}

async fn status_json(State(admin): State<Arc<Admin>>) -> Response {
    axum::Json(status::build(&admin)).into_response()
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS)], admin.metrics_text()).into_response()
}

/// Readiness now: what makes the proxy not ready, and warnings that do
/// not.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Reasons to take this instance out of rotation; empty when ready.
    pub not_ready: Vec<String>,
    /// What an operator should act on while the instance stays ready.
    pub warnings: Vec<String>,
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    let Readiness {
        not_ready,
        warnings,
    } = admin.readiness();
    let (status, mut body) = if not_ready.is_empty() {
        (StatusCode::OK, String::from("ready\n"))
    } else {
        let mut body = String::from("not ready:\n");
        for r in not_ready {
            let _ = writeln!(body, "- {r}");
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    };
    if !warnings.is_empty() {
        body.push_str("warnings:\n");
        for w in warnings {
            let _ = writeln!(body, "- {w}");
        }
    }
    (status, body).into_response()
}

/// Binds the admin address. Separate from [`serve`] so that a bad address
/// stops start-up before the proxy accepts anything.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the admin endpoints until the process exits: HTTP/1.1, over TLS
/// when `tls` is given (each connection a handshake with the admin
/// material's current configuration, client certificates checked as for
/// a listener). Every connection is bounded by `limits` (see
/// [`connection`]), the same with and without TLS; connections beyond
/// the cap are closed at accept.
pub async fn serve(
    socket: TcpListener,
    admin: Arc<Admin>,
    tls: Option<Arc<ListenerTls>>,
    limits: AdminLimits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused = connection::RefusalLog::default();
    loop {
        let (tcp, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "admin server: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            if let Some(left_out) = refused.sample() {
                warn!(
                    peer = %peer,
                    max_connections = limits.max_connections,
                    left_out,
                    "admin server: connection closed at accept, admin_max_connections reached"
                );
            }
            continue;
        };
        let router = admin.router();
        let tls = tls.as_ref().map(|t| t.snapshot().config());
        tokio::spawn(async move {
            let _permit = permit;
            connection::serve(tcp, peer, router, tls, limits).await;
        });
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Labels of one certificate in use.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    listener: String,
    route: String,
    /// `server` (the certificate the proxy presents), `client_ca` (a
    /// trust anchor for client certificates), `upstream_client` (the
    /// certificate the proxy presents to the database), `upstream_ca` (a
    /// trust anchor for the database's certificate) or `upstream_peer` (the
    /// certificate the database presented in the latest handshake).
    role: String,
    subject: String,
    serial: String,
}

/// Labels of a pool gauge: the listener and what is counted. Pools are
/// summed per listener: database and user names never become labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolStateLabels {
    listener: String,
    state: String,
}

/// Reads every pool's counts at scrape time.
#[derive(Debug)]
struct PoolGauges {
    pools: Vec<Arc<Pools>>,
}

impl Collector for PoolGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let clients = Family::<PoolStateLabels, Gauge>::default();
        let servers = Family::<PoolStateLabels, Gauge>::default();
        for pools in &self.pools {
            let status = pools.status();
            let set = |family: &Family<PoolStateLabels, Gauge>, state: &str, n: usize| {
                family
                    .get_or_create(&PoolStateLabels {
                        listener: status.listener.clone(),
                        state: state.to_owned(),
                    })
                    .set(n as i64);
            };
            let total = |f: fn(&intransit_proxy::PoolStatus) -> usize| -> usize {
                status.pools.iter().map(f).sum()
            };
            let (logged_in, waiting, active) = (
                total(|p| p.clients),
                total(|p| p.waiting),
                total(|p| p.active),
            );
            set(&clients, "active", active);
            set(&clients, "waiting", waiting);
            set(&clients, "idle", logged_in.saturating_sub(active + waiting));
            set(&servers, "active", active);
            set(&servers, "idle", total(|p| p.idle));
            set(&servers, "opening", total(|p| p.opening));
        }
        let m = encoder.encode_descriptor(
            "pool_clients",
            "Pooled clients logged in: active (holding a server connection), waiting for one, or idle between transactions",
            None,
            clients.metric_type(),
        )?;
        clients.encode(m)?;
        let m = encoder.encode_descriptor(
            "pool_server_connections",
            "Pooled server connections: active (lent to a client), idle, or opening (logging in)",
            None,
            servers.metric_type(),
        )?;
        servers.encode(m)?;
        Ok(())
    }
}

/// Labels of one CRL in use.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrlLabels {
    listener: String,
    route: String,
    /// The client CA the CRL covers.
    issuer: String,
}

/// Reads the expiry of every certificate in use at scrape time, so a reload
/// shows up in the next scrape and replaced certificates disappear.
#[derive(Debug)]
struct CertificateExpiry {
    listeners: Vec<Arc<PreparedListener>>,
    client_listeners: Vec<Arc<PreparedClientListener>>,
}

fn unix(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Collector for CertificateExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let not_after = Family::<CertificateLabels, Gauge>::default();
        let loaded_at = Family::<CertificateLabels, Gauge>::default();
        let crl_next_update = Family::<CrlLabels, Gauge>::default();
        let record = |listener: &str, route: &str, role: &str, cert: &LoadedCertificate, at| {
            let labels = CertificateLabels {
                listener: listener.to_owned(),
                route: route.to_owned(),
                role: role.to_owned(),
                subject: cert.subject.clone(),
                serial: cert.serial.clone(),
            };
            not_after.get_or_create(&labels).set(cert.not_after_unix);
            loaded_at.get_or_create(&labels).set(unix(at));
        };
        let upstream = |listener: &str, route: &str, tls: &UpstreamTls| {
            let material = tls.snapshot();
            let certs = material
                .client_cert
                .iter()
                .map(|c| ("upstream_client", c))
                .chain(material.trust_anchors.iter().map(|a| ("upstream_ca", a)));
            for (role, cert) in certs {
                record(listener, route, role, cert, material.loaded_at);
            }
            if let Some((peer, first_seen)) = tls.last_peer_certificate() {
                record(listener, route, "upstream_peer", &peer, first_seen);
            }
        };
        for listener in &self.listeners {
            for route in std::iter::once(&listener.default_route).chain(&listener.routes) {
                let material = route.tls.snapshot();
                let label = route.label();
                let certs = std::iter::once(("server", &material.server_cert))
                    .chain(material.trust_anchors.iter().map(|a| ("client_ca", a)));
                for (role, cert) in certs {
                    record(
                        &listener.basics.name,
                        &label,
                        role,
                        cert,
                        material.loaded_at,
                    );
                }
                for crl in &material.crls {
                    if let Some(next) = crl.next_update_unix {
                        crl_next_update
                            .get_or_create(&CrlLabels {
                                listener: listener.basics.name.clone(),
                                route: label.clone(),
                                issuer: crl.issuer.clone(),
                            })
                            .set(next);
                    }
                }
                if let Some(tls) = &route.upstream_tls {
                    upstream(&listener.basics.name, &label, tls);
                }
            }
        }
        for listener in &self.client_listeners {
            upstream(&listener.basics.name, "default", &listener.upstream_tls);
        }
        let m = encoder.encode_descriptor(
            "certificate_not_after_seconds",
            "Expiry of each certificate in use, as Unix time",
            None,
            not_after.metric_type(),
        )?;
        not_after.encode(m)?;
        let m = encoder.encode_descriptor(
            "certificate_loaded_at_seconds",
            "When each certificate in use was loaded, as Unix time",
            None,
            loaded_at.metric_type(),
        )?;
        loaded_at.encode(m)?;
        let m = encoder.encode_descriptor(
            "crl_next_update_seconds",
            "nextUpdate of each CRL client certificates are checked against, as Unix time; past it the CRL is stale",
            None,
            crl_next_update.metric_type(),
        )?;
        crl_next_update.encode(m)?;
        Ok(())
    }
}
