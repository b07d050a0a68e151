//! The error that stops the proxy from starting or a reload from taking
//! effect: a file that cannot be used, TLS settings that do not build, a
//! listener that cannot bind. Connection-time failures are not errors of
//! this kind; they are refusals (`conn::Refused`).

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
    #[error("listener {listener:?}: {source}")]
    Listener {
        /// The listener's name.
        listener: String,
        /// Why.
        source: Box<ProxyError>,
    },
    /// A listener could not bind its address.
    #[error("listener {listener:?}: cannot listen on {endpoint}: {source}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// The address.
        endpoint: Endpoint,
        /// The bind error.
        source: std::io::Error,
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
            source: Box::new(self),
        }
    }
}
