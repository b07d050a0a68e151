//! A CRL past its nextUpdate: the listener refuses the certificates of its
//! CA (`crl_expired`) unless it says `stale_crl = "allow"`, `/readyz` and
//! `/status` say why, and `check-config` warns ahead of time. Real
//! PostgreSQL behind the proxy, psql in front, CRLs made with rcgen.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use crate::support::*;

/// A PostgreSQL listener whose client CA is `ca`, with `crl`.
fn config(ca: &RawCa, crl: &Path, tls_extra: &str, audit: &Path) -> String {
    let base = listener_toml(
        &pg_upstream(),
        &format!("crl = \"{}\"\n{tls_extra}", crl.display()),
        "",
    );
    let ours = format!("client_ca = \"{}\"", ca.ca.display());
    let theirs = format!("client_ca = \"{}\"", pki().ca.display());
    assert!(base.contains(&theirs), "{base}");
    format!(
        "{ADMIN_ON}audit_log = \"{}\"\n{}",
        audit.display(),
        base.replace(&theirs, &ours)
    )
}

fn check_config(path: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .args(args)
        .output()
        .expect("running check-config")
}

fn status(proxy: &ProxyProcess) -> Value {
    let (code, body) = http_get(proxy.admin_addr(), "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status JSON")
}

fn audit_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line"))
        .collect()
}

/// The CRL is fresh when the proxy starts and goes stale while it runs,
/// with no reload: from then on the certificate it covers is refused as
/// `crl_expired` (which a certificate revoked after that CRL was issued
/// would otherwise pass), `/readyz` turns 503, `check-config` fails; a
/// fresh CRL, picked up by the file watcher, brings the listener back and
/// refuses the certificate revoked in the meantime as `revoked`.
#[test]
fn a_crl_that_goes_stale_while_serving_refuses_until_a_fresh_one_arrives() {
    let user = db_user("stalecrl");
    let ca = RawCa::new("stale CRL test CA");
    let (late, late_serial) = ca.client("late-revoked", |_| {});
    let (good, _) = ca.client("still-good", |_| {});
    let crl = ca.dir.path().join("ca.crl");
    let audit = ca.dir.path().join("audit.jsonl");
    let issued = OffsetDateTime::now_utc();
    // Long enough for the proxy to start and serve one login first.
    let next_update = issued + time::Duration::seconds(20);
    ca.write_crl(&crl, issued - time::Duration::days(7), next_update, &[], 1);
    let proxy = ProxyProcess::start(&config(&ca, &crl, "", &audit));
    let login = |cert| {
        psql(
            &conninfo(proxy.port(), &user.name, &user.name, cert, ""),
            "SELECT 1",
            Some(&user.password),
        )
    };

    // Fresh: the certificate logs in; check-config warns that the CRL
    // goes stale, with 20 seconds of its week left (less than a seventh),
    // and passes; so it does within an explicit --crl-warn window.
    let out = login(&late);
    assert!(out.status.success(), "{}", stderr(&out));
    let checked = check_config(&proxy.config_path, &[]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(
        stdout(&checked).contains("warning:")
            && stdout(&checked).contains("goes stale at")
            && stdout(&checked).contains("less than a seventh of its validity period left"),
        "{}",
        stdout(&checked)
    );
    let checked = check_config(&proxy.config_path, &["--crl-warn", "1d"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(
        stdout(&checked).contains("warning:") && stdout(&checked).contains("goes stale at"),
        "{}",
        stdout(&checked)
    );
    let route = &status(&proxy)["listeners"][0]["routes"][0];
    assert_eq!(route["crls"][0]["freshness"], "going_stale", "{route}");
    let (code, body) = http_get(proxy.admin_addr(), "/readyz");
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    // Past nextUpdate. Nothing is reloaded: time alone makes it stale.
    while OffsetDateTime::now_utc() <= next_update + time::Duration::seconds(1) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = login(&late);
    assert!(!out.status.success(), "psql connected under a stale CRL");
    assert!(
        stderr(&out).contains("certificate unknown"),
        "{}",
        stderr(&out)
    );
    let line = proxy.refusal("crl_expired");
    assert_eq!(line["identity"], "cn:late-revoked");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&crl.display().to_string()) && detail.contains("stale CRL test CA"),
        "{line}"
    );
    proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("CRL is past its nextUpdate"))
            && v["crl"] == crl.display().to_string()
    });
    let (code, body) = http_get(proxy.admin_addr(), "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("is stale since") && body.contains("crl_expired"),
        "{body}"
    );
    let s = status(&proxy);
    assert_eq!(s["ready"], false, "{s}");
    assert_eq!(s["not_ready"].as_array().map(Vec::len), Some(1), "{s}");
    let route = &s["listeners"][0]["routes"][0];
    assert_eq!(route["policy"]["stale_crl"], "refuse");
    assert_eq!(route["crls"][0]["stale"], true, "{route}");
    assert_eq!(route["crls"][0]["freshness"], "stale", "{route}");
    assert_eq!(route["crls"][0]["issuer"], "CN=stale CRL test CA");
    let checked = check_config(&proxy.config_path, &[]);
    assert!(!checked.status.success(), "{}", stdout(&checked));
    assert!(
        stdout(&checked).contains("error:") && stdout(&checked).contains("crl_expired"),
        "{}",
        stdout(&checked)
    );

    // The CA publishes a fresh CRL, which revokes the certificate.
    let now = OffsetDateTime::now_utc();
    ca.write_crl(
        &crl,
        now - time::Duration::minutes(1),
        now + time::Duration::days(7),
        &[&late_serial],
        2,
    );
    proxy.wait_for_log(Duration::from_secs(15), |v| {
        v["message"] == "TLS material reloaded"
    });
    let out = login(&late);
    assert!(!out.status.success(), "a revoked certificate logged in");
    proxy.refusal("revoked");
    let out = login(&good);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, body) = http_get(proxy.admin_addr(), "/readyz");
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    // A new week's CRL is fresh: green, and nothing to warn about.
    let route = &status(&proxy)["listeners"][0]["routes"][0];
    assert_eq!(route["crls"][0]["freshness"], "fresh", "{route}");
    let checked = check_config(&proxy.config_path, &[]);
    assert!(checked.status.success(), "{}", stdout(&checked));
    assert!(
        !stdout(&checked).contains("the CRL from"),
        "{}",
        stdout(&checked)
    );

    // Counted and audited under their own names.
    let m = proxy.metrics();
    for outcome in ["crl_expired", "revoked"] {
        assert_eq!(
            m.sum("intransit_handshakes_total", &[("outcome", outcome)]),
            1.0,
            "{outcome}:\n{}",
            m.text
        );
    }
    proxy.wait_for_log(Duration::from_secs(10), |v| {
        v["message"] == "connection audit" && v["outcome"] == "crl_expired"
    });
    let events = audit_events(&audit);
    let refused = events
        .iter()
        .find(|e| e["outcome"] == "crl_expired")
        .expect("a crl_expired audit event");
    assert_eq!(refused["client_cert"]["cn"], "late-revoked");
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("is stale")),
        "{refused}"
    );
}

/// `stale_crl = "allow"` admits a certificate the stale CRL does not list,
/// logs a warning at start, and stays ready with a warning on `/readyz`.
#[test]
fn stale_crl_allow_admits_with_a_warning() {
    let user = db_user("allowstale");
    let ca = RawCa::new("allowed stale CRL CA");
    let (cert, _) = ca.client("tolerated", |_| {});
    let crl = ca.dir.path().join("ca.crl");
    let audit = ca.dir.path().join("audit.jsonl");
    let now = OffsetDateTime::now_utc();
    ca.write_crl(
        &crl,
        now - time::Duration::days(30),
        now - time::Duration::days(23),
        &[],
        1,
    );
    let proxy = ProxyProcess::start(&config(&ca, &crl, "stale_crl = \"allow\"", &audit));
    let warned = proxy.wait_for_log(Duration::from_secs(5), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("CRL is past its nextUpdate"))
    });
    assert_eq!(warned["level"], "WARN", "{warned}");
    assert_eq!(warned["stale_crl"], "allow", "{warned}");

    let out = psql(
        &conninfo(proxy.port(), &user.name, &user.name, &cert, ""),
        "SELECT 1",
        Some(&user.password),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, body) = http_get(proxy.admin_addr(), "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("ready\nwarnings:\n") && body.contains("stale_crl = \"allow\""),
        "{body}"
    );
    let s = status(&proxy);
    assert_eq!(s["ready"], true, "{s}");
    assert_eq!(s["warnings"].as_array().map(Vec::len), Some(1), "{s}");

    let checked = check_config(&proxy.config_path, &[]);
    assert!(checked.status.success(), "{}", stdout(&checked));
    assert!(
        stdout(&checked).contains("warning:") && stdout(&checked).contains("is stale since"),
        "{}",
        stdout(&checked)
    );
}
