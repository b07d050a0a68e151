//! The authentication exchange after the HandshakeResponse (auth switch,
//! more data, the client's answers), relayed both ways with sequence ids
//! renumbered, until the server ends it with OK or ERR. After an OK the
//! proxy copies bytes untouched; an ERR reaches the client as the server
//! sent it and ends the connection as a refusal (`upstream_refused`), so
//! the audit event and metrics say the login failed.

use std::io;

use bytes::BytesMut;
use intransit_wire::mysql::encode_packet;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::negotiation::{relay_from_server, Renumbering};
use super::packets::{read_packet, unavailable_packet, PacketError};
use crate::conn::Refused;
use crate::net::{close_with, BoxStream};
use crate::refusal::RefusalReason;
use crate::tls::upstream::failure_after_handshake;

/// How the authentication relay failed.
pub(crate) struct RelayFailure {
    refused: Refused,
    /// When the server's side failed and the client still waits for its
    /// answer: the sequence id that answer takes, for an ERR 1105.
    answer_seq: Option<u8>,
}

impl RelayFailure {
    fn client(detail: String) -> Self {
        RelayFailure {
            refused: Refused::new(
                RefusalReason::Malformed,
                format!("authentication exchange: {detail}"),
            ),
            answer_seq: None,
        }
    }

    /// The server's side failed: a TLS error (a TLS 1.3 server rejects the
    /// proxy's client certificate after the handshake, so it shows here),
    /// a closed connection, or bytes that are not packets.
    fn server(error: &PacketError, answer_seq: u8) -> Self {
        let refused = match error {
            PacketError::Io(e) => match failure_after_handshake(e) {
                Some(f) => Refused::new(f.reason, f.detail),
                None => Refused::new(
                    RefusalReason::UpstreamUnavailable,
                    format!("authentication exchange: the server: {error}"),
                ),
            },
            PacketError::Closed => Refused::new(
                RefusalReason::UpstreamUnavailable,
                "authentication exchange: the server closed the connection",
            ),
            PacketError::Invalid(_) => Refused::new(
                RefusalReason::Malformed,
                format!("authentication exchange: the server: {error}"),
            ),
        };
        RelayFailure {
            refused,
            answer_seq: Some(answer_seq),
        }
    }

    /// Tells a client still waiting for the server that the database is
    /// unavailable, and returns the refusal.
    pub(crate) async fn answer<C: AsyncWrite + Unpin>(self, client: &mut C) -> Refused {
        if let Some(seq) = self.answer_seq {
            close_with(client, &unavailable_packet(seq)).await;
        }
        self.refused
    }
}

/// Relays the authentication exchange (auth switch, more data, the
/// client's answers) in both directions with sequence ids renumbered as
/// `renumbering` says, until the server ends it with OK or ERR. Bytes
/// already read past an OK are passed on as they are; after an ERR, relayed
/// to the client, the client's connection is closed and the refusal
/// returned. `response_seq` is the sequence id of the
/// client's HandshakeResponse, as the client numbered it.
pub(crate) async fn relay_authentication<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    client_buf: &mut BytesMut,
    upstream: &mut BoxStream,
    upstream_buf: &mut BytesMut,
    renumbering: Renumbering,
    response_seq: u8,
) -> Result<(), RelayFailure> {
    // The sequence id, in the client's numbering, of the server's next packet.
    let mut next_to_client = response_seq.wrapping_add(1);
    let to_client = |e: io::Error| RelayFailure::client(format!("to client: {e}"));
    loop {
        tokio::select! {
            from_server = read_packet(upstream, upstream_buf) => {
                let (seq, payload) = from_server
                    .map_err(|e| RelayFailure::server(&e, next_to_client))?;
                let relayed = relay_from_server(renumbering, seq, &payload)
                    .map_err(|e| RelayFailure::client(e.to_string()))?;
                next_to_client = relayed.seq.wrapping_add(1);
                if let Some(detail) = relayed.refused {
                    close_with(client, &relayed.packet).await;
                    return Err(RelayFailure {
                        refused: Refused::new(RefusalReason::UpstreamRefused, detail),
                        answer_seq: None,
                    });
                }
                client.write_all(&relayed.packet).await.map_err(to_client)?;
                if relayed.done {
                    if !upstream_buf.is_empty() {
                        client.write_all(upstream_buf).await.map_err(to_client)?;
                        upstream_buf.clear();
                    }
                    if !client_buf.is_empty() {
                        upstream.write_all(client_buf).await.map_err(|e| {
                            RelayFailure::server(&PacketError::Io(e), next_to_client)
                        })?;
                        client_buf.clear();
                    }
                    client.flush().await.map_err(to_client)?;
                    return Ok(());
                }
                client.flush().await.map_err(to_client)?;
            }
            from_client = read_packet(client, client_buf) => {
                let (seq, payload) = from_client
                    .map_err(|e| RelayFailure::client(format!("the client: {e}")))?;
                next_to_client = seq.wrapping_add(1);
                let packet = encode_packet(renumbering.to_upstream(seq), &payload)
                    .map_err(|e| RelayFailure::client(e.to_string()))?;
                upstream.write_all(&packet).await.map_err(|e| {
                    RelayFailure::server(&PacketError::Io(e), next_to_client)
                })?;
            }
        }
    }
}
