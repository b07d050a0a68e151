//! The two kinds of listener, prepared before anything binds: server mode
//! (TLS from clients) and client mode (plaintext from local applications).

pub(crate) mod client_mode;
pub(crate) mod server_mode;
