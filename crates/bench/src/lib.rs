//! Measuring what TLS costs: `intransit bench` and the scripts behind
//! `docs/benchmarks.md`.
//!
//! - [`client`]: the TLS configurations measured (TLS 1.2, 1.3, resumed,
//!   client certificate, X25519, X25519MLKEM768) and connecting to a
//!   `postgres://`, `mysql://` or `tls://` target the way its clients do
//!   (the pre-TLS step is `intransit_scan::request_tls`).
//! - [`session`]: logins and one trivial operation per protocol
//!   (PostgreSQL and MySQL `SELECT 1`, Redis `PING` and `GET`).
//! - [`measure`]: bounded, concurrent measuring loops with CPU and memory
//!   sampling of watched processes.
//! - [`plan`]: what `intransit bench` runs, interleaving targets.
//! - [`report`]: tables, Markdown and JSON.
//! - [`stats`]: percentiles and the spread of repeated runs; pure.
//! - [`pg`]: a libpq-like client: SSLRequest, TLS 1.3 with a client
//!   certificate, StartupMessage up to ReadyForQuery.
//! - [`runner`]: timed probes interleaved across targets, and many idle
//!   sessions held open.
//! - [`process`]: CPU time and resident memory of a process from `/proc`.
//!
//! The `intransit-bench-pg` binary wires `pg` and `runner` together for
//! `scripts/bench-postgres.sh`. Nothing here is a timed test: results go to
//! `docs/benchmarks.md`.

pub mod client;
pub mod measure;
pub mod pg;
pub mod plan;
pub mod process;
pub mod report;
pub mod runner;
pub mod session;
pub mod stats;
