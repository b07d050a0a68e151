//! A PostgreSQL with the self-signed certificate PostgreSQL's own
//! documentation makes (`openssl req -new -x509 -nodes -subj /CN=...`:
//! CA:TRUE, the name in the common name only), trusted by naming that very
//! file as the CA. Each verdict of `intransit scan`, a client-mode and a
//! server-mode upstream leg is compared with libpq's
//! (`sslmode=verify-full sslrootcert=server.crt`) on the same server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use intransit_testkit::{PgOptions, PgServer, PgSsl};
use serde_json::Value;

use crate::support::*;
use crate::upstream_tls::db_pki;

/// A certificate and its key, PEM files.
struct SelfSigned {
    cert: PathBuf,
    key: PathBuf,
}

/// `openssl req -new -x509` as PostgreSQL's documentation shows it, in `dir`.
fn openssl_self_signed(dir: &Path, name: &str, cn: &str) -> SelfSigned {
    let openssl = intransit_testkit::require_tool("openssl", "openssl").expect("openssl");
    let made = SelfSigned {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    let out = Command::new(openssl)
        .args(["req", "-new", "-x509", "-days", "365", "-nodes", "-text"])
        .arg("-out")
        .arg(&made.cert)
        .arg("-keyout")
        .arg(&made.key)
        .args(["-subj", &format!("/CN={cn}")])
        .output()
        .expect("running openssl req");
    assert!(out.status.success(), "{}", stderr(&out));
    made
}

/// A self-signed CA:TRUE certificate for `cn` that expired yesterday,
/// which `openssl req -x509` cannot make.
fn expired_self_signed(dir: &Path, cn: &str) -> SelfSigned {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("certificate");
    let made = SelfSigned {
        cert: dir.join("expired.crt"),
        key: dir.join("expired.key"),
    };
    std::fs::write(&made.cert, cert.pem()).expect("writing the certificate");
    std::fs::write(&made.key, key.serialize_pem()).expect("writing the key");
    made
}

fn pg_serving(cert: &SelfSigned) -> PgServer {
    PgServer::start(PgOptions {
        ssl: Some(PgSsl {
            cert_file: cert.cert.clone(),
            key_file: cert.key.clone(),
            ca_file: db_pki().ca.clone(),
        }),
        // Plaintext logins are rejected, so every login that works went
        // over TLS.
        hba_first: vec!["hostnossl all all 127.0.0.1/32 reject".into()],
        ..PgOptions::default()
    })
    .expect("PostgreSQL with a self-signed certificate")
}

/// The files of these tests: the server's certificate (CN localhost),
/// another self-signed certificate for the same name, and an expired one.
struct Files {
    _dir: tempfile::TempDir,
    server: SelfSigned,
    stranger: SelfSigned,
    expired: SelfSigned,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        Files {
            server: openssl_self_signed(dir.path(), "server", "localhost"),
            stranger: openssl_self_signed(dir.path(), "stranger", "localhost"),
            expired: expired_self_signed(dir.path(), "localhost"),
            _dir: dir,
        }
    })
}

/// A PostgreSQL serving [`Files::server`], shared by this module.
fn self_signed_pg() -> &'static PgServer {
    static PG: OnceLock<PgServer> = OnceLock::new();
    PG.get_or_init(|| pg_serving(&files().server))
}

/// A user with a password and a database of its own on `pg`.
fn user_on(pg: &PgServer, prefix: &str) -> DbUser {
    let name = intransit_testkit::unique_name(prefix);
    let password = format!("pw-{name}");
    pg.create_user(&name, &password).expect("user");
    pg.create_database(&name, &name).expect("database");
    DbUser { name, password }
}

/// libpq straight to `pg`, checking its certificate against `root` for
/// the name `host` (the connection goes to 127.0.0.1 whatever the name).
fn libpq(pg: &PgServer, user: &DbUser, mode: &str, root: &Path, host: &str) -> Output {
    psql(
        &format!(
            "host={host} hostaddr=127.0.0.1 port={port} user={user} dbname={user} sslmode={mode} sslrootcert={root} connect_timeout=10",
            port = pg.port(),
            user = user.name,
            root = root.display(),
        ),
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        Some(&user.password),
    )
}

/// An application through a client-mode listener whose upstream leg
/// trusts `ca` (and `extra` lines).
fn client_mode(upstream: &str, ca: &Path, extra: &str) -> ProxyProcess {
    ProxyProcess::start(&format!(
        r#"
shutdown_grace = "5s"
[[listener]]
name = "app"
mode = "client"
listen = "127.0.0.1:0"
upstream = "{upstream}"
[listener.upstream_tls]
ca = "{ca}"
{extra}
"#,
        ca = ca.display()
    ))
}

fn psql_plain(proxy: &ProxyProcess, user: &DbUser) -> Output {
    psql(
        &format!(
            "host=127.0.0.1 port={} user={user} dbname={user} sslmode=disable connect_timeout=10",
            proxy.port(),
            user = user.name
        ),
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        Some(&user.password),
    )
}

/// The application (or client) was turned away with the generic message.
fn assert_refused(out: &Output) {
    assert!(!out.status.success(), "the login worked: {}", stdout(out));
    assert!(
        stderr(out).contains("the database is unavailable"),
        "{}",
        stderr(out)
    );
}

/// No log line or finding shows a Rust value where words belong.
fn assert_in_words(text: &str) {
    for rust in ["OtherError", "CaUsedAsEndEntity", "Other(", "DnsName("] {
        assert!(!text.contains(rust), "{rust} in {text}");
    }
}

#[test]
fn a_self_signed_postgres_is_trusted_as_its_own_ca_like_libpq() {
    let pg = self_signed_pg();
    let server_crt = &files().server.cert;
    let user = user_on(pg, "selfsigned");
    let upstream = format!("127.0.0.1:{}", pg.port());

    // libpq accepts the certificate as its own root, for its name.
    let out = libpq(pg, &user, "verify-full", server_crt, "localhost");
    assert!(out.status.success(), "libpq: {}", stderr(&out));
    assert_eq!(stdout(&out), "t");

    // intransit scan, with the same file as --ca and the same name.
    let out = Command::new(BIN)
        .args([
            "scan",
            &format!("postgres://{upstream}"),
            "--sni",
            "localhost",
        ])
        .args(["--format", "json", "--timeout", "5s", "--ca"])
        .arg(server_crt)
        .output()
        .expect("running intransit scan");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    let status_of = |requirement: &str| {
        findings
            .iter()
            .filter(|f| f["requirement"] == requirement)
            .map(|f| format!("{} {}", f["status"], f["message"]))
            .collect::<Vec<_>>()
    };
    for requirement in ["cert.trusted", "cert.hostname"] {
        let found = status_of(requirement);
        assert!(
            !found.is_empty() && found.iter().all(|f| f.starts_with("\"pass\"")),
            "{requirement}: {found:?}\n{}",
            stderr(&out)
        );
    }
    assert_in_words(&stdout(&out));

    // A client-mode listener's upstream leg, verify-full against the name.
    let client = client_mode(&upstream, server_crt, "server_name = \"localhost\"");
    let out = psql_plain(&client, &user);
    assert!(out.status.success(), "client mode: {}", stderr(&out));
    assert_eq!(stdout(&out), "t");

    // A server-mode listener's upstream leg.
    let server = ProxyProcess::start(&format!(
        "{}[listener.upstream_tls]\nca = \"{}\"\nserver_name = \"localhost\"\n",
        listener_toml(&upstream, "", ""),
        server_crt.display()
    ));
    let out = psql(
        &conninfo(
            server.port(),
            &user.name,
            &user.name,
            &pki().trainer,
            "channel_binding=disable",
        ),
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        Some(&user.password),
    );
    assert!(out.status.success(), "server mode: {}", stderr(&out));
    assert_eq!(stdout(&out), "t");
}

#[test]
fn a_self_signed_certificate_is_still_checked_for_its_name_and_its_identity() {
    let pg = self_signed_pg();
    let f = files();
    let user = user_on(pg, "selfsigned-no");
    let upstream = format!("127.0.0.1:{}", pg.port());

    // The name: the certificate names localhost, not 127.0.0.1 (the name
    // the upstream's address gives), for libpq as for the proxy.
    let out = libpq(pg, &user, "verify-full", &f.server.cert, "127.0.0.1");
    assert!(!out.status.success(), "libpq accepted a wrong name");
    let wrong_name = client_mode(&upstream, &f.server.cert, "");
    assert_refused(&psql_plain(&wrong_name, &user));
    let line = wrong_name.refusal("upstream_name_mismatch");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("127.0.0.1"), "{detail}");
    assert!(detail.contains("CN=localhost"), "{detail}");
    assert_in_words(detail);
    // verify-ca forgives the name alone, as libpq's does.
    let out = libpq(pg, &user, "verify-ca", &f.server.cert, "127.0.0.1");
    assert!(out.status.success(), "libpq verify-ca: {}", stderr(&out));
    let ca_only = client_mode(&upstream, &f.server.cert, "mode = \"verify-ca\"");
    let out = psql_plain(&ca_only, &user);
    assert!(out.status.success(), "verify-ca: {}", stderr(&out));

    // Another self-signed certificate for the same name is not this one.
    let out = libpq(pg, &user, "verify-full", &f.stranger.cert, "localhost");
    assert!(!out.status.success(), "libpq trusted another certificate");
    let stranger = client_mode(&upstream, &f.stranger.cert, "server_name = \"localhost\"");
    assert_refused(&psql_plain(&stranger, &user));
    let line = stranger.refusal("upstream_ca_as_leaf");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("self-signed"), "{detail}");
    assert!(detail.contains("mode = \"pinned\""), "{detail}");
    let pin = crate::upstream_tls::pin_of(&f.server.cert);
    assert!(
        detail.contains(&pin),
        "the pin to configure is missing: {detail}"
    );
    assert_in_words(detail);

    // Scan says the same in words.
    let out = Command::new(BIN)
        .args([
            "scan",
            &format!("postgres://{upstream}"),
            "--sni",
            "localhost",
        ])
        .args(["--format", "json", "--timeout", "5s", "--ca"])
        .arg(&f.stranger.cert)
        .output()
        .expect("running intransit scan");
    let text = stdout(&out);
    let report: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let trusted: Vec<&Value> = report["findings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|f| f["requirement"] == "cert.trusted")
                .collect()
        })
        .unwrap_or_default();
    assert!(
        trusted.iter().any(|f| f["status"] == "fail"
            && f["message"]
                .as_str()
                .unwrap_or_default()
                .contains("self-signed")),
        "{trusted:?}\n{}",
        stderr(&out)
    );
    assert_in_words(&text);
}

#[test]
fn an_expired_self_signed_certificate_is_refused_as_expired_like_libpq() {
    let f = files();
    let pg = pg_serving(&f.expired);
    let user = user_on(&pg, "selfsigned-exp");
    let upstream = format!("127.0.0.1:{}", pg.port());

    let out = libpq(&pg, &user, "verify-full", &f.expired.cert, "localhost");
    // libpq says only "certificate verify failed"; the proxy says why.
    assert!(
        !out.status.success(),
        "libpq accepted an expired certificate"
    );
    assert!(
        stderr(&out).contains("certificate verify failed"),
        "{}",
        stderr(&out)
    );

    let client = client_mode(&upstream, &f.expired.cert, "server_name = \"localhost\"");
    assert_refused(&psql_plain(&client, &user));
    let line = client.refusal("upstream_expired");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("expired at"), "{detail}");
    assert_in_words(detail);
}
