//! SNI routes: one listener, two PostgreSQL servers, chosen by the TLS
//! server name that libpq sends (`host=` a name, `hostaddr=` 127.0.0.1).

use intransit_pki::{CertificateKind, Validity};
use intransit_testkit::{PgOptions, PgServer};

use crate::support::*;

fn route_cert(dir: &std::path::Path, name: &str) -> intransit_pki::CertificatePaths {
    let p = pki();
    let issued = p
        .authority
        .issue(&intransit_pki::IssueRequest {
            kind: CertificateKind::Server,
            common_name: name.to_owned(),
            dns_names: vec![name.to_owned()],
            ip_addresses: vec![],
            uris: vec![],
            key: intransit_pki::KeyAlgorithm::EcdsaP256,
            validity: Validity::days_from_now(5),
        })
        .expect("route certificate");
    issued.write_to(&dir.join(name)).expect("write")
}

fn conn(port: u16, host: &str, user: &DbUser) -> String {
    let p = pki();
    format!(
        "host={host} hostaddr=127.0.0.1 port={port} user={u} dbname=postgres sslmode=verify-full sslrootcert={ca} sslcert={c} sslkey={k} connect_timeout=10",
        u = user.name,
        ca = p.ca.display(),
        c = p.trainer.cert.display(),
        k = p.trainer.key.display(),
    )
}

#[test]
fn server_names_choose_the_database_and_unknown_names_are_refused() {
    let user = db_user("sni");
    let second = PgServer::start(PgOptions::default()).expect("second PostgreSQL");
    second
        .create_user(&user.name, &user.password)
        .expect("user on the second server");
    let dir = tempfile::tempdir().expect("temp dir");
    let a = route_cert(dir.path(), "a.db.internal");
    let b = route_cert(dir.path(), "b.db.internal");
    let routes = format!(
        r#"
[[listener.route]]
server_name = "a.db.internal"
upstream = "{first}"
tls = {{ cert = "{a_cert}", key = "{a_key}" }}
[[listener.route]]
server_name = "*.other.internal"
upstream = "127.0.0.1:{second_port}"
tls = {{ cert = "{b_cert}", key = "{b_key}" }}
[[listener.route]]
server_name = "b.db.internal"
upstream = "127.0.0.1:{second_port}"
tls = {{ cert = "{b_cert}", key = "{b_key}" }}
"#,
        first = pg_upstream(),
        second_port = second.port(),
        a_cert = a.chain.display(),
        a_key = a.key.display(),
        b_cert = b.chain.display(),
        b_key = b.key.display(),
    );
    // The default route leads nowhere, so reaching it is easy to recognise.
    let config = format!("{ADMIN_ON}{}{routes}", listener_toml(DEAD_UPSTREAM, "", ""));
    let proxy = ProxyProcess::start(&config);
    let port_of = |host: &str| {
        let out = psql(
            &conn(proxy.port(), host, &user),
            "SHOW port",
            Some(&user.password),
        );
        assert!(out.status.success(), "{host}: {}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(port_of("a.db.internal"), pg().port().to_string());
    assert_eq!(port_of("b.db.internal"), second.port().to_string());
    let line = proxy.wait_for_log(std::time::Duration::from_secs(5), |v| {
        v["message"] == "connection established" && v["route"] == "b.db.internal"
    });
    assert_eq!(line["identity"], "uri:spiffe://prod/trainer");
    // No route matches: the default route (the listener's own upstream).
    let out = psql(
        &conn(proxy.port(), "localhost", &user),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the database is unavailable"),
        "the default route was not used: {}",
        stderr(&out)
    );

    // With require_sni_match, an unknown name is refused in the handshake.
    let strict = ProxyProcess::start(
        &config.replace("name = \"pg\"", "name = \"pg\"\nrequire_sni_match = true"),
    );
    let out = psql(
        &conn(strict.port(), "localhost", &user),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unrecognized name"),
        "{}",
        stderr(&out)
    );
    strict.refusal("unknown_server_name");
    // Metrics carry the route: each named route once, the default route's
    // failure with its label, the strict listener's refusal with none.
    let m = proxy.metrics();
    let handshakes = "intransit_handshakes_total";
    for route in ["a.db.internal", "b.db.internal"] {
        assert_eq!(
            m.sum(handshakes, &[("route", route), ("outcome", "ok")]),
            1.0,
            "{route}:\n{}",
            m.text
        );
    }
    assert_eq!(
        m.sum(
            handshakes,
            &[("route", "default"), ("outcome", "upstream_unavailable")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        strict.metrics().sum(
            handshakes,
            &[("route", ""), ("outcome", "unknown_server_name")]
        ),
        1.0
    );
    assert_eq!(port_of_strict(&strict, &user), pg().port().to_string());
}

fn port_of_strict(proxy: &ProxyProcess, user: &DbUser) -> String {
    let out = psql(
        &conn(proxy.port(), "a.db.internal", user),
        "SHOW port",
        Some(&user.password),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}
