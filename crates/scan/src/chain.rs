//! Whether a certificate chain is sent in the order clients expect.
//!
//! This module owns [`chain_order`]: walking a chain as sent, leaf first,
//! and checking that each certificate names the next as its issuer and
//! carries a signature that the next one's key verifies, and that the chain
//! ends at a self-signed certificate or at a trust anchor the caller knows.
//!
//! It must never decide trust. An in-order chain is not a trusted chain:
//! expiry, names, key usage and revocation are not looked at here. TLS 1.3
//! (RFC 8446, 4.4.2) lets clients accept an unordered chain, so
//! [`ChainOrder::OutOfOrder`] is a finding to report, not proof that every
//! client fails; older TLS stacks and many database drivers do fail on it.

use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// What [`chain_order`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainOrder {
    /// Each certificate is issued by the next one and signed with its key,
    /// and the last one is self-signed or issued by a known trust anchor.
    Ok,
    /// The chain holds no certificate at all.
    Empty,
    /// The certificate at `position` (0 is the leaf) is not DER X.509.
    Unparseable {
        /// Where in the chain, leaf first.
        position: usize,
        /// What the parser said.
        reason: String,
    },
    /// The certificate at `position` is not issued by the one after it: the
    /// issuer name differs from the next certificate's subject.
    OutOfOrder {
        /// Where in the chain, leaf first.
        position: usize,
        /// The issuer named by that certificate.
        issuer: String,
        /// Where that issuer does appear in the chain, if anywhere.
        issuer_at: Option<usize>,
    },
    /// The certificate at `position` names its issuer correctly (the next
    /// certificate, a known anchor, or itself) but that key does not verify
    /// its signature, or the signature algorithm is not supported here
    /// (RSA below 2048 bits, DSA, MD5).
    BadSignature {
        /// Where in the chain, leaf first.
        position: usize,
        /// Why the signature did not verify.
        reason: String,
    },
    /// In order, but the last certificate is neither self-signed nor issued
    /// by a known trust anchor: the server does not send its intermediate,
    /// and clients that do not already have it fail.
    Incomplete {
        /// The issuer named by the last certificate.
        missing_issuer: String,
    },
}

impl fmt::Display for ChainOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainOrder::Ok => f.write_str("in order"),
            ChainOrder::Empty => f.write_str("no certificate was sent"),
            ChainOrder::Unparseable { position, reason } => {
                write!(f, "certificate #{position} is not valid X.509: {reason}")
            }
            ChainOrder::OutOfOrder {
                position,
                issuer,
                issuer_at,
            } => {
                write!(
                    f,
                    "out of order: certificate #{position} is not issued by the certificate \
                     after it; its issuer {issuer} is "
                )?;
                match issuer_at {
                    Some(at) => write!(f, "certificate #{at}"),
                    None => f.write_str("not in the chain"),
                }
            }
            ChainOrder::BadSignature { position, reason } => write!(
                f,
                "the signature on certificate #{position} does not verify with its issuer's key: \
                 {reason}"
            ),
            ChainOrder::Incomplete { missing_issuer } => write!(
                f,
                "incomplete: the last certificate's issuer {missing_issuer} is neither sent nor a \
                 known trust anchor"
            ),
        }
    }
}

/// Checks the order of `chain`, leaf first, as a server sent it. The chain
/// must end at a self-signed certificate to be [`ChainOrder::Ok`].
pub fn chain_order(chain: &[CertificateDer<'_>]) -> ChainOrder {
    chain_order_with_anchors(chain, &[])
}

/// Checks the order of `chain`, leaf first, as a server sent it. The chain
/// is [`ChainOrder::Ok`] when it ends at a self-signed certificate or at a
/// certificate issued by one of `anchors` (trust anchors the client is
/// expected to have, which servers need not send).
///
/// Unparseable anchors are ignored.
pub fn chain_order_with_anchors(
    chain: &[CertificateDer<'_>],
    anchors: &[CertificateDer<'_>],
) -> ChainOrder {
    let mut parsed = Vec::with_capacity(chain.len());
    for (position, der) in chain.iter().enumerate() {
        match X509Certificate::from_der(der.as_ref()) {
            Ok((_, cert)) => parsed.push(cert),
            Err(err) => {
                return ChainOrder::Unparseable {
                    position,
                    reason: err.to_string(),
                }
            }
        }
    }
    let Some(last) = parsed.last() else {
        return ChainOrder::Empty;
    };

    for (position, pair) in parsed.windows(2).enumerate() {
        let [cert, next] = pair else { continue };
        if cert.issuer().as_raw() != next.subject().as_raw() {
            return ChainOrder::OutOfOrder {
                position,
                issuer: cert.issuer().to_string(),
                issuer_at: parsed.iter().enumerate().position(|(at, other)| {
                    at != position && other.subject().as_raw() == cert.issuer().as_raw()
                }),
            };
        }
        if let Err(err) = cert.verify_signature(Some(next.public_key())) {
            return ChainOrder::BadSignature {
                position,
                reason: err.to_string(),
            };
        }
    }

    let last_position = parsed.len() - 1;
    let bad_signature = |err: x509_parser::error::X509Error| ChainOrder::BadSignature {
        position: last_position,
        reason: err.to_string(),
    };
    if last.issuer().as_raw() == last.subject().as_raw() {
        return match last.verify_signature(None) {
            Ok(()) => ChainOrder::Ok,
            Err(err) => bad_signature(err),
        };
    }
    let anchors: Vec<X509Certificate<'_>> = anchors
        .iter()
        .filter_map(|der| X509Certificate::from_der(der.as_ref()).ok())
        .map(|(_, cert)| cert)
        .filter(|anchor| anchor.subject().as_raw() == last.issuer().as_raw())
        .collect();
    // Two anchors may share a name (a re-keyed CA); any one that verifies
    // the signature is the issuer.
    let mut failure = None;
    for anchor in &anchors {
        match last.verify_signature(Some(anchor.public_key())) {
            Ok(()) => return ChainOrder::Ok,
            Err(err) => failure = Some(err),
        }
    }
    match failure {
        Some(err) => bad_signature(err),
        None => ChainOrder::Incomplete {
            missing_issuer: last.issuer().to_string(),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    use super::*;

    /// A CA whose certificate and key are kept for signing.
    struct Ca {
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params
    }

    fn new_root(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let der = params.self_signed(&key).unwrap().der().clone();
        Ca {
            der,
            issuer: Issuer::new(params, key),
        }
    }

    fn intermediate(name: &str, parent: &Ca) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name);
        let der = params
            .signed_by(&key, &parent.issuer)
            .unwrap()
            .der()
            .clone();
        Ca {
            der,
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(parent: &Ca) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["db.internal".to_owned()]).unwrap();
        params
            .signed_by(&key, &parent.issuer)
            .unwrap()
            .der()
            .clone()
    }

    #[test]
    fn leaf_intermediate_root_is_ok() {
        let root = new_root("Root");
        let inter = intermediate("Intermediate", &root);
        let leaf = leaf(&inter);
        assert_eq!(
            chain_order(&[leaf.clone(), inter.der.clone(), root.der.clone()]),
            ChainOrder::Ok
        );
        // A lone self-signed certificate is a complete chain.
        assert_eq!(chain_order(std::slice::from_ref(&root.der)), ChainOrder::Ok);
    }

    #[test]
    fn root_left_out_needs_a_known_anchor() {
        let root = new_root("Root");
        let inter = intermediate("Intermediate", &root);
        let leaf = leaf(&inter);
        let sent = [leaf, inter.der.clone()];
        let order = chain_order(&sent);
        assert_eq!(
            order,
            ChainOrder::Incomplete {
                missing_issuer: "CN=Root".to_owned()
            }
        );
        assert!(order.to_string().contains("CN=Root"), "{order}");
        assert_eq!(
            chain_order_with_anchors(&sent, std::slice::from_ref(&root.der)),
            ChainOrder::Ok
        );
    }

    #[test]
    fn intermediate_after_root_is_out_of_order() {
        let root = new_root("Root");
        let inter = intermediate("Intermediate", &root);
        let leaf = leaf(&inter);
        let order = chain_order(&[leaf, root.der.clone(), inter.der.clone()]);
        assert_eq!(
            order,
            ChainOrder::OutOfOrder {
                position: 0,
                issuer: "CN=Intermediate".to_owned(),
                issuer_at: Some(2),
            }
        );
        assert!(order.to_string().contains("certificate #2"), "{order}");
    }

    #[test]
    fn unrelated_certificate_is_out_of_order() {
        let root = new_root("Root");
        let other = new_root("Other");
        let leaf = leaf(&root);
        assert_eq!(
            chain_order(&[leaf, other.der]),
            ChainOrder::OutOfOrder {
                position: 0,
                issuer: "CN=Root".to_owned(),
                issuer_at: None,
            }
        );
    }

    #[test]
    fn same_name_different_key_is_a_bad_signature() {
        let real = new_root("Root");
        let impostor = new_root("Root");
        let leaf = leaf(&real);
        assert!(matches!(
            chain_order(&[leaf.clone(), impostor.der.clone()]),
            ChainOrder::BadSignature { position: 0, .. }
        ));
        assert!(matches!(
            chain_order_with_anchors(
                std::slice::from_ref(&leaf),
                std::slice::from_ref(&impostor.der)
            ),
            ChainOrder::BadSignature { position: 0, .. }
        ));
        // With both anchors known, the one that verifies wins.
        assert_eq!(
            chain_order_with_anchors(&[leaf], &[impostor.der, real.der]),
            ChainOrder::Ok
        );
    }

    #[test]
    fn empty_and_garbage() {
        assert_eq!(chain_order(&[]), ChainOrder::Empty);
        let root = new_root("Root");
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(matches!(
            chain_order(&[root.der, garbage]),
            ChainOrder::Unparseable { position: 1, .. }
        ));
    }
}
