//! The one error type of the crate: every way a peer's bytes can be malformed.

/// A peer sent bytes that do not form a valid message, or a caller asked to
/// encode something the protocol cannot carry.
///
/// Messages are written for logs: they name the message and what is wrong
/// with it. They are not meant to be sent to the peer verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The length word of a PostgreSQL startup-phase packet is below 8 or
    /// above [`crate::pg::MAX_STARTUP_PACKET_LEN`] + 4.
    #[error("invalid length of startup packet: {length} bytes")]
    StartupPacketLength {
        /// The declared length, including the length word itself.
        length: u32,
    },

    /// An SSLRequest or GSSENCRequest whose length is not exactly 8.
    #[error("invalid length of {request}: {length} bytes, expected 8")]
    RequestLength {
        /// Which request ("SSLRequest" or "GSSENCRequest").
        request: &'static str,
        /// The declared length.
        length: u32,
    },

    /// A CancelRequest whose length does not leave room for a process id and
    /// a secret key of 1 to 256 bytes.
    #[error("invalid length of cancel request packet: {length} bytes")]
    CancelRequestLength {
        /// The declared length.
        length: u32,
    },

    /// A StartupMessage for a protocol major version other than 3, or a
    /// request code this crate does not know (PostgreSQL reads unknown codes
    /// as protocol versions too).
    #[error("unsupported frontend protocol {major}.{minor}: only protocol 3 is supported")]
    UnsupportedProtocolVersion {
        /// Upper 16 bits of the code.
        major: u16,
        /// Lower 16 bits of the code.
        minor: u16,
    },

    /// The parameter list of a StartupMessage is not a sequence of
    /// NUL-terminated name/value pairs ending in a single NUL.
    #[error("invalid startup packet layout: {reason}")]
    StartupPacketLayout {
        /// What is wrong, in a few words.
        reason: &'static str,
    },

    /// A StartupMessage without a non-empty `user` parameter.
    #[error("no PostgreSQL user name specified in startup packet")]
    MissingUser,

    /// A string that must be UTF-8 is not.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which string.
        what: &'static str,
    },

    /// A string to encode contains a NUL byte, which would end it early on
    /// the wire.
    #[error("{what} contains a NUL byte")]
    NulInString {
        /// Which string.
        what: &'static str,
    },

    /// A framed message (tag, length, body) declares a length below 4 or
    /// above the caller's maximum.
    #[error("invalid length {length} for message type '{}' (allowed: 4 to {max})", .tag.escape_ascii())]
    FrameLength {
        /// The message type byte.
        tag: u8,
        /// The declared length, including the length word itself.
        length: u32,
        /// The maximum the caller allowed.
        max: usize,
    },

    /// An Authentication message with a request code this crate does not
    /// handle (for example the long-removed KerberosV5 or SCM credentials).
    #[error("unsupported authentication request code {code}")]
    UnsupportedAuthentication {
        /// The authentication request code.
        code: u32,
    },

    /// A message whose body does not match its documented layout.
    #[error("malformed {message}: {reason}")]
    Malformed {
        /// Which message.
        message: &'static str,
        /// What is wrong, in a few words.
        reason: &'static str,
    },

    /// A TLS record header declaring more than [`crate::tls::MAX_RECORD_LEN`]
    /// bytes.
    #[error("TLS record length {length} exceeds the maximum of {max}")]
    TlsRecordTooLong {
        /// The declared record length.
        length: u16,
        /// The maximum allowed.
        max: usize,
    },
}
