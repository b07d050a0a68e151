//! The session phase of a PostgreSQL connection: negotiation is over and
//! both legs are open. Today the bytes flow untouched both ways until
//! either side closes. A pooled session will live here: it tracks the
//! messages that say when a server connection may be released
//! (ReadyForQuery, Sync, the end of COPY) and hands it back to its pool.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::conn::{ConnectionContext, Listener, Refused};
use crate::copy;
use crate::net::BoxStream;

/// Both legs of an established PostgreSQL connection: the peer's (TLS in
/// server mode, plaintext in client mode) and the database's.
pub(crate) struct Session<P> {
    pub(crate) peer: P,
    pub(crate) upstream: BoxStream,
}

impl<P: AsyncRead + AsyncWrite + Unpin> Session<P> {
    /// Copies bytes both ways until both sides close.
    pub(crate) async fn run<L: Listener>(self, ctx: &ConnectionContext<L>) -> Result<(), Refused> {
        copy::forward(ctx, self.peer, self.upstream).await
    }
}
