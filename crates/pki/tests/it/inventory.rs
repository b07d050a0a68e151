use std::fs;
use std::net::IpAddr;

use intransit_pki::{
    CertStatus, CertificateAuthority, CertificateKind, IssueRequest, KeyAlgorithm, PkiError,
    RenewalPolicy, RevocationReason, StateDir, Validity,
};
use time::{Duration, OffsetDateTime};

use crate::common::{
    assert_openssl_accepts, entries, mode, new_state, snapshot, summary_of, TestResult,
};

fn db_request(days: i64) -> Result<IssueRequest, PkiError> {
    let mut req = IssueRequest::new(CertificateKind::Server, "db.internal");
    req.dns_names = vec!["db.internal".to_owned()];
    req.ip_addresses = vec![IpAddr::from([10, 0, 0, 5])];
    req.validity = Validity::try_days_from_now(days)?;
    Ok(req)
}

fn trainer_request(days: i64) -> Result<IssueRequest, PkiError> {
    let mut req = IssueRequest::new(CertificateKind::Client, "trainer");
    req.uris = vec!["spiffe://prod/trainer".to_owned()];
    req.key = KeyAlgorithm::Ed25519;
    req.validity = Validity::try_days_from_now(days)?;
    Ok(req)
}

#[test]
fn issued_certificates_are_listed_with_their_files_and_status() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, _ca) = new_state(&tmp.path().join("state"))?;
    let ca = state.load_ca(None)?;
    let out = tmp.path().join("elsewhere/trainer");

    let db = state.issue(&ca, "db", &db_request(90)?, None, false)?;
    let trainer = state.issue(&ca, "trainer", &trainer_request(30)?, Some(&out), false)?;

    assert_eq!(db.paths.dir, state.cert_dir("db")?);
    assert!(!db.custom_dir);
    assert_eq!(trainer.paths.dir, out);
    assert!(trainer.custom_dir);
    for entry in [&db, &trainer] {
        assert_eq!(
            entries(&entry.paths.dir)?,
            ["ca.pem", "cert.pem", "chain.pem", "key.pem"]
        );
        assert_eq!(mode(&entry.paths.key)?, 0o600);
        assert_eq!(mode(&entry.paths.dir)?, 0o700);
    }
    assert_openssl_accepts(&db.paths.ca, &db.paths.cert, "sslserver")?;
    assert_openssl_accepts(&trainer.paths.ca, &trainer.paths.cert, "sslclient")?;
    assert_eq!(
        entries(state.root())?,
        [".lock", "ca", "certs", "inventory.json"]
    );

    let inventory = state.inventory()?;
    assert_eq!(inventory.entries, [db.clone(), trainer.clone()]);
    assert_eq!(inventory.crl_number, 0);
    assert!(inventory.revoked.is_empty());

    let db = inventory.get("db").ok_or("db missing")?;
    assert!(db.recorded);
    assert_eq!(db.kind, CertificateKind::Server);
    assert_eq!(db.key, KeyAlgorithm::EcdsaP256);
    assert_eq!(db.dns_names, ["db.internal"]);
    assert_eq!(db.ip_addresses, [IpAddr::from([10, 0, 0, 5])]);
    assert_eq!(db.lifetime.whole_days(), 90);
    assert!(db.previous_serials.is_empty());
    let cert = db.certificate.as_ref().ok_or("no certificate")?;
    assert_eq!(cert.serial_hex, db.serial_hex);
    assert_eq!(summary_of(&db.paths.cert)?, *cert);
    assert_eq!(cert.dns_names, ["db.internal"]);

    let trainer = inventory.get("trainer").ok_or("trainer missing")?;
    assert_eq!(trainer.key, KeyAlgorithm::Ed25519);
    assert_eq!(trainer.uris, ["spiffe://prod/trainer"]);
    assert_eq!(trainer.lifetime.whole_days(), 30);
    assert_eq!(trainer.paths.dir, out);

    // Status over time, with a fake clock: valid, due, expired.
    let policy = RenewalPolicy::default();
    let now = OffsetDateTime::now_utc();
    let (nb, na) = (cert.not_before, cert.not_after);
    assert_eq!(db.status(now, &policy), CertStatus::Valid);
    assert_eq!(db.days_left(now), Some(89));
    assert_eq!(
        db.status(nb + Duration::days(59), &policy),
        CertStatus::Valid
    );
    assert_eq!(
        db.status(nb + Duration::days(61), &policy),
        CertStatus::DueForRenewal
    );
    assert_eq!(db.status(na, &policy), CertStatus::DueForRenewal);
    assert_eq!(
        db.status(na + Duration::seconds(1), &policy),
        CertStatus::Expired
    );
    assert_eq!(db.days_left(na + Duration::days(2)), Some(-2));
    assert_eq!(
        state.due_for_renewal(nb + Duration::days(25), &policy)?,
        ["trainer"]
    );
    assert_eq!(
        state.due_for_renewal(nb + Duration::days(61), &policy)?,
        ["db", "trainer"]
    );
    assert!(state.due_for_renewal(now, &policy)?.is_empty());

    // Revoked wins over everything, and is no longer "due".
    state.revoke("db", RevocationReason::KeyCompromise, now)?;
    let inventory = state.inventory()?;
    let db = inventory.get("db").ok_or("db missing")?;
    assert_eq!(db.status(now, &policy), CertStatus::Revoked);
    assert_eq!(
        db.status(na + Duration::days(1), &policy),
        CertStatus::Revoked
    );
    let revocation = db.revocation.as_ref().ok_or("no revocation")?;
    assert_eq!(revocation.reason, RevocationReason::KeyCompromise);
    assert_eq!(revocation.name.as_deref(), Some("db"));
    assert_eq!(revocation.serial_hex, db.serial_hex);
    assert_eq!(
        state.due_for_renewal(nb + Duration::days(61), &policy)?,
        ["trainer"]
    );

    // The inventory file is plain JSON a person can read.
    let json = fs::read_to_string(state.inventory_path())?;
    assert!(json.contains("\"name\": \"db\""), "{json}");
    assert!(json.contains("\"reason\": \"keyCompromise\""), "{json}");
    assert!(!json.contains("PRIVATE KEY"));
    Ok(())
}

#[test]
fn an_existing_name_is_refused_unless_forced() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, ca) = new_state(tmp.path())?;
    let first = state.issue(&ca, "db", &db_request(90)?, None, false)?;

    let before = snapshot(state.root())?;
    let err = state.issue(&ca, "db", &db_request(30)?, None, false).err();
    match err {
        Some(PkiError::AlreadyIssued { name, dir }) => {
            assert_eq!(name, "db");
            assert_eq!(dir, first.paths.dir);
        }
        other => return Err(format!("expected AlreadyIssued, got {other:?}").into()),
    }
    assert_eq!(snapshot(state.root())?, before);

    // Forced: replaced in place, the old serial kept in the history.
    let second = state.issue(&ca, "db", &db_request(30)?, None, true)?;
    assert_ne!(second.serial_hex, first.serial_hex);
    assert_eq!(second.paths, first.paths);
    assert_eq!(second.lifetime.whole_days(), 30);
    let history: Vec<&str> = second
        .previous_serials
        .iter()
        .map(|p| p.serial_hex.as_str())
        .collect();
    assert_eq!(history, [first.serial_hex.as_str()]);
    assert_eq!(
        entries(&second.paths.dir)?,
        ["ca.pem", "cert.pem", "chain.pem", "key.pem"]
    );
    assert_eq!(
        summary_of(&second.paths.cert)?.serial_hex,
        second.serial_hex
    );
    Ok(())
}

#[test]
fn an_output_directory_with_other_files_is_refused_unless_forced() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, ca) = new_state(&tmp.path().join("state"))?;
    let out = tmp.path().join("pg");
    fs::create_dir(&out)?;
    fs::write(out.join("cert.pem"), "someone else's certificate")?;
    fs::write(out.join("postgresql.conf"), "ssl = on")?;

    let before = snapshot(tmp.path())?;
    let err = state
        .issue(&ca, "db", &db_request(90)?, Some(&out), false)
        .err();
    assert!(
        matches!(&err, Some(PkiError::OutputOccupied { dir, file }) if dir == &out && file == "cert.pem"),
        "{err:?}"
    );
    assert_eq!(snapshot(tmp.path())?, before);

    // Forced, our files replace theirs and nothing else is touched.
    state.issue(&ca, "db", &db_request(90)?, Some(&out), true)?;
    assert_eq!(
        entries(&out)?,
        [
            "ca.pem",
            "cert.pem",
            "chain.pem",
            "key.pem",
            "postgresql.conf"
        ]
    );
    assert_eq!(fs::read_to_string(out.join("postgresql.conf"))?, "ssl = on");

    // Two names can never share a directory, forced or not.
    let err = state
        .issue(&ca, "db2", &db_request(90)?, Some(&out), true)
        .err();
    assert!(matches!(err, Some(PkiError::InvalidRequest(_))), "{err:?}");
    Ok(())
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_behind() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, ca) = new_state(&tmp.path().join("state"))?;
    state.issue(&ca, "db", &db_request(90)?, None, false)?;
    let before = snapshot(tmp.path())?;

    // Days <= 0.
    for days in [0, -5] {
        assert!(matches!(
            db_request(days),
            Err(PkiError::InvalidDays { .. })
        ));
    }
    // An invalid name, an invalid request.
    let err = state
        .issue(&ca, "../x", &db_request(90)?, None, false)
        .err();
    assert!(
        matches!(err, Some(PkiError::InvalidCertificateName(_))),
        "{err:?}"
    );
    let mut no_names = db_request(90)?;
    no_names.dns_names.clear();
    no_names.ip_addresses.clear();
    let err = state.issue(&ca, "web", &no_names, None, false).err();
    assert!(matches!(err, Some(PkiError::InvalidRequest(_))), "{err:?}");
    // An output directory that cannot be created: below a regular file.
    // (Permission bits would not stop the root user the tests may run as.)
    let blocker = tmp.path().join("a-file");
    fs::write(&blocker, "x")?;
    let before_blocked = snapshot(tmp.path())?;
    let err = state
        .issue(
            &ca,
            "web",
            &db_request(90)?,
            Some(&blocker.join("sub/dir")),
            false,
        )
        .err();
    assert!(matches!(err, Some(PkiError::Io { .. })), "{err:?}");
    assert_eq!(snapshot(tmp.path())?, before_blocked);
    fs::remove_file(&blocker)?;
    assert_eq!(snapshot(tmp.path())?, before);

    // A damaged inventory stops every operation before any file is written.
    let inventory = state.inventory_path();
    fs::write(&inventory, "{ not json")?;
    let damaged = snapshot(tmp.path())?;
    let err = state.issue(&ca, "web", &db_request(90)?, None, false).err();
    assert!(matches!(err, Some(PkiError::Inventory { .. })), "{err:?}");
    assert!(matches!(state.inventory(), Err(PkiError::Inventory { .. })));
    let err = state
        .revoke(
            "db",
            RevocationReason::Superseded,
            OffsetDateTime::now_utc(),
        )
        .err();
    assert!(matches!(err, Some(PkiError::Inventory { .. })), "{err:?}");
    assert_eq!(snapshot(tmp.path())?, damaged);
    Ok(())
}

#[test]
fn missing_corrupt_and_mismatched_ca_files_are_clear_errors() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path().join("state"));
    assert!(matches!(state.load_ca(None), Err(PkiError::NoCa { .. })));

    let (state, ca) = new_state(&tmp.path().join("state"))?;
    let other = tmp.path().join("other");
    crate::common::new_ca(KeyAlgorithm::EcdsaP256)?.save(&other)?;
    let key = state.ca_dir().join("key.pem");
    let cert = state.ca_dir().join("ca.pem");

    // A key from another CA.
    let original_key = fs::read(&key)?;
    fs::copy(other.join("key.pem"), &key)?;
    match state.load_ca(None) {
        Err(PkiError::Load { source, .. }) => {
            assert!(matches!(*source, PkiError::KeyMismatch), "{source:?}")
        }
        other => return Err(format!("expected a key mismatch, got {other:?}").into()),
    }
    fs::write(&key, original_key)?;

    // A corrupt certificate.
    let original_cert = fs::read(&cert)?;
    fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )?;
    assert!(matches!(state.load_ca(None), Err(PkiError::Load { .. })));
    fs::write(&cert, &original_cert)?;

    // Half a CA.
    fs::remove_file(&key)?;
    assert!(matches!(
        state.load_ca(None),
        Err(PkiError::IncompleteCa { missing, .. }) if missing == key
    ));
    drop(ca);
    Ok(())
}

#[test]
fn quickstart_certificates_are_in_the_inventory() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path());
    let q = state.ensure_quickstart(&["localhost".to_owned()], &[], "app")?;
    let inventory = state.inventory()?;
    let names: Vec<&str> = inventory.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["client", "server"]);
    let server = inventory.get("server").ok_or("server missing")?;
    assert!(server.recorded);
    assert_eq!(server.paths, q.server);
    assert_eq!(server.kind, CertificateKind::Server);
    assert_eq!(server.lifetime.whole_days(), 90);
    let client = inventory.get("client").ok_or("client missing")?;
    assert_eq!(client.common_name, "app");
    assert_eq!(summary_of(&q.client.cert)?.serial_hex, client.serial_hex);

    // A second run that reuses everything writes nothing.
    let before = snapshot(tmp.path())?;
    assert!(
        !state
            .ensure_quickstart(&["localhost".to_owned()], &[], "app")?
            .created
    );
    assert_eq!(snapshot(tmp.path())?, before);

    // A revoked quickstart certificate is replaced on the next run.
    let old = client.serial_hex.clone();
    state.revoke(
        "client",
        RevocationReason::KeyCompromise,
        OffsetDateTime::now_utc(),
    )?;
    assert!(
        state
            .ensure_quickstart(&["localhost".to_owned()], &[], "app")?
            .created
    );
    let inventory = state.inventory()?;
    let client = inventory.get("client").ok_or("client missing")?;
    assert_ne!(client.serial_hex, old);
    assert!(client.revocation.is_none());
    assert_eq!(client.previous_serials.len(), 1);
    assert_eq!(client.previous_serials[0].serial_hex, old);
    Ok(())
}

#[test]
fn state_directories_from_before_the_inventory_still_list() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path());
    let q = state.ensure_quickstart(&[], &[], "app")?;
    fs::remove_file(state.inventory_path())?;
    // Leftovers that are not certificates are ignored.
    fs::create_dir_all(state.certs_dir().join("empty"))?;
    fs::create_dir_all(state.certs_dir().join(".server.tmp"))?;

    let inventory = state.inventory()?;
    let names: Vec<&str> = inventory.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["client", "server"]);
    let server = inventory.get("server").ok_or("server missing")?;
    assert!(!server.recorded);
    assert_eq!(server.kind, CertificateKind::Server);
    assert_eq!(server.key, KeyAlgorithm::EcdsaP256);
    assert_eq!(server.dns_names, ["localhost"]);
    assert_eq!(server.paths, q.server);
    assert_eq!(
        server.status(OffsetDateTime::now_utc(), &RenewalPolicy::default()),
        CertStatus::Valid
    );
    // Listing does not write.
    assert!(!state.inventory_path().exists());

    // An unrecorded name still cannot be issued over without force, and
    // it can be revoked and renewed, which records it.
    let ca = CertificateAuthority::load(&state.ca_dir())?;
    let err = state
        .issue(&ca, "server", &db_request(90)?, None, false)
        .err();
    assert!(
        matches!(err, Some(PkiError::AlreadyIssued { .. })),
        "{err:?}"
    );
    let options = intransit_pki::RenewOptions {
        force: true,
        ..Default::default()
    };
    state.renew(&ca, "server", &options, OffsetDateTime::now_utc())?;
    let server = state
        .inventory()?
        .get("server")
        .cloned()
        .ok_or("server missing")?;
    assert!(server.recorded);
    assert_eq!(server.previous_serials.len(), 1);
    Ok(())
}

#[test]
fn expiry_check_names_expired_and_expiring_certificates() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, ca) = new_state(tmp.path())?;
    state.issue(&ca, "db", &db_request(90)?, None, false)?;
    state.issue(&ca, "trainer", &trainer_request(10)?, None, false)?;
    let now = OffsetDateTime::now_utc();

    assert!(state.check_expiry(now, Duration::days(5))?.is_empty());
    let findings = state.check_expiry(now, Duration::days(30))?;
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].what, "trainer");
    assert_eq!(findings[0].state, intransit_pki::ExpiryState::Expiring);
    assert_eq!(findings[0].days_left, 9);

    // In 100 days both have expired; the CA (a year) is expiring.
    let later = now + Duration::days(100);
    let findings = state.check_expiry(later, Duration::days(300))?;
    let summary: Vec<(&str, intransit_pki::ExpiryState)> = findings
        .iter()
        .map(|f| (f.what.as_str(), f.state))
        .collect();
    assert_eq!(
        summary,
        [
            ("trainer", intransit_pki::ExpiryState::Expired),
            ("db", intransit_pki::ExpiryState::Expired),
            ("CA", intransit_pki::ExpiryState::Expiring),
        ]
    );
    assert!(findings[0].days_left < -80);

    // Revoked certificates are not reported.
    state.revoke("trainer", RevocationReason::CessationOfOperation, now)?;
    let findings = state.check_expiry(later, Duration::days(1))?;
    let names: Vec<&str> = findings.iter().map(|f| f.what.as_str()).collect();
    assert_eq!(names, ["db"]);
    Ok(())
}

#[test]
fn concurrent_issues_from_many_writers_keep_every_record() -> TestResult {
    // Each writer opens the state directory on its own, as separate
    // processes would; without the state lock, read-modify-write of the
    // inventory loses records.
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("state");
    new_state(&root)?;
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let root = root.clone();
            std::thread::spawn(move || -> Result<(), PkiError> {
                let state = StateDir::new(&root);
                let ca = state.load_ca(None)?;
                for j in 0..3 {
                    let mut req = IssueRequest::new(CertificateKind::Client, "writer");
                    req.validity = Validity::try_days_from_now(1)?;
                    state.issue(&ca, &format!("w{i}-{j}"), &req, None, false)?;
                }
                Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.join().map_err(|_| "a writer panicked")??;
    }
    let state = StateDir::new(&root);
    let recorded = state
        .inventory()?
        .entries
        .iter()
        .filter(|e| e.recorded)
        .count();
    assert_eq!(recorded, 24);
    Ok(())
}
