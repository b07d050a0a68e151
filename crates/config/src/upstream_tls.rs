//! `[listener.upstream_tls]`: TLS on the leg from the proxy to the database.
//!
//! The modes follow libpq's `sslmode` names so that a database operator
//! reads them the way they already know them, plus `pinned`, where SPKI pins
//! alone decide. This module only validates the table; the proxy loads the
//! files it names and builds the rustls client configuration.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;

use crate::{err, ConfigError, Endpoint, TlsVersion};

/// How the proxy secures and checks the upstream leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTlsMode {
    /// Encrypt, but verify nothing about the server's certificate.
    Require,
    /// Encrypt, and the certificate must chain to `ca` (any name).
    VerifyCa,
    /// Encrypt; the certificate must chain to `ca` and carry the server name.
    VerifyFull,
    /// Encrypt; the certificate's public key must match one of the pins.
    /// Chain, name and validity period are not checked.
    Pinned,
}

impl fmt::Display for UpstreamTlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamTlsMode::Require => "require",
            UpstreamTlsMode::VerifyCa => "verify-ca",
            UpstreamTlsMode::VerifyFull => "verify-full",
            UpstreamTlsMode::Pinned => "pinned",
        })
    }
}

/// An SPKI pin: the SHA-256 of a certificate's DER SubjectPublicKeyInfo,
/// written `sha256/` followed by standard base64 (44 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpkiPin(String);

impl SpkiPin {
    /// Parses `sha256/BASE64`; the digest must be 32 bytes. The stored form
    /// is the canonical (padded standard base64) encoding, so pins compare
    /// as strings with what `intransit cert inspect` prints.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(encoded) = text.trim().strip_prefix("sha256/") else {
            return Err(format!(
                "{text:?} is not a pin; write \"sha256/\" followed by the base64 SHA-256 of the SubjectPublicKeyInfo, as `intransit pin FILE` or `intransit pin postgres://HOST:PORT` prints it"
            ));
        };
        let engine = base64::engine::general_purpose::STANDARD;
        let digest = engine
            .decode(encoded)
            .map_err(|e| format!("{text:?}: the part after \"sha256/\" is not base64 ({e})"))?;
        if digest.len() != 32 {
            return Err(format!(
                "{text:?}: a SHA-256 pin is 32 bytes, this one decodes to {}",
                digest.len()
            ));
        }
        Ok(SpkiPin(format!("sha256/{}", engine.encode(digest))))
    }

    /// The canonical `sha256/BASE64` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name the upstream certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamServerName {
    /// A DNS name, also sent as SNI.
    Dns(String),
    /// An IP address: checked against the certificate's IP SANs, no SNI.
    Ip(IpAddr),
}

impl fmt::Display for UpstreamServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamServerName::Dns(name) => f.write_str(name),
            UpstreamServerName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl UpstreamServerName {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(ip) = text.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(UpstreamServerName::Ip(ip));
        }
        let valid = !text.is_empty()
            && text.len() <= 253
            && text.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        if valid {
            Ok(UpstreamServerName::Dns(text.to_ascii_lowercase()))
        } else {
            Err(format!("{text:?} is neither a DNS name nor an IP address"))
        }
    }
}

/// A validated `[listener.upstream_tls]` (mode other than `disable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// What is checked.
    pub mode: UpstreamTlsMode,
    /// Trust anchors for the server certificate (PEM); set for the
    /// `verify-*` modes, absent otherwise.
    pub ca: Option<PathBuf>,
    /// Client certificate chain the proxy presents (PEM), with `key`.
    pub cert: Option<PathBuf>,
    /// Private key of `cert` (PEM).
    pub key: Option<PathBuf>,
    /// The name to verify and send as SNI; taken from the upstream's host
    /// when the table leaves it out.
    pub server_name: UpstreamServerName,
    /// Whether `server_name` was written in the table (a route that
    /// inherits the table recomputes a derived name from its own upstream).
    pub server_name_explicit: bool,
    /// Accepted SPKI pins: one must match. Checked on top of the chain and
    /// name in the `verify-*` modes; alone in `pinned`.
    pub pins: Vec<SpkiPin>,
    /// Lowest TLS version offered to the server.
    pub min_version: TlsVersion,
    /// PostgreSQL only: start TLS at the first byte with ALPN `postgresql`
    /// (PostgreSQL 17's direct TLS) instead of sending an SSLRequest.
    pub direct: bool,
}

impl UpstreamTls {
    /// The same settings for another upstream: a derived server name is
    /// recomputed from that upstream's host. A unix-socket upstream is
    /// refused whether or not the name is derived.
    pub(crate) fn for_upstream(&self, k: &str, upstream: &Endpoint) -> Result<Self, ConfigError> {
        if let Endpoint::Unix(_) = upstream {
            return Err(unix_refused(k));
        }
        if self.server_name_explicit {
            return Ok(self.clone());
        }
        let server_name = derived_server_name(k, upstream)?;
        Ok(UpstreamTls {
            server_name,
            ..self.clone()
        })
    }
}

fn derived_server_name(k: &str, upstream: &Endpoint) -> Result<UpstreamServerName, ConfigError> {
    match upstream {
        Endpoint::Tcp { host, .. } => UpstreamServerName::parse(host).map_err(|m| {
            err(
                format!("{k}.server_name"),
                format!("the upstream host {m}; set server_name"),
            )
        }),
        Endpoint::Unix(_) => Err(unix_refused(k)),
    }
}

fn unix_refused(k: &str) -> ConfigError {
    err(
        k,
        "TLS on a unix-socket upstream is not supported: PostgreSQL and MariaDB do not offer TLS on unix sockets, and the socket never leaves the host; use a host:port upstream or remove upstream_tls",
    )
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    mode: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
    pins: Option<Vec<String>>,
    min_version: Option<String>,
    direct: Option<bool>,
}

impl RawUpstreamTls {
    /// Validates the table for `upstream`; `Ok(None)` is `mode = "disable"`.
    pub(crate) fn validate(
        self,
        k: &str,
        upstream: &Endpoint,
    ) -> Result<Option<UpstreamTls>, ConfigError> {
        let mode = match self.mode.as_deref() {
            Some("disable") => {
                let set: Vec<&str> = [
                    ("ca", self.ca.is_some()),
                    ("cert", self.cert.is_some()),
                    ("key", self.key.is_some()),
                    ("server_name", self.server_name.is_some()),
                    ("pins", self.pins.is_some()),
                    ("min_version", self.min_version.is_some()),
                    ("direct", self.direct.is_some()),
                ]
                .into_iter()
                .filter_map(|(name, present)| present.then_some(name))
                .collect();
                if let Some(first) = set.first() {
                    return Err(err(
                        format!("{k}.{first}"),
                        "mode = \"disable\" sends plaintext; remove the other upstream_tls keys or choose another mode",
                    ));
                }
                return Ok(None);
            }
            None | Some("verify-full") => UpstreamTlsMode::VerifyFull,
            Some("require") => UpstreamTlsMode::Require,
            Some("verify-ca") => UpstreamTlsMode::VerifyCa,
            Some("pinned") => UpstreamTlsMode::Pinned,
            Some(other) => {
                return Err(err(
                    format!("{k}.mode"),
                    format!("{other:?} is not a mode; use \"disable\", \"require\", \"verify-ca\", \"verify-full\" (default) or \"pinned\""),
                ))
            }
        };
        if let Endpoint::Unix(_) = upstream {
            return Err(unix_refused(k));
        }
        let mut pins = Vec::new();
        for (i, text) in self.pins.iter().flatten().enumerate() {
            pins.push(SpkiPin::parse(text).map_err(|m| err(format!("{k}.pins[{i}]"), m))?);
        }
        match mode {
            UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull if self.ca.is_none() => {
                return Err(err(
                    format!("{k}.ca"),
                    format!("missing; mode = \"{mode}\" needs the CA that signs the database's certificate (PEM), or use mode = \"pinned\" with pins"),
                ));
            }
            UpstreamTlsMode::Pinned if pins.is_empty() => {
                return Err(err(
                    format!("{k}.pins"),
                    "missing; mode = \"pinned\" needs at least one pin, e.g. pins = [\"sha256/...\"]; `intransit pin FILE` prints a certificate file's pins, `intransit pin postgres://HOST:PORT` (or mysql://, tls://) those of the chain a server presents",
                ));
            }
            UpstreamTlsMode::Pinned if self.ca.is_some() => {
                return Err(err(
                    format!("{k}.ca"),
                    "mode = \"pinned\" decides by pins alone and would not use ca; remove ca, or use mode = \"verify-full\" with pins to check both",
                ));
            }
            UpstreamTlsMode::Require if self.ca.is_some() || !pins.is_empty() => {
                let key = if self.ca.is_some() { "ca" } else { "pins" };
                return Err(err(
                    format!("{k}.{key}"),
                    "mode = \"require\" verifies nothing and would not use it; use mode = \"verify-full\" (or \"verify-ca\", or \"pinned\")",
                ));
            }
            _ => {}
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(err(
                    format!("{k}.key"),
                    "missing; cert needs the private key the proxy signs with (PEM)",
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    format!("{k}.cert"),
                    "missing; key needs the client certificate chain it belongs to (PEM)",
                ))
            }
            _ => {}
        }
        let min_version = match self.min_version.as_deref() {
            None | Some("1.3") => TlsVersion::V1_3,
            Some("1.2") => TlsVersion::V1_2,
            Some(other) => {
                return Err(err(
                    format!("{k}.min_version"),
                    format!("{other:?} is not supported; use \"1.3\" (default) or \"1.2\""),
                ))
            }
        };
        let (server_name, server_name_explicit) = match &self.server_name {
            Some(text) => (
                UpstreamServerName::parse(text).map_err(|m| err(format!("{k}.server_name"), m))?,
                true,
            ),
            None => (derived_server_name(k, upstream)?, false),
        };
        Ok(Some(UpstreamTls {
            mode,
            ca: self.ca,
            cert: self.cert,
            key: self.key,
            server_name,
            server_name_explicit,
            pins,
            min_version,
            direct: self.direct.unwrap_or(false),
        }))
    }
}
