//! Why a connection was refused, as a closed set of reasons.
//!
//! Every refusal is logged once with one of these reasons; the same names
//! are the label values of refusal metrics, so the set is small and fixed.
//! This module also says, in words, what a rustls or webpki verdict means
//! ([`describe_tls_error`]), since their own `Display` shows Rust names, and
//! holds the verifier errors rustls has no variant for ([`WeakKey`],
//! [`StaleCrl`]).

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use intransit_pki::describe_certificate_error;
use intransit_pki::CaNotAnAnchor;
use rustls::{AlertDescription, CertificateError, OtherError};

/// The reasons the proxy turns a client away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// A StartupMessage arrived without TLS.
    PlaintextRefused,
    /// Bytes followed the SSLRequest before the TLS handshake (CVE-2021-23214 class).
    PipelinedBeforeTls,
    /// Direct TLS without ALPN `postgresql`.
    Alpn,
    /// The client offered no TLS version or suite we accept.
    TlsVersion,
    /// The TLS server name matches no route and the listener requires one.
    UnknownServerName,
    /// No client certificate, where one is required.
    NoClientCert,
    /// The client certificate does not chain to the configured CA.
    Untrusted,
    /// The client certificate is expired.
    Expired,
    /// The client certificate's validity starts in the future (a clock
    /// on one side is wrong, or the certificate was issued post-dated).
    NotYetValid,
    /// The client certificate is revoked by the configured CRL.
    Revoked,
    /// The CRL of the client certificate's CA is past its nextUpdate, so
    /// whether the certificate was revoked since is unknown.
    CrlExpired,
    /// The client certificate's key is too small to verify with (RSA
    /// below 2048 bits).
    WeakKey,
    /// A CA certificate (basicConstraints CA:TRUE) was presented as the
    /// client's own certificate.
    CaAsLeaf,
    /// The client certificate is not valid for client authentication.
    WrongPurpose,
    /// The certificate is valid but its identity is not in the allow-list.
    IdentityDenied,
    /// The identity may not log in as the requested database user.
    UserDenied,
    /// The client rejected our certificate (it sent an alert).
    ClientRejectedCert,
    /// Any other TLS handshake failure.
    HandshakeFailed,
    /// Malformed, oversized or unexpected negotiation bytes.
    Malformed,
    /// The client did not finish negotiating within the handshake timeout.
    Timeout,
    /// The listener is at its connection limit.
    TooManyConnections,
    /// The listener is at its limit of connections before the TLS
    /// handshake (`max_unauthenticated`): closed at accept, or evicted.
    TooManyUnauthenticated,
    /// The source address is at its limit of connections before the TLS
    /// handshake (`max_unauthenticated_per_address`): closed at accept.
    TooManyUnauthenticatedFromAddress,
    /// The database could not be reached.
    UpstreamUnavailable,
    /// The database answered the proxy's TLS request with a refusal
    /// (PostgreSQL `N`, a MySQL greeting without `CLIENT_SSL`).
    UpstreamTlsRefused,
    /// The database's certificate does not chain to the upstream `ca`.
    UpstreamUntrusted,
    /// The database's certificate is expired.
    UpstreamExpired,
    /// The database's certificate is not valid yet.
    UpstreamNotYetValid,
    /// The database's certificate key is too small to verify with.
    UpstreamWeakKey,
    /// The database presented a CA certificate as its own.
    UpstreamCaAsLeaf,
    /// The database's certificate is not valid for the expected server name.
    UpstreamNameMismatch,
    /// The database's public key matches none of the configured pins.
    PinMismatch,
    /// Any other failure of the TLS handshake with the database.
    UpstreamTlsFailed,
    /// The database, or a proxy in front of it, refused the login: a
    /// PostgreSQL ErrorResponse or a MySQL ERR packet before the session
    /// began (a wrong password, a user its rules deny).
    UpstreamRefused,
    /// The proxy could not log in to the database itself, for a pooled
    /// server connection, with what the pool holds for the user: no
    /// password in `auth_file`, an authentication method its
    /// `server_auth` cannot answer, a certificate it could not mint, or a
    /// server that could not prove it knows the password.
    ServerLoginFailed,
    /// The client wanted SCRAM channel binding, which cannot span the
    /// proxy's two TLS sessions.
    ChannelBinding,
    /// The client went away during negotiation.
    ClientClosed,
    /// A pooled client waited `wait_timeout` for a server connection.
    PoolExhausted,
    /// A pooled client asked for what its pool cannot give (a startup
    /// parameter such as `options`, `replication`, LISTEN in transaction
    /// mode).
    NotPoolable,
    /// The database closed a pooled server connection while a client was
    /// using it.
    UpstreamLost,
}

impl RefusalReason {
    /// The stable snake_case name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::PlaintextRefused => "plaintext_refused",
            RefusalReason::PipelinedBeforeTls => "pipelined_before_tls",
            RefusalReason::Alpn => "alpn",
            RefusalReason::TlsVersion => "tls_version",
            RefusalReason::UnknownServerName => "unknown_server_name",
            RefusalReason::NoClientCert => "no_client_cert",
            RefusalReason::Untrusted => "untrusted",
            RefusalReason::Expired => "expired",
            RefusalReason::NotYetValid => "not_yet_valid",
            RefusalReason::Revoked => "revoked",
            RefusalReason::CrlExpired => "crl_expired",
            RefusalReason::WeakKey => "weak_key",
            RefusalReason::CaAsLeaf => "ca_as_leaf",
            RefusalReason::WrongPurpose => "wrong_purpose",
            RefusalReason::IdentityDenied => "identity_denied",
            RefusalReason::UserDenied => "user_denied",
            RefusalReason::ClientRejectedCert => "client_rejected_cert",
            RefusalReason::HandshakeFailed => "handshake_failed",
            RefusalReason::Malformed => "malformed",
            RefusalReason::Timeout => "timeout",
            RefusalReason::TooManyConnections => "too_many_connections",
            RefusalReason::TooManyUnauthenticated => "too_many_unauthenticated",
            RefusalReason::TooManyUnauthenticatedFromAddress => {
                "too_many_unauthenticated_from_address"
            }
            RefusalReason::UpstreamUnavailable => "upstream_unavailable",
            RefusalReason::UpstreamTlsRefused => "upstream_tls_refused",
            RefusalReason::UpstreamUntrusted => "upstream_untrusted",
            RefusalReason::UpstreamExpired => "upstream_expired",
            RefusalReason::UpstreamNotYetValid => "upstream_not_yet_valid",
            RefusalReason::UpstreamWeakKey => "upstream_weak_key",
            RefusalReason::UpstreamCaAsLeaf => "upstream_ca_as_leaf",
            RefusalReason::UpstreamNameMismatch => "upstream_name_mismatch",
            RefusalReason::PinMismatch => "pin_mismatch",
            RefusalReason::UpstreamTlsFailed => "upstream_tls_failed",
            RefusalReason::UpstreamRefused => "upstream_refused",
            RefusalReason::ServerLoginFailed => "server_login_failed",
            RefusalReason::ChannelBinding => "channel_binding",
            RefusalReason::ClientClosed => "client_closed",
            RefusalReason::PoolExhausted => "pool_exhausted",
            RefusalReason::NotPoolable => "not_poolable",
            RefusalReason::UpstreamLost => "upstream_lost",
        }
    }

    /// Classifies a TLS handshake failure reported by rustls.
    pub fn from_tls_error(error: &rustls::Error) -> Self {
        use rustls::Error as E;
        match error {
            E::NoCertificatesPresented => RefusalReason::NoClientCert,
            E::InvalidCertificate(c) => Self::from_certificate_error(c),
            E::AlertReceived(
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateRevoked
                | AlertDescription::UnsupportedCertificate,
            ) => RefusalReason::ClientRejectedCert,
            E::NoApplicationProtocol => RefusalReason::Alpn,
            E::PeerIncompatible(_) => RefusalReason::TlsVersion,
            _ => RefusalReason::HandshakeFailed,
        }
    }

    /// Classifies a certificate verdict, whoever's certificate it is; the
    /// upstream leg turns the result into its own reasons with
    /// [`RefusalReason::for_upstream`].
    pub fn from_certificate_error(error: &CertificateError) -> Self {
        use CertificateError as C;
        match error {
            C::UnknownIssuer | C::BadSignature | C::UnknownRevocationStatus => {
                RefusalReason::Untrusted
            }
            C::Expired | C::ExpiredContext { .. } => RefusalReason::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => RefusalReason::NotYetValid,
            C::Revoked => RefusalReason::Revoked,
            C::ExpiredRevocationList | C::ExpiredRevocationListContext { .. } => {
                RefusalReason::CrlExpired
            }
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => RefusalReason::WrongPurpose,
            C::ApplicationVerificationFailure => RefusalReason::IdentityDenied,
            C::Other(OtherError(other)) => {
                if other.is::<WeakKey>() {
                    RefusalReason::WeakKey
                } else if other.is::<StaleCrl>() {
                    RefusalReason::CrlExpired
                } else if other.is::<CaNotAnAnchor>()
                    || matches!(
                        other.downcast_ref::<webpki::Error>(),
                        Some(webpki::Error::CaUsedAsEndEntity)
                    )
                {
                    RefusalReason::CaAsLeaf
                } else {
                    RefusalReason::HandshakeFailed
                }
            }
            _ => RefusalReason::HandshakeFailed,
        }
    }

    /// The upstream leg's reason for a verdict on the database's
    /// certificate that [`RefusalReason::from_certificate_error`] gave.
    pub fn for_upstream(self) -> Self {
        match self {
            RefusalReason::Untrusted => RefusalReason::UpstreamUntrusted,
            RefusalReason::Expired => RefusalReason::UpstreamExpired,
            RefusalReason::NotYetValid => RefusalReason::UpstreamNotYetValid,
            RefusalReason::WeakKey => RefusalReason::UpstreamWeakKey,
            RefusalReason::CaAsLeaf => RefusalReason::UpstreamCaAsLeaf,
            _ => RefusalReason::UpstreamTlsFailed,
        }
    }

    /// Classifies an I/O error from a TLS handshake: rustls errors travel
    /// inside `io::Error`.
    pub fn from_handshake_io(error: &io::Error) -> Self {
        if let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Self::from_tls_error(tls);
        }
        match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => RefusalReason::ClientClosed,
            _ => RefusalReason::HandshakeFailed,
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The smallest RSA modulus webpki verifies signatures with (aws-lc-rs:
/// 2048 to 8192 bits).
pub const MIN_RSA_BITS: usize = 2048;

/// A certificate whose public key is too small for any signature
/// algorithm the proxy verifies with. Without this check webpki reports
/// the failed signature as `BadSignature`, as if the chain were forged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeakKey {
    /// The key's size in bits.
    pub rsa_bits: usize,
}

impl fmt::Display for WeakKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the certificate's RSA key has {} bits, too small to verify its signatures with; accepted keys are RSA of {MIN_RSA_BITS} to 8192 bits, ECDSA P-256, P-384 or P-521, and Ed25519",
            self.rsa_bits
        )
    }
}

impl std::error::Error for WeakKey {}

impl From<WeakKey> for rustls::Error {
    fn from(weak: WeakKey) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(std::sync::Arc::new(
            weak,
        ))))
    }
}

/// A CRL past its nextUpdate, named by file and issuer, where the
/// listener refuses certificates it no longer vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleCrl {
    /// The CRL file.
    pub path: PathBuf,
    /// The CRL's issuer, the client CA whose certificates it covers.
    pub issuer: String,
    /// Its nextUpdate, Unix seconds.
    pub next_update: i64,
}

impl fmt::Display for StaleCrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the CRL from {} in {} is stale: its nextUpdate {} has passed, so a certificate revoked since is not in it; certificates of that CA are refused until a fresh CRL is installed (or the listener sets stale_crl = \"allow\")",
            self.issuer,
            self.path.display(),
            rfc3339(self.next_update)
        )
    }
}

impl std::error::Error for StaleCrl {}

impl From<StaleCrl> for rustls::Error {
    fn from(stale: StaleCrl) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(std::sync::Arc::new(
            stale,
        ))))
    }
}

/// Says in words what failed in a TLS handshake. rustls's own `Display`
/// shows Rust names (`BadSignature`, `CaUsedAsEndEntity`, alert
/// `UnknownCA`) for many errors; logs and refusal details get this instead.
pub fn describe_tls_error(error: &rustls::Error) -> String {
    use rustls::Error as E;
    match error {
        E::NoCertificatesPresented => "no client certificate was presented".to_owned(),
        E::InvalidCertificate(c) => describe_certificate_error(c),
        E::AlertReceived(alert) => format!("the peer sent the TLS alert {}", alert_name(*alert)),
        E::NoApplicationProtocol => "no application protocol (ALPN) in common".to_owned(),
        E::PeerIncompatible(_) => {
            "the peer supports no TLS version, cipher suite, key-exchange group or signature scheme this side accepts".to_owned()
        }
        other => other.to_string(),
    }
}

/// Classifies and describes an I/O error from a TLS handshake: rustls
/// errors travel inside `io::Error`.
pub fn describe_handshake_io(error: &io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => describe_tls_error(tls),
        None => error.to_string(),
    }
}

/// The TLS name of an alert (`unknown_ca`), or its number.
pub fn alert_name(alert: AlertDescription) -> String {
    use AlertDescription as A;
    let name = match alert {
        A::CloseNotify => "close_notify",
        A::UnexpectedMessage => "unexpected_message",
        A::BadRecordMac => "bad_record_mac",
        A::HandshakeFailure => "handshake_failure",
        A::BadCertificate => "bad_certificate",
        A::UnsupportedCertificate => "unsupported_certificate",
        A::CertificateRevoked => "certificate_revoked",
        A::CertificateExpired => "certificate_expired",
        A::CertificateUnknown => "certificate_unknown",
        A::IllegalParameter => "illegal_parameter",
        A::UnknownCA => "unknown_ca",
        A::AccessDenied => "access_denied",
        A::DecodeError => "decode_error",
        A::DecryptError => "decrypt_error",
        A::ProtocolVersion => "protocol_version",
        A::InsufficientSecurity => "insufficient_security",
        A::InternalError => "internal_error",
        A::UserCanceled => "user_canceled",
        A::MissingExtension => "missing_extension",
        A::UnsupportedExtension => "unsupported_extension",
        A::UnrecognisedName => "unrecognized_name",
        A::CertificateRequired => "certificate_required",
        A::NoApplicationProtocol => "no_application_protocol",
        other => return format!("number {}", u8::from(other)),
    };
    name.to_owned()
}

/// A Unix time as RFC 3339, or the number if it is out of range.
pub(crate) fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_map_to_reasons() {
        use rustls::Error as E;
        let cases = [
            (E::NoCertificatesPresented, RefusalReason::NoClientCert),
            (
                E::InvalidCertificate(CertificateError::UnknownIssuer),
                RefusalReason::Untrusted,
            ),
            (
                E::InvalidCertificate(CertificateError::BadSignature),
                RefusalReason::Untrusted,
            ),
            (
                E::InvalidCertificate(CertificateError::Expired),
                RefusalReason::Expired,
            ),
            (
                E::InvalidCertificate(CertificateError::NotValidYet),
                RefusalReason::NotYetValid,
            ),
            (
                E::InvalidCertificate(CertificateError::Revoked),
                RefusalReason::Revoked,
            ),
            (
                E::InvalidCertificate(CertificateError::ExpiredRevocationList),
                RefusalReason::CrlExpired,
            ),
            (
                StaleCrl {
                    path: "/etc/intransit/ca.crl".into(),
                    issuer: "CN=test CA".into(),
                    next_update: 0,
                }
                .into(),
                RefusalReason::CrlExpired,
            ),
            (WeakKey { rsa_bits: 1024 }.into(), RefusalReason::WeakKey),
            (
                E::InvalidCertificate(CertificateError::Other(OtherError(std::sync::Arc::new(
                    webpki::Error::CaUsedAsEndEntity,
                )))),
                RefusalReason::CaAsLeaf,
            ),
            (
                E::InvalidCertificate(CertificateError::InvalidPurpose),
                RefusalReason::WrongPurpose,
            ),
            (
                E::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
                RefusalReason::IdentityDenied,
            ),
            (
                E::AlertReceived(AlertDescription::UnknownCA),
                RefusalReason::ClientRejectedCert,
            ),
            (E::NoApplicationProtocol, RefusalReason::Alpn),
            (
                E::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic),
                RefusalReason::TlsVersion,
            ),
            (E::DecryptError, RefusalReason::HandshakeFailed),
        ];
        for (error, reason) in cases {
            assert_eq!(RefusalReason::from_tls_error(&error), reason, "{error:?}");
            // The words say what failed without Rust names.
            let words = describe_tls_error(&error);
            for debug_name in ["BadSignature", "CaUsedAsEndEntity", "UnknownCA", "Other("] {
                assert!(!words.contains(debug_name), "{reason}: {words}");
            }
            // The same error wrapped the way tokio-rustls reports it.
            let wrapped = io::Error::new(io::ErrorKind::InvalidData, error);
            assert_eq!(RefusalReason::from_handshake_io(&wrapped), reason);
        }
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(
            RefusalReason::from_handshake_io(&eof),
            RefusalReason::ClientClosed
        );
    }

    #[test]
    fn reason_names_are_unique_snake_case() {
        let all = [
            RefusalReason::PlaintextRefused,
            RefusalReason::PipelinedBeforeTls,
            RefusalReason::Alpn,
            RefusalReason::TlsVersion,
            RefusalReason::UnknownServerName,
            RefusalReason::NoClientCert,
            RefusalReason::Untrusted,
            RefusalReason::Expired,
            RefusalReason::NotYetValid,
            RefusalReason::Revoked,
            RefusalReason::CrlExpired,
            RefusalReason::WeakKey,
            RefusalReason::CaAsLeaf,
            RefusalReason::WrongPurpose,
            RefusalReason::IdentityDenied,
            RefusalReason::UserDenied,
            RefusalReason::ClientRejectedCert,
            RefusalReason::HandshakeFailed,
            RefusalReason::Malformed,
            RefusalReason::Timeout,
            RefusalReason::TooManyConnections,
            RefusalReason::TooManyUnauthenticated,
            RefusalReason::TooManyUnauthenticatedFromAddress,
            RefusalReason::UpstreamUnavailable,
            RefusalReason::UpstreamTlsRefused,
            RefusalReason::UpstreamUntrusted,
            RefusalReason::UpstreamExpired,
            RefusalReason::UpstreamNotYetValid,
            RefusalReason::UpstreamWeakKey,
            RefusalReason::UpstreamCaAsLeaf,
            RefusalReason::UpstreamNameMismatch,
            RefusalReason::PinMismatch,
            RefusalReason::UpstreamTlsFailed,
            RefusalReason::UpstreamRefused,
            RefusalReason::ServerLoginFailed,
            RefusalReason::ChannelBinding,
            RefusalReason::ClientClosed,
            RefusalReason::PoolExhausted,
            RefusalReason::NotPoolable,
            RefusalReason::UpstreamLost,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), all.len());
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }
}
