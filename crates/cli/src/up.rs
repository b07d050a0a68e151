//! `intransit up`: the zero-configuration start.
//!
//! Creates (or reuses) a CA, a server certificate and a client certificate
//! in the state directory, builds one PostgreSQL listener with the secure
//! defaults (TLS 1.3, client certificate required), and prints the psql
//! command that connects through it with `sslmode=verify-full`. With
//! `--demo`, the database behind it is one of its own ([`crate::demo`]),
//! started first and stopped last.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use intransit_config::{
    AdminAddrError, AdminLimits, ClientAuth, Config, Endpoint, ListenerConfig, Mode, Protocol,
    ServerTls, TlsVersion, UnauthenticatedLimits, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MYSQL_SERVER_VERSION, DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
};
use intransit_pki::{QuickstartLifetimes, StateDir};
use intransit_policy::{AllowList, DbUserRules};
use intransit_proxy::{Proxy, ProxyError};
use tracing::{info, warn};

use crate::cli::{UpArgs, UpProtocol, DEFAULT_ADMIN};
use crate::demo::{DemoKind, DemoPlan, DemoStopper, RunningDemo, DEMO_HOST};

pub async fn run(args: UpArgs) -> Result<()> {
    let signals = crate::ShutdownSignals::install()?;
    let hup = crate::watch::install_sighup()?;
    // Every argument is checked and every port bound before anything is
    // written to the state directory, so a failed start leaves no state
    // behind.
    let listen = Endpoint::parse(&args.listen).map_err(|m| anyhow::anyhow!("--listen: {m}"))?;
    if listen.bind_addr().is_none() && !matches!(listen, Endpoint::Unix(_)) {
        bail!(
            "--listen: {} must be an IP address and port, e.g. 127.0.0.1:6432",
            args.listen
        );
    }
    let protocol = match args.protocol {
        UpProtocol::Postgres => Protocol::Postgres,
        UpProtocol::Tls => Protocol::Tls,
        UpProtocol::Mysql => Protocol::Mysql,
    };
    let demo_kind = match (args.demo, protocol) {
        (false, _) => None,
        (true, Protocol::Postgres) => Some(DemoKind::Postgres),
        (true, Protocol::Mysql) => Some(DemoKind::MariaDb),
        (true, _) => bail!(
            "--demo starts PostgreSQL (the default) or MariaDB (--protocol mysql); with \
             --protocol tls, give --upstream HOST:PORT instead"
        ),
    };
    let upstream_text = match (&args.upstream, protocol) {
        (Some(u), _) => u.clone(),
        (None, Protocol::Postgres) => "127.0.0.1:5432".to_owned(),
        (None, Protocol::Mysql) => "127.0.0.1:3306".to_owned(),
        (None, _) => bail!(
            "--protocol tls needs --upstream HOST:PORT (for example 127.0.0.1:6379 for Redis)"
        ),
    };
    let upstream =
        Endpoint::parse(&upstream_text).map_err(|m| anyhow::anyhow!("--upstream: {m}"))?;
    let lifetimes = QuickstartLifetimes {
        server: lifetime("--server-cert-lifetime", &args.server_cert_lifetime)?,
        client: lifetime("--client-cert-lifetime", &args.client_cert_lifetime)?,
    };
    let admin_addr = admin_address(args.admin.as_deref())?;
    let state_root = absolute(&args.state_dir)?;
    let acme = crate::acme_cmd::UpAcme::from_flags(&args.acme, &args.acme_dns, &listen, protocol)?;
    // The demo's programs, account and paths are checked here, so that a
    // machine without the database fails before anything is written.
    let demo_plan = demo_kind
        .map(|kind| DemoPlan::check(kind, &state_root, args.demo_bin_dir.as_deref()))
        .transpose()?;

    let listener_name = protocol.to_string();
    let elsewhere = |_: &str| "choose another address with --listen".to_owned();
    let mut held_port = hold_port(&listener_name, &listen)
        .map_err(|e| crate::errors::explain_listener(e, &elsewhere))?;
    let admin_socket = match admin_addr {
        None => None,
        Some(addr) => {
            match crate::admin::bind(
                addr,
                "choose another address with --admin ADDR, or --admin off",
            )
            .await
            {
                Ok(socket) => Some(socket),
                // Only the default address may be skipped when it is
                // taken; an address the user chose must work.
                Err(e) if args.admin.is_none() => {
                    warn!(
                        error = crate::errors::chain(&e),
                        "starting without the admin server"
                    );
                    None
                }
                Err(e) => return Err(e),
            }
        }
    };

    let state = StateDir::new(state_root.clone());
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty() && h != "localhost");
    let mut dns = vec!["localhost".to_owned()];
    dns.extend(host.clone());
    let ips = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let material = match &acme {
        None => state.ensure_quickstart_with(&dns, &ips, &args.client_name, &lifetimes),
        Some(_) => state.ensure_quickstart_without_server(&args.client_name, &lifetimes),
    }
    .with_context(|| format!("preparing certificates in {}", state_root.display()))?;
    match &acme {
        // The listener's address is the challenge's, and the listener
        // cannot run before it has a certificate: the first order is
        // answered on that address before the listener starts (the port
        // let go only for the order), the renewals by the running listener.
        Some(acme) if acme.on_listener => {
            drop(held_port.take());
            acme.ensure_server(&state).await?;
            held_port = hold_port(&listener_name, &listen)
                .map_err(|e| crate::errors::explain_listener(e, &elsewhere))?;
        }
        Some(acme) => acme.ensure_server(&state).await?,
        None => {}
    }
    if material.created {
        info!(state_dir = %state_root.display(), "created CA and certificates");
    } else {
        info!(state_dir = %state_root.display(), "reusing CA and certificates");
    }

    let demo = match demo_plan {
        Some(plan) => {
            let (state, client_name) = (state.clone(), args.client_name.clone());
            let server_lifetime = lifetimes.server;
            let running = tokio::task::spawn_blocking(move || {
                plan.start(&state, &client_name, server_lifetime)
            })
            .await
            .context("starting the demo database")??;
            Some(running)
        }
        None => None,
    };
    // From here on, an error return stops the demo database too.
    let demo_guard = StopOnDrop(demo.as_ref().map(RunningDemo::stopper));
    let upstream = match &demo {
        Some(running) => running.upstream.clone(),
        None => upstream,
    };

    let listener = ListenerConfig {
        name: listener_name,
        mode: Mode::Server,
        protocol,
        listen: listen.clone(),
        upstream: upstream.clone(),
        upstream_tls: None,
        tls: ServerTls {
            cert: material.server.chain.clone(),
            key: material.server.key.clone(),
            client_ca: Some(material.ca_cert.clone()),
            crl: None,
            stale_crl: intransit_config::StaleCrl::Refuse,
            min_version: TlsVersion::V1_3,
            client_auth: ClientAuth::Required,
            allow: AllowList::default(),
        },
        db_users: DbUserRules::default(),
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        upstream_connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
        max_connections: DEFAULT_MAX_CONNECTIONS,
        unauthenticated: UnauthenticatedLimits::default(),
        routes: Vec::new(),
        require_sni_match: false,
        mysql_server_version: DEFAULT_MYSQL_SERVER_VERSION.to_owned(),
        pool: None,
    };
    let server_tls = listener.tls.clone();
    let config = Config {
        state_dir: Some(state_root.clone()),
        admin: None,
        admin_tls: None,
        admin_limits: AdminLimits::default(),
        audit_log: args.audit_log.clone(),
        pid_file: None,
        shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        worker_threads: None,
        listeners: vec![listener],
        client_listeners: Vec::new(),
    };
    let prepared =
        Proxy::prepare(&config).map_err(|e| crate::errors::explain_listener(e, &elsewhere))?;
    // The port was held until now; the proxy binds it again at once.
    drop(held_port);
    let bound = prepared
        .bind()
        .await
        .map_err(|e| crate::errors::explain_listener(e, &elsewhere))?;
    let admin_line = match admin_socket {
        Some(socket) => {
            let local = crate::admin::serve(socket, None, AdminLimits::default(), &bound);
            format!("status page: http://{local}/ (Prometheus metrics at /metrics)\n")
        }
        None => String::new(),
    };
    let audit_line = match &args.audit_log {
        Some(path) => format!(
            "audit events: one JSON line per connection in {}\n",
            path.display()
        ),
        None => {
            "audit events: one \"connection audit\" line per connection in this log\n".to_owned()
        }
    };
    if let Some(running) = bound.listeners().into_iter().next() {
        let acme = acme
            .clone()
            .map(|a| a.answering_on(&running.acme_challenges));
        crate::renewal::spawn(state.clone(), running, server_tls, acme);
    }
    // Certificates replaced by hand (or by `intransit cert renew`) reload
    // like the proxy's; there is no configuration file to re-read.
    crate::watch::spawn(crate::reload::Reloader::new(None, &bound), hup);
    let bound_at = bound
        .local_endpoints()
        .into_iter()
        .next()
        .map(|(_, e)| e)
        .unwrap_or(listen);

    if demo.is_none() {
        match intransit_proxy::connect_upstream(&upstream, Duration::from_secs(2)).await {
            Ok(_) => info!(upstream = %upstream, "the upstream is reachable"),
            Err(e) => {
                let demo_hint = match protocol {
                    Protocol::Tls => "",
                    Protocol::Mysql => {
                        ", or run `intransit up --demo --protocol mysql` for a throwaway MariaDB \
                         of its own"
                    }
                    _ => ", or run `intransit up --demo` for a throwaway database of its own",
                };
                warn!(
                    upstream = %upstream,
                    error = %e,
                    "the upstream {upstream} is not reachable: nothing answers there; the proxy \
                     runs anyway and tells clients the database is unavailable until it does. \
                     Point --upstream at your database{demo_hint}"
                );
            }
        }
    }

    let host_for_client = match &bound_at {
        Endpoint::Tcp { host, .. } if host == "0.0.0.0" || host == "::" => "localhost".to_owned(),
        Endpoint::Tcp { host, .. } => host.clone(),
        Endpoint::Unix(p) => p
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
    };
    let port = match &bound_at {
        Endpoint::Tcp { port, .. } => port.to_string(),
        Endpoint::Unix(_) => String::new(),
    };
    // The ACME certificate names the host, not the listening address, and
    // chains to a root in the system's store, not to the local CA.
    let acme_name = acme.as_ref().and_then(|a| a.dns.first()).cloned();
    let server_name = acme_name.clone().unwrap_or_else(|| "localhost".to_owned());
    let conninfo = [
        ("host", acme_name.clone().unwrap_or(host_for_client)),
        ("port", port),
        ("user", args.user.clone()),
        ("dbname", args.database.clone()),
        ("sslmode", "verify-full".into()),
        match acme {
            Some(_) => ("sslrootcert", crate::acme_cmd::SYSTEM_ROOTS.to_owned()),
            None => ("sslrootcert", material.ca_cert.display().to_string()),
        },
        ("sslcert", material.client.cert.display().to_string()),
        ("sslkey", material.client.key.display().to_string()),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k}={}", conninfo_value(v)))
    .collect::<Vec<_>>()
    .join(" ");

    let state_note = if material.created {
        "created"
    } else {
        "reused"
    };
    let demo_line = match &demo {
        Some(running) => format!(
            "demo database: {name} {version} in {dir} ({note}), on {DEMO_HOST}:{port} with TLS and client certificates only\n",
            name = match running.kind {
                DemoKind::Postgres => "PostgreSQL",
                DemoKind::MariaDb => "MariaDB",
            },
            version = running.version,
            dir = running.dir.display(),
            note = if running.created { "created" } else { "reused" },
            port = running.port,
        ),
        None => String::new(),
    };
    let (database_kind, stop_note) = match &demo {
        Some(_) => ("the demo ", " (the demo database stops too)"),
        None => ("", ""),
    };
    let (host, port) = match (&bound_at, &acme_name) {
        (Endpoint::Tcp { port, .. }, Some(name)) => (name.clone(), port.to_string()),
        (Endpoint::Tcp { host, port }, None) => (host.clone(), port.to_string()),
        (Endpoint::Unix(_), _) => (String::new(), String::new()),
    };
    // Each client's way of naming the server's trust: the local CA's file,
    // or with ACME nothing (its default, the system's roots).
    let ca = material.ca_cert.display();
    let (ca_note, openssl_ca, redis_ca, mariadb_ca) = match &acme {
        Some(acme) => (
            format!(
                "the server's certificate comes from the ACME CA {} (trusted through the system's roots)",
                acme.choice.settings.directory
            ),
            String::new(),
            String::new(),
            String::new(),
        ),
        None => (
            format!("CA {ca}"),
            format!(" -CAfile {ca}"),
            format!(" --cacert {ca}"),
            format!(" --ssl-ca={ca}"),
        ),
    };
    let banner = match protocol {
        Protocol::Tls => {
            format!(
                "intransit: listening on {bound_at} (TLS 1.3, client certificate required), forwarding plaintext to {upstream}\n\
                 state directory: {} ({state_note})\n\
                 {admin_line}{audit_line}\
                 \n\
                 Client files: {ca_note}, certificate {cert}, key {key}\n\
                 Check it with:\n  openssl s_client -connect {host}:{port} -servername {server_name} -verify_return_error{openssl_ca} -cert {cert} -key {key}\n\
                 For Redis:\n  redis-cli -h {host} -p {port} --tls --sni {server_name}{redis_ca} --cert {cert} --key {key} PING\n\
                 \n\
                 Press Ctrl-C to stop.\n",
                state_root.display(),
                cert = material.client.cert.display(),
                key = material.client.key.display(),
            )
        }
        Protocol::Mysql => {
            let user = if args.user == "postgres" {
                "root".to_owned()
            } else {
                args.user.clone()
            };
            // The demo's root has no password over the unix socket.
            let password = if demo.is_some() { "" } else { " -p" };
            let refused = match &demo {
                Some(running) => format!(
                    "The demo database itself refuses plaintext:\n  mariadb -h {DEMO_HOST} -P {} -u {user} --skip-ssl\n",
                    running.port
                ),
                None => String::new(),
            };
            format!(
                "intransit: listening on {bound_at} (TLS 1.3, client certificate required), forwarding to {database_kind}MySQL/MariaDB at {upstream}\n\
                 state directory: {} ({state_note})\n\
                 {demo_line}{admin_line}{audit_line}\
                 \n\
                 Connect through it with:\n  mariadb -h {host} -P {port} -u {user}{password} --ssl --ssl-verify-server-cert{mariadb_ca} --ssl-cert={cert} --ssl-key={key}\n\
                 {refused}\
                 \n\
                 Press Ctrl-C to stop{stop_note}.\n",
                state_root.display(),
                cert = material.client.cert.display(),
                key = material.client.key.display(),
            )
        }
        Protocol::Postgres => {
            let refused = match &demo {
                Some(running) => format!(
                    "The demo database itself refuses plaintext:\n  psql \"host={DEMO_HOST} port={} user={} dbname={} sslmode=disable\"\n",
                    running.port,
                    conninfo_value(&args.user),
                    conninfo_value(&args.database),
                ),
                None => String::new(),
            };
            format!(
                "intransit: listening on {bound_at} (TLS 1.3, client certificate required), forwarding to {database_kind}PostgreSQL at {upstream}\n\
                 state directory: {} ({state_note})\n\
                 {demo_line}{admin_line}{audit_line}\
                 \n\
                 Connect through it with:\n  psql \"{conninfo}\"\n\
                 {refused}\
                 \n\
                 Press Ctrl-C to stop{stop_note}.\n",
                state_root.display(),
            )
        }
    };
    // The proxy keeps running whether or not anyone reads the banner: a
    // closed stdout (a supervisor, `| head`) is not a reason to stop.
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(banner.as_bytes());
        let _ = stdout.flush();
    }

    match demo {
        None => crate::serve(bound, signals).await,
        Some(running) => {
            // A second signal exits at once, but not before the database
            // is told to stop.
            let stopper = running.stopper();
            crate::serve_then(bound, signals, move || stopper.stop()).await;
            tokio::task::spawn_blocking(move || running.stop())
                .await
                .context("stopping the demo database")?;
        }
    }
    drop(demo_guard);
    Ok(())
}

/// Stops the demo database when `up` returns early with an error.
struct StopOnDrop(Option<DemoStopper>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(stopper) = self.0.take() {
            stopper.stop();
        }
    }
}

/// The admin server's address as `--admin` asks: `None` for `off`.
fn admin_address(flag: Option<&str>) -> Result<Option<SocketAddr>> {
    let text = match flag {
        Some("off") => return Ok(None),
        Some(text) => text,
        None => DEFAULT_ADMIN,
    };
    match intransit_config::parse_admin_addr(text) {
        Ok(addr) => Ok(Some(addr)),
        Err(AdminAddrError::Syntax(m)) => bail!("--admin: {m}"),
        Err(AdminAddrError::NotLoopback(m)) => {
            let port = text.rsplit(':').next().unwrap_or("8432");
            bail!(
                "--admin: {m}. `intransit up` serves it on loopback only: reach it from another \
                 host through an SSH tunnel (ssh -L {port}:127.0.0.1:{port} THIS-HOST), or run \
                 `intransit proxy` with a configuration file that sets admin and [admin_tls] \
                 (docs/configuration.md, Admin server)"
            )
        }
    }
}

/// Holds a listener's TCP port while the state directory is prepared, so
/// that a port in use stops `up` before it writes anything. A unix socket
/// is left to the proxy's own bind.
fn hold_port(
    listener: &str,
    listen: &Endpoint,
) -> Result<Option<std::net::TcpListener>, ProxyError> {
    let Some(addr) = listen.bind_addr() else {
        return Ok(None);
    };
    std::net::TcpListener::bind(addr)
        .map(Some)
        .map_err(|error| ProxyError::Bind {
            listener: listener.to_owned(),
            endpoint: listen.clone(),
            error,
        })
}

fn lifetime(flag: &str, text: &str) -> Result<time::Duration> {
    let d = intransit_config::parse_duration(text).map_err(|m| anyhow::anyhow!("{flag}: {m}"))?;
    if d < Duration::from_secs(10) {
        bail!("{flag}: {text} is too short; use at least 10s");
    }
    time::Duration::try_from(d).map_err(|_| anyhow::anyhow!("{flag}: {text} is too long"))
}

/// Quotes a libpq connection-string value when it needs it.
fn conninfo_value(v: &str) -> String {
    if !v.is_empty()
        && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\' || c == '"')
    {
        return v.to_owned();
    }
    let escaped = v.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    Ok(cwd.join(path))
}
