//! Who may connect, and as whom.
//!
//! `intransit-policy` owns the access-control decisions the proxy makes about
//! a client whose certificate the TLS stack has already verified: identity
//! extraction ([`ClientIdentity`]), allow-lists over certificate names with
//! globs ([`AllowList`]), and the mapping of identities to database users
//! ([`DbUserRules`]). Everything here is a pure function of its inputs: no
//! I/O, no clocks, no TLS.

mod identity;
mod rules;

pub use identity::{ClientIdentity, IdentityKind, IdentityName};
pub use rules::{AllowDecision, AllowList, DbUserRule, DbUserRules, IdentityPattern};

/// Errors from building policy rules or reading identities.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// An identity pattern could not be parsed.
    #[error("identity pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `db_users` regular expression is invalid.
    #[error("identity_regex {regex:?}: {reason}")]
    Regex {
        /// The expression as written.
        regex: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate could not be parsed.
    #[error("cannot read certificate: {0}")]
    Certificate(String),
}
