//! The session phase of a pooled connection: following a stream of
//! regular messages without buffering their bodies, and the few messages
//! a pool says to a client itself (the end of its login) or to a server
//! (its own queries).
//!
//! [`MessageScanner`] walks a byte stream in whatever chunks it arrives:
//! each message's header is reported once, with as much of its body as
//! the caller asked for (a ReadyForQuery's status, a ParameterStatus, the
//! start of a Query); the rest of a long body (a DataRow of megabytes, a
//! COPY chunk) passes without being held. The caller forwards everything
//! the scanner has stepped over, so a message is never split between two
//! server connections.

use super::{encode_frame, read_u32, split_cstr};
use crate::WireError;

/// Length of a message's type byte and length word.
pub const HEADER_LEN: usize = 5;

/// Largest message body the scanner accepts (PostgreSQL's own limit for
/// a message is 1 GB, `PQ_LARGE_MESSAGE_LIMIT`).
pub const MAX_MESSAGE_LEN: usize = 1 << 30;

/// What the scanner found at the front of the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned<'a> {
    /// The first `len` bytes continue a message whose header was already
    /// reported: pass them.
    Continues {
        /// How many bytes belong to that message.
        len: usize,
    },
    /// A message starts here.
    Message {
        /// Its type byte.
        tag: u8,
        /// Its body length (without type byte and length word).
        body_len: usize,
        /// The first bytes of its body: as many as the caller wanted, or
        /// all of it when shorter.
        prefix: &'a [u8],
        /// How many bytes from the front (header and the part of the body
        /// that is here) this step covers; the rest of the body, if any,
        /// is reported as [`Scanned::Continues`].
        len: usize,
    },
    /// The bytes end inside a header, or before the prefix the caller
    /// wants: keep them and read more.
    NeedMore,
}

/// Follows message boundaries across chunks. It owns no buffer: it only
/// remembers how much of the message in progress is still to come.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageScanner {
    rest_of_message: usize,
}

impl MessageScanner {
    /// A scanner at a message boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the bytes stepped over so far end in the middle of a
    /// message.
    pub fn inside_message(&self) -> bool {
        self.rest_of_message > 0
    }

    /// Steps over the front of `buf`. `want(tag)` says how many bytes of
    /// a message body are needed before it can be judged (0 for none,
    /// `usize::MAX` for all of it); a message is reported only once that
    /// much of it is in `buf`. A length word below 4 or above `max_len`
    /// is an error (the peer is not speaking the protocol).
    pub fn scan<'a>(
        &mut self,
        buf: &'a [u8],
        max_len: usize,
        want: impl FnOnce(u8) -> usize,
    ) -> Result<Scanned<'a>, WireError> {
        if self.rest_of_message > 0 {
            if buf.is_empty() {
                return Ok(Scanned::NeedMore);
            }
            let len = self.rest_of_message.min(buf.len());
            self.rest_of_message -= len;
            return Ok(Scanned::Continues { len });
        }
        let (Some(&tag), Some(length)) = (buf.first(), read_u32(buf, 1)) else {
            return Ok(Scanned::NeedMore);
        };
        let declared = usize::try_from(length).unwrap_or(usize::MAX);
        if declared < 4 || declared > max_len.saturating_add(4) {
            return Err(WireError::FrameLength {
                tag,
                length,
                max: max_len.saturating_add(4),
            });
        }
        let body_len = declared - 4;
        let wanted = want(tag).min(body_len);
        let here = buf.len() - HEADER_LEN;
        if here < wanted {
            return Ok(Scanned::NeedMore);
        }
        let body_here = here.min(body_len);
        self.rest_of_message = body_len - body_here;
        Ok(Scanned::Message {
            tag,
            body_len,
            prefix: &buf[HEADER_LEN..HEADER_LEN + wanted],
            len: HEADER_LEN + body_here,
        })
    }
}

/// Frontend message types a pool follows.
pub mod frontend {
    /// Bind.
    pub const BIND: u8 = b'B';
    /// Close (a prepared statement or portal).
    pub const CLOSE: u8 = b'C';
    /// CopyData.
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone.
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail.
    pub const COPY_FAIL: u8 = b'f';
    /// Describe.
    pub const DESCRIBE: u8 = b'D';
    /// Execute.
    pub const EXECUTE: u8 = b'E';
    /// Flush.
    pub const FLUSH: u8 = b'H';
    /// FunctionCall.
    pub const FUNCTION_CALL: u8 = b'F';
    /// Parse.
    pub const PARSE: u8 = b'P';
    /// Simple Query.
    pub const QUERY: u8 = b'Q';
    /// Sync.
    pub const SYNC: u8 = b'S';
    /// Terminate.
    pub const TERMINATE: u8 = b'X';
}

/// Backend message types a pool follows.
pub mod backend {
    /// BackendKeyData.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// CopyBothResponse (replication).
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// CopyInResponse.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// CopyOutResponse.
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// NotificationResponse (LISTEN/NOTIFY).
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// ParameterStatus.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// ReadyForQuery.
    pub const READY_FOR_QUERY: u8 = b'Z';
}

/// The transaction status a ReadyForQuery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (queries refused until it ends).
    Failed,
}

impl TransactionStatus {
    /// Reads the status byte of a ReadyForQuery body.
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        match body {
            [b'I'] => Ok(Self::Idle),
            [b'T'] => Ok(Self::InTransaction),
            [b'E'] => Ok(Self::Failed),
            _ => Err(WireError::Malformed {
                message: "ReadyForQuery",
                reason: "the status is not one byte I, T or E",
            }),
        }
    }

    /// The status byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}

/// Parses a ParameterStatus body: name and value.
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), WireError> {
    let malformed = |reason| WireError::Malformed {
        message: "ParameterStatus",
        reason,
    };
    let (name, rest) = split_cstr(body).ok_or(malformed("no NUL after the name"))?;
    let (value, rest) = split_cstr(rest).ok_or(malformed("no NUL after the value"))?;
    if !rest.is_empty() {
        return Err(malformed("bytes after the value"));
    }
    let name = std::str::from_utf8(name).map_err(|_| malformed("the name is not UTF-8"))?;
    let value = std::str::from_utf8(value).map_err(|_| malformed("the value is not UTF-8"))?;
    Ok((name, value))
}

/// Parses a BackendKeyData body: process id and secret key (4 bytes in
/// protocol 3.0, up to 256 in 3.2).
pub fn parse_backend_key_data(body: &[u8]) -> Result<(u32, &[u8]), WireError> {
    match (read_u32(body, 0), body.get(4..)) {
        (Some(pid), Some(key)) if !key.is_empty() && key.len() <= 256 => Ok((pid, key)),
        _ => Err(WireError::Malformed {
            message: "BackendKeyData",
            reason: "not a process id and a 1 to 256 byte key",
        }),
    }
}

fn message(tag: u8, body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&encode_frame(tag, body));
}

/// AuthenticationOk.
pub fn encode_authentication_ok(out: &mut Vec<u8>) {
    message(b'R', &0u32.to_be_bytes(), out);
}

/// ParameterStatus. Fails on a NUL inside the name or value.
pub fn encode_parameter_status(
    name: &str,
    value: &str,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    if name.contains('\0') || value.contains('\0') {
        return Err(WireError::NulInString {
            what: "ParameterStatus",
        });
    }
    let mut body = Vec::with_capacity(name.len() + value.len() + 2);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(value.as_bytes());
    body.push(0);
    message(b'S', &body, out);
    Ok(())
}

/// BackendKeyData with a 4-byte secret (protocol 3.0).
pub fn encode_backend_key_data(process_id: u32, secret: u32, out: &mut Vec<u8>) {
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&process_id.to_be_bytes());
    body[4..].copy_from_slice(&secret.to_be_bytes());
    message(b'K', &body, out);
}

/// ReadyForQuery.
pub fn encode_ready_for_query(status: TransactionStatus, out: &mut Vec<u8>) {
    message(b'Z', &[status.byte()], out);
}

/// A simple Query. Fails on a NUL inside the text.
pub fn encode_query(sql: &str, out: &mut Vec<u8>) -> Result<(), WireError> {
    if sql.contains('\0') {
        return Err(WireError::NulInString { what: "Query" });
    }
    let mut body = Vec::with_capacity(sql.len() + 1);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    message(b'Q', &body, out);
    Ok(())
}

/// Terminate.
pub fn encode_terminate(out: &mut Vec<u8>) {
    message(b'X', &[], out);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::pg::captured::*;
    use crate::pg::test_util::hex;

    /// Scans `stream` split at every position into two chunks, and returns
    /// the (tag, body_len, prefix) of each message and the bytes passed.
    fn scan_split(stream: &[u8], at: usize, want: usize) -> (Vec<(u8, usize, Vec<u8>)>, usize) {
        let mut scanner = MessageScanner::new();
        let mut messages = Vec::new();
        let mut passed = 0;
        let mut pending: Vec<u8> = Vec::new();
        for chunk in [&stream[..at], &stream[at..]] {
            pending.extend_from_slice(chunk);
            loop {
                match scanner.scan(&pending, MAX_MESSAGE_LEN, |_| want).unwrap() {
                    Scanned::NeedMore => break,
                    Scanned::Continues { len } => {
                        passed += len;
                        pending.drain(..len);
                    }
                    Scanned::Message {
                        tag,
                        body_len,
                        prefix,
                        len,
                    } => {
                        messages.push((tag, body_len, prefix.to_vec()));
                        passed += len;
                        pending.drain(..len);
                    }
                }
            }
        }
        assert!(
            pending.is_empty(),
            "split at {at}: {} bytes left",
            pending.len()
        );
        assert!(!scanner.inside_message());
        (messages, passed)
    }

    #[test]
    fn every_split_of_a_captured_stream_gives_the_same_messages() {
        let stream = hex(PG15_SASL_FINAL_TO_READY);
        let (whole, passed) = scan_split(&stream, stream.len(), usize::MAX);
        assert_eq!(passed, stream.len());
        assert_eq!(whole.len(), 17);
        assert_eq!(whole.last().unwrap().0, b'Z');
        assert_eq!(whole.last().unwrap().2, b"I");
        for want in [0, 1, 4, usize::MAX] {
            for at in 0..=stream.len() {
                let (messages, passed) = scan_split(&stream, at, want);
                assert_eq!(passed, stream.len());
                let tags: Vec<_> = messages.iter().map(|m| (m.0, m.1)).collect();
                let expected: Vec<_> = whole.iter().map(|m| (m.0, m.1)).collect();
                assert_eq!(tags, expected, "split at {at}, want {want}");
                for (m, w) in messages.iter().zip(&whole) {
                    assert_eq!(m.2[..], w.2[..want.min(w.1)]);
                }
            }
        }
    }

    #[test]
    fn a_long_body_passes_without_being_held() {
        let mut stream = Vec::new();
        message(b'D', &vec![7u8; 100_000], &mut stream);
        let mut scanner = MessageScanner::new();
        let first = scanner.scan(&stream[..10], MAX_MESSAGE_LEN, |_| 0).unwrap();
        assert_eq!(
            first,
            Scanned::Message {
                tag: b'D',
                body_len: 100_000,
                prefix: &[],
                len: 10
            }
        );
        assert!(scanner.inside_message());
        let rest = scanner.scan(&stream[10..], MAX_MESSAGE_LEN, |_| 0).unwrap();
        assert_eq!(rest, Scanned::Continues { len: 100_000 - 5 });
        assert!(!scanner.inside_message());
    }

    #[test]
    fn a_wanted_prefix_waits_for_its_bytes() {
        let mut stream = Vec::new();
        encode_query("LISTEN channel", &mut stream).unwrap();
        let mut scanner = MessageScanner::new();
        assert_eq!(
            scanner.scan(&stream[..8], MAX_MESSAGE_LEN, |_| 6).unwrap(),
            Scanned::NeedMore
        );
        match scanner.scan(&stream[..11], MAX_MESSAGE_LEN, |_| 6).unwrap() {
            Scanned::Message { prefix, len, .. } => {
                assert_eq!(prefix, b"LISTEN");
                assert_eq!(len, 11);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn absurd_lengths_are_errors() {
        let mut scanner = MessageScanner::new();
        for length in [0u32, 3, u32::MAX] {
            let mut bytes = vec![b'Q'];
            bytes.extend_from_slice(&length.to_be_bytes());
            assert!(scanner.scan(&bytes, 1 << 20, |_| 0).is_err());
        }
    }

    #[test]
    fn the_pool_s_own_messages_parse_back() {
        let mut out = Vec::new();
        encode_authentication_ok(&mut out);
        encode_parameter_status("TimeZone", "Etc/UTC", &mut out).unwrap();
        encode_backend_key_data(42, 0xdead_beef, &mut out);
        encode_ready_for_query(TransactionStatus::Idle, &mut out);
        let (messages, _) = scan_split(&out, out.len(), usize::MAX);
        assert_eq!(messages[0].2, [0, 0, 0, 0]);
        assert_eq!(
            parse_parameter_status(&messages[1].2).unwrap(),
            ("TimeZone", "Etc/UTC")
        );
        let (pid, key) = parse_backend_key_data(&messages[2].2).unwrap();
        assert_eq!((pid, key), (42, &0xdead_beef_u32.to_be_bytes()[..]));
        assert_eq!(
            TransactionStatus::parse(&messages[3].2).unwrap(),
            TransactionStatus::Idle
        );
        assert!(encode_parameter_status("a\0", "b", &mut out).is_err());
        assert!(encode_query("select\0", &mut out).is_err());
    }
}
