//! Integration tests of intransit-pki against real verifiers: the openssl
//! command line (the library PostgreSQL, libpq and MariaDB use) and
//! rustls/webpki (what the proxy uses). openssl must be installed; a missing
//! binary fails the tests with an install hint.

/// Certificates from an ACME CA: the CSR, the returned chain checked
/// against key and names, installed and recorded; the local CA refuses to
/// renew them.
mod acme;

/// Shared helpers: openssl runner, in-memory rustls handshake, file utilities.
mod common;

/// The CA itself: generate/save/load round trips, loading CAs made elsewhere,
/// rejected inputs, file modes, redaction, and what goes into certificates.
mod authority;

/// Passphrase-protected CA keys: openssl reads ours and we read openssl's;
/// missing, wrong and unsupported passphrases; `StateDir::init_ca`.
mod encryption;

/// Every key algorithm through openssl and rustls; fingerprints and pins
/// compared with openssl; name and trust failures seen by rustls.
mod interop;

/// The inventory: issuing named certificates, listing them, status over a
/// fake clock, refusing existing names and occupied directories, bad input
/// leaving nothing behind, old state directories, expiry checks.
mod inventory;

/// `StateDir::ensure_quickstart`: first run, reuse, re-issue, and refusing to
/// touch a damaged or expired CA.
mod quickstart;

/// Renewal: not due, due, forced, keeping the key, history, jitter.
mod renewal;

/// Revocation and CRLs, checked with `openssl verify -crl_check` and
/// `openssl crl -text`.
mod revocation;
