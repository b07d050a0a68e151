//! Running a database server on this machine, the parts that `intransit
//! up`'s demo databases and the test kit's servers share: which account
//! the server runs as ([`ServerAccount`]), where PostgreSQL's server
//! programs are installed ([`postgres_bindirs`]), and whether a
//! MySQL-protocol server is up ([`mysql_greets`]).
//!
//! Each caller keeps its own policy: what it tells a user who lacks a
//! program or an account, how long it waits, what it runs.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod account;
mod locate;

pub use account::ServerAccount;
pub use locate::{debian_bindirs, mysql_greets, pg_config_bindir, postgres_bindirs};
