//! `intransit rotate postgres|mariadb`: replace a database server's own
//! TLS certificate without a restart.
//!
//! The steps are the same for every server, and each prints one line:
//! locate the files the server is configured with; prepare the new
//! certificate and key (issued by the CA in the state directory and
//! recorded in its inventory, or given with `--cert`/`--key` and checked);
//! write them over the configured files atomically, with the owner, group
//! and mode of the files they replace, keeping the old ones as
//! `<file>.prev`; ask the server to reload; and connect the way its
//! clients do to check that it now serves the new certificate.
//! `--rollback` puts the `.prev` files back the same way, and `--dry-run`
//! prints the steps without changing anything.
//!
//! What differs per server (where the paths come from, how to reload,
//! how TLS is negotiated) lives in [`postgres`] and [`mariadb`]. This
//! module never chooses a path the server is not configured with, and
//! writes nothing before everything that can be checked was checked.

mod admin_tls;
mod files;
pub(crate) mod mariadb;
mod pg_conf;
pub(crate) mod postgres;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use intransit_pki::{
    CertificateKind, CertificateSummary, IssueRequest, KeyAlgorithm, StateDir, Validity,
    SERVER_VALIDITY_DAYS,
};
use intransit_scan::{FetchOptions, Target};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::cli::RotateCommonArgs;
use files::ServerFile;

/// How long to wait between two looks at the served certificate.
const VERIFY_POLL: Duration = Duration::from_millis(250);

/// How long one look may take.
const VERIFY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A way to make a server re-read its certificate and key.
pub(crate) trait Reload {
    /// What [`Reload::reload`] does, as shown to the user
    /// (`SELECT pg_reload_conf()`).
    fn describe(&self) -> String;
    /// Makes the server re-read its TLS files.
    async fn reload(&mut self) -> Result<()>;
}

/// What [`postgres`] or [`mariadb`] found out about a server.
#[derive(Debug)]
pub(crate) struct Located<R> {
    /// `postgres` or `mariadb`, as in `intransit rotate <kind>`.
    pub kind: &'static str,
    /// The configured certificate (chain) file.
    pub cert: PathBuf,
    /// The configured private key file.
    pub key: PathBuf,
    /// The configured CA file for client certificates, if any (shown only).
    pub ca: Option<PathBuf>,
    /// Where the paths came from, e.g. "SHOW over the --dsn connection".
    pub source: String,
    /// Where to check the served certificate.
    pub verify: Target,
    pub reloader: R,
}

/// A certificate chain and its key, checked to belong together.
struct Material {
    chain_pem: Vec<u8>,
    key_pem: Vec<u8>,
    leaf: CertificateSummary,
    fingerprint: String,
}

impl Material {
    /// Checks that `chain_pem` holds at least one certificate, that
    /// `key_pem` holds the private key of the first one, and that the
    /// first one is valid now. `origin` names the files in errors.
    fn check(chain_pem: Vec<u8>, key_pem: Vec<u8>, origin: &str) -> Result<Material> {
        let chain = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                anyhow!(
                    "{origin}: the certificate file is not PEM: {}",
                    intransit_pki::describe_pem_error(&e)
                )
            })?;
        let Some(leaf_der) = chain.first().cloned() else {
            bail!("{origin}: the certificate file holds no certificate");
        };
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            anyhow!(
                "{origin}: the key file holds no usable private key: {}",
                intransit_pki::describe_pem_error(&e)
            )
        })?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| anyhow!("{origin}: the private key cannot be used: {e}"))?;
        rustls::sign::CertifiedKey::new(chain, signing_key)
            .keys_match()
            .map_err(|e| {
                anyhow!("{origin}: the key does not belong to the certificate ({e}); nothing was changed")
            })?;
        let leaf = intransit_pki::summarize(&leaf_der)
            .with_context(|| format!("{origin}: reading the certificate"))?;
        let now = OffsetDateTime::now_utc();
        if leaf.not_after <= now {
            bail!(
                "{origin}: the certificate expired on {}; nothing was changed",
                leaf.not_after.date()
            );
        }
        if leaf.not_before > now {
            bail!(
                "{origin}: the certificate is not valid before {}; nothing was changed",
                leaf.not_before
            );
        }
        Ok(Material {
            fingerprint: intransit_pki::sha256_fingerprint(&leaf_der),
            chain_pem,
            key_pem,
            leaf,
        })
    }

    fn names(&self) -> String {
        describe_names(&self.leaf.dns_names, &self.leaf.ip_addresses)
    }
}

fn describe_names(dns: &[String], ips: &[IpAddr]) -> String {
    let names: Vec<String> = dns
        .iter()
        .map(|d| format!("dns:{d}"))
        .chain(ips.iter().map(|i| format!("ip:{i}")))
        .collect();
    if names.is_empty() {
        "no names".into()
    } else {
        names.join(",")
    }
}

/// Parses `--verify-addr HOST:PORT` into a target of `scheme`.
pub(crate) fn verify_target(scheme: &str, addr: &str) -> Result<Target> {
    format!("{scheme}://{addr}")
        .parse()
        .map_err(|e| anyhow!("--verify-addr {addr:?}: {e}"))
}

/// Runs the rotation (or the rollback) on a located server.
pub(crate) async fn rotate<R: Reload>(
    mut located: Located<R>,
    args: &RotateCommonArgs,
) -> Result<ExitCode> {
    let prefix = if args.dry_run { "dry run: " } else { "" };
    out!(
        "{prefix}locate: certificate {}, key {}{} (from {})",
        located.cert.display(),
        located.key.display(),
        located
            .ca
            .as_ref()
            .map(|c| format!(", client CA {}", c.display()))
            .unwrap_or_default(),
        located.source
    );
    if located.cert == located.key {
        bail!(
            "the certificate and the key are the same file ({}); give each its own file first",
            located.cert.display()
        );
    }
    let verify_timeout = intransit_config::parse_duration(&args.verify_timeout)
        .map_err(|m| anyhow!("--verify-timeout: {m}"))?;
    let current_cert = ServerFile::read(&located.cert, "certificate")?;
    let current_key = ServerFile::read(&located.key, "private key")?;

    if args.rollback {
        return rollback(located, args, &current_cert, &current_key, verify_timeout).await;
    }

    let current = CertificateDer::pem_slice_iter(&current_cert.contents)
        .next()
        .and_then(Result::ok)
        .and_then(|der| {
            let summary = intransit_pki::summarize(&der).ok()?;
            Some((intransit_pki::sha256_fingerprint(&der), summary))
        });
    match &current {
        Some((fingerprint, summary)) => out!(
            "{prefix}current: serial {}, {}, not after {}, sha256 {fingerprint}",
            summary.serial_hex,
            describe_names(&summary.dns_names, &summary.ip_addresses),
            summary.not_after.date()
        ),
        None => out!(
            "{prefix}current: {} holds no readable certificate",
            located.cert.display()
        ),
    }

    // Everything that can be checked is checked before anything is written.
    let material = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key_pem =
                std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            let origin = format!("{} and {}", cert.display(), key.display());
            let material = Material::check(chain, key_pem, &origin)?;
            out!(
                "{prefix}certificate: {} (serial {}, {}, not after {}, sha256 {}), key {}",
                cert.display(),
                material.leaf.serial_hex,
                material.names(),
                material.leaf.not_after.date(),
                material.fingerprint,
                key.display()
            );
            if !args.dry_run {
                files::check_writable(&located.cert, current_cert.ownership.uid)?;
                files::check_writable(&located.key, current_key.ownership.uid)?;
            }
            Some(material)
        }
        (None, None) => {
            let request = issue_request(args, current.as_ref().map(|(_, s)| s), located.kind)?;
            let name = args.name.clone().unwrap_or_else(|| located.kind.to_owned());
            if !args.dry_run {
                files::check_writable(&located.cert, current_cert.ownership.uid)?;
                files::check_writable(&located.key, current_key.ownership.uid)?;
            }
            let state = StateDir::new(&args.state_dir);
            let ca = crate::pki_cmd::load_ca(&state, &args.passphrase)?;
            if args.dry_run {
                out!(
                    "{prefix}issue: would issue {:?} for {} ({}, {} days) from {} and record it in {}",
                    name,
                    describe_names(&request.dns_names, &request.ip_addresses),
                    request.key,
                    request.validity.lifetime().whole_days(),
                    ca.subject(),
                    state.inventory_path().display()
                );
                None
            } else {
                let entry = state.issue(&ca, &name, &request, None, true)?;
                let read =
                    |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
                let material = Material::check(
                    read(&entry.paths.chain)?,
                    read(&entry.paths.key)?,
                    &entry.paths.dir.display().to_string(),
                )?;
                out!(
                    "issue: issued {:?}, serial {}, {}, not after {}, sha256 {}; recorded in {}",
                    name,
                    entry.serial_hex,
                    material.names(),
                    material.leaf.not_after.date(),
                    material.fingerprint,
                    state.inventory_path().display()
                );
                Some(material)
            }
        }
        _ => bail!("--cert and --key go together"),
    };

    let Some(material) = material else {
        // Dry run with a certificate still to be issued.
        print_dry_run_tail(&located, &current_cert, &current_key, None);
        return Ok(ExitCode::SUCCESS);
    };
    if args.dry_run {
        print_dry_run_tail(
            &located,
            &current_cert,
            &current_key,
            Some(&material.fingerprint),
        );
        return Ok(ExitCode::SUCCESS);
    }

    write_with_previous(&current_cert, &current_key, &material)?;
    out!(
        "write: {} ({}) and {} ({}); previous files kept as {} and {}",
        located.cert.display(),
        current_cert.describe_ownership(),
        located.key.display(),
        current_key.describe_ownership(),
        current_cert.previous_path().display(),
        current_key.previous_path().display()
    );

    let hint = format!(
        "the previous files are kept as {} and {}; `intransit rotate {} --rollback` with the same options restores them",
        current_cert.previous_path().display(),
        current_key.previous_path().display(),
        located.kind,
    );
    reload_and_verify(&mut located, &material.fingerprint, verify_timeout, hint).await?;
    Ok(ExitCode::SUCCESS)
}

fn print_dry_run_tail<R: Reload>(
    located: &Located<R>,
    cert: &ServerFile,
    key: &ServerFile,
    fingerprint: Option<&str>,
) {
    out!(
        "dry run: write: would keep {} and {} as {} and {}, then replace them ({} and {})",
        cert.path.display(),
        key.path.display(),
        cert.previous_path().display(),
        key.previous_path().display(),
        cert.describe_ownership(),
        key.describe_ownership()
    );
    out!("dry run: reload: would run {}", located.reloader.describe());
    out!(
        "dry run: verify: would check that {} serves {}",
        located.verify,
        fingerprint.map_or_else(
            || "the new certificate".to_owned(),
            |f| format!("sha256 {f}")
        )
    );
    out!("dry run: nothing was changed");
}

/// The request for the new certificate: the names of the current one
/// unless `--dns`/`--ip` say otherwise, its key type unless `--key-type`
/// does.
fn issue_request(
    args: &RotateCommonArgs,
    current: Option<&CertificateSummary>,
    kind: &str,
) -> Result<IssueRequest> {
    let mut ips = Vec::new();
    for ip in &args.ip {
        ips.push(
            ip.parse::<IpAddr>()
                .with_context(|| format!("--ip {ip:?} is not an IP address"))?,
        );
    }
    let (dns, ips) = if args.dns.is_empty() && ips.is_empty() {
        match current {
            Some(c) if !(c.dns_names.is_empty() && c.ip_addresses.is_empty()) => {
                (c.dns_names.clone(), c.ip_addresses.clone())
            }
            _ => bail!(
                "the current certificate names no DNS names or IP addresses to keep; give --dns NAME and/or --ip ADDRESS"
            ),
        }
    } else {
        (args.dns.clone(), ips)
    };
    let key = match &args.key_type {
        Some(k) => k.parse().map_err(anyhow::Error::new)?,
        None => current
            .and_then(|c| KeyAlgorithm::from_description(&c.key_description))
            .unwrap_or(KeyAlgorithm::EcdsaP256),
    };
    let days = args.days.unwrap_or(i64::from(SERVER_VALIDITY_DAYS));
    let common_name = current
        .and_then(|c| c.common_name.clone())
        .or_else(|| dns.first().cloned())
        .unwrap_or_else(|| kind.to_owned());
    Ok(IssueRequest {
        kind: CertificateKind::Server,
        common_name,
        dns_names: dns,
        ip_addresses: ips,
        uris: Vec::new(),
        key,
        validity: Validity::try_days_from_now(days)?,
    })
}

/// Keeps the current files as `.prev`, then replaces them with the new
/// material; if the key cannot be written, the certificate is put back,
/// so the server is never left with a certificate and a key that do not
/// belong together.
fn write_with_previous(cert: &ServerFile, key: &ServerFile, material: &Material) -> Result<()> {
    files::replace(&cert.previous_path(), &cert.contents, cert.ownership)?;
    files::replace(&key.previous_path(), &key.contents, key.ownership)?;
    files::replace(&cert.path, &material.chain_pem, cert.ownership)?;
    if let Err(e) = files::replace(&key.path, &material.key_pem, key.ownership) {
        if let Err(undo) = files::replace(&cert.path, &cert.contents, cert.ownership) {
            return Err(e.context(format!(
                "and putting the previous certificate back failed too ({undo:#}); restore {} from {}",
                cert.path.display(),
                cert.previous_path().display()
            )));
        }
        return Err(e.context("the previous certificate was put back"));
    }
    Ok(())
}

/// `--rollback`: puts `<file>.prev` back, reloads and checks.
async fn rollback<R: Reload>(
    mut located: Located<R>,
    args: &RotateCommonArgs,
    cert: &ServerFile,
    key: &ServerFile,
    verify_timeout: Duration,
) -> Result<ExitCode> {
    let prefix = if args.dry_run { "dry run: " } else { "" };
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!(
                    "there is nothing to roll back to: {} does not exist",
                    p.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("reading {}", p.display()))
            }
        })
    };
    let previous = Material::check(
        read(&cert.previous_path())?,
        read(&key.previous_path())?,
        &format!(
            "{} and {}",
            cert.previous_path().display(),
            key.previous_path().display()
        ),
    )?;
    out!(
        "{prefix}previous: serial {}, {}, not after {}, sha256 {}",
        previous.leaf.serial_hex,
        previous.names(),
        previous.leaf.not_after.date(),
        previous.fingerprint
    );
    if args.dry_run {
        out!(
            "dry run: write: would restore {} and {} from their .prev files ({} and {})",
            cert.path.display(),
            key.path.display(),
            cert.describe_ownership(),
            key.describe_ownership()
        );
        out!("dry run: reload: would run {}", located.reloader.describe());
        out!(
            "dry run: verify: would check that {} serves sha256 {}",
            located.verify,
            previous.fingerprint
        );
        out!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    files::check_writable(&cert.path, cert.ownership.uid)?;
    files::replace(&cert.path, &previous.chain_pem, cert.ownership)?;
    if let Err(e) = files::replace(&key.path, &previous.key_pem, key.ownership) {
        files::replace(&cert.path, &cert.contents, cert.ownership)
            .context("putting the certificate back after the key could not be written")?;
        return Err(e.context("the certificate was left as it was"));
    }
    out!(
        "write: restored {} and {} from {} and {}",
        cert.path.display(),
        key.path.display(),
        cert.previous_path().display(),
        key.previous_path().display()
    );
    let hint =
        "the files on disk are the previous ones; check the server log for why it did not load them";
    reload_and_verify(
        &mut located,
        &previous.fingerprint,
        verify_timeout,
        hint.into(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Reloads, then looks at the served certificate until it is the expected
/// one or `timeout` passes (a reload is asynchronous: PostgreSQL's
/// postmaster handles SIGHUP when it gets to it).
async fn reload_and_verify<R: Reload>(
    located: &mut Located<R>,
    expected: &str,
    timeout: Duration,
    hint_on_mismatch: String,
) -> Result<()> {
    located.reloader.reload().await.context(
        "the server was not reloaded, and the new files are in place: reload it yourself, or put the previous files back with --rollback",
    )?;
    out!("reload: {}", located.reloader.describe());

    let started = Instant::now();
    let opts = FetchOptions {
        timeout: VERIFY_ATTEMPT_TIMEOUT,
        ..FetchOptions::default()
    };
    loop {
        let last = match intransit_scan::fetch_chain(&located.verify, &opts).await {
            Ok(fetched) => match fetched.chain.first() {
                Some(leaf) => {
                    let seen = intransit_pki::sha256_fingerprint(leaf.as_ref());
                    if seen == expected {
                        out!(
                            "verify: {} serves sha256 {expected} ({}, after {:.1} s)",
                            located.verify,
                            fetched.tls_version,
                            started.elapsed().as_secs_f64()
                        );
                        return Ok(());
                    }
                    format!("sha256 {seen}")
                }
                None => "no certificate".into(),
            },
            // Nothing listens there: waiting cannot help (a reload keeps
            // the listening socket), so the address must be wrong.
            Err(intransit_scan::ScanError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                bail!(
                    "verify: nothing listens on {} (connection refused), so the new certificate could not be checked; give the address the server listens on with --verify-addr HOST:PORT. {hint_on_mismatch}",
                    located.verify
                );
            }
            Err(e) => format!("an error: {e}"),
        };
        if started.elapsed() >= timeout {
            bail!(
                "verify: {} still serves {last} after {:.0} s, not the expected sha256 {expected}; {}",
                located.verify,
                timeout.as_secs_f64(),
                hint_on_mismatch
            );
        }
        tokio::time::sleep(VERIFY_POLL).await;
    }
}

/// Runs `future` on a fresh runtime.
pub(crate) fn block_on<F: std::future::Future<Output = Result<ExitCode>>>(
    future: F,
) -> Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(future)
}
