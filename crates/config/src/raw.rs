//! The TOML shape as written, and its validation into [`crate::Config`].
//!
//! Unknown keys are refused (`deny_unknown_fields`) so a typo never silently
//! weakens a policy. Keys that the configuration shape reserves for features
//! this build does not have yet are accepted by the parser and then refused
//! by validation with a message that says so, rather than ignored.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::pool::{resolve_cert_authority, RawPool};
use crate::upstream_tls::{RawUpstreamTls, UpstreamTls};
use crate::{
    build_allow_list, build_db_user_rules, err, parse_duration, AdminLimits, ClientAuth,
    ClientListenerConfig, Config, ConfigError, Endpoint, ListenerConfig, Mode, Protocol,
    RouteConfig, ServerNamePattern, ServerTls, StaleCrl, TlsVersion, UnauthenticatedLimits,
    DEFAULT_ADMIN_HEADER_READ_TIMEOUT, DEFAULT_ADMIN_IDLE_TIMEOUT, DEFAULT_ADMIN_MAX_CONNECTIONS,
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_UNAUTHENTICATED,
    DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS, DEFAULT_MYSQL_SERVER_VERSION, DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    state_dir: Option<PathBuf>,
    admin: Option<String>,
    admin_tls: Option<RawServerTls>,
    audit_log: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    shutdown_grace: Option<String>,
    worker_threads: Option<i64>,
    admin_header_read_timeout: Option<String>,
    admin_idle_timeout: Option<String>,
    admin_max_connections: Option<i64>,
    #[serde(default)]
    listener: Vec<RawListener>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Option<String>,
    mode: Option<String>,
    protocol: Option<String>,
    listen: Option<String>,
    upstream: Option<String>,
    tls: Option<RawServerTls>,
    #[serde(default)]
    db_users: Vec<RawDbUser>,
    upstream_tls: Option<RawUpstreamTls>,
    #[serde(default)]
    route: Vec<RawRoute>,
    require_sni_match: Option<bool>,
    handshake_timeout: Option<String>,
    upstream_connect_timeout: Option<String>,
    max_connections: Option<i64>,
    max_unauthenticated: Option<i64>,
    max_unauthenticated_per_address: Option<i64>,
    allow_remote_plaintext: Option<bool>,
    mysql_server_version: Option<String>,
    pool: Option<RawPool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    crl: Option<PathBuf>,
    stale_crl: Option<String>,
    min_version: Option<String>,
    client_auth: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    server_name: Option<String>,
    upstream: Option<String>,
    tls: Option<RawServerTls>,
    #[serde(default)]
    db_users: Vec<RawDbUser>,
    upstream_tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDbUser {
    pub(crate) identity: Option<String>,
    pub(crate) users: Option<Vec<String>>,
    pub(crate) identity_regex: Option<String>,
    pub(crate) user: Option<String>,
}

impl RawConfig {
    pub(crate) fn validate(self) -> Result<Config, ConfigError> {
        let admin_tls = self
            .admin_tls
            .map(|t| t.validate("admin_tls"))
            .transpose()?;
        let admin = match (self.admin.as_deref(), &admin_tls) {
            (None, Some(_)) => {
                return Err(err(
                    "admin_tls",
                    "there is no admin server to protect; set admin = \"HOST:PORT\" too",
                ))
            }
            (None, None) => None,
            // With TLS of its own the admin server may listen anywhere.
            (Some(text), Some(_)) => Some(text.parse().map_err(|_| {
                err(
                    "admin",
                    format!("{text:?} is not an IP address and port, e.g. \"0.0.0.0:9443\""),
                )
            })?),
            (Some(text), None) => Some(parse_admin_addr(text).map_err(|e| match e {
                AdminAddrError::Syntax(m) => err("admin", m),
                AdminAddrError::NotLoopback(m) => err(
                    "admin",
                    format!(
                        "{m} (add [admin_tls] with a certificate, and client_ca for mutual \
                         TLS, to listen elsewhere)"
                    ),
                ),
            })?),
        };
        let shutdown_grace = match &self.shutdown_grace {
            Some(s) => parse_duration(s).map_err(|m| err("shutdown_grace", m))?,
            None => DEFAULT_SHUTDOWN_GRACE,
        };
        let worker_threads = match self.worker_threads {
            None => None,
            Some(n) if (0..=1024).contains(&n) => Some(n as usize),
            Some(n) => {
                return Err(err(
                    "worker_threads",
                    format!(
                        "{n} is out of range; use 0 (connections on the shared runtime) to 1024"
                    ),
                ))
            }
        };
        let admin_limits = AdminLimits {
            header_read_timeout: positive_duration(
                "admin_header_read_timeout",
                self.admin_header_read_timeout.as_deref(),
                DEFAULT_ADMIN_HEADER_READ_TIMEOUT,
            )?,
            idle_timeout: positive_duration(
                "admin_idle_timeout",
                self.admin_idle_timeout.as_deref(),
                DEFAULT_ADMIN_IDLE_TIMEOUT,
            )?,
            max_connections: count(
                "admin_max_connections",
                self.admin_max_connections,
                DEFAULT_ADMIN_MAX_CONNECTIONS,
                100_000,
            )?,
        };
        if self.listener.is_empty() {
            return Err(err(
                "listener",
                "no [[listener]] defined; add at least one with listen, upstream and [listener.tls]",
            ));
        }
        let mut listeners = Vec::with_capacity(self.listener.len());
        let mut client_listeners = Vec::new();
        // Names and addresses are unique across both modes, in file order.
        let mut seen: Vec<(String, Endpoint)> = Vec::with_capacity(self.listener.len());
        for (i, l) in self.listener.into_iter().enumerate() {
            let (name, listen) = if l.mode.as_deref() == Some("client") {
                let c = l.validate_client(i)?;
                let named = (c.name.clone(), c.listen.clone());
                client_listeners.push(c);
                named
            } else {
                let mut s = l.validate(i)?;
                if let Some(pool) = &mut s.pool {
                    resolve_cert_authority(
                        &format!("listener[{i}].pool"),
                        pool,
                        self.state_dir.as_ref(),
                    )?;
                }
                let named = (s.name.clone(), s.listen.clone());
                listeners.push(s);
                named
            };
            for (other_name, other_listen) in &seen {
                if name == *other_name {
                    return Err(err(
                        format!("listener[{i}].name"),
                        format!("{name:?} is used by two listeners; names must be unique"),
                    ));
                }
                // Port 0 asks the system for a free port each time, so two
                // listeners on port 0 never collide.
                let ephemeral = matches!(listen, Endpoint::Tcp { port: 0, .. });
                if listen == *other_listen && !ephemeral {
                    return Err(err(
                        format!("listener[{i}].listen"),
                        format!("{listen} is already used by listener {other_name:?}"),
                    ));
                }
            }
            seen.push((name, listen));
        }
        Ok(Config {
            state_dir: self.state_dir,
            admin,
            admin_tls,
            admin_limits,
            audit_log: self.audit_log,
            pid_file: self.pid_file,
            shutdown_grace,
            worker_threads,
            listeners,
            client_listeners,
        })
    }
}

impl RawListener {
    fn validate(self, index: usize) -> Result<ListenerConfig, ConfigError> {
        let k = format!("listener[{index}]");
        let name = listener_name(&k, index, self.name)?;
        let mode = match self.mode.as_deref() {
            None | Some("server") => Mode::Server,
            Some(other) => {
                return Err(err(
                    format!("{k}.mode"),
                    format!("{other:?} is not a mode; use \"server\" or \"client\""),
                ))
            }
        };
        let protocol = listener_protocol(&k, self.protocol.as_deref())?;
        let listen = listen_endpoint(&k, self.listen)?;
        let upstream = upstream_endpoint(&k, self.upstream)?;
        let upstream_tls = match self.upstream_tls {
            Some(t) => t.validate(&format!("{k}.upstream_tls"), &upstream)?,
            None => None,
        };
        check_direct(
            &format!("{k}.upstream_tls"),
            upstream_tls.as_ref(),
            protocol,
        )?;
        if self.allow_remote_plaintext.is_some() {
            return Err(err(
                format!("{k}.allow_remote_plaintext"),
                "only a mode = \"client\" listener accepts plaintext; a server-mode listener requires TLS from every client, so remove this key",
            ));
        }

        let tls = self
            .tls
            .ok_or_else(|| {
                err(
                    format!("{k}.tls"),
                    "missing [listener.tls] with cert and key",
                )
            })?
            .validate(&format!("{k}.tls"))?;
        let db_users = build_db_user_rules(&format!("{k}.db_users"), &self.db_users)?;
        if protocol == Protocol::Tls && !db_users.is_empty() {
            return Err(err(
                format!("{k}.db_users"),
                "protocol \"tls\" carries no database user to check; remove db_users or use protocol \"postgres\"",
            ));
        }
        if tls.client_auth == ClientAuth::None && !db_users.is_empty() {
            return Err(err(
                format!("{k}.db_users"),
                "db_users maps certificate identities, but tls.client_auth = \"none\" asks for no certificate; set client_auth = \"required\"",
            ));
        }
        let Limits {
            handshake_timeout,
            upstream_connect_timeout,
            max_connections,
        } = Limits::validate(
            &k,
            self.handshake_timeout.as_deref(),
            self.upstream_connect_timeout.as_deref(),
            self.max_connections,
        )?;
        let unauthenticated = UnauthenticatedLimits {
            max: count(
                &format!("{k}.max_unauthenticated"),
                self.max_unauthenticated,
                DEFAULT_MAX_UNAUTHENTICATED,
                1_000_000,
            )?,
            per_address: count(
                &format!("{k}.max_unauthenticated_per_address"),
                self.max_unauthenticated_per_address,
                DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS,
                1_000_000,
            )?,
        };
        let mut routes = Vec::with_capacity(self.route.len());
        for (i, r) in self.route.into_iter().enumerate() {
            let rk = format!("{k}.route[{i}]");
            let route = r.validate(
                &rk,
                &upstream,
                upstream_tls.as_ref(),
                &tls,
                &db_users,
                protocol,
            )?;
            if let Some(earlier) = routes
                .iter()
                .position(|e: &RouteConfig| e.server_name == route.server_name)
            {
                return Err(err(
                    format!("{rk}.server_name"),
                    format!(
                        "{} is already the server_name of {k}.route[{earlier}]",
                        route.server_name
                    ),
                ));
            }
            routes.push(route);
        }
        if protocol == Protocol::Mysql && !routes.is_empty() {
            return Err(err(
                format!("{k}.route"),
                "SNI routes are not available for mysql listeners: the server greets the client (with the scramble its password answer depends on) before the client sends a server name; use one listener per MySQL server",
            ));
        }
        let mysql_server_version = mysql_server_version(&k, protocol, self.mysql_server_version)?;
        let pool = match self.pool {
            Some(p) => Some(p.validate(
                &format!("{k}.pool"),
                protocol,
                upstream_tls.as_ref(),
                !routes.is_empty(),
            )?),
            None => None,
        };
        let require_sni_match = self.require_sni_match.unwrap_or(false);
        if require_sni_match && routes.is_empty() {
            return Err(err(
                format!("{k}.require_sni_match"),
                "needs at least one [[listener.route]] for a server name to match",
            ));
        }
        Ok(ListenerConfig {
            name,
            mode,
            protocol,
            listen,
            upstream,
            upstream_tls,
            tls,
            db_users,
            routes,
            require_sni_match,
            handshake_timeout,
            upstream_connect_timeout,
            max_connections,
            mysql_server_version,
            unauthenticated,
            pool,
        })
    }
}

/// The version string a MySQL listener greets clients with: the key is
/// for MySQL listeners only, and the string must be printable ASCII a
/// client can show.
fn mysql_server_version(
    k: &str,
    protocol: Protocol,
    value: Option<String>,
) -> Result<String, ConfigError> {
    let key = format!("{k}.mysql_server_version");
    match value {
        None => Ok(DEFAULT_MYSQL_SERVER_VERSION.to_owned()),
        Some(_) if protocol != Protocol::Mysql => Err(err(
            key,
            "only a protocol = \"mysql\" listener sends a greeting with a server version; remove this key",
        )),
        Some(v) if v.is_empty() || v.len() > 60 || !v.bytes().all(|b| b.is_ascii_graphic()) => {
            Err(err(
                key,
                format!("{v:?} is not a usable version string: use 1 to 60 printable ASCII characters without spaces, such as \"8.0.36\" or \"5.5.5-10.11.6-MariaDB\""),
            ))
        }
        Some(v) => Ok(v),
    }
}

impl RawListener {
    /// Validates a `mode = "client"` listener: plaintext in from local
    /// applications, TLS out. Keys that only make sense with client-facing
    /// TLS are refused with what to do instead.
    fn validate_client(self, index: usize) -> Result<ClientListenerConfig, ConfigError> {
        let k = format!("listener[{index}]");
        let name = listener_name(&k, index, self.name)?;
        let protocol = listener_protocol(&k, self.protocol.as_deref())?;
        if self.tls.is_some() {
            return Err(err(
                format!("{k}.tls"),
                "a client-mode listener has no [listener.tls]: applications connect to it in plaintext, and the certificate it presents to the database goes in [listener.upstream_tls] as cert and key; move it there, or use mode = \"server\" to accept TLS clients",
            ));
        }
        if !self.db_users.is_empty() {
            return Err(err(
                format!("{k}.db_users"),
                "db_users maps client certificate identities to database users, and applications reach a client-mode listener in plaintext without a certificate; remove db_users (the database checks the user it sees)",
            ));
        }
        if !self.route.is_empty() {
            return Err(err(
                format!("{k}.route"),
                "SNI routes choose by the server name a TLS client sends, and applications reach a client-mode listener in plaintext; use one client-mode listener per upstream",
            ));
        }
        if self.pool.is_some() {
            return Err(err(
                format!("{k}.pool"),
                "a pool shares server connections among verified clients of a server-mode listener; a client-mode listener carries each application's own session, so remove [listener.pool]",
            ));
        }
        if self.mysql_server_version.is_some() {
            return Err(err(
                format!("{k}.mysql_server_version"),
                "a client-mode listener passes the database's own greeting to local applications; remove this key",
            ));
        }
        if self.require_sni_match.is_some() {
            return Err(err(
                format!("{k}.require_sni_match"),
                "a client-mode listener receives no TLS server name to match; remove this key",
            ));
        }
        for (key, set) in [
            ("max_unauthenticated", self.max_unauthenticated.is_some()),
            (
                "max_unauthenticated_per_address",
                self.max_unauthenticated_per_address.is_some(),
            ),
        ] {
            if set {
                return Err(err(
                    format!("{k}.{key}"),
                    "applications reach a client-mode listener in plaintext without a certificate, so no connection of it is ever authenticated by the proxy and max_connections is its only limit; remove this key",
                ));
            }
        }
        let listen = listen_endpoint(&k, self.listen)?;
        let allow_remote_plaintext = self.allow_remote_plaintext.unwrap_or(false);
        if !allow_remote_plaintext && !listen_is_local(&listen) {
            return Err(err(
                format!("{k}.listen"),
                format!("{listen} is not a loopback address; a client-mode listener accepts plaintext (passwords, queries, results), so it listens on 127.0.0.1, [::1] or a unix socket. To accept plaintext from other hosts anyway, on a network you trust as much as loopback, set allow_remote_plaintext = true"),
            ));
        }
        let upstream = upstream_endpoint(&k, self.upstream)?;
        let ut = format!("{k}.upstream_tls");
        let Some(raw_tls) = self.upstream_tls else {
            return Err(err(
                ut,
                "missing; a client-mode listener exists to encrypt the leg to the database: add [listener.upstream_tls] with ca (the CA that signs the database's certificate) and, for mutual TLS, the cert and key the proxy presents",
            ));
        };
        let Some(upstream_tls) = raw_tls.validate(&ut, &upstream)? else {
            return Err(err(
                format!("{ut}.mode"),
                "\"disable\" would forward the applications' plaintext to the database; a client-mode listener always encrypts its upstream leg (use \"verify-full\", the default, \"verify-ca\", \"pinned\" or \"require\")",
            ));
        };
        check_direct(&ut, Some(&upstream_tls), protocol)?;
        let Limits {
            handshake_timeout,
            upstream_connect_timeout,
            max_connections,
        } = Limits::validate(
            &k,
            self.handshake_timeout.as_deref(),
            self.upstream_connect_timeout.as_deref(),
            self.max_connections,
        )?;
        Ok(ClientListenerConfig {
            name,
            protocol,
            listen,
            allow_remote_plaintext,
            upstream,
            upstream_tls,
            handshake_timeout,
            upstream_connect_timeout,
            max_connections,
        })
    }
}

fn listener_name(k: &str, index: usize, name: Option<String>) -> Result<String, ConfigError> {
    let name = name.unwrap_or_else(|| format!("listener-{index}"));
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(err(
            format!("{k}.name"),
            format!("{name:?} must be non-empty and use only letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(name)
}

fn listener_protocol(k: &str, protocol: Option<&str>) -> Result<Protocol, ConfigError> {
    match protocol {
        None | Some("postgres") => Ok(Protocol::Postgres),
        Some("tls") => Ok(Protocol::Tls),
        Some("mysql") => Ok(Protocol::Mysql),
        Some(other) => Err(err(
            format!("{k}.protocol"),
            format!("{other:?} is not a protocol; use \"postgres\", \"mysql\" or \"tls\""),
        )),
    }
}

fn listen_endpoint(k: &str, listen: Option<String>) -> Result<Endpoint, ConfigError> {
    let listen_text = listen.ok_or_else(|| {
        err(
            format!("{k}.listen"),
            "missing; e.g. listen = \"127.0.0.1:6432\"",
        )
    })?;
    let listen = Endpoint::parse(&listen_text).map_err(|m| err(format!("{k}.listen"), m))?;
    if let Endpoint::Tcp { .. } = &listen {
        if listen.bind_addr().is_none() {
            return Err(err(
                format!("{k}.listen"),
                format!("{listen_text:?}: a listener binds an IP address (e.g. 0.0.0.0:6432 or 127.0.0.1:6432), not a host name"),
            ));
        }
    }
    Ok(listen)
}

/// Whether only this host can reach `listen`: a loopback address
/// (127.0.0.0/8, ::1, also IPv4-mapped) or a unix socket.
fn listen_is_local(listen: &Endpoint) -> bool {
    match listen {
        Endpoint::Unix(_) => true,
        Endpoint::Tcp { .. } => listen
            .bind_addr()
            .is_some_and(|a| a.ip().to_canonical().is_loopback()),
    }
}

fn upstream_endpoint(k: &str, upstream: Option<String>) -> Result<Endpoint, ConfigError> {
    let upstream_text = upstream.ok_or_else(|| {
        err(
            format!("{k}.upstream"),
            "missing; e.g. upstream = \"127.0.0.1:5432\" or \"unix:/run/postgresql/.s.PGSQL.5432\"",
        )
    })?;
    Endpoint::parse(&upstream_text).map_err(|m| err(format!("{k}.upstream"), m))
}

/// `upstream_tls.direct` is PostgreSQL's: MySQL asks for TLS inside its
/// handshake, and a `tls` listener's upstream leg is TLS from the first
/// byte already.
fn check_direct(
    k: &str,
    upstream_tls: Option<&UpstreamTls>,
    protocol: Protocol,
) -> Result<(), ConfigError> {
    match (upstream_tls, protocol) {
        (Some(t), Protocol::Mysql) if t.direct => Err(err(
            format!("{k}.direct"),
            "direct TLS is PostgreSQL's (version 17 and later); MySQL and MariaDB ask for TLS inside their handshake, so remove direct",
        )),
        (Some(t), Protocol::Tls) if t.direct => Err(err(
            format!("{k}.direct"),
            "a protocol = \"tls\" upstream leg is TLS from the first byte already; remove direct",
        )),
        _ => Ok(()),
    }
}

/// The timeouts and the connection cap every listener has.
struct Limits {
    handshake_timeout: std::time::Duration,
    upstream_connect_timeout: std::time::Duration,
    max_connections: usize,
}

impl Limits {
    fn validate(
        k: &str,
        handshake_timeout: Option<&str>,
        upstream_connect_timeout: Option<&str>,
        max_connections: Option<i64>,
    ) -> Result<Self, ConfigError> {
        let handshake_timeout = match handshake_timeout {
            Some(s) => parse_duration(s).map_err(|m| err(format!("{k}.handshake_timeout"), m))?,
            None => DEFAULT_HANDSHAKE_TIMEOUT,
        };
        if handshake_timeout.is_zero() {
            return Err(err(
                format!("{k}.handshake_timeout"),
                "must be greater than zero",
            ));
        }
        let upstream_connect_timeout = match upstream_connect_timeout {
            Some(s) => {
                parse_duration(s).map_err(|m| err(format!("{k}.upstream_connect_timeout"), m))?
            }
            None => DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
        };
        let max_connections = match max_connections {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) if (1..=1_000_000).contains(&n) => n as usize,
            Some(n) => {
                return Err(err(
                    format!("{k}.max_connections"),
                    format!("{n} is out of range; use 1 to 1000000"),
                ))
            }
        };
        Ok(Limits {
            handshake_timeout,
            upstream_connect_timeout,
            max_connections,
        })
    }
}

/// A duration key that must be greater than zero.
fn positive_duration(
    key: &str,
    text: Option<&str>,
    default: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    let duration = match text {
        Some(s) => parse_duration(s).map_err(|m| err(key, m))?,
        None => default,
    };
    if duration.is_zero() {
        return Err(err(key, "must be greater than zero"));
    }
    Ok(duration)
}

/// A count key between 1 and `max`.
fn count(key: &str, value: Option<i64>, default: usize, max: i64) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n as usize),
        Some(n) => Err(err(key, format!("{n} is out of range; use 1 to {max}"))),
    }
}

impl RawRoute {
    fn validate(
        self,
        k: &str,
        listener_upstream: &Endpoint,
        listener_upstream_tls: Option<&UpstreamTls>,
        listener_tls: &ServerTls,
        listener_db_users: &intransit_policy::DbUserRules,
        protocol: Protocol,
    ) -> Result<RouteConfig, ConfigError> {
        let name = self.server_name.ok_or_else(|| {
            err(
                format!("{k}.server_name"),
                "missing; the TLS server name this route answers, e.g. \"orders.db.internal\" or \"*.db.internal\"",
            )
        })?;
        let server_name =
            ServerNamePattern::parse(&name).map_err(|m| err(format!("{k}.server_name"), m))?;
        let upstream = match &self.upstream {
            Some(u) => Endpoint::parse(u).map_err(|m| err(format!("{k}.upstream"), m))?,
            None => listener_upstream.clone(),
        };
        // A route without its own table encrypts like its listener; a name
        // derived from the listener's upstream is derived again from the
        // route's.
        let upstream_tls = match (self.upstream_tls, listener_upstream_tls) {
            (Some(t), _) => t.validate(&format!("{k}.upstream_tls"), &upstream)?,
            (None, Some(inherited)) => {
                Some(inherited.for_upstream(&format!("{k}.upstream_tls"), &upstream)?)
            }
            (None, None) => None,
        };
        check_direct(
            &format!("{k}.upstream_tls"),
            upstream_tls.as_ref(),
            protocol,
        )?;
        let tls = self
            .tls
            .ok_or_else(|| {
                err(
                    format!("{k}.tls"),
                    "missing; a route needs its own certificate: tls = { cert = \"...\", key = \"...\" }",
                )
            })?
            .validate_with_parent(&format!("{k}.tls"), Some(listener_tls))?;
        let db_users = if self.db_users.is_empty() {
            listener_db_users.clone()
        } else {
            if protocol == Protocol::Tls {
                return Err(err(
                    format!("{k}.db_users"),
                    "protocol \"tls\" carries no database user to check; remove db_users",
                ));
            }
            build_db_user_rules(&format!("{k}.db_users"), &self.db_users)?
        };
        if tls.client_auth == ClientAuth::None && !db_users.is_empty() {
            return Err(err(
                format!("{k}.tls.client_auth"),
                "db_users maps certificate identities, but client_auth = \"none\" asks for no certificate",
            ));
        }
        Ok(RouteConfig {
            server_name,
            upstream,
            upstream_tls,
            tls,
            db_users,
        })
    }
}

impl RawServerTls {
    fn validate(self, k: &str) -> Result<ServerTls, ConfigError> {
        self.validate_with_parent(k, None)
    }

    /// Validates a `tls` table; keys a route leaves out are taken from the
    /// listener's (`parent`), except the certificate and key.
    fn validate_with_parent(
        self,
        k: &str,
        parent: Option<&ServerTls>,
    ) -> Result<ServerTls, ConfigError> {
        let cert = self.cert.ok_or_else(|| {
            err(
                format!("{k}.cert"),
                "missing; the server certificate chain (PEM), leaf first",
            )
        })?;
        let key = self
            .key
            .ok_or_else(|| err(format!("{k}.key"), "missing; the server private key (PEM)"))?;
        let min_version = match self.min_version.as_deref() {
            None if parent.is_some() => parent.map_or(TlsVersion::V1_3, |p| p.min_version),
            None | Some("1.3") => TlsVersion::V1_3,
            Some("1.2") => TlsVersion::V1_2,
            Some(other) => {
                return Err(err(
                    format!("{k}.min_version"),
                    format!("{other:?} is not supported; use \"1.3\" (default) or \"1.2\""),
                ))
            }
        };
        let client_auth = match self.client_auth.as_deref() {
            None if parent.is_some() => parent.map_or(ClientAuth::Required, |p| p.client_auth),
            None | Some("required") => ClientAuth::Required,
            Some("optional") => ClientAuth::Optional,
            Some("none") => ClientAuth::None,
            Some(other) => {
                return Err(err(
                    format!("{k}.client_auth"),
                    format!(
                    "{other:?} is not valid; use \"required\" (default), \"optional\" or \"none\""
                ),
                ))
            }
        };
        let client_ca = self
            .client_ca
            .or_else(|| parent.and_then(|p| p.client_ca.clone()));
        // A route that turns client certificates off inherits no CRL.
        let crl = match client_auth {
            ClientAuth::None => self.crl,
            _ => self.crl.or_else(|| parent.and_then(|p| p.crl.clone())),
        };
        if client_auth != ClientAuth::None && client_ca.is_none() {
            return Err(err(
                format!("{k}.client_ca"),
                format!("missing; client_auth = \"{client_auth}\" needs the CA that signs client certificates (or set client_auth = \"none\")"),
            ));
        }
        if client_auth == ClientAuth::None && crl.is_some() {
            return Err(err(
                format!("{k}.crl"),
                "a CRL revokes client certificates, but client_auth = \"none\" asks for none",
            ));
        }
        let stale_crl = match self.stale_crl.as_deref() {
            None => parent.map_or(StaleCrl::Refuse, |p| p.stale_crl),
            Some("refuse") => StaleCrl::Refuse,
            Some("allow") => StaleCrl::Allow,
            Some(other) => {
                return Err(err(
                    format!("{k}.stale_crl"),
                    format!("{other:?} is not valid; use \"refuse\" (default: a client certificate whose CA's CRL is past its nextUpdate is refused) or \"allow\" (admitted, with a warning)"),
                ))
            }
        };
        if self.stale_crl.is_some() && crl.is_none() {
            return Err(err(
                format!("{k}.stale_crl"),
                "says what to do once the CRL in crl is past its nextUpdate, but there is no crl; set crl too, or remove stale_crl",
            ));
        }
        let allow = match parent {
            Some(p) if self.allow.is_empty() => p.allow.clone(),
            _ => build_allow_list(&format!("{k}.allow"), &self.allow)?,
        };
        if client_auth == ClientAuth::None && !allow.is_empty() {
            return Err(err(
                format!("{k}.allow"),
                "an allow-list names certificate identities, but client_auth = \"none\" asks for no certificate",
            ));
        }
        Ok(ServerTls {
            cert,
            key,
            client_ca,
            crl,
            stale_crl,
            min_version,
            client_auth,
            allow,
        })
    }
}

/// Why an admin address without TLS was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddrError {
    /// Not an IP address and port; the text says so.
    Syntax(String),
    /// An address other hosts could reach; the text says why that is
    /// refused but not how to fix it, which depends on the command.
    NotLoopback(String),
}

impl fmt::Display for AdminAddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminAddrError::Syntax(m) | AdminAddrError::NotLoopback(m) => f.write_str(m),
        }
    }
}

/// The admin server's address without `[admin_tls]`: an IP and port on
/// loopback, since plain HTTP must not be reachable from elsewhere.
pub fn parse_admin_addr(text: &str) -> Result<std::net::SocketAddr, AdminAddrError> {
    let addr: std::net::SocketAddr = text.parse().map_err(|_| {
        AdminAddrError::Syntax(format!(
            "{text:?} is not an IP address and port, e.g. \"127.0.0.1:8432\""
        ))
    })?;
    if !addr.ip().is_loopback() {
        return Err(AdminAddrError::NotLoopback(format!(
            "{addr} is not a loopback address; without TLS the admin server speaks plain \
             HTTP, so it listens on 127.0.0.1 or [::1] only"
        )));
    }
    Ok(addr)
}
