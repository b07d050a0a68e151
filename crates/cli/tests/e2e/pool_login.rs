//! The pool's own logins to PostgreSQL, through the binary: a password
//! from `auth_file` (SCRAM over TCP, and a wrong one whose 28P01 reaches
//! the client as the server sent it), and a client certificate the proxy
//! mints for each database user, which a PostgreSQL with TLS and
//! `hostssl ... cert` checks itself.

use std::os::unix::fs::PermissionsExt;
use std::sync::OnceLock;

use intransit_testkit::{PgOptions, PgServer, PgSsl};

use std::time::Duration;

use crate::support::*;

#[test]
fn password_from_auth_file_and_a_wrong_one_relayed_as_the_server_said_it() {
    let user = db_user("pool_pw");
    let wrong = db_user("pool_pw_wrong");
    let dir = tempfile::tempdir().unwrap();
    let auth_file = dir.path().join("userlist.txt");
    std::fs::write(
        &auth_file,
        format!(
            "; the pool's passwords\n\"{}\" \"{}\"\n\"{}\" \"not-{}\"\n",
            user.name, user.password, wrong.name, wrong.password
        ),
    )
    .unwrap();
    std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let proxy = ProxyProcess::start(&listener_toml(
        &pg_upstream(),
        "",
        &format!(
            "[listener.pool]\nserver_auth = \"password\"\nauth_file = \"{}\"",
            auth_file.display()
        ),
    ));

    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    let out = psql(&ci, "SELECT current_user", None);
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert_eq!(stdout(&out), user.name);

    let ci = conninfo(proxy.port(), &wrong.name, &wrong.name, &pki().trainer, "");
    let out = psql(&ci, "SELECT 1", None);
    assert!(!out.status.success(), "logged in with a wrong password");
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "password authentication failed for user \"{}\"",
            wrong.name
        )),
        "{said}"
    );
    let line = proxy.refusal("upstream_refused");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("28P01"), "{line}");
    assert!(!detail.contains(&wrong.password), "{line}");
}

/// A PostgreSQL with TLS that logs everyone in by client certificate,
/// trusting the test CA, which also mints the pool's certificates.
fn cert_pg() -> &'static PgServer {
    static PG: OnceLock<PgServer> = OnceLock::new();
    PG.get_or_init(|| {
        let p = pki();
        PgServer::start(PgOptions {
            ssl: Some(PgSsl {
                cert_file: p.server.chain.clone(),
                key_file: p.server.key.clone(),
                ca_file: p.ca.clone(),
            }),
            hba_first: vec![
                "hostssl all all 127.0.0.1/32 cert".into(),
                "hostnossl all all 127.0.0.1/32 reject".into(),
            ],
            ..PgOptions::default()
        })
        .expect("PostgreSQL with TLS")
    })
}

#[test]
fn cert_logins_present_a_certificate_minted_for_each_database_user() {
    let pg = cert_pg();
    let users: Vec<String> = ["pool_cert_a", "pool_cert_b"]
        .iter()
        .map(|prefix| {
            let name = intransit_testkit::unique_name(prefix);
            pg.psql("postgres", &format!("CREATE ROLE \"{name}\" LOGIN"))
                .expect("role");
            name
        })
        .collect();
    let proxy = ProxyProcess::start(&listener_toml(
        &format!("127.0.0.1:{}", pg.port()),
        "",
        &format!(
            "[listener.pool]\nserver_auth = \"cert\"\ncert_authority = \"{}\"\n[listener.upstream_tls]\nmode = \"verify-full\"\nca = \"{}\"",
            pki().dir.display(),
            pki().ca.display()
        ),
    ));
    for user in &users {
        let ci = conninfo(proxy.port(), user, "postgres", &pki().trainer, "");
        let out = psql(
            &ci,
            "SELECT current_user, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            None,
        );
        assert!(out.status.success(), "psql: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{user}|/CN={user}"));
    }
    let logins: Vec<_> = proxy
        .logs()
        .into_iter()
        .filter(|v| v["message"] == "server connection logged in")
        .collect();
    assert_eq!(logins.len(), 2, "{logins:?}");
    for login in &logins {
        assert_eq!(login["server_auth"], "cert", "{login}");
        assert_eq!(login["upstream_tls"], "TLSv1_3", "{login}");
    }
}

/// A cert-mode pool on `cert_pg`, with the upstream CA read from `ca`,
/// `extra` listener lines and `pool` lines.
fn cert_pool_with(ca: &std::path::Path, extra: &str, pool: &str) -> ProxyProcess {
    ProxyProcess::start(&listener_toml(
        &format!("127.0.0.1:{}", cert_pg().port()),
        "",
        &format!(
            "{extra}\n[listener.pool]\n{pool}\nserver_auth = \"cert\"\ncert_authority = \"{}\"\n[listener.upstream_tls]\nmode = \"verify-full\"\nca = \"{}\"",
            pki().dir.display(),
            ca.display()
        ),
    ))
}

/// A password pool (`auth_file`) on the shared PostgreSQL and a cert
/// pool on `cert_pg`, both in `mode` with 2 server connections.
fn password_and_cert_pools(
    mode: &str,
    auth_file: &std::path::Path,
) -> (ProxyProcess, ProxyProcess) {
    let password = ProxyProcess::start(&listener_toml(
        &pg_upstream(),
        "",
        &format!(
            "[listener.pool]\nmode = \"{mode}\"\nsize = 2\nserver_auth = \"password\"\nauth_file = \"{}\"",
            auth_file.display()
        ),
    ));
    let cert = cert_pool_with(&pki().ca, "", &format!("mode = \"{mode}\"\nsize = 2"));
    (password, cert)
}

/// A cert-mode pool on `cert_pg` in transaction mode.
fn cert_pool(ca: &std::path::Path, extra: &str) -> ProxyProcess {
    cert_pool_with(ca, extra, "")
}

fn role(prefix: &str) -> String {
    let name = intransit_testkit::unique_name(prefix);
    cert_pg()
        .psql("postgres", &format!("CREATE ROLE \"{name}\" LOGIN"))
        .expect("role");
    name
}

fn server_logins(proxy: &ProxyProcess) -> usize {
    proxy
        .logs()
        .iter()
        .filter(|v| v["message"] == "server connection logged in")
        .count()
}

#[test]
fn a_user_the_mapping_denies_never_reaches_postgresql() {
    let (allowed, denied) = (role("pool_map_ok"), role("pool_map_no"));
    let proxy = cert_pool(
        &pki().ca,
        &format!("[[listener.db_users]]\nidentity = \"cn:trainer\"\nusers = [\"{allowed}\"]"),
    );
    let ci = conninfo(proxy.port(), &denied, "postgres", &pki().trainer, "");
    let out = psql(&ci, "SELECT 1", None);
    assert!(!out.status.success(), "a denied user logged in");
    proxy.refusal("user_denied");
    assert_eq!(
        server_logins(&proxy),
        0,
        "the denied user reached PostgreSQL"
    );
    let seen = cert_pg()
        .psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{denied}'"),
        )
        .expect("pg_stat_activity");
    assert_eq!(seen, "0");
    let ci = conninfo(proxy.port(), &allowed, "postgres", &pki().trainer, "");
    let out = psql(&ci, "SELECT current_user", None);
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert_eq!(server_logins(&proxy), 1);
}

#[test]
fn new_upstream_material_replaces_server_connections_without_a_client_error() {
    let user = role("pool_reload");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("upstream-ca.pem");
    std::fs::copy(&pki().ca, &ca).expect("copy CA");
    let proxy = cert_pool(&ca, "");
    let ci = conninfo(proxy.port(), &user, "postgres", &pki().trainer, "");
    let mut client = crate::pool::Interactive::start(&ci);
    assert_eq!(client.query("SELECT 1"), "1");
    // (psql -q prints nothing for BEGIN and COMMIT themselves.)
    assert_eq!(client.query("BEGIN; SELECT 2"), "2");
    assert_eq!(server_logins(&proxy), 1);
    // The upstream trust anchors change (a second CA joins the bundle):
    // new material for the upstream leg.
    let extra = RawCa::new("pool-reload-extra");
    let mut bundle = std::fs::read(&pki().ca).expect("CA");
    bundle.extend(std::fs::read(&extra.ca).expect("extra CA"));
    std::fs::write(&ca, bundle).expect("write bundle");
    signal(proxy.pid(), "HUP");
    proxy.wait_for_log(Duration::from_secs(15), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("pool credentials or upstream TLS changed"))
    });
    // The open transaction finishes on its own server connection...
    assert_eq!(client.query("SELECT 3; COMMIT"), "3");
    assert_eq!(server_logins(&proxy), 1);
    // ...which is then replaced: the next transaction logs in anew.
    assert_eq!(client.query("SELECT 4"), "4");
    assert_eq!(server_logins(&proxy), 2);
    let out = client.finish();
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert_eq!(stderr(&out), "", "the client saw an error");
}

fn pgbench_select(ci: &str) -> std::process::Output {
    let pgbench = intransit_testkit::require_tool("pgbench", "postgresql-client").expect("pgbench");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("select.sql");
    std::fs::write(&script, "SELECT current_user, pg_backend_pid();\n").expect("script");
    std::process::Command::new(pgbench)
        .args(["-n", "-c", "6", "-j", "2", "-t", "30", "-f"])
        .arg(&script)
        .arg(ci)
        .env_remove("PGPASSWORD")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("pgbench")
}

#[test]
fn pgbench_runs_through_password_and_cert_pools_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let user = db_user("pool_pw_bench");
    let auth_file = write_userlist(dir.path(), &user);
    let cert_user = role("pool_cert_bench");
    for mode in ["transaction", "session"] {
        let (password, cert) = password_and_cert_pools(mode, &auth_file);
        for (proxy, name, db) in [
            (&password, user.name.as_str(), user.name.as_str()),
            (&cert, cert_user.as_str(), "postgres"),
        ] {
            let ci = conninfo(proxy.port(), name, db, &pki().trainer, "");
            let run = pgbench_select(&ci);
            assert!(run.status.success(), "{mode} {name}: {}", stderr(&run));
            let out = String::from_utf8_lossy(&run.stdout).into_owned();
            assert!(
                out.contains("number of transactions actually processed: 180/180"),
                "{mode} {name}: {out}"
            );
        }
    }
}

/// What psycopg 3 runs through a password or cert pool: a table of its
/// own, ten transactions, then what the server saw.
const DRIVER_SCRIPT: &str = r#"
import sys, psycopg
ci = sys.argv[1]
with psycopg.connect(ci) as conn:
    conn.execute("DROP TABLE IF EXISTS drivers_psycopg")
    conn.execute("CREATE TABLE drivers_psycopg (n int)")
    conn.commit()
    for i in range(10):
        conn.execute("INSERT INTO drivers_psycopg VALUES (%s)", (i,))
        conn.commit()
    row = conn.execute("SELECT count(*), sum(n), current_user FROM drivers_psycopg").fetchone()
    conn.execute("DROP TABLE drivers_psycopg")
    conn.commit()
    print(row[0], row[1], row[2])
"#;

#[test]
fn psycopg_and_tokio_postgres_run_through_password_and_cert_pools_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let user = db_user("pool_pw_drivers");
    let auth_file = write_userlist(dir.path(), &user);
    // A role with a database of its own on the PostgreSQL that checks
    // client certificates (PostgreSQL 15 lets no role create tables in
    // another owner's public schema).
    let cert_user = role("pool_cert_drivers");
    cert_pg()
        .psql(
            "postgres",
            &format!("CREATE DATABASE \"{cert_user}\" OWNER \"{cert_user}\""),
        )
        .expect("database");
    for mode in ["transaction", "session"] {
        let (password, cert) = password_and_cert_pools(mode, &auth_file);
        for (proxy, name) in [(&password, user.name.as_str()), (&cert, cert_user.as_str())] {
            // No password anywhere on the client: its certificate is the
            // login, and the pool logs in with its own credentials.
            let ci = conninfo(proxy.port(), name, name, &pki().trainer, "");
            let out = crate::pool::psycopg(DRIVER_SCRIPT, &ci);
            assert_eq!(out, format!("10 45 {name}"), "psycopg, {mode}, {name}");

            let tls_config = rustls_client(Some(&pki().trainer), &[]);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let (sum, seen_as): (i64, String) = rt.block_on(async {
                let connector =
                    tokio_postgres_rustls::MakeRustlsConnect::new((*tls_config).clone());
                let (mut client, connection) = tokio_postgres::connect(
                    &format!(
                        "host=localhost port={} user={name} dbname={name} sslmode=require",
                        proxy.port()
                    ),
                    connector,
                )
                .await
                .expect("tokio-postgres connect through the pool");
                tokio::spawn(connection);
                client
                    .batch_execute(
                        "DROP TABLE IF EXISTS drivers_tokio; CREATE TABLE drivers_tokio (n bigint)",
                    )
                    .await
                    .expect("create");
                for i in 0..10i64 {
                    let tx = client.transaction().await.expect("begin");
                    tx.execute("INSERT INTO drivers_tokio VALUES ($1)", &[&i])
                        .await
                        .expect("insert");
                    tx.commit().await.expect("commit");
                }
                let row = client
                    .query_one(
                        "SELECT sum(n)::bigint, current_user::text FROM drivers_tokio",
                        &[],
                    )
                    .await
                    .expect("sum");
                client
                    .batch_execute("DROP TABLE drivers_tokio")
                    .await
                    .expect("drop");
                (row.get(0), row.get(1))
            });
            assert_eq!(
                (sum, seen_as.as_str()),
                (45, name),
                "tokio-postgres, {mode}"
            );
        }
    }
}

#[test]
fn cancel_goes_to_the_server_over_the_tls_upstream_leg() {
    let user = role("pool_cert_cancel");
    let proxy = cert_pool(&pki().ca, "");
    let ci = conninfo(proxy.port(), &user, "postgres", &pki().trainer, "");
    let forwarded = cancel_a_running_query(&proxy, cert_pg(), &ci, &user, "");
    assert_eq!(forwarded["upstream_tls"], "TLSv1_3", "{forwarded}");
}

#[test]
fn a_credentials_reload_that_fails_is_a_status_warning_until_one_works() {
    let user = db_user("pool_reload_pw");
    let dir = tempfile::tempdir().unwrap();
    let auth_file = write_userlist(dir.path(), &user);
    let proxy = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        listener_toml(
            &pg_upstream(),
            "",
            &format!(
                "[listener.pool]\nserver_auth = \"password\"\nauth_file = \"{}\"",
                auth_file.display()
            ),
        )
    ));
    let status = || -> serde_json::Value {
        let (code, body) = http_get(proxy.admin_addr(), "/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    };
    let reload = |n: usize| {
        signal(proxy.pid(), "HUP");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while proxy
            .logs()
            .iter()
            .filter(|v| v["message"] == "reload round finished" && v["trigger"] == "sighup")
            .count()
            < n
        {
            assert!(std::time::Instant::now() < deadline, "no reload round");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(status()["pools"][0]["credentials_error"].is_null());
    // Readable by others: refused on reload, the previous credentials stay.
    std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    reload(1);
    let s = status();
    let error = s["pools"][0]["credentials_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("0600") || error.contains("mode"), "{s}");
    let warnings = s["warnings"].to_string();
    assert!(warnings.contains("could not be reloaded"), "{s}");
    assert_eq!(
        s["ready"], true,
        "the previous credentials still log in: {s}"
    );
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    let out = psql(&ci, "SELECT 1", None);
    assert!(out.status.success(), "psql: {}", stderr(&out));
    // Fixed: the next reload clears it.
    std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    reload(2);
    let s = status();
    assert!(s["pools"][0]["credentials_error"].is_null(), "{s}");
    assert!(
        !s["warnings"].to_string().contains("could not be reloaded"),
        "{s}"
    );
}
