//! `intransit up`: the zero-configuration start.
//!
//! Creates (or reuses) a CA, a server certificate and a client certificate
//! in the state directory, builds one PostgreSQL listener with the secure
//! defaults (TLS 1.3, client certificate required), and prints the psql
//! command that connects through it with `sslmode=verify-full`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use intransit_config::{
    AdminLimits, ClientAuth, Config, Endpoint, ListenerConfig, Mode, Protocol, ServerTls,
    TlsVersion, UnauthenticatedLimits, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MYSQL_SERVER_VERSION, DEFAULT_SHUTDOWN_GRACE, DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
};
use intransit_pki::{QuickstartLifetimes, StateDir};
use intransit_policy::{AllowList, DbUserRules};
use intransit_proxy::Proxy;
use tracing::{info, warn};

use crate::cli::{UpArgs, UpProtocol};

pub async fn run(args: UpArgs) -> Result<()> {
    let signals = crate::ShutdownSignals::install()?;
    let hup = crate::watch::install_sighup()?;
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

    let state_root = absolute(&args.state_dir)?;
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
    let lifetimes = QuickstartLifetimes {
        server: lifetime("--server-cert-lifetime", &args.server_cert_lifetime)?,
        client: lifetime("--client-cert-lifetime", &args.client_cert_lifetime)?,
    };
    let material = state
        .ensure_quickstart_with(&dns, &ips, &args.client_name, &lifetimes)
        .with_context(|| format!("preparing certificates in {}", state_root.display()))?;
    if material.created {
        info!(state_dir = %state_root.display(), "created CA and certificates");
    } else {
        info!(state_dir = %state_root.display(), "reusing CA and certificates");
    }

    let listener = ListenerConfig {
        name: protocol.to_string(),
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
        listeners: vec![listener],
        client_listeners: Vec::new(),
    };
    let bound = Proxy::prepare(&config)?.bind().await?;
    let admin_line = start_admin(args.admin.as_deref(), &bound).await?;
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
        crate::renewal::spawn(state.clone(), running, server_tls);
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

    match intransit_proxy::connect_upstream(&upstream, Duration::from_secs(2)).await {
        Ok(_) => info!(upstream = %upstream, "the upstream is reachable"),
        Err(e) => warn!(
            upstream = %upstream,
            error = %e,
            "the upstream is not reachable yet; the proxy is running and refuses clients until it is"
        ),
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
    let conninfo = [
        ("host", host_for_client),
        ("port", port),
        ("user", args.user.clone()),
        ("dbname", args.database.clone()),
        ("sslmode", "verify-full".into()),
        ("sslrootcert", material.ca_cert.display().to_string()),
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
    let banner = match protocol {
        Protocol::Tls => {
            let (host, port) = match &bound_at {
                Endpoint::Tcp { host, port } => (host.clone(), port.to_string()),
                Endpoint::Unix(_) => (String::new(), String::new()),
            };
            format!(
                "intransit: listening on {bound_at} (TLS 1.3, client certificate required), forwarding plaintext to {upstream}\n\
                 state directory: {} ({state_note})\n\
                 {admin_line}{audit_line}\
                 \n\
                 Client files: CA {ca}, certificate {cert}, key {key}\n\
                 Check it with:\n  openssl s_client -connect {host}:{port} -servername localhost -verify_return_error -CAfile {ca} -cert {cert} -key {key}\n\
                 For Redis:\n  redis-cli -h {host} -p {port} --tls --sni localhost --cacert {ca} --cert {cert} --key {key} PING\n\
                 \n\
                 Press Ctrl-C to stop.\n",
                state_root.display(),
                ca = material.ca_cert.display(),
                cert = material.client.cert.display(),
                key = material.client.key.display(),
            )
        }
        Protocol::Mysql => {
            let (host, port) = match &bound_at {
                Endpoint::Tcp { host, port } => (host.clone(), port.to_string()),
                Endpoint::Unix(_) => (String::new(), String::new()),
            };
            let user = if args.user == "postgres" { "root".to_owned() } else { args.user.clone() };
            format!(
                "intransit: listening on {bound_at} (TLS 1.3, client certificate required), forwarding to MySQL/MariaDB at {upstream}\n\
                 state directory: {} ({state_note})\n\
                 {admin_line}{audit_line}\
                 \n\
                 Connect through it with:\n  mariadb -h {host} -P {port} -u {user} -p --ssl --ssl-verify-server-cert --ssl-ca={ca} --ssl-cert={cert} --ssl-key={key}\n\
                 \n\
                 Press Ctrl-C to stop.\n",
                state_root.display(),
                ca = material.ca_cert.display(),
                cert = material.client.cert.display(),
                key = material.client.key.display(),
            )
        }
        Protocol::Postgres => format!(
            "intransit: listening on {bound_at} (TLS 1.3, client certificate required), forwarding to PostgreSQL at {upstream}\n\
             state directory: {} ({state_note})\n\
                 {admin_line}{audit_line}\
             \n\
             Connect through it with:\n  psql \"{conninfo}\"\n\
             \n\
             Press Ctrl-C to stop.\n",
            state_root.display(),
        ),
    };
    // The proxy keeps running whether or not anyone reads the banner: a
    // closed stdout (a supervisor, `| head`) is not a reason to stop.
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(banner.as_bytes());
        let _ = stdout.flush();
    }

    crate::serve(bound, signals).await;
    Ok(())
}

/// Starts the admin server as `--admin` asks and returns the banner line
/// that says where it is. Only the default address may be skipped when it is
/// taken; an address the user chose must work.
async fn start_admin(flag: Option<&str>, bound: &intransit_proxy::BoundProxy) -> Result<String> {
    const DEFAULT_ADMIN: &str = "127.0.0.1:9090";
    let text = match flag {
        Some("off") => return Ok(String::new()),
        Some(text) => text,
        None => DEFAULT_ADMIN,
    };
    let addr =
        intransit_config::parse_admin_addr(text).map_err(|m| anyhow::anyhow!("--admin: {m}"))?;
    match crate::admin::start(addr, None, AdminLimits::default(), bound).await {
        Ok(local) => Ok(format!(
            "status page: http://{local}/ (Prometheus metrics at /metrics)\n"
        )),
        Err(e) if flag.is_none() => {
            warn!(
                error = format!("{e:#}"),
                "starting without the admin server; choose another address with --admin"
            );
            Ok(String::new())
        }
        Err(e) => Err(e),
    }
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
