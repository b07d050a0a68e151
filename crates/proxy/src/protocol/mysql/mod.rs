//! MySQL and MariaDB negotiation: the server speaks first, so in server
//! mode the proxy speaks for it until the client is verified.
//!
//! ```text
//! proxy's own greeting (mysql_server_version, its scramble, CLIENT_SSL) --> client
//! client SSLRequest (seq 1) --> TLS handshake (the ClientHello follows at once)
//! client HandshakeResponse without TLS --> ERR 3159, closed, nothing sent upstream
//! HandshakeResponse inside TLS (seq 2) --certificate, allow, db_users-->
//!   only now: connect upstream, read the real greeting
//!   plaintext upstream: response (seq 1)
//!   upstream_tls: proxy's SSLRequest (seq 1), TLS, response (seq 2)
//!   the response names a placeholder auth plugin and carries no answer
//! server's AuthSwitchRequest (its account's plugin, fresh challenge) --> client (seq 3)
//! authentication exchange relayed, sequence ids renumbered,
//! until the server's OK or ERR; then bytes are copied, the client's
//! commands watched for COM_CHANGE_USER (db_users again, ERR 1045)
//! ```
//!
//! The client's first auth response answers the proxy's scramble and is
//! dropped. The server sees the capabilities the proxy's greeting offered
//! and the client chose, minus what the server lacks; none that hide
//! commands (compression, MariaDB's extended capabilities).
//!
//! Client mode (`client_mode`) passes the real greeting to a local application in
//! plaintext, through the same upstream connector (`upstream`):
//!
//! ```text
//! connect upstream, read its greeting (no CLIENT_SSL: ERR 1105, closed)
//!   --> greeting with CLIENT_SSL cleared to the application (seq 0)
//! application HandshakeResponse in plaintext (seq 1)
//!   --> proxy's SSLRequest upstream (seq 1), TLS, response with CLIENT_SSL set (seq 2)
//! authentication exchange relayed (application = upstream - 1)
//! ```
//!
//! `caching_sha2_password` full authentication (MySQL 8) wants a secure
//! upstream leg: over plaintext TCP it asks for the server's RSA key and
//! works only if the client allows that; a unix-socket or TLS upstream
//! counts as secure. In client mode the server sees TLS and expects the
//! cleartext password, but the client judges its own leg: it sends the
//! password over a unix-socket listener, and over loopback TCP asks for
//! the RSA key instead, which a server on TLS takes for the password.
//!
//! This folder owns the order of events and the MySQL packets sent to
//! clients; the bytes are parsed and built by `intransit_wire::mysql`.
//!
//! - `packets`: reading packets, and the ERR packets the proxy sends.
//! - `server_mode`: TLS clients, as above.
//! - `client_mode`: plaintext applications, TLS to the database.
//! - `upstream`: the MySQL upstream connector (greeting, the proxy's own
//!   SSLRequest, TLS), shared by both modes.
//! - `relay`: the authentication exchange relayed with sequence ids
//!   renumbered.

pub(crate) mod client_mode;
pub(crate) mod negotiation;
pub(crate) mod packets;
pub(crate) mod relay;
pub(crate) mod server_mode;
pub(crate) mod upstream;
