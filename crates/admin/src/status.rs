//! `/status`: what the proxy is doing now, as JSON.
//!
//! The shape is documented in docs/configuration.md ("Admin server") and
//! is what the status page reads. Nothing in it is secret: certificates are
//! described by their public facts, refusals by names and reasons.

use std::time::SystemTime;

use intransit_proxy::audit::AuditEvent;
use intransit_proxy::metrics::{ReloadRounds, Summary};
use intransit_proxy::{
    LoadedCertificate, PolicySummary, PoolsStatus, PreparedRoute, ReloadFailure,
};
use serde::Serialize;

use crate::{unix_now, Admin};

/// The whole status document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// intransit's version.
    pub version: &'static str,
    /// When the proxy started, RFC 3339.
    pub started_at: String,
    /// Now, Unix seconds (the page computes ages from it).
    pub now: i64,
    /// What `/readyz` answers now: `false` with the reasons in `not_ready`.
    pub ready: bool,
    /// Why the proxy is not ready (as `/readyz` lists them).
    pub not_ready: Vec<String>,
    /// What needs attention while the proxy stays ready (as `/readyz`
    /// lists them), e.g. a stale CRL that `stale_crl = "allow"` tolerates.
    pub warnings: Vec<String>,
    /// Every server-mode listener.
    pub listeners: Vec<ListenerStatus>,
    /// Every client-mode listener (plaintext in, TLS to the database).
    pub client_listeners: Vec<ClientListenerStatus>,
    /// Outcome totals and the recent timeline.
    pub handshakes: Summary,
    /// The latest refusals, newest last.
    pub recent_refusals: Vec<AuditEvent>,
    /// Reload rounds so far (SIGHUP and file changes) and the latest one.
    pub reloads: ReloadRounds,
    /// Every pooled listener's pools.
    pub pools: Vec<PoolsStatus>,
}

/// One listener.
#[derive(Debug, Serialize)]
pub struct ListenerStatus {
    /// Configured name.
    pub name: String,
    /// `postgres`, `mysql` or `tls`.
    pub protocol: String,
    /// The bound address.
    pub listen: String,
    /// Connection cap.
    pub max_connections: usize,
    /// Whether unmatched server names are refused.
    pub require_sni_match: bool,
    /// The default route first, then SNI routes in order.
    pub routes: Vec<RouteStatus>,
}

/// One route and the material it serves.
#[derive(Debug, Serialize)]
pub struct RouteStatus {
    /// `default` or the server-name pattern.
    pub route: String,
    /// Where it forwards.
    pub upstream: String,
    /// Client policy in force.
    pub policy: PolicyStatus,
    /// Whether `db_users` rules restrict database users.
    pub db_users_enforced: bool,
    /// TLS to the database, when the upstream leg is encrypted.
    pub upstream_tls: Option<UpstreamTlsStatus>,
    /// The certificates in use: the served one first, then trust anchors.
    pub certificates: Vec<CertificateStatus>,
    /// The CRLs client certificates are checked against.
    pub crls: Vec<CrlStatus>,
    /// Why the latest reload of this route's files was refused, while
    /// they still hold what was refused; the certificates above stay in
    /// service.
    pub reload_error: Option<ReloadErrorStatus>,
}

/// A refused reload.
#[derive(Debug, Serialize)]
pub struct ReloadErrorStatus {
    /// When, RFC 3339.
    pub at: String,
    /// Why.
    pub error: String,
}

fn reload_error(failure: Option<ReloadFailure>) -> Option<ReloadErrorStatus> {
    failure.map(|f| ReloadErrorStatus {
        at: rfc3339_unix(unix_seconds(f.at)),
        error: f.error,
    })
}

/// How the leg to the database is encrypted and verified.
#[derive(Debug, Serialize)]
pub struct UpstreamTlsStatus {
    /// `require`, `verify-ca`, `verify-full` or `pinned`.
    pub mode: String,
    /// The name checked (and sent as SNI).
    pub server_name: String,
    /// How many SPKI pins are configured.
    pub pins: usize,
    /// Whether the proxy presents a client certificate.
    pub client_certificate: bool,
    /// Lowest TLS version.
    pub min_version: String,
    /// When this leg's material was loaded, RFC 3339.
    pub loaded_at: String,
    /// The proxy's client certificate (`upstream_client`), the anchors
    /// the database's certificate must chain to (`upstream_ca`), then the
    /// certificate the database presented in the latest upstream handshake
    /// (`upstream_peer`, its `loaded_at` is when it was first seen).
    pub certificates: Vec<CertificateStatus>,
    /// Why the latest reload of this leg's files was refused, while they
    /// still hold what was refused.
    pub reload_error: Option<ReloadErrorStatus>,
}

fn upstream_tls_status(tls: &intransit_proxy::UpstreamTls, now: i64) -> UpstreamTlsStatus {
    let material = tls.snapshot();
    let s = material.settings();
    let loaded_at = rfc3339_unix(unix_seconds(material.loaded_at));
    let certificates = material
        .client_cert
        .iter()
        .map(|c| describe("upstream_client", c, &loaded_at, now))
        .chain(
            material
                .trust_anchors
                .iter()
                .map(|c| describe("upstream_ca", c, &loaded_at, now)),
        )
        .chain(tls.last_peer_certificate().map(|(c, first_seen)| {
            describe(
                "upstream_peer",
                &c,
                &rfc3339_unix(unix_seconds(first_seen)),
                now,
            )
        }))
        .collect();
    UpstreamTlsStatus {
        mode: s.mode.to_string(),
        server_name: material.server_name(),
        pins: s.pins.len(),
        client_certificate: s.cert.is_some(),
        min_version: s.min_version.to_string(),
        loaded_at,
        certificates,
        reload_error: reload_error(tls.last_failure()),
    }
}

/// A client-mode listener.
#[derive(Debug, Serialize)]
pub struct ClientListenerStatus {
    /// Configured name.
    pub name: String,
    /// `postgres`, `mysql` or `tls`.
    pub protocol: String,
    /// The bound (plaintext) address.
    pub listen: String,
    /// The database.
    pub upstream: String,
    /// Whether plaintext is accepted from other hosts.
    pub allow_remote_plaintext: bool,
    /// The TLS it speaks to the database.
    pub upstream_tls: UpstreamTlsStatus,
}

/// A route's client policy.
#[derive(Debug, Serialize)]
pub struct PolicyStatus {
    /// Lowest TLS version accepted.
    pub min_version: String,
    /// `required`, `optional` or `none`.
    pub client_auth: String,
    /// Whether a CRL is checked.
    pub crl: bool,
    /// `refuse` or `allow`: client certificates once a CRL is past its
    /// nextUpdate.
    pub stale_crl: String,
    /// Identity allow-list; empty allows any trusted certificate.
    pub allow: Vec<String>,
}

/// One CRL in use.
#[derive(Debug, Serialize)]
pub struct CrlStatus {
    /// The client CA it covers.
    pub issuer: String,
    /// The file it was loaded from.
    pub file: String,
    /// thisUpdate, RFC 3339.
    pub this_update: String,
    /// nextUpdate, RFC 3339; `null` when the CRL has none.
    pub next_update: Option<String>,
    /// nextUpdate, Unix seconds.
    pub next_update_unix: Option<i64>,
    /// Whether nextUpdate has passed.
    pub stale: bool,
    /// Judged against its own validity period (thisUpdate to nextUpdate):
    /// `fresh` (half of it left or more, or no nextUpdate), `ageing` (less
    /// than half), `going_stale` (less than a seventh: a day of a 7-day
    /// CRL) or `stale` (past nextUpdate). The status page colours them
    /// green, amber, red and red.
    pub freshness: &'static str,
}

/// One certificate in use.
#[derive(Debug, Serialize)]
pub struct CertificateStatus {
    /// `server`, `client_ca`, `upstream_client`, `upstream_ca` or `upstream_peer`.
    pub role: &'static str,
    /// Subject DN.
    pub subject: String,
    /// SANs, prefixed.
    pub sans: Vec<String>,
    /// Serial, hex.
    pub serial: String,
    /// SHA-256 fingerprint.
    pub fingerprint_sha256: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// Expiry, Unix seconds.
    pub not_after_unix: i64,
    /// Whole days until expiry (negative once expired).
    pub days_left: i64,
    /// When the material was loaded, RFC 3339.
    pub loaded_at: String,
}

pub(crate) fn build(admin: &Admin) -> Status {
    let now = unix_now();
    let listeners = admin
        .listeners
        .iter()
        .map(|l| {
            let listen = admin
                .endpoints
                .iter()
                .find(|(name, _)| name == &l.basics.name)
                .map_or_else(|| l.basics.listen.to_string(), |(_, e)| e.to_string());
            ListenerStatus {
                name: l.basics.name.clone(),
                protocol: l.basics.protocol.as_str().to_owned(),
                listen,
                max_connections: l.basics.max_connections,
                require_sni_match: l.require_sni_match,
                routes: std::iter::once(&l.default_route)
                    .chain(&l.routes)
                    .map(|r| route_status(r, now))
                    .collect(),
            }
        })
        .collect();
    let client_listeners = admin
        .client_listeners
        .iter()
        .map(|l| ClientListenerStatus {
            name: l.basics.name.clone(),
            protocol: l.basics.protocol.as_str().to_owned(),
            listen: admin
                .endpoints
                .iter()
                .find(|(name, _)| name == &l.basics.name)
                .map_or_else(|| l.basics.listen.to_string(), |(_, e)| e.to_string()),
            upstream: l.upstream.to_string(),
            allow_remote_plaintext: l.allow_remote_plaintext,
            upstream_tls: upstream_tls_status(&l.upstream_tls, now),
        })
        .collect();
    let mut readiness = admin.readiness();
    let pools: Vec<PoolsStatus> = admin.pools.iter().map(|p| p.status()).collect();
    readiness
        .warnings
        .extend(pools.iter().filter_map(|p| {
            p.credentials_error.as_ref().map(|e| {
                format!(
                    "listener {}: the pool's credentials could not be reloaded ({e}); server logins keep using the previous ones",
                    p.listener
                )
            })
        }));
    Status {
        version: env!("CARGO_PKG_VERSION"),
        started_at: rfc3339_unix(unix_seconds(admin.started_at)),
        now,
        ready: readiness.not_ready.is_empty(),
        not_ready: readiness.not_ready,
        warnings: readiness.warnings,
        listeners,
        client_listeners,
        handshakes: admin.metrics.summary(),
        recent_refusals: admin.audit.recent_refusals(),
        reloads: admin.metrics.reload_rounds(),
        pools,
    }
}

fn route_status(route: &PreparedRoute, now: i64) -> RouteStatus {
    let material = route.tls.snapshot();
    let loaded_at = rfc3339_unix(unix_seconds(material.loaded_at));
    let certificates = std::iter::once(describe("server", &material.server_cert, &loaded_at, now))
        .chain(
            material
                .trust_anchors
                .iter()
                .map(|a| describe("client_ca", a, &loaded_at, now)),
        )
        .collect();
    let crls = material
        .crls
        .iter()
        .map(|c| CrlStatus {
            issuer: c.issuer.clone(),
            file: c.path.display().to_string(),
            this_update: rfc3339_unix(c.this_update_unix),
            next_update: c.next_update_unix.map(rfc3339_unix),
            next_update_unix: c.next_update_unix,
            stale: c.is_stale(now),
            freshness: c.freshness(now).as_str(),
        })
        .collect();
    let PolicySummary {
        min_version,
        client_auth,
        crl,
        stale_crl,
        allow,
    } = material.policy.clone();
    RouteStatus {
        route: route.label(),
        upstream: route.upstream.to_string(),
        policy: PolicyStatus {
            min_version,
            client_auth,
            crl,
            stale_crl: stale_crl.to_string(),
            allow,
        },
        db_users_enforced: !route.db_users.is_empty(),
        upstream_tls: route
            .upstream_tls
            .as_deref()
            .map(|t| upstream_tls_status(t, now)),
        certificates,
        crls,
        reload_error: reload_error(route.tls.last_failure()),
    }
}

fn describe(
    role: &'static str,
    c: &LoadedCertificate,
    loaded_at: &str,
    now: i64,
) -> CertificateStatus {
    CertificateStatus {
        role,
        subject: c.subject.clone(),
        sans: c.sans.clone(),
        serial: c.serial.clone(),
        fingerprint_sha256: c.fingerprint_sha256.clone(),
        not_after: rfc3339_unix(c.not_after_unix),
        not_after_unix: c.not_after_unix,
        days_left: (c.not_after_unix - now).div_euclid(86_400),
        loaded_at: loaded_at.to_owned(),
    }
}

fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub(crate) fn rfc3339_unix(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
