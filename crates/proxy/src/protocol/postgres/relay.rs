//! The login relayed in either mode: once the server has the
//! StartupMessage, its messages (authentication requests, parameters,
//! notices) pass to the peer and the peer's answers pass to the server,
//! untouched, until the server is ready for queries. Each whole message
//! from the server is judged by `negotiation::login_step`, so a login the
//! server refuses (an ErrorResponse: a wrong password, a database that
//! does not exist, a server shutting down, a proxy whose `db_users` denies
//! the user) ends the connection as `upstream_refused`, while the peer
//! gets the server's ErrorResponse as sent. After ReadyForQuery nothing is
//! judged any more: the session is a plain copy. A pooled listener does
//! not relay a login: it answers the client itself (`pool::session`) and
//! logs in to the database on its own (`pool::login`).

use bytes::BytesMut;
use intransit_config::Endpoint;
use intransit_wire::pg;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::messages::unavailable_response;
use super::negotiation::{login_step, LoginStep};
use crate::conn::Refused;
use crate::net::{close_with, BoxStream};
use crate::protocol::upstream::read_failed;
use crate::refusal::RefusalReason;

/// Relays the login both ways, starting with `from_server` (what the
/// server sent so far and the peer has not seen), until the server is
/// ready for queries. Whole messages from the server pass on as they
/// arrive; the peer's bytes pass on untouched. An ErrorResponse reaches
/// the peer, which is then closed, and becomes the refusal; a server that
/// fails otherwise leaves the peer with "database unavailable".
pub(crate) async fn relay_login<P>(
    peer: &mut P,
    upstream: &mut BoxStream,
    mut from_server: BytesMut,
    target: &Endpoint,
) -> Result<(), Refused>
where
    P: AsyncRead + AsyncWrite + Unpin,
{
    let mut from_peer = BytesMut::with_capacity(512);
    loop {
        let mut whole = 0;
        let mut step = LoginStep::Continues;
        while step == LoginStep::Continues {
            match pg::parse_backend_frame(from_server.get(whole..).unwrap_or_default()) {
                Ok(Some((frame, used))) => {
                    step = login_step(&frame);
                    whole += used;
                }
                Ok(None) => break,
                Err(e) => {
                    close_with(peer, &unavailable_response()).await;
                    return Err(Refused::new(
                        RefusalReason::UpstreamUnavailable,
                        format!("{target}: invalid message during the login: {e}"),
                    ));
                }
            }
        }
        match step {
            LoginStep::Refused(detail) => {
                close_with(peer, &from_server.split_to(whole)).await;
                return Err(Refused::new(
                    RefusalReason::UpstreamRefused,
                    format!("{target}: {detail}"),
                ));
            }
            // Whatever followed ReadyForQuery is the session's.
            LoginStep::Ready => {
                return peer
                    .write_all(&from_server)
                    .await
                    .map_err(Refused::client_closed)
            }
            LoginStep::Continues if whole > 0 => peer
                .write_all(&from_server.split_to(whole))
                .await
                .map_err(Refused::client_closed)?,
            LoginStep::Continues => {}
        }
        tokio::select! {
            read = upstream.read_buf(&mut from_server) => match read {
                Ok(0) => {
                    close_with(peer, &unavailable_response()).await;
                    return Err(Refused::new(
                        RefusalReason::UpstreamUnavailable,
                        format!("{target}: the server closed the connection during the login"),
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    close_with(peer, &unavailable_response()).await;
                    return Err(read_failed(&e, target, "reading the login"));
                }
            },
            read = peer.read_buf(&mut from_peer) => match read {
                Ok(0) => {
                    return Err(Refused::new(
                        RefusalReason::ClientClosed,
                        "the peer closed the connection during the login",
                    ))
                }
                Ok(_) => {
                    let sent = upstream.write_all(&from_peer).await;
                    from_peer.clear();
                    if let Err(e) = sent {
                        close_with(peer, &unavailable_response()).await;
                        return Err(read_failed(&e, target, "sending the peer's login"));
                    }
                }
                Err(e) => return Err(Refused::client_closed(e)),
            },
        }
    }
}
