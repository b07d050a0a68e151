//! The messages that open a session once authentication has succeeded: the
//! server's ParameterStatus and BackendKeyData, and the simple Query a
//! client sends when the server is ready.
//!
//! A proxy that logs in to PostgreSQL itself (connection pooling) reads
//! these from the server and builds them for its clients, so each has a
//! parser and an encoder that give back the bytes they were given.

use super::MAX_CANCEL_KEY_LEN;
use super::{encode_frame, read_u32, split_cstr, BackendFrame, CancelRequest, FrontendFrame};
use crate::WireError;

/// A ParameterStatus ('S'): the current value of a setting the server
/// reports (`server_version`, `client_encoding`, `TimeZone`, ...).
///
/// Text is converted to UTF-8 lossily, like [`super::ErrorResponseFields`]:
/// servers send these in the client encoding, and the proxy only shows and
/// relays them; it never decides anything on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterStatus {
    /// The setting's name.
    pub name: String,
    /// Its value.
    pub value: String,
}

impl ParameterStatus {
    /// The message as sent on the wire.
    ///
    /// Fails when the name or value contains NUL, which would end it early.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.name.contains('\0') || self.value.contains('\0') {
            return Err(WireError::NulInString {
                what: "ParameterStatus",
            });
        }
        let mut body = Vec::with_capacity(self.name.len() + self.value.len() + 2);
        body.extend_from_slice(self.name.as_bytes());
        body.push(0);
        body.extend_from_slice(self.value.as_bytes());
        body.push(0);
        Ok(encode_frame(BackendFrame::PARAMETER_STATUS, &body))
    }
}

/// Parses the body of a [`BackendFrame::PARAMETER_STATUS`] message:
/// `name\0value\0`, nothing after.
pub fn parse_parameter_status(body: &[u8]) -> Result<ParameterStatus, WireError> {
    let malformed = |reason| WireError::Malformed {
        message: "ParameterStatus",
        reason,
    };
    let (name, rest) = split_cstr(body).ok_or(malformed("unterminated name"))?;
    let (value, rest) = split_cstr(rest).ok_or(malformed("unterminated value"))?;
    if !rest.is_empty() {
        return Err(malformed("bytes after the value"));
    }
    Ok(ParameterStatus {
        name: String::from_utf8_lossy(name).into_owned(),
        value: String::from_utf8_lossy(value).into_owned(),
    })
}

/// A BackendKeyData ('K'): the process id and secret key a CancelRequest
/// for this session must carry.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendKeyData {
    /// The backend's process id.
    pub process_id: u32,
    /// The secret key: 4 bytes in protocol 3.0, up to
    /// [`MAX_CANCEL_KEY_LEN`] in protocol 3.2.
    pub secret_key: Vec<u8>,
}

/// The key is what lets anyone cancel this session's queries, so it stays
/// out of logs.
impl std::fmt::Debug for BackendKeyData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendKeyData")
            .field("process_id", &self.process_id)
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

impl BackendKeyData {
    /// The message as sent on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(4 + self.secret_key.len());
        body.extend_from_slice(&self.process_id.to_be_bytes());
        body.extend_from_slice(&self.secret_key);
        encode_frame(BackendFrame::BACKEND_KEY_DATA, &body)
    }

    /// The CancelRequest that cancels this session's running query.
    pub fn cancel_request(&self) -> CancelRequest {
        CancelRequest {
            process_id: self.process_id,
            secret_key: self.secret_key.clone(),
        }
    }

    /// The key as protocol 3.0 has it, 4 bytes, if it is that long.
    pub fn secret_key_v3_0(&self) -> Option<u32> {
        let bytes: [u8; 4] = self.secret_key.as_slice().try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    }
}

/// Parses the body of a [`BackendFrame::BACKEND_KEY_DATA`] message: the
/// process id, then a key of 1 to [`MAX_CANCEL_KEY_LEN`] bytes (exactly 4
/// in protocol 3.0, which every server before 18 speaks).
pub fn parse_backend_key_data(body: &[u8]) -> Result<BackendKeyData, WireError> {
    let malformed = |reason| WireError::Malformed {
        message: "BackendKeyData",
        reason,
    };
    let process_id = read_u32(body, 0).ok_or(malformed("shorter than its process id"))?;
    let key = body.get(4..).unwrap_or_default();
    if key.is_empty() || key.len() > MAX_CANCEL_KEY_LEN {
        return Err(malformed("secret key is not 1 to 256 bytes"));
    }
    Ok(BackendKeyData {
        process_id,
        secret_key: key.to_vec(),
    })
}

/// Builds a simple Query ('Q') for `sql`.
///
/// Fails when `sql` contains NUL, which would end the query early.
pub fn encode_query(sql: &str) -> Result<Vec<u8>, WireError> {
    if sql.contains('\0') {
        return Err(WireError::NulInString { what: "query" });
    }
    let mut body = Vec::with_capacity(sql.len() + 1);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    Ok(encode_frame(FrontendFrame::QUERY, &body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::pg::captured::*;
    use crate::pg::parse_backend_frame;
    use crate::pg::test_util::hex;

    /// The frames of a captured server stream with `tag`, as (body, bytes).
    fn frames_tagged(stream: &[u8], tag: u8) -> Vec<(&[u8], &[u8])> {
        let mut rest = stream;
        let mut out = Vec::new();
        while let Some((frame, used)) = parse_backend_frame(rest).unwrap() {
            if frame.tag == tag {
                out.push((frame.body, &rest[..used]));
            }
            rest = &rest[used..];
        }
        out
    }

    #[test]
    fn captured_parameters_parse_and_encode_back() {
        let stream = hex(PG15_SASL_FINAL_TO_READY);
        let frames = frames_tagged(&stream, BackendFrame::PARAMETER_STATUS);
        assert_eq!(frames.len(), 13);
        let parsed: Vec<ParameterStatus> = frames
            .iter()
            .map(|(body, _)| parse_parameter_status(body).unwrap())
            .collect();
        assert_eq!(parsed[0].name, "application_name");
        assert_eq!(parsed[0].value, "cap");
        assert!(parsed
            .iter()
            .any(|p| p.name == "server_version" && p.value.starts_with("15.18")));
        for (status, (_, original)) in parsed.iter().zip(&frames) {
            assert_eq!(status.encode().unwrap(), *original);
        }
    }

    #[test]
    fn captured_backend_key_parses_and_encodes_back() {
        let stream = hex(PG15_SASL_FINAL_TO_READY);
        let frames = frames_tagged(&stream, BackendFrame::BACKEND_KEY_DATA);
        let [(body, original)] = frames[..] else {
            panic!("one BackendKeyData expected");
        };
        let key = parse_backend_key_data(body).unwrap();
        assert_eq!(key.process_id, 0x297f);
        assert_eq!(key.secret_key_v3_0(), Some(0xa12a_17f8));
        assert_eq!(key.encode(), original);
        let cancel = key.cancel_request();
        assert_eq!(cancel.process_id, 0x297f);
        assert_eq!(cancel.secret_key, key.secret_key);
        assert!(!format!("{key:?}").contains("161, 42"), "{key:?}");
    }

    #[test]
    fn longer_keys_of_protocol_3_2_parse() {
        let mut body = 7u32.to_be_bytes().to_vec();
        body.extend_from_slice(&[0xab; 32]);
        let key = parse_backend_key_data(&body).unwrap();
        assert_eq!(key.secret_key.len(), 32);
        assert_eq!(key.secret_key_v3_0(), None);
    }

    #[test]
    fn malformed_session_messages_are_refused() {
        for bad in [&b""[..], b"name", b"name\0value", b"name\0value\0x"] {
            assert!(parse_parameter_status(bad).is_err(), "{bad:?}");
        }
        let long = [&[0u8; 4][..], &[1u8; MAX_CANCEL_KEY_LEN + 1]].concat();
        for bad in [&b""[..], b"\0\0\0", b"\0\0\0\x01", &long] {
            assert!(parse_backend_key_data(bad).is_err(), "{bad:?}");
        }
        assert!(ParameterStatus {
            name: "a\0b".into(),
            value: String::new()
        }
        .encode()
        .is_err());
    }

    #[test]
    fn queries_encode_as_psql_sent_them() {
        assert_eq!(
            encode_query("select 1").unwrap(),
            hex(PSQL15_QUERY_SELECT_1)
        );
        assert_eq!(
            encode_query("select '\0'"),
            Err(WireError::NulInString { what: "query" })
        );
    }
}
