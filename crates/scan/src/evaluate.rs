//! A survey judged against a policy: each fact becomes findings tied to
//! the policy's requirements (and through them to compliance controls).
//!
//! Certificate trust is the one decision made here: the chain is verified
//! with the proxy's own [`ServerTrust`] (webpki, and a certificate that is
//! itself one of the anchors, as libpq accepts it) against the given
//! anchors (or the system's CA bundle), for the report only. Nothing here ever trusts a server for a connection.

use std::sync::Arc;

use intransit_compliance::{Finding, Policy, Requirement, Status, Version};
use intransit_pki::{describe_certificate_error, ServerTrust};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::plaintext::Plaintext;
use crate::survey::Survey;

/// The Debian/Ubuntu system bundle, used when no `--ca` is given.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What the chain is checked against.
#[derive(Debug, Clone, Default)]
pub struct TrustInput {
    /// Trust anchors; empty means the system bundle.
    pub anchors: Vec<CertificateDer<'static>>,
    /// The name the certificate must carry (default: the target host).
    pub server_name: Option<String>,
}

fn version_of(name: &str) -> Option<Version> {
    match name {
        "SSLv3" => Some(Version::Ssl3),
        other => Version::parse(other),
    }
}

/// Judges `survey` against `policy`.
pub fn evaluate(survey: &Survey, host: &str, policy: &Policy, trust: &TrustInput) -> Vec<Finding> {
    let uri = survey.target.as_str();
    let mut out = Vec::new();
    let mut add = |requirement, status, message: String| {
        out.push(Finding::at_line(requirement, status, uri, None, message));
    };

    // Plaintext first: it matters even when TLS is not offered.
    if policy.no_plaintext {
        match survey.plaintext {
            Plaintext::Accepted => add(
                Requirement::NoPlaintext,
                Status::Fail,
                survey.plaintext_detail.clone(),
            ),
            Plaintext::Refused => add(
                Requirement::NoPlaintext,
                Status::Pass,
                survey.plaintext_detail.clone(),
            ),
            Plaintext::Unknown => add(
                Requirement::NoPlaintext,
                Status::Info,
                survey.plaintext_detail.clone(),
            ),
        }
    }
    if !survey.tls_offered {
        add(
            Requirement::TlsEnabled,
            Status::Fail,
            format!(
                "TLS is not offered: {}",
                survey
                    .tls_refusal
                    .as_deref()
                    .unwrap_or("no version accepted")
            ),
        );
        return out;
    }
    add(
        Requirement::TlsEnabled,
        Status::Pass,
        format!(
            "TLS offered via {}",
            survey
                .negotiation
                .as_deref()
                .unwrap_or("the protocol's negotiation")
        ),
    );

    // Versions.
    let accepted: Vec<&str> = survey
        .versions
        .iter()
        .filter(|v| v.accepted)
        .map(|v| v.version)
        .collect();
    let too_old: Vec<&str> = accepted
        .iter()
        .copied()
        .filter(|v| version_of(v).is_some_and(|v| v < policy.min_version))
        .collect();
    if too_old.is_empty() {
        add(
            Requirement::MinVersion,
            Status::Pass,
            format!("accepts {}", accepted.join(", ")),
        );
    } else {
        add(
            Requirement::MinVersion,
            Status::Fail,
            format!(
                "accepts {} below the policy minimum {}",
                too_old.join(", "),
                policy.min_version
            ),
        );
    }

    // Suites.
    let mut bad_suites = Vec::new();
    for (version, suites) in &survey.suites {
        for s in suites {
            let name = s.replace("TLS13_", "TLS_");
            if !policy.allowed_suites.contains(&name) {
                bad_suites.push(format!("{s} ({version})"));
            }
        }
    }
    if bad_suites.is_empty() {
        add(
            Requirement::CipherSuites,
            Status::Pass,
            format!(
                "{} suite(s) accepted, all allowed",
                survey.suites.values().map(Vec::len).sum::<usize>()
            ),
        );
    } else {
        add(
            Requirement::CipherSuites,
            Status::Fail,
            format!(
                "accepts suites the policy does not allow: {}",
                bad_suites.join(", ")
            ),
        );
    }

    // Groups (TLS 1.3).
    if !survey.groups.is_empty() {
        let bad: Vec<&String> = survey
            .groups
            .iter()
            .filter(|g| !policy.allowed_groups.contains(g))
            .collect();
        if bad.is_empty() {
            add(
                Requirement::Groups,
                Status::Pass,
                format!("groups accepted: {}", survey.groups.join(", ")),
            );
        } else {
            add(
                Requirement::Groups,
                Status::Fail,
                format!(
                    "accepts groups the policy does not allow: {}",
                    bad.iter()
                        .map(|g| g.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    let pq = survey.groups.iter().any(|g| g.contains("MLKEM"));
    add(
        Requirement::PqHybrid,
        match (pq, policy.require_pq_hybrid) {
            (true, _) => Status::Pass,
            (false, true) => Status::Fail,
            (false, false) => Status::Info,
        },
        if pq {
            "accepts a post-quantum hybrid group (X25519MLKEM768)".into()
        } else {
            "no post-quantum hybrid group accepted".into()
        },
    );

    // Client certificates.
    match (survey.client_cert_required, policy.require_client_cert) {
        (Some(true), _) => add(
            Requirement::ClientCertificate,
            Status::Pass,
            "a handshake without a client certificate is refused".into(),
        ),
        (Some(false), true) => add(
            Requirement::ClientCertificate,
            Status::Fail,
            if survey.client_cert_requested == Some(true) {
                "a client certificate is asked for but not demanded".into()
            } else {
                "no client certificate is demanded".into()
            },
        ),
        (Some(false), false) => add(
            Requirement::ClientCertificate,
            Status::Info,
            "no client certificate is demanded".into(),
        ),
        (None, _) => {}
    }
    if let Some(accepted) = survey.client_cert_accepted {
        add(
            Requirement::ClientCertificate,
            if accepted { Status::Pass } else { Status::Warn },
            if accepted {
                "the given client certificate is accepted".into()
            } else {
                "the given client certificate is refused".into()
            },
        );
    }

    // Informational facts.
    for (fact, value) in [
        ("TLS compression (CRIME)", survey.compression),
        ("secure renegotiation", survey.secure_renegotiation),
        ("session resumption", survey.resumption),
        ("server cipher preference", survey.server_preference),
        ("PostgreSQL direct TLS", survey.direct_tls),
    ] {
        if let Some(v) = value {
            let bad = fact.starts_with("TLS compression") && v;
            add(
                if fact.starts_with("TLS compression") {
                    Requirement::CipherSuites
                } else {
                    Requirement::TlsEnabled
                },
                if bad { Status::Fail } else { Status::Info },
                format!("{fact}: {}", if v { "yes" } else { "no" }),
            );
        }
    }
    add(
        Requirement::CertExpiry,
        Status::Info,
        format!(
            "OCSP stapling: {}",
            if survey.ocsp_stapled { "yes" } else { "no" }
        ),
    );

    certificate_findings(survey, host, policy, trust, &mut out);
    out
}

fn certificate_findings(
    survey: &Survey,
    host: &str,
    policy: &Policy,
    trust: &TrustInput,
    out: &mut Vec<Finding>,
) {
    let uri = survey.target.as_str();
    let mut add = |requirement, status, message: String| {
        out.push(Finding::at_line(requirement, status, uri, None, message));
    };
    let Some(leaf) = survey.chain.first() else {
        add(
            Requirement::CertTrusted,
            Status::Fail,
            "no certificate was presented".into(),
        );
        return;
    };
    let Ok(summary) = intransit_pki::summarize(leaf.as_ref()) else {
        add(
            Requirement::CertTrusted,
            Status::Fail,
            "the certificate does not parse".into(),
        );
        return;
    };

    // Expiry.
    let days = intransit_pki::days_until(summary.not_after, time::OffsetDateTime::now_utc());
    // Expired, or inside the policy's warning window: both fail.
    let expiry_status = if days < i64::from(policy.expiry_warning_days) {
        Status::Fail
    } else {
        Status::Pass
    };
    add(
        Requirement::CertExpiry,
        expiry_status,
        if days < 0 {
            format!("{} expired {} day(s) ago", summary.subject, -days)
        } else {
            format!(
                "{} expires {} ({days} day(s) left; policy threshold {})",
                summary.subject,
                summary.not_after.date(),
                policy.expiry_warning_days
            )
        },
    );

    // Key size.
    let key = summary.key_description.clone();
    let key_ok = if let Some(bits) = key.strip_prefix("RSA ").and_then(|b| b.parse::<u32>().ok()) {
        bits >= policy.min_rsa_bits
    } else if key.starts_with("ECDSA P-") {
        key.trim_start_matches("ECDSA P-")
            .parse::<u32>()
            .is_ok_and(|bits| bits >= policy.min_ec_bits)
    } else {
        key == "Ed25519" || key == "Ed448"
    };
    add(
        Requirement::CertKeySize,
        if key_ok { Status::Pass } else { Status::Fail },
        format!("key {key}"),
    );

    // Signature algorithm.
    let sig = summary.signature_algorithm.clone();
    let sig_ok = policy.allowed_signature_algorithms.iter().any(|a| {
        a.eq_ignore_ascii_case(&sig) || (a == "ED25519" && sig.eq_ignore_ascii_case("ED25519"))
    });
    add(
        Requirement::CertSignature,
        if sig_ok { Status::Pass } else { Status::Fail },
        format!("signed with {sig}"),
    );

    // Pins: any certificate of the chain may match.
    if !policy.pins.is_empty() {
        let presented: Vec<String> = survey
            .chain
            .iter()
            .filter_map(|c| intransit_pki::spki_pin(c.as_ref()).ok())
            .collect();
        let matched = presented.iter().any(|p| policy.pins.contains(p));
        add(
            Requirement::CertPin,
            if matched { Status::Pass } else { Status::Fail },
            if matched {
                "the chain matches a pinned key".into()
            } else {
                format!(
                    "no pin matches: presented {}, expected {}",
                    presented.join(", "),
                    policy.pins.join(", ")
                )
            },
        );
    }

    // Trust and name: webpki, and a certificate that is itself one of the
    // given anchors accepted as libpq accepts it.
    let source = if trust.anchors.is_empty() {
        "the system CA bundle"
    } else {
        "the given CA"
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let built = if trust.anchors.is_empty() {
        let bundle = std::fs::read_to_string(SYSTEM_BUNDLE)
            .ok()
            .and_then(|pem| intransit_pki::pem_to_der_certs(&pem).ok())
            .unwrap_or_default()
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        ServerTrust::from_bundle(bundle, provider)
    } else {
        ServerTrust::new(trust.anchors.clone(), provider)
    };
    let name_text = trust.server_name.clone().unwrap_or_else(|| host.to_owned());
    let Ok(name) = ServerName::try_from(name_text.clone()) else {
        add(
            Requirement::CertHostname,
            Status::Fail,
            format!("{name_text:?} is not a valid name"),
        );
        return;
    };
    let verifier = match built {
        Ok(v) => v,
        Err(e) => {
            add(
                Requirement::CertTrusted,
                Status::Fail,
                format!("no trust anchors from {source}: {e}"),
            );
            return;
        }
    };
    let result = verifier.verify(leaf, &survey.chain[1..], &name, UnixTime::now());
    use rustls::CertificateError as C;
    match result {
        Ok(_) => {
            add(
                Requirement::CertTrusted,
                Status::Pass,
                format!("chains to {source}"),
            );
            add(
                Requirement::CertHostname,
                Status::Pass,
                format!("valid for {name_text}"),
            );
        }
        Err(rustls::Error::InvalidCertificate(
            e @ (C::NotValidForName | C::NotValidForNameContext { .. }),
        )) => {
            add(
                Requirement::CertTrusted,
                Status::Pass,
                format!("chains to {source}"),
            );
            add(
                Requirement::CertHostname,
                Status::Fail,
                describe_certificate_error(&e),
            );
        }
        Err(rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => {
            add(
                Requirement::CertTrusted,
                Status::Fail,
                "the certificate has expired".into(),
            );
        }
        Err(rustls::Error::InvalidCertificate(e)) => add(
            Requirement::CertTrusted,
            Status::Fail,
            format!(
                "not trusted by {source}: {}",
                describe_certificate_error(&e)
            ),
        ),
        Err(e) => add(
            Requirement::CertTrusted,
            Status::Fail,
            format!("not trusted by {source}: {e}"),
        ),
    }
}
