//! The intransit state directory and the quickstart certificates.
//!
//! This module owns the layout below the state root:
//!
//! ```text
//! <root>/ca/ca.pem, <root>/ca/key.pem, <root>/ca/crl.pem
//! <root>/certs/<name>/{cert.pem,key.pem,chain.pem,ca.pem}
//! <root>/inventory.json
//! <root>/.lock          (held while the inventory and files change)
//! ```
//!
//! (the inventory and the operations on it live in [`crate::inventory`])
//!
//! and the rule that an existing CA is never replaced behind the user's back:
//! if its files are damaged, incomplete or expired, [`StateDir::ensure_quickstart`]
//! fails and leaves them alone, because replacing the CA would silently break
//! every client that trusts it.

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};

use crate::authority::{is_signed_by, CA_CERT_FILE, CA_KEY_FILE};
use crate::inspect::{parse_certificate, pem_to_der_certs, summarize};
use crate::key::parse_private_key;
use crate::request::validate_common_name;
use crate::revocation::normalize_serial;
use crate::storage::{
    create_private_dir, lock_state_dir, path_exists, CertificatePaths, StateLock,
};
use crate::{
    CertificateAuthority, CertificateKind, IssueRequest, KeyAlgorithm, PkiError, Validity,
    CA_VALIDITY_DAYS,
};
use crate::{RenewalPlan, RenewalPolicy};

/// Common name of the CA created by [`StateDir::ensure_quickstart`].
pub const QUICKSTART_CA_NAME: &str = "intransit local CA";

/// Name (directory under `certs/`) of the quickstart server certificate.
const SERVER_CERT_NAME: &str = "server";
/// Name (directory under `certs/`) of the quickstart client certificate.
const CLIENT_CERT_NAME: &str = "client";
/// Common name of the quickstart server certificate.
const SERVER_COMMON_NAME: &str = "localhost";

/// The root of intransit's on-disk state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

/// What [`StateDir::ensure_quickstart`] made or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quickstart {
    /// True when anything (the CA or a leaf certificate) was newly written.
    pub created: bool,
    /// The CA certificate, for clients to trust.
    pub ca_cert: PathBuf,
    /// The server certificate files.
    pub server: CertificatePaths,
    /// The client certificate files.
    pub client: CertificatePaths,
}

/// Lifetimes of the certificates [`StateDir::ensure_quickstart_with`] issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuickstartLifetimes {
    /// The server certificate's lifetime (default 90 days).
    pub server: time::Duration,
    /// The client certificate's lifetime (default 30 days).
    pub client: time::Duration,
}

impl Default for QuickstartLifetimes {
    fn default() -> Self {
        QuickstartLifetimes {
            server: time::Duration::days(i64::from(crate::SERVER_VALIDITY_DAYS)),
            client: time::Duration::days(i64::from(crate::CLIENT_VALIDITY_DAYS)),
        }
    }
}

impl StateDir {
    /// A state directory rooted at `root`. Nothing is touched on disk.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Waits for the exclusive lock that orders changes to this state
    /// directory between processes.
    pub(crate) fn lock(&self) -> Result<StateLock, PkiError> {
        lock_state_dir(&self.root)
    }

    /// `<root>/ca`, holding `ca.pem` and `key.pem`.
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    /// `<root>/certs`, holding one directory per named certificate.
    pub fn certs_dir(&self) -> PathBuf {
        self.root.join("certs")
    }

    /// `<root>/certs/<name>`.
    ///
    /// `name` must be 1 to 255 characters from `[A-Za-z0-9._-]`, must not
    /// start with `.` and must not contain `..`, so it always names a
    /// directory directly below `certs/`.
    pub fn cert_dir(&self, name: &str) -> Result<PathBuf, PkiError> {
        let valid = !name.is_empty()
            && name.len() <= 255
            && !name.starts_with('.')
            && !name.contains("..")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(PkiError::InvalidCertificateName(name.to_owned()));
        }
        Ok(self.certs_dir().join(name))
    }

    /// Creates (first run) or reuses (later runs) everything `intransit up`
    /// needs for mutual TLS on one machine:
    ///
    /// - a CA `intransit local CA` in `ca/` (ECDSA P-256, ten years);
    /// - a server certificate `certs/server` with CN `localhost` and the
    ///   given DNS names and IP addresses as SANs (`localhost` if both lists
    ///   are empty), valid 90 days;
    /// - a client certificate `certs/client` with CN `client_name` and the
    ///   clientAuth EKU, valid 30 days.
    ///
    /// Keys are ECDSA P-256 with mode 0600. A leaf is reused only if all its
    /// files exist and parse, its key matches, it chains to the CA, it has the
    /// expected usage and (at least) the requested names, it is not revoked
    /// in the inventory, and it is not yet due under the default
    /// [`RenewalPolicy`]; otherwise it is re-issued. A leaf is never valid
    /// past the CA's own expiry. Both leaves are recorded in the inventory
    /// under the names `server` and `client`; a run that reuses everything
    /// writes nothing.
    ///
    /// The CA is created only if neither of its files exists. If one is
    /// missing, or they do not load, or the CA has expired, this returns an
    /// error and changes nothing on disk; so does a damaged inventory.
    pub fn ensure_quickstart(
        &self,
        server_dns: &[String],
        server_ips: &[IpAddr],
        client_name: &str,
    ) -> Result<Quickstart, PkiError> {
        self.ensure_quickstart_with(
            server_dns,
            server_ips,
            client_name,
            &QuickstartLifetimes::default(),
        )
    }

    /// [`Self::ensure_quickstart`] with chosen lifetimes for certificates it
    /// issues now (certificates it reuses keep theirs).
    pub fn ensure_quickstart_with(
        &self,
        server_dns: &[String],
        server_ips: &[IpAddr],
        client_name: &str,
        lifetimes: &QuickstartLifetimes,
    ) -> Result<Quickstart, PkiError> {
        self.ensure_quickstart_inner(Some((server_dns, server_ips)), client_name, lifetimes)
    }

    /// [`Self::ensure_quickstart_with`] for a server certificate that comes
    /// from an ACME CA: the CA and the client certificate are made or
    /// reused as usual, and the server certificate's files and inventory
    /// record are left alone (the returned `server` paths are where it
    /// goes, whether or not it exists yet).
    pub fn ensure_quickstart_without_server(
        &self,
        client_name: &str,
        lifetimes: &QuickstartLifetimes,
    ) -> Result<Quickstart, PkiError> {
        self.ensure_quickstart_inner(None, client_name, lifetimes)
    }

    fn ensure_quickstart_inner(
        &self,
        server_names: Option<(&[String], &[IpAddr])>,
        client_name: &str,
        lifetimes: &QuickstartLifetimes,
    ) -> Result<Quickstart, PkiError> {
        let (server_dns, server_ips) = server_names.unwrap_or((&[], &[]));
        // Validate what we were asked for before creating anything.
        let mut server = IssueRequest::new(CertificateKind::Server, SERVER_COMMON_NAME);
        server.dns_names = if server_dns.is_empty() && server_ips.is_empty() {
            vec![SERVER_COMMON_NAME.to_owned()]
        } else {
            server_dns.to_vec()
        };
        server.ip_addresses = server_ips.to_vec();
        server.key = KeyAlgorithm::EcdsaP256;
        server.validity = Validity::lifetime_from_now(lifetimes.server);
        server.validate()?;
        validate_common_name(client_name)?;
        let mut client = IssueRequest::new(CertificateKind::Client, client_name);
        client.key = KeyAlgorithm::EcdsaP256;
        client.validity = Validity::lifetime_from_now(lifetimes.client);
        client.validate()?;

        let _lock = self.lock()?;
        // A damaged inventory stops us before anything is written.
        let mut inventory = self.load_inventory_file()?;
        let revoked = inventory.revoked_serials();
        create_private_dir(&self.root)?;
        let (ca, mut created) = self.load_or_create_ca()?;
        let now = OffsetDateTime::now_utc();
        if ca.not_after() <= now {
            return Err(PkiError::CaExpired {
                not_after: ca.not_after(),
            });
        }

        let (server_paths, server_created) = if server_names.is_some() {
            self.ensure_leaf(&ca, SERVER_CERT_NAME, &server, &revoked, now)?
        } else {
            let dir = self.cert_dir(SERVER_CERT_NAME)?;
            (CertificatePaths::in_dir(&dir), false)
        };
        let (client_paths, client_created) =
            self.ensure_leaf(&ca, CLIENT_CERT_NAME, &client, &revoked, now)?;
        created |= server_created | client_created;
        let mut leaves = vec![(CLIENT_CERT_NAME, &client)];
        if server_names.is_some() {
            leaves.insert(0, (SERVER_CERT_NAME, &server));
        }
        self.record_quickstart(&mut inventory, &leaves)?;

        Ok(Quickstart {
            created,
            ca_cert: self.ca_dir().join(CA_CERT_FILE),
            server: server_paths,
            client: client_paths,
        })
    }

    /// Loads the CA, or creates it when neither of its files exists.
    /// Returns the CA and whether it was created.
    fn load_or_create_ca(&self) -> Result<(CertificateAuthority, bool), PkiError> {
        let dir = self.ca_dir();
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        match (path_exists(&cert)?, path_exists(&key)?) {
            (true, true) => Ok((CertificateAuthority::load(&dir)?, false)),
            (false, false) => {
                let ca = CertificateAuthority::generate(
                    QUICKSTART_CA_NAME,
                    KeyAlgorithm::EcdsaP256,
                    Validity::days_from_now(CA_VALIDITY_DAYS),
                )?;
                ca.save(&dir)?;
                Ok((ca, true))
            }
            (true, false) => Err(PkiError::IncompleteCa { dir, missing: key }),
            (false, true) => Err(PkiError::IncompleteCa { dir, missing: cert }),
        }
    }

    /// Reuses or (re-)issues the leaf `name`. Returns its paths and whether it
    /// was issued.
    fn ensure_leaf(
        &self,
        ca: &CertificateAuthority,
        name: &str,
        req: &IssueRequest,
        revoked: &HashSet<String>,
        now: OffsetDateTime,
    ) -> Result<(CertificatePaths, bool), PkiError> {
        let dir = self.cert_dir(name)?;
        let paths = CertificatePaths::in_dir(&dir);
        if leaf_is_current(ca, &paths, req, revoked, now).is_some() {
            return Ok((paths, false));
        }
        let paths = ca.issue(req)?.write_to(&dir)?;
        Ok((paths, true))
    }
}

/// `Some(())` if the stored leaf can be used as it is. Any problem, including
/// an unreadable file, means "issue a new one", so this returns an `Option`.
fn leaf_is_current(
    ca: &CertificateAuthority,
    paths: &CertificatePaths,
    req: &IssueRequest,
    revoked: &HashSet<String>,
    now: OffsetDateTime,
) -> Option<()> {
    let read = |path: &Path| fs::read_to_string(path).ok();
    let leaf_certs = pem_to_der_certs(&read(&paths.cert)?).ok()?;
    let [leaf_der] = leaf_certs.as_slice() else {
        return None;
    };
    // The trust anchor and chain files must match the current CA, since
    // servers and clients read them directly.
    let ca_der = ca.cert_der().to_vec();
    if pem_to_der_certs(&read(&paths.ca)?).ok()? != [ca_der.clone()] {
        return None;
    }
    if pem_to_der_certs(&read(&paths.chain)?).ok()? != [leaf_der.clone(), ca_der] {
        return None;
    }

    let leaf = parse_certificate(leaf_der, "certificate").ok()?;
    let ca_cert = parse_certificate(ca.cert_der(), "CA certificate").ok()?;
    if !is_signed_by(&leaf, &ca_cert) {
        return None;
    }
    let (key_pair, _) = parse_private_key(&read(&paths.key)?, "private key").ok()?;
    if key_pair.public_key_raw() != leaf.public_key().subject_public_key.data.as_ref() {
        return None;
    }

    let summary = summarize(leaf_der).ok()?;
    if normalize_serial(&summary.serial_hex).is_some_and(|s| revoked.contains(&s)) {
        return None;
    }
    let lifetime = summary.not_after - summary.not_before;
    // Renew on the default renewal plan (two thirds of the lifetime, less
    // jitter), the same rule `cert renew` applies, so `intransit up` never
    // starts with a certificate that is about to expire or that `cert list`
    // shows as due.
    let plan = RenewalPlan::for_certificate(&summary, &RenewalPolicy::default());
    let fresh = summary.not_before <= now && !plan.is_due(now);
    let usage = match req.kind {
        CertificateKind::Server => "serverAuth",
        CertificateKind::Client => "clientAuth",
    };
    let names_cover = req.dns_names.iter().all(|n| summary.dns_names.contains(n))
        && req
            .ip_addresses
            .iter()
            .all(|ip| summary.ip_addresses.contains(ip))
        && req.uris.iter().all(|u| summary.uris.contains(u));
    let acceptable = fresh
        && !summary.is_ca
        && summary.extended_key_usages.iter().any(|u| u == usage)
        && summary.common_name.as_deref() == Some(req.common_name.as_str())
        && names_cover
        && lifetime > Duration::ZERO;
    acceptable.then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_names_are_validated() {
        let state = StateDir::new("/state");
        assert_eq!(
            state.cert_dir("server").ok(),
            Some(PathBuf::from("/state/certs/server"))
        );
        assert!(state.cert_dir("db-1.prod_a").is_ok());
        for bad in [
            "", ".", "..", "a/b", "a..b", ".hidden", "a b", "é", "a\\b", "/abs",
        ] {
            assert!(
                matches!(
                    state.cert_dir(bad),
                    Err(PkiError::InvalidCertificateName(_))
                ),
                "{bad:?} accepted"
            );
        }
        assert!(state.cert_dir(&"a".repeat(256)).is_err());
    }

    #[test]
    fn layout() {
        let state = StateDir::new("/state");
        assert_eq!(state.root(), Path::new("/state"));
        assert_eq!(state.ca_dir(), PathBuf::from("/state/ca"));
        assert_eq!(state.certs_dir(), PathBuf::from("/state/certs"));
    }
}
