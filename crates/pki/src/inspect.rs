//! Reading certificates: PEM decoding, fingerprints, SPKI pins and summaries.
//!
//! This module owns the read-only view of certificates used by reports,
//! `intransit cert` listings and pin checks. It never touches private keys.

use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519, OID_SIG_ED448,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::X509Name;

use crate::PkiError;

/// A human-oriented digest of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// Subject distinguished name, e.g. `O=intransit, CN=intransit local CA`.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// The subject's first common name, if any.
    pub common_name: Option<String>,
    /// Serial number as uppercase hex, as `openssl x509 -serial` prints it.
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP address subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// URI subject alternative names.
    pub uris: Vec<String>,
    /// Whether BasicConstraints says CA:true.
    pub is_ca: bool,
    /// Extended key usages by their short names (`serverAuth`, `clientAuth`,
    /// ...; unknown ones as dotted OIDs). Empty when the extension is absent.
    pub extended_key_usages: Vec<String>,
    /// Key type and size, e.g. `ECDSA P-256`, `RSA 2048`, `Ed25519`.
    pub key_description: String,
    /// Signature algorithm, e.g. `ecdsa-with-SHA256`, `sha256WithRSAEncryption`.
    pub signature_algorithm: String,
    /// SHA-256 of the DER certificate, see [`sha256_fingerprint`].
    pub fingerprint_sha256: String,
    /// SPKI pin, see [`spki_pin`].
    pub spki_pin: String,
}

/// Decodes every `CERTIFICATE` block of a PEM document, in order, skipping
/// other blocks (such as private keys). Fails if there is none.
pub fn pem_to_der_certs(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    decode_certs(pem, "certificate PEM")
}

/// Like [`pem_to_der_certs`], naming the document in errors.
pub(crate) fn decode_certs(pem: &str, what: &'static str) -> Result<Vec<Vec<u8>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|cert| cert.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            what,
            detail: describe_pem_error(&e),
        })?;
    if certs.is_empty() {
        return Err(PkiError::MissingPem {
            what,
            label: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// Says in words what is wrong with a PEM document, without quoting it.
/// The PEM decoder's own message prints the marker it looked for as a list
/// of byte values, and the line it rejected may belong to a private key,
/// so neither is shown as such.
pub fn describe_pem_error(error: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match error {
        // The decoder reports the label of the block left open.
        E::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            if end_marker.len() <= 40 && label.chars().all(|c| c.is_ascii_uppercase() || c == ' ') {
                format!("a PEM block has no end line \"-----END {label}-----\" (is the file complete?)")
            } else {
                "a PEM block has no end line (is the file complete?)".to_owned()
            }
        }
        E::IllegalSectionStart { .. } => {
            "a line that starts with \"-----BEGIN\" is not a valid PEM header (is the file complete and unedited?)".to_owned()
        }
        E::Base64Decode(detail) => {
            format!("the body of a PEM block is not valid base64: {detail} (is the file complete and unedited?)")
        }
        E::Io(e) => format!("cannot be read: {e}"),
        E::NoItemsFound => "no PEM block of the expected kind was found".to_owned(),
        E::SectionTooLarge => "a PEM block is larger than 256 MB".to_owned(),
        _ => "is not a PEM document this program can read".to_owned(),
    }
}

/// What a certificate revocation list says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlSummary {
    /// Issuer distinguished name, as `openssl crl -issuer` prints it.
    pub issuer: String,
    /// When it was issued.
    pub this_update: OffsetDateTime,
    /// When the next one is due; past it the CRL is stale. `None` when the
    /// CRL has no nextUpdate.
    pub next_update: Option<OffsetDateTime>,
    /// How many certificates it revokes.
    pub revoked: usize,
}

/// Decodes every `X509 CRL` block of a PEM document; there may be none.
pub fn pem_to_der_crls(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
        .map(|crl| crl.map(|c| c.as_ref().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            what: "CRL PEM",
            detail: describe_pem_error(&e),
        })
}

/// Parses a DER CRL into a [`CrlSummary`].
pub fn summarize_crl(der: &[u8]) -> Result<CrlSummary, PkiError> {
    let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|e| PkiError::Certificate {
        what: "CRL",
        detail: e.to_string(),
    })?;
    Ok(CrlSummary {
        issuer: crl.issuer().to_string(),
        this_update: crl.last_update().to_datetime(),
        next_update: crl.next_update().map(|t| t.to_datetime()),
        revoked: crl.iter_revoked_certificates().count(),
    })
}

/// Encodes DER as a PEM block with 64-character lines and a final newline.
pub(crate) fn encode_pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    let _ = writeln!(pem, "-----BEGIN {label}-----");
    // base64 output is ASCII, so splitting on byte boundaries is safe.
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    let _ = writeln!(pem, "-----END {label}-----");
    pem
}

/// The SHA-256 digest of `der` as colon-separated uppercase hex
/// (`AB:CD:...`), the format of `openssl x509 -fingerprint -sha256`.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    colon_hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

/// The HPKP-style pin of a certificate's public key: `sha256/` followed by
/// the standard base64 of the SHA-256 of its DER SubjectPublicKeyInfo.
/// The pin survives re-issuing a certificate for the same key.
pub fn spki_pin(cert_der: &[u8]) -> Result<String, PkiError> {
    let cert = parse_certificate(cert_der, "certificate")?;
    Ok(spki_pin_of(&cert))
}

/// Decodes and summarises one DER certificate.
pub fn summarize(cert_der: &[u8]) -> Result<CertificateSummary, PkiError> {
    let what = "certificate";
    let cert = parse_certificate(cert_der, what)?;
    let invalid = |e: x509_parser::error::X509Error| PkiError::Certificate {
        what,
        detail: e.to_string(),
    };

    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    let mut uris = Vec::new();
    if let Some(san) = cert.subject_alternative_name().map_err(invalid)? {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        ip_addresses.push(ip);
                    }
                }
                _ => {}
            }
        }
    }

    let is_ca = cert
        .basic_constraints()
        .map_err(invalid)?
        .is_some_and(|bc| bc.value.ca);

    let mut extended_key_usages = Vec::new();
    if let Some(eku) = cert.extended_key_usage().map_err(invalid)? {
        let eku = eku.value;
        for (present, name) in [
            (eku.any, "anyExtendedKeyUsage"),
            (eku.server_auth, "serverAuth"),
            (eku.client_auth, "clientAuth"),
            (eku.code_signing, "codeSigning"),
            (eku.email_protection, "emailProtection"),
            (eku.time_stamping, "timeStamping"),
            (eku.ocsp_signing, "OCSPSigning"),
        ] {
            if present {
                extended_key_usages.push(name.to_owned());
            }
        }
        extended_key_usages.extend(eku.other.iter().map(|oid| oid.to_id_string()));
    }

    Ok(CertificateSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        common_name: common_name(cert.subject()),
        serial_hex: serial_hex(&cert),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        dns_names,
        ip_addresses,
        uris,
        is_ca,
        extended_key_usages,
        key_description: key_description(&cert),
        signature_algorithm: oid_name(&cert.signature_algorithm.algorithm),
        fingerprint_sha256: sha256_fingerprint(cert_der),
        spki_pin: spki_pin_of(&cert),
    })
}

/// Parses exactly one DER certificate, rejecting trailing bytes.
pub(crate) fn parse_certificate<'a>(
    der: &'a [u8],
    what: &'static str,
) -> Result<X509Certificate<'a>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Certificate {
        what,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(PkiError::Certificate {
            what,
            detail: format!("{} unexpected bytes after the certificate", rest.len()),
        });
    }
    Ok(cert)
}

pub(crate) fn spki_pin_of(cert: &X509Certificate<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.public_key().raw);
    format!(
        "sha256/{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// The serial number as uppercase hex without a sign byte, e.g. `5F0A...`.
pub(crate) fn serial_hex(cert: &X509Certificate<'_>) -> String {
    let raw = cert.raw_serial();
    // DER prepends 0x00 to a positive number whose top bit is set; openssl
    // does not print it, and neither do we (but keep a lone zero).
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02X}");
        s
    })
}

pub(crate) fn common_name(name: &X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

fn key_description(cert: &X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_SIG_ED25519 {
        return "Ed25519".to_owned();
    }
    if *alg == OID_SIG_ED448 {
        return "Ed448".to_owned();
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => "ECDSA P-256".to_owned(),
            Some(c) if c == OID_NIST_EC_P384 => "ECDSA P-384".to_owned(),
            Some(c) if c == OID_NIST_EC_P521 => "ECDSA P-521".to_owned(),
            Some(c) => format!("ECDSA (curve {})", c.to_id_string()),
            None => "ECDSA (unknown curve)".to_owned(),
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
            _ => "RSA (unparseable key)".to_owned(),
        };
    }
    oid_name(alg)
}

fn oid_name(oid: &Oid<'_>) -> String {
    x509_parser::objects::oid2sn(oid, x509_parser::objects::oid_registry())
        .map(str::to_owned)
        .unwrap_or_else(|_| oid.to_id_string())
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn colon_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02X}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format() {
        // SHA-256 of the empty string.
        let fp = sha256_fingerprint(b"");
        assert!(fp.starts_with("E3:B0:C4:42:98:FC:1C:14"), "{fp}");
        assert_eq!(fp.len(), 32 * 3 - 1);
    }

    #[test]
    fn pem_errors_are_words_not_bytes() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n";
        let Err(err) = pem_to_der_certs(pem) else {
            panic!("a truncated PEM decoded");
        };
        let err = err.to_string();
        assert!(
            err.contains("no end line \"-----END CERTIFICATE-----\"")
                && err.contains("is the file complete?"),
            "{err}"
        );
        // The decoder's own message lists the label's bytes in brackets.
        assert!(!err.contains('['), "{err}");
    }

    #[test]
    fn pem_without_certificates_is_an_error() {
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            pem_to_der_certs(key_only),
            Err(PkiError::MissingPem { .. })
        ));
        assert!(matches!(
            pem_to_der_certs(""),
            Err(PkiError::MissingPem { .. })
        ));
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            pem_to_der_certs(broken),
            Err(PkiError::Pem { .. })
        ));
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            summarize(b"\x30\x03\x02\x01\x00"),
            Err(PkiError::Certificate { .. })
        ));
        assert!(spki_pin(b"").is_err());
    }
}
