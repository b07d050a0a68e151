//! Reloading TLS material while the proxy runs: SIGHUP re-reads the
//! configuration file and reloads every listener's certificate, key, trust
//! anchors, CRL and allow-list. A listener whose new material fails to load
//! keeps the old one and the failure is logged. Upstream TLS is not
//! reloaded: a change to it is logged as needing a restart.

use std::path::PathBuf;
use std::sync::Arc;

use intransit_proxy::{PreparedListener, PreparedRoute};
use tracing::{error, info, warn};

/// Reloads on every SIGHUP until the process exits.
pub fn spawn_on_sighup(config_path: PathBuf, listeners: Vec<Arc<PreparedListener>>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; reload needs a restart");
                return;
            }
        };
        while hup.recv().await.is_some() {
            info!(config = %config_path.display(), "SIGHUP: reloading TLS material");
            reload_from_file(&config_path, &listeners);
        }
    });
}

fn reload_from_file(path: &std::path::Path, listeners: &[Arc<PreparedListener>]) {
    let config = match crate::load_config(path) {
        Ok(c) => c,
        Err(e) => {
            error!(
                error = format!("{e:#}"),
                "reload failed; keeping the running configuration"
            );
            return;
        }
    };
    for listener in listeners {
        let Some(new) = config.listeners.iter().find(|l| l.name == listener.name) else {
            warn!(listener = %listener.name, "listener is no longer in the configuration; it keeps running until restart");
            continue;
        };
        reload_listener(listener, &new.tls);
        warn_if_upstream_tls_changed(
            &listener.name,
            &listener.default_route,
            new.upstream_tls.as_ref(),
        );
        for route in &listener.routes {
            let matching = new
                .routes
                .iter()
                .find(|r| Some(&r.server_name) == route.server_name.as_ref());
            match matching {
                Some(r) => {
                    reload_route(listener, route, &r.tls);
                    warn_if_upstream_tls_changed(&listener.name, route, r.upstream_tls.as_ref());
                }
                None => warn!(
                    listener = %listener.name,
                    route = %route.label(),
                    "route is no longer in the configuration; it keeps running until restart"
                ),
            }
        }
    }
    for new in &config.listeners {
        if !listeners.iter().any(|l| l.name == new.name) {
            warn!(listener = %new.name, "new listener in the configuration; it starts on restart");
        }
    }
}

/// Upstream TLS settings are built once at start; a changed
/// `[listener.upstream_tls]` is reported rather than silently ignored.
fn warn_if_upstream_tls_changed(
    listener: &str,
    route: &PreparedRoute,
    new: Option<&intransit_config::UpstreamTls>,
) {
    let running = route.upstream_tls.as_ref().map(|t| t.settings());
    if running != new {
        warn!(
            listener = %listener,
            route = %route.label(),
            "upstream_tls changed in the configuration; it takes effect on restart"
        );
    }
}

/// Reloads a listener's default route and logs what is in use afterwards.
/// Returns whether the new material is in service.
pub fn reload_listener(listener: &PreparedListener, tls: &intransit_config::ServerTls) -> bool {
    reload_route(listener, &listener.default_route, tls)
}

/// Reloads one route's TLS material. Returns whether the new material is
/// in service.
pub fn reload_route(
    listener: &PreparedListener,
    route: &PreparedRoute,
    tls: &intransit_config::ServerTls,
) -> bool {
    let result = route.tls.reload(tls);
    listener
        .metrics
        .reload(&listener.name, &route.label(), result.is_ok());
    let listener = &listener.name;
    match result {
        Ok(material) => {
            info!(
            listener = %listener,
            route = %route.label(),
            subject = %material.server_cert.subject,
            serial = %material.server_cert.serial,
            fingerprint = %material.server_cert.fingerprint_sha256,
            not_after = material.server_cert.not_after_unix,
            "TLS material reloaded"
            );
            true
        }
        Err(e) => {
            error!(
                listener = %listener,
                route = %route.label(),
                error = %e,
                "TLS reload failed; new handshakes keep using the previous material"
            );
            false
        }
    }
}
