//! Integration tests of intransit-pki against real verifiers: the openssl
//! command line (the library PostgreSQL, libpq and MariaDB use) and
//! rustls/webpki (what the proxy uses). openssl must be installed; a missing
//! binary fails the tests with an install hint.

/// Shared helpers: openssl runner, in-memory rustls handshake, file utilities.
mod common;

/// The CA itself: generate/save/load round trips, loading CAs made elsewhere,
/// rejected inputs, file modes, redaction, and what goes into certificates.
mod authority;

/// Every key algorithm through openssl and rustls; fingerprints and pins
/// compared with openssl; name and trust failures seen by rustls.
mod interop;

/// `StateDir::ensure_quickstart`: first run, reuse, re-issue, and refusing to
/// touch a damaged or expired CA.
mod quickstart;
