//! Length-encoded integers and strings, the variable-length numbers of the
//! MySQL protocol.
//!
//! A value below 251 is one byte; larger values are a marker byte (0xfc,
//! 0xfd, 0xfe) and 2, 3 or 8 little-endian bytes. 0xfb means SQL NULL in
//! result rows and 0xff starts an ERR packet, so neither starts an integer.
//! Encoders always write the shortest form.

use crate::WireError;

/// Marker for a 2-byte integer.
const MARKER_U16: u8 = 0xfc;
/// Marker for a 3-byte integer.
const MARKER_U24: u8 = 0xfd;
/// Marker for an 8-byte integer.
const MARKER_U64: u8 = 0xfe;
/// Largest value written as a single byte.
const MAX_ONE_BYTE: u64 = 250;

/// Reads a length-encoded integer off the front of `buf`: the value and the
/// bytes it took, `Ok(None)` if `buf` ends inside it, or an error for a first
/// byte of 0xfb (NULL) or 0xff.
pub fn parse_int(buf: &[u8]) -> Result<Option<(u64, usize)>, WireError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let width = match first {
        0..=0xfa => return Ok(Some((u64::from(first), 1))),
        MARKER_U16 => 2,
        MARKER_U24 => 3,
        MARKER_U64 => 8,
        _ => {
            return Err(WireError::Malformed {
                message: "length-encoded integer",
                reason: "first byte is 0xfb (NULL) or 0xff",
            })
        }
    };
    let Some(bytes) = buf.get(1..=width) else {
        return Ok(None);
    };
    let mut le = [0u8; 8];
    le.get_mut(..width)
        .ok_or(WireError::Malformed {
            message: "length-encoded integer",
            reason: "width above 8 bytes",
        })?
        .copy_from_slice(bytes);
    Ok(Some((u64::from_le_bytes(le), width + 1)))
}

/// How many bytes [`encode_int`] writes for `value`.
pub fn int_len(value: u64) -> usize {
    match value {
        0..=MAX_ONE_BYTE => 1,
        251..=0xffff => 3,
        0x1_0000..=0xff_ffff => 4,
        _ => 9,
    }
}

/// Appends `value` in its shortest length-encoded form.
pub fn encode_int(out: &mut Vec<u8>, value: u64) {
    let le = value.to_le_bytes();
    match int_len(value) {
        1 => out.push(le[0]),
        3 => {
            out.push(MARKER_U16);
            out.extend_from_slice(&le[..2]);
        }
        4 => {
            out.push(MARKER_U24);
            out.extend_from_slice(&le[..3]);
        }
        _ => {
            out.push(MARKER_U64);
            out.extend_from_slice(&le);
        }
    }
}

/// Reads a length-encoded string off the front of `buf`: the bytes and how
/// many bytes it took in all, or `Ok(None)` if `buf` ends inside it.
pub fn parse_bytes(buf: &[u8]) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some((len, prefix)) = parse_int(buf)? else {
        return Ok(None);
    };
    let Some(end) = usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_add(prefix))
    else {
        // No buffer can hold this many bytes, so it can never complete.
        return Err(WireError::Malformed {
            message: "length-encoded string",
            reason: "length does not fit in memory",
        });
    };
    Ok(buf.get(prefix..end).map(|bytes| (bytes, end)))
}

/// Appends `bytes` as a length-encoded string.
pub fn encode_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    encode_int(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_at_every_width_boundary() {
        for value in [
            0,
            1,
            250,
            251,
            0xffff,
            0x1_0000,
            0xff_ffff,
            0x100_0000,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            encode_int(&mut out, value);
            assert_eq!(out.len(), int_len(value), "{value}");
            assert_eq!(parse_int(&out), Ok(Some((value, out.len()))), "{value}");
            for end in 0..out.len() {
                assert_eq!(parse_int(&out[..end]), Ok(None), "{value} cut at {end}");
            }
        }
    }

    #[test]
    fn known_encodings() {
        let mut out = Vec::new();
        encode_int(&mut out, 251);
        assert_eq!(out, [0xfc, 0xfb, 0x00]);
        assert_eq!(parse_int(&[0xfd, 1, 2, 3]), Ok(Some((0x030201, 4))));
        // A non-minimal form still parses here; callers that need the byte-
        // exact round trip compare against int_len.
        assert_eq!(parse_int(&[0xfc, 5, 0]), Ok(Some((5, 3))));
    }

    #[test]
    fn null_and_ff_are_not_integers() {
        assert!(parse_int(&[0xfb]).is_err());
        assert!(parse_int(&[0xff, 0, 0]).is_err());
    }

    #[test]
    fn strings() {
        let mut out = Vec::new();
        encode_bytes(&mut out, b"shop");
        assert_eq!(out, b"\x04shop");
        assert_eq!(parse_bytes(&out), Ok(Some((&b"shop"[..], 5))));
        assert_eq!(parse_bytes(&out[..4]), Ok(None));
        assert_eq!(parse_bytes(&[]), Ok(None));
        // An 8-byte length no buffer can hold is an error, not "need more".
        assert!(parse_bytes(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert_eq!(parse_bytes(&[0xfc, 0x00, 0x01]), Ok(None));
    }
}
