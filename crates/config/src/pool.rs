//! `[listener.pool]`: PostgreSQL connection pooling with login by client
//! certificate. Without the table a listener passes each client session
//! through to its own server connection; with it, the proxy completes the
//! client's login itself and shares server connections it logs in to
//! without any password on the client.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::upstream_tls::RawUpstreamTls;
use crate::{err, parse_duration, ConfigError, Endpoint, Protocol, UpstreamTls};

/// Default server connections per (database, user), PgBouncer's
/// `default_pool_size`.
pub const DEFAULT_POOL_SIZE: usize = 20;
/// Default time a client waits for a server connection (PgBouncer's
/// `query_wait_timeout`).
pub const DEFAULT_POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Default time an unused server connection stays open.
pub const DEFAULT_SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default age at which a server connection is closed once idle.
pub const DEFAULT_SERVER_LIFETIME: Duration = Duration::from_secs(3600);
/// Default time a server login may take, after the connection is open.
pub const DEFAULT_SERVER_LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Default lifetime of a client certificate minted for a database user.
pub const DEFAULT_MINTED_CERT_LIFETIME: Duration = Duration::from_secs(3600);
/// Default cap on the prepared statements a transaction-mode server
/// connection keeps (PgBouncer's `max_prepared_statements` default).
pub const DEFAULT_MAX_PREPARED_STATEMENTS: usize = 200;
/// The query that cleans a session-mode server connection before reuse.
pub const DEFAULT_RESET_QUERY: &str = "DISCARD ALL";

/// When a server connection goes back to its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// When the client disconnects (after the reset query).
    Session,
    /// When ReadyForQuery says the server is idle, no transaction open
    /// and nothing of the client's left unanswered.
    Transaction,
}

impl PoolMode {
    /// The name used in the configuration, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// How the proxy logs in to PostgreSQL on a server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAuth {
    /// A client certificate for the database user over the TLS upstream
    /// leg (`hostssl ... cert`): configured per user, or minted by the
    /// proxy's own CA with CN = the user.
    Cert,
    /// A password from `auth_file` (SCRAM-SHA-256, md5 or cleartext,
    /// whichever the server asks for).
    Password,
    /// No credentials: a `trust` or `peer` rule (a unix socket or loopback
    /// sidecar).
    Trust,
}

impl ServerAuth {
    /// The name used in the configuration and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerAuth::Cert => "cert",
            ServerAuth::Password => "password",
            ServerAuth::Trust => "trust",
        }
    }
}

/// A validated `[listener.pool]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Session or transaction pooling.
    pub mode: PoolMode,
    /// Server connections per (database, user).
    pub size: usize,
    /// Idle server connections kept open per (database, user) once it
    /// has been used.
    pub min_idle: usize,
    /// How the proxy logs in, unless a user says otherwise.
    pub server_auth: ServerAuth,
    /// Per-user settings (`[listener.pool.users.NAME]`).
    pub users: BTreeMap<String, PoolUser>,
    /// The password file (PgBouncer's userlist format: `"user" "secret"`
    /// a line), mode 0600 or stricter.
    pub auth_file: Option<PathBuf>,
    /// The state directory whose CA mints client certificates for
    /// `server_auth = "cert"` users without a configured certificate;
    /// the top-level `state_dir` unless set.
    pub cert_authority: Option<PathBuf>,
    /// A file (mode 0600) holding the passphrase of an encrypted
    /// `cert_authority` key; without it, the `INTRANSIT_CA_PASSPHRASE`
    /// environment variable.
    pub cert_authority_passphrase_file: Option<PathBuf>,
    /// Lifetime of a minted client certificate.
    pub cert_lifetime: Duration,
    /// Run on a session-mode server connection before another client
    /// gets it.
    pub reset_query: String,
    /// How long a client waits for a server connection before it is told
    /// the pool is exhausted (SQLSTATE 53300).
    pub wait_timeout: Duration,
    /// An unused server connection older than this (since its last use)
    /// is closed, down to `min_idle`.
    pub server_idle_timeout: Duration,
    /// A server connection this old is closed when it next goes idle.
    pub server_lifetime: Duration,
    /// Time the server login may take once connected.
    pub server_login_timeout: Duration,
    /// Transaction mode: the named prepared statements each server
    /// connection keeps for clients (least recently used closed beyond
    /// it); 0 passes statement names through untracked.
    pub max_prepared_statements: usize,
    /// This instance's id among several behind a load balancer (1 to
    /// 255), carried in every cancel key it hands out; `None` alone.
    pub peer_id: Option<u8>,
    /// The other instances (`[[listener.pool.peers]]`): a cancel request
    /// with a key of theirs is forwarded to them.
    pub peers: Vec<PoolPeer>,
}

/// Another instance serving the same database, which a cancel request
/// for one of its clients is forwarded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPeer {
    /// Its `peer_id`.
    pub id: u8,
    /// Its pooled listener (TCP).
    pub address: Endpoint,
    /// How this instance reaches it: `[listener.pool.peer_tls]`, with the
    /// server name derived from `address` unless the table names one.
    pub tls: UpstreamTls,
}

/// What one database user overrides in a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolUser {
    /// How to log in as this user.
    pub server_auth: Option<ServerAuth>,
    /// A client certificate (PEM) to present for this user instead of a
    /// minted one.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
    /// Server connections for this user per database.
    pub size: Option<usize>,
}

impl PoolConfig {
    /// How the proxy logs in as `user`.
    pub fn server_auth_for(&self, user: &str) -> ServerAuth {
        self.users
            .get(user)
            .and_then(|u| u.server_auth)
            .unwrap_or(self.server_auth)
    }

    /// Server connections for `user` per database.
    pub fn size_for(&self, user: &str) -> usize {
        self.users
            .get(user)
            .and_then(|u| u.size)
            .unwrap_or(self.size)
    }

    /// Whether some user may log in with a minted certificate, so the
    /// proxy needs a CA that can sign.
    pub fn mints_certificates(&self) -> bool {
        let configured_cert = |u: &PoolUser| u.cert.is_some();
        // Users not listed take the pool's server_auth and mint.
        self.server_auth == ServerAuth::Cert
            || self
                .users
                .values()
                .any(|u| u.server_auth == Some(ServerAuth::Cert) && !configured_cert(u))
    }

    /// Whether some user logs in with a password.
    pub fn uses_passwords(&self) -> bool {
        self.server_auth == ServerAuth::Password
            || self
                .users
                .values()
                .any(|u| u.server_auth == Some(ServerAuth::Password))
    }

    /// Whether some user logs in with a certificate.
    pub fn uses_certificates(&self) -> bool {
        self.server_auth == ServerAuth::Cert
            || self
                .users
                .values()
                .any(|u| u.server_auth == Some(ServerAuth::Cert))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    mode: Option<String>,
    size: Option<i64>,
    min_idle: Option<i64>,
    server_auth: Option<String>,
    #[serde(default)]
    users: BTreeMap<String, RawPoolUser>,
    auth_file: Option<PathBuf>,
    cert_authority: Option<PathBuf>,
    cert_authority_passphrase_file: Option<PathBuf>,
    cert_lifetime: Option<String>,
    reset_query: Option<String>,
    wait_timeout: Option<String>,
    server_idle_timeout: Option<String>,
    server_lifetime: Option<String>,
    server_login_timeout: Option<String>,
    max_prepared_statements: Option<i64>,
    peer_id: Option<i64>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    peer_tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: Option<i64>,
    address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoolUser {
    server_auth: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    size: Option<i64>,
}

const MAX_POOL_SIZE: i64 = 10_000;

fn server_auth(key: &str, value: Option<&str>) -> Result<Option<ServerAuth>, ConfigError> {
    match value {
        None => Ok(None),
        Some("cert") => Ok(Some(ServerAuth::Cert)),
        Some("password") => Ok(Some(ServerAuth::Password)),
        Some("trust") => Ok(Some(ServerAuth::Trust)),
        Some(other) => Err(err(
            key,
            format!("{other:?} is not a server_auth; use \"cert\" (a client certificate per database user), \"password\" (from auth_file) or \"trust\""),
        )),
    }
}

fn pool_size(key: &str, value: Option<i64>) -> Result<Option<usize>, ConfigError> {
    match value {
        None => Ok(None),
        Some(n) if (1..=MAX_POOL_SIZE).contains(&n) => Ok(usize::try_from(n).ok()),
        Some(n) => Err(err(
            key,
            format!("{n} is not a pool size; use 1 to {MAX_POOL_SIZE} server connections"),
        )),
    }
}

fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(s) => {
            let d = parse_duration(s).map_err(|m| err(key, m))?;
            if d.is_zero() {
                return Err(err(key, "must be longer than zero"));
            }
            Ok(d)
        }
    }
}

impl RawPool {
    /// Validates `k` (`listener[N].pool`) for a listener speaking
    /// `protocol` with `upstream_tls`.
    pub(crate) fn validate(
        self,
        k: &str,
        protocol: Protocol,
        upstream_tls: Option<&UpstreamTls>,
        has_routes: bool,
    ) -> Result<PoolConfig, ConfigError> {
        if protocol != Protocol::Postgres {
            return Err(err(
                k,
                "pooling is for protocol = \"postgres\" listeners; remove [listener.pool]",
            ));
        }
        if has_routes {
            return Err(err(
                k,
                "a pooled listener has one upstream in this version; SNI routes ([[listener.route]]) cannot be pooled yet, so use one listener per upstream",
            ));
        }
        let mode = match self.mode.as_deref() {
            None | Some("transaction") => PoolMode::Transaction,
            Some("session") => PoolMode::Session,
            Some(other) => {
                return Err(err(
                    format!("{k}.mode"),
                    format!("{other:?} is not a pool mode; use \"transaction\" or \"session\""),
                ))
            }
        };
        let size = pool_size(&format!("{k}.size"), self.size)?.unwrap_or(DEFAULT_POOL_SIZE);
        let min_idle = match self.min_idle {
            None => 0,
            Some(n) if n >= 0 && usize::try_from(n).is_ok_and(|n| n <= size) => {
                usize::try_from(n).unwrap_or(0)
            }
            Some(n) => {
                return Err(err(
                    format!("{k}.min_idle"),
                    format!("{n} is not a minimum of idle connections; use 0 to size ({size})"),
                ))
            }
        };
        let pool_auth = server_auth(&format!("{k}.server_auth"), self.server_auth.as_deref())?
            .unwrap_or(if upstream_tls.is_some() {
                ServerAuth::Cert
            } else {
                ServerAuth::Trust
            });
        let mut users = BTreeMap::new();
        for (name, raw) in self.users {
            let uk = format!("{k}.users.{name}");
            if name.is_empty() || name.len() > 63 || name.contains('\0') {
                return Err(err(
                    uk,
                    "a PostgreSQL user name is 1 to 63 bytes without NUL",
                ));
            }
            let user = PoolUser {
                server_auth: server_auth(&format!("{uk}.server_auth"), raw.server_auth.as_deref())?,
                cert: raw.cert,
                key: raw.key,
                size: pool_size(&format!("{uk}.size"), raw.size)?,
            };
            let auth = user.server_auth.unwrap_or(pool_auth);
            match (&user.cert, &user.key) {
                (Some(_), None) | (None, Some(_)) => {
                    return Err(err(uk, "set cert and key together"));
                }
                (Some(_), Some(_)) if auth != ServerAuth::Cert => {
                    return Err(err(
                        uk,
                        format!("cert and key are for server_auth = \"cert\", but this user logs in with {:?}", auth.as_str()),
                    ));
                }
                _ => {}
            }
            users.insert(name, user);
        }
        let cert_lifetime = duration(
            &format!("{k}.cert_lifetime"),
            self.cert_lifetime.as_deref(),
            DEFAULT_MINTED_CERT_LIFETIME,
        )?;
        if cert_lifetime < Duration::from_secs(300) {
            return Err(err(
                format!("{k}.cert_lifetime"),
                "a minted certificate must live at least 5m: it is renewed when two thirds of its life have passed",
            ));
        }
        let reset_query = match self.reset_query {
            None => DEFAULT_RESET_QUERY.to_owned(),
            Some(q) if q.contains('\0') => {
                return Err(err(format!("{k}.reset_query"), "must not contain NUL"))
            }
            Some(q) => q,
        };
        let max_prepared_statements = match self.max_prepared_statements {
            None => DEFAULT_MAX_PREPARED_STATEMENTS,
            Some(n) if (0..=100_000).contains(&n) => usize::try_from(n).unwrap_or(0),
            Some(n) => {
                return Err(err(
                    format!("{k}.max_prepared_statements"),
                    format!(
                    "{n} is not a statement count; use 0 (names pass through untracked) to 100000"
                ),
                ))
            }
        };
        let (peer_id, peers) = peers(k, self.peer_id, self.peers, self.peer_tls)?;
        let pool = PoolConfig {
            max_prepared_statements,
            peer_id,
            peers,
            mode,
            size,
            min_idle,
            server_auth: pool_auth,
            users,
            auth_file: self.auth_file,
            cert_authority: self.cert_authority,
            cert_authority_passphrase_file: self.cert_authority_passphrase_file,
            cert_lifetime,
            reset_query,
            wait_timeout: duration(
                &format!("{k}.wait_timeout"),
                self.wait_timeout.as_deref(),
                DEFAULT_POOL_WAIT_TIMEOUT,
            )?,
            server_idle_timeout: duration(
                &format!("{k}.server_idle_timeout"),
                self.server_idle_timeout.as_deref(),
                DEFAULT_SERVER_IDLE_TIMEOUT,
            )?,
            server_lifetime: duration(
                &format!("{k}.server_lifetime"),
                self.server_lifetime.as_deref(),
                DEFAULT_SERVER_LIFETIME,
            )?,
            server_login_timeout: duration(
                &format!("{k}.server_login_timeout"),
                self.server_login_timeout.as_deref(),
                DEFAULT_SERVER_LOGIN_TIMEOUT,
            )?,
        };
        if pool.uses_certificates() && upstream_tls.is_none() {
            return Err(err(
                format!("{k}.server_auth"),
                "server_auth = \"cert\" presents a client certificate to PostgreSQL, which needs TLS on the upstream leg: add [listener.upstream_tls] (ca and mode = \"verify-full\"), or use \"password\" or \"trust\"",
            ));
        }
        if pool.uses_passwords() && pool.auth_file.is_none() {
            return Err(err(
                format!("{k}.auth_file"),
                "server_auth = \"password\" needs auth_file: a file of lines \"user\" \"password\" (PgBouncer's userlist format), mode 0600",
            ));
        }
        Ok(pool)
    }
}

fn peer_id(key: &str, value: i64) -> Result<u8, ConfigError> {
    match u8::try_from(value) {
        Ok(id) if id >= 1 => Ok(id),
        _ => Err(err(key, format!("{value} is not a peer id; use 1 to 255"))),
    }
}

/// `peer_id`, `[[listener.pool.peers]]` and `[listener.pool.peer_tls]`.
fn peers(
    k: &str,
    own: Option<i64>,
    raw: Vec<RawPeer>,
    raw_tls: Option<RawUpstreamTls>,
) -> Result<(Option<u8>, Vec<PoolPeer>), ConfigError> {
    let own = own
        .map(|v| peer_id(&format!("{k}.peer_id"), v))
        .transpose()?;
    if raw.is_empty() {
        if raw_tls.is_some() {
            return Err(err(
                format!("{k}.peer_tls"),
                "is for reaching [[listener.pool.peers]], and there are none",
            ));
        }
        return Ok((own, Vec::new()));
    }
    let Some(own) = own else {
        return Err(err(
            format!("{k}.peer_id"),
            "missing: with [[listener.pool.peers]] each instance needs its own peer_id (1 to 255), carried in the cancel keys it hands out",
        ));
    };
    let tk = format!("{k}.peer_tls");
    let Some(raw_tls) = raw_tls else {
        return Err(err(
            tk,
            "missing: cancel requests go to peers over mutual TLS; add [listener.pool.peer_tls] with ca (the CA of the peers' listener certificates), cert and key (a certificate the peers' listeners admit)",
        ));
    };
    let mut peers: Vec<PoolPeer> = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let pk = format!("{k}.peers[{i}]");
        let id = peer_id(
            &format!("{pk}.id"),
            p.id.ok_or_else(|| err(format!("{pk}.id"), "missing: the peer's own peer_id"))?,
        )?;
        if id == own {
            return Err(err(
                format!("{pk}.id"),
                format!("{id} is this instance's own peer_id"),
            ));
        }
        if peers.iter().any(|q| q.id == id) {
            return Err(err(format!("{pk}.id"), format!("{id} is given twice")));
        }
        let text = p.address.ok_or_else(|| {
            err(
                format!("{pk}.address"),
                "missing: the peer's listener, host:port",
            )
        })?;
        let address = Endpoint::parse(&text).map_err(|m| err(format!("{pk}.address"), m))?;
        if matches!(address, Endpoint::Unix(_)) {
            return Err(err(
                format!("{pk}.address"),
                "a peer is another instance's TCP listener (host:port)",
            ));
        }
        // The same table for every peer; a derived server name is each
        // peer's own host.
        let tls = raw_tls
            .clone()
            .validate(&tk, &address)?
            .ok_or_else(|| err(&tk, "mode = \"disable\" would send cancel keys in plaintext; peers are reached over mutual TLS"))?;
        if tls.cert.is_none() {
            return Err(err(
                tk,
                "cert and key are needed: the peers' listeners require a client certificate",
            ));
        }
        peers.push(PoolPeer { id, address, tls });
    }
    Ok((Some(own), peers))
}

/// Fills in the CA that mints certificates from the top-level
/// `state_dir`, and refuses a pool that must mint without one.
pub(crate) fn resolve_cert_authority(
    k: &str,
    pool: &mut PoolConfig,
    state_dir: Option<&PathBuf>,
) -> Result<(), ConfigError> {
    if !pool.mints_certificates() || pool.cert_authority.is_some() {
        return Ok(());
    }
    match state_dir {
        Some(dir) => {
            pool.cert_authority = Some(dir.clone());
            Ok(())
        }
        None => Err(err(
            format!("{k}.cert_authority"),
            "server_auth = \"cert\" without a configured cert and key mints a certificate for each database user, which needs a CA: set cert_authority (or the top-level state_dir) to a directory made by `intransit ca init`, or give each user cert and key under [listener.pool.users.NAME]",
        )),
    }
}
