//! intransit-scan: looking at a database server's TLS the way its clients
//! see it.
//!
//! This crate owns probing endpoints: turning `postgres://`, `mysql://` and
//! `tls://` targets into connections ([`Target`]), starting TLS the way
//! each database's clients do (PostgreSQL SSLRequest, MySQL `CLIENT_SSL`,
//! or TLS from the first byte), and reporting what the server presented
//! ([`fetch_chain`], [`FetchedChain`]) and whether its chain is in order
//! ([`chain_order`]). It is the engine under `intransit cert inspect` and,
//! later, `intransit scan`.
//!
//! **What it fetches is unverified.** The probe accepts any certificate
//! chain, because the point is to look at it: nothing here says a server is
//! genuine, and a result must never be used to trust one.
//!
//! **It never sends application data.** A probe stops after the TLS
//! handshake: no PostgreSQL StartupMessage, no MySQL HandshakeResponse, no
//! user name or password, no query. The TLS stream never leaves this crate.
//! [`request_tls`] hands out only the pre-TLS step (SSLRequest or MySQL
//! CLIENT_SSL) on the caller's own socket, for `intransit bench`, which
//! runs its own verified TLS and login.
//!
//! It must never listen, proxy or write files; it reads no configuration
//! and keeps no state between probes. The bytes of every protocol it speaks
//! (PostgreSQL, MySQL, TLS records and hand-built ClientHellos) are encoded
//! and parsed by `intransit-wire`; this crate only drives the sockets, and
//! shows server text through `intransit_wire::printable`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod chain;
mod error;
mod evaluate;
mod fetch;
mod negotiate;
mod options;
pub mod plaintext;
mod session;
mod survey;
mod target;

pub use chain::{chain_order, chain_order_with_anchors, ChainOrder};
pub use error::{ScanError, Stage};
pub use evaluate::{evaluate, TrustInput, SYSTEM_BUNDLE};
pub use fetch::{fetch_chain, AcceptAnyChain, FetchOptions, FetchedChain, DEFAULT_TIMEOUT};
pub use negotiate::{request_tls, TlsRequested};
pub use options::{ClientIdentity, SurveyOptions};
pub use plaintext::Plaintext;
pub use survey::{survey, Survey, VersionSupport};
pub use target::{Target, TargetError, MYSQL_DEFAULT_PORT, POSTGRES_DEFAULT_PORT};
