//! Findings, the requirements they test, and the compliance controls each
//! requirement evidences.

use serde::Serialize;

/// One requirement of a policy. Its id is the rule id in reports (SARIF
/// `ruleId`), stable across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Requirement {
    /// TLS is offered at all.
    #[serde(rename = "tls.enabled")]
    TlsEnabled,
    /// No version below the policy's minimum is accepted.
    #[serde(rename = "tls.min_version")]
    MinVersion,
    /// Only allowed cipher suites are accepted.
    #[serde(rename = "tls.cipher_suites")]
    CipherSuites,
    /// Only allowed key-exchange groups are accepted.
    #[serde(rename = "tls.groups")]
    Groups,
    /// A post-quantum hybrid group is accepted.
    #[serde(rename = "tls.pq_hybrid")]
    PqHybrid,
    /// No plaintext login is possible.
    #[serde(rename = "transport.no_plaintext")]
    NoPlaintext,
    /// Clients must present certificates.
    #[serde(rename = "auth.client_certificate")]
    ClientCertificate,
    /// No unauthenticated (`trust`) access over the network.
    #[serde(rename = "auth.no_trust")]
    NoTrust,
    /// The certificate chains to a trusted anchor.
    #[serde(rename = "cert.trusted")]
    CertTrusted,
    /// The certificate names the host.
    #[serde(rename = "cert.hostname")]
    CertHostname,
    /// The certificate is valid and not about to expire.
    #[serde(rename = "cert.expiry")]
    CertExpiry,
    /// The key is large enough.
    #[serde(rename = "cert.key_size")]
    CertKeySize,
    /// The signature algorithm is allowed.
    #[serde(rename = "cert.signature")]
    CertSignature,
    /// The chain matches a pinned key.
    #[serde(rename = "cert.pin")]
    CertPin,
    /// Certificate and key files exist, are readable and have safe modes.
    #[serde(rename = "files.key_material")]
    KeyMaterialFiles,
}

/// A control a requirement evidences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Control {
    /// The framework: `PCI DSS 4.0`, `HIPAA`, `GDPR`, `SOC 2`,
    /// `ISO 27001:2022`, `NIST SP 800-52r2`.
    pub framework: &'static str,
    /// The control within it.
    pub id: &'static str,
}

const fn c(framework: &'static str, id: &'static str) -> Control {
    Control { framework, id }
}

const PCI_421: Control = c("PCI DSS 4.0", "4.2.1");
const PCI_4211: Control = c("PCI DSS 4.0", "4.2.1.1");
const HIPAA_E1: Control = c("HIPAA", "164.312(e)(1)");
const HIPAA_E2II: Control = c("HIPAA", "164.312(e)(2)(ii)");
const GDPR_32: Control = c("GDPR", "Art. 32(1)(a)");
const SOC2_CC61: Control = c("SOC 2", "CC6.1");
const SOC2_CC67: Control = c("SOC 2", "CC6.7");
const ISO_820: Control = c("ISO 27001:2022", "A.8.20");
const ISO_821: Control = c("ISO 27001:2022", "A.8.21");
const ISO_824: Control = c("ISO 27001:2022", "A.8.24");
const NIST_31: Control = c("NIST SP 800-52r2", "3.1 Protocol Version Support");
const NIST_32: Control = c("NIST SP 800-52r2", "3.2 Server Keys and Certificates");
const NIST_33: Control = c("NIST SP 800-52r2", "3.3 Cryptographic Support");
const NIST_35: Control = c("NIST SP 800-52r2", "3.5 Client Authentication");

impl Requirement {
    /// The stable id (`tls.min_version`).
    pub fn id(self) -> &'static str {
        match self {
            Requirement::TlsEnabled => "tls.enabled",
            Requirement::MinVersion => "tls.min_version",
            Requirement::CipherSuites => "tls.cipher_suites",
            Requirement::Groups => "tls.groups",
            Requirement::PqHybrid => "tls.pq_hybrid",
            Requirement::NoPlaintext => "transport.no_plaintext",
            Requirement::ClientCertificate => "auth.client_certificate",
            Requirement::NoTrust => "auth.no_trust",
            Requirement::CertTrusted => "cert.trusted",
            Requirement::CertHostname => "cert.hostname",
            Requirement::CertExpiry => "cert.expiry",
            Requirement::CertKeySize => "cert.key_size",
            Requirement::CertSignature => "cert.signature",
            Requirement::CertPin => "cert.pin",
            Requirement::KeyMaterialFiles => "files.key_material",
        }
    }

    /// What it asks, in one sentence.
    pub fn title(self) -> &'static str {
        match self {
            Requirement::TlsEnabled => "TLS is offered",
            Requirement::MinVersion => "No TLS version below the policy minimum is accepted",
            Requirement::CipherSuites => "Only the policy's cipher suites are accepted",
            Requirement::Groups => "Only the policy's key-exchange groups are accepted",
            Requirement::PqHybrid => "A post-quantum hybrid key exchange is accepted",
            Requirement::NoPlaintext => "No login is possible without TLS",
            Requirement::ClientCertificate => "Clients must present a certificate",
            Requirement::NoTrust => "No unauthenticated (trust) access over the network",
            Requirement::CertTrusted => "The server certificate chains to a trusted CA",
            Requirement::CertHostname => "The server certificate names the host",
            Requirement::CertExpiry => "The server certificate is valid and not close to expiry",
            Requirement::CertKeySize => "The certificate key is large enough",
            Requirement::CertSignature => "The certificate signature algorithm is allowed",
            Requirement::CertPin => "The certificate chain matches a pinned key",
            Requirement::KeyMaterialFiles => {
                "Certificate and key files exist, are readable and are not exposed"
            }
        }
    }

    /// The controls this requirement evidences.
    pub fn controls(self) -> &'static [Control] {
        match self {
            Requirement::TlsEnabled | Requirement::NoPlaintext => &[
                PCI_421, HIPAA_E1, HIPAA_E2II, GDPR_32, SOC2_CC67, ISO_820, ISO_824,
            ],
            Requirement::MinVersion => &[PCI_421, HIPAA_E2II, GDPR_32, SOC2_CC67, ISO_824, NIST_31],
            Requirement::CipherSuites | Requirement::Groups => {
                &[PCI_421, HIPAA_E2II, SOC2_CC67, ISO_824, NIST_33]
            }
            Requirement::PqHybrid => &[ISO_824, NIST_33],
            Requirement::ClientCertificate => &[HIPAA_E1, SOC2_CC61, ISO_820, ISO_821, NIST_35],
            Requirement::NoTrust => &[HIPAA_E1, SOC2_CC61, ISO_820, ISO_821],
            Requirement::CertTrusted | Requirement::CertHostname => {
                &[PCI_421, SOC2_CC67, ISO_824, NIST_32]
            }
            Requirement::CertExpiry => &[PCI_421, PCI_4211, ISO_824, NIST_32],
            Requirement::CertKeySize | Requirement::CertSignature => &[PCI_421, ISO_824, NIST_32],
            Requirement::CertPin => &[PCI_4211, ISO_824],
            Requirement::KeyMaterialFiles => &[PCI_4211, ISO_824, SOC2_CC61],
        }
    }
}

/// How a requirement fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// It holds.
    Pass,
    /// It does not hold: the policy fails.
    Fail,
    /// Worth attention, but the policy holds.
    Warn,
    /// Observed, no judgement.
    Info,
}

/// Where a finding was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// A file path or a target URL.
    pub uri: String,
    /// 1-based line, for files.
    pub line: Option<usize>,
}

/// One observation tested against one requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The requirement tested.
    pub requirement: Requirement,
    /// The outcome.
    pub status: Status,
    /// Where.
    pub location: Location,
    /// What was seen and, for a failure, what to change.
    pub message: String,
}

impl Finding {
    /// A finding in a file at a line.
    pub fn at_line(
        requirement: Requirement,
        status: Status,
        file: &str,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            requirement,
            status,
            location: Location {
                uri: file.to_owned(),
                line,
            },
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Requirement; 15] = [
        Requirement::TlsEnabled,
        Requirement::MinVersion,
        Requirement::CipherSuites,
        Requirement::Groups,
        Requirement::PqHybrid,
        Requirement::NoPlaintext,
        Requirement::ClientCertificate,
        Requirement::NoTrust,
        Requirement::CertTrusted,
        Requirement::CertHostname,
        Requirement::CertExpiry,
        Requirement::CertKeySize,
        Requirement::CertSignature,
        Requirement::CertPin,
        Requirement::KeyMaterialFiles,
    ];

    #[test]
    fn every_requirement_maps_to_controls_and_has_a_unique_id() {
        let ids: std::collections::HashSet<_> = ALL.iter().map(|r| r.id()).collect();
        assert_eq!(ids.len(), ALL.len());
        for r in ALL {
            assert!(!r.controls().is_empty(), "{r:?}");
            assert_eq!(
                serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned)),
                Some(r.id().to_owned())
            );
        }
    }

    #[test]
    fn the_frameworks_an_auditor_asks_about_are_all_covered() {
        let frameworks: std::collections::HashSet<_> = ALL
            .iter()
            .flat_map(|r| r.controls().iter().map(|c| c.framework))
            .collect();
        for f in [
            "PCI DSS 4.0",
            "HIPAA",
            "GDPR",
            "SOC 2",
            "ISO 27001:2022",
            "NIST SP 800-52r2",
        ] {
            assert!(frameworks.contains(f), "{f}");
        }
    }
}
