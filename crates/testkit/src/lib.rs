//! Real servers and real client programs for intransit's integration tests.
//!
//! This crate owns everything a test needs to talk to a genuine database
//! rather than a mock: a private PostgreSQL per test binary ([`PgServer`]),
//! a private MariaDB ([`MariaDbServer`]), a private ACME server per test
//! ([`Pebble`]),
//! names and ports that keep parallel tests apart ([`unique_name`],
//! [`free_port`]), several hosts on one machine in network namespaces
//! ([`Subnet`]) with a real load balancer in front ([`HaProxy`]), and
//! lookup of client programs such as psql and openssl ([`require_tool`]).
//!
//! It must never skip a test: when a server or client program is missing,
//! every helper returns an error that names the `apt-get` command which
//! installs it, so the test fails with the fix in its message. It must never
//! touch a system cluster either: each server lives in its own temporary
//! directory, listens on 127.0.0.1 and a socket inside that directory, and is
//! removed when the test process ends, however it ends.

#![forbid(unsafe_code)]

mod haproxy;
mod isolation;
mod mariadb;
mod netns;
mod pebble;
mod postgres;
mod redis;
mod supervisor;
mod tools;

pub use haproxy::HaProxy;
pub use isolation::{free_port, unique_name};
pub use mariadb::{run_mariadb, MariaDbAuth, MariaDbOptions, MariaDbServer, MariaDbSsl};
pub use netns::Subnet;
pub use pebble::{Pebble, PebbleOptions};
pub use postgres::{PgOptions, PgServer, PgSsl};
pub use redis::{RedisServer, RedisTls};
pub use tools::{require_tool, run_psql};
