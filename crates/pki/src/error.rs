//! The error type of the crate.
//!
//! Messages say what failed and, where there is one, what to do about it.
//! Following the convention of `std::error::Error`, a variant that wraps
//! another error exposes it through `source()` and does not repeat it in its
//! own message, so a binary printing the whole chain prints each cause once.
//! No variant ever carries private key material.

use std::io;
use std::path::PathBuf;

use time::OffsetDateTime;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Reading, writing or creating a file or directory failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done, e.g. "reading CA certificate".
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// A stored CA could not be used; the source says why.
    #[error("loading the CA from {}", path.display())]
    Load {
        /// The CA directory.
        path: PathBuf,
        /// What was wrong with it.
        #[source]
        source: Box<PkiError>,
    },

    /// Key generation or certificate signing failed inside rcgen/aws-lc-rs.
    #[error("{action}")]
    Crypto {
        /// What was being done, e.g. "signing the certificate".
        action: String,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },

    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,

    /// A PEM document could not be decoded.
    #[error("{what} is not valid PEM: {detail}")]
    Pem {
        /// Which document, e.g. "CA certificate".
        what: &'static str,
        /// Why it was rejected.
        detail: String,
    },

    /// A PEM document did not contain the expected block.
    #[error("{what} contains no {label} PEM block")]
    MissingPem {
        /// Which document.
        what: &'static str,
        /// The expected block, e.g. "CERTIFICATE".
        label: &'static str,
    },

    /// A certificate could not be parsed as X.509, or contains something we
    /// cannot work with.
    #[error("{what} is not a usable X.509 certificate: {detail}")]
    Certificate {
        /// Which certificate.
        what: &'static str,
        /// Why it was rejected.
        detail: String,
    },

    /// A private key could not be decoded or is of an unsupported type.
    // The decoder's own message is deliberately not included: it could echo
    // fragments of the key.
    #[error(
        "{what} is not a supported private key \
         (expected an unencrypted ECDSA P-256/P-384, Ed25519 or RSA key \
         in PKCS#8, SEC1 or PKCS#1 PEM)"
    )]
    PrivateKey {
        /// Which key, e.g. "CA private key".
        what: &'static str,
    },

    /// The private key given for a CA does not belong to its certificate.
    #[error("the CA private key does not match the public key in the CA certificate")]
    KeyMismatch,

    /// A certificate was offered as a CA but is not allowed to sign certificates.
    #[error(
        "the certificate {subject:?} is not a CA certificate \
         (it needs BasicConstraints CA:true and, if KeyUsage is present, keyCertSign)"
    )]
    NotCa {
        /// Subject of the offending certificate.
        subject: String,
    },

    /// The CA certificate has expired, so nothing it signs can be trusted.
    #[error(
        "the CA certificate expired at {}; create a new CA and distribute its certificate",
        rfc3339(not_after)
    )]
    CaExpired {
        /// When the CA certificate expired.
        not_after: OffsetDateTime,
    },

    /// Only one of the two CA files exists.
    #[error(
        "the CA in {} is incomplete: {} is missing; restore it from a backup, \
         or move the directory away to create a new CA",
        dir.display(),
        missing.display()
    )]
    IncompleteCa {
        /// The CA directory.
        dir: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },

    /// A certificate request is not acceptable.
    #[error("invalid certificate request: {0}")]
    InvalidRequest(String),

    /// A validity period ends before it starts.
    #[error(
        "invalid validity: not_after ({}) must be later than not_before ({})",
        rfc3339(not_after),
        rfc3339(not_before)
    )]
    InvalidValidity {
        /// Requested start.
        not_before: OffsetDateTime,
        /// Requested end.
        not_after: OffsetDateTime,
    },

    /// A certificate's validity would begin only after the CA has expired.
    #[error(
        "the CA expires at {}, before the requested validity begins ({}); renew the CA",
        rfc3339(ca_not_after),
        rfc3339(not_before)
    )]
    CaExpiresFirst {
        /// Requested start of validity.
        not_before: OffsetDateTime,
        /// End of the CA's validity.
        ca_not_after: OffsetDateTime,
    },

    /// A key algorithm name was not recognised.
    #[error(
        "unknown key algorithm {0:?}; expected one of \
         ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072, rsa-4096"
    )]
    UnknownKeyAlgorithm(String),

    /// A certificate name (a directory under `certs/`) is not acceptable.
    #[error(
        "invalid certificate name {0:?}: use 1 to 255 letters, digits, '.', '_' or '-', \
         not starting with '.' and without '..'"
    )]
    InvalidCertificateName(String),

    /// A CA directory holds neither of the CA files.
    #[error("there is no CA in {}: create one first", dir.display())]
    NoCa {
        /// The CA directory.
        dir: PathBuf,
    },

    /// A CA already exists where a new one was to be created.
    #[error(
        "a CA already exists in {}; replacing it would invalidate every certificate it issued, \
         so it is kept unless replacement is forced",
        dir.display()
    )]
    CaExists {
        /// The CA directory.
        dir: PathBuf,
    },

    /// The CA private key is encrypted and no passphrase was supplied.
    #[error("the CA private key {} is encrypted: a passphrase is needed to use it", path.display())]
    PassphraseRequired {
        /// The key file.
        path: PathBuf,
    },

    /// The passphrase does not decrypt the CA private key.
    // A wrong passphrase shows up as bad padding or a key that does not
    // parse after decryption; both are reported as this, never with details.
    #[error("wrong passphrase for the CA private key {}", path.display())]
    WrongPassphrase {
        /// The key file.
        path: PathBuf,
    },

    /// The private key is encrypted in a way this crate does not read.
    #[error(
        "the private key {} is encrypted with {scheme}, which is not supported; \
         re-encrypt it with `openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256`",
        path.display()
    )]
    UnsupportedKeyEncryption {
        /// The key file.
        path: PathBuf,
        /// What was found, e.g. "scrypt" or "PBES1".
        scheme: String,
    },

    /// Encrypting a private key with a passphrase failed.
    #[error("encrypting the private key failed while {0}")]
    KeyEncryption(&'static str),

    /// A number of days for a validity period is out of range.
    #[error(
        "a validity of {days} days is not possible: use a whole number of days from 1 to {max}"
    )]
    InvalidDays {
        /// What was asked for.
        days: i64,
        /// The largest accepted value.
        max: i64,
    },

    /// A certificate name is already in the inventory.
    #[error(
        "a certificate named {name:?} was already issued (files in {}); \
         renew it, choose another name, or force a replacement",
        dir.display()
    )]
    AlreadyIssued {
        /// The name.
        name: String,
        /// Where its files are.
        dir: PathBuf,
    },

    /// The output directory already holds certificate files that the
    /// inventory does not know about.
    #[error(
        "{} already holds certificate files ({file}) that the inventory does not know; \
         choose another directory or force a replacement",
        dir.display()
    )]
    OutputOccupied {
        /// The output directory.
        dir: PathBuf,
        /// The first file found, e.g. `cert.pem`.
        file: String,
    },

    /// A stored certificate's private key does not belong to it.
    #[error(
        "the private key {} does not match the public key in {}",
        key.display(),
        cert.display()
    )]
    CertificateKeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },

    /// Neither a certificate name nor a serial number in the inventory.
    #[error("no certificate named {0:?} or with that serial number is in the inventory")]
    UnknownCertificate(String),

    /// The certificate was revoked before.
    #[error(
        "the certificate with serial {serial} was already revoked at {}",
        rfc3339(revoked_at)
    )]
    AlreadyRevoked {
        /// Its serial number (hex).
        serial: String,
        /// When it was revoked.
        revoked_at: OffsetDateTime,
    },

    /// A revocation reason was not recognised.
    #[error(
        "unknown revocation reason {0:?}; expected one of unspecified, keyCompromise, \
         caCompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn"
    )]
    UnknownRevocationReason(String),

    /// The inventory file cannot be understood.
    #[error(
        "the certificate inventory {} is damaged ({detail}); restore it from a backup, \
         or move it away to rebuild it from the certificate directories",
        path.display()
    )]
    Inventory {
        /// The inventory file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

/// Formats a timestamp for an error message, falling back to `Debug` for the
/// (unreachable in practice) case of a date RFC 3339 cannot express.
pub(crate) fn rfc3339(at: &OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{at:?}"))
}

impl PkiError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn crypto(action: impl Into<String>, source: rcgen::Error) -> Self {
        Self::Crypto {
            action: action.into(),
            source,
        }
    }
}
