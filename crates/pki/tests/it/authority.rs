use std::fs;

use intransit_pki::{
    pem_to_der_certs, summarize, CertificateAuthority, CertificateKind, CertificatePaths,
    IssueRequest, KeyAlgorithm, PkiError, Validity,
};
use time::{Duration, OffsetDateTime};

use crate::common::{
    assert_openssl_accepts, client_request, entries, mode, new_ca, openssl_ok, openssl_verify,
    path_str, server_request, TestResult,
};

#[test]
fn generate_save_load_round_trip() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state/ca");
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    ca.save(&dir)?;

    assert_eq!(entries(&dir)?, ["ca.pem", "key.pem"]);
    assert_eq!(mode(&dir)?, 0o700);
    assert_eq!(mode(&tmp.path().join("state"))?, 0o700);
    assert_eq!(mode(&dir.join("key.pem"))?, 0o600);
    assert_eq!(mode(&dir.join("ca.pem"))?, 0o644);

    let loaded = CertificateAuthority::load(&dir)?;
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.not_after(), ca.not_after());
    assert_eq!(fs::read_to_string(dir.join("ca.pem"))?, ca.cert_pem());

    // The loaded CA signs certificates that verify against the saved file.
    let issued = loaded.issue(&server_request(KeyAlgorithm::EcdsaP256))?;
    let paths = issued.write_to(&tmp.path().join("leaf"))?;
    assert_openssl_accepts(&dir.join("ca.pem"), &paths.cert, "sslserver")?;

    // Saving again over the existing files works and leaves nothing behind.
    loaded.save(&dir)?;
    assert_eq!(entries(&dir)?, ["ca.pem", "key.pem"]);
    assert_eq!(CertificateAuthority::load(&dir)?.cert_der(), ca.cert_der());
    Ok(())
}

#[test]
fn key_of_another_ca_is_rejected() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let a = new_ca(KeyAlgorithm::EcdsaP256)?;
    let b = new_ca(KeyAlgorithm::EcdsaP256)?;
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    a.save(&a_dir)?;
    b.save(&b_dir)?;
    let b_key = fs::read_to_string(b_dir.join("key.pem"))?;

    let err = CertificateAuthority::from_pem(a.cert_pem(), &b_key).err();
    assert!(matches!(err, Some(PkiError::KeyMismatch)), "{err:?}");

    // Through load, the error names the directory and keeps the cause.
    fs::copy(b_dir.join("key.pem"), a_dir.join("key.pem"))?;
    match CertificateAuthority::load(&a_dir) {
        Err(PkiError::Load { path, source }) => {
            assert_eq!(path, a_dir);
            assert!(matches!(*source, PkiError::KeyMismatch), "{source:?}");
        }
        other => return Err(format!("expected a load error, got {other:?}").into()),
    }
    Ok(())
}

#[test]
fn key_of_a_different_type_is_rejected() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ec = new_ca(KeyAlgorithm::EcdsaP256)?;
    let ed = new_ca(KeyAlgorithm::Ed25519)?;
    ed.save(tmp.path())?;
    let ed_key = fs::read_to_string(tmp.path().join("key.pem"))?;
    let err = CertificateAuthority::from_pem(ec.cert_pem(), &ed_key).err();
    assert!(matches!(err, Some(PkiError::KeyMismatch)), "{err:?}");
    Ok(())
}

#[test]
fn leaf_certificate_is_not_accepted_as_a_ca() -> TestResult {
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    let leaf = ca.issue(&server_request(KeyAlgorithm::EcdsaP256))?;
    let err = CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem).err();
    assert!(matches!(err, Some(PkiError::NotCa { .. })), "{err:?}");
    Ok(())
}

#[test]
fn missing_and_malformed_inputs_are_reported_without_key_material() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    ca.save(tmp.path())?;
    let key = fs::read_to_string(tmp.path().join("key.pem"))?;

    // No certificate, two certificates, no key, an undecodable key.
    let err = CertificateAuthority::from_pem("", &key).err();
    assert!(matches!(err, Some(PkiError::MissingPem { .. })), "{err:?}");
    let two = format!("{}{}", ca.cert_pem(), ca.cert_pem());
    let err = CertificateAuthority::from_pem(&two, &key).err();
    assert!(matches!(err, Some(PkiError::Certificate { .. })), "{err:?}");
    let err = CertificateAuthority::from_pem(ca.cert_pem(), ca.cert_pem()).err();
    assert!(matches!(err, Some(PkiError::MissingPem { .. })), "{err:?}");

    // A key block whose body has been tampered with: the message must not
    // quote any of it.
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let damaged = key.replacen(&body[..8], "!!!!!!!!", 1);
    let err = CertificateAuthority::from_pem(ca.cert_pem(), &damaged).err();
    let message = err.as_ref().map(|e| e.to_string()).unwrap_or_default();
    assert!(matches!(err, Some(PkiError::PrivateKey { .. })), "{err:?}");
    assert!(!message.contains(&body[8..20]), "{message}");

    // A valid PEM block that is not a key we support.
    let bogus = "-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n";
    let err = CertificateAuthority::from_pem(ca.cert_pem(), bogus).err();
    assert!(matches!(err, Some(PkiError::PrivateKey { .. })), "{err:?}");

    // An encrypted key is named as such, not reported as missing.
    let encrypted = openssl_ok(
        &[
            "pkcs8",
            "-topk8",
            "-in",
            path_str(&tmp.path().join("key.pem"))?,
            "-passout",
            "pass:x",
        ],
        None,
    )?;
    assert!(encrypted.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let err = CertificateAuthority::from_pem(ca.cert_pem(), &encrypted).err();
    assert!(matches!(err, Some(PkiError::PrivateKey { .. })), "{err:?}");

    // A directory without a CA says so; one with half a CA names the
    // missing file.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty)?;
    match CertificateAuthority::load(&empty) {
        Err(PkiError::NoCa { dir }) => assert_eq!(dir, empty),
        other => return Err(format!("expected NoCa, got {other:?}").into()),
    }
    fs::write(empty.join("ca.pem"), ca.cert_pem())?;
    match CertificateAuthority::load(&empty) {
        Err(PkiError::IncompleteCa { missing, .. }) => assert_eq!(missing, empty.join("key.pem")),
        other => return Err(format!("expected IncompleteCa, got {other:?}").into()),
    }
    Ok(())
}

#[test]
fn debug_output_redacts_private_keys() -> TestResult {
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    let issued = ca.issue(&client_request(KeyAlgorithm::EcdsaP256))?;
    let key_body: String = issued
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for debug in [
        format!("{ca:?}"),
        format!("{issued:?}"),
        format!("{issued:#?}"),
    ] {
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        assert!(!debug.contains(&key_body[..40]), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }
    Ok(())
}

#[test]
fn ca_certificate_contents() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = CertificateAuthority::generate(
        "intransit local CA",
        KeyAlgorithm::EcdsaP256,
        Validity::days_from_now(3650),
    )?;
    let summary = summarize(ca.cert_der())?;
    assert_eq!(summary.subject, "O=intransit, CN=intransit local CA");
    assert_eq!(summary.issuer, summary.subject);
    assert_eq!(ca.subject(), summary.subject);
    assert!(summary.is_ca);
    assert_eq!(summary.key_description, "ECDSA P-256");
    assert_eq!(summary.signature_algorithm, "ecdsa-with-SHA256");

    let path = tmp.path().join("ca.pem");
    fs::write(&path, ca.cert_pem())?;
    let text = openssl_ok(&["x509", "-in", path_str(&path)?, "-noout", "-text"], None)?;
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(text.contains("Subject Key Identifier"), "{text}");
    // A self-signed CA verifies against itself under strict checks.
    assert_openssl_accepts(&path, &path, "any")?;
    Ok(())
}

#[test]
fn leaf_certificate_contents_match_openssl() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    let server = ca.issue(&server_request(KeyAlgorithm::EcdsaP256))?;
    let client = ca.issue(&client_request(KeyAlgorithm::EcdsaP256))?;

    let s = summarize(&pem_to_der_certs(&server.cert_pem)?[0])?;
    assert_eq!(s.subject, "CN=server");
    assert_eq!(s.issuer, "O=intransit, CN=test CA");
    assert_eq!(s.common_name.as_deref(), Some("server"));
    assert_eq!(s.dns_names, ["db.example", "*.db.example"]);
    assert_eq!(s.ip_addresses, [std::net::IpAddr::from([127, 0, 0, 1])]);
    assert!(s.uris.is_empty());
    assert!(!s.is_ca);
    assert_eq!(s.extended_key_usages, ["serverAuth"]);
    assert_eq!(s.serial_hex, server.serial_hex);
    assert_eq!(s.not_after, server.not_after);

    let c = summarize(&pem_to_der_certs(&client.cert_pem)?[0])?;
    assert_eq!(c.common_name.as_deref(), Some("alice"));
    assert_eq!(c.uris, ["spiffe://prod/trainer"]);
    assert!(c.dns_names.is_empty());
    assert_eq!(c.extended_key_usages, ["clientAuth"]);

    let cert = tmp.path().join("server.pem");
    fs::write(&cert, &server.cert_pem)?;
    let text = openssl_ok(&["x509", "-in", path_str(&cert)?, "-noout", "-text"], None)?;
    for expected in [
        "CA:FALSE",
        "Digital Signature",
        "TLS Web Server Authentication",
        "Authority Key Identifier",
        "Subject Key Identifier",
        "DNS:db.example, DNS:*.db.example, IP Address:127.0.0.1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
    assert!(!text.contains("Key Encipherment"), "{text}");

    // The serial number is the one openssl reads.
    let serial = openssl_ok(
        &["x509", "-in", path_str(&cert)?, "-noout", "-serial"],
        None,
    )?;
    assert_eq!(serial.trim(), format!("serial={}", server.serial_hex));
    assert!(server.serial_hex.len() <= 32 && server.serial_hex.len() >= 16);
    // 128 random bits: at most 16 bytes of value (openssl prints neither
    // the DER sign byte nor leading zero bytes).
    assert_ne!(server.serial_hex, client.serial_hex);
    Ok(())
}

#[test]
fn rsa_leaves_also_allow_key_encipherment() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    let server = ca.issue(&server_request(KeyAlgorithm::Rsa2048))?;
    let paths = server.write_to(tmp.path())?;
    let text = openssl_ok(
        &["x509", "-in", path_str(&paths.cert)?, "-noout", "-text"],
        None,
    )?;
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
    assert_openssl_accepts(&paths.ca, &paths.cert, "sslserver")?;
    Ok(())
}

#[test]
fn write_to_creates_the_files_with_the_right_modes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    let issued = ca.issue(&server_request(KeyAlgorithm::EcdsaP256))?;
    let dir = tmp.path().join("certs/server");
    let paths = issued.write_to(&dir)?;

    assert_eq!(paths, CertificatePaths::in_dir(&dir));
    assert_eq!(
        entries(&dir)?,
        ["ca.pem", "cert.pem", "chain.pem", "key.pem"]
    );
    assert_eq!(mode(&dir)?, 0o700);
    assert_eq!(mode(&paths.key)?, 0o600);
    for public in [&paths.cert, &paths.chain, &paths.ca] {
        assert_eq!(mode(public)?, 0o644, "{}", public.display());
    }
    assert_eq!(fs::read_to_string(&paths.key)?, issued.key_pem);
    assert_eq!(fs::read_to_string(&paths.cert)?, issued.cert_pem);
    assert_eq!(fs::read_to_string(&paths.ca)?, ca.cert_pem());

    let chain = pem_to_der_certs(&fs::read_to_string(&paths.chain)?)?;
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0], pem_to_der_certs(&issued.cert_pem)?[0]);
    assert_eq!(chain[1], ca.cert_der());
    assert_eq!(issued.chain_pem(), fs::read_to_string(&paths.chain)?);

    // openssl reads the key (PKCS#8) and it belongs to the certificate.
    let key_pub = openssl_ok(&["pkey", "-in", path_str(&paths.key)?, "-pubout"], None)?;
    let cert_pub = openssl_ok(
        &["x509", "-in", path_str(&paths.cert)?, "-noout", "-pubkey"],
        None,
    )?;
    assert_eq!(key_pub, cert_pub);
    assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));

    // Re-writing replaces the files in place without leftovers.
    let again = ca.issue(&server_request(KeyAlgorithm::EcdsaP256))?;
    again.write_to(&dir)?;
    assert_eq!(
        entries(&dir)?,
        ["ca.pem", "cert.pem", "chain.pem", "key.pem"]
    );
    assert_eq!(fs::read_to_string(&paths.cert)?, again.cert_pem);
    Ok(())
}

#[test]
fn expired_certificates_can_be_issued_and_are_rejected_by_verifiers() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    let now = OffsetDateTime::now_utc();
    let mut req = server_request(KeyAlgorithm::EcdsaP256);
    req.validity = Validity {
        not_before: now - Duration::days(10),
        not_after: now - Duration::days(1),
    };
    let expired = ca.issue(&req)?;
    assert!(expired.not_after < now);
    let paths = expired.write_to(tmp.path())?;

    let (ok, text) = openssl_verify(&paths.ca, &paths.cert, "sslserver")?;
    assert!(!ok, "openssl accepted an expired certificate: {text}");
    assert!(text.contains("certificate has expired"), "{text}");

    let client = ca.issue(&client_request(KeyAlgorithm::EcdsaP256))?;
    let outcome = crate::common::handshake(
        &crate::common::Credentials::of(&expired),
        &crate::common::Credentials::of(&client),
        "db.example",
    )?;
    let err = outcome.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("expired"), "rustls said {err:?}");
    Ok(())
}

#[test]
fn certificates_are_cut_short_at_the_ca_expiry() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = CertificateAuthority::generate(
        "short CA",
        KeyAlgorithm::EcdsaP256,
        Validity::days_from_now(10),
    )?;
    let mut req = server_request(KeyAlgorithm::EcdsaP256);
    req.validity = Validity::days_from_now(90);
    let issued = ca.issue(&req)?;
    assert_eq!(issued.not_after, ca.not_after());
    let der = pem_to_der_certs(&issued.cert_pem)?.remove(0);
    assert_eq!(summarize(&der)?.not_after, ca.not_after());
    let paths = issued.write_to(tmp.path())?;
    assert_openssl_accepts(&paths.ca, &paths.cert, "sslserver")?;

    // A shorter request is left alone.
    req.validity = Validity::days_from_now(9);
    assert!(ca.issue(&req)?.not_after < ca.not_after());

    // Nothing can start after the CA has expired.
    req.validity = Validity {
        not_before: ca.not_after() + Duration::days(1),
        not_after: ca.not_after() + Duration::days(2),
    };
    let err = ca.issue(&req).err();
    assert!(
        matches!(err, Some(PkiError::CaExpiresFirst { .. })),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn invalid_requests_are_rejected() -> TestResult {
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    // A server certificate with only a common name would be useless to TLS clients.
    let bare = IssueRequest::new(CertificateKind::Server, "db.example");
    assert!(matches!(ca.issue(&bare), Err(PkiError::InvalidRequest(_))));

    let mut req = server_request(KeyAlgorithm::EcdsaP256);
    req.validity.not_after = req.validity.not_before;
    assert!(matches!(
        ca.issue(&req),
        Err(PkiError::InvalidValidity { .. })
    ));

    let err =
        CertificateAuthority::generate("", KeyAlgorithm::EcdsaP256, Validity::days_from_now(1));
    assert!(matches!(err, Err(PkiError::InvalidRequest(_))));
    Ok(())
}

#[test]
fn ca_made_by_openssl_can_be_loaded_and_used() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let cert = tmp.path().join("ca.pem");
    let key = tmp.path().join("key.pem");
    openssl_ok(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/C=DE/O=Example Corp/OU=Ops/CN=Example Root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            path_str(&key)?,
            "-out",
            path_str(&cert)?,
        ],
        None,
    )?;
    // Also in the traditional SEC1 form ("EC PRIVATE KEY").
    let sec1 = openssl_ok(&["pkey", "-in", path_str(&key)?, "-traditional"], None)?;
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{sec1}");

    for key_pem in [fs::read_to_string(&key)?, sec1] {
        let ca = CertificateAuthority::from_pem(&fs::read_to_string(&cert)?, &key_pem)?;
        let mut req = server_request(KeyAlgorithm::EcdsaP256);
        req.validity = Validity::days_from_now(7);
        let paths = ca.issue(&req)?.write_to(&tmp.path().join("leaf"))?;
        assert_openssl_accepts(&cert, &paths.cert, "sslserver")?;

        // Saving keeps the key in a form openssl (and we) can read back.
        let saved = tmp.path().join("saved");
        ca.save(&saved)?;
        openssl_ok(
            &["pkey", "-in", path_str(&saved.join("key.pem"))?, "-noout"],
            None,
        )?;
        CertificateAuthority::load(&saved)?;
    }
    Ok(())
}

#[test]
fn serials_use_all_128_bits_and_encode_as_positive_der() -> TestResult {
    let ca = intransit_pki::CertificateAuthority::generate(
        "serial test CA",
        intransit_pki::KeyAlgorithm::EcdsaP256,
        intransit_pki::Validity::days_from_now(1),
    )?;
    let mut top_bit_set = 0;
    for i in 0..64 {
        let mut req = intransit_pki::IssueRequest::new(
            intransit_pki::CertificateKind::Client,
            format!("c{i}"),
        );
        req.validity = intransit_pki::Validity::days_from_now(1);
        let issued = ca.issue(&req)?;
        let der = intransit_pki::pem_to_der_certs(&issued.cert_pem)?;
        // x509-parser rejects a negative or non-minimal serial; summarize parses it.
        let summary = intransit_pki::summarize(&der[0])?;
        assert!(summary.serial_hex.len() <= 32);
        if summary.serial_hex.len() == 32
            && u8::from_str_radix(&summary.serial_hex[..2], 16)? >= 0x80
        {
            top_bit_set += 1;
        }
    }
    // With 128 random bits the top bit is set about half the time; with
    // 127 it never is. 64 draws all clear has probability 2^-64.
    assert!(top_bit_set > 0, "the top bit of the serial is never used");
    Ok(())
}
