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
//! only through [`write_file_atomic`] with mode 0600, or through
//! [`write_file_atomic_owned`] with the owner and mode of the server key file
//! they replace.
//!
//! # Map
//!
//! - [`key`]: [`KeyAlgorithm`], the key types the CA can generate.
//! - [`request`]: [`IssueRequest`], [`CertificateKind`] and [`Validity`],
//!   what a caller asks for, and the checks on user input
//!   ([`Validity::try_days_from_now`]).
//! - [`authority`]: [`CertificateAuthority`] and [`IssuedCertificate`], the
//!   signing itself: certificates and CRLs
//!   ([`CertificateAuthority::sign_crl`]); loading and saving the CA, with
//!   the key optionally encrypted
//!   ([`CertificateAuthority::load_with_passphrase`],
//!   [`CertificateAuthority::save_encrypted`]).
//! - `key_encryption` (private): PKCS#8 `ENCRYPTED PRIVATE KEY` with PBES2
//!   (PBKDF2-HMAC-SHA256, AES-256-CBC), OpenSSL-compatible; the ASN.1 comes
//!   from the `pkcs8` crate, the cryptography from aws-lc-rs.
//! - [`revocation`]: [`RevocationReason`] and [`RevokedCertificate`], the
//!   entries of a CRL.
//! - [`renewal`]: [`RenewalPolicy`], [`RenewalPlan`] (when a certificate is
//!   due, with deterministic per-serial jitter), [`check_expiry`],
//!   [`crl_freshness`] (a CRL judged against its own validity period) and
//!   [`check_crl_freshness`]. Pure: the clock is a parameter.
//! - [`storage`]: [`write_file_atomic`] (and [`write_file_atomic_owned`],
//!   which also sets the owner) and [`CertificatePaths`], the on-disk
//!   layout of one certificate, and the all-or-nothing replacement of a
//!   certificate's files.
//! - [`inspect`]: [`summarize`] (and [`summarize_crl`]), fingerprints, SPKI
//!   pins and PEM decoding, with PEM errors in words ([`describe_pem_error`]).
//! - [`state`]: [`StateDir`], the state directory, and the quickstart used
//!   by `intransit up`.
//! - [`trust`]: [`ServerTrust`], whether a server's certificate is trusted
//!   (webpki, plus libpq's acceptance of a certificate that is itself a
//!   trust anchor), shared by the proxy's upstream leg and `scan`; and
//!   [`describe_certificate_error`], certificate verdicts in words.
//! - [`acme`]: the PKI side of ACME: the key and CSR of an order
//!   ([`AcmeRequest`]), the chain it returned checked against them
//!   ([`AcmeCertificate`]) and where it came from ([`AcmeOrigin`]);
//!   [`StateDir::install_acme`] installs it. The protocol itself is the
//!   `intransit-acme` crate's.
//! - [`tls_alpn`]: TLS-ALPN-01 answers ([`ChallengeCertificate`]) and the
//!   registry of pending ones a listener answers from
//!   ([`TlsAlpnChallenges`]), in memory or through challenge files in the
//!   state directory.
//! - [`inventory`]: `<state>/inventory.json` and the operations on named
//!   certificates: [`StateDir::issue`], [`StateDir::inventory`],
//!   [`StateDir::renew`], [`StateDir::revoke`], [`StateDir::write_crl`],
//!   [`StateDir::check_expiry`], [`StateDir::check_crl`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod acme;
pub mod authority;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod inventory;
pub mod key;
mod key_encryption;
pub mod renewal;
pub mod request;
pub mod revocation;
pub mod state;
pub mod storage;
pub mod tls_alpn;
pub mod trust;

pub use acme::{AcmeCertificate, AcmeOrigin, AcmeRequest};
pub use authority::{CertificateAuthority, IssuedCertificate, CA_ORGANIZATION};
pub use error::PkiError;
pub use inspect::{
    describe_pem_error, pem_to_der_certs, pem_to_der_crls, sha256_fingerprint, spki_pin, summarize,
    summarize_crl, CertificateSummary, CrlSummary,
};
pub use inventory::{
    CertStatus, Inventory, IssuedEntry, PreviousSerial, RenewOptions, RenewOutcome,
};
pub use key::KeyAlgorithm;
pub use key_encryption::PBKDF2_ITERATIONS;
pub use renewal::{
    check_crl_freshness, check_expiry, crl_freshness, days_until, CrlFinding, CrlFreshness,
    CrlWarning, ExpiryFinding, ExpiryState, RenewalPlan, RenewalPolicy,
};
pub use request::{
    CertificateKind, IssueRequest, Validity, CA_VALIDITY_DAYS, CLIENT_VALIDITY_DAYS,
    CLOCK_SKEW_ALLOWANCE, MAX_VALIDITY_DAYS, SERVER_VALIDITY_DAYS,
};
pub use revocation::{RevocationReason, RevokedCertificate};
pub use state::{Quickstart, QuickstartLifetimes, StateDir, QUICKSTART_CA_NAME};
#[cfg(unix)]
pub use storage::write_file_atomic_owned;
pub use storage::{write_file_atomic, CertificatePaths, FileOwnership};
pub use tls_alpn::{ChallengeCertificate, TlsAlpnChallenges, ACME_TLS_ALPN};
pub use trust::{describe_certificate_error, CaNotAnAnchor, ServerTrust, ServerTrustError};
