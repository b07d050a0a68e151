//! A private pebble (Let's Encrypt's ACME test server) per test, on
//! loopback: its directory, management interface and the ports its
//! validation authority connects to for HTTP-01 and TLS-ALPN-01 are all
//! free ports chosen here, so tests run side by side.
//!
//! Validation is real (`PEBBLE_VA_ALWAYS_VALID` is removed from its
//! environment): pebble connects to `localhost:http_port` or
//! `localhost:tls_port` and checks the answer. Its waits are removed
//! (`PEBBLE_VA_NOSLEEP`), every order needs fresh authorizations
//! (`PEBBLE_AUTHZREUSE=0`) and no nonce is rejected on purpose
//! (`PEBBLE_WFE_NONCEREJECT=0`), so runs are deterministic. Its own HTTPS
//! certificate comes from a CA made here ([`Pebble::https_ca`]); the root
//! it issues under is fetched from its management interface
//! ([`Pebble::issuing_root`]).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;

use crate::supervisor::Supervisor;
use crate::{free_port, require_tool};

/// How long a starting pebble gets to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Start-up attempts, each on fresh ports, in case a port was taken.
const ATTEMPTS: usize = 3;

/// How a [`Pebble`] is configured beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// The lifetime of the certificates it issues, in seconds (pebble's
    /// default is five years).
    pub validity_seconds: Option<u64>,
    /// Require external account binding, with this key id and HMAC key
    /// (base64url).
    pub external_account: Option<(String, String)>,
}

/// A running `pebble`.
#[derive(Debug)]
pub struct Pebble {
    dir: PathBuf,
    port: u16,
    management_port: u16,
    http_port: u16,
    tls_port: u16,
    process: Option<Child>,
    supervisor: Supervisor,
}

impl Pebble {
    /// Starts a fresh pebble. A missing `pebble` is an error that names
    /// the package to install.
    pub fn start() -> Result<Pebble> {
        Pebble::start_with(&PebbleOptions::default())
    }

    /// Starts a fresh pebble configured by `options`.
    pub fn start_with(options: &PebbleOptions) -> Result<Pebble> {
        let binary = require_tool("pebble", "pebble")?;
        let dir = tempfile::Builder::new()
            .prefix("intransit-pebble-")
            .tempdir()
            .context("creating a temporary directory for pebble")?
            .keep();
        let mut supervisor = Supervisor::spawn(&dir)?;
        write_https_certificate(&dir)?;
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            match spawn(&binary, &dir, options) {
                Ok((process, ports)) => {
                    supervisor.watch(process.id())?;
                    let (port, management_port, http_port, tls_port) = ports;
                    return Ok(Pebble {
                        dir,
                        port,
                        management_port,
                        http_port,
                        tls_port,
                        process: Some(process),
                        supervisor,
                    });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("pebble did not start")))
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA of pebble's own HTTPS certificate (give it as `--acme-ca`).
    pub fn https_ca(&self) -> PathBuf {
        self.dir.join("https-ca.pem")
    }

    /// The port pebble connects to for HTTP-01 validation.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The port pebble connects to for TLS-ALPN-01 validation.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// pebble's log (its requests and validation results).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// The root certificate pebble issues under (PEM), from its management
    /// interface's `/roots/0`. pebble makes a new one every start.
    pub fn issuing_root(&self) -> Result<String> {
        let root = https_get(self.management_port, "/roots/0", &self.https_ca())?;
        if !root.contains("-----BEGIN CERTIFICATE-----") {
            bail!("pebble's /roots/0 is not a PEM certificate: {root}");
        }
        Ok(root)
    }

    /// Writes [`Self::issuing_root`] to a file in pebble's directory.
    pub fn issuing_root_file(&self) -> Result<PathBuf> {
        let path = self.dir.join("issuing-root.pem");
        std::fs::write(&path, self.issuing_root()?).context("writing pebble's root")?;
        Ok(path)
    }

    /// Stops pebble (its directory stays until the test process ends).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        self.supervisor.stop();
    }
}

/// Starts pebble on fresh ports and waits until it listens; returns the
/// process and its (directory, management, HTTP-01, TLS-ALPN-01) ports.
fn spawn(
    binary: &Path,
    dir: &Path,
    options: &PebbleOptions,
) -> Result<(Child, (u16, u16, u16, u16))> {
    let (port, management_port, http_port, tls_port) =
        (free_port(), free_port(), free_port(), free_port());
    let config = format!(
        r#"{{
  "pebble": {{
    "listenAddress": "127.0.0.1:{port}",
    "managementListenAddress": "127.0.0.1:{management_port}",
    "certificate": "{dir}/https-cert.pem",
    "privateKey": "{dir}/https-key.pem",
    "httpPort": {http_port},
    "tlsPort": {tls_port},
    "ocspResponderURL": "",{validity}{eab}
    "externalAccountBindingRequired": {eab_required}
  }}
}}
"#,
        dir = dir.display(),
        validity = options
            .validity_seconds
            .map(|s| format!("\n    \"certificateValidityPeriod\": {s},"))
            .unwrap_or_default(),
        eab = options
            .external_account
            .as_ref()
            .map(|(kid, key)| format!(
                "\n    \"externalAccountMACKeys\": {{\"{kid}\": \"{key}\"}},"
            ))
            .unwrap_or_default(),
        eab_required = options.external_account.is_some(),
    );
    std::fs::write(dir.join("pebble-config.json"), config).context("writing pebble's config")?;
    let log = std::fs::File::create(dir.join("pebble.log")).context("creating pebble.log")?;
    let mut process = Command::new(binary)
        .arg("-config")
        .arg(dir.join("pebble-config.json"))
        .env_remove("PEBBLE_VA_ALWAYS_VALID")
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_AUTHZREUSE", "0")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("pebble.log")?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while !(listening(port) && listening(management_port)) {
        if let Some(status) = process.try_wait().context("checking pebble")? {
            let log = std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default();
            bail!("pebble exited with {status}:\n{log}");
        }
        if Instant::now() > deadline {
            let _ = process.kill();
            let _ = process.wait();
            bail!("pebble did not listen on {port} within {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((process, (port, management_port, http_port, tls_port)))
}

fn listening(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A CA and, signed by it, pebble's HTTPS certificate for localhost and
/// 127.0.0.1 (a leaf of its own, since rustls refuses a CA certificate
/// presented as a server's).
fn write_https_certificate(dir: &Path) -> Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "intransit test pebble HTTPS CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    let cert = leaf.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("https-ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("https-cert.pem"), cert.pem())?;
    std::fs::write(dir.join("https-key.pem"), key.serialize_pem())?;
    Ok(())
}

/// `GET path` over HTTPS from 127.0.0.1:`port`, trusting `ca`; the body.
fn https_get(port: u16, path: &str, ca: &Path) -> Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).context("reading pebble's HTTPS CA")?;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let connection = rustls::ClientConnection::new(Arc::new(config), name)?;
    let socket = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("connecting to pebble's management port {port}"))?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(connection, socket);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // Go closes without close_notify; what arrived is complete.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e).context("reading pebble's answer"),
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("pebble's answer to {path} has no header end: {text}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("pebble answered {path} with {head}");
    }
    Ok(body.to_owned())
}
