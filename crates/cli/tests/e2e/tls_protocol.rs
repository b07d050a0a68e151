//! `protocol = "tls"` listeners in front of a real Redis, driven by
//! redis-cli with TLS and client certificates, and by openssl s_client.

use std::process::{Command, Output, Stdio};

use intransit_pki::CertificatePaths;
use intransit_testkit::RedisServer;

use crate::support::*;

fn redis() -> &'static RedisServer {
    RedisServer::shared().expect("starting the test Redis")
}

fn tls_listener(upstream: &str) -> String {
    listener_toml(upstream, "", "").replace("name = \"pg\"", "name = \"redis\"\nprotocol = \"tls\"")
}

pub(crate) fn redis_cli(
    port: u16,
    cert: Option<&CertificatePaths>,
    tls: bool,
    args: &[&str],
) -> Output {
    let cli = intransit_testkit::require_tool("redis-cli", "redis-tools").expect("redis-cli");
    let mut cmd = Command::new(cli);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if tls {
        cmd.args(["--tls", "--sni", "localhost", "--cacert"])
            .arg(&pki().ca);
        if let Some(c) = cert {
            cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
        }
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli")
}

#[test]
fn redis_cli_with_tls_and_a_client_certificate_reaches_redis() {
    let proxy = ProxyProcess::start(&tls_listener(&redis().addr()));
    let key = intransit_testkit::unique_name("k");
    let out = redis_cli(
        proxy.port(),
        Some(&pki().trainer),
        true,
        &["SET", &key, "v42"],
    );
    assert_eq!(stdout(&out), "OK", "{}", stderr(&out));
    let out = redis_cli(proxy.port(), Some(&pki().trainer), true, &["GET", &key]);
    assert_eq!(stdout(&out), "v42", "{}", stderr(&out));
    let line = proxy.wait_for_log(std::time::Duration::from_secs(5), |v| {
        v["message"] == "connection established"
    });
    assert_eq!(line["tls_version"], "TLSv1_3");
    assert_eq!(line["identity"], "uri:spiffe://prod/trainer");
    assert_eq!(line["protocol"], "tls");
    assert_eq!(line["route"], "default");
}

#[test]
fn redis_clients_without_tls_or_certificate_are_refused() {
    let sentinel = Sentinel::start();
    let proxy = ProxyProcess::start(&tls_listener(&sentinel.addr.to_string()));

    let plain = redis_cli(proxy.port(), None, false, &["PING"]);
    assert_ne!(stdout(&plain), "PONG");
    proxy.refusal("plaintext_refused");

    let no_cert = redis_cli(proxy.port(), None, true, &["PING"]);
    assert_ne!(stdout(&no_cert), "PONG");
    proxy.refusal("no_client_cert");

    let untrusted = redis_cli(proxy.port(), Some(&pki().stranger), true, &["PING"]);
    assert_ne!(stdout(&untrusted), "PONG");
    proxy.refusal("untrusted");

    assert_eq!(
        sentinel.connections(),
        0,
        "a refused client reached the upstream"
    );
}

#[test]
fn openssl_s_client_sees_tls13_on_a_tls_listener() {
    let proxy = ProxyProcess::start(&tls_listener(&redis().addr()));
    let openssl = intransit_testkit::require_tool("openssl", "openssl").expect("openssl");
    let p = pki();
    let out = Command::new(openssl)
        .args(["s_client", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{}", proxy.port()))
        .args([
            "-servername",
            "localhost",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(&p.ca)
        .arg("-cert")
        .arg(&p.trainer.cert)
        .arg("-key")
        .arg(&p.trainer.key)
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(text.contains("Protocol version: TLSv1.3"), "{text}");
    assert!(text.contains("Verification: OK"), "{text}");
}

#[test]
fn up_with_protocol_tls_prints_a_working_redis_cli_command() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--protocol",
            "tls",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir.path())
        .arg("--upstream")
        .arg(redis().addr())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("intransit up");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let command = lines
        .by_ref()
        .map(|l| l.expect("line"))
        .find(|l| l.trim_start().starts_with("redis-cli "))
        .expect("redis-cli line in the banner");
    let out = Command::new("sh")
        .arg("-c")
        .arg(command.trim())
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert_eq!(stdout(&out), "PONG", "{}", stderr(&out));
    signal(child.id(), "TERM");
    assert!(child.wait().expect("wait").success());

    // Without --upstream there is nothing sensible to default to.
    let out = Command::new(BIN)
        .args(["up", "--protocol", "tls", "--state-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--upstream"), "{}", stderr(&out));
}

#[test]
fn an_unreachable_upstream_closes_the_session_and_is_logged() {
    // Plain TLS has no protocol-neutral error message: the session closes
    // after the handshake and the log says why.
    let proxy = ProxyProcess::start(&tls_listener(DEAD_UPSTREAM));
    let out = redis_cli(proxy.port(), Some(&pki().trainer), true, &["PING"]);
    assert_ne!(stdout(&out), "PONG");
    let line = proxy.refusal("upstream_unavailable");
    assert!(
        line["detail"]
            .as_str()
            .is_some_and(|d| d.contains(DEAD_UPSTREAM)),
        "{line}"
    );
}

#[test]
fn sessions_that_end_without_close_notify_are_normal_closes_with_their_bytes_counted() {
    // redis-cli, like most clients, closes its TCP connection after the
    // reply without sending TLS close_notify.
    let proxy = ProxyProcess::start(&format!("{ADMIN_ON}{}", tls_listener(&redis().addr())));
    let key = intransit_testkit::unique_name("bytes");
    let value = "v".repeat(3000);
    let out = redis_cli(
        proxy.port(),
        Some(&pki().trainer),
        true,
        &["SET", &key, &value],
    );
    assert_eq!(stdout(&out), "OK", "{}", stderr(&out));
    let out = redis_cli(proxy.port(), Some(&pki().trainer), true, &["GET", &key]);
    assert_eq!(stdout(&out), value, "{}", stderr(&out));

    let closed = |v: &serde_json::Value| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("connection closed"))
    };
    // Each connection's last lines (closed, then its audit event) come
    // once both legs have ended.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let audited = |v: &serde_json::Value| v["message"] == "connection audit";
    while proxy.logs().iter().filter(|v| audited(v)).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{:#?}", proxy.logs());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let lines: Vec<_> = proxy.logs().into_iter().filter(|v| closed(v)).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    for line in &lines {
        assert_eq!(line["message"], "connection closed", "{line:#}");
    }
    let events: Vec<_> = proxy.logs().into_iter().filter(|v| audited(v)).collect();
    assert_eq!(events.len(), 2, "{events:#?}");
    // SET carries the value up, GET brings it back.
    assert!(
        events[0]["bytes_from_client"].as_u64().unwrap_or(0) > 3000,
        "{:#}",
        events[0]
    );
    assert!(
        events[1]["bytes_to_client"].as_u64().unwrap_or(0) > 3000,
        "{:#}",
        events[1]
    );
    let metrics = proxy.metrics();
    let up = metrics.sum(
        "intransit_bytes_total",
        &[("listener", "redis"), ("direction", "from_client")],
    );
    let down = metrics.sum(
        "intransit_bytes_total",
        &[("listener", "redis"), ("direction", "to_client")],
    );
    assert!(
        up > 3000.0 && down > 3000.0,
        "from_client {up}, to_client {down}"
    );
}
