//! The two kinds of listener, prepared before anything binds: server mode
//! (TLS from clients) and client mode (plaintext from local applications),
//! and the TLS handshake a server-mode listener runs with each client
//! (`handshake`: the route by server name, the route's material, the
//! re-verification of resumed sessions).

pub(crate) mod client_mode;
pub(crate) mod handshake;
pub(crate) mod server_mode;
