//! intransit-wire: the database and TLS wire formats intransit speaks, as pure
//! functions over byte slices.
//!
//! This crate owns the bytes of connection setup: the PostgreSQL messages
//! exchanged before and during authentication ([`pg`]), the MySQL/MariaDB
//! connection-phase packets ([`mysql`]) and the TLS record header ([`tls`]),
//! and it makes text a peer sent safe to show ([`printable`]). Parsers take
//! everything received so far and answer `Ok(Some((message, consumed)))`, `Ok(None)` for "need more bytes", or a
//! typed [`WireError`]; encoders return the exact bytes to send.
//!
//! **Architecture Invariant:** this crate never does I/O. It has no sockets,
//! no async runtime, no clocks, no logging and no configuration; it never
//! decides policy (whether TLS is required, who may log in). Everything a peer
//! sends is validated here without panicking, which the `fuzz/` crate at the
//! workspace root checks through [`fuzzing`].

#![warn(missing_docs)]

mod error;
pub mod hello;
pub mod mysql;
pub mod pg;
mod text;
pub mod tls;

#[doc(hidden)]
pub mod fuzzing;

pub use error::WireError;
pub use text::printable;
