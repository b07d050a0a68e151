//! The errors of fetching a server's certificate chain.
//!
//! This module owns [`ScanError`] and [`Stage`], which together say how far a
//! probe got and why it stopped. It never decides what a caller does with an
//! error (retry, exit code, report finding); that is the caller's job.
//!
//! A `ScanError`'s message is complete, the operating system's words
//! included, and `source()` returns nothing: reports show it as text, and
//! an error chain printed by a binary shows each cause once.

use std::fmt;
use std::io;
use std::time::Duration;

/// How far a probe had got when it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Resolving the host name and opening the TCP connection.
    Connecting,
    /// Sending the database protocol's request to start TLS.
    RequestingTls,
    /// Waiting for the PostgreSQL server's one-byte answer to SSLRequest.
    AwaitingSslAnswer,
    /// Waiting for the MySQL server's greeting, which it sends first.
    AwaitingGreeting,
    /// The TLS handshake.
    TlsHandshake,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connecting => "connecting",
            Stage::RequestingTls => "sending the request to start TLS",
            Stage::AwaitingSslAnswer => "waiting for the answer to the SSLRequest",
            Stage::AwaitingGreeting => "waiting for the MySQL server greeting",
            Stage::TlsHandshake => "in the TLS handshake",
        })
    }
}

/// Why a certificate chain could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The TCP connection could not be opened (name resolution failed, or
    /// every address refused or was unreachable).
    #[error("connecting to {address}: {error}")]
    Connect {
        /// The `host:port` that was dialled.
        address: String,
        /// What the operating system said.
        error: io::Error,
    },
    /// The server did not answer within the configured timeout.
    #[error("no answer within {timeout:?} while {stage}")]
    Timeout {
        /// What the probe was waiting for.
        stage: Stage,
        /// The configured timeout for the whole probe.
        timeout: Duration,
    },
    /// The server speaks the database protocol but does not offer TLS.
    #[error("the server does not offer TLS: {reason}")]
    TlsRefused {
        /// How the server said so, e.g. "it answered the SSLRequest with N".
        reason: &'static str,
    },
    /// The server sent an error message instead of negotiating, such as
    /// MySQL's "Host ... is not allowed to connect".
    #[error("the server refused the connection before TLS: {message}")]
    ServerError {
        /// The server's own words, with its error code.
        message: String,
    },
    /// The server's bytes do not follow the database protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Reading or writing failed after the connection was open, including
    /// the server closing it early.
    #[error("connection failed while {stage}: {error}")]
    Io {
        /// What the probe was doing.
        stage: Stage,
        /// What the operating system said.
        error: io::Error,
    },
    /// The TLS handshake failed; the text is rustls's.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The name given for SNI is neither a DNS name nor an IP address.
    #[error(
        "{0:?} cannot be sent as a TLS server name: it is neither a DNS name nor an IP address"
    )]
    InvalidServerName(String),
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn messages_carry_their_cause_once() {
        let errors = [
            ScanError::Connect {
                address: "127.0.0.1:5432".into(),
                error: io::Error::from(io::ErrorKind::ConnectionRefused),
            },
            ScanError::Io {
                stage: Stage::TlsHandshake,
                error: io::Error::from(io::ErrorKind::ConnectionRefused),
            },
        ];
        for e in errors {
            let text = e.to_string();
            assert_eq!(text.matches("connection refused").count(), 1, "{text}");
            assert!(e.source().is_none(), "{text}");
        }
    }
}
