//! `intransit lint` on the configuration files real servers run with: a
//! plaintext PostgreSQL, a PostgreSQL with TLS 1.3 and certificate
//! authentication, and a MariaDB with TLS and require_secure_transport.
//! Exact findings and exit codes per preset.

use std::path::Path;
use std::process::{Command, Output};

use intransit_testkit::{MariaDbOptions, MariaDbServer, MariaDbSsl, PgOptions, PgServer, PgSsl};
use serde_json::Value;

use crate::support::*;

fn lint(files: &[&Path], policy: &str, format: &str) -> Output {
    Command::new(BIN)
        .arg("lint")
        .args(files)
        .args(["--policy", policy, "--format", format])
        .output()
        .expect("running intransit lint")
}

/// The failing requirement ids with their line numbers.
fn failures(out: &Output) -> Vec<(String, Option<u64>)> {
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(out), stderr(out)));
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "fail")
        .map(|f| {
            (
                f["requirement"].as_str().unwrap().to_owned(),
                f["line"].as_u64(),
            )
        })
        .collect()
}

fn ssl_files() -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = pki();
    (p.server.chain.clone(), p.server.key.clone(), p.ca.clone())
}

#[test]
fn a_plaintext_postgresql_fails_and_says_why() {
    let conf = pg().data_dir().join("postgresql.conf");
    let out = lint(&[&conf], "mozilla-intermediate", "json");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let failed = failures(&out);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "tls.enabled");
    let text = lint(&[&conf], "mozilla-intermediate", "text");
    assert!(stdout(&text).contains("ssl is off"), "{}", stdout(&text));
    assert!(stdout(&text).contains("POLICY FAILS"));
}

#[test]
fn postgresql_with_tls13_and_certificate_auth_passes_strict_presets() {
    let (cert_file, key_file, ca_file) = ssl_files();
    let server = PgServer::start(PgOptions {
        ssl: Some(PgSsl {
            cert_file,
            key_file,
            ca_file,
        }),
        hba_first: vec![
            "hostssl all all 0.0.0.0/0 cert".into(),
            "hostssl all all ::/0 scram-sha-256 clientcert=verify-full".into(),
            "host all all 10.0.0.0/8 scram-sha-256".into(),
        ],
        ..PgOptions::default()
    })
    .expect("PostgreSQL with TLS");
    let conf = server.data_dir().join("postgresql.conf");
    let hba = server.data_dir().join("pg_hba.conf");
    let hba_text = std::fs::read_to_string(&hba).unwrap();
    let plaintext_line = hba_text
        .lines()
        .position(|l| l.starts_with("host all all 10.0.0.0/8"))
        .map(|i| i as u64 + 1)
        .expect("the plaintext rule is in pg_hba.conf");

    // TLS 1.3 only, files in place: postgresql.conf passes even HIPAA.
    for policy in [
        "mozilla-modern",
        "mozilla-intermediate",
        "nist-800-52r2",
        "pci-dss-4",
        "hipaa",
    ] {
        let out = lint(&[&conf], policy, "json");
        assert_eq!(failures(&out), vec![], "{policy}: {}", stdout(&out));
        assert_eq!(out.status.code(), Some(0), "{policy}");
    }
    // The plaintext rule from 10.0.0.0/8 fails every preset, on its line;
    // HIPAA (client certificates required) also fails it for the missing
    // certificate.
    let out = lint(&[&conf, &hba], "pci-dss-4", "json");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        failures(&out),
        vec![("transport.no_plaintext".to_owned(), Some(plaintext_line))]
    );
    let out = lint(&[&conf, &hba], "hipaa", "json");
    let failed = failures(&out);
    assert!(failed.contains(&("transport.no_plaintext".to_owned(), Some(plaintext_line))));
    assert!(failed.contains(&("auth.client_certificate".to_owned(), Some(plaintext_line))));

    // SARIF points at the same line.
    let out = lint(&[&hba], "pci-dss-4", "sarif");
    let sarif: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    let result = &sarif["runs"][0]["results"][0];
    assert_eq!(result["ruleId"], "transport.no_plaintext");
    assert_eq!(result["level"], "error");
    assert_eq!(
        result["locations"][0]["physicalLocation"]["region"]["startLine"],
        plaintext_line
    );
}

#[test]
fn mariadb_with_tls_and_require_secure_transport() {
    let (cert_file, key_file, ca_file) = ssl_files();
    let server = MariaDbServer::start(MariaDbOptions {
        ssl: Some(MariaDbSsl {
            cert_file,
            key_file,
            ca_file,
        }),
        require_secure_transport: true,
        extra_conf: vec!["tls_version = TLSv1.2,TLSv1.3".into()],
    })
    .expect("MariaDB with TLS");
    let conf = server.conf_path();
    // TLS 1.2 is allowed by PCI DSS but not by Mozilla Modern.
    let out = lint(&[conf], "mozilla-modern", "json");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let failed = failures(&out);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "tls.min_version");
    let out = lint(&[conf], "pci-dss-4", "json");
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // The shared MariaDB has neither TLS nor require_secure_transport.
    let plain = MariaDbServer::shared().expect("shared MariaDB");
    let out = lint(&[plain.conf_path()], "pci-dss-4", "json");
    let failed: Vec<String> = failures(&out).into_iter().map(|f| f.0).collect();
    assert!(failed.contains(&"tls.enabled".to_owned()), "{failed:?}");
    assert!(
        failed.contains(&"transport.no_plaintext".to_owned()),
        "{failed:?}"
    );
}

#[test]
fn lint_exit_codes_policy_show_and_templates() {
    // A file that does not exist: the lint cannot run.
    let out = lint(
        &[Path::new("/nonexistent/postgresql.conf")],
        "hipaa",
        "text",
    );
    assert_eq!(out.status.code(), Some(2));
    let out = lint(
        &[&pg().data_dir().join("postgresql.conf")],
        "no-such-policy",
        "text",
    );
    assert_eq!(out.status.code(), Some(2));

    // `policy show` prints TOML that works as a policy file.
    let shown = Command::new(BIN)
        .args(["policy", "show", "hipaa"])
        .output()
        .unwrap();
    assert!(shown.status.success());
    let dir = tempfile::tempdir().unwrap();
    let custom = dir.path().join("custom.toml");
    std::fs::write(
        &custom,
        stdout(&shown).replace("name = \"hipaa\"", "name = \"ours\""),
    )
    .unwrap();

    // A template for that policy passes it.
    let state = dir.path().join("state");
    let template = Command::new(BIN)
        .args(["config", "template", "pg_hba", "--policy"])
        .arg(&custom)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(template.status.success(), "{}", stderr(&template));
    let hba = dir.path().join("pg_hba.conf");
    std::fs::write(&hba, &template.stdout).unwrap();
    let out = lint(&[&hba], custom.to_str().unwrap(), "text");
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("against policy ours"));
}
