//! The certificate side of ACME: what an ACME client needs from the PKI
//! and what it hands back, without any of the protocol.
//!
//! [`AcmeRequest`] makes a fresh key and the certificate signing request
//! an ACME order is finalized with; [`AcmeCertificate`] is the chain the
//! CA returned with that key, checked (the leaf matches the key, is a
//! server certificate, names what was asked); and
//! [`StateDir::install_acme`](crate::StateDir::install_acme) writes it
//! where the built-in CA's certificate of that name goes, recording the
//! [`AcmeOrigin`] in the inventory so that renewal goes back to the same
//! ACME server. Like the rest of the crate, nothing here touches the network.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, DnType, SanType};
use serde::{Deserialize, Serialize};

use crate::inspect::{encode_pem, parse_certificate, pem_to_der_certs, summarize};
use crate::key::{parse_private_key, private_key_pem};
use crate::{CertificateSummary, KeyAlgorithm, PkiError};

/// Where an ACME-issued certificate came from and how it was validated, as
/// recorded in `inventory.json` so that `cert renew` and `intransit up` renew
/// it the same way. Field names are part of the inventory format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeOrigin {
    /// The ACME server's directory URL.
    pub directory: String,
    /// The challenge answered: `http-01` or `tls-alpn-01`.
    pub challenge: String,
    /// The address intransit answered the challenge on.
    pub challenge_addr: String,
    /// An extra trust root for the ACME server's own HTTPS, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_root: Option<PathBuf>,
    /// Contact addresses given to the account (`mailto:` URLs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact: Vec<String>,
}

/// A new key and the CSR that asks for a server certificate for its names.
pub struct AcmeRequest {
    /// The subject common name (the first DNS name, or the first address).
    pub common_name: String,
    /// DNS names asked for.
    pub dns_names: Vec<String>,
    /// IP addresses asked for.
    pub ip_addresses: Vec<IpAddr>,
    /// The key type.
    pub key: KeyAlgorithm,
    /// The CSR in DER, for the order's finalize request.
    pub csr_der: Vec<u8>,
    key_pem: String,
}

impl fmt::Debug for AcmeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeRequest")
            .field("common_name", &self.common_name)
            .field("dns_names", &self.dns_names)
            .field("ip_addresses", &self.ip_addresses)
            .field("key", &self.key)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

impl AcmeRequest {
    /// Generates a `key` key pair and a CSR for `dns_names` and
    /// `ip_addresses` (at least one name).
    pub fn new(
        dns_names: &[String],
        ip_addresses: &[IpAddr],
        key: KeyAlgorithm,
    ) -> Result<Self, PkiError> {
        let common_name = dns_names
            .first()
            .cloned()
            .or_else(|| ip_addresses.first().map(IpAddr::to_string))
            .ok_or_else(|| {
                PkiError::InvalidRequest(
                    "an ACME certificate needs at least one DNS name or IP address".to_owned(),
                )
            })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name.clone());
        params.distinguished_name = dn;
        for name in dns_names {
            let ia5 = Ia5String::try_from(name.as_str()).map_err(|_| {
                PkiError::InvalidRequest(format!("{name:?} must be ASCII to be a DNS name"))
            })?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        params
            .subject_alt_names
            .extend(ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        let key_pair = key.generate()?;
        let csr = params
            .serialize_request(&key_pair)
            .map_err(|e| PkiError::InvalidRequest(format!("building the CSR: {e}")))?;
        Ok(Self {
            common_name,
            dns_names: dns_names.to_vec(),
            ip_addresses: ip_addresses.to_vec(),
            key,
            csr_der: csr.der().to_vec(),
            key_pem: private_key_pem(&key_pair)?,
        })
    }

    /// Checks the chain an ACME CA returned for this request and pairs it
    /// with the request's key.
    pub fn into_certificate(
        self,
        chain_pem: &str,
        origin: AcmeOrigin,
    ) -> Result<AcmeCertificate, PkiError> {
        let ders = pem_to_der_certs(chain_pem)?;
        let Some((leaf_der, rest)) = ders.split_first() else {
            return Err(PkiError::MissingPem {
                what: "certificate chain from the ACME server",
                label: "CERTIFICATE",
            });
        };
        let leaf = parse_certificate(leaf_der, "certificate from the ACME server")?;
        let (key_pair, _) = parse_private_key(&self.key_pem, "ACME certificate key")?;
        if leaf.public_key().subject_public_key.data.as_ref() != key_pair.public_key_raw() {
            return Err(PkiError::Certificate {
                what: "certificate from the ACME server",
                detail: "its public key is not the key of the request".to_owned(),
            });
        }
        let summary = summarize(leaf_der)?;
        let missing: Vec<String> = self
            .dns_names
            .iter()
            .filter(|n| !summary.dns_names.contains(n))
            .cloned()
            .chain(
                self.ip_addresses
                    .iter()
                    .filter(|ip| !summary.ip_addresses.contains(ip))
                    .map(IpAddr::to_string),
            )
            .collect();
        if !missing.is_empty() {
            return Err(PkiError::Certificate {
                what: "certificate from the ACME server",
                detail: format!("it does not name {}", missing.join(", ")),
            });
        }
        Ok(AcmeCertificate {
            cert_pem: encode_pem("CERTIFICATE", leaf_der),
            issuers_pem: rest.iter().map(|d| encode_pem("CERTIFICATE", d)).collect(),
            summary,
            request: self,
            origin,
        })
    }

    pub(crate) fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

/// A certificate an ACME CA issued, with its key, ready to install.
#[derive(Debug)]
pub struct AcmeCertificate {
    /// The leaf in PEM.
    pub cert_pem: String,
    /// The issuers the CA sent after the leaf, in PEM (usually one
    /// intermediate; never the root).
    pub issuers_pem: String,
    /// What the leaf says.
    pub summary: CertificateSummary,
    /// The request it answers (names, key).
    pub request: AcmeRequest,
    /// Where it came from.
    pub origin: AcmeOrigin,
}
