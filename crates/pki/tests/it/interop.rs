use std::fs;
use std::process::Command;

use intransit_pki::{pem_to_der_certs, sha256_fingerprint, spki_pin, summarize, KeyAlgorithm};

use crate::common::{
    assert_openssl_accepts, client_request, handshake, new_ca, openssl_ok, path_str,
    server_request, Credentials, TestResult,
};

/// A CA, a server and a client certificate, all with `alg` keys, accepted by
/// openssl for their purposes and by rustls in a mutual TLS 1.3 handshake.
fn exercise(alg: KeyAlgorithm) -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = new_ca(alg)?;
    let server = ca.issue(&server_request(alg))?;
    let client = ca.issue(&client_request(alg))?;
    let server_paths = server.write_to(&tmp.path().join("server"))?;
    let client_paths = client.write_to(&tmp.path().join("client"))?;

    assert_openssl_accepts(&server_paths.ca, &server_paths.cert, "sslserver")?;
    assert_openssl_accepts(&client_paths.ca, &client_paths.cert, "sslclient")?;
    // The key usages are not interchangeable.
    let (ok, _) = crate::common::openssl_verify(&client_paths.ca, &client_paths.cert, "sslserver")?;
    assert!(!ok, "a client certificate passed as a server certificate");
    let (ok, _) = crate::common::openssl_verify(&server_paths.ca, &server_paths.cert, "sslclient")?;
    assert!(!ok, "a server certificate passed as a client certificate");

    // openssl reads every key we write.
    for key in [&server_paths.key, &client_paths.key] {
        openssl_ok(&["pkey", "-in", path_str(key)?, "-noout"], None)?;
    }

    handshake(
        &Credentials::of(&server),
        &Credentials::of(&client),
        "db.example",
    )??;

    for der in [
        ca.cert_der().to_vec(),
        pem_to_der_certs(&server.cert_pem)?.remove(0),
    ] {
        assert_eq!(summarize(&der)?.key_description, alg.description());
    }
    Ok(())
}

#[test]
fn ecdsa_p256() -> TestResult {
    exercise(KeyAlgorithm::EcdsaP256)
}

#[test]
fn ecdsa_p384() -> TestResult {
    exercise(KeyAlgorithm::EcdsaP384)
}

#[test]
fn ed25519() -> TestResult {
    exercise(KeyAlgorithm::Ed25519)
}

#[test]
fn rsa_2048() -> TestResult {
    exercise(KeyAlgorithm::Rsa2048)
}

#[test]
fn rsa_3072() -> TestResult {
    exercise(KeyAlgorithm::Rsa3072)
}

#[test]
fn rsa_4096() -> TestResult {
    exercise(KeyAlgorithm::Rsa4096)
}

#[test]
fn mixed_key_types_between_ca_and_leaves() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = new_ca(KeyAlgorithm::Ed25519)?;
    let server = ca.issue(&server_request(KeyAlgorithm::Rsa2048))?;
    let client = ca.issue(&client_request(KeyAlgorithm::EcdsaP384))?;
    let paths = server.write_to(tmp.path())?;
    assert_openssl_accepts(&paths.ca, &paths.cert, "sslserver")?;
    handshake(
        &Credentials::of(&server),
        &Credentials::of(&client),
        "db.example",
    )??;
    Ok(())
}

#[test]
fn spki_pin_matches_openssl() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
    ] {
        let issued = ca.issue(&server_request(alg))?;
        let paths = issued.write_to(&tmp.path().join(alg.as_str()))?;
        let script = format!(
            "openssl x509 -in '{}' -noout -pubkey | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64",
            path_str(&paths.cert)?
        );
        let out = Command::new("sh").arg("-c").arg(&script).output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = format!("sha256/{}", String::from_utf8(out.stdout)?.trim());

        let der = pem_to_der_certs(&issued.cert_pem)?.remove(0);
        assert_eq!(spki_pin(&der)?, expected, "{alg}");
        assert_eq!(summarize(&der)?.spki_pin, expected);
    }
    Ok(())
}

#[test]
fn fingerprint_matches_openssl() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    let path = tmp.path().join("ca.pem");
    fs::write(&path, ca.cert_pem())?;
    let out = openssl_ok(
        &[
            "x509",
            "-in",
            path_str(&path)?,
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
        None,
    )?;
    let expected = out.trim().rsplit('=').next().unwrap_or_default().to_owned();
    assert_eq!(sha256_fingerprint(ca.cert_der()), expected);
    assert_eq!(summarize(ca.cert_der())?.fingerprint_sha256, expected);
    Ok(())
}

#[test]
fn rustls_matches_names_from_the_sans_only() -> TestResult {
    let ca = new_ca(KeyAlgorithm::EcdsaP256)?;
    let server = ca.issue(&server_request(KeyAlgorithm::EcdsaP256))?;
    let client = ca.issue(&client_request(KeyAlgorithm::EcdsaP256))?;
    let (s, c) = (Credentials::of(&server), Credentials::of(&client));

    handshake(&s, &c, "db.example")??;
    handshake(&s, &c, "replica.db.example")??;
    handshake(&s, &c, "127.0.0.1")??;
    // The CN ("server") is not a name the certificate is valid for.
    for wrong in ["server", "other.example", "127.0.0.2"] {
        let err = handshake(&s, &c, wrong)?.err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("not valid for name"), "{wrong}: {err:?}");
    }
    Ok(())
}

#[test]
fn rustls_rejects_peers_from_another_ca() -> TestResult {
    let ours = new_ca(KeyAlgorithm::EcdsaP256)?;
    // A different name: with the same name, webpki would try the wrong CA's
    // key and report BadSignature instead.
    let theirs = intransit_pki::CertificateAuthority::generate(
        "their CA",
        KeyAlgorithm::EcdsaP256,
        intransit_pki::Validity::days_from_now(30),
    )?;
    let server = ours.issue(&server_request(KeyAlgorithm::EcdsaP256))?;
    let good_client = ours.issue(&client_request(KeyAlgorithm::EcdsaP256))?;
    let foreign_client = theirs.issue(&client_request(KeyAlgorithm::EcdsaP256))?;

    // A client certificate from another CA is refused by the server.
    let foreign = Credentials {
        trust_ca_pem: ours.cert_pem(),
        ..Credentials::of(&foreign_client)
    };
    let err = handshake(&Credentials::of(&server), &foreign, "db.example")?.err();
    let err = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("UnknownIssuer"), "{err:?}");

    // A client trusting another CA refuses our server.
    let distrustful = Credentials {
        trust_ca_pem: theirs.cert_pem(),
        ..Credentials::of(&good_client)
    };
    let err = handshake(&Credentials::of(&server), &distrustful, "db.example")?.err();
    let err = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("UnknownIssuer"), "{err:?}");

    // A server certificate cannot be used as a client certificate.
    let wrong_usage = ours.issue(&server_request(KeyAlgorithm::EcdsaP256))?;
    let err = handshake(
        &Credentials::of(&server),
        &Credentials::of(&wrong_usage),
        "db.example",
    )?
    .err();
    assert!(err.is_some(), "server certificate accepted for client auth");
    Ok(())
}
