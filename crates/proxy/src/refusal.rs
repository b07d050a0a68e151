//! Why a connection was refused, as a closed set of reasons.
//!
//! Every refusal is logged once with one of these reasons; the same names
//! are the label values of refusal metrics, so the set is small and fixed.

use std::fmt;
use std::io;

use rustls::{AlertDescription, CertificateError};

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
    /// The client certificate is expired or not yet valid.
    Expired,
    /// The client certificate is revoked by the configured CRL.
    Revoked,
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
    /// The database's certificate is expired or not yet valid.
    UpstreamExpired,
    /// The database's certificate is not valid for the expected server name.
    UpstreamNameMismatch,
    /// The database's public key matches none of the configured pins.
    PinMismatch,
    /// Any other failure of the TLS handshake with the database.
    UpstreamTlsFailed,
    /// The client wanted SCRAM channel binding, which cannot span the
    /// proxy's two TLS sessions.
    ChannelBinding,
    /// The client went away during negotiation.
    ClientClosed,
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
            RefusalReason::Revoked => "revoked",
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
            RefusalReason::UpstreamNameMismatch => "upstream_name_mismatch",
            RefusalReason::PinMismatch => "pin_mismatch",
            RefusalReason::UpstreamTlsFailed => "upstream_tls_failed",
            RefusalReason::ChannelBinding => "channel_binding",
            RefusalReason::ClientClosed => "client_closed",
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

    fn from_certificate_error(error: &CertificateError) -> Self {
        use CertificateError as C;
        match error {
            C::UnknownIssuer | C::BadSignature | C::UnknownRevocationStatus => {
                RefusalReason::Untrusted
            }
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => RefusalReason::Expired,
            C::Revoked => RefusalReason::Revoked,
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => RefusalReason::WrongPurpose,
            C::ApplicationVerificationFailure => RefusalReason::IdentityDenied,
            _ => RefusalReason::HandshakeFailed,
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
                E::InvalidCertificate(CertificateError::Revoked),
                RefusalReason::Revoked,
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
            RefusalReason::Revoked,
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
            RefusalReason::UpstreamNameMismatch,
            RefusalReason::PinMismatch,
            RefusalReason::UpstreamTlsFailed,
            RefusalReason::ChannelBinding,
            RefusalReason::ClientClosed,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), all.len());
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }
}
