//! One audit event per client connection, written when the connection ends,
//! and a bounded tail of recent refusals for the admin status.
//!
//! An event says who connected (peer address, certificate identity and
//! fingerprint), to what (listener, route, database user and name), how
//! (TLS version, suite, group, resumption, SNI, ALPN), what happened (ok or
//! the refusal reason), and how much (bytes each way, duration). It never
//! holds query contents, passwords or keys: the proxy does not look past
//! the login phase, and of the login phase it keeps only names.
//!
//! Events go to the log (target `intransit::audit`, message
//! `connection audit`) and, when `audit_log` is configured, as JSON lines
//! to that file.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use intransit_policy::ClientIdentity;
use serde::Serialize;
use tracing::{info, warn};

use crate::error::ProxyError;

/// How many refusals `/status` keeps.
pub const RECENT_REFUSALS: usize = 50;

/// The outcome of a connection that was an ACME CA's TLS-ALPN-01
/// validation, answered: neither a client's session nor a refusal.
pub const ACME_VALIDATION: &str = "acme_validation";

/// What the connection presented as a client certificate.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientCertFacts {
    /// Subject common name.
    pub cn: Option<String>,
    /// Subject alternative names, `dns:` and `uri:` prefixed.
    pub sans: Vec<String>,
    /// SHA-256 fingerprint of the DER certificate.
    pub sha256: String,
}

impl ClientCertFacts {
    pub(crate) fn from_der(der: &[u8]) -> Option<Self> {
        let identity = ClientIdentity::from_der(der).ok()?;
        Some(ClientCertFacts {
            cn: identity.common_name.clone(),
            sans: identity
                .dns_names
                .iter()
                .map(|d| format!("dns:{d}"))
                .chain(identity.uris.iter().map(|u| format!("uri:{u}")))
                .collect(),
            sha256: intransit_pki::sha256_fingerprint(der),
        })
    }
}

/// What is learnt about a connection while it negotiates and runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionRecord {
    pub(crate) sni: Option<String>,
    pub(crate) alpn: Option<String>,
    pub(crate) client_cert: Option<ClientCertFacts>,
    pub(crate) user: Option<String>,
    pub(crate) database: Option<String>,
    pub(crate) bytes: Option<(u64, u64)>,
    /// A pooled session's pool mode and how many server connections
    /// served it.
    pub(crate) pool: Option<(&'static str, u64)>,
    /// The connection was counted as established: a later refusal ends
    /// its session and is not a second handshake outcome.
    pub(crate) established: bool,
    /// The connection was an ACME CA's TLS-ALPN-01 validation, answered.
    pub(crate) acme_validation: bool,
}

/// One connection, as the audit log records it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// When the connection ended, RFC 3339 UTC.
    pub time: String,
    /// Connection id, as in the other log lines.
    pub conn: u64,
    /// Listener name.
    pub listener: String,
    /// Route label, empty if none was chosen.
    pub route: String,
    /// `postgres`, `mysql` or `tls`.
    pub protocol: String,
    /// Client address.
    pub peer: String,
    /// The client certificate, if one was presented.
    pub client_cert: Option<ClientCertFacts>,
    /// Database user from the login, where the protocol exposes it.
    pub db_user: Option<String>,
    /// Database name from the login, where the protocol exposes it.
    pub db_name: Option<String>,
    /// Negotiated TLS version, `none` without TLS.
    pub tls_version: String,
    /// Negotiated cipher suite.
    pub cipher: String,
    /// Negotiated key-exchange group.
    pub group: String,
    /// Whether the TLS session was resumed.
    pub resumed: bool,
    /// Server name the client sent.
    pub sni: Option<String>,
    /// ALPN protocol agreed.
    pub alpn: Option<String>,
    /// `ok`, the refusal reason, or `acme_validation` (an ACME CA's
    /// TLS-ALPN-01 validation, answered).
    pub outcome: String,
    /// Why, for a refusal (no secrets: names and error texts only).
    pub detail: Option<String>,
    /// Bytes from the client to the database.
    pub bytes_from_client: u64,
    /// Bytes from the database to the client.
    pub bytes_to_client: u64,
    /// Connection lifetime in milliseconds.
    pub duration_ms: u64,
    /// A pooled session's pool mode (`transaction` or `session`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_mode: Option<String>,
    /// How many server connections served a pooled session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_connections: Option<u64>,
}

/// Where audit events go, and the recent refusals.
#[derive(Debug, Default)]
pub struct AuditLog {
    file: Option<Mutex<File>>,
    recent: Mutex<VecDeque<AuditEvent>>,
}

impl AuditLog {
    /// Events to the log only.
    pub fn to_log() -> Self {
        AuditLog::default()
    }

    /// Events to the log and appended to `path` (created 0640 if missing).
    pub fn to_file(path: &Path) -> Result<Self, ProxyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .map_err(|e| ProxyError::file("audit log", path, e.to_string()))?;
        Ok(AuditLog {
            file: Some(Mutex::new(file)),
            recent: Mutex::default(),
        })
    }

    /// Records one ended connection.
    pub fn record(&self, event: AuditEvent) {
        // The file first: whoever sees the log line finds the file written.
        if let Some(file) = &self.file {
            self.append(file, &event);
        }
        info!(
            target: "intransit::audit",
            conn = event.conn,
            listener = %event.listener,
            route = %event.route,
            protocol = %event.protocol,
            peer = %event.peer,
            client_cn = event.client_cert.as_ref().and_then(|c| c.cn.as_deref()).unwrap_or(""),
            client_sans = %event.client_cert.as_ref().map(|c| c.sans.join(",")).unwrap_or_default(),
            client_cert_sha256 = event.client_cert.as_ref().map(|c| c.sha256.as_str()).unwrap_or(""),
            db_user = event.db_user.as_deref().unwrap_or(""),
            db_name = event.db_name.as_deref().unwrap_or(""),
            tls_version = %event.tls_version,
            cipher = %event.cipher,
            group = %event.group,
            resumed = event.resumed,
            sni = event.sni.as_deref().unwrap_or(""),
            alpn = event.alpn.as_deref().unwrap_or(""),
            outcome = %event.outcome,
            detail = event.detail.as_deref().unwrap_or(""),
            bytes_from_client = event.bytes_from_client,
            bytes_to_client = event.bytes_to_client,
            duration_ms = event.duration_ms,
            pool_mode = event.pool_mode.as_deref(),
            server_connections = event.server_connections,
            "connection audit"
        );
        if event.outcome != "ok" && event.outcome != ACME_VALIDATION {
            let mut recent = lock(&self.recent);
            if recent.len() == RECENT_REFUSALS {
                recent.pop_front();
            }
            recent.push_back(event);
        }
    }

    fn append(&self, file: &Mutex<File>, event: &AuditEvent) {
        let Ok(mut line) = serde_json::to_vec(event) else {
            return;
        };
        line.push(b'\n');
        // One write per event on an O_APPEND file: lines from concurrent
        // connections never interleave.
        if let Err(e) = lock(file).write_all(&line) {
            warn!(error = %e, "cannot write the audit log");
        }
    }

    /// The most recent refusals, newest last.
    pub fn recent_refusals(&self) -> Vec<AuditEvent> {
        lock(&self.recent).iter().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values stay whole even if a holder panicked.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Formats a time as RFC 3339 UTC.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    time::OffsetDateTime::from_unix_timestamp_nanos(since.as_nanos() as i128)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(conn: u64, outcome: &str) -> AuditEvent {
        AuditEvent {
            time: rfc3339(SystemTime::now()),
            conn,
            listener: "pg".into(),
            route: String::new(),
            protocol: "postgres".into(),
            peer: "127.0.0.1:5000".into(),
            client_cert: None,
            db_user: None,
            db_name: None,
            tls_version: "none".into(),
            cipher: "none".into(),
            group: "none".into(),
            resumed: false,
            sni: None,
            alpn: None,
            outcome: outcome.into(),
            detail: None,
            bytes_from_client: 0,
            bytes_to_client: 0,
            duration_ms: 1,
            pool_mode: None,
            server_connections: None,
        }
    }

    #[test]
    fn recent_refusals_are_bounded_and_skip_successes() {
        let log = AuditLog::to_log();
        for i in 0..(RECENT_REFUSALS as u64 + 10) {
            log.record(event(i, "plaintext_refused"));
            log.record(event(i, "ok"));
        }
        let recent = log.recent_refusals();
        assert_eq!(recent.len(), RECENT_REFUSALS);
        assert_eq!(recent[0].conn, 10);
        assert!(recent.iter().all(|e| e.outcome != "ok"));
    }

    #[test]
    fn the_file_gets_one_json_line_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::to_file(&path).unwrap();
        log.record(event(1, "ok"));
        log.record(event(2, "untrusted"));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["outcome"], "untrusted");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    }
}
