//! Client mode (`mode = "client"`): local applications speak plaintext to
//! the proxy, which carries their sessions to the database over TLS. Real
//! clients with TLS turned off (psql `sslmode=disable`, `mariadb
//! --skip-ssl`, redis-cli without `--tls`) against real servers: a second
//! intransit in server mode (the two-process mutual-TLS tunnel), and
//! PostgreSQL, MariaDB and Redis with TLS of their own.

use std::ffi::OsString;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use intransit_pki::CertificatePaths;
use intransit_testkit::{
    run_mariadb, MariaDbAuth, MariaDbOptions, MariaDbServer, MariaDbSsl, PgOptions, PgServer,
    PgSsl, RedisServer, RedisTls,
};

use crate::support::*;
use crate::upstream_tls::{
    db_pki, pg_with_cert, pin_of, tls_pg, tls_pg_upstream, tls_pg_user, CERT_USER, OTHER_WRONG_PIN,
    WRONG_PIN,
};

const SSL_OF_SESSION: &str = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// A client-mode listener named "app" on a free loopback port.
fn client_toml(protocol: &str, upstream: &str, upstream_tls: &str, extra: &str) -> String {
    format!(
        r#"
shutdown_grace = "5s"
[[listener]]
name = "app"
mode = "client"
protocol = "{protocol}"
listen = "127.0.0.1:0"
upstream = "{upstream}"
{extra}
[listener.upstream_tls]
{upstream_tls}
"#
    )
}

/// The upstream TLS table for a database signed by the database CA.
fn db_ca() -> String {
    format!("ca = \"{}\"", db_pki().ca.display())
}

/// The same, presenting the proxy's certificate (CN = [`CERT_USER`]).
fn db_ca_with_proxy_cert() -> String {
    let p = db_pki();
    format!(
        "{}\ncert = \"{}\"\nkey = \"{}\"",
        db_ca(),
        p.proxy_client.chain.display(),
        p.proxy_client.key.display()
    )
}

/// The upstream TLS table for a server-mode intransit: the test CA, and
/// the client certificate `cert` (CN trainer, URI spiffe://prod/trainer).
fn tunnel_tls(cert: &CertificatePaths) -> String {
    format!(
        "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nserver_name = \"localhost\"",
        pki().ca.display(),
        cert.chain.display(),
        cert.key.display()
    )
}

/// The same CA and name, without a client certificate.
fn tunnel_tls_without_cert() -> String {
    format!(
        "ca = \"{}\"\nserver_name = \"localhost\"",
        pki().ca.display()
    )
}

/// A TLS 1.3 server rejects a missing client certificate after the
/// handshake: the client-mode proxy reports it from its first read.
fn assert_certificate_required(client: &ProxyProcess, server: &ProxyProcess) {
    let line = client.refusal("upstream_tls_failed");
    let detail = line["detail"].as_str().unwrap_or("");
    assert!(detail.contains("certificate_required"), "{line}");
    server.refusal("no_client_cert");
}

/// libpq connection string for an application without TLS.
fn plain_conninfo(port: u16, user: &str, db: &str, extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} dbname={db} sslmode=disable connect_timeout=10 {extra}"
    )
}

fn psql_plain(port: u16, user: &DbUser, sql: &str) -> Output {
    psql(
        &plain_conninfo(port, &user.name, &user.name, ""),
        sql,
        Some(&user.password),
    )
}

fn established(proxy: &ProxyProcess) -> serde_json::Value {
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection established"
    })
}

/// The application got the generic message, never the upstream's address.
fn assert_unavailable(out: &Output, upstream: &str) {
    assert!(!out.status.success(), "the login worked: {}", stdout(out));
    let err = stderr(out);
    assert!(err.contains("the database is unavailable"), "{err}");
    assert!(
        !err.contains(upstream),
        "the application saw {upstream}: {err}"
    );
}

/// A raw v3 StartupMessage.
fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for s in ["user", user, "database", database] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Reads one backend message: tag and body.
fn read_backend_message(stream: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).expect("message header");
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).expect("message body");
    (header[0], body)
}

/// The SASL mechanisms of an AuthenticationSASL body.
fn sasl_mechanisms(body: &[u8]) -> Vec<String> {
    assert_eq!(&body[..4], &10u32.to_be_bytes(), "not AuthenticationSASL");
    body[4..]
        .split(|b| *b == 0)
        .filter(|m| !m.is_empty())
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

#[test]
fn psql_without_tls_tunnels_through_client_mode_and_server_mode_with_mutual_tls() {
    let user = db_user("tunnel");
    // The server-mode proxy requires a client certificate and maps the
    // tunnel's identity to the database user.
    let server = ProxyProcess::start(&listener_toml(
        &pg_upstream(),
        "",
        &format!(
            "[[listener.db_users]]\nidentity = \"uri:spiffe://prod/trainer\"\nusers = [\"{}\"]\n",
            user.name
        ),
    ));
    let server_addr = format!("127.0.0.1:{}", server.port());
    let client = ProxyProcess::start(&client_toml(
        "postgres",
        &server_addr,
        &tunnel_tls(&pki().trainer),
        "",
    ));
    let listening = client.wait_for_log(Duration::from_secs(5), |v| v["message"] == "listening");
    assert_eq!(listening["mode"], "client");
    assert_eq!(listening["upstream_tls"], "verify-full");

    let out = psql_plain(client.port(), &user, "SELECT current_user");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), user.name);

    let line = established(&client);
    assert_eq!(line["mode"], "client");
    assert_eq!(line["upstream_tls"], "TLSv1_3");
    assert_eq!(line["user"], user.name.as_str());
    assert_eq!(line["server_name"], "localhost");
    // The server-mode proxy saw the client-mode proxy's certificate.
    let line = established(&server);
    assert_eq!(line["identity"], "uri:spiffe://prod/trainer");
    assert_eq!(line["tls_version"], "TLSv1_3");
    assert_eq!(line["user"], user.name.as_str());

    // PostgreSQL 17's direct TLS (ALPN "postgresql", no SSLRequest), which
    // the server-mode proxy accepts.
    let direct = ProxyProcess::start(&client_toml(
        "postgres",
        &server_addr,
        &format!("{}\ndirect = true", tunnel_tls(&pki().trainer)),
        "",
    ));
    let out = psql_plain(direct.port(), &user, "SELECT 'direct'");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "direct");
    server.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection audit" && v["alpn"] == "postgresql" && v["outcome"] == "ok"
    });

    // The tunnel's mutual TLS is enforced: another identity is refused by
    // the server-mode proxy's db_users, and the application learns no more
    // than the server-mode proxy tells it.
    let other = ProxyProcess::start(&client_toml(
        "postgres",
        &server_addr,
        &tunnel_tls(&pki().reporting),
        "",
    ));
    let out = psql_plain(other.port(), &user, "SELECT 1");
    assert!(!out.status.success(), "another identity logged in");
    assert!(
        stderr(&out).contains("may not log in as database user"),
        "{}",
        stderr(&out)
    );
    let line = server.refusal("user_denied");
    assert_eq!(line["identity"], "cn:reporting");

    // No certificate at all: the application gets "unavailable", the log
    // of each proxy says why.
    let anonymous = ProxyProcess::start(&client_toml(
        "postgres",
        &server_addr,
        &tunnel_tls_without_cert(),
        "",
    ));
    let out = psql_plain(anonymous.port(), &user, "SELECT 1");
    assert_unavailable(&out, &server_addr);
    assert_certificate_required(&anonymous, &server);
}

fn mariadb_plain(port: u16, user: &str) -> Vec<OsString> {
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-P".into(),
        port.to_string().into(),
        "-u".into(),
        user.into(),
        "--skip-ssl".into(),
    ]
}

#[test]
fn mariadb_without_tls_tunnels_through_client_mode_and_server_mode_with_mutual_tls() {
    let maria = MariaDbServer::shared().expect("the shared MariaDB");
    let name = intransit_testkit::unique_name("tunnel");
    let password = format!("pw-{name}");
    maria
        .create_user(&name, &password, MariaDbAuth::NativePassword)
        .expect("user");
    let server = ProxyProcess::start(
        &listener_toml(
            &maria.addr(),
            "",
            "[[listener.db_users]]\nidentity = \"uri:spiffe://prod/trainer\"\nusers = [\"*\"]\n",
        )
        .replace("name = \"pg\"", "name = \"maria\"\nprotocol = \"mysql\""),
    );
    let client = ProxyProcess::start(&client_toml(
        "mysql",
        &format!("127.0.0.1:{}", server.port()),
        &tunnel_tls(&pki().trainer),
        "",
    ));
    let out = run_mariadb(
        &mariadb_plain(client.port(), &name),
        Some(&password),
        "SELECT CURRENT_USER()",
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nclient: {:#?}\nserver: {:#?}",
            client.logs(),
            server.logs()
        )
    });
    assert!(out.starts_with(&format!("{name}@")), "{out}");
    let line = established(&client);
    assert_eq!(line["protocol"], "mysql");
    assert_eq!(line["upstream_tls"], "TLSv1_3");
    assert_eq!(line["user"], name.as_str());
    let line = established(&server);
    assert_eq!(line["identity"], "uri:spiffe://prod/trainer");
    assert_eq!(line["tls_version"], "TLSv1_3");

    // ed25519 switches plugins mid-handshake: the AuthSwitchRequest and its
    // answer cross both proxies, each renumbering sequence ids its way.
    if maria.ed25519_available() {
        let ed = intransit_testkit::unique_name("tunnel-ed");
        maria
            .create_user(&ed, "pw-ed", MariaDbAuth::Ed25519)
            .expect("ed25519 user");
        let out = run_mariadb(
            &mariadb_plain(client.port(), &ed),
            Some("pw-ed"),
            "SELECT CURRENT_USER()",
        )
        .unwrap_or_else(|e| panic!("ed25519: {e:#}"));
        assert!(out.starts_with(&format!("{ed}@")), "{out}");
    }

    // A wrong password is the server's refusal, relayed as it is.
    let err = run_mariadb(
        &mariadb_plain(client.port(), &name),
        Some("wrong"),
        "SELECT 1",
    )
    .expect_err("a wrong password logged in");
    assert!(format!("{err:#}").contains("1045"), "{err:#}");

    // No certificate: ERR 1105 for the application, the reason in each log.
    let anonymous = ProxyProcess::start(&client_toml(
        "mysql",
        &format!("127.0.0.1:{}", server.port()),
        &tunnel_tls_without_cert(),
        "",
    ));
    let err = run_mariadb(
        &mariadb_plain(anonymous.port(), &name),
        Some(&password),
        "SELECT 1",
    )
    .expect_err("logged in without a certificate");
    let text = format!("{err:#}");
    assert!(text.contains("1105"), "{text}");
    assert!(text.contains("unavailable"), "{text}");
    assert_certificate_required(&anonymous, &server);
}

/// A MariaDB with TLS that refuses plaintext logins.
fn secure_mariadb() -> &'static MariaDbServer {
    static SERVER: OnceLock<MariaDbServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let p = db_pki();
        MariaDbServer::start(MariaDbOptions {
            ssl: Some(MariaDbSsl {
                cert_file: p.server.chain.clone(),
                key_file: p.server.key.clone(),
                ca_file: p.ca.clone(),
            }),
            require_secure_transport: true,
            ..MariaDbOptions::default()
        })
        .expect("MariaDB with TLS")
    })
}

#[test]
fn mariadb_without_tls_reaches_a_mariadb_that_requires_secure_transport() {
    let server = secure_mariadb();
    let name = intransit_testkit::unique_name("cmaria");
    let password = format!("pw-{name}");
    server
        .create_user(&name, &password, MariaDbAuth::NativePassword)
        .expect("user");
    let proxy = ProxyProcess::start(&client_toml("mysql", &server.addr(), &db_ca(), ""));
    let out = run_mariadb(
        &mariadb_plain(proxy.port(), &name),
        Some(&password),
        "SELECT CURRENT_USER(); SHOW SESSION STATUS LIKE 'Ssl_version'",
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{:#?}", proxy.logs()));
    assert!(out.starts_with(&format!("{name}@")), "{out}");
    assert!(out.contains("Ssl_version\tTLSv1.3"), "{out}");

    // A pin mismatch is ERR 1105 for the application, the reason in the log.
    let mismatch = ProxyProcess::start(&client_toml(
        "mysql",
        &server.addr(),
        &format!("{}\npins = [\"{WRONG_PIN}\"]", db_ca()),
        "",
    ));
    let err = run_mariadb(
        &mariadb_plain(mismatch.port(), &name),
        Some(&password),
        "SELECT 1",
    )
    .expect_err("a pin mismatch logged in");
    let text = format!("{err:#}");
    assert!(text.contains("1105"), "{text}");
    assert!(text.contains("unavailable"), "{text}");
    assert!(!text.contains(&server.addr()), "{text}");
    let line = mismatch.refusal("pin_mismatch");
    assert!(
        line["detail"]
            .as_str()
            .unwrap_or("")
            .contains(&pin_of(&db_pki().server.cert)),
        "{line}"
    );
    assert_eq!(line["listener"], "app");
}

#[test]
fn a_mariadb_without_tls_is_refused_before_the_application_logs_in() {
    let maria = MariaDbServer::shared().expect("the shared MariaDB");
    let name = intransit_testkit::unique_name("cmariaoff");
    maria
        .create_user(&name, "pw", MariaDbAuth::NativePassword)
        .expect("user");
    let proxy = ProxyProcess::start(&client_toml("mysql", &maria.addr(), &db_ca(), ""));
    let err = run_mariadb(&mariadb_plain(proxy.port(), &name), Some("pw"), "SELECT 1")
        .expect_err("logged in over a plaintext upstream leg");
    let text = format!("{err:#}");
    assert!(text.contains("1105"), "{text}");
    assert!(!text.contains(&maria.addr()), "{text}");
    let line = proxy.refusal("upstream_tls_refused");
    assert!(
        line["detail"].as_str().unwrap_or("").contains("CLIENT_SSL"),
        "{line}"
    );
}

#[test]
fn a_plaintext_application_logs_in_by_the_proxys_certificate() {
    // Every TCP login must be TLS with a certificate whose CN is the user.
    let pg = PgServer::start(PgOptions {
        ssl: Some(PgSsl {
            cert_file: db_pki().server.chain.clone(),
            key_file: db_pki().server.key.clone(),
            ca_file: db_pki().ca.clone(),
        }),
        hba_first: vec![
            "hostssl all all 127.0.0.1/32 cert".into(),
            "hostnossl all all 127.0.0.1/32 reject".into(),
        ],
        ..PgOptions::default()
    })
    .expect("PostgreSQL with native TLS and cert authentication");
    pg.psql("postgres", &format!("CREATE ROLE {CERT_USER} LOGIN"))
        .expect("certificate user");
    let upstream = format!("127.0.0.1:{}", pg.port());
    let proxy = ProxyProcess::start(&client_toml(
        "postgres",
        &upstream,
        &db_ca_with_proxy_cert(),
        "",
    ));
    let out = psql(
        &plain_conninfo(proxy.port(), CERT_USER, "postgres", ""),
        "SELECT current_user, ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{CERT_USER}|t|/CN={CERT_USER}"));

    // Another user: the certificate's CN does not match, and the server's
    // own refusal reaches the application.
    let out = psql(
        &plain_conninfo(proxy.port(), "postgres", "postgres", ""),
        "SELECT 1",
        None,
    );
    assert!(!out.status.success(), "logged in as another user");
    assert!(
        stderr(&out).contains("certificate authentication failed"),
        "{}",
        stderr(&out)
    );

    // Without a certificate of its own the proxy cannot log anyone in.
    let no_cert = ProxyProcess::start(&client_toml("postgres", &upstream, &db_ca(), ""));
    let out = psql(
        &plain_conninfo(no_cert.port(), CERT_USER, "postgres", ""),
        "SELECT 1",
        None,
    );
    assert!(!out.status.success(), "logged in without a certificate");
    assert!(
        stderr(&out).contains("connection requires a valid client certificate"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn scram_over_a_tls_upstream_logs_a_plaintext_application_in() {
    let user = tls_pg_user("cscram");
    let proxy = ProxyProcess::start(&client_toml("postgres", &tls_pg_upstream(), &db_ca(), ""));

    // Over its TLS leg PostgreSQL offers SCRAM-SHA-256-PLUS as well. libpq
    // on a connection without TLS refuses that offer ("server offered
    // SCRAM-SHA-256-PLUS authentication over a non-SSL connection"), so
    // the proxy passes on SCRAM-SHA-256 alone.
    let mut raw = tcp(proxy.port());
    write(&mut raw, &startup_message(&user.name, &user.name));
    let (tag, body) = read_backend_message(&mut raw);
    assert_eq!(tag, b'R');
    assert_eq!(sasl_mechanisms(&body), ["SCRAM-SHA-256"]);
    drop(raw);

    // libpq on a connection without TLS cannot bind a channel: it chooses
    // SCRAM-SHA-256 with the GS2 flag "n", which the server accepts even
    // on TLS. libpq's default channel_binding=prefer, then disable.
    for extra in ["", "channel_binding=disable"] {
        let out = psql(
            &plain_conninfo(proxy.port(), &user.name, &user.name, extra),
            SSL_OF_SESSION,
            Some(&user.password),
        );
        assert!(out.status.success(), "{extra}: {}", stderr(&out));
        assert_eq!(stdout(&out), "t|TLSv1.3", "{extra}");
    }
    let out = psql(
        &plain_conninfo(proxy.port(), &user.name, &user.name, ""),
        "SELECT 1",
        Some("wrong password"),
    );
    assert!(!out.status.success(), "a wrong password logged in");
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn pins_decide_with_a_backup_and_a_mismatch_is_counted_and_audited() {
    let user = tls_pg_user("cpin");
    let good = pin_of(&db_pki().server.cert);
    let upstream = tls_pg_upstream();

    let matching = ProxyProcess::start(&client_toml(
        "postgres",
        &upstream,
        &format!("{}\npins = [\"{good}\"]", db_ca()),
        "",
    ));
    let out = psql_plain(matching.port(), &user, SSL_OF_SESSION);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "t|TLSv1.3");

    // A rotation in progress: the old key's pin first, the new one as backup.
    let backup = ProxyProcess::start(&client_toml(
        "postgres",
        &upstream,
        &format!("{}\npins = [\"{WRONG_PIN}\", \"{good}\"]", db_ca()),
        "",
    ));
    let out = psql_plain(backup.port(), &user, "SELECT 1");
    assert!(out.status.success(), "{}", stderr(&out));

    // Pins alone, and a server name the certificate does not carry.
    let pinned = ProxyProcess::start(&client_toml(
        "postgres",
        &upstream,
        &format!("mode = \"pinned\"\nserver_name = \"elsewhere.internal\"\npins = [\"{good}\"]"),
        "",
    ));
    let out = psql_plain(pinned.port(), &user, "SELECT 1");
    assert!(out.status.success(), "{}", stderr(&out));

    let dir = tempfile::tempdir().expect("temp dir");
    let audit_path = dir.path().join("audit.jsonl");
    let mismatch = ProxyProcess::start(&format!(
        "{ADMIN_ON}audit_log = \"{}\"\n{}",
        audit_path.display(),
        client_toml(
            "postgres",
            &upstream,
            &format!(
                "{}\npins = [\"{WRONG_PIN}\", \"{OTHER_WRONG_PIN}\"]",
                db_ca()
            ),
            "",
        )
    ));
    let out = psql_plain(mismatch.port(), &user, "SELECT 1");
    assert_unavailable(&out, &upstream);
    let line = mismatch.refusal("pin_mismatch");
    let detail = line["detail"].as_str().expect("detail");
    assert!(detail.contains(&good), "presented pin missing: {detail}");
    assert!(detail.contains(WRONG_PIN), "expected pin missing: {detail}");
    assert!(
        detail.contains(OTHER_WRONG_PIN),
        "expected pin missing: {detail}"
    );

    // The refusal feeds the metrics and the audit event like any other.
    let metrics = mismatch.metrics();
    assert_eq!(
        metrics.sum(
            "intransit_handshakes_total",
            &[("listener", "app"), ("outcome", "pin_mismatch")]
        ),
        1.0,
        "{}",
        metrics.text
    );
    let audit = mismatch.wait_for_log(Duration::from_secs(5), |v| {
        v["message"] == "connection audit" && v["outcome"] == "pin_mismatch"
    });
    assert_eq!(audit["db_user"], user.name.as_str());
    let text = std::fs::read_to_string(&audit_path).expect("audit file");
    assert!(text.contains("\"outcome\":\"pin_mismatch\""), "{text}");

    // An accepted connection is counted with its upstream TLS facts.
    let out = psql_plain(matching.port(), &user, "SELECT 1");
    assert!(out.status.success(), "{}", stderr(&out));
    let audit = matching.wait_for_log(Duration::from_secs(5), |v| {
        v["message"] == "connection audit" && v["outcome"] == "ok"
    });
    assert_eq!(audit["tls_version"], "TLSv1_3");
    assert_eq!(audit["route"], "default");
}

#[test]
fn a_wrong_name_an_untrusted_and_an_expired_certificate_are_refused() {
    let user = tls_pg_user("cname");
    let upstream = tls_pg_upstream();

    let wrong_name = ProxyProcess::start(&client_toml(
        "postgres",
        &upstream,
        &format!("{}\nserver_name = \"db.wrong.internal\"", db_ca()),
        "",
    ));
    let out = psql_plain(wrong_name.port(), &user, "SELECT 1");
    assert_unavailable(&out, &upstream);
    let line = wrong_name.refusal("upstream_name_mismatch");
    let detail = line["detail"].as_str().expect("detail");
    assert!(detail.contains("db.wrong.internal"), "{detail}");
    assert!(detail.contains("localhost"), "{detail}");

    // The test CA for client certificates did not sign the database's.
    let untrusted = ProxyProcess::start(&client_toml(
        "postgres",
        &upstream,
        &format!("ca = \"{}\"", pki().ca.display()),
        "",
    ));
    let out = psql_plain(untrusted.port(), &user, "SELECT 1");
    assert_unavailable(&out, &upstream);
    let line = untrusted.refusal("upstream_untrusted");
    assert!(
        line["detail"]
            .as_str()
            .unwrap_or("")
            .contains("unknown issuer"),
        "{line}"
    );

    let expired_pg = pg_with_cert(&db_pki().expired_server);
    let name = intransit_testkit::unique_name("cexp");
    expired_pg.create_user(&name, "pw").expect("user");
    let expired_upstream = format!("127.0.0.1:{}", expired_pg.port());
    let expired = ProxyProcess::start(&client_toml("postgres", &expired_upstream, &db_ca(), ""));
    let out = psql(
        &plain_conninfo(expired.port(), &name, "postgres", ""),
        "SELECT 1",
        Some("pw"),
    );
    assert_unavailable(&out, &expired_upstream);
    let line = expired.refusal("upstream_expired");
    assert!(
        line["detail"].as_str().unwrap_or("").contains("expired"),
        "{line}"
    );
}

#[test]
fn a_postgres_with_ssl_off_is_refused_with_08006() {
    let user = db_user("coff");
    let upstream = pg_upstream();
    let proxy = ProxyProcess::start(&client_toml("postgres", &upstream, &db_ca(), ""));
    let out = psql_plain(proxy.port(), &user, "SELECT 1");
    assert_unavailable(&out, &upstream);
    let line = proxy.refusal("upstream_tls_refused");
    assert!(
        line["detail"].as_str().unwrap_or("").contains("'N'"),
        "{line}"
    );

    // The raw reply: one ErrorResponse with SQLSTATE 08006, then close.
    let mut raw = tcp(proxy.port());
    write(&mut raw, &startup_message(&user.name, &user.name));
    let reply = read_to_close(&mut raw);
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("C08006"), "{text}");
}

#[test]
fn psql_cancel_in_client_mode_travels_over_tls() {
    let user = tls_pg_user("ccancel");
    let proxy = ProxyProcess::start(&client_toml("postgres", &tls_pg_upstream(), &db_ca(), ""));
    // psql sends its CancelRequest in plaintext to the client-mode proxy,
    // which forwards it over a fresh TLS connection (the server's pg_hba
    // rejects plaintext from 127.0.0.1).
    let line = cancel_a_running_query(
        &proxy,
        tls_pg(),
        &plain_conninfo(proxy.port(), &user.name, &user.name, ""),
        &user.name,
        &user.password,
    );
    assert_eq!(line["upstream_tls"], "TLSv1_3");
}

#[test]
fn an_application_asking_for_encryption_gets_n_and_continues_in_plaintext() {
    let user = tls_pg_user("cssl");
    let proxy = ProxyProcess::start(&client_toml("postgres", &tls_pg_upstream(), &db_ca(), ""));

    // Raw: GSSENCRequest and SSLRequest are both answered 'N', and the
    // StartupMessage that follows on the same connection is carried on.
    let mut raw = tcp(proxy.port());
    write(&mut raw, &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).expect("GSSENCRequest answer");
    assert_eq!(&answer, b"N");
    write(&mut raw, &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
    raw.read_exact(&mut answer).expect("SSLRequest answer");
    assert_eq!(&answer, b"N");
    write(&mut raw, &startup_message(&user.name, &user.name));
    let (tag, body) = read_backend_message(&mut raw);
    assert_eq!(tag, b'R', "{}", String::from_utf8_lossy(&body));
    drop(raw);

    // libpq: sslmode=prefer falls back to plaintext and logs in (the
    // database's leg is TLS all the same); sslmode=require gives up itself.
    let prefer = psql(
        &plain_conninfo(proxy.port(), &user.name, &user.name, "")
            .replace("sslmode=disable", "sslmode=prefer"),
        SSL_OF_SESSION,
        Some(&user.password),
    );
    assert!(prefer.status.success(), "{}", stderr(&prefer));
    assert_eq!(stdout(&prefer), "t|TLSv1.3");
    let require = psql(
        &plain_conninfo(proxy.port(), &user.name, &user.name, "")
            .replace("sslmode=disable", "sslmode=require"),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(!require.status.success(), "sslmode=require logged in");
    assert!(
        stderr(&require).contains("server does not support SSL"),
        "{}",
        stderr(&require)
    );

    // Starting TLS at the first byte (direct TLS) is not plaintext: closed.
    let mut raw = tcp(proxy.port());
    write(&mut raw, &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0]);
    assert!(read_to_close(&mut raw).is_empty());
    proxy.refusal("malformed");
}

fn check_config(text: &str) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("intransit.toml");
    std::fs::write(&path, text).expect("write");
    Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("check-config")
}

#[test]
fn plaintext_from_other_hosts_needs_allow_remote_plaintext() {
    let remote =
        client_toml("postgres", "127.0.0.1:5432", &db_ca(), "").replace("127.0.0.1:0", "0.0.0.0:0");
    let out = check_config(&remote);
    assert!(!out.status.success(), "a non-loopback listen was accepted");
    let err = stderr(&out);
    assert!(err.contains("listener[0].listen"), "{err}");
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(err.contains("allow_remote_plaintext = true"), "{err}");
    // The proxy does not start either.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("remote.toml");
    std::fs::write(&path, &remote).expect("write");
    let out = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(&path)
        .output()
        .expect("proxy");
    assert!(!out.status.success(), "the proxy started");
    assert!(
        stderr(&out).contains("allow_remote_plaintext"),
        "{}",
        stderr(&out)
    );

    let allowed = client_toml(
        "postgres",
        "127.0.0.1:5432",
        &db_ca(),
        "allow_remote_plaintext = true",
    )
    .replace("127.0.0.1:0", "0.0.0.0:0");
    let out = check_config(&allowed);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("(client mode)"), "{}", stdout(&out));
    let proxy = ProxyProcess::start(&allowed);
    proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("accepts plaintext from other hosts"))
    });

    // The client-facing [listener.tls] has no place in client mode.
    let with_tls = format!(
        "{}[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        client_toml("postgres", "127.0.0.1:5432", &db_ca(), ""),
        pki().server.chain.display(),
        pki().server.key.display()
    );
    let out = check_config(&with_tls);
    assert!(!out.status.success(), "[listener.tls] was accepted");
    assert!(stderr(&out).contains("listener[0].tls"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("[listener.upstream_tls]"),
        "{}",
        stderr(&out)
    );
}

fn redis_cli_plain(port: u16, args: &[&str]) -> Output {
    let cli = intransit_testkit::require_tool("redis-cli", "redis-tools").expect("redis-cli");
    Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli")
}

#[test]
fn redis_cli_without_tls_reaches_redis_on_its_tls_port() {
    let p = db_pki();
    let redis = RedisServer::start_with_tls(RedisTls {
        cert_file: p.server.chain.clone(),
        key_file: p.server.key.clone(),
        ca_file: p.ca.clone(),
    })
    .expect("Redis with TLS");
    let upstream = format!("127.0.0.1:{}", redis.tls_port().expect("TLS port"));
    let proxy = ProxyProcess::start(&client_toml(
        "tls",
        &upstream,
        &format!("{}\nserver_name = \"localhost\"", db_ca_with_proxy_cert()),
        "",
    ));
    let key = intransit_testkit::unique_name("k");
    let out = redis_cli_plain(proxy.port(), &["SET", &key, "via-client-mode"]);
    assert_eq!(stdout(&out), "OK", "{}", stderr(&out));
    let out = redis_cli_plain(proxy.port(), &["GET", &key]);
    assert_eq!(stdout(&out), "via-client-mode", "{}", stderr(&out));
    let line = established(&proxy);
    assert_eq!(line["protocol"], "tls");
    assert_eq!(line["upstream_tls"], "TLSv1_3");

    let mismatch = ProxyProcess::start(&client_toml(
        "tls",
        &upstream,
        &format!("{}\npins = [\"{WRONG_PIN}\"]", db_ca()),
        "",
    ));
    let out = redis_cli_plain(mismatch.port(), &["PING"]);
    assert_ne!(stdout(&out), "PONG");
    mismatch.refusal("pin_mismatch");
}

/// The count of `intransit_handshakes_total` for listener "app" and
/// `outcome`.
fn handshakes(proxy: &ProxyProcess, outcome: &str) -> f64 {
    proxy.metrics().sum(
        "intransit_handshakes_total",
        &[("listener", "app"), ("outcome", outcome)],
    )
}

/// The audit event of the connection refused for `reason`.
fn audited(proxy: &ProxyProcess, reason: &str) -> serde_json::Value {
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection audit" && v["outcome"] == reason
    })
}

#[test]
fn a_postgres_login_refused_upstream_is_the_client_mode_connections_refusal() {
    let user = db_user("refused");
    let denied = db_user("refused-other");
    // The server-mode proxy lets the tunnel's identity log in as `user`
    // only.
    let server = ProxyProcess::start(&listener_toml(
        &pg_upstream(),
        "",
        &format!(
            "[[listener.db_users]]\nidentity = \"uri:spiffe://prod/trainer\"\nusers = [\"{}\"]\n",
            user.name
        ),
    ));
    let client = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        client_toml(
            "postgres",
            &format!("127.0.0.1:{}", server.port()),
            &tunnel_tls(&pki().trainer),
            "",
        )
    ));

    let out = psql_plain(client.port(), &denied, "SELECT 1");
    assert!(!out.status.success(), "a denied user logged in");
    // The application reads the server-mode proxy's own ErrorResponse.
    assert!(
        stderr(&out).contains("may not log in as database user"),
        "{}",
        stderr(&out)
    );
    server.refusal("user_denied");
    let line = client.refusal("upstream_refused");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("28000"), "{detail}");
    assert!(detail.contains("may not log in"), "{detail}");
    let audit = audited(&client, "upstream_refused");
    assert_eq!(audit["db_user"], denied.name.as_str());
    assert!(
        audit["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("28000"),
        "{audit}"
    );
    assert_eq!(handshakes(&client, "upstream_refused"), 1.0);
    assert_eq!(handshakes(&client, "ok"), 0.0);

    // A wrong password, refused by the database behind both proxies.
    let out = psql(
        &plain_conninfo(client.port(), &user.name, &user.name, ""),
        "SELECT 1",
        Some("wrong password"),
    );
    assert!(!out.status.success(), "a wrong password logged in");
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        stderr(&out)
    );
    client.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection refused"
            && v["reason"] == "upstream_refused"
            && v["detail"].as_str().unwrap_or_default().contains("28P01")
    });
    assert_eq!(handshakes(&client, "upstream_refused"), 2.0);

    // The login that works is counted once, as ok, and the session works.
    let out = psql_plain(client.port(), &user, "SELECT current_user");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), user.name);
    audited(&client, "ok");
    assert_eq!(handshakes(&client, "ok"), 1.0);
    assert_eq!(handshakes(&client, "upstream_refused"), 2.0);
}

#[test]
fn a_wrong_password_to_a_tls_postgres_is_refused_in_client_mode() {
    let user = tls_pg_user("cwrongpw");
    let client = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        client_toml("postgres", &tls_pg_upstream(), &db_ca(), "")
    ));
    let out = psql(
        &plain_conninfo(client.port(), &user.name, &user.name, ""),
        "SELECT 1",
        Some("wrong password"),
    );
    assert!(!out.status.success(), "a wrong password logged in");
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        stderr(&out)
    );
    let line = client.refusal("upstream_refused");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("FATAL 28P01"), "{detail}");
    assert!(detail.contains(&user.name), "{detail}");
    assert!(!detail.contains("wrong password"), "{detail}");
    audited(&client, "upstream_refused");
    assert_eq!(handshakes(&client, "upstream_refused"), 1.0);
    assert_eq!(handshakes(&client, "ok"), 0.0);
}

#[test]
fn a_mysql_login_refused_upstream_is_the_client_mode_connections_refusal() {
    let maria = MariaDbServer::shared().expect("the shared MariaDB");
    let name = intransit_testkit::unique_name("crefused");
    let other = intransit_testkit::unique_name("crefused-other");
    for user in [&name, &other] {
        maria
            .create_user(user, &format!("pw-{user}"), MariaDbAuth::NativePassword)
            .expect("user");
    }
    let server = ProxyProcess::start(
        &listener_toml(
            &maria.addr(),
            "",
            &format!(
                "[[listener.db_users]]\nidentity = \"uri:spiffe://prod/trainer\"\nusers = [\"{name}\"]\n"
            ),
        )
        .replace("name = \"pg\"", "name = \"maria\"\nprotocol = \"mysql\""),
    );
    let client = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        client_toml(
            "mysql",
            &format!("127.0.0.1:{}", server.port()),
            &tunnel_tls(&pki().trainer),
            "",
        )
    ));

    let err = run_mariadb(
        &mariadb_plain(client.port(), &other),
        Some(&format!("pw-{other}")),
        "SELECT 1",
    )
    .expect_err("a denied user logged in");
    assert!(format!("{err:#}").contains("1045"), "{err:#}");
    server.refusal("user_denied");
    let line = client.refusal("upstream_refused");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("1045"), "{detail}");
    assert!(detail.contains(&other), "{detail}");
    assert_eq!(
        audited(&client, "upstream_refused")["db_user"],
        other.as_str()
    );
    assert_eq!(handshakes(&client, "upstream_refused"), 1.0);
    assert_eq!(handshakes(&client, "ok"), 0.0);

    // The login that works is ok, once.
    let out = run_mariadb(
        &mariadb_plain(client.port(), &name),
        Some(&format!("pw-{name}")),
        "SELECT CURRENT_USER()",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.starts_with(&format!("{name}@")), "{out}");
    audited(&client, "ok");
    assert_eq!(handshakes(&client, "ok"), 1.0);
    assert_eq!(handshakes(&client, "upstream_refused"), 1.0);
}

#[test]
fn a_wrong_password_to_a_tls_mariadb_is_refused_in_client_mode() {
    let server = secure_mariadb();
    let name = intransit_testkit::unique_name("cmariapw");
    server
        .create_user(&name, &format!("pw-{name}"), MariaDbAuth::NativePassword)
        .expect("user");
    let client = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        client_toml("mysql", &server.addr(), &db_ca(), "")
    ));
    let err = run_mariadb(
        &mariadb_plain(client.port(), &name),
        Some("wrong"),
        "SELECT 1",
    )
    .expect_err("a wrong password logged in");
    assert!(format!("{err:#}").contains("1045"), "{err:#}");
    let line = client.refusal("upstream_refused");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("ERROR 1045 (28000)"), "{detail}");
    assert!(detail.contains(&name), "{detail}");
    audited(&client, "upstream_refused");
    assert_eq!(handshakes(&client, "upstream_refused"), 1.0);
    assert_eq!(handshakes(&client, "ok"), 0.0);
}

/// A TLS 1.3 server judges the proxy's client certificate after the
/// handshake and refuses with an alert, which reaches the proxy with its
/// first read. A `tls` listener has no login to watch, so that read is in
/// the copy: the alert must still be the connection's refusal (log, audit
/// event, metric), never `ok`. Against a server-mode intransit that
/// requires a certificate (none presented), and against Redis's own TLS
/// port (a certificate from a CA it does not trust); then the certificate
/// Redis trusts, counted `ok` once.
#[test]
fn a_tls_server_refusing_the_proxys_certificate_after_the_handshake_is_the_refusal() {
    let redis = RedisServer::shared().expect("the shared Redis");
    let server = ProxyProcess::start(
        &listener_toml(&redis.addr(), "", "")
            .replace("name = \"pg\"", "name = \"redis\"\nprotocol = \"tls\""),
    );
    let client = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        client_toml(
            "tls",
            &format!("127.0.0.1:{}", server.port()),
            &tunnel_tls_without_cert(),
            "",
        )
    ));
    let out = redis_cli_plain(client.port(), &["PING"]);
    assert_ne!(stdout(&out), "PONG");
    assert_certificate_required(&client, &server);
    let audit = audited(&client, "upstream_tls_failed");
    assert!(
        audit["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("after the handshake"),
        "{audit}"
    );
    assert_eq!(audit["tls_version"], "TLSv1_3", "{audit}");
    assert_eq!(handshakes(&client, "upstream_tls_failed"), 1.0);
    assert_eq!(handshakes(&client, "ok"), 0.0);

    let p = db_pki();
    let tls_redis = RedisServer::start_with_tls(RedisTls {
        cert_file: p.server.chain.clone(),
        key_file: p.server.key.clone(),
        ca_file: p.ca.clone(),
    })
    .expect("Redis with TLS");
    let upstream = format!("127.0.0.1:{}", tls_redis.tls_port().expect("TLS port"));
    let foreign = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        client_toml(
            "tls",
            &upstream,
            &format!(
                "{}\nserver_name = \"localhost\"\ncert = \"{}\"\nkey = \"{}\"",
                db_ca(),
                pki().trainer.chain.display(),
                pki().trainer.key.display()
            ),
            "",
        )
    ));
    let out = redis_cli_plain(foreign.port(), &["PING"]);
    assert_ne!(stdout(&out), "PONG");
    let line = foreign.refusal("upstream_tls_failed");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("after the handshake"), "{line}");
    assert!(detail.contains(&upstream), "{line}");
    audited(&foreign, "upstream_tls_failed");
    assert_eq!(handshakes(&foreign, "upstream_tls_failed"), 1.0);
    assert_eq!(handshakes(&foreign, "ok"), 0.0);

    let trusted = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        client_toml(
            "tls",
            &upstream,
            &format!("{}\nserver_name = \"localhost\"", db_ca_with_proxy_cert()),
            "",
        )
    ));
    let out = redis_cli_plain(trusted.port(), &["PING"]);
    assert_eq!(stdout(&out), "PONG", "{}", stderr(&out));
    audited(&trusted, "ok");
    assert_eq!(handshakes(&trusted, "ok"), 1.0);
    assert_eq!(handshakes(&trusted, "upstream_tls_failed"), 0.0);
}
