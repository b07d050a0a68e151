//! `--acme`: server certificates from an ACME CA for `cert issue server`,
//! `cert renew` and `intransit up`. The protocol and the challenge servers
//! are `intransit-acme`'s; this module turns the `--acme-*` flags (and, for
//! renewal, what the inventory recorded at issue time) into its settings,
//! and says what happened.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use intransit_acme::{AcmeSettings, CertificateOrder, Challenge, ExternalAccount, Retry};
use intransit_config::{Endpoint, Protocol};
use intransit_pki::{
    AcmeOrigin, CertificateKind, IssuedEntry, KeyAlgorithm, RenewalPolicy, StateDir,
    TlsAlpnChallenges,
};
use time::OffsetDateTime;

use crate::cli::{AcmeArgs, CertIssueArgs};

const DEFAULT_HTTP: &str = "0.0.0.0:80";
const DEFAULT_TLS_ALPN: &str = "0.0.0.0:443";

/// What `--acme*` asks for: the settings and the retry budget.
#[derive(Debug, Clone)]
pub(crate) struct AcmeChoice {
    pub settings: AcmeSettings,
    pub retry: Retry,
}

/// The choice the flags make on their own (`cert issue`, `up`): `None`
/// without `--acme`, an error when another `--acme-*` flag is given
/// without it.
pub(crate) fn from_flags(args: &AcmeArgs) -> Result<Option<AcmeChoice>> {
    if args.acme.is_none() {
        if let Some(flag) = stray_flag(args) {
            bail!("{flag} needs --acme DIRECTORY_URL");
        }
        return Ok(None);
    }
    with_origin(None, args)
}

/// The choice for renewing a certificate: what it was issued with
/// (`origin`), changed by any flag given. `None` for a certificate of the
/// local CA renewed without `--acme`.
pub(crate) fn with_origin(
    origin: Option<&AcmeOrigin>,
    args: &AcmeArgs,
) -> Result<Option<AcmeChoice>> {
    let directory = match (&args.acme, origin) {
        (Some(url), _) => url.clone(),
        (None, Some(origin)) => origin.directory.clone(),
        (None, None) => return Ok(None),
    };
    if !directory.starts_with("https://") {
        bail!("--acme: {directory} is not an https:// URL; ACME directories are served over HTTPS (RFC 8555)");
    }
    let recorded = origin.and_then(AcmeSettings::from_origin);
    let kind = match (&args.acme_challenge, &recorded) {
        (Some(kind), _) => kind.clone(),
        (None, Some(settings)) => settings.challenge.name().to_owned(),
        (None, None) => "http-01".to_owned(),
    };
    let recorded_addr = recorded
        .as_ref()
        .filter(|s| s.challenge.name() == kind)
        .map(|s| s.challenge.addr());
    let (flag, given, default) = if kind == "tls-alpn-01" {
        ("--acme-tls-alpn", &args.acme_tls_alpn, DEFAULT_TLS_ALPN)
    } else {
        ("--acme-http", &args.acme_http, DEFAULT_HTTP)
    };
    let addr = match (given, recorded_addr) {
        (Some(text), _) => parse_addr(flag, text)?,
        (None, Some(addr)) => addr,
        (None, None) => parse_addr(flag, default)?,
    };
    let challenge = Challenge::from_name(&kind, addr)
        .with_context(|| format!("--acme-challenge: {kind} is not http-01 or tls-alpn-01"))?;
    let extra_root = match (&args.acme_ca, &recorded) {
        (Some(path), _) => Some(
            std::path::absolute(path).with_context(|| format!("--acme-ca {}", path.display()))?,
        ),
        (None, Some(settings)) => settings.extra_root.clone(),
        (None, None) => None,
    };
    let contact = match (&args.acme_email, &recorded) {
        (Some(email), _) => {
            if !email.contains('@') || email.contains(char::is_whitespace) {
                bail!("--acme-email: {email:?} is not an email address");
            }
            vec![format!("mailto:{email}")]
        }
        (None, Some(settings)) => settings.contact.clone(),
        (None, None) => Vec::new(),
    };
    let external_account = match (&args.acme_eab_kid, &args.acme_eab_hmac_key) {
        (Some(kid), Some(key)) => Some(
            ExternalAccount::from_base64url(kid, key)
                .map_err(|m| anyhow::anyhow!("--acme-eab-hmac-key: {m}"))?,
        ),
        _ => None,
    };
    let attempts = args.acme_attempts.unwrap_or(Retry::default().attempts);
    if attempts == 0 {
        bail!("--acme-attempts must be at least 1");
    }
    Ok(Some(AcmeChoice {
        settings: AcmeSettings {
            directory,
            contact,
            extra_root,
            external_account,
            challenge,
            running_listener: None,
        },
        retry: Retry {
            attempts,
            ..Retry::default()
        },
    }))
}

/// The first `--acme-*` flag given, by name.
fn stray_flag(args: &AcmeArgs) -> Option<&'static str> {
    [
        (args.acme_email.is_some(), "--acme-email"),
        (args.acme_ca.is_some(), "--acme-ca"),
        (args.acme_challenge.is_some(), "--acme-challenge"),
        (args.acme_http.is_some(), "--acme-http"),
        (args.acme_tls_alpn.is_some(), "--acme-tls-alpn"),
        (args.acme_eab_kid.is_some(), "--acme-eab-kid"),
        (args.acme_attempts.is_some(), "--acme-attempts"),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag))
}

fn parse_addr(flag: &str, text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|_| {
        anyhow::anyhow!("{flag}: {text:?} is not an IP address and port, e.g. {}", {
            if flag == "--acme-http" {
                DEFAULT_HTTP
            } else {
                DEFAULT_TLS_ALPN
            }
        })
    })
}

/// `cert issue server --acme URL`.
pub(crate) fn issue_server(
    state: &StateDir,
    args: &CertIssueArgs,
    choice: &AcmeChoice,
) -> Result<std::process::ExitCode> {
    if args.days.is_some() {
        bail!("--days: the ACME CA chooses the lifetime; leave --days out with --acme");
    }
    if args.out.is_some() {
        bail!("--out: with --acme the files go to <state-dir>/certs/<name>/ (or where the name already has them)");
    }
    if !args.uri.is_empty() {
        bail!("--uri: ACME CAs issue DNS names and IP addresses only");
    }
    if args.cn.is_some() {
        bail!("--cn: with --acme the common name is the first --dns name (or --ip address)");
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in &args.ip {
        ips.push(
            ip.parse()
                .with_context(|| format!("--ip {ip:?} is not an IP address"))?,
        );
    }
    if args.dns.is_empty() && ips.is_empty() {
        bail!("a server certificate needs at least one --dns NAME or --ip ADDRESS (clients check these, not the CN)");
    }
    let key: KeyAlgorithm = args.key.parse().map_err(anyhow::Error::new)?;
    if !args.force && state.inventory()?.get(&args.name).is_some() {
        bail!(
            "a certificate named {:?} was already issued; use --force to replace it, or `intransit cert renew {}`",
            args.name,
            args.name
        );
    }
    let order = CertificateOrder {
        name: &args.name,
        dns_names: &args.dns,
        ip_addresses: &ips,
        key,
    };
    let entry = crate::runtime()?.block_on(intransit_acme::obtain(
        state,
        &choice.settings,
        &order,
        choice.retry,
    ))?;
    out!(
        "issued {} certificate {:?} from the ACME CA {}, serial {}",
        CertificateKind::Server,
        entry.name,
        choice.settings.directory,
        entry.serial_hex
    );
    print_files(&entry);
    Ok(std::process::ExitCode::SUCCESS)
}

fn print_files(entry: &IssuedEntry) {
    out!("  cert.pem   {}", entry.paths.cert.display());
    out!("  key.pem    {} (mode 0600)", entry.paths.key.display());
    out!(
        "  chain.pem  {} (the certificate and its issuers, what servers present)",
        entry.paths.chain.display()
    );
    out!(
        "  ca.pem     {} (the issuers the CA sent, not its root)",
        entry.paths.ca.display()
    );
    if let Some(cert) = &entry.certificate {
        out!("  not after  {}", date(cert.not_after));
    }
}

/// What renewing one certificate through ACME did.
pub(crate) enum AcmeRenewal {
    NotDue(OffsetDateTime),
    Renewed {
        old_serial: String,
        entry: Box<IssuedEntry>,
    },
}

/// Renews `entry` through ACME if it is due (or `force`).
pub(crate) fn renew(
    state: &StateDir,
    entry: &IssuedEntry,
    choice: &AcmeChoice,
    policy: &RenewalPolicy,
    force: bool,
) -> Result<AcmeRenewal> {
    if entry.kind != CertificateKind::Server {
        bail!(
            "only server certificates come from an ACME CA; {:?} is a client certificate",
            entry.name
        );
    }
    if !force {
        if let Some(plan) = entry.renewal_plan(policy) {
            if !plan.is_due(OffsetDateTime::now_utc()) {
                return Ok(AcmeRenewal::NotDue(plan.due_at));
            }
        }
    }
    let order = CertificateOrder {
        name: &entry.name,
        dns_names: &entry.dns_names,
        ip_addresses: &entry.ip_addresses,
        key: entry.key,
    };
    let renewed = crate::runtime()?.block_on(intransit_acme::obtain(
        state,
        &choice.settings,
        &order,
        choice.retry,
    ))?;
    Ok(AcmeRenewal::Renewed {
        old_serial: entry.serial_hex.clone(),
        entry: Box::new(renewed),
    })
}

/// `up --acme`: the choice and the names, checked before anything is
/// written.
#[derive(Debug, Clone)]
pub(crate) struct UpAcme {
    pub choice: AcmeChoice,
    pub dns: Vec<String>,
    /// TLS-ALPN-01 on an address `up`'s own listener holds: its listener
    /// answers, once it runs.
    pub on_listener: bool,
}

/// The name of `up`'s server certificate in the inventory.
const UP_SERVER: &str = "server";

impl UpAcme {
    /// Reads `up`'s ACME flags; `None` without `--acme`. The challenge's
    /// address is bound once here, so an address in use or a port below
    /// 1024 without the privilege stops `up` before it writes its state;
    /// unless it is TLS-ALPN-01 on an address `listen` (a PostgreSQL or
    /// `tls` listener) covers, which `up` holds itself.
    pub(crate) fn from_flags(
        args: &AcmeArgs,
        dns: &[String],
        listen: &Endpoint,
        protocol: Protocol,
    ) -> Result<Option<UpAcme>> {
        let Some(choice) = from_flags(args)? else {
            return Ok(None);
        };
        let dns = if dns.is_empty() {
            let host = hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty() && h != "localhost");
            match host {
                Some(host) => vec![host],
                None => bail!("--acme: give the server's DNS names with --acme-dns NAME"),
            }
        } else {
            dns.to_vec()
        };
        let challenge = choice.settings.challenge;
        let on_listener = match challenge {
            Challenge::TlsAlpn01(addr) => listen.bind_addr().is_some_and(|l| covers(l, addr)),
            Challenge::Http01(_) => false,
        };
        if on_listener && protocol == Protocol::Mysql {
            bail!(
                "--acme-tls-alpn {}: a MySQL listener cannot answer TLS-ALPN-01 (MySQL clients \
                 ask for TLS inside the protocol, never from the first byte); answer it on \
                 another address, or use --acme-challenge http-01",
                challenge.addr()
            );
        }
        if on_listener {
            return Ok(Some(UpAcme {
                choice,
                dns,
                on_listener,
            }));
        }
        std::net::TcpListener::bind(challenge.addr()).map_err(|e| {
            let flag = match challenge {
                Challenge::Http01(_) => "--acme-http",
                Challenge::TlsAlpn01(_) => "--acme-tls-alpn",
            };
            anyhow::anyhow!(
                "cannot answer the {} challenge on {}: {e}; choose another address with {flag} ADDR",
                challenge.name(),
                challenge.addr()
            )
        })?;
        Ok(Some(UpAcme {
            choice,
            dns,
            on_listener,
        }))
    }

    /// From now on, TLS-ALPN-01 answers go to the running listener whose
    /// pending challenges these are (when the challenge is on its address).
    pub(crate) fn answering_on(mut self, listener: &TlsAlpnChallenges) -> Self {
        if self.on_listener {
            self.choice.settings.running_listener = Some(listener.clone());
        }
        self
    }

    /// Gets `up`'s server certificate from the ACME CA unless the one in
    /// place came from it, names what is asked and is not due.
    pub(crate) async fn ensure_server(&self, state: &StateDir) -> Result<()> {
        let inventory = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || state.inventory()).await??
        };
        let current = inventory.get(UP_SERVER).filter(|e| {
            e.acme.as_ref().map(|o| o.directory.as_str())
                == Some(self.choice.settings.directory.as_str())
                && e.certificate
                    .as_ref()
                    .is_some_and(|c| self.dns.iter().all(|n| c.dns_names.contains(n)))
                && e.renewal_plan(&RenewalPolicy::default())
                    .is_some_and(|p| !p.is_due(OffsetDateTime::now_utc()))
        });
        if current.is_some() {
            tracing::info!(directory = %self.choice.settings.directory, "reusing the server certificate from the ACME CA");
            return Ok(());
        }
        self.obtain(state)
            .await
            .context("getting the server certificate from the ACME CA")?;
        Ok(())
    }

    /// Renews `up`'s server certificate through ACME if it is due.
    /// Returns whether it was renewed.
    pub(crate) async fn renew_if_due(&self, state: &StateDir) -> Result<bool> {
        let inventory = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || state.inventory()).await??
        };
        let due = inventory.get(UP_SERVER).is_none_or(|e| {
            e.renewal_plan(&RenewalPolicy::default())
                .is_none_or(|p| p.is_due(OffsetDateTime::now_utc()))
        });
        if !due {
            return Ok(false);
        }
        self.obtain(state).await?;
        Ok(true)
    }

    async fn obtain(&self, state: &StateDir) -> Result<IssuedEntry> {
        let order = CertificateOrder {
            name: UP_SERVER,
            dns_names: &self.dns,
            ip_addresses: &[],
            key: KeyAlgorithm::EcdsaP256,
        };
        Ok(intransit_acme::obtain(state, &self.choice.settings, &order, self.choice.retry).await?)
    }
}

/// Whether a listener bound to `listen` receives the connections a CA makes
/// to `addr`: the same port, and the same address or either unspecified.
fn covers(listen: SocketAddr, addr: SocketAddr) -> bool {
    listen.port() != 0
        && listen.port() == addr.port()
        && (listen.ip() == addr.ip() || listen.ip().is_unspecified() || addr.ip().is_unspecified())
}

/// Shown instead of the local CA where clients need a root for the server:
/// libpq's `sslrootcert=system` (PostgreSQL 16 and later) trusts the
/// system's roots, which public ACME CAs are in.
pub(crate) const SYSTEM_ROOTS: &str = "system";

fn date(t: OffsetDateTime) -> String {
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_covers_its_port_on_its_address_or_any() {
        let addr = |ip: [u8; 4], port| SocketAddr::from((ip, port));
        let (lo, any, other) = ([127, 0, 0, 1], [0, 0, 0, 0], [127, 0, 0, 2]);
        assert!(covers(addr(lo, 443), addr(lo, 443)));
        assert!(covers(addr(any, 443), addr(lo, 443)));
        assert!(covers(addr(lo, 443), addr(any, 443)));
        assert!(!covers(addr(lo, 5432), addr(lo, 443)));
        assert!(!covers(addr(other, 443), addr(lo, 443)));
        // Port 0 is whatever the system gives: never the CA's port.
        assert!(!covers(addr(lo, 0), addr(lo, 0)));
    }
}
