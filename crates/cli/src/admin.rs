//! Starting the admin server (metrics, health, readiness) next to a bound
//! proxy.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use intransit_admin::Admin;
use intransit_proxy::BoundProxy;
use tracing::{info, warn};

/// Binds `addr` and serves the admin endpoints for `bound` until the
/// process exits. Returns the address actually bound (port 0 resolved).
pub async fn start(addr: SocketAddr, bound: &BoundProxy) -> Result<SocketAddr> {
    let socket = intransit_admin::bind(addr)
        .await
        .with_context(|| format!("admin server: cannot listen on {addr}"))?;
    let local = socket.local_addr().unwrap_or(addr);
    let admin = Admin::new(bound);
    tokio::spawn(async move {
        if let Err(e) = intransit_admin::serve(socket, admin, std::future::pending()).await {
            warn!(error = %e, "admin server stopped");
        }
    });
    info!(
        admin = %local,
        page = %format!("http://{local}/"),
        metrics = %format!("http://{local}/metrics"),
        "admin server listening"
    );
    Ok(local)
}
