//! Client certificate and identity policy: each bad certificate is refused
//! in the handshake, logged with its reason, and never reaches PostgreSQL.

use intransit_pki::CertificatePaths;

use crate::support::*;

/// Connects with psql and a given certificate (or none); returns stderr.
fn refused_psql(port: u16, cert: Option<&CertificatePaths>) -> String {
    let ci = match cert {
        Some(c) => conninfo(port, "alice", "shop", c, ""),
        None => format!(
            "host=localhost port={port} user=alice dbname=shop sslmode=verify-full sslrootcert={} sslcert=/nonexistent sslkey=/nonexistent connect_timeout=10",
            pki().ca.display()
        ),
    };
    let out = psql(&ci, "SELECT 1", Some("irrelevant"));
    assert!(!out.status.success(), "psql connected: {}", stdout(&out));
    stderr(&out)
}

#[test]
fn bad_client_certificates_are_refused_in_the_handshake() {
    let sentinel = Sentinel::start();
    let proxy = ProxyProcess::start(&listener_toml(&sentinel.addr.to_string(), "", ""));
    let p = pki();
    let cases: [(Option<&CertificatePaths>, &str); 4] = [
        (None, "no_client_cert"),
        (Some(&p.stranger), "untrusted"),
        (Some(&p.expired), "expired"),
        (Some(&p.server_as_client), "wrong_purpose"),
    ];
    for (cert, reason) in cases {
        let err = refused_psql(proxy.port(), cert);
        assert!(
            err.contains("SSL") || err.contains("alert") || err.contains("certificate"),
            "{reason}: {err}"
        );
        let line = proxy.refusal(reason);
        if cert.is_some() {
            // The identity in the refused certificate is logged.
            assert!(
                line["identity"].as_str().is_some_and(|i| !i.is_empty()),
                "{reason}: {line}"
            );
        }
    }
    assert_eq!(sentinel.connections(), 0);
}

#[test]
fn certificate_in_the_crl_is_refused() {
    let user = db_user("crl");
    let tls = format!("crl = \"{}\"", pki().crl.display());
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), &tls, ""));
    let err = refused_psql(proxy.port(), Some(&pki().revoked));
    assert!(err.contains("revoked"), "{err}");
    let line = proxy.refusal("revoked");
    assert_eq!(line["identity"], "cn:revoked");
    // Certificates not in the list still work.
    let out = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn resumed_sessions_keep_the_client_identity() {
    use std::io::{Read, Write};
    let user = db_user("resume");
    // Over the unix socket PostgreSQL trusts the login, so these raw
    // clients get in without a password exchange: a connection counts as
    // established at the server's ReadyForQuery.
    let upstream = format!("unix:{}", pg().socket_path().display());
    let proxy = ProxyProcess::start(&listener_toml(&upstream, "", ""));
    // One client configuration, so its session cache carries the ticket.
    let config = rustls_client(Some(&pki().trainer), &[]);
    for _ in 0..2 {
        let mut tcp = tcp(proxy.port());
        write(&mut tcp, &crate::negotiation::SSL_REQUEST);
        let mut s = [0u8; 1];
        tcp.read_exact(&mut s).expect("S");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(config.clone(), name).expect("conn");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&crate::negotiation::startup(&[("user", &user.name)]))
            .expect("startup");
        // Messages up to ReadyForQuery ('Z'), the first being
        // AuthenticationOk.
        let mut tags = Vec::new();
        while tags.last() != Some(&b'Z') {
            let mut header = [0u8; 5];
            tls.read_exact(&mut header).expect("message header");
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            let mut body = vec![0u8; len as usize - 4];
            tls.read_exact(&mut body).expect("message body");
            tags.push(header[0]);
        }
        assert_eq!(tags[0], b'R', "{tags:?}");
    }
    let resumed = proxy.wait_for_log(std::time::Duration::from_secs(5), |v| {
        v["message"] == "connection established" && v["resumed"] == true
    });
    assert_eq!(resumed["identity"], "uri:spiffe://prod/trainer");
}

#[test]
fn identity_not_in_allow_list_is_refused() {
    let user = db_user("allow");
    let sentinel = Sentinel::start();
    let tls = r#"allow = ["uri:spiffe://prod/*"]"#;
    let denied = ProxyProcess::start(&listener_toml(&sentinel.addr.to_string(), tls, ""));
    let err = refused_psql(denied.port(), Some(&pki().reporting));
    assert!(err.contains("access denied"), "{err}");
    let line = denied.refusal("identity_denied");
    assert_eq!(line["identity"], "cn:reporting");
    assert_eq!(sentinel.connections(), 0);

    let allowed = ProxyProcess::start(&listener_toml(&pg_upstream(), tls, ""));
    let out = psql(
        &conninfo(allowed.port(), &user.name, &user.name, &pki().trainer, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn db_users_refuses_a_user_the_identity_may_not_use() {
    let user = db_user("mapped");
    let other = db_user("notmapped");
    let rules = format!(
        r#"
[[listener.db_users]]
identity = "uri:spiffe://prod/trainer"
users = ["{}"]
[[listener.db_users]]
identity_regex = "^cn:(report)ing$"
user = "\\1"
"#,
        user.name
    );
    // db_users tables must come after [listener.tls] in TOML, so append.
    let config = format!("{}{rules}", listener_toml(&pg_upstream(), "", ""));
    let proxy = ProxyProcess::start(&config);

    let ok = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &pki().trainer, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(ok.status.success(), "{}", stderr(&ok));

    let denied = psql(
        &conninfo(proxy.port(), &other.name, &other.name, &pki().trainer, ""),
        "SELECT 1",
        Some(&other.password),
    );
    assert!(!denied.status.success());
    let err = stderr(&denied);
    assert!(err.contains("FATAL"), "{err}");
    assert!(
        err.contains(&format!("database user \"{}\"", other.name)),
        "{err}"
    );
    let line = proxy.refusal("user_denied");
    assert_eq!(line["identity"], "uri:spiffe://prod/trainer");

    // The regex rule maps cn:reporting to the user "report" only.
    let regex_denied = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &pki().reporting, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(!regex_denied.status.success());
    assert!(
        stderr(&regex_denied).contains("may not log in"),
        "{}",
        stderr(&regex_denied)
    );
}

#[test]
fn a_crl_reloaded_on_sighup_refuses_a_newly_revoked_certificate() {
    let user = db_user("crlreload");
    let dir = tempfile::tempdir().expect("temp dir");
    let crl = dir.path().join("live.crl");
    let p = pki();
    // Start with a CRL that revokes nothing.
    std::fs::write(
        &crl,
        p.authority
            .crl_pem(&[], time::Duration::days(7), 1)
            .expect("crl"),
    )
    .expect("write");
    let tls = format!("crl = \"{}\"", crl.display());
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), &tls, ""));
    let connect = || {
        psql(
            &conninfo(proxy.port(), &user.name, &user.name, &p.reporting, ""),
            "SELECT 1",
            Some(&user.password),
        )
    };
    assert!(connect().status.success());
    let pem = std::fs::read_to_string(&p.reporting.cert).expect("cert");
    let der = intransit_pki::pem_to_der_certs(&pem).expect("pem");
    let serial = intransit_pki::summarize(&der[0])
        .expect("summary")
        .serial_hex;
    std::fs::write(
        &crl,
        p.authority
            .crl_pem(&[&serial], time::Duration::days(7), 2)
            .expect("crl"),
    )
    .expect("write");
    signal(proxy.pid(), "HUP");
    proxy.wait_for_log(std::time::Duration::from_secs(10), |v| {
        v["message"] == "TLS material reloaded"
    });
    let out = connect();
    assert!(!out.status.success(), "revoked certificate still accepted");
    proxy.refusal("revoked");
}

#[test]
fn a_crl_replaced_on_disk_refuses_a_newly_revoked_certificate_without_a_signal() {
    let user = db_user("crlwatch");
    let dir = tempfile::tempdir().expect("temp dir");
    let crl = dir.path().join("live.crl");
    let p = pki();
    std::fs::write(
        &crl,
        p.authority
            .crl_pem(&[], time::Duration::days(7), 1)
            .expect("crl"),
    )
    .expect("write");
    let tls = format!("crl = \"{}\"", crl.display());
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), &tls, ""));
    let connect = || {
        psql(
            &conninfo(proxy.port(), &user.name, &user.name, &p.reporting, ""),
            "SELECT 1",
            Some(&user.password),
        )
    };
    assert!(connect().status.success());
    let pem = std::fs::read_to_string(&p.reporting.cert).expect("cert");
    let der = intransit_pki::pem_to_der_certs(&pem).expect("pem");
    let serial = intransit_pki::summarize(&der[0])
        .expect("summary")
        .serial_hex;
    // Published the way `intransit ca crl` does it: a new file renamed over
    // the old one. No SIGHUP: the watcher must notice.
    let staged = dir.path().join("live.crl.new");
    std::fs::write(
        &staged,
        p.authority
            .crl_pem(&[&serial], time::Duration::days(7), 2)
            .expect("crl"),
    )
    .expect("write");
    std::fs::rename(&staged, &crl).expect("rename");
    let reloaded = proxy.wait_for_log(std::time::Duration::from_secs(10), |v| {
        v["message"] == "TLS material reloaded"
    });
    assert_eq!(reloaded["trigger"], "file_change", "{reloaded}");
    let out = connect();
    assert!(!out.status.success(), "revoked certificate still accepted");
    proxy.refusal("revoked");
}

#[test]
fn a_crl_file_that_leaves_a_client_ca_uncovered_is_refused_naming_the_ca() {
    let p = pki();
    let dir = tempfile::tempdir().expect("temp dir");
    // The test CA plus a second CA that published no CRL.
    let bundle = dir.path().join("client-cas.pem");
    let second_ca = &crate::upstream_tls::db_pki().ca;
    std::fs::write(
        &bundle,
        format!(
            "{}{}",
            std::fs::read_to_string(&p.ca).expect("ca"),
            std::fs::read_to_string(second_ca).expect("second ca")
        ),
    )
    .expect("bundle");
    let crl = dir.path().join("live.crl");
    std::fs::write(
        &crl,
        p.authority
            .crl_pem(&[], time::Duration::days(7), 1)
            .expect("crl"),
    )
    .expect("write");
    let config = dir.path().join("intransit.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"pg\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n\
             [listener.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\ncrl = \"{}\"\n",
            DEAD_UPSTREAM,
            p.server.chain.display(),
            p.server.key.display(),
            bundle.display(),
            crl.display()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(BIN)
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("check-config");
    assert!(!out.status.success(), "accepted: {}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("has no CRL from the client CA"), "{err}");
    assert!(err.contains("intransit test database CA"), "{err}");
}

/// openssl s_client presenting `cert` with an RSA-1024 key, which libpq
/// refuses to load at its default security level; returns its output.
fn weak_key_s_client(port: u16, cert: &CertificatePaths) -> String {
    let openssl = intransit_testkit::require_tool("openssl", "openssl").expect("openssl");
    let out = std::process::Command::new(openssl)
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "localhost", "-CAfile"])
        .arg(&pki().ca)
        .arg("-cert")
        .arg(&cert.cert)
        .arg("-key")
        .arg(&cert.key)
        // Security level 0 lets OpenSSL send a 1024-bit key at all; keep
        // reading after stdin ends, until the proxy's alert arrives.
        .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-ign_eof"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running openssl s_client");
    let text = format!("{}\n{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "s_client succeeded: {text}");
    text
}

/// Certificates whose refusal used to be reported under another reason
/// (`expired`, `handshake_failed`, `untrusted`) get their own, in the log
/// line, the audit event and the metrics, and never reach PostgreSQL.
#[test]
fn misleading_certificates_are_refused_under_their_own_reasons() {
    let sentinel = Sentinel::start();
    let ca = RawCa::new("verdicts test CA");
    let audit = ca.dir.path().join("audit.jsonl");
    let tomorrow = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let (post_dated, _) = ca.client("post-dated", |p| p.not_before = tomorrow);
    let (ca_leaf, _) = ca.client("ca-leaf", |p| {
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    });
    let weak = ca.weak_rsa_client("weak-rsa");
    let base = listener_toml(&sentinel.addr.to_string(), "", "");
    let theirs = format!("client_ca = \"{}\"", pki().ca.display());
    assert!(base.contains(&theirs));
    let config = format!(
        "{ADMIN_ON}audit_log = \"{}\"\n{}",
        audit.display(),
        base.replace(&theirs, &format!("client_ca = \"{}\"", ca.ca.display()))
    );
    let proxy = ProxyProcess::start(&config);
    let cases = [
        (
            &post_dated,
            "not_yet_valid",
            "cn:post-dated",
            "not valid before",
            "certificate expired",
        ),
        (
            &ca_leaf,
            "ca_as_leaf",
            "cn:ca-leaf",
            "CA certificate (basicConstraints CA:TRUE)",
            "certificate unknown",
        ),
        (
            &weak,
            "weak_key",
            "cn:weak-rsa",
            "RSA key has 1024 bits",
            "certificate unknown",
        ),
    ];
    for (cert, reason, identity, words, alert) in cases {
        let err = if reason == "weak_key" {
            weak_key_s_client(proxy.port(), cert)
        } else {
            refused_psql(proxy.port(), Some(cert))
        };
        assert!(err.contains(alert), "{reason}: {err}");
        let line = proxy.refusal(reason);
        assert_eq!(line["identity"], identity, "{line}");
        assert!(
            line["detail"].as_str().is_some_and(|d| d.contains(words)),
            "{line}"
        );
        proxy.wait_for_log(std::time::Duration::from_secs(10), |v| {
            v["message"] == "connection audit" && v["outcome"] == reason
        });
    }
    let m = proxy.metrics();
    for (_, reason, ..) in cases {
        assert_eq!(
            m.sum("intransit_handshakes_total", &[("outcome", reason)]),
            1.0,
            "{reason}:\n{}",
            m.text
        );
    }
    for reason in ["expired", "untrusted", "handshake_failed"] {
        assert_eq!(
            m.sum("intransit_handshakes_total", &[("outcome", reason)]),
            0.0,
            "{reason}:\n{}",
            m.text
        );
    }
    let text = std::fs::read_to_string(&audit).expect("audit log");
    for (_, reason, identity, ..) in cases {
        let cn = identity.trim_start_matches("cn:");
        assert!(
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|e| e["outcome"] == reason && e["client_cert"]["cn"] == cn),
            "{reason}: {text}"
        );
    }
    assert_eq!(sentinel.connections(), 0);
}
