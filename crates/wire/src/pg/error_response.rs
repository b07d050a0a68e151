//! ErrorResponse ('E'): building the refusals the proxy sends to clients,
//! and reading the ones a server sends.
//!
//! The proxy answers in English and never localizes, so the localized (S)
//! and non-localized (V) severity fields carry the same word. What goes into
//! a message is the caller's business; per the project's rule, it should
//! tell the peer what to do and nothing about the proxy's internals.

use std::fmt;

use super::{encode_frame, split_cstr, BackendFrame};
use crate::WireError;

/// The longest text field [`ErrorResponse::encode`] sends, in bytes. Longer
/// text is cut at a character boundary, so that echoing something a client
/// sent (a user name, say) cannot make our answer large.
pub const MAX_ERROR_FIELD_LEN: usize = 4096;

/// Field type bytes of ErrorResponse and NoticeResponse.
pub mod error_field {
    /// Severity, possibly localized (`FATAL`, `FEHLER`, ...).
    pub const SEVERITY_LOCALIZED: u8 = b'S';
    /// Severity, never localized (PostgreSQL 9.6 and later).
    pub const SEVERITY: u8 = b'V';
    /// SQLSTATE code.
    pub const CODE: u8 = b'C';
    /// Primary message.
    pub const MESSAGE: u8 = b'M';
    /// Detail.
    pub const DETAIL: u8 = b'D';
    /// Hint.
    pub const HINT: u8 = b'H';
}

/// Severity of an ErrorResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// The current command failed; the session continues.
    Error,
    /// The session ends. Every refusal before authentication completes is
    /// FATAL.
    Fatal,
    /// The server is going down.
    Panic,
}

impl Severity {
    /// The non-localized word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A five-character SQLSTATE code: digits and upper-case ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// 28000 invalid_authorization_specification: the generic refusal,
    /// used by PostgreSQL for pg_hba rejections (and by us for "TLS
    /// required").
    pub const INVALID_AUTHORIZATION_SPECIFICATION: Self = Self(*b"28000");
    /// 28P01 invalid_password.
    pub const INVALID_PASSWORD: Self = Self(*b"28P01");
    /// 08001 sqlclient_unable_to_establish_sqlconnection.
    pub const UNABLE_TO_ESTABLISH_CONNECTION: Self = Self(*b"08001");
    /// 08006 connection_failure: the upstream could not be reached.
    pub const CONNECTION_FAILURE: Self = Self(*b"08006");
    /// 08P01 protocol_violation.
    pub const PROTOCOL_VIOLATION: Self = Self(*b"08P01");
    /// 0A000 feature_not_supported.
    pub const FEATURE_NOT_SUPPORTED: Self = Self(*b"0A000");
    /// 53300 too_many_connections.
    pub const TOO_MANY_CONNECTIONS: Self = Self(*b"53300");
    /// 57P03 cannot_connect_now: the proxy is draining.
    pub const CANNOT_CONNECT_NOW: Self = Self(*b"57P03");

    /// Checks that `code` is five digits or upper-case ASCII letters.
    pub fn new(code: &str) -> Option<Self> {
        let bytes: [u8; 5] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            .then_some(Self(bytes))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only `new` and the constants build a SqlState, and both allow
        // ASCII only.
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ErrorResponse the proxy sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// Severity; FATAL for every refusal of a connection.
    pub severity: Severity,
    /// SQLSTATE, which client programs act on.
    pub code: SqlState,
    /// Primary message, one line, what went wrong.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint: what the client should do (for example, how to
    /// connect with TLS).
    pub hint: Option<String>,
}

impl ErrorResponse {
    /// A FATAL error with this code and message.
    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// Adds a detail field.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a hint field.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The complete message: 'E', length, fields S, V, C, M, then D and H
    /// when present, and the terminating NUL.
    ///
    /// NUL bytes in the text are removed, since a NUL would end the field on
    /// the wire and turn the rest into bogus fields; text is then cut to
    /// [`MAX_ERROR_FIELD_LEN`] bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64 + self.message.len());
        let severity = self.severity.as_str();
        push_field(&mut body, error_field::SEVERITY_LOCALIZED, severity);
        push_field(&mut body, error_field::SEVERITY, severity);
        push_field(&mut body, error_field::CODE, self.code.as_str());
        push_field(&mut body, error_field::MESSAGE, &self.message);
        if let Some(detail) = &self.detail {
            push_field(&mut body, error_field::DETAIL, detail);
        }
        if let Some(hint) = &self.hint {
            push_field(&mut body, error_field::HINT, hint);
        }
        body.push(0);
        encode_frame(BackendFrame::ERROR_RESPONSE, &body)
    }
}

fn push_field(body: &mut Vec<u8>, field: u8, text: &str) {
    let clean: String = text.chars().filter(|&c| c != '\0').collect();
    let mut end = clean.len().min(MAX_ERROR_FIELD_LEN);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    body.push(field);
    body.extend_from_slice(clean.as_bytes().get(..end).unwrap_or_default());
    body.push(0);
}

/// The fields of a parsed ErrorResponse or NoticeResponse, in wire order.
///
/// Text is converted to UTF-8 lossily: servers send messages in their own
/// encoding before the client encoding is settled, and these fields are only
/// displayed and logged, never matched for security decisions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorResponseFields {
    /// (field type byte, text) pairs.
    pub fields: Vec<(u8, String)>,
}

impl ErrorResponseFields {
    /// The first field of this type.
    pub fn get(&self, field: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, text)| text.as_str())
    }

    /// The non-localized severity, or the localized one from servers before
    /// 9.6.
    pub fn severity(&self) -> Option<&str> {
        self.get(error_field::SEVERITY)
            .or_else(|| self.get(error_field::SEVERITY_LOCALIZED))
    }

    /// The SQLSTATE, if present and well formed.
    pub fn code(&self) -> Option<SqlState> {
        self.get(error_field::CODE).and_then(SqlState::new)
    }

    /// The primary message.
    pub fn message(&self) -> Option<&str> {
        self.get(error_field::MESSAGE)
    }

    /// The detail.
    pub fn detail(&self) -> Option<&str> {
        self.get(error_field::DETAIL)
    }

    /// The hint.
    pub fn hint(&self) -> Option<&str> {
        self.get(error_field::HINT)
    }
}

/// Parses the body of an ErrorResponse or NoticeResponse (the bytes after
/// type and length, as in [`BackendFrame::body`]).
pub fn parse_error_response(body: &[u8]) -> Result<ErrorResponseFields, WireError> {
    let malformed = |reason| WireError::Malformed {
        message: "ErrorResponse",
        reason,
    };
    let mut fields = Vec::new();
    let mut rest = body;
    loop {
        let Some((&field, after_type)) = rest.split_first() else {
            return Err(malformed("missing terminator"));
        };
        if field == 0 {
            if !after_type.is_empty() {
                return Err(malformed("bytes after the terminator"));
            }
            return Ok(ErrorResponseFields { fields });
        }
        let (text, after_text) = split_cstr(after_type).ok_or(malformed("unterminated field"))?;
        fields.push((field, String::from_utf8_lossy(text).into_owned()));
        rest = after_text;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::pg::captured::*;
    use crate::pg::parse_backend_frame;
    use crate::pg::test_util::hex;

    fn frame_and_parse(bytes: &[u8]) -> ErrorResponseFields {
        let (frame, used) = parse_backend_frame(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.tag, BackendFrame::ERROR_RESPONSE);
        parse_error_response(frame.body).unwrap()
    }

    #[test]
    fn captured_wrong_password_error() {
        let fields = frame_and_parse(&hex(PG15_ERROR_28P01));
        assert_eq!(fields.severity(), Some("FATAL"));
        assert_eq!(fields.get(error_field::SEVERITY_LOCALIZED), Some("FATAL"));
        assert_eq!(fields.code(), Some(SqlState::INVALID_PASSWORD));
        assert_eq!(
            fields.message(),
            Some("password authentication failed for user \"alice\"")
        );
        assert_eq!(fields.get(b'F'), Some("auth.c"));
        assert_eq!(fields.get(b'R'), Some("auth_failed"));
        assert_eq!(fields.detail(), None);
        assert_eq!(fields.fields.len(), 7);
    }

    #[test]
    fn captured_missing_user_error() {
        let fields = frame_and_parse(&hex(PG15_ERROR_NO_USER));
        assert_eq!(
            fields.code(),
            Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        );
        assert_eq!(
            fields.message(),
            Some("no PostgreSQL user name specified in startup packet")
        );
    }

    #[test]
    fn encode_matches_the_documented_layout() {
        let bytes = ErrorResponse::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "TLS required",
        )
        .with_hint("use sslmode=require")
        .encode();
        let mut expected = b"E\0\0\0\x3dSFATAL\0VFATAL\0C28000\0MTLS required\0".to_vec();
        expected.extend_from_slice(b"Huse sslmode=require\0\0");
        assert_eq!(usize::from(expected[4]) + 1, expected.len());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let response = ErrorResponse {
            severity: Severity::Error,
            code: SqlState::TOO_MANY_CONNECTIONS,
            message: "too many connections through intransit".into(),
            detail: Some("the listener allows 100".into()),
            hint: Some("try again later".into()),
        };
        let bytes = response.encode();
        for end in 0..bytes.len() {
            assert_eq!(parse_backend_frame(&bytes[..end]), Ok(None));
        }
        let fields = frame_and_parse(&bytes);
        assert_eq!(fields.severity(), Some("ERROR"));
        assert_eq!(fields.get(error_field::SEVERITY_LOCALIZED), Some("ERROR"));
        assert_eq!(fields.code(), Some(response.code));
        assert_eq!(fields.message(), Some(response.message.as_str()));
        assert_eq!(fields.detail(), response.detail.as_deref());
        assert_eq!(fields.hint(), response.hint.as_deref());
        let types: Vec<u8> = fields.fields.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, b"SVCMDH");
    }

    #[test]
    fn nul_in_text_is_removed() {
        let bytes = ErrorResponse::fatal(SqlState::PROTOCOL_VIOLATION, "user \"a\0Mevil\" refused")
            .with_detail("\0")
            .with_hint("x\0\0y")
            .encode();
        let fields = frame_and_parse(&bytes);
        assert_eq!(fields.message(), Some("user \"aMevil\" refused"));
        assert_eq!(fields.detail(), Some(""));
        assert_eq!(fields.hint(), Some("xy"));
        assert_eq!(fields.fields.len(), 6);
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        // 'é' is two bytes, so the limit falls inside a character.
        let message = format!("x{}", "é".repeat(MAX_ERROR_FIELD_LEN));
        let fields =
            frame_and_parse(&ErrorResponse::fatal(SqlState::CONNECTION_FAILURE, message).encode());
        let kept = fields.message().unwrap();
        assert_eq!(kept.len(), MAX_ERROR_FIELD_LEN - 1);
        assert!(kept.starts_with("xé"));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for body in [&b""[..], b"SFATAL", b"SFATAL\0", b"SFATAL\0\0x", b"\0\0"] {
            assert!(
                matches!(parse_error_response(body), Err(WireError::Malformed { .. })),
                "{body:?}"
            );
        }
        assert_eq!(
            parse_error_response(b"\0"),
            Ok(ErrorResponseFields::default())
        );
    }

    #[test]
    fn non_utf8_server_text_is_kept_lossily() {
        let fields = parse_error_response(b"SFEHLER\0Mfehlgeschlagen \xfc\0\0").unwrap();
        assert_eq!(fields.severity(), Some("FEHLER"));
        assert_eq!(fields.message(), Some("fehlgeschlagen \u{fffd}"));
    }

    #[test]
    fn sqlstate_validation() {
        assert_eq!(
            SqlState::new("28000"),
            Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        );
        assert_eq!(
            SqlState::new("08P01").map(|s| s.to_string()),
            Some("08P01".into())
        );
        for bad in ["", "2800", "280000", "28p01", "28 01", "2800é"] {
            assert_eq!(SqlState::new(bad), None, "{bad:?}");
        }
        for state in [
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INVALID_PASSWORD,
            SqlState::UNABLE_TO_ESTABLISH_CONNECTION,
            SqlState::CONNECTION_FAILURE,
            SqlState::PROTOCOL_VIOLATION,
            SqlState::FEATURE_NOT_SUPPORTED,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::CANNOT_CONNECT_NOW,
        ] {
            assert_eq!(SqlState::new(state.as_str()), Some(state));
        }
    }
}
