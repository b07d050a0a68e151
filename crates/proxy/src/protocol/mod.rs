//! What is said on the wire: one folder per database protocol, each with
//! its server-mode negotiation, client-mode negotiation and upstream leg
//! in their own files, and `plain_tls` for protocols the proxy does not
//! speak. `upstream` holds what opening the upstream leg has in common.
//!
//! This module only dispatches a connection to its protocol; the
//! protocols import nothing from it.

use std::sync::Arc;

use intransit_config::Protocol;

use crate::conn::{ConnectionContext, Refused};
use crate::listener::client_mode::PreparedClientListener;
use crate::listener::server_mode::PreparedListener;
use crate::net::BoxStream;
use crate::refusal::RefusalReason;

pub(crate) use postgres::pool::Pools;

pub(crate) mod mysql;
pub(crate) mod plain_tls;
pub(crate) mod postgres;
pub(crate) mod upstream;

/// The ALPN protocols a server-mode listener for `protocol` offers.
pub(crate) fn alpn(protocol: Protocol) -> Vec<Vec<u8>> {
    match protocol {
        Protocol::Postgres => vec![intransit_wire::pg::ALPN.to_vec()],
        Protocol::Tls | Protocol::Mysql => Vec::new(),
    }
}

/// Runs one connection of a server-mode listener from accept to close.
/// Whether it has a `max_connections` slot is known once the TLS
/// handshake has verified the client (`listener::handshake::accept`).
///
/// `pools` are the listener's PostgreSQL pools, if it has `[listener.pool]`.
pub(crate) async fn serve_server_mode(
    ctx: ConnectionContext<PreparedListener>,
    stream: BoxStream,
    pools: Option<Arc<Pools>>,
) -> Result<(), Refused> {
    match ctx.listener.basics.protocol {
        Protocol::Tls => Box::pin(plain_tls::serve(ctx, stream)).await,
        Protocol::Postgres => postgres::server_mode::serve(ctx, stream, pools).await,
        Protocol::Mysql => Box::pin(mysql::server_mode::serve(ctx, stream)).await,
    }
}

/// Runs one connection of a client-mode listener from accept to close,
/// after checking that the peer may speak plaintext here. Its
/// `max_connections` slot was decided at accept.
pub(crate) async fn serve_client_mode(
    ctx: ConnectionContext<PreparedClientListener>,
    stream: BoxStream,
) -> Result<(), Refused> {
    let admission = ctx.admission.at_accept();
    if !ctx.listener.admits(&ctx.peer) {
        // Nothing is read: whatever the peer sent stays unprocessed.
        return Err(Refused::new(
            RefusalReason::PlaintextRefused,
            format!(
                "plaintext from {}, which is not this host, on a client-mode listener without allow_remote_plaintext",
                ctx.peer
            ),
        ));
    }
    match ctx.listener.basics.protocol {
        Protocol::Postgres => postgres::client_mode::serve(ctx, stream, admission).await,
        Protocol::Mysql => mysql::client_mode::serve(ctx, stream, admission).await,
        Protocol::Tls => plain_tls::serve_client(ctx, stream, admission).await,
    }
}
