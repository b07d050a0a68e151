//! A full survey of one endpoint: protocol versions, cipher suites per
//! version, server preference, key-exchange groups, compression and
//! renegotiation (from hand-built ClientHellos, so legacy protocols are
//! seen too), the certificate chain, whether plaintext logins are still
//! accepted, whether a client certificate is demanded, session resumption
//! and OCSP stapling.
//!
//! Probes run concurrently, at most [`SurveyOptions::concurrency`]
//! connections at a time. Every probe stops as soon as the server has
//! chosen; the plaintext probe sends a login request for a probe user and
//! reads only the server's first answer: it never sends a password.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use intransit_wire::hello::{
    self, alert_name, client_hello, parse_server_flight, ClientHelloSpec, ServerFlight, GROUPS,
    SSL3, SUITES, TLS10, TLS11, TLS12, TLS13,
};
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::error::{ScanError, Stage};
use crate::negotiate::{negotiate, Deadline};
use crate::options::SurveyOptions;
use crate::plaintext::Plaintext;
use crate::Target;

/// The most a server's first flight may take before a probe gives up
/// reading it.
const MAX_FLIGHT: usize = 64 * 1024;

/// A protocol version and whether the server accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionSupport {
    /// `SSLv3` ... `TLSv1.3`.
    pub version: &'static str,
    /// Accepted.
    pub accepted: bool,
    /// The alert or reason when refused.
    pub refusal: Option<String>,
}

/// What a presented certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateFacts {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// SHA-256 fingerprint of the DER.
    pub sha256: String,
    /// SPKI pin.
    pub spki_pin: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// Key type and size.
    pub key: String,
    /// Signature algorithm.
    pub signature: String,
}

fn describe(chain: &[CertificateDer<'_>]) -> Vec<CertificateFacts> {
    chain
        .iter()
        .filter_map(|c| intransit_pki::summarize(c.as_ref()).ok())
        .map(|s| CertificateFacts {
            subject: s.subject,
            issuer: s.issuer,
            sha256: s.fingerprint_sha256,
            spki_pin: s.spki_pin,
            not_after: s
                .not_after
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            key: s.key_description,
            signature: s.signature_algorithm,
        })
        .collect()
}

/// Everything a survey found.
#[derive(Debug, Clone, Serialize)]
pub struct Survey {
    /// The target as given.
    pub target: String,
    /// How TLS is requested.
    pub negotiation: Option<String>,
    /// The server version announced before TLS (MySQL).
    pub server_version: Option<String>,
    /// TLS is offered at all.
    pub tls_offered: bool,
    /// Why not, when it is not.
    pub tls_refusal: Option<String>,
    /// Each version probed.
    pub versions: Vec<VersionSupport>,
    /// Accepted suites per version (IANA names), in the order found.
    pub suites: BTreeMap<String, Vec<String>>,
    /// The server picks its own suite order (TLS 1.2 and older; `None`
    /// when it could not be tested).
    pub server_preference: Option<bool>,
    /// Key-exchange groups accepted with TLS 1.3.
    pub groups: Vec<String>,
    /// TLS compression accepted (CRIME), where TLS 1.2 or older is.
    pub compression: Option<bool>,
    /// Secure renegotiation (RFC 5746) announced, where TLS 1.2 or older is.
    pub secure_renegotiation: Option<bool>,
    /// The certificates presented, leaf first (DER).
    #[serde(skip)]
    pub chain: Vec<CertificateDer<'static>>,
    /// The same certificates, described.
    pub certificates: Vec<CertificateFacts>,
    /// What rustls negotiated when fetching the chain.
    pub negotiated: Option<String>,
    /// A stapled OCSP response was seen.
    pub ocsp_stapled: bool,
    /// Plaintext logins.
    pub plaintext: Plaintext,
    /// What the plaintext probe saw.
    pub plaintext_detail: String,
    /// The server asks for a client certificate.
    pub client_cert_requested: Option<bool>,
    /// A handshake without a client certificate is refused.
    pub client_cert_required: Option<bool>,
    /// The given client certificate is accepted.
    pub client_cert_accepted: Option<bool>,
    /// A second handshake resumed the first session.
    pub resumption: Option<bool>,
    /// PostgreSQL only: direct TLS with ALPN `postgresql` (PostgreSQL 17).
    pub direct_tls: Option<bool>,
}

/// Surveys `target`. Fails only when the endpoint cannot be reached at
/// all; everything else is a finding.
pub async fn survey(target: &Target, opts: &SurveyOptions) -> Result<Survey, ScanError> {
    let sni = opts.server_name.clone().or_else(|| {
        target
            .host()
            .parse::<std::net::IpAddr>()
            .is_err()
            .then(|| target.host().to_owned())
    });
    let limiter = Arc::new(Semaphore::new(opts.concurrency.clamp(1, 64)));
    let prober = Prober {
        target: target.clone(),
        sni: sni.clone(),
        timeout: opts.timeout,
        limiter: limiter.clone(),
    };

    // The plaintext probe needs no TLS and runs beside everything else.
    let plaintext = tokio::spawn(plaintext_probe(target.clone(), opts.timeout));

    // Versions, all at once.
    let legacy_suites: Vec<u16> = SUITES
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !hello::is_tls13_suite(*id))
        .collect();
    let tls13_suites: Vec<u16> = SUITES
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| hello::is_tls13_suite(*id))
        .collect();
    let all_groups: Vec<u16> = GROUPS.iter().map(|(id, _)| *id).collect();
    let classic_groups: Vec<u16> = vec![0x001d, 0x0017, 0x0018, 0x0019];
    let mut version_probes = Vec::new();
    for version in [SSL3, TLS10, TLS11, TLS12, TLS13] {
        let spec = ClientHelloSpec {
            version,
            cipher_suites: if version == TLS13 {
                tls13_suites.clone()
            } else {
                legacy_suites.clone()
            },
            groups: if version == TLS13 {
                all_groups.clone()
            } else {
                classic_groups.clone()
            },
            server_name: sni.clone(),
            offer_compression: version < TLS13,
            status_request: true,
            random: random(),
        };
        let p = prober.clone();
        version_probes.push(tokio::spawn(async move { (version, p.probe(spec).await) }));
    }
    let mut versions = Vec::new();
    let mut accepted_versions = Vec::new();
    let mut first_error = None;
    let mut compression = None;
    let mut secure_renegotiation = None;
    let mut ocsp_stapled = false;
    let mut legacy_chain = Vec::new();
    for handle in version_probes {
        let Ok((version, result)) = handle.await else {
            continue;
        };
        let (accepted, refusal) = match &result {
            Ok(flight) => match &flight.hello {
                Some(h) if h.version == version || (version == TLS13 && h.hello_retry) => {
                    if version < TLS13 {
                        compression = Some(compression.unwrap_or(false) || h.compression != 0);
                        secure_renegotiation =
                            Some(secure_renegotiation.unwrap_or(false) || h.secure_renegotiation);
                        if legacy_chain.is_empty() {
                            legacy_chain = flight.certificates.clone();
                        }
                        ocsp_stapled |= flight.ocsp_stapled;
                    }
                    (true, None)
                }
                Some(h) => (
                    false,
                    Some(format!(
                        "the server answered with {}",
                        hello::version_name(h.version)
                    )),
                ),
                None => (false, Some(describe_refusal(flight))),
            },
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e.to_string());
                }
                (false, Some(e.to_string()))
            }
        };
        if accepted {
            accepted_versions.push(version);
        }
        versions.push(VersionSupport {
            version: hello::version_name(version),
            accepted,
            refusal,
        });
    }
    let plaintext = plaintext
        .await
        .unwrap_or((Plaintext::Unknown, "probe failed".into()));

    // A connection error on every probe, before any TLS answer: the
    // negotiation itself failed (e.g. PostgreSQL with ssl = off).
    let reachable_tls = versions.iter().any(|v| v.accepted)
        || versions
            .iter()
            .any(|v| v.refusal.as_deref().is_some_and(|r| r.starts_with("alert")));
    if !reachable_tls {
        let reason = first_error.unwrap_or_else(|| "no TLS version was accepted".into());
        if reason.contains("connect") && !reason.contains("answered") {
            return Err(ScanError::Protocol(reason));
        }
        return Ok(Survey {
            target: target.to_string(),
            negotiation: None,
            server_version: None,
            tls_offered: false,
            tls_refusal: Some(reason),
            versions,
            suites: BTreeMap::new(),
            server_preference: None,
            groups: Vec::new(),
            compression: None,
            secure_renegotiation: None,
            chain: Vec::new(),
            certificates: Vec::new(),
            negotiated: None,
            ocsp_stapled: false,
            plaintext: plaintext.0,
            plaintext_detail: plaintext.1,
            client_cert_requested: None,
            client_cert_required: None,
            client_cert_accepted: None,
            resumption: None,
            direct_tls: None,
        });
    }

    // Suites: TLS 1.3 one by one; older versions by elimination (offer
    // everything, remove what the server picked, until it refuses).
    let mut suites = BTreeMap::new();
    let mut server_preference = None;
    let mut suite_jobs = Vec::new();
    for version in accepted_versions.iter().copied() {
        let p = prober.clone();
        let sni = sni.clone();
        let legacy = legacy_suites.clone();
        let tls13 = tls13_suites.clone();
        let groups13 = all_groups.clone();
        let classic = classic_groups.clone();
        suite_jobs.push(tokio::spawn(async move {
            let mut found = Vec::new();
            if version == TLS13 {
                for suite in tls13 {
                    let spec = ClientHelloSpec {
                        version,
                        cipher_suites: vec![suite],
                        groups: groups13.clone(),
                        server_name: sni.clone(),
                        offer_compression: false,
                        status_request: false,
                        random: random(),
                    };
                    if let Ok(f) = p.probe(spec).await {
                        if f.hello.is_some_and(|h| h.cipher_suite == suite) {
                            found.push(suite);
                        }
                    }
                }
                return (version, found, None);
            }
            let mut offer = legacy;
            while !offer.is_empty() {
                let spec = ClientHelloSpec {
                    version,
                    cipher_suites: offer.clone(),
                    groups: classic.clone(),
                    server_name: sni.clone(),
                    offer_compression: false,
                    status_request: false,
                    random: random(),
                };
                match p.probe(spec).await {
                    Ok(ServerFlight { hello: Some(h), .. })
                        if h.version == version && offer.contains(&h.cipher_suite) =>
                    {
                        found.push(h.cipher_suite);
                        offer.retain(|s| *s != h.cipher_suite);
                    }
                    _ => break,
                }
            }
            // Server preference: offer the two first-found suites in the
            // opposite order; a server that keeps its choice decides itself.
            let preference = if found.len() >= 2 {
                let spec = ClientHelloSpec {
                    version,
                    cipher_suites: vec![found[1], found[0]],
                    groups: classic.clone(),
                    server_name: sni.clone(),
                    offer_compression: false,
                    status_request: false,
                    random: random(),
                };
                p.probe(spec)
                    .await
                    .ok()
                    .and_then(|f| f.hello)
                    .map(|h| h.cipher_suite == found[0])
            } else {
                None
            };
            (version, found, preference)
        }));
    }
    // Groups with TLS 1.3, one by one.
    let mut group_jobs = Vec::new();
    if accepted_versions.contains(&TLS13) {
        for (group, _) in GROUPS {
            let p = prober.clone();
            let spec = ClientHelloSpec {
                version: TLS13,
                cipher_suites: tls13_suites.clone(),
                groups: vec![*group],
                server_name: sni.clone(),
                offer_compression: false,
                status_request: false,
                random: random(),
            };
            let group = *group;
            group_jobs.push(tokio::spawn(async move {
                let ok = p
                    .probe(spec)
                    .await
                    .ok()
                    .and_then(|f| f.hello)
                    .is_some_and(|h| h.group == Some(group));
                (group, ok)
            }));
        }
    }

    // rustls sessions: the chain, client certificates, resumption and
    // direct TLS, beside the hand-built probes.
    let rustls_side = {
        let target = target.clone();
        let opts = opts.clone();
        let sni = sni.clone();
        let limiter = limiter.clone();
        tokio::spawn(async move { crate::session::sessions(&target, &opts, sni, limiter).await })
    };

    for job in suite_jobs {
        if let Ok((version, found, preference)) = job.await {
            if version != TLS13 && preference.is_some() && server_preference.is_none() {
                server_preference = preference;
            }
            suites.insert(
                hello::version_name(version).to_owned(),
                found.into_iter().map(hello::suite_name).collect(),
            );
        }
    }
    let mut groups = Vec::new();
    for job in group_jobs {
        if let Ok((group, true)) = job.await {
            groups.push(hello::group_name(group));
        }
    }
    let sessions = rustls_side.await.ok();
    let sessions = sessions.unwrap_or_default();
    let chain = if sessions.chain.is_empty() {
        legacy_chain.into_iter().map(CertificateDer::from).collect()
    } else {
        sessions.chain.clone()
    };
    Ok(Survey {
        target: target.to_string(),
        negotiation: sessions.negotiation.clone(),
        server_version: sessions.server_version.clone(),
        tls_offered: true,
        tls_refusal: None,
        versions,
        suites,
        server_preference,
        groups,
        compression,
        secure_renegotiation,
        certificates: describe(&chain),
        chain,
        negotiated: sessions.negotiated.clone(),
        ocsp_stapled: ocsp_stapled || sessions.ocsp_stapled,
        plaintext: plaintext.0,
        plaintext_detail: plaintext.1,
        client_cert_requested: sessions.client_cert_requested,
        client_cert_required: sessions.client_cert_required,
        client_cert_accepted: sessions.client_cert_accepted,
        resumption: sessions.resumption,
        direct_tls: sessions.direct_tls,
    })
}

fn describe_refusal(flight: &ServerFlight) -> String {
    match flight.alert {
        Some((_, d)) => format!("alert {}", alert_name(d)),
        None => "the server closed the connection".into(),
    }
}

fn random() -> [u8; 32] {
    let mut r = [0u8; 32];
    // The client random only has to differ between probes; it protects
    // nothing here, since no probe finishes a handshake.
    let _ = aws_lc_rs::rand::fill(&mut r);
    r
}

/// Runs hand-built ClientHellos against one target.
#[derive(Debug, Clone)]
struct Prober {
    target: Target,
    sni: Option<String>,
    timeout: Duration,
    limiter: Arc<Semaphore>,
}

impl Prober {
    async fn probe(&self, mut spec: ClientHelloSpec) -> Result<ServerFlight, ScanError> {
        let _permit = self
            .limiter
            .acquire()
            .await
            .map_err(|_| ScanError::Protocol("closed".into()))?;
        if spec.server_name.is_none() {
            spec.server_name = self.sni.clone();
        }
        let deadline = Deadline::after(self.timeout);
        let mut stream = connect(&self.target, &deadline).await?;
        negotiate(&self.target, &mut stream, &deadline).await?;
        let bytes = client_hello(&spec);
        deadline
            .run(Stage::TlsHandshake, stream.write_all(&bytes))
            .await?
            .map_err(|error| ScanError::Io {
                stage: Stage::TlsHandshake,
                error,
            })?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let n = match deadline
                .run(Stage::TlsHandshake, stream.read(&mut chunk))
                .await
            {
                Ok(Ok(n)) => n,
                // A reset or timeout after some bytes: judge what arrived.
                Ok(Err(_)) | Err(_) if !buf.is_empty() => 0,
                Ok(Err(_)) => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse_server_flight(&buf) {
                Ok(f) if f.is_complete() => return Ok(f),
                Ok(_) if buf.len() < MAX_FLIGHT => {}
                Ok(f) => return Ok(f),
                Err(_) => {
                    return Err(ScanError::Protocol(
                        "the server answered the ClientHello with something that is not TLS".into(),
                    ))
                }
            }
        }
        parse_server_flight(&buf).map_err(|_| {
            ScanError::Protocol(
                "the server answered the ClientHello with something that is not TLS".into(),
            )
        })
    }
}

async fn connect(target: &Target, deadline: &Deadline) -> Result<TcpStream, ScanError> {
    let address = target.address();
    let stream = deadline
        .run(
            Stage::Connecting,
            TcpStream::connect((target.host(), target.port())),
        )
        .await?
        .map_err(|error| ScanError::Connect { address, error })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The plaintext probe: a login request without TLS for a user that
/// should not exist, classified by the first answer. No password is ever
/// sent: the connection closes at the first answer.
async fn plaintext_probe(target: Target, timeout: Duration) -> (Plaintext, String) {
    let deadline = Deadline::after(timeout);
    let Ok(mut stream) = connect(&target, &deadline).await else {
        return (Plaintext::Unknown, "could not connect".into());
    };
    match target {
        Target::Postgres { .. } => crate::plaintext::postgres(&mut stream, &deadline).await,
        Target::Mysql { .. } => crate::plaintext::mysql(&mut stream, &deadline).await,
        Target::Tls { .. } => crate::plaintext::raw(&mut stream, &deadline).await,
    }
}
