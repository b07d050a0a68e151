//! Text a peer sent, made safe to show.
//!
//! Server versions, error messages and ALPN names come from the peer. Before
//! they reach a terminal, a log line or a report they go through
//! [`printable`], so that a peer cannot move the cursor, change colours or
//! forge lines.

use std::fmt;

/// `bytes` as text: invalid UTF-8 replaced with U+FFFD and control
/// characters escaped (`\n`, `\u{1b}`), everything else kept.
pub fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    // Writing to a String cannot fail.
    let _ = write_printable(&mut out, bytes);
    out
}

/// Writes `bytes` to `out` the way [`printable`] returns them, without
/// building a string first.
pub(crate) fn write_printable(out: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    for c in String::from_utf8_lossy(bytes).chars() {
        if c.is_control() {
            write!(out, "{}", c.escape_default())?;
        } else {
            out.write_char(c)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            printable(b"bad \x1b[31mred\r\nnext\x07"),
            "bad \\u{1b}[31mred\\r\\nnext\\u{7}"
        );
        // C1 controls arrive as UTF-8 too.
        assert_eq!(printable("a\u{9b}b".as_bytes()), "a\\u{9b}b");
    }

    #[test]
    fn invalid_utf8_is_replaced_and_the_rest_kept() {
        assert_eq!(printable(b"caf\xc3\xa9 \xfe"), "caf\u{e9} \u{fffd}");
        assert_eq!(printable(b""), "");
        assert_eq!(printable(b"8.0.36-0ubuntu"), "8.0.36-0ubuntu");
    }
}
