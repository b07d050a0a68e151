//! Bad input and hard conditions: malformed and oversized packets, garbage,
//! stalled clients and an unreachable database (the connection limits are
//! in `limits`). Each is refused cleanly and leaves other connections
//! working.

use std::io::Read;

use crate::negotiation::{backend_messages, startup, SSL_REQUEST};
use crate::support::*;

fn proxy_query_works(proxy: &ProxyProcess, user: &DbUser) {
    let out = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(
        out.status.success(),
        "a good client failed: {}",
        stderr(&out)
    );
}

#[test]
fn malformed_packets_are_closed_and_others_keep_working() {
    let user = db_user("robust");
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    let oversized = {
        let mut m = 20_000u32.to_be_bytes().to_vec();
        m.extend_from_slice(&[0, 3, 0, 0]);
        m
    };
    let undersized = vec![0, 0, 0, 4, 0, 3, 0, 0];
    let protocol_2 = {
        let mut m = startup(&[("user", "alice")]);
        m[4..8].copy_from_slice(&[0, 2, 0, 0]);
        m
    };
    let no_terminator = {
        let mut m = startup(&[("user", "alice")]);
        let last = m.len() - 1;
        m[last] = b'x';
        m
    };
    let garbage = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n".to_vec();
    for (name, bytes) in [
        ("oversized", oversized),
        ("undersized", undersized),
        ("protocol 2", protocol_2),
        ("no terminator", no_terminator),
        ("garbage", garbage),
    ] {
        let mut tcp = tcp(proxy.port());
        write(&mut tcp, &bytes);
        let reply = read_to_close(&mut tcp);
        // Either closed silently or a FATAL error; never forwarded.
        for (tag, _) in backend_messages(&reply) {
            assert_eq!(tag, b'E', "{name}: unexpected reply {reply:?}");
        }
        proxy_query_works(&proxy, &user);
    }
    proxy.refusal("malformed");
    assert!(
        proxy
            .logs()
            .iter()
            .all(|v| !v["message"].as_str().unwrap_or("").contains("panick")),
        "the proxy panicked"
    );
}

#[test]
fn truncated_packets_and_stalled_clients_time_out() {
    let user = db_user("stall");
    let proxy = ProxyProcess::start(&listener_toml(
        &pg_upstream(),
        "",
        "handshake_timeout = \"1s\"",
    ));
    // Half an SSLRequest, then silence.
    let mut half = tcp(proxy.port());
    write(&mut half, &SSL_REQUEST[..4]);
    // A full SSLRequest, then no ClientHello.
    let mut stalled = tcp(proxy.port());
    write(&mut stalled, &SSL_REQUEST);
    let mut s = [0u8; 1];
    stalled.read_exact(&mut s).expect("S");
    // A slow client does not block a good one.
    proxy_query_works(&proxy, &user);
    // The event is the proxy closing each socket (end of stream); a read
    // that gives up instead (the socket's 15 s read timeout) is an error.
    let mut rest = Vec::new();
    half.read_to_end(&mut rest)
        .expect("the proxy closes a half-sent SSLRequest");
    assert!(rest.is_empty());
    stalled
        .read_to_end(&mut rest)
        .expect("the proxy closes a connection that never starts TLS");
    proxy.refusal("timeout");
}

#[test]
fn unreachable_database_gets_an_error_without_internal_addresses() {
    let proxy = ProxyProcess::start(&listener_toml(DEAD_UPSTREAM, "", ""));
    let out = psql(
        &conninfo(proxy.port(), "alice", "shop", &pki().trainer, ""),
        "SELECT 1",
        Some("x"),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("the database is unavailable"), "{err}");
    assert!(
        !err.contains(DEAD_UPSTREAM),
        "internal address leaked: {err}"
    );
    let line = proxy.refusal("upstream_unavailable");
    assert!(
        line["detail"]
            .as_str()
            .is_some_and(|d| d.contains(DEAD_UPSTREAM)),
        "{line}"
    );
}
