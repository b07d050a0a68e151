//! `intransit cert inspect FILE | postgres://host:port | mysql://... | tls://...`:
//! what a certificate (chain) says, from a PEM/DER file or fetched from a
//! server over the database's own TLS negotiation.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use intransit_pki::CertificateSummary;
use intransit_scan::{ChainOrder, FetchOptions, Target};
use rustls_pki_types::CertificateDer;

pub fn run(target: &str, sni: Option<&str>) -> Result<ExitCode> {
    let (source, ders) = load_chain(target, sni)?;
    out!("{source}");
    out!("chain of {} certificate(s), as presented:", ders.len());
    for (i, der) in ders.iter().enumerate() {
        let s = intransit_pki::summarize(der)
            .with_context(|| format!("certificate {i} in {source}"))?;
        print_summary(i, &s);
    }
    let chain: Vec<CertificateDer<'_>> =
        ders.iter().map(|d| CertificateDer::from(&d[..])).collect();
    let order = intransit_scan::chain_order(&chain);
    out!("chain order: {}", describe_order(&order));
    Ok(ExitCode::SUCCESS)
}

/// `intransit pin TARGET`: the SPKI pins of a chain, and a `pins = [...]`
/// line to paste into an `upstream_tls` table.
pub fn run_pin(target: &str, sni: Option<&str>) -> Result<ExitCode> {
    let (source, ders) = load_chain(target, sni)?;
    out!("# {source}");
    let mut pins = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        let s = intransit_pki::summarize(der)
            .with_context(|| format!("certificate {i} in {source}"))?;
        let role = match (i, s.is_ca, s.subject == s.issuer) {
            (_, true, true) => "root CA",
            (_, true, false) => "intermediate CA",
            (0, false, _) => "leaf",
            _ => "certificate",
        };
        out!(
            "{}  {role}: {} (expires {}, {})",
            s.spki_pin,
            s.subject,
            s.not_after.date(),
            days_left(&s)
        );
        pins.push(s.spki_pin);
    }
    out!(
        "pins = [{}]",
        pins.iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// The certificates of a file, or the chain a server presents.
fn load_chain(target: &str, sni: Option<&str>) -> Result<(String, Vec<Vec<u8>>)> {
    let (source, ders) = if target.contains("://") {
        let parsed: Target = target
            .parse()
            .map_err(|e| anyhow::anyhow!("{target}: {e}"))?;
        let opts = FetchOptions {
            server_name: sni.map(str::to_owned),
            ..FetchOptions::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let fetched = runtime
            .block_on(intransit_scan::fetch_chain(&parsed, &opts))
            .with_context(|| format!("fetching the certificate chain from {target}"))?;
        let source = format!(
            "{target} via {}: {}, {}{}",
            fetched.negotiation,
            fetched.tls_version,
            fetched.cipher_suite,
            fetched
                .key_exchange
                .as_ref()
                .map(|k| format!(", {k}"))
                .unwrap_or_default()
        );
        let ders = fetched.chain.iter().map(|c| c.as_ref().to_vec()).collect();
        (source, ders)
    } else {
        (target.to_owned(), read_file(Path::new(target))?)
    };
    if ders.is_empty() {
        anyhow::bail!("{source}: no certificate found");
    }
    Ok((source, ders))
}

fn read_file(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"-----") || bytes.iter().take(64).all(|b| b.is_ascii()) {
        let text = String::from_utf8_lossy(&bytes);
        Ok(intransit_pki::pem_to_der_certs(&text)
            .with_context(|| format!("reading PEM certificates from {}", path.display()))?)
    } else {
        Ok(vec![bytes])
    }
}

fn print_summary(i: usize, s: &CertificateSummary) {
    out!("[{i}] subject:    {}", s.subject);
    out!("    issuer:     {}", s.issuer);
    out!("    serial:     {}", s.serial_hex);
    out!(
        "    validity:   {} to {} ({})",
        s.not_before,
        s.not_after,
        days_left(s)
    );
    let names: Vec<String> = s
        .dns_names
        .iter()
        .map(|d| format!("DNS:{d}"))
        .chain(s.ip_addresses.iter().map(|ip| format!("IP:{ip}")))
        .chain(s.uris.iter().map(|u| format!("URI:{u}")))
        .collect();
    out!(
        "    SANs:       {}",
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    );
    out!("    key:        {}", s.key_description);
    out!("    signature:  {}", s.signature_algorithm);
    if s.is_ca {
        out!("    CA:         yes");
    }
    if !s.extended_key_usages.is_empty() {
        out!("    usage:      {}", s.extended_key_usages.join(", "));
    }
    out!("    sha256:     {}", s.fingerprint_sha256);
    out!("    spki pin:   {}", s.spki_pin);
}

fn days_left(s: &CertificateSummary) -> String {
    let left = intransit_pki::days_until(s.not_after, time::OffsetDateTime::now_utc());
    if left < 0 {
        format!("expired {} day(s) ago", -left)
    } else {
        format!("{left} day(s) left")
    }
}

fn describe_order(order: &ChainOrder) -> String {
    format!("{order}")
}
