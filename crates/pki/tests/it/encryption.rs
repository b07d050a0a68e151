use std::fs;
use std::path::Path;

use intransit_pki::{CertificateAuthority, KeyAlgorithm, PkiError, StateDir, Validity};

use crate::common::{entries, mode, new_ca, openssl, openssl_ok, path_str, TestResult};

const PASSPHRASE: &[u8] = b"correct horse battery staple";

/// The public key of a PEM private key, as openssl prints it.
fn openssl_pubkey(
    key: &Path,
    passphrase: Option<&str>,
) -> Result<String, Box<dyn std::error::Error>> {
    let pass = passphrase.map(|p| format!("pass:{p}"));
    let mut args = vec!["pkey", "-in", path_str(key)?, "-pubout"];
    if let Some(pass) = &pass {
        args.extend(["-passin", pass.as_str()]);
    }
    openssl_ok(&args, None)
}

#[test]
fn openssl_reads_our_encrypted_key() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ca");
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    ca.save_encrypted(&dir, PASSPHRASE)?;
    let key = dir.join("key.pem");

    let pem = fs::read_to_string(&key)?;
    assert!(
        pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----\n"),
        "{pem}"
    );
    assert_eq!(mode(&key)?, 0o600);
    assert_eq!(entries(&dir)?, ["ca.pem", "key.pem"]);
    assert!(CertificateAuthority::is_key_encrypted(&dir)?);

    // openssl decrypts it with the passphrase, and the key is the CA's.
    let pass = std::str::from_utf8(PASSPHRASE)?;
    let key_pub = openssl_pubkey(&key, Some(pass))?;
    let cert_pub = openssl_ok(
        &[
            "x509",
            "-in",
            path_str(&dir.join("ca.pem"))?,
            "-noout",
            "-pubkey",
        ],
        None,
    )?;
    assert_eq!(key_pub, cert_pub);

    // The parameters are the ones promised: PBES2, PBKDF2 with
    // HMAC-SHA256 and 600,000 iterations, AES-256-CBC.
    let asn1 = openssl_ok(&["asn1parse", "-in", path_str(&key)?], None)?;
    for expected in ["PBES2", "PBKDF2", "hmacWithSHA256", "aes-256-cbc"] {
        assert!(asn1.contains(expected), "{expected} missing:\n{asn1}");
    }
    assert!(
        asn1.contains(":0927C0"),
        "600000 iterations (0x0927C0) missing:\n{asn1}"
    );
    assert_eq!(intransit_pki::PBKDF2_ITERATIONS, 600_000);

    // A wrong passphrase is refused by openssl too.
    let out = openssl(
        &[
            "pkey",
            "-in",
            path_str(&key)?,
            "-noout",
            "-passin",
            "pass:wrong",
        ],
        None,
    )?;
    assert!(!out.status.success());

    // And we read it back, signing as before.
    let loaded = CertificateAuthority::load_with_passphrase(&dir, Some(PASSPHRASE))?;
    assert_eq!(loaded.cert_der(), ca.cert_der());
    loaded.issue(&crate::common::server_request(KeyAlgorithm::EcdsaP256))?;
    Ok(())
}

#[test]
fn we_read_keys_encrypted_by_openssl() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
    ] {
        let dir = tmp.path().join(alg.as_str());
        let ca = new_ca(alg)?;
        ca.save(&dir)?;
        let plain = dir.join("key.pem");
        for (cipher, prf) in [
            ("aes-256-cbc", "hmacWithSHA256"),
            ("aes-128-cbc", "hmacWithSHA1"),
        ] {
            let encrypted = openssl_ok(
                &[
                    "pkcs8",
                    "-topk8",
                    "-v2",
                    cipher,
                    "-v2prf",
                    prf,
                    "-in",
                    path_str(&plain)?,
                    "-passout",
                    "pass:s3cret",
                ],
                None,
            )?;
            let enc_dir = tmp.path().join(format!("{alg}-{cipher}"));
            fs::create_dir(&enc_dir)?;
            fs::copy(dir.join("ca.pem"), enc_dir.join("ca.pem"))?;
            fs::write(enc_dir.join("key.pem"), &encrypted)?;

            assert!(CertificateAuthority::is_key_encrypted(&enc_dir)?);
            let loaded = CertificateAuthority::load_with_passphrase(&enc_dir, Some(b"s3cret"))?;
            assert_eq!(loaded.cert_der(), ca.cert_der(), "{alg} {cipher}");

            let err = CertificateAuthority::load_with_passphrase(&enc_dir, Some(b"s3cret!")).err();
            assert!(
                matches!(&err, Some(PkiError::WrongPassphrase { path }) if path == &enc_dir.join("key.pem")),
                "{alg} {cipher}: {err:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn openssl_ca_with_a_traditional_key_can_be_saved_encrypted() -> TestResult {
    // A CA made by openssl whose key is SEC1 ("EC PRIVATE KEY") or PKCS#1
    // ("RSA PRIVATE KEY") is converted to PKCS#8 before encryption.
    let tmp = tempfile::tempdir()?;
    for (newkey, opt) in [
        ("ec", "ec_paramgen_curve:P-384"),
        ("rsa", "rsa_keygen_bits:2048"),
    ] {
        let cert = tmp.path().join(format!("{newkey}-ca.pem"));
        let key = tmp.path().join(format!("{newkey}-key.pem"));
        openssl_ok(
            &[
                "req",
                "-x509",
                "-newkey",
                newkey,
                "-pkeyopt",
                opt,
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/O=Example/CN=Example Root",
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
        let traditional = openssl_ok(&["pkey", "-in", path_str(&key)?, "-traditional"], None)?;
        assert!(!traditional.starts_with("-----BEGIN PRIVATE KEY-----"));
        let ca = CertificateAuthority::from_pem(&fs::read_to_string(&cert)?, &traditional)?;
        let dir = tmp.path().join(format!("{newkey}-saved"));
        ca.save_encrypted(&dir, PASSPHRASE)?;
        let pass = std::str::from_utf8(PASSPHRASE)?;
        assert_eq!(
            openssl_pubkey(&dir.join("key.pem"), Some(pass))?,
            openssl_pubkey(&key, None)?
        );
        CertificateAuthority::load_with_passphrase(&dir, Some(PASSPHRASE))?;
    }
    Ok(())
}

#[test]
fn missing_wrong_and_unsupported_passphrases_are_distinct_errors() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ca");
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    ca.save_encrypted(&dir, PASSPHRASE)?;
    let key = dir.join("key.pem");
    let before = fs::read(&key)?;

    for load in [
        CertificateAuthority::load(&dir),
        CertificateAuthority::load_with_passphrase(&dir, None),
    ] {
        match load {
            Err(PkiError::PassphraseRequired { path }) => assert_eq!(path, key),
            other => return Err(format!("expected PassphraseRequired, got {other:?}").into()),
        }
    }
    let err = CertificateAuthority::load_with_passphrase(&dir, Some(b"hunter2")).err();
    let message = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(
        matches!(err, Some(PkiError::WrongPassphrase { .. })),
        "{err:?}"
    );
    assert!(message.contains("wrong passphrase"), "{message}");
    // Neither the passphrase tried nor the right one appears anywhere.
    let debug = format!("{err:?}");
    for shown in [&message, &debug] {
        assert!(
            !shown.contains("hunter2") && !shown.contains("horse"),
            "{shown}"
        );
    }
    // Failing to load changes nothing.
    assert_eq!(fs::read(&key)?, before);

    // scrypt is valid PKCS#8 but not implemented here: named as such.
    let plain = tmp.path().join("plain");
    ca.save(&plain)?;
    let scrypt = openssl_ok(
        &[
            "pkcs8",
            "-topk8",
            "-scrypt",
            "-in",
            path_str(&plain.join("key.pem"))?,
            "-passout",
            "pass:x",
        ],
        None,
    )?;
    fs::write(plain.join("key.pem"), scrypt)?;
    let err = CertificateAuthority::load_with_passphrase(&plain, Some(b"x")).err();
    match err {
        Some(PkiError::UnsupportedKeyEncryption { scheme, .. }) => {
            assert!(scheme.contains("scrypt"), "{scheme}")
        }
        other => return Err(format!("expected UnsupportedKeyEncryption, got {other:?}").into()),
    }

    // An unencrypted key loads whether or not a passphrase is offered.
    ca.save(&plain)?;
    assert!(!CertificateAuthority::is_key_encrypted(&plain)?);
    CertificateAuthority::load_with_passphrase(&plain, Some(b"ignored"))?;
    assert!(matches!(
        ca.save_encrypted(&plain, b""),
        Err(PkiError::InvalidRequest(_))
    ));
    Ok(())
}

#[test]
fn init_ca_encrypts_and_refuses_to_overwrite() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let state = StateDir::new(tmp.path().join("state"));
    let ca = state.init_ca(
        "Org Root",
        KeyAlgorithm::EcdsaP384,
        Validity::try_days_from_now(3650)?,
        Some(PASSPHRASE),
        false,
    )?;
    assert_eq!(ca.subject(), "O=intransit, CN=Org Root");
    assert!(CertificateAuthority::is_key_encrypted(&state.ca_dir())?);
    assert!(matches!(
        state.load_ca(None),
        Err(PkiError::PassphraseRequired { .. })
    ));
    assert_eq!(state.load_ca(Some(PASSPHRASE))?.cert_der(), ca.cert_der());

    let before = fs::read(state.ca_dir().join("ca.pem"))?;
    let err = state
        .init_ca(
            "Other",
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
            None,
            false,
        )
        .err();
    assert!(matches!(err, Some(PkiError::CaExists { .. })), "{err:?}");
    assert_eq!(fs::read(state.ca_dir().join("ca.pem"))?, before);

    // Forced, a new unencrypted CA replaces it.
    let other = state.init_ca(
        "Other",
        KeyAlgorithm::EcdsaP256,
        Validity::days_from_now(30),
        None,
        true,
    )?;
    assert!(!CertificateAuthority::is_key_encrypted(&state.ca_dir())?);
    assert_eq!(state.load_ca(None)?.cert_der(), other.cert_der());
    Ok(())
}
