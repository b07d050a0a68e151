//! The configuration model: TOML in, a validated [`Config`] out.
//!
//! This crate owns the shape of `intransit.toml` (see `docs/configuration.md`)
//! and every rule about which combinations of keys make sense. Parsing and
//! validation are complete before anything binds a socket: an invalid file is
//! refused with a [`ConfigError`] that names the key and says how to fix it.
//! It never touches the network, and it does not read the certificate files
//! it names (the proxy loads and checks those when it builds its TLS state).

mod duration;
#[doc(hidden)]
pub mod fuzzing;
mod pool;
mod raw;
mod upstream_tls;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use intransit_policy::{AllowList, DbUserRule, DbUserRules, IdentityPattern};

pub use duration::parse_duration;
pub use pool::{
    PoolConfig, PoolMode, PoolPeer, PoolUser, ServerAuth, DEFAULT_MAX_PREPARED_STATEMENTS,
    DEFAULT_MINTED_CERT_LIFETIME, DEFAULT_POOL_SIZE, DEFAULT_POOL_WAIT_TIMEOUT,
    DEFAULT_RESET_QUERY, DEFAULT_SERVER_IDLE_TIMEOUT, DEFAULT_SERVER_LIFETIME,
    DEFAULT_SERVER_LOGIN_TIMEOUT,
};
pub use raw::{parse_admin_addr, AdminAddrError};
pub use upstream_tls::{SpkiPin, UpstreamServerName, UpstreamTls, UpstreamTlsMode};

/// Default handshake timeout: from accept to the StartupMessage forwarded.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on concurrent connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The server version a MySQL listener's own greeting announces unless
/// `mysql_server_version` says otherwise. It names no real server: the
/// proxy greets clients before it has verified them, and so before it
/// connects to the database.
pub const DEFAULT_MYSQL_SERVER_VERSION: &str = "8.0.0-intransit";
/// Default cap on a server-mode listener's connections that have not yet
/// finished the TLS handshake with a verified client certificate.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 512;
/// Default cap on those connections from one source address (one IPv4
/// address, one IPv6 /64).
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 64;
/// Default time the admin server gives a request, from its first byte
/// until the server answers.
pub const DEFAULT_ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time an admin connection may stay without a byte moving
/// either way (a kept-alive connection waiting for its next request).
pub const DEFAULT_ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap on concurrent admin connections.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 128;
/// Default time to wait for an upstream TCP connection.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time connections get to finish after SIGTERM before they are cut.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A configuration error, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `listener[0].tls.min_version`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the CA and issued certificates live.
    pub state_dir: Option<PathBuf>,
    /// The admin server (metrics, health, status); loopback only unless
    /// `admin_tls` is set.
    pub admin: Option<SocketAddr>,
    /// TLS (and client certificates) for the admin server.
    pub admin_tls: Option<ServerTls>,
    /// Timeouts and the connection cap of the admin server.
    pub admin_limits: AdminLimits,
    /// Where audit events are appended as JSON lines (they always go to
    /// the log too).
    pub audit_log: Option<PathBuf>,
    /// Where `intransit proxy` writes its process id (for `intransit
    /// reload`); `--pid-file` overrides it.
    pub pid_file: Option<PathBuf>,
    /// How long connections may finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Threads that serve connections, each with its own single-threaded
    /// runtime; `None` is one per CPU, `Some(0)` serves them on the
    /// shared runtime.
    pub worker_threads: Option<usize>,
    /// The server-mode listeners, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// The client-mode listeners (`mode = "client"`), in file order: plaintext
    /// from local applications in, TLS to the database out.
    pub client_listeners: Vec<ClientListenerConfig>,
}

/// How long admin connections may take and how many may be open, the
/// same with and without `[admin_tls]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// From the first byte of a request (or of the TLS handshake) until
    /// the server answers: bounds a request sent in pieces.
    pub header_read_timeout: Duration,
    /// Without a byte moving either way: bounds an idle kept-alive
    /// connection and a client that stops reading.
    pub idle_timeout: Duration,
    /// Concurrent connections; the excess is closed at accept.
    pub max_connections: usize,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            header_read_timeout: DEFAULT_ADMIN_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_ADMIN_IDLE_TIMEOUT,
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
        }
    }
}

/// The limits on a server-mode listener's connections before the TLS
/// handshake has verified the client: they are counted apart from
/// `max_connections`, so sockets that never authenticate cannot take the
/// slots of clients that do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnauthenticatedLimits {
    /// Concurrent unauthenticated connections on the listener.
    pub max: usize,
    /// Concurrent unauthenticated connections from one source address
    /// (an IPv4 address, an IPv6 /64).
    pub per_address: usize,
}

impl Default for UnauthenticatedLimits {
    fn default() -> Self {
        UnauthenticatedLimits {
            max: DEFAULT_MAX_UNAUTHENTICATED,
            per_address: DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS,
        }
    }
}

/// Which database protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// PostgreSQL: SSLRequest, GSSENCRequest and direct TLS.
    Postgres,
    /// MySQL and MariaDB: CLIENT_SSL in the handshake.
    Mysql,
    /// TLS from the first byte.
    Tls,
}

impl Protocol {
    /// The configuration name, also used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Tls => "tls",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way a listener terminates TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Clients speak TLS to the listener; the proxy forwards to the database.
    Server,
    /// Clients speak plaintext on loopback; the proxy opens TLS upstream.
    Client,
}

impl Mode {
    /// The configuration name, also used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Server => "server",
            Mode::Client => "client",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a listener binds or an upstream lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address. The host may be a name (resolved at connect time) for
    /// upstreams; listeners need an IP address.
    Tcp {
        /// Host name or IP address, without brackets.
        host: String,
        /// Port number.
        port: u16,
    },
    /// A unix domain socket path (`unix:/run/postgresql/.s.PGSQL.5432`).
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses `host:port`, `[v6]:port` or `unix:/path`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(
                    "unix: needs a socket path, e.g. unix:/run/postgresql/.s.PGSQL.5432".into(),
                );
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Endpoint::Tcp {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!(
                "{text:?} has no port; write host:port (e.g. 127.0.0.1:5432) or unix:/path"
            ));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{port:?} in {text:?} is not a port number"))?;
        // An IPv6 address goes in brackets: without them "::1:5432" is an
        // address of its own, and a half-bracketed host is a typo.
        let host = match host.strip_prefix('[').map(|h| h.strip_suffix(']')) {
            Some(Some(inner)) => inner,
            None if !host.contains([':', '[', ']']) => host,
            _ => {
                return Err(format!(
                    "{text:?} is not a valid host:port; write an IPv6 address in brackets, e.g. [::1]:5432"
                ))
            }
        };
        if host.is_empty()
            || host.contains(|c: char| c.is_whitespace() || matches!(c, '/' | '[' | ']'))
        {
            return Err(format!("{text:?} is not a valid host:port"));
        }
        // One spelling per address ("::0" is "::"), so that endpoints
        // compare equal when they are, and print and parse back the same.
        let host = host
            .parse::<IpAddr>()
            .map_or_else(|_| host.to_owned(), |ip| ip.to_string());
        Ok(Endpoint::Tcp { host, port })
    }

    /// The socket address to bind, for listeners: `localhost` means
    /// 127.0.0.1, any other name is refused.
    pub fn bind_addr(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Tcp { host, port } => {
                let ip: IpAddr = if host == "localhost" {
                    IpAddr::V4(Ipv4Addr::LOCALHOST)
                } else {
                    host.parse().ok()?
                };
                Some(SocketAddr::new(ip, *port))
            }
            Endpoint::Unix(_) => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2 (with ECDHE and AEAD suites only).
    V1_2,
    /// TLS 1.3.
    V1_3,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        })
    }
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A certificate that chains to `client_ca` is required.
    Required,
    /// A certificate is verified if presented; clients without one connect.
    Optional,
    /// Certificates are not requested.
    None,
}

impl fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientAuth::Required => "required",
            ClientAuth::Optional => "optional",
            ClientAuth::None => "none",
        })
    }
}

/// What a listener does with a client certificate whose CA's CRL is
/// stale (its nextUpdate has passed), so its revocation status is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StaleCrl {
    /// Refuse the certificate (`crl_expired`), as PostgreSQL and OpenSSL
    /// do: a certificate revoked after the CRL was issued must not log in.
    #[default]
    Refuse,
    /// Admit it if the stale CRL does not list it, and log a warning.
    Allow,
}

impl fmt::Display for StaleCrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StaleCrl::Refuse => "refuse",
            StaleCrl::Allow => "allow",
        })
    }
}

/// The TLS that clients see on a server-mode listener.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Private key of the leaf (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// Trust anchors for client certificates (PEM).
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists for client certificates (PEM or DER).
    pub crl: Option<PathBuf>,
    /// What happens to client certificates once a CRL in `crl` is past
    /// its nextUpdate.
    pub stale_crl: StaleCrl,
    /// Lowest accepted TLS version.
    pub min_version: TlsVersion,
    /// Client certificate requirement.
    pub client_auth: ClientAuth,
    /// Which identities may connect.
    pub allow: AllowList,
}

/// One validated server-mode `[[listener]]`.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// Always [`Mode::Server`]: client-mode listeners, which have no
    /// client-facing TLS, are [`ClientListenerConfig`]s in
    /// [`Config::client_listeners`].
    pub mode: Mode,
    /// Database protocol.
    pub protocol: Protocol,
    /// Where to listen.
    pub listen: Endpoint,
    /// Where the database is.
    pub upstream: Endpoint,
    /// TLS towards the database; `None` for a plaintext upstream leg.
    pub upstream_tls: Option<UpstreamTls>,
    /// TLS towards clients.
    pub tls: ServerTls,
    /// Identity to database-user mapping.
    pub db_users: DbUserRules,
    /// Time allowed from accept to the first message forwarded upstream.
    pub handshake_timeout: Duration,
    /// Time allowed to connect to the upstream.
    pub upstream_connect_timeout: Duration,
    /// Concurrent connections of verified clients beyond which new
    /// clients are refused (inside TLS, in the protocol's words).
    pub max_connections: usize,
    /// Caps on connections that have not yet passed the TLS handshake.
    pub unauthenticated: UnauthenticatedLimits,
    /// SNI routes: each TLS server name its own certificate, upstream and
    /// policy. The listener's own `upstream`, `tls` and `db_users` are the
    /// default route.
    pub routes: Vec<RouteConfig>,
    /// Refuse a handshake whose server name matches no route with the
    /// `unrecognized_name` alert, instead of using the default route.
    pub require_sni_match: bool,
    /// The server version in a MySQL listener's own greeting (the
    /// default for other protocols, which send none).
    pub mysql_server_version: String,
    /// Connection pooling (PostgreSQL only): `None` passes each client's
    /// session through to a server connection of its own.
    pub pool: Option<PoolConfig>,
}

/// One validated `mode = "client"` `[[listener]]`: local applications
/// connect in plaintext (loopback or a unix socket) and the proxy carries
/// their sessions to the database over TLS, asking for it the way the
/// protocol does, verifying the database's certificate and presenting its
/// own. There is no client-facing TLS, no `db_users` and no SNI route: the
/// application has no certificate and sends no server name.
#[derive(Debug, Clone)]
pub struct ClientListenerConfig {
    /// Name used in logs and metrics.
    pub name: String,
    /// Database protocol.
    pub protocol: Protocol,
    /// Where to listen: a loopback address or a unix socket, unless
    /// `allow_remote_plaintext`.
    pub listen: Endpoint,
    /// `listen` may be a non-loopback address: plaintext from other hosts
    /// is accepted. Set explicitly, never by default.
    pub allow_remote_plaintext: bool,
    /// Where the database is (`host:port`; TLS is not offered on unix sockets).
    pub upstream: Endpoint,
    /// TLS towards the database: required in client mode.
    pub upstream_tls: UpstreamTls,
    /// Time allowed from accept until the login is forwarded (for MySQL,
    /// until the server ends the authentication exchange).
    pub handshake_timeout: Duration,
    /// Time allowed to connect to the upstream, and for each step of its
    /// TLS negotiation.
    pub upstream_connect_timeout: Duration,
    /// Concurrent connections beyond which new applications are refused.
    pub max_connections: usize,
}

/// One `[[listener.route]]`: where a TLS server name leads.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The server name (or `*.suffix`) this route answers.
    pub server_name: ServerNamePattern,
    /// Where its database is (default: the listener's upstream).
    pub upstream: Endpoint,
    /// TLS towards its database (default: the listener's `upstream_tls`,
    /// with a derived server name taken from this route's upstream).
    pub upstream_tls: Option<UpstreamTls>,
    /// Its certificate, and policy (what it leaves out comes from the
    /// listener's `tls`).
    pub tls: ServerTls,
    /// Its identity to database-user mapping (default: the listener's).
    pub db_users: DbUserRules,
}

/// A TLS server name to match: exact (`orders.db.internal`) or one
/// wildcard label (`*.db.internal` matches `a.db.internal`, not
/// `a.b.db.internal` nor `db.internal`). Compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerNamePattern {
    /// Exactly this name.
    Exact(String),
    /// Any single label followed by this suffix (stored with its leading dot).
    Wildcard(String),
}

impl ServerNamePattern {
    /// Parses `name` or `*.suffix`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
        };
        if let Some(suffix) = lower.strip_prefix("*.") {
            if valid_name(suffix) && suffix.contains('.') {
                return Ok(ServerNamePattern::Wildcard(format!(".{suffix}")));
            }
            return Err(format!(
                "{text:?}: a wildcard needs at least two labels after \"*.\", e.g. \"*.db.internal\""
            ));
        }
        // The last label of a DNS name is never all digits; that rules out
        // IPv4 addresses, which clients do not send as server names.
        let numeric_tail = lower
            .rsplit('.')
            .next()
            .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()));
        if valid_name(&lower) && !numeric_tail {
            Ok(ServerNamePattern::Exact(lower))
        } else {
            Err(format!(
                "{text:?} is not a DNS name (an IP address is never sent as a TLS server name)"
            ))
        }
    }

    /// Whether a server name from a ClientHello matches.
    pub fn matches(&self, server_name: &str) -> bool {
        let name = server_name.to_ascii_lowercase();
        match self {
            ServerNamePattern::Exact(exact) => name == *exact,
            ServerNamePattern::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

impl fmt::Display for ServerNamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerNamePattern::Exact(name) => f.write_str(name),
            ServerNamePattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

impl Config {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            // toml's message already carries the line, column and key.
            err("", e.to_string().trim_end().to_owned())
        })?;
        raw.validate()
    }

    /// Parses and validates the TOML text of a file in `config_dir`. Every
    /// relative path it names (certificates, keys, CAs, CRLs, `state_dir`,
    /// `audit_log`, `pid_file`, `unix:` sockets) is taken as relative to
    /// that directory, not to the current one, so a file means the same
    /// wherever the proxy is started from.
    pub fn from_toml_in(text: &str, config_dir: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::from_toml(text)?;
        config.resolve_relative_paths(config_dir);
        Ok(config)
    }

    fn resolve_relative_paths(&mut self, dir: &Path) {
        let path = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        let endpoint = |e: &mut Endpoint| {
            if let Endpoint::Unix(p) = e {
                path(p);
            }
        };
        let server_tls = |t: &mut ServerTls| {
            path(&mut t.cert);
            path(&mut t.key);
            t.client_ca
                .iter_mut()
                .chain(t.crl.iter_mut())
                .for_each(path);
        };
        let upstream_tls = |t: &mut UpstreamTls| {
            t.ca.iter_mut()
                .chain(t.cert.iter_mut())
                .chain(t.key.iter_mut())
                .for_each(path);
        };
        self.state_dir
            .iter_mut()
            .chain(self.audit_log.iter_mut())
            .chain(self.pid_file.iter_mut())
            .for_each(path);
        self.admin_tls.iter_mut().for_each(server_tls);
        for l in &mut self.listeners {
            endpoint(&mut l.listen);
            endpoint(&mut l.upstream);
            server_tls(&mut l.tls);
            l.upstream_tls.iter_mut().for_each(upstream_tls);
            if let Some(pool) = &mut l.pool {
                pool.auth_file
                    .iter_mut()
                    .chain(pool.cert_authority.iter_mut())
                    .chain(pool.cert_authority_passphrase_file.iter_mut())
                    .for_each(path);
                for user in pool.users.values_mut() {
                    user.cert
                        .iter_mut()
                        .chain(user.key.iter_mut())
                        .for_each(path);
                }
                for peer in &mut pool.peers {
                    upstream_tls(&mut peer.tls);
                }
            }
            for r in &mut l.routes {
                endpoint(&mut r.upstream);
                server_tls(&mut r.tls);
                r.upstream_tls.iter_mut().for_each(upstream_tls);
            }
        }
        for l in &mut self.client_listeners {
            endpoint(&mut l.listen);
            endpoint(&mut l.upstream);
            upstream_tls(&mut l.upstream_tls);
        }
    }
}

/// Builds the policy parts of a listener; shared by the TOML path and by
/// callers that assemble a listener in code (`intransit up`).
pub fn build_allow_list(key: &str, patterns: &[String]) -> Result<AllowList, ConfigError> {
    let mut parsed = Vec::with_capacity(patterns.len());
    for (i, p) in patterns.iter().enumerate() {
        parsed.push(
            IdentityPattern::parse(p).map_err(|e| err(format!("{key}[{i}]"), e.to_string()))?,
        );
    }
    Ok(AllowList::new(parsed))
}

pub(crate) fn build_db_user_rules(
    key: &str,
    rules: &[raw::RawDbUser],
) -> Result<DbUserRules, ConfigError> {
    let mut built = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let key = format!("{key}[{i}]");
        let rule = match (&r.identity, &r.identity_regex) {
            (Some(_), Some(_)) => {
                return Err(err(
                    key,
                    "set either identity (with users) or identity_regex (with user), not both",
                ))
            }
            (None, None) => {
                return Err(err(
                    key,
                    "missing identity: set identity = \"uri:...\" with users = [...], or identity_regex with user",
                ))
            }
            (Some(identity), None) => {
                if r.user.is_some() {
                    return Err(err(
                        format!("{key}.user"),
                        "user (a template) goes with identity_regex; with identity use users = [\"name\", ...]",
                    ));
                }
                let Some(users) = r.users.as_ref().filter(|u| !u.is_empty()) else {
                    return Err(err(
                        format!("{key}.users"),
                        "list the database users this identity may log in as, e.g. users = [\"trainer\"] (\"*\" for any)",
                    ));
                };
                DbUserRule::Listed {
                    identity: IdentityPattern::parse(identity)
                        .map_err(|e| err(format!("{key}.identity"), e.to_string()))?,
                    users: users.clone(),
                }
            }
            (None, Some(regex)) => {
                if r.users.is_some() {
                    return Err(err(
                        format!("{key}.users"),
                        "with identity_regex, give a single user template, e.g. user = \"\\\\1\"",
                    ));
                }
                let Some(user) = &r.user else {
                    return Err(err(
                        format!("{key}.user"),
                        "identity_regex needs a user template, e.g. user = \"\\\\1\"",
                    ));
                };
                DbUserRule::regex(regex, user)
                    .map_err(|e| err(format!("{key}.identity_regex"), e.to_string()))?
            }
        };
        built.push(rule);
    }
    Ok(DbUserRules::new(built))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
