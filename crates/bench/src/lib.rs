//! Measuring what intransit costs next to PostgreSQL's own TLS.
//!
//! - [`stats`]: percentiles and the spread of repeated runs; pure.
//! - [`pg`]: a libpq-like client: SSLRequest, TLS 1.3 with a client
//!   certificate, StartupMessage up to ReadyForQuery.
//! - [`runner`]: timed probes interleaved across targets, and many idle
//!   sessions held open.
//! - [`process`]: CPU time and resident memory of a process from `/proc`.
//!
//! The `intransit-bench-pg` binary wires these together for
//! `scripts/bench-postgres.sh`; a later `intransit bench` command is meant
//! to reuse the same modules. Nothing here is a timed test: results go to
//! `docs/benchmarks.md`.

pub mod pg;
pub mod process;
pub mod runner;
pub mod stats;
