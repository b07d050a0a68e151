//! What the proxy holds to log in to PostgreSQL as any database user of one
//! pool: the passwords of `auth_file`, the client certificates configured
//! per user, and the CA that mints a certificate for every other user that
//! logs in with `server_auth = "cert"`.
//!
//! This module owns reading and checking those files (when the listener is
//! prepared, before it binds, and again on each reload, which keeps the
//! state in service when new files fail), PgBouncer's userlist format, and
//! minting: a certificate with CN = the user, made on first use, kept in
//! memory only and made again once two thirds of its lifetime have passed.
//! It never writes a file, never logs or shows a password or key, and says
//! nothing on the wire: `login` does.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use intransit_config::{PoolConfig, ServerAuth};
use intransit_pki::{
    CertificateAuthority, CertificateKind, IssueRequest, KeyAlgorithm, PkiError, Validity,
    CLOCK_SKEW_ALLOWANCE,
};
use time::OffsetDateTime;

use crate::conn::Refused;
use crate::error::ProxyError;
use crate::refusal::RefusalReason;
use crate::tls::material::{self, SourceFingerprint};
use crate::tls::reloadable::{Fingerprinted, Reloadable, Reloaded};
use crate::tls::upstream::{ClientChainFiles, UpstreamClientCert, UpstreamTls};

/// What the file is called in errors.
const AUTH_FILE: &str = "pool auth_file";

/// The longest PostgreSQL role name (NAMEDATALEN - 1).
const MAX_USER_NAME_LEN: usize = 63;

/// What the proxy needs to log in to PostgreSQL as any user of one pool.
pub(crate) struct Credentials {
    /// The pool's settings: who logs in how, and the files to read.
    pool: PoolConfig,
    /// The listener's upstream TLS, which every server login goes through.
    upstream_tls: Option<Arc<UpstreamTls>>,
    /// Passwords, configured certificates and the minting CA in service.
    material: Reloadable<CredentialMaterial>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let material = self.material.snapshot();
        f.debug_struct("Credentials")
            .field("server_auth", &self.pool.server_auth)
            .field("passwords", &material.passwords.len())
            .field("configured_certs", &material.configured.len())
            .field("mints", &material.minter.is_some())
            .finish_non_exhaustive()
    }
}

/// One user's way in, as [`Credentials::for_user`] found it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ServerLogin {
    /// The `server_auth` the way came from, for messages.
    pub(super) server_auth: ServerAuth,
    /// The upstream leg's TLS, if the listener has `upstream_tls`.
    pub(super) tls: Option<Arc<UpstreamTls>>,
    /// What answers the server's authentication.
    pub(super) way: WayIn,
}

/// What answers the server's authentication request.
#[derive(Clone)]
pub(crate) enum WayIn {
    /// Nothing: the server lets the user in (`trust`, `peer`).
    Trust,
    /// A password from `auth_file`.
    Password(Arc<Secret>),
    /// A client certificate for the user, presented in the TLS handshake
    /// (`hostssl ... cert`).
    Cert(Arc<UpstreamClientCert>),
}

impl fmt::Debug for ServerLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let way = match &self.way {
            WayIn::Trust => "trust".to_owned(),
            WayIn::Password(secret) => format!("password ({})", secret.kind()),
            WayIn::Cert(cert) => format!("certificate {}", cert.leaf.subject),
        };
        f.debug_struct("ServerLogin")
            .field("server_auth", &self.server_auth.as_str())
            .field("tls", &self.tls.is_some())
            .field("way", &way)
            .finish()
    }
}

/// A password from `auth_file`. Its `Debug` shows only its kind.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Secret {
    /// The password itself: answers SCRAM-SHA-256, md5 and clear text.
    Plain(String),
    /// The 32 hex digits after `md5` in `md5<hex>`, the MD5 of password and
    /// user name as PostgreSQL stores it: answers md5 authentication only.
    Md5(String),
}

impl Secret {
    /// What kind of secret it is, in words for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Secret::Plain(_) => "plain password",
            Secret::Md5(_) => "md5 hash",
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, [redacted])", self.kind())
    }
}

/// Everything read from the files, swapped as a whole by a reload.
struct CredentialMaterial {
    source: SourceFingerprint,
    passwords: HashMap<String, Arc<Secret>>,
    configured: HashMap<String, Arc<UpstreamClientCert>>,
    minter: Option<Minter>,
}

impl Fingerprinted for CredentialMaterial {
    fn source(&self) -> SourceFingerprint {
        self.source
    }
}

impl fmt::Debug for CredentialMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialMaterial")
            .field("source", &self.source)
            .field("passwords", &self.passwords.len())
            .field("configured", &self.configured.len())
            .finish_non_exhaustive()
    }
}

/// The bytes of every file the pool names, read once so that what is
/// fingerprinted is exactly what is parsed.
struct CredentialFiles {
    auth_file: Option<(PathBuf, Vec<u8>)>,
    /// User, certificate path and bytes, key path and bytes, in user order.
    certs: Vec<ConfiguredCertFiles>,
    /// The CA directory and its certificate and key.
    ca: Option<CaFiles>,
}

struct ConfiguredCertFiles {
    user: String,
    cert: (PathBuf, Vec<u8>),
    key: (PathBuf, Vec<u8>),
}

struct CaFiles {
    dir: PathBuf,
    cert: Vec<u8>,
    key: Vec<u8>,
    /// For an encrypted key: from `cert_authority_passphrase_file`, or
    /// else the environment.
    passphrase: Option<Vec<u8>>,
}

/// Where the passphrase of an encrypted minting CA key comes from when
/// no file is configured (the same variable `intransit ca` reads).
const PASSPHRASE_ENV: &str = "INTRANSIT_CA_PASSPHRASE";

fn ca_passphrase(pool: &PoolConfig) -> Result<Option<Vec<u8>>, ProxyError> {
    if let Some(path) = &pool.cert_authority_passphrase_file {
        let mut bytes = read_private_file(path, "pool minting CA passphrase file")?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(ProxyError::file(
                "pool minting CA passphrase file",
                path,
                "is empty",
            ));
        }
        return Ok(Some(bytes));
    }
    Ok(std::env::var_os(PASSPHRASE_ENV)
        .filter(|v| !v.is_empty())
        .map(|v| v.into_encoded_bytes()))
}

impl CredentialFiles {
    fn read(pool: &PoolConfig) -> Result<Self, ProxyError> {
        let auth_file = match &pool.auth_file {
            Some(path) => Some((path.clone(), read_private_file(path, AUTH_FILE)?)),
            None => None,
        };
        let mut certs = Vec::new();
        for (user, settings) in &pool.users {
            if let (Some(cert), Some(key)) = (&settings.cert, &settings.key) {
                certs.push(ConfiguredCertFiles {
                    user: user.clone(),
                    cert: (
                        cert.clone(),
                        material::read(cert, &format!("pool client certificate for {user:?}"))?,
                    ),
                    key: (
                        key.clone(),
                        material::read(key, &format!("pool client key for {user:?}"))?,
                    ),
                });
            }
        }
        let ca = if pool.mints_certificates() {
            let dir = pool.cert_authority.as_ref().ok_or_else(|| {
                ProxyError::Tls(
                    "the pool mints client certificates but has no cert_authority (the configuration check should have caught this)"
                        .into(),
                )
            })?;
            Some(CaFiles {
                dir: dir.clone(),
                cert: read_ca_file(
                    &dir.join("ca").join("ca.pem"),
                    "pool minting CA certificate",
                )?,
                key: read_ca_file(&dir.join("ca").join("key.pem"), "pool minting CA key")?,
                passphrase: ca_passphrase(pool)?,
            })
        } else {
            None
        };
        Ok(CredentialFiles {
            auth_file,
            certs,
            ca,
        })
    }

    fn fingerprint(&self, pool: &PoolConfig) -> SourceFingerprint {
        let mut files: Vec<Option<&[u8]>> = vec![self.auth_file.as_ref().map(|(_, b)| &b[..])];
        for c in &self.certs {
            files.push(Some(&c.cert.1));
            files.push(Some(&c.key.1));
        }
        files.push(self.ca.as_ref().map(|ca| &ca.cert[..]));
        files.push(self.ca.as_ref().map(|ca| &ca.key[..]));
        SourceFingerprint::of(pool, &files)
    }
}

/// Reads a file that holds passwords, refusing it unless only its owner
/// may read it (mode 0600 or stricter). The mode is read from the opened
/// file, so it is the mode of the bytes read.
fn read_private_file(path: &Path, what: &str) -> Result<Vec<u8>, ProxyError> {
    let fail = |e: std::io::Error| ProxyError::file(what, path, e.to_string());
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let mode = file.metadata().map_err(fail)?.permissions().mode();
    check_private_mode(path, mode).map_err(|reason| ProxyError::file(what, path, reason))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(fail)?;
    Ok(bytes)
}

/// Refuses a mode that grants anything beyond read and write to the owner.
fn check_private_mode(path: &Path, mode: u32) -> Result<(), String> {
    let mode = mode & 0o7777;
    if mode & !0o600 == 0 {
        return Ok(());
    }
    Err(format!(
        "has mode {mode:04o}, which grants more than reading and writing to its owner; a file of passwords needs mode 0600 or stricter: chmod 600 {}",
        path.display()
    ))
}

fn read_ca_file(path: &Path, what: &str) -> Result<Vec<u8>, ProxyError> {
    std::fs::read(path).map_err(|e| {
        let reason = if e.kind() == std::io::ErrorKind::NotFound {
            "not found: cert_authority (or state_dir) must be a directory made by `intransit ca init`, whose CA signs the certificates the pool presents".to_owned()
        } else {
            e.to_string()
        };
        ProxyError::file(what, path, reason)
    })
}

impl CredentialMaterial {
    fn build(pool: &PoolConfig, files: &CredentialFiles) -> Result<Self, ProxyError> {
        let passwords = match &files.auth_file {
            Some((path, bytes)) => parse_userlist(bytes)
                .map_err(|reason| ProxyError::file(AUTH_FILE, path, reason))?
                .into_iter()
                .map(|(user, secret)| (user, Arc::new(secret)))
                .collect(),
            None => HashMap::new(),
        };
        let mut configured = HashMap::new();
        for c in &files.certs {
            let cert_what = format!("pool client certificate for {:?}", c.user);
            let key_what = format!("pool client key for {:?}", c.user);
            let cert = UpstreamClientCert::from_pem(&ClientChainFiles {
                cert_bytes: &c.cert.1,
                key_bytes: &c.key.1,
                cert_path: &c.cert.0,
                key_path: &c.key.0,
                cert_what: &cert_what,
                key_what: &key_what,
            })?;
            configured.insert(c.user.clone(), Arc::new(cert));
        }
        let minter = match &files.ca {
            Some(ca) => Some(Minter::new(ca, pool.cert_lifetime)?),
            None => None,
        };
        Ok(CredentialMaterial {
            source: files.fingerprint(pool),
            passwords,
            configured,
            minter,
        })
    }
}

impl Credentials {
    /// Reads and checks everything the pool's logins need: `auth_file`
    /// (refused unless mode 0600 or stricter), each configured per-user
    /// certificate and key (valid now, the key the certificate's own), and
    /// the minting CA (`cert_authority`) when some user mints. Called when
    /// the listener is prepared, before it binds.
    pub(crate) fn load(
        pool: &PoolConfig,
        upstream_tls: Option<Arc<UpstreamTls>>,
    ) -> Result<Credentials, ProxyError> {
        if pool.uses_certificates() && upstream_tls.is_none() {
            return Err(ProxyError::Tls(
                "server_auth = \"cert\" presents a client certificate to PostgreSQL, which needs [listener.upstream_tls] (the configuration check should have caught this)"
                    .into(),
            ));
        }
        let files = CredentialFiles::read(pool)?;
        let material = CredentialMaterial::build(pool, &files)?;
        Ok(Credentials {
            pool: pool.clone(),
            upstream_tls,
            material: Reloadable::new(material),
        })
    }

    /// What logging in as `user` takes right now. A minted certificate is
    /// made on first use and again once two thirds of its lifetime have
    /// passed.
    pub(crate) fn for_user(&self, user: &str) -> Result<ServerLogin, Refused> {
        self.for_user_at(user, SystemTime::now())
    }

    /// [`Credentials::for_user`] with the clock as a parameter.
    fn for_user_at(&self, user: &str, now: SystemTime) -> Result<ServerLogin, Refused> {
        let material = self.material.snapshot();
        let server_auth = self.pool.server_auth_for(user);
        let refused = |detail: String| {
            Refused::new(
                RefusalReason::ServerLoginFailed,
                format!("logging in to the database as user {user:?}: {detail}"),
            )
            .for_login(Some(user), None)
        };
        let way = match server_auth {
            ServerAuth::Trust => WayIn::Trust,
            ServerAuth::Password => match material.passwords.get(user) {
                Some(secret) => WayIn::Password(secret.clone()),
                None => {
                    let file = self
                        .pool
                        .auth_file
                        .as_deref()
                        .map_or_else(|| "(none)".to_owned(), |p| p.display().to_string());
                    return Err(refused(format!(
                        "server_auth = \"password\", but auth_file {file} has no password for this user; add a line \"{}\" \"PASSWORD\" and reload",
                        user.replace('"', "\"\"")
                    )));
                }
            },
            ServerAuth::Cert => match (material.configured.get(user), &material.minter) {
                (Some(cert), _) => WayIn::Cert(cert.clone()),
                (None, Some(minter)) => WayIn::Cert(minter.certificate_for(user, now).map_err(refused)?),
                (None, None) => {
                    return Err(refused(
                        "server_auth = \"cert\", but the user has no configured cert and key and the pool has no CA to mint one (the configuration check should have caught this)"
                            .into(),
                    ))
                }
            },
        };
        Ok(ServerLogin {
            server_auth,
            tls: self.upstream_tls.clone(),
            way,
        })
    }

    /// Reads `auth_file`, the configured certificates and the CA again and,
    /// when anything differs from what is in service, puts the new state in
    /// service (minted certificates are then made afresh). Returns whether
    /// it did, so the pool can retire server connections made with the old
    /// material. On error the old state stays.
    pub(crate) fn reload(&self) -> Result<bool, ProxyError> {
        let pool = &self.pool;
        let reloaded = self
            .material
            .reload(
                || CredentialFiles::read(pool).map(|files| (files.fingerprint(pool), files)),
                |files| CredentialMaterial::build(pool, &files),
            )
            .map_err(|e| e.error)?;
        Ok(matches!(reloaded, Reloaded::Swapped(_)))
    }
}

/// The CA that mints client certificates, and what it minted.
struct Minter {
    ca: CertificateAuthority,
    lifetime: Duration,
    minted: Mutex<HashMap<String, Minted>>,
}

/// A minted certificate and when it is replaced.
struct Minted {
    cert: Arc<UpstreamClientCert>,
    renew_at: SystemTime,
}

impl Minter {
    fn new(files: &CaFiles, lifetime: Duration) -> Result<Self, ProxyError> {
        let key_path = files.dir.join("ca").join("key.pem");
        let text = |bytes: &[u8], path: &Path| {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| ProxyError::file("pool minting CA", path, "is not PEM text"))
        };
        let cert_pem = text(&files.cert, &files.dir.join("ca").join("ca.pem"))?;
        let key_pem = text(&files.key, &key_path)?;
        let ca = CertificateAuthority::from_pem_with_passphrase(
            &cert_pem,
            &key_pem,
            files.passphrase.as_deref(),
            &files.dir,
            &key_path,
        )
        .map_err(|e| match e {
            PkiError::PassphraseRequired { .. } => ProxyError::file(
                "pool minting CA key",
                &key_path,
                format!("is encrypted; the proxy mints certificates unattended: set cert_authority_passphrase_file (a file of mode 0600 holding the passphrase) or {PASSPHRASE_ENV}, or give each user cert and key under [listener.pool.users.NAME]"),
            ),
            PkiError::WrongPassphrase { .. } => ProxyError::file(
                "pool minting CA key",
                &key_path,
                "is encrypted, and the passphrase given does not decrypt it",
            ),
            other => ProxyError::file("pool minting CA", &files.dir, other.to_string()),
        })?;
        Ok(Minter {
            ca,
            lifetime,
            minted: Mutex::new(HashMap::new()),
        })
    }

    /// The certificate for `user` at `now`: the one minted before, until
    /// two thirds of its lifetime have passed; a new one after that.
    fn certificate_for(
        &self,
        user: &str,
        now: SystemTime,
    ) -> Result<Arc<UpstreamClientCert>, String> {
        let mut minted = self.minted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = minted.get(user) {
            if now < m.renew_at {
                return Ok(m.cert.clone());
            }
        }
        let fresh = self.mint(user, now)?;
        let cert = fresh.cert.clone();
        minted.insert(user.to_owned(), fresh);
        Ok(cert)
    }

    /// Issues a client certificate for `user`: CN = the user, clientAuth,
    /// ECDSA P-256, valid for the pool's `cert_lifetime` from `now` (back
    /// dated a little for clocks behind ours; cut short at the CA's own
    /// expiry).
    fn mint(&self, user: &str, now: SystemTime) -> Result<Minted, String> {
        let start = OffsetDateTime::from(now);
        let lifetime = time::Duration::try_from(self.lifetime)
            .map_err(|_| format!("cert_lifetime {:?} is out of range", self.lifetime))?;
        let request = IssueRequest {
            kind: CertificateKind::Client,
            common_name: user.to_owned(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            uris: Vec::new(),
            key: KeyAlgorithm::EcdsaP256,
            validity: Validity {
                not_before: start - CLOCK_SKEW_ALLOWANCE.min(lifetime / 10),
                not_after: start + lifetime,
            },
        };
        let issued = self.ca.issue(&request).map_err(|e| {
            format!(
                "minting a client certificate with the CA {}: {e}",
                self.ca.subject()
            )
        })?;
        let cert = UpstreamClientCert::issued(
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            "minted client certificate",
        )
        .map_err(|e| e.to_string())?;
        // Two thirds of the life it actually got, which the CA's expiry
        // may have cut short.
        let life = (issued.not_after - start).max(time::Duration::ZERO);
        let renew_in = Duration::try_from(life * 2 / 3).unwrap_or(Duration::ZERO);
        Ok(Minted {
            cert: Arc::new(cert),
            renew_at: now + renew_in,
        })
    }
}

/// Parses PgBouncer's userlist format: a line per user, `"user" "secret"`
/// in double quotes (`""` is a quote inside), anything after the secret
/// ignored as PgBouncer ignores it; lines starting with `;` or `#`, and
/// blank lines, are skipped. A secret `md5` + 32 hex digits is an md5 hash.
/// Errors name the line and never quote a secret.
fn parse_userlist(bytes: &[u8]) -> Result<BTreeMap<String, Secret>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        format!("line {line}: not UTF-8 text")
    })?;
    let mut users: BTreeMap<String, (usize, Secret)> = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let at = |what: &str| format!("line {number}: {what}");
        let (user, rest) = quoted(line).ok_or_else(|| {
            at("expected \"user\" \"password\": the user name in double quotes (a quote inside doubled), then the password in double quotes")
        })?;
        let (secret, _ignored) = quoted(rest.trim_start()).ok_or_else(|| {
            at(&format!(
                "user {user:?}: expected the password in double quotes after the user name (a quote inside doubled)"
            ))
        })?;
        if user.is_empty() || user.len() > MAX_USER_NAME_LEN {
            return Err(at(&format!(
                "user name {user:?}: a PostgreSQL user name is 1 to {MAX_USER_NAME_LEN} bytes"
            )));
        }
        let secret = classify_secret(secret).map_err(|why| at(&format!("user {user:?}: {why}")))?;
        if let Some((first, _)) = users.get(&user) {
            return Err(at(&format!(
                "user {user:?} is listed again (first on line {first}); keep one line per user"
            )));
        }
        users.insert(user, (number, secret));
    }
    Ok(users.into_iter().map(|(u, (_, s))| (u, s)).collect())
}

/// Splits a double-quoted string, with `""` for a quote inside, off the
/// front of `text`: the string and what follows its closing quote. `None`
/// when `text` does not start with a quote or the quote is not closed.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut rest = text.strip_prefix('"')?;
    let mut out = String::new();
    loop {
        let end = rest.find('"')?;
        out.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        match rest.strip_prefix('"') {
            Some(after) => {
                out.push('"');
                rest = after;
            }
            None => return Some((out, rest)),
        }
    }
}

/// What kind of secret a userlist entry holds.
fn classify_secret(secret: String) -> Result<Secret, &'static str> {
    if secret.is_empty() {
        return Err("the password is empty; PostgreSQL never accepts an empty password");
    }
    if secret.contains('\0') {
        return Err("the password contains a NUL character, which PostgreSQL's password message cannot carry");
    }
    if secret.starts_with("SCRAM-SHA-256$") {
        return Err("the secret is a SCRAM-SHA-256 verifier, which only checks a password: the proxy logs in to PostgreSQL without a client's password, so it needs the password itself (or, for md5 authentication, its md5 hash)");
    }
    match secret.strip_prefix("md5") {
        Some(hex) if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Secret::Md5(hex.to_ascii_lowercase()))
        }
        _ => Ok(Secret::Plain(secret)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use intransit_config::PoolUser;

    fn plain(s: &str) -> Secret {
        Secret::Plain(s.to_owned())
    }

    #[test]
    fn userlist_lines_quotes_escapes_and_comments() {
        let text = concat!(
            "; PgBouncer comment\n",
            "# another comment\n",
            "\n",
            "   \n",
            "\"alice\" \"s3cret\"\n",
            "  \"bob\"\t\"md5C2F529C161DC41E99FC644073C1E68A7\"  \"ignored\" trailing\n",
            "\"o\"\"brien\" \"say \"\"hi\"\"\"\n",
            "\"carol\" \"md5short\"\n",
        );
        let users = parse_userlist(text.as_bytes()).unwrap();
        assert_eq!(users.len(), 4);
        assert_eq!(users["alice"], plain("s3cret"));
        assert_eq!(
            users["bob"],
            Secret::Md5("c2f529c161dc41e99fc644073c1e68a7".into())
        );
        assert_eq!(users["o\"brien"], plain("say \"hi\""));
        // Not 32 hex digits: a password that happens to start with md5.
        assert_eq!(users["carol"], plain("md5short"));
        assert!(parse_userlist(b"").unwrap().is_empty());
    }

    #[test]
    fn userlist_errors_name_the_line_and_never_the_secret() {
        let cases: [(&str, &str, &str); 9] = [
            ("\"alice\" \"pw\"\nalice pw\n", "line 2:", "double quotes"),
            ("\"alice\n", "line 1:", "double quotes"),
            ("\"alice\"\n", "line 1:", "password in double quotes"),
            (
                "\n\"alice\" \"unclosed\n",
                "line 2:",
                "password in double quotes",
            ),
            ("\"\" \"topsecret\"\n", "line 1:", "1 to 63 bytes"),
            ("\"alice\" \"\"\n", "line 1:", "empty"),
            (
                "\"alice\" \"SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy\"\n",
                "line 1:",
                "needs the password itself",
            ),
            (
                "\"alice\" \"topsecret\"\n;\n\"alice\" \"topsecret2\"\n",
                "line 3:",
                "first on line 1",
            ),
            ("\"alice\" \"top\0secret\"\n", "line 1:", "NUL"),
        ];
        for (text, line, words) in cases {
            let error = parse_userlist(text.as_bytes()).unwrap_err();
            assert!(error.starts_with(line), "{text:?}: {error}");
            assert!(error.contains(words), "{text:?}: {error}");
            for secret in ["topsecret", "SCRAM-SHA-256$", "c3RvcmVk"] {
                assert!(!error.contains(secret), "{text:?}: {error}");
            }
        }
        let error = parse_userlist(b"\"alice\" \"ok\"\n\"bob\" \"\xff\"\n").unwrap_err();
        assert!(error.starts_with("line 2:"), "{error}");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let secret = plain("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        let hash = Secret::Md5("c2f529c161dc41e99fc644073c1e68a7".into());
        assert!(!format!("{hash:?}").contains("c2f5"));
    }

    #[test]
    fn only_owner_read_write_passes_the_mode_check() {
        let path = Path::new("/etc/intransit/userlist.txt");
        for ok in [0o600, 0o400, 0o200, 0o000, 0o100_600] {
            assert!(check_private_mode(path, ok).is_ok(), "{ok:o}");
        }
        for bad in [0o644, 0o640, 0o604, 0o700, 0o660, 0o4600] {
            let error = check_private_mode(path, bad).unwrap_err();
            assert!(error.contains(&format!("{:04o}", bad & 0o7777)), "{error}");
            assert!(
                error.contains("chmod 600 /etc/intransit/userlist.txt"),
                "{error}"
            );
        }
    }

    fn pool(server_auth: ServerAuth) -> PoolConfig {
        super::super::test_config(server_auth)
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn auth_file_is_read_checked_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("userlist.txt");
        write(&file, "\"alice\" \"first\"\n", 0o644);
        let mut config = pool(ServerAuth::Password);
        config.auth_file = Some(file.clone());
        config.users.insert(
            "dave".into(),
            PoolUser {
                server_auth: Some(ServerAuth::Trust),
                ..PoolUser::default()
            },
        );

        let error = Credentials::load(&config, None).unwrap_err().to_string();
        assert!(error.contains(&file.display().to_string()), "{error}");
        assert!(
            error.contains("0644") && error.contains("chmod 600"),
            "{error}"
        );

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let credentials = Credentials::load(&config, None).unwrap();
        let secret_of = |user: &str| match credentials.for_user(user).unwrap().way {
            WayIn::Password(secret) => (*secret).clone(),
            _ => panic!("not a password"),
        };
        assert_eq!(secret_of("alice"), plain("first"));
        assert!(matches!(
            credentials.for_user("dave").unwrap().way,
            WayIn::Trust
        ));
        let missing = credentials.for_user("bob").unwrap_err();
        assert_eq!(missing.reason, RefusalReason::ServerLoginFailed);
        assert!(
            missing.detail.contains("\"bob\" \"PASSWORD\""),
            "{}",
            missing.detail
        );
        assert!(missing.detail.contains(&file.display().to_string()));
        let debug = format!("{credentials:?}");
        assert!(!debug.contains("first"), "{debug}");

        assert!(!credentials.reload().unwrap(), "nothing changed");
        write(&file, "\"alice\" \"second\"\n\"bob\" \"third\"\n", 0o600);
        assert!(credentials.reload().unwrap());
        assert_eq!(secret_of("alice"), plain("second"));
        assert_eq!(secret_of("bob"), plain("third"));

        // A broken file keeps what is in service.
        write(&file, "\"alice\" \"SCRAM-SHA-256$4096:x$y:z\"\n", 0o600);
        let error = credentials.reload().unwrap_err().to_string();
        assert!(error.contains("line 1"), "{error}");
        assert_eq!(secret_of("alice"), plain("second"));
        write(&file, "\"alice\" \"second\"\n\"bob\" \"third\"\n", 0o640);
        assert!(credentials
            .reload()
            .unwrap_err()
            .to_string()
            .contains("0640"));
        assert_eq!(secret_of("bob"), plain("third"));
    }

    /// An upstream leg that encrypts without checking the server, enough
    /// for credentials that present certificates.
    fn require_tls() -> Arc<UpstreamTls> {
        Arc::new(
            UpstreamTls::build(&intransit_config::UpstreamTls {
                mode: intransit_config::UpstreamTlsMode::Require,
                ca: None,
                cert: None,
                key: None,
                server_name: intransit_config::UpstreamServerName::Dns("db.internal".into()),
                server_name_explicit: false,
                pins: Vec::new(),
                min_version: intransit_config::TlsVersion::V1_3,
                direct: false,
            })
            .unwrap(),
        )
    }

    fn minting_pool(dir: &Path) -> PoolConfig {
        let ca = CertificateAuthority::generate(
            "pool test CA",
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
        )
        .unwrap();
        ca.save(&dir.join("ca")).unwrap();
        let mut config = pool(ServerAuth::Cert);
        config.cert_authority = Some(dir.to_owned());
        config
    }

    /// Certificate summaries of what `for_user_at` returns at `now`.
    fn minted_at(
        credentials: &Credentials,
        user: &str,
        now: SystemTime,
    ) -> (Arc<UpstreamClientCert>, intransit_pki::CertificateSummary) {
        let login = credentials.for_user_at(user, now).unwrap();
        let WayIn::Cert(cert) = login.way else {
            panic!("not a certificate login");
        };
        let summary = intransit_pki::summarize(cert.chain()[0].as_ref()).unwrap();
        (cert, summary)
    }

    #[test]
    fn an_encrypted_minting_ca_needs_its_passphrase_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate(
            "pool test CA",
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
        )
        .unwrap();
        ca.save_encrypted(&dir.path().join("ca"), b"correct horse")
            .unwrap();
        let mut config = pool(ServerAuth::Cert);
        config.cert_authority = Some(dir.path().to_owned());
        let tls = Some(require_tls());
        // No passphrase (the test process has no INTRANSIT_CA_PASSPHRASE).
        let e = Credentials::load(&config, tls.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cert_authority_passphrase_file"), "{e}");
        let pass = dir.path().join("passphrase");
        let write = |text: &str, mode: u32| {
            std::fs::write(&pass, text).unwrap();
            std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        config.cert_authority_passphrase_file = Some(pass.clone());
        write("wrong\n", 0o600);
        let e = Credentials::load(&config, tls.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not decrypt"), "{e}");
        write("correct horse\n", 0o644);
        let e = Credentials::load(&config, tls.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("0600"), "{e}");
        write("correct horse\n", 0o600);
        let credentials = Credentials::load(&config, tls).unwrap();
        let (_, summary) = minted_at(&credentials, "orders", SystemTime::now());
        assert!(summary.subject.contains("orders"), "{}", summary.subject);
    }

    #[test]
    fn minted_certificates_name_the_user_and_are_renewed_after_two_thirds() {
        let dir = tempfile::tempdir().unwrap();
        let config = minting_pool(dir.path());
        let tls = require_tls();
        let error = Credentials::load(&config, None).unwrap_err().to_string();
        assert!(error.contains("upstream_tls"), "{error}");
        let credentials = Credentials::load(&config, Some(tls)).unwrap();

        let t0 = SystemTime::now();
        let (first, summary) = minted_at(&credentials, "app_user", t0);
        assert_eq!(summary.common_name.as_deref(), Some("app_user"));
        assert_eq!(summary.extended_key_usages, ["clientAuth"]);
        assert!(!summary.is_ca);
        assert_eq!(summary.key_description, "ECDSA P-256");
        assert!(
            summary.issuer.contains("pool test CA"),
            "{}",
            summary.issuer
        );
        let start = OffsetDateTime::from(t0).replace_nanosecond(0).unwrap();
        assert_eq!(summary.not_after, start + time::Duration::hours(1));
        // Back dated by the clock skew allowance, five minutes, which is
        // less than a tenth of the hour.
        assert_eq!(summary.not_before, start - time::Duration::minutes(5));

        let minutes = |m: u64| t0 + Duration::from_secs(60 * m);
        let (again, _) = minted_at(&credentials, "app_user", minutes(39));
        assert!(Arc::ptr_eq(&first, &again), "re-minted before two thirds");
        let (other, other_summary) = minted_at(&credentials, "reporting", minutes(39));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(other_summary.common_name.as_deref(), Some("reporting"));

        let (renewed, renewed_summary) = minted_at(&credentials, "app_user", minutes(41));
        assert!(
            !Arc::ptr_eq(&first, &renewed),
            "not re-minted after two thirds"
        );
        assert_ne!(renewed_summary.serial_hex, summary.serial_hex);
        assert!(renewed_summary.not_after > summary.not_after);
        let (same, _) = minted_at(&credentials, "app_user", minutes(42));
        assert!(Arc::ptr_eq(&renewed, &same));

        // Nothing of it was written next to the CA.
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "{files:?}");
    }

    #[test]
    fn configured_certificates_are_checked_like_the_upstream_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate(
            "configured CA",
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
        )
        .unwrap();
        let issue = |name: &str, validity: Validity| {
            let mut request = IssueRequest::new(CertificateKind::Client, name);
            request.validity = validity;
            ca.issue(&request)
                .unwrap()
                .write_to(&dir.path().join(name))
                .unwrap()
        };
        let good = issue("app_user", Validity::days_from_now(5));
        let other = issue("other", Validity::days_from_now(5));
        let now = OffsetDateTime::now_utc();
        let expired = issue(
            "expired",
            Validity {
                not_before: now - time::Duration::days(3),
                not_after: now - time::Duration::days(1),
            },
        );
        let tls = require_tls();
        let with_user = |cert: &Path, key: &Path| {
            let mut config = pool(ServerAuth::Trust);
            config.users.insert(
                "app_user".into(),
                PoolUser {
                    server_auth: Some(ServerAuth::Cert),
                    cert: Some(cert.to_owned()),
                    key: Some(key.to_owned()),
                    size: None,
                },
            );
            Credentials::load(&config, Some(tls.clone()))
        };

        let credentials = with_user(&good.cert, &good.key).unwrap();
        let WayIn::Cert(cert) = credentials.for_user("app_user").unwrap().way else {
            panic!("not a certificate login");
        };
        assert!(
            cert.leaf.subject.contains("app_user"),
            "{}",
            cert.leaf.subject
        );
        assert!(matches!(
            credentials.for_user("someone_else").unwrap().way,
            WayIn::Trust
        ));

        let mismatch = with_user(&good.cert, &other.key).unwrap_err().to_string();
        assert!(mismatch.contains("does not belong"), "{mismatch}");
        assert!(mismatch.contains("\"app_user\""), "{mismatch}");
        let stale = with_user(&expired.cert, &expired.key)
            .unwrap_err()
            .to_string();
        assert!(stale.contains("expired"), "{stale}");
        assert!(!stale.contains("PRIVATE KEY"), "{stale}");
    }

    #[test]
    fn a_new_ca_mints_afresh_and_a_missing_one_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = minting_pool(dir.path());
        let tls = require_tls();
        let credentials = Credentials::load(&config, Some(tls.clone())).unwrap();
        let now = SystemTime::now();
        let (before, _) = minted_at(&credentials, "app_user", now);
        assert!(!credentials.reload().unwrap());

        CertificateAuthority::generate(
            "second CA",
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
        )
        .unwrap()
        .save(&dir.path().join("ca"))
        .unwrap();
        assert!(credentials.reload().unwrap());
        let (after, summary) = minted_at(&credentials, "app_user", now);
        assert!(!Arc::ptr_eq(&before, &after));
        assert!(summary.issuer.contains("second CA"), "{}", summary.issuer);

        config.cert_authority = Some(dir.path().join("elsewhere"));
        let error = Credentials::load(&config, Some(tls))
            .unwrap_err()
            .to_string();
        assert!(error.contains("intransit ca init"), "{error}");
    }
}
