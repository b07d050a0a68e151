//! The encrypted upstream leg (`[listener.upstream_tls]`): a PostgreSQL,
//! a MariaDB and a Redis with TLS of their own, signed by a database CA
//! that is not the CA clients use, driven through the proxy by psql, the
//! mariadb client and redis-cli. Failures (pins, names, trust, expiry, a
//! server without TLS) must reach the client as the protocol's "database
//! unavailable" error and the log as a reason that says what failed.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use intransit_pki::{
    CertificateAuthority, CertificateKind, CertificatePaths, KeyAlgorithm, Validity,
};
use intransit_testkit::{
    run_mariadb, MariaDbAuth, MariaDbOptions, MariaDbServer, MariaDbSsl, PgOptions, PgServer,
    PgSsl, RedisServer, RedisTls,
};

use crate::support::*;

/// The database user whose login the proxy's own client certificate
/// proves (`hostssl ... cert`: the certificate's CN is the user).
pub(crate) const CERT_USER: &str = "intransit_proxy";

/// A pin no certificate in these tests has.
pub(crate) const WRONG_PIN: &str = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
pub(crate) const OTHER_WRONG_PIN: &str = "sha256///////////////////////////////////////////8=";

/// Certificates of the database side: their own CA, the servers'
/// certificates, and the client certificate the proxy presents upstream.
pub(crate) struct DbPki {
    pub(crate) ca: PathBuf,
    /// For `localhost`, 127.0.0.1 and ::1.
    pub(crate) server: CertificatePaths,
    /// The same names, expired yesterday.
    pub(crate) expired_server: CertificatePaths,
    /// CN = [`CERT_USER`].
    pub(crate) proxy_client: CertificatePaths,
}

pub(crate) fn db_pki() -> &'static DbPki {
    static DB_PKI: OnceLock<DbPki> = OnceLock::new();
    DB_PKI.get_or_init(|| {
        let dir = pki().dir.join("database");
        let ca = CertificateAuthority::generate(
            "intransit test database CA",
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
        )
        .expect("database CA");
        ca.save(&dir.join("ca")).expect("saving the database CA");
        let now = time::OffsetDateTime::now_utc();
        let expired = Validity {
            not_before: now - time::Duration::days(10),
            not_after: now - time::Duration::days(1),
        };
        let server = CertificateKind::Server;
        DbPki {
            ca: dir.join("ca").join("ca.pem"),
            server: issue(
                &ca,
                &dir,
                "server",
                server,
                "localhost",
                &[],
                Validity::days_from_now(30),
            ),
            expired_server: issue(
                &ca,
                &dir,
                "expired-server",
                server,
                "localhost",
                &[],
                expired,
            ),
            proxy_client: issue(
                &ca,
                &dir,
                "proxy-client",
                CertificateKind::Client,
                CERT_USER,
                &[],
                Validity::days_from_now(30),
            ),
        }
    })
}

/// The SPKI pin of a certificate file's first certificate.
pub(crate) fn pin_of(cert: &std::path::Path) -> String {
    let pem = std::fs::read_to_string(cert).expect("reading a certificate");
    let der = intransit_pki::pem_to_der_certs(&pem).expect("PEM");
    intransit_pki::spki_pin(&der[0]).expect("pin")
}

pub(crate) fn pg_with_cert(cert: &CertificatePaths) -> PgServer {
    PgServer::start(PgOptions {
        ssl: Some(PgSsl {
            cert_file: cert.chain.clone(),
            key_file: cert.key.clone(),
            ca_file: db_pki().ca.clone(),
        }),
        // Plaintext logins are rejected, so every session that works
        // proves the proxy's upstream leg is TLS.
        hba_first: vec![
            format!("hostssl all {CERT_USER} 127.0.0.1/32 cert"),
            "hostnossl all all 127.0.0.1/32 reject".into(),
        ],
        ..PgOptions::default()
    })
    .expect("PostgreSQL with native TLS")
}

/// A PostgreSQL with TLS and a valid certificate, shared by this module.
pub(crate) fn tls_pg() -> &'static PgServer {
    static TLS_PG: OnceLock<PgServer> = OnceLock::new();
    TLS_PG.get_or_init(|| {
        let pg = pg_with_cert(&db_pki().server);
        pg.psql("postgres", &format!("CREATE ROLE {CERT_USER} LOGIN"))
            .expect("certificate user");
        pg
    })
}

/// A user with a password and a database of its own on [`tls_pg`].
pub(crate) fn tls_pg_user(prefix: &str) -> DbUser {
    let name = intransit_testkit::unique_name(prefix);
    let password = format!("pw-{name}");
    tls_pg().create_user(&name, &password).expect("user");
    tls_pg().create_database(&name, &name).expect("database");
    DbUser { name, password }
}

pub(crate) fn tls_pg_upstream() -> String {
    format!("127.0.0.1:{}", tls_pg().port())
}

/// A PostgreSQL listener whose upstream leg is TLS with `table`.
fn pg_listener(upstream: &str, table: &str) -> String {
    format!(
        "{}[listener.upstream_tls]\n{table}\n",
        listener_toml(upstream, "", "")
    )
}

fn db_ca_line() -> String {
    format!("ca = \"{}\"", db_pki().ca.display())
}

/// psql through the proxy as `user`, with channel binding off (see
/// `channel_binding_over_a_tls_upstream` for why that matters).
fn psql_as(port: u16, user: &DbUser, sql: &str) -> std::process::Output {
    psql(
        &conninfo(
            port,
            &user.name,
            &user.name,
            &pki().trainer,
            "channel_binding=disable",
        ),
        sql,
        Some(&user.password),
    )
}

const SSL_OF_SESSION: &str = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// A client turned away because of the upstream leg gets the generic
/// message, without the upstream's address.
fn assert_unavailable(out: &std::process::Output, upstream: &str) {
    assert!(!out.status.success(), "the login worked: {}", stdout(out));
    let err = stderr(out);
    assert!(err.contains("the database is unavailable"), "{err}");
    assert!(!err.contains(upstream), "the client saw {upstream}: {err}");
}

#[test]
fn psql_reaches_a_tls_postgres_with_verify_full() {
    let user = tls_pg_user("uptls");
    let proxy = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        pg_listener(&tls_pg_upstream(), &db_ca_line())
    ));
    let listening = proxy.wait_for_log(Duration::from_secs(5), |v| v["message"] == "listening");
    assert_eq!(listening["upstream_tls"], "verify-full");
    let server_serial = intransit_pki::summarize(
        &intransit_pki::pem_to_der_certs(&std::fs::read_to_string(&db_pki().server.cert).unwrap())
            .unwrap()[0],
    )
    .unwrap()
    .serial_hex;
    let peer_gauge = |metrics: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("intransit_certificate_not_after_seconds{")
                    && l.contains("role=\"upstream_peer\"")
            })
            .map(str::to_owned)
    };
    let (_, before) = http_get(proxy.admin_addr(), "/metrics");
    assert_eq!(peer_gauge(&before), None, "no upstream handshake yet");

    let out = psql_as(proxy.port(), &user, SSL_OF_SESSION);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "t|TLSv1.3");
    let line = proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"] == "connection established"
    });
    assert_eq!(line["upstream_tls"], "TLSv1_3");
    assert_eq!(line["user"], user.name.as_str());

    // The database's certificate is now watched like the proxy's own: in
    // the expiry gauge and in /status, beside the upstream CA.
    let (_, after) = http_get(proxy.admin_addr(), "/metrics");
    let gauge = peer_gauge(&after).expect("an upstream_peer expiry gauge");
    assert!(
        gauge.contains(&format!("serial=\"{server_serial}\"")),
        "{gauge}"
    );
    assert!(
        after.lines().any(|l| l.contains("role=\"upstream_ca\"")),
        "{after}"
    );
    let (_, status) = http_get(proxy.admin_addr(), "/status");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let certs = v["listeners"][0]["routes"][0]["upstream_tls"]["certificates"]
        .as_array()
        .unwrap()
        .clone();
    let peer = certs
        .iter()
        .find(|c| c["role"] == "upstream_peer")
        .expect("the database's certificate in /status");
    assert_eq!(peer["serial"], server_serial.as_str());
    assert!(peer["days_left"].as_i64().unwrap() >= 29, "{peer}");
}

#[test]
fn the_same_server_without_upstream_tls_is_rejected_by_its_own_rules() {
    // The control for every test here: the server's pg_hba rejects a
    // plaintext leg, so the successes above are not by accident.
    let user = tls_pg_user("uptls-plain");
    let proxy = ProxyProcess::start(&listener_toml(&tls_pg_upstream(), "", ""));
    let out = psql_as(proxy.port(), &user, "SELECT 1");
    assert!(!out.status.success(), "a plaintext upstream leg logged in");
    assert!(stderr(&out).contains("no encryption"), "{}", stderr(&out));
}

#[test]
fn pins_decide_with_a_backup_and_a_mismatch_says_what_was_presented() {
    let user = tls_pg_user("uppin");
    let good = pin_of(&db_pki().server.cert);
    let upstream = tls_pg_upstream();

    let matching = ProxyProcess::start(&pg_listener(
        &upstream,
        &format!("{}\npins = [\"{good}\"]", db_ca_line()),
    ));
    let out = psql_as(matching.port(), &user, "SELECT 1");
    assert!(out.status.success(), "{}", stderr(&out));

    // A rotation in progress: the old key's pin first, the new one as backup.
    let backup = ProxyProcess::start(&pg_listener(
        &upstream,
        &format!("{}\npins = [\"{WRONG_PIN}\", \"{good}\"]", db_ca_line()),
    ));
    let out = psql_as(backup.port(), &user, "SELECT 1");
    assert!(out.status.success(), "{}", stderr(&out));

    // Pins alone: no CA, and a server name the certificate does not carry.
    let pinned = ProxyProcess::start(&pg_listener(
        &upstream,
        &format!("mode = \"pinned\"\nserver_name = \"elsewhere.internal\"\npins = [\"{good}\"]"),
    ));
    let out = psql_as(pinned.port(), &user, SSL_OF_SESSION);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "t|TLSv1.3");

    let mismatch = ProxyProcess::start(&pg_listener(
        &upstream,
        &format!(
            "{}\npins = [\"{WRONG_PIN}\", \"{OTHER_WRONG_PIN}\"]",
            db_ca_line()
        ),
    ));
    let out = psql_as(mismatch.port(), &user, "SELECT 1");
    assert_unavailable(&out, &upstream);
    let line = mismatch.refusal("pin_mismatch");
    let detail = line["detail"].as_str().expect("detail");
    assert!(detail.contains(&good), "presented pin missing: {detail}");
    assert!(
        detail.contains(WRONG_PIN),
        "expected pins missing: {detail}"
    );
    assert!(
        detail.contains(OTHER_WRONG_PIN),
        "expected pins missing: {detail}"
    );
    assert_eq!(line["identity"], "uri:spiffe://prod/trainer");

    let pinned_mismatch = ProxyProcess::start(&pg_listener(
        &upstream,
        &format!("mode = \"pinned\"\npins = [\"{WRONG_PIN}\"]"),
    ));
    let out = psql_as(pinned_mismatch.port(), &user, "SELECT 1");
    assert_unavailable(&out, &upstream);
    pinned_mismatch.refusal("pin_mismatch");
}

#[test]
fn a_wrong_name_is_refused_by_verify_full_and_accepted_by_verify_ca() {
    let user = tls_pg_user("upname");
    let upstream = tls_pg_upstream();
    let full = ProxyProcess::start(&pg_listener(
        &upstream,
        &format!("{}\nserver_name = \"db.wrong.internal\"", db_ca_line()),
    ));
    let out = psql_as(full.port(), &user, "SELECT 1");
    assert_unavailable(&out, &upstream);
    let line = full.refusal("upstream_name_mismatch");
    let detail = line["detail"].as_str().expect("detail");
    assert!(detail.contains("db.wrong.internal"), "{detail}");
    assert!(detail.contains("localhost"), "{detail}");

    let ca_only = ProxyProcess::start(&pg_listener(
        &upstream,
        &format!(
            "mode = \"verify-ca\"\n{}\nserver_name = \"db.wrong.internal\"",
            db_ca_line()
        ),
    ));
    let out = psql_as(ca_only.port(), &user, "SELECT 1");
    assert!(out.status.success(), "{}", stderr(&out));

    let named = ProxyProcess::start(&pg_listener(
        &upstream,
        &format!("{}\nserver_name = \"localhost\"", db_ca_line()),
    ));
    let out = psql_as(named.port(), &user, "SELECT 1");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_untrusted_upstream_certificate_is_refused() {
    let user = tls_pg_user("upca");
    let upstream = tls_pg_upstream();
    // The client-facing test CA did not sign the database's certificate.
    let proxy = ProxyProcess::start(&pg_listener(
        &upstream,
        &format!("ca = \"{}\"", pki().ca.display()),
    ));
    let out = psql_as(proxy.port(), &user, "SELECT 1");
    assert_unavailable(&out, &upstream);
    let line = proxy.refusal("upstream_untrusted");
    assert!(
        line["detail"]
            .as_str()
            .unwrap_or("")
            .contains("unknown issuer"),
        "{line}"
    );
}

#[test]
fn an_expired_upstream_certificate_is_refused() {
    let pg = pg_with_cert(&db_pki().expired_server);
    let user = intransit_testkit::unique_name("upexp");
    pg.create_user(&user, "pw").expect("user");
    let upstream = format!("127.0.0.1:{}", pg.port());
    let proxy = ProxyProcess::start(&pg_listener(&upstream, &db_ca_line()));
    let out = psql(
        &conninfo(
            proxy.port(),
            &user,
            "postgres",
            &pki().trainer,
            "channel_binding=disable",
        ),
        "SELECT 1",
        Some("pw"),
    );
    assert_unavailable(&out, &upstream);
    let line = proxy.refusal("upstream_expired");
    assert!(
        line["detail"].as_str().unwrap_or("").contains("expired"),
        "{line}"
    );
}

#[test]
fn a_postgres_without_tls_answers_n_and_the_client_is_told_unavailable() {
    let user = db_user("upoff");
    let upstream = pg_upstream();
    let proxy = ProxyProcess::start(&pg_listener(&upstream, &db_ca_line()));
    let out = psql_as(proxy.port(), &user, "SELECT 1");
    assert_unavailable(&out, &upstream);
    let line = proxy.refusal("upstream_tls_refused");
    assert!(
        line["detail"].as_str().unwrap_or("").contains("'N'"),
        "{line}"
    );
}

#[test]
fn the_proxy_presents_its_client_certificate_for_cert_authentication() {
    tls_pg();
    let p = db_pki();
    let upstream = tls_pg_upstream();
    let with_cert = ProxyProcess::start(&pg_listener(
        &upstream,
        &format!(
            "{}\ncert = \"{}\"\nkey = \"{}\"",
            db_ca_line(),
            p.proxy_client.chain.display(),
            p.proxy_client.key.display()
        ),
    ));
    let conn = |port| conninfo(port, CERT_USER, "postgres", &pki().trainer, "");
    let out = psql(
        &conn(with_cert.port()),
        "SELECT current_user, (SELECT client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{CERT_USER}|/CN={CERT_USER}"));

    let without = ProxyProcess::start(&pg_listener(&upstream, &db_ca_line()));
    let out = psql(&conn(without.port()), "SELECT 1", None);
    assert!(
        !out.status.success(),
        "logged in without a client certificate"
    );
    assert!(
        stderr(&out).contains("connection requires a valid client certificate"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn channel_binding_over_a_tls_upstream() {
    let user = tls_pg_user("upcb");
    let proxy = ProxyProcess::start(&pg_listener(&tls_pg_upstream(), &db_ca_line()));
    let attempt = |mode: &str| {
        psql(
            &conninfo(
                proxy.port(),
                &user.name,
                &user.name,
                &pki().trainer,
                &format!("channel_binding={mode}"),
            ),
            "SELECT 1",
            Some(&user.password),
        )
    };
    let disable = attempt("disable");
    assert!(disable.status.success(), "{}", stderr(&disable));

    // libpq's default: SCRAM-SHA-256-PLUS is no longer offered, so libpq
    // picks SCRAM-SHA-256 and, being on TLS, says it could have bound the
    // channel (GS2 flag "y"). The server, itself on TLS, would take that
    // for a downgrade; the flag is covered by the client's proof, so the
    // proxy cannot rewrite it and tells the client what to change instead.
    let prefer = attempt("prefer");
    assert!(!prefer.status.success(), "channel_binding=prefer logged in");
    let err = stderr(&prefer);
    assert!(
        err.contains("SCRAM channel binding is not possible through this proxy"),
        "{err}"
    );
    assert!(err.contains("channel_binding=disable"), "{err}");
    let line = proxy.refusal("channel_binding");
    assert_eq!(line["identity"], "uri:spiffe://prod/trainer");

    // libpq itself refuses: no mechanism with channel binding is offered.
    let require = attempt("require");
    assert!(
        !require.status.success(),
        "channel_binding=require logged in"
    );
    assert!(
        stderr(&require).contains(
            "channel binding is required, but server did not offer an authentication method that supports channel binding"
        ),
        "{}",
        stderr(&require)
    );
}

#[test]
fn psql_cancel_reaches_a_tls_upstream() {
    let user = tls_pg_user("upcancel");
    let proxy = ProxyProcess::start(&pg_listener(&tls_pg_upstream(), &db_ca_line()));
    let line = cancel_a_running_query(
        &proxy,
        tls_pg(),
        &conninfo(
            proxy.port(),
            &user.name,
            &user.name,
            &pki().trainer,
            "channel_binding=disable",
        ),
        &user.name,
        &user.password,
    );
    assert_eq!(line["upstream_tls"], "TLSv1_3");
}

fn mariadb_args(port: u16, user: &str) -> Vec<OsString> {
    let p = pki();
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-P".into(),
        port.to_string().into(),
        "-u".into(),
        user.into(),
        "--ssl".into(),
        "--ssl-verify-server-cert".into(),
        format!("--ssl-ca={}", p.ca.display()).into(),
        format!("--ssl-cert={}", p.trainer.cert.display()).into(),
        format!("--ssl-key={}", p.trainer.key.display()).into(),
    ]
}

fn mysql_listener(upstream: &str, table: &str) -> String {
    pg_listener(upstream, table).replace("name = \"pg\"", "name = \"maria\"\nprotocol = \"mysql\"")
}

#[test]
fn mariadb_client_reaches_a_mariadb_that_requires_secure_transport() {
    let p = db_pki();
    let server = MariaDbServer::start(MariaDbOptions {
        ssl: Some(MariaDbSsl {
            cert_file: p.server.chain.clone(),
            key_file: p.server.key.clone(),
            ca_file: p.ca.clone(),
        }),
        require_secure_transport: true,
        ..MariaDbOptions::default()
    })
    .expect("MariaDB with TLS");
    let name = intransit_testkit::unique_name("upmaria");
    let password = format!("pw-{name}");
    server
        .create_user(&name, &password, MariaDbAuth::NativePassword)
        .expect("user");

    let proxy = ProxyProcess::start(&mysql_listener(&server.addr(), &db_ca_line()));
    let out = run_mariadb(
        &mariadb_args(proxy.port(), &name),
        Some(&password),
        "SELECT CURRENT_USER(); SHOW SESSION STATUS LIKE 'Ssl_version'",
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{:#?}", proxy.logs()));
    assert!(out.starts_with(&format!("{name}@")), "{out}");
    assert!(out.contains("Ssl_version\tTLSv1.3"), "{out}");
    let line = proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"] == "connection established"
    });
    assert_eq!(line["upstream_tls"], "TLSv1_3");
    assert_eq!(line["protocol"], "mysql");

    // ed25519 makes the server switch plugins mid-handshake: the relayed
    // AuthSwitchRequest and its answer keep their sequence ids over TLS.
    if server.ed25519_available() {
        let ed = intransit_testkit::unique_name("upmaria-ed");
        server
            .create_user(&ed, "pw-ed", MariaDbAuth::Ed25519)
            .expect("ed25519 user");
        let out = run_mariadb(
            &mariadb_args(proxy.port(), &ed),
            Some("pw-ed"),
            "SELECT CURRENT_USER()",
        )
        .unwrap_or_else(|e| panic!("ed25519: {e:#}"));
        assert!(out.starts_with(&format!("{ed}@")), "{out}");
    }

    // The control: without upstream TLS the server's own rule refuses
    // (MariaDB 10.11 answers a plaintext login under
    // require_secure_transport with 1045, as it does without the proxy).
    let plain = ProxyProcess::start(
        &listener_toml(&server.addr(), "", "")
            .replace("name = \"pg\"", "name = \"maria\"\nprotocol = \"mysql\""),
    );
    let refused = run_mariadb(
        &mariadb_args(plain.port(), &name),
        Some(&password),
        "SELECT 1",
    )
    .expect_err("a plaintext upstream leg logged in");
    let text = format!("{refused:#}");
    assert!(text.contains("1045") || text.contains("3159"), "{text}");

    // A pin mismatch is an ERR 1105 for the client and a reason in the log.
    let mismatch = ProxyProcess::start(&mysql_listener(
        &server.addr(),
        &format!("{}\npins = [\"{WRONG_PIN}\"]", db_ca_line()),
    ));
    let err = run_mariadb(
        &mariadb_args(mismatch.port(), &name),
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
            .contains(&pin_of(&p.server.cert)),
        "{line}"
    );
}

#[test]
fn a_mariadb_without_tls_is_refused_with_err_1105() {
    let server = MariaDbServer::shared().expect("the shared MariaDB");
    let name = intransit_testkit::unique_name("upmariaoff");
    server
        .create_user(&name, "pw", MariaDbAuth::NativePassword)
        .expect("user");
    let proxy = ProxyProcess::start(&mysql_listener(&server.addr(), &db_ca_line()));
    let err = run_mariadb(&mariadb_args(proxy.port(), &name), Some("pw"), "SELECT 1")
        .expect_err("logged in over a plaintext upstream leg");
    let text = format!("{err:#}");
    assert!(text.contains("1105"), "{text}");
    proxy.refusal("upstream_tls_refused");
}

#[test]
fn redis_cli_reaches_redis_on_its_tls_port() {
    let p = db_pki();
    let redis = RedisServer::start_with_tls(RedisTls {
        cert_file: p.server.chain.clone(),
        key_file: p.server.key.clone(),
        ca_file: p.ca.clone(),
    })
    .expect("Redis with TLS");
    let tls_port = redis.tls_port().expect("TLS port");
    let upstream = format!("127.0.0.1:{tls_port}");
    let config = pg_listener(&upstream, &db_ca_line())
        .replace("name = \"pg\"", "name = \"redis\"\nprotocol = \"tls\"");
    let proxy = ProxyProcess::start(&config);
    let cli = intransit_testkit::require_tool("redis-cli", "redis-tools").expect("redis-cli");
    let run = |port: u16, args: &[&str]| {
        Command::new(&cli)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["--tls", "--sni", "localhost", "--cacert"])
            .arg(&pki().ca)
            .arg("--cert")
            .arg(&pki().trainer.cert)
            .arg("--key")
            .arg(&pki().trainer.key)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli")
    };
    let key = intransit_testkit::unique_name("k");
    let out = run(proxy.port(), &["SET", &key, "over-two-tls-legs"]);
    assert_eq!(stdout(&out), "OK", "{}", stderr(&out));
    let out = run(proxy.port(), &["GET", &key]);
    assert_eq!(stdout(&out), "over-two-tls-legs", "{}", stderr(&out));
    let line = proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"] == "connection established"
    });
    assert_eq!(line["upstream_tls"], "TLSv1_3");

    let mismatch = ProxyProcess::start(
        &pg_listener(
            &upstream,
            &format!("{}\npins = [\"{WRONG_PIN}\"]", db_ca_line()),
        )
        .replace("name = \"pg\"", "name = \"redis\"\nprotocol = \"tls\""),
    );
    let out = run(mismatch.port(), &["PING"]);
    assert_ne!(stdout(&out), "PONG");
    mismatch.refusal("pin_mismatch");
}

/// The proxy presents a client certificate Redis does not trust (from
/// the clients' CA, not the database's): a TLS 1.3 server refuses it with
/// an alert after the handshake, which a `tls` listener reads in the copy.
/// That alert is the connection's refusal in the log, the audit event and
/// the metrics, never `ok`.
#[test]
fn a_tls_upstream_refusing_the_proxys_certificate_after_the_handshake_is_the_refusal() {
    let p = db_pki();
    let redis = RedisServer::start_with_tls(RedisTls {
        cert_file: p.server.chain.clone(),
        key_file: p.server.key.clone(),
        ca_file: p.ca.clone(),
    })
    .expect("Redis with TLS");
    let upstream = format!("127.0.0.1:{}", redis.tls_port().expect("TLS port"));
    let table = format!(
        "{}\nserver_name = \"localhost\"\ncert = \"{}\"\nkey = \"{}\"",
        db_ca_line(),
        pki().trainer.chain.display(),
        pki().trainer.key.display()
    );
    let proxy = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        pg_listener(&upstream, &table)
            .replace("name = \"pg\"", "name = \"redis\"\nprotocol = \"tls\"")
    ));
    let cli = intransit_testkit::require_tool("redis-cli", "redis-tools").expect("redis-cli");
    let out = Command::new(&cli)
        .args(["-h", "127.0.0.1", "-p", &proxy.port().to_string()])
        .args(["--tls", "--sni", "localhost", "--cacert"])
        .arg(&pki().ca)
        .arg("--cert")
        .arg(&pki().trainer.cert)
        .arg("--key")
        .arg(&pki().trainer.key)
        .arg("PING")
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli");
    assert_ne!(stdout(&out), "PONG");
    let line = proxy.refusal("upstream_tls_failed");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("after the handshake"), "{line}");
    assert_eq!(line["identity"], "uri:spiffe://prod/trainer", "{line}");
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection audit" && v["outcome"] == "upstream_tls_failed"
    });
    let m = proxy.metrics();
    let count = |outcome| {
        m.sum(
            "intransit_handshakes_total",
            &[("listener", "redis"), ("outcome", outcome)],
        )
    };
    assert_eq!(count("upstream_tls_failed"), 1.0, "{}", m.text);
    assert_eq!(count("ok"), 0.0, "{}", m.text);
}

#[test]
fn each_route_encrypts_its_own_upstream_leg() {
    // One port: the route "secure.db.internal" leads to the TLS PostgreSQL
    // over TLS, the default route to the plaintext shared PostgreSQL.
    let secure_user = tls_pg_user("uproute");
    let plain_user = db_user("uproute-plain");
    let dir = tempfile::tempdir().expect("temp dir");
    let route_cert = pki()
        .authority
        .issue(&intransit_pki::IssueRequest {
            kind: CertificateKind::Server,
            common_name: "secure.db.internal".into(),
            dns_names: vec!["secure.db.internal".into()],
            ip_addresses: vec![],
            uris: vec![],
            key: KeyAlgorithm::EcdsaP256,
            validity: Validity::days_from_now(5),
        })
        .expect("route certificate")
        .write_to(&dir.path().join("route"))
        .expect("writing the route certificate");
    let config = format!(
        r#"{}
[[listener.route]]
server_name = "secure.db.internal"
upstream = "{}"
tls = {{ cert = "{}", key = "{}" }}
upstream_tls = {{ ca = "{}", server_name = "localhost" }}
"#,
        listener_toml(&pg_upstream(), "", ""),
        tls_pg_upstream(),
        route_cert.chain.display(),
        route_cert.key.display(),
        db_pki().ca.display(),
    );
    let proxy = ProxyProcess::start(&config);
    let p = pki();
    let secure = psql(
        &format!(
            "host=secure.db.internal hostaddr=127.0.0.1 port={} user={u} dbname={u} sslmode=verify-full sslrootcert={ca} sslcert={c} sslkey={k} channel_binding=disable connect_timeout=10",
            proxy.port(),
            u = secure_user.name,
            ca = p.ca.display(),
            c = p.trainer.cert.display(),
            k = p.trainer.key.display(),
        ),
        SSL_OF_SESSION,
        Some(&secure_user.password),
    );
    assert!(secure.status.success(), "{}", stderr(&secure));
    assert_eq!(stdout(&secure), "t|TLSv1.3");

    let plain = psql(
        &conninfo(
            proxy.port(),
            &plain_user.name,
            &plain_user.name,
            &p.trainer,
            "",
        ),
        "SELECT count(*) FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
        Some(&plain_user.password),
    );
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert_eq!(stdout(&plain), "0");

    for (route, upstream_tls) in [("secure.db.internal", "TLSv1_3"), ("default", "off")] {
        proxy.wait_for_log(Duration::from_secs(5), |v| {
            v["message"] == "connection established"
                && v["route"] == route
                && v["upstream_tls"] == upstream_tls
        });
    }
}

#[test]
fn check_config_names_bad_upstream_tls_keys_and_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let check = |name: &str, table: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pg_listener("127.0.0.1:5432", table)).expect("write");
        Command::new(BIN)
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("check-config")
    };
    let good = check("good.toml", &db_ca_line());
    assert!(good.status.success(), "{}", stderr(&good));

    let cases = [
        (
            "bad-pin.toml",
            format!("{}\npins = [\"sha1/abc\"]", db_ca_line()),
            "listener[0].upstream_tls.pins[0]",
        ),
        (
            "no-pins.toml",
            "mode = \"pinned\"".to_owned(),
            "listener[0].upstream_tls.pins",
        ),
        (
            "no-ca.toml",
            "mode = \"verify-ca\"".to_owned(),
            "listener[0].upstream_tls.ca",
        ),
        (
            "typo.toml",
            format!("{}\nsslmode = \"require\"", db_ca_line()),
            "sslmode",
        ),
        (
            "missing-ca.toml",
            "ca = \"/nonexistent/db-ca.pem\"".to_owned(),
            "/nonexistent/db-ca.pem",
        ),
        (
            "missing-key.toml",
            format!(
                "{}\ncert = \"{}\"\nkey = \"/nonexistent/proxy-key.pem\"",
                db_ca_line(),
                db_pki().proxy_client.chain.display()
            ),
            "/nonexistent/proxy-key.pem",
        ),
    ];
    for (name, table, expected) in cases {
        let out = check(name, &table);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(stderr(&out).contains(expected), "{name}: {}", stderr(&out));
    }
}

#[test]
fn a_database_that_never_answers_the_sslrequest_is_bounded_by_the_connect_timeout() {
    // The sentinel accepts and reads but never answers.
    let sentinel = Sentinel::start();
    let upstream = sentinel.addr.to_string();
    let config = pg_listener(&upstream, &db_ca_line()).replace(
        "name = \"pg\"",
        "name = \"pg\"\nupstream_connect_timeout = \"1s\"",
    );
    let proxy = ProxyProcess::start(&config);
    let user = DbUser {
        name: "nobody".into(),
        password: "pw".into(),
    };
    let out = psql_as(proxy.port(), &user, "SELECT 1");
    assert_unavailable(&out, &upstream);
    // The reason proves the connect timeout cut it short: the handshake
    // timeout (10s) would have logged `timeout`.
    let line = proxy.refusal("upstream_unavailable");
    assert!(
        line["detail"]
            .as_str()
            .unwrap_or("")
            .contains("did not answer the SSLRequest"),
        "{line}"
    );
    // Only the proxy's own 8-byte SSLRequest reached it, no StartupMessage.
    assert_eq!(sentinel.bytes(), 8);
}
