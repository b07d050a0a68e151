//! What opening the upstream leg has in common across protocols and
//! modes: the connection, and the TLS handshake once the protocol has
//! asked the database for TLS in its own way. Failures become refusals
//! whose detail names the database's address (for the log; peers never
//! see it).

use std::io;
use std::time::Duration;

use intransit_config::Endpoint;

use crate::conn::Refused;
use crate::net::{self, BoxStream};
use crate::refusal::RefusalReason;
use crate::tls::upstream::{UpstreamSession, UpstreamTls, UpstreamTlsFailure};

/// Connects to `target` within `timeout`.
pub(crate) async fn connect(target: &Endpoint, timeout: Duration) -> Result<BoxStream, Refused> {
    net::connect(target, timeout).await.map_err(|e| {
        Refused::new(
            RefusalReason::UpstreamUnavailable,
            format!("connecting to {target}: {e}"),
        )
    })
}

/// Runs the TLS handshake over `stream`, already past the protocol's TLS
/// request if it has one.
pub(crate) async fn start_tls(
    tls: &UpstreamTls,
    stream: BoxStream,
    target: &Endpoint,
    timeout: Duration,
) -> Result<(BoxStream, UpstreamSession), Refused> {
    tls.connect(stream, timeout)
        .await
        .map_err(|f| tls_refused(&f, target))
}

/// A refusal for a failed upstream TLS handshake.
pub(crate) fn tls_refused(failure: &UpstreamTlsFailure, target: &Endpoint) -> Refused {
    Refused::new(failure.reason, format!("{target}: {}", failure.detail))
}

/// A refusal for an error on an open upstream leg: a TLS 1.3 server's
/// verdict on the proxy's client certificate arrives with the first read
/// after the handshake, so such an error is reported as the TLS failure
/// it is; any other is `upstream_unavailable` with `what` was being done.
pub(crate) fn read_failed(error: &io::Error, target: &Endpoint, what: &str) -> Refused {
    match crate::tls::upstream::failure_after_handshake(error) {
        Some(failure) => tls_refused(&failure, target),
        None => Refused::new(
            RefusalReason::UpstreamUnavailable,
            format!("{target}: {what}: {error}"),
        ),
    }
}
