use intransit_pki::{AcmeOrigin, AcmeRequest, KeyAlgorithm, PkiError, RenewOptions, StateDir};
use time::OffsetDateTime;

use crate::common::{mode, new_state, TestResult};

fn origin() -> AcmeOrigin {
    AcmeOrigin {
        directory: "https://ca.example/directory".to_owned(),
        challenge: "http-01".to_owned(),
        challenge_addr: "0.0.0.0:80".to_owned(),
        extra_root: None,
        contact: vec!["mailto:ops@example.com".to_owned()],
    }
}

/// What an ACME CA does with the order's CSR: signs it (here with the
/// state directory's own CA standing in for the ACME CA) and returns the
/// leaf followed by its issuer.
fn sign_as_the_acme_ca(
    state: &StateDir,
    csr_der: &[u8],
) -> Result<String, Box<dyn std::error::Error>> {
    let ca_pem = std::fs::read_to_string(state.ca_dir().join("ca.pem"))?;
    let key_pem = std::fs::read_to_string(state.ca_dir().join("key.pem"))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, rcgen::KeyPair::from_pem(&key_pem)?)?;
    let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())?;
    let leaf = csr.signed_by(&issuer)?;
    Ok(format!("{}{}", leaf.pem(), ca_pem))
}

#[test]
fn an_acme_chain_is_checked_installed_where_the_name_goes_and_recorded() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, _ca) = new_state(&tmp.path().join("state"))?;
    let request = AcmeRequest::new(&["db.example".to_owned()], &[], KeyAlgorithm::EcdsaP256)?;
    assert_eq!(request.common_name, "db.example");
    assert!(!format!("{request:?}").contains("PRIVATE"));
    let chain = sign_as_the_acme_ca(&state, &request.csr_der)?;
    let certificate = request.into_certificate(&chain, origin())?;
    let entry = state.install_acme("web", &certificate)?;

    assert_eq!(entry.paths.dir, state.cert_dir("web")?);
    assert_eq!(entry.acme, Some(origin()));
    assert_eq!(entry.dns_names, ["db.example"]);
    assert_eq!(mode(&entry.paths.key)?, 0o600);
    let served = intransit_pki::pem_to_der_certs(&std::fs::read_to_string(&entry.paths.chain)?)?;
    assert_eq!(served.len(), 2, "the leaf and its issuer");
    // Recorded: a fresh read of the inventory knows where it came from.
    let listed = state.inventory()?;
    assert_eq!(
        listed.get("web").and_then(|e| e.acme.clone()),
        Some(origin())
    );

    // The local CA does not renew it.
    let ca = state.load_ca(None)?;
    let options = RenewOptions {
        force: true,
        ..RenewOptions::default()
    };
    match state.renew(&ca, "web", &options, OffsetDateTime::now_utc()) {
        Err(PkiError::InvalidRequest(message)) => {
            assert!(
                message.contains("https://ca.example/directory"),
                "{message}"
            );
        }
        other => panic!("renewed by the local CA: {other:?}"),
    }
    Ok(())
}

#[test]
fn a_chain_for_another_key_or_without_the_names_is_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (state, _ca) = new_state(&tmp.path().join("state"))?;
    let first = AcmeRequest::new(&["db.example".to_owned()], &[], KeyAlgorithm::EcdsaP256)?;
    let second = AcmeRequest::new(&["db.example".to_owned()], &[], KeyAlgorithm::EcdsaP256)?;
    let chain = sign_as_the_acme_ca(&state, &first.csr_der)?;
    let refused = second.into_certificate(&chain, origin());
    assert!(
        matches!(&refused, Err(PkiError::Certificate { detail, .. }) if detail.contains("key")),
        "{refused:?}"
    );

    // The right key, but a certificate for another name than asked.
    let wanted = AcmeRequest::new(&["db.example".to_owned()], &[], KeyAlgorithm::EcdsaP256)?;
    let ca_pem = std::fs::read_to_string(state.ca_dir().join("ca.pem"))?;
    let key_pem = std::fs::read_to_string(state.ca_dir().join("key.pem"))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, rcgen::KeyPair::from_pem(&key_pem)?)?;
    let mut csr = rcgen::CertificateSigningRequestParams::from_der(&wanted.csr_der.clone().into())?;
    csr.params.subject_alt_names = vec![rcgen::SanType::DnsName("other.example".try_into()?)];
    let chain = format!("{}{}", csr.signed_by(&issuer)?.pem(), ca_pem);
    let refused = wanted.into_certificate(&chain, origin());
    assert!(
        matches!(&refused, Err(PkiError::Certificate { detail, .. }) if detail.contains("db.example")),
        "{refused:?}"
    );
    assert!(!state.cert_dir("web")?.exists());
    Ok(())
}
