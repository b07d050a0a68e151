//! Starting the admin server (metrics, health, status page) next to a
//! bound proxy.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use intransit_admin::Admin;
use intransit_config::{AdminLimits, Endpoint};
use intransit_proxy::{BoundProxy, ListenerTls};
use tokio::net::TcpListener;
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
/// `elsewhere` ends the error when the address cannot be bound: how to
/// choose another one in the command at hand.
pub async fn start(
    addr: SocketAddr,
    tls: Option<Arc<ListenerTls>>,
    limits: AdminLimits,
    bound: &BoundProxy,
    elsewhere: &str,
) -> Result<SocketAddr> {
    let socket = bind(addr, elsewhere).await?;
    Ok(serve(socket, tls, limits, bound))
}

/// Binds the admin server's address, saying what to do when it cannot.
pub async fn bind(addr: SocketAddr, elsewhere: &str) -> Result<TcpListener> {
    intransit_admin::bind(addr).await.map_err(|e| {
        let endpoint = Endpoint::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        };
        let advice = crate::errors::address_advice(e.kind(), &endpoint);
        anyhow!("admin server: cannot listen on {addr}: {e}; {advice}{elsewhere}")
    })
}

/// Serves the admin endpoints for `bound` on a socket from [`bind`] until
/// the process exits. Returns the address it listens on.
pub fn serve(
    socket: TcpListener,
    tls: Option<Arc<ListenerTls>>,
    limits: AdminLimits,
    bound: &BoundProxy,
) -> SocketAddr {
    let local = match socket.local_addr() {
        Ok(local) => local,
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
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
    local
}
