use std::time::Duration;

use intransit_scan::{fetch_chain, FetchOptions, ScanError, Stage, Target};
use tokio::net::TcpStream;

use crate::support::listen;

/// Far longer than the probes' one-second timeout; it only catches a probe
/// that ignores its timeout, and is no measurement.
const HANG_GUARD: Duration = Duration::from_secs(30);

#[tokio::test]
async fn silent_servers_time_out_at_the_stage_they_were_in() {
    let (listener, addr) = listen().await;
    // Accept every connection and keep it open without a word.
    let silent = tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });

    let opts = FetchOptions {
        timeout: Duration::from_secs(1),
        ..FetchOptions::default()
    };
    let probe = |scheme: &str| {
        let target: Target = format!("{scheme}://127.0.0.1:{}", addr.port())
            .parse()
            .unwrap();
        let opts = opts.clone();
        async move { fetch_chain(&target, &opts).await }
    };
    let (pg, my, tls) = tokio::time::timeout(HANG_GUARD, async {
        tokio::join!(probe("postgres"), probe("mysql"), probe("tls"))
    })
    .await
    .expect("the probes stop at their own timeout");

    for (result, stage) in [
        (pg, Stage::AwaitingSslAnswer),
        (my, Stage::AwaitingGreeting),
        (tls, Stage::TlsHandshake),
    ] {
        let err = result.unwrap_err();
        match &err {
            ScanError::Timeout {
                stage: got,
                timeout,
            } => {
                assert_eq!(*got, stage);
                assert_eq!(*timeout, Duration::from_secs(1));
            }
            other => panic!("expected a timeout {stage}, got {other:?}"),
        }
        assert!(err.to_string().contains("1s"), "{err}");
    }
    silent.abort();
}

#[tokio::test]
async fn refused_connection_names_the_address() {
    // A port that was just free: bind, note it, close.
    let (listener, addr) = listen().await;
    drop(listener);

    let target: Target = format!("postgres://127.0.0.1:{}", addr.port())
        .parse()
        .unwrap();
    let err = fetch_chain(&target, &FetchOptions::default())
        .await
        .unwrap_err();
    match &err {
        ScanError::Connect { address, error } => {
            assert_eq!(address, &addr.to_string());
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected a connection error, got {other:?}"),
    }
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
