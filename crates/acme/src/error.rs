//! What can go wrong while getting a certificate from an ACME server, in
//! words that name the step, the challenge and the CA's own explanation.

use std::net::SocketAddr;
use std::path::PathBuf;

use intransit_pki::PkiError;

/// An ACME issuance that did not produce a certificate. Nothing was
/// installed: the certificate files in place before are untouched.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server did not answer (connection refused, TLS failure,
    /// timeout), even after the retries.
    #[error("the ACME server {directory} cannot be reached ({attempts} attempt(s)): {detail}")]
    Unreachable {
        /// The directory URL.
        directory: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        detail: String,
    },
    /// The CA validated a challenge and found it wanting.
    #[error(
        "the ACME server refused the {challenge} challenge for {identifier}: {detail}{hint}",
        hint = challenge_hint(challenge)
    )]
    ChallengeRefused {
        /// `http-01` or `tls-alpn-01`.
        challenge: &'static str,
        /// The identifier (DNS name or address) being validated.
        identifier: String,
        /// The CA's problem document: its detail and type.
        detail: String,
    },
    /// The CA does not offer the chosen challenge for an identifier.
    #[error(
        "the ACME server offers no {challenge} challenge for {identifier} (it offers {offered}); \
         choose another with --acme-challenge"
    )]
    ChallengeNotOffered {
        /// The challenge asked for.
        challenge: &'static str,
        /// The identifier.
        identifier: String,
        /// What the CA offers instead.
        offered: String,
    },
    /// The ACME server answered a request with a problem document, or with
    /// something that is not ACME.
    #[error("the ACME server refused {action}: {detail}")]
    Refused {
        /// What was asked, e.g. "the new order".
        action: &'static str,
        /// The problem document's detail and type, or what was wrong.
        detail: String,
        /// Whether trying again later may help (a server error, a
        /// timeout), as opposed to a refusal that will repeat.
        transient: bool,
    },
    /// The challenge answer could not be served where the CA looks.
    #[error(
        "cannot answer the {challenge} challenge on {addr}: choose another address with \
         {flag} (the CA connects to port {port} of each name)",
        flag = challenge_flag(challenge),
        port = challenge_port(challenge)
    )]
    Bind {
        /// The challenge.
        challenge: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why it could not be bound.
        #[source]
        source: std::io::Error,
    },
    /// The ACME account file could not be read or written.
    #[error("the ACME account file {}", path.display())]
    Account {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The ACME account file is not what this version writes.
    #[error(
        "the ACME account file {} is damaged ({detail}); remove it to register a new account",
        path.display()
    )]
    AccountDamaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The extra trust root for the ACME server's HTTPS is unusable.
    #[error("--acme-ca {}: {detail}", path.display())]
    ExtraRoot {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Something intransit itself could not prepare (a TLS configuration,
    /// a challenge certificate).
    #[error("preparing {action}: {detail}")]
    Local {
        /// What was being prepared.
        action: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// Something the PKI refused: the key, the CSR, the certificate the CA
    /// returned, or writing it.
    #[error("{action}")]
    Pki {
        /// What was being done.
        action: &'static str,
        /// The PKI's error.
        #[source]
        source: PkiError,
    },
}

impl AcmeError {
    /// Whether the same request may succeed later: the server was
    /// unreachable or had a server-side failure. A refused challenge or a
    /// refused request is not retried, since it would be refused again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AcmeError::Unreachable { .. }
                | AcmeError::Refused {
                    transient: true,
                    ..
                }
        )
    }
}

fn challenge_flag(challenge: &str) -> &'static str {
    if challenge == "tls-alpn-01" {
        "--acme-tls-alpn ADDR"
    } else {
        "--acme-http ADDR"
    }
}

fn challenge_port(challenge: &str) -> u16 {
    if challenge == "tls-alpn-01" {
        443
    } else {
        80
    }
}

fn challenge_hint(challenge: &str) -> String {
    format!(
        " (the CA must reach intransit's answer on port {} of that name: check DNS, firewalls \
         and {})",
        challenge_port(challenge),
        challenge_flag(challenge)
    )
}
