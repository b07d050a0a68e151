use std::fs;

use intransit_pki::{
    spki_pin, CertificateKind, IssueRequest, IssuedEntry, KeyAlgorithm, PkiError, RenewOptions,
    RenewOutcome, RenewalPlan, RenewalPolicy, RevocationReason, Validity,
};
use time::{Duration, OffsetDateTime};

use crate::common::{assert_openssl_accepts, entries, new_state, snapshot, summary_of, TestResult};

fn server(days: i64, key: KeyAlgorithm) -> Result<IssueRequest, PkiError> {
    let mut req = IssueRequest::new(CertificateKind::Server, "db.internal");
    req.dns_names = vec!["db.internal".to_owned()];
    req.key = key;
    req.validity = Validity::try_days_from_now(days)?;
    Ok(req)
}

fn pin_of(entry: &IssuedEntry) -> Result<String, Box<dyn std::error::Error>> {
    let der = intransit_pki::pem_to_der_certs(&fs::read_to_string(&entry.paths.cert)?)?;
    Ok(spki_pin(der.first().ok_or("no certificate")?)?)
}

fn renewed(
    outcome: RenewOutcome,
) -> Result<(String, String, IssuedEntry), Box<dyn std::error::Error>> {
    match outcome {
        RenewOutcome::Renewed {
            old_serial,
            new_serial,
            entry,
        } => Ok((old_serial, new_serial, *entry)),
        other => Err(format!("expected a renewal, got {other:?}").into()),
    }
}

#[test]
fn not_due_then_due_then_renewed_with_a_new_key() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, ca) = new_state(tmp.path())?;
    let first = state.issue(
        &ca,
        "db",
        &server(90, KeyAlgorithm::EcdsaP384)?,
        None,
        false,
    )?;
    let cert = first.certificate.clone().ok_or("no certificate")?;
    let first_pin = pin_of(&first)?;
    let options = RenewOptions::default();
    let now = OffsetDateTime::now_utc();

    // Not due: nothing changes, and the answer says when it will be.
    let before = snapshot(tmp.path())?;
    let plan = RenewalPlan::for_certificate(&cert, &options.policy);
    match state.renew(&ca, "db", &options, now)? {
        RenewOutcome::NotDue { due_at, expires_at } => {
            assert_eq!(due_at, plan.due_at);
            assert_eq!(expires_at, cert.not_after);
            let nominal = cert.not_before + (cert.not_after - cert.not_before) * 2_i32 / 3_i32;
            assert!(due_at <= nominal && due_at >= nominal - Duration::hours(6));
        }
        other => return Err(format!("expected NotDue, got {other:?}").into()),
    }
    assert_eq!(snapshot(tmp.path())?, before);

    // Past the renewal point (fake clock): renewed, same names, key type
    // and lifetime, a new key, files replaced, old serial in the history.
    let later = plan.due_at + Duration::minutes(1);
    let (old, new, entry) = renewed(state.renew(&ca, "db", &options, later)?)?;
    assert_eq!(old, first.serial_hex);
    assert_ne!(new, old);
    assert_eq!(entry.serial_hex, new);
    assert_eq!(summary_of(&entry.paths.cert)?.serial_hex, new);
    assert_eq!(entry.key, KeyAlgorithm::EcdsaP384);
    assert_eq!(entry.dns_names, ["db.internal"]);
    assert_eq!(entry.lifetime, first.lifetime);
    assert_ne!(pin_of(&entry)?, first_pin);
    assert_eq!(entry.previous_serials.len(), 1);
    assert_eq!(entry.previous_serials[0].serial_hex, old);
    assert_eq!(entry.previous_serials[0].replaced_at, later);
    let cert = entry.certificate.clone().ok_or("no certificate")?;
    // The new validity starts at the (fake) renewal time.
    assert_eq!(
        cert.not_before,
        (later - intransit_pki::CLOCK_SKEW_ALLOWANCE).replace_nanosecond(0)?
    );
    assert_eq!(cert.key_description, "ECDSA P-384");
    assert_eq!(
        entries(&entry.paths.dir)?,
        ["ca.pem", "cert.pem", "chain.pem", "key.pem"]
    );
    assert_eq!(state.inventory()?.get("db"), Some(&entry));
    Ok(())
}

#[test]
fn forced_renewal_can_keep_the_key() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, ca) = new_state(tmp.path())?;
    let out = tmp.path().join("pg");
    let first = state.issue(
        &ca,
        "db",
        &server(90, KeyAlgorithm::Rsa2048)?,
        Some(&out),
        false,
    )?;
    let key_before = fs::read(&first.paths.key)?;
    let first_pin = pin_of(&first)?;
    let now = OffsetDateTime::now_utc();
    let options = RenewOptions {
        reuse_key: true,
        force: true,
        ..RenewOptions::default()
    };

    let (old, new, entry) = renewed(state.renew(&ca, "db", &options, now)?)?;
    assert_ne!(old, new);
    assert_eq!(entry.paths.dir, out, "a chosen directory is kept");
    assert_eq!(pin_of(&entry)?, first_pin);
    assert_eq!(fs::read(&entry.paths.key)?, key_before);
    assert_openssl_accepts(&entry.paths.ca, &entry.paths.cert, "sslserver")?;

    // Twice more: the history grows in order.
    let (_, third, _) = renewed(state.renew(&ca, "db", &options, now)?)?;
    let (_, _, entry) = renewed(state.renew(&ca, "db", &options, now)?)?;
    let history: Vec<&str> = entry
        .previous_serials
        .iter()
        .map(|p| p.serial_hex.as_str())
        .collect();
    assert_eq!(history, [old.as_str(), new.as_str(), third.as_str()]);
    Ok(())
}

#[test]
fn a_key_that_does_not_match_is_refused_and_nothing_changes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, ca) = new_state(tmp.path())?;
    let db = state.issue(
        &ca,
        "db",
        &server(90, KeyAlgorithm::EcdsaP256)?,
        None,
        false,
    )?;
    let other = state.issue(
        &ca,
        "other",
        &server(90, KeyAlgorithm::EcdsaP256)?,
        None,
        false,
    )?;
    fs::copy(&other.paths.key, &db.paths.key)?;
    let before = snapshot(tmp.path())?;
    let options = RenewOptions {
        reuse_key: true,
        force: true,
        ..RenewOptions::default()
    };
    let err = state
        .renew(&ca, "db", &options, OffsetDateTime::now_utc())
        .err();
    assert!(
        matches!(&err, Some(PkiError::CertificateKeyMismatch { key, .. }) if key == &db.paths.key),
        "{err:?}"
    );
    assert_eq!(snapshot(tmp.path())?, before);

    // Without reuse_key the mismatch does not matter: a new key is made.
    let options = RenewOptions {
        force: true,
        ..RenewOptions::default()
    };
    renewed(state.renew(&ca, "db", &options, OffsetDateTime::now_utc())?)?;

    // A key revoked as compromised is never reused.
    state.revoke(
        "db",
        RevocationReason::KeyCompromise,
        OffsetDateTime::now_utc(),
    )?;
    let reuse = RenewOptions {
        reuse_key: true,
        force: true,
        ..RenewOptions::default()
    };
    let err = state
        .renew(&ca, "db", &reuse, OffsetDateTime::now_utc())
        .err();
    assert!(matches!(err, Some(PkiError::InvalidRequest(_))), "{err:?}");

    let err = state
        .renew(&ca, "nobody", &options, OffsetDateTime::now_utc())
        .err();
    assert!(
        matches!(err, Some(PkiError::UnknownCertificate(_))),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn missing_files_count_as_due_and_are_restored() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, ca) = new_state(tmp.path())?;
    let db = state.issue(
        &ca,
        "db",
        &server(90, KeyAlgorithm::EcdsaP256)?,
        None,
        false,
    )?;
    fs::remove_file(&db.paths.cert)?;
    let now = OffsetDateTime::now_utc();
    let policy = RenewalPolicy::default();
    let inventory = state.inventory()?;
    let entry = inventory.get("db").ok_or("db missing")?;
    assert_eq!(
        entry.status(now, &policy),
        intransit_pki::CertStatus::Unreadable
    );
    assert!(entry
        .problem
        .as_deref()
        .is_some_and(|p| p.contains("cert.pem")));
    assert_eq!(
        entry.serial_hex, db.serial_hex,
        "the recorded serial is used"
    );
    assert_eq!(state.due_for_renewal(now, &policy)?, ["db"]);

    let (old, _, entry) = renewed(state.renew(&ca, "db", &RenewOptions::default(), now)?)?;
    assert_eq!(old, db.serial_hex);
    assert!(entry.certificate.is_some());
    assert!(state.due_for_renewal(now, &policy)?.is_empty());
    Ok(())
}

#[test]
fn jitter_is_deterministic_and_spreads_a_fleet() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, ca) = new_state(tmp.path())?;
    let policy = RenewalPolicy::default();
    let mut due_times = Vec::new();
    for i in 0..8 {
        let name = format!("db{i}");
        let entry = state.issue(
            &ca,
            &name,
            &server(90, KeyAlgorithm::EcdsaP256)?,
            None,
            false,
        )?;
        let plan = entry.renewal_plan(&policy).ok_or("no plan")?;
        // Listing again, later, gives the same plan.
        let again = state.inventory()?;
        let listed = again.get(&name).and_then(|e| e.renewal_plan(&policy));
        assert_eq!(listed, Some(plan));
        let cert = entry.certificate.ok_or("no certificate")?;
        let nominal = cert.not_before + (cert.not_after - cert.not_before) * 2_i32 / 3_i32;
        assert!(plan.due_at <= nominal);
        assert!(plan.due_at >= nominal - RenewalPolicy::DEFAULT_MAX_JITTER);
        due_times.push((plan.due_at - nominal).whole_seconds());
    }
    due_times.sort_unstable();
    due_times.dedup();
    // Issued within a second or two of each other, yet due at different times.
    assert!(due_times.len() >= 6, "{due_times:?}");
    Ok(())
}
