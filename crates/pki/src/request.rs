//! What a caller asks the CA for.
//!
//! This module owns the request types and their validation rules: which names
//! are acceptable in a certificate and what a validity period must satisfy.
//! It performs no cryptography and no I/O.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rustls_pki_types::DnsName;
use time::{Duration, OffsetDateTime};

use crate::{KeyAlgorithm, PkiError};

/// Default lifetime of a server certificate, in days.
pub const SERVER_VALIDITY_DAYS: u32 = 90;

/// Default lifetime of a client certificate, in days.
pub const CLIENT_VALIDITY_DAYS: u32 = 30;

/// Default lifetime of a CA certificate, in days (about ten years).
pub const CA_VALIDITY_DAYS: u32 = 3650;

/// The longest validity, in days, that [`Validity::try_days_from_now`]
/// accepts: about a hundred years, far beyond any sensible certificate and
/// well within what X.509 dates can express.
pub const MAX_VALIDITY_DAYS: i64 = 36_525;

/// How far in the past a new certificate's `not_before` is placed, so that a
/// peer whose clock runs a little behind ours still accepts it.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::minutes(5);

/// What a leaf certificate is for; decides its extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateKind {
    /// A TLS server certificate (EKU serverAuth).
    Server,
    /// A TLS client certificate for mutual TLS (EKU clientAuth).
    Client,
}

impl CertificateKind {
    /// The default lifetime for this kind, in days.
    pub fn default_validity_days(self) -> u32 {
        match self {
            CertificateKind::Server => SERVER_VALIDITY_DAYS,
            CertificateKind::Client => CLIENT_VALIDITY_DAYS,
        }
    }
}

impl FromStr for CertificateKind {
    type Err = PkiError;

    /// Parses `server` or `client`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            k if k.eq_ignore_ascii_case("server") => Ok(CertificateKind::Server),
            k if k.eq_ignore_ascii_case("client") => Ok(CertificateKind::Client),
            _ => Err(PkiError::InvalidRequest(format!(
                "unknown certificate kind {s:?}; expected server or client"
            ))),
        }
    }
}

impl fmt::Display for CertificateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CertificateKind::Server => "server",
            CertificateKind::Client => "client",
        })
    }
}

/// The period in which a certificate is valid.
///
/// X.509 stores whole seconds; sub-second parts are dropped when the
/// certificate is made. `not_after` may lie in the past, which is how tests
/// obtain expired certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First instant at which the certificate is valid.
    pub not_before: OffsetDateTime,
    /// Last instant at which the certificate is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from a little in the past until `lifetime` from now. The
    /// backdating is [`CLOCK_SKEW_ALLOWANCE`], or a tenth of the lifetime
    /// when that is shorter, so that a short-lived certificate (minutes, in
    /// tests and demonstrations) is not mostly spent before it is issued.
    pub fn lifetime_from_now(lifetime: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - CLOCK_SKEW_ALLOWANCE.min(lifetime / 10),
            not_after: now + lifetime,
        }
    }

    /// Valid from [`CLOCK_SKEW_ALLOWANCE`] ago until `days` days from now.
    pub fn days_from_now(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + Duration::days(i64::from(days)),
        }
    }

    /// Like [`Self::days_from_now`], for a number of days that comes from a
    /// user: anything below 1 or above [`MAX_VALIDITY_DAYS`] is refused with
    /// [`PkiError::InvalidDays`].
    pub fn try_days_from_now(days: i64) -> Result<Self, PkiError> {
        Self::try_days_from(OffsetDateTime::now_utc(), days)
    }

    /// Valid from [`CLOCK_SKEW_ALLOWANCE`] before `start` until `days` days
    /// after it, with the checks of [`Self::try_days_from_now`].
    pub fn try_days_from(start: OffsetDateTime, days: i64) -> Result<Self, PkiError> {
        if !(1..=MAX_VALIDITY_DAYS).contains(&days) {
            return Err(PkiError::InvalidDays {
                days,
                max: MAX_VALIDITY_DAYS,
            });
        }
        Ok(Self {
            not_before: start - CLOCK_SKEW_ALLOWANCE,
            not_after: start + Duration::days(days),
        })
    }

    /// The length of the period.
    pub fn lifetime(&self) -> Duration {
        self.not_after - self.not_before
    }

    /// Checks that the period is not empty and returns it truncated to whole
    /// seconds, exactly as it will appear in the certificate.
    pub(crate) fn checked(&self) -> Result<Validity, PkiError> {
        let truncated = Validity {
            not_before: self
                .not_before
                .replace_nanosecond(0)
                .unwrap_or(self.not_before),
            not_after: self
                .not_after
                .replace_nanosecond(0)
                .unwrap_or(self.not_after),
        };
        if truncated.not_after <= truncated.not_before {
            return Err(PkiError::InvalidValidity {
                not_before: self.not_before,
                not_after: self.not_after,
            });
        }
        Ok(truncated)
    }
}

/// A request for a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    /// Server or client; decides the extended key usage.
    pub kind: CertificateKind,
    /// The subject common name. For a client this is typically the identity
    /// (a database user name); for a server, its main host name.
    pub common_name: String,
    /// DNS subject alternative names. A server certificate needs at least one
    /// DNS name or IP address: TLS clients ignore the common name.
    /// A leading `*.` wildcard label is allowed.
    pub dns_names: Vec<String>,
    /// IP address subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// URI subject alternative names, e.g. `spiffe://prod/trainer`.
    pub uris: Vec<String>,
    /// Type of the key pair to generate for the certificate.
    pub key: KeyAlgorithm,
    /// Validity period of the certificate.
    pub validity: Validity,
}

impl IssueRequest {
    /// A request with no alternative names, the default key algorithm and
    /// the default validity for `kind`, starting now.
    pub fn new(kind: CertificateKind, common_name: impl Into<String>) -> Self {
        Self {
            kind,
            common_name: common_name.into(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            uris: Vec::new(),
            key: KeyAlgorithm::default(),
            validity: Validity::days_from_now(kind.default_validity_days()),
        }
    }

    /// Checks everything that can be checked without the CA.
    pub(crate) fn validate(&self) -> Result<(), PkiError> {
        validate_common_name(&self.common_name)?;
        for name in &self.dns_names {
            validate_dns_name(name)?;
        }
        for uri in &self.uris {
            validate_uri(uri)?;
        }
        if self.kind == CertificateKind::Server
            && self.dns_names.is_empty()
            && self.ip_addresses.is_empty()
        {
            return Err(PkiError::InvalidRequest(
                "a server certificate needs at least one DNS name or IP address; \
                 TLS clients ignore the common name"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

pub(crate) fn validate_common_name(common_name: &str) -> Result<(), PkiError> {
    if common_name.trim().is_empty() {
        return Err(PkiError::InvalidRequest(
            "the common name must not be empty".to_owned(),
        ));
    }
    // RFC 5280's upper bound for a commonName.
    if common_name.chars().count() > 64 {
        return Err(PkiError::InvalidRequest(format!(
            "the common name {common_name:?} is longer than 64 characters"
        )));
    }
    if common_name.chars().any(char::is_control) {
        return Err(PkiError::InvalidRequest(format!(
            "the common name {common_name:?} contains control characters"
        )));
    }
    Ok(())
}

fn validate_dns_name(name: &str) -> Result<(), PkiError> {
    if name.parse::<IpAddr>().is_ok() {
        return Err(PkiError::InvalidRequest(format!(
            "{name:?} is an IP address; list it as an IP address, not a DNS name"
        )));
    }
    let base = name.strip_prefix("*.").unwrap_or(name);
    if DnsName::try_from(base).is_err() || base.ends_with('.') {
        return Err(PkiError::InvalidRequest(format!(
            "{name:?} is not a valid DNS name"
        )));
    }
    Ok(())
}

fn validate_uri(uri: &str) -> Result<(), PkiError> {
    // RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then ':'.
    let scheme_ok = uri.split_once(':').is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let chars_ok = uri.chars().all(|c| c.is_ascii_graphic());
    if !scheme_ok || !chars_ok {
        return Err(PkiError::InvalidRequest(format!(
            "{uri:?} is not a valid absolute URI (expected e.g. spiffe://domain/path)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(dns: &[&str]) -> IssueRequest {
        let mut req = IssueRequest::new(CertificateKind::Server, "db.example");
        req.dns_names = dns.iter().map(|s| (*s).to_owned()).collect();
        req
    }

    #[test]
    fn days_from_now_allows_for_clock_skew() {
        let before = OffsetDateTime::now_utc();
        let v = Validity::days_from_now(90);
        assert!(v.not_before <= before - CLOCK_SKEW_ALLOWANCE + Duration::seconds(1));
        assert!(v.not_after >= before + Duration::days(90));
        assert!(v.not_after <= before + Duration::days(90) + Duration::minutes(1));
    }

    #[test]
    fn days_from_a_user_are_checked() {
        for bad in [0, -1, i64::MIN, MAX_VALIDITY_DAYS + 1, i64::MAX] {
            assert!(
                matches!(
                    Validity::try_days_from_now(bad),
                    Err(PkiError::InvalidDays { days, .. }) if days == bad
                ),
                "{bad}"
            );
        }
        let start = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let v = Validity::try_days_from(start, 1);
        assert_eq!(
            v.ok(),
            Some(Validity {
                not_before: start - CLOCK_SKEW_ALLOWANCE,
                not_after: start + Duration::days(1),
            })
        );
        assert!(Validity::try_days_from_now(MAX_VALIDITY_DAYS).is_ok());
    }

    #[test]
    fn kinds_parse() {
        assert_eq!(
            "server".parse::<CertificateKind>().ok(),
            Some(CertificateKind::Server)
        );
        assert_eq!(
            "Client".parse::<CertificateKind>().ok(),
            Some(CertificateKind::Client)
        );
        assert!("ca".parse::<CertificateKind>().is_err());
    }

    #[test]
    fn empty_validity_is_rejected() {
        let now = OffsetDateTime::now_utc();
        let v = Validity {
            not_before: now,
            not_after: now,
        };
        assert!(matches!(v.checked(), Err(PkiError::InvalidValidity { .. })));
    }

    #[test]
    fn server_needs_a_name() {
        assert!(server(&[]).validate().is_err());
        assert!(server(&["db.example"]).validate().is_ok());
        let mut req = server(&[]);
        req.ip_addresses.push(IpAddr::from([127, 0, 0, 1]));
        assert!(req.validate().is_ok());
    }

    #[test]
    fn dns_names_are_checked() {
        assert!(server(&["*.db.example"]).validate().is_ok());
        assert!(server(&["localhost"]).validate().is_ok());
        for bad in [
            "",
            "a..b",
            "-a.example",
            "db example",
            "10.0.0.1",
            "*.",
            "a.*.b",
            "é.example",
        ] {
            assert!(server(&[bad]).validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn uris_are_checked() {
        let mut req = IssueRequest::new(CertificateKind::Client, "trainer");
        req.uris = vec!["spiffe://prod/trainer".to_owned()];
        assert!(req.validate().is_ok());
        for bad in ["", "spiffe", "://x", "spiffe://prod/a b", "1x:y"] {
            req.uris = vec![bad.to_owned()];
            assert!(req.validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn common_name_is_checked() {
        assert!(IssueRequest::new(CertificateKind::Client, "")
            .validate()
            .is_err());
        assert!(IssueRequest::new(CertificateKind::Client, "a\nb")
            .validate()
            .is_err());
        assert!(IssueRequest::new(CertificateKind::Client, "x".repeat(65))
            .validate()
            .is_err());
        assert!(IssueRequest::new(CertificateKind::Client, "alice")
            .validate()
            .is_ok());
    }
}
