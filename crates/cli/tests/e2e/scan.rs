//! `intransit scan` against real endpoints: an `openssl s_server` with
//! TLS 1.0/1.1 and CBC suites (which rustls cannot speak, so only the
//! hand-built probes can see them), PostgreSQL configured three ways, a
//! MariaDB, and intransit's own proxy. The facts are cross-checked with
//! `openssl s_client` probes run here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use intransit_pki::CertificatePaths;
use intransit_testkit::{MariaDbOptions, MariaDbServer, MariaDbSsl, PgOptions, PgServer, PgSsl};
use serde_json::Value;

use crate::support::*;

/// The test PKI's certificates live 30 days (capped by its CA), under
/// every preset's 30-day expiry threshold; the scans here use the preset
/// with a 7-day threshold, written as a policy file the way users start
/// their own.
fn policy(preset: &str) -> String {
    let out = Command::new(BIN)
        .args(["policy", "show", preset])
        .output()
        .expect("intransit policy show");
    assert!(out.status.success());
    let text = stdout(&out).replace("expiry_warning_days = 30", "expiry_warning_days = 7");
    let path = std::env::temp_dir().join(format!(
        "intransit-scan-policy-{preset}-{}.toml",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("writing the policy");
    path.display().to_string()
}

fn long_lived(_dir: &Path) -> CertificatePaths {
    pki().server.clone()
}

fn scan(target: &str, policy: &str, extra: &[&str]) -> (Option<i32>, Value, Output) {
    let policy = self::policy(policy);
    let out = Command::new(BIN)
        .args([
            "scan",
            target,
            "--policy",
            &policy,
            "--format",
            "json",
            "--timeout",
            "5s",
        ])
        .arg("--ca")
        .arg(&pki().ca)
        .args(extra)
        .output()
        .expect("running intransit scan");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report, out)
}

fn failing(report: &Value) -> Vec<String> {
    let mut v: Vec<String> = report["findings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|f| f["status"] == "fail")
                .map(|f| f["requirement"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

fn accepted_versions(report: &Value) -> Vec<String> {
    report["observations"][0]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["accepted"] == true)
        .map(|v| v["version"].as_str().unwrap().to_owned())
        .collect()
}

/// `openssl s_client` with one protocol flag; whether the handshake
/// completed and what it printed.
fn s_client(port: u16, starttls: Option<&str>, args: &[&str]) -> (bool, String) {
    let openssl = intransit_testkit::require_tool("openssl", "openssl").expect("openssl");
    let mut cmd = Command::new(openssl);
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]);
    if let Some(proto) = starttls {
        cmd.args(["-starttls", proto]);
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    let ok = text.contains("Cipher is ") && !text.contains("Cipher is (NONE)");
    (ok, text)
}

struct SServer(Child);
impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn legacy_versions_and_suites_are_seen_and_agree_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let cert = long_lived(dir.path());
    let openssl = intransit_testkit::require_tool("openssl", "openssl").expect("openssl");
    let port = intransit_testkit::free_port();
    let _server = SServer(
        Command::new(openssl)
            .args([
                "s_server",
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-www",
                "-quiet",
            ])
            .arg("-cert")
            .arg(&cert.chain)
            .arg("-key")
            .arg(&cert.key)
            .args(["-cipher", "ALL:@SECLEVEL=0", "-min_protocol", "TLSv1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (code, report, out) = scan(
        &format!("tls://localhost:{port}"),
        "mozilla-intermediate",
        &[],
    );
    assert_eq!(code, Some(1), "{}", stderr(&out));
    let versions = accepted_versions(&report);
    assert_eq!(versions, ["TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"]);
    let failed = failing(&report);
    assert!(failed.contains(&"tls.min_version".to_owned()), "{failed:?}");
    assert!(
        failed.contains(&"tls.cipher_suites".to_owned()),
        "{failed:?}"
    );
    let tls10 = report["observations"][0]["suites"]["TLSv1.0"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert!(
        tls10.contains(&"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA".to_owned()),
        "{tls10:?}"
    );
    // An ECDSA certificate cannot do RSA key exchange.
    assert!(!tls10.contains(&"TLS_RSA_WITH_AES_128_CBC_SHA".to_owned()));

    // Cross-check: openssl agrees on versions and on one suite each way.
    for (flag, name) in [
        ("-tls1", "TLSv1.0"),
        ("-tls1_1", "TLSv1.1"),
        ("-tls1_2", "TLSv1.2"),
        ("-tls1_3", "TLSv1.3"),
    ] {
        let (ok, text) = s_client(port, None, &[flag, "-cipher", "ALL:@SECLEVEL=0"]);
        assert_eq!(ok, versions.contains(&name.to_owned()), "{name}: {text}");
    }
    let (ok, _) = s_client(
        port,
        None,
        &["-tls1", "-cipher", "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"],
    );
    assert!(ok);
    let (ok, _) = s_client(port, None, &["-tls1", "-cipher", "AES128-SHA:@SECLEVEL=0"]);
    assert!(!ok);
    // The certificate facts agree with what openssl saw.
    let (_, text) = s_client(port, None, &["-showcerts"]);
    let served = intransit_pki::pem_to_der_certs(&text).expect("PEM in s_client output");
    assert_eq!(
        report["observations"][0]["certificates"][0]["sha256"],
        intransit_pki::sha256_fingerprint(&served[0])
    );
    let pem = std::fs::read_to_string(&cert.cert).unwrap();
    let der = intransit_pki::pem_to_der_certs(&pem).unwrap();
    assert_eq!(served[0], der[0]);
    assert!(report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["requirement"] == "cert.trusted" && f["status"] == "pass"));
}

fn pg_with(dir: &Path, extra_conf: &[&str], hba: &[&str]) -> PgServer {
    let cert = long_lived(dir);
    PgServer::start(PgOptions {
        ssl: Some(PgSsl {
            cert_file: cert.chain.clone(),
            key_file: cert.key.clone(),
            ca_file: pki().ca.clone(),
        }),
        extra_conf: extra_conf.iter().map(|s| s.to_string()).collect(),
        hba_first: hba.iter().map(|s| s.to_string()).collect(),
        ..PgOptions::default()
    })
    .expect("PostgreSQL with TLS")
}

fn client_args() -> Vec<String> {
    let p = pki();
    vec![
        "--cert".into(),
        p.trainer.chain.display().to_string(),
        "--key".into(),
        p.trainer.key.display().to_string(),
    ]
}

#[test]
fn postgresql_three_ways_and_the_proxy() {
    let dir = tempfile::tempdir().unwrap();

    // 1. TLS 1.2 allowed, plaintext `host` lines.
    let loose = pg_with(
        dir.path(),
        &["ssl_min_protocol_version = 'TLSv1.2'"],
        &["host all all 127.0.0.1/32 scram-sha-256"],
    );
    let (code, report, out) = scan(
        &format!("postgres://127.0.0.1:{}", loose.port()),
        "pci-dss-4",
        &[],
    );
    assert_eq!(code, Some(1), "{}", stderr(&out));
    assert_eq!(accepted_versions(&report), ["TLSv1.2", "TLSv1.3"]);
    assert_eq!(report["observations"][0]["plaintext"], "accepted");
    // PostgreSQL's default ssl_ciphers (HIGH:MEDIUM:+3DES:!aNULL) lets
    // CBC suites in with TLS 1.2, which PCI DSS's strong-suite list does not
    // allow.
    assert_eq!(
        failing(&report),
        ["tls.cipher_suites", "transport.no_plaintext"]
    );
    let (ok12, _) = s_client(loose.port(), Some("postgres"), &["-tls1_2"]);
    assert!(ok12, "openssl disagrees on TLS 1.2");

    // 2. TLS 1.3 only, certificates required, plaintext rejected.
    let strict = pg_with(
        dir.path(),
        &[],
        &[
            "hostssl all all 127.0.0.1/32 cert",
            "host all all 127.0.0.1/32 reject",
        ],
    );
    let target = format!("postgres://127.0.0.1:{}", strict.port());
    let args = client_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, report, out) = scan(&target, "hipaa", &args);
    assert_eq!(accepted_versions(&report), ["TLSv1.3"]);
    assert_eq!(report["observations"][0]["plaintext"], "refused");
    assert_eq!(report["observations"][0]["client_cert_required"], true);
    assert_eq!(report["observations"][0]["client_cert_accepted"], true);
    assert_eq!(failing(&report), Vec::<String>::new(), "{}", stdout(&out));
    assert_eq!(code, Some(0));
    // Every preset against the three servers: exit code and the exact
    // failing requirements. NIST SP 800-52r2 approves no ChaCha20 suite,
    // which OpenSSL's TLS 1.3 offers; HIPAA demands client certificates.
    const PLAIN: &str = "transport.no_plaintext";
    const SUITES: &str = "tls.cipher_suites";
    let expected: [(&str, [&[&str]; 3]); 5] = [
        (
            "mozilla-modern",
            [
                &[SUITES, "tls.min_version", PLAIN],
                &[],
                &["tls.enabled", PLAIN],
            ],
        ),
        (
            "mozilla-intermediate",
            [&[SUITES, PLAIN], &[], &["tls.enabled", PLAIN]],
        ),
        (
            "nist-800-52r2",
            [&[SUITES, PLAIN], &[SUITES], &["tls.enabled", PLAIN]],
        ),
        (
            "pci-dss-4",
            [&[SUITES, PLAIN], &[], &["tls.enabled", PLAIN]],
        ),
        (
            "hipaa",
            [
                &["auth.client_certificate", SUITES, PLAIN],
                &[],
                &["tls.enabled", PLAIN],
            ],
        ),
    ];
    for (preset, per_server) in expected {
        for (port, want) in [loose.port(), strict.port(), pg().port()]
            .into_iter()
            .zip(per_server)
        {
            let (code, report, _) = scan(&format!("postgres://127.0.0.1:{port}"), preset, &args);
            let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            want.sort();
            assert_eq!(failing(&report), want, "{preset} on port {port}");
            assert_eq!(
                code,
                Some(if want.is_empty() { 0 } else { 1 }),
                "{preset} on port {port}"
            );
        }
    }
    let (ok12, _) = s_client(strict.port(), Some("postgres"), &["-tls1_2"]);
    assert!(!ok12, "openssl disagrees: TLS 1.2 accepted");
    let (ok13, text) = s_client(strict.port(), Some("postgres"), &["-tls1_3"]);
    assert!(ok13, "{text}");

    // 3. ssl = off: the shared server.
    let (code, report, _) = scan(
        &format!("postgres://127.0.0.1:{}", pg().port()),
        "mozilla-intermediate",
        &[],
    );
    assert_eq!(code, Some(1));
    let failed = failing(&report);
    assert!(failed.contains(&"tls.enabled".to_owned()), "{failed:?}");
    assert!(
        failed.contains(&"transport.no_plaintext".to_owned()),
        "{failed:?}"
    );

    // intransit's own proxy: TLS 1.3, a hybrid post-quantum group,
    // certificates required, no plaintext.
    let proxy = ProxyProcess::start(&listener_toml(&pg_upstream(), "", ""));
    let (_, report, out) = scan(
        &format!("postgres://localhost:{}", proxy.port()),
        "mozilla-modern",
        &args,
    );
    let obs = &report["observations"][0];
    assert_eq!(accepted_versions(&report), ["TLSv1.3"], "{}", stdout(&out));
    assert!(obs["groups"]
        .as_array()
        .unwrap()
        .contains(&"X25519MLKEM768".into()));
    assert_eq!(obs["plaintext"], "refused");
    assert_eq!(obs["client_cert_required"], true);
    assert_eq!(obs["direct_tls"], true);
    assert_eq!(failing(&report), Vec::<String>::new(), "{}", stdout(&out));
}

#[test]
fn mariadb_with_tls_and_require_secure_transport() {
    let dir = tempfile::tempdir().unwrap();
    let cert = long_lived(dir.path());
    let server = MariaDbServer::start(MariaDbOptions {
        ssl: Some(MariaDbSsl {
            cert_file: cert.chain.clone(),
            key_file: cert.key.clone(),
            ca_file: pki().ca.clone(),
        }),
        require_secure_transport: true,
        extra_conf: vec![
            "tls_version = TLSv1.2,TLSv1.3".into(),
            // AEAD suites only for TLS 1.2, as PCI DSS's strong list asks.
            "ssl_cipher = ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384".into(),
        ],
    })
    .expect("MariaDB with TLS");
    let (code, report, out) = scan(
        &format!("mysql://127.0.0.1:{}", server.port()),
        "pci-dss-4",
        &[],
    );
    let obs = &report["observations"][0];
    assert_eq!(
        accepted_versions(&report),
        ["TLSv1.2", "TLSv1.3"],
        "{}",
        stdout(&out)
    );
    // MariaDB checks require_secure_transport only after authenticating, and
    // the probe (which never sends a password) is refused before that: the
    // scan says it cannot tell rather than guess.
    assert_eq!(obs["plaintext"], "unknown", "{}", obs["plaintext_detail"]);
    assert!(obs["server_version"]
        .as_str()
        .unwrap_or_default()
        .contains("MariaDB"));
    let (ok12, _) = s_client(server.port(), Some("mysql"), &["-tls1_2"]);
    assert!(ok12);
    let (ok11, _) = s_client(
        server.port(),
        Some("mysql"),
        &["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"],
    );
    assert!(!ok11);
    assert_eq!(code, Some(0), "{:?}", failing(&report));
    // The shared MariaDB accepts logins without TLS.
    let plain = MariaDbServer::shared().expect("shared MariaDB");
    let (code, report, _) = scan(
        &format!("mysql://127.0.0.1:{}", plain.port()),
        "pci-dss-4",
        &[],
    );
    assert_eq!(code, Some(1));
    assert!(
        failing(&report).contains(&"tls.enabled".to_owned())
            || failing(&report).contains(&"transport.no_plaintext".to_owned())
    );
}

#[test]
fn a_scan_that_cannot_run_exits_2() {
    let (code, _, out) = scan(&format!("postgres://{DEAD_UPSTREAM}"), "hipaa", &[]);
    assert_eq!(code, Some(2), "{}", stderr(&out));
    let _ = PathBuf::new();
}
