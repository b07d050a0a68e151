//! PostgreSQL connection pooling with login by client certificate.
//!
//! A pooled listener completes each verified client's login itself
//! (AuthenticationOk, the server's parameters, a BackendKeyData of its
//! own) and serves the client's transactions (or its whole session) on
//! server connections it logs in to with credentials of its own
//! (`credentials`, `login`): a client certificate per database user
//! minted by the proxy's CA or configured, a password file, or trust.
//!
//! ```text
//! Pools (one per listener)
//!   └─ Pool per (database, user): a semaphore of `size` permits, idle ServerConns (newest first)
//!        acquire: permit (waiting at most wait_timeout) → an idle connection that is still alive,
//!                 of the current generation and not too old, or a new login;
//!                 or, while waiting, a lease handed over by release()
//!        Lease: a ServerConn with its permit; release() hands it to a client waiting on the
//!               worker thread of its socket (the oldest passed over for at most PASS_OVER)
//!               or returns it idle; drop closes it
//! ```
//!
//! - `tracking`: when a server connection may change hands (`Exchange`)
//!   and the session parameters kept per client (`Parameters`), pure.
//! - `session`: one pooled client from its login to its close.
//! - `cancel`: the proxy's own BackendKeyData for each client, and which
//!   server connection a cancel request reaches.
//! - `credentials`, `login`: how the proxy logs in as a database user.
//!
//! **Invariant:** a server connection goes back to its pool only at a
//! transaction boundary (everything the client sent answered, no
//! extended-protocol sequence open, ReadyForQuery idle) with no partial
//! message written to it; anything else (a client gone mid-transaction
//! that a ROLLBACK cannot settle, a protocol error, a dead server) drops
//! the `Lease`, which closes the connection.

pub(crate) mod cancel;
pub(crate) mod credentials;
mod directions;
pub(crate) mod login;
pub(crate) mod session;
pub(crate) mod statements;
pub(crate) mod tracking;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use intransit_config::{Endpoint, PoolConfig, PoolMode};
use intransit_wire::pg::session::{backend, parse_parameter_status, MessageScanner, Scanned};
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::cancel::CancelKeys;
use self::credentials::Credentials;
use self::login::{log_in, BackendKey, LoginFailure};
use self::statements::{Expected, ServerStatements};
use self::tracking::Parameters;
use crate::error::ProxyError;
use crate::metrics::ProxyMetrics;
use crate::net::BoxStream;
use crate::tls::upstream::{UpstreamMaterial, UpstreamTls};
use crate::workers;

/// The pools of one listener, keyed by (database, user).
pub struct Pools {
    listener: String,
    pub(crate) config: PoolConfig,
    target: Endpoint,
    upstream_tls: Option<Arc<UpstreamTls>>,
    credentials: Credentials,
    connect_timeout: Duration,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    pub(crate) cancels: CancelKeys,
    /// Bumped when the credentials or the upstream TLS material change:
    /// a server connection of an older generation is not reused.
    generation: AtomicU64,
    next_server: AtomicU64,
    logins_ok: AtomicU64,
    logins_failed: AtomicU64,
    metrics: Arc<ProxyMetrics>,
    /// `intransit_pool_wait_seconds` of this listener.
    waited: Histogram,
    /// The upstream TLS material the server connections were made with.
    upstream_seen: Mutex<Option<Arc<UpstreamMaterial>>>,
    /// The other instances a cancel for one of their clients goes to.
    peers: Vec<Peer>,
    /// Why the latest reload of the credentials failed, until one works.
    credentials_error: Mutex<Option<String>>,
}

/// Another instance behind the same load balancer (`[[listener.pool.peers]]`).
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) id: u8,
    pub(crate) address: Endpoint,
    pub(crate) tls: UpstreamTls,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools")
            .field("listener", &self.listener)
            .field("mode", &self.config.mode)
            .finish_non_exhaustive()
    }
}

/// Which pool: a database and the user the proxy logs in as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) database: String,
    pub(crate) user: String,
}

/// The server connections of one (database, user).
pub(crate) struct Pool {
    pub(crate) key: PoolKey,
    size: usize,
    permits: Arc<Semaphore>,
    // Boxed in the vector on purpose: a lease takes the box as it is, so
    // lending allocates nothing and moves a pointer.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    /// The parameters the first server login reported: what a client's
    /// login reports without waiting for a server connection.
    startup: Mutex<Option<Arc<StartupParameters>>>,
    clients: AtomicUsize,
    waiting: AtomicUsize,
    active: AtomicUsize,
    opening: AtomicUsize,
    /// The clients waiting for a server connection, oldest first, each
    /// with the worker thread it runs on (see `Lease::release`).
    waiters: Mutex<VecDeque<Waiter>>,
    next_waiter: AtomicU64,
}

/// A client waiting for a server connection: a released connection can
/// be handed to it directly, with the permit that counts it.
struct Waiter {
    id: u64,
    worker: Option<usize>,
    since: Instant,
    handoff: oneshot::Sender<Handoff>,
}

/// A lease handed from the client that released it to a waiting one.
struct Handoff(Lease);

/// A client counted as waiting and queued for a hand-off until this
/// drops (also when the waiting client's task is dropped mid-wait).
struct Waiting<'a> {
    pool: &'a Pool,
    id: u64,
}

impl<'a> Waiting<'a> {
    fn register(pool: &'a Pool, since: Instant, handoff: oneshot::Sender<Handoff>) -> Self {
        pool.waiting.fetch_add(1, Ordering::Relaxed);
        let id = pool.next_waiter.fetch_add(1, Ordering::Relaxed);
        lock(&pool.waiters).push_back(Waiter {
            id,
            worker: workers::current(),
            since,
            handoff,
        });
        Waiting { pool, id }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.pool.waiters).retain(|w| w.id != self.id);
        self.pool.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a waiting client got: a permit (then it takes an idle
/// connection or opens one) or a connection handed to it.
enum Granted {
    Permit(OwnedSemaphorePermit),
    Handoff(Handoff),
}

/// How long the oldest waiting client may be passed over for one on the
/// worker thread of a released connection's socket.
const PASS_OVER: Duration = Duration::from_millis(2);

/// What the pool's first server login reported.
#[derive(Debug, Default)]
pub(crate) struct StartupParameters {
    /// Every ParameterStatus, in order: what a client's login reports.
    pub(crate) reported: Vec<(String, String)>,
    /// The restored ones among them: a client's values until it sets its
    /// own, shared by every client of the pool.
    pub(crate) defaults: Parameters,
}

/// One logged-in server connection. Kept boxed, in the idle list and in a
/// lease, so that lending it moves a pointer and a client's futures hold
/// a pointer rather than room for it.
pub(crate) struct ServerConn {
    pub(crate) stream: BoxStream,
    /// Bytes read from the server that no client has been given yet.
    pub(crate) buf: BytesMut,
    pub(crate) scanner: MessageScanner,
    /// What the server's session holds of the restored parameters.
    pub(crate) params: Parameters,
    /// The client statements prepared on it, by server-side name.
    pub(crate) statements: ServerStatements,
    /// The completions due while a client is attached (kept here, not
    /// per client or per transaction, so its room is allocated once).
    pub(crate) expected: Expected,
    pub(crate) key: BackendKey,
    pub(crate) id: u64,
    created: Instant,
    last_used: Instant,
    generation: u64,
    /// The worker thread whose reactor owns `stream` (see `workers`):
    /// lent to a client on that worker, its wake-ups stay on one thread.
    home: Option<usize>,
}

/// A server connection lent to one client, with the permit that counts
/// it against the pool's size. `release` gives it back; dropping the
/// lease closes it.
pub(crate) struct Lease {
    conn: Box<ServerConn>,
    pools: Arc<Pools>,
    active: Active,
    _permit: OwnedSemaphorePermit,
}

/// Counts a lent connection as active until it drops.
struct Active(Arc<Pool>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no server connection was lent.
pub(crate) enum AcquireError {
    /// `wait_timeout` passed with every server connection in use.
    Exhausted { waited: Duration },
    /// A new server connection could not log in.
    Login(LoginFailure),
}

/// A snapshot of one pool, for `/status` and the status page.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    /// The database.
    pub database: String,
    /// The user the proxy logs in as.
    pub user: String,
    /// Server connections allowed.
    pub size: usize,
    /// Clients logged in.
    pub clients: usize,
    /// Clients waiting for a server connection.
    pub waiting: usize,
    /// Server connections serving a client.
    pub active: usize,
    /// Server connections open and unused.
    pub idle: usize,
    /// Server connections being opened.
    pub opening: usize,
}

/// The pools of one listener, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolsStatus {
    /// The listener.
    pub listener: String,
    /// `transaction` or `session`.
    pub mode: &'static str,
    /// `cert`, `password` or `trust`: how the proxy logs in, unless a
    /// user says otherwise.
    pub server_auth: &'static str,
    /// Server logins that succeeded since start.
    pub server_logins_ok: u64,
    /// Server logins that failed since start.
    pub server_logins_failed: u64,
    /// Why the latest reload of the credentials failed (the previous ones
    /// stay in use), until a reload succeeds.
    pub credentials_error: Option<String>,
    /// Every (database, user) pool.
    pub pools: Vec<PoolStatus>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pools {
    /// Builds a listener's pools from its configuration: loads the
    /// credentials (password file, certificates, minting CA), opens no
    /// connection.
    pub fn prepare(
        listener: &str,
        config: &PoolConfig,
        target: &Endpoint,
        upstream_tls: Option<Arc<UpstreamTls>>,
        connect_timeout: Duration,
        metrics: Arc<ProxyMetrics>,
    ) -> Result<Self, ProxyError> {
        let seen = upstream_tls.as_ref().map(|t| t.snapshot());
        let credentials =
            Credentials::load(config, upstream_tls.clone()).map_err(|e| e.in_listener(listener))?;
        let peers = config
            .peers
            .iter()
            .map(|p| {
                Ok(Peer {
                    id: p.id,
                    address: p.address.clone(),
                    tls: UpstreamTls::build(&p.tls).map_err(|e| e.in_listener(listener))?,
                })
            })
            .collect::<Result<Vec<_>, ProxyError>>()?;
        Ok(Pools {
            listener: listener.to_owned(),
            config: config.clone(),
            target: target.clone(),
            upstream_tls,
            credentials,
            connect_timeout,
            pools: Mutex::new(HashMap::new()),
            cancels: CancelKeys::default(),
            generation: AtomicU64::new(0),
            next_server: AtomicU64::new(1),
            logins_ok: AtomicU64::new(0),
            logins_failed: AtomicU64::new(0),
            waited: metrics.pool_wait(listener),
            metrics,
            upstream_seen: Mutex::new(seen),
            peers,
            credentials_error: Mutex::new(None),
        })
    }

    /// The peer whose `peer_id` a cancel key carries, when it is not this
    /// instance's own.
    pub(crate) fn peer_of(&self, pid: u32) -> Option<&Peer> {
        let id = cancel::instance_of(pid, self.config.peer_id)?;
        self.peers.iter().find(|p| p.id == id)
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// Session or transaction pooling.
    pub(crate) fn mode(&self) -> PoolMode {
        self.config.mode
    }

    /// The pool of (database, user), made on first use.
    pub(crate) fn pool(&self, database: &str, user: &str) -> Arc<Pool> {
        let key = PoolKey {
            database: database.to_owned(),
            user: user.to_owned(),
        };
        let mut pools = lock(&self.pools);
        pools
            .entry(key.clone())
            .or_insert_with(|| {
                let size = self.config.size_for(user);
                Arc::new(Pool {
                    key,
                    size,
                    permits: Arc::new(Semaphore::new(size)),
                    idle: Mutex::new(Vec::new()),
                    startup: Mutex::new(None),
                    clients: AtomicUsize::new(0),
                    waiting: AtomicUsize::new(0),
                    active: AtomicUsize::new(0),
                    opening: AtomicUsize::new(0),
                    waiters: Mutex::new(VecDeque::new()),
                    next_waiter: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Lends a server connection of `pool`, waiting at most
    /// `wait_timeout` for one to be free.
    pub(crate) async fn acquire(self: &Arc<Self>, pool: &Arc<Pool>) -> Result<Lease, AcquireError> {
        let permit = match pool.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                // Not waited for: no clock read for the histogram.
                self.waited.observe(0.0);
                permit
            }
            Err(_) => {
                let started = Instant::now();
                let (handoff, mut handed) = oneshot::channel();
                let waiting = Waiting::register(pool, started, handoff);
                let waited = tokio::time::timeout(self.config.wait_timeout, async {
                    tokio::select! {
                        permit = pool.permits.clone().acquire_owned() => {
                            permit.ok().map(Granted::Permit)
                        }
                        handed = &mut handed => handed.ok().map(Granted::Handoff),
                    }
                })
                .await;
                // No longer waiting; a hand-off sent meanwhile is taken.
                drop(waiting);
                let waited_for = started.elapsed();
                let late = handed.try_recv().ok();
                match (waited, late) {
                    (Ok(Some(Granted::Handoff(Handoff(lease)))), _) | (_, Some(Handoff(lease))) => {
                        self.waited.observe(waited_for.as_secs_f64());
                        return Ok(lease);
                    }
                    (Ok(Some(Granted::Permit(permit))), None) => {
                        self.waited.observe(waited_for.as_secs_f64());
                        permit
                    }
                    // The semaphore is never closed, nor a waiter's
                    // sender dropped unsent.
                    (Ok(None), None) | (Err(_), None) => {
                        return Err(AcquireError::Exhausted { waited: waited_for })
                    }
                }
            }
        };
        let generation = self.generation.load(Ordering::Relaxed);
        loop {
            let Some(mut conn) = take_idle(pool, workers::current()) else {
                break;
            };
            if conn.generation != generation || conn.created.elapsed() > self.config.server_lifetime
            {
                debug!(listener = %self.listener, server = conn.id, "closing a server connection of older material or past its lifetime");
                continue;
            }
            if !probe(&mut conn) {
                debug!(listener = %self.listener, server = conn.id, "an idle server connection was closed by the database");
                continue;
            }
            return Ok(self.lend(pool, conn, permit));
        }
        pool.opening.fetch_add(1, Ordering::Relaxed);
        // Boxed: a login's state (TLS, authentication) is large and rare,
        // and every client's task would otherwise keep room for it.
        let opened = Box::pin(self.open(pool, generation)).await;
        pool.opening.fetch_sub(1, Ordering::Relaxed);
        let conn = opened.map_err(AcquireError::Login)?;
        Ok(self.lend(pool, conn, permit))
    }

    fn lend(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        conn: Box<ServerConn>,
        permit: OwnedSemaphorePermit,
    ) -> Lease {
        pool.active.fetch_add(1, Ordering::Relaxed);
        Lease {
            conn,
            pools: self.clone(),
            active: Active(pool.clone()),
            _permit: permit,
        }
    }

    /// Logs in a new server connection for `pool`.
    async fn open(&self, pool: &Pool, generation: u64) -> Result<Box<ServerConn>, LoginFailure> {
        let key = &pool.key;
        // No credentials for the user is a failed login like the
        // server's refusal: counted, logged, told to the client.
        let logged_in = match self.credentials.for_user(&key.user) {
            Ok(login) => {
                log_in(
                    &self.target,
                    &login,
                    &key.database,
                    &key.user,
                    &[],
                    self.connect_timeout,
                    self.config.server_login_timeout,
                )
                .await
            }
            Err(refused) => Err(LoginFailure {
                refused,
                server_error: None,
            }),
        };
        let logged_in = match logged_in {
            Ok(l) => l,
            Err(failure) => {
                self.logins_failed.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .pool_server_login(&self.listener, Some(failure.refused.reason));
                warn!(
                    listener = %self.listener,
                    database = %key.database,
                    user = %key.user,
                    reason = failure.refused.reason.as_str(),
                    error = %failure.refused.detail,
                    "server login failed"
                );
                return Err(failure);
            }
        };
        self.logins_ok.fetch_add(1, Ordering::Relaxed);
        self.metrics.pool_server_login(&self.listener, None);
        let id = self.next_server.fetch_add(1, Ordering::Relaxed);
        let mut params = Parameters::default();
        for (name, value) in &logged_in.parameters {
            params.record(name, value);
        }
        {
            let mut startup = lock(&pool.startup);
            if startup.is_none() {
                *startup = Some(Arc::new(StartupParameters {
                    reported: logged_in.parameters.clone(),
                    defaults: params.clone(),
                }));
            }
        }
        info!(
            listener = %self.listener,
            server = id,
            database = %key.database,
            user = %key.user,
            server_auth = self.config.server_auth_for(&key.user).as_str(),
            upstream = %self.target,
            upstream_tls = logged_in.tls.as_ref().map_or("off", |s| s.tls.version),
            "server connection logged in"
        );
        let now = Instant::now();
        Ok(Box::new(ServerConn {
            stream: logged_in.stream,
            buf: BytesMut::new(),
            scanner: MessageScanner::new(),
            params,
            statements: ServerStatements::default(),
            expected: Expected::default(),
            key: logged_in.key,
            id,
            created: now,
            last_used: now,
            generation,
            home: workers::current(),
        }))
    }

    /// Re-reads the credentials (password file, configured certificates,
    /// the minting CA) and notes whether the upstream TLS material in
    /// service changed since the last look: server connections made with
    /// older material or credentials are closed when idle and replaced
    /// when next needed, so no client sees an error. Returns whether
    /// anything changed; on error the credentials in service stay.
    pub fn reload(&self) -> Result<bool, ProxyError> {
        let upstream_changed = {
            let now = self.upstream_tls.as_ref().map(|t| t.snapshot());
            let mut seen = lock(&self.upstream_seen);
            let changed = match (&*seen, &now) {
                (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                (None, None) => false,
                _ => true,
            };
            *seen = now;
            changed
        };
        let reloaded = self.credentials.reload();
        *lock(&self.credentials_error) = reloaded.as_ref().err().map(ToString::to_string);
        let changed = reloaded? || upstream_changed;
        if changed {
            self.generation.fetch_add(1, Ordering::Relaxed);
            info!(listener = %self.listener, "pool credentials or upstream TLS changed: server connections will be replaced as they go idle");
        }
        Ok(changed)
    }

    /// Closes idle server connections past their idle timeout (down to
    /// `min_idle`), past their lifetime, of an older generation or closed
    /// by the database, every second until `shutdown`.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let pools: Vec<Arc<Pool>> = lock(&self.pools).values().cloned().collect();
            for pool in pools {
                self.maintain_pool(&pool).await;
            }
        }
    }

    async fn maintain_pool(self: &Arc<Self>, pool: &Arc<Pool>) {
        let generation = self.generation.load(Ordering::Relaxed);
        let taken: Vec<Box<ServerConn>> = std::mem::take(&mut *lock(&pool.idle));
        let mut kept = Vec::with_capacity(taken.len());
        // Newest first (the vector is oldest first): the oldest idle ones
        // beyond min_idle go.
        for mut conn in taken.into_iter().rev() {
            let idle_for = conn.last_used.elapsed();
            let expendable = kept.len() >= self.config.min_idle;
            let close = conn.generation != generation
                || conn.created.elapsed() > self.config.server_lifetime
                || (expendable && idle_for > self.config.server_idle_timeout)
                || !probe(&mut conn);
            if close {
                debug!(listener = %self.listener, server = conn.id, "closing an idle server connection");
            } else {
                kept.push(conn);
            }
        }
        kept.reverse();
        let (open, missing) = {
            let mut idle = lock(&pool.idle);
            // Connections released meanwhile are newer: they go after.
            kept.append(&mut idle);
            *idle = kept;
            (
                idle.len() + pool.active.load(Ordering::Relaxed),
                self.config.min_idle.saturating_sub(idle.len()),
            )
        };
        let used = pool.clients.load(Ordering::Relaxed) > 0 || open > 0;
        if used && missing > 0 && open < pool.size {
            // Top up one at a time, through the permits so the size holds.
            if let Ok(permit) = pool.permits.clone().try_acquire_owned() {
                pool.opening.fetch_add(1, Ordering::Relaxed);
                // Boxed: a login's state (TLS, authentication) is large and rare,
                // and every client's task would otherwise keep room for it.
                let opened = Box::pin(self.open(pool, generation)).await;
                pool.opening.fetch_sub(1, Ordering::Relaxed);
                if let Ok(conn) = opened {
                    lock(&pool.idle).push(conn);
                }
                drop(permit);
            }
        }
    }

    /// Every pool's counts.
    pub fn status(&self) -> PoolsStatus {
        let mut pools: Vec<PoolStatus> = lock(&self.pools)
            .values()
            .map(|p| PoolStatus {
                database: p.key.database.clone(),
                user: p.key.user.clone(),
                size: p.size,
                clients: p.clients.load(Ordering::Relaxed),
                waiting: p.waiting.load(Ordering::Relaxed),
                active: p.active.load(Ordering::Relaxed),
                idle: lock(&p.idle).len(),
                opening: p.opening.load(Ordering::Relaxed),
            })
            .collect();
        pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
        PoolsStatus {
            listener: self.listener.clone(),
            mode: self.config.mode.as_str(),
            server_auth: self.config.server_auth.as_str(),
            server_logins_ok: self.logins_ok.load(Ordering::Relaxed),
            credentials_error: lock(&self.credentials_error).clone(),
            server_logins_failed: self.logins_failed.load(Ordering::Relaxed),
            pools,
        }
    }

    /// The files the pool's credentials come from, for the file watcher.
    pub fn watched_files(&self) -> Vec<std::path::PathBuf> {
        let mut files: Vec<std::path::PathBuf> = self.config.auth_file.iter().cloned().collect();
        for user in self.config.users.values() {
            files.extend(user.cert.iter().chain(&user.key).cloned());
        }
        if let Some(dir) = &self.config.cert_authority {
            files.push(dir.join("ca").join("ca.pem"));
            files.push(dir.join("ca").join("key.pem"));
        }
        files
    }

    /// The upstream, for logs and cancels.
    pub(crate) fn target(&self) -> &Endpoint {
        &self.target
    }

    /// The upstream leg's TLS (without a user's certificate), for cancels.
    pub(crate) fn upstream_tls(&self) -> Option<&UpstreamTls> {
        self.upstream_tls.as_deref()
    }
}

impl Pool {
    /// The parameters of the pool's first server login, if there was one.
    pub(crate) fn startup_parameters(&self) -> Option<Arc<StartupParameters>> {
        lock(&self.startup).clone()
    }

    /// Counts a logged-in client until the guard drops.
    pub(crate) fn client(self: &Arc<Self>) -> ClientGuard {
        self.clients.fetch_add(1, Ordering::Relaxed);
        ClientGuard(self.clone())
    }
}

/// Counts one logged-in client of a pool.
pub(crate) struct ClientGuard(Arc<Pool>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lease {
    /// The lent connection.
    pub(crate) fn conn(&mut self) -> &mut ServerConn {
        &mut self.conn
    }

    /// Gives the connection back to its pool, idle. The caller has made
    /// sure it is at a transaction boundary with nothing unread. One of
    /// older material or past its lifetime is closed instead.
    pub(crate) fn release(mut self) {
        let now = Instant::now();
        self.conn.last_used = now;
        let generation = self.pools.generation.load(Ordering::Relaxed);
        if self.conn.generation != generation
            || now.saturating_duration_since(self.conn.created) > self.pools.config.server_lifetime
        {
            debug!(listener = %self.pools.listener, server = self.conn.id, "closing a server connection of older material or past its lifetime");
            return;
        }
        // A client waiting on the worker thread whose reactor owns the
        // connection's socket gets the lease as it is (still counted as
        // active): its wake-ups, and every message of its transaction,
        // stay on that thread. The oldest waiter is passed over for it
        // only briefly; otherwise the permit goes back and the semaphore
        // wakes the oldest.
        let local = {
            let mut waiters = lock(&self.active.0.waiters);
            let oldest_waited = waiters
                .front()
                .map(|w| now.saturating_duration_since(w.since));
            match waiters.iter().position(|w| w.worker == self.conn.home) {
                Some(at) if at == 0 || oldest_waited < Some(PASS_OVER) => waiters.remove(at),
                _ => None,
            }
        };
        let lease = match local {
            Some(waiter) => match waiter.handoff.send(Handoff(self)) {
                Ok(()) => return,
                Err(Handoff(lease)) => lease,
            },
            None => self,
        };
        let Lease {
            conn,
            active,
            _permit: permit,
            ..
        } = lease;
        lock(&active.0.idle).push(conn);
        // The connection is idle before its permit wakes anyone.
        drop(permit);
    }

    /// Closes the connection: it cannot be reused.
    pub(crate) fn close(self, why: &str) {
        debug!(listener = %self.pools.listener, server = self.conn.id, why, "closing a server connection");
    }
}

/// The newest idle connection whose socket belongs to the worker thread
/// `here`; when there is none and the pool has room, none (a new one is
/// opened here: lent across threads, every message of every transaction
/// would cost a wake-up of another thread); else the newest of another
/// worker (the vector is oldest first).
fn take_idle(pool: &Pool, here: Option<usize>) -> Option<Box<ServerConn>> {
    let mut idle = lock(&pool.idle);
    if let Some(at) = idle.iter().rposition(|c| c.home == here) {
        return Some(idle.remove(at));
    }
    let open =
        idle.len() + pool.active.load(Ordering::Relaxed) + pool.opening.load(Ordering::Relaxed);
    if here.is_some() && open < pool.size {
        return None;
    }
    idle.pop()
}

/// Whether an idle server connection is still usable, without waiting:
/// no bytes and no end of stream is alive; a ParameterStatus or a notice
/// the server sent while it was idle is taken in; anything else (the
/// FATAL of a shutdown, end of stream, an error) means it is not.
///
/// It never waits, so it is not `async`: the socket is polled once with a
/// waker that does nothing (whoever reads the connection next registers
/// its own), and no future of the caller keeps room for the read.
fn probe(conn: &mut ServerConn) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut chunk = [0u8; 512];
    loop {
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut conn.stream).poll_read(&mut cx, &mut buf) {
            Poll::Pending => return true,
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return false,
            Poll::Ready(Ok(())) => conn.buf.extend_from_slice(buf.filled()),
            Poll::Ready(Err(_)) => return false,
        }
        loop {
            let scanned = conn.scanner.scan(&conn.buf, 1 << 16, |_| usize::MAX);
            match scanned {
                Ok(Scanned::NeedMore) => break,
                Ok(Scanned::Message {
                    tag, prefix, len, ..
                }) => {
                    match tag {
                        backend::PARAMETER_STATUS => {
                            if let Ok((name, value)) = parse_parameter_status(prefix) {
                                conn.params.record(name, value);
                            }
                        }
                        backend::NOTICE_RESPONSE => {}
                        _ => return false,
                    }
                    let _ = conn.buf.split_to(len);
                }
                Ok(Scanned::Continues { .. }) | Err(_) => return false,
            }
        }
    }
}

/// A pool configuration for unit tests: transaction mode, size 4.
#[cfg(test)]
pub(crate) fn test_config(server_auth: intransit_config::ServerAuth) -> PoolConfig {
    PoolConfig {
        mode: intransit_config::PoolMode::Transaction,
        size: 4,
        min_idle: 0,
        server_auth,
        users: std::collections::BTreeMap::new(),
        auth_file: None,
        cert_authority: None,
        cert_lifetime: Duration::from_secs(3600),
        cert_authority_passphrase_file: None,
        reset_query: "DISCARD ALL".into(),
        wait_timeout: Duration::from_secs(10),
        server_idle_timeout: Duration::from_secs(60),
        server_lifetime: Duration::from_secs(600),
        server_login_timeout: Duration::from_secs(5),
        max_prepared_statements: 200,
        peer_id: None,
        peers: Vec::new(),
    }
}
