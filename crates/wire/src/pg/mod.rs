//! PostgreSQL frontend/backend protocol (version 3): the messages a
//! TLS-terminating proxy reads and writes before the byte pump starts.
//!
//! This module owns:
//! - the first packet of a connection ([`parse_initial_message`]): SSLRequest,
//!   GSSENCRequest, CancelRequest, StartupMessage, or the first byte of a
//!   PostgreSQL 17 direct TLS ClientHello;
//! - the requests and one-byte answers the proxy sends itself
//!   ([`encode_ssl_request`], [`SSL_ACCEPT`], [`SSL_REFUSE`]);
//! - message framing after startup ([`parse_backend_frame`],
//!   [`parse_frontend_frame`]);
//! - Authentication requests ([`parse_authentication`],
//!   [`encode_authentication_sasl`], [`without_channel_binding`]) and the
//!   client's answer ([`parse_sasl_initial_response`]);
//! - the client's answers to them ([`encode_password_message`],
//!   [`encode_sasl_initial_response`], [`encode_sasl_response`]), for the
//!   proxy's own logins;
//! - the session phase of a pooled connection ([`session`]): message
//!   boundaries, and the messages a pool reads and writes itself;
//! - ErrorResponse building and parsing ([`ErrorResponse`],
//!   [`parse_error_response`]).
//!
//! It must never touch a socket, decide policy (whether plaintext is
//! refused, which identity may use which database user) or interpret query
//! traffic. Limits and layout rules follow the PostgreSQL server
//! (`src/backend/tcop/backend_startup.c`, `postmaster.c` before 17), so a
//! packet PostgreSQL would accept is accepted here and a packet it would
//! reject is rejected here.

mod auth;
mod error_response;
mod frame;
pub mod session;
mod startup;

#[doc(hidden)]
pub mod captured;

pub use auth::{
    encode_authentication_sasl, encode_password_message, encode_sasl_initial_response,
    encode_sasl_response, parse_authentication, parse_sasl_initial_response,
    without_channel_binding, AuthenticationRequest, SaslInitialResponse, AUTH_CLEARTEXT_PASSWORD,
    AUTH_GSS, AUTH_GSS_CONTINUE, AUTH_MD5_PASSWORD, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL, AUTH_SSPI, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
pub use error_response::{
    error_field, parse_error_response, ErrorResponse, ErrorResponseFields, Severity, SqlState,
    MAX_ERROR_FIELD_LEN,
};
pub use frame::{
    parse_backend_frame, parse_backend_frame_with_max, parse_frontend_frame,
    parse_frontend_frame_with_max, BackendFrame, FrontendFrame, MAX_FRAME_LEN,
};
pub use startup::{
    encode_gssenc_request, encode_ssl_request, parse_initial_message, CancelRequest,
    InitialMessage, ProtocolVersion, StartupMessage, ALPN, CANCEL_REQUEST_CODE, GSSENC_REFUSE,
    GSSENC_REQUEST_CODE, MAX_CANCEL_KEY_LEN, MAX_STARTUP_PACKET_LEN, PROTOCOL_VERSION_3_0,
    PROTOCOL_VERSION_3_2, SSL_ACCEPT, SSL_REFUSE, SSL_REQUEST_CODE,
};

/// Reads a big-endian u32 at `at`, or `None` if `buf` is too short.
fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// Splits a NUL-terminated string off the front of `buf`: the bytes before
/// the NUL, and everything after it. `None` if there is no NUL.
fn split_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((buf.get(..nul)?, buf.get(nul + 1..)?))
}

/// Frames `body` as a regular message: tag, length word (counting itself),
/// body.
///
/// Callers only pass bodies they built and bounded themselves (error fields
/// are capped, mechanism lists are short), so the length always fits; the
/// saturation is there so that no input can make this panic.
fn encode_frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(body.len().saturating_add(4)).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Test helpers shared by the test modules of this folder.
#[cfg(test)]
pub(crate) mod test_util {
    /// Decodes a hex string (whitespace ignored); panics on bad input, which
    /// only ever comes from constants in this crate's tests.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(digits.len().is_multiple_of(2), "odd hex length");
        digits
            .chunks(2)
            .map(|pair| {
                let text = std::str::from_utf8(pair).unwrap_or("zz");
                u8::from_str_radix(text, 16).unwrap_or_else(|_| panic!("bad hex {text:?}"))
            })
            .collect()
    }
}
