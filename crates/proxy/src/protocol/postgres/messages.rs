//! The PostgreSQL messages the proxy reads and sends itself during
//! negotiation, in both modes: initial messages read from a stream, and
//! the ErrorResponses that turn a peer away.

use bytes::BytesMut;
use intransit_wire::pg::{self, ErrorResponse, InitialMessage, SqlState};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::conn::Refused;
use crate::refusal::RefusalReason;

/// Reads from `stream` into `buf` until one initial message parses.
pub(crate) async fn read_initial<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<(InitialMessage, usize), Refused> {
    loop {
        match pg::parse_initial_message(buf) {
            Ok(Some(parsed)) => return Ok(parsed),
            Ok(None) => {}
            Err(e) => {
                return Err(Refused::new(
                    RefusalReason::Malformed,
                    format!("invalid startup packet: {e}"),
                ))
            }
        }
        let n = stream.read_buf(buf).await.map_err(Refused::client_closed)?;
        if n == 0 {
            return Err(Refused::new(
                RefusalReason::ClientClosed,
                "client closed the connection during negotiation",
            ));
        }
    }
}

/// A FATAL ErrorResponse, encoded.
pub(crate) fn error_response(code: SqlState, message: String, hint: Option<String>) -> Vec<u8> {
    let mut error = ErrorResponse::fatal(code, message);
    if let Some(hint) = hint {
        error = error.with_hint(hint);
    }
    error.encode()
}

/// The name of an initial message, for logs.
pub(crate) fn initial_name(message: &InitialMessage) -> &'static str {
    match message {
        InitialMessage::SslRequest => "SSLRequest",
        InitialMessage::GssEncRequest => "GSSENCRequest",
        InitialMessage::Cancel(_) => "CancelRequest",
        InitialMessage::Startup(_) => "StartupMessage",
        InitialMessage::DirectTls => "a nested TLS record",
    }
}

/// The ErrorResponse a peer gets when the upstream leg cannot be opened:
/// the same in both modes, and without the database's address.
pub(crate) fn unavailable_response() -> Vec<u8> {
    error_response(
        SqlState::CONNECTION_FAILURE,
        "the database is unavailable right now".into(),
        Some("Try again later. The proxy's log has the details.".into()),
    )
}

/// The ErrorResponse a peer gets beyond the listener's `max_connections`,
/// as PostgreSQL itself words it.
pub(crate) fn too_many_clients_response() -> Vec<u8> {
    error_response(
        SqlState::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already".into(),
        Some("The proxy is at its connection limit; try again later.".into()),
    )
}
