//! Client identities: what a verified certificate says about its holder.
//!
//! This module owns the extraction of names from a certificate that has
//! already been verified by the TLS stack. It never verifies signatures,
//! validity or trust: by the time a certificate reaches [`ClientIdentity`],
//! rustls has done that.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::PolicyError;

/// The kinds of name a certificate can carry that policy rules match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// The subject's Common Name.
    Cn,
    /// A DNS name from the Subject Alternative Name extension.
    Dns,
    /// A URI from the Subject Alternative Name extension (SPIFFE IDs live here).
    Uri,
    /// The SHA-256 pin of the SubjectPublicKeyInfo, as `sha256/BASE64`.
    Spki,
}

impl IdentityKind {
    /// The prefix used in configuration and logs (`cn`, `dns`, `uri`, `spki`).
    pub fn prefix(self) -> &'static str {
        match self {
            IdentityKind::Cn => "cn",
            IdentityKind::Dns => "dns",
            IdentityKind::Uri => "uri",
            IdentityKind::Spki => "spki",
        }
    }

    pub(crate) fn from_prefix(prefix: &str) -> Option<Self> {
        match prefix {
            "cn" => Some(IdentityKind::Cn),
            "dns" => Some(IdentityKind::Dns),
            "uri" => Some(IdentityKind::Uri),
            "spki" => Some(IdentityKind::Spki),
            _ => None,
        }
    }
}

/// One name of a client, with its kind: `uri:spiffe://prod/trainer`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentityName {
    /// What kind of name this is.
    pub kind: IdentityKind,
    /// The name itself, as it appears in the certificate.
    pub value: String,
}

impl fmt::Display for IdentityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.prefix(), self.value)
    }
}

/// Everything policy rules may match on about a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject Common Name, if any.
    pub common_name: Option<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// URI SANs.
    pub uris: Vec<String>,
    /// `sha256/BASE64` pin of the public key.
    pub spki_pin: String,
}

impl ClientIdentity {
    /// Reads the names out of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, PolicyError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| PolicyError::Certificate(e.to_string()))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut dns_names = Vec::new();
        let mut uris = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    _ => {}
                }
            }
        }
        let spki_pin =
            intransit_pki::spki_pin(der).map_err(|e| PolicyError::Certificate(e.to_string()))?;
        Ok(ClientIdentity {
            common_name,
            dns_names,
            uris,
            spki_pin,
        })
    }

    /// Every name of this identity, URIs first, then DNS names, the CN and the pin.
    pub fn names(&self) -> Vec<IdentityName> {
        let mut names = Vec::new();
        for u in &self.uris {
            names.push(IdentityName {
                kind: IdentityKind::Uri,
                value: u.clone(),
            });
        }
        for d in &self.dns_names {
            names.push(IdentityName {
                kind: IdentityKind::Dns,
                value: d.clone(),
            });
        }
        if let Some(cn) = &self.common_name {
            names.push(IdentityName {
                kind: IdentityKind::Cn,
                value: cn.clone(),
            });
        }
        names.push(IdentityName {
            kind: IdentityKind::Spki,
            value: self.spki_pin.clone(),
        });
        names
    }

    /// The name used to refer to this client in logs: the first URI SAN
    /// (SPIFFE IDs are the most specific), else the CN, else the first DNS
    /// name, else the key pin.
    pub fn primary(&self) -> IdentityName {
        if let Some(u) = self.uris.first() {
            return IdentityName {
                kind: IdentityKind::Uri,
                value: u.clone(),
            };
        }
        if let Some(cn) = &self.common_name {
            return IdentityName {
                kind: IdentityKind::Cn,
                value: cn.clone(),
            };
        }
        if let Some(d) = self.dns_names.first() {
            return IdentityName {
                kind: IdentityKind::Dns,
                value: d.clone(),
            };
        }
        IdentityName {
            kind: IdentityKind::Spki,
            value: self.spki_pin.clone(),
        }
    }
}

impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.primary().fmt(f)
    }
}
