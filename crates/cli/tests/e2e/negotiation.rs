//! PostgreSQL negotiation paths, driven byte by byte with a raw socket and
//! rustls, and the cancel path with psql itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use crate::support::*;

pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
pub const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

/// A protocol 3.0 StartupMessage.
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = vec![0, 3, 0, 0];
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// Splits backend messages into (tag, body).
pub fn backend_messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if bytes.len() < 1 + len {
            break;
        }
        out.push((bytes[0], bytes[5..1 + len].to_vec()));
        bytes = &bytes[1 + len..];
    }
    out
}

/// The fields of an ErrorResponse body, by field type.
pub fn error_fields(body: &[u8]) -> Vec<(char, String)> {
    body.split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0] as char, String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

pub fn field(fields: &[(char, String)], t: char) -> String {
    fields
        .iter()
        .find(|(k, _)| *k == t)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Runs a TLS handshake over `tcp` and sends a StartupMessage for `user`;
/// returns the first backend bytes.
fn tls_startup(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    user: &str,
) -> std::io::Result<Vec<u8>> {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("client connection");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&startup(&[("user", user), ("database", user)]))?;
    tls.flush()?;
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

#[test]
fn ssl_request_is_answered_s_and_startup_is_forwarded() {
    let user = db_user("sslreq");
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    let mut tcp = tcp(proxy.port());
    write(&mut tcp, &SSL_REQUEST);
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).expect("answer to SSLRequest");
    assert_eq!(&answer, b"S");
    let reply = tls_startup(tcp, rustls_client(Some(&pki().trainer), &[]), &user.name)
        .expect("startup through TLS");
    // PostgreSQL asks for a SCRAM password: the StartupMessage reached it.
    let msgs = backend_messages(&reply);
    assert_eq!(msgs[0].0, b'R', "{msgs:?}");
    assert_eq!(
        &msgs[0].1[..4],
        &10u32.to_be_bytes(),
        "AuthenticationSASL expected"
    );
}

#[test]
fn gssenc_request_gets_n_then_ssl_request_is_honoured() {
    let user = db_user("gssenc");
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    let mut tcp = tcp(proxy.port());
    write(&mut tcp, &GSSENC_REQUEST);
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .expect("answer to GSSENCRequest");
    assert_eq!(&answer, b"N");
    write(&mut tcp, &SSL_REQUEST);
    tcp.read_exact(&mut answer).expect("answer to SSLRequest");
    assert_eq!(&answer, b"S");
    let reply = tls_startup(tcp, rustls_client(Some(&pki().trainer), &[]), &user.name)
        .expect("startup through TLS");
    assert_eq!(backend_messages(&reply)[0].0, b'R');
}

#[test]
fn direct_tls_requires_alpn_postgresql() {
    let user = db_user("direct");
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));

    let reply = tls_startup(
        tcp(proxy.port()),
        rustls_client(Some(&pki().trainer), &[b"postgresql"]),
        &user.name,
    )
    .expect("direct TLS with ALPN postgresql");
    assert_eq!(backend_messages(&reply)[0].0, b'R');

    let refused = tls_startup(
        tcp(proxy.port()),
        rustls_client(Some(&pki().trainer), &[]),
        &user.name,
    );
    assert!(refused.is_err(), "direct TLS without ALPN was accepted");
    proxy.refusal("alpn");

    let wrong = tls_startup(
        tcp(proxy.port()),
        rustls_client(Some(&pki().trainer), &[b"http/1.1"]),
        &user.name,
    );
    assert!(wrong.is_err(), "direct TLS with ALPN http/1.1 was accepted");
}

#[test]
fn plaintext_startup_gets_fatal_28000_and_nothing_reaches_upstream() {
    let sentinel = Sentinel::start();
    let proxy = ProxyProcess::start(&listener_toml(&sentinel.addr.to_string(), "", ""));
    let mut tcp = tcp(proxy.port());
    write(
        &mut tcp,
        &startup(&[("user", "alice"), ("database", "shop")]),
    );
    let reply = read_to_close(&mut tcp);
    let msgs = backend_messages(&reply);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0].0, b'E');
    let fields = error_fields(&msgs[0].1);
    assert_eq!(field(&fields, 'V'), "FATAL");
    assert_eq!(field(&fields, 'C'), "28000");
    assert!(
        field(&fields, 'M').contains("TLS is required"),
        "{fields:?}"
    );
    assert!(
        field(&fields, 'H').contains("sslmode=verify-full"),
        "{fields:?}"
    );
    let line = proxy.refusal("plaintext_refused");
    assert!(line["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert_eq!(sentinel.connections(), 0);
}

#[test]
fn psql_sslmode_disable_shows_the_tls_required_message() {
    let sentinel = Sentinel::start();
    let proxy = ProxyProcess::start(&listener_toml(&sentinel.addr.to_string(), "", ""));
    let out = psql(
        &format!(
            "host=127.0.0.1 port={} user=alice dbname=shop sslmode=disable",
            proxy.port()
        ),
        "SELECT 1",
        None,
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("FATAL:  TLS is required"), "{err}");
    assert!(err.contains("sslmode=verify-full"), "{err}");
    assert_eq!(sentinel.connections(), 0);
}

#[test]
fn bytes_pipelined_after_ssl_request_close_the_connection() {
    let sentinel = Sentinel::start();
    let proxy = ProxyProcess::start(&listener_toml(&sentinel.addr.to_string(), "", ""));
    let mut tcp = tcp(proxy.port());
    let mut bytes = SSL_REQUEST.to_vec();
    bytes.extend_from_slice(&startup(&[("user", "mallory")]));
    write(&mut tcp, &bytes);
    let reply = read_to_close(&mut tcp);
    assert!(reply.is_empty(), "proxy answered {reply:?}");
    proxy.refusal("pipelined_before_tls");
    assert_eq!(sentinel.connections(), 0);
    assert_eq!(sentinel.bytes(), 0);
}

#[test]
fn psql_ctrl_c_cancels_a_query_through_the_proxy() {
    let user = db_user("cancel");
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    cancel_a_running_query(
        &proxy,
        pg(),
        &conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, ""),
        &user.name,
        &user.password,
    );
}
