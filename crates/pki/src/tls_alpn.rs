//! TLS-ALPN-01 (RFC 8737) answers, shared by whoever obtains a certificate
//! and whoever answers the CA's handshake: the ACME client's own listener,
//! and the proxy's listeners when the CA validates on a port they hold.
//!
//! A [`ChallengeCertificate`] is the RFC 8737 certificate for one
//! identifier; [`TlsAlpnChallenges`] holds the pending ones by the server
//! name the CA's ClientHello carries. Two ways reach it: in the same
//! process, [`TlsAlpnChallenges::insert`]; from another process (`cert
//! issue` or `cert renew` while a proxy holds the port), a file
//! `<state>/acme/tls-alpn/<server name>.pem` (mode 0600, the certificate
//! and its key) that [`write_challenge_file`] writes and
//! [`TlsAlpnChallenges::find`] reads when the registry knows the state
//! directory. A validation handshake is rare, so the file is read at each.
//!
//! No networking and no TLS here: the proxy and the ACME crate turn a
//! certificate into their rustls state.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::inspect::encode_pem;
use crate::storage::{create_private_dir, write_file_atomic};
use crate::{PkiError, StateDir};

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The RFC 8737 certificate for one identifier: self-signed, the
/// identifier as its only subjectAltName, and the critical acmeIdentifier
/// extension holding the SHA-256 of the key authorization.
#[derive(Clone, PartialEq, Eq)]
pub struct ChallengeCertificate {
    cert_der: Vec<u8>,
    key_pkcs8_der: Vec<u8>,
}

impl fmt::Debug for ChallengeCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChallengeCertificate")
            .field("cert_der", &self.cert_der.len())
            .field("key", &"[redacted]")
            .finish()
    }
}

impl ChallengeCertificate {
    /// Makes the certificate for `identifier` (a DNS name or an IP
    /// address) with `digest`, the SHA-256 of the key authorization.
    pub fn new(identifier: &str, digest: &[u8]) -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(vec![identifier.to_owned()]).map_err(|e| {
            PkiError::crypto(format!("the TLS-ALPN-01 certificate for {identifier}"), e)
        })?;
        params
            .custom_extensions
            .push(CustomExtension::new_acme_identifier(digest));
        let key = KeyPair::generate()
            .map_err(|e| PkiError::crypto("generating the TLS-ALPN-01 key", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| PkiError::crypto("signing the TLS-ALPN-01 certificate", e))?;
        Ok(ChallengeCertificate {
            cert_der: cert.der().to_vec(),
            key_pkcs8_der: key.serialize_der(),
        })
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Its private key, PKCS#8 DER.
    pub fn key_pkcs8_der(&self) -> &[u8] {
        &self.key_pkcs8_der
    }

    /// The certificate and its key as PEM, as a challenge file holds them.
    pub fn to_pem(&self) -> String {
        encode_pem("CERTIFICATE", &self.cert_der) + &encode_pem("PRIVATE KEY", &self.key_pkcs8_der)
    }

    /// Reads what [`Self::to_pem`] wrote; `None` for anything else.
    pub fn from_pem(pem: &[u8]) -> Option<Self> {
        let cert = CertificateDer::from_pem_slice(pem).ok()?;
        let key = PrivatePkcs8KeyDer::from_pem_slice(pem).ok()?;
        Some(ChallengeCertificate {
            cert_der: cert.to_vec(),
            key_pkcs8_der: key.secret_pkcs8_der().to_vec(),
        })
    }
}

/// The server name a CA's ClientHello carries for `identifier`: the DNS
/// name in lower case, or for an IP address its reverse-DNS name (RFC 8738
/// section 6: `1.0.0.127.in-addr.arpa`).
pub fn challenge_server_name(identifier: &str) -> String {
    match identifier.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            let o = ip.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        Ok(IpAddr::V6(ip)) => {
            let mut name = String::new();
            for byte in ip.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name + "ip6.arpa"
        }
        Err(_) => identifier.to_ascii_lowercase(),
    }
}

/// Whether `name` can name a challenge file: a DNS name of letters,
/// digits, hyphens and dots, without empty labels. A server name comes
/// from a peer, so nothing else ever becomes part of a path.
fn is_plain_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// `<state>/acme/tls-alpn`, where other processes leave their answers.
pub fn challenge_dir(state_root: &Path) -> PathBuf {
    state_root.join("acme").join("tls-alpn")
}

fn challenge_file(state_root: &Path, server_name: &str) -> Option<PathBuf> {
    is_plain_server_name(server_name)
        .then(|| challenge_dir(state_root).join(format!("{server_name}.pem")))
}

/// Leaves the answer for `identifier` in the state directory (mode 0600)
/// for a proxy of another process that holds the challenge's address.
/// Returns the file, which [`remove_challenge_file`] removes.
pub fn write_challenge_file(
    state: &StateDir,
    identifier: &str,
    certificate: &ChallengeCertificate,
) -> Result<PathBuf, PkiError> {
    let name = challenge_server_name(identifier);
    let path = challenge_file(state.root(), &name).ok_or_else(|| {
        PkiError::InvalidRequest(format!(
            "{identifier:?} cannot be answered with TLS-ALPN-01 through the state directory"
        ))
    })?;
    create_private_dir(&challenge_dir(state.root()))?;
    write_file_atomic(&path, certificate.to_pem().as_bytes(), 0o600)?;
    Ok(path)
}

/// Removes a file [`write_challenge_file`] wrote; one already gone is fine.
pub fn remove_challenge_file(path: &Path) -> Result<(), PkiError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PkiError::io("removing the TLS-ALPN-01 answer", path, e)),
    }
}

/// The pending TLS-ALPN-01 challenges a listener answers, by server name.
/// Cloning shares them.
#[derive(Clone, Default)]
pub struct TlsAlpnChallenges {
    pending: Arc<Mutex<HashMap<String, Arc<ChallengeCertificate>>>>,
    /// The state directory whose `acme/tls-alpn` files are answers too.
    state_root: Option<PathBuf>,
}

impl fmt::Debug for TlsAlpnChallenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAlpnChallenges")
            .field("state_root", &self.state_root)
            .finish_non_exhaustive()
    }
}

impl TlsAlpnChallenges {
    /// An empty registry that also answers from `state_root`'s challenge
    /// files, when given.
    pub fn new(state_root: Option<&Path>) -> Self {
        TlsAlpnChallenges {
            pending: Arc::default(),
            state_root: state_root.map(Path::to_owned),
        }
    }

    /// Answers `identifier` with `certificate` until [`Self::remove`].
    pub fn insert(&self, identifier: &str, certificate: ChallengeCertificate) {
        self.lock()
            .insert(challenge_server_name(identifier), Arc::new(certificate));
    }

    /// Stops answering `identifier`.
    pub fn remove(&self, identifier: &str) {
        self.lock().remove(&challenge_server_name(identifier));
    }

    /// The answer for a ClientHello with `server_name` offering
    /// `acme-tls/1`: one inserted here, else a challenge file in the state
    /// directory. `None` when no challenge for that name is pending.
    pub fn find(&self, server_name: &str) -> Option<Arc<ChallengeCertificate>> {
        let name = server_name.to_ascii_lowercase();
        if let Some(found) = self.lock().get(&name) {
            return Some(found.clone());
        }
        let path = challenge_file(self.state_root.as_deref()?, &name)?;
        let pem = std::fs::read(path).ok()?;
        ChallengeCertificate::from_pem(&pem).map(Arc::new)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ChallengeCertificate>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn server_names_of_identifiers() {
        assert_eq!(challenge_server_name("DB.Example.com"), "db.example.com");
        assert_eq!(challenge_server_name("127.0.0.1"), "1.0.0.127.in-addr.arpa");
        assert_eq!(
            challenge_server_name("2001:db8::1"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[test]
    fn only_plain_names_become_paths() {
        let root = Path::new("/state");
        assert_eq!(
            challenge_file(root, "db.example.com"),
            Some(PathBuf::from("/state/acme/tls-alpn/db.example.com.pem"))
        );
        for name in [
            "",
            "..",
            "../x",
            "a/b",
            ".a",
            "a..b",
            "A.example",
            "a\0b",
            "*.x",
        ] {
            assert_eq!(challenge_file(root, name), None, "{name:?}");
        }
    }

    #[test]
    fn a_pending_challenge_is_found_by_server_name_until_removed() {
        let registry = TlsAlpnChallenges::new(None);
        let cert = ChallengeCertificate::new("db.example.com", &[7; 32]).expect("cert");
        assert!(registry.find("db.example.com").is_none());
        registry.insert("db.example.com", cert.clone());
        assert_eq!(
            registry.find("DB.example.com").as_deref(),
            Some(&cert),
            "server names are case-insensitive"
        );
        assert!(registry.find("other.example.com").is_none());
        registry.remove("db.example.com");
        assert!(registry.find("db.example.com").is_none());
    }

    #[test]
    fn challenge_files_are_answers_while_they_exist() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = StateDir::new(dir.path());
        let registry = TlsAlpnChallenges::new(Some(dir.path()));
        let cert = ChallengeCertificate::new("db.example.com", &[9; 32]).expect("cert");
        let path = write_challenge_file(&state, "db.example.com", &cert).expect("write");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(registry.find("db.example.com").as_deref(), Some(&cert));
        // A registry without the state directory does not look there.
        assert!(TlsAlpnChallenges::new(None)
            .find("db.example.com")
            .is_none());
        remove_challenge_file(&path).expect("remove");
        remove_challenge_file(&path).expect("removing twice is fine");
        assert!(registry.find("db.example.com").is_none());
    }

    #[test]
    fn the_certificate_names_the_identifier_and_carries_the_digest() {
        let digest = [0xab; 32];
        let cert = ChallengeCertificate::new("db.example.com", &digest).expect("cert");
        let summary = crate::summarize(cert.cert_der()).expect("summary");
        assert_eq!(summary.dns_names, ["db.example.com"]);
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.cert_der()).expect("parse");
        // id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31: critical, an OCTET
        // STRING of the digest.
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        assert_eq!(&ext.value[2..], &digest);
        let back = ChallengeCertificate::from_pem(cert.to_pem().as_bytes()).expect("pem");
        assert_eq!(back, cert);
    }
}
