//! Server certificates from an ACME (RFC 8555) certificate authority: Let's
//! Encrypt, step-ca, Vault PKI, pebble, or any other.
//!
//! [`obtain`] registers (once) or reuses the account, orders a certificate
//! for the names asked, answers the CA's challenge itself
//! ([`Challenge::Http01`] or [`Challenge::TlsAlpn01`], see [`challenge`]),
//! finalizes with a fresh key and installs the result in the state
//! directory where the built-in CA's certificate of that name goes
//! ([`intransit_pki::StateDir::install_acme`]), so a proxy watching those
//! files reloads it. Requests that found the server unreachable are tried
//! again with exponential backoff ([`Retry`]); a refusal is reported at once
//! with the CA's own explanation. On any error nothing is installed and the
//! certificate files in place are untouched.
//!
//! The account's key and URL live in `<state>/acme/account-<hash>.json`
//! (mode 0600; one file per directory URL) and are reused by every later
//! order. The ACME protocol is `instant-acme`'s, over hyper and rustls with
//! aws-lc-rs ([`https`]); this crate owns the choices around it.

#![forbid(unsafe_code)]

pub mod challenge;
mod error;
mod https;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ExternalAccountKey, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, Problem, RetryPolicy,
};
use intransit_pki::{
    AcmeOrigin, AcmeRequest, IssuedEntry, KeyAlgorithm, StateDir, TlsAlpnChallenges,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

pub use challenge::Challenge;
pub use error::AcmeError;

use challenge::Responder;
use https::{words, HttpsClient, Unreachable};

/// The problem type of an account the server does not know (any more).
const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";
/// How long the CA gets to validate the challenges, and then to issue.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// External account binding (RFC 8555 section 7.3.4), for CAs that tie an
/// ACME account to an account of their own (ZeroSSL, Google, some
/// step-ca and Vault setups). Only used when the account is registered.
#[derive(Clone)]
pub struct ExternalAccount {
    /// The key identifier the CA gave.
    pub key_id: String,
    /// The HMAC key the CA gave, decoded.
    pub hmac_key: Vec<u8>,
}

impl ExternalAccount {
    /// The key id and the HMAC key as CAs hand them out: base64url, with
    /// or without padding.
    pub fn from_base64url(key_id: &str, hmac_key: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let trimmed = hmac_key.trim().trim_end_matches('=');
        let hmac_key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(trimmed)
            .map_err(|e| format!("not base64url ({e})"))?;
        if hmac_key.is_empty() {
            return Err("the key is empty".to_owned());
        }
        Ok(Self {
            key_id: key_id.to_owned(),
            hmac_key,
        })
    }
}

impl std::fmt::Debug for ExternalAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalAccount")
            .field("key_id", &self.key_id)
            .field("hmac_key", &"[redacted]")
            .finish()
    }
}

/// Which ACME server, how to trust it, and how to prove control of the names.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// The directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Contact addresses for the account, as `mailto:` URLs.
    pub contact: Vec<String>,
    /// An extra trust root for the ACME server's own HTTPS, besides the
    /// platform's.
    pub extra_root: Option<PathBuf>,
    /// External account binding, if the CA requires it.
    pub external_account: Option<ExternalAccount>,
    /// The challenge answered, and where.
    pub challenge: Challenge,
    /// For TLS-ALPN-01 on an address a proxy listener of this process
    /// holds (`intransit up`): that listener's pending challenges, which
    /// the order's answers are put into instead of binding a listener of
    /// their own. Not recorded in the inventory.
    pub running_listener: Option<TlsAlpnChallenges>,
}

impl AcmeSettings {
    /// What the inventory records, so renewal can do the same again.
    pub fn origin(&self) -> AcmeOrigin {
        AcmeOrigin {
            directory: self.directory.clone(),
            challenge: self.challenge.name().to_owned(),
            challenge_addr: self.challenge.addr().to_string(),
            extra_root: self.extra_root.clone(),
            contact: self.contact.clone(),
        }
    }

    /// The settings a certificate was issued with, from its inventory
    /// record. `None` if the record names a challenge this version does
    /// not answer.
    pub fn from_origin(origin: &AcmeOrigin) -> Option<Self> {
        let addr = origin.challenge_addr.parse().ok()?;
        Some(Self {
            directory: origin.directory.clone(),
            contact: origin.contact.clone(),
            extra_root: origin.extra_root.clone(),
            external_account: None,
            challenge: Challenge::from_name(&origin.challenge, addr)?,
            running_listener: None,
        })
    }
}

/// How often a request that found the ACME server unreachable is tried,
/// and how long to wait before the first retry (doubled after each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, at least 1.
    pub attempts: u32,
    /// Wait before the second attempt.
    pub first_delay: Duration,
}

impl Default for Retry {
    /// Four attempts over about 14 seconds (waits of 2, 4 and 8 s).
    fn default() -> Self {
        Self {
            attempts: 4,
            first_delay: Duration::from_secs(2),
        }
    }
}

/// What to ask the ACME server for.
#[derive(Debug, Clone)]
pub struct CertificateOrder<'a> {
    /// The inventory name; the files go to its directory.
    pub name: &'a str,
    /// DNS names.
    pub dns_names: &'a [String],
    /// IP addresses (not every CA issues for them).
    pub ip_addresses: &'a [IpAddr],
    /// The new key's type.
    pub key: KeyAlgorithm,
}

/// Gets a certificate from the ACME server and installs it in `state`
/// under `order.name`, retrying with backoff while the server is
/// unreachable. Returns the inventory entry as it is now.
pub async fn obtain(
    state: &StateDir,
    settings: &AcmeSettings,
    order: &CertificateOrder<'_>,
    retry: Retry,
) -> Result<IssuedEntry, AcmeError> {
    let mut delay = retry.first_delay;
    let mut attempt = 1;
    loop {
        match obtain_once(state, settings, order).await {
            Ok(entry) => return Ok(entry),
            Err(e) if e.is_transient() && attempt < retry.attempts.max(1) => {
                warn!(
                    directory = %settings.directory,
                    attempt,
                    retry_in_s = delay.as_secs_f64(),
                    error = %e,
                    "the ACME request failed; trying again"
                );
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
            Err(AcmeError::Unreachable {
                directory, detail, ..
            }) => {
                return Err(AcmeError::Unreachable {
                    directory,
                    attempts: attempt,
                    detail,
                })
            }
            Err(e) => return Err(e),
        }
    }
}

async fn obtain_once(
    state: &StateDir,
    settings: &AcmeSettings,
    wanted: &CertificateOrder<'_>,
) -> Result<IssuedEntry, AcmeError> {
    let request =
        AcmeRequest::new(wanted.dns_names, wanted.ip_addresses, wanted.key).map_err(|source| {
            AcmeError::Pki {
                action: "preparing the certificate request",
                source,
            }
        })?;
    let identifiers: Vec<Identifier> = wanted
        .dns_names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .chain(wanted.ip_addresses.iter().map(|ip| Identifier::Ip(*ip)))
        .collect();
    let new_order = NewOrder::new(&identifiers);
    let mut account = load_or_register(state, settings).await?;
    let mut order = match account.new_order(&new_order).await {
        Err(instant_acme::Error::Api(p)) if p.r#type.as_deref() == Some(ACCOUNT_DOES_NOT_EXIST) => {
            warn!(
                directory = %settings.directory,
                "the ACME server no longer knows the stored account; registering a new one"
            );
            account = register(state, settings).await?;
            account
                .new_order(&new_order)
                .await
                .map_err(|e| classify(e, "the new order", settings))?
        }
        other => other.map_err(|e| classify(e, "the new order", settings))?,
    };

    let responder = Responder::start(settings, state).await?;
    let answered = answer_challenges(&mut order, &responder, settings).await;
    let polled = match answered {
        Ok(()) => order
            .poll_ready(&RetryPolicy::new().timeout(ORDER_TIMEOUT))
            .await
            .map_err(|e| classify(e, "the order", settings)),
        Err(e) => Err(e),
    };
    // The order has left `pending` (or failed): nothing more to answer.
    let through_files = responder
        .answers_through_files()
        .map(|state| state.root().to_owned());
    responder.stop().await;
    let refused = match polled {
        Ok(OrderStatus::Ready) => None,
        Ok(status) => Some(challenge_refusal(&mut order, settings).await.unwrap_or(
            AcmeError::Refused {
                action: "the order",
                detail: format!("it is {status:?} instead of ready"),
                transient: false,
            },
        )),
        Err(e) => Some(challenge_refusal(&mut order, settings).await.unwrap_or(e)),
    };
    match (refused, through_files) {
        (None, _) => {}
        (
            Some(AcmeError::ChallengeRefused {
                challenge,
                identifier,
                detail,
            }),
            Some(root),
        ) => {
            // The answer was left for a proxy of another process: say
            // which state directory that proxy must read.
            return Err(AcmeError::ChallengeRefused {
                challenge,
                identifier,
                detail: format!(
                    "{detail}; {} was in use, so the answer was left in {} for the intransit \
                     proxy listening there, which reads it only with state_dir = {:?} in its \
                     configuration",
                    settings.challenge.addr(),
                    intransit_pki::tls_alpn::challenge_dir(&root).display(),
                    root.display().to_string()
                ),
            });
        }
        (Some(e), _) => return Err(e),
    }
    order
        .finalize_csr(&request.csr_der)
        .await
        .map_err(|e| classify(e, "the certificate request (finalize)", settings))?;
    let chain = order
        .poll_certificate(&RetryPolicy::new().timeout(ORDER_TIMEOUT))
        .await
        .map_err(|e| classify(e, "issuing the certificate", settings))?;
    let certificate = request
        .into_certificate(&chain, settings.origin())
        .map_err(|source| AcmeError::Pki {
            action: "checking the certificate the ACME server issued",
            source,
        })?;
    let state = state.clone();
    let name = wanted.name.to_owned();
    let entry = tokio::task::spawn_blocking(move || state.install_acme(&name, &certificate))
        .await
        .map_err(|e| AcmeError::Local {
            action: "installing the certificate",
            detail: e.to_string(),
        })?
        .map_err(|source| AcmeError::Pki {
            action: "installing the certificate",
            source,
        })?;
    info!(
        certificate = %entry.name,
        serial = %entry.serial_hex,
        directory = %settings.directory,
        "certificate issued by the ACME server"
    );
    Ok(entry)
}

/// Answers every pending authorization's challenge and tells the CA.
async fn answer_challenges(
    order: &mut Order,
    responder: &Responder,
    settings: &AcmeSettings,
) -> Result<(), AcmeError> {
    let kind = settings.challenge;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| classify(e, "the authorization", settings))?;
        let identifier = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            // Validated earlier, and still valid for this account.
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(AcmeError::Refused {
                    action: "the authorization",
                    detail: format!("the authorization for {identifier} is {status:?}"),
                    transient: false,
                })
            }
        }
        let offered: Vec<String> = authz
            .challenges
            .iter()
            .map(|c| format!("{:?}", c.r#type))
            .collect();
        let Some(mut challenge) = authz.challenge(kind.acme_type()) else {
            return Err(AcmeError::ChallengeNotOffered {
                challenge: kind.name(),
                identifier,
                offered: offered.join(", "),
            });
        };
        responder.add(
            &identifier,
            &challenge.token,
            &challenge.key_authorization(),
        )?;
        challenge.set_ready().await.map_err(|e| match e {
            instant_acme::Error::Api(problem) => AcmeError::ChallengeRefused {
                challenge: kind.name(),
                identifier: identifier.clone(),
                detail: describe(&problem),
            },
            other => classify(other, "the challenge", settings),
        })?;
    }
    Ok(())
}

/// The CA's reason for refusing the order's challenge, if it gave one.
async fn challenge_refusal(order: &mut Order, settings: &AcmeSettings) -> Option<AcmeError> {
    let kind = settings.challenge;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let Ok(mut authz) = authz else { continue };
        if authz.refresh().await.is_err() {
            continue;
        }
        let identifier = authz.identifier().to_string();
        let refused = authz
            .challenges
            .iter()
            .filter(|c| c.r#type == kind.acme_type())
            .find_map(|c| c.error.as_ref());
        if let Some(problem) = refused {
            return Some(AcmeError::ChallengeRefused {
                challenge: kind.name(),
                identifier,
                detail: describe(problem),
            });
        }
    }
    None
}

/// The stored account for this directory, or a newly registered one.
async fn load_or_register(state: &StateDir, settings: &AcmeSettings) -> Result<Account, AcmeError> {
    let path = account_path(state, &settings.directory);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return register(state, settings).await
        }
        Err(source) => return Err(AcmeError::Account { path, source }),
    };
    let stored: StoredAccount =
        serde_json::from_str(&text).map_err(|e| AcmeError::AccountDamaged {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    if stored.directory != settings.directory {
        return Err(AcmeError::AccountDamaged {
            path,
            detail: format!("it belongs to {}", stored.directory),
        });
    }
    let http = HttpsClient::new(settings.extra_root.as_deref())?;
    Account::builder_with_http(Box::new(http))
        .from_credentials(stored.credentials)
        .await
        .map_err(|e| classify(e, "the directory request", settings))
}

/// Registers a new account and stores its key.
async fn register(state: &StateDir, settings: &AcmeSettings) -> Result<Account, AcmeError> {
    let http = HttpsClient::new(settings.extra_root.as_deref())?;
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let eab = settings
        .external_account
        .as_ref()
        .map(|e| ExternalAccountKey::new(e.key_id.clone(), &e.hmac_key));
    let (account, credentials) = Account::builder_with_http(Box::new(http))
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(|e| classify(e, "the new account", settings))?;
    let path = account_path(state, &settings.directory);
    let stored = StoredAccount {
        directory: settings.directory.clone(),
        credentials,
    };
    let mut json = serde_json::to_vec_pretty(&stored).map_err(|e| AcmeError::Local {
        action: "the ACME account file",
        detail: e.to_string(),
    })?;
    json.push(b'\n');
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(|source| AcmeError::Account {
            path: path.clone(),
            source,
        })?;
    }
    intransit_pki::write_file_atomic(&path, &json, 0o600).map_err(|source| AcmeError::Pki {
        action: "writing the ACME account file",
        source,
    })?;
    info!(
        directory = %settings.directory,
        account = %account.id(),
        file = %path.display(),
        "registered an ACME account"
    );
    Ok(account)
}

/// `<state>/acme/account-<first 16 hex digits of SHA-256(directory)>.json`.
pub fn account_path(state: &StateDir, directory: &str) -> PathBuf {
    let digest = Sha256::digest(directory.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    state
        .root()
        .join("acme")
        .join(format!("account-{hex}.json"))
}

/// The account file: the directory it belongs to and instant-acme's
/// credentials (account URL and PKCS#8 key).
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A problem document in words: its detail, then its type, then any
/// subproblems.
fn describe(problem: &Problem) -> String {
    let mut text = problem
        .detail
        .clone()
        .unwrap_or_else(|| "no detail given".to_owned());
    if let Some(kind) = &problem.r#type {
        text.push_str(&format!(" ({kind})"));
    }
    for sub in &problem.subproblems {
        text.push_str(&format!("; {sub}"));
    }
    text
}

/// instant-acme's error, in this crate's terms.
fn classify(
    error: instant_acme::Error,
    action: &'static str,
    settings: &AcmeSettings,
) -> AcmeError {
    match error {
        instant_acme::Error::Api(problem) => AcmeError::Refused {
            action,
            detail: describe(&problem),
            transient: problem.status.is_some_and(|s| s >= 500),
        },
        instant_acme::Error::Other(inner) => match inner.downcast::<Unreachable>() {
            Ok(unreachable) => AcmeError::Unreachable {
                directory: settings.directory.clone(),
                attempts: 1,
                detail: unreachable.detail,
            },
            Err(other) => AcmeError::Refused {
                action,
                detail: words(&*other),
                transient: false,
            },
        },
        instant_acme::Error::Timeout(_) => AcmeError::Refused {
            action,
            detail: format!("it was not done within {} s", ORDER_TIMEOUT.as_secs()),
            transient: true,
        },
        instant_acme::Error::Json(e) => AcmeError::Refused {
            action,
            detail: format!(
                "its answer is not ACME JSON ({e}); is {} an ACME directory URL?",
                settings.directory
            ),
            transient: false,
        },
        other => AcmeError::Refused {
            action,
            detail: words(&other),
            transient: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_files_are_per_directory() {
        let state = StateDir::new("/state");
        let a = account_path(&state, "https://a.example/directory");
        let b = account_path(&state, "https://b.example/directory");
        assert_ne!(a, b);
        assert!(a.starts_with("/state/acme"));
        assert_eq!(a, account_path(&state, "https://a.example/directory"));
    }

    #[test]
    fn origins_round_trip() {
        let settings = AcmeSettings {
            directory: "https://ca.example/dir".to_owned(),
            contact: vec!["mailto:ops@example.com".to_owned()],
            extra_root: Some(PathBuf::from("/etc/ca.pem")),
            external_account: None,
            challenge: Challenge::TlsAlpn01(std::net::SocketAddr::from(([0, 0, 0, 0], 443))),
            running_listener: None,
        };
        let back = AcmeSettings::from_origin(&settings.origin());
        assert_eq!(back.map(|s| s.origin()), Some(settings.origin()));
    }

    #[test]
    fn only_unreachable_and_server_errors_are_retried() {
        let unreachable = AcmeError::Unreachable {
            directory: "d".into(),
            attempts: 1,
            detail: "refused".into(),
        };
        assert!(unreachable.is_transient());
        let refused = AcmeError::ChallengeRefused {
            challenge: "http-01",
            identifier: "db.example".into(),
            detail: "404".into(),
        };
        assert!(!refused.is_transient());
        let message = refused.to_string();
        assert!(
            message.contains("http-01") && message.contains("db.example"),
            "{message}"
        );
    }
}
