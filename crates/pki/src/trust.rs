//! Whether a server's certificate is trusted, decided the way libpq
//! (OpenSSL) decides it for `sslmode=verify-ca` and `verify-full`, and
//! verdicts said in words.
//!
//! [`ServerTrust`] is webpki's path building from the trust anchors, plus
//! the one case webpki refuses and libpq accepts: a certificate that is
//! itself one of the anchors. A database's self-signed certificate made
//! with `openssl req -x509` (as PostgreSQL's documentation shows) is
//! CA:TRUE, and the user trusts it by naming that very file as the CA;
//! webpki refuses it as `CaUsedAsEndEntity`. Such a certificate, byte for
//! byte an anchor, is trusted without a signature check (as OpenSSL trusts
//! its anchors), but its validity dates, its extended key usage and the
//! name still count. Every other certificate gets webpki's full
//! verification. The proxy's upstream leg and `intransit scan` both
//! decide here; client certificates are never judged here.
//!
//! [`describe_certificate_error`] says what a rustls or webpki verdict on
//! any certificate means, since their own `Display` shows Rust names.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{verify_server_name, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, OtherError, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// Trust anchors and the verification of a server's certificate against
/// them.
pub struct ServerTrust {
    webpki: Arc<WebPkiServerVerifier>,
    /// The anchors as given, for the byte-for-byte comparison.
    anchors: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for ServerTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTrust")
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

/// Why trust anchors could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerTrustError {
    /// A certificate that cannot serve as a trust anchor.
    #[error("certificate {position} cannot be a trust anchor: {reason}")]
    Anchor {
        /// Its position among the anchors, from 1.
        position: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// No certificate to trust.
    #[error("no trust anchors")]
    NoAnchors,
}

impl ServerTrust {
    /// Trusts `anchors`, each of which must be usable as a trust anchor.
    pub fn new(
        anchors: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, ServerTrustError> {
        let mut roots = RootCertStore::empty();
        for (i, anchor) in anchors.iter().enumerate() {
            roots
                .add(anchor.clone())
                .map_err(|e| ServerTrustError::Anchor {
                    position: i + 1,
                    reason: match &e {
                        rustls::Error::InvalidCertificate(c) => describe_certificate_error(c),
                        other => other.to_string(),
                    },
                })?;
        }
        Self::with_roots(roots, anchors, provider)
    }

    /// Trusts the usable certificates of a bundle (a system CA bundle may
    /// hold some that webpki cannot take as anchors), skipping the others.
    pub fn from_bundle(
        bundle: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, ServerTrustError> {
        let mut roots = RootCertStore::empty();
        let anchors = bundle
            .into_iter()
            .filter(|anchor| roots.add(anchor.clone()).is_ok())
            .collect();
        Self::with_roots(roots, anchors, provider)
    }

    fn with_roots(
        roots: RootCertStore,
        anchors: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, ServerTrustError> {
        if roots.is_empty() {
            return Err(ServerTrustError::NoAnchors);
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|_| ServerTrustError::NoAnchors)?;
        Ok(ServerTrust { webpki, anchors })
    }

    /// Verifies `end_entity` (with the `intermediates` the server sent) as
    /// a certificate for `server_name` at `now`. A certificate that is one
    /// of the anchors is checked as [`ServerTrust`] says; any other goes
    /// through webpki, which checks the name last, so a caller that does
    /// not require the name (`verify-ca`) may forgive
    /// [`CertificateError::NotValidForNameContext`] alone.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        if self
            .anchors
            .iter()
            .any(|anchor| anchor.as_ref() == end_entity.as_ref())
        {
            return verify_anchor_itself(end_entity, server_name, now);
        }
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, &[], now)
        {
            Ok(_) => Ok(()),
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))))
                if matches!(
                    other.downcast_ref::<webpki::Error>(),
                    Some(webpki::Error::CaUsedAsEndEntity)
                ) =>
            {
                Err(CaNotAnAnchor::of(end_entity).into())
            }
            Err(e) => Err(e),
        }
    }
}

/// A server presented a CA certificate (basicConstraints CA:TRUE) as its
/// own, and it is not one of the trust anchors: most often a self-signed
/// certificate, trusted through some other file or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaNotAnAnchor {
    /// The certificate's subject.
    pub subject: String,
    /// Whether it is self-signed (issuer equals subject).
    pub self_signed: bool,
    /// The pin of its public key, for `mode = "pinned"`.
    pub pin: Option<String>,
}

impl CaNotAnAnchor {
    fn of(cert: &CertificateDer<'_>) -> Self {
        let parsed = X509Certificate::from_der(cert.as_ref())
            .ok()
            .map(|(_, c)| c);
        CaNotAnAnchor {
            subject: parsed
                .as_ref()
                .map_or_else(String::new, |c| c.subject().to_string()),
            self_signed: parsed
                .as_ref()
                .is_some_and(|c| c.subject().as_raw() == c.issuer().as_raw()),
            pin: crate::spki_pin(cert.as_ref()).ok(),
        }
    }
}

impl fmt::Display for CaNotAnAnchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.self_signed {
            "a self-signed CA certificate"
        } else {
            "a CA certificate"
        };
        write!(
            f,
            "the server presented {kind} (basicConstraints CA:TRUE, subject \"{}\") as its own, and it is not one of the trusted CA certificates; if it is the server's own certificate, trust that very certificate as the CA (as libpq's sslrootcert does), or pin its key with mode = \"pinned\"",
            self.subject
        )?;
        match &self.pin {
            Some(pin) => write!(f, " and pins = [\"{pin}\"] (what `intransit pin` prints)"),
            None => write!(f, " and the pin `intransit pin` prints"),
        }
    }
}

impl std::error::Error for CaNotAnAnchor {}

impl From<CaNotAnAnchor> for rustls::Error {
    fn from(error: CaNotAnAnchor) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
    }
}

/// The checks on a certificate that is itself a trust anchor: validity
/// dates, extended key usage (serverAuth, when the extension is present)
/// and the name. For the name, libpq's rule: the subjectAltName entries of
/// the name's kind (DNS or IP) when there are any, otherwise the subject's
/// common name, which `openssl req -x509 -subj /CN=...` sets alone.
fn verify_anchor_itself(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let bad = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).map_err(|_| bad())?;
    let unix = |t: i64| UnixTime::since_unix_epoch(Duration::from_secs(t.max(0) as u64));
    let seconds = now.as_secs() as i64;
    let validity = x509.validity();
    if seconds < validity.not_before.timestamp() {
        return Err(CertificateError::NotValidYetContext {
            time: now,
            not_before: unix(validity.not_before.timestamp()),
        }
        .into());
    }
    if seconds > validity.not_after.timestamp() {
        return Err(CertificateError::ExpiredContext {
            time: now,
            not_after: unix(validity.not_after.timestamp()),
        }
        .into());
    }
    if let Ok(Some(eku)) = x509.extended_key_usage() {
        if !eku.value.server_auth {
            return Err(CertificateError::InvalidPurpose.into());
        }
    }
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    for extension in x509.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => ip_addresses.push(bytes.to_vec()),
                    _ => {}
                }
            }
        }
    }
    let has_san_of_kind = match server_name {
        ServerName::IpAddress(_) => !ip_addresses.is_empty(),
        _ => !dns_names.is_empty(),
    };
    if has_san_of_kind {
        let parsed = ParsedCertificate::try_from(cert)?;
        return verify_server_name(&parsed, server_name);
    }
    let common_names: Vec<String> = x509
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if common_names
        .iter()
        .any(|cn| common_name_matches(cn, server_name))
    {
        return Ok(());
    }
    Err(CertificateError::NotValidForNameContext {
        expected: server_name.to_owned(),
        presented: dns_names
            .into_iter()
            .chain(common_names.into_iter().map(|cn| format!("CN={cn}")))
            .collect(),
    }
    .into())
}

/// Whether a subject common name names `server_name`, as libpq compares
/// them: DNS names case-insensitively, with a `*.` wildcard standing for
/// exactly one leading label; IP addresses by value.
fn common_name_matches(cn: &str, server_name: &ServerName<'_>) -> bool {
    match server_name {
        ServerName::IpAddress(ip) => cn.parse::<IpAddr>().ok() == Some(IpAddr::from(*ip)),
        ServerName::DnsName(dns) => {
            let name = dns.as_ref().trim_end_matches('.');
            let cn = cn.trim_end_matches('.');
            if let Some(suffix) = cn.strip_prefix("*.") {
                name.split_once('.').is_some_and(|(label, rest)| {
                    !label.is_empty() && rest.eq_ignore_ascii_case(suffix)
                })
            } else {
                cn.eq_ignore_ascii_case(name)
            }
        }
        _ => false,
    }
}

/// Says in words why a certificate was not accepted.
pub fn describe_certificate_error(error: &CertificateError) -> String {
    use CertificateError as C;
    match error {
        C::BadEncoding => "the certificate does not parse".to_owned(),
        C::Expired => "the certificate is expired".to_owned(),
        C::ExpiredContext { not_after, .. } => format!(
            "the certificate expired at {}",
            rfc3339(not_after.as_secs() as i64)
        ),
        C::NotValidYet => "the certificate is not valid yet (check the clocks of both hosts)".to_owned(),
        C::NotValidYetContext { not_before, .. } => format!(
            "the certificate is not valid before {} (its notBefore is in the future: check the clocks of both hosts, or how it was issued)",
            rfc3339(not_before.as_secs() as i64)
        ),
        C::Revoked => "the certificate is revoked by the CRL".to_owned(),
        C::UnknownRevocationStatus => {
            "no CRL covers the certificate's issuer, so its revocation status is unknown".to_owned()
        }
        C::ExpiredRevocationList => "the CRL covering the certificate is past its nextUpdate".to_owned(),
        C::ExpiredRevocationListContext { next_update, .. } => format!(
            "the CRL covering the certificate is stale: its nextUpdate {} has passed",
            rfc3339(next_update.as_secs() as i64)
        ),
        C::UnknownIssuer => {
            "the certificate does not chain to a trusted CA (unknown issuer)".to_owned()
        }
        C::BadSignature => "a signature in the certificate chain does not verify".to_owned(),
        C::NotValidForName => "the certificate is not valid for the expected name".to_owned(),
        C::NotValidForNameContext { expected, presented } => {
            let expected = expected.to_str();
            match presented.as_slice() {
                [] => format!(
                    "the certificate is not valid for the name {expected}: it names no DNS name or IP address"
                ),
                names => format!(
                    "the certificate is not valid for the name {expected}: it is valid for {} only",
                    names
                        .iter()
                        .map(|n| presented_name(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        C::InvalidPurpose => {
            "the certificate's extended key usage does not allow this use".to_owned()
        }
        C::InvalidPurposeContext { .. } => error.to_string(),
        C::ApplicationVerificationFailure => {
            "the certificate's identity is not in the allow-list".to_owned()
        }
        C::UnhandledCriticalExtension => {
            "the certificate has a critical extension this verifier does not know".to_owned()
        }
        C::Other(OtherError(other)) => match other.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity) => {
                "the certificate is a CA certificate (basicConstraints CA:TRUE) presented as an end-entity certificate; present a leaf certificate (CA:FALSE) issued by that CA".to_owned()
            }
            Some(_) => "the certificate failed verification".to_owned(),
            None => other.to_string(),
        },
        _ => "the certificate is signed with an algorithm, or carries a key, this verifier does not accept".to_owned(),
    }
}

/// A name as webpki lists it (`DnsName("db.internal")`,
/// `IpAddress(127.0.0.1)`), without the Rust wrapping.
fn presented_name(name: &str) -> String {
    for prefix in ["DnsName(\"", "IpAddress(", "UniformResourceIdentifier(\""] {
        if let Some(inner) = name.strip_prefix(prefix) {
            return inner.trim_end_matches(')').trim_end_matches('"').to_owned();
        }
    }
    name.to_owned()
}

/// A Unix time as RFC 3339, or the number if it is out of range.
fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// A certificate as `openssl req -x509 -subj /CN=<cn>` makes it: self-signed,
    /// CA:TRUE, no subjectAltName unless `sans` are given.
    fn self_signed(cn: &str, sans: &[&str], days: (i64, i64)) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days.0);
        params.not_after = now + time::Duration::days(days.1);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn check(
        trust: &ServerTrust,
        cert: &CertificateDer<'_>,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).unwrap();
        trust.verify(cert, &[], &name, UnixTime::now())
    }

    fn certificate_error(result: Result<(), rustls::Error>) -> CertificateError {
        match result {
            Err(rustls::Error::InvalidCertificate(e)) => e,
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }

    #[test]
    fn a_self_signed_ca_certificate_that_is_an_anchor_is_trusted_for_its_names() {
        let cert = self_signed("db.internal", &["db.internal", "127.0.0.1"], (-1, 30));
        let trust = ServerTrust::new(vec![cert.clone()], provider()).unwrap();
        check(&trust, &cert, "db.internal").unwrap();
        check(&trust, &cert, "DB.internal").unwrap();
        check(&trust, &cert, "127.0.0.1").unwrap();

        let wrong = certificate_error(check(&trust, &cert, "other.internal"));
        assert!(
            matches!(wrong, CertificateError::NotValidForNameContext { .. }),
            "{wrong:?}"
        );
        let words = describe_certificate_error(&wrong);
        assert_eq!(
            words,
            "the certificate is not valid for the name other.internal: it is valid for db.internal, 127.0.0.1 only"
        );
    }

    #[test]
    fn without_a_subject_alt_name_the_common_name_is_the_name_as_in_libpq() {
        let cert = self_signed("localhost", &[], (-1, 30));
        let trust = ServerTrust::new(vec![cert.clone()], provider()).unwrap();
        check(&trust, &cert, "localhost").unwrap();
        let wrong = certificate_error(check(&trust, &cert, "db.internal"));
        assert!(
            describe_certificate_error(&wrong).contains("CN=localhost"),
            "{wrong:?}"
        );
        // A DNS subjectAltName rules the common name out for DNS names.
        let with_san = self_signed("localhost", &["db.internal"], (-1, 30));
        let trust = ServerTrust::new(vec![with_san.clone()], provider()).unwrap();
        check(&trust, &with_san, "localhost").unwrap_err();

        let wildcard = self_signed("*.db.internal", &[], (-1, 30));
        let trust = ServerTrust::new(vec![wildcard.clone()], provider()).unwrap();
        check(&trust, &wildcard, "primary.db.internal").unwrap();
        check(&trust, &wildcard, "a.primary.db.internal").unwrap_err();
        check(&trust, &wildcard, "db.internal").unwrap_err();

        let ip = self_signed("127.0.0.1", &[], (-1, 30));
        let trust = ServerTrust::new(vec![ip.clone()], provider()).unwrap();
        check(&trust, &ip, "127.0.0.1").unwrap();
        check(&trust, &ip, "127.0.0.2").unwrap_err();
    }

    #[test]
    fn an_anchor_presented_as_the_server_certificate_still_has_dates_and_a_purpose() {
        let expired = self_signed("db.internal", &["db.internal"], (-10, -1));
        let trust = ServerTrust::new(vec![expired.clone()], provider()).unwrap();
        let error = certificate_error(check(&trust, &expired, "db.internal"));
        assert!(
            matches!(error, CertificateError::ExpiredContext { .. }),
            "{error:?}"
        );
        assert!(describe_certificate_error(&error).starts_with("the certificate expired at "));

        let future = self_signed("db.internal", &["db.internal"], (1, 30));
        let trust = ServerTrust::new(vec![future.clone()], provider()).unwrap();
        let error = certificate_error(check(&trust, &future, "db.internal"));
        assert!(
            matches!(error, CertificateError::NotValidYetContext { .. }),
            "{error:?}"
        );

        let mut params = CertificateParams::new(vec!["db.internal".to_owned()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_only = params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .clone();
        let trust = ServerTrust::new(vec![client_only.clone()], provider()).unwrap();
        let error = certificate_error(check(&trust, &client_only, "db.internal"));
        assert_eq!(error, CertificateError::InvalidPurpose);
    }

    #[test]
    fn a_self_signed_certificate_that_is_not_an_anchor_is_refused_with_what_to_do() {
        let presented = self_signed("db.internal", &["db.internal"], (-1, 30));
        let other = self_signed("db.internal", &["db.internal"], (-1, 30));
        let trust = ServerTrust::new(vec![other], provider()).unwrap();
        let error = certificate_error(check(&trust, &presented, "db.internal"));
        let CertificateError::Other(OtherError(inner)) = &error else {
            panic!("{error:?}");
        };
        let refusal = inner
            .downcast_ref::<CaNotAnAnchor>()
            .expect("CaNotAnAnchor");
        assert!(refusal.self_signed);
        let words = describe_certificate_error(&error);
        let pin = crate::spki_pin(presented.as_ref()).unwrap();
        assert!(words.contains("self-signed CA certificate"), "{words}");
        assert!(words.contains("mode = \"pinned\""), "{words}");
        assert!(words.contains(&pin), "{words}");
        assert!(!words.contains("OtherError"), "{words}");
    }

    #[test]
    fn leaves_issued_by_an_anchor_get_webpki_verification() {
        let ca = crate::CertificateAuthority::generate(
            "database CA",
            crate::KeyAlgorithm::EcdsaP256,
            crate::Validity::days_from_now(10),
        )
        .unwrap();
        let issued = ca
            .issue(&crate::IssueRequest {
                kind: crate::CertificateKind::Server,
                common_name: "db.internal".into(),
                dns_names: vec!["db.internal".into()],
                ip_addresses: vec![],
                uris: vec![],
                key: crate::KeyAlgorithm::EcdsaP256,
                validity: crate::Validity::days_from_now(5),
            })
            .unwrap();
        let leaf =
            CertificateDer::from(crate::pem_to_der_certs(&issued.cert_pem).unwrap()[0].clone());
        let anchor = CertificateDer::from(ca.cert_der().to_vec());
        let trust = ServerTrust::new(vec![anchor.clone()], provider()).unwrap();
        check(&trust, &leaf, "db.internal").unwrap();
        let wrong = certificate_error(check(&trust, &leaf, "other.internal"));
        assert_eq!(
            describe_certificate_error(&wrong),
            "the certificate is not valid for the name other.internal: it is valid for db.internal only"
        );
        // The CA itself is an anchor, but not valid for the server's name
        // (it names none).
        check(&trust, &anchor, "db.internal").unwrap_err();
        let elsewhere =
            ServerTrust::new(vec![self_signed("other CA", &[], (-1, 30))], provider()).unwrap();
        assert_eq!(
            certificate_error(check(&elsewhere, &leaf, "db.internal")),
            CertificateError::UnknownIssuer
        );
    }

    #[test]
    fn anchors_that_cannot_be_anchors_are_named_or_skipped() {
        let good = self_signed("db.internal", &[], (-1, 30));
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let error = ServerTrust::new(vec![good.clone(), garbage.clone()], provider()).unwrap_err();
        assert!(
            matches!(error, ServerTrustError::Anchor { position: 2, .. }),
            "{error:?}"
        );
        ServerTrust::from_bundle(vec![garbage.clone(), good], provider()).unwrap();
        assert_eq!(
            ServerTrust::from_bundle(vec![garbage], provider()).unwrap_err(),
            ServerTrustError::NoAnchors
        );
    }
}
