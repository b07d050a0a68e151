//! The TLS record header (RFC 8446 section 5.1), enough to recognise TLS on
//! a connection and know how long the first record is.
//!
//! This module owns only the five header bytes. It never decrypts, never
//! reassembles records and never answers a peer; the TLS stack (rustls)
//! does all of that and must see every byte, so parsing here is a peek that
//! consumes nothing.

use crate::WireError;

/// ChangeCipherSpec record (also sent in TLS 1.3 for middlebox
/// compatibility).
pub const CONTENT_TYPE_CHANGE_CIPHER_SPEC: u8 = 0x14;
/// Alert record.
pub const CONTENT_TYPE_ALERT: u8 = 0x15;
/// Handshake record; a ClientHello starts with one.
pub const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;
/// Application data record.
pub const CONTENT_TYPE_APPLICATION_DATA: u8 = 0x17;

/// Length of a record header: type, version, length.
pub const RECORD_HEADER_LEN: usize = 5;

/// The largest record payload any TLS version allows: 2^14 bytes of
/// plaintext plus 2048 bytes of expansion (TLS 1.2, RFC 5246 section 6.2.3;
/// TLS 1.3 allows only 256 of expansion).
pub const MAX_RECORD_LEN: usize = (1 << 14) + 2048;

/// A TLS record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordHeader {
    /// Content type, one of the `CONTENT_TYPE_*` constants for a valid
    /// record (not checked here).
    pub content_type: u8,
    /// `legacy_record_version`: 0x0301 in a TLS 1.3 ClientHello, 0x0303
    /// afterwards, 0x0300 to 0x0303 from older stacks.
    pub legacy_version: u16,
    /// Length of the payload that follows the header.
    pub length: u16,
}

/// Reads the record header at the start of `buf` without consuming it.
///
/// Returns `Ok(None)` until [`RECORD_HEADER_LEN`] bytes are available; the
/// header is always that long, so unlike the other parsers of this crate no
/// consumed count is returned.
pub fn parse_record_header(buf: &[u8]) -> Result<Option<RecordHeader>, WireError> {
    let Some(&[content_type, v0, v1, l0, l1]) = buf.first_chunk::<RECORD_HEADER_LEN>() else {
        return Ok(None);
    };
    let length = u16::from_be_bytes([l0, l1]);
    if usize::from(length) > MAX_RECORD_LEN {
        return Err(WireError::TlsRecordTooLong {
            length,
            max: MAX_RECORD_LEN,
        });
    }
    Ok(Some(RecordHeader {
        content_type,
        legacy_version: u16::from_be_bytes([v0, v1]),
        length,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::pg::captured::PSQL15_CLIENT_HELLO;
    use crate::pg::test_util::hex;

    #[test]
    fn captured_client_hello_header() {
        let hello = hex(PSQL15_CLIENT_HELLO);
        let header = parse_record_header(&hello).unwrap().unwrap();
        assert_eq!(
            header,
            RecordHeader {
                content_type: CONTENT_TYPE_HANDSHAKE,
                legacy_version: 0x0301,
                length: 288,
            }
        );
        assert_eq!(usize::from(header.length) + RECORD_HEADER_LEN, hello.len());
        for end in 0..RECORD_HEADER_LEN {
            assert_eq!(parse_record_header(&hello[..end]), Ok(None));
        }
    }

    #[test]
    fn length_limit() {
        let header = |length: u16| {
            let mut bytes = vec![CONTENT_TYPE_APPLICATION_DATA, 3, 3];
            bytes.extend_from_slice(&length.to_be_bytes());
            bytes
        };
        let max = u16::try_from(MAX_RECORD_LEN).unwrap();
        assert_eq!(
            parse_record_header(&header(max)).unwrap().unwrap().length,
            max
        );
        assert_eq!(parse_record_header(&header(0)).unwrap().unwrap().length, 0);
        for length in [max + 1, u16::MAX] {
            assert_eq!(
                parse_record_header(&header(length)),
                Err(WireError::TlsRecordTooLong {
                    length,
                    max: MAX_RECORD_LEN
                })
            );
        }
    }

    #[test]
    fn alert_built_from_the_rfc() {
        // A fatal handshake_failure alert: 15 0303 0002 02 28.
        let header = parse_record_header(&[0x15, 3, 3, 0, 2, 2, 40])
            .unwrap()
            .unwrap();
        assert_eq!(header.content_type, CONTENT_TYPE_ALERT);
        assert_eq!(header.legacy_version, 0x0303);
        assert_eq!(header.length, 2);
        assert_eq!(CONTENT_TYPE_CHANGE_CIPHER_SPEC, 20);
    }
}
