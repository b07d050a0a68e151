//! Packet framing: a 3-byte little-endian payload length, a 1-byte sequence
//! id, then the payload.
//!
//! A payload of exactly [`MAX_PAYLOAD_LEN`] bytes means the logical packet
//! continues in the next one. Nothing in the connection phase comes close to
//! that size, so [`parse_packet`] refuses it (with [`MAX_HANDSHAKE_PAYLOAD_LEN`]
//! as the limit), and callers that frame larger traffic get the continuation
//! flag from [`Packet::continues`] and reassemble themselves.

use crate::WireError;

/// The length of the packet header: payload length and sequence id.
pub const HEADER_LEN: usize = 4;

/// The largest payload one packet can carry (16 MiB - 1). A packet of
/// exactly this length is continued by the next packet.
pub const MAX_PAYLOAD_LEN: usize = 0xff_ffff;

/// The default limit on a payload during the connection phase.
///
/// The largest connection-phase packet is the HandshakeResponse, which holds
/// the user and database names (at most a few hundred bytes), an auth
/// response (a few hundred for RSA-encrypted passwords) and the connection
/// attributes, which clients cap at 64 KiB. 128 KiB leaves room for all of
/// that while bounding what a peer can make the proxy buffer before it has
/// authenticated.
pub const MAX_HANDSHAKE_PAYLOAD_LEN: usize = 128 * 1024;

/// The limit on the server's first packet for a client that reads it before
/// asking for TLS. Real greetings are about 100 bytes and error messages at
/// most 512, so anything longer is not a MySQL server (an SSH banner, for
/// one, reads as a 4.7 MB length).
pub const MAX_GREETING_PAYLOAD_LEN: usize = 4096;

/// One packet, borrowed from the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The packet's position in the current exchange: 0 for the first packet
    /// of a command or of the connection phase, then counting up by one per
    /// packet in either direction, wrapping at 255.
    pub sequence_id: u8,
    /// The payload, without the header.
    pub payload: &'a [u8],
}

impl Packet<'_> {
    /// Whether the logical packet continues in the next packet (the payload
    /// is exactly [`MAX_PAYLOAD_LEN`] bytes).
    pub fn continues(&self) -> bool {
        self.payload.len() == MAX_PAYLOAD_LEN
    }

    /// The packet's bytes with `sequence_id` in place of its own, for a
    /// proxy that renumbers the packets it relays.
    pub fn encode_with_sequence_id(&self, sequence_id: u8) -> Result<Vec<u8>, WireError> {
        encode_packet(sequence_id, self.payload)
    }
}

/// Splits one connection-phase packet off the front of `buf`, refusing
/// payloads above [`MAX_HANDSHAKE_PAYLOAD_LEN`] (and so every continuation).
///
/// Returns the packet and the bytes it took, or `Ok(None)` while `buf` does
/// not hold a whole packet.
pub fn parse_packet(buf: &[u8]) -> Result<Option<(Packet<'_>, usize)>, WireError> {
    parse_packet_with_max(buf, MAX_HANDSHAKE_PAYLOAD_LEN)
}

/// Splits one packet off the front of `buf`, refusing payloads above
/// `max_payload` (which is capped at [`MAX_PAYLOAD_LEN`]).
pub fn parse_packet_with_max(
    buf: &[u8],
    max_payload: usize,
) -> Result<Option<(Packet<'_>, usize)>, WireError> {
    let Some(&[l0, l1, l2, sequence_id]) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(l0) | usize::from(l1) << 8 | usize::from(l2) << 16;
    if len > max_payload.min(MAX_PAYLOAD_LEN) {
        let reason = if len == MAX_PAYLOAD_LEN {
            "a continuation packet (payload of 16 MiB - 1), which is not allowed here"
        } else {
            "payload longer than allowed here"
        };
        return Err(WireError::Malformed {
            message: "MySQL packet",
            reason,
        });
    }
    let end = HEADER_LEN + len;
    Ok(buf.get(HEADER_LEN..end).map(|payload| {
        (
            Packet {
                sequence_id,
                payload,
            },
            end,
        )
    }))
}

/// Frames `payload` as one packet with `sequence_id`. A payload of
/// [`MAX_PAYLOAD_LEN`] bytes or more does not fit in one packet and is an
/// error: splitting is never needed in the connection phase.
pub fn encode_packet(sequence_id: u8, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    if payload.len() >= MAX_PAYLOAD_LEN {
        return Err(WireError::Malformed {
            message: "MySQL packet",
            reason: "payload too long for a single packet",
        });
    }
    let len = payload.len().to_le_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&[len[0], len[1], len[2], sequence_id]);
    out.extend_from_slice(payload);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::mysql::captured;
    use crate::mysql::test_util::hex;

    #[test]
    fn captured_packets_frame_and_re_encode() {
        for capture in captured::ALL {
            let bytes = hex(capture);
            let (packet, used) = parse_packet(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len(), "{capture}");
            assert!(!packet.continues());
            assert_eq!(
                encode_packet(packet.sequence_id, packet.payload).unwrap(),
                bytes
            );
            for end in 0..bytes.len() {
                assert_eq!(
                    parse_packet(&bytes[..end]),
                    Ok(None),
                    "{capture} cut at {end}"
                );
            }
        }
    }

    #[test]
    fn two_packets_in_one_buffer() {
        let mut bytes = hex(captured::MARIADB_CLIENT_QUIT);
        bytes.extend_from_slice(&hex(captured::MARIADB_OK_NO_DB));
        let (first, used) = parse_packet(&bytes).unwrap().unwrap();
        assert_eq!((first.sequence_id, first.payload), (0, &[0x01][..]));
        let (second, rest) = parse_packet(&bytes[used..]).unwrap().unwrap();
        assert_eq!(second.sequence_id, 2);
        assert_eq!(used + rest, bytes.len());
    }

    #[test]
    fn renumbering_changes_only_the_sequence_id() {
        let bytes = hex(captured::MARIADB_AUTH_SWITCH_ED25519);
        let (packet, _) = parse_packet(&bytes).unwrap().unwrap();
        let renumbered = packet.encode_with_sequence_id(7).unwrap();
        assert_eq!(renumbered[3], 7);
        assert_eq!(renumbered[..3], bytes[..3]);
        assert_eq!(renumbered[4..], bytes[4..]);
    }

    #[test]
    fn oversized_and_continuation_packets_are_refused_before_the_payload_arrives() {
        let continuation = [0xff, 0xff, 0xff, 0x00];
        let err = parse_packet(&continuation).unwrap_err();
        assert!(err.to_string().contains("continuation"), "{err}");
        let too_long = (MAX_HANDSHAKE_PAYLOAD_LEN as u32 + 1).to_le_bytes();
        assert!(parse_packet(&[too_long[0], too_long[1], too_long[2], 0]).is_err());
        let at_limit = (MAX_HANDSHAKE_PAYLOAD_LEN as u32).to_le_bytes();
        assert_eq!(
            parse_packet(&[at_limit[0], at_limit[1], at_limit[2], 0]),
            Ok(None)
        );
        // With the full limit a continuation frames, and says so.
        let mut big = vec![0xff, 0xff, 0xff, 0x03];
        big.resize(HEADER_LEN + MAX_PAYLOAD_LEN, 0x61);
        let (packet, used) = parse_packet_with_max(&big, usize::MAX).unwrap().unwrap();
        assert!(packet.continues());
        assert_eq!(used, big.len());
        assert!(encode_packet(0, packet.payload).is_err());
    }

    #[test]
    fn empty_payload() {
        assert_eq!(encode_packet(5, &[]).unwrap(), [0, 0, 0, 5]);
        let (packet, used) = parse_packet(&[0, 0, 0, 5, 9]).unwrap().unwrap();
        assert_eq!((packet.sequence_id, packet.payload, used), (5, &[][..], 4));
    }
}
