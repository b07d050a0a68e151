//! intransit-scan against real peers on loopback: one test binary, one
//! module per kind of peer.
//!
//! Every server here is started by the test itself on 127.0.0.1 and a
//! random port; nothing reaches beyond the machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Certificates (a root, an intermediate and a leaf made with rcgen) and a
/// one-connection rustls server that reports what the client sent.
mod support;

/// A real PostgreSQL with native TLS and one without, from
/// intransit-testkit; and fake servers that answer the SSLRequest oddly.
mod postgres;

/// Direct TLS against rustls servers: chain as sent, SNI, ALPN, TLS 1.2,
/// and an out-of-order chain.
mod tls;

/// A fake MySQL server speaking the real greeting and SSLRequest bytes,
/// then TLS. A real MariaDB comes with the MariaDB testkit server.
mod mysql;

/// Servers that accept and say nothing, and ports that refuse.
mod failures;
