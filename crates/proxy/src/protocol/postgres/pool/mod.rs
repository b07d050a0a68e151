//! Connection pooling for server-mode PostgreSQL listeners
//! (`[listener.pool]`): the proxy logs in to the database itself and shares
//! its server connections between clients.
//!
//! - `credentials`: what the proxy holds to log in as each database user
//!   (`auth_file` passwords, configured certificates, the minting CA).
//! - `login`: one login to PostgreSQL with them, up to ReadyForQuery.

// Nothing acquires server connections through these yet.
#[allow(dead_code)]
pub(crate) mod credentials;
#[allow(dead_code)]
pub(crate) mod login;
