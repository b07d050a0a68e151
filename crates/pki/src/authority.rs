//! The certificate authority: creating it, loading and saving it, and
//! signing leaf certificates.
//!
//! This module owns what goes into a certificate (extensions, serial numbers,
//! names) and the invariant that a [`CertificateAuthority`] value always holds
//! a CA certificate together with the private key that belongs to it. It
//! must never expose the CA private key except by writing it to a 0600 file
//! in [`CertificateAuthority::save`] or, encrypted,
//! [`CertificateAuthority::save_encrypted`].

use std::fmt;
use std::path::Path;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::X509Name;

use crate::inspect::{decode_certs, encode_pem, parse_certificate, serial_hex};
use crate::key::{parse_private_key, pkcs8_der, private_key_pem};
use crate::key_encryption::{decrypt_pkcs8, encrypt_pkcs8, is_encrypted_pem, DecryptError};
use crate::request::validate_common_name;
use crate::revocation::{serial_bytes, RevocationReason, RevokedCertificate};
use crate::storage::{
    create_private_dir, path_exists, read_text, stage_files, write_file_atomic, CertificatePaths,
    FileSpec, SwappedFiles, CA_FILE, CERT_FILE, CHAIN_FILE, KEY_FILE, PRIVATE_FILE_MODE,
    PUBLIC_FILE_MODE,
};
use crate::{CertificateKind, IssueRequest, KeyAlgorithm, PkiError, Validity};

/// The organization (O) put in the subject of every CA this crate generates.
pub const CA_ORGANIZATION: &str = "intransit";

/// File name of the CA certificate inside a CA directory.
pub(crate) const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA directory.
pub(crate) const CA_KEY_FILE: &str = "key.pem";

/// A CA certificate and its private key, able to sign leaf certificates.
///
/// The CA is a root with `pathLenConstraint` 0: it signs end-entity
/// certificates only, never intermediate CAs.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: Vec<u8>,
    subject: String,
    not_after: OffsetDateTime,
    /// The private key in PEM, kept only so that [`Self::save`] can write it.
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new self-signed CA with subject `O=intransit, CN=<common_name>`,
    /// BasicConstraints CA:true with pathlen 0, KeyUsage keyCertSign and
    /// cRLSign, and a SubjectKeyIdentifier.
    pub fn generate(
        common_name: &str,
        key: KeyAlgorithm,
        validity: Validity,
    ) -> Result<Self, PkiError> {
        validate_common_name(common_name)?;
        let validity = validity.checked()?;
        let key_pair = key.generate()?;

        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, CA_ORGANIZATION);
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;

        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| PkiError::crypto("signing the CA certificate", e))?;
        let key_pem = private_key_pem(&key_pair)?;
        Self::from_parts(cert.der().to_vec(), key_pair, key_pem)
    }

    /// Builds a CA from a PEM certificate and a PEM private key.
    ///
    /// The certificate PEM must hold exactly one certificate, which must be a
    /// CA certificate; the key may be PKCS#8, SEC1 or PKCS#1 and must be the
    /// certificate's own key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let what = "CA certificate";
        let mut certs = decode_certs(cert_pem, what)?;
        let cert_der = match (certs.pop(), certs.is_empty()) {
            (Some(der), true) => der,
            _ => {
                return Err(PkiError::Certificate {
                    what,
                    detail: format!(
                        "expected exactly one certificate, found {}",
                        certs.len() + 1
                    ),
                })
            }
        };
        let (key_pair, key_pem) = parse_private_key(key_pem, "CA private key")?;
        Self::from_parts(cert_der, key_pair, key_pem)
    }

    /// Loads `dir/ca.pem` and `dir/key.pem`, as written by [`Self::save`].
    ///
    /// An encrypted key is refused with [`PkiError::PassphraseRequired`];
    /// use [`Self::load_with_passphrase`] for those.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        Self::load_with_passphrase(dir, None)
    }

    /// Loads `dir/ca.pem` and `dir/key.pem`, decrypting the key with
    /// `passphrase` if it is a PKCS#8 `ENCRYPTED PRIVATE KEY` (as written by
    /// [`Self::save_encrypted`] or by `openssl pkcs8 -topk8 -v2 aes-256-cbc`).
    /// A passphrase given for an unencrypted key is ignored.
    ///
    /// Errors say precisely what is wrong: [`PkiError::NoCa`] when neither
    /// file exists, [`PkiError::IncompleteCa`] when one is missing,
    /// [`PkiError::PassphraseRequired`] when the key is encrypted and no
    /// passphrase was given, [`PkiError::WrongPassphrase`],
    /// [`PkiError::UnsupportedKeyEncryption`], and otherwise
    /// [`PkiError::Load`] with the cause (a damaged file, a key that does
    /// not match the certificate, ...).
    pub fn load_with_passphrase(dir: &Path, passphrase: Option<&[u8]>) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (path_exists(&cert_path)?, path_exists(&key_path)?) {
            (true, true) => {}
            (false, false) => {
                return Err(PkiError::NoCa {
                    dir: dir.to_path_buf(),
                })
            }
            (true, false) => {
                return Err(PkiError::IncompleteCa {
                    dir: dir.to_path_buf(),
                    missing: key_path,
                })
            }
            (false, true) => {
                return Err(PkiError::IncompleteCa {
                    dir: dir.to_path_buf(),
                    missing: cert_path,
                })
            }
        }
        let cert_pem = read_text(&cert_path, "reading CA certificate")?;
        let key_pem = read_text(&key_path, "reading CA private key")?;
        Self::from_pem_with_passphrase(&cert_pem, &key_pem, passphrase, dir, &key_path)
    }

    /// [`Self::from_pem`] for a key that may be encrypted (PKCS#8
    /// `ENCRYPTED PRIVATE KEY`), decrypted with `passphrase`; `dir` and
    /// `key_path` name where the PEM came from, in errors. The errors are
    /// those of [`Self::load_with_passphrase`].
    pub fn from_pem_with_passphrase(
        cert_pem: &str,
        key_pem: &str,
        passphrase: Option<&[u8]>,
        dir: &Path,
        key_path: &Path,
    ) -> Result<Self, PkiError> {
        let key_path = key_path.to_path_buf();
        let load_error = |source: PkiError| PkiError::Load {
            path: dir.to_path_buf(),
            source: Box::new(source),
        };
        if !is_encrypted_pem(key_pem) {
            return Self::from_pem(cert_pem, key_pem).map_err(load_error);
        }
        let Some(passphrase) = passphrase else {
            return Err(PkiError::PassphraseRequired { path: key_path });
        };
        let mut der = decrypt_pkcs8(key_pem, passphrase).map_err(|e| match e {
            DecryptError::WrongPassphrase => PkiError::WrongPassphrase {
                path: key_path.clone(),
            },
            DecryptError::Unsupported(scheme) => PkiError::UnsupportedKeyEncryption {
                path: key_path.clone(),
                scheme,
            },
        })?;
        let plain_pem = encode_pem("PRIVATE KEY", &der);
        der.fill(0);
        Self::from_pem(cert_pem, &plain_pem).map_err(load_error)
    }

    /// Whether `dir/key.pem` is encrypted, so that a caller can ask for the
    /// passphrase before calling [`Self::load_with_passphrase`].
    pub fn is_key_encrypted(dir: &Path) -> Result<bool, PkiError> {
        let key_pem = read_text(&dir.join(CA_KEY_FILE), "reading CA private key")?;
        Ok(is_encrypted_pem(&key_pem))
    }

    /// Writes `dir/key.pem` (mode 0600) and `dir/ca.pem` (mode 0644), each
    /// atomically, replacing any existing files. Creates `dir` with mode 0700
    /// if it does not exist. The key is written unencrypted, even if it was
    /// loaded from an encrypted file; see [`Self::save_encrypted`].
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        self.save_key_pem(dir, &self.key_pem)
    }

    /// Like [`Self::save`], but the key file is a PKCS#8
    /// `ENCRYPTED PRIVATE KEY` protected by `passphrase`: PBES2 with
    /// PBKDF2-HMAC-SHA256 ([`PBKDF2_ITERATIONS`](crate::PBKDF2_ITERATIONS)
    /// iterations, random salt) and AES-256-CBC, readable by
    /// `openssl pkey -in key.pem -passin ...`. An empty passphrase is refused.
    pub fn save_encrypted(&self, dir: &Path, passphrase: &[u8]) -> Result<(), PkiError> {
        let mut der = pkcs8_der(&self.key_pem, "CA private key")?;
        let encrypted = encrypt_pkcs8(&der, passphrase);
        der.fill(0);
        self.save_key_pem(dir, &encrypted?)
    }

    fn save_key_pem(&self, dir: &Path, key_pem: &str) -> Result<(), PkiError> {
        create_private_dir(dir)?;
        write_file_atomic(
            &dir.join(CA_KEY_FILE),
            key_pem.as_bytes(),
            PRIVATE_FILE_MODE,
        )?;
        write_file_atomic(
            &dir.join(CA_CERT_FILE),
            self.cert_pem.as_bytes(),
            PUBLIC_FILE_MODE,
        )
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate's subject, e.g. `O=intransit, CN=intransit local CA`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the CA certificate expires. No certificate it issues may outlive it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Signs a certificate revocation list naming `revoked_serials` (hex, as
    /// [`crate::CertificateSummary::serial_hex`] prints them; colons are
    /// ignored), each revoked now without a reason, valid from now until
    /// `next_update` later. The PEM output is usable by the proxy's `crl`
    /// key and by PostgreSQL's `ssl_crl_file`. See [`Self::sign_crl`] for
    /// reasons and revocation times.
    pub fn crl_pem(
        &self,
        revoked_serials: &[&str],
        next_update: time::Duration,
        crl_number: u64,
    ) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let revoked = revoked_serials
            .iter()
            .map(|serial| RevokedCertificate {
                serial_hex: (*serial).to_owned(),
                revoked_at: now,
                reason: RevocationReason::Unspecified,
                name: None,
            })
            .collect::<Vec<_>>();
        self.sign_crl(&revoked, now, next_update, crl_number)
    }

    /// Signs a v2 certificate revocation list: thisUpdate `this_update`,
    /// nextUpdate `next_update` later, the CRL number extension
    /// `crl_number` (which must grow with every CRL the CA publishes), an
    /// authority key identifier, and per entry the serial, the revocation
    /// time and (unless unspecified) the reason code. Returns PEM.
    pub fn sign_crl(
        &self,
        revoked: &[RevokedCertificate],
        this_update: OffsetDateTime,
        next_update: time::Duration,
        crl_number: u64,
    ) -> Result<String, PkiError> {
        if next_update <= time::Duration::ZERO {
            return Err(PkiError::InvalidRequest(
                "the CRL's next update must be in the future".to_owned(),
            ));
        }
        let mut entries = Vec::with_capacity(revoked.len());
        for entry in revoked {
            let bytes = serial_bytes(&entry.serial_hex).ok_or_else(|| {
                PkiError::InvalidRequest(format!(
                    "{:?} is not a hexadecimal serial number",
                    entry.serial_hex
                ))
            })?;
            entries.push(rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: entry.revoked_at,
                reason_code: entry.reason.to_rcgen(),
                invalidity_date: None,
            });
        }
        let next = this_update.checked_add(next_update).ok_or_else(|| {
            PkiError::InvalidRequest("the CRL's next update is too far away".to_owned())
        })?;
        let params = rcgen::CertificateRevocationListParams {
            this_update,
            next_update: next,
            crl_number: SerialNumber::from_slice(&crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: entries,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| PkiError::crypto("signing the CRL", e))?;
        crl.pem()
            .map_err(|e| PkiError::crypto("encoding the CRL", e))
    }

    /// Generates a key pair and signs a leaf certificate for it.
    ///
    /// The certificate has BasicConstraints CA:false, KeyUsage
    /// digitalSignature (plus keyEncipherment for RSA keys), the extended key
    /// usage matching `req.kind`, the requested subject alternative names, a
    /// SubjectKeyIdentifier, an AuthorityKeyIdentifier and a random 128-bit
    /// serial number. A validity in the past is allowed. A validity ending
    /// after the CA expires is cut short at the CA's expiry (see
    /// [`IssuedCertificate::not_after`]); one starting after it is an error.
    pub fn issue(&self, req: &IssueRequest) -> Result<IssuedCertificate, PkiError> {
        self.issue_with_key(req, None)
    }

    /// Like [`Self::issue`], for an existing key pair (and its PEM) when
    /// `existing_key` is given; `req.key` must describe that key.
    pub(crate) fn issue_with_key(
        &self,
        req: &IssueRequest,
        existing_key: Option<(KeyPair, String)>,
    ) -> Result<IssuedCertificate, PkiError> {
        req.validate()?;
        let mut validity = req.validity.checked()?;
        // A certificate cannot be trusted beyond its CA's expiry, so a longer
        // request is cut short rather than refused: callers naturally ask
        // for `days_from_now(n)` for a CA and then for its leaves.
        if validity.not_after > self.not_after {
            if self.not_after <= validity.not_before {
                return Err(PkiError::CaExpiresFirst {
                    not_before: validity.not_before,
                    ca_not_after: self.not_after,
                });
            }
            validity.not_after = self.not_after;
        }

        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, req.common_name.as_str());
        params.distinguished_name = name;
        params.subject_alt_names = subject_alt_names(req)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if req.key.is_rsa() {
            // TLS 1.2 RSA key exchange encrypts to the key; OpenSSL's purpose
            // checks expect the bit on RSA server certificates.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![match req.kind {
            CertificateKind::Server => ExtendedKeyUsagePurpose::ServerAuth,
            CertificateKind::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;

        let (key_pair, key_pem) = match existing_key {
            Some(existing) => existing,
            None => {
                let key_pair = req.key.generate()?;
                let key_pem = private_key_pem(&key_pair)?;
                (key_pair, key_pem)
            }
        };
        let cert = params
            .signed_by(&key_pair, &self.issuer)
            .map_err(|e| PkiError::crypto("signing the certificate", e))?;
        let cert_der = cert.der().to_vec();

        // rcgen re-encodes the issuer name from the parsed CA certificate; a
        // CA made elsewhere could use an encoding it does not reproduce, and
        // verifiers compare names byte for byte. Check before handing it out.
        let issued = parse_certificate(&cert_der, "issued certificate")?;
        let ca = parse_certificate(&self.cert_der, "CA certificate")?;
        if !is_signed_by(&issued, &ca) {
            return Err(PkiError::Certificate {
                what: "CA certificate",
                detail: "its subject name cannot be reproduced exactly in issued certificates"
                    .to_owned(),
            });
        }

        Ok(IssuedCertificate {
            cert_pem: encode_pem("CERTIFICATE", &cert_der),
            key_pem,
            ca_pem: self.cert_pem.clone(),
            serial_hex: serial_hex(&issued),
            not_after: validity.not_after,
        })
    }

    /// Checks the certificate and key and assembles the CA.
    fn from_parts(cert_der: Vec<u8>, key_pair: KeyPair, key_pem: String) -> Result<Self, PkiError> {
        let what = "CA certificate";
        let (subject, not_after) = {
            let cert = parse_certificate(&cert_der, what)?;
            let subject = cert.subject().to_string();
            check_can_sign(&cert, &subject)?;
            if key_pair.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
                return Err(PkiError::KeyMismatch);
            }
            check_name_is_simple(cert.subject())?;
            (subject, cert.validity().not_after.to_datetime())
        };
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key_pair)
            .map_err(|e| PkiError::Certificate {
                what,
                detail: e.to_string(),
            })?;
        Ok(Self {
            cert_pem: encode_pem("CERTIFICATE", &cert_der),
            cert_der,
            subject,
            not_after,
            key_pem,
            issuer,
        })
    }
}

/// A freshly issued leaf certificate with its private key.
#[derive(Clone)]
pub struct IssuedCertificate {
    /// The leaf certificate in PEM.
    pub cert_pem: String,
    /// The leaf's private key, PKCS#8 PEM. Redacted in `Debug`.
    pub key_pem: String,
    /// The issuing CA's certificate in PEM.
    pub ca_pem: String,
    /// The serial number as uppercase hex, as `openssl x509 -serial` prints it.
    pub serial_hex: String,
    /// End of the certificate's validity: the requested one, or the CA's
    /// expiry if that comes first.
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .field("ca_pem", &self.ca_pem)
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl IssuedCertificate {
    /// The leaf followed by the CA certificate, the form servers present.
    pub fn chain_pem(&self) -> String {
        let mut chain = String::with_capacity(self.cert_pem.len() + self.ca_pem.len() + 1);
        chain.push_str(&self.cert_pem);
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(&self.ca_pem);
        chain
    }

    /// Writes `key.pem` (0600), `cert.pem`, `chain.pem` and `ca.pem` (0644)
    /// into `dir`, creating it with mode 0700 if needed. A file that
    /// already exists keeps its owner, group and mode (a private key never
    /// keeps permissions for others), so a database that reads these files
    /// as its own user still can after a renewal run as root. All four files are
    /// written to temporary names first and then renamed into place, the key
    /// first; if anything fails, the previous files are restored and
    /// nothing new is left behind.
    pub fn write_to(&self, dir: &Path) -> Result<CertificatePaths, PkiError> {
        let swapped = self.swap_into(dir)?;
        swapped.commit();
        Ok(CertificatePaths::in_dir(dir))
    }

    /// Stages and renames the four files into `dir`, leaving the caller to
    /// commit or (by dropping the result) undo the change.
    pub(crate) fn swap_into(&self, dir: &Path) -> Result<SwappedFiles, PkiError> {
        let chain = self.chain_pem();
        let files: [FileSpec<'_>; 4] = [
            (KEY_FILE, self.key_pem.as_bytes(), PRIVATE_FILE_MODE),
            (CERT_FILE, self.cert_pem.as_bytes(), PUBLIC_FILE_MODE),
            (CHAIN_FILE, chain.as_bytes(), PUBLIC_FILE_MODE),
            (CA_FILE, self.ca_pem.as_bytes(), PUBLIC_FILE_MODE),
        ];
        stage_files(dir, &files)?.swap_in()
    }
}

/// Whether `leaf` names `ca` as its issuer, byte for byte, and carries a valid
/// signature by the CA's key.
pub(crate) fn is_signed_by(leaf: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> bool {
    leaf.issuer().as_raw() == ca.subject().as_raw()
        && leaf.verify_signature(Some(ca.public_key())).is_ok()
}

/// 128 random bits. The DER encoder (yasna, through rcgen) writes them as a
/// positive INTEGER, adding a leading zero byte when the top bit is set, so
/// the encoding is at most 17 bytes (RFC 5280 allows up to 20).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| PkiError::Random)?;
    // RFC 5280 requires a positive serial; zero has probability 2^-128.
    if bytes.iter().all(|b| *b == 0) {
        bytes[15] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

fn subject_alt_names(req: &IssueRequest) -> Result<Vec<SanType>, PkiError> {
    let ia5 = |s: &str| {
        Ia5String::try_from(s).map_err(|_| {
            PkiError::InvalidRequest(format!("{s:?} must be ASCII to appear in a certificate"))
        })
    };
    let mut sans = Vec::new();
    for name in &req.dns_names {
        sans.push(SanType::DnsName(ia5(name)?));
    }
    sans.extend(req.ip_addresses.iter().map(|ip| SanType::IpAddress(*ip)));
    for uri in &req.uris {
        sans.push(SanType::URI(ia5(uri)?));
    }
    Ok(sans)
}

/// A CA certificate must say CA:true and, if it restricts key usage, allow
/// certificate signing.
fn check_can_sign(cert: &X509Certificate<'_>, subject: &str) -> Result<(), PkiError> {
    let invalid = |e: x509_parser::error::X509Error| PkiError::Certificate {
        what: "CA certificate",
        detail: e.to_string(),
    };
    let is_ca = cert
        .basic_constraints()
        .map_err(invalid)?
        .is_some_and(|bc| bc.value.ca);
    let may_sign = cert
        .key_usage()
        .map_err(invalid)?
        .is_none_or(|ku| ku.value.key_cert_sign());
    if is_ca && may_sign {
        Ok(())
    } else {
        Err(PkiError::NotCa {
            subject: subject.to_owned(),
        })
    }
}

/// rcgen can only reproduce names whose every RDN holds exactly one
/// attribute (and panics on an empty RDN), so reject others up front.
fn check_name_is_simple(name: &X509Name<'_>) -> Result<(), PkiError> {
    if name.iter().all(|rdn| rdn.iter().count() == 1) {
        Ok(())
    } else {
        Err(PkiError::Certificate {
            what: "CA certificate",
            detail: "subject names with multi-valued or empty RDNs are not supported".to_owned(),
        })
    }
}
