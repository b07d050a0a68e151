//! PostgreSQL negotiation, as a typed state machine over one connection.
//!
//! ```text
//! AwaitingRequest --SSLRequest--> 'S' --> TlsRequested
//!        |  ^   \--first byte 0x16 (direct TLS)--> TlsRequested
//!        |  '--GSSENCRequest--> 'N' (once)
//!        |--CancelRequest--> forwarded upstream, closed
//!        '--StartupMessage--> ErrorResponse 28000 (TLS required), closed
//! TlsRequested --handshake + policy--> TlsEstablished
//! TlsEstablished --StartupMessage--> StartupReceived --db_users--> Authorized
//! Authorized --connect upstream [SSLRequest, TLS], send StartupMessage--> login relayed
//! login relayed --ReadyForQuery--> bytes copied both ways
//!               '--ErrorResponse--> relayed to the client, closed (upstream_refused)
//! ```
//!
//! With `upstream_tls`, the proxy sends its own SSLRequest upstream (or
//! starts TLS at once with ALPN `postgresql` when `direct`) and runs TLS
//! before the StartupMessage, and removes `SCRAM-SHA-256-PLUS` from the
//! server's first authentication request: the client's channel binding
//! would name the proxy's certificate, not the server's.
//!
//! Client mode (`client_mode`) is the mirror image over the same upstream
//! connector (`upstream`):
//!
//! ```text
//! plaintext from a local application:
//!   SSLRequest --> 'N' (once)      GSSENCRequest --> 'N' (once)
//!   CancelRequest --> forwarded upstream over TLS, closed
//!   StartupMessage --> connect, SSLRequest (or direct TLS), TLS, StartupMessage --> login relayed --> bytes copied
//!   first byte 0x16 (the application starts TLS) --> closed
//! ```
//!
//! The server, on TLS, offers `SCRAM-SHA-256-PLUS`; libpq on a connection
//! without TLS refuses such an offer ("server offered SCRAM-SHA-256-PLUS
//! authentication over a non-SSL connection"), so client mode removes it
//! too. The application then uses SCRAM-SHA-256 with the GS2 flag `n` (it
//! cannot bind a channel), which the server accepts on TLS.
//!
//! Each state is its own type and each step consumes it, so a connection
//! cannot skip the TLS handshake or the user check. This folder owns the
//! order of events and the messages sent to clients; the bytes themselves
//! are built and parsed by `intransit_wire::pg`.
//!
//! - `messages`: reading initial messages, and the ErrorResponses the
//!   proxy sends.
//! - `server_mode`: the state machine above, for TLS clients.
//! - `client_mode`: plaintext applications, TLS to the database.
//! - `relay`: the login relayed until ReadyForQuery, in either mode, so
//!   a login the database refuses is the connection's refusal.
//! - `upstream`: the one PostgreSQL upstream connector (SSLRequest or
//!   direct TLS), the first authentication request with `-PLUS`
//!   mechanisms removed, and cancel forwarding.
//! - `session`: both legs open, after negotiation; where a pooled session
//!   will track messages.
//! - `pool`: connection pooling; the proxy's own logins to the database
//!   (`pool::credentials`, `pool::login`).

pub(crate) mod client_mode;
pub(crate) mod messages;
pub(crate) mod negotiation;
pub(crate) mod pool;
pub(crate) mod relay;
pub(crate) mod server_mode;
pub(crate) mod session;
pub(crate) mod upstream;
