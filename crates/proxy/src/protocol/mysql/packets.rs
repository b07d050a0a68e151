//! Reading MySQL packets off a stream, and the ERR packets the proxy
//! sends itself.

use std::fmt;
use std::io;

use bytes::BytesMut;
use intransit_wire::mysql::{parse_packet, ErrPacket, ServerError};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a client is told when the database cannot be reached or secured.
pub(crate) const UNAVAILABLE_MESSAGE: &str =
    "the database is unavailable right now; try again later";

/// ER_UNKNOWN_ERROR: the proxy could not reach or use the database.
pub(crate) const UNAVAILABLE: ServerError = ServerError {
    code: 1105,
    sql_state: *b"HY000",
};

/// Why a packet could not be read.
#[derive(Debug)]
pub(crate) enum PacketError {
    Io(io::Error),
    Closed,
    Invalid(String),
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketError::Io(e) => write!(f, "reading: {e}"),
            PacketError::Closed => f.write_str("connection closed"),
            PacketError::Invalid(e) => write!(f, "invalid packet: {e}"),
        }
    }
}

/// Reads one packet, keeping what follows it in `buf`.
pub(crate) async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(u8, Vec<u8>), PacketError> {
    loop {
        match parse_packet(buf) {
            Ok(Some((packet, used))) => {
                let out = (packet.sequence_id, packet.payload.to_vec());
                let _ = buf.split_to(used);
                return Ok(out);
            }
            Ok(None) => {}
            Err(e) => return Err(PacketError::Invalid(e.to_string())),
        }
        let n = stream.read_buf(buf).await.map_err(PacketError::Io)?;
        if n == 0 {
            return Err(PacketError::Closed);
        }
    }
}

/// An ERR packet with sequence id `sequence_id`.
pub(crate) fn err_packet(sequence_id: u8, error: ServerError, message: &str) -> Vec<u8> {
    ErrPacket::framed(error, message, sequence_id)
}

/// The ERR 1105 a client gets when the database cannot be reached or
/// secured, as packet `sequence_id`.
pub(crate) fn unavailable_packet(sequence_id: u8) -> Vec<u8> {
    err_packet(sequence_id, UNAVAILABLE, UNAVAILABLE_MESSAGE)
}
