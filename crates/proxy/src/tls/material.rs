//! Checks every piece of TLS material passes before it is used, at start
//! and on each reload: the files are read once (so that what is
//! fingerprinted is exactly what is parsed), the key belongs to the leaf
//! certificate, the leaf is valid now, and the chain file builds from the
//! leaf to its last certificate.
//!
//! This module owns those checks and the [`SourceFingerprint`] that tells
//! a reload whether anything changed. It never swaps material in:
//! `reloadable` does, for `listener` and `upstream`, and only after
//! everything here passed.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;
use sha2::{Digest, Sha256};

use crate::error::ProxyError;
use crate::refusal::{WeakKey, MIN_RSA_BITS};

/// SHA-256 over a route's settings and the bytes of every file they name.
/// Equal fingerprints mean a reload would build the same material, so it
/// is skipped and reported as unchanged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SourceFingerprint([u8; 32]);

impl fmt::Debug for SourceFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl SourceFingerprint {
    /// Fingerprints `settings` (through their `Debug` form, which lists
    /// every field) and the contents of `files`, each length-prefixed so
    /// that moving bytes from one file to the next changes the result.
    pub(crate) fn of(settings: &impl fmt::Debug, files: &[Option<&[u8]>]) -> Self {
        let mut hash = Sha256::new();
        let settings = format!("{settings:?}");
        hash.update((settings.len() as u64).to_be_bytes());
        hash.update(settings.as_bytes());
        for file in files {
            match file {
                Some(bytes) => {
                    hash.update([1]);
                    hash.update((bytes.len() as u64).to_be_bytes());
                    hash.update(bytes);
                }
                None => hash.update([0]),
            }
        }
        SourceFingerprint(hash.finalize().into())
    }
}

/// Reads one file whole.
pub(crate) fn read(path: &Path, what: &str) -> Result<Vec<u8>, ProxyError> {
    std::fs::read(path).map_err(|e| ProxyError::file(what, path, e.to_string()))
}

/// Parses every PEM certificate in `bytes`; at least one must be there.
pub(crate) fn parse_certs(
    bytes: &[u8],
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, ProxyError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ProxyError::file(what, path, intransit_pki::describe_pem_error(&e)))?;
    if certs.is_empty() {
        return Err(ProxyError::file(
            what,
            path,
            "no PEM CERTIFICATE block found (is the file complete?)",
        ));
    }
    Ok(certs)
}

/// Parses the PEM private key in `bytes`.
pub(crate) fn parse_key(
    bytes: &[u8],
    path: &Path,
    what: &str,
) -> Result<PrivateKeyDer<'static>, ProxyError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| {
        let reason = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no unencrypted PEM private key (PKCS#8, SEC1 or PKCS#1) found (is the file complete?)".to_owned()
            }
            other => intransit_pki::describe_pem_error(&other),
        };
        ProxyError::file(what, path, reason)
    })
}

/// The certificate's validity window, as Unix seconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// Refuses a certificate outside its validity window.
pub(crate) fn check_valid_now(
    validity: Validity,
    serial: &str,
    path: &Path,
    what: &str,
) -> Result<(), ProxyError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if validity.not_after < now {
        return Err(ProxyError::file(
            what,
            path,
            format!(
                "expired at {} (serial {serial})",
                rfc3339(validity.not_after)
            ),
        ));
    }
    if validity.not_before > now {
        return Err(ProxyError::file(
            what,
            path,
            format!(
                "not valid before {} (serial {serial})",
                rfc3339(validity.not_before)
            ),
        ));
    }
    Ok(())
}

/// Refuses a key that does not belong to the chain's leaf: the public key
/// derived from the private key must equal the leaf's SubjectPublicKeyInfo.
pub(crate) fn check_key_matches(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
    what: &str,
) -> Result<(), ProxyError> {
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| ProxyError::file(what, key_path, format!("unusable private key: {e}")))?;
    match CertifiedKey::new(chain.to_vec(), signing).keys_match() {
        Ok(()) => Ok(()),
        // The provider cannot derive this key type's public half; rustls
        // itself accepts the pair then, and so does the proxy.
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(ProxyError::file(
                what,
                key_path,
                format!(
                    "does not belong to the certificate in {}: its public key differs from the certificate's",
                    cert_path.display()
                ),
            ))
        }
        Err(e) => Err(ProxyError::file(what, cert_path, e.to_string())),
    }
}

/// Refuses a chain file whose certificates do not link up: the leaf must
/// verify through the intermediates to the file's last certificate (taken
/// as the anchor, since the proxy has no anchor for its own certificate).
/// A file with the leaf alone passes. `usage` is the purpose the leaf is
/// used for (server or client authentication).
pub(crate) fn check_chain_links(
    chain: &[CertificateDer<'static>],
    provider: &CryptoProvider,
    usage: webpki::KeyUsage,
    path: &Path,
    what: &str,
) -> Result<(), ProxyError> {
    let [leaf, middle @ .., last] = chain else {
        return Ok(());
    };
    let anchor = webpki::anchor_from_trusted_cert(last).map_err(|e| {
        ProxyError::file(
            what,
            path,
            format!("the last certificate of the chain does not parse: {e}"),
        )
    })?;
    let leaf = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| ProxyError::file(what, path, format!("the leaf does not parse: {e}")))?;
    leaf.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &[anchor],
        middle,
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| {
        ProxyError::file(
            what,
            path,
            format!("the chain does not build from the leaf to its last certificate: {e}"),
        )
    })
}

/// Refuses a CRL that none of the trust anchors issued: its issuer must be
/// an anchor's subject and that anchor's key must verify its signature.
/// The client verifier treats a certificate whose issuer has no CRL as of
/// unknown status and refuses it, so a CRL from the wrong CA would refuse
/// every client.
pub(crate) fn check_crl_issuer(
    crl: &[u8],
    anchors: &[CertificateDer<'_>],
    crl_path: &Path,
    ca_path: &Path,
) -> Result<(), ProxyError> {
    let (_, parsed) = x509_parser::parse_x509_crl(crl)
        .map_err(|e| ProxyError::file("CRL", crl_path, format!("does not parse: {e}")))?;
    let issued_by_anchor = anchors.iter().any(|anchor| {
        x509_parser::parse_x509_certificate(anchor.as_ref()).is_ok_and(|(_, cert)| {
            cert.subject().as_raw() == parsed.issuer().as_raw()
                && parsed.verify_signature(cert.public_key()).is_ok()
        })
    });
    if issued_by_anchor {
        Ok(())
    } else {
        Err(ProxyError::file(
            "CRL",
            crl_path,
            format!(
                "issued by {}, which is none of the client CAs in {} (or its signature does not verify): every client certificate would fail its revocation check",
                parsed.issuer(),
                ca_path.display()
            ),
        ))
    }
}

/// Refuses a set of CRLs that leaves a client CA without one. The client
/// verifier treats a certificate whose issuer published no CRL as of
/// unknown revocation status and refuses it, so such a CA's clients would
/// all be refused with a misleading reason; better to say so when the files
/// are loaded.
pub(crate) fn check_crls_cover_anchors(
    crls: &[CertificateRevocationListDer<'_>],
    anchors: &[CertificateDer<'_>],
    crl_path: &Path,
    ca_path: &Path,
) -> Result<(), ProxyError> {
    let issuers: Vec<Vec<u8>> = crls
        .iter()
        .filter_map(|crl| x509_parser::parse_x509_crl(crl.as_ref()).ok())
        .map(|(_, parsed)| parsed.issuer().as_raw().to_vec())
        .collect();
    for anchor in anchors {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(anchor.as_ref()) else {
            continue;
        };
        if !issuers
            .iter()
            .any(|i| i.as_slice() == cert.subject().as_raw())
        {
            return Err(ProxyError::file(
                "CRL",
                crl_path,
                format!(
                    "has no CRL from the client CA {} in {}: every certificate that CA issued would fail its revocation check; add that CA's CRL to the file (several PEM CRLs may follow each other) or remove the CA from client_ca",
                    cert.subject(),
                    ca_path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The key of a certificate too small to verify signatures with (RSA
/// below [`MIN_RSA_BITS`]), if it is one.
pub(crate) fn weak_key(cert: &CertificateDer<'_>) -> Option<WeakKey> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    match parsed.public_key().parsed().ok()? {
        x509_parser::public_key::PublicKey::RSA(rsa) if rsa.key_size() < MIN_RSA_BITS => {
            Some(WeakKey {
                rsa_bits: rsa.key_size(),
            })
        }
        _ => None,
    }
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
