//! Placeholder server login (trust only).

use std::time::Duration;

use bytes::BytesMut;
use intransit_config::Endpoint;
use intransit_wire::pg::{self, session, ProtocolVersion, StartupMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::credentials::ServerLogin;
use crate::conn::Refused;
use crate::net::BoxStream;
use crate::protocol::postgres::upstream::open_upstream;
use crate::refusal::RefusalReason;
use crate::tls::upstream::UpstreamSession;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BackendKey {
    pub(crate) pid: u32,
    pub(crate) secret: u32,
}

pub(crate) struct LoggedIn {
    pub(crate) stream: BoxStream,
    pub(crate) parameters: Vec<(String, String)>,
    pub(crate) key: BackendKey,
    pub(crate) tls: Option<UpstreamSession>,
}

pub(crate) struct LoginFailure {
    pub(crate) refused: Refused,
    pub(crate) server_error: Option<Vec<u8>>,
}

pub(crate) async fn log_in(
    target: &Endpoint,
    login: &ServerLogin,
    database: &str,
    user: &str,
    startup: &[(String, String)],
    connect_timeout: Duration,
    login_timeout: Duration,
) -> Result<LoggedIn, LoginFailure> {
    let fail = |detail: String| LoginFailure {
        refused: Refused::new(RefusalReason::UpstreamUnavailable, detail),
        server_error: None,
    };
    let (mut stream, tls) = open_upstream(target, login.upstream_tls.as_deref(), connect_timeout)
        .await
        .map_err(|refused| LoginFailure {
            refused,
            server_error: None,
        })?;
    let mut params = vec![
        ("user".to_owned(), user.to_owned()),
        ("database".to_owned(), database.to_owned()),
    ];
    params.extend_from_slice(startup);
    let message = StartupMessage {
        protocol: ProtocolVersion::V3_0,
        params,
    };
    let bytes = message.encode().map_err(|e| fail(e.to_string()))?;
    let work = async {
        stream
            .write_all(&bytes)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut parameters = Vec::new();
        let mut key = None;
        loop {
            while let Some((frame, used)) =
                pg::parse_backend_frame(&buf).map_err(|e| fail(e.to_string()))?
            {
                match frame.tag {
                    b'R' if frame.body == [0, 0, 0, 0] => {}
                    b'R' => return Err(fail("the server asks for a password".into())),
                    b'S' => {
                        let (n, v) = session::parse_parameter_status(frame.body)
                            .map_err(|e| fail(e.to_string()))?;
                        parameters.push((n.to_owned(), v.to_owned()));
                    }
                    b'K' => {
                        let (pid, secret) = session::parse_backend_key_data(frame.body)
                            .map_err(|e| fail(e.to_string()))?;
                        let secret = secret.try_into().map(u32::from_be_bytes).unwrap_or(0);
                        key = Some(BackendKey { pid, secret });
                    }
                    b'E' => {
                        let raw = buf[..used].to_vec();
                        return Err(LoginFailure {
                            refused: Refused::new(
                                RefusalReason::UpstreamRefused,
                                format!("{target} refused the login of {user:?}"),
                            ),
                            server_error: Some(raw),
                        });
                    }
                    b'Z' => {
                        let _ = buf.split_to(used);
                        return Ok((
                            parameters,
                            key.unwrap_or(BackendKey { pid: 0, secret: 0 }),
                            buf,
                        ));
                    }
                    _ => {}
                }
                let _ = buf.split_to(used);
            }
            if stream
                .read_buf(&mut buf)
                .await
                .map_err(|e| fail(e.to_string()))?
                == 0
            {
                return Err(fail("the server closed the connection".into()));
            }
        }
    };
    let (parameters, key, _rest) = tokio::time::timeout(login_timeout, work)
        .await
        .map_err(|_| fail(format!("no login within {login_timeout:?}")))??;
    Ok(LoggedIn {
        stream,
        parameters,
        key,
        tls,
    })
}
