//! Regular message framing after the startup packet: a type byte, a length
//! word that counts itself but not the type byte, and the body.
//!
//! Framing only splits messages; it does not look inside bodies. The body is
//! borrowed from the caller's buffer, so framing never allocates.

use super::read_u32;
use crate::WireError;

/// Default cap on a frame's declared length (the length word's value).
///
/// intransit frames messages only while a connection is being set up and
/// authenticated, where PostgreSQL itself caps authentication tokens at
/// 65 535 bytes (`PG_MAX_AUTH_TOKEN_LENGTH`) and the other messages
/// (ErrorResponse, ParameterStatus, BackendKeyData) are small. 1 MiB leaves
/// ample room while bounding what a peer can make us buffer; callers that
/// frame query traffic pass their own limit to the `_with_max` variants.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Length of the type byte plus the length word.
const FRAME_HEADER_LEN: usize = 5;

/// One message from a PostgreSQL server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendFrame<'a> {
    /// Message type byte, such as [`BackendFrame::AUTHENTICATION`].
    pub tag: u8,
    /// Message body, without type byte and length word.
    pub body: &'a [u8],
}

impl BackendFrame<'_> {
    /// Authentication request ('R').
    pub const AUTHENTICATION: u8 = b'R';
    /// BackendKeyData ('K'): process id and cancel secret key.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// ErrorResponse ('E').
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NegotiateProtocolVersion ('v').
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    /// NoticeResponse ('N').
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// ParameterStatus ('S').
    pub const PARAMETER_STATUS: u8 = b'S';
    /// ReadyForQuery ('Z'): authentication and startup are done.
    pub const READY_FOR_QUERY: u8 = b'Z';
}

/// One message from a PostgreSQL client, after its StartupMessage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendFrame<'a> {
    /// Message type byte, such as [`FrontendFrame::PASSWORD`].
    pub tag: u8,
    /// Message body, without type byte and length word.
    pub body: &'a [u8],
}

impl FrontendFrame<'_> {
    /// PasswordMessage, SASLInitialResponse, SASLResponse or GSSResponse
    /// ('p'): which one depends on the authentication request it answers.
    pub const PASSWORD: u8 = b'p';
    /// Simple Query ('Q').
    pub const QUERY: u8 = b'Q';
    /// Terminate ('X').
    pub const TERMINATE: u8 = b'X';
}

/// Splits one server message off the front of `buf`, with the default
/// [`MAX_FRAME_LEN`].
pub fn parse_backend_frame(buf: &[u8]) -> Result<Option<(BackendFrame<'_>, usize)>, WireError> {
    parse_backend_frame_with_max(buf, MAX_FRAME_LEN)
}

/// Splits one server message off the front of `buf`, rejecting a declared
/// length (counting the length word) above `max_len`.
pub fn parse_backend_frame_with_max(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<(BackendFrame<'_>, usize)>, WireError> {
    Ok(parse_frame(buf, max_len)?.map(|(tag, body, used)| (BackendFrame { tag, body }, used)))
}

/// Splits one client message off the front of `buf`, with the default
/// [`MAX_FRAME_LEN`].
pub fn parse_frontend_frame(buf: &[u8]) -> Result<Option<(FrontendFrame<'_>, usize)>, WireError> {
    parse_frontend_frame_with_max(buf, MAX_FRAME_LEN)
}

/// Splits one client message off the front of `buf`, rejecting a declared
/// length (counting the length word) above `max_len`.
pub fn parse_frontend_frame_with_max(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<(FrontendFrame<'_>, usize)>, WireError> {
    Ok(parse_frame(buf, max_len)?.map(|(tag, body, used)| (FrontendFrame { tag, body }, used)))
}

/// Type byte, body, bytes consumed.
type RawFrame<'a> = (u8, &'a [u8], usize);

fn parse_frame(buf: &[u8], max_len: usize) -> Result<Option<RawFrame<'_>>, WireError> {
    let (Some(&tag), Some(length)) = (buf.first(), read_u32(buf, 1)) else {
        return Ok(None);
    };
    let declared = usize::try_from(length).unwrap_or(usize::MAX);
    if declared < 4 || declared > max_len {
        return Err(WireError::FrameLength {
            tag,
            length,
            max: max_len,
        });
    }
    let total = declared.saturating_add(1);
    match buf.get(FRAME_HEADER_LEN..total) {
        Some(body) => Ok(Some((tag, body, total))),
        None => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::pg::captured::*;
    use crate::pg::test_util::hex;

    #[test]
    fn captured_server_stream_splits_into_its_messages() {
        let bytes = hex(PG15_SASL_FINAL_TO_READY);
        let mut rest = &bytes[..];
        let mut tags = Vec::new();
        while let Some((frame, used)) = parse_backend_frame(rest).unwrap() {
            assert_eq!(used, frame.body.len() + 5);
            tags.push(frame.tag);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        let mut expected = vec![b'R', b'R'];
        expected.extend([BackendFrame::PARAMETER_STATUS; 13]);
        expected.extend([
            BackendFrame::BACKEND_KEY_DATA,
            BackendFrame::READY_FOR_QUERY,
        ]);
        assert_eq!(tags, expected);
    }

    #[test]
    fn every_prefix_of_a_message_needs_more() {
        for capture in [PG15_AUTH_SASL_TLS, PG15_ERROR_28P01, PG15_AUTH_CLEARTEXT] {
            let bytes = hex(capture);
            for end in 0..bytes.len() {
                assert_eq!(parse_backend_frame(&bytes[..end]), Ok(None));
            }
            let (frame, used) = parse_backend_frame(&bytes).unwrap().unwrap();
            assert_eq!((used, frame.body), (bytes.len(), &bytes[5..]));
        }
    }

    #[test]
    fn negotiate_protocol_version_then_sasl() {
        let bytes = hex(PG15_NEGOTIATE_THEN_SASL);
        let (frame, used) = parse_backend_frame(&bytes).unwrap().unwrap();
        assert_eq!(frame.tag, BackendFrame::NEGOTIATE_PROTOCOL_VERSION);
        // Newest minor the server speaks (3.0), one option it did not know.
        assert_eq!(&frame.body[..8], &[0, 3, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&frame.body[8..], b"_pq_.foo\0");
        let (frame, _) = parse_backend_frame(&bytes[used..]).unwrap().unwrap();
        assert_eq!(frame.tag, BackendFrame::AUTHENTICATION);
    }

    #[test]
    fn protocol_2_error_is_refused_by_its_absurd_length() {
        // "FATA" read as a length word.
        let bytes = hex(PG15_PROTOCOL_2_ERROR);
        assert_eq!(
            parse_backend_frame(&bytes),
            Err(WireError::FrameLength {
                tag: b'E',
                length: u32::from_be_bytes(*b"FATA"),
                max: MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn length_below_4_is_refused() {
        for length in 0u32..4 {
            let mut bytes = vec![b'R'];
            bytes.extend_from_slice(&length.to_be_bytes());
            assert!(matches!(
                parse_backend_frame(&bytes),
                Err(WireError::FrameLength { .. })
            ));
            bytes[0] = b'p';
            assert!(matches!(
                parse_frontend_frame(&bytes),
                Err(WireError::FrameLength { .. })
            ));
        }
    }

    #[test]
    fn length_above_the_maximum_is_refused_before_the_body_arrives() {
        let header = |length: u32| {
            let mut bytes = vec![b'D'];
            bytes.extend_from_slice(&length.to_be_bytes());
            bytes
        };
        let at_max = u32::try_from(MAX_FRAME_LEN).unwrap();
        assert_eq!(parse_backend_frame(&header(at_max)), Ok(None));
        assert!(parse_backend_frame(&header(at_max + 1)).is_err());
        assert!(parse_backend_frame(&header(u32::MAX)).is_err());
        assert_eq!(parse_backend_frame_with_max(&header(100), 100), Ok(None));
        let err = parse_frontend_frame_with_max(&header(101), 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid length 101 for message type 'D' (allowed: 4 to 100)"
        );
    }

    #[test]
    fn captured_client_messages() {
        let query = hex(PSQL15_QUERY_SELECT_1);
        let (frame, used) = parse_frontend_frame(&query).unwrap().unwrap();
        assert_eq!(
            (frame.tag, frame.body, used),
            (FrontendFrame::QUERY, &b"select 1\0"[..], 14)
        );

        // An empty body (length 4) is a complete message.
        let terminate = hex(PSQL15_TERMINATE);
        let (frame, used) = parse_frontend_frame(&terminate).unwrap().unwrap();
        assert_eq!(
            (frame.tag, frame.body, used),
            (FrontendFrame::TERMINATE, &b""[..], 5)
        );

        for capture in [PSQL15_SASL_INITIAL_RESPONSE, PSQL15_MD5_PASSWORD] {
            let bytes = hex(capture);
            for end in 0..bytes.len() {
                assert_eq!(parse_frontend_frame(&bytes[..end]), Ok(None));
            }
            let (frame, used) = parse_frontend_frame(&bytes).unwrap().unwrap();
            assert_eq!((frame.tag, used), (FrontendFrame::PASSWORD, bytes.len()));
        }
    }
}
