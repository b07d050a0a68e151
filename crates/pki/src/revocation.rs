//! Revocation: reasons, revoked-certificate records and serial numbers as
//! they appear in CRLs.
//!
//! This module owns the vocabulary of revocation (RFC 5280 §5.3.1) and the
//! normal form of serial numbers used to compare them. Signing the CRL is
//! [`CertificateAuthority::sign_crl`](crate::CertificateAuthority::sign_crl);
//! recording revocations is [`StateDir::revoke`](crate::StateDir::revoke).

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use crate::PkiError;

/// Why a certificate was revoked, as carried in a CRL entry's reasonCode.
///
/// `certificateHold` is deliberately absent: a hold can be lifted, and this
/// CA only publishes final revocations. So are `removeFromCRL` (only for
/// delta CRLs) and `aACompromise` (only for attribute certificates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RevocationReason {
    /// No reason given. RFC 5280 says not to encode it, so the CRL entry
    /// carries no reasonCode at all.
    #[default]
    Unspecified,
    /// The certificate's private key was, or may have been, disclosed.
    KeyCompromise,
    /// The CA's private key was, or may have been, disclosed.
    CaCompromise,
    /// The subject's name or other information changed.
    AffiliationChanged,
    /// The certificate was replaced by a new one.
    Superseded,
    /// The certificate is no longer needed.
    CessationOfOperation,
    /// A privilege the certificate granted was withdrawn.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every supported reason, in RFC 5280 order.
    pub const ALL: [RevocationReason; 7] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
    ];

    /// The RFC 5280 name, e.g. `keyCompromise`, also used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::CaCompromise => "caCompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }

    /// The reasonCode to put in a CRL entry; `None` for `unspecified`.
    pub(crate) fn to_rcgen(self) -> Option<rcgen::RevocationReason> {
        Some(match self {
            RevocationReason::Unspecified => return None,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::CaCompromise => rcgen::RevocationReason::CaCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        })
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = PkiError;

    /// Parses the RFC 5280 names ignoring ASCII case, `-` and `_`, so
    /// `keyCompromise`, `key-compromise` and `KEY_COMPROMISE` are all accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let folded: String = s
            .trim()
            .chars()
            .filter(|c| !matches!(c, '-' | '_'))
            .map(|c| c.to_ascii_lowercase())
            .collect();
        RevocationReason::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(&folded))
            .ok_or_else(|| PkiError::UnknownRevocationReason(s.to_owned()))
    }
}

/// One entry of a certificate revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    /// Serial number as uppercase hex without colons or leading zero bytes,
    /// as [`CertificateSummary::serial_hex`](crate::CertificateSummary::serial_hex)
    /// prints it.
    pub serial_hex: String,
    /// When the CA recorded the revocation.
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
    /// The inventory name of the certificate, when known. Not part of the
    /// CRL.
    pub name: Option<String>,
}

/// Normalises a serial number written in hex: colons and whitespace are
/// dropped, letters upper-cased and leading zero bytes removed (keeping a
/// lone zero), so `00:5f:0a` and `5F0A` compare equal. `None` if it is not
/// hex.
pub(crate) fn normalize_serial(serial: &str) -> Option<String> {
    let mut hex: String = serial
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    if !hex.len().is_multiple_of(2) {
        hex.insert(0, '0');
    }
    while hex.len() > 2 && hex.starts_with("00") {
        hex.drain(..2);
    }
    Some(hex)
}

/// The bytes of a normalised hex serial.
pub(crate) fn serial_bytes(hex: &str) -> Option<Vec<u8>> {
    let hex = normalize_serial(hex)?;
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_parse_from_their_names_and_variants() {
        for reason in RevocationReason::ALL {
            assert_eq!(
                reason.to_string().parse::<RevocationReason>().ok(),
                Some(reason)
            );
        }
        for (text, reason) in [
            ("keyCompromise", RevocationReason::KeyCompromise),
            ("key-compromise", RevocationReason::KeyCompromise),
            ("KEY_COMPROMISE", RevocationReason::KeyCompromise),
            ("caCompromise", RevocationReason::CaCompromise),
            ("superseded", RevocationReason::Superseded),
            (
                "cessationOfOperation",
                RevocationReason::CessationOfOperation,
            ),
            ("privilegeWithdrawn", RevocationReason::PrivilegeWithdrawn),
            ("affiliationChanged", RevocationReason::AffiliationChanged),
            ("unspecified", RevocationReason::Unspecified),
        ] {
            assert_eq!(
                text.parse::<RevocationReason>().ok(),
                Some(reason),
                "{text}"
            );
        }
        for bad in ["certificateHold", "removeFromCRL", "", "compromised"] {
            assert!(
                matches!(
                    bad.parse::<RevocationReason>(),
                    Err(PkiError::UnknownRevocationReason(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(RevocationReason::Unspecified.to_rcgen(), None);
    }

    #[test]
    fn serials_are_normalised() {
        assert_eq!(normalize_serial("00:5f:0a").as_deref(), Some("5F0A"));
        assert_eq!(normalize_serial("5F0A").as_deref(), Some("5F0A"));
        assert_eq!(normalize_serial("f0a").as_deref(), Some("0F0A"));
        assert_eq!(normalize_serial("00").as_deref(), Some("00"));
        assert_eq!(normalize_serial("0000").as_deref(), Some("00"));
        assert_eq!(normalize_serial("xyz"), None);
        assert_eq!(normalize_serial(""), None);
        assert_eq!(serial_bytes("01:FF"), Some(vec![1, 255]));
    }
}
