use intransit_scan::{chain_order_with_anchors, fetch_chain, ChainOrder, FetchOptions, ScanError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::support::{listen, serve_tls, server_config, Hierarchy, Seen, TLS13_AND_TLS12};

const CLIENT_PROTOCOL_41: u32 = 0x0200;
const CLIENT_SSL: u32 = 0x0800;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;

/// The capabilities of a MySQL 8.0 server with TLS configured.
const MYSQL8_CAPABILITIES: u32 = 0xdfff_ffff;

/// Frames `payload` as a MySQL packet.
fn packet(sequence_id: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_le_bytes();
    let mut out = vec![len[0], len[1], len[2], sequence_id];
    out.extend_from_slice(payload);
    out
}

/// A HandshakeV10 greeting as MySQL 8.0 sends it, with `capabilities`.
fn greeting(capabilities: u32) -> Vec<u8> {
    let caps = capabilities.to_le_bytes();
    let mut p = vec![10];
    p.extend_from_slice(b"8.0.36-fake\0");
    p.extend_from_slice(&7u32.to_le_bytes());
    p.extend_from_slice(b"12345678\0");
    p.extend_from_slice(&caps[..2]);
    p.push(255);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&caps[2..]);
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(b"123456789012\0");
    p.extend_from_slice(b"caching_sha2_password\0");
    packet(0, &p)
}

/// What the fake server saw: the client's SSLRequest packet, and what the
/// TLS server saw after it.
struct MysqlSeen {
    ssl_request: Vec<u8>,
    tls: Seen,
}

/// A fake MySQL server for one connection: greets with CLIENT_SSL, reads
/// the 36-byte SSLRequest packet, then runs a TLS server handshake.
async fn fake_mysql_with_tls(pki: &Hierarchy) -> (u16, JoinHandle<MysqlSeen>) {
    let config = server_config(pki.chain(), pki.key(), TLS13_AND_TLS12, &[]);
    let (listener, addr) = listen().await;
    let handle = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream
            .write_all(&greeting(MYSQL8_CAPABILITIES))
            .await
            .unwrap();
        let mut ssl_request = vec![0u8; 36];
        stream.read_exact(&mut ssl_request).await.unwrap();
        let tls = serve_tls(stream, config).await;
        MysqlSeen { ssl_request, tls }
    });
    (addr.port(), handle)
}

/// A fake MySQL server for one connection that sends `first` and then
/// reads until the client goes away, returning what the client sent.
async fn fake_mysql_saying(first: Vec<u8>) -> (u16, JoinHandle<Vec<u8>>) {
    let (listener, addr) = listen().await;
    let handle = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(&first).await.unwrap();
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received).await;
        received
    });
    (addr.port(), handle)
}

#[tokio::test]
async fn ssl_request_then_tls() {
    let pki = Hierarchy::new();
    let (port, server) = fake_mysql_with_tls(&pki).await;

    let target = format!("mysql://127.0.0.1:{port}").parse().unwrap();
    let fetched = fetch_chain(&target, &FetchOptions::default())
        .await
        .unwrap();
    let seen = server.await.unwrap();

    // The SSLRequest: a 32-byte payload with sequence id 1, the three
    // capability flags, a maximum packet size, utf8mb4 and 23 zero bytes.
    let request = &seen.ssl_request;
    assert_eq!(request[..4], [32, 0, 0, 1]);
    let caps = u32::from_le_bytes(request[4..8].try_into().unwrap());
    for flag in [CLIENT_SSL, CLIENT_PROTOCOL_41, CLIENT_SECURE_CONNECTION] {
        assert_ne!(caps & flag, 0, "flag 0x{flag:04x} in 0x{caps:08x}");
    }
    assert_ne!(u32::from_le_bytes(request[8..12].try_into().unwrap()), 0);
    assert_eq!(request[12], 45);
    assert!(request[13..].iter().all(|&b| b == 0), "{request:?}");

    assert_eq!(fetched.negotiation, "MySQL SSLRequest (CLIENT_SSL)");
    assert_eq!(fetched.server_version.as_deref(), Some("8.0.36-fake"));
    assert_eq!(fetched.tls_version, "TLSv1.3");
    assert_eq!(fetched.chain, pki.chain());
    assert_eq!(
        chain_order_with_anchors(&fetched.chain, std::slice::from_ref(&pki.root)),
        ChainOrder::Ok
    );
    // No HandshakeResponse, no credentials: nothing after the handshake.
    assert!(seen.tls.after_handshake.is_empty());
}

#[tokio::test]
async fn greeting_without_client_ssl_is_tls_refused() {
    let (port, server) = fake_mysql_saying(greeting(MYSQL8_CAPABILITIES & !CLIENT_SSL)).await;

    let target = format!("mariadb://127.0.0.1:{port}").parse().unwrap();
    let err = fetch_chain(&target, &FetchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ScanError::TlsRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("CLIENT_SSL"), "{err}");
    assert!(
        server.await.unwrap().is_empty(),
        "the client sends nothing to a server without TLS"
    );
}

#[tokio::test]
async fn err_greeting_carries_the_servers_message() {
    let mut err_payload = vec![0xff];
    err_payload.extend_from_slice(&1130u16.to_le_bytes());
    err_payload
        .extend_from_slice(b"Host '10.1.2.3' is not allowed to connect to this MySQL server");
    let (port, server) = fake_mysql_saying(packet(0, &err_payload)).await;

    let target = format!("mysql://127.0.0.1:{port}").parse().unwrap();
    let err = fetch_chain(&target, &FetchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ScanError::ServerError { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("ERROR 1130: Host '10.1.2.3' is not allowed to connect"),
        "{err}"
    );
    assert!(server.await.unwrap().is_empty());
}

#[tokio::test]
async fn not_a_mysql_server() {
    let (port, server) = fake_mysql_saying(b"SSH-2.0-OpenSSH_9.2p1\r\n".to_vec()).await;

    let target = format!("mysql://127.0.0.1:{port}").parse().unwrap();
    let err = fetch_chain(&target, &FetchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ScanError::Protocol(_)), "{err:?}");
    assert!(err.to_string().contains("is this a MySQL server?"), "{err}");
    assert!(server.await.unwrap().is_empty());
}
