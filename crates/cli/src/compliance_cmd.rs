//! `intransit lint`, `intransit policy` and `intransit config template`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use intransit_compliance::lint::{lint_file, FileKind};
use intransit_compliance::template::{self, TemplateFiles};
use intransit_compliance::{Policy, Report, PRESETS};
use intransit_scan::{ClientIdentity, SurveyOptions, Target, TrustInput};

use crate::cli::{ConfigCommand, LintArgs, PolicyCommand, ReportFormat, ScanArgs};

/// Exit code when the policy fails.
const POLICY_FAILS: u8 = 1;
/// Exit code when the check could not run.
const COULD_NOT_RUN: u8 = 2;

pub fn lint(args: &LintArgs) -> ExitCode {
    match run_lint(args) {
        Ok(report) => {
            print_report(&report, args.format);
            if report.holds() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(POLICY_FAILS)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(COULD_NOT_RUN)
        }
    }
}

fn run_lint(args: &LintArgs) -> Result<Report> {
    let policy = Policy::load(&args.policy)?;
    let forced = match args.kind.as_deref() {
        Some(k) => Some(
            FileKind::parse(k)
                .ok_or_else(|| anyhow::anyhow!("--kind {k:?}: use postgresql, pg_hba or mycnf"))?,
        ),
        None => None,
    };
    let mut findings = Vec::new();
    for file in &args.files {
        let kind = forced.unwrap_or_else(|| FileKind::guess(file));
        findings.extend(lint_file(file, kind, &policy)?);
    }
    Ok(Report {
        tool: "intransit lint".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        policy: policy.name,
        findings,
        observations: Vec::new(),
    })
}

/// Prints a report in the chosen format.
pub fn print_report(report: &Report, format: ReportFormat) {
    match format {
        ReportFormat::Text => out!("{}", report.to_text().trim_end()),
        ReportFormat::Json => out!("{:#}", report.to_json()),
        ReportFormat::Sarif => out!("{:#}", report.to_sarif()),
    }
}

pub fn policy(command: PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::List => {
            for (name, _) in PRESETS {
                let p = Policy::preset(name)
                    .ok_or_else(|| anyhow::anyhow!("built-in preset {name} does not parse"))?;
                out!("{name:<22} {}", p.description);
            }
        }
        PolicyCommand::Show { name } => match Policy::preset_text(&name) {
            Some(text) => out!("{}", text.trim_end()),
            None => bail!(
                "no preset {name:?}; the presets are {}",
                PRESETS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
    Ok(ExitCode::SUCCESS)
}

pub fn config(command: ConfigCommand) -> Result<ExitCode> {
    let ConfigCommand::Template {
        kind,
        policy,
        state_dir,
        name,
    } = command;
    let policy = Policy::load(&policy)?;
    let root = std::path::absolute(&state_dir).unwrap_or(state_dir);
    let ca = root.join("ca").join("ca.pem");
    let dir = root.join("certs").join(&name);
    let cert = dir.join("chain.pem");
    let key = dir.join("key.pem");
    let files = TemplateFiles {
        ca: &ca,
        cert: &cert,
        key: &key,
    };
    let text = match kind.as_str() {
        "postgres" | "postgresql" => template::postgresql(&policy, &files),
        "pg_hba" | "pg-hba" | "hba" => template::pg_hba(&policy),
        "mariadb" | "mysql" => template::mariadb(&policy, &files),
        other => bail!("{other:?}: use postgres, pg_hba or mariadb"),
    };
    if kind != "pg_hba" && !Path::new(&cert).exists() {
        eprintln!(
            "note: {} does not exist yet; create it with: intransit cert issue server --name {name} --dns <host> --state-dir {}",
            cert.display(),
            root.display()
        );
    }
    out!("{}", text.trim_end());
    Ok(ExitCode::SUCCESS)
}

pub fn scan(args: &ScanArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(COULD_NOT_RUN);
        }
    };
    match runtime.block_on(run_scan(args)) {
        Ok(report) => {
            print_report(&report, args.format);
            if report.holds() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(POLICY_FAILS)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(COULD_NOT_RUN)
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(intransit_pki::pem_to_der_certs(&pem)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .into_iter()
        .map(rustls_pki_types::CertificateDer::from)
        .collect())
}

async fn run_scan(args: &ScanArgs) -> Result<Report> {
    use rustls_pki_types::pem::PemObject;
    let mut policy = Policy::load(&args.policy)?;
    policy.pins.extend(args.pins.iter().cloned());
    let timeout = intransit_config::parse_duration(&args.timeout)
        .map_err(|m| anyhow::anyhow!("--timeout: {m}"))?;
    let trust = TrustInput {
        anchors: match &args.ca {
            Some(p) => read_certs(p)?,
            None => Vec::new(),
        },
        server_name: args.sni.clone(),
    };
    let client_identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(ClientIdentity {
            chain: read_certs(cert)?,
            key: rustls_pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| {
                anyhow::anyhow!(
                    "reading the key {}: {}",
                    key.display(),
                    intransit_pki::describe_pem_error(&e)
                )
            })?,
        }),
        _ => None,
    };
    let opts = SurveyOptions {
        server_name: args.sni.clone(),
        concurrency: args.concurrency.clamp(1, 64),
        timeout,
        client_identity,
    };
    let mut findings = Vec::new();
    let mut observations = Vec::new();
    for text in &args.targets {
        let target: Target = text.parse().map_err(|e| anyhow::anyhow!("{text}: {e}"))?;
        let survey = intransit_scan::survey(&target, &opts)
            .await
            .with_context(|| format!("scanning {text}"))?;
        findings.extend(intransit_scan::evaluate(
            &survey,
            target.host(),
            &policy,
            &trust,
        ));
        observations.push(serde_json::to_value(&survey).unwrap_or_default());
    }
    Ok(Report {
        tool: "intransit scan".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        policy: policy.name,
        findings,
        observations,
    })
}
