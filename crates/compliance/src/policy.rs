//! Policies as code: a TOML file of requirements, and the presets that ship
//! built in.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ComplianceError;

/// A TLS version as policies name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Version {
    /// SSL 3.0.
    #[serde(rename = "ssl3")]
    Ssl3,
    /// TLS 1.0.
    #[serde(rename = "1.0")]
    Tls10,
    /// TLS 1.1.
    #[serde(rename = "1.1")]
    Tls11,
    /// TLS 1.2.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    Tls13,
}

impl Version {
    /// The name configuration files use: `TLSv1.2`.
    pub fn openssl_name(self) -> &'static str {
        match self {
            Version::Ssl3 => "SSLv3",
            Version::Tls10 => "TLSv1",
            Version::Tls11 => "TLSv1.1",
            Version::Tls12 => "TLSv1.2",
            Version::Tls13 => "TLSv1.3",
        }
    }

    /// Parses `TLSv1.2`, `TLSv1_2`, `1.2`, `tlsv1.2` and the like.
    pub fn parse(text: &str) -> Option<Version> {
        let t = text.trim().to_ascii_lowercase().replace('_', ".");
        let t = t
            .strip_prefix("tlsv")
            .or_else(|| t.strip_prefix("tls"))
            .unwrap_or(&t);
        match t.trim_start_matches('v') {
            "1" | "1.0" => Some(Version::Tls10),
            "1.1" => Some(Version::Tls11),
            "1.2" => Some(Version::Tls12),
            "1.3" => Some(Version::Tls13),
            "sslv3" | "ssl3" => Some(Version::Ssl3),
            _ => None,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.openssl_name())
    }
}

/// What a deployment must satisfy. Every field is one requirement (see
/// [`crate::Requirement`]); the presets set all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Short name, shown in reports.
    pub name: String,
    /// One line on what it is for.
    #[serde(default)]
    pub description: String,
    /// Lowest TLS version a server may accept.
    pub min_version: Version,
    /// Highest TLS version required to be offered (none: no requirement).
    #[serde(default)]
    pub max_version: Option<Version>,
    /// IANA names of the cipher suites a server may accept.
    pub allowed_suites: Vec<String>,
    /// Key-exchange groups a server may accept (`X25519MLKEM768`, `X25519`,
    /// `secp256r1`, ...).
    pub allowed_groups: Vec<String>,
    /// A post-quantum hybrid group (X25519MLKEM768) must be accepted.
    #[serde(default)]
    pub require_pq_hybrid: bool,
    /// Clients must present certificates.
    #[serde(default)]
    pub require_client_cert: bool,
    /// No plaintext login may be possible.
    #[serde(default = "yes")]
    pub no_plaintext: bool,
    /// Smallest RSA key, in bits.
    pub min_rsa_bits: u32,
    /// Smallest elliptic-curve key, in bits.
    pub min_ec_bits: u32,
    /// Signature algorithms a certificate may be signed with.
    pub allowed_signature_algorithms: Vec<String>,
    /// Certificates expiring within this many days fail.
    pub expiry_warning_days: u32,
    /// SPKI pins (`sha256/BASE64`); when set, the leaf or a CA in the chain
    /// must match one.
    #[serde(default)]
    pub pins: Vec<String>,
}

fn yes() -> bool {
    true
}

/// The built-in presets: name and TOML.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "mozilla-modern",
        include_str!("../presets/mozilla-modern.toml"),
    ),
    (
        "mozilla-intermediate",
        include_str!("../presets/mozilla-intermediate.toml"),
    ),
    (
        "nist-800-52r2",
        include_str!("../presets/nist-800-52r2.toml"),
    ),
    ("pci-dss-4", include_str!("../presets/pci-dss-4.toml")),
    ("hipaa", include_str!("../presets/hipaa.toml")),
];

/// The preset used when none is named.
pub const DEFAULT_PRESET: &str = "mozilla-intermediate";

impl Policy {
    /// Parses a policy file's text.
    pub fn from_toml(text: &str) -> Result<Policy, ComplianceError> {
        toml::from_str(text).map_err(|e| ComplianceError::Policy(e.to_string()))
    }

    /// A built-in preset by name.
    pub fn preset(name: &str) -> Option<Policy> {
        PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, text)| Policy::from_toml(text).ok())
    }

    /// The preset TOML text, to start a policy file from.
    pub fn preset_text(name: &str) -> Option<&'static str> {
        PRESETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    /// A preset name, or the path of a policy file.
    pub fn load(name_or_path: &str) -> Result<Policy, ComplianceError> {
        if let Some(p) = Policy::preset(name_or_path) {
            return Ok(p);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(ComplianceError::Policy(format!(
                "{name_or_path:?} is neither a preset ({}) nor a file",
                PRESETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ComplianceError::Policy(format!("{name_or_path}: {e}")))?;
        Policy::from_toml(&text)
            .map_err(|e| ComplianceError::Policy(format!("{name_or_path}: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_names_itself() {
        for (name, text) in PRESETS {
            let p = Policy::from_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&p.name, name);
            assert!(!p.allowed_suites.is_empty());
            assert!(p.no_plaintext);
        }
        assert_eq!(
            Policy::preset("mozilla-modern").unwrap().min_version,
            Version::Tls13
        );
        assert!(Policy::preset("hipaa").unwrap().require_client_cert);
        assert!(Policy::preset(DEFAULT_PRESET).is_some());
    }

    #[test]
    fn unknown_keys_and_names_are_refused() {
        let text = PRESETS[0].1.replace("min_rsa_bits", "min_rsa_bitz");
        assert!(Policy::from_toml(&text).is_err());
        assert!(Policy::load("no-such-preset").is_err());
    }

    #[test]
    fn versions_parse_in_every_spelling() {
        for (text, v) in [
            ("TLSv1.2", Version::Tls12),
            ("TLSv1_3", Version::Tls13),
            ("1.3", Version::Tls13),
            ("TLSv1", Version::Tls10),
            ("tlsv1.1", Version::Tls11),
        ] {
            assert_eq!(Version::parse(text), Some(v), "{text}");
        }
        assert_eq!(Version::parse("TLSv9"), None);
        assert!(Version::Tls12 < Version::Tls13);
    }
}
