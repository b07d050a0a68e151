use intransit_scan::{
    chain_order, chain_order_with_anchors, fetch_chain, ChainOrder, FetchOptions, ScanError, Target,
};

use crate::support::{server_config, tls_server_once, Hierarchy, TLS13_AND_TLS12};

fn tls_target(host: &str, port: u16) -> Target {
    format!("tls://{host}:{port}").parse().unwrap()
}

#[tokio::test]
async fn two_certificate_chain_as_sent() {
    let pki = Hierarchy::new();
    let config = server_config(pki.chain(), pki.key(), TLS13_AND_TLS12, &[]);
    let (addr, server) = tls_server_once(config).await;

    let target = tls_target("127.0.0.1", addr.port());
    let fetched = fetch_chain(&target, &FetchOptions::default())
        .await
        .unwrap();
    let seen = server.await.unwrap();

    assert_eq!(fetched.target, target);
    assert_eq!(fetched.peer, addr);
    assert_eq!(fetched.negotiation, "TLS from the first byte");
    assert_eq!(fetched.chain, pki.chain());
    assert_eq!(fetched.tls_version, "TLSv1.3");
    assert!(
        fetched.cipher_suite.starts_with("TLS13_"),
        "{}",
        fetched.cipher_suite
    );
    // rustls servers prefer the post-quantum hybrid when the client offers it.
    assert_eq!(fetched.key_exchange.as_deref(), Some("X25519MLKEM768"));
    assert_eq!(fetched.alpn, None);
    assert!(!fetched.client_certificate_requested);
    assert_eq!(fetched.server_version, None);

    // An IP address is not sent as SNI, and nothing but the handshake and
    // close_notify crossed the connection.
    assert_eq!(fetched.server_name, None);
    assert_eq!(seen.sni, None);
    assert!(
        seen.after_handshake.is_empty(),
        "{:?}",
        seen.after_handshake
    );

    // The root is not sent, as is usual: in order once the root is known.
    assert!(matches!(
        chain_order(&fetched.chain),
        ChainOrder::Incomplete { .. }
    ));
    assert_eq!(
        chain_order_with_anchors(&fetched.chain, std::slice::from_ref(&pki.root)),
        ChainOrder::Ok
    );
}

#[tokio::test]
async fn out_of_order_chain_is_reported() {
    let pki = Hierarchy::new();
    let sent = vec![pki.leaf.clone(), pki.root.clone(), pki.intermediate.clone()];
    let config = server_config(sent.clone(), pki.key(), TLS13_AND_TLS12, &[]);
    let (addr, server) = tls_server_once(config).await;

    let fetched = fetch_chain(
        &tls_target("127.0.0.1", addr.port()),
        &FetchOptions::default(),
    )
    .await
    .unwrap();
    server.await.unwrap();

    assert_eq!(fetched.chain, sent, "the chain is recorded as sent");
    assert_eq!(
        chain_order(&fetched.chain),
        ChainOrder::OutOfOrder {
            position: 0,
            issuer: "CN=scan test intermediate".to_owned(),
            issuer_at: Some(2),
        }
    );
}

#[tokio::test]
async fn host_name_is_sent_as_sni_and_alpn_is_offered() {
    let pki = Hierarchy::new();
    let config = server_config(pki.chain(), pki.key(), TLS13_AND_TLS12, &[b"postgresql"]);
    let (addr, server) = tls_server_once(config).await;

    let opts = FetchOptions {
        alpn: vec![b"postgresql".to_vec()],
        ..FetchOptions::default()
    };
    let fetched = fetch_chain(&tls_target("localhost", addr.port()), &opts)
        .await
        .unwrap();
    let seen = server.await.unwrap();

    assert_eq!(seen.sni.as_deref(), Some("localhost"));
    assert_eq!(fetched.server_name.as_deref(), Some("localhost"));
    assert_eq!(seen.alpn_offered, vec![b"postgresql".to_vec()]);
    assert_eq!(fetched.alpn.as_deref(), Some("postgresql"));
}

#[tokio::test]
async fn explicit_server_name_overrides_the_host() {
    let pki = Hierarchy::new();
    let config = server_config(pki.chain(), pki.key(), TLS13_AND_TLS12, &[]);
    let (addr, server) = tls_server_once(config).await;

    let opts = FetchOptions {
        server_name: Some("orders.db.internal".to_owned()),
        ..FetchOptions::default()
    };
    let fetched = fetch_chain(&tls_target("127.0.0.1", addr.port()), &opts)
        .await
        .unwrap();
    let seen = server.await.unwrap();

    assert_eq!(seen.sni.as_deref(), Some("orders.db.internal"));
    assert_eq!(fetched.server_name.as_deref(), Some("orders.db.internal"));
}

#[tokio::test]
async fn invalid_server_name_is_refused_before_connecting() {
    let opts = FetchOptions {
        server_name: Some("not a name".to_owned()),
        ..FetchOptions::default()
    };
    // Port 9 on loopback: nothing is dialled, so nothing needs to listen.
    let err = fetch_chain(&tls_target("127.0.0.1", 9), &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ScanError::InvalidServerName(name) if name == "not a name"),
        "{err:?}"
    );
}

#[tokio::test]
async fn tls12_only_server_is_inspected() {
    let pki = Hierarchy::new();
    let config = server_config(pki.chain(), pki.key(), &[&rustls::version::TLS12], &[]);
    let (addr, server) = tls_server_once(config).await;

    let fetched = fetch_chain(
        &tls_target("127.0.0.1", addr.port()),
        &FetchOptions::default(),
    )
    .await
    .unwrap();
    let seen = server.await.unwrap();

    assert_eq!(fetched.tls_version, "TLSv1.2");
    assert!(
        fetched.cipher_suite.starts_with("TLS_ECDHE_ECDSA_WITH_"),
        "{}",
        fetched.cipher_suite
    );
    assert!(fetched.key_exchange.is_some());
    assert_eq!(fetched.chain, pki.chain());
    assert!(seen.after_handshake.is_empty());
}
