//! `protocol = "mysql"` listeners in front of a real MariaDB, driven by the
//! `mariadb` client with full verification and client certificates.

use std::ffi::OsString;

use intransit_pki::CertificatePaths;
use std::time::Duration;

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

/// A client certificate mysql_async can present (CN `rust-client`):
/// its rustls backend reads client keys only as PKCS#1 RSA ("RSA PRIVATE
/// KEY"), so the certificate is RSA and openssl converts its key.
struct RsaClient {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    pkcs1_key: std::path::PathBuf,
}

fn rsa_client() -> RsaClient {
    let p = pki();
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
    let pkcs1_key = dir.path().join("key-pkcs1.pem");
    let openssl = intransit_testkit::require_tool("openssl", "openssl").expect("openssl");
    let status = std::process::Command::new(openssl)
        .args(["rsa", "-traditional", "-in"])
        .arg(&paths.key)
        .arg("-out")
        .arg(&pkcs1_key)
        .status()
        .expect("openssl rsa");
    assert!(status.success());
    RsaClient {
        _dir: dir,
        cert: paths.cert,
        pkcs1_key,
    }
}

fn mysql_async_opts(
    port: u16,
    client: &RsaClient,
    user: &str,
    password: &str,
) -> mysql_async::Opts {
    let ssl = mysql_async::SslOpts::default()
        .with_root_certs(vec![pki().ca.clone().into()])
        .with_client_identity(Some(mysql_async::ClientIdentity::new(
            client.cert.clone().into(),
            client.pkcs1_key.clone().into(),
        )));
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("localhost")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .ssl_opts(Some(ssl))
        .prefer_socket(false)
        .into()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn mysql_async_client_library_queries_through_the_proxy_with_both_password_plugins() {
    use mysql_async::prelude::Queryable;
    let proxy = ProxyProcess::start(&mysql_listener(""));
    let client = rsa_client();
    for (prefix, auth) in [
        ("rust", MariaDbAuth::NativePassword),
        ("rust-ed", MariaDbAuth::Ed25519),
    ] {
        let (name, password) = user(prefix, auth);
        let opts = mysql_async_opts(proxy.port(), &client, &name, &password);
        let answer: Option<String> = runtime().block_on(async {
            let mut conn = mysql_async::Conn::new(opts).await.unwrap_or_else(|e| {
                panic!("{prefix}: mysql_async connects through the proxy: {e}")
            });
            let v = conn
                .query_first("SELECT CURRENT_USER()")
                .await
                .expect("query");
            conn.disconnect().await.expect("disconnect");
            v
        });
        assert!(
            answer
                .as_deref()
                .is_some_and(|a| a.starts_with(&format!("{name}@"))),
            "{prefix}: {answer:?}"
        );
    }
}

#[test]
fn change_user_is_held_to_db_users_and_audited() {
    use mysql_async::prelude::Queryable;
    let (alice, alice_pw) = user("alice", MariaDbAuth::NativePassword);
    let (bob, bob_pw) = user("bob", MariaDbAuth::Ed25519);
    let (admin, admin_pw) = user("admin", MariaDbAuth::NativePassword);
    let rules = format!(
        "[[listener.db_users]]\nidentity = \"cn:rust-client\"\nusers = [\"{alice}\", \"{bob}\"]\n"
    );
    let proxy = ProxyProcess::start(&mysql_listener(&rules));
    let client = rsa_client();
    let opts = mysql_async_opts(proxy.port(), &client, &alice, &alice_pw);
    let (after_allowed, refused) = runtime().block_on(async {
        let mut conn = mysql_async::Conn::new(opts).await.expect("alice logs in");
        // A user the identity may use: let through, and the session is
        // really bob's.
        conn.change_user(
            mysql_async::ChangeUserOpts::default()
                .with_user(Some(bob.clone()))
                .with_pass(Some(bob_pw.clone())),
        )
        .await
        .expect("changing to an allowed user");
        let now: Option<String> = conn
            .query_first("SELECT CURRENT_USER()")
            .await
            .expect("query");
        // One it may not: refused although the password is right.
        let refused = conn
            .change_user(
                mysql_async::ChangeUserOpts::default()
                    .with_user(Some(admin.clone()))
                    .with_pass(Some(admin_pw.clone())),
            )
            .await
            .expect_err("changing to admin was let through");
        (now, refused.to_string())
    });
    assert!(
        after_allowed
            .as_deref()
            .is_some_and(|u| u.starts_with(&format!("{bob}@"))),
        "{after_allowed:?}"
    );
    assert!(refused.contains("1045"), "{refused}");
    assert!(refused.contains(&admin), "{refused}");

    let changed = proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection audit" && v["outcome"] == "user_changed"
    });
    assert_eq!(changed["db_user"], bob.as_str());
    let denied = proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection audit" && v["outcome"] == "user_denied"
    });
    assert_eq!(denied["db_user"], admin.as_str());
    let detail = denied["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("{bob:?} to {admin:?}")),
        "{detail}"
    );
    let line = proxy.refusal("user_denied");
    assert_eq!(line["identity"], "cn:rust-client");
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

/// Runs PyMySQL (with PyNaCl for ed25519) through the proxy with full
/// verification and a client certificate, and returns what
/// `SELECT CURRENT_USER()` answered.
fn pymysql(port: u16, user: &str, password: &str, cert: &CertificatePaths) -> String {
    const SCRIPT: &str = r#"
import sys, pymysql
port, user, password, ca, cert, key = sys.argv[1:]
conn = pymysql.connect(host="localhost", port=int(port), user=user, password=password,
                       ssl={"ca": ca, "cert": cert, "key": key, "check_hostname": True})
with conn.cursor() as cur:
    cur.execute("SELECT CURRENT_USER()")
    print(cur.fetchone()[0])
conn.close()
"#;
    let python = intransit_testkit::require_tool("python3", "python3").expect("python3");
    let probe = std::process::Command::new(&python)
        .args(["-c", "import pymysql, nacl"])
        .output()
        .expect("python3");
    assert!(
        probe.status.success(),
        "PyMySQL with ed25519 support is missing: install it with `python3 -m pip install 'PyMySQL[ed25519]'` (or run ./scripts/test, which does)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(port.to_string())
        .args([user, password])
        .arg(&pki().ca)
        .arg(&cert.cert)
        .arg(&cert.key)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "PyMySQL through the proxy as {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn pymysql_logs_in_through_the_proxy_with_both_password_plugins() {
    let proxy = ProxyProcess::start(&mysql_listener(""));
    for (prefix, auth) in [
        ("py", MariaDbAuth::NativePassword),
        ("py-ed", MariaDbAuth::Ed25519),
    ] {
        let (name, password) = user(prefix, auth);
        let current = pymysql(proxy.port(), &name, &password, &pki().trainer);
        assert!(
            current.starts_with(&format!("{name}@")),
            "{prefix}: {current}"
        );
    }
}

/// The server's count of connection attempts since it started.
fn connection_attempts(server: &MariaDbServer) -> u64 {
    let out = server
        .root_sql("SHOW GLOBAL STATUS LIKE 'Connections'")
        .expect("status");
    out.split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected status output: {out}"))
}

#[test]
fn unverified_clients_never_reach_the_database_and_learn_nothing_of_it() {
    use std::io::Read;
    // A server of its own, so its connection counter counts this test
    // only, with room for fewer connections than the sockets held below.
    let server = MariaDbServer::start(intransit_testkit::MariaDbOptions {
        extra_conf: vec!["max_connections = 20".into()],
        ..Default::default()
    })
    .expect("starting MariaDB");
    let real_version = server.root_sql("SELECT VERSION()").expect("version");
    let name = intransit_testkit::unique_name("verified");
    let password = format!("pw-{name}");
    server
        .create_user(&name, &password, MariaDbAuth::NativePassword)
        .expect("user");
    let (other, other_pw) = (format!("{name}x"), "pw-other".to_owned());
    server
        .create_user(&other, &other_pw, MariaDbAuth::NativePassword)
        .expect("user");
    let rules = format!(
        "[[listener.db_users]]\nidentity = \"uri:spiffe://prod/trainer\"\nusers = [\"{name}\"]\n"
    );
    let config = listener_toml(&server.addr(), "", "mysql_server_version = \"8.0.99-test\"")
        .replace("name = \"pg\"", "name = \"maria\"\nprotocol = \"mysql\"")
        + &rules;
    let proxy = ProxyProcess::start(&config);
    let before = connection_attempts(&server);

    // More sockets than the server has connections, each reading the
    // greeting and going quiet.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut s = tcp(proxy.port());
        let mut header = [0u8; 4];
        s.read_exact(&mut header).expect("greeting header");
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).expect("greeting");
        let greeting = intransit_wire::mysql::HandshakeV10::parse(&payload).expect("a greeting");
        assert_eq!(greeting.server_version_lossy(), "8.0.99-test");
        assert_eq!(greeting.connection_id, 0);
        assert!(
            !String::from_utf8_lossy(&payload).contains(real_version.as_str()),
            "the real version leaked"
        );
        held.push(s);
    }
    // Plaintext, no certificate, and a certificate whose identity may not
    // log in as the user asked for.
    let port = proxy.port();
    run_mariadb(&args(port, &name, None, false), Some(&password), "SELECT 1")
        .expect_err("plaintext login accepted");
    run_mariadb(&args(port, &name, None, true), Some(&password), "SELECT 1")
        .expect_err("login without a certificate accepted");
    let text = format!(
        "{:#}",
        run_mariadb(
            &args(port, &other, Some(&pki().trainer), true),
            Some(&other_pw),
            "SELECT 1"
        )
        .expect_err("a user outside db_users was accepted")
    );
    assert!(text.contains("1045"), "{text}");
    // Only the status query itself reached the server.
    assert_eq!(connection_attempts(&server), before + 1);

    // A verified client is the first to connect upstream.
    let out = run_mariadb(
        &args(port, &name, Some(&pki().trainer), true),
        Some(&password),
        "SELECT CURRENT_USER()",
    )
    .expect("the verified client logs in");
    assert!(out.starts_with(&format!("{name}@")), "{out}");
    assert_eq!(connection_attempts(&server), before + 3);
    drop(held);
}
