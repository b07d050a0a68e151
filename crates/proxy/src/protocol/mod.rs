//! What is said on the wire, one module per protocol.

pub(crate) mod mysql;
pub(crate) mod plain_tls;
pub(crate) mod postgres;
