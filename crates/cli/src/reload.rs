//! Reloading TLS material while the proxy runs. Every certificate, key,
//! trust anchor and CRL of every listener, SNI route and upstream leg
//! (server-mode `[listener.upstream_tls]` and client-mode listeners) is
//! reloaded on SIGHUP, which re-reads the configuration file, and when a
//! watched file changes (`watch`), which rebuilds from the settings in
//! service.
//!
//! A reload whose files and settings are those in service changes nothing
//! and is logged as unchanged. New material is checked as a whole before
//! it is swapped in; material that fails keeps the old in service, and the
//! failure is logged with its reason and counted. Established connections
//! keep the material they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use intransit_proxy::metrics::ReloadRound;
use intransit_proxy::{
    PreparedClientListener, PreparedListener, PreparedRoute, ProxyMetrics, ReloadError, Reloaded,
};
use tracing::{debug, error, info, warn};

/// What started a reload round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: the configuration file is read again.
    Signal,
    /// A watched file changed: the settings in service are rebuilt.
    FileChange,
    /// `intransit up` renewed its server certificate.
    Renewal,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::FileChange => "file_change",
            Trigger::Renewal => "renewal",
        }
    }
}

/// Everything a running proxy can reload.
#[derive(Debug)]
pub struct Reloader {
    /// The configuration SIGHUP re-reads; `intransit up` has none, and
    /// SIGHUP then rebuilds from the settings in service.
    config_path: Option<PathBuf>,
    listeners: Vec<Arc<PreparedListener>>,
    client_listeners: Vec<Arc<PreparedClientListener>>,
    pools: Vec<Arc<intransit_proxy::Pools>>,
    metrics: Arc<ProxyMetrics>,
}

impl Reloader {
    pub fn new(config_path: Option<PathBuf>, bound: &intransit_proxy::BoundProxy) -> Self {
        Reloader {
            config_path,
            listeners: bound.listeners(),
            client_listeners: bound.client_listeners(),
            pools: bound.pools(),
            metrics: bound.metrics(),
        }
    }

    /// Every file the material in service was loaded from, for the watcher.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for listener in &self.listeners {
            for route in std::iter::once(&listener.default_route).chain(&listener.routes) {
                let material = route.tls.snapshot();
                let tls = material.settings();
                files.extend([tls.cert.clone(), tls.key.clone()]);
                files.extend(tls.client_ca.iter().chain(&tls.crl).cloned());
                if let Some(upstream) = &route.upstream_tls {
                    files.extend(upstream_files(&upstream.settings()));
                }
            }
        }
        for listener in &self.client_listeners {
            files.extend(upstream_files(&listener.upstream_tls.settings()));
        }
        for pools in &self.pools {
            files.extend(pools.watched_files());
        }
        files.sort();
        files.dedup();
        files
    }

    /// Runs one reload round across every listener, route and leg, and
    /// records it for `/status`.
    pub fn reload(&self, trigger: Trigger) {
        let mut round = ReloadRound {
            trigger: trigger.as_str(),
            ..ReloadRound::default()
        };
        match (trigger, &self.config_path) {
            (Trigger::Signal, None) => {
                info!("SIGHUP: reloading TLS material");
                self.reload_in_place(trigger, &mut round);
            }
            (Trigger::Signal, Some(path)) => {
                info!(config = %path.display(), "SIGHUP: reloading the configuration and TLS material");
                match crate::load_config(path) {
                    Ok(config) => self.reload_from_config(&config, &mut round),
                    Err(e) => {
                        let e = format!("{e:#}");
                        error!(
                            error = %e,
                            "reload failed; keeping the running configuration"
                        );
                        round.error = Some(e);
                    }
                }
            }
            (Trigger::FileChange | Trigger::Renewal, _) => {
                self.reload_in_place(trigger, &mut round)
            }
        }
        self.reload_pools(&mut round);
        self.metrics.reload_round(&round);
        if round.swapped + round.failed > 0 || trigger == Trigger::Signal {
            info!(
                trigger = trigger.as_str(),
                swapped = round.swapped,
                failed = round.failed,
                "reload round finished"
            );
        }
    }

    /// After the TLS material: pools re-read their credentials and retire
    /// server connections made with material or credentials replaced in
    /// this round.
    fn reload_pools(&self, round: &mut ReloadRound) {
        for pools in &self.pools {
            match pools.reload() {
                Ok(true) => round.swapped += 1,
                Ok(false) => {}
                Err(e) => {
                    round.failed += 1;
                    error!(
                        listener = %pools.listener(),
                        error = %e,
                        "pool credentials reload failed; server logins keep using the previous credentials"
                    );
                }
            }
        }
    }

    fn reload_in_place(&self, trigger: Trigger, round: &mut ReloadRound) {
        for listener in &self.listeners {
            for route in std::iter::once(&listener.default_route).chain(&listener.routes) {
                let settings = route.tls.snapshot().settings().clone();
                let result = route.tls.reload(&settings);
                note_server(listener, route, result, trigger, round);
                if let Some(upstream) = &route.upstream_tls {
                    let result = upstream.reload(&upstream.settings());
                    note_upstream(
                        &listener.basics.metrics,
                        &listener.basics.name,
                        &route.label(),
                        result,
                        trigger,
                        round,
                    );
                }
            }
        }
        for listener in &self.client_listeners {
            let tls = &listener.upstream_tls;
            let result = tls.reload(&tls.settings());
            note_upstream(
                &listener.basics.metrics,
                &listener.basics.name,
                "default",
                result,
                trigger,
                round,
            );
        }
    }

    fn reload_from_config(&self, config: &intransit_config::Config, round: &mut ReloadRound) {
        let trigger = Trigger::Signal;
        for listener in &self.listeners {
            let Some(new) = config
                .listeners
                .iter()
                .find(|l| l.name == listener.basics.name)
            else {
                warn!(listener = %listener.basics.name, "listener is no longer in the configuration; it keeps running until restart");
                continue;
            };
            let routes =
                std::iter::once((&listener.default_route, Some((&new.tls, &new.upstream_tls))))
                    .chain(listener.routes.iter().map(|route| {
                        let matching = new
                            .routes
                            .iter()
                            .find(|r| Some(&r.server_name) == route.server_name.as_ref())
                            .map(|r| (&r.tls, &r.upstream_tls));
                        (route, matching)
                    }));
            for (route, matching) in routes {
                let Some((tls, upstream_tls)) = matching else {
                    warn!(
                        listener = %listener.basics.name,
                        route = %route.label(),
                        "route is no longer in the configuration; it keeps running until restart"
                    );
                    continue;
                };
                let result = route.tls.reload(tls);
                note_server(listener, route, result, trigger, round);
                match (&route.upstream_tls, upstream_tls) {
                    (Some(running), Some(settings)) => {
                        let result = running.reload(settings);
                        note_upstream(
                            &listener.basics.metrics,
                            &listener.basics.name,
                            &route.label(),
                            result,
                            trigger,
                            round,
                        );
                    }
                    (None, None) => {}
                    // Turning the encrypted leg on or off changes how the
                    // protocol talks to the database, not just material.
                    _ => warn!(
                        listener = %listener.basics.name,
                        route = %route.label(),
                        "upstream_tls was added or removed in the configuration; that takes effect on restart"
                    ),
                }
            }
        }
        for listener in &self.client_listeners {
            let Some(new) = config
                .client_listeners
                .iter()
                .find(|l| l.name == listener.basics.name)
            else {
                warn!(listener = %listener.basics.name, "listener is no longer in the configuration; it keeps running until restart");
                continue;
            };
            let result = listener.upstream_tls.reload(&new.upstream_tls);
            note_upstream(
                &listener.basics.metrics,
                &listener.basics.name,
                "default",
                result,
                trigger,
                round,
            );
        }
        let running = |name: &str| {
            self.listeners.iter().any(|l| l.basics.name == name)
                || self.client_listeners.iter().any(|l| l.basics.name == name)
        };
        let new_names = config
            .listeners
            .iter()
            .map(|l| &l.name)
            .chain(config.client_listeners.iter().map(|l| &l.name));
        for name in new_names {
            if !running(name) {
                warn!(listener = %name, "new listener in the configuration; it starts on restart");
            }
        }
    }
}

fn upstream_files(settings: &intransit_config::UpstreamTls) -> Vec<PathBuf> {
    [&settings.ca, &settings.cert, &settings.key]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

fn note_server(
    listener: &PreparedListener,
    route: &PreparedRoute,
    result: Result<Reloaded<intransit_proxy::TlsMaterial>, ReloadError>,
    trigger: Trigger,
    round: &mut ReloadRound,
) {
    let route_label = route.label();
    let result = result.map(|r| match r {
        Reloaded::Unchanged(_) => None,
        Reloaded::Swapped(m) => Some(m.server_cert.clone()),
    });
    note(
        &listener.basics.metrics,
        &listener.basics.name,
        &route_label,
        "server",
        result,
        trigger,
        round,
    );
}

fn note_upstream(
    metrics: &ProxyMetrics,
    listener: &str,
    route: &str,
    result: Result<Reloaded<intransit_proxy::UpstreamMaterial>, ReloadError>,
    trigger: Trigger,
    round: &mut ReloadRound,
) {
    let result = result.map(|r| match r {
        Reloaded::Unchanged(_) => None,
        // An upstream leg without a client certificate still reloads its
        // anchors and pins; the log line then has no certificate to show.
        Reloaded::Swapped(m) => Some(m.client_cert.clone().unwrap_or_default()),
    });
    note(metrics, listener, route, "upstream", result, trigger, round);
}

/// Logs and counts one leg's reload. `Ok(None)` is unchanged.
fn note(
    metrics: &ProxyMetrics,
    listener: &str,
    route: &str,
    leg: &str,
    result: Result<Option<intransit_proxy::LoadedCertificate>, ReloadError>,
    trigger: Trigger,
    round: &mut ReloadRound,
) {
    let trigger_name = trigger.as_str();
    match result {
        Ok(None) if trigger != Trigger::FileChange => {
            info!(
                listener,
                route,
                leg,
                trigger = trigger_name,
                "TLS material unchanged"
            );
        }
        Ok(None) => {
            debug!(
                listener,
                route,
                leg,
                trigger = trigger_name,
                "TLS material unchanged"
            );
        }
        Ok(Some(cert)) => {
            round.swapped += 1;
            metrics.reload(listener, route, leg, true);
            info!(
                listener,
                route,
                leg,
                trigger = trigger_name,
                subject = %cert.subject,
                serial = %cert.serial,
                fingerprint = %cert.fingerprint_sha256,
                not_after = cert.not_after_unix,
                "TLS material reloaded"
            );
        }
        // A watcher sees several events for one bad write; the first one
        // was logged and counted.
        Err(e) if e.repeated && trigger == Trigger::FileChange => {
            debug!(listener, route, leg, error = %e, "TLS material still fails its checks");
        }
        Err(e) => {
            round.failed += 1;
            metrics.reload(listener, route, leg, false);
            error!(
                listener,
                route,
                leg,
                trigger = trigger_name,
                error = %e,
                "TLS reload failed; new handshakes keep using the previous material"
            );
        }
    }
}

/// Reloads a listener's default route from `tls` (used by `up` after it
/// renewed the server certificate). Returns whether the material in
/// service is what `tls` names.
pub fn reload_listener(listener: &PreparedListener, tls: &intransit_config::ServerTls) -> bool {
    let mut round = ReloadRound {
        trigger: "renewal",
        ..ReloadRound::default()
    };
    let result = listener.default_route.tls.reload(tls);
    let ok = result.is_ok();
    note_server(
        listener,
        &listener.default_route,
        result,
        Trigger::Renewal,
        &mut round,
    );
    ok
}

/// A pid file that is removed when the proxy exits.
#[derive(Debug)]
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes this process's id to `path` (via a temporary file and rename,
    /// so a reader never sees it half-written).
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a pid file in {}", dir.display()))?;
        use std::io::Write;
        writeln!(tmp, "{}", std::process::id())
            .with_context(|| format!("writing the pid file {}", path.display()))?;
        tmp.persist(path)
            .with_context(|| format!("writing the pid file {}", path.display()))?;
        Ok(PidFile(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
