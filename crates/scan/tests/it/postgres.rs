use std::net::{IpAddr, Ipv4Addr};

use intransit_pki::{
    pem_to_der_certs, sha256_fingerprint, CertificateAuthority, CertificateKind, IssueRequest,
    KeyAlgorithm, Validity,
};
use intransit_scan::{chain_order, fetch_chain, ChainOrder, FetchOptions, ScanError, Target};
use intransit_testkit::{PgOptions, PgServer, PgSsl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::listen;

/// The 8 bytes of an SSLRequest.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pg_target(server: &PgServer) -> Target {
    format!("postgres://{}:{}", server.host(), server.port())
        .parse()
        .unwrap()
}

#[test]
fn native_tls_chain_is_fetched_after_ssl_request() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate(
        "scan test CA",
        KeyAlgorithm::default(),
        Validity::days_from_now(30),
    )
    .unwrap();
    let mut request = IssueRequest::new(CertificateKind::Server, "localhost");
    request.dns_names = vec!["localhost".to_owned()];
    request.ip_addresses = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let issued = ca.issue(&request).unwrap();
    let paths = issued.write_to(&dir.path().join("server")).unwrap();

    // The server sends chain.pem: its certificate, then the CA.
    let server = PgServer::start(PgOptions {
        ssl: Some(PgSsl {
            cert_file: paths.chain.clone(),
            key_file: paths.key.clone(),
            ca_file: paths.ca.clone(),
        }),
        ..PgOptions::default()
    })
    .unwrap();

    let fetched = runtime()
        .block_on(fetch_chain(&pg_target(&server), &FetchOptions::default()))
        .unwrap();

    let leaf = &pem_to_der_certs(&issued.cert_pem).unwrap()[0];
    assert_eq!(fetched.chain.len(), 2);
    assert_eq!(
        sha256_fingerprint(fetched.chain[0].as_ref()),
        sha256_fingerprint(leaf)
    );
    assert_eq!(
        sha256_fingerprint(fetched.chain[1].as_ref()),
        sha256_fingerprint(ca.cert_der())
    );
    assert_eq!(fetched.negotiation, "PostgreSQL SSLRequest");
    assert_eq!(fetched.tls_version, "TLSv1.3");
    assert!(fetched.key_exchange.is_some());
    // ssl_ca_file makes PostgreSQL ask for a client certificate, which it
    // then does not require.
    assert!(fetched.client_certificate_requested);
    assert_eq!(chain_order(&fetched.chain), ChainOrder::Ok);
}

#[test]
fn server_without_ssl_refuses_tls() {
    let server = PgServer::shared().unwrap();
    let err = runtime()
        .block_on(fetch_chain(&pg_target(server), &FetchOptions::default()))
        .unwrap_err();
    assert!(matches!(err, ScanError::TlsRefused { .. }), "{err:?}");
    assert!(
        err.to_string().contains("the server does not offer TLS"),
        "{err}"
    );
}

/// A fake PostgreSQL for one connection: reads the SSLRequest, sends
/// `answer`, and reads until the client goes away.
async fn fake_pg_answering(answer: Vec<u8>) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let (listener, addr) = listen().await;
    let handle = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        stream.read_exact(&mut request).await.unwrap();
        assert_eq!(request, SSL_REQUEST);
        stream.write_all(&answer).await.unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        rest
    });
    (addr.port(), handle)
}

#[tokio::test]
async fn error_answer_carries_the_servers_message() {
    // ErrorResponse: severity FATAL, SQLSTATE 0A000, and a message.
    let mut body = Vec::new();
    for (field, text) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "0A000"),
        (b'M', "unsupported frontend protocol 1234.5679"),
    ] {
        body.push(field);
        body.extend_from_slice(text.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut answer = vec![b'E'];
    answer.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    answer.extend_from_slice(&body);
    let (port, server) = fake_pg_answering(answer).await;

    let target: Target = format!("postgres://127.0.0.1:{port}").parse().unwrap();
    let err = fetch_chain(&target, &FetchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ScanError::ServerError { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("FATAL (0A000): unsupported frontend protocol 1234.5679"),
        "{err}"
    );
    assert!(
        server.await.unwrap().is_empty(),
        "no StartupMessage follows"
    );
}

#[tokio::test]
async fn unexpected_answer_is_a_protocol_error() {
    let (port, server) = fake_pg_answering(b"HTTP/1.1 400 Bad Request\r\n".to_vec()).await;

    let target: Target = format!("postgres://127.0.0.1:{port}").parse().unwrap();
    let err = fetch_chain(&target, &FetchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ScanError::Protocol(_)), "{err:?}");
    assert!(err.to_string().contains("0x48"), "{err}");
    assert!(server.await.unwrap().is_empty());
}
