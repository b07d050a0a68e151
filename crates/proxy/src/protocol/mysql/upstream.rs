//! The MySQL upstream connector, shared by both modes: connect and read
//! the server's greeting (MySQL's server speaks first), then, for a TLS
//! leg, the proxy's own SSLRequest and the TLS handshake.

use std::time::Duration;

use bytes::BytesMut;
use intransit_config::Endpoint;
use intransit_wire::mysql::{
    encode_packet, ErrPacket, HandshakeResponse41, HandshakeV10, SslRequest, CLIENT_SSL,
};
use tokio::io::AsyncWriteExt;

use super::packets::read_packet;
use crate::conn::Refused;
use crate::net::BoxStream;
use crate::protocol::upstream;
use crate::refusal::RefusalReason;
use crate::tls::upstream::{UpstreamSession, UpstreamTls};

/// The server's side of a fresh connection, greeting read.
pub(crate) struct Upstream {
    pub(crate) stream: BoxStream,
    /// Bytes read past the greeting.
    pub(crate) buf: BytesMut,
    pub(crate) greeting: HandshakeV10,
}

/// The MySQL upstream connector's first half, shared by both modes: connect
/// and read the server's greeting (MySQL's server speaks first). A server
/// that answers with an ERR packet (too many connections, host blocked) is
/// reported with its code and message.
pub(crate) async fn open_upstream(
    target: &Endpoint,
    timeout: Duration,
) -> Result<Upstream, Refused> {
    let unavailable = |detail: String| Refused::new(RefusalReason::UpstreamUnavailable, detail);
    let mut stream = upstream::connect(target, timeout).await?;
    let mut buf = BytesMut::with_capacity(256);
    let (_, payload) = read_packet(&mut stream, &mut buf)
        .await
        .map_err(|e| unavailable(format!("greeting from {target}: {e}")))?;
    let greeting = HandshakeV10::parse(&payload).map_err(|e| {
        let what = ErrPacket::parse(&payload)
            .map(|err| format!("the server refused: {} {}", err.code, err.message_lossy()))
            .unwrap_or_else(|_| format!("unusable greeting: {e}"));
        unavailable(format!("{target}: {what}"))
    })?;
    Ok(Upstream {
        stream,
        buf,
        greeting,
    })
}

impl Upstream {
    /// The MySQL upstream connector's second half, shared by both modes:
    /// the proxy's own SSLRequest (packet `ssl_request_seq`, the
    /// capabilities of the peer's `response` with CLIENT_SSL set) and the
    /// TLS handshake. A greeting without CLIENT_SSL is
    /// `upstream_tls_refused`.
    pub(crate) async fn secure(
        self,
        tls: &UpstreamTls,
        response: &HandshakeResponse41,
        ssl_request_seq: u8,
        target: &Endpoint,
        timeout: Duration,
    ) -> Result<(BoxStream, UpstreamSession), Refused> {
        let unavailable = |detail: String| Refused::new(RefusalReason::UpstreamUnavailable, detail);
        if !self.greeting.offers_tls() {
            return Err(tls_refused(target));
        }
        if !self.buf.is_empty() {
            return Err(unavailable(format!(
                "{target} sent {} byte(s) after its greeting, before the proxy spoke",
                self.buf.len()
            )));
        }
        let request = SslRequest {
            capabilities: response.capabilities | CLIENT_SSL,
            max_packet_size: response.max_packet_size,
            collation: response.collation,
            extended_capabilities: response.extended_capabilities,
        };
        let packet = encode_packet(ssl_request_seq, &request.encode())
            .map_err(|e| unavailable(format!("SSLRequest: {e}")))?;
        let mut stream = self.stream;
        stream
            .write_all(&packet)
            .await
            .map_err(|e| unavailable(format!("sending the SSLRequest to {target}: {e}")))?;
        upstream::start_tls(tls, stream, target, timeout).await
    }
}

pub(crate) fn tls_refused(target: &Endpoint) -> Refused {
    Refused::new(
        RefusalReason::UpstreamTlsRefused,
        format!("{target} does not offer TLS (its greeting lacks CLIENT_SSL; is ssl off?), and upstream_tls requires TLS"),
    )
}
