//! The certificate inventory: what the CA issued, where the files went, and
//! what became of each certificate since (renewed, replaced, revoked).
//!
//! This module owns `<root>/inventory.json` and every operation that changes
//! it: [`StateDir::issue`], [`StateDir::renew`], [`StateDir::revoke`] and
//! [`StateDir::write_crl`]. The inventory records intent (name, kind, key
//! type, requested names and lifetime, serial history, revocations, the last
//! CRL number); the certificate files record fact, so listings read both and
//! report what is on disk. A state directory made before the inventory
//! existed is listed from its `certs/*/` directories.
//!
//! Architecture invariant: certificate files are written first and the
//! inventory last; if the inventory cannot be written, the file change is
//! undone, so an error never leaves new files without a record or partial
//! files behind. There is no locking: two processes changing the same state
//! directory at the same moment can lose one inventory update.

use std::collections::HashSet;
use std::error::Error as _;
use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::acme::{AcmeCertificate, AcmeOrigin};
use crate::authority::{CA_CERT_FILE, CA_KEY_FILE};
use crate::inspect::{pem_to_der_certs, summarize};
use crate::key::parse_private_key;
use crate::renewal::{check_expiry, days_until, ExpiryFinding, RenewalPlan, RenewalPolicy};
use crate::revocation::normalize_serial;
use crate::storage::{
    create_private_dir, path_exists, read_text, replace_file_atomic, write_file_atomic,
    CertificatePaths, CA_FILE, CERT_FILE, CHAIN_FILE, KEY_FILE, PUBLIC_FILE_MODE,
};
use crate::{
    CertificateAuthority, CertificateKind, CertificateSummary, IssueRequest, IssuedCertificate,
    KeyAlgorithm, PkiError, RevocationReason, RevokedCertificate, StateDir, Validity,
    CLOCK_SKEW_ALLOWANCE,
};

/// File name of the inventory in the state root.
const INVENTORY_FILE: &str = "inventory.json";
/// File name of the CRL in the CA directory.
const CRL_FILE: &str = "crl.pem";
/// The inventory format this code writes and reads.
const INVENTORY_VERSION: u32 = 1;

/// Where a certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertStatus {
    /// Valid and not yet due for renewal.
    Valid,
    /// Past the renewal point of its [`RenewalPlan`], not yet expired.
    DueForRenewal,
    /// Past its `notAfter`.
    Expired,
    /// Its current serial number was revoked.
    Revoked,
    /// Its certificate file is missing or cannot be read; see
    /// [`IssuedEntry::problem`]. Renewal re-issues it.
    Unreadable,
}

impl CertStatus {
    /// A short lowercase label: `valid`, `due for renewal`, `expired`,
    /// `revoked` or `unreadable`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Valid => "valid",
            CertStatus::DueForRenewal => "due for renewal",
            CertStatus::Expired => "expired",
            CertStatus::Revoked => "revoked",
            CertStatus::Unreadable => "unreadable",
        }
    }
}

impl fmt::Display for CertStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A serial number a certificate had before it was renewed or replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSerial {
    /// The serial number (hex).
    pub serial_hex: String,
    /// When the certificate with this serial was replaced.
    pub replaced_at: OffsetDateTime,
}

/// One named certificate: what was asked for, where its files are, and what
/// the certificate on disk says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedEntry {
    /// The name it was issued under (a directory name under `certs/`).
    pub name: String,
    /// Server or client.
    pub kind: CertificateKind,
    /// The key type.
    pub key: KeyAlgorithm,
    /// The subject common name.
    pub common_name: String,
    /// Requested DNS names.
    pub dns_names: Vec<String>,
    /// Requested IP addresses.
    pub ip_addresses: Vec<IpAddr>,
    /// Requested URIs.
    pub uris: Vec<String>,
    /// The requested validity period, from `notBefore` (which is backdated
    /// by [`CLOCK_SKEW_ALLOWANCE`]) to `notAfter`. Renewals ask for the same.
    /// `lifetime.whole_days()` is the number of days asked for.
    pub lifetime: Duration,
    /// The certificate's files: `<root>/certs/<name>/` or the directory
    /// chosen at issue time.
    pub paths: CertificatePaths,
    /// Whether `paths.dir` was chosen by the caller rather than the default.
    pub custom_dir: bool,
    /// The current serial number (hex): the one in `cert.pem` when it can be
    /// read, otherwise the one recorded at issue time.
    pub serial_hex: String,
    /// Earlier serial numbers, oldest first.
    pub previous_serials: Vec<PreviousSerial>,
    /// When the current certificate was issued, if recorded.
    pub issued_at: Option<OffsetDateTime>,
    /// The certificate on disk, when it can be read.
    pub certificate: Option<CertificateSummary>,
    /// Why the certificate could not be read, when it could not.
    pub problem: Option<String>,
    /// The revocation of the current serial number, if any.
    pub revocation: Option<RevokedCertificate>,
    /// False for a certificate found in `certs/` but not in the inventory
    /// (a state directory from before the inventory existed).
    pub recorded: bool,
    /// For a certificate from an ACME CA, where it came from; renewing it
    /// goes back there rather than to the local CA.
    pub acme: Option<AcmeOrigin>,
}

impl IssuedEntry {
    /// The certificate's renewal plan, if its file could be read.
    pub fn renewal_plan(&self, policy: &RenewalPolicy) -> Option<RenewalPlan> {
        self.certificate
            .as_ref()
            .map(|cert| RenewalPlan::for_certificate(cert, policy))
    }

    /// The certificate's status at `now`. Revocation wins over everything,
    /// then an unreadable file, then expiry, then the renewal plan.
    pub fn status(&self, now: OffsetDateTime, policy: &RenewalPolicy) -> CertStatus {
        if self.revocation.is_some() {
            return CertStatus::Revoked;
        }
        match self.renewal_plan(policy) {
            None => CertStatus::Unreadable,
            Some(plan) if plan.is_expired(now) => CertStatus::Expired,
            Some(plan) if plan.is_due(now) => CertStatus::DueForRenewal,
            Some(_) => CertStatus::Valid,
        }
    }

    /// End of validity of the certificate on disk.
    pub fn not_after(&self) -> Option<OffsetDateTime> {
        self.certificate.as_ref().map(|cert| cert.not_after)
    }

    /// Whole days until the certificate on disk expires (negative once
    /// expired), see [`days_until`].
    pub fn days_left(&self, now: OffsetDateTime) -> Option<i64> {
        self.not_after().map(|at| days_until(at, now))
    }

    /// The serials this certificate had, once it is replaced at `now`:
    /// the earlier ones, then the current one.
    fn history_when_replaced(&self, now: OffsetDateTime) -> Vec<PreviousSerial> {
        let mut previous = self.previous_serials.clone();
        previous.push(PreviousSerial {
            serial_hex: self.serial_hex.clone(),
            replaced_at: now,
        });
        previous
    }

    /// Whether `serial` (hex, any case, colons allowed) is this
    /// certificate's current or an earlier serial number.
    fn has_serial(&self, serial: &str) -> bool {
        std::iter::once(&self.serial_hex)
            .chain(self.previous_serials.iter().map(|p| &p.serial_hex))
            .any(|s| normalize_serial(s).as_deref() == Some(serial))
    }
}

/// Everything the inventory knows, enriched from the files on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// The certificates, sorted by name.
    pub entries: Vec<IssuedEntry>,
    /// Every revocation recorded, in the order they were made.
    pub revoked: Vec<RevokedCertificate>,
    /// The number of the last CRL written; 0 if none was.
    pub crl_number: u64,
}

impl Inventory {
    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&IssuedEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Entries that need renewing at `now`: due, expired, or unreadable.
    /// Revoked certificates are not included: renewing them is a decision
    /// for a person, made by renewing one by name with `force`.
    pub fn due_for_renewal(
        &self,
        now: OffsetDateTime,
        policy: &RenewalPolicy,
    ) -> Vec<&IssuedEntry> {
        self.entries
            .iter()
            .filter(|e| {
                matches!(
                    e.status(now, policy),
                    CertStatus::DueForRenewal | CertStatus::Expired | CertStatus::Unreadable
                )
            })
            .collect()
    }
}

/// How [`StateDir::renew`] renews.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RenewOptions {
    /// Keep the existing private key instead of generating a new one. Refused
    /// for a certificate revoked for key compromise.
    pub reuse_key: bool,
    /// Renew even if the certificate is not due yet.
    pub force: bool,
    /// When certificates are due.
    pub policy: RenewalPolicy,
}

/// What [`StateDir::renew`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewOutcome {
    /// Nothing: the certificate is not due yet.
    NotDue {
        /// When it will be due.
        due_at: OffsetDateTime,
        /// When it expires.
        expires_at: OffsetDateTime,
    },
    /// The certificate was re-issued and its files replaced.
    Renewed {
        /// The serial number it had.
        old_serial: String,
        /// The serial number it has now.
        new_serial: String,
        /// The entry as it is now.
        entry: Box<IssuedEntry>,
    },
}

impl StateDir {
    /// `<root>/inventory.json`.
    pub fn inventory_path(&self) -> PathBuf {
        self.root().join(INVENTORY_FILE)
    }

    /// `<root>/ca/crl.pem`, where [`Self::write_crl`] writes by default.
    pub fn crl_path(&self) -> PathBuf {
        self.ca_dir().join(CRL_FILE)
    }

    /// Loads the CA in `<root>/ca`, see
    /// [`CertificateAuthority::load_with_passphrase`].
    pub fn load_ca(&self, passphrase: Option<&[u8]>) -> Result<CertificateAuthority, PkiError> {
        CertificateAuthority::load_with_passphrase(&self.ca_dir(), passphrase)
    }

    /// Creates a CA in `<root>/ca` with subject `O=intransit, CN=common_name`,
    /// saving its key encrypted when a passphrase is given. An existing CA
    /// (either of its files) is refused with [`PkiError::CaExists`] unless
    /// `force` is set.
    pub fn init_ca(
        &self,
        common_name: &str,
        key: KeyAlgorithm,
        validity: Validity,
        passphrase: Option<&[u8]>,
        force: bool,
    ) -> Result<CertificateAuthority, PkiError> {
        let _lock = self.lock()?;
        let dir = self.ca_dir();
        if !force && (path_exists(&dir.join(CA_CERT_FILE))? || path_exists(&dir.join(CA_KEY_FILE))?)
        {
            return Err(PkiError::CaExists { dir });
        }
        if passphrase.is_some_and(<[u8]>::is_empty) {
            return Err(PkiError::InvalidRequest(
                "the passphrase must not be empty".to_owned(),
            ));
        }
        let ca = CertificateAuthority::generate(common_name, key, validity)?;
        create_private_dir(self.root())?;
        match passphrase {
            Some(passphrase) => ca.save_encrypted(&dir, passphrase)?,
            None => ca.save(&dir)?,
        }
        Ok(ca)
    }

    /// Issues a certificate named `name` and records it in the inventory.
    ///
    /// The files (`key.pem`, `cert.pem`, `chain.pem`, `ca.pem`) go to
    /// `out_dir` if given (created with mode 0700 if missing; a relative
    /// path is made absolute), otherwise to the directory the name already
    /// has in the inventory, otherwise to `<root>/certs/<name>/`.
    ///
    /// Refused without `force`: a name that was already issued
    /// ([`PkiError::AlreadyIssued`]) and an output directory holding
    /// certificate files the inventory does not know
    /// ([`PkiError::OutputOccupied`]). Refused always: a directory that
    /// belongs to another name. With `force`, the old serial number is kept
    /// in the history (so it can still be revoked). On any error nothing is
    /// left behind and previous files are restored.
    pub fn issue(
        &self,
        ca: &CertificateAuthority,
        name: &str,
        req: &IssueRequest,
        out_dir: Option<&Path>,
        force: bool,
    ) -> Result<IssuedEntry, PkiError> {
        let _lock = self.lock()?;
        let default_dir = self.cert_dir(name)?;
        let mut file = self.load_inventory_file()?;
        let entries = self.entries(&file)?;
        let existing = entries.iter().find(|e| e.name == name);

        let dir = match (out_dir, existing) {
            (Some(dir), _) => std::path::absolute(dir)
                .map_err(|e| PkiError::io("resolving the output directory", dir, e))?,
            (None, Some(entry)) => entry.paths.dir.clone(),
            (None, None) => default_dir.clone(),
        };
        if dir.to_str().is_none() {
            return Err(PkiError::InvalidRequest(format!(
                "the output directory {} must be a UTF-8 path to be recorded in the inventory",
                dir.display()
            )));
        }
        if let Some(other) = entries
            .iter()
            .find(|e| e.name != name && same_dir(&e.paths.dir, &dir))
        {
            return Err(PkiError::InvalidRequest(format!(
                "{} holds the certificate {:?}; give each certificate its own directory",
                dir.display(),
                other.name
            )));
        }
        if !force {
            if let Some(entry) = existing {
                return Err(PkiError::AlreadyIssued {
                    name: name.to_owned(),
                    dir: entry.paths.dir.clone(),
                });
            }
            if let Some(file) = first_certificate_file(&dir)? {
                return Err(PkiError::OutputOccupied { dir, file });
            }
        }

        let issued = ca.issue(req)?;
        let now = OffsetDateTime::now_utc();
        let previous = existing
            .map(|e| e.history_when_replaced(now))
            .unwrap_or_default();
        let record = Record {
            name: name.to_owned(),
            kind: req.kind,
            key: req.key,
            common_name: req.common_name.clone(),
            dns_names: req.dns_names.clone(),
            ip_addresses: req.ip_addresses.clone(),
            uris: req.uris.clone(),
            lifetime_seconds: req.validity.lifetime().whole_seconds(),
            dir: (!same_dir(&dir, &default_dir)).then(|| dir.clone()),
            serial: issued.serial_hex.clone(),
            issued_at: now,
            previous_serials: previous.into_iter().map(PreviousRecord::from).collect(),
            acme: None,
        };
        self.install(&mut file, record, &issued)
    }

    /// The inventory, each entry enriched from its certificate file.
    /// Without an `inventory.json`, the directories below `certs/` that
    /// hold a readable `cert.pem` are listed (as not `recorded`).
    pub fn inventory(&self) -> Result<Inventory, PkiError> {
        let file = self.load_inventory_file()?;
        Ok(Inventory {
            entries: self.entries(&file)?,
            revoked: file.revoked.iter().map(RevokedRecord::to_public).collect(),
            crl_number: file.crl_number,
        })
    }

    /// Names of the certificates that need renewing at `now`, see
    /// [`Inventory::due_for_renewal`].
    pub fn due_for_renewal(
        &self,
        now: OffsetDateTime,
        policy: &RenewalPolicy,
    ) -> Result<Vec<String>, PkiError> {
        Ok(self
            .inventory()?
            .due_for_renewal(now, policy)
            .into_iter()
            .map(|e| e.name.clone())
            .collect())
    }

    /// Renews the certificate `name` if it is due at `now` (or always, with
    /// `options.force`): re-issues it with the same kind, names, key type
    /// and lifetime, starting at `now`, and replaces its files together. A
    /// new key is generated unless `options.reuse_key`, in which case
    /// `key.pem` must still match `cert.pem`
    /// ([`PkiError::CertificateKeyMismatch`]). The old serial number goes to
    /// the history. An unreadable certificate counts as due.
    pub fn renew(
        &self,
        ca: &CertificateAuthority,
        name: &str,
        options: &RenewOptions,
        now: OffsetDateTime,
    ) -> Result<RenewOutcome, PkiError> {
        let _lock = self.lock()?;
        let mut file = self.load_inventory_file()?;
        let entry = self
            .entries(&file)?
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| PkiError::UnknownCertificate(name.to_owned()))?;
        if let Some(origin) = &entry.acme {
            return Err(PkiError::InvalidRequest(format!(
                "the certificate {name:?} comes from the ACME server {}; it is renewed \
                 there (`intransit cert renew {name}` does that), not by the local CA",
                origin.directory
            )));
        }
        if !options.force {
            if let Some(plan) = entry.renewal_plan(&options.policy) {
                if !plan.is_due(now) {
                    return Ok(RenewOutcome::NotDue {
                        due_at: plan.due_at,
                        expires_at: plan.expires_at,
                    });
                }
            }
        }

        let mut key = entry.key;
        let existing_key = if options.reuse_key {
            if entry
                .revocation
                .as_ref()
                .is_some_and(|r| r.reason == RevocationReason::KeyCompromise)
            {
                return Err(PkiError::InvalidRequest(format!(
                    "the certificate {name:?} was revoked because its key was compromised; \
                     renew it with a new key"
                )));
            }
            let paths = &entry.paths;
            let (key_pair, key_pem) = parse_private_key(
                &read_text(&paths.key, "reading private key")?,
                "certificate private key",
            )?;
            if let Some(cert) = &entry.certificate {
                let der = pem_to_der_certs(&read_text(&paths.cert, "reading certificate")?)?;
                let matches = der.first().is_some_and(|der| {
                    crate::inspect::parse_certificate(der, "certificate").is_ok_and(|c| {
                        c.public_key().subject_public_key.data.as_ref() == key_pair.public_key_raw()
                    })
                });
                if !matches {
                    return Err(PkiError::CertificateKeyMismatch {
                        key: paths.key.clone(),
                        cert: paths.cert.clone(),
                    });
                }
                key = KeyAlgorithm::from_description(&cert.key_description).unwrap_or(key);
            }
            Some((key_pair, key_pem))
        } else {
            None
        };

        // The same backdating rule as `Validity::lifetime_from_now`: the
        // clock-skew allowance, or a tenth of the lifetime when that is
        // shorter, so a short-lived certificate is not born expired.
        let not_before = now - CLOCK_SKEW_ALLOWANCE.min(entry.lifetime / 10);
        let not_after = not_before.checked_add(entry.lifetime).ok_or_else(|| {
            PkiError::InvalidRequest("the recorded lifetime is too long".to_owned())
        })?;
        let req = IssueRequest {
            kind: entry.kind,
            common_name: entry.common_name.clone(),
            dns_names: entry.dns_names.clone(),
            ip_addresses: entry.ip_addresses.clone(),
            uris: entry.uris.clone(),
            key,
            validity: Validity {
                not_before,
                not_after,
            },
        };
        let issued = ca.issue_with_key(&req, existing_key)?;

        let previous = entry.history_when_replaced(now);
        let record = Record {
            name: entry.name.clone(),
            kind: req.kind,
            key: req.key,
            common_name: req.common_name.clone(),
            dns_names: req.dns_names.clone(),
            ip_addresses: req.ip_addresses.clone(),
            uris: req.uris.clone(),
            lifetime_seconds: entry.lifetime.whole_seconds(),
            dir: entry.custom_dir.then(|| entry.paths.dir.clone()),
            serial: issued.serial_hex.clone(),
            issued_at: now,
            previous_serials: previous.into_iter().map(PreviousRecord::from).collect(),
            acme: None,
        };
        let renewed = self.install(&mut file, record, &issued)?;
        Ok(RenewOutcome::Renewed {
            old_serial: entry.serial_hex,
            new_serial: issued.serial_hex,
            entry: Box::new(renewed),
        })
    }

    /// Installs a certificate from an ACME CA under `name`: its files go
    /// where the local CA's certificate of that name goes (the directory the
    /// name already has, else `<root>/certs/<name>/`), `chain.pem` being the
    /// leaf and the issuers the ACME server sent and `ca.pem` those issuers;
    /// the inventory records the [`AcmeOrigin`], so renewing it goes back to
    /// the same server, and keeps the serial it replaces in the history. On
    /// any error the previous files are restored.
    pub fn install_acme(
        &self,
        name: &str,
        certificate: &AcmeCertificate,
    ) -> Result<IssuedEntry, PkiError> {
        let _lock = self.lock()?;
        let default_dir = self.cert_dir(name)?;
        let mut file = self.load_inventory_file()?;
        let entries = self.entries(&file)?;
        let existing = entries.iter().find(|e| e.name == name);
        let now = OffsetDateTime::now_utc();
        let previous = existing
            .map(|e| e.history_when_replaced(now))
            .unwrap_or_default();
        let summary = &certificate.summary;
        let request = &certificate.request;
        let record = Record {
            name: name.to_owned(),
            kind: CertificateKind::Server,
            key: request.key,
            common_name: request.common_name.clone(),
            dns_names: request.dns_names.clone(),
            ip_addresses: request.ip_addresses.clone(),
            uris: Vec::new(),
            lifetime_seconds: (summary.not_after - summary.not_before).whole_seconds(),
            dir: existing
                .filter(|e| e.custom_dir)
                .map(|e| e.paths.dir.clone())
                .filter(|dir| !same_dir(dir, &default_dir)),
            serial: summary.serial_hex.clone(),
            issued_at: now,
            previous_serials: previous.into_iter().map(PreviousRecord::from).collect(),
            acme: Some(certificate.origin.clone()),
        };
        let issued = IssuedCertificate {
            cert_pem: certificate.cert_pem.clone(),
            key_pem: request.key_pem().to_owned(),
            ca_pem: certificate.issuers_pem.clone(),
            serial_hex: summary.serial_hex.clone(),
            not_after: summary.not_after,
        };
        self.install(&mut file, record, &issued)
    }

    /// Records the revocation of a certificate, given by inventory name (its
    /// current serial is revoked) or by serial number (hex, colons allowed;
    /// current or earlier serials of any entry). Unknown names and serials
    /// ([`PkiError::UnknownCertificate`]) and serials revoked before
    /// ([`PkiError::AlreadyRevoked`]) are refused.
    ///
    /// This only records the revocation: publish it with
    /// [`Self::write_crl`], which needs the CA.
    pub fn revoke(
        &self,
        serial_or_name: &str,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<RevokedCertificate, PkiError> {
        let _lock = self.lock()?;
        let mut file = self.load_inventory_file()?;
        let entries = self.entries(&file)?;
        let unknown = || PkiError::UnknownCertificate(serial_or_name.to_owned());
        let (serial, name) = match entries.iter().find(|e| e.name == serial_or_name) {
            Some(entry) => (
                normalize_serial(&entry.serial_hex).ok_or_else(unknown)?,
                entry.name.clone(),
            ),
            None => {
                let serial = normalize_serial(serial_or_name).ok_or_else(unknown)?;
                let entry = entries
                    .iter()
                    .find(|e| e.has_serial(&serial))
                    .ok_or_else(unknown)?;
                (serial, entry.name.clone())
            }
        };
        if let Some(earlier) = file
            .revoked
            .iter()
            .find(|r| normalize_serial(&r.serial).as_deref() == Some(serial.as_str()))
        {
            return Err(PkiError::AlreadyRevoked {
                serial,
                revoked_at: earlier.revoked_at,
            });
        }
        let record = RevokedRecord {
            serial,
            name: Some(name),
            reason,
            revoked_at: now,
        };
        let revoked = record.to_public();
        file.revoked.push(record);
        self.save_inventory_file(&file)?;
        Ok(revoked)
    }

    /// Signs and writes a CRL listing every revocation in the inventory,
    /// valid until `next_update` from now, with the next CRL number (kept in
    /// the inventory, so each CRL's number is larger than the last). Writes
    /// to `out` or [`Self::crl_path`], atomically, mode 0644, and returns
    /// the path written.
    pub fn write_crl(
        &self,
        ca: &CertificateAuthority,
        next_update: Duration,
        out: Option<&Path>,
    ) -> Result<PathBuf, PkiError> {
        let _lock = self.lock()?;
        let mut file = self.load_inventory_file()?;
        let revoked: Vec<RevokedCertificate> =
            file.revoked.iter().map(RevokedRecord::to_public).collect();
        let number = file.crl_number.checked_add(1).ok_or_else(|| {
            PkiError::InvalidRequest("the CRL number cannot grow any further".to_owned())
        })?;
        let crl = ca.sign_crl(&revoked, OffsetDateTime::now_utc(), next_update, number)?;
        let path = match out {
            Some(path) => std::path::absolute(path)
                .map_err(|e| PkiError::io("resolving the CRL path", path, e))?,
            None => self.crl_path(),
        };
        // The number is recorded before the CRL is published, so that a
        // failure in between can only skip a number, never reuse one.
        file.crl_number = number;
        self.save_inventory_file(&file)?;
        replace_file_atomic(&path, crl.as_bytes(), PUBLIC_FILE_MODE)?;
        Ok(path)
    }

    /// Certificates that have expired at `now` or expire within
    /// `warn_within`: the CA (named `CA`) and every inventory entry whose
    /// certificate can be read and is not revoked (named by its inventory
    /// name). Unreadable entries are not findings here; their
    /// [`CertStatus::Unreadable`] shows in [`Self::inventory`].
    pub fn check_expiry(
        &self,
        now: OffsetDateTime,
        warn_within: Duration,
    ) -> Result<Vec<ExpiryFinding>, PkiError> {
        let mut certs: Vec<(String, CertificateSummary)> = Vec::new();
        let ca_cert = self.ca_dir().join(CA_CERT_FILE);
        if path_exists(&ca_cert)? {
            certs.push(("CA".to_owned(), read_summary(&ca_cert)?));
        }
        for entry in self.inventory()?.entries {
            if entry.revocation.is_none() {
                if let Some(cert) = entry.certificate {
                    certs.push((entry.name, cert));
                }
            }
        }
        Ok(check_expiry(
            certs.iter().map(|(what, cert)| (what.as_str(), cert)),
            now,
            warn_within,
        ))
    }

    /// The CA's CRL at [`Self::crl_path`], if it needs attention at `now`
    /// by `warn` (see [`crate::check_crl_freshness`]). No CRL file (nothing
    /// revoked yet) is no finding.
    pub fn check_crl(
        &self,
        now: OffsetDateTime,
        warn: crate::CrlWarning,
    ) -> Result<Vec<crate::CrlFinding>, PkiError> {
        let path = self.crl_path();
        if !path_exists(&path)? {
            return Ok(Vec::new());
        }
        let pem = std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
            action: "reading the CRL",
            path: path.clone(),
            source,
        })?;
        let mut crls = Vec::new();
        for der in crate::pem_to_der_crls(&pem)? {
            crls.push(crate::summarize_crl(&der)?);
        }
        let what = path.display().to_string();
        Ok(crate::check_crl_freshness(
            crls.iter().map(|c| (what.as_str(), c)),
            now,
            warn,
        ))
    }

    /// Records certificates that [`StateDir::ensure_quickstart`] found or
    /// issued, writing the inventory only if something changed, so that a
    /// run that reuses everything leaves the state directory untouched.
    pub(crate) fn record_quickstart(
        &self,
        file: &mut InventoryFile,
        leaves: &[(&str, &IssueRequest)],
    ) -> Result<(), PkiError> {
        let now = OffsetDateTime::now_utc();
        let mut changed = false;
        for (name, req) in leaves {
            let paths = CertificatePaths::in_dir(&self.cert_dir(name)?);
            let serial = read_summary(&paths.cert)?.serial_hex;
            let existing = file.certificates.iter().position(|r| r.name == *name);
            let mut previous = Vec::new();
            if let Some(index) = existing {
                let record = &file.certificates[index];
                if record.serial == serial && record.dir.is_none() {
                    continue;
                }
                previous = record.previous_serials.clone();
                previous.push(PreviousRecord {
                    serial: record.serial.clone(),
                    replaced_at: now,
                });
            }
            let record = Record {
                name: (*name).to_owned(),
                kind: req.kind,
                key: req.key,
                common_name: req.common_name.clone(),
                dns_names: req.dns_names.clone(),
                ip_addresses: req.ip_addresses.clone(),
                uris: req.uris.clone(),
                lifetime_seconds: req.validity.lifetime().whole_seconds(),
                dir: None,
                serial,
                issued_at: now,
                previous_serials: previous,
                acme: None,
            };
            upsert(file, record);
            changed = true;
        }
        if changed {
            self.save_inventory_file(file)?;
        }
        Ok(())
    }

    /// Replaces the files of `record` with `issued` and records it; undoes
    /// the file change if the inventory cannot be written.
    fn install(
        &self,
        file: &mut InventoryFile,
        record: Record,
        issued: &IssuedCertificate,
    ) -> Result<IssuedEntry, PkiError> {
        let dir = record.dir.clone().unwrap_or(self.cert_dir(&record.name)?);
        let swapped = issued.swap_into(&dir)?;
        let name = record.name.clone();
        upsert(file, record);
        self.save_inventory_file(file)?;
        swapped.commit();
        self.entries(file)?
            .into_iter()
            .find(|e| e.name == name)
            .ok_or(PkiError::UnknownCertificate(name))
    }

    /// Reads `inventory.json`; a missing file is an empty inventory.
    pub(crate) fn load_inventory_file(&self) -> Result<InventoryFile, PkiError> {
        let path = self.inventory_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(InventoryFile::default()),
            Err(e) => return Err(PkiError::io("reading the certificate inventory", path, e)),
        };
        let damaged = |detail: String| PkiError::Inventory {
            path: path.clone(),
            detail,
        };
        let file: InventoryFile =
            serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        if file.version != INVENTORY_VERSION {
            return Err(damaged(format!(
                "format version {} is not the supported version {INVENTORY_VERSION}",
                file.version
            )));
        }
        let mut names = HashSet::new();
        for record in &file.certificates {
            self.cert_dir(&record.name)
                .map_err(|e| damaged(e.to_string()))?;
            if !names.insert(record.name.as_str()) {
                return Err(damaged(format!("{:?} is listed twice", record.name)));
            }
        }
        Ok(file)
    }

    fn save_inventory_file(&self, file: &InventoryFile) -> Result<(), PkiError> {
        let path = self.inventory_path();
        let mut json = serde_json::to_string_pretty(file).map_err(|e| PkiError::Inventory {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        json.push('\n');
        create_private_dir(self.root())?;
        write_file_atomic(&path, json.as_bytes(), PUBLIC_FILE_MODE)
    }

    /// Recorded entries plus unrecorded `certs/*/` directories, by name.
    fn entries(&self, file: &InventoryFile) -> Result<Vec<IssuedEntry>, PkiError> {
        let mut entries: Vec<IssuedEntry> = file
            .certificates
            .iter()
            .map(|record| self.entry_from_record(record, file))
            .collect::<Result<_, _>>()?;
        let recorded: HashSet<String> = entries.iter().map(|e| e.name.clone()).collect();
        let certs_dir = self.certs_dir();
        let listing = match fs::read_dir(&certs_dir) {
            Ok(listing) => Some(listing),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(PkiError::io("listing", certs_dir, e)),
        };
        for dir_entry in listing.into_iter().flatten() {
            let dir_entry = dir_entry.map_err(|e| PkiError::io("listing", &certs_dir, e))?;
            let Some(name) = dir_entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if recorded.contains(&name) || self.cert_dir(&name).is_err() {
                continue;
            }
            if let Some(entry) = self.unrecorded_entry(&name, file) {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn entry_from_record(
        &self,
        record: &Record,
        file: &InventoryFile,
    ) -> Result<IssuedEntry, PkiError> {
        let default_dir = self.cert_dir(&record.name)?;
        let dir = record.dir.clone().unwrap_or(default_dir);
        let paths = CertificatePaths::in_dir(&dir);
        let (certificate, problem) = match read_summary(&paths.cert) {
            Ok(summary) => (Some(summary), None),
            Err(e) => (None, Some(describe(&e))),
        };
        let serial_hex = certificate
            .as_ref()
            .map_or_else(|| record.serial.clone(), |c| c.serial_hex.clone());
        Ok(IssuedEntry {
            name: record.name.clone(),
            kind: record.kind,
            key: record.key,
            common_name: record.common_name.clone(),
            dns_names: record.dns_names.clone(),
            ip_addresses: record.ip_addresses.clone(),
            uris: record.uris.clone(),
            lifetime: Duration::seconds(record.lifetime_seconds),
            custom_dir: record.dir.is_some(),
            paths,
            revocation: revocation_of(file, &serial_hex),
            serial_hex,
            previous_serials: record
                .previous_serials
                .iter()
                .map(|p| PreviousSerial {
                    serial_hex: p.serial.clone(),
                    replaced_at: p.replaced_at,
                })
                .collect(),
            issued_at: Some(record.issued_at),
            certificate,
            problem,
            recorded: true,
            acme: record.acme.clone(),
        })
    }

    /// An entry for `certs/<name>/` built from its certificate alone, if it
    /// holds a readable certificate of a kind and key type this CA issues.
    fn unrecorded_entry(&self, name: &str, file: &InventoryFile) -> Option<IssuedEntry> {
        let paths = CertificatePaths::in_dir(&self.cert_dir(name).ok()?);
        let cert = read_summary(&paths.cert).ok()?;
        let key = KeyAlgorithm::from_description(&cert.key_description)?;
        let eku = |usage: &str| cert.extended_key_usages.iter().any(|u| u == usage);
        let kind = if eku("serverAuth") {
            CertificateKind::Server
        } else if eku("clientAuth") {
            CertificateKind::Client
        } else {
            return None;
        };
        Some(IssuedEntry {
            name: name.to_owned(),
            kind,
            key,
            common_name: cert.common_name.clone().unwrap_or_default(),
            dns_names: cert.dns_names.clone(),
            ip_addresses: cert.ip_addresses.clone(),
            uris: cert.uris.clone(),
            lifetime: cert.not_after - cert.not_before,
            paths,
            custom_dir: false,
            serial_hex: cert.serial_hex.clone(),
            previous_serials: Vec::new(),
            issued_at: None,
            revocation: revocation_of(file, &cert.serial_hex),
            certificate: Some(cert),
            problem: None,
            recorded: false,
            acme: None,
        })
    }
}

/// The first certificate file present in `dir`, if any.
fn first_certificate_file(dir: &Path) -> Result<Option<String>, PkiError> {
    for name in [CERT_FILE, KEY_FILE, CHAIN_FILE, CA_FILE] {
        if path_exists(&dir.join(name))? {
            return Ok(Some(name.to_owned()));
        }
    }
    Ok(None)
}

/// Whether two directories are the same, comparing canonical paths when
/// both exist.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Reads and summarises the first certificate of a PEM file.
fn read_summary(path: &Path) -> Result<CertificateSummary, PkiError> {
    let ders = pem_to_der_certs(&read_text(path, "reading certificate")?)?;
    let der = ders.first().ok_or(PkiError::MissingPem {
        what: "certificate PEM",
        label: "CERTIFICATE",
    })?;
    summarize(der)
}

/// An error and its causes on one line, for [`IssuedEntry::problem`].
fn describe(error: &PkiError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn revocation_of(file: &InventoryFile, serial_hex: &str) -> Option<RevokedCertificate> {
    let serial = normalize_serial(serial_hex)?;
    file.revoked
        .iter()
        .find(|r| normalize_serial(&r.serial).as_deref() == Some(serial.as_str()))
        .map(RevokedRecord::to_public)
}

fn upsert(file: &mut InventoryFile, record: Record) {
    match file.certificates.iter_mut().find(|r| r.name == record.name) {
        Some(existing) => *existing = record,
        None => file.certificates.push(record),
    }
    file.certificates.sort_by(|a, b| a.name.cmp(&b.name));
}

/// `inventory.json`, version 1. Field names are the file format: change
/// them only with a new version.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InventoryFile {
    version: u32,
    #[serde(default)]
    crl_number: u64,
    #[serde(default)]
    certificates: Vec<Record>,
    #[serde(default)]
    revoked: Vec<RevokedRecord>,
}

impl Default for InventoryFile {
    fn default() -> Self {
        Self {
            version: INVENTORY_VERSION,
            crl_number: 0,
            certificates: Vec::new(),
            revoked: Vec::new(),
        }
    }
}

impl InventoryFile {
    /// Normalised serial numbers of every recorded revocation.
    pub(crate) fn revoked_serials(&self) -> HashSet<String> {
        self.revoked
            .iter()
            .filter_map(|r| normalize_serial(&r.serial))
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    #[serde(with = "as_text")]
    kind: CertificateKind,
    #[serde(with = "as_text")]
    key: KeyAlgorithm,
    common_name: String,
    #[serde(default)]
    dns_names: Vec<String>,
    #[serde(default)]
    ip_addresses: Vec<IpAddr>,
    #[serde(default)]
    uris: Vec<String>,
    lifetime_seconds: i64,
    /// `None` for the default `<root>/certs/<name>`, which keeps the state
    /// directory relocatable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dir: Option<PathBuf>,
    serial: String,
    #[serde(with = "time::serde::rfc3339")]
    issued_at: OffsetDateTime,
    #[serde(default)]
    previous_serials: Vec<PreviousRecord>,
    /// Set for a certificate from an ACME CA: renewal goes back there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acme: Option<AcmeOrigin>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PreviousRecord {
    serial: String,
    #[serde(with = "time::serde::rfc3339")]
    replaced_at: OffsetDateTime,
}

impl From<PreviousSerial> for PreviousRecord {
    fn from(p: PreviousSerial) -> Self {
        Self {
            serial: p.serial_hex,
            replaced_at: p.replaced_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RevokedRecord {
    serial: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(with = "as_text")]
    reason: RevocationReason,
    #[serde(with = "time::serde::rfc3339")]
    revoked_at: OffsetDateTime,
}

impl RevokedRecord {
    fn to_public(&self) -> RevokedCertificate {
        RevokedCertificate {
            serial_hex: self.serial.clone(),
            revoked_at: self.revoked_at,
            reason: self.reason,
            name: self.name.clone(),
        }
    }
}

/// Serde through `Display` and `FromStr`, for the crate's enums whose
/// names are already part of the command line.
mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}
