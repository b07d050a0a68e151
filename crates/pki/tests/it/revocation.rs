use std::fs;
use std::path::Path;

use intransit_pki::{
    CertificateKind, IssueRequest, PkiError, RevocationReason, StateDir, Validity,
};
use time::{Duration, OffsetDateTime};

use crate::common::{new_state, openssl, openssl_ok, path_str, TestResult};

fn client(name: &str) -> Result<IssueRequest, PkiError> {
    let mut req = IssueRequest::new(CertificateKind::Client, name);
    req.validity = Validity::try_days_from_now(30)?;
    Ok(req)
}

/// `openssl verify -crl_check` of `cert` against the state's CA and `crl`.
fn verify_with_crl(
    state: &StateDir,
    crl: &Path,
    cert: &Path,
) -> Result<(bool, String), Box<dyn std::error::Error>> {
    let ca = state.ca_dir().join("ca.pem");
    let out = openssl(
        &[
            "verify",
            "-crl_check",
            "-CRLfile",
            path_str(crl)?,
            "-CAfile",
            path_str(&ca)?,
            "-purpose",
            "sslclient",
            path_str(cert)?,
        ],
        None,
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn crl_text(crl: &Path) -> Result<String, Box<dyn std::error::Error>> {
    openssl_ok(&["crl", "-in", path_str(crl)?, "-noout", "-text"], None)
}

/// The CRL number openssl reports.
fn crl_number(crl: &Path) -> Result<u64, Box<dyn std::error::Error>> {
    let out = openssl_ok(
        &["crl", "-in", path_str(crl)?, "-noout", "-crlnumber"],
        None,
    )?;
    let hex = out
        .trim()
        .trim_start_matches("crlNumber=")
        .trim_start_matches("0x");
    Ok(u64::from_str_radix(hex, 16)?)
}

#[test]
fn openssl_rejects_revoked_certificates_and_accepts_the_others() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, ca) = new_state(tmp.path())?;
    let alice = state.issue(&ca, "alice", &client("alice")?, None, false)?;
    let bob = state.issue(&ca, "bob", &client("bob")?, None, false)?;
    let carol = state.issue(&ca, "carol", &client("carol")?, None, false)?;

    // An empty CRL first: everyone passes.
    let crl = state.write_crl(&ca, Duration::days(7), None)?;
    assert_eq!(crl, state.crl_path());
    assert_eq!(crl_number(&crl)?, 1);
    for who in [&alice, &bob, &carol] {
        let (ok, text) = verify_with_crl(&state, &crl, &who.paths.cert)?;
        assert!(ok, "{}: {text}", who.name);
    }

    // Revoke alice by name and bob by serial (lowercase, with colons).
    let now = OffsetDateTime::now_utc();
    let by_name = state.revoke("alice", RevocationReason::KeyCompromise, now)?;
    assert_eq!(by_name.serial_hex, alice.serial_hex);
    let colons: Vec<String> = bob
        .serial_hex
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_lowercase())
        .collect();
    let by_serial = state.revoke(&colons.join(":"), RevocationReason::Superseded, now)?;
    assert_eq!(by_serial.name.as_deref(), Some("bob"));

    let crl = state.write_crl(&ca, Duration::days(7), None)?;
    assert_eq!(crl_number(&crl)?, 2);
    for revoked in [&alice, &bob] {
        let (ok, text) = verify_with_crl(&state, &crl, &revoked.paths.cert)?;
        assert!(!ok, "{} accepted: {text}", revoked.name);
        assert!(text.contains("certificate revoked"), "{text}");
    }
    let (ok, text) = verify_with_crl(&state, &crl, &carol.paths.cert)?;
    assert!(ok, "{text}");

    let text = crl_text(&crl)?;
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("Superseded"), "{text}");
    assert!(text.contains("Next Update"), "{text}");
    assert!(text.contains(&alice.serial_hex), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");

    // nextUpdate is seven days after thisUpdate.
    let dates = openssl_ok(
        &[
            "crl",
            "-in",
            path_str(&crl)?,
            "-noout",
            "-lastupdate",
            "-nextupdate",
        ],
        None,
    )?;
    assert!(dates.contains("nextUpdate="), "{dates}");

    // The number keeps growing, also when written elsewhere.
    let out = tmp.path().join("published/crl.pem");
    fs::create_dir_all(out.parent().ok_or("no parent")?)?;
    assert_eq!(state.write_crl(&ca, Duration::days(1), Some(&out))?, out);
    assert_eq!(crl_number(&out)?, 3);
    assert_eq!(state.inventory()?.crl_number, 3);
    assert_eq!(
        crl_number(&state.write_crl(&ca, Duration::days(1), None)?)?,
        4
    );
    Ok(())
}

#[test]
fn revoking_unknown_or_revoked_certificates_is_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, ca) = new_state(tmp.path())?;
    let alice = state.issue(&ca, "alice", &client("alice")?, None, false)?;
    let now = OffsetDateTime::now_utc();

    for unknown in ["mallory", "DEADBEEF", ""] {
        let err = state
            .revoke(unknown, RevocationReason::Unspecified, now)
            .err();
        assert!(
            matches!(&err, Some(PkiError::UnknownCertificate(what)) if what == unknown),
            "{unknown:?}: {err:?}"
        );
    }
    state.revoke("alice", RevocationReason::CessationOfOperation, now)?;
    let before = fs::read(state.inventory_path())?;
    let err = state
        .revoke(&alice.serial_hex, RevocationReason::KeyCompromise, now)
        .err();
    assert!(
        matches!(&err, Some(PkiError::AlreadyRevoked { serial, .. }) if serial == &alice.serial_hex),
        "{err:?}"
    );
    assert_eq!(fs::read(state.inventory_path())?, before);

    // An earlier serial of a renewed certificate can still be revoked.
    let replaced = state.issue(&ca, "alice", &client("alice")?, None, true)?;
    let bob = state.issue(&ca, "bob", &client("bob")?, None, false)?;
    let bob_old = bob.serial_hex.clone();
    state.issue(&ca, "bob", &client("bob")?, None, true)?;
    let revoked = state.revoke(&bob_old, RevocationReason::Superseded, now)?;
    assert_eq!(revoked.name.as_deref(), Some("bob"));
    let inventory = state.inventory()?;
    assert!(inventory.get("bob").is_some_and(|b| b.revocation.is_none()));
    assert!(inventory
        .get("alice")
        .is_some_and(|a| a.revocation.is_none()));
    assert_eq!(inventory.revoked.len(), 2);
    assert_ne!(replaced.serial_hex, alice.serial_hex);

    // The CRL lists both, with their reasons; "unspecified" is omitted
    // from the entry, as RFC 5280 asks.
    let crl = state.write_crl(&ca, Duration::days(7), None)?;
    let text = crl_text(&crl)?;
    assert!(text.contains(&alice.serial_hex), "{text}");
    assert!(text.contains(&bob_old), "{text}");
    assert!(text.contains("Cessation Of Operation"), "{text}");

    // A non-positive nextUpdate is refused and does not use up a number.
    let err = state.write_crl(&ca, Duration::ZERO, None).err();
    assert!(matches!(err, Some(PkiError::InvalidRequest(_))), "{err:?}");
    assert_eq!(state.inventory()?.crl_number, 1);
    Ok(())
}

#[test]
fn crl_pem_without_reasons_still_works() -> TestResult {
    // The older entry point, used by the proxy's tests.
    let tmp = tempfile::tempdir()?;
    let (state, ca) = new_state(tmp.path())?;
    let alice = state.issue(&ca, "alice", &client("alice")?, None, false)?;
    let crl = tmp.path().join("crl.pem");
    fs::write(
        &crl,
        ca.crl_pem(&[&alice.serial_hex], Duration::days(7), 9)?,
    )?;
    let (ok, text) = verify_with_crl(&state, &crl, &alice.paths.cert)?;
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    assert_eq!(crl_number(&crl)?, 9);
    Ok(())
}
