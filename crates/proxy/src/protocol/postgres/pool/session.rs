//! One pooled client, from the end of its login to its close.
//!
//! The proxy answers the client's StartupMessage itself, then serves
//! each of its transactions (transaction mode) or its whole session
//! (session mode) on a server connection lent by the pool. While a
//! server connection is attached, two directions are polled in turn by
//! one future in the connection's task (`directions::attached`): the
//! client's messages to the server, and the server's to the client. Both follow message boundaries with a
//! `MessageScanner` and record into one `Exchange`; the server's
//! direction sees the ReadyForQuery that ends a transaction and lets the
//! connection go, unless the client's direction is in the middle of
//! writing to it, in which case that direction lets it go once its write
//! is complete. Either way no message is split between two clients.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use intransit_config::PoolMode;
use intransit_wire::pg::session::{
    backend, encode_authentication_ok, encode_backend_key_data, encode_parameter_status,
    encode_query, encode_ready_for_query, frontend, parse_parameter_status, MessageScanner,
    Scanned, TransactionStatus,
};
use intransit_wire::pg::{ErrorResponse, SqlState, StartupMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::info;

use super::cancel::{CancelKeys, CancelSlot};
use super::directions::{self, ClientSide, Common, ServerSide, Stop, Tracking};
use super::statements::ClientStatements;
use super::tracking::{Exchange, Parameters, RESTORED};
use super::{AcquireError, Lease, Pool, Pools, ServerConn};
use crate::conn::{ConnectionContext, Established, Listener, Refused};
use crate::net::close_with;
use crate::refusal::RefusalReason;

/// The largest read buffer a server connection keeps between
/// transactions; one that grew past it (a large result) is freed.
const SERVER_BUFFER_KEPT: usize = 64 * 1024;

/// A client whose certificate and database user passed every check.
pub(crate) struct Verified<S> {
    pub(crate) client: S,
    pub(crate) startup: StartupMessage,
    /// Bytes the client sent after its StartupMessage.
    pub(crate) pending: BytesMut,
    pub(crate) handshake_micros: u128,
}

/// Runs one pooled client to its end.
pub(crate) async fn serve<L, S>(
    ctx: &ConnectionContext<L>,
    pools: &Arc<Pools>,
    verified: Verified<S>,
) -> Result<(), Refused>
where
    L: Listener,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Verified {
        mut client,
        startup,
        pending,
        handshake_micros,
    } = verified;
    let user = startup.user().unwrap_or_default();
    let database = startup.database().unwrap_or_default();
    let wanted = match Parameters::from_startup(
        startup.params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ) {
        Ok(p) => p,
        Err(not) => {
            let reply = ErrorResponse::fatal(
                SqlState::PROTOCOL_VIOLATION,
                format!("unsupported startup parameter in a pooled connection: {}", not.name),
            )
            .with_hint(format!(
                "A pool restores only {} on each server connection; set other parameters with ALTER ROLE ... SET or ALTER DATABASE ... SET.",
                RESTORED.join(", ")
            ))
            .encode();
            close_with(&mut client, &reply).await;
            return Err(Refused::new(
                RefusalReason::NotPoolable,
                format!("startup parameter {:?} cannot be pooled", not.name),
            ));
        }
    };
    let pool = pools.pool(database, user);
    let _counted = pool.client();
    let slot = CancelKeys::register(pools);
    // A server connection is taken at login only when the pool has never
    // logged in and so has no parameters to report; otherwise the client
    // gets one with its first message (and, in session mode, keeps it), so
    // a login never waits for a busy pool.
    let mut lease = None;
    if pool.startup_parameters().is_none() {
        match pools.acquire(&pool).await {
            Ok(l) => lease = Some(l),
            Err(e) => return Err(refuse_acquire(&mut client, pools, &pool, e).await),
        }
    }
    let reported = pool.startup_parameters().unwrap_or_default();
    let mut params = wanted.or_defaults(&reported.defaults);
    let mut hello = Vec::with_capacity(512);
    encode_authentication_ok(&mut hello);
    for (name, value) in &reported.reported {
        let value = params.get(name).unwrap_or(value);
        // Values came from the server or the client's own startup, where
        // a NUL cannot be.
        let _ = encode_parameter_status(name, value, &mut hello);
    }
    encode_backend_key_data(slot.key.pid, slot.key.secret, &mut hello);
    encode_ready_for_query(TransactionStatus::Idle, &mut hello);
    client
        .write_all(&hello)
        .await
        .map_err(Refused::client_closed)?;
    client.flush().await.map_err(Refused::client_closed)?;
    drop(hello);
    if pools.mode() == PoolMode::Transaction {
        if let Some(l) = lease.take() {
            l.release();
        }
    }
    ctx.log_established(Established {
        user,
        database,
        upstream: pools.target(),
        upstream_tls: None,
        server_name: None,
        handshake_micros,
    });
    // What the login needed is not kept for the session's life.
    drop((startup, reported));
    let started = Instant::now();
    let mut run = Run {
        pools,
        pool: &pool,
        slot: &slot,
        client_buf: pending,
        client_scanner: MessageScanner::new(),
        from_client: 0,
        to_client: 0,
        servers: BTreeSet::new(),
        statements: ClientStatements::default(),
    };
    let ended = run.serve(&mut client, lease, &mut params).await;
    let (from_client, to_client, servers) = (run.from_client, run.to_client, run.servers.len());
    let mode = pools.mode().as_str();
    ctx.note(|r| {
        r.bytes = Some((from_client, to_client));
        r.pool = Some((mode, servers as u64));
    });
    ctx.listener
        .metrics()
        .bytes(ctx.listener.name(), from_client, to_client);
    let ended = match ended {
        Ok(()) => Ok(()),
        Err(Ending { reply, refused }) => {
            close_with(&mut client, &reply).await;
            Err(refused)
        }
    };
    info!(
        conn = ctx.id,
        listener = %ctx.listener.name(),
        peer = %ctx.peer,
        pool_mode = mode,
        server_connections = servers,
        bytes_from_client = from_client,
        bytes_to_client = to_client,
        duration_ms = started.elapsed().as_millis() as u64,
        "pooled session closed"
    );
    ended
}

/// Tells a client why it got no server connection.
async fn refuse_acquire<S: AsyncWrite + Unpin>(
    client: &mut S,
    pools: &Pools,
    pool: &Pool,
    error: AcquireError,
) -> Refused {
    let ending = acquire_ending(pools, pool, error);
    close_with(client, &ending.reply).await;
    ending.refused
}

fn acquire_ending(pools: &Pools, pool: &Pool, error: AcquireError) -> Ending {
    match error {
        AcquireError::Exhausted { waited } => Ending {
            reply: ErrorResponse::fatal(
                SqlState::TOO_MANY_CONNECTIONS,
                format!(
                    "no server connection for database {:?} and user {:?} became free within {:?}: the pool is exhausted",
                    pool.key.database, pool.key.user, pools.config.wait_timeout
                ),
            )
            .with_hint(format!(
                "All {} server connections are busy. Raise [listener.pool] size (or the user's size), or wait_timeout to wait longer; shorter transactions free them sooner.",
                pool.size
            ))
            .encode(),
            refused: Refused::new(
                RefusalReason::PoolExhausted,
                format!(
                    "waited {waited:?} for one of {} server connections of {:?}/{:?}",
                    pool.size, pool.key.database, pool.key.user
                ),
            ),
        },
        AcquireError::Login(failure) => {
            // The server's own refusal reaches the client as sent.
            let reply = failure.server_error.map(|e| e.frame).unwrap_or_else(|| {
                ErrorResponse::fatal(
                    SqlState::CONNECTION_FAILURE,
                    "the database is unavailable right now",
                )
                .with_hint("Try again later. The proxy's log has the details.")
                .encode()
            });
            Ending {
                reply,
                refused: failure.refused,
            }
        }
    }
}

/// How a session ends other than by the client leaving: what the client
/// is told, and the refusal for the audit event.
struct Ending {
    reply: Vec<u8>,
    refused: Refused,
}

impl Ending {
    fn server_lost(pools: &Pools, what: String) -> Self {
        Ending {
            reply: ErrorResponse::fatal(
                SqlState::CONNECTION_FAILURE,
                "the server connection was lost",
            )
            .with_hint("The database closed the connection or failed; connect again.")
            .encode(),
            refused: Refused::new(
                RefusalReason::UpstreamLost,
                format!("{}: {what}", pools.target()),
            ),
        }
    }

    fn malformed(detail: String) -> Self {
        Ending {
            reply: ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, detail.clone()).encode(),
            refused: Refused::new(RefusalReason::Malformed, detail),
        }
    }
}

/// How an attachment to a server connection ended.
enum Detached {
    /// At a transaction boundary: the connection goes back to its pool.
    Released,
    /// The client sent Terminate or closed its connection.
    ClientGone,
    /// The session ends with this.
    Ended(Ending),
}

/// One pooled client's running state.
struct Run<'a> {
    pools: &'a Arc<Pools>,
    pool: &'a Arc<Pool>,
    slot: &'a CancelSlot,
    client_buf: BytesMut,
    client_scanner: MessageScanner,
    from_client: u64,
    to_client: u64,
    servers: BTreeSet<u64>,
    /// The client's named prepared statements (transaction mode).
    statements: ClientStatements,
}

impl Run<'_> {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &mut S,
        mut lease: Option<Lease>,
        params: &mut Parameters,
    ) -> Result<(), Ending> {
        loop {
            let mut l = match lease.take() {
                Some(l) => l,
                None => {
                    // Idle between transactions: wait for the client.
                    if self.client_buf.is_empty() {
                        match read_holding_no_buffer(client, &mut self.client_buf).await {
                            Ok(0) | Err(_) => return Ok(()),
                            Ok(_) => {}
                        }
                    }
                    if self.client_buf.first() == Some(&frontend::TERMINATE) {
                        return Ok(());
                    }
                    match self.pools.acquire(self.pool).await {
                        Ok(l) => l,
                        Err(e) => return Err(acquire_ending(self.pools, self.pool, e)),
                    }
                }
            };
            self.servers.insert(l.conn().id);
            // Values the server connection already shares with this client
            // need no comparison; any other difference is set, and the
            // values then held are the client's own.
            if !params.shared_with(&l.conn().params) {
                if let Some(sql) = params.difference_from(&l.conn().params) {
                    match Box::pin(run_internal(l.conn(), &sql, self.pools)).await {
                        Ok(TransactionStatus::Idle) => {}
                        Ok(_) => {
                            return Err(Ending::server_lost(
                                self.pools,
                                "restoring the session parameters left a transaction open".into(),
                            ))
                        }
                        Err(Internal::Error(reply)) => {
                            l.release();
                            return Err(Ending {
                                reply,
                                refused: Refused::new(
                                    RefusalReason::NotPoolable,
                                    "the server refused the client's session parameters",
                                ),
                            });
                        }
                        Err(Internal::Lost(what)) => {
                            return Err(Ending::server_lost(self.pools, what))
                        }
                    }
                }
                l.conn().params.adopt(params);
            }
            self.slot.serving(Some(l.conn().key));
            let mut exchange = Exchange::default();
            // Boxed: an idle client's task then holds only the small state
            // of waiting, not room for both directions' state.
            let detached = Box::pin(self.attached(client, l.conn(), params, &mut exchange)).await;
            self.slot.serving(None);
            match detached {
                Detached::Released => l.release(),
                Detached::ClientGone => {
                    Box::pin(self.settle(l, exchange)).await;
                    return Ok(());
                }
                Detached::Ended(ending) => {
                    if ending.refused.reason != RefusalReason::UpstreamLost {
                        Box::pin(self.settle(l, exchange)).await;
                    }
                    return Err(ending);
                }
            }
        }
    }

    /// Gives back a server connection whose client has gone: rolled back
    /// if a transaction is open and reset in session mode, or closed when
    /// it is in the middle of something.
    async fn settle(&self, mut lease: Lease, exchange: Exchange) {
        if !exchange.answered() || self.client_scanner.inside_message() {
            return lease.close("its client left in the middle of an exchange");
        }
        if exchange.status() != TransactionStatus::Idle {
            match run_internal(lease.conn(), "ROLLBACK", self.pools).await {
                Ok(TransactionStatus::Idle) => {}
                _ => return lease.close("ROLLBACK of its client's transaction failed"),
            }
        }
        if self.pools.mode() == PoolMode::Session {
            let reset = self.pools.config.reset_query.clone();
            if !reset.is_empty() {
                match run_internal(lease.conn(), &reset, self.pools).await {
                    Ok(TransactionStatus::Idle) => {}
                    _ => return lease.close("the reset query failed"),
                }
            }
        }
        lease.release();
    }

    /// Serves the client on `server` until a transaction boundary
    /// (transaction mode), the client's end, or an error.
    async fn attached<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        client: &mut S,
        server: &mut ServerConn,
        params: &mut Parameters,
        exchange: &mut Exchange,
    ) -> Detached {
        let transaction_mode = self.pools.mode() == PoolMode::Transaction;
        let cap = self.pools.config.max_prepared_statements;
        let tracking = directions::tracks(transaction_mode, cap);
        let stop = {
            let ServerConn {
                stream,
                buf: server_buf,
                scanner: server_scanner,
                params: server_params,
                statements: server_statements,
                expected,
                ..
            } = server;
            let tracking_state = tracking.then(|| Tracking {
                client: &mut self.statements,
                cap,
                search_path: params.search_path(),
            });
            let mut common = Common::new(*exchange, expected, server_statements, transaction_mode);
            let mut up = ClientSide::new(
                &mut self.client_buf,
                &mut self.client_scanner,
                tracking_state,
            );
            let mut down =
                ServerSide::new(server_buf, server_scanner, server_params, params, tracking);
            let stop =
                directions::attached(&mut common, &mut up, &mut down, client, &mut **stream).await;
            *exchange = common.exchange;
            self.from_client += common.from_client;
            self.to_client += common.to_client;
            stop
        };
        // A server connection keeps a read buffer of ordinary size between
        // transactions (there are `size` of them, not one per client), so
        // the next transaction does not allocate it again.
        if server.buf.is_empty() && server.buf.capacity() > SERVER_BUFFER_KEPT {
            server.buf = BytesMut::new();
        }
        if self.client_buf.is_empty() {
            self.client_buf = BytesMut::new();
        }
        match stop {
            Stop::Released => Detached::Released,
            Stop::ClientGone => Detached::ClientGone,
            Stop::Malformed(detail) => Detached::Ended(Ending::malformed(detail)),
            Stop::ServerLost(what) => Detached::Ended(Ending::server_lost(self.pools, what)),
        }
    }
}

/// Reads what a client sends next, holding a buffer only while bytes are
/// there to read: a client idle between transactions costs none.
async fn read_holding_no_buffer<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        if buf.capacity() == 0 {
            *buf = BytesMut::with_capacity(2048);
        }
        match tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *reader), cx, buf) {
            std::task::Poll::Pending => {
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
                std::task::Poll::Pending
            }
            ready => ready,
        }
    })
    .await
}

/// Why a query of the pool's own did not run.
enum Internal {
    /// The server answered with this ErrorResponse (encoded, FATAL).
    Error(Vec<u8>),
    /// The connection failed.
    Lost(String),
}

/// Runs `sql` (the parameters a client needs, ROLLBACK, the reset
/// query) on a server connection no client is using, and reads its
/// results up to ReadyForQuery; returns the transaction status.
async fn run_internal(
    conn: &mut ServerConn,
    sql: &str,
    pools: &Pools,
) -> Result<TransactionStatus, Internal> {
    let mut query = Vec::with_capacity(sql.len() + 6);
    encode_query(sql, &mut query).map_err(|e| Internal::Lost(e.to_string()))?;
    let work = async {
        conn.stream
            .write_all(&query)
            .await
            .map_err(|e| Internal::Lost(format!("writing to the server: {e}")))?;
        let mut error = None;
        loop {
            loop {
                let scanned = conn.scanner.scan(&conn.buf, 1 << 20, |tag| match tag {
                    backend::READY_FOR_QUERY
                    | backend::PARAMETER_STATUS
                    | backend::ERROR_RESPONSE => usize::MAX,
                    _ => 0,
                });
                match scanned {
                    Err(e) => {
                        return Err(Internal::Lost(format!(
                            "invalid message from the server: {e}"
                        )))
                    }
                    Ok(Scanned::NeedMore) => break,
                    Ok(Scanned::Continues { len }) => conn.buf.advance(len),
                    Ok(Scanned::Message {
                        tag, prefix, len, ..
                    }) => {
                        match tag {
                            backend::PARAMETER_STATUS => {
                                if let Ok((name, value)) = parse_parameter_status(prefix) {
                                    conn.params.record(name, value);
                                }
                            }
                            backend::ERROR_RESPONSE => {
                                let fields = intransit_wire::pg::parse_error_response(prefix).ok();
                                let message = fields
                                    .as_ref()
                                    .and_then(|f| f.message())
                                    .unwrap_or("error")
                                    .to_owned();
                                let code = fields
                                    .as_ref()
                                    .and_then(|f| f.code())
                                    .unwrap_or(SqlState::PROTOCOL_VIOLATION);
                                error = Some(ErrorResponse::fatal(code, message).encode());
                            }
                            backend::READY_FOR_QUERY => {
                                let status = TransactionStatus::parse(prefix).map_err(|e| {
                                    Internal::Lost(format!("invalid ReadyForQuery: {e}"))
                                })?;
                                conn.buf.advance(len);
                                return match error {
                                    Some(reply) => Err(Internal::Error(reply)),
                                    None => Ok(status),
                                };
                            }
                            _ => {}
                        }
                        conn.buf.advance(len);
                    }
                }
            }
            conn.buf.reserve(4096);
            match conn.stream.read_buf(&mut conn.buf).await {
                Ok(0) => return Err(Internal::Lost("the server closed the connection".into())),
                Err(e) => return Err(Internal::Lost(format!("reading from the server: {e}"))),
                Ok(_) => {}
            }
        }
    };
    let limit = pools.config.server_login_timeout;
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(Internal::Lost(format!(
            "the server did not answer the pool's own query within {limit:?}"
        ))),
    }
}
