//! `protocol = "mysql"` listeners in front of a real MariaDB, driven by the
//! `mariadb` client with full verification and client certificates.

use std::ffi::OsString;

use intransit_pki::CertificatePaths;
use intransit_testkit::{run_mariadb, MariaDbAuth, MariaDbServer};

use crate::support::*;

fn mariadb() -> &'static MariaDbServer {
    MariaDbServer::shared().expect("starting the test MariaDB")
}

fn mysql_listener(extra: &str) -> String {
    let base = listener_toml(&mariadb().addr(), "", "")
        .replace("name = \"pg\"", "name = \"maria\"\nprotocol = \"mysql\"");
    format!("{base}{extra}")
}

fn args(port: u16, user: &str, cert: Option<&CertificatePaths>, tls: bool) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-P".into(),
        port.to_string().into(),
        "-u".into(),
        user.into(),
    ];
    if tls {
        a.push("--ssl".into());
        a.push("--ssl-verify-server-cert".into());
        a.push(format!("--ssl-ca={}", pki().ca.display()).into());
        if let Some(c) = cert {
            a.push(format!("--ssl-cert={}", c.cert.display()).into());
            a.push(format!("--ssl-key={}", c.key.display()).into());
        }
    } else {
        a.push("--skip-ssl".into());
    }
    a
}

fn user(prefix: &str, auth: MariaDbAuth) -> (String, String) {
    let name = intransit_testkit::unique_name(prefix);
    let password = format!("pw-{name}");
    mariadb()
        .create_user(&name, &password, auth)
        .expect("creating a MariaDB user");
    (name, password)
}

#[test]
fn mariadb_client_logs_in_through_the_proxy_with_both_password_plugins() {
    let proxy = ProxyProcess::start(&mysql_listener(""));
    let mut plugins = vec![("native", MariaDbAuth::NativePassword)];
    if mariadb().ed25519_available() {
        plugins.push(("ed", MariaDbAuth::Ed25519));
    }
    for (prefix, auth) in plugins {
        let (name, password) = user(prefix, auth);
        let out = run_mariadb(
            &args(proxy.port(), &name, Some(&pki().trainer), true),
            Some(&password),
            "SELECT CURRENT_USER(), @@ssl_cipher IS NULL OR @@ssl_cipher = ''",
        )
        .unwrap_or_else(|e| panic!("{prefix}: {e:#}\n{:#?}", proxy.logs()));
        assert!(out.starts_with(&format!("{name}@")), "{prefix}: {out}");
    }
    let line = proxy.wait_for_log(std::time::Duration::from_secs(5), |v| {
        v["message"] == "connection established"
    });
    assert_eq!(line["protocol"], "mysql");
    assert_eq!(line["tls_version"], "TLSv1_3");
    assert_eq!(line["identity"], "uri:spiffe://prod/trainer");
}

#[test]
fn plaintext_missing_certificates_and_unmapped_users_are_refused() {
    let (name, password) = user("refused", MariaDbAuth::NativePassword);
    let rules =
        format!("[[listener.db_users]]\nidentity = \"cn:reporting\"\nusers = [\"{name}\"]\n");
    let proxy = ProxyProcess::start(&format!("{ADMIN_ON}{}", mysql_listener(&rules)));

    let plain = run_mariadb(
        &args(proxy.port(), &name, None, false),
        Some(&password),
        "SELECT 1",
    )
    .expect_err("a plaintext login was accepted");
    let text = format!("{plain:#}");
    assert!(text.contains("3159"), "{text}");
    assert!(text.contains("insecure transport"), "{text}");
    proxy.refusal("plaintext_refused");

    let no_cert = run_mariadb(
        &args(proxy.port(), &name, None, true),
        Some(&password),
        "SELECT 1",
    );
    assert!(
        no_cert.is_err(),
        "a login without a client certificate was accepted"
    );
    proxy.refusal("no_client_cert");

    let unmapped = run_mariadb(
        &args(proxy.port(), &name, Some(&pki().trainer), true),
        Some(&password),
        "SELECT 1",
    )
    .expect_err("an unmapped user was accepted");
    let text = format!("{unmapped:#}");
    assert!(text.contains("1045"), "{text}");
    assert!(text.contains(&name), "{text}");
    proxy.refusal("user_denied");

    let mapped = run_mariadb(
        &args(proxy.port(), &name, Some(&pki().reporting), true),
        Some(&password),
        "SELECT 1",
    )
    .expect("the mapped identity logs in");
    assert_eq!(mapped, "1");

    // Each outcome is counted once, with the protocol; the user refusal
    // happened inside TLS, so it carries the TLS version and route.
    let m = proxy.metrics();
    let handshakes = "intransit_handshakes_total";
    for (outcome, tls_version) in [
        ("ok", "TLSv1_3"),
        ("plaintext_refused", "none"),
        ("no_client_cert", "none"),
        ("user_denied", "TLSv1_3"),
    ] {
        assert_eq!(
            m.sum(
                handshakes,
                &[
                    ("listener", "maria"),
                    ("protocol", "mysql"),
                    ("outcome", outcome),
                    ("tls_version", tls_version)
                ]
            ),
            1.0,
            "{outcome}:\n{}",
            m.text
        );
    }
    assert_eq!(
        m.sum(
            handshakes,
            &[("outcome", "user_denied"), ("route", "default")]
        ),
        1.0
    );
}

#[test]
fn openssl_starttls_mysql_sees_tls13() {
    let proxy = ProxyProcess::start(&mysql_listener(""));
    let openssl = intransit_testkit::require_tool("openssl", "openssl").expect("openssl");
    let p = pki();
    let out = std::process::Command::new(openssl)
        .args(["s_client", "-brief", "-starttls", "mysql", "-connect"])
        .arg(format!("127.0.0.1:{}", proxy.port()))
        .args(["-verify_return_error", "-CAfile"])
        .arg(&p.ca)
        .arg("-cert")
        .arg(&p.trainer.cert)
        .arg("-key")
        .arg(&p.trainer.key)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(text.contains("Protocol version: TLSv1.3"), "{text}");
}

#[test]
fn garbage_after_the_greeting_is_closed_cleanly() {
    use std::io::Read;
    // A truncated packet waits for the handshake timeout; keep it short.
    let config = listener_toml(&mariadb().addr(), "", "handshake_timeout = \"2s\"")
        .replace("name = \"pg\"", "name = \"maria\"\nprotocol = \"mysql\"");
    let proxy = ProxyProcess::start(&config);
    for bytes in [
        b"\xff\xff\xff\x01garbage-that-claims-16MiB".to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![5, 0, 0, 1, 0x85],
    ] {
        let mut tcp = tcp(proxy.port());
        // The greeting comes first: 4-byte header, protocol version 10.
        let mut header = [0u8; 5];
        tcp.read_exact(&mut header).expect("greeting");
        assert_eq!(header[4], 10, "not a HandshakeV10 greeting");
        write(&mut tcp, &bytes);
        let _ = read_to_close(&mut tcp);
    }
    proxy.refusal("malformed");
    let (name, password) = user("after", MariaDbAuth::NativePassword);
    let out = run_mariadb(
        &args(proxy.port(), &name, Some(&pki().trainer), true),
        Some(&password),
        "SELECT 1",
    )
    .expect("a good client still logs in");
    assert_eq!(out, "1");
}

#[test]
fn up_with_protocol_mysql_prints_a_working_mariadb_command() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let (name, password) = user("up", MariaDbAuth::NativePassword);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--protocol",
            "mysql",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir.path())
        .args(["--upstream", &mariadb().addr(), "--user", &name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("intransit up");
    let out = child.stdout.take().expect("stdout");
    let command = BufReader::new(out)
        .lines()
        .map(|l| l.expect("line"))
        .find(|l| l.trim_start().starts_with("mariadb "))
        .expect("mariadb line in the banner");
    // The printed command prompts for the password (-p); the test gives it
    // through the environment instead.
    let command = command.trim().replace(" -p ", " ");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{command} --batch --skip-column-names -e 'SELECT 40 + 2'"
        ))
        .env("MYSQL_PWD", &password)
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert_eq!(stdout(&out), "42", "{}", stderr(&out));
    signal(child.id(), "TERM");
    assert!(child.wait().expect("wait").success());
}

#[test]
fn mysql_async_client_library_queries_through_the_proxy() {
    use mysql_async::prelude::Queryable;
    let (name, password) = user("rust", MariaDbAuth::NativePassword);
    let proxy = ProxyProcess::start(&mysql_listener(""));
    let p = pki();
    // mysql_async's rustls backend reads client keys only as PKCS#1 RSA
    // ("RSA PRIVATE KEY"), so this client gets an RSA certificate and
    // openssl converts its key.
    let dir = tempfile::tempdir().expect("temp dir");
    let issued = p
        .authority
        .issue(&intransit_pki::IssueRequest {
            kind: intransit_pki::CertificateKind::Client,
            common_name: "rust-client".into(),
            dns_names: vec![],
            ip_addresses: vec![],
            uris: vec![],
            key: intransit_pki::KeyAlgorithm::Rsa2048,
            validity: intransit_pki::Validity::days_from_now(2),
        })
        .expect("RSA client certificate");
    let paths = issued.write_to(&dir.path().join("rsa")).expect("write");
    let pkcs1 = dir.path().join("key-pkcs1.pem");
    let openssl = intransit_testkit::require_tool("openssl", "openssl").expect("openssl");
    let status = std::process::Command::new(openssl)
        .args(["rsa", "-traditional", "-in"])
        .arg(&paths.key)
        .arg("-out")
        .arg(&pkcs1)
        .status()
        .expect("openssl rsa");
    assert!(status.success());
    let ssl = mysql_async::SslOpts::default()
        .with_root_certs(vec![p.ca.clone().into()])
        .with_client_identity(Some(mysql_async::ClientIdentity::new(
            paths.cert.clone().into(),
            pkcs1.into(),
        )));
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("localhost")
        .tcp_port(proxy.port())
        .user(Some(name))
        .pass(Some(password))
        .ssl_opts(Some(ssl))
        .prefer_socket(false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let answer: Option<i64> = rt.block_on(async {
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .expect("mysql_async connects through the proxy");
        let v = conn.query_first("SELECT 6 * 7").await.expect("query");
        conn.disconnect().await.expect("disconnect");
        v
    });
    assert_eq!(answer, Some(42));
}

#[test]
fn a_client_certificate_outside_the_allow_list_is_refused() {
    let (name, password) = user("allow", MariaDbAuth::NativePassword);
    let config = listener_toml(&mariadb().addr(), "allow = [\"cn:reporting\"]", "")
        .replace("name = \"pg\"", "name = \"maria\"\nprotocol = \"mysql\"");
    let proxy = ProxyProcess::start(&config);
    let denied = run_mariadb(
        &args(proxy.port(), &name, Some(&pki().trainer), true),
        Some(&password),
        "SELECT 1",
    );
    assert!(
        denied.is_err(),
        "an identity outside the allow-list logged in"
    );
    let line = proxy.refusal("identity_denied");
    assert_eq!(line["identity"], "uri:spiffe://prod/trainer");
    let allowed = run_mariadb(
        &args(proxy.port(), &name, Some(&pki().reporting), true),
        Some(&password),
        "SELECT 1",
    )
    .expect("the allowed identity logs in");
    assert_eq!(allowed, "1");
}

#[test]
fn unreachable_database_and_full_listener_get_mysql_errors() {
    let (name, password) = user("limits", MariaDbAuth::NativePassword);
    let dead = listener_toml(DEAD_UPSTREAM, "", "")
        .replace("name = \"pg\"", "name = \"maria\"\nprotocol = \"mysql\"");
    let proxy = ProxyProcess::start(&dead);
    let err = run_mariadb(
        &args(proxy.port(), &name, Some(&pki().trainer), true),
        Some(&password),
        "SELECT 1",
    )
    .expect_err("a login through a proxy without a database succeeded");
    let text = format!("{err:#}");
    assert!(text.contains("the database is unavailable"), "{text}");
    assert!(
        !text.contains(DEAD_UPSTREAM),
        "internal address leaked: {text}"
    );
    proxy.refusal("upstream_unavailable");

    let full = listener_toml(
        &mariadb().addr(),
        "",
        "max_connections = 1\nhandshake_timeout = \"30s\"",
    )
    .replace("name = \"pg\"", "name = \"maria\"\nprotocol = \"mysql\"");
    let proxy = ProxyProcess::start(&full);
    // A socket that says nothing takes no slot; a verified client in a
    // long query holds the only one.
    let _idle = tcp(proxy.port());
    let held = {
        let (args, password) = (
            args(proxy.port(), &name, Some(&pki().trainer), true),
            password.clone(),
        );
        std::thread::spawn(move || run_mariadb(&args, Some(&password), "SELECT SLEEP(60)"))
    };
    proxy.wait_for_log(std::time::Duration::from_secs(15), |v| {
        v["message"] == "connection established"
    });
    let err = run_mariadb(
        &args(proxy.port(), &name, Some(&pki().trainer), true),
        Some(&password),
        "SELECT 1",
    )
    .expect_err("a login over the connection limit succeeded");
    let text = format!("{err:#}");
    assert!(
        text.contains("1040") && text.contains("Too many connections"),
        "{text}"
    );
    proxy.refusal("too_many_connections");
    // Stopping the proxy ends the held session.
    drop(proxy);
    let _ = held.join();
}
