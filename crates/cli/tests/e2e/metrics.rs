//! The admin server under real traffic: every outcome the test provokes
//! is counted with the listener, route, protocol and TLS facts it had, and
//! certificate expiry, health and readiness are served.

use std::time::{Duration, SystemTime};

use crate::support::*;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn psql_traffic_and_refusals_are_counted_by_outcome() {
    let user = db_user("metrics");
    let config = format!(
        "{ADMIN_ON}{}",
        listener_toml(
            &pg_upstream(),
            "allow = [\"uri:spiffe://prod/trainer\"]",
            ""
        )
    );
    let proxy = ProxyProcess::start(&config);
    let p = pki();

    let ok = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &p.trainer, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let plaintext = psql(
        &format!(
            "host=localhost port={} user={} dbname={} sslmode=disable connect_timeout=10",
            proxy.port(),
            user.name,
            user.name
        ),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(!plaintext.status.success());
    proxy.refusal("plaintext_refused");
    let stranger = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &p.stranger, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(!stranger.status.success());
    proxy.refusal("untrusted");
    let not_allowed = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &p.reporting, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(!not_allowed.status.success());
    proxy.refusal("identity_denied");
    // The accepted session's byte counts are added when it closes.
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection closed"
    });

    let m = proxy.metrics();
    let handshakes = "intransit_handshakes_total";
    let established: Vec<_> = m
        .matching(handshakes, &[("outcome", "ok")])
        .cloned()
        .collect();
    assert_eq!(established.len(), 1, "{}", m.text);
    let s = &established[0];
    assert_eq!(s.value, 1.0);
    assert_eq!(s.label("listener"), Some("pg"));
    assert_eq!(s.label("route"), Some("default"));
    assert_eq!(s.label("protocol"), Some("postgres"));
    assert_eq!(s.label("tls_version"), Some("TLSv1_3"));
    assert_eq!(s.label("resumed"), Some("false"));
    assert!(s.label("cipher").is_some_and(|c| c.starts_with("TLS13_")));
    assert!(s.label("group").is_some_and(|g| g != "none"));
    // The identity label names the allow-list entry that admitted the
    // certificate, never the certificate's own values.
    assert_eq!(s.label("identity"), Some("uri:spiffe://prod/trainer"));
    assert!(
        !m.text.contains("cn:reporting") && !m.text.contains("\"reporting\""),
        "a refused identity appeared as a label value:\n{}",
        m.text
    );
    for reason in ["plaintext_refused", "untrusted", "identity_denied"] {
        assert_eq!(
            m.sum(handshakes, &[("outcome", reason), ("identity", "none")]),
            1.0,
            "{reason}:\n{}",
            m.text
        );
    }
    for reason in ["plaintext_refused", "untrusted", "identity_denied"] {
        assert_eq!(
            m.sum(handshakes, &[("outcome", reason), ("protocol", "postgres")]),
            1.0,
            "{reason}:\n{}",
            m.text
        );
    }
    // Refused before TLS: no TLS facts and no route.
    assert_eq!(
        m.sum(
            handshakes,
            &[
                ("outcome", "plaintext_refused"),
                ("tls_version", "none"),
                ("route", "")
            ]
        ),
        1.0
    );
    assert!(!m.text.contains(&user.name), "a user name became a label");

    assert_eq!(
        m.sum(
            "intransit_handshake_duration_seconds_count",
            &[("listener", "pg")]
        ),
        1.0
    );
    assert_eq!(
        m.sum("intransit_connections_total", &[("listener", "pg")]),
        4.0
    );
    assert!(m.sum("intransit_bytes_total", &[("direction", "from_client")]) > 0.0);
    assert!(m.sum("intransit_bytes_total", &[("direction", "to_client")]) > 0.0);

    let server: Vec<_> = m
        .matching(
            "intransit_certificate_not_after_seconds",
            &[("role", "server"), ("listener", "pg"), ("route", "default")],
        )
        .collect();
    assert_eq!(server.len(), 1, "{}", m.text);
    assert!(
        server[0].value > now(),
        "server certificate expiry in the past"
    );
    assert!(server[0]
        .label("subject")
        .is_some_and(|s| s.contains("localhost")));
    assert_eq!(
        m.matching(
            "intransit_certificate_not_after_seconds",
            &[("role", "client_ca")]
        )
        .count(),
        1
    );

    let (status, body) = http_get(proxy.admin_addr(), "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_get(proxy.admin_addr(), "/readyz");
    assert_eq!(status, 200, "{body}");
    let (status, _) = http_get(proxy.admin_addr(), "/no-such-page");
    assert_eq!(status, 404);

    // Once every client is gone, nothing is counted as active.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let active = proxy
            .metrics()
            .sum("intransit_connections_active", &[("listener", "pg")]);
        if active == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{active} connections still active"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_reload_is_counted_and_the_admin_address_must_be_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{ADMIN_ON}{}", listener_toml(DEAD_UPSTREAM, "", ""));
    let proxy = ProxyProcess::start(&config);
    // Nothing changed: the round runs, says so, and counts no reload.
    signal(proxy.pid(), "HUP");
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "reload round finished" && v["trigger"] == "sighup"
    });
    let unchanged = proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "TLS material unchanged"
    });
    assert_eq!(unchanged["listener"], "pg", "{unchanged}");
    let m = proxy.metrics();
    assert_eq!(
        m.sum("intransit_tls_reloads_total", &[("listener", "pg")]),
        0.0,
        "{}",
        m.text
    );
    let (code, body) = http_get(proxy.admin_addr(), "/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["reloads"]["sighup"], 1, "{status}");
    assert_eq!(status["reloads"]["last_sighup"]["swapped"], 0, "{status}");
    assert_eq!(status["reloads"]["last_sighup"]["failed"], 0, "{status}");

    let path = dir.path().join("open.toml");
    std::fs::write(
        &path,
        config.replace(ADMIN_ON, "admin = \"0.0.0.0:9090\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("loopback"), "{}", stderr(&out));
}

#[test]
fn audit_events_record_who_connected_and_never_the_password() {
    let user = db_user("audit");
    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let rules = format!(
        "[[listener.db_users]]\nidentity = \"uri:spiffe://prod/trainer\"\nusers = [\"{}\"]\n",
        user.name
    );
    let config = format!(
        "audit_log = \"{}\"\n{}{rules}",
        audit_path.display(),
        listener_toml(&pg_upstream(), "", "")
    );
    let proxy = ProxyProcess::start(&config);
    let p = pki();

    let ok = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &p.trainer, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let denied = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &p.reporting, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(!denied.status.success());
    // Each event is written when its connection ends.
    for outcome in ["ok", "user_denied"] {
        proxy.wait_for_log(Duration::from_secs(10), |v| {
            v["message"] == "connection audit" && v["outcome"] == outcome
        });
    }

    let text = std::fs::read_to_string(&audit_path).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    let ok = events
        .iter()
        .find(|e| e["outcome"] == "ok")
        .expect("ok event");
    assert_eq!(ok["listener"], "pg");
    assert_eq!(ok["route"], "default");
    assert_eq!(ok["protocol"], "postgres");
    assert!(ok["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(ok["client_cert"]["cn"], "trainer");
    assert!(ok["client_cert"]["sans"]
        .as_array()
        .unwrap()
        .contains(&"uri:spiffe://prod/trainer".into()));
    let trainer_pem = std::fs::read_to_string(&p.trainer.cert).unwrap();
    let trainer_der = intransit_pki::pem_to_der_certs(&trainer_pem).unwrap();
    assert_eq!(
        ok["client_cert"]["sha256"],
        intransit_pki::sha256_fingerprint(&trainer_der[0])
    );
    assert_eq!(ok["db_user"], user.name.as_str());
    assert_eq!(ok["db_name"], user.name.as_str());
    assert_eq!(ok["tls_version"], "TLSv1_3");
    assert_eq!(ok["sni"], "localhost");
    assert!(ok["cipher"].as_str().unwrap().starts_with("TLS13_"));
    assert!(ok["bytes_from_client"].as_u64().unwrap() > 0);
    assert!(ok["bytes_to_client"].as_u64().unwrap() > 0);
    assert!(ok["duration_ms"].is_u64());
    assert!(ok["time"].as_str().unwrap().ends_with('Z'));

    let refused = events
        .iter()
        .find(|e| e["outcome"] == "user_denied")
        .expect("refusal event");
    assert_eq!(refused["client_cert"]["cn"], "reporting");
    assert_eq!(refused["db_user"], user.name.as_str());
    assert_eq!(refused["tls_version"], "TLSv1_3");
    assert!(refused["detail"].as_str().unwrap().contains("db_users"));

    // The password went through the proxy (SCRAM inside TLS) twice; it is
    // in neither the audit file nor the log.
    assert!(!text.contains(&user.password));
    let logs: String = proxy
        .logs()
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!logs.contains(&user.password));
}

/// GET over TLS with the test CA, presenting `cert` if given. Returns the
/// status line and body, or the error that ended the exchange.
fn https_get(
    addr: std::net::SocketAddr,
    path: &str,
    cert: Option<&intransit_pki::CertificatePaths>,
) -> Result<(String, String), std::io::Error> {
    use std::io::{Read, Write};
    let config = rustls_client(cert, &[b"http/1.1"]);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    tls.flush()?;
    let mut response = String::new();
    tls.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    ))
}

#[test]
fn the_admin_server_speaks_mutual_tls_when_configured() {
    let p = pki();
    let admin_tls = format!(
        "[admin_tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nallow = [\"cn:reporting\"]\n",
        p.server.chain.display(),
        p.server.key.display(),
        p.ca.display()
    );
    let config = format!(
        "{ADMIN_ON}{}{admin_tls}",
        listener_toml(DEAD_UPSTREAM, "", "")
    );
    let proxy = ProxyProcess::start(&config);
    let line = proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "admin server listening"
    });
    assert_eq!(line["tls"], true);
    let addr = proxy.admin_addr();

    let (status, body) = https_get(addr, "/metrics", Some(&p.reporting)).expect("mTLS scrape");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("intransit_certificate_not_after_seconds"));
    // No certificate, or one the allow-list does not name: no answer.
    assert!(https_get(addr, "/metrics", None).is_err());
    assert!(https_get(addr, "/metrics", Some(&p.trainer)).is_err());
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "admin server: TLS handshake refused"
    });
    // Plain HTTP gets nothing either.
    let plain = std::panic::catch_unwind(|| http_get(addr, "/metrics"));
    assert!(plain.is_err() || plain.is_ok_and(|(s, _)| s != 200));

    // With TLS the admin server may listen beyond loopback; without, not.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.toml");
    std::fs::write(&path, config.replace(ADMIN_ON, "admin = \"0.0.0.0:0\"\n")).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn status_lists_client_mode_listeners_and_the_upstream_leg() {
    let p = pki();
    let config = format!(
        "{ADMIN_ON}{}[listener.upstream_tls]\nmode = \"verify-ca\"\nca = \"{ca}\"\n\
         [[listener]]\nname = \"out\"\nmode = \"client\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{DEAD_UPSTREAM}\"\n\
         [listener.upstream_tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nserver_name = \"db.internal\"\n",
        listener_toml(DEAD_UPSTREAM, "", ""),
        ca = p.ca.display(),
        cert = p.trainer.chain.display(),
        key = p.trainer.key.display(),
    );
    let proxy = ProxyProcess::start(&config);
    let (status, body) = http_get(proxy.admin_addr(), "/status");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let route = &v["listeners"][0]["routes"][0];
    assert_eq!(route["upstream_tls"]["mode"], "verify-ca");
    assert_eq!(route["upstream_tls"]["client_certificate"], false);
    let client = &v["client_listeners"][0];
    assert_eq!(client["name"], "out");
    assert_eq!(client["upstream_tls"]["mode"], "verify-full");
    assert_eq!(client["upstream_tls"]["server_name"], "db.internal");
    assert_eq!(client["upstream_tls"]["client_certificate"], true);
    assert_eq!(client["allow_remote_plaintext"], false);
    assert!(client["listen"].as_str().unwrap().starts_with("127.0.0.1:"));
}

/// A login PostgreSQL itself refuses (a wrong password, a database that
/// does not exist) is the connection's refusal, `upstream_refused`, in the
/// log line (with the server's SQLSTATE and message), the audit event and
/// the metrics; only the login that gets in is `ok`. psql reads the
/// server's own error either way.
#[test]
fn logins_postgresql_refuses_are_counted_as_upstream_refused() {
    let user = db_user("pgrefused");
    let proxy = ProxyProcess::start(&format!(
        "{ADMIN_ON}{}",
        listener_toml(&pg_upstream(), "", "")
    ));
    let login = |database: &str, password: &str| {
        psql(
            &conninfo(proxy.port(), &user.name, database, &pki().trainer, ""),
            "SELECT 1",
            Some(password),
        )
    };
    let refusal = |code: &str| {
        proxy.wait_for_log(Duration::from_secs(10), |v| {
            v["message"] == "connection refused"
                && v["reason"] == "upstream_refused"
                && v["detail"].as_str().unwrap_or_default().contains(code)
        })
    };
    let handshakes = |outcome: &str| {
        proxy.metrics().sum(
            "intransit_handshakes_total",
            &[("listener", "pg"), ("outcome", outcome)],
        )
    };

    let out = login(&user.name, "wrong password");
    assert!(!out.status.success(), "a wrong password logged in");
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        stderr(&out)
    );
    let line = refusal("28P01");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("FATAL 28P01: password authentication failed")
            && detail.contains(&user.name),
        "{line}"
    );
    assert!(!detail.contains("wrong password"), "{line}");
    assert_eq!(line["identity"], "uri:spiffe://prod/trainer", "{line}");
    let audit = proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection audit" && v["outcome"] == "upstream_refused"
    });
    assert_eq!(audit["db_user"], user.name.as_str(), "{audit}");
    assert!(
        audit["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("28P01"),
        "{audit}"
    );
    assert_eq!(handshakes("upstream_refused"), 1.0);
    assert_eq!(handshakes("ok"), 0.0);

    let missing = intransit_testkit::unique_name("nodb");
    let out = login(&missing, &user.password);
    assert!(!out.status.success(), "connected to a missing database");
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    refusal("3D000");
    assert_eq!(handshakes("upstream_refused"), 2.0);
    assert_eq!(handshakes("ok"), 0.0);

    let out = login(&user.name, &user.password);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "1");
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection audit" && v["outcome"] == "ok"
    });
    assert_eq!(handshakes("ok"), 1.0);
    assert_eq!(handshakes("upstream_refused"), 2.0);
}
