//! Entry point for the cargo-fuzz target `pki_certificate` in `fuzz/`:
//! certificate decoding over arbitrary bytes.
//!
//! Any bytes give a summary or an error, never a panic; a certificate that
//! summarises has the fingerprint and pin computed from its bytes alone,
//! reads back the same from the PEM this crate writes, and is refused with
//! a byte after it; every certificate a PEM document yields survives the
//! same round trip. A failed assertion here is a bug in the crate. It is
//! not part of the crate's API (hidden from the documentation); the unit
//! tests run it over certificates the crate issues.

use crate::inspect::{encode_pem, pem_to_der_certs, sha256_fingerprint, spki_pin, summarize};

/// Reads `data` as a DER certificate and as a PEM document.
pub fn pki_certificate(data: &[u8]) {
    if let Ok(summary) = summarize(data) {
        assert_eq!(summary.fingerprint_sha256, sha256_fingerprint(data));
        assert_eq!(spki_pin(data).ok().as_ref(), Some(&summary.spki_pin));
        assert!(summary.spki_pin.starts_with("sha256/"));
        let mut longer = data.to_vec();
        longer.push(0);
        assert!(summarize(&longer).is_err(), "a byte after the certificate");
        assert_eq!(
            pem_to_der_certs(&encode_pem("CERTIFICATE", data)).ok(),
            Some(vec![data.to_vec()])
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(certs) = pem_to_der_certs(text) {
            assert!(!certs.is_empty());
            let again: String = certs
                .iter()
                .map(|der| encode_pem("CERTIFICATE", der))
                .collect();
            assert_eq!(pem_to_der_certs(&again).ok().as_ref(), Some(&certs));
            for der in &certs {
                let _ = summarize(der);
            }
        }
    }
}

/// The entry point over certificates the crate issues, their PEM, and
/// mutations of both: a stable-Rust smoke run of what `cargo fuzz`
/// explores at length.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{CertificateAuthority, KeyAlgorithm, Validity};

    #[test]
    fn issued_certificates_their_pem_and_mutations() {
        let ca = CertificateAuthority::generate(
            "fuzz seeds",
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
        )
        .unwrap();
        let pem = ca.cert_pem().to_owned();
        let der = pem_to_der_certs(&pem).unwrap().remove(0);
        pki_certificate(&der);
        pki_certificate(pem.as_bytes());
        assert!(summarize(&der).is_ok());
        for at in 0..der.len() {
            for value in [0x00, 0x01, 0x30, 0x80, 0xff, der[at] ^ 0x01] {
                let mut mutated = der.clone();
                mutated[at] = value;
                pki_certificate(&mutated);
            }
            pki_certificate(&der[..at]);
        }
        for end in 0..pem.len() {
            pki_certificate(&pem.as_bytes()[..end]);
        }
    }
}
