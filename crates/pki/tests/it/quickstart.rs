use std::fs;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use intransit_pki::{
    pem_to_der_certs, sha256_fingerprint, summarize, CertificateAuthority, KeyAlgorithm, PkiError,
    Quickstart, StateDir, Validity,
};
use time::{Duration, OffsetDateTime};

use crate::common::{
    assert_openssl_accepts, entries, handshake, mode, server_request, snapshot, Credentials,
    TestResult,
};

fn localhost() -> (Vec<String>, Vec<IpAddr>) {
    (
        vec!["localhost".to_owned()],
        vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ],
    )
}

fn run(state: &StateDir) -> Result<Quickstart, PkiError> {
    let (dns, ips) = localhost();
    state.ensure_quickstart(&dns, &ips, "app")
}

fn fingerprint_of(path: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let ders = pem_to_der_certs(&fs::read_to_string(path)?)?;
    Ok(sha256_fingerprint(&ders[0]))
}

/// Fingerprints of the CA, server and client certificates.
fn fingerprints(q: &Quickstart) -> Result<[String; 3], Box<dyn std::error::Error>> {
    Ok([
        fingerprint_of(&q.ca_cert)?,
        fingerprint_of(&q.server.cert)?,
        fingerprint_of(&q.client.cert)?,
    ])
}

#[test]
fn first_run_creates_everything_and_the_second_reuses_it() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path().join("state"));
    let first = run(&state)?;
    assert!(first.created);
    assert_eq!(first.ca_cert, state.ca_dir().join("ca.pem"));
    assert_eq!(first.server.dir, state.cert_dir("server")?);
    assert_eq!(first.client.dir, state.cert_dir("client")?);

    assert_eq!(mode(state.root())?, 0o700);
    assert_eq!(mode(&state.ca_dir())?, 0o700);
    assert_eq!(mode(&state.ca_dir().join("key.pem"))?, 0o600);
    assert_eq!(mode(&first.server.key)?, 0o600);
    assert_eq!(mode(&first.client.key)?, 0o600);
    assert_eq!(
        entries(state.root())?,
        [".lock", "ca", "certs", "inventory.json"]
    );
    assert_eq!(entries(&state.certs_dir())?, ["client", "server"]);

    let ca = summarize(&pem_to_der_certs(&fs::read_to_string(&first.ca_cert)?)?[0])?;
    assert_eq!(ca.subject, "O=intransit, CN=intransit local CA");
    assert_eq!(ca.key_description, "ECDSA P-256");
    let server = summarize(&pem_to_der_certs(&fs::read_to_string(&first.server.cert)?)?[0])?;
    assert_eq!(server.common_name.as_deref(), Some("localhost"));
    assert_eq!(server.dns_names, ["localhost"]);
    assert_eq!(server.ip_addresses, localhost().1);
    assert!(server.not_after - OffsetDateTime::now_utc() > Duration::days(89));
    let client = summarize(&pem_to_der_certs(&fs::read_to_string(&first.client.cert)?)?[0])?;
    assert_eq!(client.common_name.as_deref(), Some("app"));
    assert_eq!(client.extended_key_usages, ["clientAuth"]);
    assert!(client.not_after - OffsetDateTime::now_utc() > Duration::days(29));

    assert_openssl_accepts(&first.ca_cert, &first.server.cert, "sslserver")?;
    assert_openssl_accepts(&first.ca_cert, &first.client.cert, "sslclient")?;
    let server_pem = (
        fs::read_to_string(&first.ca_cert)?,
        fs::read_to_string(&first.server.chain)?,
        fs::read_to_string(&first.server.key)?,
    );
    let client_pem = (
        fs::read_to_string(&first.client.ca)?,
        fs::read_to_string(&first.client.chain)?,
        fs::read_to_string(&first.client.key)?,
    );
    let server_creds = Credentials {
        trust_ca_pem: &server_pem.0,
        chain_pem: &server_pem.1,
        key_pem: &server_pem.2,
    };
    let client_creds = Credentials {
        trust_ca_pem: &client_pem.0,
        chain_pem: &client_pem.1,
        key_pem: &client_pem.2,
    };
    handshake(&server_creds, &client_creds, "localhost")??;
    handshake(&server_creds, &client_creds, "::1")??;

    let before = snapshot(state.root())?;
    let second = run(&state)?;
    assert!(!second.created);
    assert_eq!(
        second,
        Quickstart {
            created: false,
            ..first.clone()
        }
    );
    assert_eq!(fingerprints(&second)?, fingerprints(&first)?);
    assert_eq!(snapshot(state.root())?, before);
    Ok(())
}

#[test]
fn expired_leaf_is_reissued_and_the_rest_reused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path());
    let first = run(&state)?;
    let [ca_fp, server_fp, client_fp] = fingerprints(&first)?;

    // Replace the server certificate by an expired one from the same CA.
    let ca = CertificateAuthority::load(&state.ca_dir())?;
    let now = OffsetDateTime::now_utc();
    let mut req = server_request(KeyAlgorithm::EcdsaP256);
    req.common_name = "localhost".to_owned();
    req.dns_names = localhost().0;
    req.ip_addresses = localhost().1;
    req.validity = Validity {
        not_before: now - Duration::days(91),
        not_after: now - Duration::days(1),
    };
    ca.issue(&req)?.write_to(&first.server.dir)?;
    assert_ne!(fingerprint_of(&first.server.cert)?, server_fp);

    let second = run(&state)?;
    assert!(second.created);
    let [ca2, server2, client2] = fingerprints(&second)?;
    assert_eq!(ca2, ca_fp);
    assert_eq!(client2, client_fp);
    assert_ne!(server2, server_fp);
    let server = summarize(&pem_to_der_certs(&fs::read_to_string(&second.server.cert)?)?[0])?;
    assert!(server.not_after > now + Duration::days(89));
    assert_openssl_accepts(&second.ca_cert, &second.server.cert, "sslserver")?;
    assert_eq!(
        entries(&second.server.dir)?,
        ["ca.pem", "cert.pem", "chain.pem", "key.pem"]
    );
    Ok(())
}

#[test]
fn leaf_in_its_last_third_is_renewed() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path());
    let first = run(&state)?;
    let client_fp = fingerprint_of(&first.client.cert)?;

    // 30 days of validity of which 25 have passed.
    let ca = CertificateAuthority::load(&state.ca_dir())?;
    let now = OffsetDateTime::now_utc();
    let mut req = intransit_pki::IssueRequest::new(intransit_pki::CertificateKind::Client, "app");
    req.validity = Validity {
        not_before: now - Duration::days(25),
        not_after: now + Duration::days(5),
    };
    ca.issue(&req)?.write_to(&first.client.dir)?;
    let aging_fp = fingerprint_of(&first.client.cert)?;
    assert_ne!(aging_fp, client_fp);

    let second = run(&state)?;
    assert!(second.created);
    let renewed = fingerprint_of(&second.client.cert)?;
    assert_ne!(renewed, aging_fp);
    Ok(())
}

#[test]
fn damaged_or_foreign_leaves_are_reissued() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path());
    let first = run(&state)?;
    let server_fp = fingerprint_of(&first.server.cert)?;

    // Garbage certificate.
    fs::write(&first.server.cert, "not a certificate")?;
    assert!(run(&state)?.created);
    assert_openssl_accepts(&first.ca_cert, &first.server.cert, "sslserver")?;
    assert_ne!(fingerprint_of(&first.server.cert)?, server_fp);

    // Key that belongs to another certificate.
    fs::copy(&first.client.key, &first.server.key)?;
    assert!(run(&state)?.created);
    let key = fs::read_to_string(&first.server.key)?;
    assert_ne!(key, fs::read_to_string(&first.client.key)?);

    // A missing file.
    fs::remove_file(&first.client.chain)?;
    assert!(run(&state)?.created);
    assert!(first.client.chain.exists());

    // A certificate from another CA.
    let other = crate::common::new_ca(KeyAlgorithm::EcdsaP256)?;
    let mut req = intransit_pki::IssueRequest::new(intransit_pki::CertificateKind::Client, "app");
    req.validity = Validity::days_from_now(30);
    other.issue(&req)?.write_to(&first.client.dir)?;
    let q = run(&state)?;
    assert!(q.created);
    assert_openssl_accepts(&q.ca_cert, &q.client.cert, "sslclient")?;

    assert!(!run(&state)?.created);
    Ok(())
}

#[test]
fn changed_names_reissue_only_the_affected_leaf() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path());
    let first = run(&state)?;
    let [_, server_fp, client_fp] = fingerprints(&first)?;

    let dns = vec!["localhost".to_owned(), "db.internal".to_owned()];
    let second = state.ensure_quickstart(&dns, &[], "app")?;
    assert!(second.created);
    let [_, server2, client2] = fingerprints(&second)?;
    assert_ne!(server2, server_fp);
    assert_eq!(client2, client_fp);
    let server = summarize(&pem_to_der_certs(&fs::read_to_string(&second.server.cert)?)?[0])?;
    assert_eq!(server.dns_names, dns);

    // A different client name gets a new client certificate.
    let third = state.ensure_quickstart(&dns, &[], "reporting")?;
    assert!(third.created);
    let client = summarize(&pem_to_der_certs(&fs::read_to_string(&third.client.cert)?)?[0])?;
    assert_eq!(client.common_name.as_deref(), Some("reporting"));
    Ok(())
}

#[test]
fn no_server_names_means_localhost() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let q = StateDir::new(tmp.path()).ensure_quickstart(&[], &[], "app")?;
    let server = summarize(&pem_to_der_certs(&fs::read_to_string(&q.server.cert)?)?[0])?;
    assert_eq!(server.dns_names, ["localhost"]);
    Ok(())
}

#[test]
fn invalid_input_creates_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("state");
    let state = StateDir::new(&root);
    let err = state
        .ensure_quickstart(&["bad name".to_owned()], &[], "app")
        .err();
    assert!(matches!(err, Some(PkiError::InvalidRequest(_))), "{err:?}");
    let err = state.ensure_quickstart(&[], &[], "").err();
    assert!(matches!(err, Some(PkiError::InvalidRequest(_))), "{err:?}");
    assert!(!root.exists());
    Ok(())
}

#[test]
fn damaged_ca_is_an_error_and_left_alone() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path());
    run(&state)?;
    let ca_pem = state.ca_dir().join("ca.pem");
    fs::write(
        &ca_pem,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )?;
    let before = snapshot(state.root())?;
    let err = run(&state).err();
    assert!(matches!(err, Some(PkiError::Load { .. })), "{err:?}");
    assert_eq!(snapshot(state.root())?, before);
    Ok(())
}

#[test]
fn incomplete_ca_is_an_error_and_left_alone() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path());
    run(&state)?;
    let key = state.ca_dir().join("key.pem");
    fs::remove_file(&key)?;
    let before = snapshot(state.root())?;
    match run(&state) {
        Err(PkiError::IncompleteCa { missing, .. }) => assert_eq!(missing, key),
        other => return Err(format!("expected IncompleteCa, got {other:?}").into()),
    }
    assert_eq!(snapshot(state.root())?, before);

    // The other way round, and a dangling symlink counts as present.
    fs::remove_file(state.ca_dir().join("ca.pem"))?;
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &key)?;
    let err = run(&state).err();
    assert!(
        matches!(err, Some(PkiError::IncompleteCa { .. })),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn expired_ca_is_an_error_and_left_alone() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path());
    let now = OffsetDateTime::now_utc();
    let ca = CertificateAuthority::generate(
        "intransit local CA",
        KeyAlgorithm::EcdsaP256,
        Validity {
            not_before: now - Duration::days(20),
            not_after: now - Duration::days(10),
        },
    )?;
    ca.save(&state.ca_dir())?;
    let before = snapshot(state.root())?;
    let err = run(&state).err();
    assert!(matches!(err, Some(PkiError::CaExpired { .. })), "{err:?}");
    assert_eq!(snapshot(state.root())?, before);
    Ok(())
}

#[test]
fn leaves_are_cut_short_at_the_ca_expiry() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path());
    let ca = CertificateAuthority::generate(
        "intransit local CA",
        KeyAlgorithm::EcdsaP256,
        Validity::days_from_now(10),
    )?;
    ca.save(&state.ca_dir())?;
    let q = run(&state)?;
    let server = summarize(&pem_to_der_certs(&fs::read_to_string(&q.server.cert)?)?[0])?;
    assert_eq!(server.not_after, ca.not_after());
    assert!(!run(&state)?.created);
    Ok(())
}
