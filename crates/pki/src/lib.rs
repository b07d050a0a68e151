//! The intransit certificate authority.
//!
//! This crate owns everything intransit knows about X.509: generating key
//! pairs, running a small local certificate authority, issuing server and
//! client certificates that rustls/webpki and OpenSSL (and therefore
//! PostgreSQL and MariaDB) accept, storing keys and certificates on disk, and
//! summarising certificates for humans and reports.
//!
//! It does no networking and no logging. Private keys never appear in
//! `Debug` or `Display` output or in error messages; they are written to disk
//! only through [`write_file_atomic`] with mode 0600.
//!
//! # Map
//!
//! - [`key`]: [`KeyAlgorithm`], the key types the CA can generate.
//! - [`request`]: [`IssueRequest`], [`CertificateKind`] and [`Validity`],
//!   what a caller asks for.
//! - [`authority`]: [`CertificateAuthority`] and [`IssuedCertificate`], the
//!   signing itself.
//! - [`storage`]: [`write_file_atomic`] and [`CertificatePaths`], the on-disk
//!   layout of one certificate.
//! - [`inspect`]: [`summarize`], fingerprints, SPKI pins and PEM decoding.
//! - [`state`]: [`StateDir`], the state directory used by `intransit up`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod authority;
mod error;
pub mod inspect;
pub mod key;
pub mod request;
pub mod state;
pub mod storage;

pub use authority::{CertificateAuthority, IssuedCertificate, CA_ORGANIZATION};
pub use error::PkiError;
pub use inspect::{pem_to_der_certs, sha256_fingerprint, spki_pin, summarize, CertificateSummary};
pub use key::KeyAlgorithm;
pub use request::{
    CertificateKind, IssueRequest, Validity, CA_VALIDITY_DAYS, CLIENT_VALIDITY_DAYS,
    CLOCK_SKEW_ALLOWANCE, SERVER_VALIDITY_DAYS,
};
pub use state::{Quickstart, StateDir, QUICKSTART_CA_NAME};
pub use storage::{write_file_atomic, CertificatePaths};
