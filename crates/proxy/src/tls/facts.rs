//! What a completed TLS handshake negotiated, read the same way on both
//! legs, for logs, metrics and audit events.

/// Version, suite, group and resumption of one TLS session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFacts {
    /// `TLSv1_3` or `TLSv1_2`.
    pub version: &'static str,
    /// The cipher suite.
    pub cipher: &'static str,
    /// The key-exchange group.
    pub group: &'static str,
    /// Whether the session was resumed from an earlier one.
    pub resumed: bool,
}

impl TlsFacts {
    /// Reads the facts of a handshake that completed, from either side.
    pub(crate) fn of(conn: &rustls::CommonState) -> Self {
        TlsFacts {
            version: conn
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("unknown"),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown"),
            group: conn
                .negotiated_key_exchange_group()
                .and_then(|g| g.name().as_str())
                .unwrap_or("unknown"),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        }
    }
}
