//! What only real TLS sessions show: the chain and what rustls negotiates,
//! whether a client certificate is demanded and whether a given one is
//! accepted, session resumption, OCSP stapling, and PostgreSQL's direct
//! TLS.
//!
//! Like every probe, these sessions end right after the handshake (or
//! after a short wait for the server's verdict on a client certificate):
//! no application data is ever sent.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{ScanError, Stage};
use crate::fetch::{AcceptAnyChain, CertificateRequestSeen};
use crate::negotiate::{negotiate, Deadline};
use crate::options::{ClientIdentity, SurveyOptions};
use crate::Target;

/// How long a session waits for the server to refuse a client
/// certificate (or its absence) after the handshake: TLS 1.3 servers say
/// so only after the client's Finished.
const VERDICT_WAIT: Duration = Duration::from_millis(1500);

/// What the sessions found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sessions {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) negotiation: Option<String>,
    pub(crate) server_version: Option<String>,
    pub(crate) negotiated: Option<String>,
    pub(crate) ocsp_stapled: bool,
    pub(crate) client_cert_requested: Option<bool>,
    pub(crate) client_cert_required: Option<bool>,
    pub(crate) client_cert_accepted: Option<bool>,
    pub(crate) resumption: Option<bool>,
    pub(crate) direct_tls: Option<bool>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: aws_lc_rs::ALL_CIPHER_SUITES.to_vec(),
        kx_groups: aws_lc_rs::ALL_KX_GROUPS.to_vec(),
        ..aws_lc_rs::default_provider()
    })
}

struct Config {
    config: Arc<ClientConfig>,
    verifier: Arc<AcceptAnyChain>,
    asked: Option<Arc<CertificateRequestSeen>>,
}

fn config(
    identity: Option<&ClientIdentity>,
    resumption: bool,
    alpn: Vec<Vec<u8>>,
) -> Result<Config, ScanError> {
    let provider = provider();
    let verifier = Arc::new(AcceptAnyChain::new(
        provider.signature_verification_algorithms,
    ));
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ScanError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone());
    let (mut config, asked) = match identity {
        Some(id) => (
            builder
                .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                .map_err(|e| ScanError::Tls(format!("client certificate: {e}")))?,
            None,
        ),
        None => {
            let asked = Arc::new(CertificateRequestSeen::default());
            (
                builder.with_client_cert_resolver(asked.clone()),
                Some(asked),
            )
        }
    };
    config.alpn_protocols = alpn;
    if !resumption {
        config.resumption = Resumption::disabled();
    }
    Ok(Config {
        config: Arc::new(config),
        verifier,
        asked,
    })
}

/// One TLS session to `target`, negotiated the way its clients do (or, for
/// `direct`, TLS from the first byte).
async fn session(
    target: &Target,
    direct: bool,
    config: &Config,
    sni: Option<&str>,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, Option<String>, Option<String>), ScanError> {
    let deadline = Deadline::after(timeout);
    let address = target.address();
    let mut stream = deadline
        .run(
            Stage::Connecting,
            TcpStream::connect((target.host(), target.port())),
        )
        .await?
        .map_err(|error| ScanError::Connect {
            address: address.clone(),
            error,
        })?;
    let _ = stream.set_nodelay(true);
    let (how, version) = if direct {
        (Some("direct TLS (ALPN postgresql)".to_owned()), None)
    } else {
        let n = negotiate(target, &mut stream, &deadline).await?;
        (Some(n.how.to_owned()), n.server_version)
    };
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_owned())
            .map_err(|_| ScanError::InvalidServerName(n.to_owned()))?,
        None => match stream.peer_addr() {
            Ok(peer) => ServerName::IpAddress(peer.ip().into()),
            Err(error) => return Err(ScanError::Connect { address, error }),
        },
    };
    let tls = deadline
        .run(
            Stage::TlsHandshake,
            TlsConnector::from(config.config.clone()).connect(name, stream),
        )
        .await?
        .map_err(|e| ScanError::Tls(e.to_string()))?;
    Ok((tls, how, version))
}

/// Waits briefly for the server's verdict after the handshake: an alert or
/// a closed connection means it refused the client (certificate).
async fn refused_after_handshake(tls: &mut TlsStream<TcpStream>) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(VERDICT_WAIT, tls.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Sends a StartupMessage for the probe user over an established TLS
/// session and returns the server's error message, or `None` when it asked
/// for authentication (or said nothing in time). No password is ever sent.
async fn pg_login_verdict(tls: &mut TlsStream<TcpStream>) -> Option<String> {
    use intransit_wire::pg;
    use tokio::io::AsyncWriteExt;
    let startup = pg::StartupMessage {
        protocol: pg::ProtocolVersion::V3_0,
        params: vec![
            ("user".into(), crate::plaintext::PROBE_USER.into()),
            ("database".into(), crate::plaintext::PROBE_USER.into()),
            ("application_name".into(), "intransit-scan".into()),
        ],
    };
    let bytes = startup.encode().ok()?;
    tls.write_all(&bytes).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        match pg::parse_backend_frame(&buf) {
            Ok(Some((frame, _))) if frame.tag == b'E' => {
                return pg::parse_error_response(frame.body)
                    .ok()
                    .and_then(|f| f.message().map(str::to_owned))
                    .or_else(|| Some(String::new()));
            }
            Ok(Some(_)) => return None,
            Ok(None) if buf.len() < 16 * 1024 => {}
            _ => return None,
        }
        match tokio::time::timeout(VERDICT_WAIT, tls.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            // A closed session right after the handshake: the certificate
            // (or its absence) was refused in TLS.
            Ok(_) => return Some("requires a valid client certificate (closed)".into()),
            Err(_) => return None,
        }
    }
}

pub(crate) async fn sessions(
    target: &Target,
    opts: &SurveyOptions,
    sni: Option<String>,
    limiter: Arc<Semaphore>,
) -> Sessions {
    let mut out = Sessions::default();
    let sni = sni.as_deref();
    let timeout = opts.timeout;
    let Ok(_permit) = limiter.acquire().await else {
        return out;
    };

    // Without a client certificate: the chain, what is negotiated, whether
    // a certificate is asked for and demanded, and resumption.
    if let Ok(plain) = config(None, true, Vec::new()) {
        if let Ok((mut tls, how, version)) = session(target, false, &plain, sni, timeout).await {
            let (_, conn) = tls.get_ref();
            out.chain = conn
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default();
            out.negotiation = how;
            out.server_version = version;
            out.negotiated = Some(format!(
                "{} {} {}",
                conn.protocol_version()
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown"),
                conn.negotiated_cipher_suite()
                    .and_then(|s| s.suite().as_str())
                    .unwrap_or("unknown"),
                conn.negotiated_key_exchange_group()
                    .and_then(|g| g.name().as_str())
                    .unwrap_or("")
            ));
            let asked = plain.asked.as_ref().is_some_and(|a| a.seen());
            out.client_cert_requested = Some(asked);
            // Reading also takes in TLS 1.3 session tickets.
            let refused = if let Target::Postgres { .. } = target {
                // PostgreSQL asks for a certificate in the handshake but
                // enforces it at login (pg_hba.conf `cert`,
                // `clientcert=verify-full`): its answer to a login request
                // tells.
                pg_login_verdict(&mut tls)
                    .await
                    .is_some_and(|m| m.contains("requires a valid client certificate"))
            } else {
                refused_after_handshake(&mut tls).await
            };
            out.client_cert_required = Some(asked && refused);
            drop(tls);
            if !refused {
                out.resumption = Some(match session(target, false, &plain, sni, timeout).await {
                    Ok((tls, _, _)) => {
                        tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
                    }
                    Err(_) => false,
                });
            }
            out.ocsp_stapled = plain.verifier.ocsp_stapled();
        }
    }

    if let Some(identity) = &opts.client_identity {
        if let Ok(with_cert) = config(Some(identity), false, Vec::new()) {
            out.client_cert_accepted = Some(
                match session(target, false, &with_cert, sni, timeout).await {
                    Ok((mut tls, _, _)) if matches!(target, Target::Postgres { .. }) => {
                        // Refused certificates fail the handshake or the
                        // login with this message; a name mismatch with the
                        // probe user means the certificate was accepted.
                        !pg_login_verdict(&mut tls)
                            .await
                            .is_some_and(|m| m.contains("requires a valid client certificate"))
                    }
                    Ok((mut tls, _, _)) => !refused_after_handshake(&mut tls).await,
                    Err(_) => false,
                },
            );
        }
    }

    if let Target::Postgres { .. } = target {
        if let Ok(direct) = config(
            opts.client_identity.as_ref(),
            false,
            vec![b"postgresql".to_vec()],
        ) {
            out.direct_tls = Some(
                session(target, true, &direct, sni, timeout)
                    .await
                    .is_ok_and(|(tls, _, _)| {
                        tls.get_ref().1.alpn_protocol() == Some(b"postgresql")
                    }),
            );
        }
    }
    out
}
