//! Reload latency: how long after a certificate file is replaced the first
//! TLS handshake gets the new certificate.
//!
//! Starts `intransit proxy` with a `protocol = "tls"` listener whose
//! certificate and key live in a temporary directory, then for each trial
//! issues a new certificate, renames chain and key into place, and
//! handshakes in a tight loop until the served fingerprint is the new
//! one. Prints each trial and the median and maximum. The file watcher's
//! debounce (300 ms of quiet) is part of what is measured.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use intransit_pki::{
    CertificateAuthority, CertificateKind, IssueRequest, IssuedCertificate, KeyAlgorithm, Validity,
};
use rustls::pki_types::{CertificateDer, ServerName};

/// Measure the time from a certificate file replaced to the first
/// handshake that serves it.
#[derive(Debug, Parser)]
struct Args {
    /// The intransit binary.
    #[arg(long, default_value = "target/release/intransit")]
    intransit: PathBuf,
    /// How many replacements to time.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Give up on one trial after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

/// Kills the proxy when the benchmark ends, however it ends.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir().context("temporary directory")?;
    let ca = CertificateAuthority::generate(
        "reload bench CA",
        KeyAlgorithm::EcdsaP256,
        Validity::days_from_now(2),
    )?;
    let (chain, key) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
    let first = issue(&ca)?;
    install(&first, &chain, &key)?;
    let config = dir.path().join("intransit.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"bench\"\nprotocol = \"tls\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_auth = \"none\"\n",
            chain.display(),
            key.display()
        ),
    )?;
    let (proxy, port) = start(&args.intransit, &config)?;
    let client = client_config(&ca)?;
    if served(&client, port)? != fingerprint(&first)? {
        bail!("the proxy does not serve the first certificate");
    }
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut latencies = Vec::with_capacity(args.trials);
    let mut handshakes = 0usize;
    for trial in 1..=args.trials {
        let next = issue(&ca)?;
        let expected = fingerprint(&next)?;
        install(&next, &chain, &key)?;
        let replaced = Instant::now();
        loop {
            handshakes += 1;
            if served(&client, port)? == expected {
                break;
            }
            if replaced.elapsed() > timeout {
                bail!("trial {trial}: the new certificate was not served within {timeout:?}");
            }
        }
        let latency = replaced.elapsed();
        println!("trial {trial:2}: {:7.1} ms", latency.as_secs_f64() * 1e3);
        latencies.push(latency);
        // Let the watcher settle so trials do not overlap.
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(proxy);
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = latencies[latencies.len() / 2];
    let (min, max) = (latencies[0], latencies[latencies.len() - 1]);
    println!(
        "{} trials: median {:.1} ms, min {:.1} ms, max {:.1} ms ({handshakes} handshakes while waiting)",
        latencies.len(),
        ms(median),
        ms(min),
        ms(max)
    );
    Ok(())
}

fn issue(ca: &CertificateAuthority) -> Result<IssuedCertificate> {
    Ok(ca.issue(&IssueRequest {
        kind: CertificateKind::Server,
        common_name: "localhost".into(),
        dns_names: vec!["localhost".into()],
        ip_addresses: vec![],
        uris: vec![],
        key: KeyAlgorithm::EcdsaP256,
        validity: Validity::days_from_now(1),
    })?)
}

fn fingerprint(issued: &IssuedCertificate) -> Result<String> {
    let der = intransit_pki::pem_to_der_certs(&issued.cert_pem)?;
    let leaf = der.first().ok_or_else(|| anyhow!("no certificate"))?;
    Ok(intransit_pki::sha256_fingerprint(leaf))
}

/// Writes chain and key the way careful tools do: each to a temporary
/// file, then renamed over the old one.
fn install(issued: &IssuedCertificate, chain: &Path, key: &Path) -> Result<()> {
    for (path, text) in [(chain, issued.chain_pem()), (key, issued.key_pem.clone())] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}

/// Starts the proxy and reads its port from the "listening" log line.
fn start(binary: &Path, config: &Path) -> Result<(Proxy, u16)> {
    let mut child = Command::new(binary)
        .args(["--log-format", "json", "--log-level", "warn,intransit=info"])
        .arg("proxy")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr from the proxy"))?;
    let proxy = Proxy(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keeps draining after the port is known, so the proxy never
        // blocks on a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "listening" {
                    let _ = tx.send(v["listen"].as_str().unwrap_or_default().to_owned());
                }
            }
        }
    });
    let listen = rx
        .recv_timeout(Duration::from_secs(20))
        .context("waiting for the proxy to listen")?;
    let port = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no port in {listen:?}"))?;
    Ok((proxy, port))
}

fn client_config(ca: &CertificateAuthority) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.cert_der().to_vec()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every handshake must be a full one: a resumed session shows no
    // certificate.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The fingerprint of the certificate one full handshake gets.
fn served(config: &Arc<rustls::ClientConfig>, port: u16) -> Result<String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).context("connecting to the proxy")?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost")?;
    let conn = rustls::ClientConnection::new(config.clone(), name)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .context("TLS handshake with the proxy")?;
    }
    let _ = tls.flush();
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow!("no certificate from the proxy"))?;
    Ok(intransit_pki::sha256_fingerprint(leaf.as_ref()))
}
