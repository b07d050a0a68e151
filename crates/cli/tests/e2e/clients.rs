//! Stock clients through the proxy: psql, pgbench, openssl s_client and a
//! Rust client library, all with `verify-full` and client certificates.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

#[test]
fn psql_runs_queries_through_the_proxy_with_tls13() {
    let user = db_user("psql");
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    let out = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, ""),
        "SELECT current_user || ' ' || 6 * 7",
        Some(&user.password),
    );
    assert!(out.status.success(), "psql failed: {}", stderr(&out));
    assert_eq!(stdout(&out), format!("{} 42", user.name));
    let established = proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"] == "connection established"
    });
    assert_eq!(established["tls_version"], "TLSv1_3");
    assert_eq!(established["identity"], "uri:spiffe://prod/trainer");
    assert_eq!(established["user"], user.name.as_str());
}

#[test]
fn pgbench_initializes_and_runs_through_the_proxy() {
    let user = db_user("bench");
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    let pgbench = intransit_testkit::require_tool("pgbench", "postgresql-client").expect("pgbench");
    let ci = conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, "");
    let init = Command::new(&pgbench)
        .args(["-i", "-s", "1", "-q", &ci])
        .env("PGPASSWORD", &user.password)
        .stdin(Stdio::null())
        .output()
        .expect("pgbench -i");
    assert!(init.status.success(), "pgbench -i: {}", stderr(&init));
    let run = Command::new(&pgbench)
        .args(["-c", "2", "-t", "50", "-n", &ci])
        .env("PGPASSWORD", &user.password)
        .stdin(Stdio::null())
        .output()
        .expect("pgbench");
    assert!(run.status.success(), "pgbench: {}", stderr(&run));
    let out = stdout(&run);
    assert!(
        out.contains("number of transactions actually processed: 100/100"),
        "{out}"
    );
    assert!(out.contains("number of failed transactions: 0"), "{out}");
}

fn s_client(port: u16, extra: &[&str]) -> std::process::Output {
    let openssl = intransit_testkit::require_tool("openssl", "openssl").expect("openssl");
    let p = pki();
    Command::new(openssl)
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
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
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client")
}

#[test]
fn openssl_starttls_postgres_negotiates_tls13_and_tls12_is_refused() {
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    let ok = s_client(proxy.port(), &["-brief"]);
    let text = format!("{}\n{}", stdout(&ok), stderr(&ok));
    assert!(text.contains("Protocol version: TLSv1.3"), "{text}");
    assert!(text.contains("Verification: OK"), "{text}");

    let old = s_client(proxy.port(), &["-brief", "-tls1_2"]);
    let text = format!("{}\n{}", stdout(&old), stderr(&old));
    assert!(!old.status.success(), "TLS 1.2 was accepted: {text}");
    assert!(!text.contains("Protocol version: TLSv1.2"), "{text}");
    proxy.refusal("tls_version");
}

#[test]
fn min_version_12_accepts_tls12() {
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "min_version = \"1.2\"", ""));
    let out = s_client(proxy.port(), &["-brief", "-tls1_2"]);
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(text.contains("Protocol version: TLSv1.2"), "{text}");
}

#[test]
fn tokio_postgres_client_queries_through_the_proxy() {
    let user = db_user("rustclient");
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    let tls_config = rustls_client(Some(&pki().trainer), &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let answer: i32 = rt.block_on(async {
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new((*tls_config).clone());
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=localhost port={} user={} password={} dbname={} sslmode=require",
                proxy.port(),
                user.name,
                user.password,
                user.name
            ),
            connector,
        )
        .await
        .expect("tokio-postgres connect through the proxy");
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT $1::int + 1", &[&41i32])
            .await
            .expect("query");
        row.get(0)
    });
    assert_eq!(answer, 42);
}
