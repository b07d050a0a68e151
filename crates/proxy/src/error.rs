//! The error that stops the proxy from starting or a reload from taking
//! effect: a file that cannot be used, TLS settings that do not build, a
//! listener that cannot bind. Connection-time failures are not errors of
//! this kind; they are refusals (`conn::Refused`).
//!
//! A `ProxyError`'s message is complete: it carries the cause in its own
//! words and `source()` returns nothing, so a caller that logs it with `%`
//! and one that prints an error chain both show each cause once.

use std::path::{Path, PathBuf};

use intransit_config::Endpoint;

/// Errors that stop the proxy from starting.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A file the configuration names could not be used.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file is for.
        what: String,
        /// Where it is.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A listener could not be prepared.
    #[error("listener {listener:?}: {error}")]
    Listener {
        /// The listener's name.
        listener: String,
        /// Why.
        error: Box<ProxyError>,
    },
    /// A listener could not bind its address.
    #[error("listener {listener:?}: cannot listen on {endpoint}: {error}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// The address.
        endpoint: Endpoint,
        /// The bind error.
        error: std::io::Error,
    },
}

impl ProxyError {
    pub(crate) fn file(what: &str, path: &Path, reason: impl Into<String>) -> Self {
        ProxyError::File {
            what: what.to_owned(),
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    /// Names the listener an error belongs to.
    pub(crate) fn in_listener(self, listener: &str) -> Self {
        ProxyError::Listener {
            listener: listener.to_owned(),
            error: Box::new(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// Each variant names its cause once: in its message, never again as
    /// a source that a chain printer would add.
    #[test]
    fn messages_carry_their_cause_once() {
        let bind = ProxyError::Bind {
            listener: "pg".into(),
            endpoint: Endpoint::parse("127.0.0.1:6432").unwrap_or_else(|e| panic!("{e}")),
            error: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let text = bind.to_string();
        assert_eq!(text.matches("address in use").count(), 1, "{text}");
        assert!(bind.source().is_none());

        let nested = ProxyError::file("server key", Path::new("/etc/key.pem"), "no such file")
            .in_listener("pg");
        assert_eq!(
            nested.to_string(),
            "listener \"pg\": server key /etc/key.pem: no such file"
        );
        assert!(nested.source().is_none());
    }
}
