//! `intransit ca ...` and `intransit cert ...`: the certificate authority
//! from the command line. The work is done by `intransit-pki`; this module
//! turns flags into requests and results into text or JSON.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use intransit_pki::{
    CertificateKind, CertificateSummary, CrlFreshness, CrlWarning, IssueRequest, KeyAlgorithm,
    PkiError, RenewOptions, RenewOutcome, RenewalPolicy, RevocationReason, StateDir, Validity,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::cli::{CaCommand, CertCommand, CertIssueArgs, IssueKind, PassphraseArgs};

/// Environment variable that holds the CA key passphrase.
pub const PASSPHRASE_ENV: &str = "INTRANSIT_CA_PASSPHRASE";

fn passphrase(args: &PassphraseArgs) -> Result<Option<Vec<u8>>> {
    if let Some(path) = &args.passphrase_file {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading the passphrase file {}", path.display()))?;
        // A trailing newline from `echo secret > file` is not part of it.
        let trimmed = bytes
            .strip_suffix(b"\n")
            .map(|b| b.strip_suffix(b"\r").unwrap_or(b))
            .unwrap_or(&bytes);
        if trimmed.is_empty() {
            bail!("the passphrase file {} is empty", path.display());
        }
        return Ok(Some(trimmed.to_vec()));
    }
    Ok(std::env::var_os(PASSPHRASE_ENV)
        .filter(|v| !v.is_empty())
        .map(|v| v.into_encoded_bytes()))
}

/// Loads the CA for signing, with errors that say what to do.
pub(crate) fn load_ca(
    state: &StateDir,
    args: &PassphraseArgs,
) -> Result<intransit_pki::CertificateAuthority> {
    let pass = passphrase(args)?;
    state.load_ca(pass.as_deref()).map_err(|e| match e {
        PkiError::PassphraseRequired { .. } => anyhow::anyhow!(
            "the CA key in {} is encrypted: give --passphrase-file FILE or set {PASSPHRASE_ENV}",
            state.ca_dir().display()
        ),
        PkiError::WrongPassphrase { .. } => anyhow::anyhow!(
            "the passphrase does not decrypt the CA key in {}",
            state.ca_dir().display()
        ),
        other => anyhow::Error::new(other).context(format!(
            "loading the CA from {} (create one with `intransit ca init`)",
            state.ca_dir().display()
        )),
    })
}

pub fn run_ca(state_dir: &Path, command: CaCommand) -> Result<ExitCode> {
    let state = StateDir::new(state_dir);
    match command {
        CaCommand::Init {
            key,
            name,
            days,
            force,
            passphrase: pass_args,
        } => {
            let key: KeyAlgorithm = key.parse().map_err(anyhow::Error::new)?;
            let validity = Validity::try_days_from_now(days)?;
            let pass = passphrase(&pass_args)?;
            let ca = state
                .init_ca(&name, key, validity, pass.as_deref(), force)
                .map_err(|e| match e {
                    PkiError::CaExists { dir } => anyhow::anyhow!(
                        "a CA already exists in {}; use --force to replace it (certificates it issued will no longer verify)",
                        dir.display()
                    ),
                    other => anyhow::Error::new(other),
                })?;
            let summary = intransit_pki::summarize(ca.cert_der())?;
            out!("created CA {}", summary.subject);
            out!("  certificate: {}", state.ca_dir().join("ca.pem").display());
            out!(
                "  key:         {} ({}{})",
                state.ca_dir().join("key.pem").display(),
                summary.key_description,
                if pass.is_some() { ", encrypted" } else { "" }
            );
            out!("  not after:   {}", date(summary.not_after));
            Ok(ExitCode::SUCCESS)
        }
        CaCommand::Crl {
            out,
            days,
            passphrase: pass_args,
        } => {
            if days <= 0 {
                bail!("--days must be at least 1");
            }
            let ca = load_ca(&state, &pass_args)?;
            let path = state.write_crl(&ca, time::Duration::days(days), out.as_deref())?;
            let inventory = state.inventory()?;
            out!(
                "wrote CRL number {} with {} revoked certificate(s) to {} (next update in {days} day(s))",
                inventory.crl_number,
                inventory.revoked.len(),
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn run_cert(state_dir: &Path, command: CertCommand) -> Result<ExitCode> {
    let state = StateDir::new(state_dir);
    match command {
        CertCommand::Issue { kind } => issue(&state, kind),
        CertCommand::List { json } => list(&state, json),
        CertCommand::Inspect { target, sni } => crate::inspect::run(&target, sni.as_deref()),
        CertCommand::Renew {
            name,
            all,
            force,
            reuse_key,
            exec,
            renew_at,
            passphrase: pass_args,
            acme,
        } => {
            if name.is_none() && !all {
                bail!("name a certificate to renew, or pass --all");
            }
            if all && acme.acme.is_some() {
                bail!("--acme with --all: name the certificate to move to an ACME CA");
            }
            let policy = RenewalPolicy {
                fraction: renew_at,
                ..RenewalPolicy::default()
            };
            let now = OffsetDateTime::now_utc();
            let inventory = state.inventory()?;
            let names = match name {
                Some(n) => vec![n],
                None => inventory.entries.iter().map(|e| e.name.clone()).collect(),
            };
            let options = RenewOptions {
                reuse_key,
                force,
                policy,
            };
            // The local CA is loaded only for a certificate it renews, so a
            // state directory holding only ACME certificates needs none.
            let mut ca = None;
            let mut failed = false;
            for name in names {
                let entry = inventory.get(&name);
                let acme_choice = match entry {
                    Some(entry) if entry.acme.is_some() || acme.acme.is_some() => {
                        crate::acme_cmd::with_origin(entry.acme.as_ref(), &acme)?
                    }
                    _ => None,
                };
                if let (Some(entry), Some(choice)) = (entry, acme_choice) {
                    if reuse_key {
                        bail!(
                            "--reuse-key: a certificate from an ACME CA is renewed with a new key"
                        );
                    }
                    match crate::acme_cmd::renew(&state, entry, &choice, &policy, force) {
                        Ok(crate::acme_cmd::AcmeRenewal::NotDue(due_at)) => {
                            out!("{name}: not due until {}", date(due_at));
                        }
                        Ok(crate::acme_cmd::AcmeRenewal::Renewed { old_serial, entry }) => {
                            out!(
                                "{name}: renewed by the ACME CA {}, serial {old_serial} -> {}, files in {}",
                                choice.settings.directory,
                                entry.serial_hex,
                                entry.paths.dir.display()
                            );
                            if let Some(cmd) = &exec {
                                run_hook(cmd, &name, &entry.paths.dir)?;
                            }
                        }
                        Err(e) => {
                            eprintln!(
                                "{name}: {} (the certificate in place is unchanged)",
                                crate::errors::chain(&e)
                            );
                            failed = true;
                        }
                    }
                    continue;
                }
                let ca = match &ca {
                    Some(ca) => ca,
                    None => ca.insert(load_ca(&state, &pass_args)?),
                };
                match state.renew(ca, &name, &options, now) {
                    Ok(RenewOutcome::NotDue { due_at, .. }) => {
                        out!("{name}: not due until {}", date(due_at));
                    }
                    Ok(RenewOutcome::Renewed {
                        old_serial,
                        new_serial,
                        entry,
                    }) => {
                        out!(
                            "{name}: renewed, serial {old_serial} -> {new_serial}, files in {}",
                            entry.paths.dir.display()
                        );
                        if let Some(cmd) = &exec {
                            run_hook(cmd, &name, &entry.paths.dir)?;
                        }
                    }
                    Err(e) => {
                        eprintln!("{name}: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        CertCommand::Revoke {
            target,
            reason,
            crl_days,
            passphrase: pass_args,
        } => {
            let reason: RevocationReason = reason.parse().map_err(anyhow::Error::new)?;
            // Load the CA first: a revocation that cannot be published
            // should not be recorded half-way.
            let ca = load_ca(&state, &pass_args)?;
            let revoked = state.revoke(&target, reason, OffsetDateTime::now_utc())?;
            let path = state.write_crl(&ca, time::Duration::days(crl_days), None)?;
            out!(
                "revoked serial {} ({}), reason {}; CRL updated: {}",
                revoked.serial_hex,
                revoked.name.as_deref().unwrap_or("unnamed"),
                revoked.reason.as_str(),
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        CertCommand::Check {
            warn,
            crl_warn,
            files,
        } => check(&state, &warn, crl_warn.as_deref(), &files),
    }
}

fn issue(state: &StateDir, kind: IssueKind) -> Result<ExitCode> {
    let (cert_kind, args): (CertificateKind, CertIssueArgs) = match kind {
        IssueKind::Server(a) => {
            if let Some(choice) = crate::acme_cmd::from_flags(&a.acme)? {
                return crate::acme_cmd::issue_server(state, &a.common, &choice);
            }
            (CertificateKind::Server, a.common)
        }
        IssueKind::Client(a) => (CertificateKind::Client, a),
    };
    let days = args
        .days
        .unwrap_or(i64::from(cert_kind.default_validity_days()));
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in &args.ip {
        ips.push(
            ip.parse()
                .with_context(|| format!("--ip {ip:?} is not an IP address"))?,
        );
    }
    if cert_kind == CertificateKind::Server && args.dns.is_empty() && ips.is_empty() {
        bail!("a server certificate needs at least one --dns NAME or --ip ADDRESS (clients check these, not the CN)");
    }
    let request = IssueRequest {
        kind: cert_kind,
        common_name: args.cn.clone().unwrap_or_else(|| args.name.clone()),
        dns_names: args.dns.clone(),
        ip_addresses: ips,
        uris: args.uri.clone(),
        key: args.key.parse().map_err(anyhow::Error::new)?,
        validity: Validity::try_days_from_now(days)?,
    };
    let ca = load_ca(state, &args.passphrase)?;
    let entry = state
        .issue(&ca, &args.name, &request, args.out.as_deref(), args.force)
        .map_err(|e| match e {
            PkiError::AlreadyIssued { .. } => anyhow::anyhow!(
                "a certificate named {:?} was already issued; use --force to replace it, or `intransit cert renew {}`",
                args.name,
                args.name
            ),
            other => anyhow::Error::new(other),
        })?;
    out!(
        "issued {} certificate {:?}, serial {}",
        cert_kind,
        entry.name,
        entry.serial_hex
    );
    out!("  cert.pem   {}", entry.paths.cert.display());
    out!("  key.pem    {} (mode 0600)", entry.paths.key.display());
    out!("  chain.pem  {}", entry.paths.chain.display());
    out!("  ca.pem     {}", entry.paths.ca.display());
    if let Some(cert) = &entry.certificate {
        out!("  not after  {}", date(cert.not_after));
    }
    Ok(ExitCode::SUCCESS)
}

fn list(state: &StateDir, as_json: bool) -> Result<ExitCode> {
    let inventory = state.inventory()?;
    let now = OffsetDateTime::now_utc();
    let policy = RenewalPolicy::default();
    if as_json {
        let entries: Vec<_> = inventory
            .entries
            .iter()
            .map(|e| {
                json!({
                    "name": e.name,
                    "kind": e.kind.to_string(),
                    "serial": e.serial_hex,
                    "common_name": e.common_name,
                    "dns": e.certificate.as_ref().map(|c| c.dns_names.clone()).unwrap_or_default(),
                    "ip": e.certificate.as_ref().map(|c| c.ip_addresses.iter().map(|i| i.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                    "uri": e.certificate.as_ref().map(|c| c.uris.clone()).unwrap_or_default(),
                    "not_after": e.not_after().map(rfc3339),
                    "days_left": e.days_left(now),
                    "status": e.status(now, &policy).as_str(),
                    "dir": e.paths.dir.display().to_string(),
                    "problem": e.problem,
                    "acme": e.acme.as_ref().map(|o| o.directory.clone()),
                })
            })
            .collect();
        out!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "certificates": entries,
                "crl_number": inventory.crl_number,
                "revoked": inventory.revoked.iter().map(|r| json!({
                    "serial": r.serial_hex,
                    "name": r.name,
                    "reason": r.reason.as_str(),
                    "revoked_at": rfc3339(r.revoked_at),
                })).collect::<Vec<_>>(),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if inventory.entries.is_empty() {
        out!("no certificates in {}", state.root().display());
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:<20} {:<7} {:<34} {:<12} {:>9}  {:<16} names",
        "NAME",
        "KIND",
        "SERIAL",
        "NOT AFTER",
        "DAYS LEFT",
        "STATUS"
    );
    for e in &inventory.entries {
        let names = e
            .certificate
            .as_ref()
            .map(|c| {
                c.dns_names
                    .iter()
                    .map(|d| format!("dns:{d}"))
                    .chain(c.ip_addresses.iter().map(|i| format!("ip:{i}")))
                    .chain(c.uris.iter().map(|u| format!("uri:{u}")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        out!(
            "{:<20} {:<7} {:<34} {:<12} {:>9}  {:<16} {}",
            e.name,
            e.kind.to_string(),
            e.serial_hex,
            e.not_after().map(date).unwrap_or_else(|| "-".into()),
            e.days_left(now)
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
            e.status(now, &policy).as_str(),
            names
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check(
    state: &StateDir,
    warn: &str,
    crl_warn: Option<&str>,
    files: &[PathBuf],
) -> Result<ExitCode> {
    let within = warning_window(warn, "--warn")?;
    let crl_warning = crl_warning(crl_warn)?;
    let now = OffsetDateTime::now_utc();
    let (findings, crl_findings) = if files.is_empty() {
        (
            state.check_expiry(now, within)?,
            state.check_crl(now, crl_warning)?,
        )
    } else {
        let mut certs: Vec<(String, CertificateSummary)> = Vec::new();
        let mut crls: Vec<(String, intransit_pki::CrlSummary)> = Vec::new();
        for file in files {
            let pem = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let crl_ders = intransit_pki::pem_to_der_crls(&pem)
                .with_context(|| format!("reading CRLs from {}", file.display()))?;
            // A CRL file holds no certificate, and needs none.
            let ders = if crl_ders.is_empty() || pem.contains("-----BEGIN CERTIFICATE-----") {
                intransit_pki::pem_to_der_certs(&pem)
                    .with_context(|| format!("reading certificates from {}", file.display()))?
            } else {
                Vec::new()
            };
            for (i, der) in ders.iter().enumerate() {
                let what = if ders.len() == 1 {
                    file.display().to_string()
                } else {
                    format!("{}[{i}]", file.display())
                };
                certs.push((what, intransit_pki::summarize(der)?));
            }
            for der in &crl_ders {
                let summary = intransit_pki::summarize_crl(der)
                    .with_context(|| format!("reading a CRL in {}", file.display()))?;
                crls.push((file.display().to_string(), summary));
            }
        }
        (
            intransit_pki::check_expiry(certs.iter().map(|(w, c)| (w.as_str(), c)), now, within),
            intransit_pki::check_crl_freshness(
                crls.iter().map(|(w, c)| (w.as_str(), c)),
                now,
                crl_warning,
            ),
        )
    };
    if findings.is_empty() && crl_findings.is_empty() {
        let crls = match crl_warn {
            Some(window) => format!("no CRL stale or going stale within {window}"),
            None => "every CRL has half of its validity period left or more".to_owned(),
        };
        out!("ok: nothing expired or expiring within {warn}, {crls}");
        return Ok(ExitCode::SUCCESS);
    }
    for f in &findings {
        out!(
            "{}: {} ({}), serial {}, not after {}, {} day(s) left",
            f.what,
            f.state,
            f.subject,
            f.serial_hex,
            date(f.not_after),
            f.days_left
        );
    }
    for f in &crl_findings {
        let share = match f.freshness {
            CrlFreshness::Stale => {
                out!(
                    "{}: CRL stale ({}), nextUpdate {} has passed: listeners with stale_crl = \"refuse\" (the default) refuse every certificate of that CA (crl_expired) until a fresh CRL is installed (intransit ca crl writes one)",
                    f.what,
                    f.issuer,
                    rfc3339(f.next_update)
                );
                continue;
            }
            CrlFreshness::GoingStale => ", less than a seventh of its validity period",
            CrlFreshness::Ageing => ", less than half of its validity period",
            CrlFreshness::Fresh => "",
        };
        out!(
            "{}: CRL going stale ({}), nextUpdate {}, {} day(s) left{share}: publish a fresh CRL before then (intransit ca crl writes one)",
            f.what,
            f.issuer,
            rfc3339(f.next_update),
            f.days_left
        );
    }
    Ok(ExitCode::FAILURE)
}

/// When a CRL is worth a warning: by the share of its validity period left,
/// or, with `--crl-warn`, within that fixed window.
pub(crate) fn crl_warning(crl_warn: Option<&str>) -> Result<CrlWarning> {
    Ok(match crl_warn {
        Some(window) => CrlWarning::Within(warning_window(window, "--crl-warn")?),
        None => CrlWarning::ByPeriod,
    })
}

/// Parses a warning window such as `30d` or `12h`, naming the flag in
/// errors.
pub(crate) fn warning_window(text: &str, flag: &str) -> Result<time::Duration> {
    let within =
        intransit_config::parse_duration(text).map_err(|m| anyhow::anyhow!("{flag}: {m}"))?;
    time::Duration::try_from(within).with_context(|| format!("{flag} is too large"))
}

/// Runs `--exec` after a renewal, with the certificate's name and directory
/// in the environment.
fn run_hook(cmd: &str, name: &str, dir: &Path) -> Result<()> {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("INTRANSIT_CERT_NAME", name)
        .env("INTRANSIT_CERT_DIR", dir)
        .status()
        .with_context(|| format!("running --exec {cmd:?}"))?;
    if !status.success() {
        bail!("--exec {cmd:?} failed after renewing {name}: {status}");
    }
    Ok(())
}

fn date(t: OffsetDateTime) -> String {
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
