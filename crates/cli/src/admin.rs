//! Starting the admin server (metrics, health, status page) next to a
//! bound proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use intransit_admin::Admin;
use intransit_config::AdminLimits;
use intransit_proxy::{BoundProxy, ListenerTls};
use tracing::info;

/// Loads `[admin_tls]` before anything binds, so a bad file stops start-up.
pub fn prepare_tls(tls: Option<&intransit_config::ServerTls>) -> Result<Option<Arc<ListenerTls>>> {
    tls.map(|t| {
        ListenerTls::build(t, vec![b"http/1.1".to_vec()])
            .map(Arc::new)
            .context("admin_tls")
    })
    .transpose()
}

/// Binds `addr` and serves the admin endpoints for `bound` until the
/// process exits, over TLS when `tls` is given, each connection bounded by
/// `limits`. Returns the address actually bound (port 0 resolved).
pub async fn start(
    addr: SocketAddr,
    tls: Option<Arc<ListenerTls>>,
    limits: AdminLimits,
    bound: &BoundProxy,
) -> Result<SocketAddr> {
    let socket = intransit_admin::bind(addr)
        .await
        .with_context(|| format!("admin server: cannot listen on {addr}"))?;
    let local = socket.local_addr().unwrap_or(addr);
    let admin = Admin::new(bound);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(intransit_admin::serve(socket, admin, tls, limits));
    info!(
        admin = %local,
        tls = scheme == "https",
        header_read_timeout_ms = limits.header_read_timeout.as_millis() as u64,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        max_connections = limits.max_connections,
        page = %format!("{scheme}://{local}/"),
        metrics = %format!("{scheme}://{local}/metrics"),
        "admin server listening"
    );
    Ok(local)
}
