//! intransit-compliance: TLS policies as code, findings mapped to the
//! compliance controls they evidence, reports (text, JSON, SARIF), and the
//! lint of database TLS configuration files.
//!
//! A [`Policy`] is a TOML file of requirements; presets ship built in
//! ([`PRESETS`]). Checks produce [`Finding`]s, each tied to one
//! [`Requirement`], and every requirement maps to the controls an auditor
//! asks about ([`Requirement::controls`]): PCI DSS 4.0, HIPAA, GDPR, SOC 2,
//! ISO 27001:2022 and NIST SP 800-52r2. A [`Report`] groups them.
//!
//! This crate reads files and renders text; it never opens a connection
//! (scanning live endpoints produces the same findings elsewhere) and never
//! writes a configuration file.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod finding;
pub mod lint;
mod policy;
mod report;
pub mod template;

use std::path::PathBuf;

pub use finding::{Control, Finding, Location, Requirement, Status};
pub use policy::{Policy, Version, DEFAULT_PRESET, PRESETS};
pub use report::{Report, JSON_SCHEMA_VERSION};

/// What can go wrong before any finding is made.
#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    /// The policy could not be read.
    #[error("policy: {0}")]
    Policy(String),
    /// A file to lint could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}
